"""Detector balancing (destriping): exact recovery, real scenes with injected stripes, layouts,
references, LUT files, chunkings and schedulers, and every bad argument refused by name."""

from __future__ import annotations

import functools
import json

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import DATA, raise_if_dask_computes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rastermatch
from rastermatch import LUT, balance_detectors, fit_detectors
from rastermatch._detectors import Detectors
from rastermatch.errors import (
    BandMismatchError,
    DimensionError,
    LUTFileError,
    NoValidPixelsError,
    OptionError,
    RastermatchError,
)

STARS = DATA / "stars_L7_ETMs.tif"
STRIPED = DATA / "striped_L7_ETMs.tif"


# -- helpers ----------------------------------------------------------------------------------


@functools.cache
def _stars() -> np.ndarray:
    return rastermatch.open_raster(STARS).values


def stars(bands: slice | list[int] = slice(0, 3)) -> np.ndarray:
    """Bands of the bundled Landsat 7 scene, ``(band, 352, 349)`` uint8 (a copy)."""
    return _stars()[bands].copy()


def shuffled_detectors(base: np.ndarray, ndet: int, lines: int, seed: int) -> np.ndarray:
    """``(ndet * lines, width)``: line ``i`` belongs to detector ``i mod ndet``, and every
    detector's lines hold a random permutation of the same multiset, ``base`` (its values)."""
    rng = np.random.default_rng(seed)
    width = base.size // lines
    values = base.ravel()[: lines * width]
    out = np.empty((ndet * lines, width), dtype=base.dtype)
    for d in range(ndet):
        out[d::ndet] = rng.permutation(values).reshape(lines, width)
    return out


def increasing_map(levels: np.ndarray, gain: float, offset: float, gamma: float, floor: int):
    """A strictly increasing integer map of ``levels`` (sorted, distinct): gain, offset and
    gamma on a 0..1000 scale, the low end clipped to ``floor`` and then lifted one level per
    level so that it stays strictly increasing."""
    x = levels.astype(np.float64) / 255.0
    g = np.rint(1000.0 * np.clip(gain * x**gamma + offset, 0.0, None))
    g = np.maximum(g, floor)
    out = np.empty_like(g)
    prev = -1.0
    for k, v in enumerate(g):  # one level above the previous one at least
        prev = out[k] = max(v, prev + 1)
    return dict(zip(levels.tolist(), out.astype(np.int64).tolist(), strict=True))


def distort(image: np.ndarray, ndet: int, maps: list[dict[int, int] | None]) -> np.ndarray:
    """Every line of detector ``d`` mapped through ``maps[d]`` (None: left as it is), uint16."""
    out = image.astype(np.uint16)
    for d, m in enumerate(maps):
        if m is None:
            continue
        table = np.zeros(256, dtype=np.uint16)
        table[list(m)] = list(m.values())
        out[d::ndet] = table[image[d::ndet]]
    return out


def inject_stripes(base: np.ndarray, ndet: int, seed: int) -> np.ndarray:
    """A real ``(band, y, x)`` uint8 scene seen through ``ndet`` detectors along y, each with
    its own response (gain, offset, gamma) and detector 1 with one dead low level (the band's
    two lowest levels read as one)."""
    rng = np.random.default_rng(seed)
    out = base.copy()
    v = np.arange(256.0)
    for b in range(base.shape[0]):
        low = int(base[b].min())
        for d in range(ndet):
            lin = np.clip(rng.uniform(0.9, 1.1) * v + rng.uniform(-8, 8), 0, 255)
            m = np.clip(np.rint(255 * (lin / 255) ** rng.uniform(0.9, 1.1)), 0, 255)
            if d == 1:
                m[: low + 2] = m[low + 1]
            out[b, d::ndet] = m.astype(np.uint8)[base[b, d::ndet]]
    return out


