"""The parity verdict in both directions: real models with large states pass, deliberate export bugs fail.

Each failing case is also checked against the verdict edge-rnn used before float64 references
(``max |onnx - torch_fp32| <= 1e-5``): the new verdict must not let through anything that one caught.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed
pytest.importorskip("onnx")

import copy

import faults as F
import numpy as np
import onnx
import torch
import wholemodels as W
from onnx import TensorProto, helper

import edge_rnn
from edge_rnn.errors import DataError, ModelFormatError, ParityError, UnsupportedError
from edge_rnn.exporters import StreamingIO
from edge_rnn.harness import TOLERANCE

FORMS = ["native", "decomposed"]
LAYERS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
ATOL = TOLERANCE["float32"].atol
VAD_OPTIONS = {"states": {"state": "new_state"}, "input_names": ["x", "state"], "output_names": ["prob", "new_state"],
               "input_axes": {"x": (0, None)}, "output_axes": {"prob": (0, None)}}


def old_verdict_fails(report) -> bool:
    return any(not r.err_fp32 <= ATOL for r in report.rows)


def large_state_vad() -> torch.nn.Module:
    torch.manual_seed(0)
    vad = W.VoiceActivity(hidden=16).eval()
    vad.cell = W.open_forget_gate(vad.cell, 16)
    return vad


# ------------------------------------------------------------------ correct exports pass


@pytest.mark.parametrize("form", FORMS)
def test_lstm_whose_cell_state_reaches_thousands_passes_over_10k_steps(tmp_path, form):
    torch.manual_seed(0)
    lstm = W.open_forget_gate(torch.nn.LSTM(5, 7).eval(), 7)
    report = edge_rnn.export(lstm, tmp_path / "m.onnx", decomposed=form == "decomposed", long_steps=10_000)
    parity = report.parity
    long_cn = [r for r in parity.rows if r.case == "long T=10000" and r.tensor == "cn"]
    assert long_cn and min(r.scale for r in long_cn) >= 1e3  # |c| in the thousands: one fp32 ulp is ~2.4e-4
    assert parity.ok and parity.exact_reference and all(r.err_torch is not None for r in parity.rows)
    # fp32 itself cannot meet an absolute 1e-5 there: PyTorch's own fp32 error is far above it
    assert max(r.err_torch for r in long_cn) > 1e-3
    assert old_verdict_fails(parity)  # the verdict before float64 refused this correct export
    assert max(r.ratio for r in long_cn) <= TOLERANCE["float32"].k


def test_whole_model_with_large_explicit_state_passes_over_10k_calls(tmp_path):
    vad = large_state_vad()
    report = edge_rnn.export(vad, tmp_path / "vad.onnx", example_input=(torch.randn(1, 64, 8), torch.zeros(2, 1, 16)),
                             io=StreamingIO(**VAD_OPTIONS), long_steps=10_000)
    parity = report.parity
    long_state = [r for r in parity.rows if r.case == "long calls=10000" and r.tensor == "new_state"]
    assert long_state and min(r.scale for r in long_state) >= 1e3
    assert parity.ok and old_verdict_fails(parity)
    assert "err_torch" in parity.table() and "ratio" in parity.table()


# ------------------------------------------------------------------ deliberate faults fail

FAULTS = [("gates swapped", k) for k in ("lstm", "gru")] + [("bias off by 1e-3", k) for k in ("rnn", "lstm", "gru")] \
    + [("state one step late", k) for k in ("rnn", "lstm", "gru")] \
    + [("reverse direction, wrong initial state", k) for k in ("lstm", "gru")]


def faulty_export(fault: str, kind: str, path, decomposed: bool) -> torch.nn.Module:
    """Write a faulty export of a seeded layer to ``path``; returns the correct module to verify against."""
    torch.manual_seed(0)
    module = LAYERS[kind](5, 7, bidirectional=fault.startswith("reverse")).eval()
    exported = {"gates swapped": lambda: F.swap_gates(module, kind),
                "bias off by 1e-3": lambda: F.bias_off(module)}.get(fault, lambda: module)()
    edge_rnn.export(exported, path, decomposed=decomposed, verify_parity=False)
    if fault == "state one step late":
        F.state_one_step_late(path)
    elif fault.startswith("reverse"):
        F.reverse_gets_forward_init(path)
    return module


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("fault,kind", FAULTS, ids=[f"{f}-{k}" for f, k in FAULTS])
def test_deliberate_fault_fails_the_verdict(tmp_path, fault, kind, form):
    path = tmp_path / "bad.onnx"
    module = faulty_export(fault, kind, path, form == "decomposed")
    report = edge_rnn.verify(module, path, long_steps=500, raise_on_failure=False)
    assert not report.ok and old_verdict_fails(report)
    # every row the old verdict failed, the new one fails too (here no fault hides in fp32 noise)
    assert {(r.case, r.opt_level, r.tensor) for r in report.rows if not r.err_fp32 <= ATOL} \
        == {(r.case, r.opt_level, r.tensor) for r in report.failures}
    with pytest.raises(ParityError) as err:
        edge_rnn.verify(module, path, long_steps=500)
    assert len(err.value.rows) == len(report.failures) and "err_torch" in str(err.value)


@pytest.mark.parametrize("form", FORMS)
def test_bias_fault_is_still_caught_where_the_state_is_large(tmp_path, form):
    """The bound grows with fp32's own error on large states; a 1e-3 bias error still stands far above it."""
    torch.manual_seed(0)
    lstm = W.open_forget_gate(torch.nn.LSTM(5, 7).eval(), 7)
    edge_rnn.export(F.bias_off(lstm), tmp_path / "bad.onnx", decomposed=form == "decomposed", verify_parity=False)
    report = edge_rnn.verify(lstm, tmp_path / "bad.onnx", long_steps=10_000, raise_on_failure=False)
    assert not report.ok and {r.case.split()[0] for r in report.failures} >= {"full", "chunked"}


