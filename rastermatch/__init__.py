"""rastermatch: histogram matching for satellite scenes of any size."""

__version__ = "0.1.0"
