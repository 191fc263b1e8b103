"""Latency and throughput of a streaming model, measured side by side (used by ``edge-rnn bench``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edge_rnn.runtime._model import StreamingModel

__all__ = ["BenchRow", "bench", "random_chunk", "format_table"]


@dataclass(frozen=True)
class BenchRow:
    streams: int
    chunk: int
    p50_ms: float  # one step_batch call over all streams
    p99_ms: float
    steps_per_s: float  # stream-steps per second through step_batch
    naive_steps_per_s: float  # the same work as one plain session.run per stream

    @property
    def speedup(self) -> float:
        return self.steps_per_s / self.naive_steps_per_s


def random_chunk(model: StreamingModel, steps: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random chunk of ``steps`` time steps for every data input (fixed dims as the model says, 1 if dynamic)."""
    out = {}
    for p in model.inputs:
        shape = [steps if i == p.stream_time_axis else (d or 1) for i, d in enumerate(p.stream_shape)]
        if p.dtype.kind == "f":
            a = rng.standard_normal(shape)
        elif p.values is not None:  # token ids: spread over the embedding's rows
            a = rng.integers(p.values[0], p.values[1], shape, endpoint=True)
        else:
            a = np.zeros(shape)
        out[p.name] = a.astype(p.dtype)
    return out


def timed_calls(fn: Callable[[], None], seconds: float, min_iters: int = 5) -> np.ndarray:
    """The seconds each call of ``fn`` took, called for ``seconds`` and at least ``min_iters`` times."""
    times = []
    end = time.perf_counter() + seconds
    while len(times) < min_iters or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return np.asarray(times)


def _row(model: StreamingModel, n: int, c: int, seconds: float, rng: np.random.Generator) -> BenchRow:
    sess = model.session
    names = [p.name for p in model.outputs] + [s.output for s in model.states]
    items = [(model.open_stream(), random_chunk(model, c, rng)) for _ in range(n)]
    naive_state = [{s.input: np.zeros(s.concrete_shape(1), np.dtype(s.dtype)) for s in model.states} for _ in range(n)]
    feeds = [{p.name: np.expand_dims(x[p.name], p.batch_axis) for p in model.inputs} for _, x in items]

    def batched() -> None:
        if not model.streamable:
            for s, _ in items:
                s.reset()
        model.step_batch(items)

    def naive() -> None:
        for i in range(n):
            out = sess.run(names, {**feeds[i], **naive_state[i], **model.constants})
            if model.streamable:
                naive_state[i] = {s.input: out[len(model.outputs) + k] for k, s in enumerate(model.states)}

    batched(), naive()  # warm up
    tb, tn = [], []
    for _ in range(3):  # alternate rounds
        tb.append(timed_calls(batched, seconds / 6))
        tn.append(timed_calls(naive, seconds / 6))
    tb_all, tn_all = np.concatenate(tb), np.concatenate(tn)
    p50 = float(np.median(tb_all))
    return BenchRow(n, c, p50 * 1e3, float(np.percentile(tb_all, 99)) * 1e3, n * c / p50,
                    n * c / float(np.median(tn_all)))


def bench(
    model: StreamingModel, *, streams: Sequence[int] = (1, 8, 64, 256), chunks: Sequence[int] = (1, 10, 32),
    seconds: float = 0.5, seed: int = 0,
) -> list[BenchRow]:
    """For each (chunk, streams): ``step_batch`` over all streams, against one naive ``session.run`` per stream.

    The two are measured in alternating rounds so that machine noise hits both alike.
    """
    rng = np.random.default_rng(seed)
    one_step = not any(p.time_axis is not None for p in model.inputs)  # a cell takes one step per call
    return [_row(model, n, c, seconds, rng) for c in chunks if c == 1 or not one_step for n in streams]


def format_table(rows: Sequence[BenchRow]) -> str:
    head = (f"{'streams':>7} {'chunk':>5} {'p50 ms':>9} {'p99 ms':>9} {'steps/s':>11} {'naive steps/s':>14} "
            f"{'speedup':>8}")
    lines = [head]
    for r in rows:
        lines.append(f"{r.streams:>7} {r.chunk:>5} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f} {r.steps_per_s:>11,.0f} "
                     f"{r.naive_steps_per_s:>14,.0f} {r.speedup:>7.2f}x")
    return "\n".join(lines)
