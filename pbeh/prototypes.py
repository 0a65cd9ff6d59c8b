"""Class prototypes: per-class feature statistics of earlier tasks, for backward-compatible training.

After a task, pbeh keeps for every class it saw the mean and the per-dimension standard deviation of its training
items' features, per modality (``2 * n_classes * (D_image + D_text)`` floats in all, whatever the number of items).
No item's features are kept. While later tasks train, :meth:`ClassPrototypes.sample` draws pseudo items of the old
classes (mean plus Gaussian noise with the class's spread, scaled by ``noise``); the trainer puts them in every
minibatch, where the stored-code term pins them to the codes stored for their class and the pairwise terms keep the
new task's items away from them. That is what keeps an old task's *queries*, encoded by today's model, meeting the
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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ClassPrototypes"]

_KEYS = ("classes", "image_mean", "image_std", "text_mean", "text_std")


@dataclass(frozen=True)
class ClassPrototypes:
    """Per-class feature means and spreads of the classes of one or more tasks.

    Attributes:
        classes: global class indices ``(n,)`` (int64).
        image_mean, image_std: ``(n, D_image)`` float32.
        text_mean, text_std: ``(n, D_text)`` float32.
        n_classes: width of the global label space (for the pseudo items' multi-hot labels).
    """

    classes: np.ndarray
    image_mean: np.ndarray
    image_std: np.ndarray
    text_mean: np.ndarray
    text_std: np.ndarray
    n_classes: int

    def __post_init__(self) -> None:
        n = len(self.classes)
        for key in _KEYS[1:]:
            value = getattr(self, key)
            if value.ndim != 2 or value.shape[0] != n:
                raise ValueError(f"{key}: expected {n} rows (one per class), got shape {value.shape}")
        if n and (self.classes.min() < 0 or self.classes.max() >= self.n_classes):
            raise ValueError(f"classes: expected indices in [0, {self.n_classes}), got {self.classes.tolist()}")

    def __len__(self) -> int:
        return len(self.classes)

    @classmethod
    def fit(
        cls, image: np.ndarray, text: np.ndarray, labels: np.ndarray, *, classes: Sequence[int] | None = None
    ) -> ClassPrototypes:
        """Statistics of the items of every class present in ``labels`` (or of ``classes`` only).

        An item with several labels counts towards each of its classes. Classes without items are skipped.
        """
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
            for modality, feats in (("image", image[rows]), ("text", text[rows])):
                stats[f"{modality}_mean"].append(feats.mean(axis=0))
                stats[f"{modality}_std"].append(feats.std(axis=0))
        widths = {"image": image.shape[1], "text": text.shape[1]}
        arrays = {
            key: (np.stack(v).astype(np.float32) if v else np.zeros((0, widths[key.split("_")[0]]), np.float32))
            for key, v in stats.items()
        }
        return cls(np.asarray(kept, dtype=np.int64), n_classes=labels.shape[1], **arrays)

    @classmethod
    def concatenate(cls, parts: Sequence[ClassPrototypes]) -> ClassPrototypes:
        """The prototypes of several tasks together (a class present in two parts appears twice)."""
        if not parts:
            raise ValueError("parts: expected at least one ClassPrototypes")
        return cls(
            np.concatenate([p.classes for p in parts]),
            n_classes=parts[0].n_classes,
            **{key: np.concatenate([getattr(p, key) for p in parts]) for key in _KEYS[1:]},
        )

    def merged(self) -> ClassPrototypes:
        """One row per class, in ascending class order: a class present in several rows (several tasks) gets the mean
        of their means and the root mean of their variances."""
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

    def sample(
        self, n: int, rng: np.random.Generator, *, noise: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` pseudo items: a class drawn uniformly, then ``mean + noise * std * N(0, 1)`` per modality.

        Returns ``(image, text, labels)``: float32 features and one-hot labels over the global label space.
        """
        if not len(self):
            raise ValueError("sample: these prototypes hold no class")
        which = rng.integers(0, len(self), size=n)
        out = []
        for modality in ("image", "text"):
            mean, std = getattr(self, f"{modality}_mean")[which], getattr(self, f"{modality}_std")[which]
            out.append((mean + noise * std * rng.standard_normal(mean.shape)).astype(np.float32))
        labels = np.zeros((n, self.n_classes), dtype=np.float32)
        labels[np.arange(n), self.classes[which]] = 1.0
        return out[0], out[1], labels

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat arrays for a safetensors file (keys ``prefix + name``)."""
        return {prefix + key: np.ascontiguousarray(getattr(self, key)) for key in _KEYS}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str, n_classes: int) -> ClassPrototypes:
        """Inverse of :meth:`to_arrays`."""
        missing = [prefix + key for key in _KEYS if prefix + key not in arrays]
        if missing:
            raise KeyError(f"prototype arrays missing: {missing}")
        return cls(
            np.asarray(arrays[prefix + "classes"], dtype=np.int64),
            n_classes=int(n_classes),
            **{key: np.asarray(arrays[prefix + key], dtype=np.float32) for key in _KEYS[1:]},
        )
