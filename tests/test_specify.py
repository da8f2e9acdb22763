"""Exact histogram specification: the output histogram is the target, pixel for pixel, in the
order a brute-force sort of (value, Coltuc's window sums, position) gives, for any chunking."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import chunkings

import rastermatch
from rastermatch import Binning, Histogram, specify_exact
from rastermatch.errors import (
    BandMismatchError,
    NodataConflictError,
    OptionError,
    RastermatchError,
    UnsupportedDtypeError,
)
from rastermatch.specify import SpecifyReport, largest_remainder

# Coltuc's windows as rings added to the previous one: 3x3 cross, 3x3, 5x5 diamond,
# 5x5 without corners, 5x5.
RINGS = [
    [(-1, 0), (1, 0), (0, -1), (0, 1)],
    [(-1, -1), (-1, 1), (1, -1), (1, 1)],
    [(-2, 0), (2, 0), (0, -2), (0, 2)],
    [(-2, -1), (-2, 1), (2, -1), (2, 1), (-1, -2), (1, -2), (-1, 2), (1, 2)],
    [(-2, -2), (-2, 2), (2, -2), (2, 2)],
]


def oracle(image: np.ndarray, valid: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Level index of every valid pixel (-1 elsewhere) from one global sort: np.lexsort of
    (position, k5, ..., k1, value), with k_i the window sums (a neighbour outside the image or
    invalid counts as the centre value), cut into runs of ``target`` counts."""
    ny, nx = image.shape
    v = image.astype(np.int64)
    pv, pm = np.pad(v, 2), np.pad(valid, 2)
    k, keys = v.copy(), []
    for ring in RINGS:
        for dy, dx in ring:
            nb = pv[2 + dy : 2 + dy + ny, 2 + dx : 2 + dx + nx]
            ok = pm[2 + dy : 2 + dy + ny, 2 + dx : 2 + dx + nx]
            k = k + np.where(ok, nb, v)
        keys.append(k.copy())
    sel = valid.ravel()
    position = np.arange(ny * nx)[sel]
    order = np.lexsort((position, *[q.ravel()[sel] for q in keys[::-1]], v.ravel()[sel]))
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    out = np.full(ny * nx, -1)
    out[sel] = np.searchsorted(np.cumsum(target), rank, side="right")
    return out.reshape(ny, nx)


def level_counts(data: np.ndarray, dtype: np.dtype, nodata=None) -> np.ndarray:
    info = np.iinfo(dtype)
    counts = np.bincount(
        (np.asarray(data, np.int64) - info.min).ravel(), minlength=info.max - info.min + 1
    )
    if nodata is not None:
        counts[int(nodata) - info.min] = 0
    return counts


@st.composite
def cases(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.uint16]))
    nrows = draw(st.integers(1, 2))
    ny, nx = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    top = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    src = rng.integers(0, top, (nrows, ny, nx)) - (3 if dtype == np.int16 else 0)
    ref = rng.integers(0, 8, (nrows, 4, 5)) - (3 if dtype == np.int16 else 0)
    nodata = draw(st.sampled_from([None, 1]))
    mask = rng.random((ny, nx)) < 0.2 if nodata is not None and draw(st.booleans()) else None
    if nodata is not None:
        ref[ref == nodata] = 2
        src[:, 0, 0] = 2  # every row keeps a valid pixel
        if mask is not None:
            mask[0, 0] = False
    chunks = draw(chunkings((nrows, ny, nx)))
    return src.astype(dtype), ref.astype(dtype), nodata, mask, chunks


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_equals_the_brute_force_order_for_any_chunking(case):
    src, ref, nodata, mask, chunks = case
    eager = specify_exact(src, ref, nodata=nodata, mask=mask)
    lazy = specify_exact(da.from_array(src, chunks=chunks), ref, nodata=nodata, mask=mask)
    assert isinstance(lazy, da.Array) and lazy.chunks == chunks
    np.testing.assert_array_equal(lazy.compute(), eager)
    info = np.iinfo(src.dtype)
    for b in range(src.shape[0]):
        valid = np.ones(src.shape[1:], bool) if nodata is None else src[b] != nodata
        if mask is not None:
            valid &= ~mask
        target = largest_remainder(level_counts(ref[b], src.dtype, nodata), int(valid.sum()))
        want = oracle(src[b], valid, target) + info.min
        np.testing.assert_array_equal(eager[b][valid], want[valid])
        np.testing.assert_array_equal(eager[b][~valid], nodata if nodata is not None else 0)
        assert np.array_equal(level_counts(eager[b][valid], src.dtype), target)


