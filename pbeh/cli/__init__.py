"""Command line: ``pbeh train | evaluate | describe | search | plot`` (also ``python -m pbeh``).

Examples::

    pbeh train --protocol synthetic --out runs/synthetic            # no download needed
    pbeh train --protocol wikipedia5 --data-dir ../shared/data --bits 32 --out runs/wiki
    pbeh describe runs/wiki                                         # config, bits per task, sizes, scores
    pbeh evaluate runs/wiki
    pbeh search runs/wiki --modality text --features queries.npy --k 5
    pbeh plot runs/wiki                                             # needs: pip install "pbeh[plot]"

Tasks are numbered 1..T in everything the command line prints. Errors end in one line (``--debug`` shows the
traceback); an interrupted or failed ``pbeh train`` resumes from its last completed task when rerun unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__

__all__ = ["main"]

_logger = logging.getLogger("pbeh")

_FILE_PROTOCOLS = ("npz", "all-mat", "train-test-mat")
_RESUME_HINT = "rerun the same command to resume from the last completed task"

_THREADS_HELP = (
    "CPU threads for torch and faiss (default: 1). Both bring their own OpenMP thread pool; on shared or busy "
    "cores two pools compete, and 2 threads measured 7-10x slower than 1 on a shared 2-core machine. Raise it "
    "only on cores you have to yourself."
)


class _UserError(Exception):
    """A problem with what the user asked for: printed as one line, never with a resume hint."""


# ------------------------------------------------------------------------------------------------------ defaults
def _config_default(name: str) -> Any:
    """The default of a :class:`~pbeh.trainer.TrainerConfig` field (the CLI never repeats the numbers)."""
    from ..trainer import TrainerConfig

    for f in dataclasses.fields(TrainerConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)  # pragma: no cover - a renamed field shows up in the tests


def _for_stream_default(name: str) -> Any:
    from ..trainer import ContinualTrainer

    return inspect.signature(ContinualTrainer.for_stream).parameters[name].default


def _methods() -> tuple[str, ...]:
    from ..baselines import METHODS

    return tuple(METHODS)


def _build_trainer_default(name: str) -> Any:
    from ..baselines import build_trainer

    return inspect.signature(build_trainer).parameters[name].default


# ------------------------------------------------------------------------------------------------------ parser
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbeh",
        description="Continual cross-modal hashing (PBEH): train on a stream of tasks, inspect, search, plot.",
        epilog="Tasks are numbered 1..T. Run 'pbeh COMMAND --help' for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"pbeh {__version__}")
    debug_parent = argparse.ArgumentParser(add_help=False)
    debug_parent.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="on an error, show the full traceback"
    )
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        parents=[debug_parent],
        help="train a continual run on a task stream and print its results",
        description="Train a continual run task after task, with a checkpoint after each task; rerunning the same "
        "command resumes. Defaults are TrainerConfig's and ContinualTrainer.for_stream's.",
    )
    _add_stream_args(train)
    train.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, run.json, matrices)")
    train.add_argument(
        "--method",
        default="pbeh",
        choices=_methods(),
        help="pbeh's defaults, the reference recipe, or a baseline (see pbeh.baselines; default: pbeh)",
    )
    train.add_argument(
        "--bits", type=int, default=_for_stream_default("n_bits"), help="initial code length (default: %(default)s)"
    )
    train.add_argument(
        "--epochs", type=int, default=_config_default("epochs"), help="epochs per task (default: %(default)s)"
    )
    train.add_argument(
        "--batch-size", type=int, default=_config_default("batch_size"), help="minibatch size (default: %(default)s)"
    )
    train.add_argument(
        "--lr", type=float, default=_config_default("lr"), help="AdamW learning rate (default: %(default)s)"
    )
    train.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=list(_for_stream_default("hidden_dims")),
        metavar="WIDTH",
        help="hidden widths of each hashing head (default: %(default)s)",
    )
    train.add_argument(
        "--extension-rule",
        choices=["mode-center", "collision", "ties"],
        default="mode-center",
        help="when to widen the code after a task (methods that extend): mode-center = PBEH's rule (codes far from "
        "their mode centre), collision = stored items with an unrelated item at an identical code, ties = items whose "
        "nearest tie group is larger than 10 and mixes in an unrelated item (default: %(default)s)",
    )
    train.add_argument(
        "--rho",
        type=float,
        default=_build_trainer_default("rho"),
        help="extension threshold: extend when more than this share of the stored items is crowded by the "
        "extension rule (far from the mode centre, colliding or in a mixed tie group) (default: %(default)s)",
    )
    train.add_argument(
        "--delta",
        type=int,
        default=_build_trainer_default("delta"),
        help="bits added per extension (default: %(default)s)",
    )
    train.add_argument(
        "--samples-per-prompt",
        type=int,
        default=_config_default("samples_per_prompt"),
        help="training items per prompt of the adaptive pool size ceil(n_train / this) (default: %(default)s)",
    )
    train.add_argument(
        "--prompts-per-task",
        type=int,
        default=_config_default("prompts_per_task"),
        help="a fixed prompt pool size instead of the adaptive one (default: adaptive)",
    )
    train.add_argument(
        "--select-on",
        choices=("validation", "test", "last"),
        default=_config_default("select_on"),
        help="pick each task's best epoch on a validation split of the training items, on the task's test queries "
        "(the reference protocol, optimistic), or keep the last epoch (default: %(default)s)",
    )
    train.add_argument(
        "--eval-every",
        type=int,
        default=_config_default("eval_every"),
        help="evaluate the epoch-selection score every this many epochs (default: %(default)s)",
    )
    eval_k = _config_default("eval_k")
    train.add_argument(
        "--eval-k",
        type=int,
        default=0 if eval_k is None else eval_k,
        help="k of mAP@k for selection and evaluation; 0 for mAP@all (default: %(default)s)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=_config_default("seed"),
        help="seeds the model, the minibatch order and the validation split (default: %(default)s)",
    )
    train.add_argument(
        "--prototype-replay",
        type=int,
        default=_config_default("prototype_replay"),
        help="pseudo items of earlier tasks' classes (drawn from per-class feature means and spreads) added to every "
        "minibatch from the second task on, so old queries keep meeting their stored codes; 0 switches it off "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--prototype-noise",
        type=float,
        default=_config_default("prototype_noise"),
        help="spread of the replayed pseudo items around their class mean, in class standard deviations "
        "(default: %(default)s)",
    )
    train.add_argument(
        "--head-lr-scale",
        type=float,
        default=_config_default("later_task_head_lr_scale"),
        help="heads train at lr times this from the second task on (the reference: 0.1; default: %(default)s)",
    )
    train.add_argument(
        "--similarity-target",
        choices=("signed_cosine", "cosine", "reference"),
        default=_config_default("similarity_target"),
        help="target of the similarity terms: 2*cos(labels)-1, cos(labels), or the reference's 2*sigmoid(l.l/16)-1 "
        "(default: %(default)s)",
    )
    lr_fan_in = _config_default("lr_fan_in")
    train.add_argument(
        "--lr-fan-in",
        type=int,
        default=0 if lr_fan_in is None else lr_fan_in,
        help="weight matrices with more inputs than this train at lr*this/fan_in, which keeps wide features from "
        "collapsing the codes; 0 turns it off (default: %(default)s)",
    )
    train.add_argument(
        "--ties",
        choices=("average", "reference"),
        default=_config_default("ties"),
        help="rank score ties in random order, averaged exactly (figures independent of item order), or in database "
        "order as the released evaluation does (parity only) (default: %(default)s)",
    )
    train.add_argument(
        "--keep-task-checkpoints",
        action="store_true",
        help="keep every task's state in --out (default: only the newest, which is all resuming needs)",
    )
    train.add_argument("--threads", type=int, default=1, help=_THREADS_HELP)
    train.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    train.add_argument("--quiet", action="store_true", help="no per-task lines (warnings still show)")
    train.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")

    evaluate = sub.add_parser("evaluate", parents=[debug_parent], help="print the matrices and summary of a saved run")
    evaluate.add_argument("run", type=Path, help="run directory written by 'pbeh train' (or one task's checkpoint)")
    evaluate.add_argument("--csv", type=Path, default=None, help="also write the matrices as CSV to this file")
    evaluate.add_argument("--json", action="store_true", help="print the summary as JSON instead of tables")

    describe = sub.add_parser(
        "describe",
        parents=[debug_parent],
        help="show a saved run (config, bits per task, sizes, scores), or a task stream's tasks and sizes",
        description="With RUN: the run's configuration, bits per task, sizes and scores. Without RUN: the tasks of "
        "--protocol (and --data-dir) with their classes and sizes.",
    )
    describe.add_argument("run", type=Path, nargs="?", default=None, help="run directory written by 'pbeh train'")
    _add_stream_args(describe)
    describe.add_argument("--json", action="store_true", help="print as JSON")

    search = sub.add_parser(
        "search",
        parents=[debug_parent],
        help="search a saved run (or a saved Retriever) with feature vectors, texts or images",
        description="Encode queries with the run's model and search the other modality's index (image queries "
        "find texts, text queries find images). Prints id, score, task and label names (a Retriever folder: the "
        "stored metadata).",
    )
    search.add_argument(
        "run", type=Path, help="run directory written by 'pbeh train', or a folder written by Retriever.save"
    )
    search.add_argument("--modality", choices=("image", "text"), default=None, help="modality of --features")
    search.add_argument("--features", type=Path, default=None, help=".npy file of (n, d) or (d,) query features")
    search.add_argument(
        "--text",
        action="append",
        default=None,
        metavar="TEXT",
        help="a text query, for a Retriever folder with a text encoder (repeat for more queries)",
    )
    search.add_argument(
        "--image",
        action="append",
        type=Path,
        default=None,
        metavar="FILE",
        help="an image file query, for a Retriever folder with an image encoder (repeat for more queries)",
    )
    search.add_argument("--k", type=int, default=10, help="results per query (default: %(default)s)")
    search.add_argument("--json", action="store_true", help="print the results as JSON")
    search.add_argument("--threads", type=int, default=1, help=_THREADS_HELP)

    plot = sub.add_parser(
        "plot",
        parents=[debug_parent],
        help='draw a run\'s figures as PNG files (needs: pip install "pbeh[plot]")',
        description="Heatmaps of R[t, i], per-task P@10 in the unified index, bits per task, and PR curves.",
    )
    plot.add_argument("run", type=Path, help="run directory written by 'pbeh train'")
    plot.add_argument("--out", type=Path, default=None, help="folder for the PNG files (default: RUN/plots)")
    return parser


def _add_stream_args(parser: argparse.ArgumentParser) -> None:
    from ..data import PROTOCOLS

    parser.add_argument(
        "--protocol",
        default="synthetic",
        help=f"one of {', '.join(PROTOCOLS)} (default: synthetic, seeded random data, no download)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the protocol's data: a directory, or for npz/all-mat/train-test-mat the file itself (a directory "
        "holding one .npz works too)",
    )
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
        help="for the file protocols: class order of the split (default: %(default)s)",
    )
    parser.add_argument("--label-key", default=None, help="for npz (and multi-view .mat): the array holding the labels")


# ------------------------------------------------------------------------------------------------------ helpers
def _set_threads(n: int) -> None:
    if n < 1:
        raise _UserError(f"--threads: expected a positive number of threads, got {n}")
    import torch

    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except (ImportError, AttributeError):  # pragma: no cover - faiss is a dependency
        pass


def _configure_logging(quiet: bool) -> None:
    """Only the 'pbeh' logger, only warnings: per-task results are printed by the command itself, once."""
    logger = logging.getLogger("pbeh")
    for handler in list(logger.handlers):
        if getattr(handler, "_pbeh_cli", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pbeh: %(levelname)s: %(message)s"))
    handler.setLevel(logging.ERROR if quiet else logging.WARNING)
    handler._pbeh_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


def _protocol(args: argparse.Namespace) -> str:
    from ..data import PROTOCOLS

    protocol = args.protocol.replace("_", "-").lower()
    if protocol not in PROTOCOLS:
        raise _UserError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {args.protocol!r}")
    return protocol


def _load_stream(args: argparse.Namespace) -> Any:
    from ..data import load_protocol

    protocol = _protocol(args)
    kwargs: dict[str, Any] = {}
    if args.label_key is not None:
        if protocol not in ("npz", "all-mat"):
            raise _UserError(f"--label-key: only for --protocol npz or all-mat, got --protocol {protocol}")
        kwargs["label_key"] = args.label_key
    if protocol in _FILE_PROTOCOLS:
        if args.n_tasks is None:
            raise _UserError(f"--protocol {protocol} needs --n-tasks (how many tasks to split the classes into)")
        if args.data_dir is None:
            raise _UserError(f"--protocol {protocol} needs --data-dir (the data file)")
        return load_protocol(protocol, args.data_dir, n_tasks=args.n_tasks, order=args.order, **kwargs)
    if args.n_tasks is not None and protocol != "synthetic":
        raise _UserError(f"--n-tasks: {protocol} has a fixed task split; --n-tasks is for the file protocols")
    if protocol == "synthetic" and args.n_tasks is not None:
        kwargs["n_tasks"] = args.n_tasks
    return load_protocol(protocol, args.data_dir, **kwargs)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    right = right or [c > 0 for c in range(len(widths))]
    out = []
    for r in rows:
        cells = [
            cell.rjust(w) if right[c] else cell.ljust(w) for c, (cell, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _extension_rule(args: argparse.Namespace) -> Any:
    """The extension policy of ``--extension-rule`` (None: the method's own, the mode-centre rule or never)."""
    if args.extension_rule == "mode-center" or args.method in ("fixed-length", "finetune", "joint"):
        return None
    from ..extension import make_extension_policy

    try:
        return make_extension_policy(args.extension_rule, rho=args.rho, delta=args.delta)
    except (TypeError, ValueError) as exc:
        raise _UserError(f"--extension-rule {args.extension_rule}: {exc}") from exc


def _decision_text(extension: dict[str, Any]) -> str:
    """The first clause of an extension decision ("extend 32 -> 33 bits: image above threshold")."""
    reason = str(extension.get("reason", ""))
    return reason.split("; ", 1)[0]


def _matrix_tables(matrix: Any, names: Sequence[str]) -> str:
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
            rows.append([f"{t + 1} {labels[t]}"] + [_fmt(float(v)) for v in values[t]] + [_fmt(float(means[t]))])
        title = f"mAP {direction} ({arrows.get(direction, direction)}): row = after training task t, column = task i"
        blocks.append(title + "\n" + _table(rows))
    return "\n\n".join(blocks)


def _summary_table(summary: dict[str, Any]) -> str:
    def pair(key: str) -> list[str]:
        return [_fmt(summary.get(f"{key}_i2t")), _fmt(summary.get(f"{key}_t2i"))]

    rows = [["", "image → text", "text → image"]]
    rows.append(["mean mAP over tasks (final)", *pair("mean")])
    rows.append(["backward transfer (BWT)", *pair("bwt")])
    rows.append(["forgetting", *pair("forgetting")])
    rows.append(["unified mAP (one index)", *pair("unified")])
    if "unified_i2t_p10" in summary:
        rows.append(["unified P@10", _fmt(summary.get("unified_i2t_p10")), _fmt(summary.get("unified_t2i_p10"))])
    lines = [f"summary after {summary.get('tasks', '?')} task(s)", _table(rows)]
    extra = [
        ["chance level of the unified mAP", _fmt(summary.get("unified_chance"))],
        ["prefix drift (stored bits now flipped)", _fmt(summary.get("prefix_drift"))],
        [
            "code length: final, per task",
            f"{summary.get('final_bits', '-')} bits; " + ", ".join(str(b) for b in summary.get("bits_per_task", [])),
        ],
    ]
    if summary.get("bytes_per_item") is not None:
        extra.append(["bytes per stored item and modality", _fmt(summary["bytes_per_item"], 2)])
    if summary.get("seconds") is not None:
        extra.append(["seconds", _fmt(summary["seconds"], 1)])
    lines.append(_table(extra, right=[False, False]))
    return "\n".join(lines)


def _report_line(report: Any, n_tasks: int | None = None) -> str:
    """One line per finished task, numbered 1..T."""
    of = f"/{n_tasks}" if n_tasks else ""
    drift = "" if report.prefix_drift is None else f", prefix drift {report.prefix_drift:.3f}"
    return (
        f"task {report.task + 1}{of} {report.name}: {report.n_bits} bits, {report.n_prompts} prompts, best epoch "
        f"{report.best_epoch}/{report.epochs}; mAP image→text {report.map_i2t[-1]:.4f}, text→image "
        f"{report.map_t2i[-1]:.4f}; unified {_fmt(report.unified_i2t)}/{_fmt(report.unified_t2i)} "
        f"(chance {_fmt(report.unified_chance)}){drift}; {report.seconds:.1f} s\n"
        f"  extension after task {report.task + 1}: {_decision_text(report.extension)}"
    )


def _summary_from_state(trainer: dict[str, Any]) -> dict[str, Any]:
    """The summary of a saved run, from its trainer.json (the same keys as ContinualTrainer.summary)."""
    from ..metrics import ContinualMatrix
    from ..trainer import TaskReport

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
        for direction, figures in (last.unified or {}).items():
            out[f"unified_{direction}_p10"] = figures.get("p_at_10")
            out[f"unified_{direction}_map100"] = figures.get("map_at_100")
            out[f"unified_{direction}_p10_per_task"] = figures.get("per_task_p_at_10")
    stored = trainer.get("stored", [])
    for direction in matrix.directions:
        out[f"mean_{direction}"] = matrix.final_mean(direction)
        out[f"bwt_{direction}"] = matrix.bwt(direction)
        out[f"forgetting_{direction}"] = matrix.forgetting(direction)
    if stored:
        out["stored_tasks"] = [s["name"] for s in stored]
    return out


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_json_safe(obj), indent=2, sort_keys=True))


