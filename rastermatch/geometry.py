"""Where the inputs lie, and the reference laid onto the source's grid for overlap-only statistics.

Two uses:

- **The geometry report**: :func:`describe` (CRS, resolution, shape, bounds and the footprint in
  longitude/latitude) for ``rastermatch info`` and the job logs, :func:`same_grid` and
  :func:`overlap_fraction` (the share of the source's footprint the reference covers).
- **Overlap-only statistics** (``overlap=True`` or ``"all"`` on ``match_histograms``,
  ``fit_lut`` and the file jobs): the histograms count only the pixels valid in both inputs.
  :func:`prepare_overlap` turns the inputs into what the statistics pass takes: the source
  with a mask of the pixels outside the common area, and the reference on the source's grid
  with its own such mask. The output is never touched: it stays on the source grid and its
  values come from the LUT alone.

How the common area is found:

1. Each input's *valid area*: the pixels valid in every band (not nodata, not NaN or infinite,
   not masked). A stack ``(time, band, y, x)`` has one valid area per date.
2. A reference on another grid (CRS, transform or shape) is laid onto the source grid by
   nearest neighbour (:func:`onto_grid`), lazily: every source pixel centre is carried into the
   reference's CRS (PROJ on a lattice of every 16th pixel fixed on the source grid,
   interpolated between: :meth:`_Warp.rect_positions`) and takes the value of the reference
   pixel it falls in, so no new value appears; source pixels outside the reference's grid are
   invalid. A pixel's value depends only on its own position, so the result is the same for
   numpy and dask inputs and for any chunking. (odc-geo's ``xr_reproject`` was measured
   first: its dask path warps every block on its own, and 5,191 of the 396,396 pixels of the
   NAIP/Landsat pair in ``data/`` came out differently from its numpy path, 6,304 with 50-pixel
   chunks; the statistics, and so the LUT, would have depended on the chunking.)
3. ``overlap=True``: every source date counts the pixels valid in it and in the reference; the
   reference (one histogram for every date) counts its pixels valid in at least one date.
   ``overlap="all"``: one common area, valid in the reference and in every date, for all.
   A list of references counts as one reference covering the union of its members.
4. No common pixel: :class:`~rastermatch.errors.GeometryError`, naming both inputs. Fewer than
   :data:`OVERLAP_WARN_FRACTION` (10 %) of a source date's valid pixels in the common area:
   :class:`~rastermatch.errors.OverlapWarning`; histogram matching transfers the distribution
   of the area it is fitted on to the whole scene, and a tenth of a scene is where a land
   cover mix (a coast, a city, a cloud-shadowed valley) stops being a fair sample of the rest.
   The counts are taken in the statistics pass itself, with no extra read.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import dask
import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from ._data import BandArray, as_band_mask, as_dask, spatial_dims
from ._values import kernel_nodata
from .errors import GeometryError, OptionError, OverlapWarning

__all__ = [
    "OVERLAP_WARN_FRACTION",
    "Grid",
    "Overlap",
    "PreparedOverlap",
    "check_overlap",
    "describe",
    "grid_of",
    "onto_grid",
    "overlap_fraction",
    "prepare_overlap",
    "same_grid",
    "valid_area",
]

Overlap = bool | Literal["all"]

#: Overlap-only statistics from less than this share of a source's valid pixels warn
#: (:class:`~rastermatch.errors.OverlapWarning`).
OVERLAP_WARN_FRACTION = 0.10

# Points per edge of a footprint polygon: enough for a UTM scene's edges in lon/lat to within
# a small fraction of a pixel, few enough to print.
_EDGE_POINTS = 16
# Source pixels whose reference pixels are looked up at once inside a block (memory bound: a
# few arrays of this many float64 values).
_STRIP_PIXELS = 1 << 20
# Between two CRSs, PROJ carries every _LATTICE-th pixel centre along rows and columns and the
# rest are interpolated (see _Warp.rect_positions).
_LATTICE = 16
# A lattice cell whose centre, interpolated from its corners, lies further than this (in
# reference pixels) from where PROJ carries it is carried pixel by pixel instead.
_LATTICE_TOLERANCE = 0.01
# Reference pixels added around a block's window: the window is the bounding box of the block's
# perimeter carried into the reference grid, and the interior may bulge past it by a fraction of
# a pixel where the projection curves.
_WINDOW_MARGIN = 2
# A block whose reference window holds more than this many bytes (a coarse source over a fine
# reference: a 1024-pixel block of 300 m over a 10 m reference spans 30,720 reference pixels a
# side) gathers from each of the reference's own chunks in the window in turn, instead of from
# the window merged into one chunk.
_WINDOW_BYTES = 64 << 20

_WGS84 = "EPSG:4326"


def check_overlap(overlap: Any) -> Overlap:
    """``overlap`` as given if it is False, True or ``"all"``, else OptionError."""
    if overlap is False or overlap is True:
        return overlap
    if isinstance(overlap, str) and overlap == "all":
        return "all"
    if isinstance(overlap, np.bool_):
        return bool(overlap)
    raise OptionError(
        f"overlap must be False, True (statistics only where source and reference are both "
        f"valid) or 'all' (valid in every date of a stack too), not {overlap!r}"
    )


# -- grids --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Grid:
    """The pixel grid of an input: ``shape`` ``(rows, columns)``, and its CRS and transform when
    it is georeferenced (a DataArray with a CRS; numpy arrays have neither)."""

    shape: tuple[int, int]
    crs: CRS | None = None
    transform: Affine | None = None
    name: str = "data"

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None

    def text(self) -> str:
        """``data/a.tif (EPSG:32619, 536 x 349 pixels of 30 m)`` for messages."""
        rows, cols = self.shape
        if not self.georeferenced:
            return f"{self.name} ({cols} x {rows} pixels, no CRS)"
        xres, yres = _resolution(self.transform)  # type: ignore[arg-type]
        return (
            f"{self.name} ({_crs_text(self.crs)}, {cols} x {rows} pixels of "
            f"{_num(xres)} x {_num(yres)} {_units(self.crs)})"
        )


def _template(data: BandArray) -> xr.DataArray | None:
    lay = data.layout
    return lay.template if lay is not None else None


def grid_of(data: Any, name: str | None = None) -> Grid:
    """The :class:`Grid` of a DataArray, Dataset, :class:`BandArray`, numpy or dask array."""
    if isinstance(data, Grid):
        return data
    if isinstance(data, BandArray):
        shape = tuple(int(n) for n in data.array.shape[-2:])
        template = _template(data)
        label = name or data.name
        if template is None:
            return Grid(shape, name=label)  # type: ignore[arg-type]
        return _georeferenced(template, shape, label)  # type: ignore[arg-type]
    if isinstance(data, xr.DataArray | xr.Dataset):
        ydim, xdim = spatial_dims(data, name or "data")
        shape = (int(data.sizes[ydim]), int(data.sizes[xdim]))
        source = data.encoding.get("source")
        return _georeferenced(data, shape, name or (str(source) if source else "data"))
    if isinstance(data, np.ndarray | da.Array) and data.ndim >= 2:
        return Grid((int(data.shape[-2]), int(data.shape[-1])), name=name or "data")
    raise OptionError(
        f"{name or 'data'} is a {type(data).__name__}; describe a DataArray, Dataset or array"
    )


def _georeferenced(data: xr.DataArray | xr.Dataset, shape: tuple[int, int], name: str) -> Grid:
    try:
        crs = data.rio.crs
        transform = data.rio.transform() if crs is not None else None
    except Exception:  # rioxarray's own errors for dims or coords it cannot read: no georeference
        crs, transform = None, None
    if transform is not None and transform.is_rectilinear and min(shape) > 1:
        # from the coordinates: rioxarray's cached transform keeps the pixel size's sign after
        # a flip (sortby("y"), isel(y=slice(None, None, -1))) and puts the origin a row off
        try:
            recalc = data.rio.transform(recalc=True)
        except Exception:  # pragma: no cover - coordinates rioxarray cannot read: the cached one
            recalc = transform
        if not _one_grid(transform, recalc, shape):  # else the file's own, without float noise
            transform = recalc
    return Grid(shape, crs, transform, name)


def same_grid(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` lie on one grid: same CRS and shape, and transforms that put
    every pixel of one within :data:`_SAME_GRID_PIXELS` of a pixel of the other (a tolerance
    in pixels, not CRS units: 1e-5 degree is 30 pixels of a 3 cm orthophoto). Without
    georeferencing on either side, the same shape is the same grid."""
    ga, gb = grid_of(a, "a"), grid_of(b, "b")
    if ga.shape != gb.shape:
        return False
    if not (ga.georeferenced and gb.georeferenced):
        return True
    assert ga.transform is not None and gb.transform is not None
    return bool(ga.crs == gb.crs) and _one_grid(ga.transform, gb.transform, ga.shape)


