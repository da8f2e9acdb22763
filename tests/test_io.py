"""Tests of rastermatch.io: real files in tmp_path, real schedulers, no mocks."""

from __future__ import annotations

import json
import os
import shutil
import threading
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from dask.delayed import Delayed

from rastermatch.errors import (
    BandMismatchError,
    DimensionError,
    InputTypeError,
    OutputExistsError,
    RasterReadError,
    RasterWriteError,
)
from rastermatch.io import open_raster, read_provenance, write_raster

DATA = Path(__file__).parent.parent / "data"
RGB = DATA / "rasterio_RGB.byte.tif"  # uint8, 3 bands, nodata 0, EPSG:32618
TARGET = DATA / "arrnorm_target.tif"  # uint16, 4 bands, no nodata, EPSG:32619
LANDSAT = DATA / "riohist_reference1_landsat.tif"  # uint16, 3 bands, nodata 0


# -- helpers -----------------------------------------------------------------------------


def read_tif(path: Path) -> tuple[np.ndarray, dict, tuple[str | None, ...]]:
    """Pixels, profile and band descriptions of a GeoTIFF, read with rasterio directly."""
    with rasterio.open(path) as src:
        return src.read(), dict(src.profile), src.descriptions


def entries(directory: Path) -> list[str]:
    """Every name in ``directory``, hidden ones included (temporaries start with a dot)."""
    return sorted(p.name for p in directory.iterdir())


