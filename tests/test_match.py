"""match_histograms and equalize: the brute-force rule, any chunking, any kind of input."""

from __future__ import annotations

import re

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import chunkings
from test_lut import algorithm1

import rastermatch
from rastermatch import (
    BandMismatchError,
    DimensionError,
    NoValidPixelsError,
    equalize,
    fit_lut,
    match_histograms,
)


def brute_force_match(src: np.ndarray, ref: np.ndarray, nodata=None) -> np.ndarray:
    """Pixel by pixel: every source level goes where Algorithm 1 over present levels sends it."""
    out = np.empty_like(src, dtype=ref.dtype)
    for b in range(src.shape[0]):
        valid = src[b] != nodata if nodata is not None else np.ones(src[b].shape, bool)
        s_levels, s_counts = np.unique(src[b][valid], return_counts=True)
        r_levels, r_counts = np.unique(ref[b], return_counts=True)
        q = algorithm1(s_counts, r_counts)
        lut = dict(zip(s_levels.tolist(), r_levels[q].tolist(), strict=True))
        out[b] = np.vectorize(lambda v, lut=lut: lut.get(v, nodata))(src[b])
    return out


def test_numpy_in_numpy_out_equals_brute_force(rng):
    src = rng.integers(0, 40, (2, 30, 20)).astype(np.uint16)
    src[:, :3] = 0
    ref = (rng.integers(1, 25, (2, 17, 11)) * 3).astype(np.uint16)
    got = match_histograms(src, ref, nodata=0)
    assert isinstance(got, np.ndarray) and got.dtype == np.uint16
    np.testing.assert_array_equal(got, brute_force_match(src, ref, nodata=0))


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_result_does_not_depend_on_chunking(data):
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    shape = (2, data.draw(st.integers(2, 30)), data.draw(st.integers(2, 30)))
    src = rng.integers(0, 20, shape).astype(np.uint8)
    ref = rng.integers(1, 300, (2, 7, 9)).astype(np.uint16)
    want = match_histograms(src, ref, nodata=0)
    dsrc = da.from_array(src, chunks=data.draw(chunkings(shape)))
    dref = da.from_array(ref, chunks=data.draw(chunkings(ref.shape)))
    got = match_histograms(dsrc, dref, nodata=0)
    np.testing.assert_array_equal(got.compute(), want)
    fsrc = src.astype(np.float32)
    np.testing.assert_array_equal(
        match_histograms(da.from_array(fsrc, chunks=dsrc.chunks), ref, method="interp").compute(),
        match_histograms(fsrc, ref, method="interp"),
    )


def test_dask_input_computes_statistics_once_and_returns_lazy(rng):
    src = da.from_array(rng.integers(0, 4096, (2, 64, 64)).astype(np.uint16), chunks=32)
    ref = da.from_array(rng.integers(0, 4096, (2, 32, 32)).astype(np.uint16), chunks=32)
    with raise_if_dask_computes(max_computes=1):  # one pass: both histograms together
        out = match_histograms(src, ref)
    assert isinstance(out, da.Array) and out.chunks == src.chunks


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "float32", "float64"])
@pytest.mark.parametrize("method", ["nearest", "interp"])
def test_dtype_matrix(dtype, method, rng):
    raw = rng.normal(300, 80, (2, 40, 30))
    if np.dtype(dtype).kind == "f":
        src = raw.astype(dtype)
        src[0, 0, :4] = np.nan
        nodata = None
    else:
        info = np.iinfo(dtype)
        src = raw.clip(max(info.min, 1), min(info.max, 10**6)).astype(dtype)
        src[:, 0, :4] = 0 if info.min == 0 else info.min
        nodata = int(src[0, 0, 0])
    ref = (rng.gamma(3, 60, (2, 25, 25)) + 1).clip(1, 250).astype(dtype)
    out = match_histograms(src, ref, method=method, nodata=nodata)
    assert out.dtype == np.dtype(dtype) and out.shape == src.shape
    invalid = np.isnan(src) if nodata is None else src == nodata
    valid = ~invalid
    if np.dtype(dtype).kind == "f":
        assert np.isnan(out[invalid]).all() and not np.isnan(out[valid]).any()
    else:
        assert np.all(out[invalid] == rastermatch.fit_lut(src, ref, nodata=nodata).out_nodata)
    # the mapping preserves order, and the result lies in the reference's range
    for b in range(2):
        order = np.argsort(src[b][valid[b]], kind="stable")
        assert np.all(np.diff(out[b][valid[b]][order].astype(np.float64)) >= 0)
        lo, hi = ref[b].min(), ref[b].max()
        width = (hi - lo) / 65536 if np.dtype(dtype).kind == "f" or dtype == "uint32" else 0
        assert lo - width <= out[b][valid[b]].min() and out[b][valid[b]].max() <= hi + width


