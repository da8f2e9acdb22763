"""Optimal monotone maps between histograms, and multiple histogram matching.

The nearest-CDF rule (:func:`rastermatch.lut.nearest_cdf_indices`) maps every source level on its
own and can be far from the best monotone map: levels 0..9 with one pixel each, matched to a
reference of one pixel at 0 and nine at 1, give a KS distance of 0.4 where the monotone map
``0 -> 0, 1..9 -> 1`` reaches 0. :func:`optimal_indices` finds the monotone map that minimises a
named distance between the mapped source and the reference, for one (source, reference) pair or
for several at once (multiple histogram matching, Shapira, Avidan and Hel-Or 2013), by dynamic
programming over the present levels; :func:`fit_multi` turns that into an ordinary
:class:`~rastermatch.lut.LUT`.

The problem, in the words of the code
--------------------------------------
``k`` pairs ``j`` of histograms share a source binning (``n`` bins) and a reference binning
(``m`` bins). The source levels that hold pixels in some pair are ``p_1 < ... < p_P``; the
candidate outputs are the reference bins ``c_1 < ... < c_Q`` (``levels="present"``: those holding
pixels in some pair; ``"all"``: every bin). A monotone map sends ``p_i`` to ``c_g(i)`` with
``g`` non-decreasing. Equivalently it is the non-decreasing *cut* sequence

    a(t) = #{i : g(i) <= t},   0 <= a(1) <= ... <= a(Q) = P,

and ``g(i) = min{t : a(t) >= i}``. The mapped source CDF of pair ``j`` at ``c_t`` is
``S_j(a(t)) / N_j`` (``S_j`` the cumulative count of the first present levels, ``N_j`` the total);
every CDF involved is a step function that only moves at candidates, so the distances below are
exact sups and integrals over values. The gap of a pair at ``c_t`` with cut ``a``,

    d(t, a) = sum_j w_j |S_j(a) / N_j - F_ref,j(c_t)|,

depends on nothing else, and the objectives are

- ``"ks"``: ``max_t d(t, a(t))``: for one pair the Kolmogorov-Smirnov distance; for several the
  largest, over reference levels, weighted sum of the pairs' CDF gaps. This is NOT the
  weighted sum of the per-pair KS distances: that sum of per-pair maxima does not decompose
  over levels and is not what is minimised (a map of smaller summed per-pair KS may exist:
  pairs ``([0, 1, 1, 2], [0, 0, 0, 3])`` and ``([1, 2, 1, 0], [1, 2, 2, 0])`` get a map of
  summed KS 17/20 where 1/2 is reachable). The largest summed gap lies between the weighted
  maximum and the weighted sum of the per-pair KS distances, and equals KS for one pair;
- ``"w1"``: ``sum_{t<Q} (v(c_{t+1}) - v(c_t)) d(t, a(t))``: for each pair the L1 distance between
  the CDFs in value units (the 1-D Wasserstein distance), weighted and summed; ``v`` are the
  ``reference_values`` of the bins (default: the bin indices).

The recurrence, over the candidates from the top down (``E(t, a)`` the best value of the terms
``t..Q`` when ``a(t) = a``), is the dynamic programme of multiple histogram matching:

    E(Q, a) = 0 if a = P else infinity
    "w1":  E(t, a) = gap_t d(t, a) + min_{a' >= a} E(t+1, a'),   gap_t = v(c_{t+1}) - v(c_t)
    "ks":  E(t, a) = max(d(t, a), min_{a' >= a} E(t+1, a'))

solved over ``P + 1`` cuts by ``Q`` candidates with suffix minima in O(P Q k). It collapses:
``d`` has decreasing differences in ``(a, t)`` (for one pair, ``|A(a+1) - b| - |A(a) - b|``
does not increase with ``b``, and every ``b = B_j(t)`` grows with ``t``; a sum with non-negative
weights keeps the property), so by Topkis' theorem the largest minimiser ``a*(t)`` of
``d(t, .)`` does not decrease with ``t``. The cuts ``a*(t)`` are therefore a monotone map that
minimises every term at once: it is optimal for both objectives, and ``min_{a' >= a} E(t+1,
a')`` is always attained at ``a*(t+1)``. The row minima of such a monotone matrix are found by
divide and conquer (the middle row over the whole range of cuts, then the rows above and below
within the cuts its minimiser leaves them): O(k (P + Q) log Q) gap evaluations, compiled and
GIL-free, instead of P Q. For one pair it is the nearest-CDF rule read the other way: for every
reference level the source cut whose CDF is nearest, where Algorithm 1 takes for every source
level the nearest reference CDF.

Ties (deterministic, exact where the arithmetic is exact, see below): among all optimal maps
the lexicographically smallest ``(g(1), g(2), ...)`` (the lowest output for the lowest source
level first), which is the largest cut sequence read from ``t = 1``. A KS optimum is rarely
unique (any map within the bottleneck ties), so ``"ks"`` takes, among the maps with the smallest
KS value, those with the smallest W1 value, and the lexicographically smallest of them. With
distinct candidate values both rules give the map ``a*``: the two objectives give the same map
and differ in the value they report, for one pair or for several: :func:`fit_multi` and
:class:`~rastermatch.LUT` pass the bins' values, distinct for integer levels (and for uniform
bins of a range wider than a point), so there ``"ks"`` and ``"w1"`` give the same LUT. They
differ only where candidates share one value (a zero gap, which W1 does not see): there
``"w1"`` takes the next candidate's cut and ``"ks"`` the largest cut up to it whose gap stays
within the KS optimum.

Exact arithmetic: with ``weights`` None, non-negative integers, or fractions of denominator at
most 2**20 that round to the weights given (``[0.3, 0.1]`` is taken as 3/10 and 1/10, in the
integer ratio 3 : 1, so it decides ties exactly as ``[3, 1]``) the gaps are computed in
integers: pair ``j``'s CDF difference ``S/N_src - C/N_ref`` is ``(S m_ref - C m_src) / D_j`` with
``m = N / gcd(N_src, N_ref)`` and ``D_j = N_src m_ref``, scaled to the common denominator
``L = lcm_j D_j``, as :mod:`rastermatch.lut` does for one pair; int64 while
``L sum(w) < 2**61`` (for one pair, ``N_src N_ref / gcd`` below 2.3e18: two scenes of
1.5e9 pixels each). Beyond that, and with other fractional weights, the same search runs in
float64,
and gaps closer than float64 rounding may be told apart or tied either way.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

import dask
import numba
import numpy as np

from ._data import as_band_array, no_valid_pixels
from ._values import cast_values
from .errors import (
    BandMismatchError,
    BinningMismatchError,
    InputTypeError,
    NoValidPixelsError,
    OptionError,
)
from .histogram import Histogram
from .match import _item, _scheduler, _statistics, reference_with_source_nodata

if TYPE_CHECKING:
    from .lut import LUT

__all__ = ["Objective", "fit_multi", "optimal_indices"]

Objective = Literal["ks", "w1"]
OBJECTIVES = ("ks", "w1")
LEVELS = ("present", "all")

# int64 gaps stay below this: a sum of two never wraps
_INT_LIMIT = 2**61


# -- compiled search ------------------------------------------------------------------------------
@numba.njit(nogil=True, cache=True)
def _gap(a_cum, b_cum, t, a):  # pragma: no cover - compiled
    """d(t, a) = sum_j |A[j, a] - B[j, t]| (the weights are folded into A and B)."""
    d = abs(a_cum[0, a] - b_cum[0, t])
    for j in range(1, a_cum.shape[0]):
        d += abs(a_cum[j, a] - b_cum[j, t])
    return d


@numba.njit(nogil=True, cache=True)
def _row_minima(a_cum, b_cum, inf):  # pragma: no cover - compiled
    """For every candidate row t < Q - 1, the largest cut minimising d(t, .) and that minimum;
    row Q - 1 gets the cut P. Divide and conquer over the rows: the largest minimiser does not
    decrease with t, so a row's minimiser bounds the search of the rows on either side."""
    p = a_cum.shape[1] - 1
    nq = b_cum.shape[1]
    cut = np.empty(nq, dtype=np.int64)
    low = np.empty(nq, dtype=a_cum.dtype)
    cut[nq - 1] = p
    low[nq - 1] = _gap(a_cum, b_cum, nq - 1, p)
    stack = np.empty((128, 4), dtype=np.int64)  # depth-first: at most 2 log2(Q) + 1 entries
    stack[0] = (0, nq - 2, 0, p)
    top = 1
    while top > 0:
        top -= 1
        t0, t1, a0, a1 = stack[top]
        if t0 > t1:
            continue
        t = (t0 + t1) // 2
        best = inf
        arg = a0
        for a in range(a0, a1 + 1):
            d = _gap(a_cum, b_cum, t, a)
            if d <= best:  # ties to the larger cut
                best = d
                arg = a
        cut[t] = arg
        low[t] = best
        stack[top] = (t0, t - 1, a0, arg)
        stack[top + 1] = (t + 1, t1, arg, a1)
        top += 2
    return cut, low


