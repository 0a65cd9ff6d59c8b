"""Argument checks shared by the pbeh modules (private: not part of the public API).

Every check raises an exception whose message names the argument, what was expected and what came, as in
``"batch_size: expected a positive int, got float 2.5"``: a :class:`TypeError` when the value has the wrong type, a
:class:`ValueError` when it has the right type but is out of range or not one of the allowed values. On success a
check returns the value in its canonical Python type (``int``, ``float``, ``str``), so callers write
``self.n_bits = check_positive_int(n_bits, "n_bits")``.

Integers are Python ints or numpy integers, never bools (``True`` is an ``int`` to Python, but not a count or a
size to pbeh). Real numbers are ints, floats or numpy scalars, again never bools.

Only numpy is imported at module level: :func:`check_batch_tensor` imports torch when called and :func:`check_codes`
imports :mod:`pbeh.codes` when called (that module uses these checks itself).

Example:
    >>> check_positive_int(3, "n_bits")
    3
    >>> check_choice("text", "modality", ("image", "text"))
    'text'
    >>> check_fraction(0.5, "query_fraction")
    0.5
    >>> check_int(-1, "seed", minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: seed: expected an int >= 0, got -1
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .codes import Codes

__all__ = [
    "check_batch_tensor",
    "check_bool",
    "check_choice",
    "check_codes",
    "check_fraction",
    "check_in_interval",
    "check_int",
    "check_optional_int",
    "check_optional_positive_int",
    "check_positive_int",
    "check_positive_real",
    "check_real",
    "describe",
    "to_numpy",
]

_INT_TYPES = (int, np.integer)
_REAL_TYPES = (int, float, np.integer, np.floating)

# Short reprs in messages: a huge string or array passed by mistake must not flood the error message.
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = 40
_SHORT_REPR.maxother = 40


def describe(value: Any) -> str:
    """The type name and a short repr of ``value``, for the "got ..." part of an error message.

    Example:
        >>> describe(2.5), describe("abc"), describe(None)
        ('float 2.5', "str 'abc'", 'NoneType None')
    """
    return f"{type(value).__name__} {_SHORT_REPR.repr(value)}"


# ------------------------------------------------------------------------------------------------------ integers
def _is_int(value: Any) -> bool:
    return isinstance(value, _INT_TYPES) and not isinstance(value, bool)


def _checked_int(value: Any, name: str, expected: str, minimum: int | None) -> int:
    """``value`` as an int; ``expected`` (such as ``"an int >= 0"``) is what the messages say was expected."""
    if not _is_int(value):
        raise TypeError(f"{name}: expected {expected}, got {describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return int(value)


def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """An int (Python or numpy, not a bool), at least ``minimum`` when one is given.

    Raises:
        TypeError: not an int (``"seed: expected an int >= 0, got str '1'"``).
        ValueError: below ``minimum`` (``"seed: expected an int >= 0, got -1"``).

    Example:
        >>> check_int(np.int64(4), "task", minimum=0)
        4
        >>> check_int(True, "seed")
        Traceback (most recent call last):
        ...
        TypeError: seed: expected an int, got bool True
    """
    expected = "an int" if minimum is None else f"an int >= {minimum}"
    return _checked_int(value, name, expected, minimum)


def check_optional_int(value: Any, name: str) -> int | None:
    """``None`` or an int (not a bool); messages say ``"expected an int or None"``.

    Example:
        >>> check_optional_int(None, "seed") is None, check_optional_int(7, "seed")
        (True, 7)
    """
    if value is None:
        return None
    return _checked_int(value, name, "an int or None", None)


def check_positive_int(value: Any, name: str) -> int:
    """An int >= 1 (Python or numpy, not a bool): a size, a count, a width.

    Raises:
        TypeError: not an int (``"batch_size: expected a positive int, got float 2.5"``).
        ValueError: an int below 1 (``"batch_size: expected a positive int, got 0"``).

    Example:
        >>> check_positive_int(0, "n_bits")
        Traceback (most recent call last):
        ...
        ValueError: n_bits: expected a positive int, got 0
    """
    return _checked_int(value, name, "a positive int", 1)


def check_optional_positive_int(value: Any, name: str) -> int | None:
    """``None`` or an int >= 1 (not a bool).

    The type error says ``"expected a positive int or None"``; the range error (the value was an int) says
    ``"expected a positive int"``.

    Example:
        >>> check_optional_positive_int(None, "chunk_size") is None
        True
        >>> check_optional_positive_int(-1, "chunk_size")
        Traceback (most recent call last):
        ...
        ValueError: chunk_size: expected a positive int, got -1
    """
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(f"{name}: expected a positive int or None, got {describe(value)}")
    return _checked_int(value, name, "a positive int", 1)


# ------------------------------------------------------------------------------------------------------ real numbers
def check_real(value: Any, name: str, *, expected: str = "a real number") -> float:
    """A real number (int, float or numpy scalar, not a bool) as a float; NaN and infinities pass.

    Args:
        value: the argument.
        name: its name in the message.
        expected: what the type error says was expected (a caller that checks a range next names the range here,
            so both of its errors read alike).

    Example:
        >>> check_real(np.float32(0.5), "value")
        0.5
        >>> check_real("0.5", "value")
        Traceback (most recent call last):
        ...
        TypeError: value: expected a real number, got str '0.5'
    """
    if isinstance(value, bool) or not isinstance(value, _REAL_TYPES):
        raise TypeError(f"{name}: expected {expected}, got {describe(value)}")
    return float(value)


def check_positive_real(value: Any, name: str, *, expected: str = "a positive number") -> float:
    """A real number > 0 (infinity passes, NaN does not) as a float.

    Args:
        value: the argument.
        name: its name in the message.
        expected: how the messages name the expected value, e.g. ``"a positive float or None"`` where ``None``
            selects a default before the check.

    Example:
        >>> check_positive_real(2, "feature_norm")
        2.0
        >>> check_positive_real(0.0, "init_std", expected="a positive float or None")
        Traceback (most recent call last):
        ...
        ValueError: init_std: expected a positive float or None, got 0.0
    """
    x = check_real(value, name, expected=expected)
    if not x > 0:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
    return x


def check_in_interval(
    value: Any,
    name: str,
    low: float,
    high: float,
    *,
    closed_low: bool = False,
    closed_high: bool = False,
    kind: str = "a float",
) -> float:
    """A real number in the interval from ``low`` to ``high`` (open ends unless ``closed_*``); NaN is refused.

    Args:
        value: the argument.
        name: its name in the message.
        low, high: the ends of the interval.
        closed_low, closed_high: whether ``low`` / ``high`` themselves are allowed.
        kind: how the messages name the expected value, e.g. ``"a number"`` gives ``"expected a number in [0, 1]"``.

    Raises:
        TypeError: not a real number.
        ValueError: NaN, or outside the interval.

    Example:
        >>> check_in_interval(1, "rho", 0, 1, closed_low=True, closed_high=True, kind="a number")
        1.0
        >>> check_in_interval(0.5, "flip_probability", 0, 0.5)
        Traceback (most recent call last):
        ...
        ValueError: flip_probability: expected a float in (0, 0.5), got 0.5
    """
    interval = f"{'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}"
    expected = f"{kind} in {interval}"
    x = check_real(value, name, expected=expected)
    above_low = x >= low if closed_low else x > low
    below_high = x <= high if closed_high else x < high
    if math.isnan(x) or not (above_low and below_high):
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return x


def check_fraction(value: Any, name: str, *, allow_one: bool = False) -> float:
    """A fraction in ``(0, 1)``, or in ``(0, 1]`` with ``allow_one``.

    Example:
        >>> check_fraction(1, "train_fraction", allow_one=True)
        1.0
        >>> check_fraction(1.0, "query_fraction")
        Traceback (most recent call last):
        ...
        ValueError: query_fraction: expected a float in (0, 1), got 1.0
    """
    return check_in_interval(value, name, 0, 1, closed_high=allow_one)


# ------------------------------------------------------------------------------------------------------ other types
def check_bool(value: Any, name: str) -> bool:
    """``True`` or ``False``; anything else, ints such as 0 and 1 included, is refused.

    Example:
        >>> check_bool(1, "freeze_old")
        Traceback (most recent call last):
        ...
        TypeError: freeze_old: expected a bool, got int 1
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {describe(value)}")
    return value


