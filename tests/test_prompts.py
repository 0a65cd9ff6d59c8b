"""PromptPool: sizes, initialisation, freezing, selection, per-sample vs batch attention, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from pbeh.prompts import PromptPool, kmeans

DIM = 16


def make_pool(**kwargs) -> PromptPool:
    kwargs.setdefault("num_heads", 4)
    return PromptPool(DIM, **kwargs)


def reference_sample_attention(mha: nn.MultiheadAttention, x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Brute force: one query token per sample, the pool repeated per sample, through torch's own MHA."""
    keys = pool.unsqueeze(0).expand(len(x), -1, -1)
    return mha(x.unsqueeze(1), keys, keys, need_weights=False)[0].squeeze(1)


# ---------------------------------------------------------------------------------------- construction
def test_defaults_and_config():
    pool = PromptPool(32)
    assert (pool.sharing, pool.attention, pool.selection, pool.task_seeds) == (
        "shared",
        "sample",
        "newest",
        "per_task",
    )
    assert pool.init_std == pytest.approx(1 / math.sqrt(32))
    assert pool.n_tasks == 0
    assert pool.pool_sizes == []
    assert PromptPool(**pool.get_config()).get_config() == pool.get_config()


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sharing": "both"}, ValueError, r"sharing: expected one of \['shared', 'specific'\], got 'both'"),
        ({"attention": "pool"}, ValueError, r"attention: expected one of \['sample', 'batch'\]"),
        ({"selection": "oldest"}, ValueError, r"selection: expected one of \['newest', 'all'\]"),
        ({"task_seeds": "random"}, ValueError, r"task_seeds: expected one of \['per_task', 'same'\]"),
        ({"num_heads": 5}, ValueError, r"num_heads: must divide dim=16, got 5"),
        ({"num_heads": 0}, ValueError, r"num_heads: expected a positive int, got 0"),
        ({"init_std": 0.0}, ValueError, r"init_std: expected a positive float or None, got 0.0"),
        ({"seed": 1.5}, TypeError, r"seed: expected an int, got float"),
    ],
)
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_pool(**kwargs)


def test_dim_error():
    with pytest.raises(ValueError, match=r"dim: expected a positive int, got 0"):
        PromptPool(0)


# -------------------------------------------------------------------------------------------- add_task
def test_adaptive_and_explicit_sizes():
    pool = make_pool()
    assert pool.add_task(n_train=1001, samples_per_prompt=400) == 0
    assert pool.add_task(n_train=800, samples_per_prompt=400) == 1
    assert pool.add_task(5, n_train=10_000) == 2  # explicit size wins
    assert pool.add_task(n_train=1) == 3
    assert pool.pool_sizes == [3, 2, 5, 1]
    assert [tuple(p.shape) for p in pool.pools] == [(3, DIM), (2, DIM), (5, DIM), (1, DIM)]
    specific = make_pool(sharing="specific")
    specific.add_task(n_prompts=3)
    assert tuple(specific.pools[0].shape) == (6, DIM)
    assert specific.pool_sizes == [3]
    assert torch.equal(specific.prompts(0, "image"), specific.pools[0][:3])
    assert torch.equal(specific.prompts(0, "text"), specific.pools[0][3:])


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n_prompts": 0}, ValueError, r"n_prompts: expected a positive int, got 0"),
        ({"n_prompts": 2.0}, TypeError, r"n_prompts: expected a positive int, got float"),
        ({}, ValueError, r"n_prompts: give n_prompts, or n_train"),
        ({"n_train": 0}, ValueError, r"n_train: expected a positive int, got 0"),
        (
            {"n_train": 10, "samples_per_prompt": 0},
            ValueError,
            r"samples_per_prompt: expected a positive int",
        ),
        (
            {"n_prompts": 2, "init": "uniform"},
            ValueError,
            r"init: expected one of \['normal', 'kmeans'\], got 'uniform'",
        ),
        (
            {"n_prompts": 2, "init": "kmeans"},
            ValueError,
            r"image_features: init='kmeans' needs image_features",
        ),
        (
            {"n_prompts": 2, "init": "kmeans", "image_features": torch.zeros(0, DIM)},
            ValueError,
            r"image_features: expected at least one feature row",
        ),
        (
            {"n_prompts": 2, "init": "kmeans", "text_features": torch.zeros(5, DIM + 1)},
            ValueError,
            r"text_features: expected shape \(n, 16\).*got \(5, 17\)",
        ),
        (
            {"n_prompts": 2, "init": "kmeans", "text_features": [[0.0] * DIM] * 3},
            TypeError,
            r"text_features: expected a torch.Tensor or numpy array",
        ),
        (
            {"n_prompts": 2, "init": "kmeans", "text_features": torch.zeros(3, DIM, dtype=torch.long)},
            TypeError,
            r"text_features: expected a floating-point array",
        ),
        (
            {"n_prompts": 2, "init": "kmeans", "image_features": torch.full((3, DIM), float("nan"))},
            ValueError,
            r"image_features: contains NaN",
        ),
        (
            {"n_prompts": 4, "init": "kmeans", "image_features": torch.randn(3, DIM)},
            ValueError,
            r"features: k-means needs at least as many rows as prompts \(4\), got 3 rows",
        ),
    ],
)
def test_add_task_errors(kwargs, exc, match):
    pool = make_pool()
    with pytest.raises(exc, match=match):
        pool.add_task(**kwargs)
    assert pool.n_tasks == 0  # a failed add leaves the pool as it was


