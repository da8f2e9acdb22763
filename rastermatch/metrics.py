"""Quality metrics of a match, computed from histograms only: no pixel is read again.

Every histogram is read as atoms, values with their pixel counts (:meth:`Histogram.atoms`): the
integer levels; for float bins their smallest value (``vmin``, with ``nmin`` pixels) and largest
(``vmax``, with the rest), which is exact for bins of at most two distinct values (quantised
reflectance, integers read as floats). Two histograms with different binnings (uint8 against
uint16, float bins of different widths) compare on the union of their atoms:

- :func:`ks_distance`, the Kolmogorov-Smirnov distance ``max_x |F_a(x) - F_b(x)|``;
- :func:`wasserstein_distance`, the Wasserstein-1 (earth mover's) distance
  ``integral |F_a(x) - F_b(x)| dx`` in value units, the same number as
  ``scipy.stats.wasserstein_distance`` on the bin values weighted by the counts.

Both are computed on the integer scale (``c_a(x) * N_b - c_b(x) * N_a`` with cumulative counts
``c`` and totals ``N``) and divided once at the end, so identical distributions give exactly 0.

:func:`matched_histogram` pushes the source histogram through a LUT, giving the histogram of the
matched output without reading it; :func:`quality_table` puts the distances before and after the
match side by side.

Detector balancing (destriping) is measured on the pixels instead, in one compiled pass:
:func:`detector_profile` gives the mean of every line (or column), :func:`stripe_power` the power
of the detector pattern in it (the power spectrum at the detector frequency and its harmonics,
Chen et al. 2003), and :func:`destripe_quality` both before and after a balancing with the mean
relative deviation of the output from the input.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.array as da
import numba
import numpy as np
from dask.base import tokenize

from ._data import BandArray, as_band_array, as_band_mask, as_dask
from ._detectors import Axis, Detectors
from ._rows import Rows, show_label
from ._values import EXACT_MAX_ITEMSIZE, cast_values, kernel_nodata, nodata_fits, uniform_bins
from .errors import (
    BandMismatchError,
    DimensionError,
    GridMismatchError,
    InputTypeError,
    NoValidPixelsError,
    OptionError,
    RastermatchError,
)
from .histogram import DEFAULT_BINS, Binning, Histogram
from .lut import LUT

__all__ = [
    "DestripePass",
    "destripe_pass",
    "destripe_quality",
    "detector_profile",
    "format_quality_table",
    "ks_distance",
    "matched_histogram",
    "quality_table",
    "stripe_period",
    "stripe_power",
    "wasserstein_distance",
]


# -- distances between two histograms ---------------------------------------------------------


def _check_pair(a: Histogram, b: Histogram) -> None:
    for h in (a, b):
        if not isinstance(h, Histogram):
            raise InputTypeError(f"expected a rastermatch.Histogram, not a {type(h).__name__}")
        h._require_concrete()
    if a.nbands != b.nbands:
        raise BandMismatchError(
            f"cannot compare histograms of {a.nbands} and {b.nbands} bands; select the same "
            "bands from both (hist.band(i) takes one)"
        )


def _cdf_gaps(a: Histogram, b: Histogram, band: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The CDF gap of one band at every value of the merged support.

    Returns ``(x, gap, scale)``: the sorted distinct values ``x`` where either histogram has
    pixels, ``gap[k] = c_a(x[k]) * N_b - c_b(x[k]) * N_a`` (exact integers; Python integers in an
    object array when int64 could overflow), and ``scale = N_a * N_b``, so that
    ``F_a(x) - F_b(x) = gap / scale``.
    """
    parts = []
    for h in (a, b):
        values, weights = h.atoms(band)
        if values.size == 0:
            raise NoValidPixelsError(
                f"band {h.bands[band]!r} of {h.name} has no valid pixels; a distance needs at "
                "least one pixel on each side (check the nodata value and the mask)"
            )
        parts.append((values, np.cumsum(weights)))
    (va, ca), (vb, cb) = parts
    n_a, n_b = int(ca[-1]), int(cb[-1])
    x = np.union1d(va, vb)
    # the cumulative count at x: everything at or below x. The values of one binning are
    # non-decreasing, so "right" also takes every bin of equal value (a zero-width range).
    at_a = np.concatenate([[0], ca])[np.searchsorted(va, x, side="right")]
    at_b = np.concatenate([[0], cb])[np.searchsorted(vb, x, side="right")]
    if n_a * n_b < 2**62:  # both products below fit, and so does their difference
        gap = at_a * n_b - at_b * n_a
    else:
        gap = at_a.astype(object) * n_b - at_b.astype(object) * n_a
    return x, gap, n_a * n_b


def ks_distance(a: Histogram, b: Histogram) -> np.ndarray:
    """The Kolmogorov-Smirnov distance per band: the largest gap between the two empirical CDFs.

    The CDFs are evaluated on the union of the values where either histogram has pixels, read
    from :meth:`~rastermatch.Histogram.atoms` (levels; a float bin's smallest and largest
    value); the binnings may differ.

    Parameters
    ----------
    a, b
        Computed histograms with the same number of bands.

    Returns
    -------
    numpy.ndarray
        ``(band,)`` float64 in ``[0, 1]``; 0 for identical distributions.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import band_histograms
    >>> a = band_histograms(np.array([[0, 0, 1, 1]], dtype=np.uint8))
    >>> b = band_histograms(np.array([[0, 1, 1, 1]], dtype=np.uint8))
    >>> ks_distance(a, b).tolist()
    [0.25]
    >>> ks_distance(a, a).tolist()
    [0.0]
    """
    _check_pair(a, b)
    out = np.empty(a.nbands, dtype=np.float64)
    for i in range(a.nbands):
        _, gap, scale = _cdf_gaps(a, b, i)
        out[i] = int(np.max(np.abs(gap))) / scale  # int / int: correctly rounded
    return out


