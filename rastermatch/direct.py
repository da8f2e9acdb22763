"""The in-memory path: numpy inputs counted and mapped without dask.

A numpy (or numpy-backed xarray) input needs no task graph: every pixel is already in memory.
The statistics pass of :mod:`rastermatch.match` and the application of the LUT take this path
when every input is numpy-backed, and give the bytes the dask path gives (the same kernels, or
kernels that count the same pixels into the same bins; tests compare both on random inputs).

How a call runs:

1. Small inputs (fewer than :data:`SMALL_PIXELS` pixels in all) run on the calling thread: no
   graph, no thread pool. Integers of at most 16 bits are counted straight into the rows of one
   int64 array that holds every histogram of the call (one allocation; uint8 rows have 256
   levels, 16-bit rows the dtype's 65,536, as the dask path's histograms do, so that the LUT
   tables are the same).
2. Large inputs are cut into ``(row, lines)`` pieces (:func:`~rastermatch._data.thread_pieces`)
   of source and reference together, counted by a small pool of threads (the kernels release
   the GIL), each piece into its own int32 counts, which are then summed: source and reference
   counting is one parallel pass. Floats and wider integers take their valid range first (one
   min/max pass over the pieces), then per-bin statistics per piece, merged exactly as the dask
   tree merges blocks (:func:`~rastermatch.histogram.combine_stats`).
3. The LUT is applied by the same kernel as the dask path's blocks: in one call for small
   inputs, piece by piece into one output array on the pool for large ones. The output is laid
   out as the input, so a ``(y, x, band)`` image comes back contiguous.
4. ``match_histograms`` of a small float scene onto one float reference never builds the
   65,536-bin histograms and table: each row's valid values are sorted once, and the table
   rows of the bins they occupy are computed and applied by the same arithmetic
   (:func:`match_occupied`; other rules and options take the general path).

The first call in a process loads the compiled kernels from numba's cache (``cache=True``), or
compiles them (seconds) when the cache is empty or stale.

Inputs the path does not cover (dask arrays, a dask mask, a lazy histogram reference) keep the
dask path.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import numba
import numpy as np

from ._data import BandArray, thread_pieces
from ._values import EXACT_MAX_ITEMSIZE, kernel_nodata, uniform_bin
from .apply import apply_block, table_rows
from .histogram import (
    DEFAULT_BINS,
    Binning,
    Histogram,
    _count_bits,
    _count_piece_bits,
    _histogram_from_stats,
    _reduce_stats,
    _rows_of,
    _unsigned,
    _whole_dtype,
    block_range,
    block_stats,
    check_range,
    default_binning,
    levels_order,
    union_ranges,
)

__all__ = ["SMALL_PIXELS", "apply_lut", "covers", "statistics"]

#: Inputs with fewer pixels than this in all (source and reference) run on the calling thread.
#: 2**21 pixels count in about 1 ms, less than starting the threads would cost.
SMALL_PIXELS = 2**21

#: Pieces counted into int32 hold fewer pixels than this.
_INT32_PIECE = 2**31 - 1


# -- compiled kernels ---------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _count_levels(block, offset, mask, has_mask, out):  # pragma: no cover
    """Add the levels of ``block`` ``(row, y, x)`` to ``out`` ``(row, nbins)``, bin ``k`` holding
    level ``offset + k``; masked pixels and levels outside the bins are skipped. Nodata is
    counted like any level: the caller clears its bin."""
    nb, ny, nx = block.shape
    n = np.uint64(out.shape[1])
    for b in range(nb):
        o = out[b]
        mb = b if mask.shape[0] > 1 else 0
        for i in range(ny):
            if has_mask:
                for j in range(nx):
                    if mask[mb, i, j]:
                        continue
                    k = np.uint64(np.int64(block[b, i, j]) - offset)  # below the bins: huge
                    if k < n:
                        o[k] += 1
            else:
                for j in range(nx):
                    k = np.uint64(np.int64(block[b, i, j]) - offset)
                    if k < n:
                        o[k] += 1


@numba.njit(nogil=True, cache=True)
def _count_levels4(block, offset, out4):  # pragma: no cover
    """:func:`_count_levels` without a mask into four interleaved sub-histograms ``out4``
    ``(row, 4, nbins)`` (column ``j`` into ``j % 4``): runs of equal values (smooth scenes) no
    longer wait on the previous increment of the same counter. The caller sums them."""
    nb, ny, nx = block.shape
    n = np.uint64(out4.shape[2])
    for b in range(nb):
        o0, o1, o2, o3 = out4[b, 0], out4[b, 1], out4[b, 2], out4[b, 3]
        for i in range(ny):
            j = 0
            while j + 4 <= nx:
                k0 = np.uint64(np.int64(block[b, i, j]) - offset)
                k1 = np.uint64(np.int64(block[b, i, j + 1]) - offset)
                k2 = np.uint64(np.int64(block[b, i, j + 2]) - offset)
                k3 = np.uint64(np.int64(block[b, i, j + 3]) - offset)
                if k0 < n:
                    o0[k0] += 1
                if k1 < n:
                    o1[k1] += 1
                if k2 < n:
                    o2[k2] += 1
                if k3 < n:
                    o3[k3] += 1
                j += 4
            while j < nx:
                k0 = np.uint64(np.int64(block[b, i, j]) - offset)
                if k0 < n:
                    o0[k0] += 1
                j += 1


@numba.njit(nogil=True, cache=True)
def _count_bits_rows(block, out):  # pragma: no cover
    """:func:`_count_bits` of every row of ``block`` into its own tables ``out[b]``."""
    for b in range(block.shape[0]):
        _count_bits(block[b : b + 1], out[b])


@numba.njit(nogil=True, cache=True)
def _fold(tables, shift, out):  # pragma: no cover
    """``out[(u + shift) % n] += tables[:, u].sum()``: sub-tables indexed by bit pattern added
    to counts in level order (``shift``: half the table for signed dtypes, else 0)."""
    n = out.shape[0]
    for u in range(n):
        c = np.int64(0)
        for s in range(tables.shape[0]):
            c += tables[s, u]
        k = u + shift
        if k >= n:
            k -= n
        out[k] += c


@numba.njit(nogil=True, cache=True)
def _gather(block, tables, rows, out):  # pragma: no cover
    """``out[b, i, j] = tables[rows[b], block[b, i, j]]``: ``block`` the unsigned bits of the
    pixels, every row of ``tables`` a whole-dtype table (nodata and clamping folded in)."""
    nb, ny, nx = block.shape
    for b in range(nb):
        t = tables[rows[b]]
        for i in range(ny):
            for j in range(nx):
                out[b, i, j] = t[block[b, i, j]]


# -- which inputs take the path -----------------------------------------------------------------


def covers(arrays: Sequence[Any]) -> bool:
    """Whether every array (data or mask, None for no mask) is in memory (numpy)."""
    return all(a is None or isinstance(a, np.ndarray) for a in arrays)


def _pixels(items: Sequence[tuple[BandArray, Any, Any]]) -> int:
    return sum(int(src.array.size) for src, _, _ in items)


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _threads() -> int:
    return int(dask.config.get("num_workers", None) or os.cpu_count() or 1)


def _pool() -> ThreadPoolExecutor:
    """One pool for the process, started by the first large input (never by small ones)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(
                max_workers=max(os.cpu_count() or 1, 1), thread_name_prefix="rastermatch-direct"
            )
            atexit.register(_POOL.shutdown, wait=False)
        return _POOL


