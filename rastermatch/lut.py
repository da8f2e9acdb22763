"""From histograms to lookup tables: the nearest-CDF, ceil, interpolating and optimal rules.

Step two of the data flow; small numpy arrays only, no dask.

The rules, side by side (``F`` the empirical CDFs, ``p`` a source level, ``q`` a reference one):

- ``"nearest"`` (default): ``q* = argmin_q |F_ref(q) - F_src(p)|`` (below, in detail);
- ``"ceil"``: the generalized inverse ``q* = min{q : F_ref(q) >= F_src(p)}``, the textbook
  inverse-CDF rule (:func:`ceil_cdf_indices`);
- ``"interp"``: scikit-image's piecewise-linear inverse CDF (:func:`reference_curve`);
- ``"optimal"``: the monotone map minimising a named distance (``objective="ks"`` or ``"w1"``)
  between the mapped source and the reference, by dynamic programming
  (:func:`rastermatch.optimal.optimal_indices`).

Any of them can be blended with the identity, ``out = src + m * (matched - src)``
(``proportion=m``, see :meth:`LUT.from_histograms`).

The nearest rule (the classic histogram-specification Algorithm 1): for every source level ``p``
the output level is

    q* = argmin_q | F_ref(q) - F_src(p) |,   ties going to the smallest q,

with ``F`` the empirical CDFs. Computed naively it costs O(P * Q) and, in floating point, decides
ties wrongly (source counts [8, 2] against reference counts [7, 2, 1]: F_src(0) = 0.8 lies exactly
half-way between F_ref(0) = 0.7 and F_ref(1) = 0.9, yet 0.9 - 0.8 < 0.8 - 0.7 in float64).
:func:`nearest_cdf_indices` instead

1. multiplies both CDFs up to integers: with cumulative counts ``c`` and totals ``N``,
   ``F_ref(q) - F_src(p)`` has the sign and the order of ``c_ref(q) * N_src - c_src(p) * N_ref``
   (both sides divided by gcd(N_src, N_ref) to keep the numbers small);
2. finds, for every ``p`` at once, the first candidate at or above the source value with one
   ``searchsorted`` (the scaled reference CDF is non-decreasing), O(P log Q);
3. compares that candidate with the one just below it, exactly; the lower one wins ties, and
   among equal CDF values (empty levels) the first one is taken.

The products stay in int64 while they provably fit and fall back to Python integers (numpy
object arrays) beyond that, so the result is exact for any pixel count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numba
import numpy as np

from ._data import no_valid_pixels, python_scalar
from ._detectors import Detectors
from ._rows import Rows
from ._values import cast_values, check_nodata, nodata_fits, smallest_dtype
from .errors import (
    BandMismatchError,
    InputTypeError,
    NotComputedError,
    NoValidPixelsError,
    OptionError,
)
from .histogram import Binning, Histogram

__all__ = [
    "LUT",
    "Levels",
    "Method",
    "Objective",
    "cast_values",
    "ceil_cdf_indices",
    "nearest_cdf_indices",
    "reference_curve",
]

Method = Literal["nearest", "ceil", "interp", "optimal"]
Objective = Literal["ks", "w1"]
Levels = Literal["present", "all"]
METHODS = ("nearest", "ceil", "interp", "optimal")
OBJECTIVES = ("ks", "w1")
LEVELS = ("present", "all")


def check_option(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise OptionError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def check_out_dtype(dtype: Any) -> np.dtype | None:
    """``dtype`` as a numpy integer or float dtype (None stays None), else OptionError."""
    if dtype is None:
        return None
    try:
        out = np.dtype(dtype)
    except (TypeError, ValueError):
        out = None
    if out is None or out.kind not in "iuf" or out.itemsize > 8:
        raise OptionError(
            f"dtype {dtype!r} is not a numeric output dtype; pass an integer or float dtype such "
            "as 'uint16' or 'float32' (or leave it unset for the reference's)"
        )
    return out


def check_rule(method: Any, objective: Any, proportion: Any) -> tuple[Any, Any, float]:
    """``(method, objective, proportion)`` checked, OptionError otherwise; ``method="optimal"``
    without an objective takes ``"w1"``, and the proportion comes back a Python float."""
    check_option("method", method, METHODS)
    if objective is not None:
        check_option("objective", objective, OBJECTIVES)
        if method != "optimal":
            raise OptionError(
                f"objective {objective!r} is what method 'optimal' minimises; pass "
                f"method='optimal' with it, or leave the objective out for method {method!r}"
            )
    elif method == "optimal":
        objective = "w1"
    if isinstance(proportion, bool) or not isinstance(
        proportion, int | float | np.integer | np.floating
    ):
        raise OptionError(
            f"proportion must be a number from 0 (the source unchanged) to 1 (the full match), "
            f"not {proportion!r}"
        )
    m = float(proportion)
    if not 0.0 <= m <= 1.0:  # NaN fails too
        raise OptionError(
            f"proportion is {m!r}; pass a number from 0 (the source unchanged) to 1 (the full "
            "match)"
        )
    return method, objective, m


def _scaled_cdfs(
    source_counts: np.ndarray,
    reference_counts: np.ndarray,
    levels: Levels,
    exclude: Iterable[int],
    terms: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(candidates, a, t)``: the reference bins that may be chosen and both CDFs scaled to
    integers, ``a = c_ref[candidates] * N_src / g`` and ``t = c_src * N_ref / g`` (``g`` their
    gcd), so that ``F_ref(q) - F_src(p)`` has the sign and order of ``a - t``. int64 while
    ``terms`` such products added up provably fit, Python integers beyond."""
    cs = np.cumsum(source_counts, dtype=np.int64)
    cr = np.cumsum(reference_counts, dtype=np.int64)
    n_src, n_ref = int(cs[-1]), int(cr[-1])
    if n_src == 0 or n_ref == 0:
        raise NoValidPixelsError("both histograms need at least one pixel")
    candidates = np.flatnonzero(reference_counts) if levels == "present" else np.arange(cr.size)
    excluded = [k for k in exclude if reference_counts[k] == 0]  # a present bin stays
    if excluded:
        candidates = np.setdiff1d(candidates, excluded)
    g = math.gcd(n_src, n_ref)
    m_src, m_ref = n_src // g, n_ref // g
    # every product is at most n_src * n_ref / g
    if terms * n_src * m_ref < 2**63:
        return candidates, cr[candidates] * m_src, cs * m_ref
    return candidates, cr[candidates].astype(object) * m_src, cs.astype(object) * m_ref


