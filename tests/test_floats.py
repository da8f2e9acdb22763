"""Floats matched exactly: reference values out, the identity on self-matching, scikit-image's
interp, a quality table equal to the written values' metrics, and options checked up front."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import scipy.stats
import xarray as xr
from conftest import DATA, raise_if_dask_computes
from dask.array.utils import assert_eq
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.exposure import match_histograms as sk_match
from strategies import chunkings

from rastermatch import (
    LUT,
    Binning,
    DimensionError,
    InputTypeError,
    NotComputedError,
    OptionError,
    band_histograms,
    equalize,
    fit_lut,
    match_histograms,
)
from rastermatch._values import uniform_bins
from rastermatch.metrics import matched_histogram, quality_table

# -- data -------------------------------------------------------------------------------------


def quantised(rng, shape, *, step=1e-4, dtype="float32", nan=0.05, loc=3000, scale=700):
    """Reflectance-like values on a grid of ``step`` with some NaN (a Sentinel-2 habit)."""
    x = (np.round(rng.normal(loc, scale, shape).clip(1, None)) * step).astype(dtype)
    x[rng.random(shape) < nan] = np.nan
    return x


@st.composite
def float_scenes(draw, *, continuous=False):
    dtype = draw(st.sampled_from(["float32", "float64"]))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 30)), draw(st.integers(1, 30)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if continuous:
        x = rng.standard_cauchy(shape).astype(dtype)  # heavy tails: wildly uneven bins
    else:
        step = draw(st.sampled_from([1e-4, 0.5, 1.0, 3.0]))
        x = (rng.integers(0, draw(st.integers(1, 40)), shape) * step).astype(dtype)
    x[rng.random(shape) < draw(st.sampled_from([0.0, 0.1]))] = np.nan
    bins = draw(st.sampled_from([None, 1, 3, 17]))
    return x, bins, draw(chunkings(shape))


def _valid(x):
    return np.isfinite(x)


# -- the issue's example and self-matching ------------------------------------------------------


@pytest.mark.parametrize("method", ["nearest", "interp"])
def test_the_issue_example_is_returned_exactly(method):
    x = np.array([[0.0, 1.0, 2.0, 3.0, 100.0]])
    got = match_histograms(x, x, method=method)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, x)


@settings(max_examples=40, deadline=None)
@given(float_scenes(), st.sampled_from(["nearest", "interp"]))
def test_self_matching_is_the_identity_on_quantised_floats(scene, method):
    x, bins, chunks = scene
    if not np.isfinite(x).any(axis=(1, 2)).all():
        return  # a band without valid pixels is an error, tested elsewhere
    got = match_histograms(x, x, method=method, bins=bins)
    valid = _valid(x)
    np.testing.assert_array_equal(got[valid], x[valid])
    assert np.isnan(got[~valid]).all()
    lazy = match_histograms(da.from_array(x, chunks=chunks), x, method=method, bins=bins)
    assert_eq(lazy, got, check_graph=False)


@settings(max_examples=30, deadline=None)
@given(float_scenes(continuous=True), st.sampled_from(["nearest", "interp"]))
def test_self_matching_is_the_identity_on_continuous_floats(scene, method):
    x, bins, chunks = scene
    if not np.isfinite(x).any(axis=(1, 2)).all():
        return
    dx = da.from_array(x, chunks=chunks)
    got = match_histograms(dx, dx, method=method, bins=bins)
    valid = _valid(x)
    np.testing.assert_array_equal(got.compute()[valid], x[valid])


def test_self_matching_with_a_nodata_value_keeps_it(rng):
    x = quantised(rng, (2, 40, 50), dtype="float64")
    x[:, :5] = -9999.0
    got = match_histograms(x, x, nodata=-9999.0)
    valid = np.isfinite(x) & (x != -9999.0)
    np.testing.assert_array_equal(got[valid], x[valid])
    assert (got[~valid] == -9999.0).all()  # NaN pixels become the output nodata too


# -- nearest: reference values only -----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nearest_outputs_are_reference_values(dtype, rng):
    src = quantised(rng, (3, 60, 50), dtype=dtype, loc=2000, scale=300)
    ref = quantised(rng, (3, 40, 45), dtype=dtype)
    got = match_histograms(src, ref)
    for b in range(3):
        out = got[b][np.isfinite(got[b])]
        assert set(np.unique(out)) <= set(np.unique(ref[b][np.isfinite(ref[b])]))


def test_nearest_on_integers_read_as_floats_with_nan_fill():
    import rioxarray

    # what masked=True gives for a tagged scene: floats, NaN at the fill
    src = rioxarray.open_rasterio(DATA / "arrnorm_target.tif").values
    src = np.where(src == 0, np.nan, src).astype(np.float32)
    ref = rioxarray.open_rasterio(DATA / "arrnorm_ref_adjusted2target.tif").values
    ref = np.where(ref == 0, np.nan, ref).astype(np.float32)
    got = match_histograms(src, ref)
    exact = match_histograms(
        rioxarray.open_rasterio(DATA / "arrnorm_target.tif"),
        rioxarray.open_rasterio(DATA / "arrnorm_ref_adjusted2target.tif"),
        nodata=0,
    ).values
    for b in range(got.shape[0]):
        valid = np.isfinite(got[b])
        assert set(np.unique(got[b][valid])) <= set(np.unique(ref[b]))
        # the same match as on the integers themselves
        np.testing.assert_array_equal(got[b][valid], exact[b][valid])


# -- interp: scikit-image's mapping -----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_interp_equals_scikit_image_on_quantised_floats(dtype, rng):
    src = quantised(rng, (2, 60, 50), dtype=dtype, loc=2000, scale=300, nan=0)
    ref = quantised(rng, (2, 40, 45), dtype=dtype, nan=0)
    got = match_histograms(src, ref, method="interp")
    want = np.stack([sk_match(s, r) for s, r in zip(src, ref, strict=True)]).astype(dtype)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_interp_3x_minus_50_lands_on_the_reference(dtype, rng):
    x = quantised(rng, (1, 50, 60), dtype="float64", step=1, nan=0)
    got = match_histograms((3 * x - 50).astype(dtype), x.astype(dtype), method="interp")
    np.testing.assert_array_equal(got, x.astype(dtype))


@settings(max_examples=30, deadline=None)
@given(float_scenes(continuous=True))
def test_interp_on_continuous_data_stays_within_the_documented_bound(scene):
    """A pixel of source bin p lands within one reference bin width of the range of
    scikit-image's outputs for the pixels of bin p."""
    x, bins, _ = scene
    x = np.where(np.isfinite(x), x, 0.0)
    ref = np.sort(x, axis=None)[::-1].reshape(x.shape) ** 3 + 1  # another distribution
    lut = fit_lut(x, ref, method="interp", bins=bins)
    got = lut.apply(x)
    h = lut.source_hist
    for b in range(x.shape[0]):
        want = sk_match(x[b], ref[b])

        k = uniform_bins(x[b], h.binning.lo[b], h.binning.hi[b], h.binning.nbins)
        lo = np.full(h.binning.nbins, np.inf)
        hi = np.full(h.binning.nbins, -np.inf)
        np.minimum.at(lo, k, want)
        np.maximum.at(hi, k, want)
        # float32 outputs are rounded once more than scikit-image's float64 ones
        rb = lut.reference_hist.binning
        width = (rb.hi[b] - rb.lo[b]) / rb.nbins
        tol = width + 4 * np.finfo(x.dtype).eps * max(1.0, float(np.abs(want).max()))
        assert np.all(got[b] >= lo[k] - tol) and np.all(got[b] <= hi[k] + tol)


