"""onnxruntime session settings: the one map of optimisation levels, and the options a model is loaded with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

from edge_rnn._numbers import is_int
from edge_rnn.errors import ModelFormatError, UnsupportedError

__all__ = ["OPT_LEVELS", "session_options", "new_session_options", "check_providers", "describe_session",
           "SessionConfig", "ForeignModel"]

# onnxruntime's execution-provider failure: the one error its own run answers by falling back to another provider
EP_FAIL = getattr(getattr(ort.capi, "onnxruntime_pybind11_state", None), "EPFail", ())
# The one map of onnxruntime's optimisation levels by name (the parity harness uses it too).
OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def session_options(given: ort.SessionOptions | None, threads: int | None,
                     optimization: str | None) -> ort.SessionOptions:
    """The caller's options untouched (onnxruntime's cannot be copied), or new ones with threads and level set."""
    if given is not None:
        if not isinstance(given, ort.SessionOptions):
            raise UnsupportedError(f"session_options: expected onnxruntime.SessionOptions, got {type(given).__name__}")
        if threads is not None or optimization is not None:
            raise UnsupportedError("session_options given: set threads and the optimisation level on it, not also "
                                   "as threads= or optimization= (edge-rnn never changes the caller's SessionOptions)")
        return given
    optimization = "default" if optimization is None else optimization
    if optimization not in OPT_LEVELS:
        raise UnsupportedError(f"optimization: expected one of {sorted(OPT_LEVELS)}, got {optimization!r}")
    if threads is not None and not is_int(threads, least=1):
        raise UnsupportedError(f"threads: expected an int >= 1 (or None: onnxruntime's default), got {threads!r}")
    return new_session_options(optimization, threads=threads)


def new_session_options(optimization: str = "default", *, threads: int | None = None,
                        save_to: str | None = None, ort_format: bool = False) -> ort.SessionOptions:
    """SessionOptions as edge-rnn makes them: an optimisation level by name, ``threads`` intra-op threads (and one
    inter-op thread) when given, onnxruntime's own logging off, and, with ``save_to``, the optimised graph saved
    there (in ORT format with ``ort_format``)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[optimization]
    # onnxruntime's own log lines (warnings, and errors that it also raises, which edge-rnn wraps and names) would go
    # to stderr, a server's log: only fatal ones are printed
    so.log_severity_level = 4
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if save_to is not None:
        so.optimized_model_filepath = save_to
        if ort_format:
            so.add_session_config_entry("session.save_model_format", "ORT")
    return so


def check_providers(providers: Any) -> list:
    """The execution providers to ask for, each one this onnxruntime has: an unknown name is refused, not left to
    onnxruntime's warning and silent fallback to the CPU."""
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, (str, bytes)) or not isinstance(providers, Sequence) or not providers:
        raise UnsupportedError(f"providers: expected a list of execution provider names, got {providers!r}")
    available = ort.get_available_providers()
    for p in providers:
        name = p[0] if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], Mapping) else p
        if not isinstance(name, str) or name not in available:
            raise UnsupportedError(f"providers: expected names among this onnxruntime's {available}, got {name!r} "
                                   "(a GPU or NPU provider needs its own onnxruntime package, e.g. onnxruntime-gpu)")
    return list(providers)


Shapes = dict[str, tuple[tuple, str]]


def describe_session(sess: ort.InferenceSession, source: str) -> tuple[Shapes, Shapes, dict[str, str]]:
    """The graph's inputs and outputs ``{name: (shape, type)}`` and its metadata, as onnxruntime reads them.

    onnxruntime decodes the names and the metadata as UTF-8 when Python asks
    for them, so a file with other bytes there fails only then.
    """
    try:
        ins = {i.name: (tuple(i.shape), i.type) for i in sess.get_inputs()}
        outs = {o.name: (tuple(o.shape), o.type) for o in sess.get_outputs()}
        metadata = dict(sess.get_modelmeta().custom_metadata_map)
    except UnicodeDecodeError as e:
        raise ModelFormatError(f"{source}: a name or a metadata entry is not valid UTF-8 ({e.reason} at byte "
                               f"{e.start})") from None
    return ins, outs, metadata


@dataclass(frozen=True)
class SessionConfig:
    """How onnxruntime runs the model: providers, threads, optimisation level, or your own SessionOptions.

    ``session_options`` is used as given and never changed (onnxruntime's
    cannot be copied): set threads and the level on it, not here as well.
    """

    providers: Sequence[str | tuple[str, dict]] | None = None
    threads: int | None = None
    optimization: str | None = None
    session_options: Any = None


@dataclass(frozen=True)
class ForeignModel:
    """How to read a stateful model edge-rnn did not write (no ``edge_rnn`` contract in its metadata).

    ``state_map`` maps each state input to the output that feeds it (common
    pairs are found without it); ``batch_axis``/``time_axis`` locate the data
    inputs' and outputs' axes (``time_axis`` None: one step per call);
    ``state_batch_axis`` the states' batch axis where it is not the one dynamic
    dimension; ``constants`` are fed on every call, e.g. ``{"sr": np.array(16000)}``.
    """

    state_map: Mapping[str, str] | None = None
    batch_axis: int = 0
    time_axis: int | None = None
    state_batch_axis: int | None = None
    constants: Mapping[str, Any] | None = None
