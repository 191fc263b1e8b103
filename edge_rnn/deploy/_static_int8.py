"""Static int8 (QDQ, ``quantize_static``) of the static forms, for NPUs, which take no dynamic quantisation.

:func:`static_int8` quantises the static streaming form of a file with a contract, calibrated on a stream with
its states carried; :func:`static_int8_graph` the static form of a fixed-shape one-shot graph
(:func:`edge_rnn.deploy.static_graph`: reverse and bidirectional nodes included), calibrated on the feeds given.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_rnn.deploy._static import static_graph

__all__ = ["static_int8", "static_int8_graph"]

# Only the weight products are quantised: quantising every activation (sigmoid, tanh, the state updates) too
# took the demo GRU's error to 7.7e-2 and the LSTM's cell state to 0.14 over 2,000 steps; MatMul/Gemm alone,
# per channel, keeps them at 3.9e-2 and 1.7e-2, and NNAPI still runs the graph whole.
_QUANTIZED_OPS = ["MatMul", "Gemm"]


def static_int8(static_path: Path, dst: Path, calibration: Any = None, *, steps: int = 512, seed: int = 0,
                settings: Any = None) -> list[str]:
    """Static QDQ int8 of a static form (NPUs take no dynamic quantisation), calibrated on a stream.

    The calibration feeds are the static model's own inputs and carried states over ``steps`` calls of
    ``calibration`` (an array or sequences as ``data=`` takes them; random input without), so the state
    ranges are those a real stream reaches. Returns notes.
    """
    from edge_rnn.deploy._fidelity import input_source, piece
    from edge_rnn.runtime import StreamingModel

    model = StreamingModel.load(static_path)
    source = input_source(model, calibration, "calibration")
    k = next((p.shape[p.time_axis] for p in model.inputs if p.time_axis is not None), 1)
    rng = np.random.default_rng(seed)
    timed = any(p.time_axis is not None for p in model.inputs)
    whole = source(rng, 1, steps * k, not timed)
    stream = model.open_stream()
    feeds = []
    for c in range(steps):
        chunk = {p.name: piece(p, whole[p.name], c * k, k, timed) for p in model.inputs}
        state = {name: v[(slice(None),) * s.batch_axis + (None,)] for s in model.states
                 for name, v in [(s.input, stream.state[s.input])]}
        feeds.append({**{p.name: chunk[p.name][(slice(None),) * p.batch_axis + (None,)] for p in model.inputs},
                      **state})
        model.step(stream, chunk)

    settings = _quantized(static_path, dst, feeds, settings)
    return [f"static QDQ int8 (quantize_static) of the MatMul/Gemm weights, per channel, calibrated on {steps} calls "
            f"of {'random input' if calibration is None else 'the calibration data'} with the state carried; "
            f"{'7-bit weights (reduce_range: exact on every CPU)' if settings.reduce_range else '8-bit weights'}"]


def _quantized(src: Path, dst: Path, feeds: Iterable[dict[str, np.ndarray]], settings: Any) -> Any:
    """``quantize_static`` of ``src`` to ``dst``, calibrated on ``feeds``; returns the settings used."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edge_rnn.deploy._int8 import Int8Settings
    from edge_rnn.deploy._tools import quiet

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.it, None)

    settings = settings or Int8Settings()  # keep_float is refused for static-int8 by check_int8_settings
    # int8 weights, per channel, whatever the settings say for dynamic int8: what NNAPI takes and runs whole
    quiet(quantize_static, src, dst, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
          weight_type=QuantType.QInt8, per_channel=True, reduce_range=settings.reduce_range,
          op_types_to_quantize=_QUANTIZED_OPS)
    return settings


def static_int8_graph(model: onnx.ModelProto, calibration: Iterable[dict[str, np.ndarray]], *,
                      settings: Any = None) -> onnx.ModelProto:
    """Static QDQ int8 of the loop-free form of a fixed-shape one-shot graph (:func:`static_graph`), its MatMul
    weights per channel, calibrated on ``calibration``: feeds of the graph's inputs, as many as the ranges need."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "static.onnx", Path(tmp) / "int8.onnx"
        onnx.save(static_graph(model), src)
        _quantized(src, dst, calibration, settings)
        return onnx.load(str(dst))
