"""The runnable example in docs/diagnostics.md runs as written (on the README's demo export)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")  # the demo export needs the export extra

import re  # noqa: E402

from conftest import REPO  # noqa: E402

import edge_rnn  # noqa: E402


def test_diagnostics_doc_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    edge_rnn.export(torch.nn.LSTM(80, 256, num_layers=2).eval(), "demo_lstm.onnx", verify_parity=False)
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "diagnostics.md").read_text(), re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/diagnostics.md block 0", "exec"), {"__name__": "__doc_example__"})
    assert "1/e after" in capsys.readouterr().out
