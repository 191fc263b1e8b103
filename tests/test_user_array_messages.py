"""A user's .npy that does not fit the model is refused whole, naming the file, its shape and its dtype (not the first
chunk cut from it); a float64 file of the right width is cast and runs; short --max-lag summaries show their lags."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402
from conftest import REPO  # noqa: E402

from edge_rnn.cli import main  # noqa: E402
from edge_rnn.diagnostics._report import _lags_shown  # noqa: E402
from edge_rnn.errors import ShapeError  # noqa: E402
from edge_rnn.runtime import StreamingModel, run_sequence  # noqa: E402

WIDTH = 24
LSTM = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) float32 -> y (time, 6)
TOKENS = REPO / "tests" / "data" / "token_gru.onnx"  # ids (time,) int64 in [0, 39]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A GRU export of input width 24, a (300, 40) float64 file (the wrong width) and a (300, 24) float64 one."""
    d = tmp_path_factory.mktemp("arrays")
    r = CliRunner().invoke(main, ["export", "--arch", "gru", "--input-size", str(WIDTH), "--hidden-size", "8",
                                  "--long-steps", "0", "-o", str(d / "g.onnx")])
    assert r.exit_code == 0, r.output
    rng = np.random.default_rng(0)
    np.save(d / "wide.npy", rng.standard_normal((300, 40)))
    np.save(d / "right.npy", rng.standard_normal((300, WIDTH)))
    return d


def _args(d, case: str, data: str) -> list[str]:
    arch = ["--arch", "gru", "--input-size", str(WIDTH), "--hidden-size", "8"]
    return {
        "run": ["run", str(d / "g.onnx"), "--input", str(d / data), "-o", str(d / "out.npy")],
        "diagnose onnx": ["diagnose", str(d / "g.onnx"), "--input", str(d / data), "--max-lag", "5", "--starts", "2"],
        "diagnose arch": ["diagnose", *arch, "--input", str(d / data), "--max-lag", "5", "--starts", "2"],
    }[case]


@pytest.mark.parametrize("case", ["run", "diagnose onnx", "diagnose arch"])
def test_a_file_of_the_wrong_width_is_refused_by_its_own_shape_and_dtype(files, case):
    r = CliRunner().invoke(main, _args(files, case, "wide.npy"))
    assert r.exit_code == 1, r.output
    line = r.output.strip()
    assert line.count("\n") == 0 and "Traceback" not in line  # one line, as every user error
    assert f"--input {files / 'wide.npy'}" in line
    assert "(300, 40) float64" in line and f"(time, {WIDTH})" in line
    for chunk in ("(32, 40)", "(35, 40)", "(1, 40)", "(6, 40)"):  # no chunk cut from it
        assert chunk not in line


@pytest.mark.parametrize("case", ["run", "diagnose onnx", "diagnose arch"])
def test_a_float64_file_of_the_right_width_is_cast_and_runs(files, case):
    r = CliRunner().invoke(main, _args(files, case, "right.npy"))
    assert r.exit_code == 0, r.output
    if case == "run":  # the same outputs as the float32 file the cast makes
        m = StreamingModel.load(files / "g.onnx")
        want = run_sequence(m, m.open_stream(), np.load(files / "right.npy").astype(np.float32))["y"]
        np.testing.assert_array_equal(np.load(files / "out.npy"), want)
    else:
        assert "memory curve" in r.output


def test_run_sequence_refuses_the_whole_array_before_any_step(files):
    m = StreamingModel.load(files / "g.onnx")
    stream = m.open_stream()
    with pytest.raises(ShapeError, match=r"expected a sequence \(time, 24\) float32.*got \(300, 40\) float32"):
        run_sequence(m, stream, np.zeros((300, 40), np.float32), chunk=32)
    assert stream.steps == 0


@pytest.mark.parametrize("dtype", ["float64", "float16", ">f4"])
def test_run_sequence_casts_any_float_as_run_does(dtype):
    m = StreamingModel.load(LSTM)
    x = np.random.default_rng(0).standard_normal((50, 4)).astype(dtype)
    got = run_sequence(m, m.open_stream(), x, chunk=7)["y"]
    np.testing.assert_array_equal(got, run_sequence(m, m.open_stream(), x.astype(np.float32), chunk=7)["y"])


def _file(tmp_path, case: str):
    """(model, the .npy for ``case``, what the one-line refusal of ``run`` says after the file's name)."""
    x = np.zeros((50, 4), np.float32)
    if case == "nan":
        x[3, 1] = np.nan
        return LSTM, x, ["expected finite values", "the first at step 3 of 50", "--allow-nonfinite"]
    if case == "beyond float32":
        x = x.astype(np.float64)
        x[7, 2] = 1e300
        return LSTM, x, ["expected values within float32's range", "the first at step 7 of 50"]
    if case == "no step":
        return LSTM, x[:0], ["expected at least one time step", "(0, 4)"]
    return TOKENS, np.array([1, 2, 1_000_000, 3]), ["expected ids values in [0, 39]", "got 1000000",
                                                    "the first at step 2 of 4"]


