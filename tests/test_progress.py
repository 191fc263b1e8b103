"""Progress on long work: the library reports (stage, done, total) to a callback; the CLI draws one bar on stderr,
on a terminal only, never with --quiet, and stdout is the same whichever way it runs."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("torch")  # the export and diagnose paths need the export extra
pytest.importorskip("onnx")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from conftest import REPO  # noqa: E402

import edge_rnn  # noqa: E402
import edge_rnn.cli._progress as cli_progress  # noqa: E402
from edge_rnn._progress import Ticker, part  # noqa: E402
from edge_rnn.cli import main  # noqa: E402

DATA = REPO / "tests" / "data"


class Recorded:
    """A progress callback that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.calls.append((stage, done, total))

    def check(self) -> None:
        """Monotone done counts from 0 to one fixed total, under named stages."""
        assert self.calls, "no progress reported"
        totals = {t for _, _, t in self.calls}
        dones = [d for _, d, _ in self.calls]
        assert len(totals) == 1 and totals.pop() > 0, self.calls
        assert dones[0] == 0 and dones[-1] == self.calls[-1][2], self.calls
        assert all(a <= b for a, b in zip(dones, dones[1:])), dones
        assert all(isinstance(s, str) and s for s, _, _ in self.calls)


def test_ticker_counts_to_its_total_and_a_part_maps_onto_its_span():
    seen = Recorded()
    t = Ticker(seen, 10, "first")
    t.advance(3, "second")
    sub = t.part(4, "inner")
    for done in range(5):  # a callee with its own units: 0..4 of 4
        sub("callee", done, 4)
    t.advance(4)
    t.advance(99)  # never past the total
    seen.check()
    assert seen.calls[0] == ("first", 0, 10) and seen.calls[-1] == ("second", 10, 10)
    assert [c for c in seen.calls if c[0] == "inner"] == [("inner", 3 + d, 10) for d in range(5)]
    assert part(None, 0, 1, 1) is None
    Ticker(None, 5, "nothing").advance(5)  # None: counts only, calls nothing


def _sequence(tmp_path, steps: int = 20, features: int = 4):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((steps, features)).astype(np.float32))
    return path


def _exported(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "g.onnx"
    edge_rnn.export(torch.nn.GRU(4, 6).eval(), path, long_steps=300)
    return path


@pytest.mark.parametrize("work", ["export", "verify", "diagnose", "diagnose_onnx", "diagnose_bundle",
                                  "measure_against", "package"])
def test_library_reports_monotone_progress_ending_at_its_total(tmp_path, work):
    from edge_rnn.deploy import measure_against, package
    from edge_rnn.diagnostics import diagnose, diagnose_bundle, diagnose_onnx

    seen = Recorded()
    x = np.load(_sequence(tmp_path))
    torch.manual_seed(0)
    gru = torch.nn.GRU(4, 6).eval()
    if work == "export":
        assert edge_rnn.export(gru, tmp_path / "e.onnx", long_steps=300, progress=seen).parity.ok
    elif work == "verify":
        edge_rnn.export(gru, tmp_path / "v.onnx", long_steps=0)
        assert edge_rnn.verify(gru, tmp_path / "v.onnx", long_steps=300, progress=seen).ok
    elif work == "diagnose":
        diagnose(gru, x, max_lag=5, starts=2, compare=[_exported(tmp_path)], progress=seen)
    elif work == "diagnose_onnx":
        diagnose_onnx(_exported(tmp_path), x, max_lag=5, starts=2, progress=seen)
    elif work == "diagnose_bundle":
        package(_exported(tmp_path), tmp_path / "b", variants=("fp32",), steps=2000)
        diagnose_bundle(tmp_path / "b", x, max_lag=5, starts=2, progress=seen)
    elif work == "measure_against":
        model = _exported(tmp_path)
        assert measure_against(model, model, steps=2000, progress=seen).ok
    else:
        package(_exported(tmp_path), tmp_path / "b", variants=("fp32", "fp16"), steps=2000, progress=seen)
    seen.check()
    if work in ("export", "verify", "measure_against"):
        assert len(seen.calls) > 10  # follows the streams chunk by chunk, not only case by case


def _command(name: str, tmp_path) -> list[str]:
    """Each long command at the smallest sizes and step counts it takes."""
    lstm = str(DATA / "lstm_layer.onnx")
    return {
        "export": ["export", "--arch", "lstm", "--input-size", "4", "--hidden-size", "6", "--long-steps", "300",
                   "-o", str(tmp_path / "m.onnx")],
        "diagnose": ["diagnose", "--arch", "gru", "--input-size", "4", "--hidden-size", "6", "--max-lag", "5",
                     "--starts", "2", "--input", str(_sequence(tmp_path))],
        "optimize": ["optimize", lstm, "--fp16", "--steps", "2000", "-o", str(tmp_path)],
        "package": ["package", lstm, "--variants", "fp32,fp16", "--steps", "2000", "-o", str(tmp_path / "b")],
        "run": ["run", str(DATA / "tiny_dynamic.onnx"), "--input", str(_long_input(tmp_path)), "--chunk", "1", "-o",
                str(tmp_path / "y.npy")],  # 1,000 calls: a bar (200 calls or more)
    }[name]


def _long_input(tmp_path):
    path = tmp_path / "long.npy"
    np.save(path, np.random.default_rng(0).standard_normal((1000, 3)).astype(np.float32))
    return path


def _stable(stdout: str) -> str:
    """stdout without what is timed (the export's milliseconds, a bundle's speed columns)."""
    stdout = re.sub(r"exported in [\d.]+ ms", "exported in <ms>", stdout)
    stdout = re.sub(r": [\d.]+ ms \([\d,]+ steps/s\)", ": <ms>", stdout)  # run's speed
    return re.sub(r" (YES|no) +[\d.]+ +[\d,]+  ", r" \1 <speed>  ", stdout)


def _invoke(monkeypatch, tmp_path, command: str, mode: str):
    monkeypatch.setattr(cli_progress, "stderr_is_terminal", lambda: mode != "pipe")
    out = tmp_path / mode
    out.mkdir()
    args = _command(command, out) + (["--quiet"] if mode == "quiet" else [])
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("command", ["export", "diagnose", "optimize", "package", "run"])
def test_the_bar_only_on_a_terminal_and_never_with_quiet_and_stdout_the_same(monkeypatch, tmp_path, command):
    runs = {mode: _invoke(monkeypatch, tmp_path, command, mode) for mode in ("terminal", "quiet", "pipe")}
    stdout = {mode: _stable(r.stdout.replace(str(tmp_path / mode), "<dir>")) for mode, r in runs.items()}
    assert stdout["terminal"] == stdout["quiet"] == stdout["pipe"]
    assert "\r" not in runs["terminal"].stdout and "%" not in stdout["terminal"].replace("% ", "")

    bar = runs["terminal"].stderr
    percents = [int(p) for p in re.findall(r"\] +(\d+)%", bar)]
    assert percents and percents[-1] == 100 and "[" + "#" * 24 + "] 100%" in bar, bar[-400:]
    if command != "optimize":  # optimize draws one bar per variant; every other command one for its whole work
        assert percents == sorted(percents)
    assert bar.endswith("\r") and bar.rsplit("\r", 2)[-2].strip() == ""  # erased before the results print

    assert runs["quiet"].stderr == ""
    chatter = "fp32: making and measuring\nfp16: making and measuring\n" if command == "package" else ""
    assert runs["pipe"].stderr == chatter  # not a terminal: no bar; package's lines say which variant it is on
    if chatter:
        assert all(line in bar for line in chatter.splitlines())  # on a terminal, above the bar
