"""When a benchmark counts a load level as served (benchmarks/_served.py): at least 99% of the streams kept real
time and p99 < 100 ms, both. benchmarks/ is a folder of scripts, not a package: its modules are imported from
the folder, as the scripts import them when run."""

from __future__ import annotations

import math

import pytest

from tests.conftest import REPO


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import _served

    return _served


@pytest.mark.parametrize("kept, streams, p99, ok", [
    (0, 200, 97.8, False),      # the level: no stream kept real time, p99 under 100 ms; was "ok"
    (175, 200, 78.7, False),    # 88% kept, p99 fine
    (200, 200, 97.8, True),
    (198, 200, 50.0, True),     # exactly 99%
    (197, 200, 50.0, False),
    (99, 100, 99.9, True),
    (297, 300, 10.0, True),     # 99% of 300 in integers (0.99 * 300 is 297.00000000000006 in floats)
    (200, 200, 100.0, False),   # p99 must be under 100 ms
    (200, 200, 250.0, False),
    (200, 200, math.nan, False),  # no latency measured (a static variant's "p50 nan ms")
    (1, 1, 5.0, True), (0, 1, 5.0, False),
])
def test_a_level_is_served_only_when_streams_kept_real_time_and_p99_is_under_100_ms(bench, kept, streams, p99, ok):
    assert bench.served(kept, streams, p99) is ok
    line = bench.verdict(kept, streams, p99)
    assert f"{kept}/{streams} kept real time" in line and f"p99 {p99:.1f} ms" in line  # both numbers, always
    assert line.endswith("-> ok") is ok
    if not ok:
        assert ("kept < 99%" in line) is (100 * kept < 99 * streams)
        assert ("p99 >= 100 ms" in line) is not (p99 < 100)


@pytest.mark.parametrize("kept, streams", [(0, 0), (5, 4), (-1, 4)])
def test_an_impossible_level_is_an_error_not_a_verdict(bench, kept, streams):
    with pytest.raises(ValueError, match=f"expected 0 <= kept <= streams and streams > 0, got kept {kept}"):
        bench.served(kept, streams, 10.0)


@pytest.mark.parametrize("kept, errors, ok", [(0, "none", False), (200, "none", True), (200, "closed x1", False)])
def test_the_scale_out_benchmark_counts_a_level_by_the_same_criterion(bench, kept, errors, ok):
    pytest.importorskip("onnxruntime")
    import scale_out

    level = scale_out.Level(streams=200, kept=kept, p50=20.0, p99=97.8, chunks=1000, errors=errors)
    assert level.ok is ok
