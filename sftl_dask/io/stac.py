"""STAC catalogs of the cubes: one Item per ingested scene (scene cube), one per grid and time (LST cube).

Both catalogs have the same shape, a root ``catalog.json`` holding one Collection (its tile stores as
Collection-level assets with ``xarray:open_kwargs`` and ``cube:*``, which ``xpystac`` opens) and its Items
(``<stac>/<collection>/<item>/<item>.json``), written as a whole into a hidden folder that replaces the
previous catalog only once complete (:func:`sftl_dask.staging.staged_dir`). What every Item carries:

* every prefixed field's extension declared in ``stac_extensions`` with the schema URI of pystac's
  extension class (projection, raster, file, grid, eo, view), or :data:`PROCESSING_SCHEMA_URI`
  (pystac has no processing class);
* asset and link hrefs relative to the Item's file, so a catalog moved or copied together with its cube
  still resolves (an asset outside the moved folder, such as a source product, resolves as long as it
  keeps its place relative to the cube);
* a lon/lat (EPSG:4326) Polygon whose exterior ring runs counter-clockwise (RFC 7946, section 3.1.6)
  and the matching ``bbox``;
* ``proj:code``/``proj:shape``/``proj:transform``/``proj:bbox`` of the raster grid, ``grid:code``
  (``SFTL-<tile name>``, the store's name) of the cube's tile grid, ``processing:software`` and the data asset's
  ``raster:bands`` (one per cube variable, in the store's variable order, with ``name``, ``description``,
  ``data_type``, ``unit``, ``nodata`` and ``spatial_resolution`` in m);
* for a source product that is a single file (a ``.tar`` archive), ``file:checksum`` (sha2-256
  multihash of its bytes, the checksum the cube records) and ``file:size`` (bytes).

Scene Items (id = product id) add the scene's corner footprint from the product metadata,
``eo:cloud_cover`` (%), ``view:sun_elevation``/``view:sun_azimuth`` and ``view:incidence_angle``
(the satellite zenith at the scene centre, deg). LST Items (id = ``<scene id>_<tile name>``) add
``processing:level`` ``L2``, the lineage (scene id, model kind and artifact sha256) and a
``derived_from`` link to the scene's Item where the scene cube's catalog has it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pystac
import xarray as xr
from pyproj import Transformer
from pystac.extensions.datacube import DatacubeExtension, Dimension, Variable
from pystac.extensions.eo import EOExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.grid import GridExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, NoDataStrings, RasterBand, RasterExtension
from pystac.extensions.view import ViewExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension

from sftl_dask.geo import GeoBox, store_geometry
from sftl_dask.io.cube import CUBE_VARIABLES, read_slots
from sftl_dask.io.location import is_url
from sftl_dask.io.lst import LST_OK_VAR, LST_VARIABLES, lst_stores
from sftl_dask.io.stores import CubeRoot, open_store
from sftl_dask.staging import staged_dir
from sftl_dask.version import __version__

__all__ = [
    "COG_COLLECTION",
    "COMPOSITES_COLLECTION",
    "LST_COLLECTION",
    "PROCESSING_SCHEMA_URI",
    "SCENE_COLLECTION",
    "item_id",
    "scene_sources",
    "scene_stac_meta",
    "store_asset",
    "tile_name",
    "write_cog_stac",
    "write_composites_stac",
    "write_lst_stac",
    "write_scene_stac",
]

#: The processing extension's schema (no pystac class exists for it).
PROCESSING_SCHEMA_URI = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
#: Collection ids of the two cubes' catalogs.
SCENE_COLLECTION = "sftl-scene-cube"
LST_COLLECTION = "sftl-lst"
#: Collection id of a COG export's catalog (``sftl export``).
COG_COLLECTION = "sftl-lst-cog"
#: The Collection of composite stores (:mod:`sftl_dask.composites`): one Item per tile and period.
COMPOSITES_COLLECTION = "sftl-lst-composites"
_PLATFORM, _INSTRUMENTS = "gf5-02", ["vimi"]
_ZARR = "application/vnd+zarr"
#: How xarray opens a tile store (``xarray:open_kwargs``): lazily, in the store's own chunks.
_OPEN_KWARGS = {"engine": "zarr", "consolidated": True, "chunks": {}}
#: Points per footprint edge: the edges of a UTM rectangle curve slightly in lon/lat.
_EDGE_POINTS = 8
_METADATA_KEYS = ("TopLeftLongitude", "TopLeftLatitude", "TopRightLongitude", "TopRightLatitude",
                  "BottomRightLongitude", "BottomRightLatitude", "BottomLeftLongitude", "BottomLeftLatitude",
                  "CloudPercent", "SolarZenith", "SolarAzimuth", "SatelliteZenith", "OrbitID")


def scene_stac_meta(meta: Mapping[str, Any]) -> dict[str, float]:
    """The product metadata an Item uses (corner lon/lat in deg, cloud %, sun and satellite angles in deg)."""
    return {k: float(meta[k]) for k in _METADATA_KEYS if k in meta}


# ---------------------------------------------------------------------------------------------------- scenes
def write_scene_stac(root: str | os.PathLike[str], scenes: Sequence[Mapping[str, Any]]) -> Path | None:
    """Add one Item per ingested scene to the scene cube's catalog ``<root>/stac``.

    Items already in the catalog are kept (a scene given again replaces its Item); Items written by
    older versions get their ring turned counter-clockwise and their extensions declared.

    Parameters
    ----------
    root : path
        The cube root (one store per grid).
    scenes : sequence of mapping
        Per scene: ``scene_id``, ``time`` (UTC datetime64), ``path`` (the product), ``store`` (its grid
        store), ``grid`` (the product's own :class:`~sftl_dask.geo.GeoBox`) and ``meta``
        (:func:`scene_stac_meta` of its metadata).

    Returns
    -------
    Path or None
        The root ``catalog.json``; None when there is no scene to add, or when ``root`` is an object-store URL
        (nothing is written: the catalog's relative links and its staged replacement are written for file
        systems only; see docs/cluster.md, "Object storage").
    """
    if not scenes or is_url(root):
        return None
    root = Path(root)
    stac_dir = root / "stac"
    kept = {i.id: _upgrade(i) for i in _read_items(stac_dir)}
    stores: dict[str, tuple[GeoBox, list[dict[str, Any]]]] = {}
    for s in scenes:
        store = str(s["store"])
        if store not in stores:
            stores[store] = read_slots(store)
        grid, slots = stores[store]
        checksum = next((x["checksum"] for x in slots if x["scene_id"] == s["scene_id"]), "")
        item = _scene_item(s, grid, checksum, stac_dir)
        kept[item.id] = item
    assets = {tile: store_asset(Path(st), CUBE_VARIABLES, stac_dir / SCENE_COLLECTION, product="scene cube")
              for tile, st in CubeRoot.of(root).stores().items()}
    return _save(stac_dir, kept.values(), collection_id=SCENE_COLLECTION, title="sftl-dask scene cube", assets=assets,
                 description="GF5-02 VIMI L1 scenes calibrated to TOA brightness temperature, with ERA5 water "
                             "vapour, ASTER GED + VCM emissivity and a cloud mask, on fixed tile grids (one Zarr "
                             "store per grid)")


def _scene_item(s: Mapping[str, Any], grid: GeoBox, checksum: str, stac_dir: Path) -> Any:

    m = s.get("meta") or {}
    corners = [(m.get(f"{c}Longitude"), m.get(f"{c}Latitude"))
               for c in ("TopLeft", "TopRight", "BottomRight", "BottomLeft")]
    own: GeoBox = s["grid"]
    if all(v is not None for pt in corners for v in pt):
        ring = _ccw([(float(x), float(y)) for x, y in corners] + [(float(corners[0][0]), float(corners[0][1]))])
    else:  # no corner metadata: the product's grid footprint
        ring = _footprint(own)
    item = _item(str(s["scene_id"]), ring, s["time"])
    if "CloudPercent" in m:
        EOExtension.ext(item, add_if_missing=True).cloud_cover = float(m["CloudPercent"])
    view = ViewExtension.ext(item, add_if_missing=True) if any(
        k in m for k in ("SolarZenith", "SolarAzimuth", "SatelliteZenith")) else None
    if view is not None:
        if "SolarZenith" in m:
            view.sun_elevation = 90.0 - float(m["SolarZenith"])
        if "SolarAzimuth" in m:
            view.sun_azimuth = float(m["SolarAzimuth"]) % 360.0
        if "SatelliteZenith" in m:
            view.incidence_angle = float(m["SatelliteZenith"])
    _set_projection(item, own)
    _set_grid_code(item, tile_name(s["store"]))
    item_dir = stac_dir / SCENE_COLLECTION / item.id
    _add_file_asset(item, "archive", Path(s["path"]), checksum, item_dir, title="VIMI L1 product")
    tile = tile_name(s["store"])
    cube = pystac.Asset(href=_rel(Path(s["store"]), item_dir), media_type=_ZARR, roles=["data"],
                        title=f"scene cube store of tile {tile}: all time steps; this scene's is time="
                              f"{_stamp(s['time'])} (scene_id {s['scene_id']})")
    item.add_asset("cube", cube)
    _set_projection(cube, grid)
    _set_bands(cube, CUBE_VARIABLES, grid)
    _set_processing(item, lineage="calibrated to TOA brightness temperature, ERA5 water vapour interpolated, "
                                  "ASTER GED + VCM emissivity, cloud mask; placed on the cube's tile grid")
    return item


def _upgrade(item: Any) -> Any:
    """An Item read back from the catalog: hrefs absolute (re-relativised on save), older Items fixed."""
    item.make_asset_hrefs_absolute()
    for key in [k for k in item.properties if k.startswith("sftl:")]:  # undeclared fields of older writers
        del item.properties[key]
    if item.geometry and item.geometry.get("type") == "Polygon":
        rings = item.geometry["coordinates"]
        item.geometry = {"type": "Polygon",
                         "coordinates": [_ccw(rings[0]), *[_ccw(r)[::-1] for r in rings[1:]]]}
    if any(k.startswith("eo:") for k in item.properties):
        EOExtension.add_to(item)
    if any(k.startswith("view:") for k in item.properties):
        ViewExtension.add_to(item)
    return item


# ---------------------------------------------------------------------------------------------------- LST
def write_lst_stac(lst_root_or_store: str | os.PathLike[str],
                   sources: Mapping[str, Mapping[str, tuple[str, str]]] | None = None) -> Path:
    """Write the STAC catalog of an LST output: one Item per grid and complete time step.

    The catalog is rebuilt from the stores (what they hold is the truth): ``<root>/stac`` for a root of
    LST stores, ``<parent>/<store name>_stac`` for a single store ``<parent>/<store name>.zarr``.

    Parameters
    ----------
    lst_root_or_store : path
        An LST store or a root of them (``sftl retrieve --out``).
    sources : mapping, optional
        Per scene-cube store (as the LST stores' ``source`` names it), what :func:`scene_sources` reads from it:
        scene id -> (product path, checksum). A caller that has just read them passes them (``sftl retrieve``:
        ~0.05 s a store saved); the stores not given are read.

    Returns
    -------
    Path
        The root ``catalog.json``.

    Raises
    ------
    ValueError
        If the path holds no LST store.
    """


    root = Path(lst_root_or_store)
    stores = lst_stores(root)
    if not stores:
        raise ValueError(f"{root}: no LST store here")
    single = CubeRoot(root).is_store
    stac_dir = root.parent / f"{root.name.removesuffix('.zarr')}_stac" if single else root / "stac"
    items, assets = [], {}
    known = {k: dict(v) for k, v in (sources or {}).items()}
    for tile, store in stores.items():
        ds = open_store(store, chunks=None)  # only the per-time arrays are read
        grid, _ = store_geometry(ds.attrs)
        variables = {k: {**dict(ds[k].attrs), "dtype": str(ds[k].dtype)} for k in LST_VARIABLES if k in ds}
        assets[tile] = store_asset(Path(store), variables, stac_dir / LST_COLLECTION, product="LST", ds=ds)
        ok = np.asarray(ds[LST_OK_VAR].values, dtype=bool)
        for i in np.flatnonzero(ok):
            scene_id, source = str(ds["scene_id"].values[i]), str(ds["source"].values[i])
            if source not in known:
                known[source] = scene_sources(source)
            items.append(_lst_item(ds.attrs, grid, ds["time"].values[i], scene_id, source,
                                   str(ds["checksum"].values[i]), known[source].get(scene_id),
                                   Path(store), variables, stac_dir))
        ds.close()
    return _save(stac_dir, items, collection_id=LST_COLLECTION, title="sftl-dask land surface temperature",
                 assets=assets,
                 description="Land surface temperature (K) with its uncertainty and QC flags from GF5-02 VIMI "
                             "thermal imagery by strategic fine-tuning transfer learning (SFTL), one Zarr store "
                             "per tile grid")


def write_composites_stac(root: str | os.PathLike[str], ok_var: str) -> Path:
    """Write the STAC catalog of a root of composite stores (``<root>/stac``), rebuilt from the stores.

    The Collection holds each tile store as an asset the Pangeo way (:func:`store_asset`: ``xpystac`` opens it);
    one Item per tile and complete period (``ok_var``), with ``start_datetime`` / ``end_datetime`` spanning the
    period (``sftl_composite_freq`` of the store) and the store as its ``composite`` asset.

    Returns
    -------
    Path
        The root ``catalog.json``.
    """
    root = Path(root)
    stac_dir = root / "stac"
    items, assets = [], {}
    for tile, store in CubeRoot(root).stores().items():
        ds = open_store(store, chunks=None)  # only the per-time arrays are read
        grid, _ = store_geometry(ds.attrs)
        variables = {k: {**dict(v.attrs), "dtype": str(v.dtype)} for k, v in ds.data_vars.items()
                     if v.dims == ("time", "y", "x")}
        assets[tile] = store_asset(Path(store), variables, stac_dir / COMPOSITES_COLLECTION, product="composite",
                                   ds=ds)
        step = pd.tseries.frequencies.to_offset(str(ds.attrs.get("sftl_composite_freq", "MS")))
        how = str(ds.attrs.get("sftl_composite_how", "median"))
        for i in np.flatnonzero(np.asarray(ds[ok_var].values, dtype=bool)):
            period, start = str(ds["scene_id"].values[i]), pd.Timestamp(ds["time"].values[i])
            item = _item(f"{period}_{tile}", _footprint(grid), start)
            end = start + step - pd.Timedelta(seconds=1)
            item.properties.update({"start_datetime": _stamp(start), "end_datetime": _stamp(end),
                                    "title": f"{how} LST of {period} on tile {tile}", "sftl_period": period})
            _set_projection(item, grid)
            _set_grid_code(item, tile)
            item_dir = stac_dir / COMPOSITES_COLLECTION / item.id
            asset = pystac.Asset(href=_rel(Path(store), item_dir), media_type=_ZARR, roles=["data"],
                                 title=f"composite store of tile {tile}: all periods; this item's is "
                                       f"time={_stamp(start)}")
            item.add_asset("composite", asset)
            _set_bands(asset, variables, grid)
            _set_processing(item, level="L3", lineage=f"{how} of the good LST values of {period} "
                                                      f"({ds.attrs.get('source_lst', '')})")
            items.append(item)
        ds.close()
    return _save(stac_dir, items, collection_id=COMPOSITES_COLLECTION, title="sftl-dask LST composites",
                 assets=assets, description="Composites of the good LST values of an sftl-dask LST cube, one Zarr "
                                            "store per tile, one time step per period")


def _lst_item(attrs: Mapping[str, Any], grid: GeoBox, when: Any, scene_id: str, source: str, checksum: str,
              product: tuple[str, str] | None, store: Path, variables: Mapping[str, Mapping[str, Any]],
              stac_dir: Path) -> Any:

    tile = tile_name(store)
    item = _item(item_id(scene_id, tile), _footprint(grid), when)
    item.properties["sftl_scene_id"] = scene_id
    item.properties["title"] = f"LST of scene {scene_id} on tile {tile}"
    _set_projection(item, grid)
    _set_grid_code(item, tile)
    item_dir = stac_dir / LST_COLLECTION / item.id
    asset = pystac.Asset(href=_rel(store, item_dir), media_type=_ZARR, roles=["data"],
                         title=f"LST store of tile {tile}: all time steps; this item's is time={_stamp(when)} "
                               "(the collection's asset opens it with xpystac; 'sftl export' writes COGs per step)")
    item.add_asset("lst", asset)
    _set_bands(asset, variables, grid)
    if product is not None:
        path, product_checksum = product
        _add_file_asset(item, "source", Path(path), product_checksum or checksum, item_dir,
                        title="VIMI L1 product the LST was retrieved from")
    scene_json = Path(source).parent / "stac" / SCENE_COLLECTION / scene_id / f"{scene_id}.json"
    if scene_json.is_file():
        item.add_link(pystac.Link("derived_from", _rel(scene_json, item_dir), media_type="application/json",
                                  title=f"scene {scene_id}"))
    model = f"{attrs.get('model_kind', 'unknown')} model (artifact sha256 {attrs.get('model_sha256', '?')})"
    _set_processing(item, level="L2",
                    lineage=f"LST retrieved from scene {scene_id} of the scene cube by a {model}")
    return item


def scene_sources(store: str) -> dict[str, tuple[str, str]]:
    """Scene id -> (product path, checksum) of a scene-cube store; empty if it cannot be read."""
    try:
        _, slots = read_slots(store)
    except (OSError, KeyError, ValueError):
        return {}
    return {s["scene_id"]: (s["source"], s["checksum"]) for s in slots if s["ingest_ok"]}


# ---------------------------------------------------------------------------------------------------- shared
def tile_name(store: str | os.PathLike[str]) -> str:
    """The tile name a store uses: its folder name without ``.zarr`` (``50N_134_009``)."""
    return Path(store).name.removesuffix(".zarr")


def item_id(scene_id: str, tile: str) -> str:
    """The id of a scene's Item on one tile: ``<scene id>_<tile name>`` (a scene covers several tiles)."""
    return f"{scene_id}_{tile}"


def store_asset(store: Path, variables: Mapping[str, Mapping[str, Any]], collection_dir: Path, *, product: str,
                ds: xr.Dataset | None = None) -> Any:
    """A tile store as a Collection-level asset the Pangeo way (what ``xpystac`` opens).

    It carries ``xarray:open_kwargs`` (xarray-assets extension), ``cube:dimensions``/``cube:variables``
    (datacube extension: x/y in m of the store's CRS, time in UTC), ``proj:*`` and ``raster:bands``.

    Parameters
    ----------
    store : Path
        The tile store.
    variables : mapping
        Raster variable name -> attributes with ``dtype`` (and ``units``, ``long_name``).
    collection_dir : Path
        Folder of the Collection's file (hrefs are relative to it).
    product : str
        What the store holds, for the title ("LST", "scene cube").
    ds : xarray.Dataset, optional
        The store opened (else it is opened here, metadata and time only).
    """
    own = ds is None
    ds = open_store(store, chunks=None) if ds is None else ds
    grid, _ = store_geometry(ds.attrs)
    times = pd.DatetimeIndex(ds["time"].values)
    if own:
        ds.close()
    tile = tile_name(store)
    asset = pystac.Asset(href=_rel(store, collection_dir), media_type=_ZARR, roles=["data"],
                         title=f"{product} store of tile {tile} ({len(times)} time steps)")
    XarrayAssetsExtension.ext(asset).open_kwargs = dict(_OPEN_KWARGS)  # declared by the Collection (no owner yet)
    left, bottom, right, top = grid.bounds
    epsg = int(grid.crs.split(":")[-1])
    span = [_stamp(times.min()), _stamp(times.max())] if len(times) else [None, None]
    cube = DatacubeExtension.ext(asset)
    cube.dimensions = {
        "x": Dimension.from_dict({"type": "spatial", "axis": "x", "extent": [left, right],
                                  "step": float(grid.transform[0]), "reference_system": epsg}),
        "y": Dimension.from_dict({"type": "spatial", "axis": "y", "extent": [bottom, top],
                                  "step": float(grid.transform[4]), "reference_system": epsg}),
        "time": Dimension.from_dict({"type": "temporal", "extent": span})}
    cube.variables = {name: Variable.from_dict({
        "dimensions": ["time", "y", "x"], "type": "data",
        **({"unit": str(spec["units"])} if spec.get("units") not in (None, "1") else {}),
        **({"description": str(spec["long_name"])} if spec.get("long_name") else {})})
        for name, spec in variables.items()}
    _set_projection(asset, grid)
    _set_bands(asset, variables, grid)
    return asset


def _stamp(when: Any) -> str:
    """A UTC time as ISO 8601 to the second, ``Z`` suffixed."""
    t = pd.Timestamp(when)
    return (t.tz_convert(None) if t.tzinfo else t).strftime("%Y-%m-%dT%H:%M:%SZ")


def _item(item_id: str, ring: list[tuple[float, float]], when: Any) -> Any:

    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    t = pd.Timestamp(when)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return pystac.Item(id=item_id, geometry={"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
                       bbox=[min(lons), min(lats), max(lons), max(lats)], datetime=t.to_pydatetime(),
                       properties={"platform": _PLATFORM, "instruments": list(_INSTRUMENTS)})


def _footprint(grid: GeoBox) -> list[tuple[float, float]]:
    """The grid's outline in lon/lat (deg), edges densified, closed and counter-clockwise."""
    left, bottom, right, top = grid.bounds
    t = np.linspace(0.0, 1.0, _EDGE_POINTS, endpoint=False)
    xs = np.concatenate([left + t * (right - left), np.full_like(t, right), right - t * (right - left),
                         np.full_like(t, left)])
    ys = np.concatenate([np.full_like(t, top), top - t * (top - bottom), np.full_like(t, bottom),
                         bottom + t * (top - bottom)])
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    ring = [(round(float(x), 7), round(float(y), 7)) for x, y in zip(lon, lat, strict=True)]
    return _ccw([*ring, ring[0]])


def _ccw(ring: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    """A closed ring in counter-clockwise order (positive shoelace area in lon/lat)."""
    pts = [(float(p[0]), float(p[1])) for p in ring]
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(pts))
    return pts if area2 > 0 else pts[::-1]


def _set_projection(obj: Any, grid: GeoBox) -> None:

    proj = ProjectionExtension.ext(obj, add_if_missing=getattr(obj, "owner", True) is not None)
    proj.code = grid.crs
    proj.shape = [grid.height, grid.width]
    proj.transform = [float(v) for v in grid.transform]
    proj.bbox = [float(v) for v in grid.bounds]


def _set_grid_code(item: Any, tile: str) -> None:

    GridExtension.ext(item, add_if_missing=True).code = f"SFTL-{tile}"


def _set_bands(asset: Any, variables: Mapping[str, Mapping[str, Any]], grid: GeoBox) -> None:

    bands = []
    for name, spec in variables.items():
        dtype = str(spec["dtype"])
        band = RasterBand.create(data_type=DataType(dtype), spatial_resolution=abs(float(grid.transform[0])),
                                 nodata=NoDataStrings.NAN if dtype.startswith("float") else None,
                                 unit=spec.get("units") if spec.get("units") not in (None, "1") else None)
        band.properties["name"] = name
        if spec.get("long_name"):
            band.properties["description"] = str(spec["long_name"])
        bands.append(band)
    RasterExtension.ext(asset, add_if_missing=asset.owner is not None).bands = bands


def _set_processing(item: Any, *, lineage: str, level: str | None = None) -> None:
    props: dict[str, Any] = {"processing:software": {"sftl-dask": __version__}, "processing:lineage": lineage}
    if level:
        props["processing:level"] = level
    item.properties.update(props)
    if PROCESSING_SCHEMA_URI not in item.stac_extensions:
        item.stac_extensions.append(PROCESSING_SCHEMA_URI)


def _add_file_asset(item: Any, key: str, path: Path, checksum: str, item_dir: Path, *, title: str) -> None:
    """Add a source product's asset; a single file gets ``file:checksum`` (sha2-256 multihash) and size."""
    is_tar = path.suffix.lower() == ".tar"
    asset = pystac.Asset(href=_rel(path, item_dir), media_type="application/x-tar" if is_tar else None,
                         roles=["source"], title=title)
    item.add_asset(key, asset)
    if is_tar and len(checksum) == 64:
        ext = FileExtension.ext(asset, add_if_missing=True)
        ext.checksum = "1220" + checksum  # multihash: 0x12 sha2-256, 0x20 = 32 bytes
        if path.is_file():
            ext.size = path.stat().st_size


def _rel(target: Path, item_dir: Path) -> str:
    """``target`` relative to the folder of an Item's file (POSIX separators)."""
    return Path(os.path.relpath(Path(target).resolve(), item_dir.resolve())).as_posix()


def _extent(items: Iterable[Any]) -> Any:

    items = list(items)
    boxes = np.array([i.bbox for i in items], dtype=np.float64)
    times = sorted(i.datetime for i in items)
    return pystac.Extent(
        pystac.SpatialExtent([[float(boxes[:, 0].min()), float(boxes[:, 1].min()), float(boxes[:, 2].max()),
                               float(boxes[:, 3].max())]]),
        pystac.TemporalExtent([[times[0], times[-1]]]))


def _read_items(stac_dir: Path) -> list[Any]:
    """The Items of an existing catalog (any layout this module or its predecessors wrote)."""
    cat = stac_dir / "catalog.json"
    if not cat.is_file():
        return []
    return list(pystac.Catalog.from_file(str(cat)).get_items(recursive=True))


def _save(stac_dir: Path, items: Iterable[Any], *, collection_id: str, title: str, description: str,
          assets: Mapping[str, Any] | None = None) -> Path:
    """Write ``catalog.json`` -> the Collection -> Items under ``stac_dir``, replacing it once complete.

    Without Items the catalog is written empty (a Collection needs an extent).
    """


    items = sorted(items, key=lambda i: (i.datetime, i.id))
    with staged_dir(stac_dir) as tmp:
        catalog = pystac.Catalog(id=f"{collection_id}-catalog", title=title, description=f"{title}: catalog root")
        if items:
            collection = pystac.Collection(id=collection_id, title=title, description=description,
                                           extent=_extent(items), license="other")
            catalog.add_child(collection)
            for key, asset in (assets or {}).items():  # hrefs relative to the collection's file
                collection.add_asset(key, asset)
            if assets:
                _declare_asset_extensions(collection)
            for item in items:
                for rel in ("root", "parent", "collection", "self"):
                    item.clear_links(rel)
                collection.add_item(item)
                item_dir = stac_dir / collection_id / item.id
                for asset in item.assets.values():  # read back from an older catalog: relative to the new place
                    if os.path.isabs(asset.href):
                        asset.href = _rel(Path(asset.href), item_dir)
        catalog.normalize_hrefs(str(tmp / "catalog.json"))  # a file href: the folder's name has a dot
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return stac_dir / "catalog.json"


def _declare_asset_extensions(collection: Any) -> None:
    """Declare the extensions of the Collection's assets' prefixed fields (and only those)."""
    uris = {"xarray": XarrayAssetsExtension.get_schema_uri(), "cube": DatacubeExtension.get_schema_uri(),
            "proj": ProjectionExtension.get_schema_uri(), "raster": RasterExtension.get_schema_uri()}
    used = {k.split(":")[0] for a in collection.assets.values() for k in a.extra_fields if ":" in k}
    collection.stac_extensions = sorted({*collection.stac_extensions, *(uris[p] for p in used if p in uris)})


# ---------------------------------------------------------------------------------------------------- COG exports
def write_cog_stac(out_dir: str | os.PathLike[str], items: Sequence[Mapping[str, Any]],
                   lst_stac: str | os.PathLike[str] | None = None) -> Path:
    """Write the STAC catalog of a COG export (``sftl export``): one Item per scene and tile.

    Each Item has one COG asset per variable (``lst``, ``lst_uncertainty``, ``qc``) with ``raster:bands``
    (data type, nodata, unit, resolution), ``file:checksum`` (sha2-256 multihash of the COG) and ``file:size``;
    ``proj:*`` of the tile grid on the Item; the source delivery as a ``source`` asset (with its checksum) and a
    ``via`` link; a ``derived_from`` link to the LST Item of the same scene and tile where ``lst_stac`` has it.
    What ``odc.stac.load`` and ``stackstac.stack`` need to place the COGs on their grid.

    Parameters
    ----------
    out_dir : path
        The export folder; the catalog goes to ``<out_dir>/stac`` (replaced as a whole once complete).
    items : sequence of mapping
        Per Item: ``scene_id``, ``tile``, ``time``, ``grid`` (:class:`~sftl_dask.geo.GeoBox`), ``model`` (text),
        ``product`` (path of the source delivery, or None), ``product_checksum`` (its sha256), and ``cogs``:
        variable -> mapping with ``path`` (the COG), ``sha256``, ``size`` (bytes), ``dtype``, ``nodata`` and the
        variable's attributes (``units``, ``long_name``).
    lst_stac : path, optional
        The LST cube's ``catalog.json``.

    Returns
    -------
    Path
        The root ``catalog.json``.
    """
    stac_dir = Path(out_dir) / "stac"
    lst_items = Path(lst_stac).parent / LST_COLLECTION if lst_stac is not None else None
    made = [_cog_item(spec, stac_dir, lst_items) for spec in items]
    return _save(stac_dir, made, collection_id=COG_COLLECTION, title="sftl-dask LST per scene (COG)",
                 description="Land surface temperature (K), its uncertainty (K) and QC bit flags from GF5-02 VIMI by "
                             "SFTL, one Cloud-Optimized GeoTIFF per scene, tile and variable on the LST cube's grid")


def _cog_item(spec: Mapping[str, Any], stac_dir: Path, lst_items: Path | None) -> Any:

    grid: GeoBox = spec["grid"]
    scene_id, tile = str(spec["scene_id"]), str(spec["tile"])
    item = _item(item_id(scene_id, tile), _footprint(grid), spec["time"])
    item.properties["title"] = f"LST of scene {scene_id} on tile {tile}"
    item.properties["sftl_scene_id"] = scene_id
    _set_projection(item, grid)
    _set_grid_code(item, tile)
    item_dir = stac_dir / COG_COLLECTION / item.id
    for name, cog in spec["cogs"].items():
        asset = pystac.Asset(href=_rel(Path(cog["path"]), item_dir), media_type=pystac.MediaType.COG,
                             roles=["data"], title=str(cog.get("long_name") or name))
        item.add_asset(name, asset)
        _set_bands(asset, {name: cog}, grid)
        if cog.get("nodata") is not None:  # integer flags; float bands have nodata NaN already
            RasterExtension.ext(asset).bands[0].nodata = int(cog["nodata"])
        ext = FileExtension.ext(asset, add_if_missing=True)
        ext.checksum, ext.size = "1220" + str(cog["sha256"]), int(cog["size"])
    if spec.get("product"):
        product = Path(spec["product"])
        _add_file_asset(item, "source", product, str(spec.get("product_checksum") or ""), item_dir,
                        title="VIMI L1 delivery the LST was retrieved from")
        item.add_link(pystac.Link("via", _rel(product, item_dir), title=f"source delivery {product.name}"))
    lst_json = lst_items / item.id / f"{item.id}.json" if lst_items is not None else None
    if lst_json is not None and lst_json.is_file():
        item.add_link(pystac.Link("derived_from", _rel(lst_json, item_dir), media_type="application/json",
                                  title=f"LST Zarr Item of scene {scene_id} on tile {tile}"))
    _set_processing(item, level="L2", lineage=f"LST retrieved from scene {scene_id} by a {spec['model']}; "
                                              "exported from the LST cube's tile store as COGs")
    return item
