"""Plots of histograms, LUTs and matches (matplotlib: the ``plot`` extra).

matplotlib is imported inside the functions, so ``import rastermatch`` works without it. Nothing
here uses pyplot or selects a backend: figures are :class:`matplotlib.figure.Figure` objects
drawn by the Agg canvas, so reports render on servers without a display. Called without ``ax``,
:func:`plot_histogram` and :func:`plot_lut` draw on pyplot's current axes only when the caller has
imported pyplot already (an interactive session), else on a new standalone figure.

The report (:func:`report_figure`, :func:`save_report`) shows one row per band: the CDFs of
source, reference and matched output, the LUT, and quicklooks of the three images. The curves
come from histograms (the LUT's own and :func:`~rastermatch.metrics.matched_histogram`); only
the quicklooks read pixels, decimated before they are computed.

The destriping report (:func:`destripe_report_figure`, :func:`save_destripe_report`) shows per
band the mean profile along the detector axis before and after and a full-resolution window of
both, read with the stripe statistics in one pass.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._data import as_band_array
from ._detectors import Detectors
from .errors import BandMismatchError, MissingDependencyError, OptionError, RastermatchError
from .histogram import Histogram
from .lut import LUT
from .metrics import destripe_pass, matched_histogram, significant, stripe_period, stripe_power

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "destripe_report_figure",
    "figure_png",
    "plot_histogram",
    "plot_lut",
    "report_figure",
    "save_destripe_report",
    "save_report",
    "save_series_report",
    "series_report_figure",
]

# one colour per role, everywhere in a report
COLORS = {"source": "#1f77b4", "reference": "#4d4d4d", "matched": "#d62728"}
_DASH = " \u2013 "  # an en dash between numbers, for ranges in panel labels
_STRETCH = (0.02, 0.98)  # the robust percentile stretch of the quicklooks
_CDF_RANGE = (0.0005, 0.9995)  # the CDF panels show this central part of the distributions
_RC = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


def require_matplotlib() -> None:
    """Fail early, with the install command, when the ``plot`` extra is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "plots and reports need matplotlib: pip install 'rastermatch[plot]'"
        ) from None


def _axes(ax: Axes | None) -> Axes:
    """``ax``, else pyplot's current axes if the caller uses pyplot, else a new Figure's axes."""
    require_matplotlib()
    if ax is not None:
        return ax
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        return pyplot.gca()
    from matplotlib.figure import Figure

    return Figure(figsize=(6, 4), layout="constrained").add_subplot()


def _plain_ticks(ax: Axes, axis: str = "both") -> None:
    """Few ticks in plain numbers (no offset or exponent: digital numbers read as they are)."""
    from matplotlib.ticker import MaxNLocator

    for name in ("x", "y") if axis == "both" else (axis,):
        getattr(ax, f"{name}axis").set_major_locator(MaxNLocator(nbins=5))
    ax.ticklabel_format(axis=axis, style="plain", useOffset=False)


# -- curves from histograms and LUTs ----------------------------------------------------------


def _cdf_steps(hist: Histogram, band: int) -> tuple[np.ndarray, np.ndarray]:
    """The CDF of one band as step corners: a 0 before the first value, then one step per bin
    that holds pixels (empty bins leave the CDF flat, so they are skipped)."""
    counts = hist.counts[band]
    occupied = np.flatnonzero(counts)
    if occupied.size == 0:
        return np.empty(0), np.empty(0)
    x = hist.binning.values()[band, occupied]
    y = np.cumsum(counts[occupied]) / counts[occupied].sum()
    return np.concatenate([x[:1], x]), np.concatenate([[0.0], y])


def _quantiles(hist: Histogram, band: int, q: Sequence[float]) -> np.ndarray:
    """The values below which the fractions ``q`` of a band's pixels lie (bin values)."""
    cum = np.cumsum(hist.counts[band])
    k = np.searchsorted(cum, np.asarray(q, dtype=np.float64) * cum[-1], side="left")
    return hist.binning.values()[band, np.minimum(k, cum.size - 1)]


def _lut_curve(lut: LUT, band: int) -> tuple[np.ndarray, np.ndarray]:
    """Source values and the LUT's output values, over the source's occupied bins if known.

    An interval LUT gives two points per bin: (smallest source value, its output) and
    (largest source value, its output).
    """
    seen = None
    if lut.source_hist is not None:
        seen = lut.source_hist.counts[band] > 0
    if lut.kind == "interval":
        t = lut.table[band]
        if seen is not None and seen.any():
            t = t[seen]
        x = np.stack([t[:, 0], t[:, 1]], axis=1).ravel()
        y = np.stack([t[:, 2], t[:, 3]], axis=1).ravel()
        return x, y.astype(np.float64)
    x, y = lut.source_binning.values()[band], lut.table[band]
    if seen is not None:
        occupied = np.flatnonzero(seen)
        if occupied.size:
            x, y = x[occupied[0] : occupied[-1] + 1], y[occupied[0] : occupied[-1] + 1]
    return x, y.astype(np.float64)


