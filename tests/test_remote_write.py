"""Outputs on object stores: Zarr with its metadata last, GeoTIFF uploaded whole.

One moto S3 server (a subprocess on loopback) serves the whole session; every test works in
its own bucket.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from affine import Affine
from servers import S3Server, s3_environment, shared_s3_server
from zarr.storage import MemoryStore

from rastermatch.errors import OutputExistsError, RastermatchError, RasterWriteError
from rastermatch.io import check_output_path, open_raster, write_raster
from rastermatch.io.objectstore import MetadataLastStore

pytest.importorskip("s3fs")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def s3() -> S3Server:
    return shared_s3_server()


@pytest.fixture
def bucket(s3: S3Server):
    """A fresh bucket on the S3 server, with the environment pointing at it."""
    name = f"rm-{uuid.uuid4().hex[:12]}"
    with s3_environment(s3):
        s3.create_bucket(name)
        yield name


def _raster(bands: int = 2, height: int = 96, width: int = 80, seed: int = 0) -> xr.DataArray:
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 250, size=(bands, height, width), dtype=np.uint8)
    data = xr.DataArray(
        da.from_array(values, chunks=(1, 48, 40)),
        dims=("band", "y", "x"),
        coords={"band": np.arange(1, bands + 1)},
    )
    data = data.rio.write_crs("EPSG:32618")
    data = data.rio.write_transform(Affine(30.0, 0, 500000.0, 0, -30.0, 4200000.0))
    return data.rio.write_nodata(0)


def _pixels(data: xr.DataArray) -> np.ndarray:
    return np.asarray(data.transpose(..., "y", "x").values)


def _stored(url) -> np.ndarray:
    """The pixels of an output, read by xarray/zarr or rasterio themselves (a GeoTIFF
    downloaded whole: GDAL's /vsis3/ cache would keep a replaced object's old bytes)."""
    if isinstance(url, str) and url.endswith(".tif"):
        import fsspec

        with fsspec.open(url, "rb") as f, rasterio.MemoryFile(f.read()) as memory:
            with memory.open() as src:
                return src.read()
    return _pixels(xr.open_zarr(url, decode_coords="all")["data"])


# The commit protocol ----------------------------------------------------------------------


class _RecordingStore(MemoryStore):
    """A memory store that records the order of the keys stored in it."""

    def __init__(self, store_dict=None, *, read_only=False, order=None) -> None:
        super().__init__(store_dict, read_only=read_only)
        self.order: list[str] = [] if order is None else order

    def with_read_only(self, read_only=False):
        return type(self)(self._store_dict, read_only=read_only, order=self.order)

    async def set(self, key, value, byte_range=None):
        self.order.append(key)
        await super().set(key, value)


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_metadata_reaches_the_store_after_every_chunk_and_the_root_last():
    inner = _RecordingStore()
    staged = MetadataLastStore(inner)
    group = zarr.open_group(staged, mode="w-", zarr_format=3)
    array = group.create_array("data", shape=(2, 8, 8), chunks=(1, 4, 4), dtype="uint8")
    array[:] = np.arange(128, dtype=np.uint8).reshape(2, 8, 8)
    zarr.consolidate_metadata(staged)
    assert not any(key.endswith("zarr.json") for key in inner.order)
    with pytest.raises(FileNotFoundError):
        zarr.open_group(inner, mode="r")  # chunks only: it does not open
    staged.commit()
    metadata = [key for key in inner.order if key.endswith("zarr.json")]
    assert inner.order[-len(metadata) :] == metadata  # after every chunk
    assert metadata[-1] == "zarr.json"  # the root, holding the consolidated metadata, last
    back = zarr.open_group(inner, mode="r")
    assert np.array_equal(back["data"][:], array[:])


# Zarr on S3 -------------------------------------------------------------------------------


def _cog(tmp_path: Path) -> Path:
    with rasterio.open(ROOT / "data" / "rasterio_RGB.byte.tif") as src:
        window = rasterio.windows.Window(0, 0, 256, 256)
        profile = src.profile | {
            "driver": "COG",
            "width": 256,
            "height": 256,
            "transform": src.window_transform(window),
            "blocksize": 128,
        }
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        profile.pop("tiled", None)
        path = tmp_path / "in.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return path


def test_cog_in_from_s3_zarr_out_to_s3(s3, bucket, tmp_path):
    local = _cog(tmp_path)
    s3.client().upload_file(str(local), bucket, "scenes/in.tif")
    scene = open_raster(f"s3://{bucket}/scenes/in.tif")
    out = f"s3://{bucket}/results/out.zarr"
    write_raster(scene, out, provenance={"step": "copy"})
    keys = s3.keys(bucket, "results/")
    assert "results/out.zarr/zarr.json" in keys
    assert not any(".rastermatch" in key for key in keys)  # no marker left
    back = open_raster(out)
    with rasterio.open(local) as src:
        assert np.array_equal(_pixels(back), src.read())
        assert back.rio.crs == src.crs
        assert back.rio.transform() == src.transform


def test_existing_zarr_output_refused_then_replaced_whole(s3, bucket):
    out = f"s3://{bucket}/out.zarr"
    write_raster(_raster(bands=3, seed=1), out)
    check = check_output_path(out, overwrite=True)
    assert str(check).startswith("s3://")  # no "directory does not exist"
    with pytest.raises(OutputExistsError, match=f"s3://{bucket}/out.zarr"):
        check_output_path(out)
    with pytest.raises(OutputExistsError, match=f"s3://{bucket}/out.zarr"):
        write_raster(_raster(bands=1, seed=2), out)
    new = _raster(bands=1, height=48, width=40, seed=2)
    write_raster(new, out, overwrite=True)
    assert np.array_equal(_stored(out), _pixels(new))
    # nothing of the old store is left: no chunk of its bands 2 and 3, no stale document
    keys = s3.keys(bucket, "out.zarr/")
    assert not any(key.startswith("out.zarr/data/c/1/") for key in keys), keys
    assert not any(".rastermatch" in key for key in keys)


def test_failed_zarr_write_leaves_nothing_under_the_prefix(s3, bucket):
    def fail(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1, 0):
            raise RuntimeError("boom")
        return block

    data = _raster()
    data = data.copy(data=data.data.map_blocks(fail, dtype=data.dtype))
    with pytest.raises(RuntimeError, match="boom"):
        write_raster(data, f"s3://{bucket}/failed.zarr")
    assert s3.keys(bucket, "failed.zarr") == []


_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    import dask, dask.array as da, numpy as np, xarray as xr
    from rastermatch.io import write_raster

    def slow(block):
        time.sleep(0.3)
        return block

    arr = da.ones((2, 512, 512), dtype="uint8", chunks=(1, 64, 64)).map_blocks(slow)
    data = xr.DataArray(arr, dims=("band", "y", "x"))
    with dask.config.set(num_workers=2):
        write_raster(data, sys.argv[1], overwrite=True)
    print("finished", flush=True)
    """
)
_CHUNK = re.compile(r"killed\.zarr/data/c/\d+/(\d+)/(\d+)")


