"""Histogram matching and equalization at the level users call: numpy, dask or xarray in and out.

Composes the three steps (histograms -> LUT -> application) for one scene or many: a time stack
``(time, band, y, x)``, a Dataset, several sources on different grids, onto one reference that
may itself be pooled from several scenes or given as a precomputed :class:`Histogram`.

How a job runs:

1. The reference is resolved (:func:`as_reference`): its member arrays and their row labels, or
   a histogram.
2. The broadcasting plan (per source): reference row dims the source lacks are pooled
   (:meth:`Rows.groups`), shared dims are aligned by label (:meth:`Rows.index_for`), source dims
   the reference lacks share it.
3. One statistics pass (:func:`fit_many`): every source row and every reference member are
   histogrammed in one ``dask.compute`` (two for floats and wide integers: every valid range,
   then every count, reference rows pooled together binned over the union of their ranges so
   that their counts add up).
4. One LUT per source, its rows the source's; application is one lazy graph in which each LUT
   table enters once (:func:`apply_arrays`).

Statistics and application are two passes, not one graph: a single graph in which the same
source chunks feed both the histograms and the application would keep the whole source in memory
until the LUT exists.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np

from . import direct
from ._data import BandArray, as_band_array, as_band_mask, as_dask
from ._rows import Rows, label_value, show_label
from ._values import nodata_fits
from .apply import apply_lut_array, resolve_out_nodata, row_index
from .errors import BandMismatchError, InputTypeError, NoValidPixelsError, OptionError
from .geometry import Overlap, check_overlap, prepare_overlap
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
    union_ranges,
)
from .lut import LEVELS, LUT, Levels, Method, Objective, check_option, check_out_dtype, check_rule

__all__ = [
    "MatchOptions",
    "Pool",
    "Reference",
    "apply_arrays",
    "as_reference",
    "equalize",
    "fit_arrays",
    "fit_lut",
    "fit_many",
    "fit_overlap",
    "match_histograms",
    "uniform_histogram",
]

Pool = Literal["counts", "cdf"]
POOLS = ("counts", "cdf")

#: The dim along which the members of a list of references are stacked (and then pooled).
REFERENCE_DIM = "reference"


# -- options ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MatchOptions:
    """How sources are matched: one value passed down instead of loose keywords.

    Attributes
    ----------
    method
        ``"nearest"`` (exact nearest-CDF rule), ``"ceil"`` (the generalized inverse CDF),
        ``"interp"`` (scikit-image's curve) or ``"optimal"`` (the monotone map minimising
        ``objective``); see :meth:`LUT.from_histograms <rastermatch.LUT.from_histograms>`.
    objective
        ``"ks"`` or ``"w1"``, with ``method="optimal"`` only (default there ``"w1"``).
    proportion
        The blend with the identity, ``src + proportion * (matched - src)``: 0 leaves the
        source unchanged, 1 (default) is the full match.
    levels
        ``"present"`` (outputs occur in the reference) or ``"all"``.
    bins
        Number of bins for floats and integers wider than 16 bits (None: 65,536).
    dtype
        Output dtype; None for the reference's.
    pool
        How reference rows are pooled: ``"counts"`` sums counts (scenes weighted by their valid
        pixels), ``"cdf"`` weights every pooled row equally (averaged CDFs).
    bands
        Source band label -> reference band label, e.g. ``{"red": "B04"}``; bands not named
        pair by label as usual.

    Examples
    --------
    >>> from rastermatch import MatchOptions
    >>> MatchOptions(method="interp", pool="cdf").pool
    'cdf'
    >>> MatchOptions(pool="mean")
    Traceback (most recent call last):
    ...
    rastermatch.errors.OptionError: pool must be one of 'counts', 'cdf', not 'mean'
    >>> MatchOptions(method="optimal").objective
    'w1'
    >>> MatchOptions(proportion=1.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rastermatch.errors.OptionError: proportion is 1.5; pass a number from 0 (the source ...
    """

    method: Method = "nearest"
    objective: Objective | None = None
    proportion: float = 1.0
    levels: Levels = "present"
    bins: int | None = None
    dtype: Any = None
    pool: Pool = "counts"
    bands: Mapping[Hashable, Hashable] | None = None

    def __post_init__(self) -> None:
        _, objective, proportion = check_rule(self.method, self.objective, self.proportion)
        object.__setattr__(self, "objective", objective)
        object.__setattr__(self, "proportion", proportion)
        check_option("levels", self.levels, LEVELS)
        check_option("pool", self.pool, POOLS)
        check_bins(self.bins)
        object.__setattr__(self, "dtype", check_out_dtype(self.dtype))
        if self.bands is not None:
            if not isinstance(self.bands, Mapping):
                raise OptionError(
                    f"bands must map source band labels to reference band labels, e.g. "
                    f"{{'red': 'B04'}}, not {type(self.bands).__name__}"
                )
            mapped = {label_value(k): label_value(v) for k, v in self.bands.items()}
            targets = list(mapped.values())
            twice = sorted({show_label(v) for v in targets if targets.count(v) > 1})
            if twice:
                raise OptionError(
                    f"bands maps several source bands onto reference band {', '.join(twice)}; "
                    "map every source band to a different reference band"
                )
            object.__setattr__(self, "bands", MappingProxyType(mapped))


# -- the reference ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Reference:
    """What sources are matched to: one input, several pooled, or a histogram.

    Build it with :func:`as_reference`. ``members`` are the normalized inputs (empty for a
    histogram reference), ``masks`` one raw mask (or None) per member, ``stacked`` says that
    the members are pooled as if stacked along a new dim :data:`REFERENCE_DIM`.
    """

    members: tuple[BandArray, ...] = ()
    masks: tuple[Any, ...] = ()
    histogram: Histogram | None = None
    stacked: bool = False
    name: str = field(default="reference")

    @property
    def rows(self) -> Rows:
        """The reference's rows: the histogram's, or the members' (with a leading
        ``reference`` dim for a list)."""
        if self.histogram is not None:
            return self.histogram.rows
        rows = self.members[0].rows
        if not self.stacked:
            return rows
        labels = tuple(range(len(self.members)))
        return Rows((REFERENCE_DIM, *rows.dims), (labels, *rows.coords))

    @property
    def nodata(self) -> Any:
        if self.histogram is not None:
            return self.histogram.nodata
        return self.members[0].nodata


def as_reference(
    reference: Any,
    *,
    nodata: float | int | None = None,
    mask: Any = None,
    name: str = "reference",
    channel_axis: int | None = None,
) -> Reference:
    """Resolve what a source is matched to.

    ``reference`` is an array, DataArray or Dataset (any rows), a :class:`Histogram` (lazy or
    concrete), or a list/tuple of arrays and DataArrays pooled into one reference as if
    stacked along a new dim. ``mask`` is one mask, or for a list one mask (or None) per member.
    ``nodata`` applies to every member.
    """
    if isinstance(reference, Histogram):
        if mask is not None or nodata is not None:
            raise OptionError(
                "a Histogram reference has its nodata and mask applied already; drop "
                "reference_nodata and reference_mask"
            )
        return Reference(histogram=reference, name=reference.name)
    if isinstance(reference, BandArray):
        return Reference((reference,), (mask,), name=reference.name)
    if not isinstance(reference, list | tuple):
        member = _member(reference, nodata, name, channel_axis)
        return Reference((member,), (mask,), name=member.name)
    if not reference:
        raise OptionError(f"the list of references is empty; pass at least one {name}")
    if mask is None or not isinstance(mask, list | tuple):
        if mask is not None and len(reference) > 1:
            raise OptionError(
                f"one reference_mask for {len(reference)} references; pass a list with one mask "
                "(or None) per reference"
            )
        masks = (mask,) * len(reference)
    else:
        masks = tuple(mask)
        if len(masks) != len(reference):
            raise OptionError(
                f"{len(masks)} reference masks for {len(reference)} references; pass one mask "
                "(or None) per reference"
            )
    members = tuple(
        r if isinstance(r, BandArray) else _member(r, nodata, f"{name} {i + 1}", channel_axis)
        for i, r in enumerate(reference)
    )
    first = members[0].rows
    for m in members[1:]:
        if not m.rows.same_as(first):
            raise BandMismatchError(
                f"{m.name} has rows {m.rows!r} {m.rows.labels()} and {members[0].name} "
                f"{first!r} {first.labels()}; pooled references need the same dims and labels "
                "(select the same bands from each)"
            )
    dtype = np.result_type(*(m.dtype for m in members))
    members = tuple(
        m if m.dtype == dtype else replace(m, array=m.array.astype(dtype)) for m in members
    )
    return Reference(members, masks, stacked=True, name=f"the {len(members)} references")


def _member(data: Any, nodata: Any, name: str, channel_axis: int | None) -> BandArray:
    if isinstance(data, Histogram):
        raise InputTypeError(
            f"{name} is a Histogram inside a list; pool histograms first (h1 + h2, or "
            "Histogram.sum) and pass the result"
        )
    return as_band_array(data, nodata=nodata, name=name, channel_axis=channel_axis)


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


def _scheduler(*inputs: Any) -> str | None:
    """numpy in: use local threads, never ship in-memory arrays to a cluster."""
    lazy = any(i.is_dask if isinstance(i, BandArray) else i.is_lazy for i in inputs)
    return None if lazy else "threads"


# -- the statistics pass ----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Item:
    """One input of the statistics pass: as given (``raw``, ``raw_mask``: numpy inputs take the
    in-memory path, :mod:`rastermatch.direct`), dask-backed (``src``, ``mask``, made when first
    asked for), its mask normalized, and for reference rows the key of the group whose rows
    share one bin range (None: each row its own)."""

    raw: BandArray
    raw_mask: Any
    share: np.ndarray | None = None

    @cached_property
    def src(self) -> BandArray:
        return replace(self.raw, array=as_dask(self.raw))

    @cached_property
    def mask(self) -> Any:
        m = self.raw_mask
        if m is not None and isinstance(m, np.ndarray):  # chunk a numpy mask like the data
            chunks = self.src.array.chunks
            m = da.from_array(
                m, chunks=(-1 if m.shape[0] == 1 else chunks[0], *chunks[1:]), name=False
            )
        return m


def _item(src: BandArray, mask: Any, what: str, share: np.ndarray | None = None) -> _Item:
    m = None if mask is None else as_band_mask(mask, src, name=what)
    return _Item(src, m, share)


def _statistics(
    items: Sequence[_Item], bins: int | None, scheduler: str | None, lazy: Sequence[Any] = ()
) -> tuple[list[Histogram], list[Any]]:
    """The histograms of ``items`` and the computed ``lazy`` collections, in one pass.

    Continuous data (floats, wide integers) needs every row's valid range before it can be
    binned: all ranges are computed together first, then all counts in a second pass. Rows that
    share a key get one range, the union of theirs, so that their counts can be pooled.
    """
    if not lazy and direct.covers([a for it in items for a in (it.raw.array, it.raw_mask)]):
        return direct.statistics([(it.raw, it.raw_mask, it.share) for it in items], bins), []
    binnings: list[Binning | None] = [
        default_binning(it.src.dtype, it.src.array.shape[0], bins=bins, range=None) for it in items
    ]
    need = [i for i, b in enumerate(binnings) if b is None]
    if need:
        computed = dask.compute(
            *(_ranges(items[i]) for i in need),
            scheduler=scheduler,
        )
        ranges = {i: np.asarray(r, dtype=np.float64) for i, r in zip(need, computed, strict=True)}
        shared = [i for i in ranges if items[i].share is not None]
        if shared:  # rows pooled together get the union of their ranges
            widened = union_ranges(
                np.concatenate([ranges[i] for i in shared]),
                np.concatenate([items[i].share for i in shared]),
            )
            at = np.cumsum([0] + [len(ranges[i]) for i in shared])
            for k, i in enumerate(shared):
                ranges[i] = widened[at[k] : at[k + 1]]
        nbins = DEFAULT_BINS if bins is None else bins
        for i, lohi in ranges.items():
            it = items[i]
            if it.share is not None:  # a group without valid pixels: refused where it is used
                lohi = np.where((lohi[:, :1] <= lohi[:, 1:]), lohi, 0.0)
            where = tuple(it.src.rows.describe(r) for r in range(it.src.rows.size))
            lohi = check_range(lohi, where, it.src.name)
            binnings[i] = Binning("uniform", it.src.dtype, nbins, lohi[:, 0], lohi[:, 1])
    hists = [binned_histogram(it.src, it.mask, b) for it, b in zip(items, binnings, strict=True)]
    done = dask.compute(*hists, *lazy, scheduler=scheduler)
    return list(done[: len(hists)]), list(done[len(hists) :])


def _ranges(item: _Item) -> Any:
    """The valid ``(min, max)`` of every row of ``item``, lazily."""
    # channel_axis=0: the flattened (row, y, x) array is row-first whatever its shape
    return band_ranges(item.src.array, nodata=item.src.nodata, mask=item.mask, channel_axis=0)


# -- the broadcasting plan --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Plan:
    """How one source meets the reference: the reference dims pooled away, and for every source
    row the pooled reference row that serves it."""

    pooled: tuple[str, ...]
    index: np.ndarray


def _plan(src: BandArray, reference: Reference, options: MatchOptions) -> _Plan:
    rows = reference.rows
    # bands are different quantities: a band dim is aligned or shared, never pooled implicitly
    pooled = tuple(d for d in rows.dims if d not in src.rows.dims and d != "band")
    _, kept = rows.groups(pooled)
    if "band" in kept.dims and "band" in src.rows.dims and not options.bands:
        have, theirs = src.rows.coord("band"), kept.coord("band")
        named = all(isinstance(b, str) for b in (*have, *theirs))
        if len(have) != len(theirs) and not named:  # band numbers: a subset is a mistake
            raise BandMismatchError(
                f"{src.name} has {len(have)} bands and {reference.name} has {len(theirs)}; "
                "select the same number of bands from each (--bands and --reference-bands on "
                "the command line)"
            )
    rename = _band_names(src, kept, options.bands)
    index = kept.index_for(src.rows, rename=rename, names=(reference.name, src.name))
    return _Plan(pooled, index)


def _band_names(
    src: BandArray, ref_rows: Rows, bands: Mapping[Hashable, Hashable] | None
) -> Mapping[Hashable, Hashable] | None:
    """Source band label -> reference band label: ``bands=`` as given (every key a source band),
    else position for two sets of band names with nothing in common (another sensor's names)."""
    have = src.rows.coord("band") if "band" in src.rows.dims else ()
    if bands:
        unknown = [k for k in bands if k not in have]
        if unknown:
            raise OptionError(
                f"bands= maps {', '.join(show_label(k) for k in unknown)}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not a band of {src.name} (its bands: "
                f"{', '.join(show_label(b) for b in have) or 'none'}); use the source's labels "
                "as keys"
            )
        return bands
    if not have or "band" not in ref_rows.dims:
        return None
    theirs = ref_rows.coord("band")
    named = all(isinstance(b, str) for b in (*have, *theirs))
    if named and len(have) == len(theirs) and not set(have) & set(theirs):
        return dict(zip(have, theirs, strict=True))
    return None


def _stack(hists: Sequence[Histogram], rows: Rows, name: str) -> Histogram:
    """The members' histograms as one, stacked along the rows' leading dim."""
    b = hists[0].binning
    binning = Binning(
        b.kind, b.dtype, b.nbins,
        np.concatenate([h.binning.lo for h in hists]),
        np.concatenate([h.binning.hi for h in hists]),
    )  # fmt: skip
    stats = {}
    if all(h.has_stats for h in hists):
        stats = {
            k: np.concatenate([getattr(h, k) for h in hists]) for k in ("vmin", "vmax", "nmin")
        }
    nodatas = {
        ("nan" if isinstance(h.nodata, float) and np.isnan(h.nodata) else h.nodata) for h in hists
    }
    return Histogram(
        np.concatenate([h.counts for h in hists]),
        binning,
        rows=rows,
        nodata=hists[0].nodata if len(nodatas) == 1 else None,
        masked=any(h.masked for h in hists),
        name=name,
        **stats,
    )


def _lut(src: BandArray, h_src: Histogram, h_ref: Histogram, options: MatchOptions) -> LUT:
    lut = LUT.from_histograms(
        h_src,
        h_ref,
        method=options.method,
        levels=options.levels,
        dtype=options.dtype,
        objective=options.objective,
        proportion=options.proportion,
    )
    preferred = h_ref.nodata if h_ref.nodata is not None else src.nodata
    out_nodata = resolve_out_nodata(lut, preferred, may_have_invalid=src.may_have_invalid)
    return lut.with_nodata(src.nodata, out_nodata)


# -- entry points for the pipeline ------------------------------------------------------------


def fit_many(
    sources: Sequence[BandArray],
    reference: Reference,
    options: MatchOptions,
    *,
    masks: Sequence[Any] | None = None,
    also: Sequence[Any] = (),
    computed: list[Any] | None = None,
) -> list[LUT]:
    """The LUTs matching every source to one reference, from ONE statistics pass.

    Every source row and every reference member are histogrammed in one ``dask.compute`` (two
    for floats: ranges, then counts), so each is read once whatever the number of sources.
    LUT ``i`` has the rows of ``sources[i]``; its ``source_hist`` is that source's histogram
    and its ``reference_hist`` the (pooled) reference aligned to the source's rows. The
    sources may lie on different grids and have different rows. ``also``: more lazy collections
    computed in the same pass (the overlap's pixel counts), their values appended to
    ``computed``.
    """
    sources = list(sources)
    if not sources:
        raise OptionError("no sources to fit; pass at least one")
    masks = [None] * len(sources) if masks is None else list(masks)
    if len(masks) != len(sources):
        raise OptionError(f"{len(masks)} masks for {len(sources)} sources; pass one per source")
    plans = [_plan(src, reference, options) for src in sources]  # refuse before any work
    items = [_item(s, m, "mask") for s, m in zip(sources, masks, strict=True)]
    lazy: list[Any] = []
    if reference.histogram is not None:
        lazy = [reference.histogram] if reference.histogram.is_lazy else []
        scheduler = _scheduler(*sources, reference.histogram)
    else:
        donor = next((s for s in sources if s.nodata_given), sources[0])
        members = [reference_with_source_nodata(donor, m) for m in reference.members]
        # rows pooled for any source share one bin range (the union of theirs)
        pooled = {d for p in plans for d in p.pooled}
        share, _ = reference.rows.groups([d for d in reference.rows.dims if d in pooled])
        per = share.size // len(members)
        for k, (m, mask) in enumerate(zip(members, reference.masks, strict=True)):
            items.append(_item(m, mask, "reference mask", share[k * per : (k + 1) * per]))
        scheduler = _scheduler(*sources, *members)
    hists, done = _statistics(items, options.bins, scheduler, [*lazy, *also])
    if computed is not None:
        computed.extend(done[len(lazy) :])
    if reference.histogram is not None:
        full = done[0] if lazy else reference.histogram
    elif reference.stacked:
        full = _stack(hists[len(sources) :], reference.rows, reference.name)
    else:
        full = hists[len(sources)]
    pooled_by: dict[tuple[str, ...], Histogram] = {}
    luts = []
    for src, h_src, plan in zip(sources, hists[: len(sources)], plans, strict=True):
        if plan.pooled not in pooled_by:
            pooled_by[plan.pooled] = (
                full.pool(list(plan.pooled), how=options.pool) if plan.pooled else full
            )
        h_ref = pooled_by[plan.pooled].take(plan.index, rows=src.rows)
        luts.append(_lut(src, h_src, h_ref, options))
    return luts


def fit_arrays(
    src: BandArray, reference: Reference, options: MatchOptions, *, mask: Any = None
) -> LUT:
    """The LUT matching one normalized source to ``reference`` (see :func:`fit_many`)."""
    return fit_many([src], reference, options, masks=[mask])[0]


def fit_overlap(
    src: BandArray,
    reference: Reference,
    options: MatchOptions,
    *,
    mask: Any = None,
    overlap: Overlap = True,
) -> LUT:
    """The LUT of :func:`fit_arrays` from the pixels valid in both ``src`` and ``reference``
    (:func:`rastermatch.geometry.prepare_overlap`: a reference on another grid is laid onto
    the source's for the statistics), in one pass that also counts the common pixels: none is
    a :class:`~rastermatch.errors.GeometryError`, few an
    :class:`~rastermatch.errors.OverlapWarning`."""
    if reference.histogram is not None:
        raise OptionError(
            f"overlap needs the reference's pixels, and {reference.name} is a histogram; pass "
            "the reference raster, or match without overlap"
        )
    members = [reference_with_source_nodata(src, m) for m in reference.members]
    prepared = prepare_overlap(src, mask, members, reference.masks, overlap, reference.name)
    ref = replace(reference, members=prepared.members, masks=prepared.masks)
    counts: list[Any] = []
    try:
        lut = fit_many([prepared.source], ref, options, masks=[prepared.mask],
                       also=prepared.counts, computed=counts)[0]  # fmt: skip
    except NoValidPixelsError as exc:
        raise prepared.no_common_pixels(exc) from exc
    prepared.check(counts)
    return lut


def apply_arrays(src: BandArray, lut: LUT) -> Any:
    """``src`` mapped through ``lut`` (nodata to ``lut.out_nodata``), in the kind and layout
    that came in: lazy for dask input (one graph, the table in it once), threaded for numpy.
    The LUT's rows meet the source's by label, so a band LUT maps every date of a stack."""
    index = row_index(lut, src.rows, src.name, labelled=src.template is not None)
    nodata = src.nodata if src.nodata is not None else lut.nodata
    if direct.covers([src.array]) and getattr(lut, "detectors", None) is None:
        result = direct.apply_lut(src.array, lut, nodata=nodata, out_nodata=lut.out_nodata,
                                  index=index)  # fmt: skip
        return src.wrap(result, nodata=lut.out_nodata)
    result = apply_lut_array(src.array, lut, nodata=nodata, out_nodata=lut.out_nodata, index=index)
    return src.wrap(result, nodata=lut.out_nodata)


# -- the functions users call -----------------------------------------------------------------


def fit_lut(
    source: Any,
    reference: Any,
    *,
    method: Method = "nearest",
    levels: Levels = "present",
    objective: Objective | None = None,
    proportion: float = 1.0,
    nodata: float | int | None = None,
    reference_nodata: float | int | None = None,
    mask: Any = None,
    reference_mask: Any = None,
    bins: int | None = None,
    dtype: Any = None,
    pool: Pool = "counts",
    bands: Mapping[Hashable, Hashable] | None = None,
    channel_axis: int | None = None,
    overlap: Overlap = False,
) -> LUT:
    """The LUT that matches ``source`` to ``reference``, computing both histograms in one pass.

    Takes the arguments of :func:`match_histograms` (an explicit ``nodata`` also applies to a
    reference without nodata of its own; ``overlap`` too); the returned
    :class:`~rastermatch.LUT` has the source's rows and records the histograms, the nodata
    values and the output nodata, ready to :meth:`~rastermatch.LUT.apply` or
    :meth:`~rastermatch.LUT.save`.

    Examples
    --------
    A LUT fitted on one band applies to every date of a stack:

    >>> import numpy as np
    >>> from rastermatch import fit_lut
    >>> lut = fit_lut(np.array([[10, 20, 30]], dtype=np.uint8), np.array([[1, 2, 3]], np.uint8))
    >>> lut.apply(np.array([[[30, 10]], [[20, 20]]], dtype=np.uint8)[:, None]).tolist()
    [[[[3, 1]]], [[[2, 2]]]]
    """
    options = MatchOptions(
        method=method, objective=objective, proportion=proportion, levels=levels, bins=bins,
        dtype=dtype, pool=pool, bands=bands,
    )  # fmt: skip
    src = as_band_array(source, nodata=nodata, name="source", channel_axis=channel_axis)
    ref = as_reference(
        reference, nodata=reference_nodata, mask=reference_mask, channel_axis=channel_axis
    )
    if check_overlap(overlap) is not False:
        return fit_overlap(src, ref, options, mask=mask, overlap=overlap)
    return fit_arrays(src, ref, options, mask=mask)


def match_histograms(
    source: Any,
    reference: Any,
    *,
    method: Method = "nearest",
    levels: Levels = "present",
    objective: Objective | None = None,
    proportion: float = 1.0,
    nodata: float | int | None = None,
    reference_nodata: float | int | None = None,
    mask: Any = None,
    reference_mask: Any = None,
    bins: int | None = None,
    dtype: Any = None,
    pool: Pool = "counts",
    bands: Mapping[Hashable, Hashable] | None = None,
    channel_axis: int | None = None,
    overlap: Overlap = False,
) -> Any:
    """Match the histogram of every row (band, date and band, ...) of ``source`` to ``reference``.

    Both inputs are histogrammed (one read of each, computed together), a :class:`~rastermatch.LUT`
    row is built per source row, and the source is mapped through it.

    Parameters
    ----------
    source
        numpy or dask array, DataArray or Dataset. Every dim but the two spatial ones (``y``/``x``,
        ``latitude``/``longitude``, ``lat``/``lon``, found by name) is a row dim: ``(band, y,
        x)``, a time stack ``(time, band, y, x)`` (what odc-stac and stackstac give), ``(y,
        x)``. A Dataset's variables are its bands. numpy: 2-D is ``(y, x)``, 3-D ``(band, y,
        x)`` unless ``channel_axis`` says otherwise.
    reference
        What the rows are matched to: an array, DataArray or Dataset; a
        :class:`~rastermatch.Histogram` (precomputed, lazy or not); or a list of arrays or
        DataArrays pooled into one reference. Shapes, grids and dtypes may differ from the
        source: histograms ignore geometry. Rows meet by label: dims both have are aligned
        (date to date, band to band; band numbers of two selections, or two sets of band
        names with nothing in common, pair by position); reference dims the source lacks are
        pooled (a list of references counts as one more such dim; bands are never pooled:
        select one); source dims the reference lacks share it (one reference for every date).
    method
        ``"nearest"`` (default): the nearest-CDF rule, exact, ties to the smallest level; for
        floats too, every output is a value of the reference and a scene matched to itself is
        unchanged. ``"ceil"``: the generalized inverse CDF, ``min{q : F_ref(q) >= F_src(p)}``,
        exact, outputs as for nearest. ``"interp"``: scikit-image's piecewise-linear mapping
        (integers rounded to nearest), equal to it wherever each histogram bin holds one
        distinct value (see :meth:`LUT.from_histograms <rastermatch.LUT.from_histograms>` for
        the bound otherwise). ``"optimal"``: the monotone map minimising ``objective``.
    objective
        With ``method="optimal"`` only: ``"ks"`` (the largest CDF gap) or ``"w1"`` (default;
        the L1 distance between the CDFs, 1-D Wasserstein).
    proportion
        From 0 to 1: every output is ``src + proportion * (matched - src)`` (integers rounded
        to nearest, half to even); 0 is the source unchanged, 1 (default) the full match.
        Whether a blend means something is the caller's call (see
        :meth:`LUT.from_histograms <rastermatch.LUT.from_histograms>`); one the output dtype
        cannot hold is refused.
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
        transformed. For a list of references, one mask (or None) per reference.
    bins
        Number of bins for floats and integers wider than 16 bits (default 65,536).
    dtype
        Output dtype; default the reference's. An integer dtype that cannot hold the outputs
        raises :class:`~rastermatch.errors.OptionError` instead of clipping them.
    pool
        How pooled reference rows combine: ``"counts"`` (default) sums their counts, so every
        scene weighs by its valid pixels; ``"cdf"`` weighs every pooled scene equally
        (averaged CDFs). They differ when the scenes' nodata (cloud) fractions differ.
    bands
        Source band label -> reference band label, e.g. ``{"red": "B04", "nir": "B08"}`` (a
        Dataset's variable names are its band labels).
    channel_axis
        numpy/dask input only: the axis of the bands, as scikit-image's keyword (``-1`` for
        ``(y, x, c)``); applies to source and reference. A 3-D array that looks channel-last
        without it is refused.
    overlap
        ``False`` (default): each input's statistics from all its valid pixels. ``True``: only
        from the pixels valid in both (in every band, not nodata, not masked): co-registered
        scenes with different clouds or footprints. A reference on another grid (CRS,
        transform, size) is laid onto the source's grid by nearest neighbour for the statistics
        only (lazily; no new values; the output stays on the source grid, its values from the
        LUT). A stack counts each date's own common area; ``"all"``: only the pixels valid in
        every date. numpy inputs have no georeferencing: they must have the same size. Footprints
        or valid areas that do not meet raise :class:`~rastermatch.errors.GeometryError`; a
        common area under 10% of the source's valid pixels warns
        (:class:`~rastermatch.errors.OverlapWarning`). See :mod:`rastermatch.geometry`.

    Returns
    -------
    The kind and layout that came in. numpy in: numpy out, computed with local threads. A
    dask-backed input gives a lazy result: the statistics are computed now, in one pass over
    both inputs, and the mapping is left lazy (one graph, each LUT table in it once), so writing
    the result reads the source a second time and memory stays bounded by the blocks in flight.
    A DataArray keeps its coords (CRS, transform), dims, row labels and attrs, with the output
    nodata written; a Dataset comes back a Dataset.

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

    A time stack onto one reference, in one pass; every date keeps its label (the second date
    is the first one twice as bright, so both come out the same):

    >>> import xarray as xr
    >>> stack = xr.concat([src, src * 2], dim="time").assign_coords(
    ...     time=np.array(["2020-01-01", "2020-02-01"], dtype="datetime64[ns]"))
    >>> out = match_histograms(stack.chunk({"y": 256}), ref, nodata=0)
    >>> out.dims, bool((out.isel(time=0) == out.isel(time=1)).all())
    (('time', 'band', 'y', 'x'), True)

    A reference pooled from two scenes: summed counts weigh the three pixels of ``a`` three
    times as much as the one of ``b``; averaged CDFs weigh the two scenes equally. A
    precomputed histogram serves as well:

    >>> a, b = np.array([[1, 1, 2]], np.uint8), np.array([[3]], np.uint8)
    >>> source = np.array([[5, 6, 7, 8]], np.uint8)
    >>> match_histograms(source, [a, b]).tolist(), match_histograms(source, [a, b], pool="cdf")
    ([[1, 1, 2, 3]], array([[1, 2, 2, 3]], dtype=uint8))
    >>> h = rastermatch.band_histograms(np.concatenate([a, b], axis=1))
    >>> match_histograms(source, h).tolist()
    [[1, 1, 2, 3]]

    Floats: a scene matched to itself comes back unchanged, with either method.

    >>> x = np.array([[0.0, 1.0, 2.0, 3.0, 100.0]])
    >>> match_histograms(x, x).tolist(), match_histograms(x, x, method="interp").tolist()
    ([[0.0, 1.0, 2.0, 3.0, 100.0]], [[0.0, 1.0, 2.0, 3.0, 100.0]])
    """
    options = MatchOptions(
        method=method, objective=objective, proportion=proportion, levels=levels, bins=bins,
        dtype=dtype, pool=pool, bands=bands,
    )  # fmt: skip
    src = as_band_array(source, nodata=nodata, name="source", channel_axis=channel_axis)
    ref = as_reference(
        reference, nodata=reference_nodata, mask=reference_mask, channel_axis=channel_axis
    )
    if check_overlap(overlap) is not False:
        lut = fit_overlap(src, ref, options, mask=mask, overlap=overlap)
    else:
        out = _match_occupied(src, ref, options, mask)
        if out is not None:  # the LUT's output nodata for a float output without nodata
            return src.wrap(out, nodata=float("nan"))
        lut = fit_arrays(src, ref, options, mask=mask)
    return apply_arrays(src, lut)


def _match_occupied(src: BandArray, reference: Reference, options: MatchOptions, mask: Any) -> Any:
    """A small in-memory float scene matched from its occupied bins only
    (:func:`rastermatch.direct.match_occupied`: the bytes :func:`fit_arrays` and
    :func:`apply_arrays` give); None where that path does not apply."""
    if (
        reference.histogram is not None
        or reference.stacked
        or src.is_dask
        or src.dtype.kind != "f"
        or src.array.size >= direct.SMALL_PIXELS
    ):
        return None
    plan = _plan(src, reference, options)
    if plan.pooled:
        return None
    member = reference_with_source_nodata(src, reference.members[0])
    m = None if mask is None else as_band_mask(mask, src, name="mask")
    rm = reference.masks[0]
    rm = None if rm is None else as_band_mask(rm, member, name="reference mask")
    return direct.match_occupied(
        src, m, member, rm, plan.index, method=options.method, levels=options.levels,
        proportion=options.proportion, bins=options.bins, dtype=options.dtype,
    )  # fmt: skip


def uniform_histogram(hist: Histogram, *, range: Any = None, bins: int | None = None) -> Histogram:
    """A uniform reference for equalization: one count on every level (or bin) of each row's range.

    ``range=None`` takes each row's valid data range from ``hist``.
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
    return Histogram(counts, ref_binning, rows=hist.rows, nodata=hist.nodata)


def equalize(
    data: Any,
    *,
    nodata: float | int | None = None,
    mask: Any = None,
    bins: int | None = None,
    range: Any = None,
    dtype: Any = None,
    channel_axis: int | None = None,
    method: Method = "nearest",
    objective: Objective | None = None,
    proportion: float = 1.0,
) -> Any:
    """Histogram equalization: matching to a uniform reference (exact nearest-CDF rule).

    Every row (band, or date and band of a stack) is equalized on its own. The uniform
    reference spans each row's valid data range, or ``range=(lo, hi)`` (for example the
    dtype's, ``(0, 255)``; finite, ``lo < hi``, else :class:`~rastermatch.errors.OptionError`
    before any work). ``nodata`` (default the DataArray's) is left out of the statistics and
    stays nodata. Takes what :func:`match_histograms` takes as source (``channel_axis`` too);
    returns the kind that came in; lazy for dask-backed input. ``method``, ``objective`` and
    ``proportion`` choose the rule and the blend with the identity as in
    :func:`match_histograms` (``proportion=0.5``: half-way to the equalized image).

    Examples
    --------
    >>> import numpy as np
    >>> from rastermatch import equalize
    >>> equalize(np.array([[0, 0, 0, 1, 1, 2, 3, 4]], dtype=np.uint8), range=(0, 7)).tolist()
    [[2, 2, 2, 4, 4, 5, 6, 7]]
    >>> equalize(np.zeros((4, 2, 3), np.uint8) + [0, 1, 2], channel_axis=0).shape
    (4, 2, 3)
    >>> equalize(np.array([[0, 0, 0, 1, 1, 2, 3, 4]], np.uint8), range=(0, 7), proportion=0.5)
    array([[1, 1, 1, 2, 2, 4, 4, 6]], dtype=uint8)
    """
    options = MatchOptions(
        bins=bins, dtype=dtype, method=method, objective=objective, proportion=proportion
    )
    src = as_band_array(data, nodata=nodata, name="data", channel_axis=channel_axis)
    if range is not None:
        split_range(range, src.rows.size)
    (h_src,), _ = _statistics([_item(src, mask, "mask")], options.bins, _scheduler(src))
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
        method=options.method,
        levels="present",
        dtype=src.dtype if options.dtype is None else options.dtype,
        objective=options.objective,
        proportion=options.proportion,
    )
    out_nodata = resolve_out_nodata(lut, src.nodata, may_have_invalid=src.may_have_invalid)
    return apply_arrays(src, lut.with_nodata(src.nodata, out_nodata))
