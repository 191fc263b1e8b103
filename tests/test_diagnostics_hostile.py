"""diagnose never prints a NaN figure as if it were one: NaN/Inf input is refused on every path by one check, its
own perturbation follows the data's scale, a model that overflows is named as the cause (never the user's finite
input), and --plot is checked before any work."""

from __future__ import annotations

import math

import cli_errors
import numpy as np
import pytest
from cli_errors import invoke
from conftest import REPO

from edge_rnn.diagnostics import Diagnosis, MemoryCurve, diagnose_onnx, memory_curve, summary
from edge_rnn.errors import NonFiniteError

DATA = REPO / "tests" / "data"
LSTM = DATA / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6)
TORCH = ["--arch", "lstm", "--input-size", "4", "--hidden-size", "6"]


def _x(steps=80, width=4, seed=0):
    return np.random.default_rng(seed).standard_normal((steps, width)).astype(np.float32)


def one_line_error(result, contains: str) -> str:
    return cli_errors.one_line_error(result, contains, not_in_stdout=("nan",))  # no NaN figure printed either


def _with_nan(value=math.nan):
    x = _x()
    x[5, 1] = value
    return x


# --- NaN and Inf input: one check, every path --------------------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nonfinite_input_is_refused_on_the_onnx_path_by_the_shared_check(value):
    with pytest.raises(NonFiniteError, match=r"diagnose input: expected finite values, got NaN or Inf \(1 of 320, "
                                             r"the first at step 5 of 80\)"):
        memory_curve(LSTM, _with_nan(value), max_lag=10)


def test_nonfinite_input_is_refused_on_the_torch_path_before_any_work():
    """It exited 0 printing NaN gate means, NaN horizons and "1/e after inf steps"."""
    torch = pytest.importorskip("torch")
    from edge_rnn.diagnostics import diagnose, memory_curve_torch

    lstm = torch.nn.LSTM(4, 6)
    for call in (lambda x: diagnose(lstm, x, max_lag=10), lambda x: memory_curve_torch(lstm, x, max_lag=10)):
        with pytest.raises(NonFiniteError, match="diagnose input: expected finite values, got NaN or Inf"):
            call(_with_nan())


@pytest.mark.parametrize("path", ["onnx", "torch"])
def test_the_cli_refuses_nonfinite_input_with_one_line_on_both_paths(tmp_path, path):
    if path == "torch":
        pytest.importorskip("torch")
    np.save(tmp_path / "x.npy", _with_nan())
    source = [LSTM] if path == "onnx" else TORCH
    one_line_error(invoke("diagnose", *source, "--input", tmp_path / "x.npy", "--max-lag", 10),
                   "expected finite values, got NaN or Inf (1 of 320, the first at step 5 of 80)")


def test_float64_input_beyond_float32_is_named_as_such(tmp_path):
    """The float32 cast made it Inf, which was then called "NaN or Inf" input."""
    x = _x().astype(np.float64)
    x[3, 0] = 1e300
    np.save(tmp_path / "x.npy", x)
    one_line_error(invoke("diagnose", LSTM, "--input", tmp_path / "x.npy", "--max-lag", 10),
                   "expected values within float32's range (the model's input dtype), got float64 values up to 1e+300")


# --- the perturbation follows the data's scale ------------------------------------------------------------------

def test_finite_input_times_1e30_gives_a_finite_curve_on_the_onnx_path():
    """np.std of float32 1e30 overflowed to inf, so the perturbed step was Inf, and the runtime's refusal blamed
    the user's finite input: "expected finite values, got NaN or Inf"."""
    x = _x()
    curve = memory_curve(LSTM, x * np.float32(1e30), max_lag=10, starts=4)
    assert np.isfinite(curve.response).all() and curve.response.max() > 0  # saturated gates: lag 0 may be 0
    assert 1e29 < curve.scale < 1e31  # 0.5 x std, as for any other scale


def test_finite_input_times_1e30_gives_a_finite_curve_on_the_torch_path():
    """The PyTorch path printed a NaN curve for it."""
    torch = pytest.importorskip("torch")
    from edge_rnn.diagnostics import diagnose

    torch.manual_seed(0)
    d = diagnose(torch.nn.LSTM(4, 6), _x() * np.float32(1e30), max_lag=10, starts=4)
    assert not d.nonfinite()
    assert np.isfinite(d.memory[0].response).all() and d.memory[0].response.max() > 0
    assert "nan" not in "\n".join(summary(d)).lower()


def test_a_perturbation_that_would_leave_float32_is_said_to_be_ours():
    x = np.sign(_x()) * np.float32(3e38)  # finite, every value +-3e38: 0.5 x std (1.5e38) more does not fit
    with pytest.raises(NonFiniteError, match=r"the perturbation of step \d+ .* takes it beyond float32's range: the "
                                             r"input is finite, its values reach 3e\+38"):
        memory_curve(LSTM, x, max_lag=10, starts=2)


# --- a model that overflows is named, never the input ------------------------------------------------------------

def _exploding_rnn():
    """A ReLU RNN whose recurrent weights double the state each step: 1e30 input overflows float32 in ~30 steps."""
    torch = pytest.importorskip("torch")
    rnn = torch.nn.RNN(4, 6, nonlinearity="relu")
    with torch.no_grad():
        rnn.weight_ih_l0.fill_(1.0)
        rnn.weight_hh_l0.copy_(2.0 * torch.eye(6))
        rnn.bias_ih_l0.zero_()
        rnn.bias_hh_l0.zero_()
    return rnn


