"""Per-band histograms: exact counts, any chunking, lazy until computed."""

from __future__ import annotations

import json
import warnings
from fractions import Fraction

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import BlockReads, raise_if_dask_computes
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import chunkings

from rastermatch import (
    LUT,
    Binning,
    BinningMismatchError,
    DimensionError,
    Histogram,
    HistogramFileError,
    NodataReplacedWarning,
    NotComputedError,
    NoValidPixelsError,
    OptionError,
    UnsupportedDtypeError,
    band_histograms,
    band_ranges,
)
from rastermatch._rows import Rows
from rastermatch.histogram import block_counts, union_ranges


def bincount_oracle(x: np.ndarray, offset: int, nbins: int, valid=None) -> np.ndarray:
    rows = []
    for b in range(x.shape[0]):
        v = x[b].astype(np.int64).ravel() - offset
        if valid is not None:
            v = v[valid[b].ravel()]
        rows.append(np.bincount(v, minlength=nbins))
    return np.stack(rows)


@pytest.mark.parametrize(
    ("dtype", "offset", "nbins"),
    [("uint8", 0, 256), ("uint16", 0, 65536), ("int8", -128, 256), ("int16", -32768, 65536)],
)
def test_one_bin_per_level(dtype, offset, nbins, rng):
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, (3, 37, 41)).astype(dtype)
    h = band_histograms(x)
    assert h.binning.kind == "levels" and h.binning.nbins == nbins and h.binning.offset == offset
    np.testing.assert_array_equal(h.counts, bincount_oracle(x, offset, nbins))
    assert h.counts.dtype == np.int64 and h.bands == (1, 2, 3)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_same_counts(data):
    shape = (2, data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40)))
    x = (
        np.random.default_rng(data.draw(st.integers(0, 2**16)))
        .integers(0, 50, shape)
        .astype(np.int16)
    )
    mask = x % 7 == 0
    dx = da.from_array(x, chunks=data.draw(chunkings(shape)))
    dm = da.from_array(mask[0], chunks=data.draw(chunkings(shape[1:])))
    expected = band_histograms(x, nodata=3, mask=mask[0])
    got = band_histograms(dx, nodata=3, mask=dm).compute()
    np.testing.assert_array_equal(got.counts, expected.counts)
    xf = x.astype(np.float64)
    got_f = band_histograms(da.from_array(xf, chunks=dx.chunks), bins=17).compute()
    np.testing.assert_array_equal(got_f.counts, band_histograms(xf, bins=17).counts)


