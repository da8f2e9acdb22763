"""Applying a LUT: compiled block kernels and their lazy dask wrapper.

Step three of the data flow. Each block is mapped by a GIL-free compiled loop, so dask threads
apply blocks in parallel. The LUT reaches the dask graph once: every task gets the table rows of
its row chunk (and, for a per-detector LUT, of the detectors its lines or columns touch), one
(table, ranges) pair shared by every block that needs the same rows, never the whole LUT in a
closure. On local schedulers the pair is a literal argument (zero-copy, and no root task that
dask's local scheduler would start only after the reads); built for a ``dask.distributed``
client it is a key of its own, which the scheduler sends once and each worker fetches once
instead of once per task. numpy input is mapped by local threads, piece by piece
(:func:`~rastermatch._data.thread_pieces`), straight into one output array.

The data's rows meet the LUT's through :meth:`Rows.index_for <rastermatch._rows.Rows.index_for>`:
a LUT fitted per band maps every date of a ``(time, band, y, x)`` stack, a LUT with a row per
(date, band) maps each date's bands with their own tables. A per-detector LUT (its last row dim
``detector``, :func:`rastermatch.fit_detectors`) maps pixel ``(r, i, j)`` with the table of row
``r``'s base row and of the detector of line ``i`` (or column ``j``), the data's detectors
meeting the LUT's by label (:func:`detector_index`). A plain LUT is the one-detector case of the
same kernels.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Literal

import dask
import dask.array as da
import numba
import numpy as np
from dask._task_spec import DataNode, TaskRef
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer
from dask.layers import ArrayBlockwiseDep, ArrayValuesDep

from ._data import as_band_array, thread_pieces
from ._data import builds_for_cluster as _builds_for_cluster
from ._detectors import Detectors
from ._rows import Rows, show_label
from ._values import (
    EXACT_MAX_ITEMSIZE,
    check_nodata,
    float_bounds,
    kernel_nodata,
    nodata_fits,
    uniform_bin,
)
from .errors import (
    BandMismatchError,
    NodataConflictError,
    NodataReplacedWarning,
    OptionError,
    UnsupportedDtypeError,
)

if TYPE_CHECKING:
    from .lut import LUT

__all__ = [
    "apply_lut",
    "apply_lut_array",
    "apply_lut_by_detector",
    "base_rows",
    "detector_index",
    "lut_rows",
    "resolve_out_nodata",
    "row_index",
]

Axis = Literal["y", "x"]


# -- compiled kernels: one pass over the block, nodata and NaN handled inline --------------------
#
# Both kernels read the table row of pixel (b, i, j) as ``table[rows[b], d]``: ``rows`` names the
# table row of every block row and ``d`` the detector, ``det[i]`` per line (``by_x`` False) or
# ``det[j]`` per column (``by_x`` True). A plain LUT is the one-detector case (a detector axis of
# length 1 and ``det`` all zeros), so band and per-detector LUTs run the same loops.


# Columns mapped together when the detector changes along x: 16 table rows (128 KB for 12-bit
# uint16 levels) stay in cache while the tile runs down the block's lines.
_TILE = 16


@numba.njit(inline="always")
def _level(v, t, offset, last, clamp, nodata, has_nodata, fill):  # pragma: no cover
    """One value through one table row: ``t[v - offset]``, clamped to ``0..last`` if asked."""
    if has_nodata and v == nodata:
        return fill
    if clamp:
        return t[min(max(np.int64(v) - offset, 0), last)]
    return t[v - offset]


@numba.njit(nogil=True, cache=True)
def _apply_levels(
    block, table, rows, det, by_x, offset, clamp, nodata, has_nodata, fill, out
):  # pragma: no cover
    """``out = table[rows[b], d, v - offset]``.

    ``clamp`` for a table over a sub-range ``[lo, hi]`` of the dtype (a ranged levels binning):
    values below ``lo`` map as ``lo`` and values above ``hi`` as ``hi``. The source CDF is flat
    outside the range the fit saw, so this is what the full-dtype table would give. A table
    over the whole dtype needs no clamp (every value indexes it), and skips it.
    """
    nb, ny, nx = block.shape
    last = table.shape[2] - 1
    for b in range(nb):
        r = rows[b]
        if by_x:
            # a detector per column: a tile of columns at a time, all lines down, so that the
            # tile's table rows stay in cache (a whole line would touch a row per pixel)
            for j0 in range(0, nx, _TILE):
                for i in range(ny):
                    for j in range(j0, min(j0 + _TILE, nx)):
                        t = table[r, det[j]]
                        v = block[b, i, j]
                        out[b, i, j] = _level(v, t, offset, last, clamp, nodata, has_nodata, fill)
        elif not clamp and not has_nodata and offset == 0:
            # unsigned data through a whole-dtype table: a plain gather, indexed by the value
            # itself (no test inside the loop, no negative-index wrap of ``v - offset``)
            for i in range(ny):
                t = table[r, det[i]]
                for j in range(nx):
                    out[b, i, j] = t[block[b, i, j]]
        else:
            for i in range(ny):
                t = table[r, det[i]]
                for j in range(nx):
                    v = block[b, i, j]
                    out[b, i, j] = _level(v, t, offset, last, clamp, nodata, has_nodata, fill)


@numba.njit(inline="always")
def _interval(f, tb, cb, lo, scale, is_int, out_lo, out_hi):  # pragma: no cover
    """One valid value ``f`` through one row's interval table ``tb`` (``cb``: its one-value
    bins, NaN elsewhere; ``lo``, ``scale``: its binning)."""
    nbins = cb.shape[0]
    k = uniform_bin(f, lo, scale, nbins)
    c = cb[k]
    if c == c:
        return c
    smin = tb[k, 0]
    smax = tb[k, 1]
    olo = tb[k, 2]
    ohi = tb[k, 3]
    if olo == ohi or smin >= smax:  # a NaN olo lands here
        r = olo
    elif olo == smin and ohi == smax:
        r = min(max(f, smin), smax)  # the identity, exactly
    elif f <= smin:
        r = olo
    elif f >= smax:
        r = ohi
    else:
        r = olo + (f - smin) * (ohi - olo) / (smax - smin)
        r = min(max(r, olo), ohi)
    if is_int:
        r = min(max(np.rint(r), out_lo), out_hi)
    return r


@numba.njit(nogil=True, cache=True)
def _apply_intervals(
    block, table, lohi, rows, det, by_x, nodata, has_nodata, fill, is_int, out_lo, out_hi, out
):  # pragma: no cover
    """Map each value through its bin's interval row ``(smin, smax, olo, ohi)``.

    The bin index is clamped by :func:`uniform_bin`, so no input reads outside the table. Bins
    whose output is one value (``olo == ohi`` or ``smin >= smax``: most bins of quantised data)
    are first resolved, for every (row, detector) the block uses, into ``const`` (NaN for the
    others), a table of one float per bin instead of four, so their pixels read 8 bytes and
    take no further branch.
    """
    nb, ny, nx = block.shape
    ndet, nbins = table.shape[1], table.shape[2]
    used = np.zeros(ndet, dtype=np.bool_)
    for d in det:
        used[d] = True
    const = np.empty((nb, ndet, nbins), dtype=np.float64)  # only the used detectors touched
    scale = np.zeros((nb, ndet), dtype=np.float64)
    for b in range(nb):
        r = rows[b]
        for d in range(ndet):
            if not used[d]:
                continue
            for k in range(nbins):
                olo = table[r, d, k, 2]
                if olo == table[r, d, k, 3] or table[r, d, k, 0] >= table[r, d, k, 1]:
                    c = olo
                    if is_int:
                        c = min(max(np.rint(c), out_lo), out_hi)
                    const[b, d, k] = c
                else:
                    const[b, d, k] = np.nan
            lo, hi = lohi[r, d, 0], lohi[r, d, 1]
            scale[b, d] = nbins / (hi - lo) if hi > lo else 0.0
    tile = _TILE if by_x else max(nx, 1)  # columns at a time (see _apply_levels)
    for b in range(nb):
        r = rows[b]
        for j0 in range(0, nx, tile):
            for i in range(ny):
                d = 0 if by_x else det[i]
                for j in range(j0, min(j0 + tile, nx)):
                    if by_x:
                        d = det[j]
                    v = block[b, i, j]
                    f = np.float64(v)
                    if (has_nodata and v == nodata) or f - f != 0.0:  # nodata, NaN, infinite
                        out[b, i, j] = fill
                    else:
                        out[b, i, j] = _interval(
                            f, table[r, d], const[b, d], lohi[r, d, 0], scale[b, d], is_int,
                            out_lo, out_hi,
                        )  # fmt: skip


# -- block function ---------------------------------------------------------------------------


def apply_block(
    block: np.ndarray,
    table: np.ndarray,
    lohi: np.ndarray,
    det: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    *,
    kind: str,
    offset: int,
    nodata: Any,
    out_nodata: Any,
    out_dtype: np.dtype,
    axis: Axis = "y",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Map one ``(row, y, x)`` block through the table rows it needs.

    ``table`` holds one table per row, ``(row, nbins)`` (``kind="table"``) or ``(row, nbins,
    4)`` (``kind="interval"``), or one per (row, detector), ``(row, detector, nbins[, 4])``;
    ``lohi`` the bin ranges, ``(row, 2)`` or ``(row, detector, 2)``. ``rows`` names the table
    row of every block row (default: in order); ``det`` the table's detector of every line
    (``axis="y"``) or column (``axis="x"``) of the block (default: detector 0). ``out``, when
    given, receives the result (a view of a larger output, say).
    """
    dtype = np.dtype(out_dtype)
    nd, has_nd = kernel_nodata(block, nodata)
    if out is None:
        out = np.empty(block.shape, dtype=dtype)
    if out_nodata is None:
        fill = dtype.type(np.nan) if dtype.kind == "f" else dtype.type(0)
    else:
        fill = dtype.type(out_nodata)
    if table.ndim == (2 if kind == "table" else 3):  # one table per row: one detector
        table, lohi = table[:, None], lohi[:, None]
    by_x = axis == "x"
    nb, ny, nx = block.shape
    rows = np.arange(nb, dtype=np.intp) if rows is None else np.asarray(rows, dtype=np.intp)
    det = np.zeros(nx if by_x else ny, np.intp) if det is None else np.asarray(det, np.intp)
    _check_block(block, table, lohi, rows, det, kind=kind, by_x=by_x)
    if kind == "table":
        info = np.iinfo(block.dtype)
        clamp = offset != int(info.min) or table.shape[2] != int(info.max) - int(info.min) + 1
        if has_nd and not clamp and offset == 0 and _fold_nodata(table, block, dtype):
            # unsigned data, a whole-dtype table: the nodata level maps to the fill in a copy
            # of the (small) table, and the kernel runs its plain gather
            table = table.copy()
            table[:, :, int(nd)] = fill
            has_nd = False
        _apply_levels(block, table, rows, det, by_x, offset, clamp, nd, has_nd, fill, out)
        return out
    out_lo, out_hi = float_bounds(dtype) if dtype.kind in "iu" else (-np.inf, np.inf)
    is_int = dtype.kind in "iu"
    _apply_intervals(
        block, table, lohi, rows, det, by_x, nd, has_nd, fill, is_int, out_lo, out_hi, out
    )
    return out


