"""The outside probe's Ray Serve scenario (tests/test_probe_ray.py), run as a script inside a fresh network namespace
whose only interface is loopback, as tests/ray_scenario.py is.

``python tests/probe_ray_scenario.py OUT.json``: ``edge-rnn serve --ray --replicas 2 --max-streams 3`` with a
token; hostile requests on the Ray path (session header tricks, odd and long stream ids, /metrics with other
methods, a WebSocket message over the limit through the proxy, a large HTTP body through the proxy, more streams
than one replica holds); then one replica SIGKILLed and /metrics asked at once; then SIGINT. Then a second start
asking for more CPUs than the machine has (``--replicas 3`` on 2 cores): does the command say so, or wait?
Every process left in the namespace is killed at the end (they can only be this script's).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hostile_clients import free_port  # noqa: E402
from ray_scenario import interfaces, kill_namespace, listeners, replica_pids  # noqa: E402

MODEL = REPO / "tests" / "data" / "lstm_layer.onnx"
TOKEN = "probe-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIN = {"Content-Type": "application/octet-stream"}
X = np.zeros((1, 4), "<f4").tobytes()


def start(port: int, token: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_rnn.cli", "serve", str(MODEL), "--ray", "--port", str(port),
                             "--token-file", str(token), *extra], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def wait_serving(cli: subprocess.Popen, seconds: float) -> tuple[bool, list[str]]:
    """Whether the command said "serving" within ``seconds``; the lines it wrote meanwhile."""
    lines: list[str] = []
    done = threading.Event()

    def read() -> None:
        for line in cli.stderr:
            lines.append(line.rstrip())
            if "serving" in line:
                done.set()
        done.set()

    threading.Thread(target=read, daemon=True).start()
    done.wait(seconds)
    return any("serving" in line for line in lines), lines


def stop(cli: subprocess.Popen, seconds: float = 60) -> object:
    if cli.poll() is None:
        cli.send_signal(signal.SIGINT)
    try:
        return cli.wait(seconds)
    except subprocess.TimeoutExpired:
        cli.kill()
        return f"killed after {seconds:g} s"


def code(r: httpx.Response) -> str:
    try:
        return f"{r.status_code} {r.json().get('code', '-')}"
    except ValueError:
        return f"{r.status_code} not-json:{r.text[:60]!r}"


def headers_probe(h: httpx.Client) -> dict:
    out: dict = {}
    ids = [h.post("/v1/streams").json()["stream_id"] for _ in range(4)]
    by_replica: dict[str, list[str]] = {}
    for s in ids:
        by_replica.setdefault(s.split(".")[0], []).append(s)
    out["ids"] = ids
    a = ids[0]
    other = next((s for s in ids if s.split(".")[0] != a.split(".")[0]), None)
    step = f"/v1/streams/{a}/steps"
    out["underscore_header"] = [code(h.post(step, content=X, headers={**BIN, "X_Session_Id": a})) for _ in range(4)]
    out["lowercase_header"] = [code(h.post(step, content=X, headers={**BIN, "x-session-id": a})) for _ in range(4)]
    if other:
        out["other_replicas_session"] = [code(h.post(step, content=X, headers={**BIN, "X-Session-Id": other}))
                                         for _ in range(4)]
    out["two_headers_same"] = [code(h.post(step, content=X, headers=[*BIN.items(), ("X-Session-Id", a),
                                                                     ("X-Session-Id", a)])) for _ in range(4)]
    long_id = a.split(".")[0] + "." + "A" * 20000
    out["long_id"] = code(h.post(f"/v1/streams/{long_id}/steps", content=X, headers={**BIN, "X-Session-Id": long_id}))
    out["no_dot"] = code(h.post("/v1/streams/abc/steps", content=X, headers={**BIN, "X-Session-Id": "abc"}))
    out["delete_no_header"] = code(h.delete(f"/v1/streams/{a}"))
    out["snapshot_no_header"] = code(h.get(f"/v1/streams/{a}/snapshot"))
    out["metrics_post"] = code(h.post("/metrics"))
    out["metrics_head"] = h.head("/metrics").status_code
    out["metrics_slash"] = h.get("/metrics/").status_code
    out["metrics_no_token_slash"] = httpx.get(str(h.base_url) + "/metrics/", timeout=10).status_code
    out["model_no_token"] = httpx.get(str(h.base_url) + "/v1/model", timeout=10).status_code
    out["docs_no_token"] = httpx.get(str(h.base_url) + "/docs", timeout=10).status_code
    out["openapi_no_token"] = httpx.get(str(h.base_url) + "/openapi.json", timeout=10).status_code
    for s in ids:
        h.delete(f"/v1/streams/{s}", headers={"X-Session-Id": s})
    return out


def capacity_probe(h: httpx.Client) -> dict:
    """--max-streams 3 per replica, 2 replicas: 6 streams fit; how many of 6 opens are refused, in each of 8 rounds
    (a random placement fits all 6 in about 1 round of 3)?"""
    out: dict = {"opens": [], "deletes": []}
    for _ in range(8):
        got = [h.post("/v1/streams") for _ in range(6)]
        ids = [r.json()["stream_id"] for r in got if r.status_code == 201]
        out["opens"].append([code(r) if r.status_code != 201 else "201" for r in got])
        out["deletes"] += [h.delete(f"/v1/streams/{s}", headers={"X-Session-Id": s}).status_code for s in ids]
    return out


def ws_big(url: str) -> dict:
    """A 2 MiB binary message (over --max-message-bytes, 1 MiB) and a 20 MiB one, over the proxy."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    out = {}
    for name, size in (("2MiB", 2 << 20), ("20MiB", 20 << 20)):
        try:
            with connect(url.replace("http", "ws") + "/v1/streams/ws", additional_headers=AUTH, max_size=None,
                         open_timeout=10) as ws:
                ws.send(b"\0" * size)
                try:
                    reply = ws.recv(timeout=20)
                    out[name] = f"reply {str(reply)[:120]}"
                    ws.recv(timeout=10)
                except ConnectionClosed as e:
                    out[name] = out.get(name, "") + f" closed {e.rcvd.code if e.rcvd else None} " \
                                                    f"{e.rcvd.reason if e.rcvd else ''}"
                except TimeoutError:
                    out[name] = out.get(name, "") + " no answer in 20 s"
        except Exception as e:  # noqa: BLE001
            out[name] = f"{type(e).__name__}: {e}"[:200]
    out["client_20MiB"] = client_big(url, 20 << 20)
    return out


