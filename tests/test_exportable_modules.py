"""Which modules export, and how: other precisions and devices, the meta device, cells looped over time.

A module in float16, bfloat16 or float64 is exported (and checked) as the float32 CPU graph computes it, with
a note saying so; one on the meta device, or a cell stepped over time by a Python loop, is refused with the
reason and what to do (not a bare ParityError, a NotImplementedError, or a message that blames convolutions).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import edge_rnn  # noqa: E402
from edge_rnn.errors import UnsupportedError  # noqa: E402
from edge_rnn.exporters import StreamingIO  # noqa: E402


class Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.gru, self.head = torch.nn.GRU(4, 6, batch_first=True), torch.nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.gru(x)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_module_in_another_precision_exports_as_float32_with_a_note(tmp_path, dtype):
    torch.manual_seed(0)
    name = str(dtype).removeprefix("torch.")
    layer = torch.nn.LSTM(4, 6).to(dtype).eval()
    report = edge_rnn.export(layer, tmp_path / "l.onnx", long_steps=50)
    assert report.parity.ok and report.notes == [
        f"the module is {name}: the graph computes in float32, so it was exported and checked as a float32 copy; "
        "the module's own outputs differ from it by its own rounding"]
    assert next(layer.parameters()).dtype == dtype  # the caller's module is left as it was
    model = Head().to(dtype).eval()  # was: "RNN input dtype (torch.float32) does not match weight dtype"
    x = torch.randn(1, 5, 4, dtype=dtype)
    report = edge_rnn.export(model, tmp_path / "m.onnx", example_input=x, long_steps=50)
    assert report.parity.ok and report.notes[0].startswith(f"the module is {name}")
    again = edge_rnn.verify(model, tmp_path / "m.onnx", long_steps=50)
    assert again.ok and again.notes[0].startswith(f"the module is {name}")


def test_a_module_on_the_meta_device_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(UnsupportedError, match=r"on the meta device hold no values to export; materialise the "
                                               r"weights first \(module.to_empty\(device='cpu'\)"):
        edge_rnn.export(torch.nn.GRU(4, 6, device="meta"), tmp_path / "x.onnx")  # was: NotImplementedError
    with pytest.raises(UnsupportedError, match="gru.bias_hh_l0, gru.bias_ih_l0, gru.weight_hh_l0 ... on the meta"):
        edge_rnn.export(Head().to("meta"), tmp_path / "x.onnx", example_input=torch.randn(1, 5, 4))
    assert not (tmp_path / "x.onnx").exists()


class Looped(torch.nn.Module):
    """A cell stepped over time by a Python loop, its state started inside forward (or lifted, with_state=False)."""

    def __init__(self, kind: str = "GRU", zeros_inside: bool = True):
        super().__init__()
        self.cell = getattr(torch.nn, f"{kind}Cell")(4, 6)
        self.zeros_inside = zeros_inside

    def forward(self, x):
        state = None
        if self.zeros_inside:
            h = torch.zeros(x.shape[0], 6)
            state = (h, h) if isinstance(self.cell, torch.nn.LSTMCell) else h
        ys = []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            ys.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(ys, 1)


@pytest.mark.parametrize("kind,zeros_inside", [("GRU", True), ("GRU", False), ("LSTM", True), ("RNN", False)])
def test_a_cell_looped_over_time_is_refused_as_a_loop_not_blamed_on_convolutions(tmp_path, kind, zeros_inside):
    # was: "found no recurrent layer ... called without a state", or "not streamable ... a convolution that looks
    # ahead, normalisation or pooling over the time axis"
    with pytest.raises(UnsupportedError, match=rf"cell: a {kind}Cell called 7 times in one forward, once per time "
                                               rf"step of the example: a Python loop over time.*Replace the loop "
                                               rf"with nn\.{kind}\(4, 6, batch_first=\.\.\.\)"):
        edge_rnn.export(Looped(kind, zeros_inside).eval(), tmp_path / "x.onnx", example_input=torch.randn(1, 7, 4))


def test_a_fixed_unroll_without_a_time_axis_is_not_taken_for_a_loop(tmp_path):
    class TwoFrames(torch.nn.Module):  # two frames per call, stacked on a non-time axis, its state declared
        def __init__(self):
            super().__init__()
            self.cell = torch.nn.GRUCell(4, 6)

        def forward(self, x, h):
            h = self.cell(x[:, 0], h)
            h = self.cell(x[:, 1], h)
            return h * 2, h

    torch.manual_seed(0)
    io = StreamingIO(input_names=["x", "h"], output_names=["y", "hn"], states={"h": "hn"},
                     input_axes={"x": (0, None)}, output_axes={"y": (0, None)}, state_batch_axes={"h": 0})
    report = edge_rnn.export(TwoFrames().eval(), tmp_path / "two.onnx", io=io, long_steps=50,
                             example_input=(torch.randn(1, 2, 4), torch.zeros(1, 6)))
    assert report.parity.ok
