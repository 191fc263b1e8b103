"""When a load level counts as served: the one bar every capacity benchmark here applies.

A level is served when at least 99% of its streams kept real time (no reply later than the stream's next
chunk) *and* the p99 latency, send to reply, is under 100 ms. Either alone flatters: a server that falls
behind every stream can still answer each chunk within 100 ms of its send ("0/200 kept real time, p99
97.8 ms" was once counted as served), and one that keeps every stream in time can have a tail past 100 ms.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

KEPT_PERCENT = 99  # the percentage of streams that must keep real time (`edge-rnn loadtest --min-real-time`)
P99_MS = 100.0  # the latency, send to reply, that 99% of chunks must beat

__all__ = ["KEPT_PERCENT", "P99_MS", "served", "verdict", "LoadLine", "parse_loadtest"]


def served(kept: int, streams: int, p99_ms: float) -> bool:
    """Whether a level of ``streams`` streams, ``kept`` of which kept real time, with p99 latency ``p99_ms``, was
    served: ``kept >= 0.99 * streams`` and ``p99_ms < 100``. No latency measured (NaN) is not served; no streams,
    or ``kept`` out of ``0..streams``, is no level (ValueError)."""
    if streams <= 0 or not 0 <= kept <= streams:
        raise ValueError(f"expected 0 <= kept <= streams and streams > 0, got kept {kept}, streams {streams}")
    return 100 * kept >= KEPT_PERCENT * streams and not math.isnan(p99_ms) and p99_ms < P99_MS


def verdict(kept: int, streams: int, p99_ms: float) -> str:
    """Both numbers and the verdict, for a level's line: ``"200/200 kept real time (100%), p99 97.8 ms -> ok"``;
    a level that is over says which bar it missed."""
    misses = []
    if 100 * kept < KEPT_PERCENT * streams:
        misses.append(f"kept < {KEPT_PERCENT}%")
    if math.isnan(p99_ms) or p99_ms >= P99_MS:
        misses.append(f"p99 >= {P99_MS:g} ms")
    result = "ok" if served(kept, streams, p99_ms) else f"over ({', '.join(misses)})"
    return f"{kept}/{streams} kept real time ({_tenths_down(kept, streams)}%), p99 {p99_ms:.1f} ms -> {result}"


def _tenths_down(kept: int, streams: int) -> str:
    """The share kept, in percent to 0.1 and rounded down, so that it never reads as the bar it missed (989/1000 is
    98.9%, not "99%")."""
    return f"{1000 * kept // streams / 10:g}"


class LoadLine(NamedTuple):
    """The numbers of ``edge-rnn loadtest``'s summary line; p50 and p99 are NaN where no reply came back."""

    kept: int
    streams: int
    chunks: int
    p50: float
    p99: float
    errors: str
    client_cpu: float  # of a core


_SUMMARY = re.compile(r"(\d+)/(\d+) streams kept real time.*?([\d,]+) chunks, latency p50 (nan|[\d.]+) ms, p99 "
                      r"(nan|[\d.]+) ms; errors: (.*?); load generator CPU (\d+)%")


def parse_loadtest(out: str) -> LoadLine | None:
    """The summary line of ``edge-rnn loadtest``'s output ``out``, read (None where there is none: it failed)."""
    m = _SUMMARY.search(out)
    if m is None:
        return None
    return LoadLine(int(m[1]), int(m[2]), int(m[3].replace(",", "")), float(m[4]), float(m[5]), m[6],
                    int(m[7]) / 100)
