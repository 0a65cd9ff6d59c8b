"""What every frozen encoder shares: the model in eval mode on its device, and the batched encoding loop (tqdm bar,
:func:`torch.inference_mode`, float32 rows on the CPU, optional L2 normalisation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._loading import _model_device_dtype

if TYPE_CHECKING:  # pragma: no cover
    import torch


class _Frozen:
    """What the frozen encoders share: device and eval handling, and the batched encoding loop."""

    model: Any
    _name: str

    def _setup_model(self, model: Any, device: Any) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module (a transformers model), got {type(model).__name__}")
        if device is not None:
            model.to(device)
        model.eval()
        self.model = model

    @property
    def name(self) -> str:
        """The checkpoint name or path; :class:`FeatureCache` records it to refuse features of another encoder."""
        return self._name

    @property
    def device(self) -> torch.device:
        """The model's device (inputs are moved there)."""
        return _model_device_dtype(self.model)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, dim={self.dim}, device={str(self.device)!r})"

    @property
    def dim(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def _encode_batches(
        self,
        n: int,
        batch_size: int,
        step: Callable[[int, int], torch.Tensor],
        *,
        show_progress_bar: bool,
        normalize: bool,
        desc: str,
    ) -> np.ndarray:
        """Embed ``n`` items ``batch_size`` at a time into a ``(n, dim)`` float32 array.

        ``step(start, stop)`` returns the ``(stop - start, dim)`` embeddings of items ``start:stop``. The batches run
        in eval mode under :func:`torch.inference_mode`, with a tqdm bar ``desc``; with ``normalize`` every row is
        divided by its L2 norm.
        """
        import torch
        from tqdm.auto import tqdm

        dim = self.dim
        self.model.eval()
        out = np.empty((n, dim), dtype=np.float32)
        with torch.inference_mode():
            for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", disable=not show_progress_bar):
                stop = min(start + batch_size, n)
                feats = step(start, stop)
                if feats.ndim != 2 or feats.shape != (stop - start, dim):
                    raise RuntimeError(
                        f"{desc}: the model produced features of shape {tuple(feats.shape)}, "
                        f"expected ({stop - start}, {dim})"
                    )
                out[start:stop] = feats.float().cpu().numpy()
        if normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(norms, np.float32(1e-12))
        return out
