"""LUT application: lazy, chunk-preserving, the LUT in the graph once, nodata kept."""

from __future__ import annotations

import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import raise_if_dask_computes
from dask.array.utils import assert_eq

from rastermatch import (
    LUT,
    BandMismatchError,
    NodataConflictError,
    NodataReplacedWarning,
    UnsupportedDtypeError,
    band_histograms,
)
from rastermatch.apply import resolve_out_nodata


@pytest.fixture
def scene(rng):
    return rng.integers(1, 4096, (3, 300, 260)).astype(np.uint16)


@pytest.fixture
def lut(scene, rng):
    ref = (rng.normal(900, 150, (3, 80, 90))).clip(1, 4095).astype(np.uint16)
    return LUT.from_histograms(band_histograms(scene), band_histograms(ref))


def test_apply_is_a_table_lookup(scene, lut):
    want = np.stack([lut.table[b][scene[b]] for b in range(3)])
    np.testing.assert_array_equal(lut.apply(scene), want)


def test_dask_apply_is_lazy_and_keeps_chunks(scene, lut):
    x = da.from_array(scene, chunks=(1, 128, 100))
    with raise_if_dask_computes():
        y = lut.apply(x)
    assert y.chunks == x.chunks and y.dtype == lut.dtype
    assert y.name.startswith("rastermatch-apply-")
    assert y.name == lut.apply(x).name  # tokenized: the same input gives the same graph
    assert_eq(y, lut.apply(scene))


def test_lut_enters_the_graph_once(scene, lut):
    x = da.from_array(scene, chunks=(1, 30, 26))  # 300 blocks
    graph, inputs = dict(lut.apply(x).__dask_graph__()), dict(x.__dask_graph__())
    # each band chunk's rows are shared by its blocks' tasks, never copied into each: pickled
    # (as a graph is shipped) the table is there once
    assert len(pickle.dumps(graph)) - len(pickle.dumps(inputs)) < 2 * lut.table.nbytes
    assert x.npartitions == 300
    # and no task without a data block: a root task (a table key) would be started by dask's
    # local scheduler only after the reads, and a write would then hold every block
    assert all(dask.core.get_dependencies(graph, k) for k in graph if k not in inputs)


def test_nodata_in_nodata_out(scene, lut):
    scene = scene.copy()
    scene[:, :10] = 0
    y = lut.apply(scene, nodata=0, out_nodata=0)
    assert np.all(y[:, :10] == 0)
    assert np.all(y[:, 10:] > 0)  # the reference has no zeros: a valid pixel never becomes 0


def test_float_nan_in_nan_out(rng):
    src = rng.normal(0, 1, (1, 20, 20))
    src[0, 0, :5] = np.nan
    lut = LUT.from_histograms(band_histograms(src), band_histograms(rng.normal(5, 1, (1, 9, 9))))
    y = lut.apply(src)
    assert np.isnan(y[0, 0, :5]).all() and not np.isnan(y[0, 1:]).any()


def test_wrong_dtype_or_bands_are_refused(scene, lut):
    with pytest.raises(UnsupportedDtypeError, match="fitted on uint16 data"):
        lut.apply(scene.astype(np.uint8))
    with pytest.raises(BandMismatchError, match="2 bands and the LUT 3"):
        lut.apply(scene[:2])


def test_out_nodata_taken_by_valid_pixels_is_replaced():
    src = band_histograms(np.array([[0, 1, 2, 3]], dtype=np.uint8))
    ref = band_histograms(np.array([[0, 5, 9, 255]], dtype=np.uint8))
    lut = LUT.from_histograms(src, ref, levels="all")
    with pytest.warns(NodataReplacedWarning, match="using 254"):
        assert resolve_out_nodata(lut, 255, may_have_invalid=True) == 254
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_out_nodata(lut, 7, may_have_invalid=True) == 7
        assert resolve_out_nodata(lut, None, may_have_invalid=False) is None


def test_no_free_value_is_an_error():
    everything = np.arange(256, dtype=np.uint8)[None, None]
    lut = LUT.from_histograms(band_histograms(everything), band_histograms(everything))
    with pytest.raises(NodataConflictError, match="wider output dtype"):
        resolve_out_nodata(lut.with_nodata(None, None), 0, may_have_invalid=True)


