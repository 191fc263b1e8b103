"""docs/streaming-onnx.md stays true, and edge_rnn.contract rejects malformed contracts by name."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed
pytest.importorskip("onnx")

import copy
import json
import re

import numpy as np
import onnx
import onnxruntime as ort
import torch
from conftest import REPO

import edge_rnn
from edge_rnn.contract import METADATA_KEY, Contract, StateSpec, TensorSpec
from edge_rnn.errors import ModelFormatError
from edge_rnn.harness import TOLERANCE

ATOL = TOLERANCE["float32"].atol  # the one tolerance table: ONNX against PyTorch fp32
DOC = REPO / "docs" / "streaming-onnx.md"
EXPORTED_MARKER = "<!-- contract-example: exported -->"
PYTHON_MARKER = "<!-- python-example: streaming -->"


def _doc() -> str:
    if not DOC.exists():
        pytest.skip(f"{DOC} not found")
    return DOC.read_text(encoding="utf-8")


def _block_after(marker: str, lang: str) -> str:
    """The fenced ``lang`` block right after ``marker`` in the doc."""
    m = re.search(re.escape(marker) + r"\s*```" + lang + r"\n(.*?)\n```", _doc(), re.S)
    assert m, f"{DOC.name}: expected a ```{lang} block right after {marker!r}"
    return m.group(1)


def _json_blocks() -> list[str]:
    return re.findall(r"```json\n(.*?)\n```", _doc(), re.S)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple:
    """The doc's model: LSTM(4, 8, num_layers=2), exported now; returns (path, raw contract dict)."""
    path = tmp_path_factory.mktemp("doc") / "lstm.onnx"
    torch.manual_seed(0)
    edge_rnn.export(torch.nn.LSTM(4, 8, num_layers=2).eval(), path, long_steps=0)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return path, json.loads(meta[METADATA_KEY])


# --- the doc against the code -------------------------------------------------------------


def test_doc_json_examples_parse():
    blocks = _json_blocks()
    assert blocks, f"{DOC.name}: expected at least one ```json block"
    for text in blocks:
        Contract.from_json(text)


def test_doc_example_has_the_keys_an_export_writes(exported):
    _, written = exported
    example = json.loads(_block_after(EXPORTED_MARKER, "json"))
    assert list(example) == list(written)
    for key in ("format", "inputs", "outputs", "states", "streamable"):
        assert example[key] == written[key], key
    # the doc's example came from the CLI, which also records the weights' seed
    assert set(example["source"]) - {"seed"} == set(written["source"])
    assert {k: v for k, v in example["source"].items() if k != "seed"} == written["source"]


def test_doc_python_example_streams_like_one_call(exported, monkeypatch):
    path, _ = exported
    code = _block_after(PYTHON_MARKER, "python")
    imports = set(re.findall(r"^(?:import|from) (\w+)", code, re.M))
    assert imports <= {"json", "numpy", "onnxruntime"}, f"expected onnxruntime, numpy and json only, got {imports}"
    monkeypatch.chdir(path.parent)
    ns: dict = {}
    exec(compile(code, f"{DOC.name}:python-example", "exec"), ns)
    x, y = ns["x"], ns["y"]
    assert x.shape[0] > 1 and y.shape[0] == x.shape[0]

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    contract = Contract.from_json(sess.get_modelmeta().custom_metadata_map[METADATA_KEY])
    zeros = {s.input: np.zeros(s.concrete_shape(x.shape[1]), np.float32) for s in contract.states}
    (whole,) = sess.run(["y"], {"x": x, **zeros})
    np.testing.assert_allclose(y, whole, rtol=0, atol=ATOL)


# --- contract module ----------------------------------------------------------------------

GOOD = {
    "format": 1,
    "inputs": [{"name": "x", "batch_axis": 1, "time_axis": 0}],
    "outputs": [{"name": "y", "batch_axis": 1, "time_axis": 0}],
    "states": [
        {"input": "h0", "output": "hn", "shape": [2, None, 8], "batch_axis": 1, "dtype": "float32"},
        {"input": "c0", "output": "cn", "shape": [2, None, 8], "batch_axis": 1, "dtype": "float32"},
    ],
    "source": {"kind": "lstm", "hidden_size": 8},
    "streamable": True,
}


