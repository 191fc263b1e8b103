"""The static form, for NPU providers: loop-free, fixed shapes, a fixed chunk per call; and its int8 form.

Needs onnx (the deploy extra); the last test also torch, to export a model of its own.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from conftest import REPO  # noqa: E402

from edge_rnn.contract import METADATA_KEY  # noqa: E402
from edge_rnn.deploy import make_variant, measure_against  # noqa: E402
from edge_rnn.errors import ModelFormatError, ShapeError, UnsupportedError  # noqa: E402
from edge_rnn.harness import TOLERANCE  # noqa: E402
from edge_rnn.runtime import StreamingModel  # noqa: E402

DATA = REPO / "tests" / "data"
EXPECTED = dict(np.load(DATA / "expected.npz"))


@pytest.mark.parametrize("fixture,chunk", [("lstm_layer", 1), ("lstm_layer", 3), ("token_gru", 1), ("vad_state", 1),
                                           ("gru_cell", 1)])
def test_the_static_form_is_loop_free_fixed_and_computes_the_same(tmp_path, fixture, chunk):
    from edge_rnn.deploy import static_form

    static = static_form(onnx.load(str(DATA / f"{fixture}.onnx")), chunk)
    used = {n.op_type for n in static.graph.node}
    assert not used & {"LSTM", "GRU", "RNN", "Scan", "Loop", "Squeeze", "Unsqueeze"}, used
    for vi in (*static.graph.input, *static.graph.output):
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi
    onnx.save(static, tmp_path / "s.onnx")
    err = measure_against(tmp_path / "s.onnx", DATA / f"{fixture}.onnx", steps=2_001)  # 2,001: whole chunks only
    assert err.ok and err.max_abs < 1e-5 and err.tolerance == TOLERANCE["float32"], err.table()
    m = StreamingModel.load(tmp_path / "s.onnx")
    assert "fixed_chunk" in m.session.get_modelmeta().custom_metadata_map["edge_rnn"] or chunk == 1
    if chunk > 1:
        with pytest.raises(ShapeError, match=rf"expected exactly {chunk} time step\(s\) per call \(this model has a "
                                             r"fixed chunk, a static form for NPUs\), got 2"):
            m.step(m.open_stream(), np.zeros((2, 4), np.float32))


def test_the_static_form_runs_whole_on_npu_providers_and_static_int8_is_reported_honestly(tmp_path):
    from edge_rnn.deploy import mobile_support

    dynamic = {s.provider: s for s in mobile_support(DATA / "lstm_layer.onnx")}
    assert not any(s.whole for s in dynamic.values()) and "ai.onnx:LSTM" in dynamic["NNAPI"].unsupported_ops
    v = make_variant("static", DATA / "lstm_layer.onnx", tmp_path / "s.onnx")
    assert all(s.whole for s in mobile_support(v.path))  # NNAPI, CoreML NeuralNetwork and MLProgram
    v8 = make_variant("static-int8", DATA / "lstm_layer.onnx", tmp_path / "s8.onnx")  # calibrated on random input
    support = {s.provider: s for s in mobile_support(v8.path)}
    assert support["NNAPI"].whole  # CoreML refuses QuantizeLinear/DequantizeLinear: reported, not hidden
    assert "ai.onnx:QuantizeLinear" in support["CoreML-MLProgram"].unsupported_ops
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(v8.operators)
    err = measure_against(v8.path, DATA / "lstm_layer.onnx", steps=2_000)
    assert err.ok and err.tolerance == TOLERANCE["int8"], err.table()
    # calibrated on 23 frames unlike the stream it is checked on, the state ranges are clipped: caught, not shipped
    narrow = make_variant("static-int8", DATA / "lstm_layer.onnx", tmp_path / "n8.onnx",
                          calibration=EXPECTED["lstm_layer.x"] * 0.1)
    assert not measure_against(narrow.path, DATA / "lstm_layer.onnx", steps=2_000).ok


def test_a_contract_whose_fixed_chunk_the_graph_does_not_have_is_refused(tmp_path):
    from edge_rnn.deploy import static_form

    static = static_form(onnx.load(str(DATA / "lstm_layer.onnx")), 2)
    meta = next(p for p in static.metadata_props if p.key == METADATA_KEY)
    meta.value = meta.value.replace('"fixed_chunk": 2', '"fixed_chunk": 5')
    onnx.save(static, tmp_path / "s.onnx")
    with pytest.raises(ModelFormatError, match="fixed_chunk 5, but 'x' has 2 steps along its time axis"):
        StreamingModel.load(tmp_path / "s.onnx")
    with pytest.raises(UnsupportedError, match="no static streaming form"):
        from edge_rnn.contract import Contract as C

        base = onnx.load(str(DATA / "lstm_layer.onnx"))
        c = C.from_metadata({p.key: p.value for p in base.metadata_props})
        onnx.helper.set_model_props(base, dataclasses_replace(c, streamable=False).to_metadata())
        static_form(base)


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_review_static_forms_of_a_last_step_head_and_a_fixed_chunk_bundle(tmp_path):
    torch = pytest.importorskip("torch")
    import edge_rnn
    from edge_rnn.deploy import package

    class LastStep(torch.nn.Module):  # sigmoid(y[..., -1]): a Gather of index -1
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 6, batch_first=True)

        def forward(self, x):
            return torch.sigmoid(self.gru(x)[0][..., -1])

    torch.manual_seed(0)
    edge_rnn.export(LastStep().eval(), tmp_path / "neg.onnx", example_input=torch.randn(1, 5, 4), long_steps=0)
    v = make_variant("static", tmp_path / "neg.onnx", tmp_path / "neg.s.onnx")  # was: Slice(-1, 0), empty
    assert measure_against(v.path, tmp_path / "neg.onnx", steps=2_000).ok
    result = package(DATA / "lstm_layer.onnx", tmp_path / "b4", variants=("fp32", "static"), steps=2_000, chunk=4)
    assert result.manifest.variants["static"].speed.steps_per_call == 4  # was: "expected exactly 4 steps"
