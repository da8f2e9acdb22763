"""File to file: the one place that computes and writes.

Every job has the same two passes, whatever the scheduler:

1. **Statistics** — the histograms of source and reference (and, for continuous data, their
   valid ranges first) are computed together: one read of each input.
2. **Application** — the LUT is applied lazily to the source and streamed to the output, block by
   block: a second read of the source, and memory bounded by the blocks in flight.

The quality metrics need no third pass: the histogram of the matched output follows exactly from
the source histogram and the LUT (:func:`rastermatch.metrics.matched_histogram`).

Under an active ``dask.distributed`` client everything runs on the cluster; otherwise dask's
threaded scheduler runs it, with a progress bar when asked.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import dask
import numpy as np
import rasterio
import xarray as xr

from ._data import as_band_array
from .errors import BandMismatchError, RasterReadError
from .io import open_raster, write_raster
from .lut import LUT, Levels, Method
from .match import _fit, equalize
from .metrics import format_quality_table, matched_histogram, quality_table

__all__ = [
    "MatchResult",
    "apply_file",
    "equalize_file",
    "fit_files",
    "local_cluster",
    "match_files",
    "raster_info",
    "run_demo",
]

PathLike = str | os.PathLike[str]
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class MatchResult:
    """What a file job produced: the output, the LUT, the quality table and the extra files."""

    output: Path | None
    lut: LUT
    quality: list[dict[str, Any]] = field(default_factory=list)
    lut_path: Path | None = None
    report: Path | None = None

    def quality_text(self) -> str:
        return format_quality_table(self.quality)


# -- helpers ----------------------------------------------------------------------------------


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


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[None]:
    """dask's local progress bar around what is computed inside, when enabled.

    Under a distributed client the bar is drawn by :func:`compute` instead.
    """
    if enabled and active_client() is None:
        from dask.diagnostics import ProgressBar

        with ProgressBar(minimum=1.0, dt=0.5):
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


def compute(*collections: Any, show_progress: bool = False) -> tuple[Any, ...]:
    """``dask.compute`` with a progress bar: dask's local one, or the distributed one."""
    client = active_client()
    if client is not None and show_progress:
        from distributed import progress as distributed_progress

        futures = client.compute(list(collections))
        distributed_progress(futures)
        return tuple(client.gather(futures))
    with progress(show_progress):
        return dask.compute(*collections)


def select_bands(data: xr.DataArray, bands: Sequence[int] | None, path: PathLike) -> xr.DataArray:
    """The bands numbered ``bands`` (1-based, in the given order), or all of them."""
    if not bands:
        return data
    n = data.sizes["band"]
    bad = [b for b in bands if not 1 <= b <= n]
    if bad:
        raise BandMismatchError(
            f"{path} has {n} bands; band number(s) {bad} do not exist (bands count from 1)"
        )
    return data.isel(band=[b - 1 for b in bands])


def open_input(
    path: PathLike, *, bands: Sequence[int] | None = None, chunks: Any = "auto"
) -> xr.DataArray:
    """Open ``path`` lazily and keep the requested bands."""
    return select_bands(open_raster(path, chunks=chunks), bands, path)


def open_mask(path: PathLike | None, like: xr.DataArray) -> xr.DataArray | None:
    """A mask file as booleans on ``like``'s grid: nonzero (and valid) pixels are left out."""
    if path is None:
        return None
    m = open_raster(path, chunks={"y": like.chunks[1][0], "x": like.chunks[2][0]})
    if m.shape[1:] != like.shape[1:]:
        raise BandMismatchError(
            f"mask {path} is {m.shape[1]} x {m.shape[2]} pixels but the image it masks is "
            f"{like.shape[1]} x {like.shape[2]}; the mask must be on the same grid"
        )
    if m.sizes["band"] not in (1, like.sizes["band"]):
        raise BandMismatchError(
            f"mask {path} has {m.sizes['band']} bands; give one band or one per image band"
        )
    out = m != 0
    if m.rio.nodata is not None:
        out = out & (m != m.rio.nodata)
    out = out.data
    return out[0] if m.sizes["band"] == 1 else out


def versions() -> dict[str, str]:
    import dask as _dask
    import numba
    import rasterio
    import xarray as _xr
    import zarr

    from . import __version__

    return {
        "rastermatch": __version__,
        "numpy": np.__version__,
        "dask": _dask.__version__,
        "xarray": _xr.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "zarr": zarr.__version__,
        "numba": numba.__version__,
    }


