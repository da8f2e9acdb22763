"""Remote locations through the command line and the pipeline jobs.

The inputs are served over HTTP with range requests and the outputs go to an S3 API (moto),
both loopback servers in their own processes (tests/servers.py), started once per module.
What is checked is what the command line and the jobs add: URLs reach the library unchanged
(``click.Path`` and ``pathlib.Path`` would mangle them), the results equal the local ones,
messages and records never show credentials, and a failure is one ``Error:`` line.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from servers import (
    HTTPServer,
    refused_url,
    s3_environment,
    shared_s3_server,
    start_http_server,
)

import rastermatch
from rastermatch import pipeline
from rastermatch.cli import main

DATA = Path(__file__).resolve().parent.parent / "data"
NAIP = "riohist_source1_naip.tif"  # 3 bands uint8, 546 x 726
LANDSAT = "riohist_reference1_landsat.tif"  # 3 bands uint16, 246 x 329, another grid
SECRET = "s3cr3t-token"
BANDS = ("--bands", "2")  # one band: the jobs are not what is tested


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> HTTPServer:
    folder = tmp_path_factory.mktemp("served")
    for name in (NAIP, LANDSAT):
        (folder / name).write_bytes((DATA / name).read_bytes())
    server = start_http_server(folder)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_match(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same job on the local files: what every remote run must equal."""
    out = tmp_path_factory.mktemp("local") / "matched.tif"
    assert_ok(run("match", DATA / NAIP, DATA / LANDSAT, "-o", out, *BANDS))
    return out


@pytest.fixture
def bucket():
    server = shared_s3_server()
    name = f"cli-{uuid.uuid4().hex[:12]}"
    with s3_environment(server):
        server.create_bucket(name)
        yield name


