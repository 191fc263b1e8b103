"""The service's Prometheus metrics: a :class:`~edge_rnn.service._recorder.Recorder` with its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_SECONDS = (1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5)


class Metrics:
    """The metrics of one server; on Ray Serve each replica's carry its id as the label ``replica``."""

    def __init__(self, replica: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        names, values = (["replica"], [replica]) if replica else ([], [])

        def bound(kind: type, name: str, doc: str, **kw: object) -> object:
            metric = kind(name, doc, names, registry=r, **kw)
            return metric.labels(*values) if values else metric

        self.active = bound(Gauge, "edge_rnn_active_streams", "Open streams")
        self.steps = bound(Counter, "edge_rnn_steps", "Steps applied")
        self.batch = bound(Histogram, "edge_rnn_batch_size", "Steps per onnxruntime call",
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.wait = bound(Histogram, "edge_rnn_queue_wait_seconds", "Time a step waited for its batch",
                          buckets=_SECONDS)
        self.latency = bound(Histogram, "edge_rnn_step_seconds", "onnxruntime time per batch", buckets=_SECONDS)
        self._rejected = Counter("edge_rnn_rejections", "Requests refused, by reason", [*names, "reason"],
                                 registry=r)
        self._values = values
        self.expired = bound(Counter, "edge_rnn_expired_streams", "Streams closed for idling")

    def on_batch(self, size: int, waits: list[float], seconds: float) -> None:
        self.batch.observe(size)
        self.steps.inc(size)
        self.latency.observe(seconds)
        for w in waits:
            self.wait.observe(w)

    def reject(self, reason: str) -> None:
        self._rejected.labels(*self._values, reason).inc()

    def set_active(self, streams: int) -> None:
        self.active.set(streams)

    def expire(self) -> None:
        self.expired.inc()

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)
