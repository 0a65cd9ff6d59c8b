"""Continual benchmark on real data: pbeh against its ablations and the baselines, at pbeh's defaults.

    python bench/continual.py --data-dir ../shared/data --json runs/bench.jsonl --out docs/results.md

For each dataset (Wikipedia-5, MIRFLICKR730-4; BENCHMARKS.md), initial code length (16, 32, 64) and seed it trains, on
the same splits and with one :class:`~pbeh.trainer.TrainerConfig` (pbeh's defaults unless flags say otherwise):
pbeh, pbeh without class-prototype replay, fixed length (never extend), fine-tune (no prompts, anchors, stored-code
term or replay) and joint training on all tasks at once (the upper bound). Every figure is tie-averaged (independent of
item order). Each finished run is appended to ``--json`` (JSON lines) at once, so a long run can be split over
processes (``--datasets``) and the tables rendered from the merged files with ``--from-json``.

The tables: final mean per-task mAP@all (last row of R), BWT, the unified mAP@all (every seen query against one
mixed-length index of every stored code) beside its chance level, the unified P@10, the P@10 of the *earlier* tasks'
queries (tasks 1..T-1) in that index, and the largest share of an earlier task's top 10 that comes from the newest
task; then, per task, pbeh's unified P@10 against joint training's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from pbeh.baselines import METHODS, run_method
from pbeh.data import mirflickr730_4, wikipedia5
from pbeh.metrics import ContinualMatrix
from pbeh.trainer import ContinualTrainer, TrainerConfig
from pbeh.training.config import REPLAY_SPREADS

DATASETS = {"wikipedia5": wikipedia5, "mirflickr730-4": mirflickr730_4}
DEFAULT_METHODS = ["pbeh", "pbeh-no-replay", "fixed-length", "finetune", "joint"]


def _old_tasks(values: list[float] | None) -> list[float]:
    return [] if not values else list(values[:-1])


def _mean(values: list[float]) -> float:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def derived(summary: dict) -> dict:
    """The top-of-ranking figures of one run: P@10 of the earlier tasks and the newest task's largest share."""
    out = {}
    for d in ("i2t", "t2i"):
        out[f"old_p10_{d}"] = _mean(_old_tasks(summary.get(f"unified_{d}_p10_per_task")))
        shares = _old_tasks(summary.get(f"unified_{d}_newest_share_per_task"))
        out[f"old_newest_share_{d}"] = max(shares) if shares else float("nan")
        neutral = _old_tasks(summary.get(f"unified_{d}_newest_share_neutral_per_task"))
        out[f"old_newest_share_neutral_{d}"] = (
            neutral[shares.index(max(shares))] if shares and neutral else float("nan")
        )  # the same task's share if the ranking preferred no task
    return out


def matrices(matrix: ContinualMatrix) -> dict[str, list]:
    """R[t, i] of both directions as nested lists (``None`` where not evaluated; joint training has one row)."""
    return {
        f"R_{d}": [[None if v != v else float(v) for v in row] for row in matrix.matrix(d).tolist()]
        for d in ("i2t", "t2i")
    }


def rendered_by() -> str:
    """The line that says which command rendered a table, where and when."""
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    return (
        f"Rendered by `{command}` on {platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}."
    )


