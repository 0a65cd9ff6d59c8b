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

from pbeh.class_prior import ClassPrior, stored_code_targets
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


def _trainer(stream, *, prior=1.0, centers=50.0, policy=None, targets="stored"):
    cfg = TrainerConfig(epochs=2, batch_size=32, eval_k=None, eval_every=1, class_prior=prior, prior_targets=targets)
    return ContinualTrainer.for_stream(
        stream, n_bits=8, hidden_dims=(16,), config=cfg, extension_policy=policy or NeverExtend(),
        loss_weights=LossWeights.pbeh(class_centers=centers),
    )  # fmt: skip


def test_the_trainer_fits_the_prior_to_every_class_seen_and_resumes_it(tmp_path):
    stream = synthetic_stream(n_tasks=2, seed=1, multi_label=False)
    trainer = _trainer(stream, policy=FixedSchedule(bits_per_task=4), targets="centers")
    trainer.fit_task(stream[0])
    prior = trainer.model.class_prior
    train = stream[0].train
    first = np.flatnonzero(train.labels.any(axis=0))
    assert prior.n_classes == len(first)
    assert prior.weights == {"image": 1.0, "text": 1.0}
    np.testing.assert_array_equal(prior.image_codes.numpy(), trainer._centers.centers[first])
    np.testing.assert_array_equal(prior.text_codes.numpy(), trainer._centers.centers[first])
    for row, c in enumerate(first):
        mean = train.image[train.labels[:, c] > 0].mean(axis=0)
        np.testing.assert_allclose(prior.image_mean.numpy()[row], mean, rtol=1e-5, atol=1e-6)
    trainer.fit_task(stream[1])
    seen = np.flatnonzero(train.labels.any(axis=0) | stream[1].train.labels.any(axis=0))
    assert trainer.model.class_prior.n_classes == len(seen)
    assert trainer.model.class_prior.n_bits == trainer.model.n_bits == 12
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
    before = {name: value.clone() for name, value in trainer.model.class_prior.state_dict().items()}
    assert trainer.model.class_prior.active

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "_train_task", boom)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit_task(stream[1])
    after = trainer.model.class_prior.state_dict()
    assert all(torch.equal(after[name], before[name]) for name in before)
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


