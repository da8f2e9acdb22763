"""Where a raster is: a local path, a URL, a GDAL virtual path, or a Zarr store object.

Every public function of rastermatch that reads or writes a raster takes a
:data:`RasterLocation` and turns it into a :class:`Location` with :func:`location`, once:

* a local path (``str`` or :class:`os.PathLike`), or a ``file://`` URL, which is a local path;
* a URL, kept exactly as given (``https://host/a.tif``, ``s3://bucket/scene.zarr``,
  ``gs://...``, ``az://...``, ``abfs://...``, ``memory://...``, any scheme fsspec knows);
  :class:`pathlib.Path` would turn ``http://host/a.tif`` into ``http:/host/a.tif``;
* a GDAL virtual path (``/vsicurl/https://...``, ``/vsis3/bucket/key``, ``/vsizip/...``),
  passed to GDAL as given;
* a Zarr store object (:class:`zarr.abc.store.Store`: an ``FsspecStore``, ``ObjectStore``,
  ``MemoryStore``, ...).

Messages name :attr:`Location.text`: the location as given with the user name, password,
query string and fragment of a URL left out (a presigned URL's signature or a SAS token is a
credential). Credentials otherwise come from the environment, as the libraries underneath
read them (``AWS_*`` for GDAL's ``/vsis3/`` and s3fs, ``GOOGLE_*``/``GS_*`` for ``/vsigs/``
and gcsfs, ``AZURE_*`` for ``/vsiaz/`` and adlfs); rastermatch never logs them.

GDAL settings for remote reads
------------------------------
GeoTIFFs and COGs at a URL or ``/vsi`` path are read lazily: GDAL fetches the header, then
only the byte ranges of the tiles a dask block needs (HTTP range requests). Around every
remote open and block read, :meth:`Location.gdal_env` applies these GDAL configuration
options; a value the user set (an environment variable or an enclosing ``rasterio.Env``,
seen when the raster is opened) wins:

* ``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``: no listing of the folder to look for sidecar
  files (a request, or thousands of keys on a bucket);
* ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` = the URL's suffix (``.tif``): no probing for
  ``.aux.xml``, ``.ovr`` or ``.msk`` sidecars, one request each;
* ``GDAL_HTTP_MULTIRANGE=YES``, ``GDAL_HTTP_MERGE_CONSECUTIVE_RANGES=YES``: the tiles of one
  block fetched in parallel, adjacent ones in one request;
* ``VSI_CACHE=TRUE``: a range is fetched once per open file;
* ``GDAL_HTTP_MAX_RETRY=3``, ``GDAL_HTTP_RETRY_DELAY=1``: HTTP 429/502/503/504 retried;
* ``GDAL_HTTP_CONNECTTIMEOUT=10``, ``GDAL_HTTP_LOW_SPEED_TIME=30`` with
  ``GDAL_HTTP_LOW_SPEED_LIMIT=1``, ``GDAL_HTTP_TIMEOUT=300``: an unreachable host fails after
  10 s, a stalled transfer after 30 s, and no request runs longer than 5 minutes, so a read
  never hangs (each becomes a :class:`~rastermatch.errors.RasterReadError` naming the URL).

Examples
--------
>>> from rastermatch.io.location import location
>>> loc = location("https://user:secret@example.com/scenes/a.tif?X-Amz-Signature=abc")
>>> loc.kind, loc.text, loc.suffix
('url', 'https://example.com/scenes/a.tif', '.tif')
>>> loc.gdal_path
'/vsicurl/https://user:secret@example.com/scenes/a.tif?X-Amz-Signature=abc'
>>> location("s3://bucket/scenes/b.tif").gdal_path
'/vsis3/bucket/scenes/b.tif'
>>> location("s3://bucket/scenes/b.tif").sibling("b.lut.json").text
's3://bucket/scenes/b.lut.json'
>>> location("file:///tmp/c.tif").kind, str(location("file:///tmp/c.tif").path)
('local', '/tmp/c.tif')
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from rastermatch.errors import InputTypeError, OptionError, RasterReadError

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = [
    "Location",
    "PathLike",
    "RasterLocation",
    "is_remote",
    "gdal_env",
    "location",
    "redact",
    "redact_text",
]

PathLike = str | os.PathLike[str]
#: What every public function that reads or writes a raster accepts.
RasterLocation: TypeAlias = "str | os.PathLike[str] | Store"

Kind = Literal["local", "url", "vsi", "store"]

#: A URL: a scheme (or a chain of fsspec schemes, ``simplecache::s3``) and ``://``.
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*(?:::[A-Za-z][A-Za-z0-9+.-]*)*)://")
#: GDAL's virtual file systems for URL schemes.
_VSI = {"http": "vsicurl", "https": "vsicurl", "s3": "vsis3", "gs": "vsigs", "gcs": "vsigs"}
_VSI_AZURE = ("az", "abfs", "abfss")
#: Schemes GDAL reads, through the virtual file system above.
GDAL_SCHEMES = frozenset({*_VSI, *_VSI_AZURE})
#: Schemes whose URLs hold no credentials (s3fs, gcsfs and fsspec's memory file system take a
#: ``user:password@`` for part of the bucket's name, and quote it in their errors).
_NO_USERINFO = frozenset({"s3", "s3a", "gs", "gcs", "memory"})
_ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
#: Seconds a cheap existence check waits for a server.
EXISTS_TIMEOUT = 10
#: GDAL configuration for remote reads (see the module documentation); user values win.
REMOTE_GDAL_OPTIONS: dict[str, str] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MULTIRANGE": "YES",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "TRUE",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
    "GDAL_HTTP_CONNECTTIMEOUT": "10",
    "GDAL_HTTP_LOW_SPEED_TIME": "30",
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
    "GDAL_HTTP_TIMEOUT": "300",
}


def redact(url: str) -> str:
    """``url`` without user name, password, query string and fragment (what may be secret).

    Examples
    --------
    >>> redact("https://me:pw@host:8080/a.tif?sig=1#x")
    'https://host:8080/a.tif'
    >>> redact("/vsicurl/https://me:pw@host/a.tif?sig=1")
    '/vsicurl/https://host/a.tif'
    """
    prefix = ""
    if url.startswith("/vsi"):
        head, sep, rest = url.partition("://")
        if not sep:
            return url.split("?", 1)[0]
        # "/vsicurl/https" + "://" + rest: the URL after the virtual file system prefix
        slash = head.rfind("/")
        prefix, url = head[: slash + 1], head[slash + 1 :] + sep + rest
    match = _URL.match(url)
    if match is None:
        return prefix + url
    rest = url[match.end() :]
    netloc, separator, tail = rest.partition("/")
    if match.group(1).lower() not in ("abfs", "abfss"):  # abfs://container@account/...
        netloc = netloc.rsplit("@", 1)[-1]
    tail = re.split(r"[?#]", tail, maxsplit=1)[0]
    return f"{prefix}{match.group(1)}://{netloc}{separator}{tail}"


@dataclass(frozen=True)
class Location:
    """One raster's location. Build it with :func:`location`.

    Attributes
    ----------
    kind : {"local", "url", "vsi", "store"}
    text : str
        For messages: as given, a URL's credentials and query string removed.
    path : pathlib.Path or None
        ``kind == "local"``: the path expanded (``~``) and made absolute. Symbolic links are
        not followed (an output that is a link is replaced, not its target); readers resolve
        them when they open the file.
    url : str or None
        ``kind == "url"``: the URL as given (credentials included, for the libraries that
        need them); ``kind == "vsi"``: the GDAL path as given.
    store : zarr.abc.store.Store or None
        ``kind == "store"``: the store object given.
    """

    kind: Kind
    text: str
    path: Path | None = None
    url: str | None = field(default=None, repr=False)  # may hold credentials: never shown
    store: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("local", "url", "vsi", "store"):
            raise OptionError(f"Location kind must be local, url, vsi or store, got {self.kind!r}")
        needed = {"local": self.path, "url": self.url, "vsi": self.url, "store": self.store}
        if needed[self.kind] is None:
            field = {"local": "path", "url": "url", "vsi": "url", "store": "store"}[self.kind]
            raise OptionError(f"a Location of kind {self.kind!r} needs {field}= ({self.text})")

    def __str__(self) -> str:
        return self.text

    # -- names -------------------------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """The URL scheme, lower case (``"https"``, ``"s3"``, ...); ``""`` for other kinds."""
        if self.kind != "url" or self.url is None:
            return ""
        match = _URL.match(self.url)
        return match.group(1).lower() if match else ""

    @property
    def name(self) -> str:
        """The last component (``"a.tif"``), without a trailing slash; ``""`` for a bare store."""
        if self.kind == "local":
            assert self.path is not None
            return self.path.name
        if self.kind == "store":
            root = _store_root(self.store)
            return root.rstrip("/").rsplit("/", 1)[-1] if root else ""
        return _url_path(redact(self.url or "")).rstrip("/").rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        """The suffix of the last component, lower case (``".tif"``, ``".zarr"``, or ``""``)."""
        name = self.name
        dot = name.rfind(".")
        return name[dot:].lower() if 0 < dot < len(name) - 1 else ""

    @property
    def gdal_path(self) -> str:
        """The name GDAL opens.

        A local path as it is; ``http(s)://`` as ``/vsicurl/URL``; ``s3://`` as ``/vsis3/``,
        ``gs://`` as ``/vsigs/``, ``az://`` and ``abfs(s)://`` as ``/vsiaz/`` (the container,
        then the key); a ``/vsi...`` path as given.

        Raises
        ------
        RasterReadError
            GDAL cannot read this location (``memory://`` and other fsspec-only schemes, a
            store object): only Zarr can be read from there.
        """
        if self.kind == "local":
            return str(self.path)
        if self.kind == "vsi":
            return str(self.url)
        scheme = self.scheme
        if self.kind == "url" and self.url is not None and scheme in GDAL_SCHEMES:
            if scheme in ("http", "https"):
                return f"/vsicurl/{self.url}"
            rest = self.url[len(scheme) + 3 :]
            if scheme in _VSI_AZURE:
                container, slash, key = rest.partition("/")
                # abfs://container@account.dfs.core.windows.net/key: the account comes from
                # AZURE_STORAGE_ACCOUNT (or the connection string) for /vsiaz/
                return f"/vsiaz/{container.split('@', 1)[0]}{slash}{key}"
            return f"/{_VSI[scheme]}/{rest}"
        where = "a zarr store object" if self.kind == "store" else f"{scheme}:// locations"
        raise RasterReadError(
            f"{self.text} can be read as Zarr only (GDAL cannot open {where}); give a .zarr "
            "store there, or a GeoTIFF as a local path or an http(s)://, s3://, gs:// or az:// URL"
        )

    def gdal_options(self) -> dict[str, str]:
        """The GDAL configuration for reading this location: :data:`REMOTE_GDAL_OPTIONS` (and
        ``CPL_VSIL_CURL_ALLOWED_EXTENSIONS`` set to the suffix) with every value the user has
        set (environment, enclosing ``rasterio.Env``) taking precedence; ``{}`` for a local path.

        Taken once, where the raster is opened, and applied around every block read by
        :meth:`gdal_env`: GDAL's options set through ``rasterio.Env`` hold for one thread only,
        and dask reads blocks on others.
        """
        if self.kind not in ("url", "vsi"):
            return {}
        from rasterio.env import get_gdal_config

        options = dict(REMOTE_GDAL_OPTIONS)
        if self.kind == "url" and self.suffix:
            # a /vsi path may name a file inside an archive (/vsizip/...): its suffix is not
            # the one of the file fetched, so it is not restricted
            options["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] = self.suffix
        for key in options:
            value = get_gdal_config(key, normalize=False)
            if value is not None:
                options[key] = str(value)
        return options

    def gdal_env(self, options: dict[str, str] | None = None) -> Any:
        """A ``rasterio.Env`` with :meth:`gdal_options` (or ``options``) for remote locations, a
        context that does nothing for local ones.

        Credentials are left to GDAL, which reads ``AWS_*``, ``GOOGLE_*``/``GS_*`` and
        ``AZURE_*`` from the environment (and their configuration files) itself; no boto3
        session is made per read.
        """
        options = self.gdal_options() if options is None else options
        if not options:
            return contextlib.nullcontext()
        return gdal_env(options)

    # -- questions ---------------------------------------------------------------------------

    def is_zarr(self) -> bool:
        """Whether this names a Zarr store: a ``.zarr`` suffix, a store object, a location GDAL
        cannot read (``memory://``), a local directory with Zarr metadata, or an object store URL
        without a suffix (``s3://bucket/prefix/``) holding Zarr metadata (a request or two)."""
        if self.kind == "store" or self.suffix == ".zarr":
            return True
        if self.kind == "local":
            assert self.path is not None
            return self.path.is_dir() and any(
                (self.path / marker).exists() for marker in _ZARR_MARKERS
            )
        if self.kind != "url":
            return False
        if self.scheme not in GDAL_SCHEMES:
            return True
        # not over plain HTTP: fsspec's HTTP client has no timeout to rely on
        http = self.scheme in ("http", "https")
        return not self.suffix and not http and _holds_zarr_metadata(str(self.url))

    def zarr_store(self, *, read_only: bool) -> Any:
        """The zarr store of this location.

        A ``LocalStore`` for a local path, ``FsspecStore.from_url`` for a URL (credentials
        from the environment, as fsspec's file system for the scheme reads them), the store
        object itself when one was given.

        Raises
        ------
        RasterReadError
            No fsspec file system for the URL's scheme is installed, or the URL is malformed.
        """
        from zarr.storage import FsspecStore, LocalStore

        if self.kind == "store":
            return self.store
        if self.kind == "local":
            return LocalStore(str(self.path), read_only=read_only)
        if self.kind == "vsi":
            raise RasterReadError(
                f"{self.text} is a GDAL path; Zarr stores are read through fsspec URLs "
                "(s3://, gs://, https://, ...), give the store's URL instead"
            )
        try:
            return FsspecStore.from_url(
                str(self.url), read_only=read_only, storage_options=_fsspec_options(self.scheme)
            )
        except ImportError as exc:
            raise RasterReadError(
                f"cannot open {self.text}: {_missing_package(self.scheme, exc)}"
            ) from exc
        except (ValueError, TypeError, OSError) as exc:
            raise RasterReadError(
                f"cannot open the Zarr store {self.text}: {_one_line(exc, self.url)}"
            ) from exc

    def exists(self) -> bool:
        """Whether something is there: a local ``stat``, an HTTP ``HEAD``, a listing through
        fsspec, GDAL's ``stat`` for ``/vsi`` paths, a root document in a store object.

        Never raises for an unreachable server or missing credentials: those read as absent
        here, and opening the location says why.
        """
        if self.kind == "local":
            assert self.path is not None
            return self.path.exists() or self.path.is_symlink()
        if self.kind == "store":
            return _store_has_root(self.store)
        if self.kind == "vsi":
            return _gdal_exists(str(self.url))
        if self.scheme in ("http", "https"):
            return _http_exists(str(self.url))
        try:
            from fsspec.core import url_to_fs

            fs, key = url_to_fs(str(self.url))
            return bool(fs.exists(key))
        except Exception:  # no file system for the scheme, no credentials, no network
            return False

    def sibling(self, name: str) -> Location:
        """The location called ``name`` in the same folder (or prefix): sidecars, temporaries.

        A URL's query string (a signature for the original object only) is not carried over.

        Raises
        ------
        OptionError
            ``name`` is empty or holds a ``/``, or this is a store object (which has no
            folder).
        """
        if not name or "/" in name or name in (".", ".."):
            raise OptionError(f"a sibling of {self.text} needs a plain file name, got {name!r}")
        if self.kind == "local":
            assert self.path is not None
            return Location("local", str(self.path.with_name(name)), path=self.path.with_name(name))
        if self.kind == "store":
            raise OptionError(
                f"{self.text} is a store object, which has no folder to put {name} in; give "
                "its URL instead"
            )
        base = re.split(r"[?#]", str(self.url), maxsplit=1)[0].rstrip("/")
        # s3://bucket/a.tif has the folder s3://bucket; s3://bucket (no key) is the folder
        head = base.rsplit("/", 1)[0] if _url_path(base) else base
        url = f"{head}/{name}"
        return Location(self.kind, redact(url), url=url)


def location(value: RasterLocation | Location) -> Location:
    """``value`` as a :class:`Location`; a URL is never changed (``file://`` becomes local).

    Raises
    ------
    InputTypeError
        ``value`` is neither a path, a URL, nor a zarr store object.
    RasterReadError
        A ``file://`` URL names another host, or a path or URL is empty.

    Examples
    --------
    >>> location("data/a.tif").kind, location("memory://x.zarr").is_zarr()
    ('local', True)
    >>> location("/vsizip/data/a.zip/a.tif").kind
    'vsi'
    """
    if isinstance(value, Location):
        return value
    if isinstance(value, str | os.PathLike):
        text = os.fspath(value)
        if isinstance(text, bytes):
            raise InputTypeError(f"give paths as str or pathlib.Path, not bytes ({text!r})")
        if not text.strip():
            raise RasterReadError("an empty path names no raster; give a file, store or URL")
        if "\x00" in text:
            raise RasterReadError(f"{redact(text)!r} holds a NUL character; check the path")
        control = re.search(r"[\x00-\x1f\x7f]", text)
        if control and (_URL.match(text) or text.startswith("/vsi")):
            raise RasterReadError(
                f"{redact(text)!r} holds a control character ({control.group()!r}); a URL "
                "cannot, check how it was built"
            )
        if text.startswith("/vsi"):
            return Location("vsi", redact(text), url=text)
        match = _URL.match(text) if isinstance(value, str) else None
        if match is not None:
            if match.group(1).lower() == "file":
                return _file_url(text)
            scheme = match.group(1).lower().rsplit("::", 1)[-1]
            if scheme in _NO_USERINFO and "@" in text[match.end() :].split("/", 1)[0]:
                raise RasterReadError(
                    f"{redact(text)}: a {scheme}:// URL takes no user name or password (the "
                    "store would take them for part of the bucket's name); give the "
                    "credentials in the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                    "or AWS_PROFILE for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://)"
                )
            return Location("url", redact(text), url=text)
        return Location("local", text, path=_absolute(text))
    if _is_store(value):
        root = _store_root(value)
        kind = type(value).__name__
        return Location("store", f"{kind}({root!r})" if root else kind, store=value)
    raise InputTypeError(
        f"a raster location is a path, a URL or a zarr store object, got {type(value).__name__}"
    )


def is_remote(value: Any) -> bool:
    """Whether ``value`` is a URL, a GDAL virtual path or a store object (not a local path;
    ``file://`` is local)."""
    try:
        return location(value).kind != "local"
    except (InputTypeError, RasterReadError):
        return False


def gdal_env(options: dict[str, str]) -> Any:
    """``rasterio.Env(**options)`` without a boto3 session (GDAL reads the credentials from the
    environment itself), or a context that does nothing when ``options`` is empty."""
    if not options:
        return contextlib.nullcontext()
    import rasterio
    from rasterio.session import DummySession

    return rasterio.Env(session=DummySession(), **options)


#: URLs in free text (another library's message): the scheme up to a space or quote.
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()]+")


def redact_text(text: str) -> str:
    """``text`` with every URL in it :func:`redact`-ed (GDAL and fsspec quote URLs whole).

    Examples
    --------
    >>> redact_text("'/vsicurl/https://u:p@h/a.tif?sig=1' not recognized")
    "'/vsicurl/https://h/a.tif' not recognized"
    """
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)


