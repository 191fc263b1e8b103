"""The load generator of benchmarks/scale_out.py for what `edge-rnn loadtest` does not do, run there pinned to core 1.

    python benchmarks/_scale_out_client.py rtt URL N            # one stream, N sequential steps: WS and HTTP medians
    python benchmarks/_scale_out_client.py http URL STREAMS SECONDS   # real-time HTTP streams

Prints one JSON object. Every HTTP request about a stream carries ``X-Session-Id`` (Ray Serve routes by it).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

FRAME, FRAMES = 80, 10  # the demo LSTM's 80 features, 10 frames of 10 ms a chunk


class Http:
    """One HTTP/1.1 keep-alive connection, bare: httpx took 40% of core 1 for 20 streams, as much as the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Http:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def call(self, method: str, path: str, body: bytes = b"", sid: str = "", step: int = -1) -> tuple[int, bytes]:
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
        head += ["Content-Type: application/octet-stream", f"X-Step: {step}"] if step >= 0 else []
        head += [f"X-Session-Id: {sid}"] if sid else []  # Ray Serve routes by it; the standalone server ignores it
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length, chunked = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            length = int(value) if key.lower() == "content-length" else length
            chunked = chunked or (key.lower() == "transfer-encoding" and "chunked" in value)
        if not chunked:
            return status, await self.reader.readexactly(length)
        data = b""
        while size := int((await self.reader.readline()).strip(), 16):
            data += (await self.reader.readexactly(size + 2))[:-2]
        await self.reader.readline()
        return status, data

    async def open_stream(self) -> str:
        status, body = await self.call("POST", "/v1/streams")
        if status != 201:
            raise RuntimeError(f"open {status}")
        return json.loads(body)["stream_id"]

    def close(self) -> None:
        self.writer.close()


async def _http_stream(url: str, x: bytes, until: float, chunk_s: float, phase: float, out: dict) -> None:
    kept = True
    try:
        http = await Http.open(url)
        sid = await http.open_stream()
        due = time.perf_counter() + chunk_s * phase
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        step = 0
        while due < until:
            sent = time.perf_counter()
            status, body = await http.call("POST", f"/v1/streams/{sid}/steps", x, sid, step)
            done = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"step {status} {body[:80]!r}")
            out["lat"].append((done - sent) * 1e3)
            step, due = step + 1, due + chunk_s
            kept = kept and done <= due
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        await http.call("DELETE", f"/v1/streams/{sid}", sid=sid)
        http.close()
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        kept = False
        key = " ".join(str(e).split(" ")[:2]) if isinstance(e, RuntimeError) else type(e).__name__
        out["errors"][key] = out["errors"].get(key, 0) + 1
    out["kept"] += kept


async def _http_load(url: str, streams: int, duration: float) -> dict:
    """Real-time HTTP streams, paced as `edge-rnn loadtest` paces its WebSocket ones: one connection a stream."""
    import numpy as np

    out: dict = {"lat": [], "errors": {}, "kept": 0}
    x = np.random.default_rng(0).standard_normal((FRAMES, FRAME)).astype("<f4").tobytes()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(_http_stream(url, x, wall0 + duration, 0.1, i / streams, out) for i in range(streams)))
    client_cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    lat, nan = out["lat"], float("nan")
    return {"client_cpu": client_cpu, "kept": out["kept"], "chunks": len(lat),
            "p50": float(np.percentile(lat, 50)) if lat else nan, "p99": float(np.percentile(lat, 99)) if lat else nan,
            "errors": ", ".join(f"{k} x{v}" for k, v in sorted(out["errors"].items())) or "none"}


async def _round_trips(url: str, n: int) -> dict:
    """The median of ``n`` sequential steps of one stream, no other load: WebSocket, then HTTP."""
    import numpy as np

    from edge_rnn.client import WebSocketStream

    x = np.random.default_rng(0).standard_normal((FRAMES, FRAME)).astype(np.float32)
    ws, http = [], []
    async with await WebSocketStream.open(url, width=0) as s:  # width 0: flat replies, no /v1/model request
        for i in range(n + 20):
            t0 = time.perf_counter()
            await s.step(x)
            if i >= 20:  # the first 20 warm the path
                ws.append(time.perf_counter() - t0)
    c = await Http.open(url)
    sid = await c.open_stream()
    for i in range(n + 20):
        t0 = time.perf_counter()
        status, _ = await c.call("POST", f"/v1/streams/{sid}/steps", x.tobytes(), sid, i)
        if i >= 20:
            http.append(time.perf_counter() - t0)
        if status != 200:
            raise RuntimeError(f"step {status}")
    await c.call("DELETE", f"/v1/streams/{sid}", sid=sid)
    c.close()
    return {"ws": 1e3 * statistics.median(ws), "http": 1e3 * statistics.median(http)}


def main(argv: list[str]) -> None:
    kind, url = argv[0], argv[1]
    if kind == "rtt":
        print(json.dumps(asyncio.run(_round_trips(url, int(argv[2])))))
    else:
        print(json.dumps(asyncio.run(_http_load(url, int(argv[2]), float(argv[3])))))


if __name__ == "__main__":
    main(sys.argv[1:])
