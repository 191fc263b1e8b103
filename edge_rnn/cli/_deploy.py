"""optimize and package: deployment variants and bundles; check: a bundle's self-test on this machine."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from edge_rnn._progress import part
from edge_rnn._variant_kinds import KINDS, VariantKind, made_kinds
from edge_rnn.cli._common import _DATA_HELP, _existing, _read_data, main
from edge_rnn.cli._progress import progress, quiet_option, say
from edge_rnn.errors import EdgeRnnError


def _int8_options(f):
    """How int8 and static-int8 quantise: a target preset, and each setting on its own for who knows better."""
    options = [
        click.option("--int8-target", type=click.Choice(["portable", "vnni", "arm64"]), default="portable",
                     show_default=True,
                     help="portable: 7-bit uint8 weights, exact on every CPU class measured (AVX2 without VNNI "
                          "saturates 8-bit int8 ones); vnni (int8) or arm64 (uint8): the full 8-bit range, for a "
                          "device known to have VNNI or to be ARM64."),
        click.option("--int8-reduce-range/--int8-full-range", "int8_reduce_range", default=None,
                     help="Override the target: 7-bit weights (exact everywhere) or 8-bit."),
        click.option("--int8-per-channel/--int8-per-tensor", "int8_per_channel", default=None,
                     help="One weight scale per output channel, or per tensor [default: per tensor]."),
        click.option("--int8-weights", "int8_weight_type", type=click.Choice(["int8", "uint8"]), default=None,
                     help="Override the target's weight type: uint8 (u8 x u8, exact everywhere) or int8 (u8 x s8, "
                          "fastest on VNNI). An LSTM's weights are int8 either way."),
        click.option("--int8-keep-float", "int8_keep_float", multiple=True, metavar="NODE|OP",
                     help="A node name or operator type (e.g. Gemm) to leave in float32; repeat for more."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _int8_settings(int8_target: str, int8_reduce_range: bool | None, int8_per_channel: bool | None,
                   int8_weight_type: str | None, int8_keep_float: tuple[str, ...]) -> Any:
    """The Int8Settings the --int8-* options (:func:`_int8_options`) say."""
    from edge_rnn.deploy import Int8Settings

    return Int8Settings.for_target(int8_target, reduce_range=int8_reduce_range, per_channel=int8_per_channel,
                                   weight_type=int8_weight_type, keep_float=int8_keep_float or None)


def _dest(kind: VariantKind) -> str:
    return "make_" + kind.name.replace("-", "_")


def _variant_flags(f: Any) -> Any:
    """One flag per variant a model is made into (a row of the variant table: its name and help), handed to the
    command as ``variants``: the names chosen, in the table's order."""
    @functools.wraps(f)
    def command(**kwargs: Any) -> Any:
        chosen = tuple(k.name for k in made_kinds() if kwargs.pop(_dest(k)))
        return f(variants=chosen, **kwargs)

    for kind in reversed(made_kinds()):
        command = click.option(kind.flag, _dest(kind), is_flag=True, help=kind.help)(command)
    return command


def _flags(test: Any) -> str:
    """The flags of the made variants for which ``test(kind)`` holds, as a usage message names them."""
    return " or ".join(k.flag for k in made_kinds() if test(k))


def _names(test: Any) -> str:
    return " and ".join(k.name for k in made_kinds() if test(k))


@dataclass(frozen=True)
class _Optimize:
    """What each variant ``optimize`` makes is made and measured with."""

    model: Path
    folder: Path
    chunk: int
    data: Any
    calibration: Any
    steps: int
    threshold: float | None
    int8: Any  # Int8Settings (edge_rnn.deploy, imported when the command runs)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@_variant_flags
@click.option("--static-chunk", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Time steps per call of the static forms.")
@click.option("--calibration", type=click.Path(path_type=Path),
              help=f"Data to calibrate {_names(lambda k: k.calibrated)} on (as --data).")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), default=None,
              help="Where to write the variants [default: MODEL's folder].")
@click.option("--data", type=click.Path(path_type=Path), help=_DATA_HELP)
@click.option("--steps", type=click.IntRange(min=2_000, max=10_000_000), default=10_000, show_default=True,
              help="Length of the stream each variant's error is measured on.")
@click.option("--threshold", type=float, default=None, help="Report decision agreement at this threshold.")
@click.option("--ort", "ort_format", is_flag=True,
              help="Also write MODEL and each variant in ORT format, with the required-operators config of a "
                   "minimal onnxruntime build.")
