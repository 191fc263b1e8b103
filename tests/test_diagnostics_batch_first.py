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


# --- edge-rnn diagnose --arch: the layer shape options export takes ---------------------------------------------


def _cli(tmp_path, *args: str):
    from click.testing import CliRunner

    from edge_rnn.cli import main

    path = tmp_path / "x.npy"
    np.save(path, _x())
    return CliRunner().invoke(main, ["diagnose", *args, "--input", str(path), "--max-lag", str(LAG), "--starts", "2"])


def _horizon_rows(output: str) -> list[str]:
    return [line.split()[0] for line in output.splitlines() if line.strip().startswith(("gru.", "lstm.", "rnn."))]


@pytest.mark.parametrize("arch", ["gru", "lstm"])
def test_cli_batch_first_gives_the_time_major_numbers(tmp_path, arch) -> None:
    base = ["--arch", arch, "--input-size", str(IN), "--hidden-size", str(H)]
    first = _cli(tmp_path, *base, "--batch-first")
    major = _cli(tmp_path, *base)
    assert first.exit_code == 0, first.output
    assert major.exit_code == 0, major.output
    body = lambda out: [line for line in out.splitlines() if "->" not in line]  # noqa: E731 - the source line differs
    assert body(first.output) == body(major.output)
    assert "batch_first" in first.output


def test_cli_bidirectional_reports_both_directions(tmp_path) -> None:
    r = _cli(tmp_path, "--arch", "gru", "--input-size", str(IN), "--hidden-size", str(H), "--bidirectional",
             "--batch-first")
    assert r.exit_code == 0, r.output
    assert "gru.l0_reverse" in r.output


def test_cli_proj_size_and_nonlinearity_build_that_layer(tmp_path) -> None:
    r = _cli(tmp_path, "--arch", "lstm", "--input-size", str(IN), "--hidden-size", str(H), "--proj-size", "3")
    assert r.exit_code == 0, r.output
    assert "proj_size=3" in r.output
    r = _cli(tmp_path, "--arch", "rnn", "--input-size", str(IN), "--hidden-size", str(H), "--nonlinearity", "relu")
    assert r.exit_code == 0, r.output
    assert "relu" in r.output


@pytest.mark.parametrize("args,message", [
    (["--arch", "gru", "--proj-size", "3"], "expected proj_size only on an LSTM"),
    (["--arch", "gru", "--nonlinearity", "relu"], "only the vanilla RNN (--arch rnn) takes it"),
    (["--arch", "lstm", "--proj-size", "6"], "0 < proj_size < hidden_size"),
])
def test_cli_refuses_a_shape_option_the_arch_cannot_take(tmp_path, args, message) -> None:
    r = _cli(tmp_path, *args, "--input-size", str(IN), "--hidden-size", str(H))
    assert r.exit_code == 1, r.output
    assert message in r.output and r.output.startswith("Error: ") and r.output.count("\n") == 1


@pytest.mark.parametrize("option", [["--batch-first"], ["--bidirectional"], ["--proj-size", "2"],
                                    ["--nonlinearity", "relu"]])
def test_cli_refuses_shape_options_without_arch(tmp_path, option) -> None:
    onnx = str(tmp_path / "m.onnx")
    (tmp_path / "m.onnx").write_bytes(b"")
    for source in ([onnx], ["tests.forms_models:nothing"]):
        r = _cli(tmp_path, *source, *option)
        assert r.exit_code == 2, r.output
        assert "shape" in r.output or "--arch" in r.output
