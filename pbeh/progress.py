"""One switch to see what pbeh is doing from Python: :func:`show_progress`.

pbeh reports through :mod:`logging` (logger ``"pbeh"`` and its children) and installs no handler, so by default a
Python session shows only warnings. ``pbeh.show_progress()`` attaches one handler to the ``"pbeh"`` logger (never the
root logger, so other libraries' chatter, such as faiss's loader messages, stays hidden): the trainer's per-task
results, resumption and code extensions, and every pbeh warning, then print to stderr; ``level="DEBUG"`` adds the
internal notes of the other modules (prompt pools, saved files, policy details). ``pbeh.show_progress(False)``
removes it. Progress bars over epochs are a per-trainer option: ``TrainerConfig(show_progress=True)``.

Example:
    >>> import pbeh
    >>> handler = pbeh.show_progress()
    >>> handler in logging.getLogger("pbeh").handlers
    True
    >>> pbeh.show_progress(False)
    >>> handler in logging.getLogger("pbeh").handlers
    False
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["show_progress"]

_MARK = "_pbeh_show_progress"
#: Loggers whose INFO lines are progress (per-task results, resumption, extensions); other modules' INFO lines are
#: internal notes shown only with ``level="DEBUG"``.
_PROGRESS_LOGGERS = ("pbeh.training.trainer", "pbeh.training.evaluation", "pbeh.retriever")


def _is_progress(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name in _PROGRESS_LOGGERS


_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING}


def show_progress(enabled: bool = True, *, level: str = "INFO", stream: TextIO | None = None) -> logging.Handler | None:
    """Print pbeh's log lines (per-task results, extensions, resumption) to ``stream`` (default stderr), or stop.

    Args:
        enabled: ``True`` attaches the handler (replacing one attached before), ``False`` removes it.
        level: ``"INFO"`` (per-task lines and warnings, default), ``"DEBUG"`` (every pbeh message) or
            ``"WARNING"`` (warnings only).
        stream: where to write (default ``sys.stderr``).

    Returns:
        The attached handler, or None when ``enabled`` is False.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> _ = show_progress(stream=out)
        >>> logging.getLogger("pbeh.training.trainer").info("task 1 (T1): 32 bits")
        >>> logging.getLogger("pbeh.prompts").info("an internal note")  # shown only with level="DEBUG"
        >>> show_progress(False)
        >>> print(out.getvalue(), end="")
        pbeh: task 1 (T1): 32 bits
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {enabled!r}")
    if level not in _LEVELS:
        raise ValueError(f"level: expected one of {', '.join(_LEVELS)}, got {level!r}")
    logger = logging.getLogger("pbeh")
    for handler in list(logger.handlers):
        if getattr(handler, _MARK, False):
            logger.removeHandler(handler)
    if not enabled:
        return None
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter("pbeh: %(message)s"))
    handler.setLevel(_LEVELS[level])
    if level == "INFO":
        handler.addFilter(_is_progress)
    setattr(handler, _MARK, True)
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > _LEVELS[level]:
        logger.setLevel(_LEVELS[level])
    return handler
