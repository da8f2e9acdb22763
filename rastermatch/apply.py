"""Applying a LUT: a compiled block kernel and its lazy dask wrapper.

Step three of the data flow. Each block is mapped by a GIL-free compiled loop, so dask threads
apply blocks in parallel. The LUT reaches the dask graph once, as an explicit argument: its rows
are a dask array chunked like the data's bands (one key per band chunk, however many blocks use
it), never a closure captured by every task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask.array as da
import numba
import numpy as np
from dask.base import tokenize

from ._data import as_band_array
from .errors import NodataConflictError, NodataReplacedWarning, UnsupportedDtypeError
from .histogram import uniform_bin

if TYPE_CHECKING:
    from .lut import LUT

__all__ = ["apply_lut", "apply_lut_array", "resolve_out_nodata"]


# -- compiled kernels: one pass over the block, nodata and NaN handled inline --------------------


@numba.njit(nogil=True, cache=True)
def _apply_levels(block, table, offset, nodata, has_nodata, out_nodata, out):  # pragma: no cover
    nb, ny, nx = block.shape
    for b in range(nb):
        t = table[b]
        if has_nodata:
            for i in range(ny):
                for j in range(nx):
                    v = block[b, i, j]
                    out[b, i, j] = out_nodata if v == nodata else t[v - offset]
        else:
            for i in range(ny):
                for j in range(nx):
                    out[b, i, j] = t[block[b, i, j] - offset]


@numba.njit(nogil=True, cache=True)
def _apply_bins(block, table, lohi, nodata, has_nodata, out_nodata, out):  # pragma: no cover
    nb, ny, nx = block.shape
    nbins = table.shape[1]
    for b in range(nb):
        lo = lohi[b, 0]
        hi = lohi[b, 1]
        scale = nbins / (hi - lo) if hi > lo else 0.0
        for i in range(ny):
            for j in range(nx):
                v = block[b, i, j]
                f = np.float64(v)
                if (has_nodata and v == nodata) or f - f != 0.0:
                    out[b, i, j] = out_nodata
                else:
                    out[b, i, j] = table[b, uniform_bin(f, lo, scale, nbins)]


@numba.njit(nogil=True, cache=True)
def _apply_piecewise(block, knots, lohi, nodata, has_nodata, out):  # pragma: no cover
    """Linear interpolation between knots at the bin edges; invalid pixels become NaN."""
    nb, ny, nx = block.shape
    nbins = knots.shape[1] - 1
    for b in range(nb):
        lo = lohi[b, 0]
        hi = lohi[b, 1]
        scale = nbins / (hi - lo) if hi > lo else 0.0
        for i in range(ny):
            for j in range(nx):
                v = block[b, i, j]
                f = np.float64(v)
                if (has_nodata and v == nodata) or f - f != 0.0:
                    out[b, i, j] = np.nan
                    continue
                t = (f - lo) * scale
                if t <= 0.0:
                    out[b, i, j] = knots[b, 0]
                elif t >= nbins:
                    out[b, i, j] = knots[b, nbins]
                else:
                    k = int(t)
                    w = t - k
                    out[b, i, j] = knots[b, k] + w * (knots[b, k + 1] - knots[b, k])


# -- block function ---------------------------------------------------------------------------


def apply_block(
    block: np.ndarray,
    table: np.ndarray,
    lohi: np.ndarray,
    *,
    kind: str,
    binning_kind: str,
    offset: int,
    nodata: Any,
    out_nodata: Any,
    out_dtype: np.dtype,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Map one ``(band, y, x)`` block; ``table`` and ``lohi`` hold the block's bands' rows.

    ``out``, when given, receives the result (a view of a larger output, say).
    """
    from .histogram import _kernel_nodata
    from .lut import cast_values

    dtype = np.dtype(out_dtype)
    nd, has_nd = _kernel_nodata(block, nodata)
    if kind == "piecewise":
        values = np.empty(block.shape, dtype=np.float64)
        _apply_piecewise(block, table, lohi, nd, has_nd, values)
        invalid = np.isnan(values)
        if dtype.kind != "f":
            values[invalid] = 0  # overwritten below; keeps the cast free of NaN
        result = cast_values(values, dtype)
        if out_nodata is not None:
            result[invalid] = out_nodata
        if out is None:
            return result
        out[...] = result
        return out
    if out is None:
        out = np.empty(block.shape, dtype=dtype)
    fill = dtype.type(np.nan if out_nodata is None and dtype.kind == "f" else (out_nodata or 0))
    if binning_kind == "levels":
        _apply_levels(block, table, offset, nd, has_nd, fill, out)
    else:
        _apply_bins(block, table, lohi, nd, has_nd, fill, out)
    return out


