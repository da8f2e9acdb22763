"""Optimal monotone maps: the dynamic programme against a brute force over every monotone map."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from fractions import Fraction

import numpy as np
import pytest
from conftest import BlockReads, raise_if_dask_computes
from hypothesis import given, settings
from hypothesis import strategies as st

from rastermatch import LUT, band_histograms
from rastermatch.errors import (
    BandMismatchError,
    BinningMismatchError,
    InputTypeError,
    LUTFileError,
    NoValidPixelsError,
    OptionError,
)
from rastermatch.optimal import fit_multi, optimal_indices


# -- the oracle ----------------------------------------------------------------------------------
def distance(pairs, out, objective, weights=None, values=None):
    """The objective of the map ``out`` (a reference bin per source bin), exactly, from its
    definition over every reference bin (not only the candidates the programme uses)."""
    k = len(pairs)
    weights = [1] * k if weights is None else weights
    m = len(pairs[0][1])
    values = list(range(m)) if values is None else list(values)
    gaps = []
    for src, ref in pairs:
        mapped = np.bincount(out, weights=np.asarray(src), minlength=m)
        f_map = np.cumsum(mapped) / 1  # counts, exact as floats of small integers
        f_ref = np.cumsum(ref)
        n_s, n_r = int(sum(src)), int(sum(ref))
        gaps.append([Fraction(int(f_map[q]), n_s) - Fraction(int(f_ref[q]), n_r) for q in range(m)])
    per_level = [
        sum(Fraction(w) * abs(g[q]) for w, g in zip(weights, gaps, strict=True)) for q in range(m)
    ]
    if objective == "ks":
        return max(per_level)
    return sum(per_level[q] * Fraction(values[q + 1] - values[q]) for q in range(m - 1))


def brute_force(pairs, objective, weights=None, values=None, levels="present", exclude=()):
    """Every monotone map of the present source levels onto the candidates: the optimum and the
    documented choice (``"w1"``: lexicographically smallest; ``"ks"``: smallest W1, then
    lexicographically smallest), the empty source bins filled as documented."""
    src = np.array([s for s, _ in pairs])
    ref = np.array([r for _, r in pairs])
    n, m = src.shape[1], ref.shape[1]
    present = np.flatnonzero(src.any(axis=0))
    held = ref.any(axis=0)
    cands = [q for q in range(m) if (held[q] if levels == "present" else True)]
    cands = [q for q in cands if held[q] or q not in exclude]
    fill = [max([p for p in present if p <= i], default=present[0]) for i in range(n)]
    best = None
    for g in itertools.combinations_with_replacement(cands, len(present)):
        full = np.array([g[list(present).index(fill[i])] for i in range(n)])
        key = [distance(pairs, full, objective, weights, values)]
        if objective == "ks":
            key.append(distance(pairs, full, "w1", weights, values))
        key.append(g)
        if best is None or key < best[0]:
            best = (key, full)
    return best[0][0], best[1]


def dp_optimum(pairs, objective, weights=None, values=None):
    """The optimum by the dynamic programme over every (candidate, cut) cell, exactly:
    E(t, a) = gap_t d(t, a) + min_{a' >= a} E(t + 1, a') (W1), max(d, min ...) (KS)."""
    src = np.array([s for s, _ in pairs])
    ref = np.array([r for _, r in pairs])
    weights = [1] * len(pairs) if weights is None else weights
    present = np.flatnonzero(src.any(axis=0))
    cands = np.flatnonzero(ref.any(axis=0))
    values = np.arange(ref.shape[1]) if values is None else np.asarray(values)
    cs = np.concatenate([np.zeros((len(pairs), 1), int), np.cumsum(src[:, present], 1)], 1)
    cr = np.cumsum(ref, 1)[:, cands]

    def d(t, a):
        return sum(
            Fraction(int(w)) * abs(Fraction(int(cs[j, a]), int(cs[j, -1]))
                                   - Fraction(int(cr[j, t]), int(cr[j, -1])))
            for j, w in enumerate(weights)
        )  # fmt: skip

    npres, q = present.size, cands.size
    nxt = [Fraction(0)] * (npres + 1)  # min over a' >= a of E(Q, a'): E(Q, P) = 0
    for t in range(q - 2, -1, -1):
        gap = Fraction(int(values[cands[t + 1]] - values[cands[t]]))
        row = [
            gap * d(t, a) + nxt[a] if objective == "w1" else max(d(t, a), nxt[a])
            for a in range(npres + 1)
        ]
        nxt = [min(row[a:]) for a in range(npres + 1)]
    return nxt[0]


counts = st.lists(st.integers(0, 4), min_size=1, max_size=6)


@st.composite
def problems(draw, max_pairs=3):
    k = draw(st.integers(1, max_pairs))
    n = draw(st.integers(1, 6))
    m = draw(st.integers(1, 6))

    def row(size):
        c = draw(st.lists(st.integers(0, 4), min_size=size, max_size=size))
        if not any(c):
            c[draw(st.integers(0, size - 1))] = draw(st.integers(1, 4))
        return c

    return [(row(n), row(m)) for _ in range(k)]


@settings(max_examples=50, deadline=None)
@given(problems(), st.sampled_from(["ks", "w1"]))
def test_matches_brute_force(pairs, objective):
    out = optimal_indices(pairs, objective=objective)
    best, choice = brute_force(pairs, objective)
    assert distance(pairs, out, objective) == best
    assert out.tolist() == choice.tolist()


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(2, 30),
    st.integers(2, 30),
    st.sampled_from(["ks", "w1"]),
    st.integers(0, 2**32 - 1),
)
def test_reaches_the_dynamic_programme_optimum(k, n, m, objective, seed):
    """Larger grids than the brute force reaches: the map's objective is the optimum of the
    full (candidate, cut) recurrence."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(k):
        s, r = rng.integers(0, 6, n) * (rng.random(n) < 0.7), rng.integers(0, 6, m)
        s[rng.integers(n)] += 1
        r[rng.integers(m)] += 1
        pairs.append((s, r))
    weights = rng.integers(1, 4, k).tolist()
    values = np.cumsum(rng.integers(1, 5, m))
    out = optimal_indices(pairs, objective=objective, weights=weights, reference_values=values)
    best = dp_optimum(pairs, objective, weights, values)
    assert distance(pairs, out, objective, weights, values) == best


