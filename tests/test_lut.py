"""LUT construction against a literal Algorithm 1 in exact fractions, and scikit-image."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.exposure import match_histograms as sk_match
from strategies import counts, huge_counts

from rastermatch import LUT, Binning, Histogram, band_histograms, nearest_cdf_indices
from rastermatch._rows import Rows
from rastermatch.errors import BandMismatchError, NoValidPixelsError, OptionError, RastermatchError
from rastermatch.lut import ceil_cdf_indices


def algorithm1(source_counts, reference_counts, candidates=None) -> list[int]:
    """The published rule, literally: q* = argmin_q |F_ref(q) - F_src(p)|, smallest q on ties."""
    n_src, n_ref = int(sum(source_counts)), int(sum(reference_counts))
    f_src = np.cumsum(source_counts).tolist()
    f_ref = np.cumsum(reference_counts).tolist()
    qs = range(len(reference_counts)) if candidates is None else candidates
    out = []
    for p in range(len(source_counts)):
        target = Fraction(f_src[p], n_src)
        best = min(qs, key=lambda q: (abs(Fraction(f_ref[q], n_ref) - target), q))
        out.append(best)
    return out


def test_float_cdfs_would_decide_this_tie_wrongly():
    # F_src(0) = 0.8 is exactly half-way between F_ref(0) = 0.7 and F_ref(1) = 0.9
    assert nearest_cdf_indices(np.array([8, 2]), np.array([7, 2, 1]), levels="all").tolist() == [
        0,
        2,
    ]
    f_src, f_ref = np.cumsum([8, 2]) / 10, np.cumsum([7, 2, 1]) / 10
    assert np.argmin(np.abs(f_ref - f_src[0])) == 1  # float64 CDFs pick the wrong level
    # the same tie on float64 data, through uniform bins and their statistics
    src = np.array([[0.0] * 8 + [1.0] * 2])
    ref = np.array([[0.0] * 7 + [1.0] * 2 + [2.0]])
    lut = LUT.from_histograms(band_histograms(src), band_histograms(ref), levels="all")
    assert lut.apply(src).tolist() == [[0.0] * 8 + [2.0] * 2]


@settings(max_examples=400, deadline=None)
@given(counts(), counts())
def test_levels_all_is_algorithm1(src, ref):
    assert nearest_cdf_indices(src, ref, levels="all").tolist() == algorithm1(src, ref)


@settings(max_examples=400, deadline=None)
@given(counts(), counts())
def test_levels_present_is_algorithm1_over_present_levels(src, ref):
    present = np.flatnonzero(ref).tolist()
    got = nearest_cdf_indices(src, ref, levels="present")
    assert got.tolist() == algorithm1(src, ref, present)
    assert np.all(ref[got] > 0)  # never a level the reference does not have


@settings(max_examples=100, deadline=None)
@given(huge_counts(), huge_counts(), st.sampled_from(["all", "present"]))
def test_exact_beyond_int64_products(src, ref, levels):
    assert src.sum() > 10**12
    candidates = None if levels == "all" else np.flatnonzero(ref).tolist()
    assert nearest_cdf_indices(src, ref, levels=levels).tolist() == algorithm1(src, ref, candidates)


@settings(max_examples=200, deadline=None)
@given(counts(max_size=8), counts(max_size=8))
def test_lut_is_monotonic(src, ref):
    q = nearest_cdf_indices(src, ref, levels="all")
    assert np.all(np.diff(q) >= 0)


def _hist(counts_2d, dtype=np.uint8) -> Histogram:
    counts_2d = np.atleast_2d(counts_2d)
    binning = Binning.levels(np.dtype(dtype), counts_2d.shape[0])
    full = np.zeros((counts_2d.shape[0], binning.nbins), dtype=np.int64)
    full[:, : counts_2d.shape[1]] = counts_2d
    return Histogram(full, binning)


def test_from_histograms_maps_to_reference_levels():
    lut = LUT.from_histograms(_hist([8, 2]), _hist([7, 2, 1]), levels="all")
    assert lut.table[0, :2].tolist() == [0, 2]
    assert lut.dtype == np.uint8


def test_output_dtype_is_the_references_unless_given():
    lut = LUT.from_histograms(_hist([1, 1]), _hist([1, 1], np.uint16))
    assert lut.dtype == np.uint16
    assert LUT.from_histograms(_hist([1, 1]), _hist([1, 1]), dtype="float32").dtype == np.float32


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_interp_equals_scikit_image(dtype, rng):
    if dtype == "float32":
        src = rng.normal(100, 20, (2, 60, 50)).astype(dtype)
        # on a 1/8 grid, so that no bin holds two distinct reference values
        ref = (np.round(rng.gamma(2.0, 30, (2, 40, 45)) * 8) / 8).astype(dtype)
    else:
        info = np.iinfo(dtype)
        lo, hi = max(info.min, -3000), min(info.max, 4000 if info.bits > 8 else 255)
        src = rng.integers(lo, hi, (2, 60, 50)).astype(dtype) // 3
        ref = (rng.integers(lo, hi, (2, 40, 45)) * 0.7).astype(dtype)
    # band by band: with channel_axis, scikit-image casts (truncates) into the input dtype
    want = np.stack([sk_match(s, r) for s, r in zip(src, ref, strict=True)])
    lut = LUT.from_histograms(band_histograms(src), band_histograms(ref), method="interp")
    got = lut.apply(src)
    if dtype == "float32":
        # continuous data is binned: scikit-image's value lies between ours at the lower and the
        # upper edge of the pixel's source bin, give or take one reference bin
        b = lut.source_binning
        width = (b.hi - b.lo)[:, None, None] / b.nbins
        k = np.clip(np.floor((src - b.lo[:, None, None]) / width), 0, b.nbins - 1)
        lower = lut.apply(b.lo[:, None, None] + k * width)
        upper = lut.apply(b.lo[:, None, None] + (k + 1) * width)
        ref_width = (ref.max(axis=(1, 2)) - ref.min(axis=(1, 2)))[:, None, None] / 65536
        assert np.all(want >= lower - ref_width - 1e-4)
        assert np.all(want <= upper + ref_width + 1e-4)
    else:
        np.testing.assert_array_equal(got, np.rint(want).astype(dtype))


def test_interp_float_is_continuous(rng):
    src = rng.normal(0, 1, (1, 200, 200))
    ref = rng.normal(10, 2, (1, 200, 200))
    lut = LUT.from_histograms(band_histograms(src), band_histograms(ref), method="interp")
    assert lut.kind == "interval"
    x = np.linspace(-1, 1, 10001)[None, None, :]
    y = lut.apply(x)[0, 0]
    steps = np.diff(y)
    assert np.all(steps >= 0) and steps.max() < 1e-2  # no quantisation steps


def test_nearest_float_maps_to_reference_values(rng):
    src = rng.normal(0, 1, (1, 50, 50)).astype(np.float32)
    ref = rng.normal(5, 1, (1, 50, 50))
    h_ref = band_histograms(ref, bins=16)
    lut = LUT.from_histograms(band_histograms(src), h_ref)
    # coarse bins hold many values: each output is the smallest value of its reference bin
    assert set(np.unique(lut.apply(src))) <= set(h_ref.vmin[0][h_ref.counts[0] > 0])
    assert set(np.unique(lut.apply(src))) <= set(np.unique(ref))


def test_band_mismatch_and_empty_band():
    with pytest.raises(BandMismatchError, match="1 bands and the reference 2"):
        LUT.from_histograms(_hist([1, 1]), _hist([[1, 1], [1, 1]]))
    with pytest.raises(NoValidPixelsError, match="band 2 of the reference has no valid pixels"):
        LUT.from_histograms(_hist([[1, 1], [1, 1]]), _hist([[1, 1], [0, 0]]))
    with pytest.raises(ValueError, match="method must be one of"):
        LUT.from_histograms(_hist([1]), _hist([1]), method="cubic")
    with pytest.raises(ValueError, match="levels must be one of"):
        LUT.from_histograms(_hist([1]), _hist([1]), levels="some")


def test_lazy_histograms_are_refused():
    import dask.array as da

    h = band_histograms(da.zeros((1, 4, 4), dtype=np.uint8, chunks=2))
    with pytest.raises(RastermatchError, match=r"dask.compute\(h_src, h_ref\)"):
        LUT.from_histograms(h, h)


@pytest.mark.parametrize("method", ["nearest", "interp"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_save_load_roundtrip(tmp_path, rng, method, dtype):
    src = (rng.normal(120, 30, (2, 30, 30))).astype(dtype)
    ref = (rng.normal(100, 10, (2, 30, 30))).astype(dtype)
    lut = LUT.from_histograms(band_histograms(src), band_histograms(ref), method=method)
    path = lut.save(tmp_path / "lut.json")
    back = LUT.load(path)
    np.testing.assert_array_equal(back.table, lut.table)
    assert (back.method, back.levels, back.dtype, back.bands) == (
        method,
        "present",
        lut.dtype,
        (1, 2),
    )
    np.testing.assert_array_equal(back.apply(src), lut.apply(src))
    np.testing.assert_array_equal(back.source_hist.counts, lut.source_hist.counts)
    assert not list(tmp_path.glob(".*tmp*"))
    doc = json.loads(path.read_text())
    assert doc["type"] == "rastermatch.LUT" and "rastermatch_version" in doc


def test_a_lut_keeps_the_source_rows_and_takes_keywords():
    rows = Rows(("time", "band"), ((2020, 2021), ("red", "nir")))
    src = Histogram(
        _hist([[3, 1], [1, 3], [2, 2], [1, 1]]).counts,
        Binning.levels(np.dtype(np.uint8), 4),
        rows=rows,
    )
    ref = _hist([[1, 1, 2]] * 4)
    lut = LUT.from_histograms(src, ref)
    assert lut.rows is src.rows and lut.nrows == lut.nbands == 4
    assert lut.bands == ((2020, "red"), (2020, "nir"), (2021, "red"), (2021, "nir"))
    assert lut.describe(3) == "time 2021, band 'nir'" and "Rows(time: 2, band: 2)" in repr(lut)
    with pytest.raises(TypeError):
        LUT(lut.table, lut.source_binning, lut.dtype, "nearest")
    bare = LUT(lut.table, lut.source_binning, lut.dtype, levels="all")
    assert bare.bands == (1, 2, 3, 4) and bare.levels == "all"
    moved = replace(lut, rows=Rows.bands("abcd"))
    assert moved.bands == ("a", "b", "c", "d") and moved.table is lut.table
    with pytest.raises(ValueError, match="name 3 rows, but the table has 4"):
        replace(lut, rows=Rows.bands("abc"))
    with pytest.raises(
        BandMismatchError, match=r"4 rows \(Rows\(time: 2, band: 2\)\) and the reference 2"
    ):
        LUT.from_histograms(src, _hist([[1, 1]] * 2))
    # a 2-D image's single row serves as a band-less LUT
    single = Histogram(ref.counts[:1], Binning.levels(np.dtype(np.uint8), 1), rows=Rows.single())
    one = LUT.from_histograms(single, single)
    assert one.rows.dims == () and one.describe(0) == ""


# -- the rules side by side: ceil, optimal, and the blend with the identity ---------------------


def ceil_oracle(source_counts, reference_counts, candidates=None) -> list[int]:
    """The generalized inverse, literally: q* = min{q : F_ref(q) >= F_src(p)}, in fractions."""
    n_src, n_ref = int(sum(source_counts)), int(sum(reference_counts))
    f_src = np.cumsum(source_counts).tolist()
    f_ref = np.cumsum(reference_counts).tolist()
    qs = range(len(reference_counts)) if candidates is None else candidates
    return [
        min(q for q in qs if Fraction(f_ref[q], n_ref) >= Fraction(f_src[p], n_src))
        for p in range(len(source_counts))
    ]


def ks_after(source_counts, reference_counts, q) -> Fraction:
    """The KS distance between the source mapped through ``q`` and the reference, exactly."""
    mapped = np.bincount(q, weights=source_counts, minlength=len(reference_counts)).astype(int)
    f_map, f_ref = np.cumsum(mapped).tolist(), np.cumsum(reference_counts).tolist()
    n_map, n_ref = f_map[-1], f_ref[-1]
    return max(
        abs(Fraction(a, n_map) - Fraction(b, n_ref)) for a, b in zip(f_map, f_ref, strict=True)
    )


def test_ceil_reaches_ks_0_where_nearest_leaves_0_4():
    # the case: levels 0..9, one pixel each, onto [one pixel at 0, nine at 1]
    src, ref = np.ones(10, dtype=np.int64), np.array([1, 9])
    assert ks_after(src, ref, nearest_cdf_indices(src, ref)) == Fraction(2, 5)
    assert ks_after(src, ref, ceil_cdf_indices(src, ref)) == 0
    lut = LUT.from_histograms(_hist(src), _hist(ref), method="ceil")
    out = lut.apply(np.arange(10, dtype=np.uint8)[None, None])
    assert np.bincount(out.ravel()).tolist() == [1, 9]


def test_nearest_keeps_the_gonzalez_woods_result():
    # Gonzalez & Woods, Digital Image Processing, Example 3.8: a 64 x 64 3-bit image onto the
    # specified histogram (0, 0, 0, .15, .20, .30, .20, .15); the book maps r_k to z_q below
    src = np.array([790, 1023, 850, 656, 329, 245, 122, 81])
    ref = np.array([0, 0, 0, 15, 20, 30, 20, 15])
    want = [3, 4, 5, 6, 6, 7, 7, 7]
    assert nearest_cdf_indices(src, ref).tolist() == want
    assert nearest_cdf_indices(src, ref, levels="all").tolist() == want
    assert LUT.from_histograms(_hist(src), _hist(ref)).table[0, :8].tolist() == want
    # ceil is the other textbook reading: never below the source quantile
    assert ceil_cdf_indices(src, ref).tolist() == [4, 5, 6, 6, 7, 7, 7, 7]


@settings(max_examples=50, deadline=None)
@given(counts(), counts(), st.sampled_from(["all", "present"]))
def test_ceil_is_the_generalized_inverse(src, ref, levels):
    candidates = None if levels == "all" else np.flatnonzero(ref).tolist()
    got = ceil_cdf_indices(src, ref, levels=levels)
    assert got.tolist() == ceil_oracle(src, ref, candidates)
    assert np.all(np.diff(got) >= 0)


@settings(max_examples=30, deadline=None)
@given(huge_counts(), huge_counts(), st.sampled_from(["all", "present"]))
def test_ceil_exact_beyond_int64_products(src, ref, levels):
    candidates = None if levels == "all" else np.flatnonzero(ref).tolist()
    assert ceil_cdf_indices(src, ref, levels=levels).tolist() == ceil_oracle(src, ref, candidates)


def test_ceil_never_picks_the_reference_nodata_level():
    # with levels="all" the empty level 0 would take the source's empty bins below its pixels
    src, ref = _hist([0, 0, 1, 1]), _hist([0, 2, 2])
    assert LUT.from_histograms(src, ref, method="ceil", levels="all").table[0, 0] == 0
    ref = Histogram(ref.counts, ref.binning, nodata=0)
    assert LUT.from_histograms(src, ref, method="ceil", levels="all").table[0, 0] == 1


@pytest.mark.parametrize("method", ["ceil", "optimal"])
def test_ceil_and_optimal_on_floats_output_reference_values(rng, method):
    src = rng.normal(0, 1, (1, 40, 40)).astype(np.float32)
    ref = rng.normal(5, 1, (1, 40, 40))
    h_ref = band_histograms(ref, bins=16)
    lut = LUT.from_histograms(band_histograms(src, bins=64), h_ref, method=method)
    assert lut.kind == "interval"
    out = lut.apply(src)
    assert set(np.unique(out)) <= set(h_ref.vmin[0][h_ref.counts[0] > 0])
    # a scene matched to itself is unchanged, as with nearest
    x = np.array([[0.0, 1.0, 2.0, 3.0, 100.0]])
    h = band_histograms(x)
    assert LUT.from_histograms(h, h, method=method).apply(x).tolist() == x.tolist()


def test_optimal_is_the_dynamic_programme_of_optimal_py():
    from rastermatch.optimal import optimal_indices

    src, ref = np.ones(10, dtype=np.int64), np.array([1, 9])
    lut = LUT.from_histograms(_hist(src), _hist(ref), method="optimal", objective="ks")
    assert lut.objective == "ks" and ks_after(src, ref, lut.table[0, :10].astype(int)) == 0
    rng = np.random.default_rng(5)
    s, r = rng.integers(0, 4, 12) * (rng.random(12) < 0.7), rng.integers(0, 5, 9)
    s[3], r[4] = 2, 1
    for objective in ("ks", "w1"):
        q = optimal_indices(
            [(s, r)], objective=objective, reference_values=np.arange(9.0), levels="present"
        )
        lut = LUT.from_histograms(_hist(s), _hist(r), method="optimal", objective=objective)
        assert lut.table[0, :12].tolist() == np.asarray(q).tolist()
    assert LUT.from_histograms(_hist(s), _hist(r), method="optimal").objective == "w1"


def test_optimal_never_picks_the_reference_nodata_level():
    # the empty nodata level is left out of the problem: every other CDF value is unchanged
    src = _hist([3, 1, 0, 0, 2])
    ref = Histogram(_hist([0, 0, 4, 2, 0, 3]).counts, Binning.levels(np.dtype(np.uint8), 1))
    for nodata in (None, 4):
        r = Histogram(ref.counts, ref.binning, nodata=nodata)
        for objective in ("ks", "w1"):
            lut = LUT.from_histograms(src, r, method="optimal", objective=objective, levels="all")
            if nodata is not None:
                assert 4 not in lut.table[0, :5].tolist()


def _blend_oracle(data, matched, m, dtype):
    out = data.astype(np.float64) + m * (matched.astype(np.float64) - data)
    return np.rint(out).astype(dtype) if np.dtype(dtype).kind in "iu" else out.astype(dtype)


@pytest.mark.parametrize("method", ["nearest", "ceil", "interp", "optimal"])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float64"])
def test_proportion_blends_the_match_with_the_identity(rng, method, dtype):
    if dtype == "float64":
        src = rng.normal(100, 20, (2, 30, 30))
        ref = rng.gamma(3.0, 20, (2, 25, 25))
        kw = {"bins": 256}
    else:
        src = rng.integers(20, 120, (2, 30, 30)).astype(dtype)
        ref = (rng.gamma(3.0, 20, (2, 25, 25)) + 10).astype(dtype)
        kw = {}
    h_src, h_ref = band_histograms(src, **kw), band_histograms(ref, **kw)
    full = LUT.from_histograms(h_src, h_ref, method=method)
    matched = full.apply(src)
    # 1 is exactly the full match, 0 exactly the source
    one = LUT.from_histograms(h_src, h_ref, method=method, proportion=1)
    np.testing.assert_array_equal(one.table, full.table)
    assert one.proportion == 1.0 and one.to_dict() == full.to_dict()
    zero = LUT.from_histograms(h_src, h_ref, method=method, proportion=0.0)
    np.testing.assert_array_equal(zero.apply(src), src)
    # in between: src + m * (matched - src), integers rounded half to even
    for m in (0.3, 0.5):
        lut = LUT.from_histograms(h_src, h_ref, method=method, proportion=m)
        want = _blend_oracle(src, matched, m, lut.dtype)
        if dtype == "float64":
            np.testing.assert_allclose(lut.apply(src), want, rtol=1e-12, atol=1e-9)
        else:
            np.testing.assert_array_equal(lut.apply(src), want)
        assert lut.proportion == m and f"x{m:g}" in repr(lut)


def test_proportion_on_an_interval_table_is_linear_within_each_bin():
    # two source bins, [0, 2) holding 0 and 1, [2, 4] holding 2, 3 and 4: nearest maps each bin
    # onto one value; half of it is linear within each bin's observed range
    x = np.array([[0.0, 1.0, 2.0, 3.0, 4.0]])
    y = np.array([[10.0, 20.0, 30.0, 40.0, 50.0]])
    h_x, h_y = band_histograms(x, bins=2), band_histograms(y)
    assert LUT.from_histograms(h_x, h_y).apply(x).tolist() == [[20.0, 20.0, 50.0, 50.0, 50.0]]
    lut = LUT.from_histograms(h_x, h_y, proportion=0.5)
    assert lut.apply(x).tolist() == [[10.0, 10.5, 26.0, 26.5, 27.0]]
    assert lut.apply(np.array([[0.5, 3.5]])).tolist() == [[10.25, 26.75]]
    # beyond a bin's observed range a value is held at the range's end, as the match holds it
    assert lut.apply(np.array([[-7.0, 1.5, 9.0]])).tolist() == [[10.0, 10.5, 27.0]]


def test_a_proportion_the_output_dtype_cannot_hold_is_refused():
    src = _hist(np.r_[np.zeros(990), [1] * 11], np.uint16)  # levels 990..1000 of a uint16 source
    ref = _hist([0, 3, 3, 3])
    assert LUT.from_histograms(src, ref).dtype == np.uint8
    with pytest.raises(
        OptionError, match=r"onto 496\.\.502, which uint8 cannot hold; pass dtype= uint16"
    ):
        LUT.from_histograms(src, ref, proportion=0.5)
    # 990 -> 1 blends to 495.5, rounded half to even; levels beyond the data are held at its ends
    lut = LUT.from_histograms(src, ref, proportion=0.5, dtype="uint16")
    want = [496, 496, 496, 497, 498, 498, 499, 500, 500, 501, 502]
    assert lut.table[0, 990:1001].tolist() == want
    assert lut.table[0, [0, 989, 1001, 65535]].tolist() == [496, 496, 502, 502]


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"objective": "ks"}, "objective 'ks' is what method 'optimal' minimises"),
        ({"method": "ceil", "objective": "w1"}, "leave the objective out for method 'ceil'"),
        ({"method": "optimal", "objective": "l2"}, "objective must be one of 'ks', 'w1'"),
        ({"proportion": 1.5}, "proportion is 1.5; pass a number from 0"),
        ({"proportion": -0.1}, "proportion is -0.1"),
        ({"proportion": float("nan")}, "proportion is nan"),
        ({"proportion": True}, "proportion must be a number"),
        ({"proportion": "0.5"}, "proportion must be a number"),
        ({"method": "cubic"}, "method must be one of 'nearest', 'ceil', 'interp', 'optimal'"),
    ],
)
def test_rule_options_are_checked(kw, match):
    with pytest.raises(OptionError, match=re.escape(match)):
        LUT.from_histograms(_hist([1, 1]), _hist([1, 1]), **kw)
    lut = LUT.from_histograms(_hist([1, 1]), _hist([1, 1]))
    with pytest.raises(OptionError, match=re.escape(match)):
        LUT(lut.table, lut.source_binning, lut.dtype, **{"method": "nearest", **kw})


# -- many rows at once: the compiled builder against the per-row definition -----------------


@st.composite
def many_rows(draw):
    """Source and reference histograms over one ranged levels binning, several rows, small
    counts (ties), int32 or int64, some rows beyond int64 products."""
    dtype = np.dtype(draw(st.sampled_from(["uint8", "uint16", "int16"])))
    info = np.iinfo(dtype)
    lo = draw(st.sampled_from([info.min, info.max - 12]) | st.integers(info.min, info.max))
    hi = draw(st.integers(lo, min(lo + 12, info.max)))

    def binning(n):
        return Binning.levels(dtype, n, lo=lo, hi=hi)

    def hist(nrows):
        b = binning(nrows)
        rows = []
        for _ in range(nrows):
            huge = draw(st.integers(0, 9)) == 0
            top = 2**45 if huge else 3
            row = draw(st.lists(st.integers(0, top), min_size=b.nbins, max_size=b.nbins))
            row[draw(st.integers(0, b.nbins - 1))] += 1  # at least one pixel
            rows.append(row)
        counts = np.array(rows, dtype=np.int64)
        if counts.max() < 2**31 and draw(st.booleans()):
            counts = counts.astype(np.int32)
        nodata = draw(st.none() | st.integers(b.offset, b.offset + b.nbins - 1))
        return Histogram(counts, b, nodata=nodata)

    nsrc, nref = draw(st.integers(1, 5)), draw(st.integers(1, 3))
    return hist(nsrc), hist(nref), draw(st.lists(st.integers(0, nref - 1), min_size=nsrc,
                                                 max_size=nsrc))  # fmt: skip


def _per_row_table(src, ref, ref_rows, method, levels, proportion, dtype):
    """The definition: every row by itself (``lut._band_table``), cast, then blended."""
    from rastermatch import lut as lut_module
    from rastermatch._values import cast_values

    rows = [
        lut_module._band_table(src, ref, b, method, levels, None, rb)
        for b, rb in enumerate(ref_rows)
    ]
    table = cast_values(np.stack(rows), dtype)
    if proportion != 1.0:
        blended = [lut_module._blend(r, src, b, proportion) for b, r in enumerate(table)]
        table = cast_values(np.stack(blended), dtype)
    return table


@settings(max_examples=50, deadline=None)
@given(
    many_rows(),
    st.sampled_from(["nearest", "ceil"]),
    st.sampled_from(["present", "all"]),
    st.sampled_from([1.0, 0.5, 0.0, 0.3]),
    st.sampled_from([None, "float32", "int32"]),
)
def test_many_rows_builder_is_the_per_row_definition(case, method, levels, proportion, dtype):
    src, ref, ref_rows = case
    lut = LUT.from_histograms(
        src,
        ref,
        method=method,
        levels=levels,
        proportion=proportion,
        dtype=dtype,
        reference_rows=np.array(ref_rows),
    )
    want = _per_row_table(src, ref, ref_rows, method, levels, proportion, lut.dtype)
    assert lut.table.dtype == want.dtype
    assert lut.table.tobytes() == want.tobytes()
    # the reference recorded per source row, as LUT documents store it
    assert np.array_equal(lut.reference_hist.counts, ref.counts[ref_rows])
    assert lut.reference_hist.rows.same_as(src.rows)
    if src.nrows == ref.nrows and ref_rows == list(range(src.nrows)):
        same = LUT.from_histograms(src, ref, method=method, levels=levels, proportion=proportion,
                                   dtype=dtype)  # fmt: skip
        assert same.table.tobytes() == lut.table.tobytes()


def test_many_rows_builder_chunks_and_names_the_row_that_does_not_fit(monkeypatch):
    from rastermatch import lut as lut_module

    monkeypatch.setattr(lut_module, "CHUNK_ROWS", 2)
    src = Histogram(np.ones((5, 11), np.int32), Binning.levels(np.uint16, 5, lo=250, hi=260))
    ref_counts = np.zeros((2, 11), np.int64)
    ref_counts[0, :3] = 1
    ref_counts[1, 7:] = 1  # levels 257..260, beyond uint8
    ref = Histogram(ref_counts, Binning.levels(np.uint16, 2, lo=250, hi=260))
    rows = np.array([0, 0, 0, 1, 0])
    lut = LUT.from_histograms(src, ref, reference_rows=rows)
    want = _per_row_table(src, ref, rows.tolist(), "nearest", "present", 1.0, lut.dtype)
    assert lut.table.tobytes() == want.tobytes()
    with pytest.raises(OptionError, match=r"band 4 onto 257\.\.260, which uint8 cannot hold"):
        LUT.from_histograms(src, ref, reference_rows=rows, dtype="uint8")


@pytest.mark.parametrize(
    "rows, words",
    [([0, 1], "one reference row"), ([0.0], "one reference row"), ([2], "0..1")],
)
def test_reference_rows_are_checked(rows, words):
    h = Histogram(np.ones((1, 4), np.int64), Binning.levels(np.uint8, 1, lo=0, hi=3))
    ref = Histogram(np.ones((2, 4), np.int64), Binning.levels(np.uint8, 2, lo=0, hi=3))
    with pytest.raises(OptionError, match=re.escape(words)):
        LUT.from_histograms(h, ref, reference_rows=np.array(rows))
