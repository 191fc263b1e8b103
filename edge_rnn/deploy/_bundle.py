"""``edge-rnn package``: a folder of variants and a manifest with each one's measured error and speed.

Per variant the manifest gives the file, its SHA-256, size, opset, operators and
contract; its error against fp32 on a long stream (:mod:`edge_rnn.deploy._fidelity`),
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

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_rnn._inspect import operator_counts
from edge_rnn._version import __version__
from edge_rnn.contract import Contract
from edge_rnn.deploy._fidelity import input_source, measure_against
from edge_rnn.deploy._int8 import Int8Settings
from edge_rnn.deploy._mobile import mobile_support
from edge_rnn.deploy._ort import to_ort
from edge_rnn.deploy._variants import VARIANTS, check_int8_settings, make_variant
from edge_rnn.errors import EdgeRnnError, ModelFormatError, UnsupportedError
from edge_rnn.harness import TOLERANCE
from edge_rnn.runtime import SessionConfig, StreamingModel, check_external_data
from edge_rnn.runtime._bundle import BUNDLE_FORMAT, MANIFEST, sha256_of
from edge_rnn.runtime._golden import MIN_CHUNKS, Golden, golden_chunks, record, replay, save_golden, thin_outputs
from edge_rnn.runtime._host import describe_host, host_record
from edge_rnn.runtime.bench import random_chunk, timed_calls

__all__ = ["package", "PackageResult", "manifest_table", "GOLDEN_FILE"]

ALL = ("fp32", *VARIANTS)
GOLDEN_FILE = "golden.npz"
_GOLDEN_STEPS = 32  # the golden stream's length, shortened for a model whose steps are large
_GOLDEN_BUDGET = 256 << 10  # bytes of golden vectors per bundle, at most (where one chunk's worth fits)


@dataclass
class PackageResult:
    folder: Path
    manifest: dict[str, Any]
    refused: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"reason", "message", ...}


def _speed(path: Path, seconds: float = 0.3) -> dict[str, float]:
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
    return {"step_us": float(np.median(times) * 1e6 / k), "steps_per_call": k,
            "batch64_steps_per_s": float(64 * k * len(calls) / calls.sum())}


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


def _golden_entry(path: Path, golden: Golden, bound: dict[str, float]) -> dict[str, Any]:
    """What a variant's golden replay here measured, and the bound (``atol``, ``rtol``) a device holds it to."""
    check = replay(StreamingModel.load(path, session=SessionConfig(threads=1)), golden, **bound)
    return {"bound": bound, "measured": check.to_dict()}


def _refusal(reason: str, message: str, **more: Any) -> dict[str, Any]:
    return {"reason": reason, "message": message, **more}


def _describe(path: Path) -> dict[str, Any]:
    m = onnx.load(str(path), load_external_data=False)
    ops = operator_counts(m.graph)
    contract = Contract.from_metadata({p.key: p.value for p in m.metadata_props})
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"file": path.name, "sha256": sha256_of(path), "size": path.stat().st_size, "opset": opset,
            "operators": dict(sorted(ops.items())), "contract": contract.to_dict(),
            "states": [{"input": s.input, "output": s.output, "shape": list(s.shape), "dtype": s.dtype}
                       for s in contract.states]}


