"""The ``rastermatch`` command line: parse arguments, call :mod:`rastermatch.pipeline`, print.

Every command is a thin shell around one pipeline function. Three things are done once, for all
commands, by :class:`RastermatchGroup`:

1. expected errors (:class:`~rastermatch.RastermatchError`, and ``OSError``/``ValueError`` from
   bad input) become one ``Error: ...`` line on stderr and exit status 1, without a traceback
   unless ``--verbose``; usage errors keep click's exit status 2;
2. Ctrl-C exits with status 130 (the writers remove their temporary outputs on the way out);
3. warnings are printed as one ``Warning: ...`` line each.

``--workers N`` / ``--scheduler ADDRESS`` run a command on a ``dask.distributed`` cluster: the
client exists for the duration of the command only (see :func:`dask_cluster`).

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
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from . import __version__, pipeline
from .errors import OutputExistsError, RastermatchError, RasterWriteError

__all__ = ["BandList", "Chunks", "Range", "RastermatchGroup", "dask_cluster", "main"]

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

_RASTER_SUFFIXES = (".tif", ".tiff", ".zarr")
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


BANDS = BandList()

# -- errors, interrupts and warnings, handled once --------------------------------------------


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages are joined with "; ")."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


@dataclass
class Settings:
    """``--quiet`` and ``--verbose``, shared with the commands through ``ctx.obj``.

    Both flags are accepted before the command (``rastermatch -q match ...``) and after it
    (``rastermatch match ... -q``).
    """

    quiet: bool = False
    verbose: bool = False


def _set_flag(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value and param.name is not None:
        setattr(ctx.ensure_object(Settings), param.name, True)


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


class RastermatchGroup(click.Group):
    """A click group that reports expected errors in one line and Ctrl-C with status 130."""

    def invoke(self, ctx: click.Context) -> Any:
        settings = ctx.ensure_object(Settings)
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _warning_printer(settings, warnings.showwarning)
                return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (RastermatchError, OSError, ValueError) as error:
            if settings.verbose:
                raise
            raise click.ClickException(one_line(error)) from None


def _warning_printer(settings: Settings, default: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` for the command line: one line, no source location."""

    def show(message: Any, *args: Any, **kwargs: Any) -> None:
        if settings.verbose:
            default(message, *args, **kwargs)
        else:
            click.echo(f"Warning: {one_line(message)}", err=True)

    return show


def _settings() -> Settings:
    ctx = click.get_current_context()
    obj = ctx.find_object(Settings)
    return obj if obj is not None else Settings()


def _echo(text: str = "") -> None:
    """Print to stdout unless ``--quiet``."""
    if not _settings().quiet:
        click.echo(text)


# -- the dask cluster around a command --------------------------------------------------------