def pooled_w1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per band, the Wasserstein-1 distance between the pooled histograms of two uint8 scenes
    (the mean shift of a pixel, in levels)."""

    def cdf(x):
        c = np.bincount(x.ravel(), minlength=256).astype(np.float64)
        return np.cumsum(c) / c.sum()

    return np.array([np.abs(cdf(x) - cdf(y)).sum() for x, y in zip(a, b, strict=True)])


def stripe_power(image: np.ndarray, ndet: int, nodata=None) -> float:
    """Power of the line-mean profile at the detector frequency and its harmonics (k / ndet
    cycles per line, k = 1..ndet // 2), summed over bands; plain numpy FFT."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 2:
        image = image[None]
    lines = image.shape[1] - image.shape[1] % ndet
    total = 0.0
    for band in image[:, :lines]:
        valid = np.ones(band.shape, bool) if nodata is None else band != nodata
        profile = (band * valid).sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
        spectrum = np.abs(np.fft.rfft(profile - profile.mean())) ** 2
        total += sum(spectrum[k * lines // ndet] for k in range(1, ndet // 2 + 1))
    return total


def column_stripes(image: np.ndarray) -> float:
    """Stripe strength of a detector-per-column image: the power of the column-mean profile
    minus its 9-column moving median."""
    profile = np.asarray(image, dtype=np.float64).mean(axis=-2).reshape(-1, image.shape[-1])
    total = 0.0
    for p in profile:
        pad = np.pad(p, 4, mode="edge")
        windows = np.lib.stride_tricks.sliding_window_view(pad, 9)
        total += float(((p - np.median(windows, axis=1)) ** 2).sum())
    return total


def full_counts(hist, row: int) -> np.ndarray:
    """Row ``row`` of a levels histogram as counts over all 65,536 uint16 / 256 uint8 levels."""
    b = hist.binning
    n = int(np.iinfo(b.dtype).max) - int(np.iinfo(b.dtype).min) + 1
    out = np.zeros(n, dtype=np.int64)
    start = b.offset - int(np.iinfo(b.dtype).min)
    out[start : start + b.nbins] = np.asarray(hist.counts[row])
    return out


def oracle_counts(image2d: np.ndarray, index: np.ndarray, d: int, axis: str, valid) -> np.ndarray:
    """Brute-force counts of detector ``d``'s valid pixels of one band."""
    sel = (index == d)[:, None] if axis == "y" else (index == d)[None, :]
    keep = np.broadcast_to(sel, image2d.shape) & valid
    n = int(np.iinfo(image2d.dtype).max) + 1
    return np.bincount(image2d[keep].astype(np.int64), minlength=n)


# -- exact recovery -----------------------------------------------------------------------------


def test_exact_recovery_of_the_base_values():
    """Every detector holds a shuffled copy of the same real values, each distorted by its own
    strictly increasing map (gain, offset, gamma, clipped low end) but detector 2: balancing to
    detector 2 gives the undistorted values back exactly."""
    ndet = 6
    base = shuffled_detectors(stars([0])[0, 100:130, :200], ndet, lines=30, seed=0)
    levels = np.unique(base)
    rng = np.random.default_rng(1)
    maps = [
        None
        if d == 2
        else increasing_map(
            levels, rng.uniform(0.6, 1.4), rng.uniform(-0.2, 0.2), rng.uniform(0.7, 1.4),
            floor=int(rng.integers(0, 200)),
        )
        for d in range(ndet)
    ]  # fmt: skip
    distorted = distort(base, ndet, maps)
    assert stripe_power(distorted, ndet) > 100 * stripe_power(base, ndet)
    out = balance_detectors(distorted, detectors=ndet, reference=2)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, base)
    # the same with the phase moved: line 0 is detector 4, and the reference is labelled 0
    rolled = np.roll(distorted, -2, axis=0)  # line 0 of rolled is line 2 of distorted
    out = balance_detectors(rolled, detectors=ndet, offset=2, reference=2)
    np.testing.assert_array_equal(out, np.roll(base, -2, axis=0))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    ndet=st.integers(2, 5),
    ref=st.integers(0, 4),
    axis=st.sampled_from(["y", "x"]),
)
def test_exact_recovery_random_monotone_maps(seed, ndet, ref, axis):
    ref = ref % ndet
    rng = np.random.default_rng(seed)
    base = shuffled_detectors(stars([1])[0, :12, :40], ndet, lines=6, seed=seed)
    levels = np.unique(base)
    maps = []
    for d in range(ndet):
        if d == ref:
            maps.append(None)
            continue
        steps = rng.integers(1, 40, levels.size)  # a random strictly increasing map
        outputs = rng.integers(0, 500) + np.cumsum(steps)
        maps.append(dict(zip(levels.tolist(), outputs.tolist(), strict=True)))
    distorted = distort(base, ndet, maps)
    if axis == "x":
        base, distorted = base.T.copy(), distorted.T.copy()
    out = balance_detectors(distorted, detectors=ndet, axis=axis, reference=ref)
    np.testing.assert_array_equal(out, base)


# -- a real scene with injected stripes ---------------------------------------------------------


@pytest.fixture(scope="module")
def striped() -> xr.DataArray:
    return rastermatch.open_raster(STRIPED)


def test_injected_stripes_are_removed():
    """Real scene, 16 detectors with their own gain, offset, gamma, one with a dead low
    level: stripe power at the detector frequencies down >= 95 %, and the pooled histogram
    unchanged within one level (the mean shift of a pixel between the pooled histograms of
    input and output, their Wasserstein-1 distance, is at most one level)."""
    data = inject_stripes(stars(slice(0, 6)), 16, seed=11)
    out = balance_detectors(data, detectors=16)
    before, after = stripe_power(data, 16), stripe_power(out, 16)
    assert after <= 0.05 * before, (before, after)
    # the library's own measure agrees, band by band
    from rastermatch.metrics import detector_profile
    from rastermatch.metrics import stripe_power as library_stripe_power

    per_band = [library_stripe_power(detector_profile(x), detectors=16) for x in (data, out)]
    assert (per_band[1] <= 0.05 * per_band[0]).all(), per_band
    assert (pooled_w1(data, out) <= 1.0).all(), pooled_w1(data, out)
    assert (np.abs(out.mean(axis=(1, 2)) - data.mean(axis=(1, 2))) <= 1.0).all()


def test_bundled_striped_scene_is_destriped(striped):
    data = striped.values
    out = balance_detectors(data, detectors=16)
    before, after = stripe_power(data, 16), stripe_power(out, 16)
    assert after <= 0.05 * before, (before, after)
    # dask in, lazy out, the same bytes; the statistics in at most two computes (range, counts)
    lazy = striped.chunk({"band": 2, "y": 50, "x": 120})
    with raise_if_dask_computes(2):
        result = balance_detectors(lazy, detectors=16)
    assert isinstance(result.data, da.Array)
    np.testing.assert_array_equal(result.values, out)


def test_nodata_and_mask_stay_out_of_the_statistics(striped):
    data = striped.values[:2].copy()
    ndet = 16
    index = np.arange(data.shape[1]) % ndet
    rng = np.random.default_rng(3)
    data[:, :, :25] = 0  # a nodata border
    data[:, rng.random(data.shape[1:]) < 0.05] = 0
    mask = np.zeros(data.shape[1:], bool)
    mask[200:260, 100:180] = True
    garbage = data.copy()
    garbage[:, mask] = 255  # masked pixels: any value, never counted
    lut = fit_detectors(garbage, detectors=ndet, nodata=0, mask=mask)
    valid = (data != 0) & ~mask
    for b in range(2):
        for d in range(ndet):
            want = oracle_counts(data[b], index, d, "y", valid[b])
            np.testing.assert_array_equal(full_counts(lut.source_hist, b * ndet + d), want)
    same = fit_detectors(data, detectors=ndet, nodata=0, mask=mask)
    np.testing.assert_array_equal(lut.table, same.table)
    out = balance_detectors(garbage, detectors=ndet, nodata=0, mask=mask)
    # nodata stays nodata, no valid pixel becomes nodata, masked pixels are mapped all the same
    assert (out[garbage == 0] == 0).all()
    assert (out[garbage != 0] != 0).all()
    assert stripe_power(out, ndet, nodata=0) <= 0.05 * stripe_power(data, ndet, nodata=0)


def test_identical_across_chunkings_and_kinds(striped):
    data = striped.values[:2, :160, :120]
    want = balance_detectors(data, detectors=16, offset=3)
    for chunks in ((1, 7, 40), (2, 33, -1), (-1, -1, -1)):
        got = balance_detectors(da.from_array(data, chunks=chunks), detectors=16, offset=3)
        assert got.chunks == da.from_array(data, chunks=chunks).chunks
        np.testing.assert_array_equal(got.compute(), want)
    # push-broom along x over column chunks that cut the detectors anywhere
    data = data[:1, :, :40]
    want = balance_detectors(data, detectors=None, axis="x")
    got = balance_detectors(da.from_array(data, chunks=(1, 64, 7)), detectors=None, axis="x")
    np.testing.assert_array_equal(got.compute(), want)


@pytest.mark.slow
def test_local_cluster_gives_the_same_bytes(striped):
    distributed = pytest.importorskip("distributed")
    from rastermatch.pipeline import local_cluster

    data = striped.isel(band=[0, 1]).chunk({"band": 1, "y": 128, "x": 176})
    with dask.config.set(scheduler="threads"):
        want = balance_detectors(data, detectors=16, reference=0).compute()
    # one worker process: the tasks are pickled and run elsewhere, at the least start-up cost
    with local_cluster(1, threads_per_worker=2) as client:
        assert isinstance(client, distributed.Client)
        got = balance_detectors(data, detectors=16, reference=0).compute()
    np.testing.assert_array_equal(got.values, want.values)


# -- layouts --------------------------------------------------------------------------------------


def test_push_broom_one_detector_per_column():
    """2,048 columns (a real scene side by side with itself, shifted), each its own detector
    with its own gain and offset: one LUT row per column, the column stripes gone."""
    rng = np.random.default_rng(5)
    scene = stars([3])[:, :48]  # (1, 48, 349)
    wide = np.concatenate([np.roll(scene, 11 * k, axis=2) for k in range(6)], axis=2)
    wide = wide[:, :, :2048].astype(np.float64)
    gain = rng.uniform(0.8, 1.2, 2048)
    offset = rng.uniform(-15, 15, 2048)
    striped = np.clip(np.rint(wide * gain + offset), 0, 1023).astype(np.uint16)
    lazy = da.from_array(striped, chunks=(1, 16, 500))
    lut = fit_detectors(lazy, axis="x", detectors=None)
    assert lut.rows.dims == ("band", "detector") and lut.nrows == 2048
    assert lut.detectors.describe() == "one detector per column"
    out = lut.apply(lazy)
    assert out.chunks == lazy.chunks
    out = out.compute()
    assert column_stripes(out) <= 0.05 * column_stripes(striped), column_stripes(
        out
    ) / column_stripes(striped)


def test_labelled_detectors_mirror_sides():
    """Labels per line: two mirror sides, each with its own response."""
    base = stars([0])[0, :120, :100]
    sides = np.array(["fwd", "rev"] * 60)
    distorted = base.astype(np.uint16)
    distorted[sides == "rev"] = distorted[sides == "rev"] * 2 + 7
    out = balance_detectors(distorted, detectors=list(sides), reference="fwd")
    np.testing.assert_array_equal(out[sides == "fwd"], base[sides == "fwd"])
    lut = fit_detectors(distorted, detectors=sides, reference="fwd")
    assert lut.rows.coords[-1] == ("fwd", "rev")


def test_empty_detector_is_mapped_as_its_row():
    """Columns of nodata at the edge of a push-broom scene: those detectors have no valid
    pixel and leave the levels present in the band unchanged (pooled onto pooled)."""
    scene = stars([0])[0, :40, :60].copy()
    scene[:, :5] = 0
    lut = fit_detectors(scene, detectors=None, axis="x", nodata=0)
    out = lut.apply(scene)
    assert (out[:, :5] == 0).all()
    present = np.unique(scene[scene != 0])
    row = lut.table[2]  # detector 2: no valid pixel
    np.testing.assert_array_equal(row[present - lut.source_binning.offset], present)


@pytest.mark.parametrize(
    "rule",
    [
        {"method": "interp"},
        {"method": "ceil"},
        {"method": "optimal", "objective": "ks"},
        {"levels": "all"},
    ],
)
def test_every_lut_rule_balances(rule):
    data = inject_stripes(stars([0])[:, :96, :120], 16, seed=2)
    out = balance_detectors(data, detectors=16, **rule)
    assert stripe_power(out, 16) <= 0.05 * stripe_power(data, 16)
    lut = fit_detectors(data, detectors=16, **rule)
    assert lut.method == rule.get("method", "nearest")
    # proportion 0: the identity blend leaves the data as it is
    np.testing.assert_array_equal(balance_detectors(data, detectors=16, proportion=0), data)


# -- references -------------------------------------------------------------------------------


def test_reference_given_as_image_or_histogram():
    """Every detector matched to another scene, band by band (a LUT as match_histograms')."""
    data = stars([0, 1])[:, :160]
    other = stars([1, 0])  # bands in the other order, labelled so
    other_da = xr.DataArray(other, dims=("band", "y", "x"), coords={"band": [2, 1]})
    data_da = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": [1, 2]})
    lut = fit_detectors(data_da, detectors=8, reference=other_da)
    want = rastermatch.band_histograms(other_da)
    for b, label in enumerate([1, 2]):
        got = lut.reference_hist.take([b * 8 + 3])
        np.testing.assert_array_equal(full_counts(got, 0), full_counts(want.sel(band=[label]), 0))
    hist = rastermatch.band_histograms(other_da)
    by_hist = balance_detectors(data_da, detectors=8, reference=hist)
    # dask source and reference: the source's occupied levels, then every count in one compute
    with raise_if_dask_computes(2):
        by_image = balance_detectors(
            data_da.chunk({"y": 40}), detectors=8, reference=other_da.chunk({"x": 100})
        )
    np.testing.assert_array_equal(by_hist.values, by_image.values)
    # a single detector: the whole band matched, as match_histograms does
    one = balance_detectors(data, detectors=1, reference=other[::-1])
    np.testing.assert_array_equal(one, rastermatch.match_histograms(data, other[::-1]))


def test_reference_detector_and_pooled_come_from_one_pass(striped):
    lazy = striped.chunk({"y": 100})
    with raise_if_dask_computes(2):
        lut_pooled = fit_detectors(lazy, detectors=16)
    with raise_if_dask_computes(2):
        lut_one = fit_detectors(lazy, detectors=16, reference=7)
    np.testing.assert_array_equal(lut_pooled.source_hist.counts, lut_one.source_hist.counts)
    pooled = lut_pooled.source_hist.sum("detector")
    np.testing.assert_array_equal(lut_pooled.reference_hist.isel(detector=0).counts, pooled.counts)
    np.testing.assert_array_equal(
        lut_one.reference_hist.isel(detector=0).counts,
        lut_one.source_hist.isel(detector=7).counts,
    )
    # the reference detector itself is left as it is (on the levels it has)
    out = balance_detectors(striped.values, detectors=16, reference=7)
    np.testing.assert_array_equal(out[:, 7::16], striped.values[:, 7::16])


# -- LUT files and later scenes -------------------------------------------------------------


def test_lut_save_load_apply_to_a_later_scene(tmp_path, striped):
    data = striped.values[:3]
    later = striped.values[3:6]  # another scene of the same size
    lut = fit_detectors(data, detectors=16, reference=0)
    path = lut.save(tmp_path / "detectors.json")
    doc = json.loads(path.read_text())
    assert doc["detectors"] == {"axis": "y", "count": 16, "offset": 0, "labels": None}
    back = LUT.load(path)
    assert back.detectors.describe() == "16 detectors along y"
    assert back.rows.same_as(lut.rows)
    np.testing.assert_array_equal(back.table, lut.table)
    np.testing.assert_array_equal(
        back.apply(data), balance_detectors(data, detectors=16, reference=0)
    )
    np.testing.assert_array_equal(back.apply(later), lut.apply(later))
    np.testing.assert_array_equal(
        back.apply(da.from_array(later, chunks=(1, 50, 100))).compute(), lut.apply(later)
    )
    assert repr(back).endswith("16 detectors along y>")


def test_lut_file_detectors_field_is_validated(tmp_path):
    scene = stars([0])[0, :64, :50]
    doc = fit_detectors(scene, detectors=4).to_dict()
    for bad, words in (
        ({"axis": "z", "count": 4, "offset": 0, "labels": None}, "axis"),
        ({"axis": "y", "count": 5, "offset": 0, "labels": None}, "not the detectors"),
        ({"axis": "y", "count": 4, "offset": 9, "labels": None}, "offset"),
        ({"axis": "y", "count": True, "offset": 0, "labels": None}, "count"),
        ({"axis": "y", "count": 4, "offset": 0}, "labels"),
        ("sixteen", "expected a detector layout"),
    ):
        doc["detectors"] = bad
        with pytest.raises(LUTFileError, match="detectors") as e:
            LUT.from_dict(doc)
        assert words in str(e.value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(LUTFileError, match=f"{path}.*detectors"):
        LUT.load(path)


# -- layouts of data ---------------------------------------------------------------------------


def test_dataarray_keeps_coords_crs_and_transform(striped):
    out = balance_detectors(striped, detectors=16)
    assert out.dims == striped.dims
    assert out.rio.crs == striped.rio.crs
    assert out.rio.transform() == striped.rio.transform()
    for c in ("band", "y", "x"):
        np.testing.assert_array_equal(out[c].values, striped[c].values)
    np.testing.assert_array_equal(out.values, balance_detectors(striped.values, detectors=16))
    # the accessor forwards
    np.testing.assert_array_equal(
        striped.rm.balance_detectors(detectors=16, reference=3).values,
        balance_detectors(striped, detectors=16, reference=3).values,
    )
    assert striped.rm.fit_detectors(detectors=16).detectors.count == 16
    ds = striped.sel(band=[1, 2]).to_dataset("band").rename({1: "blue", 2: "green"})
    out_ds = ds.rm.balance_detectors(detectors=16)
    assert sorted(out_ds.data_vars) == ["blue", "green"]
    np.testing.assert_array_equal(out_ds["green"].values, out.sel(band=2).values)


def test_time_band_stack_balances_every_date(striped):
    """``(time, band, y, x)``: rows (time, band, detector), each date balanced on its own."""
    one = striped.isel(band=[0, 1])
    stack = xr.concat([one, (one // 2).astype(np.uint8)], dim="time").assign_coords(
        time=np.array(["2020-01-01", "2020-02-01"], dtype="datetime64[ns]")
    )
    lut = fit_detectors(stack.chunk({"y": 64}), detectors=16)
    assert lut.rows.dims == ("time", "band", "detector")
    out = balance_detectors(stack.chunk({"y": 64}), detectors=16)
    assert out.dims == ("time", "band", "y", "x")
    for t in range(2):
        np.testing.assert_array_equal(
            out.isel(time=t).values, balance_detectors(stack.isel(time=t).values, detectors=16)
        )
    # the stack's LUT re-applies to the stack it came from, date by date
    np.testing.assert_array_equal(lut.apply(stack).values, out.values)


def test_float_data_is_balanced_per_detector():
    rng = np.random.default_rng(8)
    base = stars([2])[0, :96, :80].astype(np.float32) / 255
    distorted = base.copy()
    gains = rng.uniform(0.7, 1.3, 8)
    for d in range(8):
        distorted[d::8] = distorted[d::8] * gains[d] + 0.1 * d
    distorted[5, 5] = np.nan
    out = balance_detectors(distorted, detectors=8)
    assert out.dtype == np.float32 and np.isnan(out[5, 5])
    assert stripe_power(np.nan_to_num(out), 8) <= 0.05 * stripe_power(np.nan_to_num(distorted), 8)


# -- bad arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"detectors": 16, "axis": "z"}, OptionError, "axis must be 'y'"),
        ({"detectors": 16, "reference": 16}, OptionError, "reference=16 is not a detector"),
        ({"detectors": 16, "reference": "best"}, OptionError, "'best' is not a detector"),
        ({"detectors": 16, "reference": True}, OptionError, "not bool"),
        ({"detectors": 16, "reference": None}, OptionError, "not NoneType"),
        ({"detectors": 400}, OptionError, "400 detectors along y but data has 352 lines"),
        ({"detectors": 0}, OptionError, "number of detectors"),
        ({"detectors": 2.5}, OptionError, "detectors must be"),
        ({"detectors": "16"}, OptionError, "detectors must be"),
        ({"detectors": 16, "offset": 16}, OptionError, "offset"),
        ({"detectors": [0, 1] * 10}, OptionError, "20 detector labels for the 352 lines"),
        ({"detectors": None, "offset": 1}, OptionError, "offset needs a detector count"),
        ({"detectors": Detectors.of(4, axis="x"), "axis": "y"}, OptionError, "axis='x'"),
        ({"detectors": 16, "reference_mask": np.zeros((2, 2), bool)}, OptionError, "reference"),
        ({"detectors": 16, "method": "best"}, OptionError, "method"),
        ({"detectors": 16, "levels": "some"}, OptionError, "levels"),
        ({"detectors": 16, "dtype": "complex64"}, OptionError, "dtype"),
        ({"detectors": 16, "bins": 0}, OptionError, "bins"),
        ({"detectors": 16, "nodata": 300}, OptionError, "nodata"),
        ({"detectors": 16, "mask": np.zeros((3, 3), bool)}, DimensionError, "mask"),
        ({"detectors": 16, "reference": np.ones((5, 4, 4), np.uint8)}, BandMismatchError, "5"),
        ({"detectors": 16, "reference": {"a": 1}}, OptionError, "not dict"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs, error, words):
    data = stars([0, 1, 2])
    with pytest.raises(error, match=words) as e:
        fit_detectors(data, **kwargs)
    assert isinstance(e.value, RastermatchError)
    with pytest.raises(error, match=words):
        balance_detectors(data, **kwargs)


def test_bad_reference_is_refused_before_any_work():
    lazy = da.from_array(stars([0, 1, 2]), chunks=(1, 100, 100))
    with raise_if_dask_computes(0):
        with pytest.raises(BandMismatchError, match="5"):
            fit_detectors(lazy, detectors=16, reference=np.ones((5, 4, 4), np.uint8))
        with pytest.raises(OptionError, match="not a detector"):
            balance_detectors(lazy, detectors=16, reference=99)
        with pytest.raises(OptionError, match="16 detector labels for the 352 lines"):
            balance_detectors(lazy, detectors=list(range(16)))


def test_channel_last_and_detector_dim_and_empty_reference_are_refused():
    with pytest.raises(DimensionError, match="channel_axis=-1"):
        balance_detectors(np.zeros((60, 80, 6), np.uint8), detectors=16)
    ok = balance_detectors(np.zeros((60, 80, 6), np.uint8) + 3, detectors=16, channel_axis=-1)
    assert ok.shape == (60, 80, 6)
    named = xr.DataArray(np.ones((2, 32, 8), np.uint8), dims=("detector", "y", "x"))
    with pytest.raises(DimensionError, match="'detector'"):
        balance_detectors(named, detectors=16)
    scene = stars([0])[0, :64, :40].copy()
    scene[3::16] = 0  # detector 3: nothing but nodata
    with pytest.raises(NoValidPixelsError, match="reference detector 3 has no valid pixels"):
        balance_detectors(scene, detectors=16, nodata=0, reference=3)
    with pytest.raises(NoValidPixelsError, match="band 2 of data"):
        balance_detectors(np.stack([scene, scene * 0]), detectors=16, nodata=0)
