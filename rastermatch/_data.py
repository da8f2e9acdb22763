"""Bring user input into the one shape every step works on: a ``(row, y, x)`` array.

Users hand us numpy arrays, dask arrays, xarray DataArrays (numpy- or dask-backed) or Datasets.
:func:`as_band_array` finds the two spatial dims (by name for xarray, by position for arrays)
and treats every other dim (``band``, ``time``, ...) as a labelled row dim
(:class:`~rastermatch._rows.Rows`). The input is transposed to ``(*rows, y, x)`` and flattened
to the 3-D ``(row, y, x)`` array the compiled kernels loop over; :meth:`BandArray.wrap` gives
results back in the layout and kind that came in (dims order, coords, attrs, chunks).

numpy input is cut into pieces for local threads here too (:func:`thread_pieces`,
:func:`as_dask`): the statistics and the application of numpy input share the one cutting.
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ._rows import Rows, label_value, show_label
from ._values import check_nodata, nodata_fits
from .errors import (
    DimensionError,
    InputTypeError,
    NoValidPixelsError,
    OptionError,
    UnsupportedDtypeError,
)

__all__ = [
    "BandArray",
    "as_band_array",
    "as_band_mask",
    "as_dask",
    "no_valid_pixels",
    "nodata_of",
    "python_scalar",
    "spatial_dims",
    "thread_pieces",
]

#: Attribute holding the nodata value (Zarr outputs, odc-geo); read by :func:`nodata_of`.
NODATA_ATTR = "nodata"

# Attributes that describe the input's values and would be wrong on a transformed output.
_VALUE_ATTRS = ("_FillValue", "missing_value", "scale_factor", "add_offset", "valid_range")

# Spatial dim names, (y, x), in the order they are looked for.
_SPATIAL_NAMES = (("y", "x"), ("latitude", "longitude"), ("lat", "lon"))


def python_scalar(value: Any) -> Any:
    """A numpy scalar as the plain Python int/float/str it stands for (JSON- and repr-friendly)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class _Layout:
    """How the input was laid out, so that :meth:`BandArray.wrap` can restore it.

    ``order`` lists the input's axes in ``(*rows, y, x)`` order; ``shape`` and ``chunks`` are
    the input's own (chunks None for numpy); ``template`` is the DataArray the output is built
    from (for a Dataset, its ``to_dataarray`` view) and ``dataset`` the Dataset that came in.
    """

    shape: tuple[int, ...]
    order: tuple[int, ...]
    chunks: tuple[tuple[int, ...], ...] | None = None
    template: xr.DataArray | None = None
    dataset: xr.Dataset | None = None


