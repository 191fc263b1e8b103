"""Hostile files against the loaders: every byte a model, a bundle or a contract brings is read as what it is, or
refused with one clear EdgeRnnError, never passed on half-read, trusted unchecked or allocated unbounded.

Runs without torch or onnx: the hostile files are the committed fixtures (tests/data), rewritten in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from bundle_copies import copy_bundle
from bundle_copies import read_manifest as _manifest
from bundle_copies import write_manifest as _write_manifest
from conftest import REPO
from protobuf_wire import key, nested_group, rebuilt, varint

from edge_rnn.contract import METADATA_KEY, Contract
from edge_rnn.errors import ArgumentError, ModelFormatError, ShapeError
from edge_rnn.runtime import StreamingModel, run_sequence
from edge_rnn.runtime._external import external_locations, operator_types

DATA = REPO / "tests" / "data"
LAYER = DATA / "lstm_layer.onnx"
EXTERNAL = DATA / "external" / "lstm_layer.onnx"  # lstm_layer.onnx with its tensors in weights.bin beside it
BUNDLE = DATA / "bundle"
EXPECTED = dict(np.load(DATA / "expected.npz"))
GROUP = bytes.fromhex("A306A406")  # field 100, start group; field 100, end group: an empty group, as protobuf skips


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _y(model) -> np.ndarray:
    return model.step(model.open_stream(), EXPECTED["lstm_layer.x"])["y"]


def _external_copy(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXTERNAL.parent / "weights.bin", folder / "weights.bin")
    (folder / "model.onnx").write_bytes(data)
    return folder / "model.onnx"


# --------------------------------------------------------------- 16: the protobuf reader skips groups, refuses junk
def test_an_empty_group_field_does_not_hide_external_weights(tmp_path, monkeypatch):
    path = _external_copy(tmp_path / "model", EXTERNAL.read_bytes() + GROUP)
    decoy = np.frombuffer((EXTERNAL.parent / "weights.bin").read_bytes(), np.float32) * 0.5
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "weights.bin").write_bytes(decoy.tobytes())
    monkeypatch.chdir(tmp_path / "cwd")  # was: the group hid the locations, and onnxruntime read this decoy
    assert external_locations(path.read_bytes()) == ["weights.bin"] * 6
    model = StreamingModel.load(path)
    np.testing.assert_allclose(_y(model), EXPECTED["lstm_layer.y"], atol=1e-5)
    (path.parent / "weights.bin").write_bytes(decoy.tobytes())
    assert StreamingModel.load(path).fingerprint != model.fingerprint  # the fingerprint covers the weights


def test_an_empty_group_field_does_not_make_a_dynamic_int8_model_uncoupled(tmp_path):
    path = tmp_path / "int8.onnx"
    path.write_bytes((BUNDLE / "lstm_layer.int8.onnx").read_bytes() + GROUP)
    assert "com.microsoft.DynamicQuantizeLSTM" in operator_types(path.read_bytes())
    model = StreamingModel.load(path)  # was: operators unknown, counted as uncoupled: streams shared calls
    assert model.rows_coupled and not model.batches_streams


def _in_each_entry(extra: bytes):
    """An edit (protobuf_wire.rebuilt) that appends ``extra`` to every external_data entry."""
    return lambda path, parts: parts + [extra] if path == (7, 5, 13) else parts


@pytest.mark.parametrize("where", ["front", "end", "inside_each_external_data_entry"])
def test_groups_nested_and_holding_every_wire_type_are_skipped_wherever_they_are(tmp_path, where):
    data = EXTERNAL.read_bytes()
    if where == "front":
        data = nested_group(5) + data
    elif where == "end":
        data = data + nested_group(5)
    else:
        data = rebuilt(data, _in_each_entry(nested_group(3)))
    assert external_locations(data) == ["weights.bin"] * 6
    path = _external_copy(tmp_path / "m", data)
    np.testing.assert_allclose(_y(StreamingModel.load(path)), EXPECTED["lstm_layer.y"], atol=1e-5)


@pytest.mark.parametrize("tail,why", [
    (b"\xa6\x06", "wire type 6"),
    (b"\xa7\x06\x00", "wire type 7"),
    (b"\xa3\x06", "a group that does not end"),
    (b"\xa3\x06\xac\x06", "ends group 101 inside group 100"),
    (b"\xa4\x06", "ends a group it is not in"),
    (b"\x00\x00", "field number 0"),
])
def test_bytes_the_reader_cannot_parse_are_refused_never_passed_on(tmp_path, tail, why):
    """Was: the reader gave up (None), and the file went on to onnxruntime with its external data unchecked."""
    path = _external_copy(tmp_path / "m", EXTERNAL.read_bytes() + tail)
    with pytest.raises(ModelFormatError, match=f"expected an ONNX model, could not parse it .*{why}"):
        StreamingModel.load(path)
    with pytest.raises(ModelFormatError, match="could not parse it"):
        external_locations(path.read_bytes())
    with pytest.raises(ModelFormatError, match="could not parse it"):
        operator_types(path.read_bytes())


def test_groups_nested_beyond_the_bound_are_refused(tmp_path):
    path = _external_copy(tmp_path / "m", EXTERNAL.read_bytes() + nested_group(200))
    with pytest.raises(ModelFormatError, match="groups nested more than"):
        StreamingModel.load(path)
    assert external_locations(EXTERNAL.read_bytes() + nested_group(60)) == ["weights.bin"] * 6


def test_an_onnx_file_with_the_ort_mark_cannot_slip_its_weights_past_the_check(tmp_path):
    """A producer_name "xxORTM" puts the ORT format's mark at bytes 4..8 of a valid ONNX protobuf: the check took
    it for an ORT file (weights inside), while onnxruntime, given the path of a .onnx file, reads it as ONNX and
    follows its external data out of the folder."""
    from edge_rnn.harness import open_sessions

    forged = b"\x12\x06xxORTM" + EXTERNAL.read_bytes().replace(b"weights.bin", b"../outs.bin")
    assert forged[4:8] == b"ORTM"
    sub = tmp_path / "sub"
    path = _external_copy(sub, forged)
    shutil.copy(EXTERNAL.parent / "weights.bin", tmp_path / "outs.bin")
    for load in (StreamingModel.load, open_sessions):
        with pytest.raises(ModelFormatError, match="ORT format's mark"):
            load(path)


@pytest.mark.parametrize("location,match", [
    (b"weights\x00bin", r"tensor '.+': its weights file location 'weights\\x00bin' holds a NUL byte"),
    (b"weights\xffbin", r"tensor '.+': its weights file location .* is not UTF-8"),
    (b"*/_ORT_MEM_ADDR_/*", r"tensor '.+': .*onnxruntime reads as a memory address"),
])
def test_a_location_onnxruntime_would_read_otherwise_is_refused_naming_the_tensor(tmp_path, location, match):
    def relocate(path, parts):
        name = key(1, 2) + b"\x08location"
        if path == (7, 5, 13) and parts[0] == name:
            return [name, key(2, 2) + varint(len(location)) + location]
        return parts

    path = _external_copy(tmp_path / "m", rebuilt(EXTERNAL.read_bytes(), relocate))
    if b"*" in location:  # the file it names exists: only the tag itself refuses it
        target = tmp_path / "m" / "*" / "_ORT_MEM_ADDR_"
        target.mkdir(parents=True)
        shutil.copy(EXTERNAL.parent / "weights.bin", target / "*")
    with pytest.raises(ModelFormatError, match=match):  # was: a bare ValueError ("embedded null byte")
        StreamingModel.load(path)


# --------------------------------------------------------------- 17, 18: a bundle's hashes cover every file it loads
@pytest.fixture
def copy(tmp_path) -> Path:
    return copy_bundle(tmp_path)


def _with_external_fp32(folder: Path, cover: bool) -> dict:
    """The bundle's fp32 variant replaced by the same model keeping its weights in weights.bin, its file's hash and
    size fixed up in the manifest (and weights.bin's listed, with ``cover``)."""
    shutil.copy(EXTERNAL, folder / "lstm_layer.onnx")
    shutil.copy(EXTERNAL.parent / "weights.bin", folder / "weights.bin")
    manifest = _manifest(folder)
    entry = manifest["variants"]["fp32"]
    entry.update(sha256=_sha(folder / "lstm_layer.onnx"), size=(folder / "lstm_layer.onnx").stat().st_size)
    if cover:
        entry["external"] = [{"file": "weights.bin", "sha256": _sha(folder / "weights.bin"),
                              "size": (folder / "weights.bin").stat().st_size}]
    _write_manifest(folder, manifest)
    return manifest


def test_a_variants_external_weights_file_not_covered_by_the_manifest_is_refused(copy):
    """Was: loaded, and a swapped weights.bin moved the outputs by up to 0.35. A bundle written before the manifest
    hashed external weights is refused too: edge-rnn package never wrote a variant that keeps weights elsewhere, so
    such a bundle was put together by hand, and a file no hash covers cannot be trusted."""
    _with_external_fp32(copy, cover=False)
    with pytest.raises(ModelFormatError, match=r"keeps weights in 'weights\.bin', which manifest\.json does not "
                                               "cover"):
        StreamingModel.load(copy, variant="fp32")


def test_inspect_marks_an_external_weights_file_the_manifest_does_not_hash_as_loading_refuses_it(copy):
    from click.testing import CliRunner

    from edge_rnn.cli import main

    _with_external_fp32(copy, cover=False)
    r = CliRunner().invoke(main, ["inspect", str(copy)])
    assert r.exit_code == 1 and "WEIGHTS FILE 'weights.bin' NOT HASHED IN THE MANIFEST" in r.output, r.output
    _with_external_fp32(copy, cover=True)
    r = CliRunner().invoke(main, ["inspect", str(copy)])
    assert r.exit_code == 0, r.output  # the weights file is listed, and checked against its hash like the rest
    assert any("weights.bin" in line and "variants.fp32.external.0" in line and "sha256 ok" in line
               for line in r.output.splitlines()), r.output


def test_a_swapped_external_weights_file_is_refused_and_the_right_one_loads(copy):
    _with_external_fp32(copy, cover=True)
    model = StreamingModel.load(copy, variant="fp32")
    np.testing.assert_allclose(_y(model), EXPECTED["lstm_layer.y"], atol=1e-5)
    weights = np.frombuffer((copy / "weights.bin").read_bytes(), np.float32)
    (copy / "weights.bin").write_bytes((weights * 0.5).tobytes())  # the same size
    with pytest.raises(ModelFormatError, match=r"weights\.bin: its SHA-256 does not match manifest\.json"):
        StreamingModel.load(copy, variant="fp32")
    with pytest.raises(ModelFormatError, match=r"weights\.bin: its SHA-256 does not match manifest\.json"):
        StreamingModel.load(copy, variant="fp32", self_test=True)


def test_an_external_weights_file_linked_out_of_the_bundle_is_refused(copy, tmp_path):
    _with_external_fp32(copy, cover=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (copy / "weights.bin").rename(outside / "weights.bin")
    (copy / "weights.bin").symlink_to(outside / "weights.bin")
    with pytest.raises(ModelFormatError, match="lies outside the model's folder|a link out of the bundle's folder"):
        StreamingModel.load(copy, variant="fp32")


def test_a_manifest_linked_out_of_the_bundle_is_refused_as_its_files_are(copy, tmp_path):
    from click.testing import CliRunner

    from edge_rnn.cli import main

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (copy / "manifest.json").rename(outside / "manifest.json")
    (copy / "manifest.json").symlink_to(outside / "manifest.json")
    with pytest.raises(ModelFormatError, match="manifest.json: a link out of the bundle's folder"):
        StreamingModel.load(copy)
    r = CliRunner().invoke(main, ["inspect", str(copy)])
    assert r.exit_code == 1 and "a link out of the bundle's folder" in r.output and "Traceback" not in r.output


def test_the_manifests_sizes_are_held_against_the_files(copy):
    """Was: golden.size was never read. A size that differs is a manifest edited or written for other files."""
    manifest = _manifest(copy)
    manifest["golden"]["size"] += 1
    _write_manifest(copy, manifest)
    with pytest.raises(ModelFormatError, match=r"golden\.npz: \d+ bytes, where manifest\.json gives \d+"):
        StreamingModel.load(copy, variant="fp32", self_test=True)
    manifest["golden"]["size"] -= 1
    manifest["variants"]["fp16"]["size"] = 7
    _write_manifest(copy, manifest)
    with pytest.raises(ModelFormatError, match=r"lstm_layer\.fp16\.onnx: \d+ bytes, where manifest\.json gives 7"):
        StreamingModel.load(copy, variant="fp16")
    assert StreamingModel.load(copy, variant="fp32", self_test=True).self_test.ok


# --------------------------------------------------------------- an ORT form: its own operators and its own bound
def _ort_of(folder: Path, name: str) -> Path:
    """``folder/<name>.onnx`` saved by onnxruntime in ORT format beside it."""
    import onnxruntime as ort

    from edge_rnn.runtime._session import new_session_options

    out = folder / f"{name}.ort"
    so = new_session_options("basic", save_to=str(out), ort_format=True)
    ort.InferenceSession(str(folder / f"{name}.onnx"), so, providers=["CPUExecutionProvider"])
    return out


def _with_ort_int8(folder: Path) -> dict:
    ort_file = _ort_of(folder, "lstm_layer.int8")
    manifest = _manifest(folder)
    entry = manifest["variants"]["int8"]
    entry["ort"] = {"file": ort_file.name, "sha256": _sha(ort_file), "size": ort_file.stat().st_size,
                    "golden": json.loads(json.dumps(entry["golden"]))}
    _write_manifest(folder, manifest)
    return manifest


def test_an_ort_forms_operators_come_from_the_file_not_the_manifest(copy):
    manifest = _with_ort_int8(copy)
    manifest["variants"]["int8"]["operators"] = {"LSTM": 2}  # forged: no dynamic quantisation
    _write_manifest(copy, manifest)
    model = StreamingModel.load(copy, variant="int8", form="ort")
    assert model.rows_coupled and not model.batches_streams  # was: batched together on the manifest's word
    fp32 = _ort_of(copy, "lstm_layer")
    assert not StreamingModel.load(fp32).rows_coupled  # a float32 ORT file, read from its own operators


def test_the_ort_forms_self_test_holds_it_to_the_bound_recorded_for_the_ort_form(copy):
    manifest = _with_ort_int8(copy)
    entry = manifest["variants"]["int8"]
    ort_bound = entry["ort"]["golden"]["bound"]
    entry["golden"]["bound"] = {"atol": 1e-12, "rtol": 0.0}  # the ONNX form's: no int8 kernel is that close
    _write_manifest(copy, manifest)
    model = StreamingModel.load(copy, variant="int8", form="ort", self_test=True)  # was: held to 1e-12, failed
    assert (model.self_test.check.atol, model.self_test.check.rtol) == (ort_bound["atol"], ort_bound["rtol"])
    del entry["ort"]["golden"]
    _write_manifest(copy, manifest)
    with pytest.raises(ModelFormatError, match=r"variant 'int8': expected ort\.golden\.bound"):
        StreamingModel.load(copy, variant="int8", form="ort", self_test=True)


# --------------------------------------------------------------- 19, 20: a contract's sizes and counts are capped
def _contract(**changes) -> dict:
    d = json.loads(StreamingModel.load(LAYER).session.get_modelmeta().custom_metadata_map[METADATA_KEY])
    d.update(changes)
    return d


def test_a_state_is_capped_in_bytes_before_anything_is_allocated():
    d = _contract()
    d["states"][0].update(shape=[1, None, 2**28], dtype="float64")  # was: passed, then MemoryError for 32 GiB
    with pytest.raises(ModelFormatError, match=r"state 'h0': expected at most 64 MiB of state per stream, got "
                                               r"2,147,483,648 bytes \(\[1, null, 268435456\] float64\)"):
        Contract.from_dict(d)
    d["states"][0].update(shape=[1, None, 2**23], dtype="float32")  # 32 MiB each: over the cap together
    d["states"][1].update(shape=[1, None, 2**23 + 1], dtype="float32")
    with pytest.raises(ModelFormatError, match=r"expected at most 64 MiB of state per stream .all states "
                                               r"together., got 67,108,868 bytes"):
        Contract.from_dict(d)
    d["states"][1].update(shape=[1, None, 2**22])
    assert Contract.from_dict(d).states[0].shape == (1, None, 2**23)


def test_a_foreign_models_states_are_capped_in_bytes_too(tmp_path):
    """A model without a contract: its states come from the graph, and are held to the same cap."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    big = [1, "batch", 2**22 + 1]  # float32: 16 MiB and 4 bytes, four times over
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])] + [helper.make_node("Identity", [f"s{i}"], [f"s{i}N"])
                                                          for i in range(4)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])]
        + [helper.make_tensor_value_info(f"s{i}", TensorProto.FLOAT, big) for i in range(4)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])]
        + [helper.make_tensor_value_info(f"s{i}N", TensorProto.FLOAT, big) for i in range(4)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with pytest.raises(ModelFormatError, match=r"the model's states: expected at most 64 MiB of state per stream"):
        StreamingModel.load(model.SerializeToString())


@pytest.mark.parametrize("group", ["inputs", "outputs", "states"])
def test_a_contract_with_more_entries_than_any_model_has_is_refused_before_they_are_read(group):
    from edge_rnn.contract import MAX_ENTRIES

    d = _contract()
    entry = d[group][-1]
    key = "input" if group == "states" else "name"
    d[group] = [dict(entry, **{key: f"t{i}"}, **({"output": f"o{i}"} if group == "states" else {}))
                for i in range(MAX_ENTRIES + 1)]
    with pytest.raises(ModelFormatError, match=f"expected at most {MAX_ENTRIES:,} {group}, got {MAX_ENTRIES + 1:,}"):
        Contract.from_dict(d)
    d[group] = d[group][:MAX_ENTRIES]  # at the cap: read, every name checked for duplicates (in one pass)
    assert len(getattr(Contract.from_dict(d), group)) == MAX_ENTRIES
    d[group][-1] = d[group][0]
    with pytest.raises(ModelFormatError, match="expected unique .* names, got duplicates"):
        Contract.from_dict(d)


# --------------------------------------------------------------- 21: inspect says it in one line
def test_inspect_of_an_ort_file_whose_metadata_is_not_utf8_is_one_error_line(tmp_path):
    from click.testing import CliRunner

    from edge_rnn.cli import main

    data = bytearray(LAYER.read_bytes())
    data[data.index(b'{"format"') + 1] = 0xFF  # inside the contract's JSON: the protobuf stays well formed
    (tmp_path / "bad.onnx").write_bytes(bytes(data))
    named = tmp_path / "named.onnx"  # an input's name that is not UTF-8, where the graph lists its inputs
    named.write_bytes(LAYER.read_bytes().replace(b"\n\x01x", b"\n\x01\xff"))
    for path in (_ort_of(tmp_path, "bad"), tmp_path / "bad.onnx", named):
        r = CliRunner().invoke(main, ["inspect", str(path)])
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output  # was: a UnicodeDecodeError traceback
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and "not valid UTF-8" in lines[0], r.output


# --------------------------------------------------------------- run_sequence's chunk
@pytest.mark.parametrize("chunk", [None, 2.5, "4", True])
def test_run_sequence_refuses_a_chunk_that_is_not_an_int_before_any_step(chunk):
    model = StreamingModel.load(LAYER)
    stream = model.open_stream()
    with pytest.raises(ArgumentError, match=r"run_sequence: expected chunk to be an int >= 1, got "):
        run_sequence(model, stream, EXPECTED["lstm_layer.x"], chunk=chunk)  # was: TypeError from `None < 1`
    with pytest.raises(ArgumentError, match="run_sequence: expected progress to be callable"):
        run_sequence(model, stream, EXPECTED["lstm_layer.x"], chunk=4, progress="bar")
    assert stream.steps == 0
    with pytest.raises(ShapeError, match="chunk >= 1"):
        run_sequence(model, stream, EXPECTED["lstm_layer.x"], chunk=0)
