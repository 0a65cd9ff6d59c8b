"""Extension policies: after each task, decide whether to widen the hash code before the next one.

PBEH grows its Hamming space when the stored codes crowd: :class:`ModeCenterRule` is the released rule
(REFERENCE.md §2, "dynamic Hamming-space extension"). :class:`NeverExtend` (fixed length, the ablation ``rho = 1``)
and :class:`FixedSchedule` (a predetermined number of new bits per task) are the baselines. Every policy answers with
an :class:`ExtensionDecision` that says how many bits to add and why, with the numbers, and round-trips through
:meth:`ExtensionPolicy.to_config` / :func:`extension_policy_from_config` for checkpoints.

:func:`code_collapse_report` summarises a batch of codes (constant bits, distinct codes) so that the trainer can warn
when codes collapse.

Example:
    >>> import numpy as np
    >>> from pbeh.codes import Codes
    >>> rng = np.random.default_rng(0)
    >>> codes = Codes.from_bool(rng.random((100, 16)) < 0.5)  # random codes: far from any centre
    >>> decision = ModeCenterRule(rho=0.1, delta=1).decide(image_codes=codes, text_codes=codes, task=0)
    >>> decision.n_new_bits
    1
    >>> policy = extension_policy_from_config(ModeCenterRule(rho=0.02).to_config())
    >>> policy
    ModeCenterRule(rho=0.02, delta=1)
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np

from ._validation import check_codes, check_in_interval, check_int
from .codes import Codes, popcount

__all__ = [
    "CollisionRule",
    "ExtensionDecision",
    "ExtensionPolicy",
    "FixedSchedule",
    "ModeCenterRule",
    "NeverExtend",
    "TieRule",
    "code_collapse_report",
    "extension_policy_from_config",
    "make_extension_policy",
    "mode_center",
    "mode_center_distances",
]

_logger = logging.getLogger(__name__)

# Rows unpacked at a time when counting bits (bounds the temporary boolean array to about 64 MB at 1024 bits).
_CHUNK_ROWS = 65536


# ---------------------------------------------------------------------------------------------------- helpers
def _check_rho(rho: Any) -> float:
    """The fraction threshold of the rules: a number in ``[0, 1]``."""
    return check_in_interval(rho, "rho", 0, 1, closed_low=True, closed_high=True, kind="a number")


def _ones_per_bit(codes: Codes) -> np.ndarray:
    """Number of codes with bit ``j`` set, for every bit ``j`` (int64 ``(n_bits,)``)."""
    ones = np.zeros(codes.n_bits, dtype=np.int64)
    packed = codes.packed
    for start in range(0, len(codes), _CHUNK_ROWS):
        block = np.unpackbits(packed[start : start + _CHUNK_ROWS], axis=1, count=codes.n_bits, bitorder="big")
        ones += block.sum(axis=0, dtype=np.int64)
    return ones


def _flagged_fraction(
    queries: Codes,
    database: Codes,
    labels: np.ndarray,
    flag: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    max_items: int,
    seed: int,
) -> float:
    """Share of (a seeded sample of at most ``max_items``) queries for which ``flag(distances, unrelated)`` holds.

    ``flag`` gets a block of rows: the Hamming distances ``(rows, N)`` from those queries to every database item and
    the matching boolean matrix of pairs that share no label, and returns one boolean per row. Row ``i`` of
    ``queries`` and of ``database`` is the same item (labels row ``i``).
    """
    n = len(queries)
    if n == 0:
        return 0.0
    sample = np.arange(n)
    if n > max_items:
        sample = np.sort(np.random.default_rng(seed).choice(n, max_items, replace=False))
    lab = labels.astype(np.float32)
    flagged = np.zeros(len(sample), dtype=bool)
    step = max(1, (16 << 20) // max(1, len(database)))  # bound each (rows x N) block to ~16M entries
    for start in range(0, len(sample), step):
        rows = sample[start : start + step]
        unrelated = (lab[rows] @ lab.T) == 0
        flagged[start : start + step] = flag(queries[rows].hamming(database), unrelated)
    return float(flagged.mean())


def _check_labels(labels: Any, n: int, rule: str) -> np.ndarray:
    if labels is None:
        raise ValueError(f"labels: {rule} needs the multi-hot labels of the stored items, got None")
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ValueError(f"labels: expected shape ({n}, n_classes) matching the codes, got {labels.shape}")
    return labels


def mode_center(codes: Codes) -> np.ndarray:
    """Per-bit majority centre ``c = sign(Σ_i b_i)`` in ±1 arithmetic (bit 1 ↔ +1, bit 0 ↔ −1).

    Args:
        codes: ``n`` codes of one length.

    Returns:
        ``int8 (n_bits,)`` with values in ``{−1, 0, +1}``; 0 where a bit is set in exactly half of the codes (and
        everywhere when ``codes`` is empty).

    Example:
        >>> mode_center(Codes.from_bool([[1, 0, 1], [1, 1, 0]])).tolist()
        [1, 0, 0]
    """
    codes = check_codes(codes, "codes")
    column_sums = 2 * _ones_per_bit(codes) - len(codes)  # Σ_i b_i with b in {−1, +1}
    return np.sign(column_sums).astype(np.int8)


def mode_center_distances(codes: Codes, center: np.ndarray | None = None) -> np.ndarray:
    """Hamming distance of every code to a ±1/0 centre (default: the codes' :func:`mode_center`).

    A centre entry of 0 (a tied bit) counts as a difference for **every** code, as in the reference, which compares
    the ±1 codes with the centre by ``!=``.

    Args:
        codes: ``n`` codes of length ``K``.
        center: ``(K,)`` values in ``{−1, 0, +1}``; ``None`` computes :func:`mode_center` of ``codes``.

    Returns:
        ``int64 (n,)`` distances in ``[0, K]``.

    Example:
        >>> mode_center_distances(Codes.from_bool([[1, 0, 1], [1, 1, 0]])).tolist()  # two tied bits
        [2, 2]
    """
    codes = check_codes(codes, "codes")
    if center is None:
        center = mode_center(codes)
    center = np.asarray(center)
    if center.shape != (codes.n_bits,):
        raise ValueError(f"center: expected shape ({codes.n_bits},) like the codes, got {center.shape}")
    if not np.isin(center, (-1, 0, 1)).all():
        raise ValueError("center: expected values in {-1, 0, +1}")
    center_bits = Codes.from_bool((center > 0)[None, :]).packed  # +1 → bit 1
    decided = Codes.from_bool((center != 0)[None, :]).packed  # bits where the centre is ±1
    n_tied = int(np.count_nonzero(center == 0))
    out = np.empty(len(codes), dtype=np.int64)
    packed = codes.packed
    for start in range(0, len(codes), _CHUNK_ROWS):
        block = (packed[start : start + _CHUNK_ROWS] ^ center_bits) & decided
        out[start : start + _CHUNK_ROWS] = popcount(block).sum(axis=1, dtype=np.int64) + n_tied
    return out


def _percent(x: float) -> str:
    return f"{100.0 * x:.3g}%"


# ---------------------------------------------------------------------------------------------------- decisions
@dataclasses.dataclass(frozen=True)
class ExtensionDecision:
    """What a policy decided after a task.

    Attributes:
        n_new_bits: how many bits to append before the next task (0: keep the length).
        reason: a human-readable explanation, with the numbers behind it.
        stats: the numbers (e.g. crowded fraction per modality, threshold), for logging.
    """

    n_new_bits: int
    reason: str
    stats: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_int(self.n_new_bits, "n_new_bits", minimum=0)
        if not isinstance(self.reason, str):
            raise TypeError(f"reason: expected a str, got {type(self.reason).__name__}")

    @property
    def extend(self) -> bool:
        """Whether the code grows (``n_new_bits > 0``)."""
        return self.n_new_bits > 0


class ExtensionPolicy(abc.ABC):
    """Decides after each task whether to widen the code before the next task.

    Subclasses set :attr:`name` (the registry name used by :func:`make_extension_policy`), implement :meth:`decide`
    and :meth:`to_config`; ``extension_policy_from_config(policy.to_config())`` must rebuild an equal policy.
    """

    name: ClassVar[str]

    @abc.abstractmethod
    def decide(
        self, *, image_codes: Codes, text_codes: Codes, task: int, labels: np.ndarray | None = None
    ) -> ExtensionDecision:
        """Decide after task ``task`` (0-based).

        Args:
            image_codes: all stored image codes whose length equals the newest code length (the caller gathers them
                over the tasks encoded at that length).
            text_codes: the same for texts.
            task: index of the task just finished.
            labels: multi-hot labels ``(N, C)`` of those items (row ``i`` is the item of ``image_codes[i]`` and
                ``text_codes[i]``); label-aware policies (:class:`CollisionRule`) need them, the others ignore them.
        """

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-friendly config, including ``"name"``; see :func:`extension_policy_from_config`."""

    def _check_inputs(self, image_codes: Any, text_codes: Any, task: Any) -> tuple[Codes, Codes, int]:
        image_codes = check_codes(image_codes, "image_codes")
        text_codes = check_codes(text_codes, "text_codes")
        if image_codes.n_bits != text_codes.n_bits:
            raise ValueError(
                f"image_codes, text_codes: expected codes of the same (newest) length, got {image_codes.n_bits} "
                f"and {text_codes.n_bits} bits"
            )
        return image_codes, text_codes, check_int(task, "task", minimum=0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ExtensionPolicy):
            return NotImplemented
        return type(self) is type(other) and self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(repr(self))


class ModeCenterRule(ExtensionPolicy):
    """PBEH's rule: extend when too many stored codes lie far from their modality's mode centre.

    Per modality, over the ``N`` stored codes of the newest length ``K``:

    1. the mode centre ``c = sign(Σ_i b_i)`` in ±1 arithmetic (:func:`mode_center`); a bit that sums to 0 gives
       ``c = 0`` there and **every** code counts as differing at that bit;
    2. ``count = #{i : Ham(b_i, c) > K/2}`` (strictly greater);
    3. if ``count > rho · N`` (strictly) for the images **or** for the texts, extend by ``delta`` bits.

    ``rho = 1`` never extends (the count cannot exceed ``N``); ``rho = 0`` extends as soon as one code is far.

    Note (ARCHITECTURE.md point 6): the rule measures spread around one centre, not collisions. A small task with
    well-trained, clustered codes has few codes beyond ``K/2`` from the majority code, so on small tasks the rule may
    never fire; the decision's ``reason`` shows the fractions so that this is visible.

    Args:
        rho: crowding ratio in ``[0, 1]`` (the reference's ``error_samples_ratio``; 0.1 by default, 0.02 in its
            scripts).
        delta: bits added per extension (>= 1; the reference's ``extend_bit``).

    Example:
        >>> codes = Codes.from_bool(np.tile([[1, 1, 0, 0]], (10, 1)))  # all equal: distance 0 to the centre
        >>> d = ModeCenterRule().decide(image_codes=codes, text_codes=codes, task=0)
        >>> d.n_new_bits, d.stats["image_far_fraction"]
        (0, 0.0)
    """

    name = "mode-center"

    def __init__(self, *, rho: float = 0.1, delta: int = 1) -> None:
        self.rho = _check_rho(rho)
        self.delta = check_int(delta, "delta", minimum=1)

    def __repr__(self) -> str:
        return f"ModeCenterRule(rho={self.rho}, delta={self.delta})"

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name, "rho": self.rho, "delta": self.delta}

    def decide(
        self, *, image_codes: Codes, text_codes: Codes, task: int, labels: np.ndarray | None = None
    ) -> ExtensionDecision:
        image_codes, text_codes, task = self._check_inputs(image_codes, text_codes, task)
        n_bits = image_codes.n_bits
        stats: dict[str, float] = {"n_bits": float(n_bits), "rho": self.rho, "delta": float(self.delta)}
        crowded: list[str] = []
        parts: list[str] = []
        for modality, codes in (("image", image_codes), ("text", text_codes)):
            n = len(codes)
            center = mode_center(codes)
            far = int(np.count_nonzero(2 * mode_center_distances(codes, center) > n_bits)) if n else 0
            threshold = n * self.rho  # the reference compares count > N * rho in floating point
            fraction = far / n if n else 0.0
            stats.update(
                {
                    f"n_{modality}": float(n),
                    f"{modality}_far_count": float(far),
                    f"{modality}_far_fraction": fraction,
                    f"{modality}_threshold_count": threshold,
                    f"{modality}_tied_bits": float(np.count_nonzero(center == 0)) if n else 0.0,
                }
            )
            if far > threshold:
                crowded.append(modality)
            parts.append(f"{modality} {_percent(fraction)} ({far}/{n})")
        summary = (
            f"after task {task}: codes farther than K/2={n_bits / 2:g} bits from their mode centre: "
            f"{', '.join(parts)}; threshold rho={_percent(self.rho)}"
        )
        if crowded:
            decision = ExtensionDecision(
                self.delta,
                f"extend {n_bits} -> {n_bits + self.delta} bits: {' and '.join(crowded)} above threshold; {summary}",
                stats,
            )
        else:
            decision = ExtensionDecision(0, f"keep {n_bits} bits: no modality above threshold; {summary}", stats)
        _logger.info("ModeCenterRule: %s", decision.reason)
        return decision


