"""The batching engine: its consumer, on the committed fixtures, without torch or a web server."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from service_streams import MODEL_PATH, chunks, offline

from edge_rnn.errors import NonFiniteError, ShapeError, UnsupportedError
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
