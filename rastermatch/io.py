"""Open rasters lazily and write them safely: GeoTIFF/COG through rasterio, Zarr through xarray.

Reading
-------
:func:`open_raster` returns a lazy, dask-backed :class:`xarray.DataArray`: ``(band, y, x)`` for
GeoTIFFs, the stored dims (``(time, band, y, x)`` for a stack) for Zarr:

* anything GDAL reads (GeoTIFF, COG, ...) goes through :func:`rioxarray.open_rasterio` with
  ``masked=False``: integer data stay integer and the nodata value is metadata
  (``.rio.nodata``), never a NaN. By default the dask chunks are whole multiples of the
  file's internal blocks, about 2048 x 2048 pixels (the whole band for small files), with
  all bands in one chunk when the file is pixel-interleaved (each compressed block is then
  decoded once) and one band per chunk otherwise. Band descriptions, when the file has
  them, become the ``band`` coordinate.
* Zarr stores (v2 or v3; a ``*.zarr`` path or a directory holding ``zarr.json``,
  ``.zgroup`` or ``.zarray``) go through :func:`xarray.open_zarr` with
  ``decode_coords="all"`` and ``mask_and_scale=False``, so the CRS and transform come from
  the CF ``spatial_ref`` grid-mapping variable and integer data are not cast to float. The
  spatial dims are found by name (``y``/``x``, ``latitude``/``longitude``, ``lat``/``lon``)
  and put last; every other dim is a *row dim* (``time``, ``band``, ...) and keeps its
  labels (dates as ``datetime64``, strings as numpy ``str``) and non-dim coords (an item id
  per date). A store with no row dim reads as ``(band, y, x)`` with one band.

Either way the nodata value ends up in one place, ``attrs["_FillValue"]``, so that
``.rio.nodata`` and odc-geo's ``.odc.nodata`` agree (see :func:`nodata_of`).

Every opened array records its resolved path in ``encoding["source"]``; the writer refuses
to overwrite it. A band colour interpretation (an RGB GeoTIFF) is kept in
``attrs["colorinterp"]`` and written back to GeoTIFF outputs.

Writing
-------
:func:`write_raster` picks the format from the suffix.

* ``.tif`` / ``.tiff``: a tiled, compressed GeoTIFF written through **one** open rasterio
  handle, block by block, by :func:`dask.array.store` (a lock serialises the writes; GDAL
  compresses the tiles on all cores with ``NUM_THREADS=ALL_CPUS``; the GDAL block cache is
  bounded so memory stays flat). ``cog=True`` copies that file into a Cloud-Optimized
  GeoTIFF with overviews through GDAL's COG driver. Under a ``dask.distributed`` client a
  rasterio handle cannot be shared between processes, so the blocks are computed on the
  cluster and written by the calling process in the order they finish.
* ``.zarr``: a Zarr v3 store written in parallel (every dask task, thread or distributed
  worker, writes its own chunk), with consolidated metadata and the georeferencing stored
  the CF/rioxarray way, so ``xr.open_zarr(path, decode_coords="all")`` gives back the CRS,
  transform, dtype, band labels and (through ``.rio.nodata``) the nodata value. Any row
  dims may come before ``(y, x)``: a ``(time, band, y, x)`` stack is stored with one date
  and band per chunk and every coordinate (dates, labels, per-date metadata).

A GeoTIFF holds ``(band, y, x)``: a stack is refused before any work (write Zarr, or one
GeoTIFF per date); extra row dims of length 1 (a ``groupby("time")`` group) are squeezed.

What odc-stac and stackstac attach never breaks a write: coordinates and attributes no
format can hold (object coords mixing ``None`` and numbers, sets, dicts, stackstac's
``spec``) are dropped, stale grid attributes (``crs``, ``transform``, ``resolution``) are
not copied (the grid is written from ``.rio``), and the nodata written is the one value
:func:`nodata_of` finds.

What a write leaves
-------------------
* Success: the complete output under its final name. Identical inputs give identical bytes
  (GeoTIFF blocks are written in block order; nothing time-dependent is written).
* Any error (a failed block, a full disk or file-size limit, which GDAL reports only
  through its error handler and which is collected here, an OSError of the Zarr store):
  :class:`~rastermatch.errors.RasterWriteError` naming the output, the final name untouched
  (absent, or the previous output when overwriting) and no temporary.
* An interrupt (``KeyboardInterrupt``, i.e. SIGINT): the same. The blocks run on a thread
  pool the write owns, shut down before the temporary is removed, so nothing writes into it
  afterwards. SIGTERM kills Python without cleanup by default: a program that wants the
  same guarantee for SIGTERM turns it into the same exception, as the command line does::

      def _terminate(signum, frame):
          raise KeyboardInterrupt

      signal.signal(signal.SIGTERM, _terminate)

* A process killed outright (SIGKILL, power loss): a hidden temporary next to the output,
  ``.{name}.rastermatch-{pid}-{host}-{token}.{tmp|staging|old}`` (shortened with a hash
  for long names). The next write of the same output removes it when that process is gone
  (:func:`remove_stale_temporaries`) and warns about those written from another host.

Damaged inputs
--------------
A block that cannot be read (a truncated or corrupt file, a damaged Zarr chunk) raises
:class:`~rastermatch.errors.RasterReadError` naming the file, the band, the rows and
columns (and the stored chunk, for Zarr) and the cause. A Zarr variable with chunks never
written is refused at open unless its fill value is its nodata; in a store written here
(which writes every chunk and says so in the ``rastermatch_complete_chunks`` attribute, or
carries the ``rastermatch`` provenance attribute) any missing chunk is refused.

Zarr stores written here carry a crc32c checksum per chunk (the standard Zarr v3
``crc32c`` codec, after the compressor), so a truncated or altered chunk fails its checksum
before it is decompressed. Stores written elsewhere without a checksum have no such guard:
a chunk that still decompresses (a truncated blosc frame may) is read as wrong pixels, and
a damaged frame can crash the decompressor itself.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import logging
import math
import os
import re
import secrets
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio._err
import rasterio.dtypes
import rasterio.errors
import rasterio.shutil
import rioxarray  # also registers the .rio accessor
import xarray as xr
from dask.delayed import Delayed
from rasterio.enums import ColorInterp, Interleaving, Resampling
from rasterio.windows import Window

from rastermatch._data import NODATA_ATTR, nodata_of, spatial_dims
from rastermatch._rows import show_label
from rastermatch.errors import (
    BandMismatchError,
    DimensionError,
    InputTypeError,
    OptionError,
    OutputExistsError,
    RastermatchError,
    RasterReadError,
    RasterWriteError,
    StaleTemporaryWarning,
    UnsupportedDtypeError,
)

__all__ = [
    "check_output_path",
    "nodata_of",
    "open_raster",
    "read_provenance",
    "remove_stale_temporaries",
    "temporary_sibling",
    "write_raster",
]

PathLike = str | os.PathLike[str]

#: Target edge, in pixels, of the chunks ``open_raster(chunks="auto")`` builds. Blocks of
#: 2048-4096 pixels square keep the per-task overhead of the histogram step small.
TARGET_CHUNK_EDGE = 2048

#: GDAL block cache (MB) while a GeoTIFF is written. GDAL's default (5 % of RAM) lets dirty
#: tiles pile up until the file is closed; a bounded cache makes GDAL flush as it goes.
GDAL_WRITE_CACHE_MB = 256

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

_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
_GTIFF_SUFFIXES = (".tif", ".tiff")
_GTIFF_COMPRESSIONS = ("ZSTD", "DEFLATE", "LZW", "LZMA", "PACKBITS", "NONE")
_PREDICTOR_COMPRESSIONS = ("ZSTD", "DEFLATE", "LZW", "LZMA")
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


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def open_raster(
    path: PathLike,
    *,
    chunks: Any = "auto",
    band_names: Sequence[str] | None = None,
    variable: str | None = None,
) -> xr.DataArray:
    """Open a GeoTIFF/COG (or anything GDAL reads) or a Zarr store as a lazy array.

    Parameters
    ----------
    path : str or os.PathLike
        A raster file GDAL can read, or a Zarr store (v2 or v3): a path ending in ``.zarr``
        or a directory holding ``zarr.json``, ``.zgroup`` or ``.zarray``.
    chunks : "auto", int, tuple, dict or None, default "auto"
        Dask chunks. ``"auto"`` gives chunks that are whole multiples of the stored blocks,
        about 2048 x 2048 pixels (the whole band when smaller), and one stored chunk along
        every other dim (one date and band for stacks written by :func:`write_raster`);
        anything else is passed on to rioxarray / xarray as is (``None`` gives a lazily
        indexed array without dask).
    band_names : sequence of str, optional
        Labels for the ``band`` coordinate, one per band; they replace the labels read
        from the file (band descriptions, else ``1..n``). The raster needs a ``band`` dim.
    variable : str, optional
        The data variable to read from a Zarr store holding several. Not used for GDAL
        rasters.

    Returns
    -------
    xarray.DataArray
        Dims ``(band, y, x)`` for GDAL rasters and for Zarr variables with only spatial
        dims; otherwise the Zarr variable's own dims with the spatial ones last, e.g.
        ``(time, band, y, x)``, with their coordinates. The stored dtype (integers are not
        cast to float), CRS and transform through ``.rio``, nodata as metadata in
        ``attrs["_FillValue"]`` (``.rio.nodata``, ``.odc.nodata``), and
        ``encoding["source"]`` set to the resolved path.

    Raises
    ------
    RasterReadError
        The path does not exist, is not a raster, cannot be read, ``variable`` is missing
        or needed, or a Zarr variable has chunks that were never written (unless its fill
        value is its nodata and the store was not written by :func:`write_raster`, which
        writes every chunk). Later, when blocks are computed: a block that cannot be read
        (damaged file or chunk), naming the file, band, rows, columns and cause. Chunks
        of Zarr stores written by :func:`write_raster` are checked against their crc32c
        checksum; a foreign store without one is only as safe as its compressor, which
        may decode a truncated chunk into wrong pixels without an error.
    OptionError
        ``chunks`` cannot chunk the array, or would give more than :data:`MAX_BLOCKS`
        blocks.
    DimensionError
        The Zarr variable has no spatial dims (``y``/``x``, ``latitude``/``longitude``,
        ``lat``/``lon``), or ``band_names`` is given for a raster without a ``band`` dim.
    BandMismatchError
        ``band_names`` does not have one name per band.

    Examples
    --------
    >>> from rastermatch.io import open_raster
    >>> scene = open_raster("data/rasterio_RGB.byte.tif")
    >>> scene.dims, scene.dtype.name, scene.rio.nodata
    (('band', 'y', 'x'), 'uint8', np.uint8(0))
    >>> scene.band.values.tolist()
    [1, 2, 3]
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise RasterReadError(f"{source} does not exist; check the path")
    source = source.resolve()
    if _is_zarr_path(source):
        result = _open_zarr(source, chunks=chunks, variable=variable)
    else:
        if variable is not None:
            raise RasterReadError(
                f"variable={variable!r} selects a data variable of a Zarr store, but {source} "
                "is read by GDAL; drop variable="
            )
        result = _open_gdal(source, chunks=chunks)
    if band_names is not None:
        result = _relabel_bands(result, band_names, source)
    result.encoding["source"] = str(source)
    return result


