"""Outputs on object stores: Zarr written in place with its metadata last, GeoTIFF uploaded whole.

Object stores (S3, GCS, Azure, fsspec's ``memory://``, a zarr store object) cannot rename, so a
write cannot be finished under a temporary name and moved into place as on a local disk. What
"never a half-written output under the final name" means there, and how it is kept:

Zarr (``s3://bucket/out.zarr``, ``gs://...``, ``memory://...``, a zarr store object)
    A Zarr store opens only through its root ``zarr.json`` (which also holds the consolidated
    metadata of every array). The write therefore puts every chunk straight under the final
    prefix, each dask task (thread or distributed worker) writing its own, while the metadata
    documents (``zarr.json`` of the group and of each array) are held back in the writing
    process; only when every chunk has landed are they stored, the arrays' first and the
    root ``zarr.json`` last. Until that one PUT the prefix holds no root ``zarr.json`` and
    opens as nothing (``open_raster``, ``xr.open_zarr`` and ``zarr.open_group`` all refuse
    it); after it, it opens complete. A store object gets the same treatment inside it.

    While the write runs, a marker object ``.rastermatch-{pid}-{host}-{token}.staging``
    under the prefix names the writing process. A failed or interrupted write removes
    everything it put under the prefix. A write killed outright (SIGKILL, a lost machine)
    leaves chunks without a root ``zarr.json`` and its marker: the next write of the same
    output removes them when the marker's process is gone (same host), and warns about
    markers from another host (it cannot tell whether that write still runs). A marker of a
    live process on this host refuses the new write (two writes would mix their chunks).

    ``overwrite=True`` replacing a Zarr output: the old root ``zarr.json`` is deleted first
    (from then on the old output no longer opens), then the rest of the old store, then the
    new one is written as above. Old and new chunks are never readable together as a
    complete output; the price is that the old output is gone from the start of the write,
    so a failed or killed overwrite leaves no output at all (on a local disk the old output
    stays until the new one is moved in). Readers that opened the old output before may fail.

GeoTIFF / COG (``s3://bucket/out.tif``, ...)
    Written to a local temporary file (in the system's temporary directory, named like every
    rastermatch temporary so a killed write's file is removed by the next one), then uploaded
    with a single PUT or a multipart upload, either of which the store makes visible only
    when complete. The local file is removed afterwards, on success or failure. An upload
    killed mid-way leaves no object (an unfinished multipart upload is invisible; S3 keeps its
    parts until the bucket's lifecycle rule aborts it).

``overwrite=False`` refuses an output that exists (any object under a Zarr prefix, the key
of a GeoTIFF): checked by ``check_output_path`` before any work, again when the write starts,
and for a GeoTIFF once more just before the upload. A missing bucket is found before any work.
Errors of the store (no bucket, no credentials, connection refused, access denied, a scheme
with no fsspec library installed) raise :class:`~rastermatch.errors.RasterWriteError` naming
the URL without credentials or query string. ``http(s)://`` and GDAL ``/vsi...`` paths are
not written to.

Examples
--------
>>> from rastermatch.io import open_raster, write_raster
>>> scene = open_raster("data/rasterio_RGB.byte.tif")
>>> write_raster(scene, "memory://rastermatch-example/scene.zarr", overwrite=True)
'memory://rastermatch-example/scene.zarr'
>>> open_raster("memory://rastermatch-example/scene.zarr").shape
(3, 718, 791)
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import secrets
import socket
import stat
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store
from zarr.core.sync import sync
from zarr.storage import WrapperStore

from rastermatch.errors import (
    OutputExistsError,
    RastermatchError,
    RasterWriteError,
    StaleTemporaryWarning,
)
from rastermatch.io.atomic import _host_hash, _pid_alive, _sibling, remove_stale_temporaries

if TYPE_CHECKING:
    from zarr.core.buffer import Buffer, BufferPrototype

__all__ = [
    "MetadataLastStore",
    "check_output",
    "execute",
    "output_format",
    "output_location",
    "remove_stale_staging",
    "write_remote_geotiff",
    "write_remote_zarr",
]

#: Names of the metadata documents held back until every chunk is stored (v3; v2 for stores
#: being replaced).
_METADATA_NAMES = ("zarr.json", ".zgroup", ".zarray", ".zattrs", ".zmetadata")
#: The root documents that make a prefix open as a Zarr store (v3, v2, v2 consolidated).
_ROOT_DOCUMENTS = ("zarr.json", ".zmetadata", ".zgroup", ".zarray")
_MARKER_PREFIX = ".rastermatch"
_MARKER_RE = re.compile(r"\.rastermatch-(\d+)-([0-9a-f]{8})-([0-9a-f]{8})\.staging")


def _is_metadata(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in _METADATA_NAMES


def _is_marker(name: str) -> bool:
    return _MARKER_RE.fullmatch(name) is not None


def _byte_range(value: bytes, byte_range: Any) -> bytes:
    """The part of ``value`` a zarr ByteRequest asks for (all of it for None)."""
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest

    if byte_range is None:
        return value
    if isinstance(byte_range, RangeByteRequest):
        return value[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return value[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return value[-byte_range.suffix :] if byte_range.suffix else b""
    raise TypeError(f"unexpected byte range {byte_range!r}")


class MetadataLastStore(WrapperStore[Store]):
    """A zarr store that passes chunks through and holds metadata documents back until
    :meth:`commit`.

    Chunk keys go to the wrapped store at once (from any thread or worker); ``zarr.json``
    documents are kept in this object (in the writing process) and answered from there, so
    zarr and xarray see a normal store while the wrapped one has no metadata yet. Listings
    leave out rastermatch's staging markers. :meth:`commit` stores the documents, deepest
    first and the root ``zarr.json`` last.
    """

    def __init__(self, store: Store, metadata: dict[str, bytes] | None = None) -> None:
        super().__init__(store)
        self._metadata: dict[str, bytes] = {} if metadata is None else metadata

    def _with_store(self, store: Store) -> MetadataLastStore:
        return type(self)(store, self._metadata)

    def __eq__(self, value: object) -> bool:
        return (
            isinstance(value, MetadataLastStore)
            and self._store == value._store
            and self._metadata is value._metadata
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MetadataLastStore({self._store!r})"

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: Any = None
    ) -> Buffer | None:
        if not _is_metadata(key):
            return await self._store.get(key, prototype, byte_range)
        value = self._metadata.get(key)
        if value is None:
            return None
        return prototype.buffer.from_bytes(_byte_range(value, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, Any]]
    ) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        if not any(_is_metadata(key) for key, _ in key_ranges):
            return await self._store.get_partial_values(prototype, key_ranges)
        return [await self.get(key, prototype, byte_range) for key, byte_range in key_ranges]

    async def exists(self, key: str) -> bool:
        if _is_metadata(key):
            return key in self._metadata
        return await self._store.exists(key)

    async def set(self, key: str, value: Buffer) -> None:
        if _is_metadata(key):
            self._check_writable()
            self._metadata[key] = value.to_bytes()
        else:
            await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if _is_metadata(key):
            if key not in self._metadata:
                await self.set(key, value)
        else:
            await self._store.set_if_not_exists(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        for key, value in values:
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        if _is_metadata(key):
            self._metadata.pop(key, None)
        else:
            await self._store.delete(key)

    async def delete_dir(self, prefix: str) -> None:
        prefix = prefix.rstrip("/")
        for key in [k for k in self._metadata if not prefix or k.startswith(prefix + "/")]:
            del self._metadata[key]
        await self._store.delete_dir(prefix)

    async def is_empty(self, prefix: str) -> bool:
        prefix = prefix.rstrip("/")
        if any(not prefix or k.startswith(prefix + "/") for k in self._metadata):
            return False
        async for name in self._store.list_dir(prefix):
            if not _is_marker(name):
                return False
        return True

    async def clear(self) -> None:
        self._metadata.clear()
        await self._store.clear()

    async def list(self) -> AsyncIterator[str]:  # type: ignore[override]
        seen = set(self._metadata)
        for key in sorted(seen):
            yield key
        async for key in self._store.list():
            if key not in seen and not _is_marker(key.split("/", 1)[0]):
                yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        seen = {key for key in self._metadata if key.startswith(prefix)}
        for key in sorted(seen):
            yield key
        async for key in self._store.list_prefix(prefix):
            if key not in seen and not _is_marker(key.split("/", 1)[0]):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:  # type: ignore[override]
        base = prefix.rstrip("/")
        lead = f"{base}/" if base else ""
        names = {
            key[len(lead) :].split("/", 1)[0] for key in self._metadata if key.startswith(lead)
        }
        for name in sorted(names):
            yield name
        async for name in self._store.list_dir(prefix):
            if name not in names and not _is_marker(name):
                yield name

    def metadata_keys(self) -> list[str]:
        """The held documents in the order :meth:`commit` stores them: deepest first, root
        last."""
        return sorted(self._metadata, key=lambda key: (-key.count("/"), key))

    def commit(self) -> None:
        """Store the held metadata documents in the wrapped store: the arrays' together, then
        the root ``zarr.json`` (the one PUT that makes the output open)."""
        import asyncio

        from zarr.core.buffer import default_buffer_prototype

        buffer = default_buffer_prototype().buffer
        root = "zarr.json" if "zarr.json" in self._metadata else ""
        inner = [key for key in self.metadata_keys() if key != root]

        async def store_all() -> None:
            await asyncio.gather(
                *(self._store.set(key, buffer.from_bytes(self._metadata[key])) for key in inner)
            )
            if root:
                await self._store.set(root, buffer.from_bytes(self._metadata[root]))

        sync(store_all())


# Entry points for io's write_raster and check_output_path ------------------------------------
#
# ``loc`` is an io.location.Location of kind "url" (a scheme fsspec knows) or "store" (a zarr
# store object); its ``text`` (the URL without credentials or query) names it in messages.


def output_location(path: Any) -> Any:
    """Where ``write_raster``/``check_output_path`` write: a :class:`pathlib.Path` for a local
    output (a ``file://`` URL included), else the output's Location (an object-store URL or a
    zarr store object). Local paths never import anything here."""
    if isinstance(path, os.PathLike) or (
        isinstance(path, str) and "://" not in path and not path.startswith("/vsi")
    ):
        return Path(path).expanduser().absolute()
    from rastermatch.io.location import location, redact

    if isinstance(path, str) and not path.lower().startswith(("http:", "https:", "/vsi")):
        if secrets_of(path):
            # fsspec's stores take neither: a user:password@ would reach the store as part of
            # the bucket's name (and its error message), a ?query or #fragment the key's
            raise RasterWriteError(
                f"cannot write to {redact(path)} as given: an output URL takes no user name, "
                "password, query string or fragment; give the credentials in the environment "
                "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for s3://, "
                "GOOGLE_APPLICATION_CREDENTIALS for gs://, AZURE_STORAGE_* for az://)"
            )
    loc = location(path)
    if loc.kind == "local":
        return loc.path
    if loc.kind == "vsi":
        raise RasterWriteError(
            f"cannot write to the GDAL path {loc.text}; give the output as a URL "
            "(s3://bucket/out.tif, gs://..., az://...) or a local path"
        )
    if loc.scheme in ("http", "https"):
        raise RasterWriteError(
            f"cannot write to {loc.text}: http(s) URLs are read-only; write to an object "
            "store (s3://, gs://, az://, memory://) or a local path"
        )
    return loc


def output_format(loc: Any) -> str:
    """``"zarr"`` or ``"gtiff"`` for an object-store output, from its suffix."""
    if loc.kind == "store":
        return "zarr"
    suffix = loc.suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in (".tif", ".tiff"):
        return "gtiff"
    raise RasterWriteError(
        f"cannot tell the format of {loc.text} from its suffix {suffix!r}; use .tif, .tiff "
        "(GeoTIFF, uploaded when complete) or .zarr (Zarr v3, written in place)"
    )


def writable_store(loc: Any) -> Store:
    """The zarr store a Zarr output is written through."""
    if loc.kind == "store":
        return loc.store
    from zarr.storage import FsspecStore

    try:
        return FsspecStore.from_url(loc.url, read_only=False)
    except ValueError as exc:  # fsspec: "Protocol not known"
        raise _unknown_scheme(loc, exc) from exc


def _filesystem(loc: Any) -> tuple[Any, str]:
    """fsspec's file system for ``loc``'s URL, and the path in it."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(loc.url)
    except ValueError as exc:
        raise _unknown_scheme(loc, exc) from exc


