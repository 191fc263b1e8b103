"""The torch side of :class:`edge_rnn.spec.RecurrentSpec`: read it off a module, and back.

:func:`recurrent_spec` reads the spec of a ``torch.nn`` (or
``edge_rnn.reference``) RNN/LSTM/GRU layer or cell, None for anything else; :func:`layer_weights` pulls one
layer's weights out as numpy, in PyTorch's gate order. :func:`build_module` goes the other way, from the
``source`` entry of a model's contract back to a torch module.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch

from edge_rnn import reference
from edge_rnn.errors import UnsupportedError
from edge_rnn.spec import GATES_PER_KIND, RecurrentSpec

__all__ = ["RecurrentSpec", "recurrent_spec", "spec_from_module", "layer_weights", "build_module", "GATES_PER_KIND"]


class _Exportable(NamedTuple):
    """One exportable class: its kind, whether it is a single-step cell, and the name the contract records."""

    kind: str
    cell: bool
    package: str  # "torch.nn" or "edge_rnn.reference": the ``module`` entry is ``{package}.{class name}``


_TORCH, _REFERENCE = "torch.nn", "edge_rnn.reference"
# The classes a bare layer or cell export starts from, each reference class and its torch.nn twin (reference.KINDS
# and reference.TWINS: one table of which class is which); a subclass counts as its base (unless it overrides
# forward).
_CLASSES: dict[type, _Exportable] = {
    **{reference.TWINS[cls]: _Exportable(kind, cell, _TORCH) for cls, (kind, cell) in reference.KINDS.items()},
    **{cls: _Exportable(kind, cell, _REFERENCE) for cls, (kind, cell) in reference.KINDS.items()},
}


def _exportable_class(module: torch.nn.Module) -> _Exportable | None:
    """The row of ``module``'s class (or the class it derives from) in :data:`_CLASSES`; None if it has none."""
    for klass in type(module).__mro__:
        row = _CLASSES.get(klass)
        if row is None:
            continue
        if type(module).forward is not klass.forward:
            raise UnsupportedError(
                f"{type(module).__qualname__} subclasses {klass.__module__}.{klass.__name__} and overrides "
                "forward: edge-rnn would export the plain layer and ignore that forward. Keep the layer as a "
                "submodule of your own module instead, and export that whole model")
        return row
    return None


def recurrent_spec(module: torch.nn.Module) -> RecurrentSpec | None:
    """The spec of a bare torch.nn or edge_rnn.reference RNN/LSTM/GRU layer or cell; None for anything else.

    This is the one answer to "bare layer or whole model?": :func:`edge_rnn.export` and
    :func:`edge_rnn.verify` take the bare-layer path exactly when it is not None. A layer subclass that
    overrides ``forward`` is neither, and raises :class:`~edge_rnn.errors.UnsupportedError`.
    """
    row = _exportable_class(module)
    if row is None:
        return None
    name = f"{row.package}.{type(module).__name__}"
    nonlinearity = getattr(module, "nonlinearity", "tanh")
    common = dict(kind=row.kind, input_size=module.input_size, hidden_size=module.hidden_size,
                  bias=bool(module.bias), nonlinearity=nonlinearity, module=name)
    if row.cell:
        return RecurrentSpec(**common, cell=True)
    return RecurrentSpec(**common, num_layers=module.num_layers, bidirectional=bool(module.bidirectional),
                         batch_first=bool(module.batch_first), proj_size=int(getattr(module, "proj_size", 0) or 0))


def spec_from_module(module: torch.nn.Module) -> RecurrentSpec:
    """Read the spec of a torch.nn or edge_rnn.reference RNN/LSTM/GRU layer or cell."""
    spec = recurrent_spec(module)
    if spec is None:
        raise UnsupportedError(
            f"expected a torch.nn or edge_rnn.reference RNN, LSTM, GRU, RNNCell, LSTMCell or GRUCell, "
            f"got {type(module).__module__}.{type(module).__qualname__}"
        )
    return spec


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
