"""Tests of pbeh.baselines: every method runs end to end with the same summary fields, each method switches on or off
what its description says, and an unknown method is refused with the allowed names."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch
from test_trainer import SUMMARY_KEYS as TRAINER_SUMMARY_KEYS

from pbeh.baselines import METHODS, build_trainer, run_method
from pbeh.data import TaskStream, synthetic_stream
from pbeh.extension import CollisionRule, ModeCenterRule, NeverExtend
from pbeh.losses import LossWeights
from pbeh.trainer import ContinualTrainer, TrainerConfig

N_BITS = 8
# run_method's summary is the trainer's plus the method name and wall time.
SUMMARY_KEYS = TRAINER_SUMMARY_KEYS | {"seconds", "method"}


def make_config(**overrides) -> TrainerConfig:
    return TrainerConfig(**{"epochs": 2, "batch_size": 32, "eval_k": None, "lr": 1e-3, **overrides})


@pytest.fixture(scope="module")
def stream() -> TaskStream:
    return synthetic_stream(n_tasks=3, classes_per_task=2, image_dim=16, text_dim=8, items_per_class=20, seed=0)


@pytest.fixture(scope="module")
def results(stream) -> dict[str, tuple[ContinualTrainer, dict]]:
    """Every method once, with rho=0 (the mode-centre rule extends as soon as one code is far) and delta=2."""
    return {
        method: run_method(method, stream, n_bits=N_BITS, hidden_dims=(16,), config=make_config(), rho=0.0, delta=2)
        for method in METHODS
    }


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_returns_the_same_summary_keys(results, stream, method):
    trainer, summary = results[method]
    assert set(summary) == SUMMARY_KEYS
    assert summary["method"] == method
    assert summary["seconds"] >= 0
    for key in ("unified_i2t", "unified_t2i", "unified_chance", "mean_i2t", "mean_t2i"):
        assert 0 <= summary[key] <= 1, key
    # Every method ends with every task's database stored and a complete final row.
    assert len(trainer.text_index) == len(trainer.image_index) == sum(len(t.database) for t in stream)
    for direction in ("i2t", "t2i"):
        assert np.isfinite(trainer.matrix.matrix(direction)[len(stream) - 1]).all()
    if method == "joint":  # one model for the merged tasks, evaluated on the stream: only a final row
        assert summary["tasks"] == 1
        assert len(summary["bits_per_task"]) == 1
        assert summary["bwt_i2t"] is None
        assert summary["prefix_drift"] is None
    else:
        assert summary["tasks"] == len(stream)
        assert len(summary["bits_per_task"]) == len(stream)
        assert summary["bwt_i2t"] is not None
        assert 0 <= summary["prefix_drift"] <= 1


@pytest.mark.parametrize("method", ["fixed-length", "finetune", "joint"])
def test_fixed_length_methods_never_change_bits(results, method):
    trainer, summary = results[method]
    assert trainer.model.width_history == [N_BITS]
    assert summary["final_bits"] == N_BITS
    assert set(summary["bits_per_task"]) == {N_BITS}
    assert trainer.image_index.segments == [(N_BITS, len(trainer.image_index))]
    assert all(r.extension["n_new_bits"] == 0 for r in trainer.reports)


@pytest.mark.parametrize("method", ["pbeh", "pbeh-reference"])
def test_extending_methods_follow_their_decisions(results, method):
    """The code grows exactly as the mode-centre decisions say (delta=2 bits, applied before the next task)."""
    trainer, summary = results[method]
    bits = summary["bits_per_task"]
    decided = [r.extension["n_new_bits"] for r in trainer.reports]
    assert set(decided) <= {0, 2}
    assert [b - a for a, b in itertools.pairwise(bits)] == decided[:-1]
    assert trainer.model.width_history == sorted(set(bits))
    # Both keep training the old bits on extension (pbeh's default follows the reference; freezing is an option).
    assert set(trainer.model.frozen_history) <= {False}


def test_build_trainer_configures_each_method(stream, tmp_path):
    common = {"n_bits": N_BITS, "hidden_dims": (16,), "config": make_config(epochs=3), "rho": 0.3, "delta": 2}
    pbeh = build_trainer("pbeh", stream, seed=5, checkpoint_dir=tmp_path, **common)
    assert pbeh.extension_policy == ModeCenterRule(rho=0.3, delta=2)
    assert pbeh.config == make_config(epochs=3, seed=5)  # the seed reaches the minibatch order ...
    assert pbeh.model.seed == 5  # ... and the model
    assert pbeh.checkpoint_dir == tmp_path  # extra keyword arguments reach the trainer
    assert pbeh.model.normalize_features
    assert pbeh.model.use_prompts
    assert pbeh.model.pool.attention == "sample"

    reference = build_trainer("pbeh-reference", stream, **common)
    assert reference.config.select_on == "test"
    assert reference.config.freeze_old_bits is False
    assert reference.config.epochs == 3
    assert reference.config.similarity_target == "reference"
    assert not reference.config.binary_similarity_normalize
    assert reference.model.pool.attention == "batch"
    assert reference.model.pool.init_std == 1.0
    assert not reference.model.normalize_features
    assert reference.extension_policy == ModeCenterRule(rho=0.3, delta=2)

    for method in ("fixed-length", "finetune", "joint"):
        assert build_trainer(method, stream, **common).extension_policy == NeverExtend()
    finetune = build_trainer("finetune", stream, **common)
    assert finetune.loss_weights.anchor == 0.0
    assert finetune.loss_weights.stored_codes == 0.0
    assert finetune.loss_weights.class_centers == 0.0
    assert finetune.loss_weights.previous_model == 0.0  # nothing of pbeh's against forgetting
    assert build_trainer("pbeh-no-centers", stream, **common).loss_weights == LossWeights.pbeh(class_centers=0.0)
    # otherwise the same recipe as pbeh, so the comparison isolates prompts, anchor and stored codes
    assert finetune.loss_weights.contrastive == build_trainer("pbeh", stream, **common).loss_weights.contrastive
    assert not finetune.model.use_prompts


def test_build_trainer_takes_an_extension_policy(stream):
    common = {"n_bits": N_BITS, "hidden_dims": (16,), "config": make_config(epochs=3)}
    rule = CollisionRule(rho=0.2, delta=3)
    assert build_trainer("pbeh", stream, extension_policy=rule, **common).extension_policy == rule
    assert build_trainer("pbeh-no-replay", stream, extension_policy=rule, **common).extension_policy == rule
    with pytest.raises(ValueError, match="extension_policy: method 'fixed-length' never extends"):
        build_trainer("fixed-length", stream, extension_policy=rule, **common)
    with pytest.raises(ValueError, match="extension_policy: expected an ExtensionPolicy or None, got str"):
        build_trainer("pbeh", stream, extension_policy="collision", **common)


def test_build_trainer_overrides_named_loss_weights(stream):
    common = {"n_bits": N_BITS, "hidden_dims": (16,), "config": make_config(epochs=3)}
    pbeh = build_trainer("pbeh", stream, loss_weight_overrides={"class_centers": 7.0}, **common)
    assert pbeh.loss_weights == LossWeights.pbeh(class_centers=7.0)
    finetune = build_trainer("finetune", stream, loss_weight_overrides={"stored_codes": 2.0}, **common)
    assert finetune.loss_weights.stored_codes == 2.0
    assert finetune.loss_weights.anchor == 0.0  # the method's other choices stay
    with pytest.raises(ValueError, match=r"unknown loss weight\(s\) \['centres'\]"):
        build_trainer("pbeh", stream, loss_weight_overrides={"centres": 1.0}, **common)
    with pytest.raises(TypeError, match="loss_weight_overrides: expected a mapping"):
        build_trainer("pbeh", stream, loss_weight_overrides=[("class_centers", 1.0)], **common)


def test_finetune_codes_ignore_the_prompts(results, stream):
    """Without prompt context, changing the prompt pool cannot change a code; with it (pbeh), it does."""
    features = stream[0].query.image
    for method, expect_same in (("finetune", True), ("pbeh", False)):
        model = results[method][0].model
        before = model.encode(features, "image")
        saved = {k: v.clone() for k, v in model.pool.state_dict().items()}
        try:
            with torch.no_grad():
                for p in model.pool.parameters():
                    p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 3.0)
            assert (model.encode(features, "image") == before) is expect_same, method
        finally:
            model.pool.load_state_dict(saved)


def test_joint_evaluates_every_task_with_one_model(results, stream):
    trainer, _ = results["joint"]
    (report,) = trainer.reports
    assert report.name == "evaluation of T1, T2, T3"
    assert report.n_database == sum(len(t.database) for t in stream)
    assert report.n_train == sum(len(t.train) for t in stream) - report.n_validation
    assert len(report.map_i2t) == len(stream)


def test_same_seed_same_result(results, stream):
    _, summary = run_method("fixed-length", stream, n_bits=N_BITS, hidden_dims=(16,), config=make_config(), rho=0.0)
    expected = dict(results["fixed-length"][1])
    for s in (summary, expected):
        s.pop("seconds")
    assert summary == expected


@pytest.mark.parametrize("function", [build_trainer, run_method])
def test_unknown_method_names_the_allowed_ones(stream, function):
    with pytest.raises(ValueError, match=re.escape(f"method: expected one of {METHODS}, got 'pbeh-v2'")):
        function("pbeh-v2", stream, n_bits=N_BITS, hidden_dims=(16,), config=make_config())


def test_the_center_prior_method_differs_from_pbeh_in_its_query_targets_only(results, stream):
    pbeh, _ = results["pbeh"]
    centred, _ = results["pbeh-center-prior"]
    assert centred.config.prior_targets == "centers"
    assert pbeh.config.prior_targets == "stored"
    for task in stream:  # the same training and stored codes
        ids = task.database.ids
        assert pbeh.image_index.get_codes(ids) == centred.image_index.get_codes(ids)
        assert pbeh.text_index.get_codes(ids) == centred.text_index.get_codes(ids)
    prior = centred.model.class_prior
    torch.testing.assert_close(prior.image_codes, prior.text_codes)  # one table of centres for both
    assert not torch.equal(pbeh.model.class_prior.image_codes, prior.image_codes)
