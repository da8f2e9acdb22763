"""The LUT rules on the command line: --method, --objective and --proportion on match, fit and
normalize, checked against the library they call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner, Result

from rastermatch import LUT, fit_lut, open_raster
from rastermatch.cli import main

DATA = Path(__file__).resolve().parent.parent / "data"
NAIP = DATA / "riohist_source1_naip.tif"  # 3 bands uint8, no nodata
LANDSAT = DATA / "riohist_reference1_landsat.tif"  # 3 bands uint16, nodata 0


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, (result.output, result.exception)


def refused(result: Result, exit_code: int) -> str:
    """The one ``Error:`` line of a refused command (no traceback, nothing on stdout)."""
    assert result.exit_code == exit_code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as f:
        return f.read()


@pytest.mark.parametrize(
    "args",
    [
        ("--method", "ceil", "--proportion", "0.5"),
        ("--method", "optimal", "--objective", "ks"),
        ("--method", "optimal", "--proportion", "0.25"),
    ],
    ids=["ceil-half", "optimal-ks", "optimal-w1-quarter"],
)
def test_fit_records_the_rule_as_the_library_fits_it(tmp_path, args):
    assert_ok(run("fit", NAIP, LANDSAT, "-o", tmp_path / "lut.json", *args))
    lut = LUT.load(tmp_path / "lut.json")
    kw = dict(zip(args[::2], args[1::2], strict=True))
    want = fit_lut(
        open_raster(NAIP),
        open_raster(LANDSAT),
        method=kw["--method"],
        objective=kw.get("--objective"),
        proportion=float(kw.get("--proportion", 1)),
    )
    assert (lut.method, lut.objective, lut.proportion) == (
        want.method,
        want.objective,
        want.proportion,
    )
    assert lut.objective == (None if kw["--method"] != "optimal" else kw.get("--objective", "w1"))
    np.testing.assert_array_equal(lut.table, want.table)


def test_match_with_a_rule_writes_what_its_lut_gives(tmp_path):
    out, lut_path = tmp_path / "out.tif", tmp_path / "lut.json"
    args = ("--method", "ceil", "--proportion", "0.5", "--lut", lut_path)
    assert_ok(run("match", NAIP, LANDSAT, "-o", out, *args))
    lut = LUT.load(lut_path)
    assert (lut.method, lut.proportion) == ("ceil", 0.5)
    np.testing.assert_array_equal(read(out), lut.apply(read(NAIP)))


def test_normalize_with_proportion_0_keeps_the_sources(tmp_path):
    out = tmp_path / "normalized/"
    args = ("--method", "optimal", "--objective", "w1", "--proportion", "0")
    assert_ok(run("normalize", NAIP, "-r", LANDSAT, "-o", f"{out}/", *args))
    written = read(out / NAIP.name)
    assert written.dtype == np.uint16  # the reference's dtype
    np.testing.assert_array_equal(written, read(NAIP))


@pytest.mark.parametrize("command", ["match", "fit", "normalize"])
def test_bad_rule_options_are_refused_before_any_work(tmp_path, command):
    out = {"match": tmp_path / "o.tif", "fit": tmp_path / "l.json", "normalize": f"{tmp_path}/n/"}
    inputs = (NAIP, "-r", LANDSAT) if command == "normalize" else (NAIP, LANDSAT)
    line = refused(run(command, *inputs, "-o", out[command], "--objective", "ks"), 1)
    assert "objective 'ks' is what method 'optimal' minimises; pass --method 'optimal'" in line
    line = refused(run(command, *inputs, "-o", out[command], "--proportion", "nan"), 1)
    assert "proportion is nan; pass a number from 0" in line
    line = refused(run(command, *inputs, "-o", out[command], "--proportion", "1.5"), 2)
    assert "--proportion" in line and "0<=x<=1" in line
    line = refused(run(command, *inputs, "-o", out[command], "--method", "cubic"), 2)
    assert "'nearest', 'ceil', 'interp', 'optimal'" in line
    assert list(tmp_path.iterdir()) == []
