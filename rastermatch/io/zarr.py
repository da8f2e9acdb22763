"""Zarr v2/v3 stores through xarray and zarr: open (variable selection, missing-chunk
check, stored-chunk alignment) and write (Zarr v3, consolidated metadata, crc32c checksums,
CF georeferencing).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
import sys
import threading
import warnings
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from rastermatch._data import NODATA_ATTR, nodata_of, spatial_dims
from rastermatch.errors import (
    RasterReadError,
    RasterWriteError,
)
from rastermatch.io._common import (
    _MANAGED_ATTRS,
    _X_NAMES,
    _Y_NAMES,
    COMPLETE_CHUNKS_ATTR,
    PROVENANCE_ATTR,
    _aligned_yx,
    _cause,
    _dask_array,
    _guarded_chunks,
    _GuardedBlocks,
    _names,
    _nodata,
    _one_nodata,
    _scale_offset,
    _without_stale_tags,
    _WriteJob,
)
from rastermatch.io.atomic import _compute_on_cluster, _compute_on_own_pool
from rastermatch.io.location import Location, redact_text


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


def _open_zarr_dataset(loc: Location) -> xr.Dataset:
    """The Zarr group at ``loc`` (a local directory, an fsspec URL or a store object) as a
    lazy Dataset; RasterReadError naming ``loc.text`` when there is none."""
    target: Any
    if loc.kind == "local":
        path = loc.path
        assert path is not None
        if not path.is_dir():
            raise RasterReadError(f"{loc.text} is not a Zarr store (not a directory)")
        root_is_array, consolidated, target = _zarr_root_is_array(path), _consolidated(path), path
    else:
        target = loc.zarr_store(read_only=True)
        root_is_array, consolidated = _store_layout(target, loc)
    if root_is_array:
        raise RasterReadError(
            f"{loc.text} is a bare Zarr array; open_raster reads Zarr groups with named "
            "variables (as written by xarray or write_raster)"
        )
    try:
        return xr.open_zarr(
            target,
            chunks=None,  # chunked later, aligned to the stored chunks
            decode_coords="all",
            mask_and_scale=False,
            consolidated=consolidated,
        )
    except Exception as exc:
        raise RasterReadError(
            f"cannot read the Zarr store {loc.text}: {redact_text(str(exc))}"
        ) from exc


def _store_layout(store: Any, loc: Location) -> tuple[bool, bool]:
    """Whether the root of a (remote) store is an array, and whether it has consolidated
    metadata: one read of the root metadata document."""
    import zarr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr's notice about consolidated metadata
            node = zarr.open(store=store, mode="r")
    except FileNotFoundError as exc:  # zarr's NodeNotFoundError too
        raise RasterReadError(
            f"{loc.text} does not exist (no Zarr metadata there); check the URL"
        ) from exc
    except Exception as exc:
        raise RasterReadError(
            f"cannot read the Zarr store {loc.text}: {_cause(exc)}; check the URL, the "
            "credentials in the environment and the network"
        ) from exc
    if isinstance(node, zarr.Array):
        return True, False
    return False, node.metadata.consolidated_metadata is not None


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


def _open_zarr(loc: Location, *, chunks: Any, variable: str | None) -> xr.DataArray:
    text = loc.text
    dataset = _open_zarr_dataset(loc)
    name = _select_variable(dataset, variable, text)
    result = dataset[name]
    ydim, xdim = spatial_dims(result, f"variable {name!r} of {text}")
    rows = [dim for dim in result.dims if dim not in (ydim, xdim)]
    target = loc.path if loc.kind == "local" else loc.zarr_store(read_only=True)
    array = None
    if loc.scheme not in ("http", "https"):  # HTTP cannot list which chunks exist
        array = _zarr_array(target, name)
        _refuse_missing_chunks(array, text, name, result)
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
        where = f"the Zarr store {text}, variable {name!r},"
        source = loc.path if loc.kind == "local" else text
        assert source is not None
        identity = id(loc.store) if loc.kind == "store" else None
        reader = None
        if loc.kind == "local" and loc.path is not None and array is not None:
            reader = _direct_reader(loc.path / str(name), array, result, where, stored_chunks)
        result = _guarded_chunks(
            result, chunks, where=where, source=source, stored=stored_chunks, identity=identity,
            reader=reader,
        )  # fmt: skip
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
                f"reading the coordinate {key!r} of the Zarr store {text} failed: {_cause(exc)}; "
                "the store is damaged or incomplete, copy or write it again"
            ) from exc
        if all(isinstance(v, str) for v in values.flat):
            # variable-length strings (labels, stackstac's ids): plain numpy str
            result = result.assign_coords(
                {key: (coord.dims, np.array(values.tolist(), dtype=str), coord.attrs)}
            )
    return _one_nodata(result)


def _zarr_array(target: Any, name: Hashable) -> Any:
    """The zarr array of variable ``name`` in the group at ``target``, or None (not judged
    here: reading the chunks reports any real problem)."""
    import zarr

    try:
        array = zarr.open_group(target, mode="r")[str(name)]
    except Exception:
        return None
    return array if isinstance(array, zarr.Array) else None


def _direct_reader(
    folder: Path, array: Any, data: xr.DataArray, where: str, stored_chunks: tuple[int, ...]
) -> _ChunkReader | None:
    """The direct chunk reader of a local Zarr variable, when xarray gives its stored values
    unchanged (no CF decoding changed its dtype) and :func:`_direct_layout` handles it. Its
    errors name the window as the guarded block reader names it (``where``, rows, columns,
    dates by their labels, stored chunk)."""
    layout = _direct_layout(folder, array)
    if layout is None:
        return None
    variable = data.variable
    stored = np.dtype(variable.encoding.get("dtype", variable.dtype))
    if variable.dtype != layout.dtype or stored != layout.dtype:
        return None
    if tuple(variable.shape) != layout.shape:
        return None
    labels = {
        dim: np.asarray(data[dim].values)
        for dim in data.dims
        if dim not in ("band", *_Y_NAMES, *_X_NAMES) and dim in data.coords and data[dim].ndim == 1
    }
    namer = _GuardedBlocks(variable, where, stored_chunks, labels)
    return _ChunkReader(layout, where, namer._window)


def _refuse_missing_chunks(array: Any, path: str, name: Hashable, variable: xr.DataArray) -> None:
    """Refuse a Zarr variable with chunks never written, unless they read as its nodata.

    Zarr reads a missing chunk as the array's fill value. When that value is the
    variable's nodata, missing chunks are no data by Zarr's own rule; otherwise they would
    enter the statistics as valid pixels of an arbitrary value. A store written by
    :func:`write_raster` has every chunk (its marker or provenance attribute says so): a
    missing one there is a damaged or partial copy, refused whatever the fill value.
    """
    if array is None:
        return
    try:
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


def _select_variable(dataset: xr.Dataset, variable: str | None, path: str) -> Hashable:
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


def _write_zarr(job: _WriteJob, tmp: Path | Any, client: Any) -> None:
    # tmp: the local temporary directory, or a zarr store (io.objectstore's)
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
    lut_encoding = {}
    if job.provenance is not None:
        # once, on the root group: a variable's attributes would be copied again into the
        # consolidated metadata; the full record in its own array (rastermatch.provenance)
        dataset.attrs[PROVENANCE_ATTR] = json.loads(job.provenance)
    if job.payload is not None:
        from rastermatch.provenance import ZARR_ARRAY, zarr_variable

        dataset[ZARR_ARRAY], lut_encoding = zarr_variable(job.payload)
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
    if lut_encoding:
        encoding[ZARR_ARRAY] = lut_encoding
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
    if isinstance(tmp, Path):
        # the metadata and coordinates are written; the chunks directly when zarr's own
        # store graph can be replaced (the data variable is the only dask variable)
        source = dataset[name].data
        writer = _direct_writer(tmp / name, dataset, name, source, str(job.final))
        if writer is not None:
            # wrapped as xarray wraps its store: the graph then holds the optimized (fused)
            # keys the workers run, which a failed distributed write waits for
            delayed = dask.delayed(_written)(da.store(source, writer, lock=False, compute=False))
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message="Consolidated metadata is currently not part",
            category=ZarrUserWarning,
        )
        if client is None:
            _compute_on_own_pool(delayed)
        else:
            _compute_on_cluster(delayed, client)


def _written(stored: Any) -> None:
    """The end of a direct chunk write (every block stored)."""
    del stored


def _direct_writer(
    folder: Path, dataset: xr.Dataset, name: Hashable, arr: Any, output: str = ""
) -> _ChunkWriter | None:
    """The direct chunk writer of the data variable just created by ``to_zarr(compute=False)``
    in the local store ``folder.parent``: when it is the dataset's only dask variable, xarray
    stores its values unchanged (same dtype and shape) and :func:`_direct_layout` handles the
    array; else None, and xarray's own store graph writes it."""
    import zarr

    lazy = [key for key, var in dataset.variables.items() if isinstance(var.data, da.Array)]
    if lazy != [name] or not isinstance(arr, da.Array):
        return None
    try:
        array = zarr.open_array(folder, mode="r", zarr_format=3)
    except Exception:
        return None
    layout = _direct_layout(folder, array)
    if layout is None or layout.dtype != arr.dtype or layout.shape != tuple(arr.shape):
        return None
    return _ChunkWriter(layout, output)


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
    attrs = _without_stale_tags(_zarr_json_attrs(data.attrs))
    scale, offset = _scale_offset(data)
    if scale is not None:
        attrs.update(scale_factor=scale, add_offset=offset)
    nodata = _nodata(data, job.final)
    if nodata is not None:
        attrs[NODATA_ATTR] = nodata
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


