"""The PBEH / PIC-CMH / CASH per-task HDF5 ``.mat`` layout (one file per task, split and kind) read into a
:class:`TaskStream` by :func:`read_taskwise_mat`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._validation import check_int
from ..serialization import FormatError
from ._crossmodal import PathLike, _file_contents_checked
from ._matfile import _MatFile, _orient
from ._split import Split, Task, TaskStream

_TASKWISE_PATTERNS = {
    "mscoco": re.compile(r"^(train|test|database)_(\d+)_(image|text|label)\.mat$"),
    "nuswide": re.compile(r"^(train|test|database)_task_(\d+)_(image|text|label)\.mat$"),
}


def _taskwise_key(mat: _MatFile, stem: str, kind: str, scheme: str) -> str:
    """The array key of one task-wise file: the reference key, else an equivalent one, else the only dataset."""
    candidates = [stem]
    if kind == "label":
        base = stem[: -len("_label")]
        candidates = [f"{base}_lab", f"{base}_label"] if scheme == "mscoco" else [f"{base}_label", f"{base}_lab"]
    for key in candidates:
        if key in mat.keys:
            return key
    if kind == "label":
        ending = [k for k in mat.keys if k.endswith(("_lab", "_label", "_labels"))]
        if len(ending) == 1:
            return ending[0]
    if len(mat.keys) == 1:
        return mat.keys[0]
    raise FormatError(
        f"{mat.path}: missing key {candidates[0]!r}; keys present: {', '.join(map(repr, mat.keys)) or 'none'}"
    )


@_file_contents_checked
def read_taskwise_mat(
    directory: PathLike,
    *,
    n_tasks: int | None = None,
    scheme: str = "auto",
    label_names: Sequence[str] | None = None,
    name: str = "",
) -> TaskStream:
    """Read the PBEH / PIC-CMH / CASH per-task HDF5 ``.mat`` layout into a :class:`TaskStream`.

    One file per task, split and kind, each holding one array stored transposed (read as ``D x N``, swapped to
    ``N x D``). Splits are ``train``, ``test`` (the queries) and ``database``; kinds ``image``, ``text``, ``label``.

    * ``scheme="mscoco"``: ``train_{t}_image.mat`` with key ``train_{t}_image``; labels in
      ``train_{t}_label.mat`` under ``train_{t}_lab``.
    * ``scheme="nuswide"``: ``train_task_{t}_image.mat`` with key ``train_task_{t}_image``; label key
      ``train_task_{t}_label``.
    * ``scheme="auto"``: whichever naming the directory uses.

    Keys are matched liberally (the other label ending, or the single dataset of the file). Task numbers are
    taken in ascending order (the reference counts from 0); ``n_tasks`` keeps the first ones. Item ids are positions
    in reading order (per task: train, test, database), so an item present in two files gets two ids. A task's
    ``classes`` are the classes present in its training labels and in no earlier task's training labels.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such directory")
    names = sorted(p.name for p in root.iterdir())
    if scheme == "auto":
        matching = [s for s, pattern in _TASKWISE_PATTERNS.items() if any(pattern.match(n) for n in names)]
        if not matching:
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise FormatError(
                f"{root}: no task-wise .mat files (expected e.g. train_0_image.mat or train_task_0_image.mat); "
                f"found: {shown or 'nothing'}"
            )
        if len(matching) > 1:
            raise FormatError(f"{root}: files of both naming schemes found; pass scheme='mscoco' or 'nuswide'")
        scheme = matching[0]
    elif scheme not in _TASKWISE_PATTERNS:
        raise ValueError(f"scheme: expected 'auto', 'mscoco' or 'nuswide', got {scheme!r}")
    pattern = _TASKWISE_PATTERNS[scheme]
    task_numbers = sorted({int(m.group(2)) for n in names if (m := pattern.match(n))})
    if not task_numbers:
        raise FormatError(f"{root}: no files of the {scheme!r} naming scheme")
    if n_tasks is not None:
        n_tasks = check_int(n_tasks, "n_tasks", minimum=1)
        if n_tasks > len(task_numbers):
            raise ValueError(
                f"n_tasks: expected at most {len(task_numbers)} (tasks found: {task_numbers}), got {n_tasks}"
            )
        task_numbers = task_numbers[:n_tasks]
    infix = "" if scheme == "mscoco" else "task_"

    next_id = 0
    seen_classes: set[int] = set()
    tasks = []
    for position, t in enumerate(task_numbers):
        splits = {}
        for split in ("train", "test", "database"):
            arrays = {}
            for kind in ("image", "text", "label"):
                stem = f"{split}_{infix}{t}_{kind}"
                file = root / f"{stem}.mat"
                if not file.is_file():
                    raise FileNotFoundError(f"{file}: missing task-wise file ({scheme} scheme, task {t})")
                mat = _MatFile(file)
                arrays[kind] = mat.read(_taskwise_key(mat, stem, kind, scheme))
            arrays = _orient(arrays, f"{root} task {t} {split}")
            n = len(arrays["image"])
            try:
                splits[split] = Split(arrays["image"], arrays["text"], arrays["label"], np.arange(next_id, next_id + n))
            except (ValueError, TypeError) as exc:
                raise FormatError(f"{root}: task {t} {split}: {exc}") from exc
            next_id += n
        present = np.flatnonzero(splits["train"].labels.any(axis=0)).tolist()
        new = tuple(c for c in present if c not in seen_classes)
        seen_classes.update(new)
        tasks.append(
            Task(
                f"T{position + 1}",
                train=splits["train"],
                query=splits["test"],
                database=splits["database"],
                classes=new,
            )
        )
    return TaskStream(tasks, label_names=label_names, name=name or root.name)