def block_arguments(
    lut: LUT, *, nodata: Any, out_nodata: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """What :func:`apply_block` needs besides the block: table rows, ranges and options."""
    b = lut.source_binning
    kwargs = dict(
        kind=lut.kind,
        binning_kind=b.kind,
        offset=b.offset if b.kind == "levels" else 0,
        nodata=nodata,
        out_nodata=out_nodata,
        out_dtype=lut.dtype,
    )
    return lut.table, np.stack([b.lo, b.hi], axis=1), kwargs


def apply_lut_array(
    array: np.ndarray | da.Array,
    lut: LUT,
    *,
    nodata: Any = None,
    out_nodata: Any = None,
) -> np.ndarray | da.Array:
    """Map a ``(band, y, x)`` numpy or dask array through ``lut``; lazy for dask input.

    The output keeps the input's chunks, with dtype ``lut.dtype``.
    """
    b = lut.source_binning
    if b.kind == "levels" and array.dtype != b.dtype:
        raise UnsupportedDtypeError(
            f"this LUT was fitted on {b.dtype} data and cannot map {array.dtype} data; fit a LUT "
            f"on {array.dtype} data or convert with .astype({b.dtype.name!r})"
        )
    if array.shape[0] != lut.nbands:
        from .errors import BandMismatchError

        raise BandMismatchError(
            f"the data has {array.shape[0]} bands and the LUT {lut.nbands}; select the bands "
            "the LUT was fitted on"
        )
    table, lohi, kwargs = block_arguments(lut, nodata=nodata, out_nodata=out_nodata)
    if isinstance(array, np.ndarray):
        return apply_block(array, table, lohi, **kwargs)
    token = tokenize(table, lohi, lut.dtype)
    band_chunks = array.chunks[0]
    table_d = da.from_array(table, chunks=(band_chunks, -1), name=f"rastermatch-lut-{token}")
    lohi_d = da.from_array(lohi, chunks=(band_chunks, -1), name=f"rastermatch-lut-range-{token}")
    return da.blockwise(
        apply_block,
        "byx",
        array,
        "byx",
        table_d,
        "bn",
        lohi_d,
        "bk",
        concatenate=True,
        dtype=lut.dtype,
        meta=np.empty((0, 0, 0), lut.dtype),
        name=f"rastermatch-apply-{tokenize(array, token, nodata, out_nodata)}",
        **kwargs,
    )


def resolve_out_nodata(lut: LUT, preferred: Any, *, may_have_invalid: bool) -> Any:
    """The output nodata value: ``preferred`` unless valid pixels are mapped onto it.

    A valid pixel never becomes nodata: when ``preferred`` is an output of the LUT, the first
    free value among the dtype's maximum, its minimum and then the value nearest ``preferred`` is
    used instead,
    with a :class:`~rastermatch.errors.NodataReplacedWarning`. Float outputs fall back to NaN.
    ``None`` is returned when no nodata is needed (no nodata input and no NaN possible).
    """
    import warnings

    dtype = lut.dtype
    if preferred is None:
        if not may_have_invalid:
            return None
        if dtype.kind == "f":
            return float("nan")
    elif dtype.kind == "f" and np.isnan(preferred):
        return float("nan")
    if preferred is not None and not _representable(preferred, dtype):
        preferred = None
    used = lut.valid_outputs()
    if lut.kind == "piecewise":
        lo, hi = cast_range(used, dtype)
        taken = lambda v: lo <= v <= hi  # noqa: E731
    else:
        taken = lambda v: bool(np.isin(v, used))  # noqa: E731
    if preferred is not None and not taken(preferred):
        return preferred
    if dtype.kind == "f":
        choice: Any = float("nan")
    else:
        info = np.iinfo(dtype)
        choice = next((v for v in (info.max, info.min) if not taken(v)), None)
        if choice is None and dtype.itemsize <= 2:
            free = np.setdiff1d(np.arange(info.min, info.max + 1), used)
            near = info.max if preferred is None else preferred
            choice = int(free[np.argmin(np.abs(free - near))]) if free.size else None
        if choice is None:
            raise NodataConflictError(
                f"the output nodata {preferred} is a value valid pixels are mapped to and every "
                f"{dtype} value is taken; choose a wider output dtype (dtype='uint16') or "
                "levels='present'"
            )
    if preferred is not None:
        warnings.warn(
            f"the output nodata {preferred} is also a value valid pixels are mapped to; "
            f"using {choice} as the output nodata instead",
            NodataReplacedWarning,
            stacklevel=3,
        )
    return choice


def cast_range(values: np.ndarray, dtype: np.dtype) -> tuple[float, float]:
    from .lut import cast_values

    v = cast_values(np.array([values.min(), values.max()]), dtype)
    return float(v[0]), float(v[1])


def _representable(value: Any, dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


def apply_lut(lut: LUT, data: Any, *, nodata: Any = None, out_nodata: Any = None) -> Any:
    """Map ``data`` (numpy, dask or DataArray) through ``lut``, returning the same kind.

    ``nodata`` defaults to the data's ``.rio.nodata``, else the LUT's; ``out_nodata`` to the
    LUT's, else the input nodata; it is replaced when valid pixels are mapped onto it (see
    :func:`resolve_out_nodata`). Lazy for dask-backed input.
    """
    src = as_band_array(data, nodata=nodata, name="data")
    nd = src.nodata if src.nodata is not None else lut.nodata
    preferred = (
        out_nodata
        if out_nodata is not None
        else (lut.out_nodata if lut.out_nodata is not None else nd)
    )
    may_have_invalid = nd is not None or src.dtype.kind == "f"
    out_nd = resolve_out_nodata(lut, preferred, may_have_invalid=may_have_invalid)
    result = apply_lut_array(src.array, lut, nodata=nd, out_nodata=out_nd)
    return src.wrap(result, nodata=out_nd)
