"""The unified mixed-length evaluation (pbeh.evaluation.unified_metrics) against brute force.

Tie-averaged figures are checked against the exact average over every ranking consistent with the scores (all
permutations of tiny databases); the reference tie rule against a stable sort; and every reported figure of a whole
continual run must not change when the stored items are permuted.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pbeh import Codes
from pbeh.data import Split, Task
from pbeh.evaluation import expected_hits, neutral_newest_share, unified_metrics
from pbeh.index import score_distances


def _case(seed: int):
    rng = np.random.default_rng(seed)
    n_tasks = int(rng.integers(1, 4))
    lengths = sorted(int(x) for x in rng.integers(3, 9, size=n_tasks))
    sizes = [int(x) for x in rng.integers(1, 3, size=n_tasks)]
    while sum(sizes) > 6:
        sizes[int(np.argmax(sizes))] -= 1
    n_classes = 3
    db_codes = [Codes.from_bool(rng.integers(0, 2, size=(n, L))) for n, L in zip(sizes, lengths, strict=True)]
    db_labels = [rng.integers(0, 2, size=(n, n_classes)) for n in sizes]
    nq = int(rng.integers(1, 4))
    q_len = max(lengths) + int(rng.integers(0, 3))
    queries = Codes.from_bool(rng.integers(0, 2, size=(nq, q_len)))
    q_labels = rng.integers(0, 2, size=(nq, n_classes))
    q_tasks = rng.integers(0, n_tasks, size=nq)
    return queries, q_labels, q_tasks, db_codes, db_labels


def _brute_force(queries, q_labels, q_tasks, db_codes, db_labels, score, ties):
    """Exact: average every figure over all orders of the database that sort it by score (ties in any order)."""
    n_tasks = len(db_codes)
    labels = np.concatenate(db_labels)
    task_of = np.concatenate([np.full(len(c), s) for s, c in enumerate(db_codes)])
    bits = [c.to_bool() for c in db_codes]
    n = len(labels)
    out = {"ap_all": [], "ap_100": [], "p10": [], "newest": [], "own": []}
    for qi in range(len(queries)):
        q = queries[qi : qi + 1].to_bool()[0]
        scores = []
        for s in range(n_tasks):
            L = min(len(q), db_codes[s].n_bits)
            for row in bits[s]:
                d = int((q[:L] != row[:L]).sum())
                scores.append(float(score_distances([d], [L], score)[0]))
        scores = np.array(scores)
        rel = (labels @ q_labels[qi]) > 0
        if ties == "reference":
            orders = [sorted(range(n), key=lambda j: -scores[j])]  # stable: database order inside ties
        else:
            orders = [p for p in itertools.permutations(range(n)) if all(np.diff(scores[list(p)]) <= 0)]
        acc = {key: 0.0 for key in out}
        for order in orders:
            r = rel[list(order)]
            for key, k in (("ap_all", n), ("ap_100", min(100, n))):
                top = r[:k]
                hits = np.flatnonzero(top) + 1
                acc[key] += 0.0 if hits.size == 0 else float(np.mean(np.arange(1, hits.size + 1) / hits))
            k10 = min(10, n)
            acc["p10"] += r[:k10].sum() / k10
            acc["newest"] += (task_of[list(order)][:k10] == n_tasks - 1).sum() / k10
            acc["own"] += (task_of[list(order)][:k10] == q_tasks[qi]).sum() / k10
        for key in out:
            out[key].append(acc[key] / len(orders))
    return {key: np.array(v) for key, v in out.items()}


@pytest.mark.parametrize("score", ["zscore", "hamming", "normalized"])
@pytest.mark.parametrize("ties", ["average", "reference"])
@pytest.mark.parametrize("seed", range(12))
def test_unified_metrics_match_brute_force(seed, score, ties):
    queries, q_labels, q_tasks, db_codes, db_labels = _case(seed)
    got = unified_metrics(queries, q_labels, q_tasks, db_codes, db_labels, score=score, ties=ties)
    want = _brute_force(queries, q_labels, q_tasks, db_codes, db_labels, score, ties)
    assert got.map_all == pytest.approx(want["ap_all"].mean(), abs=1e-12)
    assert got.map_at_100 == pytest.approx(want["ap_100"].mean(), abs=1e-12)
    assert got.p_at_10 == pytest.approx(want["p10"].mean(), abs=1e-12)
    for t in range(len(db_codes)):
        mine = q_tasks == t
        if not mine.any():
            assert math.isnan(got.per_task_p_at_10[t])
            continue
        assert got.per_task_p_at_10[t] == pytest.approx(want["p10"][mine].mean(), abs=1e-12)
        assert got.per_task_map_all[t] == pytest.approx(want["ap_all"][mine].mean(), abs=1e-12)
        assert got.per_task_newest_share[t] == pytest.approx(want["newest"][mine].mean(), abs=1e-12)
        assert got.per_task_own_share[t] == pytest.approx(want["own"][mine].mean(), abs=1e-12)


def test_tie_averaged_figures_do_not_depend_on_item_order():
    rng = np.random.default_rng(3)
    db = [Codes.from_bool(rng.integers(0, 2, size=(40, 8))), Codes.from_bool(rng.integers(0, 2, size=(30, 12)))]
    labels = [rng.integers(0, 2, size=(40, 4)), rng.integers(0, 2, size=(30, 4))]
    queries = Codes.from_bool(rng.integers(0, 2, size=(15, 12)))
    q_labels, q_tasks = rng.integers(0, 2, size=(15, 4)), rng.integers(0, 2, size=15)
    base = unified_metrics(queries, q_labels, q_tasks, db, labels)
    perms = [rng.permutation(40), rng.permutation(30)]
    shuffled = unified_metrics(
        queries, q_labels, q_tasks, [c[p] for c, p in zip(db, perms, strict=True)],
        [lab[p] for lab, p in zip(labels, perms, strict=True)],
    )  # fmt: skip
    for key, value in base.to_dict().items():
        other = shuffled.to_dict()[key]
        np.testing.assert_allclose(value, other, rtol=0, atol=1e-12, err_msg=key) if key != "ties" else None


def test_constant_codes_score_chance_when_tie_averaged():
    """A constant code ties every item: tie-averaged P@10 is the share of relevant items, whatever their order."""
    labels = np.zeros((20, 2), dtype=np.uint8)
    labels[:10, 0] = 1
    labels[10:, 1] = 1
    db = Codes.from_bool(np.zeros((20, 8), dtype=bool))
    queries = Codes.from_bool(np.zeros((1, 8), dtype=bool))
    avg = unified_metrics(queries, np.array([[1, 0]]), np.array([0]), [db], [labels])
    ref = unified_metrics(queries, np.array([[1, 0]]), np.array([0]), [db], [labels], ties="reference")
    assert avg.p_at_10 == pytest.approx(0.5)
    assert ref.p_at_10 == 1.0  # database order puts the ten relevant items first: what tie-averaging removes


@pytest.mark.parametrize("seed", range(6))
def test_neutral_share_is_the_newest_share_of_a_ranking_that_prefers_no_task(seed):
    """Over every top 10 of 14 items, grouped by how many relevant items it holds, the mean newest-task share equals
    the formula: it is the share of a ranking that takes relevant and other items without regard to their task."""
    rng = np.random.default_rng(seed)
    n, k = 14, 10
    relevant = rng.random(n) < [0.0, 0.3, 0.5, 0.8, 1.0, 0.4][seed]
    newest = rng.random(n) < 0.4
    by_hits: dict[int, list[float]] = {}
    for top in itertools.combinations(range(n), k):
        top = list(top)
        by_hits.setdefault(int(relevant[top].sum()), []).append(newest[top].sum() / k)
    for hits, shares in by_hits.items():
        got = neutral_newest_share(np.array([hits]), relevant[None, :], newest, k)
        assert got[0] == pytest.approx(np.mean(shares), abs=1e-12), hits


def test_unified_neutral_share_follows_the_expected_hits():
    """The per-task neutral share is the formula applied to each query's tie-averaged hits (computed here with
    loops), for both tie rules; with every code tied, the measured share equals it."""
    rng = np.random.default_rng(11)
    db = [Codes.from_bool(rng.integers(0, 2, size=(n, L))) for n, L in ((12, 6), (9, 8), (15, 8))]
    labels = [rng.integers(0, 2, size=(len(c), 3)) for c in db]
    queries = Codes.from_bool(rng.integers(0, 2, size=(8, 8)))
    q_labels, q_tasks = rng.integers(0, 2, size=(8, 3)), rng.integers(0, 3, size=8)
    all_labels = np.concatenate(labels)
    n_new = len(db[-1])
    for ties in ("average", "reference"):
        got = unified_metrics(queries, q_labels, q_tasks, db, labels, ties=ties)
        per_query_p10 = []
        for qi in range(len(queries)):  # each query alone: its own P@10
            one = unified_metrics(queries[qi : qi + 1], q_labels[qi : qi + 1], q_tasks[qi : qi + 1], db, labels,
                                  ties=ties)  # fmt: skip
            per_query_p10.append(one.p_at_10)
        want = []
        for qi, p10 in enumerate(per_query_p10):
            hits = 10 * p10
            rel = [bool(row @ q_labels[qi] > 0) for row in all_labels]
            is_new = [i >= len(all_labels) - n_new for i in range(len(all_labels))]
            r = sum(rel)
            r_new = sum(a and b for a, b in zip(rel, is_new, strict=True))
            o, o_new = len(rel) - r, n_new - r_new
            want.append(((hits * r_new / r if r else 0.0) + ((10 - hits) * o_new / o if o else 0.0)) / 10)
        want = np.array(want)
        for t in range(3):
            mine = q_tasks == t
            if mine.any():
                assert got.per_task_newest_share_neutral[t] == pytest.approx(want[mine].mean(), abs=1e-12)
    tied = [Codes.from_bool(np.zeros((len(c), 8), dtype=bool)) for c in db]
    flat = unified_metrics(Codes.from_bool(np.zeros((8, 8), dtype=bool)), q_labels, q_tasks, tied, labels)
    np.testing.assert_allclose(flat.per_task_newest_share, flat.per_task_newest_share_neutral, atol=1e-12)


def test_neutral_share_without_relevant_or_other_items():
    newest = np.array([True, False, False])
    none_relevant = neutral_newest_share(np.array([0.0]), np.zeros((1, 3), dtype=bool), newest, 2)
    all_relevant = neutral_newest_share(np.array([2.0]), np.ones((1, 3), dtype=bool), newest, 2)
    assert none_relevant.tolist() == [pytest.approx(1 / 3)]
    assert all_relevant.tolist() == [pytest.approx(1 / 3)]


def test_expected_hits_boundary_group():
    # levels: 2 items (1 marked), then 4 items (2 marked); top 3 takes the first group and 1 of the second
    assert expected_hits(np.array([[2, 4]]), np.array([[1, 2]]), 3).tolist() == [1.5]
    assert expected_hits(np.array([[2, 4]]), np.array([[1, 2]]), 100).tolist() == [3.0]


def test_unified_metrics_errors():
    codes = Codes.from_bool([[0, 1]])
    with pytest.raises(ValueError, match="ties: expected"):
        unified_metrics(codes, [[1]], [0], [codes], [[[1]]], ties="random")
    with pytest.raises(ValueError, match="query_tasks: expected task indices"):
        unified_metrics(codes, [[1]], [1], [codes], [[[1]]])
    with pytest.raises(ValueError, match=r"db_labels\[0\]: expected shape"):
        unified_metrics(codes, [[1]], [0], [codes], [[[1, 0]]])
    with pytest.raises(TypeError, match=r"query_codes: expected pbeh\.Codes"):
        unified_metrics(np.zeros((1, 2)), [[1]], [0], [codes], [[[1]]])


def test_trainer_figures_do_not_change_when_stored_items_are_permuted():
    """Every figure a run reports (matrices, unified scores, P@10, shares) is independent of the database order."""
    from pbeh.data import synthetic_stream
    from pbeh.extension import NeverExtend
    from pbeh.trainer import ContinualTrainer, TrainerConfig

    stream = synthetic_stream(n_tasks=2, seed=4)
    rng = np.random.default_rng(0)
    shuffled = []
    for task in stream:
        db = task.database
        p = rng.permutation(len(db))
        permuted = Split(db.image[p], db.text[p], db.labels[p], ids=db.ids[p])
        shuffled.append(Task(task.name, train=task.train, query=task.query, database=permuted, classes=task.classes))

    def run(tasks):
        trainer = ContinualTrainer.for_stream(
            stream, n_bits=8, hidden_dims=(16,), config=TrainerConfig(epochs=2, batch_size=32, eval_k=None),
            extension_policy=NeverExtend(),
        )  # fmt: skip
        trainer.fit(tasks)
        return trainer.summary(), trainer.matrix

    (a, ma), (b, mb) = run(list(stream)), run(shuffled)
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float), atol=1e-12,
                                   err_msg=key) if key != "ties" else None  # fmt: skip
    for direction in ("i2t", "t2i"):
        np.testing.assert_allclose(ma.matrix(direction), mb.matrix(direction), atol=1e-12)
