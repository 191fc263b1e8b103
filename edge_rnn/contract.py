"""The streaming-ONNX contract: the one place that reads and writes it.

Every model edge-rnn writes carries, in ``metadata_props``, the key
``edge_rnn`` whose value is JSON::

    {"format": 1,
     "inputs":  [{"name": "x", "batch_axis": 1, "time_axis": 0, "dtype": "float32"}],
     "outputs": [{"name": "y", "batch_axis": 1, "time_axis": 0, "dtype": "float32"}],
     "states":  [{"input": "h0", "output": "hn", "shape": [2, null, 256],
                  "batch_axis": 1, "dtype": "float32"}],
     "source":  {"kind": "lstm", "hidden_size": 256, ...},
     "streamable": true}

``null`` in a state shape marks the batch dimension; ``time_axis`` is null
for models that take one step per call (cells). An integer input (token ids)
may add ``"values": [0, 9999]``, the range it must lie in (the rows of the
embedding table it indexes); the runtime refuses values outside it. A
state input left at zeros is PyTorch's default initial state; a state may
instead carry its own, ``"initial": [...]`` (one stream's row, flattened: a
file lifted from a node with a constant initial state), which a new stream
starts from. Feeding each output state to its input on the next call
continues the sequence exactly. ``docs/streaming-onnx.md`` is
the human-readable version of this module.

This module imports neither torch nor onnx, so the runtime can use it: it
works on the plain ``{key: value}`` metadata map that both ``onnx`` and
``onnxruntime`` expose.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_rnn._numbers import is_int
from edge_rnn.errors import ModelFormatError

__all__ = [
    "axes_problem",
    "check_state_bytes",
    "MAX_STATE_BYTES",
    "MAX_ENTRIES",
    "MAX_INITIAL",
    "METADATA_KEY",
    "FORMAT_VERSION",
    "INITIAL_FORMAT",
    "TensorSpec",
    "StateSpec",
    "Contract",
]

METADATA_KEY = "edge_rnn"
FORMAT_VERSION = 1
# A contract whose states carry their own initial value is written as format 2: a reader of format 1 alone would
# ignore the unknown key and start every stream from zeros, a silently wrong answer, where format 2 makes it refuse.
INITIAL_FORMAT = 2
# Bytes of state per stream, a model's states all together: far above any recurrent state (a 4-layer LSTM of 4096
# units keeps 256 KiB), and small enough that the runtime's state slab, which holds 16 streams' rows from the moment
# a model loads, allocates at most 1 GiB up front when a forged contract declares the most it may. Counted in bytes,
# not elements: 2**28 float64 elements passed an element cap, then asked the slab for 32 GiB.
MAX_STATE_BYTES = 64 << 20
# Inputs, outputs and states a contract may list, each: far above any streaming model's, and a bound on the work of
# reading a contract (every check is linear in them).
MAX_ENTRIES = 1024
# Elements of a state's non-zero initial value, per stream, that a contract may carry as JSON: a lifted file's
# constant initial state (an LSTM of 4096 units keeps 8,192); about 1.5 MB of JSON at most.
MAX_INITIAL = 1 << 16
_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
_ITEMSIZE = {"float32": 4, "float16": 2, "float64": 8, "int64": 8, "int32": 4, "int8": 1, "uint8": 1, "bool": 1}


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ModelFormatError(f"edge_rnn contract: expected {what} to be a non-empty string, got {value!r}")
    return value


def _axis(value: Any, what: str, *, nullable: bool) -> int | None:
    if value is None and nullable:
        return None
    if not is_int(value, least=0):
        raise ModelFormatError(f"edge_rnn contract: expected {what} to be a non-negative int, got {value!r}")
    return value


def _format_version(fmt: Any) -> int:
    """``fmt`` if it is a format this edge-rnn reads; the refusal says when a newer edge-rnn wrote it."""
    if is_int(fmt) and fmt in (FORMAT_VERSION, INITIAL_FORMAT):
        return fmt
    newer = is_int(fmt, least=INITIAL_FORMAT + 1)
    raise ModelFormatError(
        f"edge_rnn contract: expected format {FORMAT_VERSION} or {INITIAL_FORMAT}, got {fmt!r}"
        + (" (a newer edge-rnn wrote this model)" if newer else "")
    )


def _entry(d: Mapping[str, Any], key: str, default: Any, ok: Callable[[Any], bool], expected: str) -> Any:
    """``d[key]`` (``default`` when absent) if ``ok`` says it is ``expected``."""
    value = d.get(key, default)
    if not ok(value):
        raise ModelFormatError(f"edge_rnn contract: expected {key!r} to be {expected}, got {value!r}")
    return value


def axes_problem(rank: int, batch_axis: int | None, time_axis: int | None) -> str | None:
    """What is wrong with a (batch_axis, time_axis) pair for a tensor of ``rank``, or None: the one copy of the rule.

    Both are ints in ``0..rank-1`` (``time_axis`` may be None: one step per call) and differ.
    """
    for what, ax in (("batch_axis", batch_axis), ("time_axis", time_axis)):
        if ax is None and what == "time_axis":
            continue
        if not is_int(ax, 0, rank - 1):
            return f"expected {what} in 0..{rank - 1} (rank {rank}), got {ax!r}"
    if batch_axis == time_axis:
        return f"expected different batch and time axes, got {batch_axis} for both"
    return None


def _initial(value: Any, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ModelFormatError(f"edge_rnn contract: state {name!r}: expected initial to be a list of numbers, got "
                               f"{type(value).__name__}")
    return tuple(value)


def _check_count(group: str, n: int) -> None:
    if n > MAX_ENTRIES:
        raise ModelFormatError(f"edge_rnn contract: expected at most {MAX_ENTRIES:,} {group}, got {n:,}")


def check_state_bytes(states: Iterable[StateSpec], where: str = "edge_rnn contract") -> None:
    """A model's states take at most MAX_STATE_BYTES per stream, all together (each was checked on its own)."""
    total = sum(s.nbytes for s in states)
    if total > MAX_STATE_BYTES:
        raise ModelFormatError(f"{where}: expected at most {MAX_STATE_BYTES >> 20} MiB of state per stream (all "
                               f"states together), got {total:,} bytes; refused rather than allocated")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name, which axes are batch and time, and what values it takes.

    ``dtype`` is the element type (None: as the graph says; files written
    before it was recorded). ``values`` is the inclusive range ``(low, high)``
    an integer input must lie in, e.g. token ids ``(0, vocab - 1)`` for the
    embedding table they index; None where edge-rnn found no bound.
    """

    name: str
    batch_axis: int
    time_axis: int | None = None
    dtype: str | None = None
    values: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ModelFormatError(
                f"edge_rnn contract: {self.name!r}: expected dtype in {list(_DTYPES)}, got {self.dtype!r}")
        if self.values is not None:
            self._check_values()

    def _check_values(self) -> None:
        """``values`` is a pair of integers ``low <= high``, on an input of an integer dtype."""
        v = self.values
        if not isinstance(v, tuple) or len(v) != 2 or not all(map(is_int, v)) or v[0] > v[1]:
            raise ModelFormatError(
                f"edge_rnn contract: {self.name!r}: expected values [low, high] with integers low <= high, "
                f"got {list(v) if isinstance(v, tuple) else v!r}")
        if self.dtype is None or self.dtype in ("float32", "float16", "float64", "bool"):
            raise ModelFormatError(
                f"edge_rnn contract: {self.name!r}: a range of values is for integer inputs, got dtype "
                f"{self.dtype}")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "batch_axis": self.batch_axis, "time_axis": self.time_axis}
        if self.dtype is not None:
            d["dtype"] = self.dtype
        if self.values is not None:
            d["values"] = list(self.values)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TensorSpec":
        if not isinstance(d, Mapping) or "name" not in d:
            raise ModelFormatError(f"edge_rnn contract: expected a tensor entry with a 'name', got {d!r}")
        name = _name(d["name"], "a tensor name")
        values = d.get("values")
        if values is not None and not isinstance(values, list):
            raise ModelFormatError(f"edge_rnn contract: {name!r}: expected values [low, high], got {values!r}")
        t = cls(
            name=name,
            batch_axis=_axis(d.get("batch_axis"), f"batch_axis of {name!r}", nullable=False),
            time_axis=_axis(d.get("time_axis"), f"time_axis of {name!r}", nullable=True),
            dtype=None if d.get("dtype") is None else _name(d["dtype"], f"dtype of {name!r}"),
            values=None if values is None else tuple(values),
        )
        if t.time_axis == t.batch_axis:
            raise ModelFormatError(f"edge_rnn contract: {name!r}: expected different batch and time axes, "
                                   f"got {t.batch_axis} for both")
        return t


@dataclass(frozen=True)
class StateSpec:
    """A recurrent state: graph input ``input`` is fed by graph output ``output``.

    ``shape`` holds ``None`` at ``batch_axis``; every other entry is fixed.
    ``initial`` is a new stream's state, one stream's row (the shape without
    the batch axis) flattened in C order, where the model's own default is not
    zeros (a file lifted by ``edge-rnn lift`` whose node had a constant initial
    state); None: zeros.
    """

    input: str
    output: str
    shape: tuple[int | None, ...]
    batch_axis: int
    dtype: str = "float32"
    initial: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.batch_axis < len(self.shape)) or self.shape[self.batch_axis] is not None:
            raise ModelFormatError(
                f"edge_rnn contract: state {self.input!r}: expected shape {list(self.shape)} to hold null "
                f"at batch_axis {self.batch_axis}"
            )
        others = [d for i, d in enumerate(self.shape) if i != self.batch_axis]
        if not all(is_int(d, least=0) for d in others):
            raise ModelFormatError(
                f"edge_rnn contract: state {self.input!r}: expected fixed non-negative sizes besides the "
                f"batch axis, got {list(self.shape)}"
            )
        if self.dtype not in _DTYPES:
            raise ModelFormatError(
                f"edge_rnn contract: state {self.input!r}: expected dtype in {list(_DTYPES)}, got {self.dtype!r}"
            )
        if self.nbytes > MAX_STATE_BYTES:
            raise ModelFormatError(
                f"edge_rnn contract: state {self.input!r}: expected at most {MAX_STATE_BYTES >> 20} MiB of state per "
                f"stream, got {self.nbytes:,} bytes ({json.dumps(list(self.shape))} {self.dtype}); refused rather "
                "than allocated"
            )
        if self.initial is not None:
            self._check_initial()

    def _check_initial(self) -> None:
        """``initial`` holds one finite number per element of a stream's row, at most MAX_INITIAL of them."""
        v, n = self.initial, self.nbytes // _ITEMSIZE[self.dtype]
        where = f"edge_rnn contract: state {self.input!r}: expected initial"
        if not isinstance(v, tuple):
            raise ModelFormatError(f"{where} to be a list of numbers, got {type(v).__name__}")
        if n > MAX_INITIAL:
            raise ModelFormatError(f"{where} only on a state of at most {MAX_INITIAL:,} elements per stream, got "
                                   f"{n:,}")
        if len(v) != n:
            raise ModelFormatError(f"{where} to hold {n:,} numbers (one stream's row), got {len(v):,}")
        if self.dtype not in ("float32", "float16", "float64"):
            raise ModelFormatError(f"{where} only on a float state, got dtype {self.dtype}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise ModelFormatError(f"{where} to hold finite numbers only")
        with np.errstate(over="ignore"):
            cast = np.asarray(v, np.float64).astype(self.dtype)
        if not np.all(np.isfinite(cast)):  # finite in JSON, infinite in the state's own dtype (1e39 in float32)
            raise ModelFormatError(f"{where} to hold finite numbers in {self.dtype}, got {max(map(abs, v)):g}")

    def initial_row(self) -> np.ndarray | None:
        """One stream's initial state (no batch axis), or None for zeros."""
        if self.initial is None:
            return None
        per_stream = tuple(d for i, d in enumerate(self.shape) if i != self.batch_axis)
        return np.asarray(self.initial, np.float64).astype(self.dtype).reshape(per_stream)

    @property
    def nbytes(self) -> int:
        """The bytes of one stream's row of this state."""
        n = _ITEMSIZE[self.dtype]
        for i, d in enumerate(self.shape):
            if i != self.batch_axis:
                n *= d
        return n

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        """The shape of this state for ``batch`` streams."""
        return tuple(batch if d is None else d for d in self.shape)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StateSpec":
        if not isinstance(d, Mapping):
            raise ModelFormatError(f"edge_rnn contract: expected a state entry (an object), got {d!r}")
        missing = [k for k in ("input", "output", "shape", "batch_axis") if k not in d]
        if missing:
            raise ModelFormatError(f"edge_rnn contract: state entry {d!r} lacks {missing}")
        name = _name(d["input"], "a state input name")
        out = _name(d["output"], f"the output of state {name!r}")
        if name == out:
            raise ModelFormatError(f"edge_rnn contract: state {name!r}: expected an output name other than the input")
        if not isinstance(d["shape"], list):
            raise ModelFormatError(
                f"edge_rnn contract: state {name!r}: expected shape to be a list, got {d['shape']!r}"
            )
        return cls(
            input=name,
            output=out,
            shape=tuple(d["shape"]),
            batch_axis=_axis(d["batch_axis"], f"batch_axis of state {name!r}", nullable=False),
            dtype=_name(d.get("dtype", "float32"), f"dtype of state {name!r}"),
            initial=_initial(d.get("initial"), name),
        )

    def to_dict(self) -> dict[str, Any]:
        d = {"input": self.input, "output": self.output, "shape": list(self.shape), "batch_axis": self.batch_axis,
             "dtype": self.dtype}
        if self.initial is not None:
            d["initial"] = list(self.initial)
        return d


@dataclass(frozen=True)
class Contract:
    """Which inputs feed which output states, and where batch and time are."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    states: tuple[StateSpec, ...]
    source: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=True)
    format: int = FORMAT_VERSION  # set from the states: INITIAL_FORMAT where one carries an initial value
    # False when chunked calls cannot equal one pass (a bidirectional layer needs
    # the future); the model then runs one whole sequence per call.
    streamable: bool = True
    # The number of time steps every call takes, where the graph fixes it (a static form for NPUs); None: any.
    fixed_chunk: int | None = None

    def __post_init__(self) -> None:
        for group in ("inputs", "outputs", "states"):
            _check_count(group, len(getattr(self, group)))
        names = [t.name for t in self.inputs] + [s.input for s in self.states]
        outs = [t.name for t in self.outputs] + [s.output for s in self.states]
        for kind, group in (("input", names), ("output", outs)):
            dup = sorted(n for n, k in Counter(group).items() if k > 1)  # one pass: a count per name was quadratic
            if dup:
                raise ModelFormatError(f"edge_rnn contract: expected unique {kind} names, got duplicates {dup[:10]}"
                                       + (f" and {len(dup) - 10} more" if len(dup) > 10 else ""))
        check_state_bytes(self.states)
        _format_version(self.format)
        if self._has_initial:
            object.__setattr__(self, "format", INITIAL_FORMAT)

    @property
    def _has_initial(self) -> bool:
        return any(s.initial is not None for s in self.states)

    @property
    def is_streaming(self) -> bool:
        """True when the model takes a time axis (several steps per call)."""
        return any(t.time_axis is not None for t in self.inputs)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "format": self.format,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "states": [s.to_dict() for s in self.states],
            "source": dict(self.source),
            "streamable": self.streamable,
        }
        if self.fixed_chunk is not None:
            out["fixed_chunk"] = self.fixed_chunk
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Contract":
        if not isinstance(d, Mapping):
            raise ModelFormatError(f"edge_rnn contract: expected a JSON object, got {type(d).__name__}")
        fmt = _format_version(d.get("format"))
        inputs = _entry(d, "inputs", None, lambda v: isinstance(v, list), "a list")
        outputs = _entry(d, "outputs", None, lambda v: isinstance(v, list), "a list")
        states = _entry(d, "states", None, lambda v: isinstance(v, list), "a list")
        for group, entries in (("inputs", inputs), ("outputs", outputs), ("states", states)):
            _check_count(group, len(entries))  # before any entry is read
        streamable = _entry(d, "streamable", True, lambda v: isinstance(v, bool), "true or false")
        source = _entry(d, "source", {}, lambda v: isinstance(v, Mapping), "an object")
        fixed = _entry(d, "fixed_chunk", None, lambda v: v is None or is_int(v, least=1), "an int >= 1")
        read_states = tuple(StateSpec.from_dict(s) for s in states)
        if fmt == FORMAT_VERSION and any(s.initial is not None for s in read_states):
            raise ModelFormatError(f"edge_rnn contract: a state's initial value needs format {INITIAL_FORMAT} (a "
                                   f"format {FORMAT_VERSION} reader would start from zeros), got format {fmt}")
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in inputs),
            outputs=tuple(TensorSpec.from_dict(t) for t in outputs),
            states=read_states,
            source=dict(source),
            format=fmt,
            streamable=streamable,
            fixed_chunk=fixed,
        )

    @classmethod
    def from_json(cls, text: str) -> "Contract":
        """The contract in ``text``, refused in one line (ModelFormatError) wherever the JSON cannot be read: not
        JSON, nested too deep, a number past Python's digit limit (ValueError), or a string holding a lone
        surrogate (``"\\ud800"``: no UTF-8 text, so it could be neither printed nor written back)."""
        try:
            d = json.loads(text)
            json.dumps(d, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ModelFormatError("edge_rnn contract: expected UTF-8 text, got a string with a lone surrogate "
                                   "(an unpaired \\ud800-\\udfff escape)") from None
        except (ValueError, TypeError) as e:  # JSONDecodeError and the int-digits limit are ValueErrors
            raise ModelFormatError(f"edge_rnn contract: expected JSON, got invalid text ({str(e)[:120]})") from None
        except RecursionError:  # "[" * 100000: nesting no contract has
            raise ModelFormatError("edge_rnn contract: expected JSON, got nesting too deep to read") from None
        return cls.from_dict(d)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> "Contract | None":
        """Read the contract from a model's metadata map; None when it has none.

        Works on ``{p.key: p.value for p in model.metadata_props}`` and on
        onnxruntime's ``session.get_modelmeta().custom_metadata_map``.
        """
        text = metadata.get(METADATA_KEY)
        return None if text is None else cls.from_json(text)

    def to_metadata(self) -> dict[str, str]:
        """The metadata entries that carry this contract."""
        return {METADATA_KEY: self.to_json()}
