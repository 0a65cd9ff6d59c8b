"""Tests of pbeh.trainer: ContinualTrainer, TrainerConfig, TaskReport.

Behaviour and contracts, not metric values (the trainer's defaults are still being tuned): the shape of the continual
matrices, determinism, stored codes that are never re-encoded, code extension with frozen old bits, prefix drift,
checkpoint/resume, save/load round trips, epoch selection, the joint evaluation, every error path and the collapse
warning. R[t, i], the unified score, the chance level and the prefix drift are checked against brute-force
re-computations from the stored codes and the model. A small real-data run (Wikipedia-5) closes the file.
"""

from __future__ import annotations

import dataclasses
import filecmp
import itertools
import json
import logging
import math
import shutil

import numpy as np
import pytest
import torch

from pbeh.codes import Codes
from pbeh.data import Split, Task, TaskStream, synthetic_stream, wikipedia5
from pbeh.extension import FixedSchedule, NeverExtend
from pbeh.losses import LossWeights
from pbeh.metrics import map_at_k
from pbeh.model import CrossModalHashModel
from pbeh.serialization import FormatError
from pbeh.trainer import ContinualTrainer, TaskReport, TrainerConfig

N_BITS = 8
SUMMARY_KEYS = {
    "ties",
    *(
        f"unified_{direction}_{name}"
        for direction in ("i2t", "t2i")
        for name in (
            "p10",
            "map100",
            "p10_per_task",
            "map100_per_task",
            "newest_share_per_task",
            "newest_share_neutral_per_task",
        )
    ),
    "tasks",
    "final_bits",
    "bits_per_task",
    "unified_i2t",
    "unified_t2i",
    "unified_chance",
    "prefix_drift",
    "mean_i2t",
    "mean_t2i",
    "bwt_i2t",
    "bwt_t2i",
    "forgetting_i2t",
    "forgetting_t2i",
    "bytes_per_item",
}


# ---------------------------------------------------------------------------------------------------- helpers
def make_stream(seed: int = 0) -> TaskStream:
    # image_dim 16: the prompt width is max(image_dim, text_dim) and must be divisible by the pool's 8 heads.
    return synthetic_stream(n_tasks=3, classes_per_task=2, image_dim=16, text_dim=8, items_per_class=20, seed=seed)


def make_config(**overrides) -> TrainerConfig:
    # The frozen extension path is the one with exactness guarantees to test; its counterpart sets False explicitly.
    # ties="reference": the brute-force checks below rank ties in database order, as the released evaluation does.
    defaults = {
        "epochs": 2, "batch_size": 32, "eval_k": None, "lr": 1e-3, "freeze_old_bits": True, "ties": "reference",
        "eval_every": 1,
    }  # fmt: skip
    return TrainerConfig(**{**defaults, **overrides})


def make_trainer(
    stream: TaskStream,
    *,
    policy=None,
    model_seed: int = 2025,
    n_bits: int = N_BITS,
    config: TrainerConfig | None = None,
    **trainer_kwargs,
) -> ContinualTrainer:
    return ContinualTrainer.for_stream(
        stream,
        n_bits=n_bits,
        hidden_dims=(16,),
        model_seed=model_seed,
        config=config or make_config(),
        extension_policy=policy if policy is not None else FixedSchedule(bits_per_task=2),
        **trainer_kwargs,
    )


