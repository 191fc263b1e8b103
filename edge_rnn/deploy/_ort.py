"""The ORT format that mobile onnxruntime builds take, with onnxruntime's own converter.

Each model becomes ``<name>.ort`` (optimisation style "Fixed": optimised for
the CPU provider when converted, so a minimal build needs no optimiser) and a
``required_operators.config`` that a minimal build
(``build.sh --minimal_build --include_ops_by_config``) is made from. The
``edge_rnn`` metadata survives in the ``.ort`` file; the runtime, ``inspect``
and ``verify`` read it through onnxruntime.

A float16 model is the exception: the converter's optimiser folds each
``Cast`` of a float16 weight into a float32 constant, which wrote an fp16
``.ort`` file as large as the fp32 one (3,509,104 bytes against 1,748,378
for the fp16 ``.onnx`` of the demo LSTM). It is saved unoptimised instead, its
weights in half precision: half the size, and on the CPU provider the Casts
then run at every call (the bundle's manifest gives its measured speed).
``required_operators.config`` names the ``.ort`` files by their own names.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from edge_rnn.deploy._fidelity import has_float16_weights
from edge_rnn.errors import UnsupportedError, described
from edge_rnn.runtime import StreamingModel, check_external_data

__all__ = ["to_ort"]


def _save_unoptimised(model: Path, dst: Path) -> None:
    """``model`` in ORT format as it is: no optimiser, so no Cast of a float16 weight is folded into float32."""
    import onnxruntime as ort

    from edge_rnn.runtime._session import new_session_options

    so = new_session_options("disabled", save_to=str(dst), ort_format=True)
    ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])


def _operators_config(written: list[Path], config: Path) -> None:
    """onnxruntime's required-operators config of the ``.ort`` files, naming them by file name (the converter names
    the temporary paths it read them from, which mean nothing in a bundle)."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    from edge_rnn.deploy._tools import quiet

    quiet(create_config_from_models, written, config, enable_type_reduction=False)
    lines = config.read_text(encoding="utf-8").splitlines(keepends=True)
    config.write_text("".join(f"# - {Path(line[4:].strip()).name}\n" if line.startswith("# - ") else line
                              for line in lines), encoding="utf-8")


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
        half = [m for m in models if has_float16_weights(m.read_bytes())]
        for m in half:
            (src / m.name).unlink()
        dst.mkdir()
        try:
            if len(half) < len(models):
                quiet(convert_onnx_models_to_ort, src, dst, optimization_styles=[OptimizationStyle.Fixed])
            for m in half:
                _save_unoptimised(m, dst / f"{m.stem}.ort")
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
        _operators_config(written, config)
    for path in written:
        StreamingModel.load(path)  # the contract survived, and onnxruntime takes the file
    return written, config
