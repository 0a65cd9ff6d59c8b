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

The package holds one module per command (``_train``, ``_evaluate``, ``_describe``, ``_search``, ``_plot``), the
parser (``_arguments``), what every command sets up (``_setup``: threads, logging, the task stream, the user-error
type) and what they print (``_output``: tables, summaries, JSON); this module holds :func:`main`, which parses,
dispatches and turns every error into one line and an exit status.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._arguments import build_parser
from ._describe import describe
from ._evaluate import evaluate
from ._plot import plot
from ._search import search
from ._setup import RESUME_HINT, UserError, configure_logging
from ._train import train

__all__ = ["main"]

_parser = build_parser  # the name the tests (and older code) import


def _one_line(exc: BaseException) -> str:
    """The error's first line; the type name too unless the message names the argument itself."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, (UserError, ValueError, TypeError, OSError, ImportError)):
        return text  # these messages name the argument, the expected and the actual value
    return f"{type(exc).__name__}: {text}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pbeh`` console script; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    configure_logging(quiet=bool(getattr(args, "quiet", False)))
    handlers = {"evaluate": evaluate, "search": search, "describe": describe, "plot": plot}
    progress = {"training": False}
    try:
        if args.command == "train":
            return train(args, progress)
        return handlers[args.command](args)
    except KeyboardInterrupt:
        if debug:
            raise
        hint = f"; {RESUME_HINT}" if progress["training"] else ""
        print(f"pbeh: interrupted{hint}", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        if debug:
            raise
        from ..trainer import ResumeMismatchError

        if progress["training"] and not isinstance(exc, ResumeMismatchError):
            hint = f" ({RESUME_HINT}; --debug shows the traceback)"
        else:
            hint = "" if isinstance(exc, UserError) else " (--debug shows the traceback)"
        print(f"pbeh {args.command}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
