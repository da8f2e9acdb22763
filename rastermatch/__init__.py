"""rastermatch: histogram matching for satellite scenes of any size.

The data flow, one module per step::

    io.open_raster -> histogram.band_histograms -> lut.LUT.from_histograms
        -> apply.apply_lut -> io.write_raster

``match_histograms`` and ``equalize`` compose the steps, ``balance_detectors`` balances the
detectors of one scanner (destriping) with the same steps; importing the package registers the
``.rm`` accessor on xarray DataArrays.
"""

__version__ = "0.1.0"

from . import accessor as _accessor  # noqa: F401  (registers DataArray.rm and Dataset.rm)
from .balance import balance_detectors, fit_detectors
from .errors import (
    BandMismatchError,
    BinningMismatchError,
    DimensionError,
    GeometryError,
    GridMismatchError,
    HistogramFileError,
    InputTypeError,
    LUTFileError,
    MissingDependencyError,
    NodataConflictError,
    NodataReplacedWarning,
    NotComputedError,
    NoValidPixelsError,
    OptionError,
    OutputExistsError,
    OverlapWarning,
    RastermatchError,
    RastermatchWarning,
    RasterReadError,
    RasterWriteError,
    StaleTemporaryWarning,
    UnsupportedDtypeError,
)
from .histogram import Binning, Histogram, band_histograms, band_ranges
from .io import open_raster, read_provenance, write_raster
from .lut import LUT, nearest_cdf_indices
from .match import MatchOptions, equalize, fit_lut, match_histograms
from .metrics import (
    destripe_quality,
    detector_profile,
    format_quality_table,
    ks_distance,
    matched_histogram,
    quality_table,
    stripe_power,
    wasserstein_distance,
)
from .optimal import fit_multi
from .specify import specify_exact

__all__ = [
    "LUT",
    "BandMismatchError",
    "Binning",
    "BinningMismatchError",
    "DimensionError",
    "GeometryError",
    "GridMismatchError",
    "Histogram",
    "HistogramFileError",
    "InputTypeError",
    "LUTFileError",
    "MatchOptions",
    "MissingDependencyError",
    "NoValidPixelsError",
    "NotComputedError",
    "OptionError",
    "NodataConflictError",
    "NodataReplacedWarning",
    "OutputExistsError",
    "OverlapWarning",
    "RasterReadError",
    "RasterWriteError",
    "RastermatchError",
    "RastermatchWarning",
    "StaleTemporaryWarning",
    "UnsupportedDtypeError",
    "__version__",
    "band_histograms",
    "balance_detectors",
    "band_ranges",
    "destripe_quality",
    "detector_profile",
    "equalize",
    "fit_detectors",
    "fit_lut",
    "fit_multi",
    "format_quality_table",
    "ks_distance",
    "match_histograms",
    "matched_histogram",
    "nearest_cdf_indices",
    "open_raster",
    "quality_table",
    "read_provenance",
    "specify_exact",
    "stripe_power",
    "wasserstein_distance",
    "write_raster",
]
