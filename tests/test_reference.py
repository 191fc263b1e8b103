"""Parity of edge_rnn.reference with torch.nn, parametrised over every variant.

Each case builds a torch.nn module, copies its state_dict into the reference
module and compares outputs and final states elementwise.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed

import doctest
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

import edge_rnn.reference as ref
from edge_rnn.errors import ShapeError, UnsupportedError
from edge_rnn.reference import gru_cell, layers, lstm_cell, rnn_cell

# Absolute tolerance per dtype, against torch.nn on CPU over ~6 steps.
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}

IN, HID, PROJ, BATCH, STEPS = 5, 7, 3, 4, 6  # input, hidden, projection, batch, time


@dataclass(frozen=True)
class Arch:
    name: str
    ours: type[nn.Module]
    theirs: type[nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def lstm(self) -> bool:
        return self.theirs in (nn.LSTM, nn.LSTMCell)

    @property
    def h_out(self) -> int:
        return self.kwargs.get("proj_size") or HID


LAYER_ARCHS = [
    Arch("rnn_tanh", ref.RNN, nn.RNN, {"nonlinearity": "tanh"}),
    Arch("rnn_relu", ref.RNN, nn.RNN, {"nonlinearity": "relu"}),
    Arch("lstm", ref.LSTM, nn.LSTM),
    Arch("lstm_proj", ref.LSTM, nn.LSTM, {"proj_size": PROJ}),
    Arch("gru", ref.GRU, nn.GRU),
]
CELL_ARCHS = [
    Arch("rnn_tanh", ref.RNNCell, nn.RNNCell, {"nonlinearity": "tanh"}),
    Arch("rnn_relu", ref.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
    Arch("lstm", ref.LSTMCell, nn.LSTMCell),
    Arch("gru", ref.GRUCell, nn.GRUCell),
]
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
ARCH = {a.name: a for a in LAYER_ARCHS}
by_name = pytest.mark.parametrize("arch", LAYER_ARCHS, ids=lambda a: a.name)
cells_by_name = pytest.mark.parametrize("arch", CELL_ARCHS, ids=lambda a: a.name)


@pytest.fixture(autouse=True)
def _seeded_no_grad() -> Iterator[None]:
    # Parity is about values; skipping autograd's bookkeeping halves the run time.
    # test_gradients_match_torch turns it back on.
    torch.manual_seed(0)
    with torch.no_grad():
        yield


def make_pair(arch: Arch, dtype: torch.dtype = torch.float32, **kwargs: Any) -> tuple[nn.Module, nn.Module]:
    """(reference, torch.nn) modules holding the same parameters, in eval mode."""
    theirs = arch.theirs(IN, HID, **arch.kwargs, **kwargs).to(dtype).eval()
    ours = arch.ours(IN, HID, **arch.kwargs, **kwargs).to(dtype).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def random_state(arch: Arch, leading: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Any:
    """A random hx for ``arch``: ``h`` (and ``c``) of shape ``leading + (size,)``."""
    h = torch.randn(*leading, arch.h_out, dtype=dtype)
    return (h, torch.randn(*leading, HID, dtype=dtype)) if arch.lstm else h


def flat(result: Any) -> list[Tensor]:
    if isinstance(result, Tensor):
        return [result]
    return [t for part in result for t in flat(part)]


def assert_parity(ours: Any, theirs: Any, dtype: torch.dtype) -> None:
    ours, theirs = flat(ours), flat(theirs)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=TOL[dtype], rtol=0)


# -- parity with torch.nn --------------------------------------------------------------


@cells_by_name
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_cell_matches_torch(arch: Arch, bias: bool, batched: bool, with_state: bool) -> None:
    ours, theirs = make_pair(arch, bias=bias)
    lead = (BATCH,) if batched else ()
    x = torch.randn(*lead, IN)
    hx = random_state(arch, lead) if with_state else None
    assert_parity(ours(x, hx), theirs(x, hx), torch.float32)


@by_name
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
@pytest.mark.parametrize("with_state", [True, False], ids=["hx", "no_hx"])
def test_layer_matches_torch(
    arch: Arch, num_layers: int, bidirectional: bool, batch_first: bool, bias: bool, batched: bool, with_state: bool
) -> None:
    ours, theirs = make_pair(
        arch, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias
    )
    leading = num_layers * (2 if bidirectional else 1)
    if not batched:
        x, hx = torch.randn(STEPS, IN), random_state(arch, (leading,))
    else:
        x = torch.randn(BATCH, STEPS, IN) if batch_first else torch.randn(STEPS, BATCH, IN)
        hx = random_state(arch, (leading, BATCH))
    hx = hx if with_state else None
    assert_parity(ours(x, hx), theirs(x, hx), torch.float32)


@by_name
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_matches_torch_float64(arch: Arch, bidirectional: bool) -> None:
    ours, theirs = make_pair(arch, torch.float64, num_layers=2, bidirectional=bidirectional)
    x = torch.randn(STEPS + 3, BATCH + 1, IN, dtype=torch.float64)
    hx = random_state(arch, (2 * (2 if bidirectional else 1), BATCH + 1), torch.float64)
    assert_parity(ours(x, hx), theirs(x, hx), torch.float64)


@by_name
def test_chunked_stream_equals_one_pass(arch: Arch) -> None:
    ours, _ = make_pair(arch, num_layers=2)
    x = torch.randn(17, BATCH, IN)
    whole, whole_state = ours(x)
    state, outputs = None, []
    for chunk in torch.split(x, [1, 5, 8, 3]):
        out, state = ours(chunk, state)
        outputs.append(out)
    assert_parity((torch.cat(outputs), state), (whole, whole_state), torch.float32)


@by_name
def test_gradients_match_torch(arch: Arch) -> None:
    ours, theirs = make_pair(arch, num_layers=2, bidirectional=True)
    x = torch.randn(STEPS, BATCH, IN)
    hx = random_state(arch, (4, BATCH))
    with torch.enable_grad():
        for module in (ours, theirs):
            loss = sum((t * t).sum() for t in flat(module(x, hx)))
            loss.backward()
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


# -- parameters, state_dict, attributes -------------------------------------------------


def _case_id(arch: Arch, extra: dict[str, Any]) -> str:
    flags = [k if v is True else f"no_{k}" if v is False else f"{k}{v}" for k, v in extra.items()]
    return "-".join([arch.ours.__name__, arch.name, *flags])


# Every module kind, with and without bias; layers two deep, in one or two directions.
MODULE_CASES = [
    pytest.param(arch, extra, id=_case_id(arch, extra))
    for arch, extra in [
        *((a, {"num_layers": 2, "bidirectional": bi, "bias": bias}) for a in LAYER_ARCHS for bi in (False, True)
          for bias in (True, False)),
        *((a, {"bias": bias}) for a in CELL_ARCHS for bias in (True, False)),
    ]
]  # fmt: skip


@pytest.mark.parametrize("arch, extra", MODULE_CASES)
def test_state_dict_round_trip(arch: Arch, extra: dict[str, Any]) -> None:
    theirs = arch.theirs(IN, HID, **arch.kwargs, **extra)
    ours = arch.ours(IN, HID, **arch.kwargs, **extra)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    ours.load_state_dict(theirs.state_dict())
    back = arch.theirs(IN, HID, **arch.kwargs, **extra)
    back.load_state_dict(ours.state_dict())
    for (name, a), (name_b, b) in zip(back.named_parameters(), theirs.named_parameters(), strict=True):
        assert name == name_b and torch.equal(a, b)


@pytest.mark.parametrize("arch, extra", MODULE_CASES)
def test_initialisation_matches_torch(arch: Arch, extra: dict[str, Any]) -> None:
    torch.manual_seed(1)
    theirs = arch.theirs(IN, HID, **arch.kwargs, **extra)
    torch.manual_seed(1)
    ours = arch.ours(IN, HID, **arch.kwargs, **extra)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)
    assert all(p.abs().max() <= HID**-0.5 for p in ours.parameters())


@pytest.mark.parametrize("arch, extra", MODULE_CASES)
def test_attributes_match_torch(arch: Arch, extra: dict[str, Any]) -> None:
    is_layer = arch in LAYER_ARCHS
    ours, theirs = make_pair(arch, **extra, **({"batch_first": True, "dropout": 0.25} if is_layer else {}))
    names = ["input_size", "hidden_size", "bias", "num_layers", "batch_first", "dropout", "bidirectional"]
    names += ["proj_size", "mode", "nonlinearity"]
    for name in names:
        assert getattr(ours, name, None) == getattr(theirs, name, None), name
    if is_layer:
        assert [[p.shape for p in g] for g in ours.all_weights] == [[p.shape for p in g] for g in theirs.all_weights]
    assert repr(ours) == repr(theirs)


def test_reference_does_not_call_torch_recurrent_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the reference must not call torch's recurrent kernels")

    kernels = ["lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell"]
    for name in kernels:
        monkeypatch.setattr(torch._VF, name, forbidden, raising=False)
        monkeypatch.setattr(torch, name, forbidden)
    for arch in LAYER_ARCHS + CELL_ARCHS:
        module = arch.ours(IN, HID, **arch.kwargs)
        assert not isinstance(module, (nn.RNNBase, nn.RNNCellBase))
        module(torch.randn(2, IN) if arch in CELL_ARCHS else torch.randn(STEPS, 2, IN))


def test_kinds_names_every_public_class() -> None:
    assert set(ref.KINDS) == {a.ours for a in LAYER_ARCHS + CELL_ARCHS}
    for cls, (kind, cell) in ref.KINDS.items():
        assert (kind, cell) == (cls.__name__.removesuffix("Cell").lower(), cls.__name__.endswith("Cell"))
    assert set(ref.TWINS) == set(ref.KINDS)
    for cls, twin in ref.TWINS.items():  # each stands in for its torch.nn namesake, parameter for parameter
        assert twin.__module__.startswith("torch.nn") and twin.__name__ == cls.__name__
        assert list(cls(3, 4).state_dict()) == list(twin(3, 4).state_dict())


@pytest.mark.parametrize("module", [rnn_cell, lstm_cell, gru_cell, layers], ids=lambda m: m.__name__)
def test_docstring_examples_run(module: Any) -> None:
    failed, attempted = doctest.testmod(module)
    assert attempted > 0 and failed == 0


# -- gates ------------------------------------------------------------------------------


def assert_sigmoid_range(*gates: Tensor) -> None:
    for g in gates:
        assert ((g > 0) & (g < 1)).all()


@pytest.mark.parametrize("batched", [True, False])
def test_lstm_cell_gates_reproduce_state(batched: bool) -> None:
    cell = ref.LSTMCell(IN, HID)
    lead = (BATCH,) if batched else ()
    x, h0, c0 = torch.randn(*lead, IN), torch.randn(*lead, HID), torch.randn(*lead, HID)
    (h1, c1), g = cell(x, (h0, c0), return_gates=True)
    assert set(g) == {"i", "f", "g", "o"} and all(v.shape == h1.shape for v in g.values())
    torch.testing.assert_close(c1, g["f"] * c0 + g["i"] * g["g"], atol=TOL[torch.float32], rtol=0)
    torch.testing.assert_close(h1, g["o"] * torch.tanh(c1), atol=TOL[torch.float32], rtol=0)
    assert_sigmoid_range(g["i"], g["f"], g["o"])
    assert (g["g"].abs() < 1).all()


@pytest.mark.parametrize("batched", [True, False])
def test_gru_cell_gates_reproduce_state(batched: bool) -> None:
    cell = ref.GRUCell(IN, HID)
    lead = (BATCH,) if batched else ()
    x, h0 = torch.randn(*lead, IN), torch.randn(*lead, HID)
    h1, g = cell(x, h0, return_gates=True)
    assert set(g) == {"r", "z", "n"}
    torch.testing.assert_close(h1, (1 - g["z"]) * g["n"] + g["z"] * h0, atol=TOL[torch.float32], rtol=0)
    assert_sigmoid_range(g["r"], g["z"])
    assert (g["n"].abs() < 1).all()


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_cell_pre_activation(nonlinearity: str) -> None:
    cell = ref.RNNCell(IN, HID, nonlinearity=nonlinearity)
    x, h0 = torch.randn(BATCH, IN), torch.randn(BATCH, HID)
    h1, g = cell(x, h0, return_gates=True)
    expected = x @ cell.weight_ih.T + cell.bias_ih + h0 @ cell.weight_hh.T + cell.bias_hh
    torch.testing.assert_close(g["a"], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(h1, getattr(torch, nonlinearity)(g["a"]), atol=0, rtol=0)


def replay(
    arch: Arch, module: nn.Module, gates: dict[str, dict[str, Tensor]], hx: Any, output: Tensor, hn: Any
) -> None:
    """Rebuild every layer-direction's states from its recorded gates alone and compare."""
    directions = module.num_directions
    h0, c0 = hx if arch.lstm else (hx, None)
    h_n, c_n = hn if arch.lstm else (hn, None)
    for layer in range(module.num_layers):
        for reverse in range(directions):
            key, idx = f"l{layer}" + ("_reverse" if reverse else ""), layer * directions + reverse
            g = gates[key]
            h, c = h0[idx], (c0[idx] if arch.lstm else None)
            for t in reversed(range(STEPS)) if reverse else range(STEPS):
                if arch.lstm:
                    c = g["f"][t] * c + g["i"][t] * g["g"][t]
                    h = g["o"][t] * torch.tanh(c)
                    if module.proj_size:
                        h = h @ module.layer_weights(layer, bool(reverse)).w_hr.T
                else:
                    h = (1 - g["z"][t]) * g["n"][t] + g["z"][t] * h
                if layer == module.num_layers - 1:
                    width = h.shape[-1]
                    torch.testing.assert_close(h, output[t, :, reverse * width : (reverse + 1) * width])
            torch.testing.assert_close(h, h_n[idx])
            if arch.lstm:
                torch.testing.assert_close(c, c_n[idx])


