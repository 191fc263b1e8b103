"""Issue 22: what `edge-rnn loadtest` and `serve` say to a new user.

Torch-free: the committed fixtures in tests/data; servers bind 127.0.0.1 on a free port (probe_servers.ModelServer)
and are stopped by each test; loads are a second or less.
"""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("httpx")
pytest.importorskip("websockets")
pytest.importorskip("uvicorn")

from cli_errors import invoke, one_line_error  # noqa: E402
from probe_servers import ModelServer  # noqa: E402

DATA = Path(__file__).parent / "data"
LSTM = DATA / "lstm_layer.onnx"
STATIC = DATA / "bundle" / "lstm_layer.static.onnx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_loadtest_of_nothing_listening_says_so():
    port = _free_port()
    line = one_line_error(invoke("loadtest", f"http://127.0.0.1:{port}", "--duration", 0.5, "--streams", 1),
                          f"nothing listens at http://127.0.0.1:{port}; is the server running?")
    assert "ConnectError" not in line


def test_loadtest_of_a_url_without_scheme_names_what_it_got():
    one_line_error(invoke("loadtest", "127.0.0.1:8000"),
                   "expected a URL with http:// or https://, got '127.0.0.1:8000'")


def test_loadtest_without_the_token_points_at_token_file(tmp_path):
    with ModelServer(LSTM, token="t" * 20) as server:
        line = one_line_error(invoke("loadtest", server.url, "--duration", 0.5, "--streams", 1),
                              "401 unauthorized: the server wants a token; pass --token-file")
        assert "is it an edge-rnn server" not in line
        (tmp_path / "token").write_text("u" * 20)
        one_line_error(invoke("loadtest", server.url, "--duration", 0.5, "--streams", 1, "--token-file",
                              tmp_path / "token"), "401 unauthorized: the server refused the token of --token-file")


def test_loadtest_of_a_fixed_chunk_model_says_which_chunk_to_send():
    """It ran, every chunk refused bad_chunk, and printed "p50 nan ms ... bad_chunk x5" with exit 0."""
    with ModelServer(STATIC) as server:
        r = invoke("loadtest", server.url, "--duration", 0.5, "--streams", 1)
        one_line_error(r, "takes exactly 1 time step per chunk, got 10 (--chunk-ms 100 / --frame-ms 10); "
                          "pass --chunk-ms 10")
        assert "nan" not in r.output
        r = invoke("loadtest", server.url, "--duration", 0.5, "--streams", 1, "--chunk-ms", 10,
                   "--min-real-time", 0)
        assert r.exit_code == 0 and "errors: none" in r.output, r.output


def test_min_real_time_sets_the_exit_code(monkeypatch):
    """No stream kept real time, and it exited 0."""
    from edge_rnn import loadtest as lt

    def run(url, **kw):
        result = lt.LoadResult(streams=4, seconds=1.0, kept_real_time=3, latencies_ms=[1.0, 2.0])
        return result

    monkeypatch.setattr(lt, "loadtest", run)
    r = invoke("loadtest", "http://127.0.0.1:9", "--min-real-time", 0.99)
    line = one_line_error(r, "3/4 streams kept real time (75%); expected at least 99% (--min-real-time 0.99)")
    assert line and "3/4 streams kept real time over" in r.stdout  # the summary still printed
    assert invoke("loadtest", "http://127.0.0.1:9", "--min-real-time", 0.75).exit_code == 0
    r = invoke("loadtest", "http://127.0.0.1:9")  # the default: 99%, the benchmarks' bar for a load served
    assert r.exit_code == 1 and "--min-real-time 0.99" in r.stderr, r.output


def test_loadtest_with_https_to_a_plain_http_server_says_the_tls_handshake_failed():
    """It said "nothing listens at https://...", though a server answered (in plain HTTP)."""
    with ModelServer(LSTM) as server:
        url = server.url.replace("http://", "https://")
        line = one_line_error(invoke("loadtest", url, "--duration", 0.5, "--streams", 1),
                              f"{url}: TLS handshake failed")
    assert "nothing listens" not in line and "http://" in line, line


@pytest.mark.parametrize("port", ["99999", "65536", "0", "x"])
def test_loadtest_of_a_port_out_of_range_says_so(port):
    """Port 99999 said "nothing listens at ..." (httpx had tried port 99999 - 65536 = 34463)."""
    line = one_line_error(invoke("loadtest", f"http://127.0.0.1:{port}", "--duration", 0.5, "--streams", 1),
                          f"port out of range: expected 1 to 65535, got {port!r}")
    assert "nothing listens" not in line


def test_loadtest_refuses_a_chunk_longer_than_the_run():
    """--chunk-ms 100000 --duration 1 ran for over a minute, and its streams that sent nothing kept real time."""
    r = invoke("loadtest", "http://127.0.0.1:9", "--chunk-ms", 100000, "--duration", 1)
    assert r.exit_code == 2 and "--chunk-ms 100000 is longer than --duration 1 s" in r.stderr, r.output


