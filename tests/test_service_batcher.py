"""The batching engine: its consumer, on the committed fixtures, without torch or a web server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from service_streams import MODEL_PATH, chunks, offline

from edge_rnn.errors import NonFiniteError, ShapeError, StreamError, UnsupportedError
from edge_rnn.runtime import StreamingModel
from edge_rnn.service import Batcher, Overloaded, ShuttingDown

MODEL = StreamingModel.load(MODEL_PATH)


def test_fifty_concurrent_streams_in_random_chunks_equal_offline_results_exactly():
    rng = np.random.default_rng(0)
    work = [chunks(rng, 60) for _ in range(50)]
    sizes: list[int] = []

    async def main():
        batcher = Batcher(MODEL, max_batch=16, max_wait_ms=1, on_batch=lambda n, waits, s: sizes.append(n))
        batcher.start()

        async def client(parts, seed):
            pace = np.random.default_rng(seed)
            stream = MODEL.open_stream()
            ys = []
            for c in parts:
                ys.append((await batcher.step(stream, c))["y"])
                await asyncio.sleep(float(pace.random()) * 0.002)
            return np.concatenate(ys)

        outs = await asyncio.gather(*(client(c, i) for i, c in enumerate(work)))
        await batcher.stop()
        return outs

    outs = asyncio.run(main())
    assert all(np.array_equal(o, offline(c)) for o, c in zip(outs, work))  # bit for bit
    assert sum(sizes) == sum(len(c) for c in work) and max(sizes) <= 16
    assert len(sizes) < sum(sizes) / 3  # steps of different streams shared calls


def test_one_streams_pipelined_steps_apply_in_order_never_two_in_one_batch():
    rng = np.random.default_rng(1)
    parts = chunks(rng, 40)
    others = [chunks(rng, 40) for _ in range(5)]

    async def main():
        batcher = Batcher(MODEL, max_batch=8, max_wait_ms=2)
        batcher.start()
        stream = MODEL.open_stream()
        mine = asyncio.gather(*(batcher.step(stream, c) for c in parts))  # all submitted at once

        async def other(cs):
            s = MODEL.open_stream()
            return [await batcher.step(s, c) for c in cs]

        results, *_ = await asyncio.gather(mine, *(other(cs) for cs in others))
        await batcher.stop()
        return np.concatenate([r["y"] for r in results]), stream.steps

    y, steps = asyncio.run(main())
    assert steps == 40 and np.array_equal(y, offline(parts))


def test_a_poisoned_stream_gets_its_error_with_its_state_unchanged_and_the_others_are_untouched():
    rng = np.random.default_rng(2)
    work = [chunks(rng, 60) for _ in range(20)]
    bad = [np.full((3, 4), np.nan, np.float32), np.zeros((3, 5), np.float32), np.zeros((0, 4), np.float32)]

    async def main():
        batcher = Batcher(MODEL, max_batch=32, max_wait_ms=1)
        batcher.start()
        victim = MODEL.open_stream()
        await batcher.step(victim, np.ones((2, 4), np.float32))
        before = {k: v.copy() for k, v in victim.state.items()}

        async def poison():
            errors = []
            for i in range(30):
                try:
                    await batcher.step(victim, bad[i % 3])
                except (NonFiniteError, ShapeError) as e:
                    errors.append(type(e).__name__)
                await asyncio.sleep(0)
            return errors

        async def client(parts):
            s = MODEL.open_stream()
            return np.concatenate([(await batcher.step(s, c))["y"] for c in parts])

        errors, *outs = await asyncio.gather(poison(), *(client(c) for c in work))
        await batcher.stop()
        return errors, outs, before, victim

    errors, outs, before, victim = asyncio.run(main())
    assert len(errors) == 30 and {"NonFiniteError", "ShapeError"} == set(errors)
    assert victim.steps == 2 and all(np.array_equal(before[k], v) for k, v in victim.state.items())
    assert all(np.array_equal(o, offline(c)) for o, c in zip(outs, work))


def test_a_full_queue_answers_overloaded_at_once_and_stopping_finishes_what_was_accepted():
    async def main():
        batcher = Batcher(MODEL, max_batch=4, max_wait_ms=0, max_queue=3)  # not started: nothing is consumed
        streams = [MODEL.open_stream() for _ in range(5)]
        x = np.ones((2, 4), np.float32)
        accepted = [asyncio.ensure_future(batcher.step(s, x)) for s in streams[:3]]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="3 steps already queued"):
            await batcher.step(streams[3], x)
        batcher.start()
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDown):
            await batcher.step(streams[4], x)
        await stopping
        return [await f for f in accepted], streams

    results, streams = asyncio.run(main())
    assert all(r["y"].shape == (2, 6) for r in results)
    assert [s.steps for s in streams] == [2, 2, 2, 0, 0]


def test_batcher_options_are_validated():
    with pytest.raises(UnsupportedError, match="max_batch: expected an int >= 1"):
        Batcher(MODEL, max_batch=0)
    with pytest.raises(UnsupportedError, match="max_wait_ms: expected a number in 0..10000"):
        Batcher(MODEL, max_wait_ms=-1)


def test_cancelling_the_consumer_mid_batch_ends_it_and_tells_the_waiting_clients():
    """Was: the consumer caught the CancelledError meant for itself, handed it to the clients as their step's
    error and went on waiting for ever."""
    import threading

    running, release = threading.Event(), threading.Event()

    class Slow(Batcher):
        def _run(self, items):
            running.set()
            release.wait(10)
            return super()._run(items)

    async def main():
        batcher = Slow(MODEL, max_batch=4, max_wait_ms=0)
        batcher.start()
        step = asyncio.ensure_future(batcher.step(MODEL.open_stream(), np.ones((1, 4), np.float32)))
        assert await asyncio.to_thread(running.wait, 10)  # the batch is in the worker
        batcher._task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(batcher._task), 2)
        except asyncio.CancelledError:
            pass
        ended = batcher._task.done()
        release.set()
        with pytest.raises(ShuttingDown, match="stopped while this step ran"):
            await step
        return ended

    assert asyncio.run(main())



# ---------------------------------------------------------------- long chunks, run as pieces (issue 19, item 4)
class Recorded:
    """The model as a batcher sees it, each step_batch call's items recorded as (stream, chunk shape); ``fail``:
    {stream: k} gives that stream's k-th item (from 1) a NonFiniteError instead of stepping it, as the runtime
    refuses a state that is not finite."""

    def __init__(self, model, fail=None):
        self._model, self.calls, self.fail, self._seen = model, [], dict(fail or {}), {}

    def __getattr__(self, name):
        return getattr(self._model, name)

    def step_batch(self, items, on_error="raise"):
        self.calls.append([(s, np.shape(x)) for s, x in items])
        bad = set()
        for i, (s, _) in enumerate(items):
            self._seen[s] = self._seen.get(s, 0) + 1
            if self.fail.get(s) == self._seen[s]:
                bad.add(i)
        out = iter(self._model.step_batch([it for i, it in enumerate(items) if i not in bad], on_error=on_error))
        return [NonFiniteError("state output 'c0': expected finite values, got NaN or Inf") if i in bad
                else next(out) for i in range(len(items))]

    def of(self, stream):
        """The shapes of ``stream``'s chunks in the calls, in order."""
        return [shape for call in self.calls for s, shape in call if s is stream]


