"""What `edge-rnn serve` says while it stops: a line when the drain begins (and a second Ctrl-C really skips it),
and with --ray a line on the signal and one once stopped. A real server on a free loopback port, stopped by the
test; the --ray lines through the CLI with Ray Serve's run replaced (no cluster: starting one takes minutes)."""

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
from cli_errors import invoke  # noqa: E402
from service_streams import MODEL_PATH  # noqa: E402

DRAIN = 120  # seconds of --drain-timeout: far longer than a stop the second signal cut short may take


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("no answer in 30 s" if proc.poll() is None else proc.communicate())


@pytest.mark.parametrize("streams", [0, 2])
def test_the_drain_says_it_began_and_a_second_ctrl_c_skips_it(streams):
    """Was: nothing was printed until the drain ended, up to --drain-timeout (10 s by default) after Ctrl-C."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge_rnn.cli", "serve", str(MODEL_PATH), "--port", str(port),
                             "--drain-timeout", str(DRAIN)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _up(f"http://127.0.0.1:{port}", proc)
        for _ in range(streams):
            httpx.post(f"http://127.0.0.1:{port}/v1/streams").raise_for_status()
        proc.send_signal(signal.SIGINT)
        lines = [proc.stderr.readline(), proc.stderr.readline()]  # "serving ...", then the drain's line
        if streams:
            assert lines[1] == f"draining {streams} open streams (up to --drain-timeout {DRAIN} s); Ctrl-C again to " \
                               "stop without waiting for them\n", lines
            proc.send_signal(signal.SIGINT)
        else:
            assert lines[1] == "stopping: no open streams to drain\n", lines
        _, err = proc.communicate(timeout=DRAIN / 4)  # well before the drain's end: it was skipped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    last = err.strip().splitlines()[-1]
    assert last == ("stopped before the drain ended (a second signal)" if streams else
                    "stopped: drained 0 of 0 open streams"), err


@pytest.mark.parametrize("address", [None, "ray://head:10001"])
def test_serve_ray_says_when_it_stops(monkeypatch, address):
    """Was: `serve --ray` printed nothing once stopped. Ray Serve's run is replaced by one that is ready at once and
    then stopped by a signal (as the real one calls back); the lines are the CLI's."""
    pytest.importorskip("ray")
    from edge_rnn.service import ray as ray_serve

    def run(options, *, host, port, address, ready=None, stopping=None):
        ready(f"http://{host}:{port}")
        stopping()

    monkeypatch.setattr(ray_serve, "run", run)
    r = invoke("serve", MODEL_PATH, "--ray", "--drain-timeout", 3, *(["--address", address] if address else []))
    assert r.exit_code == 0, r.output
    lines = r.stderr.splitlines()
    assert lines[-2] == "stopping: the replicas drain their streams (up to --drain-timeout 3 s)", lines
    assert lines[-1] == ("stopped: the application deleted and the local Ray stopped" if address is None else
                         f"stopped: the application deleted from the Ray cluster at {address}, which keeps running")


def test_ray_run_calls_stopping_on_a_signal_before_the_replicas_drain(monkeypatch):
    """ray.run's own path to the stop line, with Ray's calls replaced (none starts anything): the signal handler it
    installs stops it, ``stopping`` is called, then the application is deleted; the handlers are restored."""
    pytest.importorskip("ray")
    import ray

    from edge_rnn.service import ray as ray_serve

    said: list[str] = []
    monkeypatch.setattr(ray, "init", lambda **kw: said.append("init"))
    monkeypatch.setattr(ray_serve.serve, "start", lambda **kw: None)
    monkeypatch.setattr(ray_serve.serve, "run_many", lambda *a, **kw: None)
    monkeypatch.setattr(ray_serve, "_stop", lambda local: said.append(f"stop local={local}"))

    def started(stop):  # the application runs; then SIGTERM arrives, through the handler run installed
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
        return True

    monkeypatch.setattr(ray_serve, "_started", started)
    before = signal.getsignal(signal.SIGTERM)
    ray_serve.run(ray_serve.RayOptions(model="m.onnx"), host="127.0.0.1", port=0, address=None,
                  ready=lambda url: said.append(url), stopping=lambda: said.append("stopping"))
    assert said == ["init", "http://127.0.0.1:0", "stopping", "stop local=True"]
    assert signal.getsignal(signal.SIGTERM) is before