def _one_grid(ta: Affine, tb: Affine, shape: tuple[int, int]) -> bool:
    """Whether the corners of a grid of ``shape`` lie within :data:`_SAME_GRID_PIXELS` of each
    other through ``ta`` and ``tb``."""
    try:
        onto = ~ta * tb  # b's pixel coordinates to a's
    except Exception:  # a transform that cannot be inverted lies on no grid of its own
        return False
    rows, cols = shape
    for u, v in ((0, 0), (cols, 0), (0, rows), (cols, rows)):
        u2, v2 = onto * (u, v)
        if not abs(u2 - u) + abs(v2 - v) <= _SAME_GRID_PIXELS:  # NaN: not the same
            return False
    return True


#: Grids whose corners lie within this many pixels of each other are one grid.
_SAME_GRID_PIXELS = 1e-3


# -- the geometry report ----------------------------------------------------------------------


def describe(data: Any) -> dict[str, Any]:
    """CRS, resolution, shape, bounds and footprint of ``data`` (a DataArray, Dataset, or array).

    Returns a dict of JSON types: ``crs`` (``"EPSG:32619"``, else WKT), ``epsg``, ``crs_name``,
    ``units``, ``resolution`` ``[x, y]`` (pixel size in CRS units, positive), ``shape``
    ``[rows, columns]``, ``transform`` (six numbers), ``bounds`` ``[left, bottom, right, top]``
    in the CRS, ``footprint`` (the outline in longitude/latitude, a closed ring of ``[lon, lat]``
    points) and ``lonlat_bounds`` ``[west, south, east, north]`` (west > east across the
    antimeridian, as GeoJSON has it); the CRS-dependent entries are
    None for an input without georeferencing.

    Examples
    --------
    >>> import rastermatch
    >>> from rastermatch.geometry import describe
    >>> d = describe(rastermatch.open_raster("data/riohist_source1_naip.tif"))
    >>> d["crs"], d["resolution"], d["shape"]
    ('EPSG:26912', [10.0, 10.0], [726, 546])
    >>> [round(v, 3) for v in d["lonlat_bounds"]]
    [-111.19, 42.374, -111.123, 42.439]
    """
    g = grid_of(data)
    rows, cols = g.shape
    out: dict[str, Any] = {
        "crs": None, "epsg": None, "crs_name": None, "units": None, "resolution": None,
        "shape": [rows, cols], "transform": None, "bounds": None, "footprint": None,
        "lonlat_bounds": None,
    }  # fmt: skip
    if not g.georeferenced:
        return out
    crs, t = g.crs, g.transform
    assert crs is not None and t is not None
    xs, ys = _ring(t, rows, cols, _EDGE_POINTS)
    epsg = crs.to_epsg()
    out.update(
        crs=crs.to_string() if epsg is not None else crs.to_wkt(),
        epsg=epsg,
        crs_name=_crs_name(crs),
        units=_units(crs),
        resolution=[float(v) for v in _resolution(t)],
        transform=[float(v) for v in list(t)[:6]],
        bounds=[float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))],
    )
    try:
        lon, lat = _transformer(crs.to_wkt(), _WGS84).transform(xs, ys)
    except Exception:  # pragma: no cover - PROJ cannot carry this CRS to lon/lat
        return out
    lon, lat = np.asarray(lon), np.asarray(lat)
    if np.isfinite(lon).all() and np.isfinite(lat).all():
        out["footprint"] = [
            [round(float(x), 8), round(float(y), 8)] for x, y in zip(lon, lat, strict=True)
        ]
        west, east = float(lon.min()), float(lon.max())
        wrapped = lon % 360.0
        if float(wrapped.max() - wrapped.min()) < east - west:  # across the antimeridian
            # as GeoJSON (RFC 7946, 5.2) says it: west > east
            west = (float(wrapped.min()) + 180.0) % 360.0 - 180.0
            east = (float(wrapped.max()) + 180.0) % 360.0 - 180.0
        out["lonlat_bounds"] = [west, float(lat.min()), east, float(lat.max())]
    return out