@_int8_options
@quiet_option
def optimize(model: Path, variants: tuple[str, ...], static_chunk: int, calibration: Path | None,
             output_dir: Path | None, data: Path | None, steps: int, threshold: float | None, ort_format: bool,
             **int8: Any) -> None:
    """Write smaller or faster variants of MODEL, each checked against MODEL on a long stream.

    A variant whose error exceeds its bound, or grows along the stream, is not kept, and the exit code is 1.
    """
    from edge_rnn.deploy import to_ort

    _existing(model, "model")
    _check_choice(variants, ort_format, static_chunk, calibration)
    settings = _int8_settings(**int8)
    from edge_rnn.deploy._variants import check_int8_settings

    check_int8_settings(model, settings, variants)
    sequences = _read_data(data)
    job = _Optimize(model, output_dir or model.parent, static_chunk, sequences, _read_data(calibration), steps,
                    threshold, settings)
    kept = [model]
    failed = []
    for name in variants:
        dst = _optimized(job, KINDS[name])
        if dst is None:
            failed.append(name)
        else:
            kept.append(dst)
    if ort_format:
        written, config = to_ort(kept, job.folder)
        click.echo(f"ORT format: {', '.join(str(p) for p in written)}; operators for a minimal build: {config}")
    if failed:
        raise EdgeRnnError(f"variant(s) {failed} exceed their error bound or drift along the stream; not written")


def _check_choice(variants: tuple[str, ...], ort_format: bool, static_chunk: int, calibration: Path | None) -> None:
    """Usage errors: no variant chosen, or an option given without a variant that takes it."""
    if not variants and not ort_format:
        raise click.UsageError(f"choose at least one variant: {', '.join(k.flag for k in made_kinds())} (or --ort "
                               "alone for MODEL itself)")
    chosen = [KINDS[v] for v in variants]
    if static_chunk != 1 and not any(k.static for k in chosen):
        raise click.UsageError(f"--static-chunk goes with {_flags(lambda k: k.static)}")
    if calibration is not None and not any(k.calibrated for k in chosen):
        raise click.UsageError(f"--calibration goes with {_flags(lambda k: k.calibrated)}")


def _optimized(job: _Optimize, kind: VariantKind) -> Path | None:
    """Make variant ``kind`` of the model, measure it against the model, and keep it when it holds its bound: its
    path, else None (nothing written). What it is and how it measured are printed either way, after its own
    progress bar (on a terminal) ends."""
    import contextlib
    import os

    from edge_rnn.deploy import make_variant, measure_against, mobile_support

    dst = job.folder / f"{job.model.stem}.{kind.name}.onnx"
    tmp = dst.with_name(f".{dst.name}.partial")
    bar = progress()
    if bar is not None:
        bar(f"{kind.name}: making", 0, job.steps)
    try:
        variant = make_variant(kind.name, job.model, tmp, chunk=job.chunk, calibration=job.calibration, int8=job.int8)
        npu = mobile_support(tmp) if kind.static else []
        err = measure_against(tmp, job.model, steps=job.steps, data=job.data, threshold=job.threshold,
                              progress=part(bar, 0, job.steps, job.steps, f"{kind.name}: measuring"))
        if err.ok:
            os.replace(tmp, dst)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    ratio = dst.stat().st_size / job.model.stat().st_size if err.ok else float("nan")
    where = f"wrote {dst} ({ratio:.2f}x the size)" if err.ok else f"{kind.name}: NOT written (fails its bound)"
    click.echo(f"{where}; operators: {', '.join(f'{k} x{v}' for k, v in sorted(variant.operators.items()))}")
    for note in variant.notes:
        click.echo(f"  note: {note}")
    for support in npu:
        click.echo(f"  {support.describe()}")
    click.echo("  " + err.table().replace("\n", "\n  "))
    return dst if err.ok else None


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The bundle's folder (new or empty).")
@click.option("--variants", default=",".join(KINDS), show_default=True,
              help=f"Comma-separated variants to include, among {', '.join(KINDS)}.")
@click.option("--ort", "ort_format", is_flag=True, help="Also each variant in ORT format, with the operators config.")
@click.option("--data", type=click.Path(path_type=Path), help=_DATA_HELP)
@click.option("--calibration", type=click.Path(path_type=Path),
              help=f"Data to calibrate {_names(lambda k: k.calibrated)} on.")
@click.option("--steps", type=click.IntRange(min=2_000, max=10_000_000), default=10_000, show_default=True,
              help="Length of the stream each variant's error is measured on.")
@click.option("--static-chunk", type=click.IntRange(min=1, max=256), default=1, show_default=True,
              help="Time steps per call of the static forms.")
@click.option("--threshold", type=float, default=None, help="Report decision agreement at this threshold.")
@click.option("--allow-refused", is_flag=True,
              help="Exit 0 even when a variant asked for is refused (it is still left out and listed).")
