"""What the issue-19 probe found in the loaders: every place the ONNX schema keeps a tensor or a graph is read
(weights hidden in a local function's attribute defaults, a dynamic quantiser in a default graph), inspect merges a
repeated message field as protobuf does, a padded graph is refused before onnxruntime builds it, a contract's JSON
fails in one line, and snapshots and weight locations are read strictly.

The reproducers that need whole working models are built with onnx (skipped without it); the rest are raw protobuf
wire bytes, so the reader is tested against the schema, not against onnx's own writer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from conftest import REPO
from protobuf_wire import key, varint

from edge_rnn.contract import Contract
from edge_rnn.errors import ModelFormatError, StateError
from edge_rnn.runtime import StreamingModel
from edge_rnn.runtime._external import scan_model

DATA = REPO / "tests" / "data"
LAYER = DATA / "lstm_layer.onnx"
EXTERNAL = DATA / "external" / "lstm_layer.onnx"


def msg(field: int, body: bytes) -> bytes:
    return key(field, 2) + varint(len(body)) + body


def text(field: int, value: str) -> bytes:
    return msg(field, value.encode())


# ---------------------------------------------------------------- models built with onnx (the probe's reproducers)
_CONTRACT = {"format": 1, "inputs": [{"name": "x", "batch_axis": 0, "time_axis": None, "dtype": "float32"}],
             "outputs": [{"name": "y", "batch_axis": 0, "time_axis": None, "dtype": "float32"}],
             "states": [{"input": "h", "output": "hn", "shape": [None, 4], "batch_axis": 0, "dtype": "float32"}]}


def _ext(onnx, name: str, location: str):
    t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=[4],
                         data_location=onnx.TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=location)
    return t


def _model_with(onnx, fn, first, initializer=()):
    """x -> first (a node of the local function) -> + h -> y; hn = y."""
    h, T = onnx.helper, onnx.TensorProto
    nodes = [first, h.make_node("Add", ["t", "h"], ["y"]), h.make_node("Identity", ["y"], ["hn"])]
    if initializer:
        nodes = [first, h.make_node("Add", ["t0", "b"], ["t"]), *nodes[1:]]
        first.output[0] = "t0"
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["B", 4]),
                                  h.make_tensor_value_info("h", T.FLOAT, ["B", 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["B", 4]),
                      h.make_tensor_value_info("hn", T.FLOAT, ["B", 4])], initializer=list(initializer))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("local", 1)], functions=[fn])
    h.set_model_props(m, {"edge_rnn": json.dumps(_CONTRACT)})
    m.ir_version = 8
    return m.SerializeToString()


def _hidden_weights_model(folder):
    """Probe 01: a Constant in a local function takes an external tensor from the function's attribute default
    (FunctionProto.attribute_proto); one ordinary external initializer makes the model load from its path."""
    onnx = pytest.importorskip("onnx")
    h = onnx.helper
    fn = h.make_function("local", "AddV", ["X"], ["Y"], [
        onnx.NodeProto(op_type="Constant", output=["C"], attribute=[
            onnx.AttributeProto(name="value", ref_attr_name="v", type=onnx.AttributeProto.TENSOR)]),
        h.make_node("Add", ["X", "C"], ["Y"])], [h.make_opsetid("", 17)])
    fn.attribute_proto.append(h.make_attribute("v", _ext(onnx, "v", "hidden.bin")))
    folder.mkdir(exist_ok=True)
    np.zeros(4, np.float32).tofile(folder / "ok.bin")
    np.full(4, 7.0, np.float32).tofile(folder / "hidden.bin")
    data = _model_with(onnx, fn, h.make_node("AddV", ["x"], ["t"], domain="local"), [_ext(onnx, "b", "ok.bin")])
    (folder / "m.onnx").write_bytes(data)
    return folder / "m.onnx"


def test_weights_in_a_function_attribute_default_are_found_and_fingerprinted(tmp_path):
    """Was: the reader skipped FunctionProto.attribute_proto; onnxruntime read hidden.bin, which the fingerprint
    did not cover, so swapping it changed the outputs (7 -> 9) and left the fingerprint as it was."""
    path = _hidden_weights_model(tmp_path / "models")
    assert {x.location for x in scan_model(path.read_bytes()).external} == {b"ok.bin", b"hidden.bin"}
    model = StreamingModel.load(path)
    np.testing.assert_array_equal(model.step(model.open_stream(), {"x": np.zeros(4, np.float32)})["y"], 7.0)
    np.full(4, 9.0, np.float32).tofile(path.parent / "hidden.bin")
    assert StreamingModel.load(path).fingerprint != model.fingerprint


def test_a_bundle_refuses_weights_hidden_in_a_function_default_that_its_manifest_does_not_hash(tmp_path):
    """Was (probe 01b): the bundle loaded with hidden.bin swapped, its outputs moved 7 -> -100."""
    path = _hidden_weights_model(tmp_path / "b")

    def ref(f):
        return {"file": f, "sha256": hashlib.sha256((tmp_path / "b" / f).read_bytes()).hexdigest(),
                "size": (tmp_path / "b" / f).stat().st_size}

    variant = {**ref(path.name), "external": [ref("ok.bin")], "error": {"max_abs": 0.0, "grows": False},
               "contract": _CONTRACT}
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"format": 2, "variants": {"fp32": variant}}))
    with pytest.raises(ModelFormatError, match=r"keeps weights in 'hidden\.bin', which manifest\.json does not"):
        StreamingModel.load(tmp_path / "b")
    variant["external"].append(ref("hidden.bin"))  # hashed: it loads, and a swap is caught
    (tmp_path / "b" / "manifest.json").write_text(json.dumps({"format": 2, "variants": {"fp32": variant}}))
    StreamingModel.load(tmp_path / "b")
    np.full(4, -100.0, np.float32).tofile(tmp_path / "b" / "hidden.bin")
    with pytest.raises(ModelFormatError, match="hidden.bin"):
        StreamingModel.load(tmp_path / "b")


def test_a_dynamic_quantiser_in_a_function_default_graph_keeps_streams_apart(tmp_path):
    """Was (probe 02): the If's branch came from the function's default graph, unread; the model counted as
    uncoupled, and a loud neighbour in step_batch moved stream a's output by 0.40."""
    onnx = pytest.importorskip("onnx")
    h, T = onnx.helper, onnx.TensorProto
    body = h.make_graph([h.make_node("DynamicQuantizeLinear", ["X"], ["q", "s", "z"]),
                         h.make_node("DequantizeLinear", ["q", "s", "z"], ["o"])], "body", [],
                        [h.make_tensor_value_info("o", T.FLOAT, None)])
    branch = [onnx.AttributeProto(name=n, ref_attr_name="g", type=onnx.AttributeProto.GRAPH)
              for n in ("then_branch", "else_branch")]
    fn = h.make_function("local", "Q", ["X"], ["Y"], [
        h.make_node("Constant", [], ["c"], value=h.make_tensor("c", T.BOOL, [], [True])),
        onnx.NodeProto(op_type="If", input=["c"], output=["Y"], attribute=branch)], [h.make_opsetid("", 17)])
    fn.attribute_proto.append(h.make_attribute("g", body))
    path = tmp_path / "q.onnx"
    path.write_bytes(_model_with(onnx, fn, h.make_node("Q", ["x"], ["t"], domain="local")))
    assert "DynamicQuantizeLinear" in scan_model(path.read_bytes()).ops
    model = StreamingModel.load(path)
    assert not model.batches_streams
    x = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    alone = model.step(model.open_stream(), {"x": x})["y"]
    a, b = model.open_stream(), model.open_stream()
    shared = model.step_batch([(a, {"x": x}), (b, {"x": np.full(4, 1000.0, np.float32)})])[0]["y"]
    np.testing.assert_array_equal(shared, alone)


