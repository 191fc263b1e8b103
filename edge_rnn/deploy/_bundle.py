"""``edge-rnn package``: a folder of variants and a manifest with each one's measured error and speed.

Per variant the manifest gives the file, its SHA-256, size, opset, operators and
contract; its error against fp32 on a long stream (:mod:`edge_rnn.deploy._fidelity`),
flagged when it grows; its single-stream step latency and 64-stream batched
throughput, measured while packaging on the machine it names; and which NPU
providers run it whole (:mod:`edge_rnn.deploy._mobile`). A variant that fails
its bound is left out, with its numbers, under ``refused``.
``StreamingModel.load(folder, variant=... | max_error=...)`` reads it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edge_rnn._inspect import operator_counts
from edge_rnn._version import __version__
from edge_rnn.contract import Contract
from edge_rnn.deploy._fidelity import measure_against
from edge_rnn.deploy._mobile import mobile_support
from edge_rnn.deploy._ort import to_ort
from edge_rnn.deploy._variants import VARIANTS, make_variant
from edge_rnn.errors import EdgeRnnError, ModelFormatError, UnsupportedError
from edge_rnn.runtime import StreamingModel, check_external_data
from edge_rnn.runtime._bundle import BUNDLE_FORMAT, MANIFEST, sha256_of
from edge_rnn.runtime.bench import random_chunk

__all__ = ["package", "PackageResult", "manifest_table"]

ALL = ("fp32", *VARIANTS)


@dataclass
class PackageResult:
    folder: Path
    manifest: dict[str, Any]
    refused: dict[str, str] = field(default_factory=dict)


def _speed(path: Path, seconds: float = 0.3) -> dict[str, float]:
    """Median single-stream latency per step, and steps/s of step_batch over 64 streams (one thread).

    A static form takes its fixed chunk per call (the latency is per step of it); a model that is not
    streamable takes a fresh stream per call.
    """
    model = StreamingModel.load(path, threads=1)
    k = next((p.shape[p.time_axis] for p in model.inputs if p.time_axis is not None
              and p.shape[p.time_axis] is not None), 1)
    chunk = random_chunk(model, k, np.random.default_rng(0))
    fresh = not model.streamable

    def stream():
        return model.open_stream() if fresh else streams[0]

    streams = [model.open_stream()]
    for _ in range(20):
        model.step(stream(), chunk)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 50:
        s = stream()
        t = time.perf_counter()
        model.step(s, chunk)
        times.append(time.perf_counter() - t)
    streams = [model.open_stream() for _ in range(64)]
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls < 3:
        if fresh:
            streams = [model.open_stream() for _ in range(64)]
        model.step_batch([(s, chunk) for s in streams])
        calls += 1
    return {"step_us": float(np.median(times) * 1e6 / k), "steps_per_call": k,
            "batch64_steps_per_s": float(64 * k * calls / (time.perf_counter() - t0))}


def _machine() -> dict[str, Any]:
    import onnxruntime as ort

    return {"processor": platform.processor() or platform.machine(), "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}", "cpus": os.cpu_count(), "threads": 1,
            "onnxruntime": ort.__version__, "python": platform.python_version()}


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
            threshold: float | None = None, log: Any = None) -> PackageResult:
    """Write the bundle of ``model`` to ``folder``; see the module docstring."""
    model, folder = Path(model), Path(folder)
    unknown = [v for v in variants if v not in ALL]
    if unknown or not variants:
        raise UnsupportedError(f"variants {unknown or '[]'}: expected names among {list(ALL)}")
    if not model.is_file():
        raise ModelFormatError(f"{model}: no such file")
    if Contract.from_metadata(StreamingModel.load(model).session.get_modelmeta().custom_metadata_map) is None:
        raise ModelFormatError(f"{model}: no edge_rnn contract in its metadata; bundles are made from models "
                               "edge-rnn exported")
    if check_external_data(model.read_bytes(), model):
        raise UnsupportedError(f"{model}: keeps its weights in other files; a bundle holds single-file models "
                               "(onnx.save(onnx.load(path), new_path) brings them in)")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise EdgeRnnError(f"{folder}: {'not a folder' if not folder.is_dir() else 'not empty'}; a bundle is "
                           "written to a new or empty folder")
    staging = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        result = _package(model, staging, variants, ort_format, data, calibration, steps, chunk, threshold,
                          log or (lambda _msg: None))
        if folder.exists():
            folder.rmdir()
        staging.rename(folder)
    except OSError as e:
        raise EdgeRnnError(f"{folder}: cannot write the bundle ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left behind, whatever failed
    result.folder = folder
    return result


def _package(model: Path, folder: Path, variants: tuple[str, ...], ort_format: bool, data: Any, calibration: Any,
             steps: int, chunk: int, threshold: float | None, say: Any) -> PackageResult:
    stem = model.stem
    entries: dict[str, dict] = {}
    refused: dict[str, str] = {}
    fp32 = folder / f"{stem}.onnx"
    shutil.copy(model, fp32)  # package() loaded the model already: an edge-rnn model the runtime takes
    for name in variants:
        say(f"{name}: making and measuring")
        path = fp32 if name == "fp32" else folder / f"{stem}.{name}.onnx"
        entry: dict[str, Any] = {"notes": []}
        if name != "fp32":
            v = make_variant(name, model, path, chunk=chunk, calibration=calibration)
            entry["notes"] = v.notes
            err = measure_against(path, fp32, steps=steps, data=data, threshold=threshold)
            entry["error"] = err.to_dict()
            if not err.ok:
                refused[name] = f"fails its bound or grows: max abs {err.max_abs:.3g}; {err.to_dict()}"
                path.unlink()
                continue
        else:
            entry["error"] = {"max_abs": 0.0, "grows": False, "ok": True, "note": "the reference"}
        entry.update(_describe(path))
        entry["speed"] = _speed(path)
        entry["providers"] = {s.provider: s.to_dict() for s in mobile_support(path)}
        entry["providers"]["XNNPACK"] = {"checked": False, "note": "onnxruntime has no usability checker for it"}
        entries[name] = entry
    if "fp32" not in variants:  # the reference was only needed to measure the others
        fp32.unlink()
    config = None
    if ort_format and entries:
        written, config = to_ort([folder / e["file"] for e in entries.values()], folder)
        for entry, ort_path in zip(entries.values(), written):
            entry["ort"] = {"file": ort_path.name, "sha256": sha256_of(ort_path), "size": ort_path.stat().st_size}
    manifest = {
        "format": BUNDLE_FORMAT, "created_by": f"edge-rnn {__version__}", "source_model": model.name,
        "machine": _machine(), "error_measured_on": {"steps": steps, "inputs": "random" if data is None else "data"},
        "variants": entries, "refused": refused,
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
        rows.append(f"{name:<12} refused: {why[:100]}")
    return "\n".join(rows)
