"""Exceptions and warnings raised by rastermatch.

Every error says what went wrong, where (file, band) and how to fix it. All of them derive
from :class:`RastermatchError`, so a caller can catch one type; each also derives from the
builtin it refines (``ValueError``, ``TypeError``, ``OSError``) so that generic handlers keep
working.
"""

from __future__ import annotations

__all__ = [
    "BandMismatchError",
    "BinningMismatchError",
    "DimensionError",
    "GeometryError",
    "GridMismatchError",
    "HistogramFileError",
    "InputTypeError",
    "LUTFileError",
    "MissingDependencyError",
    "NoValidPixelsError",
    "NodataConflictError",
    "NotComputedError",
    "OptionError",
    "OutputExistsError",
    "RasterReadError",
    "RasterWriteError",
    "RastermatchError",
    "RastermatchWarning",
    "NodataReplacedWarning",
    "OverlapWarning",
    "StaleTemporaryWarning",
    "UnsupportedDtypeError",
]


class RastermatchError(Exception):
    """Base class of every error raised by rastermatch."""


class DimensionError(RastermatchError, ValueError):
    """The array does not have the dims ``(band, y, x)`` or ``(y, x)``."""


class InputTypeError(RastermatchError, TypeError):
    """The input is not a kind rastermatch takes (numpy, dask, DataArray; a Python list, say)."""


class OptionError(RastermatchError, ValueError):
    """An option has a bad value: a method, a range, a nodata value the dtype cannot hold, ..."""


class NotComputedError(RastermatchError, RuntimeError):
    """A lazy histogram (or bin range) was used where a computed one is needed."""


class GridMismatchError(RastermatchError, ValueError):
    """Two rasters that must share a grid (an image and its mask) do not (shape, CRS, transform)."""


class GeometryError(RastermatchError, ValueError):
    """Two inputs whose statistics must come from the ground they share do not share any: their
    footprints do not overlap, no pixel is valid in both, or one has no georeferencing."""


class UnsupportedDtypeError(RastermatchError, TypeError):
    """The dtype cannot be histogrammed (complex, bool, object, strings, datetimes)."""


class BandMismatchError(RastermatchError, ValueError):
    """Source and reference (or two histograms) do not have the same number of bands."""


class NoValidPixelsError(RastermatchError, ValueError):
    """A band has no pixel left once nodata, NaN and the mask are taken out."""


class BinningMismatchError(RastermatchError, ValueError):
    """Two histograms with different binnings cannot be merged."""


class NodataConflictError(RastermatchError, ValueError):
    """The output nodata is a value valid pixels are mapped to, and no free value exists."""


class LUTFileError(RastermatchError, ValueError):
    """A LUT file is malformed, inconsistent or was modified after it was written."""


class HistogramFileError(RastermatchError, ValueError):
    """A histogram document (JSON) is malformed or inconsistent."""


class MissingDependencyError(RastermatchError, ImportError):
    """An optional dependency (matplotlib for plots and reports) is not installed."""


class RasterReadError(RastermatchError, OSError):
    """A raster file is missing, not a raster, or unreadable."""


class RasterWriteError(RastermatchError, OSError):
    """An output cannot be written (it would overwrite an input, a bad path, a failed write)."""


class OutputExistsError(RasterWriteError, FileExistsError):
    """The output exists already and ``overwrite`` was not asked for."""


class RastermatchWarning(UserWarning):
    """Base class of the warnings rastermatch emits."""


class NodataReplacedWarning(RastermatchWarning):
    """The requested output nodata value was taken by valid pixels, so another value is used."""


class StaleTemporaryWarning(RastermatchWarning):
    """A temporary of an interrupted write was found that cannot be judged stale (another host)."""


class OverlapWarning(RastermatchWarning):
    """The statistics of an overlap-only match come from a small part of the source's valid
    pixels, which may not represent the scene."""