def _new_grid_chunks(keys: list[str]) -> list[str]:
    """Chunks of the killed writer's 8 x 8 grid that the old 2 x 2 output does not have."""
    return [key for key in keys if (m := _CHUNK.fullmatch(key)) and max(map(int, m.groups())) > 1]


def test_killed_overwrite_leaves_nothing_that_opens_and_the_next_write_cleans_it(
    s3, bucket, tmp_path
):
    out = f"s3://{bucket}/killed.zarr"
    write_raster(_raster(seed=5), out)  # the output the killed write replaces
    script = tmp_path / "writer.py"
    script.write_text(_KILLED_WRITER)
    writer = subprocess.Popen(
        [sys.executable, str(script), out], stdout=subprocess.PIPE, env=dict(os.environ)
    )
    try:  # killed while it writes chunks
        deadline = time.monotonic() + 90
        while not _new_grid_chunks(s3.keys(bucket, "killed.zarr/data/")):
            assert writer.poll() is None, "the writer ended before writing a chunk"
            assert time.monotonic() < deadline, "no chunk written within 90 s"
            time.sleep(0.05)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    keys = s3.keys(bucket, "killed.zarr/")
    assert _new_grid_chunks(keys)  # new chunks landed ...
    assert "killed.zarr/zarr.json" not in keys  # ... the old root went first, no new one
    assert any(".rastermatch-" in key for key in keys)  # and the marker of the dead writer
    with pytest.raises(RastermatchError):  # neither old nor new, nor a mix, opens
        open_raster(out)
    with pytest.raises(FileNotFoundError):
        xr.open_zarr(out)
    # the next write (overwrite=False: what a dead write left is no output) removes it all
    data = _raster()
    write_raster(data, out)
    assert np.array_equal(_stored(out), _pixels(data))
    keys = s3.keys(bucket, "killed.zarr/")
    assert not any(".rastermatch-" in key for key in keys)
    assert not _new_grid_chunks(keys)