def nearest_cdf_indices(
    source_counts: np.ndarray,
    reference_counts: np.ndarray,
    *,
    levels: Levels = "present",
    exclude: Iterable[int] = (),
) -> np.ndarray:
    """For every source bin ``p``, the reference bin ``q* = argmin_q |F_ref(q) - F_src(p)|``.

    Ties go to the smallest ``q``; all comparisons are exact integer arithmetic.

    Parameters
    ----------
    source_counts, reference_counts
        One band's counts (non-negative integers), each with at least one pixel.
    levels
        ``"present"``: ``q`` ranges over the reference bins that hold pixels; ``"all"``: over
        every bin, as in the published algorithm.
    exclude
        Bins never chosen (the reference's nodata level with ``levels="all"``).

    Examples
    --------
    >>> nearest_cdf_indices(np.array([8, 2]), np.array([7, 2, 1]), levels="all").tolist()
    [0, 2]
    >>> nearest_cdf_indices(np.array([1, 1]), np.array([1, 0, 0, 1])).tolist()
    [0, 3]
    """
    # 1. scale to integers; every product is at most n_src * n_ref / g, and two of them are
    # added in step 3, so int64 is exact while 2 * n_src * n_ref / g < 2**63.
    candidates, a, t = _scaled_cdfs(source_counts, reference_counts, levels, exclude, 2)
    # 2. the first candidate k with a[k] >= t, for every source bin at once
    k = np.searchsorted(a, t, side="left")
    upper = np.minimum(k, a.size - 1)
    below = a[np.maximum(k - 1, 0)]
    lower = np.searchsorted(a, below, side="left")  # the first of equal CDF values
    # 3. exact comparison of |a[upper] - t| with |t - below|; the lower one wins ties
    take_upper = (k == 0) | ((k < a.size) & ((a[upper] - t) < (t - below)))
    return candidates[np.where(take_upper, upper, lower)]


def ceil_cdf_indices(
    source_counts: np.ndarray,
    reference_counts: np.ndarray,
    *,
    levels: Levels = "present",
    exclude: Iterable[int] = (),
) -> np.ndarray:
    """For every source bin ``p``, the reference bin ``q* = min{q : F_ref(q) >= F_src(p)}``.

    The generalized inverse of the reference CDF at the source CDF (the textbook inverse-CDF
    rule). Exact: ``F_ref(q) >= F_src(p)`` is decided as ``c_ref(q) * N_src >= c_src(p) * N_ref``
    in integers (cumulative counts ``c``, totals ``N``), and one ``searchsorted`` finds the first
    such ``q`` for every ``p`` at once. Parameters as :func:`nearest_cdf_indices`. The smallest
    such ``q`` always holds pixels, except bin 0 for source bins below the first source pixel
    with ``levels="all"``, so ``levels`` only matters there.

    Where nearest rounds a source quantile to the closest reference quantile, ceil never maps
    a source quantile below it: the mapped source CDF stays at or below the reference CDF.

    Examples
    --------
    A source with levels 0..9, one pixel each, onto [one pixel at 0, nine at 1]: ceil maps
    level 0 onto 0 and the rest onto 1, reproducing the reference (KS 0) where nearest maps
    0..4 onto 0 (KS 0.4).

    >>> src, ref = np.ones(10, np.int64), np.array([1, 9])
    >>> ceil_cdf_indices(src, ref).tolist()
    [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    >>> nearest_cdf_indices(src, ref).tolist()
    [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    """
    candidates, a, t = _scaled_cdfs(source_counts, reference_counts, levels, exclude, 1)
    # a[-1] = N_src * N_ref / g >= every t: the first a[k] >= t exists for every p
    return candidates[np.searchsorted(a, t, side="left")]


@numba.njit(nogil=True, cache=True)
def _cdf_rows_kernel(src, ref, ref_row, m_src, m_ref, present, exclude, ceil, out):
    """:func:`nearest_cdf_indices` (``ceil``: :func:`ceil_cdf_indices`) of every source row
    ``r`` against reference row ``ref_row[r]``, into ``out[r]``, in int64.

    The same candidates, scaled CDFs (``a = c_ref * m_src``, ``t = c_src * m_ref``) and tie
    rule as the numpy functions; ``t`` grows with the source bin, so one forward walk finds the
    first candidate ``k`` with ``a[k] >= t`` for every bin, and ``first[j]`` (the first
    candidate with ``a[j]``'s value; equal ``a`` means equal ``c_ref``) gives the lower one. A
    reference row's candidates are listed once for consecutive source rows that share it. The
    caller passes only rows whose products provably fit in int64."""
    nq = ref.shape[1]
    cand = np.empty(nq, np.int64)
    cum = np.empty(nq, np.int64)
    first = np.empty(nq, np.int64)
    na = 0
    last = -1
    for r in range(src.shape[0]):
        rr = ref_row[r]
        if rr != last:
            last = rr
            na = 0
            total = np.int64(0)
            for j in range(nq):
                c = np.int64(ref[rr, j])
                total += c
                if (present and c == 0) or (j == exclude and c == 0):
                    continue
                cand[na] = j
                cum[na] = total
                first[na] = first[na - 1] if na > 0 and total == cum[na - 1] else na
                na += 1
        ms, mr = m_src[r], m_ref[r]
        k = 0
        cs = np.int64(0)
        for p in range(src.shape[1]):
            cs += np.int64(src[r, p])
            t = cs * mr
            while k < na and cum[k] * ms < t:
                k += 1
            if ceil:
                out[r, p] = cand[min(k, na - 1)]
            elif k == 0:
                out[r, p] = cand[0]
            elif k < na and cum[k] * ms - t < t - cum[k - 1] * ms:
                out[r, p] = cand[k]
            else:
                out[r, p] = cand[first[k - 1]]


