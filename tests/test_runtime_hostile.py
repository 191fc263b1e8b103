"""The runtime against hostile input: a step is applied only when it succeeds, forged snapshots are refused before a
slab row is taken, and every entry point answers bad data with an EdgeRnnError, never a raw Python exception."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from conftest import REPO

from edge_rnn.errors import EdgeRnnError, NonFiniteError, ShapeError, StateError, StreamError, UnsupportedError
from edge_rnn.runtime import ForeignModel, StreamingModel

LSTM = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6), states h0/c0 (2, 6)
BUNDLE = REPO / "tests" / "data" / "bundle"
BIG = 1e38  # x * BIG overflows float32 once |x| > 3.4


def overflow_model(path, batch="b"):
    """x (batch, time, 2) -> y = x * [BIG, 1] (batch, time, 2); h0 (batch, 2) -> hn = h0 + sum_t(x * [1, BIG]).

    Finite input overflows y where x[..., 0] > 3.4 and the new state where x[..., 1] > 3.4; ``batch=1`` fixes the
    batch at one (each stream its own call)."""
    onnx = pytest.importorskip("onnx")  # to write the graph; skipped where only the runtime is installed
    from onnx import TensorProto, helper, numpy_helper

    f = TensorProto.FLOAT
    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "ky"], ["y"]), helper.make_node("Mul", ["x", "kh"], ["xh"]),
         helper.make_node("ReduceSum", ["xh", "axis1"], ["sh"], keepdims=0),
         helper.make_node("Add", ["h0", "sh"], ["hn"])],
        "overflow", [helper.make_tensor_value_info("x", f, [batch, "t", 2]),
                     helper.make_tensor_value_info("h0", f, [batch, 2])],
        [helper.make_tensor_value_info("y", f, [batch, "t", 2]), helper.make_tensor_value_info("hn", f, [batch, 2])],
        [numpy_helper.from_array(np.array([BIG, 1], np.float32), "ky"),
         numpy_helper.from_array(np.array([1, BIG], np.float32), "kh"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


FOREIGN = ForeignModel(batch_axis=0, time_axis=1, state_batch_axis=0)


@pytest.fixture(params=["b", 1], ids=["batchable", "fixed-batch-1"])
def model(request, tmp_path):
    model = StreamingModel.load(overflow_model(tmp_path / "overflow.onnx", request.param), foreign=FOREIGN)
    assert model.batches_streams == (request.param == "b")
    return model


def chunk(t: int, where: str | None = None) -> np.ndarray:
    """``t`` finite steps; ``where`` "y" or "state": one value that overflows that one."""
    x = np.linspace(0.1, 1.0, 2 * t, dtype=np.float32).reshape(t, 2)
    if where is not None:
        x[-1, 0 if where == "y" else 1] = 10.0
    return x


def stepped(model, *chunks):
    s = model.open_stream()
    for c in chunks:
        model.step(s, c)
    return s


@pytest.mark.parametrize(("where", "match"), [("y", "output 'y'"), ("state", "state 'h0'")])
def test_a_step_whose_output_or_state_overflows_is_refused_and_not_applied(model, where, match):
    s = stepped(model, chunk(2))
    before = s.snapshot()
    with pytest.raises(NonFiniteError, match=f"{match}.*expected finite values, got NaN or Inf"):
        model.step(s, chunk(3, where))
    assert s.snapshot() == before  # state and step count bit for bit
    twin = stepped(model, chunk(2))
    np.testing.assert_array_equal(model.step(s, chunk(1))["y"], model.step(twin, chunk(1))["y"])


def test_allow_nonfinite_lets_an_overflow_through(model):
    model.allow_nonfinite = True
    s = model.open_stream()
    assert np.isinf(model.step(s, chunk(1, "y"))["y"]).any()
    model.step(s, chunk(1, "state"))
    assert np.isinf(s.state["h0"]).any() and s.steps == 2


# (name, the chunks of three streams): item 1 overflows; same lengths (one call), lengths apart (one call per length),
# a chunk given as {input: array} (the general path)
PATHS = {
    "uniform": [chunk(2), chunk(2, "y"), chunk(2)],
    "grouped": [chunk(1), chunk(3, "state"), chunk(3)],
    "dicts": [{"x": chunk(2)}, chunk(2, "state"), {"x": chunk(1)}],
}


@pytest.mark.parametrize("path", PATHS)
def test_raise_mode_refuses_an_overflow_and_advances_no_stream(model, path):
    streams = [stepped(model, chunk(1)) for _ in range(3)]
    before = [s.snapshot() for s in streams]
    with pytest.raises(NonFiniteError, match="item 1 of the batch: .*expected finite values"):
        model.step_batch(list(zip(streams, PATHS[path])))
    assert [s.snapshot() for s in streams] == before


@pytest.mark.parametrize("path", PATHS)
def test_isolate_gives_the_overflow_to_its_stream_alone_and_advances_the_others(model, path):
    streams = [stepped(model, chunk(1)) for _ in range(4)]
    items = list(zip(streams, [*PATHS[path], chunk(2, "y")]))  # item 3 overflows too
    before = [s.snapshot() for s in streams]
    out = model.step_batch(items, on_error="isolate")
    for i in (1, 3):
        assert isinstance(out[i], NonFiniteError) and "expected finite values" in str(out[i])
        assert streams[i].snapshot() == before[i]
    for i in (0, 2):
        twin = stepped(model, chunk(1))
        np.testing.assert_array_equal(out[i]["y"], model.step(twin, items[i][1])["y"])
        assert streams[i].snapshot() == twin.snapshot()


def test_isolate_with_a_bad_chunk_and_an_overflow_gives_each_its_own_error(model):
    streams = [model.open_stream() for _ in range(4)]
    chunks = [chunk(2), np.ones((2, 3), np.float32), chunk(2, "state"), chunk(1)]
    out = model.step_batch(list(zip(streams, chunks)), on_error="isolate")
    assert isinstance(out[1], ShapeError) and isinstance(out[2], NonFiniteError)
    assert [s.steps for s in streams] == [2, 0, 0, 1]
    for i in (0, 3):
        np.testing.assert_array_equal(out[i]["y"], model.step(model.open_stream(), chunks[i])["y"])


def test_isolate_keeps_the_good_rows_of_the_call_that_overflowed(tmp_path):
    model = StreamingModel.load(overflow_model(tmp_path / "m.onnx"), foreign=FOREIGN)
    streams = [model.open_stream() for _ in range(8)]
    calls = []
    run = model._runner.run
    model._runner.run = lambda feeds: calls.append(len(feeds["x"])) or run(feeds)
    out = model.step_batch([(s, chunk(1, "y" if i == 5 else None)) for i, s in enumerate(streams)], on_error="isolate")
    assert isinstance(out[5], NonFiniteError) and all(isinstance(o, dict) for i, o in enumerate(out) if i != 5)
    assert calls == [8]  # the good rows of that one call are kept: no call again
    assert [s.steps for s in streams] == [1] * 5 + [0] + [1] * 2


def test_raise_mode_names_the_first_overflow_in_item_order_whichever_call_found_it(model):
    streams = [model.open_stream() for _ in range(3)]  # calls: items 0 and 2 (3 steps), then item 1 (1 step)
    with pytest.raises(NonFiniteError, match="item 1 of the batch: output 'y'"):
        model.step_batch(list(zip(streams, [chunk(3), chunk(1, "y"), chunk(3, "state")])))
    assert [s.steps for s in streams] == [0, 0, 0]


def test_a_fixed_batch_model_in_raise_mode_advances_no_stream_when_a_later_one_fails(tmp_path):
    model = StreamingModel.load(overflow_model(tmp_path / "m.onnx", 1), foreign=FOREIGN)
    streams = [model.open_stream() for _ in range(3)]
    with pytest.raises(NonFiniteError, match="item 2 of the batch"):
        model.step_batch(list(zip(streams, [chunk(1), chunk(1), chunk(1, "state")])))
    assert [s.steps for s in streams] == [0, 0, 0]
    assert all(not s.state["h0"].any() for s in streams)


# ---------------------------------------------------------------------------------------------------- snapshots
def forged(snapshot: bytes, body: bytes | None = None, **fields) -> bytes:
    """``snapshot`` with header ``fields`` (and state ``body``) replaced and its checksum recomputed, as a forger
    would."""
    magic = b"EDGERNN-SNAPSHOT"
    (n,) = struct.unpack_from("<I", snapshot, len(magic))
    header = json.loads(snapshot[len(magic) + 4:len(magic) + 4 + n])
    body = snapshot[len(magic) + 4 + n:] if body is None else body
    header.update(fields)
    crc = {k: header.get(k) for k in ("version", "fingerprint", "steps", "states")}
    header["crc32"] = zlib.crc32(json.dumps(crc, sort_keys=True).encode() + body)
    head = json.dumps(header).encode()
    return magic + struct.pack("<I", len(head)) + head + body


def held(model) -> tuple[int, int]:
    """(rows held by streams, rows in the slab)."""
    return len(model._slab), model._slab.capacity


@pytest.mark.parametrize("steps", [2**62 + 1, 2**63 - 1, 2**63, 2**64, 10**300],
                         ids=["2**62+1", "2**63-1", "2**63", "2**64", "10**300"])
def test_a_step_count_that_could_wrap_is_refused_and_takes_no_row(steps):
    model = StreamingModel.load(LSTM)
    bad = forged(model.open_stream().snapshot(), steps=steps)
    rows = held(model)
    for _ in range(1000):
        with pytest.raises(StateError, match="snapshot: .*expected a step count"):
            model.restore(bad)
    assert held(model) == rows


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_nonfinite_state_in_a_snapshot_is_refused_unless_allowed(value):
    model = StreamingModel.load(LSTM)
    snap = model.open_stream().snapshot()
    body = np.zeros(24, np.float32)
    body[17] = value
    bad = forged(snap, body.tobytes())
    with pytest.raises(StateError, match="snapshot: state 'c0': expected finite values, got NaN or Inf"):
        model.restore(bad)
    model.allow_nonfinite = True
    np.testing.assert_array_equal(model.restore(bad).state["c0"].reshape(-1), body[12:])


def test_the_largest_step_count_restores_and_never_wraps():
    model = StreamingModel.load(LSTM)
    s = model.restore(forged(model.open_stream().snapshot(), steps=2**62))
    assert s.steps == 2**62
    model.step(s, np.ones((3, 4), np.float32))
    model.step_batch([(s, np.ones((2, 4), np.float32)), (model.open_stream(), np.ones((2, 4), np.float32))])
    assert s.steps == 2**62  # saturated, not wrapped
    again = model.restore(s.snapshot())
    assert again.steps == 2**62 and all(np.array_equal(again.state[k], v) for k, v in s.state.items())


def test_failing_opens_and_restores_never_leak_a_slab_row():
    model = StreamingModel.load(LSTM)
    good = model.open_stream()
    snap = good.snapshot()
    rows = held(model)
    bad_states = [{"h0": np.zeros((2, 6), np.float32)}, {"h0": np.full((2, 6), np.nan, np.float32),
                                                         "c0": np.zeros((2, 6), np.float32)}, {"h0": "x", "c0": 1}]
    bad_snaps = [snap[:-1], forged(snap, steps=-1), forged(snap, version=3), b"", None, snap + b"\0"]
    for _ in range(200):
        for state in bad_states:
            with pytest.raises(EdgeRnnError):
                model.open_stream(initial_state=state)
        for b in bad_snaps:
            with pytest.raises(StateError):
                model.restore(b)
    assert held(model) == rows


def test_initial_state_follows_allow_nonfinite_like_step():
    model = StreamingModel.load(LSTM)
    nan = {"h0": np.full((2, 6), np.nan, np.float32), "c0": np.zeros((2, 6), np.float32)}
    with pytest.raises(NonFiniteError, match="initial_state 'h0'"):
        model.open_stream(initial_state=nan)
    model.allow_nonfinite = True
    assert np.isnan(model.open_stream(initial_state=nan).state["h0"]).all()


# ---------------------------------------------------------------------------------------------------- entry points
@pytest.mark.parametrize("variant", [["int8"], {"int8": 1}, 8, b"int8"])
def test_a_variant_that_is_not_a_name_is_refused_cleanly(variant):
    with pytest.raises(UnsupportedError, match="variant: expected a str"):
        StreamingModel.load(BUNDLE, variant=variant)


@pytest.mark.parametrize("given", [123, None, ["a.onnx"], 1.5])
def test_a_model_that_is_not_a_path_or_bytes_is_refused_cleanly(given):
    with pytest.raises(UnsupportedError, match="model: expected a path"):
        StreamingModel.load(given)


def test_allow_nonfinite_must_be_a_bool():
    with pytest.raises(UnsupportedError, match="allow_nonfinite: expected True or False, got 'yes'"):
        StreamingModel.load(LSTM, allow_nonfinite="yes")
    model = StreamingModel.load(LSTM)
    with pytest.raises(UnsupportedError, match="allow_nonfinite: expected True or False"):
        model.allow_nonfinite = 1
    assert model.allow_nonfinite is False


@pytest.mark.parametrize("on_error", ["raise", "isolate"])
@pytest.mark.parametrize("items", [None, 5, 1.5, object()])
def test_items_that_are_not_a_sequence_of_pairs_give_a_stream_error(items, on_error):
    model = StreamingModel.load(LSTM)
    with pytest.raises(StreamError, match="step_batch: expected a sequence of \\(stream, chunk\\) pairs"):
        model.step_batch(items, on_error=on_error)


@pytest.mark.parametrize("bad", [[[True] * 4], [["1"] * 4], [[1.0, 2.0, "3", 4.0]], [[b"1"] * 4]])
def test_strings_and_booleans_are_not_numbers(bad):
    model = StreamingModel.load(LSTM)
    s = model.open_stream()
    with pytest.raises(ShapeError, match="x: expected an array of shape .*, got (bool|str|bytes) values .*numbers only"
                       ):
        model.step(s, bad)
    out = model.step_batch([(s, bad), (model.open_stream(), [[1.0] * 4])], on_error="isolate")
    assert isinstance(out[0], ShapeError) and isinstance(out[1], dict) and s.steps == 0


@pytest.mark.parametrize(("value", "match"), [("1", "got str values"), (True, "got bool values"),
                                               (1e300, None),
                                               (None, "got NoneType values"),
                                               (10**400, "got list that numpy cannot convert")],
                         ids=["str", "bool", "1e300", "None", "10**400"])
def test_an_initial_state_given_as_lists_holds_numbers_only(value, match):
    model = StreamingModel.load(LSTM)
    rows = held(model)
    state = {"h0": [[0.0] * 5 + [value]] * 2, "c0": np.zeros((2, 6), np.float32)}
    match = (f"initial_state 'h0': expected an array of shape \\(2, 6\\) float32, {match}" if match else
             "initial_state 'h0': expected values within float32's range, got a finite value beyond it")
    with pytest.raises(ShapeError, match=match):
        model.open_stream(initial_state=state)
    assert held(model) == rows


# ---------------------------------------------------------------------------------------------------- the service
def test_the_service_answers_an_overflow_400_to_binary_and_json_steps_and_does_not_apply_it(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import warnings

    with warnings.catch_warnings():  # starlette 1.x asks for httpx2 beside the httpx the client extra installs
        warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient")
        from starlette.testclient import TestClient
    from edge_rnn.service import ServiceConfig, create_app

    model = StreamingModel.load(overflow_model(tmp_path / "m.onnx"), foreign=FOREIGN)
    with TestClient(create_app(model, ServiceConfig())) as http:
        sid = http.post("/v1/streams").json()["stream_id"]
        before = http.get(f"/v1/streams/{sid}/snapshot").content
        binary = {"X-Step": "0", "content-type": "application/octet-stream"}
        for head, body in ((binary, {"content": chunk(2, "state").tobytes()}),
                           ({"X-Step": "0"}, {"json": {"x": chunk(2, "y").tolist()}})):
            r = http.post(f"/v1/streams/{sid}/steps", headers=head, **body)
            assert r.status_code == 400 and r.json()["code"] == "bad_chunk", r.text
            assert "expected finite values, got NaN or Inf" in r.json()["message"]
            assert http.get(f"/v1/streams/{sid}/snapshot").content == before
        r = http.post(f"/v1/streams/{sid}/steps", headers={"X-Step": "0"}, json={"x": chunk(1).tolist()})
        assert r.status_code == 200  # the refused steps were not counted either
        for steps in (2**63, 2**64):
            r = http.post("/v1/streams", content=forged(before, steps=steps))
            assert r.status_code == 400 and r.json()["code"] == "bad_snapshot", r.text
