"""The command line's options for models edge-rnn did not write: state pairs, axes, constants, NaN and Inf.

Runs without torch, on the committed fixtures and small graphs written here.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

DATA = REPO / "tests" / "data"
LAYER = DATA / "lstm_layer.onnx"


def _cli(*args):
    from click.testing import CliRunner

    from edge_rnn.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result, contains: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and contains in result.output, result.output


def test_cli_run_and_bench_take_the_options_a_foreign_model_needs(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    fixed, out = DATA / "tiny_fixed.onnx", tmp_path / "o.npz"  # h' = tanh(x + h), batch fixed at 1
    # was: the message told the user to pass state_batch_axis=, which the CLI had no option for
    _one_line(_cli("run", fixed, "--input", tmp_path / "x.npy", "-o", out), "(--state-batch-axis on the command line)")
    assert _cli("run", fixed, "--input", tmp_path / "x.npy", "-o", out, "--state-batch-axis", "0").exit_code == 0
    h, want = np.zeros(3, np.float32), []
    for row in x:
        h = np.tanh(row + h)
        want.append(h)
    np.testing.assert_allclose(np.load(out)["y"], np.stack(want), atol=1e-6)
    r = _cli("run", DATA / "tiny_dynamic.onnx", "--input", tmp_path / "x.npy", "-o", out, "--state-map", "h0=hn")
    assert r.exit_code == 0, r.output
    r = _cli("bench", fixed, "--state-batch-axis", "0", "--streams", "1,2", "--chunk", "1", "--seconds", "0.01")
    assert r.exit_code == 0 and "speedup" in r.output, r.output


def test_cli_allow_nonfinite_and_the_refusals_of_misused_options(tmp_path):
    x = np.zeros((2, 3), np.float32)
    x[1, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    model, out = DATA / "tiny_dynamic.onnx", tmp_path / "o.npz"
    _one_line(_cli("run", model, "--input", tmp_path / "x.npy", "-o", out), "--allow-nonfinite on the command line")
    assert _cli("run", model, "--input", tmp_path / "x.npy", "-o", out, "--allow-nonfinite").exit_code == 0
    assert np.isnan(np.load(out)["y"][1, 1])
    # an edge-rnn model's contract gives its axes: an axis option would be ignored or override it, so it is refused
    _one_line(_cli("run", LAYER, "--input", tmp_path / "x.npy", "-o", out, "--time-axis", "0"),
              "time_axis: the model's edge_rnn contract already says its states and axes")
    _one_line(_cli("run", model, "--input", tmp_path / "x.npy", "-o", out, "--state-map", "h0"),
              "expected INPUT=OUTPUT, got 'h0'", code=2)
    _one_line(_cli("run", model, "--input", tmp_path / "x.npy", "-o", out, "--constant", "g=[1,"),
              "g: expected a JSON number or list", code=2)


def test_cli_constant_feeds_an_input_on_every_call(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "gain"], ["g"]), helper.make_node("Add", ["g", "h0"], ["s"]),
         helper.make_node("Tanh", ["s"], ["hn"]), helper.make_node("Identity", ["hn"], ["y"])],
        "gain", [helper.make_tensor_value_info("x", f, ["b", 3]), helper.make_tensor_value_info("h0", f, ["b", 3]),
                 helper.make_tensor_value_info("gain", f, [])],
        [helper.make_tensor_value_info("y", f, ["b", 3]), helper.make_tensor_value_info("hn", f, ["b", 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / "gain.onnx")
    x = np.full((2, 3), 0.25, np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "o.npz"
    _one_line(_cli("run", tmp_path / "gain.onnx", "--input", tmp_path / "x.npy", "-o", out),
              "pass constants={'gain': value} (--constant gain=VALUE on the command line)")
    r = _cli("run", tmp_path / "gain.onnx", "--input", tmp_path / "x.npy", "-o", out, "--constant", "gain=2")
    assert r.exit_code == 0, r.output
    first = np.tanh(0.5)
    np.testing.assert_allclose(np.load(out)["y"], [[first] * 3, [np.tanh(0.5 + first)] * 3], atol=1e-6)
