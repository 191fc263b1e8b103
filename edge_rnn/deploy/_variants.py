"""Deployment variants of an exported model, made with onnxruntime's own tools.

- ``int8``: dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``).
  An ``LSTM`` node becomes ``com.microsoft.DynamicQuantizeLSTM`` where that
  kernel computes it (:func:`~edge_rnn.deploy._int8_recurrent.lstm_departure`);
  ``GRU`` and ``RNN`` nodes in PyTorch's conventions, which onnxruntime has no
  quantiser for, take the lean int8 Scan of :mod:`edge_rnn.deploy._int8_recurrent`;
  every other recurrent node is first rewritten in the general decomposed form
  (:mod:`edge_rnn.deploy._onnx_scan`), whose MatMuls, the ones inside the
  ``Scan`` body included (``EnableSubgraph``), are quantised.
- ``fp16``: ``onnxruntime.transformers.float16`` with ``keep_io_types``: the
  inputs, outputs and states stay float32, the weights are stored in float16.

Every variant keeps the ``edge_rnn`` contract, and is loaded back by the
runtime before it is kept.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from edge_rnn._inspect import operator_counts
from edge_rnn._variant_kinds import KINDS, VariantKind, made_kinds
from edge_rnn.contract import METADATA_KEY, Contract
from edge_rnn.deploy._decompose import all_graphs, all_nodes
from edge_rnn.deploy._fidelity import INT8_OPS
from edge_rnn.deploy._int8 import Int8Settings, keep_float_nodes
from edge_rnn.deploy._int8_recurrent import general_int8_nodes, quantize_recurrent
from edge_rnn.deploy._tools import quiet, read_model
from edge_rnn.errors import EdgeRnnError, ModelFormatError, UnsupportedError, described, message_line
from edge_rnn.runtime import StreamingModel

__all__ = ["Variant", "make_variant", "VARIANTS", "MAKERS", "MakeOptions", "check_int8_settings"]


@dataclass
class Variant:
    """A variant written to ``path``: what it is, the operators it uses, and what was done to make it."""

    name: str
    path: Path
    operators: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MakeOptions:
    """What a maker is told: the static forms' ``chunk`` (steps per call), the ``calibration`` data static-int8 is
    calibrated on (None: random input), and how the int8 variants quantise."""

    chunk: int = 1
    calibration: Any = None
    int8: Int8Settings = Int8Settings()


def _operators(model: onnx.ModelProto) -> dict[str, int]:
    """Operator counts by op type alone (``DynamicQuantizeLSTM``, not ``com.microsoft.DynamicQuantizeLSTM``)."""
    counts: Counter = Counter()
    for key, n in operator_counts(model.graph).items():
        counts[key.rsplit(".", 1)[-1]] += n
    return dict(counts)


def int8_graph(model: onnx.ModelProto, settings: Int8Settings) -> tuple[onnx.ModelProto, list[str], list[str]]:
    """The graph quantize_dynamic is given (GRU and RNN nodes already in the lean int8 form of
    :mod:`edge_rnn.deploy._int8_recurrent`, but those ``settings.keep_float`` keeps), the names of the nodes it is
    told to leave in float32, and notes.

    keep_float names nodes of the model as it is (its node names and operator types, ``GRU`` and ``RNN``
    included), never of the rewritten graph: an entry that names nothing there is refused
    (:func:`check_int8_settings` runs this before any work)."""
    notes = []
    ops = _operators(model)
    original = list(all_nodes(model.graph))
    keep_float_nodes(model, settings.keep_float)  # every entry names a node of the model as the user sees it
    on_recurrent = {k for k in settings.keep_float for n in original
                    if n.op_type in ("GRU", "RNN") and k in (n.name, n.op_type)}
    model, general = general_int8_nodes(model, set(settings.keep_float))
    notes += [f"{general} recurrent node(s) in conventions no int8 kernel computes rewritten in the general "
              "decomposed form (Scans of MatMuls), which quantize_dynamic quantises"] * bool(general)
    if ops.get("GRU") or ops.get("RNN"):
        model, rewritten = _quantized_recurrent(model, settings, on_recurrent)
        notes += rewritten
    native_lstm = sum(n.op_type == "LSTM" for n in model.graph.node)
    notes += [f"{native_lstm} LSTM node(s) quantised as com.microsoft.DynamicQuantizeLSTM"] * bool(native_lstm)
    notes += _nested_note(model)
    rest = [k for k in settings.keep_float if k not in on_recurrent]
    return model, _excluded(model, {n.name for n in original if n.name}, rest), notes


def _nested_note(model: onnx.ModelProto) -> list[str]:
    """A note on the recurrent nodes inside subgraphs (If, Loop, Scan bodies), which the int8 rewrites, top-level
    only, leave in float32 (their MatMuls, if any, quantize_dynamic still quantises)."""
    inner = [n for g in list(all_graphs(model.graph))[1:] for n in g.node if n.op_type in ("GRU", "RNN", "LSTM")]
    return [f"{len(inner)} recurrent node(s) inside a subgraph (If, Loop or Scan body) left in float32: "
            f"{', '.join(repr(n.name or n.output[0]) for n in inner[:5])}"] if inner else []


def _excluded(model: onnx.ModelProto, names: set[str], keep: list[str]) -> list[str]:
    """The nodes of ``model`` that the model as given had (by name) and ``keep`` names, by name or operator type."""
    return [n.name for n in all_nodes(model.graph) if n.name in names and any(k in (n.name, n.op_type) for k in keep)]


def _quantized_recurrent(model: onnx.ModelProto, settings: Int8Settings, kept: set[str]
                         ) -> tuple[onnx.ModelProto, list[str]]:
    """GRU and RNN nodes in the lean int8 form (but those ``kept`` in float32), and notes saying so."""
    model, n = quantize_recurrent(model, settings)
    notes = []
    if n:
        notes.append(f"{n} GRU/RNN node(s) rewritten as a Scan of com.microsoft.DynamicQuantizeMatMul "
                     "(onnxruntime has no GRU or RNN quantiser), the biases fused, the input projection split "
                     "outside the loop")
    if kept:
        notes.append(f"{', '.join(sorted(kept))} kept in float32 (the native operator)")
    return model, notes


def check_int8_settings(model_path: Path, settings: Int8Settings, variants: tuple[str, ...]) -> None:
    """Refuse, before any variant is made, int8 settings that cannot apply: a keep_float entry that names no node of
    the model, or one given with a static int8 form (whose unrolled graph has nodes of its own)."""
    kinds = [KINDS[v] for v in variants if v in KINDS]
    if not settings.keep_float or not any(k.int8 for k in kinds):
        return
    if any(k.int8 and k.static for k in kinds):
        raise UnsupportedError("int8 keep_float applies to the int8 variant; static-int8's unrolled graph has nodes "
                               "of its own: make it without --int8-keep-float")
    int8_graph(read_model(model_path), settings)


def _int8(model: onnx.ModelProto, dst: Path, options: MakeOptions) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = options.int8
    model, excluded, notes = int8_graph(model, settings)
    weight_type = QuantType.QInt8 if settings.weight_type == "int8" else QuantType.QUInt8
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        onnx.save(model, src)
        quiet(quantize_dynamic, src, dst, weight_type=weight_type, per_channel=settings.per_channel,
              reduce_range=settings.reduce_range, nodes_to_exclude=excluded, extra_options={"EnableSubgraph": True})
    written = onnx.load(str(dst))
    reused = _names_reused(model.graph, written.graph)
    if reused:  # quantize_dynamic names its tensors <input>_scale, ...: a file's own tensor of that name is lost
        raise UnsupportedError(f"int8: onnxruntime's quantiser named its own tensor {reused[0]!r}, a name the model "
                               "already gives another tensor, which the quantised graph would use in its place; "
                               "rename that tensor in the model")
    if not set(_operators(written)) & INT8_OPS:
        kept = ", ".join(settings.keep_float) or "no quantisable operator"
        raise UnsupportedError(f"int8: nothing was quantised ({kept} kept in float32); an int8 variant would be the "
                               "float32 model")
    notes.append(f"int8 settings: {settings.describe()}; activations uint8, quantised per call (dynamic): no "
                 "calibration data needed")
    return notes


def _names_reused(before: onnx.GraphProto, after: onnx.GraphProto) -> list[str]:
    """The initializers and inputs of ``before`` that a node of ``after`` writes: a name the quantiser took for its
    own tensor (``x_scale``), dropping the file's."""
    fixed = {t.name for t in before.initializer} | {i.name for i in before.input}
    return sorted({o for n in after.node for o in n.output} & fixed)


