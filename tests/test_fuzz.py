"""Property-based fuzzing: random input gives a right answer or an EdgeRnnError, never anything else.

Covers the contract parser, the snapshot decoder, .npy reading and the chunk validation of step and
step_batch; after every error, every stream's state and step count are unchanged. The budget is small
in CI (profile "ci", the default); HYPOTHESIS_PROFILE=dev runs 20 times as many examples.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from conftest import REPO  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from edge_rnn.contract import Contract  # noqa: E402
from edge_rnn.errors import EdgeRnnError  # noqa: E402
from edge_rnn.harness import load_data  # noqa: E402
from edge_rnn.runtime import StreamingModel  # noqa: E402
from edge_rnn.runtime._external import external_locations  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DATA = REPO / "tests" / "data"
LAYER = StreamingModel.load(DATA / "lstm_layer.onnx")
CELL = StreamingModel.load(DATA / "gru_cell.onnx")
TOKENS = StreamingModel.load(DATA / "token_gru.onnx")  # int64 ids in [0, 39]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
CONTRACT = json.loads(LAYER.session.get_modelmeta().custom_metadata_map["edge_rnn"])


def mutate(d: dict, path: list, value: object) -> dict:
    """``d`` with the entry at ``path`` (keys and indices, as far as they reach) replaced by ``value``."""
    out = json.loads(json.dumps(d))
    node = out
    for key in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node)[key % len(node)]]
        elif isinstance(node, list) and node:
            node = node[key % len(node)]
    if isinstance(node, dict) and node and path:
        node[sorted(node)[path[-1] % len(node)]] = value
    elif isinstance(node, list) and node and path:
        node[path[-1] % len(node)] = value
    return out


@given(st.lists(st.integers(0, 10), min_size=1, max_size=4), json_values)
def test_contract_parser_takes_a_contract_or_raises_an_edge_rnn_error(path, value):
    try:
        Contract.from_dict(mutate(CONTRACT, path, value))
    except EdgeRnnError:
        pass


@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_contract_json_text(text):
    try:
        Contract.from_json(text)
    except EdgeRnnError:
        pass


SNAP = LAYER.open_stream().snapshot()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory for the files the properties write (module-scoped: hypothesis reruns each test many times)."""
    return tmp_path_factory.mktemp("fuzz")


@given(st.integers(0, len(SNAP)), st.binary(max_size=40), st.sampled_from(["cut", "flip", "insert"]))
def test_snapshot_decoder_restores_exactly_or_raises(at, junk, how):
    data = {"cut": SNAP[:at], "flip": SNAP[:at] + bytes(b ^ 0x5A for b in SNAP[at:at + 1]) + SNAP[at + 1:],
            "insert": SNAP[:at] + junk + SNAP[at:]}[how]
    try:
        restored = LAYER.restore(data)
    except EdgeRnnError:
        return
    assert data == SNAP or how == "insert" and not junk  # only an intact snapshot restores
    assert restored.steps == 0 and all(not v.any() for v in restored.state.values())


EXTERNAL = (DATA / "external" / "lstm_layer.onnx").read_bytes()  # weights in weights.bin beside it


@given(st.integers(0, len(EXTERNAL)), st.binary(min_size=1, max_size=12), st.sampled_from(["cut", "flip", "insert"]))
def test_model_loading_with_external_weights_loads_or_raises(scratch, at, junk, how):
    """A damaged model file (its external-data locations included) loads, or is refused, never read elsewhere."""
    data = {"cut": EXTERNAL[:at], "flip": EXTERNAL[:at] + bytes(b ^ junk[0] for b in EXTERNAL[at:at + 1])
            + EXTERNAL[at + 1:], "insert": EXTERNAL[:at] + junk + EXTERNAL[at:]}[how]
    locations = external_locations(data)
    assert locations is None or all(isinstance(x, str) for x in locations)
    folder = scratch / "model"
    folder.mkdir(exist_ok=True)
    (folder / "weights.bin").write_bytes((DATA / "external" / "weights.bin").read_bytes())
    (folder / "model.onnx").write_bytes(data)
    try:
        StreamingModel.load(folder / "model.onnx")
    except EdgeRnnError:
        return
    assert all(not x or (folder / x).resolve().parent == folder.resolve() for x in locations or [])