def _run(tasks: Sequence[Callable[[], Any]], parallel: bool) -> list[Any]:
    """The results of ``tasks``, in order: on the pool when ``parallel`` and there is more than
    one task and thread, else here."""
    if not parallel or len(tasks) < 2 or _threads() < 2:
        return [t() for t in tasks]
    pool = _pool()
    threads = min(_threads(), len(tasks))
    # at most `threads` tasks in flight: dask's num_workers is honoured even if the pool is wider
    out: list[Any] = [None] * len(tasks)
    lock = threading.Lock()
    state = {"next": 0}

    def worker() -> None:
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= len(tasks):
                return
            try:
                out[i] = tasks[i]()
            except BaseException:
                state["next"] = len(tasks)  # the others stop after their current piece
                raise

    futures = [pool.submit(worker) for _ in range(threads)]
    try:
        for f in futures:
            f.result()
    except BaseException:  # an error, or Ctrl-C while waiting: no piece is started after it
        with lock:
            state["next"] = len(tasks)
        raise
    return out


def _pieces(array: np.ndarray, parallel: bool) -> list[tuple[int, slice]]:
    if not parallel:
        return [(b, slice(0, array.shape[1])) for b in range(array.shape[0])]
    return thread_pieces(array.shape)


def _mask_piece(mask: np.ndarray | None, b: int, lines: slice) -> np.ndarray | None:
    if mask is None:
        return None
    layer = b if mask.shape[0] > 1 else 0
    return mask[layer : layer + 1, lines]