def _unknown_scheme(loc: Any, exc: Exception) -> RasterWriteError:
    return RasterWriteError(
        f"cannot write {loc.text}: {scrub(str(exc))}; use a scheme fsspec knows (s3://, "
        "gs://, az://, memory://) with its library installed, or a local path"
    )


def execute(job: Any) -> Any:
    """Run a write whose ``job.final`` is an object-store Location; return the URL (or the
    store object) it wrote."""
    from rastermatch.io._common import _settle_provenance
    from rastermatch.io.atomic import _distributed_client

    loc = job.final
    try:
        with _distributed_client() as client:
            if job.compute_with and (job.fmt == "zarr" or client is not None):
                import dask

                _settle_provenance(job, dask.compute(*job.compute_with))
            if job.fmt == "zarr":
                write_remote_zarr(job, writable_store(loc), loc.text, client)
            elif loc.kind == "store":
                raise RasterWriteError(
                    f"a zarr store object holds Zarr only; write the GeoTIFF to a path or URL "
                    f"ending in .tif instead of {loc.text}"
                )
            else:
                write_remote_geotiff(job, loc.url, loc.text, client)
    except Exception as exc:
        if _is_store_failure(exc):
            raise remote_write_error(loc.text, exc) from exc
        raise
    return loc.store if loc.kind == "store" else loc.url


