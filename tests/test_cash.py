"""CASH on pbeh's harness: network pieces, losses against brute force, the protocol, save/load, batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pbeh.codes import Codes
from pbeh.data import synthetic_stream
from pbeh.metrics import map_at_k
from pbeh.models._peer_protocol import FeatureInput, reference_inputs, unified_score
from pbeh.models.cash import CASHConfig, CASHModel, CASHTrainer, losses
from pbeh.models.cash.model import fuse
from pbeh.serialization import FormatError

torch.set_num_threads(1)

SMALL = {"feature_dim": 16, "hidden_dim": 32, "prompt_length": 3, "num_heads": 2}


@pytest.fixture(scope="module")
def stream():
    return synthetic_stream(n_tasks=2, classes_per_task=2, items_per_class=20, seed=1)


@pytest.fixture(scope="module")
def trained(stream):
    trainer = CASHTrainer.for_stream(stream, n_bits=8, config=CASHConfig(epochs=3, lr=1e-3, batch_size=16), **SMALL)
    trainer.fit(stream)
    return trainer


def test_model_shapes_and_tasks():
    model = CASHModel(12, 6, n_bits=8, **SMALL)
    with pytest.raises(RuntimeError, match="add_task"):
        model.encode(torch.randn(2, 12), "image")
    assert model.add_task() == 0
    assert model.add_task() == 1
    out = model.train_outputs(torch.randn(5, 12), torch.randn(5, 6), 1)
    for key in ("fine_image", "coarse_image", "fine_text", "coarse_text", "mask"):
        assert out[key].shape == (5, 8)
    assert out["gate_image"].shape == (5, 1)
    assert out["z_text"].shape == (5, 16)
    # earlier tasks' prompts and discriminator are frozen, the newest trains
    assert not any(p.requires_grad for p in model.task_parameters(0))
    assert all(p.requires_grad for p in model.task_parameters(1))
    assert set(model.predicted_tasks(torch.randn(7, 6), "text").tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="task: expected a task index below n_tasks=2, got 5"):
        model.encode(torch.randn(2, 12), "image", task=5)


def test_enhance_equals_multihead_attention_over_repeated_prompts():
    model = CASHModel(16, 16, n_bits=8, input_transform="identity", **SMALL)
    for _ in range(3):
        model.add_task()
    x = torch.randn(7, 16)
    tasks = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    with torch.no_grad():
        for t in range(3):
            prompts = model.prompts[f"shared_{t}"].unsqueeze(0).expand(7, -1, -1)
            expected = model.attention(x.unsqueeze(1), prompts, prompts)[0].squeeze(1)
            torch.testing.assert_close(model.enhance(x, "image", t), expected)
        per_row = torch.stack([model.prompts[f"shared_{int(t)}"] for t in tasks])
        expected = model.attention(x.unsqueeze(1), per_row, per_row)[0].squeeze(1)
        torch.testing.assert_close(model.enhance(x, "text", tasks), expected)


def test_fuse_follows_the_mask():
    fine, coarse = torch.randn(4, 8), torch.randn(4, 8)
    assert torch.allclose(fuse(fine, coarse, torch.ones(4, 8)), torch.tanh(coarse))
    assert torch.allclose(fuse(fine, coarse, -torch.ones(4, 8)), torch.tanh(fine))


def test_inferred_mode_routes_by_discriminator_without_gate():
    model = CASHModel(16, 16, n_bits=8, input_transform="identity", **SMALL)
    model.add_task()
    model.add_task()
    x = torch.randn(6, 16)
    with torch.no_grad():  # make task 1's discriminator win everywhere
        model.discriminators[1].bias.fill_(50.0)
        model.discriminators[0].bias.fill_(-50.0)
        expected_e = model.enhance(x, "image", 1)
        fine, coarse = model.branches(x + expected_e, "image")
        expected = fuse(fine, coarse, model.mask_net(expected_e))
        assert torch.allclose(model.hash(x, "image"), expected, atol=1e-6)
        gated = model.hash(x, "image", task=1)  # gate d_1(x) ~ 1 here, so oracle matches too
        assert torch.allclose(gated, expected, atol=1e-5)


def test_losses_match_brute_force():
    gen = torch.Generator().manual_seed(0)
    h, buf = torch.randn(5, 4, generator=gen), torch.randn(9, 4, generator=gen)
    lb, la = (torch.rand(5, 3, generator=gen) > 0.5).float(), (torch.rand(9, 3, generator=gen) > 0.5).float()
    total = 0.0
    for i in range(5):
        for j in range(9):
            ni, nj = lb[i].norm() + 1e-8, la[j].norm() + 1e-8
            total += (max(0.0, float(h[i] @ buf[j])) - float(lb[i] @ la[j] / (ni * nj))) ** 2
    assert losses.coarse_similarity(lb, la, h, buf).item() == pytest.approx(total / 45, rel=1e-5)

    a, b = F.normalize(torch.randn(4, 6, generator=gen)), F.normalize(torch.randn(4, 6, generator=gen))
    logits = (a @ b.T / 0.07).numpy()
    row = np.mean([np.log(np.exp(logits[i]).sum()) - logits[i, i] for i in range(4)])
    col = np.mean([np.log(np.exp(logits[:, i]).sum()) - logits[i, i] for i in range(4)])
    assert losses.info_nce(a, b).item() == pytest.approx((row + col) / 2, rel=1e-5)

    assert losses.bit_balance(torch.full((3, 2), 10.0)).item() == pytest.approx(np.tanh(10.0) ** 2, rel=1e-6)
    assert losses.quantization(torch.tensor([[0.5, -1.0]])).item() == pytest.approx(0.125)
    sim = (lb @ la.T > 0).float()
    expected = ((h @ buf.T - 4 * sim) ** 2).mean()
    assert losses.exclude_loss(h, buf, sim, 4).item() == pytest.approx(expected.item(), rel=1e-6)


def test_training_steps_lower_the_loss(stream):
    trainer = CASHTrainer.for_stream(stream, n_bits=8, config=CASHConfig(lr=1e-3), **SMALL)
    model = trainer.model
    model.add_task()
    task = stream[0]
    image, text = torch.tensor(task.train.image), torch.tensor(task.train.text)
    labels = torch.tensor(task.train.labels, dtype=torch.float32)
    model.inputs.fit(image, text)
    buffers = {k: torch.randn(len(image), 8) for k in ("fused_image", "fused_text", "coarse_image", "coarse_text")}
    optimizer = trainer._optimizer(0)
    rows = torch.arange(len(image))
    first = None
    for _ in range(40):
        loss, _ = trainer._step(model, rows, image, text, labels, buffers, None)
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final, terms = trainer._step(model, rows, image, text, labels, buffers, None)
    assert float(final.detach()) < 0.8 * first
    assert set(terms) == {"quantization", "fine", "coarse", "task", "distill"}


def test_protocol_stores_codes_once_and_fills_both_modes(stream, trained):
    assert trained.encoded_db_items == sum(len(t.database) for t in stream)
    # stored codes of task 0 are what the model gave right after task 0; task 1 did not re-encode them
    assert trained.stored[0].image.n_bits == 8
    assert len(trained.stored[0].image) == len(stream[0].database)
    for mode in ("inferred", "oracle"):
        s = trained.summary(mode)
        assert s["mode"] == mode
        assert s["encoder_passes"] == 1.0
        assert s["bytes_per_item"] == 1
        assert np.isfinite(trained.matrices[mode].matrix("i2t")[1, :2]).all()
        assert 0.0 <= s["unified_i2t"] <= 1.0
        assert s["bwt_i2t"] is not None
    acc = trained.task_accuracy()
    assert 0.0 <= acc["image"] <= 1.0
    assert 0.0 <= acc["text"] <= 1.0
    # R[1, 0] in oracle mode: queries of task 0 encoded with task 0 against the stored database codes of task 0
    q = trained.model.encode(stream[0].query.image, "image", task=0)
    labels_q, labels_db = stream[0].query.labels, stream[0].database.labels
    expected = map_at_k(q, trained.stored[0].text, labels_q, labels_db, k=1000, ties="average")
    assert trained.matrices["oracle"].matrix("i2t")[1, 0] == pytest.approx(expected)
    with pytest.raises(ValueError, match="mode"):
        trained.summary("hidden")


def test_stored_codes_are_not_reencoded():
    stream = synthetic_stream(n_tasks=2, classes_per_task=2, items_per_class=15, seed=4)
    trainer = CASHTrainer.for_stream(stream, n_bits=8, config=CASHConfig(epochs=2, lr=1e-2, batch_size=16), **SMALL)
    trainer.fit_task(stream[0])
    after_first = Codes.from_packed(trainer.stored[0].image.packed.copy(), 8)
    trainer.fit_task(stream[1])
    assert trainer.stored[0].image == after_first
    assert trainer.model.encode(stream[0].database.image, "image", task=0) != after_first  # the model moved


def test_save_load_gives_identical_codes(tmp_path, stream, trained):
    trained.model.save_pretrained(tmp_path / "cash")
    loaded = CASHModel.from_pretrained(tmp_path / "cash")
    x = stream[1].query.text
    for task in (None, 0, 1):
        assert loaded.encode(x, "text", task=task) == trained.model.encode(x, "text", task=task)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"pbeh_kind": "model"}')
    with pytest.raises(FormatError, match="cash-model"):
        CASHModel.from_pretrained(tmp_path / "other")


def test_codes_do_not_depend_on_the_batch(stream, trained):
    x = stream[0].query.image
    for task in (None, 0):
        whole = trained.model.encode(x, "image", task=task)
        one_by_one = Codes.concatenate([trained.model.encode(x[i : i + 1], "image", task=task) for i in range(len(x))])
        assert whole == one_by_one
        assert trained.model.encode(x, "image", task=task, batch_size=3) == whole


def test_options_are_validated():
    with pytest.raises(ValueError, match="select_on"):
        CASHConfig(select_on="best")
    with pytest.raises(ValueError, match="ties"):
        CASHConfig(ties="random")
    with pytest.raises(ValueError, match="coarse_weight"):
        CASHConfig(coarse_weight=-1.0)
    with pytest.raises(ValueError, match="prompt_sharing"):
        CASHModel(4, 4, n_bits=8, prompt_sharing="both")
    with pytest.raises(ValueError, match="text_dim: transform='identity' needs features of width feature_dim=16"):
        CASHModel(16, 5, n_bits=8, input_transform="identity", **SMALL)
    with pytest.raises(ValueError, match="num_heads"):
        CASHModel(4, 4, n_bits=8, feature_dim=10, num_heads=3)
    with pytest.raises(TypeError, match="model: expected a CASHModel"):
        CASHTrainer(object())  # type: ignore[arg-type]


def test_separate_prompts_per_modality():
    model = CASHModel(8, 8, n_bits=4, prompt_sharing="separate", **SMALL)
    model.add_task()
    assert {"image_0", "text_0"} == set(model.prompts.keys())


def test_feature_input_centres_on_the_first_fit_only():
    inputs = FeatureInput(3, 3, feature_dim=3, transform="pbeh")
    inputs.fit(torch.ones(4, 3), torch.zeros(4, 3))
    inputs.fit(torch.full((4, 3), 5.0), torch.ones(4, 3))
    assert torch.equal(inputs.image_mean, torch.ones(3))
    with pytest.raises(ValueError, match=r"features: expected text features of shape \(B, 3\), got \(2, 4\)"):
        inputs(torch.zeros(2, 4), "text")
    out = inputs(torch.tensor([[2.0, 1.0, 1.0]]), "image")
    assert torch.allclose(out, torch.tensor([[3**0.5, 0.0, 0.0]]))


def test_reference_inputs_match_a_brute_force_pca():
    stream = synthetic_stream(n_tasks=2, classes_per_task=2, items_per_class=15, image_dim=20, text_dim=6, seed=2)
    out = reference_inputs(stream, dim=8)
    train = np.concatenate([t.train.image for t in stream]).astype(np.float64)
    mean = train.mean(axis=0)
    _values, vectors = np.linalg.eigh(np.cov(train - mean, rowvar=False))
    components = vectors[:, ::-1][:, :8].T  # top 8 by variance
    for c in components:
        c *= np.sign(c[np.argmax(np.abs(c))])
    x = (stream[1].query.image.astype(np.float64) - mean) @ components.T
    x = x / np.linalg.norm(x, axis=1, keepdims=True) * np.sqrt(8)
    np.testing.assert_allclose(out[1].query.image, x, atol=1e-4)
    # the text side has 6 < 8 columns: zero-padded
    assert out.text_dim == 8
    assert np.all(out[0].train.text[:, 6:] == 0)
    np.testing.assert_allclose(np.linalg.norm(out[0].database.text, axis=1), np.sqrt(8), rtol=1e-5)


def test_unified_score_matches_map_over_the_concatenated_database():
    rng = np.random.default_rng(0)
    q = [(Codes.from_bool(rng.random((6, 8)) > 0.5), Codes.from_bool(rng.random((6, 8)) > 0.5))]
    db = [(Codes.from_bool(rng.random((5, 8)) > 0.5), Codes.from_bool(rng.random((5, 8)) > 0.5)) for _ in range(2)]
    q_labels = [(rng.random((6, 3)) > 0.5).astype(np.uint8)]
    db_labels = [(rng.random((5, 3)) > 0.5).astype(np.uint8) for _ in range(2)]
    ids = [np.arange(5), np.arange(5, 10)]  # ids ascend in database order: id tie order = stable database order
    all_txt = Codes.concatenate([d[1] for d in db])
    all_img = Codes.concatenate([d[0] for d in db])
    labels = np.concatenate(db_labels)
    for ties in ("reference", "average"):
        i2t, t2i, chance = unified_score(q, q_labels, db, ids, db_labels, ties=ties)
        assert i2t == pytest.approx(map_at_k(q[0][0], all_txt, q_labels[0], labels, ties=ties))
        assert t2i == pytest.approx(map_at_k(q[0][1], all_img, q_labels[0], labels, ties=ties))
    assert chance == pytest.approx(((q_labels[0] @ labels.T) > 0).mean())
