"""Native and decomposed export over the whole option space, checked by verify()."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed
pytest.importorskip("onnx")

import itertools
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
from conftest import ARCHS

import edge_rnn
from edge_rnn import reference
from edge_rnn.contract import Contract
from edge_rnn.errors import ParityError, ShapeError, UnsupportedError
from edge_rnn.exporters import build_model, from_onnx_gate_order, to_onnx_gate_order

IN, H = 5, 7
TORCH_LAYERS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
TORCH_CELLS = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}
FORMS = ["native", "decomposed"]


def make_layer(arch_name: str, num_layers: int, bidirectional: bool, batch_first: bool, bias: bool, seed: int = 0):
    arch, kw = ARCHS[arch_name]
    torch.manual_seed(seed)
    return TORCH_LAYERS[arch](IN, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                              bias=bias, **kw).eval()


def all_ops(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    out = []
    for n in graph.node:
        out.append(n)
        for a in n.attribute:
            if a.HasField("g"):
                out += all_ops(a.g)
    return out


LAYER_GRID = list(itertools.product(ARCHS, [1, 2], [False, True], [False, True], [True, False], FORMS))


@pytest.mark.parametrize("arch,num_layers,bidirectional,batch_first,bias,form", LAYER_GRID,
                         ids=["-".join(map(str, p)) for p in LAYER_GRID])
def test_layer_parity(tmp_path, arch, num_layers, bidirectional, batch_first, bias, form):
    module = make_layer(arch, num_layers, bidirectional, batch_first, bias)
    example = torch.zeros((2, 16, IN) if batch_first else (16, 2, IN))
    report = edge_rnn.export(module, tmp_path / "m.onnx", example_input=example, decomposed=form == "decomposed",
                             long_steps=10_000)
    parity = report.parity
    assert parity.ok and parity.max_abs_error <= 1e-5
    cases = {r.case.split()[0] for r in parity.rows}
    assert {r.opt_level for r in parity.rows} == {"disabled", "default"}
    tensors = {r.tensor for r in parity.rows}
    assert tensors == ({"y", "hn", "cn"} if arch.startswith("lstm") else {"y", "hn"})
    if bidirectional:  # the reverse direction needs the future: only whole sequences
        assert cases == {"full"} and not report.contract.streamable and parity.notes
    else:
        assert cases == {"full", "chunked", "long"} and report.contract.streamable

    model = onnx.load(tmp_path / "m.onnx")
    ops = [n.op_type for n in all_ops(model.graph)]
    recurrent = [op for op in ops if op in ("RNN", "LSTM", "GRU")]
    if form == "decomposed" or arch == "lstm_proj":
        assert recurrent == [] and "Scan" in ops
    else:
        assert recurrent == [ARCHS[arch][0].upper()] * num_layers
    for n in all_ops(model.graph):  # onnxruntime's CPU kernels refuse layout=1
        assert all(not (a.name == "layout" and a.i != 0) for a in n.attribute)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("form", FORMS)
def test_long_stream_10k_steps_without_drift(tmp_path, arch, form):
    module = make_layer(arch, 2, False, False, True, seed=3)
    report = edge_rnn.export(module, tmp_path / "m.onnx", decomposed=form == "decomposed", long_steps=10_000)
    long_rows = [r for r in report.parity.rows if r.case == "long T=10000"]
    assert len(long_rows) == 2 * len(report.contract.states) + 2  # y + states, two opt levels
    assert max(r.max_abs for r in long_rows) <= 1e-5


CELL_GRID = [(a, b, f) for a in ["rnn_tanh", "rnn_relu", "lstm", "gru"] for b in (True, False) for f in FORMS]


@pytest.mark.parametrize("arch,bias,form", CELL_GRID, ids=["-".join(map(str, p)) for p in CELL_GRID])
def test_cell_parity(tmp_path, arch, bias, form):
    kind, kw = ARCHS[arch]
    torch.manual_seed(1)
    cell = TORCH_CELLS[kind](IN, H, bias=bias, **kw).eval()
    report = edge_rnn.export(cell, tmp_path / "c.onnx", decomposed=form == "decomposed", long_steps=1_000)
    assert report.parity.ok and report.parity.max_abs_error <= 1e-5
    c = report.contract
    assert not c.is_streaming and c.inputs[0].time_axis is None and c.states[0].shape == (None, H)
    ops = [n.op_type for n in all_ops(onnx.load(tmp_path / "c.onnx").graph)]
    assert (kind.upper() in ops) == (form == "native")


REF_CASES = [
    ("LSTM", dict(num_layers=2, proj_size=3, batch_first=True)),
    ("GRU", dict(num_layers=2, bidirectional=True)),
    ("RNN", dict(nonlinearity="relu", bias=False)),
    ("LSTMCell", {}),
    ("GRUCell", {}),
    ("RNNCell", dict(nonlinearity="relu")),
]


@pytest.mark.parametrize("name,kw", REF_CASES, ids=[c[0] for c in REF_CASES])
@pytest.mark.parametrize("form", FORMS)
def test_reference_modules_export(tmp_path, name, kw, form):
    torch.manual_seed(2)
    module = getattr(reference, name)(IN, H, **kw).eval()
    report = edge_rnn.export(module, tmp_path / "r.onnx", decomposed=form == "decomposed", long_steps=500)
    assert report.parity.ok
    assert report.contract.source["module"] == f"edge_rnn.reference.{name}"


def test_gate_reorder_is_the_documented_permutation():
    lstm = np.arange(8).reshape(4, 2)  # blocks i f g o
    assert to_onnx_gate_order("lstm", lstm)[:, 0].tolist() == [0, 6, 2, 4]  # i o f g
    assert to_onnx_gate_order("gru", np.arange(3)).tolist() == [1, 0, 2]  # r z n -> z r n
    assert to_onnx_gate_order("rnn", np.arange(3)).tolist() == [0, 1, 2]
    w = np.random.default_rng(0).standard_normal((12, 5))
    for kind in ("lstm", "rnn"):
        np.testing.assert_array_equal(from_onnx_gate_order(kind, to_onnx_gate_order(kind, w)), w)
    with pytest.raises(ValueError, match="divisible by 4"):
        to_onnx_gate_order("lstm", np.zeros(6))
    from edge_rnn.gates import gate_blocks, join_gates

    blocks = gate_blocks("gru", np.arange(6))  # r z n
    assert {k: v.tolist() for k, v in blocks.items()} == {"r": [0, 1], "z": [2, 3], "n": [4, 5]}
    np.testing.assert_array_equal(join_gates("lstm", gate_blocks("lstm", w)), w)


def test_zero_state_is_torchs_default_and_axes_are_dynamic(tmp_path):
    module = make_layer("lstm", 2, False, True, True)
    edge_rnn.export(module, tmp_path / "m.onnx", verify_parity=False)
    model = onnx.load(tmp_path / "m.onnx")
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input}
    assert dims == {"x": ["batch", "time", IN], "h0": [2, "batch", H], "c0": [2, "batch", H]}
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((4, 9, IN)).astype(np.float32)
    y, hn, cn = sess.run(None, {"x": x, "h0": np.zeros((2, 4, H), np.float32), "c0": np.zeros((2, 4, H), np.float32)})
    with torch.no_grad():
        ty, (th, tc) = module(torch.from_numpy(x))
    np.testing.assert_allclose(y, ty.numpy(), atol=1e-6)
    np.testing.assert_allclose(cn, tc.numpy(), atol=1e-6)


def test_contract_in_metadata_matches_the_graph(tmp_path):
    module = make_layer("lstm_proj", 3, True, False, True)
    edge_rnn.export(module, tmp_path / "m.onnx", verify_parity=False)
    model = onnx.load(tmp_path / "m.onnx")
    c = Contract.from_metadata({p.key: p.value for p in model.metadata_props})
    assert c.to_dict()["states"] == [
        {"input": "h0", "output": "hn", "shape": [6, None, 3], "batch_axis": 1, "dtype": "float32"},
        {"input": "c0", "output": "cn", "shape": [6, None, H], "batch_axis": 1, "dtype": "float32"},
    ]
    assert c.source["proj_size"] == 3 and c.source["kind"] == "lstm"
    assert [i.name for i in model.graph.input] == ["x", "h0", "c0"]
    assert [o.name for o in model.graph.output] == ["y", "hn", "cn"]
    onnx.checker.check_model(model, full_check=True)


def test_parity_failures_are_collected_and_raised_once(tmp_path):
    module = make_layer("lstm", 1, False, False, True)
    path = tmp_path / "m.onnx"
    edge_rnn.export(module, path, verify_parity=False)
    model = onnx.load(path)
    w = next(i for i in model.graph.initializer if i.name.startswith("R_"))
    arr = onnx.numpy_helper.to_array(w).copy()
    arr *= 1.5
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(model, path)
    with pytest.raises(ParityError) as err:
        edge_rnn.verify(module, path, long_steps=200)
    failed = {(case.split()[0], tensor) for case, tensor, _, _ in err.value.failures}
    assert {("full", "y"), ("full", "hn"), ("full", "cn"), ("chunked", "y"), ("long", "cn")} <= failed
    assert str(err.value).count("\n") == len(err.value.failures)
    report = edge_rnn.verify(module, path, long_steps=0, raise_on_failure=False)
    assert not report.ok and "FAIL" in report.table()


def test_training_mode_warns_and_exports_eval_behaviour(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.LSTM(IN, H, num_layers=2, dropout=0.5)  # training mode, dropout active
    with pytest.warns(UserWarning, match="training mode"):
        report = edge_rnn.export(module, tmp_path / "m.onnx", long_steps=100)
    assert report.parity.ok and module.training  # the caller's module is left as it was


@pytest.mark.parametrize("module,example,match", [
    (torch.nn.Linear(3, 4), None, "Linear is not a bare RNN/LSTM/GRU layer or cell: .* needs example_input"),
    (torch.nn.Conv1d(3, 4, 3), torch.zeros(1, 3, 5), "found no recurrent layer, cell or ContextBuffer"),
])
def test_unsupported_modules_raise(tmp_path, module, example, match):
    with pytest.raises(UnsupportedError, match=match):
        edge_rnn.export(module, tmp_path / "m.onnx", example_input=example)


def test_example_input_of_the_wrong_size_raises(tmp_path):
    with pytest.raises(ShapeError, match=r"example_input: expected shape \(time, batch, 5\), got \(4, 2, 6\)"):
        edge_rnn.export(make_layer("gru", 1, False, False, True), tmp_path / "m.onnx",
                        example_input=torch.zeros(4, 2, 6))


def test_build_model_never_calls_torch_onnx(monkeypatch):
    """The graph of a bare layer is built from its weights: torch.onnx is never called."""

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.onnx.export was called")

    monkeypatch.setattr(torch.onnx, "export", forbidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, spec = build_model(torch.nn.LSTM(80, 256, num_layers=2).eval())
    assert spec.hidden_size == 256
    assert sum(1 for n in model.graph.node if n.op_type == "LSTM") == 2


def test_an_export_that_fails_parity_writes_nothing_and_keeps_an_earlier_file(tmp_path):
    """A failed export leaves nothing at its path (a file there would look like a good export); an earlier file
    there is kept."""
    import faults as F

    torch.manual_seed(0)
    gru = torch.nn.GRU(IN, H).eval()
    path = tmp_path / "g.onnx"
    path.write_bytes(b"an earlier export")
    with pytest.raises(ParityError, match=r"g\.onnx \(not written\)"):
        _export_then_check_against(gru, F.bias_off(gru), path)
    assert path.read_bytes() == b"an earlier export" and not list(tmp_path.glob(".*partial"))
    report = edge_rnn.export(gru, path, long_steps=100)  # a passing export replaces it
    assert report.parity.ok and path.read_bytes() != b"an earlier export"


def test_a_failed_export_is_kept_aside_only_when_asked_and_the_report_says_so(tmp_path):
    """With raise_on_failure=False (what the CLI uses) a failed export is not written either; keep_failed keeps it
    under another name, and the report says where."""
    import faults as F

    torch.manual_seed(0)
    gru = torch.nn.GRU(IN, H).eval()
    path = tmp_path / "g.onnx"
    report = _export_then_check_against(gru, F.bias_off(gru), path, raise_on_failure=False)
    assert not report.parity.ok and not report.written and report.kept_at is None and not path.exists()
    report = _export_then_check_against(gru, F.bias_off(gru), path, raise_on_failure=False, keep_failed=True)
    assert report.kept_at == tmp_path / "g.failed.onnx" and report.kept_at.is_file() and not path.exists()
    with pytest.raises(ParityError, match=r"g\.onnx \(not written; kept at .*g\.failed\.onnx for inspection\)"):
        _export_then_check_against(gru, F.bias_off(gru), path, keep_failed=True)


def _export_then_check_against(reference, exported, path, **kw):
    """Export ``exported`` but judge it against ``reference``: a wrong export, as a real bug would write."""
    from unittest import mock

    from edge_rnn.exporters import _export

    real = _export.check_layer
    with mock.patch.object(_export, "check_layer", lambda module, *a, **k: real(reference, *a, **k)):
        return edge_rnn.export(exported, path, long_steps=100, **kw)
