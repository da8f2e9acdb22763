"""LUT and histogram documents: JSON layout and validation.

A LUT file is untrusted input. It may have been edited by hand, cut short, or crafted to make
:func:`rastermatch.apply.apply_lut` read outside its table (a ``source_binning.lo`` of -1e15 did
exactly that in rastermatch 0.1). So a LUT document does not carry a table to be trusted: it
records the recipe (``method``, ``levels``) and both histograms, and loading it

1. parses the JSON strictly: no bare ``NaN``/``Infinity`` constants, no duplicate keys, no
   document larger than :data:`MAX_DOCUMENT_BYTES`, no nesting deeper than the parser allows;
2. checks every field against the layout below, with exact types (``true`` is not an integer),
   lengths, ranges and the consistency of counts, bins and per-bin statistics, before any array
   the size of a histogram is allocated (``nbins`` of 10**18 is refused, not attempted);
3. rebuilds the table with :meth:`rastermatch.LUT.from_histograms`, so a table can never disagree
   with its histograms and the kernels only ever see tables the builder made.

Any problem raises :class:`~rastermatch.LUTFileError` (LUT documents and files) or
:class:`~rastermatch.HistogramFileError` (histogram documents) with the field it concerns, e.g.
``LUT file calib.json: source_histogram.binning.lo[0] is -1e15, but uint16 levels start at 0;
recreate it with `rastermatch fit```. No other exception escapes.

Layout, format 2 (numbers that JSON cannot spell, NaN and infinities, are the strings ``"nan"``,
``"inf"`` and ``"-inf"``; they are allowed only for nodata values)::

    LUT:       {"type": "rastermatch.LUT", "format": 2, "rastermatch_version": str,
                "recipe": {"method": "nearest" | "ceil" | "interp" | "optimal",
                           "levels": "present" | "all",
                           "objective": "ks" | "w1" (method "optimal" only, required there),
                           "proportion": number in [0, 1] (optional, default 1)},
                "dtype": output dtype, "bands": [label, ...] | "rows": Rows,
                "nodata": number | null, "out_nodata": number | null,
                "source_histogram": Histogram, "reference_histogram": Histogram,
                "detectors": Detectors (optional)}
    LUT of several pairs (:func:`rastermatch.fit_multi`, k > 1): as above, but with
                "pairs": [{"source": Histogram, "reference": Histogram, "weight": number},
                          ...]   (2 to MAX_PAIRS entries)
                instead of "source_histogram" and "reference_histogram"
    Histogram: {"type": "rastermatch.Histogram", "format": 2, "binning": Binning,
                "bands": [label, ...] | "rows": Rows, "nodata": number | null, "masked": bool,
                "counts": [{"index": [int, ...], "count": [int, ...],
                            "vmin": [float, ...], "vmax": [float, ...], "nmin": [int, ...]}, ...]}
    Rows:      [{"dim": str, "dtype": "datetime64[unit]" (dates only), "labels": [label, ...]},
                ...]
    Binning:   {"kind": "levels" | "uniform", "dtype": str, "nbins": int,
                "lo": [float, ...], "hi": [float, ...]}

Rows are the labelled leading dims (:class:`rastermatch._rows.Rows`): ``[]`` for the one row
of a 2-D image, ``[{"dim": "time", ...}, {"dim": "band", ...}]`` for a time stack. A document
has either ``rows`` or ``bands``, the shorthand for one ``band`` dim that the writer uses
whenever it can: band documents are then byte for byte what earlier versions wrote, and those
versions read them. Other rows stay in format 2 as the optional ``rows`` field rather than
bumping the format: earlier readers refuse every unknown field, so they refuse such a document
by name (``the document has an unknown field 'rows'``) and none can take its rows for bands.

Labels are strings, integers or finite floats, unique within their dim; the labels of a dim marked
``"dtype": "datetime64[ns]"`` (any numpy date unit) are ISO dates (``"2020-01-31"``,
``"2020-01-31T10:23:45.5"``), restored as ``np.datetime64`` of that unit. A document holds at
most :data:`MAX_BANDS` rows in all.

Counts are sparse: one entry per row (in the rows' C order), listing the occupied bins
(``index``, strictly increasing) and their counts; ``vmin``/``vmax``/``nmin`` (the smallest and
largest value in the bin and how many pixels equal the smallest) only for ``"uniform"``
binnings. Format 1 (rastermatch 0.1) documents still load, as band documents: a format-1 LUT
carries a run-length encoded ``table`` beside its histograms; it is rebuilt from the histograms
and refused when the stored table differs.

A per-detector LUT (:func:`rastermatch.fit_detectors`) records its detector layout in the
optional ``detectors`` field (:meth:`Detectors.to_dict <rastermatch._detectors.Detectors.to_dict>`:
``{"axis": "y" | "x", "count": int | null, "offset": int, "labels": [label, ...] | null}``);
its rows then end with a ``detector`` dim labelled as the layout resolves. As with ``rows``,
earlier readers refuse the unknown field by name.

A LUT fitted to several (source, reference) pairs at once (multiple histogram matching,
:func:`rastermatch.fit_multi` with k > 1) cannot be rebuilt from one pair, so its document
records every pair in the optional ``pairs`` field (and no ``source_histogram`` or
``reference_histogram``): both histograms and the pair's weight (a finite number >= 0, not all
zero), the recipe being ``"method": "optimal"`` with its objective and no proportion. Every
source has the same binning, every reference too (checked, pair by pair, before a histogram's
arrays are made), each with a pixel in every row; a document has at most :data:`MAX_PAIRS`
pairs, whose histograms together hold at most twice :data:`MAX_CELLS` cells (what the two
histograms of a one-pair document may). Loading calls :func:`rastermatch.fit_multi` on the
pairs, weights, objective, levels, dtype and nodata recorded: the table is rebuilt by the code
that fitted it, and a document whose pairs do not fit is refused. A one-pair LUT is an ordinary
document, and earlier readers refuse ``pairs`` by name.

A LUT sidecar of a GeoTIFF output (:mod:`rastermatch.provenance`) may carry, in the optional
``provenance`` field (an object), the fields of the output's provenance record too large for
the raster's header; loading the LUT ignores them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, get_args

import numpy as np

from ._data import python_scalar
from ._rows import Rows
from .errors import (
    HistogramFileError,
    LUTFileError,
    RastermatchError,
    RasterWriteError,
)

if TYPE_CHECKING:
    from .histogram import Binning, Histogram
    from .lut import LUT

__all__ = [
    "DTYPES",
    "FORMAT",
    "MAX_BANDS",
    "MAX_CELLS",
    "MAX_DIMS",
    "MAX_DOCUMENT_BYTES",
    "MAX_PAIRS",
    "MAX_TOTAL",
    "MAX_UNIFORM_BINS",
    "binning_from_dict",
    "binning_to_dict",
    "histogram_from_dict",
    "histogram_from_json",
    "histogram_to_dict",
    "histogram_to_json",
    "load_lut",
    "lut_from_dict",
    "lut_to_dict",
    "parse_json",
    "save_lut",
]

#: The format written; format 1 is still read.
FORMAT = 2
#: Largest document read (bytes of a file, characters of a string).
MAX_DOCUMENT_BYTES = 512 * 2**20
#: Rows (bands, or dates x bands, ...) per histogram or LUT.
MAX_BANDS = 10_000
#: Row dims per histogram or LUT.
MAX_DIMS = 32
#: Bins of a ``"uniform"`` binning (``"levels"`` have exactly the dtype's level count).
MAX_UNIFORM_BINS = 2**24
#: Bands x bins of one histogram in a document: 64 bands of 65,536 bins, or one of 2**22. Counts
#: are sparse, so without a bound a document of a kilobyte asks for the dense arrays of any size:
#: two histograms of 4 bands x 2**24 bins took 167 s and 7.9 GB to rebuild. At this bound a
#: LUT is rebuilt in seconds. Raise it (``rastermatch.schema.MAX_CELLS = ...``) to exchange
#: larger histograms; :func:`save_lut` refuses what :func:`load_lut` would.
MAX_CELLS = 2**22
#: (source, reference) pairs of a LUT fitted to several at once; their histograms together
#: hold at most ``2 * MAX_CELLS`` cells.
MAX_PAIRS = 1_000
#: Pixels per band of a histogram (sums of two of them still fit int64).
MAX_TOTAL = 2**62
#: dtypes a histogram or a LUT output can have.
DTYPES = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float16",
    "float32",
    "float64",
)

_LUT_TYPE = "rastermatch.LUT"
_HISTOGRAM_TYPE = "rastermatch.Histogram"
_INT64 = (-(2**63), 2**63 - 1)
_MAX_LABEL = 1_000  # characters of a string label or a dim name
_MAX_DATE = 64  # characters of an ISO date (the longest numpy writes has about 40)
_DATE_DTYPES = tuple(
    f"datetime64[{unit}]"
    for unit in ("Y", "M", "W", "D", "h", "m", "s", "ms", "us", "ns", "ps", "fs", "as")
)
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_LUT_FIX = "recreate it with `rastermatch fit`"
_DETECTOR_LUT_FIX = "recreate it with `rastermatch destripe ... --lut` (or fit_detectors)"
_ROWS = ("bands", "rows")  # the two spellings of a document's rows: one or the other
_HISTOGRAM_FIX = "write it again with Histogram.to_json()"


# -- errors -----------------------------------------------------------------------------------


class _Invalid(Exception):
    """A field that breaks the layout: ``where`` (``source_histogram.binning.lo[0]``) and what
    is wrong with it (``is -1e15, but uint16 levels start at 0``)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(where, problem)
        self.where = where
        self.problem = problem

    def sentence(self) -> str:
        return f"{self.where or 'the document'} {self.problem}"


