"""The on-disk feature cache: :class:`FeatureCache` (encode only what is not cached, append under a file lock, the
rank-split path under torch.distributed) and its file helpers."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_choice
from ..serialization import read_safetensors_metadata, sibling_path
from ._features import (
    FEATURES_KIND,
    MODALITIES,
    PathLike,
    _check_features,
    _check_ids,
    load_features,
    save_features,
)
from ._loading import _check_name

_logger = logging.getLogger(__name__)


class FeatureCache:
    """Features of one modality by one encoder, persisted in a safetensors file and extended on demand.

    :meth:`get_or_encode` encodes only the ids not yet in the file, appends them (atomic rewrite) and returns the
    features of every requested id in the requested order, so a second run encodes nothing.

    Args:
        path: the cache file (created on the first :meth:`get_or_encode` that encodes something).
        modality: ``"image"`` or ``"text"``; a file of the other modality is refused.

    Example:
        >>> import tempfile, pathlib
        >>> calls = []
        >>> def encode(texts):
        ...     calls.append(list(texts))
        ...     return np.array([[len(t), 1.0] for t in texts])
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "texts.safetensors"
        >>> cache = FeatureCache(path, modality="text")
        >>> cache.get_or_encode([1, 2], ["ab", "abc"], encode, encoder_name="toy").tolist()
        [[2.0, 1.0], [3.0, 1.0]]
        >>> FeatureCache(path, modality="text").get_or_encode([2, 5], ["abc", "x"], encode, encoder_name="toy")[:, 0]
        array([3., 1.], dtype=float32)
        >>> calls  # the second call encoded only id 5
        [['ab', 'abc'], ['x']]
    """

    def __init__(self, path: PathLike, *, modality: str) -> None:
        self.path = Path(path)
        self.modality = check_choice(modality, "modality", MODALITIES)
        if self.path.is_dir():
            raise IsADirectoryError(f"path: expected a file path, got the directory {str(self.path)!r}")
        self._features: np.ndarray | None = None
        self._ids = np.empty(0, dtype=np.int64)
        self._encoder_name: str | None = None
        self._order = np.empty(0, dtype=np.int64)  # argsort of _ids
        self._stamp: tuple[int, int, int] | None = None  # the file as last read or written
        if self.path.exists():
            meta = read_safetensors_metadata(self.path, kind=FEATURES_KIND)
            if meta.get("modality") != self.modality:
                raise ValueError(
                    f"modality: the cache {str(self.path)!r} holds {meta.get('modality')!r} features, "
                    f"got modality={self.modality!r}"
                )
            self._load()

    def _load(self) -> None:
        stamp = _file_stamp(self.path)
        feats, ids, meta = load_features(self.path)
        self._features, self._ids, self._encoder_name = feats, ids, meta["encoder_name"]
        self._order = np.argsort(ids, kind="stable")
        self._stamp = stamp

    def _refresh(self) -> None:
        """Reload the file when another writer (another FeatureCache, another process) changed it since we read it."""
        stamp = _file_stamp(self.path)
        if stamp is not None and stamp != getattr(self, "_stamp", None):
            self._load()

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"FeatureCache(path={str(self.path)!r}, modality={self.modality!r}, n_items={len(self)}, "
            f"encoder_name={self._encoder_name!r})"
        )

    @property
    def ids(self) -> np.ndarray:
        """The cached item ids (int64, in storage order; a copy)."""
        return self._ids.copy()

    @property
    def encoder_name(self) -> str | None:
        """Name of the encoder that produced the cached features (``None`` while the cache is empty)."""
        return self._encoder_name

    @property
    def dim(self) -> int | None:
        """Feature width (``None`` while the cache is empty)."""
        return None if self._features is None else int(self._features.shape[1])

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Storage row of every id, -1 where the id is not cached."""
        if len(self._ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        sorted_ids = self._ids[self._order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == ids
        return np.where(found, self._order[pos], -1)

    def get(self, ids: Any) -> np.ndarray:
        """Cached features of ``ids`` (in that order).

        Raises:
            KeyError: some ids are not cached.
        """
        ids_arr = _check_ids(ids)
        rows = self._rows(ids_arr)
        if np.any(rows < 0):
            missing = ids_arr[rows < 0]
            raise KeyError(f"ids: {len(missing)} of {len(ids_arr)} not cached (e.g. {missing[:5].tolist()})")
        if self._features is None:  # empty cache, empty request
            return np.empty((0, 0), dtype=np.float32)
        return self._features[rows]

    def get_or_encode(
        self,
        ids: Any,
        items: Any,
        encode_fn: Callable[[Any], Any],
        *,
        encoder_name: str,
        overwrite: bool = False,
    ) -> np.ndarray:
        """Features of ``ids``; encodes (in one ``encode_fn`` call) and caches only those not yet cached.

        Args:
            ids: ``n`` unique int item ids.
            items: the ``n`` items (list of texts / images / paths, or an array or tensor indexed on its first axis);
                ``encode_fn`` receives the subset of the items not cached, of the same kind.
            encode_fn: items → ``(len(items), dim)`` float array, e.g. ``functools.partial(encoder.encode_texts,
                show_progress_bar=False)``. Not called at all when every id is cached.
            encoder_name: name of the encoder behind ``encode_fn`` (``encoder.name``); must equal the cached one.
            overwrite: when the cache was written by another encoder, discard it and start anew instead of raising.

        Returns:
            ``float32`` array ``(n, dim)``, row ``i`` for ``ids[i]``.

        Under torch.distributed (``torchrun``, several processes) every rank calls this with the same ids and items:
        each rank encodes a contiguous share of the missing items, rank 0 writes them in one process's order (the
        file one process would write, up to the encoder's float differences between batchings) and every rank
        returns all the requested features. The file must be on a filesystem every rank sees (docs/distributed.md).

        Raises:
            ValueError: duplicated ids, lengths that differ, another encoder (without ``overwrite``), or an
                ``encode_fn`` result of the wrong shape or with non-finite values (on any rank, under
                torch.distributed).
        """
        ids_arr = _check_ids(ids)
        encoder_name = _check_name(encoder_name, "encoder_name")
        if len(ids_arr) == 0:
            raise ValueError("ids: expected at least one id, got none")
        try:
            n_items = len(items)
        except TypeError:
            raise TypeError(f"items: expected a sized sequence, got {type(items).__name__}") from None
        if n_items != len(ids_arr):
            raise ValueError(f"items: expected {len(ids_arr)} items (one per id), got {n_items}")
        if not callable(encode_fn):
            raise TypeError(f"encode_fn: expected a callable, got {type(encode_fn).__name__}")
        if self._encoder_name is not None and self._encoder_name != encoder_name:
            if not overwrite:
                raise ValueError(
                    f"encoder_name: the cache {str(self.path)!r} holds features of {self._encoder_name!r}, "
                    f"got {encoder_name!r}; use another cache file or pass overwrite=True to discard it"
                )
            _logger.warning(
                "discarding %d cached features of %r in %s (overwrite=True, new encoder %r)",
                len(self._ids),
                self._encoder_name,
                self.path,
                encoder_name,
            )
            self._features, self._encoder_name = None, None
            self._ids = np.empty(0, dtype=np.int64)
            self._order = np.empty(0, dtype=np.int64)

        rows = self._rows(ids_arr)
        missing = np.flatnonzero(rows < 0)
        ctx = _distributed_context()
        if ctx is not None:
            return self._get_or_encode_distributed(ids_arr, items, encode_fn, encoder_name, overwrite, missing, ctx)
        if len(missing):
            _logger.info("encoding %d of %d items not in %s", len(missing), len(ids_arr), self.path)
            new = _check_features(
                encode_fn(_subset(items, missing)), n=len(missing), dim=self.dim, what="encode_fn output"
            )
            self._append(ids_arr[missing], new, encoder_name, overwrite)
            rows = self._rows(ids_arr)
        assert self._features is not None
        return self._features[rows]

    def _append(self, new_ids: np.ndarray, new: np.ndarray, encoder_name: str, overwrite: bool) -> None:
        """Add freshly encoded features to the file and to memory."""
        # Append under a lock, on top of what is in the file now: another FeatureCache on the same file (in
        # this process or another) may have appended since we read it, and its items must not be lost.
        with _file_lock(self.path):
            self._refresh()
            if self._encoder_name is not None and self._encoder_name != encoder_name:
                if not overwrite:
                    raise ValueError(
                        f"encoder_name: the cache {str(self.path)!r} now holds features of "
                        f"{self._encoder_name!r} (written meanwhile by another writer), got {encoder_name!r}"
                    )
                self._features, self._encoder_name = None, None
                self._ids = np.empty(0, dtype=np.int64)
                self._order = np.empty(0, dtype=np.int64)
            if self.dim is not None and new.shape[1] != self.dim:
                raise ValueError(f"encode_fn output: expected width {self.dim} (the cache's), got {new.shape[1]}")
            fresh = self._rows(new_ids) < 0  # items the other writer did not add meanwhile
            all_ids = np.concatenate([self._ids, new_ids[fresh]])
            all_feats = new[fresh] if self._features is None else np.concatenate([self._features, new[fresh]])
            save_features(self.path, all_feats, all_ids, encoder_name=encoder_name, modality=self.modality)
            self._stamp = _file_stamp(self.path)
        self._features, self._ids, self._encoder_name = all_feats, all_ids, encoder_name
        self._order = np.argsort(all_ids, kind="stable")

    def _get_or_encode_distributed(
        self,
        ids_arr: np.ndarray,
        items: Any,
        encode_fn: Callable[[Any], Any],
        encoder_name: str,
        overwrite: bool,
        missing: np.ndarray,
        ctx: Any,
    ) -> np.ndarray:
        """:meth:`get_or_encode` under torch.distributed: every rank calls it with the same ids and items.

        Rank 0's view of the file says which items are missing; each rank encodes a contiguous share of them, the
        shares are gathered in rank order (which is the order one process encodes them in), rank 0 appends them to
        the file (the same file one process writes, up to the encoder's float differences between batchings), and
        the other ranks read it back once it is written.
        """
        from ..training.distributed import all_gather_objects, barrier, broadcast_object, shard_bounds

        missing = broadcast_object(missing, ctx)
        if len(missing):
            start, stop = shard_bounds(len(missing), ctx.world_size)[ctx.rank]
            share = missing[start:stop]
            _logger.info(
                "rank %d: encoding %d of the %d items not in %s", ctx.rank, len(share), len(missing), self.path
            )
            error, mine = None, None
            try:
                if len(share):
                    mine = _check_features(
                        encode_fn(_subset(items, share)), n=len(share), dim=self.dim, what="encode_fn output"
                    )
            except (TypeError, ValueError) as exc:
                error = f"rank {ctx.rank}: {exc}"
            parts = all_gather_objects((error, mine), ctx)
            errors = [e for e, _ in parts if e is not None]
            widths = {m.shape[1] for _, m in parts if m is not None}
            if not errors and len(widths) > 1:
                errors = [f"encode_fn output: the ranks' features have different widths {sorted(widths)}"]
            if errors:
                raise ValueError("; ".join(errors))
            new = np.concatenate([m for _, m in parts if m is not None])
            failure = None
            if ctx.is_main:
                try:
                    self._append(ids_arr[missing], new, encoder_name, overwrite)
                except (OSError, ValueError) as exc:
                    failure = f"rank 0 could not write {str(self.path)!r}: {type(exc).__name__}: {exc}"
            failure = broadcast_object(failure, ctx)
            if failure is not None:
                raise ValueError(failure)
            barrier(ctx)
            if not ctx.is_main:
                self._load()
        rows = self._rows(ids_arr)
        if np.any(rows < 0) or self._features is None:
            raise ValueError(
                f"path: {str(self.path)!r} lacks {int(np.sum(rows < 0))} requested ids after rank 0 wrote it; "
                "every rank must see the same file (a shared filesystem) and call get_or_encode with the same ids"
            )
        return self._features[rows]


def _distributed_context() -> Any:
    """The torch.distributed context when this process is one of several, else None (torch is not imported for it)."""
    import sys

    if "torch.distributed" not in sys.modules:
        return None
    from ..training.distributed import current

    return current()


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten: inode, size, modification time (None: no file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def _file_lock(path: Path):  # type: ignore[no-untyped-def]
    """An exclusive advisory lock on the sibling ``.<name>.lock`` (POSIX ``flock``; no lock where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path = sibling_path(path, "lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _subset(items: Any, positions: np.ndarray) -> Any:
    if isinstance(items, np.ndarray):
        return items[positions]
    if hasattr(items, "detach") and hasattr(items, "index_select"):  # torch tensor
        import torch

        return items[torch.from_numpy(positions)]
    return [items[int(i)] for i in positions]
