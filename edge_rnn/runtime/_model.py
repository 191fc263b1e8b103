"""StreamingModel: one loaded ONNX model shared by many streams.

The model is a composition, each part handed what it needs when the model is
built: the onnxruntime session behind a :class:`~edge_rnn.runtime._runner.SessionRunner`,
the ports (:class:`~edge_rnn.runtime._ports.ModelIO`) and their
:class:`~edge_rnn.runtime._chunks.ChunkChecker`, the state slab
(:class:`~edge_rnn.runtime._slab.StateSlab`), and a
:class:`~edge_rnn.runtime._batching.BatchStepper` for many streams at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_rnn.contract import Contract, StateSpec
from edge_rnn.errors import EdgeRnnError, InferenceError, StreamError, UnsupportedError
from edge_rnn.runtime._batching import BatchStepper
from edge_rnn.runtime._bundle import Picked
from edge_rnn.runtime._chunks import Arrays, ChunkChecker, ResultChecker
from edge_rnn.runtime._loading import LoadOptions, Opened, open_model
from edge_rnn.runtime._ports import Port
from edge_rnn.runtime._runner import SessionRunner
from edge_rnn.runtime._selftest import SelfTest
from edge_rnn.runtime._session import OPT_LEVELS, ForeignModel, SessionConfig
from edge_rnn.runtime._slab import StateSlab
from edge_rnn.runtime._snapshot import decode_snapshot
from edge_rnn.runtime._stream import Stream, state_from_user
from edge_rnn.runtime._variant import VariantChoice, is_bundle, open_variant

__all__ = ["StreamingModel", "OPT_LEVELS"]


class StreamingModel:
    """A stateful ONNX model, loaded once and shared; each :class:`Stream` owns its state.

    Everything a stream passes or gets back is without the batch axis: a chunk
    of an LSTM exported with ``(time, batch, 80)`` input is ``(time, 80)``.

    Example::

        >>> model = StreamingModel.load("lstm.onnx")                 # doctest: +SKIP
        >>> stream = model.open_stream()                             # doctest: +SKIP
        >>> y = model.step(stream, chunk)["y"]   # chunk: (time, 80) float32   # doctest: +SKIP
        >>> outs = model.step_batch([(s1, c1), (s2, c2)])            # one onnxruntime call  # doctest: +SKIP
    """

    def __init__(self, opened: Opened, *, allow_nonfinite: bool = False, variant: str | None = None):
        io = opened.io
        self._io = io
        self.fingerprint = opened.fingerprint
        self.source = opened.source
        self.rows_coupled = opened.rows_coupled
        self.variant = variant  # the bundle variant it was loaded as, if any
        self.self_test: SelfTest | None = None  # its golden replay on this CPU, when loaded with self_test=True
        self._runner = SessionRunner(opened.session, [p.name for p in io.outputs] + [s.output for s in io.states],
                                     io.constants, opened.source)
        self._checker = ChunkChecker(io.inputs, allow_nonfinite=_flag(allow_nonfinite))
        self._results = ResultChecker(self._checker, io.outputs, io.states)  # NaN/Inf out: the step not applied
        self._slab = StateSlab(io.states)  # every open stream's state, one row each
        # a third-party model may fix its batch size at 1, and a dynamic int8 variant quantises each call's
        # activations with one scale over the whole call (rows_coupled): then streams cannot share a call
        self._batchable = all(p.shape[p.batch_axis] is None for p in (*io.inputs, *io.outputs)) and not \
            opened.rows_coupled
        self._stepper = BatchStepper(self, self._checker, self._results, self._runner, self._slab, self.step,
                                     io.outputs, batchable=self._batchable)
        # the single stream's hot path, precomputed: the batch axis added to each input (x[add], a view) and
        # dropped from each output (y[drop])
        self._single = self._checker.single
        self._layouts = self._checker.layouts  # the checker's own dict (filled in place), read on every step
        self._check_values = self._checker.check_values
        self._add_batch = {p.name: (slice(None),) * p.batch_axis + (None,) for p in io.inputs}
        self._out_drop = [(p.name, (slice(None),) * p.batch_axis + (0,)) for p in io.outputs]
        self._n_out = len(io.outputs)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        model: str | Path | bytes,
        *,
        session: SessionConfig | None = None,
        foreign: ForeignModel | None = None,
        contract: Contract | None = None,
        allow_nonfinite: bool = False,
        variant: str | None = None,
        max_error: float | None = None,
        form: str = "onnx",
        self_test: bool = False,
        **flat: Any,
    ) -> StreamingModel:
        """Load an ONNX or ORT-format model (a path or its bytes), or a variant of a bundle (a folder).

        A bundle folder (``edge-rnn package``) holds variants and a
        ``manifest.json``: ``variant="int8"`` picks one by name,
        ``max_error=1e-3`` the fastest whose measured error is within it (and
        does not grow), neither the ``fp32`` one; ``form="ort"`` its ORT-format
        file. The file's SHA-256 must match the manifest, and so must the
        contract in the file. ``model.variant`` says which.

        ``self_test=True`` (a bundle only) replays the variant's golden stream
        on this CPU before it is handed back, and raises
        :class:`~edge_rnn.errors.SelfTestError` when it is over its bound,
        naming the variant, this CPU's int8-relevant features, the error here
        against the bound and the packaging host's figure; ``model.self_test``
        holds the result. With ``max_error=`` it picks by what this CPU
        measured: the fastest variant that passes here and whose long-stream
        error, projected to this CPU (the manifest's figure scaled by the
        golden error here over the packaging host's), is within ``max_error``.

        A model edge-rnn exported describes its states in its ``edge_rnn``
        metadata. The options come in two groups, each a frozen dataclass:

        - ``session`` (:class:`SessionConfig`): ``providers``, ``threads``
          (intra-op; None: onnxruntime's default), ``optimization`` (graph
          level, ``"default"``: all) or your own ``session_options``, used as
          given and never changed;
        - ``foreign`` (:class:`ForeignModel`): how to read a model edge-rnn
          did not write: ``state_map``, ``batch_axis``, ``time_axis``,
          ``state_batch_axis``, ``constants``.

        Each of those fields may still be given as a keyword of its own
        (``load(path, threads=1)``), for one release, with a
        ``DeprecationWarning``; not both ways. ``contract`` describes
        the states when the file carries none (a bundle's manifest holds it);
        it takes the place of the metadata and is checked against the graph.
        """
        _check_model_and_variant(model, variant)
        choice = VariantChoice(variant, max_error, form, self_test)
        options = LoadOptions.given(session, foreign, flat, contract=contract, allow_nonfinite=_flag(allow_nonfinite))
        if not is_bundle(model):
            choice.refuse_for_file(model)
            return cls._open(model, options)
        if contract is not None:
            raise UnsupportedError("contract=: a bundle's manifest already holds each variant's contract")
        return open_variant(lambda picked: cls._open(picked.path, options, picked), Path(model), choice)

    @classmethod
    def _open(cls, model: str | Path | bytes, options: LoadOptions, picked: Picked | None = None) -> StreamingModel:
        return cls(open_model(model, options, picked), allow_nonfinite=options.allow_nonfinite,
                   variant=None if picked is None else picked.name)

    # --------------------------------------------------------------- properties
    @property
    def session(self) -> ort.InferenceSession:
        return self._runner.session

    @property
    def allow_nonfinite(self) -> bool:
        """Whether NaN and Inf may enter (``load(..., allow_nonfinite=True)``); refused otherwise."""
        return self._checker.allow_nonfinite

    @allow_nonfinite.setter
    def allow_nonfinite(self, allow: bool) -> None:
        self._checker.allow_nonfinite = _flag(allow)

    @property
    def inputs(self) -> tuple[Port, ...]:
        return self._io.inputs

    @property
    def outputs(self) -> tuple[Port, ...]:
        return self._io.outputs

    @property
    def states(self) -> tuple[StateSpec, ...]:
        return self._io.states

    @property
    def streamable(self) -> bool:
        return self._io.streamable

    @property
    def batches_streams(self) -> bool:
        """Whether ``step_batch`` puts different streams in one onnxruntime call. False for a model whose batch
        is fixed at 1, and for one whose streams would change each other's outputs in a shared call (a dynamic
        int8 variant: ``rows_coupled``): those are stepped one call per stream, each exactly as alone."""
        return self._batchable

    @property
    def contract(self) -> Contract | None:
        """The ``edge_rnn`` contract the model streams by: its file's, or the one given to :meth:`load` (a bundle's
        manifest); None for a model edge-rnn did not write, read through :class:`ForeignModel` options."""
        return self._io.contract

    @property
    def constants(self) -> Mapping[str, np.ndarray]:
        return self._io.constants

    def __repr__(self) -> str:
        return (f"<StreamingModel {self.source}: inputs {[p.name for p in self.inputs]}, "
                f"outputs {[p.name for p in self.outputs]}, states {[s.input for s in self.states]}>")

    # ------------------------------------------------------------------ streams
    def open_stream(self, initial_state: Mapping[str, np.ndarray] | None = None) -> Stream:
        """A new stream, from zeros (PyTorch's default) or from ``initial_state`` (per stream, no batch axis)."""
        state = None if initial_state is None else state_from_user(self.states, initial_state,
                                                                    allow_nonfinite=self.allow_nonfinite)
        return Stream(self, self.states, self._slab, state)

    def restore(self, snapshot: bytes) -> Stream:
        """A stream resumed from :meth:`Stream.snapshot`; refused if the snapshot is of another model, or holds
        NaN or Inf (unless ``allow_nonfinite``), or a step count beyond ``2**62``. A snapshot refused takes no
        slab row."""
        state, steps = decode_snapshot(snapshot, self.fingerprint, self.states, allow_nonfinite=self.allow_nonfinite)
        return Stream(self, self.states, self._slab, state, steps=steps)

    # ------------------------------------------------------------------ stepping
    def check(self, stream: Stream, x: Any) -> int:
        """Validate one chunk for ``stream`` without stepping it; returns the chunk's number of time steps.

        Raises exactly what :meth:`step` would raise for this chunk and stream
        (shape, dtype, NaN/Inf, a closed stream or one of another model), so a
        server can refuse a bad chunk before it joins a batch.
        """
        if not isinstance(stream, Stream):
            raise StreamError(f"expected a Stream from this model's open_stream(), got {type(stream).__name__}")
        _, n = self._checker.prepare(x)
        with stream.lock:
            stream.check_usable(self)
        return n

    def _feeds(self, x: Any) -> tuple[Arrays, int]:
        """One stream's chunk validated, as feeds with a batch axis of 1, and its number of steps."""
        single = self._single
        if type(x) is np.ndarray and single is not None:
            n = self._layouts.get((x.shape, x.dtype))
            if n is not None:  # this layout passed every shape check before
                self._check_values(single, x)
                return {single: x[self._add_batch[single]]}, n
        xs, n = self._checker.prepare(x)
        if single is not None:
            self._checker.remember(xs[single], n)
        return {name: a[self._add_batch[name]] for name, a in xs.items()}, n

    def step(self, stream: Stream, x: Any) -> Arrays:
        """Feed one chunk (array, or dict for several inputs; no batch axis) and advance the stream.

        Returns the outputs without the batch axis. On any error the stream's
        state is left exactly as it was; an output or new state holding NaN or
        Inf (the model overflowed) is such an error
        (:class:`~edge_rnn.errors.NonFiniteError`), unless ``allow_nonfinite``.
        """
        if type(stream) is not Stream:
            raise StreamError(f"expected a Stream from this model's open_stream(), got {type(stream).__name__}")
        feeds, n = self._feeds(x)
        with stream.lock:
            row = stream.row_for(self, self._io.streamable)
            feeds.update(self._slab.feeds(row))
            res = self._runner.run(feeds)
            states = res[self._n_out:]
            wrong = self._slab.mismatch(states, 1)
            if wrong:
                raise InferenceError(f"onnxruntime ran {self.source} but returned a {wrong}; the stream did not "
                                     "advance")
            self._results.check(res)
            self._slab.advance(row, states, n)
        return {name: res[i][drop] for i, (name, drop) in enumerate(self._out_drop)}

    def step_batch(self, items: Sequence[tuple[Stream, Any]], *, on_error: str = "raise"
                   ) -> list[Arrays | EdgeRnnError]:
        """Step many streams; chunks of equal length share one onnxruntime call.

        Chunks of different lengths are grouped by length (one call per
        length), so no padding ever reaches a state. Results equal stepping
        each stream alone.

        ``on_error="raise"`` (the default): every chunk and stream is checked
        first, and the first bad one raises with no stream advanced. The
        onnxruntime calls then run, and states are set only after all of them
        succeeded, so a failing call advances nothing either, nor does an
        output or new state holding NaN or Inf (the model overflowed; unless
        ``allow_nonfinite``): that raises
        :class:`~edge_rnn.errors.NonFiniteError` naming the item. This holds
        on a model whose batch size is fixed at 1 too (one call per stream).

        ``on_error="isolate"``: a bad chunk, a closed stream, a failing call or
        an overflow gives its item the :class:`~edge_rnn.errors.EdgeRnnError`
        in its slot of the result, and every other stream still advances, so
        one client's bad input cannot stop the others.
        """
        return self._stepper.step_batch(items, on_error)


def _flag(allow: Any) -> bool:
    """``allow_nonfinite`` as given, if it is a bool: a string such as "no" would otherwise read as True."""
    if not isinstance(allow, (bool, np.bool_)):
        raise UnsupportedError(f"allow_nonfinite: expected True or False, got {allow!r:.40}")
    return bool(allow)


def _check_model_and_variant(model: Any, variant: Any) -> None:
    """The types :meth:`StreamingModel.load` takes for ``model`` and ``variant``, refused as one line otherwise."""
    if not isinstance(model, (str, PathLike, bytes, bytearray)):
        raise UnsupportedError(f"model: expected a path (str or os.PathLike) or the model's bytes, got "
                               f"{type(model).__name__}")
    if variant is not None and not isinstance(variant, str):
        raise UnsupportedError(f"variant: expected a str (a variant's name in the bundle's manifest), got "
                               f"{type(variant).__name__} {variant!r:.40}")
