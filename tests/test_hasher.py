"""ExtensibleHasher: outputs, codes, extension (exact old outputs), freezing, prefix drift, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pbeh.codes import Codes
from pbeh.hasher import ExtensibleHasher

IN_DIM = 24
HIDDEN = (32, 32)


def make_hasher(n_bits: int = 8, **kwargs) -> ExtensibleHasher:
    kwargs.setdefault("hidden_dims", HIDDEN)
    kwargs.setdefault("seed", 0)
    kwargs.setdefault("branch_hidden_dims", (16,))
    return ExtensibleHasher(IN_DIM, n_bits, **kwargs)


def inputs(n: int = 40, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, IN_DIM, generator=torch.Generator().manual_seed(seed))


def train_steps(hasher: ExtensibleHasher, z: torch.Tensor, params, *, steps: int = 5, flip_old: int = 0) -> None:
    """A few AdamW steps (weight decay on) with a loss that pushes every output, and optionally pushes the
    first ``flip_old`` bits towards the opposite of their current signs."""
    opt = torch.optim.AdamW(params, lr=0.05, weight_decay=0.5)
    target = -torch.sign(hasher.logits(z, "image").detach()[:, :flip_old]) if flip_old else None
    for _ in range(steps):
        opt.zero_grad()
        h = hasher(z, "image")
        loss = (h - 0.3).pow(2).sum() + hasher(z, "text").pow(3).sum()
        if target is not None:
            loss = loss - 10 * (h[:, :flip_old] * target).sum()
        loss.backward()
        opt.step()


# --------------------------------------------------------------------------------------------- outputs
def test_forward_shapes_normalised_and_heads_independent():
    hasher = make_hasher(8)
    z = inputs()
    h = hasher(z, "image")
    assert h.shape == (40, 8)
    assert torch.allclose(h.norm(dim=1), torch.ones(40), atol=1e-6)
    assert torch.allclose(h, torch.nn.functional.normalize(hasher.logits(z, "image"), dim=1))
    assert not torch.allclose(h, hasher(z, "text"))


def test_architecture_and_default_init_bounds():
    hasher = make_hasher(8)
    linears = [m for m in hasher.heads["image"].modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(24, 32), (32, 32), (32, 8)]
    for lin in linears:  # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1 / math.sqrt(lin.in_features)
        assert lin.weight.abs().max() <= bound
        assert lin.bias.abs().max() <= bound
        assert lin.weight.abs().max() > 0.8 * bound
    single = make_hasher(4, hidden_dims=())
    assert [type(m).__name__ for m in single.heads["text"].modules() if isinstance(m, torch.nn.Linear)] == ["Linear"]
    assert single.heads["text"][0].blocks[0].in_features == IN_DIM


def test_encode_matches_signs_and_batching():
    hasher = make_hasher(12)
    z = inputs(50)
    expected = Codes.from_signs(hasher.logits(z, "text").detach().numpy())
    for batch_size in (1, 7, 1024):
        assert hasher.encode(z, "text", batch_size=batch_size) == expected
    assert hasher.encode(z.numpy(), "text") == expected
    assert hasher.encode(z.double(), "text") == expected  # cast to the hasher's dtype
    empty = hasher.encode(torch.zeros(0, IN_DIM), "image")
    assert len(empty) == 0
    assert empty.n_bits == 12


@pytest.mark.parametrize("training", [True, False])
def test_encode_restores_training_flag(training):
    hasher = make_hasher()
    hasher.train(training)
    hasher.encode(inputs(), "image")
    assert hasher.training is training
    assert all(m.training is training for m in hasher.modules())


def test_seeds():
    z = inputs()
    assert make_hasher(seed=5).encode(z, "image") == make_hasher(seed=5).encode(z, "image")
    assert make_hasher(seed=5).encode(z, "image") != make_hasher(seed=6).encode(z, "image")
    a, b = make_hasher(seed=5), make_hasher(seed=5)
    a.extend(3)
    b.extend(3)
    a.extend(2, freeze_old=True)
    b.extend(2, freeze_old=True)
    assert a.encode(z, "text") == b.encode(z, "text")
    torch.manual_seed(0)
    unseeded = ExtensibleHasher(IN_DIM, 8, hidden_dims=HIDDEN)
    torch.manual_seed(0)
    assert torch.equal(
        unseeded.heads["image"][0].trunk[0].weight,
        ExtensibleHasher(IN_DIM, 8, hidden_dims=HIDDEN).heads["image"][0].trunk[0].weight,
    )


# ------------------------------------------------------------------------------------------- extension
@pytest.mark.parametrize("freeze_old", [False, True])
def test_extend_keeps_old_outputs_exact(freeze_old):
    hasher = make_hasher(8)
    z = inputs()
    before = {m: hasher.logits(z, m).detach() for m in ("image", "text")}
    old_rows = hasher.heads["image"][0].blocks[0].weight.detach().clone()
    hasher.extend(3, freeze_old=freeze_old)
    assert hasher.n_bits == 11
    assert hasher.width_history == [8, 11]
    assert hasher.frozen_history == [freeze_old]
    for m in ("image", "text"):
        after = hasher.logits(z, m).detach()
        assert after.shape == (40, 11)
        assert torch.equal(after[:, :8], before[m])  # bit-for-bit, before normalisation
        assert not torch.equal(after[:, 8:], torch.zeros_like(after[:, 8:]))
        assert torch.allclose(hasher(z, m).norm(dim=1), torch.ones(40), atol=1e-6)
    assert torch.equal(hasher.heads["image"][0].blocks[0].weight, old_rows)
    assert hasher.prefix_drift(Codes.from_signs(before["image"].numpy()), z, "image") == 0.0
    assert hasher.n_frozen_bits == (8 if freeze_old else 0)


def test_unfrozen_extension_new_rows_have_default_init():
    hasher = make_hasher(8)
    hasher.extend(4)
    new = hasher.heads["text"][0].blocks[1]
    assert (new.in_features, new.out_features) == (32, 4)
    bound = 1 / math.sqrt(32)
    assert new.weight.abs().max() <= bound
    assert new.bias.abs().max() <= bound


def test_freeze_old_keeps_old_bits_exact_under_adamw_weight_decay():
    hasher = make_hasher(8)
    z = inputs()
    hasher.extend(4, freeze_old=True)
    before = hasher.logits(z, "image").detach()
    frozen = [p for p in hasher.heads["image"][0].parameters()]
    assert all(not p.requires_grad for p in frozen)
    # The optimiser deliberately gets EVERY parameter, frozen ones included, with strong weight decay.
    train_steps(hasher, z, hasher.parameters(), steps=6, flip_old=8)
    after = hasher.logits(z, "image").detach()
    assert torch.equal(after[:, :8], before[:, :8])
    assert not torch.allclose(after[:, 8:], before[:, 8:])
    assert hasher.encode(z, "image").truncate(8) == Codes.from_signs(before[:, :8].numpy())
    # The same with the documented group.
    train_steps(hasher, z, hasher.head_parameters(), steps=3, flip_old=8)
    assert torch.equal(hasher.logits(z, "image").detach()[:, :8], before[:, :8])


def test_without_freezing_old_bits_drift():
    hasher = make_hasher(8)
    z = inputs()
    hasher.extend(4, freeze_old=False)
    stored = hasher.encode(z, "image").truncate(8)
    before = hasher.logits(z, "image").detach()
    train_steps(hasher, z, hasher.head_parameters(), steps=6, flip_old=8)
    after = hasher.logits(z, "image").detach()
    assert not torch.allclose(after[:, :8], before[:, :8])
    drift = hasher.prefix_drift(stored, z, "image")
    brute = np.mean(np.sign(after[:, :8].numpy()) != np.sign(before[:, :8].numpy()))
    assert drift == pytest.approx(brute)
    assert drift > 0.1


def test_freezing_is_permanent_and_later_extensions_widen_the_branch():
    hasher = make_hasher(8)
    z = inputs()
    hasher.extend(2, freeze_old=True)
    hasher.extend(3, freeze_old=False)  # widens the branch, the first 8 bits stay frozen
    assert len(hasher.heads["image"]) == 2
    assert len(hasher.heads["image"][1].blocks) == 2
    hasher.extend(1, freeze_old=True)
    assert hasher.width_history == [8, 10, 13, 14]
    assert hasher.frozen_history == [True, False, True]
    assert hasher.n_frozen_bits == 13
    before = hasher.logits(z, "text").detach()
    train_steps(hasher, z, hasher.parameters(), steps=4)
    after = hasher.logits(z, "text").detach()
    assert torch.equal(after[:, :13], before[:, :13])
    assert not torch.allclose(after[:, 13:], before[:, 13:])
    assert [p.shape for p in hasher.head_parameters()][-1] == (1,)


def test_frozen_parameters_have_grad_cleared():
    hasher = make_hasher(8)
    hasher(inputs(), "image").sum().backward()
    hasher.extend(2, freeze_old=True)
    assert all(p.grad is None for p in hasher.heads["image"][0].parameters())


def test_head_parameters_are_the_trainable_ones():
    hasher = make_hasher(8)
    assert len(hasher.head_parameters()) == len(list(hasher.parameters())) == 12
    hasher.extend(2, freeze_old=True)
    ids = {id(p) for p in hasher.head_parameters()}
    assert ids == {id(p) for m in ("image", "text") for p in hasher.heads[m][1].parameters()}


def test_from_config_rebuilds_shapes():
    hasher = make_hasher(8)
    hasher.extend(2, freeze_old=True)
    hasher.extend(1)
    rebuilt = ExtensibleHasher.from_config(hasher.get_config())
    assert rebuilt.get_config() == hasher.get_config()
    rebuilt.load_state_dict(hasher.state_dict())
    z = inputs()
    assert rebuilt.encode(z, "image") == hasher.encode(z, "image")
    assert [p.requires_grad for p in rebuilt.parameters()] == [p.requires_grad for p in hasher.parameters()]
    bad = {**hasher.get_config(), "frozen_history": [True]}
    with pytest.raises(ValueError, match=r"config: width_history must increase"):
        ExtensibleHasher.from_config(bad)


# ---------------------------------------------------------------------------------------- prefix drift
def test_prefix_drift_brute_force_and_errors():
    hasher = make_hasher(8)
    z = inputs(20)
    codes = hasher.encode(z, "image")
    bits = codes.to_bool().copy()
    bits[:5, 0] = ~bits[:5, 0]
    bits[3, 4] = ~bits[3, 4]
    stored = Codes.from_bool(bits[:, :6])  # 6-bit prefix with 6 flipped bits
    assert hasher.prefix_drift(stored, z, "image") == pytest.approx(6 / (20 * 6))
    with pytest.raises(TypeError, match=r"stored: expected pbeh.Codes, got ndarray"):
        hasher.prefix_drift(bits, z, "image")
    with pytest.raises(ValueError, match=r"stored: codes of 9 bits are longer than the current 8-bit codes"):
        hasher.prefix_drift(Codes.from_bool(np.ones((20, 9), bool)), z, "image")
    with pytest.raises(ValueError, match=r"stored: expected one code per input row \(20\), got 19 codes"):
        hasher.prefix_drift(stored[:19], z, "image")
    with pytest.raises(ValueError, match=r"stored: expected at least one code, got none"):
        hasher.prefix_drift(Codes.empty(6), z[:0], "image")


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"in_dim": 0}, ValueError, r"in_dim: expected a positive int, got 0"),
        ({"n_bits": 0}, ValueError, r"n_bits: expected a positive int, got 0"),
        ({"n_bits": 8.0}, TypeError, r"n_bits: expected a positive int, got float"),
        ({"hidden_dims": 32}, TypeError, r"hidden_dims: expected a sequence of positive ints"),
        ({"hidden_dims": (32, 0)}, ValueError, r"hidden_dims\[1\]: expected a positive int, got 0"),
        ({"branch_hidden_dims": "16"}, TypeError, r"branch_hidden_dims: expected a sequence"),
        ({"modalities": "image"}, TypeError, r"modalities: expected a non-empty sequence of names"),
        ({"modalities": ("image", "image")}, ValueError, r"modalities: expected distinct non-empty strings"),
        ({"seed": "1"}, TypeError, r"seed: expected an int or None, got str"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    args = {"in_dim": IN_DIM, "n_bits": 8, **kwargs}
    with pytest.raises(exc, match=match):
        ExtensibleHasher(args.pop("in_dim"), args.pop("n_bits"), **args)


def test_call_errors():
    hasher = make_hasher(8)
    with pytest.raises(ValueError, match=r"modality: expected one of \['image', 'text'\], got 'audio'"):
        hasher(inputs(), "audio")
    with pytest.raises(ValueError, match=r"z: expected shape \(batch, 24\), got \(3, 23\)"):
        hasher(torch.randn(3, 23), "image")
    with pytest.raises(TypeError, match=r"z: expected a torch.Tensor of shape \(batch, 24\), got list"):
        hasher([[0.0] * 24], "image")
    with pytest.raises(TypeError, match=r"z: expected dtype torch.float32 \(the hasher's\), got torch.float64"):
        hasher(torch.randn(3, 24, dtype=torch.float64), "image")
    with pytest.raises(ValueError, match=r"z: expected a tensor on cpu"):
        hasher(torch.randn(3, 24, device="meta"), "image")
    with pytest.raises(ValueError, match=r"z: expected shape \(batch, 24\)"):
        hasher.encode(np.zeros((3, 5), np.float32), "image")
    with pytest.raises(TypeError, match=r"z: expected real-valued features, got dtype torch.bool"):
        hasher.encode(torch.zeros(3, 24, dtype=torch.bool), "image")
    with pytest.raises(ValueError, match=r"batch_size: expected a positive int, got 0"):
        hasher.encode(inputs(), "image", batch_size=0)
    with pytest.raises(ValueError, match=r"n_new_bits: expected a positive int, got 0"):
        hasher.extend(0)
    with pytest.raises(TypeError, match=r"freeze_old: expected a bool, got int"):
        hasher.extend(1, freeze_old=1)
    assert hasher.width_history == [8]
