"""inspect's listing of a bundle: its manifest's variants, each file checked against its SHA-256 as the runtime
checks a variant it loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_rnn.errors import ModelFormatError

__all__ = ["describe_bundle"]


def describe_bundle(folder: Path) -> tuple[str, list[str], int]:
    """The listing of a bundle's manifest with each file it lists checked against its SHA-256, as the runtime
    checks a variant it loads; the files that fail (``"name: what is wrong"``); and how many were checked."""
    from edge_rnn.runtime._bundle import number, printable, read_manifest

    manifest = read_manifest(folder)
    rows = [f"{folder}: a bundle of {len(manifest['variants'])} variant(s) of "
            f"{printable(manifest.get('source_model', '?'), 80)}"]
    failed: list[str] = []
    checked: list[Any] = []

    def row(label: str, spec: Any, what: str, model: bool = False) -> None:
        checked.append(spec)
        file, problem = _check_file(folder, spec)
        if problem is None and model:
            problem = _weights_problem(folder / file, spec)
        if problem is not None:
            failed.append(f"{file}: {problem}")
        rows.append(f"  {printable(label, 40):<12} {printable(file, 80):<28} {printable(what, 80):<38} "
                    f"{printable(problem or 'sha256 ok', 200)}")

    for name, e in manifest["variants"].items():
        err, step = number(e, "error", "max_abs"), number(e, "speed", "step_us")
        grows = isinstance(e.get("error"), dict) and e["error"].get("grows") is True
        row(name, e, f"max err {'?' if err is None else f'{err:.2e}'}{' GROWS' if grows else ''}  step "
                     f"{'?' if step is None else f'{step:.1f}'} us", model=True)
        if "ort" in e:
            row("", e["ort"], "the same in ORT format", model=True)
    if "required_operators" in manifest:
        row("operators", manifest["required_operators"], "a minimal onnxruntime build's config")
    known = {id(spec) for spec in checked}
    for where, spec in _listed_files(manifest):  # any other file the manifest names (a later format's)
        if id(spec) not in known:
            row("", spec, f"listed at {where}")
    return "\n".join(rows), failed, len(checked)


def _listed_files(tree: Any, where: str = "") -> list[tuple[str, dict]]:
    """Every ``{"file": ..., "sha256": ...}`` entry in a manifest, with where it sits (``variants.fp32.ort``)."""
    if isinstance(tree, dict):
        found = [(where, tree)] if "file" in tree and "sha256" in tree else []
        items = tree.items()
    elif isinstance(tree, list):
        found, items = [], enumerate(tree)
    else:
        return []
    for key, value in items:
        found += _listed_files(value, f"{where}.{key}" if where else str(key))
    return found


def _check_file(folder: Path, spec: Any) -> tuple[str, str | None]:
    """A manifest entry's file name, and None when the file is in ``folder`` and matches its SHA-256, else what is
    wrong with it (in capitals: it stands out in the listing)."""
    file = spec.get("file") if isinstance(spec, dict) else None
    if not isinstance(file, str) or not file or file in (".", "..") or Path(file).name != file:
        return repr(file) if file is not None else "?", "BAD ENTRY: not a file name in the bundle"
    return file, _file_problem(folder, file, spec.get("sha256"))


def _weights_problem(path: Path, spec: dict) -> str | None:
    """A variant's model file that names an external weights file its manifest entry does not hash, or that the
    runtime's reader cannot parse: what the runtime refuses to load; None when neither."""
    from edge_rnn.runtime._external import scan_model

    try:
        scan = scan_model(path.read_bytes(), str(path))
    except ModelFormatError:
        return "CANNOT BE PARSED"
    external = spec.get("external")
    listed = {e.get("file") for e in external if isinstance(e, dict)} if isinstance(external, list) else set()
    named = [(x.location or b"").decode("utf-8", "replace") for x in scan.external]
    uncovered = [n for n in named if n not in listed]
    return None if not uncovered else f"WEIGHTS FILE {uncovered[0]!r} NOT HASHED IN THE MANIFEST"


def _file_problem(folder: Path, file: str, digest: Any) -> str | None:
    """What is wrong with ``folder / file`` against its manifest's ``digest``; None when nothing is."""
    from edge_rnn.runtime._bundle import sha256_of

    path = folder / file
    if path.is_symlink() and not path.resolve().is_relative_to(folder.resolve()):
        return "A LINK OUT OF THE BUNDLE"
    if not path.is_file():
        return "MISSING"
    if not isinstance(digest, str):
        return "BAD ENTRY: no sha256 for it"
    if sha256_of(path) != digest:
        return "SHA-256 MISMATCH"
    return None
