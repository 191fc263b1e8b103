"""The runtime and the parity harness on the committed fixtures: no torch, no onnx needed.

tests/data/make_fixtures.py wrote the models and PyTorch's outputs over one input sequence each;
these tests stream that sequence in uneven chunks and compare. CI also runs this file in a venv
that holds only the runtime's dependencies (tests/torch_free.sh).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from edge_rnn.errors import ShapeError
from edge_rnn.harness import (
    TOLERANCE,
    Cases,
    InputLayout,
    compare_streaming,
    open_sessions,
    random_inputs,
    random_states,
    read_contract,
    session_runner,
)
from edge_rnn.runtime import StreamingModel, run_sequence

DATA = REPO / "tests" / "data"
EXPECTED = dict(np.load(DATA / "expected.npz"))
ATOL = TOLERANCE["float32"].atol
FIXTURES = {"lstm_layer": ("y", "hn", "cn"), "gru_cell": ("y",), "vad_state": ("prob", "new_state")}


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture_streams_to_what_pytorch_computed(name):
    model = StreamingModel.load(DATA / f"{name}.onnx")
    x = EXPECTED[f"{name}.x"]
    stream = model.open_stream()
    outs = run_sequence(model, stream, x, chunk=5)  # uneven: the last chunk is shorter
    first = model.outputs[0].name
    assert np.abs(outs[first] - EXPECTED[f"{name}.{first}"]).max() <= ATOL
    for key in FIXTURES[name][1:]:  # final states
        state_in = next(s.input for s in model.states if s.output == key)
        assert np.abs(stream.state[state_in] - EXPECTED[f"{name}.{key}"]).max() <= ATOL, key


@pytest.mark.parametrize("name", ["lstm_layer", "gru_cell"])
def test_step_batch_equals_stepping_alone_and_snapshots_resume(name):
    model = StreamingModel.load(DATA / f"{name}.onnx")
    x = EXPECTED[f"{name}.x"]
    step = (lambda a: a[:3]) if model.inputs[0].stream_time_axis is not None else (lambda a: a[0])
    a, b, c = model.open_stream(), model.open_stream(), model.open_stream()
    both = model.step_batch([(a, step(x)), (b, step(x[::-1].copy()))])
    alone = model.step(c, step(x))
    assert np.abs(both[0]["y"] - alone["y"]).max() <= 1e-6
    again = model.restore(a.snapshot())
    assert np.array_equal(model.step(again, step(x))["y"], model.step(a, step(x))["y"])
    out = model.step_batch([(a, step(x)), (b, np.zeros((3, 5), np.float32))], on_error="isolate")
    assert isinstance(out[1], ShapeError) and "y" in out[0]


@pytest.mark.parametrize("name", FIXTURES)
def test_harness_judges_a_fixture_against_itself_without_torch(name):
    path = DATA / f"{name}.onnx"
    contract = read_contract(path)
    reference = session_runner(open_sessions(path, ("disabled",))["disabled"])
    sess = open_sessions(path, ("disabled",))["disabled"]
    layouts = []
    for t in contract.inputs:
        shape = tuple(1 if not isinstance(d, int) else d for d in next(i.shape for i in sess.get_inputs()
                                                                       if i.name == t.name))
        layouts.append(InputLayout(t.name, shape, t.batch_axis, t.time_axis))
    report = compare_streaming(path, contract, reference, random_inputs(layouts), random_states(contract),
                               cases=Cases(batch=2, long_steps=300), reference_label="fp32 ONNX")
    assert report.ok and report.max_abs_error <= 1e-6 and len(report.rows) > 0


def test_harness_refuses_to_compare_a_file_by_a_contract_its_graph_does_not_fit():
    """A parity check follows the contract it is given: export hands it the one it built and wrote, without reading
    it back, so the harness itself checks that the written graph fits it (or no comparison means anything)."""
    import dataclasses

    from edge_rnn.errors import ModelFormatError

    path = DATA / "lstm_layer.onnx"
    contract = read_contract(path)
    renamed = dataclasses.replace(contract, outputs=(dataclasses.replace(contract.outputs[0], name="logits"),))
    reference = session_runner(open_sessions(path, ("disabled",))["disabled"])
    layouts = [InputLayout("x", (1, 1, 4), 1, 0)]
    with pytest.raises(ModelFormatError, match=r"names \['logits'\], which the graph does not have"):
        compare_streaming(path, renamed, reference, random_inputs(layouts), random_states(renamed),
                          cases=Cases(batch=2, long_steps=0), reference_label="fp32 ONNX")
