"""diagnose on batch_first layers (bare, and inside a model), and `edge-rnn diagnose --arch`'s layer options."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_rnn.diagnostics import diagnose, memory_curve_torch  # noqa: E402
from edge_rnn.errors import ShapeError  # noqa: E402

IN, H, T, LAG = 5, 6, 24, 8


def _x() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((T, IN)).astype(np.float32)


def _pair(cls):
    """A batch_first layer and the time-major layer with the same weights."""
    torch.manual_seed(0)
    first = cls(IN, H, batch_first=True).eval()
    major = cls(IN, H).eval()
    major.load_state_dict(first.state_dict())
    return first, major


def _numbers(d) -> dict:
    out = {f"h {h.layer}": h.steps for h in d.horizons}
    out |= {f"s {s.layer}.{s.gate}": s.mean for s in d.stats}
    out |= {f"g {g.label}": g.norms for g in d.gradient}
    out |= {f"m {m.label}": m.response for m in d.memory}
    return out


def _assert_same(a, b) -> None:
    na, nb = _numbers(a), _numbers(b)
    assert na.keys() == nb.keys()
    for key in na:
        np.testing.assert_allclose(na[key], nb[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("cls", [torch.nn.GRU, torch.nn.LSTM])
def test_diagnose_of_a_batch_first_layer_equals_the_time_major_one(cls) -> None:
    first, major = _pair(cls)
    x = _x()
    got = diagnose(first, x, max_lag=LAG, starts=2)  # the call: no axes given
    want = diagnose(major, x, max_lag=LAG, starts=2)
    assert got.horizons and got.memory[0].response[0] > 0
    _assert_same(got, want)


@pytest.mark.parametrize("cls", [torch.nn.GRU, torch.nn.LSTM])
def test_diagnose_with_explicit_axes_still_equals(cls) -> None:
    first, major = _pair(cls)
    x = _x()
    _assert_same(diagnose(first, x, batch_axis=0, time_axis=1, max_lag=LAG, starts=2),
                 diagnose(major, x, batch_axis=1, time_axis=0, max_lag=LAG, starts=2))


class _Model(torch.nn.Module):
    def __init__(self, rnn) -> None:
        super().__init__()
        self.proj, self.rnn = torch.nn.Linear(IN, IN), rnn

    def forward(self, x):
        return self.rnn(self.proj(x))[0]


def test_a_model_holding_a_batch_first_layer_takes_batch_first_input() -> None:
    first, major = _pair(torch.nn.GRU)
    a, b = _Model(first), _Model(major)
    b.proj.load_state_dict(a.proj.state_dict())
    _assert_same(diagnose(a, _x(), max_lag=LAG, starts=2), diagnose(b, _x(), max_lag=LAG, starts=2))


def test_memory_curve_torch_reads_batch_first_too() -> None:
    first, major = _pair(torch.nn.LSTM)
    x = _x()
    np.testing.assert_allclose(memory_curve_torch(first, x, max_lag=LAG, starts=2).response,
                               memory_curve_torch(major, x, max_lag=LAG, starts=2).response, rtol=1e-5, atol=1e-7)


def test_axes_that_do_not_match_the_layer_are_refused_in_one_line() -> None:
    first, _ = _pair(torch.nn.GRU)
    with pytest.raises(ShapeError, match=r"expected .* 24 steps.*got 1\b") as e:
        diagnose(first, _x(), batch_axis=1, time_axis=0, max_lag=LAG, starts=2)
    assert "\n" not in str(e.value)
