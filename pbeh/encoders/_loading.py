"""Loading a frozen encoder's model: a hub name or a local folder (a path that is clearly local must exist), cast
to a dtype; the encoder's recorded name; the device and dtype a model runs in."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64"}


def _check_name(name: Any, what: str = "name") -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{what}: expected a non-empty str, got {name!r}")
    return name


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        if dtype in _DTYPES:
            return getattr(torch, _DTYPES[dtype])
        raise ValueError(f"dtype: expected one of {sorted(_DTYPES)} or a torch.dtype, got {dtype!r}")
    raise TypeError(f"dtype: expected a str or a torch.dtype, got {type(dtype).__name__}")


def _source(name_or_path: Any, what: str) -> str:
    """``name_or_path`` as a string; a path that is clearly local (absolute, ``./``, ``~``, a Path) must exist."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"{what}: expected a hub name or a folder path, got {type(name_or_path).__name__}")
    src = os.path.expanduser(os.fspath(name_or_path))
    looks_local = isinstance(name_or_path, os.PathLike) or os.path.isabs(src) or src.startswith((".", "~"))
    if looks_local and not Path(src).is_dir():
        raise FileNotFoundError(f"{what}: expected a model folder (written by save_pretrained), got {src!r}")
    return src


def _load_model(
    model_class: Any, name_or_path: Any, what: str, *, local_files_only: bool, dtype: Any
) -> tuple[Any, str]:
    """``model_class.from_pretrained`` of a hub name or model folder, cast to ``dtype``; also the source string."""
    torch_dtype = _resolve_dtype(dtype)
    src = _source(name_or_path, what)
    model = model_class.from_pretrained(src, local_files_only=local_files_only)
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model, src


def _encoder_name(name: Any, model: Any) -> str:
    """``name``, by default the checkpoint's ``config.name_or_path`` or else the model's class name."""
    return _check_name(name if name is not None else (model.config.name_or_path or type(model).__name__))


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    import torch

    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32
