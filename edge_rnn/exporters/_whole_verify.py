"""Verify a whole model: the written file against the module, in float64 and float32 (``edge_rnn.verify``)."""

from __future__ import annotations

import copy
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch

from edge_rnn.contract import Contract, StateSpec
from edge_rnn.errors import EdgeRnnError, ModelFormatError, ShapeError, UnsupportedError
from edge_rnn.exporters._lift import Lifter
from edge_rnn.exporters._references import check_against_torch, float32_module, input_source, tolerance_for
from edge_rnn.exporters._whole_resolve import Resolved, examples_of, reference, resolve
from edge_rnn.exporters.options import StreamingIO
from edge_rnn.harness import Cases, InputLayout, ParityReport, open_sessions, raise_failures, read_contract

__all__ = ["verify_model", "verify_resolved", "layouts"]


def layouts(r: Resolved) -> list[InputLayout]:
    """The data inputs for the checks; an integer input without a known range draws from its example's values."""
    out = []
    for t in r.contract.inputs:
        ex = r.feeds0[t.name]
        values = t.values
        if values is None and ex.dtype.kind in "iu":
            values = (int(ex.min()), int(ex.max())) if ex.size else (0, 0)
        out.append(InputLayout(t.name, ex.shape, t.batch_axis, t.time_axis, str(ex.dtype), values))
    return out


def _integer_notes(r: Resolved, data: Any) -> list[str]:
    notes = []
    for t, lay in zip(r.contract.inputs, layouts(r)):
        if lay.values is None:
            continue
        if t.values is not None:
            notes.append(f"input {t.name!r}: {t.dtype} in [{t.values[0]}, {t.values[1]}], the rows of the embedding "
                         "it indexes; the runtime refuses values outside that range")
        elif data is None:
            notes.append(f"input {t.name!r}: {t.dtype} with no embedding table to bound it: random values drawn from "
                         f"the example's range [{lay.values[0]}, {lay.values[1]}]; pass data= with real values for a "
                         "stronger check")
    return notes


def verify_resolved(model: torch.nn.Module, r: Resolved, path: Path, *, data: Any, long_steps: int, seed: int,
                     atol: float | None, opt_levels: tuple[str, ...] = ("disabled", "default")) -> ParityReport:
    """The written file against the model in float64 (the reference) and float32 (the noise)."""
    contract = r.contract
    first = contract.inputs[0]
    ex = r.feeds0[first.name]
    ex_t = ex.shape[first.time_axis] if first.time_axis is not None else 1
    streaming = contract.streamable
    cases = Cases(batch=int(ex.shape[first.batch_axis]) + 1,
                  seq_lens=tuple(t for t in (1, 7, 23) if t != ex_t) if contract.is_streaming else (1,),
                  chunked_len=41 if streaming else 0, long_steps=long_steps if streaming else 0)
    inputs = input_source(layouts(r), data)
    with ExitStack() as stack:
        def twin(module: torch.nn.Module) -> Lifter:
            return stack.enter_context(Lifter(module))

        model32 = float32_module(model)
        ref32 = reference(r.lifter if model32 is model else twin(model32), r, torch.float32)
        report = check_against_torch(path, contract, ref32,
                                     lambda: reference(twin(copy.deepcopy(model).double()), r, torch.float64),
                                     inputs, cases=cases, seed=seed, tolerance=tolerance_for(atol),
                                     opt_levels=opt_levels)
    if data is not None:
        report.notes.append("inputs: the given data, repeated where shorter than a case")
    report.notes.extend(_integer_notes(r, data))
    if not streaming:
        report.notes.append("exported with streaming=False: checked whole sequences per call only")
    return report


