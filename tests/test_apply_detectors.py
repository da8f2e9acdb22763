"""Per-detector LUTs applied: the table of each pixel's (row, detector), for any chunking."""

from __future__ import annotations

import pickle

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import raise_if_dask_computes
from dask.array.utils import assert_eq
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import chunkings

from rastermatch import LUT, BandMismatchError, OptionError
from rastermatch._detectors import Detectors
from rastermatch._rows import Rows
from rastermatch.apply import (
    apply_lut,
    apply_lut_array,
    apply_lut_by_detector,
    detector_index,
)
from rastermatch.histogram import Binning


def level_lut(rng, nbase, ndet, dtype=np.uint8, *, detectors=None, labels=None, **kw):
    """A random levels LUT with rows (band, detector), its table drawn at random."""
    info = np.iinfo(dtype)
    n = int(info.max) - int(info.min) + 1
    table = rng.integers(info.min, int(info.max) + 1, (nbase * ndet, n)).astype(dtype)
    labels = tuple(range(ndet)) if labels is None else labels
    rows = Rows(("band", "detector"), (tuple(range(1, nbase + 1)), labels))
    layout = Detectors(count=ndet) if detectors is None else detectors
    binning = Binning.levels(dtype, nbase * ndet)
    return LUT(table, binning, dtype, rows=rows, detectors=layout, **kw)


def interval_lut(rng, nbase, ndet, nbins=7):
    """A random interval LUT (float source, float32 output) with rows (band, detector)."""
    r = nbase * ndet
    s = np.sort(rng.normal(0, 2, (r, nbins, 2)), axis=-1)
    o = np.sort(rng.normal(5, 3, (r, nbins, 2)), axis=-1)
    s[:, ::3, 1] = s[:, ::3, 0]  # some one-value bins
    table = np.concatenate([s, o], axis=-1)
    lo = rng.uniform(-3, -1, r)
    binning = Binning("uniform", np.float64, nbins, lo, lo + rng.uniform(2, 6, r))
    rows = Rows(("band", "detector"), (tuple(range(1, nbase + 1)), tuple(range(ndet))))
    return LUT(table, binning, np.float32, rows=rows, detectors=Detectors(count=ndet))


def oracle(lut, x, det, axis, rows):
    """``out[r, i, j] = table[rows[r] * ndet + det[i or j], v - offset]``, row by row through
    one-row plain LUTs (any kind of table)."""
    ndet = len(lut.rows.coord("detector"))
    b = lut.source_binning
    out = np.empty(x.shape, lut.dtype)
    for r in range(x.shape[0]):
        for d in np.unique(det):
            k = rows[r] * ndet + d
            one = Binning(b.kind, b.dtype, b.nbins, b.lo[k : k + 1], b.hi[k : k + 1])
            plain = LUT(lut.table[k : k + 1], one, lut.dtype)
            mapped = apply_lut_array(x[r : r + 1], plain, nodata=lut.nodata)[0]
            at = (det == d)[:, None] if axis == "y" else (det == d)[None, :]
            out[r] = np.where(at, mapped, out[r])
    return out


def test_levels_oracle_along_y_and_x(rng):
    lut = level_lut(rng, 2, 5)
    x = rng.integers(0, 256, (3, 13, 11)).astype(np.uint8)
    rows = np.array([1, 0, 1])
    for axis, n in (("y", 13), ("x", 11)):
        det = rng.integers(0, 5, n)
        d = det[:, None] if axis == "y" else det[None, :]
        want = lut.table[rows[:, None, None] * 5 + d, x]
        got = apply_lut_by_detector(x, lut, detector_index=det, axis=axis, row_index=rows)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(oracle(lut, x, det, axis, rows), want)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), axis=st.sampled_from("yx"), kind=st.sampled_from(["table", "interval"]))
def test_any_chunking_gives_the_numpy_result(data, axis, kind):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    shape = (3, 9, 8)
    if kind == "table":
        lut = level_lut(rng, 2, 4)
        x = rng.integers(0, 256, shape).astype(np.uint8)
    else:
        lut = interval_lut(rng, 2, 4)
        x = rng.normal(0, 2, shape)
        x[0, 0, :3] = np.nan
    n = shape[1] if axis == "y" else shape[2]
    det = rng.integers(0, 4, n)
    rows = np.array([0, 1, 1])
    want = oracle(lut, x, det, axis, rows)
    chunks = data.draw(chunkings(shape))
    with raise_if_dask_computes():
        lazy = apply_lut_by_detector(
            da.from_array(x, chunks=chunks), lut, detector_index=det, axis=axis, row_index=rows
        )
    assert lazy.chunks == chunks and lazy.dtype == lut.dtype
    eager = apply_lut_by_detector(x, lut, detector_index=det, axis=axis, row_index=rows)
    assert_eq(lazy, eager, equal_nan=True)
    np.testing.assert_array_equal(eager, want)


