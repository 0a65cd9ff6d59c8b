"""Shared residual MLP and hash heads for several code lengths trained together, optionally nested.

As released (REFERENCE.md §5): one residual MLP shared by every stream (pre-LayerNorm blocks, GELU, dropout), then per
code length ``K`` a head ``tanh(Linear(dim -> K))``, plus an auxiliary long code (256 bits) and, per ``K``, a decoder
``tanh(MLP(K -> aux -> aux))`` that reconstructs the auxiliary code.

``nested=True`` (pbeh's own option): a single head of the longest length; the ``K``-bit output is its first ``K``
columns. A shorter code is then exactly the prefix of a longer one, so codes of every trained length can share one
:class:`~pbeh.index.TruncatedHammingIndex` (compared on their common prefix) and a stored long code serves every
shorter query.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..._validation import check_bool, check_int, check_positive_int, check_real

__all__ = ["HashHeads", "ResidualMLP", "check_lengths"]


def check_lengths(n_bits: int | Sequence[int], name: str = "n_bits") -> tuple[int, ...]:
    """Code lengths as a sorted tuple of distinct positive ints (one int is one length)."""
    if isinstance(n_bits, (int, float)) and not isinstance(n_bits, bool):
        values = [n_bits]
    elif isinstance(n_bits, Sequence) and not isinstance(n_bits, str):
        values = list(n_bits)
    else:
        raise TypeError(f"{name}: expected an int or a sequence of ints, got {type(n_bits).__name__}")
    if not values:
        raise ValueError(f"{name}: expected at least one code length, got none")
    lengths = tuple(sorted({check_positive_int(v, name) for v in values}))
    if len(lengths) != len(values):
        raise ValueError(f"{name}: expected distinct code lengths, got {list(values)}")
    return lengths


class ResidualMLP(nn.Module):
    """``x + MLP(LayerNorm(x))`` repeated ``n_blocks`` times; ``(B, dim)`` in and out."""

    def __init__(self, dim: int, *, hidden_dim: int, n_blocks: int = 2, dropout: float = 0.5) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.hidden_dim = check_positive_int(hidden_dim, "hidden_dim")
        self.n_blocks = check_int(n_blocks, "n_blocks", minimum=0)
        self.dropout = check_real(dropout, "dropout")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        self.norms = nn.ModuleList(nn.LayerNorm(self.dim) for _ in range(self.n_blocks))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Linear(self.dim, self.hidden_dim),
                nn.GELU(),
                nn.Dropout(self.dropout),
                nn.Linear(self.hidden_dim, self.dim),
            )
            for _ in range(self.n_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block in zip(self.norms, self.blocks, strict=True):
            x = x + block(norm(x))
        return x


class HashHeads(nn.Module):
    """Hash outputs in ``(-1, 1)`` for every trained length (plus the auxiliary code) and the reconstruction decoders.

    Args:
        dim: input width.
        lengths: the trained code lengths (e.g. ``(16, 32, 64)``).
        nested: one head of ``max(lengths)`` bits whose prefixes are the shorter codes.
        aux_bits: length of the auxiliary code (0: none, and no decoders).

    Example:
        >>> heads = HashHeads(8, lengths=(4, 8), nested=True, aux_bits=16)
        >>> out = heads(torch.randn(3, 8))
        >>> list(out), torch.equal(out[4], out[8][:, :4])
        ([4, 8, 'aux'], True)
        >>> heads.decode(4, out[4]).shape
        torch.Size([3, 16])
    """

    def __init__(self, dim: int, *, lengths: Sequence[int], nested: bool = False, aux_bits: int = 256) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.lengths = check_lengths(lengths, "lengths")
        self.nested = check_bool(nested, "nested")
        self.aux_bits = check_int(aux_bits, "aux_bits", minimum=0)
        if self.nested:
            self.heads = nn.ModuleDict({str(self.lengths[-1]): nn.Linear(self.dim, self.lengths[-1])})
        else:
            self.heads = nn.ModuleDict({str(k): nn.Linear(self.dim, k) for k in self.lengths})
        self.aux_head = nn.Linear(self.dim, self.aux_bits) if self.aux_bits else None
        self.decoders = nn.ModuleDict(
            {
                str(k): nn.Sequential(
                    nn.Linear(k, self.aux_bits), nn.ReLU(), nn.Linear(self.aux_bits, self.aux_bits), nn.Tanh()
                )
                for k in self.lengths
            }
            if self.aux_bits
            else {}
        )

    @property
    def max_bits(self) -> int:
        return self.lengths[-1]

    def check_length(self, n_bits: int | None) -> int:
        """``n_bits`` if it is a trained length (``None``: the longest), else a ValueError naming them."""
        if n_bits is None:
            return self.max_bits
        n_bits = check_positive_int(n_bits, "n_bits")
        if n_bits in self.lengths:
            return n_bits
        hint = (
            f"; nested codes: truncate the {self.max_bits}-bit code" if self.nested and n_bits < self.max_bits else ""
        )
        raise ValueError(f"n_bits: expected one of the trained lengths {list(self.lengths)}, got {n_bits}{hint}")

    def logits(self, features: torch.Tensor, n_bits: int) -> torch.Tensor:
        """Pre-tanh outputs of the ``n_bits`` head ``(B, n_bits)`` (their signs are the codes)."""
        if self.nested:
            return self.heads[str(self.max_bits)](features)[:, :n_bits]
        return self.heads[str(n_bits)](features)

    def forward(self, features: torch.Tensor) -> dict[int | str, torch.Tensor]:
        """``{K: tanh outputs (B, K)}`` for every trained length, and ``"aux"`` when there is an auxiliary code."""
        out: dict[int | str, torch.Tensor] = {}
        if self.nested:
            full = torch.tanh(self.heads[str(self.max_bits)](features))
            for k in self.lengths:
                out[k] = full[:, :k]
        else:
            for k in self.lengths:
                out[k] = torch.tanh(self.heads[str(k)](features))
        if self.aux_head is not None:
            out["aux"] = torch.tanh(self.aux_head(features))
        return out

    def decode(self, n_bits: int, hashes: torch.Tensor) -> torch.Tensor:
        """Reconstruct the auxiliary code from ``n_bits`` hash outputs (``(B, aux_bits)``)."""
        if not self.aux_bits:
            raise ValueError("aux_bits: this model has no auxiliary code (aux_bits=0), so no decoders")
        return self.decoders[str(self.check_length(n_bits))](hashes)
