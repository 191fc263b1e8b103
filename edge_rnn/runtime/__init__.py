"""The streaming runtime: onnxruntime + numpy only, never torch.

A :class:`StreamingModel` is loaded once and shared; each :class:`Stream`
owns one sequence's recurrent state. ``model.step(stream, chunk)`` feeds one
chunk and advances the state; ``model.step_batch([...])`` does many streams in
one onnxruntime call. The states a model has come from its ``edge_rnn``
contract (:mod:`edge_rnn.contract`), or, for other stateful ONNX models, from a
``state_map``.
"""

from edge_rnn.runtime._model import StreamingModel
from edge_rnn.runtime._ports import Port, detect_state_pairs
from edge_rnn.runtime._stream import Stream

__all__ = ["StreamingModel", "Stream", "Port", "detect_state_pairs"]
