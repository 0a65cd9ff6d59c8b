"""The class prior of a query: where its frozen features alone say its class centre lies.

Why. After task ``T`` the hash heads have trained on task ``T``'s items and only on Gaussian pseudo items of
earlier classes (:class:`~pbeh.prototypes.ClassPrototypes`). Real items of earlier classes that lie away from their
class mean therefore fall on the newest classes' side, and an old query finds the newest task's codes first. Measured
on Wikipedia-5 (32 bits, one seed): the image queries of tasks 1-4 took 54-69 % of their top 10 from task 5 and
reached a unified P@10 of 0.139 (joint training: 0.231).

What. The encoders are frozen, so the per-class feature statistics pbeh keeps after every task stay valid for ever:
a classifier on them does not forget. :class:`ClassPrior` holds, for every class seen so far and per modality, the
feature mean and per-dimension spread, and the class's centre (:class:`~pbeh.centers.ClassCenters`). For features
``x`` it returns the expected centre under the posterior of diagonal Gaussians::

    p(c | x) = softmax_c( -||(x - mean_c) / scale_c||^2 / 2 - sum_d log scale_cd )
    prior(x) = sum_c p(c | x) * center_c / sqrt(n_bits)          (a unit vector when the posterior is sure)

and :meth:`pbeh.model.CrossModalHashModel.encode` with ``role="query"`` gives ``sign(h + weight * prior(x))``, ``h``
being the heads' L2-normalised output. Stored codes (``role="database"``) are the heads' alone: they were encoded
while their classes were the newest, and putting the prior into them cost Wikipedia-5 0.046 T→I.

Where a class's codes really are. A centre is where training aimed a class; the codes stored for it are where it
landed, and a query must meet those. The table therefore holds one target code per class *and query modality*: the
trainer (``TrainerConfig.prior_targets="stored"``, the default) sets it, after every task is stored, to the bitwise
majority of the class's stored codes of the *other* modality (the ones that modality's queries are compared with),
the centre's bit where no stored code of the class has that bit or the vote is tied (:func:`stored_code_targets`).
On items with several labels, whose codes sit between their classes' centres, this raised MIRFLICKR730-4's unified
score by 0.035-0.040 (32 bits, two seeds, the same trainings with centre targets); docs/design.md has the figures.

Measured on one finished run per set, its queries re-encoded (unified I→T / T→I, no prior -> weight 0.5):
Wikipedia-5 0.321 / 0.663 -> 0.352 / 0.676, MIRFLICKR730-4 0.677 / 0.650 -> 0.684 / 0.662, openclipart-5
0.464 / 0.637 -> 0.503 / 0.622. docs/design.md has the grid of forms and weights, docs/results.md the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_choice
from .prompts import MODALITIES

__all__ = ["ClassPrior", "Weight", "prior_weights", "stored_code_targets"]

Weight = float | Mapping[str, float]
"""A class-prior weight: one number for both modalities, or ``{"image": w, "text": w}``."""

_VARIANCE_FLOOR = 1e-3  # this fraction of the mean class variance (per dimension) is added to every class's variance


def prior_weights(weight: Any, name: str = "weight") -> dict[str, float]:
    """``weight`` as ``{"image": w, "text": w}``: a finite number >= 0 for both modalities, or a mapping with exactly
    the keys ``"image"`` and ``"text"`` (the image weight acts on image queries, that is on image-to-text search)."""
    if isinstance(weight, Mapping):
        if set(weight) != set(MODALITIES):
            raise ValueError(
                f"{name}: expected a number or a mapping with keys 'image' and 'text', got {dict(weight)!r}"
            )
        values = {m: weight[m] for m in MODALITIES}
    else:
        values = {m: weight for m in MODALITIES}
    for value in values.values():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name}: expected finite numbers >= 0, got {weight!r}")
    return {m: float(v) for m, v in values.items()}


def stored_code_targets(centers: np.ndarray, stored: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per class, the bitwise majority of its stored codes; the centre's bit where no code has that bit or votes tie.

    Args:
        centers: ``(C, K)`` ±1, one row per class of the table (the fallback, and the target length ``K``).
        stored: blocks of ``(signs, member)``: ``signs`` ``(n, K_s)`` ±1 stored codes (any ``K_s``; bits past
            ``K_s`` do not vote, bits past ``K`` are ignored) and ``member`` ``(n, C)`` bool, which classes each
            code's item carries (an item with several labels votes for each of them).

    Returns:
        ``(C, K)`` float32 ±1.

    Example:
        >>> centers = np.array([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]])
        >>> signs = np.array([[-1.0, 1.0], [-1.0, -1.0], [1.0, 1.0]])
        >>> member = np.array([[True, False], [True, False], [False, False]])
        >>> stored_code_targets(centers, [(signs, member)])  # class 0: bit 0 -1, bit 1 tied, bit 2 unstored
        array([[-1.,  1.,  1.],
               [-1., -1., -1.]], dtype=float32)
    """
    centers = np.asarray(centers, dtype=np.float64)
    if centers.ndim != 2 or not np.isin(centers, (-1.0, 1.0)).all():
        raise ValueError(f"centers: expected a 2-D array of ±1 values, got shape {centers.shape}")
    n_classes, n_bits = centers.shape
    votes = np.zeros((n_classes, n_bits))
    for i, (signs, member) in enumerate(stored):
        signs = np.asarray(signs, dtype=np.float64)
        member = np.asarray(member, dtype=bool)
        if signs.ndim != 2 or member.shape != (len(signs), n_classes):
            raise ValueError(
                f"stored[{i}]: expected signs (n, K_s) and member (n, {n_classes}), "
                f"got {signs.shape} and {member.shape}"
            )
        if not np.isin(signs, (-1.0, 1.0)).all():
            raise ValueError(f"stored[{i}]: signs must be ±1")
        k = min(n_bits, signs.shape[1])
        votes[:, :k] += member.T.astype(np.float64) @ signs[:, :k]
    return np.where(votes > 0, 1.0, np.where(votes < 0, -1.0, centers)).astype(np.float32)


