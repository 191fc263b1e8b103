"""The streaming runtime: per-stream state, batching, snapshots, bad input, threads."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed
pytest.importorskip("onnx")

import threading
from pathlib import Path

import numpy as np
import torch

import edge_rnn
from edge_rnn.errors import EdgeRnnError, NonFiniteError, ShapeError, StateError, StreamError
from edge_rnn.harness import TOLERANCE
from edge_rnn.runtime import SessionConfig, StreamingModel

ATOL = TOLERANCE["float32"].atol  # the one tolerance table: ONNX against PyTorch fp32
IN, H = 5, 7
rng = np.random.default_rng(0)


def _export(path, module, decomposed=False):
    torch.manual_seed(0)
    edge_rnn.export(module.eval(), path, decomposed=decomposed, verify_parity=False)
    return path


MODULES = {
    "lstm2": lambda: torch.nn.LSTM(IN, H, num_layers=2),
    "gru_bf": lambda: torch.nn.GRU(IN, H, batch_first=True),
    "lstm_proj": lambda: torch.nn.LSTM(IN, H, proj_size=3, batch_first=True),
    "rnn_relu": lambda: torch.nn.RNN(IN, H, nonlinearity="relu"),
    "lstm_cell": lambda: torch.nn.LSTMCell(IN, H),
    "gru_bi": lambda: torch.nn.GRU(IN, H, bidirectional=True),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    out = {}
    for name, make in MODULES.items():
        for form in ("native", "decomposed"):
            torch.manual_seed(0)
            module = make().eval()
            path = _export(d / f"{name}_{form}.onnx", module, decomposed=form == "decomposed")
            out[name, form] = (module, path)
    return out


def chunk(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, IN)).astype(np.float32)


def torch_reference(module, x: np.ndarray) -> np.ndarray:
    """One pass of the torch module over one stream's (T, IN) sequence."""
    with torch.no_grad():
        t = torch.from_numpy(x)
        if isinstance(module, torch.nn.LSTMCell):
            h = c = torch.zeros(1, H)
            ys = []
            for row in t:
                h, c = module(row[None], (h, c))
                ys.append(h[0])
            return torch.stack(ys).numpy()
        batch_first = module.batch_first
        y, _ = module(t[None] if batch_first else t[:, None])
        return (y[0] if batch_first else y[:, 0]).numpy()


STREAMABLE = [k for k in MODULES if k != "gru_bi"]


@pytest.mark.parametrize("name", STREAMABLE)
@pytest.mark.parametrize("form", ["native", "decomposed"])
def test_random_chunks_equal_one_pass_and_torch(models, name, form):
    module, path = models[name, form]
    model = StreamingModel.load(path, session=SessionConfig(threads=1))
    x = chunk(60, seed=1)
    cell = name.endswith("cell")
    stream = model.open_stream()
    ys, t = [], 0
    sizes = np.random.default_rng(2).integers(1, 9, 30)
    for n in sizes:
        if t >= 60:
            break
        n = 1 if cell else int(min(n, 60 - t))
        piece = x[t] if cell else x[t : t + n]
        y = model.step(stream, piece)["y"]
        ys.append(y[None] if cell else y)
        t += n
    ys = np.concatenate(ys)
    ref = torch_reference(module, x[:t])
    assert np.abs(ys - ref).max() <= ATOL
    assert stream.steps == t
    if not cell:
        one = model.step(model.open_stream(), x[:t])["y"]
        assert np.abs(ys - one).max() <= 1e-6


def _profiled(path, tmp_path) -> StreamingModel:
    """A model whose onnxruntime session records every call (public profiling, no private fields touched)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp_path / "profile")
    so.intra_op_num_threads = 1
    return StreamingModel.load(path, session=SessionConfig(session_options=so))


def _batch_sizes(model: StreamingModel) -> tuple[int, list[int]]:
    """(number of onnxruntime calls, batch size of each first-layer recurrent op run) from the session's profile."""
    import json

    events = json.loads(Path(model.session.end_profiling()).read_text())
    runs = sum(1 for e in events if e.get("name") == "model_run")
    sizes = [shape["float"][1] for e in events if e.get("cat") == "Node"
             and e.get("args", {}).get("op_name") in ("LSTM", "GRU")
             for shape in e["args"]["input_type_shape"][:1] if shape["float"][2] == IN]
    return runs, sizes