def client_big(url: str, size: int) -> str:
    """What edge_rnn.client says of a message over the proxy's own limit (16 MiB): status and code."""
    from edge_rnn.client import ServiceError, SyncWebSocketStream

    try:
        with SyncWebSocketStream(url, token=TOKEN, resume=False) as s:
            s.step(np.zeros((size // 16, 4), np.float32))
        return "accepted"
    except ServiceError as e:
        return f"{e.status} {e.code}"


def proxy_rss() -> int:
    pid = next(s["pid"] for s in listeners() if "ProxyActor" in s["process"])
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) << 10


def big_body(h: httpx.Client) -> dict:
    """A 96 MiB body for a stream's step (the replica refuses past 1 MiB): does the proxy hold it?"""
    opened = h.post("/v1/streams")
    if opened.status_code != 201:
        return {"error": f"open: {code(opened)}"}
    sid = opened.json()["stream_id"]
    before = proxy_rss()
    peak = [before]
    stop_ = threading.Event()

    def watch() -> None:
        while not stop_.is_set():
            peak[0] = max(peak[0], proxy_rss())
            time.sleep(0.05)

    t = threading.Thread(target=watch)
    t.start()

    def body():
        for _ in range(96):
            yield b"\0" * (1 << 20)

    t0 = time.monotonic()
    try:
        r = code(h.post(f"/v1/streams/{sid}/steps", content=body(), headers={**BIN, "X-Session-Id": sid}))
    except Exception as e:  # noqa: BLE001
        r = f"{type(e).__name__}: {e}"[:200]
    stop_.set()
    t.join()
    return {"answer": r, "seconds": time.monotonic() - t0, "proxy_rss_growth": peak[0] - before}


def metrics_with_a_dead_replica(h: httpx.Client) -> dict:
    pids = replica_pids()
    os.kill(pids[0], signal.SIGKILL)
    out: dict = {"killed": pids[0]}
    t0 = time.monotonic()
    try:
        r = h.get("/metrics", timeout=30)
        out["status"] = r.status_code
        out["up_lines"] = [line for line in r.text.splitlines() if line.startswith("edge_rnn_replica_up")]
    except Exception as e:  # noqa: BLE001
        out["status"] = f"{type(e).__name__}: {e}"[:200]
    out["seconds"] = time.monotonic() - t0
    return out


def main(out_path: str) -> int:
    if interfaces() != ["lo"]:
        print("refusing to start Ray: expected a network namespace with only lo", file=sys.stderr)
        return 3
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text(TOKEN)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cli = start(port, token, "--replicas", "2", "--max-streams", "3")
        try:
            up, lines = wait_serving(cli, 120)
            report["up"] = up
            if up:
                with httpx.Client(base_url=url, headers=AUTH, timeout=30) as h:
                    for name, probe in (("headers", headers_probe), ("capacity", capacity_probe),
                                        ("big_body", big_body), ("metrics_dead", metrics_with_a_dead_replica)):
                        try:
                            report[name] = probe(h)
                        except Exception as e:  # noqa: BLE001
                            report[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
                report["ws_big"] = ws_big(url)
        finally:
            report["cli_exit"] = stop(cli)
            report["left_over_1"] = kill_namespace()
        # more CPUs asked than the machine has: 3 replicas of 1 CPU each on 2 cores
        cli = start(free_port(), token, "--replicas", "3")
        try:
            up, lines = wait_serving(cli, 30)
            report["overcommit"] = {"serving": up, "exited": cli.poll(), "lines": lines[-5:]}
        finally:
            report["overcommit"]["exit_after_sigint"] = stop(cli, 20)
            report["left_over_2"] = kill_namespace()
    Path(out_path).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
