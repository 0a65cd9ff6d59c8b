"""The previous-model term (``LossWeights.previous_model``): the loss against a hand computation, bad input, the saved
weights of older runs, and the trainer's wiring (which model is the reference, that it stays frozen, and when the
term is on)."""

from __future__ import annotations

import copy

import pytest
import torch

from pbeh.baselines import build_trainer
from pbeh.data import synthetic_stream
from pbeh.extension import NeverExtend
from pbeh.losses import LossWeights, previous_model_loss
from pbeh.trainer import ContinualTrainer, TrainerConfig


def test_the_loss_is_one_minus_the_cosine_on_the_reference_bits():
    gen = torch.Generator().manual_seed(0)
    h, p = torch.randn(6, 10, generator=gen), torch.randn(6, 7, generator=gen)
    expected = sum(1 - float(h[i, :7] @ p[i]) / float(h[i, :7].norm() * p[i].norm()) for i in range(6)) / 6
    assert float(previous_model_loss(h, p)) == pytest.approx(expected, rel=1e-6)
    assert float(previous_model_loss(h, 3 * h)) == pytest.approx(0.0, abs=1e-6)
    assert float(previous_model_loss(h, -h)) == pytest.approx(2.0, rel=1e-6)
    assert float(previous_model_loss(h[:0], p[:0])) == 0.0


def test_the_loss_trains_the_new_outputs():
    h = torch.randn(4, 5, requires_grad=True)
    p = torch.randn(4, 5)
    previous_model_loss(h, p).backward()
    assert h.grad is not None
    assert bool(h.grad.abs().sum() > 0)


@pytest.mark.parametrize(
    ("h", "p", "error", "match"),
    [
        (torch.zeros(3, 4), torch.zeros(2, 4), ValueError, r"h_previous: expected 3 rows of at most 4 bits like h,"),
        (torch.zeros(3, 4), torch.zeros(3, 5), ValueError, r"h_previous: expected 3 rows of at most 4 bits"),
        (torch.zeros(3, 4), torch.zeros(3), ValueError, r"h_previous: expected a 2-D tensor"),
        (torch.zeros(3, 4), [[0.0]], TypeError, r"h_previous: expected a torch.Tensor, got list"),
        (torch.zeros(3, 4, dtype=torch.int64), torch.zeros(3, 4), TypeError, r"h: expected a floating-point tensor"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(h, p, error, match):
    with pytest.raises(error, match=match):
        previous_model_loss(h, p)


def test_weights_saved_before_the_term_load_with_it_off():
    saved = {k: v for k, v in LossWeights.pbeh(previous_model=30.0).to_dict().items() if k != "previous_model"}
    assert LossWeights.from_dict(saved).previous_model == 0.0  # how such a run trained
    assert LossWeights.from_dict(LossWeights.pbeh().to_dict()) == LossWeights.pbeh()
    with pytest.raises(ValueError, match=r"previous_model: expected a finite weight >= 0, got -1"):
        LossWeights(previous_model=-1.0)


def _trainer(stream, weight: float, **config) -> ContinualTrainer:
    cfg = TrainerConfig(**{"epochs": 2, "batch_size": 32, "eval_k": None, "eval_every": 1, **config})
    return ContinualTrainer.for_stream(
        stream,
        n_bits=8,
        hidden_dims=(16,),
        config=cfg,
        extension_policy=NeverExtend(),
        loss_weights=LossWeights.pbeh(previous_model=weight),
    )


def _record_references(trainer: ContinualTrainer) -> list[tuple[int, object]]:
    """(task, reference model) of every minibatch loss, and a snapshot of the model as each task's training began."""
    calls: list[tuple[int, object]] = []
    loss = trainer._loss

    def recording(image, text, labels, t, anchors, targets=(), previous=None):
        calls.append((t, previous))
        return loss(image, text, labels, t, anchors, targets, previous)

    trainer._loss = recording
    return calls


def test_the_reference_is_the_frozen_model_as_the_task_began():
    stream = synthetic_stream(n_tasks=3, seed=1)
    trainer = _trainer(stream, 30.0)
    calls = _record_references(trainer)
    starts: dict[int, dict[str, torch.Tensor]] = {}
    train_task = trainer._train_task

    def snapshot(t, train, validation, task):
        starts[t] = copy.deepcopy(trainer.model.state_dict())
        return train_task(t, train, validation, task)

    trainer._train_task = snapshot
    trainer.fit(stream)
    assert {t for t, previous in calls if previous is None} == {0}  # nothing to keep on the first task
    references = {t: previous for t, previous in calls if previous is not None}
    assert sorted(references) == [1, 2]
    for t, previous in references.items():
        assert all(p is previous for task, p in calls if task == t)  # one copy per task
        assert previous is not trainer.model
        assert not any(p.requires_grad for p in previous.parameters())
        assert not previous.training
        state = previous.state_dict()
        assert sorted(state) == sorted(starts[t])
        for name, value in starts[t].items():
            assert torch.equal(state[name], value), name  # the task's start, never updated while it trained
    assert all("previous_model" not in r.loss_terms for r in trainer.reports[:1])
    assert all(r.loss_terms["previous_model"] > 0 for r in trainer.reports[1:])


def test_without_updates_the_term_is_zero():
    """With (almost) no updates the model is its own reference: the training forward equals the frozen copy's."""
    stream = synthetic_stream(n_tasks=2, seed=2)
    trainer = _trainer(stream, 30.0, lr=1e-12)
    trainer.fit(stream)
    assert trainer.reports[1].loss_terms["previous_model"] == pytest.approx(0.0, abs=1e-6)


def test_weight_zero_makes_no_copy_and_changes_nothing():
    stream = synthetic_stream(n_tasks=2, seed=3)
    off = _trainer(stream, 0.0)
    calls = _record_references(off)
    off.fit(stream)
    assert calls
    assert all(previous is None for _, previous in calls)
    assert all("previous_model" not in r.loss_terms for r in off.reports)
    on = _trainer(stream, 30.0)
    on.fit(stream)
    first_off, first_on = off.matrix.matrix("i2t"), on.matrix.matrix("i2t")
    assert first_off[0, 0] == first_on[0, 0]  # the first task trains identically
    assert first_off[1, 1] != first_on[1, 1]


def test_the_ablation_method_and_the_command_line(tmp_path):
    stream = synthetic_stream(n_tasks=2, seed=4)
    assert build_trainer("pbeh-previous", stream, n_bits=8).loss_weights == LossWeights.pbeh(previous_model=30.0)
    assert build_trainer("pbeh", stream, n_bits=8).loss_weights.previous_model == 0.0  # an option, not the default
    from pbeh.cli import main
    from pbeh.training.checkpoints import checkpoint_state_dir

    try:
        args = ["train", "--protocol", "synthetic", "--epochs", "1", "--hidden", "16", "--bits", "8", "--quiet"]
        assert main([*args, "--previous-model", "7", "--out", str(tmp_path / "run")]) == 0
    finally:
        torch.set_num_threads(1)
    assert ContinualTrainer.load(checkpoint_state_dir(tmp_path / "run")).loss_weights.previous_model == 7.0
