"""Shared fixtures: sample data paths and a scheduler that fails if anything computes."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest

DATA = Path(__file__).resolve().parent.parent / "data"

# Each pytest-xdist worker compiles into its own numba cache (set before anything imports
# numba; processes it starts inherit it). numba numbers a function's cache entries per
# process, so two processes compiling new signatures of one function into the same cache can
# overwrite each other's entries and later load the wrong machine code.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER and "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(
        tempfile.gettempdir(), f"rastermatch-numba-{os.getuid()}-{_WORKER}"
    )


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


class BlockReads:
    """Counts the blocks read from the dask arrays passed through :meth:`count`, on any thread."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def _read(self, block: np.ndarray) -> np.ndarray:
        with self._lock:
            self.n += 1
        return block

    def count(self, array: Any) -> Any:
        """``array`` with every block read counted (its meta given, so nothing runs now)."""
        meta = np.empty((0,) * array.ndim, array.dtype)
        return array.map_blocks(self._read, meta=meta)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261122)


# --- A local STAC catalog of COGs (tests/test_stac.py; usable by any test needing real
# odc-stac / stackstac inputs) ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StacScenes:
    """A local STAC catalog: T dates of one real scene, one single-band COG asset per band.

    Date 0 is the base (``data/rasterio_RGB.byte.tif`` cropped, as uint16); every later date
    is the base through a random strictly increasing map of its levels, one map per (date,
    band), with the nodata value 0 kept at 0. Normalizing any date onto the base must give
    the base back exactly.
    """

    catalog: Path  # catalog.json (asset hrefs relative to the items)
    base_tif: Path  # the base date as one 3-band GeoTIFF with band descriptions
    scenes: np.ndarray  # (time, band, y, x) uint16, what the COGs hold
    dates: np.ndarray  # datetime64[ns], strictly increasing
    bands: tuple[str, ...]  # asset keys = eo:bands names = band labels
    crs: Any  # rasterio CRS
    transform: Any  # affine.Affine of every COG
    nodata: int

    @property
    def base(self) -> np.ndarray:
        return self.scenes[0]


@pytest.fixture(scope="session")
def stac_scenes(tmp_path_factory: pytest.TempPathFactory) -> StacScenes:
    """Writes the COGs and the catalog once per session (about 0.3 s)."""
    pystac = pytest.importorskip("pystac")
    import rasterio
    import rasterio.warp
    from pystac.extensions.eo import Band, EOExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterBand, RasterExtension
    from rasterio.windows import Window

    root = tmp_path_factory.mktemp("stac")
    cogs = root / "cogs"
    cogs.mkdir()
    # 160 x 192 pixels with the scene's rotated black border: 22 % nodata, ~200 levels a band.
    window = Window(col_off=50, row_off=200, width=192, height=160)
    with rasterio.open(DATA / "rasterio_RGB.byte.tif") as src:
        base = src.read(window=window)
        transform = src.window_transform(window)
        crs = src.crs
    bands = ("red", "green", "blue")
    nodata = 0
    rng = np.random.default_rng(8)
    scenes = [base.astype(np.uint16)]
    for _ in range(3):
        date = np.empty_like(scenes[0])
        for b in range(len(bands)):
            level_map = np.zeros(256, dtype=np.uint16)  # 0 (nodata) stays 0
            level_map[1:] = np.cumsum(rng.integers(1, 250, size=255))  # strictly increasing
            date[b] = level_map[base[b]]
        scenes.append(date)
    stack = np.stack(scenes)
    first = datetime.datetime(2020, 1, 15, 15, 30, tzinfo=datetime.UTC)
    times = [first + datetime.timedelta(days=16 * t) for t in range(len(stack))]
    height, width = base.shape[1:]
    left, bottom, right, top = rasterio.transform.array_bounds(height, width, transform)
    ring = [(left, bottom), (right, bottom), (right, top), (left, top), (left, bottom)]
    footprint = {"type": "Polygon", "coordinates": [ring]}
    geometry = rasterio.warp.transform_geom(crs, "EPSG:4326", footprint)
    bbox = list(rasterio.warp.transform_bounds(crs, "EPSG:4326", left, bottom, right, top))
    profile = {
        "driver": "COG",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint16",
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "blocksize": 64,
        "compress": "deflate",
    }

    catalog = pystac.Catalog("rastermatch-test", "T dates of one scene, one COG per band")
    for t, (when, scene) in enumerate(zip(times, stack, strict=True)):
        # Real catalogs miss a cloud cover now and then: stackstac gives an object coord.
        properties = {"platform": "landsat-7"} | ({} if t == 2 else {"eo:cloud_cover": 4.0 * t})
        item = pystac.Item(
            f"scene-{t}", geometry=geometry, bbox=bbox, datetime=when, properties=properties
        )
        for b, name in enumerate(bands):
            path = cogs / f"scene-{t}_{name}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(scene[b], 1)
            asset = pystac.Asset(str(path), media_type=pystac.MediaType.COG, roles=["data"])
            item.add_asset(name, asset)
            RasterExtension.ext(asset, add_if_missing=True).bands = [
                RasterBand.create(nodata=nodata, data_type="uint16")
            ]
            EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=name)]
        projection = ProjectionExtension.ext(item, add_if_missing=True)
        projection.epsg = crs.to_epsg()
        projection.shape = [height, width]
        projection.transform = list(transform)[:6]
        catalog.add_item(item)
    catalog.normalize_hrefs(str(root / "catalog"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

    base_tif = root / "base.tif"
    with rasterio.open(
        base_tif, "w", **(profile | {"driver": "GTiff", "count": len(bands), "tiled": True})
    ) as dst:
        dst.write(stack[0])
        dst.descriptions = bands
    return StacScenes(
        catalog=root / "catalog" / "catalog.json",
        base_tif=base_tif,
        scenes=stack,
        dates=np.array([np.datetime64(w.replace(tzinfo=None), "ns") for w in times]),
        bands=bands,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
