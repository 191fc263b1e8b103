"""Shared helpers: small recurrent modules over the whole option space."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests are small; one thread each keeps them fast and deterministic on a 2-core machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    try:
        import torch
    except ImportError:  # the torch-free subset: nothing to set
        return
    torch.set_num_threads(1)


# name -> (arch, kwargs) covering every architecture variant edge-rnn exports
ARCHS = {
    "rnn_tanh": ("rnn", {}),
    "rnn_relu": ("rnn", {"nonlinearity": "relu"}),
    "lstm": ("lstm", {}),
    "lstm_proj": ("lstm", {"proj_size": 3}),
    "gru": ("gru", {}),
}
