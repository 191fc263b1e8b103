"""How each operator moves axis labels from its inputs to its outputs, and where it mixes along an axis.

One rule per operator family, in the table :data:`RULES` (``op_type -> rule``); a rule takes the flow, the
node, its inputs' labels (None where unknown) and the graph it sits in, and returns each output's labels.
An operator with no rule is "not analysed": its outputs get unrelated labels and, where an input carries
the time axis, :meth:`Flow.check` notes it. Rules for the recurrent and loop operators are in
:mod:`edge_rnn.deploy.lifting._loops`; the shape-vector operators (``Reshape``, ``Expand``, ...) in
:mod:`edge_rnn.deploy.lifting._shapes`.
"""

from __future__ import annotations

import numpy as np
import onnx

from edge_rnn.deploy.lifting._axes import Flow, Labels, attr

__all__ = ["RULES", "unknown", "axes_input", "norm"]

Ins = list[Labels | None]

_ELEMENTWISE = (
    "Add Sub Mul Div Pow Max Min Mean Sum Where Equal Greater Less GreaterOrEqual LessOrEqual And Or Xor Not Mod "
    "BitShift PRelu Relu Tanh Sigmoid Neg Abs Exp Log Sqrt Erf Gelu LeakyRelu Elu Selu Celu HardSigmoid HardSwish "
    "Softplus Softsign Clip Sign Floor Ceil Round Reciprocal Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh "
    "Atanh IsNaN IsInf Mish ThresholdedRelu Shrink BitwiseAnd BitwiseOr BitwiseXor BitwiseNot Swish"
).split()
_PASS_FIRST = ("Identity Cast CastLike Dropout BatchNormalization QuantizeLinear DequantizeLinear "
               "DynamicQuantizeLinear").split()


def norm(axes, rank: int) -> list[int]:
    return [int(a) + rank if int(a) < 0 else int(a) for a in axes]


def axes_input(flow: Flow, node: onnx.NodeProto, index: int, name: str = "axes"):
    """An operator's axes: the attribute (older opsets) or its constant input ``index``; None if computed."""
    a = attr(node, name)
    if a is not None:
        return list(a) if isinstance(a, (list, tuple)) else [a]
    if len(node.input) > index and node.input[index]:
        v = flow.consts.value(node.input[index])
        return None if v is None else [int(x) for x in np.ravel(v)]
    return []


def unknown(flow: Flow, node: onnx.NodeProto, ins: Ins, graph=None) -> list[Labels | None]:
    flow.unknown.append((node, ins))
    return [flow.fresh_for(o) if o else None for o in node.output]


def _elementwise(flow: Flow, node, ins: Ins, graph=None):
    seqs = [flow.pairs(n, lab) for n, lab in zip(node.input, ins) if n and lab is not None]
    if len(seqs) < len([n for n in node.input if n]):
        return unknown(flow, node, ins)
    return [flow.align(seqs, node)] + [flow.fresh_for(o) for o in node.output[1:]]


def _pass_first(flow: Flow, node, ins: Ins, graph=None):
    if ins[0] is None:
        return unknown(flow, node, ins)
    return [ins[0]] + [flow.fresh_for(o) for o in node.output[1:]]


def _constant(flow: Flow, node, ins: Ins, graph=None):
    return [flow.fresh_for(node.output[0])]


def _shape(flow: Flow, node, ins: Ins, graph=None):
    return [flow.fresh_for(o) for o in node.output]


def _matmul(flow: Flow, node, ins: Ins, graph=None):
    a, b = ins[0], ins[1]
    if a is None or b is None or not a or not b:
        return unknown(flow, node, ins)
    ka, kb = a[-1], b[-2] if len(b) > 1 else b[0]
    flow.classes.union(ka, kb, node)
    flow.guard(ka, node, "contracts")
    if len(a) == 1 or len(b) == 1:
        return [a[:-1] if len(b) == 1 else b[:-2] + b[-1:]]
    pa, pb = flow.pairs(node.input[0], a)[:-2], flow.pairs(node.input[1], b)[:-2]
    return [tuple(flow.align([pa, pb], node)) + (a[-2], b[-1])]


def _gemm(flow: Flow, node, ins: Ins, graph=None):
    a, b = ins[0], ins[1]
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return unknown(flow, node, ins)
    m, ka = (a[1], a[0]) if attr(node, "transA", 0) else (a[0], a[1])
    kb, n = (b[1], b[0]) if attr(node, "transB", 0) else (b[0], b[1])
    flow.classes.union(ka, kb, node)
    flow.guard(ka, node, "contracts")
    out = [(m, flow.dim(node.output[0], 0)), (n, flow.dim(node.output[0], 1))]
    if len(ins) > 2 and ins[2] is not None:
        return [flow.align([out, flow.pairs(node.input[2], ins[2])], node)]
    return [(m, n)]


