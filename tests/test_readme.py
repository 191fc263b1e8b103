"""The README's Python examples run as written (in order, in a scratch directory)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed

import re

import torch
from conftest import REPO

import edge_rnn


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)  # the runtime example reads the model the README's first command writes
    edge_rnn.export(torch.nn.LSTM(80, 256, num_layers=2).eval(), "demo_lstm.onnx", verify_parity=False)
    from pathlib import Path

    from edge_rnn.deploy import package

    package(Path("demo_lstm.onnx"), Path("bundle"), variants=("fp32", "int8"), steps=2_000)  # the deploy example's
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 3
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md block {i}", "exec"), {"__name__": "__readme__"})