def package(model: Path, folder: Path, *, variants: tuple[str, ...] = ALL, ort_format: bool = False,
            data: Any = None, calibration: Any = None, steps: int = 10_000, chunk: int = 1,
            threshold: float | None = None, int8: Int8Settings | None = None, log: Any = None) -> PackageResult:
    """Write the bundle of ``model`` to ``folder``; see the module docstring.

    ``int8`` says how the int8 and static-int8 variants quantise (:class:`Int8Settings`; default: exact on every
    CPU class). A variant that cannot be made, or fails its bound, is left out and listed under ``refused``
    with a structured reason; the caller decides whether that is an error (the CLI: exit 1 unless told).
    """
    model, folder = Path(model), Path(folder)
    unknown = [v for v in variants if v not in ALL]
    if unknown or not variants:
        raise UnsupportedError(f"variants {unknown or '[]'}: expected names among {list(ALL)}")
    if not model.is_file():
        raise ModelFormatError(f"{model}: no such file")
    if StreamingModel.load(model).contract is None:
        raise ModelFormatError(f"{model}: no edge_rnn contract in its metadata; bundles are made from models "
                               "edge-rnn exported")
    if check_external_data(model.read_bytes(), model):
        raise UnsupportedError(f"{model}: keeps its weights in other files; a bundle holds single-file models "
                               "(onnx.save(onnx.load(path), new_path) brings them in)")
    check_int8_settings(model, int8 or Int8Settings(), variants)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EdgeRnnError(f"{folder}: {'not a folder' if not folder.is_dir() else 'not empty'}; a bundle is "
                           "written to a new or empty folder")
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        result = _package(model, staging, variants, ort_format, data, calibration, steps, chunk, threshold,
                          int8 or Int8Settings(), log or (lambda _msg: None))
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
class _Job:
    """What every variant of one bundle is made and measured with."""

    model: Path
    fp32: Path
    golden: Golden
    data: Any
    calibration: Any
    steps: int
    chunk: int
    threshold: float | None
    int8: Int8Settings


def _measured(job: _Job, name: str, path: Path) -> tuple[dict[str, Any], Any]:
    """Make variant ``name`` at ``path`` and measure it: its manifest entry so far, and its bound, or raise
    _Refused with the structured reason (nothing of it left on disk)."""
    if name == "fp32":
        return {"notes": [], "error": {"max_abs": 0.0, "grows": False, "ok": True, "note": "the reference"}}, \
            TOLERANCE["float32"]
    try:
        v = make_variant(name, job.model, path, chunk=job.chunk, calibration=job.calibration, int8=job.int8)
    except UnsupportedError as e:
        path.unlink(missing_ok=True)
        raise _Refused(_refusal("cannot_make", str(e))) from None
    err = measure_against(path, job.fp32, steps=job.steps, data=job.data, threshold=job.threshold)
    if not err.ok:
        path.unlink()
        worst = max(err.tensors, key=lambda t: t.worst_fraction)
        raise _Refused(_refusal("grows" if err.grows else "over_bound",
                                f"{name}: max abs error {err.max_abs:.3g} over {job.steps:,} steps, "
                                f"{worst.worst_fraction:.3g}x its bound on {worst.kind} {worst.name!r}"
                                f"{'; the error grows along the stream' if err.grows else ''} "
                                f"(measured on {describe_host(host_record())})", error=err.to_dict()))
    return {"notes": v.notes, "error": err.to_dict()}, err.tolerance


class _Refused(Exception):
    def __init__(self, why: dict[str, Any]):
        super().__init__(why["message"])
        self.why = why


def _entry(job: _Job, name: str, path: Path) -> dict[str, Any]:
    """Variant ``name``'s whole manifest entry, its golden replay here included, or raise _Refused."""
    entry, tolerance = _measured(job, name, path)
    entry["golden"] = _golden_entry(path, job.golden, {"atol": tolerance.atol, "rtol": tolerance.rtol})
    if not entry["golden"]["measured"]["ok"]:
        if name != "fp32":
            path.unlink()
        raise _Refused(_refusal("golden_over_bound", f"{name}: its golden replay is over its bound on the "
                                "packaging host itself", golden=entry["golden"]))
    entry.update(_describe(path))
    entry["speed"] = _speed(path)
    entry["providers"] = {s.provider: s.to_dict() for s in mobile_support(path)}
    entry["providers"]["XNNPACK"] = {"checked": False, "note": "onnxruntime has no usability checker for it"}
    return entry