# ------------------------------------------------------------------------------------------------------ commands
def _train(args: argparse.Namespace, progress: dict[str, bool]) -> int:
    """``pbeh train``; under ``torchrun --nproc_per_node N -m pbeh train ...`` every process runs it in one process
    group (docs/distributed.md): rank 0 prints and writes the run files, the other ranks train silently."""
    import contextlib
    import os

    from ..training.distributed import init_from_env

    try:
        ctx = init_from_env()
    except (ValueError, RuntimeError) as exc:
        raise _UserError(f"torchrun environment: {exc}") from exc
    if ctx is None:
        return _train_in_process(args, progress, None)
    import torch.distributed

    try:
        if ctx.is_main:
            return _train_in_process(args, progress, ctx)
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            return _train_in_process(args, progress, ctx)
    finally:
        torch.distributed.destroy_process_group()


def _train_in_process(args: argparse.Namespace, progress: dict[str, bool], ctx: Any) -> int:
    from ..baselines import build_trainer
    from ..serialization import write_json
    from ..trainer import TrainerConfig

    _set_threads(args.threads)
    stream = _load_stream(args)
    if args.method not in _methods():  # pragma: no cover - argparse choices
        raise _UserError(f"--method: expected one of {_methods()}, got {args.method!r}")
    if args.protocol == "synthetic" and not args.json:
        print("Synthetic stream: seeded random multi-label data, not a real benchmark (see the docs).")
    if not args.json:
        print(stream.describe())
        print()
    try:
        base = TrainerConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_k=None if args.eval_k == 0 else args.eval_k,
            eval_every=args.eval_every,
            select_on=args.select_on,
            samples_per_prompt=args.samples_per_prompt,
            prompts_per_task=args.prompts_per_task,
            show_progress=False,  # the command prints its own per-task lines, numbered 1..T
            seed=args.seed,
            prototype_replay=args.prototype_replay,
            prototype_noise=args.prototype_noise,
            later_task_head_lr_scale=args.head_lr_scale,
            similarity_target=args.similarity_target,
            lr_fan_in=None if args.lr_fan_in == 0 else args.lr_fan_in,
            ties=args.ties,
        )
    except (TypeError, ValueError) as exc:
        raise _UserError(f"training options: {exc}") from exc
    n_tasks = len(stream)
    say = (lambda *a, **k: None) if (args.quiet or args.json) else print

    def on_task(report: Any) -> None:
        say(_report_line(report, n_tasks), flush=True)
        following = report.task + 1
        if following < n_tasks and args.method != "joint":
            say(
                f"training task {following + 1}/{n_tasks} {stream[following].name} ({args.epochs} epochs) ...",
                flush=True,
            )

    trainer = build_trainer(
        args.method,
        stream,
        n_bits=args.bits,
        hidden_dims=tuple(args.hidden),
        config=base,
        rho=args.rho,
        delta=args.delta,
        seed=args.seed,
        extension_policy=_extension_rule(args),
        checkpoint_dir=args.out,
        keep_task_checkpoints=args.keep_task_checkpoints,
        callbacks=[on_task],
    )
    if ctx is not None and ctx.device.type == "cuda":
        trainer.model.to(ctx.device)  # one process per GPU: rank r trains on cuda:<LOCAL_RANK>
    main_process = ctx is None or ctx.is_main
    previous = args.out / "run.json"
    if previous.is_file() and not args.no_resume and (args.out / "latest.json").is_file():
        from ..serialization import read_json

        before = read_json(previous, what="run description", expect=dict)
        now = {"protocol": _protocol(args), "method": args.method, "task_names": [t.name for t in stream]}
        changed = [k for k, v in now.items() if before.get(k) != v]
        if changed:
            raise _UserError(
                f"--out: {args.out} holds a run with another {', '.join(changed)} "
                f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); resume it with the same options, or "
                "pass --no-resume (which overwrites it) or another --out"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    if ctx is not None:
        from ..training.distributed import barrier

        barrier(ctx)  # every rank has checked the previous run.json before rank 0 replaces it
    if main_process:  # under torchrun, rank 0 writes the run files
        write_json(
            args.out / "run.json",
            {
                "pbeh_kind": "cli_run",
                "format_version": 1,
                "pbeh_version": __version__,
                "protocol": _protocol(args),
                "data_dir": None if args.data_dir is None else str(args.data_dir),
                "method": args.method,
                "n_tasks": n_tasks,
                "task_names": [t.name for t in stream],
                "label_names": list(stream.label_names) if stream.label_names is not None else None,
                "argv": sys.argv[1:],
            },
        )
    progress["training"] = True
    if args.method == "joint":
        trainer.checkpoint_dir = None
        say("joint training: all tasks at once (the upper bound; not continual)")
        trainer.fit([stream.joint()], resume=False)
        trainer = trainer.evaluate_stream(stream)
        if main_process:
            trainer.save(args.out / "joint")
            write_json(args.out / "latest.json", {"directory": "joint", "tasks_done": 1})
    else:
        if not args.no_resume and (args.out / "latest.json").is_file():
            done = json.loads((args.out / "latest.json").read_text()).get("tasks_done", "?")
            say(f"resuming {args.out}: {done} of {n_tasks} task(s) already done")
            first = int(done) if isinstance(done, int) else 0
        else:
            first = 0
        if first < n_tasks:
            say(f"training task {first + 1}/{n_tasks} {stream[first].name} ({args.epochs} epochs) ...", flush=True)
        trainer.fit(stream, resume=not args.no_resume)
    progress["training"] = False
    summary = trainer.summary()
    if main_process:
        trainer.matrix.save_json(args.out / "matrix.json")
        trainer.matrix.to_csv(args.out / "matrix.csv")
    if args.json:
        _print_json(summary)
        return 0
    print()
    print(_matrix_tables(trainer.matrix, [t.name for t in stream]))
    print()
    print(_summary_table(summary))
    print(f"\nsaved to {args.out} (pbeh describe {args.out}; pbeh evaluate {args.out})")
    return 0