def _transpose(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    if x is None:
        return unknown(flow, node, ins)
    perm = attr(node, "perm") or list(range(len(x)))[::-1]
    return [tuple(x[p] for p in perm)]


def _unsqueeze(flow: Flow, node, ins: Ins, graph=None):
    x, axes = ins[0], axes_input(flow, node, 1)
    if x is None or axes is None:
        return unknown(flow, node, ins)
    rank = len(x) + len(axes)
    new, it = set(norm(axes, rank)), iter(x)
    return [tuple(flow.classes.fresh("unsqueezed") if k in new else next(it) for k in range(rank))]


def _squeeze(flow: Flow, node, ins: Ins, graph=None):
    x, axes = ins[0], axes_input(flow, node, 1)
    if x is None or axes is None:
        return unknown(flow, node, ins)
    gone = set(norm(axes, len(x))) if axes else {k for k in range(len(x)) if flow.dim(node.input[0], k) == 1}
    if not axes and any(flow.dim(node.input[0], k) is None for k in range(len(x))):
        return unknown(flow, node, ins)
    for k in gone:
        flow.guard(x[k], node, "squeezes away")
    return [tuple(lab for k, lab in enumerate(x) if k not in gone)]


def _flatten(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    if x is None:
        return unknown(flow, node, ins)
    axis = norm([attr(node, "axis", 1)], len(x))[0]
    pairs = flow.pairs(node.input[0], x)
    return [(_merge(flow, pairs[:axis]), _merge(flow, pairs[axis:]))]


def _merge(flow: Flow, pairs) -> str:
    """One axis made of several: the one that is not 1 if only one is, else a compound label."""
    big = [p for p in pairs if p[1] != 1]
    if len(big) == 1:
        return big[0][0]
    return flow.classes.compound(big) if big else flow.classes.fresh("merged")


def _concat(flow: Flow, node, ins: Ins, graph=None):
    if any(lab is None for lab in ins) or not ins:
        return unknown(flow, node, ins)
    rank = len(ins[0])
    axis = norm([attr(node, "axis", 0)], rank)[0]
    for lab in ins:
        flow.guard(lab[axis], node, "concatenates along")
        for k in range(rank):
            if k != axis:
                flow.classes.union(ins[0][k], lab[k], node)
    return [tuple(flow.classes.fresh("concat") if k == axis else ins[0][k] for k in range(rank))]


def _split(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    if x is None:
        return unknown(flow, node, ins)
    axis = norm([attr(node, "axis", 0)], len(x))[0]
    flow.guard(x[axis], node, "splits")
    return [tuple(flow.classes.fresh("split") if k == axis else lab for k, lab in enumerate(x))
            for _ in node.output]


def _slice_args(flow: Flow, node) -> tuple | None:
    """(starts, ends, axes or None, steps or None) where they are constants."""
    if attr(node, "starts") is not None:  # opset < 10
        return attr(node, "starts"), attr(node, "ends"), attr(node, "axes"), None
    names = (list(node.input[1:5]) + [""] * 4)[:4]
    values = [flow.consts.value(n) if n else None for n in names]
    if any(v is None for v, n in zip(values, names) if n):
        return None
    return tuple(values)


def _slice(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    args = None if x is None else _slice_args(flow, node)
    if args is None:
        return unknown(flow, node, ins)
    starts, ends, axes, steps = args
    axes = norm(list(range(len(starts))) if axes is None else list(np.ravel(axes)), len(x))
    steps = [1] * len(axes) if steps is None else list(np.ravel(steps))
    out = list(x)
    for a, s, e, st in zip(axes, np.ravel(starts), np.ravel(ends), steps):
        if not (s == 0 and st == 1 and (e >= 2**31 - 1 or e == flow.dim(node.input[0], a))):
            flow.guard(x[a], node, "slices")
            out[a] = flow.classes.fresh("sliced")
    return [tuple(out)]


def _gather(flow: Flow, node, ins: Ins, graph=None):
    x, idx = ins[0], ins[1]
    if x is None or idx is None:
        return unknown(flow, node, ins)
    axis = norm([attr(node, "axis", 0)], len(x))[0]
    step = flow.iterators.get(node.input[1])
    if step is not None and not idx:  # x[i] with a Loop's counter: the loop steps along this axis
        flow.classes.union(step, x[axis], node)
    else:
        flow.guard(x[axis], node, "gathers along")
    return [tuple(x[:axis]) + tuple(idx) + tuple(x[axis + 1:])]


def _pad(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    pads = attr(node, "pads")
    if pads is None and len(node.input) > 1:
        v = flow.consts.value(node.input[1])
        pads = None if v is None else list(np.ravel(v))
    axes = axes_input(flow, node, 3) if flow.opset >= 18 else []
    if x is None or pads is None or axes is None:
        return unknown(flow, node, ins)
    axes = norm(axes, len(x)) if axes else list(range(len(x)))
    n = len(axes)
    out = list(x)
    for k, a in enumerate(axes):
        if pads[k] or pads[k + n]:
            flow.guard(x[a], node, "pads")
            out[a] = flow.classes.fresh("padded")
    return [tuple(out)]


def _reduce(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    if node.op_type in ("ArgMax", "ArgMin"):
        axes = [attr(node, "axis", 0)]
    else:
        axes = axes_input(flow, node, 1)
    if x is None or axes is None:
        return unknown(flow, node, ins)
    if not axes and attr(node, "noop_with_empty_axes", 0):
        return [x]
    gone = set(norm(axes, len(x))) if axes else set(range(len(x)))
    for k in sorted(gone):
        flow.guard(x[k], node, "reduces over")
    keep = attr(node, "keepdims", 1)
    return [tuple(flow.classes.fresh("reduced") if k in gone else lab for k, lab in enumerate(x)
                  if keep or k not in gone)]


def _mixes_from(first: int, verb: str):
    """A rule for an operator that mixes along axes ``first..`` and keeps its input's shape."""
    def rule(flow: Flow, node, ins: Ins, graph=None):
        x = ins[0]
        if x is None:
            return unknown(flow, node, ins)
        for lab in x[first:]:
            flow.guard(lab, node, verb)
        return [x] + [flow.fresh_for(o) for o in node.output[1:]]
    return rule


def _mixes_axis(name: str, default: int, verb: str, *, from_axis: bool = False):
    """A rule for an operator that mixes along its attribute ``name``'s axis (and every later one where
    ``from_axis``, as Softmax before opset 13 does) and keeps its input's shape."""
    def rule(flow: Flow, node, ins: Ins, graph=None):
        x = ins[0]
        if x is None:
            return unknown(flow, node, ins)
        axis = norm([attr(node, name, default)], len(x))[0]
        for lab in (x[axis:] if from_axis else x[axis:axis + 1]):
            flow.guard(lab, node, verb)
        return [x] + [flow.fresh_for(o) for o in node.output[1:]]
    return rule


def _softmax(flow: Flow, node, ins: Ins, graph=None):
    if flow.opset < 13:
        return _mixes_axis("axis", 1, "normalises over", from_axis=True)(flow, node, ins)
    return _mixes_axis("axis", -1, "normalises over")(flow, node, ins)


def _mvn(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    if x is None:
        return unknown(flow, node, ins)
    for k in norm(attr(node, "axes", [0, 2, 3]), len(x)):
        if k < len(x):
            flow.guard(x[k], node, "normalises over")
    return [x]


def _cumsum(flow: Flow, node, ins: Ins, graph=None):
    x, axes = ins[0], axes_input(flow, node, 1, name="__none__")
    if x is None or not axes:
        return unknown(flow, node, ins)
    flow.guard(x[norm(axes, len(x))[0]], node, "accumulates along")
    return [x]


def _topk(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    if x is None:
        return unknown(flow, node, ins)
    axis = norm([attr(node, "axis", -1)], len(x))[0]
    flow.guard(x[axis], node, "sorts along")
    out = tuple(flow.classes.fresh("topk") if k == axis else lab for k, lab in enumerate(x))
    return [out for _ in node.output]


def _reverse_sequence(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    if x is None:
        return unknown(flow, node, ins)
    flow.guard(x[attr(node, "time_axis", 0)], node, "reverses")
    return [x]


def _global_pool(flow: Flow, node, ins: Ins, graph=None):
    x = ins[0]
    if x is None:
        return unknown(flow, node, ins)
    for lab in x[2:]:
        flow.guard(lab, node, "pools over")
    return [tuple(x[:2]) + tuple(flow.classes.fresh("pooled") for _ in x[2:])]


RULES: dict = {
    **{op: _elementwise for op in _ELEMENTWISE},
    **{op: _pass_first for op in _PASS_FIRST},
    "Constant": _constant, "Shape": _shape, "Size": _shape,
    "MatMul": _matmul, "Gemm": _gemm, "Transpose": _transpose, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Flatten": _flatten, "Concat": _concat, "Split": _split, "Slice": _slice, "Gather": _gather, "Pad": _pad,
    **{op: _reduce for op in ("ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
                              "ReduceLogSumExp ReduceSumSquare ArgMax ArgMin").split()},
    "Softmax": _softmax, "LogSoftmax": _softmax, "Hardmax": _softmax,
    "LayerNormalization": _mixes_axis("axis", -1, "normalises over", from_axis=True),
    "LpNormalization": _mixes_axis("axis", -1, "normalises over"),
    "InstanceNormalization": _mixes_from(2, "normalises over"),
    "GroupNormalization": _mixes_from(2, "normalises over"),
    "MeanVarianceNormalization": _mvn, "CumSum": _cumsum, "TopK": _topk, "ReverseSequence": _reverse_sequence,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool, "GlobalLpPool": _global_pool,
}
