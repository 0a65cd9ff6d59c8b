"""The CASH network: per-task prompts and discriminators, gated residual prompt enhancement, coarse and fine hash
branches fused through a bit mask.

For features ``f`` of modality ``m`` and task ``t``::

    x = FeatureInput(f)                         (B, feature_dim)
    e = MHA(Q = x (one token), K = V = P_t)     per-sample attention over the task's prompts (L x feature_dim)
    z = x + d_t(x) * e                          d_t = sigmoid(Linear(feature_dim -> 1)), the task discriminator
    fine_m(z), coarse_m(z)                      Linear(feature_dim -> hidden), ReLU, Linear(hidden -> K), L2-normalise
    mask = tanh(L2norm(MLP(e)))                 training: e = (e_image + e_text) / 2; test: the modality's own e
    h = tanh(fine) * (1 - mask) / 2 + tanh(coarse) * (1 + mask) / 2;   codes = sign(h)

At query time the task is either given (``task=t``, the *oracle* mode of the released per-task evaluation) or inferred
as the argmax over every task's discriminator (``task=None``); as in the released ``cross_task_forward`` the inferred
path adds the prompt without the discriminator gate (``z = x + e``). Every step is per sample, so codes do not depend
on the batch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_choice, check_int, check_positive_int
from ...codes import Codes
from .._peer_protocol import FeatureInput, encode_rows, load_task_model, save_module

__all__ = ["CASHModel"]

_KIND = "cash-model"
PROMPT_SHARING = ("share", "separate")
MODALITIES = ("image", "text")


class _Branch(nn.Module):
    """Linear(in -> hidden), ReLU, Linear(hidden -> K), then L2 normalisation (and tanh for the mask)."""

    def __init__(self, in_dim: int, hidden_dim: int, n_bits: int, *, squash: bool = False) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, n_bits)
        self.squash = squash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.out(F.relu(self.hidden(x))), dim=1)
        return torch.tanh(h) if self.squash else h


def fuse(fine: torch.Tensor, coarse: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The fused continuous code ``tanh(fine) (1 - mask)/2 + tanh(coarse) (1 + mask)/2``."""
    return torch.tanh(fine) * (1 - mask) / 2 + torch.tanh(coarse) * (1 + mask) / 2


