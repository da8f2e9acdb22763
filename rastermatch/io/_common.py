"""What the GeoTIFF and Zarr readers and writers share.

The constants naming what rastermatch stores (provenance keys, the colour interpretation
attribute, the complete-chunks marker), the guarded block reader that turns any failed read
into a :class:`~rastermatch.errors.RasterReadError` naming file, band, rows and columns, the
chunk alignment of :func:`rastermatch.io.open_raster`, and the small helpers both writers use
(nodata, scale/offset, the write job).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr

from rastermatch._data import NODATA_ATTR, nodata_of
from rastermatch._rows import show_label
from rastermatch.errors import (
    BandMismatchError,
    DimensionError,
    OptionError,
    RastermatchError,
    RasterReadError,
    RasterWriteError,
)
from rastermatch.io.location import gdal_env, redact_text

PathLike = str | os.PathLike[str]

#: Target edge, in pixels, of the chunks ``open_raster(chunks="auto")`` builds. Blocks of
#: 2048-4096 pixels square keep the per-task overhead of the histogram step small.
TARGET_CHUNK_EDGE = 2048

#: GDAL block cache (MB) while a job reads and writes (the one bound for io and the pipeline).
#: GDAL's default, 5 % of RAM, fills up over the statistics pass of a large GeoTIFF (1.5 GB
#: peak RSS measured on a 4 x 16384 x 16384 scene, 0.46 GB with this bound, and no slower):
#: blocks are read once per pass, a cache cannot help; while a GeoTIFF is written, dirty
#: tiles would pile up until the file is closed, and a bounded cache makes GDAL flush them.
GDAL_CACHE_MB = 256

#: Metadata domain and key of the provenance JSON in GeoTIFF outputs.
PROVENANCE_DOMAIN = "RASTERMATCH"
PROVENANCE_KEY = "provenance"
#: Attribute of the data variable holding the provenance in Zarr outputs.
PROVENANCE_ATTR = "rastermatch"
#: Attribute (``true``) of the data variable of Zarr outputs: every chunk was written
#: (``write_empty_chunks=True``), so a missing chunk means a damaged or partial copy.
COMPLETE_CHUNKS_ATTR = "rastermatch_complete_chunks"
#: Attribute holding each band's colour interpretation (GDAL's names: "red", "green", "blue",
#: "alpha", ...) keyed by band label; set by open_raster for GDAL rasters that have one, kept
#: by matching, and written back to GeoTIFF outputs (and as an attribute to Zarr).
COLORINTERP_ATTR = "colorinterp"
#: Attribute holding each band's own GDAL metadata (``{label: {key: value}}``): set by
#: open_raster for GDAL rasters whose bands have tags, written back per band to GeoTIFFs.
BAND_TAGS_ATTR = "band_tags"
#: Keys a GeoTIFF write never copies from the data's attributes: they describe the file or
#: the pixels they came from, not the output (the software and time that wrote the source,
#: GDAL's band statistics of the source pixels).
STALE_TAGS = frozenset({"TIFFTAG_SOFTWARE", "TIFFTAG_DATETIME", "TIFFTAG_HOSTCOMPUTER"})
STALE_TAG_PREFIXES = ("STATISTICS_",)

_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
_GTIFF_SUFFIXES = (".tif", ".tiff")
# Attributes the writers derive from the data themselves; copying them would contradict it.
_MANAGED_ATTRS = frozenset(
    {
        "_FillValue",
        "missing_value",
        "fill_value",
        NODATA_ATTR,
        PROVENANCE_ATTR,
        COMPLETE_CHUNKS_ATTR,
        "grid_mapping",
        "coordinates",
        "scale_factor",
        "add_offset",
        "long_name",
        # the grid, which the writers store themselves from .rio (stale copies that STAC
        # loaders attach: stackstac's crs, transform, spec and resolution_xy)
        "crs",
        "transform",
        "spec",
        "res",
        "resolution",
        "resolution_xy",
        "nodatavals",
        "_Unsigned",
    }
)


# Reading blocks: errors that name file, band, window and cause ---------------------------


class _GuardedBlocks:
    """The array :func:`dask.array.from_array` reads blocks from, around a lazy xarray variable.

    Any failure reading a block (a truncated or corrupt GeoTIFF, a corrupt Zarr chunk)
    becomes a RasterReadError naming the file, the bands, the rows and columns and, for
    Zarr, the stored chunks, with the underlying cause (GDAL's message is in the
    exception's ``__cause__`` chain). The variable keeps xarray's lazy indexing, so every
    block reads only its window through the backend's per-thread handle.
    """

    def __init__(
        self,
        variable: xr.Variable,
        where: str,
        stored: tuple[int, ...] | None,
        labels: Mapping[Hashable, np.ndarray] | None = None,
        gdal_options: Mapping[str, str] | None = None,
        reader: Callable[[Any], np.ndarray | None] | None = None,
    ) -> None:
        self._variable = variable
        # a direct chunk reader (io.zarr's, for local Zarr stores): the window, or None to read
        # it through the variable
        self._reader = reader
        self._where = where
        self._stored = stored
        self._labels = dict(labels or {})
        # GDAL settings of a remote read (io.location), applied in the thread reading the block
        self._gdal_options = dict(gdal_options or {})
        self.shape = variable.shape
        self.dtype = variable.dtype
        self.ndim = variable.ndim

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        with gdal_env(self._gdal_options):
            try:
                if self._reader is not None:
                    window = self._reader(key)
                    if window is not None:
                        return window
                return np.asarray(self._variable[key].values)
            except RastermatchError:
                raise
            except Exception as exc:
                # Zarr: only now, after a failure, read the window stored chunk by stored chunk
                # to name the damaged one (a block spans many chunks; the first read says not
                # which failed).
                key, error = self._failed_chunk(key) or (key, exc)
                fix = (
                    "the file is damaged, or could not be fetched: check the URL and the "
                    "network, then try again"
                    if self._gdal_options
                    else "the file is damaged or incomplete, copy or download it again"
                )
                raise RasterReadError(
                    f"reading {self._where} {self._window(key)} failed: {_cause(error)}; {fix}"
                ) from error

    def _failed_chunk(self, key: Any) -> tuple[tuple[slice, ...], Exception] | None:
        """The window of the first stored chunk in ``key`` that fails to read, and its error."""
        if self._stored is None:
            return None
        key = key if isinstance(key, tuple) else (key,)
        ranges: list[list[slice]] = []
        for axis, (size, edge) in enumerate(zip(self.shape, self._stored, strict=True)):
            part = key[axis] if axis < len(key) else slice(None)
            if not isinstance(part, slice) or part.step not in (None, 1):
                return None
            start, stop, _ = part.indices(size)
            if stop <= start or edge < 1:
                return None
            ranges.append(
                [
                    slice(max(start, first), min(stop, first + edge))
                    for first in range(start // edge * edge, stop, edge)
                ]
            )
        if math.prod(len(r) for r in ranges) == 1:
            return None  # the window is one chunk already
        for chunk in itertools.product(*ranges):
            try:
                np.asarray(self._variable[chunk].values)
            except Exception as exc:
                return chunk, exc
        return None

    def _window(self, key: Any) -> str:
        key = key if isinstance(key, tuple) else (key,)
        parts: list[str] = []
        chunk_parts: list[str] = []
        for axis, (dim, size) in enumerate(zip(self._variable.dims, self.shape, strict=True)):
            part = key[axis] if axis < len(key) else slice(None)
            if isinstance(part, slice):
                start, stop, _ = part.indices(size)
            else:
                start, stop = int(part), int(part) + 1
            last = max(start, stop - 1)
            if dim == "band":
                parts.append(
                    f"band {start + 1}" if last == start else f"bands {start + 1}-{last + 1}"
                )
            elif dim in _Y_NAMES:
                parts.append(f"rows {start}-{last}")
            elif dim in _X_NAMES:
                parts.append(f"columns {start}-{last}")
            elif dim in self._labels:  # a row dim (a date of a stack): by its labels
                labels = self._labels[dim]
                first, final = show_label(labels[start]), show_label(labels[last])
                parts.append(f"{dim} {first}" if last == start else f"{dim} {first} to {final}")
            else:
                parts.append(f"{dim} {start}-{last}")
            if self._stored is not None:
                first_chunk, last_chunk = start // self._stored[axis], last // self._stored[axis]
                span = (
                    str(first_chunk) if first_chunk == last_chunk else f"{first_chunk}-{last_chunk}"
                )
                chunk_parts.append(f"{dim} {span}")
        if self._variable.ndim == 2:  # a (y, x) Zarr variable is band 1
            parts.insert(0, "band 1")
        text = ", ".join(parts)
        if chunk_parts:
            text += f" (stored chunk {', '.join(chunk_parts)})"
        return text


def _cause(exc: BaseException) -> str:
    """The messages of ``exc`` and its causes in one line, without rasterio's pointer text."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = " ".join(str(current).split())
        if text and "See previous exception" not in text and not any(text in p for p in parts):
            parts.append(text)
        current = current.__cause__ or current.__context__
    if not parts:
        return type(exc).__name__
    return redact_text("; ".join(parts))  # GDAL and fsspec quote URLs whole


def _guarded_chunks(
    data: xr.DataArray,
    chunks: Any,
    *,
    where: str,
    source: Path | str,
    stored: tuple[int, ...] | None,
    gdal_options: Mapping[str, str] | None = None,
    identity: Any = None,
    reader: Callable[[Any], np.ndarray | None] | None = None,
) -> xr.DataArray:
    """``data`` (lazily indexed, not dask) as a dask array read through :class:`_GuardedBlocks`.

    Row dims other than ``band`` with a coordinate (a stack's dates) are named by their labels
    in read errors. ``source`` is a local path (its modification time enters the dask name) or
    a remote location's text; ``identity`` tells apart what the text does not (the id of a
    store object). ``gdal_options`` are applied around every block read (remote GDAL reads).
    ``reader`` reads windows instead of xarray's indexing where it can (local Zarr chunks).
    """
    normalized = _normalize_chunks(chunks, data, source)
    mtime = None
    if isinstance(source, Path):
        with contextlib.suppress(OSError):
            mtime = source.stat().st_mtime_ns
    token = dask.base.tokenize(str(source), mtime, identity, where, normalized)
    labels = {
        dim: np.asarray(data[dim].values)
        for dim in data.dims
        if dim not in ("band", *_Y_NAMES, *_X_NAMES) and dim in data.coords and data[dim].ndim == 1
    }
    blocks = _GuardedBlocks(data.variable, where, stored, labels, gdal_options, reader)
    arr = da.from_array(
        blocks,
        chunks=normalized,
        name=f"open_raster-{token}",
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * data.ndim, dtype=data.dtype),
    )
    return data.copy(data=arr)


