"""PyTorch reference RNN/LSTM/GRU cells and layers, written from the textbook equations.

Each module is a drop-in for its torch.nn namesake (constructor, attributes,
parameter names and shapes, ``state_dict`` keys in the same order, call
convention) and can also return its gate values (``return_gates=True``).
The maths of each cell is one pure step function (:func:`rnn_step`,
:func:`lstm_step`, :func:`gru_step`), shared by the cell and the layer.
"""

from __future__ import annotations

from edge_rnn.reference.gru_cell import GRUCell, gru_step
from edge_rnn.reference.layers import GRU, LSTM, RNN
from edge_rnn.reference.lstm_cell import LSTMCell, lstm_step
from edge_rnn.reference.rnn_cell import RNNCell, rnn_step

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
]