@dataclass(frozen=True, eq=False)
class BandArray:
    """Input normalized to ``(row, y, x)``.

    Attributes
    ----------
    array
        numpy or dask array with dims ``(row, y, x)``: the input's row dims flattened in
        C order.
    rows
        What each row is: the input's row dims and their labels (the coordinate of a
        DataArray, else 1, 2, ... for ``band`` and 0, 1, ... for other dims); one unlabelled
        row for a 2-D input.
    nodata
        The value that marks missing pixels, or None.
    name
        What the caller calls this input ("source", "reference", a file name), used in messages.
    template
        The DataArray or Dataset that came in, if any; the output is built from it.
    nodata_given
        True when the caller passed ``nodata`` (rather than it coming from the DataArray); an
        explicit source nodata also applies to a reference that has none of its own.
    layout
        How to restore the input's layout (private to :meth:`wrap`); None gives results back
        as the 3-D array.
    """

    array: np.ndarray | da.Array
    rows: Rows
    nodata: float | int | None
    name: str
    template: xr.DataArray | xr.Dataset | None = None
    nodata_given: bool = False
    layout: _Layout | None = None

    @property
    def bands(self) -> tuple[Hashable, ...]:
        """One label per row (:meth:`Rows.labels`): the band labels of a ``(band, y, x)``
        input; ``(1,)`` for a 2-D input, as before rows existed."""
        return self.rows.labels() if self.rows.dims else (1,)

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

    def describe(self, index: int) -> str:
        """How messages name row ``index``: ``band 3 of source.tif``, ``time 2020-01-01,
        band 'red' of stack``, or ``source.tif`` for a 2-D input."""
        where = self.rows.describe(index)
        return f"{where} of {self.name}" if where else self.name

    def band_name(self, index: int) -> str:
        """Alias of :meth:`describe`."""
        return self.describe(index)

    def no_valid_pixels(self, index: int) -> NoValidPixelsError:
        """The one error for a row left empty once nodata, NaN and the mask are taken out."""
        return no_valid_pixels(self.rows.describe(index), self.name)

    def wrap(self, result: np.ndarray | da.Array, *, nodata: float | int | None) -> Any:
        """Give ``result`` (same shape as :attr:`array`) back in the layout the input came in.

        numpy and dask results get the input's shape (and, for dask, its chunks). A DataArray
        keeps its dims order, coords (CRS and transform included), row labels and attrs; attrs
        that described the input's values (fill value, scaling, statistics) are dropped and the
        output nodata is written the rioxarray way. A Dataset comes back as a Dataset with the
        same variables, each with its own attrs.
        """
        lay = self.layout
        if lay is None:
            return result
        out = _unflatten(result, lay)
        if lay.template is None:
            return out
        arr = _with_attrs(lay.template.copy(data=out), lay.template, nodata)
        if lay.dataset is None:
            return arr
        ds = lay.dataset
        variables = {}
        for v in ds.data_vars:
            var = arr.sel(band=v, drop=True).transpose(*ds[v].dims)
            variables[v] = _with_attrs(var, ds[v], nodata)
        return xr.Dataset(variables, attrs=_kept_attrs(ds.attrs))


def _kept_attrs(attrs: dict[Hashable, Any]) -> dict[Hashable, Any]:
    return {
        k: v
        for k, v in attrs.items()
        if k not in _VALUE_ATTRS and not str(k).startswith("STATISTICS_")
    }


def _with_attrs(out: xr.DataArray, like: xr.DataArray, nodata: Any) -> xr.DataArray:
    out.attrs = _kept_attrs(like.attrs)
    out.encoding = {k: v for k, v in like.encoding.items() if k in ("source", "grid_mapping")}
    if nodata is not None:
        out = out.rio.write_nodata(nodata, encoded=False)
    return out


def _unflatten(result: np.ndarray | da.Array, lay: _Layout) -> np.ndarray | da.Array:
    """The 3-D ``(row, y, x)`` result back in the input's own shape, axis order and chunks."""
    shape = tuple(lay.shape[a] for a in lay.order)
    if result.shape != shape:
        if isinstance(result, da.Array):
            result = result.reshape(shape, merge_chunks=False)
        else:
            result = result.reshape(shape)
    if lay.order != tuple(range(len(lay.order))):
        result = result.transpose(tuple(np.argsort(lay.order)))
    if isinstance(result, da.Array) and lay.chunks is not None and result.chunks != lay.chunks:
        result = result.rechunk(lay.chunks)
    return result


def no_valid_pixels(where: str, name: str) -> NoValidPixelsError:
    """``band 3 of source.tif has no valid pixels ...``: the one wording, whoever finds it.

    ``where`` is the row (:meth:`Rows.describe`: ``band 3``, ``time 2020-01-01, band 'red'``,
    or ``""`` for a 2-D input) and ``name`` the input.
    """
    if not isinstance(where, str):  # a band label, as callers passed before rows
        where = f"band {show_label(label_value(where))}"
    what = f"{where} of {name}" if where else name
    drop = "drop the band" if where.startswith("band") or ", band" in where else "drop the row"
    return NoValidPixelsError(
        f"{what} has no valid pixels (all nodata, NaN, infinite or masked); "
        f"check the nodata value and the mask, or {drop}"
    )


