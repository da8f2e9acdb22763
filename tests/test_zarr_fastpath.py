"""Attacks on io.zarr's direct chunk I/O of local stores (commit 660ae7b): every read equals
zarr's, every written store is zarr's byte for byte, hostile chunk files are a RasterReadError
naming the chunk (never a hang, a foreign exception or unbounded memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numcodecs import GZip, Zlib, Zstd
from numcodecs.blosc import Blosc
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec, GzipCodec, ZstdCodec

import rastermatch.io.zarr as rz
from rastermatch.errors import RastermatchError, RasterReadError, RasterWriteError
from rastermatch.io import open_raster, write_raster

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


# -- helpers -------------------------------------------------------------------------------


def make_store(path: Path, values: np.ndarray, chunks: tuple, fmt: int, fill, **kw) -> Path:
    """A group with one variable ``v`` (dims band/y/x or y/x) as zarr-python writes it, with a
    ``nodata`` attribute equal to the fill value (so missing chunks are allowed)."""
    dims = ["band", "y", "x"][-values.ndim :]
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    named = {"dimension_names": dims} if fmt == 3 else {"attributes": {"_ARRAY_DIMENSIONS": dims}}
    array = group.create_array(
        "v", shape=values.shape, chunks=chunks, dtype=values.dtype, fill_value=fill, **named, **kw
    )
    array[...] = values
    if fill is not None:
        array.attrs["nodata"] = "nan" if isinstance(fill, float) and np.isnan(fill) else fill
    return path


def chunk_files(store: Path) -> list[Path]:
    return sorted(
        p
        for p in (store / "v").rglob("*")
        if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs")
    )


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def layout_of(store: Path, name: str = "v"):
    return rz._direct_layout(store / name, zarr.open_group(str(store), mode="r")[name])


def zarr_read(store: Path, name: str = "v") -> np.ndarray:
    return zarr.open_array(str(store / name), mode="r")[...]


def scene(values: np.ndarray, chunks: tuple, nodata=None) -> xr.DataArray:
    dims = ("band", "y", "x")[-values.ndim :]
    h, w = values.shape[-2:]
    coords = {"y": 4e6 - 30 * (np.arange(h) + 0.5), "x": 5e5 + 30 * (np.arange(w) + 0.5)}
    data = xr.DataArray(da.from_array(values, chunks=chunks), dims=dims, coords=coords)
    data = data.rio.write_crs("EPSG:32633").rio.write_transform(Affine(30, 0, 5e5, 0, -30, 4e6))
    return data.rio.write_nodata(nodata, encoded=False) if nodata is not None else data


def zarr_written(monkeypatch, data: xr.DataArray, path: Path, **kw) -> Path:
    """``data`` written by zarr's own store graph (the direct writer switched off)."""
    with monkeypatch.context() as m:
        m.setattr(rz, "_direct_writer", lambda *a: None)
        return write_raster(data, path, **kw)


# -- reads equal zarr's ----------------------------------------------------------------------