# -- the statistics pass ------------------------------------------------------------------------


def statistics(
    items: Sequence[tuple[BandArray, Any, np.ndarray | None]], bins: int | None
) -> list[Histogram]:
    """The histograms of in-memory ``(source, mask, share)`` items, as
    :func:`rastermatch.match._statistics` computes them with dask: the same binnings (rows that
    share a key binned over the union of their valid ranges), the same counts and bin
    statistics."""
    parallel = _pixels(items) >= SMALL_PIXELS
    binnings: list[Binning | None] = [
        _levels(src.dtype, src.array.shape[0])
        if bins is None and src.dtype.kind in "iu" and src.dtype.itemsize <= EXACT_MAX_ITEMSIZE
        else default_binning(src.dtype, src.array.shape[0], bins=bins, range=None)
        for src, _, _ in items
    ]
    need = [i for i, b in enumerate(binnings) if b is None]
    if need:
        ranges = dict(zip(need, _ranges([items[i] for i in need], parallel), strict=True))
        shared = [i for i in ranges if items[i][2] is not None]
        if shared:  # rows pooled together get the union of their ranges
            widened = union_ranges(
                np.concatenate([ranges[i] for i in shared]),
                np.concatenate([items[i][2] for i in shared]),
            )
            at = np.cumsum([0] + [len(ranges[i]) for i in shared])
            for k, i in enumerate(shared):
                ranges[i] = widened[at[k] : at[k + 1]]
        nbins = DEFAULT_BINS if bins is None else bins
        for i, lohi in ranges.items():
            src, _, share = items[i]
            if share is not None:  # a group without valid pixels: refused where it is used
                lohi = np.where((lohi[:, :1] <= lohi[:, 1:]), lohi, 0.0)
            where = tuple(src.rows.describe(r) for r in range(src.rows.size))
            lohi = check_range(lohi, where, src.name)
            binnings[i] = Binning("uniform", src.dtype, nbins, lohi[:, 0], lohi[:, 1])
    levels = [i for i, b in enumerate(binnings) if b is not None and b.kind == "levels"]
    counts = _level_counts([items[i] for i in levels], [binnings[i] for i in levels], parallel)
    hists: list[Histogram | None] = [None] * len(items)
    for i, c in zip(levels, counts, strict=True):
        hists[i] = Histogram(c, binnings[i], **_recorded(items[i]))
    for i, b in enumerate(binnings):
        if hists[i] is None:
            assert b is not None
            hists[i] = _histogram_from_stats(_stats(items[i], b, parallel), b, _recorded(items[i]))
    return hists  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def _levels(dtype: np.dtype, nrows: int) -> Binning:
    """``Binning.levels(dtype, nrows)``, made once: a frozen value whose bounds are read-only."""
    b = Binning.levels(dtype, nrows)
    b.lo.flags.writeable = False
    b.hi.flags.writeable = False
    return b


def _recorded(item: tuple[BandArray, Any, Any]) -> dict[str, Any]:
    src, mask, _ = item
    return {
        "nodata": src.nodata,
        "masked": mask is not None,
        "name": src.name,
        "rows": _rows_of(src),
    }


def _ranges(items: Sequence[tuple[BandArray, Any, Any]], parallel: bool) -> list[np.ndarray]:
    """The valid ``(row, 2)`` min/max of every item, all items' pieces in one parallel pass."""
    tasks, where = [], []
    for n, (src, mask, _) in enumerate(items):
        for b, lines in _pieces(src.array, parallel):
            piece = src.array[b : b + 1, lines]
            m = _mask_piece(mask, b, lines)
            tasks.append(lambda p=piece, m=m, nd=src.nodata: block_range(p, m, nodata=nd))
            where.append((n, b))
    parts = _run(tasks, parallel)
    out = [np.array([[np.inf, -np.inf]] * src.array.shape[0]) for src, _, _ in items]
    for (n, b), part in zip(where, parts, strict=True):
        lo, hi = part[0, 0, 0]
        out[n][b, 0] = min(out[n][b, 0], lo)
        out[n][b, 1] = max(out[n][b, 1], hi)
    return out


