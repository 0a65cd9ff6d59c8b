"""Bringing your own data: an .npz of features with two label sets, MATLAB-style 1-based class ids, a stream.

Run:  OMP_NUM_THREADS=1 python examples/07_your_own_data.py

Writes a small .npz (features you would have computed with an encoder), reads it with the label set you choose,
and splits it into tasks. 1-based class ids (as MATLAB writes them) are refused unless you say how to read them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pbeh.data import class_incremental_split, load_protocol, read_features_npz

rng = np.random.default_rng(0)
n = 120
fine = np.arange(n) % 6  # six fine classes ...
coarse = fine // 3  # ... in two coarse groups

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "my_features.npz"
    np.savez(
        path,
        image=rng.standard_normal((n, 48)).astype(np.float32),
        text=rng.standard_normal((n, 24)).astype(np.float32),
        fine=fine,
        coarse=coarse,
        coarse_names=np.array(["animals", "vehicles"]),
    )
    data = read_features_npz(path, label_key="coarse")  # choose the label set
    print("coarse:", data.labels.shape, data.label_names)
    stream = load_protocol("npz", path, label_key="fine", n_tasks=3, query_size=4)  # the same from a protocol
    print(stream.describe())

# 1-based class ids: refused with the fix in the message, then converted on request.
labels_1_based = fine + 1
try:
    class_incremental_split(data.image, data.text, labels_1_based, n_tasks=3)
except ValueError as error:
    print("refused:", str(error)[:90], "...")
stream = class_incremental_split(data.image, data.text, labels_1_based, n_tasks=3, index_base=1, query_size=4)
print("tasks:", [task.classes for task in stream])
