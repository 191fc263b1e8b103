"""A refusal, and the one place that decides how each is answered: the HTTP status, the error code, and over a
WebSocket the close code.

Both transports answer a refusal with the JSON ``{"type": "error", "code": ..., "message": ...}``; HTTP with its
status (and ``Retry-After`` when overloaded), a WebSocket with the close code :data:`WS_CLOSE` gives that status.
No web framework here: a second server path reuses it as it is.
"""

from __future__ import annotations

from edge_rnn.errors import EdgeRnnError, InferenceError, NonFiniteError, ShapeError, StreamError
from edge_rnn.service._batcher import Overloaded, ShuttingDown
from edge_rnn.service._recorder import Recorder
from edge_rnn.service._status import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_413_CONTENT_TOO_LARGE,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
    WS_1001_GOING_AWAY,
    WS_1003_UNSUPPORTED_DATA,
    WS_1007_INVALID_FRAME_PAYLOAD_DATA,
    WS_1008_POLICY_VIOLATION,
    WS_1009_MESSAGE_TOO_BIG,
    WS_1011_INTERNAL_ERROR,
    WS_1013_TRY_AGAIN_LATER,
)

__all__ = ["Refusal", "WS_CLOSE", "refusal"]

# an HTTP status's WebSocket close code (any other: 1011); shutting down, a 503 like overloaded, closes with 1001
# instead: Refusal.close_code tells them apart by the error's code
WS_CLOSE = {
    HTTP_400_BAD_REQUEST: WS_1007_INVALID_FRAME_PAYLOAD_DATA,
    HTTP_413_CONTENT_TOO_LARGE: WS_1009_MESSAGE_TOO_BIG,
    HTTP_415_UNSUPPORTED_MEDIA_TYPE: WS_1003_UNSUPPORTED_DATA,
    HTTP_429_TOO_MANY_REQUESTS: WS_1013_TRY_AGAIN_LATER,
    HTTP_503_SERVICE_UNAVAILABLE: WS_1013_TRY_AGAIN_LATER,
    HTTP_401_UNAUTHORIZED: WS_1008_POLICY_VIOLATION,
    HTTP_404_NOT_FOUND: WS_1008_POLICY_VIOLATION,
    HTTP_500_INTERNAL_SERVER_ERROR: WS_1011_INTERNAL_ERROR,
}


class Refusal(Exception):
    """A request or message refused: answered with ``status`` over HTTP, :attr:`close_code` over a WebSocket."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def body(self) -> dict[str, str]:
        """The error as the JSON both transports answer with."""
        return {"type": "error", "code": self.code, "message": self.message}

    @property
    def close_code(self) -> int:
        if self.code == "shutting_down":
            return WS_1001_GOING_AWAY
        return WS_CLOSE.get(self.status, WS_1011_INTERNAL_ERROR)


# an engine error, first match in order -> (HTTP status, error code, the rejection it is counted as, Retry-After);
# a StreamError is a stream closed while its step waited (expired, or deleted), an InferenceError the model failing
# (not the chunk); any other engine error is a 400 "error", not counted
_ENGINE_ERRORS: tuple[tuple[type | tuple[type, ...], int, str, str | None, int | None], ...] = (
    (Overloaded, HTTP_503_SERVICE_UNAVAILABLE, "overloaded", "overloaded", 1),
    (ShuttingDown, HTTP_503_SERVICE_UNAVAILABLE, "shutting_down", None, None),
    ((ShapeError, NonFiniteError), HTTP_400_BAD_REQUEST, "bad_chunk", "bad_chunk", None),
    (StreamError, HTTP_404_NOT_FOUND, "unknown_stream", None, None),
    (InferenceError, HTTP_500_INTERNAL_SERVER_ERROR, "inference_failed", None, None),
)


def refusal(e: EdgeRnnError, metrics: Recorder) -> Refusal:
    """An engine error as the refusal it is answered with (counted where it is a rejection)."""
    for kinds, status, code, counted, retry_after in _ENGINE_ERRORS:
        if isinstance(e, kinds):
            if counted is not None:
                metrics.reject(counted)
            return Refusal(status, code, str(e), retry_after=retry_after)
    return Refusal(HTTP_400_BAD_REQUEST, "error", str(e))