def check_output(
    loc: Any, *, inputs: Iterable[Any] = (), overwrite: bool = False, kind: str = "raster"
) -> Any:
    """io.check_output_path for an object-store output: the suffix, the inputs, and whether
    it exists (a listing or a HEAD request; no directory to check). Returns ``loc``."""
    inputs = [source for source in inputs if source is not None]
    fmt = output_format(loc) if kind == "raster" else "file"
    if fmt == "gtiff" and loc.kind == "url":  # and its LUT sidecar, when it gets one
        from rastermatch.io.location import location
        from rastermatch.provenance import SIDECAR_SUFFIX

        _refuse_inputs(location(loc.url + SIDECAR_SUFFIX), inputs)
    if loc.kind == "store" and loc.store.read_only:
        raise RasterWriteError(
            f"cannot write {loc.text}: the store object is read-only; open it with read_only=False"
        )
    _refuse_inputs(loc, inputs)
    try:
        if fmt == "zarr":
            _refuse_missing_bucket(loc)
            _, left, _ = _survey(writable_store(loc), loc.text, warn=False)
            _refuse_existing(left, loc.text, overwrite=overwrite)
        elif loc.kind == "store":
            raise RasterWriteError(
                f"a zarr store object holds Zarr only; {loc.text} cannot hold a file"
            )
        else:
            _refuse_missing_bucket(loc)
            fs, key = _filesystem(loc)
            _refuse_existing_key(fs, key, loc.text, overwrite=overwrite)
    except Exception as exc:
        if _is_store_failure(exc):
            raise remote_write_error(loc.text, exc) from exc
        raise
    return loc


