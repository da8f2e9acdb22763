"""Per-band histograms: a compiled block kernel and a dask tree reduction.

Step one of the data flow. Every later step (LUTs, equalization, quality metrics) works on the
small :class:`Histogram` this module produces, never on the pixels again.

How a dask-backed band is counted:

1. Each block is counted by a compiled, GIL-free loop (:func:`block_counts`), so dask's threads
   count blocks in parallel. A block yields one row of counts per band; they are int32 when the
   block holds fewer than 2**31 pixels, to halve the bookkeeping that 65,536-level counts cost.
2. ``da.blockwise`` lays the block counts out as ``(band, block_y, block_x, bin)`` and dask sums
   them as a tree into exact int64 counts, whatever the chunking (the pattern of xhistogram).
3. Integers of at most 16 bits get one bin per level. Wider integers and floats get ``bins``
   equal-width bins over each band's valid range, found first by a min/max reduction unless
   ``range`` is given.

The result stays lazy: a :class:`Histogram` is a dask collection, so ``dask.compute(h_src,
h_ref)`` computes several histograms in one pass over their inputs.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import dask
import dask.array as da
import numba
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ._data import BandArray, as_band_array, as_band_mask, python_scalar
from .errors import BandMismatchError, BinningMismatchError, NoValidPixelsError, RastermatchError

__all__ = ["DEFAULT_BINS", "Binning", "Histogram", "band_histograms", "band_ranges", "block_counts"]

DEFAULT_BINS = 65_536
_EXACT_MAX_ITEMSIZE = 2  # integers of up to 16 bits get one bin per level
_INT32_BLOCK_LIMIT = 2**31 - 1


# -- binning ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Binning:
    """How values are assigned to bins.

    ``kind="levels"``: one bin per integer level, bin ``i`` holds the value ``lo + i`` (the same
    for every band; ``lo`` is 0 for unsigned and the dtype's minimum for signed integers).
    ``kind="uniform"``: ``nbins`` equal-width bins over ``[lo[b], hi[b]]`` for band ``b``, the
    last bin closed.

    ``lo`` and ``hi`` hold one value per band; they are dask arrays while a range is still being
    computed (see :attr:`is_lazy`).
    """

    kind: Literal["levels", "uniform"]
    dtype: np.dtype
    nbins: int
    lo: Any
    hi: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        if self.kind not in ("levels", "uniform"):
            raise ValueError(f"binning kind must be 'levels' or 'uniform', not {self.kind!r}")
        if not (isinstance(self.nbins, int | np.integer) and self.nbins >= 1):
            raise ValueError(f"the number of bins must be a positive integer, not {self.nbins!r}")
        object.__setattr__(self, "nbins", int(self.nbins))
        if not self.is_lazy:
            lo = np.asarray(self.lo, dtype=np.float64).reshape(-1)
            hi = np.asarray(self.hi, dtype=np.float64).reshape(-1)
            if lo.shape != hi.shape or not (np.all(np.isfinite(lo)) and np.all(hi >= lo)):
                raise ValueError(
                    f"bad bin range lo={lo}, hi={hi}: need finite lo <= hi, one per band"
                )
            object.__setattr__(self, "lo", lo)
            object.__setattr__(self, "hi", hi)

    @classmethod
    def levels(cls, dtype: np.dtype, nbands: int) -> Binning:
        """One bin per level of an integer dtype of at most 16 bits."""
        info = np.iinfo(dtype)
        n = int(info.max) - int(info.min) + 1
        return cls(
            "levels", dtype, n, np.full(nbands, float(info.min)), np.full(nbands, float(info.max))
        )

    @property
    def is_lazy(self) -> bool:
        return isinstance(self.lo, da.Array) or isinstance(self.hi, da.Array)

    @property
    def nbands(self) -> int:
        return int(self.lo.shape[0])

    @property
    def offset(self) -> int:
        """The level of bin 0 (``kind="levels"`` only)."""
        return int(self.lo[0])

    def level_bin(self, value: Any) -> int | None:
        """The bin of integer level ``value`` (``kind="levels"``), or None if it has none."""
        if self.kind != "levels" or value is None or not float(value).is_integer():
            return None
        k = int(value) - self.offset
        return k if 0 <= k < self.nbins else None

    def edges(self) -> np.ndarray:
        """Bin edges, ``(band, nbins + 1)``; for levels, half-way between integers."""
        if self.kind == "levels":
            e = self.offset - 0.5 + np.arange(self.nbins + 1, dtype=np.float64)
            return np.broadcast_to(e, (self.nbands, self.nbins + 1))
        t = np.arange(self.nbins + 1, dtype=np.float64) / self.nbins
        return self.lo[:, None] + (self.hi - self.lo)[:, None] * t

    def values(self) -> np.ndarray:
        """The value each bin stands for, ``(band, nbins)``: the level, or the bin centre."""
        if self.kind == "levels":
            v = self.offset + np.arange(self.nbins, dtype=np.float64)
            return np.broadcast_to(v, (self.nbands, self.nbins))
        e = self.edges()
        return (e[:, :-1] + e[:, 1:]) / 2

    def upper_values(self) -> np.ndarray:
        """The largest value each bin holds, ``(band, nbins)``: the level, or the upper edge."""
        return self.values() if self.kind == "levels" else self.edges()[:, 1:]

    def same_as(self, other: Binning) -> bool:
        if self.is_lazy or other.is_lazy:
            return False
        return (
            self.kind == other.kind
            and self.dtype == other.dtype
            and self.nbins == other.nbins
            and np.array_equal(self.lo, other.lo)
            and np.array_equal(self.hi, other.hi)
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready layout (see :mod:`rastermatch.schema`)."""
        from .schema import binning_to_dict

        return binning_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Binning:
        """From :meth:`to_dict`'s layout, every field checked (HistogramFileError if bad)."""
        from .schema import binning_from_dict

        return binning_from_dict(d)

    def _require_concrete(self) -> None:
        if self.is_lazy:
            raise RastermatchError(
                "the bin range is not computed yet; compute the histogram first "
                "(hist.compute() or dask.compute(h_src, h_ref))"
            )

    def __repr__(self) -> str:
        if self.kind == "levels":
            return f"Binning(levels, {self.dtype}, {self.nbins} levels from {self.offset})"
        rng = (
            "lazy"
            if self.is_lazy
            else ", ".join(f"[{a:g}, {b:g}]" for a, b in zip(self.lo, self.hi, strict=True))
        )
        return f"Binning(uniform, {self.dtype}, {self.nbins} bins over {rng})"


def default_binning(
    dtype: np.dtype, nbands: int, *, bins: int | None, range: Any
) -> Binning | None:
    """The binning rastermatch uses for ``dtype``; None when a range must first be computed."""
    if (
        dtype.kind in "iu"
        and dtype.itemsize <= _EXACT_MAX_ITEMSIZE
        and bins is None
        and range is None
    ):
        return Binning.levels(dtype, nbands)
    nbins = DEFAULT_BINS if bins is None else bins
    if range is None:
        return None
    lo, hi = np.broadcast_arrays(*(np.asarray(r, dtype=np.float64) for r in _split_range(range)))
    lo = np.broadcast_to(lo, (nbands,))
    hi = np.broadcast_to(hi, (nbands,))
    return Binning("uniform", dtype, nbins, lo.copy(), hi.copy())


def _split_range(range: Any) -> tuple[Any, Any]:
    """``(lo, hi)`` or per band ``[(lo, hi), ...]`` as two arrays."""
    r = np.asarray(range, dtype=np.float64)
    if r.shape == (2,):
        return r[0], r[1]
    if r.ndim == 2 and r.shape[1] == 2:
        return r[:, 0], r[:, 1]
    raise ValueError(f"range must be (lo, hi) or one (lo, hi) per band, not {range!r}")


# -- compiled kernels -------------------------------------------------------------------------


@numba.njit(inline="always")
def uniform_bin(v: float, lo: float, scale: float, nbins: int) -> int:
    """Bin of ``v`` among ``nbins`` equal bins starting at ``lo`` (``scale = nbins / width``),
    clamped to the first and last bin. Shared with the LUT kernels so both agree on every value."""
    t = (v - lo) * scale
    if t <= 0.0:
        return 0
    k = int(t)
    return k if k < nbins else nbins - 1


@numba.njit(nogil=True, cache=True)
def _count_levels(block, offset, nodata, has_nodata, mask, has_mask, out):  # pragma: no cover
    nb, ny, nx = block.shape
    for b in range(nb):
        mb = b if mask.shape[0] > 1 else 0
        ob = out[b]
        if not has_mask:
            # no test per pixel: an unsigned index spares numba's negative-index wraparound,
            # and nodata is counted like any level, its bin cleared after the loop
            for i in range(ny):
                for j in range(nx):
                    ob[np.uint64(np.int64(block[b, i, j]) - offset)] += 1
            if has_nodata:
                ob[np.int64(nodata) - offset] = 0
        else:
            for i in range(ny):
                for j in range(nx):
                    v = block[b, i, j]
                    if (has_nodata and v == nodata) or mask[mb, i, j]:
                        continue
                    ob[v - offset] += 1


@numba.njit(nogil=True, cache=True)
def _count_uniform(block, lo, hi, nodata, has_nodata, mask, has_mask, out):  # pragma: no cover
    nb, ny, nx = block.shape
    nbins = out.shape[1]
    for b in range(nb):
        mb = b if mask.shape[0] > 1 else 0
        lo_b = lo[b]
        hi_b = hi[b]
        scale = nbins / (hi_b - lo_b) if hi_b > lo_b else 0.0
        for i in range(ny):
            for j in range(nx):
                v = block[b, i, j]
                # written so that NaN fails it: NaN and values outside the range are not counted
                if not (v >= lo_b and v <= hi_b):
                    continue
                if (has_nodata and v == nodata) or (has_mask and mask[mb, i, j]):
                    continue
                out[b, uniform_bin(v, lo_b, scale, nbins)] += 1


@numba.njit(nogil=True, cache=True)
def _valid_range(block, nodata, has_nodata, mask, has_mask, out):  # pragma: no cover
    nb, ny, nx = block.shape
    for b in range(nb):
        mb = b if mask.shape[0] > 1 else 0
        lo = np.inf
        hi = -np.inf
        for i in range(ny):
            for j in range(nx):
                v = block[b, i, j]
                if (has_nodata and v == nodata) or (has_mask and mask[mb, i, j]):
                    continue
                f = np.float64(v)
                if f - f != 0.0:  # NaN or infinite
                    continue
                if f < lo:
                    lo = f
                if f > hi:
                    hi = f
        out[b, 0] = lo
        out[b, 1] = hi


_NO_MASK = np.zeros((1, 1, 1), dtype=bool)


def _kernel_nodata(block: np.ndarray, nodata: Any) -> tuple[Any, bool]:
    """The nodata value as the block's own scalar type, and whether it can occur at all."""
    if nodata is None or (isinstance(nodata, float) and np.isnan(nodata)):
        return block.dtype.type(0), False  # NaN is never counted anyway
    if block.dtype.kind in "iu":
        info = np.iinfo(block.dtype)
        if not float(nodata).is_integer() or not info.min <= nodata <= info.max:
            return block.dtype.type(0), False
    return block.dtype.type(nodata), True


def _kernel_mask(mask: np.ndarray | None, ndim: int) -> tuple[np.ndarray, bool]:
    if mask is None:
        return _NO_MASK, False
    return (mask if mask.ndim == 3 else mask.reshape((1,) * (3 - mask.ndim) + mask.shape)), True


def block_counts(
    block: np.ndarray,
    mask: np.ndarray | None = None,
    lohi: np.ndarray | None = None,
    *,
    kind: str,
    nbins: int,
    offset: int = 0,
    nodata: Any = None,
) -> np.ndarray:
    """Count one ``(band, y, x)`` block into ``(band, 1, 1, nbins)`` counts.

    ``lohi`` holds ``(lo, hi)`` per band for ``kind="uniform"``. The counts are int32 for blocks
    of fewer than 2**31 pixels (the tree reduction sums them as int64).
    """
    dtype = np.int32 if block[0].size <= _INT32_BLOCK_LIMIT else np.int64
    out = np.zeros((block.shape[0], nbins), dtype=dtype)
    nd, has_nd = _kernel_nodata(block, nodata)
    m, has_m = _kernel_mask(mask, block.ndim)
    if kind == "levels":
        _count_levels(block, offset, nd, has_nd, m, has_m, out)
    else:
        lohi = np.asarray(lohi, dtype=np.float64).reshape(block.shape[0], 2)
        _count_uniform(
            block,
            np.ascontiguousarray(lohi[:, 0]),
            np.ascontiguousarray(lohi[:, 1]),
            nd,
            has_nd,
            m,
            has_m,
            out,
        )
    return out[:, None, None, :]


def block_range(
    block: np.ndarray, mask: np.ndarray | None = None, *, nodata: Any = None
) -> np.ndarray:
    """Valid ``(min, max)`` per band of one block, ``(band, 1, 1, 2)``; (inf, -inf) if none."""
    out = np.empty((block.shape[0], 2), dtype=np.float64)
    nd, has_nd = _kernel_nodata(block, nodata)
    m, has_m = _kernel_mask(mask, block.ndim)
    _valid_range(block, nd, has_nd, m, has_m, out)
    return out[:, None, None, :]


# -- the Histogram value object ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Histogram:
    """Per-band counts with their binning and band labels.

    ``counts`` is ``(band, nbins)`` int64, exact. While it is a dask array the histogram is lazy
    and is itself a dask collection: ``hist.compute()`` or ``dask.compute(h_src, h_ref)`` give
    concrete histograms, computed in one pass over their inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import band_histograms
    >>> h = band_histograms(np.array([[[0, 1, 1], [3, 3, 3]]], dtype=np.uint8))
    >>> h.counts[0, :4].tolist(), h.total.tolist()
    ([1, 2, 0, 3], [6])
    >>> (h + h).counts[0, :4].tolist()
    [2, 4, 0, 6]
    >>> Histogram.from_json(h.to_json()).counts[0, :4].tolist()
    [1, 2, 0, 3]
    """

    counts: Any
    binning: Binning
    bands: tuple[Hashable, ...] = field(default=())
    _name: str = field(default="data", repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.bands:
            object.__setattr__(self, "bands", tuple(range(1, self.counts.shape[0] + 1)))
        object.__setattr__(self, "bands", tuple(python_scalar(b) for b in self.bands))
        if self.counts.ndim != 2 or self.counts.shape[1] != self.binning.nbins:
            raise ValueError(
                f"counts must have shape (band, {self.binning.nbins}), not {self.counts.shape}"
            )
        if len(self.bands) != self.counts.shape[0]:
            raise ValueError(f"{len(self.bands)} band labels for {self.counts.shape[0]} bands")
        if not self.is_lazy:
            counts = np.asarray(self.counts)
            if counts.dtype.kind not in "iu" or (counts.size and counts.min() < 0):
                raise ValueError("counts must be non-negative integers")
            object.__setattr__(self, "counts", counts.astype(np.int64, copy=False))

    # -- derived quantities
    @property
    def is_lazy(self) -> bool:
        return isinstance(self.counts, da.Array) or self.binning.is_lazy

    @property
    def nbands(self) -> int:
        return int(self.counts.shape[0])

    @property
    def total(self) -> Any:
        """Number of counted pixels per band."""
        return self.counts.sum(axis=1)

    def cumulative(self) -> np.ndarray:
        """Cumulative counts per band, ``(band, nbins)`` int64: the unnormalized CDF."""
        return np.cumsum(self.counts, axis=1)

    def cdf(self) -> np.ndarray:
        """The empirical CDF per band (float64; use :meth:`cumulative` where ties matter)."""
        c = self.cumulative()
        return c / np.maximum(c[:, -1:], 1)

    def band(self, index: int) -> Histogram:
        """The histogram of one band (by position)."""
        b = self.binning
        binning = Binning(
            b.kind, b.dtype, b.nbins, b.lo[index : index + 1], b.hi[index : index + 1]
        )
        return Histogram(self.counts[index : index + 1], binning, (self.bands[index],))

    def __add__(self, other: Histogram) -> Histogram:
        """Merge two histograms of the same binning (pixels counted in either)."""
        if not isinstance(other, Histogram):
            return NotImplemented
        if self.nbands != other.nbands:
            raise BandMismatchError(
                f"cannot add histograms of {self.nbands} and {other.nbands} bands"
            )
        same = self.binning is other.binning or self.binning.same_as(other.binning)
        if not same:
            raise BinningMismatchError(
                f"cannot add histograms with different binnings: {self.binning!r} and "
                f"{other.binning!r}; histogram both with the same range=... and bins=..."
            )
        return Histogram(self.counts + other.counts, self.binning, self.bands)

    # -- serialization
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (format 2, see :mod:`rastermatch.schema`): per band the occupied
        bins and their counts, with vmin/vmax/nmin for uniform binnings, and the nodata."""
        from .schema import histogram_to_dict

        return histogram_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        """From :meth:`to_dict`'s layout (format 1 or 2), every field checked first; a bad
        document raises :class:`~rastermatch.HistogramFileError`."""
        from .schema import histogram_from_dict

        return histogram_from_dict(d)

    def to_json(self) -> str:
        """:meth:`to_dict` as compact JSON (NaN nodata as the string "nan")."""
        from .schema import histogram_to_json

        return histogram_to_json(self)

    @classmethod
    def from_json(cls, text: str | bytes) -> Histogram:
        """From :meth:`to_json` text, parsed strictly; HistogramFileError if it is not valid."""
        from .schema import histogram_from_json

        return histogram_from_json(text)

    def _require_concrete(self) -> None:
        if self.is_lazy:
            raise RastermatchError(
                "this histogram is lazy; compute it first with hist.compute() or, for several "
                "at once, dask.compute(h_src, h_ref)"
            )

    # -- display
    def __repr__(self) -> str:
        state = "lazy" if self.is_lazy else f"{self.total.tolist()} pixels"
        return f"<Histogram {self.nbands} band(s) {list(self.bands)}, {self.binning!r}, {state}>"

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Plot the CDF of every band (matplotlib; the ``plot`` extra)."""
        from .plot import plot_histogram

        return plot_histogram(self, ax=ax, **kwargs)

    def _repr_png_(self) -> bytes | None:
        if self.is_lazy:
            return None
        from .plot import figure_png

        return figure_png(self.plot)

    # -- dask collection protocol: a lazy histogram computes into a concrete one
    @cached_property
    def _parts(self) -> list[da.Array]:
        parts = [
            self.counts.rechunk(-1)
            if isinstance(self.counts, da.Array)
            else da.from_array(self.counts)
        ]
        if self.binning.is_lazy:
            parts.append(da.stack([self.binning.lo, self.binning.hi]).rechunk(-1))
        return parts

    def __dask_graph__(self) -> HighLevelGraph | None:
        if not self.is_lazy:
            return None
        return HighLevelGraph.merge(*(p.__dask_graph__() for p in self._parts))

    def __dask_keys__(self) -> list[Any]:
        return [p.__dask_keys__() for p in self._parts]

    def __dask_layers__(self) -> tuple[str, ...]:
        return tuple(layer for p in self._parts for layer in p.__dask_layers__())

    def __dask_tokenize__(self) -> str:
        return tokenize(type(self).__name__, *(p.name for p in self._parts), self.bands)

    __dask_optimize__ = staticmethod(da.Array.__dask_optimize__)
    __dask_scheduler__ = staticmethod(dask.threaded.get)

    def __dask_postcompute__(self) -> tuple[Any, tuple[Any, ...]]:
        return _finalize_histogram, (self.binning, self.bands, self._name)

    def compute(self, **kwargs: Any) -> Histogram:
        """The concrete histogram (``dask.compute`` keyword arguments pass through)."""
        return dask.compute(self, **kwargs)[0] if self.is_lazy else self


def _first_block(nested: Any) -> Any:
    while isinstance(nested, list | tuple):
        nested = nested[0]
    return nested


def _finalize_histogram(
    results: list[Any], binning: Binning, bands: tuple[Hashable, ...], name: str
) -> Histogram:
    counts = _first_block(results[0])
    if binning.is_lazy:
        lohi = _check_range(_first_block(results[1]).T, bands, name)
        binning = Binning(binning.kind, binning.dtype, binning.nbins, lohi[:, 0], lohi[:, 1])
    return Histogram(counts, binning, bands)


# -- public functions -------------------------------------------------------------------------


def _mask_args(mask: Any) -> tuple[Any, ...]:
    if mask is None:
        return (None, None)
    return (mask, "byx" if mask.shape[0] > 1 else "zyx")


def _lazy_range(src: BandArray, mask: Any) -> da.Array:
    """``(band, 2)`` valid min/max as a dask reduction over blocks."""
    arr = src.array
    per_block = da.blockwise(
        block_range,
        "byxk",
        arr,
        "byx",
        *_mask_args(mask),
        new_axes={"k": 2},
        adjust_chunks={"y": 1, "x": 1},
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0), np.float64),
        nodata=src.nodata,
        name=f"rastermatch-range-block-{tokenize(arr, mask, src.nodata)}",
    )
    lo = per_block[..., 0].min(axis=(1, 2))
    hi = per_block[..., 1].max(axis=(1, 2))
    return da.stack([lo, hi], axis=1)


