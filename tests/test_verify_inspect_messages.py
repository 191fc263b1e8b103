"""What verify and inspect tell a user: whole models exported from a state_dict, and the state pairs of a file
without a contract."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx)

import torch
from cli_errors import one_line_error
from click.testing import CliRunner

from edge_rnn.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


class Tiny(torch.nn.Module):
    """A GRU and a linear head: x (batch, time, 3) -> (batch, time, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(3, 4, batch_first=True)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0])


def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return Tiny()


def _trained(tmp_path):
    """A state_dict other than the factory's own weights, as training leaves it."""
    torch.manual_seed(7)
    weights = tmp_path / "trained.pt"
    torch.save(Tiny().state_dict(), weights)
    return weights


FACTORY = "test_verify_inspect_messages:tiny"


def test_cli_whole_model_exported_with_weights_verified_without_them(tmp_path):
    weights, out = _trained(tmp_path), tmp_path / "m.onnx"
    r = run("export", FACTORY, "--weights", str(weights), "--example-shape", "1,6,3", "--long-steps", "0",
            "-o", str(out))
    assert r.exit_code == 0, r.output
    r = run("verify", str(out), FACTORY, "--long-steps", "0")
    one_line_error(r, "pass it with --weights")
    assert "FAIL" not in r.stdout  # said before any table
    r = run("verify", str(out), FACTORY, "--weights", str(weights), "--long-steps", "50")
    assert r.exit_code == 0 and ": ok" in r.stdout, r.output


def test_api_whole_model_exported_trained_verified_with_the_factory(tmp_path):
    """edge_rnn.export of a trained module: verify with its factory alone names --weights."""
    import edge_rnn

    model = tiny()
    model.load_state_dict(torch.load(_trained(tmp_path)))
    out = tmp_path / "m.onnx"
    edge_rnn.export(model.eval(), out, example_input=torch.zeros(1, 6, 3), long_steps=0)
    one_line_error(run("verify", str(out), FACTORY, "--long-steps", "0"), "pass it with --weights")
    report = edge_rnn.verify(tiny().eval(), out, long_steps=0, raise_on_failure=False)
    assert not report.ok and any("other weights" in n for n in report.notes)


def test_whole_model_with_its_own_weights_still_verifies(tmp_path):
    out = tmp_path / "m.onnx"
    assert run("export", FACTORY, "--example-shape", "1,6,3", "--long-steps", "0", "-o", str(out)).exit_code == 0
    r = run("verify", str(out), FACTORY, "--long-steps", "50")
    assert r.exit_code == 0 and ": ok" in r.stdout, r.output
