"""TrainerConfig: the optimisation and protocol options of :class:`~pbeh.training.ContinualTrainer`, checked when
created; :meth:`TrainerConfig.reference` gives the released PBEH's settings."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..class_prior import prior_weights
from ..losses import SIMILARITY_TARGETS

__all__ = ["TrainerConfig"]

_SELECT_ON = ("validation", "test", "last")
REPLAY_SPREADS = ("translated", "gaussian")
"""The values of :attr:`TrainerConfig.replay_spread`."""
PRIOR_TARGETS = ("stored", "centers")
"""The values of :attr:`TrainerConfig.prior_targets`."""
OLD_CLASS_TARGETS = ("stored", "centers")
"""The values of :attr:`TrainerConfig.old_class_targets`."""


@dataclass(frozen=True)
class TrainerConfig:
    """Optimisation and protocol options of :class:`ContinualTrainer`.

    The defaults are sized for a CPU and were chosen from measurements on Wikipedia-5 and MIRFLICKR730-4
    (docs/results.md): 30 epochs of batches of 128 at lr 1e-3 train a task of a few hundred items in seconds, where the
    reference's 100 epochs of 512 at 1e-4 leave such a task with one optimiser step per epoch and undertrained,
    collapsing codes. :meth:`reference` gives the released PBEH's settings.

    Example:
        >>> TrainerConfig().epochs, TrainerConfig().prototype_replay, TrainerConfig.reference().lr
        (30, 128, 0.0001)
        >>> TrainerConfig(epochs=0)
        Traceback (most recent call last):
        ...
        ValueError: epochs: expected a positive int, got 0

    Attributes:
        epochs: epochs per task (reference: 100).
        batch_size: minibatch size (reference: 512).
        lr: AdamW learning rate of the new prompt pool, and of the heads on the first task (reference: 1e-4).
        later_task_head_lr_scale: heads and input maps train at ``lr * scale`` from the second task on
            (reference: 0.1, the "asymmetric optimisation"). pbeh's default is 1.0: with class-prototype replay
            (``prototype_replay``) holding old classes in place, full-rate heads measured a higher unified score on
            Wikipedia-5 (32 bits, one seed: T→I 0.616 against 0.474 at 0.1).
        weight_decay: AdamW weight decay (PyTorch default 0.01, as the reference).
        select_on: ``"validation"`` (best epoch on a validation split carved from the training items, default),
            ``"test"`` (on the task's queries against its database: the reference protocol, optimistic), or
            ``"last"`` (no selection).
        validation_fraction: fraction of the training items held out for ``select_on="validation"``.
        eval_every: evaluate the selection score every this many epochs (and always after the last one).
        eval_k: the k of mAP@k for selection and evaluation (reference: 1000); ``None`` for mAP@all.
        prompts_per_task: explicit pool size; ``None`` uses the reference's adaptive
            ``ceil(n_train / samples_per_prompt)``.
        samples_per_prompt: η of the adaptive pool size (reference: 400 for NUS-WIDE, 800 for COCO; pbeh 100, so
            that tasks of a few hundred items get more than one prompt).
        prompt_init: ``"kmeans"`` (centroids of the task's features, pbeh's default) or ``"normal"`` (the
            reference's seeded draw). With k-means prompts and ``selection="all"`` (:meth:`for_stream`'s default),
            an old item tends to select its own task's pool, so new pools change its context less (measured on
            Wikipedia-5, 32 bits: BWT I→T −0.03 against −0.11 with random prompts from the newest pool).
        freeze_old_bits: when the code is extended, keep training the path of the old bits at the low rate (the
            reference, and the default) or freeze it (``True``: old bits exact for a fixed input, new bits from a new
            branch). Freezing trades retrieval for stability: on Wikipedia-5 from 32 bits with 4 new bits after
            every task (one seed), frozen gave per-task mAP 0.605/0.608 and unified 0.196/0.221 at prefix drift
            0.14; trained gave 0.681/0.776 and 0.254/0.344 at drift 0.36. New tasks cannot reshape frozen bits, so
            they learn through a few new bits only.
        straight_through: give the sign-based loss terms a straight-through gradient (the reference has none).
        similarity_target: target of the similarity terms (:func:`pbeh.losses.label_similarity`):
            ``"signed_cosine"`` (pbeh's default: ``2 cos(l_i, l_j) − 1``, disjoint label sets pushed to opposite
            codes), ``"cosine"`` of the label vectors, or the reference's ``2σ(l·l/16) − 1``, which is near 0 for every
            pair of single-label or sparsely labelled items and then lets the codes collapse. Measured at 32 bits
            (one seed, unified mAP I→T/T→I): MIRFLICKR730-4 0.706/0.646 signed against 0.645/0.636 cosine (whose
            first task collapsed to one code); Wikipedia-5 0.258/0.580 against 0.265/0.649, where the signed target
            also cut the newest task's share of old image queries' top 10 from 0.85–0.89 to 0.23–0.30.
        binary_similarity_normalize: divide the sign-code inner products of the binary similarity term by K
            (pbeh) or not (the reference; the term has no gradient without ``straight_through`` either way).
        temperature: temperature of the supervised contrastive term.
        stored_codes_per_task: stored database codes per earlier task (a seeded sample) that the stored-code term
            (:func:`pbeh.losses.stored_code_loss`) compares new outputs with.
        seed: seeds the minibatch order and the validation split (the model has its own seed).
        show_progress: a progress bar over epochs.
        prototype_replay: pseudo items of earlier tasks' classes added to every minibatch from the second task on,
            drawn from :class:`~pbeh.prototypes.ClassPrototypes` (feature means and spreads of each class, or of
            groups of its items (``prototype_clusters``), kept after each task; no item's features are kept). The
            loss terms then see old classes too: the stored-code term pins them to the codes stored for their class,
            so old tasks' queries keep meeting their stored codes, and the pairwise terms keep new items away from
            them. 0 switches it off.
        replay_spread: how a pseudo item varies around its class's (or group's) mean. ``"translated"`` (default):
            its spread times the standardised within-class deviation of a real item of the task being trained (the
            item's features minus the mean of its classes' means, over their spread, per dimension; feature
            translation after FeTrIL, Petit et al., WACV 2023, rescaled per dimension), so pseudo items of old
            classes vary the way real items do (correlated, skewed, sparse) rather than as independent Gaussians;
            the deviations live only while the task trains (a task without labelled items replays Gaussian noise).
            ``"gaussian"``: its spread times ``prototype_noise`` times N(0, 1) (pbeh's earlier default; it fits
            faster, and at 10 epochs it scored higher on text queries). Measured against Gaussian in docs/design.md,
            "Replay by feature translation".
        prototype_noise: with ``replay_spread="gaussian"``, the pseudo items' spread around their class mean, in units
            of the class's per-dimension standard deviation (Wikipedia-5, 32 bits, one seed, unified mAP I→T/T→I:
            0.5 gave 0.283/0.638, 1.0 0.260/0.616, 2.0 0.248/0.574); unused with ``"translated"``.
        prototype_clusters: replay each old class from up to this many groups of its items (seeded k-means, at least
            :data:`~pbeh.prototypes.MIN_CLUSTER_ITEMS` items a group; no item's features are kept) instead of one
            Gaussian around the class mean; 1 keeps one per class. The class prior always uses the per-class
            statistics. 4 against 1 (3 seeds x 16/32/64 bits): unified I→T +0.006 to +0.023 on Wikipedia-5 and
            MIRFLICKR730-4, T→I −0.010 to +0.006, BWT higher in 8 of 12 cells, lower in 2 (docs/design.md).
        lr_fan_in: weight matrices with more inputs than this train at ``lr * lr_fan_in / fan_in``
            (``None``: every weight at ``lr``). AdamW's step moves a unit's input by about ``lr`` times the L1 norm of
            its inputs, so at a fixed lr wide inputs take large, common-mode steps: on MIRFLICKR730's 1024-d features
            the first task's codes collapsed to one code within a few steps at lr 1e-3 without this scaling.
        class_prior: the weight of the class prior in query codes (:mod:`pbeh.class_prior`: the expected class
            centre under a Gaussian posterior over the seen classes' frozen-feature statistics, added to the heads'
            normalised output; stored codes and epoch selection use the heads alone). It counters the heads' pull
            of old classes' queries toward the newest classes. Active only with the class-centre term
            (``LossWeights.class_centers > 0``); 0 switches it off. 0.5 was chosen on three sets (one seed each,
            unified I→T / T→I against no prior): Wikipedia-5 +0.031 / +0.013, MIRFLICKR730-4 +0.007 / +0.012,
            openclipart-5 +0.039 / −0.015; at 1.0: +0.032 / +0.011, −0.005 / +0.011, +0.051 / −0.045. A mapping
            ``{"image": w, "text": w}`` weighs each modality's queries apart (the image weight acts on image-to-text
            search); ``{"image": 1.0, "text": 0.5}`` raised Wikipedia-5's earlier tasks' image P@10 from 0.221 to
            0.278 and cost MIRFLICKR730-4 0.012 I→T (docs/design.md).
        prior_targets: the code the class prior steers a query of class ``c`` toward. ``"stored"`` (default): after
            every task is stored, the bitwise majority of the codes stored for ``c`` in the other modality (the codes
            that query is compared with; :func:`pbeh.class_prior.stored_code_targets`), the centre's bit where none
            is stored or the vote ties. ``"centers"``: the class centre (where training aimed the class). Only query
            codes change; training, selection and stored codes are the same either way. Stored targets against
            centres (the same trainings, 32 bits): MIRFLICKR730-4 +0.040 / +0.035 unified (two seeds), Wikipedia-5
            level, openclipart-5 (16 bits) +0.006 / +0.020 (docs/design.md).
        old_class_targets: what the class-centre term asks of an *earlier* class's items (its replayed pseudo items,
            and a later task's real items of it) while a later task trains. ``"stored"`` (default): the bitwise
            majority of the codes stored for the class (both modalities), the centre's bit where none is stored or
            the vote ties: the old gallery's class prototypes, as in backward-compatible training. ``"centers"``:
            its fixed centre. New classes keep their centres either way. Against ``"centers"`` (3 seeds x 16/32/64
            bits): MIRFLICKR730-4 +0.006 to +0.023 unified and BWT up by up to 0.021, Wikipedia-5 level with BWT
            I->T up by 0.003-0.006 (docs/design.md).
        ties: how every reported figure ranks items whose scores tie: ``"average"`` (pbeh's default: the exact
            expectation over random order inside tie groups, so no figure depends on the order items were stored
            in) or ``"reference"`` (stable order, ties in database order: the released evaluation code; for parity
            only, and labelled as such).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    later_task_head_lr_scale: float = 1.0
    weight_decay: float = 0.01
    select_on: str = "validation"
    validation_fraction: float = 0.1
    eval_every: int = 3
    eval_k: int | None = 1000
    prompts_per_task: int | None = None
    samples_per_prompt: int = 100
    prompt_init: str = "kmeans"
    freeze_old_bits: bool = False
    straight_through: bool = False
    similarity_target: str = "signed_cosine"
    binary_similarity_normalize: bool = True
    temperature: float = 0.1
    stored_codes_per_task: int = 1024
    seed: int = 2025
    show_progress: bool = False
    ties: str = "average"
    prototype_replay: int = 128
    lr_fan_in: int | None = 256
    prototype_noise: float = 0.5
    prototype_clusters: int = 4
    replay_spread: str = "translated"
    class_prior: float | dict[str, float] = 0.5
    prior_targets: str = "stored"
    old_class_targets: str = "stored"

    def __post_init__(self) -> None:
        for name in ("freeze_old_bits", "straight_through", "binary_similarity_normalize", "show_progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed: expected an int, got {self.seed!r}")
        if self.lr_fan_in is not None and (
            isinstance(self.lr_fan_in, bool) or not isinstance(self.lr_fan_in, int) or self.lr_fan_in < 1
        ):
            raise ValueError(f"lr_fan_in: expected a positive int or None, got {self.lr_fan_in!r}")
        if (
            isinstance(self.prototype_replay, bool)
            or not isinstance(self.prototype_replay, int)
            or (self.prototype_replay < 0)
        ):
            raise ValueError(f"prototype_replay: expected an int >= 0, got {self.prototype_replay!r}")
        if not (
            isinstance(self.prototype_noise, (int, float))
            and math.isfinite(self.prototype_noise)
            and self.prototype_noise >= 0
        ):
            raise ValueError(f"prototype_noise: expected a finite number >= 0, got {self.prototype_noise!r}")
        prior_weights(self.class_prior, "class_prior")
        for name in (
            "epochs",
            "batch_size",
            "eval_every",
            "samples_per_prompt",
            "stored_codes_per_task",
            "prototype_clusters",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
        for name in ("later_task_head_lr_scale", "weight_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if self.select_on not in _SELECT_ON:
            raise ValueError(f"select_on: expected one of {_SELECT_ON}, got {self.select_on!r}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction: expected a number in (0, 1), got {self.validation_fraction!r}")
        if self.eval_k is not None and (
            isinstance(self.eval_k, bool) or not isinstance(self.eval_k, int) or self.eval_k < 1
        ):
            raise ValueError(f"eval_k: expected a positive int or None (mAP@all), got {self.eval_k!r}")
        if self.prompts_per_task is not None and (
            isinstance(self.prompts_per_task, bool)
            or not isinstance(self.prompts_per_task, int)
            or self.prompts_per_task < 1
        ):
            raise ValueError(f"prompts_per_task: expected a positive int or None, got {self.prompts_per_task!r}")
        if self.similarity_target not in SIMILARITY_TARGETS:
            raise ValueError(f"similarity_target: expected one of {SIMILARITY_TARGETS}, got {self.similarity_target!r}")
        if self.ties not in ("average", "reference"):
            raise ValueError(f"ties: expected 'average' or 'reference', got {self.ties!r}")
        if self.replay_spread not in REPLAY_SPREADS:
            raise ValueError(f"replay_spread: expected one of {REPLAY_SPREADS}, got {self.replay_spread!r}")
        if self.old_class_targets not in OLD_CLASS_TARGETS:
            raise ValueError(f"old_class_targets: expected one of {OLD_CLASS_TARGETS}, got {self.old_class_targets!r}")
        if self.prior_targets not in PRIOR_TARGETS:
            raise ValueError(f"prior_targets: expected one of {PRIOR_TARGETS}, got {self.prior_targets!r}")
        if self.prompt_init not in ("normal", "kmeans"):
            raise ValueError(f"prompt_init: expected 'normal' or 'kmeans', got {self.prompt_init!r}")

    @classmethod
    def reference(cls, **overrides: Any) -> TrainerConfig:
        """The released PBEH's settings (REFERENCE.md §2): 100 epochs, batch 512, lr 1e-4, heads at 0.1·lr from
        task 2, η = 400, best epoch chosen on the test queries every epoch, random prompts, its similarity target,
        mAP@1000 with ties in database order, no prototype replay, no class prior."""
        values: dict[str, Any] = {
            "epochs": 100,
            "batch_size": 512,
            "lr": 1e-4,
            "later_task_head_lr_scale": 0.1,
            "eval_every": 1,
            "eval_k": 1000,
            "samples_per_prompt": 400,
            "select_on": "test",
            "prompt_init": "normal",
            "similarity_target": "reference",
            "binary_similarity_normalize": False,
            "ties": "reference",
            "prototype_replay": 0,
            "lr_fan_in": None,
            "class_prior": 0.0,
        }
        return cls(**{**values, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerConfig:
        """Inverse of :meth:`to_dict`. A key added since the dict was saved takes its default, except
        ``replay_spread``, ``prior_targets`` and ``old_class_targets``: a config saved before they existed trained
        with Gaussian pseudo items and toward the centres and encoded queries toward the centres, and a resumed run
        goes on that way."""
        data = {"replay_spread": "gaussian", "prior_targets": "centers", "old_class_targets": "centers", **data}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown TrainerConfig keys {unknown}")
        return cls(**data)
