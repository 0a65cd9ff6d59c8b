"""The PIC-CMH network: a global prompt plus per-task expert prompts per modality (REFERENCE.md §3; released code
``styx29-0/PIC-CMH`` @ bfd32f0).

For features ``f`` of modality ``m``::

    x = FeatureInput(f)                                   (B, feature_dim)
    e = E_t[argmax_j x . normalize(E_t)_j]                 the selected expert prompt (raw, not normalised)
    a = MHA(Q = g_m, K = V = e)                            g_m: the modality's global prompt
    u = [x ; Linear(feature_dim -> map_dim)(a)]            (B, feature_dim + map_dim)
    h = L2norm(Linear(4096 -> K)(ReLU(Linear(ReLU(Linear(u))))))  ;  codes = sign(h)

``E_t`` is the pool of the newest task (``selection="newest"``, as released: old tasks' items are routed through the
newest pool too) or every task's pool (``"all"``, the released but unused ``valid_select_prompt``).

Two choices differ from the released code and are options here:

* ``expert_prompts``: ``"trained"`` (default; what the paper intends: the current task's experts are registered
  parameters and train with the network, earlier pools are frozen) or ``"released"`` (the released code builds them
  as non-leaf tensors that no optimiser sees, re-seeding before each task, so every task's pool holds the same fixed
  random vectors).
* ``attention``: ``"sample"`` (default; each item's global prompt attends over its own selected expert, so a code
  does not depend on the batch) or ``"batch"`` (released: 2-D tensors make ``MultiheadAttention`` one unbatched
  sequence, so every item's global-prompt query attends over the experts selected by the whole batch and, the query
  being the same for every item, all items of a batch receive the same prompt vector).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_choice, check_int, check_positive_int
from ...codes import Codes
from .._peer_protocol import FeatureInput, encode_rows, load_task_model, save_module

__all__ = ["PICMHModel"]

_KIND = "picmh-model"
MODALITIES = ("image", "text")
EXPERT_PROMPTS = ("trained", "released")
ATTENTION = ("sample", "batch")
SELECTION = ("newest", "all")


class _ModalityNet(nn.Module):
    """One modality's network after prompt selection."""

    def __init__(self, feature_dim: int, map_dim: int, hidden_dims: Sequence[int], n_bits: int, num_heads: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(feature_dim, num_heads, batch_first=True)
        self.prompt_map = nn.Linear(feature_dim, map_dim)
        layers: list[nn.Module] = []
        width = feature_dim + map_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, n_bits)


