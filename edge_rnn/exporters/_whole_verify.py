"""Verify a whole model: the written file against the module, in float64 and float32 (``edge_rnn.verify``)."""

from __future__ import annotations

import copy
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from edge_rnn.contract import Contract, StateSpec, TensorSpec
from edge_rnn.errors import EdgeRnnError, ModelFormatError, ShapeError, UnsupportedError
from edge_rnn.exporters._checkpoint import weights_digest
from edge_rnn.exporters._lift import Lifter
from edge_rnn.exporters._references import check_against_torch, float32_module, input_source, tolerance_for
from edge_rnn.exporters._whole_resolve import Resolved, examples_of, reference, resolve
from edge_rnn.exporters.options import ParityOptions, StreamingIO
from edge_rnn.harness import Cases, InputLayout, ParityReport, open_sessions, read_contract

__all__ = ["verify_model", "verify_resolved", "layouts", "other_weights"]


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


def verify_resolved(model: torch.nn.Module, r: Resolved, path: Path, *, data: Any, checks: ParityOptions
                    ) -> ParityReport:
    """The written file against the model in float64 (the reference) and float32 (the noise); never raised.

    The cases follow the example (one more stream, other lengths than its own); ``checks`` gives the long
    stream's length, the seed, the tolerance floor and the onnxruntime levels.
    """
    contract = r.contract
    cases = _model_cases(r, checks)
    inputs = input_source(layouts(r), data)
    with ExitStack() as stack:
        def twin(module: torch.nn.Module) -> Lifter:
            return stack.enter_context(Lifter(module))

        model32 = float32_module(model)
        ref32 = reference(r.lifter if model32 is model else twin(model32), r, torch.float32)
        report = check_against_torch(path, contract, ref32,
                                     lambda: reference(twin(copy.deepcopy(model).double()), r, torch.float64),
                                     inputs, cases=cases, seed=checks.seed,
                                     tolerance=tolerance_for(checks.atol), opt_levels=checks.opt_levels,
                                     progress=checks.progress)
    if data is not None:
        report.notes.append("inputs: the given data, repeated where shorter than a case")
    report.notes.extend(_integer_notes(r, data))
    if not contract.streamable:
        report.notes.append("exported with streaming=False: checked whole sequences per call only")
    return report


def _model_cases(r: Resolved, checks: ParityOptions) -> Cases:
    """A whole model's cases: those ``checks`` gives, else one more stream than its example and lengths other than
    the example's; full passes only where it is not streamable."""
    contract = r.contract
    first = contract.inputs[0]
    ex = r.feeds0[first.name]
    ex_t = ex.shape[first.time_axis] if first.time_axis is not None else 1
    streaming = contract.streamable
    seq_lens = tuple(t for t in (1, 7, 23) if t != ex_t) if contract.is_streaming else (1,)
    chunked_len = checks.chunked_len if checks.chunked_len is not None else 41
    return Cases(batch=checks.batch_size if checks.batch_size is not None else int(ex.shape[first.batch_axis]) + 1,
                 seq_lens=checks.seq_lens if checks.seq_lens is not None else seq_lens,
                 chunked_len=chunked_len if streaming else 0, long_steps=checks.long_steps if streaming else 0)


def verify_model(model: torch.nn.Module, path: str | Path, *, example_input: Any, io: StreamingIO | None, data: Any,
                 checks: ParityOptions) -> ParityReport:
    """:func:`edge_rnn.verify` for a whole model: what export checked, again, on the file at ``path``; not raised.

    Names, axes and states default to those in the file's contract, so the
    ``io`` given to export is needed only where the file cannot tell.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such file")
    session = open_sessions(path, ("disabled",))["disabled"]
    contract = read_contract(path, session)
    if contract.source.get("kind") != "module":
        raise UnsupportedError(
            f"{path}: holds a bare {contract.source.get('module', 'recurrent layer')}, not a whole model; verify it "
            f"against that layer, not against {type(model).__name__}")
    examples = examples_of(example_input) if example_input is not None else _examples_from_file(contract, session)
    with Lifter(model) as lifter:
        r = _resolve_as_file(lifter, examples, _merged(_io_from_file(contract, session), io or StreamingIO()), path)
        _same_interface(r.contract, contract, path)
        report = verify_resolved(model, r, path, data=data, checks=checks)
    if other_weights(model, contract):
        report.notes.append("the module holds other weights than the file was exported from (its contract records "
                            "their digest): load the state_dict it was exported from")
    return report


def other_weights(model: torch.nn.Module, contract: Contract) -> bool:
    """Whether ``model``'s weights differ from those the file was exported from; False for a file that does not
    record them (written before the digest was)."""
    recorded = contract.source.get("weights")
    return isinstance(recorded, str) and recorded != weights_digest(model)


def _resolve_as_file(lifter: Lifter, examples: tuple[torch.Tensor, ...], io: StreamingIO, path: Path) -> Resolved:
    """:func:`resolve` on inputs shaped from the file: the module's own failure there says it is not the one."""
    try:
        return resolve(lifter, examples, io)
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