def _check_not_empty(shape: tuple[int, ...], name: str) -> None:
    if 0 in shape:
        raise DimensionError(
            f"{name} has shape {shape}, with no pixels or no bands; pass at least one band "
            "of at least one pixel"
        )


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if dtype.kind not in "iuf":
        raise UnsupportedDtypeError(
            f"{name} has dtype {dtype}, which cannot be histogrammed; rastermatch works on "
            "integer and floating-point rasters (convert with .astype(), e.g. bool to uint8)"
        )


def spatial_dims(data: xr.DataArray | xr.Dataset, name: str = "data") -> tuple[Hashable, Hashable]:
    """The ``(y, x)`` dims of ``data``, found by name.

    ``y``/``x``, ``latitude``/``longitude``, ``lat``/``lon``, or the dims rioxarray knows
    (``data.rio.set_spatial_dims(...)``, CF ``axis`` attributes); every other dim is a row dim.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> spatial_dims(xr.DataArray(np.zeros((2, 3, 4)), dims=("lat", "lon", "band")))
    ('lat', 'lon')
    """
    dims = tuple(data.dims)
    for y, x in _SPATIAL_NAMES:
        if y in dims and x in dims:
            return y, x
    try:
        y, x = data.rio.y_dim, data.rio.x_dim
    except Exception:  # rioxarray's MissingSpatialDimensionError: fall through to ours
        y = x = None
    if y is not None and x is not None and y != x and y in dims and x in dims:
        return y, x
    raise DimensionError(
        f"{name} has dims {dims} and no spatial dims among them; rastermatch finds them by name: "
        "(y, x), (latitude, longitude) or (lat, lon): rename them (data.rename(row='y', "
        "col='x')) or declare them with data.rio.set_spatial_dims(x_dim=..., y_dim=...)"
    )


def _row_labels(data: xr.DataArray, dim: Hashable) -> tuple[Hashable, ...]:
    n = data.sizes[dim]
    if dim in data.coords and data.coords[dim].dims == (dim,):
        return tuple(data.coords[dim].values)
    return tuple(range(1, n + 1)) if dim == "band" else tuple(range(n))


def _dataarray_layout(data: xr.DataArray, name: str) -> tuple[Any, Rows, tuple[int, ...]]:
    ydim, xdim = spatial_dims(data, name)
    row_dims = [d for d in data.dims if d not in (ydim, xdim)]
    for d in row_dims:
        if not isinstance(d, str):
            raise DimensionError(f"{name} has a dim named {d!r}; name every dim with a string")
    rows = Rows(tuple(row_dims), tuple(_row_labels(data, d) for d in row_dims))  # type: ignore[arg-type]
    order = tuple(data.get_axis_num(d) for d in (*row_dims, ydim, xdim))
    return data.data, rows, order  # type: ignore[return-value]


def _array_layout(
    array: np.ndarray | da.Array, name: str, channel_axis: Any
) -> tuple[Rows, tuple[int, ...]]:
    """Rows and axis order of a numpy/dask array: the last two axes other than the channel
    axis are (y, x); the axes before them are rows ``dim_0, dim_1, ...`` and the channel axis
    (by default the one just before y) is ``band``."""
    nd = array.ndim
    if nd < 2:
        raise DimensionError(
            f"{name} has {nd} dim(s) (shape {array.shape}); rastermatch expects 2 dims (y, x), "
            "3 dims (band, y, x) or more (..., band, y, x)"
        )
    if channel_axis is None:
        if nd == 2:
            return Rows.single(), (0, 1)
        if nd == 3 and array.shape[2] < min(array.shape[:2]) and min(array.shape[:2]) > 4:
            raise DimensionError(
                f"{name} has shape {array.shape}, which looks channel-last (y, x, c) where "
                "rastermatch reads 3-D arrays as (band, y, x); pass channel_axis=-1 for "
                "(y, x, c), or channel_axis=0 to confirm it is band-first"
            )
        channel = nd - 3
    else:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, int | np.integer):
            raise OptionError(
                f"channel_axis must be an integer axis (e.g. -1 for (y, x, c)), not "
                f"{channel_axis!r}"
            )
        if nd < 3 or not -nd <= channel_axis < nd:
            raise OptionError(
                f"channel_axis={channel_axis} does not fit {name} of shape {array.shape}; pass "
                f"an axis between {-nd} and {nd - 1} of an array with 3 or more dims"
            )
        channel = int(channel_axis) % nd
    others = [a for a in range(nd) if a != channel]
    row_axes = sorted([*others[:-2], channel])
    dims, coords = [], []
    k = 0
    for a in row_axes:
        if a == channel:
            dims.append("band")
            coords.append(tuple(range(1, array.shape[a] + 1)))
        else:
            dims.append(f"dim_{k}")
            coords.append(tuple(range(array.shape[a])))
            k += 1
    return Rows(tuple(dims), tuple(coords)), (*row_axes, *others[-2:])


