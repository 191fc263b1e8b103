"""One onnxruntime call of a model, with its constants fed, every output asked for, and any failure named."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from edge_rnn.errors import InferenceError, message_line
from edge_rnn.runtime._session import EP_FAIL

__all__ = ["SessionRunner"]


class SessionRunner:
    """Runs one model's session: the data outputs first, then the state outputs, in the order given.

    Every feed is validated before it gets here, so the binding's run skips
    the public wrapper's second check of names and ownership (~5 us a call);
    any error goes through the public run, which reports it or falls back to
    another execution provider as onnxruntime does. Whether the binding exists
    is decided once; the binding itself is looked up on each call, since
    onnxruntime replaces it when it falls back to another provider.
    """

    def __init__(self, session: ort.InferenceSession, output_names: list[str], constants: Mapping[str, np.ndarray],
                 source: str):
        self.session = session
        self.source = source
        self._names = output_names
        self._constants = constants
        self._fast = callable(getattr(getattr(session, "_sess", None), "run", None))

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One onnxruntime call. Any failure raises InferenceError, except an execution-provider failure, which
        goes to onnxruntime's own public run: it falls back to the next provider, as onnxruntime does."""
        feeds.update(self._constants)
        try:
            if self._fast:
                try:
                    return self.session._sess.run(self._names, feeds, None)
                except EP_FAIL:
                    pass
            return self.session.run(self._names, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime's Fail, InvalidArgument, RuntimeException, ...
            first = message_line(e)
            raise InferenceError(f"onnxruntime failed to run {self.source} ({type(e).__name__}: {first}); "
                                 "no stream in this call advanced") from e