# GeoTIFF on S3 -----------------------------------------------------------------------------


def test_geotiff_and_cog_out_to_s3(s3, bucket):
    data = _raster()
    out = f"s3://{bucket}/out.tif"
    write_raster(data, out, cog=True)
    assert s3.keys(bucket) == ["out.tif"]
    with rasterio.open(f"/vsis3/{bucket}/out.tif") as src:
        assert np.array_equal(src.read(), _pixels(data))
        assert src.crs == data.rio.crs
        assert src.nodata == 0
    with pytest.raises(OutputExistsError, match=out):
        write_raster(data, out)
    write_raster(data + 1, out, overwrite=True, cog=False)
    assert np.array_equal(_stored(out), _pixels(data) + 1)
    # read through GDAL's /vsis3/ in this process: the replaced object's cached bytes are gone
    assert np.array_equal(_pixels(open_raster(out)), _pixels(data) + 1)


def test_failed_geotiff_write_uploads_nothing(s3, bucket):
    def fail(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1, 1):
            raise RuntimeError("boom")
        return block

    data = _raster()
    data = data.copy(data=data.data.map_blocks(fail, dtype=data.dtype))
    with pytest.raises(RuntimeError, match="boom"):
        write_raster(data, f"s3://{bucket}/failed.tif")
    assert s3.keys(bucket) == []


# memory://, store objects, file:// ----------------------------------------------------------


def test_zarr_out_to_memory_url_and_store_object():
    data = _raster()
    url = f"memory://rastermatch-{uuid.uuid4().hex[:8]}/out.zarr"
    write_raster(data, url)
    assert np.array_equal(_stored(url), _pixels(data))
    with pytest.raises(OutputExistsError):
        write_raster(data, url)

    store = MemoryStore()
    write_raster(data, store)
    back = xr.open_zarr(store, decode_coords="all")
    assert np.array_equal(_pixels(back["data"]), _pixels(data))
    assert not any(key.startswith(".rastermatch") for key in store._store_dict)
    with pytest.raises(OutputExistsError):
        write_raster(data, store)


def test_markers_of_running_and_dead_writes(s3):
    """A marker of a running write on this host refuses a second write; one of a dead
    process is removed with what that write left (a store without its root document)."""
    from rastermatch.io.atomic import _host_hash

    data = _raster(bands=1, height=16, width=16)
    host = _host_hash()
    store = MemoryStore()
    running = f".rastermatch-{s3.process.pid}-{host}-0123abcd.staging"
    store._store_dict[running] = zarr.core.buffer.cpu.Buffer.from_bytes(b"{}")
    with pytest.raises(RasterWriteError, match=f"process {s3.process.pid}"):
        write_raster(data, store)
    del store._store_dict[running]

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    left = f".rastermatch-{finished.pid}-{host}-0123abcd.staging"
    store._store_dict[left] = zarr.core.buffer.cpu.Buffer.from_bytes(b"{}")
    store._store_dict["data/c/0/0/0"] = zarr.core.buffer.cpu.Buffer.from_bytes(b"partial")
    delayed = write_raster(data, store, compute=False)  # the write runs when computed
    assert delayed.compute() is store
    assert not any(key.startswith(".rastermatch") for key in store._store_dict)
    assert np.array_equal(_stored(store), _pixels(data))


def test_zarr_out_to_file_url(tmp_path):
    data = _raster()
    out = tmp_path / "out.zarr"
    write_raster(data, out.as_uri())
    assert np.array_equal(_stored(out), _pixels(data))
    assert not any(p.name.startswith(".out.zarr") for p in tmp_path.iterdir())


# Errors ------------------------------------------------------------------------------------


