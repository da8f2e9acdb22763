"""The command line, through click's CliRunner on the sample scenes (and once as a real process).

The CLI is a thin shell over rastermatch.pipeline, so these tests check what the shell adds:
argument parsing, the files each command writes, what it prints, and how it refuses bad input
(one ``Error:`` line, a non-zero exit status, no traceback).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result

import rastermatch
from rastermatch import OutputExistsError
from rastermatch.cli import BandList, Chunks, DetectorCount, DetectorReference, Range, main
from rastermatch.errors import StaleTemporaryWarning

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
NAIP = DATA / "riohist_source1_naip.tif"  # 3 bands uint8, no nodata
LANDSAT = DATA / "riohist_reference1_landsat.tif"  # 3 bands uint16, nodata 0
ARRNORM = DATA / "arrnorm_target.tif"  # 4 bands uint16
RGB = DATA / "rasterio_RGB.byte.tif"  # 3 bands uint8, nodata 0


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, (result.output, result.exception)


def assert_refused(result: Result, exit_code: int, *fragments: str) -> None:
    """One ``Error:`` line on stderr naming the problem, the exit status, no traceback."""
    assert result.exit_code == exit_code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # handled, not an escaped exception
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert "=True" not in errors[0]  # options, not Python keywords
    assert result.stdout == ""


def values(path: Path) -> tuple[np.ndarray, object]:
    data = rastermatch.open_raster(path)
    return data.values, data.rio.nodata


@pytest.fixture(scope="module")
def matched(tmp_path_factory) -> dict[str, Path]:
    """``rastermatch match`` NAIP -> Landsat to a GeoTIFF, with the LUT and the report."""
    tmp = tmp_path_factory.mktemp("cli")
    paths = {"output": tmp / "matched.tif", "lut": tmp / "matched.lut.json"}
    paths["report"] = tmp / "report.png"
    result = run(
        "match", NAIP, LANDSAT, "-o", paths["output"], "--lut", paths["lut"],
        "--report", paths["report"], "--chunks", "256",
    )  # fmt: skip
    assert_ok(result)
    paths["tmp"] = tmp
    paths["stdout"] = result.stdout  # type: ignore[assignment]
    return paths


# -- parameter types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "text", "expected"),
    [
        (BandList(), "1,2,3", (1, 2, 3)),
        (BandList(), " 3, 1", (3, 1)),
        (Range(), "0,255", (0.0, 255.0)),
        (Range(), "-1.5,2e3", (-1.5, 2000.0)),
        (Chunks(), "auto", "auto"),
        (Chunks(), "2048", {"y": 2048, "x": 2048}),
        (Chunks(), "256,1024", {"y": 256, "x": 1024}),
    ],
)
def test_param_types_convert(param, text, expected):
    assert param.convert(text, None, None) == expected


@pytest.mark.parametrize(
    ("param", "text"),
    [
        (BandList(), "0"),
        (BandList(), "1,,2"),
        (BandList(), "red"),
        (BandList(), "1,2,1"),
        (Range(), "5,1"),
        (Range(), "0"),
        (Range(), "0,nan"),
        (Chunks(), "0"),
        (Chunks(), "1,2,3"),
        (Chunks(), "big"),
    ],
)
def test_param_types_refuse(param, text):
    import click

    with pytest.raises(click.BadParameter):
        param.convert(text, None, None)


# -- match, fit, apply, equalize ---------------------------------------------------------------


def test_match_to_geotiff_writes_output_lut_and_report(matched):
    out, nodata = values(matched["output"])
    assert out.dtype == np.uint16 and out.shape == (3, 726, 546)
    assert nodata == 0 and out.min() > 0  # the source has no nodata: every pixel is valid
    assert rastermatch.read_provenance(matched["output"])["method"] == "nearest"
    assert rastermatch.LUT.load(matched["lut"]).nbands == 3
    assert matched["report"].read_bytes()[:4] == b"\x89PNG"
    stdout = matched["stdout"]
    assert "KS before" in stdout and "W1 after" in stdout  # the quality table
    for key in ("output", "lut", "report"):
        assert str(matched[key]) in stdout


def test_match_to_zarr_with_lut_and_report(matched, tmp_path):
    out = tmp_path / "matched.zarr"
    result = run(
        "match", NAIP, LANDSAT, "-o", out, "--lut", tmp_path / "lut.json",
        "--report", tmp_path / "report.png",
    )  # fmt: skip
    assert_ok(result)
    zarr_values, zarr_nodata = values(out)
    tif_values, tif_nodata = values(matched["output"])
    np.testing.assert_array_equal(zarr_values, tif_values)  # chunking does not matter either
    assert zarr_values.dtype == tif_values.dtype and zarr_nodata == tif_nodata
    assert (tmp_path / "lut.json").read_bytes() == matched["lut"].read_bytes()
    assert (tmp_path / "report.png").is_file()


def test_fit_then_apply_gives_the_output_of_match(matched, tmp_path):
    lut = tmp_path / "fit.lut.json"
    result = run("fit", NAIP, LANDSAT, "-o", lut)
    assert_ok(result)
    assert "KS after" in result.stdout and str(lut) in result.stdout
    assert lut.read_bytes() == matched["lut"].read_bytes()

    applied = tmp_path / "applied.tif"
    assert_ok(run("apply", NAIP, lut, "-o", applied, "--cog"))
    a, a_nodata = values(applied)
    m, m_nodata = values(matched["output"])
    np.testing.assert_array_equal(a, m)
    assert a.dtype == m.dtype and a_nodata == m_nodata
    with rasterio.open(applied) as cog:
        assert cog.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"


def test_match_options_reach_the_pipeline(tmp_path):
    """Band selection, nodata, method, dtype and compression on a 4-band scene."""
    out = tmp_path / "bands.zarr"
    result = run(
        "match", ARRNORM, DATA / "arrnorm_ref_adjusted2target.tif", "-o", out,
        "--bands", "4,2", "--nodata", "0", "--method", "interp", "--dtype", "float32",
        "--compress", "zstd",
    )  # fmt: skip
    assert_ok(result)
    data = rastermatch.open_raster(out)
    assert data.shape == (2, 349, 536) and data.dtype == np.float32
    assert rastermatch.read_provenance(out)["method"] == "interp"
    source = rastermatch.open_raster(ARRNORM).values[[3, 1]]
    nodata = data.rio.nodata
    invalid = np.isnan(data.values) if np.isnan(nodata) else data.values == nodata
    np.testing.assert_array_equal(invalid, source == 0)  # nodata stays nodata, nothing else


def test_equalize(tmp_path):
    out = tmp_path / "equalized.tif"
    result = run("equalize", NAIP, "-o", out, "--range", "0,255", "--bands", "1")
    assert_ok(result)
    assert str(out) in result.stdout
    eq, _ = values(out)
    assert eq.shape == (1, 726, 546) and eq.dtype == np.uint8
    assert eq.min() < 5 and eq.max() == 255  # spread over the whole range
    counts = np.bincount(eq.ravel(), minlength=256)
    cdf = np.cumsum(counts) / counts.sum()
    assert np.abs(cdf - np.arange(1, 257) / 256).max() < 0.02  # flat: a uniform CDF


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_quiet_prints_nothing_on_success(tmp_path):
    result = run("--quiet", "match", NAIP, LANDSAT, "-o", tmp_path / "q.tif")
    assert_ok(result)
    assert result.output == ""
    result = run("fit", NAIP, LANDSAT, "-o", tmp_path / "q.json", "-q")  # after the command too
    assert_ok(result)
    assert result.output == ""


# -- info -------------------------------------------------------------------------------------


def test_info_text():
    result = run("info", RGB)
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[0] == str(RGB)
    text = result.stdout
    for fragment in ("bands      3: 1, 2, 3", "dtype      uint8", "nodata     0", "EPSG:32618",
                     "791 x 718 pixels", "valid pixels"):  # fmt: skip
        assert fragment in text, text
    table = lines[lines.index(next(x for x in lines if x.startswith("band "))) + 2 :]
    assert [row.split()[0] for row in table] == ["1", "2", "3"]


def test_info_json_matches_the_data():
    result = run("info", "--json", RGB)
    assert_ok(result)
    described = json.loads(result.stdout)
    data = rastermatch.open_raster(RGB).values
    assert described["dtype"] == "uint8" and described["shape"] == [3, 718, 791]
    assert described["nodata"] == 0 and described["crs"] == "EPSG:32618"
    for band, stats in zip(data, described["statistics"], strict=True):
        valid = band[band != 0]
        assert stats["valid"] == valid.size
        assert (stats["min"], stats["max"]) == (valid.min(), valid.max())
        assert stats["mean"] == pytest.approx(valid.mean())


def test_info_of_a_zarr_output_without_statistics(matched, tmp_path):
    out = tmp_path / "copy.zarr"
    assert_ok(run("apply", NAIP, matched["lut"], "-o", out, "--chunks", "128,256"))
    described = json.loads(run("info", out, "--json", "--no-stats").stdout)
    assert "statistics" not in described
    assert described["dtype"] == "uint16" and described["shape"] == [3, 726, 546]


# -- refusals ---------------------------------------------------------------------------------


def test_refuses_an_existing_output_before_any_work(matched, tmp_path):
    lut = tmp_path / "new.lut.json"
    result = run("match", NAIP, LANDSAT, "-o", matched["output"], "--lut", lut)
    assert_refused(result, 1, "exists already", "--overwrite")
    assert not lut.exists()  # refused before the LUT was fitted and saved
    assert_refused(run("fit", NAIP, LANDSAT, "-o", matched["lut"]), 1, "--overwrite")


def test_overwrite_replaces(matched, tmp_path):
    out = tmp_path / "twice.tif"
    assert_ok(run("-q", "apply", NAIP, matched["lut"], "-o", out))
    assert_refused(run("apply", NAIP, matched["lut"], "-o", out), 1, "exists already")
    assert_ok(run("-q", "apply", NAIP, matched["lut"], "-o", out, "--overwrite"))


@pytest.mark.parametrize(
    ("args", "exit_code", "fragments"),
    [
        (["match", NAIP, LANDSAT, "-o", NAIP, "--overwrite"], 1, ["refusing", "input"]),
        (["match", "missing.tif", LANDSAT, "-o", "x.tif"], 2, ["missing.tif", "does not exist"]),
        (["info", "missing.zarr"], 2, ["does not exist"]),
        (["match", NAIP, LANDSAT, "-o", "x.tif", "--bands", "0,1"], 2, ["--bands", "from 1"]),
        (["match", NAIP, LANDSAT, "-o", "x.tif", "--bands", "r,g"], 2, ["--bands"]),
        (["match", NAIP, LANDSAT, "-o", "x.tif", "--bands", "1,5"], 1, ["3 bands", "[5]"]),
        (["match", NAIP, ARRNORM, "-o", "x.tif"], 1, ["3 bands", "has 4", "--reference-bands"]),
        (["match", NAIP, LANDSAT, "-o", "x.png"], 1, ["suffix", ".zarr"]),
        (["match", NAIP, LANDSAT, "-o", "x.zarr", "--cog"], 1, ["--cog", "x.zarr"]),
        (["match", NAIP, LANDSAT, "-o", "no/such/dir/x.tif"], 1, ["does not exist"]),
        (["match", NAIP, LANDSAT, "-o", "x.tif", "--workers", "2", "--scheduler", "tcp://h:1"],
         2, ["--workers", "--scheduler"]),
        (["equalize", NAIP, "-o", "x.tif", "--range", "9,1"], 2, ["--range", "lo < hi"]),
        (["match", NAIP, LANDSAT, "-o", "x.tif", "--chunks", "huge"], 2, ["--chunks"]),
    ],
)  # fmt: skip
def test_refusals_are_one_line(args, exit_code, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_refused(run(*args), exit_code, *fragments)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporaries left


def test_refuses_a_corrupt_lut(matched, tmp_path):
    not_json = tmp_path / "truncated.json"
    not_json.write_text(matched["lut"].read_text()[:100])
    result = run("apply", NAIP, not_json, "-o", tmp_path / "a.tif")
    assert_refused(result, 1, "truncated.json", "not readable JSON")

    edited = json.loads(matched["lut"].read_text())
    edited["source_histogram"]["binning"]["lo"][0] = -1e15  # the crafted file
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(edited))
    result = run("apply", NAIP, tampered, "-o", tmp_path / "a.tif")
    assert_refused(result, 1, "tampered.json", "binning.lo[0] is -1e15")
    assert not (tmp_path / "a.tif").exists()


def test_verbose_shows_the_exception(matched):
    result = run("match", NAIP, LANDSAT, "-o", matched["output"], "--verbose")
    assert result.exit_code == 1
    assert isinstance(result.exception, OutputExistsError)  # raised through: a traceback


def test_ctrl_c_exits_130(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rastermatch.pipeline, "match_files", interrupted)
    result = run("match", NAIP, LANDSAT, "-o", tmp_path / "x.tif")
    assert result.exit_code == 130
    assert result.stderr.strip() == "Interrupted."


def test_version():
    result = run("--version")
    assert_ok(result)
    assert rastermatch.__version__ in result.stdout


# -- end to end -------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo(tmp_path):
    result = run("demo", "-o", tmp_path)
    assert_ok(result)
    for name in ("naip_to_landsat", "landsat_to_composite"):
        assert f"== {name}" in result.stdout
        for suffix in (".tif", ".zarr", ".lut.json", ".report.png"):
            path = tmp_path / f"{name}{suffix}"
            assert path.exists() and str(path) in result.stdout
        tif, _ = values(tmp_path / f"{name}.tif")
        zarr, _ = values(tmp_path / f"{name}.zarr")
        np.testing.assert_array_equal(tif, zarr)
    assert "== landsat7_destriped" in result.stdout and "Stripe power" in result.stdout
    for suffix in (".tif", ".lut.json", ".report.png"):
        assert (tmp_path / f"landsat7_destriped{suffix}").exists()
    record = rastermatch.read_provenance(tmp_path / "landsat7_destriped.tif")
    assert record["operation"] == "destripe" and record["detectors"]["count"] == 16
    assert_refused(run("demo", "-o", tmp_path), 1, "exists already", "--overwrite")


@pytest.mark.slow
def test_workers_give_bit_identical_output(matched, tmp_path):
    out = tmp_path / "cluster.tif"
    lut = tmp_path / "cluster.lut.json"
    result = run("match", NAIP, LANDSAT, "-o", out, "--lut", lut, "--workers", "2")
    assert_ok(result)
    assert "dask dashboard: http" in result.stderr
    cluster_values, cluster_nodata = values(out)
    thread_values, thread_nodata = values(matched["output"])
    np.testing.assert_array_equal(cluster_values, thread_values)
    assert cluster_values.dtype == thread_values.dtype and cluster_nodata == thread_nodata
    assert lut.read_bytes() == matched["lut"].read_bytes()


@pytest.mark.slow
def test_scheduler_address(matched, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        out = tmp_path / "remote.zarr"
        result = run("-q", "match", NAIP, LANDSAT, "-o", out, "--scheduler",
                     cluster.scheduler_address)  # fmt: skip
        assert_ok(result)
    np.testing.assert_array_equal(values(out)[0], values(matched["output"])[0])


@pytest.mark.slow
def test_console_script_as_a_process(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }

    def cli(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rastermatch", *map(str, args)],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
        )  # fmt: skip

    info = cli("info", "--json", LANDSAT)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["dtype"] == "uint16"

    done = cli("match", NAIP, LANDSAT, "-o", "out.zarr")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Error" not in done.stderr
    assert "KS after" in done.stdout
    assert rastermatch.open_raster(tmp_path / "out.zarr").dtype == np.uint16


# -- nodata for both scenes, progress, errors, signals, exact info, identical bytes ------------


def _strip_nodata_tag(src: Path, dst: Path) -> None:
    with rasterio.open(src) as f:
        profile, data = f.profile, f.read()
    profile.update(nodata=None)
    with rasterio.open(dst, "w", **profile) as f:
        f.write(data)


def test_nodata_applies_to_a_reference_without_its_own(tmp_path):
    """The issue's Landsat pair: the reference has the zero border but no nodata tag."""
    reference = tmp_path / "reference_untagged.tif"
    _strip_nodata_tag(DATA / "arrnorm_ref_adjusted2target.tif", reference)
    assert rastermatch.open_raster(reference).rio.nodata is None
    assert_ok(run("-q", "match", ARRNORM, reference, "-o", tmp_path / "a.tif", "--nodata", "0"))
    explicit = run("match", ARRNORM, reference, "-o", tmp_path / "b.tif", "--nodata", "0",
                   "--reference-nodata", "0")  # fmt: skip
    assert_ok(explicit)
    assert "Warning" not in explicit.stderr  # the output nodata did not have to move
    tagged = run("-q", "match", ARRNORM, DATA / "arrnorm_ref_adjusted2target.tif", "-o",
                 tmp_path / "c.tif", "--nodata", "0")  # fmt: skip
    assert_ok(tagged)
    a, a_nodata = values(tmp_path / "a.tif")
    source = rastermatch.open_raster(ARRNORM).values
    assert a_nodata == 0
    np.testing.assert_array_equal(a == 0, source == 0)  # no valid pixel mapped onto nodata
    for other in ("b.tif", "c.tif"):
        b, b_nodata = values(tmp_path / other)
        np.testing.assert_array_equal(a, b)
        assert b_nodata == a_nodata


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, monkeypatch):
    monkeypatch.setattr(rastermatch.pipeline, "PROGRESS_AFTER_SECONDS", 0.0)
    # CliRunner's stderr is not a terminal: no bar, no carriage returns anywhere
    quiet = run("match", NAIP, LANDSAT, "-o", tmp_path / "a.tif")
    assert_ok(quiet)
    # (the geometry log on stderr states an overlap in %; the bar says "% Completed")
    assert "\r" not in quiet.output and "% Completed" not in quiet.stderr
    shown = run("match", NAIP, LANDSAT, "-o", tmp_path / "b.tif", "--progress")
    assert_ok(shown)
    assert "100%" in shown.stderr and "\r" in shown.stderr  # the bar, on stderr
    assert "\r" not in shown.stdout and "KS after" in shown.stdout  # the table, on stdout
    off = run("--progress", "match", NAIP, LANDSAT, "-o", tmp_path / "c.tif", "--no-progress")
    assert_ok(off)
    assert "% Completed" not in off.stderr
    assert_ok(muted := run("-q", "--progress", "fit", NAIP, LANDSAT, "-o", tmp_path / "l.json"))
    assert muted.output == ""


