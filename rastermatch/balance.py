"""Relative detector calibration: balance the detectors of one sensor by per-detector matching.

A whisk-broom scanner writes ``n`` lines per sweep, one per detector; a push-broom sensor in
sensor geometry has one detector per column. Every detector has its own response, and the image
shows stripes. The classic fix (Horn & Woodham 1979; VICAR ``DS4``, MIPS ``histn``, LAS
``DESTRIPE``, the operational MODIS destriping) matches each detector's histogram to a reference
(all detectors pooled, or one good detector), giving one monotone LUT per detector, which
corrects non-linear responses too.

Built on the same steps as :func:`~rastermatch.match_histograms`; the detector is one more row
dim, ``detector``, always the last (a ``(band, y, x)`` scene gives rows ``(band, detector)``):

1. The layout (:class:`~rastermatch._detectors.Detectors`) is resolved on the data: the
   detector of every line (``axis="y"``) or column (``axis="x"``) of the full image.
2. One statistics pass: the histogram of every (row, detector)
   (:func:`~rastermatch.histogram.detector_histograms`, whatever the chunking) and, for a
   reference given as data or a lazy histogram, the reference's histograms, in one
   ``dask.compute`` (plus the range passes that floats and occupied-level binnings need).
3. The reference of every base row (band, or date and band): ``"pooled"`` sums the counts of
   its detectors (the same counts, no second pass); a detector label takes that detector's
   histogram; anything :func:`~rastermatch.match_histograms` accepts as a reference is aligned
   to the base rows by label (:meth:`Rows.index_for <rastermatch._rows.Rows.index_for>`), as
   there.
4. One LUT row per (row, detector) with :meth:`LUT.from_histograms
   <rastermatch.LUT.from_histograms>` (the exact nearest-CDF rule by default); the LUT records
   the layout, so it saves, loads and re-applies to later scenes of the same sensor.
5. Application picks each pixel's LUT row by its detector
   (:func:`~rastermatch.apply.apply_lut_by_detector`), lazily for dask input.

A detector without a single valid pixel in a row (nodata columns at a scene's edge, say) is
mapped as its whole row would be: its source histogram in the LUT is the row's pooled one
(with the pooled reference, a map that leaves every level present in the row unchanged).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from typing import Any, Literal

import dask
import numpy as np
import xarray as xr

from ._data import BandArray, as_band_array
from ._detectors import Detectors
from ._rows import Rows, label_value, show_label
from .apply import apply_lut_by_detector, resolve_out_nodata
from .errors import DimensionError, NoValidPixelsError, OptionError
from .histogram import Histogram, detector_histograms
from .lut import LUT, Levels, Method, Objective
from .match import (
    MatchOptions,
    Reference,
    _item,
    _plan,
    _scheduler,
    _stack,
    _statistics,
    as_reference,
    reference_with_source_nodata,
)

__all__ = ["balance_detectors", "fit_detectors"]

Axis = Literal["y", "x"]

#: The row dim of the detectors: always the last one.
DETECTOR_DIM = "detector"
#: The reference that pools every detector of a row.
POOLED = "pooled"


def fit_detectors(
    data: Any,
    *,
    detectors: Any,
    axis: Axis = "y",
    offset: int = 0,
    reference: Any = POOLED,
    method: Method = "nearest",
    objective: Objective | None = None,
    proportion: float = 1.0,
    levels: Levels = "present",
    nodata: float | int | None = None,
    mask: Any = None,
    bins: int | None = None,
    dtype: Any = None,
    channel_axis: int | None = None,
    reference_nodata: float | int | None = None,
    reference_mask: Any = None,
) -> LUT:
    """The per-detector LUT that balances the detectors of ``data`` (see
    :func:`balance_detectors` for the arguments).

    The LUT's rows are the data's rows followed by ``detector``; ``lut.detectors`` holds the
    layout, so ``lut.apply(later_scene)`` maps a later scene of the same sensor (same size
    along ``axis``) detector by detector, and ``lut.save(path)`` keeps it. A LUT file holds at
    most :data:`rastermatch.schema.MAX_BANDS` rows and :data:`rastermatch.schema.MAX_CELLS`
    rows x bins, so the per-column LUT of a wide 16-bit push-broom scene (2,048 columns of
    4,000 occupied levels) is refused by :meth:`~rastermatch.LUT.save`, by name; it still
    applies in memory.

    Examples
    --------
    Two detectors, the second one reading 10 levels high:

    >>> import numpy as np
    >>> from rastermatch import fit_detectors
    >>> scene = np.array([[1, 2, 3], [11, 12, 13], [2, 3, 1], [12, 13, 11]], dtype=np.uint8)
    >>> lut = fit_detectors(scene, detectors=2, reference=0)
    >>> lut.rows.dims, lut.detectors
    (('detector',), Detectors(2 detectors along y))
    >>> lut.apply(scene + 1).tolist()  # a later scene, one level brighter
    [[2, 3, 3], [2, 3, 3], [3, 3, 2], [3, 3, 2]]
    """
    src, layout, index, lazy = _prepare(data, detectors, axis, offset, nodata, mask, channel_axis)
    options = MatchOptions(
        method=method, objective=objective, proportion=proportion, levels=levels, bins=bins,
        dtype=dtype,
    )  # fmt: skip
    ref = _reference(reference, src, layout, index, reference_nodata, reference_mask, channel_axis)
    return _fit(src, lazy, mask, layout, index, ref, options)


def balance_detectors(
    data: Any,
    *,
    detectors: Any,
    axis: Axis = "y",
    offset: int = 0,
    reference: Any = POOLED,
    method: Method = "nearest",
    objective: Objective | None = None,
    proportion: float = 1.0,
    levels: Levels = "present",
    nodata: float | int | None = None,
    mask: Any = None,
    bins: int | None = None,
    dtype: Any = None,
    channel_axis: int | None = None,
    reference_nodata: float | int | None = None,
    reference_mask: Any = None,
) -> Any:
    """Balance the detectors of a scanner: match every detector's histogram to a reference.

    Parameters
    ----------
    data
        What :func:`~rastermatch.match_histograms` takes as a source: numpy or dask
        ``(y, x)``, ``(band, y, x)``, a DataArray or Dataset, a ``(time, band, y, x)`` stack.
        Every row (band, date and band) is balanced on its own.
    detectors
        The detector layout along ``axis``: a number ``n`` (line ``i`` belongs to detector
        ``(i + offset) mod n``: Landsat TM 16, MSS 6, MODIS 10/20/40); ``None``, one detector
        per column (push-broom, with ``axis="x"``) or per line; one label per line or column
        (mirror sides, column groups); or a :class:`~rastermatch._detectors.Detectors`.
    axis
        ``"y"`` (detectors write lines) or ``"x"`` (detectors write columns).
    offset
        With a number of detectors: the detector of the first line (or column).
    reference
        ``"pooled"`` (default): every detector is matched to the histogram of all detectors of
        its row together. A detector label (``0``, ``"A"``): to that detector, left as it is.
        Anything :func:`~rastermatch.match_histograms` accepts as a reference (an array,
        DataArray, Dataset, a list of them, a :class:`~rastermatch.Histogram`): every detector
        of a row to the reference row of the same label (band to band).
    method, objective, proportion, levels, bins, dtype
        As for :func:`~rastermatch.match_histograms`: the LUT rule (``"nearest"``, ``"ceil"``,
        ``"interp"``, ``"optimal"`` with its ``objective``), the blend with the identity
        (``proportion``), ``levels="present"`` keeping every output a level the reference
        has, ``bins`` for floats and wide integers, the output dtype (default the
        reference's).
    nodata, mask
        Pixels equal to ``nodata`` (default the DataArray's), NaN and masked pixels (True) stay
        out of every detector's statistics; nodata pixels stay nodata, masked ones are mapped.
    channel_axis
        numpy/dask only, as for :func:`~rastermatch.match_histograms`.
    reference_nodata, reference_mask
        For a reference given as data, as for :func:`~rastermatch.match_histograms`.

    Returns
    -------
    The kind and layout that came in (a DataArray keeps coords, CRS and transform). Lazy for
    dask input: the statistics are computed now, in one pass, and the mapping is left lazy.

    Raises
    ------
    OptionError
        A bad layout (more detectors than lines, labels that do not cover the axis), axis,
        offset or reference label; RastermatchError subclasses for everything else, each
        naming the input and the row.

    Examples
    --------
    Four lines from two detectors; detector 1 reads everything one level high and doubles:

    >>> import numpy as np
    >>> from rastermatch import balance_detectors
    >>> scene = np.array([[1, 2, 3, 4], [3, 5, 7, 9], [4, 3, 2, 1], [9, 7, 5, 3]], np.uint8)
    >>> balance_detectors(scene, detectors=2, reference=0).tolist()
    [[1, 2, 3, 4], [1, 2, 3, 4], [4, 3, 2, 1], [4, 3, 2, 1]]

    A bundled Landsat 7 scene with 16 injected detector responses, balanced to all detectors
    pooled:

    >>> import rastermatch
    >>> striped = rastermatch.open_raster("data/striped_L7_ETMs.tif")
    >>> out = balance_detectors(striped, detectors=16)
    >>> out.dims, out.dtype.name, out.rio.crs == striped.rio.crs
    (('band', 'y', 'x'), 'uint8', True)
    """
    src, layout, index, lazy = _prepare(data, detectors, axis, offset, nodata, mask, channel_axis)
    options = MatchOptions(
        method=method, objective=objective, proportion=proportion, levels=levels, bins=bins,
        dtype=dtype,
    )  # fmt: skip
    ref = _reference(reference, src, layout, index, reference_nodata, reference_mask, channel_axis)
    lut = _fit(src, lazy, mask, layout, index, ref, options)
    return apply_detector_lut(src, lut, index)


def apply_detector_lut(src: BandArray, lut: LUT, index: np.ndarray) -> Any:
    """``src`` mapped through a per-detector ``lut`` fitted on it, ``index`` the detector of
    every line or column; the kind and layout that came in."""
    assert lut.detectors is not None
    nodata = src.nodata if src.nodata is not None else lut.nodata
    result = apply_lut_by_detector(
        src.array,
        lut,
        detector_index=index,
        axis=lut.detectors.axis,
        nodata=nodata,
        out_nodata=lut.out_nodata,
    )
    return src.wrap(result, nodata=lut.out_nodata)


# -- the steps --------------------------------------------------------------------------------


def _prepare(
    data: Any,
    detectors: Any,
    axis: Any,
    offset: Any,
    nodata: Any,
    mask: Any,
    channel_axis: Any,
) -> tuple[BandArray, Detectors, np.ndarray, BandArray]:
    """The normalized data, its detector layout, the detector of every line or column, and
    the data as the statistics pass reads it (dask-backed; numpy cut for local threads)."""
    if axis not in ("y", "x"):
        raise OptionError(
            f"axis must be 'y' (detectors write lines) or 'x' (detectors write columns), "
            f"not {axis!r}"
        )
    if isinstance(detectors, Detectors):
        if detectors.axis != axis:
            raise OptionError(
                f"the detector layout is along {detectors.axis!r} but axis={axis!r}; pass "
                f"axis={detectors.axis!r} with it"
            )
        if offset and offset != detectors.offset:
            raise OptionError(
                f"the detector layout has offset {detectors.offset} but offset={offset!r}; "
                "drop offset= (the layout carries its own)"
            )
    layout = Detectors.of(detectors, axis=axis, offset=offset)
    src = as_band_array(data, nodata=nodata, name="data", channel_axis=channel_axis)
    if DETECTOR_DIM in src.rows.dims:
        raise DimensionError(
            f"{src.name} already has a row dim named {DETECTOR_DIM!r} {src.rows.dims}; "
            "per-detector rows add it as the last one: rename it (data.rename(detector=...)) "
            "or select one"
        )
    size = src.array.shape[1] if axis == "y" else src.array.shape[2]
    what = "lines" if axis == "y" else "columns"
    if layout.count is not None and layout.count > size:
        raise OptionError(
            f"{layout.count} detectors along {axis} but {src.name} has {size} {what}; every "
            f"detector needs at least one of its {what}: check detectors= and axis="
        )
    index, _ = layout.resolve(size, src.name)
    return src, layout, index, _item(src, None, "mask").src


def _reference(
    reference: Any,
    src: BandArray,
    layout: Detectors,
    index: np.ndarray,
    reference_nodata: Any,
    reference_mask: Any,
    channel_axis: Any,
) -> int | Reference | None:
    """What the detectors are matched to: None (pooled), the position of a reference
    detector, or a resolved :class:`~rastermatch.match.Reference`."""
    data_like = isinstance(
        reference, np.ndarray | xr.DataArray | xr.Dataset | Histogram | list | tuple
    ) or hasattr(reference, "__dask_graph__")
    if not data_like and (reference_nodata is not None or reference_mask is not None):
        raise OptionError(
            "reference_nodata and reference_mask are for a reference given as data; the "
            "detectors' own statistics leave out nodata= and mask="
        )
    if isinstance(reference, str) and reference == POOLED:
        return None
    if data_like:
        return as_reference(
            reference, nodata=reference_nodata, mask=reference_mask, channel_axis=channel_axis
        )
    _, labels = layout.resolve(index.size, src.name)
    value = label_value(reference)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise OptionError(
            f"reference must be 'pooled', a detector label or a reference image or histogram, "
            f"not {type(reference).__name__}"
        )
    at = Rows((DETECTOR_DIM,), (labels,))
    for i, label in enumerate(at.coords[0]):
        if Rows((DETECTOR_DIM,), ((label,),)).same_as(Rows((DETECTOR_DIM,), ((value,),))):
            return i
    shown = ", ".join(show_label(v) for v in labels[:8]) + (", ..." if len(labels) > 8 else "")
    raise OptionError(
        f"reference={show_label(value)} is not a detector of {src.name} "
        f"({layout.describe()}: {shown}); pass 'pooled' or one of those labels"
    )


def _fit(
    src: BandArray,
    lazy: BandArray,
    mask: Any,
    layout: Detectors,
    index: np.ndarray,
    reference: int | Reference | None,
    options: MatchOptions,
) -> LUT:
    """Steps 2-4: the statistics pass, the reference per base row, one LUT row per detector."""
    _, labels = layout.resolve(index.size, src.name)
    plan = None
    if isinstance(reference, Reference):
        plan = _plan(src, reference, options)  # refuse a row mismatch before any work
    h_det = detector_histograms(lazy, index, labels, axis=layout.axis, mask=mask, bins=options.bins)
    h_det, h_given = _statistics_pass(src, h_det, reference, options)
    ndet = len(labels)
    nbase = src.rows.size
    pooled = h_det.sum(DETECTOR_DIM)
    for b in range(nbase):
        if pooled.total[b] == 0:
            raise src.no_valid_pixels(b)
    if reference is None:
        h_base = pooled
    elif isinstance(reference, int):
        h_base = h_det.isel(**{DETECTOR_DIM: reference})
        empty = np.flatnonzero(np.asarray(h_base.total) == 0)
        if empty.size:
            raise NoValidPixelsError(
                f"the reference detector {show_label(labels[reference])} has no valid pixels "
                f"in {src.describe(int(empty[0]))}; pass reference='pooled' or another detector"
            )
    else:
        assert plan is not None and h_given is not None
        h_base = (h_given.pool(list(plan.pooled)) if plan.pooled else h_given).take(
            plan.index.tolist(), rows=src.rows
        )
    h_src = _fill_empty(h_det, pooled, ndet)
    # every detector of a base row reads that row's reference by index (no copy per detector)
    lut = LUT.from_histograms(
        h_src,
        _narrow(h_base),
        method=options.method,
        levels=options.levels,
        dtype=options.dtype,
        objective=options.objective,
        proportion=options.proportion,
        reference_rows=np.repeat(np.arange(nbase), ndet),
    )
    preferred = h_base.nodata if h_base.nodata is not None else src.nodata
    out_nodata = resolve_out_nodata(lut, preferred, may_have_invalid=src.may_have_invalid)
    return replace(lut.with_nodata(src.nodata, out_nodata), detectors=layout)


def _statistics_pass(
    src: BandArray, h_det: Histogram, reference: Any, options: MatchOptions
) -> tuple[Histogram, Histogram | None]:
    """The detector histograms and the reference's (when given as data or a histogram),
    computed together."""
    scheduler = _scheduler(src)
    if not isinstance(reference, Reference):
        return _computed(h_det, scheduler), None
    if reference.histogram is not None:
        if not reference.histogram.is_lazy:
            return _computed(h_det, _scheduler(src)), reference.histogram
        done = dask.compute(
            h_det, reference.histogram, scheduler=_scheduler(src, reference.histogram)
        )
        return done[0], done[1]
    members = [reference_with_source_nodata(src, m) for m in reference.members]
    items = [
        _item(m, mask, "reference mask") for m, mask in zip(members, reference.masks, strict=True)
    ]
    hists, (h,) = _statistics(items, options.bins, _scheduler(src, *members), [h_det])
    given = _stack(hists, reference.rows, reference.name) if reference.stacked else hists[0]
    return h, given


def _computed(hist: Histogram, scheduler: str | None) -> Histogram:
    return dask.compute(hist, scheduler=scheduler)[0] if hist.is_lazy else hist


def _narrow(hist: Histogram) -> Histogram:
    """``hist`` with int32 counts when they fit (a pooled row is the sum of int32 detector
    rows), so the reference the LUT records per detector takes half the memory."""
    counts = np.asarray(hist.counts)
    if counts.dtype == np.int32 or _count_dtype(counts) != np.int32:
        return hist
    return _with_counts(hist, counts.astype(np.int32))


def _fill_empty(h_det: Histogram, pooled: Histogram, ndet: int) -> Histogram:
    """``h_det`` with every empty (row, detector) replaced by its row's pooled histogram
    (only those rows copied from it)."""
    empty = np.flatnonzero(np.asarray(h_det.total) == 0)
    if not empty.size:
        return h_det
    base = empty // ndet
    fill = np.asarray(pooled.counts)[base]
    counts = np.array(h_det.counts, dtype=np.result_type(h_det.counts, _count_dtype(fill)))
    counts[empty] = fill
    stats: dict[str, Any] = {}
    if h_det.has_stats and pooled.has_stats:
        for k in ("vmin", "vmax", "nmin"):
            stats[k] = np.array(getattr(h_det, k))
            stats[k][empty] = getattr(pooled, k)[base]
    return _with_counts(h_det, counts, **stats)


def _count_dtype(counts: np.ndarray) -> np.dtype:
    """int32 when every count fits, else int64."""
    return np.dtype(np.int32 if counts.size == 0 or counts.max() < 2**31 else np.int64)


def _with_counts(hist: Histogram, counts: np.ndarray, **stats: Any) -> Histogram:
    """``hist`` with other counts (and statistics, if given)."""
    if not stats and hist.has_stats:
        stats = {k: getattr(hist, k) for k in ("vmin", "vmax", "nmin")}
    return Histogram(
        counts,
        hist.binning,
        rows=hist.rows,
        nodata=hist.nodata,
        masked=hist.masked,
        name=hist.name,
        **stats,
    )


def detector_labels(lut: LUT) -> tuple[Hashable, ...]:
    """The detector labels of a per-detector LUT (its last row dim)."""
    return lut.rows.coords[-1]
