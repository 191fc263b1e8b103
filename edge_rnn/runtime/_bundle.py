"""Reading a deployment bundle: a folder of variants and the ``manifest.json`` that describes them.

``edge-rnn package`` writes the bundle (:mod:`edge_rnn.deploy`); this module,
on the device side, only reads it: it picks a variant by name, or the fastest
one whose measured error is within a bound, checks the file's SHA-256 against
the manifest, and hands back the file and its contract.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_rnn._numbers import is_int, is_number
from edge_rnn.contract import Contract
from edge_rnn.errors import ModelFormatError, UnsupportedError

__all__ = ["MANIFEST", "BUNDLE_FORMAT", "read_manifest", "pick_variant", "Picked", "sha256_of", "hash_file", "number",
           "finite", "printable"]

MANIFEST = "manifest.json"
BUNDLE_FORMAT = 2  # 2: golden vectors and the packaging host's record; 1 (no golden vectors) is still read
_READABLE_FORMATS = (1, 2)
_MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class Picked:
    name: str
    path: Path
    contract: Contract
    operators: frozenset[str] | None = None  # the variant's operator types, as the manifest lists them
    manifest: dict[str, Any] | None = None  # the bundle's manifest, as read to pick it


def hash_file(digest: Any, path: Path) -> Any:
    """``digest`` updated with the bytes of ``path``, read in 1 MiB blocks; returned."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest


def sha256_of(path: Path) -> str:
    return hash_file(hashlib.sha256(), path).hexdigest()


def bundle_file(folder: Path, name: str, missing: str) -> Path:
    """``folder / name``, refused when it is a link out of the folder or not a file (``missing`` says why)."""
    path = folder / name
    if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
        raise ModelFormatError(f"{path}: a link out of the bundle's folder; a bundle's files live in it")
    if not path.is_file():
        raise ModelFormatError(missing)
    return path


def read_manifest(folder: Path) -> dict[str, Any]:
    path = bundle_file(folder, MANIFEST, f"{folder}: a folder without {MANIFEST}; expected a bundle written by "
                       "edge-rnn package")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise ModelFormatError(f"{path}: larger than {_MAX_MANIFEST_BYTES >> 20} MiB; not a manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelFormatError(f"{path}: expected JSON, could not read it ({type(e).__name__})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or not is_int(fmt) or fmt not in _READABLE_FORMATS:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ModelFormatError(f"{path}: expected bundle format {BUNDLE_FORMAT}, got {got!r}")
    variants = manifest.get("variants")
    if not isinstance(variants, dict) or not variants or not all(isinstance(v, dict) for v in variants.values()):
        raise ModelFormatError(f"{path}: expected 'variants' to map names to entries")
    return manifest


def _entry_file(folder: Path, name: str, entry: dict, form: str) -> tuple[Path, str]:
    spec = entry if form == "onnx" else entry.get("ort")
    if not isinstance(spec, dict):
        raise UnsupportedError(f"variant {name!r}: the bundle has no {form!r} form of it (package with --ort)")
    file, digest = spec.get("file"), spec.get("sha256")
    if not isinstance(file, str) or not isinstance(digest, str) or Path(file).name != file:
        raise ModelFormatError(f"{folder / MANIFEST}: variant {name!r}: expected a file name and its sha256")
    return folder / file, digest


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None: a manifest is not trusted."""
    if not is_number(value):
        return None
    try:
        value = float(value)  # JSON integers have no size limit: 10**400 is not a float
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def number(entry: Any, group: str, key: str) -> float | None:
    """``entry[group][key]`` when it is a finite number (not a bool), else None."""
    sub = entry.get(group) if isinstance(entry, dict) else None
    return finite(sub.get(key)) if isinstance(sub, dict) else None


def printable(text: Any, limit: int = 200) -> str:
    """An untrusted string (a manifest's) made safe to print in one line: control characters escaped, cut."""
    text = text if isinstance(text, str) else repr(text)
    out = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                  for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def check_max_error(max_error: Any) -> None:
    if not is_number(max_error, least=0):
        raise UnsupportedError(f"max_error: expected a number >= 0, got {max_error!r}")


def by_speed(variants: dict[str, dict]) -> list[str]:
    """The variants whose error was measured and does not grow, fastest first (as the manifest measured them)."""
    ranked = []
    for n, e in variants.items():
        err, speed = number(e, "error", "max_abs"), number(e, "speed", "step_us")
        grows = e.get("error", {}).get("grows", True) if isinstance(e.get("error"), dict) else True
        if err is not None and grows is False:
            ranked.append((speed if speed is not None else math.inf, n))
    return [n for _, n in sorted(ranked)]


def _fastest_within(variants: dict[str, dict], max_error: Any) -> str:
    check_max_error(max_error)
    fits = [(0, n) for n in by_speed(variants) if number(variants[n], "error", "max_abs") <= max_error]
    if not fits:
        errors = {n: number(e, "error", "max_abs") for n, e in variants.items()}
        raise UnsupportedError(f"max_error {max_error:g}: no variant is within it; measured {errors}")
    return fits[0][1]


def pick_variant(folder: Path, variant: str | None, max_error: float | None, form: str = "onnx") -> Picked:
    """The variant asked for (by name, or the fastest within ``max_error``), its file checked against its hash."""
    manifest = read_manifest(folder)
    variants: dict[str, dict] = manifest["variants"]
    if form not in ("onnx", "ort"):
        raise UnsupportedError(f"form: expected 'onnx' or 'ort', got {form!r}")
    if variant is not None and max_error is not None:
        raise UnsupportedError("give variant= or max_error=, not both")
    if variant is None and max_error is None:
        variant = "fp32" if "fp32" in variants else next(iter(variants))
    if variant is not None:
        if variant not in variants:
            raise UnsupportedError(f"variant {variant!r}: expected one of {sorted(variants)} (the bundle's manifest)")
        name = variant
    else:
        name = _fastest_within(variants, max_error)
    path, digest = _entry_file(folder, name, variants[name], form)
    bundle_file(folder, path.name, f"{path}: listed in {MANIFEST} but missing")
    if sha256_of(path) != digest:
        raise ModelFormatError(f"{path}: its SHA-256 does not match {MANIFEST}; the bundle was changed or corrupted")
    contract = variants[name].get("contract")
    if not isinstance(contract, dict):
        raise ModelFormatError(f"{folder / MANIFEST}: variant {name!r} has no contract")
    ops = variants[name].get("operators")
    return Picked(name, path, Contract.from_dict(contract), frozenset(ops) if isinstance(ops, dict) else None,
                  manifest)