def test_largest_remainder_is_exact_and_breaks_ties_to_the_lower_level():
    assert largest_remainder(np.array([1, 1, 1]), 4).tolist() == [2, 1, 1]
    assert largest_remainder(np.array([1, 1, 1]), 5).tolist() == [2, 2, 1]
    assert largest_remainder(np.array([0, 2, 0, 1]), 3).tolist() == [0, 2, 0, 1]
    assert largest_remainder(np.array([3, 1]), 2).tolist() == [2, 0]  # remainders 0.5, 0.5 ...
    # counts whose products overflow int64 are rescaled in Python integers
    big = np.array([2**40, 2**40 + 1, 3], np.int64)
    out = largest_remainder(big, 2**40)
    assert int(out.sum()) == 2**40
    exact = [c * 2**40 / (2**41 + 4) for c in (2**40, 2**40 + 1, 3)]
    assert all(abs(o - e) < 1 for o, e in zip(out.tolist(), exact, strict=True))


@pytest.fixture(scope="module")
def rgb(data_dir):
    """A crop of the uint8 sample scene (nodata 0), and a crop of it elsewhere as reference."""
    scene = rastermatch.open_raster(data_dir / "rasterio_RGB.byte.tif")
    return scene.isel(y=slice(250, 370), x=slice(300, 420)), scene.isel(y=slice(400, 480))


def test_uint8_scene_gets_the_reference_counts_exactly(rgb):
    src, ref = rgb
    out, report = specify_exact(src, ref, return_report=True)
    assert out.dtype == np.uint8 and out.dims == src.dims
    assert out.rio.crs == src.rio.crs and out.rio.transform() == src.rio.transform()
    assert out.rio.nodata == 0
    for b in range(3):
        s, o = src.values[b], out.values[b]
        assert np.array_equal(o == 0, s == 0)  # nodata stays nodata, nothing else becomes it
        target = largest_remainder(level_counts(ref.values[b], np.uint8, 0), int((s != 0).sum()))
        assert np.array_equal(level_counts(o[s != 0], np.uint8), target)
    assert isinstance(report, SpecifyReport)
    assert report.pixels.tolist() == [int((src.values[b] != 0).sum()) for b in range(3)]
    assert np.all(report.position_share <= report.windows_share)
    assert "by position only" in report.to_text()


def test_uint16_scene_gets_the_reference_counts_exactly(data_dir):
    src = rastermatch.open_raster(data_dir / "arrnorm_target.tif").isel(
        y=slice(100, 200), x=slice(200, 330)
    )
    ref = rastermatch.open_raster(data_dir / "arrnorm_ref_adjusted2target.tif")
    out = specify_exact(src.chunk({"y": 37, "x": 50}), ref, nodata=0)
    assert isinstance(out.data, da.Array) and out.dtype == np.uint16
    values = out.values
    for b in range(4):
        s = src.values[b]
        target = largest_remainder(level_counts(ref.values[b], np.uint16, 0), int((s != 0).sum()))
        assert np.array_equal(level_counts(values[b][s != 0], np.uint16), target)
    np.testing.assert_array_equal(values, specify_exact(src, ref, nodata=0).values)