def test_loadtest_counts_streams_that_sent_nothing_apart():
    """Streams whose first chunk falls due after the run sent nothing: they did not keep real time, the summary says
    so, and the run does not wait for their chunk (a minute away) before it stops."""
    from edge_rnn.loadtest import loadtest

    with ModelServer(LSTM) as server:
        result = loadtest(server.url, streams=2, chunk_ms=60_000.0, frame_ms=10.0, duration=0.5)
    assert (result.sent_nothing, len(result.latencies_ms), result.errors) == (1, 1, {}), result.summary()
    assert result.kept_real_time <= 1 and "(1 sent nothing before the run ended" in result.summary()


@pytest.mark.parametrize("model", [DATA / "gru_cell.onnx", DATA / "vad_state.onnx"])
def test_loadtest_of_a_one_frame_per_call_model_runs_at_the_chunk_it_names(model):
    """A model with no time axis was sent chunks of 10 frames, each refused bad_chunk ("p50 nan ms")."""
    with ModelServer(model) as server:
        one_line_error(invoke("loadtest", server.url, "--duration", 0.5, "--streams", 1),
                       "no time axis: it takes one frame per call, got 10 (--chunk-ms 100 / --frame-ms 10); "
                       "pass --chunk-ms 10")
        r = invoke("loadtest", server.url, "--duration", 0.5, "--streams", 1, "--chunk-ms", 10, "--min-real-time", 0)
    assert r.exit_code == 0 and "errors: none" in r.output and "nan" not in r.output, r.output


@pytest.mark.parametrize(("kept", "streams", "least", "code"),
                         [(7, 100, "0.07", 0), (14, 100, "0.14", 0), (13, 100, "0.14", 1), (57, 100, "0.57", 0),
                          (999, 1000, "0.999", 0), (998, 1000, "0.999", 1), (1, 3, "0.3333", 0)])
def test_min_real_time_is_compared_exactly(monkeypatch, kept, streams, least, code):
    """0.07 * 100 is 7.000000000000001 in floats: 7 of 100 streams failed --min-real-time 0.07."""
    from edge_rnn import loadtest as lt

    monkeypatch.setattr(lt, "loadtest", lambda url, **kw: lt.LoadResult(streams=streams, seconds=1.0,
                                                                         kept_real_time=kept))
    r = invoke("loadtest", "http://127.0.0.1:9", "--streams", streams, "--min-real-time", least)
    assert r.exit_code == code, r.output
    if code:
        assert f"expected at least {float(least) * 100:g}%" in r.stderr, r.stderr


@pytest.mark.parametrize(("chunk_ms", "frame_ms", "frames"), [(1000.0, 0.1, 10_000), (0.9, 0.3, 3), (7.0, 0.7, 10)])
def test_loadtest_whole_frames_are_exact_decimals(monkeypatch, chunk_ms, frame_ms, frames):
    """1000 % 0.1 is not 0 in floats: 1000 ms chunks of 0.1 ms frames were refused as not a whole number."""
    from edge_rnn import loadtest as lt

    seen = {}
    monkeypatch.setattr(lt, "_chunk_shape", lambda url, token, n, *a: seen.setdefault("frames", n) and (n, 4))
    monkeypatch.setattr(lt, "_stream", _no_stream)
    lt.loadtest("http://127.0.0.1:9", streams=1, chunk_ms=chunk_ms, frame_ms=frame_ms, duration=0.01)
    assert seen == {"frames": frames}
    with pytest.raises(lt.EdgeRnnError, match="expected a whole number of --frame-ms"):
        lt.loadtest("http://127.0.0.1:9", streams=1, chunk_ms=chunk_ms + frame_ms / 2, frame_ms=frame_ms)


async def _no_stream(*args: object) -> None:
    """A stream that sends nothing (the frames' arithmetic is what is tested)."""


def test_serve_in_process_port_in_use_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = invoke("serve", LSTM, "--host", "127.0.0.1", "--port", port)
    line = one_line_error(r, f"port {port} on 127.0.0.1 is in use")
    assert "serving" not in r.output and "Errno" not in line


def test_the_nonfinite_refusal_names_an_option_serve_has(monkeypatch):
    """The server's NaN error suggested --allow-nonfinite, which serve did not have: it has it now, and it is
    honoured (the server steps NaN); without it the chunk is refused 400 bad_chunk."""
    import httpx

    from edge_rnn.service import _server

    with ModelServer(LSTM) as server:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            sid = c.post("/v1/streams").json()["stream_id"]
            x = np.full((2, 4), np.nan, np.float32)
            r = c.post(f"/v1/streams/{sid}/steps", content=x.tobytes(),
                       headers={"Content-Type": "application/octet-stream", "X-Step": "0"})
    assert r.status_code == 400 and r.json()["code"] == "bad_chunk", r.text
    assert "--allow-nonfinite" in r.json()["message"]
    seen = {}
    monkeypatch.setattr(_server.DrainingServer, "run",
                        lambda self, sockets=None: seen.setdefault("allow", self.service.model.allow_nonfinite))
    r = invoke("serve", LSTM, "--port", 0, "--allow-nonfinite")
    assert r.exit_code == 0 and seen == {"allow": True}, r.output
    assert "stopped" in r.stderr.splitlines()[-1]
    # with --ray it goes to every replica (tests/test_service_ray_args.py)


