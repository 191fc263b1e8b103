"""The deployment variants a bundle may hold: one row per variant, read by every part that names one.

A row says what a variant is, as the device side, the measurements and the CLI
need it: its name, the row of the tolerance table it is judged by
(``edge_rnn.harness.TOLERANCE``), whether it is quantised to int8 (its
:class:`~edge_rnn.deploy.Int8Settings` apply and are recorded in its contract;
a failed self-test advises the portable int8 target), whether it is a static
form (fixed shapes, ``--static-chunk`` steps per call, for NPU providers),
whether it is calibrated on data, and its help text. The makers that write
each variant are attached to these rows on the deploy side
(``edge_rnn.deploy._variants.MAKERS``), which needs onnx; this module needs
nothing, so the runtime reads it on a device and the CLI builds its flags from
it without importing onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VariantKind", "KINDS", "REFERENCE", "kind_of", "made_kinds"]


@dataclass(frozen=True)
class VariantKind:
    """One deployment variant: ``precision`` is its row of the tolerance table (``"float32"``, ``"float16"``,
    ``"int8"``); ``int8``: quantised; ``static``: fixed shapes, a fixed chunk per call; ``calibrated``: made with
    calibration data; ``reference``: the exported model itself, which the others are measured against."""

    name: str
    precision: str
    help: str
    int8: bool = False
    static: bool = False
    calibrated: bool = False
    reference: bool = False

    @property
    def flag(self) -> str:
        """Its command-line flag (``--static-int8``)."""
        return f"--{self.name}"


KINDS: dict[str, VariantKind] = {k.name: k for k in (
    VariantKind("fp32", "float32", "The exported model itself, the reference the others are measured against.",
                reference=True),
    VariantKind("int8", "int8", "Dynamic int8 quantisation (onnxruntime's quantize_dynamic).", int8=True),
    VariantKind("fp16", "float16", "Weights in float16, inputs, outputs and states float32."),
    VariantKind("static", "float32",
                "Loop-free, fixed shapes (batch 1, --static-chunk steps per call), for NNAPI and CoreML.", static=True),
    VariantKind("static-int8", "int8",
                "The static form with static QDQ int8 weights, calibrated on --calibration (else random input).",
                int8=True, static=True, calibrated=True),
)}

REFERENCE = next(k.name for k in KINDS.values() if k.reference)


def kind_of(name: object) -> VariantKind | None:
    """The row of variant ``name`` (a contract's ``source.variant``, which may be anything), or None."""
    return KINDS.get(name) if isinstance(name, str) else None


def made_kinds() -> tuple[VariantKind, ...]:
    """The variants made from the reference, in the table's order."""
    return tuple(k for k in KINDS.values() if not k.reference)