def pieces(x, n, axis=0):
    """``x`` cut into consecutive pieces of ``n`` steps along ``axis``, the last one shorter."""
    return [np.take(x, range(a, min(a + n, x.shape[axis])), axis=axis) for a in range(0, x.shape[axis], n)]


def stepped(model, parts, stream=None):
    """Each part stepped in order on one stream (a fresh one unless given), by the model alone: every output."""
    stream = stream or model.open_stream()
    return [model.step(stream, p) for p in parts]


def joined(outs, axis=0):
    return {k: np.concatenate([o[k] for o in outs], axis=axis) for k in outs[0]}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)  # bit for bit


def step_alone(recorded, x, max_batch_frames):
    """One stream of ``recorded``'s model stepped by ``x`` through a batcher: the stream and the outputs."""
    stream = recorded.open_stream()

    async def main():
        batcher = Batcher(recorded, max_batch_frames=max_batch_frames)
        batcher.start()
        out = await batcher.step(stream, x)
        await batcher.stop()
        return out

    return stream, asyncio.run(main())


def test_a_chunk_longer_than_max_batch_frames_runs_in_pieces_beside_the_small_steps_and_equals_those_pieces():
    """Was: a chunk ran whole in one batch, however long, and every other stream's step waited for it."""
    rng = np.random.default_rng(3)
    big = [rng.standard_normal((n, 4)).astype(np.float32) for n in (100, 3, 40)]
    small = [[rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(12)] for _ in range(5)]
    model = Recorded(MODEL)
    stream, others = MODEL.open_stream(), [MODEL.open_stream() for _ in small]

    async def main():
        batcher = Batcher(model, max_batch=16, max_wait_ms=1, max_batch_frames=16)  # not started: all queued first
        mine = [batcher.submit(stream, x) for x in big]
        theirs = [[batcher.submit(s, x) for x in xs] for s, xs in zip(others, small)]
        batcher.start()
        await batcher.stop()  # finishes every step accepted, the pieces left too
        return [f.result() for f in mine], [[f.result() for f in fs] for fs in theirs]

    mine, theirs = asyncio.run(main())
    parts = pieces(big[0], 16) + [big[1]] + pieces(big[2], 16)
    alone = stepped(MODEL, parts)
    assert [r["y"].shape for r in mine] == [(100, 6), (3, 6), (40, 6)]
    assert same(mine[0], joined(alone[:7])) and same(mine[1], alone[7]) and same(mine[2], joined(alone[8:]))
    assert stream.steps == 143
    assert model.of(stream) == [p.shape for p in parts]  # one piece per batch, in order, then the later steps
    assert all(shape[0] <= 16 for call in model.calls for _, shape in call)
    assert len(model.calls[0]) == 6  # the first piece ran beside each small stream's first step
    assert all(np.array_equal(np.concatenate([r["y"] for r in rs]), offline(xs)) for rs, xs in zip(theirs, small))


