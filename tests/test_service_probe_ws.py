"""What one WebSocket client can take from the others, found by the adversarial probe (issue 19, findings 3, 4, 9):
messages in many fragments, reads of many frames parsed at once, and messages queued unread server-wide.

The fragment and drain cases run a real server (``edge-rnn serve`` in a process of its own); how a read is parsed,
a turn of the event loop at a time, and the budget of queued bytes are seen in process, on the protocol itself
with a transport that records what it is told."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
import time

import numpy as np
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("websockets")
from conftest import REPO  # noqa: E402
from hostile_clients import RawSocket, ServeProcess  # noqa: E402

from edge_rnn.service import ServiceConfig  # noqa: E402

MODEL = REPO / "tests" / "data" / "lstm_layer.onnx"
MIB = 1 << 20


def fragments(payload: bytes, sizes: list[int]) -> bytes:
    """``payload`` as one binary message in fragments of ``sizes`` bytes (a zero mask: sent as it is)."""
    out, i = bytearray(), 0
    for k, n in enumerate(sizes):
        out += bytes([(0x80 if k == len(sizes) - 1 else 0) | (0x2 if k == 0 else 0x0), 0x80 | n]) + b"\0\0\0\0"
        out += payload[i:i + n]
        i += n
    return bytes(out)


EMPTY_CONTINUATION = bytes([0x00, 0x80]) + b"\0\0\0\0"


def test_a_message_in_more_than_64_fragments_is_closed_with_1008_before_it_holds_memory():
    chunk = np.arange(64 * 4, dtype="<f4").tobytes()  # 64 frames of 4 features: 1 KiB
    with ServeProcess(MODEL, "--message-timeout", "30") as server:
        with RawSocket(server.port) as ws:  # 64 fragments: answered
            ws.send(fragments(chunk, [16] * 64))
            assert ws.read_frame()[0] == 0x2
        base = server.peak()
        with RawSocket(server.port, timeout=5) as ws:  # a 1 MiB message in 1-byte fragments (7 MiB on the wire)
            wire = fragments(bytes(MIB), [1] * 200_000)
            for i in range(0, len(wire), 1 << 16):
                if not ws.try_send(wire[i:i + (1 << 16)]):
                    break
            assert ws.close_code() == 1008  # before: the message stayed open, ~40 bytes held per byte
        grown = server.peak() - base
        assert grown < 16 * MIB, f"the server's peak grew by {grown / MIB:.0f} MiB"  # +143 MiB before


def test_empty_continuation_frames_are_refused_long_before_the_message_timeout():
    with ServeProcess(MODEL, "--message-timeout", "30") as server:
        with RawSocket(server.port, timeout=5) as ws:
            ws.send(bytes([0x02, 0x80]) + b"\0\0\0\0")  # a binary message begun, empty
            ws.try_send(EMPTY_CONTINUATION * 10_000)  # nothing toward --max-message-bytes, each a frame to parse
            assert ws.close_code(timeout=10) == 1008  # before: open until the 30 s message timeout
        with RawSocket(server.port) as ws:  # the server serves on
            ws.binary(np.zeros((1, 4), "<f4").tobytes())
            assert ws.read_frame()[0] == 0x2


def test_a_server_flooded_with_empty_continuation_frames_stops_within_its_drain_timeout():
    with ServeProcess(MODEL, "--drain-timeout", "2") as server:
        stop = threading.Event()

        def flood() -> None:
            with RawSocket(server.port, timeout=2) as ws:
                ws.send(bytes([0x02, 0x80]) + b"\0\0\0\0")
                block = EMPTY_CONTINUATION * 50_000
                while not stop.is_set() and ws.try_send(block):
                    pass

        attacker = threading.Thread(target=flood, daemon=True)
        attacker.start()
        try:
            time.sleep(1.0)
            server.terminate()
            assert server.wait(12) is not None, "still running 12 s after SIGTERM (--drain-timeout 2)"  # > 20 s before
        finally:
            stop.set()
            attacker.join(10)


# in process: the protocol itself, on a transport that records what it is told


class Transport:
    def __init__(self) -> None:
        self.written, self.reading, self.closing = bytearray(), True, False

    def write(self, data: bytes) -> None:
        self.written += data

    def writelines(self, data: list[bytes]) -> None:
        self.written += b"".join(data)

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closing = True

    abort = close

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def get_write_buffer_size(self) -> int:
        return 0

    def write_eof(self) -> None: ...
    def can_write_eof(self) -> bool: return True  # noqa: E704
    def get_protocol(self) -> None: ...
    def set_protocol(self, protocol: object) -> None: ...
    def get_write_buffer_limits(self) -> tuple[int, int]: return (0, 0)  # noqa: E704
    def set_write_buffer_limits(self, high: object = None, low: object = None) -> None: ...


def open_protocol(loop: asyncio.AbstractEventLoop, cls: type, app) -> tuple[object, Transport]:
    """A protocol of ``cls`` past its handshake, serving ``app``."""
    import uvicorn
    from uvicorn.server import ServerState

    config = uvicorn.Config(app=app, ws=cls, ws_max_size=MIB, ws_per_message_deflate=False, log_level="warning")
    protocol = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = Transport()
    protocol.connection_made(transport)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.data_received(f"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    loop.run_until_complete(asyncio.sleep(0.01))
    assert transport.written.startswith(b"HTTP/1.1 101"), bytes(transport.written[:40])
    transport.written.clear()
    return protocol, transport


def binary(payload: bytes) -> bytes:
    return fragments(payload, [len(payload)]) if len(payload) < 126 else \
        bytes([0x82, 0xFE]) + len(payload).to_bytes(2, "big") + b"\0\0\0\0" + payload


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop

    async def cancelled() -> None:  # the apps' tasks
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    loop.run_until_complete(cancelled())
    loop.close()


def test_a_read_of_many_frames_is_parsed_a_turn_of_the_event_loop_at_a_time(loop):
    from edge_rnn.service import _protocol

    turn, StreamProtocol = getattr(_protocol, "TURN_FRAMES", 256), _protocol.StreamProtocol

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(3600)

    protocol, transport = open_protocol(loop, StreamProtocol.configured(ServiceConfig()), app)
    pings = 4 * turn
    protocol.data_received(bytes([0x89, 0x80]) + b"\0\0\0\0" + (bytes([0x89, 0x80]) + b"\0\0\0\0") * (pings - 1))
    pongs = transport.written.count(b"\x8a\x00")
    assert 0 < pongs <= turn  # before: all of them at once, however many came in the read
    assert not transport.reading  # the rest waits for its turn, nothing more read meanwhile
    loop.run_until_complete(asyncio.sleep(0.05))
    assert transport.written.count(b"\x8a\x00") == pings and transport.reading


def test_messages_queued_unread_are_bounded_server_wide(loop):
    from edge_rnn.service._protocol import StreamProtocol

    taken = []

    async def stalled(scope, receive, send):  # takes no message: its stream is busy
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.sleep(3600)

    async def waiting(scope, receive, send):  # waits for its next message
        await receive()
        await send({"type": "websocket.accept"})
        taken.append(await receive())
        await asyncio.sleep(3600)

    cls = StreamProtocol.configured(ServiceConfig(max_queued_bytes=1000))
    a, ta = open_protocol(loop, cls, stalled)
    a.data_received(binary(b"a" * 600) * 3)  # one read of three messages, none taken
    assert a.queue.qsize() == 2 and not ta.reading  # before: all 3 queued (as many as one read holds)
    assert cls.budget.used == 1200
    b, tb = open_protocol(loop, cls, waiting)
    b.data_received(binary(b"b" * 600))  # over the budget, but its stream waits: taken
    loop.run_until_complete(asyncio.sleep(0.01))
    assert taken and taken[0]["bytes"] == b"b" * 600
    assert a.queue.qsize() == 2  # and the first still holds its third message unparsed, in order
    a.connection_lost(None)
    b.connection_lost(None)
    assert cls.budget.used == 0
