"""Tests of rastermatch.io on stacks: (time, band, y, x) Zarr round trips, GeoTIFF refusals, and
writes of what odc-stac and stackstac return (their coords and attrs, their nodata)."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine

from rastermatch.errors import DimensionError, InputTypeError, RasterReadError
from rastermatch.io import open_raster, read_provenance, write_raster

DATES = np.array(
    ["2020-01-01T10:30:00.123456789", "2020-02-01", "2020-03-01"], dtype="datetime64[ns]"
)


def stack(
    bands: tuple = ("red", "nir"),
    dates: np.ndarray = DATES,
    shape: tuple[int, int] = (40, 60),
    chunks: tuple[int, ...] | None = (1, 1, 40, 60),
    dtype: str = "uint16",
) -> xr.DataArray:
    """A georeferenced random (time, band, y, x) stack with nodata 0 and an item id per date."""
    height, width = shape
    values = np.random.default_rng(8).integers(0, 3000, (len(dates), len(bands), *shape))
    values = values.astype(dtype)
    data = da.from_array(values, chunks=chunks) if chunks else values
    result = xr.DataArray(
        data,
        dims=("time", "band", "y", "x"),
        coords={
            "time": dates,
            "band": list(bands),
            "y": 4000000.0 - 30.0 * (np.arange(height) + 0.5),
            "x": 500000.0 + 30.0 * (np.arange(width) + 0.5),
            "id": ("time", [f"scene-{i}" for i in range(len(dates))]),
        },
    )
    result = result.rio.write_crs("EPSG:32633")
    result = result.rio.write_transform(Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0))
    return result.rio.write_nodata(0, encoded=False)


def odc_nodata(data: xr.DataArray) -> float | None:
    """odc-geo's reading of the nodata (``nodata`` attr first, then ``_FillValue``)."""
    pytest.importorskip("odc.geo.xr")
    return data.odc.nodata


def never_computed(data: xr.DataArray) -> xr.DataArray:
    """``data`` whose blocks raise when computed: a refusal must come before any work."""

    def boom(block: np.ndarray) -> np.ndarray:
        raise AssertionError("a block was computed")

    return data.copy(data=data.data.map_blocks(boom, dtype=data.dtype))


# -- Zarr stacks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bands", "dims"),
    [
        (["red", "nir"], ("time", "band", "y", "x")),
        ([4, 8], ("time", "band", "y", "x")),
        (["red", "nir"], ("band", "time", "y", "x")),  # odc-stac's to_dataarray("band") order
    ],
)
def test_zarr_stack_round_trip_keeps_dims_coords_and_values(tmp_path, bands, dims):
    data = stack(bands).transpose(*dims)
    out = write_raster(data, tmp_path / "stack.zarr", provenance={"step": "stack"})

    meta = json.loads((out / "data" / "zarr.json").read_text())
    assert meta["dimension_names"] == list(dims)
    # one date and band per stored chunk
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 1, 40, 60]
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert meta["attributes"]["rastermatch_complete_chunks"] is True

    back = open_raster(out)
    assert isinstance(back.data, da.Array)
    assert back.dims == dims
    assert back.chunks[:2] == ((1,) * data.shape[0], (1,) * data.shape[1])
    assert back.time.dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(back.time.values, DATES)  # nanoseconds intact
    assert back.band.values.tolist() == bands
    assert back.band.dtype.kind == ("U" if isinstance(bands[0], str) else "i")
    assert back.id.dims == ("time",) and back.id.values.tolist() == [
        "scene-0",
        "scene-1",
        "scene-2",
    ]
    assert back.rio.crs == data.rio.crs
    assert back.rio.transform() == data.rio.transform()
    assert back.rio.nodata == 0 == back.attrs["_FillValue"]
    assert read_provenance(out) == {"step": "stack"}
    np.testing.assert_array_equal(back.values, data.values)


def test_zarr_stack_from_numpy_and_rows_spanning_chunks(tmp_path):
    """numpy: one row per chunk; dask blocks of several rows write whole stored chunks."""
    numpy_backed = stack(chunks=None)
    spanning = stack(chunks=(3, 2, 20, 60))
    for name, data in [("numpy.zarr", numpy_backed), ("dask.zarr", spanning)]:
        out = write_raster(data, tmp_path / name)
        meta = json.loads((out / "data" / "zarr.json").read_text())
        assert meta["chunk_grid"]["configuration"]["chunk_shape"][:2] == [1, 1]
        np.testing.assert_array_equal(open_raster(out).values, numpy_backed.values)


