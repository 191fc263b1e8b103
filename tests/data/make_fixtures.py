"""Regenerate the committed .onnx fixtures and their expected outputs (needs torch): python tests/data/make_fixtures.py

The runtime, harness and (later) service tests load these files, so they run where torch is not
installed. ``expected.npz`` holds, per fixture, an input sequence (one stream, time first) and
PyTorch's outputs over it in one pass: ``<name>.x``, ``<name>.<output>``.

``python tests/data/make_fixtures.py --bundle`` rewrites only ``bundle/``: lstm_layer.onnx packaged with every
variant and its golden vectors (needs onnx, not torch). Its manifest records the machine that packaged it, so a
test that replays it on another CPU is what a device does with a bundle made elsewhere.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))


def bundle_fixture() -> None:
    """tests/data/bundle: every variant of lstm_layer.onnx, as `edge-rnn package` writes it (portable int8)."""
    from edge_rnn.deploy import package

    shutil.rmtree(HERE / "bundle", ignore_errors=True)
    result = package(HERE / "lstm_layer.onnx", HERE / "bundle", steps=2_000)
    assert not result.refused, result.refused


if __name__ == "__main__" and "--bundle" in sys.argv:
    bundle_fixture()
    sys.exit(0)

import torch  # noqa: E402
from wholemodels import VoiceActivity, token_model  # noqa: E402

import edge_rnn  # noqa: E402
from edge_rnn.exporters import StreamingIO  # noqa: E402


def tiny_rnn(path: Path, batch: str | int) -> None:
    """h' = tanh(x + h), written by hand: a stateful model from elsewhere (no contract), batch dynamic or fixed."""
    f = TensorProto.FLOAT
    g = helper.make_graph(
        [helper.make_node("Add", ["h0", "x"], ["s"]), helper.make_node("Tanh", ["s"], ["hn"]),
         helper.make_node("Identity", ["hn"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", f, [batch, 3]), helper.make_tensor_value_info("h0", f, [batch, 3])],
        [helper.make_tensor_value_info("y", f, [batch, 3]), helper.make_tensor_value_info("hn", f, [batch, 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def external_weights(src: Path, dst: Path) -> None:
    """``src`` rewritten with its tensors in a weights file beside it (``dst``'s folder, ``weights.bin``)."""
    model = onnx.load(src)
    dst.parent.mkdir(exist_ok=True)
    onnx.save(model, dst, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=64)  # the weights; small index constants stay inline (shape inference reads them)


def token_fixture(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Token ids (int64) -> Embedding(40) -> GRU -> logits: an integer input with a range in its contract."""
    model = token_model().eval()
    edge_rnn.export(model, HERE / "token_gru.onnx", example_input=torch.zeros(1, 5, dtype=torch.int64),
                    io=StreamingIO(input_names=["ids"], output_names=["logits"]), long_steps=1_000)
    ids = rng.integers(0, 40, 19)
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)[None])[0].numpy()
    return {"token_gru.ids": ids, "token_gru.logits": logits}


def main() -> None:
    torch.set_num_threads(1)
    expected: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(0)

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 6, num_layers=2).eval()  # time-major layer, native form
    edge_rnn.export(lstm, HERE / "lstm_layer.onnx", long_steps=1_000)
    external_weights(HERE / "lstm_layer.onnx", HERE / "external" / "lstm_layer.onnx")  # same model, weights apart
    x = rng.standard_normal((23, 4)).astype(np.float32)
    with torch.no_grad():
        y, (h, c) = lstm(torch.from_numpy(x)[:, None])
    expected |= {"lstm_layer.x": x, "lstm_layer.y": y[:, 0].numpy(), "lstm_layer.hn": h[:, 0].numpy(),
                 "lstm_layer.cn": c[:, 0].numpy()}

    torch.manual_seed(1)
    cell = torch.nn.GRUCell(4, 6).eval()  # a cell (one step per call), decomposed form (a Scan-free graph)
    edge_rnn.export(cell, HERE / "gru_cell.onnx", decomposed=True, long_steps=1_000)
    x = rng.standard_normal((17, 4)).astype(np.float32)
    h = torch.zeros(1, 6)
    ys = []
    with torch.no_grad():
        for t in range(len(x)):
            h = cell(torch.from_numpy(x[t : t + 1]), h)
            ys.append(h[0].numpy())
    expected |= {"gru_cell.x": x, "gru_cell.y": np.stack(ys)}

    torch.manual_seed(2)
    vad = VoiceActivity(bins=8, hidden=6).eval()  # a whole model with its own state and a context buffer
    options = {"states": {"state": "new_state"}, "input_names": ["x", "state"], "output_names": ["prob", "new_state"],
               "input_axes": {"x": (0, None)}, "output_axes": {"prob": (0, None)}}
    edge_rnn.export(vad, HERE / "vad_state.onnx", example_input=(torch.randn(1, 8, 4), torch.zeros(2, 1, 6)),
                    io=StreamingIO(**options), long_steps=1_000)
    x = rng.standard_normal((11, 8, 4)).astype(np.float32)  # 11 calls of (8 bins, 4 frames)
    state = torch.zeros(2, 1, 6)
    probs = []
    with torch.no_grad():
        ctx = torch.zeros(1, 8, 3)
        for t in range(len(x)):
            frames = torch.cat([ctx, torch.from_numpy(x[t])[None]], dim=2)
            ctx = frames[:, :, -3:]
            z = vad.encoder(vad.stft(frames).mean(dim=2))
            hn, cn = vad.cell(z, (state[0], state[1]))
            state = torch.stack([hn, cn])
            probs.append(torch.sigmoid(vad.head(hn))[0].numpy())
    expected |= {"vad_state.x": x, "vad_state.prob": np.stack(probs), "vad_state.new_state": state[:, 0].numpy()}

    expected |= token_fixture(rng)
    tiny_rnn(HERE / "tiny_dynamic.onnx", "batch")
    tiny_rnn(HERE / "tiny_fixed.onnx", 1)
    np.savez(HERE / "expected.npz", **expected)
    print("wrote", sorted(p.name for p in HERE.iterdir() if p.suffix in (".onnx", ".npz")))


if __name__ == "__main__":
    main()
