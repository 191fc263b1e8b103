"""Multi-layer, bidirectional recurrence shared by the reference RNN, LSTM and GRU.

A layer class only states its gate count, its recurrent state (``h`` or
``(h, c)``) and which step function advances it by one time step. Everything
else lives here once: parameter registration in torch.nn's order and names,
torch's initialisation, input and state checks, the time loop, the reverse
direction, inter-layer dropout and the record of gate values.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from edge_rnn._numbers import is_number
from edge_rnn.errors import ShapeError, UnsupportedError
from edge_rnn.reference._checks import check_flag, check_input, check_size, reset_uniform, states_with_batch

State = tuple[Tensor, ...]
Gates = dict[str, Tensor]
GateRecord = dict[str, Gates]

_STEMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")


class LayerWeights(NamedTuple):
    """One layer-direction's parameters, named as the step functions take them."""

    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None


def _checked_proj_size(owner: str, proj_size: Any, hidden_size: int) -> int:
    """``proj_size`` if it is an int in ``0 .. hidden_size - 1`` (0: no projection)."""
    check_size(owner, "proj_size", proj_size, minimum=0)
    if proj_size >= hidden_size:
        raise UnsupportedError(f"{owner}: expected proj_size < hidden_size ({hidden_size}), got {proj_size}")
    return proj_size


def _checked_dropout(owner: str, dropout: Any, num_layers: int) -> float:
    """``dropout`` as a float in ``[0, 1]``; warns, as torch.nn does, when one layer leaves nothing to drop between."""
    if not is_number(dropout, 0, 1):
        raise UnsupportedError(f"{owner}: expected dropout to be a number in [0, 1], got {dropout!r}")
    if dropout > 0 and num_layers == 1:
        warnings.warn(
            "dropout option adds dropout after all but last recurrent layer, so non-zero dropout "
            f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
            stacklevel=4,  # the caller of RNN/LSTM/GRU(...): this, RecurrentBase.__init__, the layer's __init__
        )
    return float(dropout)


def direction_key(layer: int, reverse: bool) -> str:
    """``"l0"``, ``"l0_reverse"``, ...: the parameter-name suffix, without its ``_``."""
    return f"l{layer}" + ("_reverse" if reverse else "")


