"""The commands on a deployment bundle (run, bench, diagnose --compare, inspect's hash check), and every
command's one line where an extra is not installed (torch and onnx made unimportable in a child process)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_rnn.cli import main

DATA = Path(__file__).parent / "data"


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, contains: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("Error: ") and contains in lines[-1], result.stderr
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """lstm_layer.onnx packaged with its fp32 and fp16 variants, each also in ORT format."""
    pytest.importorskip("onnx")  # the deploy extra writes the bundle; the commands then read it without onnx
    from edge_rnn.deploy import package

    folder = tmp_path_factory.mktemp("bundle") / "b"
    package(DATA / "lstm_layer.onnx", folder, variants=("fp32", "fp16"), steps=2000, ort_format=True)
    return folder


@pytest.fixture()
def sequence(tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32))
    return path


def _expected(bundle: Path, variant: str, x: np.ndarray) -> np.ndarray:
    from edge_rnn.runtime import StreamingModel, run_sequence

    m = StreamingModel.load(bundle, variant=variant)
    return run_sequence(m, m.open_stream(), x, chunk=7)["y"]


# ----------------------------------------------------------------------------- run, bench, diagnose on a bundle
@pytest.mark.parametrize("variant", [None, "fp32", "fp16"])
def test_run_streams_a_bundle_variant(bundle, sequence, tmp_path, variant):
    out = tmp_path / "y.npy"
    r = run("run", bundle, "--input", sequence, "--chunk", "7", "-o", out, *(["--variant", variant] if variant else []))
    assert r.exit_code == 0, r.output
    expected = _expected(bundle, variant or "fp32", np.load(sequence))  # no --variant: the default, as load gives
    np.testing.assert_array_equal(np.load(out), expected)
    assert f"variant {variant or 'fp32'}" in r.stdout


def test_run_without_variant_differs_from_fp16(bundle, sequence, tmp_path):
    """The default is really fp32, not whichever variant happens to be listed first."""
    r = run("run", bundle, "--input", sequence, "-o", tmp_path / "y.npy")
    assert r.exit_code == 0, r.output
    assert not np.array_equal(np.load(tmp_path / "y.npy"), _expected(bundle, "fp16", np.load(sequence)))


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_bench_takes_a_bundle_variant(bundle, variant):
    r = run("bench", bundle, "--streams", "1", "--chunk", "1", "--seconds", "0.01",
            *(["--variant", variant] if variant else []))
    assert r.exit_code == 0, r.output
    assert f"variant {variant or 'fp32'}" in r.stderr


@pytest.mark.parametrize("command", ["run", "bench"])
def test_variant_on_a_plain_file_is_a_usage_error(sequence, tmp_path, command):
    extra = ["--input", str(sequence), "-o", str(tmp_path / "y.npy")] if command == "run" else []
    r = run(command, DATA / "lstm_layer.onnx", "--variant", "fp16", *extra)
    one_line_error(r, "--variant", code=2)
    assert "bundle folder" in r.stderr


@pytest.mark.parametrize("command", ["run", "bench"])
def test_an_unknown_variant_or_a_folder_without_manifest_is_one_line(bundle, sequence, tmp_path, command):
    extra = ["--input", str(sequence), "-o", str(tmp_path / "y.npy")] if command == "run" else []
    one_line_error(run(command, bundle, "--variant", "int9", *extra), "expected one of ['fp16', 'fp32']")
    one_line_error(run(command, tmp_path, *extra), "a folder without manifest.json")


@pytest.mark.parametrize("command", ["run", "bench"])
def test_a_tampered_bundle_variant_is_refused(bundle, sequence, tmp_path, command):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    with open(copy / "lstm_layer.fp16.onnx", "ab") as f:
        f.write(b"\0")
    extra = ["--input", str(sequence), "-o", str(tmp_path / "y.npy")] if command == "run" else []
    one_line_error(run(command, copy, "--variant", "fp16", *extra), "SHA-256 does not match")


def _curves(output: str) -> list[str]:
    return re.findall(r"^memory curve, (.+?): ", output, flags=re.M)


@pytest.mark.parametrize("compare,labels", [
    ("{b}", ["lstm_layer.onnx (b:fp32)", "lstm_layer.fp16.onnx (b:fp16)"]),  # the folder: every variant
    ("{b}:fp16", ["lstm_layer.fp16.onnx (b:fp16)"]),  # FOLDER:NAME: that one
])
def test_diagnose_compares_with_a_bundle(bundle, sequence, compare, labels):
    r = run("diagnose", DATA / "lstm_layer.onnx", "--input", sequence, "--max-lag", "5", "--starts", "2",
            "--compare", compare.format(b=bundle))
    assert r.exit_code == 0, r.output
    assert _curves(r.stdout) == ["lstm_layer.onnx", *labels]


def test_diagnose_compare_with_a_variant_the_bundle_lacks(bundle, sequence, tmp_path):
    one_line_error(run("diagnose", DATA / "lstm_layer.onnx", "--input", sequence, "--compare", f"{bundle}:int8"),
                   "expected one of ['fp16', 'fp32']")
    one_line_error(run("diagnose", DATA / "lstm_layer.onnx", "--input", sequence, "--compare",
                       tmp_path / "none.onnx"), "no such file")


def test_diagnose_compare_refuses_a_tampered_variant(bundle, sequence, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / "lstm_layer.fp16.onnx").write_bytes((copy / "lstm_layer.fp16.onnx").read_bytes()[:-1])
    one_line_error(run("diagnose", DATA / "lstm_layer.onnx", "--input", sequence, "--compare", copy),
                   "SHA-256 does not match")


# ----------------------------------------------------------------------------- inspect checks a bundle's hashes
def test_inspect_of_an_intact_bundle_checks_every_file(bundle):
    r = run("inspect", bundle)
    assert r.exit_code == 0, r.output
    for name in ("lstm_layer.onnx", "lstm_layer.fp16.onnx", "lstm_layer.ort", "lstm_layer.fp16.ort",
                 "required_operators.config"):
        line = next(ln for ln in r.stdout.splitlines()[1:] if f" {name} " in f"{ln} ")
        assert "sha256 ok" in line, r.stdout
    assert "MISMATCH" not in r.stdout and "MISSING" not in r.stdout


@pytest.mark.parametrize("name", ["lstm_layer.fp16.onnx", "lstm_layer.ort", "required_operators.config"])
@pytest.mark.parametrize("how", ["changed", "missing"])
def test_inspect_marks_a_changed_or_missing_file_and_exits_1(bundle, tmp_path, name, how):
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    if how == "changed":
        data = bytearray((copy / name).read_bytes())
        data[len(data) // 2] ^= 1
        (copy / name).write_bytes(bytes(data))
    else:
        (copy / name).unlink()
    r = run("inspect", copy)
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    bad = [ln for ln in lines if "MISMATCH" in ln or "MISSING" in ln]
    assert len(bad) == 1 and f" {name} " in f"{bad[0]} ", r.stdout
    assert ("SHA-256 MISMATCH" if how == "changed" else "MISSING") in bad[0]
    assert sum("sha256 ok" in ln for ln in lines) == len(lines) - 2 >= 4, r.stdout  # the whole listing, the rest ok
    assert "Traceback" not in r.output and re.search(r"1 of \d+ files fail", r.stderr), r.stderr


def test_inspect_refuses_a_file_name_leaving_the_bundle(bundle, tmp_path):
    import json

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["variants"]["fp16"]["file"] = "../outside.onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    r = run("inspect", copy)
    assert r.exit_code == 1 and "not a file name in the bundle" in r.stdout, r.output


@pytest.mark.parametrize("matches", [True, False])
def test_inspect_checks_any_other_file_the_manifest_lists(bundle, tmp_path, matches):
    """A file listed outside the known places (as a later bundle format may list one) is checked too."""
    import hashlib
    import json

    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    (copy / "extra.bin").write_bytes(b"golden")
    digest = hashlib.sha256(b"golden" if matches else b"other").hexdigest()
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["variants"]["fp16"]["golden"] = {"file": "extra.bin", "sha256": digest}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    r = run("inspect", copy)
    line = next(ln for ln in r.stdout.splitlines() if " extra.bin " in ln)
    assert "variants.fp16.golden" in line and ("sha256 ok" if matches else "SHA-256 MISMATCH") in line, r.stdout
    assert r.exit_code == (0 if matches else 1), r.output


# ----------------------------------------------------------------------------- without torch or onnx
# A real runtime-only install: the import fails as a missing module does (ModuleNotFoundError with its name).
_BLOCK = """import sys
BLOCKED = {blocked!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from edge_rnn.cli import main
sys.argv[0] = 'edge-rnn'
main({args!r})
"""


def _cli_without(blocked: tuple[str, ...], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    code = _BLOCK.format(blocked=blocked, args=[str(a) for a in args])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("blocked,args,extra", [
    (("torch", "onnx"), ["export", "--arch", "lstm", "--input-size", "4", "--hidden-size", "6", "-o", "m.onnx"],
     "export"),
    (("torch",), ["export", "--arch", "lstm", "--input-size", "4", "--hidden-size", "6", "-o", "m.onnx"], "export"),
    (("torch", "onnx"), ["verify", str(DATA / "lstm_layer.onnx")], "export"),
    (("torch", "onnx"), ["optimize", str(DATA / "lstm_layer.onnx"), "--fp16", "-o", "."], "deploy"),
    (("onnx",), ["optimize", str(DATA / "lstm_layer.onnx"), "--fp16", "-o", "."], "deploy"),
    (("torch", "onnx"), ["package", str(DATA / "lstm_layer.onnx"), "-o", "b", "--variants", "fp16"], "deploy"),
    (("torch", "onnx"), ["diagnose", "--arch", "lstm", "--input-size", "4", "--hidden-size", "6", "--input",
                         "x.npy"], "export"),
    (("matplotlib",), ["diagnose", str(DATA / "lstm_layer.onnx"), "--input", "x.npy", "--plot", "d.png"], "diag"),
])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, blocked, args, extra):
    np.save(tmp_path / "x.npy", np.zeros((60, 4), np.float32))
    r = _cli_without(blocked, *args, cwd=tmp_path)
    if r.returncode == 0 and "verdict: ok" in r.stdout:
        pytest.skip(f"{args[0]} works without {blocked} now")  # verify --against without onnx: the runtime's job
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("Error: ") and f"pip install 'edge-rnn[{extra}]'" in lines[0], lines[0]


@pytest.mark.parametrize("name", ["lstm_layer.onnx", "token_gru.onnx", "vad_state.onnx", "gru_cell.onnx",
                                  "tiny_dynamic.onnx"])
def test_inspect_reads_an_onnx_file_without_onnx_as_it_does_with_it(name):
    with_onnx = run("inspect", DATA / name)
    assert with_onnx.exit_code == 0, with_onnx.output
    r = _cli_without(("torch", "onnx"), "inspect", DATA / name)
    assert r.returncode == 0, r.stderr
    assert r.stdout == with_onnx.stdout


@pytest.mark.parametrize("name", ["lstm_layer.onnx", "token_gru.onnx", "vad_state.onnx", "gru_cell.onnx",
                                  "tiny_dynamic.onnx", "tiny_fixed.onnx"])
def test_inspect_says_what_onnx_says(name):
    """The summary read from the protobuf wire format agrees with onnx's own reading of the file."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto

    from edge_rnn._inspect import operator_counts

    proto = onnx.load(str(DATA / name))
    out = run("inspect", DATA / name).stdout.splitlines()
    g = proto.graph
    inits = {i.name for i in g.initializer}
    params = sum(int(np.prod(i.dims, dtype=np.int64)) for i in g.initializer)
    ops = operator_counts(g)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in proto.opset_import)
    assert f"opset:     {opsets}" in out
    assert any(ln.startswith("size:") and f"{params:,} parameters" in ln for ln in out), out
    assert out[-1] == "operators: " + ", ".join(f"{k} x{v}" for k, v in sorted(ops.items(),
                                                                               key=lambda kv: (-kv[1], kv[0])))
    assert f"IR {proto.ir_version})" in out[0] and (proto.producer_name or "?") in out[0]
    for vi in [v for v in g.input if v.name not in inits] + list(g.output):
        t = vi.type.tensor_type
        dims = ", ".join(d.dim_param or str(d.dim_value) for d in t.shape.dim)
        assert f"  {vi.name:<16} {TensorProto.DataType.Name(t.elem_type).lower():<8} ({dims})" in out, out


def test_inspect_of_a_bundle_without_onnx(bundle):
    r = _cli_without(("torch", "onnx"), "inspect", bundle)
    assert r.returncode == 0 and "sha256 ok" in r.stdout, r.stderr


@pytest.mark.parametrize("variant", ["lstm_layer.int8.onnx", "lstm_layer.fp16.onnx", "lstm_layer.static.onnx"])
def test_verify_against_needs_neither_onnx_nor_torch(variant):
    """The help says "no torch needed": a variant is measured against its float32 model with the runtime alone."""
    bundle = DATA / "bundle"
    r = _cli_without(("torch", "onnx"), "verify", bundle / variant, "--against", bundle / "lstm_layer.onnx",
                     "--steps", "2000")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: ok" in r.stdout and "Traceback" not in r.stderr
    precision = {"int8": "5e-02", "fp16": "2e-03", "static": "1e-05"}[variant.split(".")[1]]
    assert f"<= {precision} +" in r.stdout  # judged by its own row of the tolerance table
