"""The Ray Serve application builder's arguments and `edge-rnn serve --ray`: its flags and its wait for the
replicas, without a Ray cluster. Each test runs in milliseconds."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from cli_errors import invoke, one_line_error  # noqa: E402
from conftest import REPO  # noqa: E402
from ray.serve._private.common import DeploymentID  # noqa: E402

from edge_rnn.errors import EdgeRnnError  # noqa: E402
from edge_rnn.service._config import ServiceConfig  # noqa: E402
from edge_rnn.service._ray_router import StreamRouter  # noqa: E402
from edge_rnn.service.ray import HEALTH_CHECK_PERIOD, RayOptions, deployment_options  # noqa: E402

MODEL = REPO / "tests" / "data" / "lstm_layer.onnx"
TOKEN = "a-token-of-sixteen-chars"
DEPLOYMENT = DeploymentID(name="edge_rnn", app_name="edge_rnn")



# --- the application builder's arguments --------------------------------------------------------------------------

def test_string_arguments_are_typed():
    o = RayOptions.from_args({"model": "m.onnx", "replicas": "3", "threads": "2", "max_streams": "50",
                              "max_wait_ms": "0.5", "idle_timeout": "12", "self_test": "off", "variant": "int8"})
    assert (o.model, o.replicas, o.threads, o.self_test, o.variant) == ("m.onnx", 3, 2, False, "int8")
    assert (o.config.max_streams, o.config.max_wait_ms, o.config.idle_timeout) == (50, 0.5, 12.0)
    assert type(o.config.max_streams) is int and type(o.config.idle_timeout) is float
    assert o.config.token is None and o.config.max_connections is None


@pytest.mark.parametrize("spelling, value", [("1", True), ("true", True), ("Yes", True), ("ON", True),
                                             ("0", False), ("false", False), ("no", False), ("Off", False)])
def test_bool_spellings(spelling, value):
    assert RayOptions.from_args({"model": "m", "self_test": spelling}).self_test is value


def test_typed_values_from_a_config_file_are_taken():
    o = RayOptions.from_args({"model": "m", "replicas": 2, "self_test": False, "max_wait_ms": 2, "threads": None,
                              "idle_timeout": 1.5, "variant": None})
    assert (o.replicas, o.self_test, o.config.max_wait_ms, o.threads, o.config.idle_timeout) == (2, False, 2, None,
                                                                                                1.5)
    assert RayOptions.from_args({"model": "m"}) == RayOptions(model="m")


def _refused(args: dict, *says: str) -> str:
    with pytest.raises(EdgeRnnError) as e:
        RayOptions.from_args(args)
    message = str(e.value)
    assert "\n" not in message and message.startswith("edge_rnn.service.ray:app: "), message
    assert all(s in message for s in says), message
    return message


def test_model_is_needed():
    _refused({}, "model=", "got none")
    _refused({"replicas": "2"}, "model=")


def test_an_unknown_argument_is_refused_with_the_list():
    message = _refused({"model": "m", "max_stream": "5"}, "'max_stream'", "max_streams", "replicas", "token_file")
    assert "max_connections" not in message.split("expected one of")[1]


def test_the_token_itself_is_not_an_argument():
    _refused({"model": "m", "token": "x" * 20}, "'token'")


@pytest.mark.parametrize("key", ["max_connections", "header_timeout", "message_timeout", "write_timeout",
                                 "max_message_fragments", "max_queued_bytes"])
def test_the_standalone_servers_connection_bounds_are_refused_as_the_cli_refuses_them(key):
    _refused({"model": "m", key: "5"}, key, "standalone server", "proxy holds them")


@pytest.mark.parametrize("replicas", ["0", 0, "-1"])
def test_no_replicas_is_refused(replicas):
    _refused({"model": "m", "replicas": replicas}, "replicas", "at least 1")


@pytest.mark.parametrize("key, value, kind", [("replicas", "two", "int"), ("max_streams", "1.5", "int"),
                                              ("max_wait_ms", "fast", "float"), ("self_test", "maybe", "bool"),
                                              ("threads", "", "int")])
def test_a_value_of_the_wrong_kind_is_one_line(key, value, kind):
    message = _refused({"model": "m", key: value}, key, kind, repr(value))
    assert "expected a" in message and "got" in message


@pytest.mark.parametrize("key, value", [("replicas", 2.5), ("replicas", True), ("max_streams", [1]),
                                        ("max_batch", "x"), ("self_test", 2), ("max_wait_ms", "1e400x"),
                                        ("idle_timeout", True), ("variant", 3)])
def test_a_config_files_value_of_the_wrong_type_is_refused(key, value):
    """A config file's ``replicas: 2.5`` or ``max_streams: [1]`` was taken as it was and failed later, inside a
    replica (or in Ray's deployment options)."""
    _refused({"model": "m", key: value}, key)


@pytest.mark.parametrize("key, value", [("max_streams", "0"), ("max_batch", "0"), ("max_batch", "4097"),
                                        ("max_queue", "0"), ("max_wait_ms", "-1"), ("idle_timeout", "0"),
                                        ("idle_timeout", "nan"), ("max_batch_frames", "0"),
                                        ("max_stream_inflight", "0"), ("max_message_bytes", "8"),
                                        ("threads", "0"), ("drain_timeout", "-1"), ("max_streams", -5)])
def test_a_value_the_cli_refuses_is_refused(key, value):
    """``edge-rnn serve`` bounds every limit (``--max-batch`` 1..4096, ...); the builder took any number
    (``max_batch=0``, ``idle_timeout=nan``), so ``serve run`` started replicas the CLI would refuse."""
    _refused({"model": "m", key: value}, key)


def test_the_token_is_read_from_token_file(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert RayOptions.from_args({"model": "m", "token_file": str(tmp_path / "token")}).config.token == TOKEN
    (tmp_path / "short").write_text("short")
    _refused({"model": "m", "token_file": str(tmp_path / "short")}, "token_file", "at least 16 characters", "got 5")
    _refused({"model": "m", "token_file": str(tmp_path / "none")}, "token_file", "no such file")
    _refused({"model": "m", "token_file": str(tmp_path)}, "token_file", "expected a file")


@pytest.mark.parametrize("path", ["", " "])
def test_an_empty_token_file_argument_is_refused_not_taken_for_no_token(path):
    """``token_file=$TOKEN_FILE`` with the variable unset served every stream to anyone."""
    _refused({"model": "m", "token_file": path}, "token_file", repr(path))


def test_a_token_file_of_null_is_no_token():
    assert RayOptions.from_args({"model": "m", "token_file": None}).config.token is None


@pytest.mark.parametrize("model", [None, 3])
def test_model_must_be_a_path(model):
    _refused({"model": model}, "model", repr(model))


def test_the_deployment_options():
    config = ServiceConfig(max_streams=300, max_batch=16, max_queue=100, drain_timeout=4.0)
    d = deployment_options(RayOptions(model="m", config=config, replicas=3, threads=2))
    assert d["num_replicas"] == 3
    assert d["max_ongoing_requests"] >= config.max_streams + config.max_batch + config.max_queue  # WS + HTTP steps
    assert d["request_router_config"].request_router_class is StreamRouter or \
        d["request_router_config"].request_router_class.endswith("StreamRouter")
    assert d["health_check_period_s"] == HEALTH_CHECK_PERIOD == 1.0
    assert d["graceful_shutdown_timeout_s"] >= config.drain_timeout
    assert d["ray_actor_options"] == {"num_cpus": 2}
    assert deployment_options(RayOptions(model="m"))["ray_actor_options"] == {"num_cpus": 1}


# --- edge-rnn serve --ray ----------------------------------------------------------------------------------------

def _usage_error(result, *says: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert all(s in result.output for s in says), result.output


@pytest.mark.parametrize("flag", [["--replicas", "2"], ["--address", "auto"]])
def test_ray_flags_without_ray_are_a_usage_error(flag):
    _usage_error(invoke("serve", MODEL, *flag), flag[0], "--ray")


@pytest.mark.parametrize("flag", [["--max-connections", "5"], ["--header-timeout", "1"], ["--message-timeout", "1"],
                                  ["--write-timeout", "1"], ["--max-message-fragments", "2"],
                                  ["--max-queued-bytes", "70000"]])
def test_standalone_only_flags_with_ray_are_a_usage_error(flag):
    _usage_error(invoke("serve", MODEL, "--ray", *flag), flag[0])


@pytest.fixture
def ray_run(monkeypatch):
    """edge_rnn.service.ray.run replaced: the options it would start Ray Serve with."""
    import edge_rnn.service.ray as ray_app

    started = []
    monkeypatch.setattr(ray_app, "run", lambda options, **kw: started.append((options, kw)))
    return started


def test_serve_ray_hands_its_options_to_ray_serve(ray_run, tmp_path):
    (tmp_path / "token").write_text(TOKEN)
    result = invoke("serve", MODEL, "--ray", "--replicas", "2", "--address", "ray://head:10001", "--max-batch", "8",
                    "--token-file", tmp_path / "token", "--port", "0")
    assert result.exit_code == 0, result.output
    [(options, kw)] = ray_run
    assert (options.replicas, options.config.max_batch, options.config.token) == (2, 8, TOKEN)
    assert options.config.max_connections is None and options.model == str(MODEL.resolve())
    assert kw["address"] == "ray://head:10001" and kw["port"] == 0


def test_serve_ray_does_not_bound_streams_by_this_processs_open_files(ray_run, monkeypatch):
    """With --ray the replicas hold the streams and Ray's proxy the connections, elsewhere; --max-streams was
    still fitted to the open-file limit of the process running the CLI (lowered to it, or refused beyond it)."""
    from edge_rnn.service import _server

    monkeypatch.setattr(_server, "connection_limit", lambda: 10)
    result = invoke("serve", MODEL, "--ray", "--max-streams", "50")
    assert result.exit_code == 0, result.output
    result = invoke("serve", MODEL, "--ray")
    assert result.exit_code == 0 and "lowered" not in result.output, result.output
    assert [o.config.max_streams for o, _ in ray_run] == [50, 1000]
    one_line_error(invoke("serve", MODEL, "--max-streams", "50"), "expected at most --max-connections 10")
    assert len(ray_run) == 2  # the standalone server still fits them to its own connections


def test_serve_ray_refuses_a_bad_token_file_as_standalone_does(ray_run, tmp_path):
    (tmp_path / "token").write_text("short")
    for ray in ([], ["--ray"]):
        one_line_error(invoke("serve", MODEL, *ray, "--token-file", tmp_path / "token"),
                       f"--token-file {tmp_path / 'token'}: expected a token of at least 16 characters, got 5")
    assert ray_run == []


# --- edge-rnn serve --ray waiting for its replicas -------------------------------------------------------------

def _status(state: str | None, app_message: str = "", deployment_message: str = ""):
    from types import SimpleNamespace as NS

    if state is None:
        return NS(applications={})
    deployments = {"edge_rnn": NS(message=deployment_message)}
    return NS(applications={"edge_rnn": NS(status=f"ApplicationStatus.{state}", message=app_message,
                                           deployments=deployments)})


def _wait(monkeypatch, states: list, timeout: float = 60.0):
    import threading

    from edge_rnn.service import ray as ray_app

    seen = iter(states)
    monkeypatch.setattr(ray_app.serve, "status", lambda: next(seen))
    monkeypatch.setattr(ray_app, "START_TIMEOUT", timeout)
    return ray_app._started(threading.Event())


def test_serve_ray_is_ready_once_the_application_runs(monkeypatch):
    assert _wait(monkeypatch, [_status(None), _status("DEPLOYING"), _status("RUNNING")]) is True


def test_replicas_that_fail_to_start_are_one_line_with_rays_reason(monkeypatch):
    with pytest.raises(EdgeRnnError) as e:
        _wait(monkeypatch, [_status("DEPLOYING"), _status("DEPLOY_FAILED", "app failed",
                                                          "The deployment failed to start:\n  Traceback ... boom")])
    assert "failed to start" in str(e.value) and "boom" in str(e.value) and "\n" not in str(e.value)


def test_replicas_never_scheduled_are_an_error_after_the_start_timeout_not_a_wait_forever(monkeypatch):
    waiting = "Deployment 'edge_rnn' has 1 replicas that have taken more than 30s to be scheduled: {'CPU': 1}"
    with pytest.raises(EdgeRnnError) as e:
        _wait(monkeypatch, [_status("DEPLOYING", deployment_message=waiting)] * 1000, timeout=0.3)
    assert "were not all up within 0 s" in str(e.value) and "to be scheduled" in str(e.value)


def test_a_signal_while_waiting_stops_the_wait(monkeypatch):
    import threading

    from edge_rnn.service import ray as ray_app

    stop = threading.Event()
    stop.set()
    monkeypatch.setattr(ray_app.serve, "status", lambda: pytest.fail("asked after the signal"))
    assert ray_app._started(stop) is False


def test_a_token_file_that_is_a_device_is_named_so_not_a_directory():
    with pytest.raises(EdgeRnnError, match="got a device, pipe or socket, not a regular file"):
        RayOptions.from_args({"model": "m", "token_file": "/dev/zero"})


def test_the_builder_caps_replicas_as_the_cli_does():
    _refused({"model": "m", "replicas": "1025"}, "replicas", "at most 1024")


def test_max_message_bytes_over_the_proxys_limit_is_refused_on_ray_by_the_builder_and_the_cli(tmp_path):
    _refused({"model": "m", "max_message_bytes": str((16 << 20) + 1)}, "max_message_bytes", "at most 16777216")
    result = invoke("serve", MODEL, "--ray", "--max-message-bytes", 32 << 20)
    assert result.exit_code == 2 and "at most 16777216 with --ray" in result.output


# --- --allow-nonfinite on Ray Serve: an argument of the builder, passed to every replica's model ---------------------

@pytest.mark.parametrize(("args", "want"), [({}, False), ({"allow_nonfinite": "yes"}, True),
                                            ({"allow_nonfinite": False}, False)])
def test_allow_nonfinite_is_a_builder_argument(args, want):
    assert RayOptions.from_args({"model": "m", **args}).allow_nonfinite is want


def test_serve_ray_hands_allow_nonfinite_to_ray_serve(ray_run):
    assert invoke("serve", MODEL, "--ray", "--allow-nonfinite").exit_code == 0
    assert invoke("serve", MODEL, "--ray").exit_code == 0
    assert [options.allow_nonfinite for options, _ in ray_run] == [True, False]


@pytest.mark.parametrize("allow", [True, False])
def test_a_replica_loads_its_model_with_allow_nonfinite(allow):
    """The replica's own constructor (the class Serve's ingress wraps), run here on a bare object without a cluster:
    its model steps a chunk of NaN with the option, and refuses it without."""
    from types import SimpleNamespace

    import numpy as np

    from edge_rnn.errors import NonFiniteError
    from edge_rnn.service.ray import EdgeRnnReplica

    own = next(c for c in EdgeRnnReplica.func_or_class.__mro__ if c.__dict__.get("__init__") is not None
               and c.__dict__["__init__"].__qualname__ == "EdgeRnnReplica.__init__")
    replica = SimpleNamespace()
    own.__init__(replica, RayOptions(model=str(MODEL), allow_nonfinite=allow))
    model = replica.model
    nan = np.full((2, 4), np.nan, np.float32)
    assert model.allow_nonfinite is allow
    if allow:
        assert model.step(model.open_stream(), nan)["y"].shape == (2, 6)
    else:
        with pytest.raises(NonFiniteError):
            model.step(model.open_stream(), nan)
