"""Geometry, once: the GeoBox of every grid, the fixed per-zone tile scheme, pixel lookup, windows.

Built on odc-geo (``odc.geo``): a :class:`GeoBox` is a small immutable value (CRS, affine transform, size),
the one description of a raster's geometry; it is written into every store once (``sftl_grid``) and read
back from there (:func:`store_geometry`), never inferred again from coordinates. :class:`TileScheme` is
the fixed tiling of scene cubes: per UTM zone an odc-geo :class:`~odc.geo.gridspec.GridSpec` of square
tiles of ``tile_px`` pixels of ``pixel_m`` metres.

The tile scheme
---------------
Archive systems (Landsat ARD, Open Data Cube's ``GridSpec``) cut every scene onto one fixed grid of tiles,
so that a scene written in year 1 and one written in year 3 land on the same pixels and no grid ever has
to grow or merge. Here a tile is named ``<zone><N|S>_<row>_<col>``:

* columns count eastwards: tile ``col`` spans eastings ``[x_off + col T, x_off + (col + 1) T)``;
* rows count southwards from northing 10,000,000 m (the southern zones' false northing, so that
  rows of both hemispheres are non-negative): tile ``row`` spans northings
  ``(1e7 - y_off - (row + 1) T, 1e7 - y_off - row T]``, with ``T = tile_px * pixel_m``.

**The zone's offsets** ``(x_off, y_off)``, each less than one tile (ODC's ``GridSpec`` origin), are fixed
when a cube first receives scenes of the zone: the tile edges then pass through the upper-left corner of
those scenes (on the 40 m lattice), so a region's first batch starts at a tile corner rather than being cut
into slivers wherever a global grid happens to fall. They are recorded in every store (``sftl_tiling``) and
never change: later scenes, in any year, land on the same tiles. A scheme without recorded offsets (a
zone not yet in any cube) uses (0, 0).

Pixels of every tile sit on the zone's 40 m lattice, the lattice of GF5-02 VIMI L1 products (the
offsets are whole pixels), so a product is placed by integer offsets (no resampling); a product on
another lattice is resampled (bilinear) onto the tiles it touches.

**Zone edges.** A scene goes into the tiles of its own product's UTM zone, never reprojected into a
neighbour's: tiles of adjacent zones overlap on the ground (each zone's tiles extend past its
6 degree strip) and hold each zone's scenes in that zone's coordinates, as Landsat ARD and the
Sentinel-2 MGRS tiles do. A time series at a point near a zone edge reads the tile of one zone (the
first zone holding the point, see :func:`sftl_dask.api.open_lst`), so scenes delivered in the other zone
are not mixed in. A product in a CRS that is not a WGS 84 UTM zone (EPSG 32601-32660, 32701-32760)
is refused before anything is written.

**Default size: 1024 px (40.96 km).** A tile holds 2 x 2 chunks of 512 px (the cube's chunk, PERF.md);
a 60 km VIMI swath (1500 px) touches 2-3 tiles across (on average (1 + 1500/1024)^2 = 6.1 tiles a
scene), so one scene makes ~6 tile writes and each tile's time axis holds only the scenes that
touched it. 2048 px tiles would halve the writes a scene but give every tile 4x as many mostly empty
time slots, so a point's time series reads 4x the slot metadata for the same scenes; 512 px tiles
make every chunk a store (13 tile writes a scene, ~50 k stores a year over China).

This module imports nothing of sftl_dask.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np
from affine import Affine
from numpy.typing import ArrayLike, NDArray
from odc.geo import geobox as odc_geobox
from odc.geo import gridspec as odc_gridspec
from odc.geo import resyx_, xy_
from odc.geo.geom import BoundingBox
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

__all__ = [
    "DEFAULT_TILE_PX",
    "GeoBox",
    "TileScheme",
    "Window",
    "geometry_attrs",
    "pixel_index",
    "pixel_lonlat",
    "store_geometry",
    "utm_epsg",
]

#: Default tile edge (40 m pixels): 2 x 2 chunks of 512 px; see the module's text for the reasoning.
DEFAULT_TILE_PX = 1024
#: Northing (m) tile rows count from (southwards).
_Y_ORIGIN = 10_000_000.0
_TILE_NAME = re.compile(r"^(\d{1,2})([NS])_(\d+)_(\d+)$")


class Window(NamedTuple):
    """A window of a grid in pixels: rows ``[y0, y1)`` and columns ``[x0, x1)``."""

    y0: int
    y1: int
    x0: int
    x1: int


@dataclass(frozen=True)
class GeoBox:
    """A north-up raster grid: CRS, affine transform (a, b, c, d, e, f) and size.

    A thin immutable value over odc-geo's :class:`~odc.geo.geobox.GeoBox` (:attr:`odc`) that keeps the
    text form stores record (``sftl_grid``: :meth:`to_attrs`). ``x``/``y`` are pixel-centre coordinates in
    CRS units (m).

    Raises
    ------
    ValueError
        On construction, if the transform is not north-up or the size is not positive.
    """

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    def __post_init__(self) -> None:
        a, b, _, d, e, _ = self.transform
        if b != 0 or d != 0 or a <= 0 or e >= 0:
            raise ValueError(f"grid transform {self.transform} is not north-up with square-ish pixels")
        if self.width < 1 or self.height < 1:
            raise ValueError(f"grid size {self.width} x {self.height} must be positive")

    @property
    def affine(self) -> Affine:
        """The transform as an :class:`affine.Affine` (what rasterio and rioxarray take)."""
        return Affine(*self.transform)

    @property
    def odc(self) -> odc_geobox.GeoBox:
        """The same grid as an odc-geo GeoBox."""
        return odc_geobox.GeoBox((self.height, self.width), self.affine, self.crs)

    @property
    def x(self) -> NDArray[np.float64]:
        """Pixel-centre eastings (m)."""
        a, _, c, *_ = self.transform
        return c + (np.arange(self.width) + 0.5) * a

    @property
    def y(self) -> NDArray[np.float64]:
        """Pixel-centre northings (m, decreasing)."""
        *_, e, f = self.transform
        return f + (np.arange(self.height) + 0.5) * e

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units (m)."""
        a, _, c, _, e, f = self.transform
        return c, f + self.height * e, c + self.width * a, f

    @property
    def name(self) -> str:
        """A stable name: CRS code and upper-left corner (km)."""
        code = self.crs.split(":")[-1] if ":" in self.crs else "crs"
        return f"epsg{code}_e{self.transform[2] / 1000:.2f}_n{self.transform[5] / 1000:.2f}"

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able description stored in a store's attributes (``sftl_grid``)."""
        return {"crs": self.crs, "transform": list(self.transform), "width": self.width, "height": self.height}

    @classmethod
    def from_attrs(cls, d: Mapping[str, Any] | str) -> GeoBox:
        """The inverse of :meth:`to_attrs` (a mapping or its JSON text).

        Raises
        ------
        ValueError
            If a key is missing.
        """
        d = json.loads(d) if isinstance(d, str) else d
        try:
            return cls(str(d["crs"]), tuple(float(v) for v in d["transform"]), int(d["width"]), int(d["height"]))
        except KeyError as exc:
            raise ValueError(f"grid description lacks {exc}") from None

    def offset_of(self, other: GeoBox) -> tuple[int, int] | None:
        """Integer (row, col) of ``other``'s first pixel on this grid, or None if not on the same lattice."""
        if other.crs != self.crs:
            return None
        a, _, c, _, e, f = self.transform
        oa, _, oc, _, oe, of = other.transform
        if abs(oa - a) > 1e-6 * a or abs(oe - e) > 1e-6 * abs(e):
            return None
        col = (oc - c) / a
        row = (of - f) / e
        if abs(col - round(col)) > 1e-3 or abs(row - round(row)) > 1e-3:
            return None
        return round(row), round(col)

    def moved(self, rows: int, cols: int, height: int | None = None, width: int | None = None) -> GeoBox:
        """This grid's lattice, its first pixel moved by whole ``rows`` (southwards) and ``cols`` (eastwards).

        ``height`` and ``width`` default to this grid's.
        """
        a, b, c, d, e, f = self.transform
        return GeoBox(self.crs, (a, b, c + cols * a, d, e, f + rows * e),
                      self.width if width is None else width, self.height if height is None else height)

    def window(self, w: Window) -> GeoBox:
        """The grid of a window of this grid."""
        return self.moved(w.y0, w.x0, w.y1 - w.y0, w.x1 - w.x0)

    def overlap(self, other: GeoBox) -> tuple[Window, tuple[int, int] | None] | None:
        """Where ``other`` falls on this grid: the window, and ``other``'s (row, col) offset on this lattice.

        The offset is None when ``other`` is not on this grid's lattice (it is then resampled onto the
        window, which covers every pixel ``other``'s footprint touches). None when the footprints do not
        overlap.
        """
        off = self.offset_of(other)
        if off is not None:
            r, c = off
            y0, y1 = max(0, r), min(self.height, r + other.height)
            x0, x1 = max(0, c), min(self.width, c + other.width)
        else:
            a, _, tc, _, e, tf = self.transform
            left, bottom, right, top = other.bounds
            x0, x1 = max(0, int(np.floor((left - tc) / a))), min(self.width, int(np.ceil((right - tc) / a)))
            y0, y1 = max(0, int(np.floor((top - tf) / e))), min(self.height, int(np.ceil((bottom - tf) / e)))
        if y1 <= y0 or x1 <= x0:
            return None
        return Window(y0, y1, x0, x1), off


