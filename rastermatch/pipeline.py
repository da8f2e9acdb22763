"""File to file: the one place that checks, computes and writes.

Every job runs in the same order, whatever the scheduler:

0. **Checks, before any work** — every output path (raster, LUT file, report: format from the
   suffix, directory, name length, not an input, exists/``overwrite``), every option that can be
   judged from the file headers (nodata representable in each input's dtype, band numbers, mask
   grids, chunkings) — so that a bad option fails in a second, not after the statistics pass.
1. **Statistics** — the histograms of source and reference (and, for continuous data, their
   valid ranges first) are computed together: one read of each input.
2. **Application** — the LUT is applied lazily to the source and streamed to the output, block by
   block, in this process (so a progress bar sees every block written): a second read of the
   source, and memory bounded by the blocks in flight.

:func:`normalize_files` runs the same three steps for many sources and one (pooled) reference:
every output checked first, one statistics pass over every source and reference together, then
each source streamed to its own output or all of them to one ``(time, band, y, x)`` Zarr stack.

The quality metrics need no third pass: the histogram of the matched output follows exactly from
the source histogram and the LUT (:func:`rastermatch.metrics.matched_histogram`).

What a job leaves:

- on success, the outputs under their final names, nothing else;
- on any error or interrupt (``KeyboardInterrupt``; the command line turns ``SIGTERM`` into one),
  nothing under the final names and no temporaries: the raster is written under a temporary
  name by :func:`rastermatch.write_raster`, the LUT file and the report are staged under
  temporary names too, and everything is moved into place only when the raster is complete;
- the inputs (source, reference, masks, LUT files) untouched: writing over any of them is refused
  whatever ``overwrite`` says.

Inputs may be local paths or remote locations (``https://``, ``s3://``, ``gs://``, ``az://``,
``/vsi...``, ``file://``, ``memory://``; :mod:`rastermatch.io.location`): a job keeps a local
one as a :class:`~pathlib.Path` and a remote one as the text given, and names it in messages
and records without user, password or query string. A raster output may be an object-store URL
(``s3://bucket/out.zarr``, ``s3://bucket/out.tif``): there is no rename on an object store, so
it is written in place under the writer's own guarantee (:mod:`rastermatch.io.objectstore`:
nothing readable as a complete output until the write ends), after which the staged local files
are moved in. LUT files, reports, the folder of a normalize job and its patterns stay local.

Under an active ``dask.distributed`` client everything runs on the cluster; otherwise dask's
threaded scheduler runs it, with a progress bar (on stderr) when asked.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import math
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import dask
import dask.array
import numpy as np
import rasterio
import xarray as xr

from . import provenance as prov
from ._data import as_band_array
from ._detectors import Detectors
from ._rows import Rows
from .errors import (
    BandMismatchError,
    GridMismatchError,
    OptionError,
    OutputExistsError,
    RasterReadError,
    RasterWriteError,
)
from .geometry import Overlap, check_overlap, describe, job_report, same_grid, valid_area
from .io import (
    GDAL_CACHE_MB,  # the one bound on GDAL's block cache, for jobs and writers alike
    check_output_path,
    move_into_place,
    open_raster,
    remove_stale_temporaries,
    temporary_sibling,
    write_raster,
)
from .io.location import is_remote, location, redact_text
from .lut import LUT, Levels, Method, Objective
from .match import (
    MatchOptions,
    apply_arrays,
    as_reference,
    equalize,
    fit_lut,
    fit_many,
    fit_overlap,
)
from .metrics import destripe_pass, format_quality_table, matched_histogram, quality_table
from .provenance import versions  # noqa: F401 - pipeline.versions() as before

__all__ = [
    "MatchResult",
    "NormalizeResult",
    "apply_file",
    "dask_cluster",
    "destripe_file",
    "equalize_file",
    "fit_files",
    "local_cluster",
    "match_files",
    "normalize_files",
    "raster_info",
    "run_demo",
]

PathLike = str | os.PathLike[str]
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class MatchResult:
    """What a file job produced: the output, the LUT, the quality table and the extra files."""

    #: a local output's absolute path; a remote output's URL as given (or its store object)
    output: Path | str | Any | None
    lut: LUT
    quality: list[dict[str, Any]] = field(default_factory=list)
    #: a local path; a LUT file read from a URL: the URL as given
    lut_path: Path | str | None = None
    report: Path | None = None
    #: the inputs' CRS, resolution and footprint, and their overlap (:func:`geometry.job_report`)
    geometry: dict[str, Any] = field(default_factory=dict)

    def quality_text(self) -> str:
        return format_quality_table(self.quality)


# -- schedulers and progress ------------------------------------------------------------------


def active_client() -> Any:
    """The current ``dask.distributed`` client, or None."""
    try:
        from distributed import get_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return get_client()
    except ValueError:
        return None


#: The bar appears only for computations that run longer than this (seconds).
PROGRESS_AFTER_SECONDS = 1.0


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[None]:
    """dask's progress bar, on stderr, around what is computed inside, when enabled.

    The bar follows the local schedulers (threads, synchronous), which is where the statistics
    and the writes run unless a ``dask.distributed`` client is active; the caller decides
    whether to draw at all (the command line: only on a terminal, unless ``--progress``).
    Under a distributed client nothing is drawn here: the dashboard shows the tasks.
    """
    if enabled and active_client() is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=PROGRESS_AFTER_SECONDS, dt=0.5, out=sys.stderr):
            yield
    else:
        yield


@contextlib.contextmanager
def local_cluster(
    n_workers: int = 2, threads_per_worker: int | None = None, **kwargs: Any
) -> Iterator[Any]:
    """A ``distributed.LocalCluster`` of worker processes set up for raster jobs, and its client.

    Two settings differ from distributed's defaults, both measured on these jobs:

    - workers keep glibc's adaptive memory trimming: distributed sets
      ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers, which makes every decoded chunk a fresh
      ``mmap`` paid in page faults (a Zarr-to-Zarr match ran 1.6x the threaded time with it,
      1.1x without);
    - GDAL's block cache is bounded to :data:`GDAL_CACHE_MB` in every worker, as in this
      process during a job.

    Both cluster and client are closed on exit. For a cluster deployed elsewhere, set the
    same two environment variables on its workers.
    """
    from distributed import Client, LocalCluster

    saved = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    settings = {
        "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
        "distributed.nanny.environ.GDAL_CACHEMAX": str(GDAL_CACHE_MB),
    }
    kwargs.setdefault("dashboard_address", ":0")  # any free port: never collides with a job
    try:
        with (
            dask.config.set(settings),
            LocalCluster(
                n_workers=n_workers,
                threads_per_worker=threads_per_worker,
                processes=True,
                **kwargs,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
    finally:
        # the nanny writes its pre-spawn environment into this process's os.environ
        os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        if saved is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = saved


@contextlib.contextmanager
def dask_cluster(
    workers: int | None = None,
    scheduler: str | None = None,
    *,
    threads_per_worker: int | None = None,
) -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of the block, or None (dask's threads).

    ``workers``: a :func:`local_cluster` of that many processes, sharing the machine's cores
    (``threads_per_worker`` each; by default the cores divided among the workers);
    ``scheduler``: connect to a running scheduler (its workers must see the same paths). Both
    the client and a local cluster are closed on the way out, also on errors and interrupts.
    The command line's ``--workers``/``--scheduler`` and ``pipelines/cluster_job.py`` use it.

    Examples
    --------
    >>> with dask_cluster() as client:  # neither: dask's threads
    ...     print(client)
    None
    """
    if workers is not None and scheduler is not None:
        raise OptionError(
            "give workers (a local cluster) or scheduler (a running one), not both "
            "(--workers or --scheduler on the command line)"
        )
    if workers is None and scheduler is None:
        yield None
        return
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise OptionError(f"workers must be a positive number of processes, not {workers!r}")
    from dask.system import CPU_COUNT
    from distributed import Client

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise OptionError(
                f"cannot reach the dask scheduler at {scheduler}: {exc}; check the address "
                "(tcp://host:8786) and that the scheduler is running"
            ) from None
        with client:
            yield client
        return
    assert workers is not None
    threads = threads_per_worker or max(1, CPU_COUNT // workers)
    with local_cluster(workers, threads_per_worker=threads) as client:
        yield client


# -- where inputs and outputs are -------------------------------------------------------------


def _where(value: Any) -> Any:
    """An input or output as a job keeps it: a local path as a :class:`~pathlib.Path`, as given
    (a ``file://`` URL as its path); a URL or GDAL ``/vsi`` path as the text given (``Path``
    would turn ``http://host/a.tif`` into ``http:/host/a.tif``); a zarr store object as it is.
    """
    if isinstance(value, Path):
        return value
    loc = location(value)
    if loc.kind == "local":
        return loc.path if isinstance(value, str) and "://" in value else Path(value)
    return loc.store if loc.kind == "store" else loc.url


def _text(value: Any) -> str:
    """How messages name an input or output: as given, a URL without its user, password and
    query string (where credentials and signatures travel)."""
    return str(value) if isinstance(value, Path) else location(value).text


def _name(value: Any) -> str:
    """The last component of an input's path or URL (``a.tif``)."""
    return value.name if isinstance(value, Path) else location(value).name


def _identity(value: Any) -> Any:
    """What two outputs are compared by: the resolved path, the URL without a trailing slash,
    the store object."""
    loc = location(value)
    if loc.kind == "local":
        assert loc.path is not None
        return loc.path.resolve()
    return id(loc.store) if loc.kind == "store" else str(loc.url).rstrip("/")


def _local_files(**paths: Any) -> None:
    """LUT files and reports are written to local paths: refused elsewhere before any work."""
    for what, path in paths.items():
        if path is not None and is_remote(path):
            raise OptionError(
                f"the {what} {_text(path)} is not a local path; {what}s are written to local "
                "files only (rasters can go to object storage): give a local path and copy it "
                "there afterwards"
            )


def _result(final: Any) -> Any:
    """What a job returns for a written raster: a local output's absolute path, a remote
    output's URL as given (or the store object given)."""
    if isinstance(final, Path):
        return final
    return final.store if final.kind == "store" else final.url


# -- checks before any work -------------------------------------------------------------------


def _sidecar_of(output: Any) -> str | None:
    """The LUT sidecar a GeoTIFF output may get (:mod:`rastermatch.provenance`), as text."""
    if not isinstance(output, str | os.PathLike):
        return None
    text = os.fspath(output)
    return text + prov.SIDECAR_SUFFIX if text.lower().endswith((".tif", ".tiff")) else None


def _check_distinct(**paths: PathLike | None) -> None:
    """Two outputs of one job must not share a path (the second would replace the first)."""
    paths = {**paths, "output's LUT sidecar": _sidecar_of(paths.get("output"))}
    seen: dict[Any, str] = {}
    for what, path in paths.items():
        if path is None:
            continue
        key = _identity(path)
        if key in seen:
            raise OptionError(
                f"the {what} and the {seen[key]} would both be written to {_text(path)}; give "
                "them different paths"
            )
        seen[key] = what


def _check_report_path(report: PathLike) -> None:
    from .plot import require_matplotlib

    require_matplotlib()
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    suffix = Path(report).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise OptionError(
            f"cannot tell the format of the report {_text(report)} from its suffix "
            f"{'.' + suffix if suffix else '(none)'}; use .png, .pdf or .svg"
        )


def _check_nodata(value: float | None, data: xr.DataArray, what: str, option: str) -> None:
    """Refuse a nodata value the input's dtype cannot hold (it would match no pixel)."""
    if value is None:
        return
    problem = _unrepresentable(value, np.dtype(data.dtype))
    if problem:
        raise OptionError(
            f"the nodata value {_show(value)} cannot occur in the {data.dtype} {what} "
            f"({problem}); give {option}= a value the data can hold, or leave it unset to use "
            "the file's own"
        )


def _unrepresentable(value: float, dtype: np.dtype) -> str | None:
    value = float(value)
    if dtype.kind == "f":
        return None
    if math.isnan(value):
        return "integers have no NaN"
    if not value.is_integer():
        return "it is not an integer"
    info = np.iinfo(dtype)
    if not info.min <= value <= info.max:
        return f"{dtype} holds {info.min}..{info.max}"
    return None


def _show(value: float) -> str:
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def _reference_nodata(
    nodata: float | None, reference_nodata: float | None, ref: xr.DataArray
) -> float | None:
    """The nodata rule for the reference: its own option, else the file's tag, else ``nodata``.

    ``nodata`` given and ``reference_nodata`` not: a reference without a nodata value of its own
    uses ``nodata`` too (a user who says "0 is nodata" means it for both scenes). A value the
    reference's dtype cannot hold cannot occur in it, so it is not applied (nothing to leave out).
    """
    if reference_nodata is not None:
        return reference_nodata
    if ref.rio.nodata is not None or nodata is None:
        return None
    if _unrepresentable(nodata, np.dtype(ref.dtype)):
        return None
    return nodata


def select_bands(data: xr.DataArray, bands: Sequence[int] | None, path: PathLike) -> xr.DataArray:
    """The bands numbered ``bands`` (1-based, in the given order), or all of them."""
    if bands is None:
        return data
    n = data.sizes["band"]
    if len(bands) == 0:
        raise OptionError(f"no bands selected from {_text(path)}; give band numbers 1..{n}")
    bad = [b for b in bands if isinstance(b, bool) or not isinstance(b, int | np.integer)]
    if bad:
        raise OptionError(f"band numbers must be integers (1..{n} for {_text(path)}), not {bad}")
    bad = [b for b in bands if not 1 <= b <= n]
    if bad:
        raise BandMismatchError(
            f"{_text(path)} has {n} bands; band number(s) {bad} do not exist (bands count from 1)"
        )
    return data.isel(band=[b - 1 for b in bands])


def open_input(
    path: PathLike, *, bands: Sequence[int] | None = None, chunks: Any = "auto"
) -> xr.DataArray:
    """Open ``path`` lazily and keep the requested bands."""
    return select_bands(open_raster(path, chunks=chunks), bands, path)


def open_mask(path: PathLike | None, like: xr.DataArray) -> xr.DataArray | None:
    """A mask file as booleans on ``like``'s grid: nonzero (and valid) pixels are left out.

    The mask must be on the image's grid: same size, and, when both are georeferenced, the
    same CRS and transform (a mask of the same size on another grid would leave out the wrong
    pixels), else :class:`~rastermatch.GridMismatchError`.
    """
    if path is None:
        return None
    chunks = like.chunks if like.chunks is not None else ((1,), (like.shape[1],), (like.shape[2],))
    m = open_raster(path, chunks={"y": chunks[1][0], "x": chunks[2][0]})
    image = like.encoding.get("source", "the image")
    if m.shape[1:] != like.shape[1:]:
        raise GridMismatchError(
            f"mask {_text(path)} is {m.shape[1]} x {m.shape[2]} pixels but the image it masks "
            f"({image}) is {like.shape[1]} x {like.shape[2]}; the mask must be on the same grid"
        )
    m_crs, crs = m.rio.crs, like.rio.crs
    if m_crs is not None and crs is not None and m_crs != crs:
        raise GridMismatchError(
            f"mask {_text(path)} is in {m_crs.to_string()} but the image it masks ({image}) is in "
            f"{crs.to_string()}; reproject the mask onto the image's grid"
        )
    if (m_crs is not None or crs is None) and not m.rio.transform().almost_equals(
        like.rio.transform()
    ):
        raise GridMismatchError(
            f"mask {_text(path)} has the transform {tuple(m.rio.transform())[:6]} but the image it "
            f"masks ({image}) has {tuple(like.rio.transform())[:6]}; the mask must be on the "
            "same grid (resample it onto the image)"
        )
    if m.sizes["band"] not in (1, like.sizes["band"]):
        raise BandMismatchError(
            f"mask {_text(path)} has {m.sizes['band']} bands; give one band or one per image band"
        )
    out = m != 0
    if m.dtype.kind == "f":  # NaN marks no decision in a float mask: the pixel is kept
        out = out & ~np.isnan(m)
    if m.rio.nodata is not None:
        out = out & (m != m.rio.nodata)
    out = out.data
    return out[0] if m.sizes["band"] == 1 else out


# -- provenance: the records are built by rastermatch.provenance (one versioned schema) ----


def bounded_gdal_cache(job: Callable[P, R]) -> Callable[P, R]:
    """Run ``job`` with GDAL's block cache bounded to :data:`GDAL_CACHE_MB` (process-wide)."""

    @functools.wraps(job)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            return job(*args, **kwargs)

    return run


# -- small outputs staged next to their final names -------------------------------------------


class _Staged:
    """Outputs written under temporary names next to their final ones, moved in at the end.

    Every output of a job (rasters, LUT files, report) is written to its temporary first;
    :meth:`commit` moves them all into place once everything succeeded. A job that fails or is
    interrupted before that removes the temporaries (``discard``), so a failed job leaves
    neither new final names nor temporaries, and the outputs of a previous run that
    ``overwrite`` would replace are left as they were. A temporary's name records the host and
    process that wrote it; one left by a killed run on this host (its process is gone) is
    removed by the next job writing the same output.
    """

    def __init__(self) -> None:
        self._files: list[tuple[Path, Path, bool]] = []
        # a GeoTIFF's LUT sidecar (rastermatch.provenance), written by write_raster next to
        # the raster's temporary when its record is too large for the header: moved in first
        self._sidecars: list[tuple[Path, Path, bool]] = []

    def raster_for(self, final: Any, *, overwrite: bool) -> tuple[Any, bool]:
        """Where a raster of the job is written, and the ``overwrite`` to write it with: a
        local output under a temporary name that :meth:`commit` moves in; a remote one (an
        object store cannot rename) straight to its location, under the writer's guarantee
        that nothing there reads as a complete output before the write ends
        (:mod:`rastermatch.io.objectstore`)."""
        if isinstance(final, Path):
            return self.path_for(final, overwrite=overwrite), False
        return final, overwrite

    def path_for(self, final: Path, *, overwrite: bool) -> Path:
        final = Path(final).expanduser().absolute()
        remove_stale_temporaries(final)
        # the suffix last: matplotlib and write_raster pick the format by it
        tmp = temporary_sibling(final, keep_suffix=True)
        self._files.append((tmp, final, overwrite))
        if final.suffix.lower() in (".tif", ".tiff"):
            prov.remove_stale_sidecars(final)
            self._sidecars.append((prov.sidecar_path(tmp), prov.sidecar_path(final), overwrite))
        return tmp

    def commit(self) -> None:
        sidecars = [entry for entry in self._sidecars if entry[0].exists()]
        for _, final, overwrite in [*sidecars, *self._files]:
            if not overwrite and (final.exists() or final.is_symlink()):
                raise OutputExistsError(
                    f"{final} appeared while the job was running; nothing was written, pass "
                    "overwrite=True (--overwrite) to replace it"
                )
        # the own sidecars of outputs replaced by rasters without one: they go once moved in
        replaced = [
            prov.owned_sidecar(final.with_name(final.name[: -len(prov.SIDECAR_SUFFIX)]))
            for entry in self._sidecars
            if entry not in sidecars and entry[2]
            for final in [entry[1]]
        ]
        moved = []
        try:
            for tmp, final, overwrite in sidecars:
                prov.place_sidecar(tmp, final, overwrite=overwrite)
                moved.append(final)
            for tmp, final, overwrite in self._files:
                move_into_place(tmp, final, overwrite=overwrite)
        except BaseException:
            for final in moved:  # rasters that did not move in: their previous sidecars back
                prov.undo_sidecar(final)
            raise
        for final in moved:
            prov.keep_sidecar(final)
        for side in replaced:
            prov.remove_replaced_sidecar(side)
        self._files.clear()
        self._sidecars.clear()

    def discard(self) -> None:
        for tmp, _, _ in [*self._sidecars, *self._files]:
            _remove_output(tmp)
        self._files.clear()
        self._sidecars.clear()


@contextlib.contextmanager
def _staging() -> Iterator[_Staged]:
    staged = _Staged()
    try:
        yield staged
    except BaseException:
        staged.discard()
        raise
    staged.discard()  # nothing left after a commit; anything not committed goes


def _save_lut(lut: LUT, tmp: Path, final: PathLike) -> None:
    try:
        lut.save(tmp)
    except OSError as exc:  # RasterWriteError included; name the file, not its temporary
        cause = exc.strerror if type(exc) is not RasterWriteError and exc.strerror else exc
        raise RasterWriteError(f"writing the LUT file {final} failed: {cause}") from exc


def _remove_output(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# -- jobs -------------------------------------------------------------------------------------


@dataclass
class _Fitted:
    lut: LUT
    quality: list[dict[str, Any]]
    src: xr.DataArray
    ref: xr.DataArray
    geometry: dict[str, Any] = field(default_factory=dict)


def _open_pair(
    source: PathLike,
    reference: PathLike,
    *,
    nodata: float | None,
    reference_nodata: float | None,
    bands: Sequence[int] | None,
    reference_bands: Sequence[int] | None,
    chunks: Any,
) -> tuple[xr.DataArray, xr.DataArray, float | None]:
    """Open both inputs and check the options that only need their headers."""
    src = open_input(source, bands=bands, chunks=chunks)
    ref = open_input(reference, bands=reference_bands or bands, chunks=chunks)
    _check_nodata(nodata, src, f"source {_text(source)}", "nodata")
    _check_nodata(reference_nodata, ref, f"reference {_text(reference)}", "reference_nodata")
    if src.sizes["band"] != ref.sizes["band"]:
        raise BandMismatchError(
            f"the source {_text(source)} has {src.sizes['band']} bands and the reference "
            f"{_text(reference)} "
            f"has {ref.sizes['band']}; select the same number of bands from each (bands= and "
            "reference_bands=, --bands and --reference-bands on the command line)"
        )
    return src, ref, _reference_nodata(nodata, reference_nodata, ref)


def _fit(
    source: PathLike,
    reference: PathLike,
    *,
    method: Method,
    levels: Levels,
    nodata: float | None,
    reference_nodata: float | None,
    mask: PathLike | None,
    reference_mask: PathLike | None,
    bands: Sequence[int] | None,
    reference_bands: Sequence[int] | None,
    bins: int | None,
    dtype: Any,
    chunks: Any,
    show_progress: bool,
    objective: Objective | None = None,
    proportion: float = 1.0,
    overlap: Overlap = False,
) -> _Fitted:
    check_overlap(overlap)
    src, ref, ref_nodata = _open_pair(
        source, reference, nodata=nodata, reference_nodata=reference_nodata, bands=bands,
        reference_bands=reference_bands, chunks=chunks,
    )  # fmt: skip
    src_mask, ref_mask = open_mask(mask, src), open_mask(reference_mask, ref)
    geometry = job_report([(_text(source), src)], [(_text(reference), ref)])
    with progress(show_progress):
        lut = fit_lut(
            src, ref, method=method, levels=levels, nodata=nodata, reference_nodata=ref_nodata,
            mask=src_mask, reference_mask=ref_mask, bins=bins, dtype=dtype, objective=objective,
            proportion=proportion, overlap=overlap,
        )  # fmt: skip
    quality = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
    return _Fitted(lut, quality, src, ref, geometry)


@bounded_gdal_cache
def fit_files(
    source: PathLike,
    reference: PathLike,
    *,
    method: Method = "nearest",
    levels: Levels = "present",
    objective: Objective | None = None,
    proportion: float = 1.0,
    nodata: float | None = None,
    reference_nodata: float | None = None,
    mask: PathLike | None = None,
    reference_mask: PathLike | None = None,
    bands: Sequence[int] | None = None,
    reference_bands: Sequence[int] | None = None,
    bins: int | None = None,
    dtype: Any = None,
    chunks: Any = "auto",
    lut_path: PathLike | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
    overlap: Overlap = False,
) -> MatchResult:
    """Fit the LUT that matches ``source`` to ``reference`` (one read of each); save it if asked.

    ``nodata`` applies to the reference too when the reference has no nodata value of its own
    and ``reference_nodata`` is not given. ``lut_path`` is checked before any work: an existing
    file is refused unless ``overwrite``, and the inputs (source, reference, masks) are never
    replaced, ``overwrite`` or not. ``overlap``: statistics only where both are valid, as
    :func:`rastermatch.match_histograms` takes it; ``result.geometry`` describes the inputs.
    """
    inputs = [source, reference, mask, reference_mask]
    _local_files(**{"LUT file": lut_path})
    if lut_path is not None:
        check_output_path(lut_path, inputs=inputs, overwrite=overwrite, kind="file")
    fitted = _fit(
        source, reference, method=method, levels=levels, nodata=nodata,
        reference_nodata=reference_nodata, mask=mask, reference_mask=reference_mask,
        bands=bands, reference_bands=reference_bands, bins=bins, dtype=dtype, chunks=chunks,
        show_progress=show_progress, objective=objective, proportion=proportion,
        overlap=overlap,
    )  # fmt: skip
    saved = None
    if lut_path is not None:
        with _staging() as staged:
            _save_lut(fitted.lut, staged.path_for(Path(lut_path), overwrite=overwrite), lut_path)
            # checked again: another process may have created it meanwhile
            check_output_path(lut_path, inputs=inputs, overwrite=overwrite, kind="file")
            staged.commit()
        saved = Path(lut_path)
    return MatchResult(None, fitted.lut, fitted.quality, saved, geometry=fitted.geometry)


@bounded_gdal_cache
def match_files(
    source: PathLike,
    reference: PathLike,
    output: PathLike,
    *,
    method: Method = "nearest",
    levels: Levels = "present",
    objective: Objective | None = None,
    proportion: float = 1.0,
    nodata: float | None = None,
    reference_nodata: float | None = None,
    mask: PathLike | None = None,
    reference_mask: PathLike | None = None,
    bands: Sequence[int] | None = None,
    reference_bands: Sequence[int] | None = None,
    bins: int | None = None,
    dtype: Any = None,
    chunks: Any = "auto",
    overwrite: bool = False,
    lut_path: PathLike | None = None,
    report: PathLike | None = None,
    cog: bool = False,
    compress: Any = None,
    show_progress: bool = False,
    overlap: Overlap = False,
) -> MatchResult:
    """Match ``source`` to ``reference`` and write the result to ``output`` (GeoTIFF or Zarr).

    Every output path (``output``, ``lut_path``, ``report``) and every option is checked before
    any work. Then two passes: the statistics (one read of each input), then the lazily mapped
    source streamed to ``output``. The output carries the provenance (inputs, options, quality,
    versions, the LUT with both histograms; no clock time); ``lut_path`` also saves the LUT as
    JSON and ``report`` draws the report (PNG, PDF or SVG by the suffix).

    ``nodata`` applies to the reference too when the reference has no nodata value of its own
    and ``reference_nodata`` is not given. A failed or interrupted job leaves nothing under the
    output names and no temporaries; the inputs are never written over, ``overwrite`` or not.
    ``overlap``: statistics only where both are valid, a reference on another grid laid onto
    the source's for them (:func:`rastermatch.match_histograms`); the output stays on the
    source grid. ``result.geometry`` describes the inputs (:func:`geometry.job_report`).

    Examples
    --------
    >>> import tempfile
    >>> from rastermatch.pipeline import match_files
    >>> out = tempfile.mkdtemp() + "/matched.tif"
    >>> result = match_files("data/arrnorm_target.tif", "data/arrnorm_ref_adjusted2target.tif",
    ...                      out, nodata=0)
    >>> result.output.name, all(r["ks_after"] < 0.01 < r["ks_before"] for r in result.quality)
    ('matched.tif', True)
    """
    inputs = [source, reference, mask, reference_mask]
    _local_files(**{"LUT file": lut_path, "report": report})
    _check_distinct(output=output, **{"LUT file": lut_path, "report": report})
    final = check_output_path(output, inputs=inputs, overwrite=overwrite, kind="raster", cog=cog)
    for path in (lut_path, report):
        if path is not None:
            check_output_path(path, inputs=inputs, overwrite=overwrite, kind="file")
    if report is not None:
        _check_report_path(report)
    fitted = _fit(
        source, reference, method=method, levels=levels, nodata=nodata,
        reference_nodata=reference_nodata, mask=mask, reference_mask=reference_mask,
        bands=bands, reference_bands=reference_bands, bins=bins, dtype=dtype, chunks=chunks,
        show_progress=show_progress, objective=objective, proportion=proportion,
        overlap=overlap,
    )  # fmt: skip
    lut = fitted.lut
    matched = lut.apply(fitted.src, nodata=nodata)  # an explicit nodata wins, as in the fit
    record = prov.match_record(lut, fitted.quality, source=source, reference=reference,
                               mask=mask, reference_mask=reference_mask)  # fmt: skip
    with _staging() as staged:
        if lut_path is not None:
            _save_lut(lut, staged.path_for(Path(lut_path), overwrite=overwrite), lut_path)
        if report is not None:
            from .plot import save_report

            try:
                tmp_report = staged.path_for(Path(report), overwrite=overwrite)
                save_report(tmp_report, fitted.src, fitted.ref, matched, lut,
                            metrics=fitted.quality)  # fmt: skip
            except OSError as exc:  # a full disk, say: name the report, not its temporary
                raise RasterWriteError(
                    f"writing the report {_text(report)} failed: {exc.strerror or exc}"
                ) from exc
        # the raster too under its temporary name: a failure before the commit leaves the
        # previous output (overwrite) untouched
        tmp, replace = staged.raster_for(final, overwrite=overwrite)
        _write(matched, tmp, record, inputs, replace, cog, compress, show_progress)
        staged.commit()
        written = _result(final)
    return MatchResult(
        written, lut, fitted.quality, Path(lut_path) if lut_path is not None else None,
        Path(report) if report is not None else None, geometry=fitted.geometry,
    )  # fmt: skip


@bounded_gdal_cache
def apply_file(
    source: PathLike,
    lut: LUT | PathLike,
    output: PathLike,
    *,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    chunks: Any = "auto",
    overwrite: bool = False,
    cog: bool = False,
    compress: Any = None,
    show_progress: bool = False,
) -> MatchResult:
    """Map ``source`` through a saved LUT (say, another scene of the same sensor) to ``output``.

    The LUT file is untrusted input: :meth:`rastermatch.LUT.load` validates every field and
    rebuilds the table from the histograms it records. Neither the source nor the LUT file is
    ever written over. A LUT file at a URL (``https://``, ``s3://``, ...) is read through fsspec
    (``rastermatch[remote]``) and checked the same way.
    """
    lut_file = None if isinstance(lut, LUT) else _where(lut)  # a Path, or a URL as given
    inputs = [source, lut_file]
    final = check_output_path(output, inputs=inputs, overwrite=overwrite, kind="raster", cog=cog)
    if lut_file is not None:
        lut = LUT.load(lut_file) if isinstance(lut_file, Path) else _load_remote_lut(lut_file)
    assert isinstance(lut, LUT)
    src = open_input(source, bands=bands, chunks=chunks)
    _check_nodata(nodata, src, f"source {_text(source)}", "nodata")
    _check_lut_rows(lut, src, lut_file, source)
    matched = lut.apply(src, nodata=nodata)
    record = prov.match_record(lut, [], operation="apply", source=source, lut=lut_file)
    written = _write(matched, final, record, inputs, overwrite, cog, compress, show_progress)
    return MatchResult(written, lut, [], lut_file)


def _load_remote_lut(url: str) -> LUT:
    """A LUT file at a URL: read whole through fsspec (at most the size a LUT file may have),
    then checked as :meth:`LUT.load` checks a local one; every problem is a LUTFileError
    naming the URL without credentials."""
    import tempfile

    from .errors import LUTFileError
    from .schema import MAX_DOCUMENT_BYTES

    loc = location(url)
    name = f"the LUT file {loc.text}"
    if loc.kind != "url":
        raise OptionError(f"{name} is a GDAL path; give a LUT file as a local path or a URL")
    try:
        from fsspec.core import url_to_fs

        fs, key = url_to_fs(str(loc.url))
        with fs.open(key, "rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
    except ImportError as exc:
        raise LUTFileError(
            f"cannot read {name}: {exc}; install rastermatch[remote] to read LUT files from URLs"
        ) from None
    except FileNotFoundError:
        raise LUTFileError(f"{name} does not exist; check the URL") from None
    except Exception as exc:  # network, credentials, protocol: fsspec's file systems vary
        cause = redact_text(" ".join(str(exc).split()) or type(exc).__name__)
        raise LUTFileError(
            f"cannot read {name}: {cause}; check the URL, the network and the credentials"
        ) from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise LUTFileError(
            f"{name} is more than the {MAX_DOCUMENT_BYTES:,} bytes a LUT file can be; check the URL"
        )
    with tempfile.TemporaryDirectory(prefix="rastermatch-lut-") as folder:
        local = Path(folder) / "lut.json"
        local.write_bytes(data)
        try:
            return LUT.load(local)
        except LUTFileError as error:  # name the URL, not the temporary copy
            error.args = tuple(
                a.replace(f"LUT file {local}", name).replace(str(local), loc.text)
                if isinstance(a, str)
                else a
                for a in error.args
            )
            raise


def _sizes(rows: Rows) -> str:
    return ", ".join(f"{d}: {n}" for d, n in zip(rows.dims, rows.shape, strict=True))


def _check_lut_rows(lut: LUT, src: xr.DataArray, lut_file: Any, source: PathLike) -> None:
    """The LUT's rows meet the data's by label, as :meth:`LUT.apply` does (a (time, band) LUT
    maps the stack it came from, a band LUT every date); a mismatch is refused before any
    work, naming both."""
    from .apply import lut_rows, row_index

    have, rows = lut_rows(lut), as_band_array(src, name=_text(source)).rows
    what = f"the LUT {_text(lut_file)}" if lut_file is not None else "the LUT"
    if getattr(lut, "detectors", None) is not None:
        # a detector LUT: its last row dim is the detector, found on the data by line or
        # column (LUT.apply names a line or column whose detector the LUT lacks); the bands
        # meet as for any LUT
        _, have = have.isel(detector=0)
        if "band" in have.dims and "band" in rows.dims:
            n, m = len(rows.coord("band")), len(have.coord("band"))
            if n != m:
                raise BandMismatchError(
                    f"{what} has {m} bands of {lut.detectors.describe()} but {_text(source)} has "
                    f"{n} "
                    "after band selection; select as many bands as the LUT has (bands=, "
                    "--bands on the command line)"
                )
        return
    for d, c in zip(have.dims, have.coords, strict=True):
        if d not in rows.dims and len(c) > 1:
            raise BandMismatchError(
                f"{what} has rows ({_sizes(have)}); {_text(source)} has ({_sizes(rows)}) and no "
                f"{d}: "
                f"apply it to a stack with those {d} labels, or use a LUT fitted on one {d}"
            )
    if "band" in have.dims and "band" in rows.dims:
        n, m = len(rows.coord("band")), len(have.coord("band"))
        if n != m:
            raise BandMismatchError(
                f"{what} has rows ({_sizes(have)}) but {_text(source)} has ({_sizes(rows)}) after "
                "band "
                "selection; select as many bands as the LUT has (bands=, --bands on the "
                "command line)"
            )
    row_index(lut, rows, _text(source))


@bounded_gdal_cache
def equalize_file(
    source: PathLike,
    output: PathLike,
    *,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
    mask: PathLike | None = None,
    range: Any = None,
    bins: int | None = None,
    chunks: Any = "auto",
    overwrite: bool = False,
    cog: bool = False,
    compress: Any = None,
    show_progress: bool = False,
) -> Path:
    """Histogram-equalize ``source`` into ``output``."""
    inputs = [source, mask]
    final = check_output_path(output, inputs=inputs, overwrite=overwrite, kind="raster", cog=cog)
    src = open_input(source, bands=bands, chunks=chunks)
    _check_nodata(nodata, src, f"source {_text(source)}", "nodata")
    src_mask = open_mask(mask, src)
    with progress(show_progress):
        out = equalize(src, nodata=nodata, mask=src_mask, range=range, bins=bins)
    record = prov.equalize_record(range=range, source=source, mask=mask)
    return _write(out, final, record, inputs, overwrite, cog, compress, show_progress)


def _write(
    data: xr.DataArray,
    output: PathLike,
    record: dict[str, Any] | Callable[[Sequence[Any]], dict[str, Any]],
    inputs: Sequence[PathLike | None],
    overwrite: bool,
    cog: bool,
    compress: Any,
    show_progress: bool,
    compute_with: Sequence[Any] = (),
) -> Any:
    """Write in this process, inside the progress context: the bar follows every block stored.
    ``compute_with`` and a callable ``record`` as :func:`~rastermatch.io.write_raster` takes
    them (collections computed with the blocks; the record made from their values). Returns
    the local output's path, or a remote output's URL (or store object)."""
    with progress(show_progress):
        path = write_raster(
            data, output, overwrite=overwrite, compute=True, provenance=record,
            inputs=[p for p in inputs if p is not None], cog=cog, compress=compress,
            compute_with=compute_with,
        )  # fmt: skip
    return path


@bounded_gdal_cache
def raster_info(path: PathLike, *, statistics: bool = True) -> dict[str, Any]:
    """What ``rastermatch info`` prints: dims, bands, dtype, nodata, CRS, grid, chunks, statistics.

    The statistics (valid pixel count, min, max, mean) are per band, or per (date, band) of a
    stack, and take one read of the file.
    """
    data = open_raster(path)
    src = as_band_array(data, name=_text(path))
    info: dict[str, Any] = {
        "path": _text(path),
        "dims": list(data.dims),
        "bands": list(data["band"].values) if "band" in data.coords else list(src.bands),
        "dtype": str(data.dtype),
        "shape": list(data.shape),
        "nodata": data.rio.nodata,
        "crs": data.rio.crs.to_string() if data.rio.crs else None,
        "transform": list(data.rio.transform())[:6],
        "chunks": [list(c) for c in data.chunks] if data.chunks else None,
        "geometry": describe(data),
    }
    for dim in data.dims[:-3]:  # the labels of a stack's other row dims (dates, ...)
        if dim in data.coords:
            info[dim] = [_label_text(v) for v in data[dim].values]
    if statistics:
        arr = src.array
        if not isinstance(arr, dask.array.Array):
            arr = dask.array.from_array(arr, chunks=(1, -1, -1))
        values = arr.astype(np.float64)
        valid = np.isfinite(values)
        if src.nodata is not None:
            valid = valid & (arr != src.nodata)
        masked = dask_where(valid, values)
        count, lo, hi, total = dask.compute(
            valid.sum(axis=(1, 2)), masked[0].min(axis=(1, 2)), masked[1].max(axis=(1, 2)),
            masked[2].sum(axis=(1, 2)),
        )  # fmt: skip
        rows = getattr(src, "rows", None) or Rows.bands(src.bands)
        band_at = rows.dims.index("band") if "band" in rows.dims else None
        info["statistics"] = [  # min, max and mean are None for a band without valid pixels
            {"band": rows.label(i)[band_at] if band_at is not None else None,
             "row": rows.describe(i), "valid": int(c), "min": float(a) if c else None,
             "max": float(z) if c else None, "mean": float(s / c) if c else None}
            for i, (c, a, z, s) in enumerate(zip(count, lo, hi, total, strict=True))
        ]  # fmt: skip
    return info


def dask_where(valid: Any, arr: Any) -> tuple[Any, Any, Any]:
    """``arr`` with invalid pixels replaced by +inf, -inf and 0 (for min, max and sum)."""
    import dask.array as da

    return (
        da.where(valid, arr, np.inf),
        da.where(valid, arr, -np.inf),
        da.where(valid, arr, 0.0),
    )


# -- many sources to one reference ------------------------------------------------------------

#: What a folder given as a source holds that is read: rasters directly inside it.
RASTER_SUFFIXES = (".tif", ".tiff", ".zarr")

#: A date in a file name: 20200131, 2020-01-31 or 2020_01_31 (one separator throughout), not
#: part of a longer run of digits. The first one found counts (Landsat names hold two).
_DATE = re.compile(r"(?<!\d)((?:19|20)\d{2})([-_]?)(0[1-9]|1[0-2])\2(0[1-9]|[12]\d|3[01])(?!\d)")


def expand_sources(
    items: PathLike | Sequence[PathLike],
    *,
    leave_out: Sequence[PathLike] = (),
    what: str = "source",
) -> list[Any]:
    """The raster files that ``items`` name: files as given, folders and glob patterns expanded.

    A folder stands for the GeoTIFFs and Zarr stores directly inside it (hidden names skipped);
    a pattern (``*``, ``?``, ``[``) for the paths it matches, sorted. Paths in ``leave_out``
    (the references) are left out of what a folder or a pattern finds, never out of a file
    named on purpose. A path found twice counts once.

    Local paths come back as :class:`~pathlib.Path`; a URL or ``/vsi`` path names one raster
    and comes back as the text given (whether it exists is found out when it is opened):
    patterns and folders are expanded on local paths only.

    Examples
    --------
    >>> [p.name for p in expand_sources("data/riohist_*.tif")]
    ['riohist_reference1_landsat.tif', 'riohist_source1_naip.tif']
    >>> len(expand_sources("data", leave_out=["data/arrnorm_target.tif"]))
    6
    """
    if isinstance(items, str | os.PathLike):
        items = [items]
    skip = {_identity(p) for p in leave_out}
    found: list[Any] = []
    for item in items:
        where = _where(item)
        if not isinstance(where, Path):
            text = _text(item)
            key = text.partition("://")[2].partition("/")[2] if "://" in text else text
            if _is_pattern(key) or (text.endswith("/") and location(item).suffix != ".zarr"):
                raise OptionError(
                    f"the {what} {text} is a pattern or a folder at a remote location; patterns "
                    "and folders are expanded on local paths only: name every remote raster "
                    "(one URL each)"
                )
            found.append(where)
            continue
        path = where.expanduser()
        if _is_pattern(str(item)) and not path.exists():
            matches = [Path(p) for p in sorted(glob.glob(str(path)))]
            matches = [p for p in matches if p.is_file() or p.suffix.lower() == ".zarr"]
            if not matches:
                raise RasterReadError(
                    f"the {what} pattern {item} matches no file; check the pattern (quote it "
                    "so the shell leaves it to rastermatch, or let the shell expand it)"
                )
            found += [p for p in matches if _identity(p) not in skip]
        elif path.is_dir() and path.suffix.lower() != ".zarr":
            inside = [
                p
                for p in sorted(path.iterdir())
                if p.suffix.lower() in RASTER_SUFFIXES and not p.name.startswith(".")
            ]
            inside = [p for p in inside if _identity(p) not in skip]
            if not inside:
                raise RasterReadError(
                    f"the {what} folder {item} holds no .tif, .tiff or .zarr raster; name the "
                    "files, or a pattern such as folder/*.TIF"
                )
            found += inside
        elif path.exists():
            found.append(path)
        else:
            raise RasterReadError(f"the {what} {item} does not exist; check the path")
    unique: dict[Any, Any] = {}
    for p in found:
        unique.setdefault(_identity(p), p)
    return list(unique.values())


def _is_pattern(text: str) -> bool:
    return any(c in text for c in "*?[")


def _stem(path: Any) -> str:
    """The name without its suffix, of a local path or a URL."""
    name = _name(path)
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix else name


def time_labels(paths: Sequence[PathLike]) -> np.ndarray:
    """One time label per source: the date in its file name, else its name without suffix.

    Dates are read when every name holds one (``20200131``, ``2020-01-31``, ``2020_01_31``;
    the first date of a name counts) and no two names give the same date; the labels are then
    ``datetime64[ns]``. Otherwise the labels are the file stems, which must differ.

    Examples
    --------
    >>> labels = time_labels(["LC08_044034_20200131_T1.tif", "s2_2020-03-01.tif"])
    >>> labels.dtype, np.datetime_as_string(labels, unit="D").tolist()
    (dtype('<M8[ns]'), ['2020-01-31', '2020-03-01'])
    >>> time_labels(["north.tif", "south.zarr"]).tolist()
    ['north', 'south']
    """
    paths = [_where(p) for p in paths]
    dates = []
    for p in paths:
        match = _DATE.search(_stem(p))
        if match is None:
            break
        year, _, month, day = match.groups()
        try:
            dates.append(np.datetime64(f"{year}-{month}-{day}", "ns"))
        except ValueError:  # 2020-02-31
            break
    if len(dates) == len(paths) and len(set(dates)) == len(dates):
        return np.array(dates, dtype="datetime64[ns]")
    stems = [_stem(p) for p in paths]
    seen: dict[str, Any] = {}
    for stem, p in zip(stems, paths, strict=True):
        if stem in seen:
            raise OptionError(
                f"the sources {_text(seen[stem])} and {_text(p)} would both be labelled {stem!r} "
                "in the "
                "stack (their names hold no distinct dates); rename one, or write one output "
                "per source into a folder"
            )
        seen[stem] = p
    return np.array(stems, dtype=object)


def check_same_grid(arrays: Sequence[xr.DataArray], paths: Sequence[PathLike]) -> None:
    """Refuse sources that cannot be stacked: another size, band count, CRS or transform.

    The first source sets the grid; the error names the first one that differs and how.
    """
    first, where = arrays[0], _text(paths[0])
    crs, transform = first.rio.crs, first.rio.transform()
    for data, path in zip(arrays[1:], paths[1:], strict=True):
        problem = None
        if data.shape[1:] != first.shape[1:]:
            problem = (
                f"is {data.shape[2]} x {data.shape[1]} pixels but {where} is "
                f"{first.shape[2]} x {first.shape[1]} (columns x rows)"
            )
        elif data.shape[0] != first.shape[0]:
            problem = f"has {data.shape[0]} bands but {where} has {first.shape[0]}"
        elif (data.rio.crs is None) != (crs is None) or (crs is not None and data.rio.crs != crs):
            theirs = data.rio.crs.to_string() if data.rio.crs is not None else "no CRS"
            problem = f"is in {theirs} but {where} is in {crs.to_string() if crs else 'no CRS'}"
        elif not data.rio.transform().almost_equals(transform):
            problem = f"has another transform (origin or pixel size) than {where}"
        if problem:
            error = BandMismatchError if "bands" in problem else GridMismatchError
            raise error(
                f"the source {_text(path)} {problem}; a stack needs every source on one grid: "
                "write one "
                "output per source into a folder (an output path ending in /), or resample the "
                "sources onto one grid first"
            )


@dataclass(frozen=True)
class NormalizeResult:
    """What :func:`normalize_files` produced.

    ``outputs``: one raster per source (a folder as output) or the one stack; ``luts``: one
    LUT per source, in the order of ``sources``; ``quality``: one row per (source, band), each
    with the key ``source``; ``time``: the stack's time labels (None for a folder).
    """

    sources: list[Path]
    outputs: list[Path]
    luts: list[LUT]
    quality: list[dict[str, Any]] = field(default_factory=list)
    lut_paths: list[Path] = field(default_factory=list)
    report: Path | None = None
    time: np.ndarray | None = None
    #: the inputs' CRS, resolution and footprint, and their overlap (:func:`geometry.job_report`)
    geometry: dict[str, Any] = field(default_factory=dict)

    def quality_text(self) -> str:
        return format_quality_table(self.quality)


def _is_folder_output(output: PathLike) -> bool:
    if is_remote(output):
        loc = location(output)
        if loc.suffix == ".zarr" or loc.kind == "store":
            return False
        raise OptionError(
            f"{loc.text} is not a .zarr stack; one output per source goes into a local folder "
            "only (folder outputs are not made at remote locations): give a local folder, or a "
            ".zarr stack there (s3://bucket/stack.zarr)"
        )
    text = os.fspath(output)
    path = Path(text).expanduser()
    if path.suffix.lower() == ".zarr":  # a stack, even written as out.zarr/
        return False
    if text.endswith(("/", os.sep)):
        return True
    if path.is_dir():
        return not _looks_like_zarr(path)
    return path.suffix == ""


def _looks_like_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any(
        (path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup")
    )


def _per_item(
    value: PathLike | Sequence[PathLike | None] | None, items: Sequence[Any], what: str
) -> list[Any]:
    """One mask per item: none, one for all, or one per item in their order (local paths as
    :class:`~pathlib.Path`, URLs as given)."""
    if value is None:
        return [None] * len(items)
    if isinstance(value, str | os.PathLike):
        return [_where(value)] * len(items)
    values = [_where(v) if v is not None else None for v in value]
    if len(values) == 1:
        return values * len(items)
    if len(values) != len(items):
        raise OptionError(
            f"{len(values)} {what}s for {len(items)} inputs; give one {what} for all of them "
            f"or one per input, in the order of the inputs (mask= and reference_mask=, --mask and "
            "--reference-mask on the command line)"
        )
    return values


def _lut_files(lut_path: PathLike | None, names: Sequence[str]) -> tuple[list[Path], Path | None]:
    """Where the LUT of each source is saved, and the folder that holds them (created if
    needed): ``lut_path`` itself for one source named as a file; else ``<name>.lut.json`` per
    source inside the folder ``lut_path`` (an existing folder, or a path ending in ``/``)."""
    if lut_path is None:
        return [], None
    text = os.fspath(lut_path)
    folder = Path(text).expanduser().absolute()
    if not (text.endswith(("/", os.sep)) or folder.is_dir()):
        if len(names) == 1:
            return [folder], None
        raise OptionError(
            f"{len(names)} sources have {len(names)} LUTs, which one file {lut_path} cannot "
            "hold: give lut_path= a folder (a path ending in /) to get one LUT file per source"
        )
    return [folder / f"{name}.lut.json" for name in names], folder


def _folder_outputs(folder: Path, sources: Sequence[Any], suffix: str) -> list[Path]:
    outputs = [folder / f"{_stem(s)}{suffix}" for s in sources]
    seen: dict[Path, Any] = {}
    for source, out in zip(sources, outputs, strict=True):
        if out in seen:
            raise OptionError(
                f"the sources {_text(seen[out])} and {_text(source)} would both be written to "
                f"{out}; rename "
                "one, or normalize them in two runs"
            )
        seen[out] = source
    return outputs


@contextlib.contextmanager
def _output_folder(folder: Path) -> Iterator[None]:
    """The output folder, created if needed; one created here is removed again (when still
    empty) if the job fails, so a failed job leaves nothing."""
    created = False
    if not folder.exists():
        if not folder.parent.is_dir():
            raise RasterWriteError(
                f"cannot create the output folder {folder}: {folder.parent} does not exist; "
                "create it first"
            )
        try:
            folder.mkdir()
        except OSError as exc:
            raise RasterWriteError(
                f"cannot create the output folder {folder}: {exc.strerror or exc}"
            ) from exc
        created = True
    elif not folder.is_dir():
        raise RasterWriteError(f"{folder} exists and is not a folder; choose another output")
    try:
        yield
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@bounded_gdal_cache
def normalize_files(
    sources: PathLike | Sequence[PathLike],
    reference: PathLike | Sequence[PathLike],
    output: PathLike,
    *,
    format: Literal["tif", "zarr"] | None = None,
    method: Method = "nearest",
    levels: Levels = "present",
    objective: Objective | None = None,
    proportion: float = 1.0,
    pool: Literal["counts", "cdf"] = "counts",
    nodata: float | None = None,
    reference_nodata: float | None = None,
    mask: PathLike | Sequence[PathLike | None] | None = None,
    reference_mask: PathLike | Sequence[PathLike | None] | None = None,
    bands: Sequence[int] | None = None,
    reference_bands: Sequence[int] | None = None,
    bins: int | None = None,
    dtype: Any = None,
    chunks: Any = "auto",
    overwrite: bool = False,
    lut_path: PathLike | None = None,
    report: PathLike | None = None,
    cog: bool = False,
    compress: Any = None,
    show_progress: bool = False,
    overlap: Overlap = False,
) -> NormalizeResult:
    """Normalize every source to one (pooled) reference: a time series or the scenes of a mosaic.

    ``sources`` and ``reference`` are files, folders (the rasters directly inside) or glob
    patterns; several references are pooled into one (``pool="counts"``: summed counts, scenes
    weighted by their valid pixels; ``"cdf"``: every scene weighted equally). What ``output``
    is decides what is written:

    - a folder (a path ending in ``/``, an existing folder, or a name without suffix; created
      if needed): one raster per source, named after it, GeoTIFF or Zarr by ``format``
      (default ``"tif"``);
    - ``OUT.zarr``: one Zarr stack ``(time, band, y, x)``; every source must be on one grid
      (size, band count, CRS, transform), else :class:`~rastermatch.GridMismatchError` names the
      first that is not. The time labels are the dates in the file names when every name holds
      a distinct one, else the file stems (:func:`time_labels`).

    The job runs as :func:`match_files` does, for all sources at once:

    0. every output path (each per-source raster, the stack, the LUT files, the report) and
       every option is checked before any work; no output may be an input;
    1. one statistics pass: the histograms of every source and every reference are computed
       together, each file read once;
    2. every source is mapped through its LUT and streamed to its output.

    ``mask`` is one mask for every source (all on its grid) or one per source, in the order of
    the sources after expansion; ``reference_mask`` likewise per reference. ``lut_path`` saves
    the LUTs: a file for a single source, else a folder receiving ``<output name>.lut.json``
    per source. ``report`` draws one figure with every source's CDF against the reference,
    before and after. Every output is written under a temporary name and moved into place only
    when all are written: a failed or interrupted job leaves no new output and no temporaries,
    and the outputs of a previous run that ``overwrite`` would replace stay as they were.

    ``overlap`` (True or ``"all"``): every source's statistics only where it and the (pooled)
    reference are both valid, the references laid onto that source's grid for them
    (:func:`rastermatch.match_histograms`); each source then takes its own statistics pass,
    since its common area with the reference is its own. ``"all"`` with several sources (one
    file a date, on one grid): only the pixels valid in every source too, found in one pass
    before the statistics and held in memory (one byte a pixel). ``result.geometry`` describes every
    input and the overlap of each (source, reference) pair on different grids.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp() + "/normalized/"
    >>> result = normalize_files(["data/riohist_source1_naip.tif", "data/rasterio_RGB.byte.tif"],
    ...                          "data/riohist_reference1_landsat.tif", out)
    >>> [p.name for p in result.outputs]
    ['riohist_source1_naip.tif', 'rasterio_RGB.byte.tif']
    >>> len(result.quality), all(r["ks_after"] < r["ks_before"] for r in result.quality)
    (6, True)
    """
    options = MatchOptions(
        method=method, objective=objective, proportion=proportion, levels=levels, bins=bins,
        dtype=dtype, pool=pool,
    )  # fmt: skip
    overlap = check_overlap(overlap)
    _local_files(**{"LUT file": lut_path, "report": report})
    if format is not None and format not in ("tif", "zarr"):
        raise OptionError(f"format must be 'tif' or 'zarr', not {format!r}")
    refs = expand_sources(reference, what="reference")
    stacked = not _is_folder_output(output)
    # a folder of sources never takes in the stack this job writes (a previous run's output)
    own = [output] if stacked else []
    srcs = expand_sources(sources, leave_out=[*refs, *own])
    masks = _per_item(mask, srcs, "mask")
    ref_masks = _per_item(reference_mask, refs, "reference mask")
    inputs: list[PathLike | None] = [*srcs, *refs, *masks, *ref_masks]

    # 0. every output, before any work
    if stacked:
        final = check_output_path(output, inputs=inputs, overwrite=overwrite, cog=cog)
        if (final.suffix.lower() != ".zarr" and not is_remote(final)) or format == "tif":
            raise OptionError(
                f"{final} would hold every source in one (time, band, y, x) stack, which only "
                "Zarr stores: give a .zarr path, or a folder (ending in /) for one GeoTIFF per "
                "source"
            )
        folder = final.parent if isinstance(final, Path) else None  # none to make remotely
        outputs = [final]
    else:
        folder = Path(os.fspath(output)).expanduser().absolute()
        suffix = ".zarr" if format == "zarr" else ".tif"
        outputs = _folder_outputs(folder, srcs, suffix)
    lut_files, lut_folder = _lut_files(lut_path, [_stem(s) for s in srcs])
    with contextlib.ExitStack() as folders:
        if folder is not None:
            folders.enter_context(_output_folder(folder))
        if lut_folder is not None:
            folders.enter_context(_output_folder(lut_folder))
        if not stacked:
            for out in outputs:
                check_output_path(out, inputs=inputs, overwrite=overwrite, cog=cog)
        for path in [*lut_files, *([report] if report is not None else [])]:
            check_output_path(path, inputs=inputs, overwrite=overwrite, kind="file")
        if report is not None:
            _check_report_path(report)
        _check_distinct_all([*outputs, *lut_files, *([report] if report else [])])

        # the headers: nodata, bands, masks and grids, all before the statistics
        opened = [open_input(s, bands=bands, chunks=chunks) for s in srcs]
        for data, path in zip(opened, srcs, strict=True):
            _check_nodata(nodata, data, f"source {_text(path)}", "nodata")
        ref_opened = [open_input(r, bands=reference_bands or bands, chunks=chunks) for r in refs]
        for data, path in zip(ref_opened, refs, strict=True):
            _check_nodata(reference_nodata, data, f"reference {_text(path)}", "reference_nodata")
        arrays = [as_band_array(d, nodata=nodata, name="source") for d in opened]
        _check_stack_sources(arrays, srcs, stacked=stacked, zarr=format == "zarr")
        src_masks = [open_mask(m, d) for m, d in zip(masks, opened, strict=True)]
        ref_mask_arrays = [open_mask(m, d) for m, d in zip(ref_masks, ref_opened, strict=True)]
        labels = None
        if stacked:
            check_same_grid(opened, srcs)
            labels = time_labels(srcs)
        members = [
            as_band_array(d, nodata=_reference_nodata(nodata, reference_nodata, d),
                          name="reference")
            for d in ref_opened
        ]  # fmt: skip
        ref = as_reference(
            members[0] if len(members) == 1 else members,
            mask=ref_mask_arrays[0] if len(members) == 1 else ref_mask_arrays,
        )

        # overlap="all" over one file a date: the pixels valid in every date, found once
        every = None
        if overlap == "all" and len(arrays) > 1:
            for data, path in zip(opened[1:], srcs[1:], strict=True):
                if not same_grid(opened[0], data):
                    raise GridMismatchError(
                        f"overlap='all' (--overlap-all) counts only the pixels valid in every "
                        f"source, and {_text(path)} is not on the grid of {_text(srcs[0])}: "
                        "use overlap=True (--overlap), or resample the sources onto one grid"
                    )
            every = valid_area(arrays[0], src_masks[0])
            for a, m in zip(arrays[1:], src_masks[1:], strict=True):
                every = every & valid_area(a, m)

        # 1. one statistics pass over every source and every reference (with overlap, one per
        # source: each has its own common area with the references)
        geometry = job_report(list(zip(map(_text, srcs), opened, strict=True)),
                              list(zip(map(_text, refs), ref_opened, strict=True)))  # fmt: skip
        with progress(show_progress):
            if overlap is False:
                luts = fit_many(arrays, ref, options, masks=src_masks)
            else:
                if every is not None:
                    src_masks = [(~every).persist()] * len(arrays)
                luts = [
                    fit_overlap(a, ref, options, mask=m, overlap=overlap)
                    for a, m in zip(arrays, src_masks, strict=True)
                ]
        quality = []
        for i, (lut, path) in enumerate(zip(luts, srcs, strict=True)):
            rows = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
            for row in rows:
                extra = {"time": _label_text(labels[i])} if labels is not None else {}
                quality.append({"source": _name(path), **extra, **row})
        matched = [apply_arrays(a, lut) for a, lut in zip(arrays, luts, strict=True)]

        # 2. the rasters, then the staged LUT files and report
        inputs_record = {"sources": list(map(_text, srcs)), "references": list(map(_text, refs))}
        how = (False, cog, compress, show_progress)  # each to a fresh temporary
        with _staging() as staged:
            for lut, lut_file in zip(luts, lut_files or [None] * len(luts), strict=True):
                if lut_file is None:
                    continue
                _save_lut(lut, staged.path_for(lut_file, overwrite=overwrite), lut_file)
            if report is not None:
                from .plot import save_series_report

                try:
                    save_series_report(staged.path_for(Path(report), overwrite=overwrite), luts,
                                       [_name(s) for s in srcs], metrics=quality)  # fmt: skip
                except OSError as exc:
                    raise RasterWriteError(
                        f"writing the report {_text(report)} failed: {exc.strerror or exc}"
                    ) from exc
            # every raster under its temporary name, all moved into place only once every one
            # is written: a failed or interrupted job leaves a previous run's outputs as they were
            if stacked:
                assert labels is not None
                stack = _stack(matched, labels)
                record = prov.stack_record(luts, quality, inputs_record, labels)
                tmp, replace = staged.raster_for(outputs[0], overwrite=overwrite)
                _write(stack, tmp, record, inputs, replace, *how[1:])
            else:
                for i, (data, out) in enumerate(zip(matched, outputs, strict=True)):
                    rows = [q for q in quality if q["source"] == _name(srcs[i])]
                    record = prov.match_record(luts[i], rows, operation="normalize",
                                               source=srcs[i], references=refs,
                                               mask=masks[i])  # fmt: skip
                    tmp = staged.path_for(out, overwrite=overwrite)
                    _write(data, tmp, record, inputs, *how)
            staged.commit()
            written = [_result(p) for p in outputs]
    return NormalizeResult(
        srcs, written, list(luts), quality, [Path(p) for p in lut_files],
        Path(report) if report is not None else None, labels, geometry,
    )  # fmt: skip


def _check_stack_sources(
    arrays: Sequence[Any], srcs: Sequence[Path], *, stacked: bool, zarr: bool
) -> None:
    """Refuse, before any work, a source that is itself a stack (a Zarr ``(time, band, y, x)``
    store) where its output cannot hold it: in one stack of the sources, or in a GeoTIFF."""
    for array, path in zip(arrays, srcs, strict=True):
        rows = array.rows
        extra = [d for d in rows.dims if d != "band"]
        if not extra or (not stacked and (zarr or all(len(rows.coord(d)) == 1 for d in extra))):
            continue
        sizes = ", ".join(f"{d}: {n}" for d, n in zip(rows.dims, rows.shape, strict=True))
        if stacked:
            raise OptionError(
                f"the source {_text(path)} is already a stack with rows ({sizes}), which one "
                "(time, band, y, x) stack of the sources cannot take in: normalize it into a "
                "folder of Zarr stores (-o DIR/ --format zarr; format='zarr'), or through the "
                "API (rastermatch.match_histograms), or leave it out of the sources"
            )
        raise OptionError(
            f"the source {_text(path)} is a stack with rows ({sizes}), which a GeoTIFF cannot "
            "hold: "
            "add --format zarr (format='zarr') to write one Zarr store per source, or leave it "
            "out of the sources"
        )


def _check_distinct_all(paths: Sequence[Any]) -> None:
    seen: set[Any] = set()
    for path in paths:
        key = _identity(path)
        if key in seen:
            raise OptionError(
                f"two outputs of the job would both be written to {_text(path)}; give them "
                "different paths"
            )
        seen.add(key)


def _label_text(label: Any) -> str:
    if isinstance(label, np.datetime64):
        return str(np.datetime_as_string(label, unit="D"))
    return str(label)


def _stack(matched: Sequence[xr.DataArray], labels: np.ndarray) -> xr.DataArray:
    """The matched sources as one ``(time, band, y, x)`` DataArray (lazy), labelled in time.

    The sources share a grid (checked before any work); coordinates, band labels and attrs are
    the first source's. Every output has the LUTs' one dtype; its nodata is the one value the
    outputs agree on.
    """
    nodatas = {m.rio.nodata for m in matched if m.rio.nodata is not None}
    if len(nodatas) > 1:
        raise OptionError(
            f"the matched sources need different nodata values ({sorted(nodatas)}), which one "
            "stack cannot hold; pass nodata= (--nodata) or write one output per source"
        )
    first = matched[0]
    parts = [m.assign_coords(first.coords) for m in matched]
    stack = xr.concat(parts, dim="time", coords="minimal", compat="override", join="override")
    stack = stack.assign_coords(time=("time", labels))
    stack.attrs = dict(first.attrs)
    stack.encoding = {}
    if nodatas:
        stack = stack.rio.write_nodata(nodatas.pop(), encoded=False)
    return stack


# -- detector balancing (destriping) ----------------------------------------------------------


def detector_layout(detectors: Any, *, axis: Literal["y", "x"] = "y", offset: int = 0) -> Detectors:
    """The :class:`~rastermatch._detectors.Detectors` a job's ``detectors=`` means.

    A number of detectors (periodic along ``axis``), ``None`` or ``"column"`` (one detector per
    column, ``axis="x"``), or one label per line or column. Invalid values raise
    :class:`~rastermatch.OptionError` naming the option.

    Examples
    --------
    >>> detector_layout(16).describe(), detector_layout("column", axis="x").describe()
    ('16 detectors along y', 'one detector per column')
    """
    if isinstance(detectors, str):
        if detectors not in ("column", "columns"):
            raise OptionError(
                f"detectors must be a number of detectors or 'column' (one per column), not "
                f"{detectors!r}"
            )
        if axis != "x":
            raise OptionError(
                "detectors='column' (one detector per column) balances columns: give axis='x' "
                "(--axis x), or a number of detectors along y"
            )
        detectors = None
    if isinstance(detectors, float) and detectors.is_integer():
        detectors = int(detectors)
    return Detectors.of(detectors, axis=axis, offset=offset)


def _detector_reference(reference: Any, labels: tuple[Any, ...], source: PathLike) -> Any:
    """``"pooled"`` or a detector label of the layout, checked before any work."""
    if isinstance(reference, str) and reference == "pooled":
        return reference
    if not isinstance(reference, bool) and reference in labels:  # a label, as it is
        return int(reference) if isinstance(reference, np.integer) else reference
    if isinstance(reference, str):
        try:
            reference = int(reference)
        except ValueError:
            raise OptionError(
                f"reference must be 'pooled' or a detector number, not {reference!r}"
            ) from None
    if isinstance(reference, bool) or not isinstance(reference, int | np.integer):
        raise OptionError(
            f"reference must be 'pooled' or a detector number, not {type(reference).__name__}"
        )
    if int(reference) not in labels:
        top = f"0..{len(labels) - 1}" if labels == tuple(range(len(labels))) else "its labels"
        raise OptionError(
            f"reference={int(reference)}: {_text(source)} has no detector {int(reference)} (its "
            f"detectors are {top}); give reference= a detector of the layout or 'pooled'"
        )
    return int(reference)


@bounded_gdal_cache
def destripe_file(
    source: PathLike,
    output: PathLike,
    *,
    detectors: Any = 16,
    axis: Literal["y", "x"] = "y",
    offset: int = 0,
    reference: Literal["pooled"] | int = "pooled",
    method: Method = "nearest",
    levels: Levels = "present",
    nodata: float | None = None,
    mask: PathLike | None = None,
    bands: Sequence[int] | None = None,
    bins: int | None = None,
    dtype: Any = None,
    chunks: Any = "auto",
    overwrite: bool = False,
    lut_path: PathLike | None = None,
    report: PathLike | None = None,
    cog: bool = False,
    compress: Any = None,
    show_progress: bool = False,
) -> MatchResult:
    """Balance the detectors of ``source`` (destriping) and write the result to ``output``.

    Every (band, detector) gets its own LUT matching its histogram to the ``reference``:
    ``"pooled"`` (all detectors of the band together) or one detector's label (a detector
    known to be good), by :func:`rastermatch.balance.fit_detectors` (Horn & Woodham's relative
    detector calibration). ``detectors`` is the layout along ``axis``: a number ``n`` (line
    ``i`` is detector ``(i + offset) mod n``, as a whisk-broom scanner writes them), ``None``
    or ``"column"`` with ``axis="x"`` (one detector per column, a push-broom sensor), or one
    label per line or column.

    The job runs as :func:`match_files` does:

    0. every output (``output``, ``lut_path``, ``report``) and option (the layout, the
       reference detector, nodata, bands, mask grid) is checked before any work; no output
       may be an input or another output;
    1. the statistics: the histograms of every (band, detector), one read of the source;
    2. the source mapped through its per-detector LUTs, streamed to ``output``; the quality
       (the stripe power of the mean profile along the detector axis before and after, and how
       far valid pixels moved: :func:`rastermatch.metrics.destripe_quality`) and what the
       report draws are computed in the same pass, so source and output are read once for
       all of them (a Zarr output or a distributed client: one more read, before the write);
    3. the provenance (layout, reference, stripe metrics, the LUT when small enough) stored
       in the output, the LUT file and the report written, all moved into place together.

    nodata and masked pixels (``mask``: nonzero is left out) stay out of every detector's
    statistics; masked pixels are still mapped, nodata stays nodata. ``lut_path`` saves the
    LUT (re-apply it to later scenes of the sensor with :func:`apply_file`); ``report`` draws
    the mean profiles and a quicklook before and after. A failed or interrupted job leaves
    nothing under the output names and no temporaries; the inputs are never written over.

    Examples
    --------
    >>> import tempfile
    >>> out = tempfile.mkdtemp() + "/destriped.tif"
    >>> result = destripe_file("data/striped_L7_ETMs.tif", out, detectors=16)
    >>> result.output.name, all(r["stripe_reduction"] > 0.95 for r in result.quality)
    ('destriped.tif', True)
    >>> result.lut.detectors
    Detectors(16 detectors along y)
    """
    from .balance import fit_detectors

    layout = detector_layout(detectors, axis=axis, offset=offset)
    inputs = [source, mask]
    _local_files(**{"LUT file": lut_path, "report": report})
    _check_distinct(output=output, **{"LUT file": lut_path, "report": report})
    final = check_output_path(output, inputs=inputs, overwrite=overwrite, kind="raster", cog=cog)
    for path in (lut_path, report):
        if path is not None:
            check_output_path(path, inputs=inputs, overwrite=overwrite, kind="file")
    if report is not None:
        _check_report_path(report)
    src = open_input(source, bands=bands, chunks=chunks)
    _check_nodata(nodata, src, f"source {_text(source)}", "nodata")
    size = src.sizes[src.dims[-2] if layout.axis == "y" else src.dims[-1]]
    _, labels = layout.resolve(size, _text(source))
    chosen = _detector_reference(reference, labels, source)
    src_mask = open_mask(mask, src)

    # 1. the statistics: one LUT per (band, detector)
    with progress(show_progress):
        lut = fit_detectors(
            src, detectors=layout, axis=layout.axis, offset=layout.offset, reference=chosen,
            method=method, levels=levels, nodata=nodata, mask=src_mask, bins=bins, dtype=dtype,
        )  # fmt: skip
    balanced = lut.apply(src, nodata=nodata)  # lazy; an explicit nodata wins, as in the fit

    # 2-3. the raster, with the stripe power before and after and how far valid pixels moved
    # (metrics.destripe_pass; with a report, everything the report reads) computed in the same
    # dask.compute as the write, so source and output are read once for all of them; then the
    # staged LUT file and report (none replaces a file that appeared meanwhile, unless overwrite)
    with _staging() as staged:
        if lut_path is not None:
            _save_lut(lut, staged.path_for(Path(lut_path), overwrite=overwrite), lut_path)
        options: dict[str, Any] = {"nodata": nodata, "mask": src_mask}
        measured = destripe_pass(src, balanced, layout, **options)
        lazy = measured.lazy
        if report is not None:
            from .plot import destripe_report_lazy

            lazy = destripe_report_lazy(src, balanced, layout, **options)
        found: dict[str, Any] = {}

        def record_of(computed: Sequence[Any]) -> dict[str, Any]:
            found["computed"] = computed
            found["quality"] = measured.rows(computed[: len(measured.lazy)])
            return prov.destripe_record(
                lut, found["quality"], layout, chosen, source=source, mask=mask
            )

        tmp, replace = staged.raster_for(final, overwrite=overwrite)
        _write(balanced, tmp, record_of, inputs, replace, cog, compress, show_progress, lazy)
        quality = found["quality"]
        if report is not None:
            from .plot import save_destripe_report

            tmp_report = staged.path_for(Path(report), overwrite=overwrite)
            try:
                save_destripe_report(
                    tmp_report, src, balanced, layout, computed=found["computed"], **options
                )
            except OSError as exc:  # a full disk, say: name the report, not its temporary
                raise RasterWriteError(
                    f"writing the report {_text(report)} failed: {exc.strerror or exc}"
                ) from exc
        staged.commit()
    return MatchResult(
        _result(final), lut, quality, Path(lut_path) if lut_path is not None else None,
        Path(report) if report is not None else None,
    )  # fmt: skip


# -- the demo ---------------------------------------------------------------------------------

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

#: The demo's two jobs: (name, source, reference, options).
DEMO_JOBS = (
    (
        "naip_to_landsat",
        "riohist_source1_naip.tif",
        "riohist_reference1_landsat.tif",
        {},
    ),
    (
        "landsat_to_composite",
        "arrnorm_target.tif",
        "arrnorm_ref_adjusted2target.tif",
        {"nodata": 0},
    ),
)


#: The demo's detector balancing: (name, source, options).
DEMO_DESTRIPE = ("landsat7_destriped", "striped_L7_ETMs.tif", {"detectors": 16})


def run_demo(
    outdir: PathLike = "rastermatch-demo",
    *,
    data_dir: PathLike | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
) -> dict[str, MatchResult]:
    """The main jobs on the bundled scenes; writes GeoTIFF and Zarr outputs, LUTs and reports.

    1. The 2014 NAIP aerial scene (uint8) normalized to the cloud-free Landsat composite (uint16):
       cross-sensor and cross-dtype.
    2. The Landsat scene with cloud holes (zeros, no nodata tag) normalized to its reference
       composite, with 0 as nodata (for both scenes).
    3. The Landsat 7 scene with injected detector stripes (``striped_L7_ETMs.tif``) destriped:
       its 16 detectors balanced to their pooled histogram (:func:`destripe_file`).

    Every output of every job is checked before the first job starts.
    """
    data = Path(data_dir) if data_dir is not None else DATA_DIR
    if not data.is_dir():
        raise RasterReadError(
            f"the sample data folder {data} does not exist; run the demo from a source checkout "
            "or pass data_dir="
        )
    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise RasterWriteError(f"{out} exists and is not a folder; choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    striped_name, striped, striped_options = DEMO_DESTRIPE
    jobs = [(name, [data / source, data / reference]) for name, source, reference, _ in DEMO_JOBS]
    for name, inputs in [*jobs, (striped_name, [data / striped])]:
        for suffix, kind in ((".tif", "raster"), (".zarr", "raster"), (".lut.json", "file"),
                             (".report.png", "file")):  # fmt: skip
            if name == striped_name and suffix == ".zarr":
                continue
            check_output_path(out / f"{name}{suffix}", inputs=inputs, overwrite=overwrite,
                              kind=kind)  # type: ignore[arg-type]  # fmt: skip
    results = {}
    for name, source, reference, options in DEMO_JOBS:
        results[name] = match_files(
            data / source, data / reference, out / f"{name}.tif",
            lut_path=out / f"{name}.lut.json", report=out / f"{name}.report.png",
            overwrite=overwrite, show_progress=show_progress, **options,
        )  # fmt: skip
        # the same calibration, written to Zarr as well
        matched = results[name].lut.apply(open_input(data / source), nodata=options.get("nodata"))
        record = prov.match_record(results[name].lut, results[name].quality,
                                   source=data / source, reference=data / reference)  # fmt: skip
        _write(matched, out / f"{name}.zarr", record, [data / source, data / reference],
               overwrite, False, None, show_progress)  # fmt: skip
    results[striped_name] = destripe_file(
        data / striped, out / f"{striped_name}.tif", lut_path=out / f"{striped_name}.lut.json",
        report=out / f"{striped_name}.report.png", overwrite=overwrite,
        show_progress=show_progress, **striped_options,
    )  # fmt: skip
    return results


@bounded_gdal_cache
def specify_file(
    source: PathLike,
    reference: PathLike,
    output: PathLike,
    *,
    nodata: float | None = None,
    reference_nodata: float | None = None,
    mask: PathLike | None = None,
    bands: Sequence[int] | None = None,
    reference_bands: Sequence[int] | None = None,
    chunks: Any = "auto",
    overwrite: bool = False,
    cog: bool = False,
    compress: Any = None,
    show_progress: bool = False,
) -> Any:
    """Give ``source`` exactly the histogram of ``reference`` and write it to ``output``.

    :func:`rastermatch.specify.specify_exact` on the opened files: two statistics passes over
    the source (the reference's counts in the first), then the lazy output streamed to
    ``output`` under a temporary name (the same write guarantees as :func:`match_files`; the
    inputs are never written over). Masked pixels (a mask file: nonzero = leave out) and nodata
    pixels are written as nodata. The output's provenance records the inputs and, per row, the
    shares of pixels whose level the window sums and the raster position decided. Returns the
    :class:`~rastermatch.specify.SpecifyReport`.
    """
    from .specify import specify_exact

    inputs = [source, reference, mask]
    final = check_output_path(output, inputs=inputs, overwrite=overwrite, kind="raster", cog=cog)
    src, ref, ref_nodata = _open_pair(
        source, reference, nodata=nodata, reference_nodata=reference_nodata, bands=bands,
        reference_bands=reference_bands, chunks=chunks,
    )  # fmt: skip
    if ref_nodata is not None:
        ref = ref.rio.write_nodata(ref_nodata, encoded=False)
    with progress(show_progress):
        out, report = specify_exact(
            src, ref, nodata=nodata, mask=open_mask(mask, src), return_report=True
        )
    record = prov.specify_record(report, source=source, reference=reference, mask=mask)
    with _staging() as staged:
        tmp, replace = staged.raster_for(final, overwrite=overwrite)
        _write(out, tmp, record, inputs, replace, cog, compress, show_progress)
        staged.commit()
    return report
