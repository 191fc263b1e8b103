"""The ORT format that mobile onnxruntime builds take, with onnxruntime's own converter.

Each model becomes ``<name>.ort`` (optimisation style "Fixed": optimised for
the CPU provider when converted, so a minimal build needs no optimiser) and a
``required_operators.config`` that a minimal build
(``build.sh --minimal_build --include_ops_by_config``) is made from. The
``edge_rnn`` metadata survives in the ``.ort`` file; the runtime, ``inspect``
and ``verify`` read it through onnxruntime.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edge_rnn.errors import UnsupportedError, described
from edge_rnn.runtime import StreamingModel, check_external_data

__all__ = ["to_ort"]


def to_ort(models: list[Path], out_dir: Path) -> tuple[list[Path], Path]:
    """Convert ``models`` to ``out_dir/<stem>.ort``; returns those paths and the required-operators config."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    from edge_rnn.deploy._tools import quiet

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in", Path(tmp) / "out"
        src.mkdir()
        for m in models:
            shutil.copy(m, src / m.name)
            folder = m.resolve().parent
            for weights in check_external_data(m.read_bytes(), m):  # external weight files go along, where they were
                target = src / weights.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(weights, target)
        try:
            quiet(convert_onnx_models_to_ort, src, dst, optimization_styles=[OptimizationStyle.Fixed])
        except Exception as e:  # noqa: BLE001 - the converter raises whatever onnxruntime raised
            raise UnsupportedError(f"onnxruntime's ORT-format converter failed ({described(e)})") from None
        written = []
        for m in models:
            ort_file = dst / f"{m.stem}.ort"
            if not ort_file.is_file():
                raise UnsupportedError(f"{m}: onnxruntime's converter wrote no .ort file for it")
            shutil.copy(ort_file, out_dir / ort_file.name)
            written.append(out_dir / ort_file.name)
        config = out_dir / "required_operators.config"
        shutil.copy(dst / "required_operators.config", config)
    for path in written:
        StreamingModel.load(path)  # the contract survived, and onnxruntime takes the file
    return written, config
