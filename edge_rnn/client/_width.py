"""How a client shapes a step's reply as ``(time, width)``: the width is the primary output's values per frame, the
product of its dimensions other than the time axis, as the server's ``GET /v1/model`` describes them, or as the
caller gives it (``width=N``; ``width=0``: flat replies, and no request for it).

The server sends the primary output time first (``edge_rnn.service._codec``), so a reply of ``time x width``
float32 values reshapes to ``(time, width)``; a cell's (no time axis) is one row, and a reply of any other number
of values is a ShapeError. A description that gives no width
(a feature size left dynamic, a server that does not answer) fails the open, saying how to skip the request: the
client never returns replies of a shape that depends on whether one extra request succeeded.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, NamedTuple

import numpy as np

from edge_rnn.client._resume import ServiceError
from edge_rnn.client._wire import auth_headers, http_base, said
from edge_rnn.errors import EdgeRnnError, ShapeError

__all__ = ["MAX_SIZE", "WS_DESCRIBE_S", "Described", "given_width", "width_of", "width_from", "ask_width",
           "aask_width", "output"]

MAX_SIZE = 2**31 - 1  # the largest size a description may give: a frame of 8 GiB of float32 is no frame
# seconds a WebSocket client waits for the description: websockets' own open timeout, which its handshake waits
WS_DESCRIBE_S = 10.0
_SKIP = "pass width=N (values per frame) or width=0 (flat replies) to open without it"
_REFUSED = (401, 403)  # the server refusing the caller (a token): its own error, which the open would meet too


class Described(NamedTuple):
    """How replies are shaped: ``width`` values per frame, and whether a reply is ``one_frame`` exactly (a cell's:
    its model has no time axis)."""

    width: int
    one_frame: bool = False


def _is_size(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_SIZE


def given_width(width: Any) -> int | None:
    """The caller's ``width=``, checked: None (ask the server), 0 (flat replies) or the values per frame."""
    if width is None:
        return None
    if isinstance(width, numbers.Integral) and not isinstance(width, bool) and 0 <= width <= MAX_SIZE:
        return int(width)
    raise EdgeRnnError(f"width: expected an integer in [0, {MAX_SIZE}] (values per frame; 0: flat replies), "
                       f"got {width!r}")


def width_of(model: Any) -> int:
    """The primary output's width from ``GET /v1/model``'s answer: the product, in Python ints, of the output's
    dimensions other than its ``time_axis`` (all of them where that is null: a cell's one frame a call). Raises
    ValueError saying why the answer gives none: no such output, a feature size dynamic (null), a size out of
    [1, MAX_SIZE].

    >>> width_of({"outputs": [{"shape": [None, 2, 3], "time_axis": 0}]})
    6
    """
    shape, t = _primary(model)
    features = [d for i, d in enumerate(shape) if i != t]
    if None in features:
        raise ValueError(f"expected the primary output's feature sizes fixed, got shape {shape} (time axis {t}): "
                         "a size left dynamic (null) gives no width")
    if not all(d is None or _is_size(d) for d in shape):
        raise ValueError(f"expected sizes in [1, {MAX_SIZE}], got shape {shape!r:.120}")
    width = math.prod(features)
    if width > MAX_SIZE:
        raise ValueError(f"expected a width (values per frame) of at most {MAX_SIZE}, got {width} (shape {shape})")
    return width


def _primary(model: Any) -> tuple[list, int | None]:
    """The primary output's shape and time axis in ``GET /v1/model``'s answer (ValueError: none that reads)."""
    try:
        port = model["outputs"][0]
        shape, t = port["shape"], port["time_axis"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("expected outputs[0] with its shape and time_axis, got "
                         f"{json.dumps(model, default=str)[:120]}") from None
    if not isinstance(shape, list) or not (t is None or (type(t) is int and 0 <= t < len(shape))):
        raise ValueError(f"expected a shape (a list) and its time_axis (one of its axes, or null), got shape "
                         f"{shape!r:.80} and time_axis {t!r:.20}")
    return shape, t


def _undescribed(status: int, why: str) -> ServiceError:
    """The open's error when the model could not be described (``why``: "expected X, got Y"): ``status`` 0 where
    no answer came."""
    return ServiceError(status, "undescribed", f"GET /v1/model, which gives the width of replies (time, width): "
                        f"{why}; {_SKIP}")


def _json(body: bytes) -> Any:
    """``body`` as JSON, or None where it is none: not JSON, or nested past what the parser takes (a hostile
    answer raises RecursionError out of json.loads)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def width_from(status: int, body: bytes) -> Described:
    """How replies are shaped (their width, and whether each is one frame: a cell's) from ``GET /v1/model``'s
    answer (its status and body), or the ServiceError saying why it gives no width."""
    answer = _json(body)
    if status in _REFUSED and isinstance(answer, dict) and "code" in answer:
        raise ServiceError(status, said(answer["code"], 80), said(answer.get("message", ""), 400))
    if status != 200:
        got = (f"{said(answer.get('code'), 80)}: {said(answer.get('message', ''), 120)}"
               if isinstance(answer, dict) else body[:80].decode("utf-8", "replace"))
        raise _undescribed(status, f"expected the model's description, got {status} ({got[:120]})")
    if answer is None:
        raise _undescribed(status, f"expected the model's description as JSON, got {body[:40]!r}")
    try:
        return Described(width_of(answer), _primary(answer)[1] is None)
    except ValueError as e:
        raise _undescribed(status, str(e)) from None
    except RecursionError:
        raise _undescribed(status, "expected the model's description, got a JSON answer nested too deep") from None


def _no_answer(e: Exception, timeout: float) -> ServiceError:
    import httpx

    got = f"no answer within {timeout} s" if isinstance(e, httpx.TimeoutException) else f"{type(e).__name__}: {e}"
    return _undescribed(0, f"expected the model's description, got {got}")


def ask_width(url: str, token: str | None, timeout: float) -> Described:
    """The width as the server describes its model (:func:`width_from`); nothing listening at ``url`` raises
    httpx's ConnectError, as the open itself would."""
    import httpx

    try:
        r = httpx.get(http_base(url) + "/v1/model", headers=auth_headers(token), timeout=timeout)
    except httpx.ConnectError:
        raise
    except httpx.HTTPError as e:
        raise _no_answer(e, timeout) from None
    return width_from(r.status_code, r.content)


async def aask_width(url: str, token: str | None, timeout: float) -> Described:
    """:func:`ask_width`, async."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            r = await http.get(http_base(url) + "/v1/model", headers=auth_headers(token))
    except httpx.ConnectError:
        raise
    except httpx.HTTPError as e:
        raise _no_answer(e, timeout) from None
    return width_from(r.status_code, r.content)


def output(data: bytes, width: int, one_frame: bool = False) -> np.ndarray:
    """A step's reply as ``(time, width)`` float32 (flat where ``width`` is 0); a reply that is not whole frames of
    the width, or (``one_frame``: a cell's) not exactly one, raises ShapeError naming both."""
    values, odd = divmod(len(data), 4)
    if odd or (width and values % width):
        raise ShapeError(f"reply: expected whole frames of {width or 1} float32 value(s) (the width), got "
                         f"{len(data)} bytes ({len(data) / 4:g} values); pass the model's width=N, or width=0 for "
                         "flat replies")
    if one_frame and values != width:
        raise ShapeError(f"reply: expected one frame of {width} float32 value(s) (the model has no time axis: a "
                         f"cell answers one frame a call), got {values // width} frames ({values} values)")
    y = np.frombuffer(data, dtype="<f4")
    return y.reshape(-1, width) if width else y
