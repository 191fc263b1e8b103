"""Dependencies point one way: the runtime side imports neither torch nor onnx, when it is really imported.

import-linter (``lint-imports``, configured in pyproject.toml) holds the table of what may import what; these
tests check what no static reading can: the modules imported for real with torch and onnx made unimportable,
so an import hidden in a string (importlib) or made by a third-party package is caught too.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'onnx'):
            raise ImportError(f'{name} is blocked in this test')
sys.meta_path.insert(0, _Block())
"""


def run_blocked(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True)


def test_runtime_contract_and_cli_import_without_torch_or_onnx():
    r = run_blocked(
        "import edge_rnn, edge_rnn.runtime, edge_rnn.harness, edge_rnn.contract, edge_rnn.errors, edge_rnn.cli\n"
        "import edge_rnn.spec, edge_rnn.gates, edge_rnn.diagnostics, edge_rnn.client, edge_rnn.loadtest\n"
        "from edge_rnn.diagnostics import memory_curve, summary, diagnose_onnx\n"
        "assert not any(m.split('.')[0] in ('torch', 'onnx') for m in sys.modules), sorted(sys.modules)\n"
        "import onnxruntime, numpy\n"
        "print('ok')"
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_export_without_torch_says_which_extra_to_install():
    r = run_blocked("import edge_rnn\nedge_rnn.export")
    assert r.returncode != 0
    assert "pip install 'edge-rnn[export]'" in r.stderr


def test_the_parity_harness_judges_a_model_without_torch(tmp_path):
    """The streaming half of parity runs where torch cannot be imported: a candidate against another ONNX model."""
    torch = pytest.importorskip("torch")  # to write the two models; the check itself then runs without it

    import edge_rnn

    torch.manual_seed(0)
    gru = torch.nn.GRU(4, 6, batch_first=True).eval()
    edge_rnn.export(gru, tmp_path / "ref.onnx", verify_parity=False)
    with torch.no_grad():
        gru.bias_ih_l0[2] += 1e-3
    edge_rnn.export(gru, tmp_path / "bad.onnx", verify_parity=False)
    r = run_blocked(f"""
from edge_rnn.harness import (Cases, InputLayout, compare_streaming, open_sessions, random_inputs, random_states,
                              read_contract, session_runner)
c = read_contract({str(tmp_path / "ref.onnx")!r})
ref = session_runner(open_sessions({str(tmp_path / "ref.onnx")!r}, ("disabled",))["disabled"])
x = [InputLayout("x", (1, 1, 4), 0, 1)]
kw = dict(cases=Cases(batch=2, long_steps=2000), reference_label="fp32 ONNX")
same = compare_streaming({str(tmp_path / "ref.onnx")!r}, c, ref, random_inputs(x), random_states(c), **kw)
bad = compare_streaming({str(tmp_path / "bad.onnx")!r}, c, ref, random_inputs(x), random_states(c), **kw)
assert same.ok and same.max_abs_error < 1e-6 and len(same.rows) == 20, same.table()
assert not bad.ok and {{r.case.split()[0] for r in bad.failures}} == {{"full", "chunked", "long"}}, bad.table()
assert not any(m.split('.')[0] in ('torch', 'onnx') for m in sys.modules)
print("ok")
""")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_context_buffer_imports_without_onnx_and_the_old_path_still_works():
    """Training code imports edge_rnn.nn: it must not pull in onnx, onnxruntime or the exporters."""
    pytest.importorskip("torch")
    r = subprocess.run([sys.executable, "-c", """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('onnx', 'onnxruntime'):
            raise ImportError(f'{name} is blocked in this test')
sys.meta_path.insert(0, _Block())
import torch
from edge_rnn.nn import ContextBuffer
assert ContextBuffer(2)(torch.zeros(1, 3, 5)).shape == (1, 3, 7)
assert not any(m.startswith('edge_rnn.exporters') for m in sys.modules), sorted(sys.modules)
print('ok')
"""], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    from edge_rnn.exporters import ContextBuffer as Old
    from edge_rnn.nn import ContextBuffer

    assert Old is ContextBuffer


def test_every_module_of_the_package_sits_in_a_layer():
    """import-linter checks only the modules its layers name: a new module outside them would be unchecked."""
    from conftest import REPO

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {name.strip() for layer in layers for name in layer.split("|")}
    package = REPO / "edge_rnn"
    modules = {".".join(("edge_rnn", *p.relative_to(package).with_suffix("").parts)).removesuffix(".__init__")
               for p in package.rglob("*.py")}
    outside = sorted(m for m in modules - {"edge_rnn"}
                     if not any(m == n or m.startswith(n + ".") for n in named))
    assert not outside, f"modules in no import-linter layer: {outside}"
