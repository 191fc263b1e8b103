"""Issue 9 (hardening), bugs fixed so far: each input gives a clear EdgeRnnError, never a wrong answer or a crash.

Runs without torch: the models are the committed fixtures, rewritten where a test needs a forged contract.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, batch_of_one_model

from edge_rnn.contract import METADATA_KEY, Contract
from edge_rnn.errors import InferenceError, ModelFormatError, StateError, UnsupportedError
from edge_rnn.harness import Cases, open_sessions, read_contract
from edge_rnn.runtime import ForeignModel, SessionConfig, StreamingModel
from edge_rnn.runtime._external import external_locations

DATA = REPO / "tests" / "data"
LAYER = DATA / "lstm_layer.onnx"


def contract_of(path) -> dict:
    return StreamingModel.load(path).session.get_modelmeta().custom_metadata_map


def test_bug2_a_contract_output_the_graph_lacks_is_refused_not_answered_wrongly():
    d = json.loads(contract_of(LAYER)[METADATA_KEY])
    d["outputs"][0]["name"] = "logits"  # was: loaded, and step returned one time step instead of all
    with pytest.raises(ModelFormatError, match=r"names \['logits'\], which the graph does not have"):
        StreamingModel.load(LAYER, contract=Contract.from_dict(d))


def test_bug3_a_state_too_large_to_allocate_is_refused_while_reading_the_contract():
    d = json.loads(contract_of(LAYER)[METADATA_KEY])
    d["states"][0]["shape"] = [2, None, 10**12]  # was: open_stream tried to allocate 7.28 TiB
    with pytest.raises(ModelFormatError, match="expected at most 268,435,456 elements per stream"):
        Contract.from_dict(d)


def test_bug5_deeply_nested_json_is_a_format_error_not_a_recursion_error():
    with pytest.raises(ModelFormatError, match="nesting too deep"):
        Contract.from_json("[" * 100_000)
    model = StreamingModel.load(LAYER)
    snap = bytearray(model.open_stream().snapshot())
    head = b"[" * 100_000
    forged = bytes(snap[:16]) + len(head).to_bytes(4, "little") + head
    with pytest.raises(StateError, match="nesting too deep"):
        model.restore(forged)


@pytest.mark.parametrize("kw,match", [
    ({"batch": 0}, "batch: expected an int >= 1, got 0"),
    ({"long_steps": -1}, "long_steps: expected an int >= 0"),
    ({"seq_lens": (1, 0)}, "seq_lens: expected ints >= 1"),
])
def test_bug13_case_sizes_are_checked_before_onnxruntime_sees_them(kw, match):
    """Was: verify(batch_size=0) aborted the whole Python process inside onnxruntime's GRU kernel."""
    with pytest.raises(UnsupportedError, match=match):
        Cases(**kw)


def test_load_options_are_validated():
    import onnxruntime as ort

    with pytest.raises(UnsupportedError, match="optimization: expected one of"):
        StreamingModel.load(LAYER, session=SessionConfig(optimization="max"))
    with pytest.raises(UnsupportedError, match="threads: expected an int >= 1"):
        StreamingModel.load(LAYER, session=SessionConfig(threads=-1))
    with pytest.raises(UnsupportedError, match="session_options: expected onnxruntime.SessionOptions, got str"):
        StreamingModel.load(LAYER, session=SessionConfig(session_options="x"))
    assert StreamingModel.load(LAYER, session=SessionConfig(session_options=ort.SessionOptions())).states


def test_initial_state_takes_what_step_takes_and_refuses_what_step_refuses():
    from edge_rnn.errors import NonFiniteError

    model = StreamingModel.load(DATA / "gru_cell.onnx")
    s = model.open_stream({"h0": [0.5] * 6})  # a nested list, as step accepts
    assert s.state["h0"].dtype == np.float32 and np.allclose(s.state["h0"], 0.5)
    with pytest.raises(NonFiniteError, match="initial_state 'h0': expected finite values"):
        model.open_stream({"h0": [float("nan")] * 6})
    with pytest.raises(StateError, match="expected a mapping of state name -> array, got list"):
        model.open_stream([np.zeros(6, np.float32)])