class NeverExtend(ExtensionPolicy):
    """Fixed code length: never extends (PBEH without extension, the reference's ``rho = 1``).

    Example:
        >>> c = Codes.from_bool([[1, 0]])
        >>> NeverExtend().decide(image_codes=c, text_codes=c, task=3).n_new_bits
        0
    """

    name = "never"

    def __repr__(self) -> str:
        return "NeverExtend()"

    def to_config(self) -> dict[str, Any]:
        return {"name": self.name}

    def decide(
        self, *, image_codes: Codes, text_codes: Codes, task: int, labels: np.ndarray | None = None
    ) -> ExtensionDecision:
        image_codes, _, task = self._check_inputs(image_codes, text_codes, task)
        return ExtensionDecision(
            0, f"keep {image_codes.n_bits} bits after task {task}: policy 'never' keeps the length fixed", {}
        )


class FixedSchedule(ExtensionPolicy):
    """A predetermined number of new bits after each task, whatever the codes look like.

    Give exactly one of ``bits_per_task`` (the same after every task) or ``schedule`` (``{task: n_new_bits}``,
    tasks not listed add nothing). The task is the one just finished: ``schedule={0: 8}`` widens the code by 8 bits
    before task 1.

    Args:
        bits_per_task: bits added after every task (>= 0).
        schedule: bits added after specific tasks (keys: task indices >= 0; values >= 0).

    Example:
        >>> c = Codes.from_bool([[1, 0]])
        >>> policy = FixedSchedule(schedule={1: 4})
        >>> [policy.decide(image_codes=c, text_codes=c, task=t).n_new_bits for t in range(3)]
        [0, 4, 0]
    """

    name = "fixed"

    def __init__(self, *, bits_per_task: int | None = None, schedule: Mapping[int, int] | None = None) -> None:
        if (bits_per_task is None) == (schedule is None):
            raise ValueError(
                f"bits_per_task, schedule: expected exactly one of them, got bits_per_task={bits_per_task!r} and "
                f"schedule={schedule!r}"
            )
        self.bits_per_task = None if bits_per_task is None else check_int(bits_per_task, "bits_per_task", minimum=0)
        self.schedule: dict[int, int] | None = None
        if schedule is not None:
            if not isinstance(schedule, Mapping):
                raise TypeError(f"schedule: expected a mapping {{task: n_new_bits}}, got {type(schedule).__name__}")
            self.schedule = {
                check_int(task, "schedule key (task)", minimum=0): check_int(bits, f"schedule[{task}]", minimum=0)
                for task, bits in sorted(schedule.items())
            }

    def __repr__(self) -> str:
        if self.schedule is None:
            return f"FixedSchedule(bits_per_task={self.bits_per_task})"
        return f"FixedSchedule(schedule={self.schedule})"

    def to_config(self) -> dict[str, Any]:
        if self.schedule is None:
            return {"name": self.name, "bits_per_task": self.bits_per_task}
        # JSON object keys are strings; extension_policy_from_config turns them back into ints.
        return {"name": self.name, "schedule": {str(task): bits for task, bits in self.schedule.items()}}

    def decide(
        self, *, image_codes: Codes, text_codes: Codes, task: int, labels: np.ndarray | None = None
    ) -> ExtensionDecision:
        image_codes, _, task = self._check_inputs(image_codes, text_codes, task)
        if self.schedule is None:
            n_new = self.bits_per_task
            source = f"bits_per_task={self.bits_per_task}"
        else:
            n_new = self.schedule.get(task, 0)
            if task in self.schedule:
                source = f"schedule lists {n_new} bits after task {task}"
            else:
                source = f"task {task} not in the schedule"
        n_bits = image_codes.n_bits
        action = f"extend {n_bits} -> {n_bits + n_new} bits" if n_new else f"keep {n_bits} bits"
        return ExtensionDecision(n_new, f"{action} after task {task}: fixed schedule ({source})", {})


