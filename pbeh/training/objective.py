"""The trainer's objective: what one minibatch's loss is made of, and the optimiser that minimises it.

* :class:`TrainerObjective` (a mixin of :class:`~pbeh.training.ContinualTrainer`, whose state it reads):

  - per task, before the epochs: the AdamW optimiser with its learning-rate groups
    (:meth:`~TrainerObjective._optimizer`), the class centres of the task's new classes
    (:meth:`~TrainerObjective._prepare_centers`) and the sampled stored codes of earlier tasks
    (:meth:`~TrainerObjective._stored_targets`);
  - per minibatch: the model's outputs and the loss (:meth:`~TrainerObjective._loss`), the loss from the outputs (the
    PBEH terms of :func:`pbeh.losses.pbeh_loss`, the stored-code term and the class-centre term:
    :meth:`~TrainerObjective._loss_from_outputs`), and one rank's optimiser step under torch.distributed over the
    gathered global batch (:meth:`~TrainerObjective._distributed_step`).

* :func:`_fan_in_scale`: the learning-rate factor of a wide weight matrix (``TrainerConfig.lr_fan_in``).

The loss terms themselves are in :mod:`pbeh.losses`, the centres in :mod:`pbeh.centers`; the epoch loop that calls
these methods is :meth:`ContinualTrainer._train_task <pbeh.training.trainer.ContinualTrainer._train_task>`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..centers import ClassCenters
from ..class_prior import prior_weights, stored_code_targets
from ..data import Task
from ..index import TruncatedHammingIndex
from ..losses import (
    LossWeights,
    anchor_loss,
    center_loss,
    label_similarity,
    pbeh_loss,
    previous_model_loss,
    stored_code_loss,
)
from ..model import CrossModalHashModel
from ..prototypes import ClassPrototypes
from ._arrays import _tensor
from .config import TrainerConfig
from .distributed import DistributedContext, MinibatchShare, all_gather_rows, shard_bounds
from .report import _StoredTask

__all__ = ["TrainerObjective"]

PRIOR_BLOCK_ROWS = 1 << 16
"""Stored codes read per block when the class prior's targets are refitted (bounds the memory of the vote)."""


