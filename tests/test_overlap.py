"""Overlap-only statistics: ``overlap=True`` / ``"all"`` on the API, the file jobs and the CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio.transform
import xarray as xr
from click.testing import CliRunner

import rastermatch
from rastermatch import GeometryError, OptionError, OverlapWarning, fit_lut, match_histograms
from rastermatch.cli import main
from rastermatch.geometry import grid_of, inside_grid, onto_grid
from rastermatch.pipeline import match_files, normalize_files

DATA = Path(__file__).resolve().parent.parent / "data"
NAIP = DATA / "riohist_source1_naip.tif"
LANDSAT = DATA / "riohist_reference1_landsat.tif"
TARGET = DATA / "arrnorm_target.tif"
ADJUSTED = DATA / "arrnorm_ref_adjusted2target.tif"


def moved(data, dx: float, dy: float = 0.0):
    """``data`` moved by ``(dx, dy)`` CRS units: the same pixels elsewhere."""
    t = data.rio.transform()
    out = data.assign_coords(x=data.x + dx, y=data.y + dy)
    return out.rio.write_transform(rasterio.transform.Affine.translation(dx, dy) * t)


def same_lut(a, b) -> None:
    np.testing.assert_array_equal(a.table, b.table)
    np.testing.assert_array_equal(a.source_hist.counts, b.source_hist.counts)
    np.testing.assert_array_equal(a.reference_hist.counts, b.reference_hist.counts)


@pytest.fixture(scope="module")
def holed():
    """The co-registered arrnorm pair with disjoint cloud holes (nodata 0) in each, and the
    pixels valid in both: not nodata in any band of either."""
    src = rastermatch.open_raster(TARGET).compute()
    ref = rastermatch.open_raster(ADJUSTED).compute()
    s, r = src.values.copy(), ref.values.copy()
    s[:, 40:140, 60:200] = 0  # a cloud over the source
    s[2, 300:320, 400:420] = 0  # a hole in one band only: the pixel is out of both
    r[:, 180:300, 250:420] = 0  # another, elsewhere, over the reference
    r[:, 10:30, 500:530] = 0
    both = (s != 0).all(axis=0) & (r != 0).all(axis=0)
    return src.copy(data=s), ref.copy(data=r), both


# -- one grid -----------------------------------------------------------------------------------


def test_same_grid_statistics_equal_matching_with_the_union_of_masks(holed):
    src, ref, both = holed
    oracle = fit_lut(src, ref, nodata=0, mask=~both, reference_mask=~both)
    assert (oracle.source_hist.counts.sum(axis=1) == both.sum()).all()
    out = match_histograms(src, ref, nodata=0, overlap=True)
    np.testing.assert_array_equal(out.values, oracle.apply(src).values)
    same_lut(fit_lut(src, ref, nodata=0, overlap=True), oracle)
    assert out.rio.transform() == src.rio.transform() and out.dims == src.dims


def test_same_grid_numpy_dask_and_chunkings_agree(holed):
    src, ref, both = holed
    expected = fit_lut(src.values, ref.values, nodata=0, overlap=True)  # numpy: same shape
    assert (expected.source_hist.counts.sum(axis=1) == both.sum()).all()
    chunks = {"band": 1, "y": 100, "x": 200}
    lut = fit_lut(src.chunk(chunks), ref.chunk({"y": 64}), nodata=0, overlap=True)
    same_lut(lut, expected)


def test_masks_add_to_the_common_area(holed):
    src, ref, both = holed
    cloud = np.zeros(both.shape, bool)
    cloud[200:260, 20:90] = True
    lut = fit_lut(src, ref, nodata=0, mask=cloud, overlap=True)
    common = both & ~cloud
    same_lut(lut, fit_lut(src, ref, nodata=0, mask=~common, reference_mask=~common))


def test_a_stack_counts_each_date_or_every_date(holed):
    src, ref, both = holed
    later = src.values.copy()
    later[:, 200:260, 20:90] = 0
    stack = xr.concat([src, src.copy(data=later)], dim="time").assign_coords(
        time=np.array(["2020-01-01", "2020-02-01"], dtype="datetime64[ns]")
    )
    per_date = fit_lut(stack, ref, nodata=0, overlap=True).source_hist.counts.sum(axis=1)
    second = both & (later != 0).all(axis=0)
    assert per_date.tolist() == [both.sum()] * 4 + [second.sum()] * 4
    every = fit_lut(stack, ref, nodata=0, overlap="all")
    assert every.source_hist.counts.sum(axis=1).tolist() == [second.sum()] * 8
    assert (every.reference_hist.counts.sum(axis=1) == second.sum()).all()


def test_no_pixel_valid_in_both_is_a_geometry_error(holed):
    src, ref, _ = holed
    left, right = src.values.copy(), ref.values.copy()
    left[:, :, 268:] = 0
    right[:, :, :268] = 0
    with pytest.raises(GeometryError, match=r"no pixel is valid in both .* and "):
        fit_lut(src.copy(data=left), ref.copy(data=right), nodata=0, overlap=True)


def test_a_small_overlap_warns(holed):
    src, ref, _ = holed
    small = ref.values.copy()
    small[:, :, 40:] = 0  # the reference keeps a strip of 40 of 536 columns
    with pytest.warns(OverlapWarning, match=r"% of its valid pixels .* below 10%"):
        fit_lut(src, ref.copy(data=small), nodata=0, overlap=True)


def test_numpy_inputs_of_different_sizes_cannot_overlap():
    a, b = np.ones((2, 30, 40), np.uint8), np.ones((2, 30, 41), np.uint8)
    with pytest.raises(GeometryError, match="no georeferencing"):
        match_histograms(a, b, overlap=True)
    assert match_histograms(a, b).shape == a.shape  # without overlap: histograms only


def test_bad_overlap_values_and_histogram_references():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with pytest.raises(OptionError, match="overlap must be"):
        match_histograms(a, a, overlap="both")
    with pytest.raises(OptionError, match="is a histogram"):
        match_histograms(a, rastermatch.band_histograms(a), overlap=True)


# -- different grids ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair():
    return rastermatch.open_raster(NAIP), rastermatch.open_raster(LANDSAT)


@pytest.fixture(scope="module")
def pair_lut(pair):
    return fit_lut(*pair, overlap=True)


def test_different_grids_use_the_reference_laid_onto_the_source_grid(pair, pair_lut):
    src, ref = pair
    lut = pair_lut
    # the oracle: the reference on the source grid, outside its footprint left out
    g_src, g_ref = grid_of(src), grid_of(ref)
    on = onto_grid(ref.values, g_ref, g_src, ((726,), (546,)), fill=0).compute()
    inside = inside_grid(g_ref, g_src, ((726,), (546,))).compute()[0]
    common = inside & (on != 0).all(axis=0)
    assert (lut.source_hist.counts.sum(axis=1) == common.sum()).all()
    expected = rastermatch.band_histograms(on, nodata=0, mask=~common)
    np.testing.assert_array_equal(lut.reference_hist.counts, expected.counts)
    assert 0.99 < common.mean() < 1.0


def test_the_output_stays_on_the_source_grid_with_lut_values_only(pair, pair_lut):
    src, ref = pair
    out = match_histograms(src, ref, overlap=True)
    assert out.rio.crs == src.rio.crs and out.rio.transform() == src.rio.transform()
    assert out.shape == src.shape and isinstance(out.data, da.Array)
    lut = pair_lut
    values = out.values
    for k in range(3):
        assert np.isin(np.unique(values[k]), lut.table[k]).all()
    np.testing.assert_array_equal(values, lut.apply(src).values)


def test_different_grids_numpy_dask_and_chunkings_agree(pair, pair_lut):
    src, ref = pair
    same_lut(fit_lut(src.compute(), ref.compute(), overlap=True), pair_lut)
    same_lut(fit_lut(src.chunk({"y": 200, "x": 300}), ref.chunk({"x": 64}), overlap=True), pair_lut)


def test_disjoint_footprints_are_a_geometry_error(pair):
    src, ref = pair
    far = moved(ref.compute(), 50_000.0)
    with pytest.raises(GeometryError, match="do not overlap") as info:
        fit_lut(src, far, overlap=True)
    assert "riohist_source1_naip.tif" in str(info.value) and "reference" in str(info.value)


def test_a_reference_covering_a_corner_warns(pair):
    src, ref = pair
    # move the reference 95% of its width east: it covers a strip of the source
    corner = moved(ref.compute(), 0.95 * 246 * 29.95184)
    with pytest.warns(OverlapWarning):
        fit_lut(src, corner, overlap=True)


# -- jobs and the command line ------------------------------------------------------------------


def test_match_files_with_overlap(tmp_path, pair):
    src, _ = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverlapWarning)
        result = match_files(NAIP, LANDSAT, tmp_path / "out.tif", overlap=True)
    out = rastermatch.open_raster(result.output)
    assert out.rio.crs == src.rio.crs and out.rio.transform() == src.rio.transform()
    assert out.shape == src.shape
    assert [i["role"] for i in result.geometry["inputs"]] == ["source", "reference"]
    assert result.geometry["overlap"][0]["fraction"] == pytest.approx(0.9976, abs=1e-3)
    counts = result.lut.source_hist.counts.sum(axis=1)
    assert (counts == result.lut.reference_hist.counts.sum(axis=1)).all()
    assert 0.99 * src.shape[1] * src.shape[2] < counts[0] < src.shape[1] * src.shape[2]


def test_cli_overlap_logs_the_geometry(tmp_path):
    result = CliRunner().invoke(
        main, ["match", str(NAIP), str(LANDSAT), "-o", str(tmp_path / "o.tif"), "--overlap"]
    )
    assert result.exit_code == 0, result.output
    assert "Geometry:" in result.stderr and "EPSG:26912, 10 x 10 m" in result.stderr
    assert "covers 99.8% of the footprint" in result.stderr
    assert result.stdout.startswith("Distance to the reference")
    fit = CliRunner().invoke(
        main, ["fit", str(TARGET), str(ADJUSTED), "-o", str(tmp_path / "l.json"),
               "--overlap-all", "--nodata", "0", "-q"],
    )  # fmt: skip
    assert fit.exit_code == 0, fit.output
    assert fit.stdout == "" and "Geometry" not in fit.stderr


def test_cli_info_shows_the_footprint():
    result = CliRunner().invoke(main, ["info", "--no-stats", str(LANDSAT)])
    assert result.exit_code == 0, result.output
    assert "unnamed Mercator (variant A) (no EPSG code)" in result.stdout
    assert "footprint  lon -111.18936 to -111.12317, lat 42.37355 to 42.43903" in result.stdout


def test_normalize_files_and_the_accessor_take_overlap(tmp_path, holed):
    src, ref, both = holed
    src.rio.to_raster(tmp_path / "src.tif")
    ref.rio.to_raster(tmp_path / "ref.tif")
    result = normalize_files(
        [tmp_path / "src.tif"], tmp_path / "ref.tif", tmp_path / "out/", nodata=0, overlap=True
    )
    expected = src.rm.fit(ref, nodata=0, overlap=True)  # the accessor forwards overlap=
    same_lut(result.luts[0], expected)
    assert (expected.source_hist.counts.sum(axis=1) == both.sum()).all()
    assert result.geometry["overlap"] == []  # one grid: nothing to report but the inputs


def test_a_south_up_dataarray_source_finds_the_same_common_area(pair, pair_lut):
    """``sortby("y")`` flips a source to south-up; rioxarray's cached transform then kept the
    negative pixel height with the origin a row off, and 2,538 of 1,186,380 pixels counted."""
    src, ref = pair
    lut = fit_lut(src.sortby("y"), ref, overlap=True)
    np.testing.assert_array_equal(lut.source_hist.counts, pair_lut.source_hist.counts)
    # the lattice's nodes lie elsewhere on a flipped grid: a few pixels at reference edges
    assert np.abs(lut.reference_hist.counts - pair_lut.reference_hist.counts).sum() < 100


def test_normalize_files_overlap_all_counts_pixels_valid_in_every_date(tmp_path, holed):
    """A series given one file a date: overlap='all' takes one common area, valid in every
    date and the reference, for every date (it counted each date's own, as overlap=True)."""
    src, ref, both = holed
    later = src.values.copy()
    later[:, 200:260, 20:90] = 0
    src.rio.write_nodata(0).rio.to_raster(tmp_path / "2020-01-01.tif")
    src.copy(data=later).rio.write_nodata(0).rio.to_raster(tmp_path / "2020-02-01.tif")
    ref.rio.to_raster(tmp_path / "ref.tif")
    dates = [tmp_path / "2020-01-01.tif", tmp_path / "2020-02-01.tif"]
    every = both & (later != 0).all(axis=0)
    result = normalize_files(dates, tmp_path / "ref.tif", tmp_path / "all/", overlap="all")
    for lut in result.luts:
        assert (lut.source_hist.counts.sum(axis=1) == every.sum()).all()
        assert (lut.reference_hist.counts.sum(axis=1) == every.sum()).all()
    each = normalize_files(dates, tmp_path / "ref.tif", tmp_path / "each/", overlap=True)
    assert each.luts[0].source_hist.counts.sum() == 4 * both.sum()
    elsewhere = moved(src.rio.write_nodata(0), 300.0)
    elsewhere.rio.to_raster(tmp_path / "moved.tif")
    with pytest.raises(rastermatch.GridMismatchError, match="not on the grid of"):
        normalize_files([dates[0], tmp_path / "moved.tif"], tmp_path / "ref.tif",
                        tmp_path / "bad/", overlap="all")  # fmt: skip


def test_cli_info_across_the_antimeridian_and_pixel_units(tmp_path):
    path = tmp_path / "fiji.tif"
    transform = rasterio.transform.Affine(1000, 0, 3.2e6, 0, -1000, -1.5e6)
    profile = {"driver": "GTiff", "width": 300, "height": 100, "count": 1, "dtype": "uint8",
               "crs": "EPSG:3832", "transform": transform}  # fmt: skip
    with rasterio.open(path, "w", **profile) as f:
        f.write(np.ones((1, 100, 300), np.uint8))
    result = CliRunner().invoke(main, ["info", "--no-stats", str(path)])
    assert result.exit_code == 0, result.output
    assert "lon 178.74609 to -178.55897 (across the antimeridian)" in result.stdout
    assert "pixel      1000 x 1000 m" in result.stdout
