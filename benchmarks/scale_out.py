"""The standalone server against Ray Serve with 1 and 2 replicas, side by side, in one run (docs/scale-out.md).

    RAY_AUTH_MODE=disabled unshare --net sh -c 'ip link set lo up; PYTHONPATH=$PWD python benchmarks/scale_out.py'

Ray listens on every interface, so the run refuses to start outside a network namespace whose only interface is
loopback (the command above). The demo LSTM (80 -> 256 x 2), 10 ms frames sent as 100 ms chunks, real-time
paced streams. Every server process (for Ray: the driver, GCS, raylet, controller, proxy and replicas, which
inherit the affinity) runs on core 0 (``--server-cores``), and the load generator and this script on core 1, so
the client does not take the server's CPU: two replicas on one core can add no compute, only their cost.
For each of ``edge-rnn serve``, ``--ray --replicas 1`` and ``--ray --replicas 2``, in this order:

1. the no-load round trip of one stream: the median of 200 sequential steps, over WebSocket and over HTTP;
2. one HTTP level: 20 real-time streams, each step a ``POST /v1/streams/{id}/steps`` with ``X-Session-Id``
   (and 10 streams where 20 were over), from ``_scale_out_client.py``;
3. WebSocket levels (``edge-rnn loadtest``) up the ladder, stopping at the first level not served (fewer than
   99% of its streams kept real time, or p99 100 ms or more: ``_served.py``) or that had errors,
   twice in a row (the machine may be shared), then one level halfway between the last good and the first bad
   level.

Beside each level: the server's CPU per message, split for Ray into proxy, each replica and the rest (GCS,
raylet, controller, driver), read from /proc for the server's process tree, and how busy the server's core
was in all (other work on the machine shows there). The Ray proxy's cost per message is stated three ways:
the p50 difference at 20 streams, the no-load round trip difference, and the CPU per message. Ray's Serve
logs are searched for errors and 5xx afterwards (``--keep-logs DIR`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _served import KEPT_PERCENT, P99_MS, parse_loadtest, served

LADDER = (5, 10, 20, 35, 50, 75, 100, 150, 200, 250, 300, 400, 500)
COMMON = 20  # the level every server is compared at
RESERVE = 80  # seconds kept for each run still to come (a Ray run fails its ladder early: about 75 s in all)
CLK = os.sysconf("SC_CLK_TCK")
CLIENT = Path(__file__).with_name("_scale_out_client.py")  # the HTTP load and the round trips
SERVER_CORES = ["0"]  # --server-cores: where every server process runs (the load generator stays on core 1)


@dataclass
class Level:
    streams: int
    kept: int
    p50: float
    p99: float
    chunks: int
    errors: str
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process group over the level
    core0: float = 0.0  # core 0 busy, seconds, over the level (everything on it, not only the server)
    client_cpu: float = float("nan")  # the load generator's CPU, in cores
    wall: float = 0.0

    @property
    def ok(self) -> bool:
        return served(self.kept, self.streams, self.p99) and self.errors == "none"

    def line(self, label: str, transport: str = "ws") -> str:
        per = {k: 1e3 * v / max(self.chunks, 1) for k, v in sorted(self.cpu.items())}
        replicas = [v for k, v in per.items() if k.startswith("replica ")]
        split = ", ".join(f"{k} {v:.2f}" for k, v in per.items() if not k.startswith("replica "))
        if replicas:
            split += f", replicas {sum(replicas):.2f} ({' + '.join(f'{v:.2f}' for v in replicas)})"
        return (f"  {label} {transport}: {self.streams:4d} streams: {self.kept}/{self.streams} kept real time, "
                f"{self.chunks} chunks, p50 {self.p50:.1f} ms, p99 {self.p99:.1f} ms, errors: {self.errors}; "
                f"server {sum(self.cpu.values()) / self.wall:.0%} of a core (cores {','.join(SERVER_CORES)} busy "
                f"{self.core0 / self.wall:.0%} of a core)"
                f", {sum(per.values()):.2f} ms CPU a message{f' ({split})' if split else ''}; load generator "
                f"{self.client_cpu:.0%} of core 1 -> {'ok' if self.ok else 'over'}")


def tree(root: int) -> list[int]:
    """``root`` and all its descendants (by the parent pid in /proc/*/stat)."""
    parents: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def group(pid: int) -> str:
    cmd = _cmdline(pid)
    return "proxy" if "ProxyActor" in cmd else f"replica {pid}" if "ServeReplica" in cmd else "ray other"


def cpu_of(pids: list[int], ray: bool) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process group: for Ray, proxy / each replica / the rest."""
    out: dict[str, float] = {}
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = group(pid) if ray else "server"
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / CLK
    return out


def core0_busy() -> float:
    """CPU seconds the server's cores have been busy (all but idle and iowait), whoever kept them busy."""
    busy = 0.0
    for line in open("/proc/stat"):
        name, *f = line.split()
        if name in {f"cpu{c}" for c in SERVER_CORES}:
            busy += (sum(map(int, f)) - int(f[3]) - int(f[4])) / CLK
    return busy


class Server:
    """One server on core 0, up until :meth:`stop`; ``ray``: the processes of its Ray are counted in its tree."""

    def __init__(self, label: str, cmd: list[str], port: int, ray: bool, log: Path):
        self.label, self.port, self.ray, self.url = label, port, ray, f"http://127.0.0.1:{port}"
        self.log = log.open("w")
        self.proc = subprocess.Popen(["taskset", "-c", ",".join(SERVER_CORES), *cmd, "--port", str(port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.seen: dict[int, str] = {}

    def wait_up(self, timeout: float = 90) -> float:
        import httpx

        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/v1/model", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.label} did not answer in {timeout:.0f} s")

    def pids(self) -> list[int]:
        pids = tree(self.proc.pid)
        for pid in pids:  # remembered with their command line, to kill leftovers (and only them) at the end
            self.seen.setdefault(pid, _cmdline(pid))
        return pids

    def measure(self, run) -> Level:
        pids = self.pids()
        c0, b0, t0 = cpu_of(pids, self.ray), core0_busy(), time.perf_counter()
        level = run()
        c1, b1, level.wall = cpu_of(pids, self.ray), core0_busy(), time.perf_counter() - t0
        level.cpu = {k: c1.get(k, 0.0) - c0.get(k, 0.0) for k in c1}
        level.core0 = b1 - b0
        return level

    def stop(self) -> list[str]:
        """SIGINT (the CLI stops its own Ray), then SIGKILL to any process of the tree still there: named back."""
        self.pids()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(1)
        left = [f"{pid} {cmd[:60]}" for pid, cmd in self.seen.items() if cmd and _cmdline(pid) == cmd]
        for pid, cmd in self.seen.items():
            if cmd and _cmdline(pid) == cmd:
                os.kill(pid, signal.SIGKILL)
        self.log.close()
        return left


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ws_level(url: str, streams: int, duration: float) -> Level:
    out = subprocess.run(["taskset", "-c", "1", sys.executable, "-m", "edge_rnn.cli", "loadtest", url, "--streams",
                          str(streams), "--duration", str(duration)], capture_output=True, text=True,
                         timeout=duration + 120)
    line = parse_loadtest(out.stdout)
    if line is None:
        tail = (out.stdout + out.stderr)[-300:]
        return Level(streams, 0, float("nan"), float("nan"), 0, f"loadtest failed: {tail!r}")
    return Level(streams, line.kept, line.p50, line.p99, line.chunks, line.errors, client_cpu=line.client_cpu)


def client(*args: str, timeout: float) -> dict:
    out = subprocess.run(["taskset", "-c", "1", sys.executable, str(CLIENT), *args], capture_output=True,
                         text=True, timeout=timeout)
    if out.returncode:
        raise RuntimeError(f"client {args[0]} failed: {out.stderr[-600:]}")
    return json.loads(out.stdout)


def http_level(url: str, streams: int, duration: float) -> Level:
    try:
        r = client("http", url, str(streams), str(duration), timeout=duration + 120)
    except RuntimeError as e:
        return Level(streams, 0, float("nan"), float("nan"), 0, str(e)[-300:])
    return Level(streams, r["kept"], r["p50"], r["p99"], r["chunks"], r["errors"], client_cpu=r["client_cpu"])


@dataclass
class Result:
    label: str
    up_s: float = 0.0
    rtt: dict = field(default_factory=dict)
    http: Level | None = None
    http_half: Level | None = None  # HTTP at half the common level, measured where the common level was over
    levels: dict[int, Level] = field(default_factory=dict)
    capacity: int = 0
    note: str = ""
    leftovers: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)


def ladder(server: Server, res: Result, duration: float, deadline: float) -> None:
    """WebSocket levels up the ladder to the first bad one, one halfway level, and the common level if missed."""
    bad = None
    for n in LADDER:
        if time.monotonic() > deadline:
            res.note = f"stopped at {n} streams: the time budget ran out"
            break
        lvl = res.levels[n] = server.measure(lambda n=n: ws_level(server.url, n, duration))
        print(lvl.line(res.label), flush=True)
        if not lvl.ok:  # once more: the machine is shared, and one burst of another's work can fail a level
            time.sleep(1)
            lvl = res.levels[n] = server.measure(lambda n=n: ws_level(server.url, n, duration))
            print(lvl.line(res.label) + " (second try)", flush=True)
        if not lvl.ok:
            bad = n
            break
        res.capacity = n
        time.sleep(1)
    if bad is not None and bad - res.capacity > max(4, res.capacity // 10) and time.monotonic() < deadline:
        mid = (bad + res.capacity) // 2
        lvl = res.levels[mid] = server.measure(lambda: ws_level(server.url, mid, duration))
        print(lvl.line(res.label), flush=True)
        res.capacity = mid if lvl.ok else res.capacity
    if COMMON not in res.levels:
        res.levels[COMMON] = server.measure(lambda: ws_level(server.url, COMMON, duration))
        print(res.levels[COMMON].line(res.label), flush=True)


def run_one(label: str, cmd: list[str], ray: bool, args: argparse.Namespace, deadline: float, logs: Path) -> Result:
    res = Result(label)
    server = Server(label, cmd, free_port(), ray, logs / f"{label}.log")
    try:
        res.up_s = server.wait_up()
        print(f"{label}: up in {res.up_s:.1f} s; processes on cores {','.join(SERVER_CORES)}: {len(server.pids())}",
              flush=True)
        res.rtt = client("rtt", server.url, str(args.rtt_steps), timeout=120)
        print(f"  {label}: one stream, no load: median round trip WebSocket {res.rtt['ws']:.2f} ms, "
              f"HTTP {res.rtt['http']:.2f} ms", flush=True)
        res.http = server.measure(lambda: http_level(server.url, COMMON, args.duration))
        print(res.http.line(label, "http"), flush=True)
        if not res.http.ok:
            time.sleep(1)
            res.http_half = server.measure(lambda: http_level(server.url, COMMON // 2, args.duration))
            print(res.http_half.line(label, "http"), flush=True)
        time.sleep(1)
        ladder(server, res, args.duration, deadline)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        res.note = f"failed: {e}"
        print(f"  {label}: {res.note}", flush=True)
    finally:
        res.leftovers = server.stop()
    if ray:
        res.log_errors = ray_log_errors(args.keep_logs and args.keep_logs / label.replace(", ", "-").replace(" ", "_"))
    return res


def ray_log_errors(keep: Path | None) -> list[str]:
    """Lines of the newest Ray session's Serve logs that report an error or a 5xx; the logs copied to ``keep``."""
    logs = sorted(Path(os.environ["RAY_TMPDIR"], "ray").glob("session_2*"))[-1:]
    if keep:
        for d in logs:
            shutil.copytree(d / "logs", keep, dirs_exist_ok=True)
    hits = []
    for f in (p for d in logs for p in (d / "logs" / "serve").glob("*.log")):
        for line in f.read_text(errors="replace").splitlines():
            if re.search(r"Traceback|\bERROR\b|\b[A-Z]+ \S* 5\d\d ", line):
                hits.append(f"{f.name}: {line[:200]}")
    return hits


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    import ray

    from edge_rnn.runtime._host import describe_host, host_record

    return (f"{describe_host(host_record())}; ray {ray.__version__}, Python {sys.version.split()[0]}; server on "
            f"cores {','.join(SERVER_CORES)}, load generator on core 1 of the same machine")


def table(results: list[Result]) -> str:
    rows = [f"| server | WS streams served (>= {KEPT_PERCENT}% kept real time, p99 < {P99_MS:g} ms) "
            f"| WS, {COMMON} streams: p50 / p99 (kept real time) | HTTP, "
            f"{COMMON} streams: p50 / p99 (kept) | one stream, no load: WS / HTTP | server CPU a WS message at "
            f"{COMMON} streams (of it, the proxy) | HTTP message (proxy) | streams one core's CPU would carry |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        c, h = r.levels.get(COMMON), r.http
        half = f"; {COMMON // 2} streams: {_cell(r.http_half)}" if r.http_half else ""
        note = f" ({r.note})" if r.note else ""
        rows.append(f"| {r.label} | {r.capacity}{note} | {_cell(c)} | {_cell(h)}{half} | "
                    + (f"{r.rtt['ws']:.2f} / {r.rtt['http']:.2f} ms" if r.rtt else "-")
                    + f" | {_cpu_cell(c)} | {_cpu_cell(h)} | {_cpu_bound(r)} |")
    return "\n".join(rows)


def _cpu_bound(r: Result) -> str:
    """A core divided by the CPU a stream takes (10 messages a second) at the busiest WebSocket level measured:
    the capacity that other work on a shared machine does not lower (the server's own CPU time only)."""
    top = max((lvl for lvl in r.levels.values() if lvl.chunks), key=lambda lvl: lvl.streams, default=None)
    if top is None:
        return "-"
    ms = 1e3 * sum(top.cpu.values()) / top.chunks
    return f"{100 / ms:.0f} ({ms:.2f} ms a message at {top.streams} streams)"


def _cell(lvl: Level | None) -> str:
    if lvl is None:
        return "-"
    return (f"{lvl.p50:.1f} / {lvl.p99:.1f} ms ({lvl.kept}/{lvl.streams})"
            + ("" if lvl.errors == "none" else f"; errors: {lvl.errors}"))


def _cpu_cell(lvl: Level | None) -> str:
    if lvl is None or not lvl.chunks:
        return "-"
    proxy = f" ({1e3 * lvl.cpu['proxy'] / lvl.chunks:.2f} ms)" if "proxy" in lvl.cpu else ""
    return f"{1e3 * sum(lvl.cpu.values()) / lvl.chunks:.2f} ms{proxy}"


def proxy_cost(results: list[Result]) -> str:
    by = {r.label: r for r in results}
    alone, one = by.get("standalone"), by.get("ray, 1 replica")
    if not (alone and one and COMMON in alone.levels and COMMON in one.levels and alone.rtt and one.rtt):
        return "the proxy's cost: not measured (a run failed)"
    a, b = alone.levels[COMMON], one.levels[COMMON]
    cpu = 1e3 * (sum(b.cpu.values()) / b.chunks - sum(a.cpu.values()) / a.chunks)
    return (f"The Ray proxy per WebSocket message: p50 +{b.p50 - a.p50:.1f} ms at {COMMON} streams; no-load round "
            f"trip +{one.rtt['ws'] - alone.rtt['ws']:.2f} ms (HTTP +{one.rtt['http'] - alone.rtt['http']:.2f} ms); "
            f"server CPU +{cpu:.2f} ms a message, of which the proxy process "
            f"{1e3 * b.cpu.get('proxy', 0) / b.chunks:.2f} ms")


def namespaced() -> bool:
    """Whether this process's only network interface is loopback (a fresh `unshare --net` namespace)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=5.0, help="seconds a level")
    ap.add_argument("--rtt-steps", type=int, default=200)
    ap.add_argument("--budget", type=float, default=360.0, help="seconds for the whole run; levels stop past it")
    ap.add_argument("--keep-logs", type=Path, default=None, help="a folder to copy each Ray run's logs into")
    ap.add_argument("--server-cores", default="0", help="the cores every server process runs on, e.g. 0,1 "
                    "(the load generator runs on core 1 in any case)")
    ap.add_argument("--only", choices=("standalone", "ray1", "ray2"), action="append")
    args = ap.parse_args()
    SERVER_CORES[:] = args.server_cores.split(",")
    if not namespaced():
        sys.exit("Ray listens on every interface: run this in a loopback-only namespace, as the docstring says")
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs two cores: the server on one, the load generator on the other")
    os.sched_setaffinity(0, {1})
    import torch

    import edge_rnn

    start = time.monotonic()
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="scale_out_") as tmp:
        os.environ["RAY_TMPDIR"] = tmp  # this run's Ray sessions, apart from any other Ray here
        model = Path(tmp) / "demo_lstm.onnx"
        torch.manual_seed(0)
        edge_rnn.export(torch.nn.LSTM(80, 256, num_layers=2).eval(), model, long_steps=0)
        serve = [sys.executable, "-m", "edge_rnn.cli", "serve", str(model), "--threads", "1", "--max-wait-ms", "5"]
        runs = [("standalone", "standalone", serve, False),
                ("ray1", "ray, 1 replica", [*serve, "--ray", "--replicas", "1"], True),
                ("ray2", "ray, 2 replicas", [*serve, "--ray", "--replicas", "2"], True)]
        runs = [r for r in runs if not args.only or r[0] in args.only]
        results = []
        for i, (_, label, cmd, ray) in enumerate(runs):  # each Ray run after this one is kept RESERVE seconds
            deadline = start + args.budget - RESERVE * (len(runs) - 1 - i) - 15
            results.append(run_one(label, cmd, ray, args, deadline, Path(tmp)))
        report_problems(results)
    print(f"\nmachine: {machine()}\n\n{table(results)}\n\n{proxy_cost(results)}\n\nwhole run: "
          f"{time.monotonic() - start:.0f} s; {args.duration:g} s a level")


def report_problems(results: list[Result]) -> None:
    for r in results:
        for line in r.leftovers:
            print(f"{r.label}: left running after the stop, killed: {line}")
        for line in r.log_errors[:10]:
            print(f"{r.label}: Ray log: {line}")
        if r.log_errors:
            print(f"{r.label}: {len(r.log_errors)} error lines in the Serve logs")

if __name__ == "__main__":
    main()