def test_nodata_becomes_out_nodata(rng):
    lut = level_lut(rng, 1, 3)
    x = rng.integers(1, 256, (1, 6, 9)).astype(np.uint8)
    x[0, 2, :4] = 0
    det = np.arange(9) % 3
    for arr in (x, da.from_array(x, chunks=(1, 4, 4))):
        out = np.asarray(
            apply_lut_by_detector(arr, lut, detector_index=det, axis="x", nodata=0, out_nodata=7)
        )
        assert np.all(out[0, 2, :4] == 7)
        valid = x != 0
        np.testing.assert_array_equal(out[valid], lut.table[det[None, None, :] + 0 * x, x][valid])


def test_lut_apply_maps_detectors_by_label(rng):
    """A LUT fitted on a scene whose line 0 is detector 0 maps a later scene starting at
    detector 5 when told so, each line with its own detector's table."""
    lut = level_lut(rng, 2, 16, dtype=np.uint16)
    x = rng.integers(0, 2**16, (2, 40, 7)).astype(np.uint16)
    same = lut.apply(x)
    det0 = np.arange(40) % 16
    np.testing.assert_array_equal(
        same, lut.table[np.arange(2)[:, None, None] * 16 + det0[:, None], x]
    )
    later = apply_lut(lut, x, detectors=Detectors.of(16, axis="y", offset=5))
    det5 = (np.arange(40) + 5) % 16
    np.testing.assert_array_equal(
        later, lut.table[np.arange(2)[:, None, None] * 16 + det5[:, None], x]
    )
    # a (band, y, x) DataArray, bands in another order: by label too, and lazily
    arr = xr.DataArray(x[::-1], dims=("band", "y", "x"), coords={"band": [2, 1]}).chunk({"y": 16})
    with raise_if_dask_computes():
        out = lut.apply(arr)
    assert out.dims == ("band", "y", "x") and out.chunks == arr.chunks
    np.testing.assert_array_equal(out.sel(band=1).values, same[0])


def test_a_detector_the_lut_lacks_is_refused_by_position(rng):
    lut = level_lut(rng, 1, 8, detectors=Detectors(axis="x"))  # one per column, 8 columns
    x = rng.integers(0, 256, (1, 3, 8)).astype(np.uint8)
    np.testing.assert_array_equal(lut.apply(x), lut.table[np.arange(8)[None, None], x])
    with pytest.raises(BandMismatchError, match="column 8 of data is detector 8, which the LUT"):
        lut.apply(rng.integers(0, 256, (1, 3, 9)).astype(np.uint8))
    mirror = Detectors.of(["a", "b", "b", "a"], axis="y")
    lut = level_lut(rng, 1, 2, detectors=mirror, labels=("a", "b"))
    x = rng.integers(0, 256, (1, 4, 3)).astype(np.uint8)
    np.testing.assert_array_equal(lut.apply(x), lut.table[np.array([0, 1, 1, 0])[:, None], x])
    with pytest.raises(BandMismatchError, match="line 1 of data is detector 'c'"):
        apply_lut(lut, x, detectors=Detectors.of(["a", "c", "b", "a"], axis="y"))
    assert detector_index(lut, mirror, 4, "data").tolist() == [0, 1, 1, 0]


def test_a_layout_that_does_not_fit_the_lut_is_refused(rng):
    """detectors= may move the phase (a later scene whose line 0 is another detector), not the
    axis or the number of detectors: those would map lines with the wrong tables, silently."""
    lut = level_lut(rng, 1, 3)  # 3 detectors along y
    x = rng.integers(0, 256, (1, 12, 10)).astype(np.uint8)
    for other, problem in (
        (Detectors(axis="x", count=3), "another axis"),
        (Detectors(count=2), "another number of detectors"),
        (Detectors(count=4), "another number of detectors"),
    ):
        with pytest.raises(BandMismatchError) as info:
            apply_lut(lut, x, detectors=other)
        msg = str(info.value)
        assert other.describe() in msg and "3 detectors along y" in msg and problem in msg
    shifted = apply_lut(lut, x, detectors=Detectors(count=3, offset=2))
    det = (np.arange(12) + 2) % 3
    np.testing.assert_array_equal(shifted, lut.table[det[None, :, None], x])
    relabelled = apply_lut(lut, x, detectors=Detectors.of([2, 0, 1] * 4, axis="y"))
    np.testing.assert_array_equal(relabelled, shifted)
    mirror = level_lut(rng, 1, 2, detectors=Detectors.of(["a", "b"] * 6), labels=("a", "b"))
    with pytest.raises(BandMismatchError, match="other detectors"):
        apply_lut(mirror, x, detectors=Detectors(count=2))


def test_layout_errors_name_the_lut_not_the_data(rng):
    """A LUT's own labelled layout of another length, or per-detector rows with no layout (a
    file that lost its 'detectors' field): the message says what the LUT lacks."""
    lut = level_lut(rng, 1, 3, detectors=Detectors.of([0, 1, 2] * 4), labels=(0, 1, 2))
    x = rng.integers(0, 256, (1, 6, 5)).astype(np.uint8)
    with pytest.raises(BandMismatchError, match="this LUT's layout has 12 detector labels, one "
                       "per line of the scene it was fitted on, and data has 6 lines"):  # fmt: skip
        lut.apply(x)
    bare = LUT(lut.table, lut.source_binning, lut.dtype, rows=lut.rows)
    with pytest.raises(BandMismatchError) as info:
        bare.apply(x)
    msg = str(info.value)
    assert "per-detector rows (3 detectors) but no detector layout" in msg
    assert "rastermatch destripe" in msg and "pool it" not in msg