def all_codes(index) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Every stored code of an index: n_bits -> (ids, packed codes)."""
    out = {}
    for n_bits, _ in index.segments:
        ids = index.get_ids(n_bits=n_bits)
        out[n_bits] = (ids, index.get_codes(ids).packed.copy())
    return out


def assert_same_codes(a, b) -> None:
    codes_a, codes_b = all_codes(a), all_codes(b)
    assert sorted(codes_a) == sorted(codes_b)
    for n_bits in codes_a:
        np.testing.assert_array_equal(codes_a[n_bits][0], codes_b[n_bits][0])
        np.testing.assert_array_equal(codes_a[n_bits][1], codes_b[n_bits][1])


def assert_same_matrices(a: ContinualTrainer, b: ContinualTrainer) -> None:
    for direction in ("i2t", "t2i"):
        np.testing.assert_array_equal(a.matrix.matrix(direction), b.matrix.matrix(direction))


def reference_map(query: Codes, db: Codes, query_labels, db_labels, db_ids=None) -> float:
    """Brute-force mAP@all with the reference rule: Hamming on the common prefix, ties in database order (or by
    ascending id when ``db_ids`` is given), AP normalised by the relevant items retrieved."""
    n = min(query.n_bits, db.n_bits)
    q_bits, d_bits = query.truncate(n).to_bool(), db.truncate(n).to_bool()
    dist = (q_bits[:, None, :] != d_bits[None, :, :]).sum(axis=2)
    relevant = (np.asarray(query_labels, dtype=np.int64) @ np.asarray(db_labels, dtype=np.int64).T) > 0
    aps = []
    for r in range(len(query)):
        order = np.argsort(dist[r], kind="stable") if db_ids is None else np.lexsort((db_ids, dist[r]))
        hit_positions = np.flatnonzero(relevant[r, order]) + 1
        aps.append(0.0 if hit_positions.size == 0 else np.mean(np.arange(1, hit_positions.size + 1) / hit_positions))
    return float(np.mean(aps))


def reference_drift(trainer: ContinualTrainer, tasks) -> float:
    """Fraction of the stored bits of ``tasks`` (both modalities) that re-encoding with the current model flips."""
    flipped = total = 0
    for task in tasks:
        db = task.database
        for index, features, modality in (
            (trainer.image_index, db.image, "image"),
            (trainer.text_index, db.text, "text"),
        ):
            stored = index.get_codes(db.ids)
            now = trainer.model.encode(features, modality).truncate(stored.n_bits)
            flipped += int((now.to_bool() != stored.to_bool()).sum())
            total += len(stored) * stored.n_bits
    return flipped / total


def renamed(stream: TaskStream, prefix: str) -> TaskStream:
    return TaskStream([dataclasses.replace(t, name=f"{prefix}{i}") for i, t in enumerate(stream)])


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def stream() -> TaskStream:
    return make_stream()


@pytest.fixture(scope="module")
def fixed_run(stream):
    """A 3-task run with 2 new bits after every task (old bits frozen), plus per-task snapshots taken by a callback:
    the stored codes of every task, the hasher's logits for a fixed z, and a brute-force prefix drift."""
    z = torch.randn(20, 2 * 16, generator=torch.Generator().manual_seed(5))
    snapshots: list[dict] = []
    holder: list[ContinualTrainer] = []

    def snapshot(report: TaskReport) -> None:
        trainer = holder[0]
        with torch.no_grad():
            logits = {m: trainer.model.hasher.logits(z, m).clone() for m in ("image", "text")}
        snapshots.append(
            {
                "report": report,
                "codes": [
                    (trainer.image_index.get_codes(t.database.ids), trainer.text_index.get_codes(t.database.ids))
                    for t in stream[: report.task + 1]
                ],
                "logits": logits,
                "drift": reference_drift(trainer, stream[: report.task]) if report.task else None,
            }
        )

    trainer = make_trainer(stream, callbacks=[snapshot])
    holder.append(trainer)
    reports = trainer.fit(stream)
    return trainer, reports, snapshots


@pytest.fixture(scope="module")
def never_run(stream):
    """A 3-task run at a fixed length (one index segment), selecting the epoch on the test queries."""
    trainer = make_trainer(stream, policy=NeverExtend(), config=make_config(select_on="test", epochs=3))
    return trainer, trainer.fit(stream)


# ---------------------------------------------------------------------------------------------------- fit
def test_fit_one_report_per_task_and_lower_triangular_matrices(fixed_run, stream):
    trainer, reports, _ = fixed_run
    assert len(reports) == len(stream) == trainer.n_tasks_done == 3
    assert [r.task for r in reports] == [0, 1, 2]
    assert [r.name for r in reports] == [t.name for t in stream]
    for direction in ("i2t", "t2i"):
        r = trainer.matrix.matrix(direction)
        assert r.shape == (3, 3)
        lower = np.tril(np.ones((3, 3), dtype=bool))
        assert np.isfinite(r[lower]).all()
        assert np.isnan(r[~lower]).all()
        assert ((r[lower] >= 0) & (r[lower] <= 1)).all()
        for report in reports:  # each report carries its row
            row = report.map_i2t if direction == "i2t" else report.map_t2i
            np.testing.assert_array_equal(row, r[report.task, : report.task + 1])
    for report, task in zip(reports, stream, strict=True):
        assert report.n_database == len(task.database)
        assert report.n_train + report.n_validation == len(task.train)
        assert report.n_validation > 0
        assert report.epochs == 2
        assert len(report.history) == 2
        assert math.isfinite(report.final_loss)
        assert report.loss_terms
        assert report.n_prompts >= 1
        assert report.seconds >= 0