def test_building_computes_nothing_and_compute_together_reads_once():
    reads = BlockReads()
    base = da.from_array(
        np.arange(4 * 60 * 60, dtype=np.uint16).reshape(4, 60, 60) % 4096, chunks=(1, 30, 30)
    )
    src = reads.count(base)
    ref = reads.count(base[:, ::-1] // 2)
    fsrc = src.astype(np.float32)
    with raise_if_dask_computes():
        h_src = band_histograms(src)
        h_ref = band_histograms(ref, nodata=0)
        h_float = band_histograms(fsrc, range=(0, 4096))
        assert h_src.is_lazy and dask.is_dask_collection(h_src)
    h_src, h_ref, h_float = dask.compute(h_src, h_ref, h_float)
    assert reads.n == 2 * base.npartitions  # src (shared by h_src and h_float) and ref, once each
    assert isinstance(h_src, Histogram) and not h_src.is_lazy
    assert h_src.total.tolist() == [3600] * 4
    assert h_float.total.tolist() == [3600] * 4


def test_nodata_nan_inf_and_mask_are_left_out():
    x = np.array([[[0, 1, 2], [2, 2, 0]], [[5, 5, 5], [1, 2, 3]]], dtype=np.uint8)
    h = band_histograms(x, nodata=0)
    assert h.total.tolist() == [4, 6]
    m = np.array([[False, True, False], [False, False, True]])
    assert band_histograms(x, nodata=0, mask=m).total.tolist() == [3, 4]
    m3 = np.zeros_like(x, dtype=bool)
    m3[1] = True
    with pytest.raises(NoValidPixelsError, match="no valid pixels"):
        band_histograms(x.astype(np.float32), mask=m3)
    f = np.array([[np.nan, np.inf, -np.inf, 1.0, 2.0, -9999.0]])
    hf = band_histograms(f, nodata=-9999, bins=4)
    assert (
        hf.total.tolist() == [2]
        and hf.binning.lo.tolist() == [1.0]
        and hf.binning.hi.tolist() == [2.0]
    )


def test_nodata_and_mask_from_dataarrays():
    x = xr.DataArray(np.array([[[0, 1], [2, 3]]], dtype=np.uint16), dims=("band", "y", "x"))
    x = x.rio.write_nodata(0)
    assert band_histograms(x).total.tolist() == [3]
    assert band_histograms(x, nodata=3).total.tolist() == [3]
    mask = xr.DataArray(np.array([[False, True], [False, False]]), dims=("y", "x"))
    assert band_histograms(x, mask=mask).total.tolist() == [2]
    assert band_histograms(x.assign_coords(band=["red"])).bands == ("red",)


@pytest.mark.parametrize("dtype", ["uint32", "int32", "float32", "float64"])
def test_binned_dtypes_match_numpy_histogram(dtype, rng):
    x = (rng.normal(1000, 300, (2, 50, 60))).astype(dtype)
    h = band_histograms(x, bins=100)
    assert h.binning.kind == "uniform"
    for b in range(2):
        lo, hi = float(x[b].min()), float(x[b].max())
        want, _ = np.histogram(x[b].astype(np.float64), bins=100, range=(lo, hi))
        # the same equal-width rule up to floating-point ties exactly on an edge
        assert np.abs(h.counts[b] - want).sum() <= 2
        assert h.counts[b].sum() == x[b].size


def test_given_range_and_per_band_ranges(rng):
    x = rng.uniform(0, 10, (2, 20, 20))
    h = band_histograms(x, bins=10, range=[(0, 10), (0, 5)])
    assert h.total.tolist() == [400, int((x[1] <= 5).sum())]
    assert band_ranges(x).shape == (2, 2)


def test_add_merge_and_json():
    a = band_histograms(np.array([[1, 2, 3]], dtype=np.uint8))
    b = band_histograms(np.array([[3, 3]], dtype=np.uint8))
    assert (a + b).counts[0, 1:4].tolist() == [1, 1, 3]
    with pytest.raises(BinningMismatchError, match="different binnings"):
        a + band_histograms(np.array([[3, 3]], dtype=np.uint16))
    with pytest.raises(BinningMismatchError):
        band_histograms(np.array([[1.0, 2.0]]), bins=4) + band_histograms(
            np.array([[1.0, 3.0]]), bins=4
        )
    f = band_histograms(np.array([[[0.5, 1.5], [2.5, np.nan]]]), bins=8)
    back = Histogram.from_json(f.to_json())
    np.testing.assert_array_equal(back.counts, f.counts)
    assert back.binning.same_as(f.binning)
    assert json.loads(f.to_json())["type"] == "rastermatch.Histogram"
    lazy = band_histograms(da.ones((1, 4, 4), dtype=np.uint8, chunks=2))
    assert (lazy + lazy).compute().counts[0, 1] == 32


def test_bad_input_is_refused():
    with pytest.raises(DimensionError, match="no spatial dims"):
        band_histograms(xr.DataArray(np.zeros((3, 3, 2), np.uint8), dims=("r", "c", "band")))
    for dtype in (np.complex64, bool, object):
        with pytest.raises(UnsupportedDtypeError, match="cannot be histogrammed"):
            band_histograms(np.zeros((2, 2), dtype=dtype))
    with pytest.raises(ValueError, match="bins must be a positive integer"):
        band_histograms(np.zeros((2, 2)), bins=0)
    with pytest.raises(DimensionError, match="must cover the same"):
        band_histograms(np.zeros((2, 2), np.uint8), mask=np.zeros((3, 3), bool))
    with pytest.raises(UnsupportedDtypeError, match="boolean mask"):
        band_histograms(np.zeros((2, 2), np.uint8), mask=np.zeros((2, 2), np.uint8))
    with pytest.raises(TypeError, match="pass a numpy array"):
        band_histograms([[1, 2]])


def test_block_counts_stay_compact():
    x = da.zeros((1, 64, 64), dtype=np.uint16, chunks=(1, 32, 32))
    layer = next(
        k for k in band_histograms(x).counts.dask.layers if k.startswith("rastermatch-counts")
    )
    assert x.dask is not None and layer
    per_block = band_histograms(x).counts.dask.layers[layer]
    assert per_block is not None
    from rastermatch.histogram import block_counts

    assert (
        block_counts(np.zeros((1, 4, 4), np.uint16), kind="levels", nbins=65536).dtype == np.int32
    )


# -- per-bin statistics of uniform binnings ---------------------------------------------------


def stats_oracle(x, lo, hi, nbins):
    """vmin, vmax, nmin per bin by brute force (np.unique per bin)."""
    from rastermatch._values import uniform_bins

    vmin = np.full(nbins, np.inf)
    vmax = np.full(nbins, -np.inf)
    nmin = np.zeros(nbins, np.int64)
    v = x[np.isfinite(x) & (x >= lo) & (x <= hi)].astype(np.float64)
    k = uniform_bins(v, lo, hi, nbins)
    for b in np.unique(k):
        values = v[k == b]
        vmin[b], vmax[b] = values.min(), values.max()
        nmin[b] = np.count_nonzero(values == values.min())
    return vmin, vmax, nmin


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_bin_statistics_are_exact_for_any_chunking(data):
    shape = (2, data.draw(st.integers(1, 30)), data.draw(st.integers(1, 30)))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    dtype = data.draw(st.sampled_from(["float32", "float64", "int32"]))
    x = (rng.integers(-20, 20, shape) * data.draw(st.sampled_from([1, 3]))).astype(dtype)
    if dtype != "int32":
        x[rng.random(shape) < 0.1] = np.nan
    x[0, 0, 0] = 0
    bins = data.draw(st.sampled_from([1, 4, 7, 100]))
    dx = da.from_array(x, chunks=data.draw(chunkings(shape)))
    h = band_histograms(dx, bins=bins, nodata=3, range=(-50, 50))
    assert h.is_lazy
    h = h.compute()
    assert h.nodata == 3 and not h.masked
    for b in range(2):
        xb = np.where(x[b] == 3, np.nan, x[b].astype(np.float64))
        vmin, vmax, nmin = stats_oracle(xb, -50.0, 50.0, bins)
        np.testing.assert_array_equal(h.vmin[b], vmin)
        np.testing.assert_array_equal(h.vmax[b], vmax)
        np.testing.assert_array_equal(h.nmin[b], nmin)
    both = h + band_histograms(x[:, ::-1] * 2, bins=bins, nodata=3, range=(-50, 50))
    for b in range(2):
        xb = np.concatenate([x[b].ravel(), (x[b] * 2).ravel()]).astype(np.float64)
        vmin, vmax, nmin = stats_oracle(np.where(xb == 3, np.nan, xb), -50.0, 50.0, bins)
        np.testing.assert_array_equal(both.nmin[b], nmin)
        np.testing.assert_array_equal(both.vmin[b], vmin)


def test_a_lazy_histogram_persists_and_computes_once():
    x = da.from_array(np.arange(60, dtype=np.float64).reshape(1, 6, 10), chunks=(1, 2, 5))
    h = band_histograms(x, bins=4)
    (kept,) = dask.persist(h)
    assert kept.is_lazy
    with raise_if_dask_computes(1):
        got = kept.compute()
    np.testing.assert_array_equal(got.counts, band_histograms(x.compute(), bins=4).counts)
    np.testing.assert_array_equal(got.vmin, [[0, 15, 30, 45]])


# -- labelled rows: selection, pooling, xarray ---------------------------------------------


def _stack(rng, dtype=np.uint8, high=6, shape=(3, 2, 5, 7)):
    """A (time, band, y, x) DataArray with dates and band names."""
    x = rng.integers(0, high, shape)
    times = np.array(["2020-01-01", "2020-02-01", "2020-03-01", "2020-04-01"][: shape[0]])
    return xr.DataArray(
        x.astype(dtype),
        dims=("time", "band", "y", "x"),
        coords={"time": times.astype("datetime64[ns]"), "band": ["red", "nir", "swir"][: shape[1]]},
    )


def test_rows_survive_compute_persist_and_take(rng):
    stack = _stack(rng).chunk({"time": 1, "band": 1, "y": 3})
    h = band_histograms(stack)
    assert h.is_lazy and h.dims == ("time", "band") and h.nrows == h.nbands == 6
    (kept,) = dask.persist(h)
    for got in (h.compute(), kept.compute(), dask.compute(h)[0]):
        assert got.rows.same_as(h.rows) and got.bands == h.bands
        assert got.describe(3) == "time 2020-02-01, band 'nir' of data"
    whole = h.compute()
    assert whole.take(range(6)).rows.same_as(h.rows)
    assert whole.take([1, 0], rows=whole.rows.isel(time=0)[1]).bands == ("red", "nir")
    with pytest.raises(ValueError, match="pass rows="):
        whole.take([1, 0])
    third = whole.band(3)
    assert third.rows.shape == (1, 1) and third.describe(0) == whole.describe(3)
    flat = band_histograms(stack.values.reshape(6, 5, 7))
    np.testing.assert_array_equal(whole.counts, flat.counts)
    single = band_histograms(stack.values[0, 0])
    assert single.dims == () and single.bands == ((),) and single.describe(0) == "data"
    assert single.take([0, 0, 0]).bands == (1, 2, 3)


def test_sel_and_isel_are_the_histograms_of_the_selection(rng):
    stack = _stack(rng)
    h = band_histograms(stack)
    one = h.sel(time="2020-02-01")
    assert one.dims == ("band",) and one.bands == ("red", "nir")
    np.testing.assert_array_equal(one.counts, band_histograms(stack.isel(time=1)).counts)
    sub = h.isel(band=[1, 0], time=slice(1, None))
    assert sub.dims == ("time", "band") and sub.rows.coord("band") == ("nir", "red")
    expected = band_histograms(stack.isel(band=[1, 0], time=slice(1, None)))
    np.testing.assert_array_equal(sub.counts, expected.counts)
    pixel = h.sel(time=np.datetime64("2020-03-01"), band="nir")
    assert pixel.dims == () and pixel.total.tolist() == [35]
    with pytest.raises(ValueError, match="no row dim 'date'"):
        h.sel(date=0)
    with pytest.raises(ValueError, match="not one of the labels"):
        h.sel(band="blue")


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_sum_is_the_histogram_of_the_concatenated_rows(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    t, b = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    stack = _stack(rng, np.int16, 40, (t, b, 4, 5))
    dim = data.draw(st.sampled_from(["time", "band", ("time", "band")]))
    pooled = band_histograms(stack, nodata=3).sum(dim)
    keep = [d for d in ("time", "band") if d not in dim]
    pool = [d for d in ("time", "band") if d in dim]
    # brute force: the pooled rows' pixels side by side along y, one image per kept row
    x = stack.transpose(*keep, *pool, "y", "x").values
    x = x.reshape(*x.shape[: len(keep)], -1, x.shape[-1])
    expected = band_histograms(x, nodata=3)
    np.testing.assert_array_equal(pooled.counts, expected.counts)
    assert pooled.dims == tuple(keep)


def test_float_rows_share_a_union_range_and_sum_with_exact_stats(rng):
    stack = _stack(rng, np.float32, 50, (3, 2, 6, 5)) / np.float32(8)
    stack[1] = stack[1] * 2  # a date with another range
    lohi = band_ranges(stack.values.reshape(6, 6, 5), channel_axis=0)
    group, _ = band_histograms(stack.astype(np.uint8)).rows.groups(["time"])
    union = union_ranges(lohi, group)
    per_row = band_histograms(stack, bins=13, range=union)
    with pytest.raises(
        BinningMismatchError,
        match=r"time 2020-01-01, band 'red' of data .*time 2020-02-01, band 'red'",
    ):
        band_histograms(stack, bins=13).sum("time")
    pooled = per_row.sum("time")
    for i, band in enumerate(["red", "nir"]):
        alone = band_histograms(
            stack.sel(band=band).values.reshape(-1, 5), bins=13, range=tuple(union[i])
        )
        for got, want in zip(
            (pooled.counts, pooled.vmin, pooled.vmax, pooled.nmin),
            (alone.counts, alone.vmin, alone.vmax, alone.nmin),
            strict=True,
        ):
            np.testing.assert_array_equal(got[i], want[0])


def test_pool_cdf_is_the_mean_cdf_exactly():
    counts = np.zeros((2, 3, 256), dtype=np.int64)
    counts[0, 0, :3] = [1, 2, 0]  # three dates of two bands, unequal totals
    counts[0, 1, 1:4] = [5, 0, 2]
    counts[0, 2, [0, 7]] = [9, 1]
    counts[1, :, 2:5] = [[4, 4, 4], [1, 1, 1], [0, 6, 7]]
    rows = Rows(("band", "time"), (("red", "nir"), (2019, 2020, 2021)))
    h = Histogram(counts.reshape(6, 256), Binning.levels(np.dtype(np.uint8), 6), rows=rows)
    pooled = h.pool("time", how="cdf")
    assert pooled.dims == ("band",) and pooled.bands == ("red", "nir")
    for b in range(2):
        mean = [
            sum(Fraction(int(c[: k + 1].sum()), int(c.sum())) for c in counts[b]) / 3
            for k in range(256)
        ]
        c = np.cumsum(pooled.counts[b])
        assert [Fraction(int(v), int(c[-1])) for v in c] == mean
    np.testing.assert_array_equal(h.pool("time").counts, counts.sum(axis=1))
    with pytest.raises(ValueError, match="how must be"):
        h.pool("time", how="mean")


@pytest.mark.parametrize(
    "primes",
    [
        [1_000_000_007, 998_244_353, 1_000_000_009],  # int64 products
        [4_294_967_311, 1_000_000_007, 4_294_967_357],  # beyond int64: Python integers
    ],
)
def test_pool_cdf_rounds_to_a_common_total_when_the_lcm_is_too_large(rng, primes):
    counts = np.zeros((3, 256), dtype=np.int64)
    for i, p in enumerate(primes):
        counts[i, : 50 + i] = rng.multinomial(p - 50 - i, np.full(50 + i, 1 / (50 + i))) + 1
    values = np.linspace(0, 1, 257)[:-1]
    binning = Binning("uniform", np.float32, 256, np.zeros(3), np.ones(3))
    stats = {"vmin": np.broadcast_to(values, (3, 256)), "vmax": np.broadcast_to(values, (3, 256))}
    h = Histogram(counts, binning, rows=Rows(("time",), ((1, 2, 3),)), nmin=counts, **stats)
    pooled = h.pool("time", how="cdf")
    common = max(max(primes), 2**31)
    assert pooled.dims == () and pooled.total.tolist() == [3 * common]
    np.testing.assert_array_equal(pooled.counts[0] > 0, counts.sum(axis=0) > 0)
    mean_cdf = np.mean(np.cumsum(counts, axis=1) / counts.sum(axis=1, keepdims=True), axis=0)
    pooled_cdf = np.cumsum(pooled.counts[0]) / (3 * common)
    assert np.max(np.abs(pooled_cdf - mean_cdf)) <= 1 / common + 1e-15
    np.testing.assert_array_equal(pooled.nmin, pooled.counts)  # one value per bin: nmin = count


def test_pool_cdf_refuses_an_empty_row():
    h = Histogram(np.array([[1, 0], [0, 0]]), Binning("uniform", np.float32, 2, [0, 0], [1, 1]))
    with pytest.raises(NoValidPixelsError, match="band 2 of data"):
        h.pool("band", how="cdf")
    assert h.sum().total.tolist() == [1] and h.sum().dims == ()


def test_to_xarray_has_the_rows_as_coords(rng):
    stack = _stack(rng)
    h = band_histograms(stack)
    counts = h.to_xarray()
    assert counts.dims == ("time", "band", "bin") and counts.sizes["bin"] == 256
    assert counts.time.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(counts.time.values, stack.time.values)
    np.testing.assert_array_equal(counts.values.reshape(6, 256), h.counts)
    np.testing.assert_array_equal(
        counts.sum("time").values, h.sum("time").counts
    )  # xarray's sum is the histogram's
    lazy = band_histograms(stack.chunk({"time": 1}).astype(np.float64), bins=8, range=(0, 8))
    xc = lazy.to_xarray()
    assert xc.chunks is not None and xc.bin_lo.dims == ("time", "band")
    np.testing.assert_array_equal(xc.values.reshape(6, 8), lazy.compute().counts)
    assert band_histograms(stack.values[0, 0]).to_xarray().dims == ("bin",)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=4, max_size=4), min_size=1, max_size=4))
