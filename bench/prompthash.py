"""PromptHash on the real data: joint (all tasks at once), default vs parity, nested vs separate heads, continual.

    OMP_NUM_THREADS=1 python bench/prompthash.py --data-dir ../shared/data --out /tmp/prompthash.md

For each dataset (Wikipedia-5, MIRFLICKR730-4) and seed, one model per variant is trained with the lengths 16, 32 and
64 together, and evaluated per length with :func:`pbeh.models.prompthash.run_on_stream`:

* ``joint``: default mode (an image from the image alone, a text from the text alone, no labels, batch independent);
* ``joint-parity``: the released encoding (paired modality + label caption + attention across a batch of 128);
  every number of this row is labelled PARITY: it uses the other modality and the labels at query time;
* ``joint-nested``: default mode, one head whose prefixes are the shorter codes (one stored 64-bit index);
* ``continual``: default mode, fine-tuned task after task, stored codes never re-encoded.

Columns: mean of the last row of R (mAP@all, tie-averaged), BWT (continual only), the unified score (all queries
against one index of every stored code, ranked as pbeh's trainer ranks, ties by id; and tie-averaged), its chance
level, bytes stored per item and modality, seconds per run. Figures are means over seeds, ± half their range.
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

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from pbeh.data import mirflickr730_4, wikipedia5
from pbeh.models.prompthash import run_on_stream

DATASETS = {"wikipedia5": wikipedia5, "mirflickr730-4": mirflickr730_4}
VARIANTS = {
    "joint": {"mode": "default", "protocol": "joint", "nested": False},
    "joint-parity": {"mode": "parity", "protocol": "joint", "nested": False},
    "joint-nested": {"mode": "default", "protocol": "joint", "nested": True},
    "continual": {"mode": "default", "protocol": "continual", "nested": False},
}
COLUMNS = (
    "mean_i2t",
    "mean_t2i",
    "bwt_i2t",
    "bwt_t2i",
    "unified_i2t",
    "unified_t2i",
    "unified_i2t_tie_avg",
    "unified_t2i_tie_avg",
    "unified_chance",
)


def _cell(values: list) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.3f} ± {half:.3f}" if len(values) > 1 else f"{mean:.3f}"


def tabulate(runs: list[dict], bits: list[int]) -> list[str]:
    """Markdown tables, one per dataset: per variant and length the mean ± half-range over the runs' seeds."""
    lines: list[str] = []
    for name in dict.fromkeys(r["dataset"] for r in runs):
        seeds = sorted({r["seed"] for r in runs if r["dataset"] == name})
        lines += [
            f"## {name} (seeds {seeds})",
            "",
            "| variant | bits | " + " | ".join(COLUMNS) + " | bytes | seconds |",
            "|" + "---|" * (len(COLUMNS) + 4),
        ]
        for variant in VARIANTS:
            per_seed = [r for r in runs if r["dataset"] == name and r.get("variant") == variant]
            if not per_seed:
                continue
            label = f"{variant} (PARITY)" if VARIANTS[variant]["mode"] == "parity" else variant
            for k in bits:
                cells = [_cell([r["results"][str(k)][c] for r in per_seed]) for c in COLUMNS]
                seconds = sum(r["seconds"] for r in per_seed) / len(per_seed)
                lines.append(
                    f"| {label} | {k} | "
                    + " | ".join(cells)
                    + f" | {per_seed[0]['results'][str(k)]['bytes_per_item']} | {seconds:.1f} |"
                )
        lines.append("")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2025, 2026])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the tables as markdown here")
    parser.add_argument("--json", type=Path, default=None, help="write every run's result dict as JSON here")
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="tabulate the runs saved by earlier --json calls instead of training",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs = []
    if args.from_json:
        for path in args.from_json:
            runs.extend(json.loads(path.read_text()))
    else:
        for name in args.datasets:
            stream = DATASETS[name](args.data_dir)
            print(stream.describe(), flush=True)
            for variant in args.variants:
                for seed in args.seeds:
                    result = run_on_stream(
                        stream,
                        n_bits=tuple(args.bits),
                        seed=seed,
                        epochs=args.epochs,
                        dim=args.dim,
                        batch_size=args.batch_size,
                        lr=args.lr,
                        **VARIANTS[variant],
                    )
                    result["variant"] = variant
                    runs.append(result)
                    print(f"{name} {variant} seed {seed}: {result['seconds']:.1f} s", flush=True)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        "# PromptHash benchmark",
        "",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{args.threads} thread(s), {time.strftime('%Y-%m-%d')}. Fusion width {sorted({r['dim'] for r in runs})}, "
        f"{sorted({r['epochs'] for r in runs})} epochs "
        f"(per task when continual), batch {args.batch_size}, lr {args.lr}, released loss weights. "
        "Rows marked PARITY encode every item with its paired modality and its ground-truth labels, attention "
        "across batches of 128 (the released test-time encoding): not comparable with the other rows.",
        "",
    ]
    lines += tabulate(runs, args.bits)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
