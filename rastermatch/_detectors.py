"""Which detector recorded each pixel: the layout of a scanner's detectors along one axis.

A whisk-broom scanner writes ``n`` lines per sweep, one per detector (Landsat TM 16, MSS 6,
MODIS 10/20/40), so line ``i`` comes from detector ``(i + offset) mod n``; a push-broom sensor in
sensor geometry has one detector per column; mirror sides or column groups are explicit labels
per line or column. :class:`Detectors` says which, and :meth:`Detectors.resolve` turns it into a
detector index per line (or column) of an image, the extra row dim of per-detector histograms
and LUTs (a ``detector`` dim, always the last row dim).

Bottom layer: numpy and the row labels only.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._rows import label_value, show_label
from .errors import OptionError

__all__ = ["Detectors"]

Axis = Literal["y", "x"]
AXES = ("y", "x")
# an explicit layout is one label per line or column; a scene wider than this is not a scene
MAX_POSITIONS = 2**24


@dataclass(frozen=True, eq=False)
class Detectors:
    """The detector of every line (``axis="y"``) or column (``axis="x"``).

    Exactly one of:

    - ``count=n``: periodic, position ``i`` (0-based, in the full image) belongs to detector
      ``(i + offset) mod n``; detectors are labelled ``0..n-1``.
    - ``count=None, labels=None``: one detector per position (push-broom columns); detector
      ``i`` is position ``i``, labelled ``0..size-1``.
    - ``labels=(l0, l1, ...)``: an explicit label per position (mirror sides, column groups);
      detectors are the distinct labels, sorted.

    Examples
    --------
    >>> d = Detectors.of(4, axis="y", offset=1)
    >>> index, labels = d.resolve(6)
    >>> index.tolist(), labels
    ([1, 2, 3, 0, 1, 2], (0, 1, 2, 3))
    >>> Detectors.of(None, axis="x").resolve(3)[1]
    (0, 1, 2)
    >>> index, labels = Detectors.of(["a", "b", "b", "a"], axis="x").resolve(4)
    >>> index.tolist(), labels
    ([0, 1, 1, 0], ('a', 'b'))
    >>> Detectors.from_dict(d.to_dict()).describe()
    '4 detectors along y (line 0 is detector 1)'
    """

    axis: Axis = "y"
    count: int | None = None
    offset: int = 0
    labels: tuple[Hashable, ...] | None = None

    def __post_init__(self) -> None:
        if self.axis not in AXES:
            raise OptionError(f"the detector axis must be 'y' or 'x', not {self.axis!r}")
        if self.count is not None:
            if self.labels is not None:
                raise OptionError("give a detector count or labels per position, not both")
            if isinstance(self.count, bool) or not isinstance(self.count, int | np.integer):
                raise OptionError(f"the number of detectors must be an integer, not {self.count!r}")
            if not 1 <= int(self.count) <= MAX_POSITIONS:
                raise OptionError(
                    f"the number of detectors must be in 1..{MAX_POSITIONS}, not {self.count}"
                )
            object.__setattr__(self, "count", int(self.count))
        if isinstance(self.offset, bool) or not isinstance(self.offset, int | np.integer):
            raise OptionError(f"the detector offset must be an integer, not {self.offset!r}")
        object.__setattr__(self, "offset", int(self.offset))
        if self.offset < 0 or (self.count is not None and self.offset >= self.count):
            top = f"0..{self.count - 1}" if self.count is not None else "0 or more"
            raise OptionError(
                f"the detector offset (the detector of the first line) must be in {top}, "
                f"not {self.offset}"
            )
        if self.count is None and self.offset != 0:
            raise OptionError("an offset needs a detector count (--detectors N)")
        if self.labels is not None:
            labels = tuple(label_value(v) for v in self.labels)
            if not labels or len(labels) > MAX_POSITIONS:
                raise OptionError(
                    f"detector labels need one label per line or column (1..{MAX_POSITIONS}), "
                    f"not {len(labels)}"
                )
            for v in labels:
                if isinstance(v, float) and not np.isfinite(v):
                    raise OptionError(f"a detector label is {v}; labels must be finite")
            object.__setattr__(self, "labels", labels)

    # -- construction
    @classmethod
    def of(cls, detectors: Any, *, axis: Axis = "y", offset: int = 0) -> Detectors:
        """From a user's ``detectors=`` argument: a count, ``None`` (one per position) or one
        label per position (a sequence or 1-D array); a :class:`Detectors` passes through."""
        if isinstance(detectors, Detectors):
            return detectors
        if detectors is None or isinstance(detectors, int | np.integer):
            return cls(axis=axis, count=detectors, offset=offset)
        if isinstance(detectors, str | bytes) or not isinstance(detectors, Sequence | np.ndarray):
            raise OptionError(
                "detectors must be a number of detectors, None (one per column) or one label "
                f"per line or column, not {type(detectors).__name__}"
            )
        values = np.asarray(detectors)
        if values.ndim != 1:
            raise OptionError(
                f"detector labels must be one label per line or column (1-D), not shape "
                f"{values.shape}"
            )
        if offset:
            raise OptionError("an offset needs a detector count, not labels per position")
        return cls(axis=axis, labels=tuple(values.tolist()))

    # -- use
    @property
    def periodic(self) -> bool:
        return self.count is not None

    def resolve(
        self, size: int, name: str = "the image"
    ) -> tuple[np.ndarray, tuple[Hashable, ...]]:
        """For an image ``size`` lines (or columns) long: the detector index of every position
        (``int32``) and the detector labels (the ``detector`` row dim's coordinate)."""
        what = "lines" if self.axis == "y" else "columns"
        if self.count is not None:
            index = (np.arange(size, dtype=np.int64) + self.offset) % self.count
            return index.astype(np.int32), tuple(range(self.count))
        if self.labels is None:
            if size > MAX_POSITIONS:
                raise OptionError(f"{name} has {size} {what}; at most {MAX_POSITIONS} detectors")
            return np.arange(size, dtype=np.int32), tuple(range(size))
        if len(self.labels) != size:
            raise OptionError(
                f"{len(self.labels)} detector labels for the {size} {what} of {name}; give "
                f"one label per {what[:-1]}"
            )
        keys = np.empty(size, dtype=object)
        keys[:] = self.labels
        try:
            labels, index = np.unique(keys, return_inverse=True)
        except TypeError:
            raise OptionError(
                "detector labels mix kinds (numbers and strings); use one kind"
            ) from None
        return index.astype(np.int32).reshape(size), tuple(labels.tolist())

    def describe(self) -> str:
        """For messages and reports: ``16 detectors along y``."""
        if self.count is not None:
            phase = f" (line 0 is detector {self.offset})" if self.offset else ""
            if self.axis == "x":
                phase = phase.replace("line", "column")
            return f"{self.count} detectors along {self.axis}{phase}"
        if self.labels is None:
            return f"one detector per {'line' if self.axis == 'y' else 'column'}"
        n = len(set(self.labels))
        shown = ", ".join(show_label(v) for v in sorted(set(self.labels), key=str)[:4])
        return f"{n} labelled detectors along {self.axis} ({shown}{', ...' if n > 4 else ''})"

    # -- documents (validated: LUT files are untrusted)
    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready layout: ``{"axis", "count", "offset", "labels"}``."""
        return {
            "axis": self.axis,
            "count": self.count,
            "offset": self.offset,
            "labels": None if self.labels is None else list(self.labels),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Detectors:
        """From :meth:`to_dict`'s layout; OptionError naming the field when anything is off."""
        if not isinstance(d, Mapping):
            raise OptionError(f"detectors must be an object, not {type(d).__name__}")
        extra = set(d) - {"axis", "count", "offset", "labels"}
        if extra:
            raise OptionError(f"detectors has an unknown field {sorted(extra)[0]!r}")
        missing = {"axis", "count", "offset", "labels"} - set(d)
        if missing:
            raise OptionError(f"detectors lacks the field {sorted(missing)[0]!r}")
        axis, count, offset, labels = d["axis"], d["count"], d["offset"], d["labels"]
        if not isinstance(axis, str):
            raise OptionError(f"detectors.axis must be 'y' or 'x', not {axis!r}")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
            raise OptionError(f"detectors.count must be an integer or null, not {count!r}")
        if isinstance(offset, bool) or not isinstance(offset, int):
            raise OptionError(f"detectors.offset must be an integer, not {offset!r}")
        if labels is not None:
            if not isinstance(labels, list):
                raise OptionError("detectors.labels must be a list of labels or null")
            for v in labels:
                if isinstance(v, bool) or not isinstance(v, int | float | str):
                    raise OptionError(
                        f"detectors.labels holds {v!r}; labels are integers, numbers or strings"
                    )
            labels = tuple(labels)
        return cls(axis=axis, count=count, offset=offset, labels=labels)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Detectors({self.describe()})"
