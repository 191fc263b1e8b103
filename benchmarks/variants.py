"""Deployment variants of the demo LSTM and GRU (input 80, hidden 256, 2 layers): size, speed and error.

    python benchmarks/variants.py [--rounds 15] [--steps 10000]

For each architecture: fp32, int8, fp16, static and static-int8, made as `edge-rnn optimize` makes them (static-int8
calibrated on random input). Speed is the median
single-stream, one-step `step` latency, measured side by side in alternating rounds (one thread), so the
machine's noise hits every variant alike: read the ratios. Error is against fp32 over a random stream of
--steps steps in random chunks with the states carried (edge_rnn.deploy.measure_against).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import edge_rnn  # noqa: E402
from edge_rnn._variant_kinds import REFERENCE  # noqa: E402
from edge_rnn.deploy import VARIANTS, Int8Settings, make_variant, measure_against, mobile_support  # noqa: E402
from edge_rnn.runtime import SessionConfig, StreamingModel  # noqa: E402


def step_times(paths: dict[str, Path], rounds: int, per_round: int = 300) -> dict[str, float]:
    models = {k: StreamingModel.load(p, session=SessionConfig(threads=1)) for k, p in paths.items()}
    streams = {k: m.open_stream() for k, m in models.items()}
    x = np.random.default_rng(0).standard_normal((1, 80)).astype(np.float32)
    samples: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(rounds):
        for k, m in models.items():  # alternating: every variant sees the same moments of the machine
            for _ in range(per_round):
                t = time.perf_counter()
                m.step(streams[k], x)
                samples[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=10_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from edge_rnn.runtime._host import describe_host, host_record, int8_kernel

    here = host_record()
    print(f"{describe_host(here)}; int8 kernel {int8_kernel(here['features'])}; one thread; error over "
          f"{args.steps:,} steps; int8 settings: {Int8Settings().describe()}")
    print(f"{'model':<6} {'variant':<11} {'size':>9} {'x fp32':>7} {'step us':>8} {'x faster':>8} "
          f"{'max err y':>10} {'max err state':>13} {'growth':>7}  NPU: nodes run by NNAPI / CoreML NN / MLProgram")
    with tempfile.TemporaryDirectory() as tmp:
        for kind, cls in (("LSTM", torch.nn.LSTM), ("GRU", torch.nn.GRU)):
            torch.manual_seed(0)
            fp32 = Path(tmp) / f"{kind}.onnx"
            edge_rnn.export(cls(80, 256, num_layers=2).eval(), fp32, long_steps=0)
            paths = {REFERENCE: fp32}
            for v in VARIANTS:  # every variant of the variant table
                paths[v] = make_variant(v, fp32, Path(tmp) / f"{kind}.{v}.onnx").path
            times = step_times(paths, args.rounds)
            for v, p in paths.items():
                size = p.stat().st_size
                if v == REFERENCE:
                    err_y = err_s = growth = "-"
                else:
                    e = measure_against(p, fp32, steps=args.steps)
                    err_y = f"{max(t.max_abs for t in e.tensors if t.kind == 'output'):.2e}"
                    err_s = f"{max(t.max_abs for t in e.tensors if t.kind == 'state'):.2e}"
                    growth = f"{max(t.growth for t in e.tensors):.2f}"
                npu = " / ".join(f"{s.supported}/{s.nodes}" for s in mobile_support(p))
                print(f"{kind:<6} {v:<11} {size / 1024:7.0f}Ki {size / fp32.stat().st_size:7.3f} "
                      f"{times[v] * 1e6:8.1f} {times[REFERENCE] / times[v]:8.2f} {err_y:>10} {err_s:>13} {growth:>7}  "
                      f"{npu}")


if __name__ == "__main__":
    main()