_BUCKET_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def _refuse_missing_bucket(loc: Any) -> None:
    """A missing bucket found before any work (an object store's prefixes need no creating,
    its buckets do)."""
    if loc.kind != "url":
        return
    scheme, _, rest = loc.url.partition("://")
    if scheme.lower() not in _BUCKET_PROTOCOLS:
        return
    fs, _ = _filesystem(loc)
    bucket = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if not bucket:
        return
    try:
        fs.info(bucket)  # raises what keeps the store away: no network, no credentials
    except FileNotFoundError:
        raise RasterWriteError(
            f"cannot write {loc.text}: the bucket {bucket} does not exist (or these "
            "credentials cannot see it); create it or check the URL"
        ) from None


_VSI_SCHEMES = {"/vsis3/": "s3://", "/vsigs/": "gs://", "/vsiaz/": "az://", "/vsiadls/": "abfs://"}


def _comparable(value: Any) -> str | Store | None:
    """An input or output as something to compare: a URL without a trailing slash, a store
    object, or None for a local path (which an object-store output cannot touch)."""
    kind = getattr(value, "kind", None)
    if kind == "store":
        return value.store
    if kind == "url":
        value = value.url
    elif kind is not None:
        return None
    if isinstance(value, Store):
        return value
    if isinstance(value, os.PathLike):
        return None
    text = str(value)
    if text.startswith("/vsicurl/"):
        text = text[len("/vsicurl/") :]
    for prefix, scheme in _VSI_SCHEMES.items():
        if text.startswith(prefix):
            text = scheme + text[len(prefix) :]
    if "://" not in text or text.lower().startswith("file://"):
        return None
    scheme, _, rest = text.partition("://")
    scheme, rest = scheme.lower(), rest.split("?", 1)[0]
    try:  # as the file system sees it: memory:///a and memory://a, s3a:// and s3:// are one
        import fsspec

        cls = fsspec.get_filesystem_class(scheme)
        protocol = cls.protocol if isinstance(cls.protocol, str) else cls.protocol[0]
        path = posixpath.normpath(cls._strip_protocol(f"{scheme}://{rest}") or ".")
        return f"{protocol}://{path.strip('/')}"
    except Exception:  # a scheme without its library installed: compared as written
        return f"{scheme}://{rest.rstrip('/')}"


def _refuse_inputs(loc: Any, inputs: Iterable[Any]) -> None:
    target = _comparable(loc)
    for source in inputs:
        if source is None:
            continue
        other = _comparable(source)
        if other is None:
            continue
        if isinstance(target, str) and isinstance(other, str):
            same = other == target
            inside_output = other.startswith(target + "/")
            inside_input = target.startswith(other + "/") and ".zarr" in other.lower()
            clash = same or inside_output or inside_input
        else:
            clash = other is target or (type(other) is type(target) and other == target)
        if clash:
            raise RasterWriteError(
                f"refusing to write {loc.text}: it would overwrite the input "
                f"{scrub(str(getattr(source, 'text', source)))}; write to another path"
            )