def _with(edit) -> dict:
    d = copy.deepcopy(GOOD)
    edit(d)
    return d


def test_round_trip():
    c = Contract.from_json(json.dumps(GOOD))
    assert json.loads(c.to_json()) == GOOD
    assert Contract.from_json(c.to_json()) == c
    assert Contract.from_metadata(c.to_metadata()) == c
    assert c.states[0].concrete_shape(5) == (2, 5, 8)
    assert c.is_streaming


def test_round_trip_cell_and_defaults():
    c = Contract(
        inputs=(TensorSpec("x", 0),),
        outputs=(TensorSpec("y", 0),),
        states=(StateSpec("h0", "hn", (None, 8), 0),),
        streamable=True,
    )
    d = json.loads(c.to_json())
    assert d["inputs"][0]["time_axis"] is None and d["states"][0]["shape"] == [None, 8]
    assert Contract.from_json(c.to_json()) == c and not c.is_streaming


def test_reader_defaults_and_unknown_keys():
    d = _with(lambda d: (d.pop("streamable"), d.pop("source"), d["states"][0].pop("dtype"),
                         d["inputs"][0].pop("time_axis"), d.update(future_key={"a": 1}),
                         d["states"][1].update(future_key=2)))
    c = Contract.from_dict(d)
    assert c.streamable is True and c.source == {} and c.states[0].dtype == "float32"
    assert c.inputs[0].time_axis is None


def test_no_contract_in_metadata_is_none():
    assert Contract.from_metadata({"other": "{}"}) is None


@pytest.mark.parametrize(
    "text,match",
    [
        (json.dumps(_with(lambda d: d.update(format=3))), r"expected format 1 or 2, got 3"),
        (json.dumps(_with(lambda d: d.pop("format"))), r"expected format 1 or 2, got None"),
        (json.dumps(_with(lambda d: d["states"][0].update(shape=[2, 3, 8]))), r"'h0'.*null at batch_axis 1"),
        (json.dumps(_with(lambda d: d["states"][0].update(shape=[None, 3, 8]))), r"'h0'.*null at batch_axis 1"),
        (json.dumps(_with(lambda d: d["states"][0].update(batch_axis=3))), r"'h0'.*null at batch_axis 3"),
        (json.dumps(_with(lambda d: d["states"][1].update(input="h0"))), r"unique input names.*'h0'"),
        (json.dumps(_with(lambda d: d["states"][1].update(output="y"))), r"unique output names.*'y'"),
        (json.dumps(_with(lambda d: d["states"][0].update(dtype="float"))), r"'h0'.*dtype.*'float'"),
        (json.dumps(_with(lambda d: d["inputs"][0].update(batch_axis=-1))), r"batch_axis of 'x'"),
        ("{not json", r"expected JSON"),
        ("[1, 2]", r"expected a JSON object, got list"),
        (json.dumps(_with(lambda d: d.pop("states"))), r"'states' to be a list"),
        (json.dumps(_with(lambda d: d.pop("inputs"))), r"'inputs' to be a list"),
        (json.dumps(_with(lambda d: d["inputs"][0].pop("name"))), r"tensor entry with a 'name'"),
        (json.dumps(_with(lambda d: d["outputs"][0].pop("batch_axis"))), r"batch_axis of 'y'"),
        (json.dumps(_with(lambda d: d["states"][0].pop("shape"))), r"state entry .* lacks \['shape'\]"),
        (json.dumps(_with(lambda d: d["states"][0].pop("batch_axis"))), r"state entry .* lacks \['batch_axis'\]"),
        (json.dumps(_with(lambda d: d.update(source=[1]))), r"'source' to be an object"),
    ],
    ids=["format-3", "format-missing", "shape-no-null", "null-off-batch-axis", "batch-axis-out-of-range",
         "duplicate-input", "duplicate-output", "bad-dtype", "negative-axis", "not-json", "not-object",
         "missing-states", "missing-inputs", "missing-name", "missing-batch-axis", "missing-shape",
         "missing-state-batch-axis", "source-not-object"],
)
def test_malformed_contract_raises_model_format_error(text, match):
    with pytest.raises(ModelFormatError, match=match):
        Contract.from_json(text)
    with pytest.raises(ModelFormatError, match=match):
        Contract.from_metadata({METADATA_KEY: text})
