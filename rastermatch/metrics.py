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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._rows import Rows, show_label
from ._values import EXACT_MAX_ITEMSIZE, cast_values, uniform_bins
from .errors import BandMismatchError, InputTypeError, NoValidPixelsError, RastermatchError
from .histogram import DEFAULT_BINS, Binning, Histogram
from .lut import LUT

__all__ = [
    "format_quality_table",
    "ks_distance",
    "matched_histogram",
    "quality_table",
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
            "band": _band_label(rows, i),
            "row": rows.describe(i),
            "ks_before": float(ks_before[i]),
            "ks_after": float(ks_after[i]),
            "w1_before": float(w1_before[i]),
            "w1_after": float(w1_after[i]),
        }
        for i in range(source_hist.nbands)
    ]


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


def format_quality_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render :func:`quality_table` rows as a fixed-width text table (for the command line).

    Rows that carry a ``source`` (the file of a many-source job) get a first column naming it.
    Rows of one band dim show the band label; rows of other dims (a stack's dates) show the
    whole row description.

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
    """
    with_source = any("source" in r for r in rows)
    by_band = all(_band_only(r) for r in rows)
    header = (
        *(("source",) if with_source else ()),
        "band" if by_band else "row",
        "KS before",
        "KS after",
        "W1 before",
        "W1 after",
    )
    body = [
        (
            *((str(r.get("source", "")),) if with_source else ()),
            _band_text(r) if by_band else str(r.get("row") or "-"),
            f"{r['ks_before']:.4f}",
            f"{r['ks_after']:.4f}",
            significant(r["w1_before"]),
            significant(r["w1_after"]),
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
