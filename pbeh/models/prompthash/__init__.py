"""PromptHash (affinity-prompted collaborative cross-modal hashing, CVPR'25) on cached features.

One small module per part:

* :mod:`.prompts`: class-caption embeddings (cached) and affinity prompts with the label-free route;
* :mod:`.fusion`: adaptive gated fusion (transformers' Mamba mixer, gated residual, projection shortcut, then a
  transformer layer per sample, or across the batch in the labelled parity mode);
* :mod:`.heads`: shared residual MLP and heads for several code lengths, optionally nested (prefix codes);
* :mod:`.losses`: Bayesian pairwise terms on code buffers, quantisation, global and prompt-affinity InfoNCE;
* :mod:`.model`: :class:`PromptHash` with ``encode`` / ``save_pretrained`` / ``from_pretrained``;
* :mod:`.fit`: :func:`fit` on a :class:`~pbeh.data.Split` (one task, or all tasks merged);
* :mod:`.evaluate`: :func:`run_on_stream`, joint or continual, with pbeh's metrics and index.

Numbers from ``mode="parity"`` use the paired modality and the ground-truth labels at query time and attention
across the batch; print them labelled "parity".
"""

from __future__ import annotations

from .evaluate import run_on_stream as run_on_stream
from .fit import FitReport as FitReport
from .fit import fit as fit
from .losses import LossWeights as LossWeights
from .model import PromptHash as PromptHash
from .prompts import caption_embeddings as caption_embeddings

__all__ = ["FitReport", "LossWeights", "PromptHash", "caption_embeddings", "fit", "run_on_stream"]
