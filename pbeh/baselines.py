"""The methods pbeh is compared with, as ready-made trainer configurations.

Each method is the same :class:`~pbeh.trainer.ContinualTrainer` with different parts switched on or off, so a
comparison isolates what each part is worth:

========================  ==================================================================================
``"pbeh"``                pbeh's defaults: per-sample prompt attention over k-means prompts searched in every
                          task's pool, features and prompts on one scale, cosine label similarity, the
                          stored-code term, epoch selection on a validation split, mode-centre extension rule
                          (old bits keep training on extension, as in the reference; see
                          ``TrainerConfig.freeze_old_bits``).
``"pbeh-no-replay"``      pbeh without class-prototype replay (``TrainerConfig.prototype_replay=0``).
``"pbeh-no-stored"``      pbeh without the stored-code term (the ablation of :func:`pbeh.losses.stored_code_loss`).
``"pbeh-no-centers"``     pbeh without the class-centre term (the ablation of :class:`pbeh.centers.ClassCenters`).
``"pbeh-no-prior"``       pbeh without the class prior in query codes (the ablation of :mod:`pbeh.class_prior`).
``"pbeh-center-prior"``   pbeh with the class prior aimed at the class centres instead of the classes' stored
                          codes (``TrainerConfig.prior_targets="centers"``, the default before stored targets).
``"pbeh-old-centers"``     pbeh with earlier classes trained toward their centres instead of the majority of their
                          stored codes while later tasks train (``TrainerConfig.old_class_targets="centers"``).
``"pbeh-previous"``       pbeh with the previous-model term on (``LossWeights.previous_model=30``; off by default,
                          see :func:`pbeh.losses.previous_model_loss`).
``"pbeh-reference"``      PBEH as released: cross-batch attention, randn prompts on raw features, old bit rows
                          keep training at 0.1·lr, epoch selection on the test queries (optimistic), no replay.
                          Only the recipe: epochs, batch, lr and heads come from the caller (the released
                          settings are :meth:`TrainerConfig.reference` and heads of 4096).
``"fixed-length"``        pbeh's defaults, never extend.
``"finetune"``            no prompt context, no anchor, no stored-code term, no class centres (and so no class
                          prior), no previous-model term: heads fine-tuned task after task, never extended.
``"joint"``               all tasks' training data at once (the upper bound; not continual).
========================  ==================================================================================
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .data import TaskStream
from .extension import ExtensionPolicy, ModeCenterRule, NeverExtend
from .losses import LossWeights
from .trainer import ContinualTrainer, TrainerConfig

__all__ = ["METHODS", "build_trainer", "run_method"]

METHODS = (
    "pbeh", "pbeh-no-replay", "pbeh-no-stored", "pbeh-no-centers", "pbeh-no-prior", "pbeh-center-prior",
    "pbeh-old-centers", "pbeh-previous", "pbeh-reference",
    "fixed-length", "finetune", "joint",
)  # fmt: skip


def build_trainer(
    method: str,
    stream: TaskStream,
    *,
    n_bits: int,
    hidden_dims: Sequence[int] = (512, 512),
    config: TrainerConfig | None = None,
    rho: float = 0.1,
    delta: int = 1,
    seed: int = 2025,
    extension_policy: ExtensionPolicy | None = None,
    loss_weight_overrides: Mapping[str, float] | None = None,
    **trainer_kwargs: Any,
) -> ContinualTrainer:
    """A trainer configured as ``method`` (one of :data:`METHODS`) for ``stream``'s feature widths.

    ``extension_policy`` replaces the mode-centre rule (built from ``rho`` and ``delta``) of the methods that extend
    (``"pbeh"`` and its ``"pbeh-..."`` variants); the methods that never extend refuse it.
    ``loss_weight_overrides`` replaces named weights of the method's :class:`~pbeh.losses.LossWeights` (for example
    ``{"class_centers": 30.0}``); an unknown name is an error.
    """
    if extension_policy is not None and not isinstance(extension_policy, ExtensionPolicy):
        raise ValueError(
            f"extension_policy: expected an ExtensionPolicy or None, got {type(extension_policy).__name__}"
        )
    base = config or TrainerConfig()
    weights = LossWeights.pbeh()
    pool_kwargs: dict[str, Any] = {}
    normalize = True
    use_prompts = True
    center = True
    policy: Any = ModeCenterRule(rho=rho, delta=delta)
    if method == "pbeh":
        cfg = base
    elif method == "pbeh-no-replay":
        cfg = dataclasses.replace(base, prototype_replay=0)
    elif method == "pbeh-no-stored":
        cfg = base
        weights = LossWeights.pbeh(stored_codes=0.0)
    elif method == "pbeh-no-centers":
        cfg = base
        weights = LossWeights.pbeh(class_centers=0.0)
    elif method == "pbeh-no-prior":
        cfg = dataclasses.replace(base, class_prior=0.0)
    elif method == "pbeh-center-prior":
        cfg = dataclasses.replace(base, prior_targets="centers")
    elif method == "pbeh-old-centers":
        cfg = dataclasses.replace(base, old_class_targets="centers")
    elif method == "pbeh-previous":
        cfg = base
        weights = LossWeights.pbeh(previous_model=30.0)
    elif method == "pbeh-reference":
        cfg = dataclasses.replace(
            base,
            select_on="test",
            prompt_init="normal",
            freeze_old_bits=False,
            similarity_target="reference",
            binary_similarity_normalize=False,
            later_task_head_lr_scale=0.1,
            prototype_replay=0,
            lr_fan_in=None,
        )
        pool_kwargs = {"attention": "batch", "init_std": 1.0, "selection": "newest", "task_seeds": "same"}
        normalize = False
        center = False
        weights = LossWeights()
    elif method == "fixed-length":
        cfg = base
        policy = NeverExtend()
    elif method == "finetune":
        cfg = dataclasses.replace(base, prototype_replay=0)
        policy = NeverExtend()
        weights = LossWeights.pbeh(anchor=0.0, stored_codes=0.0, class_centers=0.0, previous_model=0.0)
        use_prompts = False
    elif method == "joint":
        cfg = base
        policy = NeverExtend()
    else:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    if loss_weight_overrides:
        if not isinstance(loss_weight_overrides, Mapping):
            raise TypeError(
                f"loss_weight_overrides: expected a mapping of weight names to numbers, got "
                f"{type(loss_weight_overrides).__name__}"
            )
        weights = LossWeights.from_dict({**weights.to_dict(), **loss_weight_overrides})
    if extension_policy is not None:
        if isinstance(policy, NeverExtend):
            raise ValueError(f"extension_policy: method {method!r} never extends, so it takes no extension policy")
        policy = extension_policy
    return ContinualTrainer.for_stream(
        stream,
        n_bits=n_bits,
        hidden_dims=hidden_dims,
        normalize_features=normalize,
        use_prompts=use_prompts,
        center_features=center,
        pool_kwargs=pool_kwargs,
        model_seed=seed,
        config=dataclasses.replace(cfg, seed=seed),
        loss_weights=weights,
        extension_policy=policy,
        **trainer_kwargs,
    )


def run_method(
    method: str,
    stream: TaskStream,
    *,
    n_bits: int,
    hidden_dims: Sequence[int] = (512, 512),
    config: TrainerConfig | None = None,
    rho: float = 0.1,
    delta: int = 1,
    seed: int = 2025,
    extension_policy: ExtensionPolicy | None = None,
) -> tuple[ContinualTrainer, dict[str, Any]]:
    """Train ``method`` on ``stream`` and return the trainer and its summary (with ``seconds``).

    ``"joint"`` trains one model on all tasks merged, then stores and evaluates each task's database with it, so its
    summary has the same fields as the continual methods' (its matrix has only a final row).
    """
    started = time.perf_counter()
    trainer = build_trainer(
        method,
        stream,
        n_bits=n_bits,
        hidden_dims=hidden_dims,
        config=config,
        rho=rho,
        delta=delta,
        seed=seed,
        extension_policy=extension_policy,
    )
    if method == "joint":
        trainer.fit([stream.joint()], resume=False)
        trainer = trainer.evaluate_stream(stream)
    else:
        trainer.fit(stream, resume=False)
    summary = trainer.summary()
    summary["seconds"] = time.perf_counter() - started
    summary["method"] = method
    return trainer, summary
