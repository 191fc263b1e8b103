"""A bundle's ``manifest.json`` as typed objects: one schema for the side that writes it and the side that reads it.

``edge-rnn package`` (:mod:`edge_rnn.deploy._bundle`) builds a :class:`Manifest`
and writes :meth:`Manifest.to_json`; a device reads the file once into the
same objects with :meth:`Manifest.parse` (:func:`edge_rnn.runtime._bundle.load_manifest`).
A manifest is not trusted: parsing refuses only what makes the file no
manifest (its format, its variants); every other field is read as what it is
or as None (a figure that is not a finite number, a file name that is a path),
and the code that needs the field refuses it there, naming it, as it did when
the manifest was a dict. Bundles of format 1 (no golden vectors) read too.

What people read and no code computes with (the host record, an error's
per-tensor figures, NPU provider support, the contract as written) is kept
as the JSON it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from edge_rnn._numbers import is_int, is_number
from edge_rnn.errors import ModelFormatError

__all__ = ["Manifest", "VariantEntry", "FileRef", "Bound", "ErrorFigures", "GoldenReplay", "GoldenFigures", "Speed",
           "OrtForm", "GoldenSpec", "MeasuredOn", "Refusal", "BUNDLE_FORMAT", "READABLE_FORMATS", "finite"]

BUNDLE_FORMAT = 2  # 2: golden vectors and the packaging host's record; 1 (no golden vectors) is still read
READABLE_FORMATS = (1, 2)

Json = Mapping[str, Any]


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None: a manifest is not trusted."""
    if not is_number(value):
        return None
    try:
        value = float(value)  # JSON integers have no size limit: 10**400 is not a float
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _json(value: Any) -> Json | None:
    return value if isinstance(value, dict) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return value if is_int(value) else None


def _part(cls: Any, value: Any) -> Any:
    """``cls`` parsed from a JSON object; None where the manifest has no object there."""
    return cls.parse(value) if isinstance(value, dict) else None


def _out(value: Any) -> Any:
    """A part's JSON; None (left out) where there is none."""
    return None if value is None else value.to_json()


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _count(value: Any) -> int | None:
    """A count the manifest gives, held against the golden file's: None where not given; a JSON value equal to a
    whole number (``38``, ``38.0``) as that int; anything else as -1, which no stream's count equals."""
    if value is None:
        return None
    if isinstance(value, int):
        return int(value)
    return int(value) if isinstance(value, float) and value.is_integer() else -1


def _counts(value: Any) -> tuple[int, ...] | None:
    """The golden chunks the manifest gives: None where not given, () (which no stream has) where not a list."""
    if value is None:
        return None
    return tuple(-1 if c is None else _count(c) for c in value) if isinstance(value, list) else ()


class _Flat:
    """A record of plain values whose JSON keys are its field names, each read by its reader in ``_READ``."""

    _READ: ClassVar[dict[str, Callable[[Any], Any]]]

    @classmethod
    def parse(cls, d: Json) -> Any:
        return cls(**{key: read(d.get(key)) for key, read in cls._READ.items()})

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._READ}


@dataclass(frozen=True)
class FileRef:
    """A file of the bundle: ``file`` None where the manifest gives no plain file name (a path, or not a string),
    ``sha256`` None where it gives no string; ``size`` in bytes, as packaged. ``external``: a model file's
    external weights files (``external_data`` locations), each hashed too: every file a variant loads is covered
    (written only where there are some)."""

    file: str | None
    sha256: str | None
    size: int | None = None
    external: tuple[FileRef, ...] = ()

    @classmethod
    def parse(cls, d: Json, *, weights: bool = True) -> FileRef:
        """``weights``: read ``external`` too (a weights file's own entry has none)."""
        file, external = d.get("file"), d.get("external")
        if not weights or not isinstance(external, list):
            external = []
        return cls(file if isinstance(file, str) and Path(file).name == file else None, _text(d.get("sha256")),
                   _int(d.get("size")), tuple(cls.parse(e, weights=False) for e in external if isinstance(e, dict)))

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"file": self.file, "sha256": self.sha256, "size": self.size,
                           "external": [e.to_json() for e in self.external] or None})


@dataclass(frozen=True)
class Bound(_Flat):
    """``|variant - reference| <= atol + rtol * |reference|``; None where the manifest gives no finite number."""

    atol: float | None
    rtol: float | None

    _READ = {"atol": finite, "rtol": finite}