# Direct chunk I/O of local stores ----------------------------------------------------------
#
# zarr-python reads and writes every chunk through its asyncio event loop: one thread that
# also verifies the checksums, copies each decoded chunk into place and appends each
# checksum (a copy of the chunk), while the codecs hop to another thread pool. Under dask's
# threads that loop is the bottleneck: reading a 4 x 8192² uint16 blosc store took 1.0 CPU-s
# on one core, where reading its chunk files, checking their crc32c and decoding them
# straight into the block take 0.42 CPU-s and run on every core.
#
# So for the common case, a local directory store holding a regular, unsharded array of
# native numbers whose codecs are among crc32c, blosc, zstd and gzip (Zarr v3), or a
# numcodecs compressor without filters (Zarr v2), chunks are read and written here,
# synchronously, in the dask task that needs them, with the codec objects zarr itself uses
# (blosc decoding straight into the destination). Everything else (object stores,
# sharding, transposes, filters, other codecs, big-endian data, variables xarray decodes)
# goes through zarr; tests compare both paths byte for byte.

#: Largest scratch buffer a thread keeps between chunks (bigger ones are freed after use).
_SCRATCH_KEEP = 64 * 2**20
_scratch = threading.local()
#: Fixed slack of a compressed chunk over its data (headers, a gzip member's file name...).
_COMPRESSED_SLACK = 64 * 2**10


