"""The ``.rm`` accessor on DataArrays and Datasets: forwarding only, no logic of its own.

One base class serves both: every method passes the object on as the first argument of the
function of the same name, which accepts either.

Examples
--------
>>> import rastermatch
>>> src = rastermatch.open_raster("data/arrnorm_target.tif")
>>> ref = rastermatch.open_raster("data/arrnorm_ref_adjusted2target.tif")
>>> src.rm.match(ref, nodata=0).dtype.name
'uint16'
>>> ds = src.to_dataset("band").rename({1: "blue", 2: "green", 3: "red", 4: "nir"})
>>> sorted(ds.rm.match(ref.sel(band=[1, 2, 3, 4]), nodata=0).data_vars)
['blue', 'green', 'nir', 'red']
"""

from __future__ import annotations

from typing import Any

import xarray as xr

from .balance import balance_detectors, fit_detectors
from .histogram import Histogram, band_histograms
from .lut import LUT
from .match import equalize, fit_lut, match_histograms

__all__ = ["DataArrayAccessor", "DatasetAccessor", "RastermatchAccessor"]


class RastermatchAccessor:
    """``obj.rm.match(reference)``, ``.histograms()``, ``.equalize()``, ``.fit(reference)``,
    ``.apply(lut)``, ``.balance_detectors(detectors=16)`` and ``.fit_detectors(...)``: the
    functions of the same names with this DataArray or Dataset as first argument."""

    def __init__(self, obj: xr.DataArray | xr.Dataset) -> None:
        self._obj = obj

    def histograms(self, **kwargs: Any) -> Histogram:
        """:func:`rastermatch.band_histograms` of this object."""
        return band_histograms(self._obj, **kwargs)

    def match(self, reference: Any, **kwargs: Any) -> Any:
        """:func:`rastermatch.match_histograms` of this object onto ``reference``."""
        return match_histograms(self._obj, reference, **kwargs)

    def fit(self, reference: Any, **kwargs: Any) -> LUT:
        """:func:`rastermatch.fit_lut` from this object to ``reference``."""
        return fit_lut(self._obj, reference, **kwargs)

    def equalize(self, **kwargs: Any) -> Any:
        """:func:`rastermatch.equalize` of this object."""
        return equalize(self._obj, **kwargs)

    def apply(self, lut: LUT, **kwargs: Any) -> Any:
        """:meth:`rastermatch.LUT.apply` to this object."""
        return lut.apply(self._obj, **kwargs)

    def balance_detectors(self, **kwargs: Any) -> Any:
        """:func:`rastermatch.balance_detectors` of this object (destriping)."""
        return balance_detectors(self._obj, **kwargs)

    def fit_detectors(self, **kwargs: Any) -> LUT:
        """:func:`rastermatch.fit_detectors` of this object: the per-detector LUT."""
        return fit_detectors(self._obj, **kwargs)


@xr.register_dataarray_accessor("rm")
class DataArrayAccessor(RastermatchAccessor):
    """``DataArray.rm``: see :class:`RastermatchAccessor`."""


@xr.register_dataset_accessor("rm")
class DatasetAccessor(RastermatchAccessor):
    """``Dataset.rm``: see :class:`RastermatchAccessor`; the variables are the bands."""
