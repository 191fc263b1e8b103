"""What a model file, its contract or the options it is loaded with may not do: each is refused with a clear
EdgeRnnError at load, never answered wrongly, crashed on, or passed through onnxruntime's own noise.

Runs without torch: the models are the committed fixtures, rewritten where a test needs a forged contract.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO, batch_of_one_model

from edge_rnn.contract import METADATA_KEY, Contract
from edge_rnn.errors import InferenceError, ModelFormatError, StateError, UnsupportedError
from edge_rnn.harness import Cases, read_contract
from edge_rnn.runtime import ForeignModel, SessionConfig, StreamingModel

DATA = REPO / "tests" / "data"
LAYER = DATA / "lstm_layer.onnx"


def contract_of(path) -> dict:
    return StreamingModel.load(path).session.get_modelmeta().custom_metadata_map


def test_a_contract_output_the_graph_lacks_is_refused_not_answered_wrongly():
    d = json.loads(contract_of(LAYER)[METADATA_KEY])
    d["outputs"][0]["name"] = "logits"  # was: loaded, and step returned one time step instead of all
    with pytest.raises(ModelFormatError, match=r"names \['logits'\], which the graph does not have"):
        StreamingModel.load(LAYER, contract=Contract.from_dict(d))


def test_a_state_too_large_to_allocate_is_refused_while_reading_the_contract():
    d = json.loads(contract_of(LAYER)[METADATA_KEY])
    d["states"][0]["shape"] = [2, None, 10**12]  # was: open_stream tried to allocate 7.28 TiB
    with pytest.raises(ModelFormatError, match="expected at most 64 MiB of state per stream"):
        Contract.from_dict(d)


def test_deeply_nested_json_is_a_format_error_not_a_recursion_error():
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
def test_case_sizes_are_checked_before_onnxruntime_sees_them(kw, match):
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


def test_metadata_that_is_not_utf8_is_a_format_error(tmp_path):
    """Found by the model-loading fuzz test: was a UnicodeDecodeError from onnxruntime's metadata accessor."""
    data = bytearray(LAYER.read_bytes())
    data[data.index(b'{"format"') + 1] = 0xFF  # inside the contract's JSON: the protobuf stays well formed
    path = tmp_path / "bad.onnx"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="is not valid UTF-8"):
        StreamingModel.load(path)
    with pytest.raises(ModelFormatError, match="is not valid UTF-8"):
        read_contract(path)


def test_onnxruntime_warnings_do_not_reach_stderr(capfd):
    onnx = pytest.importorskip("onnx")
    model = onnx.load(DATA / "tiny_dynamic.onnx")
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    capfd.readouterr()
    StreamingModel.load(model.SerializeToString())  # was: "[W:onnxruntime:...] Removing initializer 'unused'"
    assert capfd.readouterr().err == ""



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
def test_swapped_axes_and_a_state_dtype_or_batch_axis_the_graph_lacks_are_refused_at_load(edit, match):
    with pytest.raises(ModelFormatError, match=match):
        StreamingModel.load(LAYER, contract=_forged_contract(edit))


def test_a_failing_run_prints_nothing_of_onnxruntimes_own(capfd, tmp_path):
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


def test_a_given_contract_takes_the_place_of_unreadable_metadata_and_is_checked_like_a_files():
    """contract= stands in for the file's metadata, which is then not read (a newer edge-rnn's format 99 there does
    not matter); the contract given is checked field by field as a file's would be."""
    import dataclasses

    d = json.loads(contract_of(LAYER)[METADATA_KEY])
    good = Contract.from_dict(d)
    newer = dict(d, format=99)
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(LAYER)
    next(p for p in proto.metadata_props if p.key == METADATA_KEY).value = json.dumps(newer)
    with pytest.raises(ModelFormatError, match="expected format 1 or 2, got 99"):
        StreamingModel.load(proto.SerializeToString())
    model = StreamingModel.load(proto.SerializeToString(), contract=good)
    assert model.contract == good and [s.input for s in model.states] == ["h0", "c0"]
    with pytest.raises(ModelFormatError, match="expected format 1 or 2, got 99"):  # refused as it is made
        dataclasses.replace(good, format=99)
    with pytest.raises(ModelFormatError, match="'streamable' to be true or false"):
        StreamingModel.load(LAYER, contract=dataclasses.replace(good, streamable="yes"))
    with pytest.raises(UnsupportedError, match=r"contract: expected Contract\(...\), got dict"):
        StreamingModel.load(LAYER, contract=d)


def test_max_error_is_a_number_a_message_can_show():
    """A Fraction compared fine but crashed the message that names it; it is refused like any non-number."""
    from fractions import Fraction

    for bad in (Fraction(1, 50), "0.1", True, -1.0):
        with pytest.raises(UnsupportedError, match="max_error: expected a number >= 0"):
            StreamingModel.load(DATA / "bundle", max_error=bad)