def test_a_finite_value_beyond_float32_is_not_called_nan():
    from edge_rnn.errors import ShapeError

    model = StreamingModel.load(DATA / "gru_cell.onnx")
    s = model.open_stream()
    with pytest.raises(ShapeError, match="a finite value beyond it"):
        model.step(s, [1e300, 0.0, 0.0, 0.0])
    assert s.steps == 0


# ----------------------------------------------------------- bug 7: external weight files
EXTERNAL = DATA / "external" / "lstm_layer.onnx"  # lstm_layer.onnx with its tensors in weights.bin beside it
EXPECTED = dict(np.load(DATA / "expected.npz"))


def _stream_all(model) -> np.ndarray:
    return model.step(model.open_stream(), EXPECTED["lstm_layer.x"])["y"]


def test_bug7_external_weights_come_from_the_models_folder_not_the_working_directory(tmp_path, monkeypatch):
    decoy = np.frombuffer((EXTERNAL.parent / "weights.bin").read_bytes(), np.float32) * 0.5
    (tmp_path / "weights.bin").write_bytes(decoy.tobytes())  # was: silently loaded, output off by 0.36
    monkeypatch.chdir(tmp_path)
    y = _stream_all(StreamingModel.load(EXTERNAL))
    np.testing.assert_allclose(y, EXPECTED["lstm_layer.y"], atol=1e-5)


def _forged(tmp_path, location: bytes):
    """The external fixture copied into tmp_path/sub, its one location replaced (same length, so the protobuf
    stays well formed)."""
    sub = tmp_path / "sub"
    sub.mkdir()
    data = EXTERNAL.read_bytes()
    assert data.count(b"weights.bin") >= 1 and len(location) == len(b"weights.bin")
    (sub / "model.onnx").write_bytes(data.replace(b"weights.bin", location))
    return sub / "model.onnx"


def test_bug7_a_weights_file_outside_the_models_folder_is_refused(tmp_path):
    path = _forged(tmp_path, b"../outs.bin")
    (tmp_path / "outs.bin").write_bytes((EXTERNAL.parent / "weights.bin").read_bytes())
    with pytest.raises(ModelFormatError, match=r"the weights file '\.\./outs\.bin' lies outside the model's folder"):
        StreamingModel.load(path)
    with pytest.raises(ModelFormatError, match="lies outside the model's folder"):
        open_sessions(path)  # the parity harness (verify) reads the same way


def test_bug7_a_symlink_out_of_the_folder_and_a_missing_file_are_refused(tmp_path):
    path = _forged(tmp_path, b"weights.bin")
    with pytest.raises(ModelFormatError, match=r"the weights file 'weights\.bin' is missing \(looked in "):
        StreamingModel.load(path)
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes((EXTERNAL.parent / "weights.bin").read_bytes())
    (path.parent / "weights.bin").symlink_to(outside)
    with pytest.raises(ModelFormatError, match="lies outside the model's folder"):
        StreamingModel.load(path)


def test_bug7_bytes_with_external_weights_are_refused_with_the_way_out():
    with pytest.raises(ModelFormatError, match=r"keeps its weights in other files \('weights\.bin'\); load it from "
                                               "its path"):
        StreamingModel.load(EXTERNAL.read_bytes())


def test_bug7_the_fingerprint_covers_the_weights_so_a_snapshot_does_not_cross_models(tmp_path):
    path = _forged(tmp_path, b"weights.bin")
    halved = np.frombuffer((EXTERNAL.parent / "weights.bin").read_bytes(), np.float32) * 0.5
    (path.parent / "weights.bin").write_bytes(halved.tobytes())
    ours, theirs = StreamingModel.load(EXTERNAL), StreamingModel.load(path)
    assert not np.allclose(_stream_all(ours), _stream_all(theirs))
    with pytest.raises(StateError, match="fingerprint|another model"):
        theirs.restore(ours.open_stream().snapshot())


def test_external_locations_finds_each_tensor_and_is_quiet_on_other_bytes():
    assert external_locations(EXTERNAL.read_bytes()) == ["weights.bin"] * 6
    assert external_locations(LAYER.read_bytes()) == []
    assert external_locations(b"\xff" * 40) is None  # not protobuf: onnxruntime says what is wrong


