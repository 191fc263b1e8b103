"""``edge-rnn lift``: a recurrent ONNX file from elsewhere made streamable, proved chunk by chunk."""

from __future__ import annotations

from pathlib import Path

import click

from edge_rnn.cli._common import _existing, main

__all__ = ["lift"]


def _axes(given: tuple[str, ...]) -> dict[str, tuple[int, int]] | None:
    """``NAME=BATCH,TIME`` entries as {name: (batch_axis, time_axis)}."""
    out: dict[str, tuple[int, int]] = {}
    for entry in given:
        name, sep, pair = entry.rpartition("=")
        parts = pair.split(",")
        if not sep or not name or len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise click.BadParameter(f"expected NAME=BATCH,TIME (e.g. x=0,1), got {entry!r}", param_hint="--axes")
        out[name] = (int(parts[0]), int(parts[1]))
    return out or None


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Where the streaming file is written (only when the proof passes).")
@click.option("--axes", multiple=True, metavar="NAME=BATCH,TIME",
              help="An input's batch and time axes, where the graph does not say (repeat for more inputs).")
@click.option("--long-steps", type=click.IntRange(min=0, max=100_000), default=600, show_default=True,
              help="Length of the long stream the proof runs (0: none).")
@click.option("--seed", type=click.IntRange(min=0, max=2**32 - 1), default=0, show_default=True,
              help="Seed of the proof's random inputs and chunk boundaries.")
def lift(model: Path, output: Path, axes: tuple[str, ...], long_steps: int, seed: int) -> None:
    """Make MODEL, a recurrent ONNX file from elsewhere (torch.onnx, tf2onnx, paddle2onnx, a model zoo), stream.

    Each RNN/GRU/LSTM node without an initial state, or with a constant one, gets a state input and output pair
    named after it; layout=1 nodes are rewritten for onnxruntime; batch and time become dynamic; the edge_rnn
    contract is written. Then the proof: the lifted file, streamed in random chunks with its states carried, must
    equal one pass of the original over the whole sequence (float64 reference of the original, onnxruntime's
    float32 run as the noise). Needs onnx (the deploy extra), not torch.
    """
    import dataclasses

    from edge_rnn.deploy.lifting._api import lift as lift_file
    from edge_rnn.deploy.lifting._proof import PROOF_CASES

    _existing(model, "model")
    cases = dataclasses.replace(PROOF_CASES, long_steps=long_steps)
    result = lift_file(model, output, axes=_axes(axes), cases=cases, seed=seed)
    for note in result.notes:
        click.echo(f"note:   {note}")
    for s in result.states:
        start = "zeros" if s.initial is None else "the file's constant"
        click.echo(f"state:  {s.input} -> {s.output}  (node {s.node}; a new stream starts from {start})")
    click.echo(result.proof.table())
    click.echo(f"verdict: ok; wrote {result.path}")