def test_pool_cdf_weighs_every_row_the_same(rows):
    counts = np.zeros((len(rows), 256), dtype=np.int64)
    counts[:, :4] = rows
    counts[:, 4] = 1  # every row has a pixel
    h = Histogram(
        counts, Binning.levels(np.dtype(np.uint8), len(rows)), rows=Rows.bands(range(len(rows)))
    )
    pooled = h.pool("band", how="cdf")
    c = np.cumsum(pooled.counts[0])
    for k in range(6):
        mean = sum(Fraction(int(r[: k + 1].sum()), int(r.sum())) for r in counts) / len(rows)
        assert Fraction(int(c[k]), int(c[-1])) == mean


def test_a_lazy_histogram_sums_lazily(rng):
    stack = _stack(rng).chunk({"time": 1})
    lazy = band_histograms(stack)
    with raise_if_dask_computes():
        pooled = lazy.sum("time")
        picked = lazy.sel(band="nir")
    assert pooled.is_lazy and picked.is_lazy
    np.testing.assert_array_equal(pooled.compute().counts, lazy.compute().sum("time").counts)
    assert picked.compute().dims == ("time",)
    with pytest.raises(NotComputedError, match="compute it first"):
        lazy.pool("time", how="cdf")


# -- levels over a sub-range of the dtype (counted over the occupied levels) ------------------


