"""TrainerConfig.old_class_targets: while a later task trains, the class-centre term can aim an earlier class's items
at the majority of the codes stored for it instead of at its centre."""

from __future__ import annotations

import numpy as np
import pytest

from pbeh.data import synthetic_stream
from pbeh.extension import FixedSchedule
from pbeh.losses import LossWeights
from pbeh.trainer import ContinualTrainer, TrainerConfig


def _trainer(stream, targets="stored"):
    cfg = TrainerConfig(epochs=2, batch_size=32, eval_k=None, eval_every=1, old_class_targets=targets)
    return ContinualTrainer.for_stream(
        stream, n_bits=8, hidden_dims=(16,), config=cfg, extension_policy=FixedSchedule(bits_per_task=4),
        loss_weights=LossWeights.pbeh(class_centers=50.0),
    )  # fmt: skip


def _reference_table(trainer) -> np.ndarray:
    """Class by class and bit by bit over every stored image and text code of the class: the majority, else the
    centre's bit."""
    table = trainer._centers.centers.astype(np.float32).copy()
    for c in range(table.shape[0]):
        if not trainer._centers.assigned[c]:
            continue
        for j in range(table.shape[1]):
            plus = minus = 0
            for stored in trainer._stored:
                rows = np.flatnonzero(np.asarray(stored.labels)[:, c] > 0)
                for index in (trainer.image_index, trainer.text_index):
                    codes = index.get_codes(stored.ids[rows]).to_signs() if len(rows) else np.zeros((0, 0))
                    if j < codes.shape[1]:
                        plus += int((codes[:, j] > 0).sum())
                        minus += int((codes[:, j] < 0).sum())
            if plus != minus:
                table[c, j] = 1.0 if plus > minus else -1.0
    return table


def test_a_later_task_trains_toward_the_stored_majority_of_earlier_classes():
    stream = synthetic_stream(n_tasks=3, seed=3, multi_label=True)
    trainer = _trainer(stream)
    seen = {}
    original = trainer._train_task

    def spy(t, *args):
        table = trainer._training_centers
        seen[t] = None if table is None else (table.centers.copy(), _reference_table(trainer))
        return original(t, *args)

    trainer._train_task = spy
    for task in stream:
        before = (
            None if trainer._centers is None else (trainer._centers.centers.copy(), trainer._centers.assigned.copy())
        )
        trainer.fit_task(task)
        assert trainer._training_centers is None  # only while the task trains
        if before is not None:  # the centres given out never move
            centres, assigned = before
            now = trainer._centers.centers[:, : centres.shape[1]]
            np.testing.assert_array_equal(now[assigned], centres[assigned])
    assert seen[0] is None  # nothing stored yet: the first task aims at the centres
    for t in (1, 2):
        used, expected = seen[t]
        np.testing.assert_array_equal(used.astype(np.float32), expected)
        earlier = np.any([np.asarray(s.labels).any(axis=0) for s in trainer._stored[:t]], axis=0)
        new = stream[t].train.labels.any(axis=0) & ~earlier  # the task's own new classes
        np.testing.assert_array_equal(used[new], trainer._centers.centers[new, : used.shape[1]])  # new: their centre
    assert any(not np.array_equal(seen[t][0], trainer._centers.centers[:, : seen[t][0].shape[1]]) for t in (1, 2))


def test_the_default_aims_at_the_centres_and_the_option_changes_the_training():
    stream = synthetic_stream(n_tasks=2, seed=3, multi_label=True)
    default, stored = _trainer(stream, targets="centers"), _trainer(stream)
    default.fit(stream)
    stored.fit(stream)
    ids = stream[0].database.ids
    assert default.image_index.get_codes(ids) == stored.image_index.get_codes(ids)  # task 1 trains the same
    ids = stream[1].database.ids
    assert default.image_index.get_codes(ids) != stored.image_index.get_codes(ids)


def test_a_failed_task_leaves_no_training_table(monkeypatch):
    stream = synthetic_stream(n_tasks=2, seed=3, multi_label=True)
    trainer = _trainer(stream)
    trainer.fit_task(stream[0])

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "_train_task", boom)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit_task(stream[1])
    assert trainer._training_centers is None


def test_old_class_targets_is_checked():
    with pytest.raises(ValueError, match="old_class_targets: expected one of"):
        TrainerConfig(old_class_targets="majority")
    assert TrainerConfig().old_class_targets == "stored"
    old = {k: v for k, v in TrainerConfig().to_dict().items() if k != "old_class_targets"}
    assert TrainerConfig.from_dict(old).old_class_targets == "centers"


def test_the_option_and_its_method_reach_the_trainer(tmp_path):
    from pbeh.baselines import build_trainer
    from pbeh.cli import main
    from pbeh.serialization import read_json

    stream = synthetic_stream(n_tasks=2, seed=3, multi_label=True)
    trainer = build_trainer("pbeh-old-centers", stream, n_bits=8, hidden_dims=(16,))
    assert trainer.config.old_class_targets == "centers"
    assert build_trainer("pbeh", stream, n_bits=8, hidden_dims=(16,)).config.old_class_targets == "stored"
    out = tmp_path / "run"
    argv = ["train", "--protocol", "synthetic", "--epochs", "2", "--hidden", "16", "--bits", "8", "--quiet"]
    assert main([*argv, "--out", str(out), "--old-class-targets", "centers"]) == 0
    config = read_json(out / read_json(out / "latest.json")["directory"] / "trainer.json")["config"]
    assert config["old_class_targets"] == "centers"
