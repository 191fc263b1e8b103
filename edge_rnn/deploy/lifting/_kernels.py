"""Convolution and pooling over the time axis: which kernels stream, and why the others cannot.

A kernel of one frame with stride 1 and no padding over time is per-frame, so it streams. A kernel padded
after the last frame looks ahead in time. A causal kernel (all its padding before the first frame) needs the
previous call's last frames, which lift does not carry: each call would start again from zero padding.
"""

from __future__ import annotations

from edge_rnn.deploy.lifting._axes import Flow, attr
from edge_rnn.deploy.lifting._ops import unknown

__all__ = ["KERNEL_RULES", "time_problem"]


def time_problem(kernel: int, dilation: int, stride: int, begin: int, end: int, verb: str) -> str | None:
    """Why a kernel over the time axis cannot stream chunk by chunk; None where it can."""
    reach = (kernel - 1) * dilation
    if reach == 0 and stride == 1 and begin == 0 and end == 0:
        return None
    if end > 0:
        return (f"looks ahead in time: it {verb} {kernel} frames padded with {end} after the last, so its output at "
                "a step needs later steps")
    if stride != 1:
        return f"strides the time axis by {stride}: chunks would have to start on multiples of it"
    if begin == reach:
        return (f"a causal kernel of {kernel} frames (dilation {dilation}) needs the previous call's last {reach} "
                "frames, which lift does not carry: each call would start again from zero padding")
    return f"changes the time length (kernel {kernel}, dilation {dilation}, padding {begin} before, {end} after)"


def _pads(node, kernel: list[int], dilation: list[int], stride: list[int]) -> list[tuple[int, int]]:
    n = len(kernel)
    auto = attr(node, "auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for k, d, s in zip(kernel, dilation, stride):
            total = max((k - 1) * d + 1 - s, 0)
            small, big = total // 2, total - total // 2
            out.append((big, small) if auto == "SAME_LOWER" else (small, big))
        return out
    pads = attr(node, "pads") or [0] * (2 * n)
    return [(pads[i], pads[i + n]) for i in range(n)]


def _params(flow: Flow, node, n: int) -> tuple[list, list, list] | None:
    """(kernel, dilations, strides) over the ``n`` spatial axes; None where the kernel's size is not known."""
    kernel = attr(node, "kernel_shape")
    if kernel is None and node.op_type == "Conv":
        kernel = list(flow.dims.get(node.input[1], ()))[2:] or None
    if kernel is None or not all(isinstance(k, int) for k in kernel):
        return None
    return list(kernel), attr(node, "dilations") or [1] * n, attr(node, "strides") or [1] * n


def _kernel(flow: Flow, node, ins, graph=None):
    x = ins[0]
    params = None if x is None or len(x) < 3 else _params(flow, node, len(x) - 2)
    if params is None:
        return unknown(flow, node, ins)
    kernel, dilation, stride = params
    conv = node.op_type == "Conv"
    out = [x[0], flow.classes.fresh("channels") if conv else x[1]]
    if conv:
        flow.guard(x[1], node, "convolves across")
    for lab, k, d, s, (b, e) in zip(x[2:], kernel, dilation, stride, _pads(node, kernel, dilation, stride)):
        problem = time_problem(k, d, s, b, e, "convolves" if conv else "pools")
        if problem:
            flow.guard(lab, node, problem, time_only=True)
        out.append(lab if s == 1 and b + e == (k - 1) * d else flow.classes.fresh("kernel"))
    return [tuple(out)] + [flow.fresh_for(o) for o in node.output[1:]]


KERNEL_RULES = {op: _kernel for op in ("Conv", "MaxPool", "AveragePool", "LpPool")}
