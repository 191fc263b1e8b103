"""The distribution of err_onnx / err_torch over correct exports, and the margin by which faults fail.

This is the evidence behind ``k`` in the parity verdict (``docs/parity.md``):
a correct export's error against the float64 reference is about the size of
PyTorch fp32's own error, so ``err_onnx <= max(atol, k * err_torch)`` with a
small ``k`` passes it; a fault's ratio is orders of magnitude larger.

    python benchmarks/parity_ratio.py [--seeds 3] [--long-steps 10000] [--quick]

Grid: every architecture variant x layers 1-2 x bidirectional x both graph
forms x seeds, plus cells, plus LSTMs whose cell state grows to thousands
(forget gate held open), plus the whole models of tests/wholemodels.py.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import faults as F  # noqa: E402
import wholemodels as W  # noqa: E402

import edge_rnn  # noqa: E402
from edge_rnn.exporters import StreamingIO  # noqa: E402
from edge_rnn.exporters._references import (  # noqa: E402
    check_against_torch,
    input_source,
    layer_layouts,
    torch_reference,
)
from edge_rnn.exporters._spec import recurrent_spec  # noqa: E402
from edge_rnn.harness import TOLERANCE, Cases, read_contract  # noqa: E402
from edge_rnn.runtime._host import describe_host, host_record  # noqa: E402

LAYERS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
CELLS = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}
ARCHS = {"rnn_tanh": ("rnn", {}), "rnn_relu": ("rnn", {"nonlinearity": "relu"}), "lstm": ("lstm", {}),
         "lstm_proj": ("lstm", {"proj_size": 3}), "gru": ("gru", {})}


def configs(seeds: int, quick: bool, large_seeds: int = 20):
    forms = ["native", "decomposed"]
    for arch, layers, bidir, form, seed in itertools.product(ARCHS, [1, 2], [False, True], forms, range(seeds)):
        if quick and (layers == 2 or seed):
            continue
        kind, kw = ARCHS[arch]
        torch.manual_seed(seed)
        yield (f"{arch} L{layers}{' bidir' if bidir else ''}", form,
               LAYERS[kind](5, 7, num_layers=layers, bidirectional=bidir, **kw).eval(), {})
    for kind, form, seed in itertools.product(CELLS, forms, range(seeds)):
        torch.manual_seed(seed)
        yield f"{kind} cell", form, CELLS[kind](5, 7).eval(), {"long_steps": 2000}
    for hidden, form, seed in itertools.product([4, 7, 32], forms, range(1 if quick else large_seeds)):
        torch.manual_seed(seed)
        yield f"lstm large state H{hidden}", form, W.open_forget_gate(torch.nn.LSTM(5, hidden).eval(), hidden), {}
    for form in forms:
        yield "whole: keyword spotter", form, W.keyword_spotter().eval(), {"example_input": torch.randn(1, 50, 40)}
        yield ("whole: acoustic model", form, W.acoustic_model().eval(),
               {"example_input": torch.randn(50, 1, 40),
                "io": StreamingIO(input_axes={"x": (1, 0)}, output_axes={"y": (1, 0)})})
        torch.manual_seed(0)
        vad = W.VoiceActivity().eval()
        vad.cell = W.open_forget_gate(vad.cell, 32)
        yield ("whole: VAD, large state", form, vad,
               {"example_input": (torch.randn(1, 64, 8), torch.zeros(2, 1, 32)), "long_steps": 2000,
                "io": StreamingIO(states={"state": "new_state"}, input_names=("x", "state"),
                                  output_names=("prob", "new_state"), input_axes={"x": (0, None)},
                                  output_axes={"prob": (0, None)})})


class NoFloat64(torch.nn.Module):
    """A whole model that refuses float64, as one with an op lacking a double kernel does: forces the fallback."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, *rest: torch.Tensor):
        if x.dtype == torch.float64:
            raise RuntimeError("float64 switched off to measure the fallback")
        return self.inner(x, *rest)