def test_fault_in_a_whole_model_with_large_state_fails(tmp_path):
    vad = large_state_vad()
    bad = copy.deepcopy(vad)
    with torch.no_grad():
        bad.cell.bias_hh[3] += 1e-3
    example = (torch.randn(1, 64, 8), torch.zeros(2, 1, 16))
    edge_rnn.export(bad, tmp_path / "bad.onnx", example_input=example, io=StreamingIO(**VAD_OPTIONS),
                    verify_parity=False)
    report = edge_rnn.verify(vad, tmp_path / "bad.onnx", long_steps=2_000, raise_on_failure=False)
    assert not report.ok and old_verdict_fails(report)


# ------------------------------------------------------------------ the user's own data


def clip_input(path, limit: float) -> None:
    """A fault only large inputs reveal: the graph clips x to [-limit, limit] before anything else."""
    model = onnx.load(path)
    g = model.graph
    for n in g.node:
        n.input[:] = ["x_clipped" if i == "x" else i for i in n.input]
    g.initializer.extend([helper.make_tensor("clip_lo", TensorProto.FLOAT, [], [-limit]),
                          helper.make_tensor("clip_hi", TensorProto.FLOAT, [], [limit])])
    old = list(g.node)
    del g.node[:]
    g.node.extend([helper.make_node("Clip", ["x", "clip_lo", "clip_hi"], ["x_clipped"])] + old)
    onnx.save(model, path)


def test_real_data_finds_a_fault_random_inputs_miss(tmp_path):
    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 7).eval()
    path = tmp_path / "clipped.onnx"
    edge_rnn.export(gru, path, verify_parity=False)
    clip_input(path, 8.0)  # Gaussian inputs never reach 8; this data (loud frames) does
    assert edge_rnn.verify(gru, path, long_steps=2_000).ok
    rng = np.random.default_rng(0)
    loud = (rng.standard_normal((300, 5)) * np.where(rng.random((300, 1)) < 0.1, 20.0, 1.0)).astype(np.float32)
    report = edge_rnn.verify(gru, path, long_steps=2_000, data=loud, raise_on_failure=False)
    assert not report.ok and any("given data" in n for n in report.notes)
    np.save(tmp_path / "loud.npy", loud)  # and the same from a file
    assert not edge_rnn.verify(gru, path, long_steps=0, data=tmp_path / "loud.npy", raise_on_failure=False).ok


def test_data_shorter_than_the_long_stream_is_repeated_and_several_sequences_work(tmp_path):
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 7, batch_first=True).eval()
    seqs = [np.random.default_rng(i).standard_normal((n, 5)).astype(np.float32) for i, n in enumerate((13, 40))]
    report = edge_rnn.export(lstm, tmp_path / "m.onnx", long_steps=3_000, data=seqs)
    assert report.parity.ok and any(r.case == "long T=3000" for r in report.parity.rows)
    with pytest.raises(DataError, match=r"expected one sequence of shape \(time, 5\), got \(13, 4\)"):
        edge_rnn.export(lstm, tmp_path / "n.onnx", data=np.zeros((13, 4), np.float32))
    assert not (tmp_path / "n.onnx").exists()  # refused before anything was written


