"""Make ``data/striped_L7_ETMs.tif``: the bundled Landsat 7 scene with injected detector stripes.

Landsat 7 ETM+ images a band with 16 detectors, one scan line each per sweep, so line ``i`` of
a band comes from detector ``i mod 16``. This script gives every (band, detector) its own
response and applies it to ``data/stars_L7_ETMs.tif`` (6 bands, 352 x 349 uint8, values
unchanged from the R package stars):

    out = clip(round(255 * ((gain * v + offset) / 255) ** gamma), 0, 255)

with ``gain`` in [0.85, 1.15], ``offset`` in [-12, 12] and ``gamma`` in [0.85, 1.2] drawn per
(band, detector) from ``numpy.random.default_rng(1979)`` (Horn & Woodham's year), and one dead
low level: detector 5 of every band reads every level up to 40 of the scene as one level, the
response of a detector whose low end is dead. Every map is non-decreasing, so the stripes are
exactly what per-detector histogram matching undoes (up to the levels the clipping merged).

Georeferencing (CRS, transform), layout (stripped, pixel-interleaved, DEFLATE) and tags are
copied from the source; the output is byte-for-byte the same on every run. Run from the
repository root::

    python pipelines/make_striped_sample.py            # writes data/striped_L7_ETMs.tif
    python pipelines/make_striped_sample.py --check    # verifies the bundled file instead
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "data" / "stars_L7_ETMs.tif"
OUTPUT = ROOT / "data" / "striped_L7_ETMs.tif"
DETECTORS = 16
DEAD_DETECTOR = 5  # the detector with the dead low end
DEAD_BELOW = 40  # scene levels <= this read as one level on that detector
SEED = 1979


def responses(nbands: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (band, detector) gain, offset and gamma, each ``(nbands, DETECTORS)``."""
    rng = np.random.default_rng(SEED)
    gain = rng.uniform(0.85, 1.15, (nbands, DETECTORS))
    offset = rng.uniform(-12.0, 12.0, (nbands, DETECTORS))
    gamma = rng.uniform(0.85, 1.2, (nbands, DETECTORS))
    return gain, offset, gamma


def level_maps(nbands: int) -> np.ndarray:
    """The response of every (band, detector) as a table over the 256 uint8 levels:
    ``(nbands, DETECTORS, 256)`` uint8, non-decreasing along the last axis."""
    gain, offset, gamma = responses(nbands)
    v = np.arange(256, dtype=np.float64)
    lin = np.clip(gain[..., None] * v + offset[..., None], 0.0, 255.0)
    out = np.rint(255.0 * (lin / 255.0) ** gamma[..., None])
    out[:, DEAD_DETECTOR, : DEAD_BELOW + 1] = out[:, DEAD_DETECTOR, DEAD_BELOW][:, None]
    maps = np.clip(out, 0, 255).astype(np.uint8)
    assert (np.diff(maps.astype(np.int16), axis=-1) >= 0).all()
    return maps


def striped(data: np.ndarray) -> np.ndarray:
    """``data`` ``(band, y, x)`` uint8 seen through the 16 detectors (line ``i``: ``i mod 16``)."""
    maps = level_maps(data.shape[0])
    detector = np.arange(data.shape[1]) % DETECTORS
    band = np.arange(data.shape[0])[:, None, None]
    return maps[band, detector[None, :, None], data]


def make(output: Path) -> None:
    with rasterio.open(SOURCE) as src:
        profile = src.profile
        tags = src.tags()
        data = src.read()
    if data.dtype != np.uint8:
        raise SystemExit(f"{SOURCE} is {data.dtype}, expected uint8")
    profile.update(compress="deflate", predictor=2)
    with rasterio.open(output, "w", **profile) as dst:
        dst.write(striped(data))
        dst.update_tags(**tags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify the bundled file")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    if not args.check:
        make(args.output)
        print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes)")
        return 0
    with rasterio.open(SOURCE) as src, rasterio.open(args.output) as got:
        same_grid = src.crs == got.crs and src.transform == got.transform
        same = same_grid and np.array_equal(striped(src.read()), got.read())
    print(f"{args.output}: {'matches' if same else 'DIFFERS FROM'} the script's output")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
