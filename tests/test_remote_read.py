"""Remote inputs: GeoTIFF/COG over HTTP with range requests, Zarr on fsspec stores and store
objects, file:// URLs, and the errors of missing files and unreachable servers.

The HTTP server runs in its own process (tests/servers.py): GDAL may hold the interpreter's
lock while it waits for an answer, which a server thread of this process could then never send.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
from pathlib import Path

import fsspec
import numpy as np
import pytest
import rasterio
import rasterio.shutil
import zarr
from servers import HTTPServer, refused_url, start_http_server

from rastermatch import match_histograms
from rastermatch.errors import RasterReadError
from rastermatch.io import open_raster, read_provenance, write_raster
from rastermatch.io.location import is_remote, location, redact

DATA = Path(__file__).resolve().parent.parent / "data"
RGB = DATA / "rasterio_RGB.byte.tif"  # uint8, 3 bands, 718 x 791, nodata 0
REFERENCE = DATA / "riohist_reference1_landsat.tif"
TILE = 256


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[HTTPServer, Path]:
    """A folder of test rasters served over HTTP from a subprocess, once for this module."""
    folder = tmp_path_factory.mktemp("served")
    rasterio.shutil.copy(
        RGB, folder / "rgb.tif", driver="COG", BLOCKSIZE=TILE, COMPRESS="DEFLATE", OVERVIEWS="NONE"
    )
    # the same file under another name (GDAL caches what it fetched by URL, process-wide)
    whole = (folder / "rgb.tif").read_bytes()
    (folder / "again.tif").write_bytes(whole)
    # a truncated copy: the header is intact, the last tiles are gone
    (folder / "cut.tif").write_bytes(whole[: len(whole) * 2 // 3])
    scene = open_raster(RGB)[:, :200, :300]  # small: the writes are not what is tested
    write_raster(scene, folder / "copy.tif", provenance={"operation": "copy", "n": 1})
    write_raster(scene, folder / "copy.zarr", provenance={"operation": "copy", "n": 2})
    write_raster(scene[:, :100, :120], folder / "small.zarr")
    server = start_http_server(folder)
    yield server, folder
    server.stop()


@pytest.fixture
def memory_fs() -> fsspec.AbstractFileSystem:
    fs = fsspec.filesystem("memory")
    yield fs
    with contextlib.suppress(FileNotFoundError):
        fs.rm("/rastermatch-tests", recursive=True)


def test_location_keeps_urls_whole_and_names_them_without_credentials():
    url = "https://me:secret@example.com/scenes/a.tif?X-Amz-Signature=abc"
    loc = location(url)
    assert (loc.kind, loc.url, loc.text) == ("url", url, "https://example.com/scenes/a.tif")
    assert loc.gdal_path == f"/vsicurl/{url}"
    assert location("s3://b/k/a.tif").gdal_path == "/vsis3/b/k/a.tif"
    assert location("gs://b/k/a.tif").gdal_path == "/vsigs/b/k/a.tif"
    assert location("az://c/k/a.tif").gdal_path == "/vsiaz/c/k/a.tif"
    assert location("/vsicurl/http://h/a.tif").kind == "vsi"
    assert location(Path("x/a.tif")).path == Path.cwd() / "x" / "a.tif"
    assert location("file:///tmp/a%20b.tif").path == Path("/tmp/a b.tif")
    assert location("memory://a.zarr").is_zarr() and not location("s3://b/a.tif").is_zarr()
    assert location("s3://b/k/a.tif?v=1").sibling("a.lut.json").url == "s3://b/k/a.lut.json"
    assert is_remote("s3://b/a.zarr") and not is_remote("file:///tmp/a.tif")
    assert redact("/vsicurl/https://u:p@h/a.tif?sig=1") == "/vsicurl/https://h/a.tif"
    with pytest.raises(RasterReadError, match="host 'server'"):
        location("file://server/share/a.tif")


def test_cog_over_http_equals_the_local_file(served):
    server, folder = served
    url = server.url("rgb.tif")
    remote, local = open_raster(url), open_raster(folder / "rgb.tif")
    assert remote.encoding["source"] == url
    assert remote.dims == local.dims and remote.chunks == local.chunks
    assert remote.rio.crs == local.rio.crs and remote.rio.transform() == local.rio.transform()
    assert remote.rio.nodata == local.rio.nodata == 0
    assert remote.attrs.get("colorinterp") == {"1": "red", "2": "green", "3": "blue"}
    np.testing.assert_array_equal(remote.values, local.values)


def test_one_chunk_fetches_its_tiles_not_the_file(served):
    server, folder = served
    size = (folder / "again.tif").stat().st_size
    remote = open_raster(server.url("again.tif"), chunks={"band": 1, "y": TILE, "x": TILE})
    assert remote.data.npartitions == 3 * 3 * 4
    server.reset()
    assert int(remote[0, :TILE, :TILE].max().compute()) > 0
    stats = server.stats()
    # the header was read at open: one tile of one band, in a single range request or two
    assert 1 <= stats["requests"] <= 2, stats["log"]
    assert all(rng is not None for _, _, rng in stats["log"]), stats["log"]
    assert stats["bytes"] < size / 4, (stats["bytes"], size)


def test_matching_a_remote_source_equals_matching_the_local_one(served):
    server, folder = served
    reference = open_raster(REFERENCE)
    remote = match_histograms(open_raster(server.url("rgb.tif")), reference)
    local = match_histograms(open_raster(folder / "rgb.tif"), reference)
    np.testing.assert_array_equal(remote.values, local.values)


def test_a_missing_url_is_named_without_its_credentials(served):
    server, _ = served
    secret = server.url("missing.tif").replace("http://", "http://me:pw@") + "?sig=s3cr3t"
    with pytest.raises(RasterReadError) as caught:
        open_raster(secret)
    message = str(caught.value)
    assert server.url("missing.tif") in message and "does not exist" in message
    assert "pw" not in message and "s3cr3t" not in message


def test_a_refused_connection_is_a_read_error():
    url = refused_url()
    with pytest.raises(RasterReadError, match="cannot reach") as caught:
        open_raster(url)
    assert url in str(caught.value)


def test_a_silent_server_times_out_with_the_users_setting(monkeypatch):
    # a socket that accepts connections (the kernel's backlog) and never answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow.tif"
        monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "1")  # the user's value wins over ours
        monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "0")
        with pytest.raises(RasterReadError, match=r"cannot reach .*slow\.tif.*timed out"):
            open_raster(url)


def test_a_damaged_remote_block_names_url_band_and_window(served):
    server, _ = served
    remote = open_raster(server.url("cut.tif"), chunks={"band": 1, "y": TILE, "x": TILE})
    with pytest.raises(RasterReadError) as caught:
        remote[2, -TILE:, -TILE:].compute()  # the last tile of the last band is cut off
    message = str(caught.value)
    assert server.url("cut.tif") in message and "band 3" in message and "rows" in message


def test_read_provenance_over_http(served):
    server, folder = served
    assert read_provenance(server.url("copy.tif")) == read_provenance(folder / "copy.tif")
    assert read_provenance(server.url("copy.tif")) is not None


def test_zarr_over_http_equals_the_local_store(served):
    server, folder = served
    remote = open_raster(server.url("copy.zarr"))
    assert remote.encoding["source"] == server.url("copy.zarr")
    np.testing.assert_array_equal(remote.values, open_raster(folder / "copy.zarr").values)


def test_zarr_in_memory_and_file_urls(served, memory_fs):
    _, folder = served
    local = open_raster(folder / "copy.zarr")
    memory_fs.put(str(folder / "copy.zarr"), "/rastermatch-tests/copy.zarr", recursive=True)
    in_memory = open_raster("memory://rastermatch-tests/copy.zarr")
    assert in_memory.encoding["source"] == "memory://rastermatch-tests/copy.zarr"
    assert in_memory.rio.crs == local.rio.crs and in_memory.rio.nodata == local.rio.nodata
    np.testing.assert_array_equal(in_memory.values, local.values)
    by_url = open_raster((folder / "copy.zarr").as_uri())
    assert by_url.encoding["source"] == str((folder / "copy.zarr").resolve())
    np.testing.assert_array_equal(by_url.values, local.values)
    with pytest.raises(RasterReadError, match=r"memory://rastermatch-tests/none\.zarr does not"):
        open_raster("memory://rastermatch-tests/none.zarr")


def _memory_store(folder: Path) -> zarr.storage.MemoryStore:
    """A MemoryStore holding a copy of the Zarr store in ``folder``."""
    buffer = zarr.core.buffer.default_buffer_prototype().buffer
    files = {
        path.relative_to(folder).as_posix(): buffer.from_bytes(path.read_bytes())
        for path in folder.rglob("*")
        if path.is_file()
    }
    return zarr.storage.MemoryStore(files)


def test_zarr_store_objects(served):
    _, folder = served
    one = open_raster(_memory_store(folder / "copy.zarr"))
    two = open_raster(_memory_store(folder / "small.zarr"))
    three = open_raster(zarr.storage.LocalStore(folder / "copy.zarr", read_only=True))
    assert one.encoding["source"] == "MemoryStore"
    np.testing.assert_array_equal(one.values, open_raster(folder / "copy.zarr").values)
    np.testing.assert_array_equal(two.values, open_raster(folder / "small.zarr").values)
    np.testing.assert_array_equal(three.values, one.values)
    # two store objects of the same name, two arrays: the dask names differ
    assert one.data.name != two.data.name


def test_urls_with_control_characters_and_locations_never_show_credentials():
    with pytest.raises(RasterReadError, match="control character"):
        open_raster("https://127.0.0.1:1/a.tif\nInjected: header")
    shown = repr(location("https://me:pw@example.com/a.tif?sig=s3cr3t"))
    assert "pw" not in shown and "s3cr3t" not in shown and "example.com/a.tif" in shown


def test_missing_credentials_are_named(monkeypatch, tmp_path):
    for name in ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path))  # no Azure CLI configuration either
    with pytest.raises(RasterReadError, match=r"az://container/a\.tif: no credentials"):
        open_raster("az://container/a.tif")


def test_an_object_replaced_on_the_server_is_read_anew(served):
    server, folder = served
    (folder / "replaced.tif").write_bytes((folder / "rgb.tif").read_bytes())
    assert open_raster(server.url("replaced.tif")).shape == (3, 718, 791)
    write_raster(open_raster(RGB)[:1, :64, :96], folder / "replaced.tif", overwrite=True)
    again = open_raster(server.url("replaced.tif"))  # not GDAL's cached bytes of the old one
    assert again.shape == (1, 64, 96)
    np.testing.assert_array_equal(again.values, open_raster(RGB)[:1, :64, :96].values)


def test_zarr_over_a_silent_http_server_times_out(monkeypatch):
    module = importlib.import_module("rastermatch.io.location")
    monkeypatch.setattr(module, "HTTP_TIMEOUTS", {"sock_connect": 1.0, "sock_read": 1.0})
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/slow.zarr"
        with pytest.raises(RasterReadError, match=r"slow\.zarr"):
            open_raster(url)
