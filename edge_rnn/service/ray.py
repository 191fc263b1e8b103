"""edge-rnn's service on Ray Serve (the ``ray`` extra): the same routes, messages and close codes, over replicas.

``app`` is an application builder that Ray's own tooling runs::

    serve run edge_rnn.service.ray:app model=demo_lstm.onnx replicas=2

and a Serve config file (or a KubeRay ``RayService``) names the same import
path with the same arguments (``docs/scale-out.md``). Each replica loads the
model (a bundle's variant self-tests on the replica's own CPU), batches its
own streams with its own :class:`~edge_rnn.service.Batcher` and state slab,
and serves the standalone server's app unchanged. A stream's id starts with
its replica's id, and :class:`~edge_rnn.service._ray_router.StreamRouter`
sends every HTTP request that names the stream (``X-Session-Id``, which
:mod:`edge_rnn.client` sends) to that replica; a WebSocket stays on the
replica it reached. ``GET /metrics`` answers for every replica, each
labelled ``replica``.

The arguments (strings, as ``serve run`` passes them, or typed in a config
file): ``model`` (a file or bundle folder, at the same path on every node),
``variant``, ``self_test``, ``threads``, ``replicas`` (default 1),
``token_file``, ``allow_nonfinite`` (default false), and every :class:`~edge_rnn.service.ServiceConfig` field by
name (``max_streams=200``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.config import RequestRouterConfig

from edge_rnn.errors import EdgeRnnError
from edge_rnn.service._auth import read_token
from edge_rnn.service._config import RANGES, RAY_PROXY_MAX_MESSAGE, STANDALONE_ONLY, ServiceConfig
from edge_rnn.service._ray_front import ReplicaFront
from edge_rnn.service._ray_overflow import open_here, overflow
from edge_rnn.service._ray_router import STATS_PERIOD, StreamRouter

__all__ = ["app", "build", "run", "RayOptions", "APP", "DEPLOYMENT"]

DEPLOYMENT = "edge_rnn"
HEALTH_CHECK_PERIOD, HEALTH_CHECK_TIMEOUT = 1.0, 10.0  # seconds
_WHERE = "edge_rnn.service.ray:app"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_KINDS = {"int": (int, "an int"), "float": ((int, float), "a float"), "str": (str, "a string"),
          "bool": (bool, "a bool (true/false, yes/no, on/off, 1/0)")}
# the ranges edge-rnn serve's options take (on Ray, the proxy bounds a WebSocket message too)
_BOUNDS = {k: v for k, v in RANGES.items() if k not in STANDALONE_ONLY} | {
    "max_message_bytes": (RANGES["max_message_bytes"][0], RAY_PROXY_MAX_MESSAGE, False)}


@dataclasses.dataclass(frozen=True)
class RayOptions:
    """What each replica serves, and how many replicas."""

    model: str
    config: ServiceConfig = ServiceConfig()
    variant: str | None = None
    self_test: bool = True
    threads: int | None = None
    replicas: int = 1
    allow_nonfinite: bool = False  # as serve --allow-nonfinite: NaN and Inf in chunks, states and snapshots pass

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> RayOptions:
        """The options from ``serve run``'s ``key=value`` arguments (or a config file's ``args``, typed), each
        checked as ``edge-rnn serve`` checks its option."""
        args = dict(args)
        if "model" not in args:
            raise EdgeRnnError(f"{_WHERE}: expected the argument model=<file or bundle folder>, got none")
        standalone = sorted(set(args) & set(STANDALONE_ONLY))
        if standalone:
            raise EdgeRnnError(f"{_WHERE}: {standalone[0]}: bounds the standalone server's own connections; on Ray "
                               "Serve its proxy holds them (docs/scale-out.md)")
        fields = {f.name: f.type for f in dataclasses.fields(ServiceConfig)
                  if f.name != "token" and f.name not in STANDALONE_ONLY}
        own = {"model": "str", "variant": "str | None", "self_test": "bool", "threads": "int | None",
               "replicas": "int", "token_file": "str | None", "allow_nonfinite": "bool"}
        unknown = sorted(set(args) - set(fields) - set(own))
        if unknown:
            raise EdgeRnnError(f"{_WHERE}: unknown argument {unknown[0]!r}; expected one of "
                               f"{', '.join(sorted({*fields, *own}))}")
        typed = {k: _bounded(k, _typed(k, v, own[k] if k in own else fields[k])) for k, v in args.items()}
        token_file = typed.pop("token_file", None)
        mine = {k: typed.pop(k) for k in list(typed) if k in own}
        return cls(config=ServiceConfig(token=_token(token_file), **typed), **mine)


def _token(path: str | None) -> str | None:
    """The token in the file ``path`` (None: no token); an empty path (an unset variable in a shell) is refused
    rather than taken for no token."""
    if path is None:
        return None
    if not path.strip():
        raise EdgeRnnError(f"{_WHERE}: token_file: expected the path of a file holding the token, got {path!r}")
    return read_token(Path(path), f"{_WHERE}: token_file")


def _typed(key: str, value: Any, annotation: str) -> Any:
    """``value`` as the type ``annotation`` names ("int", "str | None", ...): a string parsed (``serve run``
    passes strings), any other value taken only if it is of that type (a config file's)."""
    name, _, rest = annotation.partition("|")
    name = name.strip()
    if value is None and "None" in rest:
        return None
    kinds, what = _KINDS[name]
    if isinstance(value, str) and name != "str":
        value = _parsed(value, name)
    if value is None or not isinstance(value, kinds) or (isinstance(value, bool) and name != "bool"):
        raise EdgeRnnError(f"{_WHERE}: {key}: expected {what}, got {value!r}")
    return float(value) if name == "float" else value


def _parsed(text: str, name: str) -> Any:
    """``text`` as an int, a float or a bool; the text itself where it is none (refused by the caller)."""
    try:
        if name == "bool":
            return {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}.get(text.strip().lower(), text)
        return int(text) if name == "int" else float(text)
    except ValueError:
        return text


def _bounded(key: str, value: Any) -> Any:
    """``value``, if it is in the range ``edge-rnn serve`` takes for the option (NaN never is)."""
    if key not in _BOUNDS or value is None:
        return value
    least, most, open_ = _BOUNDS[key]
    if (value > least if open_ else value >= least) and (most is None or value <= most):
        return value
    above = f"more than {least}" if open_ else f"at least {least}"
    raise EdgeRnnError(f"{_WHERE}: {key}: expected {above}{'' if most is None else f' and at most {most}'}, "
                       f"got {value!r}")


@serve.deployment(name=DEPLOYMENT)
@serve.ingress()
class EdgeRnnReplica:
    """One replica: the model loaded here, the standalone server's app over it, its streams named after it."""

    def __init__(self, options: RayOptions):
        from edge_rnn.runtime import SessionConfig, StreamingModel

        source = Path(options.model)
        bundle = source.is_dir()
        self.options = options
        self.model = StreamingModel.load(source, session=SessionConfig(threads=options.threads),
                                         variant=options.variant, self_test=options.self_test and bundle,
                                         allow_nonfinite=options.allow_nonfinite)
        self.front: ReplicaFront | None = None

    def __serve_build_asgi_app__(self) -> Any:
        from edge_rnn.service._app import create_app

        context = serve.get_replica_context()
        replica = context.replica_id.unique_id
        inner = create_app(self.model, self.options.config, variant=self.model.variant, replica=replica)
        self.front = ReplicaFront(inner, context.app_name, context.deployment)
        inner.svc.overflow = partial(overflow, context.app_name, context.deployment, replica)
        return self.front

    def open_stream(self, snapshot: bytes | None) -> dict[str, str]:
        """Another replica's request: open a stream here, for a client it has no room for."""
        return open_here(self.front.svc, snapshot)

    def record_routing_stats(self) -> dict[str, int]:
        """What this replica tells Ray's routers every :data:`~edge_rnn.service._ray_router.STATS_PERIOD`
        seconds: its open streams, and how many it may hold (new streams go where there is room)."""
        svc = self.front.svc if self.front is not None else None
        return {"streams": len(svc.registry.streams) if svc else 0, "max_streams": self.options.config.max_streams}

    async def exposition(self) -> bytes:
        """This replica's metrics in Prometheus' text format (what ``/metrics`` gathers from each replica)."""
        return self.front.own()


def deployment_options(options: RayOptions) -> dict[str, Any]:
    """How Ray Serve runs the replicas: routed by stream, as many requests at once as the service's own limits
    let in (each WebSocket is one request for its life, so Ray's default of 5 would cap a replica at 5 streams),
    the service's drain time to finish before a replica is stopped, and a health check every second: until the
    controller sees a replica dead, its streams' requests wait for it (Ray's default period of 10 s held them
    9.8 s after a SIGKILL here; 1 s lets their clients resume elsewhere within about 2 s)."""
    c = options.config
    return {"num_replicas": options.replicas,
            "max_ongoing_requests": c.max_streams + c.max_batch + c.max_queue,
            "max_queued_requests": c.max_queue,  # beyond them, Ray's proxy answers 503 (unbounded by default)
            "request_router_config": RequestRouterConfig(request_router_class=StreamRouter,
                                                         request_routing_stats_period_s=STATS_PERIOD),
            "graceful_shutdown_timeout_s": c.drain_timeout + 2.0,
            "health_check_period_s": HEALTH_CHECK_PERIOD, "health_check_timeout_s": HEALTH_CHECK_TIMEOUT,
            "ray_actor_options": {"num_cpus": options.threads or 1}}


def build(options: RayOptions) -> Any:
    """The Serve application for ``options``."""
    # each replica is given what it serves, not how many serve it (Ray's num_replicas): its arguments do not change
    # with the count
    return EdgeRnnReplica.options(**deployment_options(options)).bind(dataclasses.replace(options, replicas=1))


def app(args: dict[str, Any]) -> Any:
    """The application builder ``serve run edge_rnn.service.ray:app model=... replicas=2`` calls."""
    return build(RayOptions.from_args(args))


APP = "edge_rnn"


START_TIMEOUT = 120.0  # seconds for every replica to be up (a cluster short of CPUs would otherwise wait forever)


def run(options: RayOptions, *, host: str, port: int, address: str | None, ready: Any = None,
        stopping: Any = None) -> None:
    """``edge-rnn serve --ray``: the application on Ray Serve until SIGINT or SIGTERM, then deleted.

    Without ``address``, a local Ray is started on 127.0.0.1 (no dashboard) and stopped at the end; Serve's
    proxy listens on ``host``:``port``. With one, the application joins that cluster (whose Serve keeps its
    own proxy address if it runs already) and only the application is deleted at the end. ``ready`` is called
    with the proxy's URL once every replica is up, ``stopping`` (no arguments) when a signal stops it, before the
    replicas drain; replicas not up within :data:`START_TIMEOUT` seconds, or
    failing to start, are an :class:`~edge_rnn.errors.EdgeRnnError` with Ray's reason."""
    import signal
    import threading

    import ray

    local = address is None
    if local:  # each replica claims its CPUs: more replicas than cores would otherwise wait for one forever
        cpus = max(os.cpu_count() or 1, options.replicas * (options.threads or 1))
        ray.init(include_dashboard=False, _node_ip_address="127.0.0.1", num_cpus=cpus, log_to_driver=False,
                 logging_level="warning")
    else:
        ray.init(address=address, log_to_driver=False, logging_level="warning")
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run_many([serve.RunTarget(build(options), name=APP, route_prefix="/")],
                       wait_for_applications_running=False)
        if _started(stop) and ready is not None:
            ready(f"http://{host}:{port}")
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if stop.is_set() and stopping is not None:
            stopping()
        _stop(local)


def _started(stop: Any) -> bool:
    """Wait for the application to run (True), or a signal (False); its failing or not running in time raise."""
    deadline = time.monotonic() + START_TIMEOUT
    while not stop.wait(0.25):
        app = serve.status().applications.get(APP)
        state = str(getattr(app, "status", ""))
        if state.endswith("RUNNING"):
            return True
        if state.endswith(("DEPLOY_FAILED", "UNHEALTHY")) or time.monotonic() > deadline:
            reason = _reason(app)
            what = "failed to start" if "FAILED" in state or "UNHEALTHY" in state else \
                f"were not all up within {START_TIMEOUT:.0f} s"
            raise EdgeRnnError(f"Ray Serve: the replicas of {APP} {what}: {reason}")
    return False


def _reason(app: Any) -> str:
    """Ray's own words for what holds the application up: its deployment's message, else the application's."""
    if app is None:
        return "no such application"
    messages = [d.message for d in app.deployments.values() if d.message] + [app.message or "no reason given"]
    return " ".join(messages[0].split())[:500]


def _stop(local: bool) -> None:
    """Delete the application (its replicas drain: Ray stops routing to them and waits for their requests), and
    stop the local Ray this process started."""
    import ray

    try:
        serve.delete(APP)
    finally:
        if local:
            serve.shutdown()
        ray.shutdown()