def _optimal_bins(
    source_counts: np.ndarray,
    reference_counts: np.ndarray,
    values: np.ndarray,
    objective: Objective,
    levels: Levels,
    exclude: Iterable[int],
) -> np.ndarray:
    """The reference bin per source bin of :func:`rastermatch.optimal.optimal_indices` for one
    row; ``values`` are the reference binning's values (levels, or bin centres), the axis of
    the W1 distance, as :func:`rastermatch.fit_multi` passes them, so that one pair fitted
    there gives this table exactly."""
    from .optimal import optimal_indices  # optimal builds LUTs itself: imported when used

    return optimal_indices(
        [(source_counts, reference_counts)],
        objective=objective,
        reference_values=values,
        levels=levels,
        exclude=exclude,
    )


def reference_curve(
    counts: np.ndarray, vmin: np.ndarray, vmax: np.ndarray, nmin: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The knots ``(quantile, value)`` of scikit-image's inverse CDF of one reference band.

    scikit-image puts a knot at every distinct value ``v``: ``(count(<= v) / N, v)``. A bin
    that holds one value gives that knot exactly; a bin holding several gives two of its knots
    exactly: its smallest value at ``(c_{q-1} + nmin_q) / N`` and its largest at ``c_q / N``
    (``c`` the cumulative counts). Between two knots both curves stay within one bin's values.
    The quantiles are computed as scikit-image computes them (an int64 count over the int total).
    """
    present = np.flatnonzero(counts)
    c = np.cumsum(counts, dtype=np.int64)
    n = int(c[-1])
    before = (c - counts)[present]
    spread = vmin[present] < vmax[present]
    x = np.stack([np.where(spread, before + nmin[present], c[present]), c[present]], axis=1)
    y = np.stack([vmin[present], vmax[present]], axis=1)
    keep = np.stack([spread, np.ones_like(spread)], axis=1)
    return x[keep] / n, y[keep]


def _values_row(binning: Binning, b: int) -> np.ndarray:
    """Row ``b`` of ``binning.values()``, computed for that row only (the same arithmetic)."""
    if binning.kind == "levels":
        return binning.offset + np.arange(binning.nbins, dtype=np.float64)
    t = np.arange(binning.nbins + 1, dtype=np.float64) / binning.nbins
    e = binning.lo[b] + (binning.hi[b] - binning.lo[b]) * t
    return e[:-1] / 2 + e[1:] / 2


def _stats_row(hist: Histogram, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row ``b`` of ``hist.bin_stats()``, computed for that row only."""
    if hist.has_stats:
        return hist.vmin[b], hist.vmax[b], hist.nmin[b]
    counts = hist.counts[b]
    seen = counts > 0
    values = _values_row(hist.binning, b)
    return np.where(seen, values, np.inf), np.where(seen, values, -np.inf), counts.astype(np.int64)


def _band_table(
    src: Histogram,
    ref: Histogram,
    b: int,
    method: Method,
    levels: Levels,
    objective: Objective | None = None,
    rb: int | None = None,
) -> np.ndarray:
    """The table of source row ``b`` against reference row ``rb`` (default ``b``): ``(nbins,)``
    outputs for a levels-binned source, else ``(nbins, 4)`` rows ``(smin, smax, olo, ohi)``
    (see :class:`LUT`). Reads those two rows only (no per-row Histogram is built)."""
    rb = b if rb is None else rb
    sc, rc = src.counts[b], ref.counts[rb]
    rmin, rmax, rnmin = _stats_row(ref, rb)
    ref_seen = rc > 0
    if method != "interp":  # a reference bin per source bin: its values are the outputs
        k = ref.binning.level_bin(ref.nodata)
        exclude = () if k is None else (k,)
        centre = _values_row(ref.binning, rb)  # levels="all" on an empty bin: its centre
        if method == "nearest":
            q = nearest_cdf_indices(sc, rc, levels=levels, exclude=exclude)
        elif method == "ceil":
            q = ceil_cdf_indices(sc, rc, levels=levels, exclude=exclude)
        else:
            q = _optimal_bins(sc, rc, centre, objective or "w1", levels, exclude)
        rlo = np.where(ref_seen, rmin, centre)[q]
        if src.binning.kind == "levels":
            return rlo
        rhi = np.where(ref_seen, rmax, centre)[q]
        smin, smax, _ = _stats_row(src, b)
        seen = sc > 0
        # a source bin that alone is mapped onto a reference bin holding exactly its own range
        # is the same population: map it onto itself (self-matching is the identity)
        mapped = np.bincount(q[seen], minlength=rc.size)
        identity = seen & (mapped[q] == 1) & ref_seen[q] & (rmin[q] == smin) & (rmax[q] == smax)
        olo, ohi = rlo, np.where(identity, rhi, rlo)
        # an empty bin above an identity bin that shares its reference bin gives that bin's
        # largest value, so the map stays monotone for scenes the LUT is applied to later
        last = np.maximum.accumulate(np.where(seen, np.arange(sc.size), -1))
        prev = np.concatenate([[-1], last[:-1]])
        p = np.maximum(prev, 0)
        after = ~seen & (prev >= 0) & identity[p] & (q[p] == q)
        olo, ohi = np.where(after, rhi, olo), np.where(after, rhi, ohi)
    else:
        knots_u, knots_v = reference_curve(rc, rmin, rmax, rnmin)
        cs = np.cumsum(sc, dtype=np.int64)
        n = int(cs[-1])
        hi_u = cs / n
        if src.binning.kind == "levels":
            return np.interp(hi_u, knots_u, knots_v)
        smin, smax, snmin = _stats_row(src, b)
        seen = sc > 0
        # a bin's smallest value sits at quantile (c_{p-1} + nmin_p) / N, its largest at c_p / N
        lo_u = np.where(smin < smax, (cs - sc + snmin) / n, hi_u)
        olo, ohi = np.interp(lo_u, knots_u, knots_v), np.interp(hi_u, knots_u, knots_v)
    centre = _values_row(src.binning, b)
    smin, smax = np.where(seen, smin, centre), np.where(seen, smax, centre)
    return np.stack([smin, smax, olo, ohi], axis=1)


def _blend(table: np.ndarray, src: Histogram, b: int, m: float) -> np.ndarray:
    """Row ``b`` of a table blended with the identity: ``c(v) + m * (f(v) - c(v))``.

    ``f`` is the matched map and ``c(v)`` the source value clipped to the range the fit saw:
    for a levels table the row's valid range (first to last level holding pixels), for an
    interval table each bin's observed ``[smin, smax]``, so every pixel of the fitted scene is
    its own value and the blend of a later scene's values beyond that range is held at its
    ends, as the matched map itself is. ``f`` is linear on every bin's ``[smin, smax]``, so the
    blend of an interval row is again an interval row, ``(smin, smax, smin + m * (olo - smin),
    smax + m * (ohi - smax))``. ``m = 1`` returns the table untouched and ``m = 0`` the identity
    exactly (the products are 0); in between the arithmetic is float64.
    """
    if m == 1.0:
        return table
    if table.ndim == 1:
        values = _values_row(src.binning, b)
        present = np.flatnonzero(src.counts[b])
        c = np.clip(values, values[present[0]], values[present[-1]])
        return c + m * (table - c)
    smin, smax, olo, ohi = (table[:, i] for i in (SMIN, SMAX, OLO, OHI))
    lo = smin + m * (olo - smin)
    # a bin of one value maps to one value; max() keeps olo <= ohi under float rounding
    hi = np.where(smin < smax, np.maximum(smax + m * (ohi - smax), lo), lo)
    return np.stack([smin, smax, lo, hi], axis=1)


def _check_outputs_fit(
    outputs: np.ndarray, dtype: np.dtype, rows: Rows, explicit: bool, start: int = 0
) -> None:
    """OptionError when an integer ``dtype`` cannot hold a row's outputs (it would clip);
    ``outputs[i]`` is row ``start + i`` of ``rows``, the first such row is named."""
    if dtype.kind not in "iu" or len(outputs) == 0:
        return
    info = np.iinfo(dtype)
    flat = outputs.reshape(len(outputs), -1)
    lows, highs = np.rint(flat.min(axis=1)), np.rint(flat.max(axis=1))
    # float(info.max) is 2**63 for int64: a value rounding there is the top of the range
    bad = np.flatnonzero((lows < float(info.min)) | (highs > float(info.max)))
    if bad.size:
        i = int(bad[0])
        lo, hi = float(lows[i]), float(highs[i])
        fit = smallest_dtype(lo, hi)
        hint = "leave dtype unset or choose" if explicit else "pass dtype="
        where = rows.describe(start + i) or "the image"
        raise OptionError(
            f"the LUT maps {where} onto {lo:g}..{hi:g}, which {dtype} cannot hold; "
            f"{hint} {fit.name}"
        )


#: Source rows per step of the many-rows builder (bounds its float64 temporaries).
CHUNK_ROWS = 256


def _tables(
    src: Histogram,
    ref: Histogram,
    ref_rows: np.ndarray,
    method: Method,
    levels: Levels,
    objective: Objective | None,
    proportion: float,
    out_dtype: np.dtype,
    explicit: bool,
) -> np.ndarray:
    """The table of every source row ``b`` against reference row ``ref_rows[b]``, blended,
    checked and cast as :meth:`LUT.from_histograms` documents.

    Levels-binned sources under ``"nearest"`` and ``"ceil"`` take the compiled builder
    (:func:`_cdf_rows_kernel`: all rows in one pass, int64 while a row's products provably
    fit, that row by the exact per-row path otherwise), ``CHUNK_ROWS`` rows at a time written
    straight into the output dtype; a reference row shared by many source rows is read by
    index, never copied. The other rules build row by row. Both give the same bytes: the
    per-row path is the definition, the compiled one is tested against it."""
    n = src.nrows
    if src.binning.kind != "levels" or method not in ("nearest", "ceil"):
        rows = [
            _band_table(src, ref, b, method, levels, objective, int(ref_rows[b])) for b in range(n)
        ]

        def finish(rows: list[np.ndarray]) -> np.ndarray:
            table = np.stack(rows)
            outputs = table if src.binning.kind == "levels" else table[..., OLO:]
            _check_outputs_fit(outputs, out_dtype, src.rows, explicit)
            return cast_values(table, out_dtype) if table.ndim == 2 else table

        table = finish(rows)
        if proportion != 1.0:  # the matched outputs as the full match gives them, blended
            table = finish([_blend(r, src, b, proportion) for b, r in enumerate(table)])
        return table
    terms = 2 if method == "nearest" else 1  # as nearest_cdf_indices / ceil_cdf_indices
    n_src, n_ref = src.total.tolist(), ref.total.tolist()
    m_src = np.zeros(n, np.int64)
    m_ref = np.zeros(n, np.int64)
    fits = np.zeros(n, bool)
    for b in range(n):
        ns, nr = n_src[b], n_ref[int(ref_rows[b])]
        g = math.gcd(ns, nr)
        if terms * ns * (nr // g) < 2**63:
            fits[b], m_src[b], m_ref[b] = True, ns // g, nr // g
    k = ref.binning.level_bin(ref.nodata)
    exclude = -1 if k is None else k
    plain = not ref.has_stats and ref.binning.kind == "levels"
    ref_values = _values_row(ref.binning, 0) if plain else None
    table = np.empty((n, src.binning.nbins), out_dtype)
    q = np.empty((min(n, CHUNK_ROWS), src.binning.nbins), np.int64)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(start + CHUNK_ROWS, n)
        rows_at = ref_rows[start:stop]
        qc = q[: stop - start]
        ok = fits[start:stop]
        _cdf_rows_kernel(
            src.counts[start:stop] if ok.all() else src.counts[start:stop][ok],
            ref.counts,
            rows_at[ok],
            m_src[start:stop][ok],
            m_ref[start:stop][ok],
            levels == "present",
            exclude,
            method == "ceil",
            qc if ok.all() else (qc_ok := np.empty((int(ok.sum()), qc.shape[1]), np.int64)),
        )
        if not ok.all():
            qc[ok], qc[~ok] = qc_ok, 0  # rows ~ok are built below
        if ref_values is not None and ok.all():  # outputs are the levels themselves
            qc += ref.binning.offset
            _check_outputs_fit(qc, out_dtype, src.rows, explicit, start)
            table[start:stop] = qc if out_dtype.kind in "iu" else cast_values(qc * 1.0, out_dtype)
            continue
        if ref_values is not None:
            chunk = ref_values[qc]
        else:  # a reference bin's output: its smallest value seen, an empty bin's centre
            uniq, inv = np.unique(rows_at, return_inverse=True)
            maps = np.stack(
                [
                    np.where(ref.counts[u] > 0, _stats_row(ref, u)[0], _values_row(ref.binning, u))
                    for u in uniq.tolist()
                ]
            )
            chunk = np.take_along_axis(maps[inv], qc, axis=1)
        for i in np.flatnonzero(~ok).tolist():  # products beyond int64: the per-row path
            b = start + i
            chunk[i] = _band_table(src, ref, b, method, levels, objective, int(ref_rows[b]))
        _check_outputs_fit(chunk, out_dtype, src.rows, explicit, start)
        table[start:stop] = cast_values(chunk, out_dtype)
    if proportion != 1.0:  # every row checked unblended first, as the per-row path does
        values = _values_row(src.binning, 0)
        for start in range(0, n, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, n)
            seen = src.counts[start:stop] > 0
            first = seen.argmax(axis=1)
            last = seen.shape[1] - 1 - seen[:, ::-1].argmax(axis=1)
            c = np.clip(values, values[first][:, None], values[last][:, None])
            chunk = c + proportion * (table[start:stop] - c)
            _check_outputs_fit(chunk, out_dtype, src.rows, explicit, start)
            table[start:stop] = cast_values(chunk, out_dtype)
    return table


def _check_detector_rows(detectors: Any, rows: Rows) -> None:
    """OptionError unless the last row dim is ``detector``, labelled as ``detectors`` resolves."""
    if not isinstance(detectors, Detectors):
        raise InputTypeError(
            f"detectors must be a rastermatch Detectors layout, not {type(detectors).__name__}"
        )
    if not rows.dims or rows.dims[-1] != "detector":
        raise OptionError(
            f"a per-detector LUT needs 'detector' as its last row dim, but its rows are "
            f"{rows!r} {rows.dims}; fit it with rastermatch.fit_detectors"
        )
    have = rows.coords[-1]
    if detectors.count is not None:
        want: tuple[Hashable, ...] = tuple(range(detectors.count))
    elif detectors.labels is None:
        want = tuple(range(len(have)))
    else:
        want = detectors.resolve(len(detectors.labels))[1]
    if not Rows(("detector",), (have,)).same_as(Rows(("detector",), (want,))):
        shown = ", ".join(map(repr, have[:6])) + (", ..." if len(have) > 6 else "")
        raise OptionError(
            f"the LUT's detector rows ({shown}) are not the detectors of its layout "
            f"({detectors.describe()}); fit it with rastermatch.fit_detectors"
        )


def _check_reference_rows(rows: Any, src: Histogram, ref: Histogram) -> np.ndarray:
    """``reference_rows`` of :meth:`LUT.from_histograms` as int64 positions, else OptionError."""
    at = np.asarray(rows)
    if at.shape != (src.nrows,) or at.dtype.kind not in "iu":
        raise OptionError(
            f"reference_rows must give one reference row (an integer) per source row, "
            f"{src.nrows} in all, not an array of shape {at.shape} and dtype {at.dtype}"
        )
    if at.size and (at.min() < 0 or at.max() >= ref.nrows):
        raise OptionError(
            f"reference_rows holds {int(at.min())}..{int(at.max())}, but the reference has "
            f"{ref.nrows} rows; pass positions 0..{ref.nrows - 1}"
        )
    return at.astype(np.int64)


def lut_nodata(
    source_hist: Histogram,
    reference_hist: Histogram,
    out_dtype: np.dtype,
    *,
    nodata: float | int | None,
    out_nodata: float | int | None,
) -> tuple[float | int | None, float | int | None]:
    """A LUT's ``(nodata, out_nodata)``: the source histogram's nodata unless given, and the
    reference's (else ``nodata``) as output nodata unless given; one ``out_dtype`` cannot hold
    is left to :meth:`LUT.apply` to choose."""
    if nodata is None:
        nodata = source_hist.nodata
    if out_nodata is None:
        out_nodata = reference_hist.nodata if reference_hist.nodata is not None else nodata
        if out_nodata is not None and not nodata_fits(out_nodata, out_dtype):
            out_nodata = None  # apply chooses one
    else:
        out_nodata = check_nodata(out_nodata, out_dtype, "the output", what="out_nodata")
    return nodata, out_nodata


# Columns of an interval LUT's table: the source bin's observed range and its output interval.
SMIN, SMAX, OLO, OHI = 0, 1, 2, 3


@dataclass(frozen=True, eq=False)
class LUT:
    """Per-band lookup tables from source values to output values.

    Build one with :meth:`from_histograms` (or through :func:`rastermatch.match_histograms`,
    :func:`rastermatch.equalize`); apply it lazily with :meth:`apply`; keep it with :meth:`save`.

    Attributes
    ----------
    table
        ``kind="table"`` (a levels-binned source: integers of at most 16 bits): ``(band, nbins)``
        output values, one per source level, in ``dtype``.
        ``kind="interval"`` (a uniform-binned source: floats, wider integers): ``(band, nbins,
        4)`` float64, per source bin the smallest and largest source value seen in it and an
        output interval, ``(smin, smax, olo, ohi)``. A value ``v`` of bin ``p`` becomes ``olo``
        if ``olo == ohi`` or ``smin >= smax``; ``v`` itself (clipped to the bin's range) if
        ``(olo, ohi) == (smin, smax)``; else ``olo + (v - smin) * (ohi - olo) / (smax - smin)``,
        clipped to ``[olo, ohi]``. Integer outputs are rounded to nearest.
    source_binning
        How source values find their bin.
    dtype
        The output dtype.
    method, levels
        How the table was built (these and the fields below are keyword-only).
    objective
        What ``method="optimal"`` minimised (``"ks"`` or ``"w1"``); None for the other methods.
    proportion
        The blend with the identity the table holds, from 0 (the source unchanged) to 1 (the
        full match, the default); see :meth:`from_histograms`.
    rows
        What each table row is (:class:`~rastermatch._rows.Rows`, the source's: bands, or
        (date, band) pairs of a stack); default one ``band`` dim labelled 1..n. ``bands`` gives
        one label per row.
    source_hist, reference_hist
        The histograms the table was built from, kept for audit and for the quality metrics.
    nodata, out_nodata
        Source nodata at fit time and the output nodata (pixels equal to ``nodata`` become
        ``out_nodata``; NaN and infinities count as nodata too).
    detectors
        For a per-detector LUT (:func:`rastermatch.fit_detectors`): the detector layout
        (:class:`~rastermatch._detectors.Detectors`); the last row dim is then ``detector``,
        labelled with the layout's detectors, and :meth:`apply` picks each line's (or column's)
        row by its detector. None for a LUT per row.
    pairs
        For a LUT fitted to several (source, reference) pairs at once
        (:func:`rastermatch.fit_multi`, k > 1): ``(source_hist, reference_hist, weight)`` of
        every pair, what its document records and its table is rebuilt from
        (``source_hist`` and ``reference_hist`` are then None). None otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import LUT, band_histograms
    >>> src = band_histograms(np.array([[0, 0, 0, 0, 0, 0, 0, 0, 1, 1]], dtype=np.uint8))
    >>> ref = band_histograms(np.array([[0] * 7 + [1, 1, 2]], dtype=np.uint8))
    >>> lut = LUT.from_histograms(src, ref, levels="all")
    >>> lut.table[0, :2].tolist()
    [0, 2]
    >>> lut.apply(np.array([[1, 0, 1]], dtype=np.uint8)).tolist()
    [[2, 0, 2]]

    Floats: every output is a reference value, and a scene matched to itself is unchanged.

    >>> x = np.array([[0.0, 1.0, 2.0, 3.0, 100.0]])
    >>> h = band_histograms(x)
    >>> LUT.from_histograms(h, h).apply(x).tolist()
    [[0.0, 1.0, 2.0, 3.0, 100.0]]
    """

    table: np.ndarray
    source_binning: Binning
    dtype: np.dtype
    _: KW_ONLY
    method: Method = "nearest"
    levels: Levels = "present"
    objective: Objective | None = None
    proportion: float = 1.0
    rows: Rows = None  # type: ignore[assignment]  # default: one band dim labelled 1..n
    source_hist: Histogram | None = field(default=None, repr=False)
    reference_hist: Histogram | None = field(default=None, repr=False)
    nodata: float | int | None = None
    out_nodata: float | int | None = None
    detectors: Detectors | None = None
    pairs: tuple[tuple[Histogram, Histogram, float], ...] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        dtype = check_out_dtype(self.dtype)
        object.__setattr__(self, "dtype", dtype)
        _, objective, proportion = check_rule(self.method, self.objective, self.proportion)
        object.__setattr__(self, "objective", objective)
        object.__setattr__(self, "proportion", proportion)
        check_option("levels", self.levels, LEVELS)
        b = self.source_binning
        if not isinstance(b, Binning):
            raise InputTypeError(f"source_binning must be a rastermatch.Binning, not {b!r}")
        if b.is_lazy:
            raise NotComputedError(
                "a LUT needs a computed source binning; compute the source histogram first"
            )
        table = np.asarray(self.table)
        # the kernels index the table by bin: its shape must be the binning's, exactly
        shape = (b.nbands, b.nbins) if b.kind == "levels" else (b.nbands, b.nbins, 4)
        if table.shape != shape:
            if table.ndim >= 1 and table.shape[0] != b.nbands:
                raise BandMismatchError(f"table has {table.shape[0]} bands, binning {b.nbands}")
            raise OptionError(f"table shape {table.shape} does not fit {b!r}; expected {shape}")
        if b.kind == "levels":
            if table.dtype != dtype:
                cast = cast_values(table, dtype)
                if not np.array_equal(cast, table):
                    raise OptionError(f"table values do not fit the output dtype {dtype}")
                table = cast
        else:
            table = table.astype(np.float64, copy=False)
            if not (
                np.all(np.isfinite(table))
                and np.all(table[..., SMIN] <= table[..., SMAX])
                and np.all(table[..., OLO] <= table[..., OHI])
            ):
                raise OptionError(
                    "an interval table needs finite (smin, smax, olo, ohi) with smin <= smax and "
                    "olo <= ohi in every bin"
                )
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                outs = np.rint(table[..., OLO:])
                if outs.min() < info.min or outs.max() > float(info.max):
                    raise OptionError(f"table outputs do not fit the output dtype {dtype}")
        object.__setattr__(self, "table", table)
        if self.rows is None:
            object.__setattr__(self, "rows", Rows.bands(range(1, table.shape[0] + 1)))
        if not isinstance(self.rows, Rows):
            raise InputTypeError(f"rows must be a rastermatch Rows, not {type(self.rows).__name__}")
        if self.rows.size != table.shape[0]:
            raise OptionError(
                f"{self.rows!r} name {self.rows.size} rows, but the table has {table.shape[0]}"
            )
        object.__setattr__(self, "nodata", python_scalar(self.nodata))
        object.__setattr__(self, "out_nodata", python_scalar(self.out_nodata))
        if self.detectors is not None:
            _check_detector_rows(self.detectors, self.rows)

    @property
    def kind(self) -> Literal["table", "interval"]:
        """``"table"`` for a levels-binned source, ``"interval"`` for a uniform-binned one."""
        return "table" if self.source_binning.kind == "levels" else "interval"

    @property
    def nbands(self) -> int:
        """The number of rows (bands of a scene; (date, band) pairs of a stack)."""
        return int(self.table.shape[0])

    nrows = nbands

    @property
    def bands(self) -> tuple[Hashable, ...]:
        """One label per row (see :meth:`Histogram.bands <rastermatch.Histogram.bands>`)."""
        return self.rows.labels()

    def describe(self, index: int) -> str:
        """Row ``index`` for a message: ``band 3``, ``time 2020-01-01, band 'red'``; ``""`` for
        the single row of a 2-D image."""
        return self.rows.describe(index)

    # -- building
    @classmethod
    def from_histograms(
        cls,
        source_hist: Histogram,
        reference_hist: Histogram,
        *,
        method: Method = "nearest",
        levels: Levels = "present",
        dtype: Any = None,
        nodata: float | int | None = None,
        out_nodata: float | int | None = None,
        objective: Objective | None = None,
        proportion: float = 1.0,
        reference_rows: Any = None,
    ) -> LUT:
        """The LUT that maps the source's distribution onto the reference's.

        Parameters
        ----------
        source_hist, reference_hist
            Computed histograms with the same number of bands (their binnings may differ).
        method
            ``"nearest"``: the nearest-CDF rule with ties to the smallest level, exact.
            Every output is a value that occurs in the reference (for floats: the smallest
            value of the chosen reference bin), except that a source bin which is the only one
            mapped to a reference bin with the same observed range is mapped onto itself, so a
            scene matched to itself is unchanged.
            ``"ceil"``: the generalized inverse ``q = min{q : F_ref(q) >= F_src(p)}``
            (:func:`ceil_cdf_indices`), exact; outputs as for ``"nearest"``.
            ``"optimal"``: the monotone map minimising ``objective`` between the mapped source
            and the reference (:func:`rastermatch.optimal.optimal_indices`, dynamic
            programming over present levels, exact in integers where ties decide); outputs as
            for ``"nearest"``, the reference bins' output values being the distances' axis for
            ``"w1"``.
            ``"interp"``: scikit-image's piecewise-linear inverse-CDF mapping, with the
            reference's knots taken exactly from its bin statistics. Equal to
            ``skimage.exposure.match_histograms`` (to float rounding) wherever each source and
            reference bin holds one distinct value, and a scene matched to itself is unchanged.
            Otherwise the curve is exact at every reference bin's smallest and largest value
            and within one reference bin width in between, and a value of source bin ``p`` is
            mapped linearly between the outputs of the bin's smallest and largest values: it
            lands within one reference bin width of the range of scikit-image's outputs for
            the values of bin ``p`` (more bins shrink both widths). Integer outputs are
            rounded to nearest.
        levels
            ``"present"`` (default): outputs are levels (or values) that occur in the
            reference, so no pixel is mapped onto a level the reference does not have, nodata
            included. ``"all"``: any level of the reference's value range (every rule but
            ``"interp"``; an empty float bin gives its centre), never the reference's nodata
            level.
        dtype
            Output dtype; default the reference's. An integer dtype that cannot hold the
            outputs raises :class:`~rastermatch.errors.OptionError` (it would clip them).
        nodata
            Source pixels equal to it become ``out_nodata`` in :meth:`apply`. Default: the
            nodata the source histogram left out (``source_hist.nodata``).
        out_nodata
            Default: the reference histogram's nodata, else ``nodata``. :meth:`apply` replaces
            it (with a warning) if valid pixels are mapped onto it.
        objective
            ``method="optimal"`` only (refused with the others): ``"ks"``, the largest gap
            between the two CDFs (Kolmogorov-Smirnov), or ``"w1"`` (default), the L1 distance
            between them over the reference values (1-D Wasserstein).
        proportion
            The share ``m`` of the match, rio-hist's ``--match-proportion``: every output is
            ``src + m * (matched - src)``, the matched map blended with the identity; 0 leaves
            the source unchanged, 1 (default) is the full match, exactly. The source value is
            taken within the range the fit saw (each row's valid range for integer levels,
            each bin's observed range for floats; the fitted scene itself is never clipped).
            Integer outputs are rounded to nearest, half to even, as everywhere else; a blend
            the output dtype cannot hold raises :class:`~rastermatch.errors.OptionError`
            naming the row and the dtype to pass. Otherwise whether the blend means something
            is the caller's call: numbers cannot tell units apart (a dark scene onto a bright
            one of the same sensor has disjoint ranges and blends meaningfully, digital
            numbers 0..255 onto reflectances 0..1 overlap and do not), so blend source and
            reference of the same quantity.
        reference_rows
            The reference row of every source row (default: row ``b`` for row ``b``, the
            histograms having the same rows). A reference row shared by many source rows (a
            band's pooled histogram for each of its detectors) is then read by index, never
            copied, while the tables are built; the LUT records ``reference_hist`` aligned to
            the source rows (:meth:`Histogram.take <rastermatch.Histogram.take>`, labelled as
            the source, counts in their own dtype), as LUT documents store it.

        Examples
        --------
        The rules on a source with levels 0..9 (one pixel each) and a reference with one
        pixel at 0 and nine at 1: nearest maps half the pixels onto 0 (KS 0.4), ceil and the
        KS-optimal map reproduce the reference exactly.

        >>> import numpy as np
        >>> from rastermatch import band_histograms
        >>> src = band_histograms(np.arange(10, dtype=np.uint8)[None])
        >>> ref = band_histograms(np.array([[0] + [1] * 9], dtype=np.uint8))
        >>> LUT.from_histograms(src, ref).table[0, :10].tolist()
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
        >>> LUT.from_histograms(src, ref, method="ceil").table[0, :10].tolist()
        [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]

        Half of the match: ``v + 0.5 * (matched - v)``, rounded half to even.

        >>> LUT.from_histograms(src, ref, method="ceil", proportion=0.5).table[0, :10].tolist()
        [0, 1, 2, 2, 2, 3, 4, 4, 4, 5]
        """
        method, objective, proportion = check_rule(method, objective, proportion)
        check_option("levels", levels, LEVELS)
        dtype = check_out_dtype(dtype)
        for h in (source_hist, reference_hist):
            if not isinstance(h, Histogram):
                raise InputTypeError(f"expected a rastermatch.Histogram, not {type(h).__name__}")
            if h.is_lazy:
                raise NotComputedError(
                    "the histograms are lazy; compute them together first: "
                    "h_src, h_ref = dask.compute(h_src, h_ref)"
                )
        ref_rows = np.arange(source_hist.nrows)
        if reference_rows is not None:
            ref_rows = _check_reference_rows(reference_rows, source_hist, reference_hist)
        elif source_hist.nrows != reference_hist.nrows:
            if source_hist.dims == reference_hist.dims == ("band",):
                what = f"{source_hist.nrows} bands and the reference {reference_hist.nrows}"
            else:
                what = (
                    f"{source_hist.nrows} rows ({source_hist.rows!r}) and the reference "
                    f"{reference_hist.nrows} ({reference_hist.rows!r})"
                )
            raise BandMismatchError(
                f"the source has {what}; select matching bands (--bands / --reference-bands)"
            )
        for hist, what in ((source_hist, "source"), (reference_hist, "reference")):
            name = hist.name if hist.name not in ("data", "source", "reference") else f"the {what}"
            for i, total in enumerate(hist.total):
                if total == 0:
                    raise no_valid_pixels(hist.rows.describe(i), name)
        out_dtype = reference_hist.binning.dtype if dtype is None else dtype
        nodata, out_nodata = lut_nodata(
            source_hist, reference_hist, out_dtype, nodata=nodata, out_nodata=out_nodata
        )
        table = _tables(
            source_hist,
            reference_hist,
            ref_rows,
            method,
            levels,
            objective,
            proportion,
            out_dtype,
            dtype is not None,
        )
        return cls(
            table,
            source_hist.binning,
            out_dtype,
            method=method,
            levels=levels,
            objective=objective,
            proportion=proportion,
            rows=source_hist.rows,
            source_hist=source_hist,
            reference_hist=reference_hist
            if reference_rows is None
            else reference_hist.take(ref_rows.tolist(), rows=source_hist.rows),
            nodata=nodata,
            out_nodata=out_nodata,
        )

    # -- using
    def apply(
        self,
        data: Any,
        *,
        nodata: float | int | None = None,
        out_nodata: Any = None,
        detectors: Detectors | None = None,
    ) -> Any:
        """Map ``data`` through the LUT, lazily for dask-backed input.

        Returns the kind that came in (numpy, dask or DataArray, the latter with its coords, CRS
        and transform). Pixels equal to ``nodata`` (default: the data's ``.rio.nodata``, else the
        LUT's) and NaN become ``out_nodata`` (default: the LUT's). ``detectors``: for a
        per-detector LUT, the layout of ``data`` when it differs from the fitted one (e.g.
        ``Detectors.of(16, axis="y", offset=5)`` for a later scene whose first line is detector
        5). See :func:`rastermatch.apply.apply_lut`.
        """
        from .apply import apply_lut

        return apply_lut(self, data, nodata=nodata, out_nodata=out_nodata, detectors=detectors)

    def with_nodata(self, nodata: Any, out_nodata: Any) -> LUT:
        """The same LUT recording other nodata values."""
        return replace(self, nodata=nodata, out_nodata=out_nodata)

    def valid_outputs(self) -> np.ndarray:
        """The output values a valid source pixel can take, in ``dtype``: the table less the
        nodata level; for an interval table the ends of every output interval."""
        table = self.table
        if self.kind == "interval":
            return np.unique(cast_values(table[..., OLO:], self.dtype))
        k = self.source_binning.level_bin(self.nodata)
        if k is not None:
            table = np.delete(table, k, axis=1)
        return np.unique(table)

    def output_taken(self, value: Any) -> bool:
        """Whether some valid source pixel may be mapped onto ``value``."""
        if self.kind == "table":
            return bool(np.isin(value, self.valid_outputs()))
        outs = cast_values(self.table[..., OLO:], self.dtype).astype(np.float64)
        return bool(np.any((outs[..., 0] <= value) & (value <= outs[..., 1])))

    # -- files
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (format 2, see :mod:`rastermatch.schema`): the recipe and both
        histograms. No table: reading the document rebuilds it from the histograms."""
        from .schema import lut_to_dict

        return lut_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LUT:
        """The LUT a document describes: every field checked, then the table rebuilt with
        :meth:`from_histograms`. Format 1 documents (rastermatch 0.1) are read too, their stored
        table compared with the rebuilt one. A bad document raises LUTFileError."""
        from .schema import lut_from_dict

        return lut_from_dict(d)

    def save(
        self,
        path: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        inputs: Iterable[str | os.PathLike[str] | None] = (),
    ) -> Path:
        """Write the LUT as a JSON document (see :meth:`to_dict`), atomically.

        Parameters
        ----------
        path
            The file to write; it must not exist unless ``overwrite``.
        overwrite
            Replace an existing file.
        inputs
            Paths the job read (source, reference, masks, another LUT): the LUT is never
            written over any of them, whatever ``overwrite`` says.

        The file appears complete or not at all (a temporary sibling renamed into place, removed
        on any error or interrupt); write errors raise RasterWriteError naming the file. The
        same LUT always gives the same bytes.

        Examples
        --------
        >>> import tempfile, numpy as np
        >>> from rastermatch import LUT, band_histograms
        >>> h = band_histograms(np.array([[1, 2, 2, 3]], dtype=np.uint8))
        >>> lut = LUT.from_histograms(h, h)
        >>> path = lut.save(tempfile.mkdtemp() + "/lut.json")
        >>> LUT.load(path).table[0, 1:4].tolist()
        [1, 2, 3]
        """
        from .schema import save_lut

        return save_lut(self, path, overwrite=overwrite, inputs=inputs)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LUT:
        """Read a LUT file: every field is checked and the table rebuilt from the histograms, so
        a file can neither disagree with itself nor steer the kernels outside the table. Any
        problem raises LUTFileError naming the file and the field."""
        from .schema import load_lut

        return load_lut(path)

    def __repr__(self) -> str:
        layout = "" if self.detectors is None else f", {self.detectors.describe()}"
        rule = self.method if self.objective is None else f"{self.method}({self.objective})"
        if self.proportion != 1.0:
            rule += f" x{self.proportion:g}"
        return (
            f"<LUT {rule}/{self.levels} {self.kind}, {self._shown_rows()}, "
            f"{self.source_binning.dtype} -> {self.dtype}{layout}>"
        )

    def _shown_rows(self) -> str:
        if self.rows.dims == ("band",):
            return f"{self.nbands} band(s) {list(self.bands)}"
        return f"{self.nrows} row(s) {self.rows!r}"

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Plot the LUT curve of every band (matplotlib; the ``plot`` extra)."""
        from .plot import plot_lut

        return plot_lut(self, ax=ax, **kwargs)

    def _repr_png_(self) -> bytes:
        from .plot import figure_png

        return figure_png(self.plot)
