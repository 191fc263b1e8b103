"""The state slab under step_batch: rows, the pending batch, growth, reuse of rows, threads (committed fixtures)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import REPO

from edge_rnn.errors import InferenceError
from edge_rnn.runtime import ForeignModel, StreamingModel

MODEL = REPO / "tests" / "data" / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6), states h0/c0


class Mirror:
    """Each stream's chunks replayed on a stream of its own, stepped alone on another model: the reference."""

    def __init__(self):
        self.model = StreamingModel.load(MODEL)
        self.twin: dict[int, object] = {}

    def open(self, stream):
        self.twin[id(stream)] = self.model.open_stream()

    def step(self, stream, x):
        return self.model.step(self.twin[id(stream)], x)["y"]

    def state(self, stream):
        return self.twin[id(stream)].state


def test_changing_batches_repeats_single_steps_reads_resets_and_reopens_equal_each_stream_alone():
    rng = np.random.default_rng(0)
    model, mirror = StreamingModel.load(MODEL), Mirror()
    streams = [model.open_stream() for _ in range(40)]  # past the slab's first capacity (16): it grows
    for s in streams:
        mirror.open(s)
    last: list = []
    kinds = {"repeat": 0, "batch": 0, "single": 0, "read": 0, "reset": 0, "reopen": 0}
    for _ in range(300):
        kind = rng.choice(list(kinds), p=[0.3, 0.3, 0.15, 0.1, 0.07, 0.08])
        if kind == "repeat" and not last:
            kind = "batch"
        kinds[kind] += 1
        if kind in ("repeat", "batch"):
            if kind == "batch":
                last = [streams[i] for i in rng.permutation(len(streams))[:int(rng.integers(2, 40))]]
            t = int(rng.integers(1, 4))
            xs = [rng.standard_normal((t, 4)).astype(np.float32) for _ in last]
            outs = model.step_batch(list(zip(last, xs)))
            for s, x, out in zip(last, xs, outs):
                np.testing.assert_array_equal(out["y"], mirror.step(s, x))
        elif kind == "single":
            s = streams[int(rng.integers(len(streams)))]
            x = rng.standard_normal((int(rng.integers(1, 4)), 4)).astype(np.float32)
            np.testing.assert_array_equal(model.step(s, x)["y"], mirror.step(s, x))
        elif kind == "read":  # a stream of the pending batch, read alone
            s = (last or streams)[int(rng.integers(len(last or streams)))]
            want = mirror.state(s)
            assert all(np.array_equal(v, want[k]) for k, v in s.state.items())
            assert s.steps == mirror.twin[id(s)].steps
            again = model.restore(s.snapshot())
            assert all(np.array_equal(v, want[k]) for k, v in again.state.items())
            again.close()
        elif kind == "reset":
            s = (last or streams)[int(rng.integers(len(last or streams)))]
            s.reset()
            mirror.twin[id(s)].reset()
        else:  # a stream of the pending batch closed, and its row given to a new stream: zeros, not the old state
            i = int(rng.integers(len(streams)))
            old = streams[i]
            old.close()
            streams[i] = model.open_stream()
            mirror.open(streams[i])
            assert not any(v.any() for v in streams[i].state.values()) and streams[i].steps == 0
            last = [s for s in last if s is not old]
    assert min(kinds.values()) > 5, kinds  # every kind of use happened
    for s in streams:
        want = mirror.state(s)
        assert all(np.array_equal(v, want[k]) for k, v in s.state.items())


def test_a_stream_dropped_without_close_gives_its_row_back():
    model = StreamingModel.load(MODEL)
    x = np.ones((2, 4), np.float32)
    kept = [model.open_stream() for _ in range(16)]
    model.step_batch([(s, x) for s in kept])
    capacities = set()
    for _ in range(200):  # open, step and drop: the row returns each time, the slab grows once (16 are kept)
        s = model.open_stream()
        model.step(s, x)
        capacities.add(model._slab.capacity)
        del s  # no cycle holds a stream: it is freed here
    assert capacities == {32}
    fresh = model.open_stream()
    assert not any(v.any() for v in fresh.state.values())