class _ChunkLayout:
    """A local Zarr array as the direct reader and writer see it (plain, picklable data).

    ``steps`` are the bytes-to-bytes codecs in encoding order, at most one of them a
    compressor, each ``(kind, codec)``: ``crc32c`` (a 4-byte little-endian checksum after the
    data), ``blosc`` (a numcodecs Blosc), ``zstd``, ``gzip`` or ``zlib`` (a numcodecs codec, or
    zarr's, which wraps numcodecs'). With one compressor every decoded size is known exactly:
    each chunk decodes into buffers of its own size, and a chunk file longer than a chunk of
    the array can take (``limit``) is refused unread.
    """

    __slots__ = (
        "chunks", "dtype", "fill", "folder", "key", "limit", "nbytes", "shape", "sizes", "spec",
        "steps",
    )  # fmt: skip

    def __init__(self, folder: Path, array: Any, steps: tuple[tuple[str, Any], ...]) -> None:
        meta = array.metadata
        self.folder = folder
        self.shape = tuple(int(n) for n in array.shape)
        self.chunks = tuple(int(n) for n in array.chunks)
        self.dtype = np.dtype(array.dtype)
        self.key = meta.encode_chunk_key
        self.spec = meta.get_chunk_spec(
            (0,) * len(self.shape), array.async_array.config, _prototype()
        )
        fill = self.spec.fill_value
        if fill is None:  # Zarr v2 allowed a null fill value: zarr reads the dtype's default
            fill = self.spec.dtype.default_scalar()
        self.fill = np.array(fill, dtype=self.dtype)
        self.steps = steps
        self.nbytes = math.prod(self.chunks) * self.dtype.itemsize
        # sizes[i]: the bytes encoding step i receives (what decoding it must give back),
        # exact up to the compressor; limit: the most bytes a stored chunk can hold
        self.sizes: list[int | None] = []
        size: int | None = self.nbytes
        limit = self.nbytes
        for kind, _ in steps:
            self.sizes.append(size)
            if kind == "crc32c":
                size = None if size is None else size + 4
                limit += 4
            else:
                size = None
                limit += limit // 8 + _COMPRESSED_SLACK
        self.limit = limit

    def pieces(
        self, bounds: Sequence[tuple[int, int]]
    ) -> Iterator[tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...], bool]]:
        """The stored chunks a window meets: their coords, the part of the window each
        fills, the part of the chunk that fills it, and whether that is the whole chunk."""
        ranges = []
        for (start, stop), edge in zip(bounds, self.chunks, strict=True):
            ranges.append(
                [
                    (i, max(start, i * edge), min(stop, (i + 1) * edge))
                    for i in range(start // edge, -(-stop // edge))
                ]
            )
        for parts in itertools.product(*ranges):
            coords = tuple(i for i, _, _ in parts)
            into = tuple(
                slice(a - lo, b - lo) for (_, a, b), (lo, _) in zip(parts, bounds, strict=True)
            )
            within = tuple(
                slice(a - i * edge, b - i * edge)
                for (i, a, b), edge in zip(parts, self.chunks, strict=True)
            )
            whole = all(b - a == edge for (_, a, b), edge in zip(parts, self.chunks, strict=True))
            yield coords, into, within, whole

    def bounds(self, key: Any) -> list[tuple[int, int]] | None:
        """``key`` (a tuple of step-1 slices) as (start, stop) per axis, or None."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > len(self.shape):
            return None
        bounds = []
        for axis, size in enumerate(self.shape):
            part = key[axis] if axis < len(key) else slice(None)
            if not isinstance(part, slice):
                return None
            start, stop, step = part.indices(size)
            if step != 1:
                return None
            bounds.append((start, max(start, stop)))
        return bounds

    # -- one chunk ----------------------------------------------------------------------------

    def decode(self, raw: np.ndarray, dest: np.ndarray) -> None:
        """Decode the stored bytes ``raw`` (1-D uint8) of a chunk into ``dest`` (a writable,
        C-contiguous array of the chunk's shape and dtype); ValueError if they are damaged.
        Nothing is decoded beyond the size each step must give back."""
        import google_crc32c

        out = dest.reshape(-1).view(np.uint8)
        data = raw
        for i in reversed(range(len(self.steps))):
            kind, codec = self.steps[i]
            if kind == "crc32c":
                if data.size < 4:
                    raise ValueError("the chunk is shorter than its crc32c checksum")
                stored = int.from_bytes(data[-4:].tobytes(), "little")
                data = data[:-4]
                computed = google_crc32c.value(data)
                if computed != stored:
                    raise ValueError(
                        f"Stored and computed checksum do not match. Stored: {stored:#010x}. "
                        f"Computed: {computed:#010x}."
                    )
                continue
            size = self.sizes[i]
            assert size is not None  # one compressor: every step before it is a checksum
            target = out if size == out.size else _buffer("stage", size)
            _decompress(kind, codec, data, target)
            data = target
        if data.size != out.size:
            raise ValueError(
                f"the chunk decodes to {data.size} bytes, not the {out.size} of its shape"
            )
        if data is not out:
            out[:] = data

    def encode(self, chunk: np.ndarray) -> list[Any]:
        """The stored bytes of ``chunk`` (C-contiguous, the array's dtype), as buffers."""
        import google_crc32c

        data = chunk.reshape(-1).view(np.uint8)
        tail: list[bytes] = []
        last = len(self.steps) - 1
        for i, (kind, codec) in enumerate(self.steps):
            if kind == "crc32c":
                crc = int(google_crc32c.value(data)).to_bytes(4, "little")
                if i == last:
                    tail = [crc]
                else:
                    data = np.concatenate([data, np.frombuffer(crc, dtype=np.uint8)])
            else:
                from numcodecs.compat import ensure_contiguous_ndarray

                data = ensure_contiguous_ndarray(codec.encode(data)).reshape(-1).view(np.uint8)
        return [data, *tail]


def _decompress(kind: str, codec: Any, data: np.ndarray, target: np.ndarray) -> None:
    """Decompress ``data`` into ``target`` (1-D uint8), which it must fill exactly; the
    stored sizes are checked before anything is allocated or decoded."""
    size = target.size
    if kind == "blosc":
        from numcodecs.blosc import _cbuffer_sizes

        if data.size < 16:
            raise ValueError("the chunk is shorter than a blosc header")
        nbytes, cbytes, _ = _cbuffer_sizes(data)
        if cbytes > data.size:
            raise ValueError(f"the blosc chunk says {cbytes} compressed bytes, it has {data.size}")
        if nbytes != size:
            raise ValueError(f"the blosc chunk says {nbytes} bytes, a chunk holds {size}")
        codec.decode(data, out=target)
    elif kind == "zstd":
        from numcodecs.zstd import decompress

        content = _zstd_content_size(data)
        if content is not None and content != size:
            raise ValueError(f"the zstd frame says {content} bytes, a chunk holds {size}")
        decompress(data, target)  # refuses more than the target holds
    else:  # gzip (any number of members) or zlib, inflated no further than the chunk's size
        import zlib

        wbits = 31 if kind == "gzip" else 15
        done, rest = 0, data.tobytes()
        while True:
            inflater = zlib.decompressobj(wbits)
            piece = inflater.decompress(rest, size - done + 1)
            if len(piece) > size - done:
                raise ValueError(f"the {kind} stream holds more than the {size} bytes of a chunk")
            target[done : done + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            done += len(piece)
            if not inflater.eof:
                raise ValueError(f"the {kind} stream is incomplete or truncated")
            rest = inflater.unused_data
            if kind != "gzip" or not rest:
                break
        if done != size:
            raise ValueError(f"the chunk decodes to {done} bytes, not the {size} of its shape")


def _zstd_content_size(data: np.ndarray) -> int | None:
    """The content size a zstd frame header states, or None (not stated, not a frame)."""
    if data.size < 6 or int.from_bytes(data[:4].tobytes(), "little") != 0xFD2FB528:
        return None
    descriptor = int(data[4])
    single = (descriptor >> 5) & 1
    start = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]
    width = (single, 2, 4, 8)[descriptor >> 6]
    if width == 0 or data.size < start + width:
        return None
    value = int.from_bytes(data[start : start + width].tobytes(), "little")
    return value + 256 if width == 2 else value


def _prototype() -> Any:
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()


def _buffer(name: str, nbytes: int, dtype: Any = np.uint8, shape: Any = None) -> np.ndarray:
    """A scratch array of this thread (reused between chunks; large ones are not kept)."""
    dtype = np.dtype(dtype)
    shape = (nbytes // dtype.itemsize,) if shape is None else shape
    if nbytes > _SCRATCH_KEEP:
        return np.empty(shape, dtype=dtype)
    held = getattr(_scratch, name, None)
    if held is None or held.size < nbytes:
        held = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
        setattr(_scratch, name, held)
    return held[:nbytes].view(dtype).reshape(shape)


def _read_chunk_file(path: Path, limit: int) -> np.ndarray | None:
    """The bytes of a chunk file in this thread's scratch buffer; None where zarr's LocalStore
    reads the fill value (nothing there, a directory, a file in place of a folder).

    Opened without blocking (a FIFO would wait for a writer) and read only when it is a
    regular file of at most ``limit`` bytes (a device such as /dev/zero never ends).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        status = os.fstat(fd)
        if stat.S_ISDIR(status.st_mode):
            return None
        if not stat.S_ISREG(status.st_mode):
            raise OSError(f"{path} is not a regular file")
        size = status.st_size
        if size > limit:
            raise OSError(
                f"{path} holds {size:,} bytes, more than the {limit:,} a chunk of the array "
                "can take"
            )
        raw = _buffer("raw", size)
        view, done = memoryview(raw), 0
        while done < size:
            n = os.readv(fd, [view[done:]])
            if n == 0:
                raise OSError(f"{path} became shorter while it was read")
            done += n
        return raw
    finally:
        os.close(fd)


def _direct_layout(folder: Path, array: Any) -> _ChunkLayout | None:
    """The layout of ``array``, stored in the local directory ``folder``, when the direct
    chunk reader and writer handle it; None when zarr's own path must."""
    try:
        import zarr
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

        if not isinstance(array, zarr.Array) or not folder.is_dir():
            return None
        dtype = np.dtype(array.dtype)
        if dtype.kind not in "biuf" or not dtype.isnative or array.ndim < 1:
            return None
        if any(int(c) < 1 for c in array.chunks) or array.nchunks < 1:
            return None
        meta = array.metadata
        pipeline = array.async_array.codec_pipeline
        steps: list[tuple[str, Any]] = []
        if meta.zarr_format == 3:
            if meta.storage_transformers or type(meta.chunk_grid).__name__ != "RegularChunkGrid":
                return None
            serializer = pipeline.array_bytes_codec
            if pipeline.array_array_codecs or type(serializer) is not BytesCodec:
                return None
            endian = getattr(serializer.endian, "value", None)
            if dtype.itemsize > 1 and endian not in (None, sys.byteorder):
                return None
            for codec in pipeline.bytes_bytes_codecs:
                if type(codec) is Crc32cCodec:
                    steps.append(("crc32c", None))
                elif type(codec) is BloscCodec:
                    steps.append(("blosc", codec._blosc_codec))
                elif type(codec) is ZstdCodec:
                    steps.append(("zstd", codec._zstd_codec))
                elif type(codec) is GzipCodec:
                    steps.append(("gzip", codec._gzip_codec))
                else:
                    return None
        elif meta.zarr_format == 2:
            from numcodecs import GZip, Zlib, Zstd
            from numcodecs.blosc import Blosc

            if meta.filters or meta.order != "C" or meta.dimension_separator not in (".", "/"):
                return None
            compressor = meta.compressor
            kinds = {Blosc: "blosc", Zstd: "zstd", GZip: "gzip", Zlib: "zlib"}
            if compressor is not None:
                if type(compressor) not in kinds:
                    return None
                steps.append((kinds[type(compressor)], compressor))
        else:
            return None
        if sum(kind != "crc32c" for kind, _ in steps) > 1:
            return None  # decoded sizes past a second compressor are unknown: zarr's path
        return _ChunkLayout(folder, array, tuple(steps))
    except Exception:  # anything unexpected: zarr's path, which reports real problems
        return None


class _ChunkReader:
    """Windows of a local Zarr array read chunk file by chunk file (see above); what
    :class:`~rastermatch.io._common._GuardedBlocks` calls instead of xarray's indexing.

    A chunk that cannot be read is a RasterReadError naming it (``where``, and the window
    of the variable ``name`` gives as text), raised here: nothing is read again to find it.
    """

    def __init__(
        self,
        layout: _ChunkLayout,
        where: str = "",
        name: Callable[[tuple[slice, ...]], str] | None = None,
    ) -> None:
        self.layout = layout
        self.where = where or f"the Zarr array {layout.folder}"
        self.name = name

    def __call__(self, key: Any) -> np.ndarray | None:
        """The window ``key`` as a new array; None when it is not one the reader reads (a
        step or an integer index): then the caller reads it through xarray and zarr."""
        layout = self.layout
        bounds = layout.bounds(key)
        if bounds is None:
            return None
        out = np.empty(tuple(b - a for a, b in bounds), dtype=layout.dtype)
        if out.size == 0:
            return out
        for coords, into, within, whole in layout.pieces(bounds):
            try:
                self._read(coords, out[into], within, whole)
            except Exception as exc:
                raise RasterReadError(
                    f"reading {self.where} {self._window(coords, into, bounds)} failed: "
                    f"{_cause(exc)}; the store is damaged or incomplete, copy or write it again"
                ) from exc
        return out

    def _read(
        self, coords: tuple[int, ...], dest: np.ndarray, within: tuple[slice, ...], whole: bool
    ) -> None:
        layout = self.layout
        raw = _read_chunk_file(layout.folder / layout.key(coords), layout.limit)
        if raw is None:  # never written: the fill value, as zarr reads it
            dest[...] = layout.fill
        elif whole and dest.flags.c_contiguous:
            layout.decode(raw, dest)
        else:
            chunk = _buffer("chunk", layout.nbytes, layout.dtype, layout.chunks)
            layout.decode(raw, chunk)
            dest[...] = chunk[within]

    def _window(
        self, coords: tuple[int, ...], into: tuple[slice, ...], bounds: Sequence[tuple[int, int]]
    ) -> str:
        window = tuple(
            slice(lo + part.start, lo + part.stop)
            for part, (lo, _) in zip(into, bounds, strict=True)
        )
        if self.name is not None:
            try:
                return self.name(window)
            except Exception:  # naming must not hide the error being named
                pass
        return f"(stored chunk {', '.join(map(str, coords))})"


class _ChunkWriter:
    """The target of ``dask.array.store`` writing whole chunk files of a local Zarr array
    that zarr created (metadata, coordinates): every chunk of a block's region, edge chunks
    padded with the fill value as zarr pads them. Errors name ``output``, the store being
    written (the folder written is its temporary)."""

    def __init__(self, layout: _ChunkLayout, output: str = "") -> None:
        self.layout = layout
        self.output = output or str(layout.folder.parent)
        self.shape, self.dtype, self.ndim = layout.shape, layout.dtype, len(layout.shape)

    def __setitem__(self, key: Any, block: np.ndarray) -> None:
        layout = self.layout
        where = f"writing the Zarr store {self.output}"
        bounds = layout.bounds(key)
        block = np.asarray(block)
        if bounds is None or block.shape != tuple(b - a for a, b in bounds):
            region = "the window" if bounds is None else ", ".join(f"{a}:{b}" for a, b in bounds)
            raise RasterWriteError(
                f"{where} failed: a block of shape {block.shape} does not fit the region "
                f"[{region}] it was computed for"
            )
        if block.dtype != layout.dtype:
            if block.dtype.newbyteorder("=") != layout.dtype.newbyteorder("="):
                raise RasterWriteError(
                    f"{where} failed: a block computed as {block.dtype} cannot be stored as "
                    f"{layout.dtype}, the dtype the data declare"
                )
            block = block.astype(layout.dtype)  # the other byte order: as zarr converts it
        folders: set[Path] = set()
        for coords, into, within, whole in layout.pieces(bounds):
            part = block[into]
            if whole:
                chunk = np.ascontiguousarray(part)
            else:
                chunk = np.full(layout.chunks, layout.fill, dtype=layout.dtype)
                chunk[within] = part
            buffers = layout.encode(chunk)
            path = layout.folder / layout.key(coords)
            try:
                if path.parent not in folders:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    folders.add(path.parent)
                with open(path, "wb") as f:
                    for buffer in buffers:
                        f.write(buffer)
            except OSError as exc:
                raise RasterWriteError(
                    f"{where} failed: {_cause(exc)}; check the free space and permissions"
                ) from exc
