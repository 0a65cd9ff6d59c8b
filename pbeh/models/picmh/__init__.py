"""PIC-CMH (Prompt-Infused Continual Cross-Modal Hashing) on pbeh's harness (REFERENCE.md §3; released code
``styx29-0/PIC-CMH`` @ bfd32f0).

* :class:`PICMHModel`: a global prompt plus per-task expert prompts per modality, attention, a prompt branch and an
  MLP head. ``expert_prompts="trained"`` (default, what the paper intends) or ``"released"`` (the released code's
  experts never train); ``attention="sample"`` (default, batch-independent codes) or ``"batch"`` (released).
* :class:`PICMHTrainer`: its protocol: after every task every seen task's queries **and database** are re-encoded
  with the current model (no stored codes are kept); the trainer counts those encoder passes.

Example:
    >>> from pbeh.data import synthetic_stream
    >>> from pbeh.models.picmh import PICMHConfig, PICMHTrainer
    >>> stream = synthetic_stream(n_tasks=2, seed=0)
    >>> trainer = PICMHTrainer.for_stream(stream, n_bits=16, hidden_dims=(64,), config=PICMHConfig(epochs=1))
    >>> _ = trainer.fit(stream)
    >>> round(trainer.summary()["encoder_passes"], 2) > 1.0
    True
"""

from __future__ import annotations

from .model import PICMHModel
from .trainer import PICMHConfig, PICMHTrainer

__all__ = ["PICMHConfig", "PICMHModel", "PICMHTrainer"]
