"""Inputs for a parity check: random Gaussian, or the user's own sequences.

A sequence is given per stream, time first: ``(time, features)`` for a layer,
``(time, *rest)`` in general, where ``rest`` is the input's shape without its
batch and time axes. For a model that takes one step per call, axis 0 counts
calls and ``rest`` is one call's input without the batch axis. Several
sequences (a list, or the arrays of an ``.npz``) feed the streams of a batch
in turn; a sequence shorter than a case is repeated (it wraps around).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_rnn.contract import Contract
from edge_rnn.errors import DataError
from edge_rnn.harness._file_kind import not_regular

__all__ = ["InputLayout", "InputSource", "bool_for_float", "check_data", "load_data", "read_npy", "random_inputs",
           "data_inputs", "random_states"]

Arrays = dict[str, np.ndarray]
# (rng, batch, steps, calls) -> feeds. calls=True: inputs without a time axis get a leading axis of `steps` calls.
InputSource = Callable[[np.random.Generator, int, int, bool], Arrays]


@dataclass(frozen=True)
class InputLayout:
    """A data input of the model: an example shape, and where its batch and time axes are."""

    name: str
    shape: tuple[int, ...]
    batch_axis: int
    time_axis: int | None
    dtype: str = "float32"
    values: tuple[int, int] | None = None  # an integer input's inclusive range: what random inputs draw from

    @property
    def rest(self) -> tuple[int, ...]:
        """The per-step shape of one stream: the shape without its batch and time axes."""
        return tuple(d for i, d in enumerate(self.shape) if i not in (self.batch_axis, self.time_axis))

    def describe(self) -> str:
        return f"({', '.join(['time' if self.time_axis is not None else 'calls', *map(str, self.rest)])})"

    def assemble(self, rows: np.ndarray, calls: bool) -> np.ndarray:
        """``rows`` ``(batch, steps, *rest)`` -> the model's layout (calls: a leading calls axis)."""
        if self.time_axis is not None:
            return np.moveaxis(rows, [0, 1], [self.batch_axis, self.time_axis])
        if calls:
            return np.moveaxis(rows, [1, 0], [0, 1 + self.batch_axis])
        return np.moveaxis(rows[:, 0], 0, self.batch_axis)  # one value per stream for the whole case


def random_inputs(layouts: Sequence[InputLayout]) -> InputSource:
    """Standard Gaussian inputs."""

    def make(rng: np.random.Generator, batch: int, steps: int, calls: bool) -> Arrays:
        return {t.name: t.assemble(_draw(rng, t, (batch, steps, *t.rest)), calls) for t in layouts}

    return make


def _draw(rng: np.random.Generator, t: InputLayout, shape: tuple[int, ...]) -> np.ndarray:
    """Standard Gaussian for a float input; integers spread over the input's range for an integer one."""
    kind = np.dtype(t.dtype).kind
    if kind == "f":
        return rng.standard_normal(shape).astype(t.dtype)
    if kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    low, high = t.values if t.values is not None else (0, 0)
    return rng.integers(low, high, shape, endpoint=True).astype(t.dtype)


def data_inputs(layouts: Sequence[InputLayout], data: Any, what: str = "data") -> InputSource:
    """Inputs cut from the user's sequences (see the module docstring); each stream starts at a random offset."""
    seqs = _sequences(layouts, data, what)

    def make(rng: np.random.Generator, batch: int, steps: int, calls: bool) -> Arrays:
        first = int(rng.integers(len(seqs)))
        picks = [seqs[(first + b) % len(seqs)] for b in range(batch)]
        starts = [int(rng.integers(len(next(iter(s.values()))))) for s in picks]
        out = {}
        for t in layouts:
            rows = [np.take(s[t.name], np.arange(a, a + steps), axis=0, mode="wrap") for s, a in zip(picks, starts)]
            out[t.name] = t.assemble(np.stack(rows), calls)
        return out

    return make


def random_states(contract: Contract, scale: float = 0.5) -> Callable[[np.random.Generator, int], Arrays]:
    """Non-zero initial states, so that the state inputs are exercised, not only PyTorch's default zeros."""

    def make(rng: np.random.Generator, batch: int) -> Arrays:
        return {s.input: (scale * rng.standard_normal(s.concrete_shape(batch))).astype(np.float32)
                for s in contract.states}

    return make


