"""Backward-compatible training: class prototypes, their replay, the fan-in-scaled learning rate, the signed target.

The statistics are checked against numpy, the replayed batches against what the trainer must put in them, the saved
state against a round trip, and the defaults against the documented values.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pbeh.data import synthetic_stream
from pbeh.extension import NeverExtend
from pbeh.losses import label_similarity
from pbeh.prototypes import ClassPrototypes
from pbeh.trainer import ContinualTrainer, TrainerConfig, _fan_in_scale


def test_prototypes_match_numpy_per_class_statistics():
    rng = np.random.default_rng(0)
    image, text = rng.normal(size=(30, 5)), rng.normal(size=(30, 3))
    labels = (rng.random((30, 4)) < 0.4).astype(np.uint8)
    labels[:, 3] = 0  # a class without items is skipped
    protos = ClassPrototypes.fit(image, text, labels)
    assert protos.classes.tolist() == [c for c in range(3) if labels[:, c].any()]
    for row, c in enumerate(protos.classes):
        mine = labels[:, c] > 0
        np.testing.assert_allclose(protos.image_mean[row], image[mine].mean(axis=0), rtol=1e-6)
        np.testing.assert_allclose(protos.image_std[row], image[mine].std(axis=0), rtol=1e-5)
        np.testing.assert_allclose(protos.text_mean[row], text[mine].mean(axis=0), rtol=1e-6)
    assert protos.n_classes == 4


def test_prototype_samples_are_one_hot_and_centred_on_their_class():
    labels = np.eye(3, dtype=np.uint8).repeat(4, axis=0)
    image = np.arange(3, dtype=np.float32).repeat(4)[:, None] * np.ones((1, 2), np.float32)
    text = -image[:, :1]
    protos = ClassPrototypes.fit(image, text, labels)
    img, txt, lab = protos.sample(50, np.random.default_rng(1), noise=0.0)
    assert lab.sum(axis=1).tolist() == [1.0] * 50
    cls = lab.argmax(axis=1)
    np.testing.assert_array_equal(img[:, 0], cls.astype(np.float32))  # noise 0: exactly the class mean
    np.testing.assert_array_equal(txt[:, 0], -cls.astype(np.float32))
    a = protos.sample(10, np.random.default_rng(5))
    b = protos.sample(10, np.random.default_rng(5))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)  # seeded


def test_prototypes_round_trip_and_errors():
    rng = np.random.default_rng(2)
    protos = ClassPrototypes.fit(rng.normal(size=(6, 2)), rng.normal(size=(6, 2)), np.eye(3).repeat(2, axis=0))
    back = ClassPrototypes.from_arrays(protos.to_arrays("p."), "p.", n_classes=3)
    for key in ("classes", "image_mean", "image_std", "text_mean", "text_std"):
        np.testing.assert_array_equal(getattr(back, key), getattr(protos, key))
    with pytest.raises(KeyError, match="prototype arrays missing"):
        ClassPrototypes.from_arrays({}, "p.", n_classes=3)
    with pytest.raises(ValueError, match="image, text, labels: expected aligned rows"):
        ClassPrototypes.fit(np.zeros((3, 2)), np.zeros((2, 2)), np.eye(3))
    empty = ClassPrototypes.fit(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="hold no class"):
        empty.sample(1, np.random.default_rng(0))


def _trainer(stream, **config):
    cfg = TrainerConfig(**{"epochs": 2, "batch_size": 32, "eval_k": None, "eval_every": 1, **config})
    return ContinualTrainer.for_stream(stream, n_bits=8, hidden_dims=(16,), config=cfg, extension_policy=NeverExtend())


def test_replay_adds_old_class_pseudo_items_to_every_batch_from_the_second_task(monkeypatch):
    stream = synthetic_stream(n_tasks=2, seed=1)
    trainer = _trainer(stream, prototype_replay=7)
    seen: list[tuple[int, int, set[int]]] = []
    original = trainer._loss

    def spy(image, text, labels, t, *args):
        seen.append((t, len(image), set(np.flatnonzero(labels.sum(0).numpy() > 0).tolist())))
        return original(image, text, labels, t, *args)

    monkeypatch.setattr(trainer, "_loss", spy)
    trainer.fit(stream)
    first = [s for s in seen if s[0] == 0]
    second = [s for s in seen if s[0] == 1]
    n_train = [len(task.train) - max(1, round(0.1 * len(task.train))) for task in stream]
    assert sum(n for _, n, _ in first) == 2 * n_train[0]  # no replay on the first task
    batches = -(-n_train[1] // 32)
    assert sum(n for _, n, _ in second) == 2 * (n_train[1] + 7 * batches)  # 7 pseudo items per batch
    assert len(trainer._prototypes) == 2
    assert set(trainer._prototypes[0].classes.tolist()) == set(np.flatnonzero(stream[0].train.labels.any(0)))


def test_prototypes_survive_save_and_load(tmp_path):
    stream = synthetic_stream(n_tasks=2, seed=2)
    trainer = _trainer(stream)
    trainer.fit(stream[:1])
    trainer.save(tmp_path / "state")
    loaded = ContinualTrainer.load(tmp_path / "state")
    assert len(loaded._prototypes) == 1
    np.testing.assert_array_equal(loaded._prototypes[0].image_mean, trainer._prototypes[0].image_mean)
    # and the continuation is the same as without the round trip
    trainer.fit_task(stream[1])
    loaded.fit_task(stream[1])
    for a, b in zip(trainer.model.state_dict().values(), loaded.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_fan_in_scale():
    assert _fan_in_scale(torch.zeros(4, 1024), 256) == 0.25
    assert _fan_in_scale(torch.zeros(4, 128), 256) == 1.0
    assert _fan_in_scale(torch.zeros(1024), 256) == 1.0  # biases
    assert _fan_in_scale(torch.zeros(4, 1024), None) == 1.0


def test_optimizer_scales_only_wide_weight_matrices():
    stream = synthetic_stream(n_tasks=1, seed=3)  # image features wider than 4
    trainer = _trainer(stream, lr=1e-3, lr_fan_in=4)
    trainer.model.add_task(None, n_train=len(stream[0].train), samples_per_prompt=100)
    optimizer = trainer._optimizer(0)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert len(lr_of) == sum(1 for p in trainer.model.parameters() if p.requires_grad)
    for p in trainer.model.parameters():
        if p.requires_grad:
            expected = 1e-3 * 4 / p.shape[1] if p.ndim == 2 and p.shape[1] > 4 else 1e-3
            assert lr_of[id(p)] == pytest.approx(expected)


def test_signed_cosine_target():
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    signed = label_similarity(labels, kind="signed_cosine")
    torch.testing.assert_close(signed, 2 * label_similarity(labels, kind="cosine") - 1)
    assert signed[0, 2] == -1.0
    assert signed[0, 0] == 1.0


def test_defaults_and_reference_settings():
    cfg = TrainerConfig()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.samples_per_prompt) == (30, 128, 1e-3, 100)
    assert (cfg.prototype_replay, cfg.prototype_noise, cfg.similarity_target) == (128, 0.5, "signed_cosine")
    assert cfg.ties == "average"
    ref = TrainerConfig.reference()
    assert (ref.epochs, ref.batch_size, ref.lr, ref.later_task_head_lr_scale) == (100, 512, 1e-4, 0.1)
    assert (ref.prototype_replay, ref.lr_fan_in, ref.ties, ref.select_on) == (0, None, "reference", "test")
    assert TrainerConfig.reference(epochs=3).epochs == 3
    assert dataclasses.replace(cfg, prototype_replay=0).prototype_replay == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prototype_replay", -1, "prototype_replay: expected an int >= 0"),
        ("prototype_noise", float("nan"), "prototype_noise: expected a finite number >= 0"),
        ("lr_fan_in", 0, "lr_fan_in: expected a positive int or None"),
        ("ties", "random", "ties: expected 'average' or 'reference'"),
    ],
)
def test_new_config_fields_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainerConfig(**{field: value})


def test_keep_task_checkpoints(tmp_path):
    stream = synthetic_stream(n_tasks=2, seed=5)
    trainer = ContinualTrainer.for_stream(
        stream, n_bits=8, hidden_dims=(16,), config=TrainerConfig(epochs=1, batch_size=64),
        checkpoint_dir=tmp_path / "all", keep_task_checkpoints=True,
    )  # fmt: skip
    trainer.fit(stream)
    assert sorted(p.name for p in (tmp_path / "all").glob("task_*")) == ["task_000", "task_001"]
    with pytest.raises(TypeError, match="keep_task_checkpoints: expected a bool"):
        ContinualTrainer.for_stream(stream, n_bits=8, hidden_dims=(16,), keep_task_checkpoints="yes")


def test_for_stream_wants_a_task_stream():
    stream = synthetic_stream(n_tasks=1, seed=6)
    with pytest.raises(TypeError, match=r"stream: expected a pbeh.data.TaskStream .* got list; wrap a list"):
        ContinualTrainer.for_stream(list(stream), n_bits=8)


def test_a_failed_task_rolls_back_its_prototypes():
    stream = synthetic_stream(n_tasks=2, seed=7)
    trainer = _trainer(stream)

    def fail(report):
        raise RuntimeError("callback failed")

    trainer.fit_task(stream[0])
    trainer.callbacks.append(fail)
    with pytest.raises(RuntimeError, match="callback failed"):
        trainer.fit_task(stream[1])
    assert len(trainer._prototypes) == 1  # the failed task's class statistics are gone with it
    trainer.callbacks.clear()
    trainer.fit_task(stream[1])
    assert len(trainer._prototypes) == 2
