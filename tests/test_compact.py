"""Compact per-block counts of the dask histogram path, and :func:`occupied_range`."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import raise_if_dask_computes
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import chunkings

from rastermatch import band_histograms
from rastermatch._data import as_band_array, as_band_mask
from rastermatch.errors import InputTypeError, OptionError
from rastermatch.histogram import (
    Binning,
    _block_groups,
    _count_piece_bits,
    _count_runs,
    _merge_compact,
    _unsigned,
    binned_histogram,
    block_counts,
    compact_block_counts,
    compact_counts,
    occupied_range,
)

INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16]


def range_oracle(x: np.ndarray, mask=None, nodata=None):
    valid = np.ones(x.shape, dtype=bool)
    if mask is not None:
        valid &= ~np.broadcast_to(mask, x.shape)
    if nodata is not None:
        valid &= x != nodata
    return (int(x[valid].min()), int(x[valid].max())) if valid.any() else None


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_occupied_range_is_the_valid_min_and_max(data):
    dtype = np.dtype(data.draw(st.sampled_from(INT_DTYPES)))
    info = np.iinfo(dtype)
    shape = data.draw(st.sampled_from([(5,), (3, 4), (2, 3, 5), (2, 1, 2, 3)]))
    lo = data.draw(st.integers(int(info.min), int(info.max)))
    hi = data.draw(st.integers(lo, min(lo + 40, int(info.max))))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    nodata = data.draw(st.one_of(st.none(), st.sampled_from([int(x.flat[0]), lo, hi])))
    mask = None
    if data.draw(st.booleans()):
        mshape = data.draw(st.sampled_from([x.shape, x.shape[-2:]]))
        mask = rng.random(mshape) < data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    assert occupied_range(x, mask, nodata=nodata) == range_oracle(x, mask, nodata)


def test_occupied_range_refuses_what_is_not_integer_data():
    with pytest.raises(InputTypeError, match="integer data"):
        occupied_range(np.zeros(3, np.float32))
    with pytest.raises(OptionError, match="mask has shape"):
        occupied_range(np.zeros((2, 3), np.uint8), np.zeros((3, 2), bool))
    assert occupied_range(np.zeros((0, 3), np.uint8)) is None


# -- compact per-block counts equal the dense counts -------------------------------------------


def dense_counts(x: np.ndarray, mask=None, *, nbins=None, offset=None, nodata=None) -> np.ndarray:
    """The existing one-table-per-block kernel over the whole array (the oracle)."""
    info = np.iinfo(x.dtype)
    offset = int(info.min) if offset is None else offset
    nbins = int(info.max) - int(info.min) + 1 if nbins is None else nbins
    block = x.reshape(-1, *x.shape[-2:])
    m = None if mask is None else np.asarray(mask).reshape(-1, *x.shape[-2:])
    out = block_counts(block, m, kind="levels", nbins=nbins, offset=offset, nodata=nodata)
    return out[:, 0, 0, :].astype(np.int64)


@st.composite
def scenes(draw):
    """A small integer scene ``(rows..., y, x)`` rich in ties, narrow level ranges per block
    (neighbouring blocks often disjoint), all-nodata and fully masked blocks, with a random
    chunking, nodata and mask."""
    dtype = np.dtype(draw(st.sampled_from(INT_DTYPES)))
    info = np.iinfo(dtype)
    lead = draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    ny, nx = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = draw(st.integers(int(info.min), int(info.max)))
    spread = draw(st.sampled_from([1, 3, 40, 300]))
    x = rng.integers(0, spread, size=(*lead, ny, nx)) + base
    # bands of rows at other levels: blocks with disjoint occupied ranges
    x[..., : ny // 2, :] += draw(st.sampled_from([0, 500, -700]))
    x = np.clip(x, info.min, info.max).astype(dtype)
    nodata = draw(st.one_of(st.none(), st.just(int(x.flat[0])), st.just(int(info.max))))
    if nodata is not None and draw(st.booleans()):
        x[..., : max(ny // 3, 1), :] = nodata  # whole blocks without a counted pixel
    mask = None
    if draw(st.booleans()):
        mask = rng.random((ny, nx) if draw(st.booleans()) else x.shape) < 0.4
        mask[..., -1:, :] = True
    # up to 3 chunks along each axis (of any sizes): few tasks, so that 30 examples stay quick
    chunks = tuple(
        draw(st.sampled_from([(n,), *[c for c in [draw(chunkings((n,)))[0]] if len(c) <= 3]]))
        for n in x.shape
    )
    return x, nodata, mask, chunks


@settings(max_examples=30, deadline=None)
@given(case=scenes())
def test_compact_counts_equal_the_dense_counts(case):
    x, nodata, mask, chunks = case
    arr = da.from_array(x, chunks=chunks)
    m = None if mask is None else da.from_array(mask, chunks=chunks[-mask.ndim :])
    lazy = band_histograms(arr, nodata=nodata, mask=m)
    assert lazy.is_lazy
    h = lazy.compute(scheduler="sync")
    assert h.counts.dtype == np.int64
    np.testing.assert_array_equal(h.counts, dense_counts(x, mask, nodata=nodata))
    numpy_path = band_histograms(x, nodata=nodata, mask=mask)
    assert h.dims == numpy_path.dims and h.bands == numpy_path.bands
    assert h.binning.same_as(numpy_path.binning)
    assert h.counts.tobytes() == numpy_path.counts.tobytes()


@settings(max_examples=20, deadline=None)
@given(case=scenes(), data=st.data())
def test_compact_counts_over_ranged_levels(case, data):
    x, nodata, mask, chunks = case
    info = np.iinfo(x.dtype)
    lo = data.draw(st.integers(int(info.min), int(info.max)))
    hi = data.draw(st.integers(lo, min(lo + 600, int(info.max))))
    if data.draw(st.booleans()):  # the occupied range, as the LUT builders ask for it
        rng = occupied_range(x, mask, nodata=nodata)
        lo, hi = rng if rng is not None else (lo, hi)
    src = as_band_array(da.from_array(x, chunks=chunks), nodata=nodata)
    m = None if mask is None else as_band_mask(da.from_array(mask), src)
    binning = Binning.levels(x.dtype, src.array.shape[0], lo, hi)
    h = binned_histogram(src, m, binning).compute(scheduler="sync")
    expected = dense_counts(x, mask, nbins=hi - lo + 1, offset=lo, nodata=nodata)
    np.testing.assert_array_equal(h.counts, expected)
    assert h.binning.same_as(binning)


def test_the_reduction_merges_disjoint_and_empty_blocks():
    # blocks of one band at levels far apart, and blocks with nothing counted
    x = np.zeros((2, 8, 12), np.uint16)
    x[0, :4, :4], x[0, :4, 4:8], x[0, 4:, :4] = 7, 60_000, 31_000
    x[1, 4:, 8:] = [65535, 1, 2, 3]
    x[1, :4, 8:] = 1
    arr = da.from_array(x, chunks=(1, 4, 4))
    for split_every in (2, 3, 16):
        with dask.config.set(scheduler="sync"):
            counts = compact_counts(
                arr, None, Binning.levels(x.dtype, 2), 0, f"t{split_every}",
                split_every=split_every,
            ).compute()  # fmt: skip
        np.testing.assert_array_equal(counts, dense_counts(x, nodata=0))
    # merging offset tables directly: spans apart, overlapping, empty
    parts = [(5, np.array([[1, 2]], np.int32)), (0, np.zeros((1, 0), np.int32)),
             (9, np.array([[4]], np.int32)), (6, np.array([[1, 1, 1]], np.int32))]  # fmt: skip
    start, merged = _merge_compact(parts)
    assert start == 5 and merged.dtype == np.int64
    assert merged.tolist() == [[1, 3, 1, 1, 4]]
    assert _merge_compact([(0, np.zeros((3, 0), np.int32))])[1].shape == (3, 0)
    assert _merge_compact(parts, 12).tolist() == [[0, 0, 0, 0, 0, 1, 3, 1, 1, 4, 0, 0]]


def test_a_block_hands_on_only_its_occupied_bins_and_leaves_the_scratch_clean():
    block = np.array([[[300, 302, 0], [302, 0, 0]]], np.uint16)
    start, counts = compact_block_counts(block, nbins=65536, nodata=0)
    assert (start, counts.tolist(), counts.dtype) == (300, [[1, 0, 2]], np.int32)
    start, counts = compact_block_counts(block, nbins=65536)  # nodata counted: from level 0
    assert (start, counts.shape) == (0, (1, 303)) and counts[0, [0, 300, 302]].tolist() == [3, 1, 2]
    # the next block on this thread starts from a clean table
    start, counts = compact_block_counts(np.full((1, 2, 2), 5, np.uint16), nbins=65536)
    assert (start, counts.tolist()) == (5, [[4]])
    assert compact_block_counts(block, nbins=65536, nodata=0, offset=0)[1].sum() == 3
    empty = compact_block_counts(np.zeros((2, 3, 3), np.uint8), nbins=256, nodata=0)
    assert empty[1].shape == (2, 0)
    # a block of many bands counts into a table of its own, the thread's stays clean
    many = compact_block_counts(np.full((70, 2, 2), 9, np.uint16), nbins=65536)
    assert many[0] == 9 and many[1].shape == (70, 1) and np.all(many[1] == 4)
    assert compact_block_counts(block, nbins=65536, nodata=0)[1].tolist() == [[1, 0, 2]]
    # a ranged binning: bins count from its offset, levels outside are skipped
    start, counts = compact_block_counts(block, nbins=3, offset=301, nodata=0)
    assert (start, counts.tolist()) == (1, [[2]])


def test_building_the_compact_graph_computes_nothing():
    x = da.from_array(np.arange(64, dtype=np.uint16).reshape(1, 8, 8), chunks=(1, 2, 2))
    with raise_if_dask_computes():
        h = band_histograms(x)
    assert h.is_lazy
    assert h.compute().counts[0, :64].tolist() == [1] * 64


# -- groups of blocks per counting task ----------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(case=scenes(), data=st.data())
def test_grouped_counts_equal_the_dense_counts_for_every_group_size(case, data):
    # group sizes from one pixel (a block a task) to the whole row chunk (one task): groups
    # that end inside a row of blocks, ragged last blocks, one block, many tiny blocks
    x, nodata, mask, chunks = case
    src = as_band_array(da.from_array(x, chunks=chunks), nodata=nodata)
    m = None if mask is None else as_band_mask(da.from_array(mask), src)
    arr = src.array
    budget = data.draw(st.sampled_from([1, 2, 7, 30, 100, 10**9]))
    binning = Binning.levels(x.dtype, arr.shape[0])
    with dask.config.set(scheduler="sync"):
        counts = compact_counts(
            arr, m, binning, src.nodata, f"g{budget}", split_every=2, group_pixels=budget
        ).compute()  # fmt: skip
    np.testing.assert_array_equal(counts, dense_counts(x, mask, nodata=nodata))


def test_groups_cross_rows_of_blocks_and_take_many_tiny_blocks():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 9, size=(2, 7, 11)).astype(np.uint8)
    x[0, :3] = 0  # a nodata run across block edges
    arr = da.from_array(x, chunks=(1, 2, 3))  # ragged: rows 2,2,2,1, columns 3,3,3,2
    groups = _block_groups(arr, 1, 14)
    assert [p for g in groups for p in g] == [(i, j) for i in range(4) for j in range(4)]
    assert any(len({i for i, _ in g}) > 1 for g in groups)  # a group spanning two block rows
    assert all(sum(arr.chunks[1][i] * arr.chunks[2][j] for i, j in g) >= 14 for g in groups[:-1])
    for budget in (1, 14, 77, 10**6):
        counts = compact_counts(
            arr, None, Binning.levels(x.dtype, 2), 0, f"t{budget}", group_pixels=budget
        )  # fmt: skip
        tasks = {
            k for k in dict(counts.__dask_graph__()) if k[0].startswith("rastermatch-counts-t")
        }
        assert len(tasks) == 2 * len(_block_groups(arr, 1, budget))
        np.testing.assert_array_equal(counts.compute(scheduler="sync"), dense_counts(x, nodata=0))
    # the default: 2**23 pixels a task, so a small array is one task per row chunk
    h = band_histograms(da.from_array(x, chunks=(1, 1, 1)), nodata=0)
    keys = [k for k in dict(h.__dask_graph__()) if k[0].startswith("rastermatch-counts-")]
    assert len([k for k in keys if "merge" not in k[0]]) == 2
    assert h.compute().counts.tobytes() == band_histograms(x, nodata=0).counts.tobytes()


def test_run_kernel_counts_runs_and_mixed_groups_exactly():
    # runs of 16 equal values, runs cut by one other value, a ragged tail, levels outside a
    # ranged binning, signed levels below the offset
    for dtype in INT_DTYPES:
        info = np.iinfo(dtype)
        row = np.concatenate([
            np.full(40, info.min), np.full(16, info.max), np.arange(17) % 3 + info.min,
            np.full(15, 1), [info.max, info.min, 0],
        ]).astype(dtype)  # fmt: skip
        x = np.stack([row, row[::-1]])[None].repeat(2, axis=0)  # (2, 2, n)
        for offset, nbins in ((int(info.min), int(info.max) - int(info.min) + 1), (0, 2), (1, 1)):
            out = np.zeros((2, nbins), np.int64)
            _count_runs(x, offset, out)
            expected = dense_counts(x, nbins=nbins, offset=offset)
            np.testing.assert_array_equal(out, expected)
    # non-contiguous and read-only blocks
    y = np.arange(200, dtype=np.uint16).reshape(1, 10, 20)[:, ::2, 1::3]
    y.flags.writeable = False
    start, counts = compact_block_counts(y, nbins=65536)
    assert counts.sum() == y.size and start == int(y.min())


LAYOUTS = [
    np.s_[:], np.s_[:, 3:20, 8:64], np.s_[1:2, :, 1:], np.s_[:, ::2, 16:],
    np.s_[::-1, ::-1, :], np.s_[:, :, ::2], np.s_[:, 5:, 3:70], np.s_[:, :, :3],
]  # fmt: skip


def test_bit_pattern_counts_read_every_layout_exactly():
    # C-contiguous, blocks of a larger array (lines on 8-byte boundaries or not), reversed and
    # strided views, read-only: each counted as np.bincount of its bit patterns
    rng = np.random.default_rng(12)
    for dtype in INT_DTYPES:
        info = np.iinfo(dtype)
        big = rng.integers(info.min, int(info.max) + 1, size=(3, 23, 77), dtype=dtype)
        big[:, :5] = info.min  # runs of equal words
        big.flags.writeable = False
        nbins = 1 << (8 * big.itemsize)
        for sl in LAYOUTS:
            piece = big[sl]
            out = np.zeros((1, nbins), np.int32)
            _count_piece_bits(piece, out)
            bits = _unsigned(np.ascontiguousarray(piece)).ravel()
            np.testing.assert_array_equal(out[0], np.bincount(bits, minlength=nbins))


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_whole_dtype_groups_of_views_equal_the_dense_counts(dtype):
    # a numpy-backed dask array hands its blocks on as views (lines of the larger array);
    # signed dtypes are counted by bit pattern and rotated into level order; nodata at
    # either end of the dtype
    info = np.iinfo(dtype)
    rng = np.random.default_rng(3)
    x = rng.integers(info.min, int(info.max) + 1, size=(2, 37, 61), dtype=dtype)
    x[:, :9] = info.min
    x[:, -3:] = info.max
    for nodata in (None, int(info.min), int(info.max), 0):
        for chunks in ((1, 16, 24), (2, 37, 61), (1, 5, 7)):
            arr = da.from_array(x, chunks=chunks)
            for group in (1, 400, 2**23):
                binning = Binning.levels(np.dtype(dtype), 2)
                got = compact_counts(arr, None, binning, nodata, f"t{group}", group_pixels=group)
                expected = dense_counts(x, nodata=nodata)
                np.testing.assert_array_equal(got.compute(scheduler="sync"), expected)


def test_zarr_read_grouped_counts_stay_bounded_and_equal(tmp_path):
    zarr = pytest.importorskip("zarr")
    x = np.random.default_rng(1).integers(0, 4096, size=(2, 96, 128)).astype(np.uint16)
    z = zarr.open_array(tmp_path / "a.zarr", mode="w", shape=x.shape, chunks=(1, 16, 16),
                        dtype=x.dtype)  # fmt: skip
    z[:] = x
    arr = da.from_zarr(str(tmp_path / "a.zarr"))
    counts = compact_counts(arr, None, Binning.levels(x.dtype, 2), 0, "z", group_pixels=1000)
    np.testing.assert_array_equal(counts.compute(scheduler="threads"), dense_counts(x, nodata=0))


@pytest.mark.parametrize("cluster", [False, True])
def test_a_graph_built_for_a_cluster_counts_each_block_on_its_own(monkeypatch, cluster):
    # on a cluster a group's blocks would travel to the worker counting them: there every
    # counting task takes the one block it can fuse with; locally blocks are grouped
    import rastermatch.histogram as histogram

    monkeypatch.setattr(histogram, "builds_for_cluster", lambda: cluster)
    x = np.random.default_rng(3).integers(0, 4096, (2, 64, 64), dtype=np.uint16)
    arr = da.from_array(x, chunks=(1, 16, 16)) + np.uint16(1)  # a task makes every block
    counts = compact_counts(arr, None, Binning.levels(x.dtype, 2), 0, f"cluster{cluster}")
    graph = dict(counts.__dask_graph__())
    inputs = [
        [d for d in dask.core.get_dependencies(graph, key) if d[0] == arr.name]
        for key in graph
        if key[0] == f"rastermatch-counts-cluster{cluster}"
    ]
    assert max(map(len, inputs)) == (1 if cluster else 16)
    assert len(inputs) == (32 if cluster else 2)
    want = np.stack([np.bincount(b.ravel(), minlength=65_536) for b in x + 1])
    want[:, 0] = 0
    np.testing.assert_array_equal(counts.compute(scheduler="sync"), want)
