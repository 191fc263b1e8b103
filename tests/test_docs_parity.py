"""The runnable examples in docs/parity.md run as written, in order (the second reads the first's file)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed

import re

from conftest import REPO


def test_parity_doc_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "parity.md").read_text(), re.S)
    assert len(blocks) == 2
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/parity.md block {i}", "exec"), {"__name__": "__doc_example__"})
