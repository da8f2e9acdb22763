"""Exact histogram specification (Coltuc, Bolon and Chassery 2006), out of core.

Histogram matching through a LUT maps every pixel of a level to one output level, so the output
histogram can only approximate the target. Exact specification orders *all* pixels strictly
and cuts the order into runs of exactly the target counts: pixel ``k`` of the order gets the
level whose cumulative target count first exceeds ``k``. Pixels of equal value are ordered by
their local means over growing windows (Coltuc's sequence), with no noise added:

====  ===============================  ====================================================
key   window                           added to the previous window
====  ===============================  ====================================================
k1    3x3 cross (5 pixels)             the 4 neighbours
k2    3x3 square (9)                   the 4 diagonal neighbours
k3    5x5 diamond (13)                 the 4 pixels two steps along the axes
k4    5x5 without its corners (21)     the 8 knight's-move pixels
k5    5x5 square (25)                  the 4 corners
====  ===============================  ====================================================

The keys are integer window *sums*, exact, and since each window holds the previous one the
lexicographic order of ``(value, k1, ..., k5)`` is the order of ``(value, d1, ..., d5)`` with
``d_i = k_i - k_(i-1)`` the sum over the added ring; pixels equal in all of them are ordered
by raster position (``y * width + x`` in the band). A neighbour outside the image, nodata or
masked counts as the centre value, so every window is full and a sum stands for a mean.

Out of core, in three passes over the data (each block read with a 2-pixel halo):

1. *Cells.* Every valid pixel falls in a cell ``(value, (d1 - 4 * value) >> shift)``, an
   interval of the order (the bins are monotone in d1). Blocks count their cells (a sort of
   packed 35-bit integers) and the counts are summed by sorted merges in a tree; each block
   picks the smallest shift that leaves about 64 pixels per cell and merges re-bin to the
   largest shift of a row, so a noisy 16-bit row has some 10**6 cells, not one per pixel.
   The cells in order with their counts give every cell's rank interval; a cell whose
   interval lies inside one target run takes that run's level, whatever its other keys.
2. *Straddling cells.* The cells whose rank interval crosses a run boundary (at most one per
   target level) are read again: their pixels' full keys and positions are gathered and
   sorted (a sort of these pixels only, never of the image), which gives each of them its
   exact rank, hence its level.
3. *Apply.* The order is summarised by breakpoints, the ``(key, position)`` of every pixel
   that starts a new level (at most one per target level). Each output block gets its rows'
   breakpoints as literal arguments and gives a pixel the level of the last breakpoint at or
   before its own ``(key, position)``: a table lookup for values no boundary cuts, a binary
   search within the value otherwise.

The keys and positions do not depend on the chunks, so neither does the output.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numba
import numpy as np
from dask.base import tokenize
from dask.layers import ArrayValuesDep

from ._data import BandArray, as_band_array, as_band_mask, as_dask, python_scalar
from ._rows import Rows
from ._values import nodata_fits
from .errors import (
    BandMismatchError,
    NodataConflictError,
    NoValidPixelsError,
    OptionError,
    UnsupportedDtypeError,
)
from .histogram import Binning, Histogram, binned_histogram
from .match import reference_with_source_nodata

__all__ = ["SpecifyReport", "specify_exact"]

#: Bits of a shifted pixel value and of each ring sum (4 values of 16 bits < 2**18; the
#: knight ring has 8 values < 2**19). A cell is ``value << 18 | d1`` (34 bits); the full key is
#: ``hi = cell << 18 | d2`` (52 bits) and ``lo = d3 << 37 | d4 << 18 | d5`` (55 bits).
_RING_BITS = 18
_HALO = 2
#: A cell is ``value << 19 | (d1 - 4 * value + 2**18) >> shift``: the value and the sum of its
#: 4 neighbours relative to 4 times its own, in bins of ``2**shift`` (monotone in d1 for each
#: value, so cells are intervals of the order). The shift is chosen per row so that a cell holds
#: about :data:`_CELL_PIXELS` pixels: fewer cells to count, few pixels to gather. Blocks and
#: partial merges keep at most one cell per :data:`_PARTIAL_PIXELS` pixels of their area (a
#: block cannot judge its row: a coarse shift there would coarsen the whole row).
_REL_BITS = 19
_REL_BIAS = 1 << 18
_CELL_PIXELS = 64
_PARTIAL_PIXELS = 16

# -- compiled kernels -------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True, inline="always")
def _at(p, r, i, j, c):  # pragma: no cover - compiled
    v = p[r, i, j]
    return c if v < 0 else np.int64(v)


@numba.njit(nogil=True, cache=True, inline="always")
def _ring1(p, r, i, j, c):  # pragma: no cover - compiled
    return (
        _at(p, r, i - 1, j, c)
        + _at(p, r, i + 1, j, c)
        + _at(p, r, i, j - 1, c)
        + _at(p, r, i, j + 1, c)
    )


@numba.njit(nogil=True, cache=True, inline="always")
def _key(p, r, i, j, c):  # pragma: no cover - compiled
    """``(hi, lo)`` of the pixel at padded ``(i, j)`` whose shifted value is ``c``."""
    d1 = _ring1(p, r, i, j, c)
    d2 = (
        _at(p, r, i - 1, j - 1, c)
        + _at(p, r, i - 1, j + 1, c)
        + _at(p, r, i + 1, j - 1, c)
        + _at(p, r, i + 1, j + 1, c)
    )
    d3 = (
        _at(p, r, i - 2, j, c)
        + _at(p, r, i + 2, j, c)
        + _at(p, r, i, j - 2, c)
        + _at(p, r, i, j + 2, c)
    )
    d4 = (
        _at(p, r, i - 2, j - 1, c)
        + _at(p, r, i - 2, j + 1, c)
        + _at(p, r, i + 2, j - 1, c)
        + _at(p, r, i + 2, j + 1, c)
        + _at(p, r, i - 1, j - 2, c)
        + _at(p, r, i + 1, j - 2, c)
        + _at(p, r, i - 1, j + 2, c)
        + _at(p, r, i + 1, j + 2, c)
    )
    d5 = (
        _at(p, r, i - 2, j - 2, c)
        + _at(p, r, i - 2, j + 2, c)
        + _at(p, r, i + 2, j - 2, c)
        + _at(p, r, i + 2, j + 2, c)
    )
    hi = (((c << 18) | d1) << 18) | d2
    lo = (d3 << 37) | (d4 << 18) | d5
    return hi, lo


@numba.njit(nogil=True, cache=True)
def _cells_kernel(p, out):  # pragma: no cover - compiled
    """``out[r, y, x]`` = the finest cell (shift 0) of every pixel, -1 where invalid."""
    nr, ny, nx = out.shape
    for r in range(nr):
        for y in range(ny):
            for x in range(nx):
                c = np.int64(p[r, y + 2, x + 2])
                if c < 0:
                    out[r, y, x] = -1
                else:
                    rel = _ring1(p, r, y + 2, x + 2, c) - 4 * c + _REL_BIAS
                    out[r, y, x] = (c << _REL_BITS) | rel


@numba.njit(nogil=True, cache=True)
def _subset_kernel(p, cells, vstart, shifts, y0, x0, width):  # pragma: no cover - compiled
    """Row, full key and position of every pixel whose cell is among its row's straddling
    ``cells``; ``vstart[r, v]:vstart[r, v + 1]`` are those of value ``v`` (sorted)."""
    nr = p.shape[0]
    ny, nx = p.shape[1] - 4, p.shape[2] - 4
    n = 0
    for step in range(2):  # count, then fill
        if step == 1:
            rows = np.empty(n, np.int64)
            his = np.empty(n, np.int64)
            los = np.empty(n, np.int64)
            pos = np.empty(n, np.int64)
            n = 0
        for r in range(nr):
            shift = shifts[r]
            for y in range(ny):
                for x in range(nx):
                    c = np.int64(p[r, y + 2, x + 2])
                    if c < 0:
                        continue
                    a, b = vstart[r, c], vstart[r, c + 1]
                    if a == b:
                        continue
                    rel = _ring1(p, r, y + 2, x + 2, c) - 4 * c + _REL_BIAS
                    cell = (c << _REL_BITS) | (rel >> shift)
                    k = a + np.searchsorted(cells[a:b], cell)
                    if k < b and cells[k] == cell:
                        if step == 1:
                            hi, lo = _key(p, r, y + 2, x + 2, c)
                            rows[n] = r
                            his[n] = hi
                            los[n] = lo
                            pos[n] = (y0 + y) * width + x0 + x
                        n += 1
    return rows, his, los, pos


@numba.njit(nogil=True, cache=True)
def _apply_kernel(
    p, vstart, before, bp_hi, bp_lo, bp_pos, bp_level, y0, x0, width, fill, out
):  # pragma: no cover - compiled
    """The level of every pixel: the level of the last breakpoint at or before its
    ``(hi, lo, position)``; ``fill`` where invalid. ``vstart[r, v]`` is the first breakpoint
    of row ``r`` with value ``v`` (indices into the concatenated breakpoints)."""
    nr, ny, nx = out.shape
    for r in range(nr):
        for y in range(ny):
            for x in range(nx):
                c = np.int64(p[r, y + 2, x + 2])
                if c < 0:
                    out[r, y, x] = fill
                    continue
                a, b = vstart[r, c], vstart[r, c + 1]
                if a == b:
                    out[r, y, x] = before[r, c]
                    continue
                hi, lo = _key(p, r, y + 2, x + 2, c)
                q = (y0 + y) * width + x0 + x
                # number of breakpoints in [a, b) at or before (hi, lo, q)
                lo_i, hi_i = a, b
                while lo_i < hi_i:
                    mid = (lo_i + hi_i) >> 1
                    h = bp_hi[mid]
                    if h < hi or (
                        h == hi and (bp_lo[mid] < lo or (bp_lo[mid] == lo and bp_pos[mid] <= q))
                    ):
                        lo_i = mid + 1
                    else:
                        hi_i = mid
                out[r, y, x] = before[r, c] if lo_i == a else bp_level[lo_i - 1]


# -- block functions (run by the tasks) -------------------------------------------------------


def _coarsen(keys: np.ndarray, counts: np.ndarray, by: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted cells and counts with ``by`` more bits of shift: merged neighbours stay sorted."""
    if by == 0 or not keys.size:
        return keys, counts
    mask = (1 << _REL_BITS) - 1
    keys = ((keys >> _REL_BITS) << _REL_BITS) | ((keys & mask) >> by)
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[first], np.add.reduceat(counts, first)


