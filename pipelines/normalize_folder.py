"""Normalize every scene of a folder to one reference scene, writing Zarr: an example script.

A thin layer over :func:`rastermatch.pipeline.normalize_files`, which does the work (and which
``rastermatch normalize INPUT_DIR --reference REFERENCE -o OUTPUT_DIR/ --format zarr`` runs
from the command line): every GeoTIFF and Zarr store directly inside INPUT_DIR (the reference
left out) is matched to REFERENCE in one job, with one statistics pass over all of them, and
written to ``OUTPUT_DIR/<scene name>.zarr`` with its provenance. Every output is checked before
any work; a scene that cannot be matched (a band count that differs from the reference's, an
existing output without ``--overwrite``) stops the job before anything is written, with one
line naming it, and the exit status is 1. One line per scene then reports the worst band's
Kolmogorov-Smirnov distance to the reference before and after.

Run::

    python pipelines/normalize_folder.py INPUT_DIR REFERENCE OUTPUT_DIR [--nodata 0] [--overwrite]

for example, on the sample scenes::

    python pipelines/normalize_folder.py data data/arrnorm_ref_adjusted2target.tif \\
        /tmp/normalized --nodata 0 --bands 1,2,3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rastermatch import RastermatchError
from rastermatch.pipeline import normalize_files


def band_list(text: str) -> tuple[int, ...]:
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a band list like 1,2,3") from None
    if any(b < 1 for b in bands):
        raise argparse.ArgumentTypeError(f"{text!r}: band numbers count from 1")
    return bands


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_dir", type=Path, help="folder of scenes (GeoTIFF or Zarr)")
    parser.add_argument("reference", type=Path, help="the reference scene")
    parser.add_argument("output_dir", type=Path, help="folder for the Zarr outputs (created)")
    parser.add_argument("--nodata", type=float, help="scene nodata (default: each file's own)")
    parser.add_argument("--reference-nodata", type=float, help="reference nodata")
    parser.add_argument("--bands", type=band_list, help="bands to match, e.g. 1,2,3")
    parser.add_argument("--method", choices=("nearest", "interp"), default="nearest")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = normalize_files(
            args.input_dir,
            args.reference,
            f"{args.output_dir}/",  # a folder: one output per scene
            format="zarr",
            method=args.method,
            nodata=args.nodata,
            reference_nodata=args.reference_nodata,
            bands=args.bands,
            overwrite=args.overwrite,
        )
    except RastermatchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    width = max(len(s.name) for s in result.sources)
    for source, output in zip(result.sources, result.outputs, strict=True):
        rows = [r for r in result.quality if r["source"] == source.name]
        ks_before = max(r["ks_before"] for r in rows)
        ks_after = max(r["ks_after"] for r in rows)
        print(
            f"{source.name:<{width}}  KS {ks_before:.4f} -> {ks_after:.4f} (worst band)  "
            f"-> {output}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