# Housekeeping through the zarr store API (any store: fsspec, obstore, memory, local) -----------


def _names(store: Store) -> list[str]:
    """The names right under the store's root, listed afresh (fsspec caches listings, and
    other processes write here)."""
    fs = getattr(store, "fs", None)
    if fs is not None:
        with contextlib.suppress(Exception):
            fs.invalidate_cache(getattr(store, "path", None))

    async def collect() -> list[str]:
        return [name async for name in store.list_dir("")]

    return sync(collect())


def _has_root_document(names: Iterable[str]) -> bool:
    return any(name in _ROOT_DOCUMENTS for name in names)


def _judge_markers(names: Iterable[str], text: str, *, warn: bool) -> tuple[list[str], bool]:
    """The markers of dead writes on this host, and whether markers of another host remain.

    A marker of a live process on this host raises RasterWriteError: a write of that output
    runs, and two writes would mix their chunks.
    """
    host = _host_hash()
    stale: list[str] = []
    foreign = False
    for name in names:
        match = _MARKER_RE.fullmatch(name)
        if match is None:
            continue
        pid, owner = int(match[1]), match[2]
        if owner != host:
            if warn:
                warnings.warn(
                    f"{text} holds {name}, the marker of a write from another host that did "
                    "not finish or is still running; once no write of that output runs "
                    "there, delete the prefix (or write with overwrite=True)",
                    StaleTemporaryWarning,
                    stacklevel=4,
                )
            foreign = True
        elif not _running(name, pid):
            stale.append(name)
        else:
            raise _running_error(text, pid)
    return stale, foreign


#: The markers of the writes running in this process (a marker with this process's pid and
#: not in here is left from an earlier write of this process that could not clean up).
_ACTIVE: set[str] = set()


def _running(name: str, pid: int) -> bool:
    return name in _ACTIVE if pid == os.getpid() else _pid_alive(pid)


def _running_error(text: str, pid: int) -> RasterWriteError:
    return RasterWriteError(
        f"cannot write {text}: another write of it is running (process {pid} on this host); "
        "wait for it to finish or write elsewhere"
    )


def _refuse_concurrent(store: Store, text: str, marker: str) -> None:
    """After this write's marker is stored: refuse if another write of this host put its own
    marker meanwhile (both may refuse when they start together; never both go on)."""
    host = _host_hash()
    for name in _names(store):
        match = _MARKER_RE.fullmatch(name)
        if match is None or name == marker or match[2] != host:
            continue
        if _running(name, int(match[1])):
            raise _running_error(text, int(match[1]))


def _survey(store: Store, text: str, *, warn: bool) -> tuple[list[str], list[str], bool]:
    """One listing of the prefix: the markers of dead writes to remove, whether the prefix
    is then to be cleared whole (a dead write that never finished), and what else is there.
    """
    names = _names(store)
    stale, foreign = _judge_markers(names, text, warn=warn)
    clear = bool(stale) and not foreign and not _has_root_document(names)
    left = [] if clear else [name for name in names if not _is_marker(name)]
    return stale, left, clear


def remove_stale_staging(store: Store, text: str) -> list[str]:
    """Remove what killed writes left under a Zarr output; return the markers judged stale.

    A marker of a process that no longer runs on this host marks a dead write: when the
    prefix has no root document (the write never finished), everything under it is removed;
    otherwise (killed between its last metadata PUT and removing the marker) only the marker.
    Markers from another host are reported with a StaleTemporaryWarning and left, with what
    they guard. A marker of a live process on this host raises RasterWriteError.
    """
    stale, _, clear = _survey(store, text, warn=True)
    _remove_stale(store, stale, clear)
    return stale


def _remove_stale(store: Store, stale: list[str], clear: bool) -> None:
    if clear:
        _clear(store)
    else:
        for name in stale:
            sync(store.delete(name))


def _refuse_existing(left: list[str], text: str, *, overwrite: bool) -> bool:
    """Whether the prefix holds an output to replace; refuse one without ``overwrite``, and
    a prefix holding something that is not a Zarr store."""
    if not left:
        return False
    if not overwrite:
        raise _exists_error(text)
    if not _has_root_document(left):
        raise RasterWriteError(
            f"{text} holds objects but no Zarr store (no root zarr.json); refusing to replace "
            "it, delete them yourself if they should go"
        )
    return True