def test_store_errors_name_the_url_and_never_the_secret(s3, bucket, monkeypatch):
    data = _raster(bands=1, height=16, width=16)
    secret = "s3cr3t-" + uuid.uuid4().hex
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(RasterWriteError, match=r"s3://no-such-bucket-here/out\.zarr") as missing:
        write_raster(data, "s3://no-such-bucket-here/out.zarr")
    assert "bucket" in str(missing.value) and secret not in str(missing.value)
    with pytest.raises(RasterWriteError, match=r"s3://no-such-bucket-here/out\.tif") as missing:
        write_raster(data, "s3://no-such-bucket-here/out.tif")
    assert secret not in str(missing.value)

    # a refused connection, without botocore's retries
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(RasterWriteError, match=f"s3://{bucket}/out.zarr") as refused:
        write_raster(data, f"s3://{bucket}/out.zarr")
    assert "reached" in str(refused.value) and secret not in str(refused.value)
    s3fs.S3FileSystem.clear_instance_cache()


def test_remote_output_never_overwrites_an_input(bucket):
    out = f"s3://{bucket}/a.zarr"
    with pytest.raises(RasterWriteError, match="input"):
        check_output_path(out, inputs=[out], overwrite=True)
    with pytest.raises(RasterWriteError, match="input"):
        check_output_path(f"{out}/", inputs=[out], overwrite=True)
    with pytest.raises(RasterWriteError, match="input"):
        check_output_path(
            f"s3://{bucket}/b.zarr", inputs=[f"s3://{bucket}/b.zarr/data"], overwrite=True
        )


def test_credentials_or_query_in_an_output_url_are_refused_and_never_shown(bucket):
    """s3fs takes a URL's user:password@ as part of the bucket name (botocore then quoted it,
    secret included, in its message) and a ?query as part of the key (the store was written
    under 'q.zarr?X-Amz-Signature=...'): refused before any work, the secret not shown."""
    from rastermatch.io import read_provenance

    data = _raster(bands=1, height=16, width=16)
    secret = "SECRET" + uuid.uuid4().hex[:8]
    for url in [
        f"s3://AKIAEXAMPLE:{secret}@{bucket}/out.zarr",
        f"s3://AKIAEXAMPLE:{secret}@{bucket}/out.tif",
        f"s3://{bucket}/out.zarr?X-Amz-Signature={secret}",
        f"s3://{bucket}/out.tif#{secret}",
    ]:
        for call, args in ((check_output_path, (url,)), (write_raster, (data, url))):
            with pytest.raises(RasterWriteError, match="takes no user name") as refused:
                call(*args)
            assert secret not in str(refused.value) and f"s3://{bucket}/out." in str(refused.value)
    s3 = shared_s3_server()
    assert s3.keys(bucket) == []
    # reading: whatever the library says about the URL, the secret is not in the message
    write_raster(data, f"s3://{bucket}/in.zarr")
    with pytest.raises(RastermatchError) as failed:
        read_provenance(f"s3://AKIAEXAMPLE:{secret}@{bucket}/in.zarr")
    assert secret not in str(failed.value) and failed.value.__cause__ is None


def test_overwrite_without_a_sidecar_removes_the_replaced_outputs_sidecar(s3, bucket):
    """A GeoTIFF whose record needed a LUT sidecar, replaced by one whose record fits in its
    tag: the old sidecar went on lying next to the new raster (LUT.load/apply took it)."""
    from rastermatch import provenance as prov
    from rastermatch.io import read_provenance

    data = _raster(bands=1, height=16, width=16)
    big = {"schema": prov.SCHEMA, "operation": "match", "lut": None,
           "inputs": {"references": [f"s3://b/{i:05d}.tif" for i in range(3000)]}}  # fmt: skip
    url = f"s3://{bucket}/o.tif"
    write_raster(data, url, provenance=big)
    assert sorted(s3.keys(bucket)) == ["o.tif", "o.tif.lut.json"]
    assert read_provenance(url) == big
    write_raster(data, url, provenance={"step": "copy"}, overwrite=True)
    assert s3.keys(bucket) == ["o.tif"]
    assert read_provenance(url) == {"step": "copy"}


def test_read_provenance_of_a_remote_geotiff_replaced_by_another_writer(s3, bucket, tmp_path):
    """read_provenance opens a remote GeoTIFF as open_raster does, without what GDAL cached of
    the object before another writer replaced it (it returned the old record)."""
    from rastermatch.io import read_provenance

    data = _raster(bands=1, height=16, width=16)
    url = f"s3://{bucket}/g.tif"
    write_raster(data, url, provenance={"v": 1})
    assert read_provenance(url) == {"v": 1}
    other = write_raster(data, tmp_path / "g.tif", provenance={"v": 2, "pad": "x" * 5000})
    s3.client().upload_file(str(other), bucket, "g.tif")  # another process's upload
    assert read_provenance(url) == {"v": 2, "pad": "x" * 5000}


