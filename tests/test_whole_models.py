"""Whole models: state lifted from nested recurrent layers, cells and context buffers; streamed through the runtime."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed
pytest.importorskip("onnx")

import numpy as np
import onnx
import torch
import wholemodels as W

import edge_rnn
from edge_rnn import reference
from edge_rnn.errors import NotStreamableError, UnsupportedError
from edge_rnn.exporters import ContextBuffer, StreamingIO
from edge_rnn.harness import TOLERANCE
from edge_rnn.runtime import StreamingModel

ATOL = TOLERANCE["float32"].atol  # the one tolerance table: ONNX against PyTorch fp32
FORMS = ["native", "decomposed"]
VAD_OPTIONS = {"states": {"state": "new_state"}, "input_names": ["x", "state"], "output_names": ["prob", "new_state"],
               "input_axes": {"x": (0, None)}, "output_axes": {"prob": (0, None)}}


def stream_in_chunks(rt: StreamingModel, x: np.ndarray, sizes: list[int], name: str = "y") -> np.ndarray:
    """One new stream fed ``x`` (time first) in chunks of ``sizes``; the outputs joined along time."""
    s, ys, t = rt.open_stream(), [], 0
    for n in sizes:
        ys.append(rt.step(s, x[t : t + n])[name])
        t += n
    return np.concatenate(ys)


def ops(path) -> list[str]:
    def walk(g):
        for n in g.node:
            yield n.op_type
            for a in n.attribute:
                if a.HasField("g"):
                    yield from walk(a.g)

    return list(walk(onnx.load(path).graph))


@pytest.mark.parametrize("form", FORMS)
def test_keyword_spotter_streams_through_the_runtime(tmp_path, form):
    model = W.keyword_spotter().eval()
    report = edge_rnn.export(model, tmp_path / "kws.onnx", example_input=torch.randn(1, 50, 40),
                             decomposed=form == "decomposed")
    c = report.contract
    assert [(s.input, s.output) for s in c.states] == [
        ("context.ctx0", "context.ctxn"), ("context2.ctx0", "context2.ctxn"), ("gru.h0", "gru.hn")]
    assert c.states[2].shape == (2, None, 48) and c.inputs[0].time_axis == 1
    assert report.parity.ok and {r.case.split()[0] for r in report.parity.rows} == {"full", "chunked", "long"}
    found = ops(tmp_path / "kws.onnx")
    assert ("GRU" in found) == (form == "native") and "Conv" in found
    assert not any(o.domain == "edge_rnn" for o in onnx.load(tmp_path / "kws.onnx").opset_import)

    # through the runtime, at lengths other than the example's, against one PyTorch pass
    rt = StreamingModel.load(tmp_path / "kws.onnx")
    x = np.random.default_rng(0).standard_normal((97, 40)).astype(np.float32)
    y = stream_in_chunks(rt, x, [1, 9, 3, 33, 17, 1, 5, 28])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(y - ref).max() <= ATOL


@pytest.mark.parametrize("form", FORMS)
def test_acoustic_model_stacked_projected_lstms(tmp_path, form):
    model = W.acoustic_model().eval()
    report = edge_rnn.export(model, tmp_path / "am.onnx", example_input=torch.randn(50, 1, 40),
                             decomposed=form == "decomposed",
                             io=StreamingIO(**{"input_axes": {"x": (1, 0)}, "output_axes": {"y": (1, 0)}}))
    assert [s.input for s in report.contract.states] == [
        "encoder.lstm1.h0", "encoder.lstm1.c0", "encoder.lstm2.h0", "encoder.lstm2.c0"]
    assert report.contract.states[2].shape == (2, None, 24)  # projected h, two layers
    assert report.parity.ok
    assert "LSTM" not in ops(tmp_path / "am.onnx")  # proj_size: the Scan form, time axis dynamic
    rt = StreamingModel.load(tmp_path / "am.onnx")
    x = np.random.default_rng(1).standard_normal((61, 40)).astype(np.float32)
    s = rt.open_stream()
    y = np.concatenate([rt.step(s, x[a : a + 8])["y"] for a in range(0, 61, 8)])
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[:, None])[:, 0].numpy()
    assert np.abs(y - ref).max() <= ATOL


@pytest.mark.parametrize("form", FORMS)
def test_vad_with_explicit_state_and_its_own_context_buffer(tmp_path, form):
    torch.manual_seed(0)
    model = W.VoiceActivity().eval()
    report = edge_rnn.export(model, tmp_path / "vad.onnx", example_input=(torch.randn(1, 64, 8), torch.zeros(2, 1, 32)),
                             decomposed=form == "decomposed", io=StreamingIO(**VAD_OPTIONS))
    c = report.contract
    assert [(s.input, s.output, s.batch_axis) for s in c.states] == [
        ("state", "new_state", 1), ("context.ctx0", "context.ctxn", 0)]
    assert report.parity.ok and len(report.parity.rows) >= 18
    rt = StreamingModel.load(tmp_path / "vad.onnx")
    s = rt.open_stream()
    xs = np.random.default_rng(2).standard_normal((30, 64, 8)).astype(np.float32)
    got = np.stack([rt.step(s, x)["prob"] for x in xs])
    # the same stream in PyTorch: the model's own state, and each chunk with the previous one's last 3 frames
    ref = []
    state = torch.zeros(2, 1, 32)
    prev = torch.zeros(1, 64, 3)
    with torch.no_grad():
        for x in torch.from_numpy(xs):
            full = torch.cat([prev, x[None]], dim=2)
            z = model.encoder(model.stft(full).mean(dim=2))
            h, c2 = model.cell(z, (state[0], state[1]))
            ref.append(torch.sigmoid(model.head(h))[0].numpy())
            state, prev = torch.stack([h, c2]), full[:, :, -3:]
    assert np.abs(got - np.stack(ref)).max() <= ATOL


def test_time_axis_is_dynamic_lengths_other_than_the_example(tmp_path):
    model = W.keyword_spotter().eval()
    edge_rnn.export(model, tmp_path / "k.onnx", example_input=torch.randn(2, 5, 40), verify_parity=False)
    rt = StreamingModel.load(tmp_path / "k.onnx")
    for t in (1, 9, 120):
        x = np.random.default_rng(t).standard_normal((t, 40)).astype(np.float32)
        y = rt.step(rt.open_stream(), x)["y"]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)[None])[0].numpy()
        assert y.shape == (t, 12) and np.abs(y - ref).max() <= ATOL


class BiModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.GRU(8, 6, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(12, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


class LookAhead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 8, 3, padding=1)  # sees one frame of the future
        self.lstm = torch.nn.LSTM(8, 6, batch_first=True)

    def forward(self, x):
        return self.lstm(self.conv(x.transpose(1, 2)).transpose(1, 2))[0]


class TimeNorm(torch.nn.Module):
    def __init__(self, pool: bool):
        super().__init__()
        self.pool = pool
        self.lstm = torch.nn.LSTM(8, 6, batch_first=True)

    def forward(self, x):
        if self.pool:  # pooling over time: each chunk sees only its own frames
            x = x - x.mean(dim=1, keepdim=True)
        else:  # normalisation across the time axis
            x = torch.nn.functional.instance_norm(x.transpose(1, 2)).transpose(1, 2)
        return self.lstm(x)[0]


@pytest.mark.parametrize("model,match", [
    (BiModel(), "rnn is bidirectional"),
    (LookAhead(), "changes y"),
    (TimeNorm(pool=True), "pooling over the time axis"),
    (TimeNorm(pool=False), "fails on a chunk of 1 frame"),
], ids=["bidirectional", "non-causal-conv", "pool-over-time", "norm-over-time"])
def test_non_streamable_models_are_refused_before_anything_is_written(tmp_path, model, match):
    with pytest.raises(NotStreamableError, match=match):
        edge_rnn.export(model.eval(), tmp_path / "m.onnx", example_input=torch.randn(1, 20, 8))
    assert not (tmp_path / "m.onnx").exists()


def test_not_streamable_model_can_be_exported_for_whole_sequences(tmp_path):
    torch.manual_seed(0)
    model = BiModel().eval()
    report = edge_rnn.export(model, tmp_path / "bi.onnx", example_input=torch.randn(1, 20, 8),
                             io=StreamingIO(**{"streaming": False}))
    assert not report.contract.streamable and report.parity.ok
    rt = StreamingModel.load(tmp_path / "bi.onnx")
    x = np.random.default_rng(0).standard_normal((13, 8)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    assert np.abs(rt.step(rt.open_stream(), x)["y"] - ref).max() <= ATOL


class Nested(torch.nn.Module):
    """Cells and layers nested at depth, one called with an explicit zero state."""

    def __init__(self):
        super().__init__()
        self.block = torch.nn.ModuleDict({"inner": torch.nn.ModuleDict({"rnn": reference.RNN(4, 5)})})
        self.post = torch.nn.GRU(5, 3)

    def forward(self, x, h):  # x (time, batch, 4), h (1, batch, 3): the model's own state for self.post
        y, _ = self.block["inner"]["rnn"](x)
        return self.post(y, h)  # explicit state: kept as the model wires it, declared with states=


def test_nested_reference_layers_and_explicit_calls(tmp_path):
    torch.manual_seed(0)
    options = {"input_axes": {"x": (1, 0)}, "output_axes": {"y": (1, 0)}, "states": {"h": "hn"},
               "output_names": ["y", "hn"]}
    report = edge_rnn.export(Nested().eval(), tmp_path / "n.onnx", example_input=(torch.randn(9, 2, 4),
                             torch.zeros(1, 2, 3)), io=StreamingIO(**options))
    assert [s.input for s in report.contract.states] == ["h", "block.inner.rnn.h0"]
    assert report.parity.ok and "RNN" in ops(tmp_path / "n.onnx") and "GRU" in ops(tmp_path / "n.onnx")


def test_a_state_that_restarts_every_call_is_not_streamable(tmp_path):
    class Restarts(Nested):
        def forward(self, x):
            return self.post(self.block["inner"]["rnn"](x)[0], torch.zeros(1, x.shape[1], 3))[0]

    with pytest.raises(NotStreamableError, match="changes y"):
        edge_rnn.export(Restarts().eval(), tmp_path / "n.onnx", example_input=torch.randn(9, 2, 4),
                        io=StreamingIO(**{"input_axes": {"x": (1, 0)}, "output_axes": {"y": (1, 0)}}))


def test_whole_model_mistakes(tmp_path):
    with pytest.raises(UnsupportedError, match="needs example_input"):
        edge_rnn.export(W.keyword_spotter(), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedError, match="nothing to stream"):
        edge_rnn.export(torch.nn.Linear(3, 4), tmp_path / "m.onnx", example_input=torch.randn(1, 3))

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = torch.nn.GRUCell(3, 3)

        def forward(self, x):
            return self.cell(self.cell(x))

    with pytest.raises(UnsupportedError, match="called 2 times in one forward"):
        edge_rnn.export(Twice(), tmp_path / "m.onnx", example_input=torch.randn(1, 3))
    from edge_rnn.errors import ShapeError

    with pytest.raises(ShapeError, match="expected length >= 1"):
        ContextBuffer(0)


class CausalConvLstm(torch.nn.Module):
    """A causal Conv1d front end (kernel 5) and an LSTM: the context buffer carries 4 frames."""

    def __init__(self):
        super().__init__()
        self.context = ContextBuffer(4)
        self.conv = torch.nn.Conv1d(6, 10, 5)
        self.lstm = torch.nn.LSTM(10, 8, num_layers=2, batch_first=True)

    def forward(self, x):  # (batch, time, 6)
        return self.lstm(torch.tanh(self.conv(self.context(x.transpose(1, 2)))).transpose(1, 2))[0]


@pytest.mark.parametrize("form", FORMS)
def test_causal_conv_front_end_and_lstm_stream_like_one_pass(tmp_path, form):
    torch.manual_seed(3)
    model = CausalConvLstm().eval()
    report = edge_rnn.export(model, tmp_path / "c.onnx", example_input=torch.randn(1, 16, 6),
                             decomposed=form == "decomposed")
    assert report.contract.states[0].shape == (None, 6, 4) and report.parity.ok
    rt = StreamingModel.load(tmp_path / "c.onnx")
    x = np.random.default_rng(5).standard_normal((40, 6)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)[None])[0].numpy()
    for sizes in ([1] * 40, [3, 1, 2, 10, 24], [40]):
        assert np.abs(stream_in_chunks(rt, x, sizes) - ref).max() <= ATOL


class WithDropoutAndNorm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.GRU(4, 5, batch_first=True)
        self.drop = torch.nn.Dropout(0.3)
        self.norm = torch.nn.BatchNorm1d(5)

    def forward(self, x):
        y = self.drop(self.rnn(x)[0])
        return self.norm(y.transpose(1, 2)).transpose(1, 2)


def test_dropout_and_batchnorm_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = WithDropoutAndNorm()
    model.norm.running_mean.uniform_(-1, 1)
    report = edge_rnn.export(model.eval(), tmp_path / "d.onnx", example_input=torch.randn(2, 10, 4))
    assert report.parity.ok


class ReturnsState(torch.nn.Module):
    """Returns the LSTM's (h, c) too, and calls one GRU twice (lifted, then with the model's own state)."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(4, 5, batch_first=True)
        self.gru = torch.nn.GRU(5, 5, batch_first=True)

    def forward(self, x, h):
        y, (hn, cn) = self.rnn(x)
        z, _ = self.gru(y)
        z2, h2 = self.gru(z, h)
        return z2, hn, cn, h2


