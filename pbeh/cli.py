"""Command line: ``pbeh train | evaluate | search | describe`` (also ``python -m pbeh``).

Examples::

    pbeh train --protocol synthetic --out runs/synthetic            # no download needed
    pbeh train --protocol wikipedia5 --data-dir ../shared/data --bits 32 --out runs/wiki
    pbeh evaluate runs/wiki
    pbeh search runs/wiki --modality text --features queries.npy --k 5
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._version import __version__

__all__ = ["main"]

_logger = logging.getLogger("pbeh")


def _set_threads(n: int) -> None:
    """torch's intra-op threads; faiss threads are set per search by each index (1 by default)."""
    import torch

    torch.set_num_threads(n)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pbeh", description="Continual cross-modal hashing (PBEH).")
    parser.add_argument("--version", action="version", version=f"pbeh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a continual run on a task stream and print its matrices")
    _add_stream_args(train)
    train.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, state, results)")
    train.add_argument(
        "--method",
        default="pbeh",
        choices=("pbeh", "pbeh-no-stored", "pbeh-reference", "fixed-length", "finetune", "joint"),
        help="pbeh's defaults, the reference recipe, or a baseline (default: pbeh)",
    )
    train.add_argument("--bits", type=int, default=32, help="initial code length (default: 32)")
    train.add_argument("--epochs", type=int, default=None, help="epochs per task (default: 100; synthetic: 20)")
    train.add_argument("--batch-size", type=int, default=512)
    train.add_argument("--lr", type=float, default=1e-4)
    train.add_argument(
        "--hidden", type=int, nargs="+", default=None, help="hidden widths of the heads (default: 4096 4096)"
    )
    train.add_argument("--rho", type=float, default=0.1, help="mode-centre extension threshold (default: 0.1)")
    train.add_argument("--delta", type=int, default=1, help="bits added per extension (default: 1)")
    train.add_argument("--select-on", choices=("validation", "test", "last"), default=None)
    train.add_argument("--eval-k", type=int, default=1000, help="k of mAP@k; 0 for mAP@all (default: 1000)")
    train.add_argument("--seed", type=int, default=2025)
    train.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    train.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --out")
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-task logs")

    evaluate = sub.add_parser("evaluate", help="print the matrices and summary of a saved run")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--csv", type=Path, default=None, help="also write the matrices as CSV")

    search = sub.add_parser("search", help="search a saved run's index with feature vectors")
    search.add_argument("run", type=Path)
    search.add_argument("--modality", choices=("image", "text"), required=True, help="modality of the queries")
    search.add_argument("--features", type=Path, required=True, help=".npy (n, d) float features of the queries")
    search.add_argument("--k", type=int, default=10)

    describe = sub.add_parser("describe", help="print a task stream's tasks and sizes")
    _add_stream_args(describe)
    return parser


def _add_stream_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        default="synthetic",
        help="synthetic (default, no download), wikipedia5, mirflickr730-4, or a file protocol of pbeh.data",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="where the protocol's files are")
    parser.add_argument(
        "--n-tasks",
        type=int,
        default=None,
        help="for the file protocols (npz, all-mat, train-test-mat): split the classes into this many tasks",
    )
    parser.add_argument(
        "--order",
        choices=("given", "frequency"),
        default="given",
        help="for the file protocols: class order of the split (default: given)",
    )


_FILE_PROTOCOLS = ("npz", "all-mat", "train-test-mat")


