"""Reference multi-layer :class:`RNN`, :class:`LSTM` and :class:`GRU`.

Drop-in equivalents of the torch.nn layers (same signatures, attributes,
parameter names, shapes and registration order), with the recurrence written
out in Python over :func:`rnn_step`, :func:`lstm_step` and :func:`gru_step`.
The shared machinery is in :mod:`edge_rnn.reference._layer`.

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
    layer's output, with dropout in training mode if ``dropout > 0``). With
    ``nonlinearity='relu'``, ReLU replaces tanh.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        num_layers: Number of stacked recurrent layers. Default: 1.
        nonlinearity: ``'tanh'`` or ``'relu'``. Default: ``'tanh'``.
        bias: If ``False``, the layers use no ``b_ih`` / ``b_hh``. Default: ``True``.
        batch_first: If ``True``, input and output are ``(batch, seq, feature)``;
            ``h_0`` / ``h_n`` are not affected. Default: ``False``.
        dropout: Dropout probability on the outputs of every layer but the last,
            in training mode only. Default: 0.
        bidirectional: If ``True``, a bidirectional RNN. Default: ``False``.

    Inputs: input, h_0
        - **input**: ``(L, N, H_in)``, ``(N, L, H_in)`` with batch_first, or ``(L, H_in)``.
        - **h_0**: ``(D * num_layers, N, H_out)`` or ``(D * num_layers, H_out)``; zeros if ``None``.

    Outputs: output, h_n
        - **output**: ``(L, N, D * H_out)`` (``(N, L, ...)`` with batch_first, ``(L, ...)`` unbatched).
        - **h_n**: ``(D * num_layers, N, H_out)`` or ``(D * num_layers, H_out)``.
        - With ``return_gates=True``: ``((output, h_n), gates)``, gates
          ``{"l0": {"a": pre_activation}, ...}`` (see the module docstring).

    Here ``L`` is the sequence length, ``N`` the batch size, ``D`` 2 if bidirectional
    else 1, ``H_out = hidden_size``.

    Attributes:
        weight_ih_l[k]: ``(hidden_size, input_size)`` for ``k = 0``, else
            ``(hidden_size, D * hidden_size)``.
        weight_hh_l[k]: ``(hidden_size, hidden_size)``.
        bias_ih_l[k], bias_hh_l[k]: ``(hidden_size)``.
        The reverse direction's parameters end in ``_reverse``.
        mode: ``"RNN_TANH"`` or ``"RNN_RELU"``.

    All parameters are initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`,
    :math:`k = 1/\text{hidden\_size}`.

    Raises:
        ShapeError: ``input`` or ``h_0`` has the wrong rank, size or dtype.
        UnsupportedError: a constructor argument is out of range, or the input is a PackedSequence.

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
    previous layer's output (with dropout in training mode if ``dropout > 0``).

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the cell state ``c``.
        num_layers: Number of stacked recurrent layers. Default: 1.
        bias: If ``False``, the layers use no ``b_ih`` / ``b_hh``. Default: ``True``.
        batch_first: If ``True``, input and output are ``(batch, seq, feature)``. Default: ``False``.
        dropout: Dropout probability on the outputs of every layer but the last,
            in training mode only. Default: 0.
        bidirectional: If ``True``, a bidirectional LSTM. Default: ``False``.
        proj_size: If ``> 0``, an LSTM with projections of that size. Default: 0.

    Inputs: input, (h_0, c_0)
        - **input**: ``(L, N, H_in)``, ``(N, L, H_in)`` with batch_first, or ``(L, H_in)``.
        - **h_0**: ``(D * num_layers, N, H_out)`` or ``(D * num_layers, H_out)``.
        - **c_0**: ``(D * num_layers, N, H_cell)`` or ``(D * num_layers, H_cell)``.
          Both zeros if the tuple is ``None``.

    Outputs: output, (h_n, c_n)
        - **output**: ``(L, N, D * H_out)`` (``(N, L, ...)`` with batch_first, ``(L, ...)`` unbatched).
        - **h_n**: ``(D * num_layers, N, H_out)``; **c_n**: ``(D * num_layers, N, H_cell)``
          (no ``N`` axis when unbatched).
        - With ``return_gates=True``: ``((output, (h_n, c_n)), gates)``, gates
          ``{"l0": {"i", "f", "g", "o"}, ...}``, each ``H_cell`` wide (see the module docstring).

    Here ``H_cell = hidden_size`` and ``H_out = proj_size`` if ``proj_size > 0`` else ``hidden_size``.

    Attributes:
        weight_ih_l[k]: ``(4*hidden_size, input_size)`` for ``k = 0``, else
            ``(4*hidden_size, D * H_out)``; gates ``W_ii|W_if|W_ig|W_io``.
        weight_hh_l[k]: ``(4*hidden_size, H_out)``.
        bias_ih_l[k], bias_hh_l[k]: ``(4*hidden_size)``.
        weight_hr_l[k]: ``(proj_size, hidden_size)``, only if ``proj_size > 0``.
        The reverse direction's parameters end in ``_reverse``.

    All parameters are initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`,
    :math:`k = 1/\text{hidden\_size}`.

    Raises:
        ShapeError: ``input``, ``h_0`` or ``c_0`` has the wrong rank, size or dtype,
            or ``hx`` is not a pair.
        UnsupportedError: a constructor argument is out of range, or the input is a PackedSequence.

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

    Layer ``k > 0`` reads the previous layer's output (with dropout in training
    mode if ``dropout > 0``).

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        num_layers: Number of stacked recurrent layers. Default: 1.
        bias: If ``False``, the layers use no ``b_ih`` / ``b_hh``. Default: ``True``.
        batch_first: If ``True``, input and output are ``(batch, seq, feature)``. Default: ``False``.
        dropout: Dropout probability on the outputs of every layer but the last,
            in training mode only. Default: 0.
        bidirectional: If ``True``, a bidirectional GRU. Default: ``False``.

    Inputs: input, h_0
        - **input**: ``(L, N, H_in)``, ``(N, L, H_in)`` with batch_first, or ``(L, H_in)``.
        - **h_0**: ``(D * num_layers, N, H_out)`` or ``(D * num_layers, H_out)``; zeros if ``None``.

    Outputs: output, h_n
        - **output**: ``(L, N, D * H_out)`` (``(N, L, ...)`` with batch_first, ``(L, ...)`` unbatched).
        - **h_n**: ``(D * num_layers, N, H_out)`` or ``(D * num_layers, H_out)``.
        - With ``return_gates=True``: ``((output, h_n), gates)``, gates
          ``{"l0": {"r", "z", "n"}, ...}`` (see the module docstring).

    Attributes:
        weight_ih_l[k]: ``(3*hidden_size, input_size)`` for ``k = 0``, else
            ``(3*hidden_size, D * hidden_size)``; gates ``W_ir|W_iz|W_in``.
        weight_hh_l[k]: ``(3*hidden_size, hidden_size)``; gates ``W_hr|W_hz|W_hn``.
        bias_ih_l[k], bias_hh_l[k]: ``(3*hidden_size)``.
        The reverse direction's parameters end in ``_reverse``.

    All parameters are initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`,
    :math:`k = 1/\text{hidden\_size}`.

    Raises:
        ShapeError: ``input`` or ``h_0`` has the wrong rank, size or dtype.
        UnsupportedError: a constructor argument is out of range, or the input is a PackedSequence.

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