def test_whole_models_take_data_in_their_own_layout(tmp_path):
    kws = W.keyword_spotter().eval()
    speech = np.random.default_rng(0).standard_normal((200, 40)).astype(np.float32)  # (time, mels)
    r = edge_rnn.export(kws, tmp_path / "kws.onnx", example_input=torch.randn(1, 50, 40), long_steps=500, data=speech)
    assert r.parity.ok and any("given data" in n for n in r.parity.notes)
    frames = np.random.default_rng(1).standard_normal((60, 64, 8)).astype(np.float32)  # (calls, bins, frames)
    vad = large_state_vad()
    r = edge_rnn.export(vad, tmp_path / "vad.onnx", example_input=(torch.randn(1, 64, 8), torch.zeros(2, 1, 16)),
                        io=StreamingIO(**VAD_OPTIONS), long_steps=300, data=frames)
    assert r.parity.ok
    with pytest.raises(DataError, match=r"expected one sequence of shape \(calls, 64, 8\), got \(60, 64\)"):
        edge_rnn.verify(vad, tmp_path / "vad.onnx", data=frames[:, :, 0])


# ------------------------------------------------------------------ no float64 kernel: the fallback


class NoDoubleKernel(torch.nn.Module):
    """A GRU and a head whose forward refuses float64, as a module using an op without a double kernel does."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(5, 7, batch_first=True)
        self.head = torch.nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            raise RuntimeError("\"fused_op_cpu\" not implemented for 'Double'")
        return self.head(self.gru(x)[0])


class CastsToFloat(NoDoubleKernel):
    """Runs in float64 but hands back float32: no float64 answer either."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0]).float()


@pytest.mark.parametrize("cls,why", [(NoDoubleKernel, "not implemented for 'Double'"),
                                     (CastsToFloat, "come back in a lower precision")])
def test_module_without_float64_falls_back_to_fp32_and_still_catches_faults(tmp_path, cls, why):
    torch.manual_seed(0)
    model = cls().eval()
    report = edge_rnn.export(model, tmp_path / "m.onnx", example_input=torch.randn(1, 9, 5), long_steps=500)
    parity = report.parity
    assert parity.ok and not parity.exact_reference and all(r.err_torch is None for r in parity.rows)
    assert any("no float64 reference" in n and why in n for n in parity.notes)
    assert "PyTorch float32" in parity.table() and "1e-04 x |torch_fp32|" in parity.table()
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.gru.bias_ih_l0[3] += 1e-3
    edge_rnn.export(bad, tmp_path / "bad.onnx", example_input=torch.randn(1, 9, 5), verify_parity=False)
    assert not edge_rnn.verify(model, tmp_path / "bad.onnx", long_steps=500, raise_on_failure=False).ok


# ------------------------------------------------------------------ verify of whole models


def test_verify_a_whole_model_from_the_file_alone(tmp_path):
    kws = W.keyword_spotter().eval()
    path = tmp_path / "kws.onnx"
    exported = edge_rnn.export(kws, path, example_input=torch.randn(1, 50, 40), long_steps=300).parity
    again = edge_rnn.verify(kws, path, long_steps=300)  # names, axes and states read back from the file
    assert again.ok and {r.tensor for r in again.rows} == {r.tensor for r in exported.rows}
    assert {r.case.split()[0] for r in again.rows} == {"full", "chunked", "long"}
    assert edge_rnn.verify(kws, path, example_input=torch.randn(1, 50, 40), long_steps=0).ok
    other = W.KeywordSpotter().eval()  # other weights
    with pytest.raises(ParityError, match="err_onnx"):
        edge_rnn.verify(other, path, long_steps=0)


def test_verify_a_whole_model_with_explicit_state_and_the_export_options(tmp_path):
    vad = large_state_vad()
    path = tmp_path / "vad.onnx"
    example = (torch.randn(1, 64, 8), torch.zeros(2, 1, 16))
    edge_rnn.export(vad, path, example_input=example, io=StreamingIO(**VAD_OPTIONS), verify_parity=False)
    assert edge_rnn.verify(vad, path, long_steps=300).ok
    assert edge_rnn.verify(vad, path, example_input=example, io=StreamingIO(**VAD_OPTIONS), long_steps=300).ok


