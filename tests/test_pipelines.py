"""The scripts in pipelines/, each run as a process on the sample scenes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rastermatch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
PIPELINES = REPO / "pipelines"

pytestmark = pytest.mark.slow  # each test starts a Python process (and one a cluster)


def script(name: str, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("MPLBACKEND", None)  # the walkthrough selects Agg itself
    done = subprocess.run(
        [sys.executable, str(PIPELINES / name), *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stderr
    return done


def test_normalize_folder(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for name in ("riohist_source1_naip.tif", "rasterio_RGB.byte.tif"):  # 3 bands each
        (scenes / name).symlink_to(DATA / name)
    out = tmp_path / "normalized"
    done = script("normalize_folder.py", scenes, DATA / "riohist_reference1_landsat.tif", out,
                  cwd=tmp_path)  # fmt: skip
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("KS" in line for line in lines)
    for stem in ("riohist_source1_naip", "rasterio_RGB.byte"):
        data = rastermatch.open_raster(out / f"{stem}.zarr")
        assert data.dtype == np.uint16 and data.sizes["band"] == 3
        assert rastermatch.read_provenance(out / f"{stem}.zarr")["method"] == "nearest"


def test_readme_normalize_command_runs(tmp_path):
    """The README's ``rastermatch normalize data/ ...`` line, as a process, from a folder
    holding data/."""
    import re
    import shlex

    readme = (REPO / "README.md").read_text()
    line = re.search(r"^rastermatch normalize data/ .*$", readme, flags=re.M)
    assert line is not None
    (tmp_path / "data").symlink_to(DATA)
    args = shlex.split(line[0])[1:]
    done = subprocess.run(
        [sys.executable, "-m", "rastermatch", *args], capture_output=True, text=True,
        cwd=tmp_path, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = sorted(p.name for p in (tmp_path / "normalized").iterdir())
    written = [name for name in found if not name.endswith(".lut.json")]
    expected = sorted(p.name for p in DATA.glob("*.tif") if "reference1_landsat" not in p.name)
    assert written == expected
    # besides them, only the LUT sidecars of records too large for a GeoTIFF header
    assert {name.removesuffix(".lut.json") for name in found} == set(expected)
    for name in written:
        assert rastermatch.open_raster(tmp_path / "normalized" / name).dtype == np.uint16
        assert name in done.stdout


def test_cluster_job(tmp_path):
    out = tmp_path / "matched.zarr"
    done = script(
        "cluster_job.py", DATA / "arrnorm_target.tif", DATA / "arrnorm_ref_adjusted2target.tif",
        out, "--workers", "2", "--nodata", "0", cwd=tmp_path,
    )  # fmt: skip
    assert "dashboard: http" in done.stdout
    assert "KS after" in done.stdout
    matched = rastermatch.open_raster(out)
    assert matched.shape == (4, 349, 536) and matched.dtype == np.uint16
    # the same as the threaded job
    threaded = rastermatch.match_histograms(
        rastermatch.open_raster(DATA / "arrnorm_target.tif"),
        rastermatch.open_raster(DATA / "arrnorm_ref_adjusted2target.tif"),
        nodata=0,
    )
    np.testing.assert_array_equal(matched.values, threaded.values)


def test_walkthrough(tmp_path):
    out = tmp_path / "walkthrough"
    done = script("walkthrough.py", "--outdir", out, cwd=tmp_path)
    assert "KS after" in done.stdout
    for name in ("histograms.png", "lut.png", "report.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert rastermatch.LUT.load(out / "naip_to_landsat.lut.json").nbands == 3
    assert rastermatch.open_raster(out / "matched.zarr").dtype == np.uint16


def test_readme_python_snippets_run(tmp_path, monkeypatch):
    """Every ```python block of the README runs as is, from a folder holding data/."""
    import re

    readme = (REPO / "README.md").read_text()
    snippets = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(snippets) >= 2
    (tmp_path / "data").symlink_to(DATA)
    monkeypatch.chdir(tmp_path)
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), {"__name__": "readme"})
    assert rastermatch.open_raster("matched.tif").dtype == np.uint16
    assert rastermatch.LUT.load("landsat.lut.json").nbands == 4


def test_a_float_mask_keeps_its_nan_pixels(tmp_path):
    import rasterio

    from rastermatch.pipeline import open_mask

    image = rastermatch.open_raster(DATA / "arrnorm_target.tif")
    with rasterio.open(DATA / "arrnorm_target.tif") as src:
        profile = src.profile | {"count": 1, "dtype": "float32", "nodata": None}
    values = np.zeros(image.shape[1:], dtype=np.float32)
    values[0, :3] = [np.nan, 1.0, 0.5]
    with rasterio.open(tmp_path / "mask.tif", "w", **profile) as dst:
        dst.write(values, 1)
    mask = np.asarray(open_mask(tmp_path / "mask.tif", image))
    assert mask[0, :4].tolist() == [False, True, True, False]
    assert int(mask.sum()) == 2


# -- detector balancing: the striped sample, destripe_file and the README command -------------

STRIPED = DATA / "striped_L7_ETMs.tif"  # 6 bands uint8, 16 detectors along y


def test_make_striped_sample_reproduces_the_bundled_file(tmp_path):
    done = script("make_striped_sample.py", "--check", cwd=tmp_path)
    assert "matches" in done.stdout
    assert STRIPED.stat().st_size < 2**20


def test_readme_destripe_command_runs(tmp_path):
    """The README's ``rastermatch destripe data/...`` line, as a process."""
    import re
    import shlex

    readme = (REPO / "README.md").read_text()
    line = re.search(r"^rastermatch destripe data/\S+ .*$", readme, flags=re.M)
    assert line is not None
    (tmp_path / "data").symlink_to(DATA)
    done = subprocess.run(
        [sys.executable, "-m", "rastermatch", *shlex.split(line[0])[1:]], capture_output=True,
        text=True, cwd=tmp_path, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "stripes before" in done.stdout
    written = sorted(p.name for p in tmp_path.iterdir() if p.name != "data")
    # the output's record (its per-detector LUT) is too large for the GeoTIFF header: a sidecar
    assert written == [
        "destripe.png",
        "destriped.tif",
        "destriped.tif.lut.json",
        "detectors.lut.json",
    ]


def _write_like(path: Path, values: np.ndarray, nodata: float | None = None) -> Path:
    import rasterio

    with rasterio.open(STRIPED) as src:
        profile = src.profile
        transform = src.transform
    profile.update(count=values.shape[0], height=values.shape[1], width=values.shape[2],
                   nodata=nodata, transform=transform)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values)
    return path


def test_destripe_file_mask_leaves_pixels_out_of_the_statistics(tmp_path):
    """Masking whole sweeps (lines 176..351) gives the LUTs of the unmasked lines alone; the
    masked pixels are still mapped."""
    from rastermatch.pipeline import destripe_file

    scene = rastermatch.open_raster(STRIPED).values
    mask = np.zeros((1, *scene.shape[1:]), dtype=np.uint8)
    mask[:, 176:] = 1  # 11 sweeps of 16 lines each
    mask_path = _write_like(tmp_path / "mask.tif", mask)
    top = _write_like(tmp_path / "top.tif", scene[:, :176])
    masked = destripe_file(STRIPED, tmp_path / "masked.tif", detectors=16, mask=mask_path)
    alone = destripe_file(top, tmp_path / "top_out.tif", detectors=16)
    got = rastermatch.open_raster(masked.output).values
    np.testing.assert_array_equal(got[:, :176], rastermatch.open_raster(alone.output).values)
    np.testing.assert_array_equal(
        masked.lut.apply(scene[:, 176:]), got[:, 176:]
    )  # the masked lines go through the same LUTs
    record = rastermatch.read_provenance(masked.output)
    assert record["inputs"]["mask"] == str(mask_path)


def test_destripe_file_keeps_nodata_out(tmp_path):
    from rastermatch.pipeline import destripe_file

    scene = np.maximum(rastermatch.open_raster(STRIPED).values, 1)
    scene[:, :, :30] = 0  # a fill border
    src = _write_like(tmp_path / "bordered.tif", scene, nodata=0)
    result = destripe_file(src, tmp_path / "out.tif", detectors=16, bands=[1, 5])
    out = rastermatch.open_raster(result.output)
    assert out.rio.nodata == 0 and out.sizes["band"] == 2
    values = out.values
    assert (values[:, :, :30] == 0).all() and (values[:, :, 30:] > 0).all()
    assert all(r["stripe_reduction"] > 0.9 for r in result.quality)


def test_destripe_file_along_x(tmp_path):
    """The striped sample transposed has its 16 detectors along x; one detector per column
    works too and is recorded as such."""
    from rastermatch.pipeline import destripe_file

    scene = rastermatch.open_raster(STRIPED).values[[3, 5]]
    along_y = destripe_file(STRIPED, tmp_path / "y.tif", detectors=16, bands=[4, 6])
    flipped = _write_like(tmp_path / "t.tif", np.ascontiguousarray(scene.transpose(0, 2, 1)))
    along_x = destripe_file(flipped, tmp_path / "x.zarr", detectors=16, axis="x")
    np.testing.assert_array_equal(
        rastermatch.open_raster(along_x.output).values.transpose(0, 2, 1),
        rastermatch.open_raster(along_y.output).values,
    )
    columns = destripe_file(flipped, tmp_path / "c.tif", detectors="column", axis="x", bands=[1])
    record = rastermatch.read_provenance(columns.output)
    assert record["detectors"]["count"] is None and record["detectors"]["axis"] == "x"
    assert "one detector per column" in record["detectors"]["description"]
    assert all(r["stripe_reduction"] > 0.5 for r in columns.quality), columns.quality


def test_destripe_file_refuses_overlapping_outputs_and_leaves_nothing(tmp_path, monkeypatch):
    from rastermatch import OptionError, RasterWriteError
    from rastermatch import pipeline as pipe

    with pytest.raises(OptionError, match="LUT file and the output"):
        pipe.destripe_file(STRIPED, tmp_path / "a.tif", detectors=16, lut_path=tmp_path / "a.tif")
    with pytest.raises(OptionError, match="detectors must be a number"):
        pipe.destripe_file(STRIPED, tmp_path / "a.tif", detectors="lines")

    def disk_full(*args, **kwargs):
        raise RasterWriteError("writing a.tif failed: No space left on device")

    monkeypatch.setattr(pipe, "_write", disk_full)
    with pytest.raises(RasterWriteError, match="No space"):
        pipe.destripe_file(STRIPED, tmp_path / "a.tif", detectors=16, bands=[2],
                           lut_path=tmp_path / "a.json", report=tmp_path / "a.svg")  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # the staged LUT file and report went too


# -- every job checks its LUT file and report like its raster, before any work ----------------

SRC, REF = DATA / "arrnorm_target.tif", DATA / "arrnorm_ref_adjusted2target.tif"


def _jobs(tmp_path):
    """Each job that writes a LUT file or a report, as a call taking (lut_path, report,
    overwrite); every one writes its raster (if any) to tmp_path / "out.tif"."""
    from rastermatch import pipeline as pipe

    out = tmp_path / "out.tif"
    return {
        "match": lambda lut, rep, ow: pipe.match_files(
            SRC, REF, out, bands=[1], nodata=0, lut_path=lut, report=rep, overwrite=ow
        ),
        "fit": lambda lut, rep, ow: pipe.fit_files(
            SRC, REF, bands=[1], nodata=0, lut_path=lut, overwrite=ow
        ),
        "normalize": lambda lut, rep, ow: pipe.normalize_files(
            [SRC],
            REF,
            tmp_path / "norm/",
            bands=[1],
            nodata=0,
            lut_path=lut,
            report=rep,
            overwrite=ow,
        ),
        "destripe": lambda lut, rep, ow: pipe.destripe_file(
            STRIPED, out, detectors=16, bands=[1], lut_path=lut, report=rep, overwrite=ow
        ),
    }


@pytest.mark.parametrize("job", ["match", "fit", "normalize", "destripe"])
def test_jobs_refuse_an_existing_lut_file_before_any_work(tmp_path, monkeypatch, job):
    from rastermatch import OutputExistsError, RasterWriteError
    from rastermatch import pipeline as pipe

    run = _jobs(tmp_path)[job]
    lut = tmp_path / "old.lut.json"
    lut.write_text("keep me")

    def no_reads(*args, **kwargs):
        raise AssertionError("an input was opened before the outputs were checked")

    with monkeypatch.context() as m:
        m.setattr(pipe, "open_raster", no_reads)
        with pytest.raises(OutputExistsError, match=r"old\.lut\.json"):
            run(lut, None, False)
        # an input is never replaced, overwrite or not
        with pytest.raises(RasterWriteError, match="input"):
            run(SRC if job != "destripe" else STRIPED, None, True)
    assert lut.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.lut.json"]
    # with overwrite the LUT file is replaced by one that loads
    run(lut, None, True)
    assert isinstance(rastermatch.LUT.load(lut), rastermatch.LUT)


@pytest.mark.parametrize("job", ["match", "normalize", "destripe"])
def test_jobs_refuse_an_existing_report_before_any_work(tmp_path, monkeypatch, job):
    from rastermatch import OutputExistsError
    from rastermatch import pipeline as pipe

    report = tmp_path / "old.png"
    report.write_bytes(b"keep me")
    monkeypatch.setattr(pipe, "open_raster", lambda *a, **k: pytest.fail("opened an input"))
    with pytest.raises(OutputExistsError, match=r"old\.png"):
        _jobs(tmp_path)[job](None, report, False)
    assert report.read_bytes() == b"keep me"


def test_match_files_never_replaces_a_lut_file_that_appears_during_the_job(tmp_path, monkeypatch):
    from rastermatch import OutputExistsError
    from rastermatch import pipeline as pipe

    lut, fit = tmp_path / "a.lut.json", pipe._fit

    def fit_then_appear(*args, **kwargs):
        fitted = fit(*args, **kwargs)
        lut.write_text("another process")
        return fitted

    monkeypatch.setattr(pipe, "_fit", fit_then_appear)
    with pytest.raises(OutputExistsError, match="appeared while the job was running"):
        _jobs(tmp_path)["match"](lut, None, False)
    assert lut.read_text() == "another process"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.lut.json"]  # no raster, no temporary