# What an .npz may hold beyond its own size: its compressed members expand when read, and a small archive of
# zeros (a zip bomb) would otherwise take gigabytes. np.savez (stored, not compressed) is bounded by the file.
MAX_INFLATED_BYTES = 256 * 2**20
MAX_ELEMENTS = 2**32  # per array, whatever its bytes: 16 GiB of float32, far beyond a sequence to stream
MAX_AXES = 32
_NUMERIC = "biuf"  # bool, integers, floats: what a model's inputs take (complex is refused with the rest)
_PIECE = 2**20  # read in pieces into the array: one copy of the data in memory, not two (an .npz member is
# decompressed into bytes of the piece's size first, then copied)


def load_data(path: str | Path) -> list[np.ndarray] | dict[str, np.ndarray]:
    """Read ``.npy`` (one sequence) or ``.npz`` (several; or one per input, keyed by input name), never unpickling.

    Each array's header is checked before anything is allocated: a dtype of numbers (bool, integers, floats; no
    strings, structures, subarrays, datetimes or objects), at most :data:`MAX_AXES` axes of non-negative sizes,
    at most :data:`MAX_ELEMENTS` elements, and no more bytes than the file holds, so a forged header cannot ask
    for terabytes; an ``.npz``'s arrays together may hold at most :data:`MAX_INFLATED_BYTES` more than the
    archive's own size (its compressed members' expansion), checked from their headers before any is read.
    """
    return _reading(path, lambda p, npz: _read_npz(p) if npz else [_read_npy(p)])


def check_data(path: str | Path) -> None:
    """What :func:`load_data` checks before it reads an array (the file's kind, every header), reading no array:
    a command's early check of its data file."""
    _reading(path, lambda p, npz: _read_npz(p, bodies=False) if npz else _npy_header(p))


def read_npy(path: str | Path) -> np.ndarray:
    """One ``.npy`` array, its header checked as :func:`load_data` checks it before it is read; never unpickled."""
    return _reading(path, lambda p, npz: [_read_npy(p)])[0]


