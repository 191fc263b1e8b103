"""The streaming runtime: onnxruntime + numpy only, never torch.

A :class:`StreamingModel` is loaded once and shared; each :class:`Stream`
owns one sequence's recurrent state. ``model.step(stream, chunk)`` feeds one
chunk and advances the state; ``model.step_batch([...])`` does many streams in
one onnxruntime call. The states a model has come from its ``edge_rnn``
contract (:mod:`edge_rnn.contract`, ``model.contract``), or, for other stateful
ONNX models, from a :class:`ForeignModel` (its ``state_map``, axes, constants);
how onnxruntime runs it from a :class:`SessionConfig`. :func:`run_sequence`
streams a whole array; :func:`bench` measures a model against one plain
``session.run`` per stream.
"""

from edge_rnn.runtime._external import check_external_data
from edge_rnn.runtime._model import OPT_LEVELS, StreamingModel
from edge_rnn.runtime._ports import Port, check_contract_fits, detect_state_pairs
from edge_rnn.runtime._sequence import run_sequence
from edge_rnn.runtime._session import ForeignModel, SessionConfig, describe_session
from edge_rnn.runtime._stream import Stream
from edge_rnn.runtime.bench import BenchRow, bench

__all__ = [
    "StreamingModel",
    "SessionConfig",
    "ForeignModel",
    "OPT_LEVELS",
    "Stream",
    "Port",
    "detect_state_pairs",
    "check_contract_fits",
    "check_external_data",
    "describe_session",
    "run_sequence",
    "bench",
    "BenchRow",
]