@_int8_options
@quiet_option
def package(model: Path, output: Path, variants: str, ort_format: bool, data: Path | None, calibration: Path | None,
            steps: int, static_chunk: int, threshold: float | None, allow_refused: bool, **int8: Any) -> None:
    """Write a deployment bundle of MODEL: its variants, golden vectors, and a manifest of each one's error and speed.

    Load a variant with StreamingModel.load(BUNDLE, variant="int8", self_test=True) or the fastest within an error
    with StreamingModel.load(BUNDLE, max_error=1e-3); `edge-rnn check BUNDLE` tests every variant on the device. A
    variant that fails its error bound is left out and listed, and the exit code is 1 (0 with --allow-refused).
    """
    from edge_rnn.deploy import manifest_table
    from edge_rnn.deploy import package as make_bundle

    _existing(model, "model")
    from edge_rnn.runtime._host import describe_host

    names = tuple(v.strip() for v in variants.split(",") if v.strip())
    settings = _int8_settings(**int8)
    result = make_bundle(model, output, variants=names, ort_format=ort_format, data=_read_data(data),
                         calibration=_read_data(calibration), steps=steps, chunk=static_chunk, threshold=threshold,
                         int8=settings, log=say, progress=progress())
    manifest = result.manifest
    click.echo(f"wrote {output}/manifest.json, measured on {describe_host(manifest.host)}, one thread")
    if manifest.int8 is not None:
        click.echo(f"int8 settings: {settings.describe()}")
    click.echo(manifest_table(manifest))
    if result.refused and not allow_refused:
        raise EdgeRnnError(f"variant(s) {sorted(result.refused)} asked for and refused (above); the bundle holds "
                           f"{sorted(manifest.variants) or 'none'}. Pass --allow-refused to accept that")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--variant", "variants", multiple=True, help="The variant to test (repeat for more) [default: all].")
@click.option("--form", type=click.Choice(["onnx", "ort"]), default="onnx", show_default=True,
              help="Which file of each variant to test.")
def check(bundle: Path, variants: tuple[str, ...], form: str) -> None:
    """Replay BUNDLE's golden stream through each variant on this machine, against its bound and the packaging host.

    Exits 1 when a variant is over its bound here (its int8 kernels differ from the packaging host's, or a file was
    changed). Needs only the runtime (numpy, onnxruntime).
    """
    from edge_rnn.runtime._bundle import load_manifest, printable
    from edge_rnn.runtime._selftest import golden_of

    if not bundle.is_dir():
        raise EdgeRnnError(f"{bundle}: expected a bundle folder (edge-rnn package -o FOLDER)")
    manifest = load_manifest(bundle)
    names = list(variants) or list(manifest.variants)
    unknown = [n for n in names if n not in manifest.variants]
    if unknown:
        raise EdgeRnnError(f"--variant {unknown}: expected some of {[printable(n, 40) for n in manifest.variants]}")
    golden = golden_of(bundle, manifest)
    _check_header(manifest, golden, form)
    _raise_problems([(printable(name, 40), _checked(bundle, manifest, name, golden, form)) for name in names])


def _raise_problems(verdicts: list[tuple[str, bool | None]]) -> None:
    """Exit 1 naming the variants over their bound here (False) and those that could not be tested (None)."""
    over = [n for n, ok in verdicts if ok is False]
    refused = [n for n, ok in verdicts if ok is None]
    problems = ([f"{over} over their bound on this machine (do not serve them here)"] if over else []) + \
        ([f"{refused} could not be tested (above)"] if refused else [])
    if problems:
        raise EdgeRnnError("variant(s) " + "; ".join(problems))


def _check_header(manifest: Any, golden: Any, form: str) -> None:
    """Where the bundle was packaged, this machine, the golden stream, and the table's head."""
    from edge_rnn.runtime._host import describe_host, host_record, int8_kernel

    here = host_record()
    click.echo(f"packaged on: {describe_host(manifest.host)}")
    click.echo(f"this machine: {describe_host(here)}; int8 kernel {int8_kernel(here['features'])}")
    click.echo(f"golden stream: {golden.steps} steps in {len(golden.chunks)} chunks")
    click.echo(f"{'variant':<12} {'bound':>15} {'packaging host':>15} {'this machine':>13} {'of bound':>9} "
               f"{'ms':>7}  verdict  ({form} form)")


def _checked(bundle: Path, manifest: Any, name: str, golden: Any, form: str) -> bool | None:
    """Variant ``name`` loaded in ``form`` and self-tested here, its row printed: whether it is within its bound,
    None when it could not be tested (refused, with why)."""
    import time

    from edge_rnn.runtime import StreamingModel
    from edge_rnn.runtime._bundle import printable
    from edge_rnn.runtime._selftest import self_test

    shown = printable(name, 40)
    t0 = time.perf_counter()
    try:
        m = StreamingModel.load(bundle, variant=name, form=form)
        r = self_test(m, bundle, manifest, name, golden, form=form)
    except EdgeRnnError as e:
        click.echo(f"{shown:<12} REFUSED: {e}")
        return None
    ms = (time.perf_counter() - t0) * 1e3
    host = "?" if r.host_max_abs is None else f"{r.host_max_abs:.3g}"
    bound = f"{r.check.atol:g}+{r.check.rtol:g}|y|"
    click.echo(f"{shown:<12} {bound:>15} {host:>15} {r.check.max_abs:13.3g} {r.check.worst_fraction:9.3f} "
               f"{ms:7.1f}  {'ok' if r.ok else 'OVER ITS BOUND'}")
    return r.ok
