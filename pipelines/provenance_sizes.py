"""How much the provenance costs a reader: header sizes of a match written as GeoTIFF, COG and Zarr.

Run by hand from a source checkout::

    python pipelines/provenance_sizes.py                      # the 4-band uint16 arrnorm pair
    python pipelines/provenance_sizes.py SOURCE REFERENCE [--nodata N]

For each output it prints what every open of the file reads before the pixels: the GDAL
metadata XML of a GeoTIFF (TIFF tag 42112, where the ``RASTERMATCH`` domain lives) and the
offset of its first tile (overviews included), or the ``zarr.json`` documents of a Zarr store;
then where the full LUT went (the GeoTIFF's ``OUTPUT.lut.json`` sidecar, the store's
``rastermatch_lut`` array) and that :func:`rastermatch.read_provenance` reads the record back.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import rasterio

import rastermatch
from rastermatch.pipeline import match_files

DATA = Path(__file__).resolve().parent.parent / "data"


def gdal_metadata_bytes(path: Path) -> int:
    """Bytes of the GDAL metadata XML (TIFF tag 42112) in the file."""
    found = re.search(rb"<GDALMetadata>.*?</GDALMetadata>", path.read_bytes(), re.S)
    return len(found.group(0)) if found else 0


def first_tile_offset(path: Path) -> int:
    """Where the first tile of any image (overviews included) starts."""
    offsets = []
    with rasterio.open(path) as src:
        levels = len(src.overviews(1))
    for level in [None, *range(levels)]:
        with rasterio.open(path, **({} if level is None else {"overview_level": level})) as src:
            for band in range(1, src.count + 1):
                offsets.append(int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=band)))
    return min(offsets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", nargs="?", default=DATA / "arrnorm_target.tif", type=Path)
    parser.add_argument(
        "reference", nargs="?", default=DATA / "arrnorm_ref_adjusted2target.tif", type=Path
    )
    parser.add_argument("--nodata", type=float, default=None)
    args = parser.parse_args()
    nodata = args.nodata
    if nodata is None and args.source.name.startswith("arrnorm"):
        nodata = 0  # the arrnorm scenes' cloud holes
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, options in (("m.tif", {}), ("c.tif", {"cog": True}), ("z.zarr", {})):
            out = folder / name
            match_files(args.source, args.reference, out, nodata=nodata, **options)
            if out.suffix == ".tif":
                side = out.with_name(out.name + ".lut.json")
                print(
                    f"{name}: GDAL metadata {gdal_metadata_bytes(out):,} B, first tile at byte "
                    f"{first_tile_offset(out):,}, sidecar "
                    f"{f'{side.stat().st_size:,} B' if side.exists() else 'none'}"
                )
            else:
                array = out / "rastermatch_lut"
                stored = sum(p.stat().st_size for p in array.rglob("*") if p.is_file())
                print(
                    f"{name}: root zarr.json {(out / 'zarr.json').stat().st_size:,} B, "
                    f"data/zarr.json {(out / 'data' / 'zarr.json').stat().st_size:,} B, "
                    f"record array {stored:,} B stored"
                )
            record = rastermatch.read_provenance(out)
            print(f"  read back: {record['operation']}, LUT {record['lut']['type']}")


if __name__ == "__main__":
    main()