def check_choice(value: Any, name: str, allowed: Sequence[str], *, bracketed: bool = True) -> str:
    """One of the strings ``allowed``.

    Args:
        value: the argument.
        name: its name in the message.
        allowed: the accepted strings, in the order the message lists them.
        bracketed: list them as a Python list (``['a', 'b']``, the default) or as a plain enumeration
            (``'a', 'b'``).

    Raises:
        ValueError: anything else (also a non-str), naming the allowed values.

    Example:
        >>> check_choice("audio", "modality", ("image", "text"))
        Traceback (most recent call last):
        ...
        ValueError: modality: expected one of ['image', 'text'], got 'audio'
        >>> check_choice("cos", "score", ("hamming", "llr"), bracketed=False)
        Traceback (most recent call last):
        ...
        ValueError: score: expected one of 'hamming', 'llr', got 'cos'
    """
    if isinstance(value, str) and value in allowed:
        return value
    listed = str(list(allowed)) if bracketed else ", ".join(repr(a) for a in allowed)
    raise ValueError(f"{name}: expected one of {listed}, got {value!r}")


def to_numpy(values: Any, name: str) -> np.ndarray:
    """A numpy array from an array, a torch tensor (detached, moved to the CPU) or a nested sequence.

    Raises:
        TypeError: the values do not form a numeric array (numpy would make an object array).

    Example:
        >>> to_numpy([[1, 2], [3, 4]], "values").shape
        (2, 2)
    """
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.dtype == object:
        raise TypeError(f"{name}: expected a numeric array, got an object array")
    return arr