def test_unexpected_errors_are_one_line(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero somewhere deep")

    monkeypatch.setattr(rastermatch.pipeline, "match_files", broken)
    result = run("match", NAIP, LANDSAT, "-o", tmp_path / "x.tif")
    assert_refused(result, 1, "unexpected ZeroDivisionError", "somewhere deep", "--verbose",
                   "please report it")  # fmt: skip
    verbose = run("match", NAIP, LANDSAT, "-o", tmp_path / "x.tif", "-v")
    assert isinstance(verbose.exception, ZeroDivisionError)


def test_sigterm_exits_143(monkeypatch, tmp_path):
    import signal
    import time

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not turned into an exception")

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(rastermatch.pipeline, "match_files", terminated)
    result = run("match", NAIP, LANDSAT, "-o", tmp_path / "x.tif")
    assert result.exit_code == 143
    assert result.stderr.strip() == "Terminated."
    assert signal.getsignal(signal.SIGTERM) == before  # restored after the command


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("x.tif exists already; pass overwrite=True (--overwrite) to replace it",
         "x.tif exists already; pass --overwrite to replace it"),
        ("x exists; allow replacing it (overwrite=True, or --overwrite on the command line)",
         "x exists; allow replacing it (--overwrite)"),
        ("select as many bands (bands=, --bands on the command line)",
         "select as many bands (--bands)"),
        ("cog=True (--cog) makes a COG", "--cog makes a COG"),
        ("pass nodata=0 or drop the band", "pass --nodata 0 or drop the band"),
        ("band 1 is all nodata=0", "band 1 is all nodata=0"),
    ],
)  # fmt: skip
def test_messages_are_worded_for_the_command_line(message, expected):
    from rastermatch.cli import for_command_line

    assert for_command_line(message) == expected


