"""Review attacks on the bit-pattern counting kernels, the whole-dtype gathers and the
client-built graphs (keyed LUT rows, blockwise counts): each against a plain oracle."""

import dask
import dask.array as da
import numpy as np
import pytest

import rastermatch
from rastermatch import histogram
from rastermatch.apply import apply_block
from rastermatch.histogram import _count_piece_bits, compact_block_counts

DTYPES = ["int8", "uint8", "int16", "uint16"]


def _bits_oracle(a):
    u = a.view(np.dtype(f"u{a.dtype.itemsize}"))
    return np.bincount(u.ravel().astype(np.int64), minlength=1 << (8 * a.dtype.itemsize))


def _layouts(a):
    yield a
    yield a[:, :, 1:]
    yield a[:, 1:, 3:-2]
    yield a[:, :, ::-1]
    yield a[:, ::2, ::3]
    yield np.asfortranarray(a)
    yield a[:, :, :1]
    yield a[:, :0, :]
    ro = a.copy()
    ro.flags.writeable = False
    yield ro
    # pixels at an odd byte address (a buffer sliced at one byte)
    buf = np.zeros(a.nbytes + 1, np.uint8)[1:]
    odd = buf.view(a.dtype).reshape(a.shape)
    odd[...] = a
    yield odd
    yield odd[:, :, 1:]


