from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pbeh import Codes
from pbeh.codes import hamming_distances, popcount


def bool_codes(max_n: int = 12, max_bits: int = 70):
    return st.tuples(st.integers(0, max_n), st.integers(1, max_bits)).flatmap(lambda s: arrays(np.bool_, s))


def brute_hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances between boolean code matrices on their common prefix, by explicit loops."""
    n = min(a.shape[1], b.shape[1])
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.int64)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            out[i, j] = sum(int(a[i, t] != b[j, t]) for t in range(n))
    return out


@given(bool_codes())
def test_bool_round_trip_and_bit_order(bits):
    c = Codes.from_bool(bits)
    assert c.n_bits == bits.shape[1]
    assert c.packed.shape == (bits.shape[0], (bits.shape[1] + 7) // 8)
    np.testing.assert_array_equal(c.to_bool(), bits)
    # bit j is bit (7 - j % 8) of byte j // 8
    for j in range(bits.shape[1]):
        np.testing.assert_array_equal((c.packed[:, j // 8] >> (7 - j % 8)) & 1, bits[:, j])


@given(bool_codes(), st.data())
def test_truncate_is_prefix_with_zero_padding(bits, data):
    c = Codes.from_bool(bits)
    n = data.draw(st.integers(1, bits.shape[1]))
    t = c.truncate(n)
    np.testing.assert_array_equal(t.to_bool(), bits[:, :n])
    # re-validating the packed bytes proves the padding is zero
    assert Codes.from_packed(t.packed.copy(), n) == t


@given(bool_codes(max_n=6), bool_codes(max_n=6))
def test_hamming_matches_brute_force_on_common_prefix(a, b):
    ca, cb = Codes.from_bool(a), Codes.from_bool(b)
    d = ca.hamming(cb)
    assert d.dtype == np.int32
    np.testing.assert_array_equal(d, brute_hamming(a, b))
    np.testing.assert_array_equal(d, cb.hamming(ca).T)  # symmetry


@given(bool_codes(max_n=5, max_bits=40), bool_codes(max_n=5, max_bits=40))
def test_prefix_monotonicity(a, b):
    ca, cb = Codes.from_bool(a), Codes.from_bool(b)
    full = ca.hamming(cb)
    for n in range(1, min(ca.n_bits, cb.n_bits)):
        assert np.all(ca.truncate(n).hamming(cb) <= full)


def test_hamming_chunking_is_exact():
    rng = np.random.default_rng(0)
    a = Codes.from_bool(rng.random((37, 29)) < 0.5)
    b = Codes.from_bool(rng.random((23, 29)) < 0.5)
    np.testing.assert_array_equal(hamming_distances(a, b, chunk_size=1), hamming_distances(a, b))


def test_from_signs_zero_rule_and_torch_input():
    torch = pytest.importorskip("torch")
    c = Codes.from_signs(torch.tensor([[0.0, -0.0, -1e-9, 3.0]]))
    assert c.to_bool().tolist() == [[True, True, False, True]]
    assert c.to_signs().tolist() == [[1.0, 1.0, -1.0, 1.0]]


def test_indexing_len_concat_and_equality():
    rng = np.random.default_rng(1)
    bits = rng.random((10, 12)) < 0.5
    c = Codes.from_bool(bits)
    assert len(c) == 10
    assert c[3] == Codes.from_bool(bits[[3]])
    assert c[-1] == Codes.from_bool(bits[[9]])
    assert c[2:5] == Codes.from_bool(bits[2:5])
    assert c[np.array([0, 0, 7])] == Codes.from_bool(bits[[0, 0, 7]])
    assert Codes.concatenate([c[:4], c[4:]]) == c
    assert c != c.truncate(11)
    assert len(Codes.empty(9)) == 0
    assert repr(c) == "Codes(n=10, n_bits=12)"
    with pytest.raises(TypeError):
        hash(c)


def test_packed_is_read_only():
    c = Codes.from_bool(np.ones((2, 8), dtype=bool))
    with pytest.raises(ValueError, match="read-only"):
        c.packed[0, 0] = 0


def test_popcount_matches_table():
    x = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(popcount(x), [bin(i).count("1") for i in range(256)])


@pytest.mark.parametrize(
    ("packed", "n_bits", "exc", "match"),
    [
        (np.zeros((2, 2), dtype=np.int64), 16, TypeError, "expected dtype uint8"),
        (np.zeros(4, dtype=np.uint8), 16, ValueError, "expected a 2-D array"),
        (np.zeros((2, 3), dtype=np.uint8), 16, ValueError, "need 2 bytes per row, got 3"),
        (np.array([[0xFF, 0x01]], dtype=np.uint8), 15, ValueError, "padding bits beyond bit 15 must be zero"),
        (np.zeros((1, 1), dtype=np.uint8), 0, ValueError, "expected a positive int"),
        (np.zeros((1, 1), dtype=np.uint8), 8.0, TypeError, "expected a positive int"),
    ],
)
def test_from_packed_validation(packed, n_bits, exc, match):
    with pytest.raises(exc, match=match):
        Codes.from_packed(packed, n_bits)


def test_constructor_errors():
    with pytest.raises(ValueError, match="only 0 and 1"):
        Codes.from_bool(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="2-D"):
        Codes.from_bool(np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="at least one bit"):
        Codes.from_bool(np.zeros((3, 0), dtype=bool))
    with pytest.raises(ValueError, match="NaN"):
        Codes.from_signs(np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError, match="real-valued"):
        Codes.from_signs(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="cannot truncate 8-bit codes to 9 bits"):
        Codes.from_bool(np.ones((1, 8), dtype=bool)).truncate(9)
    with pytest.raises(ValueError, match="same n_bits"):
        Codes.concatenate([Codes.empty(8), Codes.empty(9)])
    with pytest.raises(ValueError, match="at least one"):
        Codes.concatenate([])
    with pytest.raises(TypeError, match="expected Codes"):
        hamming_distances(np.zeros((1, 1), dtype=np.uint8), Codes.empty(8))  # type: ignore[arg-type]
    with pytest.raises(IndexError, match="out of range"):
        Codes.empty(8)[0]
