"""The in-memory path (rastermatch.direct) gives the bytes of the dask path, and numpy input
builds no dask graph."""

from __future__ import annotations

import contextlib
import warnings
from unittest import mock

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import rastermatch
from rastermatch import direct
from rastermatch.errors import RastermatchError

DTYPES = ("uint8", "uint16", "int16", "float32")


@st.composite
def scenes(draw):
    """A source and a reference of one dtype, few distinct values (ties), maybe a nodata value
    that occurs, maybe a mask; shapes too small to need the threads unless told."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    rows = draw(st.integers(1, 3))
    shapes = [(rows, draw(st.integers(1, 7)), draw(st.integers(1, 7))) for _ in range(2)]
    if dtype.kind == "f":
        pool = st.sampled_from([0.0, -0.0, 0.25, 0.5, 1.0, 1.0 + 2**-20, 3.0, 100.0, -7.5, np.nan])
    else:
        info = np.iinfo(dtype)
        lo = draw(st.sampled_from([int(info.min), 0, 40]))
        pool = st.integers(lo, min(lo + draw(st.sampled_from([3, 60, 5000])), int(info.max)))
    src, ref = (
        np.array(draw(st.lists(pool, min_size=int(np.prod(s)), max_size=int(np.prod(s)))))
        .astype(dtype)
        .reshape(s)
        for s in shapes
    )
    nodata = None
    if draw(st.booleans()):
        nodata = src.flat[0].item()
        if isinstance(nodata, float) and np.isnan(nodata):
            nodata = None
    mask = draw(st.sampled_from([None, "one", "per-row"]))
    if mask is not None:
        layers = 1 if mask == "one" else rows
        flags = draw(st.lists(st.booleans(), min_size=layers * shapes[0][1] * shapes[0][2],
                              max_size=layers * shapes[0][1] * shapes[0][2]))  # fmt: skip
        mask = np.array(flags, bool).reshape(layers, *shapes[0][1:])
    return src, ref, nodata, mask


OPTIONS = st.sampled_from(
    [
        {},
        {"method": "ceil"},
        {"method": "interp"},
        {"method": "optimal", "objective": "ks"},
        {"levels": "all"},
        {"proportion": 0.5},
        {"bins": 7},
    ]
)


def _chunked(a: np.ndarray) -> da.Array:
    return da.from_array(a, chunks=(1, max(1, a.shape[1] // 2), max(1, a.shape[2] // 2)))


def _same(a, b, signed_zeros: bool = True) -> bool:
    """Byte for byte; ``signed_zeros=False``: -0.0 and 0.0 alike (a bin's smallest value is
    the zero it saw first, and dask's merge of blocks keeps either, so which one a histogram
    of data holding both records depends on the chunking, on the dask path too)."""
    a, b = np.asarray(a), np.asarray(b)
    if not signed_zeros and a.dtype.kind == "f":
        a, b = a + 0.0, b + 0.0  # -0.0 + 0.0 is 0.0
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _both(fn, *args, **kwargs):
    """``fn`` on numpy inputs and on dask ones (computed): the results, or the error types."""
    out = []
    for kind in ("numpy", "dask"):
        conv = (lambda a: a) if kind == "numpy" else (lambda a: a if a is None else _chunked(a))
        try:
            r = fn(*(conv(a) for a in args), **kwargs)
        except RastermatchError as e:
            out.append(type(e))
            continue
        out.append(r.compute() if hasattr(r, "compute") and kind == "dask" else r)
    return out


def _mask_kw(mask, dask_too: bool):
    return mask if mask is None or not dask_too else _chunked(mask)


PATHS = pytest.mark.parametrize("path", ["small", "threads"])


def _path(path: str):
    """Both in-memory paths: one call on this thread, and pieces on the pool."""
    if path == "threads":
        return mock.patch.object(direct, "SMALL_PIXELS", 8)
    return contextlib.nullcontext()


@PATHS
@settings(max_examples=15, deadline=None)
@given(scene=scenes(), options=OPTIONS)
def test_match_and_lut_equal_the_dask_path(scene, options, path):
    src, ref, nodata, mask = scene
    results = []
    for lazy in (False, True):
        s, r = (_chunked(src), _chunked(ref)) if lazy else (src, ref)
        m = _mask_kw(mask, lazy)
        try:
            with _path(path), warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                lut = rastermatch.fit_lut(s, r, nodata=nodata, mask=m, **options)
                out = rastermatch.match_histograms(s, r, nodata=nodata, mask=m, **options)
        except RastermatchError as e:
            results.append(type(e))
            continue
        results.append((lut, np.asarray(out), [(w.category, str(w.message)) for w in seen]))
    a, b = results
    if isinstance(a, type) or isinstance(b, type):
        assert a == b
        return
    (lut_a, out_a, warned_a), (lut_b, out_b, warned_b) = a, b
    assert warned_a == warned_b
    zeros = not any(np.any(np.signbit(x[x == 0])) for x in (src, ref) if x.dtype.kind == "f")
    assert _same(lut_a.table, lut_b.table, zeros)
    assert lut_a.source_binning.same_as(lut_b.source_binning)
    assert _same(lut_a.source_hist.counts, lut_b.source_hist.counts)
    assert _same(lut_a.reference_hist.counts, lut_b.reference_hist.counts)
    assert repr(lut_a.nodata) == repr(lut_b.nodata)
    assert repr(lut_a.out_nodata) == repr(lut_b.out_nodata)
    assert _same(out_a, out_b, zeros)


@PATHS
@settings(max_examples=10, deadline=None)
@given(scene=scenes())
def test_equalize_and_band_histograms_equal_the_dask_path(scene, path):
    src, _, nodata, mask = scene
    with _path(path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a, b = _both(rastermatch.equalize, src, nodata=nodata)
        assert (a == b) if isinstance(a, type) else _same(a, b)
        m = None if mask is None else mask[0]
        try:
            direct_counts = rastermatch.band_histograms(src, mask=m, nodata=nodata).counts
        except RastermatchError as e:  # every pixel nodata or masked: the same error lazily
            direct_counts = type(e)
    try:
        lazy = rastermatch.band_histograms(
            _chunked(src), mask=None if m is None else _chunked(m[None])[0], nodata=nodata
        )
        lazy_counts = lazy.compute().counts
    except RastermatchError as e:
        lazy_counts = type(e)
    if isinstance(direct_counts, type) or isinstance(lazy_counts, type):
        assert direct_counts == lazy_counts
        return
    assert _same(direct_counts, lazy_counts)


@PATHS
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_stack_onto_pooled_references_equals_the_dask_path(dtype, path):
    rng = np.random.default_rng(3)

    def scene(shape, scale):
        v = rng.gamma(2.0, scale, shape)
        return (v * 100).astype(dtype) if dtype == "uint16" else v.astype(dtype)

    time = np.array(["2020-01-01", "2020-02-01"], dtype="datetime64[ns]")
    stack = xr.DataArray(
        scene((2, 2, 9, 8), 1.0), dims=("time", "band", "y", "x"), coords={"time": time}
    )
    refs = [xr.DataArray(scene((2, 6, 5), s), dims=("band", "y", "x")) for s in (1.5, 3.0)]
    for pool in ("counts", "cdf"):
        with _path(path):
            a = rastermatch.match_histograms(stack, refs, pool=pool)
        b = rastermatch.match_histograms(
            stack.chunk({"y": 4}), [r.chunk({"x": 2}) for r in refs], pool=pool
        ).compute()
        assert _same(a.values, b.values)
        assert a.dims == b.dims


def test_channel_last_uint8_equals_the_dask_path_and_comes_back_contiguous():
    rng = np.random.default_rng(1)
    src = rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)
    ref = rng.integers(10, 90, (20, 21, 3), dtype=np.uint8)
    a = rastermatch.match_histograms(src, ref, channel_axis=-1, nodata=0)
    b = rastermatch.match_histograms(
        da.from_array(src, chunks=(8, 8, 3)), da.from_array(ref, chunks=(8, 8, 3)),
        channel_axis=-1, nodata=0,
    ).compute()  # fmt: skip
    assert _same(a, b)
    assert a.flags.c_contiguous


def test_numpy_input_builds_no_dask_graph(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the in-memory path asked dask to compute")

    monkeypatch.setattr(dask, "compute", refuse)
    monkeypatch.setattr("dask.threaded.get", refuse)
    monkeypatch.setattr("rastermatch.match.as_dask", refuse)
    rng = np.random.default_rng(2)
    src = rng.integers(0, 4096, (3, 40, 30), dtype=np.uint16)
    ref = rng.integers(0, 4096, (3, 25, 25), dtype=np.uint16)
    out = rastermatch.match_histograms(src, ref, nodata=0)
    assert out.dtype == np.uint16 and out.shape == src.shape
    lut = rastermatch.fit_lut(src.astype(np.float32), ref.astype(np.float32))
    assert lut.table.shape[0] == 3
    assert rastermatch.equalize(src, range=(0, 4095)).shape == src.shape
    xsrc = xr.DataArray(src, dims=("band", "y", "x"))
    assert rastermatch.match_histograms(xsrc, ref).dims == ("band", "y", "x")


def test_large_numpy_input_runs_on_the_pool_without_dask(monkeypatch):
    """Above SMALL_PIXELS the pieces of source and reference are counted on the pool, still
    without a dask graph."""
    monkeypatch.setattr(direct, "SMALL_PIXELS", 100)
    monkeypatch.setattr("rastermatch.match.as_dask", None)
    rng = np.random.default_rng(4)
    src = rng.integers(0, 300, (2, 64, 50), dtype=np.uint16)
    ref = rng.integers(100, 900, (2, 50, 40), dtype=np.uint16)
    with dask.config.set(num_workers=2):
        a = rastermatch.match_histograms(src, ref)
    monkeypatch.undo()
    b = rastermatch.match_histograms(_chunked(src), _chunked(ref)).compute()
    assert _same(a, b)


# -- counting by bit pattern and mapping by whole-dtype tables ------------------------------------

INTS = ("uint8", "int8", "uint16", "int16")


def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    """``a`` as it may come in: contiguous, a view that is not (channel-last transposed back),
    a view starting one pixel in (8-byte words unaligned), or every other column of a wider
    array."""
    if layout == "transposed":
        return np.ascontiguousarray(np.moveaxis(a, 0, -1)).transpose(2, 0, 1)
    if layout == "offset":
        wider = np.empty((a.shape[0], a.shape[1], a.shape[2] + 1), a.dtype)
        wider[..., 1:] = a
        return wider[..., 1:]
    if layout == "strided":
        wider = np.zeros((*a.shape[:2], 2 * a.shape[2]), a.dtype)
        wider[..., ::2] = a
        return wider[..., ::2]
    return a


@st.composite
def int_scenes(draw):
    """Integer scenes large enough for the bit-pattern paths (uint8 rows of >= 4,096 pixels
    count that way on the calling thread too), values in a drawn range (negative levels for
    the signed dtypes), a nodata value in or out of the occupied range or at the dtype's ends,
    sometimes every pixel nodata, sometimes a single pixel."""
    dtype = np.dtype(draw(st.sampled_from(INTS)))
    info = np.iinfo(dtype)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = draw(st.integers(1, 3))
    if draw(st.integers(0, 9)) == 0:
        shape = (rows, 1, 1)
    else:
        shape = (rows, draw(st.integers(1, 80)), draw(st.integers(60, 90)))
    lo = draw(st.sampled_from([int(info.min), -3 if info.min < 0 else 0, 40]))
    hi = min(lo + draw(st.sampled_from([0, 5, 300, 70_000])), int(info.max))
    src = rng.integers(lo, hi, shape, endpoint=True).astype(dtype)
    ref = rng.integers(lo, hi, (rows, 30, 41), endpoint=True).astype(dtype)
    if draw(st.booleans()):  # runs of equal values, as borders and flat areas hold
        src[:, : shape[1] // 3] = src.flat[0]
    nodata = draw(
        st.sampled_from(
            [None, "first", "min", "max", "outside", "all"] if src.size > 1 else [None, "first"]
        )
    )
    if nodata == "first":
        nodata = src.flat[0].item()
    elif nodata in ("min", "max"):
        nodata = int(getattr(info, nodata))
    elif nodata == "outside":
        nodata = lo - 1 if lo > info.min else hi + 1 if hi < info.max else None
    elif nodata == "all":
        nodata = src.flat[0].item()
        src[:] = nodata
    mask = None
    if draw(st.booleans()):
        mask = rng.random((1, *shape[1:])) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    layout = draw(st.sampled_from(["contiguous", "transposed", "offset", "strided"]))
    return _layout(src, layout), ref, nodata, mask


@PATHS
@settings(max_examples=20, deadline=None)
@given(scene=int_scenes())
def test_bit_pattern_counts_and_whole_tables_equal_the_dask_path(scene, path):
    src, ref, nodata, mask = scene
    results = []
    for lazy in (False, True):
        s, r = (_chunked(np.ascontiguousarray(src)), _chunked(ref)) if lazy else (src, ref)
        m = _mask_kw(mask, lazy)
        try:
            with _path(path), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = rastermatch.match_histograms(s, r, nodata=nodata, mask=m)
                counts = rastermatch.band_histograms(s, nodata=nodata)
                counts = counts.compute().counts if lazy else counts.counts
        except RastermatchError as e:
            results.append(type(e))
            continue
        results.append((np.asarray(out), counts))
    a, b = results
    if isinstance(a, type) or isinstance(b, type):
        assert a == b
        return
    assert _same(a[0], b[0])
    assert _same(a[1], b[1])


@PATHS
@pytest.mark.parametrize("dtype", ["uint8", "int16"])
@pytest.mark.parametrize("nodata", [None, "inside", "max"])
@pytest.mark.parametrize("out_nodata", [None, 7])
def test_a_sub_range_table_maps_as_apply_block(dtype, nodata, out_nodata, path):
    """A LUT over a sub-range of the levels clamps values outside it to its ends; the whole
    tables fold the clamp in, and nodata inside and outside the sub-range."""
    from rastermatch import LUT
    from rastermatch.apply import apply_lut_array
    from rastermatch.histogram import Binning

    info = np.iinfo(dtype)
    lo, hi = (10, 200) if dtype == "uint8" else (-300, 900)
    rng = np.random.default_rng(5)
    table = rng.integers(info.min, info.max, (2, hi - lo + 1), endpoint=True).astype(dtype)
    lut = LUT(table, Binning.levels(np.dtype(dtype), 2, lo=lo, hi=hi), np.dtype(dtype))
    data = rng.integers(info.min, info.max, (2, 70, 65), endpoint=True).astype(dtype)
    nd = {None: None, "inside": lo + 3, "max": int(info.max)}[nodata]
    with _path(path):
        a = direct.apply_lut(data, lut, nodata=nd, out_nodata=out_nodata, index=np.array([1, 0]))
    b = apply_lut_array(_chunked(data), lut, nodata=nd, out_nodata=out_nodata,
                        index=np.array([1, 0])).compute()  # fmt: skip
    assert _same(a, b)


def test_whole_uint16_tables_on_the_calling_thread_equal_the_dask_path():
    """uint16 rows of >= 4 x 65,536 pixels are mapped through whole tables without the pool."""
    rng = np.random.default_rng(6)
    src = rng.integers(0, 4096, (2, 520, 512), dtype=np.uint16)
    src[:, :40] = 0
    ref = rng.integers(100, 3000, (2, 64, 64), dtype=np.uint16)
    for nodata in (None, 0, 4095):
        a = rastermatch.match_histograms(src, ref, nodata=nodata)
        b = rastermatch.match_histograms(_chunked(src), _chunked(ref), nodata=nodata).compute()
        assert _same(a, b)
