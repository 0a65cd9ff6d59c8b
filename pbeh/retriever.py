"""Retriever: raw images and texts to codes to search, in one object that saves as one folder.

A :class:`Retriever` holds the frozen encoder(s) (:mod:`pbeh.encoders`), the hashing model and its two indexes (one
per modality) through a :class:`~pbeh.trainer.ContinualTrainer`, plus per-item metadata:

* :meth:`Retriever.learn` trains on the next task(s) of a stream (the trainer's continual recipe) and stores each
  task's database;
* :meth:`Retriever.add` encodes and stores more items (images, texts, or both as pairs; raw or as features) with ids
  and optional JSON metadata;
* :meth:`Retriever.search` finds the items of the other modality (or ``target=``) for a text, an image or features,
  and returns ids, scores, the task that stored each hit and its metadata;
* :meth:`Retriever.save` / :meth:`Retriever.load` write and read one self-describing, versioned folder, replaced
  atomically (``retriever.json``, ``trainer/`` with the model and indexes as safetensors + JSON, ``items.json``, and
  the encoders' own ``save_pretrained`` folders, so loading needs no network).

Without encoders it works on features: users who cache their own pass ``image_features=`` / ``text_features=``.

Folder layout (``pbeh_kind = "retriever"``, ``format_version = 1``)::

    retriever.json      kind, version, pbeh version, encoder descriptions, embedding options
    trainer/            ContinualTrainer.save: model/ (config.json + model.safetensors), both indexes, state
    items.json          metadata and storing task of every item that has them
    encoder/            CLIPEncoder (model, tokenizer, image processor), or image_encoder/ and text_encoder/
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ._version import __version__
from .codes import Codes
from .data import Task
from .serialization import FormatError, read_json, replace_directory, resolve_directory, staging_directory, write_json
from .trainer import ContinualTrainer, TaskReport

__all__ = ["RETRIEVER_FORMAT_VERSION", "Hit", "Retriever", "SearchHits"]

_logger = logging.getLogger(__name__)

RETRIEVER_FORMAT_VERSION = 1
_KIND = "retriever"
_MODALITIES = ("image", "text")


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        id: the item's int64 id.
        score: its score under the index's cross-length policy (larger = better).
        task: name of the task whose database stored it (:meth:`Retriever.learn`), or None (:meth:`Retriever.add`).
        metadata: what :meth:`Retriever.add` stored with it, or None.
    """

    id: int
    score: float
    task: str | None
    metadata: Any


@dataclass(frozen=True)
class SearchHits:
    """The results of one query, best first: ``ids`` and ``scores`` as arrays, ``tasks`` and ``metadata`` as lists.

    Iterating gives :class:`Hit` objects.
    """

    ids: np.ndarray
    scores: np.ndarray
    tasks: list[str | None]
    metadata: list[Any]

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Hit]:
        for i, s, t, m in zip(self.ids.tolist(), self.scores.tolist(), self.tasks, self.metadata, strict=True):
            yield Hit(int(i), float(s), t, m)

    def __getitem__(self, index: int) -> Hit:
        return Hit(int(self.ids[index]), float(self.scores[index]), self.tasks[index], self.metadata[index])


def _check_encoder(encoder: Any, name: str, method: str) -> Any:
    if encoder is not None and not callable(getattr(encoder, method, None)):
        raise TypeError(f"{name}: expected a pbeh.encoders encoder with {method}(), got {type(encoder).__name__}")
    return encoder