@pytest.mark.parametrize("arch", [ARCH["lstm"], ARCH["lstm_proj"], ARCH["gru"]], ids=lambda a: a.name)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_layer_gates_reproduce_states(arch: Arch, bidirectional: bool) -> None:
    module = arch.ours(IN, HID, num_layers=2, bidirectional=bidirectional, **arch.kwargs)
    hx = random_state(arch, (2 * module.num_directions, BATCH))
    (output, hn), gates = module(torch.randn(STEPS, BATCH, IN), hx, return_gates=True)
    replay(arch, module, gates, hx, output, hn)
    for g in gates.values():
        assert_sigmoid_range(*(g[k] for k in ("i", "f", "o", "r", "z") if k in g))


@by_name
@pytest.mark.parametrize("layout", ["seq_first", "batch_first", "unbatched"])
def test_layer_gate_layout(arch: Arch, layout: str) -> None:
    module = arch.ours(IN, HID, num_layers=2, bidirectional=True, batch_first=layout == "batch_first", **arch.kwargs)
    x = {
        "seq_first": torch.randn(STEPS, BATCH, IN),
        "batch_first": torch.randn(BATCH, STEPS, IN),
        "unbatched": torch.randn(STEPS, IN),
    }[layout]
    plain = module(x)
    result, gates = module(x, return_gates=True)
    assert_parity(result, plain, torch.float32)
    assert list(gates) == ["l0", "l0_reverse", "l1", "l1_reverse"]
    names = {"RNN": ["a"], "LSTM": ["i", "f", "g", "o"], "GRU": ["r", "z", "n"]}[type(module).__name__]
    shape = {"seq_first": (STEPS, BATCH, HID), "batch_first": (BATCH, STEPS, HID), "unbatched": (STEPS, HID)}[layout]
    for g in gates.values():
        assert list(g) == names and all(v.shape == shape for v in g.values())


