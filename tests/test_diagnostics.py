"""Diagnostics without torch: the empirical memory curve of an ONNX file, the summary, the figure, the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO

from edge_rnn.cli import main
from edge_rnn.diagnostics import Diagnosis, MemoryCurve, diagnose_onnx, memory_curve, summary
from edge_rnn.diagnostics._memory import perturbations, start_points
from edge_rnn.errors import ShapeError
from edge_rnn.runtime import ForeignModel, StreamingModel

DATA = REPO / "tests" / "data"
LSTM = DATA / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6)


def _x(steps=120, width=4, seed=0):
    return np.random.default_rng(seed).standard_normal((steps, width)).astype(np.float32)


def test_the_curve_equals_perturbed_sequences_streamed_from_zero_one_by_one():
    """The snapshots and the batched windows change nothing: each start, streamed alone from the zero state."""
    x = _x()
    curve = memory_curve(LSTM, x, max_lag=20, starts=5, seed=3)
    model = StreamingModel.load(LSTM)
    base = model.step(model.open_stream(), x)["y"].astype(np.float64)
    t0s = start_points(len(x), 20, 5)
    diffs = []
    for t0, value in zip(t0s, perturbations(x, t0s, 0.5, 3)):
        xp = x[: t0 + 21].copy()
        xp[t0] = value
        y = model.step(model.open_stream(), xp)["y"].astype(np.float64)
        diffs.append(np.linalg.norm(y[t0:] - base[t0 : t0 + 21], axis=1))
    assert curve.starts == len(t0s) == 5 and curve.lags.tolist() == list(range(21))
    np.testing.assert_allclose(curve.response, np.mean(diffs, axis=0), rtol=1e-5, atol=1e-7)
    assert curve.response[0] > 0 and curve.label == "lstm_layer.onnx"
    again = memory_curve(LSTM, x, max_lag=20, starts=5, seed=3)
    np.testing.assert_array_equal(again.response, curve.response)  # a seed fixes the perturbations


def test_a_linear_recurrence_has_the_memory_its_coefficient_says(tmp_path):
    """h' = a h + x, y = h: one perturbed step moves y by a**k |delta| k steps later, so the relative curve is
    a**k and the 1/e horizon is the first k with a**k < 1/e."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    a = 0.8
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [helper.make_node("Mul", ["h_in", "a"], ["ah"]), helper.make_node("Add", ["ah", "x_t"], ["h_out"]),
         helper.make_node("Identity", ["h_out"], ["y_t"])], "step",
        [helper.make_tensor_value_info("h_in", f, ["b", 3]), helper.make_tensor_value_info("x_t", f, ["b", 3])],
        [helper.make_tensor_value_info("h_out", f, ["b", 3]), helper.make_tensor_value_info("y_t", f, ["b", 3])],
        [numpy_helper.from_array(np.float32(a), "a")])
    g = helper.make_graph(
        [helper.make_node("Scan", ["h0", "x"], ["hn", "y"], body=body, num_scan_inputs=1)], "linear",
        [helper.make_tensor_value_info("x", f, ["t", "b", 3]), helper.make_tensor_value_info("h0", f, ["b", 3])],
        [helper.make_tensor_value_info("y", f, ["t", "b", 3]), helper.make_tensor_value_info("hn", f, ["b", 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "linear.onnx")
    model = StreamingModel.load(tmp_path / "linear.onnx",
                                foreign=ForeignModel(batch_axis=1, time_axis=0, state_batch_axis=0))
    curve = memory_curve(model, _x(200, 3), max_lag=30, starts=6)
    np.testing.assert_allclose(curve.relative(), a ** np.arange(31), rtol=1e-4)
    np.testing.assert_allclose(curve.response[0], curve.scale, rtol=1e-5)  # lag 0: the perturbation itself
    assert curve.horizon() == 5 == min(k for k in range(1, 30) if a**k < math.exp(-1))


def test_token_ids_are_replaced_by_other_ids_within_the_contracts_range():
    model = StreamingModel.load(DATA / "token_gru.onnx")
    low, high = model.inputs[0].values
    x = np.random.default_rng(0).integers(low, high + 1, size=80).astype(model.inputs[0].dtype)
    t0s = start_points(len(x), 10, 6)
    for t0, value in zip(t0s, perturbations(x, t0s, 0.5, 0, (low, high))):
        assert value != x[t0] and low <= value <= high
    curve = memory_curve(model, x, max_lag=10, starts=6)
    assert curve.response[0] > 0 and len(curve.response) == 11


def test_bad_requests_say_what_was_expected():
    with pytest.raises(ShapeError, match="more than max_lag=50 steps, got 30"):
        memory_curve(LSTM, _x(30), max_lag=50)
    with pytest.raises(ShapeError, match="max_lag >= 1"):
        memory_curve(LSTM, _x(), max_lag=0)


def test_the_summary_of_an_onnx_file_and_its_comparison():
    d = diagnose_onnx(LSTM, _x(), max_lag=20, starts=4, compare=[LSTM])
    text = "\n".join(summary(d))
    assert len(d.memory) == 2 and "memory curve, lstm_layer.onnx: 1/e after" in text and "need the PyTorch" in text
    np.testing.assert_array_equal(d.memory[0].response, d.memory[1].response)


def test_the_cli_diagnoses_an_onnx_file_and_writes_the_figure(tmp_path):
    np.save(tmp_path / "x.npy", _x())
    args = ["diagnose", str(LSTM), "--input", str(tmp_path / "x.npy"), "--max-lag", "20", "--compare", str(LSTM)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert r.output.count("memory curve, lstm_layer.onnx: 1/e after") == 2
    pytest.importorskip("matplotlib")
    r = CliRunner().invoke(main, [*args, "--plot", str(tmp_path / "fig.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_plot_without_matplotlib_is_an_error_that_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    np.save(tmp_path / "x.npy", _x())
    r = CliRunner().invoke(main, ["diagnose", str(LSTM), "--input", str(tmp_path / "x.npy"), "--plot",
                                  str(tmp_path / "fig.png")])
    assert r.exit_code == 1 and "pip install 'edge-rnn[diag]'" in r.output
    assert not (tmp_path / "fig.png").exists()


def test_the_cli_refuses_a_pickled_or_odd_input(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = CliRunner().invoke(main, ["diagnose", str(LSTM), "--input", str(tmp_path / "obj.npy")])
    assert r.exit_code == 1 and "plain .npy" in r.output
    r = CliRunner().invoke(main, ["diagnose", str(LSTM), "--input", str(tmp_path / "x.txt")])
    assert r.exit_code == 1 and "no such file" in r.output


def test_the_figure_draws_only_the_panels_it_has_data_for(tmp_path):
    pytest.importorskip("matplotlib")
    from edge_rnn.diagnostics._plot import plot

    curve = MemoryCurve("m", np.arange(5), np.array([1.0, 0.5, 0.25, 0.1, 0.05]), starts=2, scale=1.0)
    assert plot(Diagnosis("m", memory=[curve]), tmp_path / "m.svg").read_text().startswith("<?xml")
    with pytest.raises(Exception, match="nothing to plot"):
        plot(Diagnosis("empty"), tmp_path / "e.png")


def test_the_cli_draws_the_curve_of_every_variant_of_a_bundle(tmp_path):
    pytest.importorskip("onnx")
    from edge_rnn.deploy import package

    package(LSTM, tmp_path / "bundle", variants=("fp32", "int8"), steps=2000)
    np.save(tmp_path / "x.npy", _x())
    r = CliRunner().invoke(main, ["diagnose", str(tmp_path / "bundle"), "--input", str(tmp_path / "x.npy"),
                                  "--max-lag", "20"])
    assert r.exit_code == 0, r.output
    fp32 = memory_curve(LSTM, _x(), max_lag=20)
    assert f"memory curve, fp32: 1/e after {fp32.horizon():g} steps" in r.output
    assert "memory curve, int8: 1/e after" in r.output
    r = CliRunner().invoke(main, ["diagnose", str(tmp_path / "bundle"), "--input", str(tmp_path / "x.npy"),
                                  "--compare", str(LSTM)])
    assert r.exit_code == 2 and "a bundle holds its variants" in r.output
