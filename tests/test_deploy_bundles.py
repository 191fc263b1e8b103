"""Deployment bundles: package writes the variants, their golden vectors and a manifest of each one's error and
speed; StreamingModel.load picks a variant from it by name or by error, its files checked against their hashes.

Needs onnx (the deploy extra) to package, not torch: the model is a committed fixture.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from conftest import REPO  # noqa: E402
from runtime_only import run_where_torch_and_onnx_are_blocked  # noqa: E402

from edge_rnn.contract import Contract  # noqa: E402
from edge_rnn.errors import EdgeRnnError, ModelFormatError, UnsupportedError  # noqa: E402
from edge_rnn.harness import TOLERANCE  # noqa: E402
from edge_rnn.runtime import StreamingModel  # noqa: E402

DATA = REPO / "tests" / "data"
EXPECTED = dict(np.load(DATA / "expected.npz"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from edge_rnn.deploy import package

    folder = tmp_path_factory.mktemp("b") / "bundle"
    result = package(DATA / "lstm_layer.onnx", folder, ort_format=True, steps=2_000)
    assert not result.refused, result.refused
    return folder


def test_the_manifest_describes_every_variant_with_its_measurements(bundle):
    from edge_rnn.runtime._bundle import sha256_of

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["variants"]) == {"fp32", "int8", "fp16", "static", "static-int8"}
    host = manifest["host"]
    assert host["cpus"] and host["onnxruntime"] and host["cpu"] and host["os"] and host["machine"]
    assert set(host["features"]) == {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "neon",
                                     "dotprod", "i8mm"} and all(isinstance(v, bool) for v in host["features"].values())
    for name, e in manifest["variants"].items():
        assert sha256_of(bundle / e["file"]) == e["sha256"] and e["size"] == (bundle / e["file"]).stat().st_size
        assert e["opset"] == 17 and e["operators"] and [st["input"] for st in e["states"]] == ["h0", "c0"]
        assert Contract.from_dict(e["contract"]).source.get("variant", "fp32") == name
        assert e["error"]["max_abs"] >= 0 and e["error"]["grows"] is False
        assert e["speed"]["step_us"] > 0 and e["speed"]["batch64_steps_per_s"] > 0
        assert set(e["providers"]) == {"NNAPI", "CoreML-NeuralNetwork", "CoreML-MLProgram", "XNNPACK"}
        assert sha256_of(bundle / e["ort"]["file"]) == e["ort"]["sha256"]
    assert manifest["variants"]["static"]["providers"]["NNAPI"]["whole"]
    assert not manifest["variants"]["fp32"]["providers"]["NNAPI"]["whole"]  # LSTM: a native recurrent operator
    assert (bundle / manifest["required_operators"]["file"]).is_file()


def test_the_manifest_written_reads_back_into_the_same_objects_and_the_same_bytes(bundle):
    """package writes the schema's objects; a device reads the file once into them, and they write it again as it
    is, ORT forms, refusals and the operators config included."""
    from edge_rnn.runtime._bundle import load_manifest
    from edge_rnn.runtime._manifest import Manifest

    text = (bundle / "manifest.json").read_text()
    manifest = load_manifest(bundle)
    assert json.dumps(manifest.to_json(), indent=1) == text
    assert Manifest.parse(manifest.to_json(), "again") == manifest
    int8 = manifest.variants["int8"]
    assert int8.ref.file == "lstm_layer.int8.onnx" and int8.ort.ref.file == "lstm_layer.int8.ort"
    assert int8.error.bound.atol == TOLERANCE["int8"].atol and int8.golden.bound.rtol == TOLERANCE["int8"].rtol
    assert int8.error.grows is False and int8.speed.step_us > 0 and "NNAPI" in manifest.variants["static"].whole_on
    assert manifest.required_operators.file == "required_operators.config" and manifest.int8["target"] == "portable"


def test_load_picks_a_variant_by_name_or_the_fastest_within_an_error(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert StreamingModel.load(bundle).variant == "fp32"
    m = StreamingModel.load(bundle, variant="int8")
    assert m.variant == "int8" and m.source.endswith("lstm_layer.int8.onnx")
    assert StreamingModel.load(bundle, variant="static", form="ort").source.endswith("lstm_layer.static.ort")
    bound = manifest["variants"]["int8"]["error"]["max_abs"] * 1.01
    within = {n: e for n, e in manifest["variants"].items() if e["error"]["max_abs"] <= bound}
    fastest = min(within, key=lambda n: within[n]["speed"]["step_us"])
    assert StreamingModel.load(bundle, max_error=bound).variant == fastest
    with pytest.raises(UnsupportedError, match=r"variant 'int4': expected one of \['fp16', 'fp32', 'int8'"):
        StreamingModel.load(bundle, variant="int4")
    with pytest.raises(UnsupportedError, match="give variant= or max_error=, not both"):
        StreamingModel.load(bundle, variant="int8", max_error=1.0)
    with pytest.raises(UnsupportedError, match="pick from a bundle folder"):
        StreamingModel.load(DATA / "token_gru.onnx", variant="int8")


def test_a_bundle_whose_files_do_not_match_the_manifest_is_refused(bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "lstm_layer.int8.onnx").read_bytes())
    data[-10] ^= 0x01
    (copy / "lstm_layer.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="its SHA-256 does not match manifest.json"):
        StreamingModel.load(copy, variant="int8")
    assert StreamingModel.load(copy, variant="fp16").variant == "fp16"  # the others still load
    (copy / "lstm_layer.fp16.onnx").unlink()
    with pytest.raises(ModelFormatError, match="listed in manifest.json but missing"):
        StreamingModel.load(copy, variant="fp16")
    (copy / "manifest.json").write_text("[" * 100_000)
    with pytest.raises(ModelFormatError, match="expected JSON"):
        StreamingModel.load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ModelFormatError, match="a folder without manifest.json"):
        StreamingModel.load(copy)


def test_a_variant_that_fails_its_bound_is_left_out_with_its_numbers(tmp_path):
    from edge_rnn.deploy import package

    result = package(DATA / "lstm_layer.onnx", tmp_path / "b", variants=("fp32", "static-int8"), steps=2_000,
                     calibration=EXPECTED["lstm_layer.x"] * 0.1)  # calibrated on data unlike the check's
    why = result.refused["static-int8"]
    assert set(result.refused) == {"static-int8"} and why.reason == "over_bound" and "max abs" in why.message
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["refused"] == json.loads(json.dumps(
        {n: r.to_json() for n, r in result.refused.items()}))  # structured JSON in the manifest, not a Python repr
    assert set(result.manifest.variants) == {"fp32"}
    assert not (tmp_path / "b" / "lstm_layer.static-int8.onnx").exists()
    with pytest.raises(EdgeRnnError, match="not empty"):
        package(DATA / "lstm_layer.onnx", tmp_path / "b", variants=("fp32",), steps=2_000)


def test_cli_package_prints_the_manifest_as_a_table(tmp_path):
    from click.testing import CliRunner

    from edge_rnn.cli import main

    r = CliRunner().invoke(main, ["package", str(DATA / "gru_cell.onnx"), "-o", str(tmp_path / "b"), "--variants",
                                  "fp32,int8,static", "--steps", "2000"])
    assert r.exit_code == 0, r.output
    assert "variant" in r.stdout and "NNAPI" in r.stdout and r.stdout.count("\n") >= 5
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "b")])
    assert r.exit_code == 0 and "3 variant(s) of gru_cell.onnx" in r.output
    r = CliRunner().invoke(main, ["package", str(DATA / "gru_cell.onnx"), "-o", str(tmp_path / "c"), "--variants",
                                  "fp32,int4"])
    assert r.exit_code == 1 and "expected names among" in r.output


def test_every_bundle_variant_streams_in_both_forms_where_torch_and_onnx_cannot_be_imported(bundle):

    code = f"""
