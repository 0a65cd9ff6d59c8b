"""The trainer's forward pass as one module, so that DistributedDataParallel can wrap it.

DDP synchronises gradients for what one ``forward`` call computes. The PBEH loss needs several outputs per batch (both
modalities' codes, the cross-head outputs for distillation, the prompt-hash anchors of earlier tasks), so
:class:`TrainingForward` computes them all in one call; :func:`wrap_for_training` puts it in DDP under a process group
and returns it bare for one process.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .distributed import DistributedContext

__all__ = ["TrainingForward", "wrap_for_training"]


class TrainingForward(nn.Module):
    """Everything one training step needs from a :class:`~pbeh.model.CrossModalHashModel`, in one call.

    ``forward(image, text, n_anchors, cross)`` returns ``(outputs, anchors)``: ``outputs`` is ``[h_image, h_text]``,
    followed by ``f_t(z_image)`` and ``f_v(z_text)`` when ``cross`` (the distillation term's other-head outputs);
    ``anchors`` the current prompt-hash anchors of tasks ``0 .. n_anchors - 1``. The calls are the ones the
    single-process trainer makes, in the same order.

    Args:
        model: the model to train (shared, not copied).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not all(hasattr(model, name) for name in ("hash_from_z", "anchor_codes")):
            raise TypeError(f"model: expected a CrossModalHashModel, got {type(model).__name__}")
        self.model = model

    def forward(
        self, image: torch.Tensor, text: torch.Tensor, n_anchors: int, cross: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        h_image, z_image = self.model(image, "image", return_z=True)
        h_text, z_text = self.model(text, "text", return_z=True)
        outputs = [h_image, h_text]
        if cross:
            outputs += [self.model.hash_from_z(z_image, "text"), self.model.hash_from_z(z_text, "image")]
        anchors = [self.model.anchor_codes(s) for s in range(n_anchors)]
        return outputs, anchors


def wrap_for_training(model: nn.Module, ctx: DistributedContext | None) -> nn.Module:
    """:class:`TrainingForward` of ``model``, inside ``DistributedDataParallel`` when ``ctx`` is a process group.

    Build it again whenever the set of trainable parameters changes (a new prompt pool, an extension): DDP fixes its
    parameter list and gradient buckets at construction. Construction also broadcasts rank 0's parameters and
    buffers, so every rank starts the task from the same model. ``find_unused_parameters`` is on: which parameters a
    step reaches depends on the prompt selection and on the loss weights (no distillation, no earlier tasks' anchors).
    """
    forward = TrainingForward(model)
    if ctx is None:
        return forward
    device = next(model.parameters()).device
    options: dict[str, Any] = {"find_unused_parameters": True}
    if device.type == "cuda":
        options["device_ids"] = [device.index if device.index is not None else torch.cuda.current_device()]
    return nn.parallel.DistributedDataParallel(forward, **options)