def test_dataset_in_dataset_out(scene, lut):
    import xarray as xr

    arr = xr.DataArray(scene, dims=("band", "y", "x"), coords={"band": [1, 2, 3]})
    ds = arr.to_dataset("band").rename({1: "b1", 2: "b2", 3: "b3"})
    by_position = lut.apply(ds)  # a LUT of band numbers maps named variables in order
    np.testing.assert_array_equal(by_position["b2"].values, lut.apply(scene)[1])
    named = xr.DataArray(scene, dims=("band", "y", "x"), coords={"band": ["b1", "b2", "b3"]})
    lut = LUT.from_histograms(band_histograms(named), band_histograms(named[::-1]))
    out = lut.apply(ds)
    assert isinstance(out, xr.Dataset) and list(out.data_vars) == ["b1", "b2", "b3"]
    want = lut.apply(named)
    for v in ("b1", "b2", "b3"):
        np.testing.assert_array_equal(out[v].values, want.sel(band=v).values)


def test_a_stack_of_dates_takes_each_table_once_per_row_chunk(scene, lut):
    x = da.from_array(np.stack([scene, scene]), chunks=(1, 1, 100, 130))
    y = lut.apply(x)
    assert y.chunks == x.chunks
    graph, inputs = dict(y.__dask_graph__()), dict(x.__dask_graph__())
    # the taken table (6 rows: twice the LUT's) once, not once per block (6 blocks a row)
    assert len(pickle.dumps(graph)) - len(pickle.dumps(inputs)) < 3 * lut.table.nbytes
    assert all(dask.core.get_dependencies(graph, k) for k in graph if k not in inputs)
    assert_eq(y, np.stack([lut.apply(scene)] * 2))


def _task_sizes(graph, name):
    """Pickled size of every task of the layer ``name``: what a distributed scheduler sends
    for each task on its own."""
    return [len(pickle.dumps(v)) for k, v in graph.items() if k[0] == name]


@pytest.mark.parametrize("layout", [None, "y", "x"])
def test_for_a_cluster_the_tables_are_keys_each_task_names(rng, monkeypatch, layout):
    """Built while a distributed client is the default scheduler, every distinct table
    selection is one key of the graph (sent once, fetched once per worker) and a task holds
    only its name: the same bytes on any scheduler and chunking as the literal graph."""
    import rastermatch.apply as apply_module
    from rastermatch._detectors import Detectors
    from rastermatch._rows import Rows
    from rastermatch.histogram import Binning

    nbase, ndet = 3, 1 if layout is None else 4
    table = rng.integers(0, 60_000, (nbase * ndet, 2**16)).astype(np.uint16)  # 65,535 free
    if layout is None:
        lut = LUT(table, Binning.levels(np.uint16, nbase), np.uint16, nodata=7, out_nodata=65_535)
    else:
        rows = Rows(("band", "detector"), ((1, 2, 3), tuple(range(ndet))))
        binning = Binning.levels(np.uint16, nbase * ndet)
        layout_ = Detectors(count=ndet, axis=layout)
        lut = LUT(
            table, binning, np.uint16, rows=rows, detectors=layout_, nodata=7, out_nodata=65_535
        )
    data = rng.integers(0, 2**16, (nbase, 60, 50)).astype(np.uint16)
    data[:, :3] = 7
    want = lut.apply(data)
    x = da.from_array(data, chunks=(1, 16, 12))  # 3 x 4 x 5 blocks
    literal = lut.apply(x)
    assert not apply_module._builds_for_cluster()  # no client here
    monkeypatch.setattr(apply_module, "_builds_for_cluster", lambda: True)
    keyed = lut.apply(x)
    assert keyed.name != literal.name and keyed.chunks == x.chunks
    for scheduler in ("sync", "threads"):
        np.testing.assert_array_equal(keyed.compute(scheduler=scheduler), want)
    np.testing.assert_array_equal(keyed[1:, 20:41, 7:].compute(), want[1:, 20:41, 7:])  # culled
    graph = dict(keyed.__dask_graph__())
    tables = [k for k in graph if k[0].startswith("rastermatch-lut-")]
    # one key per distinct selection: a band's rows and the periodic detectors a chunk of
    # lines or columns covers (all four, but only detectors 0 and 1 in the last 2 columns)
    assert len(tables) == nbase * (2 if layout == "x" else 1)
    literal_graph = dict(literal.__dask_graph__())
    literal_tasks = _task_sizes(literal_graph, literal.name)
    keyed_tasks = _task_sizes(graph, keyed.name)
    assert min(literal_tasks) > table[0].nbytes  # each literal task carries its rows
    assert max(keyed_tasks) < 4096  # a keyed task names them
    # a pickled graph holds each selection once, as the literal graph does
    assert len(pickle.dumps(graph)) < len(pickle.dumps(literal_graph)) + 200 * x.npartitions


