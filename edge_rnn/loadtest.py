"""``edge-rnn loadtest``: real-time-paced WebSocket streams against ``edge-rnn serve`` (the ``client`` extra).

Each stream sends one chunk of ``chunk_ms / frame_ms`` random frames every
``chunk_ms``, as a microphone would, and waits for its reply. A stream keeps
real time when it sent at least one chunk and every reply came back before its
next chunk was due; a stream that sent nothing (its start, spread over the first
chunk, fell after ``duration``) did not, and is counted apart. The run stops at
``duration``: no stream waits past it for its next chunk. Reported: the streams
that kept real time, p50 and p99 latency (send to reply), errors, and the load
generator's own CPU use (so that a saturated client is not taken for a slow server).
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from edge_rnn.client._wire import auth_headers, http_base, shown
from edge_rnn.errors import EdgeRnnError

__all__ = ["LoadResult", "check_url", "exact", "finite", "loadtest"]


@dataclass
class LoadResult:
    streams: int
    seconds: float
    kept_real_time: int = 0  # streams that sent at least one chunk and had every reply before the next was due
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    client_cpu: float = 0.0  # the load generator's CPU seconds per wall second (1.0: one core busy)
    sent_nothing: int = 0  # streams whose first chunk fell due after the run's end: none of them kept real time

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def summary(self) -> str:
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(self.errors.items())) or "none"
        silent = (f" ({self.sent_nothing} sent nothing before the run ended: a chunk period near --duration starts "
                  "them too late)" if self.sent_nothing else "")
        return (f"{self.kept_real_time}/{self.streams} streams kept real time over {self.seconds:.1f} s{silent}; "
                f"{len(self.latencies_ms):,} chunks, latency p50 {self.percentile(50):.1f} ms, p99 "
                f"{self.percentile(99):.1f} ms; errors: {errors}; load generator CPU {self.client_cpu:.0%} of a core")

    def meets(self, fraction: Fraction) -> bool:
        """Whether at least ``fraction`` of the streams kept real time, compared exactly (no float rounding)."""
        return self.kept_real_time >= fraction * self.streams


def exact(value: float) -> Fraction:
    """The decimal an option was written as: the shortest repr of the float click parsed it into, as a fraction
    (0.1 -> 1/10, not the binary float's 3602879701896397/36028797018963968). nan and inf, which no decimal is,
    raise EdgeRnnError (the CLI refuses them as usage errors before: :func:`finite`)."""
    if not math.isfinite(value):
        raise EdgeRnnError(f"expected a finite number, got {value!r}")
    return Fraction(repr(float(value)))


def finite(name: str, value: float) -> float:
    """``value`` of option ``name``, or EdgeRnnError where it is nan or inf (which no range check catches: nan
    compares false with any bound)."""
    if not math.isfinite(value):
        raise EdgeRnnError(f"{name}: expected a finite number, got {value!r}")
    return value


async def _stream(url: str, token: str | None, shape: tuple[int, ...], chunk_s: float, until: float,
                  result: LoadResult, seed: int, phase: float) -> None:
    from websockets.exceptions import WebSocketException

    from edge_rnn.client import ServiceError, WebSocketStream

    rng = np.random.default_rng(seed)
    kept, sent = True, 0
    try:
        # resume off: the load is the server's to bear, and its refusals are counted, not resumed around; width 0:
        # the replies are timed, not read, so no request of /v1/model per stream
        async with await WebSocketStream.open(url, token=token, resume=False, width=0) as s:
            due = time.perf_counter() + chunk_s * phase  # streams start spread over one chunk, as real clients do
            while await _until(due, until):
                x = rng.standard_normal(shape).astype(np.float32)
                sent_at = time.perf_counter()
                await s.step(x)
                sent, done = sent + 1, time.perf_counter()
                result.latencies_ms.append((done - sent_at) * 1e3)
                due += chunk_s
                kept = kept and done <= due
    except ServiceError as e:
        kept = False
        result.errors[e.code] = result.errors.get(e.code, 0) + 1
    except (OSError, WebSocketException) as e:  # a socket's error or websockets' own: counted, not the run's end
        kept = False
        result.errors[type(e).__name__] = result.errors.get(type(e).__name__, 0) + 1
    result.kept_real_time += kept and sent > 0
    result.sent_nothing += not sent and kept  # an error is counted as the error, not as silence


async def _until(due: float, until: float) -> bool:
    """Sleep until ``due`` and say True, or until the run's end (never past it) and say False."""
    now = time.perf_counter()
    await asyncio.sleep(max(0.0, min(due, until) - now))
    return due < until


def loadtest(url: str, *, streams: int = 10, chunk_ms: float = 100.0, frame_ms: float = 10.0,
             duration: float = 10.0, token: str | None = None) -> LoadResult:
    """Run the load; see the module docstring. A server that cannot be reached or refuses the token, or a model
    whose chunks the load's cannot be, is an :class:`~edge_rnn.errors.EdgeRnnError` before any stream starts.
    ``chunk_ms`` and ``frame_ms`` are taken as the decimals they print as (:func:`exact`), so 1000 ms chunks of
    0.1 ms frames are 10,000 frames."""
    for name, value in (("chunk_ms", chunk_ms), ("frame_ms", frame_ms), ("duration", duration)):
        finite(name, value)
    frames = exact(chunk_ms) / exact(frame_ms)
    if frames < 1 or frames.denominator != 1:
        raise EdgeRnnError(f"--chunk-ms {chunk_ms:g}: expected a whole number of --frame-ms {frame_ms:g} frames")
    check_url(url)
    shape = _chunk_shape(url, token, int(frames), chunk_ms, frame_ms)
    result = LoadResult(streams=streams, seconds=duration)

    async def main() -> None:
        until = time.perf_counter() + duration
        await asyncio.gather(*(_stream(url, token, shape, chunk_ms / 1e3, until, result, i, i / streams)
                               for i in range(streams)))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    asyncio.run(main())
    result.client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    return result


def check_url(url: str) -> None:
    """An http(s) URL with a host and a port a socket can have, and none of what the client refuses (a
    ``user:password@``, a query, a fragment), or an EdgeRnnError that says which part is wrong (a port over 65535
    must not reach httpx, which connects to it modulo 65536). No message quotes a password (:func:`shown`)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed [ of an IPv6 host
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EdgeRnnError(f"expected a URL with http:// or https://, got {shown(url)!r} (e.g. "
                           "http://127.0.0.1:8000)")
    http_base(url)  # the client's refusals: a user:password@ would replace the token, a query no path follows
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise EdgeRnnError(f"{shown(url)}: port out of range: expected 1 to 65535, got "
                           f"{parts.netloc.rpartition(':')[2]!r}")


def _describe(url: str, token: str | None) -> dict:
    """The server's ``GET /v1/model``; each way it can fail is one line that says what to do."""
    import httpx

    try:
        r = httpx.get(http_base(url) + "/v1/model", headers=auth_headers(token))
    except httpx.UnsupportedProtocol:
        raise EdgeRnnError(f"expected a URL with http:// or https://, got {shown(url)!r}") from None
    except httpx.ConnectError as e:
        raise _connect_error(url, e) from None
    except httpx.HTTPError as e:
        raise EdgeRnnError(f"{shown(url)}: cannot reach the server ({type(e).__name__}: {e})") from None
    if r.status_code == 401:
        raise EdgeRnnError("401 unauthorized: the server refused the token of --token-file" if token else
                           "401 unauthorized: the server wants a token; pass --token-file (a file holding it)")
    if r.status_code != 200:
        raise EdgeRnnError(f"{shown(url)}: GET /v1/model answered {r.status_code}; is it an edge-rnn server?")
    try:  # a hostile answer nested past what json.loads takes raises RecursionError
        info = r.json()
    except (ValueError, RecursionError):
        info = None
    if not isinstance(info, dict):
        raise EdgeRnnError(f"{shown(url)}: GET /v1/model answered no JSON object; is it an edge-rnn server?")
    return info


def _connect_error(url: str, e: BaseException) -> EdgeRnnError:
    """What a failed connect means: a TLS handshake that failed (https:// to a plain HTTP server, or a certificate
    not trusted), or nothing listening; the cause is found in the exception's chain, where httpx keeps it."""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, (ssl.SSLError, ConnectionRefusedError)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLError):
        hint = ("; the server's certificate is not trusted here" if isinstance(cause, ssl.SSLCertVerificationError)
                else "; is it a plain HTTP server (then http://)?")
        return EdgeRnnError(f"{shown(url)}: TLS handshake failed ({getattr(cause, 'reason', None) or cause}){hint}")
    if cause is None and str(e):
        return EdgeRnnError(f"{shown(url)}: cannot connect ({e})")
    return EdgeRnnError(f"nothing listens at {shown(url)}; is the server running?")


