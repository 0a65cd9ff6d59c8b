"""Tests of pbeh.index.TruncatedHammingIndex and the faiss wrappers of pbeh._faiss.

Every search is checked against an independent brute-force reference: distances from Codes.hamming (numpy) and exact
ranking keys (fractions), sorted by (score descending, id ascending).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pbeh import _faiss
from pbeh.codes import Codes
from pbeh.index import SCORE_POLICIES, SearchResult, TruncatedHammingIndex, score_distances
from pbeh.serialization import FormatError, checksum_available, save_safetensors

P = 0.2  # flip probability used by the llr reference


# ---------------------------------------------------------------------------------------------------- reference
def exact_key(d: int, n: int, score: str, p: float = P) -> Fraction | float:
    """Ranking key (larger = better), exact where the policy allows it."""
    if score == "hamming":
        return Fraction(-d)
    if score == "normalized":
        return Fraction(n - d, n)
    if score == "zscore":  # sign(m) m^2 / L orders like m / sqrt(L), exactly
        m = n - 2 * d
        return Fraction(m * abs(m), n)
    if score == "llr":
        return (n - d) * math.log(2 * (1 - p)) + d * math.log(2 * p)
    raise AssertionError(score)


def reference_score(d: int, n: int, score: str, p: float = P) -> float:
    """The documented formulas, written independently of the implementation."""
    return {
        "hamming": -d,
        "normalized": 1 - d / n,
        "zscore": (n / 2 - d) / (math.sqrt(n) / 2),
        "llr": (n - d) * math.log(2 * (1 - p)) + d * math.log(2 * p),
    }[score]


def brute_force(batches: list[tuple[Codes, np.ndarray]], query: Codes, k: int, score: str, p: float = P):
    """Top-k per query as lists of (id, distance, n_bits_compared), by (key desc, id asc)."""
    rows: list[list[tuple[int, int, int, float]]] = [[] for _ in range(len(query))]
    for codes, ids in batches:
        if len(codes) == 0:
            continue
        dist = query.hamming(codes)
        n = min(query.n_bits, codes.n_bits)
        for i in range(len(query)):
            for j, id_ in enumerate(ids.tolist()):
                rows[i].append((id_, int(dist[i, j]), n, exact_key(int(dist[i, j]), n, score, p)))
    return [[(r[0], r[1], r[2]) for r in sorted(row, key=lambda r: (-r[3], r[0]))[:k]] for row in rows]


def check_against_reference(result: SearchResult, expected, k: int, score: str, p: float = P) -> None:
    for i, exp in enumerate(expected):
        m = len(exp)
        assert result.ids[i, :m].tolist() == [e[0] for e in exp]
        assert result.distances[i, :m].tolist() == [e[1] for e in exp]
        assert result.n_bits_compared[i, :m].tolist() == [e[2] for e in exp]
        np.testing.assert_allclose(result.scores[i, :m], [reference_score(e[1], e[2], score, p) for e in exp])
        assert (result.ids[i, m:] == -1).all()
        assert (result.distances[i, m:] == -1).all()
        assert (result.n_bits_compared[i, m:] == 0).all()
        assert np.isneginf(result.scores[i, m:]).all()
        # best first: scores never increase along a row
        assert (np.diff(result.scores[i, :m]) <= 0).all()


def random_codes(rng: np.random.Generator, n: int, n_bits: int, density: float = 0.5) -> Codes:
    return Codes.from_bool(rng.random((n, n_bits)) < density)


def tie_heavy_codes(rng: np.random.Generator, n: int, n_bits: int) -> Codes:
    """Codes drawn from a few patterns, so that distances tie in large groups."""
    patterns = rng.random((3, n_bits)) < 0.5
    return Codes.from_bool(patterns[rng.integers(0, 3, n)])


@st.composite
def index_scenarios(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_batches = draw(st.integers(1, 4))
    lengths = draw(st.lists(st.integers(1, 130), min_size=1, max_size=3))
    tie_heavy = draw(st.booleans())
    explicit_ids = draw(st.booleans())
    pool = rng.permutation(400)  # explicit ids: shuffled, so storage order differs from insertion order
    batches, next_free = [], 0
    for _ in range(n_batches):
        n_bits = lengths[int(rng.integers(len(lengths)))]
        n = int(rng.integers(0, 25))
        codes = tie_heavy_codes(rng, n, n_bits) if tie_heavy else random_codes(rng, n, n_bits)
        ids = pool[next_free : next_free + n] if explicit_ids else None
        next_free += n
        batches.append((codes, ids))
    q_bits = draw(st.sampled_from([*lengths, draw(st.integers(1, 130))]))
    query = tie_heavy_codes(rng, int(rng.integers(1, 5)), q_bits) if tie_heavy else random_codes(rng, 3, q_bits)
    k = draw(st.integers(1, 60))
    return batches, query, k


def build(batches) -> tuple[TruncatedHammingIndex, list[tuple[Codes, np.ndarray]]]:
    index = TruncatedHammingIndex(flip_probability=P)
    stored = []
    for codes, ids in batches:
        stored.append((codes, index.add(codes, ids)))
    return index, stored


# ---------------------------------------------------------------------------------------------------- exactness
@given(index_scenarios())
def test_search_matches_brute_force_for_every_policy(scenario):
    batches, query, k = scenario
    index, stored = build(batches)
    for score in SCORE_POLICIES:
        result = index.search(query, k, score=score)
        assert result.ids.shape == result.distances.shape == result.scores.shape == (len(query), k)
        assert result.ids.dtype == np.int64
        assert result.scores.dtype == np.float64
        assert result.score == score
        check_against_reference(result, brute_force(stored, query, k, score), k, score)


@given(index_scenarios())
def test_one_query_equals_its_row_of_a_batch(scenario):
    """A single query is merged in Python lists (TruncatedHammingIndex._search_one), a batch with numpy
    (_search_block); both must give the same row, fill values included, for every policy."""
    batches, query, k = scenario
    index, _ = build(batches)
    batch = Codes.concatenate([query, query])  # at least two queries: the batch path
    for score in SCORE_POLICIES:
        together = index.search(batch, k, score=score)
        for i in range(len(query)):
            alone = index.search(query[i : i + 1], k, score=score)
            for field in ("ids", "distances", "scores", "n_bits_compared"):
                np.testing.assert_array_equal(getattr(alone, field)[0], getattr(together, field)[i], err_msg=field)
            assert alone.score == score


@given(index_scenarios())
def test_count_at_least_matches_brute_force(scenario):
    """count_at_least at each full list's k-th score: the stored items whose exact key reaches that item's key (so the
    count minus k is how many unlisted items tie with it); a threshold above every score counts nothing."""
    batches, query, k = scenario
    index, stored = build(batches)
    for score in SCORE_POLICIES:
        result = index.search(query, k, score=score)
        rows = np.flatnonzero(result.ids[:, -1] != -1)
        got = index.count_at_least(query[rows], result.scores[rows, -1], score=score)
        for j, i in enumerate(rows.tolist()):
            kth = exact_key(int(result.distances[i, -1]), int(result.n_bits_compared[i, -1]), score)
            want = 0
            for codes, _ in stored:
                if len(codes):
                    n = min(query.n_bits, codes.n_bits)
                    want += sum(exact_key(int(d), n, score) >= kth for d in query[i : i + 1].hamming(codes)[0])
            assert got[j] == want >= k
        assert index.count_at_least(query, math.inf, score=score).tolist() == [0] * len(query)


def test_count_at_least_per_query_thresholds_ivf_and_bad_input():
    from pbeh.index import IVFBackend

    rng = np.random.default_rng(21)
    flat, ivf = (
        TruncatedHammingIndex(score="hamming"),
        TruncatedHammingIndex(score="hamming", backend=IVFBackend(min_size=64, nlist=4, nprobe=1)),
    )
    short, long = tie_heavy_codes(rng, 300, 16), random_codes(rng, 200, 24)
    for index in (flat, ivf):
        index.add(short, ids=np.arange(300))
        index.add(long, ids=np.arange(1000, 1200))
    query = random_codes(rng, 3, 24)
    dist16 = query.truncate(16).hamming(flat.get_codes(np.arange(300)))
    dist24 = query.hamming(flat.get_codes(np.arange(1000, 1200)))
    thresholds = np.array([-3.0, -8.0, -0.0])  # hamming: score = -distance
    want = [int((dist16[i] <= -t).sum() + (dist24[i] <= -t).sum()) for i, t in enumerate(thresholds)]
    assert flat.count_at_least(query, thresholds).tolist() == want
    ivf.search(query, 5)  # builds the inverted lists of the segment the queries meet at full length
    assert any(seg.trained for seg in ivf._segments.values())
    assert ivf.count_at_least(query, thresholds).tolist() == want  # exact: it reads every code, not the lists
    assert flat.count_at_least(query[:0], 1.0).shape == (0,)
    with pytest.raises(ValueError, match=r"min_score: expected a number or 3 numbers"):
        flat.count_at_least(query, [1.0, 2.0])
    with pytest.raises(ValueError, match="min_score: expected numbers, got NaN"):
        flat.count_at_least(query, np.nan)
    with pytest.raises(ValueError, match="score"):
        flat.count_at_least(query, 0.0, score="cosine")


def test_count_at_least_in_small_blocks_equals_one_pass(monkeypatch):
    """Stored codes read 7 rows at a time against 2 queries at a time: the same counts as one pass."""
    from pbeh.index import _core

    rng = np.random.default_rng(5)
    index = TruncatedHammingIndex()
    index.add(tie_heavy_codes(rng, 60, 20))
    index.add(random_codes(rng, 45, 33))
    query = random_codes(rng, 9, 33)
    last = index.search(query, 12).scores[:, -1]
    whole = index.count_at_least(query, last)
    monkeypatch.setattr(_core, "_COUNT_BLOCK_ROWS", 7)
    monkeypatch.setattr(_core, "_COUNT_QUERY_ROWS", 2)
    np.testing.assert_array_equal(index.count_at_least(query, last), whole)
    assert (whole >= 12).all()


def test_one_query_with_many_candidates_takes_the_batch_merge(monkeypatch):
    """Above the candidate bound (k x segments) one query is merged like a batch; the results are the same."""
    from pbeh.index import _core

    rng = np.random.default_rng(14)
    index = TruncatedHammingIndex()
    stored = [(codes, index.add(codes)) for codes in (random_codes(rng, 300, 20), random_codes(rng, 300, 40))]
    query = random_codes(rng, 1, 40)
    lean = index.search(query, 200)
    monkeypatch.setattr(_core, "_ONE_QUERY_CANDIDATES", 0)
    batched = index.search(query, 200)
    for field in ("ids", "distances", "scores", "n_bits_compared"):
        np.testing.assert_array_equal(getattr(lean, field), getattr(batched, field), err_msg=field)
    check_against_reference(lean, brute_force(stored, query, 200, "zscore"), 200, "zscore")


@given(st.integers(1, 130), st.integers(1, 130), st.integers(0, 2**32 - 1))
def test_distances_are_symmetric(a_bits, b_bits, seed):
    rng = np.random.default_rng(seed)
    a, b = random_codes(rng, 7, a_bits), random_codes(rng, 5, b_bits)
    index_a, index_b = TruncatedHammingIndex(), TruncatedHammingIndex()
    index_a.add(a)
    index_b.add(b)
    ab = index_a.search(b, len(a))  # rows: b items; ids: a items
    ba = index_b.search(a, len(b))
    d_ab = np.empty((len(b), len(a)), int)
    d_ba = np.empty((len(a), len(b)), int)
    np.put_along_axis(d_ab, ab.ids, ab.distances, axis=1)
    np.put_along_axis(d_ba, ba.ids, ba.distances, axis=1)
    np.testing.assert_array_equal(d_ab, d_ba.T)
    np.testing.assert_array_equal(d_ab, b.hamming(a))


@given(st.integers(2, 130), st.integers(0, 2**32 - 1), st.data())
def test_truncating_the_query_never_increases_a_distance(q_bits, seed, data):
    rng = np.random.default_rng(seed)
    index = TruncatedHammingIndex()
    for n_bits in (8, 33, 64, 130):
        index.add(random_codes(rng, 6, n_bits))
    query = random_codes(rng, 2, q_bits)
    shorter = data.draw(st.integers(1, q_bits - 1))
    n = len(index)

    def distance_table(q: Codes) -> np.ndarray:
        res = index.search(q, n, score="hamming")
        out = np.empty((len(q), n), int)
        np.put_along_axis(out, res.ids, res.distances, axis=1)
        return out

    assert (distance_table(query.truncate(shorter)) <= distance_table(query)).all()


def test_ties_are_broken_by_ascending_id_at_the_cut_off():
    # 70,000 codes (more than faiss's 65,536-code scan block) of only 4 distinct values, with shuffled ids in two
    # segments: every cut-off falls inside a huge tie group.
    rng = np.random.default_rng(0)
    n = 70_000
    index = TruncatedHammingIndex(score="normalized")
    stored = []
    ids = rng.permutation(2 * n).astype(np.int64)
    for part, n_bits in enumerate((4, 8)):
        codes = Codes.from_bool(rng.random((4, n_bits))[rng.integers(0, 4, n)] < 0.5)
        stored.append((codes, index.add(codes, ids[part * n : (part + 1) * n])))
    query = Codes.from_bool(rng.random((3, 8)) < 0.5)
    # vectorised exact reference: normalized key (L - d) / L scaled by lcm(4, 8) = 8 is an integer
    dist = np.concatenate([query.hamming(c) for c, _ in stored], axis=1)
    n_bits = np.concatenate([np.full(len(c), min(8, c.n_bits)) for c, _ in stored])
    all_ids = np.concatenate([i for _, i in stored])
    key = (n_bits - dist) * (8 // n_bits)
    for k in (1, 7, 1000):
        result = index.search(query, k)
        for i in range(len(query)):
            order = np.lexsort((all_ids, -key[i]))[:k]
            assert result.ids[i].tolist() == all_ids[order].tolist()
            assert result.distances[i].tolist() == dist[i, order].tolist()
    # inside each score group the ids ascend
    s, ids_row = result.scores, result.ids
    same = s[:, 1:] == s[:, :-1]
    assert same.sum() > 2000  # the check below is not vacuous
    assert (ids_row[:, 1:][same] > ids_row[:, :-1][same]).all()


@pytest.mark.parametrize(
    ("short", "d_short", "long", "d_long", "score"),
    [
        (16, 0, 64, 16, "zscore"),  # both 4.0
        (2, 0, 18, 6, "zscore"),  # both sqrt(2); the naive float formula differs in the last bit here
        (32, 4, 64, 8, "normalized"),  # both 0.875
        (32, 4, 64, 4, "hamming"),
    ],
)
def test_equal_scores_across_lengths_tie_and_break_by_id(short, d_short, long, d_long, score):
    query = Codes.from_bool(np.zeros((1, long), bool))
    a = np.zeros((1, short), bool)
    a[0, :d_short] = True
    b = np.zeros((1, long), bool)
    b[0, :d_long] = True
    for id_short, id_long in ((5, 9), (9, 5)):
        index = TruncatedHammingIndex(score=score)
        index.add(Codes.from_bool(a), ids=[id_short])
        index.add(Codes.from_bool(b), ids=[id_long])
        res = index.search(query, 2)
        assert res.scores[0, 0] == res.scores[0, 1]
        assert res.ids[0].tolist() == [5, 9]
        assert sorted(res.distances[0].tolist()) == sorted([d_short, d_long])


def test_huge_ids_merge_exactly():
    # ids near 2**62 cannot be packed with the score rank into one int64 key: the merge falls back to a two-key sort
    rng = np.random.default_rng(11)
    big = 2**62 + rng.permutation(60).astype(np.int64) * 2**40
    batches = [(tie_heavy_codes(rng, 20, n_bits), big[i * 20 : (i + 1) * 20]) for i, n_bits in enumerate((3, 9, 16))]
    index, stored = build(batches)
    query = tie_heavy_codes(rng, 4, 16)
    for score in SCORE_POLICIES:
        check_against_reference(index.search(query, 45, score=score), brute_force(stored, query, 45, score), 45, score)


@pytest.mark.parametrize("block", [1, 7, 1 << 22])
def test_query_blocks_give_the_same_results(monkeypatch, block):
    # Many queries are searched in blocks of at most _CANDIDATES_PER_BLOCK (query, candidate) pairs.
    import pbeh.index._core

    monkeypatch.setattr(pbeh.index._core, "_CANDIDATES_PER_BLOCK", block)
    rng = np.random.default_rng(12)
    for lengths in ((16,), (16, 40, 64)):
        index, stored = build([(tie_heavy_codes(rng, 30, n), None) for n in lengths])
        query = tie_heavy_codes(rng, 9, 40)
        check_against_reference(index.search(query, 40), brute_force(stored, query, 40, "zscore"), 40, "zscore")


def test_long_codes_above_64_bytes_match_brute_force():
    rng = np.random.default_rng(3)
    batches = [(random_codes(rng, 40, 520), None), (random_codes(rng, 30, 1000), None), (random_codes(rng, 5, 7), None)]
    index, stored = build(batches)
    for q_bits in (1000, 600, 520, 65):
        query = random_codes(rng, 4, q_bits)
        for score in SCORE_POLICIES:
            check_against_reference(
                index.search(query, 50, score=score), brute_force(stored, query, 50, score), 50, score
            )


def test_cached_truncated_copies_follow_changes():
    rng = np.random.default_rng(4)
    index = TruncatedHammingIndex()
    stored = [(random_codes(rng, 50, 64), None)]
    index, stored = build(stored)
    short_query = random_codes(rng, 3, 20)
    check_against_reference(index.search(short_query, 10), brute_force(stored, short_query, 10, "zscore"), 10, "zscore")
    more = random_codes(rng, 50, 64)
    stored.append((more, index.add(more)))
    check_against_reference(index.search(short_query, 10), brute_force(stored, short_query, 10, "zscore"), 10, "zscore")
    index.clear_cache()
    check_against_reference(index.search(short_query, 10), brute_force(stored, short_query, 10, "zscore"), 10, "zscore")


@pytest.mark.parametrize("score", SCORE_POLICIES)
def test_searches_between_changes_see_every_segment_created_or_dropped(tmp_path: Path, score):
    """The search plan (segments, compared lengths, score tables) is cached per (policy, query length): searches
    interleaved with adds of new lengths, removal of a whole length, re-adding it, and a save/load must each match
    the brute-force reference of what is stored at that moment."""
    rng = np.random.default_rng(11)
    index = TruncatedHammingIndex(score=score, flip_probability=P)
    stored: list[tuple[Codes, np.ndarray]] = []
    queries = {n: random_codes(rng, 2, n) for n in (24, 64)}

    def check(ix: TruncatedHammingIndex) -> None:
        for query in queries.values():
            for k in (1, 7, 40):
                expected = brute_force(stored, query, k, score)
                check_against_reference(ix.search(query, k), expected, k, score)

    check(index)
    for n_bits in (32, 64, 16):  # each add creates a segment after searches cached a plan
        codes = random_codes(rng, 15, n_bits)
        stored.append((codes, index.add(codes)))
        check(index)
    codes = random_codes(rng, 10, 32)  # a second batch of a stored length: no new segment
    stored.append((codes, index.add(codes)))
    check(index)
    gone = np.concatenate([ids for codes, ids in stored if codes.n_bits == 32])
    assert index.remove(gone) == len(gone)  # drops the 32-bit segment
    stored = [(codes, ids) for codes, ids in stored if codes.n_bits != 32]
    check(index)
    codes = random_codes(rng, 12, 32)  # the same length again: a new segment object
    stored.append((codes, index.add(codes)))
    check(index)
    index.save(tmp_path / "index.safetensors")
    check(TruncatedHammingIndex.load(tmp_path / "index.safetensors"))


def test_searches_from_several_python_threads_give_the_sequential_results():
    """knn_hamming_unchecked keeps one faiss heap descriptor per thread; concurrent searches must not share it."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(12)
    index = TruncatedHammingIndex()
    for n_bits in (16, 40, 64):
        index.add(random_codes(rng, 20_000, n_bits))
    queries = [random_codes(rng, int(rng.integers(1, 4)), 64) for _ in range(200)]
    expected = [index.search(q, 9) for q in queries]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: index.search(q, 9), queries))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.distances, b.distances)