def test_the_keyed_graph_of_a_stack_maps_every_date(scene, lut, monkeypatch):
    import rastermatch.apply as apply_module

    monkeypatch.setattr(apply_module, "_builds_for_cluster", lambda: True)
    x = da.from_array(np.stack([scene, scene[:, ::-1]]), chunks=(1, 1, 100, 130))
    y = lut.apply(x)
    tables = [k for k in dict(y.__dask_graph__()) if k[0].startswith("rastermatch-lut-")]
    assert len(tables) == 3  # one per band, shared by both dates
    assert_eq(y, np.stack([lut.apply(scene), lut.apply(scene[:, ::-1])]))


def test_the_default_scheduler_decides_the_graph(scene, lut):
    from rastermatch.apply import _builds_for_cluster

    x = da.from_array(scene, chunks=(1, 100, 100))
    for scheduler in ("threads", "sync", "processes"):
        with dask.config.set(scheduler=scheduler):
            assert not _builds_for_cluster()
    assert lut.apply(x).name == lut.apply(x).name


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int8, np.int16])
@pytest.mark.parametrize("nodata", [None, 3])
def test_whole_dtype_tables_are_a_plain_gather(rng, dtype, nodata):
    """The kernel's branch-free gather (unsigned data, a whole-dtype table, no nodata) and its
    general loop give ``table[row, v - min]``, on numpy and on dask blocks."""
    from rastermatch.histogram import Binning

    info = np.iinfo(dtype)
    n = int(info.max) - int(info.min) + 1
    table = rng.integers(0, 2**16 - 1, (2, n)).astype(np.uint16)  # 65,535 is never an output
    lut = LUT(table, Binning.levels(dtype, 2), np.uint16, nodata=nodata, out_nodata=65_535)
    x = rng.integers(info.min, int(info.max) + 1, (2, 37, 41)).astype(dtype)
    want = np.stack([table[b][x[b].astype(np.int64) - int(info.min)] for b in range(2)])
    if nodata is not None:
        want[x == nodata] = 65_535
    np.testing.assert_array_equal(lut.apply(x), want)
    np.testing.assert_array_equal(lut.apply(da.from_array(x, chunks=(1, 16, 9))).compute(), want)


@pytest.mark.parametrize("nodata", [0, 3, 255])
def test_nodata_folded_into_a_copy_of_the_table(rng, nodata):
    """A block large next to its table takes the gather with the nodata level folded into a
    copy of the table: the LUT's own table is left as it was."""
    from rastermatch.apply import _fold_nodata
    from rastermatch.histogram import Binning

    table = rng.integers(0, 255, (1, 256)).astype(np.uint8)  # 255 is never an output
    kept = table.copy()
    lut = LUT(table, Binning.levels(np.uint8, 1), np.uint8, nodata=nodata, out_nodata=255)
    x = rng.integers(0, 256, (1, 256, 256)).astype(np.uint8)  # 64 KiB, the table 256 B
    want = table[0][x]
    want[x == nodata] = 255
    np.testing.assert_array_equal(lut.apply(x), want)
    y = lut.apply(da.from_array(x, chunks=(1, 128, 256))).compute(scheduler="sync")
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(lut.table, kept)
    # the blocks are large enough for the fold
    assert _fold_nodata(table[:, None], x[:, :128], np.dtype(np.uint8))