READ_CASES = {
    "v2 blosc noshuffle": (2, {"compressors": Blosc(cname="lz4", shuffle=0)}),
    "v2 blosc bitshuffle": (2, {"compressors": Blosc(cname="zstd", shuffle=2)}),
    "v2 zstd '.'": (
        2,
        {"compressors": Zstd(level=1), "chunk_key_encoding": {"name": "v2", "separator": "."}},
    ),
    "v2 gzip '/'": (
        2,
        {"compressors": GZip(level=1), "chunk_key_encoding": {"name": "v2", "separator": "/"}},
    ),
    "v2 zlib": (2, {"compressors": Zlib(level=1)}),
    "v2 none": (2, {"compressors": None}),
    "v3 blosc typesize 8": (
        3,
        {"compressors": [BloscCodec(cname="lz4", typesize=8, shuffle=BloscShuffle.shuffle)]},
    ),
    "v3 bitshuffle crc": (
        3,
        {"compressors": [BloscCodec(cname="lz4", shuffle=BloscShuffle.bitshuffle), Crc32cCodec()]},
    ),
    "v3 crc blosc": (3, {"compressors": [Crc32cCodec(), BloscCodec(cname="zstd")]}),
    "v3 crc crc": (3, {"compressors": [Crc32cCodec(), Crc32cCodec()]}),
    "v3 zstd checksum": (3, {"compressors": [ZstdCodec(level=1, checksum=True)]}),
    "v3 gzip crc": (3, {"compressors": [GzipCodec(level=1), Crc32cCodec()]}),
    "v3 none": (3, {"compressors": None}),
    "v3 '.' keys": (
        3,
        {"compressors": None, "chunk_key_encoding": {"name": "default", "separator": "."}},
    ),
    "v3 v2 keys": (
        3,
        {"compressors": None, "chunk_key_encoding": {"name": "v2", "separator": "/"}},
    ),
}
LEFT_TO_ZARR = {
    "v2 F order": (2, {"compressors": None, "order": "F"}),
}


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    case=st.sampled_from(sorted(READ_CASES)),
    dtype=st.sampled_from(["uint16", "int8", "int16", "uint8", "float32", "float64", "int32"]),
    fill=st.sampled_from([0, 7, "nan", None]),
    shape=st.lists(st.integers(1, 23), min_size=2, max_size=3),
    chunk=st.lists(st.integers(1, 30), min_size=3, max_size=3),
    drop=st.integers(0, 3),
    data=st.data(),
)
def test_direct_reads_equal_zarrs(tmp_path_factory, case, dtype, fill, shape, chunk, drop, data):
    """Any store of the handled kinds (ragged edges, chunks larger than the array, one pixel,
    2-D, missing chunks, nonzero/NaN/null fill) reads as zarr reads it, whole and windowed."""
    fmt, kw = READ_CASES[case]
    if fill == "nan":
        if np.dtype(dtype).kind != "f":
            fill = 0
        else:
            fill = float("nan")
    if fill is None and fmt == 3:
        fill = 0
    shape = tuple(shape)
    chunks = tuple(chunk[-len(shape) :])
    values = (np.random.default_rng(len(shape)).random(shape) * 120 - 10).astype(dtype)
    store = make_store(tmp_path_factory.mktemp("r") / "s.zarr", values, chunks, fmt, fill, **kw)
    for p in chunk_files(store)[1 : 1 + drop]:
        p.unlink()  # never written: the fill value
    layout = layout_of(store)
    assert layout is not None, case
    read = rz._ChunkReader(layout)
    expected = zarr_read(store)
    got = read(tuple(slice(None) for _ in shape))
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()
    key = tuple(
        slice(a, a + b)
        for a, b in (
            data.draw(st.tuples(st.integers(0, n - 1), st.integers(1, n)), label="win")
            for n in shape
        )
    )
    assert read(key).tobytes() == expected[key].tobytes(), key


@pytest.mark.parametrize("case", [*READ_CASES, *LEFT_TO_ZARR])
def test_open_raster_equals_zarr_for_every_store_kind(tmp_path, case):
    """Through open_raster (dask blocks not aligned to the stored chunks) every store kind
    reads as zarr reads it; F-order v2 stays on zarr's path."""
    fmt, kw = {**READ_CASES, **LEFT_TO_ZARR}[case]
    values = (np.random.default_rng(3).random((2, 29, 31)) * 900).astype("int16")
    store = make_store(tmp_path / "s.zarr", values, (1, 8, 9), fmt, -5, **kw)
    chunk_files(store)[2].unlink()
    assert (layout_of(store) is None) == (case in LEFT_TO_ZARR)
    got = open_raster(store, chunks={"band": 1, "y": 11, "x": 13})
    assert got.values.tobytes() == zarr_read(store).tobytes()


def test_big_endian_v2_store_is_left_to_zarr_and_reads_equal(tmp_path):
    values = (np.arange(2 * 17 * 19) % 4000).astype(">u2").reshape(2, 17, 19)
    store = make_store(tmp_path / "s.zarr", values, (1, 8, 8), 2, 0, compressors=Zstd(level=1))
    assert layout_of(store) is None
    got = open_raster(store, chunks={"band": 1, "y": 8, "x": 8}).values
    np.testing.assert_array_equal(got, zarr_read(store))


