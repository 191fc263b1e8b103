"""The LSTM step and :class:`LSTMCell`.

:func:`lstm_step` is the only place the LSTM equations are written; the cell
and the :class:`~edge_rnn.reference.LSTM` layer (with or without projection)
both call it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from edge_rnn.reference._cell import CellBase, Gates, unbatch
from edge_rnn.reference._checks import split_pair

__all__ = ["lstm_step", "LSTMCell"]


def lstm_step(
    x: Tensor,
    h: Tensor,
    c: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
) -> tuple[Tensor, Tensor, Gates]:
    r"""One LSTM step, gates stacked in torch's order ``i, f, g, o``.

    .. math::
        \begin{array}{ll}
        i = \sigma(W_{ii} x + b_{ii} + W_{hi} h + b_{hi}) \\
        f = \sigma(W_{if} x + b_{if} + W_{hf} h + b_{hf}) \\
        g = \tanh(W_{ig} x + b_{ig} + W_{hg} h + b_{hg}) \\
        o = \sigma(W_{io} x + b_{io} + W_{ho} h + b_{ho}) \\
        c' = f \odot c + i \odot g \\
        h' = o \odot \tanh(c') \quad (\text{then } h' = W_{hr} h' \text{ if } W_{hr} \text{ is given})
        \end{array}

    Args:
        x: input, ``(B, I)``.
        h: previous hidden state, ``(B, H_out)``; ``H_out`` is ``P`` with projection, else ``H``.
        c: previous cell state, ``(B, H)``.
        w_ih: ``(4H, I)``.  w_hh: ``(4H, H_out)``.
        b_ih, b_hh: ``(4H)`` or ``None`` for no bias.
        w_hr: projection ``(P, H)`` or ``None``.

    Returns:
        ``(h_new, c_new, gates)``: ``h_new`` ``(B, H_out)``, ``c_new`` ``(B, H)`` and
        ``gates = {"i", "f", "g", "o"}``, each ``(B, H)``, after their activations.
    """
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = pre.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = F.linear(h_new, w_hr)
    return h_new, c_new, {"i": i, "f": f, "g": g, "o": o}


class LSTMCell(CellBase):
    r"""A long short-term memory (LSTM) cell: one :func:`lstm_step` per call (its docstring has the gates' equations).

    .. math::
        c' = f \odot c + i \odot g, \qquad h' = o \odot \tanh(c')

    with input gate ``i``, forget gate ``f``, candidate ``g`` and output gate ``o``.

    Same constructor, parameters and call convention as :class:`torch.nn.LSTMCell`.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        bias: If ``False``, the layer does not use ``bias_ih`` and ``bias_hh``. Default: ``True``.

    Inputs: input, (h_0, c_0)
        - **input**: ``(batch, input_size)`` or ``(input_size)``.
        - **h_0**, **c_0**: ``(batch, hidden_size)`` or ``(hidden_size)``; both zeros if
          the tuple is ``None``.

    Outputs: (h_1, c_1)
        - **h_1**, **c_1**: ``(batch, hidden_size)`` or ``(hidden_size)``.
        - With ``return_gates=True`` the result is ``((h_1, c_1), gates)`` where
          ``gates`` is ``{"i", "f", "g", "o"}`` (after activation), each shaped like ``h_1``.

    Attributes:
        weight_ih: ``(4*hidden_size, input_size)``, gates ``W_ii|W_if|W_ig|W_io``.
        weight_hh: ``(4*hidden_size, hidden_size)``, gates ``W_hi|W_hf|W_hg|W_ho``.
        bias_ih: ``(4*hidden_size)``.
        bias_hh: ``(4*hidden_size)``.

    Examples::

        >>> import torch
        >>> from edge_rnn.reference import LSTMCell
        >>> cell = LSTMCell(10, 20)
        >>> x = torch.randn(2, 3, 10)
        >>> hx, cx = torch.randn(3, 20), torch.randn(3, 20)
        >>> for t in range(2):
        ...     hx, cx = cell(x[t], (hx, cx))
        >>> (hx, cx), gates = cell(x[0], (hx, cx), return_gates=True)
        >>> sorted(gates), gates["f"].shape
        (['f', 'g', 'i', 'o'], torch.Size([3, 20]))
    """

    gate_count = 4

    def forward(
        self,
        input: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        return_gates: bool = False,
    ) -> tuple[Tensor, Tensor] | tuple[tuple[Tensor, Tensor], Gates]:
        h0, c0 = (None, None) if hx is None else split_pair("LSTMCell", hx)
        x, (h, c), batched = self._batch(input, {"h_0": h0, "c_0": c0})
        h_new, c_new, gates = lstm_step(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        state, gates = unbatch(batched, (h_new, c_new), gates)
        return (state, gates) if return_gates else state
