"""State lifting: any nn.Module with recurrent layers, cells or context buffers -> explicit state in and out.

Each recurrent submodule called without a state (``self.lstm(x)``) gets its
state lifted to a graph input/output pair named after the submodule's path
(``encoder.lstm.h0`` -> ``encoder.lstm.hn``); each :class:`ContextBuffer`
likewise (``front.context.ctx0`` -> ``front.context.ctxn``). A submodule
called with a state (``self.cell(x, state)``) keeps the model's own wiring.

How: in a deep copy of the model, every recurrent submodule's ``forward`` is
replaced by one that calls the custom op ``edge_rnn::recurrent`` (which runs
the original module). ``torch.onnx`` (TorchScript exporter) traces the
non-recurrent parts and writes each recurrent call as one placeholder node;
:func:`splice_recurrent` then replaces every placeholder with edge-rnn's own
native or decomposed recurrent graph, whose time axis is dynamic.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from edge_rnn.errors import UnsupportedError
from edge_rnn.exporters._spec import RecurrentSpec, recurrent_spec
from edge_rnn.nn import ContextBuffer

__all__ = ["LiftedState", "Lifter", "current_lift"]

_LOCAL = threading.local()
# key -> (original forward, spec): what the placeholder op runs and what replaces it in ONNX
_REGISTRY: dict[int, tuple[Callable[..., Any], RecurrentSpec, torch.nn.Module]] = {}


def current_lift() -> "_Run | None":
    return getattr(_LOCAL, "run", None)


@contextmanager
def _active(run: "_Run") -> Iterator[None]:
    prev = current_lift()
    _LOCAL.run = run
    try:
        yield
    finally:
        _LOCAL.run = prev


@torch.library.custom_op("edge_rnn::recurrent", mutates_args=())
def _recurrent(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, key: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                         torch.Tensor]:
    forward, spec, _ = _REGISTRY[key]
    hx = (h0, c0) if spec.kind == "lstm" else h0
    with torch.no_grad():
        out = forward(x, hx)
    if spec.cell:
        h, c = out if spec.kind == "lstm" else (out, out)
        y = h
    else:
        y, st = out
        h, c = st if spec.kind == "lstm" else (st, st)
    return y.clone(), h.clone(), c.clone()


def _symbolic(g: Any, x: Any, h0: Any, c0: Any, key: Any) -> Any:
    from torch.onnx import symbolic_helper

    k = symbolic_helper._maybe_get_const(key, "i")
    _, spec, _ = _REGISTRY[int(k)]
    outs = g.op("edge_rnn::Recurrent", x, h0, c0, key_i=int(k), outputs=3)
    width = spec.num_directions * spec.hidden_out
    outs[0].setType(x.type().with_sizes([None, width] if spec.cell else [None, None, width]))
    outs[1].setType(h0.type())
    outs[2].setType(c0.type())
    return outs


torch.onnx.register_custom_op_symbolic("edge_rnn::recurrent", _symbolic, 9)


@dataclass(frozen=True)
class LiftedState:
    """One state pair lifted out of a submodule."""

    path: str
    input: str
    output: str
    shape: tuple[int, ...]  # example shape
    batch_axis: int


class _Run:
    """One forward of the patched model: where lifted states come from and go to."""

    def __init__(self, lifter: "Lifter", states: dict[str, torch.Tensor] | None):
        self.lifter = lifter
        self.states = states  # None: discovering (zeros, recorded)
        self.new_states: dict[str, torch.Tensor] = {}
        self.found: list[LiftedState] = []
        self.calls: dict[str, int] = {}  # calls without a state, per path
        self.every_call: dict[str, int] = {}  # all calls, per path

    def _take(self, path: str, names: list[tuple[str, str]], zeros: list[torch.Tensor], batch_axis: int
              ) -> list[torch.Tensor]:
        self.calls[path] = self.calls.get(path, 0) + 1
        if self.calls[path] > 1:
            raise UnsupportedError(
                f"{path}: called {self.calls[path]} times in one forward without a state; lifting needs one call per "
                "forward (pass the state explicitly and declare it with states=)"
            )
        if self.states is None:
            for (i, o), z in zip(names, zeros):
                self.found.append(LiftedState(path, i, o, tuple(z.shape), batch_axis))
            return zeros
        return [self.states[i] for i, _ in names]

    def recurrent(self, path: str, key: int, spec: RecurrentSpec, x: torch.Tensor, hx: Any) -> Any:
        """One call of the recurrent submodule at ``path``: its state lifted when called without one."""
        lstm = spec.kind == "lstm"
        self.every_call[path] = self.every_call.get(path, 0) + 1
        if x.dim() != (2 if spec.cell else 3):
            raise UnsupportedError(f"{path}: expected batched input of rank {2 if spec.cell else 3}, got shape "
                                   f"{tuple(x.shape)} (unbatched input cannot be streamed)")
        lifted = hx is None
        states = self._lifted_states(path, spec, x) if lifted else (list(hx) if lstm else [hx])
        h0 = states[0]
        c0 = states[1] if lstm else h0
        y, h, c = torch.ops.edge_rnn.recurrent(x, h0, c0, key)
        if lifted:  # hn (and cn): the lifted state's outputs
            self.new_states.update(zip((s.output for s in spec.state_specs(f"{path}.")), (h, c)))
        state = (h, c) if lstm else h
        return state if spec.cell else (y, state)  # as torch's module returns it

    def _lifted_states(self, path: str, spec: RecurrentSpec, x: torch.Tensor) -> list[torch.Tensor]:
        """The state of a call without one: zeros while discovering (and recorded), else the fed state."""
        batch = x.shape[spec.io_axes[0]]
        specs = spec.state_specs(f"{path}.")
        names = [(s.input, s.output) for s in specs]
        zeros = [x.new_zeros(s.concrete_shape(batch)) for s in specs]
        return self._take(path, names, zeros, specs[0].batch_axis)

    def context(self, buf: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        path = self.lifter.paths[id(buf)]
        (ctx,) = self._take(path, [(f"{path}.ctx0", f"{path}.ctxn")], [buf.zeros(x)], 0)
        out = torch.cat([ctx, x], dim=buf.time_dim)
        index = [slice(None)] * out.dim()
        index[buf.time_dim] = slice(-buf.length, None)
        self.new_states[f"{path}.ctxn"] = out[tuple(index)]
        return out


class Lifter:
    """A patched deep copy of ``model`` whose recurrent and context state can be fed and read."""

    def __init__(self, model: torch.nn.Module):
        self.model = copy_eval(model)
        self.paths: dict[int, str] = {}
        self.recurrent: dict[str, RecurrentSpec] = {}
        self.keys: list[int] = []
        self.calls_per_forward: dict[str, int] = {}  # of the last discover()
        skip: list[str] = []
        for path, sub in self.model.named_modules():
            if any(path.startswith(p + ".") for p in skip):
                continue
            if isinstance(sub, ContextBuffer):
                self.paths[id(sub)] = path
                sub.forward = types.MethodType(_patched_context(sub.forward), sub)
                continue
            spec = _liftable(sub)
            if spec is None:
                continue
            skip.append(path)
            key = id(sub)
            _REGISTRY[key] = (sub.forward, spec, sub)
            self.keys.append(key)
            self.recurrent[path] = spec
            self.paths[key] = path
            sub.forward = types.MethodType(_patched_forward(path, key, spec), sub)

    def close(self) -> None:
        """Drop this lifter's entries from the placeholder registry (what its traced graph points to)."""
        for key in self.keys:
            _REGISTRY.pop(key, None)

    def __enter__(self) -> Lifter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def discover(self, *inputs: torch.Tensor) -> tuple[Any, list[LiftedState]]:
        run = _Run(self, None)
        try:
            with _active(run), torch.no_grad():
                out = self.model(*inputs)
        finally:
            self.calls_per_forward = dict(run.every_call)  # how often each recurrent submodule ran
        return out, run.found

    def run(self, inputs: tuple[torch.Tensor, ...], states: dict[str, torch.Tensor]) -> tuple[Any, dict]:
        r = _Run(self, states)
        with _active(r):
            out = self.model(*inputs)
        return out, r.new_states