def test_summary_keys_and_values(fixed_run):
    trainer, reports, _ = fixed_run
    summary = trainer.summary()
    assert set(summary) == SUMMARY_KEYS
    assert summary["tasks"] == 3
    assert summary["bits_per_task"] == [8, 10, 12]
    assert summary["final_bits"] == 12
    assert summary["unified_i2t"] == reports[-1].unified_i2t
    assert summary["unified_chance"] == reports[-1].unified_chance
    assert summary["prefix_drift"] == reports[-1].prefix_drift
    sizes = [len(task.database) for task in trainer._seen]  # stored at 8, 10, 12 bits: 1, 2, 2 bytes
    assert summary["bytes_per_item"] == pytest.approx((sizes[0] * 1 + sizes[1] * 2 + sizes[2] * 2) / sum(sizes))
    r = trainer.matrix.matrix("i2t")
    assert summary["mean_i2t"] == pytest.approx(r[2].mean())
    assert summary["bwt_i2t"] == pytest.approx(np.mean([r[2, 0] - r[0, 0], r[2, 1] - r[1, 1]]))
    json.dumps(summary, allow_nan=False)  # JSON-safe


def test_the_matrix_keeps_the_top_of_the_index_after_every_task(fixed_run):
    trainer, reports, _ = fixed_run
    scalars = trainer.matrix.scalars
    for direction in ("i2t", "t2i"):
        for t, report in enumerate(reports):
            figures = report.unified[direction]
            assert scalars[f"unified_{direction}_p10"][t] == figures["p_at_10"]
            assert scalars[f"unified_{direction}_map100"][t] == figures["map_at_100"]
            if t == 0:  # no earlier task yet
                assert np.isnan(scalars[f"unified_{direction}_old_p10"][t])
                assert np.isnan(scalars[f"unified_{direction}_newest_share"][t])
                assert np.isnan(scalars[f"unified_{direction}_newest_share_neutral"][t])
                continue
            assert scalars[f"unified_{direction}_old_p10"][t] == pytest.approx(np.mean(figures["per_task_p_at_10"][:t]))
            assert scalars[f"unified_{direction}_newest_share"][t] == max(figures["per_task_newest_share"][:t])
            worst = int(np.argmax(figures["per_task_newest_share"][:t]))
            neutral = scalars[f"unified_{direction}_newest_share_neutral"][t]
            assert neutral == figures["per_task_newest_share_neutral"][worst]
    again = type(trainer.matrix).from_dict(json.loads(json.dumps(trainer.matrix.to_dict())))
    np.testing.assert_array_equal(again.scalars["unified_i2t_old_p10"], scalars["unified_i2t_old_p10"])


def test_unified_chance_matches_brute_force(fixed_run, stream):
    _, reports, _ = fixed_run
    for t, report in enumerate(reports):
        q = np.concatenate([task.query.labels for task in stream[: t + 1]]).astype(np.int64)
        db = np.concatenate([task.database.labels for task in stream[: t + 1]]).astype(np.int64)
        assert report.unified_chance == pytest.approx(((q @ db.T) > 0).mean(axis=1).mean())
        assert 0 < report.unified_chance <= 1
        assert 0 <= report.unified_i2t <= 1
        assert 0 <= report.unified_t2i <= 1


def test_matrix_rows_match_brute_force_on_stored_codes(fixed_run, stream):
    """R[t, i]: the task-i queries encoded now (12 bits at the end) against task i's stored codes (8, 10, 12 bits),
    compared on the common prefix."""
    trainer, _, _ = fixed_run
    model, t = trainer.model, 2
    for i, task in enumerate(stream):
        q, db = task.query, task.database
        stored_text = trainer.text_index.get_codes(db.ids)
        stored_image = trainer.image_index.get_codes(db.ids)
        assert stored_text.n_bits == 8 + 2 * i
        i2t = reference_map(model.encode(q.image, "image", role="query"), stored_text, q.labels, db.labels)
        t2i = reference_map(model.encode(q.text, "text", role="query"), stored_image, q.labels, db.labels)
        assert trainer.matrix.matrix("i2t")[t, i] == pytest.approx(i2t, abs=1e-12)
        assert trainer.matrix.matrix("t2i")[t, i] == pytest.approx(t2i, abs=1e-12)


def test_unified_score_matches_brute_force_at_one_length(never_run, stream):
    """At one code length the unified ranking is plain Hamming distance with ties by ascending id."""
    trainer, reports = never_run
    assert trainer.image_index.segments == [(N_BITS, sum(len(t.database) for t in stream))]
    q_labels = np.concatenate([t.query.labels for t in stream])
    ids = np.concatenate([t.database.ids for t in stream])
    db_labels = np.concatenate([t.database.labels for t in stream])
    stored_text = trainer.text_index.get_codes(ids)
    stored_image = trainer.image_index.get_codes(ids)
    q_image = trainer.model.encode(np.concatenate([t.query.image for t in stream]), "image", role="query")
    q_text = trainer.model.encode(np.concatenate([t.query.text for t in stream]), "text", role="query")
    assert reports[-1].unified_i2t == pytest.approx(reference_map(q_image, stored_text, q_labels, db_labels, ids))
    assert reports[-1].unified_t2i == pytest.approx(reference_map(q_text, stored_image, q_labels, db_labels, ids))


