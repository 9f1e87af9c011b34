"""What the reader sees in each delivery: the library side of ``sftl inspect``.

For each VIMI L1 product (found as :func:`sftl_dask.io.vimi.find_products` finds them, the discovery ``sftl
ingest`` uses) :func:`inspect_product` reports, without reading a pixel:

* the product (its stem) and the layout variant: delivery form (``tar.gz``, ``tar``, ``folder``), the raster
  members' extension as delivered (``.tif``, ``.TIFF`` ...) and the top-level folder holding the members, if any;
* the scene time (UTC, ISO 8601) and its source (``CenterTime``, or the midpoint of StartTime/EndTime);
* the geometry: ``map`` (georeferenced GeoTIFFs) or ``sensor`` (raw sensor geometry) with the RPC member;
* the calibration source (``xml``, ``user:<path>``, ``table:<file>``);
* the footprint as lon/lat bounds (degrees, WGS 84): for a map product the GeoTIFF transform's outer edges
  projected to lon/lat (each edge densified, 21 points); for a sensor product the image outline (the outer
  pixel edges, line and sample -0.5 and n - 0.5 in RPC00B's pixel-centre convention, 21 points per edge so
  the four corners are among them) localized by the thermal raster's RPCs at height 0 m above the ellipsoid;
* the UTM zone and the tiles of :class:`sftl_dask.geo.TileScheme` the product goes to, **on the unanchored
  grid** (zone offsets (0, 0): a cube that already holds the zone, or a first ingest that anchors it at its
  own scenes' corner, may name other tiles). A map product's zone is its CRS's; a sensor product's zone is
  the one of its footprint centre (the RPCs' localization of the central pixel) and its grid is the
  footprint's bounding box in that zone, snapped outwards to the 40 m lattice.

Everything is read through :class:`sftl_dask.io.vimi.VimiProduct` (the same checks as ingest: members,
gzip integrity, XML fields, calibration, grids) and :mod:`sftl_dask.io.rpc`. An unreadable product raises
:class:`sftl_dask.io.vimi.VimiFormatError` whose one-line message starts with the product path and names
the member or field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyproj import Transformer

from sftl_dask.geo import DEFAULT_TILE_PX, GeoBox, TileScheme, utm_epsg
from sftl_dask.io.rpc import Rpc
from sftl_dask.io.vimi import VimiFormatError, VimiProduct, find_products

__all__ = ["EDGE_POINTS", "ProductSummary", "inspect_product", "inspect_products", "sensor_footprint",
           "sensor_product_grid"]

#: Points per footprint edge (corners included).
EDGE_POINTS = 21


@dataclass(frozen=True)
class ProductSummary:
    """One line of ``sftl inspect``: what the reader sees in a product (see the module docstring).

    Attributes
    ----------
    product : str
        The product stem (the cube's ``scene_id``).
    path : str
        The product path as given.
    delivery : str
        ``tar.gz``, ``tar`` or ``folder``.
    member_ext : str
        Extension of the raster members as delivered (``.tif``, ``.tiff``, any case).
    member_folder : str
        The one top-level folder holding the members, ``""`` when they lie at the root.
    time : str
        Scene time, ISO 8601 UTC with milliseconds (``2022-06-12T03:00:04.250Z``).
    time_source : str
        ``CenterTime`` or ``midpoint of StartTime/EndTime``.
    geometry : str
        ``map`` or ``sensor``.
    rpc_member : str
        The thermal raster's RPC member (``<member> (RPC tags)`` for TIFF tags), ``""`` for a map product.
    calibration_source : str
        ``xml``, ``user:<path>`` or ``table:<file>``.
    footprint : tuple of float
        (west, south, east, north), degrees (WGS 84).
    footprint_source : str
        How the footprint was computed.
    utm_zone : str
        ``<zone><N|S>``, e.g. ``50N``.
    epsg : int
        EPSG code of the UTM zone.
    tile_px : int
        Tile edge (40 m pixels).
    tiles : tuple of str
        Names of the tiles the product goes to (row-major), on the unanchored grid.
    """

    product: str
    path: str
    delivery: str
    member_ext: str
    member_folder: str
    time: str
    time_source: str
    geometry: str
    rpc_member: str
    calibration_source: str
    footprint: tuple[float, float, float, float]
    footprint_source: str
    utm_zone: str
    epsg: int
    tile_px: int
    tiles: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-able values (``footprint`` as a mapping west/south/east/north, tiles a list)."""
        d = asdict(self)
        d["footprint"] = dict(zip(("west", "south", "east", "north"), self.footprint, strict=True))
        d["tiles"] = list(self.tiles)
        return d

    def line(self) -> str:
        """The summary as one line of text."""
        w, s, e, n = self.footprint
        layout = f"{self.delivery} {self.member_ext}" + (f" in {self.member_folder}/" if self.member_folder else "")
        geom = f"sensor, RPC {PurePosixPath(self.rpc_member).name}" if self.geometry == "sensor" else "map"
        return (f"{self.product}  {layout}  {self.time} ({self.time_source})  {geom}  "
                f"calibration {self.calibration_source}  lon {w:.4f}..{e:.4f} lat {s:.4f}..{n:.4f}  "
                f"zone {self.utm_zone}  {len(self.tiles)} tiles of {self.tile_px} px: {' '.join(self.tiles)}")


def _outline(height: int, width: int, n: int = EDGE_POINTS) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(line, sample) of the image outline: the outer pixel edges, ``n`` points per edge, clockwise from the
    upper left (RPC00B pixel-centre convention: the first pixel's outer corner is (-0.5, -0.5))."""
    t = np.linspace(0.0, 1.0, n)[:-1]
    top, bottom, left, right = -0.5, height - 0.5, -0.5, width - 0.5
    line = np.concatenate([np.full_like(t, top), top + t * (bottom - top), np.full_like(t, bottom),
                           bottom - t * (bottom - top)])
    sample = np.concatenate([left + t * (right - left), np.full_like(t, right), right - t * (right - left),
                             np.full_like(t, left)])
    return line, sample


def sensor_footprint(rpc: Rpc, height: int, width: int, h_m: float = 0.0
                     ) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    """Lon/lat bounds of an image in sensor geometry, by its RPCs at one height.

    Parameters
    ----------
    rpc : Rpc
        The image's RPC00B model.
    height, width : int
        Image size (lines, samples).
    h_m : float
        Height above the WGS 84 ellipsoid (m), default 0.

    Returns
    -------
    bounds : tuple of float
        (west, south, east, north), degrees, of the image outline (outer pixel edges, :data:`EDGE_POINTS`
        points per edge).
    centre : tuple of float
        (lon, lat), degrees, of the central pixel.

    Raises
    ------
    ValueError
        If the RPCs do not localize a point of the outline (outside the model's domain).
    """
    line, sample = _outline(height, width)
    lon, lat = rpc.localize(np.append(line, (height - 1) / 2), np.append(sample, (width - 1) / 2), h_m)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ValueError(f"the RPCs do not localize the image outline ({height} x {width} px) at {h_m:g} m "
                         "(outside the model's domain)")
    bounds = (float(lon[:-1].min()), float(lat[:-1].min()), float(lon[:-1].max()), float(lat[:-1].max()))
    return bounds, (float(lon[-1]), float(lat[-1]))


def _zone_of(lon: float, lat: float) -> int:
    """EPSG code of the WGS 84 UTM zone holding (lon, lat) (the plain 6 degree zones)."""
    zone = int(np.floor((lon + 180.0) / 6.0)) % 60 + 1
    return (32600 if lat >= 0 else 32700) + zone


def sensor_product_grid(rpc: Rpc, height: int, width: int, pixel_m: float = 40.0
                        ) -> tuple[GeoBox, tuple[float, float, float, float]]:
    """The grid of a sensor-geometry product: THE rule ``sftl inspect`` and ``sftl ingest`` share.

    The UTM zone is the one of the footprint centre (the RPCs' localization of the central pixel at 0 m); the
    grid is the bounding box, in that zone, of the image outline (outer pixel edges, :data:`EDGE_POINTS` per
    edge, localized at 0 m above WGS 84), snapped outwards to multiples of ``pixel_m``.

    Parameters
    ----------
    rpc : Rpc
        The thermal raster's RPC00B model.
    height, width : int
        Image size (lines, samples).
    pixel_m : float
        Pixel size of the grid (m), default 40.

    Returns
    -------
    grid : GeoBox
        North-up grid of ``pixel_m`` pixels in the zone (``EPSG:326NN`` / ``327NN``).
    bounds : tuple of float
        The footprint (west, south, east, north), degrees.

    Raises
    ------
    ValueError
        If the RPCs do not localize the image outline.
    """
    bounds, centre = sensor_footprint(rpc, height, width)
    epsg = _zone_of(*centre)
    line, sample = _outline(height, width)
    lon, lat = rpc.localize(line, sample, 0.0)
    x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    left, top = np.floor(x.min() / pixel_m) * pixel_m, np.ceil(y.max() / pixel_m) * pixel_m
    w, h = int(np.ceil((x.max() - left) / pixel_m)), int(np.ceil((top - y.min()) / pixel_m))
    return GeoBox(f"EPSG:{epsg}", (pixel_m, 0.0, float(left), 0.0, -pixel_m, float(top)), w, h), bounds


def _map_grid(product: VimiProduct, ds: Any, member: str) -> tuple[GeoBox, tuple[float, float, float, float]]:
    """The product's own grid (its UTM zone) and its lon/lat bounds."""
    try:
        epsg = utm_epsg(ds.rio.crs)
    except ValueError as exc:
        raise VimiFormatError(f"{product.path}: member {member}: {exc}") from None
    t = ds.rio.transform()
    grid = GeoBox(f"EPSG:{epsg}", (t.a, t.b, t.c, t.d, t.e, t.f), ds.sizes["x"], ds.sizes["y"])
    to_ll = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True)
    w, s, e, n = to_ll.transform_bounds(*grid.bounds, densify_pts=EDGE_POINTS)
    return grid, (float(w), float(s), float(e), float(n))


def inspect_product(path: str | os.PathLike[str], *, tile_px: int = DEFAULT_TILE_PX,
                    calibration: str | os.PathLike[str] | None = None) -> ProductSummary:
    """What the reader sees in one product (module docstring); reads headers, XML and RPCs, no pixel.

    Parameters
    ----------
    path : path
        A product: ``<stem>.tar.gz`` / ``.tgz`` / ``.tar`` or the folder ``<stem>/``.
    tile_px : int
        Tile edge in 40 m pixels (default 1024 = 40.96 km), as ``sftl ingest --tile-size``.
    calibration : path, optional
        A user's calibration table (see :class:`~sftl_dask.io.vimi.VimiProduct`).

    Returns
    -------
    ProductSummary

    Raises
    ------
    VimiFormatError
        For an unreadable product: one line starting with the path and naming the member or field.
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``tile_px`` is not an integer >= 16.
    """
    scheme = TileScheme(tile_px)
    product = VimiProduct(path, calibration=calibration)
    ds = product.open(chunks=None)
    try:
        attrs = dict(ds.attrs)
        rasters = sorted(m for ft, m in product.members.items() if ft != "metadata")
        if attrs["geometry"] == "sensor":
            rpc = product.rpc(attrs["rpc_member"])
            try:
                grid, bounds = sensor_product_grid(rpc, ds.sizes["y"], ds.sizes["x"], scheme.pixel_m)
            except ValueError as exc:
                raise VimiFormatError(f"{product.path}: member {attrs['rpc_member']}: {exc}") from None
            how = "RPC image outline at h = 0 m"
        else:
            grid, bounds = _map_grid(product, ds, rasters[-1])
            how = "GeoTIFF transform"
    finally:
        ds.close()
    epsg = utm_epsg(grid.crs)
    folder = str(PurePosixPath(rasters[0]).parent)
    return ProductSummary(
        product=product.stem, path=str(product.path), delivery=attrs["delivery"],
        member_ext="/".join(sorted({PurePosixPath(m).suffix for m in rasters})),
        member_folder="" if folder == "." else folder, time=attrs["time"], time_source=attrs["time_source"],
        geometry=attrs["geometry"], rpc_member=attrs["rpc_member"], calibration_source=attrs["calibration_source"],
        footprint=bounds, footprint_source=how, utm_zone=TileScheme.name(epsg, 0, 0).split("_")[0], epsg=epsg,
        tile_px=scheme.tile_px, tiles=tuple(scheme.tiles_for(grid)))


def inspect_products(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
                     tile_px: int = DEFAULT_TILE_PX, calibration: str | os.PathLike[str] | None = None
                     ) -> list[ProductSummary]:
    """:func:`inspect_product` of every product in ``paths`` (found by :func:`~sftl_dask.io.vimi.find_products`).

    Stops at the first unreadable product (in path order), raising its error: a listing is complete or not
    given.

    Raises
    ------
    VimiFormatError
        For the first unreadable product, or for no product found (naming the inputs).
    FileNotFoundError
        If an input does not exist.
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    products = find_products([Path(p) for p in items])
    if not products:
        raise VimiFormatError(f"{', '.join(str(p) for p in items)}: no VIMI L1 products found")
    return [inspect_product(p, tile_px=tile_px, calibration=calibration) for p in products]
