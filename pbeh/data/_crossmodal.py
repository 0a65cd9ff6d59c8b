"""What the file readers return: :class:`CrossModalData` (paired features before any task split), and the
decorator that reports a reader's content errors as :class:`~pbeh.serialization.FormatError` naming the file."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..serialization import FormatError
from ._incremental import class_incremental_split
from ._split import Split, TaskStream

_logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, eq=False)
class CrossModalData:
    """Paired features read from a file, before any task split.

    Attributes:
        image: ``(N, D_image)`` float32.
        text: ``(N, D_text)`` float32.
        labels: ``(N, C)`` uint8 multi-hot.
        ids: ``(N,)`` int64 item ids.
        label_names: class names, or None.
        item_names: per-item names (such as image file names), or None.
        query_mask: ``(N,)`` bool marking an official test/query split, or None.
        source: where the data came from.
    """

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    ids: np.ndarray = field(default=None)  # type: ignore[assignment]
    label_names: list[str] | None = None
    item_names: list[str] | None = None
    query_mask: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        split = Split(self.image, self.text, self.labels, self.ids)  # validates and converts
        object.__setattr__(self, "image", split.image)
        object.__setattr__(self, "text", split.text)
        object.__setattr__(self, "labels", split.labels)
        object.__setattr__(self, "ids", split.ids)
        if self.label_names is not None and len(self.label_names) != split.n_classes:
            raise ValueError(f"label_names: expected {split.n_classes} names, got {len(self.label_names)}")
        if self.item_names is not None and len(self.item_names) != len(split):
            raise ValueError(f"item_names: expected {len(split)} names, got {len(self.item_names)}")
        if self.query_mask is not None:
            mask = np.asarray(self.query_mask)
            if mask.shape != (len(split),):
                raise ValueError(f"query_mask: expected shape ({len(split)},), got {mask.shape}")
            object.__setattr__(self, "query_mask", mask.astype(bool))

    def __len__(self) -> int:
        return len(self.ids)

    def split(self, **kwargs: Any) -> TaskStream:
        """:func:`class_incremental_split` of these items; the file's query mask and label names are used unless
        given in ``kwargs``."""
        kwargs.setdefault("ids", self.ids)
        kwargs.setdefault("label_names", self.label_names)
        if self.query_mask is not None and "query_mask" not in kwargs:
            if "query_fraction" in kwargs or "query_size" in kwargs:
                _logger.info("%s: query_fraction/query_size given, the file's test split is ignored", self.source)
            else:
                kwargs["query_mask"] = self.query_mask
        return class_incremental_split(self.image, self.text, self.labels, **kwargs)


def _file_contents_checked(reader: Callable[..., Any]) -> Callable[..., Any]:
    """Report a ValueError raised while validating a file's contents as a :class:`FormatError` naming the file.

    FormatError is a ValueError, so callers catching ValueError keep working; the message is kept as it was.
    """

    @functools.wraps(reader)
    def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return reader(path, *args, **kwargs)
        except FormatError:
            raise
        except ValueError as exc:
            text = str(exc)
            raise FormatError(text if str(path) in text else f"{path}: {text}") from exc

    return wrapper
