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
        # resume off: the load is the server's to bear, and its refusals are counted, not resumed around; width 0:
        # the replies are timed, not read, so no request of /v1/model per stream
        async with await WebSocketStream.open(url, token=token, resume=False, width=0) as s:
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
    """Run the load; see the module docstring. A server that cannot be reached or refuses the token, or a model
    whose chunks the load's cannot be, is an :class:`~edge_rnn.errors.EdgeRnnError` before any stream starts."""
    if chunk_ms < frame_ms or chunk_ms % frame_ms:
        raise EdgeRnnError(f"--chunk-ms {chunk_ms}: expected a whole number of --frame-ms {frame_ms} frames")
    frames = int(chunk_ms // frame_ms)
    frame = _frame(url, token, frames, chunk_ms, frame_ms)
    result = LoadResult(streams=streams, seconds=duration)

    async def main() -> None:
        until = time.perf_counter() + duration
        await asyncio.gather(*(_stream(url, token, frame, frames, chunk_ms / 1e3, until, result, i, i / streams)
                               for i in range(streams)))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    asyncio.run(main())
    result.client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return result


def _describe(url: str, token: str | None) -> dict:
    """The server's ``GET /v1/model``; each way it can fail is one line that says what to do."""
    import httpx

    try:
        r = httpx.get(url.rstrip("/") + "/v1/model", headers={"Authorization": f"Bearer {token}"} if token else {})
    except httpx.UnsupportedProtocol:
        raise EdgeRnnError(f"expected a URL with http:// or https://, got {url!r}") from None
    except httpx.ConnectError:
        raise EdgeRnnError(f"nothing listens at {url}; is the server running?") from None
    except httpx.HTTPError as e:
        raise EdgeRnnError(f"{url}: cannot reach the server ({type(e).__name__}: {e})") from None
    if r.status_code == 401:
        raise EdgeRnnError("401 unauthorized: the server refused the token of --token-file" if token else
                           "401 unauthorized: the server wants a token; pass --token-file (a file holding it)")
    if r.status_code != 200:
        raise EdgeRnnError(f"{url}: GET /v1/model answered {r.status_code}; is it an edge-rnn server?")
    return r.json()


def _frame(url: str, token: str | None, frames: int, chunk_ms: float, frame_ms: float) -> list[int]:
    """One frame's shape, once the chunks of ``frames`` frames are seen to fit the model (a fixed-chunk form takes
    exactly its own number of time steps: any other chunk would be refused, every one, as bad_chunk)."""
    info = _describe(url, token)
    frame = info.get("frame")
    if frame is None:
        raise EdgeRnnError(f"{url}: the model takes no binary chunks (not one float32 input of fixed frame size)")
    fixed = [p["shape"][p["time_axis"]] for p in info.get("inputs", [])
             if p.get("time_axis") is not None and isinstance(p["shape"][p["time_axis"]], int)]
    if fixed and fixed[0] != frames:
        steps = fixed[0]
        raise EdgeRnnError(f"{url}: the model takes exactly {steps} time step{'s' * (steps != 1)} per chunk, got "
                           f"{frames} (--chunk-ms {chunk_ms:g} / --frame-ms {frame_ms:g}); pass --chunk-ms "
                           f"{steps * frame_ms:g}")
    return frame
