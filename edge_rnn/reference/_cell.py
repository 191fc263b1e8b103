"""Parameters, initialisation and input handling shared by the three reference cells.

A cell subclass only states its gate count and calls its step function; the
parameter names, shapes, registration order and initialisation are torch.nn's,
so ``state_dict``\\ s move between the two in either direction.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from edge_rnn.reference._checks import check_flag, check_input, check_size, reset_uniform, states_with_batch

Gates = dict[str, Tensor]


class CellBase(nn.Module):
    """Holds ``weight_ih`` ``(G*H, I)``, ``weight_hh`` ``(G*H, H)``, ``bias_ih``/``bias_hh`` ``(G*H)``.

    ``G`` is the subclass's ``gate_count``. With ``bias=False`` the two biases
    are registered as ``None``, as torch.nn does.
    """

    gate_count: ClassVar[int]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_size(owner, "input_size", input_size)
        self.hidden_size = check_size(owner, "hidden_size", hidden_size)
        self.bias = check_flag(owner, "bias", bias)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        rows = self.gate_count * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size, **factory))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size, **factory))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows, **factory))
            self.bias_hh = nn.Parameter(torch.empty(rows, **factory))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every parameter from ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``, like torch.nn."""
        reset_uniform(self, self.hidden_size)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            text += ", bias=False"
        nonlinearity = getattr(self, "nonlinearity", "tanh")
        if nonlinearity != "tanh":
            text += f", nonlinearity={nonlinearity}"
        return text

    def _batch(self, input: Tensor, states: dict[str, Tensor | None]) -> tuple[Tensor, tuple[Tensor, ...], bool]:
        """Check ``input`` and the named ``states``; return them with a batch axis, zeros for ``None``.

        Unbatched input is ``(I,)`` with states ``(H,)``; batched input is ``(B, I)``
        with states ``(B, H)``. The third value says whether the input was batched.
        """
        owner = type(self).__name__
        check_input(owner, input, ranks=(1, 2), size=self.input_size, dtype=self.weight_ih.dtype)
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        named = [(name, self.hidden_size, state) for name, state in states.items()]
        return x, states_with_batch(owner, named, like=x, batch=x.size(0), batched=batched), batched

def unbatch(batched: bool, tensors: tuple[Tensor, ...], gates: Gates) -> tuple[tuple[Tensor, ...], Gates]:
    """Drop the batch axis added by :meth:`CellBase._batch` when the input had none."""
    if batched:
        return tensors, gates
    return tuple(t.squeeze(0) for t in tensors), {k: v.squeeze(0) for k, v in gates.items()}
