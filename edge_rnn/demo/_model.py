"""The models the memory task trains (torch): one recurrent layer and a linear read-out of the query step."""

from __future__ import annotations

import torch

from edge_rnn.errors import UnsupportedError

__all__ = ["RecallModel", "ARCHS"]

ARCHS: dict[str, type[torch.nn.RNNBase]] = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


class RecallModel(torch.nn.Module):
    """``rnn``: a one-layer time-major ``torch.nn.RNN``/``LSTM``/``GRU`` (``features -> hidden``); ``head``: a linear
    map of its output at the query step to one logit per symbol. The recurrent layer alone is what is exported and
    diagnosed: it holds the memory, the head only reads it.

    An LSTM's forget-gate bias starts at 1 (Gers et al., 2000; Jozefowicz et al., 2015), the classical recipe: the
    cell starts out keeping about 0.73 of itself per step instead of 0.5. The other layers keep torch's init.
    """

    def __init__(self, arch: str, features: int, hidden: int, classes: int) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise UnsupportedError(f"memory task: expected an architecture among {list(ARCHS)}, got {arch!r}")
        self.arch = arch
        self.rnn = ARCHS[arch](features, hidden)
        self.head = torch.nn.Linear(hidden, classes)
        if arch == "lstm":
            with torch.no_grad():  # torch's gate order i, f, g, o: f is the second quarter of each bias
                self.rnn.bias_ih_l0[hidden:2 * hidden] = 1.0
                self.rnn.bias_hh_l0[hidden:2 * hidden] = 0.0

    def forward(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """``x`` (time, batch, features), ``query`` (batch,) step indices -> logits (batch, classes)."""
        y = self.rnn(x)[0]
        return self.head(y[query, torch.arange(x.shape[1])])