def _fold_nodata(table: np.ndarray, block: np.ndarray, dtype: np.dtype) -> bool:
    """Whether copying ``table`` to fold the nodata level in costs little next to the block
    (one detector, a table an eighth of the block at most) and keeps the output dtype."""
    return table.shape[1] == 1 and table.dtype == dtype and table.nbytes * 8 <= block.nbytes


def _check_block(
    block: np.ndarray,
    table: np.ndarray,
    lohi: np.ndarray,
    rows: np.ndarray,
    det: np.ndarray,
    *,
    kind: str,
    by_x: bool,
) -> None:
    """The kernels index without bounds checks: every index they will use is checked here."""
    if kind == "table":
        if block.dtype.kind not in "iu" or block.dtype.itemsize > EXACT_MAX_ITEMSIZE:
            raise UnsupportedDtypeError(
                f"a level table cannot map {block.dtype} data; fit the LUT on data of this dtype"
            )
        shape_ok = table.ndim == 3 and table.shape[2] >= 1
    else:
        shape_ok = table.ndim == 4 and table.shape[2] >= 1 and table.shape[3] == 4
    if not shape_ok or lohi.shape != (*table.shape[:2], 2):
        raise BandMismatchError(
            f"a {kind} of shape {table.shape} (ranges {lohi.shape}) cannot map a block of shape "
            f"{block.shape}"
        )
    n = block.shape[2] if by_x else block.shape[1]
    if rows.shape != block.shape[:1] or det.shape != (n,):
        raise BandMismatchError(
            f"{rows.shape[0]} row indices and {det.shape[0]} detector indices for a block of "
            f"shape {block.shape}"
        )
    for what, index, size in (("row", rows, table.shape[0]), ("detector", det, table.shape[1])):
        if index.size and (index.min() < 0 or index.max() >= size):
            raise BandMismatchError(
                f"a {what} index outside 0..{size - 1} for a table of shape {table.shape}"
            )