def _majority_reference(centers: np.ndarray, blocks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Class by class and bit by bit: count the +1 and -1 votes of the codes whose item carries the class and whose
    length reaches the bit; the majority, or the centre's bit."""
    out = np.array(centers, dtype=np.float32)
    for c in range(centers.shape[0]):
        for j in range(centers.shape[1]):
            plus = minus = 0
            for signs, member in blocks:
                for row in range(len(signs)):
                    if member[row, c] and j < signs.shape[1]:
                        plus += signs[row, j] > 0
                        minus += signs[row, j] < 0
            if plus != minus:
                out[c, j] = 1.0 if plus > minus else -1.0
    return out


@settings(max_examples=60, deadline=None)
@given(
    n_classes=st.integers(1, 4),
    n_bits=st.integers(1, 9),
    lengths=st.lists(st.integers(1, 12), min_size=0, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_stored_code_targets_match_a_vote_by_vote_count(n_classes, n_bits, lengths, seed):
    rng = np.random.default_rng(seed)
    centers = rng.choice([-1.0, 1.0], size=(n_classes, n_bits))
    blocks = [
        (rng.choice([-1.0, 1.0], size=(n, k)), rng.random((n, n_classes)) < 0.5)
        for k in lengths
        for n in [int(rng.integers(0, 6))]
    ]
    got = stored_code_targets(centers, blocks)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, _majority_reference(centers, blocks))


def test_stored_code_targets_keep_the_centre_on_a_tie_and_where_nothing_is_stored():
    centers = np.array([[1.0, -1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])
    signs = np.array([[-1.0, 1.0, -1.0], [1.0, 1.0, -1.0]])  # 3 bits stored, class 0 only
    member = np.array([[True, False], [True, False]])
    got = stored_code_targets(centers, [(signs, member)])
    # bit 0 ties (centre +1), bits 1 and 2 agree, bit 3 was never stored; class 1 has no stored item
    np.testing.assert_array_equal(got, [[1.0, 1.0, -1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]])


def test_stored_code_targets_bad_input_names_the_argument():
    centers = np.ones((2, 4))
    with pytest.raises(ValueError, match="centers: expected a 2-D array of ±1"):
        stored_code_targets(np.zeros((2, 4)), [])
    with pytest.raises(ValueError, match=r"stored\[0\]: expected signs \(n, K_s\) and member \(n, 2\)"):
        stored_code_targets(centers, [(np.ones((3, 4)), np.ones((3, 3), bool))])
    member = np.ones((1, 2), bool)
    with pytest.raises(ValueError, match=r"stored\[1\]: signs must be ±1"):
        stored_code_targets(centers, [(np.ones((1, 4)), member), (np.zeros((1, 4)), member)])


def test_the_trainer_aims_queries_at_the_codes_stored_for_their_classes():
    """After every task each class's target for image queries is the majority of its stored text codes, and for
    text queries of its stored image codes, checked vote by vote; classes whose codes are not stored yet (during
    training) keep their centre; and only query codes differ from a run aimed at the centres."""
    stream = synthetic_stream(n_tasks=2, seed=3, multi_label=True)
    stored, centred = _trainer(stream, policy=FixedSchedule(bits_per_task=4)), None
    centred = _trainer(stream, policy=FixedSchedule(bits_per_task=4), targets="centers")
    seen_during_training = {}

    original = stored._train_task

    def spy(t, *args):
        prior = stored.model.class_prior
        seen_during_training[t] = {m: getattr(prior, f"{m}_codes").clone() for m in ("image", "text")}
        return original(t, *args)

    stored._train_task = spy
    for t, task in enumerate(stream):
        stored.fit_task(task)
        centred.fit_task(task)
        prior = stored.model.class_prior
        classes = np.flatnonzero(np.any([s.labels.any(axis=0) for s in stored._stored], axis=0))
        centers = stored._centers.centers[classes]
        for query, index in (("image", stored.text_index), ("text", stored.image_index)):
            blocks = [(index.get_codes(s.ids).to_signs(), s.labels[:, classes] > 0) for s in stored._stored]
            expected = _majority_reference(centers, blocks)
            np.testing.assert_array_equal(getattr(prior, f"{query}_codes").numpy(), expected)
            if t == 1:  # while task 2 trained: task 1's classes at their stored majority, task 2's new ones at centres
                new = ~np.isin(classes, np.flatnonzero(stream[0].train.labels.any(axis=0)))
                during = seen_during_training[1][query].numpy()
                np.testing.assert_array_equal(during[new, : centers.shape[1]], centers[new])
        assert not np.array_equal(prior.image_codes.numpy(), centers)  # the majority is not the centre here
    for task in stream:  # each task's codes at their own length
        ids = task.database.ids
        assert stored.image_index.get_codes(ids) == centred.image_index.get_codes(ids)
        assert stored.text_index.get_codes(ids) == centred.text_index.get_codes(ids)
    assert [r.best_epoch for r in stored.reports] == [r.best_epoch for r in centred.reports]
    x = np.concatenate([task.query.image for task in stream])
    assert stored.model.encode(x, "image") == centred.model.encode(x, "image")
    assert stored.model.encode(x, "image", role="query") != centred.model.encode(x, "image", role="query")


def test_a_model_saved_with_one_table_of_centres_loads_it_for_both_modalities(tmp_path):
    from safetensors.numpy import load_file, save_file

    model = _model_with_prior(weight=1.0)
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    arrays = load_file(path)
    np.testing.assert_array_equal(arrays["class_prior.image_codes"], arrays["class_prior.text_codes"])
    arrays["class_prior.codes"] = arrays.pop("class_prior.image_codes")
    del arrays["class_prior.text_codes"]
    metadata = {k: v for k, v in _metadata(path).items() if "checksum" not in k}  # an old, unchecked file
    save_file(arrays, path, metadata=metadata)
    loaded = CrossModalHashModel.from_pretrained(tmp_path / "m")
    for modality, width in (("image", 6), ("text", 4)):
        torch.testing.assert_close(getattr(loaded.class_prior, f"{modality}_codes"), model.class_prior.image_codes)
        x = torch.randn(5, width)
        assert loaded.encode(x, modality, role="query") == model.encode(x, modality, role="query")


def test_prior_targets_is_checked_and_an_old_config_resumes_with_centres():
    with pytest.raises(ValueError, match="prior_targets: expected one of"):
        TrainerConfig(prior_targets="stored-codes")
    assert TrainerConfig().prior_targets == "stored"
    old = {k: v for k, v in TrainerConfig().to_dict().items() if k != "prior_targets"}
    assert TrainerConfig.from_dict(old).prior_targets == "centers"


def test_the_vote_read_in_blocks_of_rows_gives_the_same_targets(monkeypatch):
    from pbeh.training import objective

    stream = synthetic_stream(n_tasks=2, seed=3, multi_label=True)
    trainer = _trainer(stream)
    trainer.fit(stream)
    whole = {m: getattr(trainer.model.class_prior, f"{m}_codes").clone() for m in ("image", "text")}
    monkeypatch.setattr(objective, "PRIOR_BLOCK_ROWS", 3)
    for table in whole:
        getattr(trainer.model.class_prior, f"{table}_codes").zero_()  # the refit must write every entry again
    trainer._fit_class_prior()
    for modality, table in whole.items():
        torch.testing.assert_close(getattr(trainer.model.class_prior, f"{modality}_codes"), table)
