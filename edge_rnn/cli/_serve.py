"""serve and loadtest: the streaming service and its load generator."""

from __future__ import annotations

import errno
import math
import socket
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from edge_rnn.cli._common import main
from edge_rnn.cli._finite import FiniteFloatRange
from edge_rnn.errors import EdgeRnnError
from edge_rnn.service._auth import read_token as _read_token


def _in(name: str, kind: type = int) -> click.ParamType:
    """The click range of option ``name``, from the one table of them (edge_rnn.service._config.RANGES)."""
    from edge_rnn.service._config import RANGES

    least, most, open_ = RANGES[name]
    return (click.FloatRange if kind is float else click.IntRange)(min=least, max=most, min_open=open_)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--variant", default=None, help="With a bundle folder: the variant to serve [default: fp32].")
@click.option("--self-test/--no-self-test", default=True, show_default=True,
              help="With a bundle folder: replay the served variant's golden stream on this CPU before serving, "
                   "and refuse to start when it is over its bound.")
@click.option("--ray", "on_ray", is_flag=True, default=False,
              help="Serve on Ray Serve (needs edge-rnn[ray]): the same routes over --replicas replicas, each batching "
                   "its own streams; Serve's proxy listens on --host:--port. See docs/scale-out.md.")
@click.option("--replicas", type=_in("replicas"), default=None,
              help="With --ray: how many replicas serve the model. [default: 1]")
@click.option("--address", default=None,
              help="With --ray: the Ray cluster to join (e.g. ray://head:10001 or auto). [default: start a local "
                   "Ray on 127.0.0.1 and stop it at the end]")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option("--max-streams", type=_in("max_streams"), default=1000, show_default=True,
              help="Open streams (HTTP and WebSocket); at most --max-connections. [default: 1000, or "
                   "--max-connections where that is lower]")
@click.option("--max-connections", type=_in("max_connections"), default=None,
              help="Open connections (HTTP and WebSocket); one more is answered 503 and closed before anything is "
                   "read. [default: the open-file limit, raised to its hard limit, less an eighth and 64]")
@click.option("--idle-timeout", type=_in("idle_timeout", float), default=300.0, show_default=True,
              help="Seconds after which an idle stream is closed.")
@click.option("--max-batch", type=_in("max_batch"), default=64, show_default=True)
@click.option("--max-wait-ms", type=_in("max_wait_ms", float), default=2.0, show_default=True,
              help="How long a batch waits for more steps after its first.")
@click.option("--max-queue", type=_in("max_queue"), default=1024, show_default=True,
              help="Steps waiting beyond this are refused as overloaded (503 / close 1013).")
@click.option("--max-batch-frames", type=_in("max_batch_frames"), default=64, show_default=True,
              help="Time steps of one stream per batch: a longer chunk runs as pieces of this many frames, one per "
                   "batch, so it delays the other streams by one piece, not by its whole run.")
@click.option("--max-stream-inflight", type=_in("max_stream_inflight"), default=4, show_default=True,
              help="HTTP steps of one stream in flight at once (reading, waiting, stepped); one more is refused "
                   "with 429 stream_busy before its body is read.")
@click.option("--max-message-fragments", type=_in("max_message_fragments"), default=64, show_default=True,
              help="Frames one WebSocket message may come in (empty ones too); one more closes with 1008.")
@click.option("--max-queued-bytes", type=_in("max_queued_bytes"), default=64 << 20, show_default=True,
              help="Bytes of WebSocket messages received and not yet taken by their streams, server-wide; past "
                   "it, a socket is read only while its stream waits for its next message.")
@click.option("--max-message-bytes", type=_in("max_message_bytes"), default=1 << 20, show_default=True)
@click.option("--threads", type=_in("threads"), default=None, help="onnxruntime intra-op threads.")
@click.option("--allow-nonfinite", is_flag=True, default=False,
              help="Let NaN and Inf in chunks, states and snapshots through (refused by default, 400 bad_chunk); "
                   "with --ray, on every replica.")
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="A file holding the bearer token every route but /healthz and /readyz then needs.")
@click.option("--drain-timeout", type=_in("drain_timeout", float), default=10.0, show_default=True,
              help="On SIGINT/SIGTERM: seconds open streams may still fetch their snapshots before the server "
                   "stops (a second signal stops without waiting for them).")