@settings(max_examples=30, deadline=None)
@given(
    problems(),
    st.sampled_from(["ks", "w1"]),
    st.lists(st.integers(0, 3), min_size=3, max_size=3),
    st.lists(st.integers(0, 5), min_size=6, max_size=6),
    st.sampled_from(["present", "all"]),
)
def test_weights_values_levels(pairs, objective, weights, steps, levels):
    """Integer weights, integer reference values with uneven gaps and levels="all" (with an
    excluded bin) stay exact: the optimum and the documented choice."""
    weights = weights[: len(pairs)]
    if not any(weights):
        weights[0] = 1
    m = len(pairs[0][1])
    values = np.cumsum(steps[:m])
    exclude = (m - 1,) if levels == "all" else ()
    out = optimal_indices(
        pairs,
        objective=objective,
        weights=weights,
        reference_values=values,
        levels=levels,
        exclude=exclude,
    )
    best, choice = brute_force(pairs, objective, weights, values, levels, exclude)
    assert distance(pairs, out, objective, weights, values) == best
    assert out.tolist() == choice.tolist()


@settings(max_examples=15, deadline=None)
@given(problems(), st.sampled_from(["ks", "w1"]), st.lists(st.floats(0.1, 3), min_size=3))
def test_float_weights_reach_the_optimum(pairs, objective, weights):
    """Fractional weights run in float64: the optimum is reached (to rounding)."""
    weights = weights[: len(pairs)]
    values = np.linspace(0.0, 1.5, len(pairs[0][1])) ** 2
    out = optimal_indices(pairs, objective=objective, weights=weights, reference_values=values)
    best, _ = brute_force(pairs, objective, weights, values)
    assert float(distance(pairs, out, objective, weights, values)) == pytest.approx(
        float(best), abs=1e-12
    )