def _liftable(sub: torch.nn.Module) -> RecurrentSpec | None:
    """The spec of a recurrent submodule whose state can be lifted; None for anything else.

    A layer subclass that overrides ``forward`` is not lifted: its own forward is traced as it stands.
    """
    try:
        return recurrent_spec(sub)
    except UnsupportedError:
        return None


def _patched_forward(path: str, key: int, spec: RecurrentSpec) -> Callable[..., Any]:
    def forward(self: torch.nn.Module, input: torch.Tensor, hx: Any = None, **kwargs: Any) -> Any:
        run = current_lift()
        if run is None:
            return _REGISTRY[key][0](input, hx, **kwargs)
        if kwargs:
            raise UnsupportedError(f"{path}: called with {sorted(kwargs)}; an exported model calls it as (input, hx)")
        if isinstance(input, torch.nn.utils.rnn.PackedSequence):
            raise UnsupportedError(
                f"{path}: called with a PackedSequence. A stream is one sequence fed chunk by chunk and needs no "
                "packing: export the path that calls the layer on the padded tensor (batch_first or time-major)")
        return run.recurrent(path, key, spec, input, hx)

    return forward


def _patched_context(original: Callable[..., Any]) -> Callable[..., Any]:
    """A ContextBuffer's forward in the lifter's copy: its context is a lifted state while a run is active."""

    def forward(self: torch.nn.Module, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        run = current_lift()
        if run is not None and context is None:
            return run.context(self, x)
        return original(x, context)

    return forward


def copy_eval(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).eval()
