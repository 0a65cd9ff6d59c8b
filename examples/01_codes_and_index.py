"""Your own binary codes -> pbeh.Codes -> TruncatedHammingIndex -> search -> mAP. No torch training, no data.

Run:  OMP_NUM_THREADS=1 python examples/01_codes_and_index.py

The codes are synthetic: each of 10 classes has a random 64-bit centre, and an item's code is its class centre
with 20 % of the bits flipped. An "old" batch is stored at 32 bits (the first 32 bits of the centre) and a
"new" batch at 64 bits, as a continual hashing model that widened its code would leave them. Queries
have 64 bits.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pbeh import Codes, TruncatedHammingIndex, map_at_k, precision_at_k

rng = np.random.default_rng(0)
N_CLASSES = 10
centres = rng.random((N_CLASSES, 64)) < 0.5


def make_codes(n: int, n_bits: int, flip: float = 0.2) -> tuple[Codes, np.ndarray]:
    """``n`` noisy copies of class centres, truncated to ``n_bits``; returns the codes and the class ids."""
    labels = rng.integers(0, N_CLASSES, n)
    bits = centres[labels, :n_bits] ^ (rng.random((n, n_bits)) < flip)
    return Codes.from_bool(bits), labels


# 1. Codes: packed uint8, numpy big bit order, padding bits zero. Build them from booleans, from real values
#    by their sign (value >= 0 -> bit 1), or wrap bytes you already have: Codes.from_packed(packed, n_bits).
old_codes, old_labels = make_codes(400, 32)
new_codes, new_labels = make_codes(400, 64)
queries, query_labels = make_codes(50, 64)
print(old_codes, new_codes, queries)
print("first old code, packed bytes:", old_codes.packed[0].tolist())
assert Codes.from_packed(old_codes.packed, 32) == old_codes
assert Codes.from_signs(new_codes.to_signs()) == new_codes

# 2. The index: one segment per code length, explicit int64 ids (default: 0, 1, 2, ...).
index = TruncatedHammingIndex()  # score="zscore", threads=1
old_ids = index.add(old_codes)
new_ids = index.add(new_codes, ids=np.arange(1000, 1000 + len(new_codes)))
print(index)
labels_by_id = {int(i): int(c) for i, c in zip(old_ids, old_labels, strict=True)}
labels_by_id |= {int(i): int(c) for i, c in zip(new_ids, new_labels, strict=True)}

# 3. Search: a 64-bit query meets a 32-bit stored code on their first 32 bits. Results are best first (score
#    descending, ties by ascending id); missing results are filled with id -1.
result = index.search(queries, k=5)
print("query 0 ids:            ", result.ids[0].tolist())
print("query 0 distances:      ", result.distances[0].tolist())
print("query 0 bits compared:  ", result.n_bits_compared[0].tolist())
print("query 0 scores (zscore):", np.round(result.scores[0], 3).tolist())

# 4. Cross-length score policies: how distances over 32 and over 64 compared bits are ranked together.
k = 20
for score in ("hamming", "normalized", "zscore", "llr"):
    ids = index.search(queries, k=k, score=score).ids
    hits = np.array([[labels_by_id[int(i)] == query_labels[q] for i in row] for q, row in enumerate(ids)])
    share_32 = np.isin(ids, old_ids).mean()
    print(f"score={score:<10}  P@{k} = {hits.mean():.3f}   share stored at 32 bits = {share_32:.2f}")

# 5. Save, describe without loading, load. The file is safetensors (no pickle); two saves give equal bytes.
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "index.safetensors"
    index.save(path)
    print("metadata:", TruncatedHammingIndex.metadata(path))
    loaded = TruncatedHammingIndex.load(path)
    same = loaded.search(queries, k=k)
    assert np.array_equal(same.ids, index.search(queries, k=k).ids)
    loaded.save(Path(tmp) / "again.safetensors")
    assert path.read_bytes() == (Path(tmp) / "again.safetensors").read_bytes()

# 6. Metrics on one database (numpy only). Labels are 1-D class ids here; multi-hot (n, n_classes) arrays work
#    too (relevant = at least one shared class). Codes of different lengths meet on their common prefix.
print("mAP@100 vs 64-bit db:", round(map_at_k(queries, new_codes, query_labels, new_labels, k=100), 4))
print("mAP@100 vs 32-bit db:", round(map_at_k(queries, old_codes, query_labels, old_labels, k=100), 4))
print(
    "mAP@100 vs 32-bit db, ties averaged:",
    round(map_at_k(queries, old_codes, query_labels, old_labels, k=100, ties="average"), 4),
)
print("mAP@all vs 64-bit db:", round(map_at_k(queries, new_codes, query_labels, new_labels), 4))
print("P@10 vs 64-bit db:   ", round(precision_at_k(queries, new_codes, query_labels, new_labels, k=10), 4))

# Brute force check of the index against Codes.hamming (exact numpy reference) on the 64-bit segment alone.
only_new = TruncatedHammingIndex(score="hamming")
only_new.add(new_codes)
d = queries.hamming(new_codes)
order = np.lexsort((np.broadcast_to(np.arange(len(new_codes)), d.shape), d), axis=1)[:, :5]
assert np.array_equal(only_new.search(queries, k=5).ids, order)
print("index == brute force: ok")
