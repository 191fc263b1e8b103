"""edge-rnn serve --ray on a real local Ray cluster: 2 replicas, 20 streams beside a poisoning client, one replica
SIGKILLed mid-way (tests/ray_scenario.py, run once for the module in a fresh network namespace whose only
interface is loopback, as root can make one; skipped where it cannot be made or Ray is not installed)."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest import REPO

pytest.importorskip("ray")

from ray_namespace import run_scenario, skip_without_namespace  # noqa: E402
from ray_scenario import KILL_AT, STREAMS, chunks, offline  # noqa: E402

SCENARIO = REPO / "tests" / "ray_scenario.py"
SCENARIO_TIMEOUT = 300  # seconds: Ray comes up in ~10 s here and the scenario takes ~40 s


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    skip_without_namespace()
    r = run_scenario(SCENARIO, tmp_path_factory.mktemp("ray") / "ray.json", timeout=SCENARIO_TIMEOUT)
    print(f"\nRay scenario: up in {r['up_s']:.1f} s, whole run {r['wall_s']:.1f} s")
    return r


def test_ray_listens_only_where_loopback_reaches_and_leaves_no_process(report: dict) -> None:
    assert report["interfaces"] == ["lo"]
    loopback = {"127.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0", "*", "[::]"}  # wildcards: lo is all there is
    assert report["listeners"] and {s["address"] for s in report["listeners"]} <= loopback, report["listeners"]
    proxy = [s for s in report["listeners"] if "ProxyActor" in s["process"] and s["address"] == "127.0.0.1"]
    assert proxy, "the Serve proxy is not on 127.0.0.1"
    assert report["cli_exit"] == 0  # SIGINT stopped the application and the local Ray it started
    assert not [p for p in report["left_over"] if "ray" in p or "raylet" in p or "gcs" in p], report["left_over"]


def test_twenty_streams_over_two_replicas_equal_offline_results_bit_for_bit_through_a_replica_kill(report):
    streams = report["streams"]
    assert not [s["error"] for s in streams if "error" in s]
    for i, s in enumerate(streams):
        want, steps = offline(chunks(i))
        got = np.frombuffer(base64.b64decode(s["y"]), np.float32).reshape(-1, 6)
        np.testing.assert_array_equal(got, want, err_msg=f"stream {i} ({s['kind']})")
        assert s["steps"] == steps, f"stream {i}: a chunk applied twice or lost ({s['steps']} != {steps} steps)"
    http = [s for s in streams if s["kind"] == "HttpStream"]
    holders = {s["first_id"].split(".")[0] for s in http}
    assert len(holders) == 2 and holders == set(report["replicas_before"]), "both replicas hold streams"


def test_only_the_killed_replicas_streams_resume_and_each_within_five_seconds(report: dict) -> None:
    before, after = set(report["replicas_before"]), set(report["replicas_after"])
    assert len(before) == 2 and len(before - after) == 1, (before, after)  # one died; Serve started a new one
    killed = (before - after).pop()
    http = [s for s in report["streams"] if s["kind"] == "HttpStream"]
    on_killed = [s for s in http if s["first_id"].startswith(killed + ".")]
    assert on_killed and all(s["resumes"] >= 1 for s in on_killed)
    assert all(s["resumes"] == 0 for s in http if s not in on_killed)
    resumed = [s for s in report["streams"] if s["resumes"]]
    gaps = sorted(s["first_step_after_kill_s"] for s in resumed)
    print(f"\nresumed {len(resumed)} of {STREAMS} streams after the kill at chunk {KILL_AT}: interruption "
          f"p50 {gaps[len(gaps) // 2]:.2f} s, max {gaps[-1]:.2f} s")
    assert gaps[-1] < 5.0


def test_a_poisoning_client_gets_only_refusals(report: dict) -> None:
    """Until the kill (after it, the poisoner's own streams may be on the dead replica, and it does not resume them),
    each kind of hostile request is refused with its 4xx, every time; the 20 streams are checked above."""
    seen = {k: n for k, n in report["poison"].items() if not k.startswith("after the kill")}
    assert seen, "the poisoner made no request before the kill"
    answers: dict[str, set[str]] = {}
    for k in seen:
        answers.setdefault(k.split(" ")[0], set()).add(k.split(" ", 1)[1])  # each kind of request: "status code"
    assert all(len(a) == 1 for a in answers.values()), seen
    assert {k: a.pop() for k, a in answers.items()} == {
        "nan": "400 bad_chunk", "ragged": "400 bad_chunk", "huge": "413 too_large",
        "no-session": "421 session_header_missing", "foreign-snapshot": "400 bad_snapshot",
        "garbage-snapshot": "400 bad_snapshot", "guessed-id": "404 unknown_stream", "no-token": "401 unauthorized",
    }, seen


def test_http_routes_by_stream_id_and_refuses_a_request_without_it(report: dict) -> None:
    p = report["probes"]
    assert set(p["routed"]) == {200}, p["routed"]
    assert set(p["no_header"]) == {421}  # (both replicas holding streams is checked on the 20, before the kill)


def test_auth_and_per_replica_metrics_on_the_ray_path(report: dict) -> None:
    p = report["probes"]
    assert p["no_token"] == 401 and p["metrics_no_token"] == 401
    assert p["ws_no_token"].startswith("1008 unauthorized"), p["ws_no_token"]
    metrics = p["metrics"]
    for replica in report["replicas_after"]:
        assert f'edge_rnn_replica_up{{replica="{replica}"}} 1.0' in metrics
        assert f'edge_rnn_active_streams{{replica="{replica}"}}' in metrics
    assert metrics.count("# TYPE edge_rnn_steps_total counter") == 1


@pytest.fixture(scope="module")
def tooling(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Ray's own ``serve run`` of the builder, then ``edge-rnn serve --ray --address`` joining a running cluster."""
    skip_without_namespace()
    return run_scenario(SCENARIO, tmp_path_factory.mktemp("ray-tooling") / "ray.json", "--serve-run",
                        timeout=SCENARIO_TIMEOUT)


def test_rays_own_serve_run_runs_the_application_builder(tooling: dict) -> None:
    r = tooling
    assert r["command"] == ["run", "edge_rnn.service.ray:app", f"model={REPO / 'tests' / 'data' / 'lstm_layer.onnx'}",
                            "replicas=2"]
    assert r["http_equal"] and r["ws_equal"]
    assert len(r["replicas"]) == 2
    assert r["exit"] == 0  # what Ray's own tool leaves behind (now and then its dashboard's process) is killed


def test_serve_ray_joins_a_running_cluster_and_leaves_it_running(tooling: dict) -> None:
    j = tooling["joined"]
    assert any("the Ray cluster at 127.0.0.1:6380" in line for line in j["said"]), j
    assert j["equal"] and j["exit"] == 0 and j["cluster_still_up"], j
    assert j["nan_step"] == "200 ok", j  # serve --ray --allow-nonfinite: every replica steps NaN, as standalone
