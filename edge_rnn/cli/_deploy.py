"""optimize and package: deployment variants and bundles."""

from __future__ import annotations

from pathlib import Path

import click

from edge_rnn.cli._common import _DATA_HELP, _existing, _read_data, main
from edge_rnn.errors import EdgeRnnError


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


