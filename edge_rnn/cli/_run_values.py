"""run --input's values, checked whole before streaming, so that a refusal names the file and the step (as
``diagnose`` does) rather than the input of the chunk the runtime would refuse: no time step at all, NaN or Inf,
a float beyond the model's dtype once cast, a token id outside the table it indexes."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_rnn.errors import NonFiniteError, ShapeError
from edge_rnn.runtime._sequence_fit import check_float_range

__all__ = ["check_values"]


def check_values(data: np.ndarray, cast: np.ndarray, port: Any, label: str, allow_nonfinite: bool) -> None:
    """``data`` (the file's array, time first) and ``cast`` (it in the port's dtype where run casts it) against what
    the runtime would refuse chunk by chunk; ``label`` names the file (``--input x.npy``)."""
    if not len(data):
        raise ShapeError(f"{label}: expected at least one time step, got an empty array {data.shape} {data.dtype}")
    if port.values is not None and cast.dtype.kind in "iu":
        _ids_in_range(cast, port, label)
    if cast.dtype.kind == "f" and not allow_nonfinite:
        _finite(data, label)
    if cast.dtype.kind == "f":  # run_sequence's own check: a finite value the cast made Inf is no NaN or Inf the
        check_float_range(data, cast.dtype, label)  # user let in with --allow-nonfinite, so it is refused either way


def _where(bad: np.ndarray, x: np.ndarray) -> str:
    """``3 of 200, the first at step 3 of 50``: how many of ``x``'s values ``bad`` marks and the first one's step."""
    first = np.argwhere(bad)[0]
    return f"{int(bad.sum()):,} of {x.size:,}, the first at step {int(first[0])} of {len(x)}"


def _ids_in_range(ids: np.ndarray, port: Any, label: str) -> None:
    low, high = port.values
    bad = (ids < low) | (ids > high)
    if bad.any():
        first = ids[tuple(np.argwhere(bad)[0])]
        raise ShapeError(f"{label}: expected {port.name} values in [{low}, {high}] (the rows of the table it "
                         f"indexes), got {first} ({_where(bad, ids)})")


def _finite(data: np.ndarray, label: str) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        raise NonFiniteError(f"{label}: expected finite values, got NaN or Inf ({_where(bad, data)}); pass "
                             "--allow-nonfinite on the command line to let them in")
