"""Tests of pbeh.training (torch.distributed helpers) and of training and feature extraction on 2 gloo processes.

The multi-process checks launch ``torchrun --standalone --nproc_per_node 2 tests/_distributed_worker.py`` once
(module fixture) and compare its results with one process trained on the same global batches and seed:

* all_gather_rows: gathered values equal to one process's batch and the gradient summed over ranks equal to the
  global loss's gradient (brute force), to 1e-5;
* training (3 tasks, an extension after each, prototype replay, a checkpoint after task 2 and a resumed run): the
  ranks hold identical parameters; against one process, at most ``MAX_BIT_DIFFERENCE`` of the stored bits differ and
  every mAP of the continual matrices is within ``MAP_TOLERANCE``;
* ``pbeh train`` in the 2-process group: rank 0 prints the summary one process prints (integers equal, figures within
  ``MAP_TOLERANCE``) and writes the run directory; rank 1 prints nothing;
* FeatureCache: the cache file written by 2 ranks holds the same ids in the same order, the same metadata and
  features within 1e-5 of one process's file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pbeh.training import (
    DistributedMinibatchSampler,
    TrainingForward,
    all_gather_rows,
    broadcast_object,
    current,
    init_from_env,
    shard_bounds,
    wrap_for_training,
)

# What the 2-process run must reproduce of one process's run. Differences come only from the order in which floats
# are summed (DDP's gradient all-reduce, the gathered batch's local rows): measured 0 differing bits and mAP equal to
# 1e-16 on this machine; the bounds leave room for other BLAS builds.
MAX_BIT_DIFFERENCE = 0.02
MAP_TOLERANCE = 0.02

TRAIN_OPTIONS = {
    "config": {"epochs": 4, "batch_size": 32, "eval_every": 2, "prototype_replay": 16, "seed": 3},
    "model": {"n_bits": 8, "hidden_dims": (16,)},
    "bits_per_task": 2,
}

CLI_ARGS = ["train", "--epochs", "2", "--bits", "8", "--hidden", "16", "--json"]


def stream_options() -> dict:
    return {"n_tasks": 3, "seed": 0}


def stored_signs(trainer, stream) -> dict[str, np.ndarray]:
    """Every stored code of both indexes as ±1 values, task after task (each at its own length), flattened."""
    out = {}
    for name, index in (("image_codes", trainer.image_index), ("text_codes", trainer.text_index)):
        out[name] = np.concatenate([index.get_codes(task.database.ids).to_signs().ravel() for task in stream])
    return out


def cache_inputs() -> tuple[np.ndarray, list[str], list]:
    from test_encoders import random_images

    texts = ["a cat", "a dog on a mat!", "cat dog cat dog", "", "Sunset over the sea", "dog", "cat cat", "x y z"]
    ids = np.array([40, 3, 17, 8, 99, 5, 61, 2], dtype=np.int64)
    return ids, texts, random_images(len(texts), seed=1)


# ---------------------------------------------------------------------------------------------------------- units
@given(st.integers(0, 200), st.integers(1, 9))
def test_shard_bounds_against_brute_force(n, world_size):
    bounds = shard_bounds(n, world_size)
    owner = [r for r, (a, b) in enumerate(bounds) for _ in range(a, b)]
    assert owner == sorted(owner)  # contiguous, in rank order
    assert len(owner) == n  # every row once
    sizes = [b - a for a, b in bounds]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(("args", "match"), [((-1, 2), "n: expected"), ((3, 0), "world_size: expected")])
def test_shard_bounds_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        shard_bounds(*args)


@pytest.mark.parametrize(("n", "batch_size", "world_size"), [(107, 32, 2), (33, 32, 3), (5, 4, 4), (1, 8, 2)])
def test_sampler_shares_one_process_batches(n, batch_size, world_size):
    """World size 1 gives the single-process trainer's batches; the ranks' shares make up each batch in order."""
    reference = []
    order = torch.randperm(n, generator=torch.Generator().manual_seed(7))
    for start in range(0, n, batch_size):  # the single-process trainer's loop
        idx = order[start : start + batch_size]
        if len(idx) < 2 and n >= 2:
            continue
        reference.append(idx.tolist())
    single = DistributedMinibatchSampler(n, batch_size).epoch(torch.Generator().manual_seed(7))
    assert [share.local.tolist() for share in single] == reference
    per_rank = [
        list(DistributedMinibatchSampler(n, batch_size, rank=r, world_size=world_size).epoch(
            torch.Generator().manual_seed(7)))
        for r in range(world_size)
    ]  # fmt: skip
    for b, batch in enumerate(reference):
        assert [i for r in range(world_size) for i in per_rank[r][b].local.tolist()] == batch
        assert list(per_rank[0][b].counts) == [len(per_rank[r][b].local) for r in range(world_size)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_items": -1, "batch_size": 2}, "n_items"),
        ({"n_items": 4, "batch_size": 0}, "batch_size"),
        ({"n_items": 4, "batch_size": 2, "rank": 2, "world_size": 2}, "rank"),
        ({"n_items": 4, "batch_size": 2, "world_size": True}, "world_size"),
    ],
)
def test_sampler_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistributedMinibatchSampler(**kwargs)


def test_one_process_helpers_are_identities():
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_rows(x, [3], None) is x
    assert all_gather_rows(x, [[2], [1]], None) is x
    assert broadcast_object({"a": 1}, None) == {"a": 1}
    assert current() is None
    with pytest.raises(ValueError, match="counts\\[0\\]: expected 1 row counts"):
        all_gather_rows(x, [2, 1], None)
    with pytest.raises(ValueError, match="local: expected 2 rows"):
        all_gather_rows(x, [2], None)
    with pytest.raises(TypeError, match="local: expected a tensor"):
        all_gather_rows([1, 2], [2], None)


def test_init_from_env_without_torchrun(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_from_env() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env() is None
    with pytest.raises(ValueError, match="backend: expected one of"):
        init_from_env(backend="mpi")
    with pytest.raises(ValueError, match="timeout_s"):
        init_from_env(timeout_s=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK: expected an int"):
        init_from_env(backend="gloo")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK: expected an int below WORLD_SIZE=2, got 2"):
        init_from_env(backend="gloo")


def test_training_forward_matches_the_trainers_calls():
    from pbeh.data import synthetic_stream
    from pbeh.trainer import ContinualTrainer, TrainerConfig

    stream = synthetic_stream(n_tasks=2, seed=0)
    trainer = ContinualTrainer.for_stream(stream, n_bits=8, hidden_dims=(16,), config=TrainerConfig(epochs=1))
    trainer.fit(stream)
    model = trainer.model
    image = torch.as_tensor(stream[1].train.image[:5], dtype=torch.float32)
    text = torch.as_tensor(stream[1].train.text[:5], dtype=torch.float32)
    forward = wrap_for_training(model, None)
    assert isinstance(forward, TrainingForward)
    outputs, anchors = forward(image, text, 2, True)
    h_image, z_image = model(image, "image", return_z=True)
    h_text, z_text = model(text, "text", return_z=True)
    expected = [h_image, h_text, model.hash_from_z(z_image, "text"), model.hash_from_z(z_text, "image")]
    assert all(torch.equal(a, b) for a, b in zip(outputs, expected, strict=True))
    assert all(torch.equal(a, model.anchor_codes(s)) for s, a in enumerate(anchors))
    assert len(forward(image, text, 0, False)[0]) == 2
    with pytest.raises(TypeError, match="model: expected a CrossModalHashModel"):
        TrainingForward(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------------- 2 processes
@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from test_encoders import tiny_clip_model, tiny_clip_processor, tiny_clip_tokenizer

    d = tmp_path_factory.mktemp("tiny_clip_ddp")
    tokenizer = tiny_clip_tokenizer()
    tiny_clip_model(tokenizer).save_pretrained(d)
    tokenizer.save_pretrained(d)
    tiny_clip_processor().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, clip_dir) -> Path:
    """Run tests/_distributed_worker.py on 2 gloo processes (torchrun, a free port); returns its output folder."""
    out = tmp_path_factory.mktemp("ddp")
    (out / "cache_ddp").mkdir()
    here = Path(__file__).parent
    python_path = os.pathsep.join(filter(None, [str(here), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path}
    # torchrun of this interpreter; --standalone picks a free port
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command.append(str(here / "_distributed_worker.py"))
    done = subprocess.run(
        [*command, str(out), str(clip_dir)], capture_output=True, text=True, timeout=600, env=env, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}")
    return out


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[dict, object]:
    from pbeh.data import synthetic_stream
    from pbeh.extension import FixedSchedule
    from pbeh.trainer import ContinualTrainer, TrainerConfig

    stream = synthetic_stream(**stream_options())
    trainer = ContinualTrainer.for_stream(
        stream,
        config=TrainerConfig(**TRAIN_OPTIONS["config"]),
        extension_policy=FixedSchedule(bits_per_task=TRAIN_OPTIONS["bits_per_task"]),
        **TRAIN_OPTIONS["model"],
    )
    trainer.fit(stream)
    arrays = {
        **stored_signs(trainer, stream),
        "map_i2t": trainer.matrix.matrix("i2t"),
        "map_t2i": trainer.matrix.matrix("t2i"),
    }
    return arrays, trainer


def _rank(out: Path, r: int) -> tuple[dict, dict]:
    with np.load(out / f"rank{r}.npz") as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads((out / f"rank{r}.json").read_text())


def test_all_gather_rows_gradient_two_ranks(two_ranks):
    for r in range(2):
        _, info = _rank(two_ranks, r)
        assert info["world_size"] == 2
        assert info["gather_values"] < 1e-5
        assert info["gather_grad"] < 1e-5


def test_ddp_step_gradient_equals_one_process(two_ranks):
    """After DDP's all-reduce, every parameter's gradient is one process's gradient of the global batch (a batch of
    31 items shared 16/15 plus 7 pseudo items shared 4/3), every loss term on."""
    for r in range(2):
        _, info = _rank(two_ranks, r)
        assert info["step_batch"] == [31, [16, 15]]
        assert info["step_grad_relative"] < 1e-5
        assert info["step_loss_relative"] < 1e-6
        assert info["step_previous_relative"] < 1e-6


def test_ranks_end_identical(two_ranks):
    """DDP keeps every rank's parameters equal; rank 0's evaluation reaches every rank."""
    (a, info_a), (b, info_b) = _rank(two_ranks, 0), _rank(two_ranks, 1)
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert info_a["n_bits"] == info_b["n_bits"]
    assert info_a["best_epochs"] == info_b["best_epochs"]


def test_ranks_with_different_checkpoints_are_refused(two_ranks):
    """Rank 0 sees a finished run, rank 1 an empty checkpoint directory: both raise, naming the argument."""
    for r in range(2):
        _, info = _rank(two_ranks, r)
        assert "checkpoint_dir: the ranks start after different numbers of completed tasks [3, 0]" in info.get(
            "mismatch_error", ""
        )


def test_two_processes_match_one_process(two_ranks, one_process):
    reference, trainer = one_process
    arrays, info = _rank(two_ranks, 0)
    assert info["n_bits"] == [r.n_bits for r in trainer.reports] == [8, 10, 12]
    assert (two_ranks / "run" / "latest.json").is_file()  # rank 0 checkpointed; the third task resumed from it
    for modality in ("image_codes", "text_codes"):
        assert arrays[modality].shape == reference[modality].shape
        differing = float(np.mean(arrays[modality] != reference[modality]))
        assert differing <= MAX_BIT_DIFFERENCE, (modality, differing)
    for direction in ("map_i2t", "map_t2i"):
        np.testing.assert_array_equal(np.isnan(arrays[direction]), np.isnan(reference[direction]))
        np.testing.assert_allclose(arrays[direction], reference[direction], atol=MAP_TOLERANCE, equal_nan=True)
    np.testing.assert_allclose(info["losses"], [r.final_loss for r in trainer.reports], rtol=1e-3)


def test_two_process_feature_cache_equals_one_process(two_ranks, clip_dir, tmp_path):
    from pbeh.encoders import CLIPEncoder, FeatureCache, load_features

    encoder = CLIPEncoder.from_pretrained(clip_dir, local_files_only=True)
    ids, texts, images = cache_inputs()
    texts_cache = FeatureCache(tmp_path / "texts.safetensors", modality="text")
    texts_cache.get_or_encode(ids[:3], texts[:3], encoder.encode_texts, encoder_name=encoder.name)
    texts_cache.get_or_encode(ids, texts, encoder.encode_texts, encoder_name=encoder.name)
    images_cache = FeatureCache(tmp_path / "images.safetensors", modality="image")
    images_cache.get_or_encode(ids, images, encoder.encode_images, encoder_name=encoder.name)
    for name in ("texts.safetensors", "images.safetensors"):
        feats, got_ids, meta = load_features(two_ranks / "cache_ddp" / name)
        ref_feats, ref_ids, ref_meta = load_features(tmp_path / name)
        np.testing.assert_array_equal(got_ids, ref_ids)  # same items in the same order (3 first, then the rest)
        assert meta == ref_meta
        np.testing.assert_allclose(feats, ref_feats, atol=1e-5, rtol=0)


def test_cli_train_under_torchrun(two_ranks, tmp_path, capsys):
    from pbeh.cli import main

    assert main([*CLI_ARGS, "--out", str(tmp_path / "run")]) == 0
    expected = json.loads(capsys.readouterr().out)
    got = json.loads((two_ranks / "cli_rank0.json").read_text())
    assert (two_ranks / "cli_rank1.json").read_text() == ""
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
            np.testing.assert_allclose(got[key], value, atol=MAP_TOLERANCE, err_msg=key)
        else:
            assert got[key] == value, key
    for name in ("run.json", "latest.json", "matrix.json", "matrix.csv"):
        assert (two_ranks / "cli_run" / name).is_file()


def test_one_process_loads_the_two_process_checkpoint(two_ranks):
    """The checkpoint rank 0 wrote is an ordinary one: one process loads it and holds rank 0's stored codes."""
    from pbeh.data import synthetic_stream
    from pbeh.trainer import ContinualTrainer

    arrays, info = _rank(two_ranks, 0)
    loaded = ContinualTrainer.load(two_ranks / "run")
    assert [r.n_bits for r in loaded.reports] == info["n_bits"]
    for key, value in stored_signs(loaded, synthetic_stream(**stream_options())).items():
        np.testing.assert_array_equal(value, arrays[key])
