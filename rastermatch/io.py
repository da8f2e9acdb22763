"""Open rasters lazily and write them safely: GeoTIFF/COG through rasterio, Zarr through xarray.

Reading
-------
:func:`open_raster` returns a lazy, dask-backed :class:`xarray.DataArray` with dims
``(band, y, x)`` whatever the format:

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
  the CF ``spatial_ref`` grid-mapping variable and integer data are not cast to float.

Every opened array records its resolved path in ``encoding["source"]``; the writer refuses
to overwrite it.

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
  transform, dtype, band labels and (through ``.rio.nodata``) the nodata value.

Nothing is ever half-written: the output is built under a hidden temporary sibling
(``.{name}.tmp-<random>``) and moved into place only when complete; on any error or
interrupt the temporary is removed and the final name is left untouched.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import threading
import warnings
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import rasterio
import rasterio.dtypes
import rasterio.errors
import rasterio.shutil
import rioxarray  # also registers the .rio accessor
import xarray as xr
from dask.delayed import Delayed
from rasterio.enums import Interleaving, Resampling
from rasterio.windows import Window

from rastermatch.errors import (
    BandMismatchError,
    DimensionError,
    OutputExistsError,
    RasterReadError,
    RasterWriteError,
    UnsupportedDtypeError,
)

__all__ = ["open_raster", "read_provenance", "write_raster"]

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
#: Attribute of the data variable holding the nodata value in Zarr outputs.
NODATA_ATTR = "nodata"

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
        "grid_mapping",
        "coordinates",
        "scale_factor",
        "add_offset",
        "long_name",
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
    """Open a GeoTIFF/COG (or anything GDAL reads) or a Zarr store as a lazy ``(band, y, x)`` array.

    Parameters
    ----------
    path : str or os.PathLike
        A raster file GDAL can read, or a Zarr store (v2 or v3): a path ending in ``.zarr``
        or a directory holding ``zarr.json``, ``.zgroup`` or ``.zarray``.
    chunks : "auto", int, tuple, dict or None, default "auto"
        Dask chunks. ``"auto"`` gives chunks that are whole multiples of the stored blocks,
        about 2048 x 2048 pixels (the whole band when smaller); anything else is passed on
        to rioxarray / xarray as is (``None`` gives a lazily indexed array without dask).
    band_names : sequence of str, optional
        Labels for the ``band`` coordinate, one per band; they replace the labels read
        from the file (band descriptions, else ``1..n``).
    variable : str, optional
        The data variable to read from a Zarr store holding several. Not used for GDAL
        rasters.

    Returns
    -------
    xarray.DataArray
        Dims ``(band, y, x)``, the stored dtype (integers are not cast to float), CRS and
        transform through ``.rio``, nodata as metadata through ``.rio.nodata``, and
        ``encoding["source"]`` set to the resolved path.

    Raises
    ------
    RasterReadError
        The path does not exist, is not a raster, cannot be read, or ``variable`` is
        missing or needed.
    DimensionError
        The Zarr variable does not have dims ``(band, y, x)`` or ``(y, x)``.
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
    except rasterio.errors.RasterioError as exc:
        raise RasterReadError(f"cannot read {path} as a raster: {exc}") from exc
    if count == 0:
        hint = f" (subdatasets: {', '.join(subdatasets[:3])}, ...)" if subdatasets else ""
        raise RasterReadError(
            f"{path} has no raster bands{hint}; open one of its subdatasets by name instead"
        )

    if isinstance(chunks, str) and chunks == "auto":
        band_chunk = count if pixel_interleaved else 1
        chunks = _aligned_chunks((count, height, width), (band_chunk, *block_shape))
    try:
        result = rioxarray.open_rasterio(path, chunks=chunks, masked=False, lock=False)
    except rasterio.errors.RasterioError as exc:
        raise RasterReadError(f"cannot read {path} as a raster: {exc}") from exc
    if not isinstance(result, xr.DataArray):  # pragma: no cover - count > 0 was checked
        raise RasterReadError(f"{path} holds several rasters; open one of them by name")
    labels = _labels_from_descriptions(descriptions)
    if labels is not None:
        result = result.assign_coords(band=labels)
    return result


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
    x = _aligned_size(width, block_x, TARGET_CHUNK_EDGE)
    # Thin strips (stripped GeoTIFFs have one-row blocks as wide as the image) get taller
    # chunks so that every chunk holds about the same number of pixels.
    y = _aligned_size(height, block_y, max(TARGET_CHUNK_EDGE**2 // x, 1))
    return {"band": max(1, min(band_chunk, shape[0])), "y": y, "x": x}


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
    if set(result.dims) not in ({"y", "x"}, {"band", "y", "x"}):
        raise DimensionError(
            f"variable {name!r} of {path} has dims {result.dims}; expected (band, y, x) or "
            "(y, x). Rename its dims (e.g. ds.rename({'lat': 'y', 'lon': 'x'})) and rewrite it"
        )
    if isinstance(chunks, str) and chunks == "auto":
        stored = dict(zip(result.dims, result.encoding.get("chunks") or result.shape, strict=True))
        shape = (result.sizes.get("band", 1), result.sizes["y"], result.sizes["x"])
        block = (stored.get("band", 1), stored["y"], stored["x"])
        chunks = _aligned_chunks(shape, block)
    if isinstance(chunks, Mapping):
        chunks = {dim: size for dim, size in chunks.items() if dim in result.dims}
    if chunks is not None:
        # Chunk before adding the band dim: expanding a lazily indexed (not yet dask) array
        # would load it.
        result = result.chunk(chunks)
    if "band" not in result.dims:
        result = result.expand_dims(band=np.array([1]))
    result = result.transpose("band", "y", "x")
    if result.band.dtype.kind in "OT":  # variable-length strings: use plain numpy str
        result = result.assign_coords(band=np.array([str(v) for v in result.band.values]))
    return result


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
    if len(labels) != data.sizes["band"]:
        raise BandMismatchError(
            f"band_names has {len(labels)} names but {path} has {data.sizes['band']} bands; "
            "give one name per band"
        )
    if len(set(labels)) != len(labels):
        raise BandMismatchError(f"band_names {labels} has duplicates; band names must be unique")
    return data.assign_coords(band=np.array(labels, dtype=str))


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
) -> Path | Delayed:
    """Write a ``(band, y, x)`` raster to GeoTIFF/COG or Zarr v3, block by block, atomically.

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``(band, y, x)`` (or ``(y, x)``), dask- or numpy-backed, georeferenced through
        rioxarray (``.rio.crs``, ``.rio.transform()``; both may be missing), with its nodata
        in ``.rio.nodata`` (may be ``None``) and band labels in the ``band`` coordinate.
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
        bytes-to-bytes codec object(s).
    lock : threading.Lock-like, optional
        GeoTIFF: the lock serialising writes to the one open file handle (a new
        :class:`threading.Lock` by default). Not used for Zarr, whose chunks are
        independent, nor under a distributed client, where one thread writes.
    tile_size : int, default 512
        GeoTIFF tile edge in pixels (a multiple of 16). Dask chunks that do not fall on tile
        boundaries are rechunked so that each tile is written whole, once.

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
        ``data`` does not have dims ``(band, y, x)`` or ``(y, x)``.
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
    cluster the output directory must be on storage all workers share. dask's
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
    """
    final = Path(path).expanduser().absolute()
    fmt = _output_format(final)
    if not isinstance(data, xr.DataArray):
        raise TypeError(
            f"write_raster needs an xarray.DataArray with dims (band, y, x), got {type(data)}"
        )
    data = _as_band_yx(data)
    _check_dtype(data.dtype, fmt, final)
    if cog and fmt != "gtiff":
        raise RasterWriteError(f"cog=True makes a Cloud-Optimized GeoTIFF; {final} is a Zarr path")
    if not final.parent.is_dir():
        raise RasterWriteError(f"the directory {final.parent} does not exist; create it first")
    if (
        isinstance(tile_size, bool)
        or not isinstance(tile_size, int)
        or tile_size <= 0
        or tile_size % 16
    ):
        raise RasterWriteError(f"tile_size must be a positive multiple of 16, got {tile_size!r}")

    sources = [data.encoding.get("source"), *inputs]
    _refuse_inputs(final, [s for s in sources if s])
    _refuse_existing(final, overwrite=overwrite)

    job = _WriteJob(
        data=data,
        final=final,
        fmt=fmt,
        overwrite=overwrite,
        provenance=_provenance_json(provenance),
        cog=cog,
        compress=(_gtiff_compression(compress) if fmt == "gtiff" else _zarr_compressors(compress)),
        lock=lock,
        tile_size=tile_size,
        # chosen now, not when the write runs: a write retried after its worker died reuses
        # (and first clears) the temporary the dead attempt could not remove
        tmp=_sibling(final, "tmp"),
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
        "data",
        "final",
        "fmt",
        "lock",
        "overwrite",
        "provenance",
        "tile_size",
        "tmp",
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


def _as_band_yx(data: xr.DataArray) -> xr.DataArray:
    if data.dims == ("y", "x"):
        return data.expand_dims(band=np.array([1]))
    if set(data.dims) == {"band", "y", "x"}:
        return data.transpose("band", "y", "x")
    raise DimensionError(
        f"write_raster needs dims (band, y, x) or (y, x), got {data.dims}; rename or "
        "transpose the array (e.g. data.rename({'lat': 'y', 'lon': 'x'}))"
    )


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


def _refuse_existing(final: Path, *, overwrite: bool) -> None:
    if not (final.exists() or final.is_symlink()):
        return
    if not overwrite:
        raise OutputExistsError(
            f"{final} exists already; pass overwrite=True (--overwrite) to replace it"
        )
    if final.is_dir() and not final.is_symlink() and not _is_zarr_path_on_disk(final):
        raise RasterWriteError(
            f"{final} is a directory that is not a Zarr store; refusing to replace it, remove "
            "it yourself if it should go"
        )


def _is_zarr_path_on_disk(path: Path) -> bool:
    return any((path / marker).exists() for marker in _ZARR_MARKERS)


# The write itself: temporary sibling, format writer, move into place ----------------------


def _execute(job: _WriteJob) -> Path:
    _refuse_existing(job.final, overwrite=job.overwrite)  # again: a delayed write runs later
    tmp = job.tmp
    _remove(tmp)  # left by an attempt killed mid-write (a lost worker), if any
    try:
        with _distributed_client() as client:
            if job.fmt == "zarr":
                _write_zarr(job, tmp)
            else:
                _write_geotiff(job, tmp, client)
        _move_into_place(tmp, job.final, overwrite=job.overwrite)
    except BaseException:
        _remove(tmp)
        raise
    return job.final


def _sibling(path: Path, tag: str) -> Path:
    """A hidden, unique name next to ``path``: same file system, so the move is a rename."""
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _move_into_place(tmp: Path, final: Path, *, overwrite: bool) -> None:
    exists = final.exists() or final.is_symlink()
    if not exists:
        if not tmp.is_dir():
            # A hard link cannot replace a file that appeared in the meantime (another
            # process): the no-overwrite promise holds without a race.
            try:
                os.link(tmp, final)
            except FileExistsError:
                raise OutputExistsError(
                    f"{final} appeared while it was being written; pass overwrite=True "
                    "(--overwrite) to replace it"
                ) from None
            except OSError:  # file system without hard links
                os.replace(tmp, final)
            else:
                tmp.unlink()
            return
        os.replace(tmp, final)  # refuses a non-empty directory that appeared meanwhile
        return
    if not overwrite:
        raise OutputExistsError(
            f"{final} appeared while it was being written; pass overwrite=True (--overwrite) "
            "to replace it"
        )
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
        staging = tmp.with_name(tmp.name + ".staging")
    else:
        profile["compress"] = compression
        if (predictor := _predictor(compression, dtype)) is not None:
            profile["predictor"] = predictor
        staging = tmp
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_WRITE_CACHE_MB, GDAL_NUM_THREADS="ALL_CPUS"):
            with rasterio.open(staging, "w", **profile) as dst:
                _write_gtiff_metadata(dst, data, job.provenance)
                if client is None:
                    da.store(arr, _WindowWriter(dst), lock=job.lock or threading.Lock())
                else:
                    _write_blocks_from_cluster(arr, _WindowWriter(dst), client)
                if job.cog and (factors := _overview_factors(dst.height, dst.width, job.tile_size)):
                    dst.build_overviews(factors, Resampling.average)  # nodata is left out
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
                rasterio.shutil.copy(staging, tmp, driver="COG", **cog_options)
    except rasterio.errors.RasterioError as exc:
        raise RasterWriteError(f"writing {job.final} failed: {exc}") from exc
    finally:
        if job.cog:
            _remove(staging)


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
    scale, offset = _scale_offset(data)
    if scale is not None:
        dst.scales = (scale,) * dst.count
        dst.offsets = (offset,) * dst.count
    if provenance is not None:
        dst.update_tags(ns=PROVENANCE_DOMAIN, **{PROVENANCE_KEY: provenance})


class _WindowWriter:
    """The ``__setitem__`` target :func:`dask.array.store` writes each block through."""

    def __init__(self, dst: rasterio.io.DatasetWriter) -> None:
        self._dst = dst

    def __setitem__(self, key: tuple[slice, slice, slice], block: np.ndarray) -> None:
        bands, rows, cols = key
        indexes = list(range(bands.start + 1, bands.stop + 1))
        self._dst.write(block, indexes=indexes, window=Window.from_slices(rows, cols))


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


def _zarr_compressors(compress: Any) -> tuple[Any, ...] | None:
    from zarr.abc.codec import BytesBytesCodec
    from zarr.codecs import BloscCodec, BloscShuffle, ZstdCodec

    if compress is None or (isinstance(compress, str) and compress.lower() == "lz4"):
        return (BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle),)
    if isinstance(compress, str) and compress.lower() == "zstd":
        return (ZstdCodec(level=1),)
    if isinstance(compress, str) and compress.lower() == "none":
        return None
    if isinstance(compress, BytesBytesCodec):
        return (compress,)
    if isinstance(compress, Sequence) and all(isinstance(c, BytesBytesCodec) for c in compress):
        return tuple(compress)
    raise RasterWriteError(
        f"Zarr compress must be 'lz4', 'zstd', 'none' or zarr bytes-to-bytes codec(s) such as "
        f"zarr.codecs.ZstdCodec(level=3); got {compress!r}"
    )