def _add_ort(folder: Path, entries: dict[str, dict], golden: Golden) -> Path:
    """Each kept variant in ORT format too, with its own size, speed and golden replay; the operators config."""
    written, config = to_ort([folder / e["file"] for e in entries.values()], folder)
    for entry, ort_path in zip(entries.values(), written):
        entry["ort"] = {"file": ort_path.name, "sha256": sha256_of(ort_path), "size": ort_path.stat().st_size,
                        "speed": _speed(ort_path), "golden": _golden_entry(ort_path, golden, entry["golden"]["bound"])}
        if entry["contract"]["source"].get("variant") == "fp16":
            entry["ort"]["note"] = ("weights kept in float16 (the file is saved unoptimised): on the CPU "
                                    "provider their Casts to float32 run at every call; see speed")
        elif ort_path.stat().st_size > 1.2 * (folder / entry["file"]).stat().st_size:
            entry["ort"]["note"] = ("larger than the .onnx form: the ORT format's flatbuffer layout, and the "
                                    "constants onnxruntime's optimiser folded while converting")
    return config


def _package(model: Path, folder: Path, variants: tuple[str, ...], ort_format: bool, data: Any, calibration: Any,
             steps: int, chunk: int, threshold: float | None, int8: Int8Settings, say: Any) -> PackageResult:
    entries: dict[str, dict] = {}
    refused: dict[str, dict[str, Any]] = {}
    fp32 = folder / f"{model.stem}.onnx"
    shutil.copy(model, fp32)  # package() loaded the model already: an edge-rnn model the runtime takes
    multiple = chunk if any(v.startswith("static") for v in variants) else 1
    golden = _golden_stream(fp32, data, multiple)
    save_golden(golden, folder / GOLDEN_FILE)
    job = _Job(model, fp32, golden, data, calibration, steps, chunk, threshold, int8)
    for name in variants:
        say(f"{name}: making and measuring")
        try:
            entries[name] = _entry(job, name, fp32 if name == "fp32" else folder / f"{model.stem}.{name}.onnx")
        except _Refused as r:
            refused[name] = r.why
    if not entries:
        reasons = "; ".join(f"{n}: {why['message']}" for n, why in refused.items())
        raise UnsupportedError(f"no variant left to bundle, every one asked for was refused ({reasons})")
    if "fp32" not in entries:  # the reference was only needed to measure the others
        fp32.unlink(missing_ok=True)
    config = _add_ort(folder, entries, golden) if ort_format else None
    golden_file = folder / GOLDEN_FILE
    manifest = {
        "format": BUNDLE_FORMAT, "created_by": f"edge-rnn {__version__}", "source_model": model.name,
        "host": {**host_record(), "threads": 1},
        "error_measured_on": {"steps": steps, "inputs": "random" if data is None else "data"},
        "golden": {"file": golden_file.name, "sha256": sha256_of(golden_file), "size": golden_file.stat().st_size,
                   "steps": golden.steps, "chunks": list(golden.chunks)},
        "variants": entries, "refused": refused,
        **({"int8": int8.to_dict()} if {"int8", "static-int8"} & set(variants) else {}),
        **({"required_operators": {"file": config.name, "sha256": sha256_of(config)}} if config else {}),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return PackageResult(folder, manifest, refused)


def manifest_table(manifest: dict[str, Any]) -> str:
    rows = [f"{'variant':<12} {'size':>8} {'max err':>9} {'grows':>5} {'step us':>8} {'64 streams/s':>13}  "
            f"NPU whole"]
    for name, e in manifest["variants"].items():
        whole = [p for p, s in e.get("providers", {}).items() if s.get("whole")]
        err = e.get("error", {})
        rows.append(f"{name:<12} {e['size'] / 1024:7.0f}K {err.get('max_abs', 0):9.2e} "
                    f"{'YES' if err.get('grows') else 'no':>5} {e['speed']['step_us']:8.1f} "
                    f"{e['speed']['batch64_steps_per_s']:13,.0f}  {', '.join(whole) or '-'}")
    for name, why in manifest.get("refused", {}).items():
        text = why.get("message", why) if isinstance(why, dict) else why
        rows.append(f"{name:<12} refused: {text}")
    return "\n".join(rows)