def _exists_error(text: str, what: str = "exists already") -> OutputExistsError:
    error = OutputExistsError(
        f"{text} {what}; allow replacing it (overwrite=True, or --overwrite on the command "
        "line) or write to another path"
    )
    error.path = text  # type: ignore[attr-defined]
    return error


def _clear(store: Store, keep: str | None = None) -> None:
    """Delete everything under the store's root but ``keep``."""
    for name in _names(store):
        if name == keep:
            continue
        sync(store.delete_dir(name))  # a prefix (fsspec removes a single object too)
        sync(store.delete(name))  # a single object


def _retire(store: Store, marker: str) -> None:
    """Make an old output unopenable (its root documents first), then delete all of it but
    ``marker``."""
    for name in _ROOT_DOCUMENTS:
        sync(store.delete(name))
    _clear(store, keep=marker)


def _clear_despite_interrupts(store: Store, keep: str | None = None) -> bool:
    """:func:`_clear`; whether it worked. A Ctrl-C meanwhile is held back until it is done."""
    interrupted = False
    cleared = False
    for _ in range(3):
        try:
            _clear(store, keep)
            cleared = True
            break
        except KeyboardInterrupt:
            interrupted = True
        except Exception:  # the store fails: the marker stays and tells the next write
            break
    if interrupted:
        raise KeyboardInterrupt
    return cleared


def _marker_name() -> str:
    return f"{_MARKER_PREFIX}-{os.getpid()}-{_host_hash()}-{secrets.token_hex(4)}.staging"


def _marker_document() -> bytes:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    return json.dumps(record).encode()


def write_remote_zarr(job: Any, store: Store, text: str, client: Any) -> None:
    """Write ``job`` (a Zarr write) into ``store`` under the metadata-last protocol.

    ``text`` names the output in messages (the URL without credentials).
    """
    from zarr.core.buffer import default_buffer_prototype

    from rastermatch.io.zarr import _write_zarr

    stale, left, clear = _survey(store, text, warn=True)
    replacing = _refuse_existing(left, text, overwrite=job.overwrite)
    _remove_stale(store, stale, clear)
    marker = _marker_name()
    buffer = default_buffer_prototype().buffer
    _ACTIVE.add(marker)
    sync(store.set(marker, buffer.from_bytes(_marker_document())))
    # finished: nothing of this write is left under the prefix but its marker, which goes
    finished = True
    try:
        _refuse_concurrent(store, text, marker)
        finished = False  # from here on the prefix is this write's
        if replacing:
            _retire(store, marker)
        staged = MetadataLastStore(store)
        _write_zarr(job, staged, client)
        staged.commit()
        finished = True
    except BaseException:
        if not finished:
            # the commit's last PUT is the root zarr.json: an error before it leaves no output
            finished = _clear_despite_interrupts(store, keep=marker)
        raise
    finally:
        _ACTIVE.discard(marker)
        if finished:  # else the marker stays, so the next write knows what it finds
            with contextlib.suppress(Exception):
                sync(store.delete(marker))


# GeoTIFF: written locally, uploaded whole -----------------------------------------------------


def _upload_dir() -> Path:
    """Where GeoTIFFs for object stores are written first: the system's temporary directory
    (``TMPDIR``), one folder per user."""
    return Path(tempfile.gettempdir()) / f"rastermatch-uploads-{os.getuid()}"


def _private_folder(folder: Path, text: str) -> Path:
    """``folder`` made if missing (0700), and refused unless it is a real folder of this user
    that nobody else may write to: in a shared temporary directory another user could make it
    first and swap the GeoTIFF for their own file before it is uploaded."""
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        raise RasterWriteError(
            f"cannot write {text}: the local folder for uploads {folder} cannot be made "
            f"({exc.strerror or exc}); set TMPDIR to a writable folder"
        ) from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise RasterWriteError(
            f"cannot write {text}: the local folder for uploads {folder} is not this user's "
            "own private folder (a link, another user's, or writable by others); remove it, "
            "or set TMPDIR to a private folder"
        )
    return folder


