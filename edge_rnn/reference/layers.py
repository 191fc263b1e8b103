"""Reference multi-layer :class:`RNN`, :class:`LSTM` and :class:`GRU`.

Drop-in equivalents of the torch.nn layers (same signatures, attributes,
parameter names, shapes and registration order), with the recurrence written
out in Python over :func:`rnn_step`, :func:`lstm_step` and :func:`gru_step`.
The shared machinery is in :mod:`edge_rnn.reference._layer`. What the three
have in common is written here once; each class gives its equations, its own
arguments, its states, its gates and its parameters' shapes.

Arguments every layer takes, with torch.nn's defaults:

- **input_size**: the number of expected features in the input ``x``.
- **hidden_size**: the number of features in the hidden state ``h`` (an LSTM's cell state ``c``).
- **num_layers**: the number of stacked recurrent layers; layer ``k > 0`` reads the previous
  layer's output, with dropout in training mode if ``dropout > 0``. Default: 1.
- **bias**: if ``False``, the layers use no ``b_ih`` / ``b_hh``. Default: ``True``.
- **batch_first**: if ``True``, input and output are ``(batch, seq, feature)``;
  ``h_0`` / ``h_n`` are not affected. Default: ``False``.
- **dropout**: dropout probability on the outputs of every layer but the last,
  in training mode only. Default: 0.
- **bidirectional**: if ``True``, a second direction reads the sequence from its end. Default: ``False``.
- **device**, **dtype**: where the parameters are created, and their dtype.

Parameters are initialised, and errors raised, as the :mod:`edge_rnn.reference` docstring says.

Common call convention (``D = 2`` if bidirectional else ``1``, ``L = num_layers``,
``H_out = proj_size`` if it is set, else ``hidden_size``):

- **input**: ``(T, B, input_size)``, ``(B, T, input_size)`` with ``batch_first=True``,
  or unbatched ``(T, input_size)``.
- **h_0**: ``(D * L, B, H_out)`` or unbatched ``(D * L, H_out)``; zeros if omitted.
  An LSTM's **c_0** is ``(D * L, B, hidden_size)``.
- **output**: ``(T, B, D * H_out)`` (``(B, T, ...)`` with batch_first, ``(T, ...)``
  unbatched): the last layer's ``h_t`` for every ``t``, forward and reverse
  concatenated on the feature axis, both aligned to input time ``t``.
- **h_n** (and **c_n**): final states ordered layer 0 forward, layer 0 reverse,
  layer 1 forward, ...; the reverse direction's final state is the one after
  reading ``t = 0``.

With ``return_gates=True`` the result is ``(usual_result, gates)``. ``gates`` maps
``"l{k}"`` (and ``"l{k}_reverse"``) to a dict of gate name to a tensor laid out
like ``output`` but ``hidden_size`` wide: ``(T, B, H)``, ``(B, T, H)`` with
batch_first, ``(T, H)`` unbatched; index ``t`` holds the gates that produced
the output at time ``t`` in both directions. Gate names: RNN ``{"a"}`` (the
pre-activation), LSTM ``{"i", "f", "g", "o"}``, GRU ``{"r", "z", "n"}``, all
after their activations except ``"a"``.

The parameters of layer ``k`` end in ``_l{k}``, its reverse direction's in ``_l{k}_reverse``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from edge_rnn.reference._checks import check_nonlinearity, split_pair
from edge_rnn.reference._layer import Gates, LayerWeights, RecurrentBase, State
from edge_rnn.reference.gru_cell import gru_step
from edge_rnn.reference.lstm_cell import lstm_step
from edge_rnn.reference.rnn_cell import rnn_step

__all__ = ["RNN", "LSTM", "GRU"]


class RNN(RecurrentBase):
    r"""A multi-layer Elman RNN with tanh or ReLU non-linearity, written from the equation.

    For each element in the input sequence, each layer computes

    .. math::
        h_t = \tanh(x_t W_{ih}^T + b_{ih} + h_{t-1} W_{hh}^T + b_{hh})

    where :math:`x_t` is the input at time ``t`` (for layer ``k > 0``, the previous
    layer's output). With ``nonlinearity='relu'``, ReLU replaces tanh.

    The arguments every layer takes are in the module docstring; an RNN adds

    Args:
        nonlinearity: ``'tanh'`` or ``'relu'``. Default: ``'tanh'``.

    Call: ``rnn(input, h_0=None)`` gives ``(output, h_n)``, shaped as the module
    docstring says with ``H_out = hidden_size``; with ``return_gates=True``,
    ``((output, h_n), gates)``, gates ``{"l0": {"a": pre_activation}, ...}``.

    Attributes:
        weight_ih_l[k]: ``(hidden_size, input_size)`` for ``k = 0``, else
            ``(hidden_size, D * hidden_size)``.
        weight_hh_l[k]: ``(hidden_size, hidden_size)``.
        bias_ih_l[k], bias_hh_l[k]: ``(hidden_size)``.
        mode: ``"RNN_TANH"`` or ``"RNN_RELU"``.

    Examples::

        >>> import torch
        >>> from edge_rnn.reference import RNN
        >>> rnn = RNN(10, 20, 2)
        >>> x = torch.randn(5, 3, 10)
        >>> h0 = torch.randn(2, 3, 20)
        >>> output, hn = rnn(x, h0)
        >>> output.shape, hn.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]))
    """

    gate_count = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        mode = "RNN_" + check_nonlinearity("RNN", nonlinearity).upper()
        super().__init__(
            mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype
        )
        self.nonlinearity = nonlinearity

    def _step(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[State, Gates]:
        h, gates = rnn_step(x, state[0], *weights[:4], nonlinearity=self.nonlinearity)
        return (h,), gates


class LSTM(RecurrentBase):
    r"""A multi-layer long short-term memory (LSTM) RNN, written from the equations.

    For each element in the input sequence, each layer computes

    .. math::
        \begin{array}{ll}
        i_t = \sigma(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi}) \\
        f_t = \sigma(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf}) \\
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg}) \\
        o_t = \sigma(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho}) \\
        c_t = f_t \odot c_{t-1} + i_t \odot g_t \\
        h_t = o_t \odot \tanh(c_t)
        \end{array}

    With ``proj_size > 0``, :math:`h_t = W_{hr}(o_t \odot \tanh(c_t))`, so ``h`` is
    ``proj_size`` wide while ``c`` keeps ``hidden_size``. Layer ``k > 0`` reads the
    previous layer's output.

    The arguments every layer takes are in the module docstring (``hidden_size`` is the
    width of ``c``); an LSTM adds

    Args:
        proj_size: If ``> 0``, an LSTM with projections of that size. Default: 0.

    Call: ``lstm(input, (h_0, c_0))`` (both zeros if the pair is ``None``) gives
    ``(output, (h_n, c_n))``, shaped as the module docstring says: ``h`` is ``H_out``
    wide, ``c`` ``hidden_size``. With ``return_gates=True``,
    ``((output, (h_n, c_n)), gates)``, gates ``{"l0": {"i", "f", "g", "o"}, ...}``,
    each ``hidden_size`` wide.

    Attributes:
        weight_ih_l[k]: ``(4*hidden_size, input_size)`` for ``k = 0``, else
            ``(4*hidden_size, D * H_out)``; gates ``W_ii|W_if|W_ig|W_io``.
        weight_hh_l[k]: ``(4*hidden_size, H_out)``.
        bias_ih_l[k], bias_hh_l[k]: ``(4*hidden_size)``.
        weight_hr_l[k]: ``(proj_size, hidden_size)``, only if ``proj_size > 0``.

    Examples::

        >>> import torch
        >>> from edge_rnn.reference import LSTM
        >>> lstm = LSTM(10, 20, 2, proj_size=8)
        >>> x = torch.randn(5, 3, 10)
        >>> h0, c0 = torch.randn(2, 3, 8), torch.randn(2, 3, 20)
        >>> output, (hn, cn) = lstm(x, (h0, c0))
        >>> output.shape, hn.shape, cn.shape
        (torch.Size([5, 3, 8]), torch.Size([2, 3, 8]), torch.Size([2, 3, 20]))
        >>> _, gates = lstm(x, (h0, c0), return_gates=True)
        >>> sorted(gates), gates["l1"]["f"].shape
        (['l0', 'l1'], torch.Size([5, 3, 20]))
    """

    gate_count = 4

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device,
            dtype,
        )

    def _state_specs(self) -> tuple[tuple[str, int], ...]:
        return (("h_0", self.proj_size or self.hidden_size), ("c_0", self.hidden_size))

    def _split_hx(self, hx: Any) -> tuple[Any, ...]:
        return split_pair("LSTM", hx)

    def _join_states(self, states: State) -> tuple[Tensor, Tensor]:
        return states[0], states[1]

    def _step(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[State, Gates]:
        h, c, gates = lstm_step(x, state[0], state[1], *weights)
        return (h, c), gates


class GRU(RecurrentBase):
    r"""A multi-layer gated recurrent unit (GRU) RNN, written from the equations.

    For each element in the input sequence, each layer computes

    .. math::
        \begin{array}{ll}
        r_t = \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
        z_t = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
        n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot (W_{hn} h_{t-1} + b_{hn})) \\
        h_t = (1 - z_t) \odot n_t + z_t \odot h_{t-1}
        \end{array}

    Layer ``k > 0`` reads the previous layer's output. The arguments are those every
    layer takes (the module docstring).

    Call: ``gru(input, h_0=None)`` gives ``(output, h_n)``, shaped as the module
    docstring says with ``H_out = hidden_size``; with ``return_gates=True``,
    ``((output, h_n), gates)``, gates ``{"l0": {"r", "z", "n"}, ...}``.

    Attributes:
        weight_ih_l[k]: ``(3*hidden_size, input_size)`` for ``k = 0``, else
            ``(3*hidden_size, D * hidden_size)``; gates ``W_ir|W_iz|W_in``.
        weight_hh_l[k]: ``(3*hidden_size, hidden_size)``; gates ``W_hr|W_hz|W_hn``.
        bias_ih_l[k], bias_hh_l[k]: ``(3*hidden_size)``.

    Examples::

        >>> import torch
        >>> from edge_rnn.reference import GRU
        >>> gru = GRU(10, 20, 2, batch_first=True, bidirectional=True)
        >>> x = torch.randn(3, 5, 10)
        >>> output, hn = gru(x)
        >>> output.shape, hn.shape
        (torch.Size([3, 5, 40]), torch.Size([4, 3, 20]))
    """

    gate_count = 3

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            "GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype
        )

    def _step(self, x: Tensor, state: State, weights: LayerWeights) -> tuple[State, Gates]:
        h, gates = gru_step(x, state[0], *weights[:4])
        return (h,), gates
