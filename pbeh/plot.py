"""Figures of a saved run (``pbeh plot RUN``): R[t, i] heatmaps, per-task P@10 in the unified index, bits per task,
and PR curves. Needs matplotlib: ``pip install "pbeh[plot]"``.

Example (``run`` is a directory written by ``pbeh train``)::

    from pbeh.plot import plot_run
    for path in plot_run("runs/synthetic"):
        print(path)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ._run import RunState, read_run

__all__ = ["plot_run"]

_logger = logging.getLogger(__name__)

_DIRECTIONS = {"i2t": "image → text", "t2i": "text → image"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError('pbeh plot needs matplotlib: pip install "pbeh[plot]"') from exc
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _task_labels(run: RunState, n: int) -> list[str]:
    names = run.info.get("task_names") or run.task_names
    return [f"{i + 1} {names[i]}" if i < len(names) else str(i + 1) for i in range(n)]


def _heatmaps(plt: Any, run: RunState, out: Path) -> Path:
    from .metrics import ContinualMatrix

    matrix = ContinualMatrix.from_dict(run.trainer["matrix"])
    n = matrix.n_tasks
    labels = _task_labels(run, n)
    fig, axes = plt.subplots(1, len(matrix.directions), figsize=(4.2 * len(matrix.directions), 3.8), squeeze=False)
    values_all = np.concatenate([matrix.matrix(d).ravel() for d in matrix.directions])
    finite = values_all[np.isfinite(values_all)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    image = None
    for ax, direction in zip(axes[0], matrix.directions, strict=True):
        values = matrix.matrix(direction)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=vmin, vmax=vmax)
        for t in range(n):
            for i in range(n):
                if np.isfinite(values[t, i]):
                    ax.text(i, t, f"{values[t, i]:.2f}", ha="center", va="center", color="white", fontsize=8)
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        ax.set_xlabel("queries and database of task i")
        if ax is axes[0][0]:
            ax.set_ylabel("after training task t")
        ax.set_title(f"mAP {_DIRECTIONS.get(direction, direction)}")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    path = out / "matrices.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _unified_p10(plt: Any, run: RunState, out: Path) -> Path | None:
    reports = run.trainer.get("reports", [])
    if not reports or not reports[-1].get("unified"):
        return None
    n = len(reports)
    labels = _task_labels(run, n)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, direction in zip(axes, ("i2t", "t2i"), strict=True):
        for i in range(n):
            xs, ys = [], []
            for t in range(i, n):
                per_task = (reports[t].get("unified") or {}).get(direction, {}).get("per_task_p_at_10") or []
                if i < len(per_task) and per_task[i] is not None:
                    xs.append(t + 1)
                    ys.append(per_task[i])
            if xs:
                ax.plot(xs, ys, marker="o", label=f"queries of task {labels[i]}")
        ax.set_xticks(range(1, n + 1))
        ax.set_xlabel("after training task")
        ax.set_title(f"P@10 in the unified index, {_DIRECTIONS[direction]}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("P@10")
    axes[1].legend(fontsize=7, loc="best")
    path = out / "unified_p10.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _bits(plt: Any, run: RunState, out: Path) -> Path | None:
    reports = run.trainer.get("reports", [])
    if not reports:
        return None
    n = len(reports)
    bits = [r["n_bits"] for r in reports]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * n + 2), 3.2))
    bars = ax.bar(range(1, n + 1), bits, color="#4c72b0")
    for bar, b in zip(bars, bits, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, b, str(b), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(1, n + 1), _task_labels(run, n), rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("code length (bits)")
    ax.set_title("bits of the codes stored for each task")
    path = out / "bits.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _pr_curves(plt: Any, run: RunState, out: Path, max_queries: int = 300) -> Path | None:
    """Per stored task: its stored image codes as queries against its stored text codes, and the reverse (the
    run keeps no query codes, so the database items query their own task's database)."""
    from .index import TruncatedHammingIndex
    from .metrics import pr_curve

    if not run.stored_ids:
        return None
    image_index = TruncatedHammingIndex.load(run.state / "image_index.safetensors")
    text_index = TruncatedHammingIndex.load(run.state / "text_index.safetensors")
    labels = _task_labels(run, len(run.stored_ids))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    rng = np.random.default_rng(0)
    for t, (ids, task_labels) in enumerate(zip(run.stored_ids, run.stored_labels, strict=True)):
        if len(ids) < 2:
            continue
        rows = np.sort(rng.choice(len(ids), min(max_queries, len(ids)), replace=False))
        img, txt = image_index.get_codes(ids), text_index.get_codes(ids)
        for ax, (queries, database) in zip(axes, ((img, txt), (txt, img)), strict=True):
            curve = pr_curve(queries[rows], database, task_labels[rows], task_labels, no_relevant="exclude")
            ax.plot(curve.recall, curve.precision, marker=".", label=f"task {labels[t]} ({curve.n_bits} bits)")
    for ax, direction in zip(axes, ("i2t", "t2i"), strict=True):
        ax.set_xlabel("recall")
        ax.set_title(f"PR by Hamming radius, {_DIRECTIONS[direction]}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("precision")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle("stored items of each task against that task's stored items", fontsize=9, y=1.02)
    path = out / "pr_curves.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_run(run: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> list[Path]:
    """Draw a run's figures as PNG files and return their paths.

    Args:
        run: a run directory written by ``pbeh train`` (or one saved trainer state).
        out: the folder for the figures (created; default ``run/plots``).

    Returns:
        ``matrices.png`` (R[t, i] heatmaps, both directions), ``unified_p10.png`` (P@10 of each task's queries in
        the one mixed-length index, after every task), ``bits.png`` (code length per task) and ``pr_curves.png``
        (precision against recall by Hamming radius, per stored task), those the run has data for.

    Raises:
        ImportError: matplotlib is not installed.
        FileNotFoundError: no run at ``run``.
    """
    plt = _pyplot()
    state = read_run(run)
    target = Path(out) if out is not None else Path(run) / "plots"
    target.mkdir(parents=True, exist_ok=True)
    written = [_heatmaps(plt, state, target)]
    for draw in (_unified_p10, _bits, _pr_curves):
        path = draw(plt, state, target)
        if path is not None:
            written.append(path)
    _logger.info("wrote %d figure(s) to %s", len(written), target)
    return written
