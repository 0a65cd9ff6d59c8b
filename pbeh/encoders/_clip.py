"""CLIP: images and texts into the model's shared (projected) embedding space, and reading the embedding tensor
from a ``get_*_features`` result of any transformers version."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .._validation import check_positive_int
from ._image import _ImageEncoding
from ._loading import _encoder_name, _load_model
from ._text import _TextEncoding

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _embedding_tensor(out: Any, method: str) -> torch.Tensor:
    """The embedding tensor from a ``get_*_features`` result: a tensor (transformers 4.x) or a ModelOutput (5.x)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"{method} returned {type(out).__name__} without a 'pooler_output' tensor; cannot read embeddings")


class CLIPEncoder(_ImageEncoding, _TextEncoding):
    """Images and texts into CLIP's shared embedding space (the projected embeddings), frozen.

    Args:
        model: a ``transformers.CLIPModel``.
        tokenizer: its tokenizer (``CLIPTokenizer`` or any tokenizer with the same vocabulary).
        image_processor: its image processor (``CLIPImageProcessor``).
        name: what :class:`FeatureCache` records; default ``model.config.name_or_path`` or the class name.
        device: move the model there (default: leave it where it is).
        max_length: longest token sequence (default the text model's ``max_position_embeddings``, 77 for CLIP).

    Example (``from_pretrained`` needs the checkpoint locally or the hub):
        >>> enc = CLIPEncoder.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
        >>> enc.encode_texts(["a dog", "a cat"], show_progress_bar=False).shape  # doctest: +SKIP
        (2, 512)
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        max_length: int | None = None,
    ) -> None:
        self._setup_model(model, device)
        for attr in ("get_image_features", "get_text_features"):
            if not hasattr(model, attr):
                raise TypeError(f"model: expected a transformers CLIPModel (with {attr}), got {type(model).__name__}")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer: expected a transformers tokenizer, got {type(tokenizer).__name__}")
        if not callable(image_processor):
            raise TypeError(
                f"image_processor: expected a transformers image processor, got {type(image_processor).__name__}"
            )
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        config = model.config
        self._dim = int(config.projection_dim)
        if max_length is None:
            max_length = int(config.text_config.max_position_embeddings)
        self.max_length = check_positive_int(max_length, "max_length")
        self._name = _encoder_name(name, model)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        local_files_only: bool = False,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        name: str | None = None,
    ) -> CLIPEncoder:
        """Load a CLIPModel checkpoint, its tokenizer and its image processor by hub name or local path.

        Args:
            name_or_path: hub name (``"openai/clip-vit-base-patch32"``) or a folder written by ``save_pretrained``.
            local_files_only: never touch the network.
            device: device to put the model on (default: where transformers loads it, the CPU).
            dtype: ``"float32"``, ``"float16"``, ``"bfloat16"``, ``"float64"`` or a ``torch.dtype``
                (default: the checkpoint's float32). Outputs are float32 whatever the model's dtype.
            name: recorded name (default ``str(name_or_path)``).
        """
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        model, src = _load_model(
            CLIPModel, name_or_path, "name_or_path", local_files_only=local_files_only, dtype=dtype
        )
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local_files_only)
        processor = AutoImageProcessor.from_pretrained(src, local_files_only=local_files_only)
        return cls(model, tokenizer, processor, name=name if name is not None else src, device=device)

    @property
    def dim(self) -> int:
        """Width of the shared (projected) embedding space."""
        return self._dim

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return _embedding_tensor(self.model.get_image_features(pixel_values=pixels), "get_image_features")

    def _embed_tokens(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        result = self.model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return _embedding_tensor(result, "get_text_features")
