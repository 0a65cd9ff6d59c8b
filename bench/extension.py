"""Does bit extension pay? Crowded protocols, extension rules against fixed length at equal stored bits.

    python bench/extension.py --json bench/results/extension.jsonl --out docs/extension_results.md

PBEH's headline is that the code grows when the Hamming space crowds, so that later tasks get room without
re-encoding what is stored. On the two shared protocols (5 and 4 tasks at 16-64 bits) the space never crowds and
extension changes nothing measurable (docs/results.md). This benchmark makes it crowd: few initial bits (8, 16) for
many classes, over many tasks:

* ``mirflickr730-8``: MIRFLICKR730's 24 classes in 8 tasks of 3 (by frequency over the 730 items), a seeded 20 %
  query split per task, database = train;
* ``synthetic-100-30``: :func:`pbeh.data.synthetic_stream` with 10 tasks x 10 classes (100 classes), 30 items per
  class, image 256-d, text 128-d (a smaller sibling of bench/openclipart.py's ``synthetic-100``, to keep the grid
  affordable on 2 cores).

Per stream, initial length K0 and seed it trains, on the same split and with pbeh's defaults:

* ``fixed``: never extend (K0 bits for every task);
* ``mode-center``: PBEH's rule (far-from-mode-centre fraction above ``rho``);
* ``ties``: pbeh's tie-crowding rule (share of stored items whose nearest tie group has more than ``k`` items and
  mixes in an unrelated one: their top k is a lottery no ranking can fix at this length);
* ``schedule``: ``delta`` bits after every task whatever the codes look like (:class:`~pbeh.extension.FixedSchedule`):
  whether growing the code pays at all, separately from when a rule decides to grow it;
* ``collision``: pbeh's crowding rule (share of stored items with an unrelated item at Hamming distance <= radius
  above ``rho``), which looks at the failure retrieval suffers from;
* ``fixed@B``: fixed length at B bits, for every B that an extending run reached as its *mean stored bits per item*
  (rounded up: the equal-memory comparison) or as its final length (the equal-query-length comparison).

Extension pays when an extending run beats ``fixed@B`` at the same stored bits; beating ``fixed`` (K0) alone only
shows that more bits help. Every run is appended to ``--json`` as it finishes; ``--from-json`` renders the tables.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from pbeh.baselines import run_method
from pbeh.data import TaskStream, read_features_npz, synthetic_stream
from pbeh.extension import CollisionRule, FixedSchedule, ModeCenterRule, TieRule
from pbeh.trainer import TrainerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from continual import append_jsonl, cell, derived, publish, read_jsonl, rendered_by  # shared with continual.py


def mirflickr730_8(data_dir: Path) -> TaskStream:
    data = read_features_npz(data_dir / "mirflickr730" / "features.npz")
    return data.split(n_tasks=8, order="frequency", query_fraction=0.2, seed=0, database="train", name="mirflickr730-8")


def synthetic_100_30(data_dir: Path) -> TaskStream:
    del data_dir
    stream = synthetic_stream(
        n_tasks=10, classes_per_task=10, image_dim=256, text_dim=128, items_per_class=30, latent_dim=32, seed=0
    )
    stream.name = "synthetic-100-30"
    return stream


STREAMS = {"mirflickr730-8": mirflickr730_8, "synthetic-100-30": synthetic_100_30}
POLICIES = ("fixed", "mode-center", "collision", "ties", "schedule")


def mean_stored_bits(summary: dict, stream: TaskStream) -> float:
    """Stored bits per database item over the whole stream (each task's items keep the length they were stored at)."""
    sizes = [len(task.database) for task in stream]
    return sum(n * b for n, b in zip(sizes, summary["bits_per_task"], strict=True)) / sum(sizes)


def run(policy: str, stream: TaskStream, *, n_bits: int, args: argparse.Namespace, seed: int) -> dict:
    config = TrainerConfig() if args.epochs is None else TrainerConfig(epochs=args.epochs)
    common = {"n_bits": n_bits, "config": config, "seed": seed}
    if args.hidden:
        common["hidden_dims"] = tuple(args.hidden)
    if policy == "fixed" or policy.startswith("fixed@"):
        bits = n_bits if policy == "fixed" else int(policy.split("@")[1])
        trainer, summary = run_method("fixed-length", stream, **{**common, "n_bits": bits})
    elif policy == "mode-center":
        rule = ModeCenterRule(rho=args.rho_mode_center, delta=args.delta)
        trainer, summary = run_method("pbeh", stream, extension_policy=rule, **common)
    elif policy == "ties":
        rule = TieRule(rho=args.rho_ties, delta=args.delta, k=args.ties_k)
        trainer, summary = run_method("pbeh", stream, extension_policy=rule, **common)
    elif policy == "schedule":
        rule = FixedSchedule(bits_per_task=args.delta)
        trainer, summary = run_method("pbeh", stream, extension_policy=rule, **common)
    elif policy == "collision":
        rule = CollisionRule(rho=args.rho_collision, delta=args.delta, radius=args.radius)
        trainer, summary = run_method("pbeh", stream, extension_policy=rule, **common)
    else:
        raise ValueError(f"policy: expected one of {POLICIES} or 'fixed@B', got {policy!r}")
    summary.update(
        dataset=stream.name,
        initial_bits=n_bits,
        seed=seed,
        policy=policy,
        mean_stored_bits=mean_stored_bits(summary, stream),
        decisions=[
            {"n_new_bits": r.extension["n_new_bits"], **{k: v for k, v in r.extension["stats"].items()}}
            for r in trainer.reports
        ],
        describe=stream.describe(),
    )
    return summary


def _policy_order(policy: str) -> tuple[int, int]:
    if policy.startswith("fixed@"):
        return (len(POLICIES), int(policy.split("@")[1]))
    return (POLICIES.index(policy), 0)


def render(records: list[dict], header: list[str]) -> str:
    lines = list(header)
    by_dataset: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_dataset[r["dataset"]].append({**r, **derived(r)})
    keys = ["unified_i2t", "unified_t2i", "unified_i2t_p10", "unified_t2i_p10", "old_p10_i2t", "old_p10_t2i",
            "mean_i2t", "mean_t2i", "bwt_i2t", "bwt_t2i"]  # fmt: skip
    for name, runs in by_dataset.items():
        lines += [f"## {name}", "", "```", runs[0]["describe"], "```", ""]
        lines += [
            "| K0 | policy | seeds | final bits | stored bits/item | extensions after task | unified I→T | unified T→I "
            "| P@10 I→T | P@10 T→I | old P@10 I→T | old P@10 T→I | mean I→T | mean T→I | BWT I→T | BWT T→I "
            "| chance | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        cells: dict[tuple[int, str], list[dict]] = defaultdict(list)
        for r in runs:
            cells[(r["initial_bits"], r["policy"])].append(r)
        for k0, policy in sorted(cells, key=lambda kp: (kp[0], _policy_order(kp[1]))):
            rs = cells[(k0, policy)]
            final_bits = "/".join(map(str, sorted({r["final_bits"] for r in rs})))
            fired = "; ".join(
                ",".join(str(t + 1) for t, d in enumerate(r["decisions"]) if d["n_new_bits"]) or "–" for r in rs
            )
            seconds = sum(r["seconds"] for r in rs) / len(rs)
            lines.append(
                f"| {k0} | {policy} | {len(rs)} | {final_bits} | {cell(rs, 'mean_stored_bits')} | {fired} | "
                + " | ".join(cell(rs, k) for k in keys)
                + f" | {cell(rs, 'unified_chance')} | {seconds:.0f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--streams", nargs="+", default=list(STREAMS), choices=list(STREAMS))
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 16], help="initial code lengths K0")
    parser.add_argument(
        "--policies", nargs="+", default=list(POLICIES), help=f"any of {', '.join(POLICIES)} or fixed@B (B bits)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[2025, 2026, 2027])
    parser.add_argument("--delta", type=int, default=2, help="bits added per extension")
    parser.add_argument("--rho-mode-center", type=float, default=0.1)
    parser.add_argument("--rho-collision", type=float, default=0.1)
    parser.add_argument("--radius", type=int, default=0, help="collision radius (0: identical codes)")
    parser.add_argument("--rho-ties", type=float, default=0.1)
    parser.add_argument("--ties-k", type=int, default=10, help="tie rule: the top k a user sees")
    parser.add_argument("--no-equal-bits", action="store_true", help="skip the fixed@B runs")
    parser.add_argument("--epochs", type=int, default=None, help="default: TrainerConfig's")
    parser.add_argument("--hidden", type=int, nargs="+", default=None, help="default: for_stream's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="append every run here (JSON lines)")
    parser.add_argument("--from-json", type=Path, nargs="+", default=None, help="only render these files")
    parser.add_argument("--out", type=Path, default=None, help="write the tables as markdown here")
    args = parser.parse_args()

    header = [
        "# Does bit extension pay? (crowded protocols)",
        "",
        rendered_by(),
        "",
        "pbeh's defaults except the extension policy. Cells: mean over seeds ± half the range, tie-averaged. "
        "Stored bits/item: the mean length of the stored codes over the whole stream. `fixed@B`: fixed length at B "
        "bits, the equal-stored-bits (or equal-final-length) comparison for the extending runs. Extensions after "
        "task: the tasks after which the rule fired, per seed.",
        "",
    ]
    if args.from_json:
        publish(render(read_jsonl(args.from_json), header), args.out)
        return 0

    torch.set_num_threads(args.threads)
    records = []

    def record(summary: dict) -> None:
        records.append(summary)
        extra = derived(summary)
        print(
            f"{summary['dataset']} K0={summary['initial_bits']} {summary['policy']} seed {summary['seed']}: "
            f"bits {summary['bits_per_task']} (stored {summary['mean_stored_bits']:.1f}/item) unified "
            f"{summary['unified_i2t']:.3f}/{summary['unified_t2i']:.3f} P@10 {summary['unified_i2t_p10']:.3f}/"
            f"{summary['unified_t2i_p10']:.3f} old P@10 {extra['old_p10_i2t']:.3f}/{extra['old_p10_t2i']:.3f} "
            f"({summary['seconds']:.0f} s)",
            flush=True,
        )
        append_jsonl(args.json, summary)

    for name in args.streams:
        stream = STREAMS[name](args.data_dir)
        print(stream.describe(), flush=True)
        for seed in args.seeds:
            for k0 in args.bits:
                equal_bits: set[int] = set()
                for policy in args.policies:
                    summary = run(policy, stream, n_bits=k0, args=args, seed=seed)
                    record(summary)
                    if summary["final_bits"] > k0:
                        equal_bits.update({math.ceil(summary["mean_stored_bits"] - 1e-9), summary["final_bits"]})
                if not args.no_equal_bits:
                    for bits in sorted(equal_bits - {k0}):
                        record(run(f"fixed@{bits}", stream, n_bits=k0, args=args, seed=seed))
    publish(render(records, header), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
