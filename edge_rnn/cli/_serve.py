"""serve and loadtest: the streaming service and its load generator."""

from __future__ import annotations

from pathlib import Path

import click

from edge_rnn.cli._common import _existing, main
from edge_rnn.errors import EdgeRnnError


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--variant", default=None, help="With a bundle folder: the variant to serve [default: fp32].")
@click.option("--self-test/--no-self-test", default=True, show_default=True,
              help="With a bundle folder: replay the served variant's golden stream on this CPU before serving, "
                   "and refuse to start when it is over its bound.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True)
@click.option("--max-streams", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--idle-timeout", type=click.FloatRange(min=0.1), default=300.0, show_default=True,
              help="Seconds after which an idle stream is closed.")
@click.option("--max-batch", type=click.IntRange(min=1, max=4096), default=64, show_default=True)
@click.option("--max-wait-ms", type=click.FloatRange(min=0, max=10_000), default=2.0, show_default=True,
              help="How long a batch waits for more steps after its first.")
@click.option("--max-queue", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Steps waiting beyond this are refused as overloaded (503 / close 1013).")
@click.option("--max-batch-frames", type=click.IntRange(min=1), default=64, show_default=True,
              help="Time steps of one stream per batch: a longer chunk runs as pieces of this many frames, one per "
                   "batch, so it delays the other streams by one piece, not by its whole run.")
@click.option("--max-message-bytes", type=click.IntRange(min=16), default=1 << 20, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="A file holding the bearer token every route but /healthz and /readyz then needs.")
@click.option("--drain-timeout", type=click.FloatRange(min=0, max=3600), default=10.0, show_default=True,
              help="On SIGINT/SIGTERM: seconds open streams may still fetch their snapshots before the server "
                   "stops (a second signal stops at once).")
def serve(model: Path, variant: str | None, self_test: bool, host: str, port: int, max_streams: int,
          idle_timeout: float,
          max_batch: int, max_wait_ms: float, max_queue: int, max_batch_frames: int, max_message_bytes: int,
          threads: int | None,
          token_file: Path | None, drain_timeout: float) -> None:
    """Serve MODEL (or a bundle's variant) as streams over WebSocket and HTTP (needs edge-rnn[serve])."""
    try:
        import uvicorn

        from edge_rnn.service._app import ServiceConfig, create_app, uvicorn_options
        from edge_rnn.service._server import DrainingServer
    except ImportError as e:
        raise EdgeRnnError(f"edge-rnn serve needs the serve extra: pip install 'edge-rnn[serve]' ({e.name} is "
                           "missing)") from None
    from edge_rnn.runtime import SessionConfig, StreamingModel

    token = None
    if token_file is not None:
        _existing(token_file, "--token-file")
        token = token_file.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise EdgeRnnError(f"--token-file {token_file}: expected a token of at least 16 characters")
    bundle = model.is_dir()
    if variant is not None and not bundle:
        raise click.UsageError(f"--variant picks from a bundle folder; {model} is a file")
    m = StreamingModel.load(model, session=SessionConfig(threads=threads), variant=variant,
                            self_test=self_test and bundle)
    if m.self_test is not None:
        click.echo(f"self-test of {m.variant}: {m.self_test.check.max_abs:.3g} max abs error, "
                   f"{m.self_test.check.worst_fraction:.3g}x its bound on this CPU: ok", err=True)
    config = ServiceConfig(max_streams=max_streams, idle_timeout=idle_timeout, max_batch=max_batch,
                           max_wait_ms=max_wait_ms, max_queue=max_queue, max_batch_frames=max_batch_frames,
                           max_message_bytes=max_message_bytes,
                           token=token, drain_timeout=drain_timeout)
    click.echo(f"serving {m.source} on http://{host}:{port} (WebSocket /v1/streams/ws)", err=True)
    app = create_app(m, config, variant=m.variant)
    DrainingServer(uvicorn.Config(app, host=host, port=port, log_level="warning", **uvicorn_options(config)),
                   app.svc).run()


@main.command()
@click.argument("url")
@click.option("--streams", type=click.IntRange(min=1, max=100_000), default=10, show_default=True)
@click.option("--chunk-ms", type=click.FloatRange(min=1), default=100.0, show_default=True)
@click.option("--frame-ms", type=click.FloatRange(min=0.1), default=10.0, show_default=True)
@click.option("--duration", type=click.FloatRange(min=0.5), default=10.0, show_default=True, help="Seconds.")
@click.option("--token-file", type=click.Path(path_type=Path), default=None)
def loadtest(url: str, streams: int, chunk_ms: float, frame_ms: float, duration: float,
             token_file: Path | None) -> None:
    """Stream real-time-paced chunks to an edge-rnn server at URL and report latency (needs edge-rnn[client])."""
    try:
        import httpx  # noqa: F401 - the client extra, checked before any stream starts
        import websockets  # noqa: F401

        from edge_rnn.loadtest import loadtest as run_load
    except ImportError as e:
        raise EdgeRnnError(f"edge-rnn loadtest needs the client extra: pip install 'edge-rnn[client]' ({e.name} is "
                           "missing)") from None
    token = token_file.read_text(encoding="utf-8").strip() if token_file is not None else None
    result = run_load(url, streams=streams, chunk_ms=chunk_ms, frame_ms=frame_ms, duration=duration, token=token)
    click.echo(result.summary())