def test_zarr_stack_with_more_row_dims_and_latlon(tmp_path):
    """Any row dims before the spatial ones, and geographic dims (odc-stac's latitude/longitude)."""
    data = stack().expand_dims(tile=["a", "b"]).rename(y="latitude", x="longitude")
    data = data.rio.write_crs("EPSG:4326")
    out = write_raster(data, tmp_path / "tiles.zarr")
    back = open_raster(out)
    assert back.dims == ("tile", "time", "band", "latitude", "longitude")
    assert back.chunksizes["tile"] == (1, 1)
    assert back.tile.values.tolist() == ["a", "b"]
    assert back.rio.crs.to_epsg() == 4326
    np.testing.assert_array_equal(back.values, data.values)


def test_zarr_stores_without_row_dims_read_as_before(tmp_path):
    flat = stack().isel(time=0, band=0)  # (y, x) with scalar time, band and id coords
    back = open_raster(write_raster(flat, tmp_path / "flat.zarr"))
    assert back.dims == ("band", "y", "x") and back.band.values.tolist() == [1]
    np.testing.assert_array_equal(back.values[0], flat.values)


def test_stack_read_errors_name_the_date(tmp_path):
    out = write_raster(stack(), tmp_path / "stack.zarr")
    chunk = out / "data" / "c" / "1" / "1" / "0" / "0"  # date 2020-02-01, band nir
    chunk.write_bytes(chunk.read_bytes()[:-9] + b"corrupted")
    back = open_raster(out)
    assert back.isel(time=0).values.any()  # other dates read fine
    with pytest.raises(RasterReadError, match=r"time 2020-02-01, band 2, rows 0-39") as caught:
        back.compute()
    assert "(stored chunk time 1, band 1, y 0, x 0)" in str(caught.value)
    chunk.unlink()
    with pytest.raises(RasterReadError, match="missing 1 of its 6 chunks"):
        open_raster(out)


def test_a_damaged_label_coordinate_is_a_read_error(tmp_path):
    out = write_raster(stack(), tmp_path / "stack.zarr")
    (out / "id" / "c" / "0").write_bytes(b"not a chunk")
    with pytest.raises(RasterReadError, match=r"coordinate 'id' of the Zarr store .*damaged"):
        open_raster(out)


def test_band_names_needs_a_band_dim(tmp_path):
    out = write_raster(stack().isel(band=0), tmp_path / "red.zarr")
    assert open_raster(out).dims == ("time", "y", "x")
    with pytest.raises(DimensionError, match="band_names relabels the band dim"):
        open_raster(out, band_names=["red"])


# -- GeoTIFF: (band, y, x) only --------------------------------------------------------------


@pytest.mark.parametrize(
    ("select", "hint"),
    [
        ({}, r"rows \(time: 3, band: 2\); write a \.zarr stack instead, or one GeoTIFF per time"),
        ({"band": 0}, r"data\.rename\(\{'time': 'band'\}\)"),
    ],
)
def test_geotiff_refuses_a_stack_before_any_work(tmp_path, select, hint):
    data = never_computed(stack().isel(**select))
    with pytest.raises(DimensionError, match=hint) as caught:
        write_raster(data, tmp_path / "stack.tif")
    assert str(tmp_path / "stack.tif") in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_geotiff_squeezes_a_single_date(tmp_path):
    group = stack().sel(time=DATES[1:2])  # what a groupby("time") group looks like
    out = write_raster(group, tmp_path / "date.tif")
    back = open_raster(out)
    assert back.dims == ("band", "y", "x") and back.band.values.tolist() == ["red", "nir"]
    assert back.rio.nodata == 0 == odc_nodata(back)
    np.testing.assert_array_equal(back.values, group.values[0])


def test_dataset_is_refused_with_the_way_to_write_it(tmp_path):
    with pytest.raises(InputTypeError, match=r"to_dataarray\('band'\)"):
        write_raster(stack().to_dataset("band"), tmp_path / "out.zarr")


# -- what STAC loaders attach ---------------------------------------------------------------


class RasterSpec:
    """Stands for stackstac's RasterSpec: an attribute no file format can hold."""

    def __repr__(self) -> str:
        return "RasterSpec(epsg=32633, ...)"


