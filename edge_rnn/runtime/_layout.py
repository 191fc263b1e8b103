"""The one place that moves an axis to the front of an array's layout and back.

Two layouts meet at the runtime's edges: the runtime stacks streams batch
first and the model has its batch axis where its graph puts it; the service
and :func:`~edge_rnn.runtime.run_sequence` take a stream's chunk time first
and the model has its time axis where its graph puts it. Each crossing is one
transpose, worked out once per port by these two functions.
"""

from __future__ import annotations

__all__ = ["to_front", "from_front"]


def to_front(rank: int, axis: int) -> tuple[int, ...] | None:
    """The transpose that brings ``axis`` of a rank-``rank`` array to the front, the others in order; None when
    ``axis`` is 0 (nothing to move)."""
    if axis == 0:
        return None
    return (axis, *(i for i in range(rank) if i != axis))


def from_front(rank: int, axis: int) -> tuple[int, ...] | None:
    """The transpose that takes the front axis of a rank-``rank`` array to ``axis``, the inverse of
    :func:`to_front`; None when ``axis`` is 0."""
    if axis == 0:
        return None
    rest = list(range(1, rank))
    return (*rest[:axis], 0, *rest[axis:])