def read_provenance(path: PathLike) -> dict[str, Any] | None:
    """Read the provenance record :func:`write_raster` stored in an output.

    Parameters
    ----------
    path : str or os.PathLike
        A GeoTIFF or Zarr store written by :func:`write_raster`.

    Returns
    -------
    dict or None
        The provenance dict, or ``None`` when the raster has none.

    Raises
    ------
    RasterReadError
        The path does not exist or is not readable, or the stored record is not valid JSON.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise RasterReadError(f"{source} does not exist; check the path")
    if _is_zarr_path(source):
        dataset = _open_zarr_dataset(source)
        for name in dataset.data_vars:
            record = dataset[name].attrs.get(PROVENANCE_ATTR)
            if record is not None:
                return dict(record)
        return None
    try:
        with rasterio.open(source) as src:
            raw = src.tags(ns=PROVENANCE_DOMAIN).get(PROVENANCE_KEY)
    except rasterio.errors.RasterioError as exc:
        raise RasterReadError(f"cannot read {source}: {exc}") from exc
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise RasterReadError(
            f"the {PROVENANCE_DOMAIN}/{PROVENANCE_KEY} metadata of {source} is not valid "
            f"JSON: {exc}"
        ) from exc


def _is_zarr_path(path: Path) -> bool:
    if path.suffix.lower() == ".zarr":
        return True
    return path.is_dir() and any((path / marker).exists() for marker in _ZARR_MARKERS)


def _open_gdal(path: Path, *, chunks: Any) -> xr.DataArray:
    # Probe the file once with rasterio: a clear error for non-rasters, and the block layout
    # and band descriptions rioxarray does not expose.
    try:
        with rasterio.open(path) as src:
            count = src.count
            block_shape = src.block_shapes[0] if count else (1, 1)
            pixel_interleaved = src.interleaving == Interleaving.pixel
            descriptions = src.descriptions
            height, width = src.height, src.width
            subdatasets = src.subdatasets
            colorinterp = [ci.name for ci in src.colorinterp]
    except (rasterio.errors.RasterioError, rasterio._err.CPLE_BaseError) as exc:
        raise RasterReadError(f"cannot read {path} as a raster: {_cause(exc)}") from exc
    if count == 0:
        hint = f" (subdatasets: {', '.join(subdatasets[:3])}, ...)" if subdatasets else ""
        raise RasterReadError(
            f"{path} has no raster bands{hint}; open one of its subdatasets by name instead"
        )

    shape = (count, height, width)
    if isinstance(chunks, str) and chunks == "auto":
        band_chunk = count if pixel_interleaved else 1
        chunks = _aligned_chunks(shape, (band_chunk, *block_shape))
    try:
        # chunks=None: a lazily indexed array with one rasterio handle per thread (lock=False),
        # chunked below through the guard that names file, band and window on a failed read
        result = rioxarray.open_rasterio(path, chunks=None, cache=False, masked=False, lock=False)
    except (rasterio.errors.RasterioError, rasterio._err.CPLE_BaseError) as exc:
        raise RasterReadError(f"cannot read {path} as a raster: {_cause(exc)}") from exc
    if not isinstance(result, xr.DataArray):  # pragma: no cover - count > 0 was checked
        raise RasterReadError(f"{path} holds several rasters; open one of them by name")
    if chunks is not None:
        result = _guarded_chunks(result, chunks, where=str(path), source=path, stored=None)
    if any(name not in ("gray", "undefined", "palette") for name in colorinterp):
        result.attrs[COLORINTERP_ATTR] = dict(
            zip((str(b) for b in result.band.values), colorinterp, strict=True)
        )
    labels = _labels_from_descriptions(descriptions)
    if labels is not None:
        result = _relabel(result, labels)
    return _one_nodata(result)  # a "nodata" metadata tag of the file must not contradict it


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
    ) -> None:
        self._variable = variable
        self._where = where
        self._stored = stored
        self._labels = dict(labels or {})
        self.shape = variable.shape
        self.dtype = variable.dtype
        self.ndim = variable.ndim

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._variable[key].values)
        except RastermatchError:
            raise
        except Exception as exc:
            # Zarr: only now, after a failure, read the window stored chunk by stored chunk
            # to name the damaged one (a block spans many chunks; the first read says not
            # which failed).
            key, error = self._failed_chunk(key) or (key, exc)
            raise RasterReadError(
                f"reading {self._where} {self._window(key)} failed: {_cause(error)}; the file "
                "is damaged or incomplete, copy or download it again"
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
    return "; ".join(parts)


def _guarded_chunks(
    data: xr.DataArray,
    chunks: Any,
    *,
    where: str,
    source: Path,
    stored: tuple[int, ...] | None,
) -> xr.DataArray:
    """``data`` (lazily indexed, not dask) as a dask array read through :class:`_GuardedBlocks`.

    Row dims other than ``band`` with a coordinate (a stack's dates) are named by their labels
    in read errors.
    """
    normalized = _normalize_chunks(chunks, data, source)
    try:
        mtime = source.stat().st_mtime_ns
    except OSError:
        mtime = None
    token = dask.base.tokenize(str(source), mtime, where, normalized)
    labels = {
        dim: np.asarray(data[dim].values)
        for dim in data.dims
        if dim not in ("band", *_Y_NAMES, *_X_NAMES) and dim in data.coords and data[dim].ndim == 1
    }
    blocks = _GuardedBlocks(data.variable, where, stored, labels)
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


def _normalize_chunks(chunks: Any, data: xr.DataArray, source: Path) -> tuple[tuple[int, ...], ...]:
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


def _labels_from_descriptions(descriptions: Sequence[str | None]) -> np.ndarray | None:
    """Band descriptions as string labels, or None when there are none or they clash."""
    if not any(descriptions):
        return None
    labels = [desc if desc else str(i) for i, desc in enumerate(descriptions, start=1)]
    if len(set(labels)) != len(labels):
        # Duplicate labels would make the band index ambiguous for selection and alignment;
        # rioxarray keeps the descriptions in the long_name attribute anyway.
        return None
    return np.array(labels, dtype=str)


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


def _consolidated(path: Path) -> bool:
    """Whether the store has consolidated metadata (asking avoids xarray's fallback warning)."""
    if (path / ".zmetadata").exists():
        return True
    meta = path / "zarr.json"
    if meta.exists():
        try:
            return json.loads(meta.read_text()).get("consolidated_metadata") is not None
        except (OSError, ValueError):
            return False
    return False


def _open_zarr_dataset(path: Path) -> xr.Dataset:
    if not path.is_dir():
        raise RasterReadError(f"{path} is not a Zarr store (not a directory)")
    if _zarr_root_is_array(path):
        raise RasterReadError(
            f"{path} is a bare Zarr array; open_raster reads Zarr groups with named variables "
            "(as written by xarray or write_raster)"
        )
    try:
        return xr.open_zarr(
            path,
            chunks=None,  # chunked later, aligned to the stored chunks
            decode_coords="all",
            mask_and_scale=False,
            consolidated=_consolidated(path),
        )
    except Exception as exc:
        raise RasterReadError(f"cannot read the Zarr store {path}: {exc}") from exc


def _zarr_root_is_array(path: Path) -> bool:
    if (path / ".zarray").exists():
        return True
    meta = path / "zarr.json"
    if meta.exists():
        try:
            return json.loads(meta.read_text()).get("node_type") == "array"
        except (OSError, ValueError):
            return False
    return False


def _open_zarr(path: Path, *, chunks: Any, variable: str | None) -> xr.DataArray:
    dataset = _open_zarr_dataset(path)
    name = _select_variable(dataset, variable, path)
    result = dataset[name]
    ydim, xdim = spatial_dims(result, f"variable {name!r} of {path}")
    rows = [dim for dim in result.dims if dim not in (ydim, xdim)]
    _refuse_missing_chunks(path, name, result)
    stored_chunks = tuple(result.encoding.get("chunks") or result.shape)
    stored = dict(zip(result.dims, stored_chunks, strict=True))
    if isinstance(chunks, str) and chunks == "auto":
        # one stored chunk along every row dim (one date and band for stores written here),
        # about TARGET_CHUNK_EDGE pixels square along y/x
        y, x = _aligned_yx(result.sizes[ydim], result.sizes[xdim], stored[ydim], stored[xdim])
        chunks = {dim: max(1, min(stored[dim], result.sizes[dim])) for dim in rows}
        chunks.update({ydim: y, xdim: x})
    if isinstance(chunks, Mapping):
        chunks = {dim: size for dim, size in chunks.items() if dim in result.dims}
    if chunks is not None:
        # Chunk before adding the band dim: expanding a lazily indexed (not yet dask) array
        # would load it.
        where = f"the Zarr store {path}, variable {name!r},"
        result = _guarded_chunks(result, chunks, where=where, source=path, stored=stored_chunks)
    if not rows:  # a single image reads as band 1, as a GeoTIFF would
        result = result.expand_dims(band=np.array([1]))
        rows = ["band"]
    result = result.transpose(*rows, ydim, xdim)
    for key, coord in result.coords.items():
        if coord.dtype.kind not in "OT":
            continue
        try:
            values = coord.values
        except Exception as exc:  # a damaged chunk of the coordinate
            raise RasterReadError(
                f"reading the coordinate {key!r} of the Zarr store {path} failed: {_cause(exc)}; "
                "the store is damaged or incomplete, copy or write it again"
            ) from exc
        if all(isinstance(v, str) for v in values.flat):
            # variable-length strings (labels, stackstac's ids): plain numpy str
            result = result.assign_coords(
                {key: (coord.dims, np.array(values.tolist(), dtype=str), coord.attrs)}
            )
    return _one_nodata(result)


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


def _refuse_missing_chunks(path: Path, name: Hashable, variable: xr.DataArray) -> None:
    """Refuse a Zarr variable with chunks never written, unless they read as its nodata.

    Zarr reads a missing chunk as the array's fill value. When that value is the
    variable's nodata, missing chunks are no data by Zarr's own rule; otherwise they would
    enter the statistics as valid pixels of an arbitrary value. A store written by
    :func:`write_raster` has every chunk (its marker or provenance attribute says so): a
    missing one there is a damaged or partial copy, refused whatever the fill value.
    """
    import zarr

    try:
        array = zarr.open_group(path, mode="r")[str(name)]
        total = int(array.nchunks)
        present = int(array.nchunks_initialized)
        fill = array.fill_value
    except Exception:  # not judged here: reading the chunks reports any real problem
        return
    if present >= total:
        return
    attrs = variable.attrs
    if attrs.get(COMPLETE_CHUNKS_ATTR) is True or PROVENANCE_ATTR in attrs:
        raise RasterReadError(
            f"variable {name!r} of the Zarr store {path} is missing {total - present:,} of its "
            f"{total:,} chunks, although the store was written with every chunk: it is "
            "damaged or an incomplete copy; copy or write it again"
        )
    nodata = nodata_of(variable)
    if nodata is not None and fill is not None:
        fill_value, nodata_value = float(fill), float(nodata)
        if fill_value == nodata_value or (math.isnan(fill_value) and math.isnan(nodata_value)):
            return
    raise RasterReadError(
        f"variable {name!r} of the Zarr store {path} is missing {total - present:,} of its "
        f"{total:,} chunks, which would read as the fill value {fill} although the nodata is "
        f"{nodata}; write the store completely again, or set its nodata to {fill} if missing "
        "chunks mean no data"
    )


def _select_variable(dataset: xr.Dataset, variable: str | None, path: Path) -> Hashable:
    candidates = [name for name in dataset.data_vars if dataset[name].ndim >= 2]
    if variable is not None:
        if variable not in dataset.data_vars:
            raise RasterReadError(
                f"{path} has no data variable {variable!r}; it has {_names(dataset.data_vars)}"
            )
        return variable
    if not candidates:
        raise RasterReadError(f"{path} holds no 2-D or 3-D data variable to read as a raster")
    if len(candidates) > 1:
        raise RasterReadError(
            f"{path} holds several data variables ({_names(candidates)}); pick one with variable="
        )
    return candidates[0]


def _names(names: Iterable[Hashable]) -> str:
    return ", ".join(repr(n) for n in names)


def _relabel_bands(data: xr.DataArray, band_names: Sequence[str], path: Path) -> xr.DataArray:
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
    """New band labels; the colour interpretation, keyed by label, follows them."""
    result = data.assign_coords(band=labels)
    interp = data.attrs.get(COLORINTERP_ATTR)
    if isinstance(interp, Mapping):
        old = [str(b) for b in data.band.values]
        result.attrs[COLORINTERP_ATTR] = {
            str(new): interp[o] for o, new in zip(old, labels, strict=True) if o in interp
        }
    return result


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_raster(
    data: xr.DataArray,
    path: PathLike,
    *,
    overwrite: bool = False,
    compute: bool = True,
    provenance: Mapping[str, Any] | None = None,
    inputs: Iterable[PathLike] = (),
    cog: bool = False,
    compress: Any = None,
    lock: Any = None,
    tile_size: int = 512,
    compute_with: Sequence[Any] = (),
) -> Path | Delayed:
    """Write a raster or a stack to GeoTIFF/COG or Zarr v3, block by block, atomically.

    Parameters
    ----------
    data : xarray.DataArray
        Spatial dims ``y``/``x`` (or ``latitude``/``longitude``, ``lat``/``lon``) and any
        row dims, written as ``(*row dims, y, x)``: ``(band, y, x)``, ``(y, x)``, or for
        Zarr a stack such as ``(time, band, y, x)``. Dask- or numpy-backed, georeferenced
        through rioxarray (``.rio.crs``, ``.rio.transform()``; both may be missing), with
        its nodata as :func:`nodata_of` finds it (may be ``None``) and labels in the row
        dims' coordinates. Coordinates and attributes no format holds are dropped.
    path : str or os.PathLike
        Output path; its suffix picks the format: ``.tif``/``.tiff`` (GeoTIFF) or ``.zarr``.
    overwrite : bool, default False
        Replace an existing output. Without it an existing output is refused.
    compute : bool, default True
        Write now and return the path. With ``False``, return a :class:`dask.delayed.Delayed`
        that does the whole write (temporary file and final move included) when computed.
    provenance : dict, optional
        JSON-serialisable record of how the data were made. Zarr: the attribute
        ``rastermatch`` of the data variable; GeoTIFF: the JSON string under key
        ``provenance`` of the GDAL metadata domain ``RASTERMATCH``. Read it back with
        :func:`read_provenance`.
    inputs : iterable of path, optional
        Paths the data were computed from, besides ``data.encoding["source"]``; writing over
        any of them is refused.
    cog : bool, default False
        GeoTIFF only: write a Cloud-Optimized GeoTIFF with overviews (averaged, nodata
        respected).
    compress : str or zarr codec, optional
        GeoTIFF: ``"zstd"`` (default), ``"deflate"``, ``"lzw"``, ``"lzma"``, ``"packbits"``
        or ``"none"``; a horizontal (integers) or floating-point predictor is added for the
        first four. Zarr: ``"lz4"`` (default: Blosc LZ4 with byte shuffle, which measured far
        faster than zstd and compressed better), ``"zstd"`` (level 1), ``"none"``, or zarr
        bytes-to-bytes codec object(s). A ``crc32c`` checksum codec always follows, so
        damaged chunks are detected when read.
    lock : threading.Lock-like, optional
        GeoTIFF: the lock serialising writes to the one open file handle (a new
        :class:`threading.Lock` by default). Not used for Zarr, whose chunks are
        independent, nor under a distributed client, where one thread writes.
    tile_size : int, default 512
        GeoTIFF tile edge in pixels (a multiple of 16). Dask chunks that do not fall on tile
        boundaries are rechunked so that each tile is written whole, once.
    compute_with : sequence of dask collections, optional
        Computed together with the blocks, so that what they share (the blocks of the input
        the data are computed from) is read once: a GeoTIFF written by a local scheduler runs
        them in the same ``dask.compute``; Zarr and a distributed client compute them first.
        ``provenance`` may then be a callable taking their computed values and returning the
        record, stored before the output is moved into place.

    Returns
    -------
    pathlib.Path or dask.delayed.Delayed
        The absolute output path, or the delayed write when ``compute=False``.

    Raises
    ------
    OutputExistsError
        The output exists and ``overwrite`` is False.
    RasterWriteError
        The output would overwrite an input, the suffix or options are not supported, the
        directory does not exist, or the write failed.
    DimensionError
        ``data`` has no spatial dims, or a GeoTIFF is asked for a stack: a row dim other
        than ``band`` with more than one label (checked before any work).
    UnsupportedDtypeError
        The format cannot store ``data.dtype``.

    Notes
    -----
    Threaded or synchronous scheduler: GeoTIFF blocks go through
    :func:`dask.array.store` into one open rasterio dataset (writes serialised by ``lock``,
    compression multi-threaded inside GDAL). Distributed scheduler (the default
    ``dask.distributed`` client, or when the delayed write runs on a worker): the array is
    persisted on the cluster and this process writes each block as soon as it is finished,
    then releases it; blocks finished faster than they are written wait in worker memory.
    Zarr chunks are written by whichever worker computes them, so with a distributed
    cluster the output directory must be on storage all workers share.

    A failed or interrupted write leaves neither the output nor a temporary (see the
    module documentation; turn SIGTERM into ``KeyboardInterrupt`` to extend this to it).
    Under a distributed client an interrupted write cancels its futures; a task already
    running on a worker cannot be stopped and finishes its block. dask's
    multiprocessing scheduler cannot share the GeoTIFF handle and is refused for GeoTIFF
    outputs (use threads or a distributed client).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from rastermatch.io import open_raster, read_provenance, write_raster
    >>> scene = open_raster("data/rasterio_RGB.byte.tif")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     out = write_raster(scene, Path(tmp) / "scene.zarr", provenance={"step": "copy"})
    ...     copy = open_raster(out)
    ...     (out.name, copy.dtype.name, copy.rio.crs.to_epsg(), read_provenance(out))
    ('scene.zarr', 'uint8', 32618, {'step': 'copy'})

    A stack keeps its dims and labels in Zarr:

    >>> import numpy as np, xarray as xr
    >>> dates = np.array(["2020-01-01", "2020-02-01"], dtype="datetime64[ns]")
    >>> stack = xr.concat([scene, scene], dim="time").assign_coords(time=dates)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     back = open_raster(write_raster(stack, Path(tmp) / "stack.zarr"))
    ...     back.dims, str(back.time.values[1])[:10], back.chunksizes["time"]
    (('time', 'band', 'y', 'x'), '2020-02-01', (1, 1))
    """
    final = Path(path).expanduser().absolute()
    fmt = _output_format(final)
    if isinstance(data, xr.Dataset):
        raise InputTypeError(
            f"write_raster writes one xarray.DataArray, got a Dataset for {final}; stack its "
            "variables as bands with ds.to_dataarray('band'), or write each variable"
        )
    if not isinstance(data, xr.DataArray):
        raise InputTypeError(
            f"write_raster needs an xarray.DataArray with dims (band, y, x), got "
            f"{type(data).__name__} for {final}; wrap arrays with xarray.DataArray(...)"
        )
    data = _as_rows_yx(data, fmt, final)
    _check_dtype(data.dtype, fmt, final)
    if cog and fmt != "gtiff":
        raise RasterWriteError(f"cog=True makes a Cloud-Optimized GeoTIFF; {final} is a Zarr path")
    if (
        isinstance(tile_size, bool)
        or not isinstance(tile_size, int)
        or tile_size <= 0
        or tile_size % 16
    ):
        raise RasterWriteError(f"tile_size must be a positive multiple of 16, got {tile_size!r}")

    sources = [data.encoding.get("source"), *inputs]
    check_output_path(final, inputs=[s for s in sources if s], overwrite=overwrite)

    job = _WriteJob(
        data=data,
        final=final,
        fmt=fmt,
        overwrite=overwrite,
        provenance=provenance if callable(provenance) else _provenance_json(provenance),
        compute_with=tuple(compute_with),
        cog=cog,
        compress=(_gtiff_compression(compress) if fmt == "gtiff" else _zarr_compressors(compress)),
        lock=lock,
        tile_size=tile_size,
    )
    if not compute:
        # One task runs the whole write, so the temporary-then-move rule (and the cleanup on
        # failure) holds however the result is computed. The array travels inside the job
        # object, which dask does not traverse, so it is computed block by block by the
        # write itself rather than materialised as an argument.
        return dask.delayed(_execute, pure=False)(
            job, dask_key_name=f"write_raster-{secrets.token_hex(8)}"
        )
    return _execute(job)


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
        "provenance",
        "tile_size",
    )

    def __init__(self, **fields: Any) -> None:
        for key, value in fields.items():
            setattr(self, key, value)


def _output_format(path: Path) -> Literal["gtiff", "zarr"]:
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in _GTIFF_SUFFIXES:
        return "gtiff"
    raise RasterWriteError(
        f"cannot tell the format of {path} from its suffix {suffix!r}; use .tif, .tiff "
        "(GeoTIFF) or .zarr (Zarr v3)"
    )


def _as_rows_yx(data: xr.DataArray, fmt: str, final: Path) -> xr.DataArray:
    """``data`` as ``(*row dims, y, x)``: the row dims in their order, the spatial dims last.

    A GeoTIFF holds ``(band, y, x)``: row dims other than ``band`` must be of length 1 (a
    ``groupby("time")`` group) and are squeezed (their label stays a scalar coordinate,
    which a GeoTIFF does not store); anything else is refused here, before any work.
    """
    ydim, xdim = spatial_dims(data, f"the data to write to {final}")
    rows = [dim for dim in data.dims if dim not in (ydim, xdim)]
    if fmt == "gtiff":
        extra = [dim for dim in rows if dim != "band" and data.sizes[dim] == 1]
        data = data.squeeze(extra) if extra else data
        rows = [dim for dim in rows if dim not in extra]
        if rows not in ([], ["band"]):
            sizes = ", ".join(f"{dim}: {data.sizes[dim]}" for dim in rows)
            date = next(dim for dim in rows if dim != "band")
            rename = f", or store it as bands: data.rename({{{date!r}: 'band'}})"
            raise DimensionError(
                f"a GeoTIFF holds (band, y, x) but the data for {final} has rows ({sizes}); "
                f"write a .zarr stack instead, or one GeoTIFF per {date} "
                f"(data.isel({date}=i) for each i){rename if rows == [date] else ''}"
            )
        data = data.rename({ydim: "y", xdim: "x"}) if (ydim, xdim) != ("y", "x") else data
        ydim, xdim = "y", "x"
    if not rows:
        return data.transpose(ydim, xdim).expand_dims(band=np.array([1]))
    return data.transpose(*rows, ydim, xdim)


def _check_dtype(dtype: np.dtype, fmt: str, path: Path) -> None:
    if fmt == "gtiff":
        if dtype.kind not in "iuf" or not rasterio.dtypes.check_dtype(dtype):
            raise UnsupportedDtypeError(
                f"GeoTIFF cannot store {dtype} data ({path}); cast with .astype() or write .zarr"
            )
    elif dtype.kind not in "biuf":
        raise UnsupportedDtypeError(
            f"write_raster writes numeric rasters; {dtype} cannot be written to {path}"
        )


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


def check_output_path(
    path: PathLike,
    *,
    inputs: Iterable[PathLike | None] = (),
    overwrite: bool = False,
    kind: Literal["raster", "file"] = "raster",
) -> Path:
    """Check, before any work, that ``path`` can be written; return it as an absolute path.

    The checks :func:`write_raster` makes up front, for callers that want them before a long
    statistics pass (the pipeline and the command line call it first for every output:
    rasters, LUT files, reports). The write itself checks again when it runs.

    Parameters
    ----------
    path : str or os.PathLike
        The output.
    inputs : iterable of path, optional
        Every input of the job (sources, references, masks, LUT files); ``None`` entries
        are skipped. The output may not be any of them (compared as resolved paths, so
        links and ``..`` do not hide one), lie inside an input Zarr store, or contain one.
    overwrite : bool, default False
        Whether an existing output may be replaced.
    kind : {"raster", "file"}, default "raster"
        ``"raster"``: the suffix must name a raster format (``.tif``, ``.tiff``, ``.zarr``) and
        an existing directory is replaced only when it is a Zarr store. ``"file"``: any
        suffix; an existing directory is never replaced.

    Returns
    -------
    pathlib.Path
        The absolute output path.

    Raises
    ------
    OutputExistsError
        The output exists and ``overwrite`` is False. Its ``path`` attribute is the output,
        so a caller can word the fix in its own terms (``--overwrite``).
    RasterWriteError
        The suffix names no raster format, the name is longer than file systems allow
        (255 bytes), the directory does not exist or is not writable, or the output is an
        input.

    Examples
    --------
    >>> from rastermatch.io import check_output_path
    >>> check_output_path("data/new.tif").name
    'new.tif'
    >>> check_output_path("data/rasterio_RGB.byte.tif", overwrite=True,
    ...                   inputs=["data/rasterio_RGB.byte.tif"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rastermatch.errors.RasterWriteError: refusing to write .../rasterio_RGB.byte.tif: ...
    """
    final = Path(path).expanduser().absolute()
    if kind not in ("raster", "file"):
        raise OptionError(f"kind must be 'raster' or 'file', got {kind!r} (checking {final})")
    if kind == "raster":
        _output_format(final)
    size = len(os.fsencode(final.name))
    if size > NAME_MAX:
        raise RasterWriteError(
            f"cannot write {final}: its name is {size} bytes long and file systems allow at "
            f"most {NAME_MAX}; choose a shorter name"
        )
    parent = final.parent
    if not parent.is_dir():
        raise RasterWriteError(
            f"cannot write {final}: the directory {parent} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RasterWriteError(
            f"cannot write {final}: the directory {parent} is not writable; check its "
            "permissions or write elsewhere"
        )
    _refuse_inputs(final, [source for source in inputs if source is not None])
    _refuse_existing(final, overwrite=overwrite, kind=kind)
    return final


def _refuse_inputs(final: Path, sources: Iterable[PathLike]) -> None:
    target = final.resolve()
    for source in sources:
        resolved = Path(source).expanduser().resolve()
        inside_input_store = target.is_relative_to(resolved) and _is_zarr_path(resolved)
        if resolved == target or resolved.is_relative_to(target) or inside_input_store:
            raise RasterWriteError(
                f"refusing to write {final}: it would overwrite the input {source}; write to "
                "another path"
            )


def _exists_error(final: Path, what: str = "exists already") -> OutputExistsError:
    error = OutputExistsError(
        f"{final} {what}; allow replacing it (overwrite=True, or --overwrite on the command "
        "line) or write to another path"
    )
    error.path = final  # type: ignore[attr-defined]
    return error


def _refuse_existing(final: Path, *, overwrite: bool, kind: str = "raster") -> None:
    if not (final.exists() or final.is_symlink()):
        return
    if not overwrite:
        raise _exists_error(final)
    if (
        final.is_dir()
        and not final.is_symlink()
        and (kind == "file" or not _is_zarr_path_on_disk(final))
    ):
        what = "not a Zarr store" if kind == "raster" else "not a file"
        raise RasterWriteError(
            f"{final} is a directory, {what}; refusing to replace it, remove it yourself if "
            "it should go"
        )


def _is_zarr_path_on_disk(path: Path) -> bool:
    return any((path / marker).exists() for marker in _ZARR_MARKERS)


# The write itself: temporary sibling, format writer, move into place ----------------------
#
# What a write leaves, whatever happens:
# 1. Success: the complete output under its final name, nothing else.
# 2. An error (a failed block, a full disk, GDAL reporting a failed tile flush) or an
#    interrupt (KeyboardInterrupt; SIGTERM once the caller turns it into an exception): the
#    final name untouched (absent, or the previous output when overwriting) and no
#    temporary. Blocks are computed on a thread pool the write owns, and that pool is shut
#    down (running blocks finished, queued ones cancelled) before the temporary is removed,
#    so no thread writes into it afterwards; the move into place happens only after every
#    block is written and the file is closed.
# 3. A process killed outright (SIGKILL, power loss): a temporary whose name records the
#    process id and a hash of the host name. The next write to the same output removes it
#    when that process is gone, and warns about the ones it cannot judge (another host).


def _execute(job: _WriteJob) -> Path:
    _refuse_existing(job.final, overwrite=job.overwrite)  # again: a delayed write runs later
    remove_stale_temporaries(job.final)
    # Named when the write runs, by the process that writes: a write retried after its
    # worker died finds the dead attempt's temporary by that worker's pid and host.
    tmp = _sibling(job.final, "tmp")
    try:
        with _distributed_client() as client:
            if job.compute_with and (job.fmt == "zarr" or client is not None):
                _settle_provenance(job, dask.compute(*job.compute_with))
            if job.fmt == "zarr":
                _write_zarr(job, tmp, client)
            else:
                _write_geotiff(job, tmp, client)
        move_into_place(tmp, job.final, overwrite=job.overwrite)
    except BaseException as exc:
        _remove_despite_interrupts(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, RastermatchError):
            raise _write_error(job.final, exc) from exc
        raise
    return job.final


def _settle_provenance(job: _WriteJob, computed: Sequence[Any]) -> None:
    """The record of a callable ``provenance`` from the values of ``compute_with``."""
    if callable(job.provenance):
        job.provenance = _provenance_json(job.provenance(computed))


def _write_error(final: Path, exc: OSError) -> RasterWriteError:
    """A RasterWriteError naming the output for an OSError of the file system (zarr, fsspec)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    hints = {
        errno.ENOSPC: f"free some space on the device holding {final.parent} or write elsewhere",
        errno.EDQUOT: "free some of your disk quota or write elsewhere",
        errno.EFBIG: "the file system or a file-size limit (ulimit -f) refuses files this big",
        errno.EACCES: "check the permissions of the output directory",
        errno.EPERM: "check the permissions of the output directory",
        errno.EROFS: "the file system is read-only; write elsewhere",
    }
    hint = hints.get(exc.errno or -1, "check the output directory and try again")
    return RasterWriteError(f"writing {final} failed: {reason}; {hint}")


def _remove_despite_interrupts(path: Path) -> None:
    """Remove ``path``; a second Ctrl-C while it is removed is held back until it is gone."""
    interrupted = False
    while True:
        try:
            _remove(path)
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


# Temporary names -----------------------------------------------------------------------------
#
# .{name}.rastermatch-{pid}-{host}-{token}.{tag}: pid and host (a hash of the host name) say
# who made it, so a later run can tell a temporary of a dead process from one still being
# written. Names longer than the file system allows are shortened with a hash of the full
# name (the same hash every run, so the next run still finds them).

#: Longest file name (bytes) the writers allow: the NAME_MAX of common file systems.
NAME_MAX = 255
_TEMP_MARK = "rastermatch"
_TEMP_TAGS = ("tmp", "staging", "old")
# "-{pid}-{host}-{token}.staging": pid up to 10 digits, 8 hex host, 8 hex token
_TEMP_TAIL_MAX = len("-0123456789-01234567-01234567.staging")
# the tag may be followed by the output's own suffix (".tmp.png": a report keeps its format)
_TEMP_RE = re.compile(r"-(\d+)-([0-9a-f]{8})-([0-9a-f]{8})\.(tmp|staging|old)(?:\.\w{1,8})?")


def _host_hash() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_prefix(final: Path) -> str:
    """The part of every temporary name of ``final`` before ``-{pid}-{host}-{token}.{tag}``."""
    prefix = f".{final.name}.{_TEMP_MARK}"
    if len(os.fsencode(prefix)) + _TEMP_TAIL_MAX <= NAME_MAX:
        return prefix
    digest = hashlib.sha256(os.fsencode(final.name)).hexdigest()[:16]
    keep = os.fsencode(final.name)[:100].decode(errors="ignore")
    return f".{keep}~{digest}.{_TEMP_MARK}"


def _sibling(path: Path, tag: str) -> Path:
    """A hidden, unique name next to ``path``: same file system, so the move is a rename."""
    token = secrets.token_hex(4)
    return path.with_name(f"{_temp_prefix(path)}-{os.getpid()}-{_host_hash()}-{token}.{tag}")


def temporary_sibling(path: PathLike, *, keep_suffix: bool = False) -> Path:
    """A unique hidden name next to ``path`` for writing it before moving it into place.

    Named by process and host like every temporary of rastermatch, so that
    :func:`remove_stale_temporaries` finds it if the process is killed. ``keep_suffix`` ends
    the name with ``path``'s own suffix (a writer that picks its format by the suffix).
    """
    final = Path(path).expanduser().absolute()
    tmp = _sibling(final, "tmp")
    suffix = final.suffix if keep_suffix and re.fullmatch(r"\.\w{1,8}", final.suffix) else ""
    return tmp.with_name(tmp.name + suffix)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Remove the temporaries that killed writes of ``path`` left; return what was removed.

    A write killed by SIGKILL or a power loss cannot clean up after itself. Its temporaries
    are recognised by their names (``.{name}.rastermatch-{pid}-{host}-{token}.{tag}``).
    Those made on this host by a process that no longer runs are removed; a previous output
    that was moved aside to be replaced is put back when the final name is empty, so a killed
    overwrite keeps the old output. Temporaries made on another host (a shared file system)
    cannot be judged from here: each is reported with a
    :class:`~rastermatch.errors.StaleTemporaryWarning` naming it, and left in place.
    :func:`write_raster` calls this before every write.

    Parameters
    ----------
    path : str or os.PathLike
        The output path whose temporaries to look for.

    Returns
    -------
    list of pathlib.Path
        The temporaries removed (or put back in place).
    """
    final = Path(path).expanduser().absolute()
    prefix = _temp_prefix(final)
    host = _host_hash()
    removed: list[Path] = []
    try:
        candidates = sorted(p for p in final.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return removed
    for candidate in candidates:
        match = _TEMP_RE.fullmatch(candidate.name[len(prefix) :])
        if match is None:
            continue
        pid, owner_host, tag = int(match[1]), match[2], match[4]
        if owner_host != host:
            warnings.warn(
                f"{candidate} looks like the temporary of an interrupted write of {final} on "
                "another host; remove it yourself once no write of that output runs there",
                StaleTemporaryWarning,
                stacklevel=2,
            )
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue  # a write in progress
        if tag == "old" and not (final.exists() or final.is_symlink()):
            with contextlib.suppress(OSError):
                os.replace(candidate, final)  # a killed overwrite: the old output comes back
                removed.append(candidate)
                continue
        _remove(candidate)
        removed.append(candidate)
    return removed


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        for _ in range(3):  # a directory tree still being written to may need another pass
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                break
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def move_into_place(tmp: Path, final: Path, *, overwrite: bool) -> None:
    """Move a finished temporary onto ``final``; without ``overwrite`` never replace a file that
    appeared meanwhile (OutputExistsError)."""
    exists = final.exists() or final.is_symlink()
    if not exists:
        if not tmp.is_dir():
            # A hard link cannot replace a file that appeared in the meantime (another
            # process): the no-overwrite promise holds without a race.
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise _exists_error(final, "appeared while it was being written") from None
            except OSError:  # file system without hard links
                os.replace(tmp, final)
            else:
                tmp.unlink()
            return
        os.replace(tmp, final)  # refuses a non-empty directory that appeared meanwhile
        return
    if not overwrite:
        raise _exists_error(final, "appeared while it was being written")
    if not (tmp.is_dir() or (final.is_dir() and not final.is_symlink())):
        os.replace(tmp, final)  # file over file: atomic
        return
    # A directory cannot be renamed over a non-empty one: move the old output aside, move
    # the new one in, and only then delete the old one (put it back if the move fails).
    old = _sibling(final, "old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    _remove(old)


# GeoTIFF -----------------------------------------------------------------------------------


def _gtiff_compression(compress: Any) -> str:
    name = "ZSTD" if compress is None else compress
    if not isinstance(name, str) or name.upper() not in _GTIFF_COMPRESSIONS:
        allowed = ", ".join(c.lower() for c in _GTIFF_COMPRESSIONS)
        raise RasterWriteError(f"GeoTIFF compress must be one of {allowed}; got {compress!r}")
    return name.upper()


def _predictor(compression: str, dtype: np.dtype) -> int | None:
    if compression not in _PREDICTOR_COMPRESSIONS:
        return None
    return 3 if dtype.kind == "f" else 2


def _write_geotiff(job: _WriteJob, tmp: Path, client: Any) -> None:
    if client is None and getattr(dask.base.get_scheduler(), "__module__", "") == (
        "dask.multiprocessing"
    ):
        raise RasterWriteError(
            f"cannot write {job.final} with dask's multiprocessing scheduler: the open GeoTIFF "
            "cannot be shared between processes; use the threaded scheduler or a "
            "dask.distributed Client"
        )
    data: xr.DataArray = job.data
    arr = _tile_aligned(_dask_array(data, job.tile_size), job.tile_size)
    nodata = _nodata(data, job.final)
    compression = job.compress
    dtype = np.dtype(data.dtype)
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": data.sizes["x"],
        "height": data.sizes["y"],
        "count": data.sizes["band"],
        "dtype": dtype.name,
        "crs": data.rio.crs,
        "transform": data.rio.transform(),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": job.tile_size,
        "blockysize": job.tile_size,
        "interleave": "band",
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }
    if job.cog:
        # The COG driver can only copy a finished dataset. Write a fast-compressed (ZSTD
        # level 1) tiled staging file next to the output, build its overviews there with
        # GDAL's multi-threaded averaging, then let the COG driver reuse them: measured twice
        # as fast as letting the COG driver compute the overviews itself.
        profile.update(compress="ZSTD", zstd_level=1, predictor=_predictor("ZSTD", dtype))
        staging = _sibling(job.final, "staging")
    else:
        profile["compress"] = compression
        if (predictor := _predictor(compression, dtype)) is not None:
            profile["predictor"] = predictor
        staging = tmp
    try:
        with (
            _gdal_failures() as failures,
            # no PAM: metadata GeoTIFF cannot hold would go to a .aux.xml sidecar file,
            # which the move into place would leave behind
            rasterio.Env(
                GDAL_CACHEMAX=GDAL_WRITE_CACHE_MB,
                GDAL_NUM_THREADS="ALL_CPUS",
                GDAL_PAM_ENABLED="NO",
            ),
        ):
            # GDAL calls that write are marked (_writing) so that a failure GDAL reports
            # while an input block is read (no exception: its own error) is not taken for one
            with _writing():
                dst = rasterio.open(staging, "w", **profile)
            try:
                with _writing():
                    _write_gtiff_metadata(
                        dst, data, None if callable(job.provenance) else job.provenance
                    )
                writer = _WindowWriter(dst, arr.chunks)
                if client is None:
                    stored = da.store(arr, writer, lock=job.lock or threading.Lock(), compute=False)
                    computed = _compute_on_own_pool(
                        stored, *job.compute_with, thread_prefix=failures.thread_prefix
                    )
                    if callable(job.provenance):
                        _settle_provenance(job, computed)
                        with _writing():
                            record = {PROVENANCE_KEY: job.provenance}
                            dst.update_tags(ns=PROVENANCE_DOMAIN, **record)
                else:
                    _write_blocks_from_cluster(arr, writer, client)
                with _writing():
                    writer.flush()
                    factors = _overview_factors(dst.height, dst.width, job.tile_size)
                    if job.cog and factors:
                        dst.build_overviews(factors, Resampling.average)  # nodata is left out
            finally:
                with _writing():
                    dst.close()  # flushes the last tiles: failures are reported here too
            # GDAL reports a failed tile flush (disk full, file-size limit) only through its
            # error handler, not as an exception: the file would look written.
            failures.raise_if_any(job.final)
            if job.cog:
                cog_options: dict[str, Any] = {
                    "COMPRESS": compression,
                    "BLOCKSIZE": job.tile_size,
                    "BIGTIFF": "IF_SAFER",
                    "NUM_THREADS": "ALL_CPUS",
                    "OVERVIEWS": "FORCE_USE_EXISTING",
                    "COPY_SRC_MDD": "YES",  # keeps the RASTERMATCH metadata domain
                }
                if _predictor(compression, dtype) is not None:
                    cog_options["PREDICTOR"] = "YES"
                with _writing():
                    rasterio.shutil.copy(staging, tmp, driver="COG", **cog_options)
                failures.raise_if_any(job.final)
    except (rasterio.errors.RasterioError, rasterio._err.CPLE_BaseError) as exc:
        # rasterio's "Write failed. See previous exception for details." carries GDAL's
        # cause in __cause__ (and GDAL's error handler in the collected messages)
        reason = _cause(exc)
        collected = dict.fromkeys(" ".join(m.split()) for m in failures.messages)
        extra = [message for message in collected if message and message not in reason]
        if extra:
            more = f" (and {len(extra) - 1} more GDAL errors)" if len(extra) > 1 else ""
            reason = f"{reason}; GDAL: {extra[0]}{more}"
        raise RasterWriteError(
            f"writing {job.final} failed: {reason}; {_space_hint(job.final.parent)}"
        ) from exc
    finally:
        if job.cog:
            _remove_despite_interrupts(staging)


# Computing the blocks of a write ----------------------------------------------------------


def _compute_on_own_pool(
    collection: Any, *also: Any, thread_prefix: str = "rastermatch-write"
) -> tuple[Any, ...]:
    """Compute ``collection``; on an error or interrupt return only once no block runs.

    dask's threaded scheduler returns to the caller on the first exception (or Ctrl-C) while
    its worker threads go on running the blocks they started, which would then write into a
    temporary being removed (zarr recreates directories; GDAL's handle would be closed under
    a writing thread). The write therefore runs on a pool it owns and shuts it down, waiting
    for the running blocks and cancelling the queued ones, before anything is cleaned up.
    Other local schedulers (synchronous, a custom callable) run in this thread and are used
    as they are.
    """
    scheduler = dask.base.get_scheduler(collections=[collection])
    if scheduler is not dask.threaded.get:
        return dask.compute(collection, *also)[1:]
    configured = dask.config.get("pool", None)
    workers = (
        dask.config.get("num_workers", None)
        or getattr(configured, "_max_workers", None)
        or dask.system.CPU_COUNT
    )
    executor = getattr(dask.threaded, "ContextAwareThreadPoolExecutor", ThreadPoolExecutor)
    pool = executor(int(workers), thread_name_prefix=thread_prefix)
    try:
        return dask.compute(collection, *also, scheduler="threads", pool=pool)[1:]
    finally:
        _shutdown_despite_interrupts(pool)


def _shutdown_despite_interrupts(pool: ThreadPoolExecutor) -> None:
    interrupted = False
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def _compute_on_cluster(collection: Any, client: Any) -> None:
    """Compute ``collection`` on a distributed client; cancel it on an error or interrupt.

    A task already running on a worker cannot be stopped: after cancelling, wait (up to
    :data:`CANCEL_WAIT_SECONDS`) until none of the write's tasks runs any more, so that no
    worker writes a chunk into the temporary after it is removed.
    """
    future = client.compute(collection)
    try:
        future.result()
    except BaseException:
        keys = {str(key) for key in collection.__dask_graph__()}
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        interrupted = False
        while True:
            try:
                client.cancel([future], force=True)
                while time.monotonic() < deadline and _running_on_workers(client, keys):
                    time.sleep(0.1)
                break
            except KeyboardInterrupt:
                interrupted = True
            except Exception:  # the scheduler is gone: nothing runs for us any more
                break
        if interrupted:
            raise KeyboardInterrupt from None
        raise


def _running_on_workers(client: Any, keys: set[str]) -> bool:
    """Whether a worker still executes one of ``keys`` (the scheduler's view lags behind)."""

    def executing(dask_worker: Any) -> list[str]:
        state = dask_worker.state
        running = set(state.executing) | set(getattr(state, "long_running", ()))
        return [str(task.key) for task in running]

    return any(key in keys for found in client.run(executing).values() for key in found)


#: Longest wait, after an error or interrupt, for running distributed tasks to finish.
CANCEL_WAIT_SECONDS = 60


# GDAL's error handler -----------------------------------------------------------------------
#
# rasterio installs GDAL's error handler and forwards every CE_Failure to the logger
# "rasterio._env" (or "rasterio._err") as an INFO record "GDAL signalled an error: ...",
# CE_Fatal at CRITICAL. While a write runs, a filter on those loggers collects them; it
# lowers the loggers' level to INFO if needed and drops the records it let through only for
# that, so logging elsewhere sees what it saw before. Records are attributed to the write
# whose threads emitted them, else to every write in progress.

_GDAL_LOGGERS = ("rasterio._env", "rasterio._err")
_GDAL_FAILURE = "GDAL signalled an error"
_WRITER_THREAD_PREFIX = "rastermatch-write"
_collectors_lock = threading.Lock()
_collectors: list[_GdalFailures] = []
_saved_levels: dict[str, tuple[int, int]] = {}  # logger name: (own level, effective level)


class _GdalFailures:
    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.thread_prefix = f"{_WRITER_THREAD_PREFIX}-{secrets.token_hex(4)}"
        self.messages: list[str] = []

    def claims(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread or record.threadName.startswith(self.thread_prefix)

    def raise_if_any(self, final: Path) -> None:
        if not self.messages:
            return
        unique = list(dict.fromkeys(self.messages))
        more = f" (and {len(unique) - 1} more GDAL errors)" if len(unique) > 1 else ""
        raise RasterWriteError(
            f"writing {final} failed: GDAL: {unique[0]}{more}; {_space_hint(final.parent)}"
        )


class _GdalFailureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        failure = record.levelno >= logging.CRITICAL or (
            isinstance(record.msg, str) and record.msg.startswith(_GDAL_FAILURE)
        )
        # GDAL's own threads (compression) are not Python's: their names start with "Dummy"
        if failure and (getattr(_gdal_io, "writing", 0) or record.threadName.startswith("Dummy")):
            if isinstance(record.args, tuple) and len(record.args) == 2:
                message = str(record.args[1])
            else:
                message = record.getMessage()
            with _collectors_lock:
                owners = [c for c in _collectors if c.claims(record)] or _collectors
                for collector in owners:
                    collector.messages.append(message)
        # let through only what the logger's own level passed before the write
        return record.levelno >= _saved_levels.get(record.name, (0, logging.WARNING))[1]


_failure_filter = _GdalFailureFilter()
_gdal_io = threading.local()


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    """Mark this thread as inside a GDAL call that writes the output."""
    _gdal_io.writing = getattr(_gdal_io, "writing", 0) + 1
    try:
        yield
    finally:
        _gdal_io.writing -= 1


@contextlib.contextmanager
def _gdal_failures() -> Iterator[_GdalFailures]:
    collector = _GdalFailures()
    with _collectors_lock:
        if not _collectors:
            for name in _GDAL_LOGGERS:
                logger = logging.getLogger(name)
                _saved_levels[name] = (logger.level, logger.getEffectiveLevel())
                logger.addFilter(_failure_filter)
                if logger.getEffectiveLevel() > logging.INFO:
                    logger.setLevel(logging.INFO)
            _libtiff_stderr(quiet=True)
        _collectors.append(collector)
    try:
        yield collector
    finally:
        with _collectors_lock:
            _collectors.remove(collector)
            if not _collectors:
                _libtiff_stderr(quiet=False)
                for name in _GDAL_LOGGERS:
                    logger = logging.getLogger(name)
                    logger.removeFilter(_failure_filter)
                    logger.setLevel(_saved_levels[name][0])
                _saved_levels.clear()


_libtiff_saved_handler: list[Any] = []


def _libtiff_stderr(*, quiet: bool) -> None:
    """Silence (or restore) libtiff's own stderr messages while a write runs.

    GDAL's TIFF I/O layer reports a failed write twice: through GDAL's error handler (which
    is collected above and becomes the RasterWriteError) and, with libtiff's default
    handler, as bare lines on stderr ("_tiffWriteProc: No space left on device."), one per
    tile. Those lines would bury the one error message. Best effort: the libtiff that GDAL
    loaded is found in the process's memory map (Linux); elsewhere nothing changes.
    """
    try:
        import ctypes

        if quiet:
            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "/libtiff" in line and ".so" in line}
            for path in sorted(paths):
                library = ctypes.CDLL(path)
                library.TIFFSetErrorHandler.restype = ctypes.c_void_p
                library.TIFFSetErrorHandler.argtypes = [ctypes.c_void_p]
                _libtiff_saved_handler.append((library, library.TIFFSetErrorHandler(None)))
        else:
            while _libtiff_saved_handler:
                library, previous = _libtiff_saved_handler.pop()
                library.TIFFSetErrorHandler(previous)
    except (OSError, AttributeError, ValueError):
        pass


def _space_hint(directory: Path) -> str:
    """What to try after a failed write: free space, a file-size limit, or the directory."""
    with contextlib.suppress(OSError):
        stat = os.statvfs(directory)
        free = stat.f_bavail * stat.f_frsize
        if free < 4 * 2**20:
            return (
                f"the device holding {directory} is full ({free:,} bytes free); free some "
                "space or write elsewhere"
            )
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return f"a file-size limit of {soft:,} bytes is set (ulimit -f); raise it"
    return f"check that {directory} is writable and has space"


def _overview_factors(height: int, width: int, tile_size: int) -> list[int]:
    """Decimation factors 2, 4, 8, ... until the smallest overview fits in one tile."""
    factors: list[int] = []
    factor = 2
    while math.ceil(max(height, width) / (factor // 2)) > tile_size:
        factors.append(factor)
        factor *= 2
    return factors


def _write_gtiff_metadata(
    dst: rasterio.io.DatasetWriter, data: xr.DataArray, provenance: str | None
) -> None:
    labels = data.band.values
    if labels.dtype.kind in "UOST":
        for index, label in enumerate(labels, start=1):
            dst.set_band_description(index, str(label))
    tags = {
        str(key): str(value)
        for key, value in data.attrs.items()
        if key not in _MANAGED_ATTRS and isinstance(value, str | int | float | np.number)
    }
    if tags:
        dst.update_tags(**tags)
    interp = data.attrs.get(COLORINTERP_ATTR)
    if isinstance(interp, Mapping):
        names = [interp.get(str(label)) for label in labels]
        if all(name in ColorInterp.__members__ for name in names):
            dst.colorinterp = [ColorInterp[name] for name in names]
    scale, offset = _scale_offset(data)
    if scale is not None:
        dst.scales = (scale,) * dst.count
        dst.offsets = (offset,) * dst.count
    if provenance is not None:
        dst.update_tags(ns=PROVENANCE_DOMAIN, **{PROVENANCE_KEY: provenance})


#: Bytes of finished blocks a GeoTIFF write holds back to write them in order (see below).
ORDERED_WRITE_BUFFER = 256 * 2**20


class _WindowWriter:
    """The ``__setitem__`` target each block is written through, in a fixed order.

    GDAL appends each tile to the file when it is flushed, so the byte layout of a GeoTIFF
    follows the order in which blocks arrive, which threads make random: two writes of the
    same data would differ. Blocks are therefore written in row-major block order: one that
    finishes early waits here until those before it are written. Blocks finish nearly in
    order (dask computes them in key order), so little waits; should more than
    ORDERED_WRITE_BUFFER bytes wait, the earliest waiting block is written at once (memory
    stays bounded, and only that write's layout depends on timing).
    """

    def __init__(self, dst: rasterio.io.DatasetWriter, chunks: tuple[tuple[int, ...], ...]) -> None:
        self._dst = dst
        starts = [np.cumsum((0, *sizes))[:-1].tolist() for sizes in chunks]
        self._order = {
            key: position
            for position, key in enumerate(
                (b, y, x) for b in starts[0] for y in starts[1] for x in starts[2]
            )
        }
        self._next = 0
        self._done: set[int] = set()
        self._waiting: dict[int, tuple[tuple[slice, slice, slice], np.ndarray]] = {}
        self._waiting_bytes = 0
        self._lock = threading.Lock()

    def __setitem__(self, key: tuple[slice, slice, slice], block: np.ndarray) -> None:
        position = self._order.get(tuple(int(part.start) for part in key))
        with self._lock:
            if position is None:  # not on the chunk grid (a caller's own store): no order
                self._write(key, block)
                return
            self._waiting[position] = (key, block)
            self._waiting_bytes += block.nbytes
            while self._waiting and (
                self._next in self._waiting or self._waiting_bytes > ORDERED_WRITE_BUFFER
            ):
                first = self._next if self._next in self._waiting else min(self._waiting)
                waiting_key, waiting_block = self._waiting.pop(first)
                self._waiting_bytes -= waiting_block.nbytes
                self._write(waiting_key, waiting_block)
                self._done.add(first)
                while self._next in self._done:
                    self._done.discard(self._next)
                    self._next += 1

    def _write(self, key: tuple[slice, slice, slice], block: np.ndarray) -> None:
        bands, rows, cols = key
        indexes = list(range(bands.start + 1, bands.stop + 1))
        with _writing():
            self._dst.write(block, indexes=indexes, window=Window.from_slices(rows, cols))

    def flush(self) -> None:
        """Write whatever still waits (blocks after one that failed are never written)."""
        with self._lock:
            for position in sorted(self._waiting):
                self._write(*self._waiting.pop(position))
            self._waiting_bytes = 0


@contextlib.contextmanager
def _distributed_client() -> Iterator[Any]:
    """Yield the distributed client dask computes on here, or None for the local schedulers."""
    try:
        import distributed
    except ImportError:  # pragma: no cover - distributed is a dependency
        distributed = None
    on_worker = False
    if distributed is not None:
        try:
            distributed.get_worker()
            on_worker = True
        except ValueError:
            pass
    if on_worker:
        # Running inside a task on a worker (a delayed write computed on the cluster): leave
        # the worker's thread pool while waiting for the blocks, or a small cluster
        # deadlocks.
        with distributed.worker_client() as client:
            yield client
        return
    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    yield owner if distributed is not None and isinstance(owner, distributed.Client) else None


def _write_blocks_from_cluster(arr: da.Array, writer: _WindowWriter, client: Any) -> None:
    """Compute the blocks on the cluster and write each here as soon as it is ready.

    1. ``persist`` submits the whole graph at once, so work shared between blocks (a global
       statistic, a common input) is computed once.
    2. Blocks are fetched one at a time in the order they finish and written through the
       single open handle of this process (no lock needed: one writer thread).
    3. Each block's future is dropped once written, which frees it on the worker.
    """
    import distributed

    starts = [np.cumsum((0, *chunks)) for chunks in arr.chunks]
    persisted = client.persist(arr)
    pending = {future.key: future for future in distributed.futures_of(persisted)}
    del persisted
    try:
        for future in distributed.as_completed(list(pending.values())):
            pending.pop(future.key)
            index = future.key[1:]
            region = tuple(
                slice(int(s[i]), int(s[i + 1])) for s, i in zip(starts, index, strict=True)
            )
            writer[region] = future.result()
            del future
    finally:
        if pending:
            client.cancel(list(pending.values()))


# Zarr --------------------------------------------------------------------------------------


def _zarr_compressors(compress: Any) -> tuple[Any, ...]:
    """The bytes-to-bytes codecs of a Zarr output: the compressor, then a crc32c checksum.

    The checksum (the standard Zarr v3 ``crc32c`` codec, 4 bytes per chunk) is checked
    before the compressor sees a chunk, so a truncated or altered chunk is refused instead
    of being decoded into wrong pixels (or crashing the decompressor).
    """
    from zarr.abc.codec import BytesBytesCodec
    from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, ZstdCodec

    codecs: tuple[Any, ...] | None = None
    if compress is None or (isinstance(compress, str) and compress.lower() == "lz4"):
        codecs = (BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle),)
    elif isinstance(compress, str) and compress.lower() == "zstd":
        codecs = (ZstdCodec(level=1),)
    elif isinstance(compress, str) and compress.lower() == "none":
        codecs = ()
    elif isinstance(compress, BytesBytesCodec):
        codecs = (compress,)
    elif isinstance(compress, Sequence) and all(isinstance(c, BytesBytesCodec) for c in compress):
        codecs = tuple(compress)
    if codecs is not None:
        if any(isinstance(c, Crc32cCodec) for c in codecs):
            return codecs
        return (*codecs, Crc32cCodec())
    raise RasterWriteError(
        f"Zarr compress must be 'lz4', 'zstd', 'none' or zarr bytes-to-bytes codec(s) such as "
        f"zarr.codecs.ZstdCodec(level=3); got {compress!r}"
    )


def _write_zarr(job: _WriteJob, tmp: Path, client: Any) -> None:
    from zarr.errors import ZarrUserWarning

    data: xr.DataArray = job.data
    arr, chunk_shape = _zarr_chunks(_dask_array(data, job.tile_size))
    nodata = _nodata(data, job.final)
    name = _variable_name(data)
    # the grid-mapping coord (odc-stac's spatial_ref) is written again from .rio below
    grid_mapping = {
        "spatial_ref",
        data.encoding.get("grid_mapping"),
        data.attrs.get("grid_mapping"),
    }

    variable = xr.DataArray(
        arr,
        dims=data.dims,
        coords=_zarr_coords(data, exclude=grid_mapping),
        attrs=_zarr_attrs(data, job),
        name=name,
    )
    if data.rio.crs is not None:
        variable = variable.rio.write_crs(data.rio.crs)
    variable = variable.rio.write_transform(data.rio.transform())
    dataset = variable.to_dataset()
    for var in dataset.variables.values():
        var.encoding = {}  # inherited encodings (source chunks, codecs, dtype) do not apply
    encoding: dict[Hashable, dict[str, Any]] = {
        name: {
            # The CF link that xr.open_zarr(decode_coords="all") and rioxarray follow to the
            # spatial_ref variable (crs_wkt + GeoTransform).
            "grid_mapping": "spatial_ref",
            "chunks": chunk_shape,
            "compressors": job.compress,
            # The nodata value lives in the "nodata" attribute, which rioxarray reads but
            # xarray's CF decoding ignores: integer data stay integer under a plain
            # xr.open_zarr. The zarr fill value (chunks never written) is the nodata too.
            "_FillValue": None,
            **({"fill_value": nodata} if nodata is not None else {}),
        },
        "spatial_ref": {},
    }
    for key, coord in dataset.coords.items():
        if coord.dtype.kind == "f":  # labels are values: no CF masking of NaN ones
            encoding[key] = {"_FillValue": None}
    with warnings.catch_warnings():
        # Consolidated metadata is not (yet) part of the zarr v3 specification; zarr says so
        # on every write. We want it (one read opens the store), so the notice is noise.
        warnings.filterwarnings(
            "ignore",
            message="Consolidated metadata is currently not part",
            category=ZarrUserWarning,
        )
        # write_empty_chunks: skipping chunks equal to the fill value costs a full comparison
        # of every chunk on zarr's one event-loop thread (18 % of a Zarr-to-Zarr match)
        delayed = dataset.to_zarr(
            tmp,
            mode="w-",
            zarr_format=3,
            consolidated=True,
            compute=False,
            encoding=encoding,
            write_empty_chunks=True,
        )
        if client is None:
            _compute_on_own_pool(delayed)
        else:
            _compute_on_cluster(delayed, client)


def _zarr_coords(data: xr.DataArray, *, exclude: set[Any]) -> dict[Hashable, xr.Variable]:
    """The coordinates a Zarr store can hold, in a form every reader knows.

    What STAC loaders attach is kept when it is plain data and dropped when it is not, never
    an error: odc-stac's ``spatial_ref`` is written again from ``.rio``; stackstac's object
    coords are kept as strings when every value is one (item ids, titles), as numbers when
    every value is a number, and dropped otherwise (``eo:cloud_cover`` with ``None`` for some
    dates, ``proj:transform`` sets, ``raster:bands`` dicts). A name with ``/`` would be a Zarr
    path, so such a coord is dropped too. Strings are stored as variable-length UTF-8 (the zarr
    v3 "string" data type): numpy fixed-width unicode would be the unstable
    "fixed_length_utf32" type, which zarr warns about and other readers may not know.
    """
    coords: dict[Hashable, xr.Variable] = {}
    for key, coord in data.coords.items():
        if key in exclude or "/" in str(key):
            continue
        variable = coord.variable
        values = variable.values
        if values.dtype.kind in "UST" or (
            values.dtype.kind == "O" and all(isinstance(v, str) for v in values.flat)
        ):
            values = np.array([str(v) for v in values.flat], dtype=object).reshape(values.shape)
        elif values.dtype.kind == "O":
            plain = [_plain_number(v) for v in values.flat]
            if any(v is None for v in plain):
                continue
            values = np.array(plain).reshape(values.shape)
            if values.dtype.kind not in "biuf":
                continue
        elif values.dtype.kind not in "biufmM":
            continue  # complex, void, ...: no Zarr reader expects them as labels
        # CF attributes xarray writes itself from the values (dates' units and calendar)
        cf = _CF_ATTRS | ({"units", "calendar"} if values.dtype.kind in "mM" else set())
        coords[key] = xr.Variable(variable.dims, values, _zarr_json_attrs(variable.attrs, cf))
    return coords


def _plain_number(value: Any) -> bool | int | float | None:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return value.item() if isinstance(value, np.generic) else value
    return None


def _variable_name(data: xr.DataArray) -> str:
    """The DataArray's own name, or "data" (xarray copies a dask array's key as the name)."""
    name = data.name
    if not isinstance(name, str) or name in data.coords:
        return "data"
    if isinstance(data.data, da.Array) and name == data.data.name:
        return "data"
    if re.fullmatch(r".*-[0-9a-f]{32}", name):  # a token name (stackstac's) changes every run
        return "data"
    return name


def _zarr_attrs(data: xr.DataArray, job: _WriteJob) -> dict[str, Any]:
    attrs = _zarr_json_attrs(data.attrs)
    scale, offset = _scale_offset(data)
    if scale is not None:
        attrs.update(scale_factor=scale, add_offset=offset)
    nodata = _nodata(data, job.final)
    if nodata is not None:
        attrs[NODATA_ATTR] = nodata
    if job.provenance is not None:
        attrs[PROVENANCE_ATTR] = json.loads(job.provenance)
    attrs[COMPLETE_CHUNKS_ATTR] = True  # write_empty_chunks=True: every chunk is written
    return attrs


_CF_ATTRS = frozenset(
    {"_FillValue", "missing_value", "scale_factor", "add_offset", "coordinates", "grid_mapping"}
)


def _zarr_json_attrs(
    attrs: Mapping[Any, Any], managed: Iterable[Hashable] = _MANAGED_ATTRS
) -> dict[str, Any]:
    """The attributes that are JSON values, the ones the writers manage left out.

    Others (stackstac's ``spec``, a RasterSpec object) are dropped rather than refused: they
    describe how the data were loaded, not the data.
    """
    kept: dict[str, Any] = {}
    skip = frozenset(managed)
    for key, value in attrs.items():
        if key in skip:
            continue
        native = _json_native(value)
        if native is not _NOT_JSON:
            kept[str(key)] = native
    return kept


_NOT_JSON = object()


def _json_native(value: Any, depth: int = 0) -> Any:
    """``value`` as plain JSON data (numpy scalars and arrays, tuples and dates converted), or
    ``_NOT_JSON``."""
    if depth > 16:
        return _NOT_JSON
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, np.datetime64 | np.timedelta64):
        return str(value)  # ISO 8601 text: what a date attribute means to a reader
    if isinstance(value, np.generic):
        return _json_native(value.item(), depth + 1)
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.dtype.kind in "biufUS" else list(value.flat)
    if isinstance(value, list | tuple):
        items = [_json_native(v, depth + 1) for v in value]
        return _NOT_JSON if any(v is _NOT_JSON for v in items) else items
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            return _NOT_JSON
        entries = {k: _json_native(v, depth + 1) for k, v in value.items()}
        return _NOT_JSON if any(v is _NOT_JSON for v in entries.values()) else entries
    return _NOT_JSON


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


def _tile_aligned(arr: da.Array, tile_size: int) -> da.Array:
    """Rechunk y/x so that every chunk boundary falls on a tile boundary (tiles written once)."""
    chunks: list[Any] = [arr.chunks[0]]
    changed = False
    for sizes in arr.chunks[1:]:
        if any(size % tile_size for size in sizes[:-1]):
            chunks.append(max(tile_size, round(max(sizes) / tile_size) * tile_size))
            changed = True
        else:
            chunks.append(sizes)
    return arr.rechunk(tuple(chunks)) if changed else arr


def _zarr_chunks(arr: da.Array) -> tuple[da.Array, tuple[int, ...]]:
    """The stored chunk shape of a Zarr output, and the dask array rechunked to fit it.

    One row (one date and band) per stored chunk along every row dim: reading a date or a
    band reads only its own chunks, and any dask chunking of the rows fits (a block of
    several rows writes several whole chunks, no rechunk). Along y and x Zarr needs one
    chunk shape: axes whose dask chunks are not all equal (but the last) are rechunked.
    """
    shape: list[int] = [1] * (arr.ndim - 2)
    changed = False
    for sizes in arr.chunks[-2:]:
        if len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]:
            shape.append(max(sizes))
            changed = True
        else:
            shape.append(sizes[0])
    if changed:
        arr = arr.rechunk((*arr.chunks[:-2], *shape[-2:]))
    return arr, tuple(shape)


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