class ClassPrior(nn.Module):
    """Per-class feature means, spreads and target codes; the prior direction of features (empty, so inactive, at
    first).

    Args:
        image_dim, text_dim: feature widths of the two modalities.
        n_classes, n_bits: the table's shape (zeros until :meth:`fit`; :meth:`from_config` uses them to rebuild a
            saved table before its values are loaded).
        weight: the prior's weight against the heads' unit-norm output, one number or ``{"image": w, "text": w}``
            (``0`` turns it off for that modality's queries). :attr:`weights` holds it per modality.

    The target codes are per query modality (:attr:`image_codes` for image queries, :attr:`text_codes` for text
    queries): the classes' centres, or where their codes of the other modality were stored
    (:func:`stored_code_targets`).

    Example:
        >>> prior = ClassPrior(4, 3)
        >>> prior.fit({"image": np.eye(2, 4), "text": np.eye(2, 3)},
        ...           {"image": np.ones((2, 4)), "text": np.ones((2, 3))}, np.array([[1, 1], [-1, -1]]), weight=1.0)
        >>> prior(torch.tensor([[1.0, 0, 0, 0]]), "image", n_bits=2).sign()
        tensor([[1., 1.]])
    """

    def __init__(self, image_dim: int, text_dim: int, *, n_classes: int = 0, n_bits: int = 0, weight: Weight = 0.0):
        super().__init__()
        self.weights = prior_weights(weight)
        for modality, width in (("image", image_dim), ("text", text_dim)):
            self.register_buffer(f"{modality}_mean", torch.zeros(n_classes, width))
            self.register_buffer(f"{modality}_scale", torch.ones(n_classes, width))
        for modality in MODALITIES:
            self.register_buffer(f"{modality}_codes", torch.zeros(n_classes, n_bits))

    @property
    def n_classes(self) -> int:
        """Classes in the table."""
        return int(self.image_codes.shape[0])

    @property
    def n_bits(self) -> int:
        """Length of the table's target codes."""
        return int(self.image_codes.shape[1])

    @property
    def active(self) -> bool:
        """Whether :meth:`pbeh.model.CrossModalHashModel.encode` adds the prior."""
        return self.n_classes > 0 and any(w > 0 for w in self.weights.values())

    def fit(
        self,
        means: dict[str, np.ndarray],
        stds: dict[str, np.ndarray],
        codes: np.ndarray | Mapping[str, np.ndarray],
        *,
        weight: Weight,
    ) -> None:
        """Replace the table: per modality the classes' means and spreads ``(C, D)``, and their ±1 target codes
        ``(C, K)``: one array for the queries of both modalities (the centres), or ``{"image": ..., "text": ...}``.

        A class's scale is its spread, with a thousandth of the modality's mean class variance in that dimension
        (and 1e-12) added to its variance, so that a dimension constant within a class does not divide by zero.
        """
        per_modality = codes if isinstance(codes, Mapping) else {m: codes for m in MODALITIES}
        if set(per_modality) != set(MODALITIES):
            raise ValueError(f"codes: expected an array or a mapping with keys 'image' and 'text', got {set(codes)}")
        tables = {m: np.asarray(per_modality[m], dtype=np.float32) for m in MODALITIES}
        for modality, table in tables.items():
            if table.ndim != 2 or not np.isin(table, (-1.0, 1.0)).all():
                name = f"codes[{modality!r}]" if isinstance(codes, Mapping) else "codes"
                raise ValueError(f"{name}: expected a 2-D array of ±1 codes, got shape {table.shape}")
        if tables["image"].shape != tables["text"].shape:
            raise ValueError(
                f"codes: the image and text tables differ in shape, {tables['image'].shape} and {tables['text'].shape}"
            )
        codes = tables["image"]
        weights = prior_weights(weight)
        ref = self.image_codes
        for modality in MODALITIES:
            mean = np.asarray(means[modality], dtype=np.float32)
            std = np.asarray(stds[modality], dtype=np.float32)
            width = getattr(self, f"{modality}_mean").shape[1]
            if mean.shape != (len(codes), width) or std.shape != mean.shape:
                raise ValueError(
                    f"means/stds[{modality!r}]: expected shape {(len(codes), width)}, got {mean.shape} and {std.shape}"
                )
            var = std.astype(np.float64) ** 2
            scale = np.sqrt(var + _VARIANCE_FLOOR * var.mean(axis=0, keepdims=True) + 1e-12)
            setattr(self, f"{modality}_mean", torch.as_tensor(mean, dtype=ref.dtype, device=ref.device))
            setattr(self, f"{modality}_scale", torch.as_tensor(scale, dtype=ref.dtype, device=ref.device))
        for modality, table in tables.items():
            setattr(self, f"{modality}_codes", torch.as_tensor(table, dtype=ref.dtype, device=ref.device))
        self.weights = weights

    def posterior(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """``p(c | x)`` ``(B, n_classes)`` for raw features ``(B, D)`` (the rows of the target tables)."""
        check_choice(modality, "modality", MODALITIES)
        mean, scale = getattr(self, f"{modality}_mean"), getattr(self, f"{modality}_scale")
        x, mean, scale = features.double(), mean.double(), scale.double()  # the expansion below cancels terms
        inverse = scale.reciprocal() ** 2  # (C, D)
        # sum_d (x_d - m_cd)^2 / s_cd^2 as three matrix products, without a (B, C, D) intermediate
        distance = (x * x) @ inverse.T - 2 * x @ (mean * inverse).T + (mean * mean * inverse).sum(dim=1)
        return torch.softmax(-0.5 * distance - torch.log(scale).sum(dim=1), dim=1).to(features.dtype)

    def forward(self, features: torch.Tensor, modality: str, *, n_bits: int) -> torch.Tensor:
        """The prior direction ``(B, n_bits)``: zeros when empty; the table's bits padded with zeros or cut."""
        out = features.new_zeros((len(features), n_bits))
        if not self.n_classes:
            return out
        table = getattr(self, f"{modality}_codes")
        k = min(n_bits, table.shape[1])
        direction = self.posterior(features, modality) @ table[:, :k]
        out[:, :k] = direction.to(out.dtype) / np.sqrt(table.shape[1])
        return out

    def combine(self, logits: torch.Tensor, features: torch.Tensor, modality: str) -> torch.Tensor:
        """What ``encode`` takes the sign of: ``normalize(logits) + weight * prior`` (the logits alone when off)."""
        weight = self.weights[modality]
        if not self.n_classes or weight <= 0:
            return logits
        return F.normalize(logits, dim=1) + weight * self(features, modality, n_bits=logits.shape[1])

    def get_config(self) -> dict[str, Any]:
        """The table's shape and weight (``config.json``'s ``"class_prior"``)."""
        image, text = self.weights["image"], self.weights["text"]
        weight: Any = image if image == text else dict(self.weights)
        return {"n_classes": self.n_classes, "n_bits": self.n_bits, "weight": weight}

    def resize(self, n_classes: int, n_bits: int, weight: Weight) -> None:
        """An all-zero table of the given shape (before a saved one is loaded into it)."""
        if n_classes < 0 or n_bits < 0:
            raise ValueError(f"class_prior: expected n_classes, n_bits >= 0, got {n_classes} and {n_bits}")
        weights = prior_weights(weight, "class_prior weight")
        ref = self.image_codes
        for modality in MODALITIES:
            width = getattr(self, f"{modality}_mean").shape[1]
            setattr(self, f"{modality}_mean", ref.new_zeros((n_classes, width)))
            setattr(self, f"{modality}_scale", ref.new_ones((n_classes, width)))
            setattr(self, f"{modality}_codes", ref.new_zeros((n_classes, n_bits)))
        self.weights = weights