class Retriever:
    """Frozen encoder(s) + hashing model + indexes: from raw images and texts to search, saved as one folder.

    Build a new one with :meth:`create` (from encoders or feature widths), wrap a trained
    :class:`~pbeh.trainer.ContinualTrainer` with the constructor, or :meth:`load` a saved folder.

    Args:
        trainer: the trainer holding the model and the two indexes (its ``image_index`` and ``text_index`` are the
            retriever's).
        encoder: one encoder for both modalities (:class:`~pbeh.encoders.CLIPEncoder`).
        image_encoder, text_encoder: separate encoders (:class:`~pbeh.encoders.ImageEncoder`,
            :class:`~pbeh.encoders.TextEncoder`); they override ``encoder`` for their modality.
        normalize_embeddings: L2-normalise encoder outputs (use the same setting as for the features ``learn``
            trains on; :meth:`encode_images` / :meth:`encode_texts` apply it).
        batch_size: encoder batch size.
        show_progress_bar: progress bars while encoding.

    Example (features only, no encoder):
        >>> import pbeh
        >>> from pbeh.data import synthetic_stream
        >>> stream = synthetic_stream(n_tasks=2, seed=0)
        >>> retriever = Retriever.create(
        ...     image_dim=stream.image_dim, text_dim=stream.text_dim, n_bits=16, hidden_dims=(32,),
        ...     config=pbeh.TrainerConfig(epochs=2))
        >>> _ = retriever.learn(stream[0])
        >>> ids = retriever.add(text_features=stream[1].database.text[:3], ids=[9001, 9002, 9003],
        ...                     metadata=[{"caption": "first"}, {"caption": "second"}, {"caption": "third"}])
        >>> hits = retriever.search(image_features=stream[1].database.image[0], k=2)
        >>> len(hits), hits.ids.dtype
        (2, dtype('int64'))
    """

    def __init__(
        self,
        trainer: ContinualTrainer,
        *,
        encoder: Any = None,
        image_encoder: Any = None,
        text_encoder: Any = None,
        normalize_embeddings: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool = False,
    ) -> None:
        if not isinstance(trainer, ContinualTrainer):
            raise TypeError(f"trainer: expected a ContinualTrainer, got {type(trainer).__name__}")
        if not isinstance(normalize_embeddings, bool):
            raise TypeError(f"normalize_embeddings: expected a bool, got {normalize_embeddings!r}")
        if not isinstance(show_progress_bar, bool):
            raise TypeError(f"show_progress_bar: expected a bool, got {show_progress_bar!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        self.trainer = trainer
        self._encoders: dict[str, Any] = {
            "image": _check_encoder(
                image_encoder if image_encoder is not None else encoder, "image_encoder", "encode_images"
            ),
            "text": _check_encoder(
                text_encoder if text_encoder is not None else encoder, "text_encoder", "encode_texts"
            ),
        }
        for modality, enc in self._encoders.items():
            if enc is not None and int(enc.dim) != self.model.feature_dim(modality):
                raise ValueError(
                    f"{modality}_encoder: its {enc.dim}-d features do not fit the model's {modality} input "
                    f"({self.model.feature_dim(modality)}-d)"
                )
        self.normalize_embeddings = normalize_embeddings
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self._metadata: dict[int, Any] = {}
        self._task_of: dict[int, str] = {}
        for stored in getattr(trainer, "_stored", []):  # tasks the trainer stored before it was wrapped
            for item in np.asarray(stored.ids).tolist():
                self._task_of[int(item)] = stored.name

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        *,
        encoder: Any = None,
        image_encoder: Any = None,
        text_encoder: Any = None,
        image_dim: int | None = None,
        text_dim: int | None = None,
        normalize_embeddings: bool = False,
        batch_size: int = 32,
        **trainer_options: Any,
    ) -> Retriever:
        """A new, untrained retriever: feature widths from the encoders (or ``image_dim`` / ``text_dim``), and a
        model and trainer built by :meth:`ContinualTrainer.for_stream <pbeh.trainer.ContinualTrainer.for_stream>`
        with its defaults unless ``trainer_options`` (``n_bits``, ``hidden_dims``, ``config``, ...) say otherwise.
        Train it with :meth:`learn` before adding or searching."""
        image_enc = image_encoder if image_encoder is not None else encoder
        text_enc = text_encoder if text_encoder is not None else encoder
        dims = {}
        for modality, enc, given in (("image", image_enc, image_dim), ("text", text_enc, text_dim)):
            if given is not None:
                if isinstance(given, bool) or not isinstance(given, int) or given < 1:
                    raise ValueError(f"{modality}_dim: expected a positive int, got {given!r}")
                dims[modality] = given
            elif enc is not None:
                dims[modality] = int(enc.dim)
            else:
                raise ValueError(
                    f"{modality}_dim: give a {modality} encoder (encoder= or {modality}_encoder=) or the width of "
                    f"your {modality} features ({modality}_dim=)"
                )
        widths = SimpleNamespace(image_dim=dims["image"], text_dim=dims["text"])
        trainer = ContinualTrainer.for_stream(widths, **trainer_options)  # type: ignore[arg-type]
        return cls(
            trainer,
            encoder=encoder,
            image_encoder=image_encoder,
            text_encoder=text_encoder,
            normalize_embeddings=normalize_embeddings,
            batch_size=batch_size,
        )

    # ------------------------------------------------------------------ properties
    @property
    def model(self) -> Any:
        """The :class:`~pbeh.model.CrossModalHashModel`."""
        return self.trainer.model

    @property
    def image_index(self) -> Any:
        return self.trainer.image_index

    @property
    def text_index(self) -> Any:
        return self.trainer.text_index

    @property
    def n_bits(self) -> int:
        """The current code length (new items are stored at it; stored codes keep theirs)."""
        return int(self.model.n_bits)

    def encoder(self, modality: str) -> Any:
        """The encoder of ``modality`` (``"image"`` or ``"text"``), or None."""
        if modality not in _MODALITIES:
            raise ValueError(f"modality: expected 'image' or 'text', got {modality!r}")
        return self._encoders[modality]

    def __len__(self) -> int:
        """Distinct stored ids over both indexes."""
        ids = np.union1d(self.image_index.get_ids(), self.text_index.get_ids())
        return len(ids)

    def __repr__(self) -> str:
        names = {m: getattr(e, "name", None) for m, e in self._encoders.items()}
        return (
            f"Retriever(n_bits={self.n_bits}, tasks={self.trainer.n_tasks_done}, images={len(self.image_index)}, "
            f"texts={len(self.text_index)}, encoders={names})"
        )

    # ------------------------------------------------------------------ encoding
    def _need(self, modality: str, argument: str) -> Any:
        enc = self._encoders[modality]
        if enc is None:
            raise ValueError(
                f"{argument}: this Retriever has no {modality} encoder; pass {modality}_features= (precomputed "
                f"features), or build it with encoder= / {modality}_encoder="
            )
        return enc

    def encode_images(self, images: Any) -> np.ndarray:
        """Features of images (PIL images, paths, or pixel arrays) with this retriever's encoder and settings."""
        return self._need("image", "images").encode_images(
            images,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            normalize=self.normalize_embeddings,
        )

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Features of texts with this retriever's encoder and settings."""
        return self._need("text", "texts").encode_texts(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            normalize=self.normalize_embeddings,
        )

    def _features(self, modality: str, raw: Any, features: Any, raw_name: str) -> np.ndarray | None:
        if raw is not None and features is not None:
            raise ValueError(f"{raw_name}, {modality}_features: give one of them, not both")
        if raw is not None:
            return self.encode_images(raw) if modality == "image" else self.encode_texts(raw)
        if features is None:
            return None
        if hasattr(features, "detach"):
            features = features.detach().cpu().numpy()
        arr = np.asarray(features, dtype=np.float32)
        if arr.ndim == 1:
            arr = arr[None, :]
        width = self.model.feature_dim(modality)
        if arr.ndim != 2 or arr.shape[1] != width:
            raise ValueError(f"{modality}_features: expected shape (n, {width}), got {np.shape(features)}")
        return arr

    # ------------------------------------------------------------------ learning
    def learn(self, tasks: Task | Iterable[Task]) -> list[TaskReport]:
        """Train on the next task (or tasks, in order) of the stream and store each task's database.

        Continues the same continual run: the trainer keeps its prompt pools, codes and extension policy, and a
        task's items keep the codes they were stored with. Features of the task must come from the same encoder
        and settings as the retriever's (see :meth:`encode_images` / :meth:`encode_texts`).
        """
        task_list = [tasks] if isinstance(tasks, Task) else list(tasks)
        if not task_list:
            raise ValueError("tasks: expected a Task or a non-empty sequence of tasks, got none")
        for i, task in enumerate(task_list):
            if not isinstance(task, Task):
                raise TypeError(f"tasks[{i}]: expected a pbeh.data.Task, got {type(task).__name__}")
        reports = []
        for task in task_list:
            ids = np.asarray(task.database.ids).tolist()
            taken = [int(i) for i in ids if int(i) in self.image_index or int(i) in self.text_index]
            if taken:
                raise ValueError(
                    f"tasks: task {task.name!r} has database ids {taken[:5]} that are already stored; ids must be new"
                )
            reports.append(self.trainer.fit_task(task))
            for item in np.asarray(task.database.ids).tolist():
                self._task_of[int(item)] = task.name
        return reports

    # ------------------------------------------------------------------ storing
    def add(
        self,
        *,
        images: Any = None,
        texts: Sequence[str] | None = None,
        image_features: Any = None,
        text_features: Any = None,
        ids: Any = None,
        metadata: Sequence[Any] | None = None,
    ) -> np.ndarray:
        """Encode and store items; returns their int64 ids.

        Give images (or ``image_features``), texts (or ``text_features``), or both: both must then have the same
        length and row ``i`` of each is the same item (one id, stored in both indexes). Codes are stored at the
        current length and never re-encoded.

        Args:
            images, texts: raw items for the encoders.
            image_features, text_features: precomputed ``(n, d)`` features instead.
            ids: ``n`` unique int64 ids not stored yet (default: the next free ids).
            metadata: ``n`` JSON-serialisable values (dicts, strings, ...) returned with the hits.

        Raises:
            ValueError: nothing given, lengths disagree, ids repeat or are already stored, metadata not JSON.
        """
        feats = {
            "image": self._features("image", images, image_features, "images"),
            "text": self._features("text", texts, text_features, "texts"),
        }
        given = {m: f for m, f in feats.items() if f is not None}
        if not given:
            raise ValueError("add: expected images, texts, image_features or text_features; got none")
        counts = {m: len(f) for m, f in given.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"add: images and texts are pairs and must have the same length, got {counts}")
        n = next(iter(counts.values()))
        if ids is None:
            start = max(self.image_index.next_id, self.text_index.next_id)
            id_arr = np.arange(start, start + n, dtype=np.int64)
        else:
            id_arr = np.asarray(ids)
            if id_arr.ndim != 1 or len(id_arr) != n or not np.issubdtype(id_arr.dtype, np.integer):
                raise ValueError(
                    f"ids: expected {n} integer ids (one per item), got shape {id_arr.shape}, dtype {id_arr.dtype}"
                )
            id_arr = id_arr.astype(np.int64)
            if len(np.unique(id_arr)) != n:
                raise ValueError("ids: expected unique ids, got repeats")
        taken = [int(i) for i in id_arr.tolist() if int(i) in self.image_index or int(i) in self.text_index]
        if taken:
            raise ValueError(f"ids: {taken[:5]} are already stored; ids must be new")
        if metadata is not None:
            metadata = list(metadata)
            if len(metadata) != n:
                raise ValueError(f"metadata: expected {n} entries (one per item), got {len(metadata)}")
            for i, entry in enumerate(metadata):
                try:
                    json.dumps(entry)
                except (TypeError, ValueError) as exc:
                    raise ValueError(
                        f"metadata[{i}]: expected a JSON-serialisable value, got {entry!r} ({exc})"
                    ) from exc
        if self.model.n_tasks == 0:
            raise RuntimeError("add: the model is untrained (no task learned yet); call learn(task) first")
        self.model.eval()
        codes = {m: self.model.encode(f, m) for m, f in given.items()}
        for modality, c in codes.items():
            (self.image_index if modality == "image" else self.text_index).add(c, ids=id_arr)
        if metadata is not None:
            for item, entry in zip(id_arr.tolist(), metadata, strict=True):
                self._metadata[int(item)] = entry
        return id_arr

    def metadata(self, item_id: int) -> Any:
        """The metadata stored with ``item_id`` (None when none was given)."""
        return self._metadata.get(int(item_id))

    # ------------------------------------------------------------------ searching
    def search(
        self,
        *,
        text: str | Sequence[str] | None = None,
        image: Any = None,
        text_features: Any = None,
        image_features: Any = None,
        k: int = 10,
        target: str | None = None,
    ) -> SearchHits | list[SearchHits]:
        """The ``k`` best stored items for a query, best first.

        Give exactly one of ``text`` (a string, or a list of strings), ``image`` (one image or a list), or
        ``text_features`` / ``image_features`` (one ``(d,)`` vector or ``(n, d)`` rows). One query gives one
        :class:`SearchHits`; a list (or 2-D features) gives a list of them.

        Args:
            k: results per query.
            target: the index searched: ``"image"`` or ``"text"``; default the other modality (a text finds images,
                an image finds texts).
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive int, got {k!r}")
        queries = {"text": text, "image": image, "text_features": text_features, "image_features": image_features}
        given = [name for name, value in queries.items() if value is not None]
        if len(given) != 1:
            raise ValueError(f"search: expected exactly one of text, image, text_features, image_features; got {given}")
        (name,) = given
        modality = "text" if name.startswith("text") else "image"
        value = queries[name]
        if name == "text":
            single = isinstance(value, str)
            feats = self.encode_texts([value] if single else list(value))
        elif name == "image":
            ndim = getattr(value, "ndim", None)
            single = not isinstance(value, (list, tuple)) and ndim != 4
            if ndim == 3:  # one preprocessed (channels, height, width) image
                value = value[None]
            feats = self.encode_images([value] if single and ndim is None else value)
        else:
            single = np.ndim(value) == 1
            checked = self._features(modality, None, value, name)
            assert checked is not None  # value is not None here
            feats = checked
        if target is None:
            target = "image" if modality == "text" else "text"
        elif target not in _MODALITIES:
            raise ValueError(f"target: expected 'image', 'text' or None (the other modality), got {target!r}")
        index = self.image_index if target == "image" else self.text_index
        if self.model.n_tasks == 0:
            raise RuntimeError("search: the model is untrained (no task learned yet); call learn(task) first")
        self.model.eval()
        codes: Codes = self.model.encode(feats, modality, role="query")
        result = index.search(codes, k)
        out = []
        for q in range(len(codes)):
            keep = result.ids[q] != -1
            ids = result.ids[q][keep].astype(np.int64)
            out.append(
                SearchHits(
                    ids=ids,
                    scores=np.asarray(result.scores[q][keep]),
                    tasks=[self._task_of.get(int(i)) for i in ids.tolist()],
                    metadata=[self._metadata.get(int(i)) for i in ids.tolist()],
                )
            )
        return out[0] if single else out

    # ------------------------------------------------------------------ files
    def save(self, directory: str | os.PathLike[str], *, include_encoders: bool = True) -> None:
        """Write the retriever as one folder, replacing ``directory`` atomically (a crash leaves the previous one).

        Args:
            include_encoders: also write the encoders (their ``save_pretrained`` folders) so :meth:`load` needs no
                network and no arguments; ``False`` records only their names, and :meth:`load` then needs them.
        """
        target = Path(directory)
        staged = staging_directory(target)
        encoders: dict[str, Any] = {}
        shared = self._encoders["image"] is not None and self._encoders["image"] is self._encoders["text"]
        for modality, enc in self._encoders.items():
            if enc is None:
                encoders[modality] = None
                continue
            folder = "encoder" if shared else f"{modality}_encoder"
            entry = {
                "class": type(enc).__name__,
                "name": enc.name,
                "dim": int(enc.dim),
                "folder": folder if include_encoders else None,
            }
            for option in ("pooling", "max_length"):
                if hasattr(enc, option):
                    entry[option] = getattr(enc, option)
            encoders[modality] = entry
            if include_encoders and not (staged / folder).exists():
                _save_encoder(enc, staged / folder)
        self.trainer.save(staged / "trainer")
        write_json(
            staged / "items.json",
            {
                "metadata": {str(i): m for i, m in sorted(self._metadata.items())},
                "task_of": {str(i): t for i, t in sorted(self._task_of.items())},
            },
        )
        write_json(
            staged / "retriever.json",
            {
                "pbeh_kind": _KIND,
                "format_version": RETRIEVER_FORMAT_VERSION,
                "pbeh_version": __version__,
                "encoders": encoders,
                "normalize_embeddings": self.normalize_embeddings,
                "batch_size": self.batch_size,
                "n_bits": self.n_bits,
                "tasks_learned": self.trainer.n_tasks_done,
                "n_images": len(self.image_index),
                "n_texts": len(self.text_index),
            },
        )
        replace_directory(staged, target)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        encoder: Any = None,
        image_encoder: Any = None,
        text_encoder: Any = None,
        device: Any = None,
    ) -> Retriever:
        """Read a folder written by :meth:`save`. Encoders saved in it load from it (offline); pass encoders to
        use others (their widths must fit), or when the folder was saved without them.

        Raises:
            FormatError: not a retriever folder, another format version, or damaged files.
            ValueError: an encoder the folder does not hold was not passed.
        """
        root = resolve_directory(Path(directory))
        if not (root / "retriever.json").is_file():
            raise FormatError(f"directory: {str(directory)!r} holds no saved Retriever (no retriever.json)")
        meta = read_json(root / "retriever.json", what="retriever description", expect=dict)
        if meta.get("pbeh_kind") != _KIND:
            raise FormatError(
                f"{str(root)!r}: retriever.json describes a pbeh {meta.get('pbeh_kind')!r}, not a retriever"
            )
        if meta.get("format_version") != RETRIEVER_FORMAT_VERSION:
            raise FormatError(
                f"{str(root)!r}: retriever format_version {meta.get('format_version')!r}; this pbeh {__version__} "
                f"reads {RETRIEVER_FORMAT_VERSION}"
            )
        trainer = ContinualTrainer.load(root / "trainer")
        given = {
            "image": image_encoder if image_encoder is not None else encoder,
            "text": text_encoder if text_encoder is not None else encoder,
        }
        loaded: dict[str, Any] = {}
        described = meta.get("encoders") or {}
        for modality in _MODALITIES:
            entry = described.get(modality)
            if given[modality] is not None or entry is None:
                loaded[modality] = given[modality]
                continue
            if not entry.get("folder"):
                raise ValueError(
                    f"{modality}_encoder: {str(root)!r} was saved without its {modality} encoder "
                    f"({entry.get('class')} {entry.get('name')!r}); pass it: Retriever.load(..., "
                    f"{modality}_encoder=...)"
                )
            folder = entry["folder"]
            reuse = [
                enc
                for m, enc in loaded.items()
                if enc is not None
                and described.get(m, {})
                and described[m].get("folder") == folder
                and given[m] is None
            ]
            loaded[modality] = reuse[0] if reuse else _load_encoder(entry, root / folder, device)
        try:
            retriever = cls(
                trainer,
                image_encoder=loaded["image"],
                text_encoder=loaded["text"],
                normalize_embeddings=bool(meta.get("normalize_embeddings", False)),
                batch_size=int(meta.get("batch_size", 32)),
            )
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{str(root)!r}: {exc}") from exc
        items = read_json(root / "items.json", what="retriever items", expect=dict)
        retriever._metadata = {int(i): m for i, m in (items.get("metadata") or {}).items()}
        retriever._task_of = {int(i): str(t) for i, t in (items.get("task_of") or {}).items()}
        return retriever


def _save_encoder(enc: Any, folder: Path) -> None:
    """The encoder's own files: the transformers model, tokenizer and image processor it uses."""
    folder.mkdir(parents=True, exist_ok=True)
    enc.model.save_pretrained(folder)
    for part in ("tokenizer", "image_processor"):
        component = getattr(enc, part, None)
        if component is not None:
            component.save_pretrained(folder)


def _load_encoder(entry: dict[str, Any], folder: Path, device: Any) -> Any:
    from . import encoders

    name = entry.get("class")
    if name not in ("CLIPEncoder", "TextEncoder", "ImageEncoder"):
        raise FormatError(f"{str(folder)!r}: unknown encoder class {name!r}; pass the encoder to Retriever.load")
    if not folder.is_dir():
        raise FormatError(f"{str(folder)!r}: the encoder folder named in retriever.json is missing")
    cls = getattr(encoders, name)
    kwargs: dict[str, Any] = {"local_files_only": True, "device": device, "name": entry.get("name")}
    if name != "CLIPEncoder" and entry.get("pooling"):
        kwargs["pooling"] = entry["pooling"]
    if name == "TextEncoder" and entry.get("max_length"):
        kwargs["max_length"] = entry["max_length"]
    encoder = cls.from_pretrained(folder, **kwargs)
    if name == "CLIPEncoder" and entry.get("max_length"):
        encoder.max_length = int(entry["max_length"])
    return encoder
