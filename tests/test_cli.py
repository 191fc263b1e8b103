"""The edge-rnn command: export, verify, inspect, and one clear line for every user mistake."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")  # needs the export extra (torch, onnx): skipped where only the runtime is installed

import os
import subprocess
import sys

import onnx
import torch
from cli_errors import one_line_error
from click.testing import CliRunner

from edge_rnn.cli import main

BASE = ["export", "--arch", "lstm", "--input-size", "4", "--hidden-size", "6", "--long-steps", "300"]


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("flags", [
    [],
    ["--num-layers", "2", "--batch-first"],
    ["--num-layers", "2", "--proj-size", "3"],
    ["--bidirectional", "--no-bias"],
    ["--cell"],
    ["--decomposed", "--num-layers", "2"],
])
def test_export_verify_inspect(tmp_path, flags):
    out = tmp_path / "m.onnx"
    r = run(*BASE, *flags, "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "parity: " in r.stdout and "against PyTorch float64" in r.stdout and ": ok" in r.stdout
    assert "exported in" in r.stdout
    r = run("verify", str(out), "--long-steps", "300")
    assert r.exit_code == 0 and ": ok" in r.stdout, r.output
    r = run("inspect", str(out))
    assert r.exit_code == 0
    assert "h0" in r.stdout and "opset:     ai.onnx 17" in r.stdout and "operators:" in r.stdout


def test_export_from_weights_and_verify_needs_them(tmp_path):
    torch.manual_seed(5)
    gru = torch.nn.GRU(4, 6, num_layers=2)
    torch.save(gru.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "g.onnx"
    r = run("export", "--arch", "gru", "--input-size", "4", "--hidden-size", "6", "--num-layers", "2",
            "--weights", str(tmp_path / "w.pt"), "--long-steps", "200", "-o", str(out))
    assert r.exit_code == 0, r.output
    # the graph holds the saved weights, not seeded ones
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer}
    w = next(v for k, v in inits.items() if k.startswith("W_"))
    assert abs(float(w.sum()) - float(gru.weight_ih_l0.detach().sum())) < 1e-4
    one_line_error(run("verify", str(out)), "pass it with --weights")
    assert run("verify", str(out), "--weights", str(tmp_path / "w.pt"), "--long-steps", "200").exit_code == 0
    # the wrong weights fail parity, listing every mismatch
    torch.save(torch.nn.GRU(4, 6, num_layers=2).state_dict(), tmp_path / "other.pt")
    r = run("verify", str(out), "--weights", str(tmp_path / "other.pt"), "--long-steps", "0")
    assert r.exit_code == 1 and "FAIL" in r.stdout


def test_inspect_any_onnx_file_without_contract(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["a"], ["b"])], "plain",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3])],
                          [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 3])])
    onnx.save(helper.make_model(g), tmp_path / "plain.onnx")
    r = run("inspect", str(tmp_path / "plain.onnx"))
    assert r.exit_code == 0
    assert "no edge_rnn contract" in r.stdout and "Relu x1" in r.stdout and "(n, 3)" in r.stdout
    one_line_error(run("verify", str(tmp_path / "plain.onnx")), "no edge_rnn contract")


def test_user_mistakes_give_one_line_and_exit_1(tmp_path):
    one_line_error(run("inspect", str(tmp_path / "missing.onnx")), "no such file")
    one_line_error(run("verify", str(tmp_path / "missing.onnx")), "no such file")
    (tmp_path / "junk.onnx").write_bytes(b"this is not a protobuf \xff\xfe" * 10)
    one_line_error(run("inspect", str(tmp_path / "junk.onnx")), "expected an ONNX model")
    one_line_error(run(*BASE, "--weights", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "m.onnx")),
                   "no such file")
    one_line_error(run("export", "--arch", "gru", "--input-size", "4", "--hidden-size", "6", "--proj-size", "3",
                       "-o", str(tmp_path / "m.onnx")), "proj_size only on an LSTM")
    one_line_error(run(*BASE, "--nonlinearity", "relu", "-o", str(tmp_path / "m.onnx")), "--nonlinearity relu")
    one_line_error(run(*BASE, "--cell", "--bidirectional", "-o", str(tmp_path / "m.onnx")), "a cell has one layer")


def test_weights_that_do_not_fit(tmp_path):
    torch.save(torch.nn.LSTM(4, 6).state_dict(), tmp_path / "lstm1.pt")
    torch.save(torch.nn.LSTM(4, 9).state_dict(), tmp_path / "wide.pt")
    out = str(tmp_path / "m.onnx")
    one_line_error(run(*BASE, "--num-layers", "2", "--weights", str(tmp_path / "lstm1.pt"), "-o", out),
                   "missing ['bias_hh_l1'")
    one_line_error(run(*BASE, "--weights", str(tmp_path / "wide.pt"), "-o", out), "weight_ih_l0 expected (24, 4)")
    torch.save([1, 2], tmp_path / "list.pt")
    one_line_error(run(*BASE, "--weights", str(tmp_path / "list.pt"), "-o", out), "expected a state_dict")


class Custom:  # pickled by reference: weights_only=True must refuse to load it
    pass


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path):
    torch.save({"weight_ih_l0": Custom()}, tmp_path / "evil.pt")
    r = run(*BASE, "--weights", str(tmp_path / "evil.pt"), "-o", str(tmp_path / "m.onnx"))
    one_line_error(r, "weights_only=True")
    assert "torch.save(module.state_dict(), path)" in r.stderr


def test_usage_errors_exit_2():
    r = CliRunner().invoke(main, ["export", "--arch", "transformer", "--input-size", "1", "--hidden-size", "1"])
    assert r.exit_code == 2


def test_console_script_starts_without_importing_torch():
    code = "import sys; from edge_rnn.cli import main; assert 'torch' not in sys.modules and 'onnx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    r = subprocess.run(["edge-rnn", "--help"], capture_output=True, text=True, env={**os.environ})
    assert r.returncode == 0 and "export" in r.stdout and "inspect" in r.stdout


def test_run_streams_a_npy_file_and_matches_one_pass(tmp_path):
    import numpy as np

    out = tmp_path / "m.onnx"
    assert run(*BASE, "--num-layers", "2", "--long-steps", "0", "-o", str(out)).exit_code == 0
    data = np.random.default_rng(0).standard_normal((50, 4))  # float64, as numpy saves by default
    np.save(tmp_path / "in.npy", data)
    r = run("run", str(out), "--input", str(tmp_path / "in.npy"), "--chunk", "7", "-o", str(tmp_path / "y.npy"))
    assert r.exit_code == 0, r.output
    assert "streamed 50 steps in 8 calls of up to 7" in r.stdout
    y = np.load(tmp_path / "y.npy")
    from edge_rnn.runtime import StreamingModel

    m = StreamingModel.load(out)
    want = m.step(m.open_stream(), data.astype(np.float32))["y"]
    assert y.shape == (50, 6) and np.abs(y - want).max() <= 1e-6
    one_line_error(run("run", str(out), "--input", str(tmp_path / "nope.npy"), "-o", str(tmp_path / "y.npy")),
                   "no such file")
    np.save(tmp_path / "bad.npy", np.zeros((5, 3)))
    one_line_error(run("run", str(out), "--input", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "y.npy")),
                   "bad.npy: expected (time, 4) float32 for ")
    one_line_error(run("run", str(out), "--input", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "y.npy")),
                   "input x (time first, any float is cast), got (5, 3) float64 in the file")


def test_run_a_cell_model_one_row_per_step(tmp_path):
    import numpy as np

    out = tmp_path / "c.onnx"
    assert run(*BASE, "--cell", "--long-steps", "0", "-o", str(out)).exit_code == 0
    np.save(tmp_path / "in.npy", np.ones((9, 4), np.float32))
    r = run("run", str(out), "--input", str(tmp_path / "in.npy"), "-o", str(tmp_path / "y.npy"))
    assert r.exit_code == 0 and "in 9 calls" in r.stdout
    assert np.load(tmp_path / "y.npy").shape == (9, 6)


def test_bench_prints_a_table(tmp_path):
    out = tmp_path / "m.onnx"
    assert run(*BASE, "--long-steps", "0", "-o", str(out)).exit_code == 0
    r = run("bench", str(out), "--streams", "1,4", "--chunk", "1,3", "--seconds", "0.05")
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.stdout.splitlines()[1:]]
    assert [(row[0], row[1]) for row in rows] == [("1", "1"), ("4", "1"), ("1", "3"), ("4", "3")]
    assert all(float(row[4].replace(",", "")) > 0 and row[6].endswith("x") for row in rows)
    r = run("bench", str(out), "--streams", "0,x")
    assert r.exit_code == 2 and "comma-separated integers" in r.stderr


def test_run_and_export_output_mistakes(tmp_path):
    import numpy as np

    out = tmp_path / "m.onnx"
    assert run(*BASE, "--long-steps", "0", "-o", str(out)).exit_code == 0
    np.save(tmp_path / "in.npy", np.zeros((5, 4), np.float32))
    one_line_error(run("run", str(out), "--input", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.bin")),
                   "expected a file name ending in .npy or .npz")
    r = run("run", str(out), "--input", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.NPZ"))
    assert r.exit_code == 0 and (tmp_path / "o.NPZ").exists() and np.load(tmp_path / "o.NPZ")["y"].shape == (5, 6)
    np.savez(tmp_path / "in.npz", a=np.zeros((5, 4)))
    one_line_error(run("run", str(out), "--input", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npy")),
                   "expected one .npy array")
    np.save(tmp_path / "scalar.npy", np.float32(1))
    one_line_error(run("run", str(out), "--input", str(tmp_path / "scalar.npy"), "-o", str(tmp_path / "o.npy")),
                   "got a scalar")
    one_line_error(run(*BASE, "--long-steps", "0", "-o", str(tmp_path)), "cannot write the model")


def test_export_a_whole_model_from_a_factory(tmp_path):
    import wholemodels

    out = tmp_path / "kws.onnx"
    r = run("export", "wholemodels:keyword_spotter", "--example-shape", "1,30,40", "--long-steps", "300",
            "-o", str(out))
    assert r.exit_code == 0, r.output
    assert "gru.hn" in r.stdout and ": ok" in r.stdout
    torch.save(wholemodels.keyword_spotter().state_dict(), tmp_path / "kws.pt")
    r = run("export", "wholemodels:KeywordSpotter", "--weights", str(tmp_path / "kws.pt"), "--example-shape",
            "2,20,40", "--long-steps", "0", "--decomposed", "-o", str(out))
    assert r.exit_code == 0, r.output
    torch.save({"conv.weight": Custom()}, tmp_path / "evil.pt")
    r = run("export", "wholemodels:keyword_spotter", "--weights", str(tmp_path / "evil.pt"), "--example-shape",
            "1,30,40", "-o", str(out))
    one_line_error(r, "refused to unpickle it with weights_only=True")
    assert "torch.save(module.state_dict(), path)" in r.stderr
    one_line_error(run("export", "wholemodels:nope", "--example-shape", "1,5,40", "-o", str(out)),
                   "wholemodels has no attribute 'nope'")
    one_line_error(run("export", "no_such_module:f", "--example-shape", "1,5,40", "-o", str(out)), "cannot import")
    assert run("export", "wholemodels:keyword_spotter", "-o", str(out)).exit_code == 2  # no --example-shape
    assert run("export", "wholemodels:keyword_spotter", "--arch", "lstm", "--example-shape", "1,5,40",
               "-o", str(out)).exit_code == 2


def test_verify_a_whole_model_needs_its_factory(tmp_path):
    out = tmp_path / "kws.onnx"
    assert run("export", "wholemodels:keyword_spotter", "--example-shape", "1,30,40", "--long-steps", "0",
               "-o", str(out)).exit_code == 0
    one_line_error(run("verify", str(out)), "pass the factory it was exported from")
    r = run("verify", str(out), "wholemodels:keyword_spotter", "--long-steps", "200")
    assert r.exit_code == 0 and "against PyTorch float64" in r.stdout and ": ok" in r.stdout, r.output
    r = run("verify", str(out), "wholemodels:KeywordSpotter", "--long-steps", "0")  # other (unseeded) weights
    one_line_error(r, "pass it with --weights", not_in_stdout=("FAIL",))


def test_data_option_feeds_real_sequences_and_refuses_pickles(tmp_path):
    import numpy as np

    out = tmp_path / "m.onnx"
    rng = np.random.default_rng(0)
    np.save(tmp_path / "speech.npy", rng.standard_normal((50, 4)).astype(np.float32))
    np.savez(tmp_path / "many.npz", a=rng.standard_normal((20, 4)), b=rng.standard_normal((33, 4)))
    r = run(*BASE, "--data", str(tmp_path / "speech.npy"), "-o", str(out))
    assert r.exit_code == 0 and "note: inputs: the given data" in r.stdout, r.output
    r = run("verify", str(out), "--data", str(tmp_path / "many.npz"), "--long-steps", "100", "--every-row")
    assert r.exit_code == 0 and "long T=100 [default]" in r.stdout, r.output
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_line_error(run("verify", str(out), "--data", str(tmp_path / "obj.npy")), "only pickle can load; refused")
    np.save(tmp_path / "wide.npy", np.zeros((10, 5), np.float32))
    one_line_error(run("verify", str(out), "--data", str(tmp_path / "wide.npy")),
                   "expected one sequence of shape (time, 4), got (10, 5)")
    one_line_error(run(*BASE, "--data", str(tmp_path / "nope.npy"), "-o", str(tmp_path / "n.onnx")), "no such file")
    assert not (tmp_path / "n.onnx").exists()


def test_forged_sources_and_headers_give_one_line(tmp_path):
    """A forged contract source, or a .npy header declaring terabytes."""
    import io
    import json

    import numpy as np

    out = tmp_path / "m.onnx"
    assert run(*BASE, "--long-steps", "0", "-o", str(out)).exit_code == 0
    model = onnx.load(out)
    meta = next(p for p in model.metadata_props if p.key == "edge_rnn")
    for key, value, match in (("seed", "abc", "seed to be an int"), ("input_size", "4", "input_size to be int")):
        d = json.loads(meta.value)
        d["source"][key] = value
        meta.value = json.dumps(d)
        onnx.save(model, tmp_path / "forged.onnx")
        one_line_error(run("verify", str(tmp_path / "forged.onnx"), "--long-steps", "0"), match)
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)})
    (tmp_path / "huge.npy").write_bytes(buf.getvalue() + b"\0" * 64)
    one_line_error(run("run", str(out), "--input", str(tmp_path / "huge.npy"), "-o", str(tmp_path / "y.npy")),
                   "declares shape (1000000000000, 4)")


def test_absurd_sizes_and_failing_factories_give_one_line_or_a_usage_error(tmp_path):
    """Sizes too large to allocate are usage errors naming the option; a factory that fails is one line."""
    out = str(tmp_path / "m.onnx")
    r = run("export", "--arch", "lstm", "--input-size", "4", "--hidden-size", str(10**12), "-o", out)
    assert r.exit_code == 2 and "--hidden-size" in r.output
    assert run("export", "--arch", "lstm", "--input-size", "4", "--hidden-size", "4", "--seed", str(10**20),
               "-o", out).exit_code == 2
    assert run("export", "--arch", "lstm", "--input-size", "4", "--hidden-size", "4", "--num-layers", str(10**12),
               "-o", out).exit_code == 2
    (tmp_path / "broken_models.py").write_text(
        "import torch\n"
        "def needs_arg(n):\n    return torch.nn.GRU(n, n)\n"
        "def raises():\n    raise RuntimeError('weights not found')\n")
    (tmp_path / "syntax_models.py").write_text("def f(:\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        one_line_error(run("export", "broken_models:needs_arg", "--example-shape", "1,5,4", "-o", out),
                       "the factory failed: TypeError")
        one_line_error(run("export", "broken_models:raises", "--example-shape", "1,5,4", "-o", out),
                       "the factory failed: RuntimeError: weights not found")
        one_line_error(run("export", "syntax_models:f", "--example-shape", "1,5,4", "-o", out),
                       "importing syntax_models failed: SyntaxError")
        one_line_error(run("export", "wholemodels:keyword_spotter", "--example-shape", "1,30,41", "-o", out),
                       "the model fails on example_input of shape(s) [(1, 30, 41)]")
    finally:
        sys.path.remove(str(tmp_path))


def test_forged_contracts_deep_json_and_huge_sizes_give_one_line_each(tmp_path):
    """A contract whose source or outputs differ from the graph, JSON nested too deep, absurd option values and an
    example too large to allocate: each one line (or click's usage error naming the option), never a traceback."""
    import json

    out = tmp_path / "m.onnx"
    assert run(*BASE, "--long-steps", "0", "-o", str(out)).exit_code == 0
    model = onnx.load(out)
    meta = next(p for p in model.metadata_props if p.key == "edge_rnn")
    original = meta.value
    for edit, match in (
        (lambda d: d["source"].update(hidden_size=7), "is it the module that was exported"),
        (lambda d: d["outputs"][0].update(name="logits"), "names ['logits'], which the graph does not have"),
    ):
        d = json.loads(original)
        edit(d)
        meta.value = json.dumps(d)
        onnx.save(model, tmp_path / "forged.onnx")
        one_line_error(run("verify", str(tmp_path / "forged.onnx"), "--long-steps", "0"), match)
    meta.value = "[" * 100_000  # the CLI's one line, not a 44-line RecursionError traceback
    onnx.save(model, tmp_path / "deep.onnx")
    for cmd in ("inspect", "verify"):
        one_line_error(run(cmd, str(tmp_path / "deep.onnx")), "nesting too deep")
    for flag, value in (("--seed", 10**20), ("--num-layers", 10**12)):  # click names the option
        r = run("export", "--arch", "lstm", "--input-size", "4", "--hidden-size", "4", flag, str(value),
                "-o", str(out))
        assert r.exit_code == 2 and flag in r.output and "Traceback" not in r.output
    # an example too large to allocate is the user's mistake, in one line
    one_line_error(run("export", "wholemodels:keyword_spotter", "--example-shape", "100000,100000,40", "-o",
                       str(tmp_path / "big.onnx")), "expected an example of at most 268,435,456 elements")


def test_verify_refuses_batch_size_0_before_onnxruntime_sees_it(tmp_path):
    """A batch of 0 through the public verify (test_load_refusals calls Cases directly): it would abort the process
    inside onnxruntime's GRU kernel; and a module that is another layer than the file holds."""
    import edge_rnn
    from edge_rnn.errors import ModelFormatError, UnsupportedError

    gru = torch.nn.GRU(3, 4).eval()
    edge_rnn.export(gru, tmp_path / "g.onnx", long_steps=0)
    with pytest.raises(UnsupportedError, match="batch: expected an int >= 1, got 0"):
        edge_rnn.verify(gru, tmp_path / "g.onnx", batch_size=0)
    with pytest.raises(ModelFormatError, match=r"holds another layer than the module: expected hidden_size 4 "
                                               r"\(module: 5\)"):
        edge_rnn.verify(torch.nn.GRU(3, 5).eval(), tmp_path / "g.onnx")  # another hidden size
    with pytest.raises(ModelFormatError, match=r"expected cell False \(module: True\)"):
        edge_rnn.verify(torch.nn.GRUCell(3, 4).eval(), tmp_path / "g.onnx")  # a cell against a layer


def test_verify_of_a_layer_exported_with_weights_uses_a_fixed_reported_seed(tmp_path):
    """It used seed=None: other random inputs on every run, so a failure could not be reproduced."""
    torch.manual_seed(3)
    torch.save(torch.nn.LSTM(4, 6).state_dict(), tmp_path / "w.pt")
    out = tmp_path / "m.onnx"
    assert run(*BASE, "--weights", str(tmp_path / "w.pt"), "--long-steps", "0", "-o", str(out)).exit_code == 0
    args = ["verify", str(out), "--weights", str(tmp_path / "w.pt"), "--long-steps", "50", "--every-row"]
    first, again = run(*args), run(*args)
    assert first.exit_code == 0 and "note: seed 1: the random inputs" in first.stdout, first.output
    assert first.stdout == again.stdout  # the same inputs, the same errors, to the last digit
    other = run(*args, "--seed", "7")
    assert "note: seed 7:" in other.stdout and other.stdout != first.stdout
    seeded = tmp_path / "s.onnx"  # drawn from --seed 4: its check defaults to that seed, and says so
    assert run(*BASE, "--seed", "4", "--long-steps", "0", "-o", str(seeded)).exit_code == 0
    assert "note: seed 4:" in run("verify", str(seeded), "--long-steps", "0").stdout


def test_verify_honours_batch_size_seq_lens_and_chunked_len_for_a_whole_model(tmp_path):
    """They were ignored for whole models: the cases always followed the example."""
    import wholemodels

    import edge_rnn

    model = wholemodels.keyword_spotter().eval()
    edge_rnn.export(model, tmp_path / "kws.onnx", example_input=torch.randn(1, 30, 40), long_steps=0)
    report = edge_rnn.verify(model, tmp_path / "kws.onnx", batch_size=5, seq_lens=(3, 11), chunked_len=0,
                             long_steps=0, opt_levels=("disabled",))
    assert sorted({r.case for r in report.rows}) == ["full T=11", "full T=3"], report.table()
    report = edge_rnn.verify(model, tmp_path / "kws.onnx", seq_lens=(2,), chunked_len=9, long_steps=0,
                             opt_levels=("disabled",))
    assert sorted({r.case for r in report.rows}) == ["chunked T=9", "full T=2"]
    with pytest.raises(edge_rnn.errors.UnsupportedError, match="batch: expected an int >= 1, got 0"):
        edge_rnn.verify(model, tmp_path / "kws.onnx", batch_size=0)  # checked, as for a layer
    default = edge_rnn.verify(model, tmp_path / "kws.onnx", long_steps=0, opt_levels=("disabled",))
    assert sorted({r.case for r in default.rows}) == ["chunked T=41", "full T=1", "full T=23", "full T=7"]
