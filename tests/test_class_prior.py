"""The class prior (pbeh.class_prior): the Gaussian posterior against a brute-force reference, the codes it gives,
its files, and the trainer's wiring."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pbeh.class_prior import ClassPrior
from pbeh.data import synthetic_stream
from pbeh.extension import FixedSchedule, NeverExtend
from pbeh.losses import LossWeights
from pbeh.model import CrossModalHashModel
from pbeh.serialization import FormatError
from pbeh.trainer import ContinualTrainer, TrainerConfig


def _fitted(rng: np.random.Generator, n_classes=5, dims=(6, 4), n_bits=8, weight=1.0) -> tuple[ClassPrior, dict]:
    prior = ClassPrior(*dims)
    means = {m: rng.normal(size=(n_classes, d)) for m, d in zip(("image", "text"), dims, strict=True)}
    stds = {m: rng.uniform(0.2, 2.0, size=(n_classes, d)) for m, d in zip(("image", "text"), dims, strict=True)}
    codes = rng.choice([-1, 1], size=(n_classes, n_bits))
    prior.fit(means, stds, codes, weight=weight)
    return prior, {"means": means, "stds": stds, "codes": codes}


def _reference_posterior(x: np.ndarray, means: np.ndarray, stds: np.ndarray) -> np.ndarray:
    """Per-class diagonal Gaussian log-likelihoods, normalised over the classes, one query and class at a time."""
    var = stds.astype(np.float64) ** 2
    scales = np.sqrt(var + 1e-3 * var.mean(axis=0) + 1e-12)
    out = np.empty((len(x), len(means)))
    for i, row in enumerate(x.astype(np.float64)):
        loglik = np.array(
            [-0.5 * np.sum(((row - mu) / sc) ** 2) - np.sum(np.log(sc)) for mu, sc in zip(means, scales, strict=True)]
        )
        loglik -= loglik.max()
        out[i] = np.exp(loglik) / np.exp(loglik).sum()
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 7), st.sampled_from(["image", "text"]))
def test_posterior_and_direction_match_a_brute_force_reference(seed, n_classes, modality):
    rng = np.random.default_rng(seed)
    prior, table = _fitted(rng, n_classes=n_classes)
    width = table["means"][modality].shape[1]
    x = rng.normal(scale=1.5, size=(9, width)).astype(np.float32)
    expected = _reference_posterior(x, table["means"][modality], table["stds"][modality])
    got = prior.posterior(torch.as_tensor(x), modality).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    direction = prior(torch.as_tensor(x), modality, n_bits=8).numpy()
    np.testing.assert_allclose(direction, expected @ table["codes"] / np.sqrt(8), atol=1e-5)


def test_the_direction_follows_the_code_length():
    prior, table = _fitted(np.random.default_rng(0), n_bits=8)
    x = torch.as_tensor(table["means"]["image"][:2], dtype=torch.float32)
    full = prior(x, "image", n_bits=8)
    longer = prior(x, "image", n_bits=12)  # bits the table does not have yet: no opinion
    np.testing.assert_allclose(longer[:, :8].numpy(), full.numpy())
    assert torch.all(longer[:, 8:] == 0)
    np.testing.assert_allclose(prior(x, "image", n_bits=5).numpy(), full[:, :5].numpy())


def test_an_empty_or_unweighted_prior_leaves_the_logits_alone():
    logits = torch.randn(4, 8)
    x = torch.randn(4, 6)
    assert ClassPrior(6, 4).combine(logits, x, "image") is logits
    prior, _ = _fitted(np.random.default_rng(1), weight=0.0)
    assert not prior.active
    assert prior.combine(logits, x, "image") is logits


def test_a_sure_posterior_and_a_heavy_weight_give_the_class_centre():
    prior, table = _fitted(np.random.default_rng(2), weight=100.0)
    x = torch.as_tensor(table["means"]["text"], dtype=torch.float32)  # each class's own mean
    combined = prior.combine(torch.randn(len(x), 8), x, "text")
    np.testing.assert_array_equal(np.sign(combined.numpy()), table["codes"])


def test_bad_input_names_the_argument():
    prior = ClassPrior(6, 4)
    ok = {"image": np.zeros((2, 6)), "text": np.zeros((2, 4))}
    with pytest.raises(ValueError, match="codes: expected a 2-D array of ±1"):
        prior.fit(ok, ok, np.zeros((2, 8)), weight=1.0)
    with pytest.raises(ValueError, match="weight: expected finite numbers >= 0"):
        prior.fit(ok, ok, np.ones((2, 8)), weight=float("nan"))
    with pytest.raises(ValueError, match="weight: expected finite numbers >= 0"):
        prior.fit(ok, ok, np.ones((2, 8)), weight={"image": 1.0, "text": -1.0})
    with pytest.raises(ValueError, match="weight: expected a number or a mapping with keys 'image' and 'text'"):
        prior.fit(ok, ok, np.ones((2, 8)), weight={"image": 1.0})
    with pytest.raises(ValueError, match=r"means/stds\['text'\]: expected shape \(2, 4\)"):
        prior.fit(ok, {"image": ok["image"], "text": np.zeros((2, 5))}, np.ones((2, 8)), weight=1.0)
    with pytest.raises(ValueError, match="modality"):
        prior.posterior(torch.zeros(1, 6), "audio")
    with pytest.raises(ValueError, match="class_prior: expected n_classes"):
        prior.resize(-1, 8, 1.0)
    with pytest.raises(ValueError, match="class_prior: expected finite numbers >= 0"):
        TrainerConfig(class_prior=-1.0)
    with pytest.raises(ValueError, match="class_prior: expected a number or a mapping"):
        TrainerConfig(class_prior={"image": 1.0, "audio": 1.0})


def _model_with_prior(weight=1.0) -> CrossModalHashModel:
    model = CrossModalHashModel(6, 4, n_bits=8, hidden_dims=(16,), pool_kwargs={"num_heads": 2})
    model.add_task(n_prompts=2)
    rng = np.random.default_rng(3)
    model.class_prior.fit(
        {"image": rng.normal(size=(3, 6)), "text": rng.normal(size=(3, 4))},
        {"image": np.ones((3, 6)), "text": np.ones((3, 4))},
        rng.choice([-1, 1], size=(3, 8)),
        weight=weight,
    )
    return model.eval()


def test_encode_is_the_sign_of_the_normalised_output_plus_the_weighted_prior():
    model = _model_with_prior(weight=0.7)
    x = torch.randn(11, 6)
    with torch.no_grad():
        h = F.normalize(model.hasher.logits(model._z(x, "image"), "image"), dim=1)
        expected = torch.where(h + 0.7 * model.class_prior(x, "image", n_bits=8) >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(model.encode(x, "image", role="query").to_signs(), expected.numpy())
    stored = torch.where(h >= 0, 1.0, -1.0)  # codes to store: the heads alone
    np.testing.assert_array_equal(model.encode(x, "image").to_signs(), stored.numpy())
    np.testing.assert_array_equal(model.encode(x, "image", role="database").to_signs(), stored.numpy())
    with pytest.raises(ValueError, match="role"):
        model.encode(x, "image", role="index")


def test_the_prior_is_saved_with_the_model(tmp_path):
    model = _model_with_prior()
    model.save_pretrained(tmp_path / "m")
    loaded = CrossModalHashModel.from_pretrained(tmp_path / "m")
    assert loaded.class_prior.get_config() == model.class_prior.get_config()
    x = torch.randn(7, 4)
    assert loaded.encode(x, "text", role="query") == model.encode(x, "text", role="query")


def test_a_model_saved_before_the_prior_loads_without_one(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = CrossModalHashModel(6, 4, n_bits=8, hidden_dims=(16,), pool_kwargs={"num_heads": 2})
    model.add_task(n_prompts=2)
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["class_prior"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    path = tmp_path / "m" / "model.safetensors"
    arrays = load_file(path)
    metadata = {k: v for k, v in _metadata(path).items() if "checksum" not in k}  # an old, unchecked file
    save_file({k: v for k, v in arrays.items() if not k.startswith("class_prior.")}, path, metadata=metadata)
    loaded = CrossModalHashModel.from_pretrained(tmp_path / "m")
    assert not loaded.class_prior.active
    x = torch.randn(5, 6)
    assert loaded.encode(x, "image", role="query") == model.encode(x, "image", role="query")


def _metadata(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return dict(f.metadata())


@pytest.mark.parametrize(
    "prior", [{"n_classes": 10**9, "n_bits": 8, "weight": 1.0}, {"n_classes": -1, "n_bits": 8, "weight": 1.0},
              {"n_classes": 3, "n_bits": 8, "weight": "heavy"}, {"n_classes": 3, "n_bits": 8, "weight": {"image": 1.0}},
              [3, 8]],
)  # fmt: skip
def test_a_damaged_prior_config_is_a_format_error(tmp_path, prior):
    _model_with_prior().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["class_prior"] = prior
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FormatError):
        CrossModalHashModel.from_pretrained(tmp_path / "m")


def _trainer(stream, *, prior=1.0, centers=50.0, policy=None):
    cfg = TrainerConfig(epochs=2, batch_size=32, eval_k=None, eval_every=1, class_prior=prior)
    return ContinualTrainer.for_stream(
        stream, n_bits=8, hidden_dims=(16,), config=cfg, extension_policy=policy or NeverExtend(),
        loss_weights=LossWeights.pbeh(class_centers=centers),
    )  # fmt: skip


def test_the_trainer_fits_the_prior_to_every_class_seen_and_resumes_it(tmp_path):
    stream = synthetic_stream(n_tasks=2, seed=1, multi_label=False)
    trainer = _trainer(stream, policy=FixedSchedule(bits_per_task=4))
    trainer.fit_task(stream[0])
    prior = trainer.model.class_prior
    train = stream[0].train
    first = np.flatnonzero(train.labels.any(axis=0))
    assert prior.n_classes == len(first)
    assert prior.weights == {"image": 1.0, "text": 1.0}
    np.testing.assert_array_equal(prior.codes.numpy(), trainer._centers.centers[first])
    for row, c in enumerate(first):
        mean = train.image[train.labels[:, c] > 0].mean(axis=0)
        np.testing.assert_allclose(prior.image_mean.numpy()[row], mean, rtol=1e-5, atol=1e-6)
    trainer.fit_task(stream[1])
    seen = np.flatnonzero(train.labels.any(axis=0) | stream[1].train.labels.any(axis=0))
    assert trainer.model.class_prior.n_classes == len(seen)
    assert trainer.model.class_prior.codes.shape[1] == trainer.model.n_bits == 12
    trainer.save(tmp_path / "state")
    loaded = ContinualTrainer.load(tmp_path / "state")
    x = stream[0].query.image
    assert loaded.model.encode(x, "image", role="query") == trainer.model.encode(x, "image", role="query")


def test_a_class_in_two_tasks_is_one_row_with_the_mean_of_their_statistics():
    stream = synthetic_stream(n_tasks=2, seed=1, multi_label=False)
    first, second = stream[0], stream[1]
    # the second task also carries the first task's class 0, items copied shifted by 2
    shared = first.train.labels[:, 0] > 0
    extra = first.train.subset(np.flatnonzero(shared))
    extra = dataclasses.replace(extra, image=extra.image + 2.0, ids=extra.ids + 10_000)
    both = dataclasses.replace(second, train=type(extra).concatenate([second.train, extra]))
    trainer = _trainer(stream)
    trainer.fit_task(first)
    trainer.fit_task(both)
    prior = trainer.model.class_prior
    classes = np.flatnonzero(first.train.labels.any(axis=0) | second.train.labels.any(axis=0))
    assert prior.n_classes == len(classes)
    row = int(np.flatnonzero(classes == 0)[0])
    expected = first.train.image[shared].mean(axis=0) + 1.0  # the mean of the two tasks' means
    np.testing.assert_allclose(prior.image_mean.numpy()[row], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("prior", "centers"), [(0.0, 50.0), (1.0, 0.0)])
def test_no_prior_without_its_weight_or_without_centres(prior, centers):
    stream = synthetic_stream(n_tasks=1, seed=1, multi_label=False)
    trainer = _trainer(stream, prior=prior, centers=centers)
    trainer.fit_task(stream[0])
    assert not trainer.model.class_prior.active


def test_a_failed_task_rolls_the_prior_back(monkeypatch):
    stream = synthetic_stream(n_tasks=2, seed=1, multi_label=False)
    trainer = _trainer(stream)
    trainer.fit_task(stream[0])
    before = trainer.model.class_prior.codes.clone()
    assert trainer.model.class_prior.active

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "_train_task", boom)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit_task(stream[1])
    assert torch.equal(trainer.model.class_prior.codes, before)
    assert len(trainer._prototypes) == 1


def test_the_prior_changes_query_codes_only():
    """Training, epoch selection and the stored codes are those of a run without the prior."""
    stream = synthetic_stream(n_tasks=2, seed=4, multi_label=False)
    with_prior, without = _trainer(stream, prior=1.0), _trainer(stream, prior=0.0)
    for trainer in (with_prior, without):
        trainer.fit(stream)
    assert [r.best_epoch for r in with_prior.reports] == [r.best_epoch for r in without.reports]
    ids = np.concatenate([task.database.ids for task in stream])
    assert with_prior.image_index.get_codes(ids) == without.image_index.get_codes(ids)
    assert with_prior.text_index.get_codes(ids) == without.text_index.get_codes(ids)
    x = stream[0].query.image
    assert with_prior.model.encode(x, "image") == without.model.encode(x, "image")
    assert with_prior.model.encode(x, "image", role="query") != without.model.encode(x, "image", role="query")


def test_one_weight_per_modality():
    model = _model_with_prior(weight={"image": 0.7, "text": 0.0})
    x_image, x_text = torch.randn(9, 6), torch.randn(9, 4)
    with torch.no_grad():
        h = F.normalize(model.hasher.logits(model._z(x_image, "image"), "image"), dim=1)
        expected = torch.where(h + 0.7 * model.class_prior(x_image, "image", n_bits=8) >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(model.encode(x_image, "image", role="query").to_signs(), expected.numpy())
    assert model.encode(x_text, "text", role="query") == model.encode(x_text, "text")  # text weight 0: heads alone


def test_per_modality_weights_are_saved(tmp_path):
    model = _model_with_prior(weight={"image": 1.0, "text": 0.5})
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["class_prior"]["weight"] == {
        "image": 1.0,
        "text": 0.5,
    }
    loaded = CrossModalHashModel.from_pretrained(tmp_path / "m")
    assert loaded.class_prior.weights == {"image": 1.0, "text": 0.5}
    x = torch.randn(5, 6)
    assert loaded.encode(x, "image", role="query") == model.encode(x, "image", role="query")


def test_the_trainer_takes_one_weight_per_modality():
    stream = synthetic_stream(n_tasks=1, seed=1, multi_label=False)
    trainer = _trainer(stream, prior={"image": 1.0, "text": 0.0})
    trainer.fit_task(stream[0])
    assert trainer.model.class_prior.weights == {"image": 1.0, "text": 0.0}
    assert trainer.model.class_prior.active
    assert TrainerConfig.from_dict(trainer.config.to_dict()).class_prior == {"image": 1.0, "text": 0.0}


def test_the_command_line_takes_one_or_two_weights():
    from pbeh.cli._arguments import build_parser
    from pbeh.cli._setup import UserError
    from pbeh.cli._train import _class_prior

    parser = build_parser()
    assert _class_prior(parser.parse_args(["train", "--protocol", "synthetic", "--out", "r"]).class_prior) == 0.5
    assert (
        _class_prior(
            parser.parse_args(["train", "--protocol", "synthetic", "--out", "r", "--class-prior", "1"]).class_prior
        )
        == 1
    )
    two = parser.parse_args(["train", "--protocol", "synthetic", "--out", "r", "--class-prior", "1", "0.5"]).class_prior
    assert _class_prior(two) == {"image": 1.0, "text": 0.5}
    with pytest.raises(UserError, match="--class-prior: expected one weight or two"):
        _class_prior([1.0, 0.5, 0.2])


def test_merged_prototypes_match_a_per_class_loop():
    from pbeh.prototypes import ClassPrototypes

    rng = np.random.default_rng(5)

    def draw(n: int, width: int, spread: bool) -> np.ndarray:
        values = rng.uniform(0.1, 1, (n, width)) if spread else rng.normal(size=(n, width))
        return values.astype(np.float32)

    parts = [
        ClassPrototypes(np.array(c), draw(len(c), 3, False), draw(len(c), 3, True), draw(len(c), 2, False),
                        draw(len(c), 2, True), n_classes=5)
        for c in ([0, 2], [2, 3], [3, 2])
    ]  # fmt: skip
    every = ClassPrototypes.concatenate(parts)
    merged = every.merged()
    assert merged.classes.tolist() == [0, 2, 3]
    for row, c in enumerate(merged.classes):
        rows = every.classes == c
        for m in ("image", "text"):
            np.testing.assert_allclose(
                getattr(merged, f"{m}_mean")[row], getattr(every, f"{m}_mean")[rows].mean(0), rtol=1e-6
            )
            expected_std = np.sqrt((getattr(every, f"{m}_std")[rows].astype(np.float64) ** 2).mean(0))
            np.testing.assert_allclose(getattr(merged, f"{m}_std")[row], expected_std, rtol=1e-6)
