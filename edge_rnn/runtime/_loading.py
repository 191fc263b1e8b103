"""Loading a model file: its bytes, its onnxruntime session, its ports, and what identifies it.

:meth:`StreamingModel.load <edge_rnn.runtime.StreamingModel.load>` is the
front door; :func:`open_model` does its work for one file, step by step, and
hands back an :class:`Opened` for the model to be built from. A bundle's
variant comes here too, once :mod:`edge_rnn.runtime._variant` has picked and
hash-checked its file (``picked``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edge_rnn.contract import Contract
from edge_rnn.errors import ArgumentError, ModelFormatError, UnsupportedError, message_line
from edge_rnn.runtime._bundle import Picked, check_loaded, hash_file
from edge_rnn.runtime._external import ModelScan, ort_operator_counts, scan_model, weight_files
from edge_rnn.runtime._ports import ModelIO, resolve_io
from edge_rnn.runtime._session import (
    ForeignModel,
    SessionConfig,
    check_providers,
    describe_session,
    session_options,
)

__all__ = ["LoadOptions", "Opened", "open_model"]


@dataclass(frozen=True)
class LoadOptions:
    """Everything :meth:`StreamingModel.load` is told about one file, in one object: how onnxruntime runs it
    (``session``), how to read a model edge-rnn did not write (``foreign``), or the ``contract`` that takes the
    place of its metadata, and whether NaN or Inf may enter it (``allow_nonfinite``)."""

    session: SessionConfig = SessionConfig()
    foreign: ForeignModel = ForeignModel()
    contract: Contract | None = None
    allow_nonfinite: bool = False

    def __post_init__(self) -> None:
        for name, cls in (("session", SessionConfig), ("foreign", ForeignModel), ("contract", Contract)):
            value = getattr(self, name)
            if not isinstance(value, cls) and not (name == "contract" and value is None):
                raise UnsupportedError(f"{name}: expected {cls.__name__}(...), got {type(value).__name__}")
        if self.contract is not None and self.foreign.state_map is not None:
            raise UnsupportedError("give contract= or state_map=, not both: the contract already says which input "
                                   "feeds which output")
        if self.contract is not None:  # checked as a file's contract is: every field, through its JSON form
            object.__setattr__(self, "contract", Contract.from_json(self.contract.to_json()))

    @classmethod
    def given(cls, session: SessionConfig | None, foreign: ForeignModel | None, flat: dict[str, Any],
              **rest: Any) -> LoadOptions:
        """The options of a ``load`` call. ``flat`` holds the fields of SessionConfig and ForeignModel given as
        keywords of their own, the form before the groups: each is put in its group, with a DeprecationWarning;
        a group given whole and in part is refused, and so is a keyword neither group has."""
        groups = {"session": (SessionConfig, session), "foreign": (ForeignModel, foreign)}
        out: dict[str, Any] = {}
        for name, (group, whole) in groups.items():
            keys = {f.name for f in dataclasses.fields(group)}
            mine = {k: flat.pop(k) for k in list(flat) if k in keys}
            if whole is not None and mine:
                raise UnsupportedError(f"give {name}={group.__name__}(...) or its fields {sorted(mine)} as keywords, "
                                       "not both")
            if mine:
                warnings.warn(f"load({', '.join(f'{k}=' for k in mine)}) is deprecated: pass {name}="
                              f"{group.__name__}({', '.join(f'{k}=...' for k in mine)})", DeprecationWarning,
                              stacklevel=3)
            out[name] = whole if whole is not None else group(**mine)
        if flat:
            raise ArgumentError(f"load() got unexpected keyword arguments {sorted(flat)}")
        return cls(**out, **rest)


@dataclass(frozen=True)
class Opened:
    """One model file, loaded: what a :class:`StreamingModel` is built from."""

    session: ort.InferenceSession
    io: ModelIO
    fingerprint: str
    source: str
    rows_coupled: bool


def _read(model: str | Path | bytes) -> tuple[bytes, Path | None, str]:
    """The model's bytes, its path (None for bytes) and how messages name it."""
    if isinstance(model, (bytes, bytearray)):
        return bytes(model), None, "<bytes>"
    path = Path(model)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    return path.read_bytes(), path, str(path)


def _session(data: bytes, path: Path | None, external: list[Path], config: SessionConfig,
             source: str) -> ort.InferenceSession:
    """onnxruntime's session of the model; external weight files are read from the model's folder only, so
    onnxruntime gets the path, not the bytes."""
    providers = check_providers(config.providers)
    so = session_options(config.session_options, config.threads, config.optimization)
    try:
        return ort.InferenceSession(str(path) if external else data, so, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        first = message_line(e) or type(e).__name__
        raise ModelFormatError(f"{source}: onnxruntime could not load it: {first}") from None


def _fingerprint(data: bytes, weight_files: list[Path]) -> str:
    """What identifies a model for its snapshots: the file's bytes and those of its external weight files."""
    digest = hashlib.sha256(data)
    for file in weight_files:
        hash_file(digest, file)
    return digest.hexdigest()[:32]


def _rows_coupled(data: bytes, scan: ModelScan, source: str) -> bool:
    """Whether one stream's values can change another's output when they share a call: a dynamic
    quantisation operator (DynamicQuantizeLinear, DynamicQuantizeLSTM, ...: an int8 variant) scales a whole
    call's activations at once, so a neighbour's large input coarsens everyone's. The operators are the file's
    own, an ORT-format file's read from its flatbuffer once onnxruntime has taken it (never a manifest's word);
    where that reading fails, the file is refused, and without the reader the model counts as coupled (never
    silently wrong)."""
    ops = scan.ops
    if ops is None:
        try:
            ops = ort_operator_counts(data)
        except ImportError:  # onnxruntime without its flatbuffer tools: unknown counts as coupled
            return True
        except Exception as e:  # noqa: BLE001 - a flatbuffer's reader raises what it meets
            raise ModelFormatError(f"{source}: could not read its operators from the ORT format "
                                   f"({type(e).__name__})") from None
    return any(op.rsplit(".", 1)[-1].startswith("DynamicQuantize") for op in ops)


def _contract(metadata: Mapping[str, str], options: LoadOptions, picked: Picked | None, source: str
              ) -> Contract | None:
    """The contract the model streams by: the one given in place of the file's metadata (which is then not read),
    else the file's; a bundle's variant must carry the contract its manifest gives for it."""
    if options.contract is not None:
        return options.contract
    found = Contract.from_metadata(metadata)
    if picked is not None and found != picked.contract:
        raise ModelFormatError(f"{source}: its edge_rnn contract differs from the one {picked.path.parent}/"
                               "manifest.json gives for it; the manifest was edited or belongs to other files")
    return found


def open_model(model: str | Path | bytes, options: LoadOptions, picked: Picked | None = None) -> Opened:
    """Read ``model`` (a path or its bytes), open its session and work out its ports, as ``options`` say. A
    bundle's variant (``picked``) loads only what its manifest hashes: these bytes, and its external weights."""
    data, path, source = _read(model)
    scan = scan_model(data, source)
    weights = weight_files(scan, path, source)
    if picked is not None:
        check_loaded(picked, data, weights)
    external = list(dict.fromkeys(weights.values()))
    session = _session(data, path, external, options.session, source)
    ins, outs, metadata = describe_session(session, source)
    io = resolve_io(ins, outs, _contract(metadata, options, picked, source), options.foreign)
    return Opened(session, io, _fingerprint(data, external), source, _rows_coupled(data, scan, source))
