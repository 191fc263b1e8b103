"""Capacity of the streaming service against the engine alone, in one run (issue 11's target).

    python benchmarks/service.py [--duration 6] [--max-streams 800]

The demo LSTM (80 -> 256 x 2) with 10 ms frames sent as 100 ms chunks (10 steps). The server is pinned
to core 0 and the load generator (`edge-rnn loadtest`) to core 1 with `taskset`, so that the client does
not take the server's CPU. Measured, in this order:

1. the engine alone on core 0: `step_batch` over 64 streams at chunk 10, in steps/s, divided by
   100 steps/s per real-time stream;
2. `edge-rnn serve` (batching): the most real-time streams served, a level counting only when at least 99% of
   its streams kept real time (never a reply later than their next chunk) and p99 latency is under 100 ms
   (``_served.py``); both numbers are printed for every level and for the capacity;
3. a naive server on the same core: one `step` (one `session.run`) per WebSocket message, no batching.

The figure to read is (2) divided by (1); the issue's goal is at least 70%.

    python benchmarks/service.py --socket [--baseline DIR] [--repeat 5]

The stream socket's own cost, in process and without the network: binary steps of the small test
fixture (x: 4 features, 10 frames a message) through the ASGI app with an in-memory receive and send,
on core 0: one connection alone (microseconds per message), 64 at once (messages per second,
batched), and one with the engine stubbed to answer at once (the socket's own path, receive to
send). With ``--baseline DIR`` (another checkout, e.g. from ``git archive``), the same for DIR's
``edge_rnn``, interleaved with this tree's runs, medians printed side by side. ``--baseline`` also
applies to the capacity run: ``edge-rnn serve`` from DIR is measured beside this tree's.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _served import KEPT_PERCENT, P99_MS, parse_loadtest, served, verdict

from edge_rnn.runtime._host import describe_host, host_record

FIRST_LEVEL = 25  # streams of the first load level; the search doubles from it, or bisects down

NAIVE = '''
import sys, numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from edge_rnn.runtime import SessionConfig, StreamingModel
model = StreamingModel.load(sys.argv[1], session=SessionConfig(threads=1))
app = FastAPI()
@app.get("/v1/model")
def describe():
    return {"frame": [80]}
@app.websocket("/v1/streams/ws")
async def ws(socket: WebSocket):
    await socket.accept()
    stream = model.open_stream()
    try:
        while True:
            msg = await socket.receive()
            if msg["type"] == "websocket.disconnect" or msg.get("bytes") is None:
                return
            y = model.step(stream, np.frombuffer(msg["bytes"], "<f4").reshape(-1, 80))["y"]
            await socket.send_bytes(np.ascontiguousarray(y, "<f4").tobytes())
    except WebSocketDisconnect:
        return
import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="error", ws="websockets-sansio",
            ws_per_message_deflate=False)
'''

ENGINE = '''
import sys, time, numpy as np
from edge_rnn.runtime import SessionConfig, StreamingModel
m = StreamingModel.load(sys.argv[1], session=SessionConfig(threads=1))
streams = [m.open_stream() for _ in range(64)]
x = np.random.default_rng(0).standard_normal((10, 80)).astype(np.float32)
items = [(s, x) for s in streams]
for _ in range(5):
    m.step_batch(items)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 3:
    m.step_batch(items); n += 1
print(64 * 10 * n / (time.perf_counter() - t0))
'''

SOCKET = '''
import asyncio, sys, time, numpy as np
from edge_rnn.runtime import SessionConfig, StreamingModel
from edge_rnn.service import ServiceConfig, create_app
app = create_app(StreamingModel.load(sys.argv[1], session=SessionConfig(threads=1)), ServiceConfig(max_wait_ms=0))
n, conns, stub = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "stub"
chunk = {"type": "websocket.receive", "bytes": np.ones((10, 4), np.float32).tobytes()}
out = {p.name: np.zeros((10, 6) if p.name == "y" else (1, 6), np.float32) for p in app.svc.model.outputs}

async def connection():
    inbox = iter([{"type": "websocket.connect"}, *[chunk] * n, {"type": "websocket.disconnect"}])
    replies = 0
    async def receive():
        return next(inbox)
    async def send(message):
        nonlocal replies
        replies += message.get("bytes") is not None
    await app({"type": "websocket", "path": "/v1/streams/ws", "headers": []}, receive, send)
    assert replies == n, replies

async def main():
    async with app.api.router.lifespan_context(app.api):
        if stub:  # the engine answers at once: what is timed is the socket's own path, receive to send
            loop = asyncio.get_running_loop()

            def submit(stream, x):
                future = loop.create_future()
                future.set_result(out)
                return future

            app.svc.batcher.submit = submit
        await asyncio.gather(*(connection() for _ in range(conns)))  # warm
        t0 = time.perf_counter()
        await asyncio.gather(*(connection() for _ in range(conns)))
        print(n * conns / (time.perf_counter() - t0))

asyncio.run(main())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, proc: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("the server did not answer in 30 s")


def load(port: int, streams: int, duration: float) -> tuple[int, float, float]:
    out = subprocess.run(["taskset", "-c", "1", sys.executable, "-m", "edge_rnn.cli", "loadtest",
                          f"http://127.0.0.1:{port}", "--streams", str(streams), "--duration", str(duration)],
                         capture_output=True, text=True, timeout=duration + 120).stdout
    line = parse_loadtest(out)
    if line is None:
        raise RuntimeError(f"unexpected loadtest output: {out!r}")
    return line.kept, line.p50, line.p99  # NaN where no reply came back: the level is not served


def tree_env(tree: Path | None) -> dict[str, str] | None:
    """The environment that imports ``edge_rnn`` from ``tree`` (None: this process's own)."""
    return None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}