def _flatten(array: np.ndarray | da.Array, order: tuple[int, ...]) -> np.ndarray | da.Array:
    """``array`` with its axes in ``order``, rows flattened: 3-D ``(row, y, x)``."""
    if order != tuple(range(array.ndim)):
        array = array.transpose(order)
    if array.ndim == 3:
        return array
    shape = (int(np.prod(array.shape[:-2])), *array.shape[-2:])
    if isinstance(array, da.Array):
        return array.reshape(shape, merge_chunks=False)
    return array.reshape(shape)


def _input_name(data: xr.DataArray | xr.Dataset, name: str) -> str:
    source = data.encoding.get("source")
    if source and name in ("data", "source", "reference"):
        return f"{name} {source}"
    return name


def _dataset_as_dataarray(data: xr.Dataset, name: str) -> xr.DataArray:
    """The Dataset's variables as the ``band`` dim, just before the spatial dims."""
    if not data.data_vars:
        raise DimensionError(f"{name} is a Dataset without data variables; pass one with bands")
    ydim, xdim = spatial_dims(data, name)
    first = next(iter(data.data_vars))
    want = set(data[first].dims)
    for v in data.data_vars:
        if ydim not in data[v].dims or xdim not in data[v].dims:
            raise DimensionError(
                f"variable {v!r} of {name} has dims {data[v].dims}, without the spatial dims "
                f"({ydim}, {xdim}); drop it first (ds.drop_vars({v!r}))"
            )
        if set(data[v].dims) != want:
            raise DimensionError(
                f"variable {v!r} of {name} has dims {data[v].dims} but {first!r} has "
                f"{data[first].dims}; every variable of a Dataset is a band and needs the same dims"
            )
    if "band" in want:
        raise DimensionError(
            f"the variables of {name} have a 'band' dim, and the variables of a Dataset are its "
            "bands; select one band (ds.sel(band=...)) or pass ds.to_dataarray('variable')"
        )
    arr = data.to_dataarray("band")
    rest = [d for d in arr.dims if d not in ("band", ydim, xdim)]
    return arr.transpose(*rest, "band", *[d for d in arr.dims if d in (ydim, xdim)])


def nodata_of(data: xr.DataArray) -> Any:
    """The one nodata value of ``data``, however rioxarray, odc-geo or a STAC loader set it.

    1. ``attrs["_FillValue"]``: rioxarray's current value (``.rio.write_nodata``); it wins
       over a stale ``nodata`` attribute left by a loader, as it does for ``.rio.nodata``.
    2. ``encoding["_FillValue"]`` equal to ``attrs["nodata"]``: odc-geo's ``.odc.nodata = v``
       (which sets both and leaves the pixels as they are).
    3. ``encoding["_FillValue"]`` alone: the file's nodata of data opened masked. Float data
       were masked, so their nodata is NaN (rioxarray's rule); integer data cannot have been
       (``.rio.nodata`` fails on them), so their nodata is that value.
    4. Then ``missing_value``, ``fill_value``, ``nodata`` attributes, then anything else
       ``.rio.nodata`` finds.

    Returns ``None`` when there is none.
    """
    attrs, encoding = data.attrs, data.encoding
    if "_FillValue" in attrs:
        return attrs["_FillValue"]
    encoded = encoding.get("_FillValue")
    if encoded is not None:
        if NODATA_ATTR in attrs and _same_value(attrs[NODATA_ATTR], encoded):
            return attrs[NODATA_ATTR]
        return math.nan if np.dtype(data.dtype).kind in "fc" else encoded
    for key in ("missing_value", "fill_value", NODATA_ATTR):
        if key in attrs:
            return attrs[key]
    try:
        return data.rio.nodata
    except (ValueError, TypeError, OverflowError):  # pragma: no cover - attrs cover rioxarray's
        return None