def test_verify_refuses_a_module_that_does_not_match_the_file(tmp_path):
    kws = W.keyword_spotter().eval()
    path = tmp_path / "kws.onnx"
    edge_rnn.export(kws, path, example_input=torch.randn(1, 50, 40), verify_parity=False,
                    io=StreamingIO(**{"output_names": ["logits"]}))
    with pytest.raises(ModelFormatError, match="other outputs than the file's contract"):
        edge_rnn.verify(kws, path, io=StreamingIO(**{"output_names": ["y"]}))
    with pytest.raises(UnsupportedError, match=r"whole_model_options \['typo'\]"), \
            pytest.warns(DeprecationWarning, match="io=StreamingIO"):
        edge_rnn.verify(kws, path, whole_model_options={"typo": 1})
    with pytest.raises(UnsupportedError, match="holds a whole model"):
        edge_rnn.verify(torch.nn.GRU(40, 48), path)
    edge_rnn.export(torch.nn.GRU(4, 6).eval(), tmp_path / "gru.onnx", verify_parity=False)
    with pytest.raises(UnsupportedError, match="not a whole model"):
        edge_rnn.verify(kws, tmp_path / "gru.onnx")


# ------------------------------------------------------------------ review findings: judged right, or refused clearly


def test_float16_module_is_judged_against_fp32_noise_not_its_own(tmp_path):
    """The graph is float32: a float16 module's own rounding (~1e-4) must not widen the bound."""
    torch.manual_seed(0)
    half = torch.nn.LSTM(8, 16).half().eval()
    edge_rnn.export(half, tmp_path / "ok.onnx", verify_parity=False)
    assert edge_rnn.verify(half, tmp_path / "ok.onnx", long_steps=500).ok
    edge_rnn.export(F.bias_off(copy.deepcopy(half).float()), tmp_path / "bad.onnx", verify_parity=False)
    report = edge_rnn.verify(half, tmp_path / "bad.onnx", long_steps=500, raise_on_failure=False)
    assert not report.ok and max(r.err_torch for r in report.rows) < 1e-5
    assert half.weight_ih_l0.dtype == torch.float16  # the caller's module is left as it was