def test_dataarray_keeps_coords_attrs_crs_and_band_labels(rng):
    src = (
        xr.DataArray(
            rng.integers(1, 255, (3, 20, 30)).astype(np.uint8),
            dims=("band", "y", "x"),
            coords={
                "band": ["red", "green", "blue"],
                "y": np.arange(20.0)[::-1],
                "x": np.arange(30.0),
            },
            attrs={"long_name": "scene", "STATISTICS_MEAN": 3.0},
        )
        .rio.write_crs("EPSG:32619")
        .rio.write_nodata(0)
    )
    ref = xr.DataArray(
        rng.integers(100, 4000, (3, 9, 9)).astype(np.uint16), dims=("band", "y", "x")
    )
    out = match_histograms(src.chunk({"y": 7}), ref)
    assert isinstance(out.data, da.Array)
    assert out.dtype == np.uint16 and list(out.band.values) == ["red", "green", "blue"]
    assert out.rio.crs == src.rio.crs and out.rio.transform() == src.rio.transform()
    assert out.attrs["long_name"] == "scene" and "STATISTICS_MEAN" not in out.attrs
    assert out.rio.nodata is not None
    xr.testing.assert_identical(out.compute(), match_histograms(src, ref))
    assert src.rm.match(ref).equals(out.compute())


def test_two_dims_in_two_dims_out(rng):
    src = rng.integers(0, 9, (10, 12)).astype(np.uint8)
    assert match_histograms(src, src[::-1]).shape == (10, 12)
    da2 = xr.DataArray(src, dims=("y", "x"))
    assert match_histograms(da2, src).dims == ("y", "x")


def test_mask_leaves_pixels_out_of_the_statistics_but_maps_them():
    src = np.array([[[1, 1, 2, 2, 9, 9]]], dtype=np.uint8)
    ref = np.array([[[10, 10, 20, 20, 30, 30]]], dtype=np.uint8)
    assert match_histograms(src, ref).tolist() == [[[10, 10, 20, 20, 30, 30]]]
    clouds = np.array([[False, False, False, False, True, True]])
    # without the 9s, F_src(1) = 1/2 ties between F_ref = 1/3 and 2/3 (to 10) and F_src(2) = 1;
    # the clouded 9s are still mapped
    assert match_histograms(src, ref, mask=clouds).tolist() == [[[10, 10, 30, 30, 30, 30]]]
    assert match_histograms(src, ref, reference_mask=clouds).tolist() == [
        [[10, 10, 10, 10, 20, 20]]
    ]


def test_errors_name_the_problem(rng):
    a = rng.integers(0, 9, (3, 5, 5)).astype(np.uint8)
    with pytest.raises(BandMismatchError, match="source has 3 bands and reference has 2"):
        match_histograms(a, a[:2])
    with pytest.raises(NoValidPixelsError, match="band 2 of the source has no valid pixels"):
        b = a.copy()
        b[1] = 0
        match_histograms(b, a, nodata=0)
    with pytest.raises(DimensionError):
        match_histograms(a[0, 0], a)
    with pytest.raises(BandMismatchError, match="'nir' of source is not among the band labels"):
        named = xr.DataArray(a, dims=("band", "y", "x"), coords={"band": ["red", "nir", "x"]})
        match_histograms(named, named.sel(band=["red", "x"]))


def test_equalize_flattens_the_histogram(rng):
    x = rng.normal(100, 10, (1, 200, 200)).clip(0, 255).astype(np.uint8)
    eq = equalize(x, range=(0, 255))
    counts = np.bincount(eq.ravel(), minlength=256)
    cdf = np.cumsum(counts) / counts.sum()
    # a uniform CDF up to the unavoidable steps of the input's own levels
    assert np.abs(cdf - (np.arange(256) + 1) / 256).max() < 0.05
    assert equalize(x).min() == x.min() and equalize(x).max() == x.max()
    xf = x.astype(np.float32)
    assert equalize(xf).dtype == np.float32


