"""Applying a LUT: a compiled block kernel and its lazy dask wrapper.

Step three of the data flow. Each block is mapped by a GIL-free compiled loop, so dask threads
apply blocks in parallel. The LUT reaches the dask graph once, as explicit arguments: every task
gets its row chunk's rows (one view per band chunk, shared by all the blocks of those rows, so a
pickled graph holds the table once), never the whole LUT in a closure, and no task of its own
(a root task that dask's local scheduler would start only after the reads). numpy input is
mapped by local threads, piece by piece (:func:`~rastermatch._data.thread_pieces`), straight
into one output array.

The data's rows meet the LUT's through :meth:`Rows.index_for <rastermatch._rows.Rows.index_for>`:
a LUT fitted per band maps every date of a ``(time, band, y, x)`` stack, a LUT with a row per
(date, band) maps each date's bands with their own tables.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numba
import numpy as np
from dask.base import tokenize
from dask.layers import ArrayValuesDep

from ._data import as_band_array, thread_pieces
from ._rows import Rows
from ._values import check_nodata, float_bounds, kernel_nodata, nodata_fits, uniform_bin
from .errors import (
    BandMismatchError,
    NodataConflictError,
    NodataReplacedWarning,
    UnsupportedDtypeError,
)

if TYPE_CHECKING:
    from .lut import LUT

__all__ = ["apply_lut", "apply_lut_array", "lut_rows", "resolve_out_nodata", "row_index"]


# -- compiled kernels: one pass over the block, nodata and NaN handled inline --------------------


@numba.njit(nogil=True, cache=True)
def _apply_levels(block, table, offset, nodata, has_nodata, out_nodata, out):  # pragma: no cover
    nb, ny, nx = block.shape
    for b in range(nb):
        t = table[b]
        if has_nodata:
            for i in range(ny):
                for j in range(nx):
                    v = block[b, i, j]
                    out[b, i, j] = out_nodata if v == nodata else t[v - offset]
        else:
            for i in range(ny):
                for j in range(nx):
                    out[b, i, j] = t[block[b, i, j] - offset]


@numba.njit(nogil=True, cache=True)
def _apply_intervals(
    block, table, lohi, nodata, has_nodata, fill, is_int, out_lo, out_hi, out
):  # pragma: no cover
    """Map each value through its bin's interval row ``(smin, smax, olo, ohi)``.

    The bin index is clamped by :func:`uniform_bin`, so no input reads outside the table. Bins
    whose output is one value (``olo == ohi`` or ``smin >= smax``: most bins of quantised data)
    are first resolved per band into ``const`` (NaN for the others), a table of one float per
    bin instead of four, so their pixels read 8 bytes and take no further branch.
    """
    nb, ny, nx = block.shape
    nbins = table.shape[1]
    const = np.empty(nbins, dtype=np.float64)
    for b in range(nb):
        tb = table[b]
        for k in range(nbins):
            olo = tb[k, 2]
            if olo == tb[k, 3] or tb[k, 0] >= tb[k, 1]:
                r = olo
                if is_int:
                    r = min(max(np.rint(r), out_lo), out_hi)
                const[k] = r
            else:
                const[k] = np.nan
        lo = lohi[b, 0]
        hi = lohi[b, 1]
        scale = nbins / (hi - lo) if hi > lo else 0.0
        for i in range(ny):
            for j in range(nx):
                v = block[b, i, j]
                f = np.float64(v)
                if (has_nodata and v == nodata) or f - f != 0.0:  # nodata, NaN, infinite
                    out[b, i, j] = fill
                    continue
                k = uniform_bin(f, lo, scale, nbins)
                c = const[k]
                if c == c:
                    out[b, i, j] = c
                    continue
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
                out[b, i, j] = r


# -- block function ---------------------------------------------------------------------------


def _levels_fit(block_dtype: np.dtype, table: np.ndarray, offset: int) -> bool:
    """Whether every value of ``block_dtype`` indexes ``table`` rows as ``value - offset``."""
    if block_dtype.kind not in "iu" or block_dtype.itemsize > 2:
        return False
    info = np.iinfo(block_dtype)
    return offset == int(info.min) and table.shape[-1] == int(info.max) - int(info.min) + 1


def apply_block(
    block: np.ndarray,
    table: np.ndarray,
    lohi: np.ndarray,
    *,
    kind: str,
    offset: int,
    nodata: Any,
    out_nodata: Any,
    out_dtype: np.dtype,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Map one ``(band, y, x)`` block; ``table`` and ``lohi`` hold the block's bands' rows.

    ``kind`` is the LUT's (``"table"`` or ``"interval"``). ``out``, when given, receives the
    result (a view of a larger output, say).
    """
    dtype = np.dtype(out_dtype)
    nd, has_nd = kernel_nodata(block, nodata)
    if out is None:
        out = np.empty(block.shape, dtype=dtype)
    if out_nodata is None:
        fill = dtype.type(np.nan) if dtype.kind == "f" else dtype.type(0)
    else:
        fill = dtype.type(out_nodata)
    if kind == "table":
        if not _levels_fit(block.dtype, table, offset) or table.shape[0] != block.shape[0]:
            raise UnsupportedDtypeError(
                f"a level table of shape {table.shape} (offset {offset}) cannot map "
                f"{block.dtype} data; fit the LUT on data of this dtype"
            )
        _apply_levels(block, table, offset, nd, has_nd, fill, out)
        return out
    if table.ndim != 3 or table.shape[2] != 4 or table.shape[0] != block.shape[0]:
        raise BandMismatchError(
            f"an interval table of shape {table.shape} cannot map a block of shape {block.shape}"
        )
    out_lo, out_hi = float_bounds(dtype) if dtype.kind in "iu" else (-np.inf, np.inf)
    _apply_intervals(block, table, lohi, nd, has_nd, fill, dtype.kind in "iu", out_lo, out_hi, out)
    return out


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