# Helpers -------------------------------------------------------------------------------------


def _url_path(url: str) -> str:
    """The path part of a URL (after ``scheme://netloc``), or the text itself."""
    match = _URL.match(url)
    if match is None:
        return url
    return url[match.end() :].partition("/")[2]


def _absolute(text: str) -> Path:
    """``text`` with ``~`` expanded (left as is for an unknown user) and made absolute."""
    path = Path(text)
    with contextlib.suppress(RuntimeError):  # "~nobody/a.tif": no such user
        path = path.expanduser()
    return Path(os.path.abspath(path))


def _file_url(text: str) -> Location:
    parsed = urllib.parse.urlsplit(text)
    if parsed.netloc not in ("", "localhost"):
        raise RasterReadError(
            f"{redact(text)} names a file on the host {parsed.netloc!r}; file:// URLs name "
            "local files (file:///path), mount the share and give its local path"
        )
    local = urllib.request.url2pathname(parsed.path)
    if not local:
        raise RasterReadError(f"{redact(text)} names no file; give file:///absolute/path")
    return Location("local", redact(text), path=_absolute(local))


def _is_store(value: Any) -> bool:
    try:
        from zarr.abc.store import Store
    except ImportError:  # pragma: no cover - zarr is a dependency
        return False
    return isinstance(value, Store)


