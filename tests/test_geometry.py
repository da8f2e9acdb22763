"""rastermatch.geometry: the geometry report and the nearest-neighbour layout onto a grid."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio.transform
import rasterio.warp

import rastermatch
from rastermatch.errors import GeometryError, OptionError
from rastermatch.geometry import (
    check_overlap,
    describe,
    describe_text,
    grid_of,
    inside_grid,
    job_report,
    job_report_lines,
    onto_grid,
    overlap_fraction,
    same_grid,
)

DATA = Path(__file__).resolve().parent.parent / "data"
NAIP = DATA / "riohist_source1_naip.tif"
LANDSAT = DATA / "riohist_reference1_landsat.tif"
TARGET = DATA / "arrnorm_target.tif"
ADJUSTED = DATA / "arrnorm_ref_adjusted2target.tif"


@pytest.fixture(scope="module")
def naip():
    return rastermatch.open_raster(NAIP).compute()


@pytest.fixture(scope="module")
def landsat():
    return rastermatch.open_raster(LANDSAT).compute()


def moved(data, dx: float, dy: float = 0.0):
    t = data.rio.transform()
    out = data.assign_coords(x=data.x + dx, y=data.y + dy)
    return out.rio.write_transform(rasterio.transform.Affine.translation(dx, dy) * t)


# -- the report ---------------------------------------------------------------------------------


def test_describe_a_utm_scene(naip):
    d = describe(naip)
    assert d["crs"] == "EPSG:26912" and d["epsg"] == 26912
    assert d["crs_name"] == "NAD83 / UTM zone 12N" and d["units"] == "m"
    assert d["resolution"] == [10.0, 10.0] and d["shape"] == [726, 546]
    assert d["bounds"] == [484410.0, 4691270.0, 489870.0, 4698530.0]
    ring = d["footprint"]
    assert ring[0] == ring[-1] and len(ring) == 4 * 16 + 1
    w, s, e, n = d["lonlat_bounds"]
    assert -111.2 < w < e < -111.1 and 42.3 < s < n < 42.5
    # the corners, as GDAL carries them to lon/lat
    lon, lat = rasterio.warp.transform(naip.rio.crs, "EPSG:4326", [484410.0], [4698530.0])
    assert ring[0] == pytest.approx([lon[0], lat[0]], abs=1e-7)
    assert "EPSG:26912, 10 x 10 m, 546 x 726 pixels" in describe_text(d)


def test_describe_a_crs_without_epsg_code(landsat):
    d = describe(landsat)
    assert d["epsg"] is None and d["crs"].startswith("PROJCS")
    assert d["crs_name"].startswith("unnamed Mercator")
    assert d["resolution"] == pytest.approx([29.95184, 30.0029], abs=1e-4)


def test_describe_an_array_without_georeferencing():
    d = describe(np.zeros((2, 5, 7), np.uint8))
    assert d["shape"] == [5, 7] and d["crs"] is None and d["footprint"] is None
    assert describe_text(d) == "no CRS, 7 x 5 pixels"


def test_same_grid(naip, landsat):
    target, adjusted = rastermatch.open_raster(TARGET), rastermatch.open_raster(ADJUSTED)
    assert same_grid(target, adjusted)
    assert not same_grid(naip, landsat)
    assert not same_grid(naip, moved(naip, 10.0))
    assert same_grid(np.zeros((3, 4)), np.zeros((2, 3, 4)))
    assert not same_grid(np.zeros((3, 4)), np.zeros((4, 3)))


def test_overlap_fraction(naip, landsat):
    assert overlap_fraction(naip, landsat) == pytest.approx(0.9976, abs=1e-3)
    assert overlap_fraction(naip, naip) == 1.0
    width = 546 * 10.0
    assert overlap_fraction(naip, moved(naip, width / 2)) == pytest.approx(0.5, abs=1e-9)
    assert overlap_fraction(naip, moved(naip, width / 4, 726 * 10.0 / 2)) == pytest.approx(0.375)
    assert overlap_fraction(naip, moved(naip, 2 * width)) == 0.0
    assert overlap_fraction(naip, moved(landsat, 1e7)) == 0.0  # far away, another CRS
    assert overlap_fraction(np.zeros((3, 4)), np.zeros((1, 3, 4))) == 1.0
    with pytest.raises(GeometryError, match="no georeferencing"):
        overlap_fraction(np.zeros((3, 4)), np.zeros((4, 3)))


def test_job_report_names_the_inputs_and_their_overlap(naip, landsat):
    report = job_report([("a.tif", naip)], [("b.tif", landsat)])
    assert [i["role"] for i in report["inputs"]] == ["source", "reference"]
    assert report["overlap"][0]["fraction"] == pytest.approx(0.9976, abs=1e-3)
    lines = job_report_lines(report)
    assert lines[0] == "Geometry:" and "a.tif: EPSG:26912" in lines[1]
    assert "covers 99.8% of the footprint of a.tif" in lines[-1]
    assert job_report([("a", naip)], [("b", naip)])["overlap"] == []  # one grid: no line


def test_check_overlap():
    assert check_overlap(True) is True and check_overlap("all") == "all"
    assert check_overlap(False) is False and check_overlap(np.bool_(True)) is True
    for bad in ("yes", 1, None, "every"):
        with pytest.raises(OptionError, match="overlap must be"):
            check_overlap(bad)


# -- the layout onto the source grid -------------------------------------------------------------


def test_onto_grid_takes_the_reference_pixel_each_source_centre_falls_in(naip, landsat):
    src, ref = grid_of(naip), grid_of(landsat)
    out = onto_grid(landsat.values, ref, src, ((726,), (546,)), fill=0).compute()
    assert out.shape == (3, 726, 546) and out.dtype == landsat.dtype
    # the oracle: GDAL's PROJ carries the centres, rasterio's rowcol finds the pixel
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 726, 300), rng.integers(0, 546, 300)
    xs, ys = rasterio.transform.xy(naip.rio.transform(), rows, cols)
    xr_, yr = rasterio.warp.transform(naip.rio.crs, landsat.rio.crs, xs, ys)
    rr, cc = rasterio.transform.rowcol(landsat.rio.transform(), xr_, yr)
    rr, cc = np.asarray(rr), np.asarray(cc)
    inside = (rr >= 0) & (rr < 329) & (cc >= 0) & (cc < 246)
    expected = np.where(inside, landsat.values[:, rr.clip(0, 328), cc.clip(0, 245)], 0)
    np.testing.assert_array_equal(out[:, rows, cols], expected)
    mask = inside_grid(ref, src, ((726,), (546,))).compute()[0]
    np.testing.assert_array_equal(mask[rows, cols], inside)
    # no new values: every value is one of the reference's (or the fill)
    assert np.isin(np.unique(out), np.append(np.unique(landsat.values), 0)).all()


def test_onto_grid_depends_on_no_chunking(naip, landsat):
    src, ref = grid_of(naip), grid_of(landsat)
    whole = onto_grid(landsat.values, ref, src, ((726,), (546,)), fill=0).compute()
    cases = [
        ((3, 50, 60), ((300, 426), (546,))),
        ((1, 329, 246), ((200, 200, 200, 126), (273, 273))),
    ]
    for ref_chunks, src_chunks in cases:
        lazy = da.from_array(landsat.values, chunks=ref_chunks)
        out = onto_grid(lazy, ref, src, src_chunks, fill=0)
        assert out.chunks[1:] == src_chunks
        np.testing.assert_array_equal(out.compute(), whole)
        inside = inside_grid(ref, src, src_chunks).compute()
        np.testing.assert_array_equal(inside, inside_grid(ref, src, ((726,), (546,))).compute())


def test_onto_grid_reads_only_the_windows_it_needs(naip):
    """A source block outside the reference reads nothing of it; a shifted copy is a slice."""
    src = grid_of(naip)
    ref = grid_of(moved(naip, 100 * 10.0, -50 * 10.0))  # 100 columns east, 50 rows south
    values = np.arange(3 * 726 * 546, dtype=np.int32).reshape(3, 726, 546)
    out = onto_grid(values, ref, src, ((363, 363), (273, 273)), fill=-1).compute()
    np.testing.assert_array_equal(out[:, 50:, 100:], values[:, :-50, :-100])
    assert (out[:, :50] == -1).all() and (out[:, :, :100] == -1).all()
    far = grid_of(moved(naip, 1e6))
    lazy = onto_grid(values, far, src, ((363, 363), (273, 273)), fill=-1)
    assert not any("gather" in str(k) for k in lazy.dask)  # no block reads the reference
    assert (lazy.compute() == -1).all()


# -- across the antimeridian ---------------------------------------------------------------------


def _pixel_codes(shape):
    return (np.arange(shape[0])[:, None] * 10000 + np.arange(shape[1])[None, :] + 1).astype(
        np.float64
    )


@pytest.mark.parametrize(
    "ref_transform, ref_shape",
    [
        (rasterio.transform.Affine(0.1, 0, -180, 0, -0.1, 0), (300, 3600)),  # the globe
        (rasterio.transform.Affine(0.01, 0, 178, 0, -0.01, -12), (400, 400)),  # 178 to 182 east
    ],
    ids=["global", "over-180"],
)
def test_onto_grid_across_the_antimeridian_equals_gdal(ref_transform, ref_shape):
    """A source across the antimeridian (a Mercator centred on 150 E) over a lon/lat reference:
    the lattice's interpolation must not run across the seam (it took reference pixels from
    the far side of the globe), and a reference over 180 E is found (PROJ gives -180..180)."""
    from rasterio.crs import CRS
    from rasterio.enums import Resampling

    src = rastermatch.geometry.Grid(
        (200, 300), CRS.from_epsg(3832), rasterio.transform.Affine(1000, 0, 3.2e6, 0, -1000, -1.5e6)
    )
    ref = rastermatch.geometry.Grid(ref_shape, CRS.from_epsg(4326), ref_transform)
    codes = _pixel_codes(ref_shape)
    expected = np.zeros(src.shape)
    rasterio.warp.reproject(
        codes, expected, src_transform=ref.transform, src_crs=ref.crs,
        dst_transform=src.transform, dst_crs=src.crs, resampling=Resampling.nearest,
        src_nodata=0, dst_nodata=0, tolerance=0,
    )  # fmt: skip
    for chunks in (((200,), (300,)), ((64, 64, 72), (77, 77, 77, 69))):
        out = onto_grid(codes[None], ref, src, chunks, fill=0).compute()[0]
        np.testing.assert_array_equal(out, expected)
    assert (expected > 0).all()
    assert overlap_fraction(src, ref) == pytest.approx(1.0, abs=0.01)
    d = describe(src)
    west, _, east, _ = d["lonlat_bounds"]
    assert 178 < west < 179 and -179 < east < -178  # west > east: across the antimeridian
    assert "(across the antimeridian)" in describe_text(d)


def test_onto_grid_with_a_pole_inside_a_block():
    """A polar stereographic source over a lon/lat reference: the block holding the pole has a
    perimeter circling it, and its window must reach the reference's top row (it raised 'bends
    too much' whatever the chunks). The oracle: GDAL's PROJ and rasterio's rowcol per pixel."""
    from rasterio.crs import CRS

    src = rastermatch.geometry.Grid(
        (120, 120), CRS.from_epsg(3413), rasterio.transform.Affine(1e4, 0, -6e5, 0, -1e4, 6e5)
    )
    ref = rastermatch.geometry.Grid(
        (60, 720), CRS.from_epsg(4326), rasterio.transform.Affine(0.5, 0, -180, 0, -0.5, 90)
    )
    codes = _pixel_codes(ref.shape)
    rows, cols = np.mgrid[0:120, 0:120]
    xs, ys = rasterio.transform.xy(src.transform, rows.ravel(), cols.ravel())
    lon, lat = rasterio.warp.transform(src.crs, ref.crs, xs, ys)
    rr, cc = rasterio.transform.rowcol(ref.transform, lon, lat)
    expected = codes[np.asarray(rr), np.asarray(cc)].reshape(120, 120)
    for chunks in (((120,), (120,)), ((33, 33, 33, 21), (33, 33, 33, 21))):
        out = onto_grid(codes[None], ref, src, chunks, fill=0).compute()[0]
        np.testing.assert_array_equal(out, expected)