@click.option("--header-timeout", type=_in("header_timeout", float), default=10.0,
              show_default=True, help="Seconds a client has to send a request's headers (HTTP and the WebSocket "
                                      "handshake); then 408 and the connection is closed.")
@click.option("--message-timeout", type=_in("message_timeout", float), default=30.0,
              show_default=True, help="Seconds to finish an HTTP body once its headers came (408), or a WebSocket "
                                      "message once it began (close 1008).")
@click.option("--write-timeout", type=_in("write_timeout", float), default=30.0,
              show_default=True, help="Seconds the server's writes to a client that does not read may stay "
                                      "blocked before the connection is dropped.")
@click.option("--access-log", is_flag=True, default=False,
              help="Log every HTTP request on stdout (uvicorn's access log: client, method, path, status), those "
                   "refused before they reach the app too (408 stalled headers or body, 400, 431, 503 over "
                   "--max-connections), and each WebSocket handshake on stderr. Every query value is redacted, and "
                   "every path segment but the routes' own words (stream ids) is cut to 4 characters. Off by "
                   "default. Not with --ray (Ray Serve logs requests in its own logs).")
def serve(model: Path, variant: str | None, self_test: bool, host: str, port: int, max_streams: int,
          max_connections: int | None, idle_timeout: float,
          max_batch: int, max_wait_ms: float, max_queue: int, max_batch_frames: int, max_message_bytes: int,
          threads: int | None,
          token_file: Path | None, drain_timeout: float, on_ray: bool, replicas: int | None, address: str | None,
          allow_nonfinite: bool, access_log: bool, **limits: float) -> None:
    """Serve MODEL (or a bundle's variant) as streams over WebSocket and HTTP (needs edge-rnn[serve]; with --ray,
    edge-rnn[ray])."""
    _ray_only(on_ray, replicas=replicas, address=address)
    if on_ray and access_log:
        raise click.UsageError("--access-log applies to the standalone server; Ray Serve logs requests in its own "
                               "logs (docs/scale-out.md)")
    try:
        import uvicorn  # noqa: F401 - the serve extra, checked before any work (used in _uvicorn_config)

        from edge_rnn.service._app import ServiceConfig, create_app, uvicorn_options
        from edge_rnn.service._server import DrainingServer, connection_limit
    except ImportError as e:
        raise EdgeRnnError(f"edge-rnn serve needs the serve extra: pip install 'edge-rnn[serve]' ({e.name} is "
                           "missing)") from None
    from edge_rnn.runtime import SessionConfig, StreamingModel

    token = _read_token(token_file)
    if not on_ray:  # on Ray Serve the proxy holds the connections and the replicas the streams, not this process
        max_connections = max_connections or connection_limit()
        max_streams = _fits_connections(max_streams, max_connections)
    bundle = model.is_dir()
    if variant is not None and not bundle:
        raise click.UsageError(f"--variant picks from a bundle folder; {model} is a file")
    m = StreamingModel.load(model, session=SessionConfig(threads=threads), variant=variant,
                            self_test=self_test and bundle, allow_nonfinite=allow_nonfinite)
    if m.self_test is not None:
        click.echo(f"self-test of {m.variant}: {m.self_test.check.max_abs:.3g} max abs error, "
                   f"{m.self_test.check.worst_fraction:.3g}x its bound on this CPU: ok", err=True)
    _fits_one_chunk(m, max_message_bytes)
    config = ServiceConfig(max_streams=max_streams, max_connections=max_connections, idle_timeout=idle_timeout,
                           max_batch=max_batch,
                           max_wait_ms=max_wait_ms, max_queue=max_queue, max_batch_frames=max_batch_frames,
                           max_message_bytes=max_message_bytes,
                           token=token, drain_timeout=drain_timeout, **limits)
    if on_ray:
        return _serve_on_ray(model, m, config, host=host, port=port, replicas=replicas or 1, address=address,
                             self_test=self_test, threads=threads, allow_nonfinite=allow_nonfinite)
    app = create_app(m, config, variant=m.variant)
    sock = _listen(host, port)  # bound here: a port in use or an unknown host is one line, before "serving"
    with sock:  # closed however the rest ends
        click.echo(f"serving {m.source} on {_url(sock)} (WebSocket /v1/streams/ws)", err=True)
        server = DrainingServer(_uvicorn_config(app, host, port, access_log, uvicorn_options(config)), app.svc,
                                notify=lambda line: click.echo(line, err=True))
        server.run(sockets=[sock])
    click.echo(server.stop_message(), err=True)


