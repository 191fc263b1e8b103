"""The PyTorch references of parity: the module in float32, and a float64 copy of it as the exact answer.

Each output and state of each case gets two errors against the float64 answer::

    err_onnx  = max |onnxruntime fp32 - PyTorch float64|
    err_torch = max |PyTorch fp32     - PyTorch float64|   (fp32's own rounding, on this model and input)

and passes when ``err_onnx <= max(atol, k * err_torch)`` (:mod:`edge_rnn.harness`). A module
that cannot run in float64 (an op without a double kernel) is compared with its float32 result
instead, element-wise within ``atol + rtol * |torch|``, and the report says so.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_rnn._progress import Progress
from edge_rnn.contract import Contract
from edge_rnn.errors import EdgeRnnError, UnsupportedError, described
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
from edge_rnn.spec import RecurrentSpec

__all__ = ["torch_reference", "input_source", "layer_layouts", "check_against_torch", "tolerance_for",
           "float32_module", "exportable"]

Arrays = dict[str, np.ndarray]
Call = Callable[[Arrays], Arrays]
# What a module without a float64 kernel raises: torch's "not implemented for 'Double'" is a RuntimeError
_NO_DOUBLE = (RuntimeError, TypeError, NotImplementedError, ValueError)


def float32_module(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` itself when its floating parameters and buffers are float32, else a float32 copy.

    The graph is float32 whatever the module's dtype, so fp32 is the precision whose noise matters:
    a float16 module's own rounding would make the bound far too loose.
    """
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return module
    return copy.deepcopy(module).float()


def exportable(module: torch.nn.Module, example_input: Any) -> tuple[torch.nn.Module, Any, list[str]]:
    """The module and example as the float32 CPU graph computes them, and notes on what was changed.

    The graph is float32 on the CPU whatever the module's dtype or device: a
    float16, bfloat16 or float64 module is exported (and checked) as a float32
    copy of itself, a module on another device as a CPU copy. A module on the
    ``meta`` device has no weights to export and is refused.
    """
    tensors = [*module.parameters(), *module.buffers()]
    meta = sorted({n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta})
    if meta:
        raise UnsupportedError(
            f"{type(module).__name__}: {', '.join(meta[:3])}{' ...' if len(meta) > 3 else ''} on the meta device hold "
            "no values to export; materialise the weights first (module.to_empty(device='cpu'), then "
            "load_state_dict)")
    notes = []
    devices = sorted({str(t.device) for t in tensors if t.device.type != "cpu"})
    if devices:
        module = copy.deepcopy(module).cpu()
        notes.append(f"the module is on {', '.join(devices)}: exported and checked as a CPU copy")
    floats = sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()} - {"float32"})
    if floats:
        module = float32_module(module)
        notes.append(f"the module is {'/'.join(floats)}: the graph computes in float32, so it was exported and checked "
                     "as a float32 copy; the module's own outputs differ from it by its own rounding")

    def convert(t: Any) -> Any:
        if isinstance(t, torch.Tensor):
            t = t.cpu()
            return t.float() if t.is_floating_point() else t
        if isinstance(t, (tuple, list)):
            return type(t)(convert(e) for e in t)
        return t

    return module, convert(example_input), notes


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


def _float64_reference(factory: Callable[[], Call], ref32: Call, contract: Contract, inputs: InputSource,
                       states: Callable[[np.random.Generator, int], Arrays]) -> tuple[Call | None, str]:
    """The float64 reference, tried on one small case first; (None, why) when the module cannot run in float64.

    An error that the float32 module raises too is the module's own (it does not fit the file, or
    fails on these inputs): it is raised, never taken for a missing float64 kernel.
    """
    try:
        ref = factory()
    except Exception as e:  # noqa: BLE001 - deepcopy or .double() of an arbitrary module
        return None, f"cannot make a float64 copy of the module ({described(e)})"
    rng = np.random.default_rng(12345)
    probe = (inputs(rng, 1, 1, not contract.is_streaming), states(rng, 1))
    try:
        out = run_case(ref, contract, *probe, [1])
    except _NO_DOUBLE as e:
        try:
            run_case(ref32, contract, *probe, [1])
        except Exception as e32:  # noqa: BLE001 - the module's own error, whatever it is
            raise EdgeRnnError(f"the module fails on the verification inputs ({described(e32)}); is it the "
                               "module that was exported, with the same options?") from None
        return None, described(e)
    lower = sorted(k for k, v in out.items() if np.asarray(v).dtype.kind == "f" and np.asarray(v).dtype != np.float64)
    if lower:
        return None, f"outputs {lower} come back in a lower precision (the module casts inside forward)"
    return ref, ""


def check_against_torch(
    path: Path, contract: Contract, ref32: Call, ref64_factory: Callable[[], Call], inputs: InputSource, *,
    cases: Cases, seed: int, tolerance: Tolerance, opt_levels: tuple[str, ...] = ("disabled", "default"),
    progress: Progress | None = None,
) -> ParityReport:
    """The ONNX model against PyTorch: float64 as the reference and fp32 as the noise, or the fp32 fallback."""
    states = random_states(contract)
    ref64, why = _float64_reference(ref64_factory, ref32, contract, inputs, states)
    if ref64 is None:
        report = compare_streaming(path, contract, ref32, inputs, states, cases=cases, seed=seed,
                                   tolerance=tolerance, opt_levels=opt_levels, reference_label="PyTorch float32",
                                   progress=progress)
        report.notes.append(f"no float64 reference ({why}): compared against PyTorch float32 with an "
                            "element-wise bound instead, a weaker check where states are large")
        return report
    return compare_streaming(path, contract, ref64, inputs, states, noise=ref32, cases=cases, seed=seed,
                             tolerance=tolerance, opt_levels=opt_levels, progress=progress)


def tolerance_for(atol: float | None) -> Tolerance:
    base = TOLERANCE["float32"]
    return base if atol is None else Tolerance(atol=atol, k=base.k, rtol=base.rtol)