def _sorted_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``keys``, sorted, and how often each occurs."""
    keys = np.sort(keys)
    if not keys.size:
        return keys, np.zeros(0, np.int64)
    first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    return keys[first], np.diff(np.r_[first, keys.size]).astype(np.int64)


def _cell_shift(keys: np.ndarray, limit: int) -> int:
    """The smallest extra shift at which the sorted cells ``keys`` merge into at most
    ``limit`` cells. Two neighbours stay apart at shift ``s`` when their values
    differ or the highest bit in which their relative sums differ is at or above ``s``."""
    limit = max(1, limit)
    if keys.size <= limit:
        return 0
    mask = (1 << _REL_BITS) - 1
    same = (keys[1:] >> _REL_BITS) == (keys[:-1] >> _REL_BITS)
    bits = np.frexp(((keys[1:] ^ keys[:-1]) & mask)[same].astype(np.float64))[1]
    apart_at = np.bincount(bits, minlength=_REL_BITS + 2)  # bit lengths 1.._REL_BITS
    # distinct cells at shift s: 1 + value changes + neighbours whose bit length exceeds s
    base = 1 + int((~same).sum())
    above = np.cumsum(apart_at[::-1])[::-1]  # above[k] = neighbours with bit length >= k
    for shift in range(_REL_BITS + 1):
        if base + int(above[shift + 1]) <= limit:
            return shift
    return _REL_BITS


def _block_cells(p: np.ndarray) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Per row of a padded block: ``(shift, area, cells, counts)``, cells sorted, at the
    smallest shift that leaves at most one cell per :data:`_PARTIAL_PIXELS` pixels of area."""
    ny, nx = p.shape[1] - 2 * _HALO, p.shape[2] - 2 * _HALO
    cells = np.empty((p.shape[0], ny, nx), np.int64)
    _cells_kernel(p, cells)
    out = []
    for row in cells:
        keys, counts = _sorted_counts(row[row >= 0])
        shift = _cell_shift(keys, row.size // _PARTIAL_PIXELS)
        keys, counts = _coarsen(keys, counts, shift)
        out.append((shift, row.size, keys, counts))
    return out


def _merge_cells(
    *parts: list[tuple[int, int, np.ndarray, np.ndarray]], final: bool = False
) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """The per-row cell counts of several blocks summed, at the largest shift among them,
    coarsened further to one cell per :data:`_PARTIAL_PIXELS` pixels of area (per
    :data:`_CELL_PIXELS` at the ``final`` merge of a row)."""
    merged = []
    for row in zip(*parts, strict=True):
        shift = max(s for s, _, _, _ in row)
        area = sum(a for _, a, _, _ in row)
        pieces = [_coarsen(k, c, shift - s) for s, _, k, c in row]
        keys = np.concatenate([k for k, _ in pieces])
        counts = np.concatenate([c for _, c in pieces])
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], counts[order]
        if keys.size:
            first = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            keys, counts = keys[first], np.add.reduceat(counts, first)
        more = _cell_shift(keys, area // (_CELL_PIXELS if final else _PARTIAL_PIXELS))
        more = min(more, _REL_BITS - shift)
        keys, counts = _coarsen(keys, counts, more)
        merged.append((shift + more, area, keys, counts))
    return merged


def _block_subset(
    p: np.ndarray, cells: np.ndarray, vstart: np.ndarray, shifts: np.ndarray, y0: int, x0: int,
    width: int,
) -> tuple[np.ndarray, ...]:  # fmt: skip
    return _subset_kernel(p, cells, vstart, shifts, y0, x0, width)


def _apply_block(
    p: np.ndarray, tables: list[np.ndarray], y0: int, x0: int, *, width: int, fill: Any,
    out_dtype: np.dtype,
) -> np.ndarray:  # fmt: skip
    vstart, before, hi, lo, pos, level = tables
    out = np.empty((p.shape[0], p.shape[1] - 2 * _HALO, p.shape[2] - 2 * _HALO), out_dtype)
    _apply_kernel(p, vstart, before, hi, lo, pos, level, y0, x0, width, fill, out)
    return out


def _tree(parts: list[Any], combine: Any, split_every: int = 8) -> Any:
    """``combine`` applied over ``parts`` (delayed) in a tree of fan-in ``split_every``; the
    root call gets ``final=True``."""
    while len(parts) > split_every:
        parts = [
            dask.delayed(combine, pure=True)(*parts[i : i + split_every])
            for i in range(0, len(parts), split_every)
        ]
    return dask.delayed(combine, pure=True)(*parts, final=True)


# -- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecifyReport:
    """How the order of the pixels of each row was decided.

    Attributes
    ----------
    rows
        The rows (bands, dates and bands) of the source.
    pixels
        Valid pixels per row (each receives one level of the target).
    by_windows
        Pixels whose level was not decided by their value alone: a target boundary falls among
        the pixels of their value, so their rank within it decided it. It includes
        ``by_position``; ``by_windows - by_position`` were told apart by the window sums.
    by_position
        Pixels whose level was decided by raster position alone: they tie with a pixel of
        another level in value and in all five window sums.
    """

    rows: Rows
    pixels: np.ndarray
    by_windows: np.ndarray
    by_position: np.ndarray

    @property
    def position_share(self) -> np.ndarray:
        """Per row, the share of valid pixels whose level was decided by position only."""
        return self.by_position / np.maximum(self.pixels, 1)

    @property
    def windows_share(self) -> np.ndarray:
        """Per row, the share of valid pixels whose level the window sums decided."""
        return self.by_windows / np.maximum(self.pixels, 1)

    def to_text(self) -> str:
        """One line per row: the valid pixels and three disjoint shares, those whose level
        their value decided, the window sums, or raster position only."""
        lines = []
        for i in range(self.rows.size):
            where = self.rows.describe(i) or "data"
            n = max(int(self.pixels[i]), 1)
            windows = int(self.by_windows[i] - self.by_position[i]) / n
            lines.append(
                f"{where}: {int(self.pixels[i])} pixels, level decided by value for "
                f"{1 - self.windows_share[i]:.2%}, by window sums for {windows:.2%}, by "
                f"position only for {self.position_share[i]:.4%}"
            )
        return "\n".join(lines)


# -- inputs and target ------------------------------------------------------------------------


def _check_levels_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        raise UnsupportedDtypeError(
            f"{name} has dtype {dtype}; exact specification orders integer levels of at most "
            "16 bits (uint8, int8, uint16, int16). Quantise floats first, e.g. "
            "np.round(x * 1000).astype(np.uint16), or use match_histograms"
        )


def _shift(dtype: np.dtype) -> int:
    return int(np.iinfo(dtype).min)


def _target(src: BandArray, reference: Any, channel_axis: int | None) -> tuple[Histogram, str]:
    """The reference as a (lazy or concrete) levels histogram, and what to call it."""
    if isinstance(reference, Histogram):
        binning = reference.binning
        if binning.kind != "levels":
            raise OptionError(
                f"{reference.name} is a histogram with {binning.kind} bins; exact specification "
                "needs a histogram of integer levels (band_histograms of uint8/uint16/int16 data "
                "without bins= or range=)"
            )
        return reference, reference.name
    ref = as_band_array(reference, name="reference", channel_axis=channel_axis)
    _check_levels_dtype(ref.dtype, ref.name)
    ref = reference_with_source_nodata(src, ref)
    binning = Binning.levels(ref.dtype, ref.array.shape[0])
    return binned_histogram(ref, None, binning), ref.name


def largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    """``counts`` rescaled to sum to ``total`` exactly: ``floor(c * total / sum)`` per level,
    then one more for the levels with the largest remainders, the lower level first among
    equal remainders.

    Examples
    --------
    >>> largest_remainder(np.array([1, 1, 1]), 4).tolist()
    [2, 1, 1]
    >>> largest_remainder(np.array([0, 3, 1]), 8).tolist()
    [0, 6, 2]
    """
    counts = np.asarray(counts, dtype=np.int64)
    have = int(counts.sum())
    if have == total:
        return counts.copy()
    if have * total < 2**63:
        floor, rem = np.divmod(counts * np.int64(total), np.int64(have))
    else:  # exact in Python integers
        prod = counts.astype(object) * total
        floor, rem = (prod // have).astype(np.int64), (prod % have).astype(np.int64)
    short = total - int(floor.sum())
    if short:
        order = np.lexsort((np.arange(rem.size), -rem))  # largest remainder, lower level first
        floor[order[:short]] += 1
    return floor


# -- the passes -------------------------------------------------------------------------------


def _encoded(src: BandArray, mask: Any) -> da.Array:
    """The input as dask int32 ``(row, y, x)``: the value minus the dtype's minimum
    (0..65535), -1 where invalid (nodata or masked). Spatial axes shorter than 2 are padded
    with invalid pixels, so that a 2-pixel halo exists."""
    arr = as_dask(src)
    enc = arr.astype(np.int32) - np.int32(_shift(src.dtype))
    invalid = None
    if src.nodata is not None:
        invalid = arr == src.nodata
    if mask is not None:
        if isinstance(mask, np.ndarray):
            rows = -1 if mask.shape[0] == 1 else arr.chunks[0]
            mask = da.from_array(mask, chunks=(rows, *arr.chunks[1:]), name=False)
        invalid = mask if invalid is None else invalid | mask
    if invalid is not None:
        enc = da.where(invalid, np.int32(-1), enc)
    pad = [(0, 0), (0, max(0, 2 - enc.shape[1])), (0, max(0, 2 - enc.shape[2]))]
    if pad[1][1] or pad[2][1]:
        enc = da.pad(enc, pad, mode="constant", constant_values=-1)
    return enc


def _with_halo(enc: da.Array) -> da.Array:
    return da.overlap.overlap(
        enc, depth={0: 0, 1: _HALO, 2: _HALO}, boundary={0: "none", 1: -1, 2: -1}
    )


def _inner_chunks(padded: da.Array) -> tuple[tuple[int, ...], ...]:
    return (
        padded.chunks[0],
        tuple(c - 2 * _HALO for c in padded.chunks[1]),
        tuple(c - 2 * _HALO for c in padded.chunks[2]),
    )


def _starts(chunks: tuple[int, ...]) -> list[int]:
    return [int(s) for s in np.cumsum((0, *chunks[:-1]))]


@dataclass
class _RowPlan:
    """What the driver knows about one row after the cell pass."""

    shift: int
    cells: np.ndarray  # sorted
    counts: np.ndarray
    run_ends: np.ndarray  # cumulative target counts per level
    first: np.ndarray  # level index of each cell's first pixel
    last: np.ndarray  # ... and of its last
    start: np.ndarray  # rank of each cell's first pixel


def _row_plan(shift: int, cells: np.ndarray, counts: np.ndarray, target: np.ndarray) -> _RowPlan:
    run_ends = np.cumsum(target, dtype=np.int64)
    start = np.cumsum(counts, dtype=np.int64) - counts
    first = np.searchsorted(run_ends, start, side="right")
    last = np.searchsorted(run_ends, start + counts - 1, side="right")
    return _RowPlan(shift, cells, counts, run_ends, first, last, start)


def _cut_values(plan: _RowPlan) -> int:
    """How many pixels have a value whose first and last pixels get different levels."""
    values = plan.cells >> _REL_BITS
    first = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    last = np.r_[first[1:], values.size] - 1
    cut = plan.first[first] != plan.last[last]
    per_value = np.add.reduceat(plan.counts, first)
    return int(per_value[cut].sum())


def _cell_of(hi: np.ndarray, shift: int) -> np.ndarray:
    """The cell of full keys ``hi``."""
    value = hi >> (2 * _RING_BITS)
    d1 = (hi >> _RING_BITS) & ((1 << _RING_BITS) - 1)
    return (value << _REL_BITS) | ((d1 - 4 * value + _REL_BIAS) >> shift)


def _smallest_hi(cells: np.ndarray, shift: int) -> np.ndarray:
    """The smallest full key ``hi`` a pixel of each cell can have (d1 at its bin's floor)."""
    value = cells >> _REL_BITS
    rel = cells & ((1 << _REL_BITS) - 1)
    d1 = np.maximum((rel << shift) - _REL_BIAS + 4 * value, 0)
    return ((value << _RING_BITS) | d1) << _RING_BITS


def _key_order(his: np.ndarray, los: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The order of ``(hi, lo, pos)``: one sort by ``hi``, then the few runs of equal ``hi``
    sorted in place by all three (np.lexsort of every key would be several times slower)."""
    order = np.argsort(his, kind="stable")
    h = his[order]
    dup = h[1:] == h[:-1]
    if dup.any():
        tied = np.flatnonzero(np.r_[False, dup] | np.r_[dup, False])
        members = order[tied]
        order[tied] = members[np.lexsort((pos[members], los[members], his[members]))]
    return order


def _breakpoints(
    plan: _RowPlan, sub: tuple[np.ndarray, np.ndarray, np.ndarray], levels: np.ndarray
) -> tuple[tuple[np.ndarray, ...], int]:
    """The row's breakpoints ``(hi, lo, pos, level value)``, sorted, one where the level
    changes along the order; and how many pixels tie with another level in their full key."""
    his, los, pos = sub
    order = _key_order(his, los, pos)
    his, los, pos = his[order], los[order], pos[order]
    # the rank of each gathered pixel: its cell's first rank + its place within the cell
    where = np.searchsorted(plan.cells, _cell_of(his, plan.shift))
    new_cell = np.r_[True, where[1:] != where[:-1]] if where.size else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(new_cell, np.arange(where.size), 0))
    rank = plan.start[where] + (np.arange(where.size) - group_start)
    sub_level = np.searchsorted(plan.run_ends, rank, side="right")
    # pixels equal in (value, all windows) with another level among them: decided by position
    same_key = np.r_[True, (his[1:] != his[:-1]) | (los[1:] != los[:-1])] if his.size else new_cell
    key_start = np.flatnonzero(same_key)
    key_end = np.append(key_start[1:], his.size).astype(np.int64)[: key_start.size]
    split = sub_level[key_start] != sub_level[key_end - 1]
    by_position = int((key_end - key_start)[split].sum())

    prev_cell_last = np.r_[-1, plan.last[:-1]]
    straddle = plan.first != plan.last
    # whole cells: a breakpoint at the cell's smallest key where its level differs from the
    # level of the last pixel of the cell before
    whole = np.flatnonzero(~straddle & (plan.first != prev_cell_last))
    # gathered pixels: where the level differs from the pixel before in the order
    prev = np.where(new_cell, prev_cell_last[where] if where.size else 0, np.r_[-1, sub_level[:-1]])
    keep = np.flatnonzero(sub_level != prev)
    bp_hi = np.concatenate([_smallest_hi(plan.cells[whole], plan.shift), his[keep]])
    bp_lo = np.concatenate([np.zeros(whole.size, np.int64), los[keep]])
    bp_pos = np.concatenate([np.zeros(whole.size, np.int64), pos[keep]])
    bp_level = np.concatenate([plan.first[whole], sub_level[keep]])
    order = np.lexsort((bp_pos, bp_lo, bp_hi))
    return (bp_hi[order], bp_lo[order], bp_pos[order], levels[bp_level[order]]), by_position


def _value_tables(bps: tuple[np.ndarray, ...], nvalues: int) -> tuple[np.ndarray, np.ndarray]:
    """``vstart`` (first breakpoint of each value, ``nvalues + 1``) and ``before`` (the level of
    the breakpoint before each value's first one: the level of a value no boundary cuts)."""
    hi, _, _, level = bps
    vstart = np.searchsorted(hi >> (2 * _RING_BITS), np.arange(nvalues + 1))
    before = level[np.maximum(vstart[:-1] - 1, 0)]
    return vstart.astype(np.int64), before


# -- the function -----------------------------------------------------------------------------


def specify_exact(
    source: Any,
    reference: Any,
    *,
    nodata: float | int | None = None,
    mask: Any = None,
    channel_axis: int | None = None,
    return_report: bool = False,
) -> Any:
    """Give every row of ``source`` exactly the histogram of ``reference``.

    Exact histogram specification (Coltuc, Bolon and Chassery 2006): the valid pixels of each
    row are ordered strictly - by value, then by their sums over Coltuc's five growing windows
    (3x3 cross, 3x3, 5x5 diamond, 5x5 without corners, 5x5), then by raster position - and the
    order is cut into runs of exactly the target counts, the lowest level first. The output's
    histogram equals the target, pixel for pixel; no noise is added, and the result does not
    depend on the chunking or the scheduler. See the module docstring for the out-of-core
    algorithm.

    Parameters
    ----------
    source
        Integer data of at most 16 bits (uint8, int8, uint16, int16): a numpy or dask array
        ``(y, x)``, ``(band, y, x)`` or ``(..., band, y, x)``, a DataArray or Dataset (rows as
        for :func:`~rastermatch.match_histograms`). Floats and wider integers are refused
        (:class:`~rastermatch.errors.UnsupportedDtypeError`): their values are not levels to
        count; quantise them first.
    reference
        The target: an integer array, DataArray or Dataset of at most 16 bits (its level
        counts, nodata left out), or a :class:`~rastermatch.Histogram` of integer levels
        (``band_histograms`` of such data; a per-level target built by hand). Rows meet the
        source's by label as in ``match_histograms``. Each row's counts are rescaled to the
        source row's valid pixels: ``floor(count * N / total)``, then one more for the levels
        with the largest remainders, the lower level first among equal remainders.
    nodata
        Source pixels equal to it are left out and stay ``nodata`` in the output (default the
        DataArray's ``.rio.nodata``); an explicit value also applies to a reference without a
        nodata of its own. The output nodata must not be a level the target gives pixels to
        (:class:`~rastermatch.errors.NodataConflictError`).
    mask
        Boolean, True where a pixel is left out: it never counts, never receives a level, and
        is written as ``nodata`` (so a mask needs a nodata value). ``(y, x)`` or laid out like
        the source.
    channel_axis
        numpy/dask input only: the axis of the bands (``-1`` for ``(y, x, c)``).
    return_report
        Also return a :class:`SpecifyReport`: per row, the share of pixels whose level the
        window sums decided and the share decided by raster position only.

    Returns
    -------
    The kind and layout that came in, in the reference's dtype. numpy in: numpy out. dask in:
    the statistics are computed now (two passes over the source, the reference's counts with
    the first) and the output is lazy (a third pass when it is computed).

    Notes
    -----
    Window neighbours outside the image, nodata or masked count as the centre value, so every
    window holds its full number of pixels and its sum orders as its mean. Equal values are
    ranked from the lowest window sum up. Memory: the cell pass keeps about one cell per 64
    valid pixels of a row, the second pass the pixels of the cells a target boundary cuts
    (about 64 per target level on noisy data; more where large flat areas tie).

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import specify_exact
    >>> source = np.array([[5, 5, 5, 5], [5, 5, 5, 9]], dtype=np.uint8)
    >>> flat = np.arange(8, dtype=np.uint8).reshape(2, 4)  # each level 0..7 once
    >>> out, report = specify_exact(source, flat, return_report=True)
    >>> out.tolist()
    [[0, 2, 4, 5], [1, 3, 6, 7]]
    >>> np.bincount(out.ravel()).tolist()
    [1, 1, 1, 1, 1, 1, 1, 1]
    >>> report.by_windows.tolist(), report.by_position.tolist()
    ([7], [4])

    A real scene, equalized exactly (every level of 1..255 gets the same count, give or take
    the one pixel the division leaves):

    >>> import rastermatch
    >>> rgb = rastermatch.open_raster("data/rasterio_RGB.byte.tif").isel(y=slice(200, 300))
    >>> flat = np.ones((3, 256), np.int64)
    >>> flat[:, 0] = 0  # nothing on the nodata level
    >>> target = rastermatch.Histogram(flat, rastermatch.Binning.levels(np.uint8, 3), nodata=0)
    >>> even = specify_exact(rgb, target, nodata=0)
    >>> counts = np.bincount(even.isel(band=0).values.ravel(), minlength=256)[1:]
    >>> int(counts.max() - counts.min()) <= 1
    True
    """
    src = as_band_array(source, nodata=nodata, name="source", channel_axis=channel_axis)
    _check_levels_dtype(src.dtype, src.name)
    hist, ref_name = _target(src, reference, channel_axis)
    m = None if mask is None else as_band_mask(mask, src)
    if m is not None and src.nodata is None:
        raise OptionError(
            "a mask was given but the source has no nodata value; masked pixels receive no "
            "level and are written as nodata: pass nodata= (a value the target does not use)"
        )
    _check_band_count(src, hist.rows, ref_name)
    index = hist.rows.index_for(src.rows, names=(ref_name, src.name))
    out_dtype = np.dtype(hist.binning.dtype)
    if src.nodata is not None and not nodata_fits(src.nodata, out_dtype):
        raise OptionError(
            f"the output takes the reference's dtype {out_dtype}, which cannot hold the "
            f"source's nodata {src.nodata!r}; pass a nodata value {out_dtype} can hold"
        )
    scheduler = None if (src.is_dask or hist.is_lazy) else "threads"

    enc = _encoded(src, m)
    padded = _with_halo(enc)
    chunks = _inner_chunks(padded)
    row_starts = _starts(chunks[0])
    blocks = padded.to_delayed()

    # 1. cells, with the reference's counts in the same pass
    counted = dask.delayed(_block_cells, pure=True)
    per_chunk = [
        _tree([counted(b) for b in blocks[i].ravel()], _merge_cells) for i in range(blocks.shape[0])
    ]
    if hist.is_lazy:
        cell_parts, hist = dask.compute(per_chunk, hist, scheduler=scheduler)
    else:  # a concrete histogram is not a dask collection: leave it out of the compute
        (cell_parts,) = dask.compute(per_chunk, scheduler=scheduler)
    row_cells = [row for part in cell_parts for row in part]
    plans, levels, by_windows = [], [], []
    offset, nbins = hist.binning.offset, hist.binning.nbins
    level_values = (offset + np.arange(nbins, dtype=np.int64)).astype(out_dtype)
    nvalues = 1 << (8 * src.dtype.itemsize)
    for r, (shift, _, cells, counts) in enumerate(row_cells):
        total = int(counts.sum())
        if total == 0:
            raise src.no_valid_pixels(r)
        tcounts = np.asarray(hist.counts[index[r]], dtype=np.int64)
        if int(tcounts.sum()) == 0:
            raise NoValidPixelsError(
                f"{hist.rows.describe(int(index[r])) or 'the target'} of {ref_name} has no "
                "counts to specify; check its nodata value, or drop the row"
            )
        target = largest_remainder(tcounts, total)
        _check_nodata_level(src, target, offset, ref_name)
        plan = _row_plan(shift, cells, counts, target)
        plans.append(plan)
        levels.append(level_values)
        by_windows.append(_cut_values(plan))

    # 2. the pixels of the cells a run boundary cuts
    subs = _gather_straddling(padded, blocks, plans, chunks, row_starts, scheduler, nvalues)

    # 3. breakpoints, and the lazy output
    tables, by_position = [], []
    for r, plan in enumerate(plans):
        bps, tied = _breakpoints(plan, subs[r], levels[r])
        vstart, before = _value_tables(bps, nvalues)
        tables.append((vstart, before, *bps))
        by_position.append(tied)
    fill = src.nodata if src.nodata is not None else 0
    out = _lazy_output(padded, chunks, tables, fill, out_dtype)
    if out.shape != src.array.shape:  # a 1-pixel axis was padded for the halo
        out = out[:, : src.array.shape[1], : src.array.shape[2]]
    if not src.is_dask:
        out = out.compute(scheduler="threads")
    result = src.wrap(out, nodata=src.nodata)
    if not return_report:
        return result
    report = SpecifyReport(
        src.rows,
        np.array([int(p.counts.sum()) for p in plans], np.int64),
        np.array(by_windows, np.int64),
        np.array(by_position, np.int64),
    )
    return result, report


def _check_band_count(src: BandArray, rows: Rows, ref_name: str) -> None:
    """Band numbers (not names) on both sides must be as many, as match_histograms requires:
    a reference of 3 bands for a source of 2 is a mistake, not a choice of its first two."""
    if "band" not in rows.dims or "band" not in src.rows.dims:
        return
    have, theirs = src.rows.coord("band"), rows.coord("band")
    named = all(isinstance(b, str) for b in (*have, *theirs))
    if len(have) != len(theirs) and not named:
        raise BandMismatchError(
            f"{src.name} has {len(have)} bands and {ref_name} has {len(theirs)}; select the "
            "same number of bands from each (--bands and --reference-bands on the command line)"
        )


def _check_nodata_level(src: BandArray, target: np.ndarray, offset: int, ref_name: str) -> None:
    if src.nodata is None:
        return
    k = int(src.nodata) - offset
    if 0 <= k < target.size and target[k] > 0:
        raise NodataConflictError(
            f"the target of {ref_name} gives pixels the level {python_scalar(src.nodata)}, "
            f"which is the source's nodata; pass the same nodata for the reference (it is left "
            "out of the target), or another nodata value for the source"
        )


def _gather_straddling(
    padded: da.Array,
    blocks: np.ndarray,
    plans: list[_RowPlan],
    chunks: tuple[tuple[int, ...], ...],
    row_starts: list[int],
    scheduler: str | None,
    nvalues_all: int,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per row: full key (hi, lo) and position of every pixel in a straddling cell."""
    empty = np.zeros(0, np.int64)
    straddling = [p.cells[p.first != p.last] for p in plans]
    if not any(s.size for s in straddling):
        return [(empty, empty, empty) for _ in plans]
    width = int(sum(chunks[2]))
    ys, xs = _starts(chunks[1]), _starts(chunks[2])
    tasks, owners = [], []
    for i in range(blocks.shape[0]):
        rows = range(row_starts[i], row_starts[i] + chunks[0][i])
        if not any(straddling[r].size for r in rows):
            continue
        cells = np.concatenate([straddling[r] for r in rows])
        sizes = np.cumsum([0, *(straddling[r].size for r in rows)])
        vstart = np.stack(
            [
                np.searchsorted(straddling[r] >> _REL_BITS, np.arange(nvalues_all + 1)) + off
                for r, off in zip(rows, sizes[:-1], strict=True)
            ]
        ).astype(np.int64)
        shifts = np.array([plans[r].shift for r in rows], np.int64)
        for j, k in itertools.product(range(blocks.shape[1]), range(blocks.shape[2])):
            task = dask.delayed(_block_subset, pure=True)(
                blocks[i, j, k], cells, vstart, shifts, ys[j], xs[k], width
            )
            tasks.append(task)
            owners.append(row_starts[i])
    results = dask.compute(*tasks, scheduler=scheduler)
    gathered: list[list[tuple[np.ndarray, ...]]] = [[] for _ in plans]
    for first_row, (rows, his, los, pos) in zip(owners, results, strict=True):
        for r in np.unique(rows):
            sel = rows == r
            gathered[first_row + int(r)].append((his[sel], los[sel], pos[sel]))
    out = []
    for parts in gathered:
        if not parts:
            out.append((empty, empty, empty))
            continue
        out.append(tuple(np.concatenate([p[t] for p in parts]) for t in range(3)))  # type: ignore[misc]
    return out


def _lazy_output(
    padded: da.Array,
    chunks: tuple[tuple[int, ...], ...],
    tables: list[tuple[np.ndarray, ...]],
    fill: Any,
    dtype: np.dtype,
) -> da.Array:
    """The output blocks: each task gets its row chunk's tables as literal arguments."""
    width = int(sum(chunks[2]))
    per_chunk = {}
    start = 0
    for i, n in enumerate(chunks[0]):
        rows = tables[start : start + n]
        start += n
        sizes = np.cumsum([0, *(t[2].size for t in rows)])
        vstart = np.stack([t[0] + s for t, s in zip(rows, sizes[:-1], strict=True)])
        before = np.stack([t[1] for t in rows])
        joined = tuple(np.concatenate([t[k] for t in rows]) for k in range(2, 6))
        per_chunk[(i,)] = [vstart, before, *joined]
    token = tokenize(padded, [t[2:] for t in tables], fill, dtype)
    tables_dep = ArrayValuesDep((chunks[0],), per_chunk)
    ys = ArrayValuesDep((chunks[1],), {(j,): y for j, y in enumerate(_starts(chunks[1]))})
    xs = ArrayValuesDep((chunks[2],), {(k,): x for k, x in enumerate(_starts(chunks[2]))})
    return da.blockwise(
        _apply_block,
        "byx",
        padded,
        "byx",
        tables_dep,
        "b",
        ys,
        "y",
        xs,
        "x",
        adjust_chunks={"y": chunks[1], "x": chunks[2]},
        align_arrays=False,
        dtype=dtype,
        meta=np.empty((0, 0, 0), dtype),
        name=f"rastermatch-specify-{token}",
        width=width,
        fill=np.asarray(fill).astype(dtype)[()],
        out_dtype=dtype,
    )