def wasserstein_distance(a: Histogram, b: Histogram) -> np.ndarray:
    """The Wasserstein-1 distance per band, in value units.

    ``integral |F_a(x) - F_b(x)| dx`` over the merged support of the
    :meth:`~rastermatch.Histogram.atoms`: the same number as
    ``scipy.stats.wasserstein_distance(values_a, values_b, u_weights=counts_a,
    v_weights=counts_b)`` on the atoms. It is the mean shift a pixel needs to turn one
    distribution into the other, so it reads in the units of the data (digital numbers,
    reflectance).

    Parameters
    ----------
    a, b
        Computed histograms with the same number of bands.

    Returns
    -------
    numpy.ndarray
        ``(band,)`` float64, non-negative; 0 for identical distributions.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import band_histograms
    >>> a = band_histograms(np.array([[0, 0, 1, 1]], dtype=np.uint8))
    >>> b = band_histograms(np.array([[2, 2, 3, 3]], dtype=np.uint8))
    >>> wasserstein_distance(a, b).tolist()
    [2.0]
    """
    _check_pair(a, b)
    out = np.empty(a.nbands, dtype=np.float64)
    for i in range(a.nbands):
        x, gap, scale = _cdf_gaps(a, b, i)
        # the CDFs are steps: the gap at x[k] holds until x[k + 1]
        width = np.diff(x)
        out[i] = float(np.dot(np.abs(gap[:-1]).astype(np.float64), width)) / scale
    return out


# -- the matched histogram, from the LUT ------------------------------------------------------


