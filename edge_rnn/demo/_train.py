"""Training on the memory task and accuracy by lag (torch), one recipe for every architecture.

The recipe: Adam, gradient norm clipped, a batch of one lag drawn uniformly from ``min_lag .. top``, where ``top``
(the curriculum) starts at ``min_lag`` and grows by a quarter whenever the running training accuracy passes
``advance_at``, up to ``max_lag`` (``curriculum=False``: every lag from the first step, the classical setting in
which Bengio et al. (1994) showed gradient descent failing). Every ``check_every`` steps the model is scored on a
validation set (its own seed, lags spread over ``min_lag .. max_lag``, never the evaluation's data) and the best
parameters are kept: a vanilla RNN's training can collapse once the curriculum outruns it, and its best point is
what it can do.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edge_rnn.demo._model import RecallModel
from edge_rnn.demo._task import MemoryTask, task_batch

__all__ = ["TrainConfig", "Trained", "AccuracyByLag", "train", "accuracy_by_lag"]


@dataclass(frozen=True)
class TrainConfig:
    """How each architecture is trained (the same for all); ``seed`` draws the init, the batches and the lags."""

    task: MemoryTask = MemoryTask()
    hidden: int = 64
    steps: int = 1500
    batch: int = 64
    lr: float = 3e-3
    clip: float = 1.0
    min_lag: int = 5
    max_lag: int = 100
    advance_at: float = 0.9
    curriculum: bool = True
    check_every: int = 100
    check_lags: int = 8  # validation lags, evenly spread over min_lag .. max_lag
    check_batch: int = 64
    seed: int = 0


@dataclass(frozen=True)
class Trained:
    """A trained model and how it got there: ``seconds`` of training (wall clock, validation included), the
    curriculum's ``top`` lag at the end, the ``best_step`` whose parameters were kept (its validation score), and
    the validation score of the last step (below the best where training fell back)."""

    arch: str
    model: RecallModel
    seconds: float
    steps: int
    top: int
    best_step: int
    best_score: float
    final_score: float


@dataclass(frozen=True)
class AccuracyByLag:
    """The share of query steps answered right, per lag, on ``n`` fresh sequences per lag (seeded)."""

    label: str
    lags: tuple[int, ...]
    accuracy: tuple[float, ...]
    n: int
    chance: float


def _score(model: RecallModel, task: MemoryTask, lags: Sequence[int], n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    out = []
    with torch.no_grad():
        for lag in lags:
            b = task_batch(task, int(lag), n, rng)
            logits = model(torch.from_numpy(b.x), torch.from_numpy(b.query))
            out.append(float((logits.argmax(1).numpy() == b.target).mean()))
    return out


def accuracy_by_lag(model: Callable, task: MemoryTask, lags: Sequence[int] = (5, 10, 20, 50, 100), *,
                    n: int = 500, seed: int = 1, label: str = "model") -> AccuracyByLag:
    """Accuracy at each lag of ``model`` (called as ``model(x, query) -> logits (batch, symbols)``, torch tensors
    in) on ``n`` sequences per lag drawn from ``seed``."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    acc = _score(model, task, lags, n, seed)
    return AccuracyByLag(label, tuple(int(v) for v in lags), tuple(acc), n, task.chance)


def train(arch: str, config: TrainConfig = TrainConfig(), log: Callable[[str], None] | None = None) -> Trained:
    """Train a :class:`RecallModel` of ``arch`` ("rnn", "lstm" or "gru") on the task by ``config``'s recipe, on
    one CPU thread (faster than two for a layer this small, and reproducible run to run on one machine; another
    CPU's kernels round differently and can train a slightly different model)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(arch, config, log or (lambda _m: None))
    finally:
        torch.set_num_threads(threads)


def _train(arch: str, c: TrainConfig, log: Callable[[str], None]) -> Trained:
    torch.manual_seed(c.seed)
    model = RecallModel(arch, c.task.features, c.hidden, c.task.symbols)
    opt = torch.optim.Adam(model.parameters(), lr=c.lr)
    rng = np.random.default_rng(c.seed)
    check_lags = np.linspace(c.min_lag, c.max_lag, c.check_lags).round().astype(int)
    top, running, last = (c.min_lag if c.curriculum else c.max_lag), 0.0, 0.0
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    t0 = time.perf_counter()
    for step in range(1, c.steps + 1):
        model.train()
        b = task_batch(c.task, int(rng.integers(c.min_lag, top + 1)), c.batch, rng)
        logits = model(torch.from_numpy(b.x), torch.from_numpy(b.query))
        target = torch.from_numpy(b.target)
        loss = torch.nn.functional.cross_entropy(logits, target)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip)
        opt.step()
        running = 0.9 * running + 0.1 * float((logits.argmax(1) == target).float().mean())
        if running > c.advance_at and top < c.max_lag:
            top, running = min(c.max_lag, math.ceil(top * 1.25)), 0.0
        if step % c.check_every == 0 or step == c.steps:
            model.eval()
            score = last = float(np.mean(_score(model, c.task, check_lags, c.check_batch, c.seed + 10_000)))
            if score > best[0]:
                best = (score, step, copy.deepcopy(model.state_dict()))
            log(f"{arch}: step {step}/{c.steps}, lags up to {top}, validation accuracy {score:.2f} "
                f"({time.perf_counter() - t0:.0f} s)")
    seconds = time.perf_counter() - t0
    model.load_state_dict(best[2])
    return Trained(arch, model.eval(), seconds, c.steps, top, best[1], best[0], last)
