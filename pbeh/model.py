"""The PBEH model: per-modality input maps, a :class:`~pbeh.prompts.PromptPool` and an
:class:`~pbeh.hasher.ExtensibleHasher`, saved and loaded as ``config.json`` + ``model.safetensors``.

Data flow for features ``f`` ``(B, D_modality)``::

    f --(optional: L2-normalise, times feature_norm)--> f'
    f' --map (Identity if D == dim, else a trainable Linear)--> x (B, dim)
    x --PromptPool--> context e (B, dim);  z = [x ; e] (B, 2 dim)
    z --that modality's head--> h (B, n_bits), L2-normalised;  codes = sign(h)

Scale (ARCHITECTURE.md point 6). With ``normalize_features=True`` (default) features are L2-normalised and
multiplied by ``feature_norm`` (default ``sqrt(dim)``: unit root-mean-square per element, the input scale that
PyTorch's default Linear initialisation of the heads expects), and the pool's prompts are drawn with
``init_std = feature_norm / sqrt(dim)`` so that they have the features' norm: neither swamps the other in the
attention. A Linear map is initialised with ``N(0, 1/dim)`` entries, which preserves the norm in expectation.
Measured on MIRFLICKR730 (ResNet-50 1024-d / MiniLM 384-d features, 32 bits, untrained model): 691 and 693
distinct codes out of 730, with 4 and 2 constant bits, at ``sqrt(dim)``; 2-10 distinct codes and 28-31
constant bits at unit norm. After a short training run, held-out mAP was 1-5 points higher at ``sqrt(dim)``
than at unit norm, and 14-25 points higher than with the reference's mix (unit-norm features, ``randn``
prompts of norm ``sqrt(dim)``: ``feature_norm=1.0, pool_kwargs={"init_std": 1.0}``). The reference on raw
features is ``normalize_features=False, pool_kwargs={"init_std": 1.0}``.

Freezing: ``extend(..., freeze_old=True)`` freezes the head path of the existing bits. The input side (maps,
attention, the newest prompt pool) keeps training, so codes of stored items can still drift through ``z``;
measure it with :meth:`CrossModalHashModel.prefix_drift`.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._validation import (
    check_batch_tensor,
    check_bool,
    check_choice,
    check_int,
    check_positive_int,
    check_positive_real,
)
from ._version import __version__
from .class_prior import ClassPrior
from .codes import Codes
from .hasher import ExtensibleHasher, _encode_in_batches, _prefix_drift
from .prompts import MODALITIES, PromptPool
from .serialization import (
    FormatError,
    json_field,
    load_safetensors,
    read_json,
    read_safetensors_header,
    replace_directory,
    resolve_directory,
    save_safetensors,
    staging_directory,
    write_json,
)

__all__ = ["CONFIG_NAME", "FORMAT_VERSION", "WEIGHTS_NAME", "CrossModalHashModel"]

_logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_KIND = "model"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}


class CrossModalHashModel(nn.Module):
    """Input maps + prompt pool + extensible hash heads: features to L2-normalised hash outputs and codes.

    Args:
        image_dim, text_dim: feature widths of the two modalities.
        n_bits: initial code length.
        dim: shared prompt width; ``None`` means ``max(image_dim, text_dim)``.
        hidden_dims: hidden widths of each hash head (pbeh: ``(512, 512)``, CPU-sized; the reference: ``(4096, 4096)``).
        normalize_features: L2-normalise features (and multiply by ``feature_norm``) before the input map (see
            the module docstring on scale).
        feature_norm: norm of the features after normalisation; ``None`` means ``sqrt(dim)``. Unless
            ``pool_kwargs`` sets ``init_std``, prompts are drawn at the same norm.
        pool_kwargs: options forwarded to :class:`~pbeh.prompts.PromptPool` (``sharing``, ``attention``,
            ``selection``, ``num_heads``, ``init_std``, ``seed``, ``task_seeds``); its ``seed`` defaults to
            ``seed``.
        seed: seeds the input maps, the heads and (by default) the pool.
        center_features: subtract per-modality feature means before normalising. The means are fitted once, from
            the raw features given to the first :meth:`add_task`, and then stay fixed (stored with the model), so
            codes stored for earlier tasks keep their meaning. Non-negative features (post-ReLU CNN pooling, bags of
            words, topic proportions) otherwise all point along one mean direction after L2 normalisation; measured
            on MIRFLICKR730-4 at 16 bits (one seed), centring raised the unified score from 0.511/0.504 to
            0.562/0.560 (chance 0.473).
        use_prompts: ``False`` gives the no-prompt ablation: the context half of ``z`` is zero, so the heads see
            only the features (pools are still created per task for bookkeeping, but nothing in them trains).
        branch_hidden_dims: hidden widths of the branch added by ``extend(freeze_old=True)``.

    Parameter groups for the optimiser: :meth:`head_parameters` (heads and attention, the reference's "hash
        net"),
    :meth:`projection_parameters`, :meth:`prompt_parameters` (one task's pool). Rebuild the optimiser after
    :meth:`add_task` and :meth:`extend`: both create parameters.

    Example:
        >>> model = CrossModalHashModel(24, 12, n_bits=8, hidden_dims=(32,), pool_kwargs={"num_heads": 4})
        >>> model.add_task(n_prompts=3)
        0
        >>> codes = model.encode(torch.randn(5, 12), "text")
        >>> codes.n_bits, len(codes)
        (8, 5)
        >>> model.anchor_codes(0).shape
        torch.Size([6, 8])
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        *,
        n_bits: int,
        dim: int | None = None,
        hidden_dims: Sequence[int] = (512, 512),
        normalize_features: bool = True,
        feature_norm: float | None = None,
        pool_kwargs: Mapping[str, Any] | None = None,
        seed: int = 2025,
        branch_hidden_dims: Sequence[int] = (256,),
        use_prompts: bool = True,
        center_features: bool = True,
    ) -> None:
        super().__init__()
        self.use_prompts = check_bool(use_prompts, "use_prompts")
        self.center_features = check_bool(center_features, "center_features")
        self.centered_on_task: int | None = None
        self.image_dim = check_positive_int(image_dim, "image_dim")
        self.text_dim = check_positive_int(text_dim, "text_dim")
        self.dim = max(self.image_dim, self.text_dim) if dim is None else check_positive_int(dim, "dim")
        self.normalize_features = check_bool(normalize_features, "normalize_features")
        if feature_norm is None:
            feature_norm = math.sqrt(self.dim)
        self.feature_norm = check_positive_real(feature_norm, "feature_norm", expected="a positive float or None")
        self.seed = check_int(seed, "seed")
        if pool_kwargs is None:
            pool_kwargs = {}
        if not isinstance(pool_kwargs, Mapping):
            raise TypeError(f"pool_kwargs: expected a mapping of PromptPool options, got {type(pool_kwargs).__name__}")
        if "dim" in pool_kwargs:
            raise ValueError("pool_kwargs: 'dim' is set by the model (its dim argument), remove it from pool_kwargs")
        pool_kwargs = {"seed": self.seed, **pool_kwargs}
        if "num_heads" not in pool_kwargs:
            # The most heads up to the reference's 8 that divide the prompt width (8 for CLIP's 512).
            pool_kwargs["num_heads"] = max(h for h in range(1, 9) if self.dim % h == 0)
        if normalize_features and "init_std" not in pool_kwargs:
            pool_kwargs["init_std"] = self.feature_norm / math.sqrt(self.dim)

        self.register_buffer("image_mean", torch.zeros(self.image_dim))
        self.register_buffer("text_mean", torch.zeros(self.text_dim))
        gen = torch.Generator().manual_seed(self.seed + 31_337)
        self.image_proj = self._make_map(self.image_dim, gen)
        self.text_proj = self._make_map(self.text_dim, gen)
        self.pool = PromptPool(self.dim, **pool_kwargs)
        self.hasher = ExtensibleHasher(
            2 * self.dim,
            n_bits,
            hidden_dims=hidden_dims,
            modalities=MODALITIES,
            seed=self.seed,
            branch_hidden_dims=branch_hidden_dims,
        )
        # Empty (inactive) until the trainer fits it; see pbeh.class_prior.
        self.class_prior = ClassPrior(self.image_dim, self.text_dim)

    def _make_map(self, width: int, gen: torch.Generator) -> nn.Module:
        if width == self.dim:
            return nn.Identity()
        lin = torch.nn.utils.skip_init(nn.Linear, width, self.dim)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(self.dim, width, generator=gen) / math.sqrt(self.dim))
            lin.bias.zero_()
        return lin

    # ------------------------------------------------------------------ introspection
    @property
    def n_bits(self) -> int:
        """The current code length."""
        return self.hasher.n_bits

    @property
    def width_history(self) -> list[int]:
        """Code length after creation and after each extension."""
        return list(self.hasher.width_history)

    @property
    def frozen_history(self) -> list[bool]:
        """For each extension, whether the old bits were frozen."""
        return list(self.hasher.frozen_history)

    @property
    def n_tasks(self) -> int:
        """Number of task pools added."""
        return self.pool.n_tasks

    @property
    def pool_sizes(self) -> list[int]:
        """Prompts per task (per modality)."""
        return self.pool.pool_sizes

    @property
    def device(self) -> torch.device:
        return self.hasher.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hasher.dtype

    def feature_dim(self, modality: str) -> int:
        """Input feature width of ``modality``."""
        return self.image_dim if check_choice(modality, "modality", MODALITIES) == "image" else self.text_dim

    def _map(self, modality: str) -> nn.Module:
        return self.image_proj if modality == "image" else self.text_proj

    # ------------------------------------------------------------------ parameter groups
    def head_parameters(self) -> list[nn.Parameter]:
        """Trainable hash-head parameters plus the attention (which the reference keeps in its hash net)."""
        attention = [p for p in self.pool.attention_parameters() if p.requires_grad] if self.use_prompts else []
        return self.hasher.head_parameters() + attention

    def attention_parameters(self) -> list[nn.Parameter]:
        """The pool's attention parameters alone (already part of :meth:`head_parameters`)."""
        return self.pool.attention_parameters()

    def projection_parameters(self) -> list[nn.Parameter]:
        """Parameters of the Linear input maps (empty when both widths equal ``dim``)."""
        return [p for p in [*self.image_proj.parameters(), *self.text_proj.parameters()] if p.requires_grad]

    def prompt_parameters(self, task: int) -> list[nn.Parameter]:
        """The prompt pool of ``task`` (only the newest is trainable; none when ``use_prompts`` is False)."""
        return self.pool.task_parameters(task) if self.use_prompts else []

    # ------------------------------------------------------------------ computing
    def _check_features(self, features: Any, modality: str) -> torch.Tensor:
        return check_batch_tensor(
            features,
            "features",
            width=self.feature_dim(modality),
            dtype=self.dtype,
            device=self.device,
            owner="model",
            context=f" for {modality} features",
        )

    def _as_input(self, features: Any, modality: str) -> torch.Tensor:
        """Numpy arrays or tensors, moved to the model's device and dtype, then checked."""
        if isinstance(features, np.ndarray):
            features = torch.from_numpy(np.ascontiguousarray(features))
        if isinstance(features, torch.Tensor):
            if not features.is_floating_point():
                raise TypeError(f"features: expected floating-point features, got dtype {features.dtype}")
            features = features.to(device=self.device, dtype=self.dtype)
        checked = self._check_features(features, modality)
        finite = torch.isfinite(checked).all(dim=1)
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten()
            raise ValueError(
                f"features: {len(bad)} row(s) of the {modality} features contain NaN or inf (first: row "
                f"{int(bad[0])}); codes need finite features"
            )
        return checked

    def project(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Map features ``(B, D_modality)`` into the prompt width: ``x`` ``(B, dim)``."""
        check_choice(modality, "modality", MODALITIES)
        features = self._check_features(features, modality)
        if self.center_features:
            features = features - (self.image_mean if modality == "image" else self.text_mean)
        if self.normalize_features:
            features = F.normalize(features, dim=1) * self.feature_norm
        return self._map(modality)(features)

    def forward(
        self, features: torch.Tensor, modality: str, *, return_z: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised hash outputs ``h`` ``(B, n_bits)``; with ``return_z`` also ``z = [x ; e]``."""
        z = self._z(features, modality)
        h = self.hasher(z, modality)
        return (h, z) if return_z else h

    def _z(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        x = self.project(features, modality)
        context = self.pool(x, modality) if self.use_prompts else torch.zeros_like(x)
        return torch.cat([x, context], dim=1)

    def hash_from_z(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """Head ``modality`` applied to a given ``z`` (for the cross-head distillation ``f_t(z_v)``)."""
        return self.hasher(z, modality)

    def encode(self, features: Any, modality: str, *, batch_size: int = 1024, role: str = "database") -> Codes:
        """Binary codes of features (tensor or numpy array) in eval mode under ``torch.inference_mode``.

        ``role``: ``"database"`` (codes to store: the heads' output alone) or ``"query"`` (codes to search with:
        once the trainer has fitted :attr:`class_prior`, the sign of the heads' normalised output plus the weighted
        prior direction of the features; see :mod:`pbeh.class_prior`). A stored code was encoded while its classes
        were the newest, when the heads knew them best; a query may belong to a class the heads last saw tasks ago.

        With ``attention="batch"`` (the reference quirk) codes depend on how the rows are batched; the default
        ``"sample"`` attention gives the same code for an item whatever ``batch_size``.
        """
        check_choice(modality, "modality", MODALITIES)
        check_choice(role, "role", ("database", "query"))
        batch_size = check_positive_int(batch_size, "batch_size")
        features = self._as_input(features, modality)

        def outputs(rows: slice) -> torch.Tensor:
            logits = self.hasher.logits(self._z(features[rows], modality), modality)
            return self.class_prior.combine(logits, features[rows], modality) if role == "query" else logits

        return _encode_in_batches(self, len(features), batch_size, outputs, self.n_bits)

    def prefix_drift(self, stored: Codes, features: Any, modality: str) -> float:
        """Fraction of the bits of ``stored`` (earlier codes of ``features``) that re-encoding would flip."""
        return _prefix_drift(stored, self.encode(features, modality), self.n_bits, len(features))

    def anchor_codes(self, task: int) -> torch.Tensor:
        """The reference's prompt-hash anchor of ``task``: ``(2 n_task, n_bits)``, continuous, with gradients.

        Per modality: ``a = pool.prompt_self_context(task, modality)``, ``z = [a ; a]``, ``h = head(z)``; the
            result
        stacks ``[h_image ; h_text]``. The trainer stores it (truncated to the code length at the end of
        ``task``) and L1-penalises its drift in later tasks.
        """
        out = []
        for m in MODALITIES:
            a = self.pool.prompt_self_context(task, m)
            out.append(self.hasher(torch.cat([a, a], dim=1), m))
        return torch.cat(out)

    # ------------------------------------------------------------------ growing
    def add_task(
        self,
        n_prompts: int | None = None,
        *,
        n_train: int | None = None,
        samples_per_prompt: int = 400,
        init: str = "normal",
        image_features: Any = None,
        text_features: Any = None,
    ) -> int:
        """Add the next task's prompt pool (earlier pools freeze); returns its index.

        Raw features (tensor or numpy) are normalised and projected before ``init="kmeans"`` clusters them.
        See :meth:`pbeh.prompts.PromptPool.add_task`.
        """
        inputs = {}
        for modality, values in (("image", image_features), ("text", text_features)):
            if values is None:
                continue
            values = self._as_input(values, modality)
            if len(values) == 0:
                raise ValueError(f"{modality}_features: expected at least one feature row, got an empty array")
            inputs[modality] = values
        if self.center_features and self.centered_on_task is None and len(inputs) == 2:
            # Fitted once, on the first task given both modalities, then fixed: stored codes keep their meaning.
            with torch.no_grad():
                self.image_mean.copy_(inputs["image"].mean(dim=0))
                self.text_mean.copy_(inputs["text"].mean(dim=0))
            self.centered_on_task = self.pool.n_tasks
        projected = {}
        for modality, values in inputs.items():
            with torch.no_grad():
                projected[modality] = self.project(values, modality)
        return self.pool.add_task(
            n_prompts,
            n_train=n_train,
            samples_per_prompt=samples_per_prompt,
            init=init,
            image_features=projected.get("image"),
            text_features=projected.get("text"),
        )

    def extend(self, n_new_bits: int, *, freeze_old: bool = False) -> None:
        """Widen the code by ``n_new_bits`` (see :meth:`pbeh.hasher.ExtensibleHasher.extend`)."""
        self.hasher.extend(n_new_bits, freeze_old=freeze_old)

    # ------------------------------------------------------------------ configuration and files
    def get_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this model's shapes, JSON-serialisable (see :meth:`from_config`)."""
        dtype_name = str(self.dtype).removeprefix("torch.")
        return {
            "pbeh_kind": _KIND,
            "format_version": FORMAT_VERSION,
            "pbeh_version": __version__,
            "image_dim": self.image_dim,
            "text_dim": self.text_dim,
            "dim": self.dim,
            "n_bits": self.n_bits,
            "hidden_dims": list(self.hasher.hidden_dims),
            "branch_hidden_dims": list(self.hasher.branch_hidden_dims),
            "normalize_features": self.normalize_features,
            "feature_norm": self.feature_norm,
            "seed": self.seed,
            "use_prompts": self.use_prompts,
            "center_features": self.center_features,
            "centered_on_task": self.centered_on_task,
            "pool": {k: v for k, v in self.pool.get_config().items() if k != "dim"},
            "pool_sizes": self.pool.pool_sizes,
            "pool_inits": list(self.pool.task_inits),
            "width_history": self.width_history,
            "frozen_history": self.frozen_history,
            "dtype": dtype_name,
            "class_prior": self.class_prior.get_config(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CrossModalHashModel:
        """A model with the saved widths, task pools and frozen flags (fresh weights), ready for loading."""
        try:
            widths = [int(w) for w in config["width_history"]]
            frozen = [bool(f) for f in config["frozen_history"]]
            model = cls(
                config["image_dim"],
                config["text_dim"],
                n_bits=widths[0],
                dim=config["dim"],
                hidden_dims=config["hidden_dims"],
                normalize_features=config["normalize_features"],
                feature_norm=config["feature_norm"],
                pool_kwargs=config["pool"],
                seed=config["seed"],
                branch_hidden_dims=config["branch_hidden_dims"],
                use_prompts=bool(config.get("use_prompts", True)),
                center_features=bool(config.get("center_features", False)),
            )
            centered = config.get("centered_on_task")
            model.centered_on_task = None if centered is None else int(centered)
            if len(frozen) != len(widths) - 1:
                raise ValueError(f"width_history {widths} needs {len(widths) - 1} frozen flags, got {frozen}")
            for a, b, f in zip(widths, widths[1:], frozen, strict=False):
                model.hasher.extend(b - a, freeze_old=f)
            if int(config["n_bits"]) != model.n_bits:
                raise ValueError(f"n_bits {config['n_bits']} disagrees with width_history {widths}")
            model.pool._rebuild_tasks([int(n) for n in config["pool_sizes"]], config.get("pool_inits"))
            prior = config.get("class_prior")  # absent in models saved before the class prior
            if prior is not None:
                model.class_prior.resize(int(prior["n_classes"]), int(prior["n_bits"]), prior["weight"])
            dtype = _DTYPES.get(config.get("dtype", "float32"))
            if dtype is None:
                raise ValueError(f"dtype: expected one of {list(_DTYPES)}, got {config.get('dtype')!r}")
        except KeyError as exc:
            raise FormatError(f"model config: missing key {exc.args[0]!r}") from exc
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise FormatError(f"model config: invalid: {exc}") from exc
        return model.to(dtype=dtype)

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``model.safetensors`` and ``config.json`` into ``directory`` as one step.

        Both files are written into a staging directory beside ``directory`` which then replaces it (see
        :func:`pbeh.serialization.replace_directory`), so a crash at any point leaves the previous model or the new
        one, never new weights beside an old config. Other files already in ``directory`` are carried over.

        Example:
            >>> import tempfile
            >>> m = CrossModalHashModel(8, 8, n_bits=4, hidden_dims=(8,), pool_kwargs={"num_heads": 2})
            >>> _ = m.add_task(n_prompts=2)
            >>> m.extend(2)
            >>> d = tempfile.mkdtemp()
            >>> m.save_pretrained(d)
            >>> x = torch.randn(3, 8)
            >>> CrossModalHashModel.from_pretrained(d).encode(x, "image") == m.encode(x, "image")
            True
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise NotADirectoryError(f"directory: expected a directory path, got the existing file {str(directory)!r}")
        arrays = {}
        for name, tensor in self.state_dict().items():
            if tensor.dtype not in _DTYPES.values():
                raise TypeError(
                    f"save_pretrained: tensor {name!r} has dtype {tensor.dtype}; expected one of {list(_DTYPES)} "
                    "(convert the model first, e.g. model.float())"
                )
            arrays[name] = tensor.detach().cpu().contiguous().numpy()
        meta = {"n_bits": self.n_bits, "pool_sizes": self.pool.pool_sizes}
        directory.parent.mkdir(parents=True, exist_ok=True)
        staged = staging_directory(directory)
        try:
            save_safetensors(staged / WEIGHTS_NAME, arrays, kind=_KIND, format_version=FORMAT_VERSION, metadata=meta)
            write_json(staged / CONFIG_NAME, self.get_config())
            if directory.is_dir():
                for entry in directory.iterdir():
                    if entry.name in (WEIGHTS_NAME, CONFIG_NAME):
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.copytree(entry, staged / entry.name, symlinks=True)
                    else:
                        shutil.copy2(entry, staged / entry.name, follow_symlinks=False)
            replace_directory(staged, directory)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        _logger.info("saved model (%d bits, %d tasks) to %s", self.n_bits, self.n_tasks, directory)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
    ) -> CrossModalHashModel:
        """Load a model written by :meth:`save_pretrained` (returned in eval mode, on ``map_location``).

        The widths and task pools are rebuilt from ``config.json`` before the weights are loaded, so a model
        saved after extensions reloads with the same shapes and codes. Nothing is unpickled.

        Raises:
            FormatError: the directory, config or weights are missing; another kind or format version; the
                weights do not match the config's shapes.
        """
        directory = resolve_directory(directory)
        if not directory.is_dir():
            raise FormatError(f"directory: no saved model at {str(directory)!r} (not a directory)")
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        config = read_json(config_path, what="model config")
        if not isinstance(config, dict):
            raise FormatError(f"{str(config_path)!r}: expected a JSON object, got {type(config).__name__}")
        if config.get("pbeh_kind") != _KIND:
            raise FormatError(f"{str(config_path)!r} describes a pbeh {config.get('pbeh_kind')!r}, expected 'model'")
        if config.get("format_version") != FORMAT_VERSION:
            raise FormatError(
                f"{str(config_path)!r} has format_version {config.get('format_version')!r}; "
                f"this pbeh {__version__} reads format_version {FORMAT_VERSION}. "
                "Re-save it with a matching pbeh version."
            )
        # The weights file's checked header bounds what the config may ask to allocate.
        header = read_safetensors_header(weights_path, kind=_KIND)
        weights_bytes = sum(end - begin for *_, begin, end in header.tensors.values())
        _check_config_size(config, weights_bytes, "model config")
        model = cls.from_config(config)
        arrays, _ = load_safetensors(weights_path, kind=_KIND, format_version=FORMAT_VERSION)
        expected = model.state_dict()
        if "class_prior" not in config:  # saved before the class prior: its empty table is all there is to load
            arrays = {**arrays, **{k: v.numpy() for k, v in expected.items() if k.startswith("class_prior.")}}
        elif "class_prior.codes" in arrays and "class_prior.image_codes" not in arrays:
            # saved before the per-modality targets: one table of centres served the queries of both modalities
            shared = arrays.pop("class_prior.codes")
            arrays = {**arrays, "class_prior.image_codes": shared, "class_prior.text_codes": shared}
        missing = sorted(set(expected) - set(arrays))
        unexpected = sorted(set(arrays) - set(expected))
        if missing or unexpected:
            raise FormatError(
                f"{str(weights_path)!r} does not match {CONFIG_NAME}: missing tensors {missing[:5]}, "
                f"unexpected tensors {unexpected[:5]} (the two files do not belong together)"
            )
        for name, tensor in expected.items():
            if tuple(arrays[name].shape) != tuple(tensor.shape):
                raise FormatError(
                    f"{str(weights_path)!r}: tensor {name!r} has shape {tuple(arrays[name].shape)} but "
                    f"{CONFIG_NAME} describes {tuple(tensor.shape)} (widths {config['width_history']}, pools "
                    f"{config['pool_sizes']}); the two files do not belong together"
                )
        for name, tensor in expected.items():
            if arrays[name].dtype != tensor.detach().cpu().numpy().dtype:
                raise FormatError(
                    f"{str(weights_path)!r}: tensor {name!r} has dtype {arrays[name].dtype} but {CONFIG_NAME} "
                    f"describes a {config.get('dtype', 'float32')} model"
                )
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)
        return model.to(map_location).eval()


_MAX_LIST = 4096  # no width or pool list pbeh writes is longer


def _int_list(config: Mapping[str, Any], key: str, source: str, *, minimum: int, allow_empty: bool) -> list[int]:
    values = json_field(config, key, list, source=source)
    if len(values) > _MAX_LIST or (not values and not allow_empty):
        raise FormatError(f"{source}: {key!r} must be a list of 1 to {_MAX_LIST} ints, got {len(values)} entries")
    for v in values:
        if type(v) is not int or v < minimum:
            raise FormatError(f"{source}: {key!r} must hold ints >= {minimum}, got {str(v)[:40]!r}")
    return values


def _check_config_size(config: Mapping[str, Any], weights_bytes: int, source: str) -> None:
    """Check the config's widths and counts, and that the parameters they imply fit in the weights file.

    A lower bound on the parameter count (prompt pools, the hash heads' first and last layers, the feature maps and
    means) is computed from the config alone; a config that would allocate more than the weights file holds is
    refused before the model is built, so a damaged or hostile ``config.json`` cannot turn into a huge allocation.
    """
    dims = {k: json_field(config, k, int, source=source, minimum=1) for k in ("image_dim", "text_dim", "dim", "n_bits")}
    hidden = _int_list(config, "hidden_dims", source, minimum=1, allow_empty=True)
    branch = _int_list(config, "branch_hidden_dims", source, minimum=1, allow_empty=True)
    widths = _int_list(config, "width_history", source, minimum=1, allow_empty=False)
    pools = _int_list(config, "pool_sizes", source, minimum=0, allow_empty=True)
    json_field(config, "pool", dict, source=source)
    inits = json_field(config, "pool_inits", (list, type(None)), source=source, default=None)
    if inits is not None and (len(inits) != len(pools) or not all(isinstance(i, str) for i in inits)):
        raise FormatError(f"{source}: 'pool_inits' must list one string per pool ({len(pools)}), got {inits!r:.80}")
    dim = dims["dim"]
    # smallest dtype pbeh saves: float16
    bound = 2 * (dims["image_dim"] + dims["text_dim"])
    prior = json_field(config, "class_prior", (dict, type(None)), source=source, default=None)
    if prior is not None:  # means, scales and centres of every class
        sizes = {
            k: json_field(prior, k, int, source=f"{source} 'class_prior'", minimum=0) for k in ("n_classes", "n_bits")
        }
        json_field(prior, "weight", (int, float, dict), source=f"{source} 'class_prior'")
        bound += sizes["n_classes"] * (2 * (dims["image_dim"] + dims["text_dim"]) + sizes["n_bits"])
    bound += sum(pools) * dim
    for d in (dims["image_dim"], dims["text_dim"]):
        if d != dim:
            bound += d * dim
    layers = [2 * dim, *hidden]
    bound += 2 * sum(a * b for a, b in itertools.pairwise(layers))
    bound += 2 * layers[-1] * widths[0]
    if widths[-1] > widths[0]:  # every added bit is one output row per modality, at least min-width wide
        bound += 2 * min(layers[-1], *(branch[-1:] or [layers[-1]])) * (widths[-1] - widths[0])
    if bound * 2 > weights_bytes:
        raise FormatError(
            f"{source}: the config describes at least {bound} parameters ({bound * 2} bytes in float16) but the "
            f"weights file holds {weights_bytes} bytes; the config is damaged or does not belong to these weights "
            f"(image_dim {dims['image_dim']}, text_dim {dims['text_dim']}, dim {dim}, hidden_dims {hidden[:4]}, "
            f"pool_sizes {pools[:4]})"
        )