def _uvicorn_config(app: Any, host: str, port: int, access_log: bool, options: dict) -> Any:
    """uvicorn's configuration: warnings only, and with --access-log a line per request (set after the Config, which
    sets the loggers' levels)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=access_log, **options)
    if access_log:
        from edge_rnn.service._access_log import enable_access_log

        enable_access_log()
    return config


def _ray_only(on_ray: bool, **given: Any) -> None:
    """Refuse --replicas and --address without --ray, and the standalone server's connection bounds with it."""
    ctx = click.get_current_context()
    if not on_ray:
        flag = next((k for k, v in given.items() if v is not None), None)
        if flag:
            raise click.UsageError(f"--{flag} applies to Ray Serve: add --ray")
        return
    from edge_rnn.service._config import STANDALONE_ONLY

    for name in STANDALONE_ONLY:
        if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} bounds the standalone server's own connections; with --ray, Ray Serve's "
                                   "proxy holds them (docs/scale-out.md says which bounds hold there)")


def _serve_on_ray(source: Path, model: Any, config: Any, *, host: str, port: int, replicas: int,
                  address: str | None, self_test: bool, threads: int | None, allow_nonfinite: bool) -> None:
    from dataclasses import replace

    try:
        from edge_rnn.service.ray import RayOptions, run
    except ImportError as e:
        raise EdgeRnnError(f"edge-rnn serve --ray needs the ray extra: pip install 'edge-rnn[ray]' ({e.name} is "
                           "missing)") from None
    from edge_rnn.service._config import RAY_PROXY_MAX_MESSAGE

    if config.max_message_bytes > RAY_PROXY_MAX_MESSAGE:
        raise click.UsageError(f"--max-message-bytes {config.max_message_bytes}: expected at most "
                               f"{RAY_PROXY_MAX_MESSAGE} with --ray (Ray Serve's proxy closes WebSocket messages "
                               "over 16 MiB itself)")
    options = RayOptions(model=str(source.resolve()), config=replace(config, max_connections=None),
                         variant=model.variant if source.is_dir() else None, self_test=self_test, threads=threads,
                         replicas=replicas, allow_nonfinite=allow_nonfinite)
    where = "a local Ray on 127.0.0.1" if address is None else f"the Ray cluster at {address}"
    click.echo(f"starting {replicas} replica(s) of {model.source} on {where}", err=True)
    run(options, host=host, port=port, address=address,
        ready=lambda url: click.echo(f"serving {model.source} on {url} (Ray Serve, {replicas} replica(s); "
                                     "WebSocket /v1/streams/ws)", err=True),
        stopping=lambda: click.echo(f"stopping: the replicas drain their streams (up to --drain-timeout "
                                    f"{config.drain_timeout:g} s)", err=True))
    left = "and the local Ray stopped" if address is None else f"from {where}, which keeps running"
    click.echo(f"stopped: the application deleted {left}", err=True)


def _fits_connections(max_streams: int, max_connections: int) -> int:
    """--max-streams, which must fit --max-connections (a WebSocket stream holds one): given, it is refused beyond
    them; left at its default, it is lowered to them, with a note that names where --max-connections came from."""
    if max_streams <= max_connections:
        return max_streams
    ctx = click.get_current_context()
    whence = _connections_whence(ctx.get_parameter_source("max_connections"))
    if ctx.get_parameter_source("max_streams") != click.core.ParameterSource.DEFAULT:
        raise EdgeRnnError(f"--max-streams {max_streams}: expected at most --max-connections {max_connections} "
                           f"({whence}; each WebSocket stream holds a connection), got more")
    click.echo(f"note: --max-streams lowered to {max_connections} to fit --max-connections {max_connections} "
               f"({whence})", err=True)
    return max_connections


_GIVEN = {click.core.ParameterSource.COMMANDLINE: "given on the command line",
          click.core.ParameterSource.ENVIRONMENT: "given in the environment",
          click.core.ParameterSource.DEFAULT_MAP: "given in the command's default map"}


def _connections_whence(source: Any) -> str:
    """Where --max-connections' value came from, for a message: the user (where they gave it), else its default,
    fitted to this process's open-file limit."""
    return _GIVEN.get(source, "its default: what this process's open-file limit, ulimit -n, allows")


