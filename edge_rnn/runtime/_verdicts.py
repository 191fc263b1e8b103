"""What a list of per-tensor results says as a whole: a golden replay's, and a variant's error on a long stream."""

from __future__ import annotations

from typing import Any

__all__ = ["TensorResults"]


class TensorResults:
    """The verdict over ``tensors`` (a field of each subclass; each tensor has ``ok``, ``max_abs`` and
    ``worst_fraction``, its largest error as a fraction of its bound): every one ok, the largest error, the tensor
    furthest into its bound."""

    tensors: list[Any]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors)

    @property
    def max_abs(self) -> float:
        return max((t.max_abs for t in self.tensors), default=0.0)

    @property
    def worst(self) -> Any:
        """The tensor with the largest error as a fraction of its bound; None when there is none."""
        return max(self.tensors, key=lambda t: t.worst_fraction, default=None)

    @property
    def worst_fraction(self) -> float:
        w = self.worst
        return 0.0 if w is None else w.worst_fraction