def plot_histogram(hist: Histogram, ax: Axes | None = None, **kwargs: Any) -> Axes:
    """Plot the CDF of every band of ``hist`` as step lines, in value units.

    Parameters
    ----------
    hist
        A computed histogram.
    ax
        The axes to draw on; default: pyplot's current axes if pyplot is in use, else a new
        figure.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.step` (``color``, ``linewidth``, ...). A ``label``
        prefixes the band labels in the legend.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import band_histograms
    >>> h = band_histograms(np.array([[[0, 1, 1], [3, 3, 3]]], dtype=np.uint8))
    >>> ax = plot_histogram(h)
    >>> [line.get_label() for line in ax.get_lines()]
    ['band 1']
    """
    hist._require_concrete()
    ax = _axes(ax)
    prefix = kwargs.pop("label", None)
    for i, label in enumerate(_row_names(hist)):
        x, y = _cdf_steps(hist, i)
        name = label if prefix is None else f"{prefix}, {label}"
        ax.step(x, y, where="post", label=name, **kwargs)
    ax.set_xlabel(f"value ({hist.binning.dtype})")
    ax.set_ylabel("cumulative fraction of pixels")
    ax.set_ylim(0, 1.02)
    _plain_ticks(ax, "x")
    ax.legend(loc="lower right")
    return ax


def plot_lut(lut: LUT, ax: Axes | None = None, **kwargs: Any) -> Axes:
    """Plot the LUT curve of every band: source value to output value.

    The curve spans the source values that occur when the LUT carries its source histogram (a
    fitted LUT does), else the whole source binning.

    Parameters
    ----------
    lut
        The LUT.
    ax
        The axes to draw on; default as :func:`plot_histogram`.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.plot`; a ``label`` prefixes the band labels.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import match_histograms, fit_lut
    >>> lut = fit_lut(np.array([[10, 10, 20, 30]], np.uint8), np.array([[1, 5, 5, 9]], np.uint8))
    >>> line = plot_lut(lut).get_lines()[0]
    >>> line.get_xdata().tolist()[:3], line.get_ydata().tolist()[:3]
    ([10.0, 11.0, 12.0], [1.0, 1.0, 1.0])
    """
    ax = _axes(ax)
    prefix = kwargs.pop("label", None)
    kwargs.setdefault("drawstyle", "default" if lut.kind == "interval" else "steps-mid")
    names = _row_names(lut.source_hist) if lut.source_hist is not None else None
    for i, label in enumerate(lut.bands):
        x, y = _lut_curve(lut, i)
        label = names[i] if names is not None else f"band {label}"
        name = label if prefix is None else f"{prefix}, {label}"
        ax.plot(x, y, label=name, **kwargs)
    ax.set_xlabel(f"source value ({lut.source_binning.dtype})")
    ax.set_ylabel(f"output value ({lut.dtype})")
    _plain_ticks(ax)
    ax.legend(loc="lower right")
    return ax


