"""Many scenes onto one reference: time stacks, Datasets, pooled and precomputed references."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from conftest import BlockReads, raise_if_dask_computes
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import chunkings

import rastermatch
from rastermatch import (
    BandMismatchError,
    MatchOptions,
    OptionError,
    band_histograms,
    equalize,
    fit_lut,
    match_histograms,
)
from rastermatch._data import as_band_array
from rastermatch.match import apply_arrays, as_reference, fit_many

DATES = np.array(["2020-01-01", "2020-02-01", "2020-03-01", "2020-04-01"], dtype="datetime64[ns]")


@pytest.fixture(scope="module")
def base() -> xr.DataArray:
    """A real scene (3 bands of uint8, 0 = nodata), cropped to keep the tests fast."""
    with rasterio.open("data/rasterio_RGB.byte.tif") as f:
        pixels = f.read(window=((200, 296), (250, 370)))
    return xr.DataArray(
        pixels,
        dims=("band", "y", "x"),
        coords={"band": ["red", "green", "blue"], "y": np.arange(96.0), "x": np.arange(120.0)},
    )


def increasing_maps(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` random strictly increasing maps of the uint8 levels into uint16, 0 kept at 0."""
    maps = []
    for _ in range(n):
        steps = rng.integers(1, 200, 256)
        steps[0] = 0
        maps.append(np.cumsum(steps).astype(np.uint16))
    return maps


def stack_of(base: xr.DataArray, maps: list[np.ndarray]) -> xr.DataArray:
    scenes = [base.copy(data=m[base.values]) for m in maps]
    return xr.concat(scenes, dim="time").assign_coords(time=DATES[: len(maps)])


def test_oracle_every_date_of_a_stack_normalized_onto_its_base_is_the_base(base, rng):
    """Nearest-CDF over present levels inverts a strictly increasing map: exactly the base."""
    stack = stack_of(base, increasing_maps(rng, 4)).chunk({"time": 1, "band": 3})
    out = match_histograms(stack, base, nodata=0)
    assert out.dims == ("time", "band", "y", "x") and isinstance(out.data, da.Array)
    assert out.dtype == base.dtype
    got = out.compute()
    for t in range(4):
        np.testing.assert_array_equal(got.isel(time=t).values, base.values)
    assert got.time.values.tolist() == stack.time.values.tolist()
    assert got.band.values.tolist() == ["red", "green", "blue"]


def test_a_4d_stack_is_byte_identical_to_a_loop_over_its_dates(base, rng):
    stack = stack_of(base, increasing_maps(rng, 3))
    ref = base.isel(y=slice(10, 80)) // 3 + 7
    loop = xr.concat(
        [match_histograms(stack.isel(time=t), ref, nodata=0) for t in range(3)], dim="time"
    )
    for source in (stack, stack.chunk({"time": 2, "band": 1, "y": 50})):
        out = match_histograms(source, ref, nodata=0)
        xr.testing.assert_identical(out.compute(), loop)
    # numpy (time, band, y, x) in, numpy out, the same pixels
    np.testing.assert_array_equal(match_histograms(stack.values, ref.values, nodata=0), loop.values)
    floats = stack.astype(np.float32)
    loop_f = [
        match_histograms(floats.isel(time=t), ref, nodata=0, bins=4096).values for t in range(3)
    ]
    np.testing.assert_array_equal(match_histograms(floats, ref, nodata=0, bins=4096), loop_f)


def test_stack_of_groupby_time_groups(base, rng):
    stack = stack_of(base, increasing_maps(rng, 3))
    whole = match_histograms(stack, base, nodata=0)
    groups = stack.groupby("time").map(lambda g: match_histograms(g, base, nodata=0))
    xr.testing.assert_equal(groups.transpose(*whole.dims), whole)