def _store_root(store: Any) -> str:
    """What a store object is rooted at, for messages (its path or URL), or ``""``."""
    for attribute in ("root", "path", "prefix", "url"):
        value = getattr(store, attribute, None)
        if value is not None and str(value) not in ("", "/"):
            return redact(str(value))
    return ""


def _store_has_root(store: Any) -> bool:
    try:
        import zarr

        zarr.open(store=store, mode="r")
    except Exception:  # nothing (readable) there
        return False
    return True


#: Seconds fsspec's HTTP client waits to connect, for the next bytes, and for one request in
#: all (aiohttp waits 5 minutes by default, whatever the server does), for Zarr over HTTP.
HTTP_TIMEOUTS = {"sock_connect": 10.0, "sock_read": 30.0, "total": 300.0}


def _fsspec_options(scheme: str) -> dict[str, Any]:
    """fsspec storage options for a URL scheme: timeouts for plain HTTP; the other file
    systems (s3fs, gcsfs, adlfs) have their own and read credentials from the environment."""
    if scheme not in ("http", "https"):
        return {}
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(**HTTP_TIMEOUTS)}}


def _holds_zarr_metadata(url: str) -> bool:
    """Whether the prefix ``url`` (no query string) holds a Zarr root document; False when it
    cannot be asked (no file system for the scheme, no network, no credentials)."""
    if re.search(r"[?#]", url):
        return False  # a signed or generated URL names one object, not a prefix
    try:
        from fsspec.core import url_to_fs

        fs, key = url_to_fs(url)
        return any(fs.exists(f"{key.rstrip('/')}/{marker}") for marker in _ZARR_MARKERS)
    except Exception:
        return False


def _http_exists(url: str) -> bool:
    for method, headers in (("HEAD", {}), ("GET", {"Range": "bytes=0-0"})):
        request = urllib.request.Request(url, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=EXISTS_TIMEOUT) as response:
                return 200 <= response.status < 300
        except urllib.error.HTTPError as exc:
            if exc.code in (405, 501) and method == "HEAD":
                continue  # HEAD not allowed: ask for one byte instead
            return False
        except (OSError, ValueError):
            return False
    return False


def _gdal_exists(path: str) -> bool:
    with contextlib.suppress(Exception):
        import rasterio.shutil

        return bool(rasterio.shutil.exists(path))
    return False


def _missing_package(scheme: str, exc: BaseException) -> str:
    package = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
    name = package.get(scheme)
    install = f"pip install {name}" if name else "install the fsspec file system for it"
    return f"no file system for {scheme}:// is installed ({exc}); {install}"


def _one_line(exc: BaseException, url: str | None = None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if url:
        text = text.replace(url, redact(url))
    return text
