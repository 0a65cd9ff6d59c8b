"""Tests for pbeh.extension: the mode-centre rule against a brute-force loop, the baselines, configs, collapse."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pbeh.extension as extension
from pbeh.codes import Codes
from pbeh.extension import (
    CollisionRule,
    ExtensionDecision,
    ExtensionPolicy,
    FixedSchedule,
    ModeCenterRule,
    NeverExtend,
    TieRule,
    code_collapse_report,
    extension_policy_from_config,
    make_extension_policy,
    mode_center,
    mode_center_distances,
)


# ---------------------------------------------------------------------------------------------------- brute force
def ref_center(bits: list[list[int]], n_bits: int) -> list[int]:
    center = []
    for j in range(n_bits):
        total = sum(1 if row[j] else -1 for row in bits)
        center.append(1 if total > 0 else (-1 if total < 0 else 0))
    return center


def ref_distances(bits: list[list[int]], n_bits: int) -> list[int]:
    center = ref_center(bits, n_bits)
    out = []
    for row in bits:
        d = 0
        for j in range(n_bits):
            value = 1 if row[j] else -1
            if center[j] == 0 or value != center[j]:  # a tied bit differs for every code
                d += 1
        out.append(d)
    return out


def ref_far_count(bits: list[list[int]], n_bits: int) -> int:
    return sum(1 for d in ref_distances(bits, n_bits) if d > n_bits / 2)


def ref_extends(image: list[list[int]], text: list[list[int]], n_bits: int, rho: float) -> bool:
    far_image = ref_far_count(image, n_bits)
    far_text = ref_far_count(text, n_bits)
    return far_image > len(image) * rho or far_text > len(text) * rho


def _codes(rows: list[list[int]] | np.ndarray) -> Codes:
    return Codes.from_bool(np.asarray(rows, dtype=bool))


def _decide(policy: ExtensionPolicy, image: Codes, text: Codes | None = None, task: int = 0) -> ExtensionDecision:
    return policy.decide(image_codes=image, text_codes=image if text is None else text, task=task)


@st.composite
def code_matrices(draw, n_bits: int | None = None):
    n = draw(st.integers(1, 24))
    k = draw(st.integers(1, 20)) if n_bits is None else n_bits
    # biased bits make both crowded and clustered sets likely
    p = draw(st.sampled_from([0.05, 0.3, 0.5, 0.7, 0.95]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    bits = rng.random((n, k)) < p
    if draw(st.booleans()):  # duplicate half the rows: ties and clusters
        bits[n // 2 :] = bits[: n - n // 2]
    return bits


# ---------------------------------------------------------------------------------------------------- mode centre
@given(code_matrices())
def test_mode_center_and_distances_match_brute_force(bits):
    codes = _codes(bits)
    rows = bits.astype(int).tolist()
    assert mode_center(codes).tolist() == ref_center(rows, codes.n_bits)
    assert mode_center_distances(codes).tolist() == ref_distances(rows, codes.n_bits)


def test_chunked_counting_matches_unchunked(monkeypatch):
    bits = np.random.default_rng(0).random((50, 13)) < 0.4
    codes = _codes(bits)
    expected = (mode_center(codes), mode_center_distances(codes), code_collapse_report(codes))
    monkeypatch.setattr(extension, "_CHUNK_ROWS", 7)
    assert np.array_equal(mode_center(codes), expected[0])
    assert np.array_equal(mode_center_distances(codes), expected[1])
    assert code_collapse_report(codes) == expected[2]


def test_mode_center_distances_errors():
    codes = _codes([[1, 0, 1]])
    with pytest.raises(ValueError, match=r"center: expected shape \(3,\)"):
        mode_center_distances(codes, np.zeros(4))
    with pytest.raises(ValueError, match="center: expected values in"):
        mode_center_distances(codes, np.array([1, 2, 0]))
    with pytest.raises(TypeError, match=r"codes: expected pbeh\.Codes, got ndarray"):
        mode_center(np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------------- the rule
@given(
    image=code_matrices(n_bits=9),
    text=code_matrices(n_bits=9),
    rho=st.one_of(st.sampled_from([0.0, 0.02, 0.1, 0.25, 0.5, 1.0]), st.floats(0.0, 1.0)),
)
def test_mode_center_rule_matches_brute_force(image, text, rho):
    decision = _decide(ModeCenterRule(rho=rho, delta=2), _codes(image), _codes(text), task=1)
    expected = ref_extends(image.astype(int).tolist(), text.astype(int).tolist(), 9, rho)
    assert decision.n_new_bits == (2 if expected else 0)
    assert decision.extend == expected
    assert decision.stats["image_far_count"] == ref_far_count(image.astype(int).tolist(), 9)
    assert decision.stats["text_far_count"] == ref_far_count(text.astype(int).tolist(), 9)
    assert decision.stats["n_image"] == len(image)


def test_tied_bits_count_as_mismatches_for_every_code():
    # bit 0 is +1 everywhere, bits 1 and 2 tie: every code is at distance 2 > 3/2 (0 without the tie rule)
    codes = _codes([[1, 1, 1], [1, 0, 0]])
    assert mode_center(codes).tolist() == [1, 0, 0]
    assert mode_center_distances(codes).tolist() == [2, 2]
    decision = _decide(ModeCenterRule(rho=0.5), codes)
    assert decision.n_new_bits == 1
    assert decision.stats["image_far_fraction"] == 1.0
    assert decision.stats["image_tied_bits"] == 2.0


def test_all_bits_tied():
    codes = _codes([[1, 1, 1, 1], [0, 0, 0, 0]])
    assert mode_center_distances(codes).tolist() == [4, 4]
    assert _decide(ModeCenterRule(rho=0.99), codes).n_new_bits == 1


def _crowded(n_far: int, n: int = 10, far_row: tuple[int, ...] = (1, 1, 1, 1)) -> Codes:
    """``n`` 4-bit codes: ``n - n_far`` copies of 0000 (the centre) and ``n_far`` copies of ``far_row``."""
    return _codes([[0, 0, 0, 0]] * (n - n_far) + [list(far_row)] * n_far)


def test_or_across_modalities():
    crowded, clean = _crowded(3), _crowded(0)
    rule = ModeCenterRule(rho=0.2)
    assert _decide(rule, crowded, clean).n_new_bits == 1
    assert _decide(rule, clean, crowded).n_new_bits == 1
    assert _decide(rule, clean, clean).n_new_bits == 0
    assert "image above threshold" in _decide(rule, crowded, clean).reason
    assert "text above threshold" in _decide(rule, clean, crowded).reason
    assert "image and text above threshold" in _decide(rule, crowded, crowded).reason


def test_count_threshold_is_strict():
    codes = _crowded(2)  # 2 far codes out of 10
    assert mode_center_distances(codes).tolist() == [0] * 8 + [4, 4]
    assert _decide(ModeCenterRule(rho=0.2), codes).n_new_bits == 0  # 2 > 2.0 is false
    assert _decide(ModeCenterRule(rho=0.19), codes).n_new_bits == 1


def test_distance_threshold_is_strict():
    at_half = _crowded(2, far_row=(1, 1, 0, 0))  # distance exactly K/2 = 2: not far
    decision = _decide(ModeCenterRule(rho=0.0), at_half)
    assert decision.stats["image_far_count"] == 0.0
    assert decision.n_new_bits == 0
    beyond = _crowded(2, far_row=(1, 1, 1, 0))  # distance 3 > 2
    assert _decide(ModeCenterRule(rho=0.0), beyond).n_new_bits == 1


def test_rho_one_never_extends_even_when_every_code_is_far():
    codes = _codes([[1, 1, 1, 1], [0, 0, 0, 0]] * 5)  # all bits tie: all 10 codes far
    assert _decide(ModeCenterRule(rho=1.0), codes).n_new_bits == 0
    assert _decide(ModeCenterRule(rho=0.9), codes).n_new_bits == 1


def test_rho_zero_extends_on_one_far_code():
    assert _decide(ModeCenterRule(rho=0.0), _crowded(1)).n_new_bits == 1
    assert _decide(ModeCenterRule(rho=0.0), _crowded(0)).n_new_bits == 0


def test_reason_and_stats_show_the_numbers():
    decision = _decide(ModeCenterRule(rho=0.2, delta=3), _crowded(3), _crowded(1), task=2)
    assert decision.n_new_bits == 3
    assert "extend 4 -> 7 bits" in decision.reason
    assert "after task 2" in decision.reason
    assert "image 30% (3/10)" in decision.reason
    assert "text 10% (1/10)" in decision.reason
    assert "rho=20%" in decision.reason
    assert decision.stats["image_far_fraction"] == pytest.approx(0.3)
    assert decision.stats["text_far_fraction"] == pytest.approx(0.1)
    assert decision.stats["image_threshold_count"] == pytest.approx(2.0)
    assert decision.stats["n_bits"] == 4.0
    keep = _decide(ModeCenterRule(rho=0.5), _crowded(3))
    assert keep.reason.startswith("keep 4 bits")


def test_decision_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="pbeh.extension"):
        _decide(ModeCenterRule(), _crowded(3))
    assert any("extend 4 -> 5 bits" in record.getMessage() for record in caplog.records)


def test_empty_codes_do_not_extend():
    empty = Codes.empty(8)
    decision = _decide(ModeCenterRule(rho=0.0), empty)
    assert decision.n_new_bits == 0
    assert decision.stats["n_image"] == 0.0


def test_random_codes_extend_and_identical_codes_do_not():
    rng = np.random.default_rng(1)
    random_codes = _codes(rng.random((400, 32)) < 0.5)
    assert _decide(ModeCenterRule(rho=0.1), random_codes).n_new_bits == 1
    clustered = _codes(np.tile(rng.random((1, 32)) < 0.5, (400, 1)))
    assert _decide(ModeCenterRule(rho=0.0), clustered).n_new_bits == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rho": -0.1}, ValueError, r"rho: expected a number in \[0, 1\], got -0\.1"),
        ({"rho": 1.5}, ValueError, r"rho: expected a number in \[0, 1\], got 1\.5"),
        ({"rho": float("nan")}, ValueError, "rho: expected a number in"),
        ({"rho": "0.1"}, TypeError, "rho: expected a number in .*got str"),
        ({"rho": True}, TypeError, "rho: expected a number in .*got bool"),
        ({"delta": 0}, ValueError, "delta: expected an int >= 1, got 0"),
        ({"delta": 1.0}, TypeError, "delta: expected an int >= 1, got float"),
    ],
)
def test_mode_center_rule_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        ModeCenterRule(**kwargs)


def test_rule_is_keyword_only():
    with pytest.raises(TypeError):
        ModeCenterRule(0.1, 1)


@pytest.mark.parametrize("policy", [ModeCenterRule(), NeverExtend(), FixedSchedule(bits_per_task=1)])
def test_decide_input_errors(policy):
    codes = _crowded(1)
    with pytest.raises(TypeError, match=r"image_codes: expected pbeh\.Codes, got ndarray"):
        policy.decide(image_codes=codes.to_bool(), text_codes=codes, task=0)
    with pytest.raises(TypeError, match=r"text_codes: expected pbeh\.Codes"):
        policy.decide(image_codes=codes, text_codes=None, task=0)
    with pytest.raises(ValueError, match="image_codes, text_codes: expected codes of the same"):
        policy.decide(image_codes=codes, text_codes=codes.truncate(3), task=0)
    with pytest.raises(ValueError, match="task: expected an int >= 0, got -1"):
        policy.decide(image_codes=codes, text_codes=codes, task=-1)
    with pytest.raises(TypeError):
        policy.decide(codes, codes, 0)  # keyword-only


# ---------------------------------------------------------------------------------------------------- baselines
def test_never_extend():
    codes = _codes([[1, 1, 1, 1], [0, 0, 0, 0]])
    decision = _decide(NeverExtend(), codes, task=4)
    assert decision.n_new_bits == 0
    assert "never" in decision.reason


def test_fixed_schedule_bits_per_task():
    codes = _crowded(0)
    policy = FixedSchedule(bits_per_task=8)
    assert [_decide(policy, codes, task=t).n_new_bits for t in range(3)] == [8, 8, 8]
    assert "extend 4 -> 12 bits" in _decide(policy, codes).reason
    assert _decide(FixedSchedule(bits_per_task=0), codes).n_new_bits == 0


def test_fixed_schedule_mapping():
    codes = _crowded(0)
    policy = FixedSchedule(schedule={0: 2, 3: 16})
    assert [_decide(policy, codes, task=t).n_new_bits for t in range(5)] == [2, 0, 0, 16, 0]
    assert "task 1 not in the schedule" in _decide(policy, codes, task=1).reason


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "bits_per_task, schedule: expected exactly one of them"),
        ({"bits_per_task": 1, "schedule": {0: 1}}, ValueError, "expected exactly one of them"),
        ({"bits_per_task": -1}, ValueError, "bits_per_task: expected an int >= 0, got -1"),
        ({"schedule": {-1: 2}}, ValueError, r"schedule key \(task\): expected an int >= 0, got -1"),
        ({"schedule": {"1": 2}}, TypeError, r"schedule key \(task\): expected an int >= 0, got str"),
        ({"schedule": {1: -2}}, ValueError, r"schedule\[1\]: expected an int >= 0, got -2"),
        ({"schedule": [(1, 2)]}, TypeError, "schedule: expected a mapping"),
    ],
)
def test_fixed_schedule_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        FixedSchedule(**kwargs)


# ---------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "policy",
    [
        ModeCenterRule(),
        ModeCenterRule(rho=0.02, delta=4),
        NeverExtend(),
        FixedSchedule(bits_per_task=3),
        FixedSchedule(schedule={0: 2, 10: 1}),
    ],
)
def test_config_round_trip_through_json(policy):
    config = policy.to_config()
    text = json.dumps(config, sort_keys=True)
    rebuilt = extension_policy_from_config(json.loads(text))
    assert rebuilt == policy
    assert type(rebuilt) is type(policy)
    assert json.dumps(rebuilt.to_config(), sort_keys=True) == text
    assert repr(rebuilt) == repr(policy)
    codes = _crowded(3)
    assert _decide(rebuilt, codes, task=10) == _decide(policy, codes, task=10)


def test_policies_compare_by_config():
    assert ModeCenterRule(rho=0.1) == ModeCenterRule(rho=0.1)
    assert ModeCenterRule(rho=0.1) != ModeCenterRule(rho=0.2)
    assert NeverExtend() != ModeCenterRule(rho=1.0)
    assert len({ModeCenterRule(), ModeCenterRule()}) == 1


def test_make_extension_policy():
    assert make_extension_policy("mode-center", rho=0.3, delta=2) == ModeCenterRule(rho=0.3, delta=2)
    assert make_extension_policy("never") == NeverExtend()
    assert make_extension_policy("fixed", schedule={1: 1}) == FixedSchedule(schedule={1: 1})
    with pytest.raises(
        ValueError, match=r"name: expected one of \['collision', 'fixed', 'mode-center', 'never', 'ties'\], got 'mode'"
    ):
        make_extension_policy("mode")
    with pytest.raises(TypeError, match=r"'never' extension policy: unexpected option\(s\) \['rho'\]"):
        make_extension_policy("never", rho=0.1)
    with pytest.raises(TypeError, match=r"'mode-center' extension policy: unexpected option\(s\)"):
        make_extension_policy("mode-center", ratio=0.1)


def test_extension_policy_from_config_errors():
    with pytest.raises(ValueError, match="config: expected a 'name' key"):
        extension_policy_from_config({"rho": 0.1})
    with pytest.raises(TypeError, match="config: expected a mapping"):
        extension_policy_from_config("mode-center")
    with pytest.raises(ValueError, match="name: expected one of"):
        extension_policy_from_config({"name": "sometimes"})
    with pytest.raises(ValueError, match=r"config\['schedule'\]: expected integer task keys, got 'x'"):
        extension_policy_from_config({"name": "fixed", "schedule": {"x": 1}})


def test_extension_decision_validation():
    assert not ExtensionDecision(0, "keep").extend
    assert ExtensionDecision(2, "grow", {"a": 1.0}).extend
    with pytest.raises(ValueError, match="n_new_bits: expected an int >= 0, got -1"):
        ExtensionDecision(-1, "x")
    with pytest.raises(TypeError, match="reason: expected a str"):
        ExtensionDecision(1, None)


# ---------------------------------------------------------------------------------------------------- collapse report
@given(code_matrices())
def test_collapse_report_matches_brute_force(bits):
    report = code_collapse_report(_codes(bits))
    rows = [tuple(r) for r in bits.astype(int).tolist()]
    n, k = bits.shape
    constant = [j for j in range(k) if len({r[j] for r in rows}) == 1]
    counts = {r: rows.count(r) for r in set(rows)}
    assert report["n_codes"] == n
    assert report["n_bits"] == k
    assert report["constant_bits"] == constant
    assert report["n_constant_bits"] == len(constant)
    assert report["n_distinct_codes"] == len(counts)
    assert report["most_common_code_fraction"] == pytest.approx(max(counts.values()) / n)
    assert report["all_equal"] == (len(counts) == 1)
    assert report["collapsed"] == (n >= 2 and (bool(constant) or len(counts) == 1))
    ones = [sum(r[j] for r in rows) / n for j in range(k)]
    assert report["ones_fraction_min"] == pytest.approx(min(ones))
    assert report["ones_fraction_max"] == pytest.approx(max(ones))


def test_collapse_report_cases():
    healthy = code_collapse_report(_codes([[1, 0], [0, 1], [1, 1], [0, 0]]))
    assert not healthy["collapsed"]
    assert healthy["n_distinct_codes"] == 4
    assert healthy["most_common_code_fraction"] == 0.25
    equal = code_collapse_report(_codes([[1, 0, 1]] * 5))
    assert equal["all_equal"]
    assert equal["collapsed"]
    assert equal["constant_bits"] == [0, 1, 2]
    one = code_collapse_report(_codes([[1, 0, 1]]))
    assert not one["collapsed"]  # a single code cannot be judged
    empty = code_collapse_report(Codes.empty(5))
    assert empty["n_codes"] == 0
    assert not empty["collapsed"]
    json.dumps(healthy)  # JSON-friendly values
    with pytest.raises(TypeError, match=r"codes: expected pbeh\.Codes"):
        code_collapse_report([[1, 0]])


# ---------------------------------------------------------------------------------------------------- collision rule
def _brute_collision(queries: np.ndarray, database: np.ndarray, labels: np.ndarray, radius: int) -> float:
    """Fraction of items i with some j sharing no label at Hamming distance <= radius, by explicit loops."""
    hits = 0
    for i in range(len(queries)):
        for j in range(len(database)):
            if int((labels[i] * labels[j]).sum()) == 0 and int((queries[i] != database[j]).sum()) <= radius:
                hits += 1
                break
    return hits / len(queries)


@given(st.integers(1, 14), st.integers(1, 12), st.integers(0, 3), st.integers(0, 10_000))
def test_collision_rule_matches_brute_force(n, n_bits, radius, seed):
    rng = np.random.default_rng(seed)
    image = rng.random((n, n_bits)) < 0.5
    text = rng.random((n, n_bits)) < 0.5
    labels = (rng.random((n, 3)) < 0.4).astype(np.uint8)
    rule = CollisionRule(rho=0.25, radius=radius, delta=3)
    decision = rule.decide(image_codes=Codes.from_bool(image), text_codes=Codes.from_bool(text), task=0, labels=labels)
    i2t = _brute_collision(image, text, labels, radius)
    t2i = _brute_collision(text, image, labels, radius)
    assert decision.stats["collision_i2t"] == pytest.approx(i2t)
    assert decision.stats["collision_t2i"] == pytest.approx(t2i)
    assert decision.n_new_bits == (3 if max(i2t, t2i) > 0.25 else 0)


def test_collision_rule_sampling_and_chunking_are_exact_when_everything_fits():
    rng = np.random.default_rng(3)
    codes = Codes.from_bool(rng.random((300, 6)) < 0.5)
    labels = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, 300)]
    full = CollisionRule(max_items=300).collision_fraction(codes, codes, labels)
    sampled = CollisionRule(max_items=100, seed=1).collision_fraction(codes, codes, labels)
    assert full == pytest.approx(_brute_collision(codes.to_bool(), codes.to_bool(), labels, 0))
    assert 0.0 <= sampled <= 1.0
    assert CollisionRule(max_items=100, seed=1).collision_fraction(codes, codes, labels) == sampled  # seeded


def test_collision_rule_config_round_trip_and_errors():
    rule = CollisionRule(rho=0.2, delta=2, radius=1, max_items=64, seed=5)
    assert extension_policy_from_config(json.loads(json.dumps(rule.to_config()))) == rule
    assert make_extension_policy("collision", rho=0.2, delta=2, radius=1, max_items=64, seed=5) == rule
    codes = Codes.from_bool(np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="labels: CollisionRule needs"):
        rule.decide(image_codes=codes, text_codes=codes, task=0)
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, n_classes\)"):
        rule.decide(image_codes=codes, text_codes=codes, task=0, labels=np.ones((3, 2)))
    with pytest.raises(ValueError, match="rho: expected a number in"):
        CollisionRule(rho=1.5)
    with pytest.raises(ValueError, match="radius"):
        CollisionRule(radius=-1)


# ---------------------------------------------------------------------------------------------------- tie rule
def _brute_ties(queries: np.ndarray, database: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of items whose nearest tie group has more than k items, one of them sharing no label, by loops."""
    crowded = 0
    for i in range(len(queries)):
        distances = [int((queries[i] != database[j]).sum()) for j in range(len(database))]
        group = [j for j in range(len(database)) if distances[j] == min(distances)]
        unrelated = [j for j in group if int((labels[i] * labels[j]).sum()) == 0]
        crowded += len(group) > k and len(unrelated) > 0
    return crowded / len(queries)


