"""pbeh: continual cross-modal hashing.

Public API (callers compose these):

* :class:`PromptPool`: per-task pools of modality-shared prompts (select + attend);
* :class:`ExtensibleHasher`: per-modality hashing heads whose code length grows;
* :class:`ContinualTrainer`: the PBEH recipe over a stream of tasks;
* :class:`TruncatedHammingIndex`: faiss-backed Hamming search over codes of mixed lengths;
* :class:`Retriever`: frozen encoder(s) + hashing model + indexes, from raw images and texts to search, saved as
  one folder;

plus the :class:`Codes` value type, :class:`CrossModalHashModel` (input maps + pool + hasher), the data layer
(:mod:`pbeh.data`), the metrics (:mod:`pbeh.metrics`) and the frozen encoders (:mod:`pbeh.encoders`).

Importing pbeh has no side effects: no thread settings, no logging handlers. The index, ``Codes`` and the metrics
are usable without training anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .codes import Codes as Codes
from .index import SearchResult as SearchResult
from .index import TruncatedHammingIndex as TruncatedHammingIndex
from .metrics import ContinualMatrix as ContinualMatrix
from .metrics import map_at_k as map_at_k
from .metrics import pr_curve as pr_curve
from .metrics import precision_at_k as precision_at_k

if TYPE_CHECKING:  # pragma: no cover
    from .data import Split, Task, TaskStream
    from .extension import FixedSchedule, ModeCenterRule, NeverExtend
    from .hasher import ExtensibleHasher
    from .losses import LossWeights
    from .model import CrossModalHashModel
    from .progress import show_progress
    from .prompts import PromptPool
    from .retriever import Retriever
    from .trainer import ContinualTrainer, TaskReport, TrainerConfig

# The torch-based classes are imported on first use, so `import pbeh` stays light for users who only search codes.
_LAZY = {
    "PromptPool": "prompts",
    "ExtensibleHasher": "hasher",
    "CrossModalHashModel": "model",
    "ContinualTrainer": "trainer",
    "Retriever": "retriever",
    "show_progress": "progress",
    "TrainerConfig": "trainer",
    "TaskReport": "trainer",
    "LossWeights": "losses",
    "ModeCenterRule": "extension",
    "NeverExtend": "extension",
    "FixedSchedule": "extension",
    "Split": "data",
    "Task": "data",
    "TaskStream": "data",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pbeh' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Codes",
    "ContinualMatrix",
    "ContinualTrainer",
    "CrossModalHashModel",
    "ExtensibleHasher",
    "FixedSchedule",
    "LossWeights",
    "ModeCenterRule",
    "NeverExtend",
    "PromptPool",
    "Retriever",
    "SearchResult",
    "Split",
    "Task",
    "TaskReport",
    "TaskStream",
    "TrainerConfig",
    "TruncatedHammingIndex",
    "__version__",
    "map_at_k",
    "pr_curve",
    "precision_at_k",
    "show_progress",
]
