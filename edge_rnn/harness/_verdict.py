"""The parity verdict: the one per-dtype tolerance table, the rule that uses it, and the report rows.

A candidate (an ONNX model run by onnxruntime) is judged against an exact
reference (the PyTorch module run in float64), next to the rounding noise
that the candidate's own precision brings on the same inputs (the PyTorch
module run in float32 against the same float64 reference)::

    err_onnx  = max |onnx_fp32  - reference_fp64|
    err_torch = max |torch_fp32 - reference_fp64|
    pass  <=>  err_onnx <= max(atol, k * err_torch), at the largest element and at the 90th percentile

``atol`` is the floor below which nothing is judged; ``k`` says how much
worse than PyTorch's own fp32 result the candidate may be. ``docs/parity.md``
gives the measured distribution of ``err_onnx / err_torch`` that ``k`` rests
on. Integer and boolean outputs are compared exactly, except where fp32 itself
differs from float64. Where no float64 reference can run, the candidate is
compared with the float32 result, element by element:
``|onnx - torch| <= atol + rtol * |torch|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_rnn.errors import ParityError

__all__ = ["Tolerance", "TOLERANCE", "ParityRow", "ParityReport", "judge", "raise_failures"]


@dataclass(frozen=True)
class Tolerance:
    """How far a candidate may be from the reference, for one dtype of the exported graph."""

    atol: float  # the floor: an error below it passes whatever the reference's own noise
    k: float  # an error up to k times the fp32 reference's own error (against float64) passes
    rtol: float  # without a float64 reference: |got - ref| <= atol + rtol * |ref|, element by element

    def describe(self, exact: bool) -> str:
        if exact:
            return f"pass when err_onnx <= max({self.atol:.0e}, {self.k:g} x err_torch)"
        return f"pass when |onnx - torch_fp32| <= {self.atol:.0e} + {self.rtol:.0e} x |torch_fp32| everywhere"


# One table for the whole project.
TOLERANCE: dict[str, Tolerance] = {
    # k: err_onnx / err_torch over 1,300 rows where k decides reached 8.7 (docs/parity.md)
    "float32": Tolerance(atol=1e-5, k=10.0, rtol=1e-4),
    # Deployment variants against their float32 model, element by element over a 10,000-step stream with the
    # state carried (edge_rnn.deploy; no float64 reference, so k is unused). Measured worst on the demo LSTM and
    # GRU (80 -> 256 x 2), random input: float16 3.9e-4, int8 7.7e-3 (docs/performance.md); the bounds leave
    # about 5x for other weights and data.
    "float16": Tolerance(atol=2e-3, k=10.0, rtol=1e-2),
    "int8": Tolerance(atol=5e-2, k=10.0, rtol=5e-2),
}


@dataclass(frozen=True)
class ParityRow:
    """One tensor of one case at one onnxruntime optimisation level.

    ``err_torch`` is None when there was no float64 reference (then the
    reference is PyTorch float32 and ``err_onnx`` is measured against it).
    ``err_fp32`` is the error against PyTorch float32 whatever the reference:
    the number edge-rnn judged on before float64 references.
    """

    case: str
    opt_level: str
    tensor: str
    err_onnx: float
    err_torch: float | None
    scale: float  # max |reference|
    bound: float  # the largest err_onnx that passes (the fallback's bound at the largest |reference|)
    passed: bool
    err_fp32: float
    detail: str = ""  # why a row failed other than by its numbers (a shape that differs)
    worst_fraction: float | None = None  # fallback only: max |got - ref| / (atol + rtol * |ref|) over the elements
    # the 90th percentiles of |onnx - ref| and |torch - ref|, and the bound on the first
    typical: tuple[float, float, float] | None = None

    @property
    def ok(self) -> bool:
        return self.passed

    @property
    def ratio(self) -> float:
        """err_onnx / err_torch (inf when PyTorch fp32 is exact and ONNX is not; nan without float64)."""
        if self.err_torch is None:
            return math.nan
        if self.err_torch == 0:
            return 0.0 if self.err_onnx == 0 else math.inf
        return self.err_onnx / self.err_torch

    @property
    def max_rel(self) -> float:
        return self.err_onnx / self.scale if self.scale else self.err_onnx

    # the names rows had before float64 references
    @property
    def max_abs(self) -> float:
        return self.err_onnx

    @property
    def tolerance(self) -> float:
        return self.bound

    @property
    def margin(self) -> float:
        """How much of its bound a row uses: above 1 fails. err_onnx / bound, or element-wise in the fallback."""
        if math.isnan(self.err_onnx):
            return math.inf
        if self.worst_fraction is not None:
            return self.worst_fraction
        share = self.err_onnx / self.bound if self.bound else math.inf
        if self.typical is not None and not math.isnan(self.typical[0]):
            share = max(share, self.typical[0] / self.typical[2])
        return share

    def describe(self) -> str:
        torch_part = (f"err_torch {self.err_torch:.2e} (ratio {self.ratio:.3g}), " if self.err_torch is not None
                      else "against PyTorch fp32, ")
        extra = f" ({self.detail})" if self.detail else ""
        return (f"{self.case} [{self.opt_level}] {self.tensor}: err_onnx {self.err_onnx:.3e}, {torch_part}"
                f"rel {self.max_rel:.2e}, bound {self.bound:.2e}: {'ok' if self.passed else 'FAIL'}{extra}")


def judge(case: str, level: str, name: str, got: np.ndarray, want: np.ndarray, noise: np.ndarray | None,
          tol: Tolerance) -> ParityRow:
    """One row: ``got`` (the candidate) against ``want`` (the reference), next to ``noise`` (fp32 PyTorch).

    ``noise`` None: ``want`` is itself the fp32 result and the fallback
    element-wise bound applies.
    """
    discrete = all(np.asarray(a).dtype.kind in "iub" for a in (got, want))
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    fp32 = want if noise is None else np.asarray(noise, np.float64)
    if got.shape != want.shape or fp32.shape != want.shape:
        return _shape_differs(case, level, name, got, want, None if noise is None else fp32, tol)
    if not want.size:
        return ParityRow(case, level, name, 0.0, None if noise is None else 0.0, 0.0, tol.atol, True, 0.0)
    if discrete:
        return _judge_discrete(case, level, name, got, want, None if noise is None else fp32)
    if noise is None:
        return _judge_element_wise(case, level, name, got, want, tol)
    return _judge_against_noise(case, level, name, got, want, fp32, tol)


def _shape_differs(case: str, level: str, name: str, got: np.ndarray, want: np.ndarray, fp32: np.ndarray | None,
                   tol: Tolerance) -> ParityRow:
    """A failed row: never broadcast, a (1, 8) output against a (3, 8) reference is a wrong answer, not a close one."""
    detail = f"shape {got.shape}, reference {want.shape}" + ("" if fp32 is None else f", fp32 {fp32.shape}")
    return ParityRow(case, level, name, math.inf, None if fp32 is None else math.inf, math.nan, tol.atol,
                     False, math.inf, detail)


def _judge_element_wise(case: str, level: str, name: str, got: np.ndarray, want: np.ndarray,
                        tol: Tolerance) -> ParityRow:
    """The fallback without a float64 reference: ``|got - want| <= atol + rtol * |want|`` at every element."""
    diff = _abs_diff(got, want)
    err = float(np.max(diff))  # NaN anywhere makes it NaN, and NaN never passes
    scale = float(np.max(np.abs(want)))
    fraction = diff / (tol.atol + tol.rtol * np.abs(want))
    passed = bool(np.all(fraction <= 1.0))
    return ParityRow(case, level, name, err, None, scale, tol.atol + tol.rtol * scale, passed, err,
                     worst_fraction=float(np.max(fraction)))


def _judge_against_noise(case: str, level: str, name: str, got: np.ndarray, want: np.ndarray, fp32: np.ndarray,
                         tol: Tolerance) -> ParityRow:
    """``err_onnx <= max(atol, k * err_torch)``, at the largest element and at the 90th percentile."""
    diff = _abs_diff(got, want)
    err = float(np.max(diff))  # NaN anywhere makes it NaN, and NaN never passes
    scale = float(np.max(np.abs(want)))
    err_fp32 = float(np.max(_abs_diff(got, fp32)))
    noise_diff = _abs_diff(fp32, want)
    err_torch = float(np.max(noise_diff))
    bound = tol.atol if math.isnan(err_torch) else max(tol.atol, tol.k * err_torch)
    q_onnx, q_torch = _quantile(diff), _quantile(noise_diff)
    typical = (q_onnx, q_torch, max(tol.atol, tol.k * q_torch))
    passed = err <= bound and q_onnx <= typical[2]
    detail = "" if passed or err > bound else (
        f"its 90th-percentile error {q_onnx:.2e} is above {tol.k:g} x PyTorch fp32's {q_torch:.2e}")
    return ParityRow(case, level, name, err, err_torch, scale, bound, bool(passed), err_fp32, detail,
                     typical=typical)


def _judge_discrete(case: str, level: str, name: str, got: np.ndarray, want: np.ndarray,
                    fp32: np.ndarray | None) -> ParityRow:
    """Integer and boolean outputs (a class index, a decision): equal to the reference, except where fp32 PyTorch
    also differs from it (a near-tie that fp32 rounding flips). No tolerance: 10 classes off is not close."""
    wrong = got != want
    excused = np.zeros_like(wrong) if fp32 is None else fp32 != want
    bad = int(np.count_nonzero(wrong & ~excused))
    err = float(np.max(np.abs(got - want)))
    err_torch = None if fp32 is None else float(np.max(np.abs(fp32 - want)))
    detail = (f"{bad} of {want.size} discrete values differ where PyTorch fp32 agrees" if bad
              else "discrete: equal except where PyTorch fp32 differs too")
    return ParityRow(case, level, name, err, err_torch, float(np.max(np.abs(want))), 0.0, not bad,
                     float(np.max(np.abs(got - (want if fp32 is None else fp32)))), detail,
                     worst_fraction=math.inf if bad else 0.0)


def _abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b|, with equal infinities counted as equal (inf - inf is NaN, and NaN never passes)."""
    with np.errstate(invalid="ignore"):
        return np.where(a == b, 0.0, np.abs(a - b))