def capacity(cmd: list[str], port: int, duration: float, top: int, label: str,
             tree: Path | None = None) -> tuple[int, int, float]:
    """The most streams served (:func:`_served.served`: at least 99% of them kept real time and p99 latency under
    100 ms), found by a doubling, then a bisection; with how many of them kept real time and their p99 latency.
    (0, 0, nan): not even the first level was served."""
    proc = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=tree_env(tree))
    try:
        wait_up(port, proc)
        best: tuple[int, int, float] = (0, 0, float("nan"))
        good, bad, n = 0, top + 1, FIRST_LEVEL
        while good + 1 < bad:
            kept, p50, p99 = load(port, n, duration)
            ok = served(kept, n, p99)
            print(f"  {label}: {n:4d} streams: p50 {p50:.1f} ms, {verdict(kept, n, p99)}", flush=True)
            if ok:
                best = (n, kept, p99)
            good, bad = (n, bad) if ok else (good, n)
            n = min(2 * n, top) if bad > top else (good + bad) // 2
            if bad - good <= max(5, good // 20):
                break
        return best
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def summary(label: str, level: tuple[int, int, float], engine_streams: float) -> str:
    """A server's capacity, with both numbers of the level it was counted at, and its share of the engine."""
    n, kept, p99 = level
    if n == 0:
        return (f"{label}: no level served (none tried, from {FIRST_LEVEL} streams bisected down, with >= "
                f"{KEPT_PERCENT}% kept real time and p99 < {P99_MS:g} ms)")
    return (f"{label}: {n} real-time streams served ({kept}/{n} kept real time, p99 {p99:.1f} ms) = "
            f"{n / engine_streams:.0%} of the engine")


def socket_rate(tree: Path | None, messages: int, connections: int, engine: str) -> float:
    """Messages per second through the stream socket in process (SOCKET), on core 0; ``engine`` "stub": the
    engine answers each step at once."""
    fixture = Path(__file__).resolve().parents[1] / "tests" / "data" / "lstm_layer.onnx"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", SOCKET, str(fixture), str(messages),
                          str(connections), engine], capture_output=True, text=True, check=True, env=tree_env(tree))
    return float(out.stdout)


def socket_costs(baseline: Path | None, repeat: int) -> None:
    """The socket's cost, this tree's beside the baseline's: runs interleaved, medians printed."""
    print(f"machine: {describe_host(host_record())}", flush=True)
    trees = {"this tree": None, **({f"baseline {baseline}": baseline} if baseline is not None else {})}
    for label, messages, connections, engine in (("1 connection", 2000, 1, "engine"),
                                                 ("64 connections", 200, 64, "engine"),
                                                 ("1 connection, engine stubbed", 20000, 1, "stub")):
        rates: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(repeat):
            for name, tree in trees.items():
                rates[name].append(socket_rate(tree, messages, connections, engine))
        for name, runs in rates.items():
            median = statistics.median(runs)
            print(f"{label}, {name}: {median:,.0f} messages/s = {1e6 / median:.1f} us a message (median of "
                  f"{repeat}; runs {', '.join(f'{r:,.0f}' for r in runs)})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--max-streams", type=int, default=800)
    ap.add_argument("--socket", action="store_true", help="measure the stream socket in process instead")
    ap.add_argument("--baseline", type=Path, default=None,
                    help="another checkout whose edge_rnn is measured beside this tree's")
    ap.add_argument("--repeat", type=int, default=5, help="with --socket: runs per tree")
    args = ap.parse_args()
    if args.socket:
        socket_costs(args.baseline, args.repeat)
        return
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two cores: the server on one, the load generator on the other")
    import torch

    import edge_rnn

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "demo_lstm.onnx"
        torch.manual_seed(0)
        edge_rnn.export(torch.nn.LSTM(80, 256, num_layers=2).eval(), model, long_steps=0)
        engine = float(subprocess.run(["taskset", "-c", "0", sys.executable, "-c", ENGINE, str(model)],
                                      capture_output=True, text=True, check=True).stdout)
        engine_streams = engine / 100
        print(f"machine: {describe_host(host_record())}", flush=True)
        print(f"engine alone on core 0: {engine:,.0f} steps/s at chunk 10 = {engine_streams:,.0f} real-time streams")
        port = free_port()
        serve = [sys.executable, "-m", "edge_rnn.cli", "serve", str(model), "--threads", "1", "--max-wait-ms", "5"]
        served_at = capacity([*serve, "--port", str(port)], port, args.duration, args.max_streams, "edge-rnn serve")
        if args.baseline is not None:
            port = free_port()
            base_at = capacity([*serve, "--port", str(port)], port, args.duration, args.max_streams,
                               "edge-rnn serve (baseline)", args.baseline)
        naive_file = Path(tmp) / "naive.py"
        naive_file.write_text(NAIVE)
        port = free_port()
        naive_at = capacity([sys.executable, str(naive_file), str(model), str(port)], port, args.duration,
                            args.max_streams, "naive")
    print(f"\nmachine: {describe_host(host_record())}")
    print(f"engine alone on core 0: {engine:,.0f} steps/s = {engine_streams:,.0f} real-time streams")
    print(f"served: at least {KEPT_PERCENT}% of the streams kept real time and p99 < {P99_MS:g} ms")
    print(summary("edge-rnn serve", served_at, engine_streams))
    print(summary("naive server", naive_at, engine_streams) + f"; batching x{served_at[0] / max(naive_at[0], 1):.1f}")
    if args.baseline is not None:
        print(summary(f"edge-rnn serve from {args.baseline}", base_at, engine_streams))


if __name__ == "__main__":
    main()