class _LabelAwareRule(ExtensionPolicy):
    """A rule that measures, per direction (I→T, T→I), the share of stored items that are crowded in some
    label-aware sense and extends by ``delta`` bits when either share exceeds ``rho``. Subclasses give
    :meth:`_fraction`, the stats key prefix and a sentence saying what "crowded" means."""

    rho: float
    delta: int
    _stat_prefix: ClassVar[str]

    @abc.abstractmethod
    def _fraction(self, queries: Codes, database: Codes, labels: np.ndarray) -> float:
        """Share of (sampled) ``queries`` items that are crowded against ``database``."""

    @abc.abstractmethod
    def _condition(self, n_bits: int) -> str:
        """What a crowded item is, at ``n_bits`` bits, for the decision's reason."""

    def _extra_stats(self) -> dict[str, float]:
        return {}

    def decide(
        self, *, image_codes: Codes, text_codes: Codes, task: int, labels: np.ndarray | None = None
    ) -> ExtensionDecision:
        image_codes, text_codes, task = self._check_inputs(image_codes, text_codes, task)
        rule = type(self).__name__
        labels = _check_labels(labels, len(image_codes), rule)
        k = image_codes.n_bits
        i2t = self._fraction(image_codes, text_codes, labels)
        t2i = self._fraction(text_codes, image_codes, labels)
        stats = {f"{self._stat_prefix}_i2t": i2t, f"{self._stat_prefix}_t2i": t2i, "rho": self.rho}
        stats.update(self._extra_stats())
        crowded = [name for name, value in (("I→T", i2t), ("T→I", t2i)) if value > self.rho]
        detail = (
            f"after task {task}: {self._condition(k)}: I→T {_percent(i2t)}, T→I {_percent(t2i)}; "
            f"threshold rho={_percent(self.rho)}"
        )
        if crowded:
            decision = ExtensionDecision(
                self.delta, f"extend {k} -> {k + self.delta} bits: {' and '.join(crowded)} crowded; {detail}", stats
            )
        else:
            decision = ExtensionDecision(0, f"keep {k} bits: no direction above threshold; {detail}", stats)
        _logger.info("%s: %s", rule, decision.reason)
        return decision


