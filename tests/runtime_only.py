"""Code run where torch and onnx cannot be imported, as on a device with only the runtime installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"

_BLOCKED = f"""import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx'):
            raise ImportError(name + ' is blocked here')
sys.meta_path.insert(0, Block())
import numpy as np
from edge_rnn.runtime import StreamingModel, run_sequence
expected = np.load({str(DATA / 'expected.npz')!r})
"""


def run_where_torch_and_onnx_are_blocked(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter that cannot import torch or onnx, with ``expected`` (the fixtures' npz)."""
    return subprocess.run([sys.executable, "-c", _BLOCKED + code], capture_output=True, text=True, timeout=300)
