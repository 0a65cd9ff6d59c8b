"""Reading a run directory written by ``pbeh train`` (or by :meth:`ContinualTrainer.save`) without training anything.

A run directory holds one checkpoint folder per task (``task_000``, ``task_001``, ...), a ``latest.json`` naming the
newest, and ``run.json`` (what the command line knew: protocol, label names, task names). A single saved trainer
state (a folder with ``trainer.json``) is read the same way. Used by ``pbeh evaluate | describe | search | plot``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .serialization import FormatError, load_safetensors, read_json, resolve_directory

__all__ = ["RUN_FILE", "RunState", "read_run", "state_directory"]

#: What ``pbeh train`` records beside the checkpoints (protocol, label names, task names).
RUN_FILE = "run.json"


def state_directory(run: str | os.PathLike[str]) -> Path:
    """The newest trainer state of ``run``: ``run`` itself when it holds ``trainer.json``, else the checkpoint that
    ``run/latest.json`` names.

    Raises:
        FileNotFoundError: ``run`` is not a directory, or holds neither ``trainer.json`` nor ``latest.json``.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run: expected a run directory written by 'pbeh train', got {str(run)!r} (not found)")
    if (run / "trainer.json").is_file():
        return run
    latest = run / "latest.json"
    if latest.is_file():
        pointer = read_json(latest, what="checkpoint pointer", expect=dict)
        directory = pointer.get("directory")
        if not isinstance(directory, str) or "/" in directory or directory in ("", ".", ".."):
            raise FormatError(f"{str(latest)!r}: 'directory' must name a checkpoint folder, got {directory!r}")
        return resolve_directory(run / directory)
    raise FileNotFoundError(
        f"run: {str(run)!r} holds no pbeh run (expected trainer.json or latest.json; train one with 'pbeh train')"
    )


@dataclass
class RunState:
    """What a run directory says about itself.

    Attributes:
        run: the directory given.
        state: the newest trainer state folder inside it.
        trainer: the parsed ``trainer.json`` (config, reports, matrix, stored tasks).
        info: the parsed ``run.json`` (empty when the run was not written by the command line).
        stored_ids: per stored task, the int64 ids of its database items.
        stored_labels: per stored task, its ``(n, C)`` multi-hot labels.
    """

    run: Path
    state: Path
    trainer: dict[str, Any]
    info: dict[str, Any]
    stored_ids: list[np.ndarray]
    stored_labels: list[np.ndarray]

    @property
    def task_names(self) -> list[str]:
        return [str(s["name"]) for s in self.trainer.get("stored", [])]

    @property
    def label_names(self) -> list[str] | None:
        names = self.info.get("label_names")
        return [str(n) for n in names] if isinstance(names, list) else None

    def task_of(self, ids: np.ndarray) -> list[int | None]:
        """0-based position of the stored task holding each id (None for ids no task stored)."""
        where: dict[int, int] = {}
        for t, ids_t in enumerate(self.stored_ids):
            for i in ids_t.tolist():
                where[int(i)] = t
        return [where.get(int(i)) for i in np.asarray(ids).ravel()]

    def labels_of(self, item_id: int) -> list[int]:
        """Class indices of a stored item (empty when unknown)."""
        for ids_t, labels_t in zip(self.stored_ids, self.stored_labels, strict=True):
            rows = np.flatnonzero(ids_t == item_id)
            if len(rows):
                return np.flatnonzero(labels_t[rows[0]]).tolist()
        return []


def read_run(run: str | os.PathLike[str]) -> RunState:
    """Read a run directory (or one saved trainer state) written by pbeh.

    Raises:
        FileNotFoundError: no run there.
        FormatError: its files are damaged or of another kind.
    """
    run = Path(run)
    state = state_directory(run)
    trainer = read_json(state / "trainer.json", what="trainer state", expect=dict)
    if trainer.get("pbeh_kind", "trainer") != "trainer":
        raise FormatError(f"{str(state)!r}: trainer.json describes a pbeh {trainer.get('pbeh_kind')!r}, not a trainer")
    info_path = run / RUN_FILE
    info = read_json(info_path, what="run description", expect=dict) if info_path.is_file() else {}
    stored_ids: list[np.ndarray] = []
    stored_labels: list[np.ndarray] = []
    arrays_path = state / "trainer_state.safetensors"
    if arrays_path.is_file():
        arrays, _ = load_safetensors(arrays_path, kind="trainer_state", format_version=1)
        for s in range(len(trainer.get("stored", []))):
            stored_ids.append(np.asarray(arrays.get(f"stored.{s}.ids", np.zeros(0, np.int64))))
            stored_labels.append(np.asarray(arrays.get(f"stored.{s}.labels", np.zeros((0, 0), np.uint8))))
    return RunState(run, state, trainer, info, stored_ids, stored_labels)
