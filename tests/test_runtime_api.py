"""The runtime API a server drives: check, step_batch(on_error=...), run_sequence, bench; no lock left held."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import REPO

from edge_rnn.errors import EdgeRnnError, NonFiniteError, ShapeError, StreamError
from edge_rnn.runtime import BenchRow, ForeignModel, StreamingModel, bench, run_sequence

DATA = REPO / "tests" / "data"


@pytest.fixture(params=["tiny_dynamic", "tiny_fixed"], ids=["batchable", "fixed-batch-1"])
def model(request):
    """h' = tanh(x + h), x and h (batch, 3), written by hand (tests/data/make_fixtures.py): batch dynamic or 1."""
    return StreamingModel.load(DATA / f"{request.param}.onnx", foreign=ForeignModel(state_batch_axis=0))


def ref(xs: list[np.ndarray]) -> np.ndarray:
    h = np.zeros(3, np.float32)
    for x in xs:
        h = np.tanh(x + h)
    return h


def test_check_raises_what_step_would_and_steps_nothing(model):
    s = model.open_stream()
    assert model.check(s, np.zeros(3, np.float32)) == 1 and s.steps == 0
    with pytest.raises(ShapeError, match=r"x: expected shape \(3,\) float32, got \(4,\) float32"):
        model.check(s, np.zeros(4, np.float32))
    with pytest.raises(NonFiniteError):
        model.check(s, np.array([np.nan, 0, 0], np.float32))
    s.close()
    with pytest.raises(StreamError, match="stream is closed"):
        model.check(s, np.zeros(3, np.float32))
    with pytest.raises(StreamError, match="expected a Stream"):
        model.check(None, np.zeros(3, np.float32))


def test_isolate_gives_each_bad_item_its_error_and_advances_the_others(model):
    a, b, c, d = (model.open_stream() for _ in range(4))
    d.close()
    x = np.full(3, 0.5, np.float32)
    out = model.step_batch([(a, x), (b, np.zeros(4, np.float32)), (c, x), (d, x), (None, x), "junk"],
                           on_error="isolate")
    assert isinstance(out[1], ShapeError) and isinstance(out[3], StreamError)
    assert isinstance(out[4], StreamError) and isinstance(out[5], StreamError)
    np.testing.assert_allclose(out[0]["y"], ref([x]), atol=1e-6)
    np.testing.assert_allclose(out[2]["y"], ref([x]), atol=1e-6)
    assert (a.steps, b.steps, c.steps) == (1, 0, 1) and np.all(b.state["h0"] == 0)
    twice = model.step_batch([(a, x), (a, x)], on_error="isolate")
    assert isinstance(twice[1], StreamError) and a.steps == 2  # the first occurrence still advanced
    with pytest.raises(ValueError, match="on_error"):
        model.step_batch([(a, x)], on_error="skip")


def test_a_stream_counts_as_taken_once_one_of_its_items_passed(model):
    """Each stream at most once per call: in isolate mode a bad first item of a stream does not take it, so its
    next, good item still runs; a good first item does, so the next item of that stream is refused."""
    a, b = model.open_stream(), model.open_stream()
    good, bad = np.full(3, 0.1, np.float32), np.zeros(4, np.float32)
    out = model.step_batch([(a, bad), (a, good), (b, good), (b, good)], on_error="isolate")
    assert isinstance(out[0], ShapeError) and "y" in out[1] and "y" in out[2]
    assert isinstance(out[3], StreamError) and "at most once per call" in str(out[3])
    assert a.steps == 1 and b.steps == 1
    np.testing.assert_allclose(out[1]["y"], ref([good]), atol=1e-6)


