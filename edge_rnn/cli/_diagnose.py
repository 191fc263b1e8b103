"""diagnose: what a model's gates do and how far back it remembers."""

from __future__ import annotations

from pathlib import Path

import click

from edge_rnn.cli._common import _build, _existing, _read_array, main
from edge_rnn.cli._progress import progress, quiet_option, say
from edge_rnn.errors import EdgeRnnError


def _sequence(path: Path):
    """--input: one sequence, time first, from a .npy file: read by the bounded reader every command shares
    (never unpickled), refused when it holds NaN or Inf (the check every diagnostics path makes). Its dtype is
    the file's: an ONNX model's check names it, then casts it (a PyTorch model's input is cast by _for_torch)."""

    from edge_rnn.diagnostics._memory import finite_input

    if path.suffix != ".npy":
        _existing(path, "--input")
        raise EdgeRnnError(f"--input {path}: expected a .npy file of one sequence, (time, features...)")
    x = _read_array(path, "--input")
    if x.dtype.kind not in "fiu":
        raise EdgeRnnError(f"--input {path}: expected a plain .npy numeric array (time, features...), got "
                           f"{x.dtype} {x.shape}")
    return finite_input(x, what=f"--input {path}")


def _for_torch(x, path: Path, input_size: int | None):
    """--input for a PyTorch model: float32 (a float64 file is cast, as for ONNX), its width checked here against a
    layer built with --input-size, so that a refusal names the file, not the layer's first call."""
    import numpy as np

    from edge_rnn.diagnostics._memory import finite_input

    if input_size is not None and (x.ndim != 2 or x.shape[1] != input_size):
        raise EdgeRnnError(f"--input {path}: expected (time, {input_size}) for --input-size {input_size} (time first, "
                           f"any float is cast), got {x.shape} {x.dtype} in the file")
    return finite_input(x, np.float32 if x.dtype.kind == "f" else None, what=f"--input {path}")


@main.command()
@click.argument("source", required=False)
@click.option("--arch", type=click.Choice(["rnn", "lstm", "gru"]), help="Build a layer (with its sizes) to look at.")
@click.option("--input-size", type=click.IntRange(min=1))
@click.option("--hidden-size", type=click.IntRange(min=1))
@click.option("--num-layers", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--bidirectional", is_flag=True)
@click.option("--batch-first", is_flag=True, help="x is (batch, time, features) instead of (time, batch, features).")
@click.option("--proj-size", type=click.IntRange(min=0), default=0, show_default=True, help="LSTM projection size.")
@click.option("--nonlinearity", type=click.Choice(["tanh", "relu"]), default="tanh", show_default=True,
              help="Vanilla RNN only.")
@click.option("--seed", type=click.IntRange(min=0, max=2**64 - 1), default=0, show_default=True,
              help="The built layer's init, the perturbations, and --demo's training: what numpy's default_rng and "
                   "torch.manual_seed both take.")
@click.option("--weights", type=click.Path(path_type=Path), default=None, help="A state_dict for the PyTorch model.")
@click.option("--batch-axis", type=click.IntRange(min=0), default=0, show_default=True,
              help="With FACTORY: the batch axis of the model's input.")
@click.option("--time-axis", type=click.IntRange(min=0), default=1, show_default=True,
              help="With FACTORY: the time axis of the model's input.")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="One input sequence, time first: a .npy (time, features), or (time,) token ids.")
@click.option("--compare", multiple=True, metavar="FILE|FOLDER[:VARIANT]",
              help="An ONNX file whose empirical memory curve is drawn beside (an export, an int8 variant...); a "
                   "bundle folder: every variant's, as for a bundle SOURCE; FOLDER:VARIANT: that variant's. A "
                   "bundle's files are checked against its manifest's SHA-256. Repeat for more.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Write the figure here (.png, .svg, .pdf); needs edge-rnn[diag].")
@click.option("--max-lag", type=click.IntRange(min=1, max=10_000), default=50, show_default=True)
@click.option("--starts", type=click.IntRange(min=1, max=1000), default=8, show_default=True,
              help="Perturbation points averaged in the memory curve.")
@click.option("--demo", is_flag=True,
              help="Train a vanilla RNN, an LSTM and a GRU on a delayed-recall task (CPU, seeded by --seed, a few "
                   "minutes), export each with its int8 variant, and diagnose them side by side; takes only --plot, "
                   "--out, --seed and --quiet.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="With --demo: keep the exported models (memory_ARCH.onnx, memory_ARCH.int8.onnx) in this "
                   "folder, new or empty (one that holds anything is refused before training).")
