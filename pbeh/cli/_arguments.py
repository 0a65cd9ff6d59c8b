"""The ``pbeh`` argument parser: every command's options, their help texts, and their defaults read from the library.

The defaults come from :class:`~pbeh.trainer.TrainerConfig`, :meth:`~pbeh.trainer.ContinualTrainer.for_stream` and
:func:`~pbeh.baselines.build_trainer` at the moment the parser is built, so the command line never repeats a number.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path
from typing import Any

from .._version import __version__

THREADS_HELP = (
    "CPU threads for torch and faiss (default: 1). Both bring their own OpenMP thread pool; on shared or busy "
    "cores two pools compete, and 2 threads measured 7-10x slower than 1 on a shared 2-core machine. Raise it "
    "only on cores you have to yourself."
)


def config_choices(name: str) -> tuple[str, ...]:
    """The accepted values of a :class:`~pbeh.trainer.TrainerConfig` field that takes one of a few strings."""
    from ..training import config

    return {
        "replay_spread": config.REPLAY_SPREADS,
        "prior_targets": config.PRIOR_TARGETS,
        "old_class_targets": config.OLD_CLASS_TARGETS,
    }[name]


def config_default(name: str) -> Any:
    """The default of a :class:`~pbeh.trainer.TrainerConfig` field (the CLI never repeats the numbers)."""
    from ..trainer import TrainerConfig

    for f in dataclasses.fields(TrainerConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)  # pragma: no cover - a renamed field shows up in the tests


def for_stream_default(name: str) -> Any:
    """The default of a :meth:`~pbeh.trainer.ContinualTrainer.for_stream` parameter."""
    from ..trainer import ContinualTrainer

    return inspect.signature(ContinualTrainer.for_stream).parameters[name].default


def method_names() -> tuple[str, ...]:
    """The ``--method`` choices: the names of :data:`pbeh.baselines.METHODS`."""
    from ..baselines import METHODS

    return tuple(METHODS)


def loss_weight_default(name: str) -> float:
    """A weight of pbeh's default :meth:`~pbeh.losses.LossWeights.pbeh`."""
    from ..losses import LossWeights

    return float(getattr(LossWeights.pbeh(), name))


def build_trainer_default(name: str) -> Any:
    """The default of a :func:`~pbeh.baselines.build_trainer` parameter."""
    from ..baselines import build_trainer

    return inspect.signature(build_trainer).parameters[name].default


