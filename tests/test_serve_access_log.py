"""serve --access-log: a real server on a free loopback port logs each HTTP request with the flag and none without;
the bearer token never appears in its output, not even one a client put in the URL."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
ws_client = pytest.importorskip("websockets.sync.client")
from service_streams import MODEL_PATH  # noqa: E402

from edge_rnn.service._access_log import redact  # noqa: E402

TOKEN = "a-token-of-sixteen-chars"


def _serve(tmp_path, *flags: str) -> tuple[str, str, dict[str, int]]:
    """Start ``edge-rnn serve`` on 127.0.0.1 at a free port, send three requests and open a WebSocket, stop it with
    SIGINT; its stdout, its stderr and the status of each request."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text(TOKEN + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "edge_rnn.cli", "serve", str(MODEL_PATH), "--port", str(port),
                             "--token-file", str(tmp_path / "token"), "--drain-timeout", "1", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    status: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 30
        while "healthz" not in status and time.monotonic() < deadline and proc.poll() is None:
            try:
                status["healthz"] = httpx.get(f"{url}/healthz", timeout=1).status_code
            except httpx.TransportError:
                time.sleep(0.1)
        assert status.get("healthz") == 200, "no answer in 30 s" if proc.poll() is None else proc.communicate()
        status["model"] = httpx.get(f"{url}/v1/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code
        status["query"] = httpx.get(f"{url}/v1/model?token={TOKEN}&x=1").status_code  # not how a token is given
        with ws_client.connect(f"ws://127.0.0.1:{port}/v1/streams/ws?token={TOKEN}", open_timeout=10,
                               additional_headers={"Authorization": f"Bearer {TOKEN}"}):
            status["ws"] = 101
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return out, err, status


@pytest.mark.parametrize("flag", [True, False], ids=["--access-log", "default"])
def test_each_request_is_logged_with_the_flag_only_and_never_the_token(tmp_path, flag):
    out, err, status = _serve(tmp_path, *(["--access-log"] if flag else []))
    assert status == {"healthz": 200, "model": 200, "query": 401, "ws": 101}
    logged = [ln for ln in out.splitlines() if '"GET /' in ln]
    if flag:  # HTTP requests on stdout (uvicorn's access log), WebSocket handshakes on stderr (its server log)
        assert '"WebSocket /v1/streams/ws?token=[redacted]" [accepted]' in err, err
        assert any('"GET /healthz HTTP/1.1" 200' in ln and "127.0.0.1:" in ln for ln in logged), out
        assert any('"GET /v1/model HTTP/1.1" 200' in ln for ln in logged), out
        assert any('"GET /v1/model?token=[redacted]&x=1 HTTP/1.1" 401' in ln for ln in logged), out
    else:
        assert logged == [] and '"GET /' not in err and '"WebSocket /' not in err, (out, err)
    assert TOKEN not in out and TOKEN not in err


@pytest.mark.parametrize(("text", "want"), [
    ("/v1/model?token=abc&x=1", "/v1/model?token=[redacted]&x=1"),
    ("/v1/streams/ws?x=1&Access_Token=abc", "/v1/streams/ws?x=1&Access_Token=[redacted]"),
    ("/v1/model?tokens=abc", "/v1/model?tokens=abc"),  # another name: left as it is
    ("/healthz", "/healthz"),
])
def test_credential_query_values_are_redacted(text, want):
    assert redact(text) == want


def test_access_log_is_refused_with_ray():
    from click.testing import CliRunner

    from edge_rnn.cli import main

    r = CliRunner().invoke(main, ["serve", str(MODEL_PATH), "--ray", "--access-log"])
    assert r.exit_code == 2 and "--access-log applies to the standalone server" in r.output