class CollisionRule(_LabelAwareRule):
    """pbeh's crowding rule: extend when too many stored items collide with an item they share no label with.

    The Hamming space is "crowded" when codes of unrelated items coincide: a query then cannot tell them apart
    whatever the ranking. After each task, over the ``N`` stored items of the newest length, for the I→T direction
    an item ``i`` *collides* when some item ``j`` whose labels are disjoint from ``i``'s has
    ``Ham(image_i, text_j) <= radius``; T→I likewise with the roles swapped. If the colliding fraction exceeds
    ``rho`` in either direction, the code grows by ``delta`` bits before the next task.

    Unlike :class:`ModeCenterRule`, this looks at what retrieval suffers from (unrelated items that look alike)
    rather than at the spread around one centre: codes of a few classes share most bits, so the mode-centre rule
    can stay silent while whole classes share one code (measured on Wikipedia-5: 0 % of codes beyond K/2 from the
    centre after every task, at 32 bits). At most ``max_items`` items are checked per direction (a seeded sample),
    so the cost is bounded by ``max_items * N`` code comparisons.

    Args:
        rho: colliding fraction above which the code grows (``0 <= rho <= 1``; 1 never extends).
        delta: bits added per extension.
        radius: Hamming radius of a collision (0 = identical codes).
        max_items: items checked per direction (a seeded random sample when there are more).
        seed: seed of that sample.

    Example:
        >>> codes = Codes.from_bool([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]])
        >>> labels = np.array([[1, 0], [0, 1], [0, 1]])
        >>> CollisionRule(rho=0.5).decide(image_codes=codes, text_codes=codes, task=0, labels=labels).n_new_bits
        1
    """

    name = "collision"
    _stat_prefix = "collision"

    def __init__(
        self, *, rho: float = 0.1, delta: int = 1, radius: int = 0, max_items: int = 4096, seed: int = 0
    ) -> None:
        self.rho = _check_rho(rho)
        self.delta = check_int(delta, "delta", minimum=1)
        self.radius = check_int(radius, "radius", minimum=0)
        self.max_items = check_int(max_items, "max_items", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)

    def __repr__(self) -> str:
        return (
            f"CollisionRule(rho={self.rho}, delta={self.delta}, radius={self.radius}, "
            f"max_items={self.max_items}, seed={self.seed})"
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rho": self.rho,
            "delta": self.delta,
            "radius": self.radius,
            "max_items": self.max_items,
            "seed": self.seed,
        }

    def collision_fraction(self, queries: Codes, database: Codes, labels: np.ndarray) -> float:
        """Fraction of (sampled) items i with an unrelated item j at Ham(queries_i, database_j) <= radius."""

        def collides(distances: np.ndarray, unrelated: np.ndarray) -> np.ndarray:
            return np.any((distances <= self.radius) & unrelated, axis=1)

        return _flagged_fraction(queries, database, labels, collides, max_items=self.max_items, seed=self.seed)

    def _fraction(self, queries: Codes, database: Codes, labels: np.ndarray) -> float:
        return self.collision_fraction(queries, database, labels)

    def _condition(self, n_bits: int) -> str:
        return f"items with an unrelated item within Hamming radius {self.radius} at {n_bits} bits"

    def _extra_stats(self) -> dict[str, float]:
        return {"radius": float(self.radius)}


