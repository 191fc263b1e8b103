"""Golden vectors: a short recorded stream that lets a bundle's variant prove itself on the CPU it runs on.

``edge-rnn package`` records, on the packaging host, one stream through the
float32 model: its inputs, cut into chunks of random lengths, the outputs of
every step and the states after every chunk (:func:`record`). A variant
replays the same chunks (a static form, its fixed chunk per call) on whatever
CPU it lands on (:func:`replay`), and every output and state it produces is
held against the float32 reference with the variant's bound, element by
element: ``|variant - reference| <= atol + rtol * |reference|``. int8 kernels
differ between CPUs (an AVX2 CPU without VNNI saturates where a VNNI or ARM64
one does not), so the error measured where the bundle was made is a claim
about that machine only; the replay checks it on this one.

The file is a plain ``.npz`` (no pickles, read with ``allow_pickle=False``),
its SHA-256 in the manifest.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_rnn._numbers import is_int
from edge_rnn.errors import ModelFormatError, ShapeError, UnsupportedError
from edge_rnn.runtime._manifest import GoldenReplay
from edge_rnn.runtime._verdicts import TensorResults

__all__ = ["Golden", "GoldenCheck", "TensorCheck", "record", "replay", "save_golden", "load_golden", "golden_chunks",
           "thin_outputs"]

GOLDEN_FORMAT = 1
MAX_GOLDEN_BYTES = 64 << 20  # a golden file is a few hundred KiB; anything far larger is not one
_MAX_STEPS = 1 << 20  # steps of a golden stream, at most (it is a short one)


@dataclass(frozen=True)
class Golden:
    """One recorded stream. Arrays are one stream's, without the batch axis: an input or output has its time
    steps along its own time axis (calls along axis 0 for a model without one); ``states[name]`` is
    ``(len(chunks), *state)``, the state after each chunk. ``whole``: the model is not streamable, and the stream
    was one call. ``output_steps``: where the outputs are kept at some steps only (a long golden stream, made for
    a large fixed chunk, thinned to stay small), those steps, in order; None: every step."""

    chunks: tuple[int, ...]
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    states: dict[str, np.ndarray]
    whole: bool = False
    output_steps: tuple[int, ...] | None = None

    @property
    def steps(self) -> int:
        return int(sum(self.chunks))


@dataclass(frozen=True)
class TensorCheck:
    name: str
    kind: str  # "output" | "state"
    max_abs: float
    worst_fraction: float  # max |got - ref| / (atol + rtol * |ref|): <= 1 passes

    @property
    def ok(self) -> bool:
        return self.worst_fraction <= 1.0


@dataclass
class GoldenCheck(TensorResults):
    """A variant's replay of the golden stream against the float32 reference: ``ok``, ``max_abs``, ``worst`` and
    ``worst_fraction`` over its tensors (:class:`~edge_rnn.runtime._verdicts.TensorResults`)."""

    atol: float
    rtol: float
    calls: int
    tensors: list[TensorCheck] = field(default_factory=list)

    def figures(self) -> GoldenReplay:
        """What a manifest records of it."""
        return GoldenReplay(self.max_abs, self.worst_fraction, self.ok, self.calls,
                            {t.name: {"kind": t.kind, "max_abs": t.max_abs, "worst_fraction": t.worst_fraction}
                             for t in self.tensors})


def _fixed_chunk(model: Any) -> int | None:
    return next((p.shape[p.time_axis] for p in model.inputs
                 if p.time_axis is not None and p.shape[p.time_axis] is not None), None)


def _timed(model: Any) -> bool:
    return any(p.stream_time_axis is not None for p in model.inputs)


MIN_CHUNKS = 4  # a golden stream carries its state across at least three chunk ends


def golden_chunks(rng: np.random.Generator, steps: int, multiple: int = 1, longest: int = 8,
                  least: int = MIN_CHUNKS) -> tuple[int, ...]:
    """Random chunk lengths, each a multiple of ``multiple`` (a static form's fixed chunk), adding up to at least
    ``steps``, and at least :data:`MIN_CHUNKS` of them: so every variant of a bundle, static forms included,
    replays the same chunk ends, and a variant that mishandles its incoming state cannot pass."""
    out: list[int] = []
    while sum(out) < steps or len(out) < least:
        out.append(multiple * int(rng.integers(1, longest + 1)))
    return tuple(out)


def _piece(port: Any, a: np.ndarray, start: int, n: int, timed: bool) -> np.ndarray:
    """One call's piece of a golden input: steps ``start .. start + n`` along its time axis; for a model with no
    time axis, call ``start``'s row; an input without one in a model with one is the same on every call."""
    t = port.stream_time_axis
    if t is None:
        return a if timed else a[start]
    return a[(slice(None),) * t + (slice(start, start + n),)]


def _calls(model: Any, golden: Golden) -> list[int]:
    """The lengths of the calls a model replays the golden stream in: the recorded chunks, a static form's fixed
    chunk, or one call for a model that is not streamable."""
    if golden.whole or not model.streamable:
        if not golden.whole:
            raise UnsupportedError("the golden stream was recorded in chunks; this model takes a whole sequence")
        return [golden.steps]
    k = _fixed_chunk(model)
    if k is None:
        return list(golden.chunks)
    if any(c % k for c in golden.chunks):
        raise UnsupportedError(f"the golden chunks {list(golden.chunks)} are not multiples of this model's fixed "
                               f"chunk {k}")
    return [k] * (golden.steps // k)


def _run(model: Any, golden: Golden) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[int]]:
    """The model over the golden inputs; its outputs (the golden layout) and its states after each recorded chunk."""
    calls = _calls(model, golden)
    timed = _timed(model)
    if timed and calls != list(golden.chunks) and any(p.stream_time_axis is None for p in model.outputs):
        raise UnsupportedError("an output without a time axis (one value per call) cannot be compared over calls "
                               f"{calls[:4]}... other than the recorded chunks {list(golden.chunks)[:4]}...")
    outs, states = _stream(model, golden, calls, timed)
    joined = {}
    for p in model.outputs:
        t = p.stream_time_axis
        joined[p.name] = np.stack(outs[p.name]) if t is None else np.concatenate(outs[p.name], axis=t)
    return joined, {k: np.stack(v) for k, v in states.items()}, calls


def _stream(model: Any, golden: Golden, calls: list[int], timed: bool
            ) -> tuple[dict[str, list[np.ndarray]], dict[str, list[np.ndarray]]]:
    """One stream over the golden inputs in ``calls``: each call's outputs, and the states at each recorded
    chunk's end."""
    ends = set(np.cumsum(golden.chunks).tolist())
    stream = model.open_stream()
    outs: dict[str, list[np.ndarray]] = {p.name: [] for p in model.outputs}
    states: dict[str, list[np.ndarray]] = {s.input: [] for s in model.states}
    start = 0
    for n in calls:
        chunk = {p.name: _piece(p, golden.inputs[p.name], start, n, timed) for p in model.inputs}
        for name, y in model.step(stream, chunk).items():
            outs[name].append(y)
        start += n
        if start in ends:
            for name in states:
                states[name].append(np.array(stream.state[name]))
    return outs, states


def _thinned(model: Any, outs: dict[str, np.ndarray], steps: tuple[int, ...] | None) -> dict[str, np.ndarray]:
    """The outputs at ``steps`` only (along each one's time axis, or its rows for a model without one)."""
    if steps is None:
        return outs
    timed = _timed(model)
    index = np.asarray(steps, np.int64)
    out = dict(outs)
    for p in model.outputs:
        t = p.stream_time_axis
        if t is not None or not timed:
            out[p.name] = np.take(outs[p.name], index, axis=0 if t is None else t)
    return out


def thin_outputs(model: Any, golden: Golden, steps: int) -> Golden:
    """``golden`` with its outputs kept at ``steps`` steps only, evenly spread and always including the last
    step of every chunk (where the state was just carried in)."""
    ends = np.cumsum(golden.chunks) - 1
    spread = np.linspace(0, golden.steps - 1, max(steps - len(ends), 0)).round().astype(np.int64)
    keep = tuple(int(i) for i in np.unique(np.concatenate([spread, ends])))
    return Golden(golden.chunks, golden.inputs, _thinned(model, golden.outputs, keep), golden.states, golden.whole,
                  keep)


def record(model: Any, inputs: dict[str, np.ndarray], chunks: tuple[int, ...]) -> Golden:
    """Stream ``inputs`` (one stream's, as :class:`Golden` holds them) through ``model`` in ``chunks``."""
    whole = not model.streamable
    if whole:
        chunks = (int(sum(chunks)),)
    golden = Golden(tuple(int(c) for c in chunks), dict(inputs), {}, {}, whole)
    outs, states, _ = _run(model, golden)
    return Golden(golden.chunks, golden.inputs, outs, states, whole)


def _fraction(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> tuple[float, float]:
    if got.shape != ref.shape:
        return math.inf, math.inf
    if ref.dtype.kind != "f":  # ids, flags: exact
        return (0.0, 0.0) if np.array_equal(got, ref) else (math.inf, math.inf)
    g, r = got.astype(np.float64), ref.astype(np.float64)
    diff = np.abs(g - r)
    if not np.isfinite(diff).all():
        return math.inf, math.inf
    return float(diff.max(initial=0.0)), float((diff / (atol + rtol * np.abs(r))).max(initial=0.0))


def _check_fit(model: Any, golden: Golden) -> None:
    """Every array of the golden stream has the shape this model's stream gives it: the inputs and outputs
    ``steps`` long along their time axis (calls along axis 0 without one), the states one per chunk. A golden
    file is hashed, but what it says is checked before anything is replayed."""
    _check_names(model, golden)
    timed = _timed(model)
    for kind, ports, table in (("input", model.inputs, golden.inputs), ("output", model.outputs, golden.outputs)):
        for p in ports:
            rank, axis, n = _layout(kind, p, timed, golden)
            a = table[p.name]
            if a.ndim != rank or (axis is not None and a.shape[axis] != n):
                raise ModelFormatError(f"golden {kind} {p.name!r}: expected {rank} axes"
                                       f"{'' if axis is None else f' with {n} along axis {axis}'}, got shape "
                                       f"{a.shape}")
    for s in model.states:
        a = golden.states[s.input]
        want = (len(golden.chunks), *[d for i, d in enumerate(s.shape) if i != s.batch_axis])
        if a.shape != want:
            raise ModelFormatError(f"golden state {s.input!r}: expected shape {want} (one per chunk), got {a.shape}")


def _check_names(model: Any, golden: Golden) -> None:
    """The golden stream has exactly this model's inputs, outputs and states."""
    want_in = {p.name for p in model.inputs}
    if set(golden.inputs) != want_in or set(golden.outputs) != {p.name for p in model.outputs} or \
            set(golden.states) != {s.input for s in model.states}:
        raise ModelFormatError(f"golden vectors of inputs {sorted(golden.inputs)}, outputs {sorted(golden.outputs)} "
                               f"and states {sorted(golden.states)}: expected this model's {sorted(want_in)}, "
                               f"{[p.name for p in model.outputs]} and {[s.input for s in model.states]}")


def _layout(kind: str, port: Any, timed: bool, golden: Golden) -> tuple[int, int | None, int]:
    """How a golden ``kind`` ("input" or "output") array of ``port`` is laid out: its number of axes, the axis its
    steps or calls run along (None: an input fed whole on every call), and how many there are along it."""
    t = port.stream_time_axis
    per_step = t is not None or not timed  # along its time axis, or one row per call of one step
    n = golden.steps if per_step else len(golden.chunks)
    if kind == "output" and per_step and golden.output_steps is not None:
        n = len(golden.output_steps)
    if t is not None:
        return len(port.stream_shape), t, n
    if not timed or kind == "output":  # one row per call
        return len(port.stream_shape) + 1, 0, n
    return len(port.stream_shape), None, n  # an input fed whole on every call


def replay(model: Any, golden: Golden, *, atol: float, rtol: float) -> GoldenCheck:
    """Replay the golden stream through ``model`` (a variant) and hold everything against the reference."""
    _check_fit(model, golden)
    try:
        outs, states, calls = _run(model, golden)
    except ShapeError as e:
        raise ModelFormatError(f"golden vectors do not fit this model: {e}") from None
    check = GoldenCheck(atol, rtol, len(calls))
    outs = _thinned(model, outs, golden.output_steps)
    for name, ref in golden.outputs.items():
        check.tensors.append(TensorCheck(name, "output", *_fraction(outs[name], ref, atol, rtol)))
    named = {s.input: s.output for s in model.states}  # a state named by its output, as every table names it
    for name, ref in golden.states.items():
        check.tensors.append(TensorCheck(named[name], "state", *_fraction(states[name], ref, atol, rtol)))
    return check


def save_golden(golden: Golden, path: Path) -> None:
    names = {"inputs": list(golden.inputs), "outputs": list(golden.outputs), "states": list(golden.states)}
    meta = {"format": GOLDEN_FORMAT, "chunks": list(golden.chunks), "whole": golden.whole, "names": names,
            "output_steps": None if golden.output_steps is None else list(golden.output_steps)}
    arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
    for group, table in (("inputs", golden.inputs), ("outputs", golden.outputs), ("states", golden.states)):
        for i, a in enumerate(table.values()):
            arrays[f"{group}{i}"] = np.ascontiguousarray(a)
    with open(path, "wb") as f:  # a file object: numpy adds no suffix of its own
        np.savez_compressed(f, **arrays)


def _members(data: bytes, path: Path) -> None:
    """Every member of the archive is a plain .npy whose header declares a small, non-object array: checked
    before numpy reads one (a header can claim terabytes of a tiny member)."""
    from numpy.lib import format as npy

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        infos = z.infolist()
        if sum(i.file_size for i in infos) > 4 * MAX_GOLDEN_BYTES:
            raise ModelFormatError(f"{path}: unpacks to over {4 * MAX_GOLDEN_BYTES >> 20} MiB; not golden vectors")
        for info in infos:
            with z.open(info) as f:
                version = npy.read_magic(f)
                shape, _, dtype = (npy.read_array_header_1_0(f) if version == (1, 0)
                                   else npy.read_array_header_2_0(f))
            if dtype.hasobject or math.prod(shape) * dtype.itemsize > MAX_GOLDEN_BYTES:
                raise ModelFormatError(f"{path}: member {info.filename!r} declares {dtype} {shape}; not golden vectors")


def _chunks(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not value or len(value) > _MAX_STEPS or not all(
            is_int(c, 1, _MAX_STEPS) for c in value) or sum(value) > _MAX_STEPS:
        raise ValueError(f"chunks: expected a list of integers from 1 to {_MAX_STEPS}, got {str(value)[:80]}")
    return tuple(value)


def _output_steps(kept: Any, steps: int) -> tuple[int, ...] | None:
    if kept is None:
        return None
    if not isinstance(kept, list) or not kept or not all(map(is_int, kept)) or \
            kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= steps:
        raise ValueError("output_steps: expected increasing step numbers within the stream")
    return tuple(kept)


def golden_bytes(path: Path) -> bytes:
    """The bytes of a golden file, refused when missing or far larger than one."""
    if not path.is_file():
        raise ModelFormatError(f"{path}: listed as the golden vectors but missing")
    if path.stat().st_size > MAX_GOLDEN_BYTES:
        raise ModelFormatError(f"{path}: larger than {MAX_GOLDEN_BYTES >> 20} MiB; not golden vectors")
    return path.read_bytes()


def load_golden(path: Path, data: bytes | None = None) -> Golden:
    """Read a golden file (or its ``data``, already read and hashed), refusing anything that is not one."""
    if data is None:
        data = golden_bytes(path)
    try:
        return _parse(data, path)
    except ModelFormatError:
        raise
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile, RecursionError, UnicodeDecodeError,
            MemoryError, EOFError) as e:
        raise ModelFormatError(f"{path}: expected golden vectors written by edge-rnn package, could not read them "
                               f"({type(e).__name__}: {str(e)[:120]})") from None


def _parse(data: bytes, path: Path) -> Golden:
    """The golden stream in ``data``; a ValueError (or what numpy and json raise) where it is not one."""
    _members(data, path)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    meta = _meta(files.pop("meta"))
    chunks = _chunks(meta["chunks"])
    if type(meta.get("whole")) is not bool or (meta["whole"] and len(chunks) != 1):
        raise ValueError("whole: expected true (with one chunk) or false")
    tables = _tables(meta["names"], files)
    return Golden(chunks, tables["inputs"], tables["outputs"], tables["states"], meta["whole"],
                  _output_steps(meta.get("output_steps"), sum(chunks)))


def _meta(member: np.ndarray) -> dict[str, Any]:
    meta = json.loads(member.tobytes().decode())
    if not isinstance(meta, dict) or not is_int(meta.get("format")) or meta["format"] != GOLDEN_FORMAT:
        raise ValueError(f"golden format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def _tables(names: Any, files: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{"inputs" | "outputs" | "states": {name: array}}, from the names the meta lists and the members; every
    member accounted for, and at least one input."""
    tables, expected = {}, set()
    for group in ("inputs", "outputs", "states"):
        listed = names[group]
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed) or \
                len(set(listed)) != len(listed):
            raise ValueError(f"{group} names")
        tables[group] = {n: files[f"{group}{i}"] for i, n in enumerate(listed)}
        expected |= {f"{group}{i}" for i in range(len(listed))}
    if set(files) != expected:
        raise ValueError(f"unexpected members {sorted(set(files) - expected)[:5]}")
    if not tables["inputs"]:
        raise ValueError("no inputs")
    return tables