# ---------------------------------------------------------------------------------------------------- determinism
def test_same_seeds_give_identical_runs(fixed_run, stream):
    first, _, _ = fixed_run
    second = make_trainer(stream)
    second.fit(stream)
    assert_same_matrices(first, second)
    assert_same_codes(first.image_index, second.image_index)
    assert_same_codes(first.text_index, second.text_index)
    assert first.summary() == second.summary()


@pytest.mark.parametrize("change", ["config_seed", "model_seed"])
def test_another_seed_gives_another_run(stream, change):
    short = stream[:2]
    kwargs = {"policy": NeverExtend()}
    base = make_trainer(short, **kwargs)
    if change == "config_seed":
        other = make_trainer(short, config=make_config(seed=7), **kwargs)
    else:
        other = make_trainer(short, model_seed=7, **kwargs)
    base.fit(short)
    other.fit(short)
    assert not np.array_equal(all_codes(base.image_index)[N_BITS][1], all_codes(other.image_index)[N_BITS][1])
    assert not np.array_equal(base.matrix.matrix("i2t"), other.matrix.matrix("i2t"), equal_nan=True)


# ---------------------------------------------------------------------------------------------------- storage
def test_stored_codes_are_never_re_encoded(fixed_run, stream):
    trainer, _, snapshots = fixed_run
    for snap in snapshots:
        for i, (image_codes, text_codes) in enumerate(snap["codes"]):
            ids = stream[i].database.ids
            assert trainer.image_index.get_codes(ids) == image_codes
            assert trainer.text_index.get_codes(ids) == text_codes
    # ... although the model kept training: re-encoding task 0 now gives other (and longer) codes.
    db = stream[0].database
    now = trainer.model.encode(db.image, "image")
    assert now.n_bits == 12
    assert now.truncate(8) != snapshots[0]["codes"][0][0]


# ---------------------------------------------------------------------------------------------------- extension
def test_fixed_schedule_grows_the_code(fixed_run, stream):
    trainer, reports, _ = fixed_run
    assert [r.n_bits for r in reports] == [8, 10, 12]
    assert [r.extension["n_new_bits"] for r in reports] == [2, 2, 2]
    assert all("fixed schedule" in r.extension["reason"] for r in reports)
    assert trainer.model.width_history == [8, 10, 12]
    assert trainer.model.frozen_history == [True, True]
    assert trainer.model.n_bits == 12  # the extension decided after the last task waits for a next task
    sizes = [len(t.database) for t in stream]
    assert trainer.image_index.segments == [(8, sizes[0]), (10, sizes[1]), (12, sizes[2])]
    assert trainer.text_index.segments == trainer.image_index.segments
    np.testing.assert_array_equal(trainer.matrix.scalars["n_bits"], [8, 10, 12])


def test_frozen_old_bits_are_exact_for_a_fixed_z(fixed_run):
    _, _, snapshots = fixed_run
    for before, after in itertools.pairwise(snapshots):
        for modality in ("image", "text"):
            old, new = before["logits"][modality], after["logits"][modality]
            assert new.shape[1] == old.shape[1] + 2
            torch.testing.assert_close(new[:, : old.shape[1]], old, rtol=0, atol=0)


def test_unfrozen_old_bits_keep_training(stream):
    """The counterpart of the frozen test: with ``freeze_old_bits=False`` the old outputs move."""
    z = torch.randn(20, 32, generator=torch.Generator().manual_seed(5))
    trainer = make_trainer(stream, config=make_config(freeze_old_bits=False, select_on="last"))
    trainer.fit_task(stream[0])
    with torch.no_grad():
        before = trainer.model.hasher.logits(z, "image").clone()
    trainer.fit_task(stream[1])
    assert trainer.model.frozen_history == [False]
    with torch.no_grad():
        after = trainer.model.hasher.logits(z, "image")
    assert not torch.equal(after[:, :8], before)


def test_prefix_drift_is_reported_from_the_second_task(fixed_run):
    trainer, reports, snapshots = fixed_run
    assert reports[0].prefix_drift is None
    assert np.isnan(trainer.matrix.scalars["prefix_drift"][0])
    for report, snap in zip(reports[1:], snapshots[1:], strict=True):
        assert isinstance(report.prefix_drift, float)
        assert 0.0 <= report.prefix_drift <= 1.0
        assert report.prefix_drift == pytest.approx(snap["drift"], abs=1e-12)
        assert trainer.matrix.scalars["prefix_drift"][report.task] == pytest.approx(report.prefix_drift)