def _toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes so each comes after the producers of its inputs (the float16 converter appends its
    input Casts at the end; onnxruntime 1.32 crashes on such a graph instead of refusing it)."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:  # a cycle, or an input nothing produces: left for the checker to name
            ordered.extend(pending)
            break
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def _fp16(model: onnx.ModelProto, dst: Path, options: MakeOptions) -> list[str]:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # Transpose stays float32 (it holds no weights): a float16 Transpose next to the converter's Casts crashes
    # onnxruntime 1.32's layout optimiser (level "default") on a model as plain as Embedding -> GRU.
    blocked = [*DEFAULT_OP_BLOCK_LIST, "Transpose"]
    half = quiet(convert_float_to_float16, model, keep_io_types=True, op_block_list=blocked)
    _toposort(half.graph)
    onnx.save(half, dst)
    return ["weights stored in float16; inputs, outputs and states stay float32 (keep_io_types). onnxruntime's CPU "
            "provider runs LSTM, GRU and MatMul in float32 behind Casts: half the file, not faster on a CPU; the "
            "gain is on GPUs and NPUs that compute in float16"]


def _loads_apart(path: Path, name: str) -> None:
    """onnxruntime loads ``path`` at every optimisation level, tried in a child process: a graph that crashes it
    (a bug of onnxruntime's, not an exception) is refused here instead of taking this process, or a device, down."""
    code = ("import sys, onnxruntime as ort\n"
            "for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):\n"
            "    so = ort.SessionOptions(); so.graph_optimization_level = level; so.log_severity_level = 3\n"
            "    ort.InferenceSession(sys.argv[1], so, providers=['CPUExecutionProvider'])\n")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise UnsupportedError(f"{name}: onnxruntime took over 300 s to load the variant; not kept") from None
    if r.returncode < 0:
        raise UnsupportedError(f"{name}: onnxruntime crashed (signal {-r.returncode}) loading the variant it was "
                               "made into: an onnxruntime bug that a device would hit too; not kept")
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        raise UnsupportedError(f"{name}: onnxruntime cannot load the variant ({last}); not kept")


