"""One comparison: pbeh's methods, CASH and PIC-CMH (and PromptHash when present) on the same splits, lengths, seeds.

    OMP_NUM_THREADS=1 python bench/compare.py --data-dir ../shared/data --out docs/comparison.md --json compare.json

For each dataset (Wikipedia-5, MIRFLICKR730-4), code length (16, 32, 64) and seed, every method trains on the same
stream and is evaluated with the same metrics (pbeh.metrics.map_at_k for R[t, i], pbeh.evaluation.unified_metrics for
the unified score, one tie rule for all):

* pbeh's methods through :func:`pbeh.baselines.run_method` with ``TrainerConfig()``'s defaults except ``epochs``
  (and anything given with ``--pbeh-set key=value``); the heads' widths from ``--hidden``;
* ``cash``: :class:`pbeh.models.cash.CASHTrainer` with ``CASHConfig()`` (the released settings, selection on a
  validation split) except ``epochs``; one training run gives two rows: the task inferred from the discriminators
  (``cash``) and the oracle task id (``cash (oracle)``, labelled: the task is given at query time);
* ``picmh``: :class:`pbeh.models.picmh.PICMHTrainer`, expert prompts that train (what the paper intends);
  ``picmh-released``: experts never trained (the released code's behaviour);
* ``prompthash`` (joint, not continual) when :mod:`pbeh.models.prompthash` is importable; skipped otherwise.

Columns: final mean mAP I→T / T→I (last row of R), BWT and forgetting (both directions), the unified score (every
seen query against one ranking of every stored code) beside its chance level, bytes stored per item and modality
(codes; plus the raw features a re-encoding method must keep), encoder passes over the database (database items
encoded for storage and evaluation / database size; re-encoding counts), training wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

from pbeh.baselines import METHODS as PBEH_METHODS
from pbeh.baselines import run_method
from pbeh.data import TaskStream, mirflickr730_4, wikipedia5
from pbeh.models.cash import CASHConfig, CASHTrainer
from pbeh.models.picmh import PICMHConfig, PICMHTrainer
from pbeh.trainer import ContinualTrainer, TrainerConfig

DATASETS = {"wikipedia5": wikipedia5, "mirflickr730-4": mirflickr730_4}
PEER_METHODS = ("cash", "picmh", "picmh-released", "prompthash")
DEFAULT_METHODS = ("pbeh", "pbeh-reference", "fixed-length", "finetune", "joint", "cash", "picmh", "picmh-released",
                   "prompthash")  # fmt: skip


@contextlib.contextmanager
def count_database_encodings(counter: dict[str, int]) -> Iterator[None]:
    """Count the database items :class:`ContinualTrainer` encodes for storage (``_store``), to measure its encoder
    passes instead of assuming them."""
    original = ContinualTrainer._store

    def counting(self: ContinualTrainer, task: Any) -> Any:
        counter["items"] += len(task.database)
        return original(self, task)

    ContinualTrainer._store = counting  # type: ignore[method-assign]
    try:
        yield
    finally:
        ContinualTrainer._store = original  # type: ignore[method-assign]


def parse_overrides(items: list[str], base: TrainerConfig) -> TrainerConfig:
    """``key=value`` pairs applied to ``base`` (values parsed as JSON, else kept as strings)."""
    changes: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(base)}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in names:
            raise SystemExit(f"--pbeh-set: expected key=value with key one of {sorted(names)}, got {item!r}")
        try:
            changes[key] = json.loads(raw)
        except json.JSONDecodeError:
            changes[key] = raw
    return dataclasses.replace(base, **changes)


def matrices(matrix: Any) -> dict[str, list]:
    """R[t, i] of both directions as nested lists (None where not evaluated), for the JSON and the figures."""
    return {
        f"R_{d}": [[None if v != v else float(v) for v in row] for row in matrix.matrix(d).tolist()]
        for d in ("i2t", "t2i")
    }


def run_pbeh(method: str, stream: TaskStream, n_bits: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    counter = {"items": 0}
    with count_database_encodings(counter):
        trainer, summary = run_method(
            method, stream, n_bits=n_bits, hidden_dims=tuple(args.hidden), config=args.pbeh_config, seed=seed
        )
    n_db = sum(len(t.database) for t in stream)
    summary["encoder_passes"] = counter["items"] / n_db
    summary["kept_feature_bytes_per_item"] = 0.0
    summary.update(matrices(trainer.matrix))
    return summary


def run_cash(stream: TaskStream, n_bits: int, seed: int, args: argparse.Namespace) -> list[tuple[str, dict]]:
    config = CASHConfig(
        epochs=args.epochs, eval_every=args.eval_every, eval_k=args.pbeh_config.eval_k, ties=args.pbeh_config.ties,
        seed=seed,
    )  # fmt: skip
    trainer = CASHTrainer.for_stream(stream, n_bits=n_bits, config=config, hidden_dim=max(args.hidden))
    started = time.perf_counter()
    trainer.fit(stream)
    seconds = time.perf_counter() - started
    rows = []
    for mode, label in (("inferred", "cash"), ("oracle", "cash (oracle)")):
        summary = trainer.summary(mode)
        summary["seconds"] = seconds
        summary.update(matrices(trainer.matrices[mode]))
        rows.append((label, summary))
    return rows


def run_picmh(stream: TaskStream, n_bits: int, seed: int, args: argparse.Namespace, experts: str) -> dict:
    config = PICMHConfig(
        epochs=args.epochs, eval_every=args.eval_every, eval_k=args.pbeh_config.eval_k, ties=args.pbeh_config.ties,
        seed=seed,
    )  # fmt: skip
    trainer = PICMHTrainer.for_stream(
        stream, n_bits=n_bits, config=config, hidden_dims=tuple(args.hidden), expert_prompts=experts
    )
    started = time.perf_counter()
    trainer.fit(stream)
    summary = trainer.summary()
    summary["seconds"] = time.perf_counter() - started
    summary.update(matrices(trainer.matrix))
    return summary


def run_prompthash(stream: TaskStream, seed: int, args: argparse.Namespace) -> dict[int, dict] | None:
    """PromptHash (joint; all lengths in one model) per length, or None when the module is absent or fails."""
    try:
        from pbeh.models.prompthash import run_on_stream
    except ImportError:
        return None
    try:
        out = run_on_stream(
            stream, n_bits=tuple(args.bits), seed=seed, protocol="joint", epochs=args.epochs,
            ties=args.pbeh_config.ties, eval_k=args.pbeh_config.eval_k,
        )  # fmt: skip
    except Exception as exc:
        print(f"prompthash skipped: {type(exc).__name__}: {exc}", flush=True)
        return None
    rows = {}
    for k in args.bits:
        r = dict(out["results"][str(k)])
        tie_avg = args.pbeh_config.ties == "average"
        r["unified_i2t"] = r.get("unified_i2t_tie_avg") if tie_avg else r.get("unified_i2t")
        r["unified_t2i"] = r.get("unified_t2i_tie_avg") if tie_avg else r.get("unified_t2i")
        r["seconds"] = out["seconds"] / len(args.bits)
        r["encoder_passes"] = 1.0
        r["kept_feature_bytes_per_item"] = 0.0
        rows[k] = r
    return rows


def fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def table_row(method: str, n_bits: int, s: dict[str, Any]) -> str:
    kept = s.get("kept_feature_bytes_per_item") or 0.0
    stored = fmt(float(s.get("bytes_per_item", float("nan"))), 2)
    if kept:
        stored += f" + {kept:.0f} features"
    return (
        f"| {method} | {n_bits} | {fmt(s.get('mean_i2t'))} | {fmt(s.get('mean_t2i'))} | {fmt(s.get('bwt_i2t'))} "
        f"| {fmt(s.get('bwt_t2i'))} | {fmt(s.get('forgetting_i2t'))} | {fmt(s.get('forgetting_t2i'))} "
        f"| {fmt(s.get('unified_i2t'))} | {fmt(s.get('unified_t2i'))} | {fmt(s.get('unified_chance'))} "
        f"| {stored} | {fmt(s.get('encoder_passes'), 2)} | {fmt(s.get('seconds'), 1)} |"
    )


HEADER = (
    "| method | bits | mean I→T | mean T→I | BWT I→T | BWT T→I | forgetting I→T | forgetting T→I | unified I→T "
    "| unified T→I | chance | bytes/item | encoder passes | seconds |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=[*PBEH_METHODS, *PEER_METHODS])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per task for every method")
    parser.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=[512, 512],
        help="hidden widths (pbeh heads, PIC-CMH MLP; CASH branches use the largest)",
    )
    parser.add_argument(
        "--pbeh-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="TrainerConfig fields for pbeh's methods beyond epochs (default: TrainerConfig())",
    )
    parser.add_argument("--eval-every", type=int, default=0, help="epochs between selection scores (0: epochs // 5)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2025])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="write the tables as markdown here")
    parser.add_argument("--json", type=Path, default=None, help="write every summary as JSON here")
    parser.add_argument(
        "--render",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="train nothing: write the tables from --json files of earlier (possibly interrupted) runs",
    )
    args = parser.parse_args()  # fmt: skip

    torch.set_num_threads(args.threads)
    args.eval_every = args.eval_every or max(1, args.epochs // 5)
    base = TrainerConfig()
    args.pbeh_config = parse_overrides(
        args.pbeh_set, dataclasses.replace(base, epochs=args.epochs, eval_every=args.eval_every)
    )
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    cfg = args.pbeh_config
    lines = [
        "# Comparison: pbeh, CASH, PIC-CMH" + (", PromptHash" if "prompthash" in args.methods else ""),
        "",
        f"Produced by `{command}` on {platform.machine()} ({os.cpu_count()} cores), torch {torch.__version__}, "
        f"{args.threads} thread(s), {time.strftime('%Y-%m-%d')}.",
        "",
        f"**Reduced for CPU time:** {args.epochs} epochs per task for every method (the released recipes use "
        f"100), a selection score every {args.eval_every} epochs, hidden widths {tuple(args.hidden)} "
        f"(released: 4096), seeds {args.seeds} (figures are means over seeds). "
        f"pbeh's methods: `TrainerConfig()` with epochs{' and ' + ', '.join(args.pbeh_set) if args.pbeh_set else ''}"
        f" (so batch {cfg.batch_size}, lr {cfg.lr}, select_on {cfg.select_on!r}). "
        "CASH: `CASHConfig()` (batch 64, lr 1e-5 then 1e-6, ExponentialLR 0.99, selection on a validation split). "
        "PIC-CMH: `PICMHConfig()` (batch 512, lr 1e-4 → 5e-5, selection on a validation split). "
        f"R[t, i] with mAP@{cfg.eval_k or 'all'}; unified = mAP over one ranking of every stored code for every seen "
        f"query (pbeh.evaluation.unified_metrics); ties {cfg.ties!r} everywhere. "
        "`cash (oracle)` is given the true task of every query (the released code's per-task numbers); `cash` infers "
        "it from the discriminators. bytes/item = packed code bytes per item and modality; PIC-CMH must also keep "
        "the float32 features of both modalities to re-encode. encoder passes = database items encoded for storage "
        "and evaluation / database size (per-epoch selection encodings not counted; `joint` stores the merged database "
        "in its fit and each task's again for the per-task evaluation). seconds = training and "
        "evaluation wall time per run (PromptHash: one run for all lengths, divided by their number).",
        "",
    ]
    if args.render:
        rows = [row for path in args.render for row in json.loads(path.read_text())]
        lines[2] = f"Tables rendered by `{command}` from the JSON the runs wrote (the same options as those runs)."
        for name in [d for d in DATASETS if any(r["dataset"] == d for r in rows)]:
            lines += [f"## {name}", "", "```", DATASETS[name](args.data_dir).describe(), "```", "", HEADER]
            lines += [*render_rows([r for r in rows if r["dataset"] == name]), ""]
        return _write(lines, args, rows=None)
    all_rows: list[dict[str, Any]] = []
    for name in args.datasets:
        stream = DATASETS[name](args.data_dir)
        print(stream.describe(), flush=True)
        lines += [f"## {name}", "", "```", stream.describe(), "```", "", HEADER]

        def add(method: str, n_bits: int, summary: dict[str, Any], seed: int, dataset: str = name) -> None:
            summary = {**summary, "method": method, "bits": n_bits, "seed": seed, "dataset": dataset}
            all_rows.append(summary)
            print(table_row(method, n_bits, summary), flush=True)
            if args.json:  # written after every run, so an interrupted run keeps what it finished
                args.json.write_text(json.dumps(all_rows, indent=2, sort_keys=True, default=str))

        for seed in args.seeds:
            for n_bits in args.bits:
                for method in args.methods:
                    if method in PBEH_METHODS:
                        add(method, n_bits, run_pbeh(method, stream, n_bits, seed, args), seed)
                    elif method == "cash":
                        for label, summary in run_cash(stream, n_bits, seed, args):
                            add(label, n_bits, summary, seed)
                    elif method in ("picmh", "picmh-released"):
                        experts = "trained" if method == "picmh" else "released"
                        add(method, n_bits, run_picmh(stream, n_bits, seed, args, experts), seed)
            # PromptHash trains every length in one model: one run per seed, after the others
            prompthash = run_prompthash(stream, seed, args) if "prompthash" in args.methods else None
            for n_bits in args.bits if prompthash is not None else ():
                add("prompthash (joint)", n_bits, prompthash[n_bits], seed)
        lines += [*render_rows([r for r in all_rows if r["dataset"] == name]), ""]
    return _write(lines, args, rows=all_rows)


def render_rows(rows: list[dict[str, Any]]) -> list[str]:
    """One table row per (method, bits): means over the seeds present, ordered by bits then method."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], int(r["bits"])), []).append(r)
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][1], _order(kv[0][0])))
    return [table_row(method, n_bits, _mean(runs)) for (method, n_bits), runs in ordered]


def _write(lines: list[str], args: argparse.Namespace, *, rows: list[dict[str, Any]] | None) -> int:
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json and rows is not None:
        args.json.write_text(json.dumps(rows, indent=2, sort_keys=True, default=str))
    return 0


def _order(method: str) -> int:
    names = [*PBEH_METHODS, "cash", "cash (oracle)", "picmh", "picmh-released", "prompthash (joint)"]
    return names.index(method) if method in names else len(names)


def _mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every numeric field (None when any seed lacks it)."""
    out: dict[str, Any] = {}
    for key in runs[0]:
        values = [r.get(key) for r in runs]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            out[key] = sum(float(v) for v in values) / len(values)
    return out


if __name__ == "__main__":
    sys.exit(main())
