"""Quality metrics: checked against scipy and against the histogram of the applied result."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from rastermatch import Binning, Histogram, band_histograms, fit_lut
from rastermatch.errors import BandMismatchError, NoValidPixelsError, RastermatchError
from rastermatch.lut import LUT
from rastermatch.metrics import (
    format_quality_table,
    ks_distance,
    matched_histogram,
    quality_table,
    wasserstein_distance,
)

DATA = Path(__file__).resolve().parent.parent / "data"


# -- strategies: one-band histograms on random binnings ---------------------------------------


@st.composite
def small_counts(draw, n: int) -> np.ndarray:
    """``n`` counts, many of them zero, at least one pixel."""
    c = np.array(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), dtype=np.int64)
    if c.sum() == 0:
        c[draw(st.integers(0, n - 1))] = draw(st.integers(1, 5))
    return c


@st.composite
def histograms(draw) -> Histogram:
    """A one-band histogram on uint8 levels or on uniform float bins of a random range."""
    if draw(st.booleans()):
        counts = np.zeros(256, dtype=np.int64)
        start = draw(st.integers(0, 240))
        n = draw(st.integers(1, 15))
        counts[start : start + n] = draw(small_counts(n))
        return Histogram(counts[None], Binning.levels(np.dtype(np.uint8), 1))
    n = draw(st.integers(1, 12))
    lo = draw(st.integers(-20, 20)) / 4
    width = draw(st.integers(0, 40)) / 4
    return Histogram(
        draw(small_counts(n))[None], Binning("uniform", np.float32, n, [lo], [lo + width])
    )


def _support(h: Histogram) -> tuple[np.ndarray, np.ndarray]:
    return h.binning.values()[0], h.counts[0]


# -- distances --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(histograms(), histograms())
def test_wasserstein_equals_scipy(a, b):
    (va, ca), (vb, cb) = _support(a), _support(b)
    expected = scipy.stats.wasserstein_distance(va, vb, u_weights=ca, v_weights=cb)
    assert wasserstein_distance(a, b)[0] == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20).flatmap(lambda n: st.tuples(small_counts(n), small_counts(n))))
def test_wasserstein_equals_scipy_on_one_binning(pair):
    ca, cb = pair
    binning = Binning("uniform", np.float64, ca.size, [0.0], [10.0])
    values = binning.values()[0]
    a, b = Histogram(ca[None], binning), Histogram(cb[None], binning)
    expected = scipy.stats.wasserstein_distance(values, values, u_weights=ca, v_weights=cb)
    assert wasserstein_distance(a, b)[0] == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(histograms(), histograms())
def test_ks_equals_brute_force_on_expanded_samples(a, b):
    (va, ca), (vb, cb) = _support(a), _support(b)
    expected = scipy.stats.ks_2samp(np.repeat(va, ca), np.repeat(vb, cb)).statistic
    assert ks_distance(a, b)[0] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert 0.0 <= ks_distance(a, b)[0] <= 1.0


@given(histograms())
def test_identical_histograms_are_at_distance_zero(h):
    assert ks_distance(h, h).tolist() == [0.0]
    assert wasserstein_distance(h, h).tolist() == [0.0]
    # the same distribution with ten times the pixels is still at distance 0
    ten = Histogram(h.counts * 10, h.binning)
    assert ks_distance(h, ten).tolist() == [0.0]
    assert wasserstein_distance(h, ten).tolist() == [0.0]


def test_distances_across_dtypes_place_pixels_at_levels():
    a = band_histograms(np.array([[0, 0, 10, 10]], dtype=np.uint8))
    b = band_histograms(np.array([[1000, 1000, 1010, 1010]], dtype=np.uint16))
    assert ks_distance(a, b).tolist() == [1.0]
    assert wasserstein_distance(a, b).tolist() == [1000.0]


def test_counts_beyond_int64_products_stay_exact():
    """Totals whose product overflows int64 take the Python-integer path; KS is scale-free."""
    binning = Binning.levels(np.dtype(np.uint8), 1)
    ca = np.zeros(256, dtype=np.int64)
    cb = np.zeros(256, dtype=np.int64)
    ca[[3, 7, 9]] = [2, 5, 1]
    cb[[3, 8]] = [3, 5]
    small = ks_distance(Histogram(ca[None], binning), Histogram(cb[None], binning))
    big_a = Histogram(ca[None] * 3 * 10**12, binning)
    big_b = Histogram(cb[None] * 7 * 10**12, binning)
    assert ks_distance(big_a, big_b).tolist() == small.tolist()
    w_small = wasserstein_distance(Histogram(ca[None], binning), Histogram(cb[None], binning))
    assert wasserstein_distance(big_a, big_b)[0] == pytest.approx(w_small[0], rel=1e-12)


def test_distances_refuse_mismatched_lazy_or_empty_histograms():
    h = band_histograms(np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
    with pytest.raises(BandMismatchError):
        ks_distance(h, h.band(0))
    lazy = band_histograms(da.from_array(np.ones((1, 4, 4), dtype=np.uint8)))
    with pytest.raises(RastermatchError, match="lazy"):
        wasserstein_distance(lazy, lazy)
    empty = band_histograms(np.zeros((1, 2, 2), dtype=np.uint8), nodata=0)
    with pytest.raises(NoValidPixelsError):
        ks_distance(empty, h.band(0))


# -- the matched histogram from the LUT -------------------------------------------------------


def _assert_matched_histogram_exact(lut: LUT, source) -> None:
    expected_from = matched_histogram(lut)
    nbins = expected_from.binning.nbins if expected_from.binning.kind == "uniform" else None
    applied = band_histograms(lut.apply(source), nodata=lut.out_nodata, bins=nbins).compute()
    assert expected_from.binning.same_as(applied.binning)
    np.testing.assert_array_equal(expected_from.counts, applied.counts)
    assert expected_from.bands == lut.bands


@pytest.mark.parametrize("method", ["nearest", "interp"])
def test_matched_histogram_uint8(rng, method):
    source = rng.integers(0, 200, (2, 30, 40)).astype(np.uint8)
    reference = rng.normal(120, 30, (2, 25, 20)).clip(0, 255).astype(np.uint8)
    lut = fit_lut(source, reference, method=method)
    _assert_matched_histogram_exact(lut, source)


def test_matched_histogram_uint16_with_nodata(rng):
    source = rng.integers(1, 3000, (2, 30, 40)).astype(np.uint16)
    source[:, :4] = 0
    reference = rng.gamma(2, 500, (2, 25, 20)).astype(np.uint16) + 1
    reference[:, :, :3] = 0
    lut = fit_lut(source, reference, nodata=0, reference_nodata=0)
    h = matched_histogram(lut)
    assert h.total.tolist() == [30 * 40 - 4 * 40] * 2  # nodata pixels are not counted
    _assert_matched_histogram_exact(lut, source)


def test_matched_histogram_float32_with_nan(rng):
    source = rng.normal(0.2, 0.05, (2, 30, 40)).astype(np.float32)
    source[0, :3] = np.nan
    reference = rng.gamma(2, 0.1, (2, 25, 20)).astype(np.float32)
    lut = fit_lut(source, reference, bins=512)
    assert matched_histogram(lut).binning.nbins == 512  # the reference's
    _assert_matched_histogram_exact(lut, source)


def test_matched_histogram_of_wide_integer_output(rng):
    source = rng.integers(0, 200, (1, 30, 40)).astype(np.uint8)
    reference = rng.integers(0, 10**6, (1, 25, 20)).astype(np.int32) * 1000
    _assert_matched_histogram_exact(fit_lut(source, reference), source)


def test_matched_histogram_interval_is_close(rng):
    """Coarse bins spread over an output interval: their pixels between the ends are placed at
    the output of the bin's largest value."""
    source = rng.normal(0.2, 0.05, (1, 30, 40)).astype(np.float32)
    reference = rng.gamma(2, 0.1, (1, 25, 20)).astype(np.float32)
    lut = fit_lut(source, reference, bins=512, method="interp")
    assert lut.kind == "interval"
    h = matched_histogram(lut)
    applied = band_histograms(lut.apply(source), bins=512)
    assert h.total.tolist() == applied.total.tolist()
    assert ks_distance(h, applied)[0] < 0.02
    assert wasserstein_distance(h, applied)[0] < 0.002