def block_arguments(
    lut: LUT, *, nodata: Any, out_nodata: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """What :func:`apply_block` needs besides the block: table rows, ranges and options."""
    b = lut.source_binning
    kwargs = dict(
        kind=lut.kind,
        offset=b.offset if b.kind == "levels" else 0,
        nodata=nodata,
        out_nodata=out_nodata,
        out_dtype=lut.dtype,
    )
    return lut.table, np.stack([b.lo, b.hi], axis=1), kwargs


# -- which LUT row maps which data row ------------------------------------------------------


def lut_rows(lut: LUT) -> Rows:
    """The LUT's rows (a band dim for a LUT that records only band labels)."""
    rows = getattr(lut, "rows", None)
    return rows if isinstance(rows, Rows) else Rows.bands(lut.bands)


def base_rows(lut: LUT) -> Rows:
    """The LUT's rows without its ``detector`` dim (a per-detector LUT's bands, dates, ...);
    all its rows for a LUT without one."""
    rows = lut_rows(lut)
    if rows.dims and rows.dims[-1] == "detector":
        return Rows(rows.dims[:-1], rows.coords[:-1])
    return rows


def row_index(lut: LUT, rows: Rows, name: str, *, labelled: bool = True) -> np.ndarray | None:
    """For every data row, the LUT row that maps it; None when that is the LUT's own order.

    Dims both have are aligned by label, dims only the data has share the LUT's rows (a band
    LUT maps every date); dims only the LUT has must be of length 1. Data without labels of
    its own (numpy, dask) must have as many bands as the LUT: its band numbers are positions.
    For a per-detector LUT the rows are its base rows (:func:`base_rows`): the detector of a
    pixel is its line's or column's, not its row's.
    """
    have = base_rows(lut) if getattr(lut, "detectors", None) is not None else lut_rows(lut)
    if have.dims and have.dims[-1] == "detector" and "detector" not in rows.dims:
        n = len(have.coord("detector"))
        raise BandMismatchError(
            f"this LUT has per-detector rows ({n} detectors) but no detector layout, so the "
            f"detector of each line of {name} is unknown (a LUT file lacking its 'detectors' "
            "field); recreate it with `rastermatch destripe ... --lut` or "
            "rastermatch.fit_detectors"
        )
    if not labelled and "band" in have.dims and "band" in rows.dims:
        n, m = len(rows.coord("band")), len(have.coord("band"))
        if n != m:
            raise BandMismatchError(
                f"{name} has {n} bands and the LUT {m}; select the bands the LUT was fitted on"
            )
    index = have.index_for(rows, names=("the LUT", name))
    if index.size == have.size and np.array_equal(index, np.arange(have.size)):
        return None
    return index


def _check_layout_fits(lut: LUT, layout: Detectors) -> None:
    """Refuse a ``detectors=`` layout that does not describe the LUT's detectors: another
    axis, or a periodic layout whose labels ``0..count-1`` are not the LUT's detectors (another
    count). Another offset is fine: a later scene whose first line is another detector."""
    own = lut.detectors
    fix = (
        f"pass a layout of the LUT's ({own.describe()}), e.g. "
        f"Detectors.of({own.count}, axis={own.axis!r}, offset=...), or fit a LUT for this layout"
        if own.periodic
        else "pass a layout along the LUT's axis with its detector labels, or fit a LUT for it"
    )
    problem = None
    if layout.axis != own.axis:
        problem = "another axis"
    elif layout.periodic:
        have = lut_rows(lut).coord("detector")
        if tuple(have) != tuple(range(layout.count)):  # type: ignore[arg-type]
            problem = "another number of detectors" if own.periodic else "other detectors"
    if problem is not None:
        raise BandMismatchError(
            f"the layout detectors= ({layout.describe()}) does not fit this LUT, fitted for "
            f"{own.describe()}: {problem}; {fix}"
        )


def detector_index(
    lut: LUT, layout: Detectors, size: int, name: str, *, own: bool = False
) -> np.ndarray:
    """The LUT detector (position on its ``detector`` dim) of every line or column of data
    ``size`` lines (columns) long laid out as ``layout``: the data's detectors meet the LUT's
    by label, so a scene whose first line is another detector maps right. ``own``: the layout
    is the LUT's own (its labels are the LUT's, not the caller's)."""
    try:
        positions, labels = layout.resolve(size, name)
    except OptionError:
        if not own or layout.labels is None:
            raise
        what = "lines" if layout.axis == "y" else "columns"
        raise BandMismatchError(
            f"this LUT's layout has {len(layout.labels)} detector labels, one per "
            f"{what[:-1]} of the scene it was fitted on, and {name} has {size} {what}; apply it to "
            "scenes of that size, or pass detectors= with one label per "
            f"{what[:-1]} of {name}"
        ) from None
    have = lut_rows(lut).coord("detector")
    lookup: dict[Hashable, int] = {}
    for i, v in enumerate(have):
        lookup.setdefault(v, i)
    to_lut = np.array([lookup.get(v, -1) for v in labels], dtype=np.int64)
    missing = np.flatnonzero(to_lut < 0)
    if missing.size:
        m = int(missing[0])
        at = int(np.flatnonzero(positions == m)[0])
        what = "line" if layout.axis == "y" else "column"
        shown = ", ".join(show_label(v) for v in have[:8]) + (", ..." if len(have) > 8 else "")
        raise BandMismatchError(
            f"{what} {at} of {name} is detector {show_label(labels[m])}, which the LUT has no "
            f"table for (its detectors: {shown}); apply it to scenes of the detector layout it "
            "was fitted on, or fit a LUT on this scene"
        )
    return to_lut[positions]


# -- whole arrays -------------------------------------------------------------------------------


def _check_levels_dtype(array: np.ndarray | da.Array, lut: LUT) -> None:
    b = lut.source_binning
    if b.kind == "levels" and array.dtype != b.dtype:
        raise UnsupportedDtypeError(
            f"this LUT was fitted on {b.dtype} data and cannot map {array.dtype} data; fit a LUT "
            f"on {array.dtype} data, or convert the data to {b.dtype} first"
        )


def table_rows(
    array: Any, lut: LUT, index: np.ndarray | None, *, nodata: Any, out_nodata: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray]:
    """The table, its level ranges and kernel arguments of ``lut``, and the LUT row of every
    row of ``array`` (``index``, default the LUT's rows in order), checked against ``array``."""
    _check_levels_dtype(array, lut)
    table, lohi, kwargs = block_arguments(lut, nodata=nodata, out_nodata=out_nodata)
    rows = np.arange(table.shape[0]) if index is None else np.asarray(index, dtype=np.int64)
    if array.shape[0] != rows.size:
        raise BandMismatchError(
            f"the data has {array.shape[0]} bands and the LUT {table.shape[0]}; select the "
            "bands the LUT was fitted on"
        )
    return table, lohi, kwargs, rows


def apply_lut_array(
    array: np.ndarray | da.Array,
    lut: LUT,
    *,
    nodata: Any = None,
    out_nodata: Any = None,
    index: np.ndarray | None = None,
) -> np.ndarray | da.Array:
    """Map a ``(row, y, x)`` numpy or dask array through ``lut``; lazy for dask input.

    ``index`` names the LUT row of every data row (:func:`row_index`); default the LUT's rows
    in order. numpy input is mapped by local threads; dask output keeps the input's chunks.
    The output dtype is ``lut.dtype``. A per-detector LUT is applied with
    :func:`apply_lut_by_detector`.
    """
    if getattr(lut, "detectors", None) is not None:
        raise BandMismatchError(
            f"this LUT has a table per detector ({lut.detectors.describe()}); apply it with "
            "lut.apply(data) or apply_lut_by_detector"
        )
    table, lohi, kwargs, rows = table_rows(array, lut, index, nodata=nodata, out_nodata=out_nodata)
    # one detector: a detector axis of length 1, every line detector 0
    return _map_rows(array, table[:, None], lohi[:, None], rows, None, "y", kwargs)


def apply_lut_by_detector(
    array: np.ndarray | da.Array,
    lut: LUT,
    *,
    detector_index: np.ndarray,
    axis: Axis,
    row_index: np.ndarray | None = None,
    nodata: Any = None,
    out_nodata: Any = None,
) -> np.ndarray | da.Array:
    """Map a ``(row, y, x)`` array through a per-detector LUT; lazy for dask input.

    Pixel ``(r, i, j)`` is mapped by LUT row ``row_index[r] * ndet + detector_index[i]``
    (``axis="y"``, a detector per line) or ``... + detector_index[j]`` (``axis="x"``, per
    column), ``ndet`` the length of the LUT's last row dim, ``detector``.

    Parameters
    ----------
    array
        numpy or dask ``(row, y, x)``; numpy is mapped by local threads, dask lazily with the
        input's chunks, every task holding only the table rows of its rows and of the
        detectors its lines (columns) touch.
    lut
        A LUT whose last row dim is ``detector`` (:func:`rastermatch.fit_detectors`).
    detector_index
        For every line (``axis="y"``) or column (``axis="x"``) of the full image, the
        position of its detector on the LUT's ``detector`` dim (:func:`detector_index`).
    row_index
        For every data row, the LUT's base row (bands, dates, ... without the detector);
        default the LUT's base rows in order.
    nodata, out_nodata
        Pixels equal to ``nodata`` (and NaN) become ``out_nodata`` (default 0, NaN for
        floats), as in :func:`apply_lut_array`.

    Examples
    --------
    Two detectors along y on alternate lines; detector 1 reads one level low.

    >>> import numpy as np
    >>> from rastermatch import LUT
    >>> from rastermatch._detectors import Detectors
    >>> from rastermatch._rows import Rows
    >>> from rastermatch.histogram import Binning
    >>> levels = np.arange(256, dtype=np.uint8)
    >>> table = np.stack([levels, np.minimum(levels, 254) + 1])
    >>> rows = Rows(("band", "detector"), ((1,), (0, 1)))
    >>> lut = LUT(table, Binning.levels(np.uint8, 2), np.uint8, rows=rows,
    ...           detectors=Detectors(count=2))
    >>> data = np.full((1, 4, 3), 10, dtype=np.uint8)
    >>> out = apply_lut_by_detector(data, lut, detector_index=np.array([0, 1, 0, 1]), axis="y")
    >>> out[0, :, 0].tolist()
    [10, 11, 10, 11]
    """
    if axis not in ("y", "x"):
        raise OptionError(f"the detector axis must be 'y' or 'x', not {axis!r}")
    _check_levels_dtype(array, lut)
    have = lut_rows(lut)
    if not have.dims or have.dims[-1] != "detector":
        raise BandMismatchError(
            f"this LUT's rows {have.dims} have no 'detector' dim; apply it with lut.apply(data) "
            "or fit a per-detector LUT with rastermatch.fit_detectors"
        )
    ndet = len(have.coords[-1])
    nbase = have.size // ndet
    what = "line" if axis == "y" else "column"
    size = array.shape[1] if axis == "y" else array.shape[2]
    det = _checked_index(detector_index, size, ndet, f"detector_index (one per {what})")
    if row_index is None:
        if array.shape[0] != nbase:
            raise BandMismatchError(
                f"the data has {array.shape[0]} rows and the LUT {nbase} (without its "
                "detectors); select the bands the LUT was fitted on, or pass row_index"
            )
        rows = np.arange(nbase, dtype=np.int64)
    else:
        rows = _checked_index(row_index, array.shape[0], nbase, "row_index (one per data row)")
    table, lohi, kwargs = block_arguments(lut, nodata=nodata, out_nodata=out_nodata)
    table = table.reshape(nbase, ndet, *table.shape[1:])
    lohi = lohi.reshape(nbase, ndet, 2)
    return _map_rows(array, table, lohi, rows, det, axis, kwargs)


def _checked_index(index: Any, size: int, top: int, name: str) -> np.ndarray:
    """``index`` as int64 of ``size`` entries in ``0..top - 1``, else OptionError naming it."""
    values = np.asarray(index)
    if values.shape != (size,) or (values.size and values.dtype.kind not in "iu"):
        raise OptionError(
            f"{name} must be {size} integers, not {values.dtype} of shape {values.shape}"
        )
    values = values.astype(np.int64, copy=False)
    bad = np.flatnonzero((values < 0) | (values >= top))
    if bad.size:
        raise OptionError(
            f"{name} is {values[bad[0]]} at position {bad[0]}; the LUT has positions 0..{top - 1}"
        )
    return values


def _map_rows(
    array: np.ndarray | da.Array,
    table: np.ndarray,
    lohi: np.ndarray,
    rows: np.ndarray,
    det: np.ndarray | None,
    axis: Axis,
    kwargs: dict[str, Any],
) -> np.ndarray | da.Array:
    """Data row ``r``, line ``i``, column ``j`` through ``table[rows[r], det[i or j]]``
    (``det`` None: detector 0 everywhere).

    ``table`` is ``(base row, detector, nbins[, 4])`` and ``lohi`` ``(base row, detector, 2)``.
    numpy input: threads, each piece given the whole table (shared memory, nothing copied).
    dask input: one blockwise task per block, given its share of the table: a literal argument
    on local schedulers, a key of the graph when a distributed client is the default scheduler
    (:func:`_builds_for_cluster`).
    """
    if isinstance(array, np.ndarray):
        return _apply_threaded(array, table, lohi, rows, det, axis, kwargs)
    # 1. every row chunk needs the LUT base rows of its rows and every chunk of the detector
    #    axis the detectors of its lines (columns): the distinct ones, as a slice (a view)
    #    when they are a contiguous run, with each row's (line's) position among them.
    # 2. each distinct selection is one (table, ranges) pair shared by every task that needs
    #    it: one array object, so a pickled graph holds it once (the periodic detectors of
    #    every y chunk, the rows of every chunk along the other axis).
    # 3. local schedulers: the pair is a literal argument of its tasks. A key of its own would
    #    be a root task, which dask's local scheduler starts only after the reads a shared root
    #    released (last in, first out), so every block of a stack would be read before the
    #    first one was mapped and written.
    # 4. a distributed client: the scheduler serializes every task it sends on its own, so a
    #    literal pair travels with each task (128 KiB a band row at 65,536 levels; 8 GB at
    #    10^12 px). There the pair is a key (a root data task): sent once, held by the worker
    #    that ran it, fetched once by each worker that maps its rows. Fused with a read (a
    #    data producer) or with few pairs, the tasks stay root-ish for distributed's queuing.
    ax = 1 if axis == "y" else 2
    row_chunks = array.chunks[0]
    row_parts = [_distinct(rows[a:b]) for a, b in _edges(row_chunks)]
    if det is None:  # one table per row: nothing depends on the lines or columns
        letter, by_det, det_parts = "", (), [(slice(0, 1), None)]
    else:
        letter, by_det = "yx"[ax - 1], (array.chunks[ax],)
        det_parts = [_distinct(det[a:b]) for a, b in _edges(array.chunks[ax])]
    shared: dict[tuple[Hashable, Hashable], tuple[np.ndarray, np.ndarray]] = {}
    pairs = {}
    for i, (rsel, _) in enumerate(row_parts):
        for k, (dsel, _) in enumerate(det_parts):
            key = (_selection_key(rsel), _selection_key(dsel))
            if key not in shared:
                shared[key] = (_take(table, rsel, dsel), _take(lohi, rsel, dsel))
            pairs[(i, k) if by_det else (i,)] = key
    local_rows = {(i,): local for i, (_, local) in enumerate(row_parts)}
    per_det: list[Any] = []
    if by_det:
        local_dets = {(k,): local for k, (_, local) in enumerate(det_parts)}
        per_det = [ArrayValuesDep(by_det, local_dets), letter]
    dtype = kwargs["out_dtype"]
    token = tokenize(array, table, lohi, rows, det, axis, kwargs)
    keyed = _builds_for_cluster()
    if keyed:
        lut_name = f"rastermatch-lut-{tokenize(table, lohi, list(shared))}"
        refs = {key: TaskRef((lut_name, n)) for n, key in enumerate(shared)}
        data = {ref.key: DataNode(ref.key, shared[key]) for key, ref in refs.items()}
        at = ax if by_det else None
        tables: Any = _PairKeys(array.chunks, {b: refs[k] for b, k in pairs.items()}, at)
        table_index = "byx"
    else:
        tables = ArrayValuesDep((row_chunks, *by_det), {b: shared[k] for b, k in pairs.items()})
        table_index = "b" + letter
    out = da.blockwise(
        _apply_pair if by_det else _apply_pair_rows,
        "byx",
        array,
        "byx",
        tables,
        table_index,
        *per_det,
        ArrayValuesDep((row_chunks,), local_rows),
        "b",
        align_arrays=False,
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype),
        name=f"rastermatch-apply-{token}{'-keyed' if keyed else ''}",
        axis=axis,
        **kwargs,
    )
    if not keyed:
        return out
    graph = out.dask
    layers = {**graph.layers, lut_name: MaterializedLayer(data)}
    deps = {**graph.dependencies, lut_name: set()}
    deps[out.name] = {*deps[out.name], lut_name}
    return da.Array(HighLevelGraph(layers, deps), out.name, out.chunks, meta=out._meta)


