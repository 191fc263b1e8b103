"""The command line's one progress bar and its ``--quiet`` (export, diagnose, optimize, package, run): drawn on
stderr, on a terminal only.

A long command takes :func:`quiet_option` and hands :func:`progress` to the library function that does the work
(as its ``progress`` keyword, :mod:`edge_rnn._progress`); informational lines go through :func:`say`. stdout,
the results that scripts parse, is never touched: it is the same on a terminal, in a pipe and with ``--quiet``.

Not on a terminal (a CI log, a pipe), no bar is drawn; with ``--quiet`` neither the bar nor :func:`say`'s lines.
The bar erases itself when its job reaches its total (so the results print on a clean line) and when the
command ends, however it ends (so an error's one line does too).
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from typing import Any

import click

from edge_rnn._progress import Progress

__all__ = ["quiet_option", "progress", "say", "stderr_is_terminal"]

_QUIET = "edge_rnn.quiet"
_BAR = "edge_rnn.progress_bar"
_WIDTH = 24  # characters of the bar itself


def stderr_is_terminal() -> bool:
    """Whether a bar may be drawn: stderr is a terminal (the one test; tests fake it here)."""
    stream = sys.stderr  # where click.echo(err=True) writes
    return stream is not None and stream.isatty()


class _Bar:
    """``stage [#####-----]  42%  3.1 s`` on one line of stderr, redrawn when the stage or the percentage moves."""

    def __init__(self) -> None:
        self.shown: tuple[str, int] | None = None
        self.start = time.monotonic()
        self.drawn = 0  # characters on the line now: overwritten with spaces, which every terminal understands

    def __call__(self, stage: str, done: int, total: int) -> None:
        percent = min(100, done * 100 // total) if total > 0 else 100
        if self.shown is not None and (self.shown == (stage, percent) or self.shown[1] == percent == 100):
            return
        columns = shutil.get_terminal_size((80, 24)).columns
        filled = _WIDTH * percent // 100
        line = (f"{stage[:max(8, columns - _WIDTH - 20)]} [{'#' * filled}{'-' * (_WIDTH - filled)}] {percent:3d}%  "
                f"{time.monotonic() - self.start:.1f} s")
        line = line[: columns - 1]
        click.echo("\r" + line.ljust(self.drawn), err=True, nl=False)
        self.shown, self.drawn = (stage, percent), len(line)
        if percent == 100:  # the job is done: whatever prints next starts on a clean line
            self.clear(keep=True)

    def clear(self, keep: bool = False) -> None:
        """Erase the bar (``keep``: remember it reached 100%, so repeats of its last report stay erased)."""
        if self.drawn:
            click.echo("\r" + " " * self.drawn + "\r", err=True, nl=False)
            self.drawn = 0
        if not keep:
            self.shown = None


def _context() -> click.Context | None:
    return click.get_current_context(silent=True)


def progress() -> Progress | None:
    """The callback that draws this command's bar, or None (``--quiet``, or stderr is not a terminal)."""
    ctx = _context()
    if ctx is None or ctx.meta.get(_QUIET) or not stderr_is_terminal():
        return None
    return ctx.meta.setdefault(_BAR, _Bar())


def say(message: str) -> None:
    """An informational line on stderr (above the bar, when one is drawn); nothing with ``--quiet``."""
    ctx = _context()
    if ctx is not None and ctx.meta.get(_QUIET):
        return
    bar = ctx.meta.get(_BAR) if ctx is not None else None
    if bar is not None:
        bar.clear()
    click.echo(message, err=True)


def quiet_option(f: Any) -> Any:
    """``-q/--quiet`` on a long command, and the bar erased when the command ends, however it ends."""
    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        ctx.meta[_QUIET] = kwargs.pop("quiet")
        try:
            return f(*args, **kwargs)
        finally:
            bar = ctx.meta.pop(_BAR, None)
            if bar is not None:
                bar.clear()

    return click.option("-q", "--quiet", is_flag=True,
                        help="No progress bar and no informational lines on stderr; the results, the files written "
                             "and errors still come out. (The bar is drawn only when stderr is a terminal.)")(command)
