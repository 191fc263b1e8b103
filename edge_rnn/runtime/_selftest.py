"""A bundle's variant tested on this CPU: its golden stream replayed, against its bound and the packaging host's figure.

``StreamingModel.load(bundle, variant=..., self_test=True)``, ``edge-rnn check``
and ``edge-rnn serve BUNDLE`` use it. The manifest says, per variant, the
bound its golden replay is held to and what the packaging host measured;
the golden file's SHA-256 is in the manifest beside it, so an edited golden
stream is refused like an edited model file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_rnn.errors import ModelFormatError, SelfTestError, UnsupportedError
from edge_rnn.runtime._bundle import MANIFEST, bundle_file, check_file
from edge_rnn.runtime._golden import Golden, GoldenCheck, golden_bytes, load_golden, replay
from edge_rnn.runtime._host import describe_host, host_record, int8_kernel
from edge_rnn.runtime._manifest import GoldenFigures, GoldenSpec, Manifest, VariantEntry

__all__ = ["SelfTest", "self_test", "golden_of", "estimate_error", "raise_if_failed"]


@dataclass(frozen=True)
class SelfTest:
    """One variant's golden replay here, beside what the packaging host measured."""

    variant: str
    check: GoldenCheck
    host_max_abs: float | None  # the packaging host's golden replay of this variant
    host_worst_fraction: float | None
    packaged_on: Any  # the manifest's host record (untrusted shape)

    @property
    def ok(self) -> bool:
        return self.check.ok

    def describe(self) -> str:
        w = self.check.worst
        where = f" on {w.kind} {w.name!r}" if w is not None else ""
        host = ("not recorded" if self.host_max_abs is None
                else f"{self.host_max_abs:.3g} ({self.host_worst_fraction or 0:.3g}x the bound)")
        return (f"variant {self.variant!r}: max abs error {self.check.max_abs:.3g}{where}, "
                f"{self.check.worst_fraction:.3g}x its bound {self.check.atol:g} + {self.check.rtol:g}*|y| here; "
                f"the packaging host measured {host} on {describe_host(self.packaged_on)}")


def golden_of(folder: Path, manifest: Manifest) -> Golden:
    """The bundle's golden stream, its file checked against the manifest's SHA-256."""
    spec = manifest.golden
    if spec is None:
        raise UnsupportedError(f"{folder}: the bundle has no golden vectors (packaged before edge-rnn recorded them);"
                               " package it again, or load without the self-test")
    file, digest = spec.ref.file, spec.ref.sha256
    if file is None or digest is None:
        raise ModelFormatError(f"{folder / MANIFEST}: expected 'golden' to give a file name and its sha256")
    path = bundle_file(folder, file, f"{folder / file}: listed in {MANIFEST} as the golden vectors but missing")
    data = golden_bytes(path)  # hashed and parsed from the same bytes: the file cannot change in between
    check_file(path, spec.ref, data, "the golden vectors were changed or corrupted")
    golden = load_golden(path, data)
    if not _matches(spec, golden):
        raise ModelFormatError(f"{folder / MANIFEST}: its golden steps and chunks differ from {file}'s "
                               f"({golden.steps} steps in {len(golden.chunks)} chunks)")
    return golden


def _matches(spec: GoldenSpec, golden: Golden) -> bool:
    """The manifest's golden steps and chunks, where it gives them, are the file's."""
    return (spec.steps is None or spec.steps == golden.steps) and (spec.chunks is None or spec.chunks == golden.chunks)


def _figures(entry: VariantEntry, form: str) -> GoldenFigures | None:
    """The golden figures the manifest records for the form tested (``onnx`` or ``ort``): the bound it is held
    to and what the packaging host measured."""
    if form == "ort":
        return entry.ort.golden if entry.ort is not None else None
    return entry.golden


def _bound(folder: Path, name: str, entry: VariantEntry, form: str) -> tuple[float, float]:
    """The bound recorded for the form tested: an ORT form is held to its own (``ort.golden.bound``)."""
    figures = _figures(entry, form)
    atol, rtol = (figures.bound.atol, figures.bound.rtol) if figures is not None else (None, None)
    if atol is None or rtol is None or not atol > 0 or rtol < 0:
        where = "ort.golden.bound" if form == "ort" else "golden.bound"
        raise ModelFormatError(f"{folder / MANIFEST}: variant {name!r}: expected {where} with atol > 0 and "
                               "rtol >= 0")
    return atol, rtol


def self_test(model: Any, folder: Path, manifest: Manifest, name: str,
              golden: Golden | None = None, form: str = "onnx") -> SelfTest:
    """Replay the golden stream through ``model`` (variant ``name`` of the bundle at ``folder``, in ``form``),
    here; the packaging host's figure is that of the same form."""
    entry = manifest.variants[name]
    atol, rtol = _bound(folder, name, entry, form)
    golden = golden if golden is not None else golden_of(folder, manifest)
    check = replay(model, golden, atol=atol, rtol=rtol)
    packaged = _figures(entry, form)
    measured = packaged.measured if packaged is not None else None
    return SelfTest(name, check, None if measured is None else measured.max_abs,
                    None if measured is None else measured.worst_fraction, manifest.host)


def raise_if_failed(result: SelfTest, int8: bool = False) -> None:
    """Raise SelfTestError for a failed replay; ``int8``: the variant is an int8 one (the advice differs)."""
    if result.ok:
        return
    here = host_record()
    advice = ("package int8 again with --int8-target portable (exact on every CPU class measured), or serve another "
              "variant" if int8 else "its file or golden vectors differ from what was packaged, or this CPU computes "
              "it otherwise: package it again, or serve another variant")
    raise SelfTestError(f"{result.describe()}. This CPU: {describe_host(here)}, int8 kernel "
                        f"{int8_kernel(here['features'])}. The variant is over its bound on this machine: {advice}")


def estimate_error(result: SelfTest, entry: VariantEntry) -> float:
    """The variant's long-stream error projected to this CPU: the packaging host's figure (its long stream)
    scaled by how much larger the golden replay's error is here than there, and never below the replay's own."""
    long = entry.error.max_abs
    here = result.check.max_abs
    if long is None:
        return math.inf
    host = result.host_max_abs
    if host is None or host == 0:  # nothing to scale by: the larger of the manifest's figure and the one here
        return max(here, long)
    return max(here, long * max(1.0, here / host))
