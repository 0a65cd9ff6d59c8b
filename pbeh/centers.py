"""Class centres: one fixed ±1 target code per class, shared by every task of the stream.

Each class gets a centre the first time a task brings it: a ``K``-bit ±1 code chosen, among seeded random
candidates, as far as possible (in Hamming distance) from the centres already given out. After that the centre never
changes, so it is a coordinate system that every task shares. Training pulls each item's hash output, in both
modalities, toward its target: the centre of its class, or for an item with several labels the bitwise majority of
their centres (a tied bit is left free). Because the centres of old classes stay where they were, the codes stored
for an old task sit around the same points that today's model maps that task's queries to (the class-prototype
replay keeps pulling pseudo items of old classes there), and a new class is sent to a point that is far from every
old class's centre: new tasks' codes do not land on top of old ones. This is the hash-centre idea of central
similarity quantisation (Yuan et al., CVPR 2020) used as the fixed, backward-compatible classifier of the BCT line
of work: the old "classifier" is the table of centres, and it does not drift.

When the code grows (bit extension), every centre gets the new bits, drawn the same greedy way, so the longer
centres stay apart; the old bits stay as they were, so the prefix the stored codes have keeps its meaning.

Example:
    >>> import numpy as np
    >>> centres = ClassCenters(n_classes=4, n_bits=8, seed=0)
    >>> centres.assign([0, 1])
    >>> centres.assigned.tolist()
    [True, True, False, False]
    >>> targets = centres.targets(np.array([[1, 0, 0, 0], [0, 0, 1, 0]]))
    >>> targets.shape, bool(np.all(targets[1] == 0))  # class 2 has no centre yet: no pull
    ((2, 8), True)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

__all__ = ["ClassCenters"]

_CANDIDATES = 2048


class ClassCenters:
    """The centre table of a stream: ``n_classes`` rows of ``n_bits`` ±1 values, filled as classes arrive.

    Args:
        n_classes: width of the global label space.
        n_bits: code length of the centres (follows the model's code length: see :meth:`extend`).
        seed: seeds the candidate draws; the table depends only on it and on the order classes arrive in.
        candidates: random candidates drawn per new class (or per block of new bits); the one farthest from the
            centres already assigned is kept.
    """

    def __init__(self, n_classes: int, n_bits: int, *, seed: int = 0, candidates: int = _CANDIDATES) -> None:
        for name, value in (("n_classes", n_classes), ("n_bits", n_bits), ("candidates", candidates)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
        self.n_classes = int(n_classes)
        self.seed = int(seed)
        self.candidates = int(candidates)
        self.centers = np.zeros((self.n_classes, int(n_bits)), dtype=np.int8)
        self.assigned = np.zeros(self.n_classes, dtype=bool)
        self._draws = 0  # how many greedy draws so far: the next draw's seed (reproducible on resume)

    @property
    def n_bits(self) -> int:
        return int(self.centers.shape[1])

    def __len__(self) -> int:
        """How many classes have a centre."""
        return int(self.assigned.sum())

    def _rng(self) -> np.random.Generator:
        rng = np.random.default_rng([self.seed, self._draws])
        self._draws += 1
        return rng

    def assign(self, classes: Iterable[int]) -> None:
        """Give a centre to each class in ``classes`` (global indices) that has none yet, in ascending order.

        Each new centre is the candidate with the largest distance to its nearest assigned centre (the first such
        candidate on a tie).
        """
        wanted = np.unique(np.asarray(list(classes), dtype=np.int64))
        if len(wanted) and (wanted[0] < 0 or wanted[-1] >= self.n_classes):
            raise ValueError(f"classes: expected indices in [0, {self.n_classes}), got {wanted.tolist()}")
        k = self.n_bits
        for c in wanted[~self.assigned[wanted]]:
            candidates = self._rng().choice(np.array([-1, 1], dtype=np.int8), size=(self.candidates, k))
            if self.assigned.any():
                inner = candidates.astype(np.int32) @ self.centers[self.assigned].astype(np.int32).T
                nearest = (k - inner.max(axis=1)) // 2  # Hamming distance to the nearest assigned centre
                best = int(np.argmax(nearest))
            else:
                best = 0
            self.centers[c] = candidates[best]
            self.assigned[c] = True

    def extend(self, n_new_bits: int) -> None:
        """Append ``n_new_bits`` bits to every centre (assigned ones get greedy new bits; the old bits stay)."""
        if isinstance(n_new_bits, bool) or not isinstance(n_new_bits, (int, np.integer)) or n_new_bits < 1:
            raise ValueError(f"n_new_bits: expected an integer >= 1, got {n_new_bits!r}")
        old = self.centers
        self.centers = np.zeros((self.n_classes, old.shape[1] + int(n_new_bits)), dtype=np.int8)
        self.centers[:, : old.shape[1]] = old
        done = np.zeros(self.n_classes, dtype=bool)
        for c in np.flatnonzero(self.assigned):  # each class's new bits: far from the classes extended before it
            tails = self._rng().choice(np.array([-1, 1], dtype=np.int8), size=(self.candidates, int(n_new_bits)))
            if done.any():
                head = old[c].astype(np.int32) @ old[done].astype(np.int32).T  # (m,) inner on the old bits
                inner = head[None, :] + tails.astype(np.int32) @ self.centers[done, old.shape[1] :].astype(np.int32).T
                best = int(np.argmin(inner.max(axis=1)))  # smallest largest inner product: farthest nearest centre
            else:
                best = 0
            self.centers[c, old.shape[1] :] = tails[best]
            done[c] = True

    def targets(self, labels: np.ndarray) -> np.ndarray:
        """Target codes ``(n, n_bits)`` in {−1, 0, +1} for multi-hot ``labels`` ``(n, n_classes)``.

        The bitwise majority of the centres of an item's classes that have one; 0 where the vote ties or where none
        of its classes has a centre (no pull on that bit).
        """
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape[1] != self.n_classes:
            raise ValueError(f"labels: expected shape (n, {self.n_classes}), got {labels.shape}")
        known = (labels != 0) & self.assigned[None, :]
        votes = known.astype(np.int32) @ self.centers.astype(np.int32)
        return np.sign(votes).astype(np.float32)

    def nearest_distances(self) -> np.ndarray:
        """Hamming distance from each assigned centre to its nearest other assigned centre (``inf`` if alone)."""
        table = self.centers[self.assigned].astype(np.int32)
        if len(table) < 2:
            return np.full(len(table), np.inf)
        distance = (self.n_bits - table @ table.T) / 2
        np.fill_diagonal(distance, np.inf)
        return distance.min(axis=1)

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Flat arrays for a safetensors file (keys ``prefix + name``)."""
        return {
            prefix + "centers": np.ascontiguousarray(self.centers),
            prefix + "assigned": self.assigned.astype(np.uint8),
            prefix + "state": np.array([self.seed, self._draws, self.candidates], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str) -> ClassCenters:
        """Inverse of :meth:`to_arrays`; a damaged table raises ``ValueError`` naming the array."""
        missing = [prefix + key for key in ("centers", "assigned", "state") if prefix + key not in arrays]
        if missing:
            raise KeyError(f"class centre arrays missing: {missing}")
        centers = np.asarray(arrays[prefix + "centers"])
        assigned = np.asarray(arrays[prefix + "assigned"])
        state = np.asarray(arrays[prefix + "state"])
        if centers.ndim != 2 or centers.shape[0] < 1 or centers.shape[1] < 1:
            raise ValueError(f"{prefix}centers: expected a (n_classes, n_bits) table, got shape {centers.shape}")
        if assigned.shape != (centers.shape[0],):
            raise ValueError(f"{prefix}assigned: expected shape ({centers.shape[0]},), got {assigned.shape}")
        if state.shape != (3,):
            raise ValueError(f"{prefix}state: expected 3 integers (seed, draws, candidates), got shape {state.shape}")
        on = assigned.astype(bool)
        if not np.all(np.isin(centers[on], (-1, 1))) or np.any(centers[~on] != 0):
            raise ValueError(f"{prefix}centers: expected ±1 rows for assigned classes and 0 rows otherwise")
        table = cls(centers.shape[0], centers.shape[1], seed=int(state[0]), candidates=max(int(state[2]), 1))
        table.centers = centers.astype(np.int8)
        table.assigned = on.copy()
        table._draws = int(state[1])
        return table
