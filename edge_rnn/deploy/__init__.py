"""Deployment variants (int8, fp16), their error against the float32 model on long streams: no torch.

:func:`make_variant` writes a variant with onnxruntime's own tools;
:func:`measure_against` streams a variant and its float32 model side by side
and reports each output's and state's error, its growth along the stream and,
for classifier outputs, decision agreement.
"""

from edge_rnn.deploy._decompose import decompose_recurrent
from edge_rnn.deploy._fidelity import GROWTH_FLAG, TensorError, VariantError, measure_against, precision_of
from edge_rnn.deploy._ort import to_ort
from edge_rnn.deploy._variants import MADE_BY_TOOLS, Variant, make_variant

__all__ = ["make_variant", "Variant", "MADE_BY_TOOLS", "measure_against", "VariantError", "TensorError",
           "precision_of", "GROWTH_FLAG", "decompose_recurrent", "to_ort"]