def _same_value(a: Any, b: Any) -> bool:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return False
    return x == y or (math.isnan(x) and math.isnan(y))


def _dataset_nodata(data: xr.Dataset, name: str) -> Any:
    values = {v: nodata_of(data[v]) for v in data.data_vars}
    kinds = {
        "nan" if v is not None and isinstance(v, float | np.floating) and np.isnan(v) else v
        for v in values.values()
    }
    if len(kinds) > 1:
        shown = ", ".join(f"{k}: {v}" for k, v in values.items())
        raise OptionError(
            f"the variables of {name} have different nodata values ({shown}); pass nodata= "
            "with the one value that marks missing pixels in every variable"
        )
    return next(iter(values.values()))


def as_band_array(
    data: Any,
    *,
    nodata: float | int | None = None,
    name: str = "data",
    channel_axis: int | None = None,
) -> BandArray:
    """Normalize ``data`` to a :class:`BandArray`.

    Parameters
    ----------
    data
        A DataArray with its spatial dims named ``y``/``x``, ``latitude``/``longitude`` or
        ``lat``/``lon`` (or declared to rioxarray), anywhere, and any other dims (``band``,
        ``time``, ...): those are the rows. A Dataset: its data variables are the bands. A numpy
        or dask array: 2-D ``(y, x)``, 3-D ``(band, y, x)``, N-D ``(dim_0, ..., band, y, x)``.
    nodata
        Overrides the nodata value found on a DataArray (:func:`nodata_of`: ``_FillValue``,
        odc-geo's ``nodata``, ...). A value the dtype cannot hold (300 for uint8, NaN for
        integers), given or found in the attributes, raises
        :class:`~rastermatch.errors.OptionError`.
    name
        Used in error messages; a DataArray read from a file is named after the file.
    channel_axis
        numpy/dask only, scikit-image's meaning: the axis of the bands (``-1`` for
        ``(y, x, c)``). Without it a 3-D array whose last axis looks like channels (shorter
        than both others, which are longer than 4: ``(60, 80, 8)``, ``(100, 100, 12)``) is
        refused rather than silently read band-first; ``channel_axis=0`` says band-first.

    Examples
    --------
    >>> import numpy as np
    >>> rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    >>> src = as_band_array(rgb, channel_axis=-1)
    >>> src.array.shape, src.rows
    ((3, 40, 60), Rows(band: 3))
    >>> src.wrap(src.array, nodata=None).shape
    (40, 60, 3)
    """
    nodata_given = nodata is not None
    template: xr.DataArray | xr.Dataset | None = None
    dataset = None
    if isinstance(data, xr.Dataset | xr.DataArray):
        if channel_axis is not None:
            raise OptionError(
                f"channel_axis= is for numpy and dask arrays; the dims of {name} are found by "
                "name (a band dim, or the variables of a Dataset)"
            )
        name = _input_name(data, name)
        template = data
        if isinstance(data, xr.Dataset):
            if nodata is None:
                nodata = _dataset_nodata(data, name)
            dataset = data
            data = _dataset_as_dataarray(data, name)
        elif nodata is None:
            nodata = nodata_of(data)
        _check_not_empty(data.shape, name)
        array, rows, order = _dataarray_layout(data, name)
        shape_template: xr.DataArray | None = data
    elif isinstance(data, np.ndarray | da.Array):
        array = data
        _check_not_empty(array.shape, name)
        rows, order = _array_layout(array, name, channel_axis)
        shape_template = None
    else:
        raise InputTypeError(
            f"{name} is a {type(data).__name__}; pass a numpy array, a dask array, an "
            "xarray.DataArray or Dataset (np.asarray(...) for a list; open files with "
            "rastermatch.open_raster)"
        )
    _check_dtype(array.dtype, name)
    if nodata_given:
        nodata = check_nodata(nodata, array.dtype, name)
    elif nodata is not None and not nodata_fits(nodata, array.dtype):
        raise OptionError(
            f"{name} has nodata={nodata!r} in its attributes, which {array.dtype} data cannot "
            "hold (a stale value, e.g. of a float load cast to integers); pass the nodata "
            "value explicitly (nodata=, or reference_nodata= for a reference) or set it with "
            "data.rio.write_nodata(...)"
        )
    layout = _Layout(
        shape=tuple(array.shape),
        order=tuple(order),
        chunks=array.chunks if isinstance(array, da.Array) else None,
        template=shape_template,
        dataset=dataset,
    )
    flat = _flatten(array, layout.order)
    if flat.dtype == np.float16:  # the compiled kernels work on float32 and wider
        flat = flat.astype(np.float32)
    elif not flat.dtype.isnative:  # big-endian data (e.g. ">u2" from a FITS or ENVI reader)
        flat = flat.astype(flat.dtype.newbyteorder("="))
    if nodata is not None:
        nodata = python_scalar(nodata)
        if isinstance(nodata, float) and nodata.is_integer() and flat.dtype.kind in "iu":
            nodata = int(nodata)
    return BandArray(flat, rows, nodata, name, template, nodata_given, layout)


