from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from pbeh import Codes
from pbeh import metrics as M
from pbeh.metrics import (
    ContinualMatrix,
    average_precision_per_query,
    map_at_k,
    pr_curve,
    precision_at_k,
    recall_at_k,
)
from pbeh.serialization import FormatError


# ============================================================================ brute-force references
def brute_distances(q: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Hamming distances of boolean codes on the common prefix, by explicit comparison."""
    n = min(q.shape[1], db.shape[1])
    return (q[:, None, :n] != db[None, :, :n]).sum(axis=2)


def brute_relevance(ql: np.ndarray, dl: np.ndarray) -> np.ndarray:
    if ql.ndim == 1:
        return ql[:, None] == dl[None, :]
    return np.array([[bool(np.any(a & b)) for b in dl.astype(bool)] for a in ql.astype(bool)], dtype=bool)


def ap_of_ranking(rel_in_order: np.ndarray) -> float:
    """Reference AP of a ranked relevance list (already cut at k): normalised by relevant items retrieved."""
    hits = 0
    total = 0.0
    for pos, r in enumerate(rel_in_order, start=1):
        if r:
            hits += 1
            total += hits / pos
    return total / hits if hits else 0.0


def reference_ap(dist: np.ndarray, rel: np.ndarray, k: int | None) -> np.ndarray:
    """The classic per-query loop: stable sort by distance, AP over the top k."""
    out = []
    for d, r in zip(dist, rel, strict=True):
        order = sorted(range(len(d)), key=lambda j: (d[j], j))[: (len(d) if k is None else k)]
        out.append(ap_of_ranking(r[order]))
    return np.array(out)


def tie_orders(dist_row: np.ndarray):
    """Every ranking consistent with the distances (all permutations inside tie groups)."""
    groups = [np.flatnonzero(dist_row == d).tolist() for d in sorted(set(dist_row.tolist()))]
    for parts in itertools.product(*[itertools.permutations(g) for g in groups]):
        yield [j for part in parts for j in part]


def enumerated_tie_ap(dist_row: np.ndarray, rel_row: np.ndarray, k: int | None) -> float:
    values = [ap_of_ranking(rel_row[order][: (len(order) if k is None else k)]) for order in tie_orders(dist_row)]
    return float(np.mean(values))


def codes_at_distances(dist: np.ndarray, n_bits: int) -> tuple[Codes, Codes]:
    """A zero query and database codes whose distances to it are ``dist`` (1-D)."""
    bits = np.arange(n_bits)[None, :] < np.asarray(dist)[:, None]
    return Codes.from_bool(np.zeros((1, n_bits), dtype=bool)), Codes.from_bool(bits)


def random_problem(rng: np.random.Generator, nq: int, n_db: int, n_bits: int, n_classes: int = 5):
    q = rng.random((nq, n_bits)) < 0.5
    db = rng.random((n_db, n_bits)) < 0.5
    ql = rng.random((nq, n_classes)) < 0.3
    dl = rng.random((n_db, n_classes)) < 0.3
    return q, db, ql, dl


# ============================================================================ mAP, reference rule
@given(
    st.integers(1, 5),
    st.integers(1, 25),
    st.integers(1, 10),
    st.integers(1, 4),
    st.one_of(st.none(), st.integers(1, 30)),
    st.integers(0, 2**32 - 1),
)
def test_reference_rule_matches_classic_loop(nq, n_db, n_bits, n_classes, k, seed):
    rng = np.random.default_rng(seed)
    q, db, ql, dl = random_problem(rng, nq, n_db, n_bits, n_classes)
    rel = brute_relevance(ql, dl)
    expected = reference_ap(brute_distances(q, db), rel, k)
    got = average_precision_per_query(Codes.from_bool(q), Codes.from_bool(db), ql, dl, k=k)
    expected_with_nan = np.where(rel.any(axis=1), expected, np.nan)
    np.testing.assert_allclose(got, expected_with_nan, rtol=0, atol=1e-12)
    assert map_at_k(Codes.from_bool(q), Codes.from_bool(db), ql, dl, k=k) == pytest.approx(expected.mean(), abs=1e-12)


# ============================================================================ mAP, tie-averaged rule
@given(st.data())
def test_tie_average_equals_enumeration_of_tie_orders(data):
    n_db = data.draw(st.integers(1, 7))
    dist = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n_db, max_size=n_db)))
    rel = np.array(data.draw(st.lists(st.booleans(), min_size=n_db, max_size=n_db)))
    k = data.draw(st.one_of(st.none(), st.integers(1, n_db + 1)))
    q, db = codes_at_distances(dist, 3)
    got = average_precision_per_query(q, db, relevance=rel[None, :], k=k, ties="average")[0]
    if not rel.any():
        assert math.isnan(got)
    else:
        assert got == pytest.approx(enumerated_tie_ap(dist, rel, k), abs=1e-12)


def test_tie_rules_hand_computed():
    # distances 1, 1, 0; only item 0 relevant.
    q, db = codes_at_distances(np.array([1, 1, 0]), 2)
    rel = np.array([[True, False, False]])
    # reference order: item 2, item 0, item 1 -> relevant at position 2 -> AP 1/2
    assert map_at_k(q, db, relevance=rel) == 0.5
    # random order inside {0, 1}: position 2 or 3 with equal chance -> (1/2 + 1/3) / 2 = 5/12
    assert map_at_k(q, db, relevance=rel, ties="average") == pytest.approx(float(Fraction(5, 12)), abs=1e-15)

    # distances 0, 1, 1, 1; items 1 and 3 relevant; k = 2.
    q, db = codes_at_distances(np.array([0, 1, 1, 1]), 1)
    rel = np.array([[False, True, False, True]])
    # reference: top 2 = items 0, 1 -> one relevant hit at position 2 -> AP@2 = (1/2) / 1
    assert map_at_k(q, db, relevance=rel, k=2) == 0.5
    # average: position 2 holds a relevant item with probability 2/3 (AP 1/2), else AP 0 -> 1/3
    assert map_at_k(q, db, relevance=rel, k=2, ties="average") == pytest.approx(1 / 3, abs=1e-15)
    # mAP@all: positions {2,3}, {2,4}, {3,4} -> (7/12 + 1/2 + 5/12) / 3 = 1/2
    assert map_at_k(q, db, relevance=rel, ties="average") == pytest.approx(0.5, abs=1e-15)
    assert map_at_k(q, db, relevance=rel) == pytest.approx((1 / 2 + 2 / 4) / 2, abs=1e-15)


def test_tie_average_larger_groups_against_subset_enumeration():
    # AP depends only on which positions of a tie group hold relevant items, and under a random order every subset
    # of positions is equally likely: enumerate the subsets (2002 x 6 rankings) instead of the permutations.
    dist = np.array([0, 1, 1] + [2] * 14 + [3] * 4)  # the tie at 1 holds no relevant item
    rel = np.array([True, False, False] + [True] * 5 + [False] * 9 + [True] * 2 + [False] * 2)
    q, db = codes_at_distances(dist, 3)
    head = [True, False, False]
    rankings = []
    for first in itertools.combinations(range(14), 5):
        group = [p in first for p in range(14)]
        for second in itertools.combinations(range(4), 2):
            rankings.append(np.array(head + group + [p in second for p in range(4)]))
    for k in (None, 2, 3, 4, 9, 16, 17, 19, 21):
        expected = np.mean([ap_of_ranking(r[: (len(r) if k is None else k)]) for r in rankings])
        got = map_at_k(q, db, relevance=rel[None, :], k=k, ties="average")
        assert got == pytest.approx(expected, abs=1e-12)


def test_k_at_or_above_db_size_is_map_at_all():
    rng = np.random.default_rng(1)
    q, db, ql, dl = random_problem(rng, 6, 20, 4)
    for ties in ("reference", "average"):
        full = map_at_k(q, db, ql, dl, ties=ties)
        assert map_at_k(q, db, ql, dl, k=20, ties=ties) == full
        assert map_at_k(q, db, ql, dl, k=1000, ties=ties) == full


def test_without_ties_both_rules_match_sklearn():
    rng = np.random.default_rng(2)
    for _ in range(25):
        n_db = int(rng.integers(2, 60))
        dist = rng.choice(129, size=n_db, replace=False)  # distinct distances: no ties
        rel = rng.random(n_db) < rng.random()
        rel[rng.integers(n_db)] = True
        q, db = codes_at_distances(dist, 128)
        expected = average_precision_score(rel, -dist)
        for ties in ("reference", "average"):
            assert map_at_k(q, db, relevance=rel[None, :], ties=ties) == pytest.approx(expected, abs=1e-12)


# ============================================================================ chunking, lengths, inputs
@pytest.mark.parametrize("n_bits", [5, 64, 130, 300])
def test_chunking_and_tiling_do_not_change_results(n_bits, monkeypatch):
    rng = np.random.default_rng(n_bits)
    q, db, ql, dl = random_problem(rng, 23, 150, n_bits)
    rel = brute_relevance(ql, dl)
    for ties in ("reference", "average"):
        for k in (None, 7, 60):
            base = average_precision_per_query(q, db, ql, dl, k=k, ties=ties, chunk_size=None)
            if ties == "reference":
                expected = reference_ap(brute_distances(q, db), rel, k)
                np.testing.assert_allclose(base, np.where(rel.any(1), expected, np.nan))
            for chunk in (1, 4, 23, 1000):
                other = average_precision_per_query(q, db, ql, dl, k=k, ties=ties, chunk_size=chunk)
                np.testing.assert_allclose(other, base, rtol=1e-13, atol=0)
    # tiny tiles and tiny hypergeometric grids: a column tile is at least 256 items wide, so the database needs
    # more than 256 items for several tiles (700: three), each tile spanning several 64-bit words for long codes
    q, db, ql, dl = random_problem(rng, 23, 700, n_bits)
    expected = {
        (ties, k): average_precision_per_query(q, db, ql, dl, k=k, ties=ties)
        for ties in ("reference", "average")
        for k in (None, 7)
    }
    rel = brute_relevance(ql, dl)
    reference = reference_ap(brute_distances(q, db), rel, None)
    np.testing.assert_allclose(expected[("reference", None)], np.where(rel.any(1), reference, np.nan))
    monkeypatch.setattr(M._ranking, "_TILE_PAIRS", 1)
    monkeypatch.setattr(M._average_precision, "_GRID_ENTRIES", 1)
    for (ties, k), base in expected.items():
        np.testing.assert_allclose(
            average_precision_per_query(q, db, ql, dl, k=k, ties=ties, chunk_size=5), base, rtol=1e-13
        )


def test_distances_match_codes_hamming_for_long_codes():
    rng = np.random.default_rng(3)
    for n_bits in (1, 63, 64, 65, 255, 256, 300):
        q = Codes.from_bool(rng.random((4, n_bits)) < 0.5)
        db = Codes.from_bool(rng.random((9, n_bits)) < 0.5)
        problem = M._prepare(q, db, None, None, np.ones((4, 9), dtype=bool))
        np.testing.assert_array_equal(M._distances(problem, 0, 4), q.hamming(db))


def test_mixed_lengths_compare_the_common_prefix():
    rng = np.random.default_rng(4)
    q, db, ql, dl = random_problem(rng, 10, 50, 48)
    long_q, short_db = Codes.from_bool(q), Codes.from_bool(db[:, :32])
    for ties in ("reference", "average"):
        expected = map_at_k(long_q.truncate(32), short_db, ql, dl, ties=ties)
        assert map_at_k(long_q, short_db, ql, dl, ties=ties) == expected
        # the other way round: short queries against long database codes
        assert map_at_k(long_q.truncate(20), Codes.from_bool(db), ql, dl, ties=ties) == map_at_k(
            long_q.truncate(20), Codes.from_bool(db).truncate(20), ql, dl, ties=ties
        )
    rel = brute_relevance(ql, dl)
    expected = reference_ap(brute_distances(q, db[:, :32]), rel, None).mean()
    assert map_at_k(long_q, short_db, ql, dl) == pytest.approx(expected, abs=1e-12)


def test_array_inputs_are_binarised_by_sign():
    rng = np.random.default_rng(5)
    q, db, ql, dl = random_problem(rng, 8, 30, 16)
    expected = map_at_k(Codes.from_bool(q), Codes.from_bool(db), ql, dl)
    signs_q, signs_db = np.where(q, 1.0, -1.0), np.where(db, 1, -1)
    assert map_at_k(signs_q, signs_db, ql, dl) == expected
    real_q = signs_q * rng.random(signs_q.shape)  # real values with the same signs
    assert map_at_k(real_q.astype(np.float32), db, ql, dl) == expected  # bool arrays are bits
    with pytest.raises(ValueError, match=r"query_codes: got an array of 0s and 1s"):
        map_at_k(q.astype(np.int64), db, ql, dl)


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    q, db, ql, dl = random_problem(rng, 6, 25, 16)
    signs_q, signs_db = np.where(q, 1.0, -1.0), np.where(db, 1.0, -1.0)
    expected = map_at_k(signs_q, signs_db, ql, dl, k=10)
    tensors = [torch.from_numpy(x) for x in (signs_q, signs_db, ql, dl)]
    assert map_at_k(*tensors, k=10) == expected


def test_label_forms_and_relevance_matrix_agree():
    rng = np.random.default_rng(6)
    q = Codes.from_bool(rng.random((12, 8)) < 0.5)
    db = Codes.from_bool(rng.random((40, 8)) < 0.5)
    cq, cdb = rng.integers(0, 4, 12), rng.integers(0, 4, 40)
    one_hot_q, one_hot_db = np.eye(4, dtype=np.int64)[cq], np.eye(4, dtype=np.float32)[cdb]
    rel = cq[:, None] == cdb[None, :]
    for ties in ("reference", "average"):
        for k in (None, 5):
            by_ids = map_at_k(q, db, cq, cdb, k=k, ties=ties)
            assert map_at_k(q, db, one_hot_q, one_hot_db, k=k, ties=ties) == by_ids
            assert map_at_k(q, db, relevance=rel, k=k, ties=ties) == by_ids
            assert map_at_k(q, db, relevance=rel.astype(np.int8), k=k, ties=ties) == by_ids
            assert map_at_k(q, db, cq.astype(float), cdb, k=k, ties=ties) == by_ids  # integral floats are ids


@pytest.mark.parametrize("n_classes", [1, 8, 9, 16, 17, 32, 33, 64, 65, 150])
def test_label_word_widths(n_classes):
    rng = np.random.default_rng(n_classes)
    q, db, ql, dl = random_problem(rng, 9, 30, 12, n_classes=n_classes)
    rel = brute_relevance(ql, dl)
    assert map_at_k(q, db, ql, dl) == map_at_k(q, db, relevance=rel)
    np.testing.assert_array_equal(M._prepare(q, db, ql, dl, None).relevance.block(2, 7), rel[2:7])


def test_popcount_fallback_without_bitwise_count(monkeypatch):
    rng = np.random.default_rng(11)
    q, db, ql, dl = random_problem(rng, 7, 40, 300)
    expected = average_precision_per_query(q, db, ql, dl, ties="average")
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    problem = M._prepare(Codes.from_bool(q), Codes.from_bool(db), ql, dl, None)
    np.testing.assert_array_equal(M._distances(problem, 0, 7), brute_distances(q, db))
    np.testing.assert_array_equal(average_precision_per_query(q, db, ql, dl, ties="average"), expected)


def test_no_relevant_rule():
    q, db = codes_at_distances(np.array([0, 1, 2]), 2)
    queries = Codes.concatenate([q, q])
    rel = np.array([[False, True, False], [False, False, False]])  # query 1 has nothing relevant
    for ties in ("reference", "average"):
        assert map_at_k(queries, db, relevance=rel, ties=ties) == 0.25
        assert map_at_k(queries, db, relevance=rel, ties=ties, no_relevant="exclude") == 0.5
        assert math.isnan(map_at_k(queries, db, relevance=np.zeros((2, 3), bool), ties=ties, no_relevant="exclude"))
        # precision@2 = 1/2 and recall@2 = 1 for query 0
        assert precision_at_k(queries, db, relevance=rel, k=2, ties=ties) == 0.25
        assert precision_at_k(queries, db, relevance=rel, k=2, ties=ties, no_relevant="exclude") == 0.5
        assert recall_at_k(queries, db, relevance=rel, k=2, ties=ties) == 0.5
        assert recall_at_k(queries, db, relevance=rel, k=2, ties=ties, no_relevant="exclude") == 1.0
        per_query = average_precision_per_query(queries, db, relevance=rel, ties=ties)
        assert per_query[0] == 0.5
        assert math.isnan(per_query[1])


# ============================================================================ precision, recall, PR curve
def enumerated_hits(dist_row: np.ndarray, rel_row: np.ndarray, k: int) -> float:
    return float(np.mean([rel_row[order][:k].sum() for order in tie_orders(dist_row)]))


@given(st.data())
def test_precision_and_recall_at_k_against_brute_force(data):
    n_db = data.draw(st.integers(1, 7))
    nq = data.draw(st.integers(1, 3))
    rows = st.lists(st.lists(st.integers(0, 3), min_size=n_db, max_size=n_db), min_size=nq, max_size=nq)
    dist = np.array(data.draw(rows))
    rel = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=n_db, max_size=n_db), min_size=nq, max_size=nq)))
    k = data.draw(st.integers(1, n_db + 2))
    # One zero query per row is not possible with a shared database, so evaluate rows separately.
    for i in range(nq):
        q, db = codes_at_distances(dist[i], 3)
        r = rel[i][None, :]
        total = rel[i].sum()
        k_eff = min(k, n_db)
        ref_hits = rel[i][np.argsort(dist[i], kind="stable")][:k_eff].sum()
        avg_hits = enumerated_hits(dist[i], rel[i], k_eff)
        for ties, hits in (("reference", ref_hits), ("average", avg_hits)):
            p = precision_at_k(q, db, relevance=r, k=k, ties=ties)
            rc = recall_at_k(q, db, relevance=r, k=k, ties=ties)
            assert p == pytest.approx(hits / k_eff if total else 0.0, abs=1e-12)
            assert rc == pytest.approx(hits / total if total else 0.0, abs=1e-12)


def test_precision_recall_reduce_over_queries():
    rng = np.random.default_rng(8)
    q, db, ql, dl = random_problem(rng, 15, 60, 10, n_classes=8)
    dist, rel = brute_distances(q, db), brute_relevance(ql, dl)
    assume_rows = rel.any(axis=1)
    hits = np.array([r[np.argsort(d, kind="stable")][:10].sum() for d, r in zip(dist, rel, strict=True)])
    assert precision_at_k(q, db, ql, dl, k=10) == pytest.approx(np.where(assume_rows, hits / 10, 0).mean())
    expected_recall = np.where(assume_rows, hits / np.maximum(rel.sum(1), 1), 0).mean()
    assert recall_at_k(q, db, ql, dl, k=10) == pytest.approx(expected_recall)
    assert recall_at_k(q, db, ql, dl, k=60) == pytest.approx(assume_rows.mean())


def test_pr_curve_against_brute_force():
    rng = np.random.default_rng(9)
    q, db, ql, dl = random_problem(rng, 12, 50, 8, n_classes=6)
    dist, rel = brute_distances(q, db), brute_relevance(ql, dl)
    for no_relevant in ("zero", "exclude"):
        curve = pr_curve(q, db, ql, dl, no_relevant=no_relevant, chunk_size=5)
        np.testing.assert_array_equal(curve.radius, np.arange(9))
        assert curve.n_bits == 8
        keep = rel.any(axis=1) if no_relevant == "exclude" else np.ones(len(q), bool)
        for radius in range(9):
            precisions, recalls = [], []
            for i in np.flatnonzero(keep):
                within = dist[i] <= radius
                tp = (within & rel[i]).sum()
                if within.any():
                    precisions.append(tp / within.sum())
                recalls.append(tp / rel[i].sum() if rel[i].any() else 0.0)
            expected_p = np.mean(precisions) if precisions else np.nan
            np.testing.assert_allclose(curve.precision[radius], expected_p, atol=1e-12)
            np.testing.assert_allclose(curve.recall[radius], np.mean(recalls), atol=1e-12)
    # the last radius retrieves everything
    assert curve.recall[-1] == pytest.approx(1.0)


# ============================================================================ errors
def test_error_paths():
    rng = np.random.default_rng(10)
    q, db, ql, dl = random_problem(rng, 3, 5, 8, n_classes=4)
    cq, cdb = Codes.from_bool(q), Codes.from_bool(db)
    with pytest.raises(ValueError, match=r"ties: expected one of 'reference', 'average', got 'random'"):
        map_at_k(cq, cdb, ql, dl, ties="random")
    with pytest.raises(ValueError, match=r"no_relevant: expected one of 'zero', 'exclude'"):
        map_at_k(cq, cdb, ql, dl, no_relevant="skip")
    with pytest.raises(ValueError, match=r"no_relevant: expected one of"):
        precision_at_k(cq, cdb, ql, dl, k=1, no_relevant="skip")
    with pytest.raises(ValueError, match=r"no_relevant: expected one of"):
        pr_curve(cq, cdb, ql, dl, no_relevant=None)
    with pytest.raises(ValueError, match=r"k: expected a positive int, got 0"):
        map_at_k(cq, cdb, ql, dl, k=0)
    with pytest.raises(TypeError, match=r"k: expected a positive int or None, got float"):
        map_at_k(cq, cdb, ql, dl, k=10.0)
    with pytest.raises(TypeError, match=r"k: expected a positive int, got NoneType"):
        precision_at_k(cq, cdb, ql, dl, k=None)
    with pytest.raises(TypeError, match=r"k: expected a positive int, got bool"):
        recall_at_k(cq, cdb, ql, dl, k=True)
    with pytest.raises(ValueError, match=r"chunk_size: expected a positive int, got -1"):
        map_at_k(cq, cdb, ql, dl, chunk_size=-1)
    with pytest.raises(ValueError, match=r"chunk_size: expected a positive int"):
        pr_curve(cq, cdb, ql, dl, chunk_size=0)
    with pytest.raises(ValueError, match=r"query_codes: expected at least one query"):
        map_at_k(cq[:0], cdb, ql[:0], dl)
    with pytest.raises(ValueError, match=r"db_codes: expected at least one database code"):
        map_at_k(cq, cdb[:0], ql, dl[:0])
    with pytest.raises(ValueError, match=r"query_codes: expected Codes or a 2-D array"):
        map_at_k(np.ones(8), cdb, ql, dl)
    with pytest.raises(TypeError, match=r"db_codes: expected Codes or a real-valued array, got dtype <U1"):
        map_at_k(cq, np.full((5, 8), "a"), ql, dl)
    with pytest.raises(ValueError, match=r"db_codes: values: contains NaN"):
        map_at_k(cq, np.full((5, 8), np.nan), ql, dl)
    with pytest.raises(ValueError, match=r"query_labels: expected 3 rows \(one per query code\), got 2"):
        map_at_k(cq, cdb, ql[:2], dl)
    with pytest.raises(ValueError, match=r"db_labels: expected 5 rows \(one per database code\), got 4"):
        map_at_k(cq, cdb, ql, dl[:4])
    with pytest.raises(ValueError, match=r"multi-hot widths differ \(4 and 3 classes\)"):
        map_at_k(cq, cdb, ql, dl[:, :3])
    with pytest.raises(ValueError, match=r"expected both 1-D class ids or both 2-D multi-hot"):
        map_at_k(cq, cdb, ql, np.arange(5))
    with pytest.raises(ValueError, match=r"query_labels: expected 1-D class ids \(n,\) or 2-D multi-hot"):
        map_at_k(cq, cdb, ql[:, :, None], dl)
    with pytest.raises(ValueError, match=r"query_labels: multi-hot labels must be 0/1 or booleans"):
        map_at_k(cq, cdb, ql * 2, dl)
    with pytest.raises(ValueError, match=r"db_labels: contains NaN"):
        map_at_k(cq, cdb, ql, np.full((5, 4), np.nan))
    with pytest.raises(TypeError, match=r"query_labels: expected a numeric or boolean label array"):
        map_at_k(cq, cdb, np.array(["a", "b", "c"]), np.arange(5))
    with pytest.raises(TypeError, match=r"query_labels: 1-D labels must be integer class ids"):
        map_at_k(cq, cdb, np.array([0.5, 1, 2]), np.arange(5))
    with pytest.raises(TypeError, match=r"db_labels: 1-D labels must be integer class ids, got dtype bool"):
        map_at_k(cq, cdb, np.arange(3), np.ones(5, bool))
    with pytest.raises(ValueError, match=r"query_labels and db_labels: required unless a relevance matrix"):
        map_at_k(cq, cdb)
    with pytest.raises(ValueError, match=r"db_labels: required unless a relevance matrix"):
        map_at_k(cq, cdb, ql)
    with pytest.raises(ValueError, match=r"relevance: give either relevance or query_labels and db_labels"):
        map_at_k(cq, cdb, ql, dl, relevance=np.ones((3, 5), bool))
    with pytest.raises(ValueError, match=r"relevance: expected shape \(n_queries, n_db\) = \(3, 5\), got \(5, 3\)"):
        map_at_k(cq, cdb, relevance=np.ones((5, 3), bool))
    with pytest.raises(ValueError, match=r"relevance: expected only 0/1 or booleans"):
        map_at_k(cq, cdb, relevance=np.full((3, 5), 2))
    with pytest.raises(TypeError, match=r"relevance: expected a boolean \(or 0/1\) matrix"):
        map_at_k(cq, cdb, relevance=np.full((3, 5), "x"))
    with pytest.raises(TypeError, match=r"relevance: expected a numeric array, got an object array"):
        map_at_k(cq, cdb, relevance=np.array([[None] * 5] * 3))


def test_metrics_import_neither_torch_nor_faiss():
    code = "import sys, pbeh.metrics; assert not {'torch', 'faiss'} & set(sys.modules), sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


# ============================================================================ ContinualMatrix
def filled_example() -> ContinualMatrix:
    m = ContinualMatrix(3)
    values = {(0, 0): 0.9, (1, 0): 0.7, (1, 1): 0.8, (2, 0): 0.6, (2, 1): 0.7, (2, 2): 0.85}
    for (t, i), v in values.items():
        m.record(t, i, "i2t", v)
        m.record(t, i, "t2i", v / 2)
    return m


def test_bwt_and_forgetting_hand_computed():
    m = filled_example()
    # BWT = ((0.6 - 0.9) + (0.7 - 0.8)) / 2 = -0.2
    assert m.bwt("i2t") == pytest.approx(-0.2)
    # forgetting: t=1: 0.9 - 0.7 = 0.2; t=2: ((0.7 - 0.6) + (0.8 - 0.7)) / 2 = 0.1; mean 0.15
    assert m.forgetting("i2t") == pytest.approx(0.15)
    assert m.bwt("t2i") == pytest.approx(-0.1)
    assert m.forgetting("t2i") == pytest.approx(0.075)
    np.testing.assert_allclose(m.row_means("i2t"), [0.9, 0.75, 2.15 / 3])
    assert m.final_mean("i2t") == pytest.approx(2.15 / 3)
    r = m.matrix("i2t")
    assert r.shape == (3, 3)
    assert r.dtype == np.float64
    assert np.isnan(r[0, 1])
    assert np.isnan(r[1, 2])
    assert r[2, 1] == 0.7
    r[0, 0] = 5.0  # a copy
    assert m.matrix("i2t")[0, 0] == 0.9


def test_partial_matrices():
    m = ContinualMatrix(4, directions=("i2t",))
    assert m.final_mean("i2t") is None
    assert m.bwt("i2t") is None
    assert m.forgetting("i2t") is None
    m.record(0, 0, "i2t", 0.5)
    assert m.final_mean("i2t") == 0.5
    assert m.bwt("i2t") is None
    assert m.forgetting("i2t") is None  # one task: undefined
    m.record(1, 0, "i2t", 0.4)
    assert np.isnan(m.row_means("i2t")[1])  # row 1 incomplete
    assert m.final_mean("i2t") == 0.5
    assert m.bwt("i2t") is None
    m.record(1, 1, "i2t", 0.6)
    assert m.bwt("i2t") == pytest.approx(-0.1)
    assert m.forgetting("i2t") == pytest.approx(0.1)
    m.record(1, 1, "i2t", 0.7)  # overwrite
    assert m.final_mean("i2t") == pytest.approx(0.55)
    # only the last row of a 3-task run: the final mean is defined, BWT and forgetting are not
    last_only = ContinualMatrix(3)
    for i in range(3):
        last_only.record(2, i, "i2t", 0.5)
    assert last_only.final_mean("i2t") == 0.5
    assert last_only.bwt("i2t") is None
    assert last_only.forgetting("i2t") is None
    # diagonal present but row 1 missing: BWT is defined, forgetting is not
    last_only.record(0, 0, "i2t", 0.6)
    last_only.record(1, 1, "i2t", 0.7)
    assert last_only.bwt("i2t") == pytest.approx(-0.15)
    assert last_only.forgetting("i2t") is None


def test_scalars():
    m = ContinualMatrix(3)
    m.record_scalar("unified_i2t", 0, 0.4)
    m.record_scalar("n_bits", 2, 66)
    m.record_scalar("prefix_drift", 0, float("nan"))  # undefined: allowed, kept as NaN / null
    s = m.scalars
    np.testing.assert_array_equal(s["n_bits"], [np.nan, np.nan, 66.0])
    assert s["unified_i2t"][0] == 0.4
    assert np.isnan(s["prefix_drift"]).all()
    assert ContinualMatrix.from_dict(m.to_dict()).to_dict() == m.to_dict()
    assert m.to_dict()["scalars"]["prefix_drift"] == [None, None, None]
    s["n_bits"][0] = 1.0  # a copy
    assert np.isnan(m.scalars["n_bits"][0])


def test_continual_matrix_errors():
    with pytest.raises(ValueError, match=r"n_tasks: expected a positive int, got 0"):
        ContinualMatrix(0)
    with pytest.raises(TypeError, match=r"n_tasks: expected a positive int, got float"):
        ContinualMatrix(2.0)
    with pytest.raises(TypeError, match=r"directions: expected a sequence of names"):
        ContinualMatrix(2, directions="i2t")
    with pytest.raises(ValueError, match=r"directions: expected at least one direction"):
        ContinualMatrix(2, directions=())
    with pytest.raises(ValueError, match=r"directions: expected distinct names"):
        ContinualMatrix(2, directions=("i2t", "i2t"))
    with pytest.raises(ValueError, match=r"directions: expected non-empty strings, got ''"):
        ContinualMatrix(2, directions=("",))
    m = ContinualMatrix(2)
    with pytest.raises(ValueError, match=r"direction: expected one of 'i2t', 't2i', got 'x2y'"):
        m.record(0, 0, "x2y", 0.5)
    with pytest.raises(ValueError, match=r"direction: expected one of"):
        m.matrix("I2T")
    with pytest.raises(ValueError, match=r"direction: expected one of"):
        m.format_table("nope")
    with pytest.raises(ValueError, match=r"t: expected a task index in 0..1, got 2"):
        m.record(2, 0, "i2t", 0.5)
    with pytest.raises(TypeError, match=r"i: expected an int task index, got float"):
        m.record(1, 0.0, "i2t", 0.5)
    with pytest.raises(ValueError, match=r"i: task 1 is evaluated only after it is trained, so i <= t"):
        m.record(0, 1, "i2t", 0.5)
    with pytest.raises(ValueError, match=r"value: expected a finite number, got nan"):
        m.record(0, 0, "i2t", float("nan"))
    with pytest.raises(TypeError, match=r"value: expected a real number, got str"):
        m.record(0, 0, "i2t", "0.5")
    with pytest.raises(ValueError, match=r"name: expected a non-empty string"):
        m.record_scalar("", 0, 1.0)
    with pytest.raises(ValueError, match=r"value: expected a finite number, got inf"):
        m.record_scalar("drift", 0, float("inf"))


def test_json_round_trip_bytes(tmp_path):
    m = filled_example()
    m.record_scalar("prefix_drift", 1, 0.01)
    m.record_scalar("never", 0, 1.0)
    path1, path2 = tmp_path / "a.json", tmp_path / "b.json"
    m.save_json(path1)
    loaded = ContinualMatrix.load_json(path1)
    loaded.save_json(path2)
    assert path1.read_bytes() == path2.read_bytes()
    assert loaded.to_dict() == m.to_dict()
    for d in m.directions:
        np.testing.assert_array_equal(loaded.matrix(d), m.matrix(d))
    data = json.loads(path1.read_text())
    assert data["matrices"]["i2t"][0] == [0.9, None, None]  # NaN -> null
    assert data["scalars"]["prefix_drift"] == [None, 0.01, None]
    # keeps a direction set and the values exactly
    assert ContinualMatrix.from_dict(m.to_dict()).bwt("t2i") == m.bwt("t2i")


def test_from_dict_errors(tmp_path):
    good = filled_example().to_dict()

    def broken(**changes):
        d = json.loads(json.dumps(good))
        d.update(changes)
        return d

    with pytest.raises(FormatError, match=r"data: expected a dict"):
        ContinualMatrix.from_dict([1, 2])
    with pytest.raises(FormatError, match=r"expected kind 'pbeh.continual_matrix', got 'index'"):
        ContinualMatrix.from_dict(broken(kind="index"))
    with pytest.raises(FormatError, match=r"format_version 1, got 9"):
        ContinualMatrix.from_dict(broken(format_version=9))
    d = broken()
    del d["n_tasks"]
    with pytest.raises(FormatError, match=r"data: missing key 'n_tasks'"):
        ContinualMatrix.from_dict(d)
    with pytest.raises(FormatError, match=r"data: n_tasks: expected a positive int"):
        ContinualMatrix.from_dict(broken(n_tasks=-1))
    with pytest.raises(FormatError, match=r"'matrices' must hold exactly the directions"):
        ContinualMatrix.from_dict(broken(matrices={"i2t": good["matrices"]["i2t"]}))
    with pytest.raises(FormatError, match=r"matrix 'i2t' must be a 3x3 list of lists"):
        ContinualMatrix.from_dict(broken(matrices={"i2t": [[None] * 3] * 2, "t2i": good["matrices"]["t2i"]}))
    upper = [[0.5, 0.1, None], [None] * 3, [None] * 3]
    with pytest.raises(FormatError, match=r"value above the diagonal at \[0, 1\]"):
        ContinualMatrix.from_dict(broken(matrices={"i2t": upper, "t2i": good["matrices"]["t2i"]}))
    bad_value = [["x", None, None], [None] * 3, [None] * 3]
    with pytest.raises(FormatError, match=r"matrix 'i2t' \[0, 0\]: value: expected a real number"):
        ContinualMatrix.from_dict(broken(matrices={"i2t": bad_value, "t2i": good["matrices"]["t2i"]}))
    with pytest.raises(FormatError, match=r"'scalars' must be a dict"):
        ContinualMatrix.from_dict(broken(scalars=[1]))
    with pytest.raises(FormatError, match=r"scalar 'drift' must be a list of 3 values"):
        ContinualMatrix.from_dict(broken(scalars={"drift": [1.0]}))
    with pytest.raises(FormatError, match=r"scalar 'drift' \[1\]: value: expected a real number"):
        ContinualMatrix.from_dict(broken(scalars={"drift": [1.0, "a", None]}))
    with pytest.raises(FormatError, match=r"continual matrix JSON not found"):
        ContinualMatrix.load_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"is not valid JSON"):
        ContinualMatrix.load_json(tmp_path / "bad.json")


def test_to_csv_and_format_table(tmp_path):
    m = filled_example()
    m.record_scalar("unified_i2t", 2, 0.25)
    path = tmp_path / "r.csv"
    text = m.to_csv(path)
    assert path.read_text() == text
    lines = text.splitlines()
    assert lines[0] == "direction,t,task_0,task_1,task_2,mean"
    assert lines[1] == "i2t,0,0.9,,,0.9"
    assert lines[2] == "i2t,1,0.7,0.8,,0.75"
    assert lines[4] == "t2i,0,0.45,,,0.45"
    assert len(lines) == 1 + 2 * 3
    assert m.to_csv() == text  # no path: only the text
    table = m.format_table("i2t")
    assert "i2t" in table
    assert "t2i" not in table
    assert "0.8500" in table
    assert "BWT -0.2000" in table
    assert "forgetting 0.1500" in table
    assert "final mean 0.7167" in table
    full = m.format_table()
    assert "t2i" in full
    assert "unified_i2t" in full
    assert "0.2500" in full
    empty = ContinualMatrix(2).format_table()
    assert "BWT -" in empty
    assert "forgetting -" in empty
