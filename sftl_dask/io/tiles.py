"""The fixed tile scheme of scene cubes: per UTM zone, 40 m pixels, square tiles of ``tile_px``.

Archive systems (Landsat ARD, Open Data Cube's ``GridSpec``) cut every scene onto one fixed grid
of tiles, so that a scene written in year 1 and one written in year 3 land on the same pixels and
no grid ever has to grow or merge. Here a tile is named ``<zone><N|S>_<row>_<col>``:

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
first zone holding the point, see :func:`sftl_dask.api`), so scenes delivered in the other zone
are not mixed in. A product in a CRS that is not a WGS 84 UTM zone (EPSG 32601-32660, 32701-32760)
is refused before anything is written.

**Default size: 1024 px (40.96 km).** A tile holds 2 x 2 chunks of 512 px (the cube's chunk, PERF.md);
a 60 km VIMI swath (1500 px) touches 2-3 tiles across (on average (1 + 1500/1024)^2 = 6.1 tiles a
scene), so one scene makes ~6 tile writes and each tile's time axis holds only the scenes that
touched it. 2048 px tiles would halve the writes a scene but give every tile 4x as many mostly empty
time slots, so a point's time series reads 4x the slot metadata for the same scenes; 512 px tiles
make every chunk a store (13 tile writes a scene, ~50 k stores a year over China).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from sftl_dask.io.cube import GridSpec, cube_stores

__all__ = ["DEFAULT_TILE_PX", "TileScheme", "cube_tiling", "mosaic", "utm_epsg", "zone_of_store"]

#: Default tile edge (40 m pixels): 2 x 2 chunks of 512 px; see the module's text for the reasoning.
DEFAULT_TILE_PX = 1024
#: Northing (m) tile rows count from (southwards).
_Y_ORIGIN = 10_000_000.0
_NAME = re.compile(r"^(\d{1,2})([NS])_(\d+)_(\d+)$")


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
    from pyproj import CRS
    from pyproj.exceptions import CRSError

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

    Parameters
    ----------
    tile_px : int
        Tile edge in pixels (a multiple of the chunk edge is best; default 1024).
    pixel_m : float
        Pixel size (m).
    """

    tile_px: int = DEFAULT_TILE_PX
    pixel_m: float = 40.0
    #: Per zone, (EPSG, x offset, y offset) in metres, each in [0, tile edge): the zone's tile edges lie at
    #: eastings ``x_off + k T`` and northings ``1e7 - y_off - k T``. A zone not listed has offsets (0, 0).
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

    def tile(self, epsg: int, row: int, col: int) -> GridSpec:
        """The grid of tile (``row``, ``col``) of zone ``epsg``."""
        t = self.tile_m
        ox, oy = self.offset(epsg)
        return GridSpec(f"EPSG:{epsg}", (self.pixel_m, 0.0, ox + col * t, 0.0, -self.pixel_m, _Y_ORIGIN - oy - row * t),
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
        m = _NAME.match(name)
        if not m:
            raise ValueError(f"{name!r} is not a tile name (<zone><N|S>_<row>_<col>)")
        zone, hemi, row, col = int(m[1]), m[2], int(m[3]), int(m[4])
        return (32600 if hemi == "N" else 32700) + zone, row, col

    def tiles_for(self, grid: GridSpec) -> dict[str, GridSpec]:
        """Every tile a raster's footprint touches, by name (row-major order).

        Raises
        ------
        ValueError
            If the grid's CRS is not a UTM zone.
        """
        epsg = utm_epsg(grid.crs)
        t = self.tile_m
        ox, oy = self.offset(epsg)
        left, bottom, right, top = grid.bounds
        eps = 1e-6 * self.pixel_m
        c0, c1 = math.floor((left - ox) / t), math.floor((right - ox - eps) / t)
        r0, r1 = math.floor((_Y_ORIGIN - oy - top) / t), math.floor((_Y_ORIGIN - oy - bottom - eps) / t)
        return {self.name(epsg, r, c): self.tile(epsg, r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)}

    def tile_at(self, epsg: int, x: float, y: float) -> str:
        """Name of the tile of zone ``epsg`` holding point (``x``, ``y``) (m, zone coordinates)."""
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
        """The names of the 8 tiles around tile ``name``, by (row step, column step)."""
        epsg, row, col = TileScheme.parse(name)
        return {(dr, dc): TileScheme.name(epsg, row + dr, col + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                if dr or dc}

    def same_size(self, other: TileScheme) -> bool:
        """Whether two schemes cut tiles of the same size and pixel."""
        return (self.tile_px, self.pixel_m) == (other.tile_px, other.pixel_m)


def cube_tiling(root: str | os.PathLike[str]) -> TileScheme | None:
    """The tile scheme of the stores under a cube root (None for an empty or new root).

    Raises
    ------
    ValueError
        If a store holds no tile scheme (a pre-tile cube of per-scene grids) or the stores disagree.
    """
    import zarr

    from sftl_dask.io.location import zarr_store

    found: dict[tuple[int, float], str] = {}
    zones: dict[int, tuple[float, float, str]] = {}
    scheme = None
    for name, store in cube_stores(root).items():
        text = zarr.open_group(zarr_store(store), mode="r").attrs.get("sftl_tiling")
        if text is None:
            raise ValueError(f"{store}: written without a tile scheme (a per-scene grid of an older "
                             "sftl-dask): ingest into a new cube root")
        scheme = TileScheme.from_attrs(text)
        found.setdefault((scheme.tile_px, scheme.pixel_m), name)
        for e, ox, oy in scheme.offsets:  # a store records the offsets of the zones known when it was made
            if zones.setdefault(e, (ox, oy, name))[:2] != (ox, oy):
                raise ValueError(f"{root}: tiles {zones[e][2]} and {name} put zone EPSG:{e}'s tile edges at "
                                 "different offsets")
    if len(found) > 1:
        sizes = ", ".join(f"{px} px ({n})" for (px, _), n in found.items())
        raise ValueError(f"{root}: holds tiles of different sizes: {sizes}")
    if scheme is None:
        return None
    return TileScheme(scheme.tile_px, scheme.pixel_m, tuple(sorted((e, ox, oy) for e, (ox, oy, _) in zones.items())))


def zone_of_store(name: str) -> str:
    """The zone part (``50N``) of a tile store's name; the name itself for a store that is not a tile."""
    return name.split("_", 1)[0] if _NAME.match(name) else name


def mosaic(stores: Mapping[str, Any], *, ok_var: str, complete_only: bool = True,
           open_store: Any = None) -> xr.Dataset:
    """Tile stores of one zone opened as one lazy dataset over the tiles' bounding rectangle.

    The time axis is the union of the tiles' time steps (a scene's slots in several tiles become one step);
    each tile's variables are reindexed onto it lazily where a tile did not see a scene (NaN; QC bits get
    ``not_covered``; other integers 0), and tiles missing from the rectangle are the same lazy fill.
    Time-only variables (``scene_id``, ``source``, ``ok_var`` ...) come from the first tile holding each step.

    Parameters
    ----------
    stores : mapping of str to path
        Tile name to store, all of one zone.
    ok_var : str
        The completion flag (``ingest_ok`` or ``retrieve_ok``).
    complete_only : bool
        Keep only complete steps of each tile.
    open_store : callable, optional
        ``open_store(path) -> xr.Dataset`` (default ``xr.open_zarr``).

    Returns
    -------
    xarray.Dataset
        Dask-backed, sorted by time, with the CRS and transform of the rectangle and ``sftl_tiles`` listing
        the tile names.

    Raises
    ------
    ValueError
        If a name is not a tile name, the tiles span several zones, or two scenes share a time stamp.
    """
    import pandas as pd
    import rioxarray  # noqa: F401  (registers .rio)

    from sftl_dask.io.cube import _affine
    from sftl_dask.io.location import zarr_store

    opener = open_store or (lambda s: xr.open_zarr(zarr_store(s), consolidated=True, decode_coords="all"))
    keys = {n: TileScheme.parse(n) for n in stores}
    if len({k[0] for k in keys.values()}) > 1:
        raise ValueError(f"tiles of several zones ({', '.join(sorted({zone_of_store(n) for n in stores}))}) "
                         "cannot be mosaicked: name one zone")
    parts: dict[tuple[int, int], xr.Dataset] = {}
    rows = []
    for name, store in stores.items():
        ds = opener(store)
        if complete_only and ok_var in ds:
            ds = ds.isel(time=np.flatnonzero(ds[ok_var].values))
        time_vars = [v for v in ds.data_vars if ds[v].dims == ("time",)]
        rows.append(ds[time_vars].reset_coords(drop=True).to_dataframe().reset_index())
        parts[keys[name][1:]] = ds.drop_vars([*time_vars, "spatial_ref"], errors="ignore")
    table = pd.concat(rows).drop_duplicates("time" if "scene_id" not in rows[0] else "scene_id")
    table = table.sort_values("time")
    if table["time"].duplicated().any():
        raise ValueError("two scenes share a time stamp: the tiles cannot be put on one time axis")
    times = table["time"].to_numpy()
    first = next(iter(parts.values()))
    fill = {v: _fill_of(first[v]) for v in first.data_vars}
    parts = {k: p.reindex(time=times, fill_value=fill) for k, p in parts.items()}
    r0, r1 = min(r for r, _ in parts), max(r for r, _ in parts)
    c0, c1 = min(c for _, c in parts), max(c for _, c in parts)
    epsg = next(iter(keys.values()))[0]
    # the tiles' lattice from one tile's own coordinates (LST stores do not carry the scheme)
    (rk, ck), ref = next(iter(parts.items()))
    pm = float(ref["x"].values[1] - ref["x"].values[0])
    n = ref.sizes["x"]
    t = n * pm
    left_k, top_k = float(ref["x"].values[0]) - pm / 2, float(ref["y"].values[0]) + pm / 2

    def grid_of(r: int, c: int, rows: int = 1, cols: int = 1) -> GridSpec:
        return GridSpec(f"EPSG:{epsg}", (pm, 0.0, left_k + (c - ck) * t, 0.0, -pm, top_k - (r - rk) * t),
                        cols * n, rows * n)

    grid_rows = []
    for r in range(r0, r1 + 1):
        row = []
        for c in range(c0, c1 + 1):
            if (r, c) in parts:
                row.append(parts[(r, c)])
            else:  # a tile no scene reached inside the rectangle
                row.append(_blank(ref, grid_of(r, c), fill))
        grid_rows.append(row)
    out = xr.combine_nested(grid_rows, concat_dim=["y", "x"], combine_attrs="override")
    for v in table.columns:
        if v != "time":
            out[v] = ("time", table[v].to_numpy())
    union = grid_of(r0, c0, r1 - r0 + 1, c1 - c0 + 1)
    out = out.rio.write_crs(union.crs).rio.write_transform(_affine(union))
    out.attrs["sftl_grid"] = json.dumps(union.to_attrs())
    out.attrs["sftl_tiles"] = json.dumps(sorted(stores))
    return out


def _blank(template: xr.Dataset, grid: GridSpec, fill: Mapping[str, Any]) -> xr.Dataset:
    """Lazy fill shaped like ``template`` on another tile's coordinates."""
    import dask.array as da

    data = {v: (template[v].dims, da.full(template[v].shape, fill[v], dtype=template[v].dtype,
                                          chunks=template[v].data.chunksize), template[v].attrs)
            for v in template.data_vars}
    return xr.Dataset(data, coords={"time": template["time"], "y": grid.y, "x": grid.x})


def _fill_of(var: xr.DataArray) -> Any:
    """What a tile that never saw a scene holds: NaN, the ``not_covered`` flag of QC bits, else 0."""
    if np.issubdtype(var.dtype, np.floating):
        return np.nan
    meanings = str(var.attrs.get("flag_meanings", "")).split()
    if "not_covered" in meanings and "flag_masks" in var.attrs:
        return int(np.asarray(var.attrs["flag_masks"])[meanings.index("not_covered")])
    return 0