@given(st.integers(1, 16), st.integers(1, 6), st.integers(1, 5), st.integers(0, 10_000))
def test_tie_rule_matches_brute_force(n, n_bits, k, seed):
    rng = np.random.default_rng(seed)
    image = rng.random((n, n_bits)) < 0.5
    text = rng.random((n, n_bits)) < 0.5
    labels = (rng.random((n, 3)) < 0.4).astype(np.uint8)
    rule = TieRule(rho=0.25, k=k, delta=2)
    decision = rule.decide(image_codes=Codes.from_bool(image), text_codes=Codes.from_bool(text), task=0, labels=labels)
    i2t = _brute_ties(image, text, labels, k)
    t2i = _brute_ties(text, image, labels, k)
    assert decision.stats["crowded_i2t"] == pytest.approx(i2t)
    assert decision.stats["crowded_t2i"] == pytest.approx(t2i)
    assert decision.n_new_bits == (2 if max(i2t, t2i) > 0.25 else 0)


def test_tie_rule_fires_on_mixed_ties_only():
    # one code per class: every tie group is all relevant, however large
    labels = np.repeat(np.eye(3, dtype=np.uint8), 20, axis=0)
    separated = Codes.from_bool(np.repeat(np.eye(3, 4, dtype=bool), 20, axis=0))
    assert TieRule(rho=0.0).decide(image_codes=separated, text_codes=separated, task=0, labels=labels).n_new_bits == 0
    # two classes share a code: their 40 items tie and mix, the third class is untouched (40 of 60 crowded)
    merged = Codes.from_bool(np.repeat(np.array([[1, 0], [1, 0], [0, 1]], dtype=bool), 20, axis=0))
    decision = TieRule(rho=0.5).decide(image_codes=merged, text_codes=merged, task=3, labels=labels)
    assert decision.stats["crowded_i2t"] == pytest.approx(40 / 60)
    assert decision.n_new_bits == 1
    assert "66.7%" in decision.reason or "66.67%" in decision.reason
    # the same merge is not crowded when a user looks at the top 40 (the group has exactly 40 items)
    assert TieRule(rho=0.0, k=40).decide(image_codes=merged, text_codes=merged, task=3, labels=labels).n_new_bits == 0