def test_fit_lut_records_nodata_and_applies_elsewhere(rng):
    src = rng.integers(0, 200, (2, 30, 30)).astype(np.uint8)
    ref = rng.integers(50, 100, (2, 30, 30)).astype(np.uint8)
    lut = fit_lut(src, ref, nodata=0)
    assert lut.nodata == 0 and lut.out_nodata == 0
    other = rng.integers(0, 200, (2, 11, 13)).astype(np.uint8)
    y = lut.apply(other)
    assert np.all((y == 0) == (other == 0))


def test_bands_named_alike_are_paired_by_label():
    import xarray as xr

    def scene(labels, values):
        data = np.array(values, dtype=np.uint8)[:, None, :]
        return xr.DataArray(data, dims=("band", "y", "x"), coords={"band": labels})

    src = scene(["red", "nir"], [[1, 2], [3, 4]])
    ref = scene(["nir", "red"], [[200, 201], [100, 101]])
    out = match_histograms(src, ref)
    assert out.band.values.tolist() == ["red", "nir"]
    assert out.values[:, 0, :].tolist() == [[100, 101], [200, 201]]
    # labels that differ (another sensor's names) pair by position
    other = scene(["B4", "B5"], [[200, 201], [100, 101]])
    assert match_histograms(src, other).values[:, 0, :].tolist() == [[200, 201], [100, 101]]


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.integers(0, 40), min_size=1, max_size=60),
    lo=st.integers(0, 20),
    width=st.integers(1, 60),
)
def test_equalize_is_algorithm1_onto_a_uniform_reference(values, lo, width):
    """Exact: every level becomes the nearest-CDF level of a uniform reference on lo..hi."""
    x = np.array([values], dtype=np.uint8)
    hi = lo + width
    uniform = np.zeros(256, dtype=np.int64)
    uniform[lo : hi + 1] = 1
    q = algorithm1(np.bincount(x.ravel(), minlength=256), uniform, range(lo, hi + 1))
    expected = np.asarray(q, dtype=np.uint8)[x]
    np.testing.assert_array_equal(equalize(x, range=(lo, hi)), expected)


def test_match_options_are_validated_before_any_work():
    from rastermatch import MatchOptions, OptionError

    assert MatchOptions().pool == "counts" and MatchOptions(dtype="uint8").dtype == np.uint8
    for bad in ({"method": "cubic"}, {"levels": 3}, {"bins": 0}, {"pool": "sum"}, {"bands": 3}):
        with pytest.raises(OptionError):
            MatchOptions(**bad)
    with pytest.raises(TypeError):
        MatchOptions("nearest")  # keyword-only
    with pytest.raises(OptionError, match="pool must be one of"):
        match_histograms(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8), pool="sum")


def test_channel_axis_reads_channel_last_arrays(rng):
    src = rng.integers(0, 40, (3, 12, 10)).astype(np.uint8)
    ref = rng.integers(0, 90, (3, 7, 9)).astype(np.uint8)
    want = match_histograms(src, ref)
    got = match_histograms(src.transpose(1, 2, 0), ref.transpose(1, 2, 0), channel_axis=-1)
    np.testing.assert_array_equal(got, want.transpose(1, 2, 0))


def test_accessor_one_base_for_dataarray_and_dataset(rng):
    from rastermatch.accessor import RastermatchAccessor

    arr = xr.DataArray(
        rng.integers(1, 200, (2, 8, 9)).astype(np.uint8),
        dims=("band", "y", "x"),
        coords={"band": ["red", "nir"]},
    )
    ds = arr.to_dataset("band")
    assert isinstance(arr.rm, RastermatchAccessor) and isinstance(ds.rm, RastermatchAccessor)
    assert type(arr.rm).__mro__[1] is type(ds.rm).__mro__[1] is RastermatchAccessor
    ref = arr[::-1] // 2 + 1
    xr.testing.assert_equal(ds.rm.match(ref).to_dataarray("band"), arr.rm.match(ref))
    assert ds.rm.histograms().bands == ("red", "nir")
    lut = ds.rm.fit(ref)
    xr.testing.assert_equal(ds.rm.apply(lut), ds.rm.match(ref))
    assert set(ds.rm.equalize().data_vars) == {"red", "nir"}


