"""Outside probes of issue 22's user-facing changes: each test is the reproducer of a bug the probe found
(the client's width, the access log's redaction, loadtest's counts and checks, run_sequence's messages, a
progress callback's errors), kept now that each is fixed.

Servers bind 127.0.0.1 on a free port and are stopped by the test that starts them.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("httpx")
from click.testing import CliRunner  # noqa: E402
from conftest import REPO  # noqa: E402
from fake_edge import FakeEdgeServer  # noqa: E402

from edge_rnn.cli import main  # noqa: E402
from edge_rnn.errors import EdgeRnnError, ShapeError  # noqa: E402
from edge_rnn.runtime import StreamingModel, run_sequence  # noqa: E402

LSTM = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6)
SECRET = "tok-SECRET-0123456789abcdef"


# --- 1. serve --access-log: credentials in the URL under other spellings --------------------------------------------

@pytest.mark.parametrize("query", [f"tok%65n={SECRET}", f"auth_token={SECRET}", f"client_secret={SECRET}",
                                   f"api-key={SECRET}", f"x-api-key={SECRET}", f"token[]={SECRET}",
                                   f"token%5B%5D={SECRET}", f"id_token={SECRET}", f"%74oken={SECRET}"])
def test_probe_access_log_redacts_credential_names_however_spelled(query):
    from edge_rnn.service._access_log import redact

    assert SECRET not in redact(f"/v1/model?{query}"), redact(f"/v1/model?{query}")


# --- 2. the client's (time, width) -------------------------------------------------------------------------------


def _model(shape: list, time_axis: int | None = 0) -> dict:
    port = {"name": "y", "dtype": "float32", "shape": shape, "time_axis": time_axis}
    return {"inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4], "time_axis": 0}], "outputs": [port],
            "frame": [4]}


def test_probe_a_fixed_chunk_models_reply_is_time_by_width(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("fastapi")
    import onnx
    from probe_servers import ModelServer

    from edge_rnn.client import HttpStream
    from edge_rnn.deploy import static_form

    static = tmp_path / "static3.onnx"
    onnx.save(static_form(onnx.load(str(LSTM)), 3), static)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    m = StreamingModel.load(static)
    want = run_sequence(m, m.open_stream(), x, chunk=3)["y"]
    with ModelServer(static) as server, HttpStream(server.url) as s:
        got = s.step(x)
    assert got.shape == want.shape == (3, 6), (got.shape, want.shape)


@pytest.mark.parametrize("status", [503, 500, 404])
def test_probe_a_failed_model_request_does_not_silently_flatten_replies(status):
    from edge_rnn.client import HttpStream

    with FakeEdgeServer(b'{"code": "overloaded", "message": "busy"}', status=status) as server:
        try:
            with HttpStream(server.url, resume=False) as s:
                y = s.step(np.zeros((2, 4), np.float32))
        except EdgeRnnError:
            return  # refused at the open, saying why: fine
    assert y.ndim == 2, f"got {y.shape}: flat, with no error"


def test_probe_a_reply_the_width_does_not_divide_is_a_clear_error():
    from edge_rnn.client import HttpStream

    with FakeEdgeServer(_model([None, 5]), reply=12) as server, HttpStream(server.url, resume=False) as s:
        with pytest.raises(EdgeRnnError, match="12"):
            s.step(np.zeros((2, 4), np.float32))


@pytest.mark.parametrize("shape", [[2**64], [None, 2**32, 2**32]])
def test_probe_a_huge_width_is_refused_clearly(shape):
    from edge_rnn.client import HttpStream

    with FakeEdgeServer(_model(shape), reply=12) as server:
        with pytest.raises(EdgeRnnError):
            with HttpStream(server.url, resume=False) as s:
                s.step(np.zeros((2, 4), np.float32))


# --- 3. loadtest --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk_ms", "frame_ms"), [(1000.0, 0.1), (3.0, 0.3), (7.0, 0.7)])
def test_probe_loadtest_takes_a_whole_number_of_decimal_frames(chunk_ms, frame_ms):
    from edge_rnn.loadtest import loadtest

    with pytest.raises(EdgeRnnError) as e:  # nothing listens on port 1: the check must pass and the connect fail
        loadtest("http://127.0.0.1:1", streams=1, chunk_ms=chunk_ms, frame_ms=frame_ms, duration=0.5)
    assert "whole number" not in str(e.value), str(e.value)


def test_probe_min_real_time_exactly_met_exits_0(monkeypatch):
    import edge_rnn.loadtest as lt

    monkeypatch.setattr(lt, "loadtest", lambda url, **kw: lt.LoadResult(streams=100, seconds=1.0,
                                                                         kept_real_time=7))
    r = CliRunner().invoke(main, ["loadtest", "http://127.0.0.1:1", "--streams", "100", "--min-real-time", "0.07"])
    assert r.exit_code == 0, r.output


# --- 4. shape errors naming the user's array ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "float16", ">f4", "int64"])
def test_probe_run_sequence_names_the_users_array_not_a_chunk(dtype):
    m = StreamingModel.load(LSTM)
    x = np.ones((50, 4), dtype=dtype)
    try:
        y = run_sequence(m, m.open_stream(), x)["y"]
    except ShapeError as e:
        assert "(50, 4)" in str(e) and "(32, 4)" not in str(e), str(e)
    else:
        assert y.shape == (50, 6)


def test_probe_run_sequence_refuses_a_ragged_list_as_a_shape_error():
    m = StreamingModel.load(LSTM)
    with pytest.raises(ShapeError):
        run_sequence(m, m.open_stream(), [np.zeros((3, 4)), np.zeros((2, 4))])


# --- 5. a progress callback that raises -----------------------------------------------------------------------------


class _Stop(Exception):
    pass


def test_probe_export_lets_a_progress_callbacks_exception_through(tmp_path):
    torch = pytest.importorskip("torch")
    import edge_rnn

    calls = []

    def stop_after_three(stage: str, done: int, total: int) -> None:
        calls.append(done)
        if len(calls) > 3:
            raise _Stop("the caller cancelled")

    with pytest.raises(_Stop):
        edge_rnn.export(torch.nn.GRU(4, 6).eval(), tmp_path / "m.onnx", long_steps=2000, progress=stop_after_three)


def test_probe_loadtest_of_a_one_frame_per_call_model_says_what_to_pass():
    pytest.importorskip("fastapi")
    from probe_servers import GRU_CELL, ModelServer

    from edge_rnn.loadtest import loadtest

    with ModelServer(GRU_CELL) as server:
        with pytest.raises(EdgeRnnError, match="--chunk-ms"):
            loadtest(server.url, streams=1, chunk_ms=100.0, frame_ms=10.0, duration=0.5)


def test_probe_loadtest_counts_only_streams_that_sent_as_real_time():
    pytest.importorskip("fastapi")
    from probe_servers import ModelServer

    from edge_rnn.loadtest import loadtest

    with ModelServer() as server:
        result = loadtest(server.url, streams=4, chunk_ms=1000.0, frame_ms=10.0, duration=0.5)
    assert result.kept_real_time <= len(result.latencies_ms), result.summary()


def test_probe_a_dynamic_feature_size_is_not_read_as_width_1():
    from edge_rnn.client import HttpStream

    with FakeEdgeServer(_model([None, None]), reply=12) as server:  # no width known: refused at the open, saying why
        with pytest.raises(EdgeRnnError, match="feature sizes fixed, got shape \\[None, None\\]"):
            HttpStream(server.url, resume=False)


@pytest.mark.parametrize("chunk", ["32", "3"])
def test_probe_run_of_a_fixed_chunk_model_names_the_file_and_the_chunk_to_pass(tmp_path, chunk):
    pytest.importorskip("onnx")
    import onnx
    from cli_errors import one_line_error

    from edge_rnn.deploy import static_form

    static, data = tmp_path / "static3.onnx", tmp_path / "x.npy"
    onnx.save(static_form(onnx.load(str(LSTM)), 3), static)
    np.save(data, np.zeros((50, 4), np.float32))
    r = CliRunner().invoke(main, ["run", str(static), "--input", str(data), "--chunk", chunk,
                                  "-o", str(tmp_path / "y.npy")])
    line = one_line_error(r, "3")
    assert str(data) in line or "--chunk 3" in line, line
