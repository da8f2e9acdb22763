"""Quality metrics: checked against scipy and against the histogram of the applied result."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import scipy.stats
from conftest import raise_if_dask_computes
from hypothesis import given, settings
from hypothesis import strategies as st

from rastermatch import Binning, Histogram, band_histograms, fit_lut
from rastermatch._detectors import Detectors
from rastermatch.errors import (
    BandMismatchError,
    GridMismatchError,
    InputTypeError,
    NoValidPixelsError,
    OptionError,
    RastermatchError,
)
from rastermatch.lut import LUT
from rastermatch.metrics import (
    destripe_quality,
    detector_profile,
    format_quality_table,
    ks_distance,
    matched_histogram,
    quality_table,
    stripe_period,
    stripe_power,
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


# -- stripes: detector profiles and stripe power ----------------------------------------------


def _periodogram(x: np.ndarray) -> np.ndarray:
    """The one-sided periodogram of a profile at the Fourier frequencies j / L, j = 0 .. L // 2:
    ``2 |X_j|^2`` with ``X_j = (1/L) sum_i x_i exp(-2 pi i j i / L)`` (``|X_j|^2`` at 0 and
    the Nyquist frequency), so that the powers above 0 sum to the variance of ``x``."""
    size = x.size
    power = np.abs(np.fft.rfft(x) / size) ** 2
    power[1:] *= 2
    if size % 2 == 0:
        power[-1] /= 2
    return power


@pytest.mark.parametrize(("n", "k"), [(2, 1), (6, 1), (6, 2), (6, 3), (8, 3), (16, 1), (16, 8)])
def test_stripe_power_of_a_sinusoid_at_a_harmonic(n, k):
    lines = np.arange(12 * n)
    amplitude, phase = 3.5, 0.7
    profile = 40 + amplitude * np.cos(2 * np.pi * k * lines / n + phase)
    harmonics = stripe_power(profile, detectors=n, per_harmonic=True)
    nyquist = 2 * k == n  # a cosine at 1/2 cycle per line is +-A cos(phase): power there
    expected = (amplitude * np.cos(phase)) ** 2 if nyquist else amplitude**2 / 2
    assert harmonics.shape == (n // 2,)
    assert harmonics[k - 1] == pytest.approx(expected, rel=1e-12)
    assert np.delete(harmonics, k - 1) == pytest.approx(0, abs=1e-20)
    assert stripe_power(profile, detectors=n) == pytest.approx(expected, rel=1e-12)


def test_a_flat_profile_has_no_stripe_power():
    for value in (0.1, 7.0, -3.3e5):
        profile = np.full(50, value)  # 50 lines, not a multiple of 16
        assert stripe_power(profile, detectors=16) == 0.0
        assert stripe_power(profile, detectors=None) == 0.0
        assert stripe_power(profile, detectors=["a", "b"] * 25) == 0.0
    profile = np.full((2, 3, 50), 0.1)
    profile[0, 1, 7] = np.nan
    assert stripe_power(profile, detectors=16).tolist() == [[0.0] * 3] * 2


def test_stripe_power_is_the_periodogram_at_the_detector_frequencies(rng):
    n, periods = 6, 20
    size = n * periods
    scene = np.cumsum(rng.normal(size=size)) + 50  # a random walk: power everywhere
    pattern = np.tile(rng.normal(scale=4, size=n), periods)  # one offset per detector
    at = np.arange(1, n // 2 + 1) * periods  # the bins of k / n cycles per line
    for profile in (scene, scene + pattern):
        harmonics = stripe_power(profile, detectors=n, per_harmonic=True)
        assert harmonics == pytest.approx(_periodogram(profile)[at], rel=1e-9)
    # adding the stripe pattern of period n changes only the power at k / n
    change = _periodogram(scene + pattern) - _periodogram(scene)
    off = np.setdiff1d(np.arange(change.size), [0, *at])
    assert np.abs(change[off]).max() < 1e-9 * np.abs(change[at]).max()
    assert (np.abs(change[at]) > 1e-6).all()
    # Parseval: the total is the variance of the detector means; the offset is only a phase
    means = (scene + pattern).reshape(periods, n).mean(axis=0)
    for offset in range(n):
        layout = Detectors(count=n, offset=offset)
        assert stripe_power(scene + pattern, detectors=layout) == pytest.approx(means.var())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(0, 30), st.integers(0, 2**32 - 1))
def test_stripe_power_sums_to_the_variance_of_the_detector_means(n, extra, seed):
    rng = np.random.default_rng(seed)
    size = 2 * n + extra
    profile = rng.normal(size=size) * 10
    harmonics = stripe_power(profile, detectors=n, per_harmonic=True)
    means = np.array([profile[d::n].mean() for d in range(n)])
    assert harmonics.sum() == pytest.approx(means.var(), rel=1e-9, abs=1e-12)
    assert (harmonics >= 0).all()


def test_stripe_power_of_labelled_and_one_per_column_layouts():
    rng = np.random.default_rng(4)
    profile = rng.normal(size=120)
    # labels repeating with period 4 (two mirror sides of two detectors) fold like 4 detectors
    sides = ["a0", "a1", "b0", "b1"] * 30
    assert stripe_period(sides, 120) == 4
    assert stripe_power(profile, detectors=sides) == stripe_power(profile, detectors=4)
    # labels that do not repeat, one detector per column, too few periods: neighbours' median
    groups = ["left"] * 60 + ["right"] * 60
    assert stripe_period(groups, 120) is None and stripe_period(16, 20) is None
    by_column = stripe_power(profile, detectors=None)
    assert stripe_power(profile, detectors=groups) == by_column
    assert stripe_power(profile[:20], detectors=16) == stripe_power(profile[:20], detectors=None)
    # odd/even columns +-A: power A**2 (a median with the centre would hide it)
    columns = np.arange(101)
    assert stripe_power(50 + 2.5 * (-1.0) ** columns, detectors=None) == pytest.approx(6.25)
    # one dead column in a flat profile: h**2 / L
    dead = np.full(200, 30.0)
    dead[77] = 0.0
    assert stripe_power(dead, detectors=None) == pytest.approx(30.0**2 / 200)
    # a smooth scene (a ramp, a wide bump) is not a stripe
    smooth = np.linspace(0, 50, 300) + 10 * np.exp(-(((np.arange(300) - 150) / 40) ** 2))
    assert stripe_power(smooth, detectors=None) < 1e-4 * smooth.var()


def test_stripe_power_refuses_lazy_or_empty_profiles_and_harmonics_without_a_period():
    with pytest.raises(InputTypeError, match="compute"):
        stripe_power(da.zeros((2, 32)), detectors=4)
    with pytest.raises(RastermatchError, match="one value per line"):
        stripe_power(np.zeros((2, 0)), detectors=4)
    with pytest.raises(OptionError, match="periodic"):
        stripe_power(np.zeros(32), detectors=None, per_harmonic=True)
    with pytest.raises(OptionError, match="labels"):
        stripe_power(np.zeros(32), detectors=["a", "b"])  # 2 labels for 32 lines
    assert np.isnan(stripe_power(np.full(32, np.nan), detectors=4))


def _striped_scene(rng, shape=(2, 48, 40), n=8, nodata=None):
    """Integer scenes: content plus a per-(band, detector) offset along y."""
    scene = rng.integers(20, 200, shape).astype(np.uint16)
    offsets = rng.integers(0, 30, (shape[0], n)).astype(np.uint16)
    striped = scene + offsets[:, np.arange(shape[1]) % n, None]
    if nodata is not None:
        holes = rng.random(shape) < 0.1
        scene[holes] = nodata
        striped[holes] = nodata
    return striped, scene


def _profile_oracle(image: np.ndarray, valid: np.ndarray, axis: str) -> np.ndarray:
    other = 2 if axis == "y" else 1
    with np.errstate(invalid="ignore"):
        return np.where(valid, image, 0).sum(axis=other) / valid.sum(axis=other)


@pytest.mark.parametrize("axis", ["y", "x"])
def test_detector_profile_means_valid_pixels_lazily(rng, axis):
    image = rng.normal(100, 20, (3, 30, 26)).astype(np.float32)
    image[rng.random(image.shape) < 0.1] = -9999
    image[0, 3, :] = np.nan  # line 3 of band 1 has no valid pixel
    image[1, :, 5] = np.inf
    mask = rng.random(image.shape[1:]) < 0.2
    valid = np.isfinite(image) & (image != -9999) & ~mask
    expected = _profile_oracle(image.astype(np.float64), valid, axis)
    eager = detector_profile(image, axis=axis, nodata=-9999, mask=mask)
    assert isinstance(eager, np.ndarray) and eager.dtype == np.float64
    np.testing.assert_allclose(eager, expected, rtol=1e-12)
    assert np.isnan(eager[0, 3]) == (axis == "y")
    for chunks in ((1, 16, 13), (3, 30, 26), (2, 11, 26)):
        with raise_if_dask_computes():
            lazy = detector_profile(
                da.from_array(image, chunks=chunks),
                axis=axis,
                nodata=-9999,
                mask=da.from_array(mask, chunks=(13, 8)),
            )
        np.testing.assert_allclose(lazy.compute(), expected, rtol=1e-12)
    with pytest.raises(OptionError, match="axis"):
        detector_profile(image, axis="z")


def test_detector_profile_of_xarray_inputs_and_stacks(rng):
    import xarray as xr

    image = rng.integers(0, 255, (2, 3, 12, 10)).astype(np.uint8)  # (time, band, y, x)
    stack = xr.DataArray(image, dims=("time", "band", "y", "x")).chunk({"y": 5})
    stack.attrs["_FillValue"] = 0
    valid = image != 0
    expected = _profile_oracle(
        image.reshape(6, 12, 10).astype(float), valid.reshape(6, 12, 10), "y"
    )
    lazy = detector_profile(stack)
    assert lazy.shape == (6, 12)
    np.testing.assert_allclose(lazy.compute(), expected)
    ds = xr.Dataset({"red": (("y", "x"), image[0, 0]), "nir": (("y", "x"), image[0, 1])})
    expected = _profile_oracle(image[0, :2].astype(float), valid[0, :2], "x")
    np.testing.assert_allclose(detector_profile(ds, axis="x", nodata=0), expected)


def test_stripe_power_does_not_depend_on_where_nodata_is(rng):
    n, lines = 8, 64
    # integer values, so that every sum is exact whichever pixels it takes
    line_values = (
        100 + np.round(5 * np.sin(np.arange(lines) / 9)) + np.tile(rng.integers(0, 12, n), 8)
    )
    image = np.repeat(line_values[:, None], 50, axis=1).astype(np.float64)  # lines are constant
    reference = detector_profile(image)
    power = stripe_power(reference, detectors=n)
    for seed in range(3):
        holes = np.random.default_rng(seed).random(image.shape) < 0.5
        holes[:, 0] = False  # every line keeps a valid pixel
        holed = np.where(holes, -1.0, image)
        profile = detector_profile(holed, nodata=-1)
        np.testing.assert_array_equal(profile, reference)
        assert stripe_power(profile, detectors=n) == power
        np.testing.assert_array_equal(detector_profile(image, mask=holes), reference)
    # whole lines missing leave the detector means of a pure stripe pattern as they are
    pattern = np.tile(rng.normal(size=n), 8)
    gappy = pattern.copy()
    gappy[[3, 12, 40, 41, 63]] = np.nan
    assert stripe_power(gappy, detectors=n) == pytest.approx(stripe_power(pattern, detectors=n))


def test_destripe_quality_rows_are_exact_and_plain(rng):
    striped, scene = _striped_scene(rng)
    rows = destripe_quality(striped, scene, 8)
    assert [sorted(r) for r in rows] == [
        [
            "band",
            "mean_relative_deviation",
            "row",
            "stripe_power_after",
            "stripe_power_before",
            "stripe_reduction",
        ]
    ] * 2
    for b, row in enumerate(rows):
        assert row["band"] == b + 1 and row["row"] == f"band {b + 1}"
        before = stripe_power(detector_profile(striped)[b], detectors=8)
        after = stripe_power(detector_profile(scene)[b], detectors=8)
        assert row["stripe_power_before"] == float(before)
        assert row["stripe_power_after"] == float(after)
        assert row["stripe_reduction"] == pytest.approx(1 - after / before)
        deviation = np.abs(striped[b] - scene[b].astype(float)) / np.maximum(striped[b], 1)
        assert row["mean_relative_deviation"] == pytest.approx(deviation.mean(), rel=1e-12)
        assert all(type(v) in (int, str, float) for v in row.values())
    json.dumps(rows)
    assert destripe_quality(scene, scene, 8)[0]["mean_relative_deviation"] == 0.0


def test_destripe_quality_lazy_equals_eager_in_one_compute(rng):
    import xarray as xr

    striped, scene = _striped_scene(rng, shape=(2, 64, 30), nodata=0)
    mask = rng.random(striped.shape[1:]) < 0.1
    eager = destripe_quality(striped, scene, 8, nodata=0, mask=mask)
    before = xr.DataArray(da.from_array(striped, chunks=(1, 20, 16)), dims=("band", "y", "x"))
    after = da.from_array(scene, chunks=(2, 13, 30))  # nodata taken over from the input
    with raise_if_dask_computes(max_computes=1):
        lazy = destripe_quality(before.rio.write_nodata(0), after, 8, mask=mask)
    # integer sums are exact in any order: the profiles, and so the powers, are the same bits;
    # the relative deviations are float sums, equal to rounding
    for a, b in zip(lazy, eager, strict=True):
        assert a == {**b, "mean_relative_deviation": pytest.approx(b["mean_relative_deviation"])}
    # another nodata value over the same pixels gives the same rows
    invalid = striped == 0
    before, after = np.where(invalid, 65535, striped), np.where(invalid, 65535, scene)
    assert destripe_quality(before.astype(np.uint16), after.astype(np.uint16), 8,
                            nodata=65535, mask=mask) == eager  # fmt: skip


def test_destripe_quality_along_x_with_a_stack(rng):
    import xarray as xr

    striped, scene = _striped_scene(rng, shape=(4, 20, 48), n=6)
    striped = np.swapaxes(striped, 1, 2).reshape(2, 2, 48, 20)  # stripes along x now
    scene = np.swapaxes(scene, 1, 2).reshape(2, 2, 48, 20)
    coords = {"time": ["2020-01-01", "2020-02-01"], "band": ["red", "nir"]}
    before = xr.DataArray(striped, dims=("time", "band", "y", "x"), coords=coords)
    after = before.copy(data=scene)
    rows = destripe_quality(before, after, Detectors(axis="x", count=6))
    assert [r["row"] for r in rows][:2] == ["time '2020-01-01', band 'red'",
                                            "time '2020-01-01', band 'nir'"]  # fmt: skip
    # the same numbers as the transposed scene with its detectors along y
    along_y = destripe_quality(np.swapaxes(striped, 2, 3), np.swapaxes(scene, 2, 3), 6)
    for a, b in zip(rows, along_y, strict=True):
        assert {k: v for k, v in a.items() if k.startswith("stripe")} == pytest.approx(
            {k: v for k, v in b.items() if k.startswith("stripe")}
        )
        assert a["stripe_reduction"] > 0.5
    text = format_quality_table(rows)
    assert "stripes before" in text and "time '2020-02-01', band 'nir'" in text
    with pytest.raises(OptionError, match="along 'x'"):
        destripe_quality(before, after, Detectors(axis="x", count=6), axis="y")


def test_quality_rows_carry_every_row_label(rng):
    """A stack's rows carry ``time`` (ISO text) besides ``band``, in both tables, so they can be
    filtered by date; a 2-D image has no band label to give."""
    import xarray as xr

    striped, scene = _striped_scene(rng, shape=(2, 24, 16), n=4)
    coords = {"time": np.array(["2020-01-01", "2020-02-01"], "datetime64[ns]"), "band": [3]}
    before = xr.DataArray(striped[:, None], dims=("time", "band", "y", "x"), coords=coords)
    rows = destripe_quality(before, before.copy(data=scene[:, None]), 4)
    assert [(r["time"], r["band"]) for r in rows] == [("2020-01-01", 3), ("2020-02-01", 3)]
    lut = fit_lut(before, before)
    table = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
    assert [(r["time"], r["band"]) for r in table] == [("2020-01-01", 3), ("2020-02-01", 3)]
    flat = destripe_quality(striped[0], scene[0], 4)[0]
    assert (flat["band"], flat["row"]) == (None, "") and "time" not in flat


def test_destripe_quality_refuses_mismatched_or_empty_inputs(rng):
    striped, scene = _striped_scene(rng)
    with pytest.raises(GridMismatchError, match=r"before .* after"):
        destripe_quality(striped, scene[:, :40], 8)
    empty = striped.copy()
    empty[1] = 0
    with pytest.raises(NoValidPixelsError, match="band 2 of before"):
        destripe_quality(empty, scene, 8, nodata=0)
    with pytest.raises(NoValidPixelsError, match="band 2 of after"):
        destripe_quality(scene, empty, 8, out_nodata=0)
    with pytest.raises(OptionError, match="labels"):
        destripe_quality(striped, scene, ["a", "b"] * 4)  # 8 labels for 48 lines


def test_format_quality_table_prints_destripe_rows():
    rows = [
        {"band": 1, "row": "band 1", "stripe_power_before": 127.4, "stripe_power_after": 0.01756,
         "stripe_reduction": 0.99986, "mean_relative_deviation": 0.1403},
        {"band": 2, "row": "band 2", "stripe_power_before": 0.0, "stripe_power_after": 0.5,
         "stripe_reduction": None, "mean_relative_deviation": 0.0},
    ]  # fmt: skip
    assert format_quality_table(rows).splitlines() == [
        "band  stripes before  stripes after  reduction  mean rel. dev.",
        "----  --------------  -------------  ---------  --------------",
        "1              127.4        0.01756    99.99 %          14.0 %",
        "2                  0         0.5000          -             0 %",
    ]
