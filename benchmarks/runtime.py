"""Runtime benchmark on the demo LSTM (input 80, hidden 256, 2 layers, fp32, one thread).

Everything is measured side by side in one run, in alternating rounds, so the
machine's noise hits every contender alike; the ratios are what to read.

    python benchmarks/runtime.py [--rounds 20] [--seconds 0.6]

(a) single stream, one time step per call: torch eager nn.LSTM, a naive
    onnxruntime loop (session.run with fresh numpy feeds), edge-rnn step, and
    the weight-streaming floor (the same weights, one numpy matmul per layer);
(b) step_batch over N = 1, 8, 64, 256 streams against N naive calls;
(c) chunk lengths 1, 10, 32;
and the runtime's overhead over a bare session.run on the same batch.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import edge_rnn  # noqa: E402
from edge_rnn.runtime import SessionConfig, StreamingModel  # noqa: E402
from edge_rnn.runtime._host import describe_host, host_record  # noqa: E402
from edge_rnn.runtime.bench import bench, format_table, random_chunk  # noqa: E402

IN, HID, LAYERS = 80, 256, 2


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, np.ndarray]:
    """Per-call times of each function, measured in alternating rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():  # warm up
        for _ in range(20):
            f()
    for _ in range(rounds):
        for k, f in fns.items():
            for _ in range(calls):
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    return {k: np.asarray(v) for k, v in times.items()}