class _PairKeys(ArrayBlockwiseDep):
    """The key of the (table, ranges) pair of every block of a ``(row, y, x)`` array, as a
    blockwise argument indexed like the blocks; ``produces_keys``: the tasks depend on them."""

    produces_keys = True

    def __init__(self, chunks: tuple[tuple[int, ...], ...], refs: dict, ax: int | None) -> None:
        super().__init__(chunks)
        self.refs, self.ax = refs, ax  # ax: the detector axis, None without detectors

    def __getitem__(self, idx: tuple[int, ...]) -> TaskRef:
        return self.refs[(idx[0],) if self.ax is None else (idx[0], idx[self.ax])]


def _apply_pair(
    block: np.ndarray,
    pair: tuple[np.ndarray, np.ndarray],
    det: np.ndarray,
    rows: np.ndarray,
    **kwargs: Any,
) -> np.ndarray:
    """:func:`apply_block` with the table and its ranges as one ``(table, lohi)`` pair."""
    return apply_block(block, pair[0], pair[1], det, rows, **kwargs)


def _apply_pair_rows(
    block: np.ndarray, pair: tuple[np.ndarray, np.ndarray], rows: np.ndarray, **kwargs: Any
) -> np.ndarray:
    """:func:`apply_block` with one table per row (no detector index)."""
    return apply_block(block, pair[0], pair[1], None, rows, **kwargs)


