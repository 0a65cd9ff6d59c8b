"""CASH's loss terms, as in the released ``train.py`` / ``utils.py`` (REFERENCE.md §4).

=============  ======  ============================================================================================
term           weight  what it computes
=============  ======  ============================================================================================
quantization   1       mean (sign(h) - h)^2 + bit balance mean_k (mean_i tanh(h_ik))^2, for h_image, h_text, mask
fine           0.01    symmetric InfoNCE (tau 0.07) image-text between fine codes, plus the same between fused codes
coarse         10      mean (relu(h_B H_buf^T) - l_B l_all^T)^2 (labels L2-normalised) against buffers of the whole
                       task's codes: coarse image, coarse text, fused image, fused text
task           1       mean(1 - d_t(x)) per modality (no negatives)
distill        10      cross-head MSE: each modality's input through the other modality's branches, for fused, fine
                       and coarse codes
exclude        1       (t > 0) MSE(h B_prev^T, K 1[l l_prev^T > 0]) against the previous task's stored train codes
=============  ======  ============================================================================================
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "bit_balance",
    "coarse_similarity",
    "exclude_loss",
    "info_nce",
    "quantization",
]


def quantization(h: torch.Tensor) -> torch.Tensor:
    """``mean((sign(h) - h)^2)``."""
    return ((torch.sign(h) - h) ** 2).mean()


def bit_balance(h: torch.Tensor) -> torch.Tensor:
    """``mean_k (mean_i tanh(h_ik))^2``: each bit should be +1 for half the batch."""
    return (torch.tanh(h).mean(dim=0) ** 2).mean()


def info_nce(a: torch.Tensor, b: torch.Tensor, *, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE between paired rows of ``a`` and ``b`` (the pair is the positive)."""
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def coarse_similarity(
    labels: torch.Tensor, all_labels: torch.Tensor, h: torch.Tensor, buffer: torch.Tensor
) -> torch.Tensor:
    """``mean((relu(h buffer^T) - l̂ l̂_all^T)^2)`` with L2-normalised label rows (1e-8 added to the norms)."""
    lb = labels / (labels.norm(dim=1, keepdim=True) + 1e-8)
    la = all_labels / (all_labels.norm(dim=1, keepdim=True) + 1e-8)
    return ((torch.relu(h @ buffer.T) - lb @ la.T) ** 2).mean()


def exclude_loss(h: torch.Tensor, previous_codes: torch.Tensor, similarity: torch.Tensor, n_bits: int) -> torch.Tensor:
    """``MSE(h previous^T, n_bits * similarity)``: inner products with the previous task's stored train codes
    follow the label overlap (``similarity`` is 0/1, ``(B, N_prev)``)."""
    return F.mse_loss(h @ previous_codes.T, n_bits * similarity)