def test_ranged_levels_binnings_and_their_refusals():
    b = Binning.levels(np.uint16, 3, lo=99, hi=4095)
    assert (b.nbins, b.offset, b.is_full) == (3997, 99, False)
    np.testing.assert_array_equal(b.values()[2, [0, -1]], [99, 4095])
    assert b.level_bin(99) == 0 and b.level_bin(98) is None and b.level_bin(4096) is None
    assert Binning.levels(np.int8, 1).is_full and not Binning("uniform", "f4", 4, [0], [1]).is_full
    assert Binning.occupied(np.uint8, 2, 0, 7).offset == 0  # no room below level 0
    assert Binning.occupied(np.int16, 1, -32768, 5).offset == -32768
    o = Binning.occupied(np.uint16, 1, 10, 20)
    assert (o.offset, o.nbins) == (9, 12)
    assert Binning.occupied(np.uint8, 1, np.inf, -np.inf).nbins == 1  # no valid pixel
    bad = [
        ("levels", "uint8", 3, [5], [3]),  # lo > hi
        ("levels", "uint8", 11, [250], [260]),  # beyond the dtype
        ("levels", "int8", 2, [-129], [-128]),
        ("levels", "uint8", 3, [1.5], [3.5]),  # not integer levels
        ("levels", "uint8", 4, [0, 1], [3, 4]),  # differs per row
        ("levels", "uint8", 5, [0], [3]),  # nbins disagrees
        ("levels", "float32", 4, [0], [3]),
    ]
    for kind, dtype, nbins, lo, hi in bad:
        with pytest.raises(OptionError):
            Binning(kind, dtype, nbins, np.array(lo, float), np.array(hi, float))
    with pytest.raises(OptionError, match="integer level"):
        Binning.levels(np.uint8, 1, lo=2.5)
    with pytest.raises(OptionError, match="16 bits"):
        Binning.levels(np.int32, 1)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_ranged_counts_skip_levels_outside_the_bins(data):
    draw = data.draw
    dtype = np.dtype(draw(st.sampled_from(["uint8", "int8", "uint16", "int16"])))
    info = np.iinfo(dtype)
    lo = draw(st.integers(int(info.min), int(info.max)))
    hi = draw(st.integers(lo, min(lo + 30, int(info.max))))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a, b = max(int(info.min), lo - 10), min(int(info.max), hi + 10)
    x = rng.integers(a, b + 1, (2, 9, 7)).astype(dtype)
    nodata = draw(st.one_of(st.none(), st.integers(a, b)))
    mask = rng.random((1, 9, 7)) < 0.3 if draw(st.booleans()) else None
    counts = block_counts(x, mask, kind="levels", nbins=hi - lo + 1, offset=lo, nodata=nodata)
    valid = np.ones(x.shape, bool) if mask is None else ~np.broadcast_to(mask, x.shape)
    if nodata is not None:
        valid &= x != nodata
    valid &= (x >= lo) & (x <= hi)
    np.testing.assert_array_equal(counts[:, 0, 0], bincount_oracle(x, lo, hi - lo + 1, valid))


