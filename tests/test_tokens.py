"""Integer inputs (token ids -> Embedding -> GRU) keep their dtype end to end.

They are not cast to float32 during export (the cast's error blamed input_axes): the dtype goes through the
export, the contract (with the embedding's range of valid ids), the runtime's checks, the parity check and the
CLI. The runtime tests use the committed fixture and run without torch.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from edge_rnn.contract import TensorSpec
from edge_rnn.errors import DataError, ModelFormatError, ShapeError
from edge_rnn.harness import InputLayout, data_inputs, random_inputs
from edge_rnn.runtime import StreamingModel, run_sequence

DATA = REPO / "tests" / "data"
TOKENS = DATA / "token_gru.onnx"  # Embedding(40, 16) -> GRU(16, 24) -> Linear(24, 40), ids int64
EXPECTED = dict(np.load(DATA / "expected.npz"))


@pytest.fixture(scope="module")
def model():
    return StreamingModel.load(TOKENS)


def test_token_ids_stream_to_what_pytorch_computed(model):
    (ids,) = model.inputs
    assert (ids.name, ids.dtype, ids.values) == ("ids", np.dtype(np.int64), (0, 39))
    outs = run_sequence(model, model.open_stream(), EXPECTED["token_gru.ids"], chunk=4)
    np.testing.assert_allclose(outs["logits"], EXPECTED["token_gru.logits"], atol=1e-5)
    stream = model.open_stream()
    listed = model.step(stream, EXPECTED["token_gru.ids"][:3].tolist())  # a list of Python ints is taken too
    np.testing.assert_allclose(listed["logits"], EXPECTED["token_gru.logits"][:3], atol=1e-5)


@pytest.mark.parametrize("chunk,match", [
    ([3, -1], r"ids: expected values in \[0, 39\] \(the rows of the table it indexes\), got -1"),
    (np.array([40]), r"expected values in \[0, 39\].*got 40"),
    ([1.5, 2.0], r"ids: expected int64 values, got float64 \(1\.5, \.\.\.\)"),  # never rounded to 1
    (np.array([1.0, 2.0]), r"expected shape \(time,\) int64 in \[0, 39\], got \(2,\) float64"),
    (np.array([1, 2], np.int32), r"got \(2,\) int32 \(cast it: \.astype\(np\.int64\)\)"),
    ([True], "expected int64 values, got bool"),
    ([2**70], "expected int64 values, got object"),
])
def test_bad_token_ids_are_refused_and_the_state_is_unchanged(model, chunk, match):
    stream = model.open_stream()
    model.step(stream, [1, 2])
    before, steps = {k: v.copy() for k, v in stream.state.items()}, stream.steps
    with pytest.raises(ShapeError, match=match):
        model.step(stream, chunk)
    assert stream.steps == steps and all(np.array_equal(before[k], v) for k, v in stream.state.items())


def test_step_batch_names_the_item_with_a_bad_id_and_isolate_steps_the_others(model):
    a, b = model.open_stream(), model.open_stream()
    with pytest.raises(ShapeError, match=r"item 1 of the batch: ids: expected values in \[0, 39\].*got -4"):
        model.step_batch([(a, np.array([1, 2])), (b, np.array([3, -4]))])
    assert a.steps == b.steps == 0
    out = model.step_batch([(a, np.array([1, 2])), (b, np.array([3, -4]))], on_error="isolate")
    assert out[0]["logits"].shape == (2, 40) and isinstance(out[1], ShapeError)
    assert (a.steps, b.steps) == (2, 0)


def test_the_contract_carries_dtype_and_range_and_is_checked_against_the_graph(model):
    contract = StreamingModel.load(TOKENS).session.get_modelmeta().custom_metadata_map["edge_rnn"]
    assert '"dtype": "int64", "values": [0, 39]' in contract
    from edge_rnn.contract import Contract

    c = Contract.from_json(contract)
    forged = Contract(inputs=(TensorSpec("ids", 0, 1, "float32"),), outputs=c.outputs, states=c.states)
    with pytest.raises(ModelFormatError, match="expected 'ids' to be float32 as the contract says, but the graph "
                                               r"has tensor\(int64\)"):
        StreamingModel.load(TOKENS, contract=forged)
    with pytest.raises(ModelFormatError, match="a range of values is for integer inputs"):
        TensorSpec("x", 0, 1, "float32", (0, 3))
    with pytest.raises(ModelFormatError, match=r"expected values \[low, high\] with integers low <= high"):
        Contract.from_json(contract.replace('"values": [0, 39]', '"values": [5, 1]'))


def test_the_harness_draws_ids_in_range_and_refuses_float_data_for_them():
    layout = InputLayout("ids", (1, 5), 0, 1, "int64", (0, 39))
    x = random_inputs([layout])(np.random.default_rng(0), 3, 500, False)["ids"]
    assert x.dtype == np.int64 and x.shape == (3, 500) and x.min() == 0 and x.max() == 39
    ok = data_inputs([layout], np.array([1, 2, 3], np.int32))(np.random.default_rng(0), 1, 4, False)["ids"]
    assert ok.dtype == np.int64
    with pytest.raises(DataError, match=r"'ids' takes int64 values \(token ids\), got a float64 array"):
        data_inputs([layout], np.array([1.0, 2.0]))
    with pytest.raises(DataError, match=r"expected values of 'ids' in \[0, 39\], got 0\.\.40"):
        data_inputs([layout], np.array([0, 40]))


# --------------------------------------------------------------- export, verify and the CLI (torch)
def _token_model():
    pytest.importorskip("torch")
    import wholemodels

    return wholemodels.token_model().eval()


def test_a_token_model_exports_with_its_ids_as_int64_and_passes_parity(tmp_path):
    model = _token_model()
    import torch

    import edge_rnn

    path = tmp_path / "tokens.onnx"
    report = edge_rnn.export(model, path, example_input=torch.zeros(2, 5, dtype=torch.int64), long_steps=300)
    (ids,) = report.contract.inputs
    assert (ids.dtype, ids.values) == ("int64", (0, 39)) and report.contract.outputs[0].dtype == "float32"
    assert report.parity.ok and any("the rows of the embedding it indexes" in n for n in report.parity.notes)
    again = edge_rnn.verify(model, path, long_steps=100)  # the example is rebuilt from the file: int64 zeros
    assert again.ok


def test_an_integer_input_that_indexes_no_embedding_is_checked_over_its_examples_range(tmp_path):
    torch = pytest.importorskip("torch")

    import edge_rnn

    class Shifted(torch.nn.Module):  # ids + 1 indexes the table: no direct embedding input, so no range
        def __init__(self):
            super().__init__()
            self.embed, self.gru = torch.nn.Embedding(12, 4), torch.nn.GRU(4, 5, batch_first=True)

        def forward(self, ids):
            return self.gru(self.embed(ids + 1))[0]

    torch.manual_seed(0)
    report = edge_rnn.export(Shifted().eval(), tmp_path / "s.onnx", long_steps=50,
                             example_input=torch.tensor([[0, 3, 10, 2]]))
    assert report.contract.inputs[0].values is None and report.parity.ok
    assert any("random values drawn from the example's range [0, 10]" in n for n in report.parity.notes)


def test_the_cli_exports_runs_and_refuses_token_ids(tmp_path):
    _token_model()
    from click.testing import CliRunner

    from edge_rnn.cli import main

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    out = tmp_path / "t.onnx"
    r = run("export", "wholemodels:token_model", "--example-shape", "1,5", "--example-dtype", "int64",
            "--long-steps", "100", "-o", out)
    assert r.exit_code == 0, r.output
    assert "input 'x': int64 in [0, 39]" in r.stdout
    assert "values in [0, 39]" in run("inspect", out).stdout
    np.save(tmp_path / "ids.npy", np.arange(30, dtype=np.int32) % 40)  # int32 ids: cast exactly
    r = run("run", out, "--input", tmp_path / "ids.npy", "-o", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "y.npy").shape == (30, 40)
    np.save(tmp_path / "f.npy", np.arange(3.0))
    r = run("run", out, "--input", tmp_path / "f.npy", "-o", tmp_path / "y.npy")
    assert r.exit_code == 1 and "got (3,) float64" in r.stderr  # floats for ids: refused, never rounded
    assert run("export", "--arch", "gru", "--input-size", "3", "--hidden-size", "4", "--example-dtype", "int64",
               "-o", out).exit_code == 2
