"""A click option type for a float that must be a number: click's FloatRange lets ``nan`` and ``inf`` through (nan
compares false with any bound; inf is within a range open above), and a command would then fail later, with a
traceback or after a whole run."""

from __future__ import annotations

import math
from typing import Any

import click

__all__ = ["FiniteFloatRange"]


class FiniteFloatRange(click.FloatRange):
    """:class:`click.FloatRange` that refuses nan and inf as usage errors (exit 2) naming the option.

    >>> FiniteFloatRange(min=1).convert("2.5", None, None)
    2.5
    """

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"expected a finite number, got {value!r}", param, ctx)
        return number