def provenance(lut: LUT, quality: list[dict[str, Any]], /, **inputs: Any) -> dict[str, Any]:
    """The record stored with every output: inputs, options, quality, versions and the LUT."""
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "inputs": {k: (str(v) if v is not None else None) for k, v in inputs.items()},
        "method": lut.method,
        "levels": lut.levels,
        "quality": quality,
        "versions": versions(),
        "lut": lut.to_dict(),
    }


#: GDAL block cache (MB) while a job reads and writes. GDAL's default, 5 % of RAM, fills up over
#: the statistics pass of a large GeoTIFF (1.5 GB peak RSS measured on a 4 x 16384 x 16384 scene,
#: 0.46 GB with this bound, and no slower): blocks are read once per pass, a cache cannot help.
GDAL_CACHE_MB = 256


def bounded_gdal_cache(job: Callable[P, R]) -> Callable[P, R]:
    """Run ``job`` with GDAL's block cache bounded to :data:`GDAL_CACHE_MB` (process-wide)."""

    @functools.wraps(job)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            return job(*args, **kwargs)

    return run


# -- jobs -------------------------------------------------------------------------------------


@bounded_gdal_cache
def fit_files(
    source: PathLike,
    reference: PathLike,
    *,
    method: Method = "nearest",
    levels: Levels = "present",
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
    show_progress: bool = False,
) -> MatchResult:
    """Fit the LUT that matches ``source`` to ``reference`` (one read of each); save it if asked."""
    src = open_input(source, bands=bands, chunks=chunks)
    ref = open_input(reference, bands=reference_bands or bands, chunks=chunks)
    with progress(show_progress):
        lut = _fit(
            as_band_array(src, nodata=nodata, name=str(source)),
            as_band_array(ref, nodata=reference_nodata, name=str(reference)),
            method,
            levels,
            open_mask(mask, src),
            open_mask(reference_mask, ref),
            bins,
            dtype,
        )
    quality = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
    saved = lut.save(lut_path) if lut_path is not None else None
    return MatchResult(None, lut, quality, saved)