def test_dataset_gives_what_its_dataarray_gives(base, rng):
    src = stack_of(base, increasing_maps(rng, 2)).to_dataset("band")
    ref = (base // 2 + 3).to_dataset("band")
    src["red"].attrs["long_name"] = "red reflectance"
    out = match_histograms(src, ref, nodata=0)
    assert isinstance(out, xr.Dataset) and list(out.data_vars) == ["red", "green", "blue"]
    want = match_histograms(src.to_dataarray("band"), ref.to_dataarray("band"), nodata=0)
    for name in ("red", "green", "blue"):
        np.testing.assert_array_equal(out[name].values, want.sel(band=name).values)
    assert out["red"].attrs["long_name"] == "red reflectance"
    # variables matched by name, whatever their order; and the Dataset accessor forwards
    reordered = ref[["blue", "red", "green"]]
    xr.testing.assert_equal(src.rm.match(reordered, nodata=0), out)


def test_bands_maps_source_names_to_reference_names(base):
    src = base.to_dataset("band")
    ref = (base // 2 + 3).assign_coords(band=["B04", "B03", "B02"])
    mapping = {"red": "B04", "green": "B03", "blue": "B02"}
    out = match_histograms(src, ref, nodata=0, bands=mapping)
    want = match_histograms(base, (base // 2 + 3), nodata=0)
    for name in ("red", "green", "blue"):
        np.testing.assert_array_equal(out[name].values, want.sel(band=name).values)
    # a partial mapping: the rest pair by label
    swapped = ref.assign_coords(band=["blue", "green", "red"])
    got = match_histograms(base, swapped, nodata=0, bands={"red": "blue", "blue": "red"})
    np.testing.assert_array_equal(got.values, want.values)
    with pytest.raises(OptionError, match="'nir', which is not a band of source"):
        match_histograms(base, ref, bands={"nir": "B08"})
    with pytest.raises(OptionError, match="several source bands onto reference band 'B04'"):
        MatchOptions(bands={"red": "B04", "nir": "B04"})


def test_a_bands_mapping_never_falls_back_to_position(rng):
    def scene(labels, ranges):
        data = np.stack([rng.integers(lo, hi, (20, 30)) for lo, hi in ranges]).astype(np.uint8)
        return xr.DataArray(data, dims=("band", "y", "x"), coords={"band": labels})

    src = scene([1, 2, 3], [(1, 100)] * 3)
    ref = scene([4, 5, 6], [(1, 50), (100, 150), (200, 250)])
    full = match_histograms(src, ref, nodata=0, bands={1: 6, 2: 5, 3: 4})
    assert full.sel(band=1).min() >= 200 and full.sel(band=3).max() < 50
    # a partial mapping: the unmapped bands meet by their own label, never by position
    with pytest.raises(
        BandMismatchError, match=r"band 2, 3 of source are not among .* \(4, 5, 6\)"
    ):
        match_histograms(src, ref, nodata=0, bands={1: 6})
    # a target that is not a reference label ('6' for 6) is named with the reference's labels
    with pytest.raises(
        BandMismatchError, match=r"band 1 of source to '6', .* reference \(4, 5, 6\)"
    ):
        match_histograms(src, ref, nodata=0, bands={1: "6", 2: 5, 3: 4})
    # an unmapped band keeping its label onto a band a mapped one already takes
    same = scene([1, 2, 3], [(1, 50), (100, 150), (200, 250)])
    with pytest.raises(BandMismatchError, match=r"bands 1 and 3 of source both meet band 3"):
        match_histograms(src, same, nodata=0, bands={1: 3})
    out = match_histograms(src, same, nodata=0, bands={1: 3, 3: 1})
    assert out.sel(band=1).min() >= 200 and out.sel(band=2).min() >= 100
    # without a mapping, band numbers of two selections still pair by position
    xr.testing.assert_equal(
        match_histograms(src, ref, nodata=0),
        match_histograms(src, ref.assign_coords(band=[1, 2, 3]), nodata=0).assign_coords(
            band=[1, 2, 3]
        ),
    )


def test_a_labelled_stack_mask_meets_the_dates_by_label(base, rng):
    stack = stack_of(base, increasing_maps(rng, 3))
    clouds = xr.DataArray(
        rng.random((3, *base.shape[1:])) > 0.7,
        dims=("time", "y", "x"),
        coords={"time": stack.time},
    )
    loop = [
        match_histograms(stack.isel(time=t), base, nodata=0, mask=clouds.values[t]).values
        for t in range(3)
    ]
    out = match_histograms(stack, base, nodata=0, mask=clouds.isel(time=[2, 0, 1]))
    np.testing.assert_array_equal(out.values, loop)
    later = clouds.assign_coords(time=clouds.time + np.timedelta64(5, "D"))
    with pytest.raises(BandMismatchError, match="not among the time labels of mask"):
        match_histograms(stack, base, nodata=0, mask=later)


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_pooled_counts_equal_the_histogram_of_the_concatenated_references(base, rng, dtype):
    a = (base.values[:, :50] // 2 + 1).astype(dtype)
    b = base.values[:, 30:, :77].astype(dtype)
    src = (base.values // 3).astype(dtype)
    bins = 4096 if dtype == "float32" else None
    lut = fit_lut(src, [a, b], nodata=0, bins=bins)
    joined = np.concatenate([a.reshape(3, 1, -1), b.reshape(3, 1, -1)], axis=2)
    want = band_histograms(joined, nodata=0)
    if dtype == "float32":  # one binning for the pooled rows: the union of their ranges
        want = band_histograms(joined, nodata=0, bins=bins, range=_ranges(joined))
        np.testing.assert_array_equal(lut.reference_hist.vmin, want.vmin)
        np.testing.assert_array_equal(lut.reference_hist.vmax, want.vmax)
    np.testing.assert_array_equal(lut.reference_hist.counts, want.counts)
    np.testing.assert_array_equal(
        match_histograms(src, [a, b], nodata=0, bins=bins),
        match_histograms(src, joined, nodata=0, bins=bins),
    )
    # a reference with a time dim the source lacks is pooled the same way
    ref_stack = xr.DataArray(np.stack([a[:, :40, :77], b[:, :40]]), dims=("time", "band", "y", "x"))
    pooled = fit_lut(src, ref_stack, nodata=0, bins=bins).reference_hist
    joined2 = np.concatenate([a[:, :40, :77], b[:, :40]], axis=2)
    want2 = fit_lut(src, joined2, nodata=0, bins=bins).reference_hist
    np.testing.assert_array_equal(pooled.counts, want2.counts)


def _ranges(x: np.ndarray) -> list[tuple[float, float]]:
    valid = np.where(x == 0, np.nan, x)
    return [(float(np.nanmin(r)), float(np.nanmax(r))) for r in valid]


def test_pool_cdf_weighs_every_scene_equally(rng):
    src = rng.integers(1, 200, (1, 40, 40)).astype(np.uint8)
    dark = rng.integers(1, 50, (1, 40, 40)).astype(np.uint8)
    bright = rng.integers(150, 250, (1, 40, 40)).astype(np.uint8)
    cloudy = bright.copy()
    cloudy[:, :30] = 0  # three quarters nodata: a quarter of the valid pixels of `dark`
    by_counts = match_histograms(src, [dark, cloudy], nodata=0, pool="counts")
    by_cdf = match_histograms(src, [dark, cloudy], nodata=0, pool="cdf")
    assert not np.array_equal(by_counts, by_cdf)
    # counts: 4 of 5 valid pixels come from the dark scene; cdf: half
    assert np.mean(by_counts > 100) == pytest.approx(0.2, abs=0.03)
    assert np.mean(by_cdf > 100) == pytest.approx(0.5, abs=0.03)
    # equal nodata fractions: the two poolings agree
    np.testing.assert_array_equal(
        match_histograms(src, [dark, bright], pool="counts"),
        match_histograms(src, [dark, bright], pool="cdf"),
    )


@pytest.mark.parametrize("dtype", ["uint16", "float64"])
def test_a_histogram_reference_equals_the_array_it_came_from(base, rng, dtype):
    src = stack_of(base, increasing_maps(rng, 2)).astype(dtype)
    ref = (base * 3 + 1).where(base != 0, 0).astype(dtype)
    bins = 4096 if dtype == "float64" else None
    want = match_histograms(src, ref, nodata=0, bins=bins)
    concrete = band_histograms(ref, nodata=0, bins=bins)
    lazy = band_histograms(ref.chunk({"y": 30}), nodata=0, bins=bins)
    assert lazy.is_lazy
    for hist in (concrete, lazy):
        xr.testing.assert_identical(match_histograms(src, hist, nodata=0, bins=bins), want)
    with pytest.raises(OptionError, match="Histogram reference"):
        match_histograms(src, concrete, reference_nodata=0)


def test_reference_dims_shared_with_the_source_align_by_label(base, rng):
    maps = increasing_maps(rng, 3)
    src = stack_of(base, maps)
    ref = stack_of(base // 2 + 1, maps[::-1]).assign_coords(time=DATES[:3][::-1])
    out = match_histograms(src, ref, nodata=0)
    for t in DATES[:3]:
        want = match_histograms(src.sel(time=t), ref.sel(time=t), nodata=0)
        xr.testing.assert_equal(out.sel(time=t), want)
    with pytest.raises(BandMismatchError, match="time 2020-04-01"):
        match_histograms(stack_of(base, increasing_maps(rng, 4)), ref, nodata=0)


def test_the_statistics_pass_reads_every_date_and_the_reference_once(base, rng):
    reads = BlockReads()
    stack = da.from_array(stack_of(base, increasing_maps(rng, 4)).values, chunks=(1, 1, 48, 60))
    src = reads.count(stack)
    ref_arrays = [
        da.from_array(base.values.astype(np.uint16) * k, chunks=(1, 48, 60)) for k in (1, 2)
    ]
    refs = [reads.count(r) for r in ref_arrays]
    with raise_if_dask_computes(max_computes=1):
        out = match_histograms(src, refs, nodata=0)
    expected = stack.npartitions + sum(r.npartitions for r in ref_arrays)
    assert reads.n == expected
    assert isinstance(out, da.Array) and out.chunks == stack.chunks
    # the application is one lazy graph whose tasks all start from a data block (the LUT
    # rows are literal arguments of their rows' tasks, not root tasks run after the reads)
    graph, inputs = dict(out.__dask_graph__()), dict(src.__dask_graph__())
    assert all(dask.core.get_dependencies(graph, k) for k in graph if k not in inputs)
    # many sources on different grids, one reference: still one pass
    reads.n = 0
    sources = [as_band_array(src[t], nodata=0, name=f"date {t}") for t in range(4)]
    sources[1] = as_band_array(src[1, :, :40], nodata=0, name="date 1")
    with raise_if_dask_computes(max_computes=1):
        luts = fit_many(sources, as_reference(refs[0]), MatchOptions())
    assert reads.n == stack.npartitions - 6 + ref_arrays[0].npartitions
    assert [lut.bands for lut in luts] == [(1, 2, 3)] * 4
    applied = [apply_arrays(s, lut) for s, lut in zip(sources, luts, strict=True)]
    assert [a.shape for a in applied] == [(3, 96, 120), (3, 40, 120), (3, 96, 120), (3, 96, 120)]
    assert all(isinstance(a, da.Array) for a in applied)


@settings(max_examples=6, deadline=None)
@given(st.data())
def test_stack_results_do_not_depend_on_chunking(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    shape = (data.draw(st.integers(1, 3)), 2, data.draw(st.integers(2, 12)), 7)
    src = rng.integers(0, 30, shape).astype(np.uint8)
    ref = rng.integers(1, 250, (2, 7, 9)).astype(np.uint8)
    want = match_histograms(src, ref, nodata=0)
    dsrc = da.from_array(src, chunks=data.draw(chunkings(shape)))
    dref = da.from_array(ref, chunks=data.draw(chunkings(ref.shape)))
    np.testing.assert_array_equal(match_histograms(dsrc, [dref, dref], nodata=0).compute(), want)
    fsrc = src.astype(np.float32)
    np.testing.assert_array_equal(
        match_histograms(da.from_array(fsrc, chunks=dsrc.chunks), ref, bins=64).compute(),
        match_histograms(fsrc, ref, bins=64),
    )


def test_equalize_a_stack_row_by_row(base, rng):
    stack = stack_of(base, increasing_maps(rng, 2))
    out = equalize(stack, nodata=0, range=(1, 255), dtype="uint8")
    for t in range(2):
        xr.testing.assert_equal(
            out.isel(time=t), equalize(stack.isel(time=t), nodata=0, range=(1, 255), dtype="uint8")
        )


def test_pooled_references_must_have_the_same_rows(base):
    with pytest.raises(BandMismatchError, match="pooled references need the same"):
        match_histograms(base, [base, base.isel(band=[0, 1])])
    with pytest.raises(OptionError, match="one mask"):
        match_histograms(base, [base, base], reference_mask=[None])
    with pytest.raises(OptionError, match="pool must be one of"):
        match_histograms(base, [base, base], pool="mean")


def test_dask_stack_statistics_computed_once_result_lazy(base, rng):
    stack = stack_of(base, increasing_maps(rng, 2)).chunk({"time": 1, "y": 48})
    with raise_if_dask_computes(max_computes=1):
        out = stack.rm.match(base.chunk({"y": 48}), nodata=0)
    assert isinstance(out.data, da.Array)
    with dask.config.set(scheduler="sync"):
        assert (out.values == np.stack([base.values] * 2)).all()
    assert rastermatch.MatchOptions is MatchOptions