def _reading(path: str | Path, read: Callable[[Path, bool], Any]) -> Any:
    """``read(path, is_npz)`` once ``path`` is a .npy or .npz file; whatever fails is one DataError naming it."""
    path = Path(path)
    kind = not_regular(path)
    if kind is not None:  # a link to /dev/zero would be read without end
        raise DataError(f"data {path}: expected a regular file, got {kind}")
    if not path.is_file():
        raise DataError(f"data {path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if not (magic.startswith(b"\x93NUMPY") or magic.startswith(b"PK")):
        # refused before reading: numpy's own loader would try anything else as a pickle
        raise DataError(f"data {path}: expected a .npy or .npz file, got neither (no numpy or zip header); "
                        "pickles are never loaded")
    try:
        return read(path, magic.startswith(b"PK"))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - numpy's and zipfile's errors for a malformed file
        raise DataError(f"data {path}: expected a .npy or .npz of numeric arrays, could not read it "
                        f"({type(e).__name__}: {e})") from None


def _npy_header(path: Path) -> None:
    with open(path, "rb") as f:
        _header(f, path.stat().st_size, str(path))


def _read_npy(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        header = _header(f, path.stat().st_size, str(path))
        return _read_body(f, header, str(path))


def _read_npz(path: Path, bodies: bool = True) -> dict[str, np.ndarray]:
    """Every member of an .npz: all headers checked (and their sizes summed) before any array is read."""
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        headers = []
        for info in infos:
            with z.open(info) as f:
                headers.append(_header(f, info.file_size, f"{path}:{info.filename}"))
        total = sum(h.nbytes for h in headers)
        if total > path.stat().st_size + MAX_INFLATED_BYTES:
            big, name = max(zip(headers, (i.filename for i in infos)), key=lambda p: p[0].nbytes)
            raise DataError(
                f"data {path}: its arrays declare {total:,} bytes in all (the largest, {name}, shape {big.shape} "
                f"{big.dtype}), expected at most {MAX_INFLATED_BYTES // 2**20} MiB more than the archive's "
                f"{path.stat().st_size:,} bytes: a compressed archive that expands this far is refused; save it "
                "uncompressed (np.savez) or as .npy files")
        out = {}
        for info, header in zip(infos if bodies else [], headers):
            with z.open(info) as f:
                _header(f, info.file_size, f"{path}:{info.filename}")
                out[info.filename.removesuffix(".npy")] = _read_body(f, header, f"{path}:{info.filename}")
        return out


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype

    @property
    def count(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count

    @property
    def nbytes(self) -> int:
        return self.count * self.dtype.itemsize


def _header(f: Any, size: int, what: str) -> _Header:
    """The array header at ``f``, checked: numbers of a sensible shape, and no more data than ``size`` bytes hold."""
    try:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        h = _Header(*read(f, max_header_size=10_000))
    except Exception as e:  # noqa: BLE001 - a malformed header: ValueError, SyntaxError, TokenError, ...
        raise DataError(f"{what}: expected a .npy array, its header is malformed ({type(e).__name__})") from None
    _check_header(h, what)
    remaining = size - f.tell()
    if h.nbytes > remaining:
        raise DataError(f"{what}: its header declares shape {h.shape} {h.dtype} ({h.nbytes:,} bytes), "
                        f"but the file holds {remaining:,} bytes of data: truncated or forged")
    _check_count(h, what)
    return h


def _check_header(h: _Header, what: str) -> None:
    """Numbers, in at most MAX_AXES axes of sizes >= 0, checked before the bytes: an itemsize-0 dtype (|V0,
    |S0, <U0) declares no bytes for any shape."""
    if h.dtype.hasobject:
        raise DataError(f"{what}: shape {h.shape} {h.dtype} holds Python objects that only pickle can load; "
                        "refused (unpickling runs code). Save a plain .npy of numbers: "
                        "np.save(path, np.asarray(x, np.float32))")
    if h.dtype.kind not in _NUMERIC or h.dtype.fields is not None or h.dtype.subdtype is not None:
        raise DataError(f"{what}: shape {h.shape} {_dtype_name(h.dtype)}: expected an array of numbers (bool, "
                        "integers or floats), got another dtype; save numbers: np.save(path, x.astype(np.float32))")
    if len(h.shape) > MAX_AXES:
        raise DataError(f"{what}: its header declares {len(h.shape)} axes, expected at most {MAX_AXES} axes")
    if any(d < 0 for d in h.shape):
        raise DataError(f"{what}: its header declares shape {h.shape}, expected sizes >= 0, got a negative one")


def _check_count(h: _Header, what: str) -> None:
    """At most MAX_ELEMENTS, whatever the bytes: zero-size axes declare no bytes for any size of the others."""
    count = 1
    for d in h.shape:
        count *= max(d, 1)  # zero-size axes too: (0, 2**62, 2**62) holds nothing, but no array takes that shape
    if count > MAX_ELEMENTS:
        raise DataError(f"{what}: shape {h.shape} {h.dtype}: expected at most {MAX_ELEMENTS:,} elements in one "
                        f"array, its axes multiply to {count:,} (a zero-size axis counted as 1)")


def _dtype_name(dtype: np.dtype) -> str:
    """The dtype as the header wrote it: ``|V0``, ``[('a', '<f4')]``, ``('<f4', (4,))``."""
    return str(dtype) if dtype.subdtype is not None else str(np.lib.format.dtype_to_descr(dtype))


def _read_body(f: Any, h: _Header, what: str) -> np.ndarray:
    """The data after the header, read in pieces into the array (allocated once, at its checked size)."""
    a = np.empty(h.count, dtype=h.dtype)
    buf = memoryview(a.view(np.uint8) if h.nbytes else np.empty(0, np.uint8))
    done = 0
    while done < h.nbytes:
        n = f.readinto(buf[done : done + min(h.nbytes - done, _PIECE)])
        if not n:
            raise DataError(f"{what}: truncated, expected {h.nbytes:,} bytes of data for shape {h.shape} {h.dtype}, "
                            f"got {done:,}")
        done += n
    return a.reshape(h.shape[::-1]).T if h.fortran else a.reshape(h.shape)


def _sequences(layouts: Sequence[InputLayout], data: Any, what: str) -> list[Arrays]:
    """Normalise ``data`` to a list of ``{input name: (time, *rest)}`` in each input's dtype, checked."""
    names = [t.name for t in layouts]
    raw = _of_one_input(names[0], data) if len(layouts) == 1 else _keyed_by_input(names, data, what)
    if not raw:
        raise DataError(f"{what}: expected at least one sequence, got none")
    return [_check(layouts, seq, f"{what}[{i}]" if len(raw) > 1 else what) for i, seq in enumerate(raw)]


def _keyed_by_input(names: list[str], data: Any, what: str) -> list[dict[str, Any]]:
    """A model with several data inputs takes one sequence, given as a mapping with one array per input."""
    if isinstance(data, Mapping) and len(names) > 1 and set(data) == set(names):
        return [dict(data)]
    raise DataError(
        f"{what}: the model has {len(names)} data inputs {names}: expected a mapping (or an .npz) with one "
        "array per input, keyed by those names")


def _of_one_input(name: str, data: Any) -> list[dict[str, Any]]:
    """The sequences of a model with one data input: one array (or nested lists of numbers), or several."""
    if isinstance(data, Mapping):
        return [{name: v} for v in data.values()]
    if isinstance(data, np.ndarray) or not isinstance(data, Sequence) or _nested_numbers(data):
        return [{name: data}]  # one array, or one sequence written as nested lists of numbers
    return [{name: v} for v in data]


def _nested_numbers(data: Sequence[Any]) -> bool:
    """A list of lists of numbers (``x.tolist()``) is one sequence; a list of arrays is several."""
    return bool(data) and all(isinstance(v, (list, tuple)) for v in data) and all(
        isinstance(e, (int, float, bool, list, tuple)) for v in data for e in v)


def _as_input(t: InputLayout, a: np.ndarray, label: str) -> np.ndarray:
    """A sequence in the input's dtype: floats finite in float32, integers integral and within the input's range."""
    if np.dtype(t.dtype).kind == "f":
        if a.dtype.kind == "b":
            raise bool_for_float(label, t.name, t.dtype)
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused just below
            a = a.astype(t.dtype, copy=False)  # the user's float32 array itself, not a copy of it
        if not _finite(a):
            raise DataError(f"{label}: expected finite values, got NaN or Inf (or values beyond float32's range)")
        return a
    if np.dtype(t.dtype).kind == "b":
        if a.dtype.kind != "b":
            raise DataError(f"{label}: {t.name!r} takes bool values, got a {a.dtype} array")
        return a
    if a.dtype.kind not in "iu":
        raise DataError(f"{label}: {t.name!r} takes {t.dtype} values (token ids), got a {a.dtype} array; save "
                        f"the ids as integers: np.save(path, ids.astype(np.{t.dtype}))")
    low, high = t.values if t.values is not None else (np.iinfo(t.dtype).min, np.iinfo(t.dtype).max)
    if a.min() < low or a.max() > high:
        raise DataError(f"{label}: expected values of {t.name!r} in [{low}, {high}], got {a.min()}..{a.max()}")
    return a.astype(t.dtype, copy=False)


def bool_for_float(label: str, name: str, dtype: Any) -> DataError:
    """The one refusal of a bool array for a float input (``run --input``, ``verify --data``, data=)."""
    return DataError(f"{label}: {name!r} takes {np.dtype(dtype)} values, got a bool array; save numbers: "
                     f"np.save(path, x.astype(np.{np.dtype(dtype)}))")


def _finite(a: np.ndarray) -> bool:
    """No NaN or Inf in ``a`` (time first), checked a block of rows at a time: no bool array of its whole size."""
    rows = max(1, _PIECE // max(1, a[:1].nbytes))
    return all(np.isfinite(a[i : i + rows]).all() for i in range(0, len(a), rows))


def _check(layouts: Sequence[InputLayout], seq: Mapping[str, Any], what: str) -> Arrays:
    out = {}
    for t in layouts:
        a = seq[t.name]
        try:
            a = np.asarray(a)
        except Exception as e:  # noqa: BLE001 - whatever numpy cannot convert
            raise DataError(f"{what}: expected a numeric array for {t.name!r}, got {type(a).__name__} ({e})") from None
        label = f"{what} ({t.name})" if len(layouts) > 1 else what
        if a.dtype.kind not in "fiub":
            raise DataError(f"{label}: expected a real numeric array, got dtype {a.dtype}")
        if a.shape[1:] != t.rest or a.ndim != 1 + len(t.rest):
            hint = "; several sequences go in a list or an .npz, one array each" if a.ndim == len(t.rest) + 2 else ""
            raise DataError(f"{label}: expected one sequence of shape {t.describe()}, got {a.shape}{hint}")
        if not a.shape[0]:
            raise DataError(f"{label}: expected at least one step, got an empty sequence {a.shape}")
        out[t.name] = _as_input(t, a, label)
    lengths = {len(v) for v in out.values()}
    if len(lengths) > 1:
        raise DataError(f"{what}: expected the inputs' sequences to have one length, got {sorted(lengths)}")
    return out