@pytest.mark.parametrize("dtype", DTYPES)
def test_count_piece_bits_every_layout(dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, int(info.max) + 1, size=(1, 13, 37), dtype=dtype)
    a[0, :5, :9] = info.min
    a[0, -3:, -7:] = info.max
    w = rng.integers(info.min, int(info.max) + 1, size=(1, 11, 48), dtype=dtype)
    # lines on 8-byte boundaries: whole words read from each line, the rest pixel by pixel
    aligned = [w[:, :, :47], w[:, ::-1, :45], w[:, 2:, 8:], w[:, ::-3, 16:], w[:, :, :1]]
    for piece in [*_layouts(a), *aligned]:
        out = np.zeros((1, 1 << (8 * a.dtype.itemsize)), np.int64)
        _count_piece_bits(piece, out)
        np.testing.assert_array_equal(out[0], _bits_oracle(np.ascontiguousarray(piece)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", ["min", "max", "mid", "outside"])
def test_compact_counts_nodata_anywhere(dtype, where):
    info = np.iinfo(dtype)
    nd = {"min": int(info.min), "max": int(info.max), "mid": 3, "outside": int(info.max) + 5}[where]
    rng = np.random.default_rng(2)
    a = rng.integers(info.min, int(info.max) + 1, size=(2, 9, 21), dtype=dtype)
    a[:, :2] = info.min
    a[:, -2:] = info.max
    nbins = 1 << (8 * a.dtype.itemsize)
    for piece in (a, a[:, :, 1:], np.asfortranarray(a), a[:, :, ::-1]):
        start, counts = compact_block_counts(piece, nbins=nbins, offset=int(info.min), nodata=nd)
        dense = np.zeros((2, nbins), np.int64)
        for b in range(2):
            v = piece[b].ravel().astype(np.int64)
            if info.min <= nd <= info.max:
                v = v[v != nd]
            dense[b] = np.bincount(v - int(info.min), minlength=nbins)
        got = np.zeros((2, nbins), np.int64)
        got[:, start : start + counts.shape[1]] = counts
        np.testing.assert_array_equal(got, dense)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int8", "int16"])
@pytest.mark.parametrize("tdtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize("nodata", [None, "min", "max", "outside"])
def test_apply_block_whole_dtype_table(dtype, tdtype, nodata):
    info = np.iinfo(dtype)
    n = int(info.max) - int(info.min) + 1
    rng = np.random.default_rng(3)
    block = rng.integers(info.min, int(info.max) + 1, size=(2, 40, 40), dtype=dtype)
    block[:, :3] = info.min
    block[:, -3:] = info.max
    table = rng.integers(0, 200, size=(2, n)).astype(tdtype)
    lohi = np.tile([0, n - 1], (2, 1))
    nd = {None: None, "min": int(info.min), "max": int(info.max), "outside": -1000}[nodata]
    if nodata == "outside" and info.min < 0:
        nd = 1 << 20
    for piece in (block, block[:, 1:, 1:], np.asfortranarray(block)):
        before = table.copy()
        got = apply_block(
            piece,
            table,
            lohi,
            kind="table",
            offset=int(info.min),
            nodata=nd,
            out_nodata=7,
            out_dtype=np.dtype(tdtype),
        )
        np.testing.assert_array_equal(table, before)
        want = np.empty(piece.shape, tdtype)
        for b in range(2):
            want[b] = table[b][piece[b].astype(np.int64) - int(info.min)]
        if nd is not None and info.min <= nd <= info.max:
            want[piece == nd] = 7
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("where", [None, "min", "max"])
def test_match_numpy_equals_dask_odd_chunks(dtype, where):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(4)
    src = rng.integers(info.min, int(info.max) + 1, size=(3, 45, 53), dtype=dtype)
    ref = rng.integers(info.min, int(info.max) + 1, size=(3, 39, 41), dtype=dtype)
    src[:, :4] = info.min
    src[:, -4:] = info.max
    nd = {None: None, "min": int(info.min), "max": int(info.max), "outside": None}[where]
    if where == "outside":
        nd = -1 if info.min == 0 else 1 << 20
    for levels in ("present", "all"):
        kw = dict(nodata=nd, reference_nodata=nd, levels=levels)
        try:
            want = np.asarray(rastermatch.match_histograms(src, ref, **kw))
        except rastermatch.RastermatchError:
            continue
        got = rastermatch.match_histograms(
            da.from_array(src, chunks=(2, 7, 11)), da.from_array(ref, chunks=(1, 13, 9)), **kw
        )
        with dask.config.set(scheduler="threads"):
            got = np.asarray(got.compute() if hasattr(got, "compute") else got)
        np.testing.assert_array_equal(got, want)
        f = rastermatch.match_histograms(np.asfortranarray(src)[:, ::-1][:, ::-1], ref.copy(), **kw)
        np.testing.assert_array_equal(np.asarray(f), want)


def _cases():
    import xarray as xr

    rng = np.random.default_rng(5)
    src = rng.integers(0, 4096, size=(2, 3, 37, 43), dtype=np.uint16)
    src[..., :3] = 0
    ref = rng.integers(0, 4096, size=(2, 3, 29, 31), dtype=np.uint16)
    dims = ("time", "band", "y", "x")
    s = xr.DataArray(src, dims=dims).chunk({"time": 1, "band": 2, "y": 11, "x": 17})
    r = xr.DataArray(ref, dims=dims).chunk({"time": 1, "band": 1, "y": 13, "x": 8})
    m = da.from_array(rng.random((37, 43)) < 0.2, chunks=(11, 17))
    s3 = da.from_array(src[0].astype(np.int16) - 2000, chunks=(1, 9, 20))
    r3 = da.from_array(ref[0].astype(np.int16) - 2000, chunks=(2, 10, 7))
    det = np.arange(37) % 4
    yield lambda: rastermatch.match_histograms(s, r, nodata=0).data
    yield lambda: rastermatch.match_histograms(s3, r3, mask=m, levels="all")
    yield lambda: rastermatch.match_histograms(s3, r3, nodata=-2000, pool="counts")
    yield lambda: rastermatch.balance_detectors(s3, detectors=det, nodata=-2000)


def _bytes(x):
    if hasattr(x, "compute"):
        x = x.compute(scheduler="threads")
    if hasattr(x, "counts"):
        return np.asarray(x.counts).tobytes()
    return np.asarray(x).tobytes()


def test_client_built_graph_equals_local_built_graph(monkeypatch):
    """Built for a client (keyed LUT rows, blockwise counts) and computed on threads, and built
    locally and computed on the client: the same bytes as built and computed locally."""
    distributed = pytest.importorskip("distributed")
    from rastermatch import _data
    from rastermatch import apply as apply_module

    seen = []

    def spy():
        seen.append(_data.builds_for_cluster())
        return seen[-1]

    monkeypatch.setattr(histogram, "builds_for_cluster", spy)
    monkeypatch.setattr(apply_module, "_builds_for_cluster", spy)
    with dask.config.set(scheduler="threads"):
        local = [_bytes(make()) for make in _cases()]
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        built = [make() for make in _cases()]  # built for the client
        on_threads = [_bytes(b) for b in built]
        with dask.config.set(scheduler="threads"):
            local_built = [make() for make in _cases()]
        on_cluster = [
            np.asarray(
                getattr(y := (client.compute(x).result() if hasattr(x, "dask") else x), "counts", y)
            ).tobytes()
            for x in local_built
        ]
    assert True in seen and False in seen  # both graph forms were built
    assert on_threads == local
    assert on_cluster == local
