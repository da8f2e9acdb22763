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

The above holds on a local disk (``file://`` URLs included), where a finished temporary is
renamed into place. Object stores cannot rename; there (:mod:`rastermatch.io.objectstore`):

* Zarr at an fsspec URL (``s3://``, ``gs://``, ``az://``, ``memory://``) or in a zarr store
  object: every task writes its chunks straight under the final prefix while the metadata
  documents wait in the writing process; they are stored only after the last chunk, the root
  ``zarr.json`` (with the consolidated metadata) last. A store without its root
  ``zarr.json`` does not open, so the prefix never opens as an incomplete output. A failed or
  interrupted write removes what it stored; a killed one leaves chunks and a marker
  ``.rastermatch-{pid}-{host}-{token}.staging`` that the next write of the output removes
  (same rules as local temporaries). ``overwrite=True`` first deletes the old root
  ``zarr.json``, then the rest of the old store: old and new are never readable together,
  but the old output is gone from the start of the write.
* GeoTIFF/COG at a URL: written to a local temporary (``TMPDIR``) and uploaded in one PUT or
  multipart upload, which the store shows only when complete; the temporary is removed.

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

import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dask
import numpy as np
import rasterio
import rasterio.dtypes
import rasterio.errors
import rioxarray  # noqa: F401 - registers the .rio accessor
import xarray as xr
from dask.delayed import Delayed

from rastermatch._data import nodata_of, spatial_dims
from rastermatch.errors import (
    DimensionError,
    InputTypeError,
    OptionError,
    RastermatchError,
    RasterReadError,
    RasterWriteError,
    UnsupportedDtypeError,
)

# The names marked "re-exported" are imported from rastermatch.io by other modules, tests and
# scripts; they live in the submodules now.
from rastermatch.io._common import (
    _GTIFF_SUFFIXES,
    _ZARR_MARKERS,
    COLORINTERP_ATTR,  # noqa: F401 - re-exported
    COMPLETE_CHUNKS_ATTR,  # noqa: F401 - re-exported
    GDAL_CACHE_MB,  # noqa: F401 - re-exported (pipeline's bound too)
    MAX_BLOCKS,  # noqa: F401 - re-exported
    PROVENANCE_ATTR,  # noqa: F401 - re-exported
    PROVENANCE_DOMAIN,  # noqa: F401 - re-exported
    PROVENANCE_KEY,  # noqa: F401 - re-exported
    TARGET_CHUNK_EDGE,  # noqa: F401 - re-exported
    PathLike,
    _provenance_json,
    _relabel_bands,
    _settle_provenance,
    _WriteJob,
    lay_out,
)
from rastermatch.io.atomic import (
    CANCEL_WAIT_SECONDS,  # noqa: F401 - re-exported
    NAME_MAX,
    _distributed_client,
    _exists_error,
    _host_hash,  # noqa: F401 - re-exported
    _remove_despite_interrupts,
    _sibling,
    _temp_prefix,  # noqa: F401 - re-exported
    _write_error,
    move_into_place,
    remove_stale_temporaries,
    temporary_sibling,
)
from rastermatch.io.geotiff import (
    ORDERED_WRITE_BUFFER,  # noqa: F401 - re-exported
    _gtiff_compression,
    _open_gdal,
    _write_geotiff,
)

# ``location`` is imported under another name: as ``rastermatch.io.location`` it would hide
# the submodule of that name
from rastermatch.io.location import Location, RasterLocation
from rastermatch.io.location import location as _location
from rastermatch.io.objectstore import check_output as check_remote_output
from rastermatch.io.objectstore import execute as execute_remote
from rastermatch.io.objectstore import output_format, output_location
from rastermatch.io.zarr import _open_zarr, _write_zarr, _zarr_compressors
from rastermatch.provenance import (
    owned_sidecar,
    remove_replaced_sidecar,
    remove_sidecar,
    sidecar_written,
    write_sidecar,
)
from rastermatch.provenance import read_provenance as _read_provenance

__all__ = [
    "check_output_path",
    "nodata_of",
    "open_raster",
    "read_provenance",
    "remove_stale_temporaries",
    "temporary_sibling",
    "write_raster",
]


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def open_raster(
    path: RasterLocation,
    *,
    chunks: Any = "auto",
    band_names: Sequence[str] | None = None,
    variable: str | None = None,
) -> xr.DataArray:
    """Open a GeoTIFF/COG (or anything GDAL reads) or a Zarr store as a lazy array.

    Parameters
    ----------
    path : str, os.PathLike or zarr store
        A raster file GDAL can read, or a Zarr store (v2 or v3): a path ending in ``.zarr``
        or a directory holding ``zarr.json``, ``.zgroup`` or ``.zarray``. Or a remote one
        (see :mod:`rastermatch.io.location`): a GeoTIFF/COG at an ``http(s)://``, ``s3://``,
        ``gs://`` or ``az://`` URL or a GDAL ``/vsi...`` path, read lazily with range
        requests (only the tiles of the blocks computed are fetched); a Zarr store at an
        fsspec URL (``s3://bucket/a.zarr``, ``memory://a.zarr``, ...) or a zarr store object;
        ``file://`` URLs are local paths.
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
        ``encoding["source"]`` set to the resolved path (a remote location: the URL without
        credentials or query string).

    Raises
    ------
    RasterReadError
        The path or URL does not exist, the server cannot be reached or refuses access, it
        is not a raster, cannot be read, ``variable`` is missing
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
    loc = _location(path)
    if loc.kind == "local":
        assert loc.path is not None
        if not (loc.path.exists() or loc.path.is_symlink()):
            raise RasterReadError(f"{loc.text} does not exist; check the path")
        if not loc.path.exists():
            raise RasterReadError(
                f"{loc.text} is a broken link (to {os.readlink(loc.path)}); check the path"
            )
        resolved = loc.path.resolve()
        loc = Location("local", str(resolved), path=resolved)  # messages name the file itself
    if loc.is_zarr():
        result = _open_zarr(loc, chunks=chunks, variable=variable)
    else:
        if variable is not None:
            raise RasterReadError(
                f"variable={variable!r} selects a data variable of a Zarr store, but {loc.text} "
                "is read by GDAL; drop variable="
            )
        result = _open_gdal(loc, chunks=chunks)
    if band_names is not None:
        result = _relabel_bands(result, band_names, loc.text)
    result.encoding["source"] = loc.text
    return result


def read_provenance(path: PathLike) -> dict[str, Any] | None:
    """Read the provenance record :func:`write_raster` stored in an output, whole.

    The header summary and the payload it points to (a GeoTIFF's ``OUTPUT.lut.json`` sidecar,
    a Zarr store's ``rastermatch_lut`` array), checked and put together as the record was
    built: :func:`rastermatch.provenance.read_provenance`.

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
        The path does not exist or is not readable, or the stored record is not valid JSON,
        too large, or does not match its payload.
    """
    return _read_provenance(path)


def _is_zarr_path(path: Path) -> bool:
    if path.suffix.lower() == ".zarr":
        return True
    return path.is_dir() and any((path / marker).exists() for marker in _ZARR_MARKERS)


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
        ``rastermatch`` of the root group; GeoTIFF: the JSON string under key
        ``provenance`` of the GDAL metadata domain ``RASTERMATCH``. A record of the
        rastermatch schema (:mod:`rastermatch.provenance`) keeps only its summary there and
        its LUT in the store's ``rastermatch_lut`` array or the GeoTIFF's ``OUTPUT.lut.json``
        sidecar. Read it back whole with :func:`read_provenance`.
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
    final = output_location(path)  # a Path, or an object store's Location (io.objectstore)
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
    if (
        isinstance(tile_size, bool)
        or not isinstance(tile_size, int)
        or tile_size <= 0
        or tile_size % 16
    ):
        raise RasterWriteError(f"tile_size must be a positive multiple of 16, got {tile_size!r}")

    sources = [data.encoding.get("source"), *inputs]
    check_output_path(final, inputs=[s for s in sources if s], overwrite=overwrite, cog=cog)

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
    if not callable(provenance):
        lay_out(job)  # header summary and payload (rastermatch.provenance)
    if not compute:
        # One task runs the whole write, so the temporary-then-move rule (and the cleanup on
        # failure) holds however the result is computed. The array travels inside the job
        # object, which dask does not traverse, so it is computed block by block by the
        # write itself rather than materialised as an argument.
        return dask.delayed(_execute, pure=False)(
            job, dask_key_name=f"write_raster-{secrets.token_hex(8)}"
        )
    return _execute(job)


def _output_format(path: Path) -> Literal["gtiff", "zarr"]:
    if not isinstance(path, Path):  # an object store's Location
        return output_format(path)  # type: ignore[return-value]
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
    elif (ydim, xdim) not in _NAMED_SPATIAL_DIMS:
        # dims rioxarray does not find by name (lat/lon, or declared with
        # .rio.set_spatial_dims): Zarr keeps their names, and CF axis attributes on their
        # coordinates let every reader (rioxarray, odc-geo, open_raster) find them again
        if ydim in data.coords and xdim in data.coords:
            data = data.assign_coords(
                {
                    dim: xr.Variable(dim, data[dim].values, {**data[dim].attrs, "axis": axis})
                    for dim, axis in ((ydim, "Y"), (xdim, "X"))
                }
            )
        else:
            data = data.rename({ydim: "y", xdim: "x"})
            ydim, xdim = "y", "x"
    if not rows:
        return data.transpose(ydim, xdim).expand_dims(band=np.array([1]))
    return data.transpose(*rows, ydim, xdim)


#: Spatial dims every reader (rioxarray, odc-geo, open_raster) finds by name.
_NAMED_SPATIAL_DIMS = (("y", "x"), ("latitude", "longitude"))


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


def check_output_path(
    path: PathLike,
    *,
    inputs: Iterable[PathLike | None] = (),
    overwrite: bool = False,
    kind: Literal["raster", "file"] = "raster",
    cog: bool = False,
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
    cog : bool, default False
        The raster is to be a Cloud-Optimized GeoTIFF: a Zarr output is refused
        (:class:`~rastermatch.OptionError`).

    Returns
    -------
    pathlib.Path or Location
        The absolute output path; for an object store (a URL other than ``file://``, or a
        zarr store object) its :class:`~rastermatch.io.location.Location`, checked by
        :func:`rastermatch.io.objectstore.check_output` (the bucket exists; any object under
        a Zarr prefix, or the GeoTIFF's key, is an existing output; no directory to check).

    Raises
    ------
    OutputExistsError
        The output exists and ``overwrite`` is False. Its ``path`` attribute is the output,
        so a caller can word the fix in its own terms (``--overwrite``).
    RasterWriteError
        The suffix names no raster format, the name is longer than file systems allow
        (255 bytes), the directory does not exist or is not writable, or the output is an
        input; for an object store: the bucket does not exist, the store cannot be reached
        or refuses the credentials, or the URL is read-only (``http(s)://``).

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
    final = output_location(path)
    if kind not in ("raster", "file"):
        raise OptionError(f"kind must be 'raster' or 'file', got {kind!r} (checking {final})")
    if (
        cog
        and kind == "raster"
        and (final.suffix.lower() == ".zarr" or getattr(final, "kind", None) == "store")
    ):
        raise OptionError(
            f"cog=True (--cog) makes a Cloud-Optimized GeoTIFF, but {final} is a Zarr path; "
            "drop it or write .tif"
        )
    if not isinstance(final, Path):  # an object store: no directory; a listing or a HEAD
        return check_remote_output(final, inputs=inputs, overwrite=overwrite, kind=kind)
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
    if kind == "raster" and final.suffix.lower() in _GTIFF_SUFFIXES:
        # the LUT sidecar a GeoTIFF gets when its provenance is large (rastermatch.provenance)
        from rastermatch.provenance import sidecar_path

        _refuse_inputs(sidecar_path(final), [s for s in inputs if s is not None])
    _refuse_existing(final, overwrite=overwrite, kind=kind)
    return final


def _refuse_inputs(final: Path, sources: Iterable[RasterLocation]) -> None:
    target = final.resolve()
    for source in sources:
        try:
            loc = _location(source)
        except RastermatchError:
            continue  # not a location: nothing on this disk it could be
        if loc.kind != "local" or loc.path is None:
            continue  # a URL or store object: not this local output (file:// URLs are local)
        resolved = loc.path.resolve()
        inside_input_store = target.is_relative_to(resolved) and _is_zarr_path(resolved)
        if resolved == target or resolved.is_relative_to(target) or inside_input_store:
            raise RasterWriteError(
                f"refusing to write {final}: it would overwrite the input {source}; write to "
                "another path"
            )


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
    if not isinstance(job.final, Path):  # an object store: io.objectstore's own protocol
        return execute_remote(job)
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
        # a GeoTIFF's LUT sidecar moves in before the raster, and goes if the raster does not
        sidecar = job.fmt == "gtiff" and job.payload is not None
        if sidecar:
            write_sidecar(job.final, job.payload, overwrite=job.overwrite)
        # the replaced output's own sidecar, which would lie next to a raster without one
        replaced = None
        if job.fmt == "gtiff" and job.overwrite and not sidecar:
            replaced = owned_sidecar(job.final)
        try:
            move_into_place(tmp, job.final, overwrite=job.overwrite)
        except BaseException:
            if sidecar:
                remove_sidecar(job.final)  # the previous one back, if it replaced one
            raise
        if sidecar:
            sidecar_written(job.final)
        remove_replaced_sidecar(replaced)
    except BaseException as exc:
        _remove_despite_interrupts(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, RastermatchError):
            raise _write_error(job.final, exc) from exc
        raise
    return job.final
