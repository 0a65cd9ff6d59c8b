"""Class prototypes: per-class feature statistics of earlier tasks, for backward-compatible training.

After a task, pbeh keeps for every class it saw the mean and the per-dimension standard deviation of its training
items' features, per modality (``2 * n_classes * (D_image + D_text)`` floats in all, whatever the number of items).
No item's features are kept. With ``clusters > 1`` it also keeps the same statistics for up to ``clusters`` groups
of each class's items (seeded k-means on both modalities' standardised features, every group at least
:data:`MIN_CLUSTER_ITEMS` items, so no statistic is an item's features), for replay only: a class whose items form
several modes is then replayed from several means instead of one that may lie between them. While later tasks
train, :meth:`ClassPrototypes.sample` draws pseudo items of the old classes: a class's (or group's) mean plus its
per-dimension spread times either the standardised within-class deviation of a real item of the task being trained
(:meth:`ClassPrototypes.deviations`; feature translation, the trainer's default) or Gaussian noise scaled by
``noise``. The trainer puts them in every minibatch, where the
stored-code term pins them to the codes stored for their class and the pairwise terms keep the new task's items away
from them. That is what keeps an old task's *queries*, encoded by today's model, meeting the
codes stored for that task (see docs/design.md, "Search across the whole stream").

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.uint8)
    >>> protos = ClassPrototypes.fit(rng.normal(size=(3, 4)), rng.normal(size=(3, 2)), labels)
    >>> protos.classes.tolist()
    [0, 1]
    >>> image, text, pseudo_labels = protos.sample(5, np.random.default_rng(1), noise=0.0)
    >>> image.shape, text.shape, pseudo_labels.shape
    ((5, 4), (5, 2), (5, 3))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .prompts import kmeans

__all__ = ["MIN_CLUSTER_ITEMS", "MIN_RELATIVE_SPREAD", "ClassPrototypes"]

_KEYS = ("classes", "image_mean", "image_std", "text_mean", "text_std")
_CLUSTERS = "clusters."  # key prefix of the per-group statistics in to_arrays / from_arrays

MIN_CLUSTER_ITEMS = 8
"""The fewest items a group of :meth:`ClassPrototypes.fit` (``clusters > 1``) may summarise."""

MIN_RELATIVE_SPREAD = 0.05
""":meth:`ClassPrototypes.deviations` divides by at least this fraction of a modality's mean per-class spread."""