def test_info_prints_coordinates_exactly(tmp_path):
    from rasterio.transform import from_origin

    path = tmp_path / "fine.tif"
    transform = from_origin(123456.789012345, 0.1 + 0.2, 0.1, 1 / 3)
    profile = {"driver": "GTiff", "width": 4, "height": 3, "count": 1, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": transform}  # fmt: skip
    with rasterio.open(path, "w", **profile) as f:
        f.write(np.ones((1, 3, 4), np.uint8))
    result = run("info", path, "--no-stats")
    assert_ok(result)
    text = result.stdout
    assert "123456.789012345" in text and "0.30000000000000004" in text
    assert "pixel      0.1 x 0.3333333333333333" in text
    right = 123456.789012345 + 0.1 * 4
    assert repr(right) in text  # the bounds too, to the last digit


def test_identical_inputs_give_identical_bytes(tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    for name in ("a", "b"):
        assert_ok(run("-q", "match", NAIP, LANDSAT, "-o", tmp_path / f"{name}.tif",
                      "--lut", tmp_path / f"{name}.json"))  # fmt: skip
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert "created" not in rastermatch.read_provenance(tmp_path / "a.tif")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert_ok(run("-q", "match", NAIP, LANDSAT, "-o", tmp_path / "c.tif"))
    assert rastermatch.read_provenance(tmp_path / "c.tif")["created"] == "2023-11-14T22:13:20+00:00"


def test_a_failed_job_leaves_nothing(tmp_path, monkeypatch):
    """A failure in the write removes the staged LUT file and report too."""
    from rastermatch import RasterWriteError

    def failing_write(*args, **kwargs):
        raise RasterWriteError("writing out.tif failed: disk full (simulated)")

    monkeypatch.setattr(rastermatch.pipeline, "write_raster", failing_write)
    monkeypatch.chdir(tmp_path)
    result = run("match", NAIP, LANDSAT, "-o", "out.tif", "--lut", "out.json", "--report",
                 "out.png")  # fmt: skip
    assert_refused(result, 1, "out.tif", "disk full")
    assert list(tmp_path.iterdir()) == []


def test_stale_staged_temporaries_are_removed(tmp_path):
    from rastermatch.io import _host_hash, _temp_prefix

    final = tmp_path / "calib.json"
    prefix, host = _temp_prefix(final), _host_hash()
    dead = tmp_path / f"{prefix}-999999999-{host}-abcd0123.tmp.json"  # no such process
    live = tmp_path / f"{prefix}-{os.getpid()}-{host}-abcd0123.tmp.json"
    other = tmp_path / f"{prefix}-999999999-0000ffff-abcd0123.tmp.json"  # another host
    for path in (dead, live, other):
        path.write_text("{}")
    with warnings.catch_warnings():  # shown as a warning line, as outside the test suite
        warnings.simplefilter("default", StaleTemporaryWarning)
        result = run("fit", NAIP, LANDSAT, "-o", final)
    assert_ok(result)
    assert "Warning:" in result.stderr and "another host" in result.stderr  # left in place
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["calib.json", live.name, other.name]
    )


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "exit_code"), [("SIGTERM", 143), ("SIGINT", 130)])
def test_signal_mid_write_leaves_nothing(tmp_path, signum, exit_code):
    """A real ``rastermatch match`` process, signalled once its output's temporary exists."""
    import signal
    import time

    rng = np.random.default_rng(7)
    scene = tmp_path / "in"
    scene.mkdir()
    profile = {"driver": "GTiff", "width": 2048, "height": 2048, "count": 2, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": rasterio.transform.from_origin(0, 0, 10, 10),
               "tiled": True, "blockxsize": 512, "blockysize": 512}  # fmt: skip
    for name in ("src.tif", "ref.tif"):
        with rasterio.open(scene / name, "w", **profile) as f:
            f.write(rng.integers(0, 4096, (2, 2048, 2048), dtype=np.uint16))
    before = {p.name: p.read_bytes() for p in scene.iterdir()}
    out = tmp_path / "out"
    out.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "rastermatch", "match", scene / "src.tif", scene / "ref.tif",
         "-o", out / "matched.tif", "--lut", out / "matched.json", "--compress", "lzma",
         "--chunks", "512"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # Ctrl-C as a terminal delivers it, even when this run was started in the background
        # (where the shell has SIGINT ignored, and children inherit that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        # the write started: the raster's temporary (the job stages the output under a
        # temporary name, which the writer writes through its own: "..matched.tif.…")
        if any(".matched.tif." in p.name for p in out.iterdir()):
            process.send_signal(getattr(signal, signum))
            break
        time.sleep(0.005)
    stdout, stderr = process.communicate(timeout=120)
    if process.returncode == 0:
        pytest.skip("the job finished before it could be signalled")
    assert process.returncode == exit_code, stderr
    assert stderr.strip().splitlines()[-1] in ("Terminated.", "Interrupted."), stderr
    assert "Traceback" not in stderr and stdout == ""
    assert list(out.iterdir()) == []  # no output, no LUT file, no temporary
    assert {p.name: p.read_bytes() for p in scene.iterdir()} == before