def _fail(where: str, problem: str) -> NoReturn:
    raise _Invalid(where, problem)


def _at(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _show_float(x: float) -> str:
    if not math.isfinite(x):
        return str(x)
    text = repr(x)
    if abs(x) >= 1e6 or len(text) > 20:
        text = f"{x:.15g}".replace("e+", "e")
    return text


def _show(value: Any) -> str:
    """A short description of a JSON value, safe for any input (never a deep or long repr)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
        return text
    if isinstance(value, float):
        return _show_float(value)
    if isinstance(value, str):
        text = repr(value)
        return f"the string {text if len(text) <= 40 else text[:36] + '...' + text[0]}"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


# -- JSON text --------------------------------------------------------------------------------


def _refuse_constant(name: str) -> NoReturn:
    _fail(
        "",
        f'contains the bare constant {name}, which JSON does not allow (write "nan", '
        '"inf" or "-inf")',
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                _fail("", f"has the key {_show(key)} twice in one object")
            seen.add(key)
    return d


def parse_json(data: str | bytes | bytearray) -> Any:
    """Parse a document strictly; problems raise ``_Invalid`` with an empty ``where``."""
    if not isinstance(data, str | bytes | bytearray):
        _fail("", f"is {_show(data)}, expected JSON text (str or bytes)")
    if len(data) > MAX_DOCUMENT_BYTES:
        _fail("", f"is {len(data):,} bytes long, more than the {MAX_DOCUMENT_BYTES:,} allowed")
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            _fail("", f"is not UTF-8 text ({e.reason} at byte {e.start})")
    try:
        return json.loads(
            data,
            parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as e:
        _fail("", f"is not readable JSON: {e}")
    except RecursionError:
        _fail("", "is nested deeper than any rastermatch document (not readable JSON)")
    except MemoryError:
        _fail("", "is too large to read into memory")
    except ValueError as e:  # int()'s limit of 4,300 digits, which also bounds its cost
        _fail("", f"contains an integer too long to read ({e})")


def _dumps(doc: Mapping[str, Any]) -> str:
    # allow_nan=False: NaN and infinities are written as strings, never as bare constants
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, check_circular=False)


# -- typed field readers ----------------------------------------------------------------------


def _object(value: Any, where: str, required: Iterable[str], optional: Iterable[str] = ()) -> Any:
    if not isinstance(value, Mapping):
        _fail(where, f"is {_show(value)}, expected an object")
    required = tuple(required)
    for key in required:
        if key not in value:
            _fail(_at(where, key), "is missing")
    allowed = set(required) | set(optional)
    for key in value:
        if key not in allowed:
            name = key if isinstance(key, str) else _show(key)
            _fail(
                where,
                f"has an unknown field {name!r}"
                if isinstance(key, str)
                else f"has a key that is {name}",
            )
    return value


def _sequence(value: Any, where: str, what: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        _fail(where, f"is {_show(value)}, expected a list of {what}")
    return value


def _length(seq: Sequence[Any], where: str, n: int, why: str) -> None:
    if len(seq) != n:
        _fail(where, f"has {len(seq)} entries, but {why}")


def _first(seq: Sequence[Any], bad: Callable[[Any], bool]) -> int:
    return next((i for i, x in enumerate(seq) if bad(x)), 0)


def _fits_float(x: int) -> bool:
    try:
        float(x)
    except OverflowError:
        return False
    return True


def _integer(value: Any, where: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        _fail(where, f"is {_show(value)}, expected an integer")
    if not lo <= value <= hi:
        _fail(where, f"is {_show(value)}, outside {lo:,}..{hi:,}")
    return value


def _integers(value: Any, where: str, lo: int, hi: int) -> np.ndarray:
    seq = _sequence(value, where, "integers")
    if not set(map(type, seq)) <= {int}:
        i = _first(seq, lambda x: type(x) is not int)
        _fail(_at(where, i), f"is {_show(seq[i])}, expected an integer")
    if seq:
        for extreme in (min(seq), max(seq)):
            if not lo <= extreme <= hi:
                i = seq.index(extreme)
                _fail(_at(where, i), f"is {_show(extreme)}, outside {lo:,}..{hi:,}")
    return np.array(seq, dtype=np.int64)


def _floats(value: Any, where: str) -> np.ndarray:
    """Finite numbers (JSON integers or floats) as float64."""
    seq = _sequence(value, where, "numbers")
    if not set(map(type, seq)) <= {int, float}:
        i = _first(seq, lambda x: type(x) not in (int, float))
        _fail(_at(where, i), f"is {_show(seq[i])}, expected a finite number")
    try:
        arr = np.array(seq, dtype=np.float64)
    except OverflowError:
        i = _first(seq, lambda x: type(x) is int and not _fits_float(x))
        _fail(_at(where, i), f"is {_show(seq[i])}, too large for float64")
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite))
        _fail(_at(where, i), f"is {_show(float(arr[i]))}, expected a finite number")
    return arr.reshape(-1)


def _number_or_null(value: Any, where: str) -> int | float | None:
    """A nodata value: null, a JSON number, or "nan" / "inf" / "-inf"."""
    if value is None:
        return None
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if type(value) is int:
        return _integer(value, where, *_INT64)
    if type(value) is float and math.isfinite(value):
        return value
    _fail(where, f'is {_show(value)}, expected a number, "nan", "inf", "-inf" or null')


def _json_number(x: Any) -> Any:
    x = python_scalar(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def _string(value: Any, where: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        _fail(where, f"is {_show(value)}, expected one of {', '.join(map(repr, allowed))}")
    return value


def _dtype(value: Any, where: str) -> np.dtype:
    return np.dtype(_string(value, where, DTYPES))


def _representable(value: int | float | None, dtype: np.dtype, where: str) -> Any:
    """``value`` as a nodata of ``dtype``, or a refusal when ``dtype`` cannot hold it."""
    if value is None:
        return None
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if not (math.isfinite(value) and float(value).is_integer()):
            _fail(where, f"is {_show(value)}, which {dtype} cannot hold")
        v = int(value)
        if not info.min <= v <= info.max:
            _fail(where, f"is {_show(value)}, outside {dtype}'s {info.min}..{info.max}")
        return v
    if math.isfinite(value) and abs(float(value)) > float(np.finfo(dtype).max):
        _fail(where, f"is {_show(value)}, beyond {dtype}'s largest value")
    return value


def _labels(
    value: Any,
    where: str,
    nbands: int | None = None,
    *,
    unit: str | None = None,
    noun: str = "bands",
) -> tuple[Hashable, ...]:
    """The labels of a dim (``noun`` "bands" for a ``bands`` field, "labels" for a row dim):
    unique strings, integers or finite floats, or with ``unit`` ISO dates of that unit."""
    seq = _sequence(value, where, "band labels" if noun == "bands" else "labels")
    if not 1 <= len(seq) <= MAX_BANDS:
        _fail(where, f"has {len(seq):,} {noun}, expected 1..{MAX_BANDS:,}")
    if nbands is not None:
        _length(seq, where, nbands, f"there are {nbands} bands")
    what = "a band label" if noun == "bands" else "a label"
    for i, label in enumerate(seq):
        if unit is not None:
            continue  # dates: checked below
        ok = (
            (type(label) is int and _INT64[0] <= label <= _INT64[1])
            or (type(label) is float and math.isfinite(label))
            or (type(label) is str and len(label) <= _MAX_LABEL)
        )
        if not ok:
            _fail(
                _at(where, i),
                f"is {_show(label)}; {what} is a string (of at most {_MAX_LABEL} "
                "characters), an integer or a finite number",
            )
    labels = (
        tuple(seq)
        if unit is None
        else tuple(_date(label, _at(where, i), unit) for i, label in enumerate(seq))
    )
    if len(set(labels)) != len(labels):
        seen: set[Any] = set()
        for i, label in enumerate(labels):
            if label in seen:
                _fail(_at(where, i), f"is {_show(seq[i])}, a label used twice")
            seen.add(label)
    return labels


def _date(label: Any, where: str, unit: str) -> np.datetime64:
    """An ISO date of ``unit``, spelled as :func:`_date_text` spells it (so that ``"today"``,
    ``"NaT"``, a date the unit cannot hold or one it would truncate are refused)."""
    if type(label) is str and len(label) <= _MAX_DATE:
        try:
            date = np.datetime64(label, unit)
        except (ValueError, TypeError, OverflowError):
            pass
        else:
            if not np.isnat(date) and _date_text(date) == label:
                return date
    # picoseconds and finer reach only a few hours or days from 1970
    example = np.datetime64(
        "1970-01-01T00:00:00.25" if unit in ("ps", "fs", "as") else "2020-01-31T10:30"
    )
    _fail(
        where,
        f"is {_show(label)}, expected an ISO date in datetime64[{unit}] (such as "
        f"{_date_text(example.astype(f'datetime64[{unit}]'))!r})",
    )


def _date_text(date: np.datetime64) -> str:
    return str(np.datetime_as_string(date, unit="auto"))


def _read_rows(value: Any, where: str) -> Rows:
    """A ``rows`` field: the row dims in order, each with its labels."""
    seq = _sequence(value, where, "row dims")
    if len(seq) > MAX_DIMS:
        _fail(where, f"has {len(seq):,} dims, expected at most {MAX_DIMS}")
    dims: list[str] = []
    coords: list[tuple[Hashable, ...]] = []
    size = 1
    for i, entry in enumerate(seq):
        here = _at(where, i)
        obj = _object(entry, here, ("dim", "labels"), ("dtype",))
        dim = obj["dim"]
        if not (type(dim) is str and 1 <= len(dim) <= _MAX_LABEL and dim.isprintable()):
            _fail(
                _at(here, "dim"),
                f"is {_show(dim)}, expected a dim name (a printable string of 1..{_MAX_LABEL} "
                "characters)",
            )
        if dim in dims:
            _fail(_at(here, "dim"), f"is {_show(dim)}, a dim named twice")
        unit = None
        if "dtype" in obj:
            unit = _string(obj["dtype"], _at(here, "dtype"), _DATE_DTYPES)[11:-1]
        labels = _labels(obj["labels"], _at(here, "labels"), unit=unit, noun="labels")
        size *= len(labels)
        if size > MAX_BANDS:
            _fail(
                where,
                f"make more than {MAX_BANDS:,} rows (the product of the dims' label counts, "
                f"{' x '.join(f'{len(c):,}' for c in (*coords, labels))}); a document holds at "
                f"most {MAX_BANDS:,}",
            )
        dims.append(dim)
        coords.append(labels)
    return _build(lambda: Rows(tuple(dims), tuple(coords)), where)


def _read_rows_of(obj: Mapping[str, Any], where: str, nbands: int | None = None) -> Rows:
    """The rows an object records: its ``rows``, or its ``bands`` (one ``band`` dim)."""
    if "rows" in obj:
        if "bands" in obj:
            _fail(_at(where, "rows"), "is given beside bands; a document has one or the other")
        rows = _read_rows(obj["rows"], _at(where, "rows"))
        if nbands is not None and rows.size != nbands:
            _fail(
                _at(where, "rows"), f"make {rows.size:,} rows, but the histograms have {nbands:,}"
            )
        return rows
    if "bands" not in obj:
        _fail(_at(where, "bands"), "is missing")
    return Rows.bands(_labels(obj["bands"], _at(where, "bands"), nbands))


def _rows_key(obj: Mapping[str, Any]) -> str:
    return "rows" if "rows" in obj else "bands"


def _rows_doc(rows: Rows) -> tuple[str, list[Any]]:
    """``("bands", labels)`` for one ``band`` dim of plain labels, else ``("rows", [...])``.

    Labels are written as they are (a tuple stays a tuple), so that the check that follows
    (:func:`_writable_rows`) refuses what a reader would."""
    dates = [any(isinstance(v, np.datetime64) for v in c) for c in rows.coords]
    if rows.dims == ("band",) and not dates[0]:
        return "bands", [python_scalar(v) for v in rows.coords[0]]
    entries = []
    for dim, labels, dated in zip(rows.dims, rows.coords, dates, strict=True):
        entry: dict[str, Any] = {"dim": dim}
        if dated:
            # the finest unit of the dim's dates (a coordinate's dates share one)
            unit = np.datetime_data(
                np.array([v for v in labels if isinstance(v, np.datetime64)]).dtype
            )[0]
            entry["dtype"] = f"datetime64[{unit}]"
            entry["labels"] = [
                _date_text(v.astype(f"datetime64[{unit}]")) if isinstance(v, np.datetime64) else v
                for v in labels
            ]
        else:
            entry["labels"] = [python_scalar(v) for v in labels]
        entries.append(entry)
    return "rows", entries


def _writable_rows(rows: Rows, error: type[Exception], what: str) -> tuple[str, list[Any]]:
    """The rows' field, refused (``error``) when a reader would refuse it."""
    key, value = _rows_doc(rows)
    try:
        _read_rows_of({key: value}, "")
    except _Invalid as e:
        at = e.where[len("rows[") :].split("]")[0] if e.where.startswith("rows[") else "0"
        dim = rows.dims[int(at)] if rows.dims and at.isdigit() else "band"
        coords = f"{dim}=[...]" if dim.isidentifier() else f"{{{dim!r}: [...]}}"
        raise error(
            f"cannot write the {what}: {e.sentence()}; give every row dim distinct labels that "
            f"are strings, integers, finite numbers or dates (e.g. data.assign_coords({coords}))"
        ) from None
    return key, value


# -- Binning ----------------------------------------------------------------------------------


def _level_count(dtype: np.dtype) -> int | None:
    if dtype.kind in "iu" and dtype.itemsize <= 2:
        info = np.iinfo(dtype)
        return int(info.max) - int(info.min) + 1
    return None


def _read_binning(
    value: Any, where: str, nbands: int | None, noun: str = "bands"
) -> tuple[Any, ...]:
    """``(kind, dtype, nbins, lo, hi)`` checked; ``nbands`` (rows, named ``noun`` in messages)
    None takes it from ``lo``."""
    obj = _object(value, where, ("kind", "dtype", "nbins", "lo", "hi"))
    kind = _string(obj["kind"], _at(where, "kind"), ("levels", "uniform"))
    dtype = _dtype(obj["dtype"], _at(where, "dtype"))
    levels = _level_count(dtype)
    if kind == "levels":
        if levels is None:
            _fail(
                _at(where, "dtype"),
                f"is {dtype}, but levels binning needs an integer dtype of at most 16 bits",
            )
        nbins = _integer(obj["nbins"], _at(where, "nbins"), 1, 2**63 - 1)
        if nbins > levels:
            _fail(_at(where, "nbins"), f"is {_show(nbins)}, but {dtype} has {levels:,} levels")
    else:
        nbins = _integer(obj["nbins"], _at(where, "nbins"), 1, MAX_UNIFORM_BINS)
    if nbands is None:
        nbands = len(_sequence(obj["lo"], _at(where, "lo"), "numbers"))
        if not 1 <= nbands <= MAX_BANDS:
            _fail(_at(where, "lo"), f"has {nbands:,} entries, expected 1..{MAX_BANDS:,} bands")
    if nbands * nbins > MAX_CELLS:
        _fail(
            _at(where, "nbins"),
            f"is {nbins:,}: {nbands:,} {noun[:-1]}(s) of {nbins:,} bins are more than the "
            f"{MAX_CELLS:,} a document may hold (rastermatch.schema.MAX_CELLS)",
        )
    bounds = []
    for key in ("lo", "hi"):
        seq = _sequence(obj[key], _at(where, key), "numbers")
        _length(seq, _at(where, key), nbands, f"there are {nbands} {noun}")
        bounds.append(_floats(seq, _at(where, key)))
    lo, hi = bounds
    if kind == "levels":
        # the whole dtype, or one range [lo, hi] of its integer levels, the same on every row
        info = np.iinfo(dtype)
        for key, arr in (("lo", lo), ("hi", hi)):
            bad = np.flatnonzero(
                (arr != arr[0]) | (arr != np.floor(arr)) | (arr < info.min) | (arr > info.max)
            )
            if bad.size:
                i = int(bad[0])
                _fail(
                    _at(_at(where, key), i),
                    f"is {_show(float(arr[i]))}, but {dtype} levels are integers from "
                    f"{info.min} to {info.max}, the same on every row ({key}[0] is "
                    f"{_show(float(arr[0]))})",
                )
        if hi[0] < lo[0]:
            _fail(
                _at(_at(where, "hi"), 0),
                f"is {_show(float(hi[0]))}, below lo[0] = {_show(float(lo[0]))}",
            )
        if int(hi[0]) - int(lo[0]) + 1 != nbins:
            _fail(
                _at(where, "nbins"),
                f"is {_show(nbins)}, but levels {int(lo[0])} to {int(hi[0])} are "
                f"{int(hi[0]) - int(lo[0]) + 1:,}; lo, hi and nbins disagree",
            )
    else:
        bad = np.flatnonzero(~(lo <= hi))
        if bad.size:
            i = int(bad[0])
            _fail(
                _at(_at(where, "hi"), i),
                f"is {_show(float(hi[i]))}, below lo[{i}] = {_show(float(lo[i]))}",
            )
        with np.errstate(over="ignore"):
            bad = np.flatnonzero(~np.isfinite(hi - lo))
        if bad.size:
            i = int(bad[0])
            _fail(
                _at(_at(where, "hi"), i),
                f"is {_show(float(hi[i]))}: the range from "
                f"{_show(float(lo[i]))} is wider than float64 can hold",
            )
    return kind, dtype, nbins, lo, hi


def _binning(parts: tuple[Any, ...]) -> Binning:
    from .histogram import Binning

    return Binning(*parts)


def binning_to_dict(binning: Binning) -> dict[str, Any]:
    """The JSON-ready layout of a computed :class:`~rastermatch.Binning`."""
    binning._require_concrete()
    return {
        "kind": binning.kind,
        "dtype": binning.dtype.name,
        "nbins": int(binning.nbins),
        "lo": np.asarray(binning.lo, dtype=np.float64).tolist(),
        "hi": np.asarray(binning.hi, dtype=np.float64).tolist(),
    }


def binning_from_dict(d: Any) -> Binning:
    """A :class:`~rastermatch.Binning` from its layout; HistogramFileError when malformed."""
    return _checked(lambda: _binning(_read_binning(d, "", None)), _histogram_error("binning"))


# -- Histogram --------------------------------------------------------------------------------


def _read_counts(
    row: Any, where: str, nbins: int, stats: bool, lo: float, hi: float, fmt: int
) -> tuple[np.ndarray, ...]:
    keys = ("index", "count", "vmin", "vmax", "nmin") if stats else ("index", "count")
    obj = _object(row, where, keys)
    index = _integers(obj["index"], _at(where, "index"), 0, nbins - 1)
    if index.size > 1:
        bad = np.flatnonzero(np.diff(index) <= 0)
        if bad.size:
            i = int(bad[0]) + 1
            _fail(
                _at(_at(where, "index"), i),
                f"is {index[i]}, not above the index before it "
                "(indices must be strictly increasing)",
            )
    # format 2 lists occupied bins only; format 1 allowed zero counts
    least = 1 if fmt >= 2 else 0
    count = _integers(obj["count"], _at(where, "count"), least, MAX_TOTAL - 1)
    _length(count, _at(where, "count"), index.size, f"{_at(where, 'index')} has {index.size}")
    if count.sum(dtype=np.float64) >= MAX_TOTAL or int(count.sum()) >= MAX_TOTAL:
        _fail(_at(where, "count"), "adds up to 2**62 pixels or more")
    if not stats:
        return index, count
    vmin = _floats(obj["vmin"], _at(where, "vmin"))
    vmax = _floats(obj["vmax"], _at(where, "vmax"))
    nmin = _integers(obj["nmin"], _at(where, "nmin"), 1, MAX_TOTAL - 1)
    for key, arr in (("vmin", vmin), ("vmax", vmax), ("nmin", nmin)):
        _length(arr, _at(where, key), index.size, f"{_at(where, 'index')} has {index.size}")
    # every value lies in its bin (the edges within rounding: the counting kernel decides by
    # (v - lo) * nbins / (hi - lo), which may differ from the edges by a few ulps)
    width = (hi - lo) / nbins
    tol = 1e-12 * max(abs(lo), abs(hi), hi - lo)
    with np.errstate(over="ignore", invalid="ignore"):  # near float64's limits: clipped below
        left = np.maximum(lo + width * index - tol, lo)
        right = np.minimum(lo + width * (index + 1) + tol, hi)
    checks = (
        ("vmin", vmin, vmin >= left, "below its bin, which starts at", left),
        ("vmax", vmax, vmax <= right, "above its bin, which ends at", right),
        ("vmax", vmax, vmax >= vmin, "below vmin", vmin),
    )
    for key, arr, ok, what, limit in checks:
        bad = np.flatnonzero(~ok)
        if bad.size:
            i = int(bad[0])
            _fail(
                _at(_at(where, key), i),
                f"is {_show(float(arr[i]))}, {what} {_show(float(limit[i]))}",
            )
    # nmin pixels equal vmin: all of them when the bin holds one value, else fewer than all
    single = vmin == vmax
    bad = np.flatnonzero(np.where(single, nmin != count, nmin >= count))
    if bad.size:
        i = int(bad[0])
        rule = "equal to" if single[i] else "below"
        _fail(
            _at(_at(where, "nmin"), i),
            f"is {nmin[i]}, but must be {rule} the bin's count {count[i]}",
        )
    return index, count, vmin, vmax, nmin


def _read_histogram(
    value: Any, where: str, formats: tuple[int, ...], *, need_pixels: bool
) -> Histogram:
    from .histogram import Histogram

    obj = _object(
        value,
        where,
        ("type",),
        ("format", "binning", "bands", "rows", "counts", "nodata", "masked"),
    )
    if obj["type"] != _HISTOGRAM_TYPE:
        _fail(_at(where, "type"), f"is {_show(obj['type'])}, not {_HISTOGRAM_TYPE!r}")
    if "format" not in obj:
        _fail(_at(where, "format"), "is missing")
    fmt = _integer(obj["format"], _at(where, "format"), min(formats), max(formats))
    if fmt >= 2:
        _object(obj, where, ("type", "format", "binning", "counts", "nodata", "masked"), _ROWS)
    else:
        _object(obj, where, ("type", "format", "binning", "bands", "counts"))
    rows = _read_rows_of(obj, where)
    nbands = rows.size
    noun = "bands" if _rows_key(obj) == "bands" else "rows"
    kind, dtype, nbins, lo, hi = binning = _read_binning(
        obj["binning"], _at(where, "binning"), nbands, noun
    )
    nodata, masked = None, False
    if fmt >= 2:
        nodata = _representable(
            _number_or_null(obj["nodata"], _at(where, "nodata")), dtype, _at(where, "nodata")
        )
        masked = obj["masked"]
        if type(masked) is not bool:
            _fail(_at(where, "masked"), f"is {_show(masked)}, expected true or false")
    entries = _sequence(obj["counts"], _at(where, "counts"), "objects")
    _length(entries, _at(where, "counts"), nbands, f"there are {nbands} {noun}")
    # uniform bins carry vmin/vmax/nmin in every row, or (a histogram built without them) in
    # none; the first row decides, the others must agree
    stats = (
        kind == "uniform" and fmt >= 2 and isinstance(entries[0], Mapping) and "vmin" in entries[0]
    )
    sparse = []
    for b, entry in enumerate(entries):
        here = _at(_at(where, "counts"), b)
        parts = _read_counts(entry, here, nbins, stats, float(lo[b]), float(hi[b]), fmt)
        if need_pixels and int(parts[1].sum()) == 0:
            _fail(
                _at(here, "count"),
                f"is empty: {rows.describe(b) or 'the image'} has no pixels, and a LUT needs "
                f"at least one per {noun[:-1]}",
            )
        sparse.append(parts)

    # everything checked: now the dense arrays
    counts = np.zeros((nbands, nbins), dtype=np.int64)
    for row, parts in zip(counts, sparse, strict=True):
        row[parts[0]] = parts[1]
    kwargs: dict[str, Any] = {"nodata": nodata, "masked": masked}
    if stats:
        vmin = np.full((nbands, nbins), np.inf)
        vmax = np.full((nbands, nbins), -np.inf)
        nmin = np.zeros((nbands, nbins), dtype=np.int64)
        for b, (index, _, lo_b, hi_b, n_b) in enumerate(sparse):
            vmin[b, index], vmax[b, index], nmin[b, index] = lo_b, hi_b, n_b
        kwargs.update(vmin=vmin, vmax=vmax, nmin=nmin)
    return _build(lambda: Histogram(counts, _binning(binning), rows=rows, **kwargs), where)


def _build(make: Callable[[], Any], where: str) -> Any:
    """Run a constructor on checked fields; a refusal it still makes names the field."""
    try:
        return make()
    except RastermatchError as e:
        raise _Invalid(where, f"is refused: {e}") from e
    except (ValueError, TypeError, ArithmeticError, IndexError, KeyError, MemoryError) as e:
        raise _Invalid(where, f"cannot be used ({type(e).__name__}: {e})") from e


def histogram_to_dict(hist: Histogram) -> dict[str, Any]:
    """The JSON-ready layout (format 2) of a computed histogram."""
    hist._require_concrete()
    stats = hist.binning.kind == "uniform" and hist.vmin is not None
    key, rows = _writable_rows(hist.rows, HistogramFileError, "histogram")
    entries = []
    for b, row in enumerate(np.asarray(hist.counts)):
        (index,) = np.nonzero(row)
        entry = {"index": index.tolist(), "count": row[index].tolist()}
        if stats:
            entry["vmin"] = np.asarray(hist.vmin[b])[index].astype(np.float64).tolist()
            entry["vmax"] = np.asarray(hist.vmax[b])[index].astype(np.float64).tolist()
            entry["nmin"] = np.asarray(hist.nmin[b])[index].astype(np.int64).tolist()
        entries.append(entry)
    return {
        "type": _HISTOGRAM_TYPE,
        "format": FORMAT,
        "binning": binning_to_dict(hist.binning),
        key: rows,
        "nodata": _json_number(hist.nodata),
        "masked": bool(hist.masked),
        "counts": entries,
    }


def _histogram_error(what: str) -> Callable[[_Invalid], Exception]:
    def error(e: _Invalid) -> Exception:
        return HistogramFileError(f"{what} document: {e.sentence()}; {_HISTOGRAM_FIX}")

    return error


def _checked(read: Callable[[], Any], error: Callable[[_Invalid], Exception]) -> Any:
    try:
        return read()
    except _Invalid as e:
        raise error(e) from e.__cause__


def histogram_from_dict(d: Any) -> Histogram:
    """A histogram from its layout (format 1 or 2); HistogramFileError when malformed."""
    return _checked(
        lambda: _read_histogram(d, "", (1, 2), need_pixels=False), _histogram_error("histogram")
    )


def histogram_to_json(hist: Histogram) -> str:
    return _dumps(histogram_to_dict(hist))


def histogram_from_json(text: str | bytes | bytearray) -> Histogram:
    """A histogram from JSON text; HistogramFileError when it is not a valid document."""
    return _checked(
        lambda: _read_histogram(parse_json(text), "", (1, 2), need_pixels=False),
        _histogram_error("histogram"),
    )


# -- LUT --------------------------------------------------------------------------------------


def lut_to_dict(lut: LUT) -> dict[str, Any]:
    """The JSON-ready layout (format 2): the recipe and both histograms, no table."""
    from . import __version__

    if lut.pairs is not None:
        source = _pairs_source(lut)
        hists: dict[str, Any] = {"pairs": [_pair_doc(s, r, w) for s, r, w in lut.pairs]}
    elif lut.source_hist is None or lut.reference_hist is None:
        raise LUTFileError(
            "this LUT has no histograms, and a LUT document records them (the table is rebuilt "
            "from them when read); build it with LUT.from_histograms, or with "
            "rastermatch.fit_multi for several pairs"
        )
    else:
        source = lut.source_hist
        hists = {
            "source_histogram": histogram_to_dict(lut.source_hist),
            "reference_histogram": histogram_to_dict(lut.reference_hist),
        }
    if not lut.rows.same_as(source.rows):
        raise LUTFileError(
            f"cannot write the LUT: its rows {lut.rows!r} are not those of its source histogram "
            f"{source.rows!r}, which a LUT document repeats (the table is rebuilt from "
            "the histograms when read); build it with LUT.from_histograms"
        )
    key, rows = _writable_rows(lut.rows, LUTFileError, "LUT")
    layout = {} if lut.detectors is None else {"detectors": lut.detectors.to_dict()}
    return {
        "type": _LUT_TYPE,
        "format": FORMAT,
        "rastermatch_version": __version__,
        "recipe": _recipe_doc(lut),
        "dtype": lut.dtype.name,
        key: rows,
        "nodata": _json_number(lut.nodata),
        "out_nodata": _json_number(lut.out_nodata),
        **hists,
        **layout,
    }


def _pairs_source(lut: LUT) -> Histogram:
    """The first source of a LUT of several pairs (whose rows the LUT has), after checking that
    its ``pairs`` are what a document records and its reader rebuilds: 2 to MAX_PAIRS
    ``(Histogram, Histogram, weight)`` with finite weights >= 0, the recipe fit_multi's."""
    from .histogram import Histogram

    pairs = lut.pairs
    fix = "fit it with rastermatch.fit_multi"
    if not isinstance(pairs, tuple) or not 2 <= len(pairs) <= MAX_PAIRS:
        size = f"{len(pairs):,} pairs" if isinstance(pairs, tuple) else _show(pairs)
        raise LUTFileError(
            f"cannot write the LUT: its pairs are {size}, but a LUT document records a tuple "
            f"of 2 to {MAX_PAIRS:,} (source, reference, weight); {fix}"
        )
    for j, pair in enumerate(pairs):
        ok = (
            isinstance(pair, tuple)
            and len(pair) == 3
            and all(isinstance(h, Histogram) for h in pair[:2])
            and isinstance(pair[2], int | float)
            and not isinstance(pair[2], bool)
            and math.isfinite(pair[2])
            and pair[2] >= 0
        )
        if not ok:
            raise LUTFileError(
                f"cannot write the LUT: pair {j} is not a (source Histogram, reference "
                f"Histogram, finite weight >= 0) tuple; {fix}"
            )
    if not any(w > 0 for *_, w in pairs):
        raise LUTFileError(f"cannot write the LUT: the weights of its pairs are all zero; {fix}")
    if lut.method != "optimal" or lut.proportion != 1.0:
        raise LUTFileError(
            f"cannot write the LUT: a LUT of several pairs is rebuilt by fit_multi, whose rule "
            f"is method 'optimal' without a blend, not {lut.method!r} with proportion "
            f"{lut.proportion:g}; {fix}"
        )
    return pairs[0][0]


def _pair_doc(source: Histogram, reference: Histogram, weight: float) -> dict[str, Any]:
    return {
        "source": histogram_to_dict(source),
        "reference": histogram_to_dict(reference),
        "weight": float(weight),
    }


def _recipe_options() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from .lut import Levels, Method

    return get_args(Method), get_args(Levels)


def _recipe_doc(lut: LUT) -> dict[str, Any]:
    """The recipe; ``objective`` and ``proportion`` only when they are set, so a document of
    the rules earlier versions know is byte for byte what they wrote (and they read it)."""
    recipe: dict[str, Any] = {"method": lut.method, "levels": lut.levels}
    if lut.objective is not None:
        recipe["objective"] = lut.objective
    if lut.proportion != 1.0:
        recipe["proportion"] = lut.proportion
    return recipe


def _read_recipe(value: Any, methods: Sequence[str], levels: Sequence[str]) -> tuple[Any, ...]:
    """``(method, levels, objective, proportion)`` of a format-2 recipe, every key checked."""
    from .lut import OBJECTIVES

    recipe = _object(value, "recipe", ("method", "levels"), ("objective", "proportion"))
    method = _string(recipe["method"], "recipe.method", methods)
    level = _string(recipe["levels"], "recipe.levels", levels)
    objective = None
    if method == "optimal":
        if "objective" not in recipe:
            _fail("recipe.objective", "is missing; method 'optimal' needs 'ks' or 'w1'")
        objective = _string(recipe["objective"], "recipe.objective", OBJECTIVES)
    elif "objective" in recipe:
        _fail("recipe.objective", f"is set, but only method 'optimal' has one, not {method!r}")
    proportion = recipe.get("proportion", 1.0)
    if type(proportion) not in (int, float) or not 0 <= proportion <= 1:
        _fail("recipe.proportion", f"is {_show(proportion)}, expected a number from 0 to 1")
    return method, level, objective, float(proportion)


def _read_lut(value: Any) -> LUT:
    obj = _object(value, "", ("type",), _LUT_KEYS_1 + _LUT_KEYS_2 + _ROWS + _LUT_OPTIONAL)
    if obj["type"] != _LUT_TYPE:
        _fail("type", f"is {_show(obj['type'])}: this is not a rastermatch LUT")
    if "format" not in obj:
        _fail("format", "is missing")
    fmt = obj["format"]
    if type(fmt) is not int or fmt not in (1, 2):
        _fail("format", f"is {_show(fmt)}; this version reads LUT formats 1 and 2")
    multi = fmt == 2 and "pairs" in obj
    if fmt == 1:
        _object(obj, "", (*_LUT_KEYS_1, "bands"))
    elif multi:
        for key in ("source_histogram", "reference_histogram"):
            if key in obj:
                _fail(key, "is given beside pairs; a document records one pair or several")
        _object(obj, "", _LUT_KEYS_PAIRS, (*_ROWS, "detectors", "provenance"))
    else:
        _object(obj, "", _LUT_KEYS_2, (*_ROWS, "detectors", "provenance"))
    if fmt == 2 and "provenance" in obj and not isinstance(obj["provenance"], Mapping):
        _fail("provenance", f"is {_show(obj['provenance'])}, expected an object")
    version = obj["rastermatch_version"]
    if not isinstance(version, str) or len(version) > 100:
        _fail("rastermatch_version", f"is {_show(version)}, expected a version string")
    methods, levels = _recipe_options()
    if fmt == 1:
        method = _string(obj["method"], "method", (*methods[:1], "interp"))
        level = _string(obj["levels"], "levels", levels)
        objective, proportion = None, 1.0
    else:
        method, level, objective, proportion = _read_recipe(obj["recipe"], methods, levels)
    dtype = _dtype(obj["dtype"], "dtype")
    if multi:
        if method != "optimal":
            _fail("recipe.method", f"is {method!r}, but a LUT of several pairs is 'optimal'")
        if proportion != 1.0:
            _fail("recipe.proportion", "is set, but a LUT of several pairs has no blend")
        pairs = _read_pairs(obj["pairs"])
        src = pairs[0][0]
        src_key = _at("pairs[0].source", _rows_key(obj["pairs"][0]["source"]))
    else:
        hists = []
        for key in ("source_histogram", "reference_histogram"):
            if obj[key] is None and fmt == 1:
                _fail(key, "is null: a LUT without its histograms cannot be checked")
            hists.append(_read_histogram(obj[key], key, (fmt,), need_pixels=True))
        src, ref = hists
        src_key = _at("source_histogram", _rows_key(obj["source_histogram"]))
        if ref.rows.size != src.rows.size:
            ref_key = _rows_key(obj["reference_histogram"])
            _fail(
                _at("reference_histogram", ref_key),
                f"has {ref.rows.size} {ref_key}, but {src_key} has {src.rows.size}",
            )
    rows = _read_rows_of(obj, "", src.rows.size)
    if not rows.same_as(src.rows):
        _fail(_rows_key(obj), f"differ from {src_key}")
    nodata = _representable(_number_or_null(obj["nodata"], "nodata"), src.binning.dtype, "nodata")
    out_nodata = _representable(
        _number_or_null(obj["out_nodata"], "out_nodata"), dtype, "out_nodata"
    )
    stored = _read_table(obj, src.binning, dtype) if fmt == 1 else None

    from .lut import LUT
    from .optimal import fit_multi

    if multi:
        # the rebuild is fit_multi itself, on what the document records
        lut = _build(
            lambda: fit_multi(
                [(s, r) for s, r, _ in pairs],
                objective=objective,
                weights=[w for *_, w in pairs],
                levels=level,
                dtype=dtype,
                nodata=nodata,
                out_nodata=out_nodata,
            ),
            "pairs",
        )
    else:
        lut = _build(
            lambda: LUT.from_histograms(
                src,
                ref,
                method=method,
                levels=level,
                dtype=dtype,
                nodata=nodata,
                out_nodata=out_nodata,
                objective=objective,
                proportion=proportion,
            ),
            "",
        )
    if "detectors" in obj:
        detectors = _read_detectors(obj["detectors"])
        lut = _build(lambda: replace(lut, detectors=detectors), "detectors")
    if stored is not None:
        if stored.shape != lut.table.shape:
            _fail(
                "table",
                f"was built by rastermatch {version}'s rule for {src.binning.kind} "
                "binning, which this version replaces, so it cannot be checked",
            )
        if not np.array_equal(stored, lut.table):
            _fail(
                "table",
                "does not match the histograms stored with it (the file was modified "
                "after it was written)",
            )
    return lut


def _read_detectors(value: Any) -> Any:
    """The ``detectors`` field: a detector layout, every field checked."""
    from ._detectors import Detectors
    from .errors import OptionError

    if not isinstance(value, Mapping):
        _fail("detectors", f"is {_show(value)}, expected a detector layout object")
    try:
        return Detectors.from_dict(value)
    except OptionError as e:
        _fail("detectors", f"is refused: {e}")


# the keys beside "bands" (format 1), or "bands" or "rows" (format 2)
_LUT_KEYS_2 = (
    "type", "format", "rastermatch_version", "recipe", "dtype", "nodata", "out_nodata",
    "source_histogram", "reference_histogram",
)  # fmt: skip
_LUT_KEYS_1 = (
    "type", "format", "rastermatch_version", "method", "levels", "kind", "dtype", "nodata",
    "out_nodata", "source_binning", "table", "source_histogram", "reference_histogram",
)  # fmt: skip
# optional fields of format 2 (a GeoTIFF's LUT sidecar may carry provenance fields too large
# for the raster's header: rastermatch.provenance)
_LUT_OPTIONAL = ("detectors", "pairs", "provenance")
# a LUT of several pairs: "pairs" instead of the two histograms
_LUT_KEYS_PAIRS = (*_LUT_KEYS_2[:-2], "pairs")


def _read_pairs(value: Any) -> list[tuple[Histogram, Histogram, float]]:
    """The ``pairs`` field: ``(source, reference, weight)`` of 2 to MAX_PAIRS pairs, every
    source binned as the first, every reference too, each binning compared before the
    histogram's arrays are made, all of them together within twice MAX_CELLS cells."""
    seq = _sequence(value, "pairs", "objects")
    if not 2 <= len(seq) <= MAX_PAIRS:
        _fail(
            "pairs",
            f"has {len(seq):,} entries, expected 2..{MAX_PAIRS:,} (source, reference) pairs (a "
            "LUT of one pair records it in source_histogram and reference_histogram)",
        )
    entries = [
        _object(entry, _at("pairs", j), ("source", "reference", "weight"))
        for j, entry in enumerate(seq)
    ]
    weights = []
    for j, entry in enumerate(entries):
        w, where = entry["weight"], _at(_at("pairs", j), "weight")
        if type(w) not in (int, float) or (type(w) is int and not _fits_float(w)):
            _fail(where, f"is {_show(w)}, expected a finite number >= 0")
        if not (math.isfinite(w) and w >= 0):
            _fail(where, f"is {_show(float(w))}, expected a finite number >= 0")
        weights.append(float(w))
    if not any(w > 0 for w in weights):
        _fail("pairs", "has weights that are all zero; give at least one pair a positive weight")
    if not math.isfinite(sum(weights)):  # the float64 search adds them up
        _fail("pairs", "has weights adding up to more than float64 holds")
    pairs: list[tuple[Histogram, Histogram, float]] = []
    for j, entry in enumerate(entries):
        hists = []
        for i, side in enumerate(("source", "reference")):
            where = _at(_at("pairs", j), side)
            doc = entry[side]
            if j and isinstance(doc, Mapping) and "binning" in doc:
                first = (pairs[0][0], pairs[0][1])[i].binning
                kind, dtype, nbins, lo, hi = _read_binning(
                    doc["binning"], _at(where, "binning"), None
                )
                same = (
                    kind == first.kind
                    and dtype == first.dtype
                    and nbins == first.nbins
                    and np.array_equal(lo, first.lo)
                    and np.array_equal(hi, first.hi)
                )
                if not same:
                    _fail(
                        _at(where, "binning"),
                        f"differs from pairs[0].{side}.binning; every {side} of a LUT of "
                        "several pairs has the same binning",
                    )
            hists.append(_read_histogram(doc, where, (2,), need_pixels=True))
        src, ref = hists
        if j == 0:
            if ref.rows.size != src.rows.size:
                _fail(
                    "pairs[0].reference",
                    f"has {ref.rows.size} rows, but pairs[0].source has {src.rows.size}",
                )
            cells = len(entries) * (src.nbands * src.binning.nbins + ref.nbands * ref.binning.nbins)
            if cells > 2 * MAX_CELLS:
                _fail(
                    "pairs",
                    f"hold {cells:,} histogram cells ({len(entries):,} pairs of "
                    f"{src.nbands} x {src.binning.nbins:,} and {ref.nbands} x "
                    f"{ref.binning.nbins:,}), more than the {2 * MAX_CELLS:,} a document may "
                    "(2 x rastermatch.schema.MAX_CELLS)",
                )
        pairs.append((src, ref, weights[j]))
    return pairs


def _read_table(obj: Mapping[str, Any], binning: Binning, dtype: np.dtype) -> np.ndarray:
    """A format-1 run-length encoded table, checked against the source histogram's binning."""
    parts = _read_binning(obj["source_binning"], "source_binning", binning.nbands)
    kind, bdtype, nbins, lo, hi = parts
    same = (
        kind == binning.kind
        and bdtype == binning.dtype
        and nbins == binning.nbins
        and np.array_equal(lo, binning.lo)
        and np.array_equal(hi, binning.hi)
    )
    if not same:
        _fail("source_binning", "differs from source_histogram.binning")
    table_kind = _string(obj["kind"], "kind", ("table", "piecewise"))
    width = nbins + (table_kind == "piecewise")
    rows = _sequence(obj["table"], "table", "objects")
    _length(rows, "table", binning.nbands, f"there are {binning.nbands} bands")
    table_dtype = np.dtype(np.float64) if table_kind == "piecewise" else dtype
    decoded = [
        _run_length_decode(row, _at("table", b), width, table_dtype) for b, row in enumerate(rows)
    ]
    return np.stack(decoded)


def _run_length(row: np.ndarray) -> dict[str, list[Any]]:
    """``{"start": [...], "value": [...]}``: the positions where the value changes (format 1)."""
    change = np.flatnonzero(np.concatenate([[True], row[1:] != row[:-1]]))
    return {"start": change.tolist(), "value": row[change].tolist()}


def _run_length_decode(row: Any, where: str, width: int, dtype: np.dtype) -> np.ndarray:
    obj = _object(row, where, ("start", "value"))
    start = _integers(obj["start"], _at(where, "start"), 0, width - 1)
    value = _floats(obj["value"], _at(where, "value"))
    _length(value, _at(where, "value"), start.size, f"{_at(where, 'start')} has {start.size}")
    if start.size == 0 or start[0] != 0:
        _fail(_at(where, "start"), "must begin with 0")
    bad = np.flatnonzero(np.diff(start) <= 0)
    if bad.size:
        _fail(_at(_at(where, "start"), int(bad[0]) + 1), "is not above the start before it")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        bad = np.flatnonzero((value != np.rint(value)) | (value < info.min) | (value > info.max))
        if bad.size:
            i = int(bad[0])
            _fail(_at(_at(where, "value"), i), f"is {_show(float(value[i]))}, not a {dtype} value")
    lengths = np.diff(np.append(start, width))
    with np.errstate(over="ignore"):  # floats beyond float32: inf, then unequal to the rebuild
        return np.repeat(value, lengths).astype(dtype)


def _lut_fix(doc: Any) -> str:
    """How to fix a bad LUT document: a per-detector one (a ``detectors`` field, or rows whose
    last dim is ``detector``) is made by destripe, every other one by fit."""
    if isinstance(doc, Mapping):
        rows = doc.get("rows")
        last = rows[-1] if isinstance(rows, list) and rows else None
        if "detectors" in doc or (isinstance(last, Mapping) and last.get("dim") == "detector"):
            return _DETECTOR_LUT_FIX
    return _LUT_FIX


def _lut_error(source: str, doc: list[Any] | None = None) -> Callable[[_Invalid], Exception]:
    """``doc``: a list holding the document once parsed (it picks the fix), or None."""

    def error(e: _Invalid) -> Exception:
        fix = _lut_fix(doc[0] if doc else None)
        if not e.where and e.problem.startswith(("is not", "is nested", "contains")):
            return LUTFileError(f"{source} {e.problem}; {fix}")
        return LUTFileError(f"{source}: {e.sentence()}; {fix}")

    return error


def lut_from_dict(d: Any) -> LUT:
    """A LUT rebuilt from its document (format 1 or 2); LUTFileError when it is not valid.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import LUT, band_histograms
    >>> h = band_histograms(np.array([[1, 2, 2, 3]], dtype=np.uint16))
    >>> doc = LUT.from_histograms(h, h).to_dict()
    >>> LUT.from_dict(doc).table[0, 1:4].tolist()
    [1, 2, 3]
    >>> doc["source_histogram"]["binning"]["lo"][0] = -1e15
    >>> LUT.from_dict(doc)
    Traceback (most recent call last):
    ...
    rastermatch.errors.LUTFileError: LUT document: source_histogram.binning.lo[0] is -1e15, but ...
    """
    return _checked(lambda: _read_lut(d), _lut_error("LUT document", [d]))


# -- files ------------------------------------------------------------------------------------


def load_lut(path: str | os.PathLike[str]) -> LUT:
    """Read and rebuild a LUT file; every problem is a LUTFileError naming the file."""
    path = Path(path)
    name = f"LUT file {path}"
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise LUTFileError(f"{name} is a directory, not a LUT file; pass the .json file")
        if info.st_size > MAX_DOCUMENT_BYTES:
            raise LUTFileError(
                f"{name} is {info.st_size:,} bytes, more than the {MAX_DOCUMENT_BYTES:,} a LUT "
                f"file can be; {_LUT_FIX}"
            )
        with open(path, "rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)  # a device or a growing file stops here
    except FileNotFoundError:
        raise LUTFileError(f"{name} does not exist; check the path") from None
    except OSError as e:
        raise LUTFileError(f"{name} cannot be read: {e.strerror or e}") from None
    except MemoryError:
        raise LUTFileError(f"{name} is too large to read into memory") from None
    parsed: list[Any] = []

    def read() -> LUT:
        parsed.append(parse_json(data))
        return _read_lut(parsed[0])

    return _checked(read, _lut_error(name, parsed))


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b)
    return False


def _real(path: Any) -> Path:
    # os.path.realpath, not Path.resolve: it neither stats the result nor raises on a loop
    return Path(os.path.realpath(Path(path).expanduser()))


def _refuse_inputs(final: Path, inputs: Iterable[Any]) -> None:
    target = _real(final)
    for source in inputs:
        if source is None:
            continue
        resolved = _real(source)
        inside = target.is_relative_to(resolved) and resolved.is_dir()
        if resolved == target or inside or _same_file(final, resolved):
            raise RasterWriteError(
                f"refusing to write LUT file {final}: it would overwrite the input {source}; "
                "write the LUT to another path"
            )


def _check_target(final: Path, *, overwrite: bool, inputs: Iterable[Any]) -> None:
    """The output checks every writer makes (io's: name length, directory, inputs, exists)."""
    from .io import check_output_path

    inputs = list(inputs)
    check_output_path(final, inputs=inputs, overwrite=overwrite, kind="file")
    _refuse_inputs(final, inputs)  # also hard links to an input, and any input directory


def save_lut(
    lut: LUT, path: str | os.PathLike[str], *, overwrite: bool = False, inputs: Iterable[Any] = ()
) -> Path:
    """Write ``lut`` to ``path`` atomically (temporary sibling, then a rename).

    ``inputs`` (paths the job read) are never written over, whatever ``overwrite`` says; an
    existing ``path`` only with ``overwrite``. The same LUT always gives the same bytes.
    """
    final = Path(path)
    try:
        _check_target(final, overwrite=overwrite, inputs=inputs)
    except RastermatchError:
        raise
    except OSError as e:  # a path the file system refuses to even look at (too long, loops)
        raise RasterWriteError(f"cannot write LUT file {final}: {e.strerror or e}") from e
    for hist, key in ((lut.source_hist, "source"), (lut.reference_hist, "reference")):
        if hist is not None and hist.nbands * hist.binning.nbins > MAX_CELLS:
            noun = "band" if hist.rows.dims == ("band",) else "row"
            raise LUTFileError(
                f"cannot write LUT file {final}: the {key} histogram has {hist.nbands} {noun}(s) "
                f"of {hist.binning.nbins:,} bins, more than the {MAX_CELLS:,} a LUT file may "
                "hold, so it could not be read back; fit with fewer bins (65,536 by default) "
                "or raise rastermatch.schema.MAX_CELLS"
            )
    data = _dumps(lut_to_dict(lut)).encode()  # before anything touches the disk
    if lut.pairs is not None:  # checked by lut_to_dict
        s, r, _ = lut.pairs[0]
        cells = len(lut.pairs) * (s.nbands * s.binning.nbins + r.nbands * r.binning.nbins)
        if cells > 2 * MAX_CELLS:
            raise LUTFileError(
                f"cannot write LUT file {final}: its {len(lut.pairs):,} pairs' histograms hold "
                f"{cells:,} cells, more than the {2 * MAX_CELLS:,} a LUT file may hold, so it "
                "could not be read back; fit with fewer bins or fewer pairs, or raise "
                "rastermatch.schema.MAX_CELLS"
            )
    # io's temporaries: named by pid and host (shortened with a hash for long names), so a save
    # killed outright (SIGKILL) leaves one that the next save of the same file removes
    from .io import move_into_place, remove_stale_temporaries, temporary_sibling
    from .io.atomic import write_new_file

    remove_stale_temporaries(final)
    tmp = temporary_sibling(final)
    try:
        write_new_file(tmp, data)
        move_into_place(tmp, final, overwrite=overwrite)
    except RastermatchError:
        _remove(tmp)
        raise
    except OSError as e:
        _remove(tmp)
        raise RasterWriteError(
            f"cannot write LUT file {final}: {e.strerror or e}; check the disk space and the "
            "permissions of its directory"
        ) from e
    except BaseException:  # KeyboardInterrupt, SystemExit: nothing may stay behind
        _remove(tmp)
        raise
    return final


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