def test_a_bad_per_detector_lut_file_says_how_it_is_made(rng, tmp_path):
    """A per-detector LUT file with a bad field is recreated by destripe, not by fit."""
    import json

    from rastermatch import LUTFileError
    from rastermatch.balance import fit_detectors

    path = tmp_path / "d.json"
    fit_detectors(rng.integers(0, 256, (1, 6, 5)).astype(np.uint8), detectors=3).save(path)
    doc = json.loads(path.read_text())
    doc["detectors"]["count"] = 0
    path.write_text(json.dumps(doc))
    for load in (lambda: LUT.load(path), lambda: LUT.from_dict(doc)):
        with pytest.raises(LUTFileError, match="detectors") as info:
            load()
        assert "rastermatch destripe ... --lut" in str(info.value)
        assert "rastermatch fit`" not in str(info.value)
    del doc["detectors"]
    doc["dtype"] = "complex"  # rows still end in 'detector'
    with pytest.raises(LUTFileError, match="rastermatch destripe"):
        LUT.from_dict(doc)


def test_bad_indices_are_refused(rng):
    lut = level_lut(rng, 2, 3)
    x = rng.integers(0, 256, (2, 4, 5)).astype(np.uint8)
    with pytest.raises(OptionError, match=r"detector_index \(one per line\) is 3 at position 1"):
        apply_lut_by_detector(x, lut, detector_index=np.array([0, 3, 0, 1]), axis="y")
    with pytest.raises(OptionError, match="must be 5 integers"):
        apply_lut_by_detector(x, lut, detector_index=np.zeros(4, int), axis="x")
    with pytest.raises(OptionError, match="row_index"):
        apply_lut_by_detector(x, lut, detector_index=np.zeros(4, int), axis="y", row_index=[0, 2])
    with pytest.raises(BandMismatchError, match="3 rows and the LUT 2"):
        apply_lut_by_detector(x[[0, 1, 1]], lut, detector_index=np.zeros(4, int), axis="y")
    with pytest.raises(BandMismatchError, match="apply_lut_by_detector"):
        apply_lut_array(x, lut)


def test_per_column_tables_enter_the_graph_about_once(rng):
    """Each task holds only its columns' tables: the pickled graph holds the table about once,
    not once per block (4 y chunks here)."""
    lut = level_lut(rng, 1, 32, dtype=np.uint16, detectors=Detectors(axis="x"))
    x = rng.integers(0, 2**16, (1, 32, 32)).astype(np.uint16)
    x = da.from_array(x, chunks=(1, 8, 8))
    y = lut.apply(x)
    graph, inputs = dict(y.__dask_graph__()), dict(x.__dask_graph__())
    assert len(pickle.dumps(graph)) - len(pickle.dumps(inputs)) < 1.2 * lut.table.nbytes
    assert all(dask.core.get_dependencies(graph, k) for k in graph if k not in inputs)
    assert_eq(y, lut.apply(x.compute()))
    # periodic detectors along y: every y chunk touches all 16, one shared table
    lut = level_lut(rng, 2, 16, dtype=np.uint16)
    x = da.from_array(rng.integers(0, 2**16, (2, 64, 20)).astype(np.uint16), chunks=(1, 8, 10))
    graph, inputs = dict(lut.apply(x).__dask_graph__()), dict(x.__dask_graph__())
    assert len(pickle.dumps(graph)) - len(pickle.dumps(inputs)) < 1.2 * lut.table.nbytes
    assert_eq(lut.apply(x), lut.apply(x.compute()))


def test_ranged_levels_tables_clamp(rng):
    """A table over levels 100..199 of uint8 maps values below 100 as 100 and above 199 as
    199, plain and per detector."""
    lut = level_lut(rng, 1, 2)
    ranged = Binning.levels(np.uint8, 2, lo=100, hi=199)
    lut = LUT(lut.table[:, 100:200], ranged, np.uint8, rows=lut.rows, detectors=lut.detectors)
    x = rng.integers(0, 256, (1, 6, 5)).astype(np.uint8)
    det = np.arange(6) % 2
    want = lut.table[det[:, None], np.clip(x, 100, 199).astype(int) - 100]
    np.testing.assert_array_equal(lut.apply(x), want)
    assert_eq(lut.apply(da.from_array(x, chunks=(1, 4, 2))), want)
    plain = LUT(lut.table[:1], Binning.levels(np.uint8, 1, lo=100, hi=199), np.uint8)
    np.testing.assert_array_equal(
        plain.apply(x), want * 0 + lut.table[0][np.clip(x, 100, 199) - 100]
    )
