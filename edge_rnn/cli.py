"""The ``edge-rnn`` command line. Thin: heavy imports happen inside the command that needs them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from edge_rnn._version import __version__
from edge_rnn.errors import EdgeRnnError, ModelFormatError, StateError, message_line

__all__ = ["main"]


class _Group(click.Group):
    """Turns an EdgeRnnError (a user mistake or a parity failure) into one message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeRnnError as e:
            raise click.ClickException(str(e)) from None


def _existing(path: Path, what: str) -> Path:
    if not path.exists():
        raise EdgeRnnError(f"{what} {path}: no such file")
    if not path.is_file():
        raise EdgeRnnError(f"{what} {path}: expected a file, got a directory")
    return path


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-rnn")
def main() -> None:
    """Recurrent networks from PyTorch to streaming ONNX, and back to proof that they match."""




def _build(spec: Any, weights: Path | None, seed: int | None) -> Any:
    import torch

    from edge_rnn.exporters import build_module
    from edge_rnn.exporters._checkpoint import load_state_dict

    if seed is not None:
        torch.manual_seed(seed)
    try:
        module = build_module(spec)
    except (RuntimeError, MemoryError) as e:  # torch's allocator: far too many parameters for this machine
        first = message_line(e) or type(e).__name__
        raise EdgeRnnError(f"cannot build {spec.module}({spec.input_size}, {spec.hidden_size}, "
                           f"num_layers={spec.num_layers}): {first}") from None
    if weights is not None:
        load_state_dict(module, weights)
    return module.eval()


def _print_parity(report: Any, every_row: bool = False) -> None:
    click.echo(report.table(every_row=every_row))
    worst = max((r.margin for r in report.rows), default=0.0)
    click.echo(f"parity: {len(report.rows)} comparisons against {report.reference}, largest err_onnx "
               f"{report.max_abs_error:.2e}, worst at {worst:.2g}x its bound: {'ok' if report.ok else 'FAILED'}")


def _read_data(data: Path | None) -> Any:
    """The --data path, checked now (a missing or pickled file fails before any work); read again where used."""
    if data is None:
        return None
    from edge_rnn.harness import load_data

    load_data(data)
    return data


_DATA_HELP = ("Real input sequences for the parity check, in place of random ones: a .npy (time, features) or an "
              ".npz of several; repeated where shorter than a case. Never unpickled.")


@main.command()
@click.argument("factory", required=False)
@click.option("--example-shape", help="With FACTORY: the example input's shape, e.g. 1,50,40.")
@click.option("--example-dtype", type=click.Choice(["float32", "int64", "int32"]), default="float32",
              show_default=True, help="With FACTORY: the example input's dtype; int64 for token ids (the example is "
              "then zeros, a valid id for any embedding).")
@click.option("--batch-axis", type=click.IntRange(min=0), default=0, show_default=True,
              help="With FACTORY: the input's and output's batch axis.")
@click.option("--time-axis", type=click.IntRange(min=0), default=1, show_default=True,
              help="With FACTORY: the input's and output's time axis.")
@click.option("--arch", type=click.Choice(["rnn", "lstm", "gru"]), help="Recurrent architecture.")
@click.option("--input-size", type=click.IntRange(min=1, max=65_536))
@click.option("--hidden-size", type=click.IntRange(min=1, max=16_384))
@click.option("--num-layers", type=click.IntRange(min=1, max=64), default=1, show_default=True)
@click.option("--bidirectional", is_flag=True)
@click.option("--batch-first", is_flag=True, help="x is (batch, time, features) instead of (time, batch, features).")
@click.option("--proj-size", type=click.IntRange(min=0), default=0, show_default=True, help="LSTM projection size.")
@click.option("--nonlinearity", type=click.Choice(["tanh", "relu"]), default="tanh", show_default=True,
              help="Vanilla RNN only.")