def write_remote_geotiff(job: Any, url: str, text: str, client: Any) -> None:
    """Write ``job`` (a GeoTIFF/COG write) to a local temporary, then upload it to ``url``."""
    from fsspec.core import url_to_fs

    from rastermatch.io._common import _WriteJob
    from rastermatch.io.geotiff import _write_geotiff

    fs, key = url_to_fs(url)
    _refuse_existing_key(fs, key, text, overwrite=job.overwrite)
    folder = _private_folder(_upload_dir(), text)
    local = folder / (key.rstrip("/").rsplit("/", 1)[-1] or "output.tif")
    remove_stale_temporaries(local)
    tmp = _sibling(local, "tmp")
    # the GeoTIFF writer names its output in messages and puts a COG's staging file next to
    # it: the local name, mapped back to the URL in the messages below
    fields = {name: getattr(job, name) for name in _WriteJob.__slots__}
    local_job = _WriteJob(**(fields | {"final": local}))
    try:
        try:
            _write_geotiff(local_job, tmp, client)
        except RastermatchError as exc:
            message = str(exc).replace(str(local), f"{text} (first written locally)", 1)
            raise type(exc)(message) from exc
        job.provenance = local_job.provenance
        _refuse_existing_key(
            fs, key, text, overwrite=job.overwrite, what="appeared while it was being written"
        )
        payload = getattr(local_job, "payload", None)
        if payload is None:
            # the sidecar of the output replaced, if it had one, does not belong to this one
            stale = job.overwrite and _owns_sidecar(fs, key, url)
            fs.put_file(str(tmp), key)
            if stale:
                from rastermatch.provenance import remove_uploaded_sidecar

                remove_uploaded_sidecar(fs, key)
        else:
            _upload_with_sidecar(fs, key, text, tmp, payload, overwrite=job.overwrite)
        _forget_gdal_cache(url)
    finally:
        _remove_file_despite_interrupts(tmp)


def _owns_sidecar(fs: Any, key: str, url: str) -> bool:
    """Whether the GeoTIFF at ``key`` has a sidecar that is its own (its header records the
    sidecar's size and SHA-256): a file of that name put there otherwise is left alone."""
    from rastermatch.io.location import location
    from rastermatch.provenance import SIDECAR_SUFFIX, geotiff_header, sidecar_belongs

    side = key + SIDECAR_SUFFIX

    def fetch(size: int) -> bytes | None:
        return fs.cat_file(side) if fs.size(side) <= size else None

    try:
        if not fs.exists(side):
            return False
        loc = location(url)
        _forget_gdal_cache(url)
        with loc.gdal_env():
            header = geotiff_header(loc.gdal_path)
    except Exception:
        return False
    return sidecar_belongs(header, fetch)


def _forget_gdal_cache(url: str) -> None:
    """Drop what GDAL's network file systems cached of the object at ``url`` (its size, its
    bytes), so that this process reads a replaced GeoTIFF anew, not the old one's bytes.

    rasterio has no binding for GDAL's ``VSICurlPartialClearCache``; it is called in the
    GDAL library rasterio loaded (found through ``/proc/self/maps``). Where that cannot be
    done (no ``/proc``), nothing happens: a later open in this process may then see the
    previous object until GDAL's cache lets it go.
    """
    from rastermatch.io.location import location

    with contextlib.suppress(Exception):
        gdal_path = location(url).gdal_path
        library = _gdal_library()
        if library is not None:
            library.VSICurlPartialClearCache(os.fsencode(gdal_path))


_GDAL: list[Any] = []


def _gdal_library() -> Any:
    """The GDAL shared library this process runs (the one rasterio loaded), or None."""
    if not _GDAL:
        import ctypes

        import rasterio  # noqa: F401 - loads GDAL

        found = None
        with contextlib.suppress(OSError):
            with open("/proc/self/maps") as maps:
                paths = {line.split()[-1] for line in maps if "libgdal" in line}
            for path in sorted(paths):
                if path.startswith("/"):
                    found = ctypes.CDLL(path)
                    break
        # (never another libgdal on the system: that one's cache is not rasterio's)
        if found is not None:
            if hasattr(found, "VSICurlPartialClearCache"):
                found.VSICurlPartialClearCache.argtypes = [ctypes.c_char_p]
                found.VSICurlPartialClearCache.restype = None
            else:
                found = None
        _GDAL.append(found)
    return _GDAL[0]


def _upload_with_sidecar(
    fs: Any, key: str, text: str, tmp: Path, payload: bytes, *, overwrite: bool
) -> None:
    """Upload a GeoTIFF whose provenance has a LUT sidecar: the sidecar first (one PUT), then
    the raster; if the raster's upload fails, the sidecar is deleted again, or the one it
    replaced is put back (kept in memory meanwhile, as the local write keeps a hard link), so
    a failed overwrite leaves the previous output with its own sidecar."""
    from rastermatch.provenance import (
        PAYLOAD_MAX_BYTES,
        SIDECAR_SUFFIX,
        remove_uploaded_sidecar,
        upload_sidecar,
    )

    side = key + SIDECAR_SUFFIX
    previous = None
    if overwrite:
        with contextlib.suppress(Exception):  # none, or unreadable: nothing to put back
            if fs.size(side) <= PAYLOAD_MAX_BYTES:
                previous = fs.cat_file(side)
    upload_sidecar(fs, key, payload, overwrite=overwrite, text=text)
    try:
        fs.put_file(str(tmp), key)
    except BaseException:
        if previous is None:
            remove_uploaded_sidecar(fs, key)
        else:
            with contextlib.suppress(Exception):
                fs.pipe_file(side, previous)
        raise


