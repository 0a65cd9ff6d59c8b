"""What the commands print: numbers, aligned text tables, the R[t, i] matrices, the summary table, one line per
finished task, the summary of a saved run, and JSON with non-finite numbers as null."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def format_value(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` decimals; None and non-finite floats as ``-``."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """Rows of cells as aligned columns (``right``: which columns to right-align; default all but the first)."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    right = right or [c > 0 for c in range(len(widths))]
    out = []
    for r in rows:
        cells = [
            cell.rjust(w) if right[c] else cell.ljust(w) for c, (cell, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def decision_text(extension: dict[str, Any]) -> str:
    """The first clause of an extension decision ("extend 32 -> 33 bits: image above threshold")."""
    reason = str(extension.get("reason", ""))
    return reason.split("; ", 1)[0]


def matrix_tables(matrix: Any, names: Sequence[str]) -> str:
    """R[t, i] per direction with tasks numbered 1..T and named."""
    blocks = []
    arrows = {"i2t": "image → text", "t2i": "text → image"}
    for direction in matrix.directions:
        values = matrix.matrix(direction)
        means = matrix.row_means(direction)
        n = matrix.n_tasks
        labels = [names[i] if i < len(names) else f"task {i + 1}" for i in range(n)]
        rows = [["after task"] + [f"{i + 1} {labels[i]}" for i in range(n)] + ["mean"]]
        for t in range(n):
            rows.append(
                [f"{t + 1} {labels[t]}"] + [format_value(float(v)) for v in values[t]] + [format_value(float(means[t]))]
            )
        title = f"mAP {direction} ({arrows.get(direction, direction)}): row = after training task t, column = task i"
        blocks.append(title + "\n" + format_table(rows))
    return "\n\n".join(blocks)


def top_of_index_table(summary: dict[str, Any], names: Sequence[str] = ()) -> str | None:
    """Per query task, what the one index returns at its top after the last task (ContinualTrainer.summary's
    ``unified_*_per_task`` keys): P@10, mAP@100, the share of the top 10 that comes from the newest task, and that
    share if the ranking preferred no task (same relevant hits; "neutral"). None when the summary has no per-task
    figures (a run saved before they existed)."""
    figures = (
        ("p10", "P@10"),
        ("map100", "mAP@100"),
        ("newest_share", "newest share"),
        ("newest_share_neutral", "neutral"),
    )
    keys = [
        (f"unified_{direction}_{name}_per_task", f"{label} {arrow}")
        for name, label in figures
        for direction, arrow in (("i2t", "i→t"), ("t2i", "t→i"))
    ]
    columns = [summary.get(key) for key, _ in keys]
    if not any(columns):
        return None
    n = max(len(c) for c in columns if c)
    rows = [["query task", *(label for _, label in keys)]]
    for t in range(n):
        name = f"{t + 1} {names[t]}" if t < len(names) else str(t + 1)
        rows.append([name, *(format_value(c[t]) if c and t < len(c) else "-" for c in columns)])
    title = (
        "the top of the one index, per query task (P@10, mAP@100, the share of the top 10 stored by the newest "
        "task, and that share if the ranking preferred no task, given the same relevant hits: a share above its "
        "neutral value is a pull toward the newest task; for the newest task's own queries it is their own task)"
    )
    return title + "\n" + format_table(rows)


def summary_table(summary: dict[str, Any], names: Sequence[str] = ()) -> str:
    """The summary (ContinualTrainer.summary's keys) as tables: scores per direction, what the one index returns at
    its top per query task (when known), then sizes. ``names``: the tasks' names, for the per-task rows."""

    def pair(key: str) -> list[str]:
        return [format_value(summary.get(f"{key}_i2t")), format_value(summary.get(f"{key}_t2i"))]

    rows = [["", "image → text", "text → image"]]
    rows.append(["mean mAP over tasks (final)", *pair("mean")])
    rows.append(["backward transfer (BWT)", *pair("bwt")])
    rows.append(["forgetting", *pair("forgetting")])
    rows.append(["unified mAP (one index)", *pair("unified")])
    if "unified_i2t_p10" in summary:
        rows.append(
            ["unified P@10", format_value(summary.get("unified_i2t_p10")), format_value(summary.get("unified_t2i_p10"))]
        )
    lines = [f"summary after {summary.get('tasks', '?')} task(s)", format_table(rows)]
    top = top_of_index_table(summary, names)
    if top is not None:
        lines += ["", top, ""]
    extra = [
        ["chance level of the unified mAP", format_value(summary.get("unified_chance"))],
        ["prefix drift (stored bits now flipped)", format_value(summary.get("prefix_drift"))],
        [
            "code length: final, per task",
            f"{summary.get('final_bits', '-')} bits; " + ", ".join(str(b) for b in summary.get("bits_per_task", [])),
        ],
    ]
    if summary.get("bytes_per_item") is not None:
        extra.append(["bytes per stored item and modality", format_value(summary["bytes_per_item"], 2)])
    if summary.get("seconds") is not None:
        extra.append(["seconds", format_value(summary["seconds"], 1)])
    lines.append(format_table(extra, right=[False, False]))
    return "\n".join(lines)


def report_line(report: Any, n_tasks: int | None = None) -> str:
    """One line per finished task, numbered 1..T."""
    of = f"/{n_tasks}" if n_tasks else ""
    drift = "" if report.prefix_drift is None else f", prefix drift {report.prefix_drift:.3f}"
    return (
        f"task {report.task + 1}{of} {report.name}: {report.n_bits} bits, {report.n_prompts} prompts, best epoch "
        f"{report.best_epoch}/{report.epochs}; mAP image→text {report.map_i2t[-1]:.4f}, text→image "
        f"{report.map_t2i[-1]:.4f}; unified {format_value(report.unified_i2t)}/{format_value(report.unified_t2i)} "
        f"(chance {format_value(report.unified_chance)}){drift}; {report.seconds:.1f} s\n"
        f"  extension after task {report.task + 1}: {decision_text(report.extension)}"
    )


def summary_from_state(trainer: dict[str, Any]) -> dict[str, Any]:
    """The summary of a saved run, from its trainer.json (the same keys as ContinualTrainer.summary)."""
    from ..metrics import ContinualMatrix
    from ..trainer import TaskReport
    from ..training.report import top_of_index_summary

    matrix = ContinualMatrix.from_dict(trainer["matrix"])
    reports = [TaskReport.from_dict(r) for r in trainer.get("reports", [])]
    out: dict[str, Any] = {"tasks": len(reports)}
    if reports:
        last = reports[-1]
        out["final_bits"] = last.n_bits + int(trainer.get("pending_extension", 0) or 0)
        out["bits_per_task"] = [r.n_bits for r in reports]
        out["unified_i2t"], out["unified_t2i"] = last.unified_i2t, last.unified_t2i
        out["unified_chance"] = last.unified_chance
        drifts = [r.prefix_drift for r in reports if r.prefix_drift is not None]
        out["prefix_drift"] = drifts[-1] if drifts else None
        out.update(top_of_index_summary(last.unified))
    stored = trainer.get("stored", [])
    for direction in matrix.directions:
        out[f"mean_{direction}"] = matrix.final_mean(direction)
        out[f"bwt_{direction}"] = matrix.bwt(direction)
        out[f"forgetting_{direction}"] = matrix.forgetting(direction)
    if stored:
        out["stored_tasks"] = [s["name"] for s in stored]
    return out


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as None, numpy scalars as Python numbers and keys as strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return json_safe(obj.item())
    return obj


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON with sorted keys."""
    print(json.dumps(json_safe(obj), indent=2, sort_keys=True))