@given(st.binary(max_size=300), st.sampled_from([b"", b"\x93NUMPY\x01\x00", b"PK\x03\x04"]))
def test_npy_reading_reads_or_raises(scratch, body, prefix):
    path = scratch / "fuzz.npy"
    try:
        path.write_bytes(prefix + body)
        try:
            out = load_data(path)
        except EdgeRnnError:
            return
        assert isinstance(out, (list, dict))
    finally:
        path.unlink(missing_ok=True)


@given(st.lists(st.integers(0, 6), min_size=1, max_size=3),
       st.sampled_from(["float32", "float64", "int32", "bool", "object"]),
       st.sampled_from([0.0, 1.0, np.nan, np.inf, 3e38, 1e300]))
def test_npy_round_trip_of_odd_arrays(scratch, shape, dtype, fill):
    buf = io.BytesIO()
    if dtype == "object":
        np.save(buf, np.empty(shape, object), allow_pickle=True)
    else:
        with np.errstate(all="ignore"):
            np.save(buf, np.full(shape, fill).astype(dtype))
    path = scratch / "fuzz2.npy"
    try:
        path.write_bytes(buf.getvalue())
        try:
            (a,) = load_data(path)
        except EdgeRnnError:
            assert dtype == "object"
            return
        assert a.shape == tuple(shape) and a.dtype == np.dtype(dtype)
    finally:
        path.unlink(missing_ok=True)


def _full(shape: list[int], fill: float, dtype: str) -> np.ndarray:
    if dtype == "object":
        return np.empty(shape, object)
    with np.errstate(all="ignore"):  # NaN or 1e39 cast to int64 or float32: the odd array is the point
        return np.full(shape, fill).astype(dtype)


chunks = st.one_of(
    st.builds(lambda shape, dtype, fill: _full(shape, fill, dtype),
              st.lists(st.integers(0, 5), min_size=0, max_size=3),
              st.sampled_from(["float32", "float64", "int64", "object"]),
              st.sampled_from([0.5, np.nan, np.inf, 1e39])),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6),
    st.lists(st.lists(st.integers(-2**70, 2**70), max_size=5), max_size=4),
    st.lists(st.integers(-3, 45) | st.floats(-1, 41), max_size=6),  # token ids, in range or not, or not integers
    st.dictionaries(st.sampled_from(["x", "y", "h0"]), st.none() | st.just([0.0] * 4), max_size=2),
    st.none() | st.text(max_size=4),
)


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.sampled_from(["layer", "cell", "tokens"]), st.lists(chunks, min_size=1, max_size=4), st.booleans())
def test_step_and_step_batch_answer_or_raise_and_never_touch_state_on_error(which, xs, batched):
    model = {"layer": LAYER, "cell": CELL, "tokens": TOKENS}[which]
    streams = [model.open_stream() for _ in xs]
    good = {"layer": np.full((2, 4), 0.25, np.float32), "cell": np.full(4, 0.25, np.float32),
            "tokens": np.array([3, 39])}[which]
    for s in streams:
        model.step(s, good)
    before = [(s.state, s.steps) for s in streams]
    try:
        if batched:
            model.step_batch(list(zip(streams, xs)))
        else:
            model.step(streams[0], xs[0])
    except EdgeRnnError:
        for s, (state, steps) in zip(streams, before):
            assert s.steps == steps and all(np.array_equal(s.state[k], v, equal_nan=True) for k, v in state.items())
        return
    isolated = model.step_batch(list(zip([model.open_stream() for _ in xs], xs)), on_error="isolate")
    assert all(isinstance(r, (dict, EdgeRnnError)) for r in isolated)
