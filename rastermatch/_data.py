"""Bring user input into the one shape every step works on: a ``(band, y, x)`` array.

Users hand us numpy arrays, dask arrays or xarray DataArrays (numpy- or dask-backed), with two or
three dims. :func:`as_band_array` turns any of them into a :class:`BandArray` (the 3-D array, its
band labels, its nodata value) and remembers the original so that results can be given back in the
kind that came in (:meth:`BandArray.wrap`).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from ._values import check_nodata
from .errors import DimensionError, InputTypeError, NoValidPixelsError, UnsupportedDtypeError

__all__ = ["BandArray", "as_band_array", "as_band_mask", "no_valid_pixels", "python_scalar"]

# Attributes that describe the input's values and would be wrong on a transformed output.
_VALUE_ATTRS = ("_FillValue", "missing_value", "scale_factor", "add_offset", "valid_range")


def python_scalar(value: Any) -> Any:
    """A numpy scalar as the plain Python int/float/str it stands for (JSON- and repr-friendly)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True, eq=False)
class BandArray:
    """Input normalized to ``(band, y, x)``.

    Attributes
    ----------
    array
        numpy or dask array with dims ``(band, y, x)``.
    bands
        One label per band: the ``band`` coordinate of a DataArray, else 1, 2, ...
    nodata
        The value that marks missing pixels, or None.
    name
        What the caller calls this input ("source", "reference", a file name), used in messages.
    nodata_given
        True when the caller passed ``nodata`` (rather than it coming from the DataArray); an
        explicit source nodata also applies to a reference that has none of its own.
    template
        The DataArray that came in, if any; the output is built from it.
    squeezed
        True when the input had no band dim (2-D); the output then has none either.
    """

    array: np.ndarray | da.Array
    bands: tuple[Hashable, ...]
    nodata: float | int | None
    name: str
    template: xr.DataArray | None = None
    squeezed: bool = False
    nodata_given: bool = False

    @property
    def is_dask(self) -> bool:
        return isinstance(self.array, da.Array)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def may_have_invalid(self) -> bool:
        """Whether some pixels may need an output nodata: a nodata value, or NaN in floats."""
        return self.nodata is not None or self.dtype.kind == "f"

    def band_name(self, index: int) -> str:
        """How messages name band ``index``: ``band 3 of source.tif``."""
        return f"band {self.bands[index]!r} of {self.name}"

    def no_valid_pixels(self, index: int) -> NoValidPixelsError:
        """The one error for a band left empty once nodata, NaN and the mask are taken out."""
        return no_valid_pixels(self.bands[index], self.name)

    def wrap(self, result: np.ndarray | da.Array, *, nodata: float | int | None) -> Any:
        """Give ``result`` (same shape as :attr:`array`) back in the kind the input came in.

        A DataArray keeps its coords (CRS and transform included), dims, band labels and attrs;
        attrs that described the input's values (fill value, scaling, statistics) are dropped and
        the output nodata is written the rioxarray way.
        """
        if self.squeezed:
            result = result[0]
        if self.template is None:
            return result
        out = self.template.copy(data=result)
        out.attrs = {
            k: v
            for k, v in self.template.attrs.items()
            if k not in _VALUE_ATTRS and not k.startswith("STATISTICS_")
        }
        out.encoding = {
            k: v for k, v in self.template.encoding.items() if k in ("source", "grid_mapping")
        }
        if nodata is not None:
            out = out.rio.write_nodata(nodata, encoded=False)
        return out


def no_valid_pixels(label: Hashable, name: str) -> NoValidPixelsError:
    """``band 3 of source.tif has no valid pixels ...``: the one wording, whoever finds it."""
    return NoValidPixelsError(
        f"band {label!r} of {name} has no valid pixels (all nodata, NaN, infinite or masked); "
        "check the nodata value and the mask, or drop the band"
    )


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind not in "iuf":
        raise UnsupportedDtypeError(
            f"{name} has dtype {dtype}, which cannot be histogrammed; rastermatch works on "
            "integer and floating-point rasters (convert with .astype(), e.g. bool to uint8)"
        )


