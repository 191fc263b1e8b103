"""What the hostile-client tests share: `edge-rnn serve` in a process of its own on a free loopback port (so that
its memory, its file descriptors and its exit can be measured), and raw clients that misbehave on purpose (a
WebSocket spoken byte by byte, which can ping, stall mid-frame or never read; raw HTTP requests)."""

from __future__ import annotations

import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["ServeProcess", "RawSocket", "free_port", "raw_http"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``edge-rnn serve MODEL ARGS`` on 127.0.0.1 at a free port, in a process of its own; stopped by the test
    (SIGKILL at the latest, on leaving the ``with``)."""

    def __init__(self, model: Path, *args: str, start_timeout: float = 60.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "edge_rnn.cli", "serve", str(model), "--host", "127.0.0.1",
                    "--port", str(self.port), *args]
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.proc.stderr.read()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start in {self.start_timeout} s")
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss(self) -> int:
        """The server's resident memory now, in bytes."""
        return _status_kib(self.pid, "VmRSS") << 10

    def peak(self) -> int:
        """The server's peak resident memory so far, in bytes."""
        return _status_kib(self.pid, "VmHWM") << 10

    def fds(self) -> int:
        """File descriptors the server holds open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class RawSocket:
    """A WebSocket client spoken byte by byte: it sends what it is told (pings, frames cut anywhere) and reads only
    when asked, so it can stall mid-frame or never read at all."""

    def __init__(self, port: int, path: str = "/v1/streams/ws", *, headers: dict[str, str] | None = None,
                 rcvbuf: int | None = None, timeout: float = 10.0):
        self.sock = socket.socket()
        if rcvbuf is not None:  # a small receive window: the server's writes back up sooner
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           f"{extra}\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            part = self.sock.recv(1)
            if not part:
                raise ConnectionError("closed during the handshake")
            head += part
        self.status = int(head.split(b" ", 2)[1])

    @staticmethod
    def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
        """One masked client frame."""
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else _mask(payload, mask)
        return head + mask + body

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def try_send(self, data: bytes) -> bool:
        """Send, or False once the server stopped taking bytes (closed, or its window is full for the timeout)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def binary(self, payload: bytes) -> None:
        self.send(self.frame(0x2, payload))

    def text(self, payload: str | bytes) -> None:
        self.send(self.frame(0x1, payload.encode() if isinstance(payload, str) else payload))

    def ping(self, payload: bytes = b"") -> None:
        self.send(self.frame(0x9, payload))

    def read_frame(self) -> tuple[int, bytes]:
        """The next server frame: (opcode, payload); ConnectionError when the server closed the connection."""
        b0, b1 = self._exactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exactly(8))[0]
        return b0 & 0x0F, self._exactly(n)

    def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the server's close frame: its code (None if the connection ended without one)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                opcode, payload = self.read_frame()
                if opcode == 0x8:
                    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
        except (ConnectionError, OSError):
            return None

    def closed_by_server(self, timeout: float) -> bool:
        """Whether the server ends the connection (a close frame or EOF) within ``timeout`` seconds; reads and
        drops whatever else comes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                return True
            if not data:
                return True
        return False

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            part = self.sock.recv(n - len(data))
            if not part:
                raise ConnectionError("closed")
            data += part
        return data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mask(payload: bytes, mask: bytes) -> bytes:
    import numpy as np

    a = np.frombuffer(payload, np.uint8)
    m = np.resize(np.frombuffer(mask, np.uint8), len(a))
    return (a ^ m).tobytes()


def raw_http(port: int, request: bytes, *, timeout: float = 10.0) -> bytes:
    """Send ``request`` as it is on a new connection; what the server answered before it closed or went quiet for
    ``timeout`` seconds."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        try:
            while True:
                part = s.recv(1 << 16)
                if not part:
                    break
                out += part
        except (TimeoutError, ConnectionResetError):
            pass
        return out