class CASHModel(nn.Module):
    """The CASH network for two modalities of any widths.

    Args:
        image_dim, text_dim: raw feature widths.
        n_bits: the (fixed) code length.
        feature_dim: the width of prompts, attention and branch inputs (512 in the released code).
        hidden_dim: hidden width of every branch and of the mask net (4096 in the released code).
        prompt_length: prompts per task (10).
        num_heads: attention heads (8).
        prompt_sharing: ``"share"`` (one prompt set per task for both modalities, the released default) or
            ``"separate"``.
        input_transform: ``"pbeh"`` or ``"identity"`` (see :class:`~pbeh.models._peer_protocol.FeatureInput`).
        seed: seeds every initialisation (networks at construction, each task's prompts and discriminator in
            :meth:`add_task`).

    Example:
        >>> model = CASHModel(12, 6, n_bits=8, feature_dim=16, hidden_dim=32, prompt_length=3, num_heads=2)
        >>> model.add_task()
        0
        >>> x = torch.randn(4, 12)
        >>> model.encode(x, "image", task=0).n_bits, model.encode(x, "image").n_bits
        (8, 8)
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        *,
        n_bits: int,
        feature_dim: int = 512,
        hidden_dim: int = 4096,
        prompt_length: int = 10,
        num_heads: int = 8,
        prompt_sharing: str = "share",
        input_transform: str = "pbeh",
        seed: int = 88,
    ) -> None:
        super().__init__()
        self.n_bits = check_positive_int(n_bits, "n_bits")
        self.feature_dim = check_positive_int(feature_dim, "feature_dim")
        self.hidden_dim = check_positive_int(hidden_dim, "hidden_dim")
        self.prompt_length = check_positive_int(prompt_length, "prompt_length")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if self.feature_dim % self.num_heads:
            raise ValueError(f"num_heads: expected a divisor of feature_dim={self.feature_dim}, got {num_heads}")
        self.prompt_sharing = check_choice(prompt_sharing, "prompt_sharing", PROMPT_SHARING)
        self.seed = check_int(seed, "seed")
        gen = torch.Generator().manual_seed(self.seed)
        self.inputs = FeatureInput(
            image_dim, text_dim, feature_dim=self.feature_dim, transform=input_transform, generator=gen
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.image_fine = _Branch(self.feature_dim, self.hidden_dim, self.n_bits)
            self.image_coarse = _Branch(self.feature_dim, self.hidden_dim, self.n_bits)
            self.text_fine = _Branch(self.feature_dim, self.hidden_dim, self.n_bits)
            self.text_coarse = _Branch(self.feature_dim, self.hidden_dim, self.n_bits)
            self.mask_net = _Branch(self.feature_dim, self.hidden_dim, self.n_bits, squash=True)
            self.attention = nn.MultiheadAttention(self.feature_dim, self.num_heads, batch_first=True)
        self.prompts = nn.ParameterDict()  # "image_3" / "text_3" (separate) or "shared_3"
        self.discriminators = nn.ModuleList()

    # ------------------------------------------------------------------ tasks
    @property
    def n_tasks(self) -> int:
        return len(self.discriminators)

    def add_task(self) -> int:
        """Create the next task's prompts and discriminator, freeze the earlier discriminators and prompts; returns
        the new task's index."""
        t = self.n_tasks
        device = self.attention.in_proj_weight.device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 7919 * (t + 1))
            names = ["shared"] if self.prompt_sharing == "share" else list(MODALITIES)
            for name in names:
                self.prompts[f"{name}_{t}"] = nn.Parameter(
                    torch.randn(self.prompt_length, self.feature_dim, device=device)
                )
            self.discriminators.append(nn.Linear(self.feature_dim, 1).to(device))
        for i in range(t):
            for p in self.task_parameters(i):
                p.requires_grad_(False)
        return t

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """Task ``task``'s prompts and discriminator."""
        task = self._check_task(task)
        names = ["shared"] if self.prompt_sharing == "share" else list(MODALITIES)
        return [self.prompts[f"{n}_{task}"] for n in names] + list(self.discriminators[task].parameters())

    def shared_parameters(self) -> list[nn.Parameter]:
        """Everything trained in every task: input maps, branches, mask net, attention."""
        modules = [self.inputs, self.image_fine, self.image_coarse, self.text_fine, self.text_coarse, self.mask_net]
        return [p for m in [*modules, self.attention] for p in m.parameters()]

    def _check_task(self, task: Any) -> int:
        task = check_int(task, "task", minimum=0)
        if task >= self.n_tasks:
            raise ValueError(f"task: expected a task index below n_tasks={self.n_tasks}, got {task}")
        return task

    def _prompt(self, task: int, modality: str) -> torch.Tensor:
        name = "shared" if self.prompt_sharing == "share" else modality
        return self.prompts[f"{name}_{task}"]

    # ------------------------------------------------------------------ forward pieces
    def prepare(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Raw features to the network's input ``x`` (``FeatureInput``)."""
        return self.inputs(features, modality)

    def discriminate(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """``d_task(x)`` in (0, 1), shape ``(B, 1)``."""
        return torch.sigmoid(self.discriminators[task](x))

    def infer_task(self, x: torch.Tensor) -> torch.Tensor:
        """The argmax over every task's discriminator, ``(B,)`` int64 (ties go to the earlier task)."""
        if self.n_tasks == 0:
            raise RuntimeError("model: no task yet; call add_task() first")
        scores = torch.cat([torch.sigmoid(d(x)) for d in self.discriminators], dim=1)
        return scores.argmax(dim=1)

    def enhance(self, x: torch.Tensor, modality: str, task: int | torch.Tensor) -> torch.Tensor:
        """``e = MHA(Q = x, K = V = P_task)`` per sample; ``task`` is one index or a ``(B,)`` tensor of indices.

        Computed with the weights of ``self.attention`` but projecting each task's prompts once instead of once per
        sample (the same result as calling ``self.attention`` with the prompts repeated over the batch; tested).
        """
        mha = self.attention
        d, heads = self.feature_dim, self.num_heads
        w, b = mha.in_proj_weight, mha.in_proj_bias
        q = F.linear(x, w[:d], b[:d])  # (B, d)
        if isinstance(task, torch.Tensor):
            prompts = torch.stack([self._prompt(i, modality) for i in range(self.n_tasks)])  # (T, L, d)
        else:
            prompts = self._prompt(task, modality).unsqueeze(0)  # (1, L, d)
        k = F.linear(prompts, w[d : 2 * d], b[d : 2 * d])
        v = F.linear(prompts, w[2 * d :], b[2 * d :])
        n_sets, length = k.shape[0], k.shape[1]
        k = k.view(n_sets, length, heads, d // heads)
        v = v.view(n_sets, length, heads, d // heads)
        qh = q.view(len(x), heads, d // heads) / math.sqrt(d // heads)
        if isinstance(task, torch.Tensor):  # each row its own task's keys and values
            weights = torch.einsum("bhc,blhc->bhl", qh, k[task]).softmax(dim=-1)
            out = torch.einsum("bhl,blhc->bhc", weights, v[task])
        else:
            weights = torch.einsum("bhc,lhc->bhl", qh, k[0]).softmax(dim=-1)
            out = torch.einsum("bhl,lhc->bhc", weights, v[0])
        return mha.out_proj(out.reshape(len(x), d))

    def branches(self, z: torch.Tensor, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(fine, coarse) outputs of ``modality``'s branches for enhanced features ``z``."""
        if modality == "image":
            return self.image_fine(z), self.image_coarse(z)
        return self.text_fine(z), self.text_coarse(z)

    def train_outputs(self, image: torch.Tensor, text: torch.Tensor, task: int) -> dict[str, torch.Tensor]:
        """Training forward of paired raw features with task ``task``'s prompts and gate: ``x``, ``e``, ``gate``,
        ``z``, ``fine``, ``coarse`` per modality (keys such as ``"z_image"``), and the shared ``mask``."""
        out: dict[str, torch.Tensor] = {}
        for modality, features in (("image", image), ("text", text)):
            x = self.prepare(features, modality)
            e = self.enhance(x, modality, task)
            gate = self.discriminate(x, task)
            z = x + gate * e
            fine, coarse = self.branches(z, modality)
            out.update({f"e_{modality}": e, f"gate_{modality}": gate, f"z_{modality}": z})
            out.update({f"fine_{modality}": fine, f"coarse_{modality}": coarse})
        out["mask"] = self.mask_net((out["e_image"] + out["e_text"]) / 2)
        return out

    def hash(self, features: torch.Tensor, modality: str, *, task: int | None = None) -> torch.Tensor:
        """Continuous fused codes ``h`` ``(B, n_bits)``: oracle with ``task`` given, else task inferred (no gate)."""
        modality = check_choice(modality, "modality", MODALITIES)
        x = self.prepare(features, modality)
        if task is None:
            e = self.enhance(x, modality, self.infer_task(x))
            z = x + e
        else:
            task = self._check_task(task)
            e = self.enhance(x, modality, task)
            z = x + self.discriminate(x, task) * e
        fine, coarse = self.branches(z, modality)
        return fuse(fine, coarse, self.mask_net(e))

    def encode(self, features: Any, modality: str, *, task: int | None = None, batch_size: int = 1024) -> Codes:
        """Codes of raw features (``task=None``: task inferred from the discriminators; else the oracle task)."""
        modality = check_choice(modality, "modality", MODALITIES)
        if task is not None:
            task = self._check_task(task)
        if self.n_tasks == 0:
            raise RuntimeError("model: no task yet; call add_task() first")
        feats = torch.as_tensor(features, dtype=torch.float32, device=self.attention.in_proj_weight.device)
        batch_size = check_positive_int(batch_size, "batch_size")
        return encode_rows(
            self, len(feats), lambda rows: self.hash(feats[rows], modality, task=task), batch_size=batch_size
        )

    @torch.no_grad()
    def predicted_tasks(self, features: Any, modality: str) -> torch.Tensor:
        """The task each row would be routed to in the inferred mode."""
        feats = torch.as_tensor(features, dtype=torch.float32, device=self.attention.in_proj_weight.device)
        return self.infer_task(self.prepare(feats, check_choice(modality, "modality", MODALITIES)))

    # ------------------------------------------------------------------ persistence
    def get_config(self) -> dict[str, Any]:
        return {
            "image_dim": self.inputs.image_dim,
            "text_dim": self.inputs.text_dim,
            "n_bits": self.n_bits,
            "feature_dim": self.feature_dim,
            "hidden_dim": self.hidden_dim,
            "prompt_length": self.prompt_length,
            "num_heads": self.num_heads,
            "prompt_sharing": self.prompt_sharing,
            "input_transform": self.inputs.transform,
            "seed": self.seed,
            "n_tasks": self.n_tasks,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json``; :meth:`from_pretrained` rebuilds the same codes."""
        save_module(directory, self, self.get_config(), kind=_KIND)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CASHModel:
        """Load a model written by :meth:`save_pretrained` (on CPU, eval mode)."""
        return load_task_model(cls, directory, kind=_KIND)