def describe_text(described: dict[str, Any]) -> str:
    """One line for a log: ``EPSG:26912, 10 x 10 metre, 546 x 726 pixels, lon -111.190 to
    -111.123, lat 42.374 to 42.439``."""
    rows, cols = described["shape"]
    if described.get("crs") is None:
        return f"no CRS, {cols} x {rows} pixels"
    crs = f"EPSG:{described['epsg']}" if described.get("epsg") else described.get("crs_name") or "?"
    xres, yres = described["resolution"]
    text = f"{crs}, {_num(xres)} x {_num(yres)} {described.get('units') or ''}".rstrip()
    text += f", {cols} x {rows} pixels"
    if described.get("lonlat_bounds"):
        w, s, e, n = described["lonlat_bounds"]
        across = " (across the antimeridian)" if w > e else ""
        text += f", lon {w:.3f} to {e:.3f}{across}, lat {s:.3f} to {n:.3f}"
    return text


def overlap_fraction(a: Any, b: Any) -> float:
    """The share of ``a``'s footprint that ``b`` covers, measured in ``a``'s CRS (0 to 1).

    ``b``'s outline is carried into ``a``'s pixel space (densified, so curved edges stay curved)
    and clipped to ``a``'s grid. Inputs on one grid give 1. Without georeferencing: 1 for the
    same shape, else :class:`~rastermatch.errors.GeometryError` (nothing says how they lie).

    Examples
    --------
    >>> import rastermatch
    >>> naip = rastermatch.open_raster("data/riohist_source1_naip.tif")
    >>> landsat = rastermatch.open_raster("data/riohist_reference1_landsat.tif")
    >>> round(overlap_fraction(naip, landsat), 3)
    0.998
    """
    ga, gb = grid_of(a, getattr(a, "name", None) or "source"), grid_of(b, "reference")
    if isinstance(a, BandArray):
        ga = replace(ga, name=a.name)
    if isinstance(b, BandArray):
        gb = replace(gb, name=b.name)
    if not (ga.georeferenced and gb.georeferenced):
        if ga.shape == gb.shape:
            return 1.0
        raise _unplaceable(ga, gb)
    if same_grid(ga, gb):
        return 1.0
    rows, cols = gb.shape
    xs, ys = _ring(gb.transform, rows, cols, 64)  # type: ignore[arg-type]
    if ga.crs != gb.crs:
        with np.errstate(all="ignore"):
            xs, ys = _transformer(gb.crs.to_wkt(), ga.crs.to_wkt()).transform(xs, ys)  # type: ignore[union-attr]
    inv = ~ga.transform  # type: ignore[operator]
    xs, ys = np.asarray(xs), np.asarray(ys)
    px, py = inv.a * xs + inv.b * ys + inv.c, inv.d * xs + inv.e * ys + inv.f
    keep = np.isfinite(px) & np.isfinite(py)  # points PROJ cannot carry lie far away
    if keep.sum() < 3:
        return 0.0
    polygon = list(zip(px[keep].tolist(), py[keep].tolist(), strict=True))
    clipped = _clip(polygon, float(ga.shape[1]), float(ga.shape[0]))
    fraction = min(1.0, _area(clipped) / (ga.shape[0] * ga.shape[1]))
    # An outline that crosses a seam of a's CRS (a lon/lat grid over the antimeridian seen from
    # a projection centred elsewhere, a pole) folds and encloses the wrong area: check it
    # against the share of a lattice of a's pixel centres that fall inside b's grid (one
    # projected CRS: the outline is exact; one lon/lat CRS: grids over -180..180 and 0..360).
    if ga.crs == gb.crs and not gb.crs.is_geographic:  # type: ignore[union-attr]
        return fraction
    try:
        sampled = _sampled_fraction(ga, gb)
    except Exception:  # PROJ cannot carry the lattice: the outline is all there is
        return fraction
    if abs(sampled - fraction) > _SAMPLE_TOLERANCE:
        return sampled if sampled > 0.0 else max(fraction, 0.0)
    return fraction


# Source pixel centres per side sampled by _sampled_fraction, and how far the outline's share may
# differ from theirs before the outline is taken to be folded (a few sample spacings).
_SAMPLES = 65
_SAMPLE_TOLERANCE = 0.05


def _sampled_fraction(ga: Grid, gb: Grid) -> float:
    """The share of a lattice of ``ga``'s pixel centres that fall inside grid ``gb``."""
    rows, cols = ga.shape
    yy, xx = np.meshgrid(
        np.unique(np.linspace(0, rows - 1, min(rows, _SAMPLES)).round()),
        np.unique(np.linspace(0, cols - 1, min(cols, _SAMPLES)).round()),
        indexing="ij",
    )
    inside = _Warp.between(ga, gb).pixels(yy.ravel(), xx.ravel())[2]
    return float(inside.mean())


def _unplaceable(ga: Grid, gb: Grid) -> GeometryError:
    missing = " and ".join(g.name for g in (ga, gb) if not g.georeferenced)
    return GeometryError(
        f"{ga.text()} and {gb.text()} are on different grids and {missing} "
        f"{'have' if ' and ' in missing else 'has'} no georeferencing (CRS and transform), so "
        "nothing says how they lie on each other; give inputs with a CRS (files, or DataArrays "
        "from rastermatch.open_raster), or inputs of the same size on one grid, or leave "
        "overlap off"
    )