def read_jsonl(paths: list[Path]) -> list[dict]:
    """Every record of these JSON-lines files, in order."""
    return [json.loads(line) for path in paths for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: Path | None, record: dict) -> None:
    """Append one finished run at once, so an interrupted benchmark keeps what it finished."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def publish(text: str, out: Path | None) -> None:
    """Print the tables and write them to ``out`` when given."""
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)


def cell(runs: list[dict], key: str) -> str:
    values = [r.get(key) for r in runs]
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.3f} ± {half:.3f}" if len(values) > 1 else f"{mean:.3f}"


def render(records: list[dict], header: list[str]) -> str:
    lines = list(header)
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_dataset[r["dataset"]].append({**r, **derived(r)})
    for name, runs in by_dataset.items():
        lines += [f"## {name}", ""]
        if runs[0].get("describe"):
            lines += ["```", runs[0]["describe"], "```", ""]
        lines += [
            "| method | bits₀ | seeds | mean I→T | mean T→I | BWT I→T | BWT T→I | unified I→T | unified T→I | chance "
            "| P@10 I→T | P@10 T→I | old P@10 I→T | old P@10 T→I | newest share I→T | newest share T→I "
            "| final bits | drift | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        cells: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for r in runs:
            cells[(r["method"], r["initial_bits"])].append(r)
        order = sorted(cells, key=lambda mb: (mb[1], METHODS.index(mb[0]) if mb[0] in METHODS else 99))
        for method, bits in order:
            rs = cells[(method, bits)]
            final_bits = "/".join(map(str, sorted({r["final_bits"] for r in rs})))
            seconds = sum(r["seconds"] for r in rs) / len(rs)
            keys = ["mean_i2t", "mean_t2i", "bwt_i2t", "bwt_t2i", "unified_i2t", "unified_t2i", "unified_chance",
                    "unified_i2t_p10", "unified_t2i_p10", "old_p10_i2t", "old_p10_t2i", "old_newest_share_i2t",
                    "old_newest_share_t2i"]  # fmt: skip
            lines.append(
                f"| {method} | {bits} | {len(rs)} | "
                + " | ".join(cell(rs, k) for k in keys)
                + f" | {final_bits} | {cell(rs, 'prefix_drift')} | {seconds:.1f} |"
            )
        lines += ["", f"Per-task unified P@10 (I→T / T→I), mean over seeds: pbeh against joint training ({name}).", ""]
        lines += ["| bits₀ | method | " + " | ".join(f"T{t + 1}" for t in range(_n_tasks(runs))) + " |"]
        lines += ["|---|---|" + "---|" * _n_tasks(runs)]
        for bits in sorted({r["initial_bits"] for r in runs}):
            for method in ("pbeh", "joint"):
                rs = cells.get((method, bits))
                if not rs:
                    continue
                per = []
                for t in range(_n_tasks(runs)):
                    i2t = _mean([r["unified_i2t_p10_per_task"][t] for r in rs])
                    t2i = _mean([r["unified_t2i_p10_per_task"][t] for r in rs])
                    per.append(f"{i2t:.2f} / {t2i:.2f}")
                lines.append(f"| {bits} | {method} | " + " | ".join(per) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def _n_tasks(runs: list[dict]) -> int:
    return max(len(r.get("unified_i2t_p10_per_task") or []) for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[2025, 2026, 2027], help="averaged per cell")
    parser.add_argument("--epochs", type=int, default=None, help="default: TrainerConfig's")
    parser.add_argument(
        "--prototype-clusters", type=int, default=None, help="replay groups per old class (default: TrainerConfig's)"
    )
    parser.add_argument(
        "--replay-spread",
        choices=REPLAY_SPREADS,
        default=None,
        help="how pseudo items vary around their class mean (default: TrainerConfig's)",
    )
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="default: for_stream's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see docs on threads and speed)")
    parser.add_argument("--json", type=Path, default=None, help="append every run's summary here (JSON lines)")
    parser.add_argument("--from-json", type=Path, nargs="+", default=None, help="only render these JSON-lines files")
    parser.add_argument("--out", type=Path, default=None, help="write the tables as markdown here")
    args = parser.parse_args()

    config = config_from_args(args)
    hidden = args.hidden or list(_default_hidden())
    header = [
        "# Continual benchmark results",
        "",
        rendered_by(),
        "",
        f"Settings: pbeh's defaults (TrainerConfig: {_config_line(config)}; heads {tuple(hidden)}). Every figure is "
        "tie-averaged (the expectation over random order inside tie groups), mAP over the whole ranking. Cells are "
        "means over seeds ± half their range. R[t, i] = task i's queries against task i's stored codes after task t; "
        "mean = last row; BWT = mean over i < T of R[T, i] − R[i, i]. Unified = every seen query against one index of "
        "every stored code at its own length (z-score policy). Old P@10 = mean unified P@10 of tasks 1..T−1; newest "
        "share = the largest share of an earlier task's top 10 that comes from the newest task.",
        "",
    ]
    if args.from_json:
        publish(render(read_jsonl(args.from_json), header), args.out)
        return 0

    torch.set_num_threads(args.threads)
    records = []
    for name in args.datasets:
        stream = DATASETS[name](args.data_dir)
        print(stream.describe(), flush=True)
        # Seeds outermost: an interrupted run still has whole tables for the seeds it finished.
        for seed in args.seeds:
            for n_bits in args.bits:
                for method in args.methods:
                    trainer, summary = run_method(
                        method, stream, n_bits=n_bits, hidden_dims=tuple(hidden), config=config, seed=seed
                    )
                    summary.update(dataset=name, initial_bits=n_bits, seed=seed, describe=stream.describe())
                    summary.update(matrices(trainer.matrix))
                    records.append(summary)
                    extra = derived(summary)
                    print(
                        f"{name} {method} {n_bits} bits seed {seed}: unified {summary['unified_i2t']:.3f}/"
                        f"{summary['unified_t2i']:.3f} P@10 {summary['unified_i2t_p10']:.3f}/"
                        f"{summary['unified_t2i_p10']:.3f} old P@10 {extra['old_p10_i2t']:.3f}/"
                        f"{extra['old_p10_t2i']:.3f} ({summary['seconds']:.0f} s)",
                        flush=True,
                    )
                    append_jsonl(args.json, summary)
    publish(render(records, header), args.out)
    return 0


def _default_hidden() -> tuple[int, ...]:
    import inspect

    return tuple(inspect.signature(ContinualTrainer.for_stream).parameters["hidden_dims"].default)


def config_from_args(args: argparse.Namespace) -> TrainerConfig:
    """pbeh's defaults with the benchmark's ``--epochs``, ``--prototype-clusters`` and ``--replay-spread`` where
    given."""
    overrides = {
        "epochs": args.epochs,
        "prototype_clusters": args.prototype_clusters,
        "replay_spread": args.replay_spread,
    }
    return TrainerConfig(**{k: v for k, v in overrides.items() if v is not None})


def _config_line(config: TrainerConfig) -> str:
    keys = ("epochs", "batch_size", "lr", "later_task_head_lr_scale", "prototype_replay", "samples_per_prompt",
            "select_on", "ties", "class_prior", "prior_targets", "old_class_targets", "prototype_clusters",
            "replay_spread")  # fmt: skip
    return ", ".join(f"{k}={getattr(config, k)}" for k in keys)


if __name__ == "__main__":
    sys.exit(main())
