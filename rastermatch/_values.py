"""The bottom layer: value helpers and compiled scalar kernels shared by every step.

Histograms, LUTs, their application and the metrics must agree on which bin a value falls in,
how a nodata value reads in a block's dtype and how float results become integers. Each rule
lives here once and is imported at module level by the layers above (never inside a hot
function).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

from .errors import OptionError

__all__ = [
    "EXACT_MAX_ITEMSIZE",
    "cast_values",
    "check_nodata",
    "dtype_range",
    "float_bounds",
    "kernel_nodata",
    "nodata_fits",
    "smallest_dtype",
    "uniform_bin",
    "uniform_bins",
]

EXACT_MAX_ITEMSIZE = 2  # integers of up to 16 bits get one bin per level


@numba.njit(inline="always")
def uniform_bin(v: float, lo: float, scale: float, nbins: int) -> int:
    """Bin of ``v`` among ``nbins`` equal bins starting at ``lo`` (``scale = nbins / width``).

    Clamped to the first and last bin whatever ``v``, ``lo`` and ``scale`` are (NaN, infinities
    and huge values included): the result always indexes a table of ``nbins`` rows. The float to
    int conversion only happens on ``0 < t < nbins``, where it is defined.
    """
    t = (v - lo) * scale
    if not t > 0.0:  # NaN lands here too
        return 0
    if t >= nbins:
        return nbins - 1
    k = int(t)
    return k if k < nbins else nbins - 1


def uniform_bins(values: np.ndarray, lo: float, hi: float, nbins: int) -> np.ndarray:
    """:func:`uniform_bin` vectorized, in the same float64 operations (same bin for every value)."""
    lo, hi = float(lo), float(hi)
    scale = nbins / (hi - lo) if hi > lo else 0.0  # Python floats: inf, never a warning
    with np.errstate(invalid="ignore", over="ignore"):
        t = (np.asarray(values, dtype=np.float64) - lo) * scale
        t = np.where(t > 0.0, np.minimum(t, nbins - 1), 0.0)
    return t.astype(np.int64)


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """The smallest and largest finite value of a numeric dtype."""
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    return float(info.min), float(info.max)


def nodata_fits(value: Any, dtype: np.dtype) -> bool:
    """Whether ``dtype`` can hold the nodata ``value`` exactly (NaN and inf: floats only)."""
    dtype = np.dtype(dtype)
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    if dtype.kind == "f":
        return not np.isfinite(f) or abs(f) <= np.finfo(dtype).max
    if dtype.kind in "iu":
        if not f.is_integer():
            return False
        info = np.iinfo(dtype)
        return info.min <= int(f) <= info.max
    return False


def check_nodata(value: Any, dtype: np.dtype, name: str, *, what: str = "nodata") -> Any:
    """``value`` as a plain number, or OptionError when ``dtype`` cannot hold it."""
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(
            f"{what} {value!r} for {name} is not a number; pass an integer or a float "
            "(or leave it unset)"
        )
    dtype = np.dtype(dtype)
    if not nodata_fits(value, dtype):
        lo, hi = dtype_range(dtype)
        span = f"integers {int(lo)}..{int(hi)}" if dtype.kind in "iu" else f"up to {hi:g}"
        raise OptionError(
            f"{what} {value!r} cannot occur in {name}, whose dtype {dtype} holds {span}; "
            f"pass a {what} value of that range (or leave it unset)"
        )
    if dtype.kind in "iu":
        return int(value)
    return value


def kernel_nodata(block: np.ndarray, nodata: Any) -> tuple[Any, bool]:
    """The nodata value as the block's own scalar type, and whether it can occur at all."""
    if nodata is None or (isinstance(nodata, float) and np.isnan(nodata)):
        return block.dtype.type(0), False  # NaN is never a valid value anyway
    if not nodata_fits(nodata, block.dtype):
        return block.dtype.type(0), False
    return block.dtype.type(nodata), True


def float_bounds(dtype: np.dtype) -> tuple[float, float]:
    """The smallest and largest float64 that convert to the integer ``dtype`` without overflow.

    ``float(iinfo(int64).max)`` is 2**63, one past the range: the largest float below it is used
    (64-bit integers are matched in float64, exact up to 2**53).
    """
    info = np.iinfo(dtype)
    hi = float(info.max)
    if hi > info.max:  # exact comparison of a float with a Python int
        hi = float(np.nextafter(hi, 0.0))
    return float(info.min), hi


def cast_values(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values in ``dtype``: integers rounded to nearest (half to even) and clipped to its range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return np.clip(np.rint(values), *float_bounds(dtype)).astype(dtype)
    return np.asarray(values).astype(dtype)


def smallest_dtype(lo: float, hi: float) -> np.dtype:
    """The smallest integer dtype holding ``lo..hi`` (unsigned when it can be), else float64."""
    for name in ("uint8", "uint16", "uint32", "uint64") if lo >= 0 else ():
        if np.iinfo(name).max >= hi:
            return np.dtype(name)
    for name in ("int8", "int16", "int32", "int64"):
        if np.iinfo(name).min <= lo and np.iinfo(name).max >= hi:
            return np.dtype(name)
    return np.dtype("float64")