@pytest.mark.slow
def test_disk_full_names_the_output_and_leaves_nothing(tmp_path):
    """A file-size limit (as a full disk): one error line naming the output, exit 1, no file."""
    import resource
    import signal

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "rastermatch", "match", NAIP, LANDSAT, "-o"]
    # the same job once without the limit first: numba caches the compiled kernels beside the
    # package, and a kernel compiled for the first time under the limit would fail to cache
    # (a cache file is larger than the limit) before the output is ever written
    warm = tmp_path.parent / f"{tmp_path.name}-warm"
    warm.mkdir()
    subprocess.run([*command, "w.tif"], capture_output=True, env=env, cwd=warm, timeout=120)
    done = subprocess.run(
        [*command, "matched.tif"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, preexec_fn=limit,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), done.stderr
    assert "matched.tif" in lines[0] and "unexpected" not in lines[0], lines[0]
    assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []


# -- normalize: many sources to one reference -------------------------------------------------


def _dated_scenes(folder: Path, dates: list[str], seed: int = 8) -> np.ndarray:
    """One 4-band uint16 base scene (a window of arrnorm_target.tif) through a random strictly
    increasing map of its levels per date, written as ``scene_<date>.tif``; returns the base."""
    from rasterio.windows import Window

    window = Window(100, 100, 96, 64)
    with rasterio.open(ARRNORM) as f:
        base = f.read(window=window)
        profile = f.profile | {"width": 96, "height": 64,
                               "transform": f.window_transform(window), "nodata": 0}  # fmt: skip
    profile.pop("blockxsize", None), profile.pop("blockysize", None)
    profile.update(tiled=False, compress=None)
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for date in dates:
        levels = np.concatenate([[0], np.cumsum(rng.integers(1, 4, 65535))])  # 0 stays 0
        with rasterio.open(folder / f"scene_{date}.tif", "w", **profile) as dst:
            dst.write(np.minimum(levels[base], 65535).astype(np.uint16))
    return base


def test_normalize_into_a_folder_matches_each_source_alone(tmp_path):
    out = tmp_path / "out"
    result = run(
        "normalize", NAIP, RGB, "--reference", LANDSAT, "-o", f"{out}/", "--format", "zarr",
        "--lut", f"{out}/", "--report", tmp_path / "report.png",
    )  # fmt: skip
    assert_ok(result)
    lines = result.stdout.splitlines()
    assert lines[1].split()[:2] == ["source", "band"]
    assert (
        sum(NAIP.name in line for line in lines) >= 3
        and sum(RGB.name in line for line in lines) >= 3
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "rasterio_RGB.byte.lut.json", "rasterio_RGB.byte.zarr",
        "riohist_source1_naip.lut.json", "riohist_source1_naip.zarr",
    ]  # fmt: skip
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    for source in (NAIP, RGB):
        alone = rastermatch.match_histograms(
            rastermatch.open_raster(source), rastermatch.open_raster(LANDSAT)
        )
        stem = source.name.removesuffix(".tif")
        written, nodata = values(out / f"{stem}.zarr")
        np.testing.assert_array_equal(written, alone.values)
        assert nodata == alone.rio.nodata
        assert rastermatch.LUT.load(out / f"{stem}.lut.json").nbands == 3
        assert rastermatch.read_provenance(out / f"{stem}.zarr")["operation"] == "normalize"


def test_normalize_a_dated_series_into_one_stack(tmp_path):
    """The oracle: dates made from one base scene through strictly increasing level maps,
    normalized onto the base, all equal the base exactly; time labels from the file names."""
    dates = ["20200131", "20200302", "20200415"]
    base = _dated_scenes(tmp_path / "scenes", dates)
    (tmp_path / "base.tif").write_bytes(b"")  # replaced below by the base scene itself
    ref = rastermatch.open_raster(tmp_path / "scenes" / f"scene_{dates[0]}.tif").copy(data=base)
    rastermatch.write_raster(ref, tmp_path / "base.tif", overwrite=True)
    result = run(
        "normalize", tmp_path / "scenes", "-r", tmp_path / "base.tif", "-o", tmp_path / "s.zarr",
    )  # fmt: skip
    assert_ok(result)
    stack = rastermatch.open_raster(tmp_path / "s.zarr")
    assert stack.dims == ("time", "band", "y", "x")
    assert [str(t)[:10] for t in stack["time"].values] == ["2020-01-31", "2020-03-02", "2020-04-15"]
    for t in range(len(dates)):
        np.testing.assert_array_equal(stack.values[t], base)
    assert stack.rio.crs == ref.rio.crs and stack.rio.transform() == ref.rio.transform()
    rows = [line for line in result.stdout.splitlines() if line.startswith("scene_")]
    assert len(rows) == 3 * 4
    assert all(float(line.split()[3]) == 0 for line in rows)  # KS after

    record = rastermatch.read_provenance(tmp_path / "s.zarr")
    assert record["time"] == ["2020-01-31", "2020-03-02", "2020-04-15"] and len(record["luts"]) == 3
    lut = rastermatch.LUT.from_dict(
        {**record["luts"][1], "reference_histogram": record["reference_histogram"]}
    )
    scene = rastermatch.open_raster(tmp_path / "scenes" / f"scene_{dates[1]}.tif")
    np.testing.assert_array_equal(lut.apply(scene).values, base)
    info = run("info", tmp_path / "s.zarr")
    assert_ok(info)
    lines = info.stdout.splitlines()
    assert lines[1].split() == ["time", "3:", "2020-01-31,", "2020-03-02,", "2020-04-15"]
    assert lines[-1].startswith("time 2020-04-15, band 4")


def test_normalize_pools_several_references(tmp_path):
    from rastermatch.pipeline import normalize_files

    refs = [LANDSAT, tmp_path / "other.tif"]
    other = rastermatch.open_raster(LANDSAT)
    rastermatch.write_raster(other[:, ::2, ::3], refs[1])
    result = normalize_files([NAIP], refs, tmp_path / "out/")
    pooled = result.luts[0].reference_hist
    alone = [rastermatch.band_histograms(rastermatch.open_raster(r)).compute() for r in refs]
    np.testing.assert_array_equal(pooled.counts, alone[0].counts + alone[1].counts)
    assert result.outputs == [tmp_path / "out" / NAIP.name]


def test_normalize_refuses_sources_on_different_grids(tmp_path):
    result = run("normalize", NAIP, RGB, "-r", LANDSAT, "-o", tmp_path / "s.zarr")
    assert_refused(result, 1, RGB.name, "grid", "folder")
    assert list(tmp_path.iterdir()) == []


def test_normalize_refuses_an_existing_output_before_any_work(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / RGB.name).write_bytes(b"earlier")

    def no_statistics(*args, **kwargs):
        raise AssertionError("statistics computed before the outputs were checked")

    monkeypatch.setattr("rastermatch.pipeline.fit_many", no_statistics)
    result = run("normalize", NAIP, RGB, "-r", LANDSAT, "-o", f"{out}/")
    assert_refused(result, 1, RGB.name, "exists already", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == [RGB.name]
    assert (out / RGB.name).read_bytes() == b"earlier"


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["LC08_L1TP_044034_20200131_20200210_01_T1.tif", "S2A_MSIL2A_20200305T103321.zarr"],
         ["2020-01-31", "2020-03-05"]),
        (["a_2020-01-31.tif", "b_2021_12_01.tif"], ["2020-01-31", "2021-12-01"]),
        (["north.tif", "south_20200131.tif"], ["north", "south_20200131"]),  # not every name
        (["x_20200131.tif", "y_20200131.tif"], ["x_20200131", "y_20200131"]),  # one date twice
        (["a_20200231.tif", "b_20200301.tif"], ["a_20200231", "b_20200301"]),  # no 31 February
        (["id_120200131.tif", "id_220200131.tif"], ["id_120200131", "id_220200131"]),  # digits
    ],
)  # fmt: skip
def test_time_labels(names, expected):
    from rastermatch.pipeline import time_labels

    labels = time_labels(names)
    shown = [str(v)[:10] if labels.dtype.kind == "M" else v for v in labels]
    assert shown == expected