def _read_run(path: Path) -> Any:
    from .._run import read_run

    return read_run(path)


def _evaluate(args: argparse.Namespace) -> int:
    from ..metrics import ContinualMatrix
    from ..trainer import TaskReport

    run = _read_run(args.run)
    matrix = ContinualMatrix.from_dict(run.trainer["matrix"])
    summary = _summary_from_state(run.trainer)
    if args.csv:
        matrix.to_csv(args.csv)
    if args.json:
        _print_json(summary)
        return 0
    names = run.info.get("task_names") or run.task_names
    print(_matrix_tables(matrix, names))
    print()
    reports = [TaskReport.from_dict(r) for r in run.trainer.get("reports", [])]
    for report in reports:
        print(_report_line(report, len(names) or None))
    print()
    print(_summary_table(summary))
    return 0


def _describe(args: argparse.Namespace) -> int:
    if args.run is None:
        stream = _load_stream(args)
        if args.json:
            _print_json(
                {
                    "name": stream.name,
                    "tasks": [
                        {
                            "task": t + 1,
                            "name": task.name,
                            "classes": list(task.classes),
                            "train": len(task.train),
                            "query": len(task.query),
                            "database": len(task.database),
                        }
                        for t, task in enumerate(stream)
                    ],
                }
            )
        else:
            print(stream.describe())
        return 0
    run = _read_run(args.run)
    trainer = run.trainer
    config = trainer.get("config", {})
    reports = trainer.get("reports", [])
    stored = trainer.get("stored", [])
    summary = _summary_from_state(trainer)
    sizes = {p.name: p.stat().st_size for p in run.state.rglob("*") if p.is_file()}
    if args.json:
        _print_json(
            {
                "run": str(run.run),
                "state": str(run.state),
                "info": run.info,
                "config": config,
                "extension_policy": trainer.get("extension_policy"),
                "stored": stored,
                "summary": summary,
                "bytes_on_disk": sum(sizes.values()),
            }
        )
        return 0
    info = run.info
    print(f"run {run.run} (newest state: {run.state.name})")
    if info:
        print(
            f"  protocol {info.get('protocol')}, method {info.get('method')}, {info.get('n_tasks')} task(s) in the "
            f"stream, {len(reports)} done; pbeh {info.get('pbeh_version')}"
        )
    policy = trainer.get("extension_policy", {})
    print(f"  extension policy: {json.dumps(policy, sort_keys=True)}; cross-length score: {trainer.get('index_score')}")
    keys = (
        "epochs",
        "batch_size",
        "lr",
        "select_on",
        "eval_k",
        "eval_every",
        "samples_per_prompt",
        "prompts_per_task",
        "seed",
    )
    print("  config: " + ", ".join(f"{k}={config.get(k)}" for k in keys if k in config))
    print()
    rows = [["task", "name", "bits", "prompts", "train", "database", "best epoch", "mAP i→t", "mAP t→i", "extension"]]
    for r in reports:
        rows.append(
            [
                str(r["task"] + 1),
                str(r["name"]),
                str(r["n_bits"]),
                str(r["n_prompts"]),
                str(r["n_train"]),
                str(r["n_database"]),
                f"{r['best_epoch']}/{r['epochs']}",
                _fmt(r["map_i2t"][-1]),
                _fmt(r["map_t2i"][-1]),
                _decision_text(r.get("extension", {})),
            ]
        )
    print(_table(rows, right=[True, False, True, True, True, True, True, True, True, False]))
    n_items = sum(len(ids) for ids in run.stored_ids)
    print()
    print(
        f"stored: {n_items} item(s) per modality in {len(stored)} task segment(s); "
        f"{sum(sizes.values()) / 1e6:.2f} MB on disk in {run.state.name}"
    )
    print()
    print(_summary_table(summary))
    return 0