def check_codes(codes: Any, name: str) -> Codes:
    """A :class:`pbeh.Codes`; anything else is refused with a hint on how to build one.

    Example:
        >>> check_codes(np.zeros((2, 1), dtype=np.uint8), "codes")
        Traceback (most recent call last):
        ...
        TypeError: codes: expected pbeh.Codes, got ndarray; wrap packed bytes with Codes.from_packed(packed, n_bits) or real values with Codes.from_signs(values)
    """  # noqa: E501
    from .codes import Codes

    if not isinstance(codes, Codes):
        raise TypeError(
            f"{name}: expected pbeh.Codes, got {type(codes).__name__}; wrap packed bytes with "
            "Codes.from_packed(packed, n_bits) or real values with Codes.from_signs(values)"
        )
    return codes


def check_batch_tensor(
    value: Any,
    name: str,
    *,
    width: int,
    dtype: torch.dtype,
    device: torch.device,
    owner: str,
    context: str = "",
) -> torch.Tensor:
    """A ``(batch, width)`` tensor already of the dtype and on the device of the module that will use it.

    Args:
        value: the argument.
        name: its name in the messages.
        width: the required number of columns.
        dtype, device: the module's dtype and device.
        owner: how the messages name that module (``"hasher"`` gives ``"(the hasher's device)"``).
        context: appended to the expected shape in the shape messages, e.g. ``" for image features"``.

    Raises:
        TypeError: not a tensor, or of another dtype.
        ValueError: another shape, or on another device.

    Example:
        >>> import torch
        >>> x = torch.zeros(3, 4)
        >>> check_batch_tensor(x, "x", width=4, dtype=torch.float32, device=x.device, owner="pool") is x
        True
        >>> check_batch_tensor(x, "x", width=5, dtype=torch.float32, device=x.device, owner="pool")
        Traceback (most recent call last):
        ...
        ValueError: x: expected shape (batch, 5), got (3, 4)
    """
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor of shape (batch, {width}){context}, got {type(value).__name__}"
        )
    if value.ndim != 2 or value.shape[1] != width:
        raise ValueError(f"{name}: expected shape (batch, {width}){context}, got {tuple(value.shape)}")
    if value.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype} (the {owner}'s), got {value.dtype}")
    if value.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the {owner}'s device), got one on {value.device}")
    return value