def test_specific_kmeans_needs_both_modalities():
    pool = make_pool(sharing="specific")
    with pytest.raises(ValueError, match=r"text_features: init='kmeans' with sharing='specific' needs both"):
        pool.add_task(2, init="kmeans", image_features=torch.randn(10, DIM))


def test_earlier_pools_frozen_and_unchanged_by_adamw():
    pool = make_pool()
    pool.add_task(3)
    opt0 = torch.optim.AdamW(pool.parameters(), lr=0.1, weight_decay=0.5)
    pool(torch.randn(8, DIM), "image").sum().backward()
    opt0.step()  # task 0 trains, and now has a gradient and optimiser state
    assert pool.pools[0].grad is not None
    pool.add_task(2)
    assert not pool.pools[0].requires_grad
    assert pool.pools[0].grad is None
    assert pool.pools[1].requires_grad
    assert pool.trainable_parameters() == [p for p in pool.parameters() if p is not pool.pools[0]]
    assert pool.task_parameters(1) == [pool.pools[1]]
    old, new = pool.pools[0].detach().clone(), pool.pools[1].detach().clone()
    # An optimiser over every parameter, weight decay included, must not move the frozen pool.
    opt = torch.optim.AdamW(pool.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        opt.zero_grad()
        pool(torch.randn(8, DIM), "text").pow(2).sum().backward()
        opt.step()
        opt0.step()  # the stale optimiser of task 0 too
    assert torch.equal(pool.pools[0], old)
    assert not torch.equal(pool.pools[1], new)


def test_normal_init_scale_and_seeds():
    pool = make_pool(seed=3)
    pool.add_task(400)
    norms = pool.pools[0].detach().norm(dim=1)
    assert norms.mean().item() == pytest.approx(1.0, abs=0.1)  # default init_std = 1/sqrt(dim): norm about 1
    ref = make_pool(seed=3, init_std=1.0)
    ref.add_task(400)
    assert ref.pools[0].detach().norm(dim=1).mean().item() == pytest.approx(math.sqrt(DIM), rel=0.1)
    expected = torch.randn(400, DIM, generator=torch.Generator().manual_seed(3)) / math.sqrt(DIM)
    assert torch.allclose(pool.pools[0].detach(), expected)

    again = make_pool(seed=3)
    again.add_task(400)
    assert torch.equal(again.pools[0], pool.pools[0])
    other = make_pool(seed=4)
    other.add_task(400)
    assert not torch.equal(other.pools[0], pool.pools[0])


def test_task_seeds_same_vs_per_task():
    same = make_pool(task_seeds="same")
    per = make_pool(task_seeds="per_task")
    for p in (same, per):
        p.add_task(4)
        p.add_task(4)
    assert torch.equal(same.pools[0], same.pools[1])  # the reference: every pool starts from the same rows
    assert not torch.equal(per.pools[0], per.pools[1])
    assert torch.equal(per.pools[0], same.pools[0])  # task 0 is drawn with `seed` either way


# --------------------------------------------------------------------------------------------- k-means
def blobs(n_per: int, centers: torch.Tensor, spread: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([c + spread * torch.randn(n_per, centers.shape[1], generator=gen) for c in centers])


def test_kmeans_matches_sklearn_on_separated_blobs():
    from sklearn.cluster import KMeans

    centers = torch.randn(4, DIM, generator=torch.Generator().manual_seed(0)) * 5
    x = blobs(50, centers, 0.3, seed=1)
    ours = kmeans(x, 4, seed=0).numpy()
    theirs = KMeans(4, n_init=5, random_state=0).fit(x.numpy()).cluster_centers_
    order = lambda c: c[np.lexsort(c.T[::-1])]  # noqa: E731
    np.testing.assert_allclose(order(ours), order(theirs), atol=1e-4)


def test_kmeans_init_near_data_and_differs_from_normal():
    centers = torch.nn.functional.normalize(torch.randn(3, DIM, generator=torch.Generator().manual_seed(5)), dim=1)
    img = blobs(40, centers, 0.02, seed=2)
    txt = blobs(40, centers, 0.02, seed=3)
    pool = make_pool()
    pool.add_task(3, init="kmeans", image_features=img, text_features=txt.numpy())
    rows = pool.pools[0].detach()
    assert pool.task_inits == ["kmeans"]
    # Every prompt sits at one of the clusters, and every cluster gets a prompt.
    dist = torch.cdist(rows, centers)
    assert dist.min(dim=1).values.max() < 0.05
    assert sorted(dist.argmin(dim=1).tolist()) == [0, 1, 2]
    # Rescaled to the members' mean norm (about 1 here), i.e. the features' scale.
    assert torch.allclose(rows.norm(dim=1), torch.ones(3), atol=0.02)
    normal = make_pool()
    normal.add_task(3)
    assert not torch.allclose(rows, normal.pools[0].detach(), atol=0.1)


def test_kmeans_specific_clusters_each_modality():
    gen = torch.Generator().manual_seed(0)
    img_centers, txt_centers = torch.randn(2, DIM, generator=gen), torch.randn(2, DIM, generator=gen) + 5
    pool = make_pool(sharing="specific")
    pool.add_task(
        2,
        init="kmeans",
        image_features=blobs(30, img_centers, 0.01, 1),
        text_features=blobs(30, txt_centers, 0.01, 2),
    )
    assert torch.cdist(pool.prompts(0, "image").detach(), img_centers).min(dim=1).values.max() < 0.05
    assert torch.cdist(pool.prompts(0, "text").detach(), txt_centers).min(dim=1).values.max() < 0.05


def test_kmeans_is_seeded():
    x = torch.randn(200, DIM, generator=torch.Generator().manual_seed(9))
    assert torch.equal(kmeans(x, 5, seed=1), kmeans(x, 5, seed=1))
    assert not torch.equal(kmeans(x, 5, seed=1), kmeans(x, 5, seed=2))


# ------------------------------------------------------------------------------------------- selection
@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    selection=st.sampled_from(["newest", "all"]),
    sharing=st.sampled_from(["shared", "specific"]),
    modality=st.sampled_from(["image", "text"]),
    seed=st.integers(0, 1000),
)
def test_select_matches_brute_force(sizes, selection, sharing, modality, seed):
    pool = make_pool(selection=selection, sharing=sharing, seed=seed)
    for n in sizes:
        pool.add_task(n)
    x = torch.randn(7, DIM, generator=torch.Generator().manual_seed(seed))
    task, prompt = pool.select(x, modality)
    pool.requires_grad_(False)
    assert task.dtype == torch.long
    assert prompt.dtype == torch.long
    assert task.shape == prompt.shape == (7,)
    candidates = range(len(sizes)) if selection == "all" else [len(sizes) - 1]
    for i in range(7):
        scores = [(float(x[i] @ pool.prompts(t, modality)[j]), t, j) for t in candidates for j in range(sizes[t])]
        best = max(s for s, _, _ in scores)
        t, j = int(task[i]), int(prompt[i])
        assert t in candidates
        assert 0 <= j < sizes[t]
        assert float(x[i] @ pool.prompts(t, modality)[j]) == best


# ------------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("sharing", ["shared", "specific"])
@pytest.mark.parametrize("selection", ["newest", "all"])
def test_sample_attention_matches_torch_mha(sharing, selection):
    pool = make_pool(sharing=sharing, selection=selection)
    for n in (3, 4, 2):
        pool.add_task(n)
    x = torch.randn(12, DIM)
    for modality in ("image", "text"):
        out = pool(x, modality)
        task, _ = pool.select(x, modality)
        for i in range(len(x)):
            ref = reference_sample_attention(pool.attn[modality], x[i : i + 1], pool.prompts(int(task[i]), modality))
            assert torch.allclose(out[i : i + 1], ref, atol=1e-6)
    if selection == "newest":
        assert set(pool.select(x, "image")[0].tolist()) == {2}


def test_sample_attention_is_batch_independent():
    pool = make_pool(selection="all")
    pool.add_task(3)
    pool.add_task(5)
    gen = torch.Generator().manual_seed(0)
    item = torch.randn(1, DIM, generator=gen)
    alone = pool(item, "image")
    for size in (2, 17, 64):
        batch = torch.randn(size, DIM, generator=gen)
        pos = size // 2
        batch[pos] = item[0]
        assert torch.allclose(pool(batch, "image")[pos], alone[0], atol=1e-6)


def test_batch_attention_reproduces_reference_and_depends_on_batch():
    pool = make_pool(attention="batch")
    pool.add_task(6)
    x = torch.randn(10, DIM)
    _, prompt = pool.select(x, "text")
    chosen = pool.prompts(0, "text")[prompt]
    expected = pool.attn["text"](x, chosen, chosen)[0]  # 2-D input: one unbatched sequence of 10 tokens
    assert torch.allclose(pool(x, "text"), expected, atol=1e-6)
    alone = pool(x[:1], "text")
    assert not torch.allclose(pool(x, "text")[0], alone[0], atol=1e-3)


def test_prompt_self_context():
    pool = make_pool(sharing="specific")
    pool.add_task(4)
    for modality in ("image", "text"):
        rows = pool.prompts(0, modality)
        expected = pool.attn[modality](rows, rows, rows)[0]
        out = pool.prompt_self_context(0, modality)
        assert out.shape == (4, DIM)
        assert torch.allclose(out, expected, atol=1e-6)


def test_gradients_reach_newest_pool_and_attention_only():
    pool = make_pool(selection="all")
    pool.add_task(3)
    pool.add_task(3)
    pool(torch.randn(16, DIM), "image").sum().backward()
    assert pool.pools[0].grad is None
    assert pool.pools[1].grad is not None
    assert pool.attn["image"].in_proj_weight.grad is not None
    assert pool.attn["text"].in_proj_weight.grad is None


def test_attention_seeded():
    a, b, c = make_pool(seed=1), make_pool(seed=1), make_pool(seed=2)
    assert torch.equal(a.attn["image"].in_proj_weight, b.attn["image"].in_proj_weight)
    assert not torch.equal(a.attn["image"].in_proj_weight, c.attn["image"].in_proj_weight)
    assert not torch.equal(a.attn["image"].in_proj_weight, a.attn["text"].in_proj_weight)


# ---------------------------------------------------------------------------------------- input errors
def test_forward_before_any_task():
    pool = make_pool()
    with pytest.raises(RuntimeError, match=r"no task pool yet: call add_task\(\)"):
        pool(torch.randn(2, DIM), "image")
    with pytest.raises(RuntimeError, match=r"no task pool yet"):
        pool.select(torch.randn(2, DIM), "image")


@pytest.mark.parametrize(
    ("x", "modality", "exc", "match"),
    [
        (
            torch.randn(2, DIM),
            "audio",
            ValueError,
            r"modality: expected one of \['image', 'text'\], got 'audio'",
        ),
        (
            np.zeros((2, DIM), dtype=np.float32),
            "image",
            TypeError,
            r"x: expected a torch.Tensor of shape \(batch, 16\)",
        ),
        (torch.randn(2, DIM + 1), "image", ValueError, r"x: expected shape \(batch, 16\), got \(2, 17\)"),
        (torch.randn(DIM), "text", ValueError, r"x: expected shape \(batch, 16\), got \(16,\)"),
        (torch.randn(2, DIM, dtype=torch.float64), "text", TypeError, r"x: expected dtype torch.float32"),
    ],
)
def test_input_errors(x, modality, exc, match):
    pool = make_pool()
    pool.add_task(2)
    with pytest.raises(exc, match=match):
        pool(x, modality)


def test_device_error():
    pool = make_pool()
    pool.add_task(2)
    with pytest.raises(ValueError, match=r"x: expected a tensor on cpu"):
        pool(torch.randn(2, DIM, device="meta"), "image")


def test_task_index_errors():
    pool = make_pool()
    pool.add_task(2)
    with pytest.raises(IndexError, match=r"task: expected 0 <= task < 1 \(tasks added so far\), got 1"):
        pool.prompts(1)
    with pytest.raises(TypeError, match=r"task: expected an int, got str"):
        pool.task_parameters("0")
    with pytest.raises(ValueError, match=r"modality: expected one of"):
        pool.prompt_self_context(0, "video")