# -- the rules and the blend, at the level users call -------------------------------------------


@pytest.mark.parametrize(
    ("rule", "levels"),
    [
        ({"method": "ceil"}, "all"),
        ({"method": "optimal", "objective": "ks"}, "present"),
        ({"method": "optimal", "objective": "w1"}, "present"),
    ],
)
def test_rules_match_lazily_and_as_their_lut(rng, rule, levels):
    src = rng.integers(0, 40, (2, 30, 20)).astype(np.uint16)
    ref = rng.integers(5, 90, (2, 25, 25)).astype(np.uint8)
    want = LUT_of(src, ref, rule, levels, 0.4).apply(src)
    got = match_histograms(src, ref, levels=levels, proportion=0.4, **rule)
    np.testing.assert_array_equal(got, want)
    lazy = da.from_array(src, chunks=(1, 7, 9))
    with raise_if_dask_computes(1):  # the one statistics pass
        out = match_histograms(lazy, ref, levels=levels, proportion=0.4, **rule)
    da.utils.assert_eq(out, want)
    lut = fit_lut(src, ref, levels=levels, proportion=0.4, **rule)
    assert (lut.method, lut.objective, lut.proportion) == (
        rule["method"],
        rule.get("objective"),
        0.4,
    )


def LUT_of(src, ref, rule, levels, proportion):
    return rastermatch.LUT.from_histograms(
        rastermatch.band_histograms(src),
        rastermatch.band_histograms(ref),
        levels=levels,
        proportion=proportion,
        **rule,
    )


def test_proportion_0_and_1_through_match_and_equalize(rng):
    src = rng.integers(10, 60, (1, 20, 20)).astype(np.uint8)
    ref = rng.integers(100, 250, (1, 20, 20)).astype(np.uint8)
    np.testing.assert_array_equal(match_histograms(src, ref, proportion=0), src)
    np.testing.assert_array_equal(
        match_histograms(src, ref, proportion=1.0), match_histograms(src, ref)
    )
    np.testing.assert_array_equal(equalize(src, proportion=0), src)
    full = equalize(src, range=(0, 255))
    half = equalize(src, range=(0, 255), proportion=0.5)
    np.testing.assert_array_equal(half, np.rint(src + 0.5 * (full - src.astype(float))))
    # a list of references (fit_many) takes the options as well
    pooled = match_histograms(src, [ref, ref[:, :10]], method="ceil", proportion=0.25)
    one = match_histograms(src, np.concatenate([ref, ref[:, :10]], axis=1), method="ceil")
    np.testing.assert_array_equal(pooled, np.rint(src + 0.25 * (one - src.astype(float))))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"objective": "w1"}, "objective 'w1' is what method 'optimal' minimises"),
        ({"method": "interp", "objective": "ks"}, "leave the objective out for method 'interp'"),
        ({"proportion": 2}, "proportion is 2.0; pass a number from 0"),
        ({"proportion": float("nan")}, "proportion is nan"),
        ({"method": "optimal", "objective": "kl"}, "objective must be one of 'ks', 'w1'"),
    ],
)
def test_rule_options_are_refused_before_any_work(kw, match):
    lazy = da.zeros((1, 8, 8), dtype=np.uint8, chunks=4)
    with raise_if_dask_computes(0), pytest.raises(rastermatch.OptionError, match=re.escape(match)):
        match_histograms(lazy, lazy, **kw)
    with pytest.raises(rastermatch.OptionError, match=re.escape(match)):
        rastermatch.MatchOptions(**kw)
    with raise_if_dask_computes(0), pytest.raises(rastermatch.OptionError, match=re.escape(match)):
        equalize(lazy, **kw)


@pytest.mark.parametrize("lazy", [False, True])
def test_big_endian_input_matches_like_native(lazy):
    # readers of FITS or ENVI files hand out big-endian arrays: the same values, the same result
    rng = np.random.default_rng(5)
    src = rng.integers(0, 4096, (2, 30, 40)).astype(">u2")
    ref = rng.integers(100, 3000, (2, 30, 40)).astype(">i2")
    native = rastermatch.match_histograms(src.astype("=u2"), ref.astype("=i2"), nodata=0)
    data = da.from_array(src, chunks=(1, 16, 16)) if lazy else src
    out = np.asarray(rastermatch.match_histograms(data, ref, nodata=0))
    assert out.dtype == native.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, native)
