"""Replay from groups of a class's items (``TrainerConfig.prototype_clusters``): the groups against brute force,
sampling, files, and the trainer's wiring (replay changes, the class prior does not)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pbeh.data import synthetic_stream
from pbeh.extension import NeverExtend
from pbeh.prototypes import MIN_CLUSTER_ITEMS, ClassPrototypes, _groups
from pbeh.trainer import ContinualTrainer, TrainerConfig


def _two_mode_class(rng, n_per_mode=20):
    """Class 0: two well-separated modes (image at -5 and +5, text at +3 and -3); class 1: 10 items near 0."""
    image = np.concatenate([rng.normal(-5, 0.1, (n_per_mode, 3)), rng.normal(5, 0.1, (n_per_mode, 3))])
    text = np.concatenate([rng.normal(3, 0.1, (n_per_mode, 2)), rng.normal(-3, 0.1, (n_per_mode, 2))])
    image = np.concatenate([image, rng.normal(0, 0.1, (10, 3))]).astype(np.float32)
    text = np.concatenate([text, rng.normal(0, 0.1, (10, 2))]).astype(np.float32)
    labels = np.zeros((2 * n_per_mode + 10, 2), dtype=np.uint8)
    labels[: 2 * n_per_mode, 0] = 1
    labels[2 * n_per_mode :, 1] = 1
    return image, text, labels


def test_groups_find_the_modes_and_keep_the_per_class_rows():
    image, text, labels = _two_mode_class(np.random.default_rng(0))
    plain = ClassPrototypes.fit(image, text, labels)
    grouped = ClassPrototypes.fit(image, text, labels, clusters=2, seed=3)
    assert plain.clusters is None
    for key in ("classes", "image_mean", "image_std", "text_mean", "text_std"):
        np.testing.assert_array_equal(getattr(grouped, key), getattr(plain, key))  # per-class rows unchanged
    groups = grouped.clusters
    # Class 0: its two modes, each summarised by numpy over exactly its items; class 1 (10 items, fewer than two
    # groups' worth): one group, its class statistics.
    assert groups.classes.tolist() == [0, 0, 1]
    modes = [np.arange(20), np.arange(20, 40)]
    order = np.argsort(groups.image_mean[:2, 0])  # the mode at image -5 first
    for row, rows in zip(order, modes, strict=True):
        np.testing.assert_allclose(groups.image_mean[row], image[rows].mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(groups.image_std[row], image[rows].std(axis=0), rtol=1e-4)
        np.testing.assert_allclose(groups.text_mean[row], text[rows].mean(axis=0), rtol=1e-5)
        np.testing.assert_allclose(groups.text_std[row], text[rows].std(axis=0), rtol=1e-4)
    np.testing.assert_allclose(groups.image_mean[2], plain.image_mean[1], rtol=1e-6)
    # seeded: the same groups again
    again = ClassPrototypes.fit(image, text, labels, clusters=2, seed=3).clusters
    np.testing.assert_array_equal(again.image_mean, groups.image_mean)


@pytest.mark.parametrize("n", [1, 8, 15, 16, 17, 33, 64])
def test_groups_partition_the_items_and_none_is_below_the_minimum(n):
    rng = np.random.default_rng(n)
    image, text = rng.normal(size=(n, 4)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32)
    image[:3] += 50.0  # a small far mode that k-means alone would give its own group
    groups = _groups(image, text, 8, seed=0)
    assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(n))  # every item in exactly one group
    assert 1 <= len(groups) <= max(1, n // MIN_CLUSTER_ITEMS)
    assert min(len(g) for g in groups) >= min(n, MIN_CLUSTER_ITEMS)
    fitted = ClassPrototypes.fit(image, text, np.ones((n, 1)), clusters=8, seed=0).clusters
    assert len(fitted) == len(groups)
    for row, g in enumerate(groups):  # the statistics of fit are numpy's over the groups
        np.testing.assert_allclose(fitted.image_mean[row], image[g].mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fitted.text_std[row], text[g].std(axis=0), rtol=1e-4, atol=1e-6)


def test_samples_come_from_the_groups_and_files_keep_them():
    image, text, labels = _two_mode_class(np.random.default_rng(2))
    grouped = ClassPrototypes.fit(image, text, labels, clusters=2, seed=0)
    img, _, lab = grouped.sample(200, np.random.default_rng(0), noise=0.0)
    assert {tuple(r) for r in np.round(img, 5)} == {tuple(r) for r in np.round(grouped.clusters.image_mean, 5)}
    assert set(lab.argmax(axis=1).tolist()) == {0, 1}
    back = ClassPrototypes.from_arrays(grouped.to_arrays("p."), "p.", n_classes=2)
    np.testing.assert_array_equal(back.clusters.image_mean, grouped.clusters.image_mean)
    np.testing.assert_array_equal(back.clusters.classes, grouped.clusters.classes)
    plain = ClassPrototypes.from_arrays(ClassPrototypes.fit(image, text, labels).to_arrays("p."), "p.", n_classes=2)
    assert plain.clusters is None  # a state saved without groups (or before they existed)
    both = ClassPrototypes.concatenate([grouped, plain])  # a part without groups replays its per-class rows
    assert len(both.clusters) == len(grouped.clusters) + len(plain)
    assert both.merged().clusters is None
    np.testing.assert_array_equal(
        both.merged().image_mean, ClassPrototypes.concatenate([plain, plain]).merged().image_mean
    )


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_cluster_counts_are_refused(value):
    with pytest.raises(ValueError, match="clusters: expected a positive int"):
        ClassPrototypes.fit(np.zeros((2, 2)), np.zeros((2, 2)), np.eye(2), clusters=value)
    with pytest.raises(ValueError, match="prototype_clusters: expected a positive int"):
        TrainerConfig(prototype_clusters=value)


def _trainer(stream, **config):
    cfg = TrainerConfig(**{"epochs": 2, "batch_size": 32, "eval_k": None, "eval_every": 1, **config})
    return ContinualTrainer.for_stream(stream, n_bits=8, hidden_dims=(16,), config=cfg, extension_policy=NeverExtend())


def test_trainer_replays_groups_keeps_the_prior_and_saves_them(tmp_path):
    stream = synthetic_stream(n_tasks=2, seed=3)
    plain, grouped = _trainer(stream, prototype_clusters=1), _trainer(stream, prototype_clusters=3)
    plain.fit(stream)
    grouped.fit(stream)
    assert plain._prototypes[0].clusters is None
    groups = grouped._prototypes[0].clusters
    assert len(groups) > len(grouped._prototypes[0])  # several groups per class
    # The class prior uses the per-class statistics either way.
    for name in ("image_mean", "image_scale", "text_mean", "text_scale"):
        torch.testing.assert_close(getattr(plain.model.class_prior, name), getattr(grouped.model.class_prior, name))
    # The first task trains identically (no replay yet); the second differs (the replay drew from the groups).
    first, second = plain.matrix.matrix("i2t"), grouped.matrix.matrix("i2t")
    assert first[0, 0] == second[0, 0]
    assert first[1, 1] != second[1, 1]
    grouped.save(tmp_path / "state")
    loaded = ContinualTrainer.load(tmp_path / "state")
    np.testing.assert_array_equal(loaded._prototypes[0].clusters.image_mean, groups.image_mean)
    assert loaded.config.prototype_clusters == 3


def test_the_command_line_sets_the_groups(tmp_path, capsys):
    from pbeh.cli import main
    from pbeh.training.checkpoints import checkpoint_state_dir

    try:
        args = ["train", "--protocol", "synthetic", "--epochs", "1", "--hidden", "16", "--bits", "8", "--quiet"]
        assert main([*args, "--prototype-clusters", "2", "--out", str(tmp_path / "run")]) == 0
        assert main([*args, "--prototype-clusters", "0", "--out", str(tmp_path / "bad")]) != 0
    finally:
        torch.set_num_threads(1)
    assert "prototype_clusters: expected a positive int, got 0" in capsys.readouterr().err
    loaded = ContinualTrainer.load(checkpoint_state_dir(tmp_path / "run"))
    assert loaded.config.prototype_clusters == 2
    assert all(p.clusters is not None for p in loaded._prototypes)


def test_a_damaged_group_table_is_a_format_error(tmp_path):
    from pbeh.serialization import FormatError, load_safetensors, save_safetensors

    stream = synthetic_stream(n_tasks=1, seed=4)
    trainer = _trainer(stream, prototype_clusters=2)
    trainer.fit(stream)
    trainer.save(tmp_path / "state")
    path = tmp_path / "state" / "trainer_state.safetensors"
    arrays, _ = load_safetensors(path, kind="trainer_state", format_version=1)
    arrays = {k: v.copy() for k, v in arrays.items()}
    good = dict(arrays)
    for key, value, message in (
        ("prototypes.0.clusters.classes", lambda a: np.full_like(a, -1), "classes: expected indices in"),
        ("prototypes.0.clusters.image_mean", lambda a: a[:-1], "image_mean: expected .* rows"),
        ("prototypes.0.classes", lambda a: a[:1], "clusters: expected flat per-group statistics of this set's"),
    ):
        damaged = {**good, key: value(good[key])}
        if key == "prototypes.0.classes":  # keep the per-class rows consistent: only the groups name other classes
            damaged = {**damaged, **{k: good[k][:1] for k in good if k.startswith("prototypes.0.") and "_" in k
                                     and "clusters" not in k}}  # fmt: skip
        save_safetensors(path, damaged, kind="trainer_state", format_version=1)
        with pytest.raises(FormatError, match=f"damaged or inconsistent: ValueError: {message}"):
            ContinualTrainer.load(tmp_path / "state")


def test_a_large_class_is_grouped_in_bounded_blocks(monkeypatch):
    import pbeh.prototypes as prototypes

    rng = np.random.default_rng(6)
    image = rng.normal(size=(1000, 16)).astype(np.float32)
    text = rng.normal(size=(1000, 8)).astype(np.float32)
    image[:300] += 6.0  # a mode of 300 items
    monkeypatch.setattr(prototypes, "_GROUP_ROWS", 128)  # k-means on a 128-row sample, assignment in 8 blocks
    groups = prototypes._groups(image, text, 4, seed=1)
    assert np.array_equal(np.sort(np.concatenate(groups)), np.arange(1000))
    assert min(len(g) for g in groups) >= MIN_CLUSTER_ITEMS
    far = [g for g in groups if (g < 300).all()]
    assert sum(len(g) for g in far) == 300  # the mode is split from the rest, never mixed with it
    fitted = ClassPrototypes.fit(image, text, np.ones((1000, 1)), clusters=4, seed=0).clusters
    sizes = sorted(len(g) for g in prototypes._groups(image, text, 4, seed=0))
    assert len(fitted) == len(sizes)


def test_no_groups_are_fitted_without_replay():
    stream = synthetic_stream(n_tasks=1, seed=5)
    trainer = _trainer(stream, prototype_clusters=3, prototype_replay=0)
    trainer.fit(stream)
    assert trainer._prototypes[0].clusters is None
