"""LUT and histogram documents: round trips, format 1, one test per validation rule, fuzzing.

A LUT file is untrusted input: whatever a document holds, reading it raises LUTFileError (or
HistogramFileError) and nothing else, or gives a LUT whose table the builder made. The fuzz tests
run ``RASTERMATCH_FUZZ_EXAMPLES`` documents each (300 by default; the large run is 15,000).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rastermatch.schema as schema
from rastermatch import (
    LUT,
    Binning,
    Histogram,
    HistogramFileError,
    LUTFileError,
    OutputExistsError,
    RastermatchError,
    RasterWriteError,
    band_histograms,
    fit_lut,
    match_histograms,
)
from rastermatch._rows import Rows
from rastermatch.apply import apply_lut_array

FUZZ = settings(
    max_examples=int(os.environ.get("RASTERMATCH_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- documents to start from ------------------------------------------------------------------


def levels_lut(method: str = "nearest") -> LUT:
    src = np.array([[[0, 3, 3, 7, 7, 7, 9, 200]], [[1, 1, 2, 2, 2, 5, 5, 9]]], dtype=np.uint8)
    ref = np.array([[[5, 5, 6, 8, 8, 8, 8, 100]], [[0, 4, 4, 4, 6, 6, 7, 7]]], dtype=np.uint8)
    return LUT.from_histograms(
        band_histograms(src, nodata=0), band_histograms(ref, nodata=0), method=method
    )


def uniform_lut(method: str = "nearest", dtype: str = "float32") -> LUT:
    """Quantised floats with NaN, NaN nodata and string band labels."""
    rng = np.random.default_rng(7)
    values = np.round(rng.normal(0.3, 0.1, (2, 12, 12)), 3).astype(dtype)
    values[:, 0, :3] = np.nan
    src = xr.DataArray(values, dims=("band", "y", "x"), coords={"band": ["red", "nir"]})
    ref = src * 2 + 1
    return LUT.from_histograms(
        band_histograms(src, nodata=np.nan, bins=64),
        band_histograms(ref, nodata=np.nan, bins=32),
        method=method,
    )


DATES = np.array(["2020-01-01", "2020-02-01T10:30", "2021-12-31T23:59:59.5"], "datetime64[ms]")


def stack(unit: str = "s", dtype: str = "uint16") -> xr.DataArray:
    """A (time, band, y, x) stack with dates in ``unit`` and string band labels."""
    rng = np.random.default_rng(11)
    values = rng.integers(1, 500, (3, 2, 6, 7)).astype(dtype)
    coords = {"time": DATES.astype(f"datetime64[{unit}]"), "band": ["red", "nir"]}
    return xr.DataArray(values, dims=("time", "band", "y", "x"), coords=coords)


def stack_lut(method: str = "nearest", dtype: str = "uint16", unit: str = "s") -> LUT:
    """A (time, band) LUT fitted row by row on a stack (each date onto a brighter one)."""
    src = stack(unit, dtype)
    rows = Rows(("time", "band"), (tuple(src.time.values), ("red", "nir")))
    bins = {} if dtype == "uint16" else {"bins": 64}

    def hist(data):  # the rows' histograms, counted as 6 bands and labelled
        h = band_histograms(data.values.reshape(6, 6, 7), **bins)
        return h.take(range(6), rows=rows)

    return LUT.from_histograms(hist(src), hist(src * 3 + 2), method=method)


def single_lut(method: str = "nearest") -> LUT:
    """A LUT of a 2-D image: one unlabelled row."""
    src = np.array([[0, 3, 3, 7], [7, 7, 9, 200]], dtype=np.uint8)
    src_hist, ref_hist = (
        band_histograms(a).take([0], rows=Rows.single()) for a in (src, src // 2 + 5)
    )
    return LUT.from_histograms(src_hist, ref_hist, method=method)


LEVELS_DOC = levels_lut().to_dict()
UNIFORM_DOC = uniform_lut("interp").to_dict()
STACK_DOC = stack_lut().to_dict()
SINGLE_DOC = single_lut().to_dict()

# Written by rastermatch 0.1.0 (format 1): a uint8 LUT with its nodata, an int16 interp LUT and
# a float32 LUT (uniform binning).
FORMAT1_UINT8 = {
    "type": "rastermatch.LUT", "format": 1, "rastermatch_version": "0.1.0", "method": "nearest",
    "levels": "present", "kind": "table", "dtype": "uint8", "bands": [1], "nodata": 0,
    "out_nodata": 0,
    "source_binning": {"kind": "levels", "dtype": "uint8", "nbins": 256, "lo": [0.0],
                       "hi": [255.0]},
    "table": [{"start": [0, 7, 200], "value": [5, 8, 100]}],
    "source_histogram": {
        "type": "rastermatch.Histogram", "format": 1,
        "binning": {"kind": "levels", "dtype": "uint8", "nbins": 256, "lo": [0.0],
                    "hi": [255.0]},
        "bands": [1], "counts": [{"index": [3, 7, 9, 200], "count": [2, 3, 1, 1]}]},
    "reference_histogram": {
        "type": "rastermatch.Histogram", "format": 1,
        "binning": {"kind": "levels", "dtype": "uint8", "nbins": 256, "lo": [0.0],
                    "hi": [255.0]},
        "bands": [1], "counts": [{"index": [5, 6, 8, 100], "count": [2, 1, 4, 1]}]},
}  # fmt: skip
_INT16 = {"kind": "levels", "dtype": "int16", "nbins": 65536, "lo": [-32768.0, -32768.0],
          "hi": [32767.0, 32767.0]}  # fmt: skip
FORMAT1_INT16_INTERP = {
    "type": "rastermatch.LUT", "format": 1, "rastermatch_version": "0.1.0", "method": "interp",
    "levels": "present", "kind": "table", "dtype": "int16", "bands": [1, 2], "nodata": None,
    "out_nodata": None, "source_binning": _INT16,
    "table": [{"start": [0, 32770, 32771, 32772, 32773], "value": [-2, 1, 4, 7, 10]},
              {"start": [0, 32779, 32780, 32781, 32782], "value": [25, 28, 31, 34, 37]}],
    "source_histogram": {
        "type": "rastermatch.Histogram", "format": 1, "binning": _INT16, "bands": [1, 2],
        "counts": [{"index": [32769, 32770, 32771, 32772, 32773], "count": [1, 2, 1, 3, 1]},
                   {"index": [32778, 32779, 32780, 32781, 32782], "count": [2, 1, 3, 1, 1]}]},
    "reference_histogram": {
        "type": "rastermatch.Histogram", "format": 1, "binning": _INT16, "bands": [1, 2],
        "counts": [{"index": [32766, 32769, 32772, 32775, 32778], "count": [1, 2, 1, 3, 1]},
                   {"index": [32793, 32796, 32799, 32802, 32805], "count": [2, 1, 3, 1, 1]}]},
}  # fmt: skip
_F32 = {"kind": "uniform", "dtype": "float32", "nbins": 4, "lo": [0.25], "hi": [1.0]}
FORMAT1_FLOAT32 = {
    "type": "rastermatch.LUT", "format": 1, "rastermatch_version": "0.1.0", "method": "nearest",
    "levels": "present", "kind": "table", "dtype": "float32", "bands": [1], "nodata": None,
    "out_nodata": None, "source_binning": _F32,
    "table": [{"start": [0, 1, 2, 3], "value": [0.6875, 1.0625, 1.4375, 1.8125]}],
    "source_histogram": {
        "type": "rastermatch.Histogram", "format": 1, "binning": _F32, "bands": [1],
        "counts": [{"index": [0, 1, 2, 3], "count": [1, 1, 1, 1]}]},
    "reference_histogram": {
        "type": "rastermatch.Histogram", "format": 1,
        "binning": {"kind": "uniform", "dtype": "float32", "nbins": 4, "lo": [0.5], "hi": [2.0]},
        "bands": [1], "counts": [{"index": [0, 1, 2, 3], "count": [1, 1, 1, 1]}]},
}  # fmt: skip


def same_histogram(a: Histogram, b: Histogram) -> None:
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.binning.same_as(b.binning) and a.bands == b.bands
    for key in ("vmin", "vmax", "nmin"):
        x, y = getattr(a, key, None), getattr(b, key, None)
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert repr(getattr(a, "nodata", None)) == repr(getattr(b, "nodata", None))
    assert getattr(a, "masked", False) == getattr(b, "masked", False)


def same_lut(a: LUT, b: LUT) -> None:
    np.testing.assert_array_equal(a.table, b.table)
    assert (a.method, a.levels, a.dtype, a.bands, a.kind) == (
        b.method,
        b.levels,
        b.dtype,
        b.bands,
        b.kind,
    )
    assert repr((a.nodata, a.out_nodata)) == repr((b.nodata, b.out_nodata))
    if a.pairs is not None or b.pairs is not None:  # a LUT of several pairs: no source_hist
        assert len(a.pairs) == len(b.pairs)
        for (s, r, w), (s2, r2, w2) in zip(a.pairs, b.pairs, strict=True):
            same_histogram(s, s2)
            same_histogram(r, r2)
            assert w == w2
        return
    same_histogram(a.source_hist, b.source_hist)
    same_histogram(a.reference_hist, b.reference_hist)


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["nearest", "interp"])
@pytest.mark.parametrize("make", [levels_lut, uniform_lut], ids=["levels", "uniform"])
def test_lut_round_trips(tmp_path, make, method):
    lut = make(method)
    path = lut.save(tmp_path / "lut.json")
    back = LUT.load(path)
    same_lut(back, lut)
    same_lut(LUT.from_dict(json.loads(path.read_text())), lut)
    assert os.listdir(tmp_path) == ["lut.json"]  # no temporary left
    text = path.read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} written"))
    doc = json.loads(text)
    assert doc["format"] == 2 and "table" not in doc
    assert doc["recipe"] == {"method": method, "levels": "present"}


def test_uniform_round_trip_keeps_labels_nan_nodata_and_outputs():
    lut = uniform_lut()
    back = LUT.from_dict(json.loads(json.dumps(lut.to_dict())))
    assert back.bands == ("red", "nir")
    assert np.isnan(back.source_hist.nodata)
    assert lut.to_dict()["source_histogram"]["nodata"] == "nan"
    x = np.array([[[0.3, np.nan, 0.25]], [[0.1, 0.4, np.inf]]], dtype=np.float32)
    np.testing.assert_array_equal(back.apply(x), lut.apply(x))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32", "float64"])
def test_histogram_round_trips(dtype):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 200, (3, 10, 10)).astype(dtype)
    mask = np.zeros((10, 10), dtype=bool)
    mask[0] = True
    hist = band_histograms(data, nodata=0, mask=mask)
    for back in (Histogram.from_json(hist.to_json()), Histogram.from_dict(hist.to_dict())):
        same_histogram(back, hist)
    assert Histogram.from_json(hist.to_json().encode()).total.tolist() == hist.total.tolist()


def test_binning_round_trips():
    for binning in (Binning.levels(np.dtype("int16"), 2), Binning("uniform", "float64", 5, [0.0],
                                                                  [1.5])):  # fmt: skip
        back = Binning.from_dict(json.loads(json.dumps(binning.to_dict())))
        assert back.same_as(binning)
    # a levels binning may cover one range of the dtype's levels; lo, hi and nbins must agree
    ranged = {"kind": "levels", "dtype": "uint8", "nbins": 10, "lo": [0], "hi": [9]}
    assert Binning.from_dict(ranged).nbins == 10
    with pytest.raises(HistogramFileError, match=r"binning document: nbins is 10, but levels 0 to"):
        Binning.from_dict({**ranged, "hi": [20]})


def test_same_lut_gives_the_same_bytes(tmp_path):
    a = uniform_lut().save(tmp_path / "a.json")
    b = uniform_lut().save(tmp_path / "b.json")
    assert a.read_bytes() == b.read_bytes()


# -- format 1 ---------------------------------------------------------------------------------


def test_format1_luts_still_load(tmp_path):
    lut = LUT.from_dict(FORMAT1_UINT8)
    assert lut.table[0, :12].tolist() == [5, 5, 5, 5, 5, 5, 5, 8, 8, 8, 8, 8]
    assert lut.table[0, 200] == 100 and (lut.nodata, lut.out_nodata) == (0, 0)
    path = tmp_path / "old.json"
    path.write_text(json.dumps(FORMAT1_INT16_INTERP))
    lut = LUT.load(path)
    assert lut.method == "interp"
    assert lut.table[0, 32768:32775].tolist() == [-2, -2, 1, 4, 7, 10, 10]
    assert lut.table[1, 32778:32784].tolist() == [25, 28, 31, 34, 37, 37]


def test_format1_table_is_compared_with_its_histograms(tmp_path):
    doc = copy.deepcopy(FORMAT1_UINT8)
    doc["table"][0]["value"][1] = 9  # an edit the histograms do not support
    path = tmp_path / "tampered.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LUTFileError, match=r"tampered\.json: table does not match the histograms"):
        LUT.load(path)
    doc = copy.deepcopy(FORMAT1_UINT8)
    doc["source_histogram"] = None
    with pytest.raises(LUTFileError, match="source_histogram is null"):
        LUT.from_dict(doc)


def test_format1_float_luts_are_refused_clearly():
    # rastermatch 0.1 mapped floats onto bin centres; this version builds interval tables from
    # the same histograms, so the stored table cannot be checked and the file is refused
    with pytest.raises(LUTFileError, match=r"table was built by rastermatch 0.1.0's rule for "
                       r"uniform binning, .* cannot be checked; recreate it"):  # fmt: skip
        LUT.from_dict(FORMAT1_FLOAT32)
    # its histograms alone still load (their bins' values unknown: stats None)
    hist = Histogram.from_dict(FORMAT1_FLOAT32["source_histogram"])
    assert hist.vmin is None and hist.total.tolist() == [4]


def test_format1_histograms_still_load():
    doc = FORMAT1_INT16_INTERP["source_histogram"]
    hist = Histogram.from_dict(doc)
    assert hist.total.tolist() == [8, 8] and hist.counts[1, 32779] == 1


# -- rows: time stacks, 2-D images -----------------------------------------------------------


def same_rows(a, b) -> None:
    assert a.same_as(b), (a, b)
    for x, y in zip(a.coords, b.coords, strict=True):  # dates keep their unit
        assert [getattr(v, "dtype", type(v)) for v in x] == [
            getattr(v, "dtype", type(v)) for v in y
        ]


@pytest.mark.parametrize(
    "make",
    [
        lambda: stack_lut(),
        lambda: stack_lut("interp", unit="ns"),
        lambda: stack_lut("interp", "float32", unit="ms"),
        lambda: single_lut(),
        lambda: single_lut("interp"),
    ],
    ids=["stack", "stack-ns", "stack-float", "single", "single-interp"],
)
def test_rows_round_trip_and_reapply_identically(tmp_path, make):
    lut = make()
    path = lut.save(tmp_path / "lut.json")
    back = LUT.load(path)
    same_lut(back, lut)
    for a, b in ((back, lut), (back.source_hist, lut.source_hist)):
        same_rows(a.rows, b.rows)
    same_rows(back.reference_hist.rows, lut.reference_hist.rows)
    assert make().save(tmp_path / "again.json").read_bytes() == path.read_bytes()
    if lut.rows.dims:  # the stack's rows, flat as the engine holds them
        data = stack(dtype=lut.source_hist.binning.dtype.name).values.reshape(6, 6, 7)
        np.testing.assert_array_equal(apply_lut_array(data, back), apply_lut_array(data, lut))
    else:
        data = np.array([[0, 3, 9, 200, 7]], dtype=np.uint8)
        np.testing.assert_array_equal(back.apply(data), lut.apply(data))


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_a_fitted_stack_lut_saves_loads_and_reapplies_identically(tmp_path, dtype):
    # a (time, band) stack matched to one band reference: the LUT file gives the same stack
    src = stack("ns", dtype)
    ref = (src.isel(time=0, drop=True) * 2 + 1).astype(dtype)
    lut = fit_lut(src, ref)
    assert lut.rows.dims == ("time", "band")
    back = LUT.load(lut.save(tmp_path / "stack.json"))
    same_lut(back, lut)
    same_rows(back.rows, lut.rows)
    out = back.apply(src)
    assert out.dims == src.dims and np.array_equal(out.time.values, src.time.values)
    xr.testing.assert_identical(out, lut.apply(src))
    xr.testing.assert_identical(out, match_histograms(src, ref))
    # one date of the stack: the LUT's rows of that date apply to it
    one = src.isel(time=[1])
    np.testing.assert_array_equal(back.apply(one).values, out.isel(time=[1]).values)


@pytest.mark.parametrize("unit", ["Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps"])
def test_dates_keep_their_unit(unit):
    base = np.datetime64("1970-01-01T00:00:00.25" if unit == "ps" else "2020-01-31T10:30")
    dates = base.astype(f"datetime64[{unit}]") + np.arange(3) * np.timedelta64(1, unit)
    rows = Rows(("time",), (tuple(dates),))
    hist = Histogram(np.ones((3, 256), dtype=np.int64), Binning.levels(np.dtype("uint8"), 3),
                     rows=rows)  # fmt: skip
    doc = json.loads(hist.to_json())
    assert doc["rows"][0]["dtype"] == f"datetime64[{unit}]"
    back = Histogram.from_json(json.dumps(doc))
    same_rows(back.rows, rows)
    assert all(v.dtype == np.dtype(f"datetime64[{unit}]") for v in back.rows.coord("time"))


def test_band_documents_are_unchanged_and_documents_without_rows_read_as_bands():
    # today's format 2: "bands", no "rows"; read as one band dim and written back byte for byte
    text = (
        '{"type":"rastermatch.Histogram","format":2,"binning":{"kind":"levels","dtype":"uint8",'
        '"nbins":256,"lo":[0.0],"hi":[255.0]},"bands":["red"],"nodata":null,"masked":false,'
        '"counts":[{"index":[1,2],"count":[1,2]}]}'
    )
    hist = Histogram.from_json(text)
    assert hist.rows.dims == ("band",) and hist.bands == ("red",)
    assert hist.to_json() == text
    assert (
        "rows" not in LEVELS_DOC and "rows" not in LEVELS_DOC[S] and LEVELS_DOC["bands"] == [1, 2]
    )
    # format 1 documents are band documents too, and know no rows
    lut = LUT.from_dict(FORMAT1_UINT8)
    assert lut.rows.dims == ("band",) and lut.source_hist.rows.dims == ("band",)
    old = copy.deepcopy(FORMAT1_UINT8)
    old["rows"] = []
    with pytest.raises(LUTFileError, match=r"the document has an unknown field 'rows'"):
        LUT.from_dict(old)


def test_stack_documents_spell_dates_and_dims_plainly():
    assert STACK_DOC["rows"] == [
        {"dim": "time", "dtype": "datetime64[s]",
         "labels": ["2020-01-01", "2020-02-01T10:30", "2021-12-31T23:59:59"]},
        {"dim": "band", "labels": ["red", "nir"]},
    ]  # fmt: skip
    assert STACK_DOC[S]["rows"] == STACK_DOC[R]["rows"] == STACK_DOC["rows"]
    assert SINGLE_DOC["rows"] == SINGLE_DOC[S]["rows"] == [] and "bands" not in SINGLE_DOC
    # a band dim of dates is not the bands shorthand
    rows = Rows.bands(DATES)
    hist = Histogram(np.ones((3, 256), dtype=np.int64), Binning.levels(np.dtype("uint8"), 3),
                     rows=rows)  # fmt: skip
    assert "bands" not in hist.to_dict()
    same_rows(Histogram.from_dict(hist.to_dict()).rows, rows)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (Rows(("time",), ((np.datetime64("NaT", "ns"), np.datetime64("2020", "ns")),)),
         r"rows\[0\]\.labels\[0\] is the string 'NaT', expected an ISO date in datetime64\[ns\]"),
        (Rows(("time",), ((np.datetime64("2020-01-01"), 3),)),
         r"rows\[0\]\.labels\[1\] is 3, expected an ISO date"),
        (Rows(("band",), ((1, (2, 3)),)), r"bands\[1\] is a list of 2; a band label is"),
        (Rows(("band",), ((1, 1.0),)), r"bands\[1\] is 1.0, a label used twice"),
        (Rows(("lag",), ((np.timedelta64(1, "D"),),)),
         r"rows\[0\]\.labels\[0\] is a timedelta; a label"),
        (Rows(("band", ""), ((1,), ("a",))), r"rows\[1\]\.dim is the string '', expected a dim"),
        (Rows(("a\nb",), ((1,),)), r"rows\[0\]\.dim is the string 'a\\nb', expected a dim"),
        (Rows(("a", "b"), (tuple(range(200)), tuple(range(51)))),
         r"rows make more than 10,000 rows \(.* 200 x 51\)"),
    ],
)  # fmt: skip
def test_rows_a_reader_would_refuse_are_not_written(rows, message):
    hist = Histogram(np.ones((rows.size, 256), dtype=np.int64),
                     Binning.levels(np.dtype("uint8"), rows.size), rows=rows)  # fmt: skip
    with pytest.raises(HistogramFileError, match=rf"^cannot write the histogram: {message}") as e:
        hist.to_json()
    assert "\n" not in str(e.value) and "assign_coords(" in str(e.value)


def test_a_lut_whose_rows_are_not_its_source_histograms_is_not_written(tmp_path):
    lut = dataclasses.replace(stack_lut(), rows=Rows.bands(range(6)))
    with pytest.raises(LUTFileError, match=r"its rows Rows\(band: 6\) are not those of its source"):
        lut.save(tmp_path / "lut.json")
    assert os.listdir(tmp_path) == []


def test_histogram_documents_with_bad_rows_raise_histogram_file_errors():
    doc = copy.deepcopy(STACK_DOC[S])
    doc["rows"][1]["dim"] = "time"
    with pytest.raises(
        HistogramFileError,
        match=r"^histogram document: rows\[1\]\.dim is the string 'time', a dim named twice; "
        r"write it again with Histogram.to_json\(\)$",
    ):
        Histogram.from_dict(doc)


# -- the crafted file of the issue ------------------------------------------------------------


def test_crafted_lo_is_refused_at_load(tmp_path):
    src = np.arange(64, dtype=np.uint16).reshape(1, 8, 8)
    lut = LUT.from_histograms(band_histograms(src), band_histograms(src * 2))
    doc = lut.to_dict()
    for key in ("source_histogram", "reference_histogram"):
        doc[key]["binning"]["lo"][0] = -1e15
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LUTFileError) as info:
        LUT.load(path)
    assert str(info.value).startswith(
        f"LUT file {path}: source_histogram.binning.lo[0] is -1e15, but uint16 levels are "
        "integers from 0 to 65535"
    )
    assert str(info.value).endswith("; recreate it with `rastermatch fit`")
    # the same in a format-1 file, whose source_binning was separate
    old = copy.deepcopy(FORMAT1_UINT8)
    old["source_binning"]["lo"] = [-1e15]
    with pytest.raises(LUTFileError, match=r"source_binning\.lo\[0\] is -1e15"):
        LUT.from_dict(old)


# -- one test per rule ------------------------------------------------------------------------


def _set(doc, path, value):
    *parents, last = path
    for key in parents:
        doc = doc[key]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


_DELETE = object()
L, U, T, ONE = "levels", "uniform", "stack", "single"
S, R = "source_histogram", "reference_histogram"
SC = (S, "counts", 0)
RULES = [
    # (base, path, value, field and problem in the message)
    (L, ("type",), "rastermatch.Histogram", r"type is the string .* not a rastermatch LUT"),
    (L, ("format",), 3, r"format is 3; this version reads LUT formats 1 and 2"),
    (L, ("format",), True, r"format is true"),
    (L, ("format",), _DELETE, r"format is missing"),
    (L, ("recipe",), _DELETE, r"recipe is missing"),
    (L, ("extra",), 1, r"the document has an unknown field 'extra'"),
    (L, ("rastermatch_version",), 2, r"rastermatch_version is 2, expected a version string"),
    (L, ("recipe", "method"), "cubic", r"recipe.method is the string 'cubic', expected one of"),
    (L, ("recipe", "levels"), None, r"recipe.levels is null, expected one of"),
    (L, ("dtype",), "complex64", r"dtype is the string 'complex64', expected one of"),
    (L, ("dtype",), "bool", r"dtype is the string 'bool'"),
    (L, ("bands",), [1, 1], r"bands\[1\] is 1, a label used twice"),
    (L, ("bands",), [1], r"bands has 1 entries, but there are 2 bands"),
    (L, ("bands",), [1, True], r"bands\[1\] is true; a band label is"),
    (L, ("bands",), [1, [2]], r"bands\[1\] is a list of 1; a band label is"),
    (L, ("bands",), [1, 3], r"bands differ from source_histogram.bands"),
    (L, (S, "bands"), [], r"source_histogram.bands has 0 bands, expected 1..10,000"),
    (L, (S, "bands"), list(range(10_001)), r"has 10,001 bands, expected 1..10,000"),
    (L, (S, "bands"), ["a", 1.5], r"bands differ from source_histogram.bands"),
    (L, (S, "bands"), [1, float("nan")], r"bands\[1\] is nan; a band label"),
    (L, ("nodata",), -1, r"nodata is -1, outside uint8's 0..255"),
    (L, ("nodata",), 300, r"nodata is 300, outside uint8's 0..255"),
    (L, ("nodata",), 2.5, r"nodata is 2.5, which uint8 cannot hold"),
    (L, ("nodata",), "nan", r"nodata is nan, which uint8 cannot hold"),
    (L, ("nodata",), "NaN", r"nodata is the string 'NaN', expected a number"),
    (L, ("out_nodata",), 1e300, r"out_nodata is 1e300, outside uint8's"),
    (L, ("nodata",), 2**64, r"nodata is 18446744073709551616, outside"),
    (L, (S, "nodata"), -5, r"source_histogram.nodata is -5, outside uint8's"),
    (L, (S, "masked"), 0, r"source_histogram.masked is 0, expected true or false"),
    (L, (S, "type"), "x", r"source_histogram.type is the string 'x', not"),
    (L, (S, "format"), 1, r"source_histogram.format is 1, outside 2..2"),
    (L, (S, "binning", "kind"), "log", r"binning.kind is the string 'log', expected one of"),
    (L, (S, "binning", "dtype"), "float32", r"binning.dtype is float32, but levels binning"),
    (L, (S, "binning", "nbins"), 10**18, r"binning.nbins is 1000000000000000000, but uint8 has "),
    (L, (S, "binning", "nbins"), True, r"binning.nbins is true, expected an integer"),
    (L, (S, "binning", "nbins"), 256.0, r"binning.nbins is 256.0, expected an integer"),
    (L, (S, "binning", "lo"), [0.0], r"binning.lo has 1 entries, but there are 2 bands"),
    (L, (S, "binning", "lo"), [0, -1e15], r"binning.lo\[1\] is -1e15, but uint8 levels are"),
    (L, (S, "binning", "hi"), [255, 256], r"binning.hi\[1\] is 256.0, but uint8 levels are"),
    (L, (S, "binning", "hi"), [255, "inf"], r"binning.hi\[1\] is the string 'inf', expected a"),
    (L, (S, "binning", "hi"), [255, 1e400], r"binning.hi\[1\] is inf, expected a finite"),
    (L, (S, "binning", "hi"), [255, 10**400], r"is an integer of 401 digits, too large"),
    (L, (*SC, "index"), [3, 3, 7], r"counts\[0\].index\[1\] is 3, not above the index before"),
    (L, (*SC, "index"), [7, 3, 9], r"counts\[0\].index\[1\] is 3, not above"),
    (L, (*SC, "index"), [3, 7, 256], r"counts\[0\].index\[2\] is 256, outside 0..255"),
    (L, (*SC, "index"), [-1, 7, 9], r"counts\[0\].index\[0\] is -1, outside 0..255"),
    (L, (*SC, "index"), [3, 7], r"counts\[0\].count has 4 entries, but .*index has 2"),
    (L, (*SC, "count"), [2, -3, 1], r"counts\[0\].count\[1\] is -3, outside 1.."),
    (L, (*SC, "count"), [2, 0, 1], r"counts\[0\].count\[1\] is 0, outside 1.."),
    (L, (*SC, "count"), [2, 2**63, 1], r"count\[1\] is 9223372036854775808, outside"),
    (L, (*SC, "count"), [2**61, 2**61, 1, 1], r"counts\[0\].count adds up to 2\*\*62"),
    (L, (*SC, "count"), [2, True, 1], r"count\[1\] is true, expected an integer"),
    (L, (*SC, "count"), [2, 3.0, 1], r"count\[1\] is 3.0, expected an integer"),
    (L, (*SC, "vmin"), [1.0], r"counts\[0\] has an unknown field 'vmin'"),
    (L, (S, "counts"), [], r"source_histogram.counts has 0 entries, but there are 2 bands"),
    (L, (S, "counts", 1), [], r"source_histogram.counts\[1\] is a list of 0, expected an object"),
    (L, (*SC, "index"), _DELETE, r"source_histogram.counts\[0\].index is missing"),
    (
        L,
        (R, "counts", 1),
        {"index": [], "count": []},
        r"reference_histogram.counts\[1\].count "
        r"is empty: band 2 has no pixels",
    ),
    (L, (R, "bands"), [1], r"reference_histogram.bands|reference_histogram.binning"),
    (U, (S, "binning", "nbins"), 2**24 + 1, r"binning.nbins is 16777217, outside 1..16,777,216"),
    (U, (S, "binning", "nbins"), 0, r"binning.nbins is 0, outside 1.."),
    (U, (S, "binning", "lo"), [0.5, 1e9], r"source_histogram.binning.hi\[1\] is .*, below lo\[1\]"),
    (
        U,
        (S, "binning"),
        "huge range",
        r"binning.hi\[0\] is 1.7e308: the range from -1.7e308 is "
        r"wider than float64",
    ),
    (U, (*SC, "vmin"), "first>vmax", r"counts\[0\].vmax\[0\] is .*, below vmin"),
    (U, (*SC, "vmin"), "first-1", r"counts\[0\].vmin\[0\] is .*, below its bin"),
    (U, (*SC, "vmax"), "last+1", r"counts\[0\].vmax\[\d+\] is .*, above its bin"),
    (U, (*SC, "vmin"), "short", r"counts\[0\].vmin has \d+ entries, but .*index has"),
    (U, (*SC, "nmin"), "zero", r"counts\[0\].nmin\[0\] is 0, outside 1"),
    (U, (*SC, "nmin"), "count+1", r"counts\[0\].nmin\[0\] is \d+, but must be"),
    (U, (*SC, "nmin"), _DELETE, r"counts\[0\].nmin is missing"),
    (U, (S, "nodata"), 1e39, r"source_histogram.nodata is 1e39, beyond float32's largest"),
    (U, ("nodata",), "-inf", None),  # allowed: a float source can have -inf as nodata
    # rows: (time, band) and 2-D documents
    (T, ("rows",), {"dim": "time"}, r"rows is an object, expected a list of row dims"),
    (T, ("rows",), [{"dim": f"d{i}", "labels": [1]} for i in range(33)],
     r"rows has 33 dims, expected at most 32"),
    (T, ("rows",), _DELETE, r"rows is missing|bands is missing"),
    (T, ("bands",), ["red", "nir"], r"rows is given beside bands; a document has one or the"),
    (T, ("rows", 0), ["time"], r"rows\[0\] is a list of 1, expected an object"),
    (T, ("rows", 0, "dim"), _DELETE, r"rows\[0\]\.dim is missing"),
    (T, ("rows", 0, "dim"), 3, r"rows\[0\]\.dim is 3, expected a dim name"),
    (T, ("rows", 0, "dim"), "", r"rows\[0\]\.dim is the string '', expected a dim name"),
    (T, ("rows", 0, "dim"), "ti\nme", r"rows\[0\]\.dim is the string 'ti\\nme', expected a"),
    (T, ("rows", 0, "dim"), "x" * 1001, r"rows\[0\]\.dim is the string 'xxx.*, expected a dim"),
    (T, ("rows", 0, "dim"), "band", r"rows\[1\]\.dim is the string 'band', a dim named twice"),
    (T, ("rows", 0, "dim"), "date", r"rows differ from source_histogram\.rows"),
    (T, ("rows", 0, "extra"), 1, r"rows\[0\] has an unknown field 'extra'"),
    (T, ("rows", 0, "labels"), _DELETE, r"rows\[0\]\.labels is missing"),
    (T, ("rows", 0, "labels"), [], r"rows\[0\]\.labels has 0 labels, expected 1\.\.10,000"),
    (T, ("rows", 0, "labels"), "2020", r"rows\[0\]\.labels is the string '2020', expected a list"),
    (T, ("rows", 0, "labels"), ["2020-01-01", "2020-02-01T10:30"],
     r"rows make 4 rows, but the histograms have 6"),
    (T, ("rows", 0, "dtype"), "datetime64[xs]",
     r"rows\[0\]\.dtype is the string 'datetime64\[xs\]', expected one of"),
    (T, ("rows", 0, "dtype"), "datetime64",
     r"rows\[0\]\.dtype is the string 'datetime64', expected"),
    (T, ("rows", 0, "dtype"), "datetime64[D]", r"rows\[0\]\.labels\[1\] is the string "
     r"'2020-02-01T10:30', expected an ISO date in datetime64\[D\] \(such as '2020-01-31'\)"),
    (T, ("rows", 0, "dtype"), "datetime64[ns]", None),  # the same dates, in a finer unit
    (T, ("rows", 0, "dtype"), _DELETE, r"rows differ from source_histogram\.rows"),
    (T, ("rows", 1, "dtype"), "datetime64[s]",
     r"rows\[1\]\.labels\[0\] is the string 'red', expected"),
    (T, ("rows", 0, "labels", 1), "2020-13-01",
     r"rows\[0\]\.labels\[1\] is the string '2020-13-01', expected an ISO date in datetime64\[s\]"),
    (T, ("rows", 0, "labels", 1), "today",
     r"rows\[0\]\.labels\[1\] is the string 'today', expected"),
    (T, ("rows", 0, "labels", 1), "NaT", r"rows\[0\]\.labels\[1\] is the string 'NaT', expected"),
    (T, ("rows", 0, "labels", 1), "2020-02-01T10:30:00",
     r"labels\[1\] is the string '2020-02-01T10:30:00'"),
    (T, ("rows", 0, "labels", 1), " 2020-02-01T10:30", r"labels\[1\] is the string ' 2020-02-01"),
    (T, ("rows", 0, "labels", 1), 20200201, r"rows\[0\]\.labels\[1\] is 20200201, expected an ISO"),
    (T, ("rows", 0, "labels", 1), "9" * 80, r"labels\[1\] is the string '9999.*, expected an ISO"),
    (T, ("rows", 0, "labels", 1), "2020-01-01",
     r"rows\[0\]\.labels\[1\] is the string '2020-01-01', a label used twice"),
    (T, ("rows", 1, "labels", 1), "red",
     r"rows\[1\]\.labels\[1\] is the string 'red', a label used"),
    (T, ("rows", 1, "labels", 1), None, r"rows\[1\]\.labels\[1\] is null; a label is a string"),
    (T, ("rows", 1, "labels", 1), 1e400, r"rows\[1\]\.labels\[1\] is inf; a label is a string"),
    (T, ("rows", 1, "labels", 1), "NIR", r"rows differ from source_histogram\.rows"),
    (T, (S, "rows"), [], r"source_histogram\.binning\.lo has 6 entries, but there are 1 rows"),
    (T, (S, "rows", 1, "labels"), ["red"], r"source_histogram\.binning\.lo has 6 entries, but "
     r"there are 3 rows"),
    (T, (S, "rows"),
     [{"dim": "a", "labels": list(range(200))}, {"dim": "b", "labels": list(range(60))}],
     r"source_histogram\.rows make more than 10,000 rows \(the product of the dims' label counts, "
     r"200 x 60\)"),
    (T, (S, "counts"), "drop one", r"source_histogram\.counts has 5 entries, but there are 6 rows"),
    (T, (R, "rows", 1, "labels", 1), "swir", None),  # a reference's own labels: sizes agree
    (T, R, "ref of 2 bands", r"reference_histogram\.bands has 2 bands, but source_histogram\.rows "
     r"has 6"),
    (T, (R, "counts", 3), {"index": [], "count": []},
     r"reference_histogram\.counts\[3\]\.count is empty: time 2020-02-01T10:30, band 'nir' "
     r"has no pixels, and a LUT needs at least one per row"),
    (ONE, ("rows",), [{"dim": "band", "labels": [1]}], r"rows differ from source_histogram\.rows"),
    (ONE, ("rows",), _DELETE, r"bands is missing"),
    (ONE, (S, "counts", 0), {"index": [], "count": []}, r"source_histogram\.counts\[0\]\.count is "
     r"empty: the image has no pixels, and a LUT needs at least one per row"),
]  # fmt: skip
BASES = {L: LEVELS_DOC, U: UNIFORM_DOC, T: STACK_DOC, ONE: SINGLE_DOC}


def _apply_rule(doc, path, value):
    if isinstance(value, str) and path[-1] in ("vmin", "vmax", "nmin"):
        row = doc
        for key in path[:-1]:
            row = row[key]
        arr = row[path[-1]]
        if value == "first>vmax":
            arr[0] = row["vmax"][0] + 1e-3
            row["vmax"][0] = row["vmax"][0]  # unchanged: vmax now below vmin
        elif value == "first-1":
            arr[0] = -1e3
        elif value == "last+1":
            arr[-1] = 1e3
        elif value == "short":
            del arr[-1]
        elif value == "zero":
            arr[0] = 0
        elif value == "count+1":
            arr[0] = row["count"][0] + 1
        return
    if value == "drop one":
        del doc[S]["counts"][-1]
        return
    if value == "ref of 2 bands":
        doc[R] = copy.deepcopy(LEVELS_DOC[R])
        return
    if value == "huge range":
        doc[S]["binning"]["lo"][0] = -1.7e308
        doc[S]["binning"]["hi"][0] = 1.7e308
        return
    _set(doc, path, value)


@pytest.mark.parametrize(("base", "path", "value", "message"), RULES)
def test_each_rule_names_the_field(base, path, value, message):
    doc = copy.deepcopy(BASES[base])
    _apply_rule(doc, path, value)
    if message is None:
        LUT.from_dict(doc)
        return
    with pytest.raises(LUTFileError, match=rf"^LUT document: .*{message}") as info:
        LUT.from_dict(doc)
    assert str(info.value).endswith("; recreate it with `rastermatch fit`")
    assert "\n" not in str(info.value)


def test_histogram_rules_raise_histogram_file_errors():
    doc = copy.deepcopy(LEVELS_DOC[S])
    doc["binning"]["nbins"] = 10**18
    with pytest.raises(HistogramFileError, match=r"^histogram document: binning.nbins is 10"):
        Histogram.from_dict(doc)
    for bad, message in [
        ("[]", r"the document is a list of 0, expected an object"),
        ('"x"', r"the document is the string 'x', expected an object"),
        ("{", r"is not readable JSON"),
        ('{"a": NaN}', r"contains the bare constant NaN"),
        ('{"a": -Infinity}', r"contains the bare constant -Infinity"),
        ('{"a": 1, "a": 2}', r"has the key the string 'a' twice"),
        ("[" * 100_000 + "]" * 100_000, r"nested deeper than any rastermatch document"),
        ("1" * 5000, r"contains an integer too long to read \(Exceeds the limit \(4300"),
        (b"\xff\xfe{}", r"is not UTF-8 text"),
        ('{"type": "rastermatch.Histogram", "format": 2}', r"binning is missing"),
        ('{"type": "rastermatch.Histogram"}', r"format is missing"),
    ]:
        with pytest.raises(HistogramFileError, match=message):
            Histogram.from_json(bad)
    with pytest.raises(HistogramFileError, match="expected JSON text"):
        Histogram.from_json(3)


def test_json_level_rules_for_lut_files(tmp_path, monkeypatch):
    text = json.dumps(LEVELS_DOC)
    cases = {
        "nan.json": text.replace('"format": 2', '"format": NaN', 1),
        "array.json": "[1, 2]",
        "deep.json": "[" * 50_000 + "]" * 50_000,
        "cut.json": text[:100],
        "empty.json": "",
    }
    messages = {
        "nan.json": "contains the bare constant NaN",
        "array.json": "the document is a list of 2, expected an object",
        "deep.json": "is nested deeper",
        "cut.json": "is not readable JSON",
        "empty.json": "is not readable JSON",
    }
    for name, content in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(LUTFileError, match=rf"LUT file .*{name}.*{messages[name]}"):
            LUT.load(tmp_path / name)
    monkeypatch.setattr(schema, "MAX_DOCUMENT_BYTES", 200)
    (tmp_path / "big.json").write_text(text)
    with pytest.raises(LUTFileError, match=r"big\.json is [\d,]+ bytes, more than the 200"):
        LUT.load(tmp_path / "big.json")
    with pytest.raises(LUTFileError, match=r"is 201 bytes long, more than the 200"):
        LUT.load("/dev/zero")  # no size to stat: the read stops at the limit
    with pytest.raises(LUTFileError, match=r"nope\.json does not exist"):
        LUT.load(tmp_path / "nope.json")
    with pytest.raises(LUTFileError, match=r"is a directory"):
        LUT.load(tmp_path)


def test_nothing_is_allocated_for_absurd_sizes():
    doc = copy.deepcopy(LEVELS_DOC)
    doc[S]["binning"] = {"kind": "uniform", "dtype": "float64", "nbins": 2**24,
                         "lo": [0.0] * 2, "hi": [1.0] * 2}  # fmt: skip
    doc[S]["bands"] = [1, 2]
    # 2 x 2**24 bins pass; 10,000 bands of them would need terabytes and are refused first
    doc[S]["binning"]["lo"] = [0.0] * 10_000
    doc[S]["binning"]["hi"] = [1.0] * 10_000
    doc[S]["bands"] = list(range(10_000))
    with pytest.raises(LUTFileError, match=r"binning.nbins is 16,777,216: 10,000 band\(s\)"):
        LUT.from_dict(doc)
    # a kilobyte may not ask for gigabytes: 2 bands of 2**24 bins are refused too
    doc[S]["binning"]["lo"] = doc[S]["binning"]["hi"] = [0.0, 0.0]
    doc[S]["bands"] = [1, 2]
    limit = r"2 band\(s\) of 16,777,216 bins are more than the 4,194,304 a document may hold"
    with pytest.raises(LUTFileError, match=limit):
        LUT.from_dict(doc)


def test_save_refuses_what_load_would(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "MAX_CELLS", 256)  # the uint8 LUT's 2 bands x 256 levels: 512
    with pytest.raises(LUTFileError, match=r"the source histogram has 2 band\(s\) of 256 bins, "
                       r"more than the 256 a LUT file may hold"):  # fmt: skip
        levels_lut().save(tmp_path / "lut.json")
    assert os.listdir(tmp_path) == []


# -- saving -----------------------------------------------------------------------------------


def test_save_refuses_existing_files_unless_overwrite(tmp_path):
    path = tmp_path / "lut.json"
    path.write_text("keep")
    with pytest.raises(OutputExistsError, match=r"lut\.json exists already; allow replacing it"):
        levels_lut().save(path)
    assert path.read_text() == "keep"
    levels_lut().save(path, overwrite=True)
    assert LUT.load(path).nbands == 2
    with pytest.raises(RasterWriteError, match="is a directory"):
        levels_lut().save(tmp_path, overwrite=True)
    with pytest.raises(RasterWriteError, match=r"the directory .* does not exist"):
        levels_lut().save(tmp_path / "no" / "lut.json")
    assert sorted(os.listdir(tmp_path)) == ["lut.json"]


def test_save_never_writes_over_an_input(tmp_path, monkeypatch):
    mask = tmp_path / "mask.tif"
    mask.write_bytes(b"mask")
    (tmp_path / "link.tif").symlink_to(mask)
    os.link(mask, tmp_path / "hard.tif")
    store = tmp_path / "input.zarr"
    store.mkdir()
    monkeypatch.chdir(tmp_path)
    for target, inputs in [
        (mask, [mask]),
        ("mask.tif", [str(mask)]),
        (mask, ["link.tif"]),
        (tmp_path / "link.tif", [mask]),
        (tmp_path / "hard.tif", [mask]),
        (store / "lut.json", [None, store]),
    ]:
        with pytest.raises(RasterWriteError, match=r"refusing to write .* input"):
            levels_lut().save(target, overwrite=True, inputs=inputs)
    assert mask.read_bytes() == b"mask" and os.listdir(store) == []
    assert sorted(os.listdir(tmp_path)) == ["hard.tif", "input.zarr", "link.tif", "mask.tif"]


def test_long_names_and_their_temporaries(tmp_path):
    name = "x" * 245 + ".json"  # 250 bytes: the temporary's name must be shortened
    path = levels_lut().save(tmp_path / name)
    assert os.listdir(tmp_path) == [name] and LUT.load(path).nbands == 2
    with pytest.raises(RasterWriteError, match=r"name is 256 bytes long .* at most 255"):
        levels_lut().save(tmp_path / ("y" * 251 + ".json"))
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("fault", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_failed_or_interrupted_saves_leave_nothing(tmp_path, monkeypatch, fault):
    def fail(fd):
        raise fault

    monkeypatch.setattr(schema.os, "fsync", fail)
    path = tmp_path / "lut.json"
    if isinstance(fault, OSError):
        with pytest.raises(RasterWriteError, match=r"cannot write LUT file .*lut\.json: No space"):
            levels_lut().save(path)
    else:
        with pytest.raises(KeyboardInterrupt):
            levels_lut().save(path)
    assert os.listdir(tmp_path) == []


def test_save_under_a_file_size_limit_leaves_nothing(tmp_path):
    # a real write error: files may grow to 100 bytes (SIGXFSZ ignored, so writes fail EFBIG)
    resource = pytest.importorskip("resource")
    lut = levels_lut()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
    try:
        with pytest.raises(RasterWriteError, match=r"cannot write LUT file .*: File too large"):
            lut.save(tmp_path / "lut.json")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert os.listdir(tmp_path) == []


def test_a_killed_saves_temporary_is_removed_by_the_next_save(tmp_path):
    from rastermatch.io import _host_hash, _temp_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs
    final = tmp_path / "lut.json"
    stale = final.with_name(f"{_temp_prefix(final)}-{dead.pid}-{_host_hash()}-0badf00d.tmp")
    stale.write_text('{"type": "rastermatch.LUT"')  # cut short by SIGKILL
    levels_lut().save(final)
    assert os.listdir(tmp_path) == ["lut.json"]


def test_luts_without_histograms_cannot_be_saved(tmp_path):
    lut = levels_lut()
    object.__setattr__(lut, "source_hist", None)
    with pytest.raises(LUTFileError, match="this LUT has no histograms"):
        lut.save(tmp_path / "lut.json")
    assert os.listdir(tmp_path) == []


# -- fuzzing ----------------------------------------------------------------------------------

_DEEP = "__deep__"
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(
        [
            0,
            1,
            -1,
            2,
            255,
            256,
            65535,
            65536,
            2**24,
            2**31,
            2**62,
            2**63,
            -(2**63) - 1,
            10**18,
            10**30,
            10**400,
        ]
    ),
    st.integers(-(10**6), 10**6),
    st.sampled_from([0.5, -0.0, 1e-300, -1e15, 1e15, 1e308, -1e308, 3.4e38, 0.25]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "",
            "nan",
            "inf",
            "-inf",
            "uint8",
            "uint16",
            "float32",
            "levels",
            "uniform",
            "nearest",
            "interp",
            "all",
            "rastermatch.LUT",
            "rastermatch.Histogram",
            _DEEP,
            # rows: dims, date units and dates, good and bad
            "time",
            "band",
            "datetime64[s]",
            "datetime64[D]",
            "datetime64[ns]",
            "datetime64[ps]",
            "2020-01-01",
            "2020-02-01T10:30",
            "2021-12-31T23:59:59",
            "2300-01-01",
            "NaT",
            "today",
            "red",
        ]
    ),
    st.lists(st.integers(-3, 300), max_size=5),
    st.lists(st.sampled_from(["red", "nir", "2020-01-01", "2020-02-01T10:30", 1, 2.5]), max_size=3),
    st.lists(
        st.fixed_dictionaries(
            {
                "dim": st.sampled_from(["time", "band", "x1"]),
                "labels": st.builds(lambda: ["2020-01-01"]),
            },
            optional={"dtype": st.sampled_from(["datetime64[D]", "datetime64[s]"])},
        ),
        max_size=2,
    ),
    st.lists(st.floats(allow_nan=False), max_size=3),
    st.dictionaries(
        st.sampled_from(["index", "count", "type", "format"]), st.integers(), max_size=2
    ),
)


def _paths(doc, prefix=()):
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:4]):  # long lists: their first entries are enough
            yield from _paths(value, (*prefix, i))


@st.composite
def mutated(draw, bases):
    doc = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = draw(st.sampled_from(["replace", "replace", "delete", "grow", "shrink", "tweak"]))
        value = parent[key]
        if op == "delete":
            del parent[key]
        elif op == "grow" and isinstance(value, list):
            value.append(copy.deepcopy(value[-1]) if value else draw(JSON_VALUES))
        elif op == "shrink" and isinstance(value, list) and value:
            del value[draw(st.integers(0, len(value) - 1))]
        elif op == "tweak" and type(value) in (int, float):
            parent[key] = draw(st.sampled_from([value + 1, -value, value * 10**6, value - 1]))
        else:
            parent[key] = draw(JSON_VALUES)
    return doc


def _deepen(doc, depth):
    """Replace the "__deep__" markers by nesting ``depth`` levels deep (built iteratively)."""

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if value == _DEEP:
                deep: list = []
                for _ in range(depth):
                    deep = [deep]
                node[key] = deep
            elif isinstance(value, dict | list):
                walk(value)

    if isinstance(doc, dict | list):
        walk(doc)
    return doc


def _check_loaded(lut):
    """A LUT that was accepted: built by the builder, and safe to apply to any value (in the
    layout of its rows: a DataArray with its row dims and labels, or a 2-D array)."""
    assert lut.table.shape[0] == lut.nbands == len(lut.bands) == lut.rows.size
    source = lut.source_hist if lut.pairs is None else lut.pairs[0][0]
    assert lut.rows.same_as(source.rows)
    same_lut(LUT.from_dict(json.loads(json.dumps(lut.to_dict()))), lut)  # written as read
    dtype = source.binning.dtype
    if dtype.kind == "f":
        big = np.finfo(dtype).max
        x = np.array([-np.inf, -big, -1.0, 0.0, 0.5, big, np.inf, np.nan], dtype=dtype)
    else:
        info = np.iinfo(dtype)
        x = np.array([info.min, 0, info.max], dtype=dtype)
    data = np.broadcast_to(x, (*lut.rows.shape, 1, x.size)).copy()
    if lut.rows.dims not in ((), ("band",)):
        coords = {d: list(c) for d, c in zip(lut.rows.dims, lut.rows.coords, strict=True)}
        data = xr.DataArray(data, dims=(*lut.rows.dims, "y", "x"), coords=coords)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a nodata replaced for the output is fine here
        try:
            out = lut.apply(data)
        except RastermatchError:  # a refusal (say, no free output nodata) is fine too
            return
    assert out.shape == data.shape and type(out) is type(data)


def _only_project_errors(call, error):
    try:
        return call()
    except error as e:
        cause = e.__cause__
        # a refusal the checks made, not a foreign exception caught after the fact
        assert cause is None or isinstance(cause, RastermatchError), repr(cause)
        assert "\n" not in str(e)
        return None


@FUZZ
@given(
    doc=mutated([LEVELS_DOC, UNIFORM_DOC, STACK_DOC, SINGLE_DOC, FORMAT1_UINT8]),
    depth=st.sampled_from([3, 2000]),
)
def test_fuzz_lut_from_dict(doc, depth):
    lut = _only_project_errors(lambda: LUT.from_dict(_deepen(doc, depth)), LUTFileError)
    if lut is not None:
        _check_loaded(lut)


@FUZZ
@given(
    doc=mutated([LEVELS_DOC, UNIFORM_DOC, STACK_DOC, SINGLE_DOC, FORMAT1_UINT8, FORMAT1_FLOAT32]),
    depth=st.sampled_from([3, 900, 5000]),
    cut=st.one_of(st.none(), st.integers(0, 400)),
)
def test_fuzz_lut_load(tmp_path_factory, doc, depth, cut):
    text = json.dumps(doc).replace(f'"{_DEEP}"', "[" * depth + "]" * depth)
    if cut is not None:
        text = text[:cut]
    path = tmp_path_factory.mktemp("fuzz") / "lut.json"
    path.write_text(text)
    lut = _only_project_errors(lambda: LUT.load(path), LUTFileError)
    if lut is not None:
        _check_loaded(lut)


HIST_DOCS = [LEVELS_DOC[S], UNIFORM_DOC[S], UNIFORM_DOC[R], STACK_DOC[S], SINGLE_DOC[R],
             FORMAT1_UINT8[S]]  # fmt: skip


@FUZZ
@given(doc=mutated(HIST_DOCS), depth=st.sampled_from([3, 5000]))
def test_fuzz_histogram_from_dict_and_json(doc, depth):
    hist = _only_project_errors(lambda: Histogram.from_dict(_deepen(copy.deepcopy(doc), 3)),
                                HistogramFileError)  # fmt: skip
    if hist is not None:  # written as read
        back = Histogram.from_json(hist.to_json())
        same_histogram(back, hist)
        same_rows(back.rows, hist.rows)
    text = json.dumps(doc).replace(f'"{_DEEP}"', "[" * depth + "]" * depth)
    _only_project_errors(lambda: Histogram.from_json(text), HistogramFileError)


# -- the rules: ceil, optimal, proportion ------------------------------------------------------


LUT_RULES = [
    {"method": "nearest"},
    {"method": "ceil"},
    {"method": "interp"},
    {"method": "optimal", "objective": "ks"},
    {"method": "optimal", "objective": "w1"},
]


def rule_lut(kind: str, rule: dict, proportion: float) -> LUT:
    make = {"levels": levels_lut, "uniform": uniform_lut}[kind]
    lut = make(rule["method"])
    return LUT.from_histograms(
        lut.source_hist,
        lut.reference_hist,
        method=rule["method"],
        objective=rule.get("objective"),
        proportion=proportion,
    )


@pytest.mark.parametrize("proportion", [1.0, 0.0, 0.35])
@pytest.mark.parametrize("rule", LUT_RULES, ids=lambda r: "-".join(r.values()))
@pytest.mark.parametrize("kind", ["levels", "uniform"])
def test_every_rule_round_trips(tmp_path, kind, rule, proportion):
    lut = rule_lut(kind, rule, proportion)
    back = LUT.load(lut.save(tmp_path / "lut.json"))
    same_lut(back, lut)
    assert (back.objective, back.proportion) == (lut.objective, lut.proportion)
    data = np.array([[[0, 3, 3, 7, 9, 200, 1, 2]]] * 2, dtype=np.uint8)
    if kind == "uniform":
        data = np.round(np.random.default_rng(7).normal(0.3, 0.1, (2, 12, 12)), 3)
    np.testing.assert_array_equal(back.apply(data), lut.apply(data))
    recipe = json.loads((tmp_path / "lut.json").read_text())["recipe"]
    want = {"method": rule["method"], "levels": "present"}
    want.update({"objective": rule["objective"]} if "objective" in rule else {})
    want.update({} if proportion == 1.0 else {"proportion": proportion})
    assert recipe == want


def test_documents_of_the_earlier_rules_are_unchanged():
    # no objective, proportion 1: the recipe holds the two keys earlier versions wrote
    assert LEVELS_DOC["recipe"] == {"method": "nearest", "levels": "present"}
    assert UNIFORM_DOC["recipe"] == {"method": "interp", "levels": "present"}
    lut = rule_lut("levels", {"method": "nearest"}, 1)
    assert schema._dumps(lut.to_dict()) == schema._dumps(LEVELS_DOC)
    doc = copy.deepcopy(LEVELS_DOC)
    doc["recipe"]["proportion"] = 1  # an explicit default reads as the default
    same_lut(LUT.from_dict(doc), levels_lut())


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ({"objective": "ks"}, "recipe.objective is set, but only method 'optimal' has one"),
        ({"method": "optimal"}, "recipe.objective is missing; method 'optimal' needs"),
        (
            {"method": "optimal", "objective": "l2"},
            "recipe.objective is the string 'l2', expected one of 'ks', 'w1'",
        ),
        ({"method": "optimal", "objective": 1}, "recipe.objective is 1"),
        ({"proportion": 1.5}, "recipe.proportion is 1.5, expected a number from 0 to 1"),
        ({"proportion": -0.25}, "recipe.proportion is -0.25"),
        ({"proportion": True}, "recipe.proportion is true"),
        ({"proportion": "0.5"}, "recipe.proportion is the string '0.5'"),
        ({"proportion": None}, "recipe.proportion is null"),
        ({"method": "cubic"}, "recipe.method is the string 'cubic'"),
        ({"weights": [1]}, "recipe has an unknown field 'weights'"),
    ],
)
def test_bad_recipes_are_refused_by_field(tmp_path, recipe, match):
    doc = copy.deepcopy(LEVELS_DOC)
    doc["recipe"].update(recipe)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LUTFileError, match=re.escape(f"bad.json: {match}")):
        LUT.load(path)


def test_a_recipe_edit_rebuilds_what_it_says():
    # the recipe is the whole table: an edited proportion loads as that proportion's table,
    # the same as fitting it, so a file can never carry a table its histograms do not give
    doc = copy.deepcopy(LEVELS_DOC)
    doc["recipe"].update({"method": "ceil", "proportion": 0.5})
    same_lut(LUT.from_dict(doc), rule_lut("levels", {"method": "ceil"}, 0.5))


# -- LUTs of several pairs (fit_multi) -------------------------------------------------------


def multi_lut(k: int = 3) -> LUT:
    """k pairs of 2-band uint8 scenes with nodata 0, references up to 200 (beyond int8)."""
    from rastermatch import fit_multi

    rng = np.random.default_rng(5)
    pairs = [
        (rng.integers(0, 40, (2, 6, 5)).astype(np.uint8),
         (rng.integers(0, 40, (2, 6, 5)) * 5 + 5).astype(np.uint8))
        for _ in range(k)
    ]  # fmt: skip
    return fit_multi(pairs, objective="ks", weights=[1, 2.5, 0.5][:k], nodata=0)


MULTI_DOC = multi_lut().to_dict()
P = "pairs"


def _pairs_doc(**edits):
    doc = copy.deepcopy(MULTI_DOC)
    for path, value in edits.items():
        _set(doc, tuple(int(p) if p.isdigit() else p for p in path.split("__")), value)
    return doc


def test_multi_documents_record_every_pair_and_rebuild_with_fit_multi():
    assert MULTI_DOC["recipe"] == {"method": "optimal", "levels": "present", "objective": "ks"}
    assert [p["weight"] for p in MULTI_DOC[P]] == [1.0, 2.5, 0.5]
    assert S not in MULTI_DOC and R not in MULTI_DOC
    lut = LUT.from_dict(MULTI_DOC)
    np.testing.assert_array_equal(lut.table, multi_lut().table)
    assert schema._dumps(lut.to_dict()) == schema._dumps(MULTI_DOC)
    # a valid edit of the counts gives the table of those counts, never a stored one
    doc = _pairs_doc(pairs__1__source__counts__0__count=[50] * 3)
    doc[P][1]["source"]["counts"][0]["index"] = [1, 2, 3]
    from rastermatch import fit_multi

    edited = LUT.from_dict(doc)
    again = fit_multi([(s, r) for s, r, _ in edited.pairs], objective="ks",
                      weights=[1, 2.5, 0.5], nodata=0)  # fmt: skip
    np.testing.assert_array_equal(edited.table, again.table)


_BIG = 10**400
MULTI_RULES = [
    ({"pairs__1__reference__counts__0__count__0": -3},
     r"pairs\[1\]\.reference\.counts\[0\]\.count\[0\] is -3, outside 1\.\."),
    ({"pairs__2__source__counts__1__count__0": 1.5},
     r"pairs\[2\]\.source\.counts\[1\]\.count\[0\] is 1\.5, expected an integer"),
    ({"pairs__0__source__counts__0": {"index": [], "count": []}},
     r"pairs\[0\]\.source\.counts\[0\]\.count is empty: band 1 has no pixels"),
    ({"pairs__0__weight": float("nan")}, r"pairs\[0\]\.weight is nan, expected a finite number"),
    ({"pairs__0__weight": "nan"}, r"pairs\[0\]\.weight is the string 'nan', expected a finite"),
    ({"pairs__1__weight": -1}, r"pairs\[1\]\.weight is -1\.0, expected a finite number >= 0"),
    ({"pairs__1__weight": "2"}, r"pairs\[1\]\.weight is the string '2'"),
    ({"pairs__1__weight": True}, r"pairs\[1\]\.weight is true"),
    ({"pairs__1__weight": None}, r"pairs\[1\]\.weight is null"),
    ({"pairs__2__weight": _BIG}, r"pairs\[2\]\.weight is an integer of 401 digits"),
    ({"pairs__0__weight": 1.7e308, "pairs__1__weight": 1.7e308},
     r"pairs has weights adding up to more than float64 holds"),
    ({"pairs__0__weight": 0, "pairs__1__weight": 0.0, "pairs__2__weight": 0},
     r"pairs has weights that are all zero"),
    ({"pairs__1__source__binning__dtype": "uint16", "pairs__1__source__binning__nbins": 65536,
      "pairs__1__source__binning__hi": [65535.0, 65535.0]},
     r"pairs\[1\]\.source\.binning differs from pairs\[0\]\.source\.binning; every source"),
    ({"pairs__2__reference__binning__lo": [10.0, 10.0], "pairs__2__reference__binning__nbins": 246},
     r"pairs\[2\]\.reference\.binning differs from pairs\[0\]\.reference\.binning"),
    ({"pairs__1__reference__binning__lo": [0.0], "pairs__1__reference__binning__hi": [255.0]},
     r"pairs\[1\]\.reference\.binning differs from pairs\[0\]\.reference\.binning"),
    ({"pairs__0__reference__bands": [1], "pairs__0__reference__counts": "one row",
      "pairs__0__reference__binning__lo": [0.0], "pairs__0__reference__binning__hi": [255.0]},
     r"pairs\[0\]\.reference has 1 rows, but pairs\[0\]\.source has 2"),
    ({"pairs": []}, r"pairs has 0 entries, expected 2\.\.1,000"),
    ({"pairs": "first"}, r"pairs has 1 entries, expected 2\.\.1,000 .*\(a LUT of one pair"),
    ({"pairs": "huge"}, r"pairs has 100,000 entries, expected 2\.\.1,000"),
    ({"pairs": {}}, r"pairs is an object, expected a list of objects"),
    ({"pairs__1": [1, 2]}, r"pairs\[1\] is a list of 2, expected an object"),
    ({"pairs__1__weight": "drop"}, r"pairs\[1\]\.weight is missing"),
    ({"pairs__1__extra": 1}, r"pairs\[1\] has an unknown field 'extra'"),
    ({"source_histogram": "copy"}, r"source_histogram is given beside pairs"),
    ({"recipe__method": "nearest", "recipe__objective": "drop"},
     r"recipe\.method is 'nearest', but a LUT of several pairs is 'optimal'"),
    ({"recipe__proportion": 0.5}, r"recipe\.proportion is set, but a LUT of several pairs"),
    ({"bands": [1, 3]}, r"bands differ from pairs\[0\]\.source\.bands"),
    ({"nodata": 300}, r"nodata is 300, outside uint8's 0\.\.255"),
    ({"dtype": "int8"}, r"pairs is refused: .*int8"),
    ({"format": 1}, r"method is missing"),  # format 1 knows no pairs
]  # fmt: skip


@pytest.mark.parametrize(("edits", "message"), MULTI_RULES)
def test_multi_documents_refuse_each_field(edits, message):
    doc = copy.deepcopy(MULTI_DOC)
    for key, value in edits.items():
        path = tuple(int(p) if p.isdigit() else p for p in key.split("__"))
        if value == "drop":
            parent = doc
            for part in path[:-1]:
                parent = parent[part]
            del parent[path[-1]]
        elif value == "first":
            doc[P] = doc[P][:1]
        elif value == "huge":
            doc[P] = doc[P][:1] * 100_000  # refused by its length before any is read
        elif value == "copy":
            doc[S] = copy.deepcopy(LEVELS_DOC[S])
        elif value == "one row":
            doc[P][0]["reference"]["counts"] = doc[P][0]["reference"]["counts"][:1]
        else:
            _set(doc, path, value)
    with pytest.raises(LUTFileError, match=rf"^LUT document: {message}") as info:
        LUT.from_dict(doc)
    assert str(info.value).endswith("; recreate it with `rastermatch fit`")


def test_multi_documents_are_bounded_before_their_arrays(tmp_path, monkeypatch):
    # 3 pairs x (2 x 256 + 2 x 256) cells = 3,072: over a budget of 2 x 1,024, refused when read
    # (after the first pair only) and when written
    monkeypatch.setattr(schema, "MAX_CELLS", 1024)
    with pytest.raises(LUTFileError, match=r"pairs hold 3,072 histogram cells .* 2,048"):
        LUT.from_dict(MULTI_DOC)
    with pytest.raises(LUTFileError, match=r"pairs' histograms hold 3,072 cells"):
        multi_lut().save(tmp_path / "lut.json")
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(schema, "MAX_CELLS", 1536)  # 3,072 cells fit twice 1,536
    LUT.load(multi_lut().save(tmp_path / "lut.json"))


def test_multi_files_round_trip_and_json_level_checks(tmp_path):
    lut = multi_lut(2)
    path = lut.save(tmp_path / "lut.json")
    back = LUT.load(path)
    np.testing.assert_array_equal(back.table, lut.table)
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16).repeat(2, axis=0)
    np.testing.assert_array_equal(back.apply(x), lut.apply(x))
    text = path.read_text().replace('"weight":1.0', '"weight":NaN', 1)
    (tmp_path / "nan.json").write_text(text)
    with pytest.raises(LUTFileError, match="bare constant NaN"):
        LUT.load(tmp_path / "nan.json")


@settings(
    max_examples=min(60, int(os.environ.get("RASTERMATCH_FUZZ_EXAMPLES", "300"))),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=mutated([MULTI_DOC]))
def test_fuzz_multi_lut_from_dict(doc):
    lut = _only_project_errors(lambda: LUT.from_dict(doc), LUTFileError)
    if lut is not None:
        _check_loaded(lut)
