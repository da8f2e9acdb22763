"""Per-detector histograms: the counts of every (row, detector) against np.bincount / the per-band
histogram of that detector's pixels, whatever the chunking, lazy, in bounded memory."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import BlockReads, raise_if_dask_computes
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import chunkings

from rastermatch import Binning, OptionError, band_histograms, histogram
from rastermatch._data import as_band_array
from rastermatch._detectors import Detectors
from rastermatch.histogram import _count_dtype, detector_histograms


def pixels_of(x: np.ndarray, index: np.ndarray, d: int, axis: str) -> np.ndarray:
    """The pixels of detector ``d``, ``(row, lines, x)`` or ``(row, y, columns)``."""
    sel = index == d
    return x[:, sel] if axis == "y" else x[:, :, sel]


def valid_of(x, nodata, mask):
    ok = np.ones(x.shape, dtype=bool)
    if nodata is not None:
        ok &= x != nodata
    if x.dtype.kind == "f":
        ok &= np.isfinite(x)
    if mask is not None:
        ok &= ~np.broadcast_to(mask, x.shape)
    return ok


def levels_oracle(x, index, ndet, axis, offset, nbins, nodata=None, mask=None):
    """np.bincount of every (row, detector)'s valid pixels, flat rows ``row * ndet + d``."""
    ok = valid_of(x, nodata, mask)
    out = np.zeros((x.shape[0] * ndet, nbins), dtype=np.int64)
    for r in range(x.shape[0]):
        for d in range(ndet):
            v = pixels_of(x[r : r + 1], index, d, axis)[pixels_of(ok[r : r + 1], index, d, axis)]
            out[r * ndet + d] = np.bincount(v.astype(np.int64) - offset, minlength=nbins)
    return out


