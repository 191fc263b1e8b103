"""The static form: loop-free, fixed shapes, for NPU execution providers (NNAPI, CoreML).

NPU providers take neither ``LSTM``/``GRU`` nor ``Scan``, nor tensors whose
shape is only known at run time. The static form takes one stream (batch 1)
and a fixed chunk of K steps per call (K = 1 by default): each recurrent node
is rewritten in the decomposed form (:mod:`edge_rnn.deploy._decompose`), every
``Scan`` is unrolled K times, the shapes are fixed and folded by onnxruntime's
basic optimiser, and what NPU providers refuse where a plain equivalent exists
(``Gather`` of one index, ``Squeeze``/``Unsqueeze``, top-level ``Identity``)
is rewritten as ``Slice`` and ``Reshape``. The contract records the fixed chunk
(``fixed_chunk``); the runtime refuses a chunk of another length, saying so.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from edge_rnn._numbers import is_int
from edge_rnn.contract import Contract
from edge_rnn.deploy._decompose import RECURRENT_OPS, REWRITE_OPSET, all_nodes, at_least_opset, decompose_recurrent
from edge_rnn.deploy._onnx_weights import free_prefix, names_in
from edge_rnn.errors import UnsupportedError, message_line
from edge_rnn.graphs import GraphBuilder

__all__ = ["static_form", "static_graph"]


def _fix_shapes(g: onnx.GraphProto, contract: Contract, chunk: int) -> None:
    axes = {t.name: (t.batch_axis, t.time_axis) for t in (*contract.inputs, *contract.outputs)}
    axes.update({s.input: (s.batch_axis, None) for s in contract.states})
    axes.update({s.output: (s.batch_axis, None) for s in contract.states})
    for vi in (*g.input, *g.output):
        if vi.name not in axes:
            continue
        batch, time = axes[vi.name]
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if i == batch:
                d.Clear()
                d.dim_value = 1
            elif i == time:
                d.Clear()
                d.dim_value = chunk
            elif not d.HasField("dim_value"):
                raise UnsupportedError(f"{vi.name!r}: dimension {i} ({d.dim_param or '?'}) is neither batch nor "
                                       "time and is not fixed: a static form needs every size known")


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = {}
    for vi in (*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [d.dim_value for d in dims]
    for t in inferred.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def _unroll_scans(model: onnx.ModelProto, steps: Callable[[onnx.NodeProto], int], *, backwards: bool) -> int:
    """Replace each top-level Scan (over ``steps(node)`` steps) by that many copies of its body; returns how many.

    Steps are cut with Slice + Squeeze and stacked with Unsqueeze + Concat; :func:`_plain_ops` turns the
    Squeeze/Unsqueeze into Reshape once shape inference knows every size. A Scan that runs backwards (a reverse
    or bidirectional node's) is unrolled from its last step where ``backwards`` allows it (a one-shot graph), and
    refused where it does not (a stream: the chunk's last step is not the sequence's).
    """
    g = model.graph
    b = GraphBuilder("unroll", prefix=free_prefix("static/unroll/", names_in(g)))
    count = 0
    for node in g.node:
        if node.op_type == "Scan":
            _unroll(node, steps(node), b, backwards)
            count += 1
        else:
            b.nodes.append(node)
    del g.node[:]
    g.node.extend(b.nodes)
    g.initializer.extend(b.initializers)
    return count


def _scan_directions(node: onnx.NodeProto, a: dict, n_scan: int, n_out: int, backwards: bool
                     ) -> tuple[list[int], list[int]]:
    """The Scan's input and output directions (1: backwards), refused where they cannot be unrolled."""
    in_dirs = list(a.get("scan_input_directions", [])) or [0] * n_scan
    out_dirs = list(a.get("scan_output_directions", [])) or [0] * n_out
    if any(a.get("scan_input_axes", [])) or any(a.get("scan_output_axes", [])):
        raise UnsupportedError(f"Scan node {node.name!r}: scans along an axis other than 0; not unrolled")
    if (any(in_dirs) or any(out_dirs)) and not backwards:
        raise UnsupportedError("a Scan that runs backwards (a reverse or bidirectional layer) has no static "
                               "streaming form")
    return in_dirs, out_dirs


def _unroll(node: onnx.NodeProto, chunk: int, b: GraphBuilder, backwards: bool) -> None:
    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
    body, n_scan = a["body"], a["num_scan_inputs"]
    n_state = len(node.input) - n_scan
    in_dirs, out_dirs = _scan_directions(node, a, n_scan, len(body.output) - n_state, backwards)
    state = list(node.input[:n_state])
    steps: list[list[str]] = [[] for _ in out_dirs]
    axes0 = b.ints([0], "axes")
    for t in range(chunk):
        rows = [chunk - 1 - t if r else t for r in in_dirs]
        mapping = _step_inputs(node, body, n_state, state, rows, b, axes0)
        _copy_body(body, t, mapping, b)
        state = [mapping[o.name] for o in body.output[:n_state]]
        for j, o in enumerate(body.output[n_state:]):
            steps[j].append(mapping[o.name])
    for final, name in zip(state, node.output[:n_state]):
        b.op1("Identity", [final], output=name)
    for j, name in enumerate(node.output[n_state:]):
        _stacked(b, steps[j][::-1] if out_dirs[j] else steps[j], name, axes0)


def _stacked(b: GraphBuilder, steps: list[str], name: str, axes0: str) -> None:
    """A scan output ``name``: the steps' outputs stacked along a new first axis, in time order."""
    parts = [b.op1("Unsqueeze", [y, axes0]) for y in steps]
    b.op1("Concat" if len(parts) > 1 else "Identity", parts, output=name, **({"axis": 0} if len(parts) > 1 else {}))


def _step_inputs(node: onnx.NodeProto, body: onnx.GraphProto, n_state: int, state: list[str], rows: list[int],
                 b: GraphBuilder, axes0: str) -> dict[str, str]:
    """One step's tensors for the body's inputs: the state carried in, and row ``rows[j]`` of scanned input j."""
    mapping = dict(zip([i.name for i in body.input[:n_state]], state))
    for j, x in enumerate(node.input[n_state:]):
        t = rows[j]
        piece = b.op1("Slice", [x, b.ints([t], "start"), b.ints([t + 1], "end"), axes0])
        mapping[body.input[n_state + j].name] = b.op1("Squeeze", [piece, axes0])
    return mapping


def _copy_body(body: onnx.GraphProto, t: int, mapping: dict[str, str], b: GraphBuilder) -> None:
    """The body's nodes for step ``t``, renamed apart; ``mapping`` learns the names of their outputs."""
    for step_node in body.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(step_node)
        copy.name = b.fresh(f"t{t}_{step_node.op_type}")
        del copy.input[:]
        copy.input.extend(mapping.get(i, i) for i in step_node.input)  # outer-scope names (the weights) stay
        outs = [b.fresh(f"t{t}_{o.rsplit('/', 1)[-1]}") for o in step_node.output]
        mapping.update(zip(step_node.output, outs))
        del copy.output[:]
        copy.output.extend(outs)
        b.nodes.append(copy)


def _fold(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's basic optimiser over fixed shapes: constant folding, Shape arithmetic resolved."""
    import onnxruntime as ort

    from edge_rnn.runtime._session import new_session_options

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, src)
        so = new_session_options("basic", save_to=str(dst))
        try:
            ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail, InvalidGraph, ...
            raise UnsupportedError(f"static: onnxruntime's optimiser refused the unrolled graph "
                                   f"({message_line(e).replace(str(src), 'the graph')})") from None
        folded = onnx.load(str(dst))
    return folded


def _plain_ops(model: onnx.ModelProto) -> None:
    """Gather of one constant index, Squeeze, Unsqueeze and Identity rewritten as Slice/Reshape, or removed."""
    g = model.graph
    shapes = _shapes(model)
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    b = GraphBuilder("plain", prefix=free_prefix("static/plain/", names_in(g)))
    outputs = {o.name for o in g.output}
    for n in g.node:
        out = n.output[0] if n.output else ""
        if n.op_type == "Gather" and n.input[1] in consts and consts[n.input[1]].ndim == 0 and out in shapes:
            _gather_as_slice(n, int(consts[n.input[1]]), shapes, b)
        elif n.op_type in ("Squeeze", "Unsqueeze") and out in shapes:
            b.op1("Reshape", [n.input[0], b.ints(shapes[out], "shape")], output=out)
        else:
            b.nodes.append(n)
    del g.node[:]
    g.node.extend(b.nodes)
    g.initializer.extend(b.initializers)
    _drop_identities(g, outputs)


def _gather_as_slice(n: onnx.NodeProto, i: int, shapes: dict[str, list[int]], b: GraphBuilder) -> None:
    """A Gather of the one constant index ``i`` as Slice + Reshape (kept as it is where ``i`` counts from the end
    of a size that is not known)."""
    out = n.output[0]
    axis = next((x.i for x in n.attribute if x.name == "axis"), 0)
    size = shapes.get(n.input[0], [None] * (axis + 1))[axis]
    if i < 0 and size is None:
        b.nodes.append(n)  # a negative index into a size that is not known: left as the Gather it is
        return
    i = i % size if size else i  # -1 is the last row: Slice(-1, 0) would be empty
    piece = b.op1("Slice", [n.input[0], b.ints([i], "start"), b.ints([i + 1], "end"), b.ints([axis], "axes")])
    b.op1("Reshape", [piece, b.ints(shapes[out], "shape")], output=out)


def _drop_identities(g: onnx.GraphProto, outputs: set[str]) -> None:
    """Remove top-level Identity nodes, renaming tensors so that the graph's outputs keep their names."""
    keep, rename = _identities_dropped(g, outputs)
    g.ClearField("node")
    for n in keep:
        for lst in (n.input, n.output):
            for k, name in enumerate(lst):
                lst[k] = _renamed(name, rename)
    g.node.extend(keep)


def _identities_dropped(g: onnx.GraphProto, outputs: set[str]) -> tuple[list[onnx.NodeProto], dict[str, str]]:
    """The nodes kept (every Identity that is the only way to give an input or another output a second name),
    and {old name: new name} for the tensors the dropped ones passed on."""
    produced = {o: n for n in g.node for o in n.output}
    inputs = {i.name for i in g.input} | {t.name for t in g.initializer}
    rename: dict[str, str] = {}
    keep = []
    for n in g.node:
        if n.op_type != "Identity":
            keep.append(n)
            continue
        src, dst = n.input[0], n.output[0]
        if dst in outputs and (src in inputs or src in outputs or src not in produced or src in rename):
            keep.append(n)  # a second name for an input or another output: an Identity is the only way
            continue
        if dst in outputs:
            rename[src] = dst  # the producer writes the output's name directly
        else:
            rename[dst] = src
    return keep, rename


def _renamed(name: str, rename: dict[str, str]) -> str:
    """``name`` through ``rename``, following chains of identities."""
    seen = set()
    while name in rename and name not in seen:
        seen.add(name)
        name = rename[name]
    return name


def _drop_unused_initializers(g: onnx.GraphProto) -> None:
    used = {i for n in all_nodes(g) for i in n.input} | {o.name for o in g.output}  # subgraphs read outer names
    keep = [t for t in g.initializer if t.name in used]
    g.ClearField("initializer")
    g.initializer.extend(keep)


def _loop_free(m: onnx.ModelProto, steps: Callable[[onnx.NodeProto], int], *, backwards: bool) -> onnx.ModelProto:
    """A decomposed graph with fixed input shapes made loop-free: Scans unrolled, shapes folded by onnxruntime's
    basic optimiser, the operators NPUs refuse rewritten; checked by onnx."""
    if any(n.op_type == "Scan" for n in m.graph.node):  # the unrolled steps are opset-13 operators
        m = at_least_opset(m, REWRITE_OPSET)
    _unroll_scans(m, steps, backwards=backwards)
    _drop_unused_initializers(m.graph)
    m = _fold(m)
    _plain_ops(m)
    _drop_unused_initializers(m.graph)
    return m


def _decomposed(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its recurrent nodes decomposed; UnsupportedError for one inside a subgraph (an If branch, a
    Loop body), which the rewrite does not reach and which NPU providers do not take."""
    m, _ = decompose_recurrent(model)
    left = next((n for n in all_nodes(m.graph) if n.op_type in RECURRENT_OPS and n.domain in ("", "ai.onnx")), None)
    if left is not None:
        raise UnsupportedError(f"{left.op_type} node {left.name or left.output[0]!r}: inside a subgraph (an If, Loop "
                               "or Scan body), where the static form does not rewrite it: it has no static form")
    return m


def _no_sequence_lens(model: onnx.ModelProto) -> None:
    """Refuse a recurrent node fed ``sequence_lens`` in a static streaming form."""
    for n in model.graph.node:
        if n.op_type in RECURRENT_OPS and len(n.input) > 4 and n.input[4]:
            raise UnsupportedError(f"{n.op_type} node {n.name or n.output[0]!r}: a fixed-shape static form streams "
                                   f"whole chunks; sequence_lens {n.input[4]!r} would stop rows inside one: it has no "
                                   "static streaming form")


def static_form(model: onnx.ModelProto, chunk: int = 1) -> onnx.ModelProto:
    """The loop-free, fixed-shape form of an edge-rnn model: batch 1, ``chunk`` steps per call."""
    if not is_int(chunk, 1, 256):
        raise UnsupportedError(f"static chunk: expected an int in 1..256, got {chunk!r}")
    contract = Contract.from_metadata({p.key: p.value for p in model.metadata_props})
    if contract is None:
        raise UnsupportedError("a static form is made from a model edge-rnn exported (it has no edge_rnn contract); "
                               "a one-shot graph whose input shapes are all fixed takes static_graph")
    if not contract.streamable:
        raise UnsupportedError("the model is not streamable (a bidirectional layer): it has no static streaming form")
    if not contract.is_streaming and chunk != 1:
        raise UnsupportedError(f"static chunk {chunk}: the model takes one step per call (a cell); use 1")
    _no_sequence_lens(model)
    m = _decomposed(model)
    _fix_shapes(m.graph, contract, chunk)
    m = _loop_free(m, lambda _node: chunk, backwards=False)
    source = {**contract.source, "variant": "static"}
    fixed = chunk if contract.is_streaming else None
    helper.set_model_props(m, dataclasses.replace(contract, source=source, fixed_chunk=fixed).to_metadata())
    onnx.checker.check_model(m, full_check=True)
    return m


def static_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The loop-free form of a one-shot graph whose every input shape is fixed in the file (no edge_rnn contract
    needed): each recurrent node decomposed (any ONNX convention, reverse and bidirectional included, since the
    whole sequence is in one call) and each Scan unrolled over its fixed length. ``sequence_lens`` stays an input
    where it is one: the mask it makes is plain operators over fixed shapes."""
    for vi in model.graph.input:
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                raise UnsupportedError(f"{vi.name!r}: dimension {i} ({d.dim_param or '?'}) is not fixed: static_graph "
                                       "needs every input shape known (a streaming model takes static_form)")
    m = _decomposed(model)
    shapes = _shapes(m)

    def steps(node: onnx.NodeProto) -> int:
        first = node.input[len(node.input) - _num_scan_inputs(node)]
        if first not in shapes:
            raise UnsupportedError(f"Scan node {node.name!r}: the length of {first!r} is not known from the input "
                                   "shapes: cannot unroll it")
        return shapes[first][0]

    m = _loop_free(m, steps, backwards=True)
    onnx.checker.check_model(m, full_check=True)
    return m


def _num_scan_inputs(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "num_scan_inputs")