def _level_counts(
    items: Sequence[tuple[BandArray, Any, Any]], binnings: Sequence[Binning], parallel: bool
) -> list[np.ndarray]:
    """Counts ``(row, nbins)`` int64 of every levels-binned item: views of one array.

    Small: each item counted here, straight into its rows. Large: every piece of every item
    counted on the pool into its own int32 row (a piece holds fewer than 2**31 pixels), then
    the pieces of each row summed into it."""
    if not items:
        return []
    nrows = [src.array.shape[0] for src, _, _ in items]
    width = max(b.nbins for b in binnings)
    whole = np.zeros((sum(nrows), width), dtype=np.int64)
    at = np.cumsum([0, *nrows])
    outs = [whole[at[n] : at[n + 1], : b.nbins] for n, b in enumerate(binnings)]
    if not parallel:
        for (src, mask, _), b, out in zip(items, binnings, outs, strict=True):
            a = src.array
            rows_px = a.shape[1] * a.shape[2]
            if mask is None and _bits_countable(a, b) and rows_px >= 16 * b.nbins:
                sub = np.zeros((a.shape[0], 4, b.nbins), dtype=np.int64)
                _count_bits_rows(_unsigned(a), sub)
                out += levels_order(sub.sum(axis=1), a.dtype)
                continue
            m, has_m = _kernel_mask(mask)
            _count_levels(a, b.offset, m, has_m, out)
    else:
        tasks, where = [], []
        # pixels counted by bit pattern go into one (4, 2**bits) table per thread and row,
        # summed at the end: the pieces can be small enough that neither thread waits long
        # for the other at the end, without a table to clear and sum per piece
        tables: list[dict[tuple[int, int], np.ndarray]] = []
        local, lock = threading.local(), threading.Lock()

        def table(key: tuple[int, int], nbins: int, dtype: type) -> np.ndarray:
            mine = getattr(local, "tables", None)
            if mine is None:
                mine = local.tables = {}
                with lock:
                    tables.append(mine)
            t = mine.get(key)
            if t is None:
                t = mine[key] = np.zeros((4, nbins), dtype=dtype)
            return t

        for n, ((src, mask, _), b) in enumerate(zip(items, binnings, strict=True)):
            a = src.array
            if mask is None and _bits_countable(a, b):
                dtype = np.int32 if a[0].size <= _INT32_PIECE else np.int64
                for r, lines in _stripes(a.shape):
                    tasks.append(
                        lambda p=a[r : r + 1, lines], key=(n, r), nb=b.nbins, dt=dtype: (
                            _count_piece_bits(p, table(key, nb, dt))
                        )
                    )
                    where.append(None)
                continue
            for r, lines in _pieces(a, True):
                piece = a[r : r + 1, lines]
                m, has_m = _kernel_mask(_mask_piece(mask, r, lines))
                tasks.append(
                    lambda p=piece, m=m, hm=has_m, off=b.offset, nb=b.nbins: _piece_counts(
                        p, off, m, hm, nb
                    )
                )
                where.append((n, r))
        for nr, part in zip(where, _run(tasks, True), strict=True):
            if nr is not None:
                outs[nr[0]][nr[1]] += part
        for mine in tables:
            for (n, r), t in mine.items():
                _fold(t, _shift(items[n][0].dtype), outs[n][r])
    for (src, _, _), b, out in zip(items, binnings, outs, strict=True):
        k = b.level_bin(src.nodata)
        if k is not None:
            out[:, k] = 0
    return outs


def _bits_countable(array: np.ndarray, binning: Binning) -> bool:
    """Whether ``array`` can be counted by its pixels' bit patterns into ``binning``: a levels
    binning of its own dtype with a bin for every bit pattern (:func:`_whole_dtype`)."""
    return (
        binning.kind == "levels"
        and binning.dtype == array.dtype
        and _whole_dtype(array.dtype, binning.nbins, binning.offset)
    )


def _shift(dtype: np.dtype) -> int:
    """How far a table indexed by bit pattern is rotated to be in level order."""
    return 0 if dtype.kind == "u" else 1 << (8 * dtype.itemsize - 1)


#: The smallest piece :func:`_stripes` cuts (about half a millisecond of counting).
_MIN_PIECE = 2**20


