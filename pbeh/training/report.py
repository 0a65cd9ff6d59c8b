"""What the trainer records: a :class:`TaskReport` per task (JSON-safe through ``to_dict``) and the bookkeeping of
each task whose database is stored in the indexes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TaskReport", "top_of_index_summary"]


@dataclass
class TaskReport:
    """What happened on one task: training, selection, storage, evaluation and the extension decision.

    ``unified`` holds, per direction (``"i2t"``, ``"t2i"``), the figures of the one index over every stored task
    (:class:`pbeh.evaluation.UnifiedMetrics` as a dict): mAP, mAP@100 and P@10, per query task too, and the share of
    each task's top 10 that comes from the newest task.

    Example:
        >>> from pbeh.data import synthetic_stream
        >>> from pbeh.training import ContinualTrainer, TrainerConfig
        >>> stream = synthetic_stream(n_tasks=2, seed=0)
        >>> trainer = ContinualTrainer.for_stream(stream, n_bits=8, hidden_dims=(16,), config=TrainerConfig(epochs=1))
        >>> report = trainer.fit(stream)[-1]
        >>> report.task, report.n_bits, len(report.map_i2t), len(report.unified["i2t"]["per_task_p_at_10"])
        (1, 8, 2, 2)
    """

    task: int
    name: str
    n_bits: int
    n_prompts: int
    n_train: int
    n_validation: int
    n_database: int
    epochs: int
    best_epoch: int
    selection_score: float | None
    final_loss: float
    loss_terms: dict[str, float]
    map_i2t: list[float]
    map_t2i: list[float]
    unified_i2t: float
    unified_t2i: float
    unified_chance: float
    prefix_drift: float | None
    collapse: dict[str, Any]
    extension: dict[str, Any]
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    unified: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskReport:
        return cls(**{k: (float("nan") if v is None and k.startswith("unified") else v) for k, v in data.items()})


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if not math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


@dataclass
class _StoredTask:
    """Bookkeeping for a task whose database is in the indexes."""

    name: str
    ids: np.ndarray
    labels: np.ndarray
    n_bits: int


def top_of_index_summary(unified: dict[str, Any] | None) -> dict[str, Any]:
    """The summary keys of what the one index returns at its top (a task's ``TaskReport.unified``), per direction
    ``d``: ``unified_d_p10``, ``unified_d_map100``, ``unified_d_p10_per_task``, ``unified_d_map100_per_task``,
    ``unified_d_newest_share_per_task`` and ``unified_d_newest_share_neutral_per_task`` (``None`` where a report
    saved before a figure existed lacks it)."""
    out: dict[str, Any] = {}
    for direction, figures in (unified or {}).items():
        out[f"unified_{direction}_p10"] = figures.get("p_at_10")
        out[f"unified_{direction}_map100"] = figures.get("map_at_100")
        out[f"unified_{direction}_p10_per_task"] = figures.get("per_task_p_at_10")
        out[f"unified_{direction}_map100_per_task"] = figures.get("per_task_map_at_100")
        out[f"unified_{direction}_newest_share_per_task"] = figures.get("per_task_newest_share")
        out[f"unified_{direction}_newest_share_neutral_per_task"] = figures.get("per_task_newest_share_neutral")
    return out
