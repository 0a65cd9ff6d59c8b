"""The PBEH loss terms, each a small function, and their weighted sum.

Notation: a batch of ``B`` paired items, continuous codes ``h_image`` (``H^v``) and ``h_text`` (``H^t``) of shape
``(B, K)`` (the L2-normalised head outputs), multi-hot labels ``(B, C)``. Every term reproduces the reduction of the
released PBEH code (REFERENCE.md §2): sums where it sums, means where it means. :func:`pbeh_loss` combines them with
the weights of :class:`LossWeights`.

Gradients of the sign-based terms. The reference binarises with ``torch.sign``, whose gradient is zero everywhere, so
the sign halves of :func:`cosine_loss` and :func:`binary_similarity_loss` (and the removed
:func:`center_separation_loss`) never train anything: they only change the logged loss value. pbeh keeps that
behaviour by default (for parity) and offers ``straight_through=True``: forward ``sign``, backward identity, which
turns them into training signals (see :func:`sign`).

Example:
    >>> import torch
    >>> torch.manual_seed(0) and None
    >>> h_image = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    >>> h_text = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    >>> labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    >>> total, terms = pbeh_loss(h_image, h_text, labels, weights=LossWeights(distill=0.0))
    >>> sorted(terms)
    ['anchor', 'binary_similarity', 'contrastive', 'cosine', 'quantization', 'similarity']
    >>> bool(total > 0)
    True
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "LossWeights",
    "anchor_loss",
    "batch_mode_center",
    "binary_similarity_loss",
    "center_separation_loss",
    "contrastive_loss",
    "cosine_loss",
    "distill_loss",
    "label_similarity",
    "pbeh_loss",
    "previous_model_loss",
    "quantization_loss",
    "sign",
    "similarity_loss",
    "stored_code_loss",
]

_logger = logging.getLogger(__name__)

# nn.CosineSimilarity's default, as in the reference.
_COSINE_EPS = 1e-8


# ---------------------------------------------------------------------------------------------------- validation
def _check_matrix(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D tensor (batch, n_bits), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x


def _check_pair(h_image: Any, h_text: Any, names: tuple[str, str] = ("h_image", "h_text")) -> None:
    _check_matrix(h_image, names[0])
    _check_matrix(h_text, names[1])
    if h_image.shape != h_text.shape:
        raise ValueError(
            f"{names[0]}, {names[1]}: expected the same shape (paired items, same code length), "
            f"got {tuple(h_image.shape)} and {tuple(h_text.shape)}"
        )


def _check_labels(labels: Any, n: int | None, name: str = "labels") -> torch.Tensor:
    """Validate multi-hot labels (``n`` rows unless ``n`` is None) and return them as floats."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of multi-hot labels, got {type(labels).__name__}")
    if labels.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D multi-hot tensor (batch, n_classes), got shape {tuple(labels.shape)}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows (one per item of the batch), got {labels.shape[0]}")
    return labels if labels.is_floating_point() else labels.float()


def _check_similarity(S: Any, n: int) -> torch.Tensor:
    if not isinstance(S, torch.Tensor):
        raise TypeError(f"S: expected a torch.Tensor, got {type(S).__name__}")
    if S.shape != (n, n):
        raise ValueError(f"S: expected shape ({n}, {n}) (batch x batch), got {tuple(S.shape)}")
    return S


# ---------------------------------------------------------------------------------------------------- sign
class _StraightThroughSign(torch.autograd.Function):
    """Forward ``torch.sign``, backward identity (the gradient passes unchanged)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


def sign(x: torch.Tensor, *, straight_through: bool = False) -> torch.Tensor:
    """Elementwise sign, with an optional straight-through gradient.

    The forward value is always ``torch.sign(x)`` exactly (so ``sign(0) = 0``, as in the reference; the stored binary
    codes of :class:`pbeh.Codes` map 0 to +1 instead, a difference that only matters for exact zeros).

    * ``straight_through=False`` (the reference): ``torch.sign``, whose gradient is zero everywhere.
    * ``straight_through=True``: the straight-through estimator with an identity backward, ``d sign(x)/dx := 1``.
      The clipped variant (gradient 1 only where ``|x| <= 1``) is identical here because PBEH's codes are
      L2-normalised, so every coordinate already lies in ``[-1, 1]``.

    Args:
        x: any tensor.
        straight_through: use the straight-through estimator for the backward pass.

    Returns:
        ``torch.sign(x)``.

    Example:
        >>> x = torch.tensor([-0.5, 0.0, 0.25], requires_grad=True)
        >>> sign(x, straight_through=True).sum().backward()
        >>> x.grad.tolist()
        [1.0, 1.0, 1.0]
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if straight_through:
        return _StraightThroughSign.apply(x)
    return torch.sign(x)


