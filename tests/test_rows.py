"""Labelled rows: Rows itself, inputs of any layout in and out, band LUTs applied to stacks."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from conftest import raise_if_dask_computes
from dask.array.utils import assert_eq

from rastermatch import (
    LUT,
    BandMismatchError,
    DimensionError,
    NoValidPixelsError,
    OptionError,
    band_histograms,
)
from rastermatch._data import as_band_array, as_band_mask, no_valid_pixels, spatial_dims
from rastermatch._rows import Rows

DATES = np.array(["2020-01-01", "2020-02-01", "2020-03-01"], dtype="datetime64[ns]")


def stack(rng, dims=("time", "band", "y", "x"), dtype=np.uint16):
    sizes = {"time": 3, "band": 2, "y": 12, "x": 10}
    data = rng.integers(1, 4000, tuple(sizes[d] for d in dims)).astype(dtype)
    coords = {"time": DATES, "band": ["red", "nir"], "y": np.arange(12.0), "x": np.arange(10.0)}
    arr = xr.DataArray(data, dims=dims, coords={d: coords[d] for d in dims})
    arr.attrs = {"long_name": "reflectance", "scale_factor": 0.0001}
    return arr


# -- Rows --------------------------------------------------------------------------------------


def test_rows_selection_and_groups():
    rows = Rows(("time", "band"), (tuple(DATES), ("red", "nir")))
    assert rows.size == 6 and rows.shape == (3, 2)
    index, sub = rows.sel(time="2020-02-01")
    assert index.tolist() == [2, 3] and sub.dims == ("band",)
    index, sub = rows.isel(band=[1])
    assert index.tolist() == [1, 3, 5] and sub.shape == (3, 1)
    group, kept = rows.groups(["time"])
    assert group.tolist() == [0, 1, 0, 1, 0, 1] and kept.same_as(Rows.bands(["red", "nir"]))
    assert rows.describe(5) == "time 2020-03-01, band 'nir'"
    assert Rows.single().describe(0) == "" and Rows.single().size == 1


def test_index_for_aligns_by_label_and_shares_missing_dims():
    stack_rows = Rows(("time", "band"), (tuple(DATES), ("red", "nir")))
    bands = Rows.bands(["nir", "red"])
    assert bands.index_for(stack_rows).tolist() == [1, 0, 1, 0, 1, 0]
    # a date-by-date reference, dates in another unit and order
    dated = Rows(("time",), (tuple(DATES[::-1].astype("datetime64[D]")),))
    assert dated.index_for(stack_rows).tolist() == [2, 2, 1, 1, 0, 0]
    assert Rows.single().index_for(stack_rows).tolist() == [0] * 6
    # band numbers of two different selections pair by position
    assert Rows.bands([2, 3, 4]).index_for(Rows.bands([1, 2, 3])).tolist() == [0, 1, 2]
    assert Rows.bands(["B04"]).index_for(Rows.bands(["red"]), rename={"red": "B04"}).tolist() == [0]


def test_index_for_errors_name_the_fix():
    stack_rows = Rows(("time", "band"), (tuple(DATES), ("red", "nir")))
    with pytest.raises(BandMismatchError, match=r"no 'time' dim; pool it first"):
        stack_rows.index_for(Rows.bands(["red", "nir"]))
    with pytest.raises(BandMismatchError, match="band 'swir' of the source is not among"):
        Rows.bands(["red", "nir"]).index_for(Rows.bands(["red", "swir"]))
    with pytest.raises(BandMismatchError, match="repeated band labels"):
        Rows.bands(["red", "red"]).index_for(Rows.bands(["red", "nir"]))
    with pytest.raises(OptionError, match="no row dim"):
        stack_rows.sel(detector=1)


# -- spatial dims and layouts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dims", "want"),
    [
        (("band", "y", "x"), ("y", "x")),
        (("y", "x", "band"), ("y", "x")),
        (("time", "lat", "lon"), ("lat", "lon")),
        (("latitude", "longitude", "band"), ("latitude", "longitude")),
    ],
)
def test_spatial_dims_by_name(dims, want):
    assert spatial_dims(xr.DataArray(np.zeros((2, 3, 4)), dims=dims)) == want


def test_spatial_dims_from_rioxarray_and_refusal():
    arr = xr.DataArray(np.zeros((2, 3, 4)), dims=("band", "row", "col"))
    with pytest.raises(DimensionError, match=r"no spatial dims .*rio\.set_spatial_dims"):
        spatial_dims(arr)
    arr.rio.set_spatial_dims(x_dim="col", y_dim="row", inplace=True)
    assert spatial_dims(arr) == ("row", "col")
    src = as_band_array(arr)
    assert src.rows.dims == ("band",) and src.array.shape == (2, 3, 4)


@pytest.mark.parametrize(
    "dims", [("time", "band", "y", "x"), ("y", "x", "band", "time"), ("band", "y", "time", "x")]
)
def test_dataarray_round_trip_in_any_dims_order(rng, dims):
    arr = stack(rng, dims)
    src = as_band_array(arr, name="stack")
    assert src.array.shape == (6, 12, 10)
    assert set(src.rows.dims) == {"time", "band"}
    want = arr.transpose(*src.rows.dims, "y", "x").values.reshape(6, 12, 10)
    np.testing.assert_array_equal(np.asarray(src.array), want)
    out = src.wrap(src.array, nodata=0)
    assert out.dims == arr.dims
    xr.testing.assert_identical(out.drop_attrs(), arr.drop_attrs())
    assert out.attrs["long_name"] == "reflectance" and "scale_factor" not in out.attrs
    assert out.rio.nodata == 0


def test_describe_and_no_valid_pixels(rng):
    src = as_band_array(stack(rng), name="stack")
    assert src.describe(3) == "time 2020-02-01, band 'nir' of stack"
    assert src.bands[3] == (DATES[1], "nir")
    flat = as_band_array(np.zeros((4, 5), np.uint8), name="source.tif")
    assert flat.describe(0) == "source.tif" and flat.bands == (1,)
    assert as_band_array(np.zeros((3, 4, 5), np.uint8), name="s").describe(2) == "band 3 of s"
    err = no_valid_pixels(src.rows.describe(3), "stack")
    assert isinstance(err, NoValidPixelsError)
    assert str(err).startswith("time 2020-02-01, band 'nir' of stack has no valid pixels")
    assert str(flat.no_valid_pixels(0)).startswith("source.tif has no valid pixels")


def test_dask_dataarray_round_trip_is_lazy_and_keeps_chunks(rng):
    arr = stack(rng).chunk({"time": 2, "band": 1, "y": 5})
    with raise_if_dask_computes():
        src = as_band_array(arr)
        out = src.wrap(src.array, nodata=None)
    assert src.array.numblocks[0] == 6  # one block per row: the LUT rows chunk alike
    assert out.chunks == arr.chunks and out.dims == arr.dims
    assert_eq(out.data, arr.data)


@pytest.mark.parametrize("lazy", [False, True])
def test_nd_arrays_round_trip(rng, lazy):
    x = rng.integers(0, 255, (3, 2, 12, 10)).astype(np.uint8)
    if lazy:
        x = da.from_array(x, chunks=(2, 1, 6, 5))
    src = as_band_array(x)
    assert src.rows.dims == ("dim_0", "band") and src.rows.coords == ((0, 1, 2), (1, 2))
    out = src.wrap(src.array, nodata=None)
    assert type(out) is type(x)
    assert_eq(out, x)


def test_channel_axis_and_the_channel_last_trap(rng):
    rgb = rng.integers(0, 255, (20, 30, 3)).astype(np.uint8)
    with pytest.raises(DimensionError, match=r"looks channel-last .* channel_axis=-1"):
        as_band_array(rgb)
    src = as_band_array(rgb, channel_axis=-1)
    assert src.array.shape == (3, 20, 30)
    np.testing.assert_array_equal(src.array[1], rgb[..., 1])
    assert_eq(src.wrap(src.array, nodata=None), rgb)
    # stated band-first: 20 bands of 30 x 3 pixels
    assert as_band_array(rgb, channel_axis=0).array.shape == (20, 30, 3)
    # channel axis in the middle of a 4-D array: (time, y, c, x) is not a layout we guess
    x = da.from_array(rng.integers(0, 9, (2, 6, 3, 5)).astype(np.uint8), chunks=(1, 3, 3, 5))
    src = as_band_array(x, channel_axis=2)
    assert src.rows.dims == ("dim_0", "band") and src.array.shape == (6, 6, 5)
    assert_eq(src.wrap(src.array, nodata=None), x)
    for bad in (3, "last", 1.0):
        with pytest.raises(OptionError, match="channel_axis"):
            as_band_array(rgb, channel_axis=bad)
    with pytest.raises(OptionError, match="numpy and dask"):
        as_band_array(xr.DataArray(rgb, dims=("y", "x", "band")), channel_axis=-1)


@pytest.mark.parametrize(
    "shape", [(60, 80, 8), (100, 100, 12), (64, 64, 13), (20, 30, 3), (6, 6, 5)]
)
@pytest.mark.parametrize("lazy", [False, True])
def test_channel_last_trap_catches_multispectral(rng, shape, lazy):
    x = rng.integers(0, 255, shape).astype(np.uint8)
    if lazy:
        x = da.from_array(x, chunks=-1)
    with pytest.raises(DimensionError, match=r"channel_axis=-1 for \(y, x, c\).*channel_axis=0"):
        as_band_array(x)
    assert as_band_array(x, channel_axis=-1).array.shape == (shape[2], *shape[:2])
    assert as_band_array(x, channel_axis=0).array.shape == shape


@pytest.mark.parametrize("shape", [(4, 4, 3), (3, 40, 50), (12, 100, 100), (5, 5, 5), (8, 6, 9)])
def test_band_first_shapes_pass_the_trap(rng, shape):
    # last axis not shorter than both others, or the others at most 4 long
    x = rng.integers(0, 255, shape).astype(np.uint8)
    assert as_band_array(x).array.shape == shape


def test_integer_data_with_an_unrepresentable_nodata_attr_is_refused_by_name():
    f = xr.DataArray(np.full((2, 3, 4), 7.0), dims=("band", "y", "x"), attrs={"nodata": np.nan})
    u = f.astype("uint16")  # xarray keeps the float load's nodata=nan
    with pytest.raises(
        OptionError, match=r"reference has nodata=nan .* uint16 .* reference_nodata="
    ):
        as_band_array(u, name="reference")
    assert as_band_array(u, nodata=0).nodata == 0  # an explicit nodata wins
    assert as_band_array(f).nodata != as_band_array(f).nodata  # NaN on floats is fine
    # odc-geo's .odc.nodata = v (attrs and encoding), read by the one rule io uses
    g = xr.DataArray(np.ones((3, 4), np.uint16), dims=("y", "x"), attrs={"nodata": 65535})
    g.encoding["_FillValue"] = 65535
    assert as_band_array(g).nodata == 65535
    g.attrs["nodata"] = -1.5
    g.encoding.clear()
    with pytest.raises(OptionError, match=r"data has nodata=-1\.5"):
        as_band_array(g)
    ds = xr.Dataset({"a": u.isel(band=0), "b": u.isel(band=1)})
    with pytest.raises(OptionError, match="nodata=nan"):
        as_band_array(ds)


def test_dataset_round_trip(rng):
    arr = stack(rng)
    ds = arr.to_dataset("band")
    ds["red"].attrs = {"units": "DN", "_FillValue": 0}
    ds["nir"].attrs = {"units": "DN", "_FillValue": 0}
    ds.attrs = {"title": "scene"}
    src = as_band_array(ds, name="ds")
    assert src.rows.dims == ("time", "band") and src.rows.coord("band") == ("red", "nir")
    assert src.nodata == 0
    np.testing.assert_array_equal(np.asarray(src.array), as_band_array(arr).array)
    out = src.wrap(src.array, nodata=7)
    assert isinstance(out, xr.Dataset) and list(out.data_vars) == ["red", "nir"]
    assert out.attrs == {"title": "scene"}
    assert out["red"].attrs["units"] == "DN" and out["red"].rio.nodata == 7
    xr.testing.assert_equal(out["nir"], ds["nir"])
    ds["nir"].attrs["_FillValue"] = 1
    with pytest.raises(OptionError, match=r"different nodata values .* pass nodata="):
        as_band_array(ds)
    assert as_band_array(ds, nodata=0).nodata == 0


def test_masks_of_a_stack(rng):
    arr = stack(rng)
    src = as_band_array(arr)
    clouds = xr.DataArray(rng.random((3, 12, 10)) > 0.5, dims=("time", "y", "x"))
    m = as_band_mask(clouds, src)
    assert m.shape == (6, 12, 10)
    np.testing.assert_array_equal(m[3], clouds.values[1])  # time 1, band nir
    assert as_band_mask(clouds.values[0], src).shape == (1, 12, 10)
    with pytest.raises(DimensionError, match="must cover the same"):
        as_band_mask(np.zeros((5, 5), bool), src)


def test_a_labelled_mask_meets_the_rows_by_label(rng):
    arr = stack(rng)
    src = as_band_array(arr)
    clouds = xr.DataArray(
        rng.random((3, 12, 10)) > 0.5, dims=("time", "y", "x"), coords={"time": DATES}
    )
    want = as_band_mask(clouds, src)
    np.testing.assert_array_equal(as_band_mask(clouds.isel(time=[2, 0, 1]), src), want)
    np.testing.assert_array_equal(m := as_band_mask(clouds.transpose("x", "time", "y"), src), want)
    assert m.shape == (6, 12, 10)
    # a mask with more dates than the source: the source's are taken
    more = xr.concat(
        [clouds, clouds.isel(time=[0]).assign_coords(time=[np.datetime64("2021-01-01", "ns")])],
        "time",
    )
    np.testing.assert_array_equal(as_band_mask(more, src), want)
    shifted = clouds.assign_coords(time=clouds.time + np.timedelta64(5, "D"))
    with pytest.raises(BandMismatchError, match=r"time 2020-01-01.* of stack .* labels of mask"):
        as_band_mask(shifted, as_band_array(arr, name="stack"))
    with pytest.raises(BandMismatchError, match="time 2020-03-01 of data is not among"):
        as_band_mask(clouds.isel(time=[0, 1]), src)
    with pytest.raises(BandMismatchError, match="mask has repeated time labels"):
        as_band_mask(clouds.isel(time=[0, 1, 0]), src)
    bands = xr.DataArray(
        rng.random((2, 12, 10)) > 0.5, dims=("band", "y", "x"), coords={"band": ["nir", "red"]}
    )
    np.testing.assert_array_equal(as_band_mask(bands, src)[0], bands.values[1])


# -- LUTs on stacks ----------------------------------------------------------------------------


@pytest.fixture
def band_lut(rng):
    scene = rng.integers(1, 4000, (2, 40, 30)).astype(np.uint16)
    ref = rng.normal(900, 150, (2, 30, 20)).clip(1, 3999).astype(np.uint16)
    labels = xr.DataArray(scene, dims=("band", "y", "x"), coords={"band": ["red", "nir"]})
    return LUT.from_histograms(band_histograms(labels), band_histograms(ref))


@pytest.mark.parametrize("lazy", [False, True])
def test_band_lut_maps_every_date_of_a_stack(rng, band_lut, lazy):
    arr = stack(rng).transpose("band", "y", "x", "time")
    if lazy:
        arr = arr.chunk({"time": 1, "y": 6})
    with raise_if_dask_computes():
        out = band_lut.apply(arr)
    assert out.dims == arr.dims
    loop = xr.concat([band_lut.apply(arr.isel(time=t)) for t in range(3)], dim="time")
    np.testing.assert_array_equal(out.transpose(*loop.dims).values, loop.values)
    if lazy:
        assert out.chunks == arr.chunks
    # bands in another order are matched by label
    swapped = band_lut.apply(arr.sel(band=["nir", "red"]))
    np.testing.assert_array_equal(swapped.sel(band="red").values, out.sel(band="red").values)


def test_numpy_apply_is_threaded_and_equal_to_one_block(rng, band_lut):
    from rastermatch.apply import apply_block, block_arguments

    x = rng.integers(1, 4000, (2, 400, 30)).astype(np.uint16)
    table, lohi, kwargs = block_arguments(band_lut, nodata=None, out_nodata=None)
    np.testing.assert_array_equal(band_lut.apply(x), apply_block(x, table, lohi, **kwargs))
    stack4 = np.stack([x, x[::-1]])
    assert_eq(band_lut.apply(stack4), np.stack([band_lut.apply(x), band_lut.apply(x[::-1])]))
    with pytest.raises(BandMismatchError, match="1 bands and the LUT 2"):
        band_lut.apply(x[:1])
