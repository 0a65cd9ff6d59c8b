"""PromptHash on a task stream, joint or continual, measured like pbeh's trainer measures PBEH.

* ``protocol="joint"``: one model trained on every task's training items at once (the PromptHash paper's setting;
  not continual), then each task's database is encoded and stored; only the final row of ``R`` exists.
* ``protocol="continual"``: fine-tune task after task; after task ``t`` its database is encoded **once** and stored
  (stored codes are never re-encoded), then ``R[t, i]`` (queries of task ``i`` encoded now, against the stored codes
  of task ``i``) for every ``i <= t``.

Per trained length: ``R`` (via :func:`pbeh.metrics.map_at_k`, mAP@all by default, ``ties`` as given), mean of the
last row, BWT, and the unified score (all seen queries against one :class:`~pbeh.index.TruncatedHammingIndex` of every
stored code, ranked ids scored with :func:`pbeh.evaluation.map_of_ranking`, as the trainer does; plus the tie-averaged
version from :func:`~pbeh.metrics.map_at_k`) beside its chance level. With ``nested=True`` the database is stored once
at the longest length and every query length searches that one index (compared on the common prefix).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from ..._validation import check_choice, check_int, check_optional_positive_int, check_positive_int
from ...codes import Codes
from ...data import Split, TaskStream
from ...evaluation import LabelTable, chance_level, map_of_ranking, unified_metrics
from ...index import TruncatedHammingIndex
from ...metrics import ContinualMatrix, map_at_k
from .fit import fit
from .heads import check_lengths
from .losses import LossWeights
from .model import MODES, PromptHash

__all__ = ["PROTOCOLS", "default_class_embeddings", "run_on_stream"]

_logger = logging.getLogger(__name__)

PROTOCOLS = ("joint", "continual")
_CAPTION_CACHE: dict[tuple[str, ...], np.ndarray] = {}


def default_class_embeddings(label_names: list[str]) -> np.ndarray:
    """Caption embeddings of ``label_names`` from the offline all-MiniLM-L6-v2 (:func:`pbeh.encoders.minilm_path`),
    computed once per process and name list."""
    key = tuple(label_names)
    if key not in _CAPTION_CACHE:
        from ...encoders import TextEncoder, minilm_path
        from .prompts import caption_embeddings

        encoder = TextEncoder.from_pretrained(minilm_path(), local_files_only=True)
        _CAPTION_CACHE[key] = caption_embeddings(list(label_names), encoder)
    return _CAPTION_CACHE[key]


def _encode_split(model: PromptHash, split: Split, n_bits: int, batch_size: int) -> tuple[Codes, Codes]:
    if model.mode == "parity":
        return model.encode_paired(split.image, split.text, split.labels, n_bits=n_bits, batch_size=batch_size)
    return (
        model.encode(split.image, "image", n_bits=n_bits, batch_size=batch_size),
        model.encode(split.text, "text", n_bits=n_bits, batch_size=batch_size),
    )


def run_on_stream(
    stream: TaskStream,
    *,
    n_bits: int | tuple[int, ...] = (16, 32, 64),
    seed: int = 0,
    mode: str = "default",
    protocol: str = "joint",
    nested: bool = False,
    class_embeddings: Any = None,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 2e-3,
    dim: int = 128,
    weights: LossWeights | None = None,
    ties: str = "average",
    eval_k: int | None = None,
    encode_batch_size: int = 128,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and evaluate PromptHash on ``stream``; returns a JSON-safe dict.

    Args:
        stream: the tasks (e.g. :func:`pbeh.data.wikipedia5`).
        n_bits: the lengths trained together in one model (results for each).
        seed: seeds the model and the training.
        mode: ``"default"`` (honest: one modality, no labels, batch independent) or ``"parity"`` (the released
            paired/label-caption/cross-batch encoding; the result carries ``"label": "parity"``).
        protocol: ``"joint"`` or ``"continual"`` (module docstring).
        nested: one head whose prefixes are the shorter codes; one stored index serves every length.
        class_embeddings: ``(n_classes, E)`` caption embeddings; default: MiniLM captions of ``stream.label_names``.
        epochs: training epochs (per task when continual).
        batch_size, lr, dim, weights, model_kwargs: training and model options (see :func:`fit`, :class:`PromptHash`).
        ties: ``"average"`` (tie-averaged AP) or ``"reference"`` for ``R``.
        eval_k: mAP@k; ``None`` is mAP@all.
        encode_batch_size: rows per encoding pass (the parity mode's codes depend on it; the released value is 128).

    Returns:
        ``{"method", "mode", "label", "protocol", "dataset", "seed", "lengths", "nested", "epochs", "dim", "weights",
        "ties", "seconds", "fit_seconds", "results": {str(K): {"R_i2t", "R_t2i" (lists, None = not evaluated),
        "mean_i2t", "mean_t2i", "bwt_i2t", "bwt_t2i", "unified_i2t", "unified_t2i", "unified_i2t_tie_avg",
        "unified_t2i_tie_avg", "unified_chance", "bytes_per_item", and per direction ``d`` the trainer's
        top-of-ranking figures from :func:`pbeh.evaluation.unified_metrics` (tie-averaged): "unified_{d}_p10",
        "unified_{d}_map100", "unified_{d}_p10_per_task", "unified_{d}_map100_per_task",
        "unified_{d}_newest_share_per_task"}}}``.
    """
    if not isinstance(stream, TaskStream):
        raise TypeError(f"stream: expected a pbeh.data.TaskStream, got {type(stream).__name__}")
    lengths = check_lengths(n_bits)
    mode = check_choice(mode, "mode", MODES)
    protocol = check_choice(protocol, "protocol", PROTOCOLS)
    ties = check_choice(ties, "ties", ("average", "reference"))
    eval_k = check_optional_positive_int(eval_k, "eval_k")
    encode_batch_size = check_positive_int(encode_batch_size, "encode_batch_size")
    seed = check_int(seed, "seed")
    if class_embeddings is None:
        class_embeddings = default_class_embeddings(stream.label_names)
    started = time.perf_counter()
    model = PromptHash(
        stream.image_dim,
        stream.text_dim,
        class_embeddings,
        n_bits=lengths,
        mode=mode,
        nested=nested,
        dim=dim,
        seed=seed,
        **(model_kwargs or {}),
    )
    fit_options: dict[str, Any] = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weights": weights}
    tasks = list(stream)
    n_tasks = len(tasks)
    stored_lengths = (lengths[-1],) if nested else lengths
    indexes = {k: (TruncatedHammingIndex(), TruncatedHammingIndex()) for k in stored_lengths}  # (image, text)
    matrices = {k: ContinualMatrix(n_tasks) for k in lengths}
    unified: dict[int, dict[str, float]] = {}
    unified_lists: dict[int, dict[str, Any]] = {k: {} for k in lengths}
    fit_seconds = 0.0

    def store(task_index: int) -> None:
        db = tasks[task_index].database
        for k in stored_lengths:
            img, txt = _encode_split(model, db, k, encode_batch_size)
            indexes[k][0].add(img, db.ids)
            indexes[k][1].add(txt, db.ids)

    def evaluate(t: int) -> None:
        seen = tasks[: t + 1]
        for k in lengths:
            image_index, text_index = indexes[lengths[-1] if nested else k]
            queries = [_encode_split(model, task.query, k, encode_batch_size) for task in seen]
            for i, task in enumerate(seen):
                db_img, db_txt = image_index.get_codes(task.database.ids), text_index.get_codes(task.database.ids)
                q_img, q_txt = queries[i]
                labels_q, labels_db = task.query.labels, task.database.labels
                matrices[k].record(t, i, "i2t", map_at_k(q_img, db_txt, labels_q, labels_db, k=eval_k, ties=ties))
                matrices[k].record(t, i, "t2i", map_at_k(q_txt, db_img, labels_q, labels_db, k=eval_k, ties=ties))
            q_labels = np.concatenate([task.query.labels for task in seen])
            db_ids = np.concatenate([task.database.ids for task in seen])
            db_labels = np.concatenate([task.database.labels for task in seen])
            table = LabelTable(db_ids, db_labels)
            q_img = Codes.concatenate([q for q, _ in queries])
            q_txt = Codes.concatenate([q for _, q in queries])
            depth = len(text_index) if eval_k is None else min(eval_k, len(text_index))
            unified[k] = {
                "unified_i2t": map_of_ranking(text_index.search(q_img, depth).ids, q_labels, table),
                "unified_t2i": map_of_ranking(image_index.search(q_txt, depth).ids, q_labels, table),
                "unified_i2t_tie_avg": map_at_k(
                    q_img, text_index.get_codes(db_ids), q_labels, db_labels, k=eval_k, ties="average"
                ),
                "unified_t2i_tie_avg": map_at_k(
                    q_txt, image_index.get_codes(db_ids), q_labels, db_labels, k=eval_k, ties="average"
                ),
                "unified_chance": chance_level(q_labels, db_labels),
            }
            # The trainer's top-of-ranking figures (tie-averaged), per query task: P@10, mAP@100, newest task's share.
            q_tasks = np.concatenate(
                [np.full(len(task.query.labels), i, dtype=np.int64) for i, task in enumerate(seen)]
            )
            for direction, q_codes, index in (("i2t", q_img, text_index), ("t2i", q_txt, image_index)):
                figures = unified_metrics(
                    q_codes,
                    q_labels,
                    q_tasks,
                    [index.get_codes(task.database.ids) for task in seen],
                    [task.database.labels for task in seen],
                    ties="average",
                )
                unified_lists[k][direction] = figures

    if protocol == "joint":
        report = fit(model, stream.joint().train, seed=seed, **fit_options)
        fit_seconds += report.seconds
        for t in range(n_tasks):
            store(t)
        evaluate(n_tasks - 1)
    elif protocol == "continual":
        for t, task in enumerate(tasks):
            report = fit(model, task.train, seed=seed + t, **fit_options)
            fit_seconds += report.seconds
            store(t)
            evaluate(t)
            _logger.info("prompthash %s task %d/%d done", mode, t + 1, n_tasks)
    else:  # pragma: no cover - check_choice above
        raise ValueError(f"protocol: expected one of {list(PROTOCOLS)}, got {protocol!r}")

    results: dict[str, Any] = {}
    for k in lengths:
        m = matrices[k]
        results[str(k)] = {
            "R_i2t": _json_matrix(m.matrix("i2t")),
            "R_t2i": _json_matrix(m.matrix("t2i")),
            "mean_i2t": m.final_mean("i2t"),
            "mean_t2i": m.final_mean("t2i"),
            "bwt_i2t": m.bwt("i2t"),
            "bwt_t2i": m.bwt("t2i"),
            **{name: float(v) for name, v in unified[k].items()},
            **{
                f"unified_{d}_{name}": getattr(unified_lists[k][d], attr)
                for d in ("i2t", "t2i")
                for name, attr in (
                    ("p10", "p_at_10"),
                    ("map100", "map_at_100"),
                    ("p10_per_task", "per_task_p_at_10"),
                    ("map100_per_task", "per_task_map_at_100"),
                    ("newest_share_per_task", "per_task_newest_share"),
                )
            },
            "bytes_per_item": ((lengths[-1] if nested else k) + 7) // 8,  # per item and modality
        }
    return {
        "method": "prompthash-nested" if nested else "prompthash",
        "mode": mode,
        "label": "parity" if mode == "parity" else "default",
        "protocol": protocol,
        "dataset": stream.name,
        "seed": seed,
        "lengths": list(lengths),
        "nested": bool(nested),
        "epochs": epochs,
        "dim": dim,
        "weights": (weights or LossWeights()).to_dict(),
        "ties": ties,
        "eval_k": eval_k,
        "seconds": time.perf_counter() - started,
        "fit_seconds": fit_seconds,
        "results": results,
    }


def _json_matrix(r: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else float(v) for v in row] for row in r]