def _merged(from_file: StreamingIO, given: StreamingIO) -> StreamingIO:
    """The options read from the file, overridden by those given; file entries about names no longer there dropped."""
    out = given.over(from_file)
    ins, outs, keys = set(out.input_names), set(out.output_names), given.given()
    kept = {key: {k: v for k, v in getattr(out, key).items() if k in names}
            for key, names in (("input_axes", ins), ("output_axes", outs), ("state_batch_axes", ins))
            if key not in keys}
    if "states" not in keys:
        kept["states"] = {k: v for k, v in out.states.items() if k in ins and v in outs}
    return replace(out, **kept)


def _is_lifted(state: StateSpec, contract: Contract) -> bool:
    path, _, leaf = state.input.rpartition(".")
    return path in contract.source.get("lifted", []) and leaf in ("h0", "c0", "ctx0")


def _declared_states(contract: Contract) -> list[StateSpec]:
    """The states the model declares itself (``states=``), not those lifted out of its recurrent submodules."""
    return [s for s in contract.states if not _is_lifted(s, contract)]


def _io_from_file(contract: Contract, session: Any) -> StreamingIO:
    """The whole-model options the file's contract implies."""
    lifted = [s for s in contract.states if _is_lifted(s, contract)]
    lifted_in, lifted_out = {s.input for s in lifted}, {s.output for s in lifted}
    declared = _declared_states(contract)
    return StreamingIO(
        input_names=tuple(i.name for i in session.get_inputs() if i.name not in lifted_in),
        output_names=tuple(o.name for o in session.get_outputs() if o.name not in lifted_out),
        input_axes={t.name: (t.batch_axis, t.time_axis) for t in contract.inputs},
        output_axes={t.name: (t.batch_axis, t.time_axis) for t in contract.outputs},
        states={s.input: s.output for s in declared},
        state_batch_axes={s.input: s.batch_axis for s in declared},
        streaming=contract.streamable,
    )


def _examples_from_file(contract: Contract, session: Any) -> tuple[torch.Tensor, ...]:
    """Example inputs (zeros) shaped from the graph: one stream, 8 frames, declared states at their shapes."""
    declared = {s.input: s for s in _declared_states(contract)}
    lifted_in = {s.input for s in contract.states if s.input not in declared}
    axes = {t.name: t for t in contract.inputs}
    examples = []
    for i in session.get_inputs():
        if i.name in lifted_in:
            continue
        state = declared.get(i.name)
        if state is not None:
            examples.append(torch.zeros(state.concrete_shape(1), dtype=getattr(torch, state.dtype)))
        else:
            examples.append(_example_of_input(i, axes.get(i.name)))
    return tuple(examples)


def _example_of_input(i: Any, t: TensorSpec | None) -> torch.Tensor:
    """Zeros in the shape of graph input ``i``: one stream along its batch axis, 8 frames along its time axis."""
    def size(k: int, d: Any) -> int | None:
        if isinstance(d, int):
            return d
        if t is not None and k == t.batch_axis:
            return 1
        return 8 if t is not None and k == t.time_axis else None

    shape = [size(k, d) for k, d in enumerate(i.shape)]
    if t is None or None in shape:
        raise UnsupportedError(f"input {i.name!r} of shape {i.shape}: cannot build an example from the file; "
                               "pass example_input as given to export")
    return torch.zeros(shape, dtype=getattr(torch, t.dtype or "float32"))


def _same_interface(ours: Contract, theirs: Contract, path: Path) -> None:
    """The module, resolved with these options, must stream exactly as the file says."""
    for what in ("inputs", "outputs", "states", "streamable"):
        a, b = getattr(ours, what), getattr(theirs, what)
        if a != b:
            raise ModelFormatError(
                f"{path}: the module resolves to other {what} than the file's contract: expected {b}, got {a}; "
                "pass the io given to export, or the module that was exported")