# -- the quality table is the written values' ------------------------------------------------


def _brute_force_metrics(out, ref):
    a, b = out[np.isfinite(out)], ref[np.isfinite(ref)]
    ks = scipy.stats.ks_2samp(a, b).statistic
    w1 = scipy.stats.wasserstein_distance(a.astype(np.float64), b.astype(np.float64))
    return ks, w1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", ["nearest", "interp"])
def test_quality_table_equals_metrics_of_the_written_values(dtype, method, rng):
    src = quantised(rng, (2, 60, 50), dtype=dtype, loc=2000, scale=300)
    ref = quantised(rng, (2, 40, 45), dtype=dtype)
    lut = fit_lut(src, ref, method=method)
    out = lut.apply(src)
    rows = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
    for b, row in enumerate(rows):
        ks, w1 = _brute_force_metrics(out[b], ref[b])
        ks0, w10 = _brute_force_metrics(src[b], ref[b])
        assert row["ks_after"] == pytest.approx(ks, rel=1e-12, abs=1e-15)
        assert row["w1_after"] == pytest.approx(w1, rel=1e-9, abs=1e-12)
        assert row["ks_before"] == pytest.approx(ks0, rel=1e-12, abs=1e-15)
        assert row["w1_before"] == pytest.approx(w10, rel=1e-9, abs=1e-12)