def _search(args: argparse.Namespace) -> int:
    import torch

    from ..index import TruncatedHammingIndex
    from ..model import CrossModalHashModel

    _set_threads(args.threads)
    if args.k < 1:
        raise _UserError(f"--k: expected a positive number of results, got {args.k}")
    given = [name for name in ("features", "text", "image") if getattr(args, name) is not None]
    if len(given) != 1:
        raise _UserError(f"search: expected one of --features, --text, --image; got {given or 'none'}")
    if args.features is not None and args.modality is None:
        raise _UserError("--modality: say which modality the --features are (image or text)")
    if (args.run / "retriever.json").is_file():
        return _search_retriever(args)
    if args.features is None:
        raise _UserError(
            f"--{given[0]}: {args.run} is a run directory, which holds no encoder; search it with --features "
            "(a Retriever folder takes --text and --image)"
        )
    run = _read_run(args.run)
    model = CrossModalHashModel.from_pretrained(run.state / "model")
    other = "text" if args.modality == "image" else "image"
    index = TruncatedHammingIndex.load(run.state / f"{other}_index.safetensors")
    feats = _query_features(args, model.feature_dim(args.modality), "this run's model")
    codes = model.encode(torch.as_tensor(feats, dtype=torch.float32), args.modality)
    result = index.search(codes, args.k)
    names = run.info.get("task_names") or run.task_names
    label_names = run.label_names
    queries: list[dict[str, Any]] = []
    for q in range(len(codes)):
        hits = []
        tasks = run.task_of(result.ids[q])
        for item, score, task in zip(result.ids[q].tolist(), result.scores[q].tolist(), tasks, strict=True):
            if int(item) == -1:
                continue
            labels = run.labels_of(int(item))
            hit: dict[str, Any] = {
                "id": int(item),
                "score": float(score),
                "task": None if task is None else task + 1,
                "task_name": None if task is None or task >= len(names) else names[task],
                "labels": labels,
            }
            if label_names is not None:
                hit["label_names"] = [label_names[c] for c in labels if c < len(label_names)]
            hits.append(hit)
        queries.append({"query": q, "hits": hits})
    if args.json:
        _print_json({"modality": args.modality, "searched": other, "k": args.k, "queries": queries})
        return 0
    for entry in queries:
        print(f"query {entry['query']} ({args.modality} → {other}):")
        rows = [["rank", "id", "score", "task", "labels"]]
        for rank, hit in enumerate(entry["hits"], start=1):
            task = "-" if hit["task"] is None else f"{hit['task']} {hit['task_name'] or ''}".strip()
            labels = ", ".join(hit.get("label_names") or [str(c) for c in hit["labels"]]) or "-"
            rows.append([str(rank), str(hit["id"]), f"{hit['score']:.3f}", task, labels])
        print(_table(rows, right=[True, True, True, False, False]))
    return 0