def utm_epsg(crs: Any) -> int:
    """The EPSG code of a WGS 84 UTM zone CRS.

    Parameters
    ----------
    crs : str or pyproj.CRS
        Any CRS pyproj reads.

    Returns
    -------
    int
        32601-32660 (north) or 32701-32760 (south).

    Raises
    ------
    ValueError
        If ``crs`` is not a WGS 84 UTM zone, naming it.
    """
    try:
        code = CRS.from_user_input(crs).to_epsg()
    except CRSError as exc:
        raise ValueError(f"CRS {crs!s} cannot be read: {exc}") from None
    if code is None or not (32601 <= code <= 32660 or 32701 <= code <= 32760):
        name = f"EPSG:{code}" if code else str(crs)[:60]
        raise ValueError(f"CRS {name} is not a WGS 84 UTM zone (EPSG:326xx/327xx): "
                         "the tile scheme covers UTM zones only")
    return int(code)


@dataclass(frozen=True)
class TileScheme:
    """Square tiles of ``tile_px`` pixels of ``pixel_m`` metres on each UTM zone's lattice.

    Each zone's tiling is an odc-geo :class:`~odc.geo.gridspec.GridSpec` (:meth:`zone_grid`); this class adds
    the stable tile names and the zones' anchored offsets (module docstring).

    Parameters
    ----------
    tile_px : int
        Tile edge in pixels (a multiple of the chunk edge is best; default 1024).
    pixel_m : float
        Pixel size (m).
    offsets : tuple of (int, float, float)
        Per zone, (EPSG, x offset, y offset) in metres, each in [0, tile edge): the zone's tile edges lie at
        eastings ``x_off + k T`` and northings ``1e7 - y_off - k T``. A zone not listed has offsets (0, 0).

    Raises
    ------
    ValueError
        On construction, for a tile under 16 px, a non-positive pixel or an offset outside one tile.
    """

    tile_px: int = DEFAULT_TILE_PX
    pixel_m: float = 40.0
    offsets: tuple[tuple[int, float, float], ...] = ()

    def __post_init__(self) -> None:
        if int(self.tile_px) != self.tile_px or self.tile_px < 16:
            raise ValueError(f"tile size must be an integer >= 16 px, got {self.tile_px}")
        if not self.pixel_m > 0:
            raise ValueError(f"pixel size must be positive, got {self.pixel_m}")
        for epsg, ox, oy in self.offsets:
            if not (0 <= ox < self.tile_m and 0 <= oy < self.tile_m):
                raise ValueError(f"zone EPSG:{epsg}: tile offsets ({ox}, {oy}) m must lie in [0, {self.tile_m:g})")

    @property
    def tile_m(self) -> float:
        """Tile edge (m)."""
        return self.tile_px * self.pixel_m

    def offset(self, epsg: int) -> tuple[float, float]:
        """(x, y) offset (m) of zone ``epsg``'s tile edges."""
        return next(((ox, oy) for e, ox, oy in self.offsets if e == epsg), (0.0, 0.0))

    def has_zone(self, epsg: int) -> bool:
        """Whether the zone's offsets are fixed in this scheme."""
        return any(e == epsg for e, _, _ in self.offsets)

    def anchored(self, epsg: int, left: float, top: float) -> TileScheme:
        """This scheme with zone ``epsg``'s tile edges through (``left``, ``top``) (m): how a cube fixes a zone's
        grid at its first ingest, so that the first scenes start at a tile corner."""
        t = self.tile_m
        ox, oy = left % t, (_Y_ORIGIN - top) % t
        return TileScheme(self.tile_px, self.pixel_m, tuple(sorted({*self.offsets, (int(epsg), ox, oy)})))

    def zone_grid(self, epsg: int) -> odc_gridspec.GridSpec:
        """Zone ``epsg``'s tiling as an odc-geo GridSpec whose tile index ``(ix, iy)`` is our (col, row).

        The origin is the lower-left corner of tile (0, 0) and rows count southwards (``flipy``).
        """
        ox, oy = self.offset(epsg)
        return odc_gridspec.GridSpec(f"EPSG:{epsg}", (self.tile_px, self.tile_px), resyx_(-self.pixel_m, self.pixel_m),
                                     origin=xy_(ox, _Y_ORIGIN - oy - self.tile_m), flipy=True)

    def tile(self, epsg: int, row: int, col: int) -> GeoBox:
        """The grid of tile (``row``, ``col``) of zone ``epsg``."""
        t = self.tile_m
        ox, oy = self.offset(epsg)
        return GeoBox(f"EPSG:{epsg}", (self.pixel_m, 0.0, ox + col * t, 0.0, -self.pixel_m, _Y_ORIGIN - oy - row * t),
                      self.tile_px, self.tile_px)

    @staticmethod
    def name(epsg: int, row: int, col: int) -> str:
        """Stable tile name ``<zone><N|S>_<row>_<col>``, e.g. ``50N_135_010``."""
        zone, hemi = epsg % 100, "N" if epsg < 32700 else "S"
        return f"{zone}{hemi}_{row:03d}_{col:03d}"

    @staticmethod
    def parse(name: str) -> tuple[int, int, int]:
        """(epsg, row, col) of a tile name.

        Raises
        ------
        ValueError
            If ``name`` is not a tile name.
        """
        m = _TILE_NAME.match(name)
        if not m:
            raise ValueError(f"{name!r} is not a tile name (<zone><N|S>_<row>_<col>)")
        zone, hemi, row, col = int(m[1]), m[2], int(m[3]), int(m[4])
        return (32600 if hemi == "N" else 32700) + zone, row, col

    @staticmethod
    def is_tile_name(name: str) -> bool:
        """Whether ``name`` is a tile name (``<zone><N|S>_<row>_<col>``)."""
        return _TILE_NAME.match(name) is not None

    def tiles_for(self, grid: GeoBox) -> dict[str, GeoBox]:
        """Every tile a raster's footprint touches, by name (row-major order).

        Raises
        ------
        ValueError
            If the grid's CRS is not a UTM zone.
        """
        epsg = utm_epsg(grid.crs)
        left, bottom, right, top = grid.bounds
        zone = self.zone_grid(epsg)
        return {self.name(epsg, iy, ix): self.tile(epsg, iy, ix)
                for (ix, iy), _ in zone.tiles(BoundingBox(left, bottom, right, top, zone.crs))}

    def tile_at(self, epsg: int, x: float, y: float) -> str:
        """Name of the tile of zone ``epsg`` holding point (``x``, ``y``) (m, zone coordinates).

        A point on a tile's top edge belongs to that tile, as it does to the tile's first pixel row
        (:func:`pixel_index`).
        """
        ox, oy = self.offset(epsg)
        return self.name(epsg, math.floor((_Y_ORIGIN - oy - y) / self.tile_m), math.floor((x - ox) / self.tile_m))

    def to_attrs(self) -> dict[str, Any]:
        """JSON-able description kept in every tile store (``sftl_tiling``)."""
        return {"scheme": "utm-fixed-tiles", "tile_px": int(self.tile_px), "pixel_m": float(self.pixel_m),
                "x_origin_m": 0.0, "y_origin_m": _Y_ORIGIN,
                "zone_offsets_m": {str(e): [ox, oy] for e, ox, oy in self.offsets}}

    @classmethod
    def from_attrs(cls, d: Mapping[str, Any] | str) -> TileScheme:
        """The inverse of :meth:`to_attrs` (a mapping or its JSON text)."""
        d = json.loads(d) if isinstance(d, str) else d
        offs = tuple(sorted((int(e), float(v[0]), float(v[1])) for e, v in d.get("zone_offsets_m", {}).items()))
        return cls(int(d["tile_px"]), float(d["pixel_m"]), offs)

    @staticmethod
    def neighbours(name: str) -> dict[tuple[int, int], str]:
        """The names of the 8 tiles around tile ``name``, by (row step, column step).

        Raises
        ------
        ValueError
            If ``name`` is not a tile name.
        """
        epsg, row, col = TileScheme.parse(name)
        return {(dr, dc): TileScheme.name(epsg, row + dr, col + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                if dr or dc}


def geometry_attrs(grid: GeoBox | None = None, scheme: TileScheme | None = None) -> dict[str, str]:
    """The global attributes that record a store's geometry: its GeoBox (``sftl_grid``), its tile scheme
    (``sftl_tiling``), each as JSON text; what :func:`store_geometry` reads back."""
    attrs = {}
    if grid is not None:
        attrs["sftl_grid"] = json.dumps(grid.to_attrs())
    if scheme is not None:
        attrs["sftl_tiling"] = json.dumps(scheme.to_attrs())
    return attrs


def store_geometry(attrs: Mapping[str, Any]) -> tuple[GeoBox, TileScheme | None]:
    """A store's geometry from its global attributes: its GeoBox (``sftl_grid``) and tile scheme.

    The one reader of what :func:`geometry_attrs` writes (through :func:`sftl_dask.io.cube.append_slots`).
    The scheme is None for a store that records none (LST stores, and scene stores of an sftl-dask without
    tiles).

    Raises
    ------
    ValueError
        If the store records no grid (``sftl_grid``) or an incomplete one.
    """
    if "sftl_grid" not in attrs:
        raise ValueError("the store records no grid (attribute sftl_grid)")
    tiling = attrs.get("sftl_tiling")
    return GeoBox.from_attrs(attrs["sftl_grid"]), None if tiling is None else TileScheme.from_attrs(tiling)


def pixel_index(crs: Any, x: ArrayLike, y: ArrayLike, lon: ArrayLike, lat: ArrayLike
                ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(row, column) of the pixel whose area holds each point: how a site finds its pixel.

    Parameters
    ----------
    crs : pyproj.CRS or str
        The grid's CRS.
    x, y : array_like
        Pixel-centre coordinates (m), evenly spaced; ``y`` decreasing (north up).
    lon, lat : array_like
        Points (deg E, deg N, WGS 84).

    Returns
    -------
    rows, cols : numpy.ndarray
        int64; outside ``[0, len(y))`` / ``[0, len(x))`` for points outside the grid.

    Raises
    ------
    ValueError
        If the grid has fewer than 2 pixels along an axis.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        raise ValueError(f"the grid ({y.size} x {x.size} px) is too small to locate points on")
    px, py = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(
        np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64))
    dx, dy = abs(x[1] - x[0]), abs(y[1] - y[0])
    cols = np.floor((np.asarray(px) - (x[0] - dx / 2)) / dx).astype(np.int64)
    rows = np.floor(((y[0] + dy / 2) - np.asarray(py)) / dy).astype(np.int64)
    return np.atleast_1d(rows), np.atleast_1d(cols)


@lru_cache(maxsize=16)
def _to_lonlat(crs_wkt: str) -> Transformer:
    return Transformer.from_crs(crs_wkt, "EPSG:4326", always_xy=True)


@lru_cache(maxsize=8)
def _grid_lonlat(x: tuple[float, ...], y: tuple[float, ...], wkt: str
                 ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Longitude/latitude of a 1-D-coordinate grid (cached; read-only arrays)."""
    xa, ya = np.meshgrid(np.asarray(x), np.asarray(y))
    lon, lat = _to_lonlat(wkt).transform(xa, ya)
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ValueError("some pixel centres cannot be transformed to longitude/latitude")
    lon = (lon + 180.0) % 360.0 - 180.0
    lon.flags.writeable = False
    lat.flags.writeable = False
    return lon, lat


def pixel_lonlat(x: ArrayLike, y: ArrayLike, crs: Any) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Longitude (-180..180) and latitude (deg) of pixel centres, shape (H, W).

    Parameters
    ----------
    x, y : array_like
        The 1-D pixel-centre coordinates (m) of a projected grid, ``x`` (W,) and ``y`` (H,); 2-D ``x`` and
        ``y`` of equal shape (H, W) are taken as they are. A 1-D grid's result is cached per process (every
        scene of a grid asks for the same pixels) and read-only.
    crs : Any
        Any input pyproj accepts: ``"EPSG:32650"``, WKT, a pyproj or rasterio CRS.

    Raises
    ------
    ValueError
        For an unusable CRS, badly shaped, empty or non-finite coordinates, or pixels that do not transform.
    """
    try:
        crs_obj = CRS.from_user_input(crs)
    except CRSError as exc:
        raise ValueError(f"crs {crs!r} is not a usable CRS: {exc}") from None
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim == 1 and ya.ndim == 1 and xa.size and np.isfinite(xa).all() and np.isfinite(ya).all():
        return _grid_lonlat(tuple(xa.tolist()), tuple(ya.tolist()), crs_obj.to_wkt())
    if xa.ndim == 1 and ya.ndim == 1:
        xa, ya = np.meshgrid(xa, ya)
    elif xa.ndim != 2 or xa.shape != ya.shape:
        raise ValueError(f"x and y must be 1-D pixel-centre coordinates (W,) and (H,), or 2-D of one shape; "
                         f"got shapes {xa.shape} and {ya.shape}")
    if xa.size == 0:
        raise ValueError("x and y describe an empty grid")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        raise ValueError("x and y must be finite")
    lon, lat = _to_lonlat(crs_obj.to_wkt()).transform(xa, ya)
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ValueError(f"some pixel centres cannot be transformed from {crs_obj.name} to longitude/latitude")
    lon = (lon + 180.0) % 360.0 - 180.0
    return lon, lat