def verify_model(
    model: torch.nn.Module, path: str | Path, *, example_input: Any = None, data: Any = None,
    io: StreamingIO | None = None, long_steps: int = 10_000, seed: int = 0, atol: float | None = None,
    raise_on_failure: bool = True, opt_levels: tuple[str, ...] = ("disabled", "default"),
) -> ParityReport:
    """:func:`edge_rnn.verify` for a whole model: what export checked, again, on the file at ``path``.

    Names, axes and states default to those in the file's contract, so the
    ``io`` given to export is needed only where the file cannot tell.
    """
    path = Path(path)
    opts = (io or StreamingIO()).given()
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    session = open_sessions(path, ("disabled",))["disabled"]
    contract = read_contract(path, session)
    if contract.source.get("kind") != "module":
        raise UnsupportedError(
            f"{path}: holds a bare {contract.source.get('module', 'recurrent layer')}, not a whole model; verify it "
            f"against that layer, not against {type(model).__name__}")
    derived, examples = _options_from_file(contract, session, example_input)
    with Lifter(model) as lifter:
        try:
            r = resolve(lifter, examples, **StreamingIO(**_merge(derived, opts)).as_kwargs())
        except (ShapeError, UnsupportedError) as e:  # the module does not take what the file says it takes
            raise ModelFormatError(
                f"{path}: the module fails on inputs shaped as the file's ({e}); is it the module that was "
                "exported? Pass example_input and io as given to export") from None
        except EdgeRnnError:
            raise
        except Exception as e:  # noqa: BLE001 - the module's own error on inputs shaped from the file
            raise ModelFormatError(
                f"{path}: the module fails on inputs shaped as the file's ({type(e).__name__}: {e}); is it the "
                "module that was exported? Pass example_input and io as given to export") from None
        _same_interface(r.contract, contract, path)
        report = verify_resolved(model, r, path, data=data, long_steps=long_steps, seed=seed, atol=atol,
                                  opt_levels=opt_levels)
    if raise_on_failure:
        raise_failures(report, path)
    return report


def _merge(derived: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """The options read from the file, overridden by those given; file entries about names no longer there dropped."""
    out = {**derived, **given}
    ins, outs = set(out["input_names"]), set(out["output_names"])
    for key, names in (("input_axes", ins), ("output_axes", outs), ("state_batch_axes", ins)):
        if key not in given:
            out[key] = {k: v for k, v in out[key].items() if k in names}
    if "states" not in given:
        out["states"] = {k: v for k, v in out["states"].items() if k in ins and v in outs}
    return out


def _is_lifted(state: StateSpec, contract: Contract) -> bool:
    path, _, leaf = state.input.rpartition(".")
    return path in contract.source.get("lifted", []) and leaf in ("h0", "c0", "ctx0")


def _options_from_file(contract: Contract, session: Any, example_input: Any
                       ) -> tuple[dict[str, Any], tuple[torch.Tensor, ...]]:
    """The whole-model options the file's contract implies, and example inputs (zeros) shaped from the graph."""
    lifted_in = {s.input for s in contract.states if _is_lifted(s, contract)}
    lifted_out = {s.output for s in contract.states if _is_lifted(s, contract)}
    explicit = [s for s in contract.states if s.input not in lifted_in]
    graph_inputs = [i for i in session.get_inputs() if i.name not in lifted_in]
    derived: dict[str, Any] = {
        "input_names": [i.name for i in graph_inputs],
        "output_names": [o.name for o in session.get_outputs() if o.name not in lifted_out],
        "input_axes": {t.name: (t.batch_axis, t.time_axis) for t in contract.inputs},
        "output_axes": {t.name: (t.batch_axis, t.time_axis) for t in contract.outputs},
        "states": {s.input: s.output for s in explicit},
        "state_batch_axes": {s.input: s.batch_axis for s in explicit},
        "streaming": contract.streamable,
    }
    if example_input is not None:
        return derived, examples_of(example_input)
    axes = {t.name: t for t in contract.inputs}
    examples = []
    for i in graph_inputs:
        state = next((s for s in explicit if s.input == i.name), None)
        if state is not None:
            examples.append(torch.zeros(state.concrete_shape(1), dtype=getattr(torch, state.dtype)))
            continue
        t = axes.get(i.name)
        shape = [d if isinstance(d, int) else 1 if t and k == t.batch_axis else 8 if t and k == t.time_axis else None
                 for k, d in enumerate(i.shape)]
        if t is None or None in shape:
            raise UnsupportedError(f"input {i.name!r} of shape {i.shape}: cannot build an example from the file; "
                                   "pass example_input as given to export")
        examples.append(torch.zeros(shape, dtype=getattr(torch, t.dtype or "float32")))
    return derived, tuple(examples)


def _same_interface(ours: Contract, theirs: Contract, path: Path) -> None:
    """The module, resolved with these options, must stream exactly as the file says."""
    for what in ("inputs", "outputs", "states", "streamable"):
        a, b = getattr(ours, what), getattr(theirs, what)
        if a != b:
            raise ModelFormatError(
                f"{path}: the module resolves to other {what} than the file's contract: expected {b}, got {a}; "
                "pass the io given to export, or the module that was exported")
