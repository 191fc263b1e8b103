"""package and optimize: the int8 settings, refusals that set the exit code, the ORT form's files (needs onnx)."""

from __future__ import annotations

import collections
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")

from click.testing import CliRunner  # noqa: E402

from edge_rnn.cli import main  # noqa: E402
from edge_rnn.contract import Contract  # noqa: E402
from edge_rnn.deploy import Int8Settings, make_variant  # noqa: E402
from edge_rnn.errors import UnsupportedError  # noqa: E402

DATA = Path(__file__).parent / "data"


def _contract(path: Path) -> Contract:
    return Contract.from_metadata({p.key: p.value for p in onnx.load(str(path)).metadata_props})


# --------------------------------------------------------------- int8 settings
def test_int8_defaults_to_the_portable_settings_and_records_them(tmp_path):
    v = make_variant("int8", DATA / "token_gru.onnx", tmp_path / "t8.onnx")
    assert _contract(v.path).source["int8"] == Int8Settings().to_dict()
    assert Int8Settings().reduce_range and Int8Settings().target == "portable" and Int8Settings().weight_type == "uint8"
    assert Int8Settings() == Int8Settings.for_target("portable")
    assert any("reduce_range: exact on every CPU" in n for n in v.notes)


def test_optimize_takes_an_int8_target_and_overrides(tmp_path):
    # the full 8-bit range saturates on an AVX2 CPU without VNNI, so whether it is written depends on this CPU:
    # only what the settings say is asserted for it, and the variant kept is a 7-bit one, exact on every CPU
    r = CliRunner().invoke(main, ["optimize", str(DATA / "lstm_layer.onnx"), "--int8", "--int8-target", "vnni",
                                  "-o", str(tmp_path / "a"), "--steps", "2000"])
    assert r.exit_code in (0, 1), r.output
    assert "8-bit (full range: exact only with VNNI or on ARM64; saturates on AVX2)" in r.output
    r = CliRunner().invoke(main, ["optimize", str(DATA / "lstm_layer.onnx"), "--int8", "--int8-target", "vnni",
                                  "--int8-reduce-range", "--int8-per-channel", "-o", str(tmp_path), "--steps", "2000"])
    assert r.exit_code == 0, r.output
    got = _contract(tmp_path / "lstm_layer.int8.onnx").source["int8"]
    assert got == {"reduce_range": True, "per_channel": True, "weight_type": "int8", "keep_float": [],
                   "target": "vnni"}
    r = CliRunner().invoke(main, ["optimize", str(DATA / "lstm_layer.onnx"), "--int8", "--int8-target", "arm64",
                                  "--int8-reduce-range", "-o", str(tmp_path / "b"), "--steps", "2000"])
    assert r.exit_code == 0, r.output
    got = _contract(tmp_path / "b" / "lstm_layer.int8.onnx").source["int8"]
    assert (got["reduce_range"], got["weight_type"], got["target"]) == (True, "uint8", "arm64")


