"""What the adversarial probe of the HTTP side found, each against a real `edge-rnn serve` (a process of its own on a
free loopback port): pipelined requests parsed without bound, a header cap bypassed by one read, idle connections
filling the process's file descriptors, a drain held up by a pipelined flood, a running step's answer lost to the
garbage after it, and a log line per malformed request. Loops are bounded in count and time; each test stops its
server itself."""

from __future__ import annotations

import re
import resource
import socket
import subprocess
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httptools")
httpx = pytest.importorskip("httpx")
from hostile_clients import ServeProcess, raw_http  # noqa: E402
from service_streams import MODEL_PATH  # noqa: E402

MIB = 1 << 20
MODEL_GET = b"GET /v1/model HTTP/1.1\r\nHost: x\r\n\r\n"


def _status(answer: bytes) -> int | None:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None


def _statuses(answer: bytes) -> list[int]:
    """The statuses of the answers one after another (an answer's body need not end in a line break)."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def _read_all(s: socket.socket) -> bytes:
    out = b""
    try:
        while part := s.recv(1 << 16):
            out += part
    except OSError:
        pass
    return out


class _LimitedServe(ServeProcess):
    """The server started with the open-file limit ``nofile`` (soft and hard: it cannot raise it)."""

    def __init__(self, *args: str, nofile: int):
        super().__init__(MODEL_PATH, *args)
        self.nofile = nofile

    def __enter__(self) -> _LimitedServe:
        real = subprocess.Popen

        def popen(*a, **k):
            return real(*a, **k, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                        (self.nofile, self.nofile)))
        subprocess.Popen = popen
        try:
            return super().__enter__()
        finally:
            subprocess.Popen = real



def _pipeliners(port: int, burst: bytes, n: int = 20, rcvbuf: int | None = None) -> list[socket.socket]:
    """``n`` connections that each send what of ``burst`` one non-blocking send takes, and never read."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        if rcvbuf is not None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        try:
            s.send(burst)
        except BlockingIOError:
            pass
        socks.append(s)
    return socks

def test_pipelined_requests_nobody_reads_take_bounded_memory():
    burst = MODEL_GET * (200_000 // len(MODEL_GET))  # 5714 requests in one write
    with ServeProcess(MODEL_PATH) as server:
        httpx.get(f"{server.url}/v1/model")
        base = server.peak()
        socks = _pipeliners(server.port, burst, rcvbuf=4096)
        time.sleep(3)
        grown = server.peak() - base
        assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        for s in socks:
            s.close()
    # before: ~9 MiB per connection (180 MiB here); now a few requests are parsed ahead of the one answered
    assert grown < 40 * MIB, f"20 connections of unread pipelined requests: server peak +{grown / MIB:.0f} MiB"


def test_pipelined_requests_are_all_answered_in_order():
    paths = [b"/healthz", b"/v1/model", b"/readyz", b"/nope"] * 150
    burst = b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p for p in paths[:-1])
    burst += b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % paths[-1]
    with ServeProcess(MODEL_PATH) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(burst)
            answer = _read_all(s)
    expected = [{b"/healthz": 200, b"/v1/model": 200, b"/readyz": 200, b"/nope": 404}[p] for p in paths]
    assert _statuses(answer) == expected


@pytest.mark.parametrize("fields, each", [(20000, 0), (50, 2000), (101, 0)], ids=["20000-fields", "100KiB", "101"])
def test_header_caps_hold_when_the_headers_come_in_one_read(fields, each):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"a%d: %s\r\n" % (i, b"v" * each) for i in range(fields))
    with ServeProcess(MODEL_PATH) as server:
        answer = raw_http(server.port, head + b"\r\n")
        fine = raw_http(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" +
                        b"".join(b"a%d: %s\r\n" % (i, b"v" * 400) for i in range(98)) + b"Connection: close\r\n\r\n")
    assert _status(answer) == 431, answer[:200]
    assert b"too_large" in answer
    assert _status(fine) == 200, fine[:200]  # 100 fields and ~40 KiB of headers pass


def test_idle_connections_beyond_the_limit_are_refused_and_the_server_stays_up():
    with _LimitedServe("--max-streams", "50", nofile=256) as server:
        socks, refused = [], 0
        for _ in range(300):
            try:
                s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            except OSError:
                break
            s.settimeout(0.05)
            try:
                answer = s.recv(4096)
            except TimeoutError:
                answer = None
            if answer is None:
                socks.append(s)  # held open, idle
            else:
                refused += _status(answer) == 503
                s.close()
        fds = server.fds()
        for s in socks:
            s.close()
        time.sleep(0.5)
        healthy = httpx.get(f"{server.url}/healthz", timeout=10).status_code
        server.proc.kill()
        log = server.proc.stderr.read()
    assert fds < 256 - 16, f"the server held {fds} fds of 256"
    assert refused >= 300 - len(socks) - 5 and refused > 0, (len(socks), refused)
    assert healthy == 200
    lines = [line for line in log.splitlines() if "connection" in line.lower()]
    assert 1 <= len(lines) <= 3, log[-2000:]


def test_max_streams_that_cannot_fit_the_fd_limit_is_refused_at_start():
    cmd = ["-m", "edge_rnn.cli", "serve", str(MODEL_PATH), "--port", "0", "--max-streams", "1000"]
    import sys

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=60, preexec_fn=low)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("Error: --max-streams 1000: expected at most"), r.stderr


def test_the_drain_ends_on_time_under_a_pipelined_flood():
    burst = MODEL_GET * 5000
    with ServeProcess(MODEL_PATH, "--drain-timeout", "2") as server:
        socks = _pipeliners(server.port, burst)
        time.sleep(1)
        t = time.monotonic()
        server.terminate()
        code = server.wait(timeout=30)
        took = time.monotonic() - t
        for s in socks:
            s.close()
    assert code is not None, "the server still ran 30 s after SIGTERM with --drain-timeout 2"
    assert took < 2 + 6, f"the drain took {took:.1f} s with --drain-timeout 2 (before: 19 s)"


def test_garbage_after_a_running_step_waits_for_its_answer():
    from edge_rnn.runtime import StreamingModel

    model = StreamingModel.load(MODEL_PATH)
    with ServeProcess(MODEL_PATH, "--max-batch-frames", "1") as server:
        c = httpx.Client(base_url=server.url, timeout=10)
        sid = c.post("/v1/streams").json()["stream_id"]
        body = np.ones((4000, 4), "<f4").tobytes()  # runs for a while, a frame per batch
        head = (f"POST /v1/streams/{sid}/steps HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                f"X-Step: 0\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(head + body)
            time.sleep(0.2)
            s.sendall(b"\x00GARBAGE\r\n\r\n")
            answer = _read_all(s)
        steps = model.restore(c.get(f"/v1/streams/{sid}/snapshot").content).steps
    assert _statuses(answer) == [200, 400], answer[:300]
    assert steps == 4000


def test_malformed_requests_are_logged_a_few_times_not_each():
    with ServeProcess(MODEL_PATH) as server:
        for _ in range(200):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
                s.sendall(b"\x00\r\n\r\n")
                assert _status(_read_all(s)) == 400
        server.proc.kill()
        lines = [line for line in server.proc.stderr.read().splitlines() if "Invalid HTTP request" in line]
    assert 1 <= len(lines) <= 3, lines[:5]