def _chunk_shape(url: str, token: str | None, frames: int, chunk_ms: float, frame_ms: float) -> tuple[int, ...]:
    """The shape of one chunk of ``frames`` frames, once it is seen to fit the model: a fixed-chunk form takes
    exactly its own number of time steps, a model with no time axis (a cell: one frame per call) exactly one frame;
    any other chunk would be refused, every one, as bad_chunk."""
    info = _describe(url, token)
    frame = info.get("frame")
    if frame is None:
        raise EdgeRnnError(f"{shown(url)}: the model takes no binary chunks (not one float32 input of fixed frame "
                           "size)")
    inputs = info.get("inputs", [])
    if inputs and all(p.get("time_axis") is None for p in inputs):
        return _one_frame(url, frame, frames, chunk_ms, frame_ms)
    fixed = [p["shape"][p["time_axis"]] for p in inputs
             if p.get("time_axis") is not None and isinstance(p["shape"][p["time_axis"]], int)]
    if fixed and fixed[0] != frames:
        steps = fixed[0]
        raise EdgeRnnError(f"{shown(url)}: the model takes exactly {steps} time step{'s' * (steps != 1)} per "
                           f"chunk, got {frames} (--chunk-ms {chunk_ms:g} / --frame-ms {frame_ms:g}); pass --chunk-ms "
                           f"{float(steps * exact(frame_ms)):g}")
    return (frames, *frame)


def _one_frame(url: str, frame: list[int], frames: int, chunk_ms: float, frame_ms: float) -> tuple[int, ...]:
    """The chunk of a model with no time axis (GET /v1/model's inputs all have time_axis null): one frame, sent
    as the frame's own shape; a chunk of several frames is refused up front with the --chunk-ms that fits."""
    if frames != 1:
        raise EdgeRnnError(f"{shown(url)}: the model has no time axis: it takes one frame per call, got {frames} "
                           f"(--chunk-ms {chunk_ms:g} / --frame-ms {frame_ms:g}); pass --chunk-ms {frame_ms:g}")
    return tuple(frame)