# ---------------------------------------------------------------- every place of the schema, in raw wire bytes
def ext_tensor(name: str) -> bytes:
    """A TensorProto kept outside the file, in ``<name>.bin``."""
    entry = text(1, "location") + text(2, f"{name}.bin")
    return text(8, name) + key(14, 0) + varint(1) + msg(13, entry)


def _dq_node() -> bytes:
    return text(4, "DynamicQuantizeLinear")


# (path of field numbers from the ModelProto to a TensorProto, a GraphProto or a NodeProto list): every place
# onnx.proto keeps one, each reached through the messages that lead there
_TENSOR_PLACES = {
    "graph.initializer": lambda t: msg(7, msg(5, t)),
    "graph.sparse_initializer.values": lambda t: msg(7, msg(15, msg(1, t))),
    "graph.sparse_initializer.indices": lambda t: msg(7, msg(15, msg(2, t))),
    "node.attribute.t": lambda t: msg(7, msg(1, msg(5, msg(5, t)))),
    "node.attribute.tensors": lambda t: msg(7, msg(1, msg(5, msg(10, t)))),
    "node.attribute.sparse_tensor": lambda t: msg(7, msg(1, msg(5, msg(22, msg(1, t))))),
    "node.attribute.sparse_tensors": lambda t: msg(7, msg(1, msg(5, msg(23, msg(2, t))))),
    "node.attribute.g.initializer": lambda t: msg(7, msg(1, msg(5, msg(6, msg(5, t))))),
    "node.attribute.graphs.initializer": lambda t: msg(7, msg(1, msg(5, msg(11, msg(5, t))))),
    "function.node.attribute.t": lambda t: msg(25, msg(7, msg(5, msg(5, t)))),
    "function.attribute_proto.t": lambda t: msg(25, msg(11, msg(5, t))),
    "function.attribute_proto.tensors": lambda t: msg(25, msg(11, msg(10, t))),
    "function.attribute_proto.sparse_tensor": lambda t: msg(25, msg(11, msg(22, msg(1, t)))),
    "function.attribute_proto.g.initializer": lambda t: msg(25, msg(11, msg(6, msg(5, t)))),
    "function.attribute_proto.graphs.node.attribute.t": lambda t: msg(25, msg(11, msg(11, msg(1, msg(5, msg(5, t)))))),
    "training_info.initialization.initializer": lambda t: msg(20, msg(1, msg(5, t))),
    "training_info.algorithm.initializer": lambda t: msg(20, msg(2, msg(5, t))),
}


