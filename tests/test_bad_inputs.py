"""Bad inputs, through the command line (real processes) and the API: refused cleanly, nothing lost.

For every case:

- the command exits with the expected status (1 for a refused job, 2 for a usage error), or the
  API raises the expected :class:`~rastermatch.RastermatchError` subclass;
- exactly one ``Error:`` line on stderr (one line of message through the API) naming the file,
  band or option and the problem; no traceback; nothing on stdout;
- nothing is left in the output directory (no partial output, no temporary) and nothing new
  appears next to the inputs;
- every input is byte-identical afterwards (hashed before and after).

The command-line cases run in one driver process that imports rastermatch once and forks a child
per case; the child runs ``python -m rastermatch`` (``runpy`` on the package's ``__main__``) with
its own stdout, stderr and working directory, so each case is a real process with a real exit
status, at a fraction of the start-up cost. A few cases also run as fully separate processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

import rastermatch
from rastermatch import (
    BandMismatchError,
    DimensionError,
    GridMismatchError,
    HistogramFileError,
    InputTypeError,
    LUTFileError,
    NoValidPixelsError,
    OptionError,
    OutputExistsError,
    RastermatchError,
    RasterReadError,
    RasterWriteError,
    UnsupportedDtypeError,
    pipeline,
)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"

pytestmark = pytest.mark.slow  # starts processes

# -- the workspace: small copies of the sample scenes, and bad files ---------------------------

WINDOW = Window(100, 100, 64, 64)  # columns 100-163, rows 100-163


def _crop(src: Path, dst: Path, *, window: Window = WINDOW, **changes: Any) -> np.ndarray:
    with rasterio.open(src) as f:
        data = f.read(window=window)
        profile = f.profile
        profile.update(
            width=window.width, height=window.height, transform=f.window_transform(window)
        )
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    profile.update(tiled=False, compress=None)
    edit = changes.pop("edit", None)
    if edit is not None:
        data = edit(data.copy())
    profile.update(count=data.shape[0], **changes)
    with rasterio.open(dst, "w", **profile) as f:
        f.write(data)
    return data


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _set_everywhere(doc: Any, key: str, value: Callable[[Any], Any]) -> Any:
    """``doc`` with every ``key`` of every nested dict replaced by ``value(old)``."""
    if isinstance(doc, dict):
        return {
            k: (value(v) if k == key else _set_everywhere(v, key, value)) for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [_set_everywhere(v, key, value) for v in doc]
    return doc


def _first_huge(counts: Any) -> Any:
    return [10**30, *counts[1:]] if isinstance(counts, list) and counts else counts


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    src = _crop(DATA / "arrnorm_target.tif", d / "src.tif")  # 4 x uint16, zeros, no tag
    _crop(DATA / "arrnorm_ref_adjusted2target.tif", d / "ref.tif")  # 4 x uint16, nodata 0
    _crop(DATA / "riohist_source1_naip.tif", d / "u8.tif")  # 3 x uint8, no nodata
    _crop(DATA / "riohist_reference1_landsat.tif", d / "ref3.tif")  # 3 x uint16, nodata 0
    _crop(DATA / "arrnorm_target.tif", d / "allnodata.tif", nodata=0,
          edit=lambda a: np.concatenate([a[:1], np.zeros_like(a[1:2]), a[2:]]))  # fmt: skip

    def mask_like(path: Path, **changes: Any) -> None:
        _crop(DATA / "arrnorm_target.tif", path, dtype="uint8",
              edit=lambda a: (a[:1] == 0).astype(np.uint8), **changes)  # fmt: skip

    mask_like(d / "mask.tif")
    mask_like(d / "mask_crs.tif", crs="EPSG:4326")
    with rasterio.open(d / "mask.tif") as f:
        shifted = f.transform * f.transform.translation(7, 0)
    mask_like(d / "mask_shifted.tif", transform=shifted)
    mask_like(d / "mask_small.tif", window=Window(100, 100, 32, 32))

    (d / "notraster.tif").write_text("this is not a raster\n")
    (d / "existing.tif").write_bytes(b"an existing output, not to be replaced")
    (d / "existing.json").write_text("{}")
    _crop(DATA / "arrnorm_target.tif", d / "big.tif", window=Window(0, 0, 536, 300))
    whole = (d / "big.tif").read_bytes()
    (d / "truncated.tif").write_bytes(whole[: len(whole) // 2])

    # LUT files: a good one, then bad ones derived from it
    lut = rastermatch.fit_lut(rastermatch.open_raster(d / "src.tif"),
                              rastermatch.open_raster(d / "ref.tif"), nodata=0)  # fmt: skip
    lut.save(d / "lut.json")
    good = json.loads((d / "lut.json").read_text())
    (d / "calib.tif").write_text(json.dumps(good))  # a LUT file named like a raster
    (d / "lut_array.json").write_text("[1, 2, 3]")
    (d / "lut_deep.json").write_text(_deep(100_000))
    (d / "lut_truncated.json").write_text(json.dumps(good)[:200])
    (d / "lut_nbins.json").write_text(json.dumps(_set_everywhere(good, "nbins", lambda _: 10**18)))
    (d / "lut_counts.json").write_text(json.dumps(_set_everywhere(good, "count", _first_huge)))
    crafted = _set_everywhere(good, "lo", lambda lo: [-1e15] * len(lo))  # consistent everywhere
    (d / "lut_lo.json").write_text(json.dumps(crafted))
    (d / "hist_array.json").write_text("[]")

    # Zarr stores: one chunk deleted, one chunk corrupted
    data = rastermatch.open_raster(d / "src.tif").chunk({"band": 1, "y": 32, "x": 32})
    for name in ("missing.zarr", "corrupt.zarr"):
        rastermatch.write_raster(data.rio.write_nodata(None), d / name)
    chunks = sorted(p for p in (d / "missing.zarr").rglob("c/*/*/*") if p.is_file())
    chunks[1].unlink()
    chunks = sorted(p for p in (d / "corrupt.zarr").rglob("c/*/*/*") if p.is_file())
    chunks[1].write_bytes(b"\x00garbage" * 8)
    assert src.shape == (4, 64, 64)
    return d


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# -- command-line cases -----------------------------------------------------------------------


@dataclass
class CLICase:
    id: str
    args: list[str]  # "{d}" is the folder of the inputs; outputs go to the working directory
    exit_code: int
    fragments: list[str] = field(default_factory=list)


M = ["match", "{d}/src.tif", "{d}/ref.tif"]  # a valid pair
N = ["normalize", "{d}/src.tif"]  # a valid first source

CLI_CASES = [
    # missing, non-raster and truncated inputs
    CLICase("missing-source", ["match", "nofile.tif", "{d}/ref.tif", "-o", "o.tif"], 2,
            ["nofile.tif", "does not exist"]),
    CLICase("missing-reference", ["match", "{d}/src.tif", "nofile.tif", "-o", "o.tif"], 2,
            ["nofile.tif"]),
    CLICase("non-raster-source", ["match", "{d}/notraster.tif", "{d}/ref.tif", "-o", "o.tif"], 1,
            ["notraster.tif"]),
    CLICase("non-raster-reference", ["match", "{d}/src.tif", "{d}/notraster.tif", "-o", "o.tif"],
            1, ["notraster.tif"]),
    CLICase("truncated-source", ["match", "{d}/truncated.tif", "{d}/ref.tif", "-o", "o.tif",
                                 "--bands", "1,2,3,4"], 1, ["truncated.tif", "band"]),
    CLICase("truncated-apply", ["apply", "{d}/truncated.tif", "{d}/lut.json", "-o", "o.zarr"], 1,
            ["truncated.tif"]),
    CLICase("info-non-raster", ["info", "{d}/notraster.tif"], 1, ["notraster.tif"]),
    CLICase("zarr-missing-chunk", ["match", "{d}/missing.zarr", "{d}/ref.tif", "-o", "o.tif"], 1,
            ["missing.zarr", "chunk"]),
    CLICase("zarr-corrupt-chunk", ["match", "{d}/corrupt.zarr", "{d}/ref.tif", "-o", "o.tif"], 1,
            ["corrupt.zarr"]),
    CLICase("zarr-corrupt-info", ["info", "{d}/corrupt.zarr"], 1, ["corrupt.zarr"]),
    # output paths
    CLICase("suffix-png", [*M, "-o", "o.png"], 1, ["o.png", "suffix"]),
    CLICase("suffix-none", [*M, "-o", "output"], 1, ["output", "suffix"]),
    CLICase("apply-suffix", ["apply", "{d}/src.tif", "{d}/lut.json", "-o", "o.jpg"], 1,
            ["o.jpg"]),
    CLICase("output-is-source", [*M, "-o", "{d}/src.tif", "--overwrite"], 1,
            ["src.tif", "input"]),
    CLICase("output-is-reference", [*M, "-o", "{d}/ref.tif", "--overwrite"], 1,
            ["ref.tif", "input"]),
    CLICase("output-is-mask", [*M, "-o", "{d}/mask.tif", "--mask", "{d}/mask.tif",
                               "--overwrite"], 1, ["mask.tif", "input"]),
    CLICase("output-is-reference-mask", [*M, "-o", "{d}/mask.tif", "--reference-mask",
                                         "{d}/mask.tif", "--overwrite"], 1, ["mask.tif"]),
    CLICase("fit-over-mask", ["fit", "{d}/src.tif", "{d}/ref.tif", "-o", "{d}/mask.tif",
                              "--mask", "{d}/mask.tif", "--overwrite"], 1, ["mask.tif", "input"]),
    CLICase("fit-over-source", ["fit", "{d}/src.tif", "{d}/ref.tif", "-o", "{d}/src.tif",
                                "--overwrite"], 1, ["src.tif"]),
    CLICase("lut-over-source", [*M, "-o", "o.tif", "--lut", "{d}/src.tif", "--overwrite"], 1,
            ["src.tif"]),
    CLICase("report-over-reference", [*M, "-o", "o.tif", "--report", "{d}/ref.tif",
                                      "--overwrite"], 1, ["ref.tif"]),
    CLICase("apply-over-lut", ["apply", "{d}/src.tif", "{d}/calib.tif", "-o", "{d}/calib.tif",
                               "--overwrite"], 1, ["calib.tif", "input"]),
    CLICase("equalize-over-mask", ["equalize", "{d}/src.tif", "-o", "{d}/mask.tif", "--mask",
                                   "{d}/mask.tif", "--overwrite"], 1, ["mask.tif"]),
    CLICase("existing-output", [*M, "-o", "{d}/existing.tif"], 1,
            ["existing.tif", "exists already", "--overwrite"]),
    CLICase("existing-lut", ["fit", "{d}/src.tif", "{d}/ref.tif", "-o", "{d}/existing.json"], 1,
            ["existing.json", "--overwrite"]),
    CLICase("existing-lut-of-match", [*M, "-o", "o.tif", "--lut", "{d}/existing.json"], 1,
            ["existing.json", "--overwrite"]),
    CLICase("lut-same-as-output", [*M, "-o", "o.tif", "--lut", "o.tif"], 1, ["o.tif"]),
    CLICase("name-too-long", [*M, "-o", "n" * 300 + ".tif"], 1, ["long"]),
    CLICase("missing-directory", [*M, "-o", "no/such/dir/o.tif"], 1, ["does not exist"]),
    CLICase("demo-into-a-file", ["demo", "-o", "{d}/existing.tif"], 2, ["existing.tif"]),
    CLICase("cog-zarr", [*M, "-o", "o.zarr", "--cog"], 1, ["--cog", "o.zarr"]),
    # --report
    CLICase("report-bad-format", [*M, "-o", "o.tif", "--report", "r.xyz"], 1,
            ["r.xyz", ".png"]),
    CLICase("report-no-suffix", [*M, "-o", "o.tif", "--report", "report"], 1, ["report"]),
    # --nodata and --dtype
    CLICase("nodata-300-uint8", ["match", "{d}/u8.tif", "{d}/ref3.tif", "-o", "o.tif",
                                 "--nodata", "300"], 1, ["300", "uint8", "u8.tif", "--nodata"]),
    CLICase("nodata-negative-uint16", [*M, "-o", "o.tif", "--nodata", "-1"], 1,
            ["-1", "uint16", "src.tif"]),
    CLICase("nodata-nan-integers", [*M, "-o", "o.tif", "--nodata", "nan"], 1, ["nan", "uint16"]),
    CLICase("nodata-fraction", [*M, "-o", "o.tif", "--nodata", "2.5"], 1, ["2.5"]),
    CLICase("reference-nodata-too-big", [*M, "-o", "o.tif", "--reference-nodata", "70000"], 1,
            ["70000", "ref.tif", "--reference-nodata"]),
    CLICase("apply-nodata-300", ["apply", "{d}/u8.tif", "{d}/lut.json", "-o", "o.tif",
                                 "--nodata", "300"], 1, ["300"]),
    CLICase("equalize-nodata-nan", ["equalize", "{d}/src.tif", "-o", "o.tif", "--nodata", "nan"],
            1, ["nan"]),
    CLICase("nodata-not-a-number", [*M, "-o", "o.tif", "--nodata", "zero"], 2, ["--nodata"]),
    CLICase("dtype-too-small", [*M, "-o", "o.tif", "--dtype", "uint8"], 1, ["uint8"]),
    CLICase("dtype-unknown", [*M, "-o", "o.tif", "--dtype", "complex64"], 2, ["--dtype"]),
    # --bands, --chunks, --bins, --range
    CLICase("bands-zero", [*M, "-o", "o.tif", "--bands", "0,1"], 2, ["--bands", "from 1"]),
    CLICase("bands-out-of-range", [*M, "-o", "o.tif", "--bands", "1,9"], 1, ["4 bands", "[9]"]),
    CLICase("bands-not-numbers", [*M, "-o", "o.tif", "--bands", "red"], 2, ["--bands"]),
    CLICase("reference-bands-out-of-range", [*M, "-o", "o.tif", "--bands", "1",
                                             "--reference-bands", "5"], 1, ["ref.tif", "[5]"]),
    CLICase("chunks-zero", [*M, "-o", "o.tif", "--chunks", "0"], 2, ["--chunks"]),
    CLICase("chunks-too-many-blocks", ["equalize", "{d}/big.tif", "-o", "o.tif", "--chunks", "1"],
            1, ["chunk"]),
    CLICase("bins-zero", [*M, "-o", "o.tif", "--bins", "0"], 2, ["--bins"]),
    CLICase("range-reversed", ["equalize", "{d}/src.tif", "-o", "o.tif", "--range", "9,1"], 2,
            ["--range", "lo < hi"]),
    CLICase("range-infinite", ["equalize", "{d}/src.tif", "-o", "o.tif", "--range", "0,inf"], 2,
            ["--range"]),
    CLICase("range-one-number", ["equalize", "{d}/src.tif", "-o", "o.tif", "--range", "5"], 2,
            ["--range"]),
    CLICase("workers-and-scheduler", [*M, "-o", "o.tif", "--workers", "2", "--scheduler",
                                      "tcp://127.0.0.1:1"], 2, ["--workers", "--scheduler"]),
    # masks
    CLICase("mask-other-shape", [*M, "-o", "o.tif", "--mask", "{d}/mask_small.tif"], 1,
            ["mask_small.tif", "32 x 32"]),
    CLICase("mask-other-crs", [*M, "-o", "o.tif", "--mask", "{d}/mask_crs.tif"], 1,
            ["mask_crs.tif", "EPSG:4326"]),
    CLICase("mask-other-transform", [*M, "-o", "o.tif", "--mask", "{d}/mask_shifted.tif"], 1,
            ["mask_shifted.tif", "transform"]),
    CLICase("equalize-mask-other-crs", ["equalize", "{d}/src.tif", "-o", "o.tif", "--mask",
                                        "{d}/mask_crs.tif"], 1, ["mask_crs.tif"]),
    # data problems
    CLICase("all-nodata-band", ["match", "{d}/allnodata.tif", "{d}/ref.tif", "-o", "o.tif"], 1,
            ["allnodata.tif", "band"]),
    CLICase("equalize-all-nodata-band", ["equalize", "{d}/allnodata.tif", "-o", "o.tif"], 1,
            ["allnodata.tif", "band"]),
    CLICase("band-count-mismatch", ["match", "{d}/u8.tif", "{d}/ref.tif", "-o", "o.tif"], 1,
            ["u8.tif", "3 bands", "ref.tif"]),
    CLICase("apply-band-count-mismatch", ["apply", "{d}/u8.tif", "{d}/lut.json", "-o", "o.tif"],
            1, ["u8.tif", "4"]),
    # LUT files
    CLICase("lut-array-root", ["apply", "{d}/src.tif", "{d}/lut_array.json", "-o", "o.tif"], 1,
            ["lut_array.json"]),
    CLICase("lut-deep-nesting", ["apply", "{d}/src.tif", "{d}/lut_deep.json", "-o", "o.tif"], 1,
            ["lut_deep.json"]),
    CLICase("lut-truncated", ["apply", "{d}/src.tif", "{d}/lut_truncated.json", "-o", "o.tif"],
            1, ["lut_truncated.json"]),
    CLICase("lut-huge-nbins", ["apply", "{d}/src.tif", "{d}/lut_nbins.json", "-o", "o.tif"], 1,
            ["lut_nbins.json"]),
    CLICase("lut-huge-counts", ["apply", "{d}/src.tif", "{d}/lut_counts.json", "-o", "o.tif"], 1,
            ["lut_counts.json"]),
    CLICase("lut-crafted-lo", ["apply", "{d}/src.tif", "{d}/lut_lo.json", "-o", "o.tif"], 1,
            ["lut_lo.json"]),
    CLICase("lut-missing", ["apply", "{d}/src.tif", "nolut.json", "-o", "o.tif"], 2,
            ["nolut.json"]),
    # normalize: a bad file among good ones is named; nothing is written, not even the folder
    CLICase("normalize-non-raster-among", [*N, "{d}/notraster.tif", "-r", "{d}/ref.tif", "-o",
                                           "out/"], 1, ["notraster.tif"]),
    CLICase("normalize-all-nodata-among", [*N, "{d}/allnodata.tif", "-r", "{d}/ref.tif", "-o",
                                           "out/"], 1, ["allnodata.tif", "band"]),
    CLICase("normalize-band-count-among", [*N, "{d}/u8.tif", "-r", "{d}/ref.tif", "-o", "out/"],
            1, ["u8.tif", "band"]),
    CLICase("normalize-nodata-300-among", [*N, "{d}/u8.tif", "-r", "{d}/ref3.tif", "-o", "out/",
                                           "--bands", "1,2,3", "--nodata", "300"], 1,
            ["u8.tif", "300", "uint8"]),
    CLICase("normalize-missing-source", [*N, "nofile.tif", "-r", "{d}/ref.tif", "-o", "out/"], 1,
            ["nofile.tif", "does not exist"]),
    CLICase("normalize-pattern-matches-nothing", [*N, "{d}/nothing*.tif", "-r", "{d}/ref.tif",
                                                  "-o", "out/"], 1, ["nothing*.tif"]),
    CLICase("normalize-into-the-input-folder", [*N, "-r", "{d}/ref.tif", "-o", "{d}/",
                                                "--overwrite"], 1, ["src.tif", "input"]),
    CLICase("normalize-stack-other-grid", [*N, "{d}/big.tif", "-r", "{d}/ref.tif", "-o",
                                           "s.zarr"], 1, ["big.tif", "grid"]),
    CLICase("normalize-stack-as-geotiff", [*N, "-r", "{d}/ref.tif", "-o", "s.tif"], 1,
            ["s.tif", "Zarr"]),
    CLICase("normalize-stack-over-reference", [*N, "-r", "{d}/missing.zarr", "-o",
                                               "{d}/missing.zarr", "--overwrite"], 1,
            ["missing.zarr", "input"]),
    CLICase("normalize-one-lut-file-for-two", [*N, "{d}/big.tif", "-r", "{d}/ref.tif", "-o",
                                               "out/", "--lut", "l.json"], 1,
            ["l.json", "folder"]),
    CLICase("normalize-masks-miscounted", [*N, "{d}/big.tif", "{d}/allnodata.tif", "-r",
                                           "{d}/ref.tif", "-o", "out/", "--mask",
                                           "{d}/mask.tif", "--mask", "{d}/mask.tif"], 1,
            ["2 masks", "3", "--mask"]),
    CLICase("normalize-mask-other-grid", [*N, "{d}/big.tif", "-r", "{d}/ref.tif", "-o", "out/",
                                          "--mask", "{d}/mask.tif"], 1, ["mask.tif", "big.tif"]),
    CLICase("normalize-no-reference", [*N, "-o", "out/"], 2, ["--reference"]),
]  # fmt: skip

DRIVER = textwrap.dedent(
    r'''
    """Run each command-line case in a forked child: a real process, cheap to start."""
    import hashlib, json, os, runpy, signal, sys, time
    from pathlib import Path

    import rastermatch.cli  # noqa: F401  (imported once, before forking)

    def hashes(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    def listing(folder):
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))

    cases, inputs, outdir, timeout = json.loads(Path(sys.argv[1]).read_text())
    inputs, outdir = Path(inputs), Path(outdir)
    results = {}
    for case in cases:
        cwd = outdir / case["id"]
        cwd.mkdir()
        before, before_list = hashes(inputs), listing(inputs)
        out, err = cwd.parent / (case["id"] + ".out"), cwd.parent / (case["id"] + ".err")
        pid = os.fork()
        if pid == 0:  # the child: python -m rastermatch ARGS, in its own folder
            code = 1
            try:
                os.chdir(cwd)
                os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT), 1)
                os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT), 2)
                sys.argv = ["rastermatch", *case["args"]]
                try:
                    runpy.run_module("rastermatch", run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as exit:
                    code = exit.code if isinstance(exit.code, int) else 1
            except BaseException:
                import traceback
                traceback.print_exc()
                code = 99
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        start = time.monotonic()
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - start > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = None
                break
            time.sleep(0.01)
        if status is None:
            code = "timeout"
        elif os.WIFSIGNALED(status):
            code = f"signal {os.WTERMSIG(status)}"
        else:
            code = os.WEXITSTATUS(status)
        after = hashes(inputs)
        results[case["id"]] = {
            "code": code,
            "stdout": out.read_text(errors="replace"),
            "stderr": err.read_text(errors="replace"),
            "left": listing(cwd),
            "changed": sorted(k for k in before if before[k] != after.get(k)),
            "new": sorted(set(listing(inputs)) - set(before_list)),
            "seconds": round(time.monotonic() - start, 2),
        }
    print(json.dumps(results))
    '''
)


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("SOURCE_DATE_EPOCH", None)
    return env


@pytest.fixture(scope="module")
def cli_results(workspace, tmp_path_factory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("cli-cases")
    outdir = tmp / "out"
    outdir.mkdir()
    cases = [
        {"id": c.id, "args": [a.replace("{d}", str(workspace)) for a in c.args]} for c in CLI_CASES
    ]
    spec = tmp / "cases.json"
    # a case that runs 60 s hangs (they take well under a second; the margin is for loaded
    # machines)
    spec.write_text(json.dumps([cases, str(workspace), str(outdir), 60]))
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    done = subprocess.run(
        [sys.executable, str(driver), str(spec)],
        capture_output=True, text=True, env=_env(), timeout=900, cwd=tmp,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    if os.environ.get("RASTERMATCH_CASE_LOG"):  # for reviewing the messages and times
        Path(os.environ["RASTERMATCH_CASE_LOG"]).write_text(
            json.dumps({k: [v["seconds"], v["stderr"]] for k, v in results.items()}, indent=1)
        )
    return results


def test_enough_cases():
    assert len(CLI_CASES) + len(API_CASES) >= 60
    assert len({c.id for c in CLI_CASES}) == len(CLI_CASES)
    assert len({c.id for c in API_CASES}) == len(API_CASES)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_command_line_refuses_cleanly(case: CLICase, cli_results):
    result = cli_results[case.id]
    stderr = result["stderr"]
    assert "Traceback" not in stderr, stderr
    assert result["code"] == case.exit_code, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, stderr
    if case.exit_code == 1:  # a refused job: the one line, and warnings at most
        others = [line for line in stderr.splitlines() if line and not line.startswith(
            ("Error:", "Warning:"))]  # fmt: skip
        assert others == [], stderr
    for fragment in case.fragments:
        assert fragment in errors[0], errors[0]
    assert "=True" not in errors[0]  # worded for the command line
    assert result["stdout"] == ""
    assert result["left"] == []  # nothing in the output folder: no output, no temporary
    assert result["new"] == []  # nothing new next to the inputs
    assert result["changed"] == []  # every input byte-identical


def test_real_processes(workspace, tmp_path):
    """Two cases as fully separate ``python -m rastermatch`` processes."""
    before = _hashes(workspace)
    for args, fragment in (
        (["match", *M[1:], "-o", "{d}/mask.tif", "--mask", "{d}/mask.tif", "--overwrite"],
         "mask.tif"),
        (["fit", *M[1:], "-o", "{d}/src.tif", "--overwrite"], "src.tif"),
    ):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "rastermatch", *(a.format(d=workspace) for a in args)],
            capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], lines
        assert done.stdout == ""
    assert list(tmp_path.iterdir()) == []
    assert _hashes(workspace) == before


# -- API cases --------------------------------------------------------------------------------


@dataclass
class APICase:
    id: str
    call: Callable[[Path, Path], Any]  # (inputs folder, output folder) -> anything
    error: type[RastermatchError]
    fragments: list[str] = field(default_factory=list)


def _u8(*shape: int) -> np.ndarray:
    return np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)


def _u16(*shape: int) -> np.ndarray:
    return (np.arange(int(np.prod(shape))) * 7).astype(np.uint16).reshape(shape)


def _open(d: Path, name: str) -> Any:
    return rastermatch.open_raster(d / name)


P = pipeline

API_CASES = [
    # inputs of the wrong kind or shape
    APICase("zero-bands", lambda d, o: rastermatch.match_histograms(
        np.zeros((0, 4, 4), np.uint8), np.zeros((0, 4, 4), np.uint8)), DimensionError, []),
    APICase("channel-last", lambda d, o: rastermatch.match_histograms(
        np.zeros((8, 8, 3), np.uint8), _u8(1, 4, 4)), DimensionError, ["channel_axis=-1"]),
    APICase("one-dim", lambda d, o: rastermatch.match_histograms(_u8(16), _u8(16)),
            DimensionError),
    APICase("python-list", lambda d, o: rastermatch.match_histograms([[1, 2], [3, 4]], _u8(2, 2)),
            InputTypeError, ["list"]),
    APICase("string-input", lambda d, o: rastermatch.match_histograms("src.tif", _u8(2, 2)),
            InputTypeError, ["str"]),
    APICase("complex-dtype", lambda d, o: rastermatch.match_histograms(
        np.ones((4, 4), np.complex64), _u8(4, 4)), UnsupportedDtypeError, ["complex64"]),
    APICase("bool-dtype", lambda d, o: rastermatch.band_histograms(np.ones((4, 4), bool)),
            UnsupportedDtypeError, ["bool"]),
    APICase("equalize-list", lambda d, o: rastermatch.equalize([1, 2, 3]), InputTypeError, []),
    APICase("write-list", lambda d, o: rastermatch.write_raster([[1, 2]], o / "w.tif"),
            InputTypeError, ["w.tif"]),
    # options
    APICase("nodata-300-uint8", lambda d, o: rastermatch.match_histograms(
        _u8(4, 4), _u8(4, 4), nodata=300), OptionError, ["300"]),
    APICase("nodata-nan-int", lambda d, o: rastermatch.match_histograms(
        _u16(4, 4), _u16(4, 4), nodata=float("nan")), OptionError, ["nan"]),
    APICase("method-unknown", lambda d, o: rastermatch.match_histograms(
        _u8(4, 4), _u8(4, 4), method="cubic"), OptionError, ["cubic"]),
    APICase("levels-unknown", lambda d, o: rastermatch.match_histograms(
        _u8(4, 4), _u8(4, 4), levels="some"), OptionError, ["some"]),
    APICase("bins-zero", lambda d, o: rastermatch.match_histograms(
        _u8(4, 4).astype(np.float32), _u8(4, 4), bins=0), OptionError, ["bins"]),
    APICase("dtype-too-small", lambda d, o: rastermatch.match_histograms(
        _u16(8, 8), _u16(8, 8), dtype="uint8"), OptionError, ["uint8"]),
    APICase("dtype-not-numeric", lambda d, o: rastermatch.match_histograms(
        _u8(4, 4), _u8(4, 4), dtype="U3"), OptionError, []),
    APICase("equalize-range-inf", lambda d, o: rastermatch.equalize(
        _u8(4, 4).astype(np.float32), range=(0, float("inf"))), OptionError, ["inf"]),
    APICase("equalize-range-reversed", lambda d, o: rastermatch.equalize(
        _u8(4, 4), range=(200, 10)), OptionError, ["200"]),
    # data problems
    APICase("band-count-mismatch", lambda d, o: rastermatch.match_histograms(
        _u8(2, 4, 4), _u8(3, 4, 4)), BandMismatchError, ["2 bands"]),
    APICase("all-nodata", lambda d, o: rastermatch.match_histograms(
        np.zeros((4, 4), np.uint8), _u8(4, 4), nodata=0), NoValidPixelsError,
        ["source", "no valid pixels"]),  # a 2-D image has no band to name
    APICase("all-nan", lambda d, o: rastermatch.match_histograms(
        np.full((4, 4), np.nan, np.float32), _u8(4, 4)), NoValidPixelsError,
        ["source", "no valid pixels"]),
    APICase("mask-wrong-shape", lambda d, o: rastermatch.match_histograms(
        _u8(4, 4), _u8(4, 4), mask=np.zeros((3, 3), bool)), RastermatchError, ["mask"]),
    # LUT and histogram documents
    APICase("lut-array-root", lambda d, o: rastermatch.LUT.load(d / "lut_array.json"),
            LUTFileError, ["lut_array.json"]),
    APICase("lut-deep", lambda d, o: rastermatch.LUT.load(d / "lut_deep.json"), LUTFileError,
            ["lut_deep.json"]),
    APICase("lut-nbins", lambda d, o: rastermatch.LUT.load(d / "lut_nbins.json"), LUTFileError,
            ["lut_nbins.json"]),
    APICase("lut-counts", lambda d, o: rastermatch.LUT.load(d / "lut_counts.json"),
            LUTFileError, ["lut_counts.json"]),
    APICase("lut-crafted-lo", lambda d, o: rastermatch.LUT.load(d / "lut_lo.json"),
            LUTFileError, ["lut_lo.json"]),
    APICase("lut-missing", lambda d, o: rastermatch.LUT.load(d / "nolut.json"), LUTFileError,
            ["nolut.json"]),
    APICase("histogram-array", lambda d, o: rastermatch.Histogram.from_json(
        (d / "hist_array.json").read_text()), HistogramFileError, []),
    # files
    APICase("open-missing", lambda d, o: rastermatch.open_raster(d / "nofile.tif"),
            RasterReadError, ["nofile.tif"]),
    APICase("open-non-raster", lambda d, o: rastermatch.open_raster(d / "notraster.tif"),
            RasterReadError, ["notraster.tif"]),
    APICase("read-truncated", lambda d, o: _open(d, "truncated.tif").values, RasterReadError,
            ["truncated.tif"]),
    APICase("read-zarr-missing-chunk", lambda d, o: _open(d, "missing.zarr").values,
            RasterReadError, ["missing.zarr"]),
    APICase("read-zarr-corrupt-chunk", lambda d, o: _open(d, "corrupt.zarr").values,
            RasterReadError, ["corrupt.zarr"]),
    APICase("too-many-chunks", lambda d, o: rastermatch.open_raster(
        d / "big.tif", chunks={"y": 1, "x": 1}), OptionError, ["big.tif"]),
    APICase("match-files-over-mask", lambda d, o: P.match_files(
        d / "src.tif", d / "ref.tif", d / "mask.tif", mask=d / "mask.tif", overwrite=True),
        RasterWriteError, ["mask.tif"]),
    APICase("fit-files-over-mask", lambda d, o: P.fit_files(
        d / "src.tif", d / "ref.tif", lut_path=d / "mask.tif", mask=d / "mask.tif",
        overwrite=True), RasterWriteError, ["mask.tif"]),
    APICase("apply-file-over-lut", lambda d, o: P.apply_file(
        d / "src.tif", d / "calib.tif", d / "calib.tif", overwrite=True), RasterWriteError,
        ["calib.tif"]),
    APICase("match-files-existing", lambda d, o: P.match_files(
        d / "src.tif", d / "ref.tif", d / "existing.tif"), OutputExistsError, ["existing.tif"]),
    APICase("match-files-bad-report", lambda d, o: P.match_files(
        d / "src.tif", d / "ref.tif", o / "o.tif", report=o / "r.xyz"), OptionError, ["r.xyz"]),
    APICase("match-files-mask-crs", lambda d, o: P.match_files(
        d / "src.tif", d / "ref.tif", o / "o.tif", mask=d / "mask_crs.tif"), GridMismatchError,
        ["mask_crs.tif"]),
    APICase("match-files-nodata-300", lambda d, o: P.match_files(
        d / "u8.tif", d / "ref3.tif", o / "o.tif", nodata=300), OptionError, ["300", "u8.tif"]),
    APICase("apply-file-bands", lambda d, o: P.apply_file(
        d / "u8.tif", d / "lut.json", o / "o.tif"), BandMismatchError, ["u8.tif"]),
    APICase("equalize-file-all-nodata", lambda d, o: P.equalize_file(
        d / "allnodata.tif", o / "o.tif"), NoValidPixelsError, ["allnodata.tif"]),
    APICase("write-over-source", lambda d, o: rastermatch.write_raster(
        _open(d, "src.tif"), d / "src.tif", overwrite=True), RasterWriteError, ["src.tif"]),
    APICase("write-bad-suffix", lambda d, o: rastermatch.write_raster(
        _open(d, "src.tif"), o / "o.jpg"), RasterWriteError, ["o.jpg"]),
    APICase("normalize-files-existing", lambda d, o: P.normalize_files(
        [d / "src.tif", d / "existing.tif"], d / "ref.tif", d), RasterWriteError,
        ["src.tif"]),
    APICase("normalize-files-other-grid", lambda d, o: P.normalize_files(
        [d / "src.tif", d / "big.tif"], d / "ref.tif", o / "s.zarr"), GridMismatchError,
        ["big.tif", "src.tif"]),
    APICase("normalize-files-bad-format", lambda d, o: P.normalize_files(
        d / "src.tif", d / "ref.tif", o, format="jpg"), OptionError, ["jpg"]),
    APICase("normalize-files-all-nodata", lambda d, o: P.normalize_files(
        [d / "src.tif", d / "allnodata.tif"], [d / "ref.tif"], o), NoValidPixelsError,
        ["allnodata.tif"]),
]  # fmt: skip


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_refuses_cleanly(case: APICase, workspace, tmp_path):
    before = _hashes(workspace)
    listing = sorted(p.name for p in workspace.iterdir())
    with pytest.raises(RastermatchError) as info:
        case.call(workspace, tmp_path)
    assert isinstance(info.value, case.error), repr(info.value)
    message = str(info.value)
    assert "\n" not in message.strip()
    for fragment in case.fragments:
        assert fragment in message, message
    assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in workspace.iterdir()) == listing
    assert _hashes(workspace) == before
