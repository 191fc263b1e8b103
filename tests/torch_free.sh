#!/usr/bin/env bash
# The runtime's own promise: with only its dependencies installed (numpy, onnxruntime, click; no torch,
# no onnx), the runtime and parity-harness tests pass on the committed fixtures in tests/data.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
had_build=$([ -d build ] && echo 1 || echo 0)
trap 'rm -rf "$(dirname "$venv")"; [ "$had_build" = 1 ] || rm -rf build' EXIT
python -m venv "$venv"
"$venv/bin/pip" install -q . pytest
"$venv/bin/python" - <<'PY'
import importlib.util, sys
missing = [m for m in ("torch", "onnx") if importlib.util.find_spec(m) is None]
assert missing == ["torch", "onnx"], f"expected a venv without torch and onnx, found {set(['torch', 'onnx']) - set(missing)}"
PY
# the whole suite: what needs torch or onnx skips itself (pytest.importorskip); the rest must pass
"$venv/bin/python" -m pytest -q -p no:cacheprovider -rs tests