done = []
for name in ('fp32', 'int8', 'fp16', 'static', 'static-int8'):
    for form in ('onnx', 'ort'):
        m = StreamingModel.load({str(bundle)!r}, variant=name, form=form)
        y = run_sequence(m, m.open_stream(), expected['lstm_layer.x'], chunk=1)['y']
        err = float(np.abs(y - expected['lstm_layer.y']).max())
        assert err < 5e-2, (name, form, err)
        done.append(m.source.rsplit('/', 1)[-1])
assert not any(k.split('.')[0] in ('torch', 'onnx') for k in sys.modules)
print(len(done), 'ok')
"""
    r = run_where_torch_and_onnx_are_blocked(code)
    assert r.returncode == 0 and r.stdout.strip().endswith("10 ok"), r.stdout + r.stderr


def test_review_a_manifest_contract_that_differs_from_the_files_is_refused(bundle, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    states = manifest["variants"]["fp32"]["contract"]["states"]
    states[0]["output"], states[1]["output"] = states[1]["output"], states[0]["output"]  # was: loaded, off by 0.05
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFormatError, match="its edge_rnn contract differs from the one .*manifest.json gives"):
        StreamingModel.load(copy, variant="fp32")
    manifest = json.loads((bundle / "manifest.json").read_text())
    for bad in ("x", None, [1]):  # was: AttributeError
        manifest["variants"]["int8"]["error"] = bad
        manifest["variants"]["fp16"]["speed"] = bad
        (copy / "manifest.json").write_text(json.dumps(manifest))
        assert StreamingModel.load(copy, max_error=1.0).variant in {"static", "static-int8", "fp32"}


def test_a_variant_keeping_its_weights_elsewhere_is_written_with_each_weights_files_hash(tmp_path):
    """package writes a hash for every file a variant loads, external weights files included, and the device
    reads them back and checks them (tests/test_loader_hostile.py holds the refusals)."""
    import shutil

    from edge_rnn.deploy._bundle import _described
    from edge_rnn.runtime._bundle import sha256_of
    from edge_rnn.runtime._manifest import FileRef, VariantEntry

    for name in ("lstm_layer.onnx", "weights.bin"):
        shutil.copy(DATA / "external" / name, tmp_path / name)
    ref = _described(tmp_path / "lstm_layer.onnx")["ref"]
    weights = tmp_path / "weights.bin"
    assert ref.external == (FileRef("weights.bin", sha256_of(weights), weights.stat().st_size),)
    entry = VariantEntry(ref=ref, error=VariantEntry.parse({}).error)
    assert VariantEntry.parse(json.loads(json.dumps(entry.to_json()))).ref == ref  # written and read back whole
    assert "external" not in _described(DATA / "lstm_layer.onnx")["ref"].to_json()  # none: nothing written
