"""Labelled rows: every dim of an input except its two spatial ones.

A scene ``(band, y, x)`` has one row per band; a time stack ``(time, band, y, x)`` one row per
(date, band); a 2-D image one unlabelled row. Histograms, LUTs and the normalized input all keep
their rows as one flat axis (row ``i`` is the C-order flattening of the dims' labels, as
``np.ravel_multi_index``), so the compiled kernels loop over axis 0 whatever the dims are, and
:class:`Rows` says what each row is.

Two inputs meet through :meth:`Rows.index_for`: for every row of a target (the source scene, the
data a LUT is applied to) it names the row of this one that serves it. Dims both have are
aligned by label (date to date, band to band); dims only the target has share one row (a
single reference for every date). Dims only this one has must first be pooled away
(:meth:`Rows.groups` gives the pooling), or be of length 1.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BandMismatchError, OptionError

__all__ = ["Rows", "label_value", "show_label"]


def label_value(value: Any) -> Hashable:
    """A coordinate label as a plain hashable value: numpy scalars become Python ones, except
    dates and durations, which stay ``np.datetime64`` / ``np.timedelta64`` (``.item()`` would
    turn nanosecond dates into integers)."""
    if isinstance(value, np.datetime64 | np.timedelta64):
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def show_label(value: Hashable) -> str:
    """How a message shows a label: ``'red'``, ``3``, ``2020-01-01``."""
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="auto"))
    return repr(value)


@dataclass(frozen=True, eq=False)
class Rows:
    """The labelled leading dims of a histogram, a LUT or an input.

    Attributes
    ----------
    dims
        Dim names in order, e.g. ``("time", "band")``; ``()`` for a single unlabelled row
        (a 2-D image).
    coords
        One tuple of labels per dim.

    Examples
    --------
    >>> rows = Rows(("time", "band"), ((2020, 2021), ("red", "nir")))
    >>> rows.size, rows.labels()
    (4, ((2020, 'red'), (2020, 'nir'), (2021, 'red'), (2021, 'nir')))
    >>> rows.describe(3)
    "time 2021, band 'nir'"
    >>> Rows.bands(["red", "nir"]).index_for(rows).tolist()  # one band row serves every date
    [0, 1, 0, 1]
    """

    dims: tuple[str, ...]
    coords: tuple[tuple[Hashable, ...], ...]

    def __post_init__(self) -> None:
        dims = tuple(self.dims)
        coords = tuple(tuple(label_value(v) for v in c) for c in self.coords)
        if len(dims) != len(coords):
            raise OptionError(f"rows have {len(dims)} dims {dims} but {len(coords)} coordinates")
        if len(set(dims)) != len(dims) or not all(isinstance(d, str) for d in dims):
            raise OptionError(f"row dims must be distinct names, not {dims}")
        for d, c in zip(dims, coords, strict=True):
            if not c:
                raise OptionError(f"dim {d!r} has no labels; every row dim needs at least one")
        object.__setattr__(self, "dims", dims)
        object.__setattr__(self, "coords", coords)

    # -- construction
    @classmethod
    def bands(cls, labels: Iterable[Hashable]) -> Rows:
        """One dim, ``band``, with these labels."""
        return cls(("band",), (tuple(labels),))

    @classmethod
    def single(cls) -> Rows:
        """One unlabelled row: a 2-D image."""
        return cls((), ())

    # -- shape and labels
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.coords)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def coord(self, dim: str) -> tuple[Hashable, ...]:
        """The labels of ``dim``."""
        return self.coords[self._axis(dim)]

    def labels(self) -> tuple[Hashable, ...]:
        """One label per row: the dim's labels for one dim, else a tuple of labels per row
        (the empty tuple for the single row of a 2-D image)."""
        if len(self.dims) == 1:
            return self.coords[0]
        return tuple(self.label(i) for i in range(self.size))

    def label(self, index: int) -> tuple[Hashable, ...]:
        """The labels of row ``index``, one per dim."""
        at = np.unravel_index(index, self.shape) if self.dims else ()
        return tuple(c[int(i)] for c, i in zip(self.coords, at, strict=True))

    def describe(self, index: int) -> str:
        """Row ``index`` for a message: ``band 3``, ``time 2020-01-01, band 'red'``, or ``""``
        for the single row of a 2-D image."""
        return ", ".join(
            f"{d} {show_label(v)}" for d, v in zip(self.dims, self.label(index), strict=True)
        )

    def same_as(self, other: Rows) -> bool:
        return self.dims == other.dims and all(
            len(a) == len(b) and all(_same_label(x, y) for x, y in zip(a, b, strict=True))
            for a, b in zip(self.coords, other.coords, strict=True)
        )

    def __repr__(self) -> str:
        inner = ", ".join(f"{d}: {len(c)}" for d, c in zip(self.dims, self.coords, strict=True))
        return f"Rows({inner or 'single'})"

    # -- selection and pooling
    def isel(self, **indexers: int | slice | Sequence[int]) -> tuple[np.ndarray, Rows]:
        """The flat row indices selected by position along dims, and the rows they make.

        An integer drops its dim (as xarray's ``isel``); a slice or a list keeps it.
        """
        grids: list[np.ndarray] = []
        dims, coords = [], []
        for d, c in zip(self.dims, self.coords, strict=True):
            sel = indexers.pop(d, slice(None))
            positions = np.arange(len(c))[sel]
            if np.ndim(positions) == 0:
                grids.append(np.array([int(positions)]))
                continue
            if positions.size == 0:
                raise OptionError(f"the selection along {d!r} is empty")
            grids.append(positions)
            dims.append(d)
            coords.append(tuple(c[int(i)] for i in positions))
        if indexers:
            raise OptionError(f"no row dim {sorted(indexers)!r}; the rows have dims {self.dims}")
        mesh = np.meshgrid(*grids, indexing="ij") if grids else []
        flat = (
            np.ravel_multi_index([m.ravel() for m in mesh], self.shape)
            if self.dims
            else np.zeros(1, dtype=np.int64)
        )
        return flat.astype(np.int64), Rows(tuple(dims), tuple(coords))

    def sel(self, **indexers: Any) -> tuple[np.ndarray, Rows]:
        """As :meth:`isel`, by label: a label drops its dim, a list of labels keeps it."""
        positions: dict[str, Any] = {}
        for d, want in indexers.items():
            labels = self.coord(d) if d in self.dims else None
            if labels is None:
                raise OptionError(f"no row dim {d!r}; the rows have dims {self.dims}")
            many = isinstance(want, list | tuple | np.ndarray)
            found = [self._position(d, labels, w) for w in (want if many else [want])]
            positions[d] = found if many else found[0]
        return self.isel(**positions)

    def groups(self, pooled: Iterable[str]) -> tuple[np.ndarray, Rows]:
        """Pool away ``pooled`` dims: for every row, the index of its group among the rows
        that remain (the other dims, in order), and those rows."""
        pooled = tuple(pooled)
        for d in pooled:
            self._axis(d)
        keep = [i for i, d in enumerate(self.dims) if d not in pooled]
        rows = Rows(tuple(self.dims[i] for i in keep), tuple(self.coords[i] for i in keep))
        if not self.dims:
            return np.zeros(1, dtype=np.int64), rows
        at = np.unravel_index(np.arange(self.size), self.shape)
        if not keep:
            return np.zeros(self.size, dtype=np.int64), rows
        group = np.ravel_multi_index([at[i] for i in keep], rows.shape)
        return group.astype(np.int64), rows

    def index_for(
        self,
        target: Rows,
        *,
        rename: Mapping[Hashable, Hashable] | None = None,
        names: tuple[str, str] = ("the reference", "the source"),
    ) -> np.ndarray:
        """For every row of ``target``, the row of ``self`` that serves it.

        Dims both have are aligned by label. The ``band`` dim falls back to position when the
        labels differ but the counts agree and the labels are not all strings (band numbers
        of two different selections: ``--bands 2,3,4`` onto ``--reference-bands 1,2,3``).
        ``rename`` maps target band labels to this one's (``{"red": "B04"}``); with it bands
        never meet by position: every mapped label must name a band of this one, unmapped
        target bands meet by their own label, and no two target bands may meet one band of
        this one. Dims only
        ``target`` has share one row; dims only ``self`` has must be of length 1 (pool them
        first with :meth:`groups`). ``names`` (this, target) name the two in messages.
        """
        mine, theirs = names
        for d, c in zip(self.dims, self.coords, strict=True):
            if d not in target.dims and len(c) > 1:
                raise BandMismatchError(
                    f"{mine} has {len(c)} {d} labels and {theirs} has no {d!r} dim; "
                    f"pool it first (hist.sum({d!r})) or select one {d}"
                )
        index = np.zeros(target.size, dtype=np.int64)
        at = np.unravel_index(np.arange(target.size), target.shape) if target.dims else ()
        for axis, (d, c) in enumerate(zip(self.dims, self.coords, strict=True)):
            if d not in target.dims:
                continue  # length 1: position 0
            t_axis = target.dims.index(d)
            wanted = target.coords[t_axis]
            mapped = d == "band" and bool(rename)
            if mapped:
                wanted = _renamed(c, wanted, rename, (mine, theirs))  # type: ignore[arg-type]
            positions = self._align(d, c, wanted, (mine, theirs), by_position=not mapped)
            index += positions[at[t_axis]] * math.prod(self.shape[axis + 1 :])
        return index

    # -- helpers
    def _axis(self, dim: str) -> int:
        if dim not in self.dims:
            raise OptionError(f"no row dim {dim!r}; the rows have dims {self.dims}")
        return self.dims.index(dim)

    @staticmethod
    def _position(dim: str, labels: tuple[Hashable, ...], want: Any) -> int:
        want = label_value(want)
        if isinstance(want, str) and labels and isinstance(labels[0], np.datetime64):
            want = np.datetime64(want)
        hits = [i for i, v in enumerate(labels) if _same_label(v, want)]
        if not hits:
            raise OptionError(f"{dim} {show_label(want)} is not one of the labels of {dim!r}")
        return hits[0]

    @staticmethod
    def _align(
        dim: str,
        have: tuple[Hashable, ...],
        wanted: tuple[Hashable, ...],
        names: tuple[str, str],
        *,
        by_position: bool = True,
    ) -> np.ndarray:
        mine, theirs = names
        lookup: dict[Hashable, int] = {}
        for i, v in enumerate(have):
            lookup.setdefault(_key(v), i)
        missing = [w for w in wanted if _key(w) not in lookup]
        if not missing and len(lookup) == len(have):
            return np.array([lookup[_key(w)] for w in wanted], dtype=np.int64)
        all_named = all(isinstance(v, str) for v in (*have, *wanted))
        if by_position and dim == "band" and len(have) == len(wanted) and not all_named:
            return np.arange(len(have), dtype=np.int64)
        if len(lookup) != len(have):
            raise BandMismatchError(
                f"{mine} has repeated {dim} labels {list(map(show_label, have))}; "
                "give every row a distinct label"
            )
        shown = ", ".join(show_label(w) for w in missing[:5])
        raise BandMismatchError(
            f"{dim} {shown} of {theirs} {'is' if len(missing) == 1 else 'are'} not among the "
            f"{dim} labels of {mine} ({', '.join(show_label(v) for v in have[:8])}"
            f"{', ...' if len(have) > 8 else ''}); select matching {dim}s"
            + (", or map band names with bands={...}" if dim == "band" else "")
        )


def _renamed(
    have: tuple[Hashable, ...],
    wanted: tuple[Hashable, ...],
    rename: Mapping[Hashable, Hashable],
    names: tuple[str, str],
) -> tuple[Hashable, ...]:
    """The target's band labels through ``rename`` (``bands={...}``), checked: every mapped
    label is one of ``have`` and no two target bands land on the same band of ``have``."""
    mine, theirs = names
    keys = {_key(v) for v in have}
    shown = ", ".join(show_label(v) for v in have[:8]) + (", ..." if len(have) > 8 else "")
    out = []
    for w in wanted:
        if w in rename:
            to = label_value(rename[w])
            if _key(to) not in keys:
                raise BandMismatchError(
                    f"bands= maps band {show_label(w)} of {theirs} to {show_label(to)}, which is "
                    f"not a band label of {mine} ({shown}); map it to one of those"
                )
            out.append(to)
        else:
            out.append(w)
    seen: dict[Hashable, int] = {}
    for i, to in enumerate(out):
        first = seen.setdefault(_key(to), i)
        if first != i and _key(to) in keys:
            raise BandMismatchError(
                f"bands {show_label(wanted[first])} and {show_label(wanted[i])} of {theirs} both "
                f"meet band "
                f"{show_label(to)} of {mine}; map every band of {theirs} to a different band "
                "(add the unmapped one to bands={...})"
            )
    return tuple(out)


def _key(value: Hashable) -> Hashable:
    """A dictionary key under which equal labels meet (a date of any unit, 1 and 1.0)."""
    if isinstance(value, np.datetime64):
        return ("datetime64", int(value.astype("datetime64[ns]").astype(np.int64)))
    return value


def _same_label(a: Hashable, b: Hashable) -> bool:
    return _key(a) == _key(b)
