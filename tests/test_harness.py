"""The torch-free parity harness: the verdict, the report, and inputs from the user's data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_rnn.errors import DataError, ParityError
from edge_rnn.harness import (
    TOLERANCE,
    InputLayout,
    ParityReport,
    data_inputs,
    judge,
    load_data,
    raise_failures,
    random_inputs,
)

TOL = TOLERANCE["float32"]


def test_one_tolerance_table_with_the_documented_rows():
    assert set(TOLERANCE) == {"float32", "float16", "int8"}
    assert (TOL.atol, TOL.k, TOL.rtol) == (1e-5, 10.0, 1e-4)
    assert (TOLERANCE["float16"].atol, TOLERANCE["float16"].rtol) == (2e-3, 1e-2)  # variants against float32
    assert (TOLERANCE["int8"].atol, TOLERANCE["int8"].rtol) == (5e-2, 5e-2)


def test_error_within_k_times_fp32_noise_passes_even_far_above_atol():
    want = np.array([3000.0, -1.0])
    noise = want + np.array([0.02, 0.0])  # PyTorch fp32 is 0.02 off at 3000 (a few ulps)
    row = judge("long T=10000", "default", "cn", want + np.array([0.07, 0.0]), want, noise, TOL)
    assert row.ok and row.err_onnx == pytest.approx(0.07) and row.err_torch == pytest.approx(0.02)
    assert row.bound == pytest.approx(0.02 * TOL.k) and row.ratio == pytest.approx(3.5)
    assert row.err_fp32 == pytest.approx(0.05)  # what the old absolute 1e-5 bar judged, and failed
    assert row.max_rel == pytest.approx(0.07 / 3000)


def test_error_beyond_k_times_fp32_noise_fails():
    want = np.array([3000.0])
    got = want + 0.02 * TOL.k * 1.1
    row = judge("long", "default", "cn", got, want, want + 0.02, TOL)
    assert not row.ok and row.margin == pytest.approx(1.1)


def test_atol_is_the_floor_when_fp32_is_exact():
    want = np.array([0.5, 0.25])
    assert judge("full", "d", "y", want + 9e-6, want, want, TOL).ok
    row = judge("full", "d", "y", want + 2e-5, want, want, TOL)
    assert not row.ok and row.bound == TOL.atol and row.ratio == math.inf


def test_nan_never_passes():
    want = np.array([1.0, 2.0])
    row = judge("full", "d", "y", np.array([1.0, np.nan]), want, want, TOL)
    assert not row.ok and row.margin == math.inf
    assert not judge("full", "d", "y", np.array([1.0, np.nan]), want, None, TOL).ok


def test_shapes_that_differ_fail_instead_of_broadcasting():
    want = np.zeros((3, 8))
    row = judge("full", "d", "y", np.zeros((1, 8)), want, want, TOL)  # (1, 8) would broadcast against (3, 8)
    assert not row.ok and "shape (1, 8), reference (3, 8)" in row.describe()


def test_fallback_without_float64_is_elementwise_atol_plus_rtol():
    want = np.array([3000.0, 1e-3])
    # 0.2 at 3000 is within 1e-5 + 1e-4 * 3000; the same absolute error at 1e-3 is not
    assert judge("long", "d", "cn", want + np.array([0.2, 0.0]), want, None, TOL).ok
    row = judge("long", "d", "cn", want + np.array([0.0, 2e-5]), want, None, TOL)
    assert not row.ok and row.err_torch is None and math.isnan(row.ratio)


def test_report_table_and_parity_error_list_every_failing_row_with_its_numbers():
    want = np.ones(4)
    report = ParityReport(rows=[
        judge("full T=6", "disabled", "y", want, want, want + 1e-7, TOL),
        judge("chunked T=41", "default", "hn", want + 1e-3, want, want + 1e-7, TOL),
        judge("long T=100", "default", "cn", want + 5e-2, want, want + 1e-3, TOL),
    ])
    table = report.table()
    assert "err_onnx" in table and "err_torch" in table and "ratio" in table and "rel" in table
    assert "pass when err_onnx <= max(1e-05, 10 x err_torch)" in table
    assert table.count("FAIL") == 2 and not report.ok
    with pytest.raises(ParityError) as err:
        raise_failures(report, "m.onnx")
    msg = str(err.value)
    assert "chunked T=41 [default] hn: err_onnx 1.000e-03, err_torch 1.00e-07 (ratio 1e+04)" in msg
    assert "long T=100 [default] cn: err_onnx 5.000e-02, err_torch 1.00e-03 (ratio 50)" in msg
    assert len(err.value.rows) == 2 and [f[1] for f in err.value.failures] == ["hn", "cn"]
    raise_failures(ParityReport(rows=report.rows[:1]), "m.onnx")  # all ok: nothing raised


# ----------------------------------------------------------------------------- data

LAYER = InputLayout("x", (1, 1, 3), batch_axis=1, time_axis=0)  # (time, batch, 3)


def test_data_sequences_are_cut_at_random_offsets_and_repeated_when_short():
    seq = np.arange(15, dtype=np.float32).reshape(5, 3)  # 5 steps of 3 features
    make = data_inputs([LAYER], seq)
    x = make(np.random.default_rng(0), 2, 12, False)
    assert x["x"].shape == (12, 2, 3) and x["x"].dtype == np.float32
    for b in range(2):
        start = int(x["x"][0, b, 0]) // 3
        want = seq[(start + np.arange(12)) % 5]  # wraps: the 5-step sequence repeated
        np.testing.assert_array_equal(x["x"][:, b], want)


def test_several_sequences_feed_the_streams_of_a_batch_in_turn():
    a, b = np.zeros((4, 3), np.float32), np.ones((6, 3), np.float32)
    x = data_inputs([LAYER], [a, b])(np.random.default_rng(1), 2, 3, False)["x"]
    assert sorted(float(x[:, i].mean()) for i in range(2)) == [0.0, 1.0]


def test_layouts_put_batch_and_time_where_the_model_has_them():
    seq = np.random.default_rng(0).standard_normal((7, 64, 8)).astype(np.float32)
    # a one-step-per-call model taking (batch, 64, 8): axis 0 of the data counts calls
    vad = InputLayout("x", (1, 64, 8), batch_axis=0, time_axis=None)
    x = data_inputs([vad], seq)(np.random.default_rng(0), 3, 5, True)["x"]
    assert x.shape == (5, 3, 64, 8)
    chw = InputLayout("x", (1, 40, 9), batch_axis=0, time_axis=2)  # (batch, features, time)
    assert random_inputs([chw])(np.random.default_rng(0), 2, 11, False)["x"].shape == (2, 40, 11)
    with pytest.raises(DataError, match=r"expected one sequence of shape \(calls, 64, 8\), got \(7, 64\)"):
        data_inputs([vad], seq[:, :, 0])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((4, 5), np.float32), r"expected one sequence of shape \(time, 3\), got \(4, 5\)"),
    (np.zeros((2, 4, 3), np.float32), r"several sequences go in a list or an \.npz"),
    (np.zeros((0, 3), np.float32), "expected at least one step"),
    (np.array([[1.0, np.nan, 0.0]]), "expected finite values"),
    (np.array([[1e39, 0.0, 0.0]]), "beyond float32's range"),
    (np.array([["a", "b", "c"]]), "expected a real numeric array, got dtype <U1"),
    ([], "expected at least one sequence"),
])
def test_bad_data_is_refused_with_the_expected_shape(bad, match):
    with pytest.raises(DataError, match=match):
        data_inputs([LAYER], bad)


def test_models_with_several_inputs_take_a_mapping_by_name():
    layouts = [LAYER, InputLayout("cond", (1, 2), batch_axis=0, time_axis=None)]
    with pytest.raises(DataError, match=r"has 2 data inputs \['x', 'cond'\]"):
        data_inputs(layouts, np.zeros((4, 3)))
    make = data_inputs(layouts, {"x": np.zeros((4, 3)), "cond": np.ones((4, 2))})
    feeds = make(np.random.default_rng(0), 2, 4, False)
    assert feeds["x"].shape == (4, 2, 3) and feeds["cond"].shape == (2, 2)
    with pytest.raises(DataError, match="one length"):
        data_inputs(layouts, {"x": np.zeros((4, 3)), "cond": np.ones((5, 2))})


def test_load_data_reads_npy_and_npz_and_refuses_pickles(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((5, 3), np.float32))
    assert [a.shape for a in load_data(tmp_path / "one.npy")] == [(5, 3)]
    np.savez(tmp_path / "many.npz", a=np.zeros((5, 3)), b=np.ones((9, 3)))
    assert {k: v.shape for k, v in load_data(tmp_path / "many.npz").items()} == {"a": (5, 3), "b": (9, 3)}
    import pickle

    (tmp_path / "raw.npy").write_bytes(pickle.dumps({"x": 1}))  # a bare pickle named .npy
    with pytest.raises(DataError, match="pickles are never loaded"):
        load_data(tmp_path / "raw.npy")
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="only pickle can load; refused"):
        load_data(tmp_path / "obj.npy")
    np.savez(tmp_path / "obj.npz", a=np.zeros(3), b=np.array([None], dtype=object))
    with pytest.raises(DataError, match="only pickle can load; refused"):
        load_data(tmp_path / "obj.npz")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="expected a .npy or .npz file, got neither"):
        load_data(tmp_path / "junk.npy")
    (tmp_path / "trunc.npy").write_bytes((tmp_path / "one.npy").read_bytes()[:100])
    with pytest.raises(DataError, match="header is malformed"):
        load_data(tmp_path / "trunc.npy")
    (tmp_path / "short.npy").write_bytes((tmp_path / "one.npy").read_bytes()[:-8])
    with pytest.raises(DataError, match=r"declares shape \(5, 3\) float32 \(60 bytes\), but the file holds"):
        load_data(tmp_path / "short.npy")
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "missing.npy")


def test_discrete_outputs_may_differ_only_where_fp32_differs_too():
    want = np.zeros(1000, np.int64)
    want[::2] = 1
    noise = want.copy()
    noise[0] = 0  # fp32 flips one near-tie
    assert not judge("c", "l", "flag", 1 - want, want, noise, TOL).ok  # every decision inverted
    got = want.copy()
    got[0] = 0
    assert judge("c", "l", "flag", got, want, noise, TOL).ok  # the same near-tie
    got[2] = 0
    row = judge("c", "l", "flag", got, want, noise, TOL)
    assert not row.ok and "1 of 1000 discrete values differ where PyTorch fp32 agrees" in row.describe()


def test_equal_infinities_are_equal_and_nan_in_fp32_alone_leaves_the_floor():
    want = np.array([np.inf, 1.0])
    assert judge("full", "d", "y", want.copy(), want, want.copy(), TOL).ok
    row = judge("full", "d", "y", np.array([1.0, 1.0]), np.array([1.0, 1.0]), np.array([np.nan, 1.0]), TOL)
    assert row.ok and row.bound == TOL.atol


def test_a_systematic_error_hidden_behind_one_large_fp32_outlier_fails():
    """One flip in a rounded output makes fp32's max error 1; an error of 0.5 everywhere must still fail."""
    want = np.arange(1000, dtype=np.float64)
    noise = want.copy()
    noise[7] += 1.0
    row = judge("long", "d", "y", want + 0.5, want, noise, TOL)
    assert row.err_onnx <= row.bound and not row.ok and "90th-percentile" in row.detail