# ---------------------------------------------------------------------------------------------------- terms
SIMILARITY_TARGETS = ("reference", "cosine", "signed_cosine")


def label_similarity(
    labels_a: torch.Tensor, labels_b: torch.Tensor | None = None, *, kind: str = "reference"
) -> torch.Tensor:
    """Label similarity, the target of the similarity terms.

    * ``kind="reference"``: ``S_ij = 2 σ(l_i · l_j / 16) − 1``, in ``[0, 1)`` (PBEH as released). It is small
      unless items share many labels: two single-label items of the same class get 0.031, so with single-label or
      sparse labels every target is near 0 and the 100-weighted similarity term is met by orthogonal, uninformative
      codes (measured on Wikipedia-5: 1–6 distinct codes per task).
    * ``kind="cosine"``: ``S_ij = cos(l_i, l_j)``, in ``[0, 1]``: 1 for identical label sets, 0 for disjoint ones,
      partial overlap in between.
    * ``kind="signed_cosine"``: ``2 cos(l_i, l_j) − 1``, in ``[−1, 1]``: identical label sets +1, disjoint ones −1
      (opposite codes), half overlap 0 (pbeh's default). With ``"cosine"``, on densely labelled data (MIRFLICKR730's
      first task: 53 % of pairs share a label) one code for every item came closer to the targets than any spread
      of codes did early in training, and the codes collapsed (1 distinct code for 81 items after 3 epochs); the
      signed target makes a shared code cost every pair that shares nothing (17–40 distinct codes after 30 epochs).

    Args:
        labels_a: multi-hot labels ``(n, C)`` (float, int or bool).
        labels_b: multi-hot labels ``(m, C)``; defaults to ``labels_a``.
        kind: ``"reference"``, ``"cosine"`` or ``"signed_cosine"``.

    Returns:
        ``(n, m)`` float tensor; 0 (``"signed_cosine"``: −1) where two items share no label.

    Example:
        >>> S = label_similarity(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        >>> [[round(v, 4) for v in row] for row in S.tolist()]
        [[0.0312, 0.0312], [0.0312, 0.0624]]
    """
    a = _check_labels(labels_a, None, "labels_a")
    if labels_b is None:
        b = a
    else:
        b = _check_labels(labels_b, None, "labels_b")
        if b.shape[1] != a.shape[1]:
            raise ValueError(
                f"labels_b: expected {a.shape[1]} classes like labels_a, got shape {tuple(labels_b.shape)}"
            )
    if kind == "reference":
        return 2.0 * torch.sigmoid(a @ b.T / 16.0) - 1.0
    if kind in ("cosine", "signed_cosine"):
        na = torch.linalg.vector_norm(a, dim=1, keepdim=True).clamp_min(1e-12)
        nb = torch.linalg.vector_norm(b, dim=1, keepdim=True).clamp_min(1e-12)
        cos = (a / na) @ (b / nb).T
        return cos if kind == "cosine" else 2.0 * cos - 1.0
    raise ValueError(f"kind: expected one of {SIMILARITY_TARGETS}, got {kind!r}")


def cosine_loss(h_image: torch.Tensor, h_text: torch.Tensor, *, straight_through: bool = False) -> torch.Tensor:
    """Pairwise cosine term ``Σ_i (1 − cos(h^v_i, h^t_i)) + Σ_i (1 − cos(sgn h^v_i, sgn h^t_i))``.

    A **sum** over the batch, as in the reference (not a mean). Without ``straight_through`` the second (sign) half
    carries no gradient.

    Args:
        h_image: continuous image codes ``(B, K)``.
        h_text: continuous text codes ``(B, K)``, row ``i`` paired with ``h_image[i]``.
        straight_through: straight-through gradient for the sign half (see :func:`sign`).

    Example:
        >>> h = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
        >>> round(float(cosine_loss(h, h)), 6)
        0.0
        >>> float(cosine_loss(h, -h))  # opposite codes: 2 per pair and half
        8.0
    """
    _check_pair(h_image, h_text)
    continuous = (1.0 - F.cosine_similarity(h_image, h_text, dim=1, eps=_COSINE_EPS)).sum()
    b_image = sign(h_image, straight_through=straight_through)
    b_text = sign(h_text, straight_through=straight_through)
    binary = (1.0 - F.cosine_similarity(b_image, b_text, dim=1, eps=_COSINE_EPS)).sum()
    return continuous + binary