def _ring(t: Affine, rows: int, cols: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The outline of a grid's pixel edges, ``n`` points per side, closed, in its CRS."""
    s = np.linspace(0.0, 1.0, n + 1)[:-1]
    u = np.concatenate([s * cols, np.full(n, cols), (1 - s) * cols, np.zeros(n), [0.0]])
    v = np.concatenate([np.zeros(n), s * rows, np.full(n, rows), (1 - s) * rows, [0.0]])
    return t.a * u + t.b * v + t.c, t.d * u + t.e * v + t.f


def _clip(polygon: list[tuple[float, float]], width: float, height: float) -> list[Any]:
    """Sutherland-Hodgman: ``polygon`` clipped to the rectangle ``[0, width] x [0, height]``."""
    edges = (
        (lambda p: p[0] >= 0.0, 0, 0.0),
        (lambda p: p[0] <= width, 0, width),
        (lambda p: p[1] >= 0.0, 1, 0.0),
        (lambda p: p[1] <= height, 1, height),
    )
    out = polygon
    for inside, axis, at in edges:
        if not out:
            break
        points, out = out, []
        for i, cur in enumerate(points):
            prev = points[i - 1]
            if inside(cur):
                if not inside(prev):
                    out.append(_cross(prev, cur, axis, at))
                out.append(cur)
            elif inside(prev):
                out.append(_cross(prev, cur, axis, at))
    return out


def _cross(p: Any, q: Any, axis: int, at: float) -> tuple[float, float]:
    k = (at - p[axis]) / (q[axis] - p[axis])
    return (p[0] + k * (q[0] - p[0]), p[1] + k * (q[1] - p[1]))


def _area(polygon: list[Any]) -> float:
    if len(polygon) < 3:
        return 0.0
    x = np.array([p[0] for p in polygon])
    y = np.array([p[1] for p in polygon])
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def _resolution(t: Affine) -> tuple[float, float]:
    return math.hypot(t.a, t.d), math.hypot(t.b, t.e)


def _crs_name(crs: CRS) -> str | None:
    import pyproj

    try:
        c = pyproj.CRS.from_wkt(crs.to_wkt())
        name = str(c.name)
        if name.lower() in ("", "unnamed", "unknown") and c.coordinate_operation is not None:
            name = f"unnamed {c.coordinate_operation.method_name}"  # "unnamed Mercator ..."
        return name
    except Exception:  # pragma: no cover - a WKT rasterio writes and PROJ cannot read
        return None


def _crs_text(crs: CRS | None) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else f"CRS '{_crs_name(crs) or 'unnamed'}'"


def _units(crs: CRS | None) -> str:
    if crs is None:
        return ""
    try:
        units = crs.linear_units if crs.is_projected else "degree"
    except Exception:  # pragma: no cover
        units = ""
    return {"metre": "m", "meter": "m", "unknown": ""}.get(units, units)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.4g}"


_local = threading.local()


def _transformer(src_wkt: str, dst: str) -> Any:
    """A pyproj Transformer (x/y order) from ``src_wkt`` to ``dst``, one per thread (PROJ
    objects are not shared between threads)."""
    import pyproj

    cache = _local.__dict__.setdefault("transformers", {})
    key = (src_wkt, dst)
    if key not in cache:
        cache[key] = pyproj.Transformer.from_crs(
            pyproj.CRS.from_user_input(src_wkt), pyproj.CRS.from_user_input(dst), always_xy=True
        )
    return cache[key]


# -- nearest neighbour onto the source grid -----------------------------------------------------


