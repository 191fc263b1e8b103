"""Gate activations of a PyTorch recurrent model, and what they say: saturation and memory horizons (torch).

:func:`gate_trace` runs a model with every RNN/LSTM/GRU layer swapped for its
:mod:`edge_rnn.reference` twin, which records its gates; :func:`gate_stats` and
:func:`horizons` read that record and need only numpy.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from edge_rnn.diagnostics._types import KEEP_GATE, SATURATION, SIGMOID_GATES, GateStats, Horizon
from edge_rnn.errors import ShapeError, UnsupportedError
from edge_rnn.reference import GRU, KINDS, LSTM, RNN, TWINS

__all__ = ["gate_trace", "gate_stats", "horizons", "recurrent_layers", "reference_twin", "Trace"]

# key -> (kind, {gate: (T, B, H) array})
Trace = dict[str, tuple[str, dict[str, np.ndarray]]]

# (reference layer, its torch.nn twin, kind), from the reference package's own table
_KINDS: tuple[tuple[type[torch.nn.Module], type[torch.nn.Module], str], ...] = tuple(
    (cls, TWINS[cls], kind) for cls, (kind, cell) in KINDS.items() if not cell)
_LOOKED_FOR = "a torch.nn or edge_rnn.reference RNN, LSTM or GRU layer"


def _kind_of(module: torch.nn.Module) -> tuple[str, type[torch.nn.Module]] | None:
    """``(kind, the base class)`` of a recurrent layer; ``None`` for anything else."""
    for ref, nn_cls, kind in _KINDS:
        for base in (ref, nn_cls):
            if isinstance(module, base):
                if type(module).forward is not base.forward:
                    raise UnsupportedError(
                        f"{type(module).__qualname__}: expected a plain {base.__module__}.{base.__name__} (its "
                        "recorded twin would ignore an overridden forward), got a subclass that overrides forward")
                return kind, base
    return None


def recurrent_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every RNN/LSTM/GRU layer in ``module`` as ``(dotted path, layer)``, in ``named_modules`` order.

    ``module`` itself counts: its path is then its class name lower-cased (``"lstm"``). Raises
    :class:`UnsupportedError` when there is none.
    """
    if _kind_of(module) is not None:
        return [(type(module).__name__.lower(), module)]
    found = [(name, sub) for name, sub in module.named_modules() if name and _kind_of(sub) is not None]
    if not found:
        raise UnsupportedError(f"{type(module).__name__}: expected {_LOOKED_FOR} in the module, found none")
    return found


def reference_twin(layer: torch.nn.Module) -> tuple[str, torch.nn.Module]:
    """``(kind, a reference layer)`` computing what ``layer`` computes, with a copy of its weights.

    A reference layer is deep-copied; a torch.nn one is rebuilt from its constructor arguments and state_dict.
    """
    found = _kind_of(layer)
    if found is None:
        raise UnsupportedError(f"expected {_LOOKED_FOR}, got {type(layer).__module__}.{type(layer).__qualname__}")
    kind, base = found
    if base in (RNN, LSTM, GRU):
        return kind, copy.deepcopy(layer)
    param = next(layer.parameters())
    kwargs: dict[str, Any] = dict(num_layers=layer.num_layers, bias=layer.bias, batch_first=layer.batch_first,
                                  dropout=float(layer.dropout), bidirectional=layer.bidirectional,
                                  device=param.device, dtype=param.dtype)
    if kind == "rnn":
        kwargs["nonlinearity"] = layer.nonlinearity
    if getattr(layer, "proj_size", 0):
        kwargs["proj_size"] = layer.proj_size
    twin = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[kind](layer.input_size, layer.hidden_size, **kwargs)
    try:
        twin.load_state_dict(layer.state_dict())
    except RuntimeError as e:
        raise UnsupportedError(f"{type(layer).__name__}: expected torch.nn's parameter names and shapes, got a "
                               f"state_dict the reference twin cannot load ({str(e).splitlines()[0]})") from None
    return kind, twin.train(layer.training)


