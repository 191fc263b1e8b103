"""Hostile files and options for the commands: each is one `Error:` line and exit 1, found before any work.

Torch-free: the committed fixtures in tests/data; `serve` is checked up to where it would start serving (the
refusals come first), so no server runs here.
"""

from __future__ import annotations

import socket
import tracemalloc
import zipfile

import cli_errors
import numpy as np
import pytest
from cli_errors import invoke
from conftest import REPO

from edge_rnn.errors import DataError
from edge_rnn.harness import _data, load_data

DATA = REPO / "tests" / "data"
LSTM = DATA / "lstm_layer.onnx"  # x (time, 4) -> y (time, 6): one frame is 16 bytes
VAD = DATA / "vad_state.onnx"  # one step per call, a frame of (8, 4) float32: 128 bytes
TOKEN = "a-token-of-sixteen-chars"


@pytest.fixture
def no_server(monkeypatch):
    """The server is never run here: DrainingServer.run records the sockets it was given and returns (a command
    that got this far would have served; those that must fail before serving are then seen to exit 0)."""
    pytest.importorskip("uvicorn")
    from edge_rnn.service import _server

    seen: dict = {}

    def run(self, sockets=None):
        seen["sockets"] = sockets
        seen["bound"] = sockets[0].getsockname() if sockets else None

    monkeypatch.setattr(_server.DrainingServer, "run", run)
    return seen


def one_line_error(result, contains: str) -> str:
    return cli_errors.one_line_error(result, contains, not_in_output=("serving",))  # it failed before serving


# --- serve and loadtest: the token file -------------------------------------------------------------------------

@pytest.mark.parametrize("content, says", [
    (b"\xff\xfe" + TOKEN.encode(), "expected UTF-8 text, got byte 0xff at offset 0"),
    ("t\u00f6ken-of-sixteen-characters".encode(), "expected a token of visible ASCII characters"),
    ("token\u2003of-sixteen-chars".encode(), "expected a token of visible ASCII characters"),  # an em space
    (b"a token with spaces inside", "got ' ' at position 1"),
    (b"a-token\x07-with-a-bell-in-it", "got '\\x07'"),
    (b"short\n", "at least 16 characters, got 5"),
])
@pytest.mark.parametrize("command", ["serve", "loadtest"])
def test_a_token_no_http_header_can_carry_is_refused_before_anything_starts(tmp_path, content, says, command,
                                                                           no_server):
    """Not UTF-8 was a UnicodeDecodeError traceback; a non-ASCII token started a server no one could log in to
    (a header is latin-1 on the wire). The load generator reads its --token-file by the same rule."""
    (tmp_path / "token").write_bytes(content)
    target = LSTM if command == "serve" else "http://127.0.0.1:9"  # refused before any connection is tried
    one_line_error(invoke(command, target, "--token-file", tmp_path / "token"), says)


def test_a_visible_ascii_token_with_a_trailing_newline_is_taken(tmp_path):
    """The rule refuses only what a header cannot carry: the token of the serve test, newline stripped."""
    from edge_rnn.cli import _serve

    (tmp_path / "token").write_text(TOKEN + "\r\n")
    assert _serve._read_token(tmp_path / "token") == TOKEN
    assert _serve._read_token(None) is None


# --- serve: where it listens -----------------------------------------------------------------------------------

def test_a_port_in_use_is_one_line_before_serving(no_server):
    """uvicorn's own bind logged `ERROR: [Errno 98] ...` and exited 3, after "serving ... on" was printed."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line_error(invoke("serve", LSTM, "--host", "127.0.0.1", "--port", port),
                              f"port {port} on 127.0.0.1 is in use")
    assert "pick another --port" in line and "Errno" not in line


def test_a_host_that_does_not_resolve_is_one_line_before_serving(no_server):
    """A label over 63 characters fails in the resolver's encoding, on this machine: no lookup leaves it."""
    host = "x" * 64 + ".example"
    one_line_error(invoke("serve", LSTM, "--host", host), f"--host {host}: expected a host name or address")


def test_the_serving_line_comes_after_the_bind_and_names_the_bound_port(no_server):
    """--port 0 gets a free port: the line says which. The server itself is not run here."""
    r = invoke("serve", LSTM, "--port", 0)
    assert r.exit_code == 0, r.output
    host, port = no_server["bound"]
    assert host == "127.0.0.1" and port > 0
    assert f"serving {LSTM} on http://127.0.0.1:{port} (WebSocket /v1/streams/ws)" in r.stderr
    assert no_server["sockets"][0].fileno() == -1  # closed once the server returned


# --- serve: a message limit no chunk fits ----------------------------------------------------------------------

def test_a_message_limit_below_one_frame_is_refused_at_start(no_server):
    """vad_state takes frames of (8, 4) float32, 128 bytes: a 100-byte limit refused every chunk it was sent."""
    one_line_error(invoke("serve", VAD, "--max-message-bytes", 100), "--max-message-bytes 100: expected at least "
                   "128 bytes")


def test_a_message_limit_of_exactly_one_frame_is_taken(no_server):
    r = invoke("serve", VAD, "--max-message-bytes", 128, "--port", 0)
    assert r.exit_code == 0, r.output


# --- the one bounded reader of user arrays (run, diagnose, verify --data, ...) --------------------------------

def _forged_npy(path, shape=(8_000_000_000_000, 1)):
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
        f.write(np.zeros(16, np.float32).tobytes())