def _edges(chunks: tuple[int, ...]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(np.cumsum((0, *chunks)).tolist()))


def _distinct(values: np.ndarray) -> tuple[slice | np.ndarray, np.ndarray]:
    """The distinct ``values`` (a slice when they are a contiguous run) and the position of
    every value among them."""
    if values.size == 0:
        return slice(0, 0), values.astype(np.intp)
    lo, hi = int(values.min()), int(values.max())
    seen = np.zeros(hi - lo + 1, dtype=bool)
    seen[values - lo] = True
    if seen.all():
        return slice(lo, hi + 1), (values - lo).astype(np.intp)
    distinct, local = np.unique(values, return_inverse=True)
    return distinct, local.astype(np.intp)


def _selection_key(sel: slice | np.ndarray) -> Hashable:
    return (sel.start, sel.stop) if isinstance(sel, slice) else sel.tobytes()


def _take(a: np.ndarray, rsel: slice | np.ndarray, dsel: slice | np.ndarray) -> np.ndarray:
    """``a[rsel][:, dsel]``, a view when both are slices."""
    if isinstance(rsel, slice) or isinstance(dsel, slice):
        return a[rsel, dsel]
    return a[np.ix_(rsel, dsel)]


def _apply_threaded(
    array: np.ndarray,
    table: np.ndarray,
    lohi: np.ndarray,
    rows: np.ndarray,
    det: np.ndarray | None,
    axis: Axis,
    kwargs: dict[str, Any],
) -> np.ndarray:
    """numpy in: every :func:`thread_pieces` piece mapped by a thread into one output array."""
    out = np.empty(array.shape, dtype=kwargs["out_dtype"])
    pieces = thread_pieces(array.shape)
    if len(pieces) == 1:
        return apply_block(array, table, lohi, det, rows, axis=axis, out=out, **kwargs)
    tasks = [
        dask.delayed(apply_block, pure=False)(
            array[b : b + 1, s], table, lohi, det[s] if axis == "y" and det is not None else det,
            rows[b : b + 1],
            axis=axis, out=out[b : b + 1, s], **kwargs,
        )
        for b, s in pieces
    ]  # fmt: skip
    dask.compute(*tasks, scheduler="threads")
    return out


