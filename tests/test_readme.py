"""The README's Python examples, and those of the doc pages its tour links to, run as written.

Each file's blocks run in order, in one scratch directory that already holds what the README's
commands make: ``demo_lstm.onnx`` (its first command) and ``bundle/`` (its deploy command).
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed

import re

import torch
from conftest import REPO

import edge_rnn

# the pages whose Python examples read the README's demo files (the other pages have tests of their own)
PAGES = ("README.md", "docs/export.md", "docs/runtime.md", "docs/variants.md")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A folder holding the README's demo_lstm.onnx and a bundle of it, made once for every page."""
    from edge_rnn.deploy import package

    where = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)  # the examples read the model the README's first command writes
    edge_rnn.export(torch.nn.LSTM(80, 256, num_layers=2).eval(), where / "demo_lstm.onnx", verify_parity=False)
    package(where / "demo_lstm.onnx", where / "bundle", variants=("fp32", "int8"), steps=2_000)  # the deploy example's
    return where


def python_blocks(page: str) -> list[str]:
    text = (REPO / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == text.count("```python"), f"{page}: a ```python block the pattern does not read"
    return blocks


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page, demo_dir, monkeypatch):
    blocks = python_blocks(page)
    assert blocks, f"{page} has no Python example"
    monkeypatch.chdir(demo_dir)
    for i, code in enumerate(blocks):
        exec(compile(code, f"{page} block {i}", "exec"), {"__name__": "__readme__"})


def test_the_readme_keeps_its_examples():
    # the 30-second example, the runtime's and the bundle's
    assert len(python_blocks("README.md")) >= 3
