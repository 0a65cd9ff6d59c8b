"""The PromptHash model: input maps, affinity prompts, gated fusion, shared residual MLP and multi-length heads,
saved and loaded as ``config.json`` + ``model.safetensors``.

Two modes, fixed at construction (they train and encode differently):

``"default"`` (pbeh's, honest at query time). An image is encoded from the image alone, a text from the text alone,
with no labels, independently of the batch::

    x  = map_m(normalise(features - mean_m))                        (B, dim)
    p  = prompt(label-free caption predicted from x)                the affinity prompt (see prompts.py)
    x', p' = fusion(x, p, batch_mode="sample")
    f  = residual_mlp(0.5 x + 0.5 x');   h_K = tanh(head_K(f));   code_K = sign(h_K)

``"parity"`` (the released encoding, for comparison only; label every number "parity"). Every item is encoded from
(image, **paired text**, **label caption**) together, with the fusion's transformer attending **across the batch**::

    (a_i, a_t) = fusion(x_i, x_t, batch_mode="batch");  (b_i, b_p) = fusion(a_i, p_labels, batch_mode="batch")
    image: f = mlp(0.5 x_i + 0.5 b_i);   text: f = mlp(0.5 x_t + 0.5 a_t);   prompt: f = mlp(0.5 p + 0.5 b_p)

so a query's code uses its paired other modality, its ground-truth labels, and the other items of its batch.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..._validation import check_bool, check_choice, check_int, check_positive_int, check_real
from ..._version import __version__
from ...codes import Codes
from ...serialization import FormatError, load_safetensors, read_json, save_safetensors, write_json
from .fusion import GatedFusion
from .heads import HashHeads, ResidualMLP, check_lengths
from .prompts import MODALITIES, AffinityPrompt

__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "MODES", "WEIGHTS_NAME", "PromptHash"]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_KIND = "prompthash"
MODES = ("default", "parity")


class PromptHash(nn.Module):
    """PromptHash on cached features: several code lengths from one model.

    Args:
        image_dim, text_dim: feature widths.
        class_embeddings: ``(n_classes, E)`` class-caption embeddings from a frozen text encoder
            (:func:`pbeh.models.prompthash.prompts.caption_embeddings`); stored with the model.
        n_bits: the trained code lengths (an int or a sequence, e.g. ``(16, 32, 64)``).
        mode: ``"default"`` (one modality, no labels, batch independent) or ``"parity"`` (the released paired,
            label-caption, cross-batch encoding; see the module docstring).
        dim: fusion width (the reference: 512, the CLIP width; each input is mapped to it).
        hidden_dim: hidden width of the residual MLP (default ``4 dim``, as released).
        n_mlp_blocks: residual MLP blocks (2).
        dropout: residual MLP dropout (0.5).
        aux_bits: auxiliary code length (256; 0 switches the auxiliary code and the decoders off).
        nested: one head whose prefixes are the shorter codes (see heads.py).
        n_heads, d_state, d_conv, expand, fusion_dropout: the fusion's transformer heads and Mamba sizes.
        center_features: subtract per-modality feature means (fitted by the first :func:`fit`, then fixed).
        seed: seeds every initial weight (the global RNG is left untouched).

    Example:
        >>> import numpy as np
        >>> model = PromptHash(6, 4, np.eye(3, 5, dtype=np.float32), n_bits=(4, 8), dim=8, n_heads=2, aux_bits=0)
        >>> codes = model.encode(np.random.rand(5, 6).astype(np.float32), "image", n_bits=4)
        >>> codes.n_bits, len(codes)
        (4, 5)
    """

    image_mean: torch.Tensor
    text_mean: torch.Tensor

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        class_embeddings: Any,
        *,
        n_bits: int | Sequence[int] = (16, 32, 64),
        mode: str = "default",
        dim: int = 128,
        hidden_dim: int | None = None,
        n_mlp_blocks: int = 2,
        dropout: float = 0.5,
        aux_bits: int = 256,
        nested: bool = False,
        n_heads: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        fusion_dropout: float = 0.1,
        center_features: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.image_dim = check_positive_int(image_dim, "image_dim")
        self.text_dim = check_positive_int(text_dim, "text_dim")
        self.lengths = check_lengths(n_bits)
        self.mode = check_choice(mode, "mode", MODES)
        self.dim = check_positive_int(dim, "dim")
        self.hidden_dim = 4 * self.dim if hidden_dim is None else check_positive_int(hidden_dim, "hidden_dim")
        self.center_features = check_bool(center_features, "center_features")
        self.centered = False
        self.seed = check_int(seed, "seed")
        self._options: dict[str, Any] = {
            "n_mlp_blocks": check_int(n_mlp_blocks, "n_mlp_blocks", minimum=0),
            "dropout": check_real(dropout, "dropout"),
            "aux_bits": check_int(aux_bits, "aux_bits", minimum=0),
            "nested": check_bool(nested, "nested"),
            "n_heads": check_positive_int(n_heads, "n_heads"),
            "d_state": check_positive_int(d_state, "d_state"),
            "d_conv": check_positive_int(d_conv, "d_conv"),
            "expand": check_positive_int(expand, "expand"),
            "fusion_dropout": check_real(fusion_dropout, "fusion_dropout"),
        }
        o = self._options
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.register_buffer("image_mean", torch.zeros(self.image_dim))
            self.register_buffer("text_mean", torch.zeros(self.text_dim))
            self.image_map = nn.Linear(self.image_dim, self.dim)
            self.text_map = nn.Linear(self.text_dim, self.dim)
            self.prompt = AffinityPrompt(class_embeddings, dim=self.dim)
            self.fusion = GatedFusion(
                self.dim,
                n_heads=o["n_heads"],
                d_state=o["d_state"],
                d_conv=o["d_conv"],
                expand=o["expand"],
                dropout=o["fusion_dropout"],
            )
            self.mlp = ResidualMLP(
                self.dim, hidden_dim=self.hidden_dim, n_blocks=o["n_mlp_blocks"], dropout=o["dropout"]
            )
            self.heads = HashHeads(self.dim, lengths=self.lengths, nested=o["nested"], aux_bits=o["aux_bits"])

    # ------------------------------------------------------------------ introspection
    @property
    def nested(self) -> bool:
        return self.heads.nested

    @property
    def aux_bits(self) -> int:
        return self.heads.aux_bits

    @property
    def n_classes(self) -> int:
        return self.prompt.n_classes

    @property
    def device(self) -> torch.device:
        return self.image_map.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.image_map.weight.dtype

    def fusion_parameters(self) -> list[nn.Parameter]:
        """The fusion's parameters (trained at a lower learning rate, as released)."""
        return list(self.fusion.parameters())

    def other_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the fusion."""
        fusion = {id(p) for p in self.fusion.parameters()}
        return [p for p in self.parameters() if id(p) not in fusion]

    # ------------------------------------------------------------------ inputs
    def as_features(self, features: Any, modality: str, name: str = "features") -> torch.Tensor:
        """Numpy arrays or tensors of shape ``(B, width of modality)``, on the model's device and dtype."""
        modality = check_choice(modality, "modality", MODALITIES)
        width = self.image_dim if modality == "image" else self.text_dim
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(np.ascontiguousarray(features))
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor or numpy array (batch, {width}), got {type(features).__name__}")
        if not features.is_floating_point():
            raise TypeError(f"{name}: expected floating-point {modality} features, got dtype {features.dtype}")
        if features.ndim != 2 or features.shape[1] != width:
            raise ValueError(
                f"{name}: expected shape (batch, {width}) for {modality} features, got {tuple(features.shape)}"
            )
        if not torch.isfinite(features).all():
            raise ValueError(f"{name}: expected finite {modality} features, found NaN or inf")
        return features.to(device=self.device, dtype=self.dtype)

    def as_labels(self, labels: Any, n_rows: int) -> torch.Tensor:
        """Multi-hot labels ``(n_rows, n_classes)`` as a float tensor on the model's device."""
        if isinstance(labels, np.ndarray):
            labels = torch.from_numpy(np.ascontiguousarray(labels))
        if not isinstance(labels, torch.Tensor):
            raise TypeError(
                f"labels: expected a multi-hot array (batch, {self.n_classes}), got {type(labels).__name__}"
            )
        if labels.shape != (n_rows, self.n_classes):
            raise ValueError(f"labels: expected shape ({n_rows}, {self.n_classes}), got {tuple(labels.shape)}")
        return labels.to(device=self.device, dtype=self.dtype)

    def fit_centering(self, image: torch.Tensor, text: torch.Tensor) -> None:
        """Fix the per-modality feature means (once; later calls do nothing)."""
        if not self.center_features or self.centered:
            return
        with torch.no_grad():
            self.image_mean.copy_(image.mean(dim=0))
            self.text_mean.copy_(text.mean(dim=0))
        self.centered = True

    def project(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """``map_m(sqrt(D) * normalise(features - mean))``: ``(B, D_m)`` to ``(B, dim)``."""
        mean, layer = (self.image_mean, self.image_map) if modality == "image" else (self.text_mean, self.text_map)
        if self.center_features:
            features = features - mean
        return layer(F.normalize(features, dim=1) * math.sqrt(features.shape[1]))

    def prompt_from_caption(self, caption: torch.Tensor) -> torch.Tensor:
        return self.prompt(caption * math.sqrt(self.prompt.embedding_dim))

    # ------------------------------------------------------------------ forward passes
    def forward_single(self, features: torch.Tensor, modality: str) -> dict[str, Any]:
        """Default mode: one modality, no labels, per sample. Returns ``feature`` (MLP output), ``hashes``
        (``{K: tanh outputs}``, plus ``"aux"``), ``route_logits``."""
        x = self.project(features, modality)
        caption, logits = self.prompt.caption_from_features(x, modality)
        fused, _ = self.fusion(x, self.prompt_from_caption(caption), batch_mode="sample")
        feature = self.mlp(0.5 * x + 0.5 * fused)
        return {"feature": feature, "hashes": self.heads(feature), "route_logits": logits}

    def label_prompt_feature(self, labels: torch.Tensor) -> torch.Tensor:
        """MLP features of the label-caption prompts (training targets of the local alignment in the default mode)."""
        return self.mlp(self.prompt_from_caption(self.prompt.caption_from_labels(labels)))

    def forward_paired(self, image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """Parity mode: the released forward over (image, paired text, label caption), attention across the batch.
        Returns ``{"image" | "text" | "prompt": {"feature", "hashes"}}``."""
        x_i, x_t = self.project(image, "image"), self.project(text, "text")
        p = self.prompt_from_caption(self.prompt.caption_from_labels(labels))
        a_i, a_t = self.fusion(x_i, x_t, batch_mode="batch")
        b_i, b_p = self.fusion(a_i, p, batch_mode="batch")
        out = {}
        for name, base, fused in (("image", x_i, b_i), ("text", x_t, a_t), ("prompt", p, b_p)):
            feature = self.mlp(0.5 * base + 0.5 * fused)
            out[name] = {"feature": feature, "hashes": self.heads(feature)}
        return out

    # ------------------------------------------------------------------ encoding
    def _signs_to_codes(self, parts: list[torch.Tensor]) -> Codes:
        return Codes.from_signs(torch.cat(parts).float().cpu().numpy())

    def encode(self, features: Any, modality: str, *, n_bits: int | None = None, batch_size: int = 1024) -> Codes:
        """Codes of one modality's features, from those features alone (default mode; eval, inference mode).

        Args:
            features: ``(n, D_modality)`` tensor or numpy array.
            modality: ``"image"`` or ``"text"``.
            n_bits: a trained length (default: the longest).
            batch_size: rows per forward pass; codes do not depend on it.

        Raises:
            ValueError: a parity-mode model (its codes need the paired modality and labels: :meth:`encode_paired`).
        """
        modality = check_choice(modality, "modality", MODALITIES)
        if self.mode != "default":
            raise ValueError(
                f"mode: encode needs a 'default'-mode model; this one is {self.mode!r}, whose codes need the paired "
                "modality and the labels: use encode_paired (and label its numbers 'parity')"
            )
        n_bits = self.heads.check_length(n_bits)
        batch_size = check_positive_int(batch_size, "batch_size")
        features = self.as_features(features, modality)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                parts = []
                for start in range(0, len(features), batch_size):
                    x = self.project(features[start : start + batch_size], modality)
                    caption, _ = self.prompt.caption_from_features(x, modality)
                    fused, _ = self.fusion(x, self.prompt_from_caption(caption), batch_mode="sample")
                    parts.append(self.heads.logits(self.mlp(0.5 * x + 0.5 * fused), n_bits))
        finally:
            self.train(was_training)
        return self._signs_to_codes(parts) if parts else Codes.empty(n_bits)

    def encode_paired(
        self, image: Any, text: Any, labels: Any, *, n_bits: int | None = None, batch_size: int = 128
    ) -> tuple[Codes, Codes]:
        """PARITY ONLY: (image codes, text codes) of paired items from image, text and labels together, in
        batches of ``batch_size`` whose items attend to each other (the released test-time encoding, batch 128).

        Raises:
            ValueError: a default-mode model, or mismatched rows.
        """
        if self.mode != "parity":
            raise ValueError(f"mode: encode_paired needs a 'parity'-mode model, this one is {self.mode!r}; use encode")
        n_bits = self.heads.check_length(n_bits)
        batch_size = check_positive_int(batch_size, "batch_size")
        image = self.as_features(image, "image", "image")
        text = self.as_features(text, "text", "text")
        if len(text) != len(image):
            raise ValueError(f"image, text: expected the same number of rows, got {len(image)} and {len(text)}")
        labels = self.as_labels(labels, len(image))
        was_training = self.training
        self.eval()
        img_parts, txt_parts = [], []
        try:
            with torch.inference_mode():
                for start in range(0, len(image), batch_size):
                    rows = slice(start, start + batch_size)
                    out = self.forward_paired(image[rows], text[rows], labels[rows])
                    img_parts.append(self.heads.logits(out["image"]["feature"], n_bits))
                    txt_parts.append(self.heads.logits(out["text"]["feature"], n_bits))
        finally:
            self.train(was_training)
        if not img_parts:
            return Codes.empty(n_bits), Codes.empty(n_bits)
        return self._signs_to_codes(img_parts), self._signs_to_codes(txt_parts)

    # ------------------------------------------------------------------ configuration and files
    def get_config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model's shapes (the class embeddings travel with the weights)."""
        return {
            "pbeh_kind": _KIND,
            "format_version": FORMAT_VERSION,
            "pbeh_version": __version__,
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "n_classes": self.prompt.n_classes,
            "embedding_dim": self.prompt.embedding_dim,
            "n_bits": list(self.lengths),
            "mode": self.mode,
            "dim": self.dim,
            "hidden_dim": self.hidden_dim,
            "center_features": self.center_features,
            "centered": self.centered,
            "seed": self.seed,
            **self._options,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PromptHash:
        """A model with the config's shapes and placeholder class embeddings (load weights next)."""
        try:
            placeholder = np.zeros((int(config["n_classes"]), int(config["embedding_dim"])), dtype=np.float32)
            model = cls(
                config["image_dim"],
                config["text_dim"],
                placeholder,
                n_bits=config["n_bits"],
                mode=config["mode"],
                dim=config["dim"],
                hidden_dim=config["hidden_dim"],
                n_mlp_blocks=config["n_mlp_blocks"],
                dropout=config["dropout"],
                aux_bits=config["aux_bits"],
                nested=config["nested"],
                n_heads=config["n_heads"],
                d_state=config["d_state"],
                d_conv=config["d_conv"],
                expand=config["expand"],
                fusion_dropout=config["fusion_dropout"],
                center_features=config["center_features"],
                seed=config["seed"],
            )
            model.centered = bool(config["centered"])
        except KeyError as exc:
            raise FormatError(f"prompthash config: missing key {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise FormatError(f"prompthash config: invalid: {exc}") from exc
        return model

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``model.safetensors`` (first) and ``config.json`` (last), each atomically."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"directory: expected a directory path, got the existing file {str(directory)!r}")
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: v.detach().cpu().float().contiguous().numpy() for k, v in self.state_dict().items()}
        save_safetensors(
            directory / WEIGHTS_NAME, arrays, kind=_KIND, format_version=FORMAT_VERSION, metadata={"mode": self.mode}
        )
        write_json(directory / CONFIG_NAME, self.get_config())
        _logger.info("saved PromptHash (%s, lengths %s) to %s", self.mode, list(self.lengths), directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
    ) -> PromptHash:
        """Load a model written by :meth:`save_pretrained` (eval mode). Nothing is unpickled.

        Raises:
            FormatError: missing or damaged files, another kind or format version, weights that do not match the
                config.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise FormatError(f"directory: no saved PromptHash at {str(directory)!r} (not a directory)")
        config_path = directory / CONFIG_NAME
        config = read_json(config_path, what="PromptHash config")
        if not isinstance(config, dict):
            raise FormatError(f"{str(config_path)!r}: expected a JSON object, got {type(config).__name__}")
        if config.get("pbeh_kind") != _KIND:
            raise FormatError(f"{str(config_path)!r} describes a pbeh {config.get('pbeh_kind')!r}, expected {_KIND!r}")
        if config.get("format_version") != FORMAT_VERSION:
            raise FormatError(
                f"{str(config_path)!r} has format_version {config.get('format_version')!r}; this pbeh reads "
                f"{FORMAT_VERSION}"
            )
        model = cls.from_config(config)
        arrays, _ = load_safetensors(directory / WEIGHTS_NAME, kind=_KIND, format_version=FORMAT_VERSION)
        expected = model.state_dict()
        if set(arrays) != set(expected):
            raise FormatError(
                f"{str(directory / WEIGHTS_NAME)!r} does not match {CONFIG_NAME}: missing "
                f"{sorted(set(expected) - set(arrays))[:5]}, unexpected {sorted(set(arrays) - set(expected))[:5]}"
            )
        for name, tensor in expected.items():
            if tuple(arrays[name].shape) != tuple(tensor.shape):
                raise FormatError(
                    f"{str(directory / WEIGHTS_NAME)!r}: tensor {name!r} has shape {tuple(arrays[name].shape)}, "
                    f"{CONFIG_NAME} describes {tuple(tensor.shape)}"
                )
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)
        return model.to(map_location).eval()