def test_geotiff_upload_refuses_a_shared_local_folder(bucket, tmp_path, monkeypatch):
    """The local folder a GeoTIFF is written to before its upload (in TMPDIR) is refused when
    others may write to it (another user could swap the file before the upload)."""
    import tempfile

    from rastermatch.io import objectstore

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = objectstore._upload_dir()
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    with pytest.raises(RasterWriteError, match="private folder"):
        write_raster(_raster(bands=1, height=16, width=16), f"s3://{bucket}/o.tif")
    assert shared_s3_server().keys(bucket) == []
    folder.chmod(0o700)
    write_raster(_raster(bands=1, height=16, width=16), f"s3://{bucket}/o.tif")
    assert list(folder.iterdir()) == []


def test_failed_geotiff_overwrite_keeps_the_previous_sidecar(s3, bucket, monkeypatch):
    """An overwrite whose raster upload fails after its sidecar was stored puts the replaced
    sidecar back (it was deleted, leaving the previous GeoTIFF's record unreadable)."""
    import s3fs

    from rastermatch import provenance as prov
    from rastermatch.io import read_provenance

    data = _raster(bands=1, height=16, width=16)
    url = f"s3://{bucket}/o.tif"

    def record(tag):
        return {"schema": prov.SCHEMA, "operation": "match", "lut": None, "tag": tag,
                "inputs": {"references": [f"s3://b/{i:05d}.tif" for i in range(3000)]}}  # fmt: skip

    write_raster(data, url, provenance=record("old"))

    async def failing(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(s3fs.S3FileSystem, "_put_file", failing)
    s3fs.S3FileSystem.clear_instance_cache()  # a new file system binds the failing upload
    with pytest.raises(RasterWriteError, match="No space"):
        write_raster(data, url, provenance=record("new"), overwrite=True)
    monkeypatch.undo()
    s3fs.S3FileSystem.clear_instance_cache()
    assert read_provenance(url) == record("old")


def test_overwrite_leaves_a_sidecar_named_file_that_is_not_the_outputs(s3, bucket):
    """Only a sidecar the replaced GeoTIFF records (size and SHA-256) goes with it; a file of
    that name put there otherwise (a user's LUT file) stays."""
    data = _raster(bands=1, height=16, width=16)
    url = f"s3://{bucket}/o.tif"
    write_raster(data, url, provenance={"step": "one"})
    s3.client().put_object(Bucket=bucket, Key="o.tif.lut.json", Body=b"{}")
    write_raster(data, url, provenance={"step": "two"}, overwrite=True)
    assert sorted(s3.keys(bucket)) == ["o.tif", "o.tif.lut.json"]


def test_output_over_an_input_spelled_differently_is_refused():
    """memory:///a and memory://a, s3a:// and s3://, a/./b and a//b name one object to the
    file system: the output-over-input check compares them as it sees them."""
    from rastermatch.io.objectstore import _refuse_inputs, output_location

    for out, source in [
        ("memory://rm-spell/x.zarr", "memory:///rm-spell/x.zarr"),
        ("memory:///rm-spell/x.zarr", "memory://rm-spell/./x.zarr/data"),
        ("s3://bucket/x.zarr", "s3a://bucket/x.zarr"),
        ("s3://bucket/x.zarr", "/vsis3/bucket//x.zarr"),
    ]:
        with pytest.raises(RasterWriteError, match="input"):
            _refuse_inputs(output_location(out), [source])
    _refuse_inputs(output_location("memory://rm-spell/x.zarr"), ["memory://rm-spell/y.zarr"])


def test_inputs_with_credentials_in_an_object_store_url_are_refused_unshown():
    """open_raster of s3://KEY:SECRET@bucket/...: s3fs took it for a bucket name and botocore
    quoted it, secret included, in the message the command line printed."""
    secret = "SECRET" + uuid.uuid4().hex[:8]
    for url in [f"s3://AKIAEXAMPLE:{secret}@bucket/in.zarr", f"gs://u:{secret}@b/in.tif"]:
        with pytest.raises(RastermatchError, match="takes no user name") as refused:
            open_raster(url)
        assert secret not in str(refused.value)
