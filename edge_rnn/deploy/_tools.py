"""What deployment's makers share: reading an ONNX file in one line's error, and running onnxruntime's Python tools
quietly (they log and print as they go, and a CLI prints its own summary)."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import onnx

from edge_rnn.errors import ModelFormatError, described

__all__ = ["quiet", "read_model"]


def read_model(path: Path) -> onnx.ModelProto:
    """The ONNX model at ``path``; a file onnx cannot parse is one ModelFormatError naming it."""
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError, OSError, ValueError (external data), ...
        raise ModelFormatError(f"{path}: expected an ONNX model, could not parse it ({described(e)})") from None


def quiet(fn, *args, **kwargs):
    """onnxruntime's tools log and print as they go; a CLI prints its own summary instead."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)
    finally:
        logging.disable(logging.NOTSET)
