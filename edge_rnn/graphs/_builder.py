"""A small ONNX graph builder: unique names, initializers, subgraphs."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["GraphBuilder", "FLOAT"]

FLOAT = TensorProto.FLOAT


class GraphBuilder:
    """Collects nodes and initializers; subgraphs share the root's names and constants.

    Constants always live in the root graph (a Scan body refers to them from
    the outer scope), so every weight of the model is a top-level initializer
    that tools such as quantizers and ``inspect`` can see.
    """

    def __init__(self, name: str, *, parent: "GraphBuilder | None" = None, prefix: str = ""):
        self.name = name
        self.prefix = parent.prefix if parent else prefix  # keeps names apart when spliced into another graph
        self.root: GraphBuilder = parent.root if parent else self
        self._counter: Iterator[int] = parent._counter if parent else itertools.count()
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []

    def fresh(self, hint: str) -> str:
        return f"{self.prefix}{hint}_{next(self._counter)}"

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        # np.array, not np.ascontiguousarray, which turns a 0-d index into 1-d
        self.root.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def ints(self, values: list[int], hint: str = "ints") -> str:
        return self.const(np.asarray(values, np.int64), hint)

    def op(self, op_type: str, inputs: list[str], *, outputs: list[str] | int = 1, hint: str | None = None,
           **attrs: Any) -> list[str]:
        """Add a node; returns its output names (fresh unless given)."""
        if isinstance(outputs, int):
            outputs = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(op_type), **attrs))
        return outputs

    def op1(self, op_type: str, inputs: list[str], *, output: str | None = None, hint: str | None = None,
            **attrs: Any) -> str:
        return self.op(op_type, inputs, outputs=[output] if output else 1, hint=hint, **attrs)[0]

    def add_input(self, name: str, shape: list[int | str | None], elem_type: int = FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def add_output(self, name: str, shape: list[int | str | None] | None, elem_type: int = FLOAT) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def graph(self) -> onnx.GraphProto:
        return helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
