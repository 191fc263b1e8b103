"""The runnable examples in docs/whole-models.md run as written."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed

import re

from conftest import REPO

BLOCKS = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "whole-models.md").read_text(), re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_example_runs(tmp_path, monkeypatch, code):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/whole-models.md", "exec"), {"__name__": "__doc_example__"})
