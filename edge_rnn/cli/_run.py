"""run and bench: the runtime from the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from edge_rnn.cli._common import (
    _check_fits,
    _foreign_options,
    _int_list,
    _load_runtime_model,
    _read_array,
    _variant_option,
    main,
)
from edge_rnn.cli._progress import progress, quiet_option
from edge_rnn.cli._run_values import check_values
from edge_rnn.errors import EdgeRnnError


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True,
              help="A .npy array, time x features (for a model with one input).")
@click.option("--chunk", type=click.IntRange(min=1), default=32, show_default=True, help="Time steps per call.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where to write the outputs: .npy for one output, .npz for several.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="onnxruntime intra-op threads.")
@_variant_option
@_foreign_options
@quiet_option
def run(model: Path, input_path: Path, chunk: int, output: Path, threads: int | None, variant: str | None,
        allow_nonfinite: bool, **foreign: Any) -> None:
    """Stream a .npy array through MODEL chunk by chunk, carrying the state, and save the outputs.

    MODEL is an ONNX or ORT file, or a bundle folder (edge-rnn package) whose --variant is streamed.

    A model edge-rnn did not write takes --state-map, --constant and the axis options.
    """
    import time

    from edge_rnn.runtime import run_sequence

    m = _load_runtime_model(model, threads, allow_nonfinite, variant, **foreign)
    data = _read_array(input_path, "--input")
    suffix = output.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise EdgeRnnError(f"-o {output}: expected a file name ending in .npy or .npz")
    _can_write(output, "-o")
    if len(m.inputs) != 1:
        raise EdgeRnnError(f"{model}: has inputs {[p.name for p in m.inputs]}; run streams models with one input")
    port = m.inputs[0]
    cast = _as_port_dtype(data, port, f"--input {input_path}")
    _check_fits(data, port, f"--input {input_path}", str(model))  # the file's shape and dtype, before any chunk
    check_values(data, cast, port, f"--input {input_path}", allow_nonfinite)  # named by file and step, not chunk
    data = cast
    _fixed_chunk_fits(port, len(data), chunk, f"--input {input_path}", str(model))
    if len(m.outputs) > 1 and suffix != ".npz":
        raise EdgeRnnError(f"{model} has outputs {[p.name for p in m.outputs]}: expected -o ending in .npz")
    if port.stream_time_axis is None:
        chunk = 1  # one step per call: rows are steps
    total = len(data)
    stream = m.open_stream()
    t0 = time.perf_counter()
    result = run_sequence(m, stream, data, chunk=chunk, progress=_steps_drawn(total, chunk))
    seconds = time.perf_counter() - t0
    _save(output, result)
    n_steps = stream.steps
    shapes = ", ".join(f"{k} {v.shape}" for k, v in result.items())
    which = "" if m.variant is None else f"variant {m.variant}: "
    click.echo(f"{which}streamed {n_steps} steps in {-(-total // chunk)} calls of up to {chunk}: "
               f"{seconds * 1e3:.1f} ms ({n_steps / seconds:,.0f} steps/s); wrote {output}: {shapes}")


def _fixed_chunk_fits(port: Any, steps: int, chunk: int, label: str, model: str) -> None:
    """A model with a fixed chunk (a static form) takes exactly that many steps per call: --chunk must be it and the
    file a whole number of such chunks, checked before streaming rather than refused at the first or last call."""
    t = port.stream_time_axis
    fixed = None if t is None else port.stream_shape[t]
    if fixed is None or (chunk == fixed and steps % fixed == 0):
        return
    rest = steps % fixed
    takes = f"{model} takes exactly {fixed} step(s) per call, a static form's fixed chunk"
    trim = f"trim the file to {steps - rest} steps or pad it to {steps - rest + fixed}"
    if chunk != fixed:
        whole = f" ({steps} is not a whole number of them either: {trim})" if rest else ""
        raise EdgeRnnError(f"{label} has {steps} steps and {takes}: expected --chunk {fixed}, got --chunk "
                           f"{chunk}{whole}")
    raise EdgeRnnError(f"{label}: expected a whole number of {fixed}-step chunks ({takes}), got {steps} steps "
                       f"({rest} left over): {trim}")


def _as_port_dtype(data: Any, port: Any, label: str) -> Any:
    """The input in the port's dtype where that is exact or expected; bool for a float input is refused as
    ``verify --data`` refuses it; anything else (floats for token ids, ...) goes as it is: the runtime refuses
    it, never rounds it."""
    import numpy as np

    from edge_rnn.harness import bool_for_float

    if data.dtype.kind == "b" and port.dtype.kind == "f":
        raise bool_for_float(label, port.name, port.dtype)
    if data.dtype.kind == "f" and port.dtype.kind == "f" and data.dtype != port.dtype:
        with np.errstate(over="ignore"):  # a value beyond the model's dtype is refused by check_values, named
            return data.astype(port.dtype)  # a float64 .npy is the common case; the model says float32
    if data.dtype.kind in "iu" and port.dtype.kind in "iu" and np.can_cast(data.dtype, port.dtype):
        return data.astype(port.dtype)  # int32 token ids for an int64 input: exact
    return data


def _can_write(path: Path, flag: str) -> None:
    """Checked before the work, not after it: ``path`` is not a folder, and the nearest folder that exists above
    it takes a new file (made there and removed at once; the folders between are made when it is written)."""
    import tempfile

    if path.is_dir():
        raise EdgeRnnError(f"{flag} {path}: expected a file name, got a directory")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise EdgeRnnError(f"{flag} {path}: cannot write it, {folder} is a file")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise EdgeRnnError(f"{flag} {path}: cannot write in {folder} ({e.strerror or e})") from None


def _save(output: Path, result: dict[str, Any]) -> None:
    """The outputs: one array as .npy, several as .npz (the suffix was checked before streaming)."""
    import numpy as np

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "wb") as f:  # a file object: numpy adds no suffix of its own
            if output.suffix.lower() == ".npz":
                np.savez(f, **result)
            else:
                np.save(f, next(iter(result.values())))
    except OSError as e:
        raise EdgeRnnError(f"-o {output}: cannot write it ({e.strerror or e})") from None


def _steps_drawn(total: int, chunk: int) -> Callable[[int], None] | None:
    """run_sequence's progress (steps done per call) drawn as the command line's one bar: on a terminal, without
    --quiet, and for an input of 200 calls or more (a shorter one is done before a bar would help)."""
    draw = progress() if total >= 200 * chunk else None
    if draw is None:
        return None
    done = 0

    def steps(n: int) -> None:
        nonlocal done
        done += n
        draw("streaming", done, total)

    return steps


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--streams", default="1,8,64,256", show_default=True, help="Comma-separated stream counts.")
@click.option("--chunk", "chunks", default="1,10,32", show_default=True, help="Comma-separated chunk lengths.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="onnxruntime intra-op threads.")
@click.option("--seconds", type=click.FloatRange(min=0.01), default=0.5, show_default=True,
              help="Measuring time per table row.")
@_variant_option
@_foreign_options
def bench(model: Path, streams: str, chunks: str, threads: int, seconds: float, variant: str | None,
          allow_nonfinite: bool, **foreign: Any) -> None:
    """Latency and throughput of step_batch over many streams, against one plain session.run per stream.

    MODEL is an ONNX or ORT file, or a bundle folder (edge-rnn package) whose --variant is measured.

    A model edge-rnn did not write takes --state-map, --constant and the axis options.
    """
    from edge_rnn.runtime.bench import bench as run_bench
    from edge_rnn.runtime.bench import format_table

    n_streams = _int_list(streams, "--streams")
    n_chunks = _int_list(chunks, "--chunk")
    m = _load_runtime_model(model, threads, allow_nonfinite, variant, **foreign)
    named = model if m.variant is None else f"{model} (variant {m.variant})"
    click.echo(f"{named}: {threads} thread(s); naive = one session.run per stream with fresh numpy feeds", err=True)
    fixed = {p.shape[p.time_axis] for p in m.inputs if p.time_axis is not None} - {None}
    if fixed and set(n_chunks) != fixed:  # a static form takes exactly its fixed chunk
        click.echo(f"note: {model} takes exactly {min(fixed)} step(s) per call (a static form); chunks "
                   f"{n_chunks} replaced by {sorted(fixed)}", err=True)
        n_chunks = sorted(fixed)
    rows = run_bench(m, streams=n_streams, chunks=n_chunks, seconds=seconds)
    click.echo(format_table(rows))
    if any(c > 1 for c in n_chunks) and not any(p.time_axis is not None for p in m.inputs):
        click.echo("note: one step per call for this model (a cell); chunks > 1 skipped")