def test_data_written_as_nested_lists_is_one_sequence_and_an_empty_npz_is_refused(tmp_path):
    seq = np.arange(12, dtype=np.float32).reshape(4, 3)
    x = data_inputs([LAYER], seq.tolist())(np.random.default_rng(0), 1, 4, False)["x"]
    assert sorted(x[:, 0, 0].tolist()) == [0.0, 3.0, 6.0, 9.0]
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DataError, match="expected at least one sequence"):
        data_inputs([LAYER], load_data(tmp_path / "empty.npz"))


def test_a_forged_npy_header_is_refused_before_anything_is_allocated(tmp_path):
    """A header declaring (10**12, 4) float32 would ask numpy for 14.6 TiB."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)})
    (tmp_path / "huge.npy").write_bytes(buf.getvalue() + b"\0" * 64)
    with pytest.raises(DataError, match=r"declares shape \(1000000000000, 4\)"):
        load_data(tmp_path / "huge.npy")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00" + (20).to_bytes(2, "little") + b"{'descr': (((" + b" " * 7)
    with pytest.raises(DataError, match="header is malformed"):
        load_data(tmp_path / "bad.npy")
    f = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    np.save(tmp_path / "fortran.npy", f)
    np.testing.assert_array_equal(load_data(tmp_path / "fortran.npy")[0], f)
