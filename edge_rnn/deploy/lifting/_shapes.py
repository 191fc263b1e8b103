"""Shape vectors fixed in a file: how ``Reshape``, ``Expand``, ``Tile`` and ``ConstantOfShape`` move axis labels,
and the rewrite of an entry that pins the time length (or the batch size) into one that follows the input.

An entry is found by the traced axes, never by its number (a time length of 8 and an input size of 8 read the
same): an output axis of the time or batch class whose entry is a fixed size. It is rewritten to the value
that keeps the input's own size (``Reshape`` 0, ``Expand``/``Tile`` 1) where the input has that axis, else to
-1 (``Reshape``, once), else to the size read at run time from a graph input with that axis
(``Shape`` -> ``Gather`` -> ``Concat``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edge_rnn.deploy.lifting._axes import Edits, Flow, ShapeSite, attr, where
from edge_rnn.deploy.lifting._ops import unknown
from edge_rnn.errors import UnsupportedError

__all__ = ["SHAPE_RULES", "rewrite_sites"]

Mono = tuple[int, tuple[str, ...]]


def _mono(d, hint: str) -> Mono:
    if isinstance(d, int) and d > 0:
        return d, ()
    return 1, (d if isinstance(d, str) else f"?{hint}",)


def _mul(a: Mono, b: Mono) -> Mono:
    return a[0] * b[0], tuple(sorted(a[1] + b[1]))


def _div(a: Mono, b: Mono) -> Mono | None:
    """a / b where it is a monomial."""
    left = Counter(a[1])
    left.subtract(b[1])
    if a[0] % b[0] or any(v < 0 for v in left.values()):
        return None
    return a[0] // b[0], tuple(sorted(left.elements()))


def _groups(a: list[Mono], b: list[Mono]) -> list[tuple[list[int], list[int]]] | None:
    """Runs of ``a`` and ``b`` (no size-1 entries) whose products are equal, in order; None where none fit."""
    i = j = 0
    out = []
    while i < len(a) and j < len(b):
        gi, gj, pa, pb = [i], [j], a[i], b[j]
        i, j = i + 1, j + 1
        while pa != pb:
            if _div(pb, pa) is not None and i < len(a):
                pa, i = _mul(pa, a[i]), i + 1
                gi.append(i - 1)
            elif _div(pa, pb) is not None and j < len(b):
                pb, j = _mul(pb, b[j]), j + 1
                gj.append(j - 1)
            else:
                return None
        out.append((gi, gj))
    return out if i == len(a) and j == len(b) else None


def _target(flow: Flow, node: onnx.NodeProto, shape: np.ndarray, ins_m: list[Mono]) -> list[Mono] | None:
    """The output sizes a Reshape's constant shape asks for, as monomials of the input's sizes."""
    zero_copies = not attr(node, "allowzero", 0)
    out: list[Mono | None] = []
    for k, v in enumerate(int(x) for x in shape):
        out.append(ins_m[k] if v == 0 and zero_copies and k < len(ins_m) else None if v == -1 else (v, ()))
    if out.count(None) > 1:
        return None
    if None in out:
        out[out.index(None)] = _div(_product(ins_m), _product([m for m in out if m is not None]))
    return None if None in out else out


def _product(ms: list[Mono]) -> Mono:
    total: Mono = (1, ())
    for m in ms:
        total = _mul(total, m)
    return total


def _reshape(flow: Flow, node, ins, graph=None):
    x = ins[0]
    shape = flow.consts.value(node.input[1]) if len(node.input) > 1 else None
    if x is None or shape is None:
        return unknown(flow, node, ins)
    ins_m = [_mono(flow.dim(node.input[0], k), f"{node.input[0]}{k}") for k in range(len(x))]
    outs_m = _target(flow, node, np.ravel(shape), ins_m)
    if outs_m is None:
        return unknown(flow, node, ins)
    out = _place(flow, node, x, ins_m, outs_m)
    if out is None:
        return unknown(flow, node, ins)
    keep = [0 if k < len(x) and out[k] == x[k] and not attr(node, "allowzero", 0) else None
            for k in range(len(out))]
    flow.shape_sites.append(ShapeSite(node, graph, 1, np.ravel(shape).astype(np.int64), tuple(out), keep, True))
    return [tuple(out)]


def _place(flow: Flow, node, x, ins_m: list[Mono], outs_m: list[Mono]) -> list[str] | None:
    """The output labels of a Reshape from ``x``'s, matching runs of equal products (size-1 axes aside)."""
    big_in, big_out = _big(ins_m), _big(outs_m)
    groups = _groups([ins_m[k] for k in big_in], [outs_m[k] for k in big_out])
    if groups is None:
        return None
    out = [_one(flow, x, ins_m, k) for k in range(len(outs_m))]
    for gi, gj in groups:
        src, dst = [big_in[i] for i in gi], [big_out[j] for j in gj]
        for k, lab in zip(dst, _group_labels(flow, node, x, src, [outs_m[k] for k in dst])):
            out[k] = lab
    return out