def test_outputs_axes_are_probed_and_a_module_can_be_called_twice(tmp_path):
    torch.manual_seed(0)
    options = {"input_names": ["x", "h"], "output_names": ["y", "hn", "cn", "h2"], "states": {"h": "h2"}}
    report = edge_rnn.export(ReturnsState().eval(), tmp_path / "r.onnx", decomposed=False,
                             example_input=(torch.randn(2, 10, 4), torch.zeros(1, 2, 5)), io=StreamingIO(**options))
    outs = {t.name: (t.batch_axis, t.time_axis) for t in report.contract.outputs}
    assert outs == {"y": (0, 1), "hn": (1, None), "cn": (1, None)}
    assert report.parity.ok and ops(tmp_path / "r.onnx").count("GRU") == 2


class StateFirst(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = torch.nn.GRUCell(10, 5)

    def forward(self, h, x):  # x (batch, 10, time): mean over the chunk, one step per call
        h = self.cell(x.mean(dim=2), h)
        return h * 2, h


def test_a_declared_state_first_in_the_signature(tmp_path):
    torch.manual_seed(0)
    options = {"input_names": ["h", "x"], "output_names": ["y", "hn"], "states": {"h": "hn"},
               "input_axes": {"x": (0, None)}}
    report = edge_rnn.export(StateFirst().eval(), tmp_path / "s.onnx",
                             example_input=(torch.zeros(2, 5), torch.randn(2, 10, 4)), io=StreamingIO(**options))
    assert report.parity.ok and report.contract.outputs[0].time_axis is None


class TimeMajor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 5)

    def forward(self, x):
        return self.lstm(x)[0]


