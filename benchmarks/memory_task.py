"""The memory demo as a benchmark: accuracy by lag of a vanilla RNN, an LSTM and a GRU trained on delayed recall.

    python benchmarks/memory_task.py [--seed 0] [--plot docs/diagnose_demo.png] [--out DIR] [--no-curriculum]

The same run as `edge-rnn diagnose --demo` (edge_rnn.demo.run_demo, the configuration of
edge_rnn.demo._config.demo_config): each architecture trained on the CPU by one recipe (one thread), evaluated at
lags 5 to 100 on fresh seeded sequences, exported, quantised to int8 and diagnosed. Prints the table (accuracy by
lag beside the memory horizons and the memory curves' 1/e points), the seconds each stage took per model, the
load average of the machine before and after (training times are wall clock: a loaded machine slows them), and
the machine line (CPU, ISA features, onnxruntime). --no-curriculum trains on every lag from the first step (the
classical setting), to see what the curriculum does, and prints accuracy by lag only (no export: an LSTM trained
so, whose cell state grows along a 2,000-step stream, fails the exporter's long parity check).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from edge_rnn.demo import demo_table, run_demo  # noqa: E402
from edge_rnn.demo._config import demo_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", type=Path, default=None, help="also draw the figure here (needs matplotlib)")
    ap.add_argument("--out", type=Path, default=None, help="keep the exported models here")
    ap.add_argument("--no-curriculum", action="store_true", help="every lag from the first step")
    args = ap.parse_args()
    config = demo_config()
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, seed=args.seed,
                                                                   curriculum=not args.no_curriculum))
    load_before = os.getloadavg()
    if args.no_curriculum:
        _accuracy_only(config)
        print(f"load average before {_load(load_before)}, after {_load(os.getloadavg())} on {os.cpu_count()} CPUs")
        return
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        result = run_demo(config, out, log=lambda m: print(f"  {m}", flush=True) if "step " not in m else None)
    total = time.perf_counter() - t0
    print()
    print("\n".join(demo_table(result)))
    print(f"{'arch':<5} {'train s':>8} {'export s':>9} {'int8 s':>7} {'diagnose s':>11}")
    for r in result.results:
        s = r.seconds
        print(f"{r.arch:<5} {r.trained.seconds:8.1f} {s['export']:9.1f} {s['int8']:7.1f} {s['diagnose']:11.1f}")
    print(f"total {total:.0f} s; load average (1, 5, 15 min) before {_load(load_before)}, after "
          f"{_load(os.getloadavg())} on {os.cpu_count()} CPUs")
    if args.plot is not None:
        from edge_rnn.demo._figure import demo_figure

        print(f"wrote {demo_figure(result, args.plot)}")


def _accuracy_only(config) -> None:
    """Train each architecture and print its accuracy by lag, its training time and the machine."""
    from edge_rnn.demo import accuracy_by_lag, train
    from edge_rnn.runtime._host import describe_host, host_record

    t = config.train
    print(f"{'arch':<5} " + " ".join(f"{'lag ' + str(k):>7}" for k in config.eval_lags) + f"  {'train s':>7}  kept")
    for arch in config.archs:
        trained = train(arch, t)
        acc = accuracy_by_lag(trained.model, t.task, config.eval_lags, n=config.eval_n, seed=t.seed + 1)
        print(f"{arch:<5} " + " ".join(f"{a:7.3f}" for a in acc.accuracy) + f"  {trained.seconds:7.1f}  step "
              f"{trained.best_step} (validation {trained.best_score:.2f}, last {trained.final_score:.2f})", flush=True)
    print(f"every lag {t.min_lag}..{t.max_lag} from the first step; hidden {t.hidden}, {t.steps} steps, seed {t.seed}; "
          f"chance {t.task.chance:.3f}")
    print(f"machine: {describe_host(host_record())}")


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in avg)


if __name__ == "__main__":
    main()
