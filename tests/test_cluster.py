"""On a real dask.distributed LocalCluster of worker processes: the same bytes as threads, the LUT
sent once, and a worker killed mid-run loses nothing."""

from __future__ import annotations

import os
import pickle
import signal
import time

import dask
import numpy as np
import pytest
import xarray as xr

import rastermatch
from rastermatch import LUT, band_histograms

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    from rastermatch.pipeline import local_cluster

    with local_cluster(2, threads_per_worker=1, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """A source and a reference scene as Zarr stores, read lazily."""
    tmp = tmp_path_factory.mktemp("cluster")
    rng = np.random.default_rng(4)
    y, x = np.mgrid[0:300, 0:280]
    field = (np.sin(y / 40.0) + np.cos(x / 25.0) + 2) * 900
    src = (field[None] + rng.normal(0, 60, (3, 300, 280))).clip(1, 4095).astype(np.uint16)
    src[:, :, :12] = 0  # a nodata border
    ref = (rng.gamma(4.0, 180, (3, 200, 210))).clip(1, 4095).astype(np.uint16)
    paths = {}
    for name, arr in (("src", src), ("ref", ref)):
        a = xr.DataArray(
            arr,
            dims=("band", "y", "x"),
            coords={"y": 100.0 - np.arange(arr.shape[1]), "x": np.arange(arr.shape[2]) * 1.0},
        )
        a = a.rio.write_crs("EPSG:32633").rio.write_nodata(0 if name == "src" else None)
        paths[name] = rastermatch.write_raster(
            a.chunk({"band": 1, "y": 128, "x": 128}), tmp / f"{name}.zarr"
        )
    return paths, tmp


def test_cluster_output_is_bit_identical_to_threads(client, scenes):
    paths, tmp = scenes
    src = rastermatch.open_raster(paths["src"])
    ref = rastermatch.open_raster(paths["ref"])
    with dask.config.set(scheduler="threads"):
        # the client is not the default inside this block
        threaded = rastermatch.match_histograms(src, ref).compute(scheduler="threads")
    clustered = rastermatch.match_histograms(src, ref)  # the active client computes it
    rastermatch.write_raster(clustered, tmp / "cluster.zarr", overwrite=True)
    back = rastermatch.open_raster(tmp / "cluster.zarr").compute()
    np.testing.assert_array_equal(back.values, threaded.values)
    assert back.dtype == threaded.dtype


def test_lut_is_sent_once(scenes):
    paths, _ = scenes
    src = rastermatch.open_raster(paths["src"], chunks={"band": 1, "y": 16, "x": 16})
    h = band_histograms(src.data).compute(scheduler="sync")
    lut = LUT.from_histograms(h, h)
    graph = dict(lut.apply(src.data).__dask_graph__())
    size = len(pickle.dumps(graph))
    # 3 x 65,536 uint16 levels = 384 KiB; it is in the graph once (and sliced per band chunk),
    # not once per block (3 x 19 x 18 = 1026 blocks would be 390 MiB)
    assert src.data.npartitions > 1000
    assert size < 4 * lut.table.nbytes + 2000 * src.data.npartitions


def test_killed_worker_loses_nothing(client, scenes):
    paths, tmp = scenes
    src = rastermatch.open_raster(paths["src"])
    ref = rastermatch.open_raster(paths["ref"])
    lut = rastermatch.fit_lut(src, ref)
    expected = lut.apply(src).compute(scheduler="threads")

    def slow(block):  # defined here so that it is pickled by value for the workers
        time.sleep(0.15)
        return block

    slowed = src.copy(data=src.data.map_blocks(slow, dtype=src.dtype))
    job = rastermatch.write_raster(lut.apply(slowed), tmp / "killed.zarr", compute=False)
    future = client.compute(job)
    pids = client.run(os.getpid)
    victim_address, victim_pid = sorted(pids.items())[0]
    deadline = time.time() + 30
    while not client.processing().get(victim_address) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(victim_pid, signal.SIGKILL)  # mid-run, with tasks on it
    future.result(timeout=120)
    back = rastermatch.open_raster(tmp / "killed.zarr").compute()
    np.testing.assert_array_equal(back.values, expected.values)
    assert not list(tmp.glob(".killed.zarr*"))


def test_histograms_compute_together_on_the_cluster(client, scenes):
    paths, _ = scenes
    src = rastermatch.open_raster(paths["src"])
    ref = rastermatch.open_raster(paths["ref"])
    h_src, h_ref = dask.compute(band_histograms(src), band_histograms(ref))
    local_src = band_histograms(src.values, nodata=0)
    np.testing.assert_array_equal(h_src.counts, local_src.counts)
    assert h_ref.total.tolist() == [200 * 210] * 3
    assert isinstance(h_src.counts, np.ndarray)


def test_exact_specification_is_the_same_on_the_cluster(client, scenes):
    paths, _ = scenes
    src = rastermatch.open_raster(paths["src"]).isel(y=slice(0, 160), x=slice(0, 150))
    ref = rastermatch.open_raster(paths["ref"])
    # locally first: the kernels are compiled and cached once, and the workers load them
    local = rastermatch.specify_exact(src.values, ref.values, nodata=0)
    clustered = rastermatch.specify_exact(src, ref).values  # the active client computes it
    np.testing.assert_array_equal(clustered, local)
