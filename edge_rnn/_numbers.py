"""The one copy of "is this an integer?" and "is this a number?" for options, contracts, manifests and headers.

Python's ``bool`` is an ``int`` (``isinstance(True, int)``), and JSON's
``true`` reads as one: an option, a contract field or a manifest figure that
must be a count or an axis takes neither. These predicates say so once; each
caller keeps its own message, which names what it checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["is_int", "is_number"]


def is_int(value: Any, least: int | None = None, most: int | None = None) -> bool:
    """Whether ``value`` is an ``int`` (never a ``bool``) within ``least..most`` (either end None: open)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (least is None or value >= least) and (most is None or value <= most)


def is_number(value: Any, least: float | None = None, most: float | None = None) -> bool:
    """Whether ``value`` is a number: an int or a float, numpy's scalars included (never a ``bool``, nor a
    Fraction or a Decimal, which no option or figure is and which the messages cannot format), within
    ``least..most``. NaN is within no range, so with either end given it is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return (least is None or value >= least) and (most is None or value <= most)