def test_option_mistakes_are_clear_errors(tmp_path):
    from edge_rnn.errors import ShapeError

    p = tmp_path / "m.onnx"
    with pytest.raises(ShapeError, match="fails .* along the declared .*; check input_axes"):
        edge_rnn.export(TimeMajor().eval(), p, example_input=torch.randn(6, 2, 4))  # default axes: (0, 1)
    with pytest.raises(ShapeError, match="expected different batch and time axes"):
        edge_rnn.export(TimeMajor().eval(), p, example_input=torch.randn(6, 2, 4),
                        io=StreamingIO(**{"input_axes": {"x": (1, 1)}}))
    with pytest.raises(ShapeError, match=r"expected \(batch_axis, time_axis\)"):
        edge_rnn.export(TimeMajor().eval(), p, example_input=torch.randn(6, 2, 4),
                        io=StreamingIO(**{"input_axes": {"x": [0]}}))
    with pytest.raises(UnsupportedError, match=r"whole_model_options \['input_axis'\]"), \
            pytest.warns(DeprecationWarning):
        edge_rnn.export(TimeMajor().eval(), p, example_input=torch.randn(6, 2, 4),
                        whole_model_options={"input_axis": {}})
    with pytest.raises(TypeError, match="input_axis"):
        StreamingIO(input_axis={})  # the typed form catches a misspelt option where it is written
    with pytest.raises(ShapeError, match="example_input: expected a tensor"):
        edge_rnn.export(TimeMajor().eval(), p, example_input=())

    class Gates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = reference.GRU(4, 5, batch_first=True)

        def forward(self, x):
            (y, _), _ = self.gru(x, return_gates=True)
            return y

    with pytest.raises(UnsupportedError, match=r"called with \['return_gates'\]"):
        edge_rnn.export(Gates().eval(), p, example_input=torch.randn(1, 6, 4))
    # the refusals were about the options alone: with right ones the same model exports and verifies
    ok = {"input_axes": {"x": (1, 0)}, "output_axes": {"y": (1, 0)}}
    assert edge_rnn.export(TimeMajor().eval(), p, example_input=torch.randn(6, 2, 4), io=StreamingIO(**ok),
                           long_steps=100).parity.ok