class TieRule(_LabelAwareRule):
    """pbeh's tie-crowding rule: extend when the top of the ranking is a lottery that mixes in unrelated items.

    A short code crowds without any collision of unrelated items. Measured on MIRFLICKR730 in 8 tasks at 8 bits
    (docs/results.md): 585 stored items took 25 distinct image codes, no item had an unrelated item within Hamming
    radius 2 (so :class:`CollisionRule` stays silent), yet fixed length at 15 bits scored 0.709 / 0.678 unified
    (I→T / T→I) against 0.685 / 0.648 at 8 bits (3 seeds). What a user sees is the top ``k``: when more than ``k``
    items tie at the nearest distance, the top ``k`` is drawn by lot from that group, and when the group holds an
    item that shares no label with the query, no ranking at this length can keep it out.

    After each task, over the ``N`` stored items of the newest length, an item ``i`` is *crowded* (I→T) when the
    stored texts at the smallest Hamming distance from its image code number more than ``k`` and include one whose
    labels are disjoint from ``i``'s; T→I likewise with the roles swapped. If the crowded fraction exceeds ``rho`` in
    either direction, the code grows by ``delta`` bits. A class whose items share one code is not crowded (its tie
    group is all relevant), so well-separated single-label classes never trigger it.

    Args:
        rho: crowded fraction above which the code grows (``0 <= rho <= 1``; 1 never extends).
        delta: bits added per extension.
        k: the top of the ranking a user sees; a nearest tie group larger than ``k`` is a lottery.
        max_items: items checked per direction (a seeded sample when there are more).
        seed: seed of that sample.

    Example:
        >>> codes = Codes.from_bool([[0, 0]] * 3 + [[1, 1]])  # three items share a code, one of them unrelated
        >>> labels = np.array([[1, 0], [1, 0], [0, 1], [0, 1]])
        >>> TieRule(k=2, rho=0.5).decide(image_codes=codes, text_codes=codes, task=0, labels=labels).n_new_bits
        1
        >>> TieRule(k=3, rho=0.5).decide(image_codes=codes, text_codes=codes, task=0, labels=labels).n_new_bits
        0
    """

    name = "ties"
    _stat_prefix = "crowded"

    def __init__(self, *, rho: float = 0.1, delta: int = 1, k: int = 10, max_items: int = 4096, seed: int = 0) -> None:
        self.rho = _check_rho(rho)
        self.delta = check_int(delta, "delta", minimum=1)
        self.k = check_int(k, "k", minimum=1)
        self.max_items = check_int(max_items, "max_items", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)

    def __repr__(self) -> str:
        return f"TieRule(rho={self.rho}, delta={self.delta}, k={self.k}, max_items={self.max_items}, seed={self.seed})"

    def to_config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rho": self.rho,
            "delta": self.delta,
            "k": self.k,
            "max_items": self.max_items,
            "seed": self.seed,
        }

    def crowded_fraction(self, queries: Codes, database: Codes, labels: np.ndarray) -> float:
        """Fraction of (sampled) items whose nearest tie group in ``database`` has more than ``k`` items, one of
        them unrelated."""

        def crowded(distances: np.ndarray, unrelated: np.ndarray) -> np.ndarray:
            nearest = distances == distances.min(axis=1, keepdims=True)
            return (nearest.sum(axis=1) > self.k) & np.any(nearest & unrelated, axis=1)

        return _flagged_fraction(queries, database, labels, crowded, max_items=self.max_items, seed=self.seed)

    def _fraction(self, queries: Codes, database: Codes, labels: np.ndarray) -> float:
        return self.crowded_fraction(queries, database, labels)

    def _condition(self, n_bits: int) -> str:
        return f"items whose nearest tie group at {n_bits} bits has more than {self.k} items, one of them unrelated"

    def _extra_stats(self) -> dict[str, float]:
        return {"k": float(self.k)}


