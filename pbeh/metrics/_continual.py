"""Continual-learning results: :class:`ContinualMatrix` (``R[t, i]`` per direction, row means, BWT, forgetting,
per-task scalar series) with JSON and CSV files."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._validation import check_choice, check_positive_int, check_real
from ..serialization import FormatError, atomic_write_bytes, read_json, write_json

PathLike = str | os.PathLike[str]


_FORMAT_KIND = "pbeh.continual_matrix"
_FORMAT_VERSION = 1


def _check_index(value: Any, name: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int task index, got {type(value).__name__}")
    if not 0 <= value < upper:
        raise ValueError(f"{name}: expected a task index in 0..{upper - 1}, got {value}")
    return int(value)


def _check_value(value: Any, name: str, *, allow_nan: bool = False) -> float:
    value = check_real(value, name)
    if math.isnan(value) and allow_nan:
        return value
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return value


def _json_list(values: np.ndarray) -> list:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


class ContinualMatrix:
    """Per-task retrieval results of a continual run, with BWT and forgetting.

    ``R[t, i]`` is the score (e.g. mAP@1000) after training task ``t`` of query set ``i`` against database ``i``,
    for ``i <= t``, one matrix per direction (``"i2t"``, ``"t2i"``). Unfilled entries are NaN. Tasks are 0-based.
    Extra per-task scalar series (``"unified_i2t"``, ``"prefix_drift"``, ``"n_bits"``, ...) are kept beside.

    Definitions, over the rows evaluated so far (``t_last`` = the last complete row, i.e. with every ``i <= t``):

    * row mean: mean of ``R[t, 0..t]`` (NaN for an incomplete row);
    * BWT (Lopez-Paz & Ranzato): ``1/t_last * sum_{i < t_last} (R[t_last, i] - R[i, i])``; negative = forgetting;
    * forgetting (CODA-Prompt): ``1/t_last * sum_{t=1}^{t_last} (1/t) sum_{i<t} (R[t-1, i] - R[t, i])``;
      positive = forgetting.

    Both are None when undefined (fewer than two tasks evaluated, or a needed entry missing).

    Example:
        >>> m = ContinualMatrix(2)
        >>> m.record(0, 0, "i2t", 0.8)
        >>> m.record(1, 0, "i2t", 0.6)
        >>> m.record(1, 1, "i2t", 0.7)
        >>> round(m.bwt("i2t"), 6), round(m.forgetting("i2t"), 6), round(m.final_mean("i2t"), 6)
        (-0.2, 0.2, 0.65)
    """

    def __init__(self, n_tasks: int, *, directions: Sequence[str] = ("i2t", "t2i")) -> None:
        self.n_tasks = check_positive_int(n_tasks, "n_tasks")
        if isinstance(directions, str) or not isinstance(directions, Sequence):
            raise TypeError(f"directions: expected a sequence of names such as ('i2t', 't2i'), got {directions!r}")
        names = tuple(directions)
        if not names:
            raise ValueError("directions: expected at least one direction name, got none")
        for d in names:
            if not isinstance(d, str) or not d:
                raise ValueError(f"directions: expected non-empty strings, got {d!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"directions: expected distinct names, got {names}")
        self.directions: tuple[str, ...] = names
        self._matrices = {d: np.full((self.n_tasks, self.n_tasks), np.nan) for d in names}
        self._scalars: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ recording
    def _check_direction(self, direction: Any) -> str:
        return check_choice(direction, "direction", self.directions, bracketed=False)

    def record(self, t: int, i: int, direction: str, value: float) -> None:
        """Set ``R[t, i]`` of ``direction`` (after training task ``t``, query/database set ``i <= t``)."""
        direction = self._check_direction(direction)
        t = _check_index(t, "t", self.n_tasks)
        i = _check_index(i, "i", self.n_tasks)
        if i > t:
            raise ValueError(f"i: task {i} is evaluated only after it is trained, so i <= t is required (t={t})")
        self._matrices[direction][t, i] = _check_value(value, "value")

    def record_scalar(self, name: str, t: int, value: float) -> None:
        """Set the per-task scalar ``name`` (e.g. ``"unified_i2t"``, ``"prefix_drift"``) for task ``t``.

        NaN is accepted and means "undefined" (e.g. no prefix drift before the first extension); it is stored as
        ``null`` in JSON. Infinite values are rejected.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name: expected a non-empty string, got {name!r}")
        t = _check_index(t, "t", self.n_tasks)
        series = self._scalars.setdefault(name, np.full(self.n_tasks, np.nan))
        series[t] = _check_value(value, "value", allow_nan=True)

    @property
    def scalars(self) -> dict[str, np.ndarray]:
        """Copies of the scalar series, ``name -> float64 (n_tasks,)`` with NaN where not recorded."""
        return {name: series.copy() for name, series in self._scalars.items()}

    # ------------------------------------------------------------------ summaries
    def matrix(self, direction: str) -> np.ndarray:
        """A copy of ``R`` for ``direction``, float64 ``(n_tasks, n_tasks)``, NaN where not filled."""
        return self._matrices[self._check_direction(direction)].copy()

    def row_means(self, direction: str) -> np.ndarray:
        """Mean of ``R[t, 0..t]`` for every ``t``; NaN for a row with a missing entry."""
        r = self._matrices[self._check_direction(direction)]
        out = np.full(self.n_tasks, np.nan)
        for t in range(self.n_tasks):
            row = r[t, : t + 1]
            if not np.isnan(row).any():
                out[t] = row.mean()
        return out

    def _last_complete_row(self, direction: str) -> int | None:
        complete = np.flatnonzero(~np.isnan(self.row_means(direction)))
        return int(complete[-1]) if complete.size else None

    def final_mean(self, direction: str) -> float | None:
        """Row mean of the last complete row (the usual headline number); None if no row is complete."""
        t = self._last_complete_row(direction)
        return None if t is None else float(self.row_means(direction)[t])

    def bwt(self, direction: str) -> float | None:
        """Backward transfer ``1/t_last * sum_{i<t_last} (R[t_last, i] - R[i, i])``; None when undefined."""
        t = self._last_complete_row(direction)
        if t is None or t < 1:
            return None
        r = self._matrices[direction]
        diag = np.diag(r)[:t]
        if np.isnan(diag).any():
            return None
        return float(np.mean(r[t, :t] - diag))

    def forgetting(self, direction: str) -> float | None:
        """CODA-Prompt forgetting over rows ``0..t_last`` (all must be complete); None when undefined."""
        t_last = self._last_complete_row(direction)
        if t_last is None or t_last < 1:
            return None
        if np.isnan(self.row_means(direction)[: t_last + 1]).any():
            return None
        r = self._matrices[direction]
        per_step = [float(np.mean(r[t - 1, :t] - r[t, :t])) for t in range(1, t_last + 1)]
        return float(np.mean(per_step))

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN becomes ``None``)."""
        return {
            "kind": _FORMAT_KIND,
            "format_version": _FORMAT_VERSION,
            "n_tasks": self.n_tasks,
            "directions": list(self.directions),
            "matrices": {d: [_json_list(row) for row in self._matrices[d]] for d in self.directions},
            "scalars": {name: _json_list(series) for name, series in self._scalars.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ContinualMatrix:
        """Rebuild from :meth:`to_dict` output; raises :class:`~pbeh.serialization.FormatError` if malformed."""
        if not isinstance(data, Mapping):
            raise FormatError(f"data: expected a dict from ContinualMatrix.to_dict, got {type(data).__name__}")
        if data.get("kind") != _FORMAT_KIND:
            raise FormatError(f"data: expected kind {_FORMAT_KIND!r}, got {data.get('kind')!r}")
        if data.get("format_version") != _FORMAT_VERSION:
            raise FormatError(
                f"data: this pbeh reads ContinualMatrix format_version {_FORMAT_VERSION}, "
                f"got {data.get('format_version')!r}"
            )
        # Bound what the file may ask to allocate by what it holds: n_tasks rows must be present in the matrices.
        n_claimed, held = data.get("n_tasks"), data.get("matrices")
        if isinstance(n_claimed, int) and isinstance(held, Mapping):
            rows = max((len(v) for v in held.values() if isinstance(v, list)), default=0)
            if n_claimed > rows:
                raise FormatError(f"data: n_tasks is {n_claimed} but the matrices hold {rows} rows")
        directions = data.get("directions")
        if isinstance(directions, list) and len(directions) > 16:
            raise FormatError(f"data: 'directions' must list at most 16 directions, got {len(directions)}")
        try:
            out = cls(data["n_tasks"], directions=data["directions"])
        except KeyError as exc:
            raise FormatError(f"data: missing key {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise FormatError(f"data: {exc}") from exc
        matrices, scalars = data.get("matrices"), data.get("scalars", {})
        if not isinstance(matrices, Mapping) or set(matrices) != set(out.directions):
            raise FormatError(f"data: 'matrices' must hold exactly the directions {list(out.directions)}")
        if not isinstance(scalars, Mapping):
            raise FormatError("data: 'scalars' must be a dict of per-task lists")
        n = out.n_tasks
        for d in out.directions:
            rows = matrices[d]
            square = isinstance(rows, list) and len(rows) == n
            if not square or any(not isinstance(x, list) or len(x) != n for x in rows):
                raise FormatError(f"data: matrix {d!r} must be a {n}x{n} list of lists")
            for t, row in enumerate(rows):
                for i, value in enumerate(row):
                    if value is None:
                        continue
                    if i > t:
                        raise FormatError(f"data: matrix {d!r} has a value above the diagonal at [{t}, {i}]")
                    try:
                        out.record(t, i, d, value)
                    except (TypeError, ValueError) as exc:
                        raise FormatError(f"data: matrix {d!r} [{t}, {i}]: {exc}") from exc
        for name, series in scalars.items():
            if not isinstance(series, list) or len(series) != n:
                raise FormatError(f"data: scalar {name!r} must be a list of {n} values")
            for t, value in enumerate(series):
                if value is None:
                    continue
                try:
                    out.record_scalar(name, t, value)
                except (TypeError, ValueError) as exc:
                    raise FormatError(f"data: scalar {name!r} [{t}]: {exc}") from exc
            out._scalars.setdefault(name, np.full(n, np.nan))
        return out

    def save_json(self, path: PathLike) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load_json(cls, path: PathLike) -> ContinualMatrix:
        """Read a file written by :meth:`save_json`."""
        return cls.from_dict(read_json(path, what="continual matrix JSON"))

    def to_csv(self, path: PathLike | None = None) -> str:
        """CSV text, one row per (direction, t): ``direction, t, task_0 .. task_{T-1}, mean`` (empty = NaN).

        Written atomically to ``path`` when given; the text is returned either way.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["direction", "t", *[f"task_{i}" for i in range(self.n_tasks)], "mean"])

        def cell(v: float) -> str:
            return "" if math.isnan(v) else repr(float(v))

        for d in self.directions:
            means = self.row_means(d)
            for t in range(self.n_tasks):
                writer.writerow([d, t, *[cell(v) for v in self._matrices[d][t]], cell(means[t])])
        text = buffer.getvalue()
        if path is not None:
            atomic_write_bytes(path, text.encode("utf-8"))
        return text

    def format_table(self, direction: str | None = None) -> str:
        """A plain-text table per direction (rows t, columns i, row means) with BWT and forgetting."""
        directions = self.directions if direction is None else (self._check_direction(direction),)

        def fmt(v: float | None) -> str:
            return "-" if v is None or math.isnan(v) else f"{v:.4f}"

        blocks = []
        for d in directions:
            header = ["after t"] + [f"i={i}" for i in range(self.n_tasks)] + ["mean"]
            rows = [header]
            means = self.row_means(d)
            for t in range(self.n_tasks):
                rows.append([str(t)] + [fmt(v) for v in self._matrices[d][t]] + [fmt(means[t])])
            widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
            lines = [f"{d}: R[t, i] after training task t, query set i against database i"]
            lines += ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
            summary = f"final mean {fmt(self.final_mean(d))}  BWT {fmt(self.bwt(d))}"
            lines.append(f"{summary}  forgetting {fmt(self.forgetting(d))}")
            blocks.append("\n".join(lines))
        if direction is None and self._scalars:
            names = sorted(self._scalars)
            width = max(len(n) for n in names)
            lines = ["scalars (per task t)"]
            for name in names:
                lines.append(name.ljust(width) + "  " + "  ".join(fmt(v) for v in self._scalars[name]))
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)

    def __repr__(self) -> str:
        return f"ContinualMatrix(n_tasks={self.n_tasks}, directions={self.directions})"
