"""``edge-rnn loadtest``: real-time-paced WebSocket streams against ``edge-rnn serve`` (the ``client`` extra).

Each stream sends one chunk of ``chunk_ms / frame_ms`` random frames every
``chunk_ms``, as a microphone would, and waits for its reply. A stream keeps
real time when every reply came back before its next chunk was due. Reported:
the streams that kept real time, p50 and p99 latency (send to reply), errors,
and the load generator's own CPU use (so that a saturated client is not taken
for a slow server).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from edge_rnn.errors import EdgeRnnError

__all__ = ["LoadResult", "loadtest"]


@dataclass
class LoadResult:
    streams: int
    seconds: float
    kept_real_time: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu: float = 0.0  # the load generator's CPU seconds per wall second (1.0: one core busy)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> str:
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items())) or "none"
        return (f"{self.kept_real_time}/{self.streams} streams kept real time over {self.seconds:.1f} s; "
                f"{len(self.latencies_ms):,} chunks, latency p50 {self.percentile(50):.1f} ms, p99 "
                f"{self.percentile(99):.1f} ms; errors: {errors}; load generator CPU {self.client_cpu:.0%} of a core")


async def _stream(url: str, token: str | None, frame: list[int], frames: int, chunk_s: float, until: float,
                  result: LoadResult, seed: int, phase: float) -> None:
    from edge_rnn.client import ServiceError, WebSocketStream

    rng = np.random.default_rng(seed)
    kept = True
    try:
        # resume off: the load is the server's to bear, and its refusals are counted, not resumed around
        async with await WebSocketStream.open(url, token=token, resume=False) as s:
            due = time.perf_counter() + chunk_s * phase  # streams start spread over one chunk, as real clients do
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            while due < until:
                x = rng.standard_normal((frames, *frame)).astype(np.float32)
                sent = time.perf_counter()
                await s.step(x)
                done = time.perf_counter()
                result.latencies_ms.append((done - sent) * 1e3)
                due += chunk_s
                if done > due:
                    kept = False
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
    except ServiceError as e:
        kept = False
        result.errors[e.code] = result.errors.get(e.code, 0) + 1
    except OSError as e:
        kept = False
        result.errors[type(e).__name__] = result.errors.get(type(e).__name__, 0) + 1
    result.kept_real_time += kept


def loadtest(url: str, *, streams: int = 10, chunk_ms: float = 100.0, frame_ms: float = 10.0,
             duration: float = 10.0, token: str | None = None) -> LoadResult:
    """Run the load; see the module docstring."""
    import httpx

    if chunk_ms < frame_ms or chunk_ms % frame_ms:
        raise EdgeRnnError(f"--chunk-ms {chunk_ms}: expected a whole number of --frame-ms {frame_ms} frames")
    r = httpx.get(url.rstrip("/") + "/v1/model", headers={"Authorization": f"Bearer {token}"} if token else {})
    if r.status_code != 200:
        raise EdgeRnnError(f"{url}: GET /v1/model answered {r.status_code}; is it an edge-rnn server?")
    frame = r.json().get("frame")
    if frame is None:
        raise EdgeRnnError(f"{url}: the model takes no binary chunks (not one float32 input of fixed frame size)")
    result = LoadResult(streams=streams, seconds=duration)
    frames = int(chunk_ms // frame_ms)

    async def main() -> None:
        until = time.perf_counter() + duration
        await asyncio.gather(*(_stream(url, token, frame, frames, chunk_ms / 1e3, until, result, i, i / streams)
                               for i in range(streams)))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    asyncio.run(main())
    result.client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return result