def test_output_does_not_depend_on_the_chunking(rgb):
    src, ref = rgb
    want = specify_exact(src.values, ref.values, nodata=0)
    for chunks in [(1, 45, 64), (3, 7, 120), (2, 120, 33)]:
        got = specify_exact(da.from_array(src.values, chunks=chunks), ref.values, nodata=0)
        assert got.chunks == da.from_array(src.values, chunks=chunks).chunks
        np.testing.assert_array_equal(got.compute(), want)


def test_equalization_to_a_flat_target_is_exactly_flat():
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:64, 0:64]
    field = (np.sin(y / 9.0) + np.cos(x / 7.0) + 2) * 30
    smooth = (field + rng.normal(0, 3, (64, 64))).clip(0, 255)
    src = smooth.astype(np.uint8)  # 4096 pixels on about 120 levels
    flat = Histogram(np.ones((1, 256), np.int64), Binning.levels(np.dtype(np.uint8), 1))
    out = specify_exact(src, flat)
    assert np.bincount(out.ravel(), minlength=256).tolist() == [16] * 256
    # a constant image too: every pixel ties in value and windows but for the border
    const, report = specify_exact(np.full((32, 8), 7, np.uint8), flat, return_report=True)
    assert np.bincount(const.ravel(), minlength=256).tolist() == [1] * 256
    assert 0 < report.position_share[0] <= 1


def test_histogram_and_dataset_references_and_rows_by_label():
    rng = np.random.default_rng(5)
    src = xr.DataArray(
        rng.integers(0, 50, (2, 20, 30)).astype(np.uint16),
        dims=("band", "y", "x"),
        coords={"band": ["red", "nir"]},
    )
    ref = xr.DataArray(
        rng.integers(100, 200, (2, 10, 10)).astype(np.uint16),
        dims=("band", "y", "x"),
        coords={"band": ["nir", "red"]},
    )
    out = specify_exact(src, ref)
    for label in ("red", "nir"):
        assert np.array_equal(
            level_counts(out.sel(band=label).values, np.uint16),
            level_counts(ref.sel(band=label).values, np.uint16) * 6,
        )
    ds = specify_exact(src.to_dataset("band"), rastermatch.band_histograms(ref))
    assert isinstance(ds, xr.Dataset) and set(ds.data_vars) == {"red", "nir"}
    assert np.array_equal(ds["red"].values, out.sel(band="red").values)


def test_masked_pixels_stay_nodata_and_do_not_count():
    rng = np.random.default_rng(2)
    src = rng.integers(1, 30, (3, 12, 14)).astype(np.uint8)
    mask = np.zeros((12, 14), bool)
    mask[3:6, 2:9] = True
    ref = np.arange(1, 101, dtype=np.uint8).reshape(10, 10)
    out = specify_exact(src, ref[None].repeat(3, 0), nodata=0, mask=mask)
    assert np.all(out[:, mask] == 0) and np.all(out[:, ~mask] > 0)
    n = int((~mask).sum())
    for b in range(3):
        assert np.array_equal(
            level_counts(out[b][~mask], np.uint8),
            largest_remainder(level_counts(ref, np.uint8), n),
        )


@pytest.mark.parametrize(
    ("source", "reference", "kwargs", "error", "words"),
    [
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), {}, UnsupportedDtypeError,
         "Quantise"),
        (np.zeros((4, 4), np.uint32), np.zeros((4, 4), np.uint8), {}, UnsupportedDtypeError,
         "16 bits"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float64), {}, UnsupportedDtypeError,
         "reference"),
        (np.ones((4, 4), np.uint8), "fives", {"nodata": 5}, NodataConflictError, "nodata"),
        (np.ones((4, 4), np.uint8), np.ones((4, 4), np.uint8),
         {"mask": np.zeros((4, 4), bool)}, OptionError, "pass nodata="),
        (np.ones((4, 4), np.uint8), np.ones((4, 4), np.uint16), {"nodata": 70000}, OptionError,
         "70000"),
        (np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8), {"nodata": 0}, RastermatchError,
         "no valid pixels"),
    ],
)  # fmt: skip
def test_bad_inputs_are_refused_by_name(source, reference, kwargs, error, words):
    if isinstance(reference, str):  # a histogram keeps its own nodata (none): 5 is a level
        reference = rastermatch.band_histograms(np.full((4, 4), 5, np.uint8))
    with pytest.raises(error, match=words):
        specify_exact(source, reference, **kwargs)