@pytest.mark.parametrize("place", sorted(_TENSOR_PLACES))
def test_an_external_tensor_is_found_wherever_the_schema_can_keep_one(place):
    assert [x.location for x in scan_model(_TENSOR_PLACES[place](ext_tensor("w"))).external] == [b"w.bin"]


@pytest.mark.parametrize("place", ["function.attribute_proto.g", "function.attribute_proto.graphs",
                                   "training_info.algorithm", "training_info.initialization"])
def test_an_operator_is_counted_wherever_the_schema_can_keep_a_graph(place):
    node = msg(1, _dq_node())
    data = {"function.attribute_proto.g": msg(25, msg(11, msg(6, node))),
            "function.attribute_proto.graphs": msg(25, msg(11, msg(11, node))),
            "training_info.algorithm": msg(20, msg(2, node)),
            "training_info.initialization": msg(20, msg(1, node))}[place]
    assert scan_model(data).ops == {"DynamicQuantizeLinear": 1}


# ---------------------------------------------------------------- inspect merges repeated copies as protobuf does
def test_inspect_reads_a_repeated_graph_field_merged_as_onnxruntime_does(tmp_path):
    """Was (probe 05): inspect read only the last copy of ModelProto.graph; 6 bytes appended (graph {name: "gg"})
    made it call a model the runtime runs 'an empty or non-ONNX file'."""
    from edge_rnn._inspect import describe

    base = describe(LAYER)
    path = tmp_path / "m.onnx"
    path.write_bytes(LAYER.read_bytes() + msg(7, text(2, "gg")))
    merged = describe(path)
    assert merged.splitlines()[1:] == base.splitlines()[1:]  # all but the graph's name, which the copy sets
    assert merged.splitlines()[0].startswith("model:     gg ")
    StreamingModel.load(path)  # the runtime reads the same merged graph


def test_inspect_shows_an_output_given_in_a_second_copy_of_the_graph(tmp_path):
    from edge_rnn._inspect import describe

    extra = msg(12, text(1, "extra_out") + msg(2, msg(1, key(1, 0) + varint(1))))
    path = tmp_path / "m.onnx"
    path.write_bytes(LAYER.read_bytes() + msg(7, extra))
    assert "extra_out" in describe(path)


# ---------------------------------------------------------------- a graph padded with empty entries
def test_a_graph_padded_with_empty_nodes_is_refused_before_onnxruntime_builds_it(tmp_path):
    """Was (probe 06): 2,000,000 empty nodes (4 MB) made `run` peak at 1.9 GB inside onnxruntime."""
    from edge_rnn._inspect import describe
    from edge_rnn.runtime._external import MAX_NODES

    nodes = b"\x0a\x00" * (MAX_NODES + 1)
    path = tmp_path / "m.onnx"
    path.write_bytes(LAYER.read_bytes() + msg(7, nodes))
    with pytest.raises(ModelFormatError, match=rf"more than {MAX_NODES:,} nodes"):
        StreamingModel.load(path)
    with pytest.raises(ModelFormatError, match=rf"more than {MAX_NODES:,} nodes"):
        describe(path)


