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
