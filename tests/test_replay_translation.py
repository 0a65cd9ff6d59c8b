"""Replay by feature translation (``TrainerConfig.replay_spread``): the deviations against a per-item loop, sampling
by hand, bad input, the config and its saved form, and the trainer's wiring (which items the deviations come from)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pbeh.data import synthetic_stream
from pbeh.extension import NeverExtend
from pbeh.prototypes import MIN_RELATIVE_SPREAD, ClassPrototypes
from pbeh.trainer import ContinualTrainer, TrainerConfig


def _data(rng, n=30, n_classes=4):
    image = rng.normal(size=(n, 5)).astype(np.float32)
    text = rng.normal(size=(n, 3)).astype(np.float32)
    labels = np.zeros((n, n_classes), dtype=np.uint8)
    labels[np.arange(n), rng.integers(0, 3, n)] = 1  # class 3 never fitted
    labels[:6, (np.arange(6) + 1) % 3] = 1  # some items carry two labels
    return image, text, labels


def test_deviations_equal_a_per_item_loop():
    rng = np.random.default_rng(0)
    image, text, labels = _data(rng)
    # Two fits of overlapping classes: a class in two rows gets the mean of their means and the root mean variance.
    first = ClassPrototypes.fit(image[:20], text[:20], labels[:20])
    second = ClassPrototypes.fit(image[10:], text[10:], labels[10:])
    protos = ClassPrototypes.concatenate([first, second])
    q_image, q_text, q_labels = _data(np.random.default_rng(1), n=12)
    q_labels[0] = 0  # no label
    q_labels[1] = 0
    q_labels[1, 3] = 1  # only a class these prototypes lack
    dev_image, dev_text = protos.deviations(q_image, q_text, q_labels)
    for modality, feats, dev in (("image", q_image, dev_image), ("text", q_text, dev_text)):
        means, stds = {}, {}
        for c in range(3):
            parts = [p for p in (first, second) if c in p.classes]
            rows = [list(p.classes).index(c) for p in parts]
            means[c] = np.mean([getattr(p, f"{modality}_mean")[r] for p, r in zip(parts, rows, strict=True)], axis=0)
            stds[c] = np.sqrt(
                np.mean([getattr(p, f"{modality}_std")[r] ** 2 for p, r in zip(parts, rows, strict=True)], axis=0)
            )
        floor = 0.05 * np.mean([stds[c] for c in stds])
        for i in range(len(feats)):
            known = [c for c in np.flatnonzero(q_labels[i]) if c in means] or sorted(means)
            mean = np.mean([means[c] for c in known], axis=0)
            std = np.maximum(np.mean([stds[c] for c in known], axis=0), floor)
            np.testing.assert_allclose(dev[i], (feats[i] - mean) / std, rtol=1e-4, atol=1e-5)
        assert dev.dtype == np.float32


def test_a_class_that_hardly_varies_is_divided_by_the_floor():
    image = np.array([[0.0, 1.0], [0.0, 3.0], [5.0, 2.0], [7.0, 2.0]], np.float32)  # each class constant on one dim
    text = np.array([[1.0], [3.0], [1.0], [3.0]], np.float32)
    labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.uint8)
    protos = ClassPrototypes.fit(image, text, labels)
    floor = MIN_RELATIVE_SPREAD * protos.image_std.mean()  # the image stds are 0, 1 / 1, 0: floor 0.025
    dev_image, dev_text = protos.deviations(np.array([[0.5, 2.0]], np.float32), np.array([[2.5]], np.float32),
                                            np.array([[1, 0]]))  # fmt: skip
    np.testing.assert_allclose(dev_image, [[0.5 / floor, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(dev_text, [[0.5]], rtol=1e-6)
    assert np.isfinite(dev_image).all()


def test_translated_samples_are_a_class_mean_plus_a_drawn_deviation():
    rng = np.random.default_rng(2)
    image, text, labels = _data(rng, n=60)
    for clusters in (1, 2):
        protos = ClassPrototypes.fit(image, text, labels, clusters=clusters, seed=0)
        rows = protos.clusters if clusters > 1 else protos
        deviations = (rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(7, 3)).astype(np.float32))
        got = protos.sample(40, np.random.default_rng(9), noise=0.5, deviations=deviations)
        draw = np.random.default_rng(9)
        which = draw.integers(0, len(rows), size=40)
        source = draw.integers(0, 7, size=40)
        np.testing.assert_allclose(got[0], rows.image_mean[which] + rows.image_std[which] * deviations[0][source],
                                   rtol=1e-5)  # fmt: skip
        np.testing.assert_allclose(got[1], rows.text_mean[which] + rows.text_std[which] * deviations[1][source],
                                   rtol=1e-5)  # fmt: skip
        assert got[2].sum(axis=1).tolist() == [1.0] * 40
        assert np.argmax(got[2], axis=1).tolist() == rows.classes[which].tolist()
        # noise is unused when translating
        again = protos.sample(40, np.random.default_rng(9), noise=3.0, deviations=deviations)
        np.testing.assert_array_equal(again[0], got[0])


def test_gaussian_samples_are_unchanged_by_the_option():
    rng = np.random.default_rng(3)
    image, text, labels = _data(rng)
    protos = ClassPrototypes.fit(image, text, labels)
    got = protos.sample(10, np.random.default_rng(4), noise=0.5)
    draw = np.random.default_rng(4)
    which = draw.integers(0, len(protos), size=10)
    expected_image = protos.image_mean[which] + 0.5 * protos.image_std[which] * draw.standard_normal((10, 5))
    np.testing.assert_allclose(got[0], expected_image, rtol=1e-5)


@pytest.mark.parametrize(
    "deviations",
    [
        (np.zeros((3, 4), np.float32), np.zeros((3, 3), np.float32)),  # image width 4, not 5
        (np.zeros((3, 5), np.float32), np.zeros((2, 3), np.float32)),  # rows differ
        (np.zeros((0, 5), np.float32), np.zeros((0, 3), np.float32)),  # none
        (np.zeros(5, np.float32), np.zeros((1, 3), np.float32)),  # not 2-D
    ],
)
def test_bad_deviations_are_refused(deviations):
    rng = np.random.default_rng(5)
    protos = ClassPrototypes.fit(*_data(rng))
    with pytest.raises(ValueError, match=r"deviations: expected \(image, text\) with the same number"):
        protos.sample(4, rng, deviations=deviations)


def test_deviations_that_are_not_a_pair_are_refused():
    rng = np.random.default_rng(5)
    protos = ClassPrototypes.fit(*_data(rng))
    with pytest.raises(ValueError, match=r"deviations: expected a pair \(image, text\) of arrays, got ndarray"):
        protos.sample(4, rng, deviations=np.zeros((3, 5)))
    with pytest.raises(ValueError, match="deviations: expected a pair"):
        protos.sample(4, rng, deviations=(np.zeros((3, 5)),))
    # lists are accepted as arrays
    image, text, _ = protos.sample(4, rng, deviations=(np.zeros((1, 5)).tolist(), np.zeros((1, 3)).tolist()))
    assert image.shape == (4, 5)
    assert text.shape == (4, 3)


def test_deviations_refuse_misaligned_input():
    rng = np.random.default_rng(6)
    image, text, labels = _data(rng)
    protos = ClassPrototypes.fit(image, text, labels)
    with pytest.raises(ValueError, match="labels over 4 classes"):
        protos.deviations(image, text, labels[:, :3])
    with pytest.raises(ValueError, match="aligned rows"):
        protos.deviations(image[:-1], text, labels)


def test_config_value_and_saved_form():
    assert TrainerConfig().replay_spread == "translated"
    with pytest.raises(ValueError, match=r"replay_spread: expected one of \('translated', 'gaussian'\), got 'noise'"):
        TrainerConfig(replay_spread="noise")
    assert TrainerConfig.from_dict(TrainerConfig().to_dict()).replay_spread == "translated"
    saved_before = {k: v for k, v in TrainerConfig().to_dict().items() if k != "replay_spread"}
    assert TrainerConfig.from_dict(saved_before).replay_spread == "gaussian"  # how such a run trained


def _trainer(stream, **config):
    cfg = TrainerConfig(**{"epochs": 2, "batch_size": 32, "eval_k": None, "eval_every": 1, **config})
    return ContinualTrainer.for_stream(stream, n_bits=8, hidden_dims=(16,), config=cfg, extension_policy=NeverExtend())


def _record_samples(monkeypatch):
    calls = []
    original = ClassPrototypes.sample

    def sample(self, n, rng, *, noise=1.0, deviations=None):
        calls.append((self, deviations))
        return original(self, n, rng, noise=noise, deviations=deviations)

    monkeypatch.setattr(ClassPrototypes, "sample", sample)
    return calls


def test_trainer_translates_this_tasks_training_items(monkeypatch):
    stream = synthetic_stream(n_tasks=2, seed=3)
    calls = _record_samples(monkeypatch)
    translated = _trainer(stream)
    translated.fit(stream)
    assert calls, "the second task replays"
    train, _ = stream[1].split_validation(translated.config.validation_fraction, seed=translated.config.seed + 1)
    expected = translated._prototypes[1].deviations(train.image, train.text, train.labels)
    for replay, deviations in calls:
        # the earlier task's classes (per class, then per group)
        assert np.unique(replay.classes).tolist() == translated._prototypes[0].classes.tolist()
        for got, want in zip(deviations, expected, strict=True):
            np.testing.assert_array_equal(got, want)
    calls.clear()
    gaussian = _trainer(stream, replay_spread="gaussian")
    gaussian.fit(stream)
    assert calls
    assert all(deviations is None for _, deviations in calls)
    # The first task trains identically (no replay yet); the second differs.
    first, second = translated.matrix.matrix("i2t"), gaussian.matrix.matrix("i2t")
    assert first[0, 0] == second[0, 0]
    assert first[1, 1] != second[1, 1]


def _saved_after_the_first_task(directory, seed):
    """A two-task stream and the directory of a state saved after its first task."""
    stream = synthetic_stream(n_tasks=2, seed=seed)
    trainer = _trainer(stream)
    trainer.fit([stream[0]])
    trainer.save(directory)
    return stream, directory


def test_a_state_saved_without_the_option_resumes_with_gaussian_replay(tmp_path, monkeypatch):
    stream, state = _saved_after_the_first_task(tmp_path / "state", seed=4)
    meta_path = state / "trainer.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["replay_spread"]
    meta_path.write_text(json.dumps(meta))
    loaded = ContinualTrainer.load(state)
    assert loaded.config.replay_spread == "gaussian"
    calls = _record_samples(monkeypatch)
    loaded.fit_task(stream[1])
    assert calls
    assert all(deviations is None for _, deviations in calls)


def test_a_state_without_prototypes_replays_nothing_of_the_current_task(tmp_path, monkeypatch):
    from pbeh.serialization import load_safetensors, save_safetensors

    stream, state = _saved_after_the_first_task(tmp_path / "state", seed=5)
    path = state / "trainer_state.safetensors"
    arrays, _ = load_safetensors(path, kind="trainer_state", format_version=1)
    save_safetensors(
        path, {k: v for k, v in arrays.items() if not k.startswith("prototypes.")}, kind="trainer_state",
        format_version=1,
    )  # fmt: skip
    loaded = ContinualTrainer.load(state)
    assert loaded._prototypes == []
    calls = _record_samples(monkeypatch)
    loaded.fit_task(stream[1])
    assert calls == []  # no earlier statistics: no replay (the task's own classes are not replayed as old ones)
    assert len(loaded._prototypes) == 1


def test_the_command_line_sets_the_spread(tmp_path, capsys):
    from pbeh.cli import main
    from pbeh.training.checkpoints import checkpoint_state_dir

    try:
        args = ["train", "--protocol", "synthetic", "--epochs", "1", "--hidden", "16", "--bits", "8", "--quiet"]
        assert main([*args, "--replay-spread", "gaussian", "--out", str(tmp_path / "run")]) == 0
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--replay-spread", "noise", "--out", str(tmp_path / "bad")])
        assert exit_info.value.code == 2
    finally:
        torch.set_num_threads(1)
    assert "invalid choice: 'noise'" in capsys.readouterr().err
    assert ContinualTrainer.load(checkpoint_state_dir(tmp_path / "run")).config.replay_spread == "gaussian"


def test_a_task_without_labelled_items_replays_gaussian_noise(monkeypatch):
    from pbeh.data import Split

    stream = synthetic_stream(n_tasks=2, seed=6)
    trainer = _trainer(stream)
    trainer.fit_task(stream[0])
    task = stream[1]
    unlabelled = Split(task.train.image, task.train.text, np.zeros_like(task.train.labels), task.train.ids)
    calls = _record_samples(monkeypatch)
    trainer.fit_task(dataclasses.replace(task, train=unlabelled))
    assert calls
    assert all(deviations is None for _, deviations in calls)
