"""The errors edge-rnn raises.

Every error a user can cause derives from :class:`EdgeRnnError`; the CLI turns
it into one line on stderr and exit code 1. Messages read "expected X, got Y"
and name the tensor or file they are about.
"""

from __future__ import annotations

__all__ = [
    "EdgeRnnError",
    "ArgumentError",
    "ShapeError",
    "StateError",
    "UnsupportedError",
    "ModelFormatError",
    "ParityError",
    "NonFiniteError",
    "StreamError",
    "NotStreamableError",
    "DataError",
    "InferenceError",
    "SelfTestError",
    "message_line",
    "described",
]


class EdgeRnnError(Exception):
    """Base class of every error edge-rnn raises on purpose."""


class ArgumentError(EdgeRnnError, TypeError):
    """A function was called with arguments it does not take (an unknown keyword): a TypeError, as Python's own."""


class ShapeError(EdgeRnnError, ValueError):
    """A tensor has the wrong rank, size or dtype."""


class StateError(EdgeRnnError, ValueError):
    """A recurrent state, state_dict or snapshot does not fit the model."""


class UnsupportedError(EdgeRnnError, ValueError):
    """The module or option is outside what edge-rnn can export."""


class ModelFormatError(EdgeRnnError, ValueError):
    """A file is not ONNX, or its edge_rnn contract is missing or malformed."""


class NonFiniteError(EdgeRnnError, ValueError):
    """An input holds NaN or Inf, or a model computed them from finite ones (an overflow in an output or a new
    state: the step is not applied); refused unless the model was loaded with allow_nonfinite=True."""


class StreamError(EdgeRnnError, RuntimeError):
    """A stream is closed, or used twice in one batch."""


class NotStreamableError(EdgeRnnError, ValueError):
    """Chunked streaming of this model cannot equal one pass over the whole sequence."""


class InferenceError(EdgeRnnError, RuntimeError):
    """onnxruntime failed to run a call; the streams in it are left as they were."""


class SelfTestError(EdgeRnnError, RuntimeError):
    """A bundle's variant, replaying its golden stream on this CPU, is over its bound (its int8 kernels differ from
    the packaging host's, or its files were changed)."""


class DataError(EdgeRnnError, ValueError):
    """Input data given for a check (``data=``, ``--data``) cannot be used: unreadable, pickled, wrong shape."""


class ParityError(EdgeRnnError):
    """ONNX and its reference disagree beyond tolerance.

    ``failures`` lists every ``(case, tensor, err_onnx, bound)`` that failed,
    so one run shows all of them; ``rows`` holds the same failures as
    :class:`edge_rnn.harness.ParityRow` objects, with ``err_torch`` and the
    ratio.
    """

    def __init__(self, message: str, failures: list[tuple[str, str, float, float]], rows: list | None = None):
        super().__init__(message)
        self.failures = failures
        self.rows = list(rows or [])


def message_line(e: BaseException, *, last: bool = False) -> str:
    """The first (``last``: the last) line of an exception's message, or "": for errors told in one line."""
    lines = str(e).strip().splitlines()
    return (lines[-1] if last else lines[0]) if lines else ""


def described(e: BaseException, *, last: bool = False) -> str:
    """``"TypeName: line"`` for an exception, ``"TypeName"`` when its message is empty."""
    return f"{type(e).__name__}: {message_line(e, last=last)}".rstrip(": ")