@bounded_gdal_cache
def match_files(
    source: PathLike,
    reference: PathLike,
    output: PathLike,
    *,
    method: Method = "nearest",
    levels: Levels = "present",
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
) -> MatchResult:
    """Match ``source`` to ``reference`` and write the result to ``output`` (GeoTIFF or Zarr).

    Two passes: the statistics (one read of each input), then the lazily mapped source streamed
    to ``output``. The output carries the provenance (inputs, options, quality, versions, the LUT
    with both histograms); ``lut_path`` also saves the LUT as JSON and ``report`` draws the
    report PNG.

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
    if report is not None:
        from .plot import require_matplotlib

        require_matplotlib()  # before any work, not after the output is written
    fitted = fit_files(
        source, reference, method=method, levels=levels, nodata=nodata,
        reference_nodata=reference_nodata, mask=mask, reference_mask=reference_mask,
        bands=bands, reference_bands=reference_bands, bins=bins, dtype=dtype, chunks=chunks,
        lut_path=lut_path, show_progress=show_progress,
    )  # fmt: skip
    lut = fitted.lut
    src = open_input(source, bands=bands, chunks=chunks)
    matched = lut.apply(src, nodata=nodata)  # an explicit --nodata wins, as in the fit
    record = provenance(lut, fitted.quality, source=source, reference=reference, mask=mask,
                        reference_mask=reference_mask)  # fmt: skip
    written = _write(matched, output, record, [source, reference], overwrite, cog, compress,
                     show_progress)  # fmt: skip
    drawn = None
    if report is not None:
        from .plot import save_report

        ref = open_input(reference, bands=reference_bands or bands, chunks=chunks)
        drawn = save_report(report, src, ref, matched, lut, metrics=fitted.quality)
    return MatchResult(written, lut, fitted.quality, fitted.lut_path, drawn)


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
    """Map ``source`` through a saved LUT (say, another scene of the same sensor) to ``output``."""
    lut_file = None
    if not isinstance(lut, LUT):
        lut_file = Path(lut)
        lut = LUT.load(lut_file)
    src = open_input(source, bands=bands, chunks=chunks)
    matched = lut.apply(src, nodata=nodata)
    record = provenance(lut, [], source=source, lut=lut_file)
    inputs = [source] + ([lut_file] if lut_file else [])
    written = _write(matched, output, record, inputs, overwrite, cog, compress, show_progress)
    return MatchResult(written, lut, [], lut_file)


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
    src = open_input(source, bands=bands, chunks=chunks)
    with progress(show_progress):
        out = equalize(src, nodata=nodata, mask=open_mask(mask, src), range=range, bins=bins)
    record = {"operation": "equalize", "inputs": {"source": str(source)}, "versions": versions()}
    return _write(out, output, record, [source], overwrite, cog, compress, show_progress)


def _write(
    data: xr.DataArray,
    output: PathLike,
    record: dict[str, Any],
    inputs: Sequence[PathLike | None],
    overwrite: bool,
    cog: bool,
    compress: Any,
    show_progress: bool,
) -> Path:
    job = write_raster(
        data, output, overwrite=overwrite, compute=False, provenance=record,
        inputs=[p for p in inputs if p is not None], cog=cog, compress=compress,
    )  # fmt: skip
    (path,) = compute(job, show_progress=show_progress)
    return Path(path)


@bounded_gdal_cache
def raster_info(path: PathLike, *, statistics: bool = True) -> dict[str, Any]:
    """What ``rastermatch info`` prints: bands, dtype, nodata, CRS, grid, chunks and statistics.

    The per-band statistics (valid pixel count, min, max, mean) take one read of the file.
    """
    data = open_raster(path)
    src = as_band_array(data, name=str(path))
    info: dict[str, Any] = {
        "path": str(path),
        "bands": list(src.bands),
        "dtype": str(data.dtype),
        "shape": list(data.shape),
        "nodata": data.rio.nodata,
        "crs": data.rio.crs.to_string() if data.rio.crs else None,
        "transform": list(data.rio.transform())[:6],
        "chunks": [list(c) for c in data.chunks] if data.chunks else None,
    }
    if statistics:
        arr = data.data.astype(np.float64)
        valid = np.isfinite(arr)
        if src.nodata is not None:
            valid = valid & (data.data != src.nodata)
        masked = dask_where(valid, arr)
        count, lo, hi, total = dask.compute(
            valid.sum(axis=(1, 2)), masked[0].min(axis=(1, 2)), masked[1].max(axis=(1, 2)),
            masked[2].sum(axis=(1, 2)),
        )  # fmt: skip
        info["statistics"] = [  # min, max and mean are None for a band without valid pixels
            {"band": b, "valid": int(c), "min": float(a) if c else None,
             "max": float(z) if c else None, "mean": float(s / c) if c else None}
            for b, c, a, z, s in zip(src.bands, count, lo, hi, total, strict=True)
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


def run_demo(
    outdir: PathLike = "rastermatch-demo",
    *,
    data_dir: PathLike | None = None,
    overwrite: bool = False,
    show_progress: bool = False,
) -> dict[str, MatchResult]:
    """The main job on the bundled scenes; writes GeoTIFF and Zarr outputs, LUTs and reports.

    1. The 2014 NAIP aerial scene (uint8) normalized to the cloud-free Landsat composite (uint16):
       cross-sensor and cross-dtype.
    2. The Landsat scene with cloud holes (zeros, no nodata tag) normalized to its reference
       composite, with 0 as nodata.
    """
    data = Path(data_dir) if data_dir is not None else DATA_DIR
    if not data.is_dir():
        raise RasterReadError(
            f"the sample data folder {data} does not exist; run the demo from a source checkout "
            "or pass data_dir="
        )
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, source, reference, options in DEMO_JOBS:
        results[name] = match_files(
            data / source, data / reference, out / f"{name}.tif",
            lut_path=out / f"{name}.lut.json", report=out / f"{name}.report.png",
            overwrite=overwrite, show_progress=show_progress, **options,
        )  # fmt: skip
        # the same calibration, written to Zarr as well
        matched = results[name].lut.apply(open_input(data / source))
        record = provenance(results[name].lut, results[name].quality, source=data / source,
                            reference=data / reference)  # fmt: skip
        _write(matched, out / f"{name}.zarr", record, [data / source, data / reference],
               overwrite, False, None, show_progress)  # fmt: skip
    return results