# ---------------------------------------------------------------------------------------------------- registry
_POLICIES: dict[str, type[ExtensionPolicy]] = {
    ModeCenterRule.name: ModeCenterRule,
    NeverExtend.name: NeverExtend,
    FixedSchedule.name: FixedSchedule,
    CollisionRule.name: CollisionRule,
    TieRule.name: TieRule,
}


def make_extension_policy(name: str, **kwargs: Any) -> ExtensionPolicy:
    """Build a policy by name: ``"mode-center"`` (:class:`ModeCenterRule`), ``"collision"`` (:class:`CollisionRule`),
    ``"ties"`` (:class:`TieRule`), ``"never"``, ``"fixed"``.

    Example:
        >>> make_extension_policy("mode-center", rho=0.02)
        ModeCenterRule(rho=0.02, delta=1)
    """
    if name == "mode-center":
        cls: type[ExtensionPolicy] = ModeCenterRule
    elif name == "never":
        cls = NeverExtend
    elif name == "fixed":
        cls = FixedSchedule
    elif name == "collision":
        cls = CollisionRule
    elif name == "ties":
        cls = TieRule
    else:
        raise ValueError(f"name: expected one of {sorted(_POLICIES)}, got {name!r}")
    try:
        return cls(**kwargs)
    except TypeError as error:
        if "unexpected keyword" in str(error) or "takes no arguments" in str(error):
            raise TypeError(f"{name!r} extension policy: unexpected option(s) {sorted(kwargs)} ({error})") from error
        raise