# -- writes equal zarr's -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "shape", "chunks", "compress", "nodata", "fill"),
    [
        ("uint16", (2, 37, 53), (1, 16, 16), None, 0, "random"),
        ("uint16", (1, 40, 40), (1, 16, 16), "zstd", 0, "all nodata"),  # chunks equal the fill
        ("int8", (3, 20, 21), (2, 7, 21), [Crc32cCodec(), BloscCodec(cname="lz4")], -1, "random"),
        ("int16", (37, 53), (37, 53), "none", None, "random"),  # 2-D, one chunk
        ("float32", (1, 1, 1), (1, 1, 1), BloscCodec(cname="zstd", blocksize=256), np.nan, "nan"),
        ("float64", (1, 9, 11), (1, 4, 4), ZstdCodec(level=3, checksum=True), -9999.0, "random"),
        (
            "uint8",
            (2, 19, 23),
            (1, 8, 8),
            [BloscCodec(cname="lz4", shuffle=BloscShuffle.noshuffle, typesize=4)],
            None,
            "read-only transposed",
        ),
    ],
)
def test_direct_writes_equal_zarrs_byte_for_byte(
    tmp_path, monkeypatch, dtype, shape, chunks, compress, nodata, fill
):
    """Every file (metadata, chunks, padded edge chunks, chunks equal to the fill value) of a
    directly written store equals zarr's, for read-only and non-contiguous inputs too."""
    values = (np.random.default_rng(5).random(shape) * 120).astype(dtype)
    if fill == "all nodata":
        values[...] = nodata
    if fill == "nan":
        values[...] = np.nan
    if fill == "read-only transposed":
        values = np.asfortranarray(values)
        values.flags.writeable = False
    data = scene(values, chunks, nodata)
    used = []
    real = rz._direct_writer
    monkeypatch.setattr(rz, "_direct_writer", lambda *a: used.append(real(*a)) or used[-1])
    direct = write_raster(data, tmp_path / "direct.zarr", compress=compress)
    monkeypatch.setattr(rz, "_direct_writer", real)
    assert used and used[0] is not None  # the direct writer wrote it
    plain = zarr_written(monkeypatch, data, tmp_path / "plain.zarr", compress=compress)
    assert files(direct) == files(plain)
    np.testing.assert_array_equal(open_raster(direct).values, open_raster(plain).values)


