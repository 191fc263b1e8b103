"""docs/third-party-onnx.md runs as written: its Python block writes the file, its commands lift, package and
serve it, and the lines it shows of lift's output are what lift prints."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")

import re  # noqa: E402
import shlex  # noqa: E402

from click.testing import CliRunner  # noqa: E402
from conftest import REPO  # noqa: E402

from edge_rnn.cli import main  # noqa: E402
from edge_rnn.runtime import StreamingModel  # noqa: E402

DOC = REPO / "docs" / "third-party-onnx.md"


def _block(marker: str, lang: str) -> str:
    m = re.search(re.escape(marker) + r"\s*```" + lang + r"\n(.*?)\n```", DOC.read_text(), re.S)
    assert m, f"{DOC.name}: expected a ```{lang} block after {marker!r}"
    return m.group(1)


def test_the_third_party_page_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(_block("<!-- third-party-example -->", "python"), "docs/third-party-onnx.md", "exec"),
         {"__name__": "__docs__"})
    outputs = {}
    for line in _block("<!-- third-party-commands -->", "bash").splitlines():
        args = shlex.split(line.split("#")[0])
        assert args[0] == "edge-rnn", line
        if args[1] == "serve":  # what serve loads, then no server: the service tests serve
            variant = args[args.index("--variant") + 1]
            StreamingModel.load(args[2], variant=variant, self_test=True)
            continue
        r = CliRunner().invoke(main, args[1:])
        assert r.exit_code == 0, (line, r.output)
        outputs[args[1]] = r.output
    assert "lift:      edge-rnn lift keras_gru.onnx -o streaming.onnx can make it streamable" in outputs["inspect"]
    shown = re.search(r"`edge-rnn lift` says what it rewrote.*?```text\n(.*?)\n```", DOC.read_text(), re.S).group(1)
    for line in shown.splitlines():
        if line.startswith(("note:", "state:", "reference:", "verdict:", "case ")):
            assert line in outputs["lift"], line  # the figures of the table are this machine's; the rest is exact
    rows = re.findall(r"^(chunked|full|long) +(\S+) .* ok$", outputs["lift"], re.M)
    assert len(rows) == 6
