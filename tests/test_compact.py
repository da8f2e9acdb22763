"""Compact per-block counts of the dask histogram path, and :func:`occupied_range`."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rastermatch.errors import InputTypeError, OptionError
from rastermatch.histogram import occupied_range

INT_DTYPES = [np.int8, np.uint8, np.int16, np.uint16]


def range_oracle(x: np.ndarray, mask=None, nodata=None):
    valid = np.ones(x.shape, dtype=bool)
    if mask is not None:
        valid &= ~np.broadcast_to(mask, x.shape)
    if nodata is not None:
        valid &= x != nodata
    return (int(x[valid].min()), int(x[valid].max())) if valid.any() else None


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_occupied_range_is_the_valid_min_and_max(data):
    dtype = np.dtype(data.draw(st.sampled_from(INT_DTYPES)))
    info = np.iinfo(dtype)
    shape = data.draw(st.sampled_from([(5,), (3, 4), (2, 3, 5), (2, 1, 2, 3)]))
    lo = data.draw(st.integers(int(info.min), int(info.max)))
    hi = data.draw(st.integers(lo, min(lo + 40, int(info.max))))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    x = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    nodata = data.draw(st.one_of(st.none(), st.sampled_from([int(x.flat[0]), lo, hi])))
    mask = None
    if data.draw(st.booleans()):
        mshape = data.draw(st.sampled_from([x.shape, x.shape[-2:]]))
        mask = rng.random(mshape) < data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    assert occupied_range(x, mask, nodata=nodata) == range_oracle(x, mask, nodata)


def test_occupied_range_refuses_what_is_not_integer_data():
    with pytest.raises(InputTypeError, match="integer data"):
        occupied_range(np.zeros(3, np.float32))
    with pytest.raises(OptionError, match="mask has shape"):
        occupied_range(np.zeros((2, 3), np.uint8), np.zeros((3, 2), bool))
    assert occupied_range(np.zeros((0, 3), np.uint8)) is None