def test_raise_mode_raises_the_first_fault_in_item_order(model):
    """A bad chunk before a stream given twice raises the chunk's error, as the items come; nothing advances."""
    c, d = model.open_stream(), model.open_stream()
    good, bad = np.full(3, 0.1, np.float32), np.zeros(4, np.float32)
    with pytest.raises(ShapeError, match=r"x: expected shape \(3,\) float32, got \(4,\) float32"):
        model.step_batch([(c, bad), (d, good), (d, good)])
    with pytest.raises(StreamError, match="at most once per call"):
        model.step_batch([(c, good), (d, good), (d, bad)])
    assert c.steps == 0 and d.steps == 0


def test_raise_mode_advances_nothing_on_a_bad_item(model):
    a, b = model.open_stream(), model.open_stream()
    x = np.full(3, 0.5, np.float32)
    with pytest.raises(ShapeError):
        model.step_batch([(a, x), (b, np.zeros(4, np.float32))])
    assert a.steps == b.steps == 0


def test_a_bad_item_never_leaves_a_lock_held(model):
    """Was: step_batch([(a, x), (b, x), (None, x)]) took a's and b's locks, raised, and kept them for ever."""
    a, b = model.open_stream(), model.open_stream()
    x = np.zeros(3, np.float32)
    with pytest.raises(StreamError, match="item 2: expected a \\(stream, chunk\\) pair"):
        model.step_batch([(a, x), (b, x), (None, x)])
    done = threading.Event()
    t = threading.Thread(target=lambda: (model.step(a, x), model.step(b, x), done.set()), daemon=True)
    t.start()
    t.join(timeout=5)
    assert done.is_set(), "a stream's lock is still held"


def test_run_sequence_streams_a_whole_array_and_reports_progress(model):
    xs = np.random.default_rng(0).standard_normal((9, 3)).astype(np.float32)
    seen = []
    s = model.open_stream()
    out = run_sequence(model, s, xs, chunk=4, progress=seen.append)  # one step per call: rows are calls
    assert out["y"].shape == (9, 3) and s.steps == 9 and sum(seen) == 9
    np.testing.assert_allclose(out["y"][-1], ref(list(xs)), atol=1e-5)
    with pytest.raises(ShapeError, match="expected at least one time step"):
        run_sequence(model, model.open_stream(), np.zeros((0, 3), np.float32))
    with pytest.raises(ShapeError, match="chunk >= 1"):
        run_sequence(model, model.open_stream(), xs, chunk=0)


def test_bench_is_public():
    model = StreamingModel.load(DATA / "tiny_dynamic.onnx", foreign=ForeignModel(state_batch_axis=0))
    rows = bench(model, streams=[1, 4], chunks=[1], seconds=0.02)
    assert [(r.streams, r.chunk) for r in rows] == [(1, 1), (4, 1)] and isinstance(rows[0], BenchRow)
    assert all(r.steps_per_s > 0 and r.naive_steps_per_s > 0 for r in rows)


def test_errors_from_isolate_are_edge_rnn_errors(model):
    a = model.open_stream()
    out = model.step_batch([(a, "not a number")], on_error="isolate")
    assert isinstance(out[0], EdgeRnnError) and a.steps == 0


def test_content_numpy_cannot_hold_is_a_shape_error_also_in_isolate(model):
    a, b = model.open_stream(), model.open_stream()
    with pytest.raises(ShapeError, match="numpy cannot convert"):
        model.step(a, [10**400] * 3)  # an int too large for float32
    out = model.step_batch([(a, np.ones(3, np.float32)), (b, [10**400] * 3)], on_error="isolate")
    assert isinstance(out[1], ShapeError) and "y" in out[0] and (a.steps, b.steps) == (1, 0)


def test_misuse_of_step_and_step_batch_gives_clear_errors(model):
    with pytest.raises(StreamError, match="expected a Stream"):
        model.step("not a stream", np.zeros(3, np.float32))
    a, b = model.open_stream(), model.open_stream()
    out = model.step_batch(pair for pair in [(a, np.zeros(3, np.float32)), (b, np.ones(3, np.float32))])
    assert len(out) == 2 and a.steps == b.steps == 1  # a generator of pairs works like a list


