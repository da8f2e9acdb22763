"""The ``rastermatch`` command line: parse arguments, call :mod:`rastermatch.pipeline`, print.

Every command is a thin shell around one pipeline function; the pipeline checks the outputs and
options (before any work) so that a Python caller gets the same protection. What the command
line adds is done once, for all commands, by :class:`RastermatchGroup`:

1. errors become one ``Error: ...`` line on stderr and exit status 1, without a traceback unless
   ``--verbose``: a :class:`~rastermatch.RastermatchError` with its message (reworded for the
   command line: ``--overwrite``, not ``overwrite=True``), anything else as ``Error: unexpected
   <Type>: <message> (...; please report it)``; usage errors keep click's exit status 2;
2. Ctrl-C exits with status 130 and ``SIGTERM`` with 143; both raise ``KeyboardInterrupt`` in
   the job, so the writers remove their temporaries and nothing is left under the final names;
3. warnings are printed as one ``Warning: ...`` line each;
4. the progress bar goes to stderr, only on a terminal (``--progress`` forces it,
   ``--no-progress`` and ``--quiet`` turn it off); tables and written paths go to stdout.

``--workers N`` / ``--scheduler ADDRESS`` run a command on a ``dask.distributed`` cluster: the
client exists for the duration of the command only (:func:`rastermatch.pipeline.dask_cluster`).

Examples
--------
>>> from click.testing import CliRunner
>>> result = CliRunner().invoke(main, ["info", "data/rasterio_RGB.byte.tif", "--no-stats"])
>>> result.exit_code, result.stdout.splitlines()[1].split()
(0, ['bands', '3:', '1,', '2,', '3'])
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import __version__, pipeline
from .errors import OutputExistsError, RastermatchError
from .geometry import job_report_lines
from .io.location import location, redact_text

__all__ = [
    "BandList",
    "Chunks",
    "DetectorCount",
    "DetectorReference",
    "Range",
    "RasterLocation",
    "RastermatchGroup",
    "for_command_line",
    "main",
]

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
#: Exit status after SIGTERM (128 + 15).
EXIT_TERMINATED = 143
_DTYPES = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "uint64",
    "int64",
    "float32",
    "float64",
)
_COMPRESSIONS = ("zstd", "deflate", "lzw", "lzma", "packbits", "lz4", "none")


# -- parameter types --------------------------------------------------------------------------


class BandList(click.ParamType):
    """``1,2,3`` -> ``(1, 2, 3)``: band numbers, counting from 1.

    Examples
    --------
    >>> BandList().convert("3,1", None, None)
    (3, 1)
    """

    name = "BANDS"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        try:
            bands = tuple(int(p) for p in parts)
        except ValueError:
            self.fail(
                f"{value!r} is not a comma-separated list of band numbers, such as 1,2,3",
                param,
                ctx,
            )
        if any(b < 1 for b in bands):
            self.fail(f"{value!r}: band numbers count from 1", param, ctx)
        twice = sorted({b for b in bands if bands.count(b) > 1})
        if twice:
            self.fail(f"{value!r} lists band {twice[0]} more than once", param, ctx)
        return bands


class Range(click.ParamType):
    """``lo,hi`` -> ``(lo, hi)`` floats with ``lo < hi``.

    Examples
    --------
    >>> Range().convert("0,255", None, None)
    (0.0, 255.0)
    """

    name = "LO,HI"

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[float, float]:
        if isinstance(value, tuple):
            return value
        parts = str(value).split(",")
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not two numbers lo,hi such as 0,255", param, ctx)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            self.fail(f"{value!r}: need finite numbers with lo < hi", param, ctx)
        return lo, hi


class Chunks(click.ParamType):
    """Dask chunks of the inputs: ``auto``, ``N`` (N x N pixels) or ``Y,X``.

    Examples
    --------
    >>> Chunks().convert("1024", None, None), Chunks().convert("256,2048", None, None)
    ({'y': 1024, 'x': 1024}, {'y': 256, 'x': 2048})
    """

    name = "CHUNKS"

    def convert(self, value: Any, param: Any, ctx: Any) -> str | dict[str, int]:
        if isinstance(value, dict):
            return value
        if str(value).lower() == "auto":
            return "auto"
        parts = str(value).lower().replace("x", ",").split(",")
        try:
            sizes = [int(p) for p in parts]
        except ValueError:
            sizes = []
        if len(sizes) not in (1, 2) or any(s < 1 for s in sizes):
            self.fail(
                f"{value!r} is not a chunk size: use auto, a number of pixels (2048) or "
                "rows,columns (512,2048)",
                param,
                ctx,
            )
        return {"y": sizes[0], "x": sizes[-1]}


class DetectorCount(click.ParamType):
    """``16`` -> ``16`` detectors; ``column`` -> one detector per column.

    Examples
    --------
    >>> DetectorCount().convert("16", None, None), DetectorCount().convert("column", None, None)
    (16, 'column')
    """

    name = "N|column"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool):
            count = value
        elif str(value).strip().lower() in ("column", "columns"):
            return "column"
        else:
            try:
                count = int(str(value).strip())
            except ValueError:
                self.fail(
                    f"{value!r} is neither a number of detectors (16) nor 'column' (one "
                    "detector per column)",
                    param,
                    ctx,
                )
        if count < 1:
            self.fail(f"{value!r}: a sensor has at least 1 detector", param, ctx)
        return count


class DetectorReference(click.ParamType):
    """``pooled`` (all detectors together) or the number of one detector.

    Examples
    --------
    >>> reference = DetectorReference()
    >>> reference.convert("pooled", None, None), reference.convert("3", None, None)
    ('pooled', 3)
    """

    name = "pooled|K"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif str(value).strip().lower() == "pooled":
            return "pooled"
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(
                    f"{value!r} is neither 'pooled' nor a detector number (0, 1, ...)", param, ctx
                )
        if number < 0:
            self.fail(f"{value!r}: detectors are numbered from 0", param, ctx)
        return number


class RasterLocation(click.Path):
    """A local path, checked as :class:`click.Path` checks it, or a remote location as text.

    URLs (``https://``, ``s3://``, ``gs://``, ``az://``, ``memory://``, ...) and GDAL virtual
    paths (``/vsicurl/...``) are passed through unchanged for the library to open or write (a
    ``pathlib.Path`` would turn ``http://host/a.tif`` into ``http:/host/a.tif``); whether they
    exist is found out when they are opened. ``file://`` URLs are local paths.

    Examples
    --------
    >>> RasterLocation(exists=True).convert("https://example.com/a.tif", None, None)
    'https://example.com/a.tif'
    >>> RasterLocation(exists=True).convert("data/rasterio_RGB.byte.tif", None, None)
    PosixPath('data/rasterio_RGB.byte.tif')
    """

    def __init__(self, *, path_type: Any = Path, **kwargs: Any) -> None:
        super().__init__(path_type=path_type, **kwargs)

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, str) and _looks_remote(value):
            try:
                loc = location(value)
            except RastermatchError as error:
                self.fail(for_command_line(one_line(error)), param, ctx)
            if loc.kind != "local":
                return value
            value = str(loc.path)  # file://...
        return super().convert(value, param, ctx)


#: A command's path argument: a local path, or a remote location as given.
PathOrURL = Path | str

#: What a URL starts with: a scheme and ``://``.
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _looks_remote(text: str) -> bool:
    """A URL or a GDAL virtual path (``file://`` included: :func:`location` decides)."""
    return bool(_URL.match(text)) or text.startswith("/vsi")


BANDS = BandList()

# -- errors, interrupts and warnings, handled once --------------------------------------------


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages are joined with "; ")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


#: Python keywords of the library's messages and the options that set them on the command line.
_OPTIONS = {
    name: "--" + name.replace("_", "-")
    for name in (
        "overwrite", "nodata", "reference_nodata", "mask", "reference_mask", "bands",
        "reference_bands", "bins", "dtype", "range", "chunks", "method", "levels", "cog",
        "compress", "workers", "scheduler",
    )
}  # fmt: skip
_OPTIONS.update({"lut_path": "--lut", "format": "--format", "pool": "--pool"})
_OPTIONS.update({name: f"--{name}" for name in ("detectors", "axis", "offset", "reference")})
_NAMES = "|".join(sorted(_OPTIONS, key=len, reverse=True))


def for_command_line(message: str) -> str:
    """A library message reworded for the command line: options instead of Python keywords.

    Examples
    --------
    >>> for_command_line("out.tif exists already; pass overwrite=True (--overwrite) to replace it")
    'out.tif exists already; pass --overwrite to replace it'
    >>> for_command_line("select bands (bands= and reference_bands=)")
    'select bands (--bands and --reference-bands)'
    >>> for_command_line("all pixels equal nodata=0")
    'all pixels equal nodata=0'
    """
    # "keyword=True" and a bare "keyword=" name an option; "nodata=0" states a value, and
    # after a verb ("pass nodata=0") it is an instruction: the option with its value
    text = re.sub(rf"(?<![\w.-])({_NAMES})=True\b", lambda m: _OPTIONS[m[1]], message)
    text = re.sub(
        rf"\b(pass|give|set|use|with|or|choose)\s+({_NAMES})=([^\s,;)]+)",
        lambda m: f"{m[1]} {_OPTIONS[m[2]]} {m[3]}",
        text,
    )
    text = re.sub(rf"(?<![\w.-])({_NAMES})=(?=[\s,;)]|$)", lambda m: _OPTIONS[m[1]], text)
    # the hints the library already gives for the command line now say the same twice
    opts = r"(--[\w-]+(?: and --[\w-]+)?)"
    text = re.sub(rf"\({opts}, \1 on the command line\)", r"(\1)", text)
    text = re.sub(rf"\({opts}[^()]*?, or \1 on the command line\)", r"(\1)", text)
    text = re.sub(rf"{opts} \(\1\)", r"\1", text)
    return text


def _message(error: RastermatchError) -> str:
    """The one line printed for a library error, in the command line's terms."""
    path = getattr(error, "path", None)
    if isinstance(error, OutputExistsError) and path is not None and "exists already" in str(error):
        return redact_text(f"{path} exists already; pass --overwrite to replace it")
    return redact_text(for_command_line(one_line(error)))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` and writer cleanup runs."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Settings:
    """``--quiet``, ``--verbose`` and ``--progress/--no-progress``, shared through ``ctx.obj``.

    The flags are accepted before the command (``rastermatch -q match ...``) and after it
    (``rastermatch match ... -q``).
    """

    quiet: bool = False
    verbose: bool = False
    progress: bool | None = None

    @property
    def show_progress(self) -> bool:
        """Draw the bar: never with --quiet, as asked, else only when stderr is a terminal."""
        if self.quiet:
            return False
        if self.progress is not None:
            return self.progress
        return sys.stderr.isatty()


def _set_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and param.name is not None:
        setattr(ctx.ensure_object(Settings), param.name, True)


def _set_progress(ctx: click.Context, param: click.Parameter, value: bool | None) -> None:
    if value is not None:
        ctx.ensure_object(Settings).progress = value


_quiet = click.option(
    "-q",
    "--quiet",
    is_flag=True,
    expose_value=False,
    callback=_set_flag,
    help="No progress bar, no tables: only errors and warnings (on stderr).",
)
_verbose = click.option(
    "-v",
    "--verbose",
    is_flag=True,
    expose_value=False,
    callback=_set_flag,
    help="Show the traceback of errors.",
)
_progress = click.option(
    "--progress/--no-progress",
    default=None,
    expose_value=False,
    callback=_set_progress,
    help="Draw the progress bar on stderr (default: only when stderr is a terminal).",
)


class RastermatchGroup(click.Group):
    """A click group that reports errors in one line, Ctrl-C with 130 and SIGTERM with 143."""

    def invoke(self, ctx: click.Context) -> Any:
        settings = ctx.ensure_object(Settings)
        try:
            with _sigterm_as_interrupt(), warnings.catch_warnings():
                warnings.showwarning = _warning_printer(settings, warnings.showwarning)
                return super().invoke(ctx)
        except Terminated:
            click.echo("Terminated.", err=True)
            ctx.exit(EXIT_TERMINATED)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except RastermatchError as error:
            if settings.verbose:
                raise
            raise click.ClickException(_message(error)) from None
        except Exception as error:
            if settings.verbose:
                raise
            raise click.ClickException(
                f"unexpected {type(error).__name__}: {redact_text(one_line(error))} (run "
                "with --verbose for the traceback; please report it)"
            ) from None


def _warning_printer(settings: Settings, default: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` for the command line: one line, no source location."""

    def show(message: Any, *args: Any, **kwargs: Any) -> None:
        if settings.verbose:
            default(message, *args, **kwargs)
        else:
            text = redact_text(for_command_line(one_line(message)))
            click.echo(f"Warning: {text}", err=True)

    return show


def _settings() -> Settings:
    ctx = click.get_current_context()
    obj = ctx.find_object(Settings)
    return obj if obj is not None else Settings()


def _echo(text: str = "") -> None:
    """Print to stdout unless ``--quiet``."""
    if not _settings().quiet:
        click.echo(text)


def _log_geometry(report: dict[str, Any]) -> None:
    """The inputs' CRS, resolution and footprint, and their overlap when their grids differ:
    a log on stderr (stdout keeps the command's result), unless ``--quiet``."""
    if not _settings().quiet:
        for line in job_report_lines(report):
            click.echo(line, err=True)


@contextlib.contextmanager
def _cluster(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """:func:`rastermatch.pipeline.dask_cluster`, with its dashboard link on stderr."""
    if workers is not None and scheduler is not None:
        raise click.UsageError("give --workers (a local cluster) or --scheduler, not both")
    with pipeline.dask_cluster(workers, scheduler) as client:
        if client is not None and not _settings().quiet:
            click.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        yield client


# -- shared options ---------------------------------------------------------------------------

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _options(*decorators: Decorator) -> Decorator:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def _input(name: str) -> Decorator:
    return click.argument(name, type=RasterLocation(exists=True))


_output = click.option(
    "-o",
    "--output",
    required=True,
    type=RasterLocation(),
    help="Output raster: .tif/.tiff (tiled GeoTIFF) or .zarr (Zarr v3); a local path or an "
    "object-store URL (s3://bucket/out.zarr, gs://..., az://...).",
)
_nodata = click.option(
    "--nodata",
    type=float,
    help="Nodata value of the source (default: the file's own); also of the reference when it "
    "has no nodata of its own and --reference-nodata is not given.",
)
_mask = click.option(
    "--mask",
    type=RasterLocation(exists=True),
    help="Raster on the source grid; nonzero pixels are left out of the statistics (clouds).",
)
_bands = click.option(
    "--bands", type=BANDS, help="Bands to use, counting from 1, e.g. 1,2,3 (default: all)."
)
_bins = click.option(
    "--bins",
    type=click.IntRange(min=1),
    metavar="N",
    help="Histogram bins for floats and integers wider than 16 bits (default 65536).",
)
_chunks = click.option(
    "--chunks",
    type=Chunks(),
    default="auto",
    show_default=True,
    help="Dask chunks of the inputs: auto, N (N x N pixels) or ROWS,COLUMNS.",
)

_method_levels = (
    click.option(
        "--method",
        type=click.Choice(["nearest", "ceil", "interp", "optimal"]),
        default="nearest",
        show_default=True,
        help="nearest: exact nearest-CDF rule; ceil: the generalized inverse CDF; interp: "
        "scikit-image's piecewise-linear mapping; optimal: the monotone LUT minimising "
        "--objective.",
    ),
    click.option(
        "--levels",
        type=click.Choice(["present", "all"]),
        default="present",
        show_default=True,
        help="Output only levels present in the reference, or any level of its range.",
    ),
)
_reference_nodata = click.option(
    "--reference-nodata",
    type=float,
    help="Nodata value of the reference (default: the file's own, else --nodata).",
)
_reference_bands = click.option(
    "--reference-bands",
    type=BANDS,
    help="Bands of the reference, when they differ from --bands.",
)
_dtype = click.option(
    "--dtype",
    type=click.Choice(_DTYPES, case_sensitive=False),
    help="Output dtype (default: the reference's).",
)

# the rule's objective and its blend with the identity (match, fit, normalize)
_rule = (
    click.option(
        "--objective",
        type=click.Choice(["ks", "w1"]),
        help="With --method optimal: ks (the largest CDF gap) or w1 (the L1 distance between "
        "the CDFs, 1-D Wasserstein; the default).",
    ),
    click.option(
        "--proportion",
        type=click.FloatRange(0, 1),
        default=1.0,
        show_default=True,
        metavar="M",
        help="Blend the match with the source: SOURCE + M * (MATCHED - SOURCE); 0 keeps the "
        "source, 1 is the full match.",
    ),
)


def _overlap_flag(ctx: click.Context, param: click.Parameter, value: bool) -> Any:
    return ctx.params.get("overlap") or value  # --overlap-all, seen first, wins


def _overlap_all_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        ctx.params["overlap"] = "all"


# overlap-only statistics (match, fit, normalize): overlap=True, or "all" with --overlap-all
_overlap = (
    click.option(
        "--overlap",
        is_flag=True,
        callback=_overlap_flag,
        help="Statistics only from pixels valid in both source and reference (nodata, masks, "
        "footprints); a reference on another grid is resampled (nearest) onto the source grid "
        "for the statistics only. The output stays on the source grid.",
    ),
    click.option(
        "--overlap-all",
        is_flag=True,
        expose_value=False,
        callback=_overlap_all_flag,
        help="As --overlap, and for a stack only pixels valid in every date.",
    ),
)

statistics_options = _options(
    *_method_levels,
    *_rule,
    *_overlap,
    _nodata,
    _reference_nodata,
    _mask,
    click.option(
        "--reference-mask",
        type=RasterLocation(exists=True),
        help="Like --mask, on the reference grid.",
    ),
    _bands,
    _reference_bands,
    _bins,
    _dtype,
    _chunks,
)

output_options = _options(
    click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
    click.option("--cog", is_flag=True, help="Write a Cloud-Optimized GeoTIFF with overviews."),
    click.option(
        "--compress",
        type=click.Choice(_COMPRESSIONS, case_sensitive=False),
        help="Compression: GeoTIFF zstd (default), deflate, lzw, lzma, packbits, none; "
        "Zarr lz4 (default), zstd, none.",
    ),
)

cluster_options = _options(
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        metavar="N",
        help="Run on a local dask cluster of N worker processes (default: dask's threads).",
    ),
    click.option(
        "--scheduler",
        metavar="ADDRESS",
        help="Run on the dask cluster at ADDRESS (tcp://host:8786); its workers must see the "
        "input and output paths (URLs, or storage every worker mounts).",
    ),
)


def _print_quality(result: pipeline.MatchResult) -> None:
    _echo("Distance to the reference (KS: Kolmogorov-Smirnov, W1: Wasserstein-1):")
    _echo(result.quality_text())


def _print_written(**paths: Any) -> None:
    written = {k: v for k, v in paths.items() if v is not None}
    width = max(map(len, written), default=0)
    for what, path in written.items():
        _echo(f"{what.ljust(width)}  {_shown(path)}")


def _shown(path: Any) -> str:
    """A written path as printed: a local one absolute, a remote one without credentials."""
    text = str(path)
    if not _looks_remote(text):
        return str(Path(text).absolute())
    loc = location(text)
    return str(loc.path) if loc.kind == "local" else loc.text


# -- the commands -----------------------------------------------------------------------------


@click.group(cls=RastermatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@_quiet
@_verbose
@_progress
@click.version_option(__version__, prog_name="rastermatch")
def main() -> None:
    """Histogram matching of satellite scenes of any size (GeoTIFF/COG and Zarr).

    Statistics are exact (nearest-CDF rule on full-resolution histograms); images are processed
    block by block with dask, on threads or on a dask cluster (--workers, --scheduler).

    Inputs are local paths or URLs (https://, s3://, gs://, az://, /vsi... for GeoTIFF/COG,
    read with range requests; fsspec URLs for Zarr); outputs local paths or object-store URLs.
    Credentials come from the environment (AWS_*, GOOGLE_*, AZURE_*) and are never printed.
    """


@main.command()
@_input("source")
@_input("reference")
@_output
@statistics_options
@output_options
@click.option(
    "--report",
    type=RasterLocation(dir_okay=False),
    help="Also draw the report figure (PNG, PDF or SVG).",
)
@click.option(
    "--lut",
    "lut_path",
    type=RasterLocation(dir_okay=False),
    help="Also save the LUT as JSON (for `rastermatch apply`).",
)
@cluster_options
@_quiet
@_verbose
@_progress
def match(
    source: PathOrURL,
    reference: PathOrURL,
    output: PathOrURL,
    report: PathOrURL | None,
    lut_path: PathOrURL | None,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Match SOURCE to REFERENCE, band by band, into OUTPUT.

    --nodata applies to both scenes unless the reference has a nodata value of its own or
    --reference-nodata is given. Outputs and options are checked before any work; the inputs
    (source, reference, masks) are never written over, --overwrite or not.
    """
    with _cluster(workers, scheduler):
        result = pipeline.match_files(
            source,
            reference,
            output,
            lut_path=lut_path,
            report=report,
            show_progress=_settings().show_progress,
            **options,
        )
    _log_geometry(result.geometry)
    _print_quality(result)
    _print_written(output=result.output, LUT=result.lut_path, report=result.report)


@main.command()
@_input("source")
@_input("reference")
@click.option(
    "-o",
    "--output",
    "lut_path",
    required=True,
    type=RasterLocation(dir_okay=False),
    help="The LUT file (JSON).",
)
@statistics_options
@click.option("--overwrite", is_flag=True, help="Replace an existing LUT file.")
@cluster_options
@_quiet
@_verbose
@_progress
def fit(
    source: PathOrURL,
    reference: PathOrURL,
    lut_path: PathOrURL,
    overwrite: bool,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Fit the LUT matching SOURCE to REFERENCE and save it as JSON.

    Apply it with `rastermatch apply`.

    The quality table is the one the LUT gives on SOURCE, known from the histograms alone.
    """
    with _cluster(workers, scheduler):
        result = pipeline.fit_files(
            source,
            reference,
            lut_path=lut_path,
            overwrite=overwrite,
            show_progress=_settings().show_progress,
            **options,
        )
    _log_geometry(result.geometry)
    _print_quality(result)
    _print_written(LUT=result.lut_path)


@main.command()
@click.argument("sources", nargs=-1, required=True, type=RasterLocation())
@click.option(
    "-r",
    "--reference",
    "references",
    multiple=True,
    required=True,
    type=RasterLocation(),
    help="The reference (a file, folder or pattern); repeat it to pool several references.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=RasterLocation(path_type=str),  # str keeps the trailing / of a folder
    help="DIR/ (a folder: one output per source, named after it) or OUT.zarr (one "
    "(time, band, y, x) stack; the sources must share a grid).",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(["tif", "zarr"]),
    help="Format of the outputs in a folder: tif (GeoTIFF, default) or zarr.",
)
@click.option(
    "--pool",
    type=click.Choice(["counts", "cdf"]),
    default="counts",
    show_default=True,
    help="Pooling several references: counts (summed; scenes weighted by their valid pixels) "
    "or cdf (averaged CDFs; every scene weighted equally).",
)
@_options(
    *_method_levels, *_rule, _nodata, _reference_nodata, _bands, _reference_bands, _bins, _dtype
)
@_options(*_overlap)
@_chunks
@click.option(
    "--mask",
    "masks",
    multiple=True,
    type=RasterLocation(exists=True),
    help="Raster of nonzero pixels left out of the statistics: once for every source (all on "
    "its grid), or once per source in the order of the sources.",
)
@click.option(
    "--reference-mask",
    "reference_masks",
    multiple=True,
    type=RasterLocation(exists=True),
    help="Like --mask, for the references.",
)
@output_options
@click.option(
    "--report",
    type=RasterLocation(dir_okay=False),
    help="Also draw every source's CDF against the reference, before and after (PNG, PDF, SVG).",
)
@click.option(
    "--lut",
    "lut_path",
    type=RasterLocation(path_type=str),
    help="Also save the LUTs as JSON: a folder (DIR/) gets one per source; a file for one source.",
)
@cluster_options
@_quiet
@_verbose
@_progress
def normalize(
    sources: tuple[PathOrURL, ...],
    references: tuple[PathOrURL, ...],
    output: str,
    format_: str | None,
    masks: tuple[PathOrURL, ...],
    reference_masks: tuple[PathOrURL, ...],
    report: PathOrURL | None,
    lut_path: str | None,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Normalize every SOURCE to one (pooled) reference, in one job.

    SOURCES are files, folders (the rasters directly inside) or quoted patterns ("scenes/*.tif");
    the references are left out of what folders and patterns find. -o DIR/ writes one output per
    source, named after it; -o OUT.zarr writes one (time, band, y, x) stack, time labelled by the
    dates in the file names (20200131, 2020-01-31) when every name holds one, else by the file
    names. One statistics pass reads every source and reference once; every output is checked
    before any work.
    """
    with _cluster(workers, scheduler):
        result = pipeline.normalize_files(
            list(sources),
            list(references),
            output,
            format=format_,  # type: ignore[arg-type]
            mask=list(masks) or None,
            reference_mask=list(reference_masks) or None,
            lut_path=lut_path,
            report=report,
            show_progress=_settings().show_progress,
            **options,
        )
    _log_geometry(result.geometry)
    _echo("Distance to the reference (KS: Kolmogorov-Smirnov, W1: Wasserstein-1):")
    _echo(result.quality_text())
    for path in result.outputs:
        _print_written(output=path)
    for path in result.lut_paths:
        _print_written(LUT=path)
    _print_written(report=result.report)


@main.command()
@_input("source")
@_output
@click.option(
    "--detectors",
    type=DetectorCount(),
    help="The detector layout: N detectors along --axis (line i is detector (i + offset) mod "
    "N; Landsat TM/ETM+ 16, MSS 6), or 'column': one detector per column (push-broom; implies "
    "--axis x, and is the default with --axis x).",
)
@click.option(
    "--axis",
    type=click.Choice(["y", "x"]),
    help="The axis the detectors follow each other along: y (lines, default) or x (columns).",
)
@click.option(
    "--offset",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="The detector that recorded the first line (or column).",
)
@click.option(
    "--reference",
    type=DetectorReference(),
    default="pooled",
    show_default=True,
    help="Match every detector to all detectors pooled, or to detector K (a good one).",
)
@_options(*_method_levels)
@click.option(
    "--nodata",
    type=float,
    help="Nodata value of the source (default: the file's own); left out of every detector's "
    "statistics and kept as nodata.",
)
@_mask
@_options(_bands, _bins, _dtype, _chunks)
@output_options
@click.option(
    "--report",
    type=RasterLocation(dir_okay=False),
    help="Also draw the mean profiles along the detector axis and a quicklook, before and after.",
)
@click.option(
    "--lut",
    "lut_path",
    type=RasterLocation(dir_okay=False),
    help="Also save the per-detector LUT as JSON (for `rastermatch apply` on later scenes).",
)
@cluster_options
@_quiet
@_verbose
@_progress
def destripe(
    source: PathOrURL,
    output: PathOrURL,
    detectors: int | str | None,
    axis: str | None,
    offset: int,
    reference: int | str,
    report: PathOrURL | None,
    lut_path: PathOrURL | None,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Balance the detectors of SOURCE (destriping) into OUTPUT.

    Every (band, detector) histogram is matched to the reference (all detectors pooled, or
    detector K), one exact LUT per detector, which corrects non-linear responses too. Outputs
    and options are checked before any work; the inputs are never written over.

    \b
    rastermatch destripe data/striped_L7_ETMs.tif -o destriped.tif --detectors 16
    rastermatch destripe scene.tif -o out.tif --axis x            # one detector per column
    """
    if detectors is None:
        if axis != "x":
            raise click.UsageError(
                "give --detectors N (the number of detectors along y, e.g. 16 for Landsat "
                "TM/ETM+), or --axis x for one detector per column"
            )
        detectors = "column"
    if detectors == "column":
        if axis == "y":
            raise click.UsageError(
                "--detectors column is one detector per column, along x: drop --axis y or give "
                "a number of detectors"
            )
        axis = "x"
    with _cluster(workers, scheduler), _file_as_given(source):
        result = pipeline.destripe_file(
            source,
            output,
            detectors=detectors,
            axis=axis or "y",  # type: ignore[arg-type]
            offset=offset,
            reference=reference,  # type: ignore[arg-type]
            lut_path=lut_path,
            report=report,
            show_progress=_settings().show_progress,
            **options,
        )
    _print_destripe_quality(result)
    _print_written(output=result.output, LUT=result.lut_path, report=result.report)


@contextlib.contextmanager
def _file_as_given(path: Path | str) -> Iterator[None]:
    """Errors name ``path`` as the user gave it (``s.tif``), as every other message of the
    command does: the library names an opened raster after its resolved path
    (``data /abs/s.tif``). A remote location is named as given already."""
    try:
        yield
    except RastermatchError as error:
        if not isinstance(path, Path):
            raise
        resolved = str(Path(path).resolve())
        error.args = tuple(
            re.sub(rf"\b(?:(?:data|source) )?{re.escape(resolved)}(?![\w/])", str(path), a)
            if isinstance(a, str)
            else a
            for a in error.args
        )
        raise


def _print_destripe_quality(result: pipeline.MatchResult) -> None:
    _echo(
        "Stripe power along the detector axis before and after (reduction = 1 - after/before) "
        "and the mean relative deviation of valid pixels from the input:"
    )
    _echo(result.quality_text())


@main.command()
@_input("source")
@click.argument("lut", type=RasterLocation(exists=True, dir_okay=False))
@_output
@_bands
@click.option(
    "--nodata", type=float, help="Source nodata value (default: the file's own, else the LUT's)."
)
@_chunks
@output_options
@cluster_options
@_quiet
@_verbose
@_progress
def apply(
    source: PathOrURL,
    lut: PathOrURL,
    output: PathOrURL,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Map SOURCE through a saved LUT into OUTPUT.

    The LUT comes from `rastermatch fit` or `rastermatch match --lut`.
    """
    with _cluster(workers, scheduler):
        result = pipeline.apply_file(
            source, lut, output, show_progress=_settings().show_progress, **options
        )
    _print_written(output=result.output)


@main.command()
@_input("source")
@_input("reference")
@_output
@_nodata
@_reference_nodata
@_mask
@_bands
@_reference_bands
@_chunks
@output_options
@cluster_options
@_quiet
@_verbose
@_progress
def specify(
    source: PathOrURL,
    reference: PathOrURL,
    output: PathOrURL,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Give SOURCE exactly the histogram of REFERENCE, band by band, into OUTPUT.

    Exact histogram specification (Coltuc, Bolon and Chassery 2006) of integer rasters of at
    most 16 bits: pixels of equal value are ordered by their local means over growing windows,
    then by position, and cut into runs of exactly the reference's counts (rescaled to the
    source's valid pixels). Nodata and masked pixels stay nodata.
    """
    with _cluster(workers, scheduler):
        report = pipeline.specify_file(
            source, reference, output, show_progress=_settings().show_progress, **options
        )
    _echo(report.to_text())
    _print_written(output=output)


@main.command()
@_input("source")
@_output
@_bands
@_nodata
@_mask
@click.option(
    "--range",
    "range_",
    type=Range(),
    help="Spread values uniformly over lo,hi (default: each band's data range).",
)
@_bins
@_chunks
@output_options
@cluster_options
@_quiet
@_verbose
@_progress
def equalize(
    source: PathOrURL,
    output: PathOrURL,
    range_: tuple[float, float] | None,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Histogram-equalize SOURCE into OUTPUT.

    Equalization is matching to a uniform distribution.
    """
    with _cluster(workers, scheduler):
        written = pipeline.equalize_file(
            source, output, range=range_, show_progress=_settings().show_progress, **options
        )
    _print_written(output=written)


@main.command()
@_input("path")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")
@click.option(
    "--stats/--no-stats",
    default=True,
    show_default=True,
    help="Per-band statistics (one read of the file).",
)
@_quiet
@_verbose
@_progress
def info(path: PathOrURL, as_json: bool, stats: bool) -> None:
    """Describe a raster: bands, dtype, nodata, CRS, grid, statistics.

    Prints even with --quiet: the description is the command's result.
    """
    described = pipeline.raster_info(path, statistics=stats)
    if as_json:
        click.echo(json.dumps(_jsonable(described), indent=2))
    else:
        click.echo(format_info(described))


@main.command()
@click.option(
    "-o",
    "--output",
    "outdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("rastermatch-demo"),
    show_default=True,
    help="Folder for the outputs (created if needed).",
)
@click.option("--overwrite", is_flag=True, help="Replace outputs of an earlier run.")
@cluster_options
@_quiet
@_verbose
@_progress
def demo(outdir: Path, overwrite: bool, workers: int | None, scheduler: str | None) -> None:
    """Run the bundled examples into a folder.

    Two matches on the sample scenes, written as GeoTIFF and Zarr, and the destriping of a
    Landsat 7 scene with injected detector stripes, with LUTs and reports.
    """
    with _cluster(workers, scheduler):
        results = pipeline.run_demo(
            outdir, overwrite=overwrite, show_progress=_settings().show_progress
        )
    _echo("Distance to the reference (KS: Kolmogorov-Smirnov, W1: Wasserstein-1):")
    for name, result in results.items():
        _echo()
        _echo(f"== {name}")
        if any("stripe_power_before" in row for row in result.quality):
            _echo("Stripe power along the detector axis, before and after:")
        _echo(result.quality_text())
    _echo()
    _echo(f"Files written to {outdir}:")
    for name in results:
        for path in sorted(outdir.glob(f"{name}.*")):  # hidden temporaries start with "."
            _echo(f"  {path}")


# -- info formatting --------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars unwrapped, NaN and infinities as strings (as LUTs do)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.datetime64):
        return str(np.datetime_as_string(value, unit="auto"))
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _number(value: Any) -> str:
    """Exactly: integers as integers, other floats as their shortest round-trip repr.

    >>> _number(30.0), _number(0.1 + 0.2), _number(628665.0), _number(None)
    ('30', '0.30000000000000004', '628665', '-')
    """
    if value is None:
        return "-"
    if isinstance(value, int | bool) or (hasattr(value, "dtype") and value.dtype.kind in "iub"):
        return str(int(value))
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _crs_line(described: dict[str, Any]) -> str:
    """``EPSG:32618 (WGS 84 / UTM zone 18N)``; a CRS without EPSG code by its name, not its
    WKT (which ``--json`` gives whole)."""
    geometry = described.get("geometry") or {}
    if not described.get("crs"):
        return "-"
    name = geometry.get("crs_name")
    if geometry.get("epsg"):
        return f"EPSG:{geometry['epsg']}" + (f" ({name})" if name else "")
    return f"{name} (no EPSG code)" if name else str(described["crs"])


def format_info(described: dict[str, Any]) -> str:
    """:func:`rastermatch.pipeline.raster_info` as readable text."""
    shape = described["shape"]
    dims = described.get("dims") or ["band", "y", "x"][-len(shape) :]
    height, width = shape[-2:]
    a, b, c, d, e, f = described["transform"]
    bands = described["bands"]
    lines = [str(described["path"])]
    if len(shape) > 3:  # a stack: every dim before the bands, with its labels
        for dim, size in zip(dims[:-3], shape[:-3], strict=True):
            labels = described.get(dim)
            shown = f": {', '.join(map(str, labels))}" if labels else ""
            lines.append(f"  {dim:<10} {size}{shown}")
    lines += [
        f"  bands      {len(bands)}: {', '.join(map(str, bands))}",
        f"  dtype      {described['dtype']}",
        f"  nodata     {_number(described['nodata'])}",
        f"  size       {width} x {height} pixels (columns x rows)",
        f"  CRS        {_crs_line(described)}",
        f"  transform  {', '.join(_number(v) for v in (a, b, c, d, e, f))}",
    ]
    footprint = (described.get("geometry") or {}).get("lonlat_bounds")
    if footprint:
        west, south, east, north = footprint
        across = " (across the antimeridian)" if west > east else ""
        lines.append(
            f"  footprint  lon {west:.5f} to {east:.5f}{across}, lat {south:.5f} to {north:.5f}"
            "  (WGS 84)"
        )
    if b == 0 and d == 0:
        xs, ys = sorted((c, c + a * width)), sorted((f, f + e * height))
        units = (described.get("geometry") or {}).get("units") or ""
        lines.append(f"  pixel      {_number(abs(a))} x {_number(abs(e))} {units}".rstrip())
        lines.append(
            f"  bounds     {', '.join(_number(v) for v in (xs[0], ys[0], xs[1], ys[1]))}"
            "  (left, bottom, right, top)"
        )
    if described.get("chunks"):
        chunks = described["chunks"]
        count = math.prod(len(c) for c in chunks)
        sizes = ", ".join(f"{dim} {max(c)}" for dim, c in zip(dims, chunks, strict=True))
        lines.append(f"  chunks     {sizes}  ({count} chunk{'s' if count != 1 else ''})")
    if described.get("statistics"):
        by_band = len(shape) <= 3
        header = ("band" if by_band else "row", "valid pixels", "min", "max", "mean")
        rows = [
            (
                str(s["band"]) if by_band else str(s.get("row") or "-"),
                str(s["valid"]),
                *(_number(s[k]) for k in ("min", "max", "mean")),
            )
            for s in described["statistics"]
        ]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines.append("")
        for row in [header, tuple("-" * w for w in widths), *rows]:
            cells = [row[0].ljust(widths[0])] + [
                v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)
            ]
            lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