def test_keep_float_leaves_the_named_node_in_float32(tmp_path):
    head = "/inner/head/MatMul"  # the logits' Linear: its MatMul (the GRU's, inside the Scan, are quantised)

    def top(v):
        return {n.name: n.op_type for n in onnx.load(str(v.path)).graph.node}

    quantised = make_variant("int8", DATA / "token_gru.onnx", tmp_path / "q.onnx")
    kept = make_variant("int8", DATA / "token_gru.onnx", tmp_path / "k.onnx", int8=Int8Settings(keep_float=(head,)))
    assert top(kept).get(head) == "MatMul" and head not in top(quantised)
    assert _contract(kept.path).source["int8"]["keep_float"] == [head]
    with pytest.raises(UnsupportedError, match=r"keep_float 'Gemmm': no node of that name or operator type; the graph "
                                               r"has operators \["):
        make_variant("int8", DATA / "token_gru.onnx", tmp_path / "x.onnx", int8=Int8Settings(keep_float=("Gemmm",)))
    r = CliRunner().invoke(main, ["optimize", str(DATA / "token_gru.onnx"), "--int8", "--int8-keep-float", "Gemmm",
                                  "-o", str(tmp_path / "c"), "--steps", "2000"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "no node of that name" in r.output


@pytest.mark.parametrize("bad, match", [
    ({"weight_type": "int4"}, "weight_type: expected one of"), ({"reduce_range": 1}, "reduce_range: expected True"),
    ({"keep_float": "Gemm"}, "keep_float: expected node names"),
])
def test_int8_settings_are_validated(bad, match):
    with pytest.raises(UnsupportedError, match=match):
        Int8Settings(**bad)
    with pytest.raises(UnsupportedError, match="int8 target 'avx'"):
        Int8Settings.for_target("avx")
    assert Int8Settings.from_dict(Int8Settings(keep_float=("Gemm",)).to_dict()) == Int8Settings(keep_float=("Gemm",))


# --------------------------------------------------------------- refusals set the exit code
def test_package_exits_1_when_a_variant_asked_for_is_refused_unless_told_and_prints_the_reason_whole(tmp_path):
    import numpy as np

    np.save(tmp_path / "calib.npy", np.load(DATA / "expected.npz")["lstm_layer.x"] * 0.1)
    args = ["package", str(DATA / "lstm_layer.onnx"), "--variants", "fp32,static-int8", "--steps", "2000",
            "--calibration", str(tmp_path / "calib.npy")]  # calibrated on data unlike the check's: over its bound
    r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a")])
    assert r.exit_code == 1, r.output
    assert "variant(s) ['static-int8'] asked for and refused" in r.output and "--allow-refused" in r.output
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    why = manifest["refused"]["static-int8"]
    assert why["reason"] == "over_bound" and why["error"]["ok"] is False and set(manifest["variants"]) == {"fp32"}
    assert f"static-int8  refused: {why['message']}" in r.output  # the whole message, not cut off
    assert len(why["message"]) > 100 and "measured on" in why["message"]
    r = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b"), "--allow-refused"])
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------- the ORT form
def _initializer_bytes(ort_file: Path) -> dict[str, int]:
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs

    g = fbs.InferenceSession.InferenceSession.GetRootAs(ort_file.read_bytes(), 0).Model().Graph()
    names = {1: "float32", 10: "float16"}
    out: collections.Counter = collections.Counter()
    for i in range(g.InitializersLength()):
        t = g.Initializers(i)
        out[names.get(t.DataType(), "other")] += t.RawDataLength()
    return dict(out)


@pytest.fixture(scope="module")
def token_bundle(tmp_path_factory):
    from edge_rnn.deploy import package

    folder = tmp_path_factory.mktemp("tb") / "bundle"
    package(DATA / "token_gru.onnx", folder, variants=("fp32", "fp16", "int8"), ort_format=True, steps=2000)
    return folder


def test_the_fp16_ort_file_keeps_its_weights_in_half_precision(token_bundle):
    manifest = json.loads((token_bundle / "manifest.json").read_text())
    fp32 = _initializer_bytes(token_bundle / manifest["variants"]["fp32"]["ort"]["file"])
    half = _initializer_bytes(token_bundle / manifest["variants"]["fp16"]["ort"]["file"])
    assert half.get("float32", 0) < 0.05 * fp32["float32"]  # the weights are not folded back to float32
    assert half["float16"] == pytest.approx(fp32["float32"] / 2, rel=0.05)
    entry = manifest["variants"]["fp16"]["ort"]
    assert entry["size"] < manifest["variants"]["fp32"]["ort"]["size"]
    assert "float16" in entry["note"] and entry["speed"]["step_us"] > 0


def test_the_required_operators_config_names_the_bundles_own_files(token_bundle):
    text = (token_bundle / "required_operators.config").read_text()
    listed = [line[4:].strip() for line in text.splitlines() if line.startswith("# - ")]
    assert sorted(listed) == sorted(p.name for p in token_bundle.glob("*.ort"))
    assert "tmp" not in text and "/" not in "".join(listed)


# --------------------------------------------------------------- serve self-tests the variant it serves
def _serve(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edge_rnn.cli", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_serve_refuses_a_variant_that_fails_its_self_test_and_serves_it_with_no_self_test(tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    import numpy as np

    from edge_rnn.runtime._bundle import sha256_of
    from edge_rnn.runtime._golden import Golden, load_golden, save_golden

    bundle = tmp_path / "bundle"
    shutil.copytree(DATA / "bundle", bundle)
    g = load_golden(bundle / "golden.npz")
    save_golden(Golden(g.chunks, g.inputs, {k: v + np.float32(1) for k, v in g.outputs.items()}, g.states, g.whole),
                bundle / "golden.npz")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["golden"].update(sha256=sha256_of(bundle / "golden.npz"), size=(bundle / "golden.npz").stat().st_size)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    proc = _serve([str(bundle), "--variant", "int8", "--port", "0"])
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and "variant 'int8'" in err and "over its bound" in err, err
    assert len(err.strip().splitlines()) == 1  # one line, no traceback

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for args, said in (([str(DATA / "bundle"), "--variant", "int8"], "self-test of int8"),
                       ([str(bundle), "--variant", "int8", "--no-self-test"], None)):
        proc = _serve([*args, "--port", str(port), "--drain-timeout", "0"])
        try:
            deadline, ok = time.monotonic() + 30, False
            while time.monotonic() < deadline and not ok and proc.poll() is None:
                try:
                    ok = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
                except httpx.TransportError:
                    time.sleep(0.1)
            assert ok, proc.stderr.read() if proc.poll() is not None else "no answer in 30 s"
            assert httpx.get(f"http://127.0.0.1:{port}/v1/model").json()["variant"] == "int8"
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=20)
        assert proc.returncode == 0, err
        assert (said in err) if said else "self-test" not in err, err


# --------------------------------------------------------------- the review's reproducers
def test_a_variant_that_ignores_its_incoming_state_fails_the_self_test(tmp_path):
    from onnx import helper, numpy_helper

    from edge_rnn.errors import SelfTestError
    from edge_rnn.runtime import StreamingModel
    from edge_rnn.runtime._bundle import sha256_of

    bundle = tmp_path / "bundle"
    shutil.copytree(DATA / "bundle", bundle)
    path = bundle / "lstm_layer.onnx"
    m = onnx.load(str(path))
    zero = numpy_helper.from_array(__import__("numpy").zeros((), "float32"), "zero_state")
    m.graph.initializer.append(zero)
    for name in ("h0", "c0"):  # every use of the state input reads h0 * 0: the stream restarts at each call
        for node in m.graph.node:
            node.input[:] = [f"{name}_ignored" if i == name else i for i in node.input]
        m.graph.node.insert(0, helper.make_node("Mul", [name, "zero_state"], [f"{name}_ignored"]))
    onnx.save(m, str(path))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["variants"]["fp32"].update(sha256=sha256_of(path), size=path.stat().st_size)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SelfTestError, match="variant 'fp32'"):
        StreamingModel.load(bundle, variant="fp32", self_test=True)


def test_package_with_every_variant_refused_exits_1_and_leaves_nothing_even_with_allow_refused(tmp_path):
    import numpy as np

    np.save(tmp_path / "calib.npy", np.load(DATA / "expected.npz")["lstm_layer.x"] * 0.1)
    r = CliRunner().invoke(main, ["package", str(DATA / "lstm_layer.onnx"), "-o", str(tmp_path / "none"),
                                  "--variants", "static-int8", "--steps", "2000", "--calibration",
                                  str(tmp_path / "calib.npy"), "--allow-refused"])
    assert r.exit_code == 1 and "no variant left to bundle" in r.output, r.output
    assert not (tmp_path / "none").exists() and not list(tmp_path.glob(".none*"))


def test_keep_float_is_checked_against_the_model_before_any_work(tmp_path):
    t0 = time.monotonic()
    r = CliRunner().invoke(main, ["package", str(DATA / "lstm_layer.onnx"), "-o", str(tmp_path / "b"),
                                  "--variants", "fp32,int8", "--int8-keep-float", "Nope"])
    assert r.exit_code == 1 and "keep_float 'Nope': no node of that name" in r.output
    assert not (tmp_path / "b").exists() and time.monotonic() - t0 < 10  # refused up front, nothing measured
    r = CliRunner().invoke(main, ["package", str(DATA / "lstm_layer.onnx"), "-o", str(tmp_path / "c"),
                                  "--variants", "fp32,int8,static-int8", "--int8-keep-float", "LSTM"])
    assert r.exit_code == 1 and "static-int8's unrolled graph has nodes of its own" in r.output


@pytest.mark.parametrize("source, keep", [("token_gru.onnx", "gru/GRU_7"), ("token_gru.onnx", "GRU")])
def test_keep_float_names_the_models_own_nodes_also_where_int8_rewrites_them(tmp_path, source, keep):
    from edge_rnn._inspect import operator_counts

    plain = make_variant("int8", DATA / source, tmp_path / "q.onnx")
    kept = make_variant("int8", DATA / source, tmp_path / "k.onnx", int8=Int8Settings(keep_float=(keep,)))
    def quantised(v) -> int:  # quantised operators, in the Scan bodies too
        return sum(n for k, n in operator_counts(onnx.load(str(v.path)).graph).items()
                   if "Quantize" in k or "Integer" in k)

    assert quantised(plain) > quantised(kept) > 0  # the GRU stays float, the logits' MatMul is still quantised
    assert "GRU" in {n.op_type for n in onnx.load(str(kept.path)).graph.node}  # the native float32 operator


@pytest.mark.parametrize("weight_type", ["int8", "uint8"])
@pytest.mark.parametrize("reduce_range", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_quantised_recurrent_weights_stay_in_the_range_that_is_exact_on_every_cpu(weight_type, reduce_range,
                                                                                  per_channel):
    import numpy as np

    from edge_rnn.deploy._int8_recurrent import quantized_weight

    w = np.random.default_rng(0).standard_normal((80, 768)).astype(np.float32) * 0.3
    w[:, 5] = 0.0  # a column of zeros: its scale must stay finite
    q, scale, zero = quantized_weight(w, Int8Settings(reduce_range=reduce_range, per_channel=per_channel,
                                                      weight_type=weight_type))
    assert q.dtype == np.dtype(weight_type) and np.isfinite(scale).all() and (scale > 0).all()
    assert scale.shape == ((768,) if per_channel else ())
    if weight_type == "int8":  # u8 x s8 pairs on AVX2 sum in int16: 2 x 255 x 63 = 32,130 <= 32,767 with 7 bits
        assert zero is None and np.abs(q.astype(int)).max() <= (63 if reduce_range else 127)
        back = q * scale
    else:
        assert q.max() <= (127 if reduce_range else 255) and zero.dtype == np.uint8
        back = (q.astype(np.float32) - zero) * scale
    assert np.abs(back - w).max() <= 0.51 * scale.max() + 1e-7  # round to nearest: half a step at most


def test_keep_float_names_only_what_the_model_has_and_never_keeps_everything(tmp_path):
    """Operator types of the rewritten graph (Scan, DynamicQuantizeMatMul) are not the model's: refused, not
    silently ignored; keeping every quantisable node leaves no int8 variant."""
    for name in ("Scan", "DynamicQuantizeMatMul"):
        with pytest.raises(UnsupportedError, match=rf"keep_float '{name}': no node .* operators \[.*'GRU'"):
            make_variant("int8", DATA / "token_gru.onnx", tmp_path / "x.onnx", int8=Int8Settings(keep_float=(name,)))
    with pytest.raises(UnsupportedError, match="nothing was quantised"):
        make_variant("int8", DATA / "lstm_layer.onnx", tmp_path / "y.onnx", int8=Int8Settings(keep_float=("LSTM",)))


def test_a_golden_stream_over_the_budget_keeps_every_input_and_state_and_fewer_outputs(tmp_path, monkeypatch):
    """A large fixed chunk needs a long golden stream; past the byte budget its outputs are kept at fewer steps
    (every chunk's last among them), while the inputs and the states at every chunk end are all there."""
    import numpy as np

    import edge_rnn.deploy._bundle as bundle_module
    from edge_rnn.deploy import package
    from edge_rnn.runtime import StreamingModel
    from edge_rnn.runtime._golden import MIN_CHUNKS, load_golden

    monkeypatch.setattr(bundle_module, "_GOLDEN_BUDGET", 700)  # bytes: even two chunks of 8 steps are over it
    package(DATA / "lstm_layer.onnx", tmp_path / "b", variants=("fp32", "int8", "static"), steps=2000, chunk=8)
    g = load_golden(tmp_path / "b" / "golden.npz")
    assert len(g.chunks) >= 2 and all(c % 8 == 0 for c in g.chunks)
    assert g.output_steps is not None and len(g.output_steps) < g.steps and g.outputs["y"].shape[0] == len(
        g.output_steps)
    ends = set((np.cumsum(g.chunks) - 1).tolist())
    assert ends <= set(g.output_steps) and g.inputs["x"].shape[0] == g.steps and len(g.states["c0"]) == len(g.chunks)
    assert len(g.chunks) == 2 < MIN_CHUNKS  # four chunks of 8 steps did not fit either
    for v in ("fp32", "int8", "static"):
        assert StreamingModel.load(tmp_path / "b", variant=v, self_test=True).self_test.ok
