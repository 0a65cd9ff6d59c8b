"""Per-task prompt pools: select a prompt for each sample and attend over the pool to get a context vector.

PBEH keeps one pool of learnable prompts per task (rows of width ``dim``). For every sample ``x`` (a feature
already mapped into ``dim``), the pool gives a context ``e`` that the hash heads read next to ``x``
(``z = [x ; e]``).

Three choices, each a keyword option (``PromptPool(dim, sharing=..., attention=..., selection=...)``):

* ``sharing``: ``"shared"`` (the reference's default) -- one set of rows serves images and texts;
  ``"specific"`` -- each modality has its own ``n_t`` rows (the reference's ``2 * n_t``). The attention
  modules are per modality either way; only the prompts are shared.
* ``attention``: ``"sample"`` (default) -- each sample attends (one query token) over the rows of its pool,
  so its context depends on that sample alone: same item, same context, in any batch. ``"batch"`` reproduces
  the reference's quirk: ``MultiheadAttention`` called on 2-D ``(B, dim)`` tensors reads them as ONE
  unbatched sequence, so each sample attends over the prompts selected by all samples of its batch and its
  context depends on the batch.
* ``selection``: ``"newest"`` (the reference) -- top-1 by raw dot product ``x . P`` over the newest pool only,
  in training and at test time alike; ``"all"`` -- top-1 over every pool, which also tells which task's pool
  is used.

Scale. The reference draws prompts from ``randn`` (norm about ``sqrt(dim)``, 6-9 for ``dim = 512``) while
CLIP-style features are often unit-norm; the prompts then swamp the features in the attention and codes
collapse. pbeh's default is consistent: ``init_std = 1 / sqrt(dim)`` gives prompts of norm about 1, to be
used with L2-normalised features. :class:`pbeh.model.CrossModalHashModel` goes one step further: it scales
features to norm ``sqrt(dim)`` and passes ``init_std = 1``, the same balance at the scale its heads train best
on (see :mod:`pbeh.model`). ``init_std=1.0`` with unit-norm features reproduces the reference's imbalance.

Seeds. The reference re-seeds the generator with the same seed before every task, so every task's pool starts
from the same rows (``task_seeds="same"``). pbeh's default, ``task_seeds="per_task"``, seeds task ``t`` with
``seed + t``: identical starting rows buy nothing, and with ``selection="all"`` a new pool that starts as a
near-copy of an old pool's (little-trained) rows makes the top-1 choice between tasks arbitrary.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validation import check_batch_tensor, check_choice, check_int, check_positive_int, check_positive_real

__all__ = ["MODALITIES", "PromptPool"]

_logger = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("image", "text")
_SHARING = ("shared", "specific")
_ATTENTION = ("sample", "batch")
_SELECTION = ("newest", "all")
_TASK_SEEDS = ("per_task", "same")
_INITS = ("normal", "kmeans")

_KMEANS_ITERS = 25
_KMEANS_MAX_ROWS = 50_000


def _features_to_tensor(values: Any, name: str, dim: int) -> torch.Tensor:
    """Features for k-means: a (n, dim) float tensor on CPU (numpy arrays accepted), non-empty and finite."""
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(np.ascontiguousarray(values))
    if not isinstance(values, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor or numpy array of shape (n, {dim}), got {type(values).__name__}"
        )
    if not values.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point array, got dtype {values.dtype}")
    if values.ndim != 2 or values.shape[1] != dim:
        raise ValueError(
            f"{name}: expected shape (n, {dim}) (features already mapped into the pool width {dim}), "
            f"got {tuple(values.shape)}"
        )
    if values.shape[0] == 0:
        raise ValueError(
            f"{name}: expected at least one feature row, got an empty array of shape {tuple(values.shape)}"
        )
    values = values.detach().to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(values).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return values


def kmeans(features: torch.Tensor, n_clusters: int, *, seed: int, n_iter: int = _KMEANS_ITERS) -> torch.Tensor:
    """Seeded k-means (k-means++ start, then Lloyd iterations) on CPU; returns ``(n_clusters, d)`` centroids.

    Empty clusters are re-seeded with the point farthest from its centroid. At most 50,000 rows (a seeded
    subsample) are used.

    Example:
        >>> x = torch.cat([torch.zeros(5, 2), torch.ones(5, 2) * 10])
        >>> sorted(kmeans(x, 2, seed=0)[:, 0].tolist())
        [0.0, 10.0]
    """
    n = features.shape[0]
    if n < n_clusters:
        raise ValueError(
            f"features: k-means needs at least as many rows as prompts ({n_clusters}), got {n} rows; "
            "pass fewer n_prompts or use init='normal'"
        )
    gen = torch.Generator().manual_seed(int(seed))
    x = features
    if n > _KMEANS_MAX_ROWS:
        x = x[torch.randperm(n, generator=gen)[:_KMEANS_MAX_ROWS]]
        n = x.shape[0]
    sq = (x * x).sum(dim=1)

    def sq_dist(c: torch.Tensor) -> torch.Tensor:
        return (sq[:, None] - 2.0 * x @ c.T + (c * c).sum(dim=1)[None, :]).clamp_min_(0.0)

    # k-means++ seeding.
    centers = [x[int(torch.randint(n, (1,), generator=gen))]]
    closest = sq_dist(centers[0][None]).squeeze(1)
    for _ in range(1, n_clusters):
        total = float(closest.sum())
        if total <= 0.0:  # every point already coincides with a centre: take any point
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(closest / total, 1, generator=gen))
        centers.append(x[idx])
        closest = torch.minimum(closest, sq_dist(x[idx][None]).squeeze(1))
    c = torch.stack(centers)
    for _ in range(n_iter):
        d = sq_dist(c)
        assign = d.argmin(dim=1)
        counts = torch.bincount(assign, minlength=n_clusters)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        new_c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None].to(x.dtype), c)
        for k in torch.nonzero(counts == 0).flatten().tolist():
            far = int(d.gather(1, assign[:, None]).squeeze(1).argmax())
            new_c[k] = x[far]
            d[far] = 0.0
        if torch.equal(new_c, c):
            break
        c = new_c
    return c


def _init_attention(mha: nn.MultiheadAttention, gen: torch.Generator) -> None:
    """PyTorch's default MultiheadAttention initialisation, drawn from ``gen`` (xavier-uniform in-projection,
    default-Linear out-projection, zero biases)."""
    e = mha.embed_dim
    with torch.no_grad():
        bound = math.sqrt(6.0 / (e + 3 * e))
        mha.in_proj_weight.copy_(torch.empty(3 * e, e).uniform_(-bound, bound, generator=gen))
        mha.in_proj_bias.zero_()
        bound = 1.0 / math.sqrt(e)
        mha.out_proj.weight.copy_(torch.empty(e, e).uniform_(-bound, bound, generator=gen))
        mha.out_proj.bias.zero_()


class PromptPool(nn.Module):
    """Per-task pools of learnable prompts with top-1 selection and attention, as in PBEH.

    Args:
        dim: prompt width (the width of the features the pool reads).
        sharing: ``"shared"`` (one set of rows for both modalities) or ``"specific"`` (rows per modality).
        attention: ``"sample"`` (per-sample, batch-independent) or ``"batch"`` (the reference's batch quirk).
        selection: ``"newest"`` (top-1 from the newest pool) or ``"all"`` (top-1 over every pool).
        num_heads: attention heads; must divide ``dim``.
        init_std: standard deviation of ``init="normal"`` prompts; ``None`` means ``1 / sqrt(dim)`` (norm
            about 1).
        seed: seed of the prompt draws, the k-means and the attention initialisation.
        task_seeds: ``"per_task"`` (task ``t`` drawn with ``seed + t``) or ``"same"`` (every task re-seeded
            with ``seed``, so every pool starts from the same rows: the reference).

    Earlier pools are frozen (``requires_grad=False``) when a task is added; put :meth:`task_parameters` of
    the newest task in its own optimiser group.

    Example:
        >>> pool = PromptPool(16, num_heads=4)
        >>> pool.add_task(n_train=1000, samples_per_prompt=400)
        0
        >>> pool.pool_sizes
        [3]
        >>> x = torch.randn(5, 16)
        >>> pool(x, "image").shape
        torch.Size([5, 16])
        >>> task, prompt = pool.select(x, "text")
        >>> task.tolist()
        [0, 0, 0, 0, 0]
    """

    def __init__(
        self,
        dim: int,
        *,
        sharing: str = "shared",
        attention: str = "sample",
        selection: str = "newest",
        num_heads: int = 8,
        init_std: float | None = None,
        seed: int = 2025,
        task_seeds: str = "per_task",
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.sharing = check_choice(sharing, "sharing", _SHARING)
        self.attention = check_choice(attention, "attention", _ATTENTION)
        self.selection = check_choice(selection, "selection", _SELECTION)
        self.task_seeds = check_choice(task_seeds, "task_seeds", _TASK_SEEDS)
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if self.dim % self.num_heads:
            raise ValueError(f"num_heads: must divide dim={self.dim}, got {self.num_heads}")
        if init_std is None:
            init_std = 1.0 / math.sqrt(self.dim)
        self.init_std = check_positive_real(init_std, "init_std", expected="a positive float or None")
        self.seed = check_int(seed, "seed")
        self.attn = nn.ModuleDict(
            {m: nn.MultiheadAttention(self.dim, self.num_heads, batch_first=True) for m in MODALITIES}
        )
        gen = torch.Generator().manual_seed(self.seed + 7_777_777)
        for m in MODALITIES:
            _init_attention(self.attn[m], gen)
        self.pools = nn.ParameterList()
        self._sizes: list[int] = []
        self.task_inits: list[str] = []

    # ------------------------------------------------------------------ introspection
    @property
    def n_tasks(self) -> int:
        """Number of task pools added so far."""
        return len(self._sizes)

    @property
    def pool_sizes(self) -> list[int]:
        """Prompts per task and per modality (``"specific"`` stores twice as many rows)."""
        return list(self._sizes)

    @property
    def device(self) -> torch.device:
        return self.attn["image"].in_proj_weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.attn["image"].in_proj_weight.dtype

    def get_config(self) -> dict[str, Any]:
        """The constructor options (JSON-serialisable); ``PromptPool(**config)`` rebuilds an empty pool."""
        return {
            "dim": self.dim,
            "sharing": self.sharing,
            "attention": self.attention,
            "selection": self.selection,
            "num_heads": self.num_heads,
            "init_std": self.init_std,
            "seed": self.seed,
            "task_seeds": self.task_seeds,
        }

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, sharing={self.sharing!r}, attention={self.attention!r}, "
            f"selection={self.selection!r}, pool_sizes={self._sizes}"
        )

    def _check_task(self, task: Any) -> int:
        task = check_int(task, "task")
        if not 0 <= task < self.n_tasks:
            raise IndexError(f"task: expected 0 <= task < {self.n_tasks} (tasks added so far), got {task}")
        return task

    def prompts(self, task: int, modality: str = "image") -> torch.Tensor:
        """The prompt rows ``(n_task, dim)`` of ``task`` used by ``modality`` (a view: gradients flow)."""
        task = self._check_task(task)
        check_choice(modality, "modality", MODALITIES)
        rows = self.pools[task]
        if self.sharing == "shared":
            return rows
        n = self._sizes[task]
        return rows[:n] if modality == "image" else rows[n:]

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """The parameters of one task's pool (for the trainer's optimiser groups)."""
        return [self.pools[self._check_task(task)]]

    def attention_parameters(self) -> list[nn.Parameter]:
        """The attention modules' parameters (both modalities)."""
        return list(self.attn.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Everything that trains: the newest pool and the attention modules (earlier pools are frozen)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ growing
    def add_task(
        self,
        n_prompts: int | None = None,
        *,
        n_train: int | None = None,
        samples_per_prompt: int = 400,
        init: str = "normal",
        image_features: Any = None,
        text_features: Any = None,
    ) -> int:
        """Create the next task's pool and freeze every earlier pool; returns the new task's index.

        Args:
            n_prompts: pool size; if ``None``, the reference's adaptive size ``ceil(n_train /
                samples_per_prompt)``.
            n_train: number of training samples of the task (used when ``n_prompts`` is ``None``).
            samples_per_prompt: the reference's eta (400 by default, 800 in its COCO script).
            init: ``"normal"`` (seeded normal draw with std ``init_std``) or ``"kmeans"`` (k-means centroids
                of the task's features, rescaled to the mean norm of their members so prompts and features
                share a scale).
            image_features, text_features: ``(n, dim)`` features of the task, already mapped into ``dim``;
                needed by ``init="kmeans"`` (at least one for ``"shared"``, both for ``"specific"``), ignored
                otherwise.
        """
        init = check_choice(init, "init", _INITS)
        if n_prompts is not None:
            n = check_positive_int(n_prompts, "n_prompts")
        elif n_train is not None:
            n_train = check_positive_int(n_train, "n_train")
            per = check_positive_int(samples_per_prompt, "samples_per_prompt")
            n = math.ceil(n_train / per)
        else:
            raise ValueError(
                "n_prompts: give n_prompts, or n_train for the adaptive size ceil(n_train / samples_per_prompt)"
            )
        task = self.n_tasks
        seed = self.seed + task if self.task_seeds == "per_task" else self.seed
        if init == "normal":
            gen = torch.Generator().manual_seed(seed)
            rows_per_modality = 2 if self.sharing == "specific" else 1
            rows = torch.randn(rows_per_modality * n, self.dim, generator=gen) * self.init_std
        elif init == "kmeans":
            rows = self._kmeans_rows(n, seed, image_features, text_features)
        else:  # pragma: no cover - check_choice already rejected it
            raise ValueError(f"init: expected one of {list(_INITS)}, got {init!r}")
        for p in self.pools:
            p.requires_grad_(False)
            p.grad = None
        self.pools.append(nn.Parameter(rows.to(device=self.device, dtype=self.dtype)))
        self._sizes.append(n)
        self.task_inits.append(init)
        _logger.info("prompt pool: added task %d with %d prompts (init=%s)", task, n, init)
        return task

    def _kmeans_rows(self, n: int, seed: int, image_features: Any, text_features: Any) -> torch.Tensor:
        feats = {}
        for name, values in (("image_features", image_features), ("text_features", text_features)):
            if values is not None:
                feats[name] = _features_to_tensor(values, name, self.dim)
        if self.sharing == "specific":
            missing = [k for k in ("image_features", "text_features") if k not in feats]
            if missing:
                raise ValueError(
                    f"{missing[0]}: init='kmeans' with sharing='specific' needs both image_features and "
                    "text_features, got None"
                )
            parts = [feats["image_features"], feats["text_features"]]
        else:
            if not feats:
                raise ValueError("image_features: init='kmeans' needs image_features and/or text_features, got None")
            parts = [torch.cat(list(feats.values()))]
        out = []
        for part in parts:
            centroids = kmeans(part, n, seed=seed)
            # Rescale each centroid to the mean norm of its members (the mean of spread unit vectors is
            # shorter than they are; the attention should see prompts at the features' scale).
            d = (part * part).sum(1, keepdim=True) - 2 * part @ centroids.T + (centroids * centroids).sum(1)
            assign = d.argmin(dim=1)
            norms = part.norm(dim=1)
            for k in range(n):
                member = assign == k
                c_norm = float(centroids[k].norm())
                if member.any() and c_norm > 0:
                    centroids[k] *= float(norms[member].mean()) / c_norm
            out.append(centroids)
        return torch.cat(out)

    # ------------------------------------------------------------------ selection and attention
    def _check_x(self, x: Any) -> torch.Tensor:
        if self.n_tasks == 0:
            raise RuntimeError("PromptPool has no task pool yet: call add_task() before selecting or attending")
        return check_batch_tensor(x, "x", width=self.dim, dtype=self.dtype, device=self.device, owner="pool")

    def _candidate_tasks(self) -> list[int]:
        return list(range(self.n_tasks)) if self.selection == "all" else [self.n_tasks - 1]

    def select(self, x: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-1 prompt by raw dot product ``x . P``: ``(task_index, prompt_index)``, LongTensors ``(B,)``.

        With ``selection="newest"`` every task index is the newest task; with ``"all"`` the argmax runs over
        the rows of every pool (ties go to the earliest row).
        """
        check_choice(modality, "modality", MODALITIES)
        x = self._check_x(x)
        tasks = self._candidate_tasks()
        with torch.no_grad():
            rows = torch.cat([self.prompts(t, modality) for t in tasks])
            best = (x @ rows.T).argmax(dim=1)
        owner = torch.cat([torch.full((self._sizes[t],), t, dtype=torch.long) for t in tasks]).to(x.device)
        starts = torch.tensor(
            [sum(self._sizes[s] for s in tasks[:i]) for i in range(len(tasks))],
            dtype=torch.long,
            device=x.device,
        )
        task_index = owner[best]
        return task_index, best - starts[task_index - tasks[0]]

    def forward(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """Context vectors ``(B, dim)`` for features ``x`` ``(B, dim)`` of ``modality``."""
        check_choice(modality, "modality", MODALITIES)
        x = self._check_x(x)
        task_index, prompt_index = self.select(x, modality)
        mha = self.attn[modality]
        if self.attention == "batch":
            # The reference's call: 2-D tensors are one unbatched sequence of B tokens.
            chosen = torch.empty_like(x)
            for t in torch.unique(task_index).tolist():
                rows = task_index == t
                chosen[rows] = self.prompts(t, modality)[prompt_index[rows]]
            return mha(x, chosen, chosen, need_weights=False)[0]
        if self.attention == "sample":
            if task_index.numel() and bool((task_index == task_index[0]).all()):
                return self._attend_pool(mha, x, self.prompts(int(task_index[0]), modality))
            out = torch.empty_like(x)
            for t in torch.unique(task_index).tolist():
                rows = task_index == t
                out[rows] = self._attend_pool(mha, x[rows], self.prompts(t, modality))
            return out
        raise ValueError(f"attention: expected one of {list(_ATTENTION)}, got {self.attention!r}")  # pragma: no cover

    def _attend_pool(self, mha: nn.MultiheadAttention, x: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """Per-sample attention: each row of ``x`` is one query token over the rows of ``pool``.

        Equal to ``mha(x[:, None], P, P)`` with ``P`` the pool repeated per sample, but the keys and values
        are projected once for the whole batch.
        """
        e, h = self.dim, self.num_heads
        d = e // h
        w, b = mha.in_proj_weight, mha.in_proj_bias
        q = F.linear(x, w[:e], b[:e]).view(-1, h, d)
        k = F.linear(pool, w[e : 2 * e], b[e : 2 * e]).view(-1, h, d)
        v = F.linear(pool, w[2 * e :], b[2 * e :]).view(-1, h, d)
        scores = torch.einsum("bhd,nhd->bhn", q, k) / math.sqrt(d)
        ctx = torch.einsum("bhn,nhd->bhd", scores.softmax(dim=-1), v).reshape(-1, e)
        return mha.out_proj(ctx)

    def prompt_self_context(self, task: int, modality: str) -> torch.Tensor:
        """Self-attention among one task's prompts with ``modality``'s attention, ``(n_task, dim)``.

        This is what the reference's prompt-hash anchor feeds the heads: ``a = Attn(P_s, P_s, P_s)``.
        """
        check_choice(modality, "modality", MODALITIES)
        rows = self.prompts(task, modality)
        return self.attn[modality](rows, rows, rows, need_weights=False)[0]

    # ------------------------------------------------------------------ state
    def _rebuild_tasks(self, sizes: list[int], inits: list[str] | None = None) -> None:
        """Recreate (empty-valued) pools of the given sizes so that a state dict can be loaded into them."""
        if self.n_tasks:
            raise RuntimeError("PromptPool._rebuild_tasks: the pool already has tasks")
        for i, n in enumerate(sizes):
            self.add_task(n_prompts=int(n))
            if inits is not None:
                self.task_inits[i] = check_choice(inits[i], "task_inits", _INITS)