def test_options_reach_every_path_they_apply_to_and_are_refused_where_they_do_not(tmp_path):
    with pytest.raises(UnsupportedError, match=r"io=.*: it applies to whole models, and GRU is a bare"):
        edge_rnn.export(torch.nn.GRU(4, 6).eval(), tmp_path / "g.onnx", io=StreamingIO(streaming=False))
    assert not (tmp_path / "g.onnx").exists()
    report = edge_rnn.export(W.keyword_spotter().eval(), tmp_path / "k.onnx", example_input=torch.randn(1, 20, 40),
                             verify_parity=False, check=False, extra_source={"trained_on": "speech-v2"})
    assert report.contract.source["trained_on"] == "speech-v2" and report.contract.source["kind"] == "module"
    from edge_rnn.harness import read_contract

    assert read_contract(tmp_path / "k.onnx").source["trained_on"] == "speech-v2"
    lstm = torch.nn.LSTM(4, 6).eval()  # atol reaches the bare-layer path too
    assert edge_rnn.export(lstm, tmp_path / "l.onnx", atol=3e-5, long_steps=50).parity.tolerance.atol == 3e-5


def test_whole_model_options_still_work_for_one_release_with_a_deprecation_warning(tmp_path):
    model = W.acoustic_model().eval()
    with pytest.warns(DeprecationWarning, match="whole_model_options is deprecated: pass io=StreamingIO"):
        report = edge_rnn.export(model, tmp_path / "a.onnx", example_input=torch.randn(20, 1, 40), long_steps=50,
                                 whole_model_options={"input_axes": {"x": (1, 0)}, "output_axes": {"y": (1, 0)}})
    assert report.parity.ok and report.contract.inputs[0].batch_axis == 1
    with pytest.raises(UnsupportedError, match="not both"), pytest.warns(DeprecationWarning):
        edge_rnn.export(model, tmp_path / "b.onnx", example_input=torch.randn(20, 1, 40), io=StreamingIO(),
                        whole_model_options={"streaming": True})


