"""From histograms to lookup tables: exact nearest-CDF matching and its interpolating variant.

Step two of the data flow; small numpy arrays only, no dask.

The rule (the classic histogram-specification Algorithm 1): for every source level ``p`` the
output level is

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._data import python_scalar
from .errors import BandMismatchError, NoValidPixelsError, RastermatchError
from .histogram import Binning, Histogram

__all__ = ["LUT", "Levels", "Method", "interp_lut_values", "nearest_cdf_indices"]

Method = Literal["nearest", "interp"]
Levels = Literal["present", "all"]
_METHODS = ("nearest", "interp")
_LEVELS = ("present", "all")


def _check_option(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def nearest_cdf_indices(
    source_counts: np.ndarray, reference_counts: np.ndarray, *, levels: Levels = "present"
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

    Examples
    --------
    >>> nearest_cdf_indices(np.array([8, 2]), np.array([7, 2, 1]), levels="all").tolist()
    [0, 2]
    >>> nearest_cdf_indices(np.array([1, 1]), np.array([1, 0, 0, 1])).tolist()
    [0, 3]
    """
    cs = np.cumsum(source_counts, dtype=np.int64)
    cr = np.cumsum(reference_counts, dtype=np.int64)
    n_src, n_ref = int(cs[-1]), int(cr[-1])
    if n_src == 0 or n_ref == 0:
        raise NoValidPixelsError("both histograms need at least one pixel")
    candidates = np.flatnonzero(reference_counts) if levels == "present" else np.arange(cr.size)
    g = math.gcd(n_src, n_ref)
    m_src, m_ref = n_src // g, n_ref // g
    # 1. scale to integers; every product below is at most n_src * n_ref / g, and two of them are
    # added in step 3, so int64 is exact while 2 * n_src * n_ref / g < 2**63.
    if 2 * n_src * m_ref < 2**63:
        a = cr[candidates] * m_src
        t = cs * m_ref
    else:
        a = cr[candidates].astype(object) * m_src
        t = cs.astype(object) * m_ref
    # 2. the first candidate k with a[k] >= t, for every source bin at once
    k = np.searchsorted(a, t, side="left")
    upper = np.minimum(k, a.size - 1)
    below = a[np.maximum(k - 1, 0)]
    lower = np.searchsorted(a, below, side="left")  # the first of equal CDF values
    # 3. exact comparison of |a[upper] - t| with |t - below|; the lower one wins ties
    take_upper = (k == 0) | ((k < a.size) & ((a[upper] - t) < (t - below)))
    return candidates[np.where(take_upper, upper, lower)]


def interp_lut_values(
    source_counts: np.ndarray, reference_counts: np.ndarray, reference_values: np.ndarray
) -> np.ndarray:
    """scikit-image's mapping: source quantiles interpolated into the reference's present levels.

    For every source bin ``p`` the value ``interp(c_src(p) / N_src, c_ref(q) / N_ref, value(q))``
    over the reference bins ``q`` that hold pixels, in the same float64 operations as
    ``skimage.exposure.match_histograms``.
    """
    present = np.flatnonzero(reference_counts)
    src_q = np.cumsum(source_counts) / int(np.sum(source_counts))
    ref_q = np.cumsum(reference_counts[present]) / int(np.sum(reference_counts))
    return np.interp(src_q, ref_q, reference_values[present])


