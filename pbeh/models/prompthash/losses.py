"""PromptHash's losses: buffer-based Bayesian pairwise terms, quantisation against the sign of the summed buffers,
global image-text InfoNCE, prompt affinity contrastive learning (local image-prompt InfoNCE with an
affinity-scaled temperature), the auxiliary-code group and its reconstruction (REFERENCE.md §5).

Notation: ``h`` ``(B, K)`` are the batch's hash outputs (tanh), ``buffer`` ``(N, K)`` the latest outputs of every
training item (refreshed batch by batch, detached), ``S`` ``(N, B)`` the label similarity (1 when two items share a
label), ``targets`` ``(B, K)`` the batch rows of ``sign(buffer_image + buffer_text)`` (refreshed every epoch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..._validation import check_positive_real, check_real

__all__ = [
    "CodeBuffers",
    "LossWeights",
    "affinity",
    "bayesian_pairwise_loss",
    "info_nce",
    "prompt_affinity_loss",
    "quantization_loss",
]


def bayesian_pairwise_loss(
    buffer: torch.Tensor, h: torch.Tensor, similarity: torch.Tensor, *, balance: bool = False
) -> torch.Tensor:
    """``mean(softplus(s) - S * s)`` with ``s = clamp(buffer @ h^T / 2, -64, 64)``: the negative log-likelihood of
    the pairwise labels under ``p(S=1) = sigmoid(s)``.

    ``balance=True`` (pbeh's option, not the released loss) averages the positive and the negative pairs separately
    and takes the mean of the two, so that a set with few positive pairs (many single-label classes) does not reward
    pushing every pair apart."""
    if buffer.shape[1] != h.shape[1] or similarity.shape != (buffer.shape[0], h.shape[0]):
        raise ValueError(
            f"buffer, h, similarity: expected (N, K), (B, K), (N, B), got {tuple(buffer.shape)}, {tuple(h.shape)}, "
            f"{tuple(similarity.shape)}"
        )
    s = (0.5 * buffer @ h.T).clamp(-64.0, 64.0)
    terms = F.softplus(s) - similarity * s
    if not balance:
        return torch.mean(terms)
    positive = similarity > 0
    parts = [terms[mask].mean() for mask in (positive, ~positive) if bool(mask.any())]
    return torch.stack(parts).mean()


def quantization_loss(h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``||h - targets||^2 / (B K)``."""
    if h.shape != targets.shape:
        raise ValueError(f"h, targets: expected equal shapes, got {tuple(h.shape)} and {tuple(targets.shape)}")
    return F.mse_loss(h, targets, reduction="sum") / (h.shape[0] * h.shape[1])


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row ``i`` of ``a`` should match row ``i`` of ``b`` among the batch (and vice versa)."""
    scores = a @ b.T / temperature
    targets = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(scores, targets) + F.cross_entropy(scores.T, targets))


def affinity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 / (1 + JS(softmax(a) || softmax(b)))``, JS averaged over the batch (a scalar in (1/(1 + ln 2), 1])."""
    p, q = F.softmax(a, dim=-1), F.softmax(b, dim=-1)
    m = 0.5 * (p + q)
    js = 0.5 * (F.kl_div(p.log(), m, reduction="batchmean") + F.kl_div(q.log(), m, reduction="batchmean"))
    return 1.0 / (1.0 + js)


def prompt_affinity_loss(image: torch.Tensor, prompt: torch.Tensor, temperature: float) -> torch.Tensor:
    """Prompt affinity contrastive learning: InfoNCE between image and prompt features with the temperature scaled
    by their (detached) affinity, ``temperature * affinity(image, prompt)``."""
    scale = float(affinity(image.detach(), prompt.detach()))
    return info_nce(image, prompt, temperature * scale)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the PromptHash loss terms; the defaults are the released ones (REFERENCE.md §5).

    Attributes:
        intra: image-image and text-text Bayesian pairwise terms.
        inter: image-text Bayesian pairwise terms (5; 20 in the released COCO script).
        quantization: distance to ``sign(buffer_image + buffer_text)``.
        aux: multiplier of the auxiliary-code group (the reference's mu = 20).
        reconstruction: decoders' MSE against the auxiliary targets, times ``aux`` (0.005; 0.001 for COCO).
        global_alignment: image-text InfoNCE (times ``alignment``).
        local_alignment: image-prompt InfoNCE with affinity-scaled temperature (times ``alignment``).
        alignment: the reference's lambda.
        temperature_global, temperature_local: InfoNCE temperatures (0.07).
        route: binary cross-entropy of the label-free route's class predictions (pbeh's; the released code has no
            route because it reads the labels at query time).
        balance_pairs: 1.0 averages positive and negative pairs separately in the pairwise terms (pbeh's option,
            see :func:`bayesian_pairwise_loss`); 0.0 (default) is the released plain mean.
    """

    intra: float = 0.005
    inter: float = 5.0
    quantization: float = 1.0
    aux: float = 20.0
    reconstruction: float = 0.005
    global_alignment: float = 5.0
    local_alignment: float = 5.0
    alignment: float = 1.0
    temperature_global: float = 0.07
    temperature_local: float = 0.07
    route: float = 1.0
    balance_pairs: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("temperature"):
                check_positive_real(value, f.name)
            else:
                value = check_real(value, f.name)
                if value < 0:
                    raise ValueError(f"{f.name}: expected a weight >= 0, got {value!r}")
        if self.balance_pairs not in (0.0, 1.0):
            raise ValueError(f"balance_pairs: expected 0.0 (released) or 1.0 (balanced), got {self.balance_pairs!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class CodeBuffers:
    """Per length, the latest image and text outputs of every training item and their summed signs.

    Args:
        n_items: training items (rows).
        lengths: the trained lengths (the auxiliary code is ``"aux"``).
        generator: seeds the random initial buffers (as released: ``randn``).
        nested: initialise shorter buffers as prefixes of the longest (so nested prefixes stay consistent).
    """

    def __init__(
        self, n_items: int, lengths: list[int | str], *, aux_bits: int, generator: torch.Generator, nested: bool = False
    ) -> None:
        self.image: dict[int | str, torch.Tensor] = {}
        self.text: dict[int | str, torch.Tensor] = {}
        numeric = sorted(k for k in lengths if isinstance(k, int))
        longest_i = torch.randn(n_items, numeric[-1], generator=generator)
        longest_t = torch.randn(n_items, numeric[-1], generator=generator)
        for k in lengths:
            if k == "aux":
                self.image[k] = torch.randn(n_items, aux_bits, generator=generator)
                self.text[k] = torch.randn(n_items, aux_bits, generator=generator)
            elif nested:
                self.image[k] = longest_i[:, :k].clone()
                self.text[k] = longest_t[:, :k].clone()
            else:
                self.image[k] = torch.randn(n_items, int(k), generator=generator)
                self.text[k] = torch.randn(n_items, int(k), generator=generator)
        self.targets: dict[int | str, torch.Tensor] = {}
        self.refresh_targets()

    def refresh_targets(self) -> None:
        """``targets = sign(image + text)`` (zero maps to +1), per length."""
        for k in self.image:
            s = self.image[k] + self.text[k]
            self.targets[k] = torch.where(s >= 0, 1.0, -1.0)

    def update(self, key: int | str, rows: torch.Tensor, image: torch.Tensor, text: torch.Tensor) -> None:
        self.image[key][rows] = image.detach().to(self.image[key].dtype)
        self.text[key][rows] = text.detach().to(self.text[key].dtype)