# -- nodata -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_fit_once_recipe_keeps_the_fill_as_nodata(dtype, rng):
    src = rng.integers(1, 3000, (2, 40, 50)).astype(dtype)
    ref = rng.integers(100, 4000, (2, 30, 30)).astype(dtype)
    src[:, :4] = 0  # the fill
    h_src = band_histograms(src, nodata=0)
    h_ref = band_histograms(ref)
    assert h_src.nodata == 0 and h_ref.nodata is None
    lut = LUT.from_histograms(h_src, h_ref)
    assert lut.nodata == 0
    out = lut.apply(src)
    assert (out[:, :4] == 0).all()
    assert (out[:, 4:] >= ref.min()).all()  # no valid pixel became the fill
    assert not lut.output_taken(0)


def test_explicit_nodata_applies_to_a_reference_without_its_own(rng):
    src = rng.integers(1, 3000, (1, 40, 50)).astype(np.uint16)
    ref = rng.integers(100, 4000, (1, 40, 50)).astype(np.uint16)
    src[:, :4] = 0
    ref[:, -6:] = 0  # the same kind of border, untagged
    out = match_histograms(src, ref, nodata=0)
    assert (out[:, :4] == 0).all() and (out[:, 4:] >= 100).all()
    lut = fit_lut(src, ref, nodata=0)
    assert lut.reference_hist.nodata == 0 and lut.out_nodata == 0
    # said otherwise: the reference's zeros count
    lut = fit_lut(src, ref, nodata=0, reference_nodata=65535)
    assert lut.reference_hist.counts[0, 0] == ref[0, -6:].size
    # a reference with a nodata of its own keeps it
    tagged = xr.DataArray(ref, dims=("band", "y", "x")).rio.write_nodata(7)
    assert fit_lut(src, tagged, nodata=0).reference_hist.nodata == 7


def test_levels_all_never_outputs_the_reference_nodata_level():
    src = np.array([[[0, 1, 2, 3, 4, 5]]], dtype=np.uint8)
    ref = np.array([[[9, 0, 0, 0, 0, 200]]], dtype=np.uint8)
    lut = fit_lut(src, ref, levels="all", reference_nodata=0)
    assert 0 not in lut.valid_outputs()


def test_mixed_binnings_keep_working(rng):
    u8 = rng.integers(0, 256, (1, 30, 30)).astype(np.uint8)
    f32 = quantised(rng, (1, 30, 30), nan=0)
    out = match_histograms(u8, f32)
    assert out.dtype == np.float32 and set(np.unique(out)) <= set(np.unique(f32))
    u16 = rng.integers(0, 4096, (1, 30, 30)).astype(np.uint16)
    out = match_histograms(f32, u16)
    assert out.dtype == np.uint16 and set(np.unique(out)) <= set(np.unique(u16))


# -- laziness and chunking --------------------------------------------------------------------


def test_lazy_steps_compute_nothing_and_any_chunking_agrees(rng):
    x = quantised(rng, (2, 50, 40))
    ref = quantised(rng, (2, 30, 30))
    want = match_histograms(x, ref)
    lut = fit_lut(x, ref)
    for chunks in [(1, 7, 40), (2, 50, 9), (1, 13, 11)]:
        dx = da.from_array(x, chunks=chunks)
        with raise_if_dask_computes():
            h = band_histograms(dx, range=(0, 1))
            lazy = lut.apply(dx)
        assert h.is_lazy
        assert_eq(lazy, want)
        np.testing.assert_array_equal(h.compute().nmin, band_histograms(x, range=(0, 1)).nmin)


# -- options checked before any work ---------------------------------------------------------