def run(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_ok(result: Result) -> None:
    assert result.exit_code == 0, (result.output, result.exception)


def assert_refused(result: Result, *fragments: str) -> str:
    """One ``Error:`` line, exit status 1, no traceback; returns the line."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def values(where: object) -> np.ndarray:
    return rastermatch.open_raster(where).values


def test_match_over_http_equals_the_local_match(http, local_match, tmp_path):
    """URLs with a user, password and signature: the result equals the local one, and neither
    what is printed nor the output's record shows the credentials."""
    secret = f"http://user:{SECRET}@127.0.0.1:{http.port}"
    src, ref = f"{secret}/{NAIP}?X-Amz-Signature={SECRET}", f"{secret}/{LANDSAT}"
    out = tmp_path / "matched.tif"
    result = run("match", src, ref, "-o", out, "--lut", tmp_path / "m.lut.json", *BANDS)
    assert_ok(result)
    np.testing.assert_array_equal(values(out), values(local_match))
    assert SECRET not in result.output
    assert http.url(NAIP) in result.stderr  # the job's geometry log names the inputs
    record = rastermatch.read_provenance(out)
    assert SECRET not in json.dumps(record)
    assert record["inputs"]["source"] == http.url(NAIP)


def test_info_over_http(http):
    remote = run("info", http.url(LANDSAT), "--json")
    assert_ok(remote)
    local = run("info", DATA / LANDSAT, "--json")
    described, expected = json.loads(remote.stdout), json.loads(local.stdout)
    assert described.pop("path") == http.url(LANDSAT)
    expected.pop("path")
    assert described == expected


def test_unreachable_and_missing_urls_are_one_line_errors(http, tmp_path):
    out = tmp_path / "x.tif"
    line = assert_refused(run("match", refused_url(NAIP), DATA / LANDSAT, "-o", out), "127.0.0.1")
    assert "Path" not in line  # not click's "Path ... does not exist": the URL was tried
    assert_refused(run("info", http.url("missing.tif")), "missing.tif")
    # a local path keeps click's check and message (exit status 2)
    missing = run("match", tmp_path / "missing.tif", DATA / LANDSAT, "-o", out)
    assert missing.exit_code == 2 and "does not exist" in missing.stderr
    assert not out.exists()


def test_local_only_outputs_and_patterns_say_so(http, tmp_path):
    src, ref = http.url(NAIP), http.url(LANDSAT)
    assert_refused(
        run("match", src, ref, "-o", tmp_path / "o.tif", "--lut", "s3://b/o.lut.json"),
        "s3://b/o.lut.json",
        "local",
    )
    assert_refused(run("normalize", http.url("*.tif"), "-r", ref, "-o", tmp_path / "n/"), "local")
    assert_refused(run("normalize", src, "-r", ref, "-o", "s3://b/folder/"), "local folder")
    assert list(tmp_path.iterdir()) == []


def test_file_urls_are_local_paths():
    remote = run("info", (DATA / LANDSAT).as_uri(), "--json", "--no-stats")
    assert_ok(remote)
    assert json.loads(remote.stdout)["path"] == str(DATA / LANDSAT)
    missing = run("info", (DATA / "missing.tif").as_uri())
    assert missing.exit_code == 2 and "does not exist" in missing.stderr


def test_match_to_zarr_on_s3(http, local_match, bucket):
    out = f"s3://{bucket}/matched.zarr"
    result = run("match", http.url(NAIP), http.url(LANDSAT), "-o", out, *BANDS)
    assert_ok(result)
    assert out in result.stdout
    np.testing.assert_array_equal(values(out), values(local_match))
    # an existing output is refused before any work
    assert_refused(run("match", http.url(NAIP), http.url(LANDSAT), "-o", out), "--overwrite")


def test_normalize_urls_into_a_stack_on_s3(http, bucket):
    """Two dates of one grid (the same scene served twice) into one (time, band, y, x) stack
    on S3; the time labels come from the names in the URLs."""
    folder = Path(http.directory)
    for day in ("20200101", "20200201"):
        (folder / f"scene_{day}.tif").write_bytes((DATA / NAIP).read_bytes())
    out = f"s3://{bucket}/stack.zarr"
    sources = [http.url("scene_20200101.tif"), http.url("scene_20200201.tif")]
    result = pipeline.normalize_files(sources, http.url(LANDSAT), out, bands=[2])
    assert result.outputs == [out]
    assert result.sources == sources
    stack = rastermatch.open_raster(out)
    assert stack.dims[0] == "time" and stack.sizes["time"] == 2
    assert {row["source"] for row in result.quality} == {
        "scene_20200101.tif",
        "scene_20200201.tif",
    }
    np.testing.assert_array_equal(stack.values[0], stack.values[1])


def test_apply_a_lut_file_at_a_url(http, local_match, tmp_path):
    """`rastermatch apply` reads the LUT file over HTTP as it reads a local one: the output
    equals the match the LUT came from; a missing or broken one is a LUTFileError naming it."""
    lut = Path(http.directory) / "served.lut.json"
    assert_ok(run("fit", DATA / NAIP, DATA / LANDSAT, "-o", lut, *BANDS))
    out = tmp_path / "applied.tif"
    assert_ok(run("apply", http.url(NAIP), http.url(lut.name), "-o", out, *BANDS))
    np.testing.assert_array_equal(values(out), values(local_match))
    assert rastermatch.read_provenance(out)["inputs"]["lut"] == http.url(lut.name)
    assert_refused(
        run("apply", http.url(NAIP), http.url("none.lut.json"), "-o", tmp_path / "b.tif"),
        http.url("none.lut.json"),
        "does not exist",
    )
    (Path(http.directory) / "broken.lut.json").write_text("{not json")
    line = assert_refused(
        run("apply", http.url(NAIP), http.url("broken.lut.json"), "-o", tmp_path / "b.tif"),
        http.url("broken.lut.json"),
    )
    assert "rastermatch-lut-" not in line  # the URL, not the temporary copy
    assert not list(tmp_path.glob("b.*"))