def test_the_entry_cap_counts_every_graph_and_function_together():
    from edge_rnn.runtime._external import MAX_ENTRIES, MAX_NODES

    half = b"\x0a\x00" * (MAX_NODES // 2 + 1)
    with pytest.raises(ModelFormatError, match="nodes"):
        scan_model(msg(7, half) + msg(25, half.replace(b"\x0a", b"\x3a")))  # graph nodes + function nodes
    with pytest.raises(ModelFormatError, match="entries"):
        scan_model(msg(7, b"\x6a\x00" * (MAX_ENTRIES + 1)))  # value_info entries count too


# ---------------------------------------------------------------- contract JSON
def _with_contract(tmp_path, replace):
    onnx = pytest.importorskip("onnx")
    m = onnx.load(LAYER)
    for p in m.metadata_props:
        if p.key == "edge_rnn":
            p.value = replace(p.value)
    path = tmp_path / "m.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def test_a_contract_with_a_huge_integer_is_refused_in_one_line(tmp_path):
    """Was: json.loads' ValueError (Python's int-digits limit) escaped StreamingModel.load as a bare ValueError."""
    with pytest.raises(ModelFormatError, match="edge_rnn contract: expected JSON"):
        Contract.from_json('{"format": ' + "9" * 5000 + "}")
    path = _with_contract(tmp_path, lambda t: t[:-1] + ', "extra": ' + "9" * 5000 + "}")
    with pytest.raises(ModelFormatError, match="edge_rnn contract"):
        StreamingModel.load(path)


def test_a_contract_with_a_lone_surrogate_is_refused_in_one_line(tmp_path):
    """Was: the runtime loaded it and `edge-rnn inspect` died printing it (UnicodeEncodeError)."""
    from edge_rnn._inspect import describe

    with pytest.raises(ModelFormatError, match="surrogate"):
        Contract.from_json('{"format": 1, "source": {"a": "\\ud800"}}')
    path = _with_contract(tmp_path, lambda t: t.replace('"tanh"', '"\\ud800"'))
    with pytest.raises(ModelFormatError, match="surrogate"):
        StreamingModel.load(path)
    with pytest.raises(ModelFormatError, match="surrogate"):
        describe(path)


# ---------------------------------------------------------------- snapshot numbers, weight locations
def _forged_snapshot(model, **changes):
    s = model.open_stream()
    model.step(s, {"x": np.ones((3, 4), np.float32)})
    snap = s.snapshot()
    magic = b"EDGERNN-SNAPSHOT"
    n = struct.unpack_from("<I", snap, len(magic))[0]
    head, body = json.loads(snap[len(magic) + 4:len(magic) + 4 + n]), snap[len(magic) + 4 + n:]
    head.update(changes)
    fields = {k: head.get(k) for k in ("version", "fingerprint", "steps", "states")}
    if "crc32" not in changes:
        head["crc32"] = zlib.crc32(json.dumps(fields, sort_keys=True).encode() + body)
    elif changes["crc32"] == "float":
        head["crc32"] = float(zlib.crc32(json.dumps(fields, sort_keys=True).encode() + body))
    t = json.dumps(head).encode()
    return magic + struct.pack("<I", len(t)) + t + body


@pytest.mark.parametrize("changes, match", [({"crc32": "float"}, "checksum"), ({"version": 2.0}, "version")])
def test_a_snapshot_whose_checksum_or_version_is_a_float_is_refused(changes, match):
    model = StreamingModel.load(LAYER)
    model.restore(_forged_snapshot(model))
    with pytest.raises(StateError, match=match):
        model.restore(_forged_snapshot(model, **changes))


def _located(tmp_path, location: bytes):
    sub = tmp_path / "sub"
    sub.mkdir()
    data = EXTERNAL.read_bytes()
    assert len(location) == len(b"weights.bin")  # the same length: the protobuf stays well formed
    (sub / "model.onnx").write_bytes(data.replace(b"weights.bin", location))
    shutil.copy(EXTERNAL.parent / "weights.bin", sub)
    return sub / "model.onnx"


def test_a_weights_location_naming_the_folder_says_so(tmp_path):
    with pytest.raises(ModelFormatError, match=r"the weights file '\./\./\./\./\./\.' is a folder, not a file"):
        StreamingModel.load(_located(tmp_path, b"./././././."))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_weights_location_naming_a_fifo_says_so(tmp_path):
    path = _located(tmp_path, b"pipe.weight")
    os.mkfifo(path.parent / "pipe.weight")
    with pytest.raises(ModelFormatError, match=r"the weights file 'pipe\.weight' is not a regular file"):
        StreamingModel.load(path)


def test_inspect_prints_a_contracts_strings_escaped(tmp_path):
    """Was: an ANSI escape in the contract's source reached the terminal raw."""
    from edge_rnn._inspect import describe

    path = _with_contract(tmp_path, lambda t: t.replace('"tanh"', '"\\u001b[31mRED\\u001b[0m"'))
    out = describe(path)
    assert "\x1b" not in out and "\\x1b[31mRED" in out
