"""Deployment variants (int8, fp16, static, static-int8), their error on long streams, NPU support: no torch.

:func:`make_variant` writes a variant with onnxruntime's own tools (its maker in
:data:`MAKERS`, one per row of the variant table :data:`edge_rnn._variant_kinds.KINDS`);
:func:`measure_against` streams a variant and its float32 model side by side
and reports each output's and state's error, its growth along the stream and,
for classifier outputs, decision agreement.

Names are imported when first used: measuring a variant (``measure_against``,
``edge-rnn verify --against``) needs only numpy and onnxruntime, making one
needs onnx too.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "make_variant": "_variants", "Variant": "_variants", "VARIANTS": "_variants", "MAKERS": "_variants",
    "MakeOptions": "_variants",
    "Int8Settings": "_int8", "INT8_TARGETS": "_int8",
    "static_form": "_static", "static_graph": "_static", "static_int8_graph": "_static_int8",
    "mobile_support": "_mobile", "ProviderSupport": "_mobile", "PROVIDERS": "_mobile",
    "measure_against": "_fidelity", "VariantError": "_fidelity", "TensorError": "_fidelity",
    "precision_of": "_fidelity", "GROWTH_FLAG": "_fidelity",
    "decompose_recurrent": "_decompose",
    "to_ort": "_ort",
    "package": "_bundle", "PackageResult": "_bundle", "manifest_table": "_bundle",
    "lift": "lifting", "LiftResult": "lifting",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
