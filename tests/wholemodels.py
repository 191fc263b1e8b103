"""Realistic streaming models written for the tests (also importable by `edge-rnn export module:factory`)."""

from __future__ import annotations

import torch

from edge_rnn.nn import ContextBuffer


class KeywordSpotter(torch.nn.Module):
    """Causal convolutional front end, a GRU and a linear head. x: (batch, time, 40) -> logits (batch, time, 12)."""

    def __init__(self, n_mels: int = 40, channels: int = 32, hidden: int = 48, classes: int = 12):
        super().__init__()
        self.context = ContextBuffer(2)  # kernel 3: two frames of look-back
        self.conv = torch.nn.Conv1d(n_mels, channels, 3)
        self.context2 = ContextBuffer(4)  # kernel 3, dilation 2
        self.conv2 = torch.nn.Conv1d(channels, channels, 3, dilation=2)
        self.gru = torch.nn.GRU(channels, hidden, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.conv(self.context(x.transpose(1, 2))))
        z = torch.relu(self.conv2(self.context2(z))).transpose(1, 2)
        y, _ = self.gru(z)
        return self.head(y)


class VoiceActivity(torch.nn.Module):
    """A VAD in the silero style: takes and returns its state explicitly.

    forward(x, state) -> (prob, new_state); x (batch, 64, time) frames of a learned
    filterbank, state (2, batch, 32) = the LSTM cell's (h, c); its front end keeps its own
    context buffer, lifted automatically.
    """

    def __init__(self, bins: int = 64, hidden: int = 32):
        super().__init__()
        self.context = ContextBuffer(3)
        self.stft = torch.nn.Conv1d(bins, 48, 4)  # an STFT-like learned filterbank over 4 frames
        self.encoder = torch.nn.Sequential(torch.nn.Linear(48, hidden), torch.nn.ReLU())
        self.cell = torch.nn.LSTMCell(hidden, hidden)
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(self.stft(self.context(x)).mean(dim=2))  # pool the chunk's frames: one step per call
        h, c = self.cell(z, (state[0], state[1]))
        return torch.sigmoid(self.head(h)), torch.stack([h, c])


class AcousticModel(torch.nn.Module):
    """Stacked LSTMs with projections between them and a head: x (time, batch, 40) -> (time, batch, 30)."""

    def __init__(self, feats: int = 40, hidden: int = 64, proj: int = 24, out: int = 30):
        super().__init__()
        self.encoder = torch.nn.ModuleDict({
            "lstm1": torch.nn.LSTM(feats, hidden, proj_size=proj),
            "lstm2": torch.nn.LSTM(proj, hidden, num_layers=2, proj_size=proj),
        })
        self.norm = torch.nn.LayerNorm(proj)  # over features only: streamable
        self.head = torch.nn.Linear(proj, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.encoder["lstm1"](x)
        y, _ = self.encoder["lstm2"](y)
        return self.head(self.norm(y))


class TokenModel(torch.nn.Module):
    """Token ids -> Embedding -> GRU -> logits: a character-level language model, streamed id by id."""

    def __init__(self, vocab: int = 40, dim: int = 16, hidden: int = 24):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.gru = torch.nn.GRU(dim, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(self.embed(ids))
        return self.head(y)


def token_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TokenModel()


def keyword_spotter() -> torch.nn.Module:
    torch.manual_seed(0)
    return KeywordSpotter()


def acoustic_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return AcousticModel()


def open_forget_gate(cell_or_layer: torch.nn.Module, hidden: int) -> torch.nn.Module:
    """Forget gate near 1, input gate open, g positive: the cell state integrates to thousands, as in trained VADs.

    Works on an LSTM layer (its first layer) or an LSTMCell, in place; returns it.
    """
    bias = cell_or_layer.bias_ih_l0 if hasattr(cell_or_layer, "bias_ih_l0") else cell_or_layer.bias_ih
    with torch.no_grad():
        bias[hidden:2 * hidden] += 8.0
        bias[0:hidden] += 4.0
        bias[2 * hidden:3 * hidden] += 2.0
    return cell_or_layer
