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
