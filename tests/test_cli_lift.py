"""``edge-rnn lift`` and the hint ``edge-rnn inspect`` gives on a recurrent file without a contract."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")

import json  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from onnx import TensorProto  # noqa: E402
from onnx import helper as h  # noqa: E402
from third_party_graphs import peephole_lstm, torch_lstm  # noqa: E402

import edge_rnn  # noqa: E402
from edge_rnn.cli import main  # noqa: E402
from edge_rnn.errors import ParityError  # noqa: E402
from edge_rnn.runtime import StreamingModel  # noqa: E402


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def _bidirectional(path):
    m = peephole_lstm()
    m.graph.node[0].attribute.append(h.make_attribute("direction", "bidirectional"))
    for name, dirs in (("W", 2), ("R", 2), ("B", 2), ("P", 2), ("h_init", 2), ("c_init", 2)):
        t = next(t for t in m.graph.initializer if t.name == name)
        a = onnx.numpy_helper.to_array(t)
        t.CopyFrom(onnx.numpy_helper.from_array(np.concatenate([a] * dirs), name))
    del m.graph.node[1:]
    m.graph.node[0].output[0] = "scores"
    m.graph.output[0].CopyFrom(h.make_tensor_value_info("scores", TensorProto.FLOAT, [None] * 4))
    onnx.save(m, path)


def test_lift_prints_its_rewrites_states_and_proof_then_writes(tmp_path):
    onnx.save(peephole_lstm(), tmp_path / "zoo.onnx")
    r = _run("lift", str(tmp_path / "zoo.onnx"), "-o", str(tmp_path / "out" / "s.onnx"), "--long-steps", "100")
    assert r.exit_code == 0, r.output
    assert "state:  lstm_1.h0 -> lstm_1.hn  (node lstm_1; a new stream starts from the file's constant)" in r.output
    assert "input 'features': fixed time length 16 (axis 0), batch length 1 (axis 1) made dynamic" in r.output
    assert "long     scores" in r.output and "noise (err_torch column): the original file run by onnxruntime" \
        in r.output
    assert r.output.rstrip().endswith(f"verdict: ok; wrote {tmp_path / 'out' / 's.onnx'}")
    model = StreamingModel.load(tmp_path / "out" / "s.onnx")
    h0 = onnx.numpy_helper.to_array(next(t for t in peephole_lstm().graph.initializer if t.name == "h_init"))
    np.testing.assert_array_equal(model.open_stream().state["lstm_1.h0"], h0[:, 0])  # the file's own start


def test_lift_python_api_is_the_command(tmp_path):
    onnx.save(torch_lstm(), tmp_path / "t.onnx")
    result = edge_rnn.lift(tmp_path / "t.onnx", tmp_path / "s.onnx")
    assert result.proof.ok and [s.input for s in result.states] == ["lstm_LSTM.h0", "lstm_LSTM.c0", "lstm_LSTM_1.h0",
                                                                    "lstm_LSTM_1.c0"]
    assert result.contract.format == 1 and all(s.initial is None for s in result.states)
    assert any("zeros computed at run time (as torch.onnx writes it)" in n for n in result.notes)


def test_lift_refuses_a_bidirectional_node_naming_it_and_writes_nothing(tmp_path):
    _bidirectional(tmp_path / "bi.onnx")
    r = _run("lift", str(tmp_path / "bi.onnx"), "-o", str(tmp_path / "s.onnx"))
    assert r.exit_code == 1
    assert r.output.strip() == ("Error: LSTM node 'lstm_1': direction=bidirectional looks ahead in time: needs the "
                                "whole sequence")
    assert not (tmp_path / "s.onnx").exists()


def test_a_failed_proof_writes_nothing_and_shows_the_table(tmp_path, monkeypatch):
    """A lift whose chunks do not equal one pass (forced here: the reference given a different weight) is refused
    with the table, and no file is left behind."""
    import edge_rnn.deploy.lifting._api as lifting

    real = lifting.reference_model

    def wrong(original, lifted):
        ref = real(original, lifted)
        w = next(t for t in ref.graph.initializer if t.name == "proj")
        w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * 1.01, "proj"))
        return ref

    monkeypatch.setattr(lifting, "reference_model", wrong)
    onnx.save(peephole_lstm(), tmp_path / "zoo.onnx")
    with pytest.raises(ParityError, match=r"not streamable as lifted: chunked calls of the lifted graph differ from "
                                          r"one pass of the original in \d+ comparison\(s\); nothing written"):
        edge_rnn.lift(tmp_path / "zoo.onnx", tmp_path / "s.onnx")
    assert not (tmp_path / "s.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["--axes", "features"], "expected NAME=BATCH,TIME (e.g. x=0,1), got 'features'"),
    (["--axes", "features=1"], "expected NAME=BATCH,TIME (e.g. x=0,1), got 'features=1'"),
    (["--axes", "nope=1,0"], "axes: expected graph input or output names, got 'nope'"),
    (["--axes", "features=1,7"], "axes['features']: expected time_axis in 0..2 (rank 3), got 7"),
])
def test_lift_axes_errors_are_one_line(tmp_path, args, message):
    onnx.save(peephole_lstm(), tmp_path / "zoo.onnx")
    r = _run("lift", str(tmp_path / "zoo.onnx"), "-o", str(tmp_path / "s.onnx"), *args)
    assert r.exit_code in (1, 2) and message in r.output, r.output


def test_lift_refuses_to_overwrite_its_input_and_a_missing_model(tmp_path):
    onnx.save(peephole_lstm(), tmp_path / "zoo.onnx")
    r = _run("lift", str(tmp_path / "zoo.onnx"), "-o", str(tmp_path / "zoo.onnx"))
    assert r.exit_code == 1 and "would overwrite the model it is lifted from" in r.output
    r = _run("lift", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "s.onnx"))
    assert r.exit_code == 1 and f"model {tmp_path / 'none.onnx'}: no such file" in r.output


def test_inspect_says_whether_lift_can_make_a_file_streamable(tmp_path):
    onnx.save(torch_lstm(), tmp_path / "t.onnx")
    r = _run("inspect", str(tmp_path / "t.onnx"))
    assert r.exit_code == 0
    assert f"lift:      edge-rnn lift {tmp_path / 't.onnx'} -o streaming.onnx can make it streamable" in r.output
    _bidirectional(tmp_path / "bi.onnx")
    r = _run("inspect", str(tmp_path / "bi.onnx"))
    assert r.exit_code == 0 and ("lift:      edge-rnn lift cannot make it streamable: LSTM node 'lstm_1': "
                                 "direction=bidirectional looks ahead in time") in r.output
    edge_rnn.lift(tmp_path / "t.onnx", tmp_path / "s.onnx")
    r = _run("inspect", str(tmp_path / "s.onnx"))  # a lifted file has its contract: no hint
    assert r.exit_code == 0 and "lift:" not in r.output and "lstm_LSTM.h0" in r.output


def test_inspect_shows_a_state_that_starts_from_its_own_value(tmp_path):
    edge_rnn.lift(_saved(tmp_path, peephole_lstm()), tmp_path / "s.onnx")
    r = _run("inspect", str(tmp_path / "s.onnx"))
    assert "(edge_rnn contract, format 2)" in r.output
    assert "starts from its own initial value, not zeros" in r.output
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "s.onnx")).metadata_props}
    assert json.loads(meta["edge_rnn"])["format"] == 2


def _saved(tmp_path, model):
    onnx.save(model, tmp_path / "in.onnx")
    return tmp_path / "in.onnx"
