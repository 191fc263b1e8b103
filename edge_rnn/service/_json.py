"""JSON chunks and replies: ``{"x": ...}`` read into the model's input arrays, the outputs written back, both
bounded, and both off the event loop when they are large.

A chunk is ``{"x": nested lists}`` for a model with one input, or ``{"x": {input name: nested lists, ...}}``;
the lists are in the model's own per-stream layout. Its values are numbers and only numbers: a string, a
boolean (but for a bool input, which takes booleans only), null, NaN or Infinity (but for a model loaded with
``allow_nonfinite``, which takes JSON's ``NaN``, ``Infinity`` and ``-Infinity`` as Python's parser writes them, and
a float literal beyond float64 as Inf), an object, another key beside
``"x"``, a repeated key, ragged lists, more than 64 dimensions, nesting deeper than Python's recursion limit,
an integer input given 1.5, a value beyond the input's dtype: each is a 400 ``bad_chunk`` before any state
moves. A number is known to be one by the parser's own hooks, which count them: numpy would silently read
``[1, true]`` as ``[1, 1]`` and ``"1"`` as 1.0.

The reply is ``{"outputs": {name: nested lists}}``, every output. Its size is bounded before the step, from the
chunk's steps and the outputs' shapes at 25 bytes a value (the longest a float takes, and a comma): over
``max_message_bytes`` it is a 413 and the stream does not move. JSON has no NaN or Inf: a model loaded with
``allow_nonfinite`` answers them as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (as protobuf's
JSON mapping does), so that encoding a reply cannot fail once its step is applied.

A large message is parsed and encoded in a worker thread, one message at a time, in small pieces (a hook per
number; 1024 values per piece of reply), so that the event loop gets the GIL back within a switch interval: one
client's JSON costs the others milliseconds, not the hundreds a whole parse and encode on the loop took. No web
framework here.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from edge_rnn.runtime import Port, StreamingModel
from edge_rnn.service._errors import Refusal
from edge_rnn.service._status import HTTP_400_BAD_REQUEST, HTTP_413_CONTENT_TOO_LARGE

__all__ = ["JsonChunks", "VALUE_BYTES"]

VALUE_BYTES = 25  # the most one value takes in a reply: "-2.2250738585072014e-308" and a comma
_BLOCK = 1024  # values per piece of a reply: one short json.dumps each
_INLINE = 16 << 10  # bytes of JSON parsed on the loop (about 0.3 ms): a thread's round trip costs more
_PAUSE = 2e-4  # seconds a worker thread sleeps about every millisecond of work: the GIL, passed on at once
_NUMBERS_PER_PAUSE = 2048
_WANT = {"f": "numbers", "i": "integers", "u": "integers", "b": "booleans"}
_KINDS = {"f": "iuf", "b": "b"}  # the kinds numpy reads that an input of a kind takes (any other: integers)


def _bad(message: str) -> Refusal:
    return Refusal(HTTP_400_BAD_REQUEST, "bad_chunk", message)


class _Numbers:
    """The parser's number hooks: each number counted (what numpy cannot tell from a boolean), none infinite or NaN
    unless ``nonfinite``; in a worker thread (``polite``), a short sleep every 2048 numbers lets a waiting event loop
    take the GIL at once, not after a switch interval (5 ms). They raise a :class:`Refusal` of their own, which the
    parser lets through whole."""

    __slots__ = ("count", "polite", "nonfinite")

    def __init__(self, polite: bool, nonfinite: bool = False):
        self.count, self.polite, self.nonfinite = 0, polite, nonfinite

    def _counted(self) -> None:
        self.count += 1
        if self.polite and not self.count % _NUMBERS_PER_PAUSE:
            time.sleep(_PAUSE)

    def int(self, s: str) -> int:
        self._counted()
        try:
            return int(s)
        except ValueError:  # beyond 4300 digits: Python's own limit
            raise _bad(f"x: expected integers of at most 4300 digits, got one of {len(s)}") from None

    def float(self, s: str) -> float:
        self._counted()
        v = float(s)
        if not (self.nonfinite or math.isfinite(v)):
            raise _not_finite(s[:20])
        return v

    def constant(self, name: str) -> float:
        """``NaN``, ``Infinity`` or ``-Infinity``: no JSON, but what Python's json writes for them."""
        if not self.nonfinite:
            raise _not_finite(name)
        self._counted()
        return float(name)


def _not_finite(given: str) -> Refusal:
    return _bad(f"x: expected finite numbers, got {given} (serve --allow-nonfinite lets NaN and Inf through)")