#: Most dask blocks :func:`open_raster` accepts per array: a graph of more tasks takes longer
#: to schedule than to compute, and a million-block graph needs gigabytes of memory.
MAX_BLOCKS = 100_000


def _normalize_chunks(
    chunks: Any, data: xr.DataArray, source: Path | str
) -> tuple[tuple[int, ...], ...]:
    spec = chunks
    if isinstance(chunks, Mapping):
        spec = tuple(chunks.get(dim, -1) for dim in data.dims)
    try:
        normalized = da.core.normalize_chunks(spec, data.shape, dtype=data.dtype)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise OptionError(
            f"chunks={chunks!r} cannot chunk {source} (shape {dict(data.sizes)}): {exc}; give "
            "'auto', one size, or a size per dim such as {'band': 1, 'y': 2048, 'x': 2048}"
        ) from exc
    blocks = math.prod(len(sizes) for sizes in normalized)
    if blocks > MAX_BLOCKS:
        # every row (band, date) is split alike: aim at about 1000 blocks per row
        edge = max(256, math.isqrt(max(1, math.prod(sorted(data.shape)[-2:]) // 1000)))
        raise OptionError(
            f"chunks {chunks!r} would split {source} into {blocks:,} blocks, more than the "
            f"{MAX_BLOCKS:,} that can be scheduled in reasonable time; use larger chunks "
            f"(e.g. {edge} pixels square, or 'auto')"
        )
    return normalized


def _aligned_chunks(shape: tuple[int, int, int], block: tuple[int, int, int]) -> dict[str, int]:
    """Chunks that are whole multiples of ``block``, about TARGET_CHUNK_EDGE**2 pixels each."""
    _, height, width = shape
    band_chunk, block_y, block_x = block
    y, x = _aligned_yx(height, width, block_y, block_x)
    return {"band": max(1, min(band_chunk, shape[0])), "y": y, "x": x}


def _aligned_yx(height: int, width: int, block_y: int, block_x: int) -> tuple[int, int]:
    """Chunk edges that are whole multiples of the block, about TARGET_CHUNK_EDGE**2 pixels."""
    x = _aligned_size(width, block_x, TARGET_CHUNK_EDGE)
    # Thin strips (stripped GeoTIFFs have one-row blocks as wide as the image) get taller
    # chunks so that every chunk holds about the same number of pixels.
    y = _aligned_size(height, block_y, max(TARGET_CHUNK_EDGE**2 // x, 1))
    return y, x


def _aligned_size(extent: int, block: int, target: int) -> int:
    """The multiple of ``block`` closest to ``target``, capped at ``extent``."""
    block = max(1, min(block, extent))
    size = max(1, round(target / block)) * block
    return min(size, extent)


def _one_nodata(data: xr.DataArray) -> xr.DataArray:
    """The nodata in ``_FillValue`` only, as rioxarray's GeoTIFF reader leaves it.

    A second copy in a ``nodata`` attribute (how Zarr outputs store it) would go stale the
    first time the nodata is changed with ``.rio.write_nodata``, and odc-geo's ``.odc.nodata``
    reads ``nodata`` before ``_FillValue``: one attribute keeps both readers agreeing.
    """
    nodata = nodata_of(data)
    attrs = {
        key: value
        for key, value in data.attrs.items()
        if key not in (NODATA_ATTR, "_FillValue", "missing_value", "fill_value")
    }
    if nodata is not None:
        attrs["_FillValue"] = nodata
    data.attrs = attrs
    return data


#: Names of spatial dims, for the rows/columns wording of read errors (found by
#: :func:`rastermatch._data.spatial_dims`).
_Y_NAMES = ("y", "latitude", "lat")
_X_NAMES = ("x", "longitude", "lon")


def _names(names: Iterable[Hashable]) -> str:
    return ", ".join(repr(n) for n in names)


def _relabel_bands(data: xr.DataArray, band_names: Sequence[str], path: Path | str) -> xr.DataArray:
    labels = [str(name) for name in band_names]
    if "band" not in data.dims:
        raise DimensionError(
            f"band_names relabels the band dim, but {path} has dims {data.dims}; relabel its "
            "coordinates with assign_coords instead"
        )
    if len(labels) != data.sizes["band"]:
        raise BandMismatchError(
            f"band_names has {len(labels)} names but {path} has {data.sizes['band']} bands; "
            "give one name per band"
        )
    if len(set(labels)) != len(labels):
        raise BandMismatchError(f"band_names {labels} has duplicates; band names must be unique")
    return _relabel(data, np.array(labels, dtype=str))


def _relabel(data: xr.DataArray, labels: np.ndarray) -> xr.DataArray:
    """New band labels; the colour interpretation and band tags, keyed by label, follow them."""
    result = data.assign_coords(band=labels)
    old = [str(b) for b in data.band.values]
    for attr in (COLORINTERP_ATTR, BAND_TAGS_ATTR):
        per_band = data.attrs.get(attr)
        if isinstance(per_band, Mapping):
            result.attrs[attr] = {
                str(new): per_band[o] for o, new in zip(old, labels, strict=True) if o in per_band
            }
    return result


def _stale_tag(key: str) -> bool:
    return key in STALE_TAGS or key.startswith(STALE_TAG_PREFIXES)


def _without_stale_tags(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` without the tags that describe the source file or its pixels, at the top level
    and in every band's tags."""
    kept = {key: value for key, value in attrs.items() if not _stale_tag(key)}
    band_tags = kept.get(BAND_TAGS_ATTR)
    if isinstance(band_tags, Mapping):
        cleaned = {
            str(label): {k: v for k, v in tags.items() if not _stale_tag(str(k))}
            for label, tags in band_tags.items()
            if isinstance(tags, Mapping)
        }
        kept[BAND_TAGS_ATTR] = {label: tags for label, tags in cleaned.items() if tags}
        if not kept[BAND_TAGS_ATTR]:
            del kept[BAND_TAGS_ATTR]
    return kept


class _WriteJob:
    """Everything one write needs (a plain class: dask must not traverse it)."""

    __slots__ = (
        "cog",
        "compress",
        "compute_with",
        "data",
        "final",
        "fmt",
        "lock",
        "overwrite",
        "payload",
        "provenance",
        "tile_size",
    )
    cog: bool
    compress: Any
    compute_with: tuple[Any, ...]
    data: xr.DataArray
    final: Any  # a Path, or an object store's Location (io.objectstore)
    fmt: Literal["gtiff", "zarr"]
    lock: Any
    overwrite: bool
    payload: bytes | None
    provenance: Any  # the record's JSON text, or a callable making the record
    tile_size: int

    def __init__(self, **fields: Any) -> None:
        self.payload = None  # the provenance's sidecar or array bytes (provenance.lay_out)
        for key, value in fields.items():
            setattr(self, key, value)


def lay_out(job: _WriteJob) -> None:
    """The record's header text in ``job.provenance`` and its payload (a GeoTIFF's LUT sidecar,
    a Zarr store's record array) in ``job.payload``: :func:`rastermatch.provenance.prepare`."""
    from rastermatch.provenance import prepare_text

    job.provenance, job.payload = prepare_text(job.provenance, job.fmt)


def _provenance_json(provenance: Mapping[str, Any] | None) -> str | None:
    if provenance is None:
        return None
    try:
        return json.dumps(provenance, allow_nan=False, sort_keys=False)
    except (TypeError, ValueError) as exc:
        raise RasterWriteError(
            f"provenance must be JSON-serialisable (dicts, lists, str, finite numbers, bools, "
            f"None): {exc}"
        ) from exc


def _settle_provenance(job: _WriteJob, computed: Sequence[Any]) -> None:
    """The record of a callable ``provenance`` from the values of ``compute_with``."""
    if callable(job.provenance):
        job.provenance = _provenance_json(job.provenance(computed))
        lay_out(job)


# Shared helpers ----------------------------------------------------------------------------


def _dask_array(data: xr.DataArray, tile_size: int) -> da.Array:
    if isinstance(data.data, da.Array):
        return data.data
    *rows, height, width = data.shape
    chunks = (
        *(1 for _ in rows),
        _aligned_size(height, tile_size, TARGET_CHUNK_EDGE),
        _aligned_size(width, tile_size, TARGET_CHUNK_EDGE),
    )
    return da.from_array(np.asarray(data.data), chunks=chunks)


def _nodata(data: xr.DataArray, path: Path) -> int | float | None:
    nodata = nodata_of(data)
    if nodata is None:
        return None
    dtype = np.dtype(data.dtype)
    try:
        value = float(nodata)
    except (TypeError, ValueError) as exc:
        raise RasterWriteError(
            f"the nodata {nodata!r} of the data for {path} is not a number; set one with "
            "data.rio.write_nodata(...)"
        ) from exc
    if dtype.kind == "f":
        return value
    low, high = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
    if math.isnan(value) or not value.is_integer() or not low <= value <= high:
        raise RasterWriteError(
            f"nodata={nodata} cannot be stored in {dtype} data ({path}); set a value in range "
            "with data.rio.write_nodata(...) or cast the data"
        )
    return int(value)


def _scale_offset(data: xr.DataArray) -> tuple[float, float] | tuple[None, None]:
    """The data's scale and offset when they are not the identity (rioxarray always sets them)."""
    scale = float(data.attrs.get("scale_factor", 1.0))
    offset = float(data.attrs.get("add_offset", 0.0))
    if scale == 1.0 and offset == 0.0:
        return None, None
    return scale, offset
