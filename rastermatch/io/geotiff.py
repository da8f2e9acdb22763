"""GeoTIFF/COG through GDAL: open (probe, chunking, band descriptions, colour
interpretation), write (one open handle, blocks in order, COG copy with overviews), and the
capture of the errors GDAL reports only through its error handler (a failed tile flush on a
full disk).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

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
from rasterio.enums import ColorInterp, Interleaving, Resampling
from rasterio.windows import Window

from rastermatch.errors import (
    RasterReadError,
    RasterWriteError,
)
from rastermatch.io._common import (
    _MANAGED_ATTRS,
    BAND_TAGS_ATTR,
    COLORINTERP_ATTR,
    GDAL_CACHE_MB,
    PROVENANCE_DOMAIN,
    PROVENANCE_KEY,
    _aligned_chunks,
    _cause,
    _dask_array,
    _guarded_chunks,
    _nodata,
    _one_nodata,
    _relabel,
    _scale_offset,
    _settle_provenance,
    _stale_tag,
    _WriteJob,
)
from rastermatch.io.atomic import (
    _compute_on_own_pool,
    _remove_despite_interrupts,
    _sibling,
)
from rastermatch.io.location import Location, redact_text

_GTIFF_COMPRESSIONS = ("ZSTD", "DEFLATE", "LZW", "LZMA", "PACKBITS", "NONE")
_PREDICTOR_COMPRESSIONS = ("ZSTD", "DEFLATE", "LZW", "LZMA")


def _open_gdal(loc: Location, *, chunks: Any) -> xr.DataArray:
    """Open a raster GDAL reads: a local file (``loc.text`` its resolved path) or a remote one
    (an http(s)/s3/gs/az URL or /vsi path), read lazily through GDAL's range requests with
    :meth:`Location.gdal_options` applied around the open and every block read."""
    path = loc.gdal_path
    options = loc.gdal_options()
    if loc.kind != "local":
        # GDAL keeps what it fetched of a URL (size, header, tiles) for the whole process: an
        # object replaced since an earlier open would be read as a mix of old and new bytes
        from rastermatch.io.objectstore import _forget_gdal_cache

        _forget_gdal_cache(path)
    # Probe the file once with rasterio: a clear error for non-rasters, and the block layout
    # and band descriptions rioxarray does not expose.
    try:
        with loc.gdal_env(options), rasterio.open(path) as src:
            count = src.count
            block_shape = src.block_shapes[0] if count else (1, 1)
            pixel_interleaved = src.interleaving == Interleaving.pixel
            descriptions = src.descriptions
            height, width = src.height, src.width
            subdatasets = src.subdatasets
            colorinterp = [ci.name for ci in src.colorinterp]
            file_tags = src.tags()
            band_tags = [src.tags(index) for index in range(1, count + 1)]
    except (rasterio.errors.RasterioError, rasterio._err.CPLE_BaseError) as exc:
        raise _open_error(loc, exc) from exc
    if count == 0:
        hint = f" (subdatasets: {', '.join(subdatasets[:3])}, ...)" if subdatasets else ""
        raise RasterReadError(
            f"{loc.text} has no raster bands{redact_text(hint)}; open one of its subdatasets "
            "by name instead"
        )

    shape = (count, height, width)
    if isinstance(chunks, str) and chunks == "auto":
        band_chunk = count if pixel_interleaved else 1
        chunks = _aligned_chunks(shape, (band_chunk, *block_shape))
    try:
        # chunks=None: a lazily indexed array with one rasterio handle per thread (lock=False),
        # chunked below through the guard that names file, band and window on a failed read
        with loc.gdal_env(options):
            result = rioxarray.open_rasterio(
                path, chunks=None, cache=False, masked=False, lock=False
            )
    except (rasterio.errors.RasterioError, rasterio._err.CPLE_BaseError) as exc:
        raise _open_error(loc, exc) from exc
    if not isinstance(result, xr.DataArray):  # pragma: no cover - count > 0 was checked
        raise RasterReadError(f"{loc.text} holds several rasters; open one of them by name")
    if chunks is not None:
        source = loc.path if loc.kind == "local" else loc.text
        assert source is not None
        result = _guarded_chunks(
            result, chunks, where=loc.text, source=source, stored=None, gdal_options=options
        )
    if any(name not in ("gray", "undefined", "palette") for name in colorinterp):
        result.attrs[COLORINTERP_ATTR] = dict(
            zip((str(b) for b in result.band.values), colorinterp, strict=True)
        )
    if any(band_tags):
        # rioxarray copies band 1's tags into the attributes as if they were the file's: they
        # go back to their bands, every band's own under its label
        for key in band_tags[0]:
            if key not in file_tags:
                result.attrs.pop(key, None)
        result.attrs[BAND_TAGS_ATTR] = {
            str(label): dict(tags)
            for label, tags in zip(result.band.values, band_tags, strict=True)
            if tags
        }
    labels = _labels_from_descriptions(descriptions)
    if labels is not None:
        result = _relabel(result, labels)
    return _one_nodata(result)  # a "nodata" metadata tag of the file must not contradict it


#: What GDAL says (lower case) when a remote file is not there, access is refused, or the
#: server cannot be reached.
_MISSING = ("http response code: 404", "does not exist", "no such file", "nosuchkey")
_DENIED = ("http response code: 401", "http response code: 403", "accessdenied", "forbidden")
_NO_CREDENTIALS = ("configuration options not defined", "missing azure_storage_account")
_UNREACHABLE = ("could not connect", "couldn't connect", "resolve host", "timed out", "timeout")


def _open_error(loc: Location, exc: BaseException) -> RasterReadError:
    """The RasterReadError for a raster GDAL cannot open, naming ``loc`` as the user gave it."""
    cause = _cause(exc)
    if loc.kind == "local":
        return RasterReadError(f"cannot read {loc.text} as a raster: {cause}")
    lowered = cause.lower()
    if any(text in lowered for text in _MISSING):
        return RasterReadError(f"{loc.text} does not exist ({cause}); check the URL")
    if any(text in lowered for text in _DENIED):
        return RasterReadError(
            f"access to {loc.text} was refused ({cause}); check the credentials in the "
            "environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_*) or the URL's signature"
        )
    if any(text in lowered for text in _NO_CREDENTIALS):
        return RasterReadError(
            f"cannot read {loc.text}: no credentials for it ({cause}); set them in the "
            "environment, or the variable that allows unsigned reads of public data"
        )
    if any(text in lowered for text in _UNREACHABLE):
        return RasterReadError(
            f"cannot reach {loc.text} ({cause}); check the URL, the network and any proxy "
            "settings, then try again"
        )
    return RasterReadError(f"cannot read {loc.text} as a raster: {cause}")


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
                # GDAL's default (5 % of RAM) lets dirty tiles pile up until the file is
                # closed; a bounded cache makes GDAL flush as it goes
                GDAL_CACHEMAX=GDAL_CACHE_MB,
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
                    stored = da.store(
                        arr,
                        writer,  # type: ignore[arg-type]  # any __setitem__ target will do
                        lock=job.lock or threading.Lock(),
                        compute=False,
                    )
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
        name = record.threadName or ""
        return record.thread == self.thread or name.startswith(self.thread_prefix)

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
        writing = bool(getattr(_gdal_io, "writing", False))
        if failure and (writing or (record.threadName or "").startswith("Dummy")):
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
    descriptions = data.attrs.get("long_name")  # rioxarray's, when labels could not hold them
    if labels.dtype.kind in "UOST":
        for index, label in enumerate(labels, start=1):
            dst.set_band_description(index, str(label))
    elif isinstance(descriptions, list | tuple) and len(descriptions) == len(labels):
        for index, description in enumerate(descriptions, start=1):
            if isinstance(description, str) and description:
                dst.set_band_description(index, description)
    tags = {
        str(key): str(value)
        for key, value in data.attrs.items()
        if key not in _MANAGED_ATTRS
        and isinstance(value, str | int | float | np.number)
        and not _stale_tag(str(key))
    }
    if tags:
        dst.update_tags(**tags)
    band_tags = data.attrs.get(BAND_TAGS_ATTR)
    if isinstance(band_tags, Mapping):
        for index, label in enumerate(labels, start=1):
            own = band_tags.get(str(label))
            if isinstance(own, Mapping):
                kept = {
                    str(key): str(value)
                    for key, value in own.items()
                    if isinstance(value, str | int | float | np.number) and not _stale_tag(str(key))
                }
                if kept:
                    dst.update_tags(index, **kept)
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
        self._waiting: dict[int, tuple[tuple[slice, ...], np.ndarray]] = {}
        self._waiting_bytes = 0
        self._lock = threading.Lock()

    def __setitem__(self, key: tuple[slice, ...], block: np.ndarray) -> None:
        position = self._order.get(tuple(int(part.start) for part in key))  # type: ignore[arg-type]
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

    def _write(self, key: tuple[slice, ...], block: np.ndarray) -> None:
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
