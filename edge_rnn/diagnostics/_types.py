"""What the diagnostics compute, as plain dataclasses of numpy arrays (no torch, no matplotlib)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["GateStats", "GateHistogram", "Horizon", "GradientFlow", "MemoryCurve", "Diagnosis", "SIGMOID_GATES",
           "KEEP_GATE", "SATURATION", "horizon_of_constant"]

# Which gates are sigmoids (values in 0..1); the others (LSTM "g", GRU "n", RNN "a") are tanh (-1..1).
SIGMOID_GATES: dict[str, tuple[str, ...]] = {"lstm": ("i", "f", "o"), "gru": ("r", "z"), "rnn": ()}
# The gate whose running product is what a unit keeps of its past: LSTM forget f (c' = f*c + i*g), GRU update z
# (h' = (1-z)*n + z*h). A vanilla RNN has none.
KEEP_GATE: dict[str, str | None] = {"lstm": "f", "gru": "z", "rnn": None}
SATURATION = 0.05  # "near 0" and "near 1": within this of the end of the gate's range


@dataclass(frozen=True)
class GateStats:
    """One gate of one layer (one direction), per unit, over every step and sequence of the data.

    ``near_zero``/``near_one``: the fraction of steps with the value within ``SATURATION`` of 0 or of 1 for a
    sigmoid gate; for a tanh gate, |value| within it of 0 or of 1 (saturated either way).
    """

    layer: str  # e.g. "lstm.l0", "encoder.gru.l1_reverse"
    kind: str  # "lstm" | "gru" | "rnn"
    gate: str  # torch's names: LSTM i f g o, GRU r z n, RNN a
    mean: np.ndarray  # (hidden,)
    near_zero: np.ndarray  # (hidden,)
    near_one: np.ndarray  # (hidden,)


@dataclass(frozen=True)
class GateHistogram:
    """The distribution of one gate's values over every unit, step and sequence (for the figure)."""

    layer: str
    kind: str
    gate: str
    edges: np.ndarray  # (bins + 1,) over the gate's range: 0..1 (sigmoid) or -1..1 (tanh)
    counts: np.ndarray  # (bins,)

    @classmethod
    def of(cls, layer: str, kind: str, gate: str, values: np.ndarray, bins: int = 40) -> GateHistogram:
        low = 0.0 if gate in SIGMOID_GATES[kind] else -1.0
        counts, edges = np.histogram(np.asarray(values, np.float64).ravel(), bins=bins, range=(low, 1.0))
        return cls(layer, kind, gate, edges, counts)


@dataclass(frozen=True)
class Horizon:
    """How far back each unit of one layer remembers, from its keep gate (LSTM ``f``, GRU ``z``).

    For each unit and each start step t0, the horizon is the first k >= 1 with
    ``prod(gate[t0+1 .. t0+k]) < 1/e``; ``steps`` is the median of that over start steps, ``inf`` where the
    product stays above 1/e for most starts until the data ends (the horizon is longer than the data shows).
    """

    layer: str
    kind: str
    gate: str
    steps: np.ndarray  # (hidden,) float; inf: beyond the data

    def quantiles(self, qs: tuple[float, ...] = (0.1, 0.5, 0.9)) -> list[float]:
        return [float(np.quantile(self.steps, q)) for q in qs]


def horizon_of_constant(gate: float) -> float:
    """The horizon for a gate that is ``gate`` at every step: the first k with gate**k < 1/e."""
    if not 0 < gate < 1:
        return math.inf if gate >= 1 else 1.0
    k = math.floor(-1 / math.log(gate)) + 1
    while k > 1 and gate ** (k - 1) < math.exp(-1):  # floating-point edge of the boundary
        k -= 1
    while gate ** k >= math.exp(-1):
        k += 1
    return float(k)


@dataclass(frozen=True)
class GradientFlow:
    """``norms[k]``: the norm of dh_T/dx_{T-k} (Frobenius, mean over sequences), k = ``lags[k]``."""

    label: str
    lags: np.ndarray  # (K,) int
    norms: np.ndarray  # (K,)

    def relative(self) -> np.ndarray:
        """Normalised by the norm at the smallest lag."""
        return self.norms / self.norms[0] if self.norms[0] > 0 else self.norms


@dataclass(frozen=True)
class MemoryCurve:
    """The empirical memory of a model: how an output difference from one perturbed input step decays.

    ``response[k]``: the norm of (perturbed - unperturbed) primary output k steps after the perturbed step,
    averaged over ``starts`` perturbation points; ``relative()`` divides by the value at k = 0.
    """

    label: str
    lags: np.ndarray  # (K,) int, from 0
    response: np.ndarray  # (K,)
    starts: int
    scale: float  # the perturbation's size (norm of the added vector)

    def relative(self) -> np.ndarray:
        return self.response / self.response[0] if self.response[0] > 0 else self.response

    def horizon(self) -> float:
        """The first lag at which the relative response falls below 1/e (inf: not within the curve)."""
        below = np.flatnonzero(self.relative() < math.exp(-1))
        return float(self.lags[below[0]]) if len(below) else math.inf


@dataclass
class Diagnosis:
    """Everything ``edge-rnn diagnose`` reports on one model; parts it could not compute stay empty."""

    source: str
    stats: list[GateStats] = field(default_factory=list)
    histograms: list[GateHistogram] = field(default_factory=list)
    horizons: list[Horizon] = field(default_factory=list)
    gradient: list[GradientFlow] = field(default_factory=list)  # the model's first, then the baselines
    memory: list[MemoryCurve] = field(default_factory=list)  # the model's, then --compare's
    notes: list[str] = field(default_factory=list)

    def nonfinite(self) -> list[str]:
        """The figures holding NaN (or, but for horizons, where inf means "beyond the data", Inf), named."""
        found = [f"gate {s.gate} of {s.layer}" for s in self.stats
                 if not all(np.isfinite(a).all() for a in (s.mean, s.near_zero, s.near_one))]
        found += [f"memory horizon of {h.layer}" for h in self.horizons if np.isnan(h.steps).any()]
        found += [f"gradient flow, {g.label}" for g in self.gradient if not np.isfinite(g.norms).all()]
        found += [f"memory curve, {m.label}" for m in self.memory if not np.isfinite(m.response).all()]
        return found