def ranged(x: np.ndarray, nodata=None) -> Histogram:
    """The histogram of ``x`` over its occupied levels (as detector histograms count)."""
    full = band_histograms(x, nodata=nodata)
    seen = np.flatnonzero(full.counts.sum(axis=0))
    b = Binning.occupied(x.dtype, full.nrows, full.binning.offset + seen[0],
                         full.binning.offset + seen[-1])  # fmt: skip
    k = b.offset - full.binning.offset
    counts = full.counts[:, k : k + b.nbins].astype(np.int32)
    return Histogram(counts, b, rows=full.rows, nodata=full.nodata)


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_a_ranged_lut_is_the_full_lut_clamped_on_every_level(data):
    draw = data.draw
    dtype = np.dtype(draw(st.sampled_from(["uint8", "int8"])))
    info = np.iinfo(dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))

    def scene() -> np.ndarray:
        lo = draw(st.integers(int(info.min), int(info.max)))
        hi = draw(st.integers(lo, min(lo + 25, int(info.max))))
        return rng.integers(lo, hi + 1, (2, 5, 6)).astype(dtype)

    src, ref = scene(), scene()
    nodata = draw(st.one_of(st.none(), st.just(int(src[0, 0, 0]))))
    if nodata is not None:
        src[:, 1, 1] = ref[:, 1, 1] = nodata + (1 if nodata < info.max else -1)
    method = draw(st.sampled_from(["nearest", "interp"]))
    rule = draw(st.sampled_from(["present", "all"]))
    h_src = band_histograms(src, nodata=nodata)
    kw = {"method": method, "levels": rule}
    full = LUT.from_histograms(h_src, band_histograms(ref, nodata=nodata), **kw)
    small = LUT.from_histograms(ranged(src, nodata), ranged(ref, nodata), **kw)
    levels = np.arange(int(info.min), int(info.max) + 1)
    b = small.source_binning
    at = np.clip(levels - b.offset, 0, b.nbins - 1)
    got = small.table[:, at]
    if rule == "all" and method == "nearest":
        # the published rule takes the first reference level of equal CDF: where that CDF is 0,
        # an empty level below the reference's first pixel - the dtype's first one for the full
        # binning, the range's for the ranged one. Everywhere else the tables agree.
        first = (ref if nodata is None else np.where(ref == nodata, ref.max(), ref)).min(
            axis=(1, 2), keepdims=True
        )[:, :, 0]
        # (or the first present level, when the one empty level below is the excluded nodata)
        below = full.table < first
        assert np.all(got[below] <= first)
        np.testing.assert_array_equal(got[~below], full.table[~below])
        return
    np.testing.assert_array_equal(got, full.table)
    assert small.out_nodata == full.out_nodata
    # and it applies as the full one does to the scene it was fitted on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NodataReplacedWarning)  # both move out_nodata alike
        np.testing.assert_array_equal(small.apply(src), full.apply(src))


