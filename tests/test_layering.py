"""Dependencies point one way: the runtime side imports neither torch nor onnx."""

from __future__ import annotations

import subprocess
import sys

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
        "import edge_rnn, edge_rnn.runtime, edge_rnn.contract, edge_rnn.errors, edge_rnn.cli\n"
        "assert not any(m.split('.')[0] in ('torch', 'onnx') for m in sys.modules), sorted(sys.modules)\n"
        "import onnxruntime, numpy\n"
        "print('ok')"
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_export_without_torch_says_which_extra_to_install():
    r = run_blocked("import edge_rnn\nedge_rnn.export")
    assert r.returncode != 0
    assert "pip install 'edge-rnn[export]'" in r.stderr
