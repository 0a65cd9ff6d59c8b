"""Tests for pbeh.losses: every term against a python-loop reference, gradients, weights, the total."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import pbeh.losses as losses
from pbeh.losses import (
    LossWeights,
    anchor_loss,
    batch_mode_center,
    binary_similarity_loss,
    center_separation_loss,
    contrastive_loss,
    cosine_loss,
    distill_loss,
    label_similarity,
    pbeh_loss,
    quantization_loss,
    sign,
    similarity_loss,
    stored_code_loss,
)

DT = torch.float64


def _codes(b: int, k: int, seed: int, *, grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h = torch.nn.functional.normalize(torch.randn(b, k, generator=g, dtype=DT), dim=1)
    return h.requires_grad_(grad)


def _labels(b: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, c, generator=g) < 0.4).to(DT)


# ---------------------------------------------------------------------------------------------------- loop references
def _f(x: torch.Tensor | float) -> float:
    """A python float of a scalar (detached: no autograd warning)."""
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _L(x: torch.Tensor) -> list:
    return x.detach().tolist()


def _sgn(v: float) -> float:
    return 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _cos(a: list[float], b: list[float]) -> float:
    na = math.sqrt(_dot(a, a))
    nb = math.sqrt(_dot(b, b))
    return _dot(a, b) / max(na * nb, 1e-8)


def ref_label_similarity(la: list, lb: list) -> list:
    return [[2.0 / (1.0 + math.exp(-_dot(a, b) / 16.0)) - 1.0 for b in lb] for a in la]


def ref_mse(a: list, b: list) -> float:
    flat = [(x - y) ** 2 for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)]
    return sum(flat) / len(flat)


def ref_two_way(inner: list, S: list) -> float:
    transposed = [list(col) for col in zip(*inner, strict=True)]
    return ref_mse(inner, S) + ref_mse(transposed, S)


def ref_contrastive(h: list, labels: list, tau: float) -> float:
    total = 0.0
    for i in range(len(h)):
        logits = [_dot(h[i], h[j]) / tau for j in range(len(h))]
        log_z = math.log(sum(math.exp(z) for z in logits))
        positives = [j for j in range(len(h)) if _dot(labels[i], labels[j]) > 0]
        if positives:
            total += -sum(logits[j] - log_z for j in positives) / len(positives)
    return total / len(h)


# ---------------------------------------------------------------------------------------------------- label similarity
def test_label_similarity_matches_loops():
    la, lb = _labels(5, 7, 0), _labels(3, 7, 1)
    assert torch.allclose(label_similarity(la, lb), torch.tensor(ref_label_similarity(_L(la), _L(lb)), dtype=DT))
    S = label_similarity(la)
    assert S.shape == (5, 5)
    assert torch.allclose(S, torch.tensor(ref_label_similarity(_L(la), _L(la)), dtype=DT))
    assert _f(S.min()) >= 0.0
    assert _f(S.max()) < 1.0


def test_label_similarity_accepts_int_and_bool_labels():
    la = _labels(4, 3, 2)
    expected = label_similarity(la.float())
    assert torch.allclose(label_similarity(la.bool()), expected)
    assert torch.allclose(label_similarity(la.long()), expected)
    # no shared label -> exactly 0
    assert _f(label_similarity(torch.tensor([[1, 0]]), torch.tensor([[0, 1]]))) == 0.0


def test_label_similarity_errors():
    with pytest.raises(TypeError, match=r"labels_a: expected a torch\.Tensor"):
        label_similarity([[1, 0]])
    with pytest.raises(ValueError, match=r"labels_a: expected a 2-D"):
        label_similarity(torch.ones(3))
    with pytest.raises(ValueError, match=r"labels_b: expected 2 classes"):
        label_similarity(torch.ones(2, 2), torch.ones(2, 3))


# ---------------------------------------------------------------------------------------------------- sign
def test_sign_forward_is_torch_sign_both_modes():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0])
    assert torch.equal(sign(x), torch.sign(x))
    assert torch.equal(sign(x, straight_through=True), torch.sign(x))


def test_sign_gradients():
    x = torch.tensor([-2.0, 0.0, 0.5], requires_grad=True)
    (sign(x) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))
    x.grad = None
    (sign(x, straight_through=True) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0, 3.0]))  # identity backward


def test_sign_rejects_non_tensor():
    with pytest.raises(TypeError, match=r"x: expected a torch\.Tensor"):
        sign([1.0])


# ---------------------------------------------------------------------------------------------------- cosine
def test_cosine_loss_matches_loops_and_is_a_sum():
    hv, ht = _codes(6, 5, 0), _codes(6, 5, 1)
    v, t = _L(hv), _L(ht)
    expected = sum(1 - _cos(a, b) for a, b in zip(v, t, strict=True)) + sum(
        1 - _cos([_sgn(x) for x in a], [_sgn(x) for x in b]) for a, b in zip(v, t, strict=True)
    )
    assert _f(cosine_loss(hv, ht)) == pytest.approx(expected, rel=1e-12)
    doubled = cosine_loss(torch.cat([hv, hv]), torch.cat([ht, ht]))
    assert _f(doubled) == pytest.approx(2 * expected, rel=1e-12)  # sum, not mean


def test_cosine_loss_sign_half_has_gradient_only_with_straight_through():
    hv, ht = _codes(5, 6, 3, grad=True), _codes(5, 6, 4)
    continuous = (1 - torch.nn.functional.cosine_similarity(hv, ht, dim=1)).sum()
    (grad_continuous,) = torch.autograd.grad(continuous, hv)
    (grad_reference,) = torch.autograd.grad(cosine_loss(hv, ht), hv)
    assert torch.allclose(grad_reference, grad_continuous)  # the sign half adds nothing
    (grad_st,) = torch.autograd.grad(cosine_loss(hv, ht, straight_through=True), hv)
    assert not torch.allclose(grad_st, grad_continuous)
    assert _f(cosine_loss(hv, ht, straight_through=True).detach()) == pytest.approx(_f(cosine_loss(hv, ht).detach()))


def test_pair_shape_errors():
    with pytest.raises(ValueError, match=r"h_image, h_text: expected the same shape"):
        cosine_loss(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(TypeError, match=r"h_image: expected a torch\.Tensor"):
        cosine_loss([[1.0]], torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"h_text: expected a 2-D tensor"):
        quantization_loss(torch.zeros(3, 4), torch.zeros(12))
    with pytest.raises(TypeError, match=r"h_image: expected a floating-point tensor"):
        quantization_loss(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3, 4))


# ---------------------------------------------------------------------------------------------------- similarity
def test_similarity_loss_matches_loops_with_asymmetric_target():
    hv, ht = _codes(4, 6, 5), _codes(4, 6, 6)
    S = torch.rand(4, 4, generator=torch.Generator().manual_seed(0), dtype=DT)  # not symmetric: order matters
    inner = [[_dot(a, b) for b in _L(ht)] for a in _L(hv)]
    assert _f(similarity_loss(hv, ht, S)) == pytest.approx(ref_two_way(inner, _L(S)), rel=1e-12)


def test_similarity_loss_target_shape_errors():
    h = _codes(4, 3, 0)
    with pytest.raises(ValueError, match=r"S: expected shape \(4, 4\)"):
        similarity_loss(h, h, torch.zeros(4, 3, dtype=DT))
    with pytest.raises(TypeError, match=r"S: expected a torch\.Tensor"):
        similarity_loss(h, h, [[0.0] * 4] * 4)


@pytest.mark.parametrize("normalize", [True, False])
def test_binary_similarity_loss_matches_loops(normalize):
    hv, ht = _codes(5, 8, 7), _codes(5, 8, 8)
    S = label_similarity(_labels(5, 4, 9))
    scale = 1 / 8 if normalize else 1.0
    inner = [[scale * _dot([_sgn(x) for x in a], [_sgn(x) for x in b]) for b in _L(ht)] for a in _L(hv)]
    value = binary_similarity_loss(hv, ht, S, normalize=normalize)
    assert _f(value) == pytest.approx(ref_two_way(inner, _L(S)), rel=1e-12)


def test_binary_similarity_raw_is_the_reference_scale():
    # ±1 codes of length K: the raw inner product of a code with itself is K, far above S < 1.
    h = torch.tensor([[0.5, 0.5, 0.5, 0.5]], dtype=DT)
    S = torch.zeros(1, 1, dtype=DT)
    assert _f(binary_similarity_loss(h, h, S, normalize=False)) == pytest.approx(2 * 16.0)
    assert _f(binary_similarity_loss(h, h, S)) == pytest.approx(2 * 1.0)


def test_binary_similarity_gradient_only_with_straight_through():
    hv, ht = _codes(5, 8, 10, grad=True), _codes(5, 8, 11, grad=True)
    S = label_similarity(_labels(5, 4, 12))
    binary_similarity_loss(hv, ht, S).backward()
    assert torch.count_nonzero(hv.grad) == 0
    assert torch.count_nonzero(ht.grad) == 0
    hv.grad = ht.grad = None
    binary_similarity_loss(hv, ht, S, straight_through=True).backward()
    assert torch.count_nonzero(hv.grad) > 0
    assert torch.count_nonzero(ht.grad) > 0


# ---------------------------------------------------------------------------------------------------- quantization
def test_quantization_loss_matches_loops_and_trains():
    hv, ht = _codes(4, 5, 13, grad=True), _codes(4, 5, 14)
    expected = ref_mse(_L(hv), [[_sgn(x) for x in r] for r in _L(hv)]) + ref_mse(
        _L(ht), [[_sgn(x) for x in r] for r in _L(ht)]
    )
    value = quantization_loss(hv, ht)
    assert _f(value) == pytest.approx(expected, rel=1e-12)
    value.backward()
    assert torch.allclose(hv.grad, 2 * (hv - torch.sign(hv)).detach() / hv.numel())


# ---------------------------------------------------------------------------------------------------- contrastive
def test_contrastive_loss_matches_loops():
    h, labels = _codes(6, 4, 15), _labels(6, 3, 16)
    for tau in (0.1, 0.5):
        assert _f(contrastive_loss(h, labels, temperature=tau)) == pytest.approx(
            ref_contrastive(_L(h), _L(labels), tau), rel=1e-10
        )


def test_contrastive_unlabelled_row_adds_zero_but_counts():
    h = _codes(3, 4, 17)
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=DT)
    two = contrastive_loss(h[:2], labels[:2])
    three = contrastive_loss(h, labels)
    assert _f(three) == pytest.approx(ref_contrastive(_L(h), _L(labels), 0.1), rel=1e-10)
    # the third row has no positive: contributes 0 to the sum, but the mean is over 3 rows
    assert _f(three) != pytest.approx(_f(two))


def test_contrastive_matches_reference_epsilon_form():
    # The reference divides by (n_positive + 1e-8) and does not stabilise the log-sum-exp.
    h, labels = _codes(8, 6, 18).float(), _labels(8, 5, 19).float()
    sim = h @ h.T / 0.1
    log_prob = sim - torch.log(torch.exp(sim).sum(dim=1, keepdim=True))
    mask = (labels @ labels.T > 0).float()
    reference = (-(mask * log_prob).sum(1) / (mask.sum(1) + 1e-8)).mean()
    assert _f(contrastive_loss(h, labels)) == pytest.approx(_f(reference), rel=1e-6)


@given(
    b=st.integers(1, 6),
    k=st.integers(1, 5),
    c=st.integers(1, 4),
    seed=st.integers(0, 2**16),
    tau=st.sampled_from([0.05, 0.1, 1.0]),
)
def test_contrastive_property_against_loops(b, k, c, seed, tau):
    h, labels = _codes(b, k, seed), _labels(b, c, seed + 1)
    value = _f(contrastive_loss(h, labels, temperature=tau))
    assert value == pytest.approx(ref_contrastive(_L(h), _L(labels), tau), rel=1e-9, abs=1e-12)
    assert value >= 0.0  # -log of a probability, averaged


def test_contrastive_errors():
    h = _codes(3, 4, 0)
    with pytest.raises(ValueError, match=r"labels: expected 3 rows"):
        contrastive_loss(h, torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"temperature: expected a finite number > 0"):
        contrastive_loss(h, torch.ones(3, 2), temperature=0.0)
    with pytest.raises(TypeError, match=r"temperature: expected a positive number"):
        contrastive_loss(h, torch.ones(3, 2), temperature="0.1")


# ---------------------------------------------------------------------------------------------------- distill
def test_distill_loss_matches_loops_and_trains_both_heads():
    a, b = _codes(4, 3, 20, grad=True), _codes(4, 3, 21, grad=True)
    c, d = _codes(4, 3, 22), _codes(4, 3, 23)
    value = distill_loss(a, b, c, d)
    assert _f(value) == pytest.approx(ref_mse(_L(a), _L(b)) + ref_mse(_L(c), _L(d)), rel=1e-12)
    value.backward()
    assert torch.count_nonzero(a.grad) > 0
    assert torch.count_nonzero(b.grad) > 0


def test_distill_shape_error_names_arguments():
    with pytest.raises(ValueError, match=r"text_head_on_text, image_head_on_text: expected the same shape"):
        distill_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------------------------------------------- anchor
def test_anchor_loss_truncates_and_sums_over_tasks():
    stored = [_codes(4, 3, 30), _codes(6, 5, 31)]
    current = [_codes(4, 6, 32, grad=True), _codes(6, 5, 33, grad=True)]
    expected = 0.0
    for old, now in zip(stored, current, strict=True):
        for r_old, r_now in zip(_L(old), _L(now), strict=True):
            expected += sum(abs(x - y) for x, y in zip(r_old, r_now[: len(r_old)], strict=True))
    value = anchor_loss(stored, current)
    assert _f(value) == pytest.approx(expected, rel=1e-12)
    value.backward()
    # the columns beyond the stored length get no gradient; the compared ones get ±1
    assert torch.count_nonzero(current[0].grad[:, 3:]) == 0
    assert torch.equal(current[0].grad[:, :3].abs(), torch.ones(4, 3, dtype=DT))


def test_anchor_loss_detaches_stored_and_handles_empty():
    stored = [_codes(2, 3, 34, grad=True)]
    current = [_codes(2, 3, 35, grad=True)]
    anchor_loss(stored, current).backward()
    assert stored[0].grad is None
    assert current[0].grad is not None
    assert _f(anchor_loss([], [])) == 0.0


def test_anchor_loss_errors():
    a = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"stored, current: expected one current anchor per stored anchor"):
        anchor_loss([a], [])
    with pytest.raises(ValueError, match=r"current\[0\]: expected 2 rows like stored\[0\]"):
        anchor_loss([a], [torch.zeros(3, 3)])
    with pytest.raises(ValueError, match=r"current\[0\]: expected at least 3 columns"):
        anchor_loss([a], [torch.zeros(2, 2)])
    with pytest.raises(TypeError, match=r"stored, current: expected sequences of tensors"):
        anchor_loss(a, a)
    with pytest.raises(ValueError, match=r"stored\[0\]: expected a 2-D tensor"):
        anchor_loss([torch.zeros(3)], [a])


# ---------------------------------------------------------------------------------------------------- centre separation
def test_batch_mode_center_value_ties_and_gradient():
    codes = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    center = batch_mode_center(codes)
    assert center.tolist() == [1.0, 0.0, 0.0]
    center.sum().backward()
    assert torch.allclose(codes.grad, torch.full((4, 3), 0.25))  # straight through to the mean


def test_center_separation_matches_formula_and_truncates():
    history = torch.tensor([1.0, -1.0, 0.0, 1.0], dtype=DT)
    h = _codes(7, 6, 40)
    signs = [[_sgn(x) for x in row[:4]] for row in _L(h)]
    batch_center = [_sgn(sum(col)) for col in zip(*signs, strict=True)]
    for margin in (-1.0, 0.0, 0.3):
        expected = max(0.0, _dot(_L(history), batch_center) / 4 - margin)
        assert _f(center_separation_loss(history, h, margin=margin)) == pytest.approx(expected, abs=1e-12)


def test_center_separation_gradient_only_with_straight_through():
    history = torch.tensor([1.0, 1.0, -1.0], dtype=DT)
    h = _codes(5, 3, 41, grad=True)
    center_separation_loss(history, h).backward()
    assert torch.count_nonzero(h.grad) == 0  # the reference's sign before the centre kills the gradient
    h.grad = None
    center_separation_loss(history, h, straight_through=True).backward()
    assert torch.count_nonzero(h.grad) > 0


def test_center_separation_errors():
    with pytest.raises(ValueError, match=r"history_center: expected a non-empty 1-D tensor"):
        center_separation_loss(torch.zeros(2, 2), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"h: expected at least 5 columns"):
        center_separation_loss(torch.ones(5), torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"margin: expected a finite number"):
        center_separation_loss(torch.ones(2), torch.zeros(3, 4), margin=float("nan"))
    with pytest.raises(TypeError, match=r"history_center: expected a torch\.Tensor"):
        center_separation_loss([1.0], torch.zeros(3, 4))


# ---------------------------------------------------------------------------------------------------- weights
def test_loss_weights_defaults_are_the_reference():
    w = LossWeights()
    assert dataclasses.astuple(w) == (0.1, 100.0, 1.0, 10.0, 1.0, 200.0, 0.1, 0.0, 0.0, 0.0, 0.0)
    assert LossWeights.pbeh() == dataclasses.replace(w, stored_codes=30.0, contrastive=10.0, class_centers=100.0)
    assert LossWeights.pbeh(stored_codes=0.0, contrastive=1.0, class_centers=0.0) == w
    assert LossWeights.reference_coco().distill == 100.0
    assert LossWeights.reference_coco(anchor=1.0).anchor == 1.0
    assert LossWeights.reference_nuswide() == w
    assert isinstance(LossWeights(similarity=5).similarity, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        w.cosine = 1.0


def test_loss_weights_dict_round_trip():
    w = LossWeights(cosine=0.5, center_separation=10)
    assert LossWeights.from_dict(w.to_dict()) == w
    assert LossWeights.from_dict({"anchor": 2}) == LossWeights(anchor=2.0)
    with pytest.raises(ValueError, match=r"values: unknown loss weight\(s\) \['distil'\]"):
        LossWeights.from_dict({"distil": 1.0})
    with pytest.raises(TypeError, match=r"values: expected a mapping"):
        LossWeights.from_dict([("anchor", 1.0)])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"cosine": -0.1}, ValueError, "cosine: expected a finite weight >= 0, got -0.1"),
        ({"distill": float("nan")}, ValueError, "distill: expected a finite weight >= 0"),
        ({"anchor": float("inf")}, ValueError, "anchor: expected a finite weight >= 0"),
        ({"similarity": "100"}, TypeError, "similarity: expected a number >= 0, got str"),
        ({"quantization": True}, TypeError, "quantization: expected a number >= 0, got bool"),
    ],
)
def test_loss_weights_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        LossWeights(**kwargs)


# ---------------------------------------------------------------------------------------------------- pbeh_loss
def _batch(b: int = 6, k: int = 8, seed: int = 50):
    hv, ht = _codes(b, k, seed, grad=True), _codes(b, k, seed + 1, grad=True)
    labels = _labels(b, 5, seed + 2)
    cross_image = (hv, _codes(b, k, seed + 3))
    cross_text = (ht, _codes(b, k, seed + 4))
    return hv, ht, labels, cross_image, cross_text


def test_pbeh_loss_total_is_weighted_sum_of_terms():
    hv, ht, labels, cross_image, cross_text = _batch()
    stored, current = [_codes(4, 6, 60)], [_codes(4, 8, 61)]
    center = torch.tensor([1.0, -1.0, 1.0, 0.0, 1.0, -1.0], dtype=DT)
    w = LossWeights(center_separation=3.0)
    total, terms = pbeh_loss(
        hv,
        ht,
        labels,
        weights=w,
        cross_image=cross_image,
        cross_text=cross_text,
        anchor_stored=stored,
        anchor_current=current,
        center_image=center,
        center_text=-center,
    )
    S = label_similarity(labels)
    expected = {
        "cosine": cosine_loss(hv, ht),
        "similarity": similarity_loss(hv, ht, S),
        "binary_similarity": binary_similarity_loss(hv, ht, S),
        "quantization": quantization_loss(hv, ht),
        "contrastive": contrastive_loss(hv, labels) + contrastive_loss(ht, labels),
        "distill": distill_loss(*cross_image, *cross_text),
        "anchor": anchor_loss(stored, current),
        "center_separation": center_separation_loss(center, hv) + center_separation_loss(-center, ht),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name] == pytest.approx(_f(value), rel=1e-12), name
        assert isinstance(terms[name], float)
    weighted = sum(getattr(w, name) * _f(value) for name, value in expected.items())
    assert _f(total) == pytest.approx(weighted, rel=1e-12)
    total.backward()
    assert torch.count_nonzero(hv.grad) > 0


def test_pbeh_loss_skips_zero_weight_terms_without_computing_them(monkeypatch):
    hv, ht, labels, _, _ = _batch()

    def boom(*args, **kwargs):
        raise AssertionError("computed a term whose weight is 0")

    monkeypatch.setattr(losses, "contrastive_loss", boom)
    monkeypatch.setattr(losses, "binary_similarity_loss", boom)
    w = LossWeights(contrastive=0, binary_similarity=0, distill=0)
    total, terms = pbeh_loss(hv, ht, labels, weights=w)
    assert set(terms) == {"cosine", "similarity", "quantization", "anchor"}
    assert terms["anchor"] == 0.0  # first task: no anchors
    expected = 0.1 * terms["cosine"] + 100 * terms["similarity"] + 10 * terms["quantization"]
    assert _f(total) == pytest.approx(expected, rel=1e-12)


def test_pbeh_loss_options_are_forwarded():
    hv, ht, labels, cross_image, cross_text = _batch(seed=70)
    common = {"weights": LossWeights(), "cross_image": cross_image, "cross_text": cross_text}
    _, raw = pbeh_loss(hv, ht, labels, binary_similarity_normalize=False, **common)
    S = label_similarity(labels)
    assert raw["binary_similarity"] == pytest.approx(_f(binary_similarity_loss(hv, ht, S, normalize=False)))
    _, warm = pbeh_loss(hv, ht, labels, temperature=0.5, **common)
    expected = contrastive_loss(hv, labels, temperature=0.5) + contrastive_loss(ht, labels, temperature=0.5)
    assert warm["contrastive"] == pytest.approx(_f(expected))
    # straight-through changes the gradient, not the value
    total_ref, _ = pbeh_loss(hv, ht, labels, **common)
    total_st, _ = pbeh_loss(hv, ht, labels, straight_through=True, **common)
    assert _f(total_ref) == pytest.approx(_f(total_st))
    (g_ref,) = torch.autograd.grad(total_ref, hv)
    (g_st,) = torch.autograd.grad(total_st, hv)
    assert not torch.allclose(g_ref, g_st)


def test_pbeh_loss_errors():
    hv, ht, labels, cross_image, _ = _batch()
    with pytest.raises(ValueError, match=r"cross_image, cross_text: required when weights\.distill > 0"):
        pbeh_loss(hv, ht, labels, weights=LossWeights(), cross_image=cross_image)
    with pytest.raises(TypeError, match=r"weights: expected LossWeights, got dict"):
        pbeh_loss(hv, ht, labels, weights={"cosine": 1.0})
    with pytest.raises(ValueError, match=r"labels: expected 6 rows"):
        pbeh_loss(hv, ht, labels[:3], weights=LossWeights(distill=0))
    with pytest.raises(ValueError, match=r"cross_text\[1\]: expected shape \(6, 8\)"):
        pbeh_loss(hv, ht, labels, weights=LossWeights(), cross_image=cross_image, cross_text=(ht, ht[:, :4]))
    with pytest.raises(TypeError, match=r"cross_text: expected a pair of tensors"):
        pbeh_loss(hv, ht, labels, weights=LossWeights(), cross_image=cross_image, cross_text=ht)
    with pytest.raises(ValueError, match=r"stored, current: expected one current anchor"):
        pbeh_loss(hv, ht, labels, weights=LossWeights(distill=0), anchor_stored=[hv.detach()])


# stored_codes, class_centers and previous_model are added by the trainer (they need the stored database, the centre
# table, the task-start model), not by pbeh_loss.
_TRAINER_TERMS = ("stored_codes", "class_centers", "previous_model")


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(LossWeights) if f.name not in _TRAINER_TERMS])
def test_pbeh_loss_each_zero_weight_term_is_absent(name):
    hv, ht, labels, cross_image, cross_text = _batch(seed=80)
    center = torch.ones(8, dtype=DT)
    common = {"cross_image": cross_image, "cross_text": cross_text, "center_image": center, "center_text": center}
    on = LossWeights(center_separation=1.0)
    _, terms_on = pbeh_loss(hv, ht, labels, weights=on, **common)
    assert name in terms_on
    _, terms_off = pbeh_loss(hv, ht, labels, weights=dataclasses.replace(on, **{name: 0.0}), **common)
    assert set(terms_off) == set(terms_on) - {name}


def test_stored_code_loss_matches_loops():
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(4, 7, generator=gen, dtype=DT)
    stored = torch.sign(torch.randn(3, 5, generator=gen, dtype=DT))
    S = torch.rand(4, 3, generator=gen, dtype=DT)
    expected = 0.0
    for i in range(4):
        prefix = h[i, :5] / h[i, :5].norm()
        for j in range(3):
            cos = float(prefix @ stored[j]) / (5**0.5)
            expected += (cos - float(S[i, j])) ** 2
    assert float(stored_code_loss(h, stored, S)) == pytest.approx(expected / 12)


def test_stored_code_loss_gradient_and_errors():
    h = torch.randn(2, 4, dtype=DT, requires_grad=True)
    stored = torch.ones(3, 4, dtype=DT)
    stored_code_loss(h, stored, torch.zeros(2, 3, dtype=DT)).backward()
    assert h.grad is not None
    assert float(h.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="longer than the outputs"):
        stored_code_loss(h, torch.ones(3, 5, dtype=DT), torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match=r"S: expected shape \(2, 3\)"):
        stored_code_loss(h, stored, torch.zeros(3, 2, dtype=DT))


def test_cosine_label_similarity():
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=DT)
    S = label_similarity(labels, kind="cosine")
    assert S[0, 0] == pytest.approx(1.0)
    assert S[0, 1] == pytest.approx(2**-0.5)
    assert S[0, 2] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="kind: expected one of"):
        label_similarity(labels, kind="jaccard")
