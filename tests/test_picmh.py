"""PIC-CMH on pbeh's harness: network, expert-prompt modes, loss against brute force, re-encoding protocol and its
encoder-pass count, save/load, batch (in)dependence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbeh.codes import Codes
from pbeh.data import synthetic_stream
from pbeh.models.picmh import PICMHConfig, PICMHModel, PICMHTrainer
from pbeh.models.picmh.trainer import picmh_loss

torch.set_num_threads(1)

SMALL = {"feature_dim": 16, "map_dim": 8, "hidden_dims": (32,), "n_experts": 3, "num_heads": 2}


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(n_tasks=3, classes_per_task=2, items_per_class=15, seed=3)


def _fit(stream, **model_kwargs):
    config = PICMHConfig(epochs=3, lr=1e-2, end_lr=5e-3, batch_size=16)
    trainer = PICMHTrainer.for_stream(stream, n_bits=8, config=config, **{**SMALL, **model_kwargs})
    trainer.fit(stream)
    return trainer


@pytest.fixture(scope="module")
def trained(stream):
    return _fit(stream)


def test_model_shapes_and_selection():
    model = PICMHModel(12, 6, n_bits=8, **SMALL)
    with pytest.raises(RuntimeError, match="add_task"):
        model.encode(torch.randn(2, 12), "image")
    model.add_task()
    h = model.hash(torch.randn(5, 12), "image")
    assert h.shape == (5, 8)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(5))
    # selection: argmax of x . normalize(E); the raw expert is returned
    x = torch.randn(4, 16)
    pool = model.experts["text_0"]
    expected = pool[(x @ torch.nn.functional.normalize(pool, dim=1).T).argmax(dim=1)]
    assert torch.equal(model.select(x, "text"), expected)


def test_expert_modes():
    trained_mode = PICMHModel(8, 8, n_bits=4, **SMALL)
    released = PICMHModel(8, 8, n_bits=4, expert_prompts="released", **SMALL)
    for m in (trained_mode, released):
        m.add_task()
        m.add_task()
    assert trained_mode.experts["image_1"].requires_grad
    assert not trained_mode.experts["image_0"].requires_grad
    assert not torch.equal(trained_mode.experts["image_0"], trained_mode.experts["image_1"])
    # released: never optimised, and every task's pool holds the same random vectors
    assert not any(p.requires_grad for p in released.experts.values())
    assert torch.equal(released.experts["image_0"], released.experts["image_1"])
    assert all(p is not released.experts["image_1"] for p in released.trainable_parameters())


def test_trained_experts_move_and_released_ones_do_not(stream):
    for mode, should_move in (("trained", True), ("released", False)):
        twin = PICMHModel(stream.image_dim, stream.text_dim, n_bits=8, expert_prompts=mode, **SMALL)
        twin.add_task()  # same seed: the pool the trainer's model starts task 0 with
        config = PICMHConfig(epochs=2, lr=1e-2, end_lr=1e-2, batch_size=16, select_on="last")
        trainer = PICMHTrainer.for_stream(stream, n_bits=8, config=config, expert_prompts=mode, **SMALL)
        trainer.fit_task(stream[0])
        moved = not torch.equal(twin.experts["image_0"], trainer.model.experts["image_0"])
        assert moved is should_move


def test_loss_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    hv = torch.nn.functional.normalize(torch.randn(4, 6, generator=gen), dim=1)
    ht = torch.nn.functional.normalize(torch.randn(4, 6, generator=gen), dim=1)
    labels = (torch.rand(4, 3, generator=gen) > 0.5).float()
    cfg = PICMHConfig()
    loss, terms = picmh_loss(hv, ht, labels, cfg)
    s = 2 / (1 + np.exp(-(labels @ labels.T).numpy() / 16)) - 1
    sim = ((hv @ ht.T).numpy() - s) ** 2
    cos = sum(1 - float(hv[i] @ ht[i]) for i in range(4))
    sv, st = torch.sign(hv), torch.sign(ht)
    sign_cos = sum(1 - float(sv[i] @ st[i]) / 6 for i in range(4))
    quant = float(((hv - sv) ** 2).mean() + ((ht - st) ** 2).mean())
    expected = sim.mean() + 0.001 * cos + 1.0 * sign_cos + 0.1 * quant
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert set(terms) == {"similarity", "cos", "sign_cos", "quantization"}


def test_training_steps_lower_the_loss(stream):
    model = PICMHModel(stream.image_dim, stream.text_dim, n_bits=8, **SMALL)
    model.add_task()
    task = stream[0]
    image, text = torch.tensor(task.train.image), torch.tensor(task.train.text)
    labels = torch.tensor(task.train.labels, dtype=torch.float32)
    model.inputs.fit(image, text)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    cfg = PICMHConfig(beta=0.0)  # the sign term has no gradient; watch the trainable terms
    losses = []
    for _ in range(40):
        loss, _ = picmh_loss(model.hash(image, "image"), model.hash(text, "text"), labels, cfg)
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.7 * losses[0]


def test_protocol_reencodes_every_seen_database(stream, trained):
    sizes = [len(t.database) for t in stream]
    encoded = sum(sum(sizes[: t + 1]) for t in range(len(sizes)))
    assert trained.encoded_db_items == encoded
    summary = trained.summary()
    assert summary["encoder_passes"] == pytest.approx(encoded / sum(sizes))
    assert summary["kept_feature_bytes_per_item"] == 4.0 * (stream.image_dim + stream.text_dim)
    assert summary["bytes_per_item"] == 1
    assert summary["tasks"] == 3
    r = trained.matrix.matrix("t2i")
    assert np.isfinite(r[2]).all()
    assert np.isfinite(r[1, :2]).all()
    assert summary["bwt_t2i"] is not None
    assert 0.0 <= summary["unified_t2i"] <= 1.0


def test_learning_rate_decays_linearly_over_all_tasks(stream):
    trainer = PICMHTrainer.for_stream(stream, n_bits=8, config=PICMHConfig(epochs=10, lr=1e-4, end_lr=5e-5), **SMALL)
    trainer.total_tasks = 5
    assert trainer._lr(0, 0) == pytest.approx(1e-4)
    assert trainer._lr(2, 5) == pytest.approx(1e-4 - 5e-5 * 25 / 50)
    assert trainer._lr(4, 10) == pytest.approx(5e-5)


def test_save_load_gives_identical_codes(tmp_path, stream, trained):
    trained.model.save_pretrained(tmp_path / "picmh")
    loaded = PICMHModel.from_pretrained(tmp_path / "picmh")
    x = stream[2].database.image
    assert loaded.encode(x, "image") == trained.model.encode(x, "image")
    assert loaded.get_config() == trained.model.get_config()


def test_sample_attention_is_batch_independent_and_batch_attention_is_not(stream, trained):
    x = stream[0].query.text
    whole = trained.model.encode(x, "text")
    assert Codes.concatenate([trained.model.encode(x[i : i + 1], "text") for i in range(len(x))]) == whole
    released = PICMHModel(stream.image_dim, stream.text_dim, n_bits=8, attention="batch", **SMALL)
    released.add_task()
    released.inputs.fit(torch.tensor(stream[0].train.image), torch.tensor(stream[0].train.text))
    feats = torch.tensor(x)
    with torch.no_grad():
        together = released.hash(feats, "text")[:2]
        alone = released.hash(feats[:2], "text")
    assert not torch.allclose(together, alone)


def test_options_are_validated():
    with pytest.raises(ValueError, match="expert_prompts"):
        PICMHModel(4, 4, n_bits=8, expert_prompts="frozen")
    with pytest.raises(ValueError, match="attention"):
        PICMHModel(4, 4, n_bits=8, attention="pool")
    with pytest.raises(ValueError, match="selection"):
        PICMHModel(4, 4, n_bits=8, selection="oracle")
    with pytest.raises(TypeError, match="hidden_dims"):
        PICMHModel(4, 4, n_bits=8, hidden_dims=4096)
    with pytest.raises(ValueError, match="select_on"):
        PICMHConfig(select_on="train")
    with pytest.raises(ValueError, match="gamma"):
        PICMHConfig(gamma=float("nan"))
    with pytest.raises(TypeError, match="config: expected a PICMHConfig"):
        PICMHTrainer(PICMHModel(4, 4, n_bits=8, **SMALL), config={"epochs": 1})  # type: ignore[arg-type]


def test_selection_over_all_pools(stream):
    model = PICMHModel(stream.image_dim, stream.text_dim, n_bits=8, selection="all", **SMALL)
    model.add_task()
    model.add_task()
    x = torch.randn(5, 16)
    pool = torch.cat([model.experts["image_0"], model.experts["image_1"]])
    expected = pool[(x @ torch.nn.functional.normalize(pool, dim=1).T).argmax(dim=1)]
    assert torch.equal(model.select(x, "image"), expected)