def _merge_atoms(values: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Increasing distinct finite values with their summed weights."""
    finite = np.isfinite(values) & (weights > 0)  # band_histograms never counts NaN or inf
    values, weights = values[finite], weights[finite]
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct, np.bincount(inverse.ravel(), weights=weights, minlength=distinct.size).astype(
        np.int64
    )


def matched_atoms(lut: LUT, band: int) -> tuple[np.ndarray, np.ndarray]:
    """The values a band of the matched source takes, with their pixel counts.

    Each occupied source bin is pushed through the LUT. A bin mapped to a single value (every
    level of a levels table, every float bin holding one distinct value, every collapsed bin)
    gives its exact output. A bin spread over an output interval gives the output of its
    smallest value for its ``nmin`` pixels and the output of its largest for the rest: exact
    when the bin holds at most two distinct values, else its pixels between the two are placed
    at the output of the largest. Values are in the LUT's dtype (integers rounded as
    :meth:`LUT.apply <rastermatch.LUT.apply>` rounds them), as float64.
    """
    src = lut.source_hist
    counts = src.counts[band]
    seen = np.flatnonzero(counts)
    if lut.kind == "table":
        values = lut.table[band, seen].astype(np.float64)
        return _merge_atoms(values, counts[seen])
    _, _, nmin = src.bin_stats()
    t = lut.table[band, seen]
    smin, smax, olo, ohi = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
    single = (olo == ohi) | (smin >= smax)
    first = np.where(single, counts[seen], nmin[band, seen])
    values = np.concatenate([olo, ohi])
    weights = np.concatenate([first, counts[seen] - first])
    return _merge_atoms(cast_values(values, lut.dtype).astype(np.float64), weights)


def matched_histogram(lut: LUT) -> Histogram:
    """The histogram of the matched source, computed from the LUT and its source histogram.

    Each source bin's count is pushed through the LUT onto its output values
    (:func:`matched_atoms`), so the quality of a match is known without reading the output
    pixels. Nodata pixels are left out, as they are from the source histogram. The distances of
    :func:`quality_table` use these atoms, not the bins: they equal the distances measured on
    the written values whenever every source bin maps to one value or holds at most two
    distinct values (always for integer sources of at most 16 bits and for quantised floats).

    The binning is the one :func:`~rastermatch.band_histograms` gives the output: one bin per
    level for integer outputs of at most 16 bits, else ``nbins`` equal bins (the reference
    histogram's ``nbins``) over the range of the outputs that occur, with their ``vmin``,
    ``vmax`` and ``nmin``. For table LUTs the counts equal ``band_histograms(lut.apply(source),
    nodata=lut.out_nodata, bins=nbins)`` exactly (pixels left out by a mask are left out here
    too).

    Parameters
    ----------
    lut
        A LUT that carries its source histogram (every fitted or saved LUT does).

    Returns
    -------
    Histogram
        Concrete, with the LUT's band labels.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import LUT, band_histograms
    >>> source = np.array([[10, 10, 20, 30]], dtype=np.uint8)
    >>> reference = np.array([[1, 5, 5, 9]], dtype=np.uint8)
    >>> lut = LUT.from_histograms(band_histograms(source), band_histograms(reference))
    >>> h = matched_histogram(lut)
    >>> h.counts[0, [1, 5, 9]].tolist()
    [2, 1, 1]
    >>> h.counts[0].tolist() == band_histograms(lut.apply(source)).counts[0].tolist()
    True
    """
    if lut.source_hist is None:
        raise RastermatchError(
            "this LUT carries no source histogram, so its output histogram is unknown; fit it "
            "with rastermatch.fit_lut or LUT.from_histograms, or histogram the matched data "
            "with rastermatch.band_histograms"
        )
    lut.source_hist._require_concrete()
    atoms = [matched_atoms(lut, b) for b in range(lut.nbands)]
    dtype = lut.dtype
    recorded = {"nodata": lut.out_nodata, "masked": lut.source_hist.masked}
    if dtype.kind in "iu" and dtype.itemsize <= EXACT_MAX_ITEMSIZE:
        binning = Binning.levels(dtype, lut.nbands)
        counts = np.zeros((lut.nbands, binning.nbins), dtype=np.int64)
        for b, (values, weights) in enumerate(atoms):
            np.add.at(counts[b], values.astype(np.int64) - binning.offset, weights)
        hist = Histogram(counts, binning, rows=lut.rows, **recorded)
    else:
        nbins = lut.reference_hist.binning.nbins if lut.reference_hist is not None else DEFAULT_BINS
        shape = (lut.nbands, nbins)
        lo, hi = np.zeros(lut.nbands), np.zeros(lut.nbands)
        counts = np.zeros(shape, dtype=np.int64)
        vmin, vmax, nmin = np.full(shape, np.inf), np.full(shape, -np.inf), np.zeros(shape, int)
        for b, (values, weights) in enumerate(atoms):
            if values.size == 0:
                continue
            lo[b], hi[b] = values[0], values[-1]
            k = uniform_bins(values, lo[b], hi[b], nbins)
            np.add.at(counts[b], k, weights)
            # atoms increase, so a bin's first atom is its smallest and its last its largest
            first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
            last = np.r_[first[1:] - 1, k.size - 1]
            vmin[b, k[first]], nmin[b, k[first]] = values[first], weights[first]
            vmax[b, k[last]] = values[last]
        binning = Binning("uniform", dtype, nbins, lo, hi)
        hist = Histogram(
            counts, binning, rows=lut.rows, vmin=vmin, vmax=vmax, nmin=nmin, **recorded
        )
    object.__setattr__(hist, "_atoms", tuple(atoms))
    return hist


# -- the before/after table -------------------------------------------------------------------


def quality_table(
    source_hist: Histogram, reference_hist: Histogram, matched_hist: Histogram
) -> list[dict[str, Any]]:
    """KS and Wasserstein-1 distances to the reference, before and after the match, per band.

    With ``matched_hist`` from :func:`matched_histogram` the "after" distances are those of the
    values the LUT writes, exactly whenever each source bin maps to one value or holds at most
    two distinct values, and each reference bin holds at most two (always for integers of at
    most 16 bits and for quantised floats); otherwise a bin's pixels between its smallest and
    largest value are placed at its largest.

    Parameters
    ----------
    source_hist, reference_hist, matched_hist
        Computed histograms with the same number of bands; ``matched_hist`` usually from
        :func:`matched_histogram`.

    Returns
    -------
    list of dict
        One row per row of the source (a band; a (date, band) pair of a stack) with keys
        ``band`` (the source's band label, None for a 2-D image), ``row`` (the row described
        for people: ``band 3``, ``time 2020-01-31, band 1``; ``""`` for a 2-D image), ``ks_before``,
        ``ks_after``, ``w1_before`` and ``w1_after`` (plain floats, ready for JSON). ``w1``
        values are in the reference's units; ``w1_before`` compares the source's raw values, so
        it mixes units when source and reference differ in scale (uint8 against uint16, say).

    Examples
    --------
    >>> import rioxarray, rastermatch
    >>> src = rioxarray.open_rasterio("data/arrnorm_target.tif")
    >>> ref = rioxarray.open_rasterio("data/arrnorm_ref_adjusted2target.tif")
    >>> lut = rastermatch.fit_lut(src, ref, nodata=0)
    >>> rows = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
    >>> sorted(rows[0])
    ['band', 'ks_after', 'ks_before', 'row', 'w1_after', 'w1_before']
    >>> rows[0]["band"], rows[0]["row"]
    (1, 'band 1')
    >>> rows[0]["ks_before"], rows[0]["ks_after"] < 0.01
    (1.0, True)
    """
    _check_pair(source_hist, reference_hist)
    _check_pair(matched_hist, reference_hist)
    ks_before = ks_distance(source_hist, reference_hist)
    ks_after = ks_distance(matched_hist, reference_hist)
    w1_before = wasserstein_distance(source_hist, reference_hist)
    w1_after = wasserstein_distance(matched_hist, reference_hist)
    rows = source_hist.rows
    return [
        {
            **_row_labels(rows, i),
            "ks_before": float(ks_before[i]),
            "ks_after": float(ks_after[i]),
            "w1_before": float(w1_before[i]),
            "w1_after": float(w1_after[i]),
        }
        for i in range(source_hist.nbands)
    ]


#: Keys of a quality row a row dim of the same name must not overwrite.
_ROW_KEYS = {"band", "row", "source", "mean_relative_deviation"}


def _row_labels(rows: Rows, index: int) -> dict[str, Any]:
    """A quality row's labels: ``band`` (None without one), the label of every other row dim
    under its name (a stack's ``time``, dates as ISO text; so a table can be filtered by date)
    and ``row``, the description for people."""
    labels: dict[str, Any] = {"band": _band_label(rows, index)}
    for dim, label in zip(rows.dims, rows.label(index), strict=True):
        if dim not in _ROW_KEYS and not dim.startswith(("ks_", "w1_", "stripe_")):
            labels[dim] = show_label(label) if isinstance(label, np.datetime64) else label
    labels["row"] = rows.describe(index)
    return labels


def _band_label(rows: Rows, index: int) -> Any:
    """The row's ``band`` label (a plain JSON value: dates as ISO text), or None without one."""
    if "band" not in rows.dims:
        return None
    label = rows.label(index)[rows.dims.index("band")]
    return show_label(label) if isinstance(label, np.datetime64) else label


def significant(value: float, digits: int = 4) -> str:
    """``value`` with about ``digits`` significant digits, without an exponent where sensible."""
    if not math.isfinite(value):
        return str(value)
    if value == 0 or not 1e-4 <= abs(value) < 1e9:
        return f"{value:.{digits - 1}g}" if value else "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def _percent(value: Any, digits: int = 3) -> str:
    """A fraction as a percentage (``0.987`` -> ``98.7 %``); ``-`` when unknown."""
    if value is None:
        return "-"
    return f"{significant(100 * float(value), digits)} %"


# the columns of the two kinds of quality rows: header, key, how the value is shown
_COLUMNS: dict[str, tuple[tuple[str, str, Any], ...]] = {
    "ks_before": (
        ("KS before", "ks_before", lambda v: f"{v:.4f}"),
        ("KS after", "ks_after", lambda v: f"{v:.4f}"),
        ("W1 before", "w1_before", significant),
        ("W1 after", "w1_after", significant),
    ),
    "stripe_power_before": (
        ("stripes before", "stripe_power_before", significant),
        ("stripes after", "stripe_power_after", significant),
        ("reduction", "stripe_reduction", lambda v: _percent(v, 4)),
        ("mean rel. dev.", "mean_relative_deviation", _percent),
    ),
}


def format_quality_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render quality rows as a fixed-width text table (for the command line).

    Rows of :func:`quality_table` give the KS and W1 columns, rows of
    :func:`destripe_quality` the stripe columns (stripe power before and after in squared data
    units, the reduction and the mean relative deviation in percent); rows of both kinds give
    both. Rows that carry a ``source`` (the file of a many-source job) get a first column naming
    it. Rows of one band dim show the band label; rows of other dims (a stack's dates) show the
    whole row description. A value a row lacks shows as ``-``.

    Examples
    --------
    >>> rows = [{"band": 1, "ks_before": 0.52, "ks_after": 0.0031,
    ...          "w1_before": 5317.25, "w1_after": 0.75}]
    >>> print(format_quality_table(rows))
    band  KS before  KS after  W1 before  W1 after
    ----  ---------  --------  ---------  --------
    1        0.5200    0.0031       5317    0.7500
    >>> rows = [{"source": "a_20200131.tif", "band": 2, "row": "band 2", "ks_before": 0.5,
    ...          "ks_after": 0.001, "w1_before": 12.0, "w1_after": 0.5}]
    >>> print(format_quality_table(rows))
    source          band  KS before  KS after  W1 before  W1 after
    --------------  ----  ---------  --------  ---------  --------
    a_20200131.tif  2        0.5000    0.0010      12.00    0.5000
    >>> rows = [{"band": 1, "row": "band 1", "stripe_power_before": 41.27,
    ...          "stripe_power_after": 0.0519, "stripe_reduction": 0.998742,
    ...          "mean_relative_deviation": 0.0412}]
    >>> print(format_quality_table(rows))
    band  stripes before  stripes after  reduction  mean rel. dev.
    ----  --------------  -------------  ---------  --------------
    1              41.27        0.05190    99.87 %          4.12 %
    """
    with_source = any("source" in r for r in rows)
    by_band = all(_band_only(r) for r in rows)
    columns = [c for kind, cs in _COLUMNS.items() if any(kind in r for r in rows) for c in cs]
    if not columns:
        columns = list(_COLUMNS["ks_before"])
    header = (
        *(("source",) if with_source else ()),
        "band" if by_band else "row",
        *(c[0] for c in columns),
    )
    body = [
        (
            *((str(r.get("source", "")),) if with_source else ()),
            _band_text(r) if by_band else str(r.get("row") or "-"),
            *("-" if r.get(key) is None else show(r[key]) for _, key, show in columns),
        )
        for r in rows
    ]
    labels = 2 if with_source else 1  # the label columns, left-aligned
    widths = [max(len(cell) for cell in column) for column in zip(header, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < labels else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = ["-" * w for w in widths]
    return "\n".join(line(cells).rstrip() for cells in [header, rule, *body])


def _band_only(row: dict[str, Any]) -> bool:
    """Whether a quality row is told apart by its band label alone (no other row dims)."""
    described = row.get("row")
    if described is None or described == "":
        return True
    return row.get("band") is not None and "," not in described


def _band_text(row: dict[str, Any]) -> str:
    band = row.get("band")
    return "-" if band is None else str(band)


# -- stripes: the mean profile along the detector axis and its stripe power ------------------

#: The one-per-position measure compares each position with this many neighbours on each side.
NEIGHBOURS = 4
# positions per slice of the neighbour medians (bounds their memory on very long profiles)
_MEDIAN_SLICE = 2**16


def detector_profile(
    data: Any,
    *,
    axis: Axis = "y",
    nodata: float | int | None = None,
    mask: Any = None,
    channel_axis: int | None = None,
) -> np.ndarray | da.Array:
    """The mean of every line (``axis="y"``) or column (``axis="x"``): the detector-axis profile.

    Detector stripes are differences between the mean responses of the detectors, so they show
    in this profile as a pattern that repeats with the detectors (a sawtooth with the period of
    a whisk-broom sweep, a jagged line for push-broom columns). Each mean is over the valid
    pixels of its line or column only: nodata, NaN, infinities and masked pixels are left out,
    so where they are does not change the profile; a line without valid pixels gets NaN.

    Parameters
    ----------
    data
        Anything :func:`~rastermatch._data.as_band_array` takes: numpy or dask arrays
        (``(y, x)``, ``(band, y, x)``, ``(..., band, y, x)``), DataArrays, Datasets, stacks.
    axis
        ``"y"``: one mean per line (detectors along the lines, a whisk-broom scanner); ``"x"``:
        one mean per column (a push-broom sensor in sensor geometry).
    nodata
        Overrides the nodata value found on a DataArray.
    mask
        Boolean, True = leave the pixel out (as :func:`~rastermatch.match_histograms` takes it).
    channel_axis
        numpy/dask only: the axis of the bands (``-1`` for ``(y, x, c)``).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        ``(row, n)`` float64, ``n`` the number of lines (or columns); rows as
        :func:`~rastermatch._data.as_band_array` flattens them (bands; ``(time, band)`` pairs of
        a stack in C order; one row for a 2-D image). Lazy (dask) for dask input: nothing is
        read until it is computed.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.array([[1, 3], [10, 0], [5, 7]], dtype=np.uint8)
    >>> detector_profile(image, nodata=0).tolist()
    [[2.0, 10.0, 6.0]]
    >>> detector_profile(image, axis="x", nodata=0).tolist()
    [[5.333333333333333, 5.0]]
    """
    if axis not in ("y", "x"):
        raise OptionError(f"axis must be 'y' (a mean per line) or 'x' (per column), not {axis!r}")
    src = as_band_array(data, nodata=nodata, name="data", channel_axis=channel_axis)
    m = None if mask is None else as_band_mask(mask, src)
    stats = _line_stats(as_dask(src), None, _dask_mask(m, src), nodata=src.nodata,
                        out_nodata=None, axis=axis)  # fmt: skip
    profile = _means(stats, 0)
    if src.is_dask:
        return profile
    (out,) = dask.compute(profile, scheduler="threads")
    return np.asarray(out)


def _dask_mask(mask: Any, src: BandArray) -> da.Array | None:
    """A normalized mask as dask, chunked like the data (as :func:`as_dask` cuts numpy)."""
    if mask is None:
        return None
    chunks = as_dask(src).chunks
    if isinstance(mask, np.ndarray):
        rows = (1,) if mask.shape[0] == 1 else chunks[0]
        return da.from_array(mask, chunks=(rows, *chunks[1:]), name=False)
    return mask


# the per-line statistics of one pass, in this order along the last axis
_FIELDS = 6  # sum before, count before, sum after, count after, deviation sum, count both


@numba.njit(cache=True, nogil=True)
def _line_stats_kernel(
    before, after, mask, has_mask, has_after, nd_b, has_nd_b, nd_a, has_nd_a, along_y, out
):  # pragma: no cover - compiled
    """Add every valid pixel of a ``(row, y, x)`` block to its line's (or column's) statistics
    ``out[row, k]``: sum and count of the valid pixels before, the same after, and the sum of
    ``|after - before| / max(|before|, 1)`` over the pixels valid on both sides with their
    count. Valid: finite, not the nodata value, not masked."""
    nrows, ny, nx = before.shape
    for r in range(nrows):
        m = r if mask.shape[0] > 1 else 0
        for i in range(ny):
            for j in range(nx):
                if has_mask and mask[m, i, j]:
                    continue
                k = i if along_y else j
                vb = before[r, i, j]
                fb = float(vb)
                ok_b = fb - fb == 0.0 and not (has_nd_b and vb == nd_b)  # finite, not nodata
                if ok_b:
                    out[r, k, 0] += fb
                    out[r, k, 1] += 1.0
                if not has_after:
                    continue
                va = after[r, i, j]
                fa = float(va)
                if fa - fa == 0.0 and not (has_nd_a and va == nd_a):
                    out[r, k, 2] += fa
                    out[r, k, 3] += 1.0
                    if ok_b:
                        out[r, k, 4] += abs(fa - fb) / max(abs(fb), 1.0)
                        out[r, k, 5] += 1.0


def _line_stats_block(
    before: np.ndarray, *rest: np.ndarray, has_after: bool, nodata: Any, out_nodata: Any,
    axis: Axis,
) -> np.ndarray:  # fmt: skip
    """One block's line statistics (``rest``: the after block if ``has_after``, then the mask
    block if any): ``(row, y, 1, 6)`` for ``axis="y"``, ``(row, 1, x, 6)`` for ``"x"`` (the
    other axis is summed across blocks afterwards)."""
    after = rest[0] if has_after else before
    has_mask = len(rest) > has_after
    mask = rest[-1] if has_mask else np.zeros((1, 1, 1), dtype=np.bool_)
    along_y = axis == "y"
    out = np.zeros((before.shape[0], before.shape[1 if along_y else 2], _FIELDS))
    nd_b, has_nd_b = kernel_nodata(before, nodata)
    nd_a, has_nd_a = kernel_nodata(after, out_nodata)
    _line_stats_kernel(
        before, after, mask, has_mask, has_after, nd_b, has_nd_b, nd_a, has_nd_a, along_y, out
    )
    return out[:, :, None] if along_y else out[:, None]


def _line_stats(
    before: da.Array,
    after: da.Array | None,
    mask: da.Array | None,
    *,
    nodata: Any,
    out_nodata: Any,
    axis: Axis,
) -> da.Array:
    """Lazily, ``(row, n, 6)``: the line (or column) statistics of :func:`_line_stats_kernel`
    over the whole image, one compiled pass over the blocks of both inputs, then a sum across
    the blocks of the other axis."""
    rows, ys, xs = before.chunks
    args = [before]
    if after is not None:
        args.append(after if after.chunks == before.chunks else after.rechunk(before.chunks))
    if mask is not None:
        want = ((1,) if mask.shape[0] == 1 else rows, ys, xs)
        args.append(mask if mask.chunks == want else mask.rechunk(want))
    if axis == "y":
        chunks = (rows, ys, (1,) * len(xs), (_FIELDS,))
    else:
        chunks = (rows, (1,) * len(ys), xs, (_FIELDS,))
    per_block = da.map_blocks(
        _line_stats_block,
        *args,
        has_after=after is not None,
        nodata=nodata,
        out_nodata=out_nodata,
        axis=axis,
        chunks=chunks,
        new_axis=3,
        dtype=np.float64,
        meta=np.empty((0, 0, 0, 0), np.float64),
        name="rastermatch-line-stats-" + tokenize(*args, nodata, out_nodata, axis),
    )
    return per_block.sum(axis=2 if axis == "y" else 1)


def _means(stats: Any, field: int) -> Any:
    """Sums over counts, NaN where nothing was counted (numpy or dask)."""
    where = da.where if isinstance(stats, da.Array) else np.where
    sums, counts = stats[..., field], stats[..., field + 1]
    return where(counts > 0, sums / (counts + (counts == 0)), np.nan)


def _as_layout(detectors: Any, axis: Axis | None, offset: int) -> Detectors:
    """The user's ``detectors`` argument as a :class:`Detectors`; its own axis wins."""
    if isinstance(detectors, Detectors):
        if axis is not None and axis != detectors.axis:
            raise OptionError(
                f"axis={axis!r} but the detector layout is along {detectors.axis!r}; pass one "
                "of them (the layout's axis is used when axis is not given)"
            )
        return detectors
    return Detectors.of(detectors, axis="y" if axis is None else axis, offset=offset)


def stripe_period(detectors: Any, size: int) -> int | None:
    """The period (in lines or columns) over which :func:`stripe_power` folds a profile of
    ``size`` positions, or None when it measures against neighbours instead.

    A detector count ``n`` is its own period; labels per position are periodic when they repeat
    with a period ``p`` (the smallest one). Either is used only when the profile holds at least
    two whole periods (``2 p <= size``).

    Examples
    --------
    >>> stripe_period(16, 352), stripe_period(16, 20), stripe_period(None, 352)
    (16, None, None)
    >>> stripe_period(["a", "a", "b"] * 4, 12)
    3
    """
    layout = _as_layout(detectors, None, 0)
    if layout.count is not None:
        return layout.count if 2 * layout.count <= size else None
    if layout.labels is None:
        return None
    index, _ = layout.resolve(size, "the profile")
    for p in np.flatnonzero(index == index[0])[1:]:
        p = int(p)
        if 2 * p > size:
            break
        head = min(64, size - p)  # most candidates fail on the first few positions
        if np.array_equal(index[p : p + head], index[:head]) and np.array_equal(
            index[p:], index[:-p]
        ):
            return p
    return None


def stripe_power(
    profile: Any,
    *,
    detectors: Detectors | int | Sequence[Any] | None,
    per_harmonic: bool = False,
) -> np.ndarray:
    """The power of the detector stripes in a profile from :func:`detector_profile`.

    **Periodic layouts** (``n`` detectors, or labels that repeat with a period ``n``; the profile
    holding at least two periods): the power spectrum of the profile at the detector frequency
    and its harmonics, ``k / n`` cycles per line for ``k = 1 .. n // 2``. The profile ``x`` is
    folded into its ``n`` detector means ``m_d`` (the mean of ``x`` over the positions of
    detector ``d``; positions without a value are skipped, a detector without any counts as
    the mean), and with ``c_k = (1/n) sum_d (m_d - mean(m)) exp(-2 pi i k d / n)`` the power at
    ``k / n`` is the one-sided ``P_k = 2 |c_k|^2`` (``|c_k|^2`` at ``k = n / 2``). For a profile
    whose length is a multiple of ``n`` this is exactly the one-sided periodogram of the whole
    profile, ``2 |X(f)|^2`` with ``X(f) = (1/L) sum_i x_i exp(-2 pi i f i)``, at ``f = k / n``.
    The units are the data's, squared: a stripe ``A cos(2 pi i / n)`` has power ``A^2 / 2``, and
    by Parseval the total ``sum_k P_k`` is the variance of the detector means, ``(1/n) sum_d
    (m_d - mean(m))^2``. Chen et al. (2003, *Destriping CMODIS data by power filtering*, IEEE
    TGRS 41(9)) measure destriping by the noise reduction ratio ``NR = N_before / N_after`` of
    this power; :func:`destripe_quality`'s ``stripe_reduction`` is ``1 - 1 / NR``.

    **One detector per position** (push-broom columns), **labels that do not repeat**, and
    periodic layouts with fewer than two periods in the profile: there is no detector frequency,
    so the power is the mean square of the profile minus the median of its neighbours,
    ``mean_i (x_i - median(x_{i-4}, ..., x_{i-1}, x_{i+1}, ..., x_{i+4}))^2``, over the
    positions that have a value and a neighbour (NaN neighbours skipped; the profile mirrored
    at its ends, ``x_{-j} = x_j``, so an end position has neighbours on both sides).
    The median follows the scene, which changes slowly from one position to the next, and not
    a single detector's offset; it leaves the centre out because a median that includes it
    reproduces an alternating (odd/even detector) pattern exactly and would report it as no
    stripe. A stripe ``+-A`` alternating by position has power ``A^2``, a flat profile 0.

    Parameters
    ----------
    profile
        ``(..., n)`` computed profile(s) (numpy): the last axis runs along the detector axis;
        NaN marks a position without valid pixels.
    detectors
        The layout: a count, None (one detector per position), one label per position, or a
        :class:`~rastermatch._detectors.Detectors` (its offset only shifts the phase, not the
        power).
    per_harmonic
        Periodic layouts only: return the power at each ``k / n`` instead of their sum.

    Returns
    -------
    numpy.ndarray
        float64, shape ``profile.shape[:-1]`` (with ``(n // 2,)`` appended for
        ``per_harmonic``); NaN for a profile without any value.

    Examples
    --------
    A sinusoid of amplitude 3 at the detector frequency of 8 detectors has power 3**2 / 2:

    >>> import numpy as np
    >>> lines = np.arange(64)
    >>> float(stripe_power(3 * np.cos(2 * np.pi * lines / 8), detectors=8)).__round__(12)
    4.5
    >>> stripe_power(np.full(64, 7.0), detectors=8).tolist()
    0.0
    >>> stripe_power(100 + 2 * (-1.0) ** lines, detectors=None).tolist()  # odd/even columns
    4.0

    The bundled Landsat 7 scene with 16 injected detector responses, against the clean one:

    >>> import rioxarray
    >>> striped = rioxarray.open_rasterio("data/striped_L7_ETMs.tif")
    >>> clean = rioxarray.open_rasterio("data/stars_L7_ETMs.tif")
    >>> p = stripe_power(detector_profile(striped), detectors=16)
    >>> q = stripe_power(detector_profile(clean), detectors=16)
    >>> bool((p > 20 * q).all())
    True
    """
    if isinstance(profile, da.Array):
        raise InputTypeError(
            "stripe_power takes a computed profile; compute the dask profile first "
            "(profile, = dask.compute(detector_profile(data)))"
        )
    try:
        x = np.asarray(profile, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputTypeError(
            f"the profile is a {type(profile).__name__} that is not numeric; pass the array "
            "detector_profile gives"
        ) from None
    if x.ndim == 0 or x.shape[-1] == 0:
        raise DimensionError(
            f"the profile has shape {x.shape}; pass one value per line or column (the last axis)"
        )
    size = x.shape[-1]
    flat = x.reshape(-1, size)
    layout = _as_layout(detectors, None, 0)
    period = stripe_period(layout, size)
    if period is None:
        if per_harmonic:
            raise OptionError(
                f"per_harmonic needs a periodic detector layout with two or more periods in the "
                f"profile; {layout.describe()} over {size} positions has none"
            )
        power = _neighbour_power(flat)
        return power.reshape(x.shape[:-1])
    harmonics = _harmonic_power(flat, period)
    if per_harmonic:
        return harmonics.reshape((*x.shape[:-1], period // 2))
    total = harmonics.sum(axis=1)
    total[~np.isfinite(flat).any(axis=1)] = np.nan
    return total.reshape(x.shape[:-1])


def _shifted(flat: np.ndarray) -> np.ndarray:
    """Every row minus its first finite value: a flat row becomes exact zeros, so its power is
    exactly 0 (means of equal floats need not give that value back)."""
    finite = np.isfinite(flat)
    first = np.where(finite.any(axis=1), flat[np.arange(flat.shape[0]), finite.argmax(axis=1)], 0)
    return flat - first[:, None]


def _harmonic_power(flat: np.ndarray, n: int) -> np.ndarray:
    """``(row, n // 2)``: the one-sided power of the folded detector means at ``k / n``."""
    x = _shifted(flat)
    rows, size = x.shape
    position = np.arange(size) % n
    means = np.full((rows, n), np.nan)
    for r in range(rows):
        ok = np.isfinite(x[r])
        sums = np.bincount(position[ok], weights=x[r, ok], minlength=n)
        counts = np.bincount(position[ok], minlength=n)
        np.divide(sums, counts, out=means[r], where=counts > 0)
    present = np.isfinite(means)
    center = np.zeros(rows)
    for r in range(rows):
        if present[r].any():
            center[r] = means[r, present[r]].mean()
    deviation = np.where(present, means - center[:, None], 0.0)
    power = np.abs(np.fft.rfft(deviation, axis=1) / n) ** 2
    power[:, 1:] *= 2
    if n % 2 == 0:
        power[:, n // 2] /= 2  # the Nyquist term has no mirror image
    return power[:, 1 : n // 2 + 1]


def _neighbour_power(flat: np.ndarray) -> np.ndarray:
    """``(row,)``: the mean square of each position minus the median of its neighbours."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = _shifted(flat)
    rows, size = x.shape
    k = NEIGHBOURS
    # mirrored at the ends (x[-j] = x[j]), so that an end position has neighbours on both sides
    padded = np.pad(x, ((0, 0), (k, k)), mode="reflect") if size > 1 else np.repeat(x, 2 * k + 1, 1)
    sq = np.zeros(rows)
    counted = np.zeros(rows, dtype=np.int64)
    for start in range(0, size, _MEDIAN_SLICE):
        stop = min(start + _MEDIAN_SLICE, size)
        window = sliding_window_view(padded[:, start : stop + 2 * k], 2 * k + 1, axis=1)
        around = np.concatenate([window[..., :k], window[..., k + 1 :]], axis=-1)
        with warnings.catch_warnings():  # a position without neighbours: NaN, skipped below
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(around, axis=-1)
        residual = x[:, start:stop] - median
        ok = np.isfinite(residual)
        sq += np.where(ok, residual, 0.0).__pow__(2).sum(axis=1)
        counted += ok.sum(axis=1)
    power = np.divide(sq, counted, out=np.zeros(rows), where=counted > 0)
    power[~np.isfinite(flat).any(axis=1)] = np.nan
    return power


# -- the before/after destriping table ---------------------------------------------------------


@dataclass(frozen=True, eq=False)
class DestripePass:
    """The statistics of a destriping, built lazily: profiles and deviations of both inputs.

    :func:`destripe_pass` builds it; ``dask.compute(*p.lazy, ..., scheduler=p.scheduler)``
    computes it together with anything else the caller reads (the report's crops; a job's
    ``dask.array.store`` of the output with ``compute=False``, so that writing the output and
    measuring it read the input once); :meth:`rows` and :meth:`profiles` read the computed
    values (the first ``len(p.lazy)`` results).

    Examples
    --------
    >>> import dask, numpy as np
    >>> before = np.repeat(np.arange(8.0) % 2 * 4, 5).reshape(8, 5)  # odd lines 4 brighter
    >>> p = destripe_pass(before, np.full((8, 5), 2.0), 2)
    >>> computed = dask.compute(*p.lazy, scheduler=p.scheduler)
    >>> p.profiles(computed)[0].tolist()
    [[0.0, 4.0, 0.0, 4.0, 0.0, 4.0, 0.0, 4.0]]
    >>> p.rows(computed)[0]["stripe_power_before"], p.rows(computed)[0]["stripe_reduction"]
    (4.0, 1.0)
    """

    before: BandArray
    after: BandArray
    layout: Detectors
    mask: da.Array | None
    lazy: tuple[da.Array, ...]
    scheduler: str | None

    @property
    def size(self) -> int:
        """Lines (or columns) along the detector axis."""
        return int(self.before.array.shape[1 if self.layout.axis == "y" else 2])

    def profiles(self, computed: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """The ``(row, n)`` mean profiles before and after (NaN: no valid pixel)."""
        stats = np.asarray(computed[0])
        return _means(stats, 0), _means(stats, 2)

    def rows(self, computed: Sequence[Any]) -> list[dict[str, Any]]:
        """The quality rows (see :func:`destripe_quality`) from the computed :attr:`lazy`."""
        before, after = self.profiles(computed)
        totals = np.asarray(computed[0]).sum(axis=1)  # (row, 6)
        dev_sum, dev_count = totals[:, 4], totals[:, 5]
        for r in range(before.shape[0]):
            if totals[r, 1] == 0:
                raise self.before.no_valid_pixels(r)
            if dev_count[r] == 0:
                where = self.before.rows.describe(r)
                raise NoValidPixelsError(
                    f"{where + ' of ' if where else ''}{self.after.name} has no valid pixel "
                    f"where {self.before.name} has one (all nodata, NaN or masked); pass the "
                    "balanced output of this input, with its nodata value (out_nodata=)"
                )
        power_b = stripe_power(before, detectors=self.layout)
        power_a = stripe_power(after, detectors=self.layout)
        rows = self.before.rows
        return [
            {
                **_row_labels(rows, r),
                "stripe_power_before": float(power_b[r]),
                "stripe_power_after": float(power_a[r]),
                "stripe_reduction": _reduction(float(power_b[r]), float(power_a[r])),
                "mean_relative_deviation": float(dev_sum[r] / dev_count[r]),
            }
            for r in range(before.shape[0])
        ]


def _reduction(before: float, after: float) -> float | None:
    """``1 - after / before``; 0 when there were no stripes and are none; None (undefined) when
    stripes appear where there were none."""
    if before > 0:
        return 1.0 - after / before
    return 0.0 if after == 0 else None


def _named(data: Any, name: str) -> str:
    source = getattr(data, "encoding", {}).get("source") if hasattr(data, "encoding") else None
    return f"{name} ({source})" if source else name


def destripe_pass(
    before: Any,
    after: Any,
    detectors: Any,
    *,
    axis: Axis | None = None,
    offset: int = 0,
    nodata: float | int | None = None,
    out_nodata: float | int | None = None,
    mask: Any = None,
    channel_axis: int | None = None,
) -> DestripePass:
    """The lazy statistics of :func:`destripe_quality` (arguments as there), not yet computed."""
    layout = _as_layout(detectors, axis, offset)
    src = as_band_array(before, nodata=nodata, name=_named(before, "before"),
                        channel_axis=channel_axis)  # fmt: skip
    out = as_band_array(after, nodata=out_nodata, name=_named(after, "after"),
                        channel_axis=channel_axis)  # fmt: skip
    if out.nodata is None and src.nodata is not None and nodata_fits(src.nodata, out.dtype):
        out = replace(out, nodata=src.nodata)  # balancing keeps the input's nodata
    if src.array.shape != out.array.shape:
        raise GridMismatchError(
            f"{src.name} is {src.array.shape} (row, y, x) and {out.name} is {out.array.shape}; "
            "pass the balanced output of this very input (same bands, lines and columns)"
        )
    if src.template is not None and out.template is not None and not src.rows.same_as(out.rows):
        raise BandMismatchError(
            f"{src.name} has rows {src.rows} {src.rows.labels()} and {out.name} "
            f"{out.rows} {out.rows.labels()}; pass the balanced output of this input"
        )
    size = src.array.shape[1 if layout.axis == "y" else 2]
    layout.resolve(size, src.name)  # a labelled layout must fit the image
    m = None if mask is None else _dask_mask(as_band_mask(mask, src), src)
    stats = _line_stats(as_dask(src), as_dask(out), m, nodata=src.nodata,
                        out_nodata=out.nodata, axis=layout.axis)  # fmt: skip
    lazy = (stats,)
    scheduler = None if (src.is_dask or out.is_dask) else "threads"
    return DestripePass(src, out, layout, m, lazy, scheduler)


def destripe_quality(
    before: Any,
    after: Any,
    detectors: Any,
    *,
    axis: Axis | None = None,
    offset: int = 0,
    nodata: float | int | None = None,
    out_nodata: float | int | None = None,
    mask: Any = None,
    channel_axis: int | None = None,
) -> list[dict[str, Any]]:
    """How much a detector balancing removed the stripes, and how much it moved the data.

    Both inputs are read once, together (one ``dask.compute`` for dask input; local threads for
    numpy), for their mean profiles along the detector axis (:func:`detector_profile`) and the
    deviation of the output from the input.

    Parameters
    ----------
    before, after
        The input and its balanced output (:func:`rastermatch.balance_detectors`), of any kind
        :func:`~rastermatch._data.as_band_array` takes, with the same rows and grid.
    detectors
        The detector layout: a count, None (one per column), labels per line or column, or a
        :class:`~rastermatch._detectors.Detectors` (which brings its axis and offset).
    axis, offset
        Where the detectors run (``"y"``: along the lines, the default) and the detector of the
        first line, for a count.
    nodata
        The input's nodata (overrides the DataArray's).
    out_nodata
        The output's nodata; default: its own, else the input's (balancing keeps it).
    mask
        Boolean, True = leave the pixel out of every statistic.
    channel_axis
        numpy/dask only: the axis of the bands.

    Returns
    -------
    list of dict
        One row per row of the input with ``band`` and ``row`` (as :func:`quality_table` gives
        them), ``stripe_power_before`` and ``stripe_power_after`` (:func:`stripe_power` of the
        profiles, in squared data units), ``stripe_reduction`` (``1 - after / before``: 1 when
        every stripe is gone; 0 when there were none and are none, None when stripes appear
        where there were none) and ``mean_relative_deviation`` (the mean over the pixels valid
        on both sides of ``|after - before| / max(|before|, 1)``: how far good data moved).
        Plain floats, ready for JSON and :func:`format_quality_table`.

    Examples
    --------
    >>> import numpy as np
    >>> scene = np.tile(np.arange(50.0, 90.0), (32, 1))  # columns vary, lines alike
    >>> striped = scene + np.where(np.arange(32) % 4 == 1, 8.0, 0.0)[:, None]
    >>> row, = destripe_quality(striped, scene, 4)
    >>> row["stripe_power_before"], row["stripe_power_after"], row["stripe_reduction"]
    (12.0, 0.0, 1.0)
    >>> round(row["mean_relative_deviation"], 4)
    0.0264
    """
    p = destripe_pass(before, after, detectors, axis=axis, offset=offset, nodata=nodata,
                      out_nodata=out_nodata, mask=mask, channel_axis=channel_axis)  # fmt: skip
    computed = dask.compute(*p.lazy, scheduler=p.scheduler)
    return p.rows(computed)