def test_failed_direct_write_leaves_nothing(tmp_path):
    """A block failing while others still write: no temporary, no chunk written late."""

    def fail_one(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        if block_info[0]["chunk-location"] == (0, 1, 1):
            raise RuntimeError("boom")
        time.sleep(0.05)
        return block

    values = np.ones((1, 64, 64), dtype="uint16")
    data = scene(values, (1, 16, 16))
    data = data.copy(data=data.data.map_blocks(fail_one, dtype=data.dtype))
    with pytest.raises(RuntimeError, match="boom"):
        write_raster(data, tmp_path / "out.zarr")
    time.sleep(0.3)  # a chunk written late would show up now
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_direct_read_and_write_on_a_local_cluster(tmp_path, monkeypatch):
    """On a dask.distributed LocalCluster: the reader and writer travel (pickle) and the store
    written there equals the one zarr writes with threads."""
    import pickle

    distributed = pytest.importorskip("distributed")
    values = (np.random.default_rng(9).random((2, 40, 44)) * 3000).astype("uint16")
    source = write_raster(scene(values, (1, 16, 16), 0), tmp_path / "src.zarr")
    layout = pickle.loads(pickle.dumps(layout_of(source, "data")))
    whole = rz._ChunkReader(layout)((slice(None),) * 3)
    assert whole.tobytes() == zarr_read(source, "data").tobytes()
    pickle.loads(pickle.dumps(rz._ChunkWriter(layout)))
    read = open_raster(source, chunks={"band": 1, "y": 16, "x": 16})
    with (
        distributed.LocalCluster(
            n_workers=1, processes=False, threads_per_worker=2, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster),
    ):
        on_cluster = write_raster(read, tmp_path / "cluster.zarr")
    plain = zarr_written(monkeypatch, read, tmp_path / "plain.zarr")
    assert files(on_cluster) == files(plain)


# -- hostile chunk files -----------------------------------------------------------------------


def blosc_header(nbytes: int, cbytes: int, flags: int = 0x01) -> bytes:
    return bytes([2, 1, flags, 2]) + b"".join(
        n.to_bytes(4, "little") for n in (nbytes, 4096, cbytes)
    )


def with_crc(data: bytes) -> bytes:
    import google_crc32c

    return data + google_crc32c.value(data).to_bytes(4, "little")


HOSTILE = {
    "empty": (2, lambda f: f.write_bytes(b"")),
    "garbage": (2, lambda f: f.write_bytes(os.urandom(300))),
    "truncated": (2, lambda f: f.write_bytes(f.read_bytes()[:40])),
    "blosc claims 2 GB": (2, lambda f: f.write_bytes(blosc_header(2**31 - 100, 24) + bytes(8))),
    "blosc memcpy claims 2 GB": (
        2,
        lambda f: f.write_bytes(blosc_header(2**31 - 100, 24, flags=0x03) + bytes(8)),
    ),
    "blosc claims 2 GB, crc right": (
        3,
        lambda f: f.write_bytes(with_crc(blosc_header(2**31 - 100, 24) + bytes(8))),
    ),
    "crc wrong": (3, lambda f: f.write_bytes(f.read_bytes()[:-1] + b"\x00")),
    "symlink to /dev/zero": (2, lambda f: (f.unlink(), f.symlink_to("/dev/zero"))),
}


def hostile_store(tmp_path: Path, fmt: int) -> Path:
    values = (np.random.default_rng(1).random((1, 40, 40)) * 1000).astype("uint16")
    kw = (
        {"compressors": Blosc(cname="lz4")}
        if fmt == 2
        else {"compressors": [BloscCodec(cname="lz4"), Crc32cCodec()]}
    )
    return make_store(tmp_path / "s.zarr", values, (1, 20, 20), fmt, 0, **kw)


@pytest.mark.parametrize("damage", list(HOSTILE))
def test_hostile_chunk_is_a_read_error_naming_the_chunk(tmp_path, damage):
    fmt, spoil = HOSTILE[damage]
    store = hostile_store(tmp_path, fmt)
    spoil(chunk_files(store)[0])
    with pytest.raises(RasterReadError) as caught:
        open_raster(store, chunks={"band": 1, "y": 20, "x": 20}).compute()
    message = str(caught.value)
    assert "\n" not in message and str(store) in message
    assert "rows 0-19, columns 0-19" in message and "stored chunk" in message


def test_chunk_shrinking_while_read_is_a_read_error(tmp_path):
    """A file whose size says more than it holds (sysfs: 4096 bytes stated)."""
    target = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not target.exists():
        pytest.skip("no sysfs file to link to")
    store = hostile_store(tmp_path, 2)
    chunk = chunk_files(store)[0]
    chunk.unlink()
    chunk.symlink_to(target)
    with pytest.raises(RasterReadError, match="stored chunk"):
        open_raster(store, chunks={"band": 1, "y": 20, "x": 20}).compute()


def test_fifo_in_place_of_a_chunk_is_refused_without_blocking(tmp_path):
    store = hostile_store(tmp_path, 2)
    chunk = chunk_files(store)[0]
    chunk.unlink()
    os.mkfifo(chunk)
    data = open_raster(store, chunks={"band": 1, "y": 20, "x": 20})  # one chunk per block
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            data.compute()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(1)
    blocked = reader.is_alive()
    deadline = time.monotonic() + 60
    while reader.is_alive() and time.monotonic() < deadline:  # release any blocked open()
        try:
            os.close(os.open(chunk, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        time.sleep(0.02)
    assert not blocked, "reading a store with a FIFO in place of a chunk blocked"
    assert outcome and isinstance(outcome[0], RasterReadError)


DEV_ZERO_READ = """
import os, resource, sys, threading, time, warnings
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a backstop only

def watch():  # stop as soon as the process holds more than 1 GiB
    page = os.sysconf("SC_PAGE_SIZE")
    while True:
        with open("/proc/self/statm") as f:
            if int(f.read().split()[1]) * page > 1 << 30:
                print("MEMORY", flush=True)
                os._exit(3)
        time.sleep(0.002)

threading.Thread(target=watch, daemon=True).start()
warnings.simplefilter("ignore")
import numpy as np, zarr
from numcodecs.blosc import Blosc
from rastermatch.errors import RastermatchError
from rastermatch.io import open_raster
store = sys.argv[1]
group = zarr.open_group(store, mode="w", zarr_format=2)
array = group.create_array("v", shape=(1, 40, 40), chunks=(1, 20, 20), dtype="uint16",
    fill_value=0, compressors=Blosc(), attributes={"_ARRAY_DIMENSIONS": ["band", "y", "x"]})
array[...] = 5
array.attrs["nodata"] = 0
chunk = os.path.join(store, "v", "0.0.0")
os.unlink(chunk)
os.symlink("/dev/zero", chunk)
try:
    open_raster(store, chunks={"band": 1, "y": 40, "x": 40}).compute()  # 4 chunks per block
    print("READ")
except RastermatchError as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.slow
def test_dev_zero_chunk_in_a_larger_block_does_not_exhaust_memory(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DEV_ZERO_READ), str(tmp_path / "s.zarr")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "MEMORY" not in done.stdout, "reading the store grew past 1 GiB"
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("RasterReadError") and "stored chunk" in done.stdout


BOMBS = {
    "v2 zstd": (2, {"compressors": Zstd(level=1)}),
    "v3 zstd": (3, {"compressors": [ZstdCodec(level=1), Crc32cCodec()]}),
    "v2 gzip": (2, {"compressors": GZip(level=1)}),
    "v3 gzip": (3, {"compressors": [GzipCodec(level=1)]}),
    "v2 zlib": (2, {"compressors": Zlib(level=1)}),
}


@pytest.mark.parametrize("case", list(BOMBS))
@pytest.mark.parametrize("damage", ["8 MB bomb", "oversized file"])
def test_chunks_decode_no_further_than_their_size(tmp_path, case, damage):
    """A compressed chunk that inflates far past a chunk's 800 bytes, or a chunk file longer
    than a chunk can take, is refused (decoded into the chunk's own size, not read at all)."""
    import gzip
    import zlib

    import numcodecs.zstd

    fmt, kw = BOMBS[case]
    values = (np.arange(1600) % 999).astype("uint16").reshape(1, 40, 40)
    store = make_store(tmp_path / "s.zarr", values, (1, 20, 20), fmt, 0, **kw)
    chunk = chunk_files(store)[0]
    layout = layout_of(store)
    assert layout is not None
    if damage == "oversized file":
        chunk.write_bytes(chunk.read_bytes() + bytes(layout.limit))
    else:
        zeros, kind = bytes(8_000_000), case[3:]
        if kind == "zstd":
            chunk.write_bytes(numcodecs.zstd.compress(zeros, 1))
        else:
            chunk.write_bytes(gzip.compress(zeros) if kind == "gzip" else zlib.compress(zeros))
    with pytest.raises(RasterReadError, match="stored chunk band 0, y 0, x 0"):
        open_raster(store, chunks={"band": 1, "y": 40, "x": 40}).compute()


def _dir_in_place(chunk: Path) -> None:
    chunk.unlink()
    chunk.mkdir()


def _file_in_place_of_folder(chunk: Path) -> None:
    folder = chunk.parent
    for p in folder.iterdir():
        p.unlink()
    folder.rmdir()
    folder.write_bytes(b"x")


@pytest.mark.parametrize("damage", ["directory", "file in place of its folder"])
def test_non_file_chunk_reads_as_zarr_reads_it(tmp_path, damage):
    store = hostile_store(tmp_path, 3)  # fill value 0 is the nodata: missing chunks allowed
    chunk = chunk_files(store)[-1]
    (_dir_in_place if damage == "directory" else _file_in_place_of_folder)(chunk)
    expected = zarr_read(store)
    got = open_raster(store, chunks={"band": 1, "y": 20, "x": 20}).values
    assert got.tobytes() == expected.tobytes()


# -- blocks that are not what the dask array says ----------------------------------------------


def lying(values: np.ndarray, fn) -> xr.DataArray:
    data = scene(values, (1, 20, 20))
    return data.copy(data=data.data.map_blocks(fn, dtype=data.dtype))


def test_byteswapped_blocks_are_written_as_zarr_writes_them(tmp_path, monkeypatch):
    values = (np.arange(40 * 40) % 3000).astype("uint16").reshape(1, 40, 40)
    data = lying(values, lambda b: b.astype(">u2"))
    plain = zarr_written(monkeypatch, data, tmp_path / "plain.zarr")
    direct = write_raster(data, tmp_path / "direct.zarr")
    assert files(direct) == files(plain)


@pytest.mark.parametrize("block", ["float64", "wrong shape"])
def test_writer_errors_name_the_output(tmp_path, monkeypatch, block):
    values = np.ones((1, 40, 40), dtype="uint16")
    if block == "float64":
        data = lying(values, lambda b: b.astype("float64") + 0.5)
    else:
        data = lying(values, lambda b: np.ones((1, 21, 20), "uint16"))
    output = tmp_path / "out.zarr"
    try:
        write_raster(data, output)
    except RastermatchError as exc:
        assert isinstance(exc, RasterWriteError)
        assert str(output) in str(exc) and "\n" not in str(exc)
    else:  # written after all: then as zarr writes it
        assert files(output) == files(zarr_written(monkeypatch, data, tmp_path / "plain.zarr"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
