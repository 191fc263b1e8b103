"""A bundle's variant opened: picked by name or by error, its file and contract checked, self-tested on this CPU."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edge_rnn._variant_kinds import kind_of
from edge_rnn.errors import UnsupportedError
from edge_rnn.runtime._bundle import Picked, by_speed, check_max_error, load_manifest, pick_from, pick_variant
from edge_rnn.runtime._selftest import SelfTest, estimate_error, golden_of, raise_if_failed
from edge_rnn.runtime._selftest import self_test as run_self_test

__all__ = ["VariantChoice", "is_bundle", "open_variant"]

class _SelfTested(Protocol):
    self_test: SelfTest | None  # set when the model was self-tested on this CPU


M = TypeVar("M", bound=_SelfTested)
Opener = Callable[[Picked], M]  # the picked variant's file, loaded as a model


@dataclass(frozen=True)
class VariantChoice:
    """Which variant of a bundle :meth:`StreamingModel.load` opens: ``variant`` by name, or the fastest within
    ``max_error``; in ``form`` ("onnx" or "ort"); ``self_test``: replayed on this CPU first."""

    variant: str | None = None
    max_error: float | None = None
    form: str = "onnx"
    self_test: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.self_test, bool):
            raise UnsupportedError(f"self_test: expected True or False, got {self.self_test!r}")

    def refuse_for_file(self, model: Any) -> None:
        """These options pick from a bundle folder: given with a model file, they are refused, not ignored."""
        if self != VariantChoice():
            raise UnsupportedError(f"variant=, max_error=, form= and self_test= pick from a bundle folder; "
                                   f"{model!r:.80} is a model file")


def is_bundle(model: Any) -> bool:
    return not isinstance(model, (bytes, bytearray)) and Path(model).is_dir()


def _is_int8(picked: Picked) -> bool:
    """Whether a bundle's variant is an int8 one, by its contract (what the self-test's advice depends on)."""
    kind = kind_of(picked.contract.source.get("variant"))
    return kind is not None and kind.int8


def open_variant(open_file: Opener[M], folder: Path, choice: VariantChoice) -> M:
    """The variant ``choice`` names, opened with ``open_file`` and, when asked, self-tested (``model.self_test``)."""
    if choice.self_test and choice.max_error is not None and choice.variant is None:
        return _tested_within(open_file, folder, choice)
    picked = pick_variant(folder, choice.variant, choice.max_error, choice.form)
    model = open_file(picked)
    if choice.self_test:
        result = run_self_test(model, folder, picked.manifest, picked.name, form=choice.form)
        raise_if_failed(result, int8=_is_int8(picked))
        model.self_test = result
    return model


def _tested_within(open_file: Opener[M], folder: Path, choice: VariantChoice) -> M:
    """The fastest variant that passes its self-test here and whose projected error is within max_error."""
    check_max_error(choice.max_error)
    max_error = float(choice.max_error)  # check_max_error: a number
    manifest = load_manifest(folder)
    golden = golden_of(folder, manifest)
    projected: dict[str, float] = {}
    for name in by_speed(manifest.variants):
        entry = manifest.variants[name]
        packaged = float(entry.error.max_abs)  # by_speed: measured ones only
        if packaged > max_error:
            projected[name] = packaged
            continue  # over it already where it was packaged
        model = open_file(pick_from(folder, manifest, name, None, choice.form))
        result = run_self_test(model, folder, manifest, name, golden, form=choice.form)
        projected[name] = estimate_error(result, entry) if result.ok else math.inf
        if projected[name] <= max_error:
            model.self_test = result
            return model
    shown = {k: (f"{v:.3g}" if math.isfinite(v) else "over its bound here") for k, v in projected.items()}
    raise UnsupportedError(f"max_error {max_error:g}: no variant is within it on this CPU; projected here "
                           f"{shown}")