# -- errors and dropout -----------------------------------------------------------------

BAD_CALLS = [
    pytest.param(
        lambda: ref.RNNCell(IN, HID)(torch.randn(2, BATCH, IN)),
        "RNNCell: expected input to be 1D (unbatched) or 2D (batched), got 3D",
        id="rnncell-3d",
    ),
    pytest.param(
        lambda: ref.LSTMCell(IN, HID)(torch.randn(BATCH, IN + 1)),
        "LSTMCell: expected input of size 5, got 6",
        id="lstmcell-size",
    ),
    pytest.param(
        lambda: ref.GRUCell(IN, HID)(torch.randn(BATCH, IN), torch.randn(BATCH, HID + 1)),
        "GRUCell: expected hx of shape (4, 7), got (4, 8)",
        id="grucell-hx",
    ),
    pytest.param(
        lambda: ref.RNNCell(IN, HID)(torch.randn(IN), torch.randn(BATCH, HID)),
        "RNNCell: expected hx of shape (7,), got (4, 7)",
        id="rnncell-unbatched-hx",
    ),
    pytest.param(
        lambda: ref.LSTMCell(IN, HID)(torch.randn(BATCH, IN), torch.randn(BATCH, HID)),
        "LSTMCell: expected hx to be a pair (h_0, c_0), got Tensor",
        id="lstmcell-not-pair",
    ),
    pytest.param(
        lambda: ref.LSTMCell(IN, HID)(torch.randn(BATCH, IN), (torch.randn(BATCH, HID), torch.randn(BATCH + 1, HID))),
        "LSTMCell: expected c_0 of shape (4, 7), got (5, 7)",
        id="lstmcell-c0",
    ),
    pytest.param(
        lambda: ref.GRUCell(IN, HID)(torch.randn(BATCH, IN, dtype=torch.float64)),
        "GRUCell: expected input of dtype torch.float32 (the parameters'), got torch.float64",
        id="cell-dtype",
    ),
    pytest.param(
        lambda: ref.RNN(IN, HID)(torch.randn(IN)),
        "RNN: expected input to be 2D (unbatched) or 3D (batched), got 1D",
        id="rnn-1d",
    ),
    pytest.param(
        lambda: ref.GRU(IN, HID)(torch.randn(1, STEPS, BATCH, IN)),
        "GRU: expected input to be 2D (unbatched) or 3D (batched), got 4D",
        id="gru-4d",
    ),
    pytest.param(
        lambda: ref.LSTM(IN, HID)(torch.randn(STEPS, BATCH, IN - 1)),
        "LSTM: expected input of size 5, got 4",
        id="lstm-size",
    ),
    pytest.param(
        lambda: ref.RNN(IN, HID, 2)(torch.randn(STEPS, BATCH, IN), torch.randn(2, BATCH + 1, HID)),
        "RNN: expected h_0 of shape (2, 4, 7), got (2, 5, 7)",
        id="rnn-h0-batch",
    ),
    pytest.param(
        lambda: ref.GRU(IN, HID)(torch.randn(STEPS, IN), torch.randn(1, 1, HID)),
        "GRU: expected h_0 of shape (1, 7), got (1, 1, 7)",
        id="gru-unbatched-3d-h0",
    ),
    pytest.param(
        lambda: ref.LSTM(IN, HID, proj_size=PROJ)(
            torch.randn(STEPS, BATCH, IN), (torch.randn(1, BATCH, PROJ), torch.randn(1, BATCH, PROJ))
        ),
        "LSTM: expected c_0 of shape (1, 4, 7), got (1, 4, 3)",
        id="lstm-proj-c0",
    ),
    pytest.param(
        lambda: ref.LSTM(IN, HID)(torch.randn(STEPS, BATCH, IN), torch.randn(1, BATCH, HID)),
        "LSTM: expected hx to be a pair (h_0, c_0), got Tensor",
        id="lstm-not-pair",
    ),
    pytest.param(
        lambda: ref.GRU(IN, HID)(torch.randn(STEPS, BATCH, IN), (torch.randn(1, BATCH, HID),)),
        "GRU: expected h_0 to be a Tensor, got tuple",
        id="gru-tuple-hx",
    ),
    pytest.param(
        lambda: ref.RNN(IN, HID)(torch.randn(STEPS, BATCH, IN), torch.randn(1, BATCH, HID, dtype=torch.float64)),
        "RNN: expected h_0 of dtype torch.float32 (the input's), got torch.float64",
        id="rnn-h0-dtype",
    ),
    pytest.param(
        lambda: ref.RNN(IN, HID)(torch.randn(0, BATCH, IN)),
        "RNN: expected input with at least one time step, got 0",
        id="rnn-empty",
    ),
]