def _write_zarr(job: _WriteJob, tmp: Path) -> None:
    from zarr.errors import ZarrUserWarning

    data: xr.DataArray = job.data
    arr, chunk_shape = _regular_chunks(_dask_array(data, job.tile_size))
    nodata = _nodata(data, job.final)
    name = _variable_name(data)

    variable = xr.DataArray(
        arr,
        dims=("band", "y", "x"),
        coords={key: coord.variable for key, coord in data.coords.items() if key != "spatial_ref"},
        attrs=_zarr_attrs(data, job),
        name=name,
    )
    # Band labels as variable-length UTF-8 (the zarr v3 "string" data type, registered in
    # zarr-extensions): numpy fixed-width unicode would be stored as the unstable
    # "fixed_length_utf32" type, which zarr warns about and other readers may not know.
    if variable.band.dtype.kind in "UST":
        labels = np.array([str(v) for v in variable.band.values], dtype=object)
        variable = variable.assign_coords(band=labels)
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
    for coord in ("x", "y"):
        if coord in dataset.coords and dataset[coord].dtype.kind == "f":
            encoding[coord] = {"_FillValue": None}
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
        dataset.to_zarr(
            tmp,
            mode="w-",
            zarr_format=3,
            consolidated=True,
            compute=True,
            encoding=encoding,
            write_empty_chunks=True,
        )


