"""A walkthrough of rastermatch, step by step, in notebook cells.

Open it in VS Code, Spyder or Jupyter (jupytext) and run the ``# %%`` cells one at a time, or run
it whole; it draws with matplotlib's Agg backend, so it also runs without a display::

    python pipelines/walkthrough.py [--source S] [--reference R] [--outdir DIR]

The defaults match a 2014 NAIP aerial scene (uint8) to a Landsat composite (uint16) from
``data/``, and write the figures, the LUT and the matched scene to
``<temp dir>/rastermatch-walkthrough``.
"""

# %% Setup: paths, and matplotlib without a display
import argparse
import tempfile
from pathlib import Path

import dask
import matplotlib

matplotlib.use("Agg")  # headless: figures are saved to files, never shown
import matplotlib.pyplot as plt
import numpy as np

import rastermatch
from rastermatch.metrics import (
    format_quality_table,
    ks_distance,
    matched_histogram,
    quality_table,
)
from rastermatch.plot import save_report

try:
    DATA = Path(__file__).resolve().parent.parent / "data"
except NameError:  # in a notebook: run from the repository root
    DATA = Path("data")

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--source", type=Path, default=DATA / "riohist_source1_naip.tif")
parser.add_argument("--reference", type=Path, default=DATA / "riohist_reference1_landsat.tif")
parser.add_argument(
    "--outdir", type=Path, default=Path(tempfile.gettempdir()) / "rastermatch-walkthrough"
)
args, _ = parser.parse_known_args()  # known only: Jupyter passes arguments of its own
args.outdir.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. Open the scenes
# `open_raster` is lazy: a dask-backed `(band, y, x)` DataArray, with CRS, transform and nodata
# as metadata. Nothing is read yet.

# %%
src = rastermatch.open_raster(args.source)
ref = rastermatch.open_raster(args.reference)
for name, scene in (("source", src), ("reference", ref)):
    print(
        f"{name:9}  {dict(scene.sizes)}  {scene.dtype}  nodata={scene.rio.nodata}  "
        f"CRS={scene.rio.crs.to_epsg() if scene.rio.crs else None}  chunks={scene.chunks}"
    )
# The two need not share a grid, a CRS or a dtype: histograms ignore geometry.

# %% [markdown]
# ## 2. Histograms
# `band_histograms` of dask input is lazy too; `dask.compute` computes both in one pass.
# Integers of at most 16 bits get one exact bin per level; nodata is left out.

# %%
h_src, h_ref = dask.compute(rastermatch.band_histograms(src), rastermatch.band_histograms(ref))
print(h_src)
print(h_ref)
print("valid pixels per band:", h_src.total.tolist(), h_ref.total.tolist())

fig, (ax_src, ax_ref) = plt.subplots(1, 2, figsize=(10, 3.5), layout="constrained")
h_src.plot(ax=ax_src)  # the CDF of every band
h_ref.plot(ax=ax_ref)
ax_src.set_title("source CDFs")
ax_ref.set_title("reference CDFs")
fig.savefig(args.outdir / "histograms.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## 3. Fit the LUT
# One table per band from source values to output values: the exact nearest-CDF rule, ties to
# the smallest level. `fit_lut` histograms both inputs (as above) and also settles the output
# nodata; from histograms already computed, `LUT.from_histograms` gives the same table.

# %%
lut = rastermatch.fit_lut(src, ref)
assert np.array_equal(lut.table, rastermatch.LUT.from_histograms(h_src, h_ref).table)
lut_path = lut.save(args.outdir / "naip_to_landsat.lut.json")
print(lut, "->", lut_path)

# %% [markdown]
# ## 4. Inspect it
# The table covers every source level; the LUT keeps the histograms it came from, so a saved LUT
# is self-describing (and `LUT.load` checks that the table still matches them).

# %%
occupied = np.flatnonzero(lut.source_hist.counts[0])
print("band 1, first source levels present:", occupied[:8].tolist())
print("           mapped to reference levels:", lut.table[0, occupied[:8]].tolist())
print("output nodata:", lut.out_nodata)

fig, ax = plt.subplots(figsize=(5, 4), layout="constrained")
lut.plot(ax=ax)
ax.set_title("LUT: source value -> output value")
fig.savefig(args.outdir / "lut.png", dpi=100)
plt.close(fig)

# %% [markdown]
# ## 5. Apply it and write the result
# `lut.apply` is lazy: a `map_blocks` over the source. Writing streams it block by block into a
# Zarr store (or a GeoTIFF), under a temporary name moved into place when complete.

# %%
matched = lut.apply(src)
print(type(matched.data).__name__, matched.dtype, matched.rio.nodata)
out = rastermatch.write_raster(
    matched,
    args.outdir / "matched.zarr",
    overwrite=True,
    provenance={"source": str(args.source), "reference": str(args.reference)},
)
written = rastermatch.open_raster(out)
print("written:", out, dict(written.sizes), written.dtype, "CRS", written.rio.crs.to_epsg())

# %% [markdown]
# ## 6. How good is the match?
# Kolmogorov-Smirnov (0-1) and Wasserstein-1 (reference units) distances to the reference, before
# and after. The "after" histogram follows from the LUT alone; histogramming the written output
# gives the same distances.

# %%
rows = quality_table(lut.source_hist, lut.reference_hist, matched_histogram(lut))
print(format_quality_table(rows))

h_out = rastermatch.band_histograms(written).compute()
ks_written = ks_distance(h_out, h_ref)
print("KS of the written output:", np.round(ks_written, 4).tolist())
assert np.allclose(ks_written, [r["ks_after"] for r in rows])

# %% [markdown]
# ## 7. The report figure
# One row per band: CDFs of source, reference and matched output, the LUT, and quicklooks.

# %%
report = save_report(args.outdir / "report.png", src, ref, written, lut, metrics=rows)
print("report:", report)
print("all outputs in", args.outdir)