def as_band_mask(mask: Any, like: BandArray, *, name: str = "mask") -> np.ndarray | da.Array:
    """Normalize a boolean mask (True = leave out of the statistics) to ``(1 or row, y, x)``.

    The mask covers the (y, x) grid of ``like``: a 2-D ``(y, x)`` array, or an array laid out
    as ``like`` came in (its row axes of full length or 1), or a DataArray whose dims are the
    spatial ones and some of ``like``'s row dims (a ``(time, y, x)`` cloud mask of a
    ``(time, band, y, x)`` stack). A DataArray's labelled row dims meet ``like``'s by label:
    every row of ``like`` must find its label in the mask (a dim of length 1 serves every row).
    A numpy mask beside dask data is chunked like the data.
    """
    shape = like.array.shape
    lay = like.layout
    if isinstance(mask, xr.DataArray):
        mask = _mask_from_dataarray(mask, like, name)
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
    elif lay is not None and mask.ndim == len(lay.shape) and mask.ndim >= 3:
        mask = mask.transpose(lay.order) if lay.order != tuple(range(mask.ndim)) else mask
        mask = _flatten_mask(mask, like, name)
    if mask.ndim != 3 or mask.shape[1:] != shape[1:] or mask.shape[0] not in (1, shape[0]):
        raise DimensionError(
            f"{name} has shape {mask.shape} but {like.name} has shape {shape}; the mask must cover "
            "the same (y, x) grid, with one layer or one per band"
        )
    if like.is_dask and isinstance(mask, np.ndarray):
        mask = da.from_array(mask, chunks=(-1, *like.array.chunks[1:]))
    return mask


def _flatten_mask(mask: Any, like: BandArray, name: str) -> Any:
    """A mask laid out ``(*rows, y, x)`` (row axes of full length or 1) as ``(1 or row, y, x)``."""
    rows_shape = like.rows.shape
    if mask.ndim != len(rows_shape) + 2 or any(
        m not in (1, r) for m, r in zip(mask.shape[:-2], rows_shape, strict=True)
    ):
        return mask  # the caller's shape check names the problem
    if all(m == 1 for m in mask.shape[:-2]):
        return mask.reshape((1, *mask.shape[-2:]))
    if mask.ndim == 3:
        return mask
    if tuple(mask.shape[:-2]) != rows_shape:
        xp = da if isinstance(mask, da.Array) else np
        mask = xp.broadcast_to(mask, (*rows_shape, *mask.shape[-2:]))
    return _flatten(mask, tuple(range(mask.ndim)))