class PICMHModel(nn.Module):
    """The PIC-CMH network for two modalities of any widths.

    Args:
        image_dim, text_dim: raw feature widths.
        n_bits: code length.
        feature_dim: prompt and attention width (512 in the released code).
        map_dim: width of the prompt branch after its Linear (256).
        hidden_dims: hidden widths after the concatenation (``(4096, 4096)``; the released 1x1 convolutions).
        n_experts: expert prompts per task and modality (7).
        num_heads: attention heads (8).
        expert_prompts: ``"trained"`` or ``"released"`` (see the module docstring).
        attention: ``"sample"`` or ``"batch"``.
        selection: ``"newest"`` or ``"all"``.
        input_transform: ``"pbeh"`` or ``"identity"`` (:class:`~pbeh.models._peer_protocol.FeatureInput`).
        seed: seeds every initialisation.

    Example:
        >>> model = PICMHModel(12, 6, n_bits=8, feature_dim=16, map_dim=8, hidden_dims=(32,), num_heads=2)
        >>> model.add_task()
        0
        >>> model.encode(torch.randn(4, 6), "text").n_bits
        8
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        *,
        n_bits: int,
        feature_dim: int = 512,
        map_dim: int = 256,
        hidden_dims: Sequence[int] = (4096, 4096),
        n_experts: int = 7,
        num_heads: int = 8,
        expert_prompts: str = "trained",
        attention: str = "sample",
        selection: str = "newest",
        input_transform: str = "pbeh",
        seed: int = 88,
    ) -> None:
        super().__init__()
        self.n_bits = check_positive_int(n_bits, "n_bits")
        self.feature_dim = check_positive_int(feature_dim, "feature_dim")
        self.map_dim = check_positive_int(map_dim, "map_dim")
        if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence):
            raise TypeError(f"hidden_dims: expected a sequence of positive ints, got {hidden_dims!r}")
        self.hidden_dims = tuple(check_positive_int(h, "hidden_dims") for h in hidden_dims)
        self.n_experts = check_positive_int(n_experts, "n_experts")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if self.feature_dim % self.num_heads:
            raise ValueError(f"num_heads: expected a divisor of feature_dim={self.feature_dim}, got {num_heads}")
        self.expert_prompts = check_choice(expert_prompts, "expert_prompts", EXPERT_PROMPTS)
        self.attention_scope = check_choice(attention, "attention", ATTENTION)
        self.selection = check_choice(selection, "selection", SELECTION)
        self.seed = check_int(seed, "seed")
        gen = torch.Generator().manual_seed(self.seed)
        self.inputs = FeatureInput(
            image_dim, text_dim, feature_dim=self.feature_dim, transform=input_transform, generator=gen
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.global_prompts = nn.ParameterDict({m: nn.Parameter(torch.randn(self.feature_dim)) for m in MODALITIES})
            self.nets = nn.ModuleDict(
                {
                    m: _ModalityNet(self.feature_dim, self.map_dim, self.hidden_dims, self.n_bits, self.num_heads)
                    for m in MODALITIES
                }
            )
        self.experts = nn.ParameterDict()  # "image_3", "text_3": (n_experts, feature_dim)

    # ------------------------------------------------------------------ tasks
    @property
    def n_tasks(self) -> int:
        return len(self.experts) // 2

    def add_task(self) -> int:
        """Create the next task's expert pools (one per modality), freeze earlier pools; returns the task index."""
        t = self.n_tasks
        device = self.global_prompts["image"].device
        trained = self.expert_prompts == "trained"
        with torch.random.fork_rng(devices=[]):
            # released: the same seed before every task's pool, so all pools are equal
            torch.manual_seed(self.seed + (7919 * (t + 1) if trained else 0))
            pools = {m: torch.randn(self.n_experts, self.feature_dim, device=device) for m in MODALITIES}
        for m in MODALITIES:
            self.experts[f"{m}_{t}"] = nn.Parameter(pools[m], requires_grad=trained)
        for i in range(t):
            for m in MODALITIES:
                self.experts[f"{m}_{i}"].requires_grad_(False)
        return t

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser of the newest task updates: everything that requires a gradient."""
        return [p for p in self.parameters() if p.requires_grad]

    def _pool(self, modality: str) -> torch.Tensor:
        if self.n_tasks == 0:
            raise RuntimeError("model: no task yet; call add_task() first")
        if self.selection == "newest":
            return self.experts[f"{modality}_{self.n_tasks - 1}"]
        return torch.cat([self.experts[f"{modality}_{i}"] for i in range(self.n_tasks)])

    # ------------------------------------------------------------------ forward
    def select(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """The expert prompt each row selects: ``argmax_j x . normalize(E)_j``; ``(B, feature_dim)``."""
        pool = self._pool(modality)
        return pool[(x @ F.normalize(pool, dim=1).T).argmax(dim=1)]

    def hash(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """L2-normalised continuous codes ``(B, n_bits)``."""
        modality = check_choice(modality, "modality", MODALITIES)
        x = self.inputs(features, modality)
        e = self.select(x, modality)
        net = self.nets[modality]
        g = self.global_prompts[modality].expand(x.shape[0], -1)
        if self.attention_scope == "sample":
            a = net.attention(g.unsqueeze(1), e.unsqueeze(1), e.unsqueeze(1), need_weights=False)[0].squeeze(1)
        else:  # released: one sequence of length B, every query attends over the whole batch's experts
            a = net.attention(g.unsqueeze(0), e.unsqueeze(0), e.unsqueeze(0), need_weights=False)[0].squeeze(0)
        u = torch.cat([x, net.prompt_map(a)], dim=1)
        return F.normalize(net.classifier(net.features(u)), dim=1)

    def encode(self, features: Any, modality: str, *, batch_size: int = 1024) -> Codes:
        """Codes of raw features (``attention="batch"``: codes depend on ``batch_size`` and the row order)."""
        modality = check_choice(modality, "modality", MODALITIES)
        feats = torch.as_tensor(features, dtype=torch.float32, device=self.global_prompts["image"].device)
        batch_size = check_positive_int(batch_size, "batch_size")
        return encode_rows(self, len(feats), lambda rows: self.hash(feats[rows], modality), batch_size=batch_size)

    # ------------------------------------------------------------------ persistence
    def get_config(self) -> dict[str, Any]:
        return {
            "image_dim": self.inputs.image_dim,
            "text_dim": self.inputs.text_dim,
            "n_bits": self.n_bits,
            "feature_dim": self.feature_dim,
            "map_dim": self.map_dim,
            "hidden_dims": list(self.hidden_dims),
            "n_experts": self.n_experts,
            "num_heads": self.num_heads,
            "expert_prompts": self.expert_prompts,
            "attention": self.attention_scope,
            "selection": self.selection,
            "input_transform": self.inputs.transform,
            "seed": self.seed,
            "n_tasks": self.n_tasks,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` and ``config.json``."""
        save_module(directory, self, self.get_config(), kind=_KIND)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> PICMHModel:
        """Load a model written by :meth:`save_pretrained` (on CPU, eval mode)."""
        return load_task_model(cls, directory, kind=_KIND)