def extension_policy_from_config(config: Mapping[str, Any]) -> ExtensionPolicy:
    """Rebuild a policy from :meth:`ExtensionPolicy.to_config` (also after a JSON round trip).

    Example:
        >>> extension_policy_from_config({"name": "fixed", "schedule": {"0": 2}})
        FixedSchedule(schedule={0: 2})
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a mapping with a 'name' key, got {type(config).__name__}")
    if "name" not in config:
        raise ValueError(f"config: expected a 'name' key among {sorted(_POLICIES)}, got keys {sorted(config)}")
    kwargs = {key: value for key, value in config.items() if key != "name"}
    if config["name"] == "fixed" and isinstance(kwargs.get("schedule"), Mapping):
        schedule = {}
        for task, bits in kwargs["schedule"].items():
            try:
                schedule[int(task)] = bits
            except (TypeError, ValueError):
                raise ValueError(f"config['schedule']: expected integer task keys, got {task!r}") from None
        kwargs["schedule"] = schedule
    return make_extension_policy(config["name"], **kwargs)


# ---------------------------------------------------------------------------------------------------- collapse
def code_collapse_report(codes: Codes) -> dict[str, Any]:
    """Summary of how degenerate a batch of codes is (the trainer warns when codes collapse).

    Keys:
        ``n_codes``, ``n_bits``;
        ``constant_bits``: indices of the bits with the same value in every code, ``n_constant_bits`` their count;
        ``ones_fraction_min`` / ``ones_fraction_max``: the least / most often set bit's frequency;
        ``n_distinct_codes``; ``most_common_code_fraction``: the share of the most frequent code;
        ``all_equal``: every code is the same;
        ``collapsed``: at least two codes and (a constant bit or all codes equal).

    With fewer than two codes nothing can be judged: ``collapsed`` is False (and for zero codes the bit statistics
    are empty/zero).

    Example:
        >>> report = code_collapse_report(Codes.from_bool([[1, 0, 1], [1, 1, 0], [1, 0, 0]]))
        >>> report["constant_bits"], report["n_distinct_codes"], report["collapsed"]
        ([0], 3, True)
    """
    codes = check_codes(codes, "codes")
    n = len(codes)
    if n == 0:
        return {
            "n_codes": 0,
            "n_bits": codes.n_bits,
            "n_constant_bits": 0,
            "constant_bits": [],
            "ones_fraction_min": 0.0,
            "ones_fraction_max": 0.0,
            "n_distinct_codes": 0,
            "most_common_code_fraction": 0.0,
            "all_equal": False,
            "collapsed": False,
        }
    ones = _ones_per_bit(codes)
    constant = np.flatnonzero((ones == 0) | (ones == n))
    _, counts = np.unique(codes.packed, axis=0, return_counts=True)
    n_distinct = len(counts)
    all_equal = n_distinct == 1
    return {
        "n_codes": n,
        "n_bits": codes.n_bits,
        "n_constant_bits": len(constant),
        "constant_bits": constant.tolist(),
        "ones_fraction_min": float(ones.min() / n),
        "ones_fraction_max": float(ones.max() / n),
        "n_distinct_codes": n_distinct,
        "most_common_code_fraction": float(counts.max() / n),
        "all_equal": all_equal,
        "collapsed": n >= 2 and (len(constant) > 0 or all_equal),
    }
