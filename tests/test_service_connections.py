"""Hostile connections against a real server: clients that never read, ping floods, requests and frames that never
end, idle sockets whose streams expired, bad text, and a drain with a stuck client. The server runs in a process of
its own on a free loopback port (its memory and file descriptors are read from /proc); the clients are raw sockets,
so that they can misbehave as no client library would. Each test bounds what the server holds and checks the
connection is closed, with the right code where one can still reach the client; timeouts are set to 1 s and
checked generously."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
websockets = pytest.importorskip("websockets")
from conftest import REPO  # noqa: E402
from service_streams import MODEL_PATH, until  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's /proc entries")

_SERVE = """
import json, sys, uvicorn
from edge_rnn.runtime import StreamingModel
from edge_rnn.service import ServiceConfig, create_app
from edge_rnn.service._app import uvicorn_options
from edge_rnn.service._server import DrainingServer
config = ServiceConfig(**json.loads(sys.argv[3]))
app = create_app(StreamingModel.load(sys.argv[1]), config)
DrainingServer(uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                              **uvicorn_options(config)), app.svc).run()
"""
TIMEOUTS = {"header_timeout": 1.0, "message_timeout": 1.0, "write_timeout": 1.0}
MIB = 1 << 20


class ServerProcess:
    """A server as ``edge-rnn serve`` runs one (DrainingServer, uvicorn_options), in its own process."""

    def __init__(self, log: Path, **config):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = log
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(MODEL_PATH), str(self.port),
                                          json.dumps(config)], stdout=subprocess.DEVNULL, stderr=err, env=env)
        deadline = time.monotonic() + 30
        while b" 200 " not in self.request("GET /healthz"):
            assert self.proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(0.3)  # the probes' sockets closed on the server's side too
        self.idle_fds = self.fds()

    def request(self, head: str) -> bytes:
        """The answer to a request with no body (the connection closed after it)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(f"{head} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
                return read_until_closed(s, 5)
        except OSError:
            return b""

    def rss(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) * 1024

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = ServerProcess(tmp_path_factory.mktemp("server") / "stderr", **TIMEOUTS)
    yield s
    s.stop()


def ws_connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A raw socket past the WebSocket handshake of the stream socket (a small ``rcvbuf``: a client whose kernel
    holds little of what it does not read)."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET /v1/streams/ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame (masked, with a zero key: the payload goes as it is)."""
    n = len(payload)
    size = bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + struct.pack("!H", n) if n < 1 << 16 else \
        bytes([0xFF]) + struct.pack("!Q", n)
    return bytes([(0x80 if fin else 0) | opcode]) + size + b"\0\0\0\0" + payload


def read_until_closed(s: socket.socket, seconds: float = 10.0, *, reply: bool = False) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after ``seconds``.
    ``reply``: answer the server's close frame, as a WebSocket client does."""
    s.settimeout(seconds)
    got = b""
    try:
        while chunk := s.recv(1 << 16):
            got += chunk
            if reply and (code := close_code(got)) is not None:
                s.sendall(frame(0x8, struct.pack("!H", code)))
                reply = False
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server still held the connection {seconds} s on")
    return got


def close_code(data: bytes) -> int | None:
    """The code of the close frame (unmasked, server to client) in ``data``, None if there is none."""
    i = 0
    while i + 2 <= len(data):
        opcode, n, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if n == 126:
            n, i = struct.unpack("!H", data[i:i + 2])[0], i + 2
        elif n == 127:
            n, i = struct.unpack("!Q", data[i:i + 8])[0], i + 8
        if opcode == 0x8:
            return struct.unpack("!H", data[i:i + 2])[0]
        i += n
    return None


def flood(s: socket.socket, block: bytes, most: int) -> int:
    """Send ``block`` until ``most`` bytes went or the server stops taking them (the socket is left blocked)."""
    s.settimeout(2)
    sent = 0
    try:
        while sent < most:
            s.sendall(block)
            sent += len(block)
    except OSError:  # a timeout (the server stopped reading), or a reset (it dropped the connection)
        pass
    return sent


def test_a_client_that_pings_and_never_reads_is_not_read_until_it_does_and_is_dropped(server):
    with ws_connect(server.port, rcvbuf=1 << 16) as s:
        before = server.rss()
        flood(s, frame(0x9, b"p" * 125) * 8000, 32 * MIB)  # ~1 MiB of pings a block; each answered by its pong
        grown = server.rss() - before
        assert grown < 8 * MIB, f"the server grew by {grown / MIB:.1f} MiB"  # it grew by ~28 MiB before
        until(lambda: server.fds() <= server.idle_fds, 10)  # dropped at the 1 s write timeout, its pongs unsent
        read_until_closed(s)


def test_a_client_that_sends_chunks_and_never_reads_its_replies_is_dropped(server):
    with ws_connect(server.port, rcvbuf=1 << 16) as s:
        before = server.rss()
        flood(s, frame(0x2, np.ones((4096, 4), "<f4").tobytes()), 32 * MIB)  # 64 KiB chunks, 96 KiB replies
        grown = server.rss() - before
        assert grown < 16 * MIB, f"the server grew by {grown / MIB:.1f} MiB"
        until(lambda: server.fds() <= server.idle_fds, 10)  # dropped while it does not read
        read_until_closed(s)


def test_an_http_client_that_never_reads_its_answers_is_dropped(server):
    sid = json.loads(server.request("POST /v1/streams").split(b"\r\n\r\n")[1])
    body = np.ones((1 << 16, 4), "<f4").tobytes()  # 1 MiB, answered with 1.5 MiB
    step = (f"POST /v1/streams/{sid['stream_id']}/steps HTTP/1.1\r\nHost: t\r\nContent-Type: "
            f"application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    with s:
        s.connect(("127.0.0.1", server.port))
        flood(s, step, 16 * len(step))  # pipelined, never read
        until(lambda: server.fds() <= server.idle_fds, 10)  # dropped while it does not read
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert "Traceback" not in server.log.read_text()  # the answers under way, pipelined, went nowhere quietly


def test_requests_that_never_end_are_answered_408_and_closed(server):
    stalls = [b"", b"POST /v1/streams HTTP/1.1\r\nHost: t\r\n",  # no request at all; headers never finished
              b"POST /v1/streams HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789"]  # a body stalls
    socks = []
    for stall in stalls * 10:
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(stall)
        socks.append(s)
    answers = [read_until_closed(s) for s in socks]
    for s in socks:
        s.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
    assert json.loads(answers[2].split(b"\r\n\r\n")[1])["code"] == "timeout"
    until(lambda: server.fds() <= server.idle_fds)
    assert "Traceback" not in server.log.read_text()  # the app saw its client gone, and said nothing


def test_headers_beyond_the_cap_are_refused_with_431_before_they_are_buffered(server):
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        before = server.rss()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        flood(s, b"a" * (1 << 16), 32 * MIB)
        grown = server.rss() - before
        answer = read_until_closed(s)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:60]
    assert grown < 8 * MIB, f"the server grew by {grown / MIB:.1f} MiB"


def test_websocket_messages_that_never_end_are_closed_with_1008(server):
    stalls = [b"\x82\xfe\x03\xe8\0\0\0\0" + b"x" * 10,  # a frame's header promising 1000 bytes, then 10
              frame(0x2, b"\0" * 16, fin=False)]  # a first fragment, and no more
    socks = [ws_connect(server.port) for _ in range(5) for _ in stalls]
    for s, stall in zip(socks, stalls * 5):
        s.sendall(stall)
    codes = [close_code(read_until_closed(s)) for s in socks]
    for s in socks:
        s.close()
    assert codes == [1008] * 10
    until(lambda: server.fds() <= server.idle_fds)


def test_bad_text_closes_with_1007_and_at_most_a_line_in_the_log(server):
    logged = len(server.log.read_text())
    texts = [b"\xff\xfe not utf-8", b"[" * 200_000, b'{"type": "' + b"[" * 50_000 + b'"}', b'"\xed\xa0\x80"']
    answers = []
    for text in texts * 3:
        s = ws_connect(server.port)
        s.sendall(frame(0x1, text))
        answers.append(read_until_closed(s, reply=True))
        s.close()
    assert [close_code(a) for a in answers] == [1007] * 12
    assert all(b'"bad_message"' in a for i, a in enumerate(answers) if i % 4 in (1, 2))  # JSON, told why
    log = server.log.read_text()[logged:]
    assert "Traceback" not in log and log.count("\n") <= 12, log[-2000:]


def test_an_expired_stream_closes_its_socket_with_1008(tmp_path):
    async def idle(url):
        async with websockets.connect(url) as ws:
            error = json.loads(await asyncio.wait_for(ws.recv(), 10))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return error["code"], closed.value.rcvd.code

    async def main(port):
        return await asyncio.gather(*(idle(f"ws://127.0.0.1:{port}/v1/streams/ws") for _ in range(30)))

    server = ServerProcess(tmp_path / "stderr", idle_timeout=1.0)
    try:
        answers = asyncio.run(main(server.port))
        until(lambda: server.fds() <= server.idle_fds)  # 30 streams expired, 30 sockets closed
    finally:
        server.stop()
    assert answers == [("unknown_stream", 1008)] * 30


def test_a_drain_ends_within_its_timeout_whatever_a_client_does(tmp_path):
    server = ServerProcess(tmp_path / "stderr", drain_timeout=2.0)  # the default write timeout: 30 s
    try:
        stuck = ws_connect(server.port, rcvbuf=1 << 16)
        flood(stuck, frame(0x2, np.ones((4096, 4), "<f4").tobytes()), 32 * MIB)  # its window full, not reading
        idle = ws_connect(server.port)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
        took = time.monotonic() - start
        print(f"stopped {took:.1f} s after SIGTERM")
        stuck.close()
        idle.close()
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log.read_text()[-2000:]
    assert took < 2.0 + 5, f"the server stopped {took:.1f} s after SIGTERM"
