"""The Ray Serve scenario of tests/test_service_ray.py, run as a script inside a fresh network namespace whose only
interface is loopback (Ray binds some ports on every interface whatever it is told).

``python tests/ray_scenario.py OUT.json`` starts ``edge-rnn serve --ray --replicas 2`` with a token, records every
listening socket, runs 20 streams (10 HTTP, 10 WebSocket) in random chunks beside a poisoning client, SIGKILLs
the process of one replica while the streams are mid-way, lets every stream finish, probes routing, auth and
``/metrics``, stops the server with SIGINT, and writes what it saw to OUT.json for the test to judge. It refuses
to run where the network has any interface but loopback, and kills every process left in its namespace at the
end (they can only be its own).
"""

from __future__ import annotations

import base64
import json
import os
import re
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

from edge_rnn.client import HttpStream, SyncWebSocketStream  # noqa: E402
from edge_rnn.runtime import StreamingModel  # noqa: E402

MODEL = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6)
OTHER = REPO / "tests" / "data" / "gru_cell.onnx"
STREAMS, CHUNKS, KILL_AT = 20, 24, 8  # the kill comes once every stream has stepped KILL_AT chunks
TOKEN = "scenario-token-0123456789"


def interfaces() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip() for line in out.splitlines()]


def listeners() -> list[dict]:
    """Every listening TCP socket in this namespace: its address, port and process."""
    out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        parts = line.split()
        address, _, port = parts[3].rpartition(":")
        process = re.search(r'\(\("([^"]+)",pid=(\d+)', line)
        found.append({"address": address, "port": int(port), "process": process.group(1) if process else "",
                      "pid": int(process.group(2)) if process else None})
    return found


def replica_pids() -> list[int]:
    """The pids of the live replicas' processes: those named after a Serve replica that listen (each serves its
    own gRPC port). Ray names a worker after the last actor it ran, so the name alone also finds spent workers."""
    return sorted({s["pid"] for s in listeners() if s["process"].startswith("ray::ServeRepli")})


def chunks(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(1, 8)), 4)).astype(np.float32) for _ in range(CHUNKS)]


def offline(parts: list[np.ndarray]) -> tuple[np.ndarray, int]:
    model = StreamingModel.load(MODEL)
    stream = model.open_stream()
    y = np.concatenate([model.step(stream, c)["y"] for c in parts])
    return y, stream.steps


def steps_in(snapshot: bytes) -> int:
    """The step count in a snapshot's header."""
    n = int.from_bytes(snapshot[16:20], "little")
    return json.loads(snapshot[20:20 + n])["steps"]


class Run:
    def __init__(self, url: str):
        self.url, self.killed_at = url, None
        self.at_kill = threading.Barrier(STREAMS + 1)
        self.results: list[dict] = [{} for _ in range(STREAMS)]

    def stream(self, i: int) -> None:
        parts, r = chunks(i), self.results[i]
        make = HttpStream if i % 2 == 0 else SyncWebSocketStream
        try:
            with make(self.url, token=TOKEN, width=6, checkpoint_every=4) as s:
                r["kind"], r["first_id"] = make.__name__, getattr(s, "id", None)
                ys, after = [], None
                for k, c in enumerate(parts):
                    if k == KILL_AT:
                        self.at_kill.wait(60)
                    started = time.monotonic()
                    ys.append(s.step(c))
                    if self.killed_at is not None and after is None and started >= self.killed_at:
                        after = time.monotonic() - self.killed_at  # the first step after the kill is done
                    time.sleep(0.02)
                r.update(y=base64.b64encode(np.concatenate(ys).tobytes()).decode(), resumes=s.resumes,
                         first_step_after_kill_s=after, steps=steps_in(s.snapshot()))
        except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
            r["error"] = f"{type(e).__name__}: {e}"
            if self.at_kill.n_waiting and not self.at_kill.broken:
                self.at_kill.abort()


