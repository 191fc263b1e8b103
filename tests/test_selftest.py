"""A bundle proves itself on the CPU it runs on: golden vectors, self_test=True, edge-rnn check, the host record.

Torch-free, on the committed bundle tests/data/bundle (lstm_layer.onnx with every variant, packaged on the machine
its manifest names): replaying it here is what a device does with a bundle made elsewhere. Only the tests that
package anew need onnx.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from bundle_copies import copy_bundle
from bundle_copies import read_manifest as _manifest
from bundle_copies import write_manifest as _write_manifest
from click.testing import CliRunner

from edge_rnn.cli import main
from edge_rnn.errors import ModelFormatError, SelfTestError, UnsupportedError
from edge_rnn.runtime import StreamingModel
from edge_rnn.runtime._bundle import sha256_of
from edge_rnn.runtime._golden import Golden, load_golden, replay, save_golden
from edge_rnn.runtime._host import FEATURES, host_record, int8_kernel
from edge_rnn.runtime._manifest import VariantEntry
from edge_rnn.runtime._selftest import SelfTest, estimate_error

DATA = Path(__file__).parent / "data"
BUNDLE = DATA / "bundle"
VARIANTS = ["fp32", "int8", "fp16", "static", "static-int8"]


@pytest.fixture
def copy(tmp_path):
    return copy_bundle(tmp_path)


def _shift_golden(folder: Path, by: float) -> None:
    """Every reference output and state moved by ``by``, and the manifest's hash fixed up to match."""
    g = load_golden(folder / "golden.npz")
    save_golden(Golden(g.chunks, g.inputs, {k: v + np.float32(by) for k, v in g.outputs.items()},
                       {k: v + np.float32(by) for k, v in g.states.items()}, g.whole), folder / "golden.npz")
    manifest = _manifest(folder)
    manifest["golden"].update(sha256=sha256_of(folder / "golden.npz"), size=(folder / "golden.npz").stat().st_size)
    _write_manifest(folder, manifest)


# --------------------------------------------------------------- an honest bundle
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_of_an_honest_bundle_passes_its_self_test_on_this_cpu(variant):
    m = StreamingModel.load(BUNDLE, variant=variant, self_test=True)
    r = m.self_test
    assert m.variant == variant and r.ok and r.variant == variant
    entry = _manifest(BUNDLE)["variants"][variant]
    assert (r.check.atol, r.check.rtol) == (entry["golden"]["bound"]["atol"], entry["golden"]["bound"]["rtol"])
    assert {t.name for t in r.check.tensors} == {"y", "hn", "cn"}  # every output and state (by its output name)
    assert r.check.calls >= 5 and 0 <= r.check.worst_fraction <= 1
    if variant == "fp32":
        assert r.host_max_abs == 0.0  # the reference itself, where it was packaged


def test_the_golden_stream_is_short_and_shared_and_its_replay_is_the_float32_model(copy):
    manifest = _manifest(BUNDLE)
    spec = manifest["golden"]
    assert spec["size"] == (BUNDLE / "golden.npz").stat().st_size < 300 << 10  # a few hundred KiB at most
    g = load_golden(BUNDLE / "golden.npz")
    assert g.steps == spec["steps"] >= 32 and list(g.chunks) == spec["chunks"] and len(g.chunks) >= 4
    assert g.inputs["x"].shape == (g.steps, 4) and g.outputs["y"].shape == (g.steps, 6)
    assert g.states["c0"].shape == (len(g.chunks), 2, 6)
    fp32 = StreamingModel.load(BUNDLE / "lstm_layer.onnx")
    check = replay(fp32, g, atol=1e-5, rtol=1e-4)
    assert check.ok and check.max_abs < 1e-5


def test_check_prints_each_variant_against_the_packaging_host_and_exits_0():
    r = CliRunner().invoke(main, ["check", str(BUNDLE)])
    assert r.exit_code == 0, r.output
    assert "packaged on: AMD EPYC" in r.output and "this machine:" in r.output and "int8 kernel" in r.output
    for v in VARIANTS:
        assert any(line.startswith(v + " ") and line.rstrip().endswith("ok") for line in r.output.splitlines()), v
    r = CliRunner().invoke(main, ["check", str(BUNDLE), "--variant", "int8"])
    assert r.exit_code == 0 and "fp16" not in r.output.split("verdict", 1)[1]
    r = CliRunner().invoke(main, ["check", str(BUNDLE), "--variant", "int4"])
    assert r.exit_code == 1 and "expected some of" in r.output


