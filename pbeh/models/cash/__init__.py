"""CASH (Capacity-Aware Selective Hashing) on pbeh's harness: a fixed-length continual cross-modal hasher with
per-task prompts and task discriminators (REFERENCE.md §4; the released code is ``Liuwwhh/CASH`` @ a9c6152).

* :class:`CASHModel`: the network (prompts, discriminators, gated residual enhancement, coarse and fine branches fused
  through a bit mask).
* :class:`CASHTrainer`: the continual protocol (stored codes never re-encoded) with two evaluation modes: the task
  inferred from the discriminators (``"inferred"``, the default: the task is hidden at query time) and the oracle task
  id (``"oracle"``, the released code's per-task numbers).

Example:
    >>> from pbeh.data import synthetic_stream
    >>> from pbeh.models.cash import CASHConfig, CASHTrainer
    >>> stream = synthetic_stream(n_tasks=2, seed=0)
    >>> trainer = CASHTrainer.for_stream(stream, n_bits=16, hidden_dim=64, config=CASHConfig(epochs=1, lr=1e-3))
    >>> _ = trainer.fit(stream)
    >>> sorted(trainer.summary("oracle"))[:3]
    ['bwt_i2t', 'bwt_t2i', 'bytes_per_item']
"""

from __future__ import annotations

from .model import CASHModel
from .trainer import CASHConfig, CASHTrainer

__all__ = ["CASHConfig", "CASHModel", "CASHTrainer"]