# ---------------------------------------------------------------------------------------------------- checkpoints
def test_crash_and_resume_equals_an_uninterrupted_run(fixed_run, stream, tmp_path):
    uninterrupted, _, _ = fixed_run
    checkpoints = tmp_path / "ck"

    def crash_on_task_1(report: TaskReport) -> None:
        if report.task == 1:
            raise RuntimeError("simulated crash")

    crashed = make_trainer(stream, checkpoint_dir=checkpoints, callbacks=[crash_on_task_1])
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.fit(stream)
    latest = json.loads((checkpoints / "latest.json").read_text())
    assert latest == {"directory": "task_001", "tasks_done": 2}
    assert len(ContinualTrainer.load(checkpoints / latest["directory"]).reports) == 2
    backup = tmp_path / "ck_copy"
    shutil.copytree(checkpoints, backup)

    resumed_tasks: list[int] = []
    resumed = make_trainer(stream, checkpoint_dir=checkpoints, callbacks=[lambda r: resumed_tasks.append(r.task)])
    reports = resumed.fit(stream)
    assert resumed_tasks == [2]  # tasks 0 and 1 came from the checkpoint
    assert len(reports) == 3
    assert_same_matrices(resumed, uninterrupted)
    assert_same_codes(resumed.image_index, uninterrupted.image_index)
    assert_same_codes(resumed.text_index, uninterrupted.text_index)
    assert resumed.summary() == uninterrupted.summary()
    assert json.loads((checkpoints / "latest.json").read_text()) == {"directory": "task_002", "tasks_done": 3}
    assert (checkpoints / "task_002" / "trainer.json").is_file()

    # A stream with other task names, or fewer tasks than the checkpoint has done, is refused.
    with pytest.raises(ValueError, match="task 0 is 'X0' but this trainer already trained 'T1'"):
        make_trainer(stream, checkpoint_dir=backup).fit(renamed(stream, "X"))
    with pytest.raises(ValueError, match="2 tasks are already done but the stream has only 1"):
        make_trainer(stream, checkpoint_dir=backup).fit(stream[:1])
    # resume=False ignores the checkpoint and trains every task again.
    seen: list[int] = []
    fresh = make_trainer(stream[:1], checkpoint_dir=backup, callbacks=[lambda r: seen.append(r.task)])
    fresh.fit(stream[:1], resume=False)
    assert seen == [0]