class _Recorder(torch.nn.Module):
    """Stands in for one recurrent layer: runs its reference twin with ``return_gates=True``, keeps the gates
    time-first, ``(T, B, H)`` numpy, and returns the usual result. Other attributes are the twin's."""

    def __init__(self, kind: str, twin: torch.nn.Module) -> None:
        super().__init__()
        self.kind, self.twin = kind, twin
        self.calls: list[dict[str, dict[str, np.ndarray]]] = []

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            twin = self.__dict__.get("_modules", {}).get("twin")
            if twin is None:
                raise
            return getattr(twin, name)

    def forward(self, input: torch.Tensor, hx: Any = None) -> Any:
        result, gates = self.twin(input, hx, return_gates=True)
        self.calls.append({key: {g: self._time_first(v, input.dim()) for g, v in layer.items()}
                           for key, layer in gates.items()})
        return result

    def _time_first(self, gate: torch.Tensor, rank: int) -> np.ndarray:
        if rank == 2:  # unbatched (T, H)
            gate = gate.unsqueeze(1)
        elif self.twin.batch_first:
            gate = gate.transpose(0, 1)
        if self.kind == "rnn":  # the twin records the pre-activation; the unit's value is what the stats read
            gate = torch.relu(gate) if self.twin.nonlinearity == "relu" else torch.tanh(gate)
        return gate.detach().cpu().numpy()


def _collect(path: str, recorder: _Recorder, trace: Trace) -> None:
    """Add one recorder's calls to ``trace``; several calls of one layer are joined along the batch axis."""
    for key in recorder.calls[0] if recorder.calls else ():
        per_call = [call[key] for call in recorder.calls]
        steps = {gates[next(iter(gates))].shape[0] for gates in per_call}
        if len(steps) > 1:
            raise UnsupportedError(f"{path}: expected every call of the layer to have the same number of steps "
                                   f"(calls are joined along the batch axis), got {sorted(steps)}")
        trace[f"{path}.{key}"] = (recorder.kind, {g: np.concatenate([c[g] for c in per_call], axis=1)
                                                  for g in per_call[0]})


def gate_trace(module: torch.nn.Module, x: torch.Tensor, hx: Any = None) -> Trace:
    """Every gate of every recurrent layer of ``module`` while it runs on ``x`` (under ``torch.no_grad``).

    ``module``: a torch.nn or edge_rnn.reference RNN/LSTM/GRU layer, or any model containing such layers (run
    on a deep copy whose layers are replaced by recording reference twins: the weights are never changed).
    ``x`` is what ``module`` takes, in its own layout; ``hx`` is passed on as the second argument if given.

    Returns ``{f"{path}.l{layer}" (+ "_reverse"): (kind, {gate: array})}``: ``path`` is the layer's dotted name
    in the model (its class name lower-cased when ``module`` is the layer), ``kind`` "lstm" | "gru" | "rnn",
    and each array is ``(T, B, H)``, time first whatever ``batch_first`` says (an unbatched input gives
    ``B = 1``), in the module's dtype. Both directions are aligned to input time: index ``t`` holds the gates
    that produced the output at ``t``. Gates: LSTM ``i f g o``, GRU ``r z n`` (after their activations), RNN
    ``a``: the unit's value ``tanh(a)`` (or ``relu(a)``), not the pre-activation the reference layer records.
    """
    layers = recurrent_layers(module)
    is_layer = layers[0][1] is module
    model = module if is_layer else copy.deepcopy(module)
    recorders: dict[int, tuple[str, _Recorder]] = {}
    for path, layer in layers if is_layer else recurrent_layers(model):
        recorders[id(layer)] = (path, _Recorder(*reference_twin(layer)))
    if is_layer:
        model = recorders[id(module)][1]
    else:
        for _, parent in list(model.named_modules(remove_duplicate=False)):
            for child_name, child in list(parent._modules.items()):  # every name, a shared layer's too
                if id(child) in recorders:
                    setattr(parent, child_name, recorders[id(child)][1])
    with torch.no_grad():
        model(x) if hx is None else model(x, hx)
    trace: Trace = {}
    for path, recorder in recorders.values():
        _collect(path, recorder, trace)
    return trace


