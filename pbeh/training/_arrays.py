"""Features (numpy arrays) as float32 tensors on the trainer's device."""

from __future__ import annotations

import numpy as np
import torch


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.float32), device=device)