@dataclass(frozen=True)
class ErrorFigures:
    """A variant's error against the float32 model over one long stream (:mod:`edge_rnn.deploy._fidelity`); the
    reference's own is 0 with a ``note``. ``tensors``: per output and state, for people to read."""

    max_abs: float | None
    grows: bool | None
    ok: bool | None = None
    steps: int | None = None
    chunks: int | None = None
    inputs: str | None = None
    bound: Bound | None = None
    tensors: Json | None = None
    note: str | None = None

    @classmethod
    def parse(cls, d: Json) -> ErrorFigures:
        return cls(finite(d.get("max_abs")), _flag(d.get("grows")), _flag(d.get("ok")), _int(d.get("steps")),
                   _int(d.get("chunks")), _text(d.get("inputs")), _part(Bound, d.get("bound")),
                   _json(d.get("tensors")), _text(d.get("note")))

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"steps": self.steps, "chunks": self.chunks, "inputs": self.inputs, "max_abs": self.max_abs,
                           "grows": self.grows, "ok": self.ok, "bound": _out(self.bound),
                           "tensors": self.tensors, "note": self.note})


@dataclass(frozen=True)
class GoldenReplay:
    """What a golden replay measured (:class:`edge_rnn.runtime._golden.GoldenCheck`): its largest error, and its
    worst tensor's error as a fraction of the bound."""

    max_abs: float | None
    worst_fraction: float | None
    ok: bool | None = None
    calls: int | None = None
    tensors: Json | None = None

    @classmethod
    def parse(cls, d: Json) -> GoldenReplay:
        return cls(finite(d.get("max_abs")), finite(d.get("worst_fraction")), _flag(d.get("ok")),
                   _int(d.get("calls")), _json(d.get("tensors")))

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"max_abs": self.max_abs, "worst_fraction": self.worst_fraction, "ok": self.ok,
                           "calls": self.calls, "tensors": self.tensors})


@dataclass(frozen=True)
class GoldenFigures:
    """A variant's golden replay: the ``bound`` a device holds it to, and what the packaging host ``measured``."""

    bound: Bound
    measured: GoldenReplay | None = None

    @classmethod
    def parse(cls, d: Json) -> GoldenFigures:
        return cls(Bound.parse(_dict(d.get("bound"))), _part(GoldenReplay, d.get("measured")))

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"bound": self.bound.to_json(), "measured": _out(self.measured)})


@dataclass(frozen=True)
class Speed(_Flat):
    """Median single-stream latency per step, the steps each call takes, and steps/s of 64 streams batched."""

    step_us: float | None
    steps_per_call: int | None = None
    batch64_steps_per_s: float | None = None

    _READ = {"step_us": finite, "steps_per_call": _int, "batch64_steps_per_s": finite}


@dataclass(frozen=True)
class OrtForm:
    """A variant's ORT-format file, with its own speed and golden replay."""

    ref: FileRef
    speed: Speed | None = None
    golden: GoldenFigures | None = None
    note: str | None = None

    @classmethod
    def parse(cls, d: Json) -> OrtForm:
        return cls(FileRef.parse(d), _part(Speed, d.get("speed")), _part(GoldenFigures, d.get("golden")),
                   _text(d.get("note")))

    def to_json(self) -> dict[str, Any]:
        return _drop_none({**self.ref.to_json(), "speed": _out(self.speed),
                           "golden": _out(self.golden), "note": self.note})


@dataclass(frozen=True)
class VariantEntry:
    """One variant: its file, its error on a long stream, its golden replay, what it is made of (``operators``,
    ``contract`` as written, ``states``), its speed, which NPU providers run it (``providers``), its ORT form."""

    ref: FileRef
    error: ErrorFigures
    golden: GoldenFigures | None = None
    notes: tuple[str, ...] = ()
    opset: int | None = None
    operators: Mapping[str, int] | None = None
    contract: Json | None = None
    states: tuple[Json, ...] = ()
    speed: Speed | None = None
    providers: Mapping[str, Json] = field(default_factory=dict)
    ort: OrtForm | None = None

    @classmethod
    def parse(cls, d: Json) -> VariantEntry:
        notes, states = d.get("notes"), d.get("states")
        return cls(FileRef.parse(d), ErrorFigures.parse(_dict(d.get("error"))), _part(GoldenFigures, d.get("golden")),
                   tuple(n for n in notes if isinstance(n, str)) if isinstance(notes, list) else (),
                   _int(d.get("opset")), _json(d.get("operators")), _json(d.get("contract")),
                   tuple(s for s in states if isinstance(s, dict)) if isinstance(states, list) else (),
                   _part(Speed, d.get("speed")), _dict(d.get("providers")), _part(OrtForm, d.get("ort")))

    @property
    def whole_on(self) -> tuple[str, ...]:
        """The NPU providers that run it whole (every node, one partition)."""
        return tuple(p for p, s in self.providers.items() if isinstance(s, dict) and s.get("whole") is True)

    def to_json(self) -> dict[str, Any]:
        out = {"notes": list(self.notes), "error": self.error.to_json(), "golden": _out(self.golden),
               **self.ref.to_json(), "opset": self.opset, "operators": self.operators, "contract": self.contract,
               "states": list(self.states), "speed": _out(self.speed), "providers": self.providers,
               "ort": _out(self.ort)}
        return {k: v for k, v in out.items() if v is not None or k == "opset"}  # an opset not found is written null