@pytest.mark.parametrize("path,chunk", [("lstm_layer.onnx", lambda rng: rng.standard_normal((37, 4)).tolist()),
                                        ("token_gru.onnx", lambda rng: rng.integers(0, 40, 37).tolist())])
def test_a_long_json_chunk_of_nested_lists_runs_in_pieces_too(path, chunk):
    model = StreamingModel.load(MODEL_PATH.parent / path)
    x = chunk(np.random.default_rng(4))
    recorded = Recorded(model)
    stream, out = step_alone(recorded, x, 10)
    parts = [x[a:a + 10] for a in range(0, 37, 10)]
    assert recorded.of(stream) == [np.shape(p) for p in parts] and stream.steps == 37
    assert same(out, joined(stepped(model, parts)))


def _time_last_rnn() -> StreamingModel:
    """A tanh RNN whose chunks are (features, time) and outputs (hidden, time): time last, batch first."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edge_rnn.runtime import ForeignModel

    rng = np.random.default_rng(5)
    w, r = (numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n)
            for n, s in (("W", (1, 5, 3)), ("R", (1, 5, 5))))
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[2, 0, 1]),  # (b, 3, t) -> (t, b, 3)
             helper.make_node("RNN", ["xt", "W", "R", "", "", "h0"], ["ys", "hn"], hidden_size=5),
             helper.make_node("Squeeze", ["ys", "one"], ["y3"]),  # (t, 1, b, 5) -> (t, b, 5)
             helper.make_node("Transpose", ["y3"], ["y"], perm=[1, 2, 0])]  # -> (b, 5, t)
    f = TensorProto.FLOAT
    g = helper.make_graph(nodes, "time_last", [helper.make_tensor_value_info("x", f, ["b", 3, "t"]),
                                                helper.make_tensor_value_info("h0", f, [1, "b", 5])],
                          [helper.make_tensor_value_info("y", f, ["b", 5, "t"]),
                           helper.make_tensor_value_info("hn", f, [1, "b", 5])],
                          [w, r, numpy_helper.from_array(np.array([1], np.int64), "one")])
    data = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    return StreamingModel.load(data, foreign=ForeignModel(state_map={"h0": "hn"}, batch_axis=0, time_axis=2))


def test_pieces_are_cut_and_joined_on_the_time_axis_where_the_model_has_it():
    model = _time_last_rnn()
    assert model.inputs[0].stream_time_axis == 1 and model.outputs[0].stream_time_axis == 1
    x = np.random.default_rng(6).standard_normal((3, 50)).astype(np.float32)  # (features, time)
    recorded = Recorded(model)
    stream, out = step_alone(recorded, x, 16)
    assert recorded.of(stream) == [(3, 16), (3, 16), (3, 16), (3, 2)] and stream.steps == 50
    assert out["y"].shape == (5, 50) and same(out, joined(stepped(model, pieces(x, 16, axis=1)), axis=1))


def test_a_model_without_a_time_axis_or_with_a_fixed_chunk_takes_its_chunks_whole(tmp_path):
    onnx = pytest.importorskip("onnx")
    from edge_rnn.deploy import static_form

    onnx.save(static_form(onnx.load(str(MODEL_PATH)), 3), tmp_path / "fixed3.onnx")
    cases = [("fixed3.onnx", tmp_path, np.ones((3, 4), np.float32)),  # exactly 3 steps per call
             ("gru_cell.onnx", MODEL_PATH.parent, np.ones(4, np.float32)),  # one step per call
             ("vad_state.onnx", MODEL_PATH.parent, np.ones((8, 4), np.float32))]  # a window, no time axis
    for name, folder, x in cases:
        model = StreamingModel.load(folder / name)
        recorded = Recorded(model)
        stream, out = step_alone(recorded, x, 1)
        assert recorded.of(stream) == [x.shape], name
        assert same(out, stepped(model, [x])[0]), name


FIVE = np.ones((5, 4), np.float32)


def one_long_step(recorded, stream, chunk, *, then=None, on_batch=None):
    """``stream`` stepped by FIVE, then by ``chunk`` (and ``then``, pipelined) beside a small stream, in pieces
    of 16: its state before ``chunk``, and the outcome (outputs or error) of ``chunk`` and ``then``."""

    async def main():
        batcher = Batcher(recorded, max_batch_frames=16, max_wait_ms=1,
                          on_batch=None if on_batch is None else (lambda *a: on_batch(batcher)))
        batcher.start()
        await batcher.step(stream, FIVE)
        before = {k: v.copy() for k, v in stream.state.items()}
        steps = [batcher.submit(stream, x) for x in (chunk, then) if x is not None]
        side = batcher.submit(MODEL.open_stream(), np.ones((1, 4), np.float32))
        outcomes = await asyncio.gather(*steps, side, return_exceptions=True)
        await batcher.stop()
        return before, outcomes[:-1]

    return asyncio.run(main())


def test_a_chunk_with_a_bad_frame_is_refused_before_any_piece_runs():
    x = np.ones((100, 4), np.float32)
    x[95, 2] = np.nan  # in the last piece
    for bad, error in ((x, NonFiniteError), (np.ones((100, 5), np.float32), ShapeError)):
        recorded, stream = Recorded(MODEL), MODEL.open_stream()
        before, (outcome,) = one_long_step(recorded, stream, bad)
        assert isinstance(outcome, error), outcome
        assert recorded.of(stream) == [(5, 4)]  # only the step before: no piece ran
        assert stream.steps == 5 and same(stream.state, before)


def test_a_later_piece_that_fails_puts_the_state_back_and_answers_the_error():
    """Was (with the runtime refusing a state that is not finite): the pieces before the failing one stayed
    applied, though the step was answered with an error."""
    x = np.random.default_rng(7).standard_normal((100, 4)).astype(np.float32)
    after = np.full((2, 4), 0.5, np.float32)
    stream = MODEL.open_stream()
    recorded = Recorded(MODEL, fail={stream: 4})  # FIVE, two pieces, then the third piece fails
    before, (failed, later) = one_long_step(recorded, stream, x, then=after)
    assert isinstance(failed, NonFiniteError), failed
    assert recorded.of(stream) == [(5, 4), (16, 4), (16, 4), (16, 4), (2, 4)]
    assert same(later, stepped(MODEL, [FIVE, after])[1])  # the later step ran on the state put back
    assert stream.steps == 7 and before["h0"].shape == (2, 6)


def test_a_stream_closed_midway_through_a_long_chunk_gets_unknown_stream():
    stream, closed = MODEL.open_stream(), []

    def close_it(batcher):
        if stream.steps > 5 and not closed:  # its first piece ran
            closed.append(stream.steps)
            stream.close()

    _, (outcome, later) = one_long_step(Recorded(MODEL), stream, np.ones((100, 4), np.float32),
                                        then=np.ones((1, 4), np.float32), on_batch=close_it)
    assert closed == [21] and isinstance(outcome, StreamError) and isinstance(later, StreamError)
    assert "closed" in str(outcome)


def test_a_client_that_gives_up_midway_leaves_the_state_as_it_was():
    x = np.random.default_rng(8).standard_normal((100, 4)).astype(np.float32)
    after = np.full((2, 4), 0.5, np.float32)
    stream, given_up = MODEL.open_stream(), []

    def give_up(batcher):
        if stream.steps > 5 and not given_up:  # its first piece ran: its client cancels the step
            given_up.append(stream.steps)
            next(p for p in batcher._held if p.stream is stream).future.cancel()

    _, (cancelled, later) = one_long_step(Recorded(MODEL), stream, x, then=after, on_batch=give_up)
    assert given_up == [21] and isinstance(cancelled, asyncio.CancelledError)
    assert same(later, stepped(MODEL, [FIVE, after])[1]) and stream.steps == 7


def test_a_streams_checkpoint_puts_its_state_and_steps_back_bit_for_bit():
    stream = MODEL.open_stream()
    MODEL.step(stream, np.full((3, 4), 0.25, np.float32))
    before, put_back = {k: v.copy() for k, v in stream.state.items()}, stream.checkpoint()
    MODEL.step(stream, np.ones((40, 4), np.float32))
    put_back()
    assert stream.steps == 3 and same(stream.state, before)
    stream.close()
    with pytest.raises(StreamError, match="stream is closed"):
        put_back()


def test_max_batch_frames_is_validated():
    for bad in (0, -1, 1.5, True, "64"):
        with pytest.raises(UnsupportedError, match="max_batch_frames: expected an int >= 1"):
            Batcher(MODEL, max_batch_frames=bad)