def test_whole_model_options_with_none_values_as_before(tmp_path):
    with pytest.warns(DeprecationWarning):
        report = edge_rnn.export(W.keyword_spotter().eval(), tmp_path / "k.onnx", example_input=torch.randn(1, 20, 40),
                                 verify_parity=False, whole_model_options={"states": None, "input_axes": None,
                                                                           "streaming": 1})
    assert report.contract.streamable
    from edge_rnn.exporters import ExportOptions

    with pytest.raises(UnsupportedError, match="atol: expected a positive number, got True"):
        ExportOptions(atol=True)


def test_packed_sequences_and_overridden_forwards_are_refused_with_what_to_do(tmp_path):
    """A layer called with a PackedSequence, and a layer subclass whose own forward the export would silently
    ignore, are refused with what to do instead."""

    class Packs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(4, 5, batch_first=True)

        def forward(self, x):
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([x.shape[1]] * x.shape[0]),
                                                             batch_first=True)
            y, _ = self.gru(packed)
            return torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=True)[0]

    with pytest.raises(UnsupportedError, match="PackedSequence. A stream is one sequence fed chunk by chunk"):
        edge_rnn.export(Packs().eval(), tmp_path / "p.onnx", example_input=torch.randn(1, 6, 4))

    class Scaled(torch.nn.LSTM):
        def forward(self, x, hx=None):
            y, state = super().forward(x, hx)
            return 2 * y, state

    with pytest.raises(UnsupportedError, match="overrides forward: edge-rnn would export the plain layer"):
        edge_rnn.export(Scaled(4, 5).eval(), tmp_path / "s.onnx")