@pytest.mark.parametrize("command", [
    ["run", LSTM, "--input", "{f}", "-o", "{out}"],
    ["diagnose", LSTM, "--input", "{f}"],
    ["verify", LSTM, "--against", LSTM, "--data", "{f}"],
])
def test_a_forged_npy_header_is_refused_by_every_command_before_allocating(tmp_path, command):
    """diagnose gave a MemoryError traceback for 29 TiB where run refused it: one reader now."""
    _forged_npy(tmp_path / "forged.npy")
    args = [str(a).format(f=tmp_path / "forged.npy", out=tmp_path / "o.npy") for a in command]
    tracemalloc.start()
    try:
        line = one_line_error(invoke(*args), "forged.npy: its header declares shape (8000000000000, 1) float32")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "but the file holds 64 bytes of data" in line
    assert peak < 64 * 2**20, peak  # the model and onnxruntime's Python side; never the declared 29 TiB


def _bomb(path, nbytes: int, name: str = "a.npy") -> None:
    """An .npz of one compressed array of zeros, ``nbytes`` of data, written in pieces (no big buffer here)."""
    zeros = bytes(2**20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open(name, "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (nbytes // 16, 4)})
            for _ in range(nbytes // len(zeros)):
                f.write(zeros)


def test_an_npz_that_expands_past_the_cap_is_refused_from_its_headers(tmp_path):
    """A 509 KiB .npz used 1.4 GiB in `verify --data`: its members' sizes are summed from their headers first."""
    _bomb(tmp_path / "bomb.npz", 300 * 2**20)  # 300 MiB of zeros in ~300 KiB
    assert (tmp_path / "bomb.npz").stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"bomb\.npz: its arrays declare 314,572,800 bytes in all \(the largest, "
                                             r"a\.npy, shape \(19660800, 4\) float32\), expected at most 256 MiB"):
            load_data(tmp_path / "bomb.npz")
        r = invoke("verify", LSTM, "--against", LSTM, "--data", tmp_path / "bomb.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line_error(r, "save it uncompressed (np.savez) or as .npy files")
    assert peak < 32 * 2**20, peak


def test_an_npz_within_the_cap_and_a_large_stored_one_are_read(tmp_path, monkeypatch):
    """The cap is on expansion: np.savez (stored) is bounded by the file itself, whatever its size."""
    monkeypatch.setattr(_data, "MAX_INFLATED_BYTES", 2**20)
    big = np.arange(2**19, dtype=np.float32).reshape(-1, 4)  # 2 MiB, twice the (lowered) cap
    np.savez(tmp_path / "stored.npz", a=big, b=big[:7])
    out = load_data(tmp_path / "stored.npz")
    np.testing.assert_array_equal(out["a"], big)
    np.testing.assert_array_equal(out["b"], big[:7])
    np.savez_compressed(tmp_path / "small.npz", a=big[:1000])
    np.testing.assert_array_equal(load_data(tmp_path / "small.npz")["a"], big[:1000])
    np.savez_compressed(tmp_path / "big.npz", a=big)
    with pytest.raises(DataError, match="expected at most 1 MiB more than the archive's"):
        load_data(tmp_path / "big.npz")


def test_a_truncated_npz_member_is_refused_naming_its_shape(tmp_path):
    """A member whose header declares more data than the member holds: refused before it is read."""
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as z:
        with z.open("a.npy", "w") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (100, 4)})
            f.write(bytes(64))
    with pytest.raises(DataError, match=r"short\.npz:a\.npy: its header declares shape \(100, 4\) float32"):
        load_data(tmp_path / "short.npz")


def test_the_reader_allocates_the_array_once(tmp_path):
    """Read in pieces into the array: the peak is the array, not the array and a bytes copy of it."""
    x = np.random.default_rng(0).standard_normal((2**20, 8)).astype(np.float32)  # 32 MiB
    np.save(tmp_path / "x.npy", x)
    tracemalloc.start()
    try:
        got = load_data(tmp_path / "x.npy")[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, x)
    assert peak < x.nbytes + 20 * 2**20, peak  # was 2x: f.read() of the whole body, then a copy


def test_diagnose_refuses_an_npz_and_an_object_array_as_input(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros((60, 4), np.float32))
    (tmp_path / "x.npy").write_bytes((tmp_path / "x.npz").read_bytes())  # an archive, named .npy
    one_line_error(invoke("diagnose", LSTM, "--input", tmp_path / "x.npy"), "got an .npz archive")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    one_line_error(invoke("diagnose", LSTM, "--input", tmp_path / "obj.npy"), "only pickle can load; refused")


# --- the siblings: loadtest's URL and server, run's output ------------------------------------------------------

def test_loadtest_of_a_server_that_is_not_there_is_one_line():
    """Connection refused was an httpx.ConnectError traceback; a URL without a scheme, UnsupportedProtocol."""
    pytest.importorskip("httpx")
    pytest.importorskip("websockets")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    one_line_error(invoke("loadtest", f"http://127.0.0.1:{port}", "--duration", 0.5, "--streams", 1),
                   f"nothing listens at http://127.0.0.1:{port}; is the server running?")
    one_line_error(invoke("loadtest", "127.0.0.1:8000"),
                   "expected a URL with http:// or https://, got '127.0.0.1:8000'")


@pytest.mark.parametrize("where, says", [("x.npy/out.npy", "is a file"), ("folder.npy", "got a directory")])
def test_run_checks_its_output_before_streaming(tmp_path, where, says):
    """It streamed the whole input first, then failed to write."""
    np.save(tmp_path / "x.npy", np.zeros((5, 4), np.float32))
    (tmp_path / "folder.npy").mkdir()
    r = invoke("run", LSTM, "--input", tmp_path / "x.npy", "-o", tmp_path / where)
    one_line_error(r, says)
    assert "streamed" not in r.output


def test_run_makes_the_folders_of_its_output(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 4), np.float32))
    r = invoke("run", LSTM, "--input", tmp_path / "x.npy", "-o", tmp_path / "a" / "b" / "y.npy")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "a" / "b" / "y.npy").shape == (5, 6)
