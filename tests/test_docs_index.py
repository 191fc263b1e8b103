"""The front page and the docs index stay true: the README's first screen, links, the CLI and error references.

No torch needed: these run in the torch-free venv too.
"""

from __future__ import annotations

import re

import click
import pytest
from conftest import REPO

from edge_rnn import errors
from edge_rnn.cli import main

DOCS = REPO / "docs"
INSTALL_AND_RUN = ("pip install -e '.[export]' && edge-rnn export --arch lstm --input-size 80 --hidden-size 256 "
                   "--num-layers 2 -o demo_lstm.onnx")
FIRST_SCREEN = 40  # lines


def ci_command() -> str:
    lines = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("pip install")]
    assert len(lines) == 1, ".ci/run: expected one 'pip install ...' line, the README's test command"
    return lines[0].replace("pip install -q ", "pip install ", 1)


def test_the_first_screen_holds_the_two_commands():
    first = (REPO / "README.md").read_text().splitlines()[:FIRST_SCREEN]
    assert INSTALL_AND_RUN in first
    assert ci_command() in first  # byte for byte what CI runs (less pip's -q)
    assert first.index(INSTALL_AND_RUN) + 1 == first.index(ci_command())  # the two lines of one block


def links(path) -> list[str]:
    """Relative link targets of a Markdown file (images included), code blocks and spans left out."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", t)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", ["README.md"] + sorted(f"docs/{p.name}" for p in DOCS.glob("*.md")))
def test_relative_links_resolve(page):
    source = REPO / page
    for target in links(source):
        file, _, anchor = target.partition("#")
        dest = (source.parent / file).resolve() if file else source
        assert dest.exists(), f"{page}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{page}: link to {target}: no such heading in {dest.name}"


def test_the_index_lists_every_page():
    listed = {t.partition("#")[0] for t in links(DOCS / "index.md")}
    pages = {p.name for p in DOCS.iterdir() if p.suffix in (".md", ".json") and p.name != "index.md"}
    assert pages - listed == set(), "docs/index.md: pages it does not list"
    assert "docs/index.md" in links(REPO / "README.md")


def test_the_cli_page_lists_every_command_and_option():
    text = (DOCS / "cli.md").read_text()
    for name, command in main.commands.items():
        assert f"## `edge-rnn {name}`" in text, f"docs/cli.md: no section for {name}"
        section = text.split(f"## `edge-rnn {name}`", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                for opt in param.opts + param.secondary_opts:
                    assert re.search(rf"`[^`]*{re.escape(opt)}\b", section), f"docs/cli.md, {name}: {opt} is missing"


def test_the_errors_page_lists_every_error_with_its_builtin_type():
    text = (DOCS / "errors.md").read_text()
    for name in errors.__all__:
        cls = getattr(errors, name)
        if not isinstance(cls, type):
            continue
        row = re.search(rf"^\| `{name}` \|\s*([^|]*?)\s*\|", text, re.M)
        assert row, f"docs/errors.md: no row for {name}"
        builtins = [b.__name__ for b in cls.__mro__[1:] if b.__module__ == "builtins" and b is not object]
        expected = builtins[0] if cls is errors.EdgeRnnError else next(
            (b for b in builtins if b != "Exception" and b != "BaseException"), "")
        assert row.group(1).strip().strip("`") == expected, f"docs/errors.md, {name}: expected {expected!r}"
