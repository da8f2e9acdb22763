"""Zarr v2/v3 stores through xarray and zarr: open (variable selection, missing-chunk
check, stored-chunk alignment) and write (Zarr v3, consolidated metadata, crc32c checksums,
CF georeferencing).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

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
    COMPLETE_CHUNKS_ATTR,
    PROVENANCE_ATTR,
    _aligned_yx,
    _cause,
    _dask_array,
    _guarded_chunks,
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
    if loc.scheme not in ("http", "https"):  # HTTP cannot list which chunks exist
        _refuse_missing_chunks(target, text, name, result)
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
        result = _guarded_chunks(
            result, chunks, where=where, source=source, stored=stored_chunks, identity=identity
        )
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


def _refuse_missing_chunks(target: Any, path: str, name: Hashable, variable: xr.DataArray) -> None:
    """Refuse a Zarr variable with chunks never written, unless they read as its nodata.

    Zarr reads a missing chunk as the array's fill value. When that value is the
    variable's nodata, missing chunks are no data by Zarr's own rule; otherwise they would
    enter the statistics as valid pixels of an arbitrary value. A store written by
    :func:`write_raster` has every chunk (its marker or provenance attribute says so): a
    missing one there is a damaged or partial copy, refused whatever the fill value.
    """
    import zarr

    try:
        array = zarr.open_group(target, mode="r")[str(name)]
        if not isinstance(array, zarr.Array):
            return
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