# --------------------------------------------------------------- a dishonest one
def test_golden_outputs_shifted_beyond_the_bound_with_the_hash_fixed_up_fail_the_self_test(copy):
    _shift_golden(copy, 0.2)  # 4x the int8 bound's floor: every variant is now "wrong" against its golden stream
    with pytest.raises(SelfTestError) as e:
        StreamingModel.load(copy, variant="int8", self_test=True)
    msg = str(e.value)
    assert "variant 'int8'" in msg and "x its bound 0.05 + 0.05*|y| here" in msg
    assert "the packaging host measured" in msg and "AMD EPYC" in msg  # the host's figure and machine
    assert "This CPU:" in msg and "int8 kernel" in msg
    on = [f for f, v in host_record()["features"].items() if v]
    assert all(f in msg for f in on)  # this CPU's relevant features are named
    r = CliRunner().invoke(main, ["check", str(copy)])
    assert r.exit_code == 1 and "OVER ITS BOUND" in r.output and "over their bound on this machine" in r.output
    assert StreamingModel.load(copy, variant="int8").self_test is None  # without the self-test it still loads


def test_a_shift_within_the_bound_still_passes_it_is_a_bound_not_the_host_kernels_exact_output(copy):
    _shift_golden(copy, 0.01)  # int8's bound is 5e-2 + 5e-2 |y|: 0.01 more error stays inside it
    assert StreamingModel.load(copy, variant="int8", self_test=True).self_test.ok
    with pytest.raises(SelfTestError, match="variant 'fp32'"):  # fp32's bound (1e-5 + 1e-4 |y|) is far tighter
        StreamingModel.load(copy, variant="fp32", self_test=True)


