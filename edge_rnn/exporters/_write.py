"""Writing an export: the report type both export paths return, and the one check-and-write."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from edge_rnn.contract import Contract
from edge_rnn.errors import EdgeRnnError, ModelFormatError
from edge_rnn.harness import ParityReport, raise_failures

__all__ = ["ExportReport", "check_and_write", "staged", "failed_parity"]


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote and how well it matches PyTorch."""

    path: Path
    contract: Contract
    graph_form: str  # "native" | "decomposed" (always for proj_size, which the LSTM operator cannot express)
    opset: int
    export_seconds: float  # graph construction, check and save; verification not included
    size_bytes: int
    operators: dict[str, int] = field(default_factory=dict)
    parity: ParityReport | None = None
    notes: list[str] = field(default_factory=list)  # what the export changed to fit the graph (a float16 module...)
    written: bool = True  # False when parity failed: nothing at ``path`` (see ``kept_at``)
    kept_at: Path | None = None  # where a model that failed parity was kept, with keep_failed=True


def check_and_write(model: onnx.ModelProto, path: Path, *, check: bool = True) -> bytes:
    """Serialise once, run the full ONNX check on those bytes, write them; returns them."""
    data = model.SerializeToString()
    if check:
        try:
            onnx.checker.check_model(data, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            raise ModelFormatError(f"edge-rnn wrote an invalid ONNX graph (a bug, please report it): {e}") from e
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as e:
        raise EdgeRnnError(f"{path}: cannot write the model ({e.strerror or e})") from None
    return data


@contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path``, moved into place only when the block succeeds (parity included).

    An export that fails its check leaves nothing at ``path``: neither a new file nor a half-written one,
    and an earlier file there is kept.
    """
    if path.is_dir():
        raise EdgeRnnError(f"{path}: cannot write the model (it is a directory)")
    tmp = path.with_name(f".{path.name}.partial")
    try:
        yield tmp
        if not tmp.exists():  # a failed check set it aside (or removed it): nothing goes to ``path``
            return
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise EdgeRnnError(f"{path}: cannot write the model ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def failed_parity(parity: ParityReport | None, tmp: Path, path: Path, *, keep_failed: bool,
                  raise_on_failure: bool) -> Path | None:
    """After a failed parity check, inside :func:`staged`: remove the staged file, or keep it beside ``path`` as
    ``<name>.failed.onnx`` when asked; raise unless ``raise_on_failure`` is false. Returns where it was kept."""
    if parity is None or parity.ok:
        return None
    kept = None
    if keep_failed:
        kept = path.with_name(f"{path.stem}.failed{path.suffix or '.onnx'}")
        os.replace(tmp, kept)
    else:
        tmp.unlink(missing_ok=True)
    if raise_on_failure:
        where = f"not written; kept at {kept} for inspection" if kept else "not written"
        raise_failures(parity, f"{path} ({where})")
    return kept