# -- the map -------------------------------------------------------------------------------------
def _counts(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iuf":
        raise InputTypeError(
            f"{what} must be a non-empty 1-D array of counts, not {arr.dtype} of shape {arr.shape}"
        )
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.array_equal(arr, np.round(arr)):
            raise InputTypeError(f"{what} must hold whole pixel counts")
        if arr.size and np.abs(arr).max() >= 2**62:
            raise InputTypeError(f"{what} holds counts too large for int64")
    arr = arr.astype(np.int64)
    if np.any(arr < 0):
        raise InputTypeError(f"{what} holds negative counts; pass pixel counts per bin")
    return arr


def _check_weights(weights: Any, k: int) -> tuple[np.ndarray, list[int] | None]:
    """``(weights as float64, integers proportional to them or None)``; all ones for None."""
    if weights is None:
        return np.ones(k), [1] * k
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        w = None
    if w is None or w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise OptionError(
            f"weights must be {k} finite non-negative numbers, one per pair, not {weights!r}"
        )
    if not np.any(w > 0):
        raise OptionError("weights are all zero; give at least one pair a positive weight")
    if not np.isfinite(w.sum()):  # the weighted gaps are added up in float64
        raise OptionError(
            "weights add up to more than float64 holds; scale them down (only their ratios matter)"
        )
    return w, _integer_weights(w)


def _integer_weights(w: np.ndarray) -> list[int] | None:
    """Integers in the ratios of the weights, when every weight is a fraction of denominator
    at most 2**20 that rounds to it exactly (``0.3`` is 3/10, as typed; overlap fractions are
    such weights), so that ``[0.3, 0.1]`` decides ties exactly as ``[3, 1]``; else None."""
    fracs = []
    for x in w.tolist():
        f = Fraction(x).limit_denominator(2**20)
        if float(f) != x:
            return None
        fracs.append(f)
    den = math.lcm(*(f.denominator for f in fracs))
    ints = [int(f * den) for f in fracs]
    g = math.gcd(*ints)  # positive: some weight is
    ints = [i // g for i in ints]
    return ints if max(ints) < 2**53 else None


def _pairs(pairs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(source counts (k, n), reference counts (k, m))``, checked."""
    try:
        items = list(pairs)
    except TypeError:
        items = None
    if not items:
        raise InputTypeError(
            "pairs must be a non-empty sequence of (source counts, reference counts) tuples"
        )
    src, ref = [], []
    for j, pair in enumerate(items):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InputTypeError(
                f"pair {j} must be a (source counts, reference counts) tuple, not "
                f"{type(pair).__name__}"
            )
        s = _counts(pair[0], f"the source counts of pair {j}")
        r = _counts(pair[1], f"the reference counts of pair {j}")
        if src and s.size != src[0].size:
            raise OptionError(
                f"pair {j}'s source has {s.size} bins and pair 0's {src[0].size}; every source "
                "must share one binning (compute the histograms with the same bins and range)"
            )
        if ref and r.size != ref[0].size:
            raise OptionError(
                f"pair {j}'s reference has {r.size} bins and pair 0's {ref[0].size}; every "
                "reference must share one binning (compute them with the same bins and range)"
            )
        for counts, what in ((s, "source"), (r, "reference")):
            if not counts.any():
                raise NoValidPixelsError(
                    f"the {what} of pair {j} has no pixels; drop the pair or check its nodata "
                    "and mask"
                )
        src.append(s)
        ref.append(r)
    return np.stack(src), np.stack(ref)


def _check_values(values: Any, m: int) -> np.ndarray | None:
    if values is None:
        return None
    v = np.asarray(values)
    if v.shape != (m,) or v.dtype.kind not in "iuf" or not np.all(np.isfinite(v)):
        raise OptionError(
            f"reference_values must be {m} finite numbers, one per reference bin, not "
            f"{v.dtype} of shape {v.shape}"
        )
    return v


def _scaled(
    cs: np.ndarray, cr: np.ndarray, w: np.ndarray, wi: list[int] | None
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The cumulative counts scaled so that ``|A[j, a] - B[j, t]|`` is pair j's weighted CDF
    gap: with integer weights ``wi`` (in the ratios of ``w``) integers over the common
    denominator with the bound of ``d`` (None when it would not fit), else float64 fractions."""
    n_src = [int(x) for x in cs[:, -1]]
    n_ref = [int(x) for x in cr[:, -1]]
    if wi is not None:
        dens = [ns * nr // math.gcd(ns, nr) for ns, nr in zip(n_src, n_ref, strict=True)]
        common = math.lcm(*dens)
        bound = common * sum(wi)
        if bound < _INT_LIMIT:
            a = np.empty(cs.shape, dtype=np.int64)
            b = np.empty(cr.shape, dtype=np.int64)
            for j, (ns, nr, d, wj) in enumerate(zip(n_src, n_ref, dens, wi, strict=True)):
                g = math.gcd(ns, nr)
                scale = common // d * wj
                # products are at most common * wj < 2**61: no wrap
                a[j] = cs[j] * (nr // g * scale)
                b[j] = cr[j] * (ns // g * scale)
            return a, b, bound
    a = cs / np.asarray(n_src, dtype=np.float64)[:, None] * w[:, None]
    b = cr / np.asarray(n_ref, dtype=np.float64)[:, None] * w[:, None]
    return a, b, None


def _equal_values(
    a_cum: np.ndarray,
    b_cum: np.ndarray,
    cut: np.ndarray,
    low: np.ndarray,
    zero: np.ndarray,
    objective: Objective,
) -> np.ndarray:
    """The cuts of the rows whose candidate shares its value with the next one (a zero gap):
    W1 does not see such a row, so it takes the next row's cut ("w1"), or the largest cut up to
    it whose gap stays within the KS optimum ("ks"); rows from the top down."""
    cut = cut.copy()
    ks = low.max()
    for t in np.flatnonzero(zero)[::-1]:
        if objective == "w1":
            cut[t] = cut[t + 1]
            continue
        d = np.abs(a_cum[:, : cut[t + 1] + 1] - b_cum[:, t : t + 1]).sum(axis=0)
        within = np.flatnonzero(d <= ks)  # holds the row's own minimiser (but for rounding)
        cut[t] = max(cut[t], within[-1]) if within.size else cut[t]
    return cut


def optimal_indices(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    objective: Objective = "w1",
    weights: Sequence[float] | np.ndarray | None = None,
    reference_values: np.ndarray | None = None,
    levels: Literal["present", "all"] = "present",
    exclude: Iterable[int] = (),
) -> np.ndarray:
    """The optimal monotone map from source bins to reference bins for ``k`` histogram pairs.

    The map minimises ``objective`` between the mapped source and the reference, summed over
    the pairs with ``weights`` (see the module docstring for the exact objective, the
    recurrence, the tie rule and when the arithmetic is exact).

    Parameters
    ----------
    pairs
        ``(source counts, reference counts)`` of one row each: 1-D non-negative integer counts,
        every source with the same number of bins, every reference too, each with a pixel.
    objective
        ``"w1"``: the weighted sum of the L1 distances between the CDFs (in ``reference_values``
        units); ``"ks"``: the largest weighted sum of CDF gaps over the reference levels (the
        Kolmogorov-Smirnov distance for one pair), ties to the smallest W1.
    weights
        One non-negative number per pair (default all 1); integers keep the arithmetic exact.
    reference_values
        The value of every reference bin (non-decreasing over the candidates), the axis of the
        W1 distance; default the bin indices. The map depends on them only where candidates
        share a value.
    levels
        ``"present"``: outputs are reference bins holding pixels in some pair; ``"all"``: any
        reference bin but those in ``exclude`` that are empty.
    exclude
        Reference bins never chosen unless they hold pixels (the nodata level with ``"all"``).

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64: the reference bin of every source bin, non-decreasing. Source bins with
        no pixels in any pair take the output of the nearest bin below that has pixels (of the
        first one with pixels for those below it).

    Examples
    --------
    The issue's case: the nearest rule gives KS 0.4, the optimal map 0.

    >>> src = np.ones(10, dtype=int)
    >>> ref = np.array([1, 9])
    >>> optimal_indices([(src, ref)], objective="ks").tolist()
    [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]

    Two pairs at once, one monotone map for both:

    >>> optimal_indices([([2, 2, 0, 4], [1, 1, 2]), ([1, 3, 0, 4], [2, 2, 4])]).tolist()
    [0, 1, 1, 2]
    """
    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise OptionError(f"objective must be 'ks' or 'w1', not {objective!r}")
    if not isinstance(levels, str) or levels not in LEVELS:
        raise OptionError(f"levels must be 'present' or 'all', not {levels!r}")
    src, ref = _pairs(pairs)
    k, n = src.shape
    m = ref.shape[1]
    w, integers = _check_weights(weights, k)
    values = _check_values(reference_values, m)

    present = np.flatnonzero(src.any(axis=0))
    held = ref.any(axis=0)
    candidates = np.flatnonzero(held) if levels == "present" else np.arange(m)
    drop = [int(q) for q in exclude if 0 <= int(q) < m and not held[int(q)]]
    if drop:
        candidates = np.setdiff1d(candidates, drop)
    npres, ncand = present.size, candidates.size
    if ncand == 1:
        return np.full(n, candidates[0], dtype=np.int64)
    if values is not None and np.any(np.diff(values[candidates]) < 0):
        raise OptionError("reference_values must not decrease from one reference bin to the next")

    # 1. cumulative counts at the cuts (0..P present levels) and at the candidates, scaled to
    # exact integers where they fit
    cs = np.zeros((k, npres + 1), dtype=np.int64)
    np.cumsum(src[:, present], axis=1, out=cs[:, 1:])
    cr = np.cumsum(ref, axis=1, dtype=np.int64)[:, candidates]
    a_cum, b_cum, bound = _scaled(cs, cr, w, integers)
    # 2. every row's largest minimising cut: the optimal map of both objectives
    cut, low = _row_minima(a_cum, b_cum, bound if bound is not None else np.inf)
    # 3. candidates sharing a value (zero gaps) are the only place where the objectives differ
    if values is not None:
        zero = np.diff(values[candidates]) == 0
        if zero.any():
            cut = _equal_values(a_cum, b_cum, cut, low[:-1], zero, objective)
    # 4. g(i) = min{t : a(t) >= i}, then the empty source bins from their neighbours
    out_present = candidates[np.searchsorted(cut, np.arange(1, npres + 1), side="left")]
    below = np.maximum.accumulate(np.where(np.isin(np.arange(n), present), np.arange(n), -1))
    nearest = np.where(below >= 0, below, present[0])
    out = np.empty(n, dtype=np.int64)
    out[present] = out_present
    return out[nearest]


# -- multiple histogram matching -----------------------------------------------------------------
def fit_multi(
    pairs: Sequence[tuple[Any, Any]],
    *,
    objective: Objective = "w1",
    weights: Sequence[float] | np.ndarray | None = None,
    levels: Literal["present", "all"] = "present",
    dtype: Any = None,
    nodata: float | int | None = None,
    out_nodata: float | int | None = None,
    bins: int | None = None,
) -> LUT:
    """One monotone LUT fitted to ``k`` (source, reference) pairs at once.

        Multiple histogram matching (Shapira, Avidan and Hel-Or 2013): for every row (band) the
        monotone map from source levels to reference levels that minimises the weighted sum over
        the pairs of the per-pair objective, by the dynamic programme of :func:`optimal_indices`:

            W1:  sum_j w_j sum_t (v_{t+1} - v_t) |F_map,j(v_t) - F_ref,j(v_t)|
            KS:  max_t sum_j w_j |F_map,j(v_t) - F_ref,j(v_t)|   (ties: the smallest W1)

    (for several pairs "ks" is the largest weighted sum of the CDF gaps over the reference levels,
    not the weighted sum of the per-pair KS distances, which does not decompose over levels; the
    optimal map minimises every level's summed gap at once, so where the reference bins' values
    are distinct, always for integer levels, both objectives give the same LUT; see
    :mod:`rastermatch.optimal`)

        with ``F_map,j`` the CDF of pair ``j``'s source mapped through the LUT and ``v_t`` the
        candidate reference values; the recurrence over the candidates ``t`` and the cuts ``a``
        (how many present source levels map at or below ``v_t``) is

            E(t, a) = gap_t d(t, a) + min_{a' >= a} E(t + 1, a')     (KS: max(d, min ...))

        (:mod:`rastermatch.optimal` has the details, the tie rule and when it is exact). One
        calibration LUT for a sensor from several scene pairs, or one LUT for a mosaic tile from
        its overlaps with each neighbour. With one pair it is exactly
        ``LUT.from_histograms(source, reference, method="optimal", objective=objective)``.

        Parameters
        ----------
        pairs
            ``(source, reference)`` tuples: computed or lazy :class:`~rastermatch.Histogram` pairs,
            or arrays / DataArrays (numpy or dask; ``(y, x)``, ``(band, y, x)``, ...), whose
            histograms are then computed here in one pass with one binning for all the sources
            and one for all the references. Every source has the same rows (bands), and every
            reference as many.
        objective
            ``"w1"`` (default) or ``"ks"`` (the largest summed gap, above); the same table where
            the reference bins' values are distinct, the recipe recording which was asked for.
        weights
            One non-negative weight per pair (default all 1), e.g. the overlap areas; integers keep
            the arithmetic exact.
        levels
            ``"present"``: outputs are reference levels holding pixels in some pair; ``"all"``: any
            level of the reference binning but its nodata.
        dtype
            Output dtype; default the references'.
        nodata
            Arrays: the sources' nodata (default their ``.rio.nodata``), also taken by references
            without one of their own. The LUT maps it to ``out_nodata``.
        out_nodata
            Default: the references' nodata, else ``nodata``.
        bins
            Arrays of floats or integers wider than 16 bits: the number of bins (default 65,536).

        Returns
        -------
        LUT
            ``method="optimal"`` with the objective recorded; rows those of the first source.
            With one pair it records both histograms as any LUT does. With several it records
            every pair's histograms and weight in ``pairs`` (``source_hist`` and
            ``reference_hist`` are None): :meth:`~rastermatch.LUT.save` writes them, and
            :meth:`~rastermatch.LUT.load` rebuilds the table from them with this function, so the
            loaded LUT applies exactly as this one (see :mod:`rastermatch.schema`).

        Examples
        --------
        >>> import numpy as np
        >>> from rastermatch import fit_multi
        >>> a = np.array([[0, 1, 2, 3]], dtype=np.uint8)
        >>> b = np.array([[0, 0, 2, 3]], dtype=np.uint8)
        >>> lut = fit_multi([(a, np.array([[10, 10, 20, 20]], np.uint8)),
        ...                  (b, np.array([[10, 20, 20, 20]], np.uint8))], objective="ks")
        >>> lut.table[0, :4].tolist()
        [10, 10, 20, 20]
        >>> from rastermatch import LUT
        >>> LUT.from_dict(lut.to_dict()).table[0, :4].tolist()  # the pairs rebuild it
        [10, 10, 20, 20]
    """
    from .lut import LUT, check_out_dtype  # lut imports this module when it fits "optimal"

    if not isinstance(objective, str) or objective not in OBJECTIVES:
        raise OptionError(f"objective must be 'ks' or 'w1', not {objective!r}")
    if not isinstance(levels, str) or levels not in LEVELS:
        raise OptionError(f"levels must be 'present' or 'all', not {levels!r}")
    out_dtype = check_out_dtype(dtype)
    hists = _pair_histograms(pairs, nodata=nodata, bins=bins)
    w, _ = _check_weights(weights, len(hists))
    if len(hists) == 1:  # the single-pair rule itself (any positive weight gives the same map)
        src, ref = hists[0]
        return LUT.from_histograms(
            src, ref, method="optimal", objective=objective, levels=levels, dtype=out_dtype,
            nodata=nodata, out_nodata=out_nodata,
        )  # fmt: skip
    return _multi_lut(hists, objective, w, levels, out_dtype, nodata, out_nodata)


def _pair_histograms(
    pairs: Any, *, nodata: Any, bins: int | None
) -> list[tuple[Histogram, Histogram]]:
    """The pairs as computed histograms: Histogram pairs as given (lazy ones computed together),
    array pairs histogrammed in one pass, every source sharing one binning and every reference
    another (rows of the same position share a range)."""
    try:
        items = list(pairs)
    except TypeError:
        items = []
    if not items:
        raise InputTypeError("pairs must be a non-empty sequence of (source, reference) tuples")
    for j, pair in enumerate(items):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InputTypeError(
                f"pair {j} must be a (source, reference) tuple, not {type(pair).__name__}"
            )
    given = [isinstance(side, Histogram) for pair in items for side in pair]
    if all(given):
        lazy = [side for pair in items for side in pair if side.is_lazy]
        done = dict(zip(map(id, lazy), dask.compute(*lazy), strict=True)) if lazy else {}
        return [(done.get(id(s), s), done.get(id(r), r)) for s, r in items]
    if any(given):
        j = given.index(not given[0]) // 2
        raise InputTypeError(
            f"pair {j} mixes histograms and arrays; pass histograms for every pair (computed "
            "with the same bins and range) or arrays for every pair"
        )
    srcs = [
        as_band_array(s, nodata=nodata, name=f"the source of pair {j}")
        for j, (s, _) in enumerate(items)
    ]
    refs = [
        reference_with_source_nodata(
            srcs[j], as_band_array(r, nodata=None, name=f"the reference of pair {j}")
        )
        for j, (_, r) in enumerate(items)
    ]
    nrows = srcs[0].rows.size
    for j, (s, r) in enumerate(zip(srcs, refs, strict=True)):
        for side, what in ((s, "source"), (r, "reference")):
            if side.rows.size != nrows:
                raise BandMismatchError(
                    f"the {what} of pair {j} has {side.rows.size} rows ({side.rows!r}) and the "
                    f"source of pair 0 {nrows} ({srcs[0].rows!r}); select the same bands in "
                    "every source and reference"
                )
    share = np.arange(nrows)
    stat_items = [_item(s, None, "mask", share) for s in srcs]
    stat_items += [_item(r, None, "mask", share + nrows) for r in refs]
    hists, _ = _statistics(stat_items, bins, _scheduler(*srcs, *refs))
    k = len(items)
    return list(zip(hists[:k], hists[k:], strict=True))


def _check_histograms(hists: list[tuple[Histogram, Histogram]]) -> None:
    """Every source binned as pair 0's, every reference too, with as many rows and pixels."""
    s0, r0 = hists[0]
    for j, pair in enumerate(hists):
        for h, first, what in ((pair[0], s0, "source"), (pair[1], r0, "reference")):
            if h.nrows != s0.nrows:
                raise BandMismatchError(
                    f"the {what} of pair {j} has {h.nrows} rows and the source of pair 0 "
                    f"{s0.nrows}; select the same bands in every source and reference"
                )
            if not (h.binning is first.binning or h.binning.same_as(first.binning)):
                raise BinningMismatchError(
                    f"the {what} of pair {j} is binned as {h.binning!r}, the {what} of pair 0 "
                    f"as {first.binning!r}; fit_multi needs one binning for all {what}s: give "
                    "them one dtype, or histogram them with the same bins and range"
                )
            for i, total in enumerate(h.total):
                if total == 0:
                    raise no_valid_pixels(h.rows.describe(i), f"the {what} of pair {j}")


def _multi_lut(
    hists: list[tuple[Histogram, Histogram]],
    objective: Objective,
    weights: np.ndarray,
    levels: Literal["present", "all"],
    dtype: np.dtype | None,
    nodata: Any,
    out_nodata: Any,
) -> LUT:
    """The LUT of several pairs: a table row per source row from :func:`optimal_indices`, with
    the outputs LUT.from_histograms gives for the chosen reference bins (the smallest value seen
    in the bin, across the references). It records the pairs and ``weights`` (float64, what
    optimal_indices takes), from which a LUT document's reader calls :func:`fit_multi` again:
    the same table."""
    from .lut import LUT, OLO, _check_outputs_fit, lut_nodata

    _check_histograms(hists)
    src = functools.reduce(operator.add, (s for s, _ in hists))
    ref = functools.reduce(operator.add, (r for _, r in hists))
    exclude = sorted({b for _, r in hists if (b := r.binning.level_bin(r.nodata)) is not None})
    ref_values = ref.binning.values()
    outputs = np.where(ref.counts > 0, ref.bin_stats()[0], ref_values)
    interval = src.binning.kind != "levels"
    if interval:
        smin, smax, _ = src.bin_stats()
        centre = src.binning.values()
    rows = []
    for b in range(src.nrows):
        try:
            q = optimal_indices(
                [(s.counts[b], r.counts[b]) for s, r in hists],
                objective=objective,
                weights=weights,
                reference_values=ref_values[b],
                levels=levels,
                exclude=exclude,
            )
        except OptionError as e:
            where = src.rows.describe(b)
            raise OptionError(f"{where}: {e}" if where else str(e)) from None
        out = outputs[b][q]
        if interval:
            seen = src.counts[b] > 0
            lo, hi = np.where(seen, smin[b], centre[b]), np.where(seen, smax[b], centre[b])
            out = np.stack([lo, hi, out, out], axis=1)
        rows.append(out)
    table = np.stack(rows)
    out_dtype = ref.binning.dtype if dtype is None else dtype
    _check_outputs_fit(
        table[..., OLO:] if interval else table, out_dtype, src.rows, dtype is not None
    )
    if not interval:
        table = cast_values(table, out_dtype)
    nodata, out_nodata = lut_nodata(src, ref, out_dtype, nodata=nodata, out_nodata=out_nodata)
    # no source_hist/reference_hist: one pair would not give this table back
    return LUT(
        table,
        src.binning,
        out_dtype,
        method="optimal",
        objective=objective,
        levels=levels,
        rows=src.rows,
        nodata=nodata,
        out_nodata=out_nodata,
        pairs=tuple((s, r, float(wj)) for (s, r), wj in zip(hists, weights, strict=True)),
    )
