"""Export time of the demo LSTM (input 80, hidden 256, 2 layers), both graph forms.

Prints the first export in a fresh process (cold: lazy imports and first-use
costs included) and the median and p90 of the next ones (warm), measured
side by side in one run. Verification is not included (``verify_parity=False``):
it is timed separately in its own line.

    python benchmarks/export_time.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import edge_rnn
from edge_rnn.runtime._host import describe_host, host_record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(80, 256, num_layers=2).eval()
    out = Path(tempfile.mkdtemp()) / "lstm.onnx"
    print(f"machine: {describe_host(host_record())}")
    print(f"torch {torch.__version__}, LSTM(80, 256, num_layers=2), {sum(p.numel() for p in lstm.parameters()):,} "
          "parameters; export = build graph + onnx.checker full_check + write file")
    print(f"{'form':<12} {'cold ms':>8} {'warm p50 ms':>12} {'warm p90 ms':>12}")
    for form in ("native", "decomposed"):
        times = []
        for _ in range(args.repeat + 1):
            r = edge_rnn.export(lstm, out, decomposed=form == "decomposed", verify_parity=False)
            times.append(r.export_seconds * 1e3)
        warm = sorted(times[1:])
        print(f"{form:<12} {times[0]:>8.1f} {statistics.median(warm):>12.1f} {warm[int(0.9 * len(warm))]:>12.1f}")
    t = time.perf_counter()
    report = edge_rnn.verify(lstm, out)
    print(f"verify (decomposed, incl. 10,000-step stream): {time.perf_counter() - t:.1f} s, "
          f"max abs error {report.max_abs_error:.2e}")


if __name__ == "__main__":
    main()
