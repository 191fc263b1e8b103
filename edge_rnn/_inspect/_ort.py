"""inspect's summary of an ORT-format file (mobile builds): read through onnxruntime and its flatbuffer schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_rnn._inspect._table import _contract_lines, _operator_line, _Value, _value_lines
from edge_rnn.contract import Contract
from edge_rnn.errors import ModelFormatError, described
from edge_rnn.runtime._external import ort_operator_counts
from edge_rnn.runtime._session import describe_session

__all__ = ["describe_ort"]


def describe_ort(path: Path) -> str:
    """The same summary for an ORT-format file (mobile builds): read through onnxruntime and its flatbuffer
    schema, since onnx cannot parse it."""
    import onnxruntime as ort
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    data = path.read_bytes()
    try:
        sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        model = fbs.InferenceSession.InferenceSession.GetRootAs(data, 0).Model()
        graph = model.Graph()
    except Exception as e:  # noqa: BLE001 - onnxruntime's Fail, or a flatbuffer that does not parse
        raise ModelFormatError(f"{path}: expected an ORT-format model, could not read it ({described(e)})") from None
    ins, outs, metadata = describe_session(sess, str(path))  # refused in one line where they are not UTF-8
    params = 0
    for i in range(graph.InitializersLength()):
        t = graph.Initializers(i)
        params += int(np.prod([t.Dims(k) for k in range(t.DimsLength())], dtype=np.int64))
    contract = Contract.from_metadata(metadata)
    onnx_opset = next((model.OpsetImport(i).Version() for i in range(model.OpsetImportLength())
                       if model.OpsetImport(i).Domain() in (b"", b"ai.onnx")), "?")
    producer = (model.ProducerName() or b"").decode("utf-8", "replace") or "?"
    values_in = [_ort_value(n, *v) for n, v in ins.items()]
    values_out = [_ort_value(n, *v) for n, v in outs.items()]
    lines = [
        f"model:     ORT format (producer {producer}, IR {model.IrVersion()})",
        f"opset:     ai.onnx {onnx_opset}",
        f"size:      {len(data) / 1024:.1f} KiB, {params:,} parameters",
        *_value_lines(values_in, values_out),
    ]
    return "\n".join(lines + _contract_lines(contract, values_in, values_out)
                     + [_operator_line(ort_operator_counts(data))])


def _ort_value(name: str, shape: tuple, ort_type: str) -> _Value:
    """An input or output as onnxruntime reads it, as :func:`_value_info` reads a graph's."""
    dims = tuple(str(d) if isinstance(d, int) else str(d or "?") for d in shape)
    return _Value(name, ort_type.removeprefix("tensor(").rstrip(")"), dims)
