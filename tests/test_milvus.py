"""The Milvus backend against the flat index: equal results on Milvus Lite (skipped without pbeh[milvus])."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from test_index import random_codes, tie_heavy_codes

from pbeh.index import SCORE_POLICIES, TruncatedHammingIndex

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pymilvus") is None or importlib.util.find_spec("milvus_lite") is None,
    reason="needs pymilvus and milvus-lite (pip install 'pbeh[milvus]')",
)


def same_results(a, b) -> None:
    for field in ("ids", "distances", "scores", "n_bits_compared"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)


def fill_both(indexes, rng) -> None:
    batches = [
        (tie_heavy_codes(rng, 120, 12), rng.permutation(5000)[:120]),
        (random_codes(rng, 150, 64), np.arange(50_000, 50_150)),
        (tie_heavy_codes(rng, 90, 64), None),
        (random_codes(rng, 80, 32), rng.permutation(5000)[:80] + 10_000),
        (tie_heavy_codes(rng, 60, 64), rng.permutation(5000)[:60] + 40_000),  # below stored ids, stored after them
    ]
    for codes, ids in batches:
        for index in indexes:
            index.add(codes, ids)


def test_milvus_lite_results_equal_the_flat_index(tmp_path: Path):
    from pbeh.index import MilvusBackend

    rng = np.random.default_rng(0)
    backend = MilvusBackend(str(tmp_path / "codes.db"), collection_prefix="t", batch_size=64)
    milvus, flat = TruncatedHammingIndex(backend=backend), TruncatedHammingIndex()
    fill_both((milvus, flat), rng)
    assert milvus.segments == flat.segments
    np.testing.assert_array_equal(milvus.get_ids(), flat.get_ids())
    queries = {q_bits: tie_heavy_codes(rng, 4, q_bits) for q_bits in (64, 40, 12, 70)}
    for q_bits, query in queries.items():
        for score in ("zscore", "hamming") if q_bits != 64 else SCORE_POLICIES:
            for k in (1, 7, 300):
                same_results(milvus.search(query, k, score=score), flat.search(query, k, score=score))
    # changes after the truncated copies exist keep them in sync
    extra = tie_heavy_codes(rng, 40, 64)
    for index in (milvus, flat):
        index.add(extra)
        index.remove(index.get_ids()[::4])
    for query in queries.values():
        same_results(milvus.search(query, 25), flat.search(query, 25))
        last = flat.search(query, 25).scores[:, -1]  # reading every stored code back from Milvus: the same counts
        np.testing.assert_array_equal(milvus.count_at_least(query, last), flat.count_at_least(query, last))
    some = flat.get_ids(n_bits=64)[:9]
    assert milvus.get_codes(some) == flat.get_codes(some)
    # the file is the same, and it loads into Milvus
    milvus.save(tmp_path / "m.safetensors")
    flat.save(tmp_path / "f.safetensors")
    assert (tmp_path / "m.safetensors").read_bytes() == (tmp_path / "f.safetensors").read_bytes()
    loaded = TruncatedHammingIndex.load(
        tmp_path / "f.safetensors", backend=MilvusBackend(str(tmp_path / "codes.db"), collection_prefix="u")
    )
    same_results(loaded.search(queries[64], 30), flat.search(queries[64], 30))
    # a new index on the same collections sees the stored codes
    reopened = TruncatedHammingIndex(backend=MilvusBackend(str(tmp_path / "codes.db"), collection_prefix="t"))
    assert reopened.segments == flat.segments
    assert reopened.next_id == int(flat.get_ids().max()) + 1
    same_results(reopened.search(queries[40], 30), flat.search(queries[40], 30))
    # emptying a segment drops its collections
    milvus.remove(milvus.get_ids(n_bits=12))
    assert not any(name.startswith("t_12") for name in backend.client.list_collections())
    backend.close()


def test_milvus_backend_validates_its_arguments():
    from pbeh.index import MilvusBackend

    with pytest.raises(ValueError, match="collection_prefix"):
        MilvusBackend("x.db", collection_prefix="1-bad")
    with pytest.raises(ValueError, match="batch_size"):
        MilvusBackend("x.db", batch_size=100_000)
    with pytest.raises(ValueError, match="uri"):
        MilvusBackend("")