def _refuse_existing_key(
    fs: Any, key: str, text: str, *, overwrite: bool, what: str = "exists already"
) -> None:
    with contextlib.suppress(Exception):
        fs.invalidate_cache(key)
    if fs.exists(key):
        if not overwrite:
            raise _exists_error(text, what)
        if fs.isdir(key):
            raise RasterWriteError(
                f"{text} is a prefix holding objects, not a GeoTIFF; refusing to replace it, "
                "delete them yourself if they should go"
            )


def _remove_file_despite_interrupts(path: Path) -> None:
    interrupted = False
    while True:
        try:
            path.unlink(missing_ok=True)
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


# Errors ----------------------------------------------------------------------------------------

_SECRET_RE = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]*@|\?[^\s'\"]*", re.IGNORECASE)


def scrub(text: str, url: str | None = None) -> str:
    """``text`` without URL credentials (``user:secret@``) and query strings (signatures), and
    without the secret parts of ``url`` wherever they appear (a library may quote a URL's
    ``user:secret@bucket`` as a bucket name, without its scheme)."""
    for secret in secrets_of(url) if url else ():
        text = text.replace(secret, "***")
    return _SECRET_RE.sub(lambda m: m["scheme"] or "", text)


def secrets_of(url: str) -> list[str]:
    """The parts of ``url`` that may be secret: ``user:password`` before the host (not
    ``abfs://container@account``), the password alone, the query string and the fragment;
    longest first, empty when there are none.

    Examples
    --------
    >>> secrets_of("s3://AKIA:SECRET@bucket/a.zarr?sig=1")
    ['AKIA:SECRET', 'SECRET', 'sig=1']
    >>> secrets_of("s3://bucket/a.zarr"), secrets_of("abfs://container@account/a.zarr")
    ([], [])
    """
    url = url.rsplit("::", 1)[-1]  # the last URL of an fsspec chain
    scheme, sep, rest = url.partition("://")
    if not sep:
        return []
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    netloc = rest.split("/", 1)[0]
    found = [query, fragment]
    if "@" in netloc and scheme.lower() not in ("abfs", "abfss"):
        userinfo = netloc.rsplit("@", 1)[0]
        found += [userinfo, userinfo.partition(":")[2]]
    return sorted({part for part in found if part}, key=lambda part: (-len(part), part))


def _is_store_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the store or its client library (not from the data)."""
    if isinstance(exc, RastermatchError):
        return False
    if isinstance(exc, (OSError, ImportError)):
        return True
    module = type(exc).__module__.split(".", 1)[0]
    return module in {"botocore", "aiobotocore", "s3fs", "aiohttp", "gcsfs", "adlfs", "azure"}


def remote_write_error(text: str, exc: BaseException) -> RastermatchError:
    """A RasterWriteError naming the output (``text``: no credentials) for a failure of the
    object store, with the cause (scrubbed of URL credentials and query strings) and a fix."""
    if isinstance(exc, RastermatchError):
        return exc
    reason = scrub(str(exc) or type(exc).__name__)
    name = type(exc).__name__
    lowered = f"{name} {reason}".lower()
    if isinstance(exc, ImportError):
        hint = (
            "the library for this kind of URL is missing: install rastermatch[remote] "
            "(s3fs), or gcsfs / adlfs for gs:// and az://"
        )
    elif "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        hint = "create the bucket or check the URL"
    elif "credential" in lowered or "signature" in lowered or "invalidaccesskey" in lowered:
        hint = (
            "no valid credentials: provide them as the store's library expects "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for s3://)"
        )
    elif isinstance(exc, PermissionError) or "accessdenied" in lowered or "forbidden" in lowered:
        hint = "access denied: check the credentials' permissions on that bucket and prefix"
    elif isinstance(exc, ConnectionError) or "connect" in lowered or "endpoint" in lowered:
        hint = "the store cannot be reached: check the endpoint (AWS_ENDPOINT_URL) and network"
    else:
        hint = "check the URL, the credentials and the store, and try again"
    return RasterWriteError(f"writing {text} failed: {name}: {reason}; {hint}")