@dataclass(frozen=True)
class GoldenSpec:
    """The bundle's golden stream: its file, and its length and chunks (each -1 / () where the manifest gives
    something other than whole numbers: held against the file, they differ)."""

    ref: FileRef
    steps: int | None = None
    chunks: tuple[int, ...] | None = None

    @classmethod
    def parse(cls, d: Json) -> GoldenSpec:
        return cls(FileRef.parse(d), _count(d.get("steps")), _counts(d.get("chunks")))

    def to_json(self) -> dict[str, Any]:
        return _drop_none({**self.ref.to_json(), "steps": self.steps,
                           "chunks": None if self.chunks is None else list(self.chunks)})


@dataclass(frozen=True)
class MeasuredOn(_Flat):
    """The stream every variant's error was measured on (``package(steps=...)``): its length, and whether its
    input was random or the data given (``"random"`` or ``"data"``)."""

    steps: int | None
    inputs: str | None

    _READ = {"steps": _int, "inputs": _text}


@dataclass(frozen=True)
class Refusal:
    """Why a variant asked for was left out: ``reason`` (``cannot_make``, ``over_bound``, ``grows``,
    ``golden_over_bound``), a message, and the figures that refused it."""

    reason: str | None
    message: str
    error: ErrorFigures | None = None
    golden: GoldenFigures | None = None

    @classmethod
    def parse(cls, value: Any) -> Refusal:
        if not isinstance(value, dict):
            return cls(None, value if isinstance(value, str) else repr(value))
        return cls(_text(value.get("reason")), _text(value.get("message")) or repr(value),
                   _part(ErrorFigures, value.get("error")), _part(GoldenFigures, value.get("golden")))

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"reason": self.reason, "message": self.message,
                           "error": _out(self.error), "golden": _out(self.golden)})


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest. ``host``: the packaging host's record (:func:`edge_rnn.runtime._host.host_record`), as
    written (a manifest's is taken in any shape); ``int8``: the int8 variants' settings
    (``Int8Settings.to_dict()``); ``required_operators``: a minimal onnxruntime build's config (``--ort``)."""

    format: int
    variants: Mapping[str, VariantEntry]
    created_by: str | None = None
    source_model: str | None = None
    host: Json | None = None
    measured_on: MeasuredOn | None = None
    golden: GoldenSpec | None = None
    refused: Mapping[str, Refusal] = field(default_factory=dict)
    int8: Json | None = None
    required_operators: FileRef | None = None

    @classmethod
    def parse(cls, data: Any, where: Any) -> Manifest:
        """``data`` (a manifest's JSON, from ``where``) as a Manifest, refused when it is no bundle manifest."""
        fmt = data.get("format") if isinstance(data, dict) else None
        if not isinstance(data, dict) or not is_int(fmt) or fmt not in READABLE_FORMATS:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ModelFormatError(f"{where}: expected bundle format {BUNDLE_FORMAT}, got {got!r}")
        variants = data.get("variants")
        if not isinstance(variants, dict) or not variants or not all(isinstance(v, dict) for v in variants.values()):
            raise ModelFormatError(f"{where}: expected 'variants' to map names to entries")
        golden = data.get("golden")  # present, but not an object: refused where it is used, as having no file
        return cls(fmt, {n: VariantEntry.parse(e) for n, e in variants.items()}, _text(data.get("created_by")),
                   _text(data.get("source_model")), _json(data.get("host")),
                   _part(MeasuredOn, data.get("error_measured_on")),
                   None if golden is None else GoldenSpec.parse(_dict(golden)),
                   {n: Refusal.parse(r) for n, r in _dict(data.get("refused")).items()}, _json(data.get("int8")),
                   _part(FileRef, data.get("required_operators")))

    def to_json(self) -> dict[str, Any]:
        out = {"format": self.format, "created_by": self.created_by, "source_model": self.source_model,
               "host": self.host, "error_measured_on": _out(self.measured_on),
               "golden": _out(self.golden),
               "variants": {n: e.to_json() for n, e in self.variants.items()},
               "refused": {n: r.to_json() for n, r in self.refused.items()}, "int8": self.int8,
               "required_operators": _out(self.required_operators)}
        return _drop_none(out)
