"""Which NPU execution providers can run a graph whole, from onnxruntime's own mobile usability checker.

The checker (``python -m onnxruntime.tools.check_onnx_model_mobile_usability``)
optimises the model at the basic level, as an ORT-format conversion does, and
partitions it against each provider's list of supported operators. Here its
numbers are kept per provider: nodes, supported nodes, partitions and the
operators it refuses. XNNPACK has no such checker in onnxruntime, so it is
reported as not checked rather than guessed.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from edge_rnn.errors import UnsupportedError, described

__all__ = ["ProviderSupport", "mobile_support", "PROVIDERS"]

PROVIDERS = ("NNAPI", "CoreML-NeuralNetwork", "CoreML-MLProgram")


@dataclass(frozen=True)
class ProviderSupport:
    provider: str
    nodes: int
    supported: int
    partitions: int
    unsupported_ops: tuple[str, ...]

    @property
    def whole(self) -> bool:
        """Every node in one partition: the provider runs the graph whole, nothing falls back to the CPU."""
        return self.nodes > 0 and self.supported == self.nodes and self.partitions == 1

    def to_dict(self) -> dict:
        return {**asdict(self), "unsupported_ops": list(self.unsupported_ops), "whole": self.whole}

    def describe(self) -> str:
        missing = f"; refuses {', '.join(self.unsupported_ops)}" if self.unsupported_ops else ""
        return (f"{self.provider}: {self.supported}/{self.nodes} nodes in {self.partitions} partition(s)"
                f"{' (whole)' if self.whole else ''}{missing}")


def mobile_support(path: Path) -> list[ProviderSupport]:
    """NNAPI and both CoreML formats, as onnxruntime's checker sees the model at ``path`` (an .onnx file)."""
    from onnxruntime.tools.mobile_helpers import usability_checker as uc

    logging.disable(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            optimized = Path(tmp) / path.name
            uc.optimize_model(path, optimized, use_external_initializers=True)
            model = uc.ModelProtoWithShapeInfo(optimized).model_with_shape_info
            coreml = uc.check_coreml_partitions
            infos = {
                "NNAPI": uc.check_nnapi_partitions(model, True),
                "CoreML-NeuralNetwork": coreml(model, True, "coreml_supported_neuralnetwork_ops.md"),
                "CoreML-MLProgram": coreml(model, True, "coreml_supported_mlprogram_ops.md"),
            }
    except Exception as e:  # noqa: BLE001 - the checker's own failures (a model it cannot optimise, ...)
        raise UnsupportedError(f"{path}: onnxruntime's mobile usability checker failed ({described(e)})") from None
    finally:
        logging.disable(logging.NOTSET)
    out = []
    for name in PROVIDERS:
        info = infos[name]
        unsupported = set(info.unsupported_ops) | set(info.ops_with_unsupported_rank)
        out.append(ProviderSupport(name, info.num_nodes, info.num_supported_nodes, info.num_partitions,
                                   tuple(sorted(unsupported))))
    return out