def test_golden_vectors_edited_without_fixing_the_hash_are_refused(copy):
    data = bytearray((copy / "golden.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "golden.npz").write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match="golden.npz: its SHA-256 does not match manifest.json"):
        StreamingModel.load(copy, variant="int8", self_test=True)
    r = CliRunner().invoke(main, ["check", str(copy)])
    assert r.exit_code == 1 and "golden vectors were changed" in r.output
    (copy / "golden.npz").unlink()
    with pytest.raises(ModelFormatError, match="as the golden vectors but missing"):
        StreamingModel.load(copy, variant="fp16", self_test=True)


@pytest.mark.parametrize("junk", [b"", b"PK\x03\x04 not a zip", b"\x93NUMPY not an npz"])
def test_a_golden_file_that_is_not_one_is_refused_in_one_line(copy, junk):
    (copy / "golden.npz").write_bytes(junk)
    manifest = _manifest(copy)
    manifest["golden"].update(sha256=sha256_of(copy / "golden.npz"), size=len(junk))
    _write_manifest(copy, manifest)
    with pytest.raises(ModelFormatError, match="expected golden vectors written by edge-rnn package"):
        StreamingModel.load(copy, variant="int8", self_test=True)


def test_a_bundle_without_golden_vectors_and_a_model_file_refuse_the_self_test(copy):
    manifest = _manifest(copy)
    del manifest["golden"]
    manifest["format"] = 1  # as bundles were packaged before golden vectors
    _write_manifest(copy, manifest)
    assert StreamingModel.load(copy, variant="int8").variant == "int8"  # still readable
    with pytest.raises(UnsupportedError, match="no golden vectors"):
        StreamingModel.load(copy, variant="int8", self_test=True)
    with pytest.raises(UnsupportedError, match="pick from a bundle folder"):
        StreamingModel.load(DATA / "lstm_layer.onnx", self_test=True)
    with pytest.raises(UnsupportedError, match="self_test: expected True or False"):
        StreamingModel.load(BUNDLE, self_test="yes")


@pytest.mark.parametrize("bound", [None, {"atol": -1, "rtol": 0}, {"atol": "x", "rtol": 0}, {"atol": 1e-2}])
def test_a_manifest_with_a_forged_bound_is_refused(copy, bound):
    manifest = _manifest(copy)
    manifest["variants"]["int8"]["golden"]["bound"] = bound
    _write_manifest(copy, manifest)
    with pytest.raises(ModelFormatError, match="expected golden.bound with atol > 0 and rtol"):
        StreamingModel.load(copy, variant="int8", self_test=True)


def test_the_committed_manifest_reads_into_the_schema_and_writes_back_byte_for_byte():
    """A bundle packaged on another machine with an earlier edge-rnn reads into the typed manifest, and nothing of
    it is lost: written again, it is the same file."""
    from edge_rnn.runtime._bundle import load_manifest

    manifest = load_manifest(BUNDLE)
    assert json.dumps(manifest.to_json(), indent=1) == (BUNDLE / "manifest.json").read_text()
    assert manifest.format == 2 and list(manifest.variants) == VARIANTS and manifest.host["cpu"] == "AMD EPYC"
    assert manifest.golden.ref.file == "golden.npz" and manifest.golden.steps == sum(manifest.golden.chunks)
    assert manifest.variants["fp32"].error.note == "the reference" and manifest.variants["fp32"].error.max_abs == 0.0


def test_a_manifest_field_that_is_not_what_it_should_be_reads_as_none_and_is_refused_where_it_is_used():
    """Parsing refuses only what makes a file no manifest; a field of the wrong kind reads as None (or as counts
    no golden stream has), so the check that uses it refuses it with its own message, and the rest still loads."""
    from edge_rnn.runtime._manifest import GoldenSpec, Manifest, VariantEntry

    entry = VariantEntry.parse({"file": "../outside.onnx", "sha256": 7, "error": "x", "speed": {"step_us": 10**400},
                                "golden": {"bound": {"atol": True, "rtol": float("nan")}}, "ort": [1]})
    assert (entry.ref.file, entry.ref.sha256, entry.error.max_abs, entry.error.grows) == (None, None, None, None)
    assert entry.speed.step_us is None and (entry.golden.bound.atol, entry.golden.bound.rtol) == (None, None)
    assert entry.ort is None and entry.contract is None and entry.operators is None
    spec = GoldenSpec.parse({"file": "golden.npz", "sha256": "ab", "steps": 38.0, "chunks": [8, "8", None]})
    assert spec.steps == 38 and spec.chunks == (8, -1, -1)  # 38.0 is 38, as JSON compares; "8" is no count
    odd, absent = GoldenSpec.parse({"steps": "38", "chunks": {"a": 1}}), GoldenSpec.parse({})
    assert (odd.steps, odd.chunks) == (-1, ()) and (absent.steps, absent.chunks) == (None, None)
    one = {"format": 2, "variants": {"fp32": {}}}
    assert Manifest.parse({**one, "golden": None}, "m.json").golden is None  # no golden vectors: self-test refused
    assert Manifest.parse({**one, "golden": "x"}, "m.json").golden.ref.file is None  # a broken entry: refused as one
    for data, match in ((["x"], "expected bundle format 2, got 'list'"), ({"format": True}, "got True"),
                        ({"format": 3, "variants": {}}, "got 3"), ({"format": 2, "variants": {}}, "'variants'"),
                        ({"format": 1, "variants": {"fp32": []}}, "'variants' to map names to entries")):
        with pytest.raises(ModelFormatError, match=re.escape(match)):
            Manifest.parse(data, "m.json")


# --------------------------------------------------------------- max_error by what this CPU measured
def test_max_error_with_the_self_test_skips_a_variant_that_fails_here(copy):
    manifest = _manifest(copy)
    manifest["variants"]["int8"]["speed"]["step_us"] = 0.001  # the fastest, as the packaging host saw it
    manifest["variants"]["int8"]["golden"]["bound"] = {"atol": 1e-9, "rtol": 0.0}  # and over its bound here
    _write_manifest(copy, manifest)
    assert StreamingModel.load(copy, max_error=0.05).variant == "int8"  # the manifest alone picks it
    m = StreamingModel.load(copy, max_error=0.05, self_test=True)
    assert m.variant != "int8" and m.self_test.ok and m.self_test.variant == m.variant
    # fp32 and static replay within float32 rounding on any CPU (1e-7 here, not 0 on another one): within 1e-5
    assert StreamingModel.load(copy, max_error=1e-5, self_test=True).variant in {"fp32", "static"}
    del manifest["variants"]["fp32"], manifest["variants"]["static"]
    _write_manifest(copy, manifest)
    with pytest.raises(UnsupportedError, match=r"no variant is within it on this CPU; projected here \{'int8'"):
        StreamingModel.load(copy, max_error=1e-5, self_test=True)
    manifest["variants"]["int8"]["error"]["max_abs"] = 0.0  # within max_error by the manifest, over its bound here
    _write_manifest(copy, manifest)
    with pytest.raises(UnsupportedError, match="'int8': 'over its bound here'"):
        StreamingModel.load(copy, max_error=1e-5, self_test=True)


def test_the_projected_error_scales_the_hosts_long_stream_figure_by_the_golden_error_here():
    from edge_rnn.runtime._golden import GoldenCheck, TensorCheck

    def result(here: float, host: float | None) -> SelfTest:
        return SelfTest("int8", GoldenCheck(5e-2, 5e-2, 3, [TensorCheck("y", "output", here, 0.1)]), host, 0.1, {})

    def variant(error: dict) -> VariantEntry:  # a manifest's entry, as a device reads it
        return VariantEntry.parse({"error": error})

    entry = variant({"max_abs": 0.01})
    assert estimate_error(result(0.004, 0.001), entry) == pytest.approx(0.04)  # 4x worse here: 4x the long figure
    assert estimate_error(result(0.001, 0.002), entry) == pytest.approx(0.01)  # better here: never below the host's
    assert estimate_error(result(0.02, 0.02), entry) == pytest.approx(0.02)  # never below the replay's own
    assert estimate_error(result(1e-7, 0.0), variant({"max_abs": 0.0})) == pytest.approx(1e-7)  # fp32
    assert estimate_error(result(0.001, None), entry) == pytest.approx(0.01)  # no host figure: the larger of the two
    assert estimate_error(result(0.001, 0.001), variant({})) == float("inf")  # no long-stream figure: never picked


# --------------------------------------------------------------- the host record
def test_the_host_record_names_the_cpu_its_int8_features_onnxruntime_and_the_os():
    import onnxruntime

    here = host_record()
    assert here["cpu"] and here["machine"] and here["os"] and here["cpus"] >= 1
    assert here["onnxruntime"] == onnxruntime.__version__
    assert set(here["features"]) == set(FEATURES) and all(isinstance(v, bool) for v in here["features"].values())
    assert here["features_read_from"] in ("cpuid", "getauxval", "sysctl", "/proc/cpuinfo", "nothing (features unknown)")
    if here["machine"] in ("x86_64", "AMD64"):
        assert here["features"]["avx2"] or not here["features"]["avx512f"]  # no AVX-512 CPU lacks AVX2
    packaged = _manifest(BUNDLE)["host"]
    assert set(packaged["features"]) == set(FEATURES) and packaged["onnxruntime"] and packaged["os"]


@pytest.mark.parametrize("features, kernel", [
    ({"avx2": True}, "avx2"), ({"avx2": True, "avx512bw": True}, "avx2"),
    ({"avx2": True, "avx512_vnni": True}, "vnni"), ({"avx2": True, "avx_vnni": True}, "vnni"),
    ({"neon": True}, "arm64"), ({"neon": True, "dotprod": True}, "arm64"), ({}, "unknown"),
])
def test_which_int8_kernel_a_cpu_runs_follows_its_features(features, kernel):
    assert int8_kernel(features).startswith(kernel)
    assert ("saturates" in int8_kernel(features)) == (kernel == "avx2")


# --------------------------------------------------------------- hostile bundles (the review's reproducers)
def test_a_json_integer_too_large_for_a_float_is_no_number(copy):
    manifest = _manifest(copy)
    manifest["variants"]["int8"]["golden"]["bound"]["atol"] = 10**400
    manifest["variants"]["fp16"]["error"]["max_abs"] = 10**400
    manifest["variants"]["fp16"]["speed"]["step_us"] = 10**400
    _write_manifest(copy, manifest)
    with pytest.raises(ModelFormatError, match="expected golden.bound with atol > 0"):
        StreamingModel.load(copy, variant="int8", self_test=True)
    assert StreamingModel.load(copy, max_error=0.1).variant != "fp16"  # not a number: never picked, no crash
    assert StreamingModel.load(copy, max_error=0.1, self_test=True).variant != "fp16"
    r = CliRunner().invoke(main, ["inspect", str(copy)])
    assert "Traceback" not in r.output and r.exit_code == 0, r.output


def _rewrite_golden(folder: Path, arrays: dict, meta: dict | None = None) -> None:
    """golden.npz rewritten with some members replaced (or its meta), and the manifest's hash fixed up."""
    import io
    import zipfile

    with np.load(folder / "golden.npz", allow_pickle=False) as z:
        files = {k: z[k] for k in z.files}
    if meta is not None:
        files["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    files.update(arrays)
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in files.items() if not isinstance(v, bytes)})
    if any(isinstance(v, bytes) for v in files.values()):  # a raw member: an .npy header written by hand
        with zipfile.ZipFile(buf, "a") as z:
            for k, v in files.items():
                if isinstance(v, bytes):
                    z.writestr(k + ".npy", v)
    (folder / "golden.npz").write_bytes(buf.getvalue())
    manifest = _manifest(folder)
    manifest["golden"].update(sha256=sha256_of(folder / "golden.npz"), size=(folder / "golden.npz").stat().st_size)
    manifest["golden"].pop("steps"), manifest["golden"].pop("chunks")
    _write_manifest(folder, manifest)


def _meta(folder: Path) -> dict:
    with np.load(folder / "golden.npz", allow_pickle=False) as z:
        return json.loads(z["meta"].tobytes().decode())


@pytest.mark.parametrize("case", ["short_inputs", "scalar_input", "huge_chunk", "float_chunk", "bool_format",
                                  "huge_header", "extra_member", "state_rows", "zero_chunk", "output_steps",
                                  "thinned_outputs"])
def test_a_golden_file_that_does_not_fit_is_one_clean_error(copy, case):
    g = load_golden(copy / "golden.npz")
    meta = _meta(copy)
    if case == "short_inputs":
        _rewrite_golden(copy, {"inputs0": g.inputs["x"][:-3]})
    elif case == "scalar_input":
        _rewrite_golden(copy, {"inputs0": np.float32(1.0)})
    elif case == "huge_chunk":
        _rewrite_golden(copy, {}, {**meta, "chunks": [10**30]})
    elif case == "float_chunk":
        _rewrite_golden(copy, {}, {**meta, "chunks": [c + 0.5 for c in meta["chunks"]]})
    elif case == "bool_format":
        _rewrite_golden(copy, {}, {**meta, "format": True})
    elif case == "zero_chunk":
        _rewrite_golden(copy, {}, {**meta, "chunks": [0, *meta["chunks"]]})
    elif case == "output_steps":  # not increasing
        _rewrite_golden(copy, {}, {**meta, "output_steps": [5, 3]})
    elif case == "thinned_outputs":  # says two steps are kept, holds every step's outputs
        _rewrite_golden(copy, {}, {**meta, "output_steps": [0, 1]})
    elif case == "huge_header":  # a tiny member whose header claims 4 TiB
        header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"
        header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
        _rewrite_golden(copy, {"outputs0": b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header})
    elif case == "extra_member":
        _rewrite_golden(copy, {"inputs7": np.zeros(3, np.float32)})
    else:
        _rewrite_golden(copy, {"states0": g.states["h0"][:-1]})
    with pytest.raises(ModelFormatError):
        StreamingModel.load(copy, variant="int8", self_test=True)
    r = CliRunner().invoke(main, ["check", str(copy), "--variant", "static"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output


def test_the_manifests_golden_steps_must_be_the_files(copy):
    manifest = _manifest(copy)
    manifest["golden"]["chunks"] = [1]
    _write_manifest(copy, manifest)
    with pytest.raises(ModelFormatError, match="golden steps and chunks differ"):
        StreamingModel.load(copy, variant="int8", self_test=True)


def test_max_error_without_the_hosts_golden_figure_falls_back_to_what_was_measured(copy):
    manifest = _manifest(copy)
    for e in manifest["variants"].values():
        del e["golden"]["measured"]
    _write_manifest(copy, manifest)
    assert StreamingModel.load(copy, max_error=1.0, self_test=True).self_test.ok


def test_untrusted_manifest_text_is_printed_on_one_line(copy):
    manifest = _manifest(copy)
    manifest["host"]["cpu"] = "Totally Fine CPU\nError: \x1b[32mall variants ok"
    manifest["variants"]["a\nb"] = manifest["variants"]["fp16"]
    _write_manifest(copy, manifest)
    _shift_golden(copy, 0.2)
    with pytest.raises(SelfTestError) as e:
        StreamingModel.load(copy, variant="int8", self_test=True)
    assert "\n" not in str(e.value) and "\x1b" not in str(e.value)
    r = CliRunner().invoke(main, ["check", str(copy)])
    assert r.exit_code == 1 and "\x1b" not in r.output
    assert not any(line.startswith("Error: all variants ok") for line in r.output.splitlines())
    assert "a\\x0ab" in r.output
    r = CliRunner().invoke(main, ["inspect", str(copy)])
    assert "a\\x0ab" in r.output and "\x1b" not in r.output


def test_a_manifest_linked_out_of_the_folder_is_refused(copy, tmp_path):
    outside = tmp_path / "elsewhere.json"
    (copy / "manifest.json").rename(outside)
    (copy / "manifest.json").symlink_to(outside)
    with pytest.raises(ModelFormatError, match="a link out of the bundle's folder"):
        StreamingModel.load(copy)


def test_a_golden_stream_always_crosses_several_chunk_ends():
    from edge_rnn.runtime._golden import MIN_CHUNKS, golden_chunks

    for multiple in (1, 4, 256):
        for steps in (1, 32, 2048):
            chunks = golden_chunks(np.random.default_rng(0), steps, multiple)
            assert len(chunks) >= MIN_CHUNKS and sum(chunks) >= steps and all(c % multiple == 0 for c in chunks)
    assert len(load_golden(BUNDLE / "golden.npz").chunks) >= MIN_CHUNKS
