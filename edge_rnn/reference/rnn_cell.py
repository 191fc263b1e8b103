"""The Elman RNN step and :class:`RNNCell`.

:func:`rnn_step` is the only place the vanilla-RNN equation is written; the
cell and the :class:`~edge_rnn.reference.RNN` layer both call it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from edge_rnn.reference._cell import CellBase, Gates, unbatch
from edge_rnn.reference._checks import check_nonlinearity

__all__ = ["rnn_step", "RNNCell"]

_ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_step(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    *,
    nonlinearity: str = "tanh",
) -> tuple[Tensor, Gates]:
    r"""One Elman RNN step.

    .. math::
        a = W_{ih} x + b_{ih} + W_{hh} h + b_{hh}, \qquad h' = \text{act}(a)

    with :math:`\text{act}` ``tanh`` or ``relu``.

    Args:
        x: input, ``(B, I)``.
        h: previous hidden state, ``(B, H)``.
        w_ih: ``(H, I)``.  w_hh: ``(H, H)``.
        b_ih, b_hh: ``(H)`` or ``None`` for no bias.
        nonlinearity: ``"tanh"`` or ``"relu"``.

    Returns:
        ``(h_new, gates)``: ``h_new`` is ``(B, H)``; ``gates`` is ``{"a": a}``,
        the pre-activation ``(B, H)`` (an RNN has no gates; ``a`` is what the
        activation is applied to).
    """
    a = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return _ACTIVATIONS[nonlinearity](a), {"a": a}


class RNNCell(CellBase):
    r"""An Elman RNN cell with tanh or ReLU non-linearity, written from the equation.

    .. math::
        h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})

    If ``nonlinearity`` is ``'relu'``, ReLU is used instead of tanh. Same
    constructor, parameters and call convention as :class:`torch.nn.RNNCell`.

    Args:
        input_size: The number of expected features in the input ``x``.
        hidden_size: The number of features in the hidden state ``h``.
        bias: If ``False``, the layer does not use ``bias_ih`` and ``bias_hh``. Default: ``True``.
        nonlinearity: ``'tanh'`` or ``'relu'``. Default: ``'tanh'``.

    Inputs: input, hidden
        - **input**: ``(batch, input_size)`` or ``(input_size)``.
        - **hidden**: ``(batch, hidden_size)`` or ``(hidden_size)``; zeros if ``None``.

    Outputs: h'
        - **h'** ``(batch, hidden_size)`` or ``(hidden_size)``: the next hidden state.
        - With ``return_gates=True`` the result is ``(h', gates)`` where ``gates`` is
          ``{"a": pre_activation}``, shaped like ``h'``.

    Attributes:
        weight_ih: ``(hidden_size, input_size)``.
        weight_hh: ``(hidden_size, hidden_size)``.
        bias_ih: ``(hidden_size)``.
        bias_hh: ``(hidden_size)``.

    Examples::

        >>> import torch
        >>> from edge_rnn.reference import RNNCell
        >>> cell = RNNCell(10, 20)
        >>> x = torch.randn(6, 3, 10)
        >>> hx = torch.randn(3, 20)
        >>> for t in range(6):
        ...     hx = cell(x[t], hx)
        >>> hx.shape
        torch.Size([3, 20])
    """

    gate_count = 1

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_nonlinearity("RNNCell", nonlinearity)
        super().__init__(input_size, hidden_size, bias, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(
        self, input: Tensor, hx: Tensor | None = None, *, return_gates: bool = False
    ) -> Tensor | tuple[Tensor, Gates]:
        x, (h,), batched = self._batch(input, {"hx": hx})
        h_new, gates = rnn_step(
            x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, nonlinearity=self.nonlinearity
        )
        (h_new,), gates = unbatch(batched, (h_new,), gates)
        return (h_new, gates) if return_gates else h_new
