"""What is being exported, as data: a frozen spec read off a torch module.

:class:`RecurrentSpec` holds the hyper-parameters of a ``torch.nn`` (or
``edge_rnn.reference``) RNN/LSTM/GRU layer or cell; :func:`spec_from_module`
reads it and :func:`layer_weights` pulls one layer's weights out as numpy, in
PyTorch's gate order. :func:`build_module` goes the other way, from the
``source`` entry of a model's contract back to a torch module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from edge_rnn.errors import UnsupportedError

__all__ = ["RecurrentSpec", "spec_from_module", "layer_weights", "build_module", "GATES_PER_KIND"]

GATES_PER_KIND = {"rnn": 1, "lstm": 4, "gru": 3}

# class name -> (kind, is_cell). torch.nn and edge_rnn.reference share names.
_CLASSES = {
    "RNN": ("rnn", False),
    "LSTM": ("lstm", False),
    "GRU": ("gru", False),
    "RNNCell": ("rnn", True),
    "LSTMCell": ("lstm", True),
    "GRUCell": ("gru", True),
}
_PACKAGES = ("torch.nn", "edge_rnn.reference")


@dataclass(frozen=True)
class RecurrentSpec:
    """Hyper-parameters of one recurrent layer stack or cell.

    ``hidden_out`` is the size of ``h`` (``proj_size`` when it is set);
    ``c`` of an LSTM always has ``hidden_size``.
    """

    kind: str  # "rnn" | "lstm" | "gru"
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0
    nonlinearity: str = "tanh"
    cell: bool = False
    module: str = ""  # the class exported, e.g. "torch.nn.LSTM"

    def __post_init__(self) -> None:
        if self.kind not in GATES_PER_KIND:
            raise UnsupportedError(f"expected arch in {sorted(GATES_PER_KIND)}, got {self.kind!r}")
        if self.nonlinearity not in ("tanh", "relu") or (self.kind != "rnn" and self.nonlinearity != "tanh"):
            raise UnsupportedError(
                f"{self.kind}: expected nonlinearity 'tanh'{' or relu' if self.kind == 'rnn' else ''}, "
                f"got {self.nonlinearity!r}"
            )
        for name in ("input_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise UnsupportedError(f"expected {name} >= 1, got {getattr(self, name)}")
        if self.proj_size and (self.kind != "lstm" or not 0 < self.proj_size < self.hidden_size):
            raise UnsupportedError(
                f"expected proj_size only on an LSTM and 0 < proj_size < hidden_size ({self.hidden_size}), "
                f"got proj_size={self.proj_size} on {self.kind}"
            )
        if self.cell and (self.num_layers != 1 or self.bidirectional or self.batch_first or self.proj_size):
            raise UnsupportedError("a cell has one layer, one direction, no batch_first and no proj_size")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def hidden_out(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def gates(self) -> int:
        return GATES_PER_KIND[self.kind]

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.hidden_out * self.num_directions

    def to_source(self) -> dict[str, Any]:
        """The ``source`` entry of the contract."""
        return asdict(self)

    @classmethod
    def from_source(cls, source: Mapping[str, Any]) -> "RecurrentSpec":
        fields = cls.__dataclass_fields__
        unknown = sorted(set(source) - set(fields) - {"seed"})
        if unknown or "kind" not in source:
            raise UnsupportedError(
                f"expected the contract's source to describe an RNN/LSTM/GRU export, got keys {sorted(source)}"
            )
        return cls(**{k: v for k, v in source.items() if k in fields})


def _class_key(module: torch.nn.Module) -> tuple[str, bool] | None:
    for klass in type(module).__mro__:
        if klass.__name__ in _CLASSES and klass.__module__.startswith(_PACKAGES):
            return _CLASSES[klass.__name__]
    return None


def spec_from_module(module: torch.nn.Module) -> RecurrentSpec:
    """Read the spec of a torch.nn or edge_rnn.reference RNN/LSTM/GRU layer or cell."""
    key = _class_key(module)
    if key is None:
        raise UnsupportedError(
            f"expected a torch.nn or edge_rnn.reference RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, "
            f"got {type(module).__module__}.{type(module).__qualname__}"
        )
    kind, cell = key
    nonlinearity = getattr(module, "nonlinearity", "tanh")
    where = type(module).__module__.split(".")[0]
    qual = "torch.nn" if where == "torch" else "edge_rnn.reference"
    if cell:
        return RecurrentSpec(
            kind=kind,
            input_size=module.input_size,
            hidden_size=module.hidden_size,
            bias=bool(module.bias),
            nonlinearity=nonlinearity,
            cell=True,
            module=f"{qual}.{type(module).__name__}",
        )
    return RecurrentSpec(
        kind=kind,
        input_size=module.input_size,
        hidden_size=module.hidden_size,
        num_layers=module.num_layers,
        bidirectional=bool(module.bidirectional),
        batch_first=bool(module.batch_first),
        bias=bool(module.bias),
        proj_size=int(getattr(module, "proj_size", 0) or 0),
        nonlinearity=nonlinearity,
        module=f"{qual}.{type(module).__name__}",
    )


def layer_weights(module: torch.nn.Module, spec: RecurrentSpec, layer: int, reverse: bool) -> dict[str, np.ndarray]:
    """One layer-direction's weights as float32 numpy, in PyTorch's gate order.

    Keys: ``w_ih`` (G*H, In), ``w_hh`` (G*H, H_out), ``b_ih``/``b_hh`` (G*H) or
    zeros when ``bias=False``, and ``w_hr`` (P, H) for a projected LSTM.
    """
    suffix = "" if spec.cell else f"_l{layer}" + ("_reverse" if reverse else "")

    def get(name: str) -> np.ndarray:
        return getattr(module, name + suffix).detach().to("cpu", torch.float32).numpy().copy()

    gh = spec.gates * spec.hidden_size
    out = {"w_ih": get("weight_ih"), "w_hh": get("weight_hh")}
    if spec.bias:
        out["b_ih"], out["b_hh"] = get("bias_ih"), get("bias_hh")
    else:
        out["b_ih"] = out["b_hh"] = np.zeros(gh, np.float32)
    if spec.proj_size:
        out["w_hr"] = get("weight_hr")
    return out


def build_module(spec: RecurrentSpec) -> torch.nn.Module:
    """A fresh torch.nn module with ``spec``'s hyper-parameters (weights from torch's init)."""
    if spec.cell:
        cls = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[spec.kind]
        kwargs: dict[str, Any] = {"bias": spec.bias}
        if spec.kind == "rnn":
            kwargs["nonlinearity"] = spec.nonlinearity
        return cls(spec.input_size, spec.hidden_size, **kwargs)
    cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[spec.kind]
    kwargs = dict(
        num_layers=spec.num_layers,
        bias=spec.bias,
        batch_first=spec.batch_first,
        bidirectional=spec.bidirectional,
    )
    if spec.kind == "rnn":
        kwargs["nonlinearity"] = spec.nonlinearity
    if spec.kind == "lstm":
        kwargs["proj_size"] = spec.proj_size
    return cls(spec.input_size, spec.hidden_size, **kwargs)