@pytest.mark.parametrize("call, message", BAD_CALLS)
def test_bad_shapes_raise_shape_error(call: Any, message: str) -> None:
    with pytest.raises(ShapeError, match=re.escape(message)):
        call()


BAD_OPTIONS = [
    pytest.param(lambda: ref.RNN(IN, HID, nonlinearity="sigmoid"), id="rnn-nonlinearity"),
    pytest.param(lambda: ref.RNNCell(IN, HID, nonlinearity="gelu"), id="rnncell-nonlinearity"),
    pytest.param(lambda: ref.LSTM(IN, HID, proj_size=HID), id="proj-too-big"),
    pytest.param(lambda: ref.LSTM(IN, HID, proj_size=-1), id="proj-negative"),
    pytest.param(lambda: ref.GRU(IN, HID, 2, dropout=1.5), id="dropout-range"),
    pytest.param(lambda: ref.GRU(IN, HID, 2, dropout=True), id="dropout-bool"),
    pytest.param(lambda: ref.RNN(IN, HID, 0), id="num-layers"),
    pytest.param(lambda: ref.GRUCell(IN, 0), id="hidden-size"),
    pytest.param(lambda: ref.LSTM(IN, HID, bias="yes"), id="bias-type"),
    pytest.param(lambda: ref.GRU(IN, HID)(nn.utils.rnn.pack_sequence([torch.randn(3, IN)])), id="packed"),
]


@pytest.mark.parametrize("call", BAD_OPTIONS)
def test_bad_options_raise_unsupported_error(call: Any) -> None:
    with pytest.raises(UnsupportedError):
        call()


def test_dropout_only_between_layers_in_training() -> None:
    ours, theirs = make_pair(ARCH["gru"], num_layers=2, dropout=0.5)
    x = torch.randn(STEPS, BATCH, IN)
    evaluated = ours(x)
    assert_parity(evaluated, theirs(x), torch.float32)
    assert not torch.allclose(ours.train()(x)[0], evaluated[0])
    # dropout=1 zeroes layer 0's output, so the result no longer depends on x;
    # the last layer's output itself is never dropped.
    ours.dropout = 1.0
    a, b = ours(x)[0], ours(torch.randn(STEPS, BATCH, IN))[0]
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert (a != 0).any()


def test_dropout_with_one_layer_warns_like_torch() -> None:
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        ref.LSTM(IN, HID, dropout=0.2)
