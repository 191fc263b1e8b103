"""export, verify and inspect."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from edge_rnn._numbers import is_int
from edge_rnn.cli._common import (
    _DATA_HELP,
    _build,
    _existing,
    _int_list,
    _print_parity,
    _read_data,
    main,
)
from edge_rnn.cli._progress import progress, quiet_option
from edge_rnn.errors import EdgeRnnError, ModelFormatError, StateError

if TYPE_CHECKING:  # torch is imported by the commands that need it, when they run
    import torch

    from edge_rnn.contract import Contract
    from edge_rnn.spec import RecurrentSpec


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
@quiet_option
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
    from edge_rnn.exporters import export as export_module

    if factory is not None:
        if arch or input_size or hidden_size:
            raise click.UsageError("give either FACTORY or --arch/--input-size/--hidden-size, not both")
        _export_factory(factory, (example_shape, example_dtype), batch_axis, time_axis, weights, decomposed,
                        long_steps, data, output, keep_failed)
        return
    if example_dtype != "float32" or example_shape:
        raise click.UsageError("--example-shape and --example-dtype go with FACTORY; a built layer takes float32")
    spec = _layer_spec(arch, input_size, hidden_size, nonlinearity, num_layers=num_layers,
                       bidirectional=bidirectional, batch_first=batch_first, bias=not no_bias, proj_size=proj_size,
                       cell=cell)
    sequences = _read_data(data)
    module = _build(spec, weights, None if weights else seed)
    extra = {} if weights else {"seed": seed}
    report = export_module(module, output, decomposed=decomposed, long_steps=long_steps, extra_source=extra,
                           raise_on_failure=False, data=sequences, keep_failed=keep_failed, progress=progress())
    _print_report(report, output)


def _layer_spec(arch: str | None, input_size: int | None, hidden_size: int | None, nonlinearity: str,
                **shape: Any) -> RecurrentSpec:
    """The RecurrentSpec of the layer --arch, --input-size, --hidden-size and the shape options describe."""
    from edge_rnn.exporters import RecurrentSpec

    missing = [n for n, v in (("--arch", arch), ("--input-size", input_size), ("--hidden-size", hidden_size)) if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give a FACTORY)")
    if nonlinearity != "tanh" and arch != "rnn":
        raise EdgeRnnError(f"--nonlinearity {nonlinearity}: only the vanilla RNN (--arch rnn) takes it")
    return RecurrentSpec(
        kind=arch, input_size=input_size, hidden_size=hidden_size, nonlinearity=nonlinearity, **shape,
        module=f"torch.nn.{ {'rnn': 'RNN', 'lstm': 'LSTM', 'gru': 'GRU'}[arch]}{'Cell' if shape['cell'] else ''}",
    )


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
                           keep_failed=keep_failed, progress=progress())
    _print_report(report, output)


_DEFAULT_SEED = 1  # verify's inputs where --seed is not given and the weights were not drawn from a seed


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("factory", required=False)
@click.option("--weights", type=click.Path(path_type=Path), help="The state_dict the model was exported from.")
@click.option("--long-steps", type=click.IntRange(min=0), default=10_000, show_default=True)
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=None,
              help="Seed for the random test inputs, states and chunk boundaries [default: the seed a bare layer's "
                   "weights were drawn from, else 1]; the report names it.")
@click.option("--data", type=click.Path(path_type=Path), help=_DATA_HELP)
@click.option("--every-row", is_flag=True, help="Print every comparison, not the worst per case kind and tensor.")
@click.option("--against", type=click.Path(path_type=Path),
              help="Check MODEL, a variant (int8, fp16, ...), against this float32 model instead: no torch needed.")
@click.option("--steps", type=click.IntRange(min=2_000, max=10_000_000), default=10_000, show_default=True,
              help="With --against: the length of the stream.")
@click.option("--threshold", type=float, default=None,
              help="With --against: report decision agreement of the outputs at this threshold.")
def verify(model: Path, factory: str | None, weights: Path | None, long_steps: int, seed: int | None,
           data: Path | None,
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
        _verify_against(model, against, steps, _DEFAULT_SEED if seed is None else seed, data, threshold)
        return
    from edge_rnn.exporters import verify as verify_model
    from edge_rnn.harness import read_contract

    _existing(model, "model")
    contract = read_contract(model)  # through onnxruntime: .onnx and .ort alike
    if contract.source.get("variant"):
        raise EdgeRnnError(f"{model}: a {contract.source['variant']} variant of an exported model; check it "
                           f"against the float32 model: edge-rnn verify {model} --against MODEL.onnx")
    sequences = _read_data(data)
    if contract.source.get("kind") == "module":
        module, drawn = _whole_model_from(model, contract, factory, weights), None
    else:
        module, drawn = _layer_from(model, contract, factory, weights)
    # a fixed seed, whatever the weights came from: the check is the same check on every run
    seed = seed if seed is not None else drawn if drawn is not None else _DEFAULT_SEED
    report = verify_model(module, model, long_steps=long_steps, seed=seed, raise_on_failure=False, data=sequences)
    report.notes.append(f"seed {seed}: the random inputs, states and chunk boundaries (--seed to change)")
    _print_parity(report, every_row)
    if not report.ok:
        sys.exit(1)


def _whole_model_from(model: Path, contract: Contract, factory: str | None, weights: Path | None
                      ) -> torch.nn.Module:
    """The whole model to check ``model`` against: FACTORY's, with --weights loaded, in eval mode."""
    from edge_rnn.exporters._checkpoint import load_factory, load_state_dict
    from edge_rnn.exporters._whole_verify import other_weights

    if factory is None:
        raise EdgeRnnError(
            f"{model}: a whole model ({contract.source.get('module')}); pass the factory it was exported from: "
            f"edge-rnn verify {model} package.module:factory [--weights state_dict.pt]")
    module = load_factory(factory)
    if weights is not None:
        load_state_dict(module, weights)
    elif other_weights(module, contract):
        raise StateError(f"{model}: was exported from other weights than {factory} returns (a state_dict, or an "
                         "unseeded factory's draw); pass it with --weights")
    module.eval()
    return module


