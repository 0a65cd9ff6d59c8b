"""What every command sets up first: the user-error type, CPU threads, the ``pbeh`` logger, and the task stream of
``--protocol`` / ``--data-dir`` / ``--n-tasks`` / ``--order`` / ``--label-key``."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

FILE_PROTOCOLS = ("npz", "all-mat", "train-test-mat")


RESUME_HINT = "rerun the same command to resume from the last completed task"


class UserError(Exception):
    """A problem with what the user asked for: printed as one line, never with a resume hint."""


def set_threads(n: int) -> None:
    """Set torch's and faiss's CPU threads (``--threads``)."""
    if n < 1:
        raise UserError(f"--threads: expected a positive number of threads, got {n}")
    import torch

    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except (ImportError, AttributeError):  # pragma: no cover - faiss is a dependency
        pass


def configure_logging(quiet: bool) -> None:
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


def protocol_name(args: argparse.Namespace) -> str:
    """``--protocol`` normalised (``_`` as ``-``, lower case) and checked against the known protocols."""
    from ..data import PROTOCOLS

    protocol = args.protocol.replace("_", "-").lower()
    if protocol not in PROTOCOLS:
        raise UserError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {args.protocol!r}")
    return protocol


def load_stream(args: argparse.Namespace) -> Any:
    """The task stream of the stream options, with a UserError for options that do not fit the protocol."""
    from ..data import load_protocol

    protocol = protocol_name(args)
    kwargs: dict[str, Any] = {}
    if args.label_key is not None:
        if protocol not in ("npz", "all-mat"):
            raise UserError(f"--label-key: only for --protocol npz or all-mat, got --protocol {protocol}")
        kwargs["label_key"] = args.label_key
    if protocol in FILE_PROTOCOLS:
        if args.n_tasks is None:
            raise UserError(f"--protocol {protocol} needs --n-tasks (how many tasks to split the classes into)")
        if args.data_dir is None:
            raise UserError(f"--protocol {protocol} needs --data-dir (the data file)")
        return load_protocol(protocol, args.data_dir, n_tasks=args.n_tasks, order=args.order, **kwargs)
    if args.n_tasks is not None and protocol != "synthetic":
        raise UserError(f"--n-tasks: {protocol} has a fixed task split; --n-tasks is for the file protocols")
    if protocol == "synthetic" and args.n_tasks is not None:
        kwargs["n_tasks"] = args.n_tasks
    return load_protocol(protocol, args.data_dir, **kwargs)
