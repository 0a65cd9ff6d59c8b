"""What the peer methods (CASH, PIC-CMH) share with each other and with pbeh's harness.

* :class:`FeatureInput`: the per-modality input side. The released peers take 512-d CLIP features; pbeh's data has
  other widths, so ``transform="pbeh"`` prepares features the way pbeh's own model does (centred on the first task's
  means, L2-normalised and scaled to ``sqrt(feature_dim)``, a trainable Linear map when the width differs), and
  ``transform="identity"`` passes features through unchanged (they must already be ``feature_dim`` wide, e.g. the
  reference inputs of :func:`reference_inputs`).
* :func:`reference_inputs`: the input transform the released code was run with for BENCHMARKS.md's anchors (PCA per
  modality fitted on all training items, sign-fixed, rows L2-normalised and scaled to ``sqrt(dim)``, zero-padded to
  ``dim`` columns).
* :func:`evaluate_row`, :func:`unified_score`, :func:`summarize`: the continual protocol's figures computed with
  :func:`pbeh.metrics.map_at_k`, :func:`pbeh.evaluation.unified_metrics` (the index's cross-length ranking) and
  :class:`pbeh.metrics.ContinualMatrix`, as :class:`pbeh.trainer.ContinualTrainer` computes them, so that
  rows from different methods are comparable.
* :func:`grow_matrix`: a :class:`~pbeh.metrics.ContinualMatrix` with room for more tasks.
* :func:`save_module` / :func:`load_module_arrays` / :func:`load_state`: ``config.json`` + ``model.safetensors`` for a
  peer model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_choice, check_fraction, check_positive_int
from ..codes import Codes
from ..data import Split, Task, TaskStream
from ..evaluation import unified_metrics
from ..metrics import ContinualMatrix, map_at_k
from ..serialization import FormatError, load_safetensors, read_json, save_safetensors, write_json

__all__ = [
    "FeatureInput",
    "evaluate_row",
    "grow_matrix",
    "load_module_arrays",
    "load_state",
    "reference_inputs",
    "save_module",
    "summarize",
    "unified_score",
]

_logger = logging.getLogger(__name__)

INPUT_TRANSFORMS = ("pbeh", "identity")
TIE_RULES = ("reference", "average")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class FeatureInput(nn.Module):
    """Per-modality input preparation ahead of a peer's network: features ``(B, D)`` to ``(B, feature_dim)``.

    Args:
        image_dim, text_dim: raw feature widths.
        feature_dim: the width the peer's network expects (512 in the released code).
        transform: ``"pbeh"`` (centre on the first fitted task's means, L2-normalise, scale to
            ``sqrt(feature_dim)``, then a trainable Linear map initialised ``N(0, 1/feature_dim)`` when the width
            differs from ``feature_dim``) or ``"identity"`` (features used as given; widths must equal
            ``feature_dim``).
        generator: seeds the Linear maps.

    Example:
        >>> inputs = FeatureInput(10, 512, feature_dim=512, transform="pbeh")
        >>> inputs.fit(torch.randn(20, 10), torch.randn(20, 512))
        >>> tuple(inputs(torch.randn(3, 10), "image").shape)
        (3, 512)
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        *,
        feature_dim: int,
        transform: str = "pbeh",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.image_dim = check_positive_int(image_dim, "image_dim")
        self.text_dim = check_positive_int(text_dim, "text_dim")
        self.feature_dim = check_positive_int(feature_dim, "feature_dim")
        self.transform = check_choice(transform, "transform", INPUT_TRANSFORMS)
        if transform == "identity":
            for name, width in (("image_dim", self.image_dim), ("text_dim", self.text_dim)):
                if width != self.feature_dim:
                    raise ValueError(
                        f"{name}: transform='identity' needs features of width feature_dim={self.feature_dim}, "
                        f"got {width}; use transform='pbeh' (a learned map) or reference_inputs() first"
                    )
        self.maps = nn.ModuleDict()
        for modality, width in (("image", self.image_dim), ("text", self.text_dim)):
            if transform == "pbeh" and width != self.feature_dim:
                layer = nn.Linear(width, self.feature_dim, bias=False)
                with torch.no_grad():
                    layer.weight.copy_(
                        torch.randn(self.feature_dim, width, generator=generator) / math.sqrt(self.feature_dim)
                    )
                self.maps[modality] = layer
        self.register_buffer("image_mean", torch.zeros(self.image_dim))
        self.register_buffer("text_mean", torch.zeros(self.text_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def width(self, modality: str) -> int:
        modality = check_choice(modality, "modality", ("image", "text"))
        return self.image_dim if modality == "image" else self.text_dim

    def fit(self, image: torch.Tensor, text: torch.Tensor) -> None:
        """Fix the centring means from the first task's training features (later calls do nothing)."""
        if bool(self.fitted) or self.transform != "pbeh":
            return
        with torch.no_grad():
            self.image_mean.copy_(image.mean(dim=0))
            self.text_mean.copy_(text.mean(dim=0))
            self.fitted.fill_(True)

    def forward(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        width = self.width(modality)
        if features.ndim != 2 or features.shape[1] != width:
            raise ValueError(
                f"features: expected {modality} features of shape (B, {width}), got {tuple(features.shape)}"
            )
        if self.transform == "identity":
            return features
        mean = self.image_mean if modality == "image" else self.text_mean
        x = F.normalize(features - mean, dim=1) * math.sqrt(self.feature_dim)
        return self.maps[modality](x) if modality in self.maps else x


def reference_inputs(stream: TaskStream, *, dim: int = 512) -> TaskStream:
    """The input transform the released reference code was run with for BENCHMARKS.md's anchors.

    Per modality: centre and rotate by PCA fitted on all training items of the stream, keeping
    ``d = min(raw width, dim, n_train - 1)`` components with each component's sign fixed so that its
    largest-magnitude entry is positive; L2-normalise every row and scale it to norm ``sqrt(dim)``; zero-pad to
    ``dim`` columns. Train, query and database items of every task are transformed with the same fit.

    Example:
        >>> from pbeh.data import synthetic_stream
        >>> s = reference_inputs(synthetic_stream(n_tasks=2, seed=0), dim=512)
        >>> s.image_dim, s.text_dim, round(float(np.linalg.norm(s[0].query.image[0])), 3)
        (512, 512, 22.627)
    """
    dim = check_positive_int(dim, "dim")
    fits = {}
    for modality in ("image", "text"):
        train = np.concatenate([getattr(task.train, modality) for task in stream]).astype(np.float64)
        mean = train.mean(axis=0)
        n_components = min(train.shape[1], dim, train.shape[0] - 1)
        if n_components < 1:
            raise ValueError(f"stream: PCA needs at least two training items, got {train.shape[0]}")
        _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
        components = vt[:n_components]
        largest = np.argmax(np.abs(components), axis=1)
        signs = np.sign(components[np.arange(n_components), largest])
        components = components * np.where(signs == 0, 1.0, signs)[:, None]
        fits[modality] = (mean, components)

    def transform(values: np.ndarray, modality: str) -> np.ndarray:
        mean, components = fits[modality]
        rotated = (values.astype(np.float64) - mean) @ components.T
        norms = np.linalg.norm(rotated, axis=1, keepdims=True)
        rotated = rotated / np.where(norms > 0, norms, 1.0) * math.sqrt(dim)
        out = np.zeros((len(values), dim), dtype=np.float32)
        out[:, : rotated.shape[1]] = rotated
        return out

    def split(s: Split) -> Split:
        return Split(transform(s.image, "image"), transform(s.text, "text"), s.labels, s.ids)

    tasks = [
        Task(t.name, train=split(t.train), query=split(t.query), database=split(t.database), classes=t.classes)
        for t in stream
    ]
    return TaskStream(tasks, label_names=stream.label_names, name=stream.name, n_dropped=stream.n_dropped)


# ---------------------------------------------------------------------------------------------------- evaluation


def evaluate_row(
    matrix: ContinualMatrix,
    t: int,
    query_codes: Sequence[tuple[Codes, Codes]],
    query_labels: Sequence[np.ndarray],
    db_codes: Sequence[tuple[Codes, Codes]],
    db_labels: Sequence[np.ndarray],
    *,
    k: int | None,
    ties: str = "average",
) -> tuple[list[float], list[float]]:
    """Fill ``R[t, i]`` for ``i <= t``: (image, text) query codes of task ``i`` against (image, text) database codes,
    with :func:`pbeh.metrics.map_at_k` (``k``, ``ties``) as :class:`pbeh.trainer.ContinualTrainer` fills its rows."""
    ties = check_choice(ties, "ties", TIE_RULES)
    row_i2t, row_t2i = [], []
    for i in range(t + 1):
        q_img, q_txt = query_codes[i]
        d_img, d_txt = db_codes[i]
        i2t = float(map_at_k(q_img, d_txt, query_labels[i], db_labels[i], k=k, ties=ties))
        t2i = float(map_at_k(q_txt, d_img, query_labels[i], db_labels[i], k=k, ties=ties))
        matrix.record(t, i, "i2t", i2t)
        matrix.record(t, i, "t2i", t2i)
        row_i2t.append(i2t)
        row_t2i.append(t2i)
    return row_i2t, row_t2i


def unified_score(
    query_codes: Sequence[tuple[Codes, Codes]],
    query_labels: Sequence[np.ndarray],
    db_codes: Sequence[tuple[Codes, Codes]],
    db_ids: Sequence[np.ndarray],
    db_labels: Sequence[np.ndarray],
    *,
    ties: str = "average",
    index_score: str = "zscore",
) -> tuple[float, float, float]:
    """Every seen query against every stored code in one ranking (:func:`pbeh.evaluation.unified_metrics`, the
    function :class:`pbeh.trainer.ContinualTrainer` reports its unified score with): ``(i2t, t2i, chance)``, each
    the mAP over the whole ranking."""
    ties = check_choice(ties, "ties", TIE_RULES)
    q_labels = np.concatenate(list(query_labels))
    q_tasks = np.concatenate([np.full(len(lab), i, dtype=np.int64) for i, lab in enumerate(query_labels)])
    out = []
    for q_side, d_side in ((0, 1), (1, 0)):
        metrics = unified_metrics(
            Codes.concatenate([codes[q_side] for codes in query_codes]),
            q_labels,
            q_tasks,
            [codes[d_side] for codes in db_codes],
            list(db_labels),
            score=index_score,
            ties=ties,
            db_ids=list(db_ids),
        )
        out.append(metrics)
    return out[0].map_all, out[1].map_all, out[0].chance


def grow_matrix(matrix: ContinualMatrix, n_tasks: int) -> ContinualMatrix:
    """``matrix`` with room for ``n_tasks`` tasks (entries and scalars kept)."""
    if matrix.n_tasks >= n_tasks:
        return matrix
    data = matrix.to_dict()
    grown = ContinualMatrix(n_tasks, directions=tuple(matrix.directions))
    for direction in matrix.directions:
        values = matrix.matrix(direction)
        for t, i in zip(*np.nonzero(np.isfinite(values)), strict=True):
            grown.record(int(t), int(i), direction, float(values[t, i]))
    for name, series in (data.get("scalars") or {}).items():
        for t, value in enumerate(series):
            if value is not None:
                grown.record_scalar(name, t, float(value))
    return grown


def summarize(
    matrix: ContinualMatrix,
    *,
    n_bits: int,
    stored_items: int,
    encoded_db_items: int,
    kept_feature_bytes_per_item: float = 0.0,
) -> dict[str, Any]:
    """Final figures with the keys of :meth:`pbeh.trainer.ContinualTrainer.summary` plus ``encoder_passes``
    (database items encoded for storage and evaluation, over the database size: 1.0 when every item is encoded once)
    and ``kept_feature_bytes_per_item`` (features a re-encoding method must keep)."""
    scalars = matrix.scalars
    out: dict[str, Any] = {"final_bits": n_bits, "bytes_per_item": (n_bits + 7) // 8}
    recorded = scalars.get("unified_i2t")
    finite = np.flatnonzero(np.isfinite(recorded)) if recorded is not None else np.array([], dtype=int)
    last = int(finite[-1]) if len(finite) else None
    for name in ("unified_i2t", "unified_t2i", "unified_chance"):
        series = scalars.get(name)
        ok = last is not None and series is not None and np.isfinite(series[last])
        out[name] = float(series[last]) if ok else None
    for direction in ("i2t", "t2i"):
        out[f"mean_{direction}"] = matrix.final_mean(direction)
        out[f"bwt_{direction}"] = matrix.bwt(direction)
        out[f"forgetting_{direction}"] = matrix.forgetting(direction)
    out["encoder_passes"] = encoded_db_items / stored_items if stored_items else None
    out["kept_feature_bytes_per_item"] = float(kept_feature_bytes_per_item)
    return out


# ---------------------------------------------------------------------------------------------------- persistence


def save_module(directory: str | Path, module: nn.Module, config: dict[str, Any], *, kind: str) -> None:
    """Write ``model.safetensors`` (the state dict) then ``config.json`` (``config`` plus ``pbeh_kind``)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"directory: expected a directory path, got the existing file {str(directory)!r}")
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {name: t.detach().cpu().contiguous().numpy() for name, t in module.state_dict().items()}
    save_safetensors(directory / WEIGHTS_NAME, arrays, kind=kind, format_version=1)
    write_json(directory / CONFIG_NAME, {**config, "pbeh_kind": kind, "format_version": 1})


def load_module_arrays(directory: str | Path, *, kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read what :func:`save_module` wrote: ``(config, arrays)``; :class:`~pbeh.serialization.FormatError` when the
    directory, either file or the kind is wrong."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FormatError(f"directory: no saved {kind} at {str(directory)!r} (not a directory)")
    config = read_json(directory / CONFIG_NAME, what=f"{kind} config")
    if not isinstance(config, dict) or config.get("pbeh_kind") != kind:
        found = config.get("pbeh_kind") if isinstance(config, dict) else type(config).__name__
        raise FormatError(f"{str(directory / CONFIG_NAME)!r} describes {found!r}, expected a {kind!r}")
    arrays, _ = load_safetensors(directory / WEIGHTS_NAME, kind=kind, format_version=1)
    return config, arrays


def load_state(module: nn.Module, arrays: dict[str, np.ndarray], path: str | Path) -> None:
    """Load ``arrays`` into ``module`` strictly, as :class:`~pbeh.serialization.FormatError` on any mismatch."""
    expected = module.state_dict()
    if set(expected) != set(arrays):
        raise FormatError(
            f"{str(path)!r}: tensors do not match the config (missing {sorted(set(expected) - set(arrays))[:5]}, "
            f"unexpected {sorted(set(arrays) - set(expected))[:5]})"
        )
    for name, tensor in expected.items():
        if tuple(arrays[name].shape) != tuple(tensor.shape):
            raise FormatError(
                f"{str(path)!r}: tensor {name!r} has shape {arrays[name].shape}, expected {tuple(tensor.shape)}"
            )
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)


def load_task_model(cls: type, directory: str | Path, *, kind: str) -> Any:
    """Rebuild a per-task peer model written by :func:`save_module`: construct it from its config, add its tasks,
    load its tensors strictly, and return it on CPU in eval mode."""
    config, arrays = load_module_arrays(directory, kind=kind)
    kwargs = {k: v for k, v in config.items() if k not in ("n_tasks", "pbeh_kind", "format_version")}
    model = cls(**kwargs)
    for _ in range(int(config.get("n_tasks", 0))):
        model.add_task()
    load_state(model, arrays, directory)
    return model.eval()


def check_protocol_fields(config: Any, selection: Sequence[str], weights: Sequence[str]) -> None:
    """The checks every peer trainer config shares: epoch selection and its split, evaluation cadence, k and tie rule,
    and loss weights that must be finite and >= 0 (``weights`` names the fields)."""
    check_choice(config.select_on, "select_on", selection)
    check_fraction(config.validation_fraction, "validation_fraction")
    check_positive_int(config.eval_every, "eval_every")
    if config.eval_k is not None:
        check_positive_int(config.eval_k, "eval_k")
    check_choice(config.ties, "ties", TIE_RULES)
    for name in weights:
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


def as_tensor(values: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)


def encode_rows(module: nn.Module, n_rows: int, logits: Any, *, batch_size: int = 1024) -> Codes:
    """Codes from ``logits(rows)`` computed ``batch_size`` rows at a time in eval mode under inference mode."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            parts = [logits(slice(i, i + batch_size)).cpu() for i in range(0, n_rows, batch_size)]
    finally:
        module.train(was_training)
    if not parts:
        raise ValueError("features: expected at least one row to encode, got none")
    return Codes.from_signs(torch.cat(parts).float().numpy())