class WithDecision(torch.nn.Module):
    """A GRU with two heads: logits, and the class index (an int64 output)."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(5, 7, batch_first=True)
        self.head = torch.nn.Linear(7, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.gru(x)[0])
        return logits, logits.argmax(-1)


def test_integer_outputs_are_compared_exactly_and_keep_the_float64_reference(tmp_path):
    torch.manual_seed(0)
    model = WithDecision().eval()
    report = edge_rnn.export(model, tmp_path / "m.onnx", example_input=torch.randn(1, 9, 5), long_steps=500)
    parity = report.parity
    assert parity.ok and parity.exact_reference  # an int64 output is no reason to drop float64
    y1 = [r for r in parity.rows if r.tensor == "y1"]
    assert y1 and all(r.bound == 0.0 and "discrete" in r.detail for r in y1)
    bad = copy.deepcopy(model)
    with torch.no_grad():
        bad.head.bias[2] += 0.5  # shifts the decision on some steps, the logits by 0.5
    edge_rnn.export(bad, tmp_path / "bad.onnx", example_input=torch.randn(1, 9, 5), verify_parity=False)
    failed = {r.tensor for r in edge_rnn.verify(model, tmp_path / "bad.onnx", long_steps=500,
                                                  raise_on_failure=False).failures}
    assert failed == {"y0", "y1"}


def test_a_module_that_cannot_be_copied_falls_back_and_says_why(tmp_path):
    import warnings

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's notice that weight_norm moved
        lstm = torch.nn.utils.weight_norm(torch.nn.LSTM(8, 16), "weight_hh_l0")
    lstm(torch.randn(3, 1, 8))  # weight_norm computes weight_hh_l0 as a non-leaf tensor: deepcopy refuses it
    lstm.eval()
    report = edge_rnn.export(lstm, tmp_path / "wn.onnx", long_steps=300).parity
    assert report.ok and not report.exact_reference
    assert any("cannot make a float64 copy of the module" in n for n in report.notes)


@pytest.mark.parametrize("module,match", [
    (lambda: torch.nn.GRU(8, 16), r"holds another layer than the module: expected kind 'lstm' \(module: 'gru'\)"),
    (lambda: torch.nn.LSTM(8, 16, num_layers=2), r"num_layers 1 \(module: 2\)"),
    (lambda: torch.nn.LSTM(4, 16), r"input_size 8 \(module: 4\)"),
])
def test_a_layer_that_does_not_fit_the_file_is_refused_clearly(tmp_path, module, match):
    edge_rnn.export(torch.nn.LSTM(8, 16).eval(), tmp_path / "l.onnx", verify_parity=False)
    with pytest.raises(ModelFormatError, match=match):
        edge_rnn.verify(module().eval(), tmp_path / "l.onnx")


def test_a_whole_model_that_does_not_fit_the_file_is_refused_clearly(tmp_path):
    kws, vad = W.keyword_spotter().eval(), large_state_vad()
    edge_rnn.export(kws, tmp_path / "kws.onnx", example_input=torch.randn(1, 50, 40), verify_parity=False)
    edge_rnn.export(vad, tmp_path / "vad.onnx", example_input=(torch.randn(1, 64, 8), torch.zeros(2, 1, 16)),
                    io=StreamingIO(**VAD_OPTIONS), verify_parity=False)
    with pytest.raises(ModelFormatError, match="the module fails on inputs shaped as the file's"):
        edge_rnn.verify(vad, tmp_path / "kws.onnx")
    with pytest.raises(ModelFormatError, match="the module fails on inputs shaped as the file's"):
        edge_rnn.verify(kws, tmp_path / "vad.onnx")
    with pytest.raises(ModelFormatError, match="the module fails on inputs shaped as the file's"):
        edge_rnn.verify(kws, tmp_path / "kws.onnx", example_input=torch.zeros(1, 10, 41))
    swapped = {**VAD_OPTIONS, "output_names": ["new_state", "prob"]}
    with pytest.raises(edge_rnn.EdgeRnnError):
        edge_rnn.verify(vad, tmp_path / "vad.onnx", io=StreamingIO(**swapped))


def test_bad_options_are_refused_and_a_check_without_cases_does_not_pass(tmp_path):
    edge_rnn.export(torch.nn.LSTM(8, 16).eval(), tmp_path / "l.onnx", verify_parity=False)
    lstm = torch.nn.LSTM(8, 16).eval()
    with pytest.raises(UnsupportedError, match="opt_levels: expected one or more of"):
        edge_rnn.verify(lstm, tmp_path / "l.onnx", opt_levels=("fastest",))
    with pytest.raises(UnsupportedError, match="opt_levels"):
        edge_rnn.verify(lstm, tmp_path / "l.onnx", opt_levels=())
    with pytest.raises(UnsupportedError, match="nothing to compare"):
        edge_rnn.verify(lstm, tmp_path / "l.onnx", seq_lens=(), chunked_len=0, long_steps=0)
    from edge_rnn.errors import ShapeError

    with pytest.raises(ShapeError, match="example_input: expected a tensor"):
        edge_rnn.verify(lstm, tmp_path / "l.onnx", example_input=np.zeros((3, 1, 8)))


def test_atol_given_both_ways_for_a_whole_model(tmp_path):
    vad = large_state_vad()
    path = tmp_path / "vad.onnx"
    edge_rnn.export(vad, path, example_input=(torch.randn(1, 64, 8), torch.zeros(2, 1, 16)),
                    io=StreamingIO(**VAD_OPTIONS), verify_parity=False)
    with pytest.warns(DeprecationWarning, match="whole_model_options is deprecated"):
        report = edge_rnn.verify(vad, path, atol=1e-4, whole_model_options={"atol": 1e-5}, long_steps=100)
    assert report.ok and report.tolerance.atol == 1e-4


def test_verify_reads_an_ort_format_model(tmp_path):
    import subprocess
    import sys

    torch.manual_seed(0)
    gru = torch.nn.GRU(4, 6).eval()
    edge_rnn.export(gru, tmp_path / "g.onnx", verify_parity=False)
    r = subprocess.run([sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(tmp_path / "g.onnx")],
                       capture_output=True, text=True)
    if r.returncode != 0 or not (tmp_path / "g.ort").exists():
        pytest.skip(f"onnxruntime could not convert to ORT format here: {r.stderr[-300:]}")
    assert edge_rnn.verify(gru, tmp_path / "g.ort", long_steps=300).ok
