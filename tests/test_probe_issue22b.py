"""A second outside probe of issue 22's fixes: each test is the reproducer of a bug it found (a URL's userinfo,
query or password, hostile JSON, a cell's reply, loadtest's nan/inf, values a cast makes Inf, the demo's seed),
kept now that each is fixed. Servers bind 127.0.0.1 on a free port and are stopped by the test that starts them.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("httpx")
from click.testing import CliRunner  # noqa: E402
from conftest import REPO  # noqa: E402
from fake_edge import FakeEdgeServer, described  # noqa: E402

from edge_rnn.cli import main  # noqa: E402
from edge_rnn.errors import EdgeRnnError  # noqa: E402

LSTM = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6)
PASSWORD = "SECRETPW-0123456789"


# --- the client ----------------------------------------------------------------------------------------------------

def test_probe_b_token_is_sent_when_the_url_has_userinfo():
    from edge_rnn.client import HttpStream

    with FakeEdgeServer(described([None, 6])) as server:
        url = f"http://user:{PASSWORD}@127.0.0.1:{server.port}"
        try:  # the probe's expectation: the Bearer token sent, or the URL form refused (saying so, no password)
            with HttpStream(url, token="BEARER-TOK", resume=False) as s:
                s.step(np.zeros((2, 4), np.float32))
        except EdgeRnnError as e:
            assert "user:password@" in str(e) and PASSWORD not in str(e) and not server.seen, (str(e), server.seen)
            return
    assert all(auth == "Bearer BEARER-TOK" for _, _, auth in server.seen), server.seen


def test_probe_b_websocket_refusal_does_not_quote_the_urls_password():
    pytest.importorskip("websockets")
    from edge_rnn.client import SyncWebSocketStream

    with FakeEdgeServer(described([None, 6])) as server:  # no socket route: the handshake is answered 404
        with pytest.raises(EdgeRnnError) as e:
            SyncWebSocketStream(f"ws://user:{PASSWORD}@127.0.0.1:{server.port}", resume=False)
    assert PASSWORD not in str(e.value), str(e.value)


def test_probe_b_loadtest_error_does_not_quote_the_urls_password():
    pytest.importorskip("websockets")
    r = CliRunner().invoke(main, ["loadtest", f"http://user:{PASSWORD}@127.0.0.1:1", "--duration", "1"])
    assert r.exit_code != 0 and PASSWORD not in r.output, r.output


@pytest.mark.parametrize("suffix", ["/?x=1", "/v1/streams?token=abc"])
def test_probe_b_a_url_with_a_query_is_refused_as_a_url_or_ignored(suffix):
    from edge_rnn.client import HttpStream

    with FakeEdgeServer(described([None, 6])) as server:
        try:
            with HttpStream(server.url + suffix, resume=False) as s:
                y = s.step(np.zeros((2, 4), np.float32))
        except EdgeRnnError as e:
            assert "url" in str(e).lower() and "404" not in str(e), str(e)
            return
    assert y.shape == (2, 6)


def test_probe_b_a_deeply_nested_model_answer_is_undescribed_not_recursionerror():
    from edge_rnn.client import HttpStream

    with FakeEdgeServer(b"[" * 100_000 + b"]" * 100_000) as server:
        with pytest.raises(EdgeRnnError):
            HttpStream(server.url, resume=False)


def test_probe_b_a_cells_reply_of_two_frames_is_an_error():
    from edge_rnn.client import HttpStream

    with FakeEdgeServer(described([1, 6], None), reply=12) as server, HttpStream(server.url, resume=False) as s:
        with pytest.raises(EdgeRnnError):
            s.step(np.zeros(4, np.float32))


# --- loadtest ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", [["--chunk-ms", "nan"], ["--chunk-ms", "inf"], ["--frame-ms", "nan"],
                                    ["--frame-ms", "inf"], ["--duration", "nan"], ["--duration", "inf"]])
def test_probe_b_loadtest_refuses_nan_and_inf_cleanly(option):
    pytest.importorskip("websockets")
    r = CliRunner().invoke(main, ["loadtest", "http://127.0.0.1:1", *option])
    assert r.exit_code != 0 and not isinstance(r.exception, ValueError), repr(r.exception)


def test_probe_b_loadtest_refuses_min_real_time_nan_before_the_run():
    pytest.importorskip("websockets")
    r = CliRunner().invoke(main, ["loadtest", "http://127.0.0.1:1", "--min-real-time", "nan"])
    assert r.exit_code == 2 and "--min-real-time" in r.output, r.output


# --- run_sequence and run ------------------------------------------------------------------------------------------

def test_probe_b_run_sequence_names_a_float64_beyond_float32_as_such():
    from edge_rnn.runtime import StreamingModel, run_sequence

    m = StreamingModel.load(LSTM)
    with pytest.raises(EdgeRnnError, match="range"):
        run_sequence(m, m.open_stream(), np.full((5, 4), 1e300), chunk=32)


def test_probe_b_run_allow_nonfinite_does_not_turn_finite_values_into_inf(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.full((5, 4), 1e300))
    r = CliRunner().invoke(main, ["run", str(LSTM), "--input", str(x), "-o", str(tmp_path / "y.npy"),
                                  "--allow-nonfinite"])
    assert r.exit_code != 0 and "range" in r.output, r.output


# --- diagnose --demo -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", ["-1", str(10**23)])
def test_probe_b_demo_refuses_a_seed_it_cannot_use_up_front(seed):
    pytest.importorskip("torch")
    r = CliRunner().invoke(main, ["diagnose", "--demo", "--quiet", "--seed", seed])
    assert r.exit_code == 2 and "--seed" in r.output, (r.output, repr(r.exception))