def _quantile(a: np.ndarray) -> float:
    return float(np.quantile(a, 0.9)) if not np.isnan(a).any() else math.nan


@dataclass
class ParityReport:
    """Every comparison a parity check made, and how it judged them."""

    rows: list[ParityRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tolerance: Tolerance = TOLERANCE["float32"]
    exact_reference: bool = True  # False: no float64 reference could run; judged against fp32 PyTorch
    reference: str = "PyTorch float64"

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failures(self) -> list[ParityRow]:
        return [r for r in self.rows if not r.ok]

    @property
    def max_abs_error(self) -> float:
        return max((r.err_onnx for r in self.rows), default=0.0)

    def worst(self) -> dict[tuple[str, str], ParityRow]:
        """The row nearest to (or furthest past) its bound, per (case kind, tensor)."""
        out: dict[tuple[str, str], ParityRow] = {}
        for r in self.rows:
            key = (r.case.split()[0], r.tensor)
            if key not in out or r.margin > out[key].margin:
                out[key] = r
        return out

    def rule(self) -> str:
        return f"reference: {self.reference}; {self.tolerance.describe(self.exact_reference)}"

    def table(self, *, every_row: bool = False) -> str:
        """A short table: per case kind and tensor, the row nearest its bound (``every_row``: all rows)."""
        rows = self.rows if every_row else [r for _, r in sorted(self.worst().items())]
        cases = [f"{r.case} [{r.opt_level}]" if every_row else r.case.split()[0] for r in rows]
        c = max([len(x) for x in cases] + [8])
        w = max([len(r.tensor) for r in rows] + [6])
        lines = [self.rule(), f"{'case':<{c}} {'tensor':<{w}} {'err_onnx':>9} {'err_torch':>9} {'ratio':>7} "
                              f"{'rel':>9} {'bound':>9}  verdict"]
        for case, r in zip(cases, rows):
            torch_err = "-" if r.err_torch is None else f"{r.err_torch:.2e}"
            ratio = "-" if r.err_torch is None else f"{r.ratio:.3g}"
            lines.append(f"{case:<{c}} {r.tensor:<{w}} {r.err_onnx:>9.2e} {torch_err:>9} {ratio:>7} "
                         f"{r.max_rel:>9.2e} {r.bound:>9.2e}  {'ok' if r.ok else 'FAIL'}"
                         + (f"  ({r.detail})" if r.detail else ""))
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def raise_failures(report: ParityReport, path: str | Path) -> None:
    """Raise one :class:`ParityError` listing every failing row with its numbers; nothing if all passed."""
    if report.ok:
        return
    lines = ["  " + r.describe() for r in report.failures]
    raise ParityError(
        f"{path}: ONNX and the reference differ in {len(lines)} comparison(s) ({report.rule()}):\n" + "\n".join(lines),
        [(r.case, r.tensor, r.err_onnx, r.bound) for r in report.failures],
        rows=report.failures,
    )