def resolve_out_nodata(lut: LUT, preferred: Any, *, may_have_invalid: bool) -> Any:
    """The output nodata value: ``preferred`` unless valid pixels are mapped onto it.

    A valid pixel never becomes nodata: when ``preferred`` is an output of the LUT, the first
    free value among the dtype's maximum, its minimum and then the value nearest ``preferred`` is
    used instead,
    with a :class:`~rastermatch.errors.NodataReplacedWarning`. Float outputs fall back to NaN.
    ``None`` is returned when no nodata is needed (no nodata input and no NaN possible).
    """
    import warnings

    dtype = lut.dtype
    if preferred is None:
        if not may_have_invalid:
            return None
        if dtype.kind == "f":
            return float("nan")
    elif dtype.kind == "f" and np.isnan(preferred):
        return float("nan")
    if preferred is not None and not nodata_fits(preferred, dtype):
        preferred = None
    if preferred is not None and not lut.output_taken(preferred):
        return preferred
    if dtype.kind == "f":
        choice: Any = float("nan")
    else:
        info = np.iinfo(dtype)
        choice = next((v for v in (info.max, info.min) if not lut.output_taken(v)), None)
        if choice is None and dtype.itemsize <= 2 and lut.kind == "table":
            free = np.setdiff1d(np.arange(info.min, info.max + 1), lut.valid_outputs())
            near = info.max if preferred is None else preferred
            choice = int(free[np.argmin(np.abs(free - near))]) if free.size else None
        if choice is None:
            raise NodataConflictError(
                f"the output nodata {preferred} is a value valid pixels are mapped to and every "
                f"{dtype} value is taken; choose a wider output dtype (dtype='uint16') or "
                "levels='present'"
            )
    if preferred is not None:
        warnings.warn(
            f"the output nodata {preferred} is also a value valid pixels are mapped to; "
            f"using {choice} as the output nodata instead",
            NodataReplacedWarning,
            stacklevel=3,
        )
    return choice


