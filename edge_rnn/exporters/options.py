"""The typed options of export and verify: how a whole model streams (:class:`StreamingIO`), how to export
(:class:`ExportOptions`) and what the parity check runs (:class:`ParityOptions`).

``StreamingIO`` replaces the ``whole_model_options`` dict, which is still
accepted for one release with a ``DeprecationWarning``. An option that does
not apply is an error, never silently ignored.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from edge_rnn._numbers import is_int, is_number
from edge_rnn._progress import Progress
from edge_rnn.errors import UnsupportedError

__all__ = ["StreamingIO", "ExportOptions", "ParityOptions", "io_from_legacy"]

Axes = Mapping[str, tuple[int, int | None]]


@dataclass(frozen=True)
class StreamingIO:
    """How a whole model's inputs, outputs and states stream (``docs/whole-models.md``).

    ``input_names``/``output_names`` name the model's inputs and (flattened)
    outputs; ``input_axes``/``output_axes`` map a name to ``(batch_axis,
    time_axis)`` (``time_axis`` None: one value per call); ``states`` maps the
    model's own state inputs to the outputs that feed them, and
    ``state_batch_axes`` gives a declared state's batch axis where it cannot
    be inferred; ``streaming=False`` exports a model for whole sequences per
    call. Whatever is left out is found from the model and its example.

    Example::

        >>> io = StreamingIO(input_names=("x", "state"), output_names=("prob", "new_state"),
        ...                  states={"state": "new_state"})
    """

    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    input_axes: Axes = field(default_factory=dict)
    output_axes: Axes = field(default_factory=dict)
    states: Mapping[str, str] = field(default_factory=dict)
    state_batch_axes: Mapping[str, int] = field(default_factory=dict)
    streaming: bool = True

    def __post_init__(self) -> None:
        for name in ("input_names", "output_names"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str) or not isinstance(value, Sequence) or not all(
                        isinstance(v, str) for v in value):
                    raise UnsupportedError(f"StreamingIO.{name}: expected a sequence of names, got {value!r}")
                object.__setattr__(self, name, tuple(value))
        for name in ("input_axes", "output_axes", "states", "state_batch_axes"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise UnsupportedError(f"StreamingIO.{name}: expected a mapping by name, got {value!r}")
            object.__setattr__(self, name, dict(value))
        if not isinstance(self.streaming, bool):
            raise UnsupportedError(f"StreamingIO.streaming: expected True or False, got {self.streaming!r}")

    def given(self) -> dict[str, Any]:
        """The fields set to something other than their default."""
        default = StreamingIO()
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    def over(self, base: StreamingIO) -> StreamingIO:
        """``base`` with the fields given here (those not at their default) put over it."""
        return replace(base, **self.given())


@dataclass(frozen=True)
class ParityOptions:
    """What a parity check runs: the keywords of :func:`edge_rnn.verify` that shape its cases and verdict.

    ``batch_size``, ``seq_lens`` and ``chunked_len`` set the cases of a bare
    layer and of a whole model alike; left at None, each takes its kind's
    default: a bare layer's batch 3, lengths (1, 6, 19) and 41; a whole
    model's follow its example (``docs/parity.md``).
    Checked where they are used (:class:`edge_rnn.harness.Cases`,
    :func:`edge_rnn.harness.open_sessions`), as :func:`edge_rnn.verify` always did.
    """

    batch_size: int | None = None
    seq_lens: tuple[int, ...] | None = None
    chunked_len: int | None = None
    long_steps: int = 10_000
    opt_levels: tuple[str, ...] = ("disabled", "default")
    seed: int = 0
    atol: float | None = None
    progress: Progress | None = field(default=None, compare=False, repr=False)  # the streams' steps, as they run


@dataclass(frozen=True)
class ExportOptions:
    """How to export and what to check: the keywords of :func:`edge_rnn.export`, validated once."""

    decomposed: bool = False
    check: bool = True
    verify_parity: bool = True
    long_steps: int = 10_000
    seed: int = 0
    atol: float | None = None
    raise_on_failure: bool = True
    extra_source: Mapping[str, Any] = field(default_factory=dict)
    keep_failed: bool = False  # a model that fails parity is kept as <name>.failed.onnx, not deleted
    progress: Progress | None = field(default=None, compare=False, repr=False)  # the parity check's, as it runs

    def __post_init__(self) -> None:
        for name in ("decomposed", "check", "verify_parity", "raise_on_failure", "keep_failed"):
            if not isinstance(getattr(self, name), bool):
                raise UnsupportedError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        if not is_int(self.long_steps, least=0):
            raise UnsupportedError(f"long_steps: expected an int >= 0, got {self.long_steps!r}")
        if self.atol is not None and not (is_number(self.atol) and self.atol > 0):
            raise UnsupportedError(f"atol: expected a positive number, got {self.atol!r}")
        if not is_int(self.seed):
            raise UnsupportedError(f"seed: expected an int, got {self.seed!r}")
        object.__setattr__(self, "extra_source", dict(self.extra_source or {}))

    @property
    def parity(self) -> ParityOptions:
        """The check an export runs on what it wrote: verify's defaults, with this export's steps, seed and atol."""
        return ParityOptions(long_steps=self.long_steps, seed=self.seed, atol=self.atol, progress=self.progress)


def io_from_legacy(io: StreamingIO | None, whole_model_options: Mapping[str, Any] | None,
                   atol: float | None) -> tuple[StreamingIO | None, float | None]:
    """``whole_model_options`` (deprecated) as a StreamingIO, and its ``atol`` key as the atol keyword."""
    if whole_model_options is None:
        return io, atol
    warnings.warn("whole_model_options is deprecated: pass io=StreamingIO(...) (and atol= for its 'atol' key)",
                  DeprecationWarning, stacklevel=3)
    if io is not None:
        raise UnsupportedError("give io= or whole_model_options (deprecated), not both")
    opts = dict(whole_model_options)
    keys = {f.name for f in fields(StreamingIO)} | {"atol"}
    unknown = sorted(set(opts) - keys)
    if unknown:
        raise UnsupportedError(f"whole_model_options {unknown}: expected keys among {sorted(keys)}")
    legacy_atol = opts.pop("atol", None)
    opts = {k: v for k, v in opts.items() if v is not None}  # the dict took None for "not given"
    if "streaming" in opts:
        opts["streaming"] = bool(opts["streaming"])
    return StreamingIO(**opts), atol if atol is not None else legacy_atol