def test_threads_batching_their_own_streams_and_overlapping_ones_never_lose_a_step():
    model = StreamingModel.load(MODEL)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4)).astype(np.float32)
    own = [[model.open_stream() for _ in range(8)] for _ in range(3)]
    shared = [model.open_stream() for _ in range(6)]  # stepped by every thread, in opposite orders
    errors: list[BaseException] = []

    def work(k: int) -> None:
        r = np.random.default_rng(k)
        try:
            for i in range(60):
                mine = [own[k][j] for j in r.permutation(8)[:int(r.integers(2, 8))]]
                order = shared if k % 2 else shared[::-1]
                model.step_batch([(s, x) for s in mine + order[:int(r.integers(0, 6))]])
                if i % 7 == 0:
                    model.step(own[k][0], x)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    ref = StreamingModel.load(MODEL)
    for group in own + [shared]:  # each stream's state is its own steps on x, however they were batched
        for s in group:
            alone = ref.open_stream()
            for _ in range(s.steps):
                ref.step(alone, x)
            assert all(np.array_equal(v, alone.state[k]) for k, v in s.state.items())
    assert all(s.steps > 0 for g in own for s in g)


def test_a_state_output_of_the_wrong_batch_size_raises_and_advances_nothing(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    g = helper.make_graph(  # hn averages the batch: (1, 3) whatever the batch, the contract says (batch, 3)
        [helper.make_node("Add", ["x", "h0"], ["s"]), helper.make_node("Tanh", ["s"], ["y"]),
         helper.make_node("ReduceMean", ["y"], ["hn"], axes=[0], keepdims=1)],
        "mean", [helper.make_tensor_value_info("x", f, ["b", 3]), helper.make_tensor_value_info("h0", f, ["b", 3])],
        [helper.make_tensor_value_info("y", f, ["b", 3]), helper.make_tensor_value_info("hn", f, ["b", 3])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    model = StreamingModel.load(tmp_path / "m.onnx", foreign=ForeignModel(state_batch_axis=0))
    a, b = model.open_stream(), model.open_stream()
    with pytest.raises(InferenceError, match="state output for 'h0': expected \\(2, 3\\) float32, got \\(1, 3\\)"):
        model.step_batch([(a, np.ones(3, np.float32)), (b, np.ones(3, np.float32))])
    assert a.steps == b.steps == 0 and not a.state["h0"].any()
    model.step(a, np.ones(3, np.float32))  # alone, the shapes agree
    assert a.steps == 1


def test_an_empty_batch_a_scalar_chunk_and_a_copied_stream_are_answered_plainly():
    import copy

    from edge_rnn.errors import ShapeError, StreamError

    model = StreamingModel.load(MODEL)
    a, b = model.open_stream(), model.open_stream()
    assert model.step_batch([]) == [] and model.step_batch((), on_error="isolate") == []
    with pytest.raises(ShapeError, match=r"expected shape \(time, 4\) float32, got \(\) float32"):
        model.step_batch([(a, np.ones((1, 4), np.float32)), (b, np.float32(1))])  # was a TypeError from len()
    assert a.steps == b.steps == 0
    with pytest.raises(StreamError, match="cannot be copied"):  # two streams would share one state row
        copy.copy(a)
    with pytest.raises(StreamError, match="cannot be copied"):
        copy.deepcopy(a)


def test_a_row_whose_state_or_step_count_cannot_be_written_is_given_back():
    model = StreamingModel.load(MODEL)
    slab = model._slab
    held, capacity = len(slab), slab.capacity
    for _ in range(100):
        with pytest.raises(OverflowError):
            slab.allocate(None, 2**64)  # decode_snapshot refuses such a count first; the slab holds to its rows too
        with pytest.raises(ValueError):
            slab.allocate({"h0": np.zeros((3, 3), np.float32), "c0": np.zeros((2, 6), np.float32)})
    assert (len(slab), slab.capacity) == (held, capacity)
    rows = [model.open_stream() for _ in range(3)]
    assert len(slab) == held + 3
    rows[0].close()
    del rows[1]
    assert len(slab) == held + 1