# -- cases ---------------------------------------------------------------------------------------
def test_issue_example_reaches_ks_zero():
    """Levels 0..9 with one pixel each onto [1 at 0, 9 at 1]: the nearest rule gives KS 0.4,
    the optimal map 0."""
    from rastermatch.lut import nearest_cdf_indices

    pairs = [(np.ones(10, dtype=np.int64), np.array([1, 9]))]
    nearest = nearest_cdf_indices(*pairs[0])
    assert distance(pairs, nearest, "ks") == Fraction(2, 5)
    for objective in ("ks", "w1"):
        out = optimal_indices(pairs, objective=objective)
        assert out.tolist() == [0] + [1] * 9
        assert distance(pairs, out, "ks") == 0


def test_empty_bins_take_their_neighbours():
    out = optimal_indices([([0, 0, 3, 0, 0, 5, 0], [0, 4, 0, 4, 0])])
    assert out.tolist() == [1, 1, 1, 1, 1, 3, 3]
    assert np.all(np.diff(out) >= 0)


def test_one_candidate_takes_everything():
    assert optimal_indices([([1, 2, 3], [0, 7, 0])]).tolist() == [1, 1, 1]


def test_huge_counts_stay_exact():
    """Totals whose common denominator passes int64 run in float64 and still find the map."""
    big = 2**40 + 1
    pairs = [(np.array([big, big]), np.array([big - 1, 0, big + 1]))]
    for objective in ("ks", "w1"):
        assert optimal_indices(pairs, objective=objective).tolist() == [0, 2]


def test_self_match_is_the_identity():
    rng = np.random.default_rng(3)
    h = rng.integers(0, 50, 300)
    h[h < 10] = 0
    for objective in ("ks", "w1"):
        out = optimal_indices([(h, h)], objective=objective)
        present = np.flatnonzero(h)
        assert out[present].tolist() == present.tolist()


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"pairs": []}, InputTypeError, "non-empty"),
        ({"pairs": [([1, 2], [1])], "objective": "l2"}, OptionError, "objective"),
        ({"pairs": [([1, 2], [1])], "levels": "some"}, OptionError, "levels"),
        ({"pairs": [([1, 2], [1]), ([1], [1])]}, OptionError, "pair 1's source"),
        ({"pairs": [([1, 2], [1]), ([1, 1], [1, 1])]}, OptionError, "pair 1's reference"),
        ({"pairs": [([0, 0], [1])]}, NoValidPixelsError, "source of pair 0"),
        ({"pairs": [([1, -1], [1])]}, InputTypeError, "negative"),
        ({"pairs": [([1.5, 1], [1])]}, InputTypeError, "whole"),
        ({"pairs": [([1, 1], [1])], "weights": [1, 2]}, OptionError, "weights"),
        ({"pairs": [([1, 1], [1])], "weights": [0]}, OptionError, "all zero"),
        ({"pairs": [([1, 1], [1, 1])], "reference_values": [1, 0]}, OptionError, "decrease"),
        ({"pairs": [([1, 1], [1, 1])], "reference_values": [1]}, OptionError, "reference_v"),
        ({"pairs": [(1, [1, 1])]}, InputTypeError, "1-D"),
    ],
)
def test_bad_input_is_refused(kwargs, error, text):
    with pytest.raises(error, match=text):
        optimal_indices(**kwargs)


