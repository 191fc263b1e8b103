"""docs/deployment.md's Python example and its device-side commands run as written, on the committed bundle."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from click.testing import CliRunner
from conftest import REPO

from edge_rnn.cli import main


def test_the_deployment_docs_device_side_runs_as_written(tmp_path, monkeypatch):
    shutil.copytree(Path(__file__).parent / "data" / "bundle", tmp_path / "bundle")
    monkeypatch.chdir(tmp_path)
    text = (REPO / "docs" / "deployment.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/deployment.md block {i}", "exec"), {"__name__": "__docs__"})
    assert "edge-rnn check bundle/" in text
    r = CliRunner().invoke(main, ["check", "bundle/"])
    assert r.exit_code == 0, r.output


def test_the_deployment_docs_list_every_variant_with_its_bound():
    """The docs' table of variants is the variant table's rows, in its order, each with its tolerance row's bound."""
    from edge_rnn._variant_kinds import KINDS
    from edge_rnn.harness import TOLERANCE

    text = (REPO / "docs" / "deployment.md").read_text()
    rows = re.findall(r"^\| `([\w-]+)` \| .*? \| `([0-9e.+-]+) \+ ([0-9e.+-]+) x", text, re.M)
    assert [name for name, _, _ in rows] == list(KINDS)
    for name, atol, rtol in rows:
        bound = TOLERANCE[KINDS[name].precision]
        assert (float(atol), float(rtol)) == (bound.atol, bound.rtol), name