def _static(model: onnx.ModelProto, dst: Path, options: MakeOptions) -> list[str]:
    from edge_rnn.deploy._static import static_form

    onnx.save(static_form(model, options.chunk), dst)
    return [f"loop-free, fixed shapes: batch 1, {options.chunk} step(s) per call; for NPU providers (NNAPI, CoreML)"]


def _static_int8(model: onnx.ModelProto, dst: Path, options: MakeOptions) -> list[str]:
    from edge_rnn.deploy._static import static_form
    from edge_rnn.deploy._static_int8 import static_int8

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "static.onnx"
        onnx.save(static_form(model, options.chunk), src)
        return [f"the static form (batch 1, {options.chunk} step(s) per call), then "
                + static_int8(src, dst, options.calibration, settings=options.int8)[0].removeprefix("static ")]


# The function that writes each variant of the variant table (edge_rnn._variant_kinds.KINDS), as onnxruntime's
# quantization/registry.py maps an operator type to its quantiser; the reference is not made.
MAKERS: dict[str, Callable[[onnx.ModelProto, Path, MakeOptions], list[str]]] = {
    "int8": _int8,
    "fp16": _fp16,
    "static": _static,
    "static-int8": _static_int8,
}
VARIANTS = tuple(k.name for k in made_kinds())  # the variants a model is made into, in the table's order


