"""Property-based fuzzing: random input gives a right answer or an EdgeRnnError, never anything else.

Covers the contract parser, the snapshot decoder, the runtime's protobuf reader (fields protobuf skips, groups
among them, change no answer it gives; what protobuf cannot parse is refused), .npy reading and the chunk
validation of step and step_batch; after every error, every stream's state and step count are unchanged. The
budget is small in CI (profile "ci", the default); HYPOTHESIS_PROFILE=dev runs 20 times as many examples.
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
from protobuf_wire import MESSAGES, nested_group, rebuilt, varint  # noqa: E402
from protobuf_wire import key as field_key  # noqa: E402

from edge_rnn.contract import Contract  # noqa: E402
from edge_rnn.errors import EdgeRnnError, ModelFormatError  # noqa: E402
from edge_rnn.harness import load_data  # noqa: E402
from edge_rnn.runtime import StreamingModel  # noqa: E402
from edge_rnn.runtime._external import external_locations, operator_types, scan_model  # noqa: E402

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
EXPECTED = dict(np.load(DATA / "expected.npz"))


@given(st.integers(0, len(EXTERNAL)), st.binary(min_size=1, max_size=12), st.sampled_from(["cut", "flip", "insert"]))
def test_model_loading_with_external_weights_loads_or_raises(scratch, at, junk, how):
    """A damaged model file (its external-data locations included) loads, or is refused, never read elsewhere."""
    data = {"cut": EXTERNAL[:at], "flip": EXTERNAL[:at] + bytes(b ^ junk[0] for b in EXTERNAL[at:at + 1])
            + EXTERNAL[at + 1:], "insert": EXTERNAL[:at] + junk + EXTERNAL[at:]}[how]
    try:
        locations = external_locations(data)
    except ModelFormatError:
        locations = None  # bytes the reader cannot parse: the load must refuse them too
    folder = scratch / "model"
    folder.mkdir(exist_ok=True)
    (folder / "weights.bin").write_bytes((DATA / "external" / "weights.bin").read_bytes())
    (folder / "model.onnx").write_bytes(data)
    try:
        StreamingModel.load(folder / "model.onnx")
    except EdgeRnnError:
        return
    assert locations is not None  # what the reader refuses never loads
    assert all(not x or (folder / x).resolve().parent == folder.resolve() for x in locations)


INT8 = (DATA / "bundle" / "lstm_layer.int8.onnx").read_bytes()  # dynamic int8: its streams never share a call
_UNUSED = st.integers(1000, 2**29 - 1)  # field numbers onnx.proto does not use
unknown_fields = st.one_of(
    st.builds(lambda f, v: field_key(f, 0) + varint(v), _UNUSED, st.integers(0, 2**64 - 1)),
    st.builds(lambda f, b: field_key(f, 1) + b, _UNUSED, st.binary(min_size=8, max_size=8)),
    st.builds(lambda f, b: field_key(f, 5) + b, _UNUSED, st.binary(min_size=4, max_size=4)),
    st.builds(lambda f, b: field_key(f, 2) + varint(len(b)) + b, _UNUSED, st.binary(max_size=24)),
    # a group of any field number, a known one too (protobuf skips a field whose wire type is not its own), nested
    st.builds(nested_group, st.integers(1, 8), st.integers(1, 2**29 - 1)),
)
malformed_fields = st.one_of(
    st.builds(lambda f, w: field_key(f, w), st.integers(1, 2**29 - 1), st.sampled_from([6, 7])),  # no such wire type
    st.builds(lambda f: field_key(f, 4), st.integers(1, 2**29 - 1)),  # the end of a group it is not in
    st.builds(lambda w: field_key(0, w) + b"\0" * 8, st.sampled_from([0, 1, 2, 5])),  # field number 0
    st.builds(lambda f: field_key(f, 3) + field_key(f + 1, 4), st.integers(1, 2**29 - 2)),  # a group ended by another
    st.builds(lambda f: field_key(f, 3), st.integers(1, 2**29 - 1)),  # a group that does not end within its message
    st.builds(lambda f: field_key(f, 2) + varint(2**40), st.integers(1, 2**29 - 1)),  # longer than what holds it
)


def _inserted(data: bytes, where: tuple[int, ...], at: int, new: list[bytes]) -> bytes:
    """The fields ``new`` inserted among the fields of each message at ``where`` (protobuf_wire.MESSAGES), from
    position ``at`` on (modulo their number), every enclosing length rewritten."""
    def edit(path: tuple[int, ...], parts: list[bytes]) -> list[bytes]:
        if path != where:
            return parts
        parts = list(parts)
        for i, field in enumerate(new):
            n = (at + 7 * i) % (len(parts) + 1)
            parts[n:n] = [field]
        return parts

    return rebuilt(data, edit)


@given(st.sampled_from(MESSAGES), st.integers(0, 10**6), st.lists(unknown_fields, min_size=1, max_size=3))
def test_fields_protobuf_skips_change_no_answer_of_the_reader_or_the_load(scratch, where, at, junk):
    """Unknown fields of every wire type, groups among them, wherever they are: the same external weights, read
    from the same folder (the outputs are those of the model's own weights), and the same operators (a dynamic
    int8 model stays one whose streams never share a call)."""
    data = _inserted(EXTERNAL, where, at, junk)
    assert external_locations(data) == ["weights.bin"] * 6
    folder = scratch / "unknown"
    folder.mkdir(exist_ok=True)
    (folder / "weights.bin").write_bytes((DATA / "external" / "weights.bin").read_bytes())
    (folder / "model.onnx").write_bytes(data)
    model = StreamingModel.load(folder / "model.onnx")
    y = model.step(model.open_stream(), EXPECTED["lstm_layer.x"])["y"]
    np.testing.assert_allclose(y, EXPECTED["lstm_layer.y"], atol=1e-5)
    int8 = _inserted(INT8, where, at, junk)
    assert operator_types(int8) == operator_types(INT8)
    assert StreamingModel.load(int8).rows_coupled


@given(st.sampled_from(MESSAGES), st.integers(0, 10**6), malformed_fields)
def test_a_field_protobuf_cannot_parse_is_refused_wherever_it_is(scratch, where, at, field):
    for base in (EXTERNAL, INT8):
        data = _inserted(base, where, at, [field])
        if data == base:
            continue  # no such message in this model (the int8 one keeps no external data)
        with pytest.raises(ModelFormatError, match="expected an ONNX model, could not parse it"):
            external_locations(data)
        folder = scratch / "malformed"
        folder.mkdir(exist_ok=True)
        (folder / "weights.bin").write_bytes((DATA / "external" / "weights.bin").read_bytes())
        (folder / "model.onnx").write_bytes(data)
        with pytest.raises(ModelFormatError, match="expected an ONNX model, could not parse it"):
            StreamingModel.load(folder / "model.onnx")


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


# ---------------------------------------------------------------- every place onnx.proto keeps a tensor or a graph
def _len(field: int, body: bytes) -> bytes:
    return field_key(field, 2) + varint(len(body)) + body


# Per message, the fields that hold messages the schema can lead to a tensor through (onnx.proto, field by field):
# kind -> [(field, kind of the message it holds)]
_SCHEMA = {
    "model": [(7, "graph"), (20, "training"), (25, "function")],
    "training": [(1, "graph"), (2, "graph")],
    "function": [(7, "node"), (11, "attribute")],
    "graph": [(1, "node"), (5, "tensor"), (15, "sparse")],
    "node": [(5, "attribute")],
    "attribute": [(5, "tensor"), (6, "graph"), (10, "tensor"), (11, "graph"), (22, "sparse"), (23, "sparse")],
    "sparse": [(1, "tensor"), (2, "tensor")],
}
# Fields that hold no tensor, put among the others: a graph's value_info, a node's op_type, an attribute's TypeProto
_NOISE = {"graph": _len(13, _len(1, b"v")), "node": _len(4, b"Relu"), "attribute": _len(14, _len(1, b"")),
          "model": _len(8, _len(1, b"")), "function": _len(1, b"f")}


@st.composite
def _message(draw, kind: str, depth: int, names: list[str]) -> bytes:
    """A random ``kind`` message; every external tensor in it appends its name to ``names``, in file order."""
    if kind == "tensor":
        name = f"t{len(names)}"
        if not draw(st.booleans()):
            return _len(8, name.encode()) + field_key(9, 2) + varint(4) + b"\0" * 4  # kept inside: raw_data
        names.append(name)
        entry = _len(1, b"location") + _len(2, f"{name}.bin".encode())
        return _len(8, name.encode()) + field_key(14, 0) + varint(1) + _len(13, entry)
    parts = []
    choices = [c for c in _SCHEMA[kind] if depth < 5 or c[1] in ("tensor", "sparse")]
    for _ in range(draw(st.integers(0, 3))):
        if _NOISE.get(kind) and draw(st.booleans()):
            parts.append(_NOISE[kind])
        if choices:
            field, child = draw(st.sampled_from(choices))
            parts.append(_len(field, draw(_message(child, depth + 1, names))))
    return b"".join(parts)


@given(st.data())
@settings(max_examples=200)
def test_every_external_tensor_anywhere_in_a_random_model_is_found(data):
    """A random model of every message that can lead to a tensor (graphs, subgraphs, functions and their attribute
    defaults, training_info, sparse tensors), singular fields given more than once among them: the reader finds
    each external tensor, in file order, and no other."""
    names: list[str] = []
    model = data.draw(_message("model", 0, names))
    assert [x.tensor for x in scan_model(model).external] == names
