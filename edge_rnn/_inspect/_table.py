"""The rows inspect prints for any model file: its inputs and outputs in aligned columns, its contract's states (or
the state pairs the runtime detects without one), and its operators."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from edge_rnn.contract import Contract
from edge_rnn.errors import ModelFormatError


class _Value(NamedTuple):
    """A graph input or output as inspect prints it: its dims as text, None where the file gives no shape."""

    name: str
    dtype: str
    dims: tuple[str, ...] | None

    def rest(self) -> str:
        return f"{self.dtype:<8} " + ("?" if self.dims is None else "(" + ", ".join(self.dims) + ")")



_NAME_BOUND = 40  # columns align to the longest name up to this; a longer one is printed whole on its own line


def _shown(text: str) -> int:
    """How many terminal columns ``text`` takes: 2 for a wide or full-width character (CJK), 0 for a combining
    mark, 1 for the rest."""
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    """``text`` padded with spaces to ``width`` terminal columns (by display width, not character count)."""
    return text + " " * max(0, width - _shown(text))


def _width(names: list[str], least: int = 8) -> int:
    """The name column's width: the widest name (in terminal columns) within the bound, at least ``least``."""
    return max([least, *(_shown(n) for n in names if _shown(n) <= _NAME_BOUND)])


def _row(name: str, width: int, rest: str) -> str:
    """``  name  rest`` with ``rest`` at column ``width``; a name wider than that on a line of its own above."""
    if _shown(name) > width:
        return f"  {name}\n  {'':<{width}} {rest}"
    return f"  {_pad(name, width)} {rest}"


def _pair(name: str, width: int, output: str, out_width: int, rest: str) -> str:
    """A state row, ``  input  -> output  rest``, with ``rest`` (dtype, shape) at the same column on every row: an
    output wider than ``out_width`` ends its line and ``rest`` goes on the next, at that column."""
    if _shown(output) <= out_width:
        return _row(name, width, f"-> {_pad(output, out_width)} {rest}")
    return _row(name, width, f"-> {output}") + f"\n  {'':<{width}}    {'':<{out_width}} {rest}"


def _value_lines(inputs: list[_Value], outputs: list[_Value]) -> list[str]:
    """The inputs and outputs, their columns aligned across both."""
    from edge_rnn.runtime._bundle import printable

    width = _width([printable(v.name, 400) for v in inputs + outputs], 16)
    return ["inputs:", *(_row(printable(v.name, 400), width, v.rest()) for v in inputs),
            "outputs:", *(_row(printable(v.name, 400), width, v.rest()) for v in outputs)]


def _contract_lines(contract: Contract | None, inputs: list[_Value], outputs: list[_Value]) -> list[str]:
    """The contract's lines, its strings made safe to print (a file's: an escape sequence is shown, not run);
    without one, the state pairs the runtime detects by name in ``inputs`` and ``outputs``."""
    from edge_rnn.runtime._bundle import printable

    if contract is None:
        return _detected_lines(inputs, outputs)
    lines = [f"states:    (edge_rnn contract, format {contract.format}"
             f"{'' if contract.streamable else ', NOT streamable: one whole sequence per call'})",
             *_state_rows(contract)]
    for t in contract.inputs:
        time = "none (one step per call)" if t.time_axis is None else t.time_axis
        within = "" if t.values is None else f", values in [{t.values[0]}, {t.values[1]}]"
        lines.append(f"  input {printable(t.name, 80)}: batch axis {t.batch_axis}, time axis {time}{within}")
    if contract.source:
        lines.append("source:    " + printable(", ".join(f"{k}={v}" for k, v in contract.source.items()), 400))
    return lines


def _state_rows(contract: Contract) -> list[str]:
    """One row per state of a contract: input -> output, dtype, shape, and where a new stream starts."""
    from edge_rnn.runtime._bundle import printable

    width = _width([printable(s.input, 400) for s in contract.states])
    out_width = _width([printable(s.output, 400) for s in contract.states])
    rows = []
    for s in contract.states:
        shape = ", ".join("batch" if d is None else str(d) for d in s.shape)
        start = "" if s.initial is None else "  starts from its own initial value, not zeros"
        rows.append(_pair(printable(s.input, 400), width, printable(s.output, 400), out_width,
                          f"{s.dtype:<8} ({shape}){start}"))
    return rows


def _detected_lines(inputs: list[_Value], outputs: list[_Value]) -> list[str]:
    """For a file without a contract: the state pairs the runtime finds by name (its own rules), or why it needs
    a state_map."""
    from edge_rnn.runtime._bundle import printable
    from edge_rnn.runtime._ports import detect_state_pairs

    head = "states:    no edge_rnn contract in the metadata (not written by edge-rnn); "
    shapes_out = {v.name: v.dims or () for v in outputs}
    try:
        pairs = detect_state_pairs({v.name: v.dims or () for v in inputs}, shapes_out)
    except ModelFormatError as e:  # none found, or several candidates: the runtime refuses it without state_map
        why = "no state pairs found by name" if str(e).startswith("no edge_rnn contract") else str(e)
        return [head + printable(f"the runtime needs a state_map to stream it ({why})", 400)]
    info = {v.name: v for v in outputs}
    width = _width([printable(k, 400) for k in pairs])
    out_width = _width([printable(v, 400) for v in pairs.values()])
    return [head + "the runtime pairs them by name (pass state_map to override):",
            *(_pair(printable(k, 400), width, printable(v, 400), out_width, info[v].rest()) for k, v in pairs.items())]


def _operator_line(ops: Counter) -> str:
    return "operators: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