def make_variant(name: str, model_path: Path, dst: Path, *, chunk: int = 1, calibration: Any = None,
                 int8: Int8Settings | None = None) -> Variant:
    """Write variant ``name`` of the model at ``model_path`` to ``dst``, check it loads and streams, and say how.

    ``chunk`` is the static forms' fixed number of steps per call; ``calibration`` the data static-int8 is
    calibrated on (random input without); ``int8`` how int8 and static-int8 quantise
    (:class:`Int8Settings`; default: exact on every CPU class). The settings are recorded in the variant's
    contract (``source.int8``).
    """
    if name not in MAKERS:
        raise UnsupportedError(f"variant {name!r}: expected one of {list(VARIANTS)}")
    int8 = int8 or Int8Settings()
    if not isinstance(int8, Int8Settings):
        raise UnsupportedError(f"int8: expected Int8Settings, got {type(int8).__name__}")
    check_int8_settings(model_path, int8, (name,))
    model_path, dst = Path(model_path), Path(dst)
    model = _exported(model_path)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeRnnError(f"{dst.parent}: cannot write the variant there ({e.strerror or e})") from None
    notes = _run_maker(name, model, dst, MakeOptions(chunk, calibration, int8), model_path)
    written = _stamped(KINDS[name], model, onnx.load(str(dst)), int8, model_path)
    onnx.save(written, dst)
    _loads_apart(dst, name)
    StreamingModel.load(dst)  # the contract fits the new graph, and onnxruntime takes it
    return Variant(name, dst, _operators(written), notes)


def _exported(model_path: Path) -> onnx.ModelProto:
    """The model at ``model_path``, refused unless edge-rnn exported it (its metadata holds the contract)."""
    model = read_model(model_path)
    if not any(p.key == METADATA_KEY for p in model.metadata_props):
        raise ModelFormatError(f"{model_path}: no edge_rnn contract in its metadata; variants are made from models "
                               "edge-rnn exported")
    return model


def _run_maker(name: str, model: onnx.ModelProto, dst: Path, options: MakeOptions, model_path: Path) -> list[str]:
    """Variant ``name``'s maker over ``model``, to ``dst``; what onnxruntime's tools raise, as UnsupportedError."""
    try:
        return MAKERS[name](model, dst, options)
    except EdgeRnnError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime's tools raise whatever they raise
        raise UnsupportedError(f"{name}: onnxruntime's tool failed on {model_path} ({described(e)})") from None


def _stamped(kind: VariantKind, model: onnx.ModelProto, written: onnx.ModelProto, int8: Int8Settings,
             model_path: Path) -> onnx.ModelProto:
    """``written`` (what the maker wrote) with the contract, as the tools left it or from the source ``model``,
    the variant recorded in its source (and its int8 settings), checked by onnx before onnxruntime sees it."""
    # the static forms' contract (fixed_chunk) is in the written file; the others keep the source model's
    metadata = {p.key: p.value for p in (written if kind.static else model).metadata_props}
    contract = Contract.from_metadata(metadata)
    quantised = {"int8": int8.to_dict()} if kind.int8 else {}
    contract = dataclasses.replace(contract, source={**contract.source, "variant": kind.name, **quantised})
    props = {p.key: p.value for p in written.metadata_props if p.key != "onnx.infer"}
    onnx.helper.set_model_props(written, {**props, **contract.to_metadata()})
    try:  # before onnxruntime sees it: a malformed graph can crash onnxruntime rather than raise
        onnx.checker.check_model(written, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise UnsupportedError(f"{kind.name}: onnxruntime's tool wrote an invalid graph from {model_path} "
                               f"({message_line(e)})") from None
    return written
