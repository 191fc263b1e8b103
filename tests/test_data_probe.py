"""The bounded reader of user arrays against forged .npy headers (issue 19 probe): zero-size and non-numeric
dtypes, impossible shapes, chunks cut lazily in run_sequence, the copies verify --data makes, bool for floats.

Torch-free: the committed fixtures in tests/data; `verify --against` is the torch-free verify.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from cli_errors import invoke, one_line_error
from conftest import REPO

from edge_rnn.cli._common import _read_data
from edge_rnn.errors import DataError, EdgeRnnError
from edge_rnn.harness import InputLayout, _data, data_inputs, load_data, read_npy
from edge_rnn.runtime import StreamingModel, run_sequence

DATA = REPO / "tests" / "data"
LSTM = DATA / "lstm_layer.onnx"  # x (time, 4) float32 -> y (time, 6)


def npy(path, descr, shape, body=b"", version=(1, 0)):
    """A .npy whose header says what it is told, whatever numpy would write."""
    h = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    size = 2 if version == (1, 0) else 4
    h += b" " * ((-(8 + size + len(h) + 1)) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY" + bytes(version) + len(h).to_bytes(size, "little") + h + body)
    return path




def peak_of(f):
    tracemalloc.start()
    try:
        out = f()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- 1. zero-size and non-numeric dtypes: refused from the header, before anything is cut or allocated ---------

NON_NUMERIC = [
    ("|V0", (2**36, 4), b"", "|V0"),
    ("|S0", (2**40, 4), b"", "|S0"),
    ("<U0", (2**36, 4), b"", "<U0"),
    ("|S4", (3, 4), b"\0" * 48, "|S4"),
    ("<M8[s]", (3, 4), b"\0" * 96, "<M8[s]"),
    ("<m8[s]", (3, 4), b"\0" * 96, "<m8[s]"),
    ([("a", "<f4"), ("b", "<f4")], (10,), b"\0" * 80, "[('a', '<f4'), ('b', '<f4')]"),
    (("<f4", (4,)), (10,), b"\0" * 160, "('<f4', (4,))"),
]


@pytest.mark.parametrize("descr, shape, body, says", NON_NUMERIC, ids=lambda v: str(v)[:12])
def test_the_reader_refuses_zero_size_and_non_numeric_dtypes_naming_file_shape_and_dtype(tmp_path, descr, shape,
                                                                                          body, says):
    path = npy(tmp_path / "x.npy", descr, shape, body)
    with pytest.raises(DataError) as e:
        peak_of(lambda: read_npy(path))
    msg = str(e.value)
    assert f"{path}: shape {shape} {says}: expected an array of numbers" in msg, msg
    assert "\n" not in msg
    _, peak = peak_of(lambda: pytest.raises(DataError, load_data, path))
    assert peak < 2**20, peak


def test_an_npz_member_of_a_zero_size_dtype_is_refused_from_its_header(tmp_path):
    npy(tmp_path / "s0.npy", "|S0", (2**40, 4))
    with zipfile.ZipFile(tmp_path / "s0.npz", "w") as z:
        z.write(tmp_path / "s0.npy", "x.npy")
    with pytest.raises(DataError, match=r"s0\.npz:x\.npy: shape \(1099511627776, 4\) \|S0: expected an array"):
        load_data(tmp_path / "s0.npz")


def test_the_element_count_is_bounded_whatever_the_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(_data, "MAX_ELEMENTS", 100)
    path = npy(tmp_path / "x.npy", "<f4", (101,), b"\0" * 404)
    with pytest.raises(DataError, match=r"x\.npy: shape \(101,\) float32: expected at most 100 elements in one "
                                        r"array, its axes multiply to 101"):
        read_npy(path)
    np.testing.assert_array_equal(read_npy(npy(tmp_path / "y.npy", "<f4", (100,), b"\0" * 400)), np.zeros(100))


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # the old code asked for 4.5 GB and more, or 4 TiB


@pytest.mark.parametrize("command", ["run", "diagnose"])
@pytest.mark.parametrize("descr", ["|V0", "|S0", "<U0"])
def test_run_and_diagnose_of_a_zero_size_dtype_are_one_line_not_a_hang_or_memory_error(tmp_path, command, descr):
    """A 128-byte |V0 .npy of shape (2**36, 4) had `run` cutting 2**31 chunks (60 s, 4.5 GB, still going)."""
    path = npy(tmp_path / "v0.npy", descr, (2**36, 4))
    out = ["-o", str(tmp_path / "o.npy")] if command == "run" else []
    r = subprocess.run([sys.executable, "-m", "edge_rnn.cli", command, str(LSTM), "--input", str(path), *out],
                       preexec_fn=_limited, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "expected an array of numbers" in lines[0], lines


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_run_sequence_cuts_chunks_as_it_goes_and_stops_at_the_first_refused_one(dtype):
    """The chunks were all cut (copied) before the first step: 128 MiB here before the first was refused. A float64
    array is cast chunk by chunk as it is cut, never whole (64 MiB of float32 here)."""
    m = StreamingModel.load(LSTM)
    x = np.broadcast_to(np.full(4, np.nan, dtype), (2**22, 4))  # no memory of its own; 64-128 MiB once cut
    stream = m.open_stream()
    e, peak = peak_of(lambda: pytest.raises(EdgeRnnError, run_sequence, m, stream, x, chunk=1000))
    e.match("expected finite values")
    assert peak < 8 * 2**20, peak
    assert stream.steps == 0


def test_run_sequence_still_joins_every_chunk():
    m = StreamingModel.load(LSTM)
    x = np.random.default_rng(0).standard_normal((77, 4)).astype(np.float32)
    seen: list[int] = []
    whole = run_sequence(m, m.open_stream(), x, chunk=77)["y"]
    cut = run_sequence(m, m.open_stream(), x, chunk=10, progress=seen.append)["y"]
    assert seen == [10] * 7 + [7]
    np.testing.assert_allclose(cut, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(EdgeRnnError, match="at least one time step"):
        run_sequence(m, m.open_stream(), x[:0], chunk=10)


# --- 2. forged headers: one Error: line in run and diagnose, as in verify --data ------------------------------

FORGED = [
    ("negdim", "<f4", (-1, 4), b"\0" * 16, (1, 0), "negative"),
    ("zero_overflow", "<f4", (0, 2**62, 2**62), b"", (1, 0), "elements"),
    ("ndim3001", "<f4", (3,) + (1,) * 3000, b"\0" * 12, (2, 0), "axes"),
    ("subarray", ("<f4", (4,)), (10,), b"\0" * 160, (1, 0), "expected an array of numbers"),
]


@pytest.mark.parametrize("command", ["run", "diagnose", "verify"])
@pytest.mark.parametrize("name, descr, shape, body, version, says", FORGED, ids=[f[0] for f in FORGED])
def test_a_forged_header_is_one_error_line_in_every_command(tmp_path, command, name, descr, shape, body, version,
                                                           says):
    path = npy(tmp_path / f"{name}.npy", descr, shape, body, version)
    extra = {"run": ["-o", tmp_path / "o.npy"], "diagnose": [], "verify": ["--against", LSTM, "--data", path]}
    args = ["verify", LSTM] if command == "verify" else [command, LSTM, "--input", path]
    line = one_line_error(invoke(*args, *extra[command]), f"{name}.npy")
    assert says in line, line
    with pytest.raises(DataError, match=says):
        read_npy(path)


# --- 3. verify --data: the arrays, not copies of them ------------------------------------------------------------

def test_the_data_path_of_verify_holds_the_arrays_once(tmp_path):
    """A 250 MiB .npz of zeros peaked at 3.5x its arrays in verify --data: a float32 copy (astype), a bool array
    for the finiteness check, and a full read only to check the file before the work."""
    x = np.zeros((2**21, 4), np.float32)  # 32 MiB
    np.savez_compressed(tmp_path / "z.npz", a=x)
    layouts = [InputLayout("x", (1, 1, 4), 0, 1)]
    _, peak = peak_of(lambda: _read_data(tmp_path / "z.npz"))
    assert peak < 2 * 2**20, peak  # the early check reads the headers, not the arrays
    source, peak = peak_of(lambda: data_inputs(layouts, load_data(tmp_path / "z.npz"), "data"))
    assert peak < x.nbytes + 6 * 2**20, peak
    feeds = source(np.random.default_rng(0), 2, 50, False)
    assert feeds["x"].shape == (2, 50, 4) and feeds["x"].dtype == np.float32


def test_the_early_check_still_refuses_what_the_read_would(tmp_path):
    (tmp_path / "p.npy").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(DataError, match="pickles are never loaded"):
        _read_data(tmp_path / "p.npy")
    npy(tmp_path / "short.npy", "<f4", (100, 4), b"\0" * 64)
    with pytest.raises(DataError, match="its header declares shape"):
        _read_data(tmp_path / "short.npy")


def test_finite_values_are_still_checked_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(_data, "_PIECE", 64)
    x = np.zeros((1000, 4), np.float64)
    x[999, 3] = 1e300  # beyond float32
    with pytest.raises(DataError, match="expected finite values"):
        data_inputs([InputLayout("x", (1, 1, 4), 0, 1)], x)
    x[999, 3] = np.nan
    with pytest.raises(DataError, match="expected finite values"):
        data_inputs([InputLayout("x", (1, 1, 4), 0, 1)], x.astype(np.float32))


# --- 4. bool for a float input: one rule for run and verify --data ----------------------------------------------

def test_bool_for_a_float_input_is_refused_by_run_and_verify_alike(tmp_path):
    np.save(tmp_path / "b.npy", np.ones((3, 4), bool))
    run = one_line_error(invoke("run", LSTM, "--input", tmp_path / "b.npy", "-o", tmp_path / "o.npy"), "bool")
    verify = one_line_error(invoke("verify", LSTM, "--against", LSTM, "--data", tmp_path / "b.npy"), "bool")
    rule = "'x' takes float32 values, got a bool array"
    assert rule in run and rule in verify, (run, verify)
    assert run.partition(rule)[2] == verify.partition(rule)[2]
    with pytest.raises(DataError, match=rule):
        data_inputs([InputLayout("x", (1, 1, 4), 0, 1)], np.ones((3, 4), bool))
