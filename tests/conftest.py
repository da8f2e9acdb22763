"""Shared fixtures: sample data paths and a scheduler that fails if anything computes."""

from __future__ import annotations

import contextlib
from pathlib import Path

import dask
import numpy as np
import pytest

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


class CountingScheduler:
    """A dask scheduler that counts how often it is asked to compute (flox's idea)."""

    def __init__(self, max_computes: int = 0) -> None:
        self.total = 0
        self.max_computes = max_computes

    def __call__(self, dsk, keys, **kwargs):
        self.total += 1
        if self.total > self.max_computes:
            raise RuntimeError(f"Too many computes: {self.total} > {self.max_computes}")
        return dask.get(dsk, keys, **kwargs)


@contextlib.contextmanager
def raise_if_dask_computes(max_computes: int = 0):
    """Fail when the block computes more than ``max_computes`` times."""
    scheduler = CountingScheduler(max_computes)
    with dask.config.set(scheduler=scheduler):
        yield scheduler


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)
