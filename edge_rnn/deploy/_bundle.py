"""``edge-rnn package``: a folder of variants and a manifest with each one's measured error and speed.

Per variant the manifest gives the file, its SHA-256, size (and those of any
external weights file it names: every file a variant loads is hashed), opset,
operators and contract; its error against fp32 on a long stream (:mod:`edge_rnn.deploy._fidelity`),
flagged when it grows; its single-stream step latency and 64-stream batched
throughput, measured while packaging on the host it records (CPU model, the
ISA features int8 kernels choose between, onnxruntime, OS); which NPU
providers run it whole (:mod:`edge_rnn.deploy._mobile`); and its golden
vectors: the bound its replay of the bundle's golden stream
(:mod:`edge_rnn.runtime._golden`) is held to on a device, and what the
packaging host measured. A variant that fails its bound is left out, with a
structured reason, under ``refused``.
``StreamingModel.load(folder, variant=... | max_error=..., self_test=True)`` reads it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_rnn._inspect import operator_counts
from edge_rnn._progress import Progress, Ticker
from edge_rnn._variant_kinds import KINDS, REFERENCE, VariantKind
from edge_rnn._version import __version__
from edge_rnn.contract import Contract
from edge_rnn.deploy._fidelity import VariantError, input_source, measure_against
from edge_rnn.deploy._int8 import Int8Settings
from edge_rnn.deploy._mobile import mobile_support
from edge_rnn.deploy._ort import to_ort
from edge_rnn.deploy._variants import check_int8_settings, make_variant
from edge_rnn.errors import EdgeRnnError, ModelFormatError, UnsupportedError
from edge_rnn.harness import TOLERANCE, Tolerance
from edge_rnn.runtime import SessionConfig, StreamingModel, check_external_data
from edge_rnn.runtime._bundle import MANIFEST, sha256_of
from edge_rnn.runtime._external import scan_model, weight_files
from edge_rnn.runtime._golden import (
    MIN_CHUNKS,
    Golden,
    GoldenCheck,
    golden_chunks,
    record,
    replay,
    save_golden,
    thin_outputs,
)
from edge_rnn.runtime._host import describe_host, host_record
from edge_rnn.runtime._manifest import (
    BUNDLE_FORMAT,
    Bound,
    ErrorFigures,
    FileRef,
    GoldenFigures,
    GoldenSpec,
    Manifest,
    MeasuredOn,
    OrtForm,
    Refusal,
    Speed,
    VariantEntry,
)
from edge_rnn.runtime.bench import random_chunk, timed_calls

__all__ = ["package", "PackageResult", "manifest_table", "GOLDEN_FILE"]

ALL = tuple(KINDS)  # every variant a bundle may hold, the reference first
GOLDEN_FILE = "golden.npz"
_GOLDEN_STEPS = 32  # the golden stream's length, shortened for a model whose steps are large
_GOLDEN_BUDGET = 256 << 10  # bytes of golden vectors per bundle, at most (where one chunk's worth fits)
_REFERENCE_ERROR = ErrorFigures(max_abs=0.0, grows=False, ok=True, note="the reference")
_XNNPACK = {"checked": False, "note": "onnxruntime has no usability checker for it"}


@dataclass
class PackageResult:
    """The bundle written to ``folder``: its manifest, and the variants asked for and refused, with why."""

    folder: Path
    manifest: Manifest
    refused: dict[str, Refusal] = field(default_factory=dict)


def _speed(path: Path, seconds: float = 0.3) -> Speed:
    """Median single-stream latency per step, and steps/s of step_batch over 64 streams (one thread).

    A static form takes its fixed chunk per call (the latency is per step of it); a model that is not
    streamable takes a fresh stream per call.
    """
    model = StreamingModel.load(path, session=SessionConfig(threads=1))
    k = next((p.shape[p.time_axis] for p in model.inputs if p.time_axis is not None
              and p.shape[p.time_axis] is not None), 1)
    chunk = random_chunk(model, k, np.random.default_rng(0))
    fresh = not model.streamable

    def stream():
        return model.open_stream() if fresh else streams[0]

    streams = [model.open_stream()]
    for _ in range(20):
        model.step(stream(), chunk)
    times = timed_calls(lambda: model.step(stream(), chunk), seconds, min_iters=50)
    streams = [model.open_stream() for _ in range(64)]

    def batch() -> None:
        model.step_batch([(s, chunk) for s in ([model.open_stream() for _ in range(64)] if fresh else streams)])

    calls = timed_calls(batch, seconds, min_iters=3)
    return Speed(float(np.median(times) * 1e6 / k), k, float(64 * k * len(calls) / calls.sum()))


def _per_stream(model: StreamingModel, whole: dict[str, np.ndarray], timed: bool) -> dict[str, np.ndarray]:
    """The fidelity source's batch-of-one arrays as one stream's (no batch axis; calls first when untimed)."""
    return {p.name: np.take(whole[p.name], 0, axis=p.batch_axis + (0 if timed else 1)) for p in model.inputs}


def _golden_size(golden: Golden) -> int:
    return sum(a.nbytes for t in (golden.inputs, golden.outputs, golden.states) for a in t.values())


def _golden_stream(fp32: Path, data: Any, multiple: int) -> Golden:
    """The bundle's golden stream through the float32 model, within the byte budget.

    Shortened first (32 steps down to MIN_CHUNKS), then made of single fixed chunks; a large fixed chunk
    (a static form's) still needs MIN_CHUNKS of them, then only two, and beyond that the outputs are kept at
    fewer steps (every chunk's last among them): the inputs and every chunk end's state always are.
    """
    model = StreamingModel.load(fp32, session=SessionConfig(threads=1))
    timed = any(p.time_axis is not None for p in model.inputs)
    source = input_source(model, data)
    for steps, longest, least in _golden_plans(multiple):
        rng = np.random.default_rng(1234)
        chunks = golden_chunks(rng, steps, multiple, longest, least) if timed else (1,) * steps
        golden = record(model, _per_stream(model, source(rng, 1, sum(chunks), not timed), timed), chunks)
        if _golden_size(golden) <= _GOLDEN_BUDGET:
            return golden
    outputs = sum(a.nbytes for a in golden.outputs.values())
    room = _GOLDEN_BUDGET - (_golden_size(golden) - outputs)
    return thin_outputs(model, golden, max(room // max(1, outputs // golden.steps), len(golden.chunks)))


def _golden_plans(multiple: int) -> list[tuple[int, int, int]]:
    """(steps, longest chunk in fixed chunks, least chunks) to try, from the fullest golden stream down."""
    plans, steps = [], _GOLDEN_STEPS
    while steps > MIN_CHUNKS:
        plans.append((steps, 8, MIN_CHUNKS))
        steps //= 2
    return [*plans, (MIN_CHUNKS * multiple, 1, MIN_CHUNKS), (2 * multiple, 1, 2)]


def _replayed(path: Path, golden: Golden, bound: Bound) -> GoldenCheck:
    """The variant at ``path``'s replay of the golden stream here, held to ``bound`` as a device holds it."""
    return replay(StreamingModel.load(path, session=SessionConfig(threads=1)), golden, atol=bound.atol,
                  rtol=bound.rtol)


def _file_ref(path: Path) -> FileRef:
    """A variant's file as the manifest covers it: name, hash and size, and each external weights file it names
    with its own (a device refuses any weights file its manifest does not hash)."""
    source = str(path)
    external = []
    for location, file in weight_files(scan_model(path.read_bytes(), source), path, source).items():
        if Path(location).name != location:
            raise UnsupportedError(f"{path}: keeps weights in {location!r}, not a file of the bundle's folder; a "
                                   "bundle lists plain file names")
        external.append(FileRef(location, sha256_of(file), file.stat().st_size))
    return FileRef(path.name, sha256_of(path), path.stat().st_size, tuple(external))


def _described(path: Path) -> dict[str, Any]:
    """A variant's file as its manifest entry gives it: name, hashes and sizes, opset, operators, contract,
    states."""
    m = onnx.load(str(path), load_external_data=False)
    ops = operator_counts(m.graph)
    contract = Contract.from_metadata({p.key: p.value for p in m.metadata_props})
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"ref": _file_ref(path), "opset": opset,
            "operators": dict(sorted(ops.items())), "contract": contract.to_dict(),
            "states": tuple({"input": s.input, "output": s.output, "shape": list(s.shape), "dtype": s.dtype}
                            for s in contract.states)}


def package(model: Path, folder: Path, *, variants: tuple[str, ...] = ALL, ort_format: bool = False,
            data: Any = None, calibration: Any = None, steps: int = 10_000, chunk: int = 1,
            threshold: float | None = None, int8: Int8Settings | None = None, log: Any = None,
            progress: Progress | None = None) -> PackageResult:
    """Write the bundle of ``model`` to ``folder``; see the module docstring.

    ``int8`` says how the int8 and static-int8 variants quantise (:class:`Int8Settings`; default: exact on every
    CPU class). A variant that cannot be made, or fails its bound, is left out and listed under ``refused``
    with a structured reason; the caller decides whether that is an error (the CLI: exit 1 unless told).
    ``log(message)`` hears each variant as it starts; ``progress`` (:mod:`edge_rnn._progress`) follows the
    variants, ``steps`` units each, the steps of its measured stream among them.
    """
    model, folder = Path(model), Path(folder)
    asked = _Request(tuple(variants), ort_format, data, calibration, steps, chunk, threshold, int8 or Int8Settings())
    _check_request(model, folder, asked)
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        result = _package(model, staging, asked, log or (lambda _msg: None), progress)
        if folder.exists():
            folder.rmdir()
        staging.rename(folder)
    except OSError as e:
        raise EdgeRnnError(f"{folder}: cannot write the bundle ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left behind, whatever failed
    result.folder = folder
    return result


@dataclass(frozen=True)
class _Request:
    """What :func:`package` was asked for."""

    variants: tuple[str, ...]
    ort_format: bool
    data: Any
    calibration: Any
    steps: int
    chunk: int
    threshold: float | None
    int8: Int8Settings


def _check_request(model: Path, folder: Path, asked: _Request) -> None:
    """Refuse, before any work, what cannot make a bundle: unknown variants, a model edge-rnn did not export or
    that keeps its weights elsewhere, int8 settings that cannot apply, a folder that is not new or empty."""
    unknown = [v for v in asked.variants if v not in KINDS]
    if unknown or not asked.variants:
        raise UnsupportedError(f"variants {unknown or '[]'}: expected names among {list(ALL)}")
    if not model.is_file():
        raise ModelFormatError(f"{model}: no such file")
    if StreamingModel.load(model).contract is None:
        raise ModelFormatError(f"{model}: no edge_rnn contract in its metadata; bundles are made from models "
                               "edge-rnn exported")
    if check_external_data(model.read_bytes(), model):
        raise UnsupportedError(f"{model}: keeps its weights in other files; a bundle holds single-file models "
                               "(onnx.save(onnx.load(path), new_path) brings them in)")
    check_int8_settings(model, asked.int8, asked.variants)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EdgeRnnError(f"{folder}: {'not a folder' if not folder.is_dir() else 'not empty'}; a bundle is "
                           "written to a new or empty folder")


@dataclass(frozen=True)
class _Job:
    """What every variant of one bundle is made and measured with."""

    model: Path
    fp32: Path
    golden: Golden
    asked: _Request
    progress: Progress | None = None


class _Refused(Exception):
    def __init__(self, why: Refusal):
        super().__init__(why.message)
        self.why = why


def _over_bound(name: str, err: VariantError, steps: int) -> Refusal:
    worst = err.worst
    return Refusal("grows" if err.grows else "over_bound",
                   f"{name}: max abs error {err.max_abs:.3g} over {steps:,} steps, {worst.worst_fraction:.3g}x its "
                   f"bound on {worst.kind} {worst.name!r}{'; the error grows along the stream' if err.grows else ''} "
                   f"(measured on {describe_host(host_record())})", error=err.figures())


def _measured(job: _Job, kind: VariantKind, path: Path, progress: Progress | None
              ) -> tuple[tuple[str, ...], ErrorFigures, Tolerance]:
    """Make variant ``kind`` at ``path`` and measure it (``progress``: its stream's steps): its notes, its error
    and its bound, or raise _Refused with the structured reason (nothing of it left on disk)."""
    if kind.reference:
        return (), _REFERENCE_ERROR, TOLERANCE[kind.precision]
    asked = job.asked
    try:
        v = make_variant(kind.name, job.model, path, chunk=asked.chunk, calibration=asked.calibration, int8=asked.int8)
    except UnsupportedError as e:
        path.unlink(missing_ok=True)
        raise _Refused(Refusal("cannot_make", str(e))) from None
    err = measure_against(path, job.fp32, steps=asked.steps, data=asked.data, threshold=asked.threshold,
                          progress=progress)
    if not err.ok:
        path.unlink()
        raise _Refused(_over_bound(kind.name, err, asked.steps))
    return tuple(v.notes), err.figures(), err.tolerance


def _entry(job: _Job, kind: VariantKind, path: Path, progress: Progress | None = None) -> VariantEntry:
    """Variant ``kind``'s whole manifest entry, its golden replay here included, or raise _Refused."""
    notes, error, tolerance = _measured(job, kind, path, progress)
    bound = Bound(tolerance.atol, tolerance.rtol)
    check = _replayed(path, job.golden, bound)
    golden = GoldenFigures(bound, check.figures())
    if not check.ok:
        if not kind.reference:
            path.unlink()
        raise _Refused(Refusal("golden_over_bound", f"{kind.name}: its golden replay is over its bound on the "
                               "packaging host itself", golden=golden))
    described = _described(path)
    speed = _speed(path)
    providers = {s.provider: s.to_dict() for s in mobile_support(path)}
    return VariantEntry(error=error, golden=golden, notes=notes, speed=speed, providers={**providers,
                        "XNNPACK": dict(_XNNPACK)}, **described)


def _ort_form(folder: Path, kind: VariantKind, entry: VariantEntry, ort_path: Path, golden: Golden) -> OrtForm:
    """A variant's ORT-format file with its own size, speed and golden replay."""
    ref = _file_ref(ort_path)
    speed = _speed(ort_path)
    bound = entry.golden.bound
    figures = GoldenFigures(bound, _replayed(ort_path, golden, bound).figures())
    note = None
    if kind.precision == "float16":
        note = ("weights kept in float16 (the file is saved unoptimised): on the CPU provider their Casts to float32 "
                "run at every call; see speed")
    elif ort_path.stat().st_size > 1.2 * entry.ref.size:
        note = ("larger than the .onnx form: the ORT format's flatbuffer layout, and the constants onnxruntime's "
                "optimiser folded while converting")
    return OrtForm(ref, speed, figures, note)


def _add_ort(folder: Path, entries: dict[str, VariantEntry], golden: Golden
             ) -> tuple[dict[str, VariantEntry], Path]:
    """Each kept variant in ORT format too, with its own size, speed and golden replay; the operators config."""
    written, config = to_ort([folder / e.ref.file for e in entries.values()], folder)
    return {name: dataclasses.replace(e, ort=_ort_form(folder, KINDS[name], e, ort_path, golden))
            for (name, e), ort_path in zip(entries.items(), written)}, config


def _made(job: _Job, folder: Path, say: Any) -> tuple[dict[str, VariantEntry], dict[str, Refusal]]:
    """Every variant asked for, made and measured into ``folder``: the entries of those kept, and the refused."""
    entries: dict[str, VariantEntry] = {}
    refused: dict[str, Refusal] = {}
    steps = job.asked.steps  # a variant's units: its measured stream's steps are 9/10 of them, its replays the rest
    ticker = Ticker(job.progress, steps * len(job.asked.variants), "variants")
    for name in job.asked.variants:
        say(f"{name}: making and measuring")
        ticker.advance(0, f"{name}: making and measuring")
        kind = KINDS[name]
        path = job.fp32 if kind.reference else folder / f"{job.model.stem}.{name}.onnx"
        try:
            entries[name] = _entry(job, kind, path, ticker.part(steps * 9 // 10, ticker.stage))
        except _Refused as r:
            refused[name] = r.why
        ticker.advance(steps)
    if not entries:
        reasons = "; ".join(f"{n}: {why.message}" for n, why in refused.items())
        raise UnsupportedError(f"no variant left to bundle, every one asked for was refused ({reasons})")
    return entries, refused


def _package(model: Path, folder: Path, asked: _Request, say: Any, progress: Progress | None) -> PackageResult:
    fp32 = folder / f"{model.stem}.onnx"
    shutil.copy(model, fp32)  # package() loaded the model already: an edge-rnn model the runtime takes
    multiple = asked.chunk if any(KINDS[v].static for v in asked.variants) else 1
    golden = _golden_stream(fp32, asked.data, multiple)
    save_golden(golden, folder / GOLDEN_FILE)
    entries, refused = _made(_Job(model, fp32, golden, asked, progress), folder, say)
    if REFERENCE not in entries:  # the reference was only needed to measure the others
        fp32.unlink(missing_ok=True)
    config = None
    if asked.ort_format:
        entries, config = _add_ort(folder, entries, golden)
    golden_file = folder / GOLDEN_FILE
    manifest = Manifest(
        BUNDLE_FORMAT, entries, f"edge-rnn {__version__}", model.name, {**host_record(), "threads": 1},
        MeasuredOn(asked.steps, "random" if asked.data is None else "data"),
        GoldenSpec(FileRef(golden_file.name, sha256_of(golden_file), golden_file.stat().st_size), golden.steps,
                   tuple(golden.chunks)),
        refused, asked.int8.to_dict() if any(KINDS[v].int8 for v in asked.variants) else None,
        None if config is None else FileRef(config.name, sha256_of(config)))
    (folder / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1), encoding="utf-8")
    return PackageResult(folder, manifest, refused)


def manifest_table(manifest: Manifest) -> str:
    rows = [f"{'variant':<12} {'size':>8} {'max err':>9} {'grows':>5} {'step us':>8} {'64 streams/s':>13}  "
            f"NPU whole"]
    for name, e in manifest.variants.items():
        err, speed = e.error, e.speed
        rows.append(f"{name:<12} {e.ref.size / 1024:7.0f}K {err.max_abs or 0:9.2e} "
                    f"{'YES' if err.grows else 'no':>5} {speed.step_us:8.1f} "
                    f"{speed.batch64_steps_per_s:13,.0f}  {', '.join(e.whole_on) or '-'}")
    for name, why in manifest.refused.items():
        rows.append(f"{name:<12} refused: {why.message}")
    return "\n".join(rows)