def test_fuzz_found_metadata_that_is_not_utf8_is_a_format_error(tmp_path):
    """Found by the model-loading fuzz test: was a UnicodeDecodeError from onnxruntime's metadata accessor."""
    data = bytearray(LAYER.read_bytes())
    data[data.index(b'{"format"') + 1] = 0xFF  # inside the contract's JSON: the protobuf stays well formed
    path = tmp_path / "bad.onnx"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="is not valid UTF-8"):
        StreamingModel.load(path)
    with pytest.raises(ModelFormatError, match="is not valid UTF-8"):
        read_contract(path)


def test_bug4_onnxruntime_warnings_do_not_reach_stderr(capfd):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(DATA / "tiny_dynamic.onnx")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    capfd.readouterr()
    StreamingModel.load(model.SerializeToString())  # was: "[W:onnxruntime:...] Removing initializer 'unused'"
    assert capfd.readouterr().err == ""


# ----------------------------------------------------------- wart: the CLI's options for third-party models
def _cli(*args):
    from click.testing import CliRunner

    from edge_rnn.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(result, contains: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and contains in result.output, result.output


def test_cli_run_and_bench_take_the_options_a_foreign_model_needs(tmp_path):
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    fixed, out = DATA / "tiny_fixed.onnx", tmp_path / "o.npz"  # h' = tanh(x + h), batch fixed at 1
    # was: the message told the user to pass state_batch_axis=, which the CLI had no option for
    _one_line(_cli("run", fixed, "--input", tmp_path / "x.npy", "-o", out), "(--state-batch-axis on the command line)")
    assert _cli("run", fixed, "--input", tmp_path / "x.npy", "-o", out, "--state-batch-axis", "0").exit_code == 0
    h, want = np.zeros(3, np.float32), []
    for row in x:
        h = np.tanh(row + h)
        want.append(h)
    np.testing.assert_allclose(np.load(out)["y"], np.stack(want), atol=1e-6)
    r = _cli("run", DATA / "tiny_dynamic.onnx", "--input", tmp_path / "x.npy", "-o", out, "--state-map", "h0=hn")
    assert r.exit_code == 0, r.output
    r = _cli("bench", fixed, "--state-batch-axis", "0", "--streams", "1,2", "--chunk", "1", "--seconds", "0.01")
    assert r.exit_code == 0 and "speedup" in r.output, r.output


def test_cli_allow_nonfinite_and_the_refusals_of_misused_options(tmp_path):
    x = np.zeros((2, 3), np.float32)
    x[1, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    model, out = DATA / "tiny_dynamic.onnx", tmp_path / "o.npz"
    _one_line(_cli("run", model, "--input", tmp_path / "x.npy", "-o", out), "--allow-nonfinite on the command line")
    assert _cli("run", model, "--input", tmp_path / "x.npy", "-o", out, "--allow-nonfinite").exit_code == 0
    assert np.isnan(np.load(out)["y"][1, 1])
    # an edge-rnn model's contract gives its axes: an axis option would be ignored or override it, so it is refused
    _one_line(_cli("run", LAYER, "--input", tmp_path / "x.npy", "-o", out, "--time-axis", "0"),
              "time_axis: the model's edge_rnn contract already says its states and axes")
    _one_line(_cli("run", model, "--input", tmp_path / "x.npy", "-o", out, "--state-map", "h0"),
              "expected INPUT=OUTPUT, got 'h0'", code=2)
    _one_line(_cli("run", model, "--input", tmp_path / "x.npy", "-o", out, "--constant", "g=[1,"),
              "g: expected a JSON number or list", code=2)


def test_cli_constant_feeds_an_input_on_every_call(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "gain"], ["g"]), helper.make_node("Add", ["g", "h0"], ["s"]),
         helper.make_node("Tanh", ["s"], ["hn"]), helper.make_node("Identity", ["hn"], ["y"])],
        "gain", [helper.make_tensor_value_info("x", f, ["b", 3]), helper.make_tensor_value_info("h0", f, ["b", 3]),
                 helper.make_tensor_value_info("gain", f, [])],
        [helper.make_tensor_value_info("y", f, ["b", 3]), helper.make_tensor_value_info("hn", f, ["b", 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.save(proto, tmp_path / "gain.onnx")
    x = np.full((2, 3), 0.25, np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "o.npz"
    _one_line(_cli("run", tmp_path / "gain.onnx", "--input", tmp_path / "x.npy", "-o", out),
              "pass constants={'gain': value} (--constant gain=VALUE on the command line)")
    r = _cli("run", tmp_path / "gain.onnx", "--input", tmp_path / "x.npy", "-o", out, "--constant", "gain=2")
    assert r.exit_code == 0, r.output
    first = np.tanh(0.5)
    np.testing.assert_allclose(np.load(out)["y"], [[first] * 3, [np.tanh(0.5 + first)] * 3], atol=1e-6)


# ----------------------------------------------------------- gaps the closing review found
def _forged_contract(edit) -> Contract:
    d = json.loads(contract_of(LAYER)[METADATA_KEY])
    edit(d)
    return Contract.from_dict(d)


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["inputs"][0].update(batch_axis=0, time_axis=1),
     r"'x': expected its batch axis at 1, where the graph's dimension 'batch' is"),  # swapped: loaded before
    (lambda d: d["states"][0].update(dtype="float16"), r"state 'h0' -> 'hn': expected 'h0' of shape .* float16"),
    (lambda d: d["states"][0].update(shape=[None, 2, 6], batch_axis=0),
     r"state 'h0': expected its batch axis at 1, where the graph's dimension 'batch' is"),
])
def test_bug3_swapped_axes_and_a_state_dtype_or_batch_axis_the_graph_lacks_are_refused_at_load(edit, match):
    with pytest.raises(ModelFormatError, match=match):
        StreamingModel.load(LAYER, contract=_forged_contract(edit))


def test_bug4_a_failing_run_prints_nothing_of_onnxruntimes_own(capfd, tmp_path):
    pytest.importorskip("onnx")
    batch_of_one_model(tmp_path / "r.onnx")
    model = StreamingModel.load(tmp_path / "r.onnx", foreign=ForeignModel(state_batch_axis=0))
    x = np.ones(3, np.float32)
    capfd.readouterr()
    with pytest.raises(InferenceError, match="onnxruntime failed to run"):
        model.step_batch([(model.open_stream(), x), (model.open_stream(), x)])
    assert capfd.readouterr().err == ""  # was: an "[E:onnxruntime:...]" line on stderr as well as the exception


def test_load_refuses_an_execution_provider_this_onnxruntime_lacks(capfd):
    with pytest.raises(UnsupportedError, match=r"providers: expected names among this onnxruntime's "
                                               r"\['.*CPUExecutionProvider'\], got 'CUDAExecutionProvider'"):
        # was: a fallback banner, then the CPU
        StreamingModel.load(LAYER, session=SessionConfig(providers=["CUDAExecutionProvider"]))
    with pytest.raises(UnsupportedError, match="expected a list of execution provider names"):
        StreamingModel.load(LAYER, session=SessionConfig(providers="CPUExecutionProvider"))
    cpu = StreamingModel.load(LAYER, session=SessionConfig(providers=[("CPUExecutionProvider", {})]))
    assert cpu.session.get_providers() == ["CPUExecutionProvider"]
    assert "EP Error" not in capfd.readouterr().err


def test_a_large_finite_chunk_raises_no_overflow_warning():
    import warnings

    model = StreamingModel.load(LAYER)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was: "RuntimeWarning: overflow encountered" from the NaN check
        model.step(model.open_stream(), np.full((3, 4), 3e38, np.float32))
        model.step(model.open_stream(), np.full((600, 4), 3e38, np.float32))  # the numpy path of the check


def test_snapshot_checksum_refuses_a_flipped_byte_and_version_1_is_no_longer_restored():
    model = StreamingModel.load(LAYER)
    stream = model.open_stream()
    model.step(stream, np.ones((3, 4), np.float32))
    snap = bytearray(stream.snapshot())
    body = bytearray(snap)
    body[-1] ^= 0x01  # one bit of the last state value
    with pytest.raises(StateError, match="do not match their checksum"):
        model.restore(bytes(body))
    at = snap.index(b'"version": 2')
    downgraded = bytearray(snap)
    downgraded[at + len(b'"version": ')] = ord("1")  # was: a version-1 header turned the check off
    with pytest.raises(StateError, match="version 1 has no checksum and is no longer restored"):
        model.restore(bytes(downgraded))
    assert model.restore(bytes(snap)).steps == 3
