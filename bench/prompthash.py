"""PromptHash on the real data: joint (all tasks at once), default vs parity, nested vs separate heads, continual.

    OMP_NUM_THREADS=1 python bench/prompthash.py --data-dir ../shared/data --out /tmp/prompthash.md

For each dataset (Wikipedia-5, MIRFLICKR730-4) and seed, one model per variant is trained with the lengths 16, 32 and
64 together, and evaluated per length with :func:`pbeh.models.prompthash.run_on_stream`:

* ``joint``: default mode (an image from the image alone, a text from the text alone, no labels, batch independent);
* ``joint-parity``: the released encoding (paired modality + label caption + attention across a batch of 128);
  every number of this row is labelled PARITY: it uses the other modality and the labels at query time;
* ``joint-nested``: default mode, one head whose prefixes are the shorter codes (one stored 64-bit index);
* ``continual``: default mode, fine-tuned task after task, stored codes never re-encoded;
* ``joint-balanced``: ``joint`` with pbeh's loss option (not the released objective): positive and negative pairs
  averaged separately in the pairwise terms and the intra-modal weight raised from 0.005 to 5
  (``LossWeights(balance_pairs=1.0, intra=5.0)``; docs/prompthash.md says why).

Columns: mean of the last row of R (mAP@all, tie-averaged), BWT (continual only), the unified score (all queries
against one index of every stored code, ranked as pbeh's trainer ranks, ties by id; and tie-averaged), its chance
level, the unified P@10 (tie-averaged), bytes stored per item and modality, seconds per run. Figures are means over
seeds, ± half their range.

``--jsonl FILE`` appends, as soon as a run finishes, one record per trained length in the schema of
``bench/continual.py`` (method ``prompthash-joint``, ``prompthash-joint-PARITY``, ``prompthash-nested``,
``prompthash-continual``; ``unified_*`` tie-averaged as there), so that

    python bench/continual.py --from-json bench/results/prompthash.jsonl

renders the PromptHash rows beside pbeh's (``--from-json`` here also reads such files). ``seconds`` is the time of
the one run that trained every length together.
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
from pbeh.models.prompthash import LossWeights, run_on_stream

DATASETS = {"wikipedia5": wikipedia5, "mirflickr730-4": mirflickr730_4}
VARIANTS = {
    "joint": {"mode": "default", "protocol": "joint", "nested": False},
    "joint-parity": {"mode": "parity", "protocol": "joint", "nested": False},
    "joint-nested": {"mode": "default", "protocol": "joint", "nested": True},
    "continual": {"mode": "default", "protocol": "continual", "nested": False},
    # pbeh's loss option, not the released objective: positive and negative pairs averaged separately, intra x 1000
    "joint-balanced": {
        "mode": "default",
        "protocol": "joint",
        "nested": False,
        "weights": LossWeights(balance_pairs=1.0, intra=5.0),
    },
}
# The method names of the rows in bench/continual.py's schema.
METHOD_NAMES = {
    "joint": "prompthash-joint",
    "joint-parity": "prompthash-joint-PARITY",
    "joint-nested": "prompthash-nested",
    "continual": "prompthash-continual",
    "joint-balanced": "prompthash-joint-balanced",
}
VARIANT_OF_METHOD = {m: v for v, m in METHOD_NAMES.items()}
COLUMNS = (
    "mean_i2t",
    "mean_t2i",
    "bwt_i2t",
    "bwt_t2i",
    "unified_i2t_ties_by_id",
    "unified_t2i_ties_by_id",
    "unified_i2t",
    "unified_t2i",
    "unified_chance",
    "unified_i2t_p10",
    "unified_t2i_p10",
)
_PASSED_ON = (
    "mean_i2t", "mean_t2i", "bwt_i2t", "bwt_t2i", "unified_chance", "bytes_per_item", "R_i2t", "R_t2i",
    "unified_i2t_p10", "unified_t2i_p10", "unified_i2t_map100", "unified_t2i_map100",
    "unified_i2t_p10_per_task", "unified_t2i_p10_per_task", "unified_i2t_map100_per_task",
    "unified_t2i_map100_per_task", "unified_i2t_newest_share_per_task", "unified_t2i_newest_share_per_task",
)  # fmt: skip


def continual_records(run: dict, dataset: str, describe: str | None = None) -> list[dict]:
    """One record per trained length of a :func:`run_on_stream` result (with its ``"variant"``), in the schema of
    ``bench/continual.py``: ``unified_*`` are the tie-averaged scores, ``unified_*_ties_by_id`` the id-ordered ones.
    Keys a run lacks (runs saved before the P@10 figures existed) are left out."""
    records = []
    for k in run["lengths"]:
        res = run["results"][str(k)]
        record = {key: res[key] for key in _PASSED_ON if key in res}
        record.update(
            method=METHOD_NAMES[run["variant"]],
            variant=run["variant"],
            label=run["label"],
            mode=run["mode"],
            protocol=run["protocol"],
            nested=run["nested"],
            dataset=dataset,
            describe=describe,
            seed=run["seed"],
            initial_bits=k,
            final_bits=run["lengths"][-1] if run["nested"] else k,  # stored bits (nested: the longest code)
            trained_lengths=run["lengths"],
            weights=run.get("weights"),
            tasks=len(res["R_i2t"]),
            epochs=run["epochs"],
            dim=run["dim"],
            ties="average",
            unified_i2t=res["unified_i2t_tie_avg"],
            unified_t2i=res["unified_t2i_tie_avg"],
            unified_i2t_ties_by_id=res["unified_i2t"],
            unified_t2i_ties_by_id=res["unified_t2i"],
            prefix_drift=None,
            seconds=run["seconds"],
        )
        records.append(record)
    return records


def load_records(paths: list[Path]) -> list[dict]:
    """Records from JSON-lines files written with ``--jsonl`` and from JSON lists of runs written with ``--json``."""
    records: list[dict] = []
    names = {factory.__name__.replace("_", "-"): key for key, factory in DATASETS.items()}
    for path in paths:
        text = path.read_text()
        if text.lstrip().startswith("["):
            for run in json.loads(text):
                records.extend(continual_records(run, names.get(run["dataset"], run["dataset"])))
        else:
            records.extend(json.loads(line) for line in text.splitlines() if line.strip())
    return records


def _cell(values: list) -> str:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return "–"
    mean = sum(values) / len(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.3f} ± {half:.3f}" if len(values) > 1 else f"{mean:.3f}"


def tabulate(records: list[dict], bits: list[int]) -> list[str]:
    """Markdown tables, one per dataset: per variant and length the mean ± half-range over the records' seeds."""
    lines: list[str] = []
    for name in dict.fromkeys(r["dataset"] for r in records):
        seeds = sorted({r["seed"] for r in records if r["dataset"] == name})
        lines += [
            f"## {name} (seeds {seeds})",
            "",
            "| variant | bits | seeds | " + " | ".join(COLUMNS) + " | bytes | seconds |",
            "|" + "---|" * (len(COLUMNS) + 5),
        ]
        for variant in VARIANTS:
            label = f"{variant} (PARITY)" if VARIANTS[variant]["mode"] == "parity" else variant
            for k in bits:
                rows = [
                    r for r in records if r["dataset"] == name and r["variant"] == variant and r["initial_bits"] == k
                ]
                if not rows:
                    continue
                cells = [_cell([r.get(c) for r in rows]) for c in COLUMNS]
                seconds = sum(r["seconds"] for r in rows) / len(rows)
                lines.append(
                    f"| {label} | {k} | {len(rows)} | "
                    + " | ".join(cells)
                    + f" | {rows[0]['bytes_per_item']} | {seconds:.1f} |"
                )
        lines.append("")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2025, 2026, 2027], help="outermost loop")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the tables as markdown here")
    parser.add_argument("--json", type=Path, default=None, help="write every run's result dict as JSON here")
    parser.add_argument(
        "--jsonl",
        type=Path,
        default=None,
        help="append each finished run's records (one per length, bench/continual.py's schema) here at once",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="tabulate the runs saved by earlier --json or --jsonl calls instead of training",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs: list[dict] = []
    records: list[dict] = []
    if args.from_json:
        records = load_records(args.from_json)
    else:
        streams = {name: DATASETS[name](args.data_dir) for name in args.datasets}
        for stream in streams.values():
            print(stream.describe(), flush=True)
        # Seeds outermost: an interrupted grid still has every variant for the seeds it finished.
        for seed in args.seeds:
            for name, stream in streams.items():
                for variant in args.variants:
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
                    new = continual_records(result, name, stream.describe())
                    records.extend(new)
                    if args.jsonl:
                        args.jsonl.parent.mkdir(parents=True, exist_ok=True)
                        with args.jsonl.open("a") as f:
                            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in new)
                    print(
                        f"{name} {variant} seed {seed}: {result['seconds']:.1f} s; unified (tie-averaged) "
                        + ", ".join(f"{r['initial_bits']}: {r['unified_i2t']:.3f}/{r['unified_t2i']:.3f}" for r in new),
                        flush=True,
                    )
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = [
        "# PromptHash benchmark",
        "",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{args.threads} thread(s), {time.strftime('%Y-%m-%d')}. Fusion width {sorted({r['dim'] for r in records})}, "
        f"{sorted({r['epochs'] for r in records})} epochs "
        f"(per task when continual), batch {args.batch_size}, lr {args.lr}, released loss weights. "
        "Rows marked PARITY encode every item with its paired modality and its ground-truth labels, attention "
        "across batches of 128 (the released test-time encoding): not comparable with the other rows.",
        "",
    ]
    lines += tabulate(records, args.bits)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
