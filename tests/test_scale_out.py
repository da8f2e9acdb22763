"""Smoke test of pipelines/scale_out.py: its virtual scene, null sink and model, at 10^6 px on
local schedulers (no cluster; the script itself measures one)."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rastermatch import LUT, band_histograms

SCRIPT = Path(__file__).resolve().parents[1] / "pipelines" / "scale_out.py"


@pytest.fixture(scope="module")
def so():
    spec = importlib.util.spec_from_file_location("scale_out", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("scale_out", module)
    spec.loader.exec_module(module)
    return module


def test_scene_is_a_pure_function_of_position(so):
    shape = so.scene_shape(1e6)
    assert shape == (4, 500, 500)
    a = so.virtual_scene(shape, 128, "source").compute(scheduler="sync")
    b = so.virtual_scene(shape, 77, "source").compute(scheduler="sync")
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint16 and a.max() < 4096
    assert 0 < (a == so.NODATA).mean() < 0.05  # the nodata corner, and nothing else
    r = so.virtual_scene(shape, 128, "reference").compute(scheduler="sync")
    assert not np.array_equal(np.bincount(a.ravel()), np.bincount(r.ravel(), minlength=a.max()))


def test_job_equals_the_numpy_path_and_ignores_chunks_and_scheduler(so):
    shape = so.scene_shape(1e6)
    sync = functools.partial(so.local_compute, scheduler="sync")
    jobs = [so.run_job(shape, 128, sync), so.run_job(shape, 200)]  # sync, threads
    assert len({(j.lut_digest, j.checksum) for j in jobs}) == 1

    # the same job on the scenes as numpy arrays, in one block each
    src = so.virtual_scene(shape, 128, "source").compute(scheduler="sync")
    ref = so.virtual_scene(shape, 128, "reference").compute(scheduler="sync")
    hs, hr = band_histograms(src, nodata=0), band_histograms(ref, nodata=0)
    lut = LUT.from_histograms(hs, hr)
    out = lut.apply(src)
    total = so.checksum_block(out, (0, 0, 0), chunk=out.shape, height=out.shape[1])
    assert so.lut_digest(lut, hs, hr) == jobs[0].lut_digest
    assert f"{int(total[0, 0, 0]):016x}" == jobs[0].checksum


def test_checksum_sees_one_changed_or_moved_pixel(so):
    block = so.virtual_scene((1, 64, 70_000), 70_000, "source").compute(scheduler="sync")

    def total(x):
        return int(so.checksum_block(x, (0, 0, 0), chunk=x.shape, height=x.shape[1])[0, 0, 0])

    base = total(block)
    changed = block.copy()
    changed[0, 5, 66_000] += 1  # beyond one period of the weights
    swapped = block.copy()
    row = block[0, 3]
    j = int(np.flatnonzero(row[1:] != row[:-1])[0])
    swapped[0, 3, [j, j + 1]] = row[[j + 1, j]]
    assert len({base, total(changed), total(swapped)}) == 3
    # split anywhere, the block checksums add up to the whole one (modulo 2**64)
    halves = [
        so.checksum_block(
            block[:, :, a:b], (0, 0, i), chunk=(1, 64, 35_000), height=block.shape[1]
        )[0, 0, 0]
        for i, (a, b) in enumerate([(0, 35_000), (35_000, 70_000)])
    ]
    assert int(np.sum(halves, dtype=np.uint64)) == base


def test_model_terms_scale_with_pixels(so):
    phases = [
        so.Phase("histograms", 2_000, 1.0, 10, 500, 0.001, 0.002, 2e-6, 3e-6, 3e-6, 8_000, 800, 0),
        so.Phase("match", 1_000, 1.0, 5, 600, 0.001, 0.001, 1e-6, 1e-6, 1.5e-6, 0, 8, 0),
    ]
    model = so.Model.from_phases(1_000, phases, fit_s=0.5, cores=2)
    small = model.terms(1e6, 10, 1e9)
    big = model.terms(1e8, 10, 1e9)
    for name in ("compute", "scheduler", "reduction traffic"):
        assert big[name] == pytest.approx(100 * small[name])
    assert big["fixed (LUT fit)"] == small["fixed (LUT fit)"] == 0.5
    assert "total" in so.prediction_text(model, 1e12, 1000, 1e10)
    assert "scheduler" in so.phase_table(phases)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--chunk", "1"], "--chunk 1"),
        (["--chunk", "65536"], "--chunk 65536"),
        (["--pixels", "nan"], "pixels nan"),
        (["--pixels", "-5"], "pixels -5"),
        (["--sizes", "1e9,x"], "--sizes"),
        (["--sizes", "1e9"], "exactly two"),
        (["--pixels", "1e15"], "larger --chunk"),
        (["--split-every", "1"], "--split-every"),
        (["--json", "/nonexistent/folder/r.json"], "folder"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(so, capsys, argv, says):
    assert so.main(argv) == 2
    assert says in capsys.readouterr().err


@pytest.mark.slow
def test_on_a_cluster_apply_tasks_name_their_lut_rows_and_give_the_threads_bytes(so, monkeypatch):
    """On a real 2-process LocalCluster: the matched scene's checksum is the local one, each
    apply task the scheduler sends names its LUT rows instead of carrying them (128 KiB a
    band at 65,536 levels), and each worker fetches a row once."""
    from distributed import Client, LocalCluster

    shape, chunk = (4, 96, 80), 32  # 36 blocks a band: many tasks per LUT row
    # the worker processes (spawned with this sys.path) import the block functions from the
    # module ``scale_out``
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    local = so.run_job(shape, chunk, functools.partial(so.local_compute, scheduler="sync"))
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cluster,
        Client(cluster) as client,
    ):
        hs, hr = client.gather(client.compute(list(so.histograms(shape, chunk))))
        lut = LUT.from_histograms(hs, hr)
        total = so.matched_checksum(lut, shape, chunk)  # built for the client: rows are keys
        one_task = so.task_bytes(so._graph([total]))

        def moved() -> int:  # bytes the workers have sent each other
            return sum(int(c["out_bytes"]) for c in client.run(so._worker_counters).values())

        before = moved()
        got = int(client.compute(total).result())
        moved_bytes = moved() - before
    assert so.lut_digest(lut, hs, hr) == local.lut_digest
    assert f"{got:016x}" == local.checksum
    assert one_task < 8 * 1024 < lut.table[0].nbytes
    # 4 rows of 128 KiB, fetched at most once by the worker that did not compute each
    assert moved_bytes <= lut.table.nbytes + 64 * 1024