def test_matched_histogram_of_sample_scene():
    import rioxarray

    src = rioxarray.open_rasterio(DATA / "arrnorm_target.tif", chunks={"y": 128, "x": 256})
    ref = rioxarray.open_rasterio(DATA / "arrnorm_ref_adjusted2target.tif")
    lut = fit_lut(src, ref, nodata=0)
    _assert_matched_histogram_exact(lut, src)


def test_matched_histogram_needs_the_source_histogram():
    h = band_histograms(np.array([[1, 2, 2, 3]], dtype=np.uint8))
    lut = LUT.from_histograms(h, h)
    bare = LUT(lut.table, lut.source_binning, lut.dtype)
    with pytest.raises(RastermatchError, match="no source histogram"):
        matched_histogram(bare)


# -- the table --------------------------------------------------------------------------------


def test_quality_table_rows_are_plain_and_improve(rng):
    source = rng.integers(0, 100, (3, 30, 30)).astype(np.uint8)
    reference = rng.integers(80, 255, (3, 20, 20)).astype(np.uint8)
    lut = fit_lut(source, reference)
    rows = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
    assert [r["band"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(r) == {"band", "row", "ks_before", "ks_after", "w1_before", "w1_after"}
        assert r["row"] == f"band {r['band']}"
        assert all(type(r[k]) is float for k in r if k not in ("band", "row"))
        assert r["ks_after"] < r["ks_before"] and r["w1_after"] < r["w1_before"]
    assert json.loads(json.dumps(rows)) == rows

    text = format_quality_table(rows).splitlines()
    assert text[0].split() == ["band", "KS", "before", "KS", "after", "W1", "before", "W1", "after"]
    assert set(text[1]) <= {"-", " "}
    assert len(text) == 2 + 3
    assert len({len(line) for line in text}) == 1  # fixed width
    assert text[2].split()[1] == f"{rows[0]['ks_before']:.4f}"


def test_quality_table_refuses_band_mismatch():
    h = band_histograms(np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
    with pytest.raises(BandMismatchError):
        quality_table(h, h, h.band(0))