def _two_way_mse(inner: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(inner, S) + F.mse_loss(inner.T, S)


def similarity_loss(h_image: torch.Tensor, h_text: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Similarity preservation ``MSE(H^v H^tᵀ, S) + MSE((H^v H^tᵀ)ᵀ, S)`` (each MSE a mean over ``B²`` entries).

    Args:
        h_image: continuous image codes ``(B, K)``.
        h_text: continuous text codes ``(B, K)``.
        S: target similarity ``(B, B)``, usually :func:`label_similarity` of the batch labels.

    Example:
        >>> h = torch.eye(2)
        >>> float(similarity_loss(h, h, torch.eye(2)))
        0.0
    """
    _check_pair(h_image, h_text)
    S = _check_similarity(S, h_image.shape[0])
    return _two_way_mse(h_image @ h_text.T, S)


def binary_similarity_loss(
    h_image: torch.Tensor,
    h_text: torch.Tensor,
    S: torch.Tensor,
    *,
    straight_through: bool = False,
    normalize: bool = True,
) -> torch.Tensor:
    """Similarity preservation on sign codes: ``MSE(s·B^v B^tᵀ, S) + MSE((s·B^v B^tᵀ)ᵀ, S)``, ``B = sgn H``.

    Scaling (``s``). The reference computes the **raw** ±1 inner products (``s = 1``): they range over ``[−K, K]``
    while ``S`` lies in ``[0, 1)``, so the raw term is of order ``K²`` and can never reach zero. Because the reference
    binarises with ``torch.sign`` the term has no gradient there, so this only changes the logged value. pbeh divides
    by the code length (``s = 1/K``, ``normalize=True``, the default): the scaled inner product is the cosine of the
    two sign codes, comparable with ``S`` and with :func:`similarity_loss`, which matters once ``straight_through``
    makes the term train (the raw form would then outweigh every other term by ``K²``). ``normalize=False`` gives the
    reference's raw value for parity checks.

    Args:
        h_image: continuous image codes ``(B, K)``.
        h_text: continuous text codes ``(B, K)``.
        S: target similarity ``(B, B)``.
        straight_through: straight-through gradient through the sign (see :func:`sign`).
        normalize: divide the sign inner products by ``K`` (pbeh) or not (the reference).

    Example:
        >>> h = torch.tensor([[0.6, 0.8], [-0.6, 0.8]])
        >>> S = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> float(binary_similarity_loss(h, h, S))
        0.0
        >>> float(binary_similarity_loss(h, h, S, normalize=False))  # raw inner products 2 on the diagonal
        1.0
    """
    _check_pair(h_image, h_text)
    S = _check_similarity(S, h_image.shape[0])
    inner = sign(h_image, straight_through=straight_through) @ sign(h_text, straight_through=straight_through).T
    if normalize:
        inner = inner / h_image.shape[1]
    return _two_way_mse(inner, S)


def quantization_loss(h_image: torch.Tensor, h_text: torch.Tensor) -> torch.Tensor:
    """Quantisation ``MSE(h^v, sgn h^v) + MSE(h^t, sgn h^t)`` (means over all ``B·K`` entries).

    The target ``sgn h`` is a constant (``torch.sign``); the gradient flows through ``h`` only. A straight-through
    sign would cancel the gradient exactly, so this term has no ``straight_through`` option.

    Example:
        >>> h = torch.tensor([[1.0, 0.0], [0.0, -1.0]])
        >>> float(quantization_loss(h, h))  # sign(0) = 0: already binary in the reference's sense
        0.0
    """
    _check_pair(h_image, h_text)
    return F.mse_loss(h_image, torch.sign(h_image).detach()) + F.mse_loss(h_text, torch.sign(h_text).detach())


def contrastive_loss(h: torch.Tensor, labels: torch.Tensor, *, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss within one modality.

    ``−mean_i [Σ_j M_ij log softmax_j(h_i · h_j / τ)] / Σ_j M_ij`` with ``M_ij = 1[l_i · l_j > 0]``; ``j`` runs
    over the whole batch, the item itself included (in the mask and in the softmax), as in the reference. A row
    without any positive (an item with no label) contributes 0 but still counts in the mean (the reference adds
    ``1e-8`` to the denominator; the values agree to float precision).

    Args:
        h: codes of one modality ``(B, K)``.
        labels: multi-hot labels ``(B, C)``.
        temperature: softmax temperature ``τ > 0``.

    Example:
        >>> h = torch.eye(2)
        >>> round(float(contrastive_loss(h, torch.eye(2), temperature=1.0)), 4)  # -log(e / (e + 1))
        0.3133
    """
    _check_matrix(h, "h")
    labels = _check_labels(labels, h.shape[0])
    temperature = _check_positive_float(temperature, "temperature")
    log_prob = torch.log_softmax(h @ h.T / temperature, dim=1)
    positive = (labels @ labels.T > 0).to(h.dtype)
    n_positive = positive.sum(dim=1)
    per_item = -(positive * log_prob).sum(dim=1) / n_positive.clamp_min(1.0)
    return per_item.mean()


def distill_loss(
    image_head_on_image: torch.Tensor,
    text_head_on_image: torch.Tensor,
    text_head_on_text: torch.Tensor,
    image_head_on_text: torch.Tensor,
) -> torch.Tensor:
    """Cross-head distillation ``MSE(f_v(z_v), f_t(z_v)) + MSE(f_t(z_t), f_v(z_t))``.

    ``f_v`` / ``f_t`` are the image / text hash heads and ``z_v`` / ``z_t`` the prompt-enhanced image / text inputs:
    each head, applied to the other modality's input, should agree with that modality's own head. Nothing is
    detached (as in the reference): both heads receive gradient.

    Args:
        image_head_on_image: ``f_v(z_v)``, i.e. the image codes ``(B, K)``.
        text_head_on_image: ``f_t(z_v)`` ``(B, K)``.
        text_head_on_text: ``f_t(z_t)``, i.e. the text codes ``(B, K)``.
        image_head_on_text: ``f_v(z_t)`` ``(B, K)``.

    Example:
        >>> a = torch.ones(2, 3)
        >>> float(distill_loss(a, a, a, -a))
        4.0
    """
    _check_pair(image_head_on_image, text_head_on_image, ("image_head_on_image", "text_head_on_image"))
    _check_pair(text_head_on_text, image_head_on_text, ("text_head_on_text", "image_head_on_text"))
    return F.mse_loss(image_head_on_image, text_head_on_image) + F.mse_loss(text_head_on_text, image_head_on_text)


def anchor_loss(stored: Sequence[torch.Tensor], current: Sequence[torch.Tensor]) -> torch.Tensor:
    """Prompt-hash anchor ``Σ_s ‖c_s^stored − c_s^now[:, :K_s]‖₁`` (a sum over tasks, rows and bits).

    ``stored[s]`` is task ``s``'s prompt-hash matrix recorded at the end of that task (``(2 n_s, K_s)``, continuous);
    ``current[s]`` is the same matrix recomputed with the current model, possibly wider (``K_now >= K_s``) after
    extensions: only its first ``K_s`` columns are compared. The stored anchors are constants (detached).

    Args:
        stored: one ``(rows_s, K_s)`` tensor per earlier task.
        current: the recomputed ``(rows_s, K_now)`` tensors, in the same order.

    Returns:
        A scalar tensor (0 when there are no anchors, e.g. on the first task).

    Example:
        >>> stored = [torch.zeros(2, 3)]
        >>> current = [torch.ones(2, 4)]  # one extra bit since: ignored
        >>> float(anchor_loss(stored, current))
        6.0
    """
    if isinstance(stored, torch.Tensor) or isinstance(current, torch.Tensor):
        raise TypeError("stored, current: expected sequences of tensors (one per earlier task), got a single tensor")
    stored, current = list(stored), list(current)
    if len(stored) != len(current):
        raise ValueError(
            f"stored, current: expected one current anchor per stored anchor, got {len(stored)} stored "
            f"and {len(current)} current"
        )
    total: torch.Tensor | None = None
    for s, (old, now) in enumerate(zip(stored, current, strict=True)):
        _check_matrix(old, f"stored[{s}]")
        _check_matrix(now, f"current[{s}]")
        if now.shape[0] != old.shape[0]:
            raise ValueError(
                f"current[{s}]: expected {old.shape[0]} rows like stored[{s}], got shape {tuple(now.shape)}"
            )
        if now.shape[1] < old.shape[1]:
            raise ValueError(
                f"current[{s}]: expected at least {old.shape[1]} columns (the stored code length), got shape "
                f"{tuple(now.shape)}; codes only grow"
            )
        term = (old.detach().to(device=now.device, dtype=now.dtype) - now[:, : old.shape[1]]).abs().sum()
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total


def stored_code_loss(h: torch.Tensor, stored_codes: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Asymmetric loss against stored binary codes of earlier tasks (pbeh; not in the reference).

    ``MSE(cos(h_i[:K_s], b_j), S_ij)``: the prefix of each new output ``h_i`` (the bits the stored codes have) is
    pulled toward the stored codes ``b_j ∈ {±1}^{K_s}`` of related items and away from unrelated ones (``S`` from
    :func:`label_similarity`). The stored codes are constants: they were encoded once and are never re-encoded, so
    this needs no old features (no replay) and keeps new tasks' codes out of the Hamming regions old tasks occupy.
    Used cross-modally by the trainer: image outputs against stored text codes and text outputs against stored
    image codes, as retrieval compares them.

    Args:
        h: new outputs ``(B, K)`` with ``K >= K_s``.
        stored_codes: ``(M, K_s)`` ±1 codes (float).
        S: ``(B, M)`` targets.

    Example:
        >>> h = torch.tensor([[1.0, 1.0, 0.0]])
        >>> b = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
        >>> round(float(stored_code_loss(h, b, torch.tensor([[1.0, 0.0]]))), 4)
        0.5
    """
    h = _check_matrix(h, "h")
    stored_codes = _check_matrix(stored_codes, "stored_codes")
    k = stored_codes.shape[1]
    if k > h.shape[1]:
        raise ValueError(f"stored_codes: {k}-bit codes are longer than the outputs h ({h.shape[1]} bits)")
    if S.shape != (h.shape[0], stored_codes.shape[0]):
        raise ValueError(
            f"S: expected shape {(h.shape[0], stored_codes.shape[0])} (batch x stored), got {tuple(S.shape)}"
        )
    prefix = torch.nn.functional.normalize(h[:, :k], dim=1)
    inner = prefix @ stored_codes.to(h.dtype).T / math.sqrt(k)
    return torch.nn.functional.mse_loss(inner, S.to(h.dtype))


def center_loss(h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class-centre term ``mean_i (1 − cos(h_i, t_i))`` over the rows whose target has a nonzero bit (pbeh).

    ``t_i ∈ {−1, 0, +1}^K`` is item ``i``'s target code from :meth:`pbeh.centers.ClassCenters.targets`: the centre of
    its class (the bitwise majority for several labels; 0 on a tied bit). Rows whose target is all zero (no class
    with a centre) do not count; with none left the term is 0.

    Example:
        >>> h = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
        >>> t = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
        >>> float(center_loss(h, t))  # the first row sits on its centre; the second has no target
        0.0
    """
    h = _check_matrix(h, "h")
    targets = _check_matrix(targets, "targets")
    if targets.shape != h.shape:
        raise ValueError(f"targets: expected shape {tuple(h.shape)} like h, got {tuple(targets.shape)}")
    norms = torch.linalg.vector_norm(targets, dim=1)
    rows = norms > 0
    if not bool(rows.any()):
        return h.new_zeros(())
    cos = (torch.nn.functional.normalize(h[rows], dim=1) * targets[rows].to(h.dtype)).sum(1) / norms[rows].to(h.dtype)
    return (1.0 - cos).mean()


def previous_model_loss(h: torch.Tensor, h_previous: torch.Tensor) -> torch.Tensor:
    """Previous-model term ``mean_i (1 − cos(h_i[:K'], p_i))`` (pbeh): the outputs stay where a frozen copy of the
    model, taken when the task began, puts the same items.

    ``p`` ``(B, K')`` are that copy's outputs for the batch (real items and replayed pseudo items alike), ``K' <= K``
    (a copy taken before an extension compares the bits it had). This is Learning without Forgetting (Li and Hoiem,
    2016) on the hash outputs: the heads keep mapping the feature region the current task's items cover the way they
    did, which is where earlier tasks' queries of similar items lie.

    Example:
        >>> h = torch.tensor([[1.0, 0.0, 5.0], [0.0, 2.0, -1.0]])
        >>> float(previous_model_loss(h, torch.tensor([[3.0, 0.0], [0.0, 1.0]])))  # same directions on 2 bits
        0.0
    """
    h = _check_matrix(h, "h")
    h_previous = _check_matrix(h_previous, "h_previous")
    if h_previous.shape[0] != h.shape[0] or h_previous.shape[1] > h.shape[1]:
        raise ValueError(
            f"h_previous: expected {h.shape[0]} rows of at most {h.shape[1]} bits like h, got {tuple(h_previous.shape)}"
        )
    if h.shape[0] == 0:
        return h.new_zeros(())
    cos = F.cosine_similarity(h[:, : h_previous.shape[1]], h_previous.to(h.dtype), dim=1, eps=_COSINE_EPS)
    return (1.0 - cos).mean()


def batch_mode_center(codes: torch.Tensor) -> torch.Tensor:
    """Per-bit majority ("mode") centre ``sign(Σ_i codes_i)`` with a straight-through gradient to the column mean.

    The forward value is ``torch.sign(codes.sum(0))`` (0 where a column sums to 0); the backward pass treats it as
    ``codes.mean(0)``, as in the reference's removed centre-separation loss.

    Example:
        >>> batch_mode_center(torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]])).tolist()
        [1.0, 0.0, 0.0]
    """
    _check_matrix(codes, "codes")
    mean = codes.mean(dim=0)
    return mean + (torch.sign(codes.sum(dim=0)) - mean).detach()


def center_separation_loss(
    history_center: torch.Tensor,
    h: torch.Tensor,
    *,
    margin: float = -1.0,
    straight_through: bool = False,
) -> torch.Tensor:
    """The removed centre-separation term: ``relu(c_hist · c_batch / K_hist − margin)``.

    Present in PBEH's initial commit (weight 10, margin −1), removed from the release. ``c_hist`` is the mode centre
    of the stored database codes of one modality (``K_hist`` entries in ``{−1, 0, +1}``, e.g.
    :func:`pbeh.extension.mode_center`), ``c_batch`` the :func:`batch_mode_center` of the batch's sign codes
    truncated to ``K_hist`` bits. Minimising it pushes the new batch's centre away from the historical one. The
    reference applied it per modality, only on tasks after the first and only when no extension had happened.

    Note: the reference binarises with ``torch.sign`` *before* the straight-through centre, so the term has no
    gradient there either; ``straight_through=True`` makes it train. With ``margin = −1`` the relu never clips
    (the normalised dot product is ``>= −1``).

    Args:
        history_center: ``(K_hist,)`` centre of the stored codes.
        h: continuous codes of the batch ``(B, K_now)`` with ``K_now >= K_hist``.
        margin: the hinge margin.
        straight_through: straight-through gradient through the sign (see :func:`sign`).

    Example:
        >>> center = torch.tensor([1.0, 1.0, -1.0, -1.0])
        >>> h = torch.tensor([[0.5, 0.5, -0.5, -0.5]])
        >>> float(center_separation_loss(center, h))  # identical centres: 1 - (-1)
        2.0
    """
    if not isinstance(history_center, torch.Tensor):
        raise TypeError(f"history_center: expected a torch.Tensor, got {type(history_center).__name__}")
    if history_center.ndim != 1 or history_center.shape[0] < 1:
        raise ValueError(
            f"history_center: expected a non-empty 1-D tensor (n_bits,), got shape {tuple(history_center.shape)}"
        )
    _check_matrix(h, "h")
    n_bits = history_center.shape[0]
    if h.shape[1] < n_bits:
        raise ValueError(
            f"h: expected at least {n_bits} columns (the length of history_center), got shape {tuple(h.shape)}"
        )
    if not math.isfinite(float(margin)):
        raise ValueError(f"margin: expected a finite number, got {margin}")
    center = batch_mode_center(sign(h[:, :n_bits], straight_through=straight_through))
    similarity = torch.dot(history_center.detach().to(center.dtype), center) / n_bits
    return F.relu(similarity - float(margin))


# ---------------------------------------------------------------------------------------------------- weights
def _check_positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a positive number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the PBEH loss terms; a weight of 0 switches its term off (it is then not even computed).

    The defaults are the reference's (the code default and its NUS-WIDE setting); :meth:`reference_coco` gives its
    MSCOCO setting (``distill=100``). ``center_separation`` is the term removed from the release (10 in PBEH's
    initial commit), off by default. ``stored_codes`` weighs pbeh's asymmetric term against the stored database
    codes of earlier tasks (:func:`stored_code_loss`), off in the reference; :meth:`pbeh` turns it on.
    ``class_centers`` weighs pbeh's class-centre term (:func:`center_loss` toward the fixed per-class target codes
    of :class:`pbeh.centers.ClassCenters`, added by the trainer), off in the reference; :meth:`pbeh` turns it on.
    ``previous_model`` weighs pbeh's previous-model term (:func:`previous_model_loss` against a frozen copy of the
    model as the task began, added by the trainer from the second task on), off in the reference and in
    :meth:`pbeh` (an option: it trades unified mAP on many-class streams for backward transfer).

    Example:
        >>> LossWeights().distill, LossWeights.reference_coco().distill
        (200.0, 100.0)
        >>> LossWeights.from_dict(LossWeights(anchor=0.5).to_dict()) == LossWeights(anchor=0.5)
        True
    """

    cosine: float = 0.1
    similarity: float = 100.0
    binary_similarity: float = 1.0
    quantization: float = 10.0
    contrastive: float = 1.0
    distill: float = 200.0
    anchor: float = 0.1
    center_separation: float = 0.0
    stored_codes: float = 0.0
    class_centers: float = 0.0
    previous_model: float = 0.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{field.name}: expected a number >= 0, got {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{field.name}: expected a finite weight >= 0, got {value}")
            object.__setattr__(self, field.name, float(value))

    @classmethod
    def pbeh(cls, **overrides: float) -> LossWeights:
        """pbeh's default weights: the reference's, with the stored-code term on (``stored_codes=30``), the class-centre
        term on (``class_centers=100``) and the supervised contrastive term at 10 instead of 1. The previous-model term
        stays off (``previous_model=0``; ``LossWeights.pbeh(previous_model=30)`` turns it on).

        The previous-model weight (:func:`previous_model_loss`; 3 seeds x 16/32/64 bits, weight 30 against 0, unified
        I→T / T→I and BWT I→T / T→I per length): Wikipedia-5 −0.003 / +0.002, +0.008 / +0.004, −0.004 / +0.015 with
        BWT +0.006 / −0.008, +0.009 / +0.008, +0.009 / +0.012; MIRFLICKR730-4 −0.001 / +0.011, −0.002 / −0.002,
        +0.007 / +0.001 with BWT −0.001 / +0.006, −0.002 / +0.008, +0.006 / −0.003; but openclipart-5 (16 bits, 3 seeds)
        lost 0.011–0.020 in every cell (synthetic-100 level), so it is not the default (docs/design.md).

        The class-centre weight: at 16 bits, one seed, the unified score (every query against one index of every
        task) rose with it from 0.125/0.127 (weight 0) to 0.466/0.488 (50) and 0.507/0.532 (100) on synthetic-100
        (10 tasks x 10 classes), and from 0.321/0.372 to 0.450/0.605 and 0.485/0.631 on openclipart-5; at weight 10 it
        changed nothing measurable. On Wikipedia-5 at 32 bits it went from 0.279/0.614 to 0.301/0.668 (50) and
        0.321/0.663 (100); on MIRFLICKR730-4 it fell from 0.726/0.653 to 0.686/0.646 and 0.677/0.650 (see
        docs/results.md for the seeds and lengths).

        The contrastive weight: with the reference's balance (similarity 100, contrastive 1), joint training on all
        ten Wikipedia classes at 16 bits collapsed to one distinct code within three epochs (mAP@all 0.19, chance
        0.11); contrastive 10 trained (mAP@all T→I 0.51, 37–100 distinct codes). On the continual runs (two classes
        per task) the change was within seed noise.

        Measured on Wikipedia-5 at 32 bits (one seed): the unified score (every query against one index of all
        tasks) rose from 0.200/0.243 (I→T/T→I, weight 0) to 0.230/0.297 (weight 30), while the per-task BWT
        fell from −0.03 to −0.06: new tasks' codes keep out of old tasks' Hamming regions, at the price of old
        queries drifting more. ``stored_codes=0`` restores the per-task-first trade-off.
        """
        return cls(**{"stored_codes": 30.0, "contrastive": 10.0, "class_centers": 100.0, **overrides})

    @classmethod
    def reference_coco(cls, **overrides: float) -> LossWeights:
        """The reference's MSCOCO weights (``distill=100``), with optional overrides."""
        return cls(**{"distill": 100.0, **overrides})

    @classmethod
    def reference_nuswide(cls, **overrides: float) -> LossWeights:
        """The reference's NUS-WIDE weights (the defaults), with optional overrides."""
        return cls(**overrides)

    def to_dict(self) -> dict[str, float]:
        """Plain dict of the weights (JSON-friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LossWeights:
        """Inverse of :meth:`to_dict`; unknown names are an error, missing ones take their defaults."""
        if not isinstance(values, Mapping):
            raise TypeError(f"values: expected a mapping of weight names to numbers, got {type(values).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"values: unknown loss weight(s) {unknown}; expected names among {sorted(known)}")
        return cls(**dict(values))


# ---------------------------------------------------------------------------------------------------- total
def _check_cross(cross: Any, name: str, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(cross, (tuple, list)) or len(cross) != 2:
        raise TypeError(f"{name}: expected a pair of tensors (own head, other head), got {type(cross).__name__}")
    for i, x in enumerate(cross):
        _check_matrix(x, f"{name}[{i}]")
        if x.shape != shape:
            raise ValueError(f"{name}[{i}]: expected shape {tuple(shape)} like the codes, got {tuple(x.shape)}")
    return cross[0], cross[1]


def pbeh_loss(
    h_image: torch.Tensor,
    h_text: torch.Tensor,
    labels: torch.Tensor,
    *,
    weights: LossWeights,
    cross_image: tuple[torch.Tensor, torch.Tensor] | None = None,
    cross_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    anchor_stored: Sequence[torch.Tensor] = (),
    anchor_current: Sequence[torch.Tensor] = (),
    center_image: torch.Tensor | None = None,
    center_text: torch.Tensor | None = None,
    center_margin: float = -1.0,
    straight_through: bool = False,
    temperature: float = 0.1,
    binary_similarity_normalize: bool = True,
    similarity_target: str = "reference",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted PBEH objective for one batch.

    ``total = Σ weight_term · term`` over the terms of :class:`LossWeights`; a term whose weight is 0 is not
    computed and is absent from the returned dict. ``contrastive`` is the sum over the two modalities;
    ``center_separation`` the sum over the modalities whose centre is given.

    Args:
        h_image: continuous image codes ``(B, K)`` (L2-normalised head outputs).
        h_text: continuous text codes ``(B, K)``, paired row by row.
        labels: multi-hot labels ``(B, C)``.
        weights: the term weights.
        cross_image: ``(f_v(z_v), f_t(z_v))``: both heads on the image input (required when ``weights.distill > 0``).
        cross_text: ``(f_t(z_t), f_v(z_t))``: both heads on the text input (required when ``weights.distill > 0``).
        anchor_stored: stored prompt-hash anchors of earlier tasks (empty on the first task: the term is then 0).
        anchor_current: the same anchors recomputed with the current model.
        center_image: mode centre of the stored image codes for the centre-separation term (``None``: not applied).
        center_text: mode centre of the stored text codes (``None``: not applied).
        center_margin: margin of the centre-separation term.
        straight_through: straight-through gradients for the sign-based terms (see :func:`sign`).
        temperature: contrastive temperature.
        binary_similarity_normalize: scale the binary similarity by ``1/K`` (pbeh) or not (the reference); see
            :func:`binary_similarity_loss`.
        similarity_target: the ``kind`` of :func:`label_similarity` used as the similarity terms' target.

    Returns:
        ``(total, terms)``: the scalar loss to backpropagate and the **unweighted** value of every computed term as
        a float, for logging.
    """
    if not isinstance(weights, LossWeights):
        raise TypeError(f"weights: expected LossWeights, got {type(weights).__name__}")
    _check_pair(h_image, h_text)
    labels = _check_labels(labels, h_image.shape[0])
    temperature = _check_positive_float(temperature, "temperature")

    terms: dict[str, torch.Tensor] = {}
    need_S = weights.similarity > 0 or weights.binary_similarity > 0
    S = label_similarity(labels, kind=similarity_target).to(h_image.dtype) if need_S else None
    if weights.cosine > 0:
        terms["cosine"] = cosine_loss(h_image, h_text, straight_through=straight_through)
    if weights.similarity > 0:
        terms["similarity"] = similarity_loss(h_image, h_text, S)
    if weights.binary_similarity > 0:
        terms["binary_similarity"] = binary_similarity_loss(
            h_image, h_text, S, straight_through=straight_through, normalize=binary_similarity_normalize
        )
    if weights.quantization > 0:
        terms["quantization"] = quantization_loss(h_image, h_text)
    if weights.contrastive > 0:
        terms["contrastive"] = contrastive_loss(h_image, labels, temperature=temperature) + contrastive_loss(
            h_text, labels, temperature=temperature
        )
    if weights.distill > 0:
        if cross_image is None or cross_text is None:
            raise ValueError(
                "cross_image, cross_text: required when weights.distill > 0 (got None); pass both heads' outputs "
                "on each modality's input, or use weights with distill=0"
            )
        v_on_v, t_on_v = _check_cross(cross_image, "cross_image", h_image.shape)
        t_on_t, v_on_t = _check_cross(cross_text, "cross_text", h_text.shape)
        terms["distill"] = distill_loss(v_on_v, t_on_v, t_on_t, v_on_t)
    if weights.anchor > 0:
        if len(anchor_stored) or len(anchor_current):
            terms["anchor"] = anchor_loss(anchor_stored, anchor_current)
        else:
            terms["anchor"] = h_image.new_zeros(())
    if weights.center_separation > 0:
        separation = h_image.new_zeros(())
        for center, h in ((center_image, h_image), (center_text, h_text)):
            if center is not None:
                separation = separation + center_separation_loss(
                    center.to(h.device), h, margin=center_margin, straight_through=straight_through
                )
        terms["center_separation"] = separation

    total = h_image.new_zeros(())
    for name, value in terms.items():
        total = total + getattr(weights, name) * value.to(total.device)
    values = {name: float(value.detach()) for name, value in terms.items()}
    if not math.isfinite(float(total.detach())):
        _logger.warning("pbeh_loss: non-finite total loss; unweighted terms: %s", values)
    return total, values
