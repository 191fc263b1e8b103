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


@pytest.mark.parametrize("kept, streams, shown", [(989, 1000, "98.9%"), (197, 199, "98.9%"), (198, 200, "99%"),
                                                  (1, 3, "33.3%"), (0, 5, "0%"), (7, 7, "100%")])
def test_the_share_kept_is_rounded_down_so_it_never_reads_as_the_bar_it_missed(bench, kept, streams, shown):
    """989/1000 printed "(99%) ... -> over (kept < 99%)": rounded to the nearest percent."""
    assert f"kept real time ({shown})" in bench.verdict(kept, streams, 50.0)


@pytest.mark.parametrize("out, expected", [
    ("198/200 streams kept real time over 4.0 s; 7,812 chunks, latency p50 5.1 ms, p99 39.3 ms; errors: none; "
     "load generator CPU 41% of a core", (198, 200, 7812, 5.1, 39.3, "none", 0.41)),
    ("0/300 streams kept real time over 10.0 s (300 sent nothing before the run ended: ...); 0 chunks, latency p50 "
     "nan ms, p99 nan ms; errors: timeout x300; load generator CPU 3% of a core", (0, 300, 0, None, None,
                                                                                   "timeout x300", 0.03)),
])
def test_both_benchmarks_read_loadtests_summary_with_one_parser_nan_included(bench, out, expected):
    """service.py's own pattern could not read "p50 nan ms" (no reply came back) and stopped the whole search."""
    line = bench.parse_loadtest("warming up\n" + out + "\n")
    got = tuple(None if isinstance(v, float) and math.isnan(v) else v for v in line)
    assert got == expected
    assert not bench.served(line.kept, line.streams, line.p99) or expected[3] is not None
    assert bench.parse_loadtest("Error: nothing listens at http://127.0.0.1:1") is None