def figure_png(plot_fn: Callable[..., Any], *, figsize: tuple[float, float] = (6, 4)) -> bytes:
    """Draw ``plot_fn(ax)`` on a fresh Agg figure and return it as PNG bytes.

    This is what ``Histogram._repr_png_`` and ``LUT._repr_png_`` use, so notebooks show
    histograms and LUTs as plots.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import band_histograms
    >>> h = band_histograms(np.array([[0, 1, 1, 3]], dtype=np.uint8))
    >>> figure_png(h.plot)[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
    """
    require_matplotlib()
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with mpl.rc_context(_RC):
        fig = Figure(figsize=figsize, dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        plot_fn(fig.add_subplot())
        buf = BytesIO()
        fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


# -- the report -------------------------------------------------------------------------------


def _quicklooks(
    items: Sequence[tuple[Any, str, Any]], max_size: int, nbands: int
) -> list[tuple[np.ndarray, Any, np.dtype, int]]:
    """Decimated ``(band, y, x)`` arrays of several inputs, computed together.

    Each input is strided down to at most ``max_size`` pixels on its long side *before* anything
    is computed, so a dask-backed scene of any size costs a read of a few hundred rows. Returns
    ``(array, nodata, dtype, step)`` per input.
    """
    import dask

    lazy = []
    for data, name, fallback_nodata in items:
        shape = getattr(data, "shape", ())
        step = 1
        if len(shape) in (2, 3):
            # stride the input itself, before it is normalized: a lazily loaded DataArray
            # (rioxarray without chunks) would otherwise be read in full
            step = max(1, math.ceil(max(shape[-2:]) / max_size))
            data = data[..., ::step, ::step]
        src = as_band_array(data, name=name)
        if src.array.shape[0] != nbands:
            raise BandMismatchError(
                f"{src.name} has {src.array.shape[0]} bands and the LUT {nbands}; pass the bands "
                "the LUT was fitted on"
            )
        nodata = src.nodata if src.nodata is not None else fallback_nodata
        lazy.append((src.array, nodata, src.dtype, step))
    # one compute for all: inputs that share a graph (the source and its matched output) are
    # read once
    arrays = dask.compute(*(item[0] for item in lazy))
    return [(np.asarray(a), *item[1:]) for a, item in zip(arrays, lazy, strict=True)]


def _display(band: np.ndarray, nodata: Any) -> np.ndarray:
    """One band as float with NaN where it is nodata or not finite (drawn transparent)."""
    out = band.astype(np.float64)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        out[band == nodata] = np.nan
    out[~np.isfinite(out)] = np.nan
    return out


def _share_stretch(source: Histogram, band: int, ref_limits: np.ndarray, same_dtype: bool) -> bool:
    """Whether the source is shown with the reference's stretch (and on the reference's axis).

    Only when both are in the same units (dtype) and at least a quarter of the source's pixels
    fall inside the reference's 2-98 % range: then a darker or flatter source shows as such.
    Otherwise the reference's stretch would saturate the source into a blank panel.
    """
    if not same_dtype:
        return False
    values, counts = source.binning.values()[band], source.counts[band]
    inside = counts[(values >= ref_limits[0]) & (values <= ref_limits[1])].sum()
    return bool(inside >= 0.25 * counts.sum())


def _limits_text(limits: np.ndarray, dtype: np.dtype) -> str:
    if np.dtype(dtype).kind in "iu":
        lo, hi = (f"{round(float(v))}" for v in limits)
    else:
        lo, hi = (significant(float(v), 4) for v in limits)
    return f"{lo}{_DASH}{hi}"


def _row_title(label: str, row: dict[str, Any] | None) -> str:
    if row is None:
        return label
    return (
        f"{label}    KS {row['ks_before']:.3f} → {row['ks_after']:.3f}    "
        f"W1 {significant(row['w1_before'])} → {significant(row['w1_after'])}"
    )


def _cdf_panel(
    ax: Axes,
    hists: dict[str, Histogram],
    band: int,
    source_on_own_axis: bool,
) -> None:
    ref_kw = {"color": COLORS["reference"], "linewidth": 2.6, "alpha": 0.45}
    out_kw = {"color": COLORS["matched"], "linewidth": 1.1, "linestyle": (0, (4, 2))}
    src_kw = {"color": COLORS["source"], "linewidth": 1.3}
    lines = []
    lines += ax.step(
        *_cdf_steps(hists["reference"], band), where="post", label="reference", **ref_kw
    )
    lines += ax.step(*_cdf_steps(hists["matched"], band), where="post", label="matched", **out_kw)
    ranges = [_quantiles(hists[k], band, _CDF_RANGE) for k in ("reference", "matched")]
    src_ax = ax
    if source_on_own_axis:
        src_ax = ax.twiny()
        src_ax.spines["top"].set_visible(True)
        src_ax.spines["top"].set_color(COLORS["source"])
        src_ax.tick_params(axis="x", colors=COLORS["source"])
        src_ax.set_xlabel(f"source value ({hists['source'].binning.dtype})", color=COLORS["source"])
        src_ax.set_xlim(*_padded(_quantiles(hists["source"], band, _CDF_RANGE)))
        _plain_ticks(src_ax, "x")
    else:
        ranges.append(_quantiles(hists["source"], band, _CDF_RANGE))
    label = "source (top axis)" if source_on_own_axis else "source"
    lines += src_ax.step(*_cdf_steps(hists["source"], band), where="post", label=label, **src_kw)
    ax.set_xlim(*_padded(np.array([min(r[0] for r in ranges), max(r[1] for r in ranges)])))
    ax.set_ylim(0, 1.02)
    what = "reference / matched value" if source_on_own_axis else "value"
    ax.set_xlabel(f"{what} ({hists['reference'].binning.dtype})")
    ax.set_ylabel("cumulative fraction")
    ax.grid(alpha=0.25, linewidth=0.5)
    _plain_ticks(ax, "x")
    ax.legend(handles=lines, loc="lower right", frameon=False)


def _padded(limits: np.ndarray, pad: float = 0.03) -> tuple[float, float]:
    lo, hi = float(limits[0]), float(limits[1])
    width = hi - lo if hi > lo else max(abs(lo), 1.0)
    return lo - pad * width, hi + pad * width


def _lut_panel(ax: Axes, lut: LUT, band: int) -> None:
    x, y = _lut_curve(lut, band)
    drawstyle = "default" if lut.kind == "interval" else "steps-mid"
    ax.plot(x, y, color=COLORS["matched"], linewidth=1.3, drawstyle=drawstyle)
    ax.set_xlabel(f"source value ({lut.source_binning.dtype})", color=COLORS["source"])
    ax.set_ylabel(f"matched value ({lut.dtype})", color=COLORS["matched"])
    ax.set_title(f"LUT ({lut.method}, {lut.levels} levels)", loc="left")
    ax.grid(alpha=0.25, linewidth=0.5)
    _plain_ticks(ax)


def _image_panel(
    ax: Axes,
    image: np.ndarray,
    limits: np.ndarray,
    role: str,
    title: str,
    note: str,
    cmap: Any,
) -> None:
    from matplotlib.patches import Rectangle

    # nodata is transparent: a light hatch behind the image tells it from saturated white
    ax.add_patch(
        Rectangle(
            (0, 0),
            1,
            1,
            transform=ax.transAxes,
            facecolor="white",
            edgecolor="#c4c4c4",
            hatch="////",
            linewidth=0,
            zorder=0,
        )
    )
    ax.imshow(image, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest", zorder=1)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_color(COLORS[role])
        spine.set_linewidth(1.2)
    ax.set_title(title, color=COLORS[role], fontweight="bold", loc="left", pad=3)
    ax.text(
        0.0,
        -0.02,
        note,
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=6.5,
        color="#555555",
    )


def report_figure(
    source: Any,
    reference: Any,
    matched: Any,
    lut: LUT,
    *,
    metrics: Sequence[dict[str, Any]] | None = None,
    max_quicklook: int = 256,
    title: str | None = None,
    reference_nodata: float | int | None = None,
) -> Figure:
    """A one-page visual report of a match: one row per band.

    Each row shows (1) the CDFs of source, reference and matched output, from the histograms
    (``lut.source_hist``, ``lut.reference_hist`` and
    :func:`~rastermatch.metrics.matched_histogram`); (2) the LUT curve; (3-5) quicklooks of
    source, reference and matched output. The quicklooks are strided down to at most
    ``max_quicklook`` pixels on the long side before anything is read, then shown with a 2-98 %
    stretch taken from the reference's histogram, so that the matched output looks like the
    reference if the match worked. The source gets the same stretch when it is in the same units
    and at least a quarter of its pixels fall inside that stretch, and its own otherwise (the
    panel title says which; its CDF then gets its own axis on top). Nodata and NaN are
    transparent over a light hatch.

    Parameters
    ----------
    source, reference, matched
        ``(band, y, x)`` or ``(y, x)`` DataArrays, numpy or dask arrays (dask-backed ones are
        only read at quicklook resolution). ``matched=None`` maps the source quicklook through
        the LUT instead of reading a matched output.
    lut
        The fitted LUT; it must carry its histograms.
    metrics
        Rows from :func:`~rastermatch.metrics.quality_table`; their KS and W1 distances before
        and after go into each row's title.
    max_quicklook
        Longest side of the quicklooks, in pixels.
    title
        The figure title; default names the method and the dtypes.
    reference_nodata
        The reference's nodata, if not on the DataArray (``.rio.nodata``). The source's and
        matched output's default to ``lut.nodata`` and ``lut.out_nodata``.

    Returns
    -------
    matplotlib.figure.Figure
        Drawn by the Agg canvas; no display or pyplot is involved.

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import fit_lut
    >>> from rastermatch.metrics import matched_histogram, quality_table
    >>> rng = np.random.default_rng(0)
    >>> source = rng.integers(0, 120, (2, 40, 60), dtype=np.uint8)
    >>> reference = rng.integers(60, 255, (2, 30, 30), dtype=np.uint8)
    >>> lut = fit_lut(source, reference)
    >>> rows = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
    >>> fig = report_figure(source, reference, lut.apply(source), lut, metrics=rows)
    >>> len(fig.subfigs), len(fig.subfigs[0].axes)
    (2, 5)
    """
    require_matplotlib()
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .apply import apply_lut_array

    if lut.source_hist is None or lut.reference_hist is None:
        raise RastermatchError(
            "this LUT carries no histograms, so the report has no CDFs to draw; fit it with "
            "rastermatch.fit_lut (LUT files written by LUT.save keep them)"
        )
    if max_quicklook < 1:
        raise ValueError(f"max_quicklook must be a positive number of pixels, not {max_quicklook}")
    if metrics is not None and len(metrics) != lut.nbands:
        raise BandMismatchError(f"{len(metrics)} rows of metrics for a LUT of {lut.nbands} bands")
    hists = {
        "source": lut.source_hist,
        "reference": lut.reference_hist,
        "matched": matched_histogram(lut),
    }
    items = [(source, "source", lut.nodata), (reference, "reference", reference_nodata)]
    if matched is not None:
        items.append((matched, "matched", lut.out_nodata))
    looks = _quicklooks(items, max_quicklook, lut.nbands)
    if matched is None:
        src_look, src_nodata, _, step = looks[0]
        mapped = apply_lut_array(src_look, lut, nodata=src_nodata, out_nodata=lut.out_nodata)
        looks.append((mapped, lut.out_nodata, lut.dtype, step))
    same_dtype = looks[0][2] == looks[1][2]

    # panels of one height: the curves a fixed width, the quicklooks as wide as their aspect
    height = 2.3
    ratios = [1.45, 1.3] + [float(np.clip(a.shape[2] / a.shape[1], 0.6, 2.2)) for a, *_ in looks]
    width = max(11.0, 1.8 + height * sum(ratios))
    cmap = mpl.colormaps["gray"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(width, 0.8 + 3.2 * lut.nbands), layout="constrained")
        FigureCanvasAgg(fig)
        fig.suptitle(
            title
            or (
                f"Histogram matching: {lut.method} / {lut.levels} levels, "
                f"source {looks[0][2]} → reference {looks[1][2]} (output {lut.dtype})"
            ),
            fontsize=11,
            fontweight="bold",
        )
        steps = " / ".join(f"1:{step}" for *_, step in looks)
        fig.supxlabel(
            "CDFs and LUT from full-resolution histograms (matched: the source histogram "
            f"pushed through the LUT). Quicklooks decimated {steps} (source / reference / "
            "matched), grey 2\u201398 % stretch; hatched: nodata or NaN.",
            fontsize=7,
            color="#555555",
        )
        rows = fig.subfigures(lut.nbands, 1, squeeze=False)[:, 0]
        for b, (row_fig, label) in enumerate(zip(rows, _row_names(hists["source"]), strict=True)):
            row_fig.suptitle(
                _row_title(label, None if metrics is None else metrics[b]),
                x=0.005,
                ha="left",
                fontsize=9.5,
                fontweight="bold",
            )
            axs = row_fig.subplots(1, 5, width_ratios=ratios)
            ref_limits = _quantiles(hists["reference"], b, _STRETCH)
            src_limits = _quantiles(hists["source"], b, _STRETCH)
            shared = _share_stretch(hists["source"], b, ref_limits, same_dtype)
            _cdf_panel(axs[0], hists, b, source_on_own_axis=not shared)
            _lut_panel(axs[1], lut, b)
            ref_note = f"{_limits_text(ref_limits, looks[1][2])} (reference stretch)"
            if shared:
                src_title, src_note = "source", ref_note
            else:  # the panel title says the source is not on the reference's scale
                src_title = "source (own stretch)" if same_dtype else f"source ({looks[0][2]})"
                src_note = f"{_limits_text(src_limits, looks[0][2])} (own stretch)"
            panels = (
                ("source", src_title, src_limits if not shared else ref_limits, src_note),
                ("reference", "reference", ref_limits, ref_note),
                ("matched", "matched", ref_limits, ref_note),
            )
            for ax, (image, nodata, _, _), (role, text, limits, note) in zip(
                axs[2:], looks, panels, strict=True
            ):
                _image_panel(ax, _display(image[b], nodata), limits, role, text, note, cmap)
    return fig


def save_report(
    path: str | os.PathLike[str],
    source: Any,
    reference: Any,
    matched: Any,
    lut: LUT,
    *,
    dpi: int = 120,
    **kwargs: Any,
) -> Path:
    """Write :func:`report_figure` to ``path`` (PNG, PDF or SVG, by the suffix).

    Keyword arguments go to :func:`report_figure`.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from rastermatch import fit_lut
    >>> source = np.arange(64, dtype=np.uint8).reshape(1, 8, 8)
    >>> reference = (np.arange(64, dtype=np.uint8) * 3).reshape(1, 8, 8)
    >>> lut = fit_lut(source, reference)
    >>> path = save_report(tempfile.mkdtemp() + "/report.png", source, reference, None, lut)
    >>> path.read_bytes()[:4] == b"\\x89PNG"
    True
    """
    fig = report_figure(source, reference, matched, lut, **kwargs)
    path = Path(path)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


# -- the report of a many-source job ----------------------------------------------------------


def _row_names(hist: Histogram) -> list[str]:
    """How panels and legends name each row: ``band 3``, ``time 2020-01-31, band 1``."""
    return [hist.rows.describe(i) or "the image" for i in range(hist.nbands)]


def _worst(metrics: Sequence[dict[str, Any]] | None, name: str) -> str:
    if not metrics:
        return name
    rows = [m for m in metrics if m.get("source") == name]
    if not rows:
        return name
    before = max(r["ks_before"] for r in rows)
    after = max(r["ks_after"] for r in rows)
    return f"{name}  (KS {before:.3f} → {after:.3f})"


def series_report_figure(
    luts: Sequence[LUT],
    names: Sequence[str],
    *,
    metrics: Sequence[dict[str, Any]] | None = None,
    title: str | None = None,
) -> Figure:
    """The report of many sources matched to one reference: one row per band, two panels.

    Left, every source's CDF with the reference's (before); right, every matched output's CDF
    with the reference's (after): a source that was not brought onto the reference stands out
    as the one curve off the grey one. All curves come from histograms (each LUT's source and
    reference histograms and :func:`~rastermatch.metrics.matched_histogram`); no pixel is read.

    Parameters
    ----------
    luts
        One fitted LUT per source (they carry their histograms), e.g. from
        :func:`rastermatch.pipeline.normalize_files`.
    names
        One name per source, for the legend.
    metrics
        Quality rows with a ``source`` key (as ``normalize_files`` gives them): the legend adds
        each source's worst KS distance before and after.
    title
        The figure title; default names the number of sources and the method.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import fit_lut
    >>> rng = np.random.default_rng(0)
    >>> reference = rng.integers(60, 255, (2, 30, 30), dtype=np.uint8)
    >>> luts = [fit_lut(rng.integers(0, 120 + 40 * i, (2, 20, 20), dtype=np.uint8), reference)
    ...         for i in range(3)]
    >>> fig = series_report_figure(luts, ["a.tif", "b.tif", "c.tif"])
    >>> len(fig.subfigs), len(fig.subfigs[0].axes)
    (2, 2)
    """
    require_matplotlib()
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(luts) != len(names) or not luts:
        raise BandMismatchError(f"{len(luts)} LUTs for {len(names)} source names")
    for lut, name in zip(luts, names, strict=True):
        if lut.source_hist is None or lut.reference_hist is None:
            raise RastermatchError(
                f"the LUT of {name} carries no histograms, so the report has no CDFs to draw; "
                "fit it with rastermatch.fit_lut (LUT files written by LUT.save keep them)"
            )
    matched = [matched_histogram(lut) for lut in luts]
    nrows = max(lut.nbands for lut in luts)
    reference = next(lut.reference_hist for lut in luts if lut.nbands == nrows)
    row_names = _row_names(next(lut.source_hist for lut in luts if lut.nbands == nrows))
    cmap = mpl.colormaps["viridis" if len(luts) > 10 else "tab10"]
    colors = [
        cmap(i / max(len(luts) - 1, 1) if len(luts) > 10 else i % 10) for i in range(len(luts))
    ]
    ref_kw = {"color": COLORS["reference"], "linewidth": 3.0, "alpha": 0.45}
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(11.0, 0.9 + 3.0 * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        fig.suptitle(
            title
            or (
                f"{len(luts)} source{'s' if len(luts) != 1 else ''} matched to one reference: "
                f"{luts[0].method} / {luts[0].levels} levels (output {luts[0].dtype})"
            ),
            fontsize=11,
            fontweight="bold",
        )
        fig.supxlabel(
            "CDFs from full-resolution histograms (matched: each source histogram pushed "
            "through its LUT); thick grey: the reference.",
            fontsize=7,
            color="#555555",
        )
        subfigs = fig.subfigures(nrows, 1, squeeze=False)[:, 0]
        for r, row_fig in enumerate(subfigs):
            row_fig.suptitle(row_names[r], x=0.005, ha="left", fontsize=9.5, fontweight="bold")
            before, after = row_fig.subplots(1, 2)
            ref_steps = _cdf_steps(reference, r)
            for ax, hists, what in ((before, [lut.source_hist for lut in luts], "source"),
                                    (after, matched, "matched")):  # fmt: skip
                ranges = []
                ref_ax = ax
                if what == "source" and any(
                    h.binning.dtype != reference.binning.dtype for h in hists
                ):  # sources in other units: the reference on its own axis, on top
                    ref_ax = ax.twiny()
                    ref_ax.spines["top"].set_visible(True)
                    ref_ax.set_xlabel(f"reference value ({reference.binning.dtype})")
                    ref_ax.set_xlim(*_padded(_quantiles(reference, r, _CDF_RANGE)))
                    _plain_ticks(ref_ax, "x")
                else:
                    ranges.append(_quantiles(reference, r, _CDF_RANGE))
                ref_ax.step(*ref_steps, where="post", label="reference", **ref_kw)
                for i, (hist, name) in enumerate(zip(hists, names, strict=True)):
                    if r >= hist.nbands or hist.counts[r].sum() == 0:
                        continue
                    ax.step(*_cdf_steps(hist, r), where="post", color=colors[i],
                            linewidth=1.1, label=_worst(metrics, name))  # fmt: skip
                    ranges.append(_quantiles(hist, r, _CDF_RANGE))
                lo = min(float(q[0]) for q in ranges)
                hi = max(float(q[1]) for q in ranges)
                ax.set_xlim(*_padded(np.array([lo, hi])))
                ax.set_ylim(0, 1.02)
                ax.set_title("before: sources" if what == "source" else "after: matched",
                             loc="left")  # fmt: skip
                ax.set_xlabel("source value" if ref_ax is not ax else "value")
                ax.set_ylabel("cumulative fraction")
                ax.grid(alpha=0.25, linewidth=0.5)
                _plain_ticks(ax, "x")
            handles, labels = after.get_legend_handles_labels()
            if len(handles) <= 13:
                after.legend(handles, labels, loc="lower right", frameon=False, fontsize=6)
    return fig


def save_series_report(
    path: str | os.PathLike[str],
    luts: Sequence[LUT],
    names: Sequence[str],
    *,
    dpi: int = 120,
    **kwargs: Any,
) -> Path:
    """Write :func:`series_report_figure` to ``path`` (PNG, PDF or SVG, by the suffix)."""
    fig = series_report_figure(luts, names, **kwargs)
    path = Path(path)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


# -- the report of a detector balancing (destriping) ------------------------------------------


def _zoom_starts(size: int, zoom: int, count: int = 4) -> list[int]:
    """Up to ``count`` evenly spread starts of a ``zoom``-long window along an axis."""
    if size <= zoom:
        return [0]
    return sorted(set(np.linspace(0, size - zoom, count).round().astype(int).tolist()))


def _crop_layout(layout: Detectors, start: int, length: int, size: int) -> Detectors:
    """The detector layout of positions ``start .. start + length`` of an axis ``size`` long."""
    if layout.count is not None:
        return Detectors(layout.axis, layout.count, (layout.offset + start) % layout.count)
    if layout.labels is None:
        return layout
    return Detectors(layout.axis, labels=layout.labels[start : start + length])


def _crop_power(
    crop: np.ndarray, valid: np.ndarray, layout: Detectors, start: int, size: int
) -> float:
    """The stripe power of one computed ``(y, x)`` crop (its own profile)."""
    other = 1 if layout.axis == "y" else 0
    counts = valid.sum(axis=other)
    if not counts.any():
        return 0.0
    sums = np.where(valid, crop.astype(np.float64), 0.0).sum(axis=other)
    profile = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    sub = _crop_layout(layout, start, profile.size, size)
    return float(stripe_power(profile, detectors=sub))


def _crop_valid(crop: np.ndarray, nodata: Any, masked: np.ndarray | None) -> np.ndarray:
    valid = np.isfinite(crop) if crop.dtype.kind == "f" else np.ones(crop.shape, bool)
    if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
        valid &= crop != nodata
    if masked is not None:
        valid &= ~masked
    return valid


def _range_text(what: str, start: int, stop: int) -> str:
    return f"{what} {start}{_DASH}{stop - 1}"


def _reduction_text(rows: Sequence[dict[str, Any]]) -> str:
    """``stripe power down 99.12 %`` (a range over several rows)."""
    known = sorted(r["stripe_reduction"] for r in rows if r["stripe_reduction"] is not None)
    if not known:
        return "stripes appear where there were none"
    lo, hi = known[0], known[-1]
    word = "down" if lo >= 0 else "up" if hi <= 0 else "changed"
    if word == "up":
        lo, hi = -hi, -lo
    texts = [f"{significant(100 * v, 4)} %" for v in (lo, hi)]
    shown = texts[0] if texts[0] == texts[1] else f"{texts[0]}{_DASH}{texts[1]}"
    return f"stripe power {word} {shown}"


def _destripe_row_title(name: str, row: dict[str, Any]) -> str:
    reduction = row["stripe_reduction"]
    change = ""
    if reduction is not None:
        change = (
            f" ({significant(100 * abs(reduction), 4)} % {'less' if reduction >= 0 else 'more'})"
        )
    deviation = significant(100 * row["mean_relative_deviation"], 3)
    return (
        f"{name}    stripe power {significant(row['stripe_power_before'])} → "
        f"{significant(row['stripe_power_after'])}{change}    "
        f"mean relative deviation {deviation} %"
    )


def _profile_limits(*profiles: np.ndarray) -> tuple[float, float]:
    """A y range that shows the profiles (0.5-99.5 %: one dead line does not flatten them)."""
    values = np.concatenate([p[np.isfinite(p)] for p in profiles])
    if values.size == 0:
        return 0.0, 1.0
    return _padded(np.percentile(values, [0.5, 99.5]), pad=0.08)


def _report_parts(
    before: Any, after: Any, detectors: Any, *, zoom: int, **options: Any
) -> tuple[Any, list[tuple[int, int]], list[Any], tuple[int, int]]:
    """The pass of :func:`destripe_report_figure`, its candidate windows, their crops (before,
    after[, mask] per window) and the window shape."""
    if isinstance(zoom, bool) or not isinstance(zoom, int | np.integer) or zoom < 8:
        raise OptionError(f"zoom must be a window side of at least 8 pixels, not {zoom!r}")
    p = destripe_pass(before, after, detectors, **options)
    _, ny, nx = p.before.array.shape
    hy, hx = min(zoom, ny), min(zoom, nx)
    windows = [(y0, x0) for y0 in _zoom_starts(ny, hy) for x0 in _zoom_starts(nx, hx)]
    crops = []
    for y0, x0 in windows:
        at = (slice(None), slice(y0, y0 + hy), slice(x0, x0 + hx))
        crops += [p.before.array[at], p.after.array[at]]
        if p.mask is not None:
            crops.append(p.mask[at])
    return p, windows, crops, (hy, hx)


def destripe_report_lazy(
    before: Any,
    after: Any,
    detectors: Any,
    *,
    axis: Literal["y", "x"] | None = None,
    offset: int = 0,
    nodata: float | int | None = None,
    out_nodata: float | int | None = None,
    mask: Any = None,
    channel_axis: int | None = None,
    zoom: int = 128,
) -> tuple[Any, ...]:
    """Everything :func:`destripe_report_figure` reads, lazy: compute it together with other
    work on the same inputs and pass the values as its ``computed=``. The first values are
    those of :func:`~rastermatch.metrics.destripe_pass` (``.lazy``), so
    ``destripe_pass(...).rows(values)`` gives the quality rows too."""
    p, _, crops, _ = _report_parts(
        before, after, detectors, axis=axis, offset=offset, nodata=nodata,
        out_nodata=out_nodata, mask=mask, channel_axis=channel_axis, zoom=zoom,
    )  # fmt: skip
    return (*p.lazy, *crops)


def destripe_report_figure(
    before: Any,
    after: Any,
    detectors: Any,
    *,
    axis: Literal["y", "x"] | None = None,
    offset: int = 0,
    nodata: float | int | None = None,
    out_nodata: float | int | None = None,
    mask: Any = None,
    channel_axis: int | None = None,
    zoom: int = 128,
    title: str | None = None,
    return_quality: bool = False,
    computed: Sequence[Any] | None = None,
) -> Figure | tuple[Figure, list[dict[str, Any]]]:
    """A one-page visual report of a detector balancing (destriping): one row per band.

    Each row shows (1) the mean profile along the detector axis (the mean of every line, or
    column, over its valid pixels) before and after, with the zoomed lines shaded; (2) the same
    profiles over those lines only, where the detector pattern shows point by point; (3-4) the
    input and the output over a ``zoom`` x ``zoom`` window at full resolution (decimating would
    alias the stripes away), both with the 2-98 % stretch of the output's window, so that the
    two compare and the stripes of the input stand out. The window is the one, among a 4 x 4
    grid of candidates, where balancing removed the most stripe power (at least half of its
    pixels valid), so it shows where the stripes were. Row titles give the stripe power before
    and after (:func:`~rastermatch.metrics.stripe_power`) and the mean relative deviation; the
    figure title gives the stripe reduction.

    Everything is read in one pass: the profiles, the deviations and the candidate windows of
    both inputs are computed together (one ``dask.compute`` for dask input).

    Parameters
    ----------
    before, after, detectors, axis, offset, nodata, out_nodata, mask, channel_axis
        As :func:`~rastermatch.metrics.destripe_quality`.
    zoom
        Side of the quicklook window, in pixels.
    title
        The figure title; default names the layout and the stripe reduction.
    return_quality
        Also return the rows of :func:`~rastermatch.metrics.destripe_quality`, from the same
        pass (a job that wants both reads its inputs once).
    computed
        The values of :func:`destripe_report_lazy` (same inputs and options), computed by the
        caller together with whatever else reads the inputs (a job's write of the output):
        then nothing is read here.

    Returns
    -------
    matplotlib.figure.Figure, or (Figure, list of dict) with ``return_quality``
        Drawn by the Agg canvas; no display or pyplot is involved.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> clean = rng.integers(40, 200, (2, 64, 48)).astype(np.uint8)
    >>> gain = np.array([1.0, 1.1, 0.9, 1.05])[np.arange(64) % 4]
    >>> striped = (clean * gain[:, None]).clip(0, 255).astype(np.uint8)
    >>> fig = destripe_report_figure(striped, clean, 4)
    >>> len(fig.subfigs), len(fig.subfigs[0].axes)
    (2, 4)
    >>> fig._suptitle.get_text()
    'Detector balancing, 4 detectors along y: stripe power down 9...%'
    """
    require_matplotlib()
    import dask
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    p, windows, crops, (hy, hx) = _report_parts(
        before, after, detectors, axis=axis, offset=offset, nodata=nodata,
        out_nodata=out_nodata, mask=mask, channel_axis=channel_axis, zoom=zoom,
    )  # fmt: skip
    layout = p.layout
    if computed is None:
        computed = dask.compute(*p.lazy, *crops, scheduler=p.scheduler)
    elif len(computed) != len(p.lazy) + len(crops):
        raise OptionError(
            f"computed= has {len(computed)} values; destripe_report_lazy of these inputs and "
            f"options gives {len(p.lazy) + len(crops)}"
        )
    rows = p.rows(computed[: len(p.lazy)])
    profile_b, profile_a = p.profiles(computed[: len(p.lazy)])
    per = 3 if p.mask is not None else 2
    looks = [
        computed[len(p.lazy) + per * w : len(p.lazy) + per * (w + 1)] for w in range(len(windows))
    ]

    size = p.size
    along = "line" if layout.axis == "y" else "column"

    def crops_of(w: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Row ``r`` of window ``w``: the crops before and after and where they are valid."""
        b, a, *m = looks[w]
        masked = m[0][min(r, m[0].shape[0] - 1)] if m else None
        return (
            b[r],
            a[r],
            _crop_valid(b[r], p.before.nodata, masked),
            _crop_valid(a[r], p.after.nodata, masked),
        )

    def window_of(r: int) -> int:
        """The window of row ``r`` where balancing removed the most stripe power, among those
        at least half valid (else the most valid one)."""
        keys = []
        for w, (y0, x0) in enumerate(windows):
            b, a, vb, va = crops_of(w, r)
            start = y0 if layout.axis == "y" else x0
            if vb.mean() < 0.5:
                keys.append((False, float(vb.mean())))
                continue
            removed = _crop_power(b, vb, layout, start, size) - _crop_power(
                a, va, layout, start, size
            )
            keys.append((True, removed))
        return max(range(len(windows)), key=lambda w: keys[w])

    nrows = len(rows)
    cmap = mpl.colormaps["gray"].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    aspect = float(np.clip(hx / hy, 0.6, 1.8))
    with mpl.rc_context(_RC):
        fig = Figure(figsize=(11.0, 1.0 + 2.9 * nrows), layout="constrained")
        FigureCanvasAgg(fig)
        fig.suptitle(
            title or f"Detector balancing, {layout.describe()}: {_reduction_text(rows)}",
            fontsize=11,
            fontweight="bold",
        )
        measure = (
            "its power spectrum at the detector frequency and its harmonics"
            if stripe_period(layout, size) is not None
            else "its mean square difference from its neighbours' median"
        )
        fig.supxlabel(
            f"Profiles: the mean of the valid pixels of every {along}, blue before, red after; "
            f"stripe power: {measure}.\nQuicklooks at full resolution with one 2\u201398 % "
            "stretch, the output's; hatched: nodata, NaN or masked.",
            fontsize=7,
            color="#555555",
        )
        subfigs = fig.subfigures(nrows, 1, squeeze=False)[:, 0]
        names = [p.before.rows.describe(r) or "the image" for r in range(nrows)]
        for r, (row_fig, row) in enumerate(zip(subfigs, rows, strict=True)):
            row_fig.suptitle(
                _destripe_row_title(names[r], row),
                x=0.005,
                ha="left",
                fontsize=9.5,
                fontweight="bold",
            )
            full, near, left, right = row_fig.subplots(
                1, 4, width_ratios=[1.9, 1.3, aspect, aspect]
            )
            w = window_of(r)
            crop_b, crop_a, vb, va = crops_of(w, r)
            y0, x0 = windows[w]
            start, stop = (y0, y0 + hy) if layout.axis == "y" else (x0, x0 + hx)
            positions = np.arange(size)
            limits = _profile_limits(profile_b[r], profile_a[r])
            for ax in (full, near):
                ax.grid(alpha=0.25, linewidth=0.5)
                ax.set_ylim(*limits)
                ax.set_xlabel(along)
                _plain_ticks(ax)
            full.plot(
                positions, profile_b[r], color=COLORS["source"], linewidth=0.6, label="before"
            )
            full.plot(
                positions, profile_a[r], color=COLORS["matched"], linewidth=0.9, label="after"
            )
            full.axvspan(start - 0.5, stop - 0.5, color="#999999", alpha=0.18, linewidth=0)
            full.set_xlim(-0.5, size - 0.5)
            full.set_ylabel(f"mean value per {along}")
            full.set_title(f"mean profile along {layout.axis}", loc="left")
            full.legend(loc="best", frameon=False)
            span = slice(start, stop)
            near.plot(
                positions[span],
                profile_b[r, span],
                color=COLORS["source"],
                linewidth=0.8,
                marker="o",
                markersize=1.8,
            )
            near.plot(
                positions[span],
                profile_a[r, span],
                color=COLORS["matched"],
                linewidth=0.8,
                marker="o",
                markersize=1.8,
            )
            if layout.count is not None and layout.count > 1:  # each sweep's first line
                first = [i for i in range(start, stop) if (i + layout.offset) % layout.count == 0]
                for i in first if len(first) <= 32 else ():
                    near.axvline(i - 0.5, color="#bbbbbb", linewidth=0.5, zorder=0)
            near.set_xlim(start - 0.5, stop - 0.5)
            near.set_title(f"zoom: {_range_text(along + 's', start, stop)}", loc="left")
            shown = crop_a[va].astype(np.float64)
            stretch = np.percentile(shown, [2, 98]) if shown.size else np.array([0.0, 1.0])
            where = f"{_range_text('lines', y0, y0 + hy)}, {_range_text('columns', x0, x0 + hx)}"
            note = f"{where}; stretch {_limits_text(stretch, p.before.dtype)}"
            for ax, crop, valid, role, text in (
                (left, crop_b, vb, "source", "before"),
                (right, crop_a, va, "matched", "after"),
            ):
                image = np.where(valid, crop.astype(np.float64), np.nan)
                _image_panel(ax, image, stretch, role, text, note, cmap)
    return (fig, rows) if return_quality else fig


def save_destripe_report(
    path: str | os.PathLike[str],
    before: Any,
    after: Any,
    detectors: Any,
    *,
    dpi: int = 120,
    **kwargs: Any,
) -> Path | tuple[Path, list[dict[str, Any]]]:
    """Write :func:`destripe_report_figure` to ``path`` (PNG, PDF or SVG, by the suffix).

    Keyword arguments go to :func:`destripe_report_figure`; with ``return_quality=True`` the
    quality rows of the same pass come back too: ``(path, rows)``.
    """
    result = destripe_report_figure(before, after, detectors, **kwargs)
    fig, rows = result if isinstance(result, tuple) else (result, None)
    path = Path(path)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path if rows is None else (path, rows)