@contextlib.contextmanager
def dask_cluster(
    workers: int | None = None, scheduler: str | None = None, *, quiet: bool = False
) -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of the block, or None (dask's threads).

    ``workers``: a local cluster of that many processes, sharing the machine's cores;
    ``scheduler``: connect to a running scheduler (its workers must see the same paths). Both
    the client and a local cluster are closed on the way out, also on errors and Ctrl-C.
    """
    if workers is None and scheduler is None:
        yield None
        return
    from dask.system import CPU_COUNT
    from distributed import Client

    with contextlib.ExitStack() as stack:
        if scheduler is not None:
            client = stack.enter_context(Client(scheduler))
        else:
            assert workers is not None
            client = stack.enter_context(
                pipeline.local_cluster(workers, threads_per_worker=max(1, CPU_COUNT // workers))
            )
        if not quiet:
            click.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        yield client


# -- checks before any work -------------------------------------------------------------------


def check_output(
    path: Path,
    *,
    overwrite: bool,
    inputs: Sequence[Path | None] = (),
    raster: bool = True,
) -> None:
    """Refuse a bad output path before the (long) statistics pass rather than after it.

    The writers check again when they write (that check is race-free); this one only saves the
    work, and keeps ``--lut`` and ``--report`` files from being replaced without ``--overwrite``.
    """
    if raster and path.suffix.lower() not in _RASTER_SUFFIXES:
        raise click.BadParameter(
            f"cannot tell the format of {path} from its suffix; use .tif or .tiff (GeoTIFF) or "
            ".zarr (Zarr)",
            param_hint="'-o' / '--output'",
        )
    target = path.expanduser().resolve()
    for source in inputs:
        if source is not None and target == Path(source).expanduser().resolve():
            raise RasterWriteError(
                f"refusing to write {path}: it is the input {source}; write to another path"
            )
    if not target.parent.is_dir():
        raise RasterWriteError(f"the directory {path.parent} does not exist; create it first")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path} exists already; pass --overwrite to replace it")


def check_cluster_options(workers: int | None, scheduler: str | None) -> None:
    if workers is not None and scheduler is not None:
        raise click.UsageError("give --workers (a local cluster) or --scheduler, not both")


# -- shared options ---------------------------------------------------------------------------

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _options(*decorators: Decorator) -> Decorator:
    def apply(f: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def _input(name: str) -> Decorator:
    return click.argument(name, type=click.Path(exists=True, path_type=Path))


_output = click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output raster: .tif/.tiff (tiled GeoTIFF) or .zarr (Zarr v3).",
)
_nodata = click.option(
    "--nodata", type=float, help="Source nodata value (default: the file's own)."
)
_mask = click.option(
    "--mask",
    type=click.Path(exists=True, path_type=Path),
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

statistics_options = _options(
    click.option(
        "--method",
        type=click.Choice(["nearest", "interp"]),
        default="nearest",
        show_default=True,
        help="nearest: exact nearest-CDF rule; interp: scikit-image's piecewise-linear mapping.",
    ),
    click.option(
        "--levels",
        type=click.Choice(["present", "all"]),
        default="present",
        show_default=True,
        help="Output only levels present in the reference, or any level of its range.",
    ),
    _nodata,
    click.option(
        "--reference-nodata", type=float, help="Reference nodata value (default: the file's own)."
    ),
    _mask,
    click.option(
        "--reference-mask",
        type=click.Path(exists=True, path_type=Path),
        help="Like --mask, on the reference grid.",
    ),
    _bands,
    click.option(
        "--reference-bands",
        type=BANDS,
        help="Bands of the reference, when they differ from --bands.",
    ),
    _bins,
    click.option(
        "--dtype",
        type=click.Choice(_DTYPES, case_sensitive=False),
        help="Output dtype (default: the reference's).",
    ),
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
        "input and output paths.",
    ),
)


def _check_write_options(output: Path, cog: bool, workers: Any, scheduler: Any) -> None:
    check_cluster_options(workers, scheduler)
    if cog and output.suffix.lower() == ".zarr":
        raise click.UsageError(
            f"--cog makes a Cloud-Optimized GeoTIFF, but {output} is a Zarr path"
        )


def _print_quality(result: pipeline.MatchResult) -> None:
    _echo("Distance to the reference (KS: Kolmogorov-Smirnov, W1: Wasserstein-1):")
    _echo(result.quality_text())


def _print_written(**paths: Path | None) -> None:
    written = {k: v for k, v in paths.items() if v is not None}
    width = max(map(len, written), default=0)
    for what, path in written.items():
        _echo(f"{what.ljust(width)}  {path.absolute()}")


# -- the commands -----------------------------------------------------------------------------


@click.group(cls=RastermatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@_quiet
@_verbose
@click.version_option(__version__, prog_name="rastermatch")
def main() -> None:
    """Histogram matching of satellite scenes of any size (GeoTIFF/COG and Zarr).

    Statistics are exact (nearest-CDF rule on full-resolution histograms); images are processed
    block by block with dask, on threads or on a dask cluster (--workers, --scheduler).
    """


@main.command()
@_input("source")
@_input("reference")
@_output
@statistics_options
@output_options
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw the report figure (PNG, PDF or SVG).",
)
@click.option(
    "--lut",
    "lut_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also save the LUT as JSON (for `rastermatch apply`).",
)
@cluster_options
@_quiet
@_verbose
def match(
    source: Path,
    reference: Path,
    output: Path,
    report: Path | None,
    lut_path: Path | None,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Match SOURCE to REFERENCE, band by band, into OUTPUT."""
    _check_write_options(output, options["cog"], workers, scheduler)
    check_output(output, overwrite=options["overwrite"], inputs=[source, reference])
    for path in (lut_path, report):
        if path is not None:
            inputs = [source, reference, output]
            check_output(path, overwrite=options["overwrite"], inputs=inputs, raster=False)
    settings = _settings()
    with dask_cluster(workers, scheduler, quiet=settings.quiet):
        result = pipeline.match_files(
            source,
            reference,
            output,
            lut_path=lut_path,
            report=report,
            show_progress=not settings.quiet,
            **options,
        )
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
    type=click.Path(dir_okay=False, path_type=Path),
    help="The LUT file (JSON).",
)
@statistics_options
@click.option("--overwrite", is_flag=True, help="Replace an existing LUT file.")
@cluster_options
@_quiet
@_verbose
def fit(
    source: Path,
    reference: Path,
    lut_path: Path,
    overwrite: bool,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Fit the LUT matching SOURCE to REFERENCE and save it as JSON.

    Apply it with `rastermatch apply`.

    The quality table is the one the LUT gives on SOURCE, known from the histograms alone.
    """
    check_cluster_options(workers, scheduler)
    check_output(lut_path, overwrite=overwrite, inputs=[source, reference], raster=False)
    settings = _settings()
    with dask_cluster(workers, scheduler, quiet=settings.quiet):
        result = pipeline.fit_files(
            source, reference, lut_path=lut_path, show_progress=not settings.quiet, **options
        )
    _print_quality(result)
    _print_written(LUT=result.lut_path)


@main.command()
@_input("source")
@click.argument("lut", type=click.Path(exists=True, dir_okay=False, path_type=Path))
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
def apply(
    source: Path,
    lut: Path,
    output: Path,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Map SOURCE through a saved LUT into OUTPUT.

    The LUT comes from `rastermatch fit` or `rastermatch match --lut`.
    """
    _check_write_options(output, options["cog"], workers, scheduler)
    check_output(output, overwrite=options["overwrite"], inputs=[source, lut])
    settings = _settings()
    with dask_cluster(workers, scheduler, quiet=settings.quiet):
        result = pipeline.apply_file(
            source, lut, output, show_progress=not settings.quiet, **options
        )
    _print_written(output=result.output)


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
def equalize(
    source: Path,
    output: Path,
    range_: tuple[float, float] | None,
    workers: int | None,
    scheduler: str | None,
    **options: Any,
) -> None:
    """Histogram-equalize SOURCE into OUTPUT.

    Equalization is matching to a uniform distribution.
    """
    _check_write_options(output, options["cog"], workers, scheduler)
    check_output(output, overwrite=options["overwrite"], inputs=[source, options["mask"]])
    settings = _settings()
    with dask_cluster(workers, scheduler, quiet=settings.quiet):
        written = pipeline.equalize_file(
            source, output, range=range_, show_progress=not settings.quiet, **options
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
def info(path: Path, as_json: bool, stats: bool) -> None:
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
def demo(outdir: Path, overwrite: bool, workers: int | None, scheduler: str | None) -> None:
    """Run the bundled examples into a folder.

    Two matches on the sample scenes, written as GeoTIFF and Zarr, with LUTs and reports.
    """
    check_cluster_options(workers, scheduler)
    settings = _settings()
    with dask_cluster(workers, scheduler, quiet=settings.quiet):
        results = pipeline.run_demo(outdir, overwrite=overwrite, show_progress=not settings.quiet)
    _echo("Distance to the reference (KS: Kolmogorov-Smirnov, W1: Wasserstein-1):")
    for name, result in results.items():
        _echo()
        _echo(f"== {name}")
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
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _number(value: Any) -> str:
    if value is None:
        return "-"
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    return str(int(value)) if value.is_integer() else f"{value:.6g}"


def format_info(described: dict[str, Any]) -> str:
    """:func:`rastermatch.pipeline.raster_info` as readable text."""
    nbands, height, width = described["shape"]
    a, b, c, d, e, f = described["transform"]
    lines = [
        str(described["path"]),
        f"  bands      {nbands}: {', '.join(map(str, described['bands']))}",
        f"  dtype      {described['dtype']}",
        f"  nodata     {_number(described['nodata'])}",
        f"  size       {width} x {height} pixels (columns x rows)",
        f"  CRS        {described['crs'] or '-'}",
        f"  transform  {', '.join(_number(v) for v in (a, b, c, d, e, f))}",
    ]
    if b == 0 and d == 0:
        xs, ys = sorted((c, c + a * width)), sorted((f, f + e * height))
        lines.append(f"  pixel      {_number(abs(a))} x {_number(abs(e))}")
        lines.append(
            f"  bounds     {', '.join(_number(v) for v in (xs[0], ys[0], xs[1], ys[1]))}"
            "  (left, bottom, right, top)"
        )
    if described.get("chunks"):
        chunks = described["chunks"]
        count = math.prod(len(c) for c in chunks)
        sizes = ", ".join(
            f"{dim} {max(c)}" for dim, c in zip(("band", "y", "x"), chunks, strict=True)
        )
        lines.append(f"  chunks     {sizes}  ({count} chunk{'s' if count != 1 else ''})")
    if described.get("statistics"):
        header = ("band", "valid pixels", "min", "max", "mean")
        rows = [
            (str(s["band"]), str(s["valid"]), *(_number(s[k]) for k in ("min", "max", "mean")))
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
