"""What the CLI tests share: a command run in process, and the check that it failed with one `Error:` line (exit 1,
no traceback)."""

from __future__ import annotations

from click.testing import CliRunner, Result

from edge_rnn.cli import main


def invoke(*args: object) -> Result:
    """``edge-rnn ARGS`` in process (each argument as a string); exceptions are not caught."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result: Result, contains: str, *, not_in_output: tuple[str, ...] = (),
                   not_in_stdout: tuple[str, ...] = ()) -> str:
    """The one `Error:` line ``result`` printed on stderr, holding ``contains``, after exit code 1 and no traceback;
    none of ``not_in_output`` anywhere in its output, none of ``not_in_stdout`` in its stdout (case-insensitive)."""
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert contains in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert not any(s in result.output for s in not_in_output), result.output
    assert not any(s in result.stdout.lower() for s in not_in_stdout), result.stdout
    return lines[0]
