"""The delayed-recall memory task (numpy only): remember one marked symbol across ``lag`` steps of distractors.

Every step carries a one-hot symbol out of ``symbols`` (distractors, all of them
random). One step early in the sequence (within the first ``margin`` steps) also
sets the *mark* channel: its symbol is the one to remember. Exactly ``lag`` steps
later the *query* channel is set, and the model's output there must name the
marked symbol; chance is ``1 / symbols``. Inputs are ``(time, batch, symbols + 2)``
float32: channels ``0 .. symbols - 1`` the one-hot symbol, ``symbols`` the mark,
``symbols + 1`` the query. A batch has one lag, so its sequences share one length,
``lag + margin``.

Nothing but the marked step and the query step matters, so a model that answers
right at long lags holds what it read ``lag`` steps back in its state, through
``lag`` steps of input that it must ignore: the setting of Hochreiter and
Schmidhuber (1997) and of Bengio et al. (1994).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_rnn.errors import ShapeError

__all__ = ["MemoryTask", "TaskBatch", "task_batch", "task_sequence"]


@dataclass(frozen=True)
class MemoryTask:
    """The task's shape: ``symbols`` to remember one of, the ``margin`` of steps the mark falls in."""

    symbols: int = 8
    margin: int = 10

    def __post_init__(self) -> None:
        if self.symbols < 2 or self.margin < 1:
            raise ShapeError(f"memory task: expected symbols >= 2 and margin >= 1, got symbols={self.symbols}, "
                             f"margin={self.margin}")

    @property
    def features(self) -> int:
        """Input width: the one-hot symbol, the mark and the query channels."""
        return self.symbols + 2

    @property
    def chance(self) -> float:
        return 1.0 / self.symbols


@dataclass(frozen=True)
class TaskBatch:
    """``x`` (time, batch, features) float32; ``mark`` and ``query`` (batch,) the steps of the mark and the query
    (``query = mark + lag``); ``target`` (batch,) the marked symbol, the answer at the query step."""

    x: np.ndarray
    mark: np.ndarray
    query: np.ndarray
    target: np.ndarray
    lag: int


def task_batch(task: MemoryTask, lag: int, batch: int, rng: np.random.Generator) -> TaskBatch:
    """``batch`` sequences of the task at ``lag``, drawn from ``rng`` (the same generator state, the same batch)."""
    if lag < 1 or batch < 1:
        raise ShapeError(f"memory task: expected lag >= 1 and batch >= 1, got lag={lag}, batch={batch}")
    steps = lag + task.margin
    symbols = rng.integers(0, task.symbols, size=(steps, batch))
    mark = rng.integers(0, task.margin, size=batch)
    query = mark + lag
    cols = np.arange(batch)
    x = np.zeros((steps, batch, task.features), np.float32)
    x[np.arange(steps)[:, None], cols[None], symbols] = 1.0
    x[mark, cols, task.symbols] = 1.0
    x[query, cols, task.symbols + 1] = 1.0
    return TaskBatch(x, mark, query, symbols[mark, cols], lag)


def task_sequence(task: MemoryTask, lag: int, repeats: int, seed: int) -> np.ndarray:
    """One long sequence ``(repeats * (lag + margin), features)``: ``repeats`` task sequences at ``lag`` end to end,
    the input the diagnostics look at (what the model sees in use: distractors, marks and queries)."""
    b = task_batch(task, lag, repeats, np.random.default_rng(seed))
    return np.ascontiguousarray(b.x.transpose(1, 0, 2).reshape(-1, task.features))