def _big(ms: list[Mono]) -> list[int]:
    return [k for k, m in enumerate(ms) if m != (1, ())]


def _one(flow: Flow, x, ins_m: list[Mono], k: int) -> str:
    """A size-1 output axis: the input's at the same place where that is size 1 too (a batch of one)."""
    return x[k] if k < len(x) and ins_m[k] == (1, ()) else flow.classes.fresh("one")


def _group_labels(flow: Flow, node, x, src: list[int], dst_m: list[Mono]) -> list[str]:
    if len(src) == 1 and len(dst_m) == 1:
        return [x[src[0]]]
    if len(dst_m) == 1:
        return [flow.classes.compound([(x[k], flow.dim(node.input[0], k)) for k in src])]
    parts = _split_back(flow, x[src[0]], dst_m) if len(src) == 1 else None
    if parts:
        return parts
    for k in src:
        flow.guard(x[k], node, "splits or regroups")
    return [flow.classes.fresh("regrouped") for _ in dst_m]


def _split_back(flow: Flow, label: str, dst_m: list[Mono]) -> list[str] | None:
    """The labels of the axes merged into ``label``, where ``dst_m`` splits it back into them."""
    parts = flow.classes.parts.get(label)
    if not parts or len(parts) != len(dst_m):
        return None
    fits = all(d is None or _mono(d, "?") == m for (_, d), m in zip(parts, dst_m))
    return [lab for lab, _ in parts] if fits else None


def _expand(flow: Flow, node, ins, graph=None):
    x, shape = ins[0], flow.consts.value(node.input[1])
    if x is None or shape is None:
        return unknown(flow, node, ins)
    shape = np.ravel(shape).astype(np.int64)
    rank = max(len(x), len(shape))
    out, keep = [], []
    for k in range(rank):
        xi, si = k - (rank - len(x)), k - (rank - len(shape))
        real = xi >= 0 and flow.dim(node.input[0], xi) != 1
        want = int(shape[si]) if si >= 0 else 1
        out.append(x[xi] if xi >= 0 and (real or want == 1) else flow.classes.fresh("expanded"))
        keep.append(1 if real else None)
    if len(shape) == rank:
        flow.shape_sites.append(ShapeSite(node, graph, 1, shape, tuple(out), keep, False))
    return [tuple(out)]


def _tile(flow: Flow, node, ins, graph=None):
    x, reps = ins[0], flow.consts.value(node.input[1])
    if x is None or reps is None:
        return unknown(flow, node, ins)
    reps = np.ravel(reps).astype(np.int64)
    out, keep = [], []
    for k, (lab, r) in enumerate(zip(x, reps)):
        one = flow.dim(node.input[0], k) == 1
        if r != 1 and not one:
            flow.guard(lab, node, "tiles")
        out.append(lab if r == 1 else flow.classes.fresh("tiled"))
        keep.append(None if one else 1)
    flow.shape_sites.append(ShapeSite(node, graph, 1, reps, tuple(out), keep, False))
    return [tuple(out)]


def _constant_of_shape(flow: Flow, node, ins, graph=None):
    shape = flow.consts.value(node.input[0])
    if shape is None:
        return unknown(flow, node, ins)
    shape = np.ravel(shape).astype(np.int64)
    out = tuple(flow.classes.fresh("filled") for _ in shape)
    flow.shape_sites.append(ShapeSite(node, graph, 0, shape, out, [None] * len(shape), False))
    return [out]


