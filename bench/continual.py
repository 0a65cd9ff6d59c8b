"""Continual benchmark on real data: pbeh against the reference recipe and the baselines, in one run.

    python bench/continual.py --data-dir ../shared/data --out docs/results.md

For each dataset (Wikipedia-5, MIRFLICKR730-4; BENCHMARKS.md) and initial code length (16, 32, 64) it trains, on the
same splits: pbeh's defaults, PBEH reference parity, fixed length (never extend), fine-tune (no prompts, no anchors)
and joint training on all tasks at once (the upper bound), and prints one table per dataset: final mean mAP I→T and
T→I (last row of R), BWT, the unified score (all seen queries against one mixed-length index) with its chance level,
final bits, prefix drift and wall time. All methods share one TrainerConfig (printed with the table).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch

from pbeh.baselines import METHODS, run_method
from pbeh.data import mirflickr730_4, wikipedia5
from pbeh.trainer import TrainerConfig

DATASETS = {"wikipedia5": wikipedia5, "mirflickr730-4": mirflickr730_4}


def _fmt(x: object, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    parser.add_argument("--rho", type=float, default=0.1)
    parser.add_argument("--delta", type=int, default=1)
    parser.add_argument("--samples-per-prompt", type=int, default=100)
    parser.add_argument("--eval-k", type=int, default=0, help="k of mAP@k; 0 = mAP@all (default, small databases)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2025, 2026, 2027], help="averaged per cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write the tables as markdown here")
    parser.add_argument("--json", type=Path, default=None, help="write every summary as JSON here")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = TrainerConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        samples_per_prompt=args.samples_per_prompt,
        eval_k=None if args.eval_k == 0 else args.eval_k,
        eval_every=max(1, args.epochs // 10),
    )
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        "# Continual benchmark results",
        "",
        f"Produced by `{command}` on {platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{args.threads} threads, {time.strftime('%Y-%m-%d')}.",
        "",
        f"Shared settings: heads {tuple(args.hidden)}, {args.epochs} epochs per task, batch {args.batch_size}, "
        f"lr {args.lr}, AdamW, heads at 0.1·lr from task 2, samples_per_prompt {args.samples_per_prompt}, "
        f"mode-centre rule rho {args.rho}, delta {args.delta}, "
        f"mAP{'@all' if config.eval_k is None else f'@{config.eval_k}'}, mean over seeds {args.seeds} "
        "(± half the range across seeds). "
        "R[t, i] = queries of task i against the stored database of task i after task t; mean = last row mean; "
        "unified = every seen query against one index of all stored codes at their own lengths (z-score policy).",
        "",
    ]
    all_summaries = []
    for name in args.datasets:
        stream = DATASETS[name](args.data_dir)
        print(stream.describe(), flush=True)
        lines += [f"## {name}", "", "```", stream.describe(), "```", ""]
        lines += [
            "| method | bits₀ | mean I→T | mean T→I | BWT I→T | BWT T→I | unified I→T | unified T→I | chance "
            "| final bits | prefix drift | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for n_bits in args.bits:
            for method in args.methods:
                runs = []
                for seed in args.seeds:
                    _, summary = run_method(
                        method,
                        stream,
                        n_bits=n_bits,
                        hidden_dims=tuple(args.hidden),
                        config=config,
                        rho=args.rho,
                        delta=args.delta,
                        seed=seed,
                    )
                    summary.update(dataset=name, initial_bits=n_bits, seed=seed)
                    all_summaries.append(summary)
                    runs.append(summary)

                def cell(key: str, runs: list[dict] = runs) -> str:
                    values = [r.get(key) for r in runs]
                    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
                    if not values:
                        return "–"
                    mean = sum(values) / len(values)
                    half = (max(values) - min(values)) / 2
                    return f"{mean:.3f} ± {half:.3f}" if len(values) > 1 else f"{mean:.3f}"

                bits = sorted({r["final_bits"] for r in runs})
                seconds = sum(r["seconds"] for r in runs) / len(runs)
                row = (
                    f"| {method} | {n_bits} | {cell('mean_i2t')} | {cell('mean_t2i')} | {cell('bwt_i2t')} "
                    f"| {cell('bwt_t2i')} | {cell('unified_i2t')} | {cell('unified_t2i')} | {cell('unified_chance')} "
                    f"| {'/'.join(map(str, bits))} | {cell('prefix_drift')} | {seconds:.1f} |"
                )
                print(row, flush=True)
                lines.append(row)
        lines.append("")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(all_summaries, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
