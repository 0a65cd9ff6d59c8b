"""Per-modality hash heads whose output width can grow, keeping the old bits exact or letting them train on.

A head maps ``z = [x ; context]`` ``(B, in_dim)`` through an MLP (the reference: ``in_dim -> 4096 -> 4096``
with ReLU) to ``n_bits`` outputs, L2-normalised: ``h`` lies on the unit sphere and the code is ``sign(h)``.

Growing the code (:meth:`ExtensibleHasher.extend`). The output layer is kept as a list of row blocks, one per
extension: the old rows are never copied or re-computed in a wider matrix, so right after an extension the old
outputs are bit-for-bit what they were (one wide ``Linear`` would compute them with a wider GEMM, which need
not round identically). Mathematically this is the reference's ``Linear(4096, K + delta)`` with the first
``K`` rows copied, and AdamW treats every element alike, so training is the same. Two modes:

* ``freeze_old=False`` (the reference): the new rows join the newest trainable path; everything keeps
  training, and stored short codes drift (measure it with :meth:`ExtensibleHasher.prefix_drift`).
* ``freeze_old=True``: the whole path that produces the existing bits (trunk and rows) is frozen
  (``requires_grad=False``, gradients cleared), and the new bits come from a new trainable branch, a small MLP
  from ``z`` (``branch_hidden_dims``). For a fixed input ``z`` the old bits then stay bit-identical through
  any further training, AdamW weight decay included (frozen parameters get no gradient, and optimisers skip
  them). Freezing is permanent: a later ``freeze_old=False`` extension widens the newest branch only.

Extensions create new parameters: rebuild the optimiser after every :meth:`~ExtensibleHasher.extend`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validation import (
    check_batch_tensor,
    check_bool,
    check_choice,
    check_codes,
    check_optional_int,
    check_positive_int,
)
from .codes import Codes

__all__ = ["ExtensibleHasher"]

_logger = logging.getLogger(__name__)


def _check_widths(name: str, values: Any) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: expected a sequence of positive ints such as (4096, 4096), got {values!r}")
    return tuple(check_positive_int(v, f"{name}[{i}]") for i, v in enumerate(values))


def _make_linear(in_features: int, out_features: int, gen: torch.Generator | None) -> nn.Linear:
    """A Linear with PyTorch's default initialisation, drawn from ``gen`` when given (else the global RNG)."""
    if gen is None:
        return nn.Linear(in_features, out_features)
    lin = torch.nn.utils.skip_init(nn.Linear, in_features, out_features)
    bound = 1.0 / math.sqrt(in_features)  # = kaiming_uniform(a=sqrt(5)) bound, and the default bias bound
    with torch.no_grad():
        lin.weight.copy_(torch.empty(out_features, in_features).uniform_(-bound, bound, generator=gen))
        lin.bias.copy_(torch.empty(out_features).uniform_(-bound, bound, generator=gen))
    return lin


def _make_mlp(in_dim: int, hidden_dims: tuple[int, ...], gen: torch.Generator | None) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden_dims:
        layers += [_make_linear(width, h, gen), nn.ReLU()]
        width = h
    return nn.Sequential(*layers), width