def test_threads_are_restored_and_do_not_change_results():
    rng = np.random.default_rng(5)
    one, two = TruncatedHammingIndex(threads=1), TruncatedHammingIndex(threads=2)
    for n_bits in (16, 48):
        codes = random_codes(rng, 300, n_bits)
        one.add(codes)
        two.add(codes)
    query = random_codes(rng, 40, 48)
    before = _faiss.get_num_threads()
    a, b = one.search(query, 25), two.search(query, 25)
    assert _faiss.get_num_threads() == before
    for field in ("ids", "distances", "scores", "n_bits_compared"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


# ---------------------------------------------------------------------------------------------------- scores
def test_score_distances_match_the_documented_formulas():
    d = np.array([0, 3, 16, 32])
    n = np.array([32, 32, 32, 64])
    for score in SCORE_POLICIES:
        expected = [reference_score(int(a), int(b), score, 0.1) for a, b in zip(d, n, strict=True)]
        np.testing.assert_allclose(score_distances(d, n, score, flip_probability=0.1), expected)
    assert score_distances([0], [8], "hamming")[0] == 0.0
    assert not np.signbit(score_distances([0], [8], "hamming")[0])


@given(st.integers(1, 300), st.floats(0.01, 0.49))
def test_every_policy_is_strictly_decreasing_in_distance(n_bits, p):
    d = np.arange(n_bits + 1)
    for score in SCORE_POLICIES:
        s = score_distances(d, n_bits, score, flip_probability=p)
        assert (np.diff(s) < 0).all(), score


def test_cross_length_policies_rank_long_agreement_above_short():
    # 4 of 32 bits differ vs 4 of 64: raw distance ties them, every length-aware policy prefers the 64-bit match.
    short, long = score_distances([4, 4], [32, 64], "hamming")
    assert short == long
    for score in ("normalized", "zscore", "llr"):
        short, long = score_distances([4, 4], [32, 64], score)
        assert long > short, score


# ---------------------------------------------------------------------------------------------------- ids & changes
def test_auto_ids_continue_after_explicit_and_removed_ids():
    rng = np.random.default_rng(6)
    index = TruncatedHammingIndex()
    assert index.add(random_codes(rng, 3, 8)).tolist() == [0, 1, 2]
    assert index.add(random_codes(rng, 2, 8), ids=[10, 5]).tolist() == [10, 5]
    assert index.add(random_codes(rng, 2, 16)).tolist() == [11, 12]
    assert index.remove([12]) == 1
    assert index.add(random_codes(rng, 1, 16)).tolist() == [13]  # removed ids are not reused automatically
    assert index.add(random_codes(rng, 1, 16), ids=[12]).tolist() == [12]  # but may be given explicitly
    assert index.next_id == 14
    assert index.get_ids().tolist() == [0, 1, 2, 5, 10, 11, 12, 13]
    assert index.get_ids(n_bits=16).tolist() == [11, 12, 13]
    assert index.get_ids(n_bits=99).tolist() == []
    assert index.segments == [(8, 5), (16, 3)]
    assert len(index) == 8
    assert 5 in index
    assert np.int64(13) in index
    assert 4 not in index
    assert -1 not in index
    assert "5" not in index
    assert True not in index
    assert 2.0 not in index
    assert "n=8" in repr(index)


def test_add_returns_empty_ids_for_an_empty_batch():
    index = TruncatedHammingIndex()
    assert index.add(Codes.empty(12)).tolist() == []
    assert index.add(Codes.empty(12), ids=[]).dtype == np.int64
    assert index.segments == []
    assert len(index) == 0


def test_remove_and_search_exclude_removed_items():
    rng = np.random.default_rng(7)
    index, stored = build([(random_codes(rng, 30, 24), None), (random_codes(rng, 10, 40), None)])
    gone = [0, 3, 3, 35]
    assert index.remove(np.array(gone)) == 3
    assert index.remove([*list(range(30, 40)), 999], missing="ignore") == 9  # 35 is already gone
    assert index.segments == [(24, 28)]
    kept = [(c[np.isin(ids, [0, 3], invert=True)], ids[np.isin(ids, [0, 3], invert=True)]) for c, ids in stored[:1]]
    query = random_codes(rng, 4, 40)
    check_against_reference(index.search(query, 30), brute_force(kept, query, 30, "zscore"), 30, "zscore")
    assert index.remove([]) == 0


def test_remove_unknown_ids_raises_and_removes_nothing():
    index = TruncatedHammingIndex()
    index.add(Codes.from_bool(np.eye(4, dtype=bool)))
    with pytest.raises(KeyError, match=r"ids: 1 id\(s\) not in the index, e.g. \[7\]"):
        index.remove([1, 7])
    assert len(index) == 4
    with pytest.raises(ValueError, match=r"missing: expected 'raise' or 'ignore', got 'skip'"):
        index.remove([1], missing="skip")


def test_duplicate_and_invalid_ids_are_rejected():
    index = TruncatedHammingIndex()
    codes = Codes.from_bool(np.eye(3, dtype=bool))
    index.add(codes, ids=[1, 2, 3])
    with pytest.raises(ValueError, match=r"ids: duplicate ids in the batch, e.g. \[7\]"):
        index.add(codes, ids=[7, 8, 7])
    with pytest.raises(ValueError, match=r"ids: already in the index, e.g. \[3\]"):
        index.add(codes, ids=[3, 4, 5])
    with pytest.raises(ValueError, match=r"ids: already in the index, e.g. \[2\]"):  # stored at another length
        index.add(Codes.from_bool(np.eye(2, dtype=bool)), ids=[2, 9])
    with pytest.raises(ValueError, match=r"ids: ids must be non-negative .-1 marks 'no result'., got -1"):
        index.add(codes, ids=[4, -1, 5])
    with pytest.raises(ValueError, match=r"ids: expected one id per code \(3\), got 2"):
        index.add(codes, ids=[4, 5])
    with pytest.raises(TypeError, match=r"ids: expected integer ids, got dtype float64"):
        index.add(codes, ids=[4.0, 5.0, 6.0])
    with pytest.raises(TypeError, match=r"ids: expected integer ids, got dtype bool"):
        index.add(codes, ids=[True, False, True])
    with pytest.raises(ValueError, match=r"ids: expected a 1-D array of ids, got shape \(3, 1\)"):
        index.add(codes, ids=[[4], [5], [6]])
    with pytest.raises(ValueError, match=r"ids: ids must fit in int64"):
        index.add(codes[:1], ids=np.array([2**64 - 1], dtype=np.uint64))
    with pytest.raises(TypeError, match=r"codes: expected pbeh.Codes, got ndarray"):
        index.add(np.zeros((2, 1), np.uint8))
    assert index.get_ids().tolist() == [1, 2, 3]  # every failed add left the index unchanged


def test_auto_ids_refuse_to_overflow_int64():
    index = TruncatedHammingIndex()
    index.add(Codes.from_bool(np.ones((1, 4), bool)), ids=[2**63 - 1])
    with pytest.raises(ValueError, match=r"ids: automatic ids would overflow int64"):
        index.add(Codes.from_bool(np.ones((1, 4), bool)))


def test_get_codes_reads_back_what_was_stored():
    rng = np.random.default_rng(8)
    index = TruncatedHammingIndex()
    a, b = random_codes(rng, 5, 13), random_codes(rng, 4, 40)
    index.add(a, ids=[9, 1, 7, 3, 5])
    index.add(b, ids=[20, 21, 22, 23])
    assert index.get_codes([3, 9]) == a[[3, 0]]
    assert index.get_codes(np.array([23, 20])) == b[[3, 0]]
    assert index.get_codes([21, 5], n_bits=10) == Codes.concatenate([b[[1]].truncate(10), a[[4]].truncate(10)])
    with pytest.raises(ValueError, match=r"ids: the requested codes have several lengths \[13, 40\]; pass n_bits="):
        index.get_codes([3, 20])
    with pytest.raises(ValueError, match=r"n_bits: 14 exceeds the length of some requested codes .stored at 13 bits"):
        index.get_codes([3, 20], n_bits=14)
    with pytest.raises(KeyError, match=r"ids: 1 id\(s\) not in the index, e.g. \[4\]"):
        index.get_codes([3, 4])
    with pytest.raises(ValueError, match=r"ids: expected at least one id when n_bits is not given"):
        index.get_codes([])
    assert len(index.get_codes([], n_bits=8)) == 0


# ---------------------------------------------------------------------------------------------------- search edge cases
def test_empty_index_and_short_index_fill_values():
    index = TruncatedHammingIndex()
    query = Codes.from_bool(np.ones((2, 10), bool))
    res = index.search(query, 3)
    assert res.ids.tolist() == [[-1] * 3] * 2
    assert res.distances.tolist() == [[-1] * 3] * 2
    assert np.isneginf(res.scores).all()
    assert (res.n_bits_compared == 0).all()
    assert len(res) == 2
    index.add(Codes.from_bool(np.ones((1, 10), bool)), ids=[4])
    res = index.search(query, 3)
    assert res.ids.tolist() == [[4, -1, -1]] * 2
    assert res.distances[:, 0].tolist() == [0, 0]
    res = index.search(Codes.empty(10), 5)
    assert res.ids.shape == (0, 5)
    assert res.scores.shape == (0, 5)


def test_search_result_is_frozen():
    res = TruncatedHammingIndex().search(Codes.from_bool(np.ones((1, 4), bool)), 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.ids = np.zeros((1, 1), np.int64)  # type: ignore[misc]


def test_search_and_constructor_validation():
    index = TruncatedHammingIndex()
    query = Codes.from_bool(np.ones((1, 4), bool))
    with pytest.raises(TypeError, match=r"query_codes: expected pbeh.Codes, got ndarray; wrap packed bytes"):
        index.search(np.ones((1, 1), np.uint8), 1)
    with pytest.raises(ValueError, match=r"k: expected a positive int, got 0"):
        index.search(query, 0)
    with pytest.raises(TypeError, match=r"k: expected a positive int, got float 1.5"):
        index.search(query, 1.5)
    with pytest.raises(TypeError, match=r"k: expected a positive int, got bool True"):
        index.search(query, True)
    with pytest.raises(ValueError, match=r"score: expected one of 'hamming', 'normalized', 'zscore', 'llr', got 'cos'"):
        index.search(query, 1, score="cos")
    with pytest.raises(ValueError, match=r"score: expected one of .*, got 'z'"):
        TruncatedHammingIndex(score="z")
    with pytest.raises(ValueError, match=r"threads: expected a positive int, got 0"):
        TruncatedHammingIndex(threads=0)
    with pytest.raises(TypeError, match=r"threads: expected a positive int, got bool"):
        TruncatedHammingIndex(threads=True)
    for bad in (0.0, 0.5, -0.1, 1.0):
        with pytest.raises(ValueError, match=r"flip_probability: expected a float in \(0, 0.5\)"):
            TruncatedHammingIndex(flip_probability=bad)
    with pytest.raises(TypeError, match=r"flip_probability: expected a float in .0, 0.5., got str"):
        TruncatedHammingIndex(flip_probability="0.1")
    with pytest.raises(TypeError):
        TruncatedHammingIndex("zscore")  # keyword-only
    with pytest.raises(TypeError, match=r"n_bits: expected a positive int, got str"):
        index.get_ids(n_bits="8")


def test_llr_flip_probability_changes_the_cross_length_ranking():
    # A 64-bit stored code at distance 12 vs a 16-bit stored code at distance 1, for a 64-bit query.
    query = Codes.from_bool(np.zeros((1, 64), bool))
    far = np.zeros((1, 64), bool)
    far[0, :12] = True
    near = np.zeros((1, 16), bool)
    near[0, :1] = True
    winners = {}
    for p in (0.05, 0.3):
        index = TruncatedHammingIndex(score="llr", flip_probability=p)
        index.add(Codes.from_bool(far), ids=[1])
        index.add(Codes.from_bool(near), ids=[2])
        winners[p] = int(index.search(query, 1).ids[0, 0])
    assert winners == {0.05: 2, 0.3: 1}  # a strict channel trusts the short agreement, a noisy one the long code


# ---------------------------------------------------------------------------------------------------- files
def test_save_load_save_round_trip(tmp_path: Path):
    rng = np.random.default_rng(9)
    index = TruncatedHammingIndex(score="llr", flip_probability=0.15)
    index.add(random_codes(rng, 40, 21), ids=rng.permutation(1000)[:40])
    index.add(random_codes(rng, 25, 64))
    index.add(random_codes(rng, 3, 130))
    index.remove(index.get_ids(n_bits=130)[:1])
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    index.save(first)
    loaded = TruncatedHammingIndex.load(first)
    loaded.save(second)
    assert first.read_bytes() == second.read_bytes()
    assert loaded.segments == index.segments
    assert loaded.next_id == index.next_id
    assert loaded.score == "llr"
    assert loaded.flip_probability == 0.15
    for q_bits in (8, 21, 64, 200):
        query = random_codes(rng, 5, q_bits)
        for score in SCORE_POLICIES:
            a, b = index.search(query, 30, score=score), loaded.search(query, 30, score=score)
            for field in ("ids", "distances", "scores", "n_bits_compared"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    meta = TruncatedHammingIndex.metadata(first)
    assert meta["segments"] == [(21, 40), (64, 25), (130, 2)]
    assert meta["n_items"] == 67
    assert meta["score"] == "llr"
    assert meta["next_id"] == index.next_id
    assert meta["bit_order"] == "big"
    # version 1 for a SHA-256 checksum, 2 for xxh3_128 (the default when xxhash is installed)
    assert meta["format_version"] == (2 if checksum_available("xxh3_128") else 1)
    assert meta["pbeh_version"]


def test_empty_index_round_trip(tmp_path: Path):
    index = TruncatedHammingIndex(score="hamming")
    index.add(Codes.from_bool(np.ones((2, 9), bool)))
    index.remove([0, 1])
    index.save(tmp_path / "e.safetensors")
    loaded = TruncatedHammingIndex.load(tmp_path / "e.safetensors")
    assert len(loaded) == 0
    assert loaded.next_id == 2
    assert loaded.score == "hamming"
    loaded.save(tmp_path / "f.safetensors")
    assert (tmp_path / "e.safetensors").read_bytes() == (tmp_path / "f.safetensors").read_bytes()


def _valid_parts(n_bits: int = 12):
    codes = Codes.from_bool(np.eye(3, n_bits, dtype=bool)).packed
    tensors = {f"codes.{n_bits}": codes, f"ids.{n_bits}": np.array([0, 1, 2], np.int64)}
    meta = {
        "bit_order": "big",
        "segment_n_bits": [n_bits],
        "segment_sizes": [3],
        "score": "zscore",
        "flip_probability": 0.2,
        "next_id": 3,
    }
    return tensors, meta


def test_the_valid_handmade_file_loads(tmp_path: Path):
    tensors, meta = _valid_parts()
    save_safetensors(tmp_path / "ok.safetensors", tensors, kind="index", format_version=1, metadata=meta)
    assert TruncatedHammingIndex.load(tmp_path / "ok.safetensors").segments == [(12, 3)]


@pytest.mark.parametrize(
    ("tensor_change", "meta_change", "message"),
    [
        ({}, {"bit_order": "little"}, "bit_order 'little', expected 'big'"),
        ({}, {"score": "cosine"}, "unknown score policy 'cosine'"),
        ({}, {"flip_probability": 0.7}, r"flip_probability 0.7 outside \(0, 0.5\)"),
        ({}, {"next_id": 2}, "next_id 2 is not above the largest id"),
        ({}, {"next_id": -3}, "next_id -3 is not a non-negative int"),
        ({}, {"segment_sizes": [4]}, r"ids.12 should be int64 \(4,\)"),
        ({}, {"segment_sizes": [3, 1]}, "segment_n_bits must be distinct and as long as segment_sizes"),
        ({}, {"segment_n_bits": [0]}, "segment_n_bits and segment_sizes must be lists of positive ints"),
        ({}, {"segment_n_bits": "[12"}, "malformed metadata"),
        ({}, {"segment_n_bits": [16]}, "do not match the header's"),
        (
            {"ids.12": np.array([0, 2, 1], np.int64)},
            {},
            "ids.12 must be non-empty, non-negative and strictly increasing",
        ),
        ({"ids.12": np.array([-1, 0, 1], np.int64)}, {}, "must be non-empty, non-negative"),
        ({"ids.12": np.array([0, 1, 2], np.int32)}, {}, r"ids.12 should be int64 \(3,\), got int32"),
        ({"codes.12": np.full((3, 2), 255, np.uint8)}, {}, "codes.12 are not valid 12-bit codes: packed: padding bits"),
        ({"codes.12": np.zeros((2, 2), np.uint8)}, {}, "codes.12 has 2 rows, the header says 3"),
    ],
)
def test_inconsistent_files_raise_format_error(tmp_path: Path, tensor_change, meta_change, message):
    tensors, meta = _valid_parts()
    tensors.update(tensor_change)
    meta.update(meta_change)
    path = tmp_path / "bad.safetensors"
    save_safetensors(path, tensors, kind="index", format_version=1, metadata=meta)
    with pytest.raises(FormatError, match=message):
        TruncatedHammingIndex.load(path)


def test_missing_metadata_key_and_ids_in_two_segments(tmp_path: Path):
    tensors, meta = _valid_parts()
    del meta["score"]
    save_safetensors(tmp_path / "a.safetensors", tensors, kind="index", format_version=1, metadata=meta)
    with pytest.raises(FormatError, match=r"metadata key 'score' is missing"):
        TruncatedHammingIndex.metadata(tmp_path / "a.safetensors")
    tensors, meta = _valid_parts()
    other, _ = _valid_parts(20)
    tensors.update(other)
    meta.update(segment_n_bits=[12, 20], segment_sizes=[3, 3])
    save_safetensors(tmp_path / "b.safetensors", tensors, kind="index", format_version=1, metadata=meta)
    with pytest.raises(FormatError, match=r"an id is stored in several segments"):
        TruncatedHammingIndex.load(tmp_path / "b.safetensors")


def test_missing_truncated_foreign_and_future_files_raise_format_error(tmp_path: Path):
    index = TruncatedHammingIndex()
    index.add(Codes.from_bool(np.ones((5, 30), bool)))
    good = tmp_path / "good.safetensors"
    index.save(good)
    with pytest.raises(FormatError, match=r"file not found"):
        TruncatedHammingIndex.load(tmp_path / "nope.safetensors")
    with pytest.raises(FormatError, match=r"file not found"):
        TruncatedHammingIndex.metadata(tmp_path / "nope.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(FormatError, match=r"is truncated"):
        TruncatedHammingIndex.load(cut)
    tensors, meta = _valid_parts()
    save_safetensors(tmp_path / "feat.safetensors", tensors, kind="features", format_version=1, metadata=meta)
    with pytest.raises(FormatError, match=r"holds a pbeh 'features', expected a pbeh 'index'"):
        TruncatedHammingIndex.load(tmp_path / "feat.safetensors")
    save_safetensors(tmp_path / "v3.safetensors", tensors, kind="index", format_version=3, metadata=meta)
    with pytest.raises(FormatError, match=r"has format_version '3'; this pbeh .* reads format_version 1 or 2"):
        TruncatedHammingIndex.load(tmp_path / "v3.safetensors")
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(FormatError, match=r"was not written by pbeh"):
        TruncatedHammingIndex.load(tmp_path / "plain.safetensors")


def test_pickle_files_are_refused_without_unpickling(tmp_path: Path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("a pickle was loaded",))

    path = tmp_path / "index.pkl"
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(FormatError, match=r"not a valid safetensors file|not a safetensors file"):
        TruncatedHammingIndex.load(path)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path):
    index = TruncatedHammingIndex()
    index.add(Codes.from_bool(np.ones((3, 8), bool)))
    index.save(tmp_path / "i.safetensors")
    index.save(tmp_path / "i.safetensors")  # overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.safetensors"]
    with pytest.raises(IsADirectoryError):
        index.save(tmp_path)


# ---------------------------------------------------------------------------------------------------- _faiss
def test_padded_code_size_and_pad_codes():
    assert [_faiss.padded_code_size(n) for n in (1, 3, 4, 5, 8, 9, 16, 17, 20, 21, 33, 64, 65, 73)] == [
        4, 4, 4, 8, 8, 16, 16, 20, 20, 32, 64, 64, 72, 80,
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"n_bytes: expected a positive int, got 0"):
        _faiss.padded_code_size(0)
    arr = np.array([[1, 2]], np.uint8)
    assert _faiss.pad_codes(arr, 2) is arr
    with pytest.raises(ValueError, match=r"code_size: 1 bytes cannot hold codes of 2 bytes"):
        _faiss.pad_codes(arr, 1)
    with pytest.raises(ValueError, match=r"packed: expected a uint8 array of shape"):
        _faiss.pad_codes(arr.astype(np.int16), 4)


@given(st.integers(1, 70), st.integers(1, 300), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_knn_hamming_is_exact_with_ties_by_position(n_bytes, n, k, seed):
    rng = np.random.default_rng(seed)
    size = _faiss.padded_code_size(n_bytes)
    pool = rng.integers(0, 256, (4, n_bytes), dtype=np.uint8)  # few distinct codes: large tie groups
    db = _faiss.pad_codes(pool[rng.integers(0, 4, n)], size)
    q = _faiss.pad_codes(rng.integers(0, 256, (3, n_bytes), dtype=np.uint8), size)
    d, pos = _faiss.knn_hamming(q, db, k)
    full = Codes.from_packed(q, size * 8).hamming(Codes.from_packed(db, size * 8))
    expected = np.argsort(full, axis=1, kind="stable")[:, :k]
    width = min(k, n)
    np.testing.assert_array_equal(pos[:, :width], expected)
    np.testing.assert_array_equal(d[:, :width], np.take_along_axis(full, expected, axis=1))
    assert (pos[:, width:] == -1).all()


def test_knn_hamming_validation_and_empty_queries():
    db = np.zeros((3, 4), np.uint8)
    d, pos = _faiss.knn_hamming(np.zeros((0, 4), np.uint8), db, 2)
    assert d.shape == pos.shape == (0, 2)
    with pytest.raises(ValueError, match=r"queries: expected 4 bytes per code like the database, got 8"):
        _faiss.knn_hamming(np.zeros((1, 8), np.uint8), db, 1)
    with pytest.raises(ValueError, match=r"k: expected a positive int, got 0"):
        _faiss.knn_hamming(np.zeros((1, 4), np.uint8), db, 0)
    with pytest.raises(ValueError, match=r"database: expected a uint8 array of shape .n, code_size., got list"):
        _faiss.knn_hamming(np.zeros((1, 4), np.uint8), [[0, 0, 0, 0]], 1)
    # non-contiguous input is made contiguous, not misread
    wide = np.arange(24, dtype=np.uint8).reshape(3, 8)
    d, pos = _faiss.knn_hamming(wide[:, :4], wide[:, :4], 1)
    assert pos[:, 0].tolist() == [0, 1, 2]
    assert d[:, 0].tolist() == [0, 0, 0]
    assert _faiss.flat_index(wide).ntotal == 3


def test_omp_threads_restores_the_count_even_on_error():
    before = _faiss.get_num_threads()
    inside = []

    def fail_inside() -> None:
        with _faiss.omp_threads(2):
            inside.append(_faiss.get_num_threads())
            raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match=r"inside"):
        fail_inside()
    assert inside == [2]
    assert _faiss.get_num_threads() == before
    with _faiss.omp_threads(None):
        assert _faiss.get_num_threads() == before
    with pytest.raises(ValueError, match=r"n_threads: expected a positive int or None, got 0"), _faiss.omp_threads(0):
        pass