def _stripes(shape: tuple[int, ...]) -> list[tuple[int, slice]]:
    """``(row, lines)`` pieces of a ``(row, y, x)`` array, about eight per thread (none below
    :data:`_MIN_PIECE` pixels unless a row is smaller): work that costs nothing per piece is
    handed out in pieces this small, so that the threads finish together."""
    nrows, ny, nx = shape
    target = max(_MIN_PIECE, nrows * ny * nx // (8 * _threads()))
    lines = max(1, min(ny, target // max(nx, 1)))
    return [(b, slice(y, min(y + lines, ny))) for b in range(nrows) for y in range(0, ny, lines)]


def _piece_counts(
    piece: np.ndarray, offset: int, mask: np.ndarray, has_mask: bool, nbins: int
) -> np.ndarray:
    dtype = np.int32 if piece.size <= _INT32_PIECE else np.int64
    if has_mask:
        out = np.zeros((1, nbins), dtype=dtype)
        _count_levels(piece, offset, mask, has_mask, out)
        return out[0]
    out4 = np.zeros((1, 4, nbins), dtype=dtype)
    _count_levels4(piece, offset, out4)
    return out4[0].sum(axis=0, dtype=np.int64)


_NO_MASK = np.zeros((1, 1, 1), dtype=bool)


def _kernel_mask(mask: np.ndarray | None) -> tuple[np.ndarray, bool]:
    return (_NO_MASK, False) if mask is None else (mask, True)


def _stats(item: tuple[BandArray, Any, Any], binning: Binning, parallel: bool) -> np.ndarray:
    """``(row, nbins, 4)`` per-bin statistics of a uniform binning; large inputs piece by piece
    on the pool, merged exactly (:func:`~rastermatch.histogram.combine_stats`)."""
    src, mask, _ = item
    lohi = np.stack([binning.lo, binning.hi], axis=1)
    if not parallel:
        return block_stats(src.array, mask, lohi, nbins=binning.nbins, nodata=src.nodata)[:, 0, 0]
    pieces = _pieces(src.array, True)
    tasks = [
        lambda b=b, s=s: block_stats(
            src.array[b : b + 1, s], _mask_piece(mask, b, s), lohi[b : b + 1],
            nbins=binning.nbins, nodata=src.nodata,
        )[0, 0, 0]
        for b, s in pieces
    ]  # fmt: skip
    parts = _run(tasks, True)
    rows = []
    for b in range(src.array.shape[0]):
        mine = np.stack([p for (r, _), p in zip(pieces, parts, strict=True) if r == b])
        rows.append(_reduce_stats(mine, 0))
    return np.stack(rows)


# -- application --------------------------------------------------------------------------------


def apply_lut(
    array: np.ndarray,
    lut: Any,
    *,
    nodata: Any,
    out_nodata: Any,
    index: np.ndarray | None = None,
) -> np.ndarray:
    """``array`` ``(row, y, x)`` mapped through ``lut`` (a LUT without detectors), as
    :func:`~rastermatch.apply.apply_lut_array` maps numpy input: in one call for small arrays,
    piece by piece on the pool into one output for large ones."""
    table, lohi, kwargs, rows = table_rows(array, lut, index, nodata=nodata, out_nodata=out_nodata)
    # the output laid out as the input: a (y, x, band) image comes back contiguous
    out = np.empty_like(array, dtype=kwargs["out_dtype"])
    whole = _whole_tables_apply(array, table, rows, kwargs)
    if array.size < SMALL_PIXELS:
        if whole is not None and array.size >= 4 * table.shape[0] * whole.nbins:
            tables = np.stack([whole.table(r) for r in range(table.shape[0])])
            _gather(_unsigned(array), tables, rows, out)
            return out
        return apply_block(array, table, lohi, None, rows, out=out, **kwargs)
    if whole is not None:
        # small pieces, so that the threads finish together (each faults in its part of the
        # output too); a row's whole table is built once, by the first piece that needs it
        tables: dict[int, np.ndarray] = {}

        def gather(b: int, lines: slice) -> None:
            r = int(rows[b])
            t = tables.get(r)
            if t is None:
                t = tables[r] = whole.table(r)[None]
            _gather(_unsigned(array[b : b + 1, lines]), t, _ROW0, out[b : b + 1, lines])

        tasks = [lambda b=b, s=s: gather(b, s) for b, s in _stripes(array.shape)]
    else:
        tasks = [
            lambda b=b, s=s: apply_block(
                array[b : b + 1, s], table, lohi, None, rows[b : b + 1], out=out[b : b + 1, s],
                **kwargs,
            )
            for b, s in thread_pieces(array.shape)
        ]  # fmt: skip
    _run(tasks, True)
    return out


_ROW0 = np.zeros(1, dtype=np.intp)


class _WholeTables:
    """The rows of a level table (``apply._apply_levels``'s ``table``, ``offset``, clamp,
    ``nodata``, ``fill``) as tables over every bit pattern of the data's dtype: entry ``u`` is
    what ``_apply_levels`` gives the pixel whose bits are ``u``, so that mapping is one gather
    without a branch: a table over a sub-range of the levels has its clamp spread out to the
    dtype's ends, and the nodata level's entry is the fill value."""

    def __init__(self, table: np.ndarray, dtype: np.dtype, offset: int, nd_bits: int | None,
                 fill: Any) -> None:  # fmt: skip
        self.source = table
        self.dtype = dtype
        self.nbins = 1 << (8 * dtype.itemsize)
        info = np.iinfo(dtype)
        last = table.shape[1] - 1
        self.index = None  # level order -> table column; None: the identity
        if offset != int(info.min) or table.shape[1] != self.nbins:
            levels = np.arange(int(info.min), int(info.max) + 1, dtype=np.int64)
            self.index = np.clip(levels - offset, 0, last)
        self.nd_bits, self.fill = nd_bits, fill

    def table(self, row: int) -> np.ndarray:
        """Row ``row``'s table, indexed by bit pattern (a view of the LUT's row when there is
        nothing to fold in)."""
        t = self.source[row]
        fresh = False
        if self.index is not None:
            t, fresh = t[self.index], True
        if self.dtype.kind == "i":  # bit patterns of the negative levels are the upper half
            t, fresh = np.roll(t, self.nbins // 2), True
        if self.nd_bits is not None:
            if not fresh:
                t = t.copy()
            t[self.nd_bits] = self.fill
        return t


def _whole_tables_apply(
    array: np.ndarray, table: np.ndarray, rows: np.ndarray, kwargs: dict[str, Any]
) -> _WholeTables | None:
    """The whole-dtype tables that map ``array`` as :func:`~rastermatch.apply.apply_block`
    would with ``table`` and ``kwargs``, or None where the gather does not apply (interval
    tables, other dtypes, a table of another dtype than the output, rows out of range: those
    take ``apply_block``, which also refuses what it must)."""
    dtype = array.dtype
    out_dtype = np.dtype(kwargs["out_dtype"])
    if (
        kwargs["kind"] != "table"
        or dtype.kind not in "iu"
        or dtype.itemsize > EXACT_MAX_ITEMSIZE
        or not dtype.isnative
        or table.ndim != 2
        or table.shape[1] < 1
        or table.dtype != out_dtype
        or rows.ndim != 1
        or rows.size != array.shape[0]
        or (rows.size and (int(rows.min()) < 0 or int(rows.max()) >= table.shape[0]))
    ):
        return None
    out_nodata = kwargs["out_nodata"]
    if out_nodata is None:
        fill = out_dtype.type(np.nan) if out_dtype.kind == "f" else out_dtype.type(0)
    else:
        fill = out_dtype.type(out_nodata)
    nd, has_nd = kernel_nodata(array, kwargs["nodata"])
    nd_bits = int(np.array(nd, dtype=dtype).view(f"u{dtype.itemsize}")) if has_nd else None
    return _WholeTables(table, dtype, int(kwargs["offset"]), nd_bits, fill)


# -- small float scenes: the occupied bins only --------------------------------------------------
#
# A float row of a small scene occupies a few thousand of its 65,536 bins. Matching it needs the
# table rows of the bins its pixels fall in, and of the empty bins masked pixels fall in: those
# rows are computed here from the sorted valid values of each row, by the arithmetic of
# lut._band_table restricted to occupied bins (the same candidates, scaled CDFs and tie rule,
# the same identity rule), and applied by the arithmetic of apply._interval. The full LUT is
# never built; cases this does not cover (other rules, blends, "all" levels, a nodata value
# other than NaN, integer outputs, negative zeros, int64 overflow) return None and take the
# general path.


@numba.njit(inline="always")
def _interval_value(f, smin, smax, olo, ohi):  # pragma: no cover
    """apply._interval for a float output, given the bin's row."""
    if olo == ohi or smin >= smax:
        return olo
    if olo == smin and ohi == smax:
        return min(max(f, smin), smax)
    if f <= smin:
        return olo
    if f >= smax:
        return ohi
    r = olo + (f - smin) * (ohi - olo) / (smax - smin)
    return min(max(r, olo), ohi)


@numba.njit(nogil=True, cache=True)
def _apply_occupied(
    block, lo, hi, nbins, keys, nkeys, tab, before, nodata, has_nodata, fill, out
):  # pragma: no cover
    """Map ``block`` ``(row, y, x)`` through the occupied-bin rows ``tab[b, :nkeys[b]]`` =
    ``(smin, smax, olo, ohi, empty)`` of bins ``keys[b]`` (sorted): a value in an occupied bin
    by its interval, in an empty bin by the ``empty`` output of the occupied bin below it
    (``before[b]`` when there is none)."""
    nb, ny, nx = block.shape
    slot = np.empty(nbins, np.int64)  # bin -> the last occupied bin at or below it (-1: none)
    for b in range(nb):
        lo_b = lo[b]
        hi_b = hi[b]
        scale = nbins / (hi_b - lo_b) if hi_b > lo_b else 0.0
        p = -1
        for k in range(nbins):
            if p + 1 < nkeys[b] and keys[b, p + 1] == k:
                p += 1
            slot[k] = p
        for i in range(ny):
            for j in range(nx):
                v = block[b, i, j]
                f = np.float64(v)
                if (has_nodata and v == nodata) or f - f != 0.0:
                    out[b, i, j] = fill
                    continue
                k = uniform_bin(f, lo_b, scale, nbins)
                p = slot[k]
                if p < 0:
                    out[b, i, j] = before[b]
                elif keys[b, p] != k:
                    out[b, i, j] = tab[b, p, 4]
                else:
                    out[b, i, j] = _interval_value(
                        f, tab[b, p, 0], tab[b, p, 1], tab[b, p, 2], tab[b, p, 3]
                    )


def _no_nodata(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


@numba.njit(nogil=True, cache=True)
def _gather_valid(block, mask, has_mask, buf, n):  # pragma: no cover
    """The finite unmasked values of every row of ``block`` into ``buf[b, :n[b]]`` (float64);
    False if one is a negative zero."""
    nb, ny, nx = block.shape
    for b in range(nb):
        mb = b if mask.shape[0] > 1 else 0
        c = 0
        for i in range(ny):
            for j in range(nx):
                f = np.float64(block[b, i, j])
                if f - f != 0.0 or (has_mask and mask[mb, i, j]):
                    continue
                if f == 0.0 and np.signbit(f):
                    return False
                buf[b, c] = f
                c += 1
        n[b] = c
    return True


@numba.njit(nogil=True, cache=True)
def _runs(v, lo, hi, nbins, keys, counts, vmin, vmax, nmin):  # pragma: no cover
    """The occupied bins of the sorted values ``v`` binned over ``[lo, hi]`` and, per bin, its
    count, smallest and largest value and the pixels equal to the smallest (what
    histogram._stats_uniform records); returns their number."""
    scale = nbins / (hi - lo) if hi > lo else 0.0
    r = -1
    last = -1
    for i in range(v.size):
        f = v[i]
        k = uniform_bin(f, lo, scale, nbins)
        if k != last:
            r += 1
            last = k
            keys[r] = k
            counts[r] = 0
            vmin[r] = f
            nmin[r] = 0
        counts[r] += 1
        vmax[r] = f
        if f == vmin[r]:
            nmin[r] += 1
    return r + 1


@numba.njit(nogil=True, cache=True)
def _occupied_rows(
    sc, smin, smax, rc, rmin, rmax, m_src, m_ref, ceil, mapped, q, tab
):  # pragma: no cover
    """lut._band_table of one source row's occupied bins against one reference row's, levels
    "present": lut._cdf_rows_kernel's walk for the reference bin of every source bin (the same
    scaled CDFs and tie rule; every candidate holds pixels, so no two share a CDF value), then
    the identity rule. ``tab`` rows: smin, smax, olo, ohi, and the output of the empty bins
    above the bin."""
    na = rc.shape[0]
    for j in range(na):
        mapped[j] = 0
    k = 0
    cs = np.int64(0)
    cr = np.int64(rc[0])  # the reference's cumulative count at candidate k
    prev = np.int64(0)  # ... at candidate k - 1
    for p in range(sc.shape[0]):
        cs += np.int64(sc[p])
        t = cs * m_ref
        while k < na and cr * m_src < t:
            k += 1
            prev = cr
            if k < na:
                cr += np.int64(rc[k])
        if ceil:
            j = min(k, na - 1)
        elif k == 0:
            j = 0
        elif k < na and cr * m_src - t < t - prev * m_src:
            j = k
        else:
            j = k - 1
        q[p] = j
        mapped[j] += 1
    for p in range(sc.shape[0]):
        j = q[p]
        lo = rmin[j]
        hi = rmax[j]
        same = mapped[j] == 1 and lo == smin[p] and hi == smax[p]
        tab[p, 0] = smin[p]
        tab[p, 1] = smax[p]
        tab[p, 2] = lo
        tab[p, 3] = hi if same else lo
        tab[p, 4] = hi if same else lo


def _occupied(
    array: np.ndarray, mask: np.ndarray | None, lohi: np.ndarray, nbins: int
) -> list[tuple[np.ndarray, ...]] | None:
    """Per row: the occupied bins and their count, smallest value, largest value and pixels
    equal to the smallest (as histogram._stats_uniform records them), from the sorted valid
    values; None if a row holds a negative zero (which zero a bin records would depend on the
    order the pixels come in)."""
    nb = array.shape[0]
    buf = np.empty((nb, array.shape[1] * array.shape[2]), np.float64)
    n = np.zeros(nb, np.int64)
    m, has_m = _kernel_mask(mask)
    if not _gather_valid(array, m, has_m, buf, n):
        return None
    rows = []
    for b in range(nb):
        v = np.sort(buf[b, : n[b]])
        size = v.size
        keys, counts, nmin = (np.empty(size, np.int64) for _ in range(3))
        vmin, vmax = np.empty(size, np.float64), np.empty(size, np.float64)
        r = _runs(v, float(lohi[b, 0]), float(lohi[b, 1]), nbins, keys, counts, vmin, vmax, nmin)
        rows.append((keys[:r], counts[:r], vmin[:r], vmax[:r], nmin[:r]))
    return rows


def match_occupied(
    src: BandArray,
    mask: np.ndarray | None,
    ref: BandArray,
    ref_mask: np.ndarray | None,
    index: np.ndarray,
    *,
    method: str,
    levels: str,
    proportion: float,
    bins: int | None,
    dtype: Any,
) -> np.ndarray | None:
    """``match_histograms`` of a small float source onto one float reference (row ``index[b]``
    for source row ``b``), from their occupied bins only; None where this path does not apply
    (see the comment above). Masks as :func:`~rastermatch._data.as_band_mask` gives them."""
    if (
        method not in ("nearest", "ceil")
        or levels != "present"
        or proportion != 1.0
        or src.dtype.kind != "f"
        or ref.dtype.kind != "f"
        or (dtype is not None and np.dtype(dtype).kind != "f")
        or not (_no_nodata(src.nodata) and _no_nodata(ref.nodata))
        or src.array.size + ref.array.size >= SMALL_PIXELS
        or not covers([src.array, ref.array, mask, ref_mask])
    ):
        return None
    nbins = DEFAULT_BINS if bins is None else bins
    lohis = []
    for arr, m in ((src.array, mask), (ref.array, ref_mask)):
        lohi = block_range(arr, m)[:, 0, 0, :]
        with np.errstate(over="ignore", invalid="ignore"):
            width = lohi[:, 1] - lohi[:, 0]
        if not (np.all(lohi[:, 0] <= lohi[:, 1]) and np.all(np.isfinite(width))):
            return None  # no valid pixels, or a range float64 cannot bin: the general path says so
        lohis.append(lohi)
    s_rows = _occupied(src.array, mask, lohis[0], nbins)
    r_rows = _occupied(ref.array, ref_mask, lohis[1], nbins)
    if s_rows is None or r_rows is None:
        return None
    nb = src.array.shape[0]
    width = max(len(r[0]) for r in s_rows)
    keys = np.zeros((nb, width), np.int64)
    nkeys = np.zeros(nb, np.int64)
    tab = np.zeros((nb, width, 5), np.float64)
    before = np.zeros(nb, np.float64)
    ceil = method == "ceil"
    for b, (sk, sc, smin, smax, _) in enumerate(s_rows):
        _, rc, rmin, rmax, _ = r_rows[int(index[b])]
        # lut._scaled_cdfs: int64 while the products provably fit
        n_src, n_ref = int(sc.sum()), int(rc.sum())
        g = math.gcd(n_src, n_ref)
        if (1 if ceil else 2) * n_src * (n_ref // g) >= 2**63:
            return None
        n = sk.size
        keys[b, :n], nkeys[b] = sk, n
        q = np.empty(n, np.int64)
        mapped = np.empty(rc.size, np.int64)
        _occupied_rows(
            sc, smin, smax, rc, rmin, rmax, n_src // g, n_ref // g, ceil, mapped, q, tab[b, :n]
        )
        before[b] = rmin[0]  # below every occupied bin: the first candidate
    out_dtype = ref.dtype if dtype is None else np.dtype(dtype)
    out = np.empty_like(src.array, dtype=out_dtype)
    lo = np.ascontiguousarray(lohis[0][:, 0])
    hi = np.ascontiguousarray(lohis[0][:, 1])
    fill = out_dtype.type(np.nan)
    nd = src.array.dtype.type(0)
    _apply_occupied(src.array, lo, hi, nbins, keys, nkeys, tab, before, nd, False, fill, out)
    return out
