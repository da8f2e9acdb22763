"""The ``.rm`` accessor on DataArrays: forwarding only, no logic of its own.

Examples
--------
>>> import rastermatch
>>> src = rastermatch.open_raster("data/arrnorm_target.tif")
>>> ref = rastermatch.open_raster("data/arrnorm_ref_adjusted2target.tif")
>>> src.rm.match(ref, nodata=0).dtype.name
'uint16'
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from .histogram import Histogram, band_histograms
from .lut import LUT
from .match import equalize, fit_lut, match_histograms

__all__ = ["RastermatchAccessor"]


@xr.register_dataarray_accessor("rm")
class RastermatchAccessor:
    """``da.rm.match(reference)``, ``.histograms()``, ``.equalize()``, ``.fit(reference)`` and
    ``.apply(lut)``: the functions of the same names with this DataArray as first argument."""

    def __init__(self, obj: xr.DataArray) -> None:
        self._obj = obj

    def histograms(self, **kwargs: Any) -> Histogram:
        """:func:`rastermatch.band_histograms` of this DataArray."""
        return band_histograms(self._obj, **kwargs)

    def match(self, reference: Any, **kwargs: Any) -> xr.DataArray:
        """:func:`rastermatch.match_histograms` of this DataArray onto ``reference``."""
        return match_histograms(self._obj, reference, **kwargs)

    def fit(self, reference: Any, **kwargs: Any) -> LUT:
        """:func:`rastermatch.fit_lut` from this DataArray to ``reference``."""
        return fit_lut(self._obj, reference, **kwargs)

    def equalize(self, **kwargs: Any) -> xr.DataArray:
        """:func:`rastermatch.equalize` of this DataArray."""
        return equalize(self._obj, **kwargs)

    def apply(self, lut: LUT, **kwargs: Any) -> xr.DataArray:
        """:meth:`rastermatch.LUT.apply` to this DataArray."""
        return lut.apply(self._obj, **kwargs)