@pytest.mark.parametrize("case", ["nan", "beyond float32", "no step", "token id out of range"])
def test_run_names_the_file_and_the_step_of_a_value_it_refuses(tmp_path, case):
    model, x, says = _file(tmp_path, case)
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(main, ["run", str(model), "--input", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")])
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"Error: --input {tmp_path / 'x.npy'}: "), lines
    assert all(s in lines[0] for s in says), lines[0]
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
@pytest.mark.parametrize("command", ["run", "diagnose"])
def test_a_npy_linked_to_a_character_device_is_refused_as_one(tmp_path, device, command):
    if not __import__("os").path.exists(device):
        pytest.skip(f"no {device} here")
    (tmp_path / "x.npy").symlink_to(device)
    out = ["-o", str(tmp_path / "y.npy")] if command == "run" else []
    r = CliRunner().invoke(main, [command, str(LSTM), "--input", str(tmp_path / "x.npy"), *out])
    assert r.exit_code == 1, r.output
    assert r.output.strip() == f"Error: --input {tmp_path / 'x.npy'}: expected a regular file, got a character device"


def test_data_linked_to_a_character_device_is_refused_as_one(tmp_path):
    from edge_rnn.errors import DataError
    from edge_rnn.harness import check_data

    if not __import__("os").path.exists("/dev/zero"):
        pytest.skip("no /dev/zero here")
    (tmp_path / "d.npy").symlink_to("/dev/zero")
    with pytest.raises(DataError, match="expected a regular file, got a character device"):
        check_data(tmp_path / "d.npy")


def test_run_of_a_fixed_chunk_model_streams_a_whole_number_of_its_chunks(tmp_path):
    import onnx

    from edge_rnn.deploy import static_form

    onnx.save(static_form(onnx.load(str(LSTM)), 3), tmp_path / "s3.onnx")
    x = np.random.default_rng(1).standard_normal((51, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(main, ["run", str(tmp_path / "s3.onnx"), "--input", str(tmp_path / "x.npy"), "--chunk", "3",
                                  "-o", str(tmp_path / "y.npy")])
    assert r.exit_code == 0, r.output
    m = StreamingModel.load(LSTM)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), run_sequence(m, m.open_stream(), x)["y"], atol=1e-5)


@pytest.mark.parametrize(("n", "marks", "want"), [
    (4, (10, 25, 50), [1, 3]),  # --max-lag 3: no mark reached; lag 1 and the last
    (2, (1, 10, 25, 50), [1]),
    (12, (10, 25, 50), [10, 11]),
    (51, (10, 25, 50), [10, 25, 50]),  # the default --max-lag 50: as before
    (51, (1, 10, 25, 50), [1, 10, 25, 50]),
    (1, (10, 25, 50), []),
])
def test_the_summary_shows_the_marks_reached_and_the_last_lag(n, marks, want):
    assert _lags_shown(n, marks) == want


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_diagnose_with_a_short_max_lag_prints_every_gradient_line_with_its_lags(tmp_path, arch):
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((40, 4)).astype(np.float32))
    r = CliRunner().invoke(main, ["diagnose", "--arch", arch, "--input-size", "4", "--hidden-size", "6", "--input",
                                  str(tmp_path / "x.npy"), "--max-lag", "3", "--starts", "2"])
    assert r.exit_code == 0, r.output
    gradient = [ln for ln in r.output.splitlines() if ln.startswith("gradient flow")]
    assert len(gradient) == 4  # this model and the three baselines
    for line in gradient:
        assert "lag 1: " in line and "lag 3: " in line, line
    curve = next(ln for ln in r.output.splitlines() if ln.startswith("memory curve"))
    assert "lag 1: " in curve and "lag 3: " in curve


@pytest.mark.parametrize("allow_nonfinite", [False, True])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_run_sequence_refuses_exactly_the_float64_values_a_float32_cast_makes_inf(allow_nonfinite, sign):
    m = StreamingModel.load(LSTM, allow_nonfinite=allow_nonfinite)
    bound = np.float64(np.finfo(np.float32).max) + 2.0 ** 103  # half an ulp past float32's largest: rounds to Inf
    x = np.zeros((6, 4))
    x[2, 1] = sign * np.nextafter(bound, 0.0)  # rounds to float32's largest, finite: taken
    assert np.isfinite(run_sequence(m, m.open_stream(), x)["y"]).all()
    x[4, 3] = sign * bound
    with pytest.raises(ShapeError, match=r"got 1 float64 values beyond it \(largest -?3\.40282e\+38\), the first at "
                                         r"step 4 of 6"):
        run_sequence(m, m.open_stream(), x)
