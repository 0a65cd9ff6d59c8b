"""Adaptive gated fusion: a selective state-space (Mamba) layer over a two-token sequence, then a transformer layer.

PromptHash fuses two vectors ``a`` and ``b`` of width ``dim`` (an item's feature and its partner: the other
modality, or its affinity prompt) as follows (REFERENCE.md §5, ``FusionTransMamba``)::

    tokens = [a, b]                                   (B, 2, dim)
    y      = MambaMixer(LayerNorm(tokens))            the selective scan over the 2 tokens (transformers' mixer)
    y      = out_proj(GRN(y))                         gated residual: GRN(y) = gamma * (y * N(y)) + beta + y
    a', b' = 0.5 * y + 0.5 * in_proj(tokens)          the projection shortcut
    z      = GRN([a' ; b'])                           (B, 2 dim)
    z      = TransformerEncoderLayer(z)               see ``batch_mode``
    a'', b'' = halves of z / ||z||

``batch_mode`` says what the transformer layer's sequence is:

* ``"sample"`` (pbeh's default): each item is its own length-1 sequence, so an item's output never depends on the
  other items of its batch (same item, same output at any batch size).
* ``"batch"`` (reference parity): the released code hands the layer a 2-D ``(batch, 2 dim)`` tensor, which PyTorch
  reads as *one* unbatched sequence of length ``batch``: attention runs across the items of the batch, so an item's
  output depends on its batch. Use it only to reproduce the released numbers, and label them "parity".

The Mamba mixer is :class:`transformers.models.mamba.modeling_mamba.MambaMixer`; on a machine without the
``mamba-ssm`` kernels it runs its PyTorch reference scan (correct, slower; on a 2-token sequence the cost is small).
The released code splits the mixer's output with ``torch.chunk(..., dim=0)`` after its ``MambaLayer`` wrapper
(not public); here the two tokens are split along the token axis, which is what the surrounding code expects.
The LayerNorm before the mixer follows the common ``MambaLayer`` wrapper [inferred].
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_choice, check_positive_int, check_real

__all__ = ["BATCH_MODES", "GRN", "GatedFusion", "reference_selective_scan"]

_logger = logging.getLogger(__name__)

BATCH_MODES = ("sample", "batch")


class GRN(nn.Module):
    """Global response normalisation with its gated residual: ``gamma * (y * N(y)) + beta + y``.

    For ``y`` of shape ``(B, T, C)`` (or ``(B, C)``, read as ``T = 1``): ``G = ||y||_2`` over the token axis,
    ``N = G / mean_C(G)``; everything is per item, so the layer is batch independent. ``gamma`` and ``beta``
    start at zero, so the layer starts as the identity.
    """

    def __init__(self, dim: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(self.dim))
        self.beta = nn.Parameter(torch.zeros(self.dim))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        squeeze = y.ndim == 2
        if squeeze:
            y = y.unsqueeze(1)
        g = torch.linalg.vector_norm(y, dim=1, keepdim=True)  # (B, 1, C)
        n = g / (g.mean(dim=-1, keepdim=True) + self.eps)
        out = self.gamma * (y * n) + self.beta + y
        return out.squeeze(1) if squeeze else out


class GatedFusion(nn.Module):
    """Fuse two ``(B, dim)`` vectors with a Mamba mixer, a gated residual, a projection shortcut and a transformer
    layer (see the module docstring).

    Args:
        dim: width of each of the two inputs.
        n_heads: attention heads of the transformer layer (width ``2 dim``; must divide it).
        d_state, d_conv, expand: the Mamba mixer's state size, convolution width and expansion (reference 16, 4, 2).
        ffn_dim: feed-forward width of the transformer layer (default ``4 dim``).
        dropout: dropout of the transformer layer.

    Example:
        >>> fusion = GatedFusion(8, n_heads=2).eval()
        >>> a, b = torch.randn(5, 8), torch.randn(5, 8)
        >>> a2, b2 = fusion(a, b)
        >>> a2.shape, b2.shape
        (torch.Size([5, 8]), torch.Size([5, 8]))
        >>> torch.allclose(fusion(a[:1], b[:1])[0], a2[:1], atol=1e-5)  # per-sample: batch independent
        True
    """

    def __init__(
        self,
        dim: int,
        *,
        n_heads: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        from transformers import MambaConfig
        from transformers.models.mamba.modeling_mamba import MambaMixer

        self.dim = check_positive_int(dim, "dim")
        self.n_heads = check_positive_int(n_heads, "n_heads")
        if (2 * self.dim) % self.n_heads:
            raise ValueError(
                f"n_heads: expected a divisor of the transformer width 2*dim={2 * self.dim}, got {n_heads}"
            )
        self.d_state = check_positive_int(d_state, "d_state")
        self.d_conv = check_positive_int(d_conv, "d_conv")
        self.expand = check_positive_int(expand, "expand")
        self.ffn_dim = 4 * self.dim if ffn_dim is None else check_positive_int(ffn_dim, "ffn_dim")
        self.dropout = check_real(dropout, "dropout")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        config = MambaConfig(
            hidden_size=self.dim,
            state_size=self.d_state,
            conv_kernel=self.d_conv,
            expand=self.expand,
            num_hidden_layers=1,
            use_mambapy=False,
        )
        self.norm = nn.LayerNorm(self.dim)
        self.mixer = MambaMixer(config, layer_idx=0)
        self.token_grn = GRN(self.dim)
        self.in_proj = nn.Linear(self.dim, self.dim)
        self.out_proj = nn.Linear(self.dim, self.dim)
        self.pair_grn = GRN(2 * self.dim)
        self.transformer = nn.TransformerEncoderLayer(
            d_model=2 * self.dim,
            nhead=self.n_heads,
            dim_feedforward=self.ffn_dim,
            dropout=self.dropout,
            batch_first=True,
        )

    def mamba(self, tokens: torch.Tensor) -> torch.Tensor:
        """The gated state-space part alone: ``(B, T, dim)`` tokens to ``(B, T, dim)`` (before the shortcut)."""
        return self.out_proj(self.token_grn(self.mixer(self.norm(tokens))))

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, *, batch_mode: str = "sample"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused ``(a'', b'')``, each ``(B, dim)``, jointly L2-normalised (``||[a'' ; b'']|| = 1``)."""
        check_choice(batch_mode, "batch_mode", BATCH_MODES)
        if a.shape != b.shape or a.ndim != 2 or a.shape[1] != self.dim:
            raise ValueError(
                f"a, b: expected two tensors of shape (batch, {self.dim}), got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        tokens = torch.stack([a, b], dim=1)  # (B, 2, dim)
        mixed = 0.5 * self.mamba(tokens) + 0.5 * self.in_proj(tokens)
        pair = self.pair_grn(mixed.reshape(len(a), 2 * self.dim))
        if batch_mode == "sample":
            z = self.transformer(pair.unsqueeze(1)).squeeze(1)  # every item a length-1 sequence
        elif batch_mode == "batch":
            z = self.transformer(pair.unsqueeze(0)).squeeze(0)  # the whole batch one sequence (released quirk)
        else:  # pragma: no cover - check_choice above
            raise ValueError(f"batch_mode: expected one of {list(BATCH_MODES)}, got {batch_mode!r}")
        z = F.normalize(z, dim=-1)
        return z[:, : self.dim], z[:, self.dim :]


def reference_selective_scan(mixer: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    """A plain sequential-scan reference of ``MambaMixer.forward`` (no cache, no mask), written from the Mamba
    equations, for tests: a loop over time steps, no parallel scan and no fused kernel.

    For input ``x`` ``(B, L, H)``: ``[u ; g] = in_proj(x)``, ``u = silu(causal depthwise conv(u))``,
    ``[dt_r ; B_t ; C_t] = x_proj(u)``, ``dt = softplus(dt_proj(dt_r))``; per step
    ``h = exp(dt A) h + dt B_t u``, ``y = C_t h + D u``; output ``out_proj(y * silu(g))``.
    """
    batch, length, _ = hidden_states.shape
    projected = mixer.in_proj(hidden_states).transpose(1, 2)  # (B, 2I, L)
    u, gate = projected.chunk(2, dim=1)
    u = F.silu(mixer.conv1d(u)[..., :length])  # causal: keep the first L outputs of the padded convolution
    u = u.transpose(1, 2)  # (B, L, I)
    params = mixer.x_proj(u)
    dt_rank, n_state = mixer.time_step_rank, mixer.ssm_state_size
    dt = F.softplus(mixer.dt_proj(params[..., :dt_rank]))  # (B, L, I)
    b_t = params[..., dt_rank : dt_rank + n_state]  # (B, L, N)
    c_t = params[..., dt_rank + n_state :]  # (B, L, N)
    a = -torch.exp(mixer.A_log.float())  # (I, N)
    state = torch.zeros(batch, a.shape[0], n_state, dtype=hidden_states.dtype, device=hidden_states.device)
    outputs = []
    for t in range(length):
        decay = torch.exp(dt[:, t, :, None] * a)  # (B, I, N)
        state = decay * state + dt[:, t, :, None] * b_t[:, t, None, :] * u[:, t, :, None]
        outputs.append((state * c_t[:, t, None, :]).sum(-1) + mixer.D * u[:, t])
    y = torch.stack(outputs, dim=1)  # (B, L, I)
    y = y * F.silu(gate.transpose(1, 2))
    return mixer.out_proj(y)