SHAPE_RULES = {"Reshape": _reshape, "Expand": _expand, "Tile": _tile, "ConstantOfShape": _constant_of_shape}


def rewrite_sites(flow: Flow, sources: dict[str, tuple[str, int]], top: onnx.GraphProto, edits: Edits) -> list[str]:
    """Rewrite every shape vector entry that pins a time or batch length; ``sources`` maps TIME/BATCH to a graph
    input and its axis, where the size can be read at run time. Returns one note per node rewritten."""
    notes = []
    for site in flow.shape_sites:
        fixes = _fixes(flow, site)
        if fixes:
            notes.append(_apply(site, fixes, sources, top, edits))
    return notes


def _fixes(flow: Flow, site: ShapeSite) -> dict[int, int | str]:
    """Output axis -> its new entry (an int, or TIME/BATCH: read at run time)."""
    fixes: dict[int, int | str] = {}
    minus = site.minus_one and -1 in site.values
    for k, (lab, v) in enumerate(zip(site.out, site.values)):
        kind = flow.classes.kind(lab)
        if not _pinned(site, k, kind):
            continue
        fix = site.keep[k] if site.keep[k] is not None else -1 if site.minus_one and not minus else kind
        if fix == kind and lab in flow.classes.parts:
            raise UnsupportedError(f"{where(site.node)}: its shape {site.values.tolist()} pins a merged length "
                                   f"{int(v)} (batch and time) at axis {k}: cannot make it follow the input")
        minus = minus or fix == -1
        fixes[k] = fix
    return fixes


def _pinned(site: ShapeSite, k: int, kind: str | None) -> bool:
    """Whether entry ``k`` fixes a time or batch length (0 and -1 of a Reshape, and the keeping value, do not)."""
    v = site.values[k]
    return kind is not None and v != site.keep[k] and not (site.minus_one and v in (0, -1))


def _apply(site: ShapeSite, fixes: dict, sources: dict, top: onnx.GraphProto, edits: Edits) -> str:
    node, values = site.node, site.values.copy()
    name = f"{node.name or node.output[0]}.lifted_shape"
    for k, v in fixes.items():
        if isinstance(v, int):
            values[k] = v
    runtime = {k: v for k, v in fixes.items() if not isinstance(v, int)}
    if not runtime:
        top.initializer.append(numpy_helper.from_array(values, name))
        node.input[site.index] = name
        return f"{where(node)}: shape {site.values.tolist()} -> {values.tolist()} (the time and batch lengths " \
               "follow the input)"
    for kind in runtime.values():
        if kind not in sources:
            raise UnsupportedError(f"{where(node)}: its shape {site.values.tolist()} pins the {kind.strip('<>')} "
                                   "length, and no graph input has that axis to read it from")
    _runtime_vector(site, values, runtime, sources, name, top, edits)
    shown = [v.strip("<>") if k in runtime else int(values[k]) for k, v in enumerate(values.tolist())
             for v in [runtime.get(k, v)]]
    return f"{where(node)}: shape {site.values.tolist()} -> {shown} (read at run time from the input)"


def _runtime_vector(site: ShapeSite, values: np.ndarray, runtime: dict, sources: dict, name: str,
                    top: onnx.GraphProto, edits: Edits) -> None:
    """Nodes before ``site.node`` that build its shape vector: fixed entries, and sizes read from graph inputs."""
    parts, new = [], []
    for k in range(len(values)):
        part = f"{name}.{k}"
        if k in runtime:
            src, axis = sources[runtime[k]]
            top.initializer.append(numpy_helper.from_array(np.asarray([axis], np.int64), f"{part}.axis"))
            new += [helper.make_node("Shape", [src], [f"{part}.shape"], name=f"{part}.Shape"),
                    helper.make_node("Gather", [f"{part}.shape", f"{part}.axis"], [part], name=f"{part}.Gather")]
        else:
            top.initializer.append(numpy_helper.from_array(values[k:k + 1].copy(), part))
        parts.append(part)
    new.append(helper.make_node("Concat", parts, [name], axis=0, name=f"{name}.Concat"))
    edits.before(site.graph, site.node, new)
    site.node.input[site.index] = name