def _layer_from(model: Path, contract: Contract, factory: str | None, weights: Path | None
                ) -> tuple[torch.nn.Module, Any]:
    """The bare layer to check ``model`` against, rebuilt from its contract with --weights or the weights' seed
    it records; and that seed, the check's default (None with --weights: the check then uses a fixed one)."""
    from edge_rnn.exporters import RecurrentSpec

    if factory is not None:
        raise click.UsageError("FACTORY is for whole models; a bare layer is rebuilt from the model's metadata")
    spec = RecurrentSpec.from_source(contract.source)
    seed = contract.source.get("seed")
    if weights is None and seed is None:
        raise StateError(f"{model}: was exported from a state_dict; pass it with --weights")
    if weights is None and not is_int(seed, 0, 2**63 - 1):
        raise ModelFormatError(f"{model}: expected the contract's seed to be an int in 0..2**63-1, got {seed!r}")
    return _build(spec, weights, None if weights else seed), seed


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
def inspect(model: Path) -> None:
    """Print MODEL's inputs, outputs, states, operators, opset and size. Works on any ONNX or ORT-format file,
    without onnx or torch.

    A bundle folder lists its variants, each file checked against the SHA-256 its manifest gives (as loading a
    variant checks it); any file that is missing or changed is marked, and the exit code is 1.
    """
    from edge_rnn._inspect import describe, describe_bundle

    if model.is_dir():
        listing, failed, checked = describe_bundle(model)
        click.echo(listing)
        if failed:
            raise EdgeRnnError(f"{model}: {len(failed)} of {checked} files fail their check against the manifest: "
                               + "; ".join(failed))
        return
    click.echo(describe(_existing(model, "model")))
    hint = _lift_hint(model)
    if hint:
        click.echo(hint)


def _lift_hint(model: Path) -> str | None:
    """For an ONNX file with recurrent nodes and no contract: whether edge-rnn lift can make it streamable."""
    from edge_rnn._inspect import recurrent_without_contract

    if not recurrent_without_contract(model):
        return None
    try:
        from edge_rnn.deploy.lifting._api import lift_hint
    except ModuleNotFoundError:  # a runtime-only install: no onnx to try the lift with
        return ("lift:      it has recurrent nodes and no contract: edge-rnn lift (pip install 'edge-rnn[deploy]') "
                "may make it streamable")
    return lift_hint(model)