def test_a_model_that_overflows_on_finite_input_is_named_as_the_cause():
    rnn = _exploding_rnn()  # skips without torch, before diagnose (torch only) is imported
    from edge_rnn.diagnostics import diagnose

    x = np.abs(_x()) * np.float32(1e30)
    with pytest.raises(NonFiniteError, match=r"the model's output is NaN or Inf .* for finite input \(values up to "
                                             r".*\): the model overflows at this input's scale"):
        diagnose(rnn, x, max_lag=10, starts=2)


def test_weights_holding_nan_are_refused_before_any_work():
    torch = pytest.importorskip("torch")
    from edge_rnn.diagnostics import diagnose

    lstm = torch.nn.LSTM(4, 6)
    with torch.no_grad():
        lstm.weight_hh_l0[0, 0] = math.nan
    with pytest.raises(NonFiniteError, match=r"expected finite weights, got NaN or Inf in weight_hh_l0"):
        diagnose(lstm, _x(), max_lag=10)


def test_a_diagnosis_names_every_figure_that_is_not_finite():
    """Inf horizons mean "beyond the data" and are figures; NaN anywhere is not."""
    good = MemoryCurve("ok", np.arange(3), np.array([1.0, 0.5, 0.2]), starts=1, scale=1.0)
    bad = MemoryCurve("bad", np.arange(3), np.array([1.0, math.nan, 0.2]), starts=1, scale=1.0)
    assert Diagnosis("m", memory=[good]).nonfinite() == []
    assert Diagnosis("m", memory=[good, bad]).nonfinite() == ["memory curve, bad"]


def test_a_curve_above_1_e_to_its_end_says_so_not_inf_steps():
    flat = MemoryCurve("flat", np.arange(11), np.ones(11), starts=1, scale=1.0)
    line = summary(Diagnosis("m", memory=[flat]))[1]
    assert "1/e after more than 10 steps (beyond the curve)" in line and "inf" not in line


# --- --plot: checked before any work -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, says", [
    ("fig.xyz", "expected a file name ending in one of"),
    ("fig", "got 'no suffix'"),
    ("missing/fig.png", "expected an existing folder to write it in"),
    ("x.npy/fig.png", "(a file)"),
    (".", "expected a file name"),
])
def test_a_plot_path_that_cannot_be_written_fails_at_once(tmp_path, name, says):
    """It failed with a traceback after all the work (the summary had been printed)."""
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "x.npy", _x())
    r = invoke("diagnose", LSTM, "--input", tmp_path / "x.npy", "--max-lag", 10, "--plot", tmp_path / name)
    one_line_error(r, says)
    assert "memory curve" not in r.stdout  # no work was done


def test_a_plot_in_a_folder_that_cannot_be_written_fails_at_once(tmp_path):
    pytest.importorskip("matplotlib")
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK) and os.geteuid() == 0:
            pytest.skip("root writes to a read-only folder")
        np.save(tmp_path / "x.npy", _x())
        r = invoke("diagnose", LSTM, "--input", tmp_path / "x.npy", "--max-lag", 10, "--plot", folder / "f.png")
        one_line_error(r, "cannot write in")
    finally:
        folder.chmod(0o700)


def test_a_plot_in_an_upper_case_suffix_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "x.npy", _x())
    r = invoke("diagnose", LSTM, "--input", tmp_path / "x.npy", "--max-lag", 10, "--plot", tmp_path / "f.SVG")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "f.SVG").read_text().startswith("<?xml")


def test_the_summary_of_a_finite_onnx_diagnosis_is_unchanged():
    d = diagnose_onnx(LSTM, _x(), max_lag=10, starts=3)
    assert "memory curve, lstm_layer.onnx: 1/e after" in "\n".join(summary(d))


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_plot_in_a_folder_no_file_can_be_made_in_fails_at_once(tmp_path):
    """/proc takes no new files, for root too: the check makes one, as the figure would."""
    pytest.importorskip("matplotlib")
    np.save(tmp_path / "x.npy", _x())
    r = invoke("diagnose", LSTM, "--input", tmp_path / "x.npy", "--max-lag", 10, "--plot", "/proc/f.png")
    one_line_error(r, "--plot /proc/f.png: cannot write in /proc")
    assert "memory curve" not in r.stdout


@pytest.mark.parametrize("path", ["onnx", "torch"])
def test_the_cli_diagnoses_finite_input_times_1e30_on_both_paths(tmp_path, path):
    """The ONNX path said "expected finite values, got NaN or Inf" of this finite input; the PyTorch path printed
    a NaN curve."""
    if path == "torch":
        pytest.importorskip("torch")
    np.save(tmp_path / "x.npy", _x() * np.float32(1e30))
    source = [LSTM] if path == "onnx" else TORCH
    r = invoke("diagnose", *source, "--input", tmp_path / "x.npy", "--max-lag", 10, "--starts", 3)
    assert r.exit_code == 0, r.output
    assert "memory curve" in r.stdout and "nan" not in r.stdout.lower()