@quiet_option
@click.pass_context
def diagnose(ctx: click.Context, source: str | None, arch: str | None, input_size: int | None,
             hidden_size: int | None, num_layers: int, bidirectional: bool, batch_first: bool, proj_size: int,
             nonlinearity: str, seed: int, weights: Path | None, batch_axis: int, time_axis: int,
             input_path: Path | None,
             compare: tuple[str, ...], plot_path: Path | None, max_lag: int, starts: int, demo: bool,
             out_dir: Path | None) -> None:
    """What a model's gates do and how far back it remembers.

    SOURCE is a streaming ONNX file (its empirical memory curve, without torch), a bundle folder (edge-rnn
    package: every variant's curve), or a FACTORY (package.module:callable, as for export); or build a layer with
    --arch, --input-size and --hidden-size (and the shape options --num-layers, --bidirectional, --batch-first,
    --proj-size, --nonlinearity, as for export).
    A PyTorch model also gets its gate statistics, memory horizons, and gradient flow beside vanilla
    RNN, LSTM and GRU baselines of its size. --demo trains the three on a memory task and shows what each learnt.
    """
    from edge_rnn.diagnostics import diagnose_bundle, diagnose_onnx, summary

    _check_demo(ctx, demo, out_dir, input_path)
    if plot_path is not None:  # before any work: a missing extra, a format or a folder is a clear error at once
        from edge_rnn.diagnostics._plot import plot_target

        plot_target(plot_path, "--plot")
    if demo:
        _demo(plot_path, out_dir, seed)
        return
    others = _compared(compare)  # loaded (and hash-checked) before any work
    x = _sequence(input_path)
    shape = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, proj_size=proj_size,
                 nonlinearity=nonlinearity)
    layer_opts = (bidirectional, batch_first, proj_size, nonlinearity != "tanh")
    if source is not None and Path(source).is_dir():  # a bundle: every variant's memory curve
        _refuse("a bundle holds its variants: --arch, --weights and --compare go without it", arch, weights, compare,
                *layer_opts)
        d = diagnose_bundle(Path(source), x, max_lag=max_lag, starts=starts, seed=seed, progress=progress(),
                            what=f"--input {input_path}")
    elif source is not None and source.endswith(".onnx"):
        _refuse("an ONNX file holds its weights: --arch, its shape options and --weights go with a PyTorch model",
                arch, weights, *layer_opts)
        d = diagnose_onnx(_existing(Path(source), "model"), x, max_lag=max_lag, starts=starts, compare=others,
                          seed=seed, progress=progress(), what=f"--input {input_path}")
    else:
        module, axes, ids = _torch_model(source, arch, input_size, hidden_size, shape, seed, weights,
                                         (batch_axis, time_axis))
        from edge_rnn.diagnostics import diagnose as run

        x = _for_torch(x, input_path, None if source else input_size)
        d = run(module, x, batch_axis=axes[0], time_axis=axes[1], max_lag=max_lag, starts=starts, compare=others,
                ids=ids, seed=seed, source=source or _built_name(arch, input_size, hidden_size, shape),
                progress=progress(), what=f"--input {input_path}")
    click.echo("\n".join(summary(d)))
    if plot_path is not None:
        from edge_rnn.diagnostics._plot import plot

        click.echo(f"wrote {plot(d, plot_path)}")


_DEMO_TAKES = {"demo", "plot_path", "out_dir", "seed", "quiet"}


def _check_demo(ctx: click.Context, demo: bool, out_dir: Path | None, input_path: Path | None) -> None:
    """Usage errors: --demo with anything but --plot, --out and --seed; --out without --demo; no --input without."""
    from click.core import ParameterSource

    if not demo:
        _refuse("--out goes with --demo (where the demo's exported models are kept)", out_dir)
        _refuse("missing --input (one sequence, a .npy file), or give --demo", input_path is None)
        return
    given = [p for p in ctx.command.params if p.name not in _DEMO_TAKES
             and ctx.get_parameter_source(p.name) not in (ParameterSource.DEFAULT, None)]
    if given:
        names = ", ".join(p.opts[0] if p.opts[0].startswith("-") else p.name.upper() for p in given)
        raise click.UsageError("--demo trains and diagnoses its own models: it takes only --plot, --out, --seed and "
                               f"--quiet, got {names}")
    if out_dir is not None:
        _new_or_empty(out_dir)