def test_time_labels_refuse_two_sources_of_one_name():
    from rastermatch.pipeline import time_labels

    with pytest.raises(rastermatch.OptionError, match="both be labelled 'scene'"):
        time_labels(["a/scene.tif", "b/scene.zarr"])


def test_sources_from_folders_and_patterns(tmp_path):
    from rastermatch.pipeline import expand_sources

    found = expand_sources([DATA, str(DATA / "riohist_*.tif")], leave_out=[LANDSAT])
    assert LANDSAT not in found and found.count(NAIP) == 1
    assert len(found) == len(list(DATA.glob("*.tif"))) - 1
    with pytest.raises(rastermatch.RasterReadError, match="matches no file"):
        expand_sources(str(tmp_path / "*.tif"))
    with pytest.raises(rastermatch.RasterReadError, match=r"holds no \.tif"):
        expand_sources(tmp_path)


def test_normalize_interrupted_midway_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C while the second output is written: the first output, the LUT files, the report
    and the folder the job created are all gone."""
    from rastermatch import pipeline

    write = pipeline._write
    calls = []

    def interrupted_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_write", interrupted_second)
    out = tmp_path / "out"
    result = run(
        "normalize", NAIP, RGB, "-r", LANDSAT, "-o", f"{out}/", "--lut", f"{out}/",
        "--report", tmp_path / "report.png",
    )  # fmt: skip
    assert result.exit_code == 130
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("failure", [KeyboardInterrupt, "commit"])
def test_normalize_overwrite_failing_late_keeps_previous_outputs(tmp_path, monkeypatch, failure):
    """An --overwrite run interrupted while the second raster is written, or failing as its
    outputs are moved into place, leaves every output of the previous run byte-identical and
    no temporaries."""
    from rastermatch import pipeline

    out = tmp_path / "out"
    assert_ok(run("normalize", NAIP, RGB, "-r", LANDSAT, "-o", f"{out}/", "--lut", f"{out}/"))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) == 6  # two rasters, their LUT sidecars (provenance), two LUT files
    write, commit, calls = pipeline._write, pipeline._Staged.commit, []

    def interrupted_second(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write(*args, **kwargs)

    def failing_commit(self):
        raise OSError(28, "No space left on device (simulated)")

    if failure is KeyboardInterrupt:
        monkeypatch.setattr(pipeline, "_write", interrupted_second)
    else:
        monkeypatch.setattr(pipeline._Staged, "commit", failing_commit)
    result = run(
        "normalize", NAIP, RGB, "-r", LANDSAT, "-o", f"{out}/", "--lut", f"{out}/", "--overwrite",
        "--method", "interp",
    )  # fmt: skip
    assert result.exit_code != 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.setattr(pipeline, "_write", write)
    monkeypatch.setattr(pipeline._Staged, "commit", commit)
    assert_ok(run("normalize", NAIP, RGB, "-r", LANDSAT, "-o", f"{out}/", "--lut", f"{out}/",
                  "--overwrite", "--method", "interp"))  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    assert {p.name: p.read_bytes() for p in out.iterdir()} != before


def test_match_overwrite_interrupted_keeps_the_previous_outputs(tmp_path, monkeypatch):
    from rastermatch import pipeline

    assert_ok(run("match", NAIP, LANDSAT, "-o", tmp_path / "m.tif", "--lut", tmp_path / "m.json"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline._Staged, "commit", interrupted)
    result = run("match", NAIP, LANDSAT, "-o", tmp_path / "m.tif", "--lut", tmp_path / "m.json",
                 "--overwrite", "--method", "interp")  # fmt: skip
    assert result.exit_code == 130
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_normalize_a_stack_source_is_refused_up_front_or_written_as_zarr(tmp_path, monkeypatch):
    """A Zarr (time, band) stack as a source: refused before the statistics, naming it, when
    the output is one stack of the sources or a folder of GeoTIFFs; a folder of Zarr stores
    takes it. A folder of sources never picks up the stack the job itself writes."""
    from rastermatch import pipeline

    scenes = tmp_path / "scenes"
    _dated_scenes(scenes, ["20200131", "20200302"])
    ref = tmp_path / "ref.tif"
    ref.write_bytes((scenes / "scene_20200131.tif").read_bytes())
    assert_ok(run("-q", "normalize", scenes, "-r", ref, "-o", scenes / "st.zarr"))
    # run again over the same folder: st.zarr is the output, not a third source
    assert_ok(run("-q", "normalize", scenes, "-r", ref, "-o", scenes / "st.zarr", "--overwrite"))
    assert rastermatch.open_raster(scenes / "st.zarr").sizes["time"] == 2

    def no_statistics(*args, **kwargs):
        raise AssertionError("the statistics pass ran")

    with monkeypatch.context() as m:
        m.setattr(pipeline, "fit_many", no_statistics)
        result = run("normalize", scenes / "st.zarr", "-r", ref, "-o", tmp_path / "o.zarr")
        assert_refused(
            result, 1, "st.zarr is already a stack", "(time: 2, band: 4)", "--format zarr"
        )
        result = run("normalize", scenes, "-r", ref, "-o", f"{tmp_path / 'tifs'}/")
        assert_refused(result, 1, "st.zarr is a stack", "GeoTIFF", "--format zarr")
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "tifs").exists()
    assert_ok(run("-q", "normalize", scenes / "st.zarr", "-r", ref, "-o", f"{tmp_path / 'z'}/",
                  "--format", "zarr"))  # fmt: skip
    assert rastermatch.open_raster(tmp_path / "z" / "st.zarr").dims == ("time", "band", "y", "x")


def test_apply_a_stack_lut_to_its_stack_aligns_rows_by_label(tmp_path):
    """A (time, band) LUT saved by normalize maps the stack it came from exactly as normalize
    did; a scene with no time dim, or other bands, is refused naming both sets of rows."""
    scenes = tmp_path / "scenes"
    _dated_scenes(scenes, ["20200131", "20200302"])
    ref = tmp_path / "ref.tif"
    ref.write_bytes((scenes / "scene_20200131.tif").read_bytes())
    assert_ok(run("-q", "normalize", scenes, "-r", ref, "-o", tmp_path / "st.zarr"))
    stack = tmp_path / "st.zarr"
    assert_ok(run("-q", "normalize", stack, "-r", ref, "-o", f"{tmp_path / 'n'}/", "--format",
                  "zarr", "--lut", f"{tmp_path / 'luts'}/"))  # fmt: skip
    lut = tmp_path / "luts" / "st.lut.json"
    assert rastermatch.LUT.load(lut).nrows == 8
    assert_ok(run("-q", "apply", stack, lut, "-o", tmp_path / "ap.zarr"))
    applied = rastermatch.open_raster(tmp_path / "ap.zarr")
    assert applied.dims == ("time", "band", "y", "x")
    np.testing.assert_array_equal(applied.values, values(tmp_path / "n" / "st.zarr")[0])
    result = run("apply", scenes / "scene_20200131.tif", lut, "-o", tmp_path / "one.tif")
    assert_refused(result, 1, "rows (time: 2, band: 4)", "(band: 4) and no time")
    result = run("apply", stack, lut, "-o", tmp_path / "two.zarr", "--bands", "1,2")
    assert_refused(result, 1, "(time: 2, band: 2)", "select as many bands")
    assert not (tmp_path / "one.tif").exists() and not (tmp_path / "two.zarr").exists()


# -- destripe ---------------------------------------------------------------------------------

STRIPED = DATA / "striped_L7_ETMs.tif"  # 6 bands uint8, 16 detectors along y with own responses


def _detector_spread(scene: np.ndarray, count: int = 16, skip: tuple[int, ...] = ()) -> np.ndarray:
    """Per band, the spread (max - min) of the detectors' mean levels (but those in ``skip``):
    stripes make it large."""
    lines = scene.astype(np.float64).mean(axis=2)  # (band, y)
    detector = np.arange(scene.shape[1]) % count
    keep = [d for d in range(count) if d not in skip]
    means = np.stack([lines[:, detector == d].mean(axis=1) for d in keep], axis=1)
    return means.max(axis=1) - means.min(axis=1)


@pytest.fixture(scope="module")
def destriped(tmp_path_factory) -> dict[str, Path]:
    """``rastermatch destripe`` on the striped sample, with the LUT file."""
    tmp = tmp_path_factory.mktemp("destripe")
    paths = {"output": tmp / "destriped.tif", "lut": tmp / "detectors.lut.json"}
    result = run(
        "destripe", STRIPED, "-o", paths["output"], "--detectors", "16", "--lut", paths["lut"],
        "--chunks", "128",
    )  # fmt: skip
    assert_ok(result)
    paths["tmp"] = tmp
    paths["stdout"] = result.stdout  # type: ignore[assignment]
    return paths


@pytest.mark.parametrize(
    ("param", "text", "expected"),
    [
        (DetectorCount(), "16", 16),
        (DetectorCount(), "column", "column"),
        (DetectorCount(), "Columns", "column"),
        (DetectorReference(), "pooled", "pooled"),
        (DetectorReference(), "7", 7),
    ],
)
def test_detector_param_types_convert(param, text, expected):
    assert param.convert(text, None, None) == expected


@pytest.mark.parametrize(
    ("param", "text"),
    [(DetectorCount(), "0"), (DetectorCount(), "sixteen"), (DetectorCount(), "1.5"),
     (DetectorReference(), "-1"), (DetectorReference(), "best")],
)  # fmt: skip
def test_detector_param_types_refuse(param, text):
    import click

    with pytest.raises(click.BadParameter):
        param.convert(text, None, None)


def test_destripe_removes_the_stripes_and_keeps_the_grid(destriped):
    out, nodata = values(destriped["output"])
    scene, _ = values(STRIPED)
    assert out.dtype == np.uint8 and out.shape == scene.shape and nodata is None
    # the detectors' mean levels agree after balancing (within 1.5 levels), not before; the
    # detector with the dead low end (5) merged its low levels into one, which no LUT can split
    before, after = _detector_spread(scene, skip=(5,)), _detector_spread(out, skip=(5,))
    assert (before > 25).all() and (after < 1.5).all(), (before, after)
    assert (_detector_spread(out) < _detector_spread(scene) / 4).all()
    src, dst = rastermatch.open_raster(STRIPED), rastermatch.open_raster(destriped["output"])
    assert dst.rio.crs == src.rio.crs and dst.rio.transform() == src.rio.transform()
    # the quality table: stripe power before and after, one row per band
    stdout = destriped["stdout"]
    assert "Stripe power" in stdout and "detectors.lut.json" in stdout
    record = rastermatch.read_provenance(destriped["output"])
    assert record["operation"] == "destripe"
    assert record["detectors"]["count"] == 16 and record["detectors"]["axis"] == "y"
    assert record["reference"] == "pooled"
    assert record["lut"]["detectors"]["count"] == 16  # small enough to travel with the output
    assert len(record["quality"]) == 6
    assert all(r["stripe_reduction"] >= 0.95 for r in record["quality"]), record["quality"]


def test_destripe_lut_reapplies_with_apply(destriped, tmp_path):
    lut = rastermatch.LUT.load(destriped["lut"])
    assert lut.detectors is not None and lut.detectors.count == 16
    again = tmp_path / "again.tif"
    assert_ok(run("-q", "apply", STRIPED, destriped["lut"], "-o", again))
    np.testing.assert_array_equal(values(again)[0], values(destriped["output"])[0])
    # a scene of a different band count is refused before any work
    result = run("apply", STRIPED, destriped["lut"], "-o", tmp_path / "b.tif", "--bands", "1,2")
    assert_refused(result, 1, "select as many bands")
    assert not (tmp_path / "b.tif").exists()


def test_destripe_to_one_detector_into_zarr_with_a_report(tmp_path):
    """--reference K matches every detector to detector K: K's lines come out unchanged."""
    out, report = tmp_path / "k.zarr", tmp_path / "k.png"
    assert_ok(run("-q", "destripe", STRIPED, "-o", out, "--detectors", "16", "--reference",
                  "3", "--bands", "4", "--report", report))  # fmt: skip
    got, scene = values(out)[0], values(STRIPED)[0][[3]]
    np.testing.assert_array_equal(got[:, 3::16], scene[:, 3::16])
    assert rastermatch.read_provenance(out)["reference"] == 3
    assert (_detector_spread(got) < _detector_spread(scene)).all()
    assert report.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "exit_code", "fragments"),
    [
        (["-o", STRIPED, "--detectors", "16", "--overwrite"], 1, ["refusing", "input"]),
        (["-o", "x.tif", "--detectors", "16", "--lut", STRIPED], 1, ["input"]),
        (["-o", "x.tif", "--detectors", "16", "--report", "x.tif"], 1, ["report", "x.tif"]),
        (["-o", "x.tif", "--detectors", "0"], 2, ["--detectors", "at least 1"]),
        (["-o", "x.tif", "--detectors", "many"], 2, ["--detectors", "'column'"]),
        (["-o", "x.tif"], 2, ["--detectors N"]),
        (["-o", "x.tif", "--detectors", "column", "--axis", "y"], 2, ["--axis y"]),
        (["-o", "x.tif", "--detectors", "16", "--reference", "16"], 1,
         ["--reference", "no detector 16", "0..15"]),
        (["-o", "x.tif", "--detectors", "16", "--offset", "16"], 1, ["offset", "0..15"]),
        (["-o", "x.tif", "--detectors", "16", "--bands", "7"], 1, ["6 bands", "[7]"]),
        (["-o", "x.tif", "--detectors", "16", "--nodata", "300"], 1, ["300", "uint8"]),
        (["-o", "x.zarr", "--detectors", "16", "--cog"], 1, ["--cog"]),
    ],
)  # fmt: skip
def test_destripe_refusals_are_one_line(args, exit_code, fragments, tmp_path, monkeypatch):
    from rastermatch import balance

    def no_statistics(*args, **kwargs):
        raise AssertionError("the statistics pass ran")

    monkeypatch.setattr(balance, "fit_detectors", no_statistics)
    monkeypatch.chdir(tmp_path)
    assert_refused(run("destripe", STRIPED, *args), exit_code, *fragments)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporaries left


def test_destripe_errors_name_the_file_as_given(tmp_path, monkeypatch):
    """The statistics pass's errors name the source as typed, like every other message of the
    command (the library names an opened file after its resolved path)."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copy(STRIPED, "s.tif")
    result = run("destripe", "s.tif", "-o", "out.tif", "--detectors", "100000")
    assert_refused(result, 1, "100000 detectors along y but s.tif has 352 lines")
    assert str(tmp_path) not in result.stderr and "data " not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]


def test_destripe_refuses_an_existing_output(destriped, tmp_path):
    lut = tmp_path / "new.lut.json"
    result = run("destripe", STRIPED, "-o", destriped["output"], "--detectors", "16", "--lut", lut)
    assert_refused(result, 1, "exists already", "--overwrite")
    assert not lut.exists()
    result = run("destripe", STRIPED, "-o", tmp_path / "n.tif", "--detectors", "16", "--lut",
                 destriped["lut"])  # fmt: skip
    assert_refused(result, 1, "exists already", "--overwrite")
    assert list(tmp_path.iterdir()) == []
