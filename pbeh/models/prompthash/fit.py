"""Training PromptHash on cached features (one call per task; call again to fine-tune on the next task).

Optimiser as released, in spirit (REFERENCE.md §5): AdamW (betas 0.9/0.98, eps 1e-6, weight decay 0.01), warm-up then
cosine decay (5 % warm-up), gradient norm clipped at 1, the fusion at 0.1 x the learning rate. The code buffers
(:class:`~pbeh.models.prompthash.losses.CodeBuffers`) cover the training items of this call; their summed signs are
the quantisation targets, refreshed after every epoch.

Per batch, the default mode encodes the image features alone and the text features alone (exactly as at query
time), the parity mode runs the released paired forward (see :mod:`pbeh.models.prompthash.model`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..._validation import check_in_interval, check_int, check_positive_int, check_positive_real
from ...data import Split
from .losses import CodeBuffers, LossWeights, bayesian_pairwise_loss, info_nce, prompt_affinity_loss, quantization_loss
from .model import PromptHash

__all__ = ["FitReport", "fit"]

_logger = logging.getLogger(__name__)


@dataclass
class FitReport:
    """What :func:`fit` did: per epoch the mean of every loss term (and ``"total"``), and the wall time."""

    epochs: int
    n_items: int
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "n_items": self.n_items, "losses": self.losses, "seconds": self.seconds}


def _as_training_arrays(train: Split | Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(train, Split):
        return train.image, train.text, train.labels
    if isinstance(train, (tuple, list)) and len(train) == 3:
        image, text, labels = (np.asarray(a) for a in train)
        return image.astype(np.float32), text.astype(np.float32), labels
    raise TypeError(f"train: expected a pbeh.data.Split or an (image, text, labels) tuple, got {type(train).__name__}")


def _warmup_cosine(step: int, total: int, warmup: float) -> float:
    warm = max(1, round(warmup * total))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def fit(
    model: PromptHash,
    train: Split | Sequence[Any],
    *,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 2e-3,
    fusion_lr_scale: float = 0.1,
    weight_decay: float = 0.01,
    warmup: float = 0.05,
    max_grad_norm: float = 1.0,
    weights: LossWeights | None = None,
    seed: int = 0,
) -> FitReport:
    """Train ``model`` on paired training items (in place); returns a :class:`FitReport`.

    Args:
        model: a :class:`PromptHash` (either mode).
        train: a :class:`pbeh.data.Split` or an ``(image, text, labels)`` tuple of arrays (multi-hot labels).
        epochs, batch_size, lr: as named (the released lr is 2e-3, batch 128).
        fusion_lr_scale: the fusion's learning rate relative to ``lr``.
        weight_decay, warmup, max_grad_norm: AdamW decay, warm-up fraction of the steps, gradient clipping.
        weights: loss weights (default: :class:`LossWeights`, the released ones).
        seed: seeds the buffers' initial values, the batch order and dropout.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> labels = np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 24)]
        >>> image, text = labels @ rng.normal(size=(3, 6)), labels @ rng.normal(size=(3, 4))
        >>> model = PromptHash(6, 4, np.eye(3, 5, dtype=np.float32), n_bits=(4, 8), dim=8, n_heads=2, aux_bits=16)
        >>> report = fit(model, (image, text, labels), epochs=2, batch_size=8)
        >>> len(report.losses), report.n_items
        (2, 24)
    """
    if not isinstance(model, PromptHash):
        raise TypeError(f"model: expected a PromptHash, got {type(model).__name__}")
    epochs = check_int(epochs, "epochs", minimum=0)
    batch_size = check_positive_int(batch_size, "batch_size")
    lr = check_positive_real(lr, "lr")
    fusion_lr_scale = check_positive_real(fusion_lr_scale, "fusion_lr_scale")
    weight_decay = check_in_interval(weight_decay, "weight_decay", 0, 1, closed_low=True)
    warmup = check_in_interval(warmup, "warmup", 0, 1, closed_low=True)
    max_grad_norm = check_positive_real(max_grad_norm, "max_grad_norm")
    weights = LossWeights() if weights is None else weights
    if not isinstance(weights, LossWeights):
        raise TypeError(f"weights: expected a LossWeights, got {type(weights).__name__}")
    image_np, text_np, labels_np = _as_training_arrays(train)
    n = len(image_np)
    if n == 0:
        raise ValueError("train: expected at least one training item, got 0")
    image = model.as_features(image_np, "image", "train image")
    text = model.as_features(text_np, "text", "train text")
    labels = model.as_labels(labels_np, n)
    if len(text) != n:
        raise ValueError(f"train: image and text have {n} and {len(text)} rows")
    model.fit_centering(image, text)

    started = time.perf_counter()
    gen = torch.Generator().manual_seed(int(seed))
    keys: list[int | str] = list(model.lengths) + (["aux"] if model.aux_bits else [])
    buffers = CodeBuffers(n, keys, aux_bits=model.aux_bits, generator=gen, nested=model.nested)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.other_parameters(), "lr": lr},
            {"params": model.fusion_parameters(), "lr": lr * fusion_lr_scale},
        ],
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=weight_decay,
    )
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, steps_per_epoch * epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _warmup_cosine(step, total, warmup))
    report = FitReport(epochs=epochs, n_items=n)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for epoch in range(epochs):
            sums: dict[str, float] = {}
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, batch_size):
                rows = order[start : start + batch_size]
                terms = _batch_loss(model, buffers, weights, image[rows], text[rows], labels[rows], labels, rows)
                loss = torch.stack(list(terms.values())).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
                optimizer.step()
                scheduler.step()
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.item() * len(rows)
                sums["total"] = sums.get("total", 0.0) + loss.item() * len(rows)
            buffers.refresh_targets()
            report.losses.append({k: v / n for k, v in sums.items()})
            _logger.debug("epoch %d/%d: loss %.4f", epoch + 1, epochs, report.losses[-1]["total"])
    model.eval()
    report.seconds = time.perf_counter() - started
    return report


def _batch_loss(
    model: PromptHash,
    buffers: CodeBuffers,
    w: LossWeights,
    image: torch.Tensor,
    text: torch.Tensor,
    labels: torch.Tensor,
    all_labels: torch.Tensor,
    rows: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Every loss term of one batch (already weighted), keyed by name."""
    terms: dict[str, torch.Tensor] = {}
    if model.mode == "default":
        out_i, out_t = model.forward_single(image, "image"), model.forward_single(text, "text")
        prompt_feature = model.label_prompt_feature(labels)
        if w.route:
            terms["route"] = w.route * (
                F.binary_cross_entropy_with_logits(out_i["route_logits"], labels)
                + F.binary_cross_entropy_with_logits(out_t["route_logits"], labels)
            )
    else:
        paired = model.forward_paired(image, text, labels)
        out_i, out_t = paired["image"], paired["text"]
        prompt_feature = paired["prompt"]["feature"]
    similarity = (all_labels @ labels.T > 0).to(image.dtype)  # (N, B)
    balance = bool(w.balance_pairs)
    for key in buffers.image:
        h_i, h_t = out_i["hashes"][key], out_t["hashes"][key]
        buffers.update(key, rows, h_i, h_t)
        buf_i, buf_t = buffers.image[key], buffers.text[key]
        group = w.aux if key == "aux" else 1.0
        terms[f"intra_{key}"] = (
            group
            * w.intra
            * (
                bayesian_pairwise_loss(buf_i, h_i, similarity, balance=balance)
                + bayesian_pairwise_loss(buf_t, h_t, similarity, balance=balance)
            )
        )
        terms[f"inter_{key}"] = (
            group
            * w.inter
            * (
                bayesian_pairwise_loss(buf_i, h_t, similarity, balance=balance)
                + bayesian_pairwise_loss(buf_t, h_i, similarity, balance=balance)
            )
        )
        target = buffers.targets[key][rows]
        terms[f"quantization_{key}"] = (
            group * w.quantization * (quantization_loss(h_i, target) + quantization_loss(h_t, target))
        )
    if model.aux_bits and w.reconstruction:
        target = buffers.targets["aux"][rows]
        recon = torch.zeros((), dtype=image.dtype, device=image.device)
        for k in model.lengths:
            for out in (out_i, out_t):
                recon = recon + F.mse_loss(model.heads.decode(k, out["hashes"][k]), target, reduction="sum") / len(rows)
        terms["reconstruction"] = w.aux * w.reconstruction * recon
    feat_i, feat_t = F.normalize(out_i["feature"], dim=-1), F.normalize(out_t["feature"], dim=-1)
    if w.global_alignment:
        terms["global_alignment"] = w.alignment * w.global_alignment * info_nce(feat_i, feat_t, w.temperature_global)
    if w.local_alignment:
        feat_p = F.normalize(prompt_feature, dim=-1)
        terms["local_alignment"] = (
            w.alignment * w.local_alignment * prompt_affinity_loss(feat_i, feat_p, w.temperature_local)
        )
    return terms
