"""serve --access-log: a real server on a free loopback port logs each HTTP request with the flag and none without,
those its transport answers 408 too; the bearer token never appears in its output, not even one a client put in the
URL, nor does a stream id, however the path spells it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
ws_client = pytest.importorskip("websockets.sync.client")
from service_streams import MODEL_PATH  # noqa: E402

from edge_rnn.service._access_log import redact  # noqa: E402

TOKEN = "a-token-of-sixteen-chars"


def _stalled(port: int, request: bytes) -> bytes:
    """What the server answers ``request``, sent and then never finished (its headers, or its body, stall)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        return answer


def _serve(tmp_path, *flags: str) -> tuple[str, str, dict[str, int], str]:
    """Start ``edge-rnn serve`` on 127.0.0.1 at a free port, send requests (two by a stream's id, two that stall)
    and open a WebSocket, stop it with SIGINT; its stdout, its stderr, the status of each request and the id of the
    stream left open (the drain closes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text(TOKEN + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "edge_rnn.cli", "serve", str(MODEL_PATH), "--port", str(port),
                             "--token-file", str(tmp_path / "token"), "--drain-timeout", "1",
                             "--header-timeout", "1", "--message-timeout", "1", *flags],
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
        auth = {"Authorization": f"Bearer {TOKEN}"}
        sid = httpx.post(f"{url}/v1/streams", headers=auth).json()["stream_id"]
        status["snapshot"] = httpx.get(f"{url}/v1/streams/{sid}/snapshot", headers=auth).status_code
        spelled = "".join(f"%{b:02X}" for b in sid.encode())  # every character percent-encoded: the same stream
        status["encoded"] = httpx.get(f"{url}/v1/streams/{quote(spelled, safe='%')}/snapshot",
                                      headers=auth).status_code
        status["headers"] = int(_stalled(port, f"GET /v1/model?token={TOKEN} HTTP/1.1\r\n".encode()).split()[1])
        status["body"] = int(_stalled(port, f"POST /v1/streams/{sid}/steps HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                            f"Bearer {TOKEN}\r\nContent-Type: application/octet-stream\r\n"
                                            "Content-Length: 16\r\n\r\n\0\0".encode()).split()[1])
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
    return out, err, status, sid


@pytest.mark.parametrize("flag", [True, False], ids=["--access-log", "default"])
def test_each_request_is_logged_with_the_flag_only_and_never_the_token(tmp_path, flag):
    """Was: a 408 from the transport (stalled headers or body) was missing from the log; every stream id was
    written whole (on a server without a token, all anyone needs to snapshot or close that stream)."""
    out, err, status, sid = _serve(tmp_path, *(["--access-log"] if flag else []))
    assert status == {"healthz": 200, "model": 200, "query": 401, "snapshot": 200, "encoded": 200, "headers": 408,
                      "body": 408, "ws": 101}
    logged = [ln for ln in out.splitlines() if '"GET /' in ln or '"POST /' in ln or '" 408' in ln]
    if flag:  # HTTP requests on stdout (uvicorn's access log), WebSocket handshakes on stderr (its server log)
        assert '"WebSocket /v1/streams/ws?token=[redacted]" [accepted]' in err, err
        assert any('"GET /healthz HTTP/1.1" 200' in ln and "127.0.0.1:" in ln for ln in logged), out
        assert any('"GET /v1/model HTTP/1.1" 200' in ln for ln in logged), out
        assert any('"GET /v1/model?token=[redacted]&x=[redacted] HTTP/1.1" 401' in ln for ln in logged), out
        shown = f"/v1/streams/{sid[:4]}[...]"
        assert sum(f'"GET {shown}/snapshot HTTP/1.1" 200' in ln for ln in logged) == 2, out
        assert any('"- - HTTP/1.1" 408' in ln and "127.0.0.1:" in ln for ln in logged), out  # headers stalled
        assert any(f'"POST {shown}/steps HTTP/1.1" 408' in ln for ln in logged), out  # its body stalled
    else:
        assert logged == [] and '"GET /' not in err and '"WebSocket /' not in err, (out, err)
    assert TOKEN not in out and TOKEN not in err
    assert sid[4:] not in out and sid[4:] not in err


SID = "AbCd" + "e" * 28  # a stream id's shape: 32 characters


@pytest.mark.parametrize(("text", "want"), [
    ("/v1/model?token=abc&x=1", "/v1/model?token=[redacted]&x=[redacted]"),  # the service takes no query values
    ("/v1/streams/ws?x=1&Access_Token=abc", "/v1/streams/ws?x=[redacted]&Access_Token=[redacted]"),
    ("/v1/model?tok%65n=abc&%74oken=abc", "/v1/model?token=[redacted]&token=[redacted]"),  # names decoded
    ("/v1/model?token%5B%5D=abc&a+b=c", "/v1/model?token[]=[redacted]&a%20b=[redacted]"),
    ("/v1/model?abc&=abc&&", "/v1/model?[redacted]&=[redacted]"),  # no name: all value
    ("/v1/model?a%0D%0Ab=1", "/v1/model?a%0D%0Ab=[redacted]"),  # decoded, quoted again: still one line
    ("/v1/model?" + "n" * 40 + "=1", "/v1/model?" + "n" * 32 + "[...]=[redacted]"),
    (f"/v1/streams/{SID}/steps", "/v1/streams/AbCd[...]/steps"),
    (f"/v1/streams/{SID}", "/v1/streams/AbCd[...]"),
    ("/v1/streams/" + "".join(f"%{b:02x}" for b in SID.encode()) + "/snapshot", "/v1/streams/AbCd[...]/snapshot"),
    (f"/v1/streams%2F{SID}/steps", "/v1/stre[...]/steps"),  # one segment to the logger, the stream's to routing
    (f"/v1/stream/{SID}/steps", "/v1/stre[...]/AbCd[...]/steps"),  # a 404 keeps the id as secret
    ("/v1/streams/%0A%0Dxyzw", "/v1/streams/%0A%0Dxy[...]"),
    ("/v1/%73treams/ws", "/v1/streams/ws"),
    ("/healthz", "/healthz"), ("/", "/"), ("/docs", "/docs"), ("/abc", "/abc"),
])
def test_only_route_words_and_query_names_are_logged_whole(text, want):
    assert redact(text) == want


def test_access_log_is_refused_with_ray():
    from click.testing import CliRunner

    from edge_rnn.cli import main

    r = CliRunner().invoke(main, ["serve", str(MODEL_PATH), "--ray", "--access-log"])
    assert r.exit_code == 2 and "--access-log applies to the standalone server" in r.output