def as_band_array(data: Any, *, nodata: float | int | None = None, name: str = "data") -> BandArray:
    """Normalize ``data`` to a :class:`BandArray`.

    Parameters
    ----------
    data
        numpy array, dask array or DataArray with 2 dims ``(y, x)`` or 3 dims ``(band, y, x)``.
    nodata
        Overrides the nodata value found on a DataArray (``.rio.nodata``, i.e. ``_FillValue``).
        A value the dtype cannot hold (300 for uint8, NaN for integers) raises
        :class:`~rastermatch.errors.OptionError`.
    name
        Used in error messages; a DataArray read from a file is named after the file.
    """
    template = None
    nodata_given = nodata is not None
    bands: tuple[Hashable, ...]
    if isinstance(data, xr.DataArray):
        template = data
        source = data.encoding.get("source")
        if source and name in ("data", "source", "reference"):
            name = f"{name} {source}"
        if data.ndim == 3:
            if data.dims[0] != "band":
                hint = (
                    "transpose it with .transpose('band', ...)"
                    if "band" in data.dims
                    else "name the band dim 'band'"
                )
                raise DimensionError(
                    f"{name} has dims {data.dims}; rastermatch expects (band, y, x) or (y, x): "
                    + hint
                )
            labels = (
                data["band"].values if "band" in data.coords else np.arange(1, data.shape[0] + 1)
            )
            bands = tuple(python_scalar(v) for v in labels)
        elif data.ndim == 2:
            bands = (1,)
        else:
            raise DimensionError(
                f"{name} has dims {data.dims}; rastermatch expects (band, y, x) or (y, x)"
            )
        if nodata is None:
            nodata = data.rio.nodata
        array = data.data
    elif isinstance(data, np.ndarray | da.Array):
        array = data
        if array.ndim not in (2, 3):
            raise DimensionError(
                f"{name} has {array.ndim} dims (shape {array.shape}); rastermatch expects "
                "3 dims (band, y, x) or 2 dims (y, x)"
            )
        bands = tuple(range(1, array.shape[0] + 1)) if array.ndim == 3 else (1,)
    else:
        raise InputTypeError(
            f"{name} is a {type(data).__name__}; pass a numpy array, a dask array or an "
            "xarray.DataArray (np.asarray(...) for a list; open files with "
            "rastermatch.open_raster)"
        )
    if 0 in array.shape:
        raise DimensionError(
            f"{name} has shape {array.shape}, with no pixels or no bands; pass at least one band "
            "of at least one pixel"
        )
    _check_dtype(array.dtype, name)
    if nodata_given:
        nodata = check_nodata(nodata, array.dtype, name)
    squeezed = array.ndim == 2
    if squeezed:
        array = array[None]
    if array.dtype == np.float16:  # the compiled kernels work on float32 and wider
        array = array.astype(np.float32)
    if nodata is not None:
        nodata = python_scalar(nodata)
        if isinstance(nodata, float) and nodata.is_integer() and array.dtype.kind in "iu":
            nodata = int(nodata)
    return BandArray(array, bands, nodata, name, template, squeezed, nodata_given)


def as_band_mask(mask: Any, like: BandArray, *, name: str = "mask") -> np.ndarray | da.Array:
    """Normalize a boolean mask (True = leave out of the statistics) to ``(1 or band, y, x)``.

    The mask may be a numpy/dask array or a DataArray with dims ``(y, x)`` or ``(band, y, x)``
    matching ``like``. A numpy mask beside dask data is chunked like the data.
    """
    if isinstance(mask, xr.DataArray):
        if like.template is not None and mask.ndim == like.template.ndim:
            mask = mask.transpose(*like.template.dims)
        mask = mask.data
    if not isinstance(mask, np.ndarray | da.Array):
        raise InputTypeError(
            f"{name} is a {type(mask).__name__}; pass a boolean numpy/dask array or DataArray"
        )
    if mask.dtype != bool:
        raise UnsupportedDtypeError(
            f"{name} has dtype {mask.dtype}; pass a boolean mask (True = leave the pixel out), "
            "e.g. cloud_mask.astype(bool) or (qa & 8) != 0"
        )
    if mask.ndim == 2:
        mask = mask[None]
    shape = like.array.shape
    if mask.ndim != 3 or mask.shape[1:] != shape[1:] or mask.shape[0] not in (1, shape[0]):
        raise DimensionError(
            f"{name} has shape {mask.shape} but {like.name} has shape {shape}; the mask must cover "
            "the same (y, x) grid, with one layer or one per band"
        )
    if like.is_dask and isinstance(mask, np.ndarray):
        mask = da.from_array(mask, chunks=(-1, *like.array.chunks[1:]))
    return mask
