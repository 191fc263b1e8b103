"""What the service counts, as a protocol: the Prometheus metrics (``_metrics``) are one recorder; a server
path without metrics passes :data:`NO_METRICS`."""

from __future__ import annotations

from typing import Protocol

__all__ = ["Recorder", "NO_METRICS"]


class Recorder(Protocol):
    def on_batch(self, size: int, waits: list[float], seconds: float) -> None:
        """One onnxruntime call: its steps, each step's queue wait and the call's seconds."""

    def reject(self, reason: str) -> None:
        """A request refused, counted by reason (``too_many_streams``, ``overloaded``, ``unauthorized``, ...)."""

    def set_active(self, streams: int) -> None:
        """The number of open streams."""

    def expire(self) -> None:
        """A stream closed for idling."""


class _Nothing:
    """Counts nothing."""

    def on_batch(self, size: int, waits: list[float], seconds: float) -> None:
        pass

    def reject(self, reason: str) -> None:
        pass

    def set_active(self, streams: int) -> None:
        pass

    def expire(self) -> None:
        pass


NO_METRICS: Recorder = _Nothing()
