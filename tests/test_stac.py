"""A real STAC round trip: a local pystac catalog of COGs, loaded with odc-stac and stackstac.

The catalog (``stac_scenes`` in conftest) holds T dates of one real scene: the base, then the
base through random strictly increasing maps of its levels. Nearest-CDF matching with the
present levels inverts a strictly increasing map, so every date normalized onto the base must
equal the base exactly, whatever library built the stack and whatever form the reference takes.
The results are written with :func:`rastermatch.write_raster` (Zarr for the stack, GeoTIFF for
one date) and read back with CRS, transform, time and band labels intact.

Everything is local: asset hrefs are relative file paths resolved against the catalog, every
one is checked to be a file, and Python sockets refuse to connect while this module runs.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import dask
import numpy as np
import odc.geo.xr
import odc.stac
import pystac
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
from affine import Affine
from conftest import StacScenes, raise_if_dask_computes
from pystac.extensions.projection import ProjectionExtension

from rastermatch import band_histograms, match_histograms
from rastermatch.io import open_raster, write_raster

CHUNKS = {"y": 80, "x": 96}  # 2 x 2 blocks a date and band

# odc-geo's own use of a shapely function shapely deprecates (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:The 'shapely.ops.transform:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"a STAC test tried to connect to {address!r}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        yield


@pytest.fixture(scope="module")
def items(stac_scenes: StacScenes) -> list[pystac.Item]:
    """The catalog's items as a user gets them: read back from disk, in date order."""
    catalog = pystac.Catalog.from_file(str(stac_scenes.catalog))
    return sorted(catalog.get_items(recursive=True), key=lambda item: item.datetime)


@pytest.fixture(scope="module")
def odc_stack(items: list[pystac.Item], stac_scenes: StacScenes) -> xr.Dataset:
    """odc-stac's Dataset: one variable per band, each (time, y, x), dask-backed."""
    return odc.stac.load(items, bands=list(stac_scenes.bands), chunks=CHUNKS)


def expected(stac_scenes: StacScenes) -> np.ndarray:
    """Every date equals the base: (time, band, y, x)."""
    return np.broadcast_to(stac_scenes.base, stac_scenes.scenes.shape)


def assert_grid(data: xr.DataArray | xr.Dataset, stac_scenes: StacScenes) -> None:
    assert data.rio.crs == stac_scenes.crs
    np.testing.assert_allclose(
        tuple(data.rio.transform())[:6], tuple(stac_scenes.transform)[:6], rtol=0, atol=1e-6
    )
    assert (data.sizes["y"], data.sizes["x"]) == stac_scenes.base.shape[1:]


def assert_nodata(data: xr.DataArray, nodata: int) -> None:
    """One nodata value, whichever library asks."""
    assert data.rio.nodata == nodata
    assert data.odc.nodata == nodata


def test_catalog_describes_grid_and_local_files(
    items: list[pystac.Item], stac_scenes: StacScenes
) -> None:
    assert [item.id for item in items] == [f"scene-{t}" for t in range(len(stac_scenes.dates))]
    dates = [np.datetime64(item.datetime.replace(tzinfo=None), "ns") for item in items]
    np.testing.assert_array_equal(dates, stac_scenes.dates)
    for item in items:
        projection = ProjectionExtension.ext(item)
        assert projection.code == f"EPSG:{stac_scenes.crs.to_epsg()}"
        assert tuple(projection.shape) == stac_scenes.base.shape[1:]
        assert Affine(*projection.transform) == stac_scenes.transform
        assert sorted(item.assets) == sorted(stac_scenes.bands)
        for asset in item.assets.values():
            assert not Path(asset.href).is_absolute()  # relative to the item, as saved
            href = asset.get_absolute_href()
            assert "://" not in href and Path(href).is_file()  # no network


def test_odc_stac_loads_the_catalog_lazily_on_its_grid(
    odc_stack: xr.Dataset, stac_scenes: StacScenes
) -> None:
    assert list(odc_stack.data_vars) == list(stac_scenes.bands)
    np.testing.assert_array_equal(odc_stack.time.values, stac_scenes.dates)
    assert odc_stack.odc.geobox.affine == stac_scenes.transform
    for name in stac_scenes.bands:
        assert odc_stack[name].dims == ("time", "y", "x")
        assert dask.is_dask_collection(odc_stack[name])
    assert_grid(odc_stack, stac_scenes)
    loaded = odc_stack.to_dataarray("band").transpose("time", "band", "y", "x")
    np.testing.assert_array_equal(loaded.values, stac_scenes.scenes)
    for scene in stac_scenes.scenes[1:]:  # the later dates are far from the base
        assert (scene[stac_scenes.base > 0] > 255).mean() > 0.9


def test_odc_stac_dataset_every_date_onto_base(
    odc_stack: xr.Dataset, stac_scenes: StacScenes
) -> None:
    """Dataset in (variables are bands, matched by name), Dataset out; one statistics pass."""
    reference = odc_stack.isel(time=0)  # the base date, still lazy: read in the same pass
    with raise_if_dask_computes(max_computes=1):
        result = match_histograms(odc_stack, reference)
    assert isinstance(result, xr.Dataset)
    assert list(result.data_vars) == list(stac_scenes.bands)
    np.testing.assert_array_equal(result.time.values, stac_scenes.dates)
    for b, name in enumerate(stac_scenes.bands):
        assert result[name].dims == ("time", "y", "x")
        assert dask.is_dask_collection(result[name])
        np.testing.assert_array_equal(result[name].values, expected(stac_scenes)[:, b])
        assert_nodata(result[name], stac_scenes.nodata)
    assert_grid(result, stac_scenes)


