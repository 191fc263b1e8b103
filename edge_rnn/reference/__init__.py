r"""PyTorch reference RNN/LSTM/GRU cells and layers, written from the textbook equations.

Each module is a drop-in for its torch.nn namesake (constructor, attributes,
parameter names and shapes, ``state_dict`` keys in the same order, call
convention) and can also return its gate values (``return_gates=True``).

All parameters are initialised from :math:`\mathcal{U}(-\sqrt{k}, \sqrt{k})`,
:math:`k = 1/\text{hidden\_size}`, as torch.nn does. An input or state of the
wrong rank, size or dtype, or an LSTM's ``hx`` that is not a pair, raises
:class:`~edge_rnn.errors.ShapeError` ("LSTMCell: expected input of size 5, got 6");
a constructor argument out of range, or a PackedSequence given to a layer,
:class:`~edge_rnn.errors.UnsupportedError`.

The maths of each cell is one pure step function (:func:`rnn_step`,
:func:`lstm_step`, :func:`gru_step`), shared by the cell and the layer.
:data:`KINDS` says which architecture each class implements, and :data:`TWINS`
which torch.nn class it stands in for, for code that recognises a recurrent
module by its class (the exporters, the diagnostics).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from edge_rnn.reference.gru_cell import GRUCell, gru_step
from edge_rnn.reference.layers import GRU, LSTM, RNN
from edge_rnn.reference.lstm_cell import LSTMCell, lstm_step
from edge_rnn.reference.rnn_cell import RNNCell, rnn_step

# class -> (kind, is_cell): the architecture ("rnn", "lstm" or "gru") each public class implements, and whether it
# takes one step per call (a cell) or a sequence (a layer). Read-only; its keys are the exact classes, so look a
# subclass up through its __mro__.
KINDS: Mapping[type[nn.Module], tuple[str, bool]] = MappingProxyType(
    {
        RNN: ("rnn", False),
        LSTM: ("lstm", False),
        GRU: ("gru", False),
        RNNCell: ("rnn", True),
        LSTMCell: ("lstm", True),
        GRUCell: ("gru", True),
    }
)
# class -> its torch.nn namesake, the layer or cell it is a drop-in for (same parameters, same layout).
TWINS: Mapping[type[nn.Module], type[nn.Module]] = MappingProxyType(
    {RNN: nn.RNN, LSTM: nn.LSTM, GRU: nn.GRU, RNNCell: nn.RNNCell, LSTMCell: nn.LSTMCell, GRUCell: nn.GRUCell}
)

__all__ = [
    "RNNCell",
    "LSTMCell",
    "GRUCell",
    "RNN",
    "LSTM",
    "GRU",
    "rnn_step",
    "lstm_step",
    "gru_step",
    "KINDS",
    "TWINS",
]
