"""Faults on real files: full disks, interrupts, killed writes, damaged inputs, long names.

Every failed or interrupted write must leave nothing (neither the output nor a temporary);
every damaged input must give one RasterReadError line naming the file, the band and the
cause. Faults that need a process (signals, a file-size limit) run the write in a
subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from conftest import raise_if_dask_computes

from rastermatch.errors import (
    OptionError,
    OutputExistsError,
    RasterReadError,
    RasterWriteError,
    StaleTemporaryWarning,
)
from rastermatch.io import (
    check_output_path,
    open_raster,
    remove_stale_temporaries,
    write_raster,
)

DATA = Path(__file__).resolve().parent.parent / "data"
RGB = DATA / "rasterio_RGB.byte.tif"  # uint8, 3 bands, nodata 0, red/green/blue
REPO = Path(__file__).resolve().parent.parent
TEMP_MARK = ".rastermatch-"


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def noise(shape: tuple[int, int, int] = (1, 1024, 1024), nodata: int | None = 0) -> xr.DataArray:
    """Incompressible uint16 data (about 2 MB per 1024 x 1024 band), georeferenced."""
    values = np.random.default_rng(7).integers(1, 65535, size=shape, dtype=np.uint16)
    data = xr.DataArray(
        da.from_array(values, chunks=(1, 256, 256)),
        dims=("band", "y", "x"),
        coords={"band": np.arange(1, shape[0] + 1)},
    )
    data = data.rio.write_crs("EPSG:32633")
    data = data.rio.write_transform(Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0))
    return data.rio.write_nodata(nodata, encoded=False)


def default_sigint() -> None:
    """Ctrl-C as a terminal delivers it, in a child: a shell starts background jobs (a test
    run with ``&``) with SIGINT ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Start ``python -c code args`` in the repository, pipes for output."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
        **kwargs,
    )


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text
    return text


# -- disk full ---------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs mount permission: root in a container that allows it)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


FORMATS = [("out.tif", {}), ("out.tif", {"cog": True}), ("out.zarr", {})]


@pytest.mark.parametrize(
    ("name", "options"),
    [*FORMATS, ("out.tif", {"compress": "none"})],
    ids=["gtiff", "cog", "zarr", "gtiff-uncompressed"],
)
def test_disk_full_fails_and_leaves_nothing(small_disk, name, options, capfd):
    output = small_disk / name
    with pytest.raises(RasterWriteError) as caught:
        write_raster(noise((2, 1024, 1024)), output, **options)
    message = one_line(caught.value)
    assert str(output) in message
    assert "full" in message or "No space" in message
    assert "See previous exception" not in message  # GDAL's own cause instead
    assert entries(small_disk) == []
    assert "_tiff" not in capfd.readouterr().err  # libtiff's own per-tile lines are silenced


FSIZE_WRITE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
import numpy as np, dask.array as da, xarray as xr
from rastermatch.errors import RasterWriteError
from rastermatch.io import write_raster
values = np.random.default_rng(7).integers(1, 65535, size=(1, 1024, 1024), dtype=np.uint16)
data = xr.DataArray(da.from_array(values, chunks=(1, 256, 256)), dims=("band", "y", "x"))
# zarr chunks are small files: its limit is below one chunk (256 x 256 x 2 bytes)
for path, limit in zip(sys.argv[1:], (1 << 20, 1 << 16)):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    try:
        write_raster(data, path)
    except RasterWriteError as error:
        print(error)
"""


def test_file_size_limit_fails_and_leaves_nothing(tmp_path):
    outputs = [tmp_path / "out.tif", tmp_path / "out.zarr"]
    process = run_python(FSIZE_WRITE, *map(str, outputs))
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 2  # one line per failed write
    for output, line in zip(outputs, lines, strict=True):
        assert str(output) in line and "failed" in line
    assert "_tiff" not in stderr
    assert entries(tmp_path) == []


def test_gdal_failure_collection_leaves_logging_as_it_was(tmp_path):
    logger = logging.getLogger("rasterio._env")
    before = (logger.level, list(logger.filters))
    write_raster(noise(), tmp_path / "ok.tif")
    assert (logger.level, list(logger.filters)) == before


# -- interrupts and killed writes --------------------------------------------------------

SLOW_WRITE = """
import signal, sys, time
import dask.array as da, numpy as np, xarray as xr
from rastermatch.io import write_raster