def cast_values(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values in ``dtype``: integers rounded to nearest (half to even) and clipped to its range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return np.asarray(values).astype(dtype)


@dataclass(frozen=True, eq=False)
class LUT:
    """Per-band lookup tables from source values to output values.

    Build one with :meth:`from_histograms` (or through :func:`rastermatch.match_histograms`,
    :func:`rastermatch.equalize`); apply it lazily with :meth:`apply`; keep it with :meth:`save`.

    Attributes
    ----------
    table
        ``kind="table"``: ``(band, nbins)`` output values, one per source bin, in ``dtype``.
        ``kind="piecewise"``: ``(band, nbins + 1)`` float64 output values at the source bin
        edges, interpolated linearly in between (continuous data with ``method="interp"``).
    source_binning
        How source values find their bin.
    dtype
        The output dtype.
    method, levels
        How the table was built.
    bands
        Band labels (of the source).
    source_hist, reference_hist
        The histograms the table was built from, kept for audit and for the quality metrics.
    nodata, out_nodata
        Source nodata at fit time and the output nodata (pixels equal to ``nodata`` become
        ``out_nodata``; NaN and infinities count as nodata too).

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
    """

    table: np.ndarray
    source_binning: Binning
    dtype: np.dtype
    method: Method = "nearest"
    levels: Levels = "present"
    bands: tuple[Hashable, ...] = ()
    source_hist: Histogram | None = field(default=None, repr=False)
    reference_hist: Histogram | None = field(default=None, repr=False)
    nodata: float | int | None = None
    out_nodata: float | int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        _check_option("method", self.method, _METHODS)
        _check_option("levels", self.levels, _LEVELS)
        b = self.source_binning
        if b.is_lazy:
            raise RastermatchError("a LUT needs a computed source binning")
        if self.table.ndim != 2 or self.table.shape[1] not in (b.nbins, b.nbins + 1):
            raise ValueError(f"table shape {self.table.shape} does not fit {b!r}")
        if self.table.shape[0] != b.nbands:
            raise BandMismatchError(f"table has {self.table.shape[0]} bands, binning {b.nbands}")
        if not self.bands:
            object.__setattr__(self, "bands", tuple(range(1, self.table.shape[0] + 1)))
        object.__setattr__(self, "nodata", python_scalar(self.nodata))
        object.__setattr__(self, "out_nodata", python_scalar(self.out_nodata))

    @property
    def kind(self) -> Literal["table", "piecewise"]:
        """``"piecewise"`` when values are interpolated between bin edges, else ``"table"``."""
        return "piecewise" if self.table.shape[1] == self.source_binning.nbins + 1 else "table"

    @property
    def nbands(self) -> int:
        return int(self.table.shape[0])

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
    ) -> LUT:
        """The LUT that maps the source's distribution onto the reference's.

        Parameters
        ----------
        source_hist, reference_hist
            Computed histograms with the same number of bands (their binnings may differ).
        method
            ``"nearest"``: the nearest-CDF rule with ties to the smallest level, exact.
            ``"interp"``: scikit-image's piecewise-linear inverse-CDF mapping; integer outputs
            are rounded to nearest.
        levels
            ``"present"`` (default): outputs are levels (or bin centres) that occur in the
            reference, so no pixel is mapped onto a level the reference does not have, nodata
            included. ``"all"``: any level of the reference's value range (``method="nearest"``).
        dtype
            Output dtype; default the reference's.
        nodata, out_nodata
            Recorded for :meth:`apply`: source pixels equal to ``nodata`` become ``out_nodata``.
        """
        _check_option("method", method, _METHODS)
        _check_option("levels", levels, _LEVELS)
        for h in (source_hist, reference_hist):
            if h.is_lazy:
                raise RastermatchError(
                    "the histograms are lazy; compute them together first: "
                    "h_src, h_ref = dask.compute(h_src, h_ref)"
                )
        if source_hist.nbands != reference_hist.nbands:
            raise BandMismatchError(
                f"the source has {source_hist.nbands} bands and the reference "
                f"{reference_hist.nbands}; select matching bands (--bands / --reference-bands)"
            )
        for hist, what in ((source_hist, "source"), (reference_hist, "reference")):
            for label, total in zip(hist.bands, hist.total, strict=True):
                if total == 0:
                    raise NoValidPixelsError(
                        f"band {label!r} of the {what} has no valid pixels (all nodata, NaN or "
                        "masked); check the nodata value and the mask, or drop the band"
                    )
        out_dtype = np.dtype(reference_hist.binning.dtype if dtype is None else dtype)
        sb, rb = source_hist.binning, reference_hist.binning
        rows = []
        if method == "nearest":
            ref_values = rb.values()
            for b in range(source_hist.nbands):
                q = nearest_cdf_indices(
                    source_hist.counts[b], reference_hist.counts[b], levels=levels
                )
                rows.append(ref_values[b, q])
            table = cast_values(np.stack(rows), out_dtype)
        elif sb.kind == "levels":
            # a level's quantile is its cumulative count: the source needs no interpolation
            ref_values = rb.upper_values()
            for b in range(source_hist.nbands):
                rows.append(
                    interp_lut_values(
                        source_hist.counts[b], reference_hist.counts[b], ref_values[b]
                    )
                )
            table = cast_values(np.stack(rows), out_dtype)
        else:
            # continuous source: knots at the bin edges, where the CDF is known exactly
            ref_values = rb.upper_values()
            for b in range(source_hist.nbands):
                edge_counts = np.concatenate([[0], source_hist.counts[b]])
                rows.append(interp_lut_values(edge_counts, reference_hist.counts[b], ref_values[b]))
            table = np.stack(rows)
        return cls(
            table,
            sb,
            out_dtype,
            method,
            levels,
            source_hist.bands,
            source_hist,
            reference_hist,
            nodata,
            out_nodata,
        )

    # -- using
    def apply(self, data: Any, *, nodata: float | int | None = None, out_nodata: Any = None) -> Any:
        """Map ``data`` through the LUT, lazily for dask-backed input.

        Returns the kind that came in (numpy, dask or DataArray, the latter with its coords, CRS
        and transform). Pixels equal to ``nodata`` (default: the data's ``.rio.nodata``, else the
        LUT's) and NaN become ``out_nodata`` (default: the LUT's). See
        :func:`rastermatch.apply.apply_lut`.
        """
        from .apply import apply_lut

        return apply_lut(self, data, nodata=nodata, out_nodata=out_nodata)

    def with_nodata(self, nodata: Any, out_nodata: Any) -> LUT:
        """The same LUT recording other nodata values."""
        return LUT(
            self.table,
            self.source_binning,
            self.dtype,
            self.method,
            self.levels,
            self.bands,
            self.source_hist,
            self.reference_hist,
            nodata,
            out_nodata,
        )

    def valid_outputs(self) -> np.ndarray:
        """Every output value a valid source pixel can take (the table, less the nodata level)."""
        table = self.table
        b = self.source_binning
        k = b.level_bin(self.nodata)
        if self.kind == "table" and k is not None:
            table = np.delete(table, k, axis=1)
        return np.unique(table)

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
        return (
            f"<LUT {self.method}/{self.levels} {self.kind}, {self.nbands} band(s) "
            f"{list(self.bands)}, {self.source_binning.dtype} -> {self.dtype}>"
        )

    def plot(self, ax: Any = None, **kwargs: Any) -> Any:
        """Plot the LUT curve of every band (matplotlib; the ``plot`` extra)."""
        from .plot import plot_lut

        return plot_lut(self, ax=ax, **kwargs)

    def _repr_png_(self) -> bytes:
        from .plot import figure_png

        return figure_png(self.plot)