@pytest.mark.parametrize("name", ["lstm2", "gru_bf", "lstm_cell"])
def test_step_batch_equals_stepping_alone(models, name, tmp_path):
    _, path = models[name, "native"]
    model = _profiled(path, tmp_path)  # steps the batches; `alone` steps each stream on its own model
    alone_model = StreamingModel.load(path, session=SessionConfig(threads=1))
    cell = name.endswith("cell")
    lengths = [1] * 6 if cell else [4, 4, 4, 1, 7, 4]
    a = [model.open_stream() for _ in lengths]
    b = [alone_model.open_stream() for _ in lengths]
    for rnd in range(3):  # several rounds: the carried states must stay separate
        xs = [chunk(n, seed=10 * rnd + i)[0 if cell else slice(None)] for i, n in enumerate(lengths)]
        batched = model.step_batch(list(zip(a, xs)))
        alone = [alone_model.step(s, x) for s, x in zip(b, xs)]
        for got, want in zip(batched, alone):
            assert got.keys() == want.keys()
            for k in want:
                assert got[k].shape == want[k].shape
                assert np.abs(got[k] - want[k]).max() <= 1e-6
    for s1, s2 in zip(a, b):
        for k, v in s2.state.items():
            assert np.abs(s1.state[k] - v).max() <= 1e-6
        assert s1.steps == s2.steps
    # one onnxruntime call per distinct length and round, each with all the streams of that length
    runs, sizes = _batch_sizes(model)
    per_round = sorted(lengths.count(n) for n in set(lengths))
    assert runs == 3 * len(per_round) and sorted(sizes) == sorted(per_round * 3)


def test_state_reset_copy_and_initial_state(models):
    _, path = models["lstm2", "native"]
    model = StreamingModel.load(path)
    s = model.open_stream()
    assert set(s.state) == {"h0", "c0"} and s.state["h0"].shape == (2, H)
    assert not np.any(s.state["h0"])
    model.step(s, chunk(5))
    st = s.state
    st["h0"][:] = 42.0  # a copy: the stream is untouched
    assert not np.any(s.state["h0"] == 42.0)
    s.reset()
    assert not np.any(s.state["h0"]) and s.steps == 0
    init = {"h0": np.full((2, H), 0.5, np.float32), "c0": np.zeros((2, H), np.float32)}
    s2 = model.open_stream(initial_state=init)
    np.testing.assert_array_equal(s2.state["h0"], init["h0"])
    with pytest.raises(ShapeError, match=r"initial_state 'h0': expected shape \(2, 7\) float32, got \(7,\)"):
        model.open_stream(initial_state={"h0": np.zeros(H, np.float32), "c0": init["c0"]})
    with pytest.raises(StateError, match="missing state 'c0'"):
        model.open_stream(initial_state={"h0": init["h0"]})


@pytest.mark.parametrize("name", ["lstm2", "lstm_cell"])
def test_snapshot_resumes_bit_identically(models, name):
    _, path = models[name, "decomposed"]
    model = StreamingModel.load(path)
    cell = name.endswith("cell")
    xs = [chunk(1 if cell else 3, seed=i)[0 if cell else slice(None)] for i in range(8)]
    s = model.open_stream()
    for x in xs[:4]:
        model.step(s, x)
    snap = s.snapshot()
    assert isinstance(snap, bytes)
    rest_a = [model.step(s, x)["y"] for x in xs[4:]]
    again = StreamingModel.load(path)  # even in another process or after a restart
    r = again.restore(snap)
    assert r.steps == (4 if cell else 12)
    rest_b = [again.step(r, x)["y"] for x in xs[4:]]
    for a, b in zip(rest_a, rest_b):
        np.testing.assert_array_equal(a, b)


def test_snapshot_of_another_model_is_refused(models, tmp_path):
    _, lstm = models["lstm2", "native"]
    _, gru = models["gru_bf", "native"]
    snap = StreamingModel.load(lstm).open_stream().snapshot()
    with pytest.raises(StateError, match="snapshot of another model: expected states"):
        StreamingModel.load(gru).restore(snap)
    torch.manual_seed(99)  # same layout, other weights
    other = _export(tmp_path / "other.onnx", torch.nn.LSTM(IN, H, num_layers=2))
    with pytest.raises(StateError, match="expected fingerprint"):
        StreamingModel.load(other).restore(snap)
    with pytest.raises(StateError, match="expected bytes from Stream.snapshot"):
        StreamingModel.load(lstm).restore(b"garbage")
    with pytest.raises(StateError, match="truncated|expected"):
        StreamingModel.load(lstm).restore(snap[:-4])


BAD = [
    (chunk(4)[:, :3], ShapeError, r"x: expected shape \(time, 5\) float32, got \(4, 3\) float32"),
    (chunk(4)[None], ShapeError, r"x: expected shape \(time, 5\) float32, got \(1, 4, 5\) float32"),
    (chunk(4).astype(np.float64), ShapeError, r"x: expected shape \(time, 5\) float32, got \(4, 5\) float64"),
    (np.zeros((0, IN), np.float32), ShapeError, r"x: expected at least one time step, got an empty chunk"),
    (np.where(np.eye(4, IN) > 0, np.nan, chunk(4)).astype(np.float32), NonFiniteError, "x: expected finite values"),
    (np.full((2, IN), np.inf, np.float32), NonFiniteError, "x: expected finite values"),
    ({"y": chunk(2)}, ShapeError, r"expected inputs \['x'\], got \['y'\]"),
]


