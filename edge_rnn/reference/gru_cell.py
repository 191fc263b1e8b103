"""The GRU step and :class:`GRUCell`.

:func:`gru_step` is the only place the GRU equations are written; the cell and
the :class:`~edge_rnn.reference.GRU` layer both call it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from edge_rnn.reference._cell import CellBase, Gates, unbatch

__all__ = ["gru_step", "GRUCell"]


def gru_step(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
) -> tuple[Tensor, Gates]:
    r"""One GRU step, gates stacked in torch's order ``r, z, n``.

    .. math::
        \begin{array}{ll}
        r = \sigma(W_{ir} x + b_{ir} + W_{hr} h + b_{hr}) \\
        z = \sigma(W_{iz} x + b_{iz} + W_{hz} h + b_{hz}) \\
        n = \tanh(W_{in} x + b_{in} + r \odot (W_{hn} h + b_{hn})) \\
        h' = (1 - z) \odot n + z \odot h
        \end{array}

    ``b_hn`` sits inside ``r * (...)``, torch's placement (ONNX's ``linear_before_reset=1``).

    Args:
        x: input, ``(B, I)``.
        h: previous hidden state, ``(B, H)``.
        w_ih: ``(3H, I)``.  w_hh: ``(3H, H)``.
        b_ih, b_hh: ``(3H)`` or ``None`` for no bias.

    Returns:
        ``(h_new, gates)``: ``h_new`` ``(B, H)`` and ``gates = {"r", "z", "n"}``,
        each ``(B, H)``, after their activations.
    """
    x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    # (1 - z) * n + z * h, in the form torch evaluates it, so rounding agrees too.
    h_new = n + z * (h - n)
    return h_new, {"r": r, "z": z, "n": n}


class GRUCell(CellBase):
    r"""A gated recurrent unit (GRU) cell: one :func:`gru_step` per call (its docstring has the gates' equations).

    .. math::
        h' = (1 - z) \odot n + z \odot h

    with reset gate ``r``, update gate ``z`` and candidate ``n``.

    Same constructor, parameters and call convention as :class:`torch.nn.GRUCell`.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        bias: If ``False``, the layer does not use ``bias_ih`` and ``bias_hh``. Default: ``True``.

    Inputs: input, hidden
        - **input**: ``(batch, input_size)`` or ``(input_size)``.
        - **hidden**: ``(batch, hidden_size)`` or ``(hidden_size)``; zeros if ``None``.

    Outputs: h'
        - **h'** ``(batch, hidden_size)`` or ``(hidden_size)``.
        - With ``return_gates=True`` the result is ``(h', gates)`` where ``gates`` is
          ``{"r", "z", "n"}`` (after activation), each shaped like ``h'``.

    Attributes:
        weight_ih: ``(3*hidden_size, input_size)``, gates ``W_ir|W_iz|W_in``.
        weight_hh: ``(3*hidden_size, hidden_size)``, gates ``W_hr|W_hz|W_hn``.
        bias_ih: ``(3*hidden_size)``.
        bias_hh: ``(3*hidden_size)``.

    Examples::

        >>> import torch
        >>> from edge_rnn.reference import GRUCell
        >>> cell = GRUCell(10, 20)
        >>> hx, gates = cell(torch.randn(3, 10), return_gates=True)
        >>> sorted(gates), gates["z"].shape, hx.shape
        (['n', 'r', 'z'], torch.Size([3, 20]), torch.Size([3, 20]))
    """

    gate_count = 3

    def forward(
        self, input: Tensor, hx: Tensor | None = None, *, return_gates: bool = False
    ) -> Tensor | tuple[Tensor, Gates]:
        x, (h,), batched = self._batch(input, {"hx": hx})
        h_new, gates = gru_step(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        (h_new,), gates = unbatch(batched, (h_new,), gates)
        return (h_new, gates) if return_gates else h_new