def build_parser() -> argparse.ArgumentParser:
    """The ``pbeh`` parser with its five commands and their options."""
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
    add_stream_args(train)
    train.add_argument("--out", type=Path, required=True, help="run directory (checkpoints, run.json, matrices)")
    train.add_argument(
        "--method",
        default="pbeh",
        choices=method_names(),
        help="pbeh's defaults, the reference recipe, or a baseline (see pbeh.baselines; default: pbeh)",
    )
    train.add_argument(
        "--bits", type=int, default=for_stream_default("n_bits"), help="initial code length (default: %(default)s)"
    )
    train.add_argument(
        "--epochs", type=int, default=config_default("epochs"), help="epochs per task (default: %(default)s)"
    )
    train.add_argument(
        "--batch-size", type=int, default=config_default("batch_size"), help="minibatch size (default: %(default)s)"
    )
    train.add_argument(
        "--lr", type=float, default=config_default("lr"), help="AdamW learning rate (default: %(default)s)"
    )
    train.add_argument(
        "--hidden",
        type=int,
        nargs="+",
        default=list(for_stream_default("hidden_dims")),
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
        default=build_trainer_default("rho"),
        help="extension threshold: extend when more than this share of the stored items is crowded by the "
        "extension rule (far from the mode centre, colliding or in a mixed tie group) (default: %(default)s)",
    )
    train.add_argument(
        "--delta",
        type=int,
        default=build_trainer_default("delta"),
        help="bits added per extension (default: %(default)s)",
    )
    train.add_argument(
        "--samples-per-prompt",
        type=int,
        default=config_default("samples_per_prompt"),
        help="training items per prompt of the adaptive pool size ceil(n_train / this) (default: %(default)s)",
    )
    train.add_argument(
        "--prompts-per-task",
        type=int,
        default=config_default("prompts_per_task"),
        help="a fixed prompt pool size instead of the adaptive one (default: adaptive)",
    )
    train.add_argument(
        "--select-on",
        choices=("validation", "test", "last"),
        default=config_default("select_on"),
        help="pick each task's best epoch on a validation split of the training items, on the task's test queries "
        "(the reference protocol, optimistic), or keep the last epoch (default: %(default)s)",
    )
    train.add_argument(
        "--eval-every",
        type=int,
        default=config_default("eval_every"),
        help="evaluate the epoch-selection score every this many epochs (default: %(default)s)",
    )
    eval_k = config_default("eval_k")
    train.add_argument(
        "--eval-k",
        type=int,
        default=0 if eval_k is None else eval_k,
        help="k of mAP@k for selection and evaluation; 0 for mAP@all (default: %(default)s)",
    )
    train.add_argument(
        "--seed",
        type=int,
        default=config_default("seed"),
        help="seeds the model, the minibatch order and the validation split (default: %(default)s)",
    )
    train.add_argument(
        "--prototype-replay",
        type=int,
        default=config_default("prototype_replay"),
        help="pseudo items of earlier tasks' classes (drawn from the feature means and spreads of groups of each "
        "class's items) added to every minibatch from the second task on, so old queries keep meeting their stored "
        "codes; 0 switches it off (default: %(default)s)",
    )
    train.add_argument(
        "--class-centers",
        type=float,
        default=None,
        metavar="WEIGHT",
        help="weight of the class-centre term (every class gets a fixed target code when it first arrives and both "
        "modalities are pulled toward it, so every task places its classes in one shared layout); 0 switches it "
        f"off (default: the method's, {loss_weight_default('class_centers'):g} for pbeh)",
    )
    train.add_argument(
        "--stored-codes",
        type=float,
        default=None,
        metavar="WEIGHT",
        help="weight of the stored-code term (new outputs against earlier tasks' stored codes); 0 switches it off "
        f"(default: the method's, {loss_weight_default('stored_codes'):g} for pbeh)",
    )
    train.add_argument(
        "--previous-model",
        type=float,
        default=None,
        metavar="WEIGHT",
        help="weight of the previous-model term (from the second task on, outputs stay near those of the model as "
        "the task began, on the task's items and the replayed ones, so old queries keep meeting their stored codes; "
        "30 raised BWT on Wikipedia-5 and MIRFLICKR730-4 but cost many-class streams unified mAP); 0 switches it off "
        f"(default: the method's, {loss_weight_default('previous_model'):g} for pbeh)",
    )
    train.add_argument(
        "--class-prior",
        type=float,
        nargs="+",
        default=[config_default("class_prior")],
        metavar="WEIGHT",
        help="weight of the class prior in query codes (the class centre that the frozen features' per-class means "
        "point to, added to the heads' output, so queries of old classes are not pulled to the newest ones): one "
        "weight for both modalities, or two: image queries, then text queries (1 0.5 favours old image queries on "
        "Wikipedia-5); needs the class-centre term; 0 switches it off (default: %(default)s)",
    )
    train.add_argument(
        "--prior-targets",
        choices=config_choices("prior_targets"),
        default=config_default("prior_targets"),
        help="where the class prior steers a query of a class: 'stored', the majority of the codes stored for that "
        "class in the other modality (where the items it should find are), or 'centers', the class centre training "
        "aimed at; changes query codes only (default: %(default)s)",
    )
    train.add_argument(
        "--old-class-targets",
        choices=config_choices("old_class_targets"),
        default=config_default("old_class_targets"),
        help="what the class-centre term asks of an earlier class's items while a later task trains: 'stored', the "
        "majority of the codes stored for it, or 'centers', its fixed centre (default: %(default)s)",
    )
    train.add_argument(
        "--replay-spread",
        choices=config_choices("replay_spread"),
        default=config_default("replay_spread"),
        help="how replayed pseudo items of old classes vary around their class mean: 'translated' by the within-class "
        "deviation of a real item of the task being trained, rescaled to the old class's spread (feature "
        "translation), 'gaussian' by noise of the class's spread times --prototype-noise (default: %(default)s)",
    )
    train.add_argument(
        "--prototype-noise",
        type=float,
        default=config_default("prototype_noise"),
        help="with --replay-spread gaussian: spread of the replayed pseudo items around their class mean, in class "
        "standard deviations (default: %(default)s)",
    )
    train.add_argument(
        "--prototype-clusters",
        type=int,
        default=config_default("prototype_clusters"),
        metavar="K",
        help="replay each old class from up to K groups of its items (k-means, at least 8 items a group; no item's "
        "features are kept) instead of one mean and spread; 1: one per class (default: %(default)s)",
    )
    train.add_argument(
        "--head-lr-scale",
        type=float,
        default=config_default("later_task_head_lr_scale"),
        help="heads train at lr times this from the second task on (the reference: 0.1; default: %(default)s)",
    )
    train.add_argument(
        "--similarity-target",
        choices=("signed_cosine", "cosine", "reference"),
        default=config_default("similarity_target"),
        help="target of the similarity terms: 2*cos(labels)-1, cos(labels), or the reference's 2*sigmoid(l.l/16)-1 "
        "(default: %(default)s)",
    )
    lr_fan_in = config_default("lr_fan_in")
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
        default=config_default("ties"),
        help="rank score ties in random order, averaged exactly (figures independent of item order), or in database "
        "order as the released evaluation does (parity only) (default: %(default)s)",
    )
    train.add_argument(
        "--keep-task-checkpoints",
        action="store_true",
        help="keep every task's state in --out (default: only the newest, which is all resuming needs)",
    )
    train.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
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
    add_stream_args(describe)
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
    search.add_argument("--threads", type=int, default=1, help=THREADS_HELP)

    plot = sub.add_parser(
        "plot",
        parents=[debug_parent],
        help='draw a run\'s figures as PNG files (needs: pip install "pbeh[plot]")',
        description="Heatmaps of R[t, i], per-task P@10 in the unified index, bits per task, and PR curves.",
    )
    plot.add_argument("run", type=Path, help="run directory written by 'pbeh train'")
    plot.add_argument("--out", type=Path, default=None, help="folder for the PNG files (default: RUN/plots)")
    return parser


def add_stream_args(parser: argparse.ArgumentParser) -> None:
    """The options that choose a task stream (train and describe share them)."""
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
