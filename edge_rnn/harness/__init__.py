"""The parity harness: stream an ONNX model over given inputs, judge it against references. numpy + onnxruntime only.

This is the torch-free half of parity: it runs a model as a stream (whole
sequences, random chunks, long streams, states carried), compares each output
and state with reference arrays, and holds the one per-dtype tolerance table
(:data:`TOLERANCE`) and the verdict that uses it. The PyTorch references
(fp32 and float64) live in ``edge_rnn/exporters/_references.py``; a deployment
check can pass another ONNX model's session as the reference instead.

Example (a candidate against another model, no torch)::

    >>> from edge_rnn.harness import Cases, compare_streaming, read_contract, random_inputs, random_states
    >>> from edge_rnn.harness import InputLayout, open_sessions, session_runner
    >>> c = read_contract("lstm.onnx")                                            # doctest: +SKIP
    >>> ref = session_runner(open_sessions("lstm.onnx", ("disabled",))["disabled"])  # doctest: +SKIP
    >>> x = InputLayout("x", (1, 1, 80), batch_axis=1, time_axis=0)               # doctest: +SKIP
    >>> report = compare_streaming("lstm_variant.onnx", c, ref, random_inputs([x]), random_states(c),
    ...                            reference_label="fp32 ONNX")                   # doctest: +SKIP
"""

from edge_rnn.harness._data import (
    InputLayout,
    InputSource,
    bool_for_float,
    check_data,
    data_inputs,
    load_data,
    random_inputs,
    random_states,
    read_npy,
)
from edge_rnn.harness._stream import (
    OPT_LEVELS,
    Cases,
    chunk_sizes,
    compare_streaming,
    open_sessions,
    read_contract,
    run_case,
    session_runner,
    stream_calls,
    stream_chunks,
)
from edge_rnn.harness._verdict import TOLERANCE, ParityReport, ParityRow, Tolerance, judge, raise_failures

__all__ = [
    "TOLERANCE",
    "Tolerance",
    "ParityRow",
    "ParityReport",
    "judge",
    "raise_failures",
    "OPT_LEVELS",
    "Cases",
    "compare_streaming",
    "open_sessions",
    "session_runner",
    "read_contract",
    "chunk_sizes",
    "stream_chunks",
    "stream_calls",
    "run_case",
    "InputLayout",
    "InputSource",
    "bool_for_float",
    "check_data",
    "load_data",
    "read_npy",
    "random_inputs",
    "data_inputs",
    "random_states",
]