def test_a_contract_that_does_not_fit_the_graph_is_refused_at_load():
    from edge_rnn.contract import Contract, StateSpec, TensorSpec
    from edge_rnn.errors import ModelFormatError

    wrong_name = Contract(inputs=(TensorSpec("x", 0),), outputs=(TensorSpec("y", 0),),
                          states=(StateSpec("state", "new_state", (None, 3), 0),))
    with pytest.raises(ModelFormatError, match=r"names \['state', 'new_state'\], which the graph does not have"):
        StreamingModel.load(DATA / "tiny_dynamic.onnx", contract=wrong_name)
    wrong_shape = Contract(inputs=(TensorSpec("x", 0),), outputs=(TensorSpec("y", 0),),
                           states=(StateSpec("h0", "hn", (None, 6), 0),))
    with pytest.raises(ModelFormatError, match=r"'h0' of shape \[None, 6\] float32 .* graph has \['batch', 3\]"):
        StreamingModel.load(DATA / "tiny_dynamic.onnx", contract=wrong_shape)
    with pytest.raises(ValueError, match="not both"):
        StreamingModel.load(DATA / "tiny_dynamic.onnx", foreign=ForeignModel(state_map={"h0": "hn"}),
                            contract=wrong_shape)


def test_load_options_come_in_two_groups_the_old_keywords_warn_and_never_both():
    from edge_rnn.runtime import SessionConfig

    path = DATA / "tiny_dynamic.onnx"
    grouped = StreamingModel.load(path, session=SessionConfig(threads=1), foreign=ForeignModel(state_batch_axis=0))
    with pytest.warns(DeprecationWarning, match=r"load\(\w+=\) is deprecated: pass ") as caught:
        flat = StreamingModel.load(path, threads=1, state_batch_axis=0)
    assert sorted(str(w.message) for w in caught) == [
        "load(state_batch_axis=) is deprecated: pass foreign=ForeignModel(state_batch_axis=...)",
        "load(threads=) is deprecated: pass session=SessionConfig(threads=...)"]
    assert all(w.filename == __file__ for w in caught)  # the warning points at the caller, not at edge_rnn
    x = np.full(3, 0.3, np.float32)
    assert np.array_equal(grouped.step(grouped.open_stream(), x)["y"], flat.step(flat.open_stream(), x)["y"])
    with pytest.raises(ValueError, match=r"give session=SessionConfig\(...\) or its fields \['threads'\]"):
        StreamingModel.load(path, session=SessionConfig(), threads=1, state_batch_axis=0)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['thread'\]"):
        StreamingModel.load(path, thread=1)


def test_the_model_says_its_contract_and_none_for_a_model_read_without_one():
    from edge_rnn.contract import Contract

    layer = StreamingModel.load(DATA / "lstm_layer.onnx")
    meta = layer.session.get_modelmeta().custom_metadata_map
    assert isinstance(layer.contract, Contract) and layer.contract == Contract.from_metadata(meta)
    assert [s.input for s in layer.contract.states] == [s.input for s in layer.states]
    foreign = StreamingModel.load(DATA / "tiny_dynamic.onnx", foreign=ForeignModel(state_batch_axis=0))
    assert foreign.contract is None
    given = Contract.from_metadata(meta)
    assert StreamingModel.load((DATA / "lstm_layer.onnx").read_bytes(), contract=given).contract == given


def test_allow_nonfinite_can_be_changed_on_a_loaded_model():
    model = StreamingModel.load(DATA / "tiny_dynamic.onnx", foreign=ForeignModel(state_batch_axis=0))
    nan = np.array([np.nan, 0, 0], np.float32)
    with pytest.raises(NonFiniteError):
        model.step(model.open_stream(), nan)
    model.allow_nonfinite = True
    assert model.allow_nonfinite and np.isnan(model.step(model.open_stream(), nan)["y"][0])