def stackstac_like(data: xr.DataArray) -> xr.DataArray:
    """``data`` carrying the coords and attrs stackstac 0.5 puts on a stack (shapes copied from a
    real ``stackstac.stack``), plus a stale ``nodata`` attr next to ``_FillValue``."""
    n = data.sizes["time"]
    result = data.assign_coords(
        {
            "eo:cloud_cover": ("time", np.array([None, 1.5, 3][:n], dtype=object)),
            "view:off_nadir": ("time", np.array([0, 2.5, 1][:n], dtype=object)),
            "platform": ("time", np.array(["sentinel-2a"] * n, dtype=object)),
            "title": ("band", np.array(["Red", None][: data.sizes["band"]], dtype=object)),
            "common_name": ("band", np.array(["red", "nir"][: data.sizes["band"]], dtype=object)),
            "proj:transform": np.array({0.0, 30.0, 500000.0}, dtype=object),
            "raster:bands": np.array({"nodata": 0}, dtype=object),
            "proj:code": "EPSG:32633",
            "epsg": 32633,
            "a/b": ("time", np.arange(n)),
        }
    )
    return result.assign_attrs(
        spec=RasterSpec(),
        crs="epsg:32633",
        transform=Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0),
        resolution=30,
        resolution_xy=(30.0, 30.0),
        nodata=-1,  # stale: the rioxarray nodata, _FillValue = 0, is the one that holds
        units="DN",
        acquired=np.datetime64("2020-01-01"),
    )


def test_stac_metadata_never_breaks_a_zarr_write(tmp_path):
    data = stackstac_like(stack())
    assert data.rio.nodata == 0 and data.attrs["nodata"] == -1
    # coord attributes: CF ones xarray writes itself would clash, objects cannot be stored
    data.time.attrs.update(units="days since 2000-01-01", long_name="acquired", bad=RasterSpec())
    back = open_raster(write_raster(data, tmp_path / "stac.zarr"))
    # plain values are kept, object coords of numbers or strings too; the rest is dropped
    assert back["view:off_nadir"].values.tolist() == [0, 2.5, 1]
    assert back.platform.values.tolist() == ["sentinel-2a"] * 3
    assert back.common_name.values.tolist() == ["red", "nir"]
    assert back["proj:code"].item() == "EPSG:32633" and back.epsg.item() == 32633
    assert back.time.attrs == {"long_name": "acquired"}
    np.testing.assert_array_equal(back.time.values, DATES)
    for dropped in ("eo:cloud_cover", "title", "proj:transform", "raster:bands", "a/b"):
        assert dropped not in back.coords
    assert back.attrs == {
        "units": "DN",
        "acquired": "2020-01-01",
        "rastermatch_complete_chunks": True,
        "_FillValue": 0,
    }
    # one nodata, whoever reads it
    assert back.rio.nodata == 0 == odc_nodata(back)
    assert xr.open_zarr(back.encoding["source"]).data.rio.nodata == 0
    np.testing.assert_array_equal(back.values, data.values)


def test_stac_metadata_never_breaks_a_geotiff_write(tmp_path):
    data = stackstac_like(stack()).isel(time=2)
    out = write_raster(data, tmp_path / "date.tif")
    with rasterio.open(out) as src:
        assert src.nodata == 0 and src.descriptions == ("red", "nir")
        assert src.tags() == {"AREA_OR_POINT": "Area", "units": "DN"}
    back = open_raster(out)
    assert back.rio.nodata == 0 == odc_nodata(back) == back.attrs["_FillValue"]


def test_odc_geo_nodata_is_the_written_nodata(tmp_path):
    """odc-geo sets its nodata in attrs["nodata"] and encoding["_FillValue"]."""
    pytest.importorskip("odc.geo.xr")
    data = stack(dtype="int16")
    del data.attrs["_FillValue"]
    data.odc.nodata = -9999
    for name in ("odc.zarr", "odc.tif"):
        back = open_raster(write_raster(data.isel(time=0), tmp_path / name))
        assert back.rio.nodata == -9999 == back.odc.nodata == back.attrs["_FillValue"]


# -- real odc-stac and stackstac stacks ----------------------------------------------------


@pytest.fixture(scope="module")
def stac_items(stac_scenes):
    """The items of the shared local catalog (tests/conftest.py), in date order."""
    pystac = pytest.importorskip("pystac")
    catalog = pystac.Catalog.from_file(str(stac_scenes.catalog))
    return sorted(catalog.get_items(recursive=True), key=lambda item: item.datetime)