class TrainerObjective:
    """The loss and the optimiser of :class:`~pbeh.training.ContinualTrainer` (a mixin: the state is the trainer's)."""

    model: CrossModalHashModel
    config: TrainerConfig
    loss_weights: LossWeights
    image_index: TruncatedHammingIndex
    text_index: TruncatedHammingIndex
    _stored: list[_StoredTask]
    _centers: ClassCenters | None
    _training_centers: ClassCenters | None  # what the centre term aims at while a task trains (None: the centres)
    _prototypes: list[ClassPrototypes]
    device: torch.device  # the trainer's property

    # ------------------------------------------------------------------ per task, before the epochs
    def _optimizer(self, t: int) -> torch.optim.Optimizer:
        """AdamW rebuilt for every task (and so after every extension): heads slower from the second task on."""
        cfg = self.config
        slow = cfg.lr * (cfg.later_task_head_lr_scale if t > 0 else 1.0)
        groups = []
        heads = [p for p in self.model.head_parameters() if p.requires_grad]
        maps = [p for p in self.model.projection_parameters() if p.requires_grad]
        prompts = [p for p in self.model.prompt_parameters(t) if p.requires_grad]
        seen: set[int] = set()
        rest = [p for p in self.model.parameters() if p.requires_grad and not any(p is q for q in (*prompts, *heads))]
        # Anything trainable the model did not classify (e.g. attention inside the pool) trains with the heads.
        for params, lr in ((prompts, cfg.lr), (heads, slow), (maps, slow), (rest, slow)):
            unique = [p for p in params if id(p) not in seen]
            seen.update(id(p) for p in unique)
            by_lr: dict[float, list[torch.nn.Parameter]] = {}
            for param in unique:
                by_lr.setdefault(lr * _fan_in_scale(param, cfg.lr_fan_in), []).append(param)
            groups += [{"params": ps, "lr": value} for value, ps in by_lr.items()]
        if not groups:
            raise RuntimeError("model: nothing to train (every parameter is frozen)")
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def _prepare_centers(self, task: Task) -> None:
        """Give the task's new classes their centres (the table follows the code length) before it trains."""
        n_classes = task.train.labels.shape[1]
        if self._centers is None:
            self._centers = ClassCenters(n_classes, self.model.n_bits, seed=self.config.seed)
            for stored in self._stored:  # a state saved before centres existed: the earlier tasks' classes first
                self._centers.assign(np.flatnonzero(np.asarray(stored.labels).any(axis=0)))
        if self._centers.n_bits < self.model.n_bits:
            self._centers.extend(self.model.n_bits - self._centers.n_bits)
        self._centers.assign(np.flatnonzero(np.asarray(task.train.labels).any(axis=0)))

    def _stored_center_table(self) -> ClassCenters | None:
        """The centre table with every class that has stored codes aimed at their bitwise majority (both modalities'
        codes vote; the centre's bit on a tie or past the stored length), for ``old_class_targets="stored"``."""
        if self._centers is None or not self._stored:
            return None
        table = copy.deepcopy(self._centers)
        old = np.flatnonzero(np.any([np.asarray(stored.labels).any(axis=0) for stored in self._stored], axis=0))
        old = old[table.assigned[old]]  # a class only in a database never trained has no centre to replace
        votes = self._stored_votes(old, (self.image_index, self.text_index))
        table.centers[old] = stored_code_targets(table.centers[old], votes).astype(table.centers.dtype)
        return table

    def _stored_votes(
        self, classes: np.ndarray, indexes: Sequence[TruncatedHammingIndex]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored code of ``indexes`` as ``(±1 signs, membership in classes)`` blocks for
        :func:`~pbeh.class_prior.stored_code_targets`, :data:`PRIOR_BLOCK_ROWS` rows at a time (bounds the memory)."""
        block = PRIOR_BLOCK_ROWS
        for stored in self._stored:
            for start in range(0, len(stored.ids), block):
                member = np.asarray(stored.labels[start : start + block])[:, classes] > 0
                for index in indexes:
                    yield index.get_codes(stored.ids[start : start + block]).to_signs(), member

    def _fit_class_prior(self) -> None:
        """Fit the model's class prior (:mod:`pbeh.class_prior`) to every class seen so far, this task's included.

        Called as a task begins (its classes join the table) and again once its codes are stored: with
        ``TrainerConfig.prior_targets="stored"`` a class's target for one modality's queries is then the majority of
        its stored codes of the other modality (:func:`~pbeh.class_prior.stored_code_targets`); a class with nothing
        stored yet keeps its centre. Off (left empty) when ``TrainerConfig.class_prior`` is 0 for both modalities or
        there are no class centres to aim at.
        """
        weights = prior_weights(self.config.class_prior, "class_prior")
        if not any(w > 0 for w in weights.values()) or self._centers is None or self.loss_weights.class_centers <= 0:
            return
        seen = ClassPrototypes.concatenate(self._prototypes).merged()  # a class seen in several tasks: one row
        centers = self._centers.centers[seen.classes]
        targets: np.ndarray | dict[str, np.ndarray] = centers
        if self.config.prior_targets == "stored" and self._stored:
            # image queries meet stored text codes, and text queries stored image codes
            targets = {
                query: stored_code_targets(centers, self._stored_votes(seen.classes, (index,)))
                for query, index in (("image", self.text_index), ("text", self.image_index))
            }
        self.model.class_prior.fit(
            {"image": seen.image_mean, "text": seen.text_mean},
            {"image": seen.image_std, "text": seen.text_std},
            targets,
            weight=weights,
        )

    def _stored_targets(self, t: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """±1 stored image and text codes (at their own lengths) and labels of a seeded sample of each earlier
        task's database, for the stored-code term."""
        out = []
        rng = np.random.default_rng(self.config.seed * 7919 + t)
        for stored in self._stored[:t]:
            ids = stored.ids
            rows = np.arange(len(ids))
            if len(ids) > self.config.stored_codes_per_task:
                rows = np.sort(rng.choice(len(ids), self.config.stored_codes_per_task, replace=False))
            image_codes = self.image_index.get_codes(ids[rows]).to_signs()
            text_codes = self.text_index.get_codes(ids[rows]).to_signs()
            out.append(
                (
                    _tensor(image_codes, self.device),
                    _tensor(text_codes, self.device),
                    _tensor(stored.labels[rows], self.device),
                )
            )
        return out

    # ------------------------------------------------------------------ per minibatch
    def _loss(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        labels: torch.Tensor,
        t: int,
        stored_anchors: list[torch.Tensor],
        stored_targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (),  # type: ignore[assignment]
        previous: CrossModalHashModel | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        w = self.loss_weights
        h_image, z_image = self.model(image, "image", return_z=True)
        h_text, z_text = self.model(text, "text", return_z=True)
        cross_image = cross_text = None
        if w.distill > 0:
            cross_image = (h_image, self.model.hash_from_z(z_image, "text"))
            cross_text = (h_text, self.model.hash_from_z(z_text, "image"))
        anchor_current = [self.model.anchor_codes(s) for s in range(len(stored_anchors))]
        return self._loss_from_outputs(
            h_image, h_text, labels, cross_image, cross_text, stored_anchors, anchor_current, stored_targets,
            _previous_outputs(previous, image, text),
        )  # fmt: skip

    def _loss_from_outputs(
        self,
        h_image: torch.Tensor,
        h_text: torch.Tensor,
        labels: torch.Tensor,
        cross_image: tuple[torch.Tensor, torch.Tensor] | None,
        cross_text: tuple[torch.Tensor, torch.Tensor] | None,
        stored_anchors: Sequence[torch.Tensor],
        anchor_current: Sequence[torch.Tensor],
        stored_targets: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        previous_outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The PBEH objective plus pbeh's terms (stored codes, class centres, previous model), from the batch's
        outputs; ``previous_outputs`` are the task-start copy's outputs for the same rows (image, text)."""
        w = self.loss_weights
        total, terms = pbeh_loss(
            h_image,
            h_text,
            labels,
            weights=w,
            cross_image=cross_image,
            cross_text=cross_text,
            anchor_stored=stored_anchors,
            anchor_current=anchor_current,
            straight_through=self.config.straight_through,
            temperature=self.config.temperature,
            similarity_target=self.config.similarity_target,
            binary_similarity_normalize=self.config.binary_similarity_normalize,
        )
        if stored_targets:
            term = h_image.new_zeros(())
            for image_codes, text_codes, stored_labels in stored_targets:
                S = label_similarity(labels, stored_labels, kind=self.config.similarity_target)
                # cross-modal, as retrieval compares: image outputs vs stored text codes, and vice versa
                term = term + stored_code_loss(h_image, text_codes, S) + stored_code_loss(h_text, image_codes, S)
            total = total + w.stored_codes * term
            terms["stored_codes"] = float(term.detach())
        if w.class_centers > 0 and self._centers is not None:
            table = self._training_centers if self._training_centers is not None else self._centers
            targets = torch.as_tensor(table.targets(labels.detach().cpu().numpy()), device=h_image.device)
            term = center_loss(h_image, targets) + center_loss(h_text, targets)
            total = total + w.class_centers * term
            terms["class_centers"] = float(term.detach())
        if previous_outputs is not None and w.previous_model > 0:
            p_image, p_text = previous_outputs
            term = previous_model_loss(h_image, p_image) + previous_model_loss(h_text, p_text)
            total = total + w.previous_model * term
            terms["previous_model"] = float(term.detach())
        return total, terms

    def _distributed_step(
        self,
        step_module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        ctx: DistributedContext,
        share: MinibatchShare,
        features: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        pseudo: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
        stored_anchors: list[torch.Tensor],
        stored_targets: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        previous: CrossModalHashModel | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimiser step of one rank under DDP; returns the global batch's loss (the same on every rank).

        The rank runs the model on its share of the batch (and of the replayed pseudo items), gathers every rank's
        outputs in one process's batch order with the gradient kept on its own rows (:func:`all_gather_rows`), and
        evaluates the whole objective on the global batch, so the pairwise and contrastive terms see every pair.
        Each rank's backward then yields its part of the global gradient. DDP averages the ranks' gradients, so the
        batch terms are backpropagated ``world_size`` times over (the sum of the parts is the gradient) while the
        prompt-hash anchor term, which every rank computes whole, is backpropagated once.
        """
        image, text, labels = features
        device = image.device
        local = share.local.to(device)
        indices = share.indices.to(device)
        local_image, local_text, global_labels = image[local], text[local], labels[indices]
        counts = [list(share.counts)]
        if pseudo is not None:
            p_image, p_text, p_labels = (_tensor(part, device) for part in pseudo)
            bounds = shard_bounds(len(p_image), ctx.world_size)
            first, last = bounds[ctx.rank]
            local_image = torch.cat([local_image, p_image[first:last]])
            local_text = torch.cat([local_text, p_text[first:last]])
            global_labels = torch.cat([global_labels, p_labels])
            counts.append([stop - begin for begin, stop in bounds])
        w = self.loss_weights
        outputs, anchor_current = step_module(local_image, local_text, len(stored_anchors), w.distill > 0)
        previous_local = _previous_outputs(previous, local_image, local_text)  # gathered with the outputs (no grad)
        parts = [*outputs, *(previous_local or ())]
        widths = [part.shape[1] for part in parts]
        gathered = all_gather_rows(torch.cat(parts, dim=1), counts, ctx).split(widths, dim=1)
        h_image, h_text = gathered[0], gathered[1]
        cross_image = (h_image, gathered[2]) if w.distill > 0 else None
        cross_text = (h_text, gathered[3]) if w.distill > 0 else None
        previous_outputs = (gathered[-2].detach(), gathered[-1].detach()) if previous_local is not None else None
        batch_loss, terms = self._loss_from_outputs(
            h_image, h_text, global_labels, cross_image, cross_text, [], [], stored_targets, previous_outputs
        )
        total, to_backward = batch_loss, batch_loss * ctx.world_size
        if stored_anchors:
            anchor = anchor_loss(stored_anchors, anchor_current)
            total = total + w.anchor * anchor
            to_backward = to_backward + w.anchor * anchor
            terms["anchor"] = float(anchor.detach())
        optimizer.zero_grad(set_to_none=True)
        to_backward.backward()
        optimizer.step()
        return total.detach(), terms


def _previous_outputs(
    previous: CrossModalHashModel | None, image: torch.Tensor, text: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The task-start copy's outputs for the rows (no gradient), or None without a copy."""
    if previous is None:
        return None
    with torch.no_grad():
        return previous(image, "image"), previous(text, "text")


def _fan_in_scale(param: torch.Tensor, reference: int | None) -> float:
    """``reference / fan_in`` for a weight matrix wider than ``reference`` inputs, else 1.

    AdamW moves every weight by about ``lr`` per step whatever its gradient's size, so a unit's input moves by about
    ``lr * |x|_1``, which grows with the fan-in. On 1024-d features (MIRFLICKR730) at lr 1e-3 one step moved every
    hidden unit by more than its spread across items, the same way for all items: after a few steps the ReLUs were on or
    off for every item alike and each task's codes collapsed to one or two codes.
    """
    if reference is None or param.ndim != 2 or param.shape[1] <= reference:
        return 1.0
    return reference / param.shape[1]