def fallback_margin(module: torch.nn.Module, path: Path, long_steps: int, kw: dict | None = None) -> float:
    """The largest share of its bound any row uses when judged by the fallback (no float64): above 1 fails."""
    spec = recurrent_spec(module)
    if spec is None:  # a whole model: export it wrapped so that float64 fails
        kw = {k: v for k, v in (kw or {}).items() if k != "long_steps"}
        report = edge_rnn.export(NoFloat64(module), path.with_suffix(".fallback.onnx"), long_steps=long_steps,
                                 raise_on_failure=False, **kw)
        assert not report.parity.exact_reference
        return max(r.margin for r in report.parity.rows)
    contract = read_contract(path)

    def no_float64():
        raise RuntimeError("float64 switched off to measure the fallback")

    n = long_steps if contract.streamable else 0
    cases = Cases(batch=3, chunked_len=41 if contract.streamable else 0, long_steps=n)
    report = check_against_torch(path, contract, torch_reference(module, spec), no_float64,
                                 input_source(layer_layouts(contract, spec), None), cases=cases, seed=0,
                                 tolerance=TOLERANCE["float32"])
    return max(r.margin for r in report.rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--long-steps", type=int, default=10_000)
    ap.add_argument("--large-seeds", type=int, default=20, help="seeds of the large-state LSTMs (where k decides)")
    ap.add_argument("--quick", action="store_true", help="one seed, one layer: a smoke run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tol = TOLERANCE["float32"]
    ratios, decisive, per_config, worst_rows, typical = [], [], [], [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        for name, form, module, kw in configs(args.seeds, args.quick, args.large_seeds):
            kw = {"long_steps": args.long_steps, **kw}
            report = edge_rnn.export(module, path, decomposed=form == "decomposed", raise_on_failure=False, **kw)
            rows = [r for r in report.parity.rows if r.err_torch]
            rs = [r.ratio for r in rows]
            ratios += rs
            worst_rows.extend((r.ratio, name, form, r.case, r.tensor) for r in rows)
            typical += [r.typical[0] / r.typical[1] for r in report.parity.rows
                        if r.typical and tol.k * r.typical[1] > tol.atol]
            decisive += [r.ratio for r in rows if tol.k * r.err_torch > tol.atol]  # where k, not atol, decides
            per_config.append((name, form, report.parity.ok, max(rs, default=math.nan),
                               max(r.scale for r in report.parity.rows), report.parity.max_abs_error,
                               fallback_margin(module, path, kw["long_steps"], kw)))
    print(f"# machine: {describe_host(host_record())}")
    print(f"# {len(per_config)} exports, {len(ratios)} rows with err_torch > 0, {time.perf_counter() - t0:.0f} s")
    print(f"{'model':<28} {'form':<10} {'max ratio':>9} {'max |ref|':>9} {'max err':>9}  verdict  fallback margin")
    for name, form, ok, worst, scale, err, fb in per_config:
        print(f"{name:<28} {form:<10} {worst:>9.3g} {scale:>9.3g} {err:>9.2e}  {'ok' if ok else 'FAIL':<7}  {fb:.3g}")
    fbs = np.asarray([c[-1] for c in per_config if not math.isnan(c[-1])])
    print(f"fallback (no float64; |onnx - torch_fp32| <= atol + {TOLERANCE['float32'].rtol:g} |torch_fp32|): "
          f"largest share of the bound used by a correct export: {fbs.max():.3g} (median {np.median(fbs):.3g})")
    for label, xs in (("all rows", ratios), (f"rows where k decides (k*err_torch > {tol.atol:.0e})", decisive),
                      ("90th percentiles, rows where k decides", typical)):
        a = np.asarray(xs)
        if not a.size:
            continue
        q = np.percentile(a, [50, 90, 99, 100])
        print(f"ratio err_onnx/err_torch, {label}: n={a.size} median {q[0]:.2f} p90 {q[1]:.2f} p99 {q[2]:.2f} "
              f"max {q[3]:.2f}; above k={tol.k:g}: {(a > tol.k).sum()}")
    print("largest ratios:", ", ".join(f"{r:.2f} ({n}, {f}, {c} {t})" for r, n, f, c, t in sorted(worst_rows)[-5:]))
    print("\n# deliberate faults (native and decomposed): rows failing, and the largest err_onnx/bound")
    fault_margins()


def fault_margins() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f.onnx"
        for kind, form in itertools.product(["rnn", "lstm", "gru"], ["native", "decomposed"]):
            dec = form == "decomposed"
            torch.manual_seed(0)
            m = LAYERS[kind](5, 7).eval()
            cases = []
            if kind != "rnn":
                cases.append(("gates swapped", F.swap_gates(m, kind), None, m))
            cases.append(("bias off 1e-3", F.bias_off(m), None, m))
            cases.append(("state one step late", m, F.state_one_step_late, m))
            torch.manual_seed(0)
            mb = LAYERS[kind](5, 7, bidirectional=True).eval()
            cases.append(("reverse dir. wrong init", mb, F.reverse_gets_forward_init, mb))
            if kind == "lstm":
                torch.manual_seed(0)
                big = W.open_forget_gate(torch.nn.LSTM(5, 7).eval(), 7)
                cases.append(("bias off 1e-3, |c|~4e3", F.bias_off(big), None, big))
            for fault, exported, rewrite, reference in cases:
                edge_rnn.export(exported, path, decomposed=dec, verify_parity=False)
                if rewrite is not None:
                    rewrite(path)
                steps = 10_000 if "|c|" in fault else 2_000
                rep = edge_rnn.verify(reference, path, long_steps=steps, raise_on_failure=False)
                old = sum(not r.err_fp32 <= TOLERANCE["float32"].atol for r in rep.rows)
                worst = max(r.margin for r in rep.rows)
                fb = fallback_margin(reference, path, steps)
                print(f"{kind:<5} {form:<10} {fault:<24} new verdict fails {len(rep.failures):>2}/{len(rep.rows)} "
                      f"rows (old: {old:>2}), worst err_onnx/bound {worst:.3g}; fallback margin {fb:.3g}")


if __name__ == "__main__":
    main()