U8 = np.zeros((1, 4, 4), dtype=np.uint8)
U16 = np.zeros((1, 4, 4), dtype=np.uint16)
F32 = np.zeros((1, 4, 4), dtype=np.float32)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: match_histograms(U8, U8, method="bogus"), OptionError, "method must be"),
        (lambda: match_histograms(U8, U8, levels="some"), OptionError, "levels must be"),
        (lambda: match_histograms(F32, F32, bins=0), OptionError, "bins must be"),
        (lambda: match_histograms(F32, F32, bins=2.5), OptionError, "bins must be"),
        (lambda: match_histograms(F32, F32, bins=True), OptionError, "bins must be"),
        (lambda: match_histograms(U8, U8, dtype="complex64"), OptionError, "not a numeric"),
        (lambda: match_histograms(U8, U8, dtype="no-such-type"), OptionError, "not a numeric"),
        (lambda: match_histograms(U8, U8, nodata=300), OptionError, "source"),
        (lambda: match_histograms(U16, U16, nodata=-1), OptionError, "cannot occur"),
        (lambda: match_histograms(U16, U16, nodata=float("nan")), OptionError, "uint16"),
        (lambda: match_histograms(U8, U8, nodata=2.5), OptionError, "cannot occur"),
        (lambda: match_histograms(U8, U8, reference_nodata=256), OptionError, "reference"),
        (lambda: band_histograms(F32, range=(1, 0)), OptionError, "reversed"),
        (lambda: band_histograms(F32, range=(0, 0)), OptionError, "empty"),
        (lambda: band_histograms(F32, range=(0, np.nan)), OptionError, "not finite"),
        (lambda: band_histograms(F32, range="wide"), OptionError, "range must be"),
        (lambda: equalize(F32, range=(0, np.inf)), OptionError, "not finite"),
        (lambda: equalize(U8 + 1, range=(255, 0)), OptionError, "reversed"),
        (lambda: match_histograms([[1, 2]], U8), InputTypeError, "list"),
        (lambda: match_histograms(np.zeros((0, 4, 4)), U8), DimensionError, "no pixels"),
        (lambda: match_histograms(np.zeros(4), U8), DimensionError, "dims"),
        (lambda: band_histograms(da.ones((1, 3, 3))).binning.to_dict(), NotComputedError, "not"),
        (lambda: LUT.from_histograms(band_histograms(da.ones((1, 3, 3), dtype="u1")),
                                     band_histograms(U8)), NotComputedError, "lazy"),
    ],
)  # fmt: skip
def test_bad_options_are_refused(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_dtype_too_narrow_for_the_outputs_is_refused(rng):
    src = rng.integers(0, 4096, (1, 20, 20)).astype(np.uint16)
    with pytest.raises(OptionError, match=r"onto \d+\.\.4\d\d\d, which uint8 cannot hold.*uint16"):
        match_histograms(src, src, dtype="uint8")
    with pytest.raises(OptionError, match="out_nodata"):
        fit_lut(src, src).apply(src, out_nodata=70000)
    assert match_histograms(src // 16, src // 16, dtype="uint8").dtype == np.uint8


def test_tables_cannot_be_indexed_outside(rng):
    x = quantised(rng, (1, 20, 20), nan=0.2)
    lut = fit_lut(x, x)
    with pytest.raises(OptionError, match="table shape"):
        LUT(lut.table[:, :-1], lut.source_binning, lut.dtype)
    with pytest.raises(OptionError, match="levels binning"):
        Binning("levels", np.uint16, 65536, [-1e15], [65535])
    # a crafted binning far from the data: every value is clamped into the table
    crafted = Binning("uniform", np.float32, lut.source_binning.nbins, [-1e15], [1e15])
    wild = LUT(lut.table, crafted, lut.dtype)
    probe = np.array([[[np.nan, -np.inf, np.inf, 3e38, -3e38, 0.5, 1e-30]]], dtype=np.float32)
    out = wild.apply(probe)
    finite = out[np.isfinite(out)]
    assert set(finite) <= set(lut.table[0, :, 2:].ravel().astype(np.float32))


@pytest.mark.parametrize("method", ["nearest", "interp"])
def test_64_bit_integers_match_themselves_to_the_top_of_their_range(method):
    # matched in float64: exact up to 2**53, the top of the range clamped inside the dtype
    for x, top in (
        (np.array([[-(2**62), 0, 5, 2**40]], dtype=np.int64), 2**40),
        (np.array([[-(2**62), 0, 5, 2**63 - 1]], dtype=np.int64), 2**63 - 1024),
        (np.array([[0, 1, 2**40, 2**64 - 1]], dtype=np.uint64), 2**64 - 2048),
    ):
        out = match_histograms(x, x, method=method)
        assert out.dtype == x.dtype
        assert out[0, :3].tolist() == x[0, :3].tolist() and int(out[0, 3]) == top


def test_a_span_float64_cannot_bin_names_the_band_and_suggests_nodata():
    x = np.array([[-1.7976931348623157e308, 0.0, 1.0, 2.0]])
    assert match_histograms(x, x).tolist() == x.tolist()  # wide, but binnable
    y = np.array([[-1.7976931348623157e308, 0.0, 1.0, 1.7e308]])
    with pytest.raises(OptionError, match=r"band 1 of source spans .* nodata"):
        match_histograms(y[None], y[None])  # (band, y, x): the message names the band
    with pytest.raises(OptionError, match=r"^source spans .* nodata"):
        match_histograms(y, y)  # a 2-D input is one unlabelled row