def single_stream(paths: dict[str, Path], lstm: torch.nn.LSTM, rounds: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((4096, 1, IN)).astype(np.float32)
    fns: dict[str, Callable[[], object]] = {}

    # torch eager, state carried
    tx = torch.from_numpy(xs)
    th = [torch.zeros(LAYERS, 1, HID), torch.zeros(LAYERS, 1, HID)]
    ti = [0]

    def torch_step() -> None:
        with torch.no_grad():
            _, (h, c) = lstm(tx[ti[0] % 4096 : ti[0] % 4096 + 1], (th[0], th[1]))
        th[0], th[1] = h, c
        ti[0] += 1

    fns["torch eager nn.LSTM"] = torch_step

    for form, path in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        state = {"h0": np.zeros((LAYERS, 1, HID), np.float32), "c0": np.zeros((LAYERS, 1, HID), np.float32)}
        k = [0]

        def naive(sess=sess, state=state, k=k) -> None:
            i = k[0] % 4096
            _, h, c = sess.run(None, {"x": xs[i : i + 1].copy(), "h0": state["h0"], "c0": state["c0"]})
            state["h0"], state["c0"] = h, c
            k[0] += 1

        model = StreamingModel.load(path, session=SessionConfig(threads=1))
        stream = model.open_stream()
        j = [0]

        def step(model=model, stream=stream, j=j) -> None:
            model.step(stream, xs[j[0] % 4096])
            j[0] += 1

        fns[f"naive onnxruntime loop ({form})"] = naive
        fns[f"edge-rnn step ({form})"] = step

    # the floor: the same weights streamed once per step, one numpy matmul per layer
    w = [np.concatenate([getattr(lstm, f"weight_ih_l{k}").detach().numpy(),
                         getattr(lstm, f"weight_hh_l{k}").detach().numpy()], axis=1) for k in range(LAYERS)]
    w_kn = [np.ascontiguousarray(m.T) for m in w]  # (in + hidden, 4H): row vector @ matrix
    v = [rng.standard_normal((1, m.shape[0])).astype(np.float32) for m in w_kn]
    u = [rng.standard_normal(m.shape[1]).astype(np.float32) for m in w]

    def floor_vm() -> None:
        for vec, m in zip(v, w_kn):
            vec @ m

    def floor_mv() -> None:
        for m, vec in zip(w, u):
            m @ vec

    fns["floor: numpy x @ W per layer"] = floor_vm
    fns["floor: numpy W @ x per layer (gemv)"] = floor_mv
    return interleaved(fns, rounds, 100)


def overhead_same_batch(path: Path, streams: tuple[int, ...], rounds: int) -> list[tuple[int, float, float, float]]:
    """step / step_batch against a bare session.run on feeds already stacked (the same batch): the same streams
    in the same order each call, and in a new order each call (each state gathered from its row)."""
    model = StreamingModel.load(path, session=SessionConfig(threads=1))
    rng = np.random.default_rng(1)
    out = []
    for n in streams:
        items = [(model.open_stream(), random_chunk(model, 1, rng)) for _ in range(n)]
        orders = [[items[i] for i in rng.permutation(n)] for _ in range(8)]
        turn = [0]

        def shuffled(orders=orders, turn=turn) -> None:
            turn[0] += 1
            model.step_batch(orders[turn[0] % 8])

        feeds = {"x": np.concatenate([x["x"][:, None] for _, x in items], axis=1),
                 "h0": np.zeros((LAYERS, n, HID), np.float32), "c0": np.zeros((LAYERS, n, HID), np.float32)}
        fns = {"bare": partial(model.session.run, None, feeds), "ours": partial(model.step_batch, items),
               "shuffled": shuffled}
        t = interleaved(fns, rounds, max(2, 200 // n))
        out.append((n, *(float(np.median(t[k])) * 1e3 for k in fns)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=0.6, help="per row of the throughput tables")
    ap.add_argument("--only-overhead", action="store_true", help="only the overhead over a bare session.run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(IN, HID, num_layers=LAYERS).eval()
    d = Path(tempfile.mkdtemp())
    paths = {}
    for form in ("native", "decomposed"):
        paths[form] = d / f"demo_{form}.onnx"
        edge_rnn.export(lstm, paths[form], decomposed=form == "decomposed", verify_parity=False)
    print(f"# machine: {describe_host(host_record())}")
    print(f"# torch {torch.__version__}, numpy {np.__version__}; one thread everywhere")
    print(f"# demo LSTM: input {IN}, hidden {HID}, {LAYERS} layers, fp32\n")

    if args.only_overhead:
        return overhead(paths, args.rounds)
    print("## (a) single stream, one time step per call")
    t = single_stream(paths, lstm, args.rounds)
    floor = min(float(np.median(t[k])) for k in t if k.startswith("floor"))
    print(f"{'':<38} {'p50 us':>8} {'p99 us':>8} {'x floor':>8}")
    for k, v in t.items():
        p50, p99 = np.median(v) * 1e6, np.percentile(v, 99) * 1e6
        print(f"{k:<38} {p50:>8.1f} {p99:>8.1f} {p50 / (floor * 1e6):>7.2f}x")
    med = {k: float(np.median(v)) for k, v in t.items()}
    for form in paths:
        s = med[f"edge-rnn step ({form})"]
        print(f"{form}: step / floor {s / floor:.2f}x (target <= 1.3x); torch eager / step "
              f"{med['torch eager nn.LSTM'] / s:.1f}x (target >= 8x); step / naive loop "
              f"{s / med[f'naive onnxruntime loop ({form})']:.2f}x")

    for form, path in paths.items():
        model = StreamingModel.load(path, session=SessionConfig(threads=1))
        print(f"\n## (b, c) step_batch vs one naive session.run per stream, chunks 1/10/32 ({form})")
        rows = bench(model, streams=(1, 8, 64, 256), chunks=(1, 10, 32), seconds=args.seconds)
        print(format_table(rows))
        r256 = next(r for r in rows if r.streams == 256 and r.chunk == 1)
        print(f"256 streams, chunk 1: step_batch costs {1 / r256.speedup:.2f} of 256 naive calls (target <= 0.25)")

    overhead(paths, args.rounds)


def overhead(paths: dict[str, Path], rounds: int) -> None:
    for form, path in paths.items():
        print(f"\n## runtime overhead over a bare session.run on the same batch, chunk 1 ({form})")
        print(f"{'streams':>7} {'bare ms':>9} {'edge-rnn ms':>12} {'overhead':>9} {'new order ms':>13} {'overhead':>9}")
        for n, bare, ours, shuffled in overhead_same_batch(path, (1, 8, 64, 256), max(4, rounds // 2)):
            print(f"{n:>7} {bare:>9.3f} {ours:>12.3f} {100 * (ours / bare - 1):>8.1f}% {shuffled:>13.3f} "
                  f"{100 * (shuffled / bare - 1):>8.1f}%")


if __name__ == "__main__":
    main()
