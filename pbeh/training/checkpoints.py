"""Saving, loading and resuming a :class:`~pbeh.training.ContinualTrainer`.

* :class:`TrainerCheckpoints` (a mixin of the trainer): :meth:`~TrainerCheckpoints.save` and
  :meth:`~TrainerCheckpoints.load` of the whole continual state (model, indexes, anchors, stored-task bookkeeping,
  class prototypes, reports, matrix: safetensors + JSON), and the checkpoint a run writes after every task
  (``task_<t>`` plus the ``latest.json`` pointer).
* :func:`checkpoint_state_dir`: the state directory of a run directory.
* :func:`resume_differences` and :class:`ResumeMismatchError`: a run resumes only with the options it was trained with.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .._version import __version__
from ..centers import ClassCenters
from ..extension import ExtensionPolicy, extension_policy_from_config
from ..index import TruncatedHammingIndex
from ..losses import LossWeights
from ..metrics import ContinualMatrix
from ..model import CrossModalHashModel
from ..prototypes import ClassPrototypes
from ..serialization import (
    FormatError,
    json_field,
    load_safetensors,
    read_json,
    replace_directory,
    resolve_directory,
    save_safetensors,
    staging_directory,
    write_json,
)
from .config import TrainerConfig
from .report import TaskReport, _StoredTask

if TYPE_CHECKING:
    from .trainer import ContinualTrainer

__all__ = ["ResumeMismatchError", "TrainerCheckpoints", "checkpoint_state_dir", "resume_differences"]

TRAINER_FORMAT_VERSION = 1
LATEST_NAME = "latest.json"


class ResumeMismatchError(ValueError):
    """A checkpoint directory holds a run trained with other options than the trainer asked to resume it."""


class TrainerCheckpoints:
    """Saving and loading of :class:`~pbeh.training.ContinualTrainer` (a mixin: the state is the trainer's)."""

    model: CrossModalHashModel
    config: TrainerConfig
    loss_weights: LossWeights
    extension_policy: ExtensionPolicy
    image_index: TruncatedHammingIndex
    text_index: TruncatedHammingIndex
    index_score: str
    keep_task_checkpoints: bool
    matrix: ContinualMatrix
    reports: list[TaskReport]
    _stored: list[_StoredTask]
    _anchors: list[torch.Tensor]
    _prototypes: list[ClassPrototypes]
    _centers: ClassCenters | None
    _pending_extension: int
    n_tasks_done: int  # the trainer's property

    def save(self, directory: str | Path) -> None:
        """Save the whole continual state: model, indexes, anchors, stored-task bookkeeping, reports and matrices.

        The state is written into a fresh sibling directory which then replaces ``directory``, so a crash leaves the
        previous save intact.
        """
        target = Path(directory)
        if target.exists() and not target.is_dir():
            raise NotADirectoryError(f"directory: expected a directory path, got the existing file {str(target)!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_directory(target)
        try:
            self._save_into(tmp)
            replace_directory(tmp, target)  # one step: load(directory) sees the old state or the new one
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _save_into(self, tmp: Path) -> None:
        self.model.save_pretrained(tmp / "model")
        self.image_index.save(tmp / "image_index.safetensors")
        self.text_index.save(tmp / "text_index.safetensors")
        arrays: dict[str, np.ndarray] = {}
        for s, anchor in enumerate(self._anchors):
            arrays[f"anchor.{s}"] = anchor.detach().cpu().numpy()
        for s, stored in enumerate(self._stored):
            arrays[f"stored.{s}.ids"] = stored.ids
            arrays[f"stored.{s}.labels"] = np.asarray(stored.labels, dtype=np.uint8)
        for s, prototypes in enumerate(self._prototypes):
            arrays.update(prototypes.to_arrays(f"prototypes.{s}."))
        if self._centers is not None:
            arrays.update(self._centers.to_arrays("centers."))
        save_safetensors(tmp / "trainer_state.safetensors", arrays, kind="trainer_state", format_version=1)
        write_json(
            tmp / "trainer.json",
            {
                "pbeh_kind": "trainer",
                "format_version": TRAINER_FORMAT_VERSION,
                "pbeh_version": __version__,
                "config": self.config.to_dict(),
                "loss_weights": self.loss_weights.to_dict(),
                "extension_policy": self.extension_policy.to_config(),
                "index_score": self.index_score,
                "pending_extension": self._pending_extension,
                "stored": [{"name": s.name, "n_bits": s.n_bits} for s in self._stored],
                "reports": [r.to_dict() for r in self.reports],
                "matrix": self.matrix.to_dict(),
            },
        )

    @classmethod
    def load(cls, directory: str | Path, *, checkpoint_dir: str | Path | None = None) -> ContinualTrainer:
        """Load a state written by :meth:`save`, or the newest state of a run directory (a ``checkpoint_dir``).

        ``directory`` is a state directory (``run/task_003``) or a run directory holding ``latest.json``; for a run
        directory ``checkpoint_dir`` defaults to it, so further tasks keep checkpointing there. Training continues
        with :meth:`fit` on the same stream (all rows of the matrix are evaluated) or with :meth:`fit_task` on new
        tasks (rows of the earlier tasks stay unfilled: their queries are not part of the state).

        Raises:
            FormatError: a missing, damaged or inconsistent state or pointer.
        """
        directory = Path(directory)
        if (directory / LATEST_NAME).is_file() and not (directory / "trainer.json").is_file():
            if checkpoint_dir is None:
                checkpoint_dir = directory
            directory = _latest_state_dir(directory)
        directory = resolve_directory(directory)
        meta = read_json(directory / "trainer.json", what="trainer state")
        if not isinstance(meta, dict) or meta.get("pbeh_kind", "trainer") != "trainer":
            raise FormatError(f"{str(directory)!r}: trainer.json does not describe a pbeh trainer state")
        if meta.get("format_version") != TRAINER_FORMAT_VERSION:
            raise FormatError(
                f"{str(directory)!r}: trainer format_version {meta.get('format_version')!r}, "
                f"this pbeh reads {TRAINER_FORMAT_VERSION}"
            )
        source = f"trainer state {str(directory / 'trainer.json')!r}"
        for key, kind in (("config", dict), ("loss_weights", dict), ("extension_policy", dict), ("index_score", str)):
            json_field(meta, key, kind, source=source)
        model = CrossModalHashModel.from_pretrained(directory / "model")
        try:
            trainer = cls(
                model,
                config=TrainerConfig.from_dict(meta["config"]),
                loss_weights=LossWeights.from_dict(meta["loss_weights"]),
                extension_policy=extension_policy_from_config(meta["extension_policy"]),
                index_score=meta["index_score"],
                checkpoint_dir=checkpoint_dir,
            )
            trainer._load_state(directory, meta)
        except FormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise FormatError(f"{source} is damaged or inconsistent: {type(exc).__name__}: {exc}") from exc
        trainer._seen = [None] * len(trainer._stored)  # type: ignore[list-item]  # queries unknown until fit(stream)
        return trainer

    def _load_state(self, directory: Path, meta: dict[str, Any]) -> None:
        self.image_index = TruncatedHammingIndex.load(directory / "image_index.safetensors")
        self.text_index = TruncatedHammingIndex.load(directory / "text_index.safetensors")
        arrays, _ = load_safetensors(directory / "trainer_state.safetensors", kind="trainer_state", format_version=1)
        source = f"trainer state {str(directory / 'trainer.json')!r}"
        stored = json_field(meta, "stored", list, source=source)
        reports = json_field(meta, "reports", list, source=source)
        json_field(meta, "matrix", dict, source=source)
        json_field(meta, "pending_extension", int, source=source, minimum=0, maximum=1 << 20)
        for i, entry in enumerate(stored):
            json_field(entry, "name", str, source=f"{source} stored[{i}]")
            json_field(entry, "n_bits", int, source=f"{source} stored[{i}]", minimum=1, maximum=1 << 20)
            for key in (f"stored.{i}.ids", f"stored.{i}.labels", f"anchor.{i}"):
                if key not in arrays:
                    raise FormatError(f"{source}: trainer_state.safetensors has no tensor {key!r}")
        if len(reports) != len(stored):
            raise FormatError(f"{source}: {len(reports)} reports for {len(stored)} stored tasks")
        self._stored = [
            _StoredTask(s["name"], arrays[f"stored.{i}.ids"], arrays[f"stored.{i}.labels"], int(s["n_bits"]))
            for i, s in enumerate(meta["stored"])
        ]
        index_ids = [
            np.concatenate([index.get_ids(n_bits=n) for n, _ in index.segments] or [np.empty(0, np.int64)])
            for index in (self.image_index, self.text_index)
        ]
        for i, task in enumerate(self._stored):  # the bookkeeping must agree with the indexes it describes
            ids, labels = task.ids, task.labels
            if ids.ndim != 1 or labels.ndim != 2 or len(labels) != len(ids) or ids.dtype != np.int64:
                raise FormatError(f"{source}: stored task {i} has ids {ids.shape} and labels {labels.shape}")
            if labels.shape[1] != self._stored[0].labels.shape[1]:
                raise FormatError(
                    f"{source}: stored task {i} has {labels.shape[1]} label columns, task 0 has "
                    f"{self._stored[0].labels.shape[1]}"
                )
            for present in index_ids:
                missing = ids[~np.isin(ids, present)].tolist()
                if missing:
                    raise FormatError(f"{source}: stored task {i} names ids {missing[:5]} that its indexes lack")
        self._anchors = [torch.from_numpy(arrays[f"anchor.{i}"].copy()) for i in range(len(self._stored))]
        # States written before class prototypes existed have none: replay then starts from the next task's classes.
        self._prototypes = [
            ClassPrototypes.from_arrays(arrays, f"prototypes.{i}.", n_classes=self._stored[i].labels.shape[1])
            for i in range(len(self._stored))
            if f"prototypes.{i}.classes" in arrays
        ]
        # States written before class centres existed have none: the next task builds the table (earlier classes first).
        self._centers = ClassCenters.from_arrays(arrays, "centers.") if "centers.centers" in arrays else None
        if self._centers is not None:
            n_classes = self._stored[0].labels.shape[1] if self._stored else self._centers.n_classes
            if self._centers.n_classes != n_classes or self._centers.n_bits > self.model.n_bits:
                raise FormatError(
                    f"{source}: the class centre table is {self._centers.n_classes} x {self._centers.n_bits}, the "
                    f"state has {n_classes} classes and {self.model.n_bits}-bit codes"
                )
        self._pending_extension = int(meta["pending_extension"])
        self.reports = [TaskReport.from_dict(r) for r in meta["reports"]]
        self.matrix = ContinualMatrix.from_dict(meta["matrix"])

    def _write_checkpoint(self, checkpoint_dir: Path) -> None:
        """Save the state after task t into ``task_<t>``, point ``latest.json`` at it (atomically), then remove the
        earlier task states unless ``keep_task_checkpoints``."""
        name = f"task_{self.n_tasks_done - 1:03d}"
        self.save(checkpoint_dir / name)
        write_json(checkpoint_dir / "latest.json", {"directory": name, "tasks_done": self.n_tasks_done})
        if not self.keep_task_checkpoints:
            for old in checkpoint_dir.glob("task_*"):
                if old.is_dir() and old.name != name and re.fullmatch(r"task_\d{3,9}", old.name):
                    shutil.rmtree(old, ignore_errors=True)


# Model options that a resumed run must share with the run in its checkpoint (the rest grows with the tasks).
_RESUME_MODEL_KEYS = (
    "image_dim", "text_dim", "dim", "hidden_dims", "branch_hidden_dims", "normalize_features", "feature_norm",
    "seed", "use_prompts", "center_features", "dtype",
)  # fmt: skip
# Options that do not change what is trained.
_RESUME_IGNORED_CONFIG = ("show_progress",)


def resume_differences(current: ContinualTrainer, saved: ContinualTrainer) -> list[str]:
    """The options in which ``current`` (about to resume) differs from ``saved`` (the checkpoint), as
    ``"name: checkpoint X, now Y"`` strings; empty when resuming is consistent.

    The initial code length, the model widths, every :class:`TrainerConfig` field that affects training (epochs,
    lr, batch size, seed, ...), the loss weights, the extension policy and the index score are compared.
    """

    def note(name: str, old: Any, new: Any) -> None:
        if old != new:
            out.append(f"{name}: checkpoint {old!r}, now {new!r}")

    out: list[str] = []
    note("n_bits", saved.model.width_history[0], current.model.width_history[0])
    saved_model, current_model = saved.model.get_config(), current.model.get_config()
    for key in _RESUME_MODEL_KEYS:
        note(key, saved_model.get(key), current_model.get(key))
    saved_cfg, current_cfg = saved.config.to_dict(), current.config.to_dict()
    for key in sorted(set(saved_cfg) | set(current_cfg)):
        if key not in _RESUME_IGNORED_CONFIG:
            note(key, saved_cfg.get(key), current_cfg.get(key))
    note("loss_weights", saved.loss_weights.to_dict(), current.loss_weights.to_dict())
    note("extension_policy", saved.extension_policy.to_config(), current.extension_policy.to_config())
    note("index_score", saved.index_score, current.index_score)
    return out


def checkpoint_state_dir(run: str | Path) -> Path:
    """The state directory of a run: ``run`` itself when it holds ``trainer.json``, else the one its
    ``latest.json`` names (checked to lie inside ``run``).

    Raises:
        FormatError: neither, or a damaged or escaping pointer.
    """
    run = Path(run)
    if (run / "trainer.json").is_file():
        return run
    if (run / LATEST_NAME).is_file():
        return resolve_directory(_latest_state_dir(run))
    raise FormatError(f"{str(run)!r} holds no pbeh run (no trainer.json or {LATEST_NAME})")


def _latest_state_dir(checkpoint_dir: Path) -> Path:
    """The state directory ``latest.json`` names, checked to be a ``task_<t>`` (or ``joint``) inside the run."""
    path = Path(checkpoint_dir) / LATEST_NAME
    source = f"checkpoint pointer {str(path)!r}"
    latest = read_json(path, what="checkpoint pointer", expect=dict)
    name = json_field(latest, "directory", str, source=source)
    json_field(latest, "tasks_done", int, source=source, minimum=0)
    if not re.fullmatch(r"task_\d{3,9}|joint", name):
        raise FormatError(
            f"{source}: 'directory' must name a state inside the run directory (task_<t> or joint), got {name[:80]!r}"
        )
    return Path(checkpoint_dir) / name
