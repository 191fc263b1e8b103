"""The int8 settings: what onnxruntime's quantisers are told, and why the default is what it is.

onnxruntime's dynamic int8 multiplies uint8 activations by 8-bit weights. How
the CPU does that decides whether the result is exact:

- x86-64 without VNNI (AVX2; AVX-512 without VNNI) multiplies u8 x s8 with
  ``vpmaddubsw``, which adds each pair of products in int16 and *saturates*:
  two products of 255 x 127 make 64,770, far past 32,767. The error that
  follows is not rounding: on the demo LSTM, GRU and RNN and the token model
  it was 4 to 9 times the int8 bound (``docs/deployment.md``).
- AVX-512 VNNI and AVX-VNNI (``vpdpbusd``) and ARM64 NEON and dot-product
  kernels accumulate in int32 and never saturate. u8 x u8 products are
  widened to int16 before they are multiplied, on x86 too: exact everywhere.

``reduce_range`` stores weights in 7 bits: a pair is then at most
2 x 255 x 64 = 32,640, so u8 x s8 is exact on AVX2 as well. ``DynamicQuantizeLSTM``
keeps int8 weights whatever ``weight_type`` says, so for an LSTM that is
what makes it exact. The other MatMuls take uint8 weights by default: under
qemu's emulation of an ARM64 CPU with SVE, onnxruntime's ``DynamicQuantizeMatMul``
with int8 weights gave wrong results (every odd output column) with any
setting, and with uint8 weights was exact; real SVE hardware was not at hand
to tell qemu's fault from onnxruntime's. So the default, ``target="portable"``, is 7-bit uint8 weights:
exact integer products on every CPU class measured, the same error on each
(to the float rounding of the rest of the graph). A user who knows the device
can take the full 8-bit range, a little more accurate there
(``target="vnni"``: int8 weights, onnxruntime's fastest path; ``"arm64"``:
uint8 weights, but an LSTM's stay int8) and wrong on an AVX2 CPU, which the
bundle's self-test then refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
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
    - ``weight_type``: ``"uint8"`` (u8 x u8 products, widened to int16: exact on every CPU) or ``"int8"``
      (u8 x s8, onnxruntime's fastest path on VNNI; the LSTM operator always takes int8);
    - ``keep_float``: node names or operator types (``"Gemm"``, ``"MatMul"``) left in float32;
    - ``target``: the preset it came from, recorded for the reader.
    """

    reduce_range: bool = True
    per_channel: bool = False
    weight_type: str = "uint8"
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
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UnsupportedError(f"int8 settings: unknown fields {unknown}; expected some of {sorted(known)}")
        return cls(**{**d, "keep_float": tuple(d.get("keep_float", ()))})

    def describe(self) -> str:
        if self.reduce_range:
            bits = "7-bit (reduce_range: exact on every CPU)"
        elif self.weight_type == "uint8":
            bits = "8-bit (full range: the MatMuls exact everywhere, an LSTM's int8 weights saturate on AVX2)"
        else:
            bits = "8-bit (full range: exact only with VNNI or on ARM64; saturates on AVX2)"
        scale = "per channel" if self.per_channel else "per tensor"
        kept = f", {', '.join(self.keep_float)} kept in float32" if self.keep_float else ""
        return f"target {self.target}: {self.weight_type} weights, {bits}, {scale}{kept}"


INT8_TARGETS: dict[str, Int8Settings] = {
    # exact integer products on every CPU class measured: what a bundle that may run anywhere needs
    "portable": Int8Settings(reduce_range=True, weight_type="uint8", target="portable"),
    # the full 8-bit range, for a device known to accumulate u8 x s8 in int32 (VNNI), or to be ARM64
    "vnni": Int8Settings(reduce_range=False, weight_type="int8", target="vnni"),
    "arm64": Int8Settings(reduce_range=False, weight_type="uint8", target="arm64"),
}


def keep_float_nodes(model: onnx.ModelProto, keep: tuple[str, ...]) -> list[str]:
    """The names of the nodes of ``model`` that ``keep`` names (by node name or operator type), for the quantiser's
    exclusion list. An entry that matches nothing is refused, naming the graph's operators: a typo must not quietly
    quantise the node the user meant to keep."""
    from edge_rnn.deploy._decompose import all_nodes

    nodes = list(all_nodes(model.graph))
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
