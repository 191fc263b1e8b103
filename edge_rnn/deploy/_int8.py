"""The int8 settings: what onnxruntime's quantisers are told, and why the default is what it is.

onnxruntime's dynamic int8 multiplies uint8 activations by int8 weights. How
the CPU does that decides whether the result is exact:

- x86-64 without VNNI (AVX2; AVX-512 without VNNI) uses ``vpmaddubsw``, which
  adds each pair of u8 x s8 products in int16 and *saturates*: two products of
  255 x 127 make 64,770, far past 32,767. The error that follows is not
  rounding, and grows with the weights' range: on the demo LSTM and GRU it was
  3 to 6 times the int8 bound.
- AVX-512 VNNI and AVX-VNNI (``vpdpbusd``) and ARM64 (``sdot``/``udot``, or
  widening multiplies) accumulate in int32 and never saturate.

``reduce_range`` stores weights in 7 bits (-64..63): a pair is then at most
2 x 255 x 64 = 32,640, so every CPU computes the exact integer product, and
the variant's error is the same wherever it runs. That costs one bit of weight
precision, which on the demo models stays far inside the bound
(``docs/deployment.md`` has the figures per CPU). It is the default
(``target="portable"``). A user who knows the device can take the full range:
``target="vnni"`` or ``"arm64"``, a little more accurate there and wrong on an
AVX2 CPU, which the bundle's self-test then refuses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import onnx

from edge_rnn.errors import UnsupportedError

__all__ = ["Int8Settings", "INT8_TARGETS", "keep_float_nodes"]

WEIGHT_TYPES = ("int8", "uint8")


@dataclass(frozen=True)
class Int8Settings:
    """How a model is quantised to int8.

    - ``reduce_range``: weights in 7 bits, exact on every CPU (see the module docstring);
    - ``per_channel``: one scale per output channel of each weight, instead of one per tensor;
    - ``weight_type``: ``"int8"`` (u8 x s8 products, onnxruntime's fast path) or ``"uint8"`` (u8 x u8,
      which x86 computes by widening to int16: exact too, and slower);
    - ``keep_float``: node names or operator types (``"Gemm"``, ``"MatMul"``) left in float32;
    - ``target``: the preset it came from, recorded for the reader.
    """

    reduce_range: bool = True
    per_channel: bool = False
    weight_type: str = "int8"
    keep_float: tuple[str, ...] = ()
    target: str = "portable"

    def __post_init__(self) -> None:
        if self.weight_type not in WEIGHT_TYPES:
            raise UnsupportedError(f"int8 weight_type: expected one of {list(WEIGHT_TYPES)}, got {self.weight_type!r}")
        for flag in ("reduce_range", "per_channel"):
            if not isinstance(getattr(self, flag), bool):
                raise UnsupportedError(f"int8 {flag}: expected True or False, got {getattr(self, flag)!r}")
        if isinstance(self.keep_float, str) or not all(isinstance(k, str) and k for k in self.keep_float):
            raise UnsupportedError(f"int8 keep_float: expected node names or operator types, got {self.keep_float!r}")
        object.__setattr__(self, "keep_float", tuple(self.keep_float))

    @classmethod
    def for_target(cls, target: str, **overrides: Any) -> Int8Settings:
        """The preset for ``target`` (``portable``, ``vnni``, ``arm64``), with any field overridden."""
        if target not in INT8_TARGETS:
            raise UnsupportedError(f"int8 target {target!r}: expected one of {list(INT8_TARGETS)}")
        return replace(INT8_TARGETS[target], **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keep_float"] = list(self.keep_float)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Int8Settings:
        known = {"reduce_range", "per_channel", "weight_type", "keep_float", "target"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UnsupportedError(f"int8 settings: unknown fields {unknown}; expected some of {sorted(known)}")
        return cls(**{**d, "keep_float": tuple(d.get("keep_float", ()))})

    def describe(self) -> str:
        bits = "7-bit (reduce_range: exact on every CPU)" if self.reduce_range else \
            "8-bit (full range: exact only with VNNI or on ARM64; saturates on AVX2)"
        scale = "per channel" if self.per_channel else "per tensor"
        kept = f", {', '.join(self.keep_float)} kept in float32" if self.keep_float else ""
        return f"target {self.target}: {self.weight_type} weights, {bits}, {scale}{kept}"


INT8_TARGETS: dict[str, Int8Settings] = {
    # exact integer products on every CPU class: what a bundle that may run anywhere needs
    "portable": Int8Settings(reduce_range=True, target="portable"),
    # the full 8-bit range, for a device known to accumulate u8 x s8 in int32
    "vnni": Int8Settings(reduce_range=False, target="vnni"),
    "arm64": Int8Settings(reduce_range=False, target="arm64"),
}


def _nodes(g: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for n in g.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _nodes(sub)


def keep_float_nodes(model: onnx.ModelProto, keep: tuple[str, ...]) -> list[str]:
    """The names of the nodes ``keep`` names (by node name or operator type), for quantize_dynamic's exclusion list.

    A name that matches nothing is refused, naming a few of the graph's own: a typo must not quietly quantise
    the node the user meant to keep.
    """
    nodes = list(_nodes(model.graph))
    out: list[str] = []
    for k in keep:
        hits = [n.name for n in nodes if n.name == k or n.op_type == k]
        if not hits:
            types = sorted({n.op_type for n in nodes})
            raise UnsupportedError(f"int8 keep_float {k!r}: no node of that name or operator type; the graph has "
                                   f"operators {types}")
        if any(not h for h in hits):
            raise UnsupportedError(f"int8 keep_float {k!r}: matches nodes without names, which onnxruntime's "
                                   "quantiser cannot exclude")
        out.extend(h for h in hits if h not in out)
    return out
