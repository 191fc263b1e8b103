"""onnxruntime session settings: the one map of optimisation levels, and the options a model is loaded with."""

from __future__ import annotations

import onnxruntime as ort

__all__ = ["OPT_LEVELS", "session_options"]

_EP_FAIL = getattr(getattr(ort.capi, "onnxruntime_pybind11_state", None), "EPFail", ())
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
        if threads is not None or optimization is not None:
            raise ValueError("session_options given: set threads and the optimisation level on it, not also as "
                             "threads= or optimization= (edge-rnn never changes the caller's SessionOptions)")
        return given
    optimization = "default" if optimization is None else optimization
    if optimization not in OPT_LEVELS:
        raise ValueError(f"optimization: expected one of {sorted(OPT_LEVELS)}, got {optimization!r}")
    so = ort.SessionOptions()
    so.graph_optimization_level = OPT_LEVELS[optimization]
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so
