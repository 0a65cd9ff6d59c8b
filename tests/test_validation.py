"""Tests of the shared argument checks in pbeh._validation (messages included: the modules' tests rely on them)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pbeh._validation import (
    check_batch_tensor,
    check_bool,
    check_choice,
    check_codes,
    check_fraction,
    check_in_interval,
    check_int,
    check_optional_int,
    check_optional_positive_int,
    check_positive_int,
    check_positive_real,
    check_real,
    describe,
    to_numpy,
)
from pbeh.codes import Codes

# ---------------------------------------------------------------------------------------------------------- describe


def test_describe_names_type_and_value():
    assert describe(2.5) == "float 2.5"
    assert describe("abc") == "str 'abc'"
    assert describe(None) == "NoneType None"
    assert describe(True) == "bool True"


def test_describe_shortens_long_values():
    text = describe("x" * 1000)
    assert text.startswith("str 'xxx")
    assert len(text) < 60
    assert len(describe(np.zeros(10_000))) < 60


# ---------------------------------------------------------------------------------------------------------- integers


@pytest.mark.parametrize("value", [0, 5, -3, np.int64(7), np.uint8(200), np.int32(-1)])
def test_check_int_accepts_python_and_numpy_ints(value):
    out = check_int(value, "seed")
    assert out == int(value)
    assert type(out) is int


@pytest.mark.parametrize(
    ("value", "kwargs", "error", "match"),
    [
        (True, {}, TypeError, r"^seed: expected an int, got bool True$"),
        (1.0, {}, TypeError, r"^seed: expected an int, got float 1\.0$"),
        ("1", {"minimum": 0}, TypeError, r"^seed: expected an int >= 0, got str '1'$"),
        (None, {}, TypeError, r"^seed: expected an int, got NoneType None$"),
        (-1, {"minimum": 0}, ValueError, r"^seed: expected an int >= 0, got -1$"),
        (np.int64(1), {"minimum": 2}, ValueError, r"^seed: expected an int >= 2, got 1$"),
    ],
)
def test_check_int_errors(value, kwargs, error, match):
    with pytest.raises(error, match=match):
        check_int(value, "seed", **kwargs)


@given(minimum=st.integers(-1000, 1000), offset=st.integers(-1000, 1000))
def test_check_int_minimum_property(minimum, offset):
    value = minimum + offset
    if offset >= 0:
        assert check_int(value, "x", minimum=minimum) == value
    else:
        with pytest.raises(ValueError, match=rf"x: expected an int >= {minimum}, got {value}"):
            check_int(value, "x", minimum=minimum)


def test_check_optional_int():
    assert check_optional_int(None, "seed") is None
    assert check_optional_int(np.int16(-4), "seed") == -4
    with pytest.raises(TypeError, match=r"^seed: expected an int or None, got str '1'$"):
        check_optional_int("1", "seed")
    with pytest.raises(TypeError, match=r"^seed: expected an int or None, got bool False$"):
        check_optional_int(False, "seed")


def test_check_positive_int():
    assert check_positive_int(1, "n_bits") == 1
    assert type(check_positive_int(np.int64(64), "n_bits")) is int
    with pytest.raises(ValueError, match=r"^n_bits: expected a positive int, got 0$"):
        check_positive_int(0, "n_bits")
    with pytest.raises(ValueError, match=r"^n_bits: expected a positive int, got -3$"):
        check_positive_int(np.int8(-3), "n_bits")
    with pytest.raises(TypeError, match=r"^k: expected a positive int, got float 1\.5$"):
        check_positive_int(1.5, "k")
    with pytest.raises(TypeError, match=r"^k: expected a positive int, got bool True$"):
        check_positive_int(True, "k")
    with pytest.raises(TypeError, match=r"^k: expected a positive int, got NoneType None$"):
        check_positive_int(None, "k")


def test_check_optional_positive_int():
    assert check_optional_positive_int(None, "chunk_size") is None
    assert check_optional_positive_int(3, "chunk_size") == 3
    with pytest.raises(TypeError, match=r"^chunk_size: expected a positive int or None, got float 2\.0$"):
        check_optional_positive_int(2.0, "chunk_size")
    # The value was an int: the range error names what an int must be.
    with pytest.raises(ValueError, match=r"^chunk_size: expected a positive int, got -1$"):
        check_optional_positive_int(-1, "chunk_size")


# ---------------------------------------------------------------------------------------------------------- reals


@pytest.mark.parametrize("value", [0, 1.5, -2, np.float32(0.25), np.int64(3), math.inf, math.nan])
def test_check_real_accepts_numbers(value):
    out = check_real(value, "value")
    assert type(out) is float
    assert out == float(value) or (math.isnan(out) and math.isnan(value))


@pytest.mark.parametrize("value", ["0.5", True, None, [1.0], np.array([1.0]), 1 + 2j])
def test_check_real_refuses_others(value):
    with pytest.raises(TypeError, match=rf"^value: expected a real number, got {type(value).__name__} "):
        check_real(value, "value")
    with pytest.raises(TypeError, match=r"^rho: expected a number in \[0, 1\], got "):
        check_real(value, "rho", expected="a number in [0, 1]")


def test_check_positive_real():
    assert check_positive_real(2, "feature_norm") == 2.0
    assert check_positive_real(math.inf, "feature_norm") == math.inf
    assert check_positive_real(np.float32(0.5), "init_std") == 0.5
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match=r"^init_std: expected a positive float or None, got "):
            check_positive_real(bad, "init_std", expected="a positive float or None")
    with pytest.raises(ValueError, match=r"^init_std: expected a positive float or None, got 0\.0$"):
        check_positive_real(0.0, "init_std", expected="a positive float or None")
    with pytest.raises(TypeError, match=r"^x: expected a positive number, got str '1'$"):
        check_positive_real("1", "x")


@pytest.mark.parametrize(
    ("closed_low", "closed_high", "text", "inside", "outside"),
    [
        (False, False, "(0, 1)", [0.5, 1e-9], [0, 1, -0.5, 1.5]),
        (True, False, "[0, 1)", [0, 0.5], [1, -1e-9]),
        (False, True, "(0, 1]", [1, 0.5], [0, 1.0000001]),
        (True, True, "[0, 1]", [0, 1, 0.5], [-0.1, 1.1]),
    ],
)
def test_check_in_interval_ends(closed_low, closed_high, text, inside, outside):
    kwargs = {"closed_low": closed_low, "closed_high": closed_high}
    for value in inside:
        assert check_in_interval(value, "p", 0, 1, **kwargs) == float(value)
    for value in [*outside, math.nan]:
        with pytest.raises(ValueError, match=rf"^p: expected a float in {re.escape(text)}, got "):
            check_in_interval(value, "p", 0, 1, **kwargs)


def test_check_in_interval_messages():
    with pytest.raises(ValueError, match=r"^flip_probability: expected a float in \(0, 0\.5\), got 0\.5$"):
        check_in_interval(0.5, "flip_probability", 0, 0.5)
    with pytest.raises(TypeError, match=r"^flip_probability: expected a float in \(0, 0\.5\), got str '0\.1'$"):
        check_in_interval("0.1", "flip_probability", 0, 0.5)
    with pytest.raises(ValueError, match=r"^rho: expected a number in \[0, 1\], got -0\.1$"):
        check_in_interval(-0.1, "rho", 0, 1, closed_low=True, closed_high=True, kind="a number")
    with pytest.raises(ValueError, match=r"^rho: expected a number in \[0, 1\], got nan$"):
        check_in_interval(math.nan, "rho", 0, 1, closed_low=True, closed_high=True, kind="a number")
    with pytest.raises(TypeError, match=r"^rho: expected a number in \[0, 1\], got bool True$"):
        check_in_interval(True, "rho", 0, 1, closed_low=True, closed_high=True, kind="a number")


def test_check_fraction():
    assert check_fraction(0.25, "query_fraction") == 0.25
    assert check_fraction(1, "train_fraction", allow_one=True) == 1.0
    with pytest.raises(ValueError, match=r"^query_fraction: expected a float in \(0, 1\), got 1\.0$"):
        check_fraction(1.0, "query_fraction")
    with pytest.raises(ValueError, match=r"^fraction: expected a float in \(0, 1\), got 0\.0$"):
        check_fraction(0.0, "fraction")
    with pytest.raises(ValueError, match=r"^train_fraction: expected a float in \(0, 1\], got 1\.5$"):
        check_fraction(1.5, "train_fraction", allow_one=True)
    with pytest.raises(TypeError, match=r"^fraction: expected a float in \(0, 1\), got NoneType None$"):
        check_fraction(None, "fraction")


# ---------------------------------------------------------------------------------------------------------- others


def test_check_bool():
    assert check_bool(True, "freeze_old") is True
    assert check_bool(False, "freeze_old") is False


@pytest.mark.parametrize(
    ("value", "shown"), [(1, "int 1"), (0, "int 0"), (np.bool_(True), "bool np.True_"), ("yes", "str 'yes'")]
)
def test_check_bool_refuses_others(value, shown):
    with pytest.raises(TypeError, match=rf"^freeze_old: expected a bool, got {re.escape(shown)}$"):
        check_bool(value, "freeze_old")


def test_check_choice():
    assert check_choice("text", "modality", ("image", "text")) == "text"
    assert check_choice(np.str_("image"), "modality", ("image", "text")) == "image"
    with pytest.raises(ValueError, match=r"^modality: expected one of \['image', 'text'\], got 'audio'$"):
        check_choice("audio", "modality", ("image", "text"))
    with pytest.raises(ValueError, match=r"^ties: expected one of 'reference', 'average', got 'random'$"):
        check_choice("random", "ties", ("reference", "average"), bracketed=False)


@pytest.mark.parametrize("value", [None, 1, ["image"], np.array(["image"]), b"image"])
def test_check_choice_refuses_non_strings(value):
    with pytest.raises(ValueError, match=r"^modality: expected one of \['image', 'text'\], got "):
        check_choice(value, "modality", ("image", "text"))


def test_to_numpy():
    assert to_numpy([[1, 2], [3, 4]], "values").shape == (2, 2)
    t = torch.arange(6.0, requires_grad=True).reshape(2, 3)
    arr = to_numpy(t, "values")
    assert isinstance(arr, np.ndarray)
    assert arr.tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(TypeError, match=r"^bits: expected a numeric array, got an object array$"):
        to_numpy([object(), object()], "bits")


def test_check_codes():
    codes = Codes.from_bool([[1, 0, 1]])
    assert check_codes(codes, "codes") is codes
    with pytest.raises(TypeError, match=r"^query_codes: expected pbeh.Codes, got ndarray; wrap packed bytes with"):
        check_codes(np.zeros((1, 1), dtype=np.uint8), "query_codes")


def test_check_batch_tensor():
    kwargs = {"width": 4, "dtype": torch.float32, "device": torch.device("cpu"), "owner": "pool"}
    x = torch.zeros(3, 4)
    assert check_batch_tensor(x, "x", **kwargs) is x
    assert check_batch_tensor(torch.zeros(0, 4), "x", **kwargs).shape == (0, 4)
    with pytest.raises(TypeError, match=r"^x: expected a torch.Tensor of shape \(batch, 4\), got ndarray$"):
        check_batch_tensor(np.zeros((3, 4), dtype=np.float32), "x", **kwargs)
    with pytest.raises(ValueError, match=r"^x: expected shape \(batch, 4\), got \(3, 5\)$"):
        check_batch_tensor(torch.zeros(3, 5), "x", **kwargs)
    with pytest.raises(ValueError, match=r"^x: expected shape \(batch, 4\), got \(4,\)$"):
        check_batch_tensor(torch.zeros(4), "x", **kwargs)
    with pytest.raises(TypeError, match=r"^x: expected dtype torch.float32 \(the pool's\), got torch.float64$"):
        check_batch_tensor(x.double(), "x", **kwargs)
    on_meta = torch.zeros(3, 4, device="meta")
    with pytest.raises(ValueError, match=r"^x: expected a tensor on cpu \(the pool's device\), got one on meta$"):
        check_batch_tensor(on_meta, "x", **kwargs)


def test_check_batch_tensor_context():
    kwargs = {"width": 12, "dtype": torch.float32, "device": torch.device("cpu"), "owner": "model"}
    context = " for text features"
    with pytest.raises(ValueError, match=r"^features: expected shape \(batch, 12\) for text features, got \(2, 24\)$"):
        check_batch_tensor(torch.zeros(2, 24), "features", context=context, **kwargs)
    with pytest.raises(TypeError, match=r"^features: expected a torch.Tensor of shape \(batch, 12\) for text features"):
        check_batch_tensor([[0.0] * 12], "features", context=context, **kwargs)
