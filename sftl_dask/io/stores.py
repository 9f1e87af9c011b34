"""Cube roots: a store or a folder of tile stores, its zones, tile and zone selection, mosaics, time-series copies.

A scene cube or an LST cube is either one Zarr store or a root folder (or object-store prefix) holding one
store per tile of the fixed tile scheme (:mod:`sftl_dask.geo`), ``<root>/<tile>.zarr``. :class:`CubeRoot`
is the one place that decides which of the two a path is, lists its stores and zones, picks a tile or a
zone, and pairs its stores with output stores (scene store -> LST store, LST store -> time-series copy).

The time-series copy (``sftl rechunk``) marks itself with ``sftl_layout = "time-series"`` in its global
attributes (:data:`TIMESERIES_LAYOUT`); such copies are never tiles of an LST root.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio on the results)
import xarray as xr
import zarr

from sftl_dask.geo import GeoBox, TileScheme, geometry_attrs, pixel_index, store_geometry
from sftl_dask.io.location import (
    Location,
    child_stores,
    is_zarr_store,
    join,
    location,
    name_of,
    read_text,
    zarr_store,
)

__all__ = [
    "COVERAGE_VAR",
    "TIMESERIES_LAYOUT",
    "CubeRoot",
    "cube_stores",
    "cube_tiling",
    "is_timeseries_copy",
    "mosaic",
    "open_cube",
    "open_store",
    "timeseries_attrs",
    "timeseries_marker",
    "zone_of_store",
]

#: The chunk-coverage index of a store (:mod:`sftl_dask.io.cube` writes and reads it): planning data, not a variable
#: of the cube, so :func:`open_store` leaves it out.
COVERAGE_VAR = "chunk_valid_px"
#: Integer flag variables read as they are stored: ``qc``'s fill value is a flag value (``not_covered``,
#: :data:`sftl_dask.io.lst.QC_FILL`), which CF masking would turn into NaN and the flags into floats.
_UNMASKED = {"qc": False}

#: Value of the ``sftl_layout`` global attribute that marks a time-series copy (``sftl rechunk``).
TIMESERIES_LAYOUT = "time-series"


def timeseries_marker(source_store: str, source_steps: int, source_digest: str) -> dict[str, Any]:
    """The global attributes that mark a time-series copy and name its source.

    Parameters
    ----------
    source_store : str
        The LST store copied (absolute path).
    source_steps : int
        Its completed time steps, all in the copy.
    source_digest : str
        What the source's completed steps were when copied (the copy is stale once it changes).
    """
    return {"sftl_layout": TIMESERIES_LAYOUT, "sftl_source_store": source_store, "sftl_source_steps": source_steps,
            "sftl_source_digest": source_digest}


def is_timeseries_copy(attrs: Any) -> bool:
    """Whether a store's global attributes mark it a time-series copy."""
    return isinstance(attrs, dict) and attrs.get("sftl_layout") == TIMESERIES_LAYOUT