def test_odc_stac_dataarray_onto_base_file_written_and_read_back(
    odc_stack: xr.Dataset, stac_scenes: StacScenes, tmp_path: Path
) -> None:
    """odc-stac's Dataset as one DataArray, in to_dataarray's own (band, time, y, x) order."""
    stack = odc_stack.to_dataarray("band")
    assert stack.dims == ("band", "time", "y", "x")
    reference = open_raster(stac_scenes.base_tif)  # band labels from the band descriptions
    assert reference.band.values.tolist() == list(stac_scenes.bands)

    # to_dataarray keeps the Dataset's attrs, not the variables': the nodata is given again.
    result = match_histograms(stack, reference, nodata=stac_scenes.nodata)
    assert result.dims == stack.dims
    assert dask.is_dask_collection(result)
    normalized = result.transpose("time", "band", "y", "x")
    np.testing.assert_array_equal(normalized.values, expected(stac_scenes))

    out = write_raster(result, tmp_path / "stack.zarr")
    back = open_raster(out)
    assert back.dims == result.dims
    assert dask.is_dask_collection(back)
    np.testing.assert_array_equal(back.time.values, stac_scenes.dates)
    assert back.band.values.tolist() == list(stac_scenes.bands)
    assert_grid(back, stac_scenes)
    assert_nodata(back, stac_scenes.nodata)
    np.testing.assert_array_equal(back.values, result.values)

    date = normalized.sel(time=stac_scenes.dates[3])  # one date: (band, y, x)
    tif = open_raster(write_raster(date, tmp_path / "date3.tif"))
    assert tif.dims == ("band", "y", "x")
    assert tif.band.values.tolist() == list(stac_scenes.bands)
    assert_grid(tif, stac_scenes)
    assert_nodata(tif, stac_scenes.nodata)
    np.testing.assert_array_equal(tif.values, stac_scenes.base)


@pytest.fixture(scope="module")
def stackstac_stack(items: list[pystac.Item], stac_scenes: StacScenes) -> xr.DataArray:
    """stackstac's DataArray (time, band, y, x) on the COGs' own grid."""
    stackstac = pytest.importorskip("stackstac")
    # stackstac 0.5 takes the CRS from proj:epsg only, which pystac >= 1.12 migrates to
    # proj:code (projection extension 2.0; gjoseph92/stackstac#262): give it back, as users do.
    # Passing epsg= instead makes stackstac place the items from their lon/lat bbox, off grid.
    records = []
    for item in items:
        record = item.clone()
        record.make_asset_hrefs_absolute()
        record = record.to_dict()
        code = record["properties"]["proj:code"]
        record["properties"]["proj:epsg"] = int(code.removeprefix("EPSG:"))
        records.append(record)
    return stackstac.stack(
        records,
        assets=list(stac_scenes.bands),
        dtype="uint16",
        fill_value=np.uint16(stac_scenes.nodata),
        rescale=False,
        chunksize=(CHUNKS["y"], CHUNKS["x"]),
        snap_bounds=False,  # the COG grid itself, not one snapped to whole pixel multiples
        xy_coords="center",  # coords at pixel centres, as rioxarray reads them
    )


def test_stackstac_loads_the_catalog_lazily_on_its_grid(
    stackstac_stack: xr.DataArray, stac_scenes: StacScenes
) -> None:
    stack = stackstac_stack
    assert stack.dims == ("time", "band", "y", "x")
    assert dask.is_dask_collection(stack)
    np.testing.assert_array_equal(stack.time.values, stac_scenes.dates)
    assert stack.band.values.tolist() == list(stac_scenes.bands)
    assert_grid(stack, stac_scenes)
    # What makes writes hard: object coords (a None cloud cover among floats, dicts, sets)
    # and attrs that are Python objects (RasterSpec, Affine).
    assert stack["eo:cloud_cover"].dtype == object
    assert stack["raster:bands"].dtype == object
    assert isinstance(stack.attrs["transform"], Affine)
    np.testing.assert_array_equal(stack.values, stac_scenes.scenes)


def test_stackstac_onto_base_histogram_written_and_read_back(
    stackstac_stack: xr.DataArray, stac_scenes: StacScenes, tmp_path: Path
) -> None:
    """A precomputed Histogram of the base as the reference; stackstac's metadata kept or
    dropped on write, never an error."""
    stack = stackstac_stack
    reference = band_histograms(open_raster(stac_scenes.base_tif))
    result = match_histograms(stack, reference, nodata=stac_scenes.nodata)
    assert result.dims == stack.dims
    assert dask.is_dask_collection(result)
    np.testing.assert_array_equal(result.values, expected(stac_scenes))

    out = write_raster(result, tmp_path / "stack.zarr")
    back = open_raster(out)
    assert back.dims == ("time", "band", "y", "x")
    np.testing.assert_array_equal(back.time.values, stac_scenes.dates)
    assert back.band.values.tolist() == list(stac_scenes.bands)
    assert back.id.values.tolist() == [f"scene-{t}" for t in range(len(stac_scenes.dates))]
    assert_grid(back, stac_scenes)
    assert_nodata(back, stac_scenes.nodata)
    np.testing.assert_array_equal(back.values, expected(stac_scenes))

    tif = open_raster(write_raster(result.isel(time=1), tmp_path / "date1.tif"))
    assert tif.dims == ("band", "y", "x")
    assert tif.band.values.tolist() == list(stac_scenes.bands)
    assert_grid(tif, stac_scenes)
    assert_nodata(tif, stac_scenes.nodata)
    np.testing.assert_array_equal(tif.values, stac_scenes.base)