def synthetic(
    shape: tuple[int, int, int] = (2, 600, 700),
    chunks: tuple[int, int, int] = (1, 256, 256),
    dtype: str = "uint16",
    fail_last_block: bool = False,
) -> xr.DataArray:
    """A georeferenced random (band, y, x) array; optionally its last block raises."""
    rng = np.random.default_rng(42)
    values = rng.integers(1, 4000, size=shape).astype(dtype)
    arr = da.from_array(values, chunks=chunks)
    if fail_last_block:

        def boom(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
            info = block_info[0]
            if all(
                i == n - 1 for i, n in zip(info["chunk-location"], info["num-chunks"], strict=True)
            ):
                raise RuntimeError("boom in the last block")
            return block

        arr = arr.map_blocks(boom, dtype=arr.dtype)
    transform = Affine(30.0, 0.0, 500000.0, 0.0, -30.0, 4000000.0)
    _, height, width = shape
    result = xr.DataArray(
        arr,
        dims=("band", "y", "x"),
        coords={
            "band": np.arange(1, shape[0] + 1),
            "y": 4000000.0 - 30.0 * (np.arange(height) + 0.5),
            "x": 500000.0 + 30.0 * (np.arange(width) + 0.5),
        },
    )
    result = result.rename(None)  # xarray names a DataArray after the dask array's key
    result = result.rio.write_crs("EPSG:32633").rio.write_transform(transform)
    return result.rio.write_nodata(0, encoded=False)


def big_provenance() -> dict:
    """A provenance record of roughly 100 KB."""
    return {
        "tool": "rastermatch",
        "inputs": [f"/scenes/{i:05d}.tif" for i in range(2000)],
        "lut": list(range(10000)),
        "nested": {"ok": True, "none": None, "pi": 3.14159},
    }


# -- open_raster -------------------------------------------------------------------------


def test_open_geotiff_is_lazy_integer_with_nodata_metadata():
    scene = open_raster(RGB)
    assert scene.dims == ("band", "y", "x")
    assert isinstance(scene.data, da.Array)
    assert scene.dtype == np.uint8  # nodata not turned into NaN
    assert scene.rio.nodata == 0
    assert scene.rio.crs.to_epsg() == 32618
    assert scene.band.values.tolist() == [1, 2, 3]
    assert scene.encoding["source"] == str(RGB.resolve())
    # A small pixel-interleaved file: one chunk holding all bands.
    assert scene.chunks == ((3,), (718,), (791,))
    with rasterio.open(RGB) as src:
        np.testing.assert_array_equal(scene.values, src.read())


def test_open_geotiff_chunks_are_multiples_of_tiles(tmp_path):
    path = tmp_path / "tiled.tif"
    profile = {
        "driver": "GTiff",
        "width": 3000,
        "height": 2700,
        "count": 2,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "interleave": "band",
        "crs": "EPSG:32633",
        "transform": Affine(10.0, 0.0, 0.0, 0.0, -10.0, 27000.0),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.ones((2, 2700, 3000), dtype="uint8"))
    scene = open_raster(path)
    band_chunks, y_chunks, x_chunks = scene.chunks
    assert band_chunks == (1, 1)  # band-interleaved: one band per chunk
    assert all(c % 256 == 0 for c in y_chunks[:-1]) and all(c % 256 == 0 for c in x_chunks[:-1])
    assert 1024 <= y_chunks[0] <= 4096 and 1024 <= x_chunks[0] <= 4096


def test_open_geotiff_band_descriptions_become_labels(tmp_path):
    path = tmp_path / "described.tif"
    shutil.copy(TARGET, path)
    path.chmod(0o644)
    with rasterio.open(path, "r+") as dst:
        for i, name in enumerate(["red", "nir", "swir1", "swir2"], start=1):
            dst.set_band_description(i, name)
    scene = open_raster(path)
    assert scene.band.values.tolist() == ["red", "nir", "swir1", "swir2"]
    assert scene.rio.nodata is None


def test_open_raster_band_names(tmp_path):
    scene = open_raster(RGB, band_names=["r", "g", "b"])
    assert scene.band.values.tolist() == ["r", "g", "b"]
    with pytest.raises(BandMismatchError, match="3 bands"):
        open_raster(RGB, band_names=["r", "g"])


def test_open_raster_missing_file(tmp_path):
    missing = tmp_path / "nope.tif"
    with pytest.raises(RasterReadError, match=r"nope\.tif does not exist"):
        open_raster(missing)
    with pytest.raises(RasterReadError, match=r"~no-such-user-here/a\.tif does not exist"):
        open_raster("~no-such-user-here/a.tif")  # no home directory to expand: named as given


def test_open_raster_not_a_raster(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("this is not a raster\n")
    with pytest.raises(RasterReadError, match=r"notes\.tif") as info:
        open_raster(text)
    assert "not recognized" in str(info.value) or "not a" in str(info.value)


# -- GeoTIFF writing ---------------------------------------------------------------------


def test_geotiff_round_trip(tmp_path):
    scene = open_raster(RGB, band_names=["red", "green", "blue"])
    out = write_raster(scene, tmp_path / "copy.tif", provenance={"step": "copy"})
    assert out == tmp_path / "copy.tif"
    assert entries(tmp_path) == ["copy.tif"]

    pixels, profile, descriptions = read_tif(out)
    with rasterio.open(RGB) as ref:
        np.testing.assert_array_equal(pixels, ref.read())
        assert profile["crs"] == ref.crs
        assert profile["transform"] == ref.transform
    assert profile["dtype"] == "uint8"
    assert profile["nodata"] == 0
    assert profile["tiled"] and profile["blockxsize"] == profile["blockysize"] == 512
    assert profile["compress"] == "zstd"
    assert descriptions == ("red", "green", "blue")
    assert read_provenance(out) == {"step": "copy"}

    again = open_raster(out)
    assert again.band.values.tolist() == ["red", "green", "blue"]
    assert again.rio.nodata == 0


def test_geotiff_without_nodata_stays_without(tmp_path):
    scene = open_raster(TARGET)
    out = write_raster(scene, tmp_path / "target.tif", compress="deflate", tile_size=256)
    pixels, profile, descriptions = read_tif(out)
    with rasterio.open(TARGET) as ref:
        np.testing.assert_array_equal(pixels, ref.read())
    assert profile["nodata"] is None
    assert profile["dtype"] == "uint16"
    assert profile["compress"] == "deflate"
    assert descriptions == (None, None, None, None)  # integer labels: no descriptions


def test_geotiff_unaligned_chunks_and_numpy_data(tmp_path):
    scene = synthetic(chunks=(2, 300, 333))  # chunk edges off the 256-pixel tiles
    out = write_raster(scene, tmp_path / "a.tif", tile_size=256)
    np.testing.assert_array_equal(read_tif(out)[0], scene.values)
    in_memory = scene.copy(data=scene.values)  # numpy-backed
    out = write_raster(in_memory, tmp_path / "b.tif", compress="none")
    np.testing.assert_array_equal(read_tif(out)[0], scene.values)


def test_cog_is_valid(tmp_path):
    scene = open_raster(LANDSAT)
    prov = big_provenance()
    out = write_raster(scene, tmp_path / "cog.tif", cog=True, tile_size=128, provenance=prov)
    assert entries(tmp_path) == ["cog.tif"]  # the staging file is gone
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.profile["tiled"] and src.block_shapes[0] == (128, 128)
        assert src.overviews(1)  # at least one overview level
        assert src.nodata == 0
        with rasterio.open(LANDSAT) as ref:
            np.testing.assert_array_equal(src.read(), ref.read())
            assert src.crs == ref.crs and src.transform == ref.transform
    assert read_provenance(out) == prov


# -- Zarr writing and reading ------------------------------------------------------------


def test_zarr_round_trip(tmp_path):
    scene = open_raster(TARGET, band_names=["red", "nir", "swir1", "swir2"])
    scene = scene.rio.write_nodata(0, encoded=False)
    path = tmp_path / "target.zarr"
    with warnings.catch_warnings():
        # No zarr unstable-spec (FutureWarning) or consolidated-metadata (UserWarning) notices.
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", UserWarning)
        out = write_raster(scene, path, provenance=big_provenance())
    assert entries(tmp_path) == ["target.zarr"]

    root = json.loads((path / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["consolidated_metadata"] is not None
    meta = json.loads((path / "data" / "zarr.json").read_text())
    assert [c["name"] for c in meta["codecs"]] == ["bytes", "blosc", "crc32c"]
    assert meta["codecs"][1]["configuration"]["cname"] == "lz4"
    assert meta["codecs"][1]["configuration"]["shuffle"] == "shuffle"

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", UserWarning)
        ds = xr.open_zarr(out, decode_coords="all")
        back = ds["data"]
        assert back.dtype == np.uint16
        assert back.band.values.tolist() == ["red", "nir", "swir1", "swir2"]
        assert back.rio.crs == scene.rio.crs
        assert back.rio.transform() == scene.rio.transform()
        assert back.rio.nodata == 0
        np.testing.assert_array_equal(back.values, scene.values)

    reopened = open_raster(out)
    assert reopened.dims == ("band", "y", "x")
    assert reopened.dtype == np.uint16
    assert reopened.band.values.tolist() == ["red", "nir", "swir1", "swir2"]
    assert reopened.rio.crs == scene.rio.crs
    assert reopened.rio.transform() == scene.rio.transform()
    assert reopened.rio.nodata == 0
    assert reopened.encoding["source"] == str(path.resolve())
    np.testing.assert_array_equal(reopened.values, scene.values)
    assert read_provenance(out) == big_provenance()


def test_zarr_float_nan_nodata_and_irregular_chunks(tmp_path):
    scene = synthetic(dtype="float32").astype("float32")
    scene = scene.chunk({"y": (100, 300, 200), "x": 350}).rio.write_nodata(np.nan)
    out = write_raster(scene, tmp_path / "f.zarr", compress="zstd")
    meta = json.loads((out / "data" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [1, 300, 350]
    assert meta["codecs"][1]["name"] == "zstd"
    back = open_raster(out)
    assert back.dtype == np.float32
    assert np.isnan(back.rio.nodata)
    np.testing.assert_array_equal(back.values, scene.values)


def test_zarr_codec_choices(tmp_path):
    from zarr.codecs import ZstdCodec

    scene = synthetic()
    plain = write_raster(scene, tmp_path / "plain.zarr", compress="none")
    custom = write_raster(scene, tmp_path / "custom.zarr", compress=ZstdCodec(level=5))
    assert [
        c["name"] for c in json.loads((plain / "data" / "zarr.json").read_text())["codecs"]
    ] == ["bytes", "crc32c"]
    codecs = json.loads((custom / "data" / "zarr.json").read_text())["codecs"]
    assert codecs[1] == {"name": "zstd", "configuration": {"level": 5, "checksum": False}}
    assert codecs[2] == {"name": "crc32c"}  # the checksum always follows the compressor
    for out in (plain, custom):
        np.testing.assert_array_equal(open_raster(out).values, scene.values)
    with pytest.raises(RasterWriteError, match="Zarr compress"):
        write_raster(scene, tmp_path / "bad.zarr", compress="deflate")


def test_zarr_v2_store_readable(tmp_path):
    values = np.arange(12 * 10, dtype="int16").reshape(12, 10)
    grid = xr.DataArray(
        values,
        dims=("y", "x"),
        coords={"y": 100.0 - 10.0 * (np.arange(12) + 0.5), "x": 10.0 * (np.arange(10) + 0.5)},
        name="elevation",
    ).rio.write_crs("EPSG:32631")
    dataset = grid.to_dataset()
    path = tmp_path / "v2.zarr"
    encoding = {"elevation": {"_FillValue": -9999, "grid_mapping": "spatial_ref"}}
    dataset.to_zarr(path, zarr_format=2, consolidated=True, encoding=encoding)
    assert (path / ".zgroup").exists()

    scene = open_raster(path)
    assert scene.dims == ("band", "y", "x") and scene.sizes["band"] == 1
    assert scene.dtype == np.int16
    assert scene.rio.crs.to_epsg() == 32631
    assert scene.rio.transform() == Affine(10.0, 0.0, 0.0, 0.0, -10.0, 100.0)
    assert scene.rio.nodata == -9999
    np.testing.assert_array_equal(scene.values[0], values)


def test_zarr_variable_choice_and_dims(tmp_path):
    dataset = xr.Dataset(
        {
            "a": (("band", "y", "x"), np.zeros((1, 4, 5), dtype="uint8")),
            "b": (("band", "y", "x"), np.ones((1, 4, 5), dtype="uint8")),
            "c": (("time", "row", "col"), np.ones((1, 4, 5), dtype="uint8")),
            "d": (("date", "lat", "lon"), np.ones((2, 4, 5), dtype="uint8")),
        }
    )
    path = tmp_path / "multi.zarr"
    dataset.to_zarr(path, zarr_format=3, consolidated=False)
    with pytest.raises(RasterReadError, match="variable="):
        open_raster(path)
    assert int(open_raster(path, variable="b").sum()) == 20
    with pytest.raises(DimensionError, match=r"no spatial dims among them"):
        open_raster(path, variable="c")
    stack = open_raster(path, variable="d")  # spatial dims by name: lat/lon are y/x
    assert stack.dims == ("date", "lat", "lon") and int(stack.sum()) == 40
    with pytest.raises(RasterReadError, match="no data variable 'e'"):
        open_raster(path, variable="e")


# -- safety: refusals, failures, overwrite -----------------------------------------------


@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_existing_output_is_refused(tmp_path, name):
    out = write_raster(synthetic(), tmp_path / name)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        write_raster(synthetic(), out)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_output_equal_to_input_is_refused(tmp_path):
    copy = tmp_path / "scene.tif"
    shutil.copy(RGB, copy)
    scene = open_raster(copy)
    with pytest.raises(RasterWriteError, match="input"):
        write_raster(scene, copy, overwrite=True)
    other = synthetic()
    with pytest.raises(RasterWriteError, match="input"):
        write_raster(other, tmp_path / "." / "scene.tif", overwrite=True, inputs=[str(copy)])
    with rasterio.open(copy) as src, rasterio.open(RGB) as ref:
        np.testing.assert_array_equal(src.read(), ref.read())


@pytest.mark.parametrize(
    ("name", "options"),
    [("bad.tif", {}), ("bad.tif", {"cog": True}), ("bad.zarr", {})],
)
def test_failed_write_leaves_nothing(tmp_path, name, options):
    broken = synthetic(fail_last_block=True)
    with pytest.raises(RuntimeError, match="boom"):
        write_raster(broken, tmp_path / name, **options)
    assert entries(tmp_path) == []


def test_failed_overwrite_keeps_the_old_output(tmp_path):
    out = write_raster(synthetic(), tmp_path / "keep.zarr")
    with pytest.raises(RuntimeError, match="boom"):
        write_raster(synthetic(fail_last_block=True), out, overwrite=True)
    assert entries(tmp_path) == ["keep.zarr"]
    np.testing.assert_array_equal(open_raster(out).values, synthetic().values)


@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_overwrite_replaces(tmp_path, name):
    first = synthetic()
    out = write_raster(first, tmp_path / name)
    second = (first + 1).rio.write_nodata(0, encoded=False)
    assert write_raster(second, out, overwrite=True, provenance={"n": 2}) == out
    assert entries(tmp_path) == [name]
    np.testing.assert_array_equal(open_raster(out).values, second.values)
    assert read_provenance(out) == {"n": 2}


def test_compute_false_returns_delayed_that_writes(tmp_path):
    calls = []

    def count(block: np.ndarray) -> np.ndarray:
        calls.append(block.shape)
        return block

    scene = synthetic()
    meta = np.empty((0, 0, 0), dtype=scene.dtype)
    counted = scene.copy(data=scene.data.map_blocks(count, meta=meta))
    tif = write_raster(counted, tmp_path / "lazy.tif", compute=False)
    zarr = write_raster(counted, tmp_path / "lazy.zarr", compute=False)
    assert isinstance(tif, Delayed) and isinstance(zarr, Delayed)
    assert calls == [] and entries(tmp_path) == []  # building the writes computed nothing

    paths = dask.compute(tif, zarr)
    assert paths == (tmp_path / "lazy.tif", tmp_path / "lazy.zarr")
    assert entries(tmp_path) == ["lazy.tif", "lazy.zarr"]
    np.testing.assert_array_equal(read_tif(paths[0])[0], scene.values)
    np.testing.assert_array_equal(open_raster(paths[1]).values, scene.values)


def test_bad_arguments(tmp_path):
    scene = synthetic()
    with pytest.raises(RasterWriteError, match="suffix"):
        write_raster(scene, tmp_path / "out.png")
    with pytest.raises(RasterWriteError, match="GeoTIFF compress"):
        write_raster(scene, tmp_path / "out.tif", compress="lz4")
    with pytest.raises(RasterWriteError, match="multiple of 16"):
        write_raster(scene, tmp_path / "out.tif", tile_size=100)
    with pytest.raises(RasterWriteError, match="JSON"):
        write_raster(scene, tmp_path / "out.tif", provenance={"bad": object()})
    with pytest.raises(RasterWriteError, match="does not exist"):
        write_raster(scene, tmp_path / "missing" / "out.tif")
    with pytest.raises(DimensionError):
        write_raster(scene.rename(y="lat"), tmp_path / "out.tif")
    with (
        pytest.raises(RasterWriteError, match="multiprocessing"),
        dask.config.set(scheduler="processes"),
    ):
        write_raster(scene, tmp_path / "out.tif")
    assert entries(tmp_path) == []


def test_write_raster_refuses_what_is_not_a_dataarray(tmp_path):
    with pytest.raises(InputTypeError, match="DataArray"):
        write_raster(np.zeros((1, 4, 4)), tmp_path / "out.tif")
    with pytest.raises(InputTypeError, match="list"):
        write_raster([[1, 2]], tmp_path / "out.tif")
    assert entries(tmp_path) == []


def test_existing_output_message_and_path(tmp_path):
    out = write_raster(synthetic(), tmp_path / "out.tif")
    with pytest.raises(OutputExistsError) as caught:
        write_raster(synthetic(), out)
    assert caught.value.path == out
    message = str(caught.value)
    assert "allow replacing it (overwrite=True, or --overwrite on the command line)" in message
    assert "pass overwrite" not in message


def test_user_chunks_keep_their_layout_and_values(tmp_path):
    scene = open_raster(RGB, chunks={"band": 1, "y": 300, "x": 400})
    assert scene.chunks == ((1, 1, 1), (300, 300, 118), (400, 391))
    assert scene.data.name.startswith("open_raster-")
    with rasterio.open(RGB) as src:
        np.testing.assert_array_equal(scene.values, src.read())
    # the same file opened twice gives the same graph keys (dask merges them)
    assert open_raster(RGB, chunks={"band": 1, "y": 300, "x": 400}).data.name == scene.data.name
    assert open_raster(RGB, chunks=(3, 718, 791)).data.npartitions == 1


def test_custom_lock_is_used(tmp_path):
    lock = threading.Lock()
    out = write_raster(synthetic(), tmp_path / "locked.tif", lock=lock)
    assert not lock.locked()
    np.testing.assert_array_equal(read_tif(out)[0], synthetic().values)


# -- distributed -------------------------------------------------------------------------


@pytest.mark.slow
def test_distributed_write_matches_threaded(tmp_path):
    distributed = pytest.importorskip("distributed")
    scene = open_raster(LANDSAT, chunks={"band": 1, "y": 128, "x": 128})
    scene = scene.assign_coords(band=["r", "g", "b"])
    local = tmp_path / "threads"
    cluster_dir = tmp_path / "cluster"
    local.mkdir()
    cluster_dir.mkdir()
    with dask.config.set(scheduler="threads"):
        write_raster(scene, local / "s.tif", tile_size=128, provenance={"p": 1})
        write_raster(scene, local / "s.zarr", provenance={"p": 1})

    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster),
    ):
        write_raster(scene, cluster_dir / "s.tif", tile_size=128, provenance={"p": 1})
        write_raster(scene, cluster_dir / "s.zarr", provenance={"p": 1})
        # A delayed write computed on the cluster runs on a worker, which writes from there.
        dask.compute(write_raster(scene, cluster_dir / "d.tif", tile_size=128, compute=False))

    assert entries(cluster_dir) == ["d.tif", "s.tif", "s.zarr"]
    expected, expected_profile, expected_descriptions = read_tif(local / "s.tif")
    for name in ("s.tif", "d.tif"):
        pixels, profile, descriptions = read_tif(cluster_dir / name)
        np.testing.assert_array_equal(pixels, expected)
        assert profile == expected_profile
        assert descriptions == expected_descriptions == ("r", "g", "b")
    assert read_provenance(cluster_dir / "s.tif") == {"p": 1}

    # Zarr: every chunk file is byte-identical.
    local_files = sorted(p.relative_to(local / "s.zarr") for p in (local / "s.zarr").rglob("*"))
    cluster_files = sorted(
        p.relative_to(cluster_dir / "s.zarr") for p in (cluster_dir / "s.zarr").rglob("*")
    )
    assert local_files == cluster_files
    for rel in local_files:
        if (local / "s.zarr" / rel).is_file():
            assert (local / "s.zarr" / rel).read_bytes() == (
                cluster_dir / "s.zarr" / rel
            ).read_bytes()


def test_a_temporary_keeping_its_suffix_is_found_when_stale(tmp_path):
    from rastermatch.io import remove_stale_temporaries, temporary_sibling

    final = tmp_path / "report.png"
    tmp = temporary_sibling(final, keep_suffix=True)
    assert tmp.parent == tmp_path and tmp.name.startswith(".report.png.") and tmp.suffix == ".png"
    dead = tmp.with_name(tmp.name.replace(f"-{os.getpid()}-", "-999999999-", 1))
    dead.write_bytes(b"")
    assert remove_stale_temporaries(final) == [dead] and not dead.exists()


# -- what a GeoTIFF write keeps: colour interpretation, descriptions, band tags --------------


def tagged_rgb(path: Path, descriptions: tuple[str, ...] = ("r", "g", "b")) -> Path:
    """A uint16 RGB GeoTIFF with band descriptions, per-band tags, GDAL statistics and the
    TIFF tags of the software that wrote it."""
    values, profile, _ = read_tif(RGB)
    profile.update(dtype="uint16", photometric="RGB", tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values.astype("uint16") * 16)
        dst.update_tags(TIFFTAG_SOFTWARE="Other 1.0", TIFFTAG_DATETIME="2020:01:01 00:00:00")
        dst.update_tags(MISSION="test")
        wavelengths = (650, 550, 450)
        for index, (description, nm) in enumerate(zip(descriptions, wavelengths, strict=True), 1):
            dst.set_band_description(index, description)
            dst.update_tags(index, WAVELENGTH=str(nm), STATISTICS_MEAN="1.5")
    return path


@pytest.mark.parametrize("via", ["tif", "zarr"])
def test_geotiff_write_keeps_colours_descriptions_and_band_tags(tmp_path, via):
    scene = open_raster(tagged_rgb(tmp_path / "in.tif"))
    assert scene.band.values.tolist() == ["r", "g", "b"]
    assert "WAVELENGTH" not in scene.attrs  # band 1's tags are not the file's
    assert scene.attrs["band_tags"]["g"]["WAVELENGTH"] == "550"
    if via == "zarr":  # through a Zarr store and back: the attributes carry it all
        scene = open_raster(write_raster(scene, tmp_path / "mid.zarr"))
    out = write_raster(scene, tmp_path / "out.tif")
    with rasterio.open(out) as src:
        assert [ci.name for ci in src.colorinterp] == ["red", "green", "blue"]
        assert src.descriptions == ("r", "g", "b")
        band_tags = [src.tags(i) for i in (1, 2, 3)]
        tags = src.tags()
    assert band_tags == [{"WAVELENGTH": nm} for nm in ("650", "550", "450")]
    assert tags.get("MISSION") == "test"
    assert not {"TIFFTAG_SOFTWARE", "TIFFTAG_DATETIME", "WAVELENGTH"} & set(tags)


def test_duplicate_descriptions_are_written_back(tmp_path):
    scene = open_raster(tagged_rgb(tmp_path / "in.tif", descriptions=("x", "x", "y")))
    assert scene.band.values.tolist() == [1, 2, 3]  # duplicates cannot label bands
    out = write_raster(scene, tmp_path / "out.tif")
    assert read_tif(out)[2] == ("x", "x", "y")


@pytest.mark.parametrize(
    "dims", [("latitude", "longitude"), ("lat", "lon"), ("northing", "easting")]
)
@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_spatial_dims_rioxarray_recognises_are_written(tmp_path, dims, suffix):
    ydim, xdim = dims
    data = xr.DataArray(
        np.arange(2 * 10 * 12, dtype="uint16").reshape(2, 10, 12),
        dims=("band", ydim, xdim),
        coords={"band": [1, 2], ydim: np.linspace(50, 49, 10), xdim: np.linspace(10, 11, 12)},
    )
    data = data.rio.set_spatial_dims(x_dim=xdim, y_dim=ydim).rio.write_crs("EPSG:4326")
    back = open_raster(write_raster(data, tmp_path / f"out{suffix}"))
    assert back.rio.crs == data.rio.crs
    assert back.rio.transform().almost_equals(data.rio.transform())
    np.testing.assert_array_equal(back.values, data.values)
    assert data[ydim].attrs == {}  # the caller's coordinates are not changed


def test_inputs_given_as_urls_or_store_objects(tmp_path):
    import zarr

    from rastermatch.io import check_output_path

    existing = tmp_path / "in.tif"
    existing.write_bytes(b"not read")
    with pytest.raises(RasterWriteError, match="overwrite the input"):
        check_output_path(existing, inputs=[existing.as_uri()], overwrite=True)
    inputs = [zarr.storage.MemoryStore(), "https://example.com/in.tif", "s3://b/in.zarr"]
    assert check_output_path(tmp_path / "out.tif", inputs=inputs) == tmp_path / "out.tif"


# -- direct chunk I/O of local Zarr stores (io.zarr): the same bytes as zarr's own path --------


def _zarr_array_on_disk(path: Path, values: np.ndarray, chunks: tuple, fmt: int, **kw):
    import zarr

    array = zarr.create_array(
        store=str(path), name="v", shape=values.shape, chunks=chunks, dtype=values.dtype,
        zarr_format=fmt, **kw,
    )  # fmt: skip
    array[...] = values
    return zarr.open_group(str(path), mode="r")["v"]


def _direct_cases():
    from numcodecs import Blosc, Delta, Zlib, Zstd
    from zarr.codecs import (
        BloscCodec,
        BytesCodec,
        Crc32cCodec,
        GzipCodec,
        ShardingCodec,
        TransposeCodec,
        ZstdCodec,
    )

    return {
        # handled directly
        "v3 blosc crc32c": (3, {"compressors": [BloscCodec(cname="lz4"), Crc32cCodec()]}, True),
        "v3 crc32c first": (3, {"compressors": [Crc32cCodec(), ZstdCodec(level=1)]}, True),
        "v3 gzip": (3, {"compressors": [GzipCodec(level=1)]}, True),
        "v3 none": (3, {"compressors": None}, True),
        "v2 blosc": (2, {"compressors": Blosc(cname="zstd", shuffle=2)}, True),
        "v2 zlib": (2, {"compressors": Zlib(level=1)}, True),
        "v2 zstd /": (
            2,
            {"compressors": Zstd(level=1), "chunk_key_encoding": {"name": "v2", "separator": "/"}},
            True,
        ),
        "v2 none": (2, {"compressors": None}, True),
        # zarr's path
        "v3 sharded": (3, {"shards": (2, 18, 20), "compressors": None}, False),
        "v3 transpose": (3, {"filters": [TransposeCodec(order=(0, 2, 1))]}, False),
        "v3 big-endian": (3, {"serializer": BytesCodec(endian="big")}, False),
        "v2 filters": (2, {"filters": [Delta(dtype="<f8")], "compressors": None}, False),
        "v3 sharding codec": (3, {"serializer": ShardingCodec(chunk_shape=(1, 9, 10))}, False),
    }


@pytest.mark.filterwarnings("ignore:Combining a `sharding_indexed` codec")
@pytest.mark.parametrize("case", list(_direct_cases()))
@pytest.mark.parametrize("dtype", ["uint16", "int8"])
def test_zarr_direct_reader_matches_zarr(tmp_path, case, dtype):
    """Every window the direct reader reads equals zarr's read of it: ragged edge chunks,
    chunks never written (the fill value), windows across and inside chunks; stores it does
    not handle are left to zarr."""
    from rastermatch.io.zarr import _ChunkReader, _direct_layout

    fmt, kw, direct = _direct_cases()[case]
    if "big" in case and dtype == "int8":
        direct = True  # one-byte data have no byte order: read directly
    if "filters" in case:
        dtype = "float64"  # the Delta filter's dtype
    rng = np.random.default_rng(7)
    values = (rng.random((2, 37, 53)) * 100).astype(dtype)
    array = _zarr_array_on_disk(tmp_path / "s.zarr", values, (1, 9, 10), fmt, fill_value=3, **kw)
    folder = tmp_path / "s.zarr" / "v"
    missing = [p for p in folder.rglob("*") if p.is_file() and "zarr" not in p.name][:3]
    if "shard" not in case:
        for p in missing:  # never written: read as the fill value
            if p.name not in (".zarray", ".zattrs"):
                p.unlink()
    array = __import__("zarr").open_group(str(tmp_path / "s.zarr"), mode="r")["v"]
    layout = _direct_layout(folder, array)
    assert (layout is not None) == direct
    if layout is None:
        return
    read = _ChunkReader(layout)
    windows = [
        (slice(None), slice(None), slice(None)),
        (slice(1, 2), slice(9, 18), slice(10, 20)),  # one whole chunk
        (slice(0, 2), slice(4, 33), slice(13, 53)),  # across chunks, to the ragged edge
        (slice(0, 1), slice(30, 37), slice(50, 53)),  # inside the last chunk
        (slice(1, 2), slice(5, 5), slice(0, 53)),  # empty
    ]
    for key in windows:
        got = read(key)
        expected = array[key]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes(), key
    assert read((0, slice(None), slice(None))) is None  # an integer index: zarr's path
    assert read((slice(None), slice(None, None, 2), slice(None))) is None  # a step


@pytest.mark.parametrize(
    ("dtype", "shape", "chunks", "compress", "nodata"),
    [
        ("uint16", (2, 600, 700), (1, 256, 256), None, 0),  # ragged edges, padded with nodata
        ("int8", (3, 65, 40), (2, 32, 40), "zstd", -1),  # blocks of several rows
        ("float32", (1, 50, 70), (1, 50, 70), "none", np.nan),
        ("float64", (2, 33, 31), (1, 16, 16), "gzip", None),
    ],
)
def test_zarr_direct_writer_writes_zarrs_bytes(
    tmp_path, monkeypatch, dtype, shape, chunks, compress, nodata
):
    """write_raster's direct chunk writer leaves a store byte for byte equal to the one zarr
    writes, metadata included; the direct reader reads it back as zarr does."""
    from zarr.codecs import GzipCodec

    import rastermatch.io.zarr as rz

    scene = synthetic(shape=shape, chunks=chunks, dtype=dtype).astype(dtype)
    scene = scene.rio.write_nodata(nodata, encoded=False) if nodata is not None else scene
    codec = GzipCodec(level=1) if compress == "gzip" else compress
    direct = write_raster(scene, tmp_path / "direct.zarr", compress=codec)
    used = []
    real = rz._direct_writer
    monkeypatch.setattr(rz, "_direct_writer", lambda *a: used.append(real(*a)))  # None: zarr
    plain = write_raster(scene, tmp_path / "plain.zarr", compress=codec)
    assert used and isinstance(used[0], rz._ChunkWriter)  # the direct path applied before

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    ours, theirs = files(direct), files(plain)
    if compress == "gzip":  # gzip stamps the time into every stream: compare the rest
        assert ours.keys() == theirs.keys()
        ours = {k: v for k, v in ours.items() if k.endswith("zarr.json")}
        theirs = {k: v for k, v in theirs.items() if k.endswith("zarr.json")}
    assert ours == theirs
    back = open_raster(direct, chunks={"band": 1, "y": 40, "x": 45})  # not the stored chunks
    np.testing.assert_array_equal(back.values, scene.values)
    monkeypatch.setattr(rz, "_direct_reader", lambda *a: None)
    np.testing.assert_array_equal(open_raster(direct).values, back.values)


def test_zarr_direct_reader_refuses_damaged_chunks(tmp_path):
    """A chunk the direct reader cannot decode is a RasterReadError naming the chunk."""
    scene = synthetic(shape=(1, 64, 64), chunks=(1, 32, 32))
    out = write_raster(scene, tmp_path / "s.zarr")
    chunk = out / "data" / "c" / "0" / "1" / "0"
    for damage in (b"", b"\x02\x01", chunk.read_bytes()[:-5] + b"\x00\x00\x00\x00\x00"):
        chunk.write_bytes(damage)
        with pytest.raises(RasterReadError, match=r"rows 32-63, columns 0-31 .*stored chunk"):
            open_raster(out).compute()
