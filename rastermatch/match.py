"""Histogram matching and equalization at the level users call: numpy, dask or xarray in and out.

Composes the three steps (histograms -> LUT -> application). The statistics are computed first,
all of them in one pass (source and reference histograms together), and the application is
returned lazily for dask-backed input. Two passes, not one graph: a single graph in which the same
source chunks feed both the histograms and the application would keep the whole source in memory
until the LUT exists.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from typing import Any

import dask
import dask.array as da
import numpy as np

from ._data import BandArray, as_band_array, as_band_mask
from ._values import nodata_fits
from .apply import apply_block, apply_lut_array, block_arguments, resolve_out_nodata
from .errors import BandMismatchError
from .histogram import (
    DEFAULT_BINS,
    Binning,
    Histogram,
    band_ranges,
    binned_histogram,
    check_bins,
    check_range,
    default_binning,
    split_range,
)
from .lut import LEVELS, LUT, METHODS, Levels, Method, check_option, check_out_dtype

__all__ = ["equalize", "fit_lut", "match_histograms", "uniform_histogram"]


def _stripes(shape: tuple[int, int, int]) -> list[tuple[int, slice]]:
    """How numpy input is cut for the threads: ``(band, rows)`` pieces, as few as keep every
    thread busy. Each piece costs a fresh 65,536-bin count array, and fresh memory is slow to
    touch, so bands are split into row stripes only when there are fewer of them than twice
    the threads."""
    nbands, ny, _ = shape
    threads = dask.config.get("num_workers", None) or os.cpu_count() or 1
    rows = max(1, -(-ny // max(1, -(-2 * threads // nbands))))
    starts = range(0, max(ny, 1), rows)
    return [(b, slice(y, min(y + rows, ny))) for b in range(nbands) for y in starts]


def _as_dask(src: BandArray) -> da.Array:
    """numpy input as a dask array whose blocks are the :func:`_stripes` of it."""
    if src.is_dask:
        return src.array
    arr = src.array
    pieces = _stripes(arr.shape)
    # A graph of views of the caller's array: da.from_array would copy it, and hash every
    # byte to name it. A random name is right for an array that lives only for this call.
    name = f"rastermatch-numpy-{uuid.uuid4().hex}"
    rows = tuple(s.stop - s.start for b, s in pieces if b == 0)
    graph = {(name, b, i % len(rows), 0): arr[b : b + 1, s] for i, (b, s) in enumerate(pieces)}
    chunks = ((1,) * arr.shape[0], rows, (arr.shape[2],))
    return da.Array(graph, name, chunks, meta=arr[:0, :0, :0])


def _scheduler(*inputs: BandArray) -> str | None:
    """numpy in: use local threads, never ship in-memory arrays to a cluster."""
    return "threads" if not any(i.is_dask for i in inputs) else None


def _histograms(
    inputs: list[tuple[BandArray, Any, int | None]], scheduler: str | None
) -> list[Histogram]:
    """Histograms of several inputs, computed together.

    Continuous data (floats, wide integers) needs each band's valid range before it can be
    binned: all ranges are computed together first, then all counts in a second pass.
    """
    arrays = [(_as_dask(src), src, mask, bins) for src, mask, bins in inputs]
    ranges: list[Any] = [None] * len(arrays)
    need = [
        i
        for i, (arr, src, _, bins) in enumerate(arrays)
        if default_binning(src.dtype, arr.shape[0], bins=bins, range=None) is None
    ]
    if need:
        computed = dask.compute(
            *(
                band_ranges(arrays[i][0], nodata=arrays[i][1].nodata, mask=arrays[i][2])
                for i in need
            ),
            scheduler=scheduler,
        )
        for i, r in zip(need, computed, strict=True):
            ranges[i] = _valid_range_or_raise(r, arrays[i][1])
    lazy = []
    for (arr, src, mask, bins), rng in zip(arrays, ranges, strict=True):
        binning = default_binning(src.dtype, arr.shape[0], bins=bins, range=None)
        if binning is None:  # a data range may be a single value: no range= check applies
            nbins = DEFAULT_BINS if bins is None else bins
            binning = Binning("uniform", src.dtype, nbins, rng[:, 0], rng[:, 1])
        lazy.append(binned_histogram(replace(src, array=arr), mask, binning))
    return list(dask.compute(*lazy, scheduler=scheduler))


def _valid_range_or_raise(lohi: np.ndarray, src: BandArray) -> np.ndarray:
    return check_range(lohi, src.bands, src.name)


def check_options(
    *, method: Any = "nearest", levels: Any = "present", bins: Any = None, dtype: Any = None
) -> None:
    """OptionError for a bad method, levels, bins or dtype: checked before any work."""
    check_option("method", method, METHODS)
    check_option("levels", levels, LEVELS)
    check_bins(bins)
    check_out_dtype(dtype)


def reference_with_source_nodata(src: BandArray, ref: BandArray) -> BandArray:
    """The reference, taking the source's explicit nodata when it has none of its own.

    A user who says "0 is nodata" means it for both scenes unless they say otherwise
    (``reference_nodata=``); a reference with its own nodata keeps it, and a value the
    reference's dtype cannot hold is not taken over.
    """
    if (
        ref.nodata is None
        and src.nodata_given
        and src.nodata is not None
        and nodata_fits(src.nodata, ref.dtype)
    ):
        return replace(ref, nodata=src.nodata)
    return ref


def _mask(mask: Any, src: BandArray, name: str) -> Any:
    if mask is None:
        return None
    m = as_band_mask(mask, src, name=name)
    if not src.is_dask:  # numpy input is chunked in _as_dask: chunk the mask alike
        arr = _as_dask(src)
        m = da.from_array(m, chunks=(-1, *arr.chunks[1:]), name=False)
    return m


def _apply(src: BandArray, lut: LUT, out_nodata: Any, scheduler: str | None) -> Any:
    if src.is_dask:
        result = apply_lut_array(src.array, lut, nodata=src.nodata, out_nodata=out_nodata)
        return src.wrap(result, nodata=out_nodata)
    # numpy in: every piece is mapped by a thread straight into the one output array
    out = np.empty(src.array.shape, dtype=lut.dtype)
    table, lohi, kwargs = block_arguments(lut, nodata=src.nodata, out_nodata=out_nodata)
    pieces = [
        dask.delayed(apply_block, pure=False)(
            src.array[b : b + 1, s], table[b : b + 1], lohi[b : b + 1], out=out[b : b + 1, s],
            **kwargs,
        )
        for b, s in _stripes(src.array.shape)
    ]  # fmt: skip
    dask.compute(*pieces, scheduler=scheduler)
    return src.wrap(out, nodata=out_nodata)


def fit_lut(
    source: Any,
    reference: Any,
    *,
    method: Method = "nearest",
    levels: Levels = "present",
    nodata: float | int | None = None,
    reference_nodata: float | int | None = None,
    mask: Any = None,
    reference_mask: Any = None,
    bins: int | None = None,
    dtype: Any = None,
) -> LUT:
    """The LUT that matches ``source`` to ``reference``, computing both histograms in one pass.

    Takes the arguments of :func:`match_histograms` (an explicit ``nodata`` also applies to a
    reference without nodata of its own); the returned :class:`~rastermatch.LUT` records the
    histograms, the nodata values and the output nodata, ready to
    :meth:`~rastermatch.LUT.apply` or :meth:`~rastermatch.LUT.save`.
    """
    check_options(method=method, levels=levels, bins=bins, dtype=dtype)
    src = as_band_array(source, nodata=nodata, name="source")
    ref = as_band_array(reference, nodata=reference_nodata, name="reference")
    return _fit(src, ref, method, levels, mask, reference_mask, bins, dtype)


def _fit(
    src: BandArray,
    ref: BandArray,
    method: Method,
    levels: Levels,
    mask: Any,
    reference_mask: Any,
    bins: int | None,
    dtype: Any,
) -> LUT:
    check_options(method=method, levels=levels, bins=bins, dtype=dtype)
    ref = reference_with_source_nodata(src, ref)
    if src.array.shape[0] != ref.array.shape[0]:
        raise BandMismatchError(
            f"{src.name} has {src.array.shape[0]} bands and {ref.name} has "
            f"{ref.array.shape[0]}; select the same number of bands from each (--bands and "
            "--reference-bands on the command line)"
        )
    h_src, h_ref = _histograms(
        [
            (src, _mask(mask, src, "mask"), bins),
            (ref, _mask(reference_mask, ref, "reference mask"), bins),
        ],
        _scheduler(src, ref),
    )
    h_ref = h_ref.take(_reference_order(src, ref))
    lut = LUT.from_histograms(h_src, h_ref, method=method, levels=levels, dtype=dtype)
    preferred = ref.nodata if ref.nodata is not None else src.nodata
    out_nodata = resolve_out_nodata(lut, preferred, may_have_invalid=src.may_have_invalid)
    return lut.with_nodata(src.nodata, out_nodata)


def _reference_order(src: BandArray, ref: BandArray) -> list[int]:
    """Which reference band each source band is matched to: by label when both inputs name
    their bands with the same set of strings (``red, nir`` onto ``nir, red``), else by position.
    """
    named = all(isinstance(b, str) for b in (*src.bands, *ref.bands))
    if named and len(set(ref.bands)) == len(ref.bands) and set(src.bands) == set(ref.bands):
        return [ref.bands.index(b) for b in src.bands]
    return list(range(len(ref.bands)))


def match_histograms(
    source: Any,
    reference: Any,
    *,
    method: Method = "nearest",
    levels: Levels = "present",
    nodata: float | int | None = None,
    reference_nodata: float | int | None = None,
    mask: Any = None,
    reference_mask: Any = None,
    bins: int | None = None,
    dtype: Any = None,
) -> Any:
    """Match the per-band histograms of ``source`` to those of ``reference``.

    Both inputs are histogrammed (one read of each, computed together), a :class:`~rastermatch.LUT`
    is built per band, and the source is mapped through it.

    Parameters
    ----------
    source, reference
        ``(band, y, x)`` or ``(y, x)`` numpy arrays, dask arrays or DataArrays, with the same
        number of bands. Shapes, grids and dtypes may differ: histograms ignore geometry.
        Bands are paired by position, or by label when both name their bands with the same
        set of strings (``red, nir`` onto ``nir, red``).
    method
        ``"nearest"`` (default): the nearest-CDF rule, exact, ties to the smallest level; for
        floats too, every output is a value of the reference and a scene matched to itself is
        unchanged. ``"interp"``: scikit-image's piecewise-linear mapping (integers rounded to
        nearest), equal to it wherever each histogram bin holds one distinct value (see
        :meth:`LUT.from_histograms <rastermatch.LUT.from_histograms>` for the bound otherwise).
    levels
        ``"present"`` (default): only levels that occur in the reference are produced;
        ``"all"``: any level of the reference's range.
    nodata, reference_nodata
        Values left out of the statistics; default ``.rio.nodata`` of a DataArray. An explicit
        ``nodata`` also applies to the reference when ``reference_nodata`` is not given and the
        reference has no nodata of its own. Source nodata pixels stay nodata in the output. A
        value the dtype cannot hold (300 for uint8, NaN for integers) raises
        :class:`~rastermatch.errors.OptionError`.
    mask, reference_mask
        Boolean, True = leave out of the statistics (clouds). Masked source pixels are still
        transformed.
    bins
        Number of bins for floats and integers wider than 16 bits (default 65,536).
    dtype
        Output dtype; default the reference's. An integer dtype that cannot hold the outputs
        raises :class:`~rastermatch.errors.OptionError` instead of clipping them.

    Returns
    -------
    The kind that came in. numpy in: numpy out, computed with local threads. A dask-backed input
    gives a lazy result: the statistics are computed now, in one pass over both inputs, and the
    mapping is left lazy, so writing the result reads the source a second time and memory stays
    bounded by the blocks in flight. A DataArray keeps its coords (CRS, transform), dims, band
    labels and attrs, with the output nodata written.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import match_histograms
    >>> source = np.array([[10, 10, 20, 30]], dtype=np.uint8)
    >>> reference = np.array([[1, 5, 5, 9]], dtype=np.uint8)
    >>> match_histograms(source, reference).tolist()
    [[1, 1, 5, 9]]

    With DataArrays read from files, CRS and transform are kept:

    >>> import rastermatch
    >>> src = rastermatch.open_raster("data/arrnorm_target.tif")
    >>> ref = rastermatch.open_raster("data/arrnorm_ref_adjusted2target.tif")
    >>> matched = match_histograms(src, ref, nodata=0)
    >>> matched.dims, matched.dtype.name, matched.rio.crs.to_epsg()
    (('band', 'y', 'x'), 'uint16', 32619)

    Floats: a scene matched to itself comes back unchanged, with either method.

    >>> x = np.array([[0.0, 1.0, 2.0, 3.0, 100.0]])
    >>> match_histograms(x, x).tolist(), match_histograms(x, x, method="interp").tolist()
    ([[0.0, 1.0, 2.0, 3.0, 100.0]], [[0.0, 1.0, 2.0, 3.0, 100.0]])
    """
    check_options(method=method, levels=levels, bins=bins, dtype=dtype)
    src = as_band_array(source, nodata=nodata, name="source")
    ref = as_band_array(reference, nodata=reference_nodata, name="reference")
    lut = _fit(src, ref, method, levels, mask, reference_mask, bins, dtype)
    return _apply(src, lut, lut.out_nodata, _scheduler(src))


def uniform_histogram(hist: Histogram, *, range: Any = None, bins: int | None = None) -> Histogram:
    """A uniform reference for equalization: one count on every level (or bin) of each band's range.

    ``range=None`` takes each band's valid data range from ``hist``.
    """
    b = hist.binning
    if range is None:
        occupied = [np.flatnonzero(row) for row in hist.counts]
        values = b.values()
        lo = np.array([values[i, o[0]] if o.size else 0.0 for i, o in enumerate(occupied)])
        hi = np.array([values[i, o[-1]] if o.size else 0.0 for i, o in enumerate(occupied)])
        if b.kind == "uniform":  # the data range is the binning's own
            lo, hi = b.lo, b.hi
    else:
        lo, hi = split_range(range, hist.nbands)
    if b.kind == "levels" and bins is None:
        ref_binning = Binning.levels(b.dtype, hist.nbands)
        levels = ref_binning.values()
        counts = ((levels >= lo[:, None]) & (levels <= hi[:, None])).astype(np.int64)
    else:
        nbins = bins or b.nbins
        ref_binning = Binning("uniform", b.dtype, nbins, np.array(lo, float), np.array(hi, float))
        counts = np.ones((hist.nbands, nbins), dtype=np.int64)
    return Histogram(counts, ref_binning, hist.bands, nodata=hist.nodata)


def equalize(
    data: Any,
    *,
    nodata: float | int | None = None,
    mask: Any = None,
    bins: int | None = None,
    range: Any = None,
    dtype: Any = None,
) -> Any:
    """Histogram equalization: matching to a uniform reference (exact nearest-CDF rule).

    The uniform reference spans each band's valid data range, or ``range=(lo, hi)`` (for example
    the dtype's, ``(0, 255)``; finite, ``lo < hi``, else :class:`~rastermatch.errors.OptionError`
    before any work). ``nodata`` (default the DataArray's) is left out of the statistics and
    stays nodata. Returns the kind that came in; lazy for dask-backed input.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import equalize
    >>> equalize(np.array([[0, 0, 0, 1, 1, 2, 3, 4]], dtype=np.uint8), range=(0, 7)).tolist()
    [[2, 2, 2, 4, 4, 5, 6, 7]]
    """
    check_options(bins=bins, dtype=dtype)
    src = as_band_array(data, nodata=nodata, name="data")
    if range is not None:
        split_range(range, src.array.shape[0])
    (h_src,) = _histograms([(src, _mask(mask, src, "mask"), bins)], _scheduler(src))
    h_ref = uniform_histogram(h_src, range=range)
    # the uniform reference leaves the nodata level out, so no valid pixel is mapped onto it
    k = h_ref.binning.level_bin(src.nodata)
    if k is not None and h_ref.counts[:, k].sum() < h_ref.counts.sum():
        counts = h_ref.counts.copy()
        counts[:, k] = 0
        h_ref = replace(h_ref, counts=counts)
    lut = LUT.from_histograms(
        h_src,
        h_ref,
        method="nearest",
        levels="present",
        dtype=src.dtype if dtype is None else dtype,
    )
    out_nodata = resolve_out_nodata(lut, src.nodata, may_have_invalid=src.may_have_invalid)
    return _apply(src, lut.with_nodata(src.nodata, out_nodata), out_nodata, _scheduler(src))
