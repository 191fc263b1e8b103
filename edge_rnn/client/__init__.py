"""A client for ``edge-rnn serve``: one stream over HTTP or WebSocket, sync or async (the ``client`` extra).

>>> with HttpStream("http://127.0.0.1:8000") as s:          # doctest: +SKIP
...     y = s.step(chunk)                                    # (time, features) float32 -> primary output
...     saved = s.snapshot()
>>> with HttpStream("http://127.0.0.1:8000", snapshot=saved) as s:   # resumes where it was     # doctest: +SKIP
...     y = s.step(next_chunk)

``AsyncHttpStream`` and ``WebSocketStream`` (async) take the same calls with
``await``; ``SyncWebSocketStream`` is the blocking WebSocket one. A server
error raises :class:`ServiceError` with its HTTP status (or WebSocket close
code) and the server's error code; outputs come back as float32 arrays of
shape ``(time, width)``, the width being the product of the primary output's
dimensions other than time: it is asked of the server's ``GET /v1/model`` at
the open, unless ``width=`` gives it (``width=0``: flat replies, and no
request for it). An answer that gives none (an error, no answer, a dynamic
feature size) fails the open (``undescribed``), and a reply that is not whole
frames of the width raises ShapeError: never a reply of another shape. Each
client takes the server's ``http://`` or ``ws://`` base URL, or the
``/v1/streams`` or ``/v1/streams/ws`` one.

A stream survives the death of the server process that holds it
(``resume=True``, the default): at the open (a stream opened from zeros) and
every ``checkpoint_every`` steps the client fetches a snapshot, keeps the
chunks sent since, and when the server is gone opens a new stream from the
snapshot (a server of another model refuses it: ``bad_snapshot``), replays
those chunks (their outputs must equal, bit for bit, the ones returned: else
:class:`ReplayDiverged`) and goes on, trying for up to ``resume_timeout``
seconds. ``s.resumes`` counts the resumes, ``s.last_resume_s`` is how long the
last one took. A call interrupted between its request and its reply (a
cancelled task, ``asyncio.wait_for``'s timeout, Ctrl-C), or a WebSocket closed
by a refusal, leaves the stream to be resumed at the next call (with
``resume=False``, that call raises ``out_of_step`` or ``unknown_stream``). The
server's own ``503 overloaded`` is sent again after its ``Retry-After``.
"""

from __future__ import annotations

from edge_rnn.client._http import AsyncHttpStream, HttpStream
from edge_rnn.client._resume import ReplayDiverged, ServiceError
from edge_rnn.client._websocket import SyncWebSocketStream, WebSocketStream

__all__ = ["ServiceError", "ReplayDiverged", "HttpStream", "AsyncHttpStream", "WebSocketStream",
           "SyncWebSocketStream"]
