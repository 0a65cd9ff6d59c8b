"""Continual cross-modal data: splits, tasks, task streams, class-incremental splitters and file readers.

Everything downstream of the encoders sees features only: an item is a pair of an image feature vector and a text
feature vector with a multi-hot label row over the *global* label space. This module turns such arrays into a stream
of class-incremental tasks and reads the standard file layouts of the cross-modal hashing literature.

* :class:`Split`: aligned ``image`` / ``text`` / ``labels`` / ``ids`` arrays (one train, query or database set).
* :class:`Task`: ``train``, ``query`` and ``database`` splits plus the global classes the task introduces.
* :class:`TaskStream`: the ordered tasks with the label names and feature widths.
* :func:`class_incremental_split`: classes into groups, each item to the **latest** task any of its labels belongs
  to, a seeded query split per task (or a precomputed one).
* Protocols: :func:`wikipedia5`, :func:`mirflickr730_4`, :func:`synthetic_stream`, and :func:`load_protocol`.
* Readers (:class:`CrossModalData` or a :class:`TaskStream`): :func:`read_taskwise_mat` (the PBEH/CASH per-task
  HDF5 ``.mat`` files), :func:`read_all_mat` (``XAll``/``YAll``/``LAll``), :func:`read_train_test_mat`
  (``I_tr``/``T_tr``/``L_tr`` + ``I_te``/``T_te``/``L_te``) and :func:`read_features_npz`.

MATLAB files of version 5 are read with :mod:`scipy.io`, version 7.3 (HDF5) files with :mod:`h5py`; both are optional
dependencies (``pip install pbeh[data]``) imported only inside the readers. HDF5 stores MATLAB's column-major arrays
transposed: an ``N x D`` MATLAB matrix reads as ``D x N`` through h5py, and the readers swap it back to ``N x D``.
Only numpy is needed otherwise.

Modules (private; everything public is imported from here):

* ``_split``: :class:`Split`, :class:`Task`, :class:`TaskStream`; ``_arrays``: the array checks they share.
* ``_incremental``: :func:`class_incremental_split`.
* ``_crossmodal``: :class:`CrossModalData`, what the file readers return.
* ``_matfile`` (low-level ``.mat`` access), ``_mat`` (:func:`read_train_test_mat`, :func:`read_all_mat`),
  ``_taskwise`` (:func:`read_taskwise_mat`), ``_features_npz`` (:func:`read_features_npz`).
* ``_protocols``: :func:`wikipedia5`, :func:`mirflickr730_4`, :func:`synthetic_stream`, :func:`load_protocol`.
"""

from __future__ import annotations

from ._crossmodal import CrossModalData
from ._crossmodal import PathLike as PathLike
from ._features_npz import read_features_npz
from ._incremental import class_incremental_split
from ._mat import read_all_mat, read_train_test_mat
from ._protocols import (
    MIRFLICKR730_4_GROUPS,
    PROTOCOLS,
    WIKIPEDIA5_GROUPS,
    load_protocol,
    mirflickr730_4,
    synthetic_stream,
    wikipedia5,
)
from ._split import Split, Task, TaskStream
from ._taskwise import read_taskwise_mat

# In reading order (the API page lists the names in this order): the structures, the splitter, the readers, the
# protocols.
__all__ = [  # noqa: RUF022
    "Split",
    "Task",
    "TaskStream",
    "class_incremental_split",
    "CrossModalData",
    "read_train_test_mat",
    "read_all_mat",
    "read_features_npz",
    "read_taskwise_mat",
    "PROTOCOLS",
    "WIKIPEDIA5_GROUPS",
    "MIRFLICKR730_4_GROUPS",
    "wikipedia5",
    "mirflickr730_4",
    "synthetic_stream",
    "load_protocol",
]