class RecurrentBase(nn.Module):
    """torch.nn.RNNBase's parameters and call convention, with the recurrence written out.

    Subclasses set ``gate_count`` and implement :meth:`_step`; an LSTM also
    overrides the three state hooks (:meth:`_state_specs`, :meth:`_split_hx`,
    :meth:`_join_states`).
    """

    gate_count: ClassVar[int]

    def __init__(
        self, mode: str, input_size: int, hidden_size: int, num_layers: int, bias: bool, batch_first: bool,
        dropout: float, bidirectional: bool, proj_size: int, device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        # No defaults here: the public classes state them, as torch.nn's signatures do.
        super().__init__()
        owner = type(self).__name__
        self.mode = mode
        self.input_size = check_size(owner, "input_size", input_size)
        self.hidden_size = check_size(owner, "hidden_size", hidden_size)
        self.num_layers = check_size(owner, "num_layers", num_layers)
        self.bias = check_flag(owner, "bias", bias)
        self.batch_first = check_flag(owner, "batch_first", batch_first)
        self.bidirectional = check_flag(owner, "bidirectional", bidirectional)
        self.proj_size = _checked_proj_size(owner, proj_size, hidden_size)
        self.dropout = _checked_dropout(owner, dropout, num_layers)
        self._all_weight_names = self._register_weights({"device": device, "dtype": dtype})
        self.reset_parameters()

    def _register_weights(self, factory: dict[str, Any]) -> list[list[str]]:
        """Register every layer-direction's parameters, empty; return their names per layer-direction.

        The order is torch.nn's (layer, direction, then w_ih, w_hh, b_ih, b_hh,
        w_hr) so state_dict keys and the init RNG stream match.
        """
        names = []
        for layer in range(self.num_layers):
            for reverse in (False, True)[: self.num_directions]:
                suffix = "_" + direction_key(layer, reverse)
                shapes = self._weight_shapes(layer)
                for stem, shape in shapes.items():
                    self.register_parameter(stem + suffix, nn.Parameter(torch.empty(shape, **factory)))
                names.append([stem + suffix for stem in shapes])
        return names

    def _weight_shapes(self, layer: int) -> dict[str, tuple[int, ...]]:
        """The shape of each parameter of ``layer`` (either direction), by stem, in registration order."""
        rows, h_out = self.gate_count * self.hidden_size, self.proj_size or self.hidden_size
        layer_input = self.input_size if layer == 0 else h_out * self.num_directions
        shapes: dict[str, tuple[int, ...]] = {"weight_ih": (rows, layer_input), "weight_hh": (rows, h_out)}
        if self.bias:
            shapes.update(bias_ih=(rows,), bias_hh=(rows,))
        if self.proj_size:
            shapes["weight_hr"] = (self.proj_size, self.hidden_size)
        return shapes

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters grouped per layer-direction, in torch.nn's order."""
        return [[getattr(self, name) for name in names] for names in self._all_weight_names]

    def flatten_parameters(self) -> None:
        """Do nothing: there is no fused weight buffer to compact (kept so torch.nn code runs unchanged)."""

    def reset_parameters(self) -> None:
        """Draw every parameter from ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``, like torch.nn."""
        reset_uniform(self, self.hidden_size)

    def extra_repr(self) -> str:
        # torch.nn's format, nonlinearity omitted as torch.nn.RNN does; mode says it.
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:
                text += f", {name}={getattr(self, name)}"
        return text

    def layer_weights(self, layer: int, reverse: bool) -> LayerWeights:
        """The parameters of ``layer`` in one direction; absent ones (no bias, no projection) are ``None``."""
        suffix = "_" + direction_key(layer, reverse)
        return LayerWeights(*(getattr(self, stem + suffix, None) for stem in _STEMS))

    # -- what differs between RNN/GRU and LSTM ---------------------------------------

    def _state_specs(self) -> tuple[tuple[str, int], ...]:
        """``(name, feature size)`` of each state tensor, in ``hx`` order."""
        return (("h_0", self.hidden_size),)

    def _split_hx(self, hx: Any) -> tuple[Any, ...]:
        """The user's ``hx`` as a tuple matching :meth:`_state_specs`."""
        return (hx,)

    def _join_states(self, states: State) -> Any:
        """The final states in the user's ``h_n`` convention."""
        return states[0]

    def _step(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[State, Gates]:
        """Advance one layer-direction by one step: ``x`` ``(B, I)``, ``state[0]`` is the output ``h``."""
        raise NotImplementedError

    # -- the recurrence ----------------------------------------------------------------

    def forward(self, input: Tensor, hx: Any = None, *, return_gates: bool = False) -> Any:
        x, batched = self._time_major(input)
        states = self._initial_states(hx, x, batched)
        output, finals, record = self._run_layers(x, states, keep_gates=return_gates)
        # finals is ordered (layer 0 fwd, layer 0 rev, layer 1 fwd, ...), torch's h_n layout.
        h_n = tuple(torch.stack([f[k] for f in finals]) for k in range(len(states)))
        if not batched:
            h_n = tuple(s.squeeze(1) for s in h_n)
        result = (self._user_layout(output, batched), self._join_states(h_n))
        if not return_gates:
            return result
        return result, {key: {k: self._user_layout(v, batched) for k, v in g.items()} for key, g in record.items()}

    def _time_major(self, input: Any) -> tuple[Tensor, bool]:
        """The checked input as ``(T, B, I)``, the layout everything runs in; and whether it was batched."""
        owner = type(self).__name__
        if isinstance(input, PackedSequence):
            raise UnsupportedError(f"{owner}: expected a padded Tensor input, got a PackedSequence")
        check_input(owner, input, ranks=(2, 3), size=self.input_size, dtype=self.weight_ih_l0.dtype)
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1)
        if batched and self.batch_first:
            x = x.transpose(0, 1)
        if x.size(0) == 0:
            raise ShapeError(f"{owner}: expected input with at least one time step, got 0")
        return x, batched

    def _initial_states(self, hx: Any, x: Tensor, batched: bool) -> State:
        """Checked initial states, each ``(num_layers * num_directions, B, size)``; zeros for ``None``."""
        specs = self._state_specs()
        given = (None,) * len(specs) if hx is None else self._split_hx(hx)
        named = [(name, size, state) for (name, size), state in zip(specs, given)]
        leading = (self.num_layers * self.num_directions,)
        return states_with_batch(type(self).__name__, named, like=x, batch=x.size(1), leading=leading, batched=batched)

    def _run_layers(self, x: Tensor, states: State, *, keep_gates: bool) -> tuple[Tensor, list[State], GateRecord]:
        """Every layer over ``x`` ``(T, B, I)``: the last layer's output, each layer-direction's final state
        (in h_n order) and, with ``keep_gates``, its gates ``(T, B, H)`` by :func:`direction_key`."""
        finals: list[State] = []
        record: GateRecord = {}
        for layer in range(self.num_layers):
            outputs = []
            for reverse in (False, True)[: self.num_directions]:
                index = layer * self.num_directions + int(reverse)
                output, final, gates = self._run_direction(
                    x, tuple(s[index] for s in states), self.layer_weights(layer, reverse),
                    reverse=reverse, keep_gates=keep_gates,
                )
                outputs.append(output)
                finals.append(final)
                if keep_gates:
                    record[direction_key(layer, reverse)] = gates
            x = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, p=self.dropout, training=True)
        return x, finals, record

    def _run_direction(
        self, x: Tensor, state: State, weights: LayerWeights, *, reverse: bool, keep_gates: bool
    ) -> tuple[Tensor, State, Gates]:
        """Run one layer-direction over ``x`` ``(T, B, I)``.

        The reverse direction reads ``x[T-1], ..., x[0]`` but stores step ``t``'s
        output and gates at index ``t``, so both directions are aligned in time.
        Returns ``(output (T, B, H_out), final state, gates {name: (T, B, H)})``.
        """
        steps = x.size(0)
        outputs: list[Tensor] = [x] * steps  # placeholders, every slot is overwritten
        per_step: list[Gates] = [{}] * steps
        for t in reversed(range(steps)) if reverse else range(steps):
            state, gates = self._step(x[t], state, weights)
            outputs[t] = state[0]
            if keep_gates:
                per_step[t] = gates
        stacked = {k: torch.stack([g[k] for g in per_step]) for k in per_step[0]} if keep_gates else {}
        return torch.stack(outputs), state, stacked

    def _user_layout(self, t: Tensor, batched: bool) -> Tensor:
        """``(T, B, F)`` back to the caller's layout: ``(T, F)`` unbatched, ``(B, T, F)`` if batch_first."""
        if not batched:
            return t.squeeze(1)
        return t.transpose(0, 1) if self.batch_first else t
