"""The snapshot codec: one stream's state as bytes, tied to the model that made it.

Layout: the magic ``EDGERNN-SNAPSHOT``, a little-endian uint32 header length,
a JSON header (version, model fingerprint, steps, per state its name, shape and
dtype, and the CRC-32 of the state bytes), then each state's bytes in the
contract's order. Decoding refuses a
snapshot of another model (by state layout and by fingerprint), any other
version, corrupt or truncated data, a step count beyond :data:`MAX_STEPS`,
and NaN or Inf in a state unless the model lets them in. All of it is checked
before the caller takes a slab row for the state.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np

from edge_rnn._numbers import is_int
from edge_rnn._snapshot_layout import MAGIC, pack, unpack
from edge_rnn.contract import StateSpec
from edge_rnn.errors import StateError

__all__ = ["encode_snapshot", "decode_snapshot", "stream_shape", "MAX_STEPS"]

# 2 adds a CRC-32 over the header's fields and the state bytes. Version 1 (no checksum) is refused: a flipped byte
# in the version field would otherwise turn the check off.
_VERSION = 2
# The most steps a snapshot holds. A stream's count is an int64 in the slab: one restored at 2**62 would need 2**62
# more steps (146 years at a billion a second) to wrap, so none ever does; Stream.steps stops here (saturates) rather
# than refusing a step, since the count is bookkeeping and the state is fine.
MAX_STEPS = 2**62


def stream_shape(s: StateSpec) -> tuple[int, ...]:
    """The shape of one stream's state: the state's shape without the batch axis."""
    return tuple(d for d in s.shape if d is not None)


def encode_snapshot(fingerprint: str, states: tuple[StateSpec, ...], state: dict[str, np.ndarray], steps: int) -> bytes:
    header = {
        "version": _VERSION,
        "fingerprint": fingerprint,
        "steps": min(steps, MAX_STEPS),
        "states": [{"input": s.input, "shape": list(state[s.input].shape), "dtype": s.dtype} for s in states],
    }
    body = b"".join(np.ascontiguousarray(state[s.input]).tobytes() for s in states)
    header["crc32"] = _crc(header, body)
    return pack(header, body)


def _crc(header: dict, body: bytes) -> int:
    """CRC-32 over the header's fields (as canonical JSON) and the state bytes: a flip anywhere is caught."""
    fields = {k: header.get(k) for k in ("version", "fingerprint", "steps", "states")}
    return zlib.crc32(json.dumps(fields, sort_keys=True).encode() + body)


def _header(data: bytes) -> tuple[dict, int]:
    """The JSON header and where the state bytes start."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or bytes(data[: len(MAGIC)]) != MAGIC:
        raise StateError("snapshot: expected bytes from Stream.snapshot(), got something else")
    try:
        header, offset = unpack(data)
    except (struct.error, ValueError) as e:
        raise StateError(f"snapshot: corrupt header ({e})") from None
    except RecursionError:
        raise StateError("snapshot: corrupt header (nesting too deep to read)") from None
    if not isinstance(header, dict):
        raise StateError(f"snapshot: corrupt header, expected an object, got {type(header).__name__}")
    steps = header.get("steps", 0)
    if not is_int(steps, least=0, most=MAX_STEPS):
        raise StateError(f"snapshot: corrupt header, expected a step count from 0 to 2**62, got {steps!r:.40}")
    version = header.get("version")
    if version == 1 and is_int(version):
        raise StateError("snapshot: version 1 has no checksum and is no longer restored; take a new snapshot of the "
                         "stream with this edge-rnn")
    if not is_int(version) or version != _VERSION:  # an int: 2.0 or true is no version this codec wrote
        raise StateError(f"snapshot: expected version {_VERSION}, got {header.get('version')!r}")
    return header, offset


def decode_snapshot(
    data: bytes, fingerprint: str, states: tuple[StateSpec, ...], *, allow_nonfinite: bool = False
) -> tuple[dict[str, np.ndarray], int]:
    """The state arrays and step count in ``data``, refused unless they belong to this model, whole and intact,
    and finite (unless ``allow_nonfinite``: a checksum a forger recomputed does not make NaN a state)."""
    header, offset = _header(data)
    want = [{"input": s.input, "shape": list(stream_shape(s)), "dtype": s.dtype} for s in states]
    if header.get("states") != want:
        raise StateError(f"snapshot of another model: expected states {want}, got {header.get('states')}")
    if header.get("fingerprint") != fingerprint:
        raise StateError(
            f"snapshot of another model: expected fingerprint {fingerprint}, got {header.get('fingerprint')} "
            "(same state layout, different weights or graph)"
        )
    sizes = [int(np.prod(stream_shape(s))) * np.dtype(s.dtype).itemsize for s in states]
    if offset + sum(sizes) != len(data):
        raise StateError(f"snapshot: truncated or padded, expected {offset + sum(sizes)} bytes, got {len(data)}")
    crc = header.get("crc32")
    if not is_int(crc) or _crc(header, bytes(data[offset:])) != crc:  # an int, as encode_snapshot writes it
        raise StateError("snapshot: the header or state bytes do not match their checksum (corrupted in storage "
                         "or transit)")
    out = {}
    for s, size in zip(states, sizes):
        a = np.frombuffer(bytes(data[offset : offset + size]), dtype=np.dtype(s.dtype)).reshape(stream_shape(s))
        if a.dtype.kind == "f" and not allow_nonfinite and not np.isfinite(a).all():
            raise StateError(f"snapshot: state {s.input!r}: expected finite values, got NaN or Inf (restore it on "
                             "a model loaded with allow_nonfinite=True to let them in)")
        out[s.input] = a.copy()
        offset += size
    return out, header["steps"] if "steps" in header else 0