def gate_stats(trace: Trace, eps: float = SATURATION) -> list[GateStats]:
    """Per layer key and gate, per unit (last axis), over every step and sequence: the mean value and the
    fractions near 0 and near 1 (sigmoid gates: ``v < eps``, ``v > 1 - eps``; tanh gates: ``|v| < eps``,
    ``|v| > 1 - eps``). Each array in the result is ``(H,)`` float64."""
    out = []
    for layer, (kind, gates) in trace.items():
        for gate, values in gates.items():
            v = np.asarray(values, np.float64).reshape(-1, values.shape[-1])
            a = v if gate in SIGMOID_GATES[kind] else np.abs(v)
            out.append(GateStats(layer, kind, gate, v.mean(axis=0), (a < eps).mean(axis=0),
                                 (a > 1 - eps).mean(axis=0)))
    return out


def _first_below(cum: np.ndarray) -> np.ndarray:
    """For one sequence: ``cum`` ``(T + 1, H)``, the running sum of log(gate) (``cum[0] = 0``, non-increasing),
    the horizon ``(T - 1, H)`` of each start t0 = 0..T-2: the first k >= 1 with ``cum[t0+k+1] - cum[t0+1] < -1``,
    or inf. A bisection run for every start and unit at once (the predicate is monotone in k)."""
    steps, units = cum.shape[0] - 1, cum.shape[1]
    t0 = np.arange(steps - 1)[:, None]
    base = cum[1:steps]  # cum[t0 + 1]
    lo = np.broadcast_to(t0 + 2, (steps - 1, units)).copy()  # j = t0 + k + 1, k = 1
    hi = np.full_like(lo, steps + 1)  # one past the last j: censored
    for _ in range(steps.bit_length() + 1):
        active = lo < hi
        mid = (lo + hi) // 2
        below = np.take_along_axis(cum, np.minimum(mid, steps), axis=0) - base < -1
        hi = np.where(active & below, mid, hi)
        lo = np.where(active & ~below, mid + 1, lo)
    return np.where(lo > steps, math.inf, (lo - t0 - 1).astype(np.float64))


def horizons(trace: Trace) -> list[Horizon]:
    """How many steps each unit remembers, for every layer with a keep gate (LSTM ``f``, GRU ``z``).

    For each unit, start step t0 (0..T-2) and sequence: the first k >= 1 with ``prod(gate[t0+1 .. t0+k]) < 1/e``,
    inf when the data ends first; the unit's ``steps`` is the median over starts and sequences, inf counting
    as larger than any number. A reverse direction reads time backwards, so its gates are flipped first.
    """
    out = []
    for layer, (kind, gates) in trace.items():
        gate = KEEP_GATE[kind]
        if gate is None:
            continue
        g = np.asarray(gates[gate], np.float64)
        if g.ndim != 3 or g.shape[0] < 2:
            raise ShapeError(f"horizons: expected {layer}'s {gate} as (T, B, H) with T >= 2, got {g.shape}")
        if layer.endswith("_reverse"):
            g = g[::-1]
        with np.errstate(divide="ignore"):
            # A step below log = -2 ends every product through it, so clipping there changes no horizon and
            # keeps the running sum finite (a gate of exactly 0 would give -inf).
            logs = np.clip(np.log(g), -2.0, 0.0)
        cum = np.concatenate([np.zeros((1, *g.shape[1:])), np.cumsum(logs, axis=0)])
        ks = np.concatenate([_first_below(cum[:, b]) for b in range(g.shape[1])])
        out.append(Horizon(layer, kind, gate, np.median(ks, axis=0)))
    return out