def stackstac_records(items: list) -> list[dict]:
    """Item dicts with ``proj:epsg`` put back: stackstac 0.5 reads no other CRS field
    (pystac >= 1.12 writes ``proj:code``), as tests/test_stac.py explains."""
    records = []
    for item in items:
        record = item.clone()
        record.make_asset_hrefs_absolute()
        record = record.to_dict()
        record["properties"]["proj:epsg"] = int(record["properties"]["proj:code"][5:])
        records.append(record)
    return records


def check_round_trip(data: xr.DataArray, tmp_path: Path, name: str) -> None:
    """Zarr keeps the stack; GeoTIFF takes one date at a time; both read back intact."""
    expected = data.compute()
    back = open_raster(write_raster(data, tmp_path / f"{name}.zarr"))
    assert back.dims == data.dims
    for dim in ("time", "band", "y", "x"):
        np.testing.assert_array_equal(back[dim].values, data[dim].values)
    assert back.rio.crs == data.rio.crs and back.rio.transform() == data.rio.transform()
    assert back.rio.nodata == odc_nodata(back) == data.rio.nodata
    np.testing.assert_array_equal(back.values, expected.values)
    with pytest.raises(DimensionError, match="one GeoTIFF per time"):
        write_raster(data, tmp_path / f"{name}.tif")
    for i, date in [(1, data.time.values[1])]:  # one date is enough: dates are alike
        one = open_raster(write_raster(data.isel(time=i), tmp_path / f"{name}-{i}.tif"))
        assert one.band.values.tolist() == data.band.values.tolist()
        assert one.rio.crs == data.rio.crs and one.rio.transform() == data.rio.transform()
        np.testing.assert_array_equal(
            one.values, expected.sel(time=date).transpose("band", "y", "x").values
        )


pytestmark = pytest.mark.filterwarnings(
    "ignore:The 'shapely.ops.transform:DeprecationWarning"  # odc-geo's use of shapely
)


def test_real_odc_stac_stack(tmp_path, stac_items):
    odc_stac = pytest.importorskip("odc.stac")
    dataset = odc_stac.load(stac_items, bands=["red", "green"], chunks={"y": 80, "x": 96})
    assert dataset.red.attrs["nodata"] == 0
    check_round_trip(dataset.to_dataarray("band"), tmp_path, "odc")
    # one variable keeps its odc-stac nodata attribute
    red = dataset.red.expand_dims(band=["red"], axis=1)
    back = open_raster(write_raster(red, tmp_path / "red.zarr"))
    assert back.rio.nodata == 0 == odc_nodata(back)


def test_real_stackstac_stack(tmp_path, stac_items):
    stackstac = pytest.importorskip("stackstac")
    records = stackstac_records(stac_items)
    # the defaults: float64 with NaN for missing pixels, no nodata, spec/transform attrs
    data = stackstac.stack(records, assets=["red", "green"], chunksize=(80, 96))
    assert data.attrs["spec"] is not None and data["eo:cloud_cover"].dtype == object
    assert data.name.startswith("stackstac-")
    check_round_trip(data, tmp_path, "stackstac")
    assert list(xr.open_zarr(tmp_path / "stackstac.zarr").data_vars) == ["data"]
    typed = stackstac.stack(
        records, assets=["red"], dtype="uint16", fill_value=np.uint16(0), rescale=False
    ).rio.write_nodata(0, encoded=False)
    back = open_raster(write_raster(typed, tmp_path / "typed.zarr"))
    assert back.dtype == np.uint16 and back.rio.nodata == 0 == odc_nodata(back)
    assert back.platform.item() == "landsat-7"  # stackstac makes a constant coord a scalar


def test_a_nodata_tag_in_a_geotiff_does_not_contradict_its_nodata(tmp_path):
    path = tmp_path / "tagged.tif"
    profile = dict(driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32633")
    transform = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)
    with rasterio.open(path, "w", nodata=0, transform=transform, **profile) as dst:
        dst.write(np.ones((1, 8, 8), "uint8"))
        dst.update_tags(nodata="255")  # a stale copy some tools leave
    scene = open_raster(path)
    assert scene.rio.nodata == 0 == odc_nodata(scene) == scene.attrs["_FillValue"]
    assert "nodata" not in scene.attrs
