"""Affinity prompts: a learnable context added to the embedding of a class-name caption.

The released PromptHash adds a learnable context to the token embeddings of the caption "This is an image containing
{classes}" built from each item's *ground-truth labels*, for queries too (REFERENCE.md §5). pbeh works on cached
features, so the caption side is cached too:

* :func:`caption_embeddings` encodes one caption per class, ``template.format(class_name)``, once, with a frozen
  text encoder (anything with ``encode_texts``: :class:`pbeh.encoders.TextEncoder`, :class:`pbeh.encoders.CLIPEncoder`).
  The rows are L2-normalised; the model stores them as a buffer (saved with it), so they are never recomputed.
* The caption of a label set is the normalised mean of its classes' caption embeddings (a cached stand-in for
  encoding "This is an image containing a, b and c" as one sentence).
* :class:`AffinityPrompt` maps a caption embedding to the fusion width and adds the learnable context ``ctx``:
  ``prompt = caption_proj(caption) + ctx``.

At query time labels are unknown. The **label-free route** (pbeh's default, and the only one used to encode in the
default mode) predicts class probabilities from the item's own features, ``q = sigmoid(route_m(x))`` for modality
``m``, and uses the probability-weighted caption ``sum_c q_c e_c / sum_c q_c``. The route is trained with binary
cross-entropy against the training labels. The label route (:meth:`AffinityPrompt.caption_from_labels`) is used only
in training losses and in the labelled ``parity`` mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_choice, check_positive_int, to_numpy

__all__ = ["CAPTION_TEMPLATE", "MODALITIES", "AffinityPrompt", "caption_embeddings"]

#: The released caption, one class name per caption here.
CAPTION_TEMPLATE = "This is an image containing {}."
MODALITIES = ("image", "text")


def caption_embeddings(
    label_names: Sequence[str], encoder: Any, *, template: str = CAPTION_TEMPLATE, batch_size: int = 32
) -> np.ndarray:
    """L2-normalised embeddings ``(n_classes, E)`` of ``template.format(name)`` for every class name.

    Args:
        label_names: one name per class (underscores are read as spaces).
        encoder: a frozen text encoder with ``encode_texts(texts, batch_size=..., show_progress_bar=...)``.
        template: the caption, with one ``{}`` for the class name.
        batch_size: captions per encoder call.

    Example:
        >>> class Fake:
        ...     def encode_texts(self, texts, batch_size=32, show_progress_bar=True):
        ...         return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)
        >>> caption_embeddings(["cat", "dog_house"], Fake()).shape
        (2, 2)
    """
    if isinstance(label_names, str) or not isinstance(label_names, Sequence):
        raise TypeError(f"label_names: expected a sequence of class names, got {type(label_names).__name__}")
    names = [str(n) for n in label_names]
    if not names:
        raise ValueError("label_names: expected at least one class name, got none")
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"template: expected a str with exactly one '{{}}' for the class name, got {template!r}")
    if not callable(getattr(encoder, "encode_texts", None)):
        raise TypeError(
            f"encoder: expected a text encoder with encode_texts (pbeh.encoders), got {type(encoder).__name__}"
        )
    captions = [template.format(n.replace("_", " ")) for n in names]
    out = np.asarray(
        encoder.encode_texts(
            captions, batch_size=check_positive_int(batch_size, "batch_size"), show_progress_bar=False
        ),
        dtype=np.float32,
    )
    if out.ndim != 2 or out.shape[0] != len(names):
        raise ValueError(f"encoder: expected ({len(names)}, E) caption embeddings, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


class AffinityPrompt(nn.Module):
    """Cached class-caption embeddings, the caption-to-prompt map with its learnable context, and the label-free
    route of each modality.

    Args:
        class_embeddings: ``(n_classes, E)`` caption embeddings (see :func:`caption_embeddings`); stored as a buffer.
        dim: the fusion width (the prompt's width).
        context_std: standard deviation of the learnable context's initialisation (the reference: 0.02).

    Example:
        >>> prompt = AffinityPrompt(np.eye(3, 4, dtype=np.float32), dim=8)
        >>> caption, logits = prompt.caption_from_features(torch.randn(5, 8), "image")
        >>> prompt(caption).shape, logits.shape
        (torch.Size([5, 8]), torch.Size([5, 3]))
    """

    class_embeddings: torch.Tensor

    def __init__(self, class_embeddings: Any, *, dim: int, context_std: float = 0.02) -> None:
        super().__init__()
        emb = to_numpy(class_embeddings, "class_embeddings")
        if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
            raise ValueError(f"class_embeddings: expected a 2-D array (n_classes, E), got shape {emb.shape}")
        if not np.issubdtype(emb.dtype, np.floating) or not np.all(np.isfinite(emb)):
            raise ValueError("class_embeddings: expected finite floating-point values")
        self.dim = check_positive_int(dim, "dim")
        self.n_classes, self.embedding_dim = int(emb.shape[0]), int(emb.shape[1])
        self.register_buffer("class_embeddings", torch.as_tensor(np.array(emb, dtype=np.float32)))
        self.caption_proj = nn.Linear(self.embedding_dim, self.dim)
        self.context = nn.Parameter(torch.randn(self.dim) * float(context_std))
        self.routes = nn.ModuleDict({m: nn.Linear(self.dim, self.n_classes) for m in MODALITIES})

    def caption_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Caption embeddings ``(B, E)`` of multi-hot ``labels`` ``(B, n_classes)`` (an item without labels gets the
        mean of all classes)."""
        if labels.ndim != 2 or labels.shape[1] != self.n_classes:
            raise ValueError(f"labels: expected shape (batch, {self.n_classes}), got {tuple(labels.shape)}")
        weights = labels.to(self.class_embeddings.dtype)
        empty = weights.sum(dim=1, keepdim=True) == 0
        weights = torch.where(empty, torch.ones_like(weights), weights)
        return F.normalize(weights @ self.class_embeddings, dim=-1)

    def route_logits(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Class logits ``(B, n_classes)`` predicted from an item's own mapped features ``x`` ``(B, dim)``."""
        return self.routes[check_choice(modality, "modality", MODALITIES)](x)

    def caption_from_features(self, x: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The label-free route: ``(caption (B, E), class logits (B, n_classes))`` from ``x`` alone."""
        logits = self.route_logits(x, modality)
        weights = torch.sigmoid(logits)
        caption = (weights @ self.class_embeddings) / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return F.normalize(caption, dim=-1), logits

    def forward(self, caption: torch.Tensor) -> torch.Tensor:
        """The prompt ``caption_proj(caption) + ctx``, ``(B, dim)``."""
        if caption.ndim != 2 or caption.shape[1] != self.embedding_dim:
            raise ValueError(f"caption: expected shape (batch, {self.embedding_dim}), got {tuple(caption.shape)}")
        return self.caption_proj(caption) + self.context
