"""Ingest: VIMI L1 archives + ERA5 + ASTER GED -> scene cubes, on Dask.

The driver (this process) only lists products, reads what it must to place them (scene id,
time, footprint: a scan task per new product), finds the fixed tiles each footprint touches
(:mod:`sftl_dask.geo`: per UTM zone, 40 m pixels, one Zarr store per tile), gives the scene a
time slot in every one of them, and writes the stores' metadata once. Workers do the heavy work,
one task per scene: decode and calibrate the archive and mask clouds on the product's own grid,
then, per tile, interpolate ERA5 water vapour, apply the GED emissivity (sampled once per tile)
and the Vegetation Cover Method, and write the part of the tile the scene covers. No pixel is
clipped and no grid ever grows or merges. A scene's slots are marked complete only after all its
tiles are written; a failed scene is recorded in the ingest log with its reason and re-running
retries it in the same slots and skips every scene already complete. Slots are appended in
arrival order (each run sorted by time): readers sort by time (:func:`sftl_dask.io.stores.open_cube`,
the API), so a later run may bring older scenes without rewriting any store.

A product in raw sensor geometry (RPCs, no CRS) is placed by :func:`sftl_dask.io.inspect.sensor_product_grid`
(the rule ``sftl inspect`` prints); its task calibrates DN to BT and NDVI, masks clouds and computes the RPC
view zenith on the image grid, then warps them straight onto each tile's window by the RPCs and the DEM
(:func:`sftl_dask.io.ortho.orthorectify`; bilinear, the cloud mask nearest). Without ``--dem`` the DEM is the
GDEM layer of the ``--ged`` tiles (:class:`sftl_dask.io.ortho.GedDem`, 100 m; one warning per run), and a scene
whose GED tiles hold no GDEM there is warped at its RPC height offset (warned, naming it). Each time step records
the calibration source and the DEM used (:data:`sftl_dask.io.cube.PROVENANCE_VARS`). Map-projected products take
the path they always took.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import dask
import numpy as np
import xarray as xr
from pyproj import Transformer
from rasterio.enums import Resampling

from sftl_dask.cluster import in_worker, run_tasks
from sftl_dask.geo import DEFAULT_TILE_PX, GeoBox, TileScheme, Window, geometry_attrs, utm_epsg
from sftl_dask.io.cube import CUBE_VARIABLES, append_slots, mark_slot, read_slots, write_log, write_scene
from sftl_dask.io.era5 import era5_wvc_on_grid, open_era5_tcwv
from sftl_dask.io.ged import ged_on_grid, ged_vimi_channels, vimi_emissivity
from sftl_dask.io.inspect import sensor_product_grid
from sftl_dask.io.location import Location, join, location, makedirs
from sftl_dask.io.ortho import FLAT_DEM, Dem, DemError, GedDem, open_dem, orthorectify
from sftl_dask.io.rpc import Rpc
from sftl_dask.io.stac import scene_stac_meta, write_scene_stac
from sftl_dask.io.stores import cube_stores, cube_tiling
from sftl_dask.io.vimi import VimiProduct, find_products, product_checksum
from sftl_dask.physics.channels import THERMAL_NAMES
from sftl_dask.physics.cloud import cloud_mask
from sftl_dask.staging import check_unlocked, write_lock

__all__ = ["IngestError", "check_ingest", "ingest"]

#: Global attributes of new scene-cube stores (CF-1.11 section 2.6.2).
_CUBE_ATTRS = {
    "institution": "sftl-dask",
    "source": "GF5-02 VIMI L1 products; ERA5 total column water vapour; ASTER GED AG100 emissivity",
    "references": "Hersbach et al. 2020, QJRMS 146:1999 (ERA5); Hulley et al. 2015, GRL 42:7966 (ASTER GED); "
                  "Heidarian et al. 2025, Remote Sensing 17:3803 (SFTL)",
}


class IngestError(ValueError):
    """Bad input to the ingest as a whole (no products, unreadable ancillary files)."""


def _scan(path: str, calibration: str | None = None, dem: Dem | GedDem | None = None) -> dict[str, Any]:
    """Scene id, time, grid and footprint of one product (worker task)."""
    try:
        prod = VimiProduct(path, calibration=calibration)
        if prod.geometry == "sensor":
            return _scan_sensor(prod, path, dem)
        ds = prod.open(chunks=None)
        tr = ds.rio.transform()
        crs = ds.rio.crs
        ds_grid = (tr.a, tr.b, tr.c, tr.d, tr.e, tr.f), ds.sizes["x"], ds.sizes["y"]
        meta = prod.metadata
        ds.close()  # releases the GeoTIFF handles
        try:
            crs_text = f"EPSG:{utm_epsg(crs)}"
        except ValueError as exc:
            return {"ok": False, "path": path, "scene_id": prod.stem, "reason": str(exc), "bad_crs": True}
        grid = GeoBox(crs_text, *ds_grid)
        return {"ok": True, "path": path, "scene_id": prod.stem, "time": np.datetime64(meta["CenterTime"], "ns"),
                "grid": grid, "cloud_percent": float(meta.get("CloudPercent", np.nan)), "meta": scene_stac_meta(meta),
                "calibration_source": prod.calibration[1], "dem": MAP_DEM}
    except (ValueError, OSError) as exc:
        return {"ok": False, "path": path, "scene_id": _stem(path), "reason": _one_line(exc)}


#: What a map-projected product records as its DEM: it was not orthorectified here.
MAP_DEM = "n/a (map-projected product)"


def _sensor_rpc(prod: VimiProduct) -> tuple[Rpc, int, int]:
    """The thermal raster's RPCs and the image size (lines, samples) of a sensor-geometry product.

    Raises VimiFormatError (naming the product and the member) on missing or malformed RPCs.
    """
    with prod.open(chunks=None) as ds:
        shape = (ds.sizes["y"], ds.sizes["x"])
    return prod.rpc(), *shape


def _scan_sensor(prod: VimiProduct, path: str, dem: Dem | GedDem | None) -> dict[str, Any]:
    """:func:`_scan` of a product in sensor geometry: its grid by the shared rule, its DEM checked (``--dem``:
    covers the footprint; GED's GDEM: holds heights there, else the flat height and ``flat_reason``)."""
    rpc, lines, samples = _sensor_rpc(prod)
    grid, bounds = sensor_product_grid(rpc, lines, samples)
    if isinstance(dem, Dem) and not dem.covers(bounds):
        raise DemError(f"{path}: DEM {dem.path} does not cover the footprint lon {bounds[0]:.4f}..{bounds[2]:.4f} "
                       f"lat {bounds[1]:.4f}..{bounds[3]:.4f}")
    flat_reason = ""  # why the warp takes the flat RPC height
    if dem is None:
        flat_reason = "no DEM given (--dem)"
    elif isinstance(dem, GedDem):
        flat_reason = dem.heights(bounds)[1]
    meta = prod.metadata
    return {"ok": True, "path": path, "scene_id": prod.stem, "time": np.datetime64(prod.time, "ns"), "grid": grid,
            "cloud_percent": float(meta.get("CloudPercent", np.nan)), "meta": scene_stac_meta(meta),
            "calibration_source": prod.calibration[1], "dem": FLAT_DEM if flat_reason else dem.path,
            "sensor": True, "flat_reason": flat_reason}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _ged_for_grid(ged_dir: str, grid: GeoBox) -> dict[str, Any]:
    """GED emissivity, NDVI and coverage sampled on a grid (once per grid, worker task).

    When no tile covers the grid (or a covering tile is unreadable) the result is ``{"error": reason}``,
    so that grid's scenes fail with that reason and the other grids' scenes still go in.
    """
    try:
        g = ged_on_grid(ged_dir, grid.x, grid.y, grid.crs)
    except (ValueError, OSError) as exc:
        return {"error": _one_line(exc).split(": ", 1)[-1]}
    # the ASTER -> VIMI conversion is static: done once per grid; each scene adds only its NDVI (VCM)
    return {"emissivity": ged_vimi_channels(g["emis_aster"].values), "ndvi": g["ndvi_ged"].values,
            "water": g["water"].values, "ged_missing": g["ged_missing"].values}


@lru_cache(maxsize=8)
def _open_era5(paths: tuple[str, ...]) -> Any:
    """ERA5 ``tcwv`` of these files, opened lazily once per worker process (scenes of a month share it)."""
    return open_era5_tcwv(list(paths))


class TileTarget(NamedTuple):
    """Where one scene goes in one tile: the tile's store, the scene's slot there, and what its task needs."""

    store: str
    index: int
    tile: str
    grid: GeoBox
    era5: list[str]
    ged_origin: tuple[int, int]  # (row, col) of the tile where its GED arrays (the batch region) start


def _ingest_scene(path: str, targets: list[TileTarget], geds: list[dict[str, Any]], cloud_percent: float,
                  source: SceneSource | None = None) -> dict[str, Any]:
    """Decode one product and write it into every tile it touches (worker task).

    Lazy Dask-backed inputs (the ERA5 field) are computed in this task's own thread: inside a distributed
    worker Dask's default scheduler is the cluster itself, and nested per-chunk tasks from every scene
    would slow the decode (measured 2x), move chunks between workers and hold their memory there.
    """
    try:
        with dask.config.set(scheduler="synchronous"):
            return _decode_scene(path, targets, geds, cloud_percent, source or SceneSource())
    finally:
        _release_heap(collect=in_worker())


@lru_cache(maxsize=1)
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim`` (None on other C libraries)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_HEAP_FROZEN = False  # whether _release_heap froze this worker's objects


def _release_heap(collect: bool = True) -> None:
    """Free what a scene left behind in the worker, then give the free pages of its heap back to the system.

    First a full garbage collection: the scene's reader objects end in reference cycles (xarray caches each
    accessor, ``.rio`` included, on the object it wraps; the reader's lazy arrays share their last DN window),
    and those cycles hold the scene's loaded variables and DN (~20 MB per 640 px scene). In a worker holding
    ~900k Python objects the collector's oldest generation runs only every few dozen scenes, so this garbage
    piled up with the archive's length: malloc's bytes in use grew ~20 MB a scene, the peak worker RSS +19..38 %
    from N to 4N scenes (bench_ingest). Collected here, in use stays flat (N -> 4N: -2 %), for 0.1-0.3 s a scene
    on 2 loaded cores.

    Then glibc's ``malloc_trim``: a scene's arrays (hundreds of MB) are freed inside the heap, which the workers'
    malloc settings keep (``MALLOC_TRIM_THRESHOLD_``, :mod:`sftl_dask.cluster`, tuned for retrieval). Measured on
    2 workers (bench_ingest's memory runs): peak worker RSS 728 -> 640 MB at 40 scenes and 870 -> 760 MB at 160.

    ``collect``: the full collection runs only in a worker (what grows there is the archive); a scene ingested in
    the caller's own threads leaves its cycles to the caller's collector. A full collection scans every object of
    the process: 0.17-0.2 s with the package, torch and distributed imported, more in a process holding a test
    suite's or a notebook's objects (the suite's in-process ingests: ~+140 s of CPU on 2 cores with it).

    So after the worker's first collection, what it holds then (its modules, caches and own state: ~320k objects)
    is frozen (``gc.freeze``): later collections scan only what was allocated since, the scene's cycles among it.
    A full collection in such a process: 0.16 s before, 0.004 s after (2 cores). A cycle among the frozen objects
    that later becomes garbage stays (they are long-lived by then); objects freed by their count go as before.
    """
    global _HEAP_FROZEN
    if collect:
        gc.collect()
        if not _HEAP_FROZEN:
            gc.freeze()
            _HEAP_FROZEN = True
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class SceneSource(NamedTuple):
    """How one scene is read: the user's calibration table, and the DEM of its orthorectification."""

    calibration: str | None = None
    dem: Dem | GedDem | None = None


def _decode_scene(path: str, targets: list[TileTarget], geds: list[dict[str, Any]], cloud_percent: float,
                  source: SceneSource) -> dict[str, Any]:
    t0 = time.perf_counter()
    record = {"scene_id": _stem(path), "source": path, "tiles": [t.tile for t in targets],
              "slots": [[t.store, t.index] for t in targets]}
    try:
        for g in geds:
            if "error" in g:
                raise ValueError(f"ASTER GED: {g['error']}")
        prod = VimiProduct(path, calibration=source.calibration)
        if prod.geometry == "sensor":
            return _decode_sensor_scene(prod, path, targets, geds, cloud_percent, source.dem, (t0, record))
        ds = prod.open(chunks=None)  # lazily indexed, read whole here; a Dask-chunked one could not be closed
        tr = ds.rio.transform()
        sgrid = GeoBox(targets[0].grid.crs, (tr.a, tr.b, tr.c, tr.d, tr.e, tr.f), ds.sizes["x"], ds.sizes["y"])
        names = [*THERMAL_NAMES, "ndvi", "vza"] + [k for k in ("red", "ndsi") if k in ds]
        own = {k: ds[k].values.astype(np.float64) for k in names}
        ds.close()  # else xarray's file cache keeps the product open and its blocks stay in GDAL's cache
        valid = np.isfinite(own["bt_10_80"])
        if not valid.any():
            raise ValueError("the scene holds no valid pixel")
        # The cloud mask on the product's own grid: its tests and edge buffer see the whole scene, whatever the tiles.
        ndsi = own.pop("ndsi", None)  # only the cloud test's snow test uses it
        own["cloud"] = cloud_mask(own["bt_10_80"], own["ndvi"], own.get("red"), ndsi=ndsi,
                                  cloud_percent=cloud_percent).astype(np.float64)
        era5 = _open_era5(tuple(sorted({f for t in targets for f in t.era5})))
        scene = _Scene(own, sgrid, np.datetime64(prod.metadata["CenterTime"], "ns"), product_checksum(path), era5)
        return {**record, **_write_scene_tiles(scene, targets, geds), "seconds": round(time.perf_counter() - t0, 2)}
    except (ValueError, OSError, KeyError) as exc:
        return {**record, "status": "failed", "reason": _one_line(exc)}


def _write_scene_tiles(scene: _Scene, targets: list[TileTarget], geds: list[dict[str, Any]]) -> dict[str, Any]:
    """Write a decoded scene into every tile it touches, then mark its slots complete; the record's counts.

    Raises ValueError if no pixel of the scene lands in its tiles.
    """
    written, covered_px, cloud_px = 0, 0, 0
    per_tile: list[tuple[int, np.ndarray | int]] = []
    for target, ged in zip(targets, geds, strict=True):
        counts = _write_tile_part(scene, target, ged)
        per_tile.append((0, 0) if counts is None else (counts[0], counts[2]))
        if counts is not None:
            written += 1
            covered_px += counts[0]
            cloud_px += counts[1]
    if not covered_px:
        raise ValueError("the scene does not overlap its tiles")
    # Only now, with every tile written, do the scene's slots count as complete, with their chunk-coverage index.
    # Slots of tiles that only no-data pixels touched are marked too (they hold fill, valid_px 0 and an index of
    # zeros: retrieval plans nothing there).
    for t, (n, coverage) in zip(targets, per_tile, strict=True):
        mark_slot(t.store, t.index, "ingest_ok", checksum=scene.checksum, valid_px=n, coverage=coverage)
    return {"status": "ingested", "covered_px": covered_px, "tiles_written": written,
            "cloud_fraction": round(cloud_px / covered_px, 4)}


def _decode_sensor_scene(prod: VimiProduct, path: str, targets: list[TileTarget], geds: list[dict[str, Any]],
                         cloud_percent: float, dem: Dem | GedDem | None, started: tuple[float, dict[str, Any]]
                         ) -> dict[str, Any]:
    """:func:`_decode_scene` of a product in sensor geometry: calibrate, mask clouds and compute the RPC view
    zenith on the image grid, then warp onto each tile window (by the DEM, else at the RPC height offset).

    The DEM step (``--dem`` mosaic or GED's GDEM written to ``/vsimem/``) is timed in the record's ``dem_seconds``.

    The record carries ``seconds`` and ``warp_seconds`` (the RPC warps alone, every tile).
    """
    t0, record = started
    rpc = prod.rpc()
    with prod.open(chunks=None) as ds:  # the reader's vza is the RPC line of sight per image pixel already
        names = [*THERMAL_NAMES, "ndvi", "vza"] + [k for k in ("red", "ndsi") if k in ds]
        own = {k: ds[k].values.astype(np.float32) for k in names}
        lines, samples = ds.sizes["y"], ds.sizes["x"]
    if not np.isfinite(own["bt_10_80"]).any():
        raise ValueError("the scene holds no valid pixel")
    own["cloud"] = cloud_mask(own["bt_10_80"], own["ndvi"], own.get("red"), ndsi=own.get("ndsi"),
                              cloud_percent=cloud_percent).astype(np.float32)
    own.pop("red", None)  # only the cloud test uses them
    own.pop("ndsi", None)
    era5 = _open_era5(tuple(sorted({f for t in targets for f in t.era5})))
    grid, bounds = sensor_product_grid(rpc, lines, samples)
    warp = _Warp(rpc, None)
    if dem is None:
        return _finish_sensor(_Scene(own, grid, np.datetime64(prod.time, "ns"), product_checksum(path), era5, warp),
                              targets, geds, record, t0)
    t_dem = time.perf_counter()
    with dem.for_footprint(bounds, path) as dem_path:  # GED's GDEM: None (flat) where the tiles hold none
        record = {**record, "dem_seconds": round(time.perf_counter() - t_dem, 3)}
        warp = _Warp(rpc, dem_path)
        scene = _Scene(own, grid, np.datetime64(prod.time, "ns"), product_checksum(path), era5, warp)
        return _finish_sensor(scene, targets, geds, record, t0)


def _finish_sensor(scene: _Scene, targets: list[TileTarget], geds: list[dict[str, Any]], record: dict[str, Any],
                   t0: float) -> dict[str, Any]:
    out = _write_scene_tiles(scene, targets, geds)
    assert scene.warp is not None
    return {**record, **out, "seconds": round(time.perf_counter() - t0, 2),
            "warp_seconds": round(scene.warp.seconds[0], 3)}


@dataclass
class _Warp:
    """The RPC warp of a sensor-geometry scene: its model, the DEM path (None: flat), and the time spent (s).

    One GDAL warp per scene, onto the scene's own grid (the footprint's, on the tiles' lattice), made once and
    sliced by every tile window: the values of a pixel must not depend on which tiles a run happens to cut
    (warps onto two tilings of one scene differed by up to 7.9 K and 1,276 valid pixels at the footprint's
    no-data edges: GDAL's source windows follow the destination). The continuous variables (bilinear) are
    stacked with two index bands, the image line and sample of each pixel. Bilinear reproduces a linear field
    exactly, so the warped index bands are the source position of every output pixel, and the cloud mask is
    picked there by nearest (rounded index): the mask's own nearest-neighbour warp, without a second pass of the
    RPC transformer (which measured as costly as the six-band bilinear warp: 0.44 s each per 640 x 640 scene).
    """

    rpc: Rpc
    dem_path: str | None
    seconds: list[float] = field(default_factory=lambda: [0.0])
    on_grid: dict[str, np.ndarray] = field(default_factory=dict)

    def window(self, own: dict[str, np.ndarray], grid: GeoBox, window: tuple[int, int, int, int]
               ) -> dict[str, np.ndarray]:
        """The warped variables on ``window`` (y0, y1, x0, x1) of the scene grid ``grid``."""
        if not self.on_grid:
            self.on_grid.update(self.onto(own, grid))
        y0, y1, x0, x1 = window
        return {k: v[y0:y1, x0:x1].astype(np.float64) for k, v in self.on_grid.items()}

    def onto(self, own: dict[str, np.ndarray], grid: GeoBox) -> dict[str, np.ndarray]:
        """The image's variables warped onto ``grid`` (one GDAL warp; the cloud mask at the warped index), float32."""
        t = time.perf_counter()
        lines, samples = np.indices(own["cloud"].shape, dtype=np.float32)
        bands = {k: v for k, v in own.items() if k != "cloud"}
        out = orthorectify({**bands, "image_line": lines, "image_sample": samples}, self.rpc, grid,
                           dem_path=self.dem_path)
        line, sample = out.pop("image_line"), out.pop("image_sample")
        hit = np.isfinite(line) & np.isfinite(sample)
        h, w = own["cloud"].shape
        cloud = np.full(line.shape, np.nan, dtype=np.float32)
        cloud[hit] = own["cloud"][np.clip(np.rint(line[hit]).astype(np.intp), 0, h - 1),
                                  np.clip(np.rint(sample[hit]).astype(np.intp), 0, w - 1)]
        self.seconds[0] += time.perf_counter() - t
        return {**out, "cloud": cloud}


@dataclass(frozen=True)
class _Scene:
    """A decoded product on its own grid: rasters, grid, centre time, checksum, and its ERA5 field.

    ``warp`` is set for a product in sensor geometry: ``own`` is then on the image grid, ``grid`` the footprint's
    grid (:func:`~sftl_dask.io.inspect.sensor_product_grid`), and each tile window is warped to by the RPCs.
    """

    own: dict[str, np.ndarray]
    grid: GeoBox
    time: np.datetime64
    checksum: str
    era5: Any
    warp: _Warp | None = None


def _write_tile_part(scene: _Scene, target: TileTarget, ged: dict[str, Any]
                     ) -> tuple[int, int, np.ndarray] | None:
    """Write the part of one tile a scene covers (slot not marked); its (covered, cloud) pixel counts and its
    chunk-coverage index.

    None when the scene's footprint misses the tile, or only no-data pixels of the product fall in it.
    """
    hit = target.grid.overlap(scene.grid)
    if hit is None:
        return None
    window, off = hit
    y0, y1, x0, x1 = window
    wgrid = target.grid.window(window)
    if scene.warp is not None:  # sensor geometry: the scene's warp, cut at the tile window
        if off is None:  # sensor_product_grid snaps to the 40 m lattice the tiles are anchored on
            raise ValueError(f"the scene grid is off the lattice of tile {target.store}")
        vals = scene.warp.window(scene.own, scene.grid, (y0 - off[0], y1 - off[0], x0 - off[1], x1 - off[1]))
    elif off is not None:
        r, c = off
        vals = {k: v[y0 - r : y1 - r, x0 - c : x1 - c] for k, v in scene.own.items()}
    else:  # another lattice: resample onto the window (bilinear; the cloud mask by nearest)
        vals = _resample(scene.own, scene.grid, wgrid)
    covered = np.isfinite(vals["bt_10_80"])
    if not covered.any():
        return None
    cloud = np.where(covered, vals["cloud"] > 0.5, False)
    wvc = np.where(covered, era5_wvc_on_grid(scene.era5, scene.time, wgrid.x, wgrid.y, wgrid.crs), np.nan)
    # the GED arrays start at the tile's ged_origin: the part of it this run's scenes cover (the batch region)
    gy, gx = target.ged_origin
    gw = {k: (v[..., y0 - gy : y1 - gy, x0 - gx : x1 - gx] if isinstance(v, np.ndarray) else v)
          for k, v in ged.items()}
    emis = vimi_emissivity(gw["emissivity"], gw["ndvi"], vals["ndvi"], water=gw.get("water"), converted=True)
    emis = np.where(covered[None], emis, np.nan)
    missing = covered & (gw["ged_missing"].astype(bool) | ~np.isfinite(wvc))
    data = {**{k: vals[k] for k in THERMAL_NAMES}, "vza": vals["vza"], "ndvi": vals["ndvi"], "wvc": wvc,
            **{n.replace("bt_", "emis_"): emis[i] for i, n in enumerate(THERMAL_NAMES)},
            "cloud": cloud.astype(np.uint8), "ancillary_missing": missing.astype(np.uint8)}
    coverage = write_scene(target.store, target.index, {k: data[k] for k in CUBE_VARIABLES}, scene.checksum,
                           window=window, mark=False)
    return int(covered.sum()), int(cloud.sum()), coverage


def _resample(own: dict[str, np.ndarray], sgrid: GeoBox, wgrid: GeoBox) -> dict[str, np.ndarray]:
    """A product's rasters resampled onto a window grid (bilinear; the cloud mask nearest)."""
    src = xr.Dataset({k: (("y", "x"), v) for k, v in own.items()}, coords={"y": sgrid.y, "x": sgrid.x})
    src = src.rio.write_crs(sgrid.crs).rio.write_transform(sgrid.affine)
    shape = (wgrid.height, wgrid.width)
    out = {}
    for method, keys in ((Resampling.bilinear, [k for k in own if k != "cloud"]), (Resampling.nearest, ["cloud"])):
        rp = src[keys].rio.reproject(wgrid.crs, shape=shape, transform=wgrid.affine, resampling=method,
                                     nodata=np.nan)
        out.update({k: rp[k].values.astype(np.float64) for k in keys})
    return out


def ingest(
    inputs: Sequence[str | os.PathLike[str]],
    cube: str | os.PathLike[str],
    *,
    era5: Sequence[str | os.PathLike[str]],
    ged: str | os.PathLike[str],
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
    tile_px: int | None = None,
    dem: str | os.PathLike[str] | None = None,
    calibration: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Ingest VIMI L1 products into the fixed tiles of a scene cube under ``cube``; returns a summary.

    Parameters
    ----------
    inputs : sequence of path
        Product archives (``.tar``), extracted product folders, or folders holding them.
    cube : path or str
        Cube root folder (one store per tile inside, ``<zone><N|S>_<row>_<col>.zarr``), or an fsspec URL
        (``s3://bucket/prefix``; credentials from the environment, :mod:`sftl_dask.io.location`).
    era5 : sequence of path
        ERA5 ``tcwv`` NetCDF (or GRIB) files covering the scenes' times and areas.
    ged : path
        Folder of ASTER GED AG100 tiles.
    client : distributed.Client, optional
        Runs scans and scenes as tasks; without one, in this process.
    progress : callable, optional
        ``progress(done, total)`` over scene tasks.
    tile_px : int, optional
        Tile edge (40 m pixels) of a new cube (default :data:`~sftl_dask.geo.DEFAULT_TILE_PX`); an
        existing cube keeps its own, and a different value is refused.
    dem : path, optional
        DEM (GeoTIFF/COG, VRT, or a folder of tiles) for products in sensor geometry (one missing a footprint fails
        that scene); none: the ``ged`` tiles' GDEM, warned (where they hold none, the RPC height offset, warned).
    calibration : path, optional
        Calibration table for products whose XML has no GAINS/OFFSETS (``vimi_calibration.csv`` format).

    Returns
    -------
    dict
        Counts of ingested, skipped and failed scenes, the stores, and the wall time.

    Raises
    ------
    IngestError
        If no product is found, an ERA5 file, the GED folder, the DEM or the calibration table is missing or
        unreadable, a product's CRS is not a UTM zone, or the cube root holds tiles of another size (or pre-tile
        grids).
    StoreBusyError
        If another process is writing the cube (holds its write lock).
    """
    t0 = time.perf_counter()
    root = location(cube)
    scheme, products = _check_inputs(inputs, root, era5, ged, tile_px)
    era5_index = _era5_index(era5, client)
    source = _check_sources(dem, calibration, ged)

    with write_lock(root, "sftl ingest"):  # one writer per cube: a second run is refused, never interleaved
        state = _CubeState.read(root)
        log: list[dict[str, Any]] = [{"scene_id": _stem(p), "status": "skipped", "reason": "already in the cube",
                                      "source": p} for p in products if _stem(p) in state.done]
        todo = [p for p in products if _stem(p) not in state.done]
        scans = _scan_new(todo, client, log, source)
        scheme = _anchor_new_zones(scheme, scans)
        makedirs(root)
        _assign_slots(root, scheme, scans, state)
        args = _scene_tasks(scans, state.tiles, str(ged), era5_index, client, source)
        results = _map(_ingest_scene, args, client, progress=progress)
        log += results
        ok = [r for r in results if r["status"] == "ingested"]
        done_ids = {r["scene_id"] for r in ok}
        write_scene_stac(root, [{**s, "store": next(iter(s["targets"].values()))[0]}
                                for s in scans if s["scene_id"] in done_ids])
        stamp = np.datetime64("now", "s")
        write_log(root, [{"logged_utc": str(stamp), **r} for r in log])
        return {"ingested": len(ok), "skipped": sum(r["status"] == "skipped" for r in log),
                "failed": [r for r in log if r["status"] == "failed"],
                "stores": sorted({str(p) for p in cube_stores(root).values()}), "tile_px": scheme.tile_px,
                "seconds": round(time.perf_counter() - t0, 2)}


def check_ingest(inputs: Sequence[str | os.PathLike[str]], cube: str | os.PathLike[str], *,
                 era5: Sequence[str | os.PathLike[str]], ged: str | os.PathLike[str], tile_px: int | None = None,
                 ) -> dict[str, Any]:
    """Check an ingest's inputs without touching anything: what :func:`ingest` checks before it reads the ERA5
    files' contents (on the cluster, in parallel), for a refusal before a cluster starts.

    Returns
    -------
    dict
        ``products`` (how many were found) and ``tile_px`` (the cube's tile edge, or the new cube's).

    Raises
    ------
    IngestError
        As :func:`ingest`, for the ERA5 paths, the GED folder, the cube's tiles and the inputs.
    StoreBusyError
        If another process is writing the cube.
    OSError
        If the cube's write lock could not be made (read-only file system, no write permission).
    """
    root = location(cube)
    check_unlocked(root)
    scheme, products = _check_inputs(inputs, root, era5, ged, tile_px)
    return {"products": len(products), "tile_px": scheme.tile_px}


def _check_inputs(inputs: Sequence[str | os.PathLike[str]], root: Location, era5: Sequence[str | os.PathLike[str]],
                  ged: str | os.PathLike[str], tile_px: int | None) -> tuple[TileScheme, list[str]]:
    """The cube's tile scheme (or a new one) and the products to ingest.

    Bad input is refused here, before any work, in this order: ERA5 files, GED folder, the cube's tiles,
    the inputs (then :func:`ingest` reads the ERA5 files' contents, and opens the DEM).

    Raises
    ------
    IngestError
        As :func:`ingest` does.
    """
    for p in map(Path, era5):
        if not p.is_file():
            raise IngestError(f"{p}: ERA5 file not found")
    if not era5:
        raise IngestError("no ERA5 file given (--era5)")
    if not Path(ged).is_dir():
        raise IngestError(f"{ged}: GED folder not found")
    try:
        existing = cube_tiling(root)
        scheme = existing if existing is not None else TileScheme(tile_px or DEFAULT_TILE_PX)
    except ValueError as exc:
        raise IngestError(str(exc)) from None
    if existing is not None and tile_px is not None and tile_px != existing.tile_px:
        raise IngestError(f"{root}: holds tiles of {existing.tile_px} px x {existing.pixel_m:g} m, not "
                          f"{tile_px} px (--tile-size): ingest into another cube root")
    return scheme, _products_of(inputs)


def _check_sources(dem: str | os.PathLike[str] | None, calibration: str | os.PathLike[str] | None,
                   ged: str | os.PathLike[str] | None = None) -> SceneSource:
    """The DEM (opened: its tiles' extents; without one, the GDEM layer of the ``ged`` tiles) and the calibration
    table, checked before any work.

    Raises
    ------
    IngestError
        If the DEM is missing, holds no tile or an unreadable one, or the calibration table is not a file.
    """
    if calibration is not None and not Path(calibration).is_file():
        raise IngestError(f"{calibration}: calibration table not found (--calibration)")
    try:
        opened = open_dem(dem) if dem is not None else None if ged is None else GedDem(str(ged))
    except DemError as exc:
        raise IngestError(f"{exc} (--dem)") from None
    return SceneSource(None if calibration is None else str(calibration), opened)


def _products_of(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The VIMI L1 products in ``inputs`` (archives, product folders, or folders holding them).

    Raises
    ------
    IngestError
        If an input does not exist or no product is found.
    """
    for p in inputs:
        if not Path(p).exists():
            raise IngestError(f"{p}: no such file or directory")
    products = [str(p) for p in find_products([Path(p) for p in inputs])]
    if not products:
        raise IngestError(f"no VIMI L1 products found in {', '.join(str(p) for p in inputs)}")
    return products


@dataclass
class _CubeState:
    """What is already in a cube: each tile's grid, and each scene's slot (store, index, complete) per tile."""

    tiles: dict[str, GeoBox] = field(default_factory=dict)
    slots_of: dict[str, dict[str, tuple[str, int, bool]]] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Location) -> _CubeState:
        state = cls()
        for name, store in cube_stores(root).items():
            grid, slots = read_slots(store)
            state.tiles[name] = grid
            for s in slots:
                state.slots_of.setdefault(s["scene_id"], {})[name] = (str(store), s["index"], s["ingest_ok"])
        return state

    @property
    def done(self) -> set[str]:
        """Scenes complete in every tile they have a slot in."""
        return {k for k, v in self.slots_of.items() if all(ok for *_, ok in v.values())}


def _scan_new(todo: list[str], client: Any, log: list[dict[str, Any]], source: SceneSource | None = None
              ) -> list[dict[str, Any]]:
    """Scan the products to ingest (worker tasks): the readable ones, sorted by time, each scene once.

    Unreadable products (missing or malformed RPCs, a DEM that misses the footprint included) and duplicates
    are appended to ``log``. Sensor-geometry scenes on GED's GDEM are warned about once, and those warped at the
    flat RPC height (no GDEM there, no DEM at all) once, naming each (:func:`_warn_dem`).

    Raises
    ------
    IngestError
        If a product's CRS is not a UTM zone (refused before anything is written).
    """
    source = source or SceneSource()
    scans = _map(_scan, [(p, source.calibration, source.dem) for p in todo], client)
    off_scheme = [s for s in scans if s.get("bad_crs")]
    if off_scheme:
        s = off_scheme[0]
        more = f" (and {len(off_scheme) - 1} more)" if len(off_scheme) > 1 else ""
        raise IngestError(f"{s['path']}: {s['reason']}{more}")
    log += [{"scene_id": s["scene_id"], "status": "failed", "reason": s["reason"], "source": s["path"]}
            for s in scans if not s["ok"]]
    seen: set[str] = set()
    unique = []
    for s in sorted((s for s in scans if s["ok"]), key=lambda s: (s["time"], s["scene_id"])):
        if s["scene_id"] in seen:
            log.append({"scene_id": s["scene_id"], "status": "skipped", "reason": "duplicate product in the input",
                        "source": s["path"]})
            continue
        seen.add(s["scene_id"])
        unique.append(s)
    _warn_dem(unique, source.dem)
    return unique


def _warn_dem(scans: list[dict[str, Any]], dem: Dem | GedDem | None) -> None:
    """One warning for the sensor-geometry scenes on GED's GDEM, one naming those at the flat RPC height."""
    flat = [s for s in scans if s.get("flat_reason")]
    n = sum(bool(s.get("sensor")) for s in scans) - len(flat)
    if isinstance(dem, GedDem) and n:
        warnings.warn(f"no DEM given (--dem): {n} scene(s) in sensor geometry orthorectified on the GDEM layer of "
                      f"the ASTER GED tiles (100 m posting; heights taken as above WGS 84, no geoid shift); recorded "
                      f"as dem = {dem.path!r}", UserWarning, stacklevel=4)
    if flat:
        names = "; ".join(f"{s['scene_id']} ({s['flat_reason']})" for s in flat)
        warnings.warn(f"{len(flat)} scene(s) orthorectified at their RPC height offset, recorded as dem = "
                      f"{FLAT_DEM!r}: {names}", UserWarning, stacklevel=4)


def _anchor_new_zones(scheme: TileScheme, scans: list[dict[str, Any]]) -> TileScheme:
    """The scheme with each zone new to the cube anchored at the upper-left corner of this run's scenes there.

    On the pixel lattice; fixed from then on and recorded in every store.
    """
    pm = scheme.pixel_m
    for epsg in sorted({utm_epsg(s["grid"].crs) for s in scans}):
        if not scheme.has_zone(epsg):
            zone = [s["grid"].bounds for s in scans if utm_epsg(s["grid"].crs) == epsg]
            scheme = scheme.anchored(epsg, np.floor(min(b[0] for b in zone) / pm) * pm,
                                     np.ceil(max(b[3] for b in zone) / pm) * pm)
    return scheme


def _assign_slots(root: Location, scheme: TileScheme, scans: list[dict[str, Any]], state: _CubeState) -> None:
    """Give each scan its ``targets`` (tile name -> (store, slot)), appending new slots to the stores.

    A scene retried keeps the slots it has; every other (scene, tile) gets a new one, in time order.
    """
    new_slots: dict[str, list[dict[str, Any]]] = {}
    for s in scans:
        s["targets"] = {}
        for name, tile in scheme.tiles_for(s["grid"]).items():
            state.tiles.setdefault(name, tile)
            have = state.slots_of.get(s["scene_id"], {}).get(name)
            if have is not None:
                s["targets"][name] = (have[0], have[1])
            else:
                new_slots.setdefault(name, []).append(s)
    attrs = {**_CUBE_ATTRS, **geometry_attrs(scheme=scheme)}
    for name, ss in new_slots.items():
        store = str(join(root, f"{name}.zarr"))
        idx = append_slots(store, state.tiles[name], [{"scene_id": s["scene_id"], "source": s["path"],
                                                       "time": s["time"], "calibration_source":
                                                       s["calibration_source"], "dem": s["dem"]} for s in ss], attrs)
        for s, i in zip(ss, idx, strict=True):
            s["targets"][name] = (store, i)


def _batch_regions(scans: list[dict[str, Any]], tiles: dict[str, GeoBox]) -> dict[str, Window]:
    """Per tile, the window this run's scenes cover (its batch region): where GED is sampled, once."""
    reach: dict[str, Window] = {}
    for s in scans:
        for n in s["targets"]:
            hit = tiles[n].overlap(s["grid"])
            if hit is not None:
                w = hit[0]
                r = reach.get(n, w)
                reach[n] = Window(min(r.y0, w.y0), max(r.y1, w.y1), min(r.x0, w.x0), max(r.x1, w.x1))
    return reach


def _scene_tasks(scans: list[dict[str, Any]], tiles: dict[str, GeoBox], ged: str, era5_index: list[dict[str, Any]],
                 client: Any, source: SceneSource | None = None) -> list[tuple[Any, ...]]:
    """GED once per tile (on its batch region, kept on the cluster), then one task's arguments per scene."""
    reach = _batch_regions(scans, tiles)
    used = sorted(reach)
    ged_arrays = dict(zip(used, _map(_ged_for_grid, [(ged, tiles[n].window(reach[n])) for n in used], client,
                                     scatter_out=True), strict=True))
    args = []
    for s in scans:
        names = sorted(n for n in s["targets"] if n in reach)
        targets = [TileTarget(*s["targets"][n], n, tiles[n], _era5_for(era5_index, tiles[n], s["time"]),
                              (reach[n].y0, reach[n].x0)) for n in names]
        args.append((s["path"], targets, [ged_arrays[n] for n in names], s["cloud_percent"], source))
    return args


def _era5_extent(path: str) -> dict[str, Any]:
    """Area and time span of one ERA5 file, or the reason it cannot be read (worker task)."""
    try:
        da = open_era5_tcwv([path])
    except (ValueError, OSError) as exc:
        return {"path": path, "error": _one_line(exc).split(": ", 1)[-1]}
    lat, lon, t = da["latitude"].values, da["longitude"].values, da["time"].values
    return {"path": path, "lat": (float(lat.min()), float(lat.max())), "lon": (float(lon.min()), float(lon.max())),
            "time": (t.min(), t.max())}


def _era5_index(paths: Sequence[str | os.PathLike[str]], client: Any = None) -> list[dict[str, Any]]:
    """Extent and time span of each ERA5 file (read in parallel on the client's workers).

    Raises
    ------
    IngestError
        If a file cannot be read as ERA5 ``tcwv``.
    """
    index = _map(_era5_extent, [(str(Path(p)),) for p in paths], client)
    for e in index:
        if "error" in e:
            raise IngestError(e["error"])
    return index


def _era5_for(index: list[dict[str, Any]], grid: GeoBox, when: np.datetime64) -> list[str]:
    """The ERA5 files whose area holds the grid and whose hours reach within 6 h of ``when``.

    When none does, the files whose area holds the grid are returned (else every file), so the reader
    reports precisely what is not covered (the time, or the area) rather than a grid mismatch between files.
    """
    left, bottom, right, top = grid.bounds
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(
        [left, right, left, right], [bottom, bottom, top, top])
    slack = np.timedelta64(6, "h")
    area = [e for e in index if e["lat"][0] <= min(lat) and max(lat) <= e["lat"][1] and e["lon"][0] <= min(lon)
            and max(lon) <= e["lon"][1]]
    hits = [e["path"] for e in area if e["time"][0] - slack <= when <= e["time"][1] + slack]
    return hits or [e["path"] for e in area] or [e["path"] for e in index]


def _stem(path: str) -> str:
    name = Path(path).name
    for ext in (".tar.gz", ".TAR.GZ", ".tgz", ".TGZ", ".tar", ".TAR"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _map(fn: Callable[..., Any], args: list[tuple[Any, ...]], client: Any, *,
         progress: Callable[[int, int], None] | None = None, scatter_out: bool = False) -> list[Any]:
    """``fn`` over argument tuples through the one task runner; ``scatter_out`` keeps results on the cluster."""
    return run_tasks([(fn, a) for a in args], client, progress=progress, gather=not scatter_out)
