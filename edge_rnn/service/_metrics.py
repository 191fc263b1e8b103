"""The service's Prometheus metrics: a :class:`~edge_rnn.service._recorder.Recorder` with its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_SECONDS = (1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.active = Gauge("edge_rnn_active_streams", "Open streams", registry=r)
        self.steps = Counter("edge_rnn_steps", "Steps applied", registry=r)
        self.batch = Histogram("edge_rnn_batch_size", "Steps per onnxruntime call", registry=r,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.wait = Histogram("edge_rnn_queue_wait_seconds", "Time a step waited for its batch", registry=r,
                              buckets=_SECONDS)
        self.latency = Histogram("edge_rnn_step_seconds", "onnxruntime time per batch", registry=r, buckets=_SECONDS)
        self.rejected = Counter("edge_rnn_rejections", "Requests refused, by reason", ["reason"], registry=r)
        self.expired = Counter("edge_rnn_expired_streams", "Streams closed for idling", registry=r)

    def on_batch(self, size: int, waits: list[float], seconds: float) -> None:
        self.batch.observe(size)
        self.steps.inc(size)
        self.latency.observe(seconds)
        for w in waits:
            self.wait.observe(w)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def set_active(self, streams: int) -> None:
        self.active.set(streams)

    def expire(self) -> None:
        self.expired.inc()

    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format."""
        return generate_latest(self.registry)