# -- fit_multi -----------------------------------------------------------------------------------
def scenes(rng, k, shape=(2, 12, 10), dtype=np.uint8, top=40):
    """k (source, reference) pairs of small random scenes, the sources darker."""
    out = []
    for _ in range(k):
        src = rng.integers(0, top, shape).astype(dtype)
        ref = (rng.integers(0, top, shape) // 3 * 3 + 5).astype(dtype)
        out.append((src, ref))
    return out


@pytest.mark.parametrize("objective", ["ks", "w1"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_one_pair_is_the_single_pair_rule(rng, objective, dtype):
    """k = 1 gives LUT.from_histograms(method="optimal") exactly, for levels and float tables."""
    [(src, ref)] = scenes(rng, 1, dtype=dtype)
    lut = fit_multi([(src, ref)], objective=objective, bins=64)
    h_src, h_ref = band_histograms(src, bins=64), band_histograms(ref, bins=64)
    single = LUT.from_histograms(h_src, h_ref, method="optimal", objective=objective)
    assert lut.kind == single.kind
    np.testing.assert_array_equal(lut.table, single.table)
    assert (lut.method, lut.objective, lut.dtype) == ("optimal", objective, single.dtype)
    assert fit_multi([(h_src, h_ref)], objective=objective).table.tolist() == lut.table.tolist()


@pytest.mark.parametrize("objective", ["ks", "w1"])
def test_pairs_share_one_monotone_map(rng, objective):
    """Every row of the table is the reference level optimal_indices picks for the pairs'
    counts of that row; arrays and their histograms give the same LUT."""
    pairs = scenes(rng, 2) + scenes(rng, 1, shape=(2, 5, 7))  # overlaps of any shape
    weights = [1, 2, 3]
    lut = fit_multi(pairs, objective=objective, weights=weights)
    hists = [(band_histograms(s), band_histograms(r)) for s, r in pairs]
    assert lut.table.shape == (2, 256)
    for b in range(2):
        q = optimal_indices(
            [(s.counts[b], r.counts[b]) for s, r in hists], objective=objective, weights=weights
        )
        assert lut.table[b].tolist() == q.tolist()  # levels: the bin is the level
        assert np.all(np.diff(lut.table[b].astype(int)) >= 0)
    again = fit_multi(hists, objective=objective, weights=weights)
    np.testing.assert_array_equal(again.table, lut.table)
    assert lut.bands == (1, 2)


def test_issue_example_through_fit_multi():
    src = np.arange(10, dtype=np.uint8)[None]
    ref = np.array([[0] + [1] * 9], dtype=np.uint8)
    for k in (1, 2):
        lut = fit_multi([(src, ref)] * k, objective="ks")
        assert lut.table[0, :10].tolist() == [0] + [1] * 9
        assert lut.apply(src).tolist() == ref.tolist()


def test_float_pairs_share_one_binning(rng):
    """Float sources of different ranges are binned over their union, row by row; the table is
    monotone and every output is a reference value."""
    pairs = [
        (rng.normal(0, 1, (2, 8, 8)), rng.normal(10, 2, (2, 8, 8)).round(1)),
        (rng.normal(3, 1, (2, 8, 8)), rng.normal(12, 2, (2, 8, 8)).round(1)),
    ]
    lut = fit_multi(pairs, bins=32)
    assert lut.kind == "interval" and lut.table.shape == (2, 32, 4)
    refs = np.concatenate([r.ravel() for _, r in pairs])
    for b in range(2):
        outs = lut.table[b, :, 2]
        assert np.all(np.diff(outs) >= 0)
        assert np.isin(outs, refs).all()
        lo = min(s[b].min() for s, _ in pairs)
        assert lut.source_binning.lo[b] == lo


def test_dask_pairs_are_read_once(rng):
    da = pytest.importorskip("dask.array")
    reads = BlockReads()
    pairs = [
        tuple(reads.count(da.from_array(x, chunks=(1, 6, 5))) for x in pair)
        for pair in scenes(rng, 2)
    ]
    with raise_if_dask_computes(1):
        lut = fit_multi(pairs)
    assert reads.n == 2 * 2 * 2 * 4  # pairs x sides x blocks, once
    numpy = fit_multi([tuple(np.asarray(x) for x in pair) for pair in pairs])
    np.testing.assert_array_equal(lut.table, numpy.table)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("objective", ["ks", "w1"])
@pytest.mark.parametrize("weights", [None, "int", "float"])
def test_several_pairs_save_load_and_reapply_identically(rng, tmp_path, k, objective, weights):
    """The document records every pair and weight; loading rebuilds the same table with
    fit_multi, applies identically, and writes the same bytes again."""
    w = {None: None, "int": [3, 1, 2][:k], "float": [0.25, 1.5, 1e-3][:k]}[weights]
    pairs = scenes(rng, k)
    lut = fit_multi(pairs, objective=objective, weights=w, nodata=0)
    assert len(lut.pairs) == k and lut.source_hist is None
    path = lut.save(tmp_path / "lut.json")
    doc = json.loads(path.read_text())
    assert doc["recipe"] == {"method": "optimal", "levels": "present", "objective": objective}
    assert "source_histogram" not in doc and len(doc["pairs"]) == k
    assert [p["weight"] for p in doc["pairs"]] == [float(x) for x in (w or [1] * k)]
    back = LUT.load(path)
    np.testing.assert_array_equal(back.table, lut.table)
    assert (back.method, back.objective, back.dtype, back.bands) == (
        lut.method, lut.objective, lut.dtype, lut.bands,
    )  # fmt: skip
    assert (back.nodata, back.out_nodata) == (lut.nodata, lut.out_nodata)
    for (s, r, wj), (s2, r2, wj2) in zip(lut.pairs, back.pairs, strict=True):
        np.testing.assert_array_equal(s.counts, s2.counts)
        np.testing.assert_array_equal(r.counts, r2.counts)
        assert wj == wj2
    src = pairs[0][0]
    np.testing.assert_array_equal(back.apply(src), lut.apply(src))
    assert back.save(tmp_path / "again.json").read_bytes() == path.read_bytes()


def test_several_float_pairs_save_load_and_reapply_identically(rng, tmp_path):
    """Interval tables (uniform binnings, with their bin statistics) rebuild exactly too."""
    pairs = [
        (rng.normal(0, 1, (2, 8, 8)), rng.normal(10, 2, (2, 8, 8)).round(1)),
        (rng.normal(3, 1, (2, 8, 8)), rng.normal(12, 2, (2, 8, 8)).round(1)),
    ]
    lut = fit_multi(pairs, objective="ks", weights=[2, 0.5], bins=32)
    back = LUT.load(lut.save(tmp_path / "lut.json"))
    assert back.kind == "interval"
    np.testing.assert_array_equal(back.table, lut.table)
    np.testing.assert_array_equal(back.apply(pairs[1][0]), lut.apply(pairs[1][0]))


def test_one_pair_writes_the_plain_optimal_document(rng):
    """k = 1 is LUT.from_histograms' LUT, so its document is that of method 'optimal', byte
    for byte, with no pairs."""
    [(src, ref)] = scenes(rng, 1)
    lut = fit_multi([(src, ref)], objective="ks")
    single = LUT.from_histograms(
        band_histograms(src), band_histograms(ref), method="optimal", objective="ks"
    )
    assert lut.pairs is None
    assert json.dumps(lut.to_dict()) == json.dumps(single.to_dict())
    assert "pairs" not in lut.to_dict()


def test_a_hand_made_multi_lut_is_not_written(rng, tmp_path):
    """What a reader would refuse (one pair, a negative weight, a blend) is not written."""
    lut = fit_multi(scenes(rng, 2))
    (s, r, _), pair = lut.pairs
    for pairs, match in [
        (lut.pairs[:1], "its pairs are 1 pairs"),
        (((s, r, -1.0), pair), "pair 0 is not a"),
        (((s, r, float("nan")), pair), "pair 0 is not a"),
        (((s, r), pair), "pair 0 is not a"),
        (((s, r, 0.0), (*pair[:2], 0)), "weights of its pairs are all zero"),
    ]:
        with pytest.raises(LUTFileError, match=match):
            dataclasses.replace(lut, pairs=pairs).save(tmp_path / "lut.json")
    with pytest.raises(LUTFileError, match="method 'optimal' without a blend"):
        dataclasses.replace(lut, proportion=0.5).save(tmp_path / "lut.json")
    assert os.listdir(tmp_path) == []


def test_fit_multi_refusals(rng):
    (s, r), (s2, r2) = scenes(rng, 2)
    with pytest.raises(InputTypeError, match="pair 1 mixes"):
        fit_multi([(s, r), (band_histograms(s2), band_histograms(r2))])
    with pytest.raises(InputTypeError, match="non-empty"):
        fit_multi([])
    with pytest.raises(BandMismatchError, match="pair 1"):
        fit_multi([(s, r), (s2[:1], r2[:1])])
    with pytest.raises(BinningMismatchError, match="source of pair 1"):
        fit_multi([(s, r), (s2.astype(np.uint16), r2)])
    with pytest.raises(OptionError, match="weights"):
        fit_multi([(s, r), (s2, r2)], weights=[1, -1])
    with pytest.raises(OptionError, match="objective"):
        fit_multi([(s, r)], objective="l1")
    empty = np.zeros_like(s2)
    with pytest.raises(NoValidPixelsError, match="pair 1"):
        fit_multi([(s, r), (empty, r2)], nodata=0)


def test_dataarrays_and_nodata(rng):
    """DataArray pairs: rows labelled by the first source's bands, nodata left out of the
    statistics and mapped to the output nodata."""
    xr = pytest.importorskip("xarray")
    (s, r), (s2, r2) = scenes(rng, 2)
    s = np.maximum(s, 1)
    s[:, 0, :] = 0  # nodata lines
    coords = {"band": ["red", "nir"]}
    src = xr.DataArray(s, dims=("band", "y", "x"), coords=coords)
    ref = xr.DataArray(r, dims=("band", "y", "x"), coords=coords)
    lut = fit_multi([(src, ref), (s2, r2)], nodata=0, out_nodata=255)
    assert lut.bands == ("red", "nir")
    assert (lut.nodata, lut.out_nodata) == (0, 255)
    out = lut.apply(src)
    assert np.all(out.values[:, 0, :] == 255)
    assert np.all(out.values[:, 1:, :] != 255)
    clean = fit_multi([(s[:, 1:], r), (s2, r2)], nodata=0)  # the same pixels without nodata
    assert clean.table[:, 1:].tolist() == lut.table[:, 1:].tolist()


def test_several_pairs_ks_is_the_largest_summed_gap_not_the_sum_of_per_pair_ks():
    """The documented meaning of "ks" for several pairs: the map minimises the largest summed
    gap over the reference levels (the brute force's minimum), which need not minimise the sum
    of the per-pair KS distances (module docstring's example: 17/20 where 1/2 is reachable);
    with distinct reference values it is the W1 map."""
    pairs = [([0, 1, 1, 2], [0, 0, 0, 3]), ([1, 2, 1, 0], [1, 2, 2, 0])]
    out = optimal_indices(pairs, objective="ks")
    best, _ = brute_force(pairs, "ks")
    assert distance(pairs, out, "ks") == best
    per_pair = sum(distance([p], out, "ks") for p in pairs)
    assert per_pair == Fraction(17, 20)
    reachable = [0, 1, 3, 3]  # summed per-pair KS 1/2
    assert sum(distance([p], np.array(reachable), "ks") for p in pairs) == Fraction(1, 2)
    assert out.tolist() == optimal_indices(pairs, objective="w1").tolist()


def test_decimal_weights_decide_ties_as_their_integer_ratio():
    """[0.3, 0.1] is 3/10 and 1/10: the same exact integer arithmetic, and the same tie rule,
    as [3, 1] (in float64 the two maps of equal W1 7/8 were told apart by rounding)."""
    pairs = [([3, 0, 3, 0], [4, 1, 3, 0]), ([2, 2, 1, 0], [3, 3, 2, 2])]
    exact = optimal_indices(pairs, weights=[3, 1])
    assert optimal_indices(pairs, weights=[0.3, 0.1]).tolist() == exact.tolist()
    assert optimal_indices(pairs, weights=[1.5, 0.5]).tolist() == exact.tolist()
    _, lex_smallest = brute_force(pairs, "w1", [3, 1])
    assert exact.tolist() == lex_smallest.tolist()
