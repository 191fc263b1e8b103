"""Running onnxruntime's Python tools quietly: they log and print as they go, and a CLI prints its own summary."""

from __future__ import annotations

import contextlib
import io
import logging

__all__ = ["quiet"]


def quiet(fn, *args, **kwargs):
    """onnxruntime's tools log and print as they go; a CLI prints its own summary instead."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn(*args, **kwargs)
    finally:
        logging.disable(logging.NOTSET)