def apply_lut(
    lut: LUT,
    data: Any,
    *,
    nodata: Any = None,
    out_nodata: Any = None,
    channel_axis: int | None = None,
    detectors: Detectors | None = None,
) -> Any:
    """Map ``data`` (numpy, dask, DataArray or Dataset) through ``lut``, returning the same
    kind and layout.

    The data's rows are matched to the LUT's (:func:`row_index`): a LUT fitted per band maps
    every date of a ``(time, band, y, x)`` stack. ``nodata`` defaults to the data's
    ``.rio.nodata``, else the LUT's; ``out_nodata`` to the LUT's, else the input nodata; it is
    replaced when valid pixels are mapped onto it (see :func:`resolve_out_nodata`).
    ``channel_axis`` as in :func:`~rastermatch.match_histograms`. Lazy for dask-backed input.

    A per-detector LUT (``lut.detectors`` set) maps every line (column) with its detector's
    table: the data's layout is ``detectors`` (a :class:`~rastermatch._detectors.Detectors`,
    for a scene whose first line is another detector, say), default the LUT's own, and its
    detectors meet the LUT's by label (:func:`detector_index`).
    """
    src = as_band_array(data, nodata=nodata, name="data", channel_axis=channel_axis)
    layout = detectors if detectors is not None else getattr(lut, "detectors", None)
    if layout is not None and not isinstance(layout, Detectors):
        raise OptionError(
            f"detectors must be a rastermatch Detectors layout, not {type(layout).__name__}; "
            "build one with Detectors.of(16, axis='y', offset=0)"
        )
    if detectors is not None and getattr(lut, "detectors", None) is None:
        raise BandMismatchError(
            "detectors= is for a per-detector LUT, and this one has one table per band; "
            "fit one with rastermatch.fit_detectors"
        )
    if detectors is not None:
        _check_layout_fits(lut, detectors)
    index = row_index(lut, src.rows, src.name, labelled=src.template is not None)
    if layout is not None:
        size = src.array.shape[1 if layout.axis == "y" else 2]
        det = detector_index(lut, layout, size, src.name, own=detectors is None)
    if out_nodata is not None:
        out_nodata = check_nodata(out_nodata, lut.dtype, "the output", what="out_nodata")
    nd = src.nodata if src.nodata is not None else lut.nodata
    preferred = (
        out_nodata
        if out_nodata is not None
        else (lut.out_nodata if lut.out_nodata is not None else nd)
    )
    may_have_invalid = nd is not None or src.dtype.kind == "f"
    out_nd = resolve_out_nodata(lut, preferred, may_have_invalid=may_have_invalid)
    if layout is None:
        result = apply_lut_array(src.array, lut, nodata=nd, out_nodata=out_nd, index=index)
    else:
        result = apply_lut_by_detector(
            src.array,
            lut,
            detector_index=det,
            axis=layout.axis,
            row_index=index,
            nodata=nd,
            out_nodata=out_nd,
        )
    return src.wrap(result, nodata=out_nd)
