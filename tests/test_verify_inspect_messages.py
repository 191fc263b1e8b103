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


def _identity_model(path, pairs: dict[str, str], *, extra_outputs: tuple[str, ...] = ()) -> None:
    """x -> y and each state input -> its output through Identity, all (batch, 3) float; no contract."""
    import onnx
    from onnx import TensorProto, helper

    def vi(name):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3])

    nodes = [helper.make_node("Identity", [i], [o]) for i, o in {"x": "y", **pairs}.items()]
    nodes += [helper.make_node("Identity", ["x"], [o]) for o in extra_outputs]
    graph = helper.make_graph(nodes, "g", [vi("x"), *map(vi, pairs)],
                              [vi("y"), *map(vi, pairs.values()), *map(vi, extra_outputs)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_inspect_says_which_state_pairs_the_runtime_detects():
    r = run("inspect", "tests/data/tiny_dynamic.onnx")
    assert r.exit_code == 0, r.output
    assert "needs a state_map" not in r.stdout
    assert "the runtime pairs them by name" in r.stdout and "state_map" in r.stdout
    rows = [ln.split() for ln in r.stdout.splitlines()]
    assert ["h0", "->", "hn"] in [row[:3] for row in rows]


def test_inspect_needs_a_state_map_only_where_detection_finds_none_or_is_unsure(tmp_path):
    _identity_model(tmp_path / "none.onnx", {"memory": "memory_next"})
    r = run("inspect", str(tmp_path / "none.onnx"))
    assert r.exit_code == 0 and "needs a state_map" in r.stdout, r.output
    _identity_model(tmp_path / "two.onnx", {"h0": "hn"}, extra_outputs=("h0N",))  # h0 -> hn or h0N?
    r = run("inspect", str(tmp_path / "two.onnx"))
    assert r.exit_code == 0 and "needs a state_map" in r.stdout and "hn" in r.stdout and "h0N" in r.stdout


def _columns_line_up(lines: list[str], marker: str) -> None:
    cols = {ln.index(marker) for ln in lines}
    assert len(cols) == 1, "\n".join(lines)


def test_inspect_columns_line_up_for_long_state_names(tmp_path):
    names = {"h0": "hn", "encoder.block.state_in": "encoder.block.state_out"}
    _identity_model(tmp_path / "m.onnx", names)
    out = run("inspect", str(tmp_path / "m.onnx")).stdout.splitlines()
    _columns_line_up([ln for ln in out if " float " in ln and "->" not in ln], " float ")
    _columns_line_up([ln for ln in out if " -> " in ln], " -> ")
    long = "a" * 60 + "_in"
    _identity_model(tmp_path / "long.onnx", {"h0": "hn", "c0": "cn", long: long.replace("_in", "_out")})
    out = run("inspect", str(tmp_path / "long.onnx")).stdout.splitlines()
    assert f"  {long}" in out  # beyond the bound: whole, on its own line
    values = out[:next(i for i, ln in enumerate(out) if ln.startswith("states:"))]  # the states' rows: their own
    _columns_line_up([ln for ln in values if " float " in ln], " float ")  # columns (the test below)
    assert max(ln.index(" float ") for ln in values if " float " in ln) <= 45


def _display_column(line: str, marker: str) -> int:
    """The terminal column ``marker`` starts at in ``line``: a wide (CJK) character takes two."""
    import unicodedata

    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line[:line.index(marker)])


@pytest.mark.parametrize("pairs", [
    {"h0": "hn", "b" * 37 + "_in": "b" * 37 + "_out"},  # the input fits the 40-column bound, its output does not
    {"h0": "hn", "状态_in": "状态_out", "ab_in": "ab_out"},  # CJK: two columns a character
    {"h0": "hn", "状态向量编码器_in": "状态向量编码器_out", "c" * 45 + "_in": "c" * 45 + "_out"},
])
def test_inspect_state_rows_keep_the_dtype_column_in_line(tmp_path, pairs):
    _identity_model(tmp_path / "m.onnx", pairs)
    r = run("inspect", str(tmp_path / "m.onnx"))
    assert r.exit_code == 0, r.output
    out = r.stdout.splitlines()
    states = out[next(i for i, ln in enumerate(out) if ln.startswith("states:")) + 1:]
    rows = [ln for ln in states if " float " in ln]
    assert len(rows) == len(pairs), r.stdout
    assert len({_display_column(ln, " float ") for ln in rows}) == 1, r.stdout
    arrows = [ln for ln in states if " -> " in ln]
    assert len({_display_column(ln, " -> ") for ln in arrows}) == 1, r.stdout
    values = [ln for ln in out[:out.index(next(ln for ln in out if ln.startswith("states:")))]
              if " float " in ln]
    assert len({_display_column(ln, " float ") for ln in values}) == 1, r.stdout
    for i, o in pairs.items():
        assert any(i in ln for ln in states) and any(o in ln for ln in states), r.stdout


def test_state_rows_are_named_by_output_in_every_table(tmp_path):
    """verify --against and optimize name a state as export's parity table does: by its output (hn, cn), the
    tensor the error is measured on; its input is the contract's pair (inspect: h0 -> hn)."""
    from edge_rnn.deploy import measure_against

    lstm = "tests/data/lstm_layer.onnx"
    err = measure_against(lstm, lstm, steps=2_000)
    assert {t.name for t in err.tensors if t.kind == "state"} == {"hn", "cn"}
    r = run("verify", lstm, "--against", lstm, "--steps", "2000")
    assert r.exit_code == 0, r.output
    rows = {ln.split()[0] for ln in r.stdout.splitlines() if ln.strip()}
    assert {"hn", "cn"} <= rows and not {"h0", "c0"} & rows