# ---------------------------------------------------------------------------------------------------- save / load
def test_save_load_save_round_trip(fixed_run, stream, tmp_path):
    trainer, reports, _ = fixed_run
    trainer.save(tmp_path / "first")
    loaded = ContinualTrainer.load(tmp_path / "first")
    assert loaded.summary() == trainer.summary()
    assert [r.to_dict() for r in loaded.reports] == [r.to_dict() for r in reports]
    assert loaded.config == trainer.config
    assert loaded.loss_weights == trainer.loss_weights
    assert loaded.extension_policy == trainer.extension_policy
    assert_same_matrices(loaded, trainer)
    for modality in ("image", "text"):
        features = np.concatenate([getattr(t.query, modality) for t in stream])
        codes = trainer.model.encode(features, modality)
        assert loaded.model.encode(features, modality) == codes
        for a, b in ((trainer.image_index, loaded.image_index), (trainer.text_index, loaded.text_index)):
            ra, rb = a.search(codes, 10), b.search(codes, 10)
            np.testing.assert_array_equal(ra.ids, rb.ids)
            np.testing.assert_array_equal(ra.distances, rb.distances)
    loaded.save(tmp_path / "second")
    files = sorted(p.relative_to(tmp_path / "first") for p in (tmp_path / "first").rglob("*") if p.is_file())
    assert {f.suffix for f in files} == {".safetensors", ".json"}
    assert len(files) == 6
    for f in files:
        assert filecmp.cmp(tmp_path / "first" / f, tmp_path / "second" / f, shallow=False), f
    # Saving over an existing state replaces it and leaves no temporary directory behind.
    loaded.save(tmp_path / "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "second"]


def test_load_refuses_another_format_version(fixed_run, tmp_path):
    trainer, _, _ = fixed_run
    trainer.save(tmp_path / "state")
    meta = json.loads((tmp_path / "state" / "trainer.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "state" / "trainer.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="trainer format_version 99"):
        ContinualTrainer.load(tmp_path / "state")


def test_fit_continues_after_load(fixed_run, stream, tmp_path):
    uninterrupted, _, _ = fixed_run
    partial = make_trainer(stream)
    partial.fit(stream[:2])
    partial.save(tmp_path / "state")
    loaded = ContinualTrainer.load(tmp_path / "state")
    loaded.fit(stream)
    assert_same_matrices(loaded, uninterrupted)


# ---------------------------------------------------------------------------------------------------- selection
def test_select_on_validation_keeps_the_best_epoch(fixed_run, stream):
    trainer, reports, _ = fixed_run
    for report in reports:
        scores = [h["selection_score"] for h in report.history]
        assert report.selection_score == max(scores)
        assert report.best_epoch == 1 + int(np.argmax(scores))
    # The model after the last task is that task's best epoch: recompute the validation score with it.
    cfg, t = trainer.config, 2
    train, validation = stream[t].split_validation(cfg.validation_fraction, seed=cfg.seed + t)
    score = 0.0
    for q_mod, d_mod in (("image", "text"), ("text", "image")):
        q = trainer.model.encode(getattr(validation, q_mod), q_mod)
        d = trainer.model.encode(getattr(train, d_mod), d_mod)
        score += map_at_k(q, d, validation.labels, train.labels, k=cfg.eval_k)
    assert reports[t].selection_score == pytest.approx(score)


def test_select_on_test_scores_the_task_queries(never_run, stream):
    _, reports = never_run
    for report in reports:
        assert report.n_validation == 0
        scores = [h["selection_score"] for h in report.history]
        assert len(scores) == 3
        assert report.selection_score == max(scores)
        assert report.best_epoch == 1 + int(np.argmax(scores))
    # The kept epoch encoded the database, so its score is R[t, t] of both directions with the heads alone (the class
    # prior is not in the selection score): checked on the last task, whose kept model is the final one.
    trainer, last, (q, db) = never_run[0], reports[-1], (stream[2].query, stream[2].database)
    cfg = trainer.config
    heads = sum(
        map_at_k(trainer.model.encode(getattr(q, m), m), stored.get_codes(db.ids), q.labels, db.labels, k=cfg.eval_k)
        for m, stored in (("image", trainer.text_index), ("text", trainer.image_index))
    )
    assert last.selection_score == pytest.approx(heads)
    assert trainer.model.class_prior.active  # and the reported R[t, t] has the prior in its queries


def test_select_on_last_and_eval_every(stream):
    trainer = make_trainer(stream, config=make_config(select_on="last", epochs=3))
    report = trainer.fit_task(stream[0])
    assert report.selection_score is None
    assert report.best_epoch == 3
    assert report.n_validation == 0
    assert all("selection_score" not in h for h in report.history)
    trainer = make_trainer(stream, config=make_config(epochs=3, eval_every=2))
    report = trainer.fit_task(stream[0])
    assert ["selection_score" in h for h in report.history] == [False, True, True]  # every 2nd epoch and the last


# ---------------------------------------------------------------------------------------------------- joint
def test_evaluate_stream_after_joint_training(stream):
    trainer = make_trainer(stream, policy=NeverExtend())
    trainer.fit([stream.joint()])
    n_joint = len(trainer.text_index)
    ev = trainer.evaluate_stream(stream)
    assert ev is not trainer
    assert ev.model is trainer.model
    assert len(trainer.text_index) == n_joint  # the trained trainer is untouched
    assert len(ev.text_index) == len(ev.image_index) == sum(len(t.database) for t in stream)
    assert len(ev.reports) == 1
    for direction in ("i2t", "t2i"):
        r = ev.matrix.matrix(direction)
        assert np.isfinite(r[2]).all()
        assert np.isnan(r[:2]).all()
    for i, task in enumerate(stream):
        q, db = task.query, task.database
        expected = reference_map(
            trainer.model.encode(q.image, "image", role="query"), ev.text_index.get_codes(db.ids), q.labels, db.labels
        )
        assert ev.matrix.matrix("i2t")[2, i] == pytest.approx(expected, abs=1e-12)
    summary = ev.summary()
    assert set(summary) == SUMMARY_KEYS
    assert 0 <= summary["unified_i2t"] <= 1
    assert 0 <= summary["unified_t2i"] <= 1
    assert 0 < summary["unified_chance"] <= 1
    assert summary["mean_i2t"] == pytest.approx(ev.matrix.matrix("i2t")[2].mean())
    assert summary["bwt_i2t"] is None  # no diagonal: nothing was trained task by task
    with pytest.raises(ValueError, match="stream: expected at least one task"):
        trainer.evaluate_stream([])


# ---------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("epochs", 0, "epochs: expected a positive int, got 0"),
        ("epochs", 2.0, "epochs: expected a positive int"),
        ("epochs", True, "epochs: expected a positive int"),
        ("batch_size", -1, "batch_size: expected a positive int"),
        ("eval_every", 0, "eval_every: expected a positive int"),
        ("samples_per_prompt", 0, "samples_per_prompt: expected a positive int"),
        ("lr", 0.0, "lr: expected a positive finite number"),
        ("lr", float("nan"), "lr: expected a positive finite number"),
        ("lr", "0.1", "lr: expected a positive finite number"),
        ("temperature", float("inf"), "temperature: expected a positive finite number"),
        ("later_task_head_lr_scale", -0.1, "later_task_head_lr_scale: expected a finite number >= 0"),
        ("weight_decay", float("nan"), "weight_decay: expected a finite number >= 0"),
        ("select_on", "best", r"select_on: expected one of \('validation', 'test', 'last'\), got 'best'"),
        ("validation_fraction", 0.0, r"validation_fraction: expected a number in \(0, 1\)"),
        ("validation_fraction", 1.0, r"validation_fraction: expected a number in \(0, 1\)"),
        ("validation_fraction", float("nan"), r"validation_fraction: expected a number in \(0, 1\)"),
        ("eval_k", 0, "eval_k: expected a positive int or None"),
        ("eval_k", 10.0, "eval_k: expected a positive int or None"),
        ("prompts_per_task", 0, "prompts_per_task: expected a positive int or None"),
        ("prompt_init", "zeros", "prompt_init: expected 'normal' or 'kmeans', got 'zeros'"),
        ("similarity_target", "dot", "similarity_target: expected one of"),
    ],
)
def test_trainer_config_rejects_each_invalid_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainerConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("eval_k", True),
        ("prompts_per_task", True),
        ("freeze_old_bits", "no"),
        ("binary_similarity_normalize", "no"),
        ("seed", "7"),
        ("show_progress", 1),
    ],
)
def test_trainer_config_rejects_wrong_types(field, value):
    with pytest.raises((TypeError, ValueError), match=field):
        TrainerConfig(**{field: value})


