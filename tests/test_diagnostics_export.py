"""The empirical memory curve of an ONNX export matches the one computed in PyTorch, same model and data."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import edge_rnn  # noqa: E402
from edge_rnn.diagnostics import memory_curve  # noqa: E402
from edge_rnn.diagnostics._memory_torch import memory_curve_torch  # noqa: E402


class Tagger(torch.nn.Module):
    """Token ids -> embedding -> GRU -> per-step scores: a whole model, batch first."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 12)
        self.gru = torch.nn.GRU(12, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, ids):
        h, _ = self.gru(self.embed(ids))
        return self.head(h)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn", "lstm_batch_first"])
def test_the_onnx_curve_of_a_layer_equals_pytorchs(tmp_path, kind):
    torch.manual_seed(1)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind.split("_")[0]]
    first = kind.endswith("batch_first")
    layer = cls(6, 24, num_layers=2, batch_first=first).eval()
    edge_rnn.export(layer, tmp_path / "m.onnx", verify_parity=False)
    x = np.random.default_rng(2).standard_normal((160, 6)).astype(np.float32)
    onnx_curve = memory_curve(tmp_path / "m.onnx", x, max_lag=40, starts=6, seed=5)
    torch_curve = memory_curve_torch(layer, x, batch_axis=0 if first else 1, time_axis=1 if first else 0,
                                     max_lag=40, starts=6, seed=5)
    assert onnx_curve.starts == torch_curve.starts == 6
    np.testing.assert_allclose(onnx_curve.scale, torch_curve.scale, rtol=1e-6)
    # fp32 on both sides: equal to ~1e-6 of the response at lag 0, at every lag
    np.testing.assert_allclose(onnx_curve.response, torch_curve.response, rtol=0, atol=2e-5 * torch_curve.response[0])
    assert torch_curve.response[-1] < torch_curve.response[0]  # and it is a curve that decays, not a constant


def test_the_onnx_curve_of_a_whole_model_with_token_ids_equals_pytorchs(tmp_path):
    torch.manual_seed(0)
    model = Tagger().eval()
    ids = torch.randint(0, 50, (1, 30))
    edge_rnn.export(model, tmp_path / "tagger.onnx", example_input=ids, verify_parity=False)
    x = np.random.default_rng(3).integers(0, 50, size=120).astype(np.int64)
    onnx_curve = memory_curve(tmp_path / "tagger.onnx", x, max_lag=25, starts=5)
    torch_curve = memory_curve_torch(model, x, batch_axis=0, time_axis=1, max_lag=25, starts=5, ids=(0, 49))
    np.testing.assert_allclose(onnx_curve.response, torch_curve.response, rtol=0, atol=2e-5 * torch_curve.response[0])


def test_the_cli_diagnoses_a_built_layer_beside_its_export(tmp_path):
    from click.testing import CliRunner

    from edge_rnn.cli import main

    runner = CliRunner()
    build = ["--arch", "gru", "--input-size", "4", "--hidden-size", "8", "--num-layers", "2"]
    r = runner.invoke(main, ["export", *build, "-o", str(tmp_path / "g.onnx")])
    assert r.exit_code == 0, r.output
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((80, 4)).astype(np.float32))
    r = runner.invoke(main, ["diagnose", *build, "--input", str(tmp_path / "x.npy"), "--max-lag", "12",
                             "--compare", str(tmp_path / "g.onnx"), "--plot", str(tmp_path / "d.png")])
    assert r.exit_code == 0, r.output
    rows = {tuple(ln.split()[:2]) for ln in r.output.splitlines()}
    assert {(f"gru.l{k}", g) for k in (0, 1) for g in "rzn"} <= rows  # every gate of both layers
    for line in ("memory horizon gru.l0 (z)", "gradient flow, rnn baseline", "gradient flow, gru baseline",
                 "memory curve, PyTorch model", "memory curve, g.onnx"):
        assert line in r.output, line
    curves = [ln.split(": 1/e after ")[1] for ln in r.output.splitlines() if ln.startswith("memory curve")]
    assert curves[0] == curves[1]  # the export's curve, as printed, is PyTorch's (same seed: same weights)
    assert (tmp_path / "d.png").stat().st_size > 10_000
    r = runner.invoke(main, ["diagnose", str(tmp_path / "g.onnx"), *build, "--input", str(tmp_path / "x.npy")])
    assert r.exit_code == 2 and "holds its weights" in r.output


def test_the_cli_diagnoses_a_whole_model_from_a_factory(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from edge_rnn.cli import main

    (tmp_path / "tagmod.py").write_text(
        "import torch\n"
        "class Tagger(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        torch.manual_seed(0)\n"
        "        self.embed = torch.nn.Embedding(50, 12)\n"
        "        self.lstm = torch.nn.LSTM(12, 16, batch_first=True)\n"
        "        self.head = torch.nn.Linear(16, 5)\n"
        "    def forward(self, ids):\n"
        "        return self.head(self.lstm(self.embed(ids))[0])\n")
    monkeypatch.chdir(tmp_path)
    np.save("ids.npy", np.random.default_rng(0).integers(0, 50, size=90))
    r = CliRunner().invoke(main, ["diagnose", "tagmod:Tagger", "--input", "ids.npy", "--max-lag", "20"])
    assert r.exit_code == 0, r.output
    assert "memory horizon lstm.l0 (f)" in r.output and "gradient flow, this model (lstm)" in r.output
    assert "memory curve, PyTorch model: 1/e after" in r.output
