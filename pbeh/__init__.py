"""pbeh: continual cross-modal hashing.

Public API (callers compose these): :class:`PromptPool`, :class:`ExtensibleHasher`, :class:`ContinualTrainer`,
:class:`TruncatedHammingIndex`, plus the :class:`Codes` value type and :mod:`pbeh.metrics`.
Importing pbeh has no side effects (no thread settings, no logging handlers, no torch import).
"""

from __future__ import annotations

from ._version import __version__ as __version__
from .codes import Codes as Codes

__all__ = ["Codes", "__version__"]
