"""Reading a deployment bundle: a folder of variants and the ``manifest.json`` that describes them.

``edge-rnn package`` writes the bundle (:mod:`edge_rnn.deploy`); this module,
on the device side, only reads it: it picks a variant by name, or the fastest
one whose measured error is within a bound, checks the file's SHA-256 against
the manifest, and hands back the file and its contract. Every file a variant
loads is covered: the model file, and each external weights file it names
(:func:`check_loaded`), whose hashes the manifest lists beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_rnn._numbers import is_number
from edge_rnn._variant_kinds import REFERENCE
from edge_rnn.contract import Contract
from edge_rnn.errors import ModelFormatError, UnsupportedError
from edge_rnn.runtime._manifest import BUNDLE_FORMAT, FileRef, Manifest, VariantEntry, finite

__all__ = ["MANIFEST", "BUNDLE_FORMAT", "read_manifest", "load_manifest", "pick_variant", "pick_from", "Picked",
           "sha256_of", "hash_file", "number", "finite", "printable", "check_file", "check_loaded"]

MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 16 << 20


@dataclass(frozen=True)
class Picked:
    name: str
    path: Path
    contract: Contract
    ref: FileRef  # the file's entry in the manifest: its hash, size and external weights files
    manifest: Manifest | None = None  # the bundle's manifest, as read to pick it


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


def check_file(path: Path, ref: FileRef, data: bytes | None = None,
               changed: str = "the bundle was changed or corrupted") -> None:
    """``path`` (or its bytes ``data``, where already read: the bytes checked are then the ones used) has the
    SHA-256 ``ref`` gives, and its size where ``ref`` gives one; ``changed`` ends the message of a hash that
    differs."""
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_of(path)
    if digest != ref.sha256:
        raise ModelFormatError(f"{path}: its SHA-256 does not match {MANIFEST}; {changed}")
    size = len(data) if data is not None else path.stat().st_size
    if ref.size is not None and size != ref.size:
        raise ModelFormatError(f"{path}: {size} bytes, where {MANIFEST} gives {ref.size}; the manifest was edited "
                               "or written for other files")


def check_loaded(picked: Picked, data: bytes, weights: Mapping[str, Path]) -> None:
    """What a variant loads is what its manifest hashes: ``data``, the bytes read and handed to onnxruntime, and
    every external weights file the model names (``weights``: ``{location: file}``).

    A weights file the manifest does not list with a SHA-256 is refused,
    bundles written before it listed them included: ``edge-rnn package``
    never wrote a variant that keeps its weights elsewhere, so such a bundle
    was put together by hand, and a file no hash covers could be swapped
    (a swapped ``weights.bin`` moved the outputs by 0.35 and loaded).
    """
    check_file(picked.path, picked.ref, data)
    folder = picked.path.parent
    listed = {r.file: r for r in picked.ref.external if r.file is not None and r.sha256 is not None}
    for location in weights:
        ref = listed.get(location)
        if ref is None:
            raise ModelFormatError(f"{picked.path}: keeps weights in {location!r}, which {MANIFEST} does not cover "
                                   "with a SHA-256; every file a variant loads must be (package the bundle again)")
        check_file(bundle_file(folder, location, f"{folder / location}: listed in {MANIFEST} but missing"), ref)


def _manifest_json(folder: Path) -> tuple[Any, Path]:
    path = bundle_file(folder, MANIFEST, f"{folder}: a folder without {MANIFEST}; expected a bundle written by "
                       "edge-rnn package")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise ModelFormatError(f"{path}: larger than {_MAX_MANIFEST_BYTES >> 20} MiB; not a manifest")
    try:
        return json.loads(path.read_text(encoding="utf-8")), path
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelFormatError(f"{path}: expected JSON, could not read it ({type(e).__name__})") from None


def load_manifest(folder: Path) -> Manifest:
    """The bundle's manifest, read once into its typed form (:class:`~edge_rnn.runtime._manifest.Manifest`)."""
    data, path = _manifest_json(folder)
    return Manifest.parse(data, path)


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest's JSON as read, with the checks of :func:`load_manifest`: for a tool that walks it whole
    (``edge-rnn inspect`` checks every file it lists, a later format's too)."""
    data, path = _manifest_json(folder)
    Manifest.parse(data, path)
    return data


def _entry_file(folder: Path, name: str, entry: VariantEntry, form: str) -> tuple[Path, FileRef]:
    if form == "onnx":
        ref = entry.ref
    elif entry.ort is not None:
        ref = entry.ort.ref
    else:
        raise UnsupportedError(f"variant {name!r}: the bundle has no {form!r} form of it (package with --ort)")
    if ref.file is None or ref.sha256 is None:
        raise ModelFormatError(f"{folder / MANIFEST}: variant {name!r}: expected a file name and its sha256")
    return folder / ref.file, ref


def number(entry: Any, group: str, key: str) -> float | None:
    """``entry[group][key]`` of a manifest's JSON when it is a finite number (not a bool), else None."""
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


def by_speed(variants: Mapping[str, VariantEntry]) -> list[str]:
    """The variants whose error was measured and does not grow, fastest first (as the manifest measured them)."""
    ranked = []
    for n, e in variants.items():
        if e.error.max_abs is not None and e.error.grows is False:
            step = e.speed.step_us if e.speed is not None else None
            ranked.append((step if step is not None else math.inf, n))
    return [n for _, n in sorted(ranked)]


def _fastest_within(variants: Mapping[str, VariantEntry], max_error: Any) -> str:
    check_max_error(max_error)
    fits = [n for n in by_speed(variants) if variants[n].error.max_abs <= max_error]  # by_speed: measured ones only
    if not fits:
        errors = {n: e.error.max_abs for n, e in variants.items()}
        raise UnsupportedError(f"max_error {max_error:g}: no variant is within it; measured {errors}")
    return fits[0]


def _chosen(variants: Mapping[str, VariantEntry], variant: str | None, max_error: float | None) -> str:
    """The name asked for (the reference, else the first listed, when neither a name nor max_error is given), or
    the fastest within ``max_error``."""
    if variant is not None and max_error is not None:
        raise UnsupportedError("give variant= or max_error=, not both")
    if variant is None and max_error is None:
        return REFERENCE if REFERENCE in variants else next(iter(variants))
    if variant is None:
        return _fastest_within(variants, max_error)
    if variant not in variants:
        raise UnsupportedError(f"variant {variant!r}: expected one of {sorted(variants)} (the bundle's manifest)")
    return variant


def pick_variant(folder: Path, variant: str | None, max_error: float | None, form: str = "onnx") -> Picked:
    """The variant asked for (by name, or the fastest within ``max_error``), its file checked against its hash."""
    return pick_from(folder, load_manifest(folder), variant, max_error, form)


def pick_from(folder: Path, manifest: Manifest, variant: str | None, max_error: float | None,
              form: str = "onnx") -> Picked:
    """:func:`pick_variant` from a manifest already read."""
    if form not in ("onnx", "ort"):
        raise UnsupportedError(f"form: expected 'onnx' or 'ort', got {form!r}")
    name = _chosen(manifest.variants, variant, max_error)
    entry = manifest.variants[name]
    path, ref = _entry_file(folder, name, entry, form)
    bundle_file(folder, path.name, f"{path}: listed in {MANIFEST} but missing")
    check_file(path, ref)
    if entry.contract is None:
        raise ModelFormatError(f"{folder / MANIFEST}: variant {name!r} has no contract")
    return Picked(name, path, Contract.from_dict(entry.contract), ref, manifest)