def band_ranges(
    data: Any, *, nodata: float | int | None = None, mask: Any = None
) -> np.ndarray | da.Array:
    """The valid ``(min, max)`` of every band, ``(band, 2)`` float64.

    NaN, infinities, nodata and masked pixels are left out. Lazy for dask input (a tree
    reduction); a band without valid pixels gives ``(inf, -inf)``.

    Examples
    --------
    >>> import numpy as np
    >>> band_ranges(np.array([[0.5, np.nan], [np.inf, 2.0]])).tolist()
    [[0.5, 2.0]]
    """
    src = as_band_array(data, nodata=nodata)
    m = None if mask is None else as_band_mask(mask, src)
    if not src.is_dask:
        return block_range(src.array, m, nodata=src.nodata)[:, 0, 0, :]
    return _lazy_range(src, m)


def _check_range(lohi: np.ndarray, bands: tuple[Hashable, ...], name: str) -> np.ndarray:
    for label, (lo, hi) in zip(bands, lohi, strict=True):
        if not lo <= hi:
            raise NoValidPixelsError(
                f"band {label!r} of {name} has no valid pixels (all NaN, infinite, nodata or "
                "masked); drop the band or check the nodata value and the mask"
            )
    return lohi


def band_histograms(
    data: Any,
    *,
    nodata: float | int | None = None,
    mask: Any = None,
    bins: int | None = None,
    range: Any = None,
) -> Histogram:
    """Per-band histograms of ``data``.

    Parameters
    ----------
    data
        ``(band, y, x)`` or ``(y, x)``: an xarray DataArray (numpy- or dask-backed), a numpy or a
        dask array.
    nodata
        Value left out of the counts. Default: the DataArray's ``.rio.nodata`` (``_FillValue``),
        else none. NaN and infinities are never counted.
    mask
        Boolean, True where a pixel is left out of the statistics (clouds, say): ``(y, x)`` or
        ``(band, y, x)``, a DataArray aligned with ``data`` or an array of the same grid.
    bins
        For floats and integers wider than 16 bits: the number of equal-width bins (default
        65,536). Integers of at most 16 bits get one bin per level unless ``bins`` or ``range``
        is given.
    range
        ``(lo, hi)`` for all bands or one pair per band. Default: each band's valid range, found
        with a min/max reduction (a first pass over the data).

    Returns
    -------
    Histogram
        Lazy when ``data`` is dask-backed: building it reads nothing, and
        ``dask.compute(h1, h2)`` computes several in one pass. Concrete for numpy input.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import band_histograms
    >>> scene = np.array([[[0, 0, 7], [7, 7, 9]], [[1, 2, 3], [4, 5, 6]]], dtype=np.uint16)
    >>> h = band_histograms(scene, nodata=0)
    >>> h.binning.nbins, h.total.tolist()
    (65536, [4, 6])
    >>> h.counts[0, [7, 9]].tolist()
    [3, 1]
    """
    src = as_band_array(data, nodata=nodata)
    m = None if mask is None else as_band_mask(mask, src)
    nbands = src.array.shape[0]
    if bins is not None and not (isinstance(bins, int | np.integer) and bins >= 1):
        raise ValueError(f"bins must be a positive integer, not {bins!r}")
    binning = default_binning(src.dtype, nbands, bins=bins, range=range)

    if not src.is_dask:
        if binning is None:
            lohi = block_range(src.array, m, nodata=src.nodata)[:, 0, 0, :]
            lohi = _check_range(lohi, src.bands, src.name)
            binning = Binning("uniform", src.dtype, bins or DEFAULT_BINS, lohi[:, 0], lohi[:, 1])
        counts = block_counts(
            src.array,
            m,
            np.stack([binning.lo, binning.hi], axis=1),
            kind=binning.kind,
            nbins=binning.nbins,
            offset=binning.offset,
            nodata=src.nodata,
        )
        return Histogram(counts[:, 0, 0, :], binning, src.bands)

    arr = src.array
    if binning is None:
        lohi = _lazy_range(src, m)
        binning = Binning("uniform", src.dtype, bins or DEFAULT_BINS, lohi[:, 0], lohi[:, 1])
    else:
        lohi = da.from_array(np.stack([binning.lo, binning.hi], axis=1), chunks=(arr.chunks[0], 2))
    lohi = lohi.rechunk((arr.chunks[0], 2))
    per_block = da.blockwise(
        block_counts,
        "byxn",
        arr,
        "byx",
        *_mask_args(m),
        lohi,
        "bk",
        new_axes={"n": binning.nbins},
        adjust_chunks={"y": 1, "x": 1},
        concatenate=True,
        dtype=np.int32,
        meta=np.empty((0, 0, 0, 0), np.int32),
        kind=binning.kind,
        nbins=binning.nbins,
        offset=binning.offset if binning.kind == "levels" else 0,
        nodata=src.nodata,
        name="rastermatch-counts-"
        + tokenize(arr, m, lohi, binning.kind, binning.nbins, src.nodata),
    )
    counts = per_block.sum(axis=(1, 2), dtype=np.int64)
    return Histogram(counts, binning, src.bands, src.name)
