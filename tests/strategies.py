"""Hypothesis strategies: small histograms rich in ties and empty levels, random chunkings."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


@st.composite
def counts(draw, *, min_size: int = 1, max_size: int = 12, max_count: int = 6) -> np.ndarray:
    """Counts with many zeros and repeated values, at least one pixel."""
    n = draw(st.integers(min_size, max_size))
    values = draw(
        st.lists(
            st.one_of(st.just(0), st.integers(0, max_count)),
            min_size=n,
            max_size=n,
        )
    )
    c = np.array(values, dtype=np.int64)
    if c.sum() == 0:
        c[draw(st.integers(0, n - 1))] = draw(st.integers(1, max_count))
    return c


@st.composite
def huge_counts(draw, *, size: int = 6) -> np.ndarray:
    """Counts whose totals pass 10**12, so that int64 products of cumulative counts overflow.

    Scaled copies of small counts keep their ties; a small jitter breaks some of them.
    """
    base = draw(counts(min_size=size, max_size=size, max_count=4))
    scale = draw(st.sampled_from([10**12 + 1, 3 * 10**12 + 7, 7 * 10**12]))
    jitter = draw(st.lists(st.integers(0, 2), min_size=size, max_size=size))
    return base * scale + np.array(jitter, dtype=np.int64) * draw(st.sampled_from([0, 1]))


def chunks_for(draw, n: int) -> tuple[int, ...]:
    """A random chunking of a length-``n`` axis."""
    sizes = []
    left = n
    while left > 0:
        size = draw(st.integers(1, left))
        sizes.append(size)
        left -= size
    return tuple(sizes)


@st.composite
def chunkings(draw, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    return tuple(chunks_for(draw, n) for n in shape)
