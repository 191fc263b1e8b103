"""The torch side of :class:`edge_rnn.spec.RecurrentSpec`: read it off a module, and back.

:func:`spec_from_module` reads the spec of a ``torch.nn`` (or
``edge_rnn.reference``) RNN/LSTM/GRU layer or cell, and :func:`layer_weights` pulls one layer's weights out as numpy, in
PyTorch's gate order. :func:`build_module` goes the other way, from the
``source`` entry of a model's contract back to a torch module.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edge_rnn.errors import UnsupportedError
from edge_rnn.spec import GATES_PER_KIND, RecurrentSpec

__all__ = ["RecurrentSpec", "is_recurrent_module", "spec_from_module", "layer_weights", "build_module",
           "GATES_PER_KIND"]


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


def _class_key(module: torch.nn.Module) -> tuple[str, bool] | None:
    for klass in type(module).__mro__:
        if klass.__name__ in _CLASSES and klass.__module__.startswith(_PACKAGES):
            if type(module).forward is not klass.forward:
                raise UnsupportedError(
                    f"{type(module).__qualname__} subclasses {klass.__module__}.{klass.__name__} and overrides "
                    "forward: edge-rnn would export the plain layer and ignore that forward. Keep the layer as a "
                    "submodule of your own module instead, and export that whole model")
            return _CLASSES[klass.__name__]
    return None


def is_recurrent_module(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a bare torch.nn or edge_rnn.reference RNN/LSTM/GRU layer or cell."""
    return _class_key(module) is not None


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
