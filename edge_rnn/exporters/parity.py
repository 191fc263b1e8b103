"""``verify``: does the ONNX model compute what the PyTorch module computes? The PyTorch side of parity.

The streaming cases, the verdict and the tolerance table are torch-free and
live in :mod:`edge_rnn.harness`. This module supplies the references: the
module itself in float32, and a float64 copy of it
(``copy.deepcopy(module).double()``) as the exact answer. Each output and
state of each case gets two errors against the float64 answer::

    err_onnx  = max |onnxruntime fp32 - PyTorch float64|
    err_torch = max |PyTorch fp32     - PyTorch float64|   (fp32's own rounding, on this model and input)

and passes when ``err_onnx <= max(atol, k * err_torch)``. A module that
cannot run in float64 (an op without a double kernel) is compared with its
float32 result instead, element-wise within ``atol + rtol * |torch|``, and
the report says so.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_rnn.contract import Contract
from edge_rnn.errors import ModelFormatError, UnsupportedError
from edge_rnn.exporters._spec import RecurrentSpec, spec_from_module
from edge_rnn.harness import (
    TOLERANCE,
    Cases,
    InputLayout,
    InputSource,
    ParityReport,
    ParityRow,
    Tolerance,
    compare_streaming,
    data_inputs,
    raise_failures,
    random_inputs,
    random_states,
    read_contract,
    run_case,
)

__all__ = ["verify", "ParityReport", "ParityRow", "TOLERANCE", "check_against_torch", "input_source",
           "layer_layouts", "torch_reference"]

Arrays = dict[str, np.ndarray]
Call = Callable[[Arrays], Arrays]
# What a module without a float64 kernel raises: torch's "not implemented for 'Double'" is a RuntimeError
_NO_DOUBLE = (RuntimeError, TypeError, NotImplementedError, ValueError)


def torch_reference(module: torch.nn.Module, spec: RecurrentSpec) -> Call:
    """PyTorch's answer to one call of the ONNX graph (same feeds, same outputs), in the module's own dtype."""
    dtype = next(module.parameters()).dtype
    lstm = spec.kind == "lstm"

    def run(feeds: Arrays) -> Arrays:
        t = {k: torch.from_numpy(np.asarray(v)).to(dtype) for k, v in feeds.items()}
        hx = (t["h0"], t["c0"]) if lstm else t["h0"]
        with torch.no_grad(), warnings.catch_warnings():
            # torch's notice that oneDNN lacks proj_size says nothing about parity
            warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
            if spec.cell:
                res = module(t["x"], hx)
                h, c = res if lstm else (res, None)
                out = {"y": h, "hn": h}
            else:
                y, state = module(t["x"], hx)
                h, c = state if lstm else (state, None)
                out = {"y": y, "hn": h}
            if lstm:
                out["cn"] = c
        return {k: v.numpy() for k, v in out.items()}

    return run


def input_source(layouts: list[InputLayout], data: Any) -> InputSource:
    """The user's sequences when given (``data``: an array, a list of them, a mapping, or a .npy/.npz path)."""
    if data is None:
        return random_inputs(layouts)
    if isinstance(data, (str, Path)):
        from edge_rnn.harness import load_data

        return data_inputs(layouts, load_data(data), what=f"data {data}")
    return data_inputs(layouts, data)


def layer_layouts(contract: Contract, spec: RecurrentSpec) -> list[InputLayout]:
    """The one data input of a bare layer or cell export."""
    x = contract.inputs[0]
    shape = [1] * (2 if x.time_axis is None else 3)
    shape[-1] = spec.input_size
    return [InputLayout(x.name, tuple(shape), x.batch_axis, x.time_axis)]


def _float64_reference(factory: Callable[[], Call], contract: Contract, inputs: InputSource,
                       states: Callable[[np.random.Generator, int], Arrays]) -> tuple[Call | None, str]:
    """The float64 reference, tried on one small case first; (None, why) when the module cannot run in float64."""
    try:
        ref = factory()
        rng = np.random.default_rng(12345)
        out = run_case(ref, contract, inputs(rng, 1, 1, not contract.is_streaming), states(rng, 1), [1])
    except _NO_DOUBLE as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"{type(e).__name__}: {first}"
    lower = sorted(k for k, v in out.items() if np.asarray(v).dtype != np.float64)
    if lower:
        return None, f"outputs {lower} come back in a lower precision (the module casts inside forward)"
    return ref, ""


