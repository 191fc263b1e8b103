"""The memory demo: a delayed-recall task that a vanilla RNN, an LSTM and a GRU of one size are trained on (CPU,
seeded), then exported, quantised to int8 and diagnosed, so the diagnostics show trained memories.

``edge-rnn diagnose --demo`` and ``benchmarks/memory_task.py`` run :func:`run_demo`. The task
(:mod:`~edge_rnn.demo._task`) is numpy only; training and the orchestration need torch and onnx (the ``export``
extra), imported when first used, so that ``import edge_rnn.demo`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "MemoryTask": "_task", "TaskBatch": "_task", "task_batch": "_task", "task_sequence": "_task",
    "RecallModel": "_model", "ARCHS": "_model",
    "TrainConfig": "_train", "Trained": "_train", "AccuracyByLag": "_train", "train": "_train",
    "accuracy_by_lag": "_train",
    "DemoConfig": "_run", "ArchResult": "_run", "DemoResult": "_run", "run_demo": "_run",
    "demo_table": "_table",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
