"""What a recurrent export is, as data: :class:`RecurrentSpec`, a frozen spec with no torch in it.

It holds the hyper-parameters of a ``torch.nn`` (or ``edge_rnn.reference``)
RNN/LSTM/GRU layer or cell, as recorded in a model's contract (``source``).
The exporter reads it off a module (:func:`edge_rnn.exporters.spec_from_module`);
deployment and diagnostics read it back from a file without torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edge_rnn._numbers import is_int
from edge_rnn.contract import StateSpec
from edge_rnn.errors import ModelFormatError, UnsupportedError

__all__ = ["RecurrentSpec", "GATES_PER_KIND"]

GATES_PER_KIND = {"rnn": 1, "lstm": 4, "gru": 3}


@dataclass(frozen=True)
class RecurrentSpec:
    """Hyper-parameters of one recurrent layer stack or cell.

    ``hidden_out`` is the size of ``h`` (``proj_size`` when it is set);
    ``c`` of an LSTM always has ``hidden_size``.
    """

    kind: str  # "rnn" | "lstm" | "gru"
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    bias: bool = True
    proj_size: int = 0
    nonlinearity: str = "tanh"
    cell: bool = False
    module: str = ""  # the class exported, e.g. "torch.nn.LSTM"

    def __post_init__(self) -> None:
        self._check_kind()
        self._check_sizes()
        self._check_projection()
        self._check_cell()

    def _check_kind(self) -> None:
        """A known kind, and a nonlinearity it takes: tanh, or relu for a vanilla RNN."""
        if self.kind not in GATES_PER_KIND:
            raise UnsupportedError(f"expected arch in {sorted(GATES_PER_KIND)}, got {self.kind!r}")
        allowed = ("tanh", "relu") if self.kind == "rnn" else ("tanh",)
        if self.nonlinearity not in allowed:
            raise UnsupportedError(
                f"{self.kind}: expected nonlinearity 'tanh'{' or relu' if self.kind == 'rnn' else ''}, "
                f"got {self.nonlinearity!r}"
            )

    def _check_sizes(self) -> None:
        for name in ("input_size", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise UnsupportedError(f"expected {name} >= 1, got {getattr(self, name)}")

    def _check_projection(self) -> None:
        """``proj_size`` (0: none) only on an LSTM, and smaller than ``hidden_size``."""
        if self.proj_size and (self.kind != "lstm" or not 0 < self.proj_size < self.hidden_size):
            raise UnsupportedError(
                f"expected proj_size only on an LSTM and 0 < proj_size < hidden_size ({self.hidden_size}), "
                f"got proj_size={self.proj_size} on {self.kind}"
            )

    def _check_cell(self) -> None:
        if self.cell and (self.num_layers != 1 or self.bidirectional or self.batch_first or self.proj_size):
            raise UnsupportedError("a cell has one layer, one direction, no batch_first and no proj_size")

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def hidden_out(self) -> int:
        return self.proj_size or self.hidden_size

    @property
    def gates(self) -> int:
        return GATES_PER_KIND[self.kind]

    @property
    def io_axes(self) -> tuple[int, int | None]:
        """(batch_axis, time_axis) of the input and output: ``(0, None)`` for a cell, which takes one step."""
        if self.cell:
            return 0, None
        return (0, 1) if self.batch_first else (1, 0)

    def state_specs(self, prefix: str = "") -> tuple[StateSpec, ...]:
        """``h`` (and ``c`` for an LSTM) as contract states, shaped as torch shapes them, ``None`` at the batch axis.

        Layers: ``(num_layers * num_directions, batch, hidden)``; cells: ``(batch, hidden)``. ``h`` has
        ``hidden_out`` (``proj_size`` when set), ``c`` always ``hidden_size``. Names are ``{prefix}h0 ->
        {prefix}hn`` and ``{prefix}c0 -> {prefix}cn``.
        """
        if self.cell:
            h, c, axis = (None, self.hidden_out), (None, self.hidden_size), 0
        else:
            n = self.num_layers * self.num_directions
            h, c, axis = (n, None, self.hidden_out), (n, None, self.hidden_size), 1
        out = [StateSpec(f"{prefix}h0", f"{prefix}hn", h, axis)]
        if self.kind == "lstm":
            out.append(StateSpec(f"{prefix}c0", f"{prefix}cn", c, axis))
        return tuple(out)

    def to_source(self) -> dict[str, Any]:
        """The ``source`` entry of the contract."""
        return asdict(self)

    @classmethod
    def from_source(cls, source: Mapping[str, Any]) -> "RecurrentSpec":
        fields = cls.__dataclass_fields__
        unknown = sorted(set(source) - set(fields) - {"seed"})
        if unknown or "kind" not in source:
            raise UnsupportedError(
                f"expected the contract's source to describe an RNN/LSTM/GRU export, got keys {sorted(source)}"
            )
        given = {k: v for k, v in source.items() if k in fields}
        for name, value in given.items():
            want = {"kind": str, "module": str, "nonlinearity": str, "bidirectional": bool, "batch_first": bool,
                    "bias": bool, "cell": bool}.get(name, int)
            if not (is_int(value) if want is int else isinstance(value, want)):
                raise ModelFormatError(
                    f"edge_rnn contract source: expected {name} to be {want.__name__}, got {value!r}")
        return cls(**given)