def _new_or_empty(out_dir: Path) -> None:
    """--out is a new folder or holds nothing yet, checked before the minutes of training: the demo writes its models
    there and would replace a file of the same name without a word (as ``package`` refuses a folder that is not new
    or empty)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise click.UsageError(f"--out {out_dir}: expected a folder, got a file")
    if not out_dir.is_dir():
        return
    try:
        held = sorted(p.name for p in out_dir.iterdir())
    except OSError as e:
        raise EdgeRnnError(f"--out {out_dir}: cannot read the folder ({e.strerror or e})") from None
    if held:
        shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
        raise EdgeRnnError(f"--out {out_dir}: expected a new or empty folder, got one holding {len(held)} "
                           f"entr{'y' if len(held) == 1 else 'ies'} ({shown})")


def _demo(plot_path: Path | None, out_dir: Path | None, seed: int) -> None:
    """--demo: train, export, quantise and diagnose the memory task's three models; print the table, draw the
    figure. The models go to --out, else to a temporary folder removed at the end."""
    import dataclasses
    import tempfile

    from edge_rnn.demo import demo_table, run_demo
    from edge_rnn.demo._config import demo_config
    from edge_rnn.diagnostics import summary

    config = demo_config()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) if out_dir is None else out_dir
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgeRnnError(f"--out {out_dir}: cannot create the folder ({e.strerror or e})") from None
        result = run_demo(config, folder, log=say)
    for r in result.results:
        click.echo("\n".join(summary(r.diagnosis)) + "\n")
    click.echo("\n".join(demo_table(result)))
    if out_dir is not None:
        click.echo(f"models in {out_dir}: " + ", ".join(f"{r.onnx.name}, {r.int8.name}" for r in result.results))
    if plot_path is not None:
        from edge_rnn.demo._figure import demo_figure

        click.echo(f"wrote {demo_figure(result, plot_path)}")


def _compared(entries: tuple[str, ...]) -> list:
    """--compare: a file (its path), a bundle folder (every variant, loaded) or FOLDER:VARIANT (that one)."""
    from edge_rnn.runtime import StreamingModel
    from edge_rnn.runtime._bundle import load_manifest

    out: list = []
    for entry in entries:
        path = Path(entry)
        folder, sep, name = entry.rpartition(":")
        if path.is_dir():
            out += [StreamingModel.load(path, variant=v) for v in load_manifest(path).variants]
        elif not path.exists() and sep and name and Path(folder).is_dir():
            out.append(StreamingModel.load(Path(folder), variant=name))
        else:
            out.append(_existing(path, "--compare"))
    return out


def _refuse(message: str, *given: object) -> None:
    """A usage error when any of the options ``given`` is set: they do not go with the SOURCE given."""
    if any(given):
        raise click.UsageError(message)


def _built_name(arch: str | None, input_size: int | None, hidden_size: int | None, shape: dict) -> str:
    """The built layer's name in the report: ``gru 40 -> 64 x 1``, with the shape options set."""
    extra = [name for name, on in (("bidirectional", shape["bidirectional"]), ("batch_first", shape["batch_first"]))
             if on]
    extra += [f"proj_size={shape['proj_size']}"] if shape["proj_size"] else []
    extra += [shape["nonlinearity"]] if shape["nonlinearity"] != "tanh" else []
    return f"{arch} {input_size} -> {hidden_size} x {shape['num_layers']}" + (f" ({', '.join(extra)})" if extra else "")


def _torch_model(source: str | None, arch: str | None, input_size: int | None, hidden_size: int | None,
                 shape: dict, seed: int, weights: Path | None, axes: tuple[int, int]):
    """The PyTorch model to diagnose, the batch and time axes of its input, and its input's id range (or None)."""
    try:
        import torch  # noqa: F401 - only to say at once that it is missing
    except ImportError:
        raise EdgeRnnError("diagnosing a PyTorch model needs torch: pip install 'edge-rnn[export]' (an ONNX file "
                           "needs only the runtime)") from None
    if source is not None:
        _refuse("give either FACTORY or --arch/--input-size/--hidden-size, not both", arch, input_size, hidden_size)
        _refuse("--bidirectional, --batch-first, --proj-size and --nonlinearity shape a layer built with --arch; a "
                "FACTORY's model has its own", shape["bidirectional"], shape["batch_first"], shape["proj_size"],
                shape["nonlinearity"] != "tanh")
        module, ids = _factory_model(source, weights)
        return module, axes, ids
    missing = [n for n, v in (("--arch", arch), ("--input-size", input_size), ("--hidden-size", hidden_size)) if not v]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)} (or give SOURCE: a .onnx file or a FACTORY)")
    from edge_rnn.cli._export import _layer_spec

    spec = _layer_spec(arch, input_size, hidden_size, shape["nonlinearity"], num_layers=shape["num_layers"],
                       bidirectional=shape["bidirectional"], batch_first=shape["batch_first"], bias=True,
                       proj_size=shape["proj_size"], cell=False)
    return _build(spec, weights, None if weights else seed), (0, 1) if shape["batch_first"] else (1, 0), None


def _factory_model(source: str, weights: Path | None):
    """The module FACTORY ``source`` makes, with ``weights`` loaded, in eval mode; and its input's id range when it
    starts from an embedding (else None)."""
    import torch

    from edge_rnn.exporters._checkpoint import load_factory, load_state_dict

    module = load_factory(source)
    if not isinstance(module, torch.nn.Module):
        raise EdgeRnnError(f"{source}: expected a torch.nn.Module, got {type(module).__name__}")
    if weights is not None:
        load_state_dict(module, weights)
    embedding = next((m for m in module.modules() if isinstance(m, torch.nn.Embedding)), None)
    ids = (0, embedding.num_embeddings - 1) if embedding is not None else None
    return module.eval(), ids