def poison(url: str, stop: threading.Event, killed: threading.Event, seen: dict, first_round: threading.Event) -> None:
    """Hostile requests beside the streams until ``stop``, each kind of answer counted in ``seen`` as it comes (apart
    once a replica was killed, ``killed``: the poisoner's own streams die with it, and it does not resume them);
    ``first_round`` is set once every kind was sent. A request that fails outright is counted as an error of its
    kind, not let end the thread (which lost every count with it, once, after the kill)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    other = StreamingModel.load(OTHER)
    foreign = other.open_stream().snapshot()
    with httpx.Client(base_url=url, headers=auth, timeout=10) as h, httpx.Client(base_url=url, timeout=10) as bare:
        def note(tag: str, path: str, client: httpx.Client = h, **kw) -> None:
            try:
                r = client.post(path, **kw)
                try:
                    code = r.json().get("code", "-")
                except ValueError:
                    code = "not-json"
                answer = f"{r.status_code} {code}"
            except Exception as e:  # noqa: BLE001 - a refused connection, a timeout: counted, the run goes on
                answer = f"error {type(e).__name__}"
            key = f"{'after the kill: ' if killed.is_set() else ''}{tag} {answer}"
            seen[key] = seen.get(key, 0) + 1

        while not stop.is_set():
            try:
                sid = h.post("/v1/streams").json()["stream_id"]
            except Exception as e:  # noqa: BLE001 - as in note
                key = f"{'after the kill: ' if killed.is_set() else ''}open error {type(e).__name__}"
                seen[key] = seen.get(key, 0) + 1
                time.sleep(0.05)
                continue
            on = {"X-Session-Id": sid, "Content-Type": "application/octet-stream"}
            steps, guess = f"/v1/streams/{sid}/steps", sid.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            note("nan", steps, content=np.full((2, 4), np.nan, "<f4").tobytes(), headers=on)
            note("ragged", steps, content=b"\x00" * 7, headers=on)
            note("huge", steps, content=b"\x00" * (2 << 20), headers=on)
            note("no-session", steps, content=b"\x00" * 16, headers={"Content-Type": "application/octet-stream"})
            note("foreign-snapshot", "/v1/streams", content=foreign)
            note("garbage-snapshot", "/v1/streams", content=b"EDGERNN-SNAPSHOT" + os.urandom(64))
            note("guessed-id", f"/v1/streams/{guess}/steps", content=b"\x00" * 16,
                 headers={**on, "X-Session-Id": guess})
            note("no-token", "/v1/streams", client=bare)
            first_round.set()
            try:
                h.delete(f"/v1/streams/{sid}", headers={"X-Session-Id": sid})
            except Exception:  # noqa: BLE001, S110 - the stream's replica may be the one killed
                pass
            time.sleep(0.05)


def probes(url: str) -> dict:
    """Routing, auth and metrics on the Ray path, once the streams are done."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    out: dict = {}
    with httpx.Client(base_url=url, headers=auth, timeout=10) as h:
        ids = [h.post("/v1/streams").json()["stream_id"] for _ in range(12)]
        x = np.zeros((1, 4), "<f4").tobytes()
        binary = {"Content-Type": "application/octet-stream"}
        out["routed"] = [h.post(f"/v1/streams/{s}/steps", content=x, headers={**binary, "X-Session-Id": s})
                         .status_code for s in ids for _ in range(3)]
        out["no_header"] = [h.post(f"/v1/streams/{s}/steps", content=x, headers=binary).status_code for s in ids]
        out["no_token"] = httpx.post(f"{url}/v1/streams/{ids[0]}/steps", content=x, timeout=10,
                                     headers={**binary, "X-Session-Id": ids[0]}).status_code
        out["metrics_no_token"] = httpx.get(f"{url}/metrics", timeout=10).status_code
        out["replicas_of_ids"] = sorted({s.split(".")[0] for s in ids})
        out["metrics"] = h.get("/metrics").text
    try:
        with SyncWebSocketStream(url, width=6, resume=False) as s:
            s.step(np.zeros((1, 4), np.float32))
        out["ws_no_token"] = "accepted"
    except Exception as e:  # noqa: BLE001
        out["ws_no_token"] = f"{getattr(e, 'status', '?')} {getattr(e, 'code', type(e).__name__)}"
    return out