def test_onto_grid_gathers_a_large_window_chunk_by_chunk(monkeypatch):
    """A coarse source over a fine reference: a block's window of the reference is gathered
    from each of the reference's chunks in turn (bytes joined exactly: NaN, -0.0, bool), not
    merged into one chunk (a 400-pixel block of 300 m over a 10 m reference held 3.6 GB)."""
    from rasterio.crs import CRS

    import rastermatch.geometry as geometry

    utm = CRS.from_epsg(32633)
    src = rastermatch.geometry.Grid(
        (48, 48), utm, rasterio.transform.Affine(300, 0, 499000, 0, -300, 5001000)
    )
    ref = rastermatch.geometry.Grid(
        (600, 600), utm, rasterio.transform.Affine(10, 0, 500000, 0, -10, 5000000)
    )
    values = np.random.default_rng(0).normal(size=(2, 600, 600)).astype(np.float32)
    values[0, :50] = np.nan
    values[1, 50:100] = -0.0
    chunks = ((24, 24), (20, 28))
    for array, fill in ((values, np.float32(-1)), (values > 0, True)):
        whole = onto_grid(array, ref, src, chunks, fill=fill).compute()
        monkeypatch.setattr(geometry, "_WINDOW_BYTES", 1 << 10)
        lazy = onto_grid(da.from_array(array, chunks=(1, 128, 100)), ref, src, chunks, fill=fill)
        assert any("_gather_part" in str(k) for k in lazy.__dask_graph__())
        assert lazy.chunks[1:] == chunks
        assert lazy.compute().tobytes() == whole.tobytes()
        monkeypatch.undo()


