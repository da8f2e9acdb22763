"""Normalize every scene of a folder to one reference scene, writing Zarr.

Each GeoTIFF (``*.tif``, ``*.tiff``) and Zarr store (``*.zarr``) directly inside INPUT_DIR is
histogram-matched to REFERENCE and written to ``OUTPUT_DIR/<scene name>.zarr``, with its
provenance (inputs, options, quality, LUT). One line per scene reports the worst band's
Kolmogorov-Smirnov distance to the reference before and after. A scene that fails (a band count
that differs from the reference's, an existing output without ``--overwrite``) is reported and
skipped; the exit status is 1 when any scene failed.

Run::

    python pipelines/normalize_folder.py INPUT_DIR REFERENCE OUTPUT_DIR [--nodata 0] [--overwrite]

for example, on the sample scenes::

    python pipelines/normalize_folder.py data data/arrnorm_ref_adjusted2target.tif \\
        /tmp/normalized --nodata 0 --bands 1,2,3

Every scene is one :func:`rastermatch.pipeline.match_files` job: two reads of the scene and one
of the reference, on dask's threads (or on the cluster of an active ``dask.distributed``
client).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rastermatch import RastermatchError
from rastermatch.pipeline import match_files

SUFFIXES = (".tif", ".tiff", ".zarr")


def scenes_in(folder: Path, reference: Path) -> list[Path]:
    """The GeoTIFFs and Zarr stores directly inside ``folder``, the reference left out."""
    found = [
        p
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
    ]
    return [p for p in found if p.resolve() != reference.resolve()]


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
    if not args.input_dir.is_dir():
        sys.exit(f"error: {args.input_dir} is not a folder")
    if args.output_dir.resolve() == args.input_dir.resolve():
        sys.exit("error: write the outputs to another folder than the inputs")
    scenes = scenes_in(args.input_dir, args.reference)
    stems = [s.stem for s in scenes]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:  # scene.tif and scene.zarr would both be written to scene.zarr
        sys.exit(f"error: several scenes would be written to the same output: {clashes}")
    if not scenes:
        sys.exit(f"error: no .tif, .tiff or .zarr scenes in {args.input_dir}")
    args.output_dir.mkdir(parents=True, exist_ok=True)

    failed = 0
    width = max(len(s.name) for s in scenes)
    for scene in scenes:
        output = args.output_dir / f"{scene.stem}.zarr"
        try:
            result = match_files(
                scene,
                args.reference,
                output,
                method=args.method,
                nodata=args.nodata,
                reference_nodata=args.reference_nodata,
                bands=args.bands,
                overwrite=args.overwrite,
            )
        except RastermatchError as error:
            failed += 1
            print(f"{scene.name:<{width}}  FAILED: {error}")
            continue
        ks_before = max(row["ks_before"] for row in result.quality)
        ks_after = max(row["ks_after"] for row in result.quality)
        print(
            f"{scene.name:<{width}}  KS {ks_before:.4f} -> {ks_after:.4f} (worst band)  "
            f"-> {result.output}"
        )
    if failed:
        print(f"{failed} of {len(scenes)} scenes failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