def replicas_in(metrics: str) -> list[str]:
    return sorted(set(re.findall(r'edge_rnn_replica_up\{replica="([^"]+)"\} 1\.0', metrics)))


def main(out_path: str) -> int:
    nets = interfaces()
    if nets != ["lo"]:
        print(f"refusing to start Ray: expected a network namespace with only lo, got {nets}", file=sys.stderr)
        return 3
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    report: dict = {"interfaces": nets}
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text(TOKEN)
        t0 = time.monotonic()
        cli = subprocess.Popen([sys.executable, "-m", "edge_rnn.cli", "serve", str(MODEL), "--ray", "--replicas",
                                "2", "--port", str(port), "--token-file", str(token)],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        try:
            report.update(scenario(cli, url, t0))
        finally:
            if cli.poll() is None:
                cli.send_signal(signal.SIGINT)
            try:
                report["cli_exit"] = cli.wait(60)
            except subprocess.TimeoutExpired:
                cli.kill()
                report["cli_exit"] = "killed after 60 s"
            report["left_over"] = kill_namespace()
    Path(out_path).write_text(json.dumps(report))
    return 0


def scenario(cli: subprocess.Popen, url: str, t0: float) -> dict:
    report: dict = {}
    deadline = time.monotonic() + 120
    for line in cli.stderr:
        if "serving" in line:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("Ray Serve did not come up in 120 s")
    threading.Thread(target=lambda: [None for _ in cli.stderr], daemon=True).start()  # keep the pipe drained
    report["up_s"] = time.monotonic() - t0
    report["listeners"] = listeners()
    run, stop, killed, first_round = Run(url), threading.Event(), threading.Event(), threading.Event()
    seen: dict = {}
    poisoner = threading.Thread(target=poison, args=(url, stop, killed, seen, first_round))
    workers = [threading.Thread(target=run.stream, args=(i,)) for i in range(STREAMS)]
    poisoner.start()
    first_round.wait(60)  # every kind of hostile request sent once before the streams start (and so before the kill)
    for w in workers:
        w.start()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as h:
        report["replicas_before"] = replicas_in(h.get("/metrics").text)
        run.at_kill.wait(60)  # every stream is KILL_AT chunks in: none is stepping
        pids = replica_pids()
        report["replica_processes"], report["victim"] = pids, pids[0]
        killed.set()
        os.kill(pids[0], signal.SIGKILL)
        run.killed_at = time.monotonic()
        for w in workers:
            w.join(120)
        stop.set()
        poisoner.join(60)
        # Serve's replacement of the killed replica: up within 60 s (later on a loaded machine), before the probes
        deadline = time.monotonic() + 60
        while len(replicas_in(h.get("/metrics").text)) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        report["replicas_after"] = replicas_in(h.get("/metrics").text)
    report["streams"] = run.results
    report["poison"] = seen
    report["probes"] = probes(url)
    return report


def kill_namespace() -> list[str]:
    """SIGKILL every process left in this network namespace but this one: in a namespace made for this script,
    they are all its own (Ray's, had its shutdown not stopped them)."""
    mine, me, left = os.readlink("/proc/self/ns/net"), os.getpid(), []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        if pid == me:
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/net") == mine:
                left.append(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace"))
                os.kill(pid, signal.SIGKILL)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return left


def serve_run_main(out_path: str) -> int:
    """Ray's own tooling: ``serve run edge_rnn.service.ray:app model=... replicas=2`` (Serve's proxy on
    127.0.0.1:8000, in this namespace), one HTTP and one WebSocket stream, then SIGINT."""
    if interfaces() != ["lo"]:
        print("refusing to start Ray: expected a network namespace with only lo", file=sys.stderr)
        return 3
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    serve = Path(sys.executable).with_name("serve")
    cmd = [str(serve), "run", "edge_rnn.service.ray:app", f"model={MODEL}", "replicas=2"]
    report: dict = {"command": cmd[1:]}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        url, t0 = "http://127.0.0.1:8000", time.monotonic()
        while time.monotonic() - t0 < 120 and proc.poll() is None:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        report["up_s"] = time.monotonic() - t0
        parts = chunks(99)
        with HttpStream(url, width=6) as h, SyncWebSocketStream(url, width=6) as w:
            ys = [(h.step(c), w.step(c)) for c in parts]
        want = offline(parts)[0]
        report["http_equal"] = bool(np.array_equal(np.concatenate([a for a, _ in ys]), want))
        report["ws_equal"] = bool(np.array_equal(np.concatenate([b for _, b in ys]), want))
        report["replicas"] = replicas_in(httpx.get(f"{url}/metrics", timeout=10).text)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            report["exit"] = proc.wait(60)
        except subprocess.TimeoutExpired:
            report["exit"] = "killed after 60 s"
        report["left_over"] = kill_namespace()
    try:
        report["joined"] = join_a_cluster()
    finally:
        report["left_over_after_join"] = kill_namespace()
        Path(out_path).write_text(json.dumps(report))
    return 0


def nan_step(url: str) -> str:
    """``status code`` of one chunk of NaN stepped on a new stream (no token: this server has none)."""
    with httpx.Client(base_url=url, timeout=30) as h:
        sid = h.post("/v1/streams").json()["stream_id"]
        on = {"X-Session-Id": sid, "Content-Type": "application/octet-stream"}
        r = h.post(f"/v1/streams/{sid}/steps", content=np.full((2, 4), np.nan, "<f4").tobytes(), headers=on)
        try:
            code = r.json().get("code", "-") if r.status_code != 200 else "ok"
        except ValueError:
            code = "not-json"
        h.delete(f"/v1/streams/{sid}", headers={"X-Session-Id": sid})
        return f"{r.status_code} {code}"


def join_a_cluster() -> dict:
    """``edge-rnn serve --ray --address`` joins a running cluster (``ray start --head`` here), serves, and on SIGINT
    deletes only its application: the cluster is still up. It serves with ``--allow-nonfinite``: a chunk of NaN is
    stepped by the replica (200), where the other scenarios' replicas refuse it (400 bad_chunk)."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    head = ["--head", "--port", "6380", "--node-ip-address", "127.0.0.1", "--include-dashboard", "false",
            "--num-cpus", "2", "--disable-usage-stats"]
    subprocess.run([ray_bin, "start", *head], check=True, capture_output=True, env=env, timeout=120)
    out: dict = {}
    port = free_port()
    cli = subprocess.Popen([sys.executable, "-m", "edge_rnn.cli", "serve", str(MODEL), "--ray", "--address",
                            "127.0.0.1:6380", "--port", str(port), "--allow-nonfinite"], stderr=subprocess.PIPE,
                           text=True, env=env)
    try:
        lines = []
        for line in cli.stderr:
            lines.append(line.strip())
            if "serving" in line:
                break
        out["said"] = [x for x in lines if x.startswith(("starting", "serving"))]
        parts = chunks(7)
        with HttpStream(f"http://127.0.0.1:{port}", width=6) as h:
            out["equal"] = bool(np.array_equal(np.concatenate([h.step(c) for c in parts]), offline(parts)[0]))
        out["nan_step"] = nan_step(f"http://127.0.0.1:{port}")
    finally:
        cli.send_signal(signal.SIGINT)
        out["exit"] = cli.wait(60)
    status = subprocess.run([ray_bin, "status", "--address", "127.0.0.1:6380"], capture_output=True, text=True,
                            env=env, timeout=60)
    out["cluster_still_up"] = status.returncode == 0
    # not `ray stop`: it stops every Ray process of the machine, not only this namespace's (kill_namespace does)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "--serve-run":
        sys.exit(serve_run_main(sys.argv[2]))
    sys.exit(main(sys.argv[1]))