def test_trainer_config_dict_round_trip():
    config = TrainerConfig(epochs=3, eval_k=None, select_on="last", prompts_per_task=2)
    assert TrainerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"config: unknown TrainerConfig keys \['n_epochs'\]"):
        TrainerConfig.from_dict({"n_epochs": 3})


def test_trainer_constructor_errors(stream):
    model = CrossModalHashModel(16, 8, n_bits=8, hidden_dims=(16,))
    with pytest.raises(TypeError, match="model: expected a CrossModalHashModel, got Linear"):
        ContinualTrainer(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="config: expected a TrainerConfig, got dict"):
        ContinualTrainer(model, config={"epochs": 2})
    with pytest.raises(TypeError, match="loss_weights: expected a LossWeights, got dict"):
        ContinualTrainer(model, loss_weights={"anchor": 0.1})
    with pytest.raises(ValueError, match="score"):
        ContinualTrainer(model, index_score="cosine")
    assert ContinualTrainer(model, loss_weights=LossWeights(anchor=0.0)).loss_weights.anchor == 0.0


def test_trainer_rejects_a_non_policy():
    model = CrossModalHashModel(16, 8, n_bits=8, hidden_dims=(16,))
    with pytest.raises(TypeError, match="extension_policy: expected an ExtensionPolicy"):
        ContinualTrainer(model, extension_policy="never")


def test_fit_errors(stream):
    trainer = make_trainer(stream)
    with pytest.raises(ValueError, match="stream: expected at least one task, got none"):
        trainer.fit([])
    with pytest.raises(TypeError, match=r"task: expected a pbeh\.data\.Task, got Split"):
        trainer.fit_task(stream[0].train)
    other = synthetic_stream(n_tasks=1, classes_per_task=2, image_dim=16, text_dim=4, items_per_class=10)
    with pytest.raises(
        ValueError, match=r"feature widths \(image, text\) \(16, 4\) do not match the model's \(16, 8\)"
    ):
        trainer.fit(other)
    assert trainer.n_tasks_done == 0
    assert trainer.model.n_tasks == 0


def _task_with_ids(task: Task, name: str, ids: np.ndarray) -> Task:
    db = task.database
    database = Split(db.image, db.text, db.labels, ids)
    return Task(name, train=task.train, query=task.query, database=database, classes=task.classes)


def test_reused_database_ids_are_refused(stream):
    """Two tasks whose databases share item ids cannot both be stored."""
    first = _task_with_ids(stream[0], "A", np.arange(len(stream[0].database)))
    second = _task_with_ids(stream[1], "B", np.arange(len(stream[1].database)))
    trainer = make_trainer(stream, policy=NeverExtend())
    trainer.fit_task(first)
    with pytest.raises(ValueError, match="ids"):
        trainer.fit_task(second)


