"""The memory demo: the delayed-recall task's data, accuracy by lag, a short training run, ``diagnose --demo``."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the demo trains with torch: skipped in the torch-free run

from click.testing import CliRunner  # noqa: E402

from edge_rnn.cli import main  # noqa: E402
from edge_rnn.demo import MemoryTask, RecallModel, TrainConfig, accuracy_by_lag, task_batch, task_sequence, train  # noqa: E402
from edge_rnn.errors import EdgeRnnError, ShapeError, UnsupportedError  # noqa: E402

TASK = MemoryTask()


@pytest.mark.parametrize("lag", [1, 5, 37])
@pytest.mark.parametrize("batch", [1, 9])
def test_task_layout_marks_the_symbol_and_queries_it_lag_steps_later(lag, batch):
    b = task_batch(TASK, lag, batch, np.random.default_rng(3))
    k = TASK.symbols
    assert b.x.shape == (lag + TASK.margin, batch, k + 2) and b.x.dtype == np.float32
    assert (b.x[:, :, :k].sum(-1) == 1).all()  # one symbol at every step: the distractors
    marks = np.argwhere(b.x[:, :, k] == 1)
    queries = np.argwhere(b.x[:, :, k + 1] == 1)
    assert sorted(marks[:, 1]) == sorted(queries[:, 1]) == list(range(batch))  # one mark, one query per sequence
    assert (b.mark[marks[:, 1]] == marks[:, 0]).all() and (b.query[queries[:, 1]] == queries[:, 0]).all()
    assert ((0 <= b.mark) & (b.mark < TASK.margin)).all() and (b.query - b.mark == lag).all()
    assert (b.x[b.mark, np.arange(batch), :k].argmax(-1) == b.target).all()  # the answer: the marked symbol


def test_task_is_seeded():
    one, two = (task_batch(TASK, 20, 16, np.random.default_rng(7)) for _ in range(2))
    other = task_batch(TASK, 20, 16, np.random.default_rng(8))
    assert all(np.array_equal(getattr(one, f), getattr(two, f)) for f in ("x", "mark", "query", "target"))
    assert not np.array_equal(one.x, other.x)
    seq = task_sequence(TASK, 12, 3, seed=1)
    assert seq.shape == (3 * (12 + TASK.margin), TASK.features)
    assert np.array_equal(seq, task_sequence(TASK, 12, 3, seed=1))
    assert seq[:, TASK.symbols].sum() == seq[:, TASK.symbols + 1].sum() == 3


@pytest.mark.parametrize("bad", [dict(symbols=1), dict(margin=0)])
def test_task_refuses_a_shape_it_cannot_have(bad):
    with pytest.raises(ShapeError, match="expected symbols >= 2"):
        MemoryTask(**bad)


def cheat(x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Reads the answer off the input: the symbol at the marked step, wherever the query is."""
    mark = x[:, :, TASK.symbols].argmax(0)
    return x[mark, torch.arange(x.shape[1]), :TASK.symbols]


def constant(x: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[1], TASK.symbols).index_fill_(1, torch.tensor([0]), 1.0)


@pytest.mark.parametrize(("model", "low", "high"), [(cheat, 1.0, 1.0), (constant, 0.125 - 0.04, 0.125 + 0.04)])
def test_accuracy_by_lag_of_models_whose_answer_is_known(model, low, high):
    r = accuracy_by_lag(model, TASK, (1, 5, 60), n=2000, seed=4, label="known")
    assert r.lags == (1, 5, 60) and r.n == 2000 and r.chance == 1 / TASK.symbols
    assert all(low <= a <= high for a in r.accuracy), r.accuracy


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_the_models_read_the_query_step(arch):
    m = RecallModel(arch, TASK.features, 6, TASK.symbols)
    b = task_batch(TASK, 4, 5, np.random.default_rng(0))
    assert m(torch.from_numpy(b.x), torch.from_numpy(b.query)).shape == (5, TASK.symbols)
    if arch == "lstm":  # the classical forget-gate bias of 1
        assert (m.rnn.bias_ih_l0[6:12] + m.rnn.bias_hh_l0[6:12] == 1).all()


@pytest.mark.parametrize("arch", ["rnn", "lstm", "gru"])
def test_an_exported_layer_read_by_the_head_gives_the_models_logits(arch, tmp_path):
    from edge_rnn.demo._file_model import FileReadout
    from edge_rnn.exporters import export

    torch.manual_seed(1)
    m = RecallModel(arch, TASK.features, 6, TASK.symbols).eval()
    export(m.rnn, tmp_path / "m.onnx", long_steps=0)
    b = task_batch(TASK, 7, 4, np.random.default_rng(2))
    x, q = torch.from_numpy(b.x), torch.from_numpy(b.query)
    with torch.no_grad():
        want = m(x, q)
    got = FileReadout(tmp_path / "m.onnx", m.head, chunk=3)(x, q)  # chunks that cut the sequences anywhere
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_an_unknown_architecture_is_refused():
    with pytest.raises(UnsupportedError, match="expected an architecture among"):
        RecallModel("transformer", 10, 4, 8)