def test_tie_rule_sampling_config_and_errors():
    rng = np.random.default_rng(4)
    codes = Codes.from_bool(rng.random((300, 5)) < 0.5)
    labels = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, 300)]
    full = TieRule(max_items=300).crowded_fraction(codes, codes, labels)
    assert full == pytest.approx(_brute_ties(codes.to_bool(), codes.to_bool(), labels, 10))
    sampled = TieRule(max_items=50, seed=2).crowded_fraction(codes, codes, labels)
    assert TieRule(max_items=50, seed=2).crowded_fraction(codes, codes, labels) == sampled  # seeded
    rule = TieRule(rho=0.2, delta=2, k=5, max_items=64, seed=5)
    assert extension_policy_from_config(json.loads(json.dumps(rule.to_config()))) == rule
    assert make_extension_policy("ties", rho=0.2, delta=2, k=5, max_items=64, seed=5) == rule
    small = Codes.from_bool(np.ones((2, 4), dtype=bool))
    with pytest.raises(ValueError, match="labels: TieRule needs"):
        rule.decide(image_codes=small, text_codes=small, task=0)
    with pytest.raises(ValueError, match=r"labels: expected shape \(2, n_classes\)"):
        rule.decide(image_codes=small, text_codes=small, task=0, labels=np.ones((3, 2)))
    with pytest.raises(ValueError, match="k: expected"):
        TieRule(k=0)


def test_label_free_policies_ignore_labels():
    codes = Codes.from_bool(np.ones((2, 4), dtype=bool))
    labels = np.ones((2, 3))
    assert NeverExtend().decide(image_codes=codes, text_codes=codes, task=0, labels=labels).n_new_bits == 0
    assert ModeCenterRule().decide(image_codes=codes, text_codes=codes, task=0, labels=labels).n_new_bits == 0