@dataclass(frozen=True)
class _Warp:
    """How a source pixel finds its reference pixel: its centre through the source transform,
    into the reference CRS (None: the same CRS), through the inverse reference transform."""

    src_transform: tuple[float, ...]
    ref_inverse: tuple[float, ...]
    ref_shape: tuple[int, int]
    src_crs: str | None = None
    ref_crs: str | None = None
    # a reference in longitude/latitude: the longitude of its grid's centre; every longitude is
    # taken within 180 degrees of it (a grid over 0..360 and one over -180..180 alike)
    ref_lon: float | None = None
    # the poles of a lon/lat reference as source (row, column), where PROJ can carry them
    poles: tuple[tuple[float, float], ...] = ()

    @classmethod
    def between(cls, src: Grid, ref: Grid) -> _Warp:
        assert src.transform is not None and ref.transform is not None
        crs = (None, None)
        if src.crs != ref.crs:
            crs = (src.crs.to_wkt(), ref.crs.to_wkt())  # type: ignore[union-attr]
        lon = None
        poles: list[tuple[float, float]] = []
        if ref.crs is not None and ref.crs.is_geographic:
            lon = float((ref.transform * (ref.shape[1] / 2, ref.shape[0] / 2))[0])
            if crs[0] is not None:
                with np.errstate(all="ignore"):
                    px, py = _transformer(crs[1], crs[0]).transform([lon, lon], [90.0, -90.0])
                inv = ~src.transform
                for x, y in zip(px, py, strict=True):
                    col, row = inv * (float(x), float(y))
                    if math.isfinite(row) and math.isfinite(col):
                        poles.append((row - 0.5, col - 0.5))  # pixel index of the centre
        return cls(
            tuple(src.transform)[:6], tuple(~ref.transform)[:6], ref.shape, *crs, lon, tuple(poles)
        )

    def positions(self, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional reference (row, column) of the centres of source pixels ``(yy, xx)``."""
        a, b, c, d, e, f = self.src_transform
        cx, cy = xx + 0.5, yy + 0.5
        x, y = a * cx + b * cy + c, d * cx + e * cy + f
        if self.src_crs is not None:
            with np.errstate(all="ignore"):
                x, y = _transformer(self.src_crs, self.ref_crs).transform(x, y)  # type: ignore[arg-type]
            x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if self.ref_lon is not None:  # PROJ gives -180..180; the reference may lie over 180
            with np.errstate(invalid="ignore"):
                x = x + 360.0 * np.round((self.ref_lon - x) / 360.0)
        a, b, c, d, e, f = self.ref_inverse
        return d * x + e * y + f, a * x + b * y + c

    def rect_positions(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`positions` of every pixel of the rectangle ``[y0:y1, x0:x1]``.

        Between two CRSs, PROJ carries only the pixels whose row and column are multiples of
        :data:`_LATTICE` (a lattice fixed on the source grid, so every block sees the same
        nodes whatever the chunking) and the pixels between are interpolated bilinearly, as
        GDAL's warper does by default (with a 0.125 pixel tolerance there). Projections are
        smooth at that scale: on the NAIP/Landsat pair in ``data/`` the positions are within
        2.1e-5 reference pixel of carrying every pixel (4 of 396,396 centres, that close to a
        pixel edge, fall in the neighbouring pixel), and it takes a ninth of the time (PROJ
        costs about a second per million points). A lattice cell with a point PROJ cannot
        carry is carried pixel by pixel.
        """
        if self.src_crs is None:
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
            return self.positions(yy, xx)
        k = _LATTICE
        ky0, ky1 = y0 // k, (y1 - 1) // k + 1
        kx0, kx1 = x0 // k, (x1 - 1) // k + 1
        ny_, nx_ = np.meshgrid(
            np.arange(ky0, ky1 + 1, dtype=np.float64) * k,
            np.arange(kx0, kx1 + 1, dtype=np.float64) * k,
            indexing="ij",
        )
        nodes = self.positions(ny_, nx_)
        # every lattice cell's centre carried too: a cell where interpolating its corners misses
        # the centre by more than _LATTICE_TOLERANCE is carried pixel by pixel (a seam such as
        # the antimeridian or a pole through the cell, or a projection too bent for it)
        cy_, cx_ = ny_[:-1, :-1] + k // 2, nx_[:-1, :-1] + k // 2
        centres = self.positions(cy_, cx_)
        bent = np.zeros(cy_.shape, dtype=bool)
        for v, at in zip(nodes, centres, strict=True):
            guess = (v[:-1, :-1] + v[:-1, 1:] + v[1:, :-1] + v[1:, 1:]) / 4.0
            with np.errstate(invalid="ignore"):
                bent |= ~(np.abs(guess - at) <= _LATTICE_TOLERANCE)  # NaN: bent
        ys, xs = np.arange(y0, y1), np.arange(x0, x1)
        iy, ix = ys // k - ky0, xs // k - kx0
        fy, fx = ((ys % k) / k)[:, None], ((xs % k) / k)[None, :]
        out = []
        for v in nodes:  # along the lattice rows first (small), then between them
            along = v[:, ix] * (1 - fx) + v[:, ix + 1] * fx
            out.append(along[iy] * (1 - fy) + along[iy + 1] * fy)
        row, col = out
        bad = ~(np.isfinite(row) & np.isfinite(col)) | bent[iy][:, ix]
        if bad.any():
            by, bx = np.nonzero(bad)
            row[bad], col[bad] = self.positions(
                (by + y0).astype(np.float64), (bx + x0).astype(np.float64)
            )
        return row, col

    def rect_pixels(
        self, y0: int, y1: int, x0: int, x1: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`pixels` of every pixel of the rectangle ``[y0:y1, x0:x1]``."""
        return self._indices(*self.rect_positions(y0, y1, x0, x1))

    def pixels(self, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reference (row, column) indices of source pixels ``(yy, xx)`` and whether they fall
        inside the reference grid."""
        return self._indices(*self.positions(yy, xx))

    def _indices(
        self, row: np.ndarray, col: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ny, nx = self.ref_shape
        with np.errstate(invalid="ignore"):
            inside = (row >= 0) & (row < ny) & (col >= 0) & (col < nx)  # NaN: outside
        ri = np.floor(np.where(inside, row, 0.0)).astype(np.int64)
        ci = np.floor(np.where(inside, col, 0.0)).astype(np.int64)
        return np.minimum(ri, ny - 1), np.minimum(ci, nx - 1), inside


def _strips(h: int, w: int) -> Any:
    """Row strips ``(start, lines)`` of a block, at most :data:`_STRIP_PIXELS` pixels each."""
    lines = max(1, _STRIP_PIXELS // max(w, 1))
    for s in range(0, h, lines):
        yield s, min(lines, h - s)


def _gather_block(
    window: np.ndarray, *, warp: _Warp, y0: int, x0: int, h: int, w: int, r0: int, c0: int,
    fill: Any,
) -> np.ndarray:  # fmt: skip
    """The source block ``[y0:y0+h, x0:x0+w]`` filled from the reference ``window`` (whose top
    left pixel is reference pixel ``(r0, c0)``): each pixel the value of the reference pixel
    its centre falls in, ``fill`` outside the reference grid."""
    nrows, wh, ww = window.shape
    out = np.empty((nrows, h, w), dtype=window.dtype)
    flat = window.reshape(nrows, wh * ww)
    for s, n in _strips(h, w):
        ri, ci, inside = warp.rect_pixels(y0 + s, y0 + s + n, x0, x0 + w)
        li, lj = ri - r0, ci - c0
        ok = (li >= 0) & (li < wh) & (lj >= 0) & (lj < ww)
        if (inside & ~ok).any():  # the margin did not hold: a projection too bent for it
            raise GeometryError(
                "the reference's grid bends too much across one block of the source to be "
                "resampled onto it; pass smaller chunks (chunks=, --chunks)"
            )
        at = np.where(inside, li * ww + lj, 0)
        for r in range(nrows):
            out[r, s : s + n] = np.where(inside, flat[r].take(at), fill)
    return out


def _inside_block(block: np.ndarray, *, warp: _Warp, block_info: Any = None) -> np.ndarray:
    """Whether the centres of a source block's pixels fall inside the reference grid."""
    (_, _), (y0, y1), (x0, x1) = block_info[0]["array-location"]
    out = np.zeros(block.shape, dtype=bool)
    for s, n in _strips(y1 - y0, x1 - x0):
        out[0, s : s + n] = warp.rect_pixels(y0 + s, y0 + s + n, x0, x1)[2]
    return out


def _window(warp: _Warp, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int, int, int] | None:
    """Reference rows/columns ``(r0, r1, c0, c1)`` a source block reads: the bounding box of
    its perimeter's pixel centres carried into the reference grid, with a margin. None: no
    part of the reference."""
    w, h = x1 - x0, y1 - y0
    ys = np.concatenate([np.full(w, y0), np.full(w, y1 - 1), np.arange(y0, y1), np.arange(y0, y1)])
    xs = np.concatenate([np.arange(x0, x1), np.arange(x0, x1), np.full(h, x0), np.full(h, x1 - 1)])
    row, col = warp.positions(ys.astype(np.float64), xs.astype(np.float64))
    ny, nx = warp.ref_shape
    if not (np.isfinite(row).all() and np.isfinite(col).all()):
        return 0, ny, 0, nx  # part of the block PROJ cannot carry: read the whole reference
    r0 = max(0, math.floor(row.min()) - _WINDOW_MARGIN)
    r1 = min(ny, math.floor(row.max()) + _WINDOW_MARGIN + 1)
    c0 = max(0, math.floor(col.min()) - _WINDOW_MARGIN)
    c1 = min(nx, math.floor(col.max()) + _WINDOW_MARGIN + 1)
    # A pole of a lon/lat reference inside the block: the perimeter circles it and misses the
    # rows nearer it, so the window takes every row.
    if any(y0 - 1 <= py <= y1 + 1 and x0 - 1 <= px <= x1 + 1 for py, px in warp.poles):
        r0, r1 = 0, ny
    if r0 >= r1 or c0 >= c1:
        return None
    return r0, r1, c0, c1


def onto_grid(
    array: np.ndarray | da.Array,
    ref: Grid,
    src: Grid,
    chunks: tuple[tuple[int, ...], tuple[int, ...]],
    *,
    fill: Any,
) -> da.Array:
    """The ``(row, y, x)`` ``array`` on grid ``ref`` laid onto grid ``src`` by nearest
    neighbour, lazily, chunked ``(all rows, *chunks)``; ``fill`` outside the reference grid.

    Every block reads only the window of the reference it needs; a window over
    :data:`_WINDOW_BYTES` (a coarse source over a fine reference) is gathered from its chunks
    one at a time, never held whole. Values are copied, never blended: every output value is a
    value of ``array`` or ``fill``.
    """
    warp = _Warp.between(src, ref)
    arr = array if isinstance(array, da.Array) else da.from_array(array, name=False)
    dtype = arr.dtype
    fill = dtype.type(fill)
    nrows = arr.shape[0]
    blocks = []
    y0 = 0
    for h in chunks[0]:
        line, x0 = [], 0
        for w in chunks[1]:
            box = _window(warp, y0, y0 + h, x0, x0 + w)
            if box is None:
                piece = da.full((nrows, h, w), fill, dtype=dtype, chunks=(nrows, h, w))
            else:
                r0, r1, c0, c1 = box
                window = arr[:, r0:r1, c0:c1]
                if window.nbytes > _WINDOW_BYTES and window.npartitions > 1:
                    piece = _gather_by_chunks(window, warp, y0, x0, h, w, r0, c0, fill)
                else:
                    piece = window.rechunk((-1, -1, -1)).map_blocks(
                        _gather_block, chunks=((nrows,), (h,), (w,)), dtype=dtype,
                        meta=np.empty((0, 0, 0), dtype), warp=warp, y0=y0, x0=x0, h=h, w=w,
                        r0=r0, c0=c0, fill=fill,
                    )  # fmt: skip
            line.append(piece)
            x0 += w
        blocks.append(line)
        y0 += h
    return da.block(blocks)


def _block_index(
    warp: _Warp, y0: int, x0: int, h: int, w: int, r0: int, c0: int,
    tops: tuple[int, ...], lefts: tuple[int, ...],
) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """For every chunk of a block's reference window (row offsets ``tops``, column offsets
    ``lefts``, both ending with the window's size; the window's top left is reference pixel
    ``(r0, c0)``), the source block's pixels whose reference pixel lies in it: ``(flat pixel
    positions in the block, flat offsets in the chunk)``, chunks in row-major order."""
    wh, ww = tops[-1], lefts[-1]
    li, lj = np.empty((h, w), dtype=np.int64), np.empty((h, w), dtype=np.int64)
    inside = np.empty((h, w), dtype=bool)
    for s, n in _strips(h, w):
        ri, ci, ins = warp.rect_pixels(y0 + s, y0 + s + n, x0, x0 + w)
        li[s : s + n], lj[s : s + n], inside[s : s + n] = ri - r0, ci - c0, ins
    ok = (li >= 0) & (li < wh) & (lj >= 0) & (lj < ww)
    if (inside & ~ok).any():
        raise GeometryError(
            "the reference's grid bends too much across one block of the source to be "
            "resampled onto it; pass smaller chunks (chunks=, --chunks)"
        )
    at = np.flatnonzero(inside)
    li, lj = li.ravel()[at], lj.ravel()[at]
    cy = np.searchsorted(np.asarray(tops), li, side="right") - 1
    cx = np.searchsorted(np.asarray(lefts), lj, side="right") - 1
    ncols = len(lefts) - 1
    chunk = cy * ncols + cx
    order = np.argsort(chunk, kind="stable")
    bounds = np.searchsorted(chunk[order], np.arange((len(tops) - 1) * ncols + 1))
    out = []
    for k in range(len(bounds) - 1):
        pick = order[bounds[k] : bounds[k + 1]]
        i, j = divmod(k, ncols)
        width = lefts[j + 1] - lefts[j]
        out.append((at[pick], (li[pick] - tops[i]) * width + (lj[pick] - lefts[j])))
    return out


def _gather_part(part: np.ndarray, index: list[Any], k: int) -> np.ndarray:
    """``(rows, n)``: the values of reference chunk ``part`` the ``k``-th entry of
    :func:`_block_index` asks for."""
    return part.reshape(part.shape[0], -1)[:, index[k][1]]


def _place_parts(index: list[Any], *parts: np.ndarray, shape: Any, kind: Any, fill: Any) -> Any:
    """The source block ``shape`` from the gathered parts; ``fill`` where none landed."""
    out = np.full((shape[0], shape[1] * shape[2]), fill, dtype=kind)
    for (positions, _), values in zip(index, parts, strict=True):
        out[:, positions] = values
    return out.reshape(shape)


def _gather_by_chunks(
    window: da.Array, warp: _Warp, y0: int, x0: int, h: int, w: int, r0: int, c0: int, fill: Any
) -> da.Array:
    """:func:`_gather_block` for a large window, one reference chunk at a time: the block's
    reference pixels found once and sorted by the chunk they lie in, every chunk of the window
    gives the values asked of it, and the block is put together from them. A task holds one
    reference chunk, or one block with its index: never the window."""
    nrows = window.shape[0]
    dtype = window.dtype
    window = window.rechunk({0: -1})
    tops = tuple(int(v) for v in np.cumsum((0, *window.chunks[1])))
    lefts = tuple(int(v) for v in np.cumsum((0, *window.chunks[2])))
    index = dask.delayed(_block_index, pure=True)(warp, y0, x0, h, w, r0, c0, tops, lefts)
    blocks = window.to_delayed(optimize_graph=False)[0]
    gather = dask.delayed(_gather_part, pure=True)
    parts = [gather(blocks[i, j], index, k) for k, (i, j) in enumerate(np.ndindex(blocks.shape))]
    out = dask.delayed(_place_parts, pure=True)(
        index, *parts, shape=(nrows, h, w), kind=dtype, fill=fill
    )
    return da.from_delayed(out, shape=(nrows, h, w), dtype=dtype, meta=np.empty((0, 0, 0), dtype))


def inside_grid(ref: Grid, src: Grid, chunks: tuple[tuple[int, ...], tuple[int, ...]]) -> da.Array:
    """``(1, y, x)`` on grid ``src``: True where a pixel's centre falls inside grid ``ref``."""
    warp = _Warp.between(src, ref)
    template = da.zeros((1, *src.shape), dtype=bool, chunks=((1,), *chunks))
    return template.map_blocks(_inside_block, warp=warp, dtype=bool, meta=np.empty((0, 0, 0), bool))


# -- overlap-only statistics --------------------------------------------------------------------


def _valid_block(block: np.ndarray, *, nodata: Any) -> np.ndarray:
    valid = np.isfinite(block) if block.dtype.kind == "f" else np.ones(block.shape, dtype=bool)
    value, possible = kernel_nodata(block, nodata)
    if possible:
        valid &= block != value
    return valid


def _valid(arr: da.Array, nodata: Any, mask: Any) -> da.Array:
    """``(row, y, x)``: the pixels of ``arr`` that count (the histograms' own rule)."""
    valid = da.map_blocks(
        _valid_block, arr, nodata=nodata, dtype=bool, meta=np.empty((0, 0, 0), bool)
    )
    if mask is not None:
        valid = valid & ~mask
    return valid


def valid_area(src: BandArray, mask: Any = None) -> da.Array:
    """``(y, x)``, lazily: the pixels of ``src`` valid in every row (band, date): not nodata,
    not NaN or infinite, not in ``mask`` (the rule of the overlap-only statistics). The valid
    area of several same-grid files (the dates of a series given one file each) is the ``&`` of
    theirs: ``overlap="all"`` across files."""
    arr = as_dask(src)
    m = None if mask is None else _dask_mask(as_band_mask(mask, src, name="mask"), arr)
    return _valid(arr, src.nodata, m).all(axis=0)


def _dask_mask(mask: Any, like: da.Array) -> Any:
    if mask is None or isinstance(mask, da.Array):
        return mask
    return da.from_array(mask, chunks=(-1 if mask.shape[0] == 1 else like.chunks[0],
                                       *like.chunks[1:]), name=False)  # fmt: skip


def _scene_groups(src: BandArray) -> tuple[np.ndarray, int]:
    """For every row of ``src``, the scene (date) it belongs to: its rows but the bands."""
    rows = src.rows
    group, kept = rows.groups(["band"] if "band" in rows.dims else [])
    return group, kept.size


@dataclass(frozen=True, eq=False)
class PreparedOverlap:
    """What the statistics pass takes for overlap-only statistics, and how to judge it.

    ``source`` and ``mask``: the source (its array as given, its layout dropped) and the mask
    of every pixel outside the common area; ``members`` and ``masks``: each reference member
    on the source grid and its mask; ``counts``: per source scene, the lazy ``(common, valid)``
    pixel counts, computed in the same pass as the histograms.
    """

    source: BandArray
    mask: Any
    members: tuple[BandArray, ...]
    masks: tuple[Any, ...]
    counts: tuple[Any, ...]
    reference_name: str
    overlap: Overlap
    scenes: tuple[str, ...] = field(default=())
    fraction: float = 1.0

    def no_common_pixels(self, cause: Exception) -> GeometryError:
        """The error for a common area found empty by the statistics pass."""
        return GeometryError(
            f"no pixel is valid in both {self.source.name} and {self.reference_name} "
            f"({cause}): their valid areas (footprints, nodata, masks) do not meet; check the "
            "nodata values and masks, or match without overlap"
        )

    def check(self, computed: Sequence[Any]) -> list[tuple[str, int, int]]:
        """Warn (:class:`~rastermatch.errors.OverlapWarning`) for every source scene whose
        statistics come from less than :data:`OVERLAP_WARN_FRACTION` of its valid pixels;
        return ``(scene, common, valid)`` per scene."""
        out = []
        for scene, pair in zip(self.scenes, computed, strict=True):
            common, valid = (int(v) for v in pair)
            out.append((scene, common, valid))
            if valid and common < OVERLAP_WARN_FRACTION * valid:
                where = f"{scene} of " if scene else ""
                warnings.warn(
                    f"the overlap-only statistics of {where}{self.source.name} come from "
                    f"{100 * common / valid:.1f}% of its valid pixels ({common:,} of {valid:,}) "
                    f"shared with {self.reference_name}, below "
                    f"{100 * OVERLAP_WARN_FRACTION:.0f}%: statistics of a small part of a scene "
                    "may not represent it; check the reference, or match without overlap",
                    OverlapWarning,
                    stacklevel=4,
                )
        return out


def prepare_overlap(
    src: BandArray,
    mask: Any,
    members: Sequence[BandArray],
    member_masks: Sequence[Any],
    overlap: Overlap,
    reference_name: str = "the reference",
) -> PreparedOverlap:
    """Masks that leave every pixel outside the common area of ``src`` and the reference
    ``members`` out of the statistics, the members laid onto the source grid when they lie
    elsewhere (see the module docstring for the rules).

    Refuses, before any work, inputs whose footprints do not overlap or that cannot be placed
    on each other (:class:`~rastermatch.errors.GeometryError`).
    """
    src_grid = grid_of(src)
    # 1. the source's valid area per scene (date), lazily
    src_arr = as_dask(src)
    src_mask = None if mask is None else _dask_mask(as_band_mask(mask, src, name="mask"), src_arr)
    valid_rows = _valid(src_arr, src.nodata, src_mask)
    group, ngroups = _scene_groups(src)
    scenes = [valid_rows[np.flatnonzero(group == g)].all(axis=0, keepdims=True)
              for g in range(ngroups)]  # fmt: skip
    # 2. every member's valid area, on the source grid
    on_grid: list[BandArray] = []
    areas: list[da.Array] = []
    lowest = 1.0
    chunks = (src_arr.chunks[1], src_arr.chunks[2])
    for member, m_mask in zip(members, member_masks, strict=True):
        ref_grid = grid_of(member)
        m_arr = as_dask(member)
        m_mask = None if m_mask is None else _dask_mask(
            as_band_mask(m_mask, member, name="reference mask"), m_arr
        )  # fmt: skip
        same = same_grid(src_grid, ref_grid)
        if same:
            inside = None
        else:
            fraction = _placed(src_grid, ref_grid)
            if fraction <= 0.0:
                raise GeometryError(
                    f"{src_grid.text()} and {ref_grid.text()} do not overlap: no part of the "
                    f"source's footprint ({_lonlat(src_grid)}) is covered by the reference's "
                    f"({_lonlat(ref_grid)}); pass a reference of the same area, or match "
                    "without overlap"
                )
            lowest = min(lowest, fraction)
            fill = member.nodata if member.nodata is not None else 0
            if member.dtype.kind == "f" and member.nodata is None:
                fill = math.nan
            m_arr = onto_grid(m_arr, ref_grid, src_grid, chunks, fill=fill)
            if m_mask is not None:
                m_mask = onto_grid(m_mask, ref_grid, src_grid, chunks, fill=True)
            # the fill marks the outside already when it is nodata or NaN
            inside = None if _fill_is_invalid(member, fill) else inside_grid(
                ref_grid, src_grid, chunks
            )  # fmt: skip
        m_valid = _valid(m_arr, member.nodata, m_mask)
        area = m_valid.all(axis=0, keepdims=True)
        if inside is not None:
            area = area & inside
        areas.append(area)
        # on one grid the member is counted as given (numpy stays numpy: local threads)
        kept = member.array if inside is None and same else m_arr
        on_grid.append(replace(member, array=kept, template=None, layout=None))
    union = areas[0]
    for area in areas[1:]:
        union = union | area
    # 3. the common areas
    if overlap == "all":
        every = scenes[0]
        for s in scenes[1:]:
            every = every & s
        common = [every & union] * ngroups
        seen_by_source = every
    else:
        common = [s & union for s in scenes]
        seen_by_source = scenes[0]
        for s in scenes[1:]:
            seen_by_source = seen_by_source | s
    if ngroups == 1:
        stats_mask = ~common[0]
    else:
        stats_mask = da.concatenate([~common[g] for g in group], axis=0)
    ref_masks = tuple(~(area & seen_by_source) for area in areas)
    counts = tuple(da.stack([c.sum(), s.sum()]) for c, s in zip(common, scenes, strict=True))
    names = tuple(
        src.rows.groups(["band"] if "band" in src.rows.dims else [])[1].describe(g)
        for g in range(ngroups)
    )
    return PreparedOverlap(
        source=replace(src, layout=None),
        mask=stats_mask,
        members=tuple(on_grid),
        masks=ref_masks,
        counts=counts,
        reference_name=reference_name,
        overlap=overlap,
        scenes=names,
        fraction=lowest,
    )


def _placed(src: Grid, ref: Grid) -> float:
    """:func:`overlap_fraction` of two grids, after checking that every source pixel can be
    carried into the reference grid (a CRS PROJ cannot use, a transform that cannot be
    inverted): :class:`~rastermatch.errors.GeometryError` naming both, before any work."""
    try:
        fraction = overlap_fraction(src, ref)
        _Warp.between(src, ref).positions(np.zeros(1), np.zeros(1))
    except GeometryError:
        raise
    except Exception as exc:  # pyproj's and affine's own errors, from the files' headers
        raise GeometryError(
            f"{src.text()} and {ref.text()} cannot be laid onto each other "
            f"({type(exc).__name__}: {exc}); check their CRS and transform, or match "
            "without overlap"
        ) from exc
    return fraction


def _fill_is_invalid(member: BandArray, fill: Any) -> bool:
    if isinstance(fill, float) and math.isnan(fill):
        return True
    return member.nodata is not None and fill == member.nodata


def _lonlat(grid: Grid) -> str:
    d = describe(grid)
    if d["lonlat_bounds"] is None:
        return f"{grid.name}: no lon/lat"
    w, s, e, n = d["lonlat_bounds"]
    return f"lon {w:.3f} to {e:.3f}, lat {s:.3f} to {n:.3f}"


# -- the job log ----------------------------------------------------------------------------------


def job_report(
    sources: Sequence[tuple[str, Any]], references: Sequence[tuple[str, Any]]
) -> dict[str, Any]:
    """The geometry a job logs: every input described (:func:`describe`), and for every
    (source, reference) pair on different grids the share of the source's footprint the
    reference covers (:func:`overlap_fraction`; None when it cannot be placed).

    ``sources`` and ``references`` are ``(name, data)`` pairs; reads headers only.
    """
    inputs = [
        {"role": role, "name": str(name), **describe(data)}
        for role, items in (("source", sources), ("reference", references))
        for name, data in items
    ]
    pairs = []
    for s_name, s_data in sources:
        for r_name, r_data in references:
            if same_grid(s_data, r_data):
                continue
            try:
                fraction: float | None = overlap_fraction(s_data, r_data)
            except Exception:  # a log line: a CRS PROJ cannot carry says "cannot be placed"
                fraction = None
            pairs.append({"source": str(s_name), "reference": str(r_name), "fraction": fraction})
    return {"inputs": inputs, "overlap": pairs}


def job_report_lines(report: dict[str, Any]) -> list[str]:
    """:func:`job_report` as lines for the command line's log."""
    if not report or not report.get("inputs"):
        return []
    width = max(len(i["role"]) for i in report["inputs"])
    lines = ["Geometry:"]
    for i in report["inputs"]:
        lines.append(f"  {i['role'].ljust(width)}  {i['name']}: {describe_text(i)}")
    for p in report.get("overlap", []):
        f = p["fraction"]
        if f is None:
            lines.append(
                f"  overlap: {p['reference']} cannot be placed on {p['source']} (different "
                "grids, no georeferencing or a CRS PROJ cannot carry)"
            )
            continue
        lines.append(
            f"  overlap: {p['reference']} covers {100 * f:.1f}% of the footprint of "
            f"{p['source']} (different grids)"
        )
    return lines
