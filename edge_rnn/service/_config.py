"""What one server is configured with (``edge-rnn serve``'s options)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ServiceConfig", "STANDALONE_ONLY", "RAY_PROXY_MAX_MESSAGE", "RANGES"]

# The range each option of edge-rnn serve takes: (least, most or None, least excluded). The command's options and
# Ray Serve's application builder (edge_rnn.service.ray) both check by it.
RANGES: dict[str, tuple[float, float | None, bool]] = {
    "replicas": (1, 1024, False), "threads": (1, None, False), "max_streams": (1, None, False),
    "max_connections": (1, None, False), "idle_timeout": (0.1, None, False), "max_batch": (1, 4096, False),
    "max_wait_ms": (0, 10_000, False), "max_queue": (1, None, False), "max_batch_frames": (1, None, False),
    "max_stream_inflight": (1, 1024, False), "max_message_fragments": (1, 1 << 16, False),
    "max_queued_bytes": (1 << 16, None, False), "max_message_bytes": (16, None, False),
    "drain_timeout": (0, 3600, False), "header_timeout": (0, 3600, True), "message_timeout": (0, 3600, True),
    "write_timeout": (0, 3600, True),
}

# Ray Serve's proxy (its uvicorn's default) closes a WebSocket message over this many bytes itself, without the
# replica's JSON error: max_message_bytes goes no higher on Ray
RAY_PROXY_MAX_MESSAGE = 16 << 20

# the bounds the standalone server's own protocols hold on its connections: on Ray Serve its proxy holds them
STANDALONE_ONLY = ("max_connections", "header_timeout", "message_timeout", "write_timeout", "max_message_fragments",
                   "max_queued_bytes")


@dataclass(frozen=True)
class ServiceConfig:
    max_streams: int = 1000
    idle_timeout: float = 300.0
    max_batch: int = 64
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    max_message_bytes: int = 1 << 20
    token: str | None = None
    drain_timeout: float = 10.0  # seconds a stopping server lets open streams fetch their snapshots
    max_batch_frames: int = 64  # time steps of one stream per batch: a longer chunk runs as pieces this long
    # what a connection may hold, in seconds (each also ends a connection whatever its client does):
    header_timeout: float = 10.0  # to send a request's headers (HTTP and the WebSocket handshake), from its first byte
    message_timeout: float = 30.0  # to finish an HTTP body, or a WebSocket message, once it has begun
    write_timeout: float = 30.0  # for writes to stay blocked (a client not reading what it is sent), and for a
    # closing connection to hand over what is left; then the connection is dropped
    # HTTP steps of one stream in flight at once (reading the body, waiting for the stream's turn, stepped); one
    # more is a 429 before its body is read. All streams' together are at most max_batch + max_queue (503 beyond)
    max_stream_inflight: int = 4
    # open connections (HTTP and WebSocket together); one more is answered 503 and closed before anything is read.
    # None: derived from the process's open-file limit (edge_rnn.service._server.connection_limit)
    max_connections: int | None = None
    # WebSocket: fragments one message may come in (each counts, empty or not; 1008 beyond), and bytes of messages
    # received whole and not yet taken by their streams, server-wide (beyond it, a socket with a message waiting
    # is not read until its stream takes it)
    max_message_fragments: int = 64
    max_queued_bytes: int = 64 << 20