def _mask_from_dataarray(mask: xr.DataArray, like: BandArray, name: str) -> Any:
    ydim, xdim = spatial_dims(mask, name)
    rows = like.rows
    extra = [d for d in mask.dims if d not in (ydim, xdim) and d not in rows.dims]
    if extra:
        extra_long = [d for d in extra if mask.sizes[d] > 1]
        if extra_long:
            raise DimensionError(
                f"{name} has dims {mask.dims} but {like.name} has row dims {rows.dims}; the "
                f"mask's other dims must be among them (drop {extra_long[0]!r})"
            )
        mask = mask.isel({d: 0 for d in extra}, drop=True)
    present = [d for d in rows.dims if d in mask.dims]
    mask = mask.transpose(*present, ydim, xdim)
    # labelled row dims meet the input's by label (a date to its date), as references do
    for d in present:
        if mask.sizes[d] > 1 and d in mask.coords and mask.coords[d].dims == (d,):
            have = tuple(label_value(v) for v in mask.coords[d].values)
            positions = Rows._align(d, have, rows.coord(d), (name, like.name), by_position=False)
            if not np.array_equal(positions, np.arange(mask.sizes[d])):
                mask = mask.isel({d: positions})
    data = mask.data
    if not present:
        return data
    # one axis per row dim of ``like``, length 1 where the mask has none
    index = tuple(slice(None) if d in mask.dims else None for d in rows.dims)
    data = data[(*index, slice(None), slice(None))]
    return _flatten_mask(data, like, name)


# -- numpy input on local threads --------------------------------------------------------------


def builds_for_cluster() -> bool:
    """Whether dask's default scheduler, where a graph built now will run unless told
    otherwise, is a ``dask.distributed`` client (set by ``Client()``, or a worker's own).

    Graphs take a different form for a cluster, where every task is serialized and sent on its
    own and a task's inputs may live on another worker: LUT rows become keys of their own
    (``apply``), and counting tasks take one stored block each, so they fuse with the task
    that produces it and no pixel moves between workers (``histogram.compact_counts``)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        owner = getattr(dask.base.get_scheduler(), "__self__", None)
    except Exception:  # a worker without a client, a broken configuration: the literal way
        return False
    return isinstance(owner, distributed.Client)


def thread_pieces(shape: tuple[int, int, int]) -> list[tuple[int, slice]]:
    """How a numpy ``(row, y, x)`` array is cut for the threads: ``(row, lines)`` pieces, as
    few as keep every thread busy. Each piece of a histogram costs a fresh 65,536-bin count
    array, and fresh memory is slow to touch, so rows are split into stripes of lines only when
    there are fewer of them than twice the threads."""
    nrows, ny, _ = shape
    threads = dask.config.get("num_workers", None) or os.cpu_count() or 1
    lines = max(1, -(-ny // max(1, -(-2 * threads // nrows))))
    starts = range(0, max(ny, 1), lines)
    return [(b, slice(y, min(y + lines, ny))) for b in range(nrows) for y in starts]


def as_dask(src: BandArray) -> da.Array:
    """The input's ``(row, y, x)`` array as dask: numpy input as a graph whose blocks are the
    :func:`thread_pieces` of it (views, not copies); dask input as it is."""
    if src.is_dask:
        return src.array  # type: ignore[return-value]
    arr = src.array
    pieces = thread_pieces(arr.shape)
    # A graph of views of the caller's array: da.from_array would copy it, and hash every
    # byte to name it. A random name is right for an array that lives only for this call.
    name = f"rastermatch-numpy-{uuid.uuid4().hex}"
    lines = tuple(s.stop - s.start for b, s in pieces if b == 0)
    graph = {(name, b, i % len(lines), 0): arr[b : b + 1, s] for i, (b, s) in enumerate(pieces)}
    chunks = ((1,) * arr.shape[0], lines, (arr.shape[2],))
    return da.Array(graph, name, chunks, meta=arr[:0, :0, :0])