def _variable_name(data: xr.DataArray) -> str:
    """The DataArray's own name, or "data" (xarray copies a dask array's key as the name)."""
    name = data.name
    if not isinstance(name, str) or name in data.coords:
        return "data"
    if isinstance(data.data, da.Array) and name == data.data.name:
        return "data"
    return name


def _zarr_attrs(data: xr.DataArray, job: _WriteJob) -> dict[str, Any]:
    attrs = {
        str(key): _json_native(value)
        for key, value in data.attrs.items()
        if key not in _MANAGED_ATTRS
    }
    scale, offset = _scale_offset(data)
    if scale is not None:
        attrs.update(scale_factor=scale, add_offset=offset)
    nodata = _nodata(data, job.final)
    if nodata is not None:
        attrs[NODATA_ATTR] = nodata
    if job.provenance is not None:
        attrs[PROVENANCE_ATTR] = json.loads(job.provenance)
    return attrs


def _json_native(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return [_json_native(v) for v in value]
    return value


# Shared helpers ----------------------------------------------------------------------------


def _dask_array(data: xr.DataArray, tile_size: int) -> da.Array:
    if isinstance(data.data, da.Array):
        return data.data
    _, height, width = data.shape
    chunks = (
        1,
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


def _regular_chunks(arr: da.Array) -> tuple[da.Array, tuple[int, ...]]:
    """Zarr needs one chunk shape: rechunk axes whose chunks are not all equal (but the last)."""
    shape: list[int] = []
    changed = False
    for sizes in arr.chunks:
        if len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]:
            shape.append(max(sizes))
            changed = True
        else:
            shape.append(sizes[0])
    return (arr.rechunk(tuple(shape)) if changed else arr), tuple(shape)


def _nodata(data: xr.DataArray, path: Path) -> int | float | None:
    nodata = data.rio.nodata
    if nodata is None:
        return None
    dtype = np.dtype(data.dtype)
    value = float(nodata)
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
