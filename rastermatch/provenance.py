"""Provenance: one versioned record for every job, and where each part of it is stored.

Every file job (match, fit and apply, normalize, destripe, equalize, specify) describes its
output with one record, schema ``rastermatch.provenance/2``::

    {"schema": "rastermatch.provenance/2",
     "operation": "match" | "apply" | "normalize" | "destripe" | "equalize" | "specify",
     "created": ISO date (only when SOURCE_DATE_EPOCH is set: outputs carry no clock time),
     "inputs": {name: text | [text, ...] | null},   paths as given, URLs without credentials
     "method": str | null, "levels": str | null,
     ... the operation's own small fields (destripe: "detectors", "reference"; normalize
         stack: "time"; equalize: "range"; specify: "rows", "pixels", "by_windows",
         "by_position"),
     "quality": [row, ...],                          the quality metrics, one row per band/row
     "versions": {package: version},
     "lut": LUT document | null   (match, apply, normalize, destripe: the LUT with both
                                   histograms, :meth:`rastermatch.LUT.to_dict`; null with a
                                   "lut_omitted" reason when it is too large for any file)
     "luts": [LUT document without its reference histogram, ...] and "reference_histogram"
                                  (a normalized stack: one LUT per date, the reference shared)}

Where it is stored. The raster's own header (GeoTIFF metadata domain ``RASTERMATCH``, key
``provenance``; the root attributes of a Zarr store, key ``rastermatch``) holds a *summary*
of at most :data:`HEADER_MAX_BYTES` (12 KiB of JSON once XML-escaped, so the whole GDAL
metadata tag stays under 16 KiB; for Zarr :data:`ZARR_HEADER_MAX_BYTES`, 6 KiB as zarr's
indented ``zarr.json`` holds it, beside the arrays' consolidated metadata): everything but the
LUT documents (and the largest other fields when the rest is still too large), and ``"lut"``
saying where they are:

- ``{"array": "rastermatch_lut", "sha256": ..., "bytes": n, "fields": [...]}``: Zarr. The
  whole record as UTF-8 JSON in a one-dimensional ``uint8`` array of the output group
  (dim ``rastermatch_lut_byte``, zstd, chunks of 4 MiB), written by the same ``to_zarr`` as
  the raster, so under the same write guarantee. ``fields`` lists the keys left out of the
  summary. :func:`rastermatch.open_raster` skips it (it is not a 2-D variable).
- ``{"sidecar": "<raster name>.lut.json", "sha256": ..., "bytes": n, "fields": [...]}``:
  GeoTIFF whose record is larger than the header allows. The file ``OUTPUT.lut.json`` next
  to the raster (``matched.tif`` -> ``matched.tif.lut.json``) is the LUT in the LUT file
  format (:meth:`rastermatch.LUT.load` reads it and :func:`rastermatch.pipeline.apply_file`
  re-applies it); the rare other fields too large for the header travel in its optional
  ``provenance`` field. Written under a temporary name and moved into place before the
  raster, never over an input, never over an existing file without ``overwrite``, removed
  with the raster when the write fails.
- otherwise (a GeoTIFF record under the bound, or a record without LUT) the header holds the
  whole record and ``"lut"`` is the LUT document itself (or absent).

The summary is stored once per output: on the Zarr root group, not on the data variable (its
attributes would be copied again into the consolidated metadata).

:func:`rastermatch.read_provenance` reads the header, fetches the payload it points to, checks
its size and SHA-256 and returns the record whole, as it was built. Records are untrusted
input: parsed strictly (no ``NaN`` constants, no duplicate keys, bounded size), every field
of the location checked, and a mismatch raises :class:`~rastermatch.RasterReadError`. Records
without ``schema`` (written by rastermatch 0.1 or given to ``write_raster`` by a caller) are
stored and read back as they are.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import stat
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import OptionError, RastermatchError, RasterReadError, RasterWriteError

if TYPE_CHECKING:
    import xarray as xr

    from ._detectors import Detectors
    from .lut import LUT

__all__ = [
    "HEADER_MAX_BYTES",
    "ZARR_HEADER_MAX_BYTES",
    "SCHEMA",
    "SIDECAR_SUFFIX",
    "ZARR_ARRAY",
    "Stored",
    "destripe_record",
    "equalize_record",
    "lut_record",
    "match_record",
    "prepare",
    "sidecar_path",
    "specify_record",
    "stack_record",
    "summary",
    "versions",
]

#: The schema the records of this version carry.
SCHEMA = "rastermatch.provenance/2"
#: The most bytes of JSON (counted as GDAL's XML escaping stores them) a header summary holds:
#: with the XML around it and the raster's other GDAL metadata (band descriptions, tags), the
#: GeoTIFF metadata tag stays under 16 KiB, so a COG's first tile starts near the file's head.
HEADER_MAX_BYTES = 12 * 1024
#: The most bytes a Zarr output's summary takes in its root ``zarr.json`` as zarr writes it
#: (indented, two levels deep): with the consolidated metadata of the arrays beside it
#: (measured: 8.5 KB for a (time, band, y, x) stack with its CRS) the document stays under
#: 16 KiB.
ZARR_HEADER_MAX_BYTES = 6 * 1024
#: The most bytes a payload (sidecar or Zarr array) may hold: what a LUT file may hold.
PAYLOAD_MAX_BYTES = 512 * 2**20
#: The Zarr array holding the whole record, and its one dim.
ZARR_ARRAY = "rastermatch_lut"
ZARR_DIM = "rastermatch_lut_byte"
ZARR_CHUNK_BYTES = 4 * 2**20
#: A GeoTIFF's sidecar: the raster's file name plus this suffix.
SIDECAR_SUFFIX = ".lut.json"
#: The most nonzero histogram counts (source and reference together) a record keeps of its
#: LUT; beyond it the LUT would be over 40 MB of JSON (measured: half a million counts, a
#: 4-band 16-bit match, are 5.7 MB and 2 s to lay out on a loaded machine), and the record says
#: how to keep it instead (``lut_path=``, ``--lut``). 16 detectors x 4 bands of 16-bit data fit.
LUT_MAX_COUNTS = 2**22

# the keys holding LUT documents: they leave the header first
_BULK = ("lut", "luts", "reference_histogram")
# never moved out of the header
_CORE = ("schema", "operation", "created", "versions", "method", "levels")
_LOCATION_KEYS = {"array", "sidecar", "sha256", "bytes", "fields"}
_SHA = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_HEADER_READ_MAX = 64 * 2**20  # a 0.1 record with a large LUT was ~2 MB; anything beyond: hostile


# -- what a record is made of ------------------------------------------------------------------


def versions() -> dict[str, str]:
    """The versions of rastermatch and of the libraries that computed and wrote the output."""
    import dask
    import numba
    import rasterio
    import xarray
    import zarr

    from . import __version__

    return {
        "rastermatch": __version__,
        "numpy": np.__version__,
        "dask": dask.__version__,
        "xarray": xarray.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "zarr": zarr.__version__,
        "numba": numba.__version__,
    }


def created() -> dict[str, str]:
    """``{"created": ...}`` from ``SOURCE_DATE_EPOCH`` when it is set, else nothing.

    Outputs carry no clock time, so identical inputs and options give identical bytes; the
    reproducible-builds variable stamps a date on purpose.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return {}
    try:
        when = _dt.datetime.fromtimestamp(int(epoch), _dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise OptionError(
            f"SOURCE_DATE_EPOCH={epoch!r} is not a Unix time in seconds; unset it or give one"
        ) from None
    return {"created": when.isoformat(timespec="seconds")}


def input_text(value: Any) -> Any:
    """An input (or a list of them) as the record stores it: a path as given, a URL without
    user, password, query or fragment (where credentials and signatures travel).

    Examples
    --------
    >>> input_text("s3://bucket/a.tif"), input_text(None)
    ('s3://bucket/a.tif', None)
    >>> input_text(["https://user:secret@host/b.tif?X-Amz-Signature=abc"])
    ['https://host/b.tif']
    """
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [input_text(v) for v in value]
    text = getattr(value, "text", None)  # an io Location: already without credentials
    if isinstance(text, str):
        return text
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if "://" in text:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        text = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    return text


def _count_nonzero(lut: LUT) -> int:
    hists = [lut.source_hist, lut.reference_hist]
    for source, reference, _ in getattr(lut, "pairs", None) or ():  # fit_multi's pairs
        hists += [source, reference]
    return sum(int(np.count_nonzero(np.asarray(h.counts))) for h in hists if h is not None)


def lut_record(lut: LUT, *, max_counts: int = LUT_MAX_COUNTS) -> dict[str, Any]:
    """``{"lut": <the LUT document>}``, or, for a LUT with more than ``max_counts`` nonzero
    histogram counts or more cells than a LUT file may hold, ``{"lut": None, "lut_omitted":
    <why, and how to keep it>}``.

    Examples
    --------
    >>> from rastermatch import fit_lut
    >>> levels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    >>> record = lut_record(fit_lut(levels, levels))
    >>> sorted(record), record["lut"]["type"]
    (['lut'], 'rastermatch.LUT')
    >>> lut_record(fit_lut(levels, levels), max_counts=100)["lut_omitted"][:42]
    'the LUT has 128 nonzero histogram counts, '
    """
    from .schema import MAX_CELLS

    counts = _count_nonzero(lut)
    if counts > max_counts:
        why = f"the LUT has {counts} nonzero histogram counts, more than {max_counts}"
    else:
        cells = [h.nbands * h.binning.nbins for h in (lut.source_hist, lut.reference_hist) if h]
        if max(cells, default=0) <= MAX_CELLS:
            return {"lut": lut.to_dict()}
        why = f"the LUT's histograms have {max(cells)} cells, more than a LUT file holds"
    return {
        "lut": None,
        "lut_omitted": f"{why} for raster metadata; save it with lut_path= (--lut) to keep it",
    }


def _inputs(inputs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: input_text(v) for k, v in inputs.items()}


def match_record(
    lut: LUT,
    quality: list[dict[str, Any]],
    /,
    *,
    operation: Literal["match", "apply", "normalize"] = "match",
    **inputs: Any,
) -> dict[str, Any]:
    """The record of an output mapped through one LUT: a match, a saved LUT applied, or one
    source of a normalized series (``operation``). ``inputs``: name -> path(s) or None."""
    return {
        "schema": SCHEMA,
        **created(),
        "operation": operation,
        "inputs": _inputs(inputs),
        "method": lut.method,
        "levels": lut.levels,
        "quality": quality,
        "versions": versions(),
        **lut_record(lut),
    }


def _label_text(label: Any) -> str:
    if isinstance(label, np.datetime64):
        return str(np.datetime_as_string(label, unit="D"))
    return str(label)


def stack_record(
    luts: Sequence[LUT],
    quality: list[dict[str, Any]],
    inputs: Mapping[str, Any],
    labels: np.ndarray,
) -> dict[str, Any]:
    """A normalized ``(time, band, y, x)`` stack: one LUT per date. The reference histogram
    they share is stored once (``reference_histogram``; put it back under that key into a
    document of ``luts`` to load it with :meth:`rastermatch.LUT.from_dict`)."""
    first = luts[0]
    docs = [lut.to_dict() for lut in luts]
    shared = {}
    if all(d.get("reference_histogram") == docs[0].get("reference_histogram") for d in docs):
        shared = {"reference_histogram": docs[0].get("reference_histogram")}
        docs = [{k: v for k, v in d.items() if k != "reference_histogram"} for d in docs]
    return {
        "schema": SCHEMA,
        **created(),
        "operation": "normalize",
        "inputs": _inputs(inputs),
        "time": [_label_text(t) for t in labels],
        "method": first.method,
        "levels": first.levels,
        "quality": quality,
        "versions": versions(),
        **shared,
        "luts": docs,
    }


def destripe_record(
    lut: LUT,
    quality: list[dict[str, Any]],
    layout: Detectors,
    reference: Any,
    /,
    **inputs: Any,
) -> dict[str, Any]:
    """A destriped output: the detector layout, the reference detector (or ``"pooled"``), the
    stripe metrics, versions and the per-detector LUT (:func:`lut_record`)."""
    return {
        "schema": SCHEMA,
        **created(),
        "operation": "destripe",
        "inputs": _inputs(inputs),
        "detectors": {**layout.to_dict(), "description": layout.describe()},
        "reference": reference,
        "method": lut.method,
        "levels": lut.levels,
        "quality": quality,
        "versions": versions(),
        **lut_record(lut),
    }


def equalize_record(*, range: Any = None, **inputs: Any) -> dict[str, Any]:
    """A histogram-equalized output: its inputs and the value range asked for (no LUT file:
    the equalization is rebuilt from the source)."""
    return {
        "schema": SCHEMA,
        **created(),
        "operation": "equalize",
        "inputs": _inputs(inputs),
        "method": "equalize",
        "levels": None,
        "range": list(range) if range is not None else None,
        "versions": versions(),
    }


def specify_record(report: Any, /, **inputs: Any) -> dict[str, Any]:
    """An exact histogram specification: per row, the pixels and the shares whose level the
    window sums and the raster position decided (:class:`rastermatch.specify.SpecifyReport`)."""
    rows = report.rows
    return {
        "schema": SCHEMA,
        **created(),
        "operation": "specify",
        "method": "exact histogram specification (Coltuc, Bolon and Chassery 2006)",
        "inputs": _inputs(inputs),
        "rows": [rows.describe(i) for i in range(rows.size)],
        "pixels": report.pixels.tolist(),
        "by_windows": report.by_windows.tolist(),
        "by_position": report.by_position.tolist(),
        "versions": versions(),
    }


# -- where the parts go ----------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False, check_circular=False)


def record_json(record: Mapping[str, Any]) -> str:
    """``record`` as JSON text; RasterWriteError when it is not JSON data."""
    try:
        return json.dumps(record, allow_nan=False, sort_keys=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise RasterWriteError(
            f"provenance must be JSON-serialisable (dicts, lists, str, finite numbers, bools, "
            f"None): {exc}"
        ) from exc


def header_bytes(text: str) -> int:
    """Bytes ``text`` takes in a GeoTIFF's GDAL metadata tag (XML-escaped, UTF-8)."""
    size = len(text.encode())
    return (
        size + 5 * text.count('"') + 4 * text.count("&") + 3 * (text.count("<") + text.count(">"))
    )


@dataclass(frozen=True)
class Stored:
    """A record laid out for one output format.

    ``header``: the JSON text for the raster's own metadata (at most :data:`HEADER_MAX_BYTES`
    for records of this schema); ``payload``: the bytes of the sidecar (GeoTIFF) or of the
    array (Zarr), or None when the header holds everything.
    """

    header: str
    payload: bytes | None = None
    where: Literal["header", "sidecar", "array"] = "header"

    @property
    def header_dict(self) -> dict[str, Any]:
        return json.loads(self.header)


def summary(record: Mapping[str, Any], location: Mapping[str, Any]) -> dict[str, Any]:
    """What the header keeps of ``record``: every field but those ``location["fields"]`` lists,
    and ``"lut": location``."""
    moved = set(location.get("fields", ()))
    kept = {k: v for k, v in record.items() if k not in moved and k != "lut"}
    return {**kept, "lut": dict(location)}


def zarr_header_bytes(value: Any) -> int:
    """Bytes ``value`` takes as the ``rastermatch`` attribute of a root ``zarr.json``: indented
    as zarr writes its documents, every line two levels deep (``attributes``, ``rastermatch``)."""
    import zarr

    indent = zarr.config.get("json_indent") or 0
    text = json.dumps(value, indent=indent or None, allow_nan=False)
    return len(text.encode()) + text.count("\n") * 2 * indent


def _split(record: Mapping[str, Any], *, always_bulk: bool, fmt: str = "gtiff") -> list[str]:
    """The keys to move out of the header: the LUT documents (always, or only when the whole
    record is too large), then the largest other fields until the rest fits (the Zarr bound
    is measured as zarr's indented ``zarr.json`` stores it)."""
    if fmt == "zarr":
        measure, limit = zarr_header_bytes, ZARR_HEADER_MAX_BYTES
    else:
        measure, limit = (lambda value: header_bytes(_json(value))), HEADER_MAX_BYTES
    if not always_bulk and measure(record) <= limit:
        return []
    moved = [k for k in _BULK if k in record and (k != "lut" or record[k] is not None)]
    rest = {k: v for k, v in record.items() if k not in moved}
    # room for the location (hash, size, field names)
    budget = limit - 512
    sizes = sorted(((measure(v), k) for k, v in rest.items() if k not in _CORE), reverse=True)
    for _, key in sizes:
        if measure(rest) <= budget:
            break
        moved.append(key)
        del rest[key]
    return moved


def prepare(record: Mapping[str, Any] | None, fmt: Literal["gtiff", "zarr"]) -> Stored | None:
    """Lay ``record`` out for a GeoTIFF or Zarr output (see the module documentation).

    Records without ``schema`` (a caller's own dict) are stored whole in the header.
    """
    if record is None:
        return None
    text = record_json(record)
    if record.get("schema") != SCHEMA:
        return Stored(text)
    moved = _split(record, always_bulk=fmt == "zarr", fmt=fmt)
    if not moved:
        return Stored(text)
    if fmt == "zarr":
        payload = text.encode()
        where = {"array": ZARR_ARRAY}
        kind: Literal["sidecar", "array"] = "array"
    else:
        doc = record.get("lut") if "lut" in moved else None
        others = {k: record[k] for k in moved if k != "lut"}
        if doc is None:  # no LUT to carry them (a LUT omitted as too large, a caller's record)
            if "lut" in record:  # null: the header's "lut" is the location, so it goes here
                others["lut"] = None
            body = {"schema": SCHEMA, "provenance": others}
        else:
            body = {**doc, "provenance": others} if others else doc
        payload = _json(body).encode()
        where = {"sidecar": f"<raster name>{SIDECAR_SUFFIX}"}
        kind = "sidecar"
    location = {
        **where,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "bytes": len(payload),
        "fields": moved,
    }
    header = _json(summary(record, location))
    return Stored(header, payload, kind)


def prepare_text(
    text: str | None, fmt: Literal["gtiff", "zarr"]
) -> tuple[str | None, bytes | None]:
    """:func:`prepare` for the JSON text io's writers carry: ``(header text, payload)``."""
    if text is None:
        return None, None
    record = json.loads(text)
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        return text, None
    stored = prepare(record, fmt)
    assert stored is not None
    return stored.header, stored.payload


# -- GeoTIFF sidecar -------------------------------------------------------------------------


def sidecar_path(raster: str | os.PathLike[str]) -> Path:
    """The sidecar of a GeoTIFF: ``matched.tif`` -> ``matched.tif.lut.json``."""
    raster = Path(raster)
    return raster.with_name(raster.name + SIDECAR_SUFFIX)


def write_sidecar(
    raster: Path,
    payload: bytes,
    *,
    overwrite: bool,
    inputs: Iterable[Any] = (),
) -> Path:
    """Write the sidecar of the GeoTIFF ``raster`` (its final name): a temporary sibling, then
    moved into place. Refused when it would replace an input (whatever ``overwrite`` says) or
    an existing file without ``overwrite``; RasterWriteError names the sidecar on failure."""
    from .io import check_output_path, remove_stale_temporaries, temporary_sibling
    from .io.atomic import write_new_file

    final = sidecar_path(raster)
    check_output_path(final, inputs=list(inputs), overwrite=overwrite, kind="file")
    remove_stale_temporaries(final)
    tmp = temporary_sibling(final)
    try:
        write_new_file(tmp, payload)
        place_sidecar(tmp, final, overwrite=overwrite)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and not isinstance(exc, RastermatchError):
            raise RasterWriteError(
                f"writing the LUT sidecar {final} of {raster.name} failed: "
                f"{exc.strerror or exc}; check the disk space and the folder's permissions"
            ) from exc
        raise
    return final


def upload_sidecar(fs: Any, key: str, payload: bytes, *, overwrite: bool, text: str) -> str:
    """Store the sidecar of the GeoTIFF at ``key`` of the fsspec filesystem ``fs`` (an object
    store: one PUT is atomic), before the raster is uploaded; return the sidecar's key.

    An existing sidecar is refused without ``overwrite`` (OutputExistsError naming
    ``text``, the raster's URL without credentials). Call :func:`remove_uploaded_sidecar`
    when the raster's upload then fails.
    """
    from .io.atomic import _exists_error

    side = key + SIDECAR_SUFFIX
    shown = text + SIDECAR_SUFFIX
    if not overwrite:
        try:
            exists = fs.exists(side)
        except Exception:  # the upload below reports an unreachable store
            exists = False
        if exists:
            raise _exists_error(shown)  # type: ignore[arg-type]
    try:
        fs.pipe_file(side, payload)
    except Exception as exc:
        raise RasterWriteError(f"uploading the LUT sidecar {shown} failed: {exc}") from exc
    return side


def remove_uploaded_sidecar(fs: Any, key: str) -> None:
    """Remove the sidecar :func:`upload_sidecar` stored for ``key`` (the raster did not follow)."""
    with contextlib.suppress(Exception):
        fs.rm_file(key + SIDECAR_SUFFIX)


def remove_stale_sidecars(final: Path) -> list[Path]:
    """Remove the sidecars a killed job left next to the temporaries of the raster ``final``
    (``.NAME.rastermatch-PID-HOST-TOKEN.tmp.tif.lut.json``): made on this host by a process
    that is gone, their raster temporary already removed."""
    from .io.atomic import _TEMP_RE, _host_hash, _pid_alive, _temp_prefix

    final = Path(final)
    prefix, host, removed = _temp_prefix(final), _host_hash(), []
    try:
        names = [p for p in final.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return removed
    for path in names:
        if not path.name.endswith(SIDECAR_SUFFIX):
            continue
        raster = path.with_name(path.name[: -len(SIDECAR_SUFFIX)])
        match = _TEMP_RE.fullmatch(raster.name[len(prefix) :])
        if match is None or match[2] != host or raster.exists():
            continue
        if int(match[1]) == os.getpid() or _pid_alive(int(match[1])):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


# the sidecars replaced by this process whose raster has not moved in yet: final -> the previous
# one, kept (a hard link) so that a raster that fails to move in leaves the previous output whole
_PREVIOUS: dict[Path, Path] = {}


def place_sidecar(tmp: Path, final: Path, *, overwrite: bool) -> None:
    """Move the finished sidecar ``tmp`` onto ``final``, keeping a sidecar it replaces until
    :func:`keep_sidecar` (the raster moved in) or :func:`undo_sidecar` (it did not)."""
    from .io import move_into_place
    from .io.atomic import _sibling

    previous = None
    if overwrite and final.is_file() and not final.is_symlink():
        previous = _sibling(final, "old")  # put back by the stale cleanup if this process dies
        try:
            os.link(final, previous)
        except OSError:
            previous = None  # no hard links here: the previous sidecar cannot be kept
    try:
        move_into_place(tmp, final, overwrite=overwrite)
    except BaseException:
        if previous is not None:
            with contextlib.suppress(OSError):
                previous.unlink()
        raise
    if previous is not None:
        _PREVIOUS[final] = previous


def keep_sidecar(final: Path) -> None:
    """The raster of the sidecar ``final`` moved in: the sidecar it replaced goes."""
    previous = _PREVIOUS.pop(final, None)
    if previous is not None:
        with contextlib.suppress(OSError):
            previous.unlink()


def undo_sidecar(final: Path) -> None:
    """The raster of the sidecar ``final`` did not move in: the sidecar it replaced comes back,
    or, if there was none, the new one goes."""
    previous = _PREVIOUS.pop(final, None)
    with contextlib.suppress(OSError):
        if previous is not None:
            os.replace(previous, final)
        else:
            final.unlink()


def sidecar_belongs(header: str | None, fetch: Callable[[int], bytes | None]) -> bool:
    """Whether a GeoTIFF's header (its provenance text) records a sidecar and ``fetch(size)``
    (the sidecar's bytes, None when missing or larger than ``size``) has its size and SHA-256;
    False for anything else, damaged or foreign headers included."""
    try:
        where = location_of(parse(header, ""), "") if header is not None else None
        if where is None or "sidecar" not in where:
            return False
        data = fetch(where["bytes"])
    except Exception:
        return False
    return (
        data is not None
        and len(data) == where["bytes"]
        and hashlib.sha256(data).hexdigest() == where["sha256"]
    )


def geotiff_header(gdal_path: str) -> str | None:
    """The provenance text in a GeoTIFF's header, or None (no tag, or unreadable)."""
    import rasterio

    from .io._common import PROVENANCE_DOMAIN, PROVENANCE_KEY

    try:
        with rasterio.open(gdal_path) as src:
            return src.tags(ns=PROVENANCE_DOMAIN).get(PROVENANCE_KEY)
    except Exception:
        return None


def owned_sidecar(raster: Path) -> Path | None:
    """The sidecar next to the local GeoTIFF ``raster`` when it is that raster's (its header
    records the sidecar's size and SHA-256), else None: call it before ``raster`` is replaced
    by one without a sidecar, and remove what it returns once the new raster is in place."""
    side = sidecar_path(raster)
    if side.is_symlink() or not side.is_file():
        return None
    return (
        side
        if sidecar_belongs(geotiff_header(str(raster)), lambda n: read_bounded(side, n))
        else None
    )


def remove_replaced_sidecar(side: Path | None) -> None:
    """Remove the sidecar :func:`owned_sidecar` found for a raster since replaced by one
    without a sidecar (its LUT, which ``LUT.load`` or ``apply`` would take for the new
    raster's); nothing for None."""
    if side is not None:
        with contextlib.suppress(OSError):
            side.unlink()


def remove_sidecar(raster: Path) -> None:
    """The write of ``raster`` failed after its sidecar moved in: :func:`undo_sidecar`."""
    undo_sidecar(sidecar_path(raster))


def sidecar_written(raster: Path) -> None:
    """The raster moved in after its sidecar: :func:`keep_sidecar`."""
    keep_sidecar(sidecar_path(raster))


# -- Zarr array --------------------------------------------------------------------------------


def zarr_variable(payload: bytes) -> tuple[xr.Variable, dict[str, Any]]:
    """The payload as a one-dimensional ``uint8`` variable and its Zarr encoding (zstd, 4 MiB
    chunks, crc32c), to add to the dataset the output is written from."""
    import xarray as xr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    values = np.frombuffer(payload, dtype=np.uint8)
    variable = xr.Variable((ZARR_DIM,), values, {"content": f"JSON, schema {SCHEMA}"})
    encoding = {
        "chunks": (max(1, min(len(values), ZARR_CHUNK_BYTES)),),
        "compressors": (ZstdCodec(level=3), Crc32cCodec()),
        "_FillValue": None,
    }
    return variable, encoding


def read_zarr_payload(group: Any, source: str, size: int) -> bytes:
    """The bytes of the record array of an opened Zarr group, checked before any is read."""
    try:
        array = group[ZARR_ARRAY]
    except KeyError:
        raise RasterReadError(
            f"{source} says its provenance is in the array {ZARR_ARRAY!r}, which it lacks; the "
            "store is incomplete or was edited: write it again"
        ) from None
    except Exception as exc:
        raise RasterReadError(f"cannot open the provenance array of {source}: {exc}") from exc
    shape, dtype = getattr(array, "shape", None), getattr(array, "dtype", None)
    if shape != (size,) or dtype != np.uint8:
        raise RasterReadError(
            f"the provenance array of {source} is {dtype} of shape {shape}, not the uint8 of "
            f"{size} bytes its header records; the store was edited: write it again"
        )
    try:
        return bytes(np.asarray(array[...], dtype=np.uint8).tobytes())
    except Exception as exc:
        raise RasterReadError(f"cannot read the provenance array of {source}: {exc}") from exc


# -- reading back ------------------------------------------------------------------------------


def _bad(source: str, problem: str) -> RasterReadError:
    return RasterReadError(
        f"the provenance of {source} {problem}; it was damaged or edited: write the output again"
    )


def parse(raw: str | bytes, source: str, *, limit: int = _HEADER_READ_MAX) -> Any:
    """JSON text parsed strictly (no NaN constants, no duplicate keys, at most ``limit``
    bytes); RasterReadError naming ``source`` otherwise."""
    from .schema import _Invalid, parse_json

    if len(raw) > limit:
        raise _bad(source, f"is {len(raw):,} bytes long, more than the {limit:,} read")
    try:
        return parse_json(raw)
    except _Invalid as e:
        raise _bad(source, e.problem) from None


def location_of(header: Any, source: str) -> dict[str, Any] | None:
    """The payload location a header records, every field checked; None when the header holds
    the whole record."""
    if not isinstance(header, Mapping):
        raise _bad(source, f"is a JSON {type(header).__name__}, not an object")
    if header.get("schema") != SCHEMA:
        schema = header.get("schema")
        if schema is not None and (not isinstance(schema, str) or schema.startswith("rastermatch")):
            raise RasterReadError(
                f"the provenance of {source} has schema {str(schema)[:80]!r}, which this "
                f"version does not read ({SCHEMA}); upgrade rastermatch"
            )
        return None
    where = header.get("lut")
    if not isinstance(where, Mapping) or not ("array" in where or "sidecar" in where):
        return None  # the whole record (a LUT document, null, or no LUT)
    unknown = set(where) - _LOCATION_KEYS
    if unknown or ("array" in where) == ("sidecar" in where):
        raise _bad(source, f"has a LUT location with the fields {sorted(map(str, where))}")
    if "array" in where and where["array"] != ZARR_ARRAY:
        raise _bad(source, f"names the array {str(where['array'])[:80]!r}, not {ZARR_ARRAY!r}")
    if "sidecar" in where and not isinstance(where["sidecar"], str):
        raise _bad(source, "has a sidecar name that is not text")
    sha, size, fields = where.get("sha256"), where.get("bytes"), where.get("fields")
    if not isinstance(sha, str) or not _SHA.fullmatch(sha):
        raise _bad(source, "has no valid sha256 of its LUT")
    if type(size) is not int or not 0 < size <= PAYLOAD_MAX_BYTES:
        raise _bad(source, f"records a LUT of {str(size)[:40]} bytes (1 to {PAYLOAD_MAX_BYTES:,})")
    if (
        not isinstance(fields, list)
        or len(fields) > 64
        or not all(isinstance(f, str) and _KEY.fullmatch(f) for f in fields)
        or len(set(fields)) != len(fields)
        or set(fields) & set(_CORE)  # never moved: a payload must not replace them
    ):
        raise _bad(source, "has an invalid list of the fields stored with its LUT")
    return dict(where)


def assemble(
    header: Mapping[str, Any], location: Mapping[str, Any], payload: bytes | None, source: str
) -> dict[str, Any]:
    """The whole record from a header and the payload its ``location`` points to."""
    what = "array" if "array" in location else f"sidecar {source}{SIDECAR_SUFFIX}"
    if payload is None:
        raise RasterReadError(
            f"the LUT {what} of {source} is missing; keep it next to the raster (its provenance "
            "says the LUT is there), or write the output again"
        )
    if (
        len(payload) != location["bytes"]
        or hashlib.sha256(payload).hexdigest() != location["sha256"]
    ):
        raise RasterReadError(
            f"the LUT {what} does not belong to {source} (its size or SHA-256 differs from the "
            "one the raster records); it was replaced or edited: write the output again"
        )
    body = parse(payload, f"{source} ({what})", limit=PAYLOAD_MAX_BYTES)
    if not isinstance(body, dict):
        raise _bad(source, f"has a LUT {what} that is not a JSON object")
    fields = list(location["fields"])
    if "array" in location:
        if body.get("schema") != SCHEMA or any(k not in body for k in fields):
            raise _bad(source, "has a record array that does not match its header")
        return body
    lut = body.get("type") == "rastermatch.LUT"
    if not lut and body.get("schema") != SCHEMA:
        raise _bad(source, f"has a sidecar that is not a LUT document ({what})")
    extra = body.pop("provenance", {})
    if (
        not isinstance(extra, dict)
        or set(extra) - {"lut"} != set(fields) - {"lut"}
        or lut != ("lut" in fields)
        or ("lut" in extra and (lut or extra["lut"] is not None))  # a null LUT, kept as such
    ):
        raise _bad(source, "has a sidecar whose fields do not match its header")
    kept = {k: v for k, v in header.items() if k != "lut"}
    return {**kept, **extra, **({"lut": body} if lut else {})}


def read_bounded(path: Path, limit: int = PAYLOAD_MAX_BYTES) -> bytes | None:
    """The bytes of a local file of at most ``limit`` bytes; None when it does not exist.
    Only a regular file is opened (a FIFO or device put in a sidecar's place would block or
    never end)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise RasterReadError(f"{path} is not a regular file, so not a LUT sidecar")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if isinstance(exc, RastermatchError):
            raise
        raise RasterReadError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise RasterReadError(
            f"the LUT sidecar {path} is larger than the {limit:,} bytes its raster records; it "
            "does not belong to it (replaced or edited): write the output again"
        )
    return data


def from_header(
    raw: str | bytes | Mapping[str, Any] | None,
    source: str,
    payload: Callable[[Mapping[str, Any]], bytes | None],
) -> dict[str, Any] | None:
    """The whole record of an output from its header (text, or the parsed Zarr attribute) and
    ``payload(location)``, which fetches the sidecar or array bytes a location points to."""
    if raw is None:
        return None
    header = parse(raw, source) if isinstance(raw, str | bytes) else _plain(raw, source)
    location = location_of(header, source)
    if location is None:
        return dict(header)
    return assemble(header, location, payload(location), source)


def _plain(value: Mapping[str, Any], source: str) -> Any:
    """A Zarr attribute already parsed by zarr: checked the same way by a strict round trip."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise _bad(source, f"is not plain JSON ({exc})") from None
    return parse(text, source)


# -- read_provenance -------------------------------------------------------------------------


def read_provenance(path: Any) -> dict[str, Any] | None:
    """The whole provenance record of an output (see the module documentation), or None.

    ``path``: a local GeoTIFF or Zarr store, or (through :func:`rastermatch.io.location`) a
    URL, a GDAL ``/vsi...`` path or a zarr store object. RasterReadError when it cannot be
    read, or its record is damaged, hostile (too large, not strict JSON) or does not match
    the payload it points to.
    """
    loc = _location(path)
    if loc is None or getattr(loc, "kind", "local") == "local":
        local = Path(loc.path) if loc is not None else Path(os.fspath(path)).expanduser()
        return _read_local(local, str(local) if loc is None else loc.text)
    try:
        return _read_remote(loc)
    except RastermatchError as exc:
        url = getattr(loc, "url", None)
        if not url:
            raise
        from .io.objectstore import scrub

        # a library may quote the URL's user:password@ or query in its message, URL or not
        shown = scrub(str(exc), url)
        if shown == str(exc):
            raise
        raise type(exc)(shown) from None  # the chained exception holds them too


def _read_remote(loc: Any) -> dict[str, Any] | None:
    text = loc.text
    if loc.is_zarr():
        try:
            store = loc.zarr_store(read_only=True)
        except RastermatchError:
            raise
        except Exception as exc:
            raise RasterReadError(f"cannot open the Zarr store {text}: {exc}") from exc
        _check_remote_documents(store, text)
        return _read_zarr(store, text)
    from .io.objectstore import _forget_gdal_cache

    # as io opens a remote GeoTIFF: GDAL's remote settings (no directory listing, timeouts),
    # and none of what GDAL cached of an object since replaced
    _forget_gdal_cache(loc.gdal_path)
    with loc.gdal_env():
        return _read_geotiff(
            loc.gdal_path, text, lambda size: _read_remote_sidecar(loc, text, size)
        )


def _location(path: Any) -> Any:
    try:
        from .io.location import location
    except ImportError:  # io without remote locations
        return None
    return location(path)


def _read_local(source: Path, text: str) -> dict[str, Any] | None:
    from .io import _is_zarr_path

    if not source.exists():
        raise RasterReadError(f"{text} does not exist; check the path")
    if _is_zarr_path(source):
        for name in ("zarr.json", ".zattrs", ".zmetadata"):
            with contextlib.suppress(OSError):
                if (source / name).stat().st_size > _HEADER_READ_MAX:
                    raise _bad(text, f"document {name} is larger than {_HEADER_READ_MAX:,} bytes")
        import zarr.storage

        return _read_zarr(zarr.storage.LocalStore(source, read_only=True), text)
    return _read_geotiff(str(source), text, lambda size: read_bounded(sidecar_path(source), size))


def _read_geotiff(
    gdal_path: str, text: str, sidecar: Callable[[int], bytes | None]
) -> dict[str, Any] | None:
    import rasterio
    import rasterio.errors

    from .io._common import PROVENANCE_DOMAIN, PROVENANCE_KEY

    try:
        with rasterio.open(gdal_path) as src:
            raw = src.tags(ns=PROVENANCE_DOMAIN).get(PROVENANCE_KEY)
    except rasterio.errors.RasterioError as exc:
        raise RasterReadError(f"cannot read {text}: {exc}") from exc
    return from_header(raw, text, lambda where: sidecar(where["bytes"]))


def _check_remote_documents(store: Any, text: str) -> None:
    """Refuse a store whose metadata documents are larger than any record (zarr reads them
    whole into memory): their sizes asked first, as for a local store."""
    from zarr.core.sync import sync

    for name in ("zarr.json", ".zattrs", ".zmetadata"):
        try:
            size = sync(store.getsize(name))
        except Exception:  # missing, or a store without sizes: zarr's open reports it
            continue
        if size > _HEADER_READ_MAX:
            raise _bad(text, f"document {name} is larger than {_HEADER_READ_MAX:,} bytes")


def _read_zarr(store: Any, text: str) -> dict[str, Any] | None:
    import zarr

    from .io._common import PROVENANCE_ATTR

    try:
        group = zarr.open_group(store=store, mode="r")
        raw = group.attrs.get(PROVENANCE_ATTR)
        if raw is None:  # rastermatch 0.1 stored it on the data variable
            for _, member in group.members():
                if isinstance(member, zarr.Array) and PROVENANCE_ATTR in member.attrs:
                    raw = member.attrs[PROVENANCE_ATTR]
                    break
    except RastermatchError:
        raise
    except Exception as exc:
        raise RasterReadError(f"cannot read the Zarr store {text}: {exc}") from exc
    if raw is not None and not isinstance(raw, Mapping):
        raise _bad(text, f"is a JSON {type(raw).__name__}, not an object")
    return from_header(raw, text, lambda where: read_zarr_payload(group, text, where["bytes"]))


def _read_remote_sidecar(loc: Any, text: str, limit: int) -> bytes | None:
    """The sidecar of a remote GeoTIFF (fsspec), at most :data:`PAYLOAD_MAX_BYTES`."""
    side = loc.sibling(loc.name + SIDECAR_SUFFIX)
    if getattr(side, "kind", None) == "local":
        return read_bounded(Path(side.path), limit)
    url = getattr(side, "url", None)
    if not url:
        raise RasterReadError(
            f"the LUT sidecar of {text} cannot be read from a GDAL path; give its URL instead"
        )
    try:
        import fsspec

        with fsspec.open(url, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        return None
    except ImportError as exc:
        raise RasterReadError(
            f"reading the LUT sidecar of {text} needs fsspec: pip install 'rastermatch[remote]'"
        ) from exc
    except Exception as exc:
        raise RasterReadError(f"cannot read the LUT sidecar {side.text}: {exc}") from exc
    if len(data) > limit:
        raise RasterReadError(
            f"the LUT sidecar {side.text} is larger than the {limit:,} bytes {text} records; it "
            "was replaced or edited: write the output again"
        )
    return data