def test_a_short_training_run_beats_chance_at_a_short_lag():
    config = TrainConfig(hidden=16, steps=150, min_lag=2, max_lag=4, check_every=50, seed=0)
    trained = train("gru", config)
    r = accuracy_by_lag(trained.model, config.task, (2, 4), n=400, seed=9)
    assert min(r.accuracy) > 2 * config.task.chance, r.accuracy  # chance is 0.125
    assert trained.best_step in (50, 100, 150) and trained.best_score >= trained.final_score - 1e-12


def run(*args: str):
    return CliRunner().invoke(main, ["diagnose", *args])


@pytest.mark.parametrize(("args", "says"), [
    (["--demo", "model.onnx"], "got SOURCE"),
    (["--demo", "--arch", "lstm"], "got --arch"),
    (["--demo", "--input", "x.npy", "--max-lag", "5"], "got --input, --max-lag"),
    (["--demo", "--compare", "a.onnx"], "got --compare"),
    (["--out", "models"], "--out goes with --demo"),
    (["--arch", "lstm", "--input-size", "2", "--hidden-size", "3"], "missing --input"),
])
def test_demo_usage_errors_are_one_line(args, says):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert says in r.output and "Traceback" not in r.output


def test_demo_out_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    r = run("--demo", "--out", str(tmp_path / "file"))
    assert r.exit_code == 2 and "expected a folder, got a file" in r.output


@pytest.mark.parametrize("held", [["memory_lstm.onnx"], [".keep"], ["sub/"], ["a", "b", "c", "d"]])
def test_demo_refuses_an_out_folder_that_holds_anything_before_training(tmp_path, monkeypatch, held):
    import edge_rnn.demo as demo

    def never(*args, **kwargs):
        raise AssertionError("trained although --out holds files")

    monkeypatch.setattr(demo, "run_demo", never)
    out = tmp_path / "m"
    out.mkdir()
    for name in held:
        (out / name.rstrip("/")).mkdir() if name.endswith("/") else (out / name).write_bytes(b"kept")
    r = run("--demo", "--quiet", "--out", str(out))
    assert r.exit_code == 1, r.output
    assert r.output.splitlines() == [f"Error: --out {out}: expected a new or empty folder, got one holding "
                                     f"{len(held)} entr{'y' if len(held) == 1 else 'ies'} "
                                     f"({', '.join(sorted(n.rstrip('/') for n in held)[:3])}"
                                     f"{', ...' if len(held) > 3 else ''})"]
    assert all((out / n).read_bytes() == b"kept" for n in held if not n.endswith("/"))


def test_the_demo_help_says_out_must_be_new_or_empty():
    assert "new or empty" in " ".join(run("--help").output.split())


def test_demo_end_to_end_with_tiny_sizes(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import edge_rnn.demo._config as config
    from edge_rnn.demo import DemoConfig

    tiny = DemoConfig(train=TrainConfig(hidden=6, steps=20, batch=16, min_lag=2, max_lag=6, check_every=10),
                      eval_lags=(2, 6), eval_n=50, diag_lag=6, diag_repeats=3, max_lag=8, starts=2, check_steps=2000)
    monkeypatch.setattr(config, "demo_config", lambda: tiny)
    png = tmp_path / "demo.png"
    r = CliRunner().invoke(main, ["diagnose", "--demo", "--plot", str(png), "--out", str(tmp_path / "m"),
                                  "--seed", "3", "--quiet"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.stderr == ""  # --quiet: no progress lines
    table = r.stdout[r.stdout.index("arch "):]
    assert [ln.split()[0] for ln in table.splitlines()[1:4]] == ["rnn", "lstm", "gru"]
    assert "seed 3" in table and "machine: " in table
    assert all((tmp_path / "m" / f"memory_{a}{s}.onnx").is_file() for a in ("rnn", "lstm", "gru")
               for s in ("", ".int8"))
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_the_comparison_figure_needs_a_diagnosis(tmp_path):
    pytest.importorskip("matplotlib")
    from edge_rnn.diagnostics._plot_compare import plot_comparison

    with pytest.raises(EdgeRnnError, match="expected at least one diagnosis"):
        plot_comparison({}, tmp_path / "x.png")