@pytest.mark.parametrize(("args", "says"), [
    (["--max-connections", "6"], "note: --max-streams lowered to 6 to fit --max-connections 6 (given on the command "
                                 "line)"),
    ([], "note: --max-streams lowered to 10 to fit --max-connections 10 (its default: what this process's open-file "
         "limit, ulimit -n, allows)"),
], ids=["given", "default"])
def test_serve_names_where_the_max_connections_that_lowered_max_streams_came_from(monkeypatch, args, says):
    """It blamed the open-file limit for a --max-connections given on the command line."""
    from edge_rnn.service import _server

    monkeypatch.setattr(_server, "connection_limit", lambda: 10)
    seen = []
    monkeypatch.setattr(_server.DrainingServer, "run", lambda self, sockets=None: seen.append(
        (self.service.config.max_streams, self.service.config.max_connections)))
    r = invoke("serve", LSTM, "--host", "127.0.0.1", "--port", 0, *args)
    assert r.exit_code == 0, r.output
    assert says in r.stderr.splitlines() and ("ulimit" in says) == ("ulimit" in r.stderr), r.stderr
    assert seen == [(int(says.split()[4]),) * 2]


@pytest.mark.parametrize(("args", "says"), [
    (["--max-connections", "6"], "--max-streams 50: expected at most --max-connections 6 (given on the command "
                                 "line; each WebSocket stream holds a connection), got more"),
    ([], "--max-streams 50: expected at most --max-connections 10 (its default: what this process's open-file limit, "
         "ulimit -n, allows; each WebSocket stream holds a connection), got more"),
], ids=["given", "default"])
def test_serve_refuses_max_streams_beyond_max_connections_naming_where_they_came_from(monkeypatch, args, says):
    from edge_rnn.service import _server

    monkeypatch.setattr(_server, "connection_limit", lambda: 10)
    one_line_error(invoke("serve", LSTM, "--port", 0, "--max-streams", "50", *args), says)


def test_serve_says_what_its_drain_did():
    """It printed nothing once it stopped."""
    import signal

    import httpx

    with ModelServer(LSTM, drain_timeout=0.5) as server:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            c.post("/v1/streams").raise_for_status()
        server.server.handle_exit(signal.SIGTERM, None)
        server.thread.join(timeout=20)
        assert not server.thread.is_alive()
    assert server.server.stop_message() == "stopped: drained 0 of 1 open stream; 1 still open were closed"


@pytest.mark.parametrize("option", ["--chunk-ms", "--frame-ms", "--duration", "--min-real-time"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_loadtest_refuses_nan_and_inf_as_usage_errors_naming_the_option(option, value):
    """nan passed click's FloatRange and failed in Fraction() with a traceback (--min-real-time: after the run)."""
    r = invoke("loadtest", "http://127.0.0.1:9", option, value)
    assert r.exit_code == 2 and option in r.stderr and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("name", ["chunk_ms", "frame_ms", "duration"])
def test_the_load_generator_refuses_nan_naming_it(name):
    from edge_rnn.errors import EdgeRnnError
    from edge_rnn.loadtest import loadtest

    with pytest.raises(EdgeRnnError, match=f"{name}: expected a finite number, got nan"):
        loadtest("http://127.0.0.1:9", **{name: float("nan")})


@pytest.mark.parametrize("url", ["http://user:SECRET-PW@127.0.0.1:9", "http://127.0.0.1:9/?token=SECRET-PW"])
def test_loadtest_refuses_a_url_with_a_password_or_a_query_without_quoting_it(url):
    one_line_error(invoke("loadtest", url, "--duration", 1), "url: expected", not_in_output=("SECRET-PW",))


def test_loadtest_asks_for_the_model_at_every_url_form_the_client_takes():
    """It asked GET <url>/v1/model as given: http://h:p/v1/streams, a form the client takes, got a 404."""
    from fake_edge import FakeEdgeServer, described

    from edge_rnn.loadtest import _describe

    with FakeEdgeServer(described([None, 6])) as server:
        for suffix in ("", "/", "/v1/streams", "/v1/streams/ws"):
            assert _describe(server.url + suffix, None)["outputs"][0]["shape"] == [None, 6]
    assert [path for _, path, _ in server.seen] == ["/v1/model"] * 4
