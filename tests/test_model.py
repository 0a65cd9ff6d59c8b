"""CrossModalHashModel: data flow, parameter groups, anchors, extension, save/load, errors."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pbeh.codes import Codes
from pbeh.model import CONFIG_NAME, WEIGHTS_NAME, CrossModalHashModel
from pbeh.serialization import FormatError, save_safetensors

IMAGE_DIM, TEXT_DIM = 24, 12
HIDDEN = (32, 32)


def make_model(image_dim: int = IMAGE_DIM, text_dim: int = TEXT_DIM, *, n_bits: int = 8, **kwargs):
    kwargs.setdefault("hidden_dims", HIDDEN)
    kwargs.setdefault("branch_hidden_dims", (16,))
    pool_kwargs = {"num_heads": 4, **kwargs.pop("pool_kwargs", {})}
    return CrossModalHashModel(image_dim, text_dim, n_bits=n_bits, pool_kwargs=pool_kwargs, **kwargs)


def feats(n: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def train(model: CrossModalHashModel, steps: int = 3, seed: int = 0) -> None:
    """A few AdamW steps (weight decay on) on every parameter group."""
    params = model.head_parameters() + model.projection_parameters() + model.prompt_parameters(model.n_tasks - 1)
    opt = torch.optim.AdamW(params, lr=0.02, weight_decay=0.1)
    img, txt = feats(32, model.image_dim, seed), feats(32, model.text_dim, seed + 1)
    for _ in range(steps):
        opt.zero_grad()
        hv, ht = model(img, "image"), model(txt, "text")
        (1 - (hv * ht).sum(1)).sum().add(model.anchor_codes(0).abs().sum()).backward()
        opt.step()


def grown_model() -> CrossModalHashModel:
    """Two tasks, three extensions (frozen and not), some training in between."""
    model = make_model(n_bits=8)
    model.add_task(n_train=900)
    train(model, seed=1)
    model.extend(2)
    model.add_task(2, init="kmeans", image_features=feats(30, IMAGE_DIM, 5), text_features=feats(30, TEXT_DIM, 6))
    train(model, seed=2)
    model.extend(3, freeze_old=True)
    train(model, seed=3)
    model.extend(1)
    train(model, seed=4)
    return model


# ------------------------------------------------------------------------------------------- data flow
def test_maps_identity_or_linear():
    model = make_model(24, 12)
    assert model.dim == 24
    assert isinstance(model.image_proj, torch.nn.Identity)
    assert isinstance(model.text_proj, torch.nn.Linear)
    assert model.text_proj.weight.shape == (24, 12)
    equal = make_model(16, 16)
    assert isinstance(equal.image_proj, torch.nn.Identity)
    assert isinstance(equal.text_proj, torch.nn.Identity)
    assert equal.projection_parameters() == []
    wide = make_model(24, 12, dim=32)
    assert isinstance(wide.image_proj, torch.nn.Linear)
    assert wide.image_proj.weight.shape == (32, 24)
    assert wide.hasher.in_dim == 64


def test_feature_scale_and_prompt_scale_agree():
    model = make_model(512, 12, pool_kwargs={"num_heads": 8})
    assert model.feature_norm == pytest.approx(math.sqrt(512))
    assert model.pool.init_std == pytest.approx(1.0)
    model.add_task(300)
    x_img = model.project(feats(200, 512) * 7, "image").detach()  # identity map: exactly the feature norm
    assert torch.allclose(x_img.norm(dim=1), torch.full((200,), math.sqrt(512)), rtol=1e-5)
    x_txt = model.project(feats(200, 12), "text").detach()  # the Linear map preserves the norm in expectation
    assert x_txt.norm(dim=1).mean().item() == pytest.approx(math.sqrt(512), rel=0.05)
    prompt_norm = model.pool.prompts(0).detach().norm(dim=1).mean().item()
    assert prompt_norm == pytest.approx(math.sqrt(512), rel=0.05)  # prompts at the features' norm

    unit = make_model(feature_norm=1.0)
    assert unit.pool.init_std == pytest.approx(1 / math.sqrt(24))
    assert make_model(feature_norm=1.0, pool_kwargs={"init_std": 0.5}).pool.init_std == 0.5
    assert make_model(normalize_features=False).pool.init_std == pytest.approx(1 / math.sqrt(24))


@pytest.mark.parametrize(("image_dim", "text_dim"), [(16, 16), (24, 12)])
def test_forward_matches_manual_path(image_dim, text_dim):
    model = make_model(image_dim, text_dim)
    model.add_task(3)
    for modality, width in (("image", image_dim), ("text", text_dim)):
        f = feats(10, width)
        h, z = model(f, modality, return_z=True)
        x = model._map(modality)(F.normalize(f, dim=1) * math.sqrt(model.dim))
        assert torch.allclose(z[:, : model.dim], x)
        assert torch.allclose(z[:, model.dim :], model.pool(x, modality))
        assert torch.allclose(h, model.hasher(z, modality))
        assert torch.allclose(model.hash_from_z(z, modality), h)
        assert torch.allclose(h.norm(dim=1), torch.ones(10), atol=1e-6)
        assert model.encode(f, modality) == Codes.from_signs(h.detach().numpy())


def test_cross_head_distillation_path():
    model = make_model()
    model.add_task(3)
    _, z_img = model(feats(6, IMAGE_DIM), "image", return_z=True)
    assert model.hash_from_z(z_img, "text").shape == (6, 8)
    assert not torch.allclose(model.hash_from_z(z_img, "text"), model.hash_from_z(z_img, "image"))


def test_normalize_features():
    model = make_model()
    model.add_task(3)
    f = feats(10, TEXT_DIM)
    assert model.encode(f, "text") == model.encode(f * 50, "text")
    raw = make_model(normalize_features=False)
    raw.add_task(3)
    assert torch.allclose(raw.project(f, "text"), raw.text_proj(f))
    assert not torch.allclose(raw(f, "text"), raw(f * 50, "text"))


def test_encode_batch_independent_by_default_and_not_in_batch_mode():
    model = make_model()
    model.add_task(4)
    f = feats(64, IMAGE_DIM)
    whole = model.encode(f, "image", batch_size=64)
    assert model.encode(f, "image", batch_size=1) == whole
    assert model.encode(f, "image", batch_size=5) == whole
    ref = make_model(pool_kwargs={"attention": "batch"})
    ref.add_task(4)
    with torch.no_grad():
        alone = torch.cat([ref(f[i : i + 1], "image") for i in range(64)])
        together = ref(f, "image")
    assert not torch.allclose(alone, together, atol=1e-4)


def test_encode_restores_training_flag_and_accepts_numpy():
    model = make_model()
    model.add_task(2)
    f = feats(5, TEXT_DIM)
    model.train()
    assert model.encode(f.numpy(), "text") == model.encode(f.double(), "text")
    assert model.training
    model.eval()
    model.encode(f, "text")
    assert not model.training


def test_seeds():
    f = feats(30, IMAGE_DIM)

    def codes(seed):
        m = make_model(seed=seed)
        m.add_task(3)
        return m.encode(f, "image")

    assert codes(7) == codes(7)
    assert codes(7) != codes(8)


# ----------------------------------------------------------------------------------- tasks and anchors
def test_add_task_adaptive_and_kmeans_on_projected_features():
    model = make_model()
    assert model.add_task(n_train=1201, samples_per_prompt=400) == 0
    assert model.pool_sizes == [4]
    assert model.n_tasks == 1
    centers = feats(2, TEXT_DIM, seed=3) * 3
    gen = torch.Generator().manual_seed(4)
    txt = torch.cat([c + 0.01 * torch.randn(20, TEXT_DIM, generator=gen) for c in centers])
    model.add_task(2, init="kmeans", text_features=txt.numpy())
    projected_centers = model.project(centers, "text").detach()
    rows = model.pool.prompts(1).detach()
    assert torch.cdist(rows, projected_centers).min(dim=1).values.max() < 0.05 * math.sqrt(model.dim)
    assert sorted(torch.cdist(rows, projected_centers).argmin(dim=1).tolist()) == [0, 1]
    assert not model.pool.pools[0].requires_grad
    assert model.pool.pools[1].requires_grad


def test_add_task_errors():
    model = make_model()
    with pytest.raises(ValueError, match=r"features: expected shape \(batch, 24\) for image features, got \(5, 12\)"):
        model.add_task(2, init="kmeans", image_features=feats(5, 12))
    with pytest.raises(ValueError, match=r"text_features: expected at least one feature row"):
        model.add_task(2, init="kmeans", text_features=torch.zeros(0, TEXT_DIM))
    with pytest.raises(ValueError, match=r"n_prompts: give n_prompts, or n_train"):
        model.add_task()
    with pytest.raises(ValueError, match=r"init: expected one of \['normal', 'kmeans'\]"):
        model.add_task(2, init="orthogonal")
    assert model.n_tasks == 0


@pytest.mark.parametrize("sharing", ["shared", "specific"])
def test_anchor_codes_brute_force_and_gradients(sharing):
    model = make_model(pool_kwargs={"sharing": sharing})
    model.add_task(3)
    model.add_task(2)
    anchors = model.anchor_codes(0)
    assert anchors.shape == (6, 8)
    for k, m in enumerate(("image", "text")):
        p = model.pool.prompts(0, m)
        a = model.pool.attn[m](p, p, p)[0]
        expected = F.normalize(model.hasher.logits(torch.cat([a, a], 1), m), dim=1)
        assert torch.allclose(anchors[3 * k : 3 * k + 3], expected, atol=1e-6)
    anchors.sum().backward()
    assert model.pool.attn["image"].in_proj_weight.grad is not None
    assert model.hasher.heads["text"][0].blocks[0].weight.grad is not None
    assert model.pool.pools[0].grad is None  # frozen task-0 prompts
    model.extend(2)
    assert model.anchor_codes(1).shape == (4, 10)


# ------------------------------------------------------------------------------------ parameter groups
def test_parameter_groups_partition_trainable_parameters():
    model = make_model()
    model.add_task(3)
    model.add_task(3)
    model.extend(2, freeze_old=True)
    groups = [model.head_parameters(), model.projection_parameters(), model.prompt_parameters(1)]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in model.attention_parameters()} <= set(ids)
    assert model.prompt_parameters(0)[0].requires_grad is False


# ------------------------------------------------------------------------------------------- extension
@pytest.mark.parametrize("freeze_old", [False, True])
def test_extend_keeps_codes_prefix(freeze_old):
    model = make_model()
    model.add_task(3)
    f = feats(40, IMAGE_DIM)
    stored = model.encode(f, "image")
    model.extend(3, freeze_old=freeze_old)
    assert model.n_bits == 11
    assert model.width_history == [8, 11]
    assert model.frozen_history == [freeze_old]
    assert model.encode(f, "image").truncate(8) == stored
    assert model.prefix_drift(stored, f, "image") == 0.0


def test_freeze_old_keeps_head_bits_for_fixed_z_while_model_trains():
    model = make_model()
    model.add_task(3)
    model.extend(4, freeze_old=True)
    z = torch.randn(20, 2 * model.dim)
    before = model.hasher.logits(z, "text").detach()
    train(model, steps=4)
    after = model.hasher.logits(z, "text").detach()
    assert torch.equal(after[:, :8], before[:, :8])
    assert not torch.allclose(after[:, 8:], before[:, 8:])


# ----------------------------------------------------------------------------------------- save / load
def test_save_load_after_three_extensions_gives_identical_codes(tmp_path):
    model = grown_model()
    assert model.width_history == [8, 10, 13, 14]
    assert model.frozen_history == [False, True, False]
    model.save_pretrained(tmp_path / "m")
    loaded = CrossModalHashModel.from_pretrained(tmp_path / "m")
    assert not loaded.training
    assert loaded.width_history == model.width_history
    assert loaded.pool_sizes == model.pool_sizes == [3, 2]
    for m, width in (("image", IMAGE_DIM), ("text", TEXT_DIM)):
        f = feats(50, width, seed=11)
        assert loaded.encode(f, m) == model.encode(f, m)
    assert torch.equal(loaded.anchor_codes(0), model.anchor_codes(0))
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]
    config = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert config["pool_sizes"] == [3, 2]
    assert config["pool_inits"] == ["normal", "kmeans"]
    assert config["format_version"] == 1
    assert config["pbeh_kind"] == "model"
    assert "pbeh_version" in config


def test_save_load_save_identical_bytes(tmp_path):
    model = grown_model()
    model.save_pretrained(tmp_path / "a")
    CrossModalHashModel.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_save_load_reference_options_and_float64(tmp_path):
    model = make_model(
        16,
        16,
        normalize_features=False,
        pool_kwargs={
            "attention": "batch",
            "selection": "all",
            "sharing": "specific",
            "init_std": 1.0,
            "task_seeds": "same",
        },
    )
    model.add_task(2)
    model.add_task(3)
    model = model.double()
    model.save_pretrained(tmp_path)
    loaded = CrossModalHashModel.from_pretrained(tmp_path)
    assert loaded.dtype == torch.float64
    assert loaded.get_config() == model.get_config()
    f = feats(20, 16).double()
    assert loaded.encode(f, "text") == model.encode(f, "text")


def test_loaded_model_keeps_training(tmp_path):
    model = grown_model()
    model.save_pretrained(tmp_path)
    loaded = CrossModalHashModel.from_pretrained(tmp_path).train()
    z = torch.randn(10, 2 * loaded.dim)
    frozen = loaded.hasher.logits(z, "image").detach()[:, :10]
    train(loaded, steps=2)  # the optimiser is built from the reloaded groups
    assert torch.equal(loaded.hasher.logits(z, "image").detach()[:, :10], frozen)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FormatError, match=r"no saved model at .*not a directory"):
        CrossModalHashModel.from_pretrained(tmp_path / "nothing")
    model = make_model()
    model.add_task(2)
    model.save_pretrained(tmp_path / "ok")

    def variant(name):
        d = tmp_path / name
        shutil.copytree(tmp_path / "ok", d)
        return d

    d = variant("no_config")
    (d / CONFIG_NAME).unlink()
    with pytest.raises(FormatError, match=r"model config not found"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("no_weights")
    (d / WEIGHTS_NAME).unlink()
    with pytest.raises(FormatError, match=r"file not found: .*model.safetensors"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("version")
    cfg = json.loads((d / CONFIG_NAME).read_text())
    (d / CONFIG_NAME).write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(FormatError, match=r"has format_version 99; this pbeh .* reads format_version 1"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("kind")
    (d / CONFIG_NAME).write_text(json.dumps({**cfg, "pbeh_kind": "index"}))
    with pytest.raises(FormatError, match=r"describes a pbeh 'index', expected 'model'"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("missing_key")
    (d / CONFIG_NAME).write_text(json.dumps({k: v for k, v in cfg.items() if k != "width_history"}))
    with pytest.raises(FormatError, match=r"model config: missing key 'width_history'"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("bad_value")
    (d / CONFIG_NAME).write_text(json.dumps({**cfg, "pool": {**cfg["pool"], "attention": "global"}}))
    with pytest.raises(FormatError, match=r"model config: invalid: attention: expected one of"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("not_json")
    (d / CONFIG_NAME).write_text("{")
    with pytest.raises(FormatError, match=r"is not valid JSON"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("wider")  # config says 10 bits, the weights hold 8
    (d / CONFIG_NAME).write_text(json.dumps({**cfg, "n_bits": 10, "width_history": [8, 10], "frozen_history": [False]}))
    with pytest.raises(FormatError, match=r"unexpected tensors|missing tensors .*blocks\.1"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("other_widths")  # same tensor names, other shapes
    (d / CONFIG_NAME).write_text(json.dumps({**cfg, "n_bits": 9, "width_history": [9]}))
    with pytest.raises(FormatError, match=r"has shape \(8, 32\) but config.json describes \(9, 32\).*do not belong"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("pools")
    (d / CONFIG_NAME).write_text(json.dumps({**cfg, "pool_sizes": [3], "pool_inits": ["normal"]}))
    with pytest.raises(FormatError, match=r"pool\.pools\.0.*has shape \(2, 24\) but config.json describes \(3, 24\)"):
        CrossModalHashModel.from_pretrained(d)

    d = variant("foreign_weights")
    save_safetensors(d / WEIGHTS_NAME, {"x": np.zeros(2, np.float32)}, kind="index", format_version=1)
    with pytest.raises(FormatError, match=r"holds a pbeh 'index', expected a pbeh 'model'"):
        CrossModalHashModel.from_pretrained(d)


def test_refuses_pickled_weights(tmp_path):
    model = make_model()
    model.add_task(2)
    model.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / WEIGHTS_NAME)  # a pickle where safetensors belongs
    with pytest.raises(FormatError, match=r"not a (valid )?safetensors file|not written by pbeh"):
        CrossModalHashModel.from_pretrained(tmp_path)


def test_save_writes_weights_before_config(tmp_path, monkeypatch):
    import pbeh.model as model_module

    model = make_model()
    model.add_task(2)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(model_module, "save_safetensors", boom)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / CONFIG_NAME).exists()  # no config pointing at missing weights


def test_save_into_a_file_path_fails(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match=r"directory: expected a directory path"):
        make_model().save_pretrained(tmp_path / "file")


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_bits": 0}, ValueError, r"n_bits: expected a positive int, got 0"),
        ({"dim": 0}, ValueError, r"dim: expected a positive int, got 0"),
        ({"dim": 30}, ValueError, r"num_heads: must divide dim=30, got 4"),
        ({"normalize_features": 1}, TypeError, r"normalize_features: expected a bool, got int"),
        ({"feature_norm": 0.0}, ValueError, r"feature_norm: expected a positive float or None, got 0.0"),
        ({"seed": None}, TypeError, r"seed: expected an int, got NoneType"),
        ({"pool_kwargs": {"dim": 8}}, ValueError, r"pool_kwargs: 'dim' is set by the model"),
        ({"pool_kwargs": {"sharing": "mixed"}}, ValueError, r"sharing: expected one of"),
        ({"hidden_dims": (0,)}, ValueError, r"hidden_dims\[0\]: expected a positive int, got 0"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_model(**kwargs)
    with pytest.raises(TypeError, match=r"pool_kwargs: expected a mapping of PromptPool options, got list"):
        CrossModalHashModel(8, 8, n_bits=4, pool_kwargs=[("num_heads", 2)])
    with pytest.raises(ValueError, match=r"image_dim: expected a positive int, got -1"):
        CrossModalHashModel(-1, 8, n_bits=4)


def test_call_errors():
    model = make_model()
    with pytest.raises(RuntimeError, match=r"no task pool yet: call add_task\(\)"):
        model(feats(2, IMAGE_DIM), "image")
    model.add_task(2)
    with pytest.raises(ValueError, match=r"modality: expected one of \['image', 'text'\], got 'audio'"):
        model(feats(2, IMAGE_DIM), "audio")
    with pytest.raises(ValueError, match=r"features: expected shape \(batch, 12\) for text features, got \(2, 24\)"):
        model(feats(2, IMAGE_DIM), "text")
    with pytest.raises(TypeError, match=r"features: expected a torch.Tensor of shape \(batch, 24\) for image"):
        model(np.zeros((2, IMAGE_DIM), np.float32), "image")
    with pytest.raises(TypeError, match=r"features: expected dtype torch.float32 \(the model's\), got torch.float64"):
        model(feats(2, IMAGE_DIM).double(), "image")
    with pytest.raises(ValueError, match=r"features: expected a tensor on cpu"):
        model(torch.zeros(2, IMAGE_DIM, device="meta"), "image")
    with pytest.raises(TypeError, match=r"features: expected floating-point features, got dtype torch.int64"):
        model.encode(torch.zeros(2, IMAGE_DIM, dtype=torch.long), "image")
    with pytest.raises(ValueError, match=r"batch_size: expected a positive int, got 0"):
        model.encode(feats(2, IMAGE_DIM), "image", batch_size=0)
    with pytest.raises(IndexError, match=r"task: expected 0 <= task < 1"):
        model.anchor_codes(1)
    with pytest.raises(ValueError, match=r"stored: codes of 9 bits are longer than the current 8-bit codes"):
        model.prefix_drift(Codes.from_bool(np.ones((2, 9), bool)), feats(2, IMAGE_DIM), "image")


def test_prefix_drift_through_full_path():
    model = make_model()
    model.add_task(3)
    f = feats(30, TEXT_DIM)
    stored = model.encode(f, "text")
    train(model, steps=5)
    now = model.encode(f, "text")
    expected = np.mean(now.to_bool() != stored.to_bool())
    assert model.prefix_drift(stored, f, "text") == pytest.approx(expected)
    assert math.isfinite(expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip(tmp_path):
    model = grown_model().cuda()
    f = feats(20, TEXT_DIM)
    assert model.encode(f.numpy(), "text") == model.cpu().encode(f, "text")
    model.cuda().add_task(2, init="kmeans", text_features=f.cuda())
    model.extend(2, freeze_old=True)
    assert model.pool.pools[-1].device.type == "cuda"
    model.save_pretrained(tmp_path)
    loaded = CrossModalHashModel.from_pretrained(tmp_path, map_location="cuda")
    assert loaded.device.type == "cuda"
    assert loaded.encode(f, "text") == model.encode(f, "text")


def test_feature_centering_is_fitted_once_and_saved(tmp_path):
    rng = np.random.default_rng(0)
    first_image = rng.random((20, 24)).astype(np.float32) + 3.0  # non-negative, with a large common mean
    first_text = rng.random((20, 12)).astype(np.float32)
    model = CrossModalHashModel(24, 12, n_bits=8, hidden_dims=(16,), pool_kwargs={"num_heads": 4})
    assert model.center_features
    model.add_task(n_prompts=2, image_features=first_image, text_features=first_text)
    np.testing.assert_allclose(model.image_mean.numpy(), first_image.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(model.text_mean.numpy(), first_text.mean(axis=0), rtol=1e-6)
    assert model.centered_on_task == 0
    # a later task does not refit: codes stored for the first task keep their meaning
    model.add_task(n_prompts=2, image_features=first_image + 10.0, text_features=first_text)
    np.testing.assert_allclose(model.image_mean.numpy(), first_image.mean(axis=0), rtol=1e-6)
    # centring is applied before normalisation: a feature equal to the mean maps to the zero vector
    x = model.project(model.image_mean[None, :].clone(), "image")
    assert torch.allclose(x, model.image_proj(torch.zeros(1, 24)), atol=1e-6)
    model.save_pretrained(tmp_path / "m")
    loaded = CrossModalHashModel.from_pretrained(tmp_path / "m")
    assert loaded.centered_on_task == 0
    assert torch.equal(loaded.image_mean, model.image_mean)
    assert loaded.encode(first_image, "image") == model.encode(first_image, "image")
    plain = CrossModalHashModel(24, 12, n_bits=8, hidden_dims=(16,), center_features=False)
    plain.add_task(n_prompts=2, image_features=first_image, text_features=first_text)
    assert plain.centered_on_task is None
    assert float(plain.image_mean.abs().sum()) == 0.0
