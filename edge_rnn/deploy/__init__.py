"""Deployment variants (int8, fp16, static, static-int8), their error on long streams, NPU support: no torch.

:func:`make_variant` writes a variant with onnxruntime's own tools;
:func:`measure_against` streams a variant and its float32 model side by side
and reports each output's and state's error, its growth along the stream and,
for classifier outputs, decision agreement.
"""

from edge_rnn.deploy._bundle import PackageResult, manifest_table, package
from edge_rnn.deploy._decompose import decompose_recurrent
from edge_rnn.deploy._fidelity import GROWTH_FLAG, TensorError, VariantError, measure_against, precision_of
from edge_rnn.deploy._int8 import INT8_TARGETS, Int8Settings
from edge_rnn.deploy._mobile import PROVIDERS, ProviderSupport, mobile_support
from edge_rnn.deploy._ort import to_ort
from edge_rnn.deploy._static import static_form
from edge_rnn.deploy._variants import VARIANTS, Variant, make_variant

__all__ = [
    "make_variant",
    "Int8Settings",
    "INT8_TARGETS",
    "Variant",
    "VARIANTS",
    "static_form",
    "mobile_support",
    "ProviderSupport",
    "PROVIDERS",
    "measure_against",
    "VariantError",
    "TensorError",
    "precision_of",
    "GROWTH_FLAG",
    "decompose_recurrent",
    "to_ort",
    "package",
    "PackageResult",
    "manifest_table",
]
