"""The PyTorch references of parity: the module in float32, and a float64 copy of it as the exact answer.

Each output and state of each case gets two errors against the float64 answer::

    err_onnx  = max |onnxruntime fp32 - PyTorch float64|
    err_torch = max |PyTorch fp32     - PyTorch float64|   (fp32's own rounding, on this model and input)

and passes when ``err_onnx <= max(atol, k * err_torch)`` (:mod:`edge_rnn.harness`). A module
that cannot run in float64 (an op without a double kernel) is compared with its float32 result
instead, element-wise within ``atol + rtol * |torch|``, and the report says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_rnn.contract import Contract
from edge_rnn.exporters._spec import RecurrentSpec
from edge_rnn.harness import (
    TOLERANCE,
    Cases,
    InputLayout,
    InputSource,
    ParityReport,
    Tolerance,
    compare_streaming,
    data_inputs,
    load_data,
    random_inputs,
    random_states,
    run_case,
)

__all__ = ["torch_reference", "input_source", "layer_layouts", "check_against_torch", "tolerance_for"]

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
