"""``edge-rnn diagnose --demo``: train a vanilla RNN, an LSTM and a GRU on the memory task, export each, make its
int8 variant, and diagnose each trained model beside its two files. One copy, used by the CLI and the benchmark.

For each architecture, in turn:

1. :func:`~edge_rnn.demo._train.train` by the one recipe, then accuracy by lag on fresh seeded sequences;
2. the recurrent layer (the memory; the read-out head is a Linear) exported to streaming ONNX by
   :func:`edge_rnn.exporters.export`, parity-checked against PyTorch as ``edge-rnn export --data`` does, on task
   input;
3. its int8 variant made by :func:`edge_rnn.deploy.make_variant` (portable settings, as ``edge-rnn optimize
   --int8``), its error against the float32 file measured by :func:`edge_rnn.deploy.measure_against` on task
   input, and its accuracy by lag on the same sequences (streamed by the runtime, read by the same head);
4. :func:`edge_rnn.diagnostics.diagnose` on the recurrent layer, over task input (sequences at ``diag_lag`` end to
   end), with the export's and the int8 variant's memory curves beside PyTorch's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edge_rnn.demo._file_model import FileReadout
from edge_rnn.demo._task import task_sequence
from edge_rnn.demo._train import AccuracyByLag, TrainConfig, Trained, accuracy_by_lag, train
from edge_rnn.diagnostics import Diagnosis
from edge_rnn.errors import EdgeRnnError

__all__ = ["DemoConfig", "ArchResult", "DemoResult", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo does, seeded by ``train.seed``: what is trained, evaluated, checked and diagnosed."""

    train: TrainConfig = TrainConfig()
    archs: tuple[str, ...] = ("rnn", "lstm", "gru")
    eval_lags: tuple[int, ...] = (5, 10, 20, 50, 100)
    eval_n: int = 500
    diag_lag: int = 50  # the diagnosed sequence: task sequences at this lag, end to end
    diag_repeats: int = 6
    max_lag: int = 100  # of the gradient flow and the memory curves
    starts: int = 8
    check_steps: int = 2_000  # the export's long streaming check and the int8 variant's measured stream


@dataclass(frozen=True)
class ArchResult:
    """One architecture, trained, measured, exported, quantised and diagnosed."""

    arch: str
    trained: Trained
    accuracy: AccuracyByLag
    int8_accuracy: AccuracyByLag  # the int8 variant streamed by the runtime, read by the same head
    onnx: Path
    int8: Path
    int8_max_abs: float  # the int8 variant's largest output error against the float32 file
    int8_ok: bool  # within the int8 bound `edge-rnn optimize` keeps a variant by
    diagnosis: Diagnosis
    seconds: dict[str, float] = field(default_factory=dict)  # export, int8, diagnose


@dataclass(frozen=True)
class DemoResult:
    config: DemoConfig
    results: tuple[ArchResult, ...]
    machine: str  # the host line: CPU, ISA features, onnxruntime
    torch: str


def run_demo(config: DemoConfig, out: Path, log: Callable[[str], None] | None = None) -> DemoResult:
    """Run the demo, writing each architecture's ``memory_<arch>.onnx`` and ``memory_<arch>.int8.onnx`` to ``out``
    (an existing folder); ``log`` hears progress lines."""
    import torch

    from edge_rnn.runtime._host import describe_host, host_record

    out = Path(out)
    if not out.is_dir():
        raise EdgeRnnError(f"demo: expected an existing folder to write the models in, got {out}")
    say = log or (lambda _m: None)
    results = tuple(_one(arch, config, out, say) for arch in config.archs)
    return DemoResult(config, results, describe_host(host_record()), torch.__version__)


def _one(arch: str, c: DemoConfig, out: Path, say: Callable[[str], None]) -> ArchResult:
    from edge_rnn.deploy import make_variant, measure_against
    from edge_rnn.diagnostics import diagnose
    from edge_rnn.exporters import export

    trained = train(arch, c.train, log=say)
    accuracy = accuracy_by_lag(trained.model, c.train.task, c.eval_lags, n=c.eval_n, seed=c.train.seed + 1,
                               label=arch)
    say(f"{arch}: trained in {trained.seconds:.1f} s; accuracy by lag "
        + ", ".join(f"{k}: {a:.2f}" for k, a in zip(accuracy.lags, accuracy.accuracy)))
    seconds = {}
    t0 = time.perf_counter()
    # the parity check and the int8 error on the task's input (one-hot symbols, marks, queries): random normal input,
    # far from anything the model was trained on, drives a trained latching memory into chaos, where float32 itself
    # departs from float64 along a long stream
    stream = [task_sequence(c.train.task, c.diag_lag, c.check_steps // (c.diag_lag + c.train.task.margin) + 1,
                            c.train.seed + 3)]
    onnx_path = out / f"memory_{arch}.onnx"
    export(trained.model.rnn, onnx_path, long_steps=c.check_steps, seed=c.train.seed, data=stream,
           extra_source={"demo": "delayed recall", "seed": c.train.seed})
    seconds["export"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    int8_path = out / f"memory_{arch}.int8.onnx"
    make_variant("int8", onnx_path, int8_path)
    error = measure_against(int8_path, onnx_path, steps=c.check_steps, data=stream)
    int8_accuracy = accuracy_by_lag(FileReadout(int8_path, trained.model.head), c.train.task, c.eval_lags,
                                    n=c.eval_n, seed=c.train.seed + 1, label=f"{arch} int8")
    seconds["int8"] = time.perf_counter() - t0
    say(f"{arch}: exported to {onnx_path} and {int8_path}; diagnosing")
    t0 = time.perf_counter()
    x = task_sequence(c.train.task, c.diag_lag, c.diag_repeats, c.train.seed + 2)
    d = diagnose(trained.model.rnn, x, max_lag=c.max_lag, starts=c.starts, compare=[onnx_path, int8_path],
                 seed=c.train.seed, source=f"{arch}, trained on delayed recall")
    seconds["diagnose"] = time.perf_counter() - t0
    y = next(t for t in error.tensors if t.kind == "output")
    return ArchResult(arch, trained, accuracy, int8_accuracy, onnx_path, int8_path, y.max_abs, error.ok, d, seconds)