def lut_rows(lut: LUT) -> Rows:
    """The LUT's rows (a band dim for a LUT that records only band labels)."""
    rows = getattr(lut, "rows", None)
    return rows if isinstance(rows, Rows) else Rows.bands(lut.bands)


def row_index(lut: LUT, rows: Rows, name: str, *, labelled: bool = True) -> np.ndarray | None:
    """For every data row, the LUT row that maps it; None when that is the LUT's own order.

    Dims both have are aligned by label, dims only the data has share the LUT's rows (a band
    LUT maps every date); dims only the LUT has must be of length 1. Data without labels of
    its own (numpy, dask) must have as many bands as the LUT: its band numbers are positions.
    """
    have = lut_rows(lut)
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
    The output dtype is ``lut.dtype``.
    """
    b = lut.source_binning
    if b.kind == "levels" and array.dtype != b.dtype:
        raise UnsupportedDtypeError(
            f"this LUT was fitted on {b.dtype} data and cannot map {array.dtype} data; fit a LUT "
            f"on {array.dtype} data, or convert the data to {b.dtype} first"
        )
    table, lohi, kwargs = block_arguments(lut, nodata=nodata, out_nodata=out_nodata)
    if index is not None:
        table, lohi = table[index], lohi[index]
    if array.shape[0] != table.shape[0]:
        raise BandMismatchError(
            f"the data has {array.shape[0]} bands and the LUT {table.shape[0]}; select the "
            "bands the LUT was fitted on"
        )
    if isinstance(array, np.ndarray):
        return _apply_threaded(array, table, lohi, kwargs)
    token = tokenize(table, lohi, lut.dtype)
    # Each task holds its row chunk's rows as literal arguments (views of one table), not a
    # key of their own: table keys would be root tasks, which dask's local scheduler starts
    # only after the reads a shared root released (last in, first out), so every block of a
    # stack was read before the first one was mapped and written.
    band_chunks = array.chunks[0]
    edges = itertools.pairwise(np.cumsum((0, *band_chunks)))
    rows = {(i,): slice(a, b) for i, (a, b) in enumerate(edges)}
    tables = ArrayValuesDep((band_chunks,), {i: table[s] for i, s in rows.items()})
    ranges = ArrayValuesDep((band_chunks,), {i: lohi[s] for i, s in rows.items()})
    return da.blockwise(
        apply_block,
        "byx",
        array,
        "byx",
        tables,
        "b",
        ranges,
        "b",
        align_arrays=False,
        dtype=lut.dtype,
        meta=np.empty((0, 0, 0), lut.dtype),
        name=f"rastermatch-apply-{tokenize(array, token, nodata, out_nodata)}",
        **kwargs,
    )


def _apply_threaded(
    array: np.ndarray, table: np.ndarray, lohi: np.ndarray, kwargs: dict[str, Any]
) -> np.ndarray:
    """numpy in: every :func:`thread_pieces` piece mapped by a thread into one output array."""
    out = np.empty(array.shape, dtype=kwargs["out_dtype"])
    pieces = thread_pieces(array.shape)
    if len(pieces) == 1:
        return apply_block(array, table, lohi, out=out, **kwargs)
    tasks = [
        dask.delayed(apply_block, pure=False)(
            array[b : b + 1, s], table[b : b + 1], lohi[b : b + 1], out=out[b : b + 1, s],
            **kwargs,
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
) -> Any:
    """Map ``data`` (numpy, dask, DataArray or Dataset) through ``lut``, returning the same
    kind and layout.

    The data's rows are matched to the LUT's (:func:`row_index`): a LUT fitted per band maps
    every date of a ``(time, band, y, x)`` stack. ``nodata`` defaults to the data's
    ``.rio.nodata``, else the LUT's; ``out_nodata`` to the LUT's, else the input nodata; it is
    replaced when valid pixels are mapped onto it (see :func:`resolve_out_nodata`).
    ``channel_axis`` as in :func:`~rastermatch.match_histograms`. Lazy for dask-backed input.
    """
    src = as_band_array(data, nodata=nodata, name="data", channel_axis=channel_axis)
    index = row_index(lut, src.rows, src.name, labelled=src.template is not None)
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
    result = apply_lut_array(src.array, lut, nodata=nd, out_nodata=out_nd, index=index)
    return src.wrap(result, nodata=out_nd)