class _Segment(nn.Module):
    """A trunk (MLP, possibly empty) followed by output row blocks whose outputs are concatenated."""

    def __init__(self, trunk: nn.Sequential, trunk_width: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.trunk_width = trunk_width
        self.blocks = nn.ModuleList()

    @property
    def n_bits(self) -> int:
        return sum(b.out_features for b in self.blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        t = self.trunk(z)
        if len(self.blocks) == 1:
            return self.blocks[0](t)
        return torch.cat([b(t) for b in self.blocks], dim=1)


class ExtensibleHasher(nn.Module):
    """Per-modality hash heads ``z -> h`` (L2-normalised, ``n_bits`` wide) that can be widened.

    Args:
        in_dim: width of ``z`` (``2 * dim`` in PBEH: feature and prompt context).
        n_bits: initial code length.
        hidden_dims: hidden widths of each head's MLP (ReLU after each); ``()`` gives a single Linear.
        modalities: names of the heads.
        seed: seeds the initialisation (and every extension); ``None`` uses the global torch RNG.
        branch_hidden_dims: hidden widths of the branch that produces new bits after
            ``extend(freeze_old=True)``.

    Example:
        >>> hasher = ExtensibleHasher(8, 4, hidden_dims=(16,), seed=0)
        >>> z = torch.randn(3, 8)
        >>> hasher(z, "image").shape
        torch.Size([3, 4])
        >>> before = hasher.encode(z, "text")
        >>> hasher.extend(2, freeze_old=True)
        >>> hasher.n_bits, hasher.width_history, hasher.frozen_history
        (6, [4, 6], [True])
        >>> hasher.encode(z, "text").truncate(4) == before
        True
    """

    def __init__(
        self,
        in_dim: int,
        n_bits: int,
        *,
        hidden_dims: Sequence[int] = (512, 512),
        modalities: Sequence[str] = ("image", "text"),
        seed: int | None = None,
        branch_hidden_dims: Sequence[int] = (256,),
    ) -> None:
        super().__init__()
        self.in_dim = check_positive_int(in_dim, "in_dim")
        n_bits = check_positive_int(n_bits, "n_bits")
        self.hidden_dims = _check_widths("hidden_dims", hidden_dims)
        self.branch_hidden_dims = _check_widths("branch_hidden_dims", branch_hidden_dims)
        if isinstance(modalities, str) or not isinstance(modalities, Sequence) or not modalities:
            raise TypeError(f"modalities: expected a non-empty sequence of names, got {modalities!r}")
        if not all(isinstance(m, str) and m for m in modalities) or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities: expected distinct non-empty strings, got {list(modalities)!r}")
        self.modalities = tuple(modalities)
        self.seed = check_optional_int(seed, "seed")
        self.width_history: list[int] = [n_bits]
        self.frozen_history: list[bool] = []
        gen = None if self.seed is None else torch.Generator().manual_seed(self.seed)
        heads = {}
        for m in self.modalities:
            trunk, width = _make_mlp(self.in_dim, self.hidden_dims, gen)
            seg = _Segment(trunk, width)
            seg.blocks.append(_make_linear(width, n_bits, gen))
            heads[m] = nn.ModuleList([seg])
        self.heads = nn.ModuleDict(heads)

    # ------------------------------------------------------------------ introspection
    @property
    def n_bits(self) -> int:
        """The current code length."""
        return self.width_history[-1]

    @property
    def n_frozen_bits(self) -> int:
        """Leading bits that come from a frozen path (exact for a fixed ``z``, whatever training follows)."""
        n = 0
        for seg in self.heads[self.modalities[0]]:
            if any(p.requires_grad for p in seg.parameters()):
                break
            n += seg.n_bits
        return n

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def get_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this hasher's shapes (JSON-serialisable); see :meth:`from_config`."""
        return {
            "in_dim": self.in_dim,
            "hidden_dims": list(self.hidden_dims),
            "branch_hidden_dims": list(self.branch_hidden_dims),
            "modalities": list(self.modalities),
            "seed": self.seed,
            "width_history": list(self.width_history),
            "frozen_history": list(self.frozen_history),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ExtensibleHasher:
        """A hasher with the widths, branches and frozen flags of :meth:`get_config` (fresh weights)."""
        widths = [int(w) for w in config["width_history"]]
        frozen = [bool(f) for f in config["frozen_history"]]
        if len(frozen) != len(widths) - 1 or any(b <= a for a, b in itertools.pairwise(widths)):
            raise ValueError(
                f"config: width_history must increase and have one more entry than frozen_history, got "
                f"{widths} and {frozen}"
            )
        hasher = cls(
            config["in_dim"],
            widths[0],
            hidden_dims=config["hidden_dims"],
            modalities=config["modalities"],
            seed=config["seed"],
            branch_hidden_dims=config["branch_hidden_dims"],
        )
        for a, b, f in zip(widths, widths[1:], frozen, strict=False):
            hasher.extend(b - a, freeze_old=f)
        return hasher

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, n_bits={self.n_bits}, width_history={self.width_history}"

    def head_parameters(self) -> list[nn.Parameter]:
        """Every trainable head parameter (frozen paths excluded); rebuild the optimiser on extend."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ computing
    def _check_modality(self, modality: Any) -> str:
        return check_choice(modality, "modality", self.modalities)

    def _check_z(self, z: Any) -> torch.Tensor:
        return check_batch_tensor(z, "z", width=self.in_dim, dtype=self.dtype, device=self.device, owner="hasher")

    def logits(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """Head outputs before L2 normalisation, ``(B, n_bits)``; their signs are the codes."""
        segs = self.heads[self._check_modality(modality)]
        z = self._check_z(z)
        if len(segs) == 1:
            return segs[0](z)
        return torch.cat([seg(z) for seg in segs], dim=1)

    def forward(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """L2-normalised head outputs ``h`` ``(B, n_bits)``."""
        return F.normalize(self.logits(z, modality), dim=1)

    def encode(self, z: Any, modality: str, *, batch_size: int = 1024) -> Codes:
        """Binary codes ``sign(h)`` of ``z`` (tensor or numpy array), in eval mode, under inference mode.

        ``z`` is moved to the hasher's device and dtype. The training flag is restored afterwards.
        """
        self._check_modality(modality)
        batch_size = check_positive_int(batch_size, "batch_size")
        z = self._check_z(_to_tensor(z, "z", self.device, self.dtype))
        return _encode_in_batches(self, len(z), batch_size, lambda rows: self.logits(z[rows], modality), self.n_bits)

    def prefix_drift(self, stored: Codes, z: Any, modality: str) -> float:
        """Fraction of the stored codes' bits that re-encoding ``z`` now would flip.

        ``stored`` holds codes of ``K_i <= n_bits`` bits produced earlier from the same inputs ``z`` (row for
        row); the current codes are truncated to ``K_i`` bits and compared. 0.0 means fully prefix-compatible.
        """
        return _prefix_drift(stored, self.encode(z, modality), self.n_bits, len(z))

    # ------------------------------------------------------------------ growing
    def extend(self, n_new_bits: int, *, freeze_old: bool = False) -> None:
        """Append ``n_new_bits`` outputs to every head (see the module docstring); rebuild the optimiser.

        The outputs of the existing bits are unchanged right after extension (before normalisation exactly, so
        their signs too). New rows get PyTorch's default Linear initialisation (seeded when ``seed`` was
        given).
        """
        n_new_bits = check_positive_int(n_new_bits, "n_new_bits")
        freeze_old = check_bool(freeze_old, "freeze_old")
        step = len(self.frozen_history) + 1
        gen = None if self.seed is None else torch.Generator().manual_seed(self.seed + 1_000_003 * step)
        device, dtype = self.device, self.dtype
        for m in self.modalities:
            segs = self.heads[m]
            if freeze_old:
                for p in segs.parameters():
                    p.requires_grad_(False)
                    p.grad = None
                trunk, width = _make_mlp(self.in_dim, self.branch_hidden_dims, gen)
                seg = _Segment(trunk, width)
                seg.blocks.append(_make_linear(width, n_new_bits, gen))
                segs.append(seg.to(device=device, dtype=dtype))
            else:
                last = segs[-1]
                last.blocks.append(_make_linear(last.trunk_width, n_new_bits, gen).to(device=device, dtype=dtype))
        self.width_history.append(self.n_bits + n_new_bits)
        self.frozen_history.append(freeze_old)
        _logger.info(
            "hasher: extended to %d bits (+%d, %s)",
            self.n_bits,
            n_new_bits,
            "old bits frozen" if freeze_old else "all train",
        )


def _to_tensor(values: Any, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(np.ascontiguousarray(values))
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor or numpy array, got {type(values).__name__}")
    if not (values.is_floating_point() or values.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name}: expected real-valued features, got dtype {values.dtype}")
    return values.to(device=device, dtype=dtype)


def _encode_in_batches(
    module: nn.Module, n_rows: int, batch_size: int, logits: Callable[[slice], torch.Tensor], n_bits: int
) -> Codes:
    """``n_bits``-bit codes of ``n_rows`` inputs from their logits, computed ``batch_size`` rows at a time.

    ``logits(rows)`` returns the ``(len(rows), n_bits)`` head outputs of the input rows ``rows`` (a slice); their
    signs are the codes. It runs with ``module`` in eval mode under :func:`torch.inference_mode`; the training
    flag of ``module`` is restored afterwards. Shared by :meth:`ExtensibleHasher.encode` and
    :meth:`pbeh.model.CrossModalHashModel.encode`.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            parts = [logits(slice(i, i + batch_size)).cpu() for i in range(0, n_rows, batch_size)]
    finally:
        module.train(was_training)
    if not parts:
        return Codes.empty(n_bits)
    return Codes.from_signs(torch.cat(parts).float().numpy())


def _prefix_drift(stored: Any, current: Codes, n_bits: int, n_inputs: int) -> float:
    stored = check_codes(stored, "stored")
    if stored.n_bits > n_bits:
        raise ValueError(
            f"stored: codes of {stored.n_bits} bits are longer than the current {n_bits}-bit codes; "
            "prefix drift compares a stored prefix with current codes"
        )
    if len(stored) != n_inputs:
        raise ValueError(f"stored: expected one code per input row ({n_inputs}), got {len(stored)} codes")
    if len(stored) == 0:
        raise ValueError("stored: expected at least one code, got none")
    flips = np.count_nonzero(current.truncate(stored.n_bits).to_bool() != stored.to_bool())
    return float(flips) / (len(stored) * stored.n_bits)