def test_ranged_histograms_and_luts_round_trip_through_json(tmp_path, rng):
    src = rng.integers(40, 90, (2, 6, 7)).astype(np.uint16)
    ref = rng.integers(1000, 1200, (2, 6, 7)).astype(np.uint16)
    h = ranged(src)
    back = Histogram.from_json(h.to_json())
    assert back.binning.same_as(h.binning) and not back.binning.is_full
    np.testing.assert_array_equal(back.counts, h.counts)
    lut = LUT.from_histograms(h, ranged(ref))
    lut.save(tmp_path / "ranged.json")
    again = LUT.load(tmp_path / "ranged.json")
    np.testing.assert_array_equal(again.table, lut.table)
    assert again.source_binning.same_as(lut.source_binning)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lo", [5.0, 5.0], r"binning\.hi\[0\]|below lo"),
        ("lo", [-1.0, -1.0], r"binning\.lo\[0\].*integers from 0 to 65535"),
        ("lo", [2.5, 2.5], r"binning\.lo\[0\].*integers"),
        ("lo", [2.0, 3.0], r"binning\.lo\[1\].*the same on every row"),
        ("hi", [4.0, 70000.0], r"binning\.hi\[1\]"),
        ("nbins", 7, r"binning\.nbins.*disagree"),
        ("nbins", 70000, r"binning\.nbins.*65,536 levels"),
    ],
)
def test_bad_ranged_binnings_in_documents_are_refused(field, value, message):
    h = Histogram(np.ones((2, 3), dtype=np.int32), Binning.levels(np.uint16, 2, lo=2, hi=4))
    d = json.loads(h.to_json())
    if field == "lo" and value[0] == 5.0:
        d["binning"]["hi"] = [4.0, 4.0]
    d["binning"][field] = value
    with pytest.raises(HistogramFileError, match=message):
        Histogram.from_dict(d)


def test_int32_counts_stay_int32_and_sum_in_int64():
    big = np.full((2, 3), 2**31 - 1, dtype=np.int32)
    h = Histogram(big, Binning.levels(np.uint8, 2, lo=0, hi=2))
    assert h.counts.dtype == np.int32
    assert h.total.dtype == np.int64 and h.total.tolist() == [3 * (2**31 - 1)] * 2
    assert h.cumulative()[0, -1] == 3 * (2**31 - 1)
    assert h.sum().counts.tolist() == [[2 * (2**31 - 1)] * 3]
    assert (h + h).counts.dtype == np.int64 and (h + h).counts[0, 0] == 2 * (2**31 - 1)
    assert h.pool(how="cdf").counts.dtype == np.int64
    assert band_histograms(np.zeros((2, 2), np.uint8)).counts.dtype == np.int64
    with pytest.raises(OptionError, match="non-negative"):
        Histogram(-big, h.binning)
