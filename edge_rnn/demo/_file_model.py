"""A trained model's read-out over an exported file (an int8 variant...), scored like the PyTorch model.

Each sequence streams through the file by the runtime as its own stream, ``chunk`` steps per call (as a device
streams it; a dynamic int8 variant quantises each call's activations over that call alone), and the PyTorch head
reads the layer's output at the query step. :func:`~edge_rnn.demo._train.accuracy_by_lag` calls it as it calls the
PyTorch model, on the same seeded sequences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["FileReadout", "CHUNK"]

CHUNK = 10  # steps per call a file is streamed in (the demo's tables say so)


class FileReadout:
    """``FileReadout(path, head)(x, query)``: logits ``(batch, classes)`` of ``head`` over the streaming ONNX file's
    output at each sequence's query step; ``x`` is ``(time, batch, features)``, time-major as the task makes it."""

    def __init__(self, path: str | Path, head: torch.nn.Module, chunk: int = CHUNK) -> None:
        from edge_rnn.runtime import StreamingModel

        self.model = StreamingModel.load(Path(path))
        self.head = head.eval()
        self.chunk = chunk

    def __call__(self, x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        from edge_rnn.runtime import run_sequence

        xs, qs = x.numpy(), query.numpy()
        rows = []
        for i in range(xs.shape[1]):
            y = run_sequence(self.model, self.model.open_stream(), xs[:, i], chunk=self.chunk)["y"]
            rows.append(y[qs[i]])
        with torch.no_grad():
            return self.head(torch.from_numpy(np.stack(rows)))
