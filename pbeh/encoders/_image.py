"""Image encoding: the images check (PIL images, file paths or a ``(B, C, H, W)`` pixel tensor), RGB opening,
``encode_images`` shared by :class:`ImageEncoder` and the CLIP encoder, and :class:`ImageEncoder` (any vision
``AutoModel``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validation import check_positive_int
from ._frozen import _Frozen
from ._loading import _encoder_name, _load_model, _model_device_dtype

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _is_pil_image(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - without pillow no PIL image can exist
        return False
    return isinstance(x, Image.Image)


def _check_images(images: Any) -> Any:
    """Return either a 4-D torch tensor of pixel values or a list of PIL images / paths."""
    import torch

    if isinstance(images, np.ndarray):
        if not (np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer)):
            raise TypeError(f"images: expected a numeric pixel array, got dtype {images.dtype}")
        images = torch.from_numpy(np.ascontiguousarray(images))
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"images: expected pixel values of shape (batch, channels, height, width), got shape "
                f"{tuple(images.shape)} (add a batch dimension with x[None] for one image)"
            )
        if images.shape[0] == 0:
            raise ValueError("images: expected at least one image, got an empty tensor")
        return images
    if _is_pil_image(images) or isinstance(images, (str, os.PathLike)):
        raise TypeError("images: expected a list of images, got a single image (wrap it in a list: [image])")
    if not isinstance(images, Sequence):
        raise TypeError(
            f"images: expected a list of PIL images or paths, or a (B, C, H, W) tensor, got {type(images).__name__}"
        )
    if len(images) == 0:
        raise ValueError("images: expected at least one image, got an empty list")
    for i, im in enumerate(images):
        if not (_is_pil_image(im) or isinstance(im, (str, os.PathLike))):
            raise TypeError(
                f"images: expected PIL images or image file paths, item {i} is {type(im).__name__} "
                "(pass pixel tensors as one (B, C, H, W) tensor)"
            )
    return list(images)


def _open_rgb(items: list[Any]) -> list[Any]:
    out = []
    for im in items:
        if not _is_pil_image(im):
            from PIL import Image

            with Image.open(im) as f:
                im = f.convert("RGB")
        elif im.mode != "RGB":
            im = im.convert("RGB")
        out.append(im)
    return out


class _ImageEncoding(_Frozen):
    """``encode_images`` of the image encoders: they set ``image_processor`` and define ``_embed_pixels``."""

    image_processor: Any

    def encode_images(
        self,
        images: Any,
        *,
        batch_size: int = 32,
        show_progress_bar: bool = True,
        normalize: bool = False,
    ) -> np.ndarray:
        """Embed images: a list of PIL images or file paths, or preprocessed pixel values ``(B, C, H, W)``.

        Returns:
            ``float32`` array of shape ``(n_images, dim)``.
        """
        import torch

        items = _check_images(images)
        batch_size = check_positive_int(batch_size, "batch_size")
        device, dtype = _model_device_dtype(self.model)

        def step(start: int, stop: int) -> torch.Tensor:
            if isinstance(items, torch.Tensor):
                pixels = items[start:stop]
            else:
                pixels = self.image_processor(images=_open_rgb(items[start:stop]), return_tensors="pt")["pixel_values"]
            return self._embed_pixels(pixels.to(device=device, dtype=dtype))

        return self._encode_batches(
            len(items),
            batch_size,
            step,
            show_progress_bar=show_progress_bar,
            normalize=normalize,
            desc="Encoding images",
        )

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        """``(batch, dim)`` embeddings of one batch of pixel values (on the model's device, in its dtype)."""
        raise NotImplementedError


class ImageEncoder(_ImageEncoding):
    """Image embeddings from any vision ``AutoModel`` (ViT, CLIPVisionModel, DINOv2, ConvNeXt, ...).

    Args:
        model: a transformers vision model.
        image_processor: its image processor.
        name: what :class:`FeatureCache` records (default ``model.config.name_or_path`` or the class name).
        device: move the model there (default: leave it where it is).
        pooling: ``"auto"`` (the model's ``pooler_output`` when it has one, else the mean of
            ``last_hidden_state`` over tokens or spatial positions), ``"pooler"`` or ``"mean"``.

    Example:
        >>> enc = ImageEncoder.from_pretrained("google/vit-base-patch16-224-in21k")  # doctest: +SKIP
        >>> enc.encode_images(["im1.jpg"], show_progress_bar=False).shape  # doctest: +SKIP
        (1, 768)
    """

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        pooling: str = "auto",
    ) -> None:
        self._setup_model(model, device)
        if not callable(image_processor):
            raise TypeError(
                f"image_processor: expected a transformers image processor, got {type(image_processor).__name__}"
            )
        if pooling in ("auto", "pooler", "mean"):
            self.pooling = pooling
        else:
            raise ValueError(f"pooling: expected 'auto', 'pooler' or 'mean', got {pooling!r}")
        self.image_processor = image_processor
        config = model.config
        hidden = getattr(config, "hidden_size", None)
        if not isinstance(hidden, int):
            sizes = getattr(config, "hidden_sizes", None)
            hidden = sizes[-1] if isinstance(sizes, (list, tuple)) and sizes else None
        if not isinstance(hidden, int):
            raise ValueError(
                f"model: cannot read the feature width from {type(config).__name__} "
                "(expected 'hidden_size' or 'hidden_sizes')"
            )
        self._dim = hidden
        self._name = _encoder_name(name, model)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        *,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        pooling: str = "auto",
        name: str | None = None,
    ) -> ImageEncoder:
        """Load ``AutoModel`` + ``AutoImageProcessor`` from a hub name or folder (arguments as in the constructor)."""
        from transformers import AutoImageProcessor, AutoModel

        model, src = _load_model(AutoModel, path, "path", local_files_only=local_files_only, dtype=dtype)
        processor = AutoImageProcessor.from_pretrained(src, local_files_only=local_files_only)
        return cls(model, processor, name=name if name is not None else src, device=device, pooling=pooling)

    @property
    def dim(self) -> int:
        """Width of the image embedding."""
        return self._dim

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixels)
        pooled = getattr(out, "pooler_output", None)
        if self.pooling == "pooler" and pooled is None:
            raise ValueError(
                f"pooling: 'pooler' asked, but {type(self.model).__name__} returns no pooler_output; "
                "use pooling='mean' or 'auto'"
            )
        if self.pooling != "mean" and pooled is not None:
            return pooled.flatten(1)
        hidden = out.last_hidden_state.float()
        return hidden.mean(dim=1) if hidden.ndim == 3 else hidden.flatten(2).mean(dim=2)