def test_a_reference_of_more_bands_is_refused_as_match_histograms_refuses_it():
    """Band numbers: a reference of 3 bands for a source of 2 is refused, not cut to its first
    two (named bands still meet by name, a subset of them allowed)."""
    src = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
    ref = np.stack([np.full((3, 3), v) for v in (10, 20, 30)]).astype(np.uint8)
    for reference in (ref, rastermatch.band_histograms(ref)):
        with pytest.raises(BandMismatchError, match=r"source has 2 bands and .* has 3; select"):
            specify_exact(src, reference)
    with pytest.raises(BandMismatchError):
        rastermatch.match_histograms(src, ref)
    named = xr.DataArray(ref, dims=("band", "y", "x"), coords={"band": ["r", "g", "b"]})
    out = specify_exact(xr.DataArray(src, dims=named.dims, coords={"band": ["b", "r"]}), named)
    assert out.sel(band="b").values.tolist() == [[30] * 3] * 3


def test_the_report_shares_are_disjoint():
    """Every pixel is counted once in the text: by value, by window sums, by position only; an
    all-equal image is ordered by position alone."""
    _, report = specify_exact(
        np.full((4, 4), 5, np.uint8), np.arange(16, dtype=np.uint8).reshape(4, 4),
        return_report=True,
    )  # fmt: skip
    assert report.to_text() == (
        "data: 16 pixels, level decided by value for 0.00%, by window sums for 0.00%, by "
        "position only for 100.0000%"
    )
    source = np.array([[5, 5, 5, 5], [5, 5, 5, 9]], dtype=np.uint8)
    flat = np.arange(8, dtype=np.uint8).reshape(2, 4)
    _, report = specify_exact(source, flat, return_report=True)  # 7 tied fives, 4 by position
    assert report.to_text().endswith(
        "8 pixels, level decided by value for 12.50%, by window sums for 37.50%, by position "
        "only for 50.0000%"
    )


def test_a_histogram_of_uniform_bins_is_refused():
    hist = rastermatch.band_histograms(np.arange(16, dtype=np.float32).reshape(4, 4), bins=4)
    with pytest.raises(OptionError, match="integer levels"):
        specify_exact(np.zeros((4, 4), np.uint8), hist)


def test_specify_command_writes_the_exact_histogram(data_dir, tmp_path):
    from click.testing import CliRunner

    from rastermatch.cli import main

    small = rastermatch.open_raster(data_dir / "rasterio_RGB.byte.tif").isel(
        y=slice(250, 330), x=slice(300, 390)
    )
    source = rastermatch.write_raster(small, tmp_path / "small.tif")
    reference = data_dir / "stars_L7_ETMs.tif"
    out = tmp_path / "out.tif"
    args = [str(source), str(reference), "-o", str(out), "--reference-bands", "1,2,3"]
    result = CliRunner().invoke(main, ["specify", *args, "--nodata", "0"])
    assert result.exit_code == 0, result.output
    assert "by position only" in result.output
    written = rastermatch.open_raster(out).values
    ref = rastermatch.open_raster(reference).values
    for b in range(3):
        valid = small.values[b] != 0
        target = largest_remainder(level_counts(ref[b], np.uint8, 0), int(valid.sum()))
        assert np.array_equal(level_counts(written[b][valid], np.uint8), target)
    again = CliRunner().invoke(main, ["specify", *args])
    assert again.exit_code != 0 and "exists" in again.output  # no overwrite without asking
    assert rastermatch.read_provenance(out)["operation"] == "specify"