def timeseries_attrs(store: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The global attributes of a time-series copy, or None when ``store`` is not one."""
    try:
        attrs = json.loads(read_text(join(store, ".zattrs")))
    except (OSError, ValueError):
        return None
    return attrs if is_timeseries_copy(attrs) else None


def zone_of_store(name: str) -> str:
    """The zone part (``50N``) of a tile store's name; the name itself for a store that is not a tile."""
    return name.split("_", 1)[0] if TileScheme.is_tile_name(name) else name


def cube_stores(root: str | os.PathLike[str]) -> dict[str, Location]:
    """The tile stores under a cube root (a folder or an object-store URL), by tile name."""
    return child_stores(root)


@dataclass(frozen=True)
class CubeRoot:
    """A cube given by path: one store, or a root folder of tile stores.

    Parameters
    ----------
    path : Location
        The store or root (a path or an fsspec URL).
    skip_copies : bool
        Leave time-series copies out of the root's stores (LST roots: a copy may sit beside the tiles).
    """

    path: Location
    skip_copies: bool = False

    @classmethod
    def of(cls, path: str | os.PathLike[str], *, skip_copies: bool = False) -> CubeRoot:
        """The cube at ``path`` (normalised: :func:`~sftl_dask.io.location.location`)."""
        return cls(location(path), skip_copies)

    @property
    def is_store(self) -> bool:
        """Whether the path is one store (else a root folder of them)."""
        return is_zarr_store(self.path)

    def stores(self) -> dict[str, Location]:
        """The stores by tile name: the store itself, or the root's tile stores (sorted); empty if none."""
        if self.is_store:
            return {name_of(self.path).removesuffix(".zarr"): self.path}
        stores = cube_stores(self.path)
        if self.skip_copies:
            return {name: p for name, p in stores.items() if timeseries_attrs(p) is None}
        return stores

    def zones(self) -> dict[str, dict[str, Location]]:
        """The stores of each zone (``50N``), zones in the order of their first tile."""
        zones: dict[str, dict[str, Location]] = {}
        for name, store in self.stores().items():
            zones.setdefault(zone_of_store(name), {})[name] = store
        return zones

    def tile(self, name: str) -> Location:
        """The store of tile ``name``.

        Raises
        ------
        ValueError
            If there is no such tile.
        """
        stores = self.stores()
        if name not in stores:
            raise ValueError(f"{self.path}: no tile {name!r} (tiles: {', '.join(stores)})")
        return stores[name]

    def zone(self, zone: str | None, *, ways: str = "name one (zone=) or a tile (grid=)") -> dict[str, Location]:
        """The tile stores of ``zone``, or of the only zone when ``zone`` is None.

        Parameters
        ----------
        zone : str, optional
            A UTM zone such as ``50N``.
        ways : str
            How a caller may name one, for the message when several zones are there.

        Raises
        ------
        ValueError
            If the zone is not there, or several zones are there and none is named.
        """
        zones = self.zones()
        if zone is None and len(zones) > 1:
            raise ValueError(f"{self.path}: holds zones {', '.join(zones)}; {ways}")
        if zone is not None and zone not in zones:
            raise ValueError(f"{self.path}: no tile of zone {zone!r} (zones: {', '.join(zones)})")
        return zones[zone] if zone is not None else next(iter(zones.values()))

    def holding(self, lon: float, lat: float) -> list[Location]:
        """The stores whose grid holds the point (``lon``, ``lat``; deg E, deg N), in tile order.

        Read from each store's recorded geometry (:func:`~sftl_dask.geo.store_geometry`), not its data.

        Raises
        ------
        ValueError
            If a store records no grid.
        """
        hits = []
        for store in self.stores().values():
            box, _ = store_geometry(zarr.open_group(zarr_store(store), mode="r").attrs)
            try:
                rows, cols = pixel_index(box.crs, box.x, box.y, [lon], [lat])
            except ValueError:  # a grid too small to locate points on holds none
                continue
            if 0 <= rows[0] < box.height and 0 <= cols[0] < box.width:
                hits.append(store)
        return hits

    def pairs(self, out: str | os.PathLike[str]) -> list[tuple[Location, Location]]:
        """(store, output store) pairs: a store maps to ``out``, a root's stores to ``out/<tile>.zarr``."""
        if self.is_store:
            return [(self.path, location(out))]
        return [(store, join(out, name_of(store))) for store in self.stores().values()]


def cube_tiling(root: str | os.PathLike[str]) -> TileScheme | None:
    """The tile scheme of the stores under a cube root (None for an empty or new root).

    Raises
    ------
    ValueError
        If a store holds no tile scheme (a pre-tile cube of per-scene grids) or the stores disagree.
    """
    found: dict[tuple[int, float], str] = {}
    zones: dict[int, tuple[float, float, str]] = {}
    scheme = None
    for name, store in cube_stores(root).items():
        _, scheme = store_geometry(zarr.open_group(zarr_store(store), mode="r").attrs)
        if scheme is None:
            raise ValueError(f"{store}: written without a tile scheme (a per-scene grid of an older "
                             "sftl-dask): ingest into a new cube root")
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


def open_store(store: str | os.PathLike[str], **kwargs: Any) -> xr.Dataset:
    """A cube store (scene cube, LST cube or time-series copy) as xarray opens it, the project's way.

    ``xr.open_zarr`` with consolidated metadata and the CRS as a coordinate, ``qc`` kept as integer bit flags
    (not CF-masked where it holds its fill, ``not_covered``), and the chunk-coverage index (:data:`COVERAGE_VAR`)
    left out. ``kwargs`` go to ``xr.open_zarr`` and override these (``chunks=None`` for lazily indexed numpy).
    """
    opts = {"consolidated": True, "decode_coords": "all", "mask_and_scale": _UNMASKED,
            "drop_variables": [COVERAGE_VAR], **kwargs}
    return xr.open_zarr(zarr_store(store), **opts)


def _open_store(store: Location) -> xr.Dataset:
    return open_store(store)


def open_cube(root_or_store: str | os.PathLike[str], grid: str | None = None, *, complete_only: bool = True,
              zone: str | None = None) -> xr.Dataset:
    """Open a scene cube lazily: a tile store, one named tile of a cube root, or a zone's tiles as one mosaic.

    Parameters
    ----------
    root_or_store : path or str
        A tile (grid) store or a cube root, or an fsspec URL of either (``s3://bucket/cube``).
    grid : str, optional
        A tile (store) name: open that store alone.
    complete_only : bool
        Keep only slots whose ingest completed, sorted by time.
    zone : str, optional
        UTM zone (``50N``) whose tiles to mosaic when the root holds several zones.

    Returns
    -------
    xarray.Dataset
        One store as written, or (several tiles of a zone) their mosaic over the tiles' bounding rectangle
        with the union of their time steps (:func:`mosaic`).

    Raises
    ------
    ValueError
        If the path holds no cube, the named tile or zone is not there, or several zones and none is named.
    """
    cube = CubeRoot.of(root_or_store)
    if cube.is_store:
        store = cube.path
    else:
        if not cube.stores():
            raise ValueError(f"{cube.path}: no scene cube here")
        if grid is not None:
            store = cube.tile(grid)
        else:
            picked = cube.zone(zone)
            if len(picked) > 1:
                return mosaic(picked, ok_var="ingest_ok", complete_only=complete_only)
            store = next(iter(picked.values()))
    ds = _open_store(store)
    if complete_only:
        ok = ds["ingest_ok"].values
        ds = ds.isel(time=np.flatnonzero(ok)).sortby("time")
    return ds


def _time_table(parts: Mapping[Any, xr.Dataset]) -> pd.DataFrame:
    """The union of the tiles' time steps with their time-only variables, sorted by time."""
    rows = [ds.reset_coords(drop=True).to_dataframe().reset_index() for ds in parts.values()]
    table = pd.concat(rows).drop_duplicates("time" if "scene_id" not in rows[0] else "scene_id")
    table = table.sort_values("time")
    if table["time"].duplicated().any():
        raise ValueError("two scenes share a time stamp: the tiles cannot be put on one time axis")
    return table


def mosaic(stores: Mapping[str, Location], *, ok_var: str, complete_only: bool = True) -> xr.Dataset:
    """Tile stores of one zone opened as one lazy dataset over the tiles' bounding rectangle.

    The time axis is the union of the tiles' time steps (a scene's slots in several tiles become one step);
    each tile's variables are reindexed onto it lazily where a tile did not see a scene (NaN; QC bits get
    ``not_covered``; other integers 0), and tiles missing from the rectangle are the same lazy fill.
    Time-only variables (``scene_id``, ``source``, ``ok_var`` ...) come from the first tile holding each step.
    The rectangle's geometry comes from the tiles' recorded GeoBoxes (``sftl_grid``,
    :func:`~sftl_dask.geo.store_geometry`).

    Parameters
    ----------
    stores : mapping of str to path
        Tile name to store, all of one zone.
    ok_var : str
        The completion flag (``ingest_ok`` or ``retrieve_ok``).
    complete_only : bool
        Keep only complete steps of each tile.

    Returns
    -------
    xarray.Dataset
        Dask-backed, sorted by time, with the CRS and transform of the rectangle and ``sftl_tiles`` listing
        the tile names.

    Raises
    ------
    ValueError
        If a name is not a tile name, the tiles span several zones, a store records no grid, or two scenes
        share a time stamp.
    """
    keys = {n: TileScheme.parse(n) for n in stores}
    if len({k[0] for k in keys.values()}) > 1:
        raise ValueError(f"tiles of several zones ({', '.join(sorted({zone_of_store(n) for n in stores}))}) "
                         "cannot be mosaicked: name one zone")
    parts: dict[tuple[int, int], xr.Dataset] = {}
    times: dict[tuple[int, int], xr.Dataset] = {}
    geoboxes: dict[tuple[int, int], GeoBox] = {}
    for name, store in stores.items():
        ds = _open_store(store)
        if complete_only and ok_var in ds:
            ds = ds.isel(time=np.flatnonzero(ds[ok_var].values))
        time_vars = [v for v in ds.data_vars if ds[v].dims == ("time",)]
        rc = keys[name][1:]
        geoboxes[rc], _ = store_geometry(ds.attrs)
        times[rc] = ds[time_vars]
        parts[rc] = ds.drop_vars([*time_vars, "spatial_ref"], errors="ignore")
    table = _time_table(times)
    first = next(iter(parts.values()))
    fill = {v: _fill_of(first[v]) for v in first.data_vars}
    parts = {k: p.reindex(time=table["time"].to_numpy(), fill_value=fill) for k, p in parts.items()}
    r0, r1 = min(r for r, _ in parts), max(r for r, _ in parts)
    c0, c1 = min(c for _, c in parts), max(c for _, c in parts)
    (rk, ck), ref = next(iter(parts.items()))
    box = geoboxes[(rk, ck)]

    def tile_box(r: int, c: int, rows: int = 1, cols: int = 1) -> GeoBox:
        """The GeoBox of ``rows`` x ``cols`` tiles from tile (r, c), on the reference tile's lattice."""
        return box.moved((r - rk) * box.height, (c - ck) * box.width, rows * box.height, cols * box.width)

    grid_rows = [[parts[(r, c)] if (r, c) in parts else _blank(ref, tile_box(r, c), fill)
                  for c in range(c0, c1 + 1)] for r in range(r0, r1 + 1)]
    out = xr.combine_nested(grid_rows, concat_dim=["y", "x"], combine_attrs="override")
    for v in table.columns:
        if v != "time":
            out[v] = ("time", table[v].to_numpy())
    union = tile_box(r0, c0, r1 - r0 + 1, c1 - c0 + 1)
    out = out.rio.write_crs(union.crs).rio.write_transform(union.affine)
    out.attrs.update(geometry_attrs(union))
    out.attrs["sftl_tiles"] = json.dumps(sorted(stores))
    return out


def _blank(template: xr.Dataset, grid: GeoBox, fill: Mapping[str, Any]) -> xr.Dataset:
    """Lazy fill shaped like ``template`` on another tile's coordinates (a tile no scene reached)."""
    data = {v: (template[v].dims, da.full(template[v].shape, fill[v], dtype=template[v].dtype,
                                          chunks=template[v].data.chunksize), template[v].attrs)
            for v in template.data_vars}
    return xr.Dataset(data, coords={"time": template["time"], "y": grid.y, "x": grid.x})


def _fill_of(var: xr.DataArray) -> Any:
    """What a tile that never saw a scene holds: NaN, the variable's fill where it has one (``qc``: not covered),
    the ``not_covered`` flag of QC bits (stores written before ``qc`` had a fill), else 0."""
    if np.issubdtype(var.dtype, np.floating):
        return np.nan
    fill = var.encoding.get("_FillValue", var.attrs.get("_FillValue"))
    if fill is not None:
        return fill
    meanings = str(var.attrs.get("flag_meanings", "")).split()
    if "not_covered" in meanings and "flag_masks" in var.attrs:
        return int(np.asarray(var.attrs["flag_masks"])[meanings.index("not_covered")])
    return 0
