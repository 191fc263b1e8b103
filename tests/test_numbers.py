"""The strict number checks every option, contract, manifest and header reader shares, and the layout transposes."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

from edge_rnn._numbers import is_int, is_number
from edge_rnn.runtime._layout import from_front, to_front


@pytest.mark.parametrize("value", [True, False, 1.0, "1", None, [1], np.int64(1), math.nan])
def test_is_int_refuses_what_only_looks_like_an_int(value):
    """A bool (JSON true) is no count; neither is a float, a string or numpy's integer type (JSON never makes one)."""
    assert not is_int(value)


def test_is_int_bounds_are_inclusive_and_each_end_optional():
    assert is_int(0) and is_int(-5) and is_int(10**40)
    assert is_int(3, least=3) and not is_int(2, least=3)
    assert is_int(256, 1, 256) and not is_int(257, 1, 256) and not is_int(0, 1, 256)
    assert is_int(-1, most=-1) and not is_int(0, most=-1)


@pytest.mark.parametrize("value", [0, 2.5, np.float32(1e-3), np.float64(0.1), np.int64(7), math.inf])
def test_is_number_takes_ints_and_floats_numpy_scalars_included(value):
    assert is_number(value)
    assert f"{value:g}"  # every message that shows a number formats it so


@pytest.mark.parametrize("value", [True, np.bool_(True), "1.0", None, 1j, [0.5], Fraction(1, 3), Decimal("0.1")])
def test_is_number_refuses_bools_fractions_decimals_and_non_numbers(value):
    assert not is_number(value)


def test_is_number_bounds_and_nan():
    assert is_number(0, least=0) and not is_number(-1e-9, least=0)
    assert is_number(1e4, 0, 1e4) and not is_number(1e4 + 1, 0, 1e4)
    assert is_number(math.nan)  # a number...
    assert not is_number(math.nan, least=0) and not is_number(math.nan, most=1)  # ...within no range


@pytest.mark.parametrize("rank, axis", [(r, a) for r in range(1, 5) for a in range(r)])
def test_to_front_and_from_front_are_moveaxis_and_its_inverse(rank, axis):
    a = np.arange(math.prod(range(2, 2 + rank))).reshape(tuple(range(2, 2 + rank)))
    forward, back = to_front(rank, axis), from_front(rank, axis)
    assert (forward is None) == (back is None) == (axis == 0)
    moved = a if forward is None else a.transpose(forward)
    np.testing.assert_array_equal(moved, np.moveaxis(a, axis, 0))
    np.testing.assert_array_equal(moved if back is None else moved.transpose(back), a)


def test_from_front_takes_the_front_axis_where_it_belongs():
    for rank, axis in itertools.product(range(2, 5), range(1, 4)):
        if axis < rank:
            assert from_front(rank, axis).index(0) == axis