def _query_features(args: argparse.Namespace, width: int, what: str) -> np.ndarray:
    if not args.features.is_file():
        raise _UserError(f"--features: no such file {str(args.features)!r}")
    try:
        feats = np.load(args.features, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise _UserError(f"--features: {str(args.features)!r} is not a readable .npy array ({exc})") from exc
    if feats.ndim == 1:
        feats = feats[None, :]
    if feats.ndim != 2 or feats.shape[1] != width:
        raise _UserError(
            f"--features: expected (n, {width}) {args.modality} features for {what}, got shape {feats.shape}"
        )
    return np.asarray(feats, dtype=np.float32)


def _search_retriever(args: argparse.Namespace) -> int:
    """Search a folder written by Retriever.save: texts, images (its encoders) or features."""
    from ..retriever import Retriever

    retriever = Retriever.load(args.run)
    if args.text is not None:
        modality, results = "text", retriever.search(text=list(args.text), k=args.k)
    elif args.image is not None:
        missing = [str(p) for p in args.image if not p.is_file()]
        if missing:
            raise _UserError(f"--image: no such file {missing[0]!r}")
        modality, results = "image", retriever.search(image=[str(p) for p in args.image], k=args.k)
    else:
        modality = args.modality
        feats = _query_features(args, retriever.model.feature_dim(modality), "this Retriever's model")
        results = retriever.search(**{f"{modality}_features": feats}, k=args.k)
    other = "image" if modality == "text" else "text"
    queries = [
        {
            "query": q,
            "hits": [{"id": h.id, "score": h.score, "task_name": h.task, "metadata": h.metadata} for h in hits],
        }
        for q, hits in enumerate(results)
    ]
    if args.json:
        _print_json({"modality": modality, "searched": other, "k": args.k, "queries": queries})
        return 0
    for entry in queries:
        print(f"query {entry['query']} ({modality} → {other}):")
        rows = [["rank", "id", "score", "task", "metadata"]]
        for rank, hit in enumerate(entry["hits"], start=1):
            meta = "-" if hit["metadata"] is None else json.dumps(hit["metadata"], ensure_ascii=False)
            rows.append([str(rank), str(hit["id"]), f"{hit['score']:.3f}", hit["task_name"] or "-", meta])
        print(_table(rows, right=[True, True, True, False, False]))
    return 0


def _plot(args: argparse.Namespace) -> int:
    from ..plot import plot_run

    written = plot_run(args.run, args.out)
    for path in written:
        print(path)
    return 0


# ------------------------------------------------------------------------------------------------------ main
def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (_UserError, ValueError, TypeError, OSError, ImportError)):
        return text  # these messages name the argument, the expected and the actual value
    return f"{type(exc).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pbeh`` console script; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    parser = _parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    _configure_logging(quiet=bool(getattr(args, "quiet", False)))
    handlers = {"evaluate": _evaluate, "search": _search, "describe": _describe, "plot": _plot}
    progress = {"training": False}
    try:
        if args.command == "train":
            return _train(args, progress)
        return handlers[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = f"; {_RESUME_HINT}" if progress["training"] else ""
        print(f"pbeh: interrupted{hint}", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        if debug:
            raise
        from ..trainer import ResumeMismatchError

        if progress["training"] and not isinstance(exc, ResumeMismatchError):
            hint = f" ({_RESUME_HINT}; --debug shows the traceback)"
        else:
            hint = "" if isinstance(exc, _UserError) else " (--debug shows the traceback)"
        print(f"pbeh {args.command}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