def _object(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _bad(f"expected each JSON key once, got {twice[:40]!r} twice")
    return d


def _names(keys: Any) -> str:
    """Some keys, for a message: a client's object may have thousands."""
    keys = sorted(keys)
    return f"{[k[:40] for k in keys[:8]]}" + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


class JsonChunks:
    """One model's JSON chunks and replies (see the module docstring); ``limit`` bounds the reply."""

    def __init__(self, model: StreamingModel, limit: int):
        self.inputs, self.outputs, self.limit = model.inputs, model.outputs, limit
        self._model = model  # its allow_nonfinite, read for each chunk
        self._keys = {p.name: json.dumps(p.name) for p in self.outputs}
        self._turn = asyncio.Semaphore(1)  # one message in a thread at a time: one thread competes for the GIL

    # ------------------------------------------------------------ requests
    async def parse(self, body: bytes | bytearray) -> Any:
        """The chunk in ``body``, as the runtime takes it (one array, or a dict by input name); a 400 or 413."""
        chunk = self.read(body) if len(body) <= _INLINE else await self._off_loop(self.read, body, True)
        self._check_reply(chunk)
        return chunk

    def read(self, body: bytes | bytearray, polite: bool = False) -> Any:
        numbers = _Numbers(polite, self._model.allow_nonfinite)
        with _no_collection(polite):
            doc = _load(body, numbers)
            if not isinstance(doc, dict) or doc.keys() != {"x"}:
                got = f"keys {_names(doc)}" if isinstance(doc, dict) else type(doc).__name__
                raise _bad(f"expected a JSON object {{\"x\": ...}}, got {got}")
            values = self._by_input(doc["x"])
            arrays = {p.name: _array(p, values[p.name]) for p in self.inputs}
            del doc, values
        if numbers.count != sum(a.size for a in arrays.values() if a.dtype.kind != "b"):
            raise _bad("x: expected numbers only, got strings, booleans or null among them")
        return arrays[self.inputs[0].name] if len(self.inputs) == 1 else arrays

    def _by_input(self, x: Any) -> dict[str, Any]:
        names = [p.name for p in self.inputs]
        if isinstance(x, dict):
            if sorted(x) != sorted(names):
                raise _bad(f"x: expected the inputs {sorted(names)}, got {_names(x)}")
            return x
        if len(names) > 1:
            raise _bad(f"x: expected an object of the inputs {sorted(names)}, got {type(x).__name__}")
        return {names[0]: x}

    def _check_reply(self, chunk: Any) -> None:
        """A 413 before the step if the reply could exceed the limit (unknown where an output's size is)."""
        p = self.inputs[0]
        a = chunk if isinstance(chunk, np.ndarray) else chunk[p.name]
        t = p.stream_time_axis
        if t is not None and a.ndim != len(p.stream_shape):
            return  # a shape the runtime refuses: no reply
        steps = 1 if t is None else a.shape[t]
        bound = self.reply_bound(steps)
        if bound is not None and bound > self.limit:
            raise Refusal(HTTP_413_CONTENT_TOO_LARGE, "too_large", f"expected a JSON reply of at most {self.limit} "
                          f"bytes, got a chunk of {steps} steps whose reply could take {bound} ({VALUE_BYTES} bytes a "
                          "value): send fewer steps at a time, or binary")

    def reply_bound(self, steps: int) -> int | None:
        """The most bytes a reply to a chunk of ``steps`` time steps takes; None where an output's size is not
        known before the step (a dynamic dimension other than time)."""
        total = len('{"outputs":{}}')
        for p in self.outputs:
            shape = [steps if i == p.stream_time_axis and d is None else d for i, d in enumerate(p.stream_shape)]
            if None in shape:
                return None
            values, lists, outer = 1, 0, 1
            for d in shape:
                lists += outer
                outer *= d
                values *= d
            total += len(self._keys[p.name]) + 2 + values * VALUE_BYTES + lists * 3  # [ ] and a comma per list
        return total

    # ------------------------------------------------------------ replies
    async def encode(self, out: dict[str, np.ndarray]) -> bytes:
        """The reply ``{"outputs": {...}}``; never fails for the outputs of a step (NaN and Inf as strings)."""
        if sum(np.size(y) for y in out.values()) <= 2 * _BLOCK:
            return self.write(out)
        return await self._off_loop(self.write, out, True)

    def write(self, out: dict[str, np.ndarray], polite: bool = False) -> bytes:
        parts = ['{"outputs":{']
        for i, (name, y) in enumerate(out.items()):
            key = self._keys.get(name) or json.dumps(name)
            parts.append(f",{key}:" if i else f"{key}:")
            for piece in _pieces(np.asarray(y)):
                parts.append(piece)
                if polite:
                    time.sleep(_PAUSE)
        parts.append("}}")
        return "".join(parts).encode()

    async def _off_loop(self, work: Callable[[Any, bool], Any], arg: Any, polite: bool) -> Any:
        """``work(arg)`` in a worker thread, one at a time; the turn passes on when the thread ends, even if the
        request that waits for it was cancelled meanwhile."""
        await self._turn.acquire()
        try:
            done = asyncio.get_running_loop().run_in_executor(None, work, arg, polite)
        except BaseException:
            self._turn.release()
            raise
        done.add_done_callback(self._ended)
        return await asyncio.shield(done)

    def _ended(self, done: asyncio.Future) -> None:
        self._turn.release()
        if not done.cancelled():
            done.exception()  # retrieved: a request cancelled meanwhile leaves no "never retrieved" warning


@contextmanager
def _no_collection(off: bool) -> Iterator[None]:
    """No garbage collection while ``off``: the parsed lists live only until they are arrays, and a collection
    meanwhile would move thousands of them to the old generation, whose full collections then hold the GIL for
    tens of milliseconds (they doubled the p99 of other clients). They hold no cycles: nothing is leaked."""
    if not off or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _load(body: bytes | bytearray, numbers: _Numbers) -> Any:
    try:
        text = body.decode("utf-8")  # json.loads would also take UTF-16 and UTF-32 bytes; the media type says UTF-8
    except UnicodeDecodeError as e:
        raise _bad(f"expected UTF-8 JSON, got a byte that is not ({e.reason} at {e.start})") from None
    try:
        return json.loads(text, parse_int=numbers.int, parse_float=numbers.float, parse_constant=numbers.constant,
                          object_pairs_hook=_object)
    except RecursionError:
        raise _bad("expected JSON {\"x\": ...}, got nesting too deep to read") from None
    except ValueError as e:  # not JSON (the hooks' refusals are no ValueError: they come through whole)
        raise _bad(f"expected JSON {{\"x\": ...}}, got text that does not parse as JSON ({str(e)[:200]})") from None


def _array(p: Port, value: Any) -> np.ndarray:
    """One input's nested lists as an array of its dtype; a 400 for anything but numbers of that kind, ragged
    lists, more than 64 dimensions, or a value beyond the dtype."""
    raw = _read(p, value)
    if raw.size == 0:  # no values, no kind: the runtime refuses an empty chunk by its shape
        return raw.astype(p.dtype)
    kind = p.dtype.kind
    if raw.dtype.kind not in _KINDS.get(kind, "iu"):
        raise _bad(f"{p.name}: expected {p.dtype} values ({_WANT.get(kind, 'numbers')}), got {_described(raw)}")
    if kind == "f":
        with np.errstate(over="raise", invalid="raise"):
            try:
                return raw.astype(p.dtype)
            except FloatingPointError:
                raise _bad(f"{p.name}: expected values within {p.dtype}'s range, got a finite value beyond "
                           "it") from None
    if kind in "iu":
        info = np.iinfo(p.dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise _bad(f"{p.name}: expected values within {p.dtype}'s range, got {raw.min()}..{raw.max()}")
    return raw.astype(p.dtype)


def _read(p: Port, value: Any) -> np.ndarray:
    """The nested lists as numpy reads them, of whatever kind; a 400 where it cannot (ragged, over 64 dims)."""
    try:
        raw = np.asarray(value)
        if raw.dtype.kind == "O" and p.dtype.kind == "f":  # integers beyond 64 bits are still numbers for floats
            raw = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as e:
        raise _bad(f"{p.name}: expected a rectangular array of {_WANT.get(p.dtype.kind, 'numbers')}, got one numpy "
                   f"cannot read ({str(e)[:200]})") from None
    return raw


def _described(raw: np.ndarray) -> str:
    kind = raw.dtype.kind
    if kind == "f":
        return f"numbers written as floats ({raw.reshape(-1)[0].item()!r}, ...)"
    return {"U": "strings", "b": "booleans", "i": "numbers", "u": "numbers"}.get(
        kind, "null, objects, or integers beyond 64 bits")


def _pieces(y: np.ndarray) -> Iterator[str]:
    """``y`` as JSON, in pieces of at most about :data:`_BLOCK` values."""
    if y.ndim == 0 or y.size <= _BLOCK:
        yield _dumps(y)
        return
    yield "["
    if y.ndim == 1:
        for a in range(0, len(y), _BLOCK):
            yield ("," if a else "") + _dumps(y[a : a + _BLOCK])[1:-1]
    else:
        per = max(1, _BLOCK // y[0].size)
        for a in range(0, len(y), per):
            if a:
                yield ","
            block = y[a : a + per]
            if block.size <= _BLOCK:
                yield _dumps(block)[1:-1]
            else:  # one row of more than a block: its own pieces
                yield from _pieces(block[0])
    yield "]"


def _dumps(a: np.ndarray) -> str:
    if a.dtype.kind == "f" and not np.isfinite(a).all():  # JSON has no NaN or Inf: named, as strings
        named = a.astype(object)
        named[np.isnan(a)], named[np.isposinf(a)], named[np.isneginf(a)] = "NaN", "Infinity", "-Infinity"
        return json.dumps(named.tolist(), separators=(",", ":"), allow_nan=False)
    return json.dumps(a.tolist(), separators=(",", ":"), allow_nan=False)