def test_same_grid_is_judged_in_pixels_and_overlap_values_are_checked_safely():
    """A 3 cm lon/lat orthophoto moved 30 pixels is another grid (the transforms differ by less
    than affine's 1e-5 absolute tolerance, which called it the same grid and compared pixels
    30 apart); an array given as overlap is an OptionError, not numpy's ambiguous truth."""
    from rasterio.crs import CRS

    wgs84 = CRS.from_epsg(4326)
    t = rasterio.transform.Affine(3e-7, 0, 10, 0, -3e-7, 45)
    a = rastermatch.geometry.Grid((100, 100), wgs84, t)
    assert not same_grid(a, rastermatch.geometry.Grid((100, 100), wgs84, t * t.translation(30, 0)))
    assert same_grid(a, rastermatch.geometry.Grid((100, 100), wgs84, t * t.translation(1e-4, 0)))
    with pytest.raises(OptionError, match="overlap must be"):
        check_overlap(np.array([True, False]))
    assert check_overlap(np.str_("all")) == "all" and type(check_overlap(np.str_("all"))) is str


def test_valid_area_every_row_not_nodata_not_nan_not_masked():
    from rastermatch._data import as_band_array
    from rastermatch.geometry import valid_area

    x = np.ones((2, 4, 5), np.float32)
    x[0, 0, 0], x[1, 1, 1], x[0, 2, 2] = np.nan, 7, np.inf
    mask = np.zeros((4, 5), bool)
    mask[3, 4] = True
    expected = np.ones((4, 5), bool)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = expected[3, 4] = False
    area = valid_area(as_band_array(da.from_array(x, chunks=(1, 2, 3)), nodata=7), mask)
    np.testing.assert_array_equal(area.compute(), expected)


def test_a_lon_lat_grid_over_0_to_360_meets_one_over_minus_180_to_180():
    """Model output on 0..360 over observations on -180..180 (one CRS, other transforms): the
    same place, found by position and by footprint (both said 'do not overlap')."""
    from rasterio.crs import CRS

    wgs84 = CRS.from_epsg(4326)
    Affine = rasterio.transform.Affine
    src = rastermatch.geometry.Grid((100, 100), wgs84, Affine(0.1, 0, -170, 0, -0.1, 10))
    ref = rastermatch.geometry.Grid((100, 100), wgs84, Affine(0.1, 0, 190, 0, -0.1, 10))
    assert not same_grid(src, ref)
    assert overlap_fraction(src, ref) == pytest.approx(1.0)
    codes = _pixel_codes(ref.shape)
    out = onto_grid(codes[None], ref, src, ((100,), (100,)), fill=0).compute()[0]
    np.testing.assert_array_equal(out, codes)


def test_a_file_s_grid_keeps_its_own_transform_without_float_noise():
    landsat = rastermatch.open_raster(LANDSAT)
    with rasterio.open(LANDSAT) as f:
        assert describe(landsat)["transform"] == [float(v) for v in list(f.transform)[:6]]
