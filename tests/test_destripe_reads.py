"""destripe_file reads its source twice: the detector statistics, then the write together with
the stripe metrics (and what the report draws)."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from conftest import BlockReads, raise_if_dask_computes

import rastermatch.pipeline as pipe
from rastermatch import fit_detectors, histogram
from rastermatch.histogram import detector_histograms
from rastermatch.io import read_provenance
from rastermatch.metrics import destripe_quality

STRIPED = Path(__file__).resolve().parent.parent / "data" / "striped_L7_ETMs.tif"


@pytest.mark.parametrize("report", [False, True])
def test_destripe_file_reads_the_source_twice(tmp_path, monkeypatch, report):
    reads = BlockReads()
    opened = []
    open_input = pipe.open_input

    def counted(path, **kwargs):
        data = open_input(path, **kwargs)
        data = data.copy(data=reads.count(data.data))
        opened.append(data)
        return data

    monkeypatch.setattr(pipe, "open_input", counted)
    out = tmp_path / "out.tif"
    chunks = {"band": 1, "y": 128, "x": 128}
    result = pipe.destripe_file(
        STRIPED, out, detectors=16, chunks=chunks,
        report=tmp_path / "r.png" if report else None,
    )  # fmt: skip
    (src,) = opened
    assert src.data.npartitions > 4
    assert reads.n == 2 * src.data.npartitions
    # the same numbers as a separate pass (same chunks: same float sums), recorded in the output
    balanced = pipe.open_raster(out, chunks=chunks)
    expected = destripe_quality(open_input(STRIPED, chunks=chunks), balanced, 16)
    assert result.quality == expected
    assert read_provenance(out)["quality"] == expected
    # the per-detector LUT travels in the output's sidecar (rastermatch.provenance)
    names = ["out.tif", "out.tif.lut.json", "r.png"][: 2 + report]
    assert sorted(p.name for p in tmp_path.iterdir()) == names


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_small_detector_counts_skip_the_range_pass(monkeypatch, rng, dtype):
    """Counting every level (no range pass) computes to the occupied-level histogram, and the
    LUT fitted from it is the range pass's, levels 'all' included."""
    scene = rng.integers(30, 200, (2, 60, 36)).astype(dtype)
    scene[1, :5] = 7
    data = da.from_array(scene, chunks=(1, 16, 20))
    index = np.arange(60) % 6
    with raise_if_dask_computes(0):
        lazy = detector_histograms(data, index, tuple("abcdef"), axis="y")
    full = lazy.compute()
    monkeypatch.setattr(histogram, "FULL_LEVELS_BYTES", 0)  # the range pass, as before
    ranged = detector_histograms(data, index, tuple("abcdef"), axis="y").compute()
    assert full.binning.same_as(ranged.binning) and full.binning.offset == 6
    assert full.counts.dtype == ranged.counts.dtype
    np.testing.assert_array_equal(full.counts, ranged.counts)
    for levels in ("present", "all"):
        monkeypatch.setattr(histogram, "FULL_LEVELS_BYTES", 2**26)
        a = fit_detectors(data, detectors=6, levels=levels)
        monkeypatch.setattr(histogram, "FULL_LEVELS_BYTES", 0)
        b = fit_detectors(data, detectors=6, levels=levels)
        assert a.to_dict() == b.to_dict()