def _load_stream(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from .data import load_protocol

    protocol = args.protocol.replace("_", "-").lower()
    if protocol in _FILE_PROTOCOLS:
        if args.n_tasks is None:
            raise SystemExit(f"pbeh: --protocol {protocol} needs --n-tasks (how many tasks to split the classes into)")
        return load_protocol(protocol, args.data_dir, n_tasks=args.n_tasks, order=args.order)
    return load_protocol(protocol, args.data_dir)


def _state_dir(run: Path) -> Path:
    """A run directory holds checkpoints; the newest is named by latest.json. A saved state directory works too."""
    if (run / "trainer.json").is_file():
        return run
    latest = run / "latest.json"
    if latest.is_file():
        return run / json.loads(latest.read_text())["directory"]
    raise SystemExit(f"pbeh: {str(run)!r} holds no pbeh run (no trainer.json or latest.json)")


def _train(args: argparse.Namespace) -> int:
    from .baselines import build_trainer
    from .serialization import write_json
    from .trainer import TrainerConfig

    _set_threads(args.threads)
    stream = _load_stream(args)
    synthetic = args.protocol == "synthetic"
    if synthetic:
        print("Synthetic stream: seeded random multi-label data, not a real benchmark (see docs/).")
    print(stream.describe())
    epochs = args.epochs if args.epochs is not None else (20 if synthetic else 100)
    hidden = tuple(args.hidden) if args.hidden else ((256, 256) if synthetic else (4096, 4096))
    base = TrainerConfig(
        epochs=epochs,
        batch_size=args.batch_size,
        lr=args.lr if not synthetic or args.lr != 1e-4 else 1e-3,
        eval_k=None if args.eval_k == 0 else args.eval_k,
        select_on=args.select_on or "validation",
        show_progress=not args.quiet,
        seed=args.seed,
    )
    trainer = build_trainer(
        args.method,
        stream,
        n_bits=args.bits,
        hidden_dims=hidden,
        config=base,
        rho=args.rho,
        delta=args.delta,
        seed=args.seed,
        checkpoint_dir=args.out,
    )
    if args.method == "joint":
        trainer.checkpoint_dir = None
        trainer.fit([stream.joint()], resume=False)
        trainer = trainer.evaluate_stream(stream)
        trainer.save(args.out / "joint")
        write_json(args.out / "latest.json", {"directory": "joint", "tasks_done": 1})
    else:
        trainer.fit(stream, resume=not args.no_resume)
    _print_results(trainer.matrix, trainer.summary(), trainer.reports)
    trainer.matrix.save_json(args.out / "matrix.json")
    trainer.matrix.to_csv(args.out / "matrix.csv")
    return 0


def _print_results(matrix, summary, reports) -> None:  # type: ignore[no-untyped-def]
    print()
    print(matrix.format_table())
    print()
    for r in reports:
        ext = r.extension
        print(
            f"task {r.task} {r.name}: {r.n_bits} bits, {r.n_prompts} prompts, best epoch {r.best_epoch}, "
            f"unified i2t {r.unified_i2t:.4f} t2i {r.unified_t2i:.4f} (chance {r.unified_chance:.4f}), "
            f"prefix drift {'-' if r.prefix_drift is None else f'{r.prefix_drift:.4f}'}; {ext['reason']}"
        )
    print()
    print("summary:", json.dumps(summary, indent=None, sort_keys=True))


def _evaluate(args: argparse.Namespace) -> int:
    from .metrics import ContinualMatrix
    from .serialization import read_json
    from .trainer import TaskReport

    state = read_json(_state_dir(args.run) / "trainer.json", what="trainer state")
    matrix = ContinualMatrix.from_dict(state["matrix"])
    reports = [TaskReport.from_dict(r) for r in state["reports"]]
    summary = {
        **{f"mean_{d}": matrix.final_mean(d) for d in ("i2t", "t2i")},
        **{f"bwt_{d}": matrix.bwt(d) for d in ("i2t", "t2i")},
        "bits_per_task": [r.n_bits for r in reports],
    }
    _print_results(matrix, summary, reports)
    if args.csv:
        matrix.to_csv(args.csv)
    return 0


def _search(args: argparse.Namespace) -> int:
    import torch

    from .index import TruncatedHammingIndex
    from .model import CrossModalHashModel

    state = _state_dir(args.run)
    model = CrossModalHashModel.from_pretrained(state / "model")
    other = "text" if args.modality == "image" else "image"
    index = TruncatedHammingIndex.load(state / f"{other}_index.safetensors")
    feats = np.load(args.features, allow_pickle=False)
    if feats.ndim == 1:
        feats = feats[None, :]
    codes = model.encode(torch.as_tensor(feats, dtype=torch.float32), args.modality)
    result = index.search(codes, args.k)
    for q in range(len(codes)):
        hits = zip(result.ids[q], result.scores[q], strict=True)
        pairs = ", ".join(f"{int(i)} ({s:.3f})" for i, s in hits if int(i) != -1)
        print(f"query {q}: {pairs}")
    return 0


def _describe(args: argparse.Namespace) -> int:
    print(_load_stream(args).describe())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pbeh`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "protocol", None) is not None:
        from .data import PROTOCOLS

        if args.protocol.replace("_", "-") not in PROTOCOLS:
            parser.error(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {args.protocol!r}")
    if args.command == "train" and not args.quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    handlers = {"train": _train, "evaluate": _evaluate, "search": _search, "describe": _describe}
    return handlers[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