@dataclass(frozen=True)
class ClassPrototypes:
    """Per-class feature means and spreads of the classes of one or more tasks.

    Attributes:
        classes: global class indices ``(n,)`` (int64).
        image_mean, image_std: ``(n, D_image)`` float32.
        text_mean, text_std: ``(n, D_text)`` float32.
        n_classes: width of the global label space (for the pseudo items' multi-hot labels).
        clusters: the per-group statistics (a class in several rows, one per group of its items) that :meth:`sample`
            draws from instead of the per-class rows; ``None`` when fitted with ``clusters=1``.
    """

    classes: np.ndarray
    image_mean: np.ndarray
    image_std: np.ndarray
    text_mean: np.ndarray
    text_std: np.ndarray
    n_classes: int
    clusters: ClassPrototypes | None = None

    def __post_init__(self) -> None:
        n = len(self.classes)
        for key in _KEYS[1:]:
            value = getattr(self, key)
            if value.ndim != 2 or value.shape[0] != n:
                raise ValueError(f"{key}: expected {n} rows (one per class), got shape {value.shape}")
        if n and (self.classes.min() < 0 or self.classes.max() >= self.n_classes):
            raise ValueError(f"classes: expected indices in [0, {self.n_classes}), got {self.classes.tolist()}")
        if self.clusters is not None and (
            self.clusters.clusters is not None
            or self.clusters.n_classes != self.n_classes
            or not np.isin(self.clusters.classes, self.classes).all()
        ):
            raise ValueError("clusters: expected flat per-group statistics of this set's classes")

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def fit(
        cls,
        image: np.ndarray,
        text: np.ndarray,
        labels: np.ndarray,
        *,
        classes: Sequence[int] | None = None,
        clusters: int = 1,
        seed: int = 0,
    ) -> ClassPrototypes:
        """Statistics of the items of every class present in ``labels`` (or of ``classes`` only).

        An item with several labels counts towards each of its classes. Classes without items are skipped.
        ``clusters > 1`` adds :attr:`clusters`: each class's items split into at most ``clusters`` groups of at least
        :data:`MIN_CLUSTER_ITEMS` items (one group when the class has fewer than twice that), seeded by ``seed``.
        """
        if isinstance(clusters, bool) or not isinstance(clusters, (int, np.integer)) or clusters < 1:
            raise ValueError(f"clusters: expected a positive int, got {clusters!r}")
        image = np.asarray(image, dtype=np.float32)
        text = np.asarray(text, dtype=np.float32)
        labels = np.asarray(labels) > 0
        if labels.ndim != 2 or len(labels) != len(image) or len(labels) != len(text):
            raise ValueError(
                f"image, text, labels: expected aligned rows and 2-D labels, got shapes {image.shape}, {text.shape} "
                f"and {labels.shape}"
            )
        wanted = range(labels.shape[1]) if classes is None else classes
        kept, stats = [], {key: [] for key in _KEYS[1:]}
        for c in wanted:
            rows = labels[:, int(c)]
            if not rows.any():
                continue
            kept.append(int(c))
            _append_statistics(stats, image[rows], text[rows])
        prototypes = cls(np.asarray(kept, dtype=np.int64), n_classes=labels.shape[1], **_stacked(stats, image, text))
        if clusters == 1:
            return prototypes
        group_classes, group_stats = [], {key: [] for key in _KEYS[1:]}
        for c in kept:
            rows = np.flatnonzero(labels[:, c])
            for group in _groups(image[rows], text[rows], int(clusters), seed=int(seed) * 100_003 + c):
                group_classes.append(c)
                _append_statistics(group_stats, image[rows[group]], text[rows[group]])
        groups = cls(
            np.asarray(group_classes, dtype=np.int64), n_classes=labels.shape[1], **_stacked(group_stats, image, text)
        )
        return dataclasses.replace(prototypes, clusters=groups)

    @classmethod
    def concatenate(cls, parts: Sequence[ClassPrototypes]) -> ClassPrototypes:
        """The prototypes of several tasks together (a class present in two parts appears twice)."""
        if not parts:
            raise ValueError("parts: expected at least one ClassPrototypes")
        joined = cls(
            np.concatenate([p.classes for p in parts]),
            n_classes=parts[0].n_classes,
            **{key: np.concatenate([getattr(p, key) for p in parts]) for key in _KEYS[1:]},
        )
        if all(p.clusters is None for p in parts):
            return joined
        # A part without groups takes part in the replay with its per-class rows.
        return dataclasses.replace(
            joined, clusters=cls.concatenate([p.clusters if p.clusters is not None else p for p in parts])
        )

    def merged(self) -> ClassPrototypes:
        """One row per class, in ascending class order: a class present in several rows (several tasks) gets the mean
        of their means and the root mean of their variances. The per-group statistics are dropped."""
        classes, which = np.unique(self.classes, return_inverse=True)
        counts = np.bincount(which, minlength=len(classes)).astype(np.float64)[:, None]
        stats = {}
        for modality in ("image", "text"):
            mean, std = getattr(self, f"{modality}_mean"), getattr(self, f"{modality}_std")
            total = np.zeros((len(classes), mean.shape[1]))
            np.add.at(total, which, mean)
            var = np.zeros_like(total)
            np.add.at(var, which, std.astype(np.float64) ** 2)
            stats[f"{modality}_mean"] = (total / counts).astype(np.float32)
            stats[f"{modality}_std"] = np.sqrt(var / counts).astype(np.float32)
        return type(self)(classes.astype(np.int64), n_classes=self.n_classes, **stats)

    def deviations(self, image: np.ndarray, text: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each item's standardised within-class deviation, per modality: ``(image, text)`` float32.

        ``(x - mean) / std`` per dimension, where ``mean`` and ``std`` are the means over the item's classes of
        this set's per-class means and standard deviations (a class in several rows: their mean and root mean
        variance). A spread below :data:`MIN_RELATIVE_SPREAD` times the modality's mean spread counts as that much,
        so a dimension on which a class hardly varies does not blow up. An item none of whose classes is in this set
        (or without a label) is taken relative to the mean of all the set's classes' means and spreads.

        These are the within-class variations of real items that :meth:`sample` carries over to other classes
        (feature translation); the trainer computes them from the current task's items and keeps them only while it
        trains.
        """
        image = np.asarray(image, dtype=np.float32)
        text = np.asarray(text, dtype=np.float32)
        labels = np.asarray(labels) > 0
        if labels.ndim != 2 or labels.shape[1] != self.n_classes or not len(labels) == len(image) == len(text):
            raise ValueError(
                f"image, text, labels: expected aligned rows and labels over {self.n_classes} classes, got shapes "
                f"{image.shape}, {text.shape} and {labels.shape}"
            )
        if not len(self):
            raise ValueError("deviations: these prototypes hold no class")
        per_class = self.merged()
        known = labels[:, per_class.classes].astype(np.float64)  # (n, classes of this set)
        counts = known.sum(axis=1, keepdims=True)
        out = []
        for modality, feats in (("image", image), ("text", text)):
            expected = []
            for key in ("mean", "std"):
                table = getattr(per_class, f"{modality}_{key}").astype(np.float64)
                expected.append(np.where(counts > 0, known @ table / np.maximum(counts, 1), table.mean(axis=0)))
            mean, std = expected
            floor = MIN_RELATIVE_SPREAD * float(getattr(per_class, f"{modality}_std").mean())
            out.append(((feats - mean) / np.maximum(std, max(floor, np.finfo(np.float32).tiny))).astype(np.float32))
        return out[0], out[1]

    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        *,
        noise: float = 1.0,
        deviations: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` pseudo items: a row drawn uniformly, then its mean plus a variation per modality.

        The variation is ``std * noise * N(0, 1)`` (Gaussian), or with ``deviations`` (``(image, text)`` rows from
        :meth:`deviations`, usually of another task's items) ``std * d`` with ``d`` the standardised deviation of a
        uniformly drawn row, the same row for both modalities (feature translation: a real item's within-class
        variation, rescaled per dimension to this class's spread; ``noise`` is then unused).

        A row is a class of a task, or with :attr:`clusters` a group of a class (a class of many items, split into
        more groups, is then drawn more often).

        Returns ``(image, text, labels)``: float32 features and one-hot labels over the global label space.
        """
        if self.clusters is not None:
            return self.clusters.sample(n, rng, noise=noise, deviations=deviations)
        if not len(self):
            raise ValueError("sample: these prototypes hold no class")
        if deviations is not None:
            if isinstance(deviations, np.ndarray) or len(deviations) != 2:
                kind = type(deviations).__name__
                raise ValueError(f"deviations: expected a pair (image, text) of arrays, got {kind}")
            dev_image, dev_text = (np.asarray(part, dtype=np.float32) for part in deviations)
            if (
                dev_image.ndim != 2
                or dev_text.ndim != 2
                or len(dev_image) != len(dev_text)
                or not len(dev_image)
                or dev_image.shape[1] != self.image_mean.shape[1]
                or dev_text.shape[1] != self.text_mean.shape[1]
            ):
                raise ValueError(
                    f"deviations: expected (image, text) with the same number (> 0) of rows of widths "
                    f"{self.image_mean.shape[1]} and {self.text_mean.shape[1]}, got shapes {dev_image.shape} and "
                    f"{dev_text.shape}"
                )
        which = rng.integers(0, len(self), size=n)
        out = []
        if deviations is None:
            for modality in ("image", "text"):
                mean, std = getattr(self, f"{modality}_mean")[which], getattr(self, f"{modality}_std")[which]
                out.append((mean + noise * std * rng.standard_normal(mean.shape)).astype(np.float32))
        else:
            source = rng.integers(0, len(dev_image), size=n)
            for modality, dev in (("image", dev_image), ("text", dev_text)):
                mean, std = getattr(self, f"{modality}_mean")[which], getattr(self, f"{modality}_std")[which]
                out.append((mean + std * dev[source]).astype(np.float32))
        labels = np.zeros((n, self.n_classes), dtype=np.float32)
        labels[np.arange(n), self.classes[which]] = 1.0
        return out[0], out[1], labels

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat arrays for a safetensors file (keys ``prefix + name``; the groups under ``prefix + "clusters."``)."""
        arrays = {prefix + key: np.ascontiguousarray(getattr(self, key)) for key in _KEYS}
        if self.clusters is not None:
            arrays.update(self.clusters.to_arrays(prefix + _CLUSTERS))
        return arrays

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str, n_classes: int) -> ClassPrototypes:
        """Inverse of :meth:`to_arrays`."""
        missing = [prefix + key for key in _KEYS if prefix + key not in arrays]
        if missing:
            raise KeyError(f"prototype arrays missing: {missing}")
        groups = None  # absent in states saved without groups (or before they existed)
        if prefix + _CLUSTERS + "classes" in arrays:
            groups = cls.from_arrays(arrays, prefix + _CLUSTERS, n_classes)
        return cls(
            np.asarray(arrays[prefix + "classes"], dtype=np.int64),
            n_classes=int(n_classes),
            clusters=groups,
            **{key: np.asarray(arrays[prefix + key], dtype=np.float32) for key in _KEYS[1:]},
        )


def _append_statistics(stats: dict[str, list[np.ndarray]], image: np.ndarray, text: np.ndarray) -> None:
    for modality, feats in (("image", image), ("text", text)):
        stats[f"{modality}_mean"].append(feats.mean(axis=0))
        stats[f"{modality}_std"].append(feats.std(axis=0))


def _stacked(stats: dict[str, list[np.ndarray]], image: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
    widths = {"image": image.shape[1], "text": text.shape[1]}
    return {
        key: (np.stack(v).astype(np.float32) if v else np.zeros((0, widths[key.split("_")[0]]), np.float32))
        for key, v in stats.items()
    }


_GROUP_ROWS = 8192  # a class with more items is standardised, clustered and assigned in blocks of this many rows


def _groups(image: np.ndarray, text: np.ndarray, clusters: int, *, seed: int) -> list[np.ndarray]:
    """One class's items (rows) split into at most ``clusters`` groups of at least :data:`MIN_CLUSTER_ITEMS`.

    k-means on the features standardised per dimension (over the class) and per modality (each modality's squared
    distances divided by its width, so both weigh alike); then, while a group is too small, its centroid is dropped
    and the items go to the nearest remaining one. A class of more than ``_GROUP_ROWS`` items is clustered on a seeded
    sample of that many and assigned block by block, so memory stays bounded whatever the class's size.
    """
    n = len(image)
    k = min(clusters, n // MIN_CLUSTER_ITEMS)
    if k <= 1:
        return [np.arange(n)]
    # Per-dimension moments in float64 without a float64 copy of the class (numpy gives the same values as on a copy).
    stats = [(f.mean(axis=0, dtype=np.float64), f.std(axis=0, dtype=np.float64)) for f in (image, text)]

    def standardised(rows: slice | np.ndarray) -> torch.Tensor:
        parts = [
            (f[rows].astype(np.float64) - mean) / (std + 1e-12) / np.sqrt(f.shape[1])
            for f, (mean, std) in zip((image, text), stats, strict=True)
        ]
        return torch.from_numpy(np.concatenate(parts, axis=1))

    if n <= _GROUP_ROWS:
        sample = slice(None)
    else:
        sample = np.sort(np.random.default_rng(seed).choice(n, _GROUP_ROWS, replace=False))
    centroids = kmeans(standardised(sample), k, seed=seed)
    while True:
        assign = np.concatenate(
            [
                torch.cdist(standardised(slice(start, start + _GROUP_ROWS)), centroids).argmin(dim=1).numpy()
                for start in range(0, n, _GROUP_ROWS)
            ]
        )
        counts = np.bincount(assign, minlength=len(centroids))
        smallest = int(counts.argmin())
        if int(counts[smallest]) >= MIN_CLUSTER_ITEMS or len(centroids) == 1:
            break
        centroids = torch.cat([centroids[:smallest], centroids[smallest + 1 :]])
    return [np.flatnonzero(assign == j) for j in range(len(centroids))]