def terminate(signum, frame):  # what the documentation asks callers to do with SIGTERM
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, terminate)

def slow(block):  # long enough that a loaded machine still signals it mid-write
    time.sleep(0.25)
    return block

data = da.ones((1, 1024, 1024), dtype="uint16", chunks=(1, 128, 128)).map_blocks(slow)
write_raster(xr.DataArray(data, dims=("band", "y", "x")), sys.argv[1])
print("finished")
"""


def start_slow_write(output: Path) -> subprocess.Popen:
    """Start a write of about 64 x 250 ms and return once its temporary exists."""
    process = run_python(SLOW_WRITE, str(output))
    deadline = time.monotonic() + 60
    while not any(TEMP_MARK in name for name in entries(output.parent)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the write never started"
        time.sleep(0.02)
    time.sleep(0.3)  # some blocks written, most not
    return process


@pytest.mark.parametrize(
    ("name", "signum"),
    [("out.tif", signal.SIGINT), ("out.zarr", signal.SIGINT), ("out.tif", signal.SIGTERM)],
    ids=["gtiff-SIGINT", "zarr-SIGINT", "gtiff-SIGTERM"],
)
def test_interrupted_write_leaves_nothing(tmp_path, name, signum):
    process = start_slow_write(tmp_path / name)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=60)
    assert "finished" not in stdout
    assert "KeyboardInterrupt" in stderr
    assert entries(tmp_path) == []


def test_killed_write_is_cleaned_by_the_next_write(tmp_path):
    name = "out.zarr"
    output = tmp_path / name
    process = start_slow_write(output)
    process.kill()
    process.communicate(timeout=60)
    (stale,) = entries(tmp_path)
    assert stale.startswith(f".{name}{TEMP_MARK}{process.pid}-")

    write_raster(noise((1, 64, 64)), output)
    assert entries(tmp_path) == [name]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_judged_by_process_and_host(tmp_path):
    output = tmp_path / "out.tif"
    write_raster(noise((1, 64, 64)), output)
    from rastermatch.io import _host_hash, _temp_prefix

    prefix, host = _temp_prefix(output), _host_hash()
    dead = tmp_path / f"{prefix}-{dead_pid()}-{host}-0123abcd.tmp"
    alive = tmp_path / f"{prefix}-{os.getppid()}-{host}-0123abce.tmp"  # a write in progress
    foreign = tmp_path / f"{prefix}-{dead_pid()}-ffffffff-0123abcf.staging"
    unrelated = tmp_path / f"{prefix}-notmine.tmp"
    for path in (dead, alive, foreign, unrelated):
        path.write_bytes(b"partial")
    with pytest.warns(StaleTemporaryWarning, match="another host"):
        assert remove_stale_temporaries(output) == [dead]
    assert entries(tmp_path) == sorted(p.name for p in (output, alive, foreign, unrelated))


def test_killed_overwrite_puts_the_old_output_back(tmp_path):
    output = tmp_path / "out.zarr"
    write_raster(noise((1, 64, 64)), output)
    from rastermatch.io import _host_hash, _temp_prefix

    # a kill between moving the old output aside and moving the new one in
    aside = tmp_path / f"{_temp_prefix(output)}-{dead_pid()}-{_host_hash()}-00000000.old"
    output.rename(aside)
    assert remove_stale_temporaries(output) == [aside]
    assert entries(tmp_path) == ["out.zarr"]
    assert int(open_raster(output).max()) > 0


# -- damaged inputs ----------------------------------------------------------------------


def tiled_copy(source: Path, target: Path, **profile) -> Path:
    with rasterio.open(source) as src:
        options = dict(src.profile, tiled=True, blockxsize=256, blockysize=256, **profile)
        with rasterio.open(target, "w", **options) as dst:
            dst.write(src.read())
    return target


def test_truncated_geotiff_names_file_band_and_cause(tmp_path):
    whole = tiled_copy(RGB, tmp_path / "whole.tif", interleave="band", compress="deflate")
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    scene = open_raster(cut)  # the header is intact: opening works, reading does not
    with pytest.raises(RasterReadError) as caught:
        scene.compute()
    message = one_line(caught.value)
    assert message.startswith(f"reading {cut} band ")
    assert "rows 0-" in message and "columns 0-" in message
    assert "IReadBlock failed" in message
    assert "See previous exception" not in message


def set_tiff_tag(path: Path, tag: int, value: int) -> None:
    """Overwrite a SHORT/LONG value of the first IFD of a little-endian classic TIFF."""
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"II*\x00"
    (offset,) = struct.unpack_from("<I", raw, 4)
    (count,) = struct.unpack_from("<H", raw, offset)
    for index in range(count):
        entry = offset + 2 + 12 * index
        entry_tag, entry_type = struct.unpack_from("<HH", raw, entry)
        if entry_tag == tag:
            fmt = "<H" if entry_type == 3 else "<I"
            struct.pack_into(fmt, raw, entry + 8, value)
            path.write_bytes(bytes(raw))
            return
    raise AssertionError(f"tag {tag} not found")


def test_lying_geotiff_header_names_file_band_and_cause(tmp_path):
    liar = tiled_copy(RGB, tmp_path / "liar.tif", interleave="band", compress="none")
    set_tiff_tag(liar, 259, 8)  # claims Deflate compression; the tiles are raw bytes
    with pytest.raises(RasterReadError) as caught:
        open_raster(liar).compute()
    message = one_line(caught.value)
    assert message.startswith(f"reading {liar} band ")
    assert "IReadBlock failed" in message


def written_zarr(tmp_path: Path, nodata: int | None) -> Path:
    data = noise((2, 512, 512), nodata=nodata)
    return write_raster(data, tmp_path / f"nodata-{nodata}.zarr")


def chunk_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "data" / "c").rglob("*") if p.is_file())


def test_zarr_with_a_missing_chunk_is_refused(tmp_path):
    store = written_zarr(tmp_path, nodata=None)
    chunk_files(store)[5].unlink()
    with pytest.raises(RasterReadError) as caught:
        open_raster(store)
    message = one_line(caught.value)
    assert str(store) in message and "missing 1 of its 8 chunks" in message


def test_zarr_written_here_with_a_missing_chunk_is_refused_whatever_the_fill(tmp_path):
    store = written_zarr(tmp_path, nodata=0)  # the writer makes the fill value the nodata
    meta = json.loads((store / "data" / "zarr.json").read_text())
    assert meta["attributes"]["rastermatch_complete_chunks"] is True
    chunk_files(store)[3].unlink()
    chunk_files(store)[0].unlink()
    with pytest.raises(RasterReadError) as caught:
        open_raster(store)
    message = one_line(caught.value)
    assert str(store) in message and "missing 2 of its 8 chunks" in message


def test_zarr_marker_is_not_copied_into_geotiff_tags(tmp_path):
    scene = open_raster(written_zarr(tmp_path, nodata=0))
    assert scene.attrs["rastermatch_complete_chunks"] is True
    with rasterio.open(write_raster(scene, tmp_path / "out.tif")) as src:
        assert "rastermatch_complete_chunks" not in src.tags()


def test_foreign_zarr_missing_chunks_that_are_nodata_by_zarrs_rule_are_accepted(tmp_path):
    values = np.arange(1, 512 * 512 + 1, dtype=np.uint32).reshape(1, 512, 512)
    dataset = xr.Dataset({"data": (("band", "y", "x"), values, {"nodata": 0})})
    store = tmp_path / "foreign.zarr"
    encoding = {"data": {"chunks": (1, 256, 256), "fill_value": 0, "_FillValue": None}}
    dataset.to_zarr(store, zarr_format=3, consolidated=False, encoding=encoding)
    chunk_files(store)[0].unlink()
    scene = open_raster(store)
    assert scene.rio.nodata == 0
    assert int((scene.isel(band=0, y=slice(0, 256), x=slice(0, 256)) != 0).sum()) == 0
    assert int((scene.isel(band=0, y=slice(256, 512)) == 0).sum()) == 0


def test_zarr_with_a_corrupt_chunk_names_store_variable_band_and_chunk(tmp_path):
    store = written_zarr(tmp_path, nodata=0)
    chunk_files(store)[-1].write_bytes(b"not a blosc frame" * 10)
    scene = open_raster(store, chunks={"band": 1, "y": 256, "x": 256})
    with pytest.raises(RasterReadError) as caught:
        scene.compute()
    message = one_line(caught.value)
    assert message.startswith(f"reading the Zarr store {store}, variable 'data', band 2,")
    assert "rows 256-511, columns 256-511" in message
    assert "stored chunk band 1, y 1, x 1" in message
    assert "checksum" in message  # the crc32c codec refuses it before blosc decodes it


@pytest.mark.parametrize("compress", ["lz4", "zstd", "none"])
def test_zarr_with_a_truncated_chunk_fails_its_checksum(tmp_path, compress):
    data = noise((2, 512, 512), nodata=0)
    store = write_raster(data, tmp_path / f"{compress}.zarr", compress=compress)
    chunk = chunk_files(store)[-1]
    chunk.write_bytes(chunk.read_bytes()[:1000])  # cut short, as by an interrupted copy
    scene = open_raster(store, chunks={"band": 1, "y": 256, "x": 256})
    np.testing.assert_array_equal(scene[:, :256].values, data[:, :256].values)  # others fine
    with pytest.raises(RasterReadError) as caught:
        scene.compute()
    message = one_line(caught.value)
    assert message.startswith(f"reading the Zarr store {store}, variable 'data', band 2,")
    assert "stored chunk band 1, y 1, x 1" in message
    assert "checksum" in message


def test_zarr_damaged_chunk_named_inside_a_larger_block(tmp_path):
    store = written_zarr(tmp_path, nodata=0)  # 2 x 512 x 512 in chunks of 1 x 256 x 256
    chunk = chunk_files(store)[6]  # band 1, y 1, x 0
    chunk.write_bytes(chunk.read_bytes()[:1000])
    with pytest.raises(RasterReadError) as caught:
        open_raster(store, chunks={"band": 2, "y": 512, "x": 512}).compute()  # one block
    message = one_line(caught.value)
    assert message.startswith(f"reading the Zarr store {store}, variable 'data', band 2,")
    assert "rows 256-511, columns 0-255 (stored chunk band 1, y 1, x 0)" in message
    assert "checksum" in message


# -- names, checks before any work -------------------------------------------------------


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_250_byte_output_name_works(tmp_path, suffix):
    name = "n" * (250 - len(suffix)) + suffix
    output = write_raster(noise((1, 64, 64)), tmp_path / name)
    assert entries(tmp_path) == [name]
    assert open_raster(output).shape == (1, 64, 64)


def test_256_byte_output_name_is_refused_before_any_work(tmp_path):
    name = "n" * 252 + ".tif"
    with raise_if_dask_computes(), pytest.raises(RasterWriteError) as caught:
        write_raster(noise(), tmp_path / name)
    assert "256 bytes" in one_line(caught.value) and "shorter name" in str(caught.value)
    with pytest.raises(RasterWriteError, match="256 bytes"):
        check_output_path(tmp_path / name)
    assert entries(tmp_path) == []


def test_check_output_path(tmp_path):
    existing = tmp_path / "exists.tif"
    existing.write_bytes(b"x")
    with pytest.raises(OutputExistsError) as caught:
        check_output_path(existing)
    assert caught.value.path == existing
    assert "pass overwrite" not in str(caught.value)
    assert check_output_path(existing, overwrite=True) == existing

    with pytest.raises(RasterWriteError, match="suffix"):
        check_output_path(tmp_path / "out.png")
    assert check_output_path(tmp_path / "report.png", kind="file").name == "report.png"
    with pytest.raises(RasterWriteError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.tif")

    store = write_raster(noise((1, 64, 64)), tmp_path / "in.zarr")
    for output in (store, store / "data" / "inside.tif", tmp_path / "." / "in.zarr"):
        with pytest.raises(RasterWriteError, match="input"):
            check_output_path(output, inputs=[None, store], overwrite=True)
    mask = tmp_path / "mask.tif"
    mask.write_bytes(b"m")
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    (tmp_path / "alias.tif").symlink_to(mask)
    for output in (tmp_path / "link" / ".." / "mask.tif", tmp_path / "alias.tif"):
        with pytest.raises(RasterWriteError, match="input"):
            check_output_path(output, inputs=[mask], overwrite=True)
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(RasterWriteError, match="directory"):
        check_output_path(folder, kind="file", overwrite=True)


def test_chunkings_that_cannot_finish_are_refused(tmp_path):
    with pytest.raises(OptionError, match="1,703,814 blocks") as caught:
        open_raster(RGB, chunks=1)
    assert "larger chunks" in one_line(caught.value)
    assert open_raster(RGB, chunks={"y": 64, "x": 64}).data.npartitions == 13 * 12


# -- what outputs keep, and that they are reproducible -----------------------------------


def test_colour_interpretation_is_kept(tmp_path):
    scene = open_raster(RGB)
    tif = write_raster(scene, tmp_path / "rgb.tif")
    with rasterio.open(tif) as src:
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue"]
    # through Zarr and a band selection: the interpretation follows the band labels
    store = write_raster(scene, tmp_path / "rgb.zarr")
    reordered = open_raster(store).isel(band=[2, 1, 0])
    tif = write_raster(reordered, tmp_path / "bgr.tif")
    with rasterio.open(tif) as src:
        assert [c.name for c in src.colorinterp] == ["blue", "green", "red"]
    assert entries(tmp_path) == ["bgr.tif", "rgb.tif", "rgb.zarr"]  # no .aux.xml sidecars


def tree_bytes(path: Path) -> list[tuple[str, bytes]]:
    if path.is_file():
        return [("", path.read_bytes())]
    return [
        (str(p.relative_to(path)), p.read_bytes()) for p in sorted(path.rglob("*")) if p.is_file()
    ]


@pytest.mark.parametrize(("name", "options"), FORMATS, ids=["gtiff", "cog", "zarr"])
def test_identical_inputs_give_identical_bytes(tmp_path, name, options):
    scene = open_raster(RGB, chunks={"band": 1, "y": 128, "x": 128})
    first = write_raster(scene, tmp_path / f"a-{name}", tile_size=128, **options)
    second = write_raster(scene, tmp_path / f"b-{name}", tile_size=128, **options)
    assert tree_bytes(first) == tree_bytes(second)


# -- distributed ---------------------------------------------------------------------------


@pytest.mark.slow
def test_failed_distributed_write_leaves_nothing(tmp_path):
    distributed = pytest.importorskip("distributed")

    def fail_last(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        location = block_info[0]["chunk-location"]
        if location == (0, 3, 3):
            raise RuntimeError("boom in the last block")
        time.sleep(0.2)  # others still run when the failure arrives
        return block

    data = noise()
    failing = data.copy(data=data.data.map_blocks(fail_last, dtype=data.dtype))
    with (
        distributed.LocalCluster(
            n_workers=1, processes=False, threads_per_worker=2, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        for name in ("out.zarr", "out.tif"):
            with pytest.raises(RuntimeError, match="boom"):
                write_raster(failing, tmp_path / name)
            time.sleep(0.5)  # a chunk written late would show up now
            assert entries(tmp_path) == []