def test_refused_task_leaves_the_trainer_usable(stream):
    first = _task_with_ids(stream[0], "A", np.arange(len(stream[0].database)))
    second = _task_with_ids(stream[1], "B", np.arange(len(stream[1].database)))
    trainer = make_trainer(stream, policy=NeverExtend())
    trainer.fit_task(first)
    with pytest.raises(ValueError, match="ids"):
        trainer.fit_task(second)
    assert trainer.model.n_tasks == 1  # refused before a pool was added or anything trained
    third = _task_with_ids(stream[1], "C", np.arange(len(stream[1].database)) + 10_000)
    trainer.fit_task(third)
    assert trainer.n_tasks_done == 2


# ---------------------------------------------------------------------------------------------------- collapse
def test_constant_codes_log_a_collapse_warning(stream, caplog):
    trainer = make_trainer(stream, policy=NeverExtend(), config=make_config(select_on="last"))
    for segments in trainer.model.hasher.heads.values():  # output rows: zero weights, constant bias, frozen
        for segment in segments:
            for block in segment.blocks:
                with torch.no_grad():
                    block.weight.zero_()
                    block.bias.fill_(1.0)
                block.requires_grad_(False)
    logger = "pbeh.training.evaluation"  # the module that checks for collapse
    with caplog.at_level(logging.WARNING, logger=logger):
        report = trainer.fit_task(stream[0])
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == logger]
    assert any("image codes collapsed: 8 of 8 bits constant" in m for m in messages)
    assert any("text codes collapsed" in m and "1 distinct codes" in m for m in messages)
    # the warning says what to change
    assert any("raise epochs or lower batch_size" in m and "2 optimiser steps" in m for m in messages)
    for modality in ("image", "text"):
        assert report.collapse[modality]["collapsed"]
        assert report.collapse[modality]["all_equal"]
        assert report.collapse[modality]["n_distinct_codes"] == 1


def test_healthy_codes_are_not_reported_as_all_equal(fixed_run):
    _, reports, _ = fixed_run
    for report in reports:
        for modality in ("image", "text"):
            assert report.collapse[modality]["n_codes"] == report.n_database
            assert not report.collapse[modality]["all_equal"]


# ---------------------------------------------------------------------------------------------------- real data
def test_wikipedia5_small_run_learns(shared_data):
    stream = wikipedia5(shared_data)
    assert len(stream) == 5
    trainer = ContinualTrainer.for_stream(stream, n_bits=16, hidden_dims=(64,), config=TrainerConfig(epochs=3))
    reports = trainer.fit(stream)
    assert len(reports) == 5
    for direction in ("i2t", "t2i"):
        r = trainer.matrix.matrix(direction)
        assert np.isfinite(r[np.tril_indices(5)]).all()
    summary = trainer.summary()
    assert 0 < summary["unified_chance"] < 1
    assert math.isfinite(summary["unified_i2t"])
    assert math.isfinite(summary["unified_t2i"])
    # Learning happened: the unified image-to-text mAP over all five tasks beats a random ranking.
    assert summary["unified_i2t"] > summary["unified_chance"]


def test_task_report_dict_round_trip(fixed_run):
    _, reports, _ = fixed_run
    for report in reports:
        data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
        assert TaskReport.from_dict(data).to_dict() == report.to_dict()


def test_fit_skips_done_tasks_and_continues(stream):
    """fit after fit_task continues with the next task; fit on a finished trainer trains nothing."""
    trainer = make_trainer(stream, policy=NeverExtend(), config=make_config(select_on="last"))
    trainer.fit_task(stream[0])
    reports = trainer.fit(stream[:2])
    assert [r.name for r in reports] == ["T1", "T2"]
    assert trainer.matrix.matrix("i2t").shape == (2, 2)
    assert len(trainer.fit(stream[:2])) == 2
    assert trainer.model.n_tasks == 2
    np.testing.assert_array_equal(trainer.matrix.scalars["n_bits"], [8, 8])  # scalars survive the matrix growing
    assert np.isfinite(trainer.matrix.scalars["unified_i2t"]).all()


def test_fit_in_memory_checks_the_done_tasks(stream):
    trainer = make_trainer(stream, policy=NeverExtend(), config=make_config(select_on="last"))
    trainer.fit(stream[:1])
    with pytest.raises(ValueError, match="task 0 is 'X0'"):
        trainer.fit(renamed(stream, "X"))


def test_for_stream_accepts_any_feature_widths():
    small = synthetic_stream(n_tasks=1, classes_per_task=2, image_dim=12, text_dim=8, items_per_class=10)
    trainer = ContinualTrainer.for_stream(small, n_bits=8, hidden_dims=(16,), config=make_config())
    assert trainer.model.feature_dim("image") == 12


def test_default_keeps_old_bits_training():
    """The default follows the reference (and the measurement in TrainerConfig's docstring): no freezing."""
    assert TrainerConfig().freeze_old_bits is False