@click.option("--no-bias", is_flag=True)
@click.option("--cell", is_flag=True, help="Export the single-step cell (RNNCell, LSTMCell, GRUCell).")
@click.option("--decomposed", is_flag=True, help="MatMul/Sigmoid/Tanh graph in a Scan: no recurrent operators.")
@click.option("--weights", type=click.Path(path_type=Path), help="A state_dict saved with torch.save.")
@click.option("--seed", type=click.IntRange(min=0, max=2**63 - 1), default=0, show_default=True,
              help="Weights seed without --weights.")
@click.option("--long-steps", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Length of the long streaming check (0 skips it).")
@click.option("--data", type=click.Path(path_type=Path), help=_DATA_HELP)
@click.option("--keep-failed", is_flag=True,
              help="Keep a model that fails parity as NAME.failed.onnx for inspection (never as the output).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Where to write the ONNX file.")
def export(factory: str | None, example_shape: str | None, example_dtype: str, batch_axis: int, time_axis: int,
           arch: str | None, input_size: int | None, hidden_size: int | None, num_layers: int, bidirectional: bool,
           batch_first: bool, proj_size: int, nonlinearity: str, no_bias: bool, cell: bool, decomposed: bool,
           weights: Path | None, seed: int, long_steps: int, data: Path | None, keep_failed: bool,
           output: Path) -> None:
    """Export to streaming ONNX, verify against PyTorch and print the parity table.

    Either build an RNN/LSTM/GRU from --arch, --input-size and --hidden-size, or give FACTORY as
    package.module:callable (like module:app), a function or class that returns the model; its state is
    lifted automatically. The current directory is importable.
    """
    from edge_rnn.exporters import RecurrentSpec
    from edge_rnn.exporters import export as export_module

    if factory is not None:
        if arch or input_size or hidden_size:
            raise click.UsageError("give either FACTORY or --arch/--input-size/--hidden-size, not both")
        _export_factory(factory, (example_shape, example_dtype), batch_axis, time_axis, weights, decomposed,
                        long_steps, data, output, keep_failed)
        return
    if example_dtype != "float32" or example_shape:
        raise click.UsageError("--example-shape and --example-dtype go with FACTORY; a built layer takes float32")
    missing = [n for n, v in (("--arch", arch), ("--input-size", input_size), ("--hidden-size", hidden_size)) if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give a FACTORY)")
    if nonlinearity != "tanh" and arch != "rnn":
        raise EdgeRnnError(f"--nonlinearity {nonlinearity}: only the vanilla RNN (--arch rnn) takes it")
    spec = RecurrentSpec(
        kind=arch, input_size=input_size, hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional,
        batch_first=batch_first, bias=not no_bias, proj_size=proj_size, nonlinearity=nonlinearity, cell=cell,
        module=f"torch.nn.{ {'rnn': 'RNN', 'lstm': 'LSTM', 'gru': 'GRU'}[arch]}{'Cell' if cell else ''}",
    )
    sequences = _read_data(data)
    module = _build(spec, weights, None if weights else seed)
    extra = {} if weights else {"seed": seed}
    report = export_module(module, output, decomposed=decomposed, long_steps=long_steps, extra_source=extra,
                           raise_on_failure=False, data=sequences, keep_failed=keep_failed)
    _print_report(report, output)


def _print_report(report: Any, output: Path) -> None:
    where = (f"wrote {output}" if report.written else
             f"parity failed: {output} not written" + (f"; kept at {report.kept_at}" if report.kept_at else ""))
    click.echo(f"{where}: {report.graph_form} graph, opset {report.opset}, "
               f"{report.size_bytes / 1024:.1f} KiB, exported in {report.export_seconds * 1e3:.1f} ms")
    for note in report.notes:
        click.echo(f"note: {note}")
    _print_parity(report.parity)
    if not report.parity.ok:
        sys.exit(1)




def _export_factory(ref: str, example: tuple[str | None, str], batch_axis: int, time_axis: int,
                    weights: Path | None, decomposed: bool, long_steps: int, data: Path | None, output: Path,
                    keep_failed: bool) -> None:
    import torch

    from edge_rnn.exporters import StreamingIO
    from edge_rnn.exporters import export as export_module
    from edge_rnn.exporters._checkpoint import load_factory, load_state_dict

    example_shape, example_dtype = example
    if not example_shape:
        raise click.UsageError("FACTORY needs --example-shape, e.g. --example-shape 1,50,40")
    shape = _int_list(example_shape, "--example-shape")
    sequences = _read_data(data)
    model = load_factory(ref)
    if weights is not None:
        load_state_dict(model, weights)
    model.eval()
    rank = len(shape)
    axes = (batch_axis, time_axis if time_axis < rank else None)
    if batch_axis >= rank or axes[0] == axes[1]:
        raise EdgeRnnError(f"--batch-axis {batch_axis} / --time-axis {time_axis}: expected distinct axes of a "
                           f"rank-{rank} input")
    torch.manual_seed(0)
    io = StreamingIO(input_names=("x",), input_axes={"x": axes})  # outputs: their axes are probed
    count = 1
    for d in shape:
        count *= d
    if count > 2**28:  # an example is a few frames; 1 GiB of float32 is a typo, refused before allocating
        raise EdgeRnnError(f"--example-shape {example_shape}: expected an example of at most {2**28:,} elements, "
                           f"got {count:,}; a few frames are enough (e.g. 1,50,{shape[-1]})")
    dtype = getattr(torch, example_dtype)
    x = torch.randn(shape) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
    report = export_module(model, output, example_input=x, decomposed=decomposed,
                           long_steps=long_steps, raise_on_failure=False, io=io, data=sequences,
                           keep_failed=keep_failed)
    _print_report(report, output)


def _read_contract(model: Path) -> tuple[Any, Any]:
    import onnx

    from edge_rnn.contract import Contract

    _existing(model, "model")
    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as e:
        raise ModelFormatError(f"{model}: expected an ONNX model, could not parse it ({type(e).__name__})") from None
    if not proto.graph.node and not proto.graph.input:
        raise ModelFormatError(f"{model}: expected an ONNX model, got an empty or non-ONNX file")
    return proto, Contract.from_metadata({p.key: p.value for p in proto.metadata_props})


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("factory", required=False)
@click.option("--weights", type=click.Path(path_type=Path), help="The state_dict the model was exported from.")
@click.option("--long-steps", type=click.IntRange(min=0), default=10_000, show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=1, show_default=True,
              help="Seed for the random test inputs.")
@click.option("--data", type=click.Path(path_type=Path), help=_DATA_HELP)
@click.option("--every-row", is_flag=True, help="Print every comparison, not the worst per case kind and tensor.")
@click.option("--against", type=click.Path(path_type=Path),
              help="Check MODEL, a variant (int8, fp16, ...), against this float32 model instead: no torch needed.")
@click.option("--steps", type=click.IntRange(min=2_000, max=10_000_000), default=10_000, show_default=True,
              help="With --against: the length of the stream.")
@click.option("--threshold", type=float, default=None,
              help="With --against: report decision agreement of the outputs at this threshold.")
def verify(model: Path, factory: str | None, weights: Path | None, long_steps: int, seed: int, data: Path | None,
           every_row: bool, against: Path | None, steps: int, threshold: float | None) -> None:
    """Check MODEL again against PyTorch in float64, or a variant of it against its float32 model (--against).

    A bare RNN/LSTM/GRU export is rebuilt from the model's metadata (and --weights if it was exported from a
    state_dict). A whole model needs FACTORY, the package.module:callable it was exported from; its names, axes
    and states are read from MODEL. With --against, both stream the same input (--data, else random) for --steps
    steps in random chunks, each carrying its own state, and MODEL passes when every output and state stays within
    the tolerance table's row for its precision and its error does not grow along the stream.
    """
    if against is not None:
        if factory is not None or weights is not None:
            raise click.UsageError("--against compares two ONNX files; FACTORY and --weights are for PyTorch checks")
        _verify_against(model, against, steps, seed, data, threshold)
        return
    from edge_rnn.exporters import RecurrentSpec
    from edge_rnn.exporters import verify as verify_model
    from edge_rnn.exporters._checkpoint import load_factory, load_state_dict
    from edge_rnn.harness import read_contract

    _existing(model, "model")
    contract = read_contract(model)  # through onnxruntime: .onnx and .ort alike
    if contract.source.get("variant"):
        raise EdgeRnnError(f"{model}: a {contract.source['variant']} variant of an exported model; check it "
                           f"against the float32 model: edge-rnn verify {model} --against MODEL.onnx")
    sequences = _read_data(data)
    if contract.source.get("kind") == "module":
        if factory is None:
            raise EdgeRnnError(
                f"{model}: a whole model ({contract.source.get('module')}); pass the factory it was exported from: "
                f"edge-rnn verify {model} package.module:factory [--weights state_dict.pt]")
        module = load_factory(factory)
        if weights is not None:
            load_state_dict(module, weights)
        module.eval()
    else:
        if factory is not None:
            raise click.UsageError("FACTORY is for whole models; a bare layer is rebuilt from the model's metadata")
        spec = RecurrentSpec.from_source(contract.source)
        seed = contract.source.get("seed")
        if weights is None and seed is None:
            raise StateError(f"{model}: was exported from a state_dict; pass it with --weights")
        if weights is None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise ModelFormatError(f"{model}: expected the contract's seed to be an int in 0..2**63-1, got {seed!r}")
        module = _build(spec, weights, None if weights else seed)
    report = verify_model(module, model, long_steps=long_steps, seed=seed, raise_on_failure=False, data=sequences)
    _print_parity(report, every_row)
    if not report.ok:
        sys.exit(1)


def _verify_against(model: Path, against: Path, steps: int, seed: int, data: Path | None,
                    threshold: float | None) -> None:
    from edge_rnn.deploy import measure_against

    _existing(model, "model")
    _existing(against, "--against model")
    err = measure_against(model, against, steps=steps, data=_read_data(data), seed=seed, threshold=threshold)
    click.echo(f"{model} against {against}: {err.steps:,} steps in {err.chunks:,} chunks of {err.inputs} input, "
               f"states carried")
    click.echo(err.table())
    t = err.tolerance
    click.echo(f"pass when |variant - float32| <= {t.atol:.0e} + {t.rtol:.0e} x |float32| everywhere, and the error "
               "of the last 1,000 steps is at most 2x that of the first")
    click.echo(f"verdict: {'ok' if err.ok else 'FAIL'}")
    if not err.ok:
        sys.exit(1)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--int8", "int8", is_flag=True, help="Dynamic int8 quantisation (onnxruntime's quantize_dynamic).")
@click.option("--fp16", "fp16", is_flag=True, help="Weights in float16, inputs, outputs and states float32.")
@click.option("--static", "static", is_flag=True,
              help="Loop-free, fixed shapes (batch 1, --static-chunk steps per call), for NNAPI and CoreML.")
@click.option("--static-int8", "static_int8", is_flag=True,
              help="The static form with static QDQ int8 weights, calibrated on --calibration (else random input).")
@click.option("--static-chunk", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Time steps per call of the static forms.")
@click.option("--calibration", type=click.Path(path_type=Path), help="Data to calibrate static-int8 on (as --data).")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the variants [default: MODEL's folder].")
@click.option("--data", type=click.Path(path_type=Path), help=_DATA_HELP)
@click.option("--steps", type=click.IntRange(min=2_000, max=10_000_000), default=10_000, show_default=True,
              help="Length of the stream each variant's error is measured on.")
@click.option("--threshold", type=float, default=None, help="Report decision agreement at this threshold.")
@click.option("--ort", "ort_format", is_flag=True,
              help="Also write MODEL and each variant in ORT format, with the required-operators config of a "
                   "minimal onnxruntime build.")
def optimize(model: Path, int8: bool, fp16: bool, static: bool, static_int8: bool, static_chunk: int,
             calibration: Path | None, output_dir: Path | None, data: Path | None, steps: int,
             threshold: float | None, ort_format: bool) -> None:
    """Write smaller or faster variants of MODEL, each checked against MODEL on a long stream.

    A variant whose error exceeds its bound, or grows along the stream, is not kept, and the exit code is 1.
    """
    import contextlib
    import os

    from edge_rnn.deploy import make_variant, measure_against, mobile_support, to_ort

    _existing(model, "model")
    names = [n for n, on in (("int8", int8), ("fp16", fp16), ("static", static), ("static-int8", static_int8)) if on]
    if not names and not ort_format:
        raise click.UsageError("choose at least one variant: --int8, --fp16, --static, --static-int8 (or --ort alone "
                               "for MODEL itself)")
    if static_chunk != 1 and not (static or static_int8):
        raise click.UsageError("--static-chunk goes with --static or --static-int8")
    if calibration is not None and not static_int8:
        raise click.UsageError("--calibration goes with --static-int8")
    sequences = _read_data(data)
    calibration_data = _read_data(calibration)
    folder = output_dir or model.parent
    failed, kept = [], [model]
    for name in names:
        dst = folder / f"{model.stem}.{name}.onnx"
        tmp = dst.with_name(f".{dst.name}.partial")
        try:
            variant = make_variant(name, model, tmp, chunk=static_chunk, calibration=calibration_data)
            npu = mobile_support(tmp) if name.startswith("static") else []
            err = measure_against(tmp, model, steps=steps, data=sequences, threshold=threshold)
            if err.ok:
                os.replace(tmp, dst)
                kept.append(dst)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        ratio = dst.stat().st_size / model.stat().st_size if err.ok else float("nan")
        where = f"wrote {dst} ({ratio:.2f}x the size)" if err.ok else f"{name}: NOT written (fails its bound)"
        click.echo(f"{where}; operators: {', '.join(f'{k} x{v}' for k, v in sorted(variant.operators.items()))}")
        for note in variant.notes:
            click.echo(f"  note: {note}")
        for support in npu:
            click.echo(f"  {support.describe()}")
        click.echo("  " + err.table().replace("\n", "\n  "))
        if not err.ok:
            failed.append(name)
    if ort_format:
        written, config = to_ort(kept, folder)
        click.echo(f"ORT format: {', '.join(str(p) for p in written)}; operators for a minimal build: {config}")
    if failed:
        raise EdgeRnnError(f"variant(s) {failed} exceed their error bound or drift along the stream; not written")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--variant", default=None, help="With a bundle folder: the variant to serve [default: fp32].")
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
@click.option("--max-message-bytes", type=click.IntRange(min=16), default=1 << 20, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@click.option("--token-file", type=click.Path(path_type=Path), default=None,
              help="A file holding the bearer token every route but /healthz and /readyz then needs.")
def serve(model: Path, variant: str | None, host: str, port: int, max_streams: int, idle_timeout: float,
          max_batch: int, max_wait_ms: float, max_queue: int, max_message_bytes: int, threads: int | None,
          token_file: Path | None) -> None:
    """Serve MODEL (or a bundle's variant) as streams over WebSocket and HTTP (needs edge-rnn[serve])."""
    try:
        import uvicorn

        from edge_rnn.service._app import ServiceConfig, create_app
    except ImportError as e:
        raise EdgeRnnError(f"edge-rnn serve needs the serve extra: pip install 'edge-rnn[serve]' ({e.name} is "
                           "missing)") from None
    from edge_rnn.runtime import StreamingModel

    token = None
    if token_file is not None:
        _existing(token_file, "--token-file")
        token = token_file.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise EdgeRnnError(f"--token-file {token_file}: expected a token of at least 16 characters")
    m = StreamingModel.load(model, threads=threads, **({"variant": variant} if variant else {}))
    config = ServiceConfig(max_streams=max_streams, idle_timeout=idle_timeout, max_batch=max_batch,
                           max_wait_ms=max_wait_ms, max_queue=max_queue, max_message_bytes=max_message_bytes,
                           token=token)
    click.echo(f"serving {m.source} on http://{host}:{port} (WebSocket /v1/streams/ws)", err=True)
    uvicorn.run(create_app(m, config, variant=m.variant), host=host, port=port, log_level="warning",
                ws="websockets-sansio", ws_per_message_deflate=False)  # float frames barely compress


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


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The bundle's folder (new or empty).")
@click.option("--variants", default="fp32,int8,fp16,static,static-int8", show_default=True,
              help="Comma-separated variants to include.")
@click.option("--ort", "ort_format", is_flag=True, help="Also each variant in ORT format, with the operators config.")
@click.option("--data", type=click.Path(path_type=Path), help=_DATA_HELP)
@click.option("--calibration", type=click.Path(path_type=Path), help="Data to calibrate static-int8 on.")
@click.option("--steps", type=click.IntRange(min=2_000, max=10_000_000), default=10_000, show_default=True,
              help="Length of the stream each variant's error is measured on.")
@click.option("--static-chunk", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Time steps per call of the static forms.")
@click.option("--threshold", type=float, default=None, help="Report decision agreement at this threshold.")
def package(model: Path, output: Path, variants: str, ort_format: bool, data: Path | None, calibration: Path | None,
            steps: int, static_chunk: int, threshold: float | None) -> None:
    """Write a deployment bundle of MODEL: its variants and a manifest of each one's error and speed.

    Load a variant with StreamingModel.load(BUNDLE, variant="int8") or the fastest within an error with
    StreamingModel.load(BUNDLE, max_error=1e-3). A variant that fails its error bound is left out, and listed.
    """
    from edge_rnn.deploy import manifest_table
    from edge_rnn.deploy import package as make_bundle

    _existing(model, "model")
    names = tuple(v.strip() for v in variants.split(",") if v.strip())
    result = make_bundle(model, output, variants=names, ort_format=ort_format, data=_read_data(data),
                         calibration=_read_data(calibration), steps=steps, chunk=static_chunk, threshold=threshold,
                         log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {output}/manifest.json, measured on {result.manifest['machine']['processor']} "
               f"({result.manifest['machine']['cpus']} CPUs, one thread)")
    click.echo(manifest_table(result.manifest))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
def inspect(model: Path) -> None:
    """Print MODEL's inputs, outputs, states, operators, opset and size. Works on any ONNX or ORT-format file."""
    from edge_rnn._inspect import describe, describe_ort

    if model.is_dir():  # a bundle: its manifest, as a table
        from edge_rnn.runtime._bundle import number, read_manifest

        manifest = read_manifest(model)
        rows = [f"{model}: a bundle of {len(manifest['variants'])} variant(s) of {manifest.get('source_model', '?')}"]
        for name, e in manifest["variants"].items():
            err, step = number(e, "error", "max_abs"), number(e, "speed", "step_us")
            grows = isinstance(e.get("error"), dict) and e["error"].get("grows") is True
            rows.append(f"  {name:<12} {str(e.get('file', '?')):<28} max err "
                        f"{'?' if err is None else f'{err:.2e}'}{' GROWS' if grows else ''}  step "
                        f"{'?' if step is None else f'{step:.1f}'} us")
        click.echo("\n".join(rows))
        return
    _existing(model, "model")
    with open(model, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"ORTM":  # an ORT-format file (mobile builds): onnx cannot parse it, onnxruntime can
        click.echo(describe_ort(model))
        return
    proto, contract = _read_contract(model)
    click.echo(describe(proto, contract, model.stat().st_size))


def _int_list(value: str, name: str) -> list[int]:
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=name) from None
    if not out or min(out) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}", param_hint=name)
    return out


def _foreign_options(f: Any) -> Any:
    """The options of ``run`` and ``bench`` for a model edge-rnn did not write, and for NaN/Inf inputs."""
    options = [
        click.option("--allow-nonfinite", is_flag=True, help="Let NaN and Inf inputs through (refused by default)."),
        click.option("--state-map", "state_map", multiple=True, metavar="INPUT=OUTPUT",
                     help="A state pair of a model without an edge_rnn contract (repeat for each state)."),
        click.option("--constant", "constants", multiple=True, metavar="NAME=VALUE",
                     help="An input fed the same value on every call, e.g. sr=16000 or 'w=[1, 2]' (JSON)."),
        click.option("--batch-axis", type=click.IntRange(min=0), default=None,
                     help="Without a contract: the inputs' and outputs' batch axis [default: 0]."),
        click.option("--time-axis", type=click.IntRange(min=0), default=None,
                     help="Without a contract: their time axis [default: none, one step per call]."),
        click.option("--state-batch-axis", type=click.IntRange(min=0), default=None,
                     help="Without a contract: the states' batch axis, where it is not their one dynamic dimension."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _pairs(values: tuple[str, ...], flag: str, form: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name.strip() or not rest.strip():
            raise click.BadParameter(f"expected {form}, got {v!r}", param_hint=flag)
        out.append((name.strip(), rest.strip()))
    return out


def _foreign(state_map: tuple[str, ...], constants: tuple[str, ...], batch_axis: int | None, time_axis: int | None,
             state_batch_axis: int | None) -> dict[str, Any]:
    """The keywords of StreamingModel.load for the options given (none given: none passed)."""
    import json

    kw: dict[str, Any] = {}
    if state_map:
        kw["state_map"] = dict(_pairs(state_map, "--state-map", "INPUT=OUTPUT"))
    if constants:
        parsed = {}
        for name, text in _pairs(constants, "--constant", "NAME=VALUE"):
            try:
                parsed[name] = json.loads(text)
            except (ValueError, RecursionError):
                raise click.BadParameter(f"{name}: expected a JSON number or list, got {text!r}",
                                         param_hint="--constant") from None
        kw["constants"] = parsed
    for key, value in (("batch_axis", batch_axis), ("time_axis", time_axis), ("state_batch_axis", state_batch_axis)):
        if value is not None:
            kw[key] = value
    return kw


def _load_runtime_model(model: Path, threads: int | None, allow_nonfinite: bool = False, **foreign: Any) -> Any:
    from edge_rnn.runtime import StreamingModel

    _existing(model, "model")
    return StreamingModel.load(model, threads=threads, allow_nonfinite=allow_nonfinite, **_foreign(**foreign))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True,
              help="A .npy array, time x features (for a model with one input).")
@click.option("--chunk", type=click.IntRange(min=1), default=32, show_default=True, help="Time steps per call.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where to write the outputs: .npy for one output, .npz for several.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@_foreign_options
def run(model: Path, input_path: Path, chunk: int, output: Path, threads: int | None, allow_nonfinite: bool,
        **foreign: Any) -> None:
    """Stream a .npy array through MODEL chunk by chunk, carrying the state, and save the outputs.

    A model edge-rnn did not write takes --state-map, --constant and the axis options.
    """
    import time

    import numpy as np

    from edge_rnn.runtime import run_sequence

    m = _load_runtime_model(model, threads, allow_nonfinite, **foreign)
    _existing(input_path, "input")
    from edge_rnn.harness import read_npy

    with open(input_path, "rb") as f:
        if f.read(2) == b"PK":
            raise EdgeRnnError(f"{input_path}: expected one .npy array of shape (time, ...), got an .npz archive")
    data = read_npy(input_path)  # the declared size checked against the file's first; never unpickled
    if data.ndim == 0:
        raise EdgeRnnError(f"{input_path}: expected one .npy array of shape (time, ...), got a scalar")
    suffix = output.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise EdgeRnnError(f"-o {output}: expected a file name ending in .npy or .npz")
    if len(m.inputs) != 1:
        raise EdgeRnnError(f"{model}: has inputs {[p.name for p in m.inputs]}; run streams models with one input")
    port = m.inputs[0]
    if data.dtype.kind == "f" and port.dtype.kind == "f" and data.dtype != port.dtype:
        data = data.astype(port.dtype)  # a float64 .npy is the common case; the model says float32
    elif data.dtype.kind in "iu" and port.dtype.kind in "iu" and np.can_cast(data.dtype, port.dtype):
        data = data.astype(port.dtype)  # int32 token ids for an int64 input: exact
    # anything else (floats for token ids, ...) goes as it is: the runtime refuses it, never rounds it
    if len(m.outputs) > 1 and suffix != ".npz":
        raise EdgeRnnError(f"{model} has outputs {[p.name for p in m.outputs]}: expected -o ending in .npz")
    if port.stream_time_axis is None:
        chunk = 1  # one step per call: rows are steps
    total = len(data)
    stream = m.open_stream()
    t0 = time.perf_counter()
    with click.progressbar(length=total, label="streaming", file=sys.stderr,
                           show_pos=True) if total >= 200 * chunk else _nullbar() as bar:
        result = run_sequence(m, stream, data, chunk=chunk, progress=bar.update)
    seconds = time.perf_counter() - t0
    calls = -(-total // chunk)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "wb") as f:  # a file object: numpy adds no suffix of its own
            if suffix == ".npz":
                np.savez(f, **result)
            else:
                np.save(f, next(iter(result.values())))
    except OSError as e:
        raise EdgeRnnError(f"-o {output}: cannot write it ({e.strerror or e})") from None
    n_steps = stream.steps
    shapes = ", ".join(f"{k} {v.shape}" for k, v in result.items())
    click.echo(f"streamed {n_steps} steps in {calls} calls of up to {chunk}: {seconds * 1e3:.1f} ms "
               f"({n_steps / seconds:,.0f} steps/s); wrote {output}: {shapes}")


class _nullbar:
    """Stands in for click's progress bar on short inputs."""

    def __enter__(self) -> _nullbar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--streams", default="1,8,64,256", show_default=True, help="Comma-separated stream counts.")
@click.option("--chunk", "chunks", default="1,10,32", show_default=True, help="Comma-separated chunk lengths.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="onnxruntime intra-op threads.")
@click.option("--seconds", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
              help="Measuring time per table row.")
@_foreign_options
def bench(model: Path, streams: str, chunks: str, threads: int, seconds: float, allow_nonfinite: bool,
          **foreign: Any) -> None:
    """Latency and throughput of step_batch over many streams, against one plain session.run per stream.

    A model edge-rnn did not write takes --state-map, --constant and the axis options.
    """
    from edge_rnn.runtime.bench import bench as run_bench
    from edge_rnn.runtime.bench import format_table

    n_streams = _int_list(streams, "--streams")
    n_chunks = _int_list(chunks, "--chunk")
    m = _load_runtime_model(model, threads, allow_nonfinite, **foreign)
    click.echo(f"{model}: {threads} thread(s); naive = one session.run per stream with fresh numpy feeds", err=True)
    fixed = {p.shape[p.time_axis] for p in m.inputs if p.time_axis is not None} - {None}
    if fixed and set(n_chunks) != fixed:  # a static form takes exactly its fixed chunk
        click.echo(f"note: {model} takes exactly {min(fixed)} step(s) per call (a static form); chunks "
                   f"{n_chunks} replaced by {sorted(fixed)}", err=True)
        n_chunks = sorted(fixed)
    rows = run_bench(m, streams=n_streams, chunks=n_chunks, seconds=seconds)
    click.echo(format_table(rows))
    if any(c > 1 for c in n_chunks) and not any(p.time_axis is not None for p in m.inputs):
        click.echo("note: one step per call for this model (a cell); chunks > 1 skipped")


if __name__ == "__main__":  # pragma: no cover
    main()