def layout(draw, n: int, axis: str) -> Detectors:
    kind = draw(st.sampled_from(["periodic", "per position", "labelled"]))
    if kind == "periodic":
        count = draw(st.integers(1, 5))
        return Detectors.of(count, axis=axis, offset=draw(st.integers(0, count - 1)))
    if kind == "per position":
        return Detectors.of(None, axis=axis)
    return Detectors.of(draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n)), axis=axis)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_integer_counts_equal_bincount_per_detector_for_any_chunking(data):
    draw = data.draw
    dtype = np.dtype(draw(st.sampled_from(["uint8", "int8", "uint16", "int16"])))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    axis = draw(st.sampled_from(["y", "x"]))
    info = np.iinfo(dtype)
    lo = draw(st.integers(int(info.min), int(info.max)))
    hi = draw(st.integers(lo, min(lo + 40, int(info.max))))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.integers(lo, hi + 1, shape).astype(dtype)
    nodata = draw(st.one_of(st.none(), st.just(lo), st.just(int(info.min))))
    mask = None
    if draw(st.booleans()):
        mask = rng.random((draw(st.sampled_from([1, shape[0]])), *shape[1:])) < 0.3
    n = shape[1] if axis == "y" else shape[2]
    index, labels = layout(draw, n, axis).resolve(n)
    chunks = draw(chunkings(shape))
    src = as_band_array(da.from_array(x, chunks=chunks), nodata=nodata)
    h = detector_histograms(src, index, labels, axis=axis, mask=mask)
    assert h.is_lazy and h.dims == ("band", "detector")
    h = h.compute()
    want = levels_oracle(
        x, index, len(labels), axis, h.binning.offset, h.binning.nbins, nodata, mask
    )
    np.testing.assert_array_equal(h.counts, want)
    assert h.counts.dtype == np.int32 and h.rows.coord("detector") == labels
    assert h.nodata == nodata and h.masked == (mask is not None)
    # the occupied levels and one empty level below them, the same for every row
    ok = valid_of(x, nodata, mask)
    if ok.any():
        vmin, vmax = int(x[ok].min()), int(x[ok].max())
        assert h.binning.same_as(Binning.occupied(dtype, h.nrows, vmin, vmax))
    # numpy input counts the same
    g = detector_histograms(as_band_array(x, nodata=nodata), index, labels, axis=axis, mask=mask)
    np.testing.assert_array_equal(g.counts, h.counts)
    assert g.binning.same_as(h.binning)


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_float_statistics_equal_the_band_histogram_of_each_detector(data):
    draw = data.draw
    dtype = np.dtype(draw(st.sampled_from(["float32", "float64", "int32"])))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 10)), draw(st.integers(1, 10)))
    axis = draw(st.sampled_from(["y", "x"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    # quantised values: many ties, so vmin/vmax/nmin are exercised
    x = (rng.integers(0, 30, shape) * (0.25 if dtype.kind == "f" else 3)).astype(dtype)
    nodata = None
    if dtype.kind == "f":
        x[rng.random(shape) < 0.1] = np.nan
        nodata = draw(st.one_of(st.none(), st.just(0.5)))
    x[:, 0, 0] = 1  # every row has a valid pixel
    mask = rng.random((1, *shape[1:])) < 0.2 if draw(st.booleans()) else None
    if mask is not None:
        mask[0, 0, 0] = False
    bins = draw(st.integers(1, 12))
    n = shape[1] if axis == "y" else shape[2]
    index, labels = layout(draw, n, axis).resolve(n)
    chunks = draw(chunkings(shape))
    src = as_band_array(da.from_array(x, chunks=chunks), nodata=nodata)
    h = detector_histograms(src, index, labels, axis=axis, mask=mask, bins=bins).compute()
    whole = band_histograms(x, nodata=nodata, mask=mask, bins=bins)
    assert h.binning.kind == "uniform" and h.has_stats
    ndet = len(labels)
    for r in range(shape[0]):
        lo, hi = whole.binning.lo[r], whole.binning.hi[r]
        np.testing.assert_array_equal(h.binning.lo[r * ndet : (r + 1) * ndet], lo)
        for d in range(ndet):
            px = pixels_of(x[r : r + 1], index, d, axis)
            m = None if mask is None else pixels_of(mask, index, d, axis)
            row = r * ndet + d
            if px.size == 0 or not valid_of(px, nodata, m).any():
                assert h.counts[row].sum() == 0
                continue
            if lo == hi:  # one valid value in the whole row: every pixel in bin 0
                n = valid_of(px, nodata, m).sum()
                assert h.counts[row, 0] == h.nmin[row, 0] == n and h.vmin[row, 0] == lo
                continue
            want = band_histograms(px, nodata=nodata, mask=m, bins=bins, range=(lo, hi))
            np.testing.assert_array_equal(h.counts[row], want.counts[0])
            np.testing.assert_array_equal(h.vmin[row], want.vmin[0])
            np.testing.assert_array_equal(h.vmax[row], want.vmax[0])
            np.testing.assert_array_equal(h.nmin[row], want.nmin[0])
    # pooled over the detectors: the band histogram, statistics included
    pooled = h.sum("detector")
    np.testing.assert_array_equal(pooled.counts, whole.counts)
    np.testing.assert_array_equal(pooled.vmin, whole.vmin)
    np.testing.assert_array_equal(pooled.nmin, whole.nmin)
    g = detector_histograms(as_band_array(x, nodata=nodata), index, labels, axis=axis,
                            mask=mask, bins=bins)  # fmt: skip
    np.testing.assert_array_equal(g.counts, h.counts)
    np.testing.assert_array_equal(g.vmax, h.vmax)


def test_a_given_range_bins_every_detector_alike(rng):
    x = rng.integers(0, 100, (2, 6, 8)).astype(np.uint16)
    index, labels = Detectors.of(3, axis="y").resolve(6)
    h = detector_histograms(x, index, labels, axis="y", bins=10, range=(0, 100))
    assert h.binning.kind == "uniform" and np.all(h.binning.lo == 0) and np.all(h.binning.hi == 100)
    np.testing.assert_array_equal(
        h.sum("detector").counts, band_histograms(x, bins=10, range=(0, 100)).counts
    )


def test_building_reads_only_the_range_for_integers_and_nothing_for_floats(rng, monkeypatch):
    x = rng.integers(0, 50, (2, 16, 12)).astype(np.uint8)
    index, labels = Detectors.of(4, axis="y").resolve(16)
    reads = BlockReads()
    arr = reads.count(da.from_array(x, chunks=(1, 5, 5)))
    with raise_if_dask_computes(0):  # counts over every level are small: no range pass
        small = detector_histograms(arr, index, labels, axis="y")
    assert reads.n == 0 and small.binning.is_full
    monkeypatch.setattr(histogram, "FULL_LEVELS_BYTES", 0)
    with raise_if_dask_computes(1):  # one pass: the occupied range
        h = detector_histograms(arr, index, labels, axis="y")
    first = reads.n
    assert first == arr.npartitions
    with raise_if_dask_computes(1):  # one pass: the counts
        h = h.compute()
    assert reads.n == 2 * first
    assert small.compute().binning.same_as(h.binning)
    f = da.from_array(x.astype(np.float32), chunks=(1, 5, 5))
    with raise_if_dask_computes(0):
        hf = detector_histograms(f, index, labels, axis="y", bins=8)
    assert hf.is_lazy and hf.binning.is_lazy
    np.testing.assert_array_equal(
        hf.compute().sum("detector").counts, band_histograms(x.astype(np.float32), bins=8).counts
    )


def test_rows_of_a_stack_get_the_detector_dim_last(rng):
    x = rng.integers(0, 9, (2, 3, 4, 5)).astype(np.uint8)
    arr = xr.DataArray(
        x, dims=("time", "band", "y", "x"), coords={"time": [2020, 2021], "band": ["r", "g", "b"]}
    )
    index, labels = Detectors.of(["p", "q", "p", "q", "p"], axis="x").resolve(5)
    h = detector_histograms(as_band_array(arr.chunk({"x": 2})), index, labels, axis="x")
    h = h.compute()
    assert h.dims == ("time", "band", "detector") and h.rows.coord("detector") == ("p", "q")
    one = h.sel(time=2021, band="g", detector="q")
    want = np.bincount(x[1, 1][:, [1, 3]].ravel() - h.binning.offset, minlength=h.binning.nbins)
    np.testing.assert_array_equal(one.counts[0], want)
    assert h.describe(h.nrows - 1) == "time 2021, band 'b', detector 'q' of data"


def test_one_detector_per_column_of_a_wide_scene(rng):
    """Push-broom layout, >= 2,000 columns: compact partials, one result chunk, int32 counts."""
    x = (rng.integers(0, 4096, (2, 3, 2100))).astype(np.uint16)
    x[:, 0, :7] = 0
    index, labels = Detectors.of(None, axis="x").resolve(2100)
    arr = da.from_array(x, chunks=(1, 2, 512))
    h = detector_histograms(as_band_array(arr, nodata=0), index, labels, axis="x")
    assert h.counts.chunks[0] == (2 * 2100,)
    h = h.compute()
    assert h.counts.shape == (4200, h.binning.nbins) and h.counts.dtype == np.int32
    assert h.binning.nbins <= 4097
    want = levels_oracle(x, index, 2100, "x", h.binning.offset, h.binning.nbins, nodata=0)
    np.testing.assert_array_equal(h.counts, want)
    np.testing.assert_array_equal(h.total, (x != 0).sum(axis=1).ravel())


def test_partials_take_the_smallest_count_dtype():
    assert _count_dtype(65_535) == np.uint16
    assert _count_dtype(65_536) == np.int32
    assert _count_dtype(2**31 - 1) == np.int32
    assert _count_dtype(2**31) == np.int64


def test_identical_across_schedulers(rng):
    x = rng.integers(0, 200, (2, 20, 30)).astype(np.uint8)
    index, labels = Detectors.of(6, axis="y", offset=2).resolve(20)
    arr = da.from_array(x, chunks=(1, 7, 11))
    h = detector_histograms(arr, index, labels, axis="y")
    (a,) = dask.compute(h, scheduler="threads")
    (b,) = dask.compute(h, scheduler="sync")
    np.testing.assert_array_equal(a.counts, b.counts)
    (p,) = dask.persist(h)
    p = p.compute()
    np.testing.assert_array_equal(p.counts, a.counts)


def test_bad_detector_arguments_are_refused(rng):
    x = rng.integers(0, 9, (1, 4, 5)).astype(np.uint8)
    with pytest.raises(OptionError, match="one integer detector per line"):
        detector_histograms(x, np.zeros(5, dtype=int), (0,), axis="y")
    with pytest.raises(OptionError, match="one integer detector per column"):
        detector_histograms(x, np.zeros(5, dtype=float), (0,), axis="x")
    with pytest.raises(OptionError, match=r"line 2 .* detector 3, but there are 2"):
        detector_histograms(x, np.array([0, 1, 3, 0]), (0, 1), axis="y")
    with pytest.raises(OptionError, match="'y' or 'x'"):
        detector_histograms(x, np.zeros(4, dtype=int), (0,), axis="z")
    with pytest.raises(OptionError, match="at least one detector"):
        detector_histograms(x, np.zeros(4, dtype=int), (), axis="y")
    named = xr.DataArray(x, dims=("detector", "y", "x"))
    with pytest.raises(OptionError, match="already has a row dim named 'detector'"):
        detector_histograms(named, np.zeros(4, dtype=int), (0,), axis="y")


def test_a_histogram_too_large_for_memory_is_refused_before_any_work(monkeypatch, rng):
    x = rng.random((2, 2, 3000)).astype(np.float32)
    index, labels = Detectors.of(None, axis="x").resolve(3000)
    with raise_if_dask_computes(0), pytest.raises(OptionError, match=r"GiB.*pass fewer bins"):
        detector_histograms(da.from_array(x), index, labels, axis="x")  # 65,536 bins each
    monkeypatch.setattr("rastermatch.histogram.MAX_DETECTOR_BYTES", 1000)
    small = rng.integers(0, 100, (1, 2, 30)).astype(np.uint8)
    with pytest.raises(OptionError, match="declare the fill value as nodata"):
        detector_histograms(small, np.arange(30), tuple(range(30)), axis="x")


def test_a_detector_without_lines_and_an_input_without_valid_pixels(rng):
    x = rng.integers(1, 9, (2, 6, 4)).astype(np.uint8)
    index = np.array([0, 2, 0, 2, 2, 0])  # detector 1 ("b") records no line
    for data in (x, da.from_array(x, chunks=(1, 4, 3))):
        h = detector_histograms(data, index, ("a", "b", "c"), axis="y").compute()
        assert h.total.tolist() == [12, 0, 12, 12, 0, 12]
        np.testing.assert_array_equal(
            h.counts, levels_oracle(x, index, 3, "y", h.binning.offset, h.binning.nbins)
        )
    empty = as_band_array(da.from_array(np.zeros((1, 3, 3), np.uint16)), nodata=0)
    h = detector_histograms(empty, np.arange(3), (0, 1, 2), axis="x").compute()
    assert h.binning.nbins == 1 and h.total.tolist() == [0, 0, 0]