def _fits_one_chunk(model: Any, max_message_bytes: int) -> None:
    """Refuse a --max-message-bytes below the smallest binary chunk the model takes (one frame of float32, or a
    static form's fixed chunk of frames): every chunk would be refused."""
    from edge_rnn.service._codec import Codec

    codec = Codec(model, max_message_bytes)
    if codec.frame is None:  # JSON chunks only: no binary frame to measure
        return
    port = codec.port
    steps = port.stream_shape[port.stream_time_axis] if port.stream_time_axis is not None else None
    need = 4 * math.prod(codec.frame) * (steps or 1)
    if max_message_bytes < need:
        frames = f"{steps} frames" if steps else "one frame"
        raise EdgeRnnError(f"--max-message-bytes {max_message_bytes}: expected at least {need} bytes, the smallest "
                           f"chunk {model.source} takes ({frames} of float32 x {list(codec.frame)}); every chunk "
                           "would be refused")


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` for the server to listen on (uvicorn's own bind logs an ERROR line
    and exits 3: here a port in use or a host that does not resolve is one line and exit 1)."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise EdgeRnnError(f"--host {host}: expected a host name or address this machine resolves, got none "
                           f"({getattr(e, 'strerror', None) or e})") from None
    # IPv4 first for a name (uvicorn's choice: "localhost" is 127.0.0.1), IPv6 where that is all there is
    family, kind, proto, _, address = min(found, key=lambda a: a[0] != socket.AF_INET)
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a restart need not wait
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise EdgeRnnError(f"port {port} on {host} is in use (another server?); stop it, or pick another "
                               "--port (--port 0: a free one)") from None
        raise EdgeRnnError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    """http://host:port of a bound socket: the port it got (--port 0: a free one), IPv6 in brackets."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if sock.family == socket.AF_INET6 else f"http://{host}:{port}"


@main.command()
@click.argument("url")
@click.option("--streams", type=click.IntRange(min=1, max=100_000), default=10, show_default=True)
@click.option("--chunk-ms", type=FiniteFloatRange(min=1), default=100.0, show_default=True,
              help="Milliseconds between a stream's chunks (a whole number of --frame-ms; at most --duration).")
@click.option("--frame-ms", type=FiniteFloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--duration", type=FiniteFloatRange(min=0.5), default=10.0, show_default=True, help="Seconds.")
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="A file holding the server's bearer token (serve --token-file).")
@click.option("--min-real-time", type=FiniteFloatRange(min=0, max=1), default=0.99, show_default=True,
              help="The fraction of streams that must keep real time (send at least one chunk, and get every reply "
                   "before the next is due); below it, exit 1 (0: never). Compared exactly.")
def loadtest(url: str, streams: int, chunk_ms: float, frame_ms: float, duration: float,
             token_file: Path | None, min_real_time: float) -> None:
    """Stream real-time-paced chunks to an edge-rnn server at URL and report latency (needs edge-rnn[client]).
    Exits 1 when fewer than --min-real-time of the streams kept real time."""
    try:
        import httpx  # noqa: F401  (the client extra, checked before any stream starts)
        import websockets  # noqa: F401

        from edge_rnn import loadtest as _load
    except ImportError as e:
        raise EdgeRnnError(f"edge-rnn loadtest needs the client extra: pip install 'edge-rnn[client]' ({e.name} is "
                           "missing)") from None
    if _load.exact(chunk_ms) > _load.exact(duration) * 1000:
        raise click.UsageError(f"--chunk-ms {chunk_ms:g} is longer than --duration {duration:g} s: streams start "
                               "spread over one chunk, so most would send nothing; pass a --chunk-ms of at most "
                               f"{duration * 1000:g} or a --duration of at least {chunk_ms / 1000:g}")
    _load.check_url(url)
    token = _read_token(token_file)
    result = _load.loadtest(url, streams=streams, chunk_ms=chunk_ms, frame_ms=frame_ms, duration=duration,
                            token=token)
    click.echo(result.summary())
    wanted = _load.exact(min_real_time)
    if not result.meets(wanted):
        kept = Fraction(result.kept_real_time * 100, result.streams)
        raise EdgeRnnError(f"{result.kept_real_time}/{result.streams} streams kept real time "
                           f"({_tenths_down(kept)}%); expected at least {float(wanted * 100):g}% "
                           f"(--min-real-time {min_real_time:g})")


def _tenths_down(percent: Fraction) -> str:
    """A percentage reached, to 0.1 and rounded down: 99.96 % of streams did not reach 100 %."""
    return f"{math.floor(percent * 10) / 10:g}"