def check_against_torch(
    path: Path, contract: Contract, ref32: Call, ref64_factory: Callable[[], Call], inputs: InputSource, *,
    cases: Cases, seed: int, tolerance: Tolerance, opt_levels: tuple[str, ...] = ("disabled", "default"),
) -> ParityReport:
    """The ONNX model against PyTorch: float64 as the reference and fp32 as the noise, or the fp32 fallback."""
    states = random_states(contract)
    ref64, why = _float64_reference(ref64_factory, contract, inputs, states)
    if ref64 is None:
        report = compare_streaming(path, contract, ref32, inputs, states, cases=cases, seed=seed,
                                   tolerance=tolerance, opt_levels=opt_levels, reference_label="PyTorch float32")
        report.notes.append(f"no float64 reference ({why}): compared against PyTorch float32 with an "
                            "element-wise bound instead, a weaker check where states are large")
        return report
    return compare_streaming(path, contract, ref64, inputs, states, noise=ref32, cases=cases, seed=seed,
                             tolerance=tolerance, opt_levels=opt_levels)


def tolerance_for(atol: float | None) -> Tolerance:
    base = TOLERANCE["float32"]
    return base if atol is None else Tolerance(atol=atol, k=base.k, rtol=base.rtol)


def verify(
    module: torch.nn.Module,
    path: str | Path,
    *,
    example_input: Any = None,
    data: Any = None,
    whole_model_options: Mapping[str, Any] | None = None,
    batch_size: int | None = None,
    seq_lens: tuple[int, ...] = (1, 6, 19),
    chunked_len: int = 41,
    long_steps: int = 10_000,
    opt_levels: tuple[str, ...] = ("disabled", "default"),
    seed: int = 0,
    atol: float | None = None,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Check the ONNX model at ``path`` against ``module``: see :mod:`edge_rnn.harness` for the cases.

    Works for anything :func:`edge_rnn.export` accepted: a bare RNN/LSTM/GRU
    layer or cell, or a whole model (then ``example_input`` and
    ``whole_model_options`` are the ones given to ``export``; without them
    the names, axes and states are read from the file's contract).
    ``data`` replaces the random inputs with real sequences: one array
    ``(time, features)``, a list of them, or a ``.npy``/``.npz`` path; a
    sequence shorter than a case is repeated. ``batch_size`` defaults to one
    more than the example's (3 without one). Raises
    :class:`~edge_rnn.errors.ParityError` listing every failing tensor unless
    ``raise_on_failure`` is false; ``atol`` replaces the fp32 floor of the
    tolerance table.

    Example::

        >>> report = edge_rnn.verify(lstm, "lstm.onnx")     # doctest: +SKIP
        >>> print(report.table())                            # doctest: +SKIP
    """
    path = Path(path)
    try:
        spec = spec_from_module(module)
    except UnsupportedError:  # not a bare layer: a whole model
        spec = None
    if spec is None:
        from edge_rnn.exporters._whole import verify_model

        return verify_model(module, path, example_input=example_input, data=data, options=whole_model_options,
                            long_steps=long_steps, seed=seed, atol=atol, raise_on_failure=raise_on_failure,
                            opt_levels=opt_levels)
    contract = _read(path)
    if contract.source.get("kind") == "module":
        raise UnsupportedError(
            f"{path}: holds a whole model ({contract.source.get('module')}); verify it against that model, not "
            f"against a bare {type(module).__name__}")
    if module.training:  # dropout would make PyTorch's side random
        module = copy.deepcopy(module).eval()
    if batch_size is None:
        ex_batch = None
        if example_input is not None and example_input.dim() >= 2:
            ex_batch = example_input.shape[0 if (spec.cell or spec.batch_first) else 1]
        batch_size = 3 if ex_batch is None else ex_batch + 1
    inputs = input_source(layer_layouts(contract, spec), data)
    if not contract.streamable:
        chunked_len = long_steps = 0
    cases = Cases(batch=batch_size, seq_lens=seq_lens, chunked_len=chunked_len, long_steps=long_steps)
    report = check_against_torch(
        path, contract, torch_reference(module, spec), lambda: torch_reference(copy.deepcopy(module).double(), spec),
        inputs, cases=cases, seed=seed, tolerance=tolerance_for(atol), opt_levels=opt_levels,
    )
    if data is not None:
        report.notes.append("inputs: the given data, repeated where shorter than a case")
    if not contract.streamable:
        report.notes.append(
            "not streamable (a bidirectional layer reads the whole sequence): checked full passes only; "
            "run it one whole sequence per call"
        )
    if raise_on_failure:
        raise_failures(report, path)
    return report


def _read(path: Path) -> Contract:
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    return read_contract(path)

