"""Loading what the CLI exports from: a state_dict file (never unpickling arbitrary objects) and a model factory."""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch

from edge_rnn.errors import EdgeRnnError, StateError, described, message_line

__all__ = ["load_state_dict", "load_factory", "weights_digest"]


def load_state_dict(module: Any, weights: Path) -> None:
    """Load a state_dict saved with torch.save, never unpickling arbitrary objects."""
    if not weights.is_file():
        raise EdgeRnnError(f"weights {weights}: no such file" if not weights.exists()
                           else f"weights {weights}: expected a file, got a directory")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = message_line(e) or type(e).__name__
        raise StateError(
            f"{weights}: refused to unpickle it with weights_only=True ({first}); "
            "save a plain state_dict instead: torch.save(module.state_dict(), path)"
        ) from None
    except Exception as e:  # a truncated or non-torch file
        raise StateError(f"{weights}: expected a file written by torch.save, could not read it ({e})") from None
    if not isinstance(state, dict):
        raise StateError(f"{weights}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    mod_state = module.state_dict()
    missing = sorted(set(mod_state) - set(state))
    unexpected = sorted(set(state) - set(mod_state))
    if missing or unexpected:
        raise StateError(
            f"{weights}: state_dict keys do not fit {type(module).__name__}: missing {missing}, unexpected {unexpected}"
        )
    bad = [
        f"{k} expected {tuple(v.shape)}, got {tuple(getattr(state[k], 'shape', ()))}"
        for k, v in mod_state.items()
        if tuple(getattr(state[k], "shape", ())) != tuple(v.shape)
    ]
    if bad:
        raise StateError(f"{weights}: state_dict shapes do not fit: " + "; ".join(bad))
    module.load_state_dict(state)


def weights_digest(module: torch.nn.Module) -> str:
    """A short SHA-256 of ``module``'s state_dict (names, dtypes, shapes and values): what a whole model's contract
    records, so that verify can tell a factory's own weights from the state_dict the model was exported from."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def load_factory(ref: str) -> Any:
    mod_name, _, attr = ref.partition(":")
    if not mod_name or not attr:
        raise EdgeRnnError(f"{ref}: expected package.module:callable")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise EdgeRnnError(f"{ref}: cannot import {mod_name} ({e})") from None
    except Exception as e:  # noqa: BLE001 - a syntax error or an exception raised while importing the user's module
        raise EdgeRnnError(f"{ref}: importing {mod_name} failed: {described(e, last=True)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EdgeRnnError(f"{ref}: {mod_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise EdgeRnnError(f"{ref}: expected a callable that returns a torch.nn.Module, got {type(obj).__name__}")
    try:
        model = obj()
    except Exception as e:  # noqa: BLE001 - the user's factory: its own error, in one line
        raise EdgeRnnError(
            f"{ref}: the factory failed: {described(e, last=True)} (it is called with no arguments)") from None
    if not isinstance(model, torch.nn.Module):
        raise EdgeRnnError(f"{ref}: expected it to return a torch.nn.Module, got {type(model).__name__}")
    return model
