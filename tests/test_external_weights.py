"""External weight files: read from the model's own folder only, and part of what identifies the model.

An ONNX file may keep its tensors in other files (``external_data``). onnxruntime reads them relative to the
working directory when given bytes; edge-rnn reads the locations itself, refuses any that leave the model's
folder, and always hands onnxruntime the path. Runs without torch, on the committed fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from edge_rnn.errors import ModelFormatError, StateError
from edge_rnn.harness import open_sessions
from edge_rnn.runtime import StreamingModel
from edge_rnn.runtime._external import external_locations

DATA = REPO / "tests" / "data"
LAYER = DATA / "lstm_layer.onnx"


EXTERNAL = DATA / "external" / "lstm_layer.onnx"  # lstm_layer.onnx with its tensors in weights.bin beside it
EXPECTED = dict(np.load(DATA / "expected.npz"))


def _stream_all(model) -> np.ndarray:
    return model.step(model.open_stream(), EXPECTED["lstm_layer.x"])["y"]


def test_external_weights_come_from_the_models_folder_not_the_working_directory(tmp_path, monkeypatch):
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


def test_a_weights_file_outside_the_models_folder_is_refused(tmp_path):
    path = _forged(tmp_path, b"../outs.bin")
    (tmp_path / "outs.bin").write_bytes((EXTERNAL.parent / "weights.bin").read_bytes())
    with pytest.raises(ModelFormatError, match=r"the weights file '\.\./outs\.bin' lies outside the model's folder"):
        StreamingModel.load(path)
    with pytest.raises(ModelFormatError, match="lies outside the model's folder"):
        open_sessions(path)  # the parity harness (verify) reads the same way


def test_a_symlink_out_of_the_folder_and_a_missing_file_are_refused(tmp_path):
    path = _forged(tmp_path, b"weights.bin")
    with pytest.raises(ModelFormatError, match=r"the weights file 'weights\.bin' is missing \(looked in "):
        StreamingModel.load(path)
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes((EXTERNAL.parent / "weights.bin").read_bytes())
    (path.parent / "weights.bin").symlink_to(outside)
    with pytest.raises(ModelFormatError, match="lies outside the model's folder"):
        StreamingModel.load(path)


def test_bytes_with_external_weights_are_refused_with_the_way_out():
    with pytest.raises(ModelFormatError, match=r"keeps its weights in other files \('weights\.bin'\); load it from "
                                               "its path"):
        StreamingModel.load(EXTERNAL.read_bytes())


def test_the_fingerprint_covers_the_weights_so_a_snapshot_does_not_cross_models(tmp_path):
    path = _forged(tmp_path, b"weights.bin")
    halved = np.frombuffer((EXTERNAL.parent / "weights.bin").read_bytes(), np.float32) * 0.5
    (path.parent / "weights.bin").write_bytes(halved.tobytes())
    ours, theirs = StreamingModel.load(EXTERNAL), StreamingModel.load(path)
    assert not np.allclose(_stream_all(ours), _stream_all(theirs))
    with pytest.raises(StateError, match="fingerprint|another model"):
        theirs.restore(ours.open_stream().snapshot())


def test_external_locations_finds_each_tensor_and_refuses_bytes_it_cannot_parse():
    assert external_locations(EXTERNAL.read_bytes()) == ["weights.bin"] * 6
    assert external_locations(LAYER.read_bytes()) == []
    with pytest.raises(ModelFormatError, match="expected an ONNX model, could not parse it"):
        external_locations(b"\xff" * 40)  # was None, and the file went on to onnxruntime unchecked