@pytest.mark.parametrize("x,err,match", BAD, ids=["features", "rank", "dtype", "empty", "nan", "inf", "name"])
def test_bad_input_raises_and_leaves_state_untouched(models, x, err, match):
    _, path = models["lstm2", "native"]
    model = StreamingModel.load(path)
    s, other = model.open_stream(), model.open_stream()
    model.step(s, chunk(3))
    before = s.state
    with pytest.raises(err, match=match):
        model.step(s, x)
    with pytest.raises(err, match=match):  # one bad item: no stream of the batch advances
        model.step_batch([(other, chunk(3)), (s, x)])
    after = s.state
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])
    assert s.steps == 3 and other.steps == 0
    assert issubclass(err, EdgeRnnError)


def test_nonfinite_can_be_let_through(models):
    _, path = models["lstm2", "decomposed"]
    model = StreamingModel.load(path, allow_nonfinite=True)
    s = model.open_stream()
    y = model.step(s, np.full((2, IN), np.nan, np.float32))["y"]
    assert np.isnan(y).all() and np.isnan(s.state["h0"]).all()  # NaN propagates, as in torch
    # onnxruntime's native LSTM kernel clamps its activations and turns NaN into finite numbers,
    # silently: one more reason the default refuses non-finite input.
    _, native = models["lstm2", "native"]
    m2 = StreamingModel.load(native, allow_nonfinite=True)
    y = m2.step(m2.open_stream(), np.full((2, IN), np.nan, np.float32))["y"]
    assert y.shape == (2, H) and np.isfinite(y).all()  # finite where torch gives NaN: the silent case


def test_closed_stream_and_misuse(models):
    _, path = models["lstm2", "native"]
    model = StreamingModel.load(path)
    s = model.open_stream()
    s.close()
    with pytest.raises(StreamError, match="stream is closed"):
        model.step(s, chunk(2))
    with pytest.raises(StreamError, match="stream is closed"):
        s.snapshot()
    t = model.open_stream()
    with pytest.raises(StreamError, match="at most once per call"):
        model.step_batch([(t, chunk(2)), (t, chunk(2))])
    with pytest.raises(StreamError, match="another model"):
        StreamingModel.load(path).step(t, chunk(2))
    with model.open_stream() as u:
        model.step(u, chunk(1))
    assert u.closed


def test_non_streamable_model_takes_one_whole_sequence_per_call(models):
    module, path = models["gru_bi", "native"]
    model = StreamingModel.load(path)
    assert not model.streamable
    s = model.open_stream()
    y = model.step(s, chunk(9))["y"]
    with torch.no_grad():
        ref = module(torch.from_numpy(chunk(9))[:, None])[0][:, 0].numpy()
    assert np.abs(y - ref).max() <= ATOL
    with pytest.raises(StreamError, match="not streamable"):
        model.step(s, chunk(3))
    s.reset()
    model.step(s, chunk(3))


def test_threads_on_different_streams_and_on_one_stream(models):
    _, path = models["lstm2", "native"]
    model = StreamingModel.load(path, session=SessionConfig(threads=1))
    xs = [chunk(3, seed=i) for i in range(20)]
    want = []
    for _ in range(8):
        s = model.open_stream()
        for x in xs:
            y = model.step(s, x)["y"]
        want.append(y)
    got = [None] * 8

    def work(i):
        s = model.open_stream()
        for x in xs:
            y = model.step(s, x)["y"]
        got[i] = y

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)

    # two threads on one stream: serialised, so the result is the same chunk applied 2 * 50 times
    shared, ref = model.open_stream(), model.open_stream()
    x = chunk(2, seed=5)

    def hammer():
        for _ in range(50):
            model.step(shared, x)

    ts = [threading.Thread(target=hammer) for _ in range(2)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    for _ in range(100):
        model.step(ref, x)
    assert shared.steps == 200
    for k, v in ref.state.items():
        np.testing.assert_array_equal(shared.state[k], v)


def test_unconvertible_input_and_corrupt_snapshots_are_edge_rnn_errors(models):
    import json
    import struct

    _, path = models["lstm2", "native"]
    model = StreamingModel.load(path)
    s = model.open_stream()
    for bad in ([["a"] * IN] * 2, [[1.0] * IN, [1.0] * 4], object()):
        with pytest.raises(ShapeError, match="x: expected an array of shape"):
            model.step(s, bad)
    assert s.steps == 0
    snap = s.snapshot()
    magic = b"EDGERNN-SNAPSHOT"
    (n,) = struct.unpack_from("<I", snap, len(magic))
    header = json.loads(snap[len(magic) + 4 : len(magic) + 4 + n])
    body = snap[len(magic) + 4 + n :]
    for h, match in (([1, 2], "expected an object"), ({**header, "steps": "abc"}, "step count"),
                     ({**header, "steps": -5}, "step count")):
        raw = json.dumps(h).encode()
        with pytest.raises(StateError, match=match):
            model.restore(magic + struct.pack("<I", len(raw)) + raw + body)
