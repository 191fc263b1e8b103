"""How long work says how far it has got: one callback type, for every layer of the package.

A long function (the parity check's streams, a diagnosis, a bundle's variants) takes an optional
keyword-only ``progress``, called as ``progress(stage, done, total)``: ``done`` of ``total`` units of the
whole call are finished, and ``stage`` names the work under way. ``done`` never decreases and the last call
has ``done == total``. What a unit is (a streamed step, a finished stage) is the function's own; a caller
shows a fraction. None, the default, reports nothing and costs nothing. The library never prints: drawing a
bar is the command line's (``edge_rnn/cli/_progress.py``).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "Ticker", "part"]

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; see the module docstring."""


class Ticker:
    """Counts ``total`` units of work and reports each advance to ``progress`` (None: counts only).

        >>> seen = []
        >>> t = Ticker(lambda *a: seen.append(a), 3, "gates")
        >>> t.advance(2, "memory"); t.advance(1)
        >>> seen
        [('gates', 0, 3), ('memory', 2, 3), ('memory', 3, 3)]
    """

    def __init__(self, progress: Progress | None, total: int, stage: str) -> None:
        self.progress, self.total, self.stage, self.done = progress, total, stage, 0
        if progress is not None:
            progress(stage, 0, total)

    def advance(self, units: int = 1, stage: str | None = None) -> None:
        """``units`` more are finished; ``stage``, when given, names what comes next."""
        self.done = min(self.total, self.done + units)
        self.stage = stage or self.stage
        if self.progress is not None:
            self.progress(self.stage, self.done, self.total)

    def part(self, width: int, stage: str | None = None) -> Progress | None:
        """The Progress of the next ``width`` units, done by a callee that reports its own fraction (:func:`part`,
        under ``stage`` when given, else the callee's); :meth:`advance` by ``width`` when it returns."""
        return part(self.progress, self.done, width, self.total, stage)


def part(progress: Progress | None, first: int, width: int, total: int, stage: str | None = None
         ) -> Progress | None:
    """The Progress of one part of a larger job of ``total`` units that covers ``first .. first + width``: the
    part's ``(stage, done, of)`` is reported as ``(stage, first + done * width // of, total)`` (under ``stage``
    when given). None for None."""
    if progress is None:
        return None

    def report(own: str, done: int, of: int) -> None:
        progress(stage or own, first + (done * width // of if of else width), total)

    return report
