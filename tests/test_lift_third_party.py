"""Three recurrent ONNX files as other tools write them (tests/third_party_graphs.py): each lifted with
``edge-rnn lift``, packaged with int8 and static variants, and served; what a client streams equals the original
file's one pass over the whole sequence, within the verdict of each form."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")
pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import json

import numpy as np
import onnx
from click.testing import CliRunner
from probe_servers import ModelServer
from third_party_graphs import GRAPHS

from edge_rnn.cli import main
from edge_rnn.client import HttpStream, SyncWebSocketStream
from edge_rnn.contract import Contract
from edge_rnn.deploy import package
from edge_rnn.deploy.lifting._proof import original_runner
from edge_rnn.deploy.lifting._surgery import lift_model, reference_model
from edge_rnn.deploy.lifting._zeros import drop_zero_states
from edge_rnn.harness import TOLERANCE, judge

STEPS = 37  # longer than the 20 and 16 steps two of the files pinned, and no multiple of either


@pytest.fixture(scope="module")
def lifted(tmp_path_factory):
    """{graph: (original path, lifted path, bundle folder)}, each lifted by the command line and packaged."""
    out = {}
    for name, build in GRAPHS.items():
        d = tmp_path_factory.mktemp(name)
        onnx.save(build(), d / "original.onnx")
        r = CliRunner().invoke(main, ["lift", str(d / "original.onnx"), "-o", str(d / "streaming.onnx")])
        assert r.exit_code == 0, r.output
        assert "verdict: ok" in r.output and "err_onnx" in r.output  # the proof's table is printed
        res = package(d / "streaming.onnx", d / "bundle", variants=("int8", "static"), steps=2_000)
        assert not res.refused, res.refused
        out[name] = (d / "original.onnx", d / "streaming.onnx", d / "bundle")
    return out


def _one_pass(original, streaming, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The original file's primary output over the whole sequence ``x`` (time, features) of one stream: float64
    (the judge) and float32 (its noise: onnxruntime, or the evaluator where onnxruntime cannot run the file)."""
    model = drop_zero_states(onnx.load(str(original)))[0]
    ref = reference_model(model, lift_model(model))
    want, noise, _ = original_runner(ref)
    c = Contract.from_metadata({p.key: p.value for p in onnx.load(str(streaming)).metadata_props})
    t, o = c.inputs[0], c.outputs[0]
    feeds = {t.name: np.moveaxis(x[None], [0, 1], [t.batch_axis, t.time_axis])}

    def stream_of(out: dict) -> np.ndarray:  # (time, features) of the one stream
        return np.moveaxis(out[o.name], [o.batch_axis, o.time_axis], [0, 1])[0]

    return stream_of(want(feeds)), stream_of(noise(feeds))


def _streamed(server: ModelServer, x: np.ndarray, chunks: list[int], websocket: bool, width: int) -> np.ndarray:
    cls = SyncWebSocketStream if websocket else HttpStream
    with cls(server.url, width=width) as s:
        parts = [s.step(x[a:b]) for a, b in zip(np.cumsum([0, *chunks[:-1]]), np.cumsum(chunks))]
    return np.concatenate(parts)


@pytest.mark.parametrize("name", list(GRAPHS))
def test_lifted_packaged_and_served_equals_the_original_one_pass(lifted, name):
    original, streaming, bundle = lifted[name]
    manifest = json.loads((bundle / "manifest.json").read_text())
    contract = Contract.from_metadata({p.key: p.value for p in onnx.load(str(streaming)).metadata_props})
    x = np.random.default_rng(7).standard_normal((STEPS, _features(streaming, contract))).astype(np.float32)
    want, noise = _one_pass(original, streaming, x)
    files = {"fp32": streaming, "int8": bundle / manifest["variants"]["int8"]["file"],
             "static": bundle / manifest["variants"]["static"]["file"]}
    for variant, path in files.items():
        chunks = [1] * STEPS if variant == "static" else [5, 1, 13, 2, 16]  # the static form takes 1 step a call
        with ModelServer(path) as server:
            got = _streamed(server, x, chunks, websocket=variant == "int8", width=want.shape[1])
        if variant == "int8":  # element-wise, as the bundle holds int8 to its float32 model
            row = judge("served", variant, "y", got, want, None, TOLERANCE["int8"])
        else:
            row = judge("served", variant, "y", got, want, noise, TOLERANCE["float32"])
        assert row.ok, (variant, row.describe())
        assert got.shape == want.shape == (STEPS, want.shape[1])


def _features(streaming, contract: Contract) -> int:
    t = contract.inputs[0]
    dims = next(v for v in onnx.load(str(streaming)).graph.input if v.name == t.name).type.tensor_type.shape.dim
    return next(d.dim_value for k, d in enumerate(dims) if k not in (t.batch_axis, t.time_axis))
