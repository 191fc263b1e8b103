"""What a resuming client costs per step, and how long its streams stop when the server is killed, in one run.

    python benchmarks/checkpoint.py [--steps 300] [--streams 10]

The demo LSTM (80 -> 256 x 2; exported with torch if it is installed, else the test fixture) served by
`edge-rnn serve` in a process of its own (on core 0 where there are two, the clients on core 1), 100 ms chunks
of 10 ms frames:

1. per step, over HTTP and over a WebSocket: the bytes a checkpoint adds (a snapshot every ``checkpoint_every``
   steps: its bytes on the wire, divided by them) and the latency (mean, p50, p99 of ``step``, the checkpoint
   fetch included in the step that triggers it), for checkpoint_every 1, 5, 10 and 50 beside ``resume=False``.
   The configurations run in interleaved rounds on the same server; what a checkpoint adds is the median over
   rounds of its mean less the same round's resume=False mean, so that drift hits them alike;
2. ``--streams`` real-time streams (half HTTP, half WebSocket, checkpoint_every 10) and the server killed with
   SIGKILL and started again on its port: each stream's interruption, from the kill to its first step answered
   after it (p50 and max), beside the time the new server took to answer; every stream checked bit for bit
   against the model run offline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edge_rnn.client import HttpStream, SyncWebSocketStream
from edge_rnn.runtime import StreamingModel
from edge_rnn.runtime._host import describe_host, host_record

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "lstm_layer.onnx"
FRAMES = 10  # a 100 ms chunk of 10 ms frames
EVERIES = (None, 1, 5, 10, 50)  # None: resume=False
TRANSPORTS = {"HTTP": HttpStream, "WebSocket": SyncWebSocketStream}


def demo_model(folder: Path) -> Path:
    """The demo LSTM, exported here; the fixture where torch is not installed."""
    try:
        import torch

        import edge_rnn
    except ImportError:
        print("torch is not installed: the test fixture (4 -> 6) stands in for the demo LSTM")
        return FIXTURE
    path = folder / "demo_lstm.onnx"
    torch.manual_seed(0)
    edge_rnn.export(torch.nn.LSTM(80, 256, num_layers=2).eval(), path, long_steps=0)
    return path


class Server:
    """``edge-rnn serve MODEL`` on 127.0.0.1 at ``port``, on core 0 where there are two."""

    def __init__(self, model: Path, port: int):
        pin = ["taskset", "-c", "0"] if (os.cpu_count() or 1) >= 2 else []
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([*pin, sys.executable, "-m", "edge_rnn.cli", "serve", str(model), "--host",
                                      "127.0.0.1", "--port", str(port), "--threads", "1"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_up(self) -> float:
        """Seconds until it answers /readyz."""
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                time.sleep(0.02)
        raise RuntimeError("the server did not answer in 60 s")

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def step_cost(url: str, transport: str, every: int | None, x: np.ndarray, steps: int) -> list[float]:
    """Latencies (ms) of ``steps`` steps of one stream."""
    kw = {"resume": False} if every is None else {"checkpoint_every": every}
    s = TRANSPORTS[transport](url, **kw)
    out = []
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            s.step(x)
            out.append((time.perf_counter() - t0) * 1e3)
    finally:
        s.close()
    return out


def wire_bytes(url: str, transport: str, x: np.ndarray) -> tuple[int, int]:
    """The bytes of a step's answer, and of a checkpoint's: the snapshot over HTTP, its base64 JSON message over
    a WebSocket."""
    s = TRANSPORTS[transport](url, resume=False)
    try:
        reply = s.step(x).nbytes
        snap = s.snapshot()
    finally:
        s.close()
    if transport == "HTTP":
        return reply, len(snap)
    return reply, len(json.dumps({"type": "snapshot", "data": "x" * (4 * ((len(snap) + 2) // 3))}))


def offline(model: StreamingModel, chunks: list[np.ndarray]) -> list[np.ndarray]:
    """The primary output of ``chunks`` on a stream of its own, time first and flat, as the server sends it."""
    port, s = model.outputs[0], model.open_stream()
    axis = port.stream_time_axis or 0
    return [np.moveaxis(model.step(s, x)[port.name], axis, 0).reshape(-1) for x in chunks]


def checkpoint_costs(url: str, frame: int, steps: int, rounds: int) -> None:
    """Per transport and configuration: the latency of ``steps`` steps, run as ``rounds`` interleaved rounds; what a
    checkpoint adds is the median over rounds of each round's mean less that round's ``resume=False`` mean."""
    x = np.random.default_rng(0).standard_normal((FRAMES, frame)).astype(np.float32)
    for transport in TRANSPORTS:
        step_cost(url, transport, None, x, 30)  # warm
        lat: dict[int | None, list[list[float]]] = {e: [] for e in EVERIES}
        for _ in range(rounds):
            for every in EVERIES:
                lat[every].append(step_cost(url, transport, every, x, max(1, steps // rounds)))
        reply, snap = wire_bytes(url, transport, x)
        print(f"{transport}: a step sends {x.nbytes:,} bytes and gets {reply:,} back; a checkpoint gets {snap:,}")
        base = [np.mean(r) for r in lat[None]]
        for every in EVERIES:
            a = np.concatenate(lat[every])
            name = "resume=False" if every is None else f"checkpoint_every={every}"
            added = np.median([np.mean(r) - b for r, b in zip(lat[every], base)])
            extra = "" if every is None else f"; adds {snap / every:,.0f} bytes and {added:+.3f} ms a step"
            print(f"  {name:20s} mean {a.mean():.3f} ms, p50 {np.percentile(a, 50):.3f} ms, "
                  f"p99 {np.percentile(a, 99):.3f} ms{extra}", flush=True)


class Paced(threading.Thread):
    """One real-time stream: a chunk every 100 ms until ``stop``; each step's end time and output kept."""

    def __init__(self, url: str, transport: str, chunks: list[np.ndarray], stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.transport, self.chunks, self.stop = url, transport, chunks, stop
        self.done_at: list[float] = []
        self.ys: list[np.ndarray] = []
        self.error: BaseException | None = None
        self.resumes = 0

    def run(self) -> None:
        try:
            s = TRANSPORTS[self.transport](self.url, checkpoint_every=10, resume_timeout=60)
            due = time.monotonic()
            for c in self.chunks:
                if self.stop.is_set():
                    break
                self.ys.append(s.step(c))
                self.done_at.append(time.monotonic())
                due += FRAMES / 100
                time.sleep(max(0.0, due - time.monotonic()))
            self.resumes = s.resumes
            s.close()
        except BaseException as e:  # noqa: BLE001 - reported
            self.error = e


def interruption(model_path: Path, frame: int, streams: int) -> None:
    port = free_port()
    first = Server(model_path, port)
    first.wait_up()
    rng = np.random.default_rng(1)
    work = [[rng.standard_normal((FRAMES, frame)).astype(np.float32) for _ in range(80)] for _ in range(streams)]
    stop = threading.Event()
    clients = [Paced(first.url, "HTTP" if i % 2 == 0 else "WebSocket", w, stop) for i, w in enumerate(work)]
    for c in clients:
        c.start()
    time.sleep(2.0)
    kill_at = time.monotonic()
    first.kill()
    second = Server(model_path, port)
    second.wait_up()
    up = time.monotonic() - kill_at
    time.sleep(2.0)
    stop.set()
    for c in clients:
        c.join(90)
    second.stop()
    gaps = sorted(min(t for t in c.done_at if t > kill_at) - kill_at for c in _checked(clients, work, model_path))
    print(f"SIGKILL and restart under {streams} real-time streams (checkpoint_every=10): the new server answered "
          f"{up:.2f} s after the kill; each stream's interruption (kill to its next step answered): "
          f"p50 {np.median(gaps):.2f} s, max {gaps[-1]:.2f} s (p50 {np.median(gaps) - up:.2f} s, max "
          f"{gaps[-1] - up:.2f} s after the new server answered); resumes {sum(c.resumes for c in clients)}; "
          "outputs bit-exact vs offline: yes")


def _checked(clients: list[Paced], work: list[list[np.ndarray]], model_path: Path) -> list[Paced]:
    """``clients``, each checked: no error, and its outputs those of the model run offline, bit for bit."""
    model = StreamingModel.load(model_path)
    for c, w in zip(clients, work):
        if c.error is not None:
            raise RuntimeError(f"a {c.transport} stream failed: {c.error!r}")
        if not all(np.array_equal(a.reshape(-1), b) for a, b in zip(c.ys, offline(model, w[:len(c.ys)]))):
            raise RuntimeError(f"a {c.transport} stream's outputs differ from the offline run's")
    return clients


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=500, help="steps per configuration and transport")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds the steps are run in")
    ap.add_argument("--streams", type=int, default=10, help="real-time streams killed under")
    args = ap.parse_args()
    if (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {1})  # the clients on core 1, the server on core 0
    print(describe_host(host_record()))
    with tempfile.TemporaryDirectory() as tmp:
        model_path = demo_model(Path(tmp))
        model = StreamingModel.load(model_path)
        frame = int(model.inputs[0].stream_shape[-1])
        print(f"model {model_path.name}: input frame {frame}, snapshot of {len(model.open_stream().snapshot()):,} "
              f"bytes; chunks of {FRAMES} frames")
        server = Server(model_path, free_port())
        try:
            server.wait_up()
            checkpoint_costs(server.url, frame, args.steps, args.rounds)
        finally:
            server.stop()
        interruption(model_path, frame, args.streams)


if __name__ == "__main__":
    main()
