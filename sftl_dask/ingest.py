"""Ingest: VIMI L1 archives + ERA5 + ASTER GED -> scene cubes, on Dask.

The driver (this process) only lists products, reads what it must to place them (scene id,
time, grid: a scan task per new product), decides the grid stores and time slots, and writes
the cube metadata once. Workers do the heavy work, one task per scene: decode and calibrate
the archive, interpolate ERA5 water vapour, apply the GED emissivity (sampled once per grid)
and the Vegetation Cover Method, mask clouds, and fill their own time slot. A failed scene is
recorded in the ingest log with its reason and never marks its slot complete; re-running
retries it in the same slot and skips every scene already complete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from sftl_dask._staging import write_lock
from sftl_dask.io.cube import (
    CUBE_VARIABLES,
    GridSpec,
    append_slots,
    cube_stores,
    read_slots,
    write_log,
    write_scene,
)
from sftl_dask.io.stac import scene_stac_meta, write_scene_stac
from sftl_dask.physics.channels import THERMAL_NAMES

__all__ = ["IngestError", "ingest"]

#: Global attributes of new scene-cube stores (CF-1.11 section 2.6.2).
_CUBE_ATTRS = {
    "institution": "sftl-dask",
    "source": "GF5-02 VIMI L1 products; ERA5 total column water vapour; ASTER GED AG100 emissivity",
    "references": "Hersbach et al. 2020, QJRMS 146:1999 (ERA5); Hulley et al. 2015, GRL 42:7966 (ASTER GED); "
                  "Heidarian et al. 2025, Remote Sensing 17:3803 (SFTL)",
}


class IngestError(ValueError):
    """Bad input to the ingest as a whole (no products, unreadable ancillary files)."""


def _scan(path: str) -> dict[str, Any]:
    """Scene id, time, grid and footprint of one product (worker task)."""
    from sftl_dask.io.vimi import VimiProduct

    try:
        prod = VimiProduct(path)
        ds = prod.open(chunks=None)
        tr = ds.rio.transform()
        grid = GridSpec(ds.rio.crs.to_string(), (tr.a, tr.b, tr.c, tr.d, tr.e, tr.f), ds.sizes["x"], ds.sizes["y"])
        meta = prod.metadata
        ds.close()  # releases the GeoTIFF handles
        return {"ok": True, "path": path, "scene_id": prod.stem, "time": np.datetime64(meta["CenterTime"], "ns"),
                "grid": grid, "cloud_percent": float(meta.get("CloudPercent", np.nan)), "meta": scene_stac_meta(meta)}
    except (ValueError, OSError) as exc:
        return {"ok": False, "path": path, "scene_id": _stem(path), "reason": _one_line(exc)}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _ged_for_grid(ged_dir: str, grid: GridSpec) -> dict[str, Any]:
    """GED emissivity, NDVI and coverage sampled on a grid (once per grid, worker task).

    When no tile covers the grid (or a covering tile is unreadable) the result is ``{"error": reason}``,
    so that grid's scenes fail with that reason and the other grids' scenes still go in.
    """
    from sftl_dask.io.ged import ged_on_grid

    try:
        g = ged_on_grid(ged_dir, grid.x, grid.y, grid.crs)
    except (ValueError, OSError) as exc:
        return {"error": _one_line(exc).split(": ", 1)[-1]}
    from sftl_dask.io.ged import ged_vimi_channels

    # the ASTER -> VIMI conversion is static: done once per grid; each scene adds only its NDVI (VCM)
    return {"emissivity": ged_vimi_channels(g["emis_aster"].values), "ndvi": g["ndvi_ged"].values,
            "water": g["water"].values, "ged_missing": g["ged_missing"].values}


@lru_cache(maxsize=8)
def _open_era5(paths: tuple[str, ...]) -> Any:
    """ERA5 ``tcwv`` of these files, opened lazily once per worker process (scenes of a month share it)."""
    from sftl_dask.io.era5 import open_era5_tcwv

    return open_era5_tcwv(list(paths))


def _place(arr: np.ndarray, offset: tuple[int, int], shape: tuple[int, int], fill: float) -> np.ndarray:
    """Put a scene raster onto the cube grid at integer ``offset`` (row, col), clipping what falls outside."""
    out = np.full(shape, fill, dtype=np.float64)
    r0, c0 = offset
    h, w = arr.shape
    rs, cs = max(0, -r0), max(0, -c0)
    re, ce = min(h, shape[0] - r0), min(w, shape[1] - c0)
    if re > rs and ce > cs:
        out[r0 + rs : r0 + re, c0 + cs : c0 + ce] = arr[rs:re, cs:ce]
    return out


def _ingest_scene(path: str, store: str, index: int, grid: GridSpec, era5_paths: Sequence[str],
                  ged: dict[str, Any], cloud_percent: float) -> dict[str, Any]:
    """Decode one product onto its grid and fill its slot (worker task).

    Lazy Dask-backed inputs (the ERA5 field) are computed in this task's own thread: inside a distributed
    worker Dask's default scheduler is the cluster itself, and nested per-chunk tasks from every scene
    would slow the decode (measured 2x), move chunks between workers and hold their memory there.
    """
    import dask

    with dask.config.set(scheduler="synchronous"):
        return _decode_scene(path, store, index, grid, era5_paths, ged, cloud_percent)


def _decode_scene(path: str, store: str, index: int, grid: GridSpec, era5_paths: Sequence[str],
                  ged: dict[str, Any], cloud_percent: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    from sftl_dask.io.era5 import era5_wvc_on_grid
    from sftl_dask.io.ged import vimi_emissivity
    from sftl_dask.io.vimi import VimiProduct, product_checksum
    from sftl_dask.physics.cloud import cloud_mask

    try:
        if "error" in ged:
            raise ValueError(f"ASTER GED: {ged['error']}")
        prod = VimiProduct(path)
        ds = prod.open(chunks=None)  # lazily indexed, read whole here; a Dask-chunked one could not be closed
        tr = ds.rio.transform()
        sgrid = GridSpec(ds.rio.crs.to_string(), (tr.a, tr.b, tr.c, tr.d, tr.e, tr.f), ds.sizes["x"], ds.sizes["y"])
        shape = (grid.height, grid.width)
        off = grid.offset_of(sgrid)
        names = [*THERMAL_NAMES, "ndvi", "vza"] + (["red"] if "red" in ds else [])
        if off is not None:
            vals = {k: _place(ds[k].values, off, shape, np.nan) for k in names}
        else:  # another lattice or CRS: resample onto the grid
            from rasterio.enums import Resampling

            from sftl_dask.io.cube import _affine

            rp = ds[names].rio.reproject(grid.crs, shape=shape, transform=_affine(grid),
                                         resampling=Resampling.bilinear)
            vals = {k: rp[k].values.astype(np.float64) for k in names}
        ds.close()  # else xarray's file cache keeps the product open and its blocks stay in GDAL's cache
        covered = np.isfinite(vals["bt_10_80"])
        if not covered.any():
            raise ValueError("the scene does not overlap its grid")
        era5 = _open_era5(tuple(era5_paths))
        scene_time = np.datetime64(prod.metadata["CenterTime"], "ns")
        wvc = np.where(covered, era5_wvc_on_grid(era5, scene_time, grid.x, grid.y, grid.crs), np.nan)
        emis = vimi_emissivity(ged["emissivity"], ged["ndvi"], vals["ndvi"], water=ged.get("water"), converted=True)
        emis = np.where(covered[None], emis, np.nan)
        cloud = cloud_mask(vals["bt_10_80"], vals["ndvi"], vals.get("red"), cloud_percent=cloud_percent)
        missing = covered & (ged["ged_missing"].astype(bool) | ~np.isfinite(wvc))
        data = {**{k: vals[k] for k in THERMAL_NAMES}, "vza": vals["vza"], "ndvi": vals["ndvi"], "wvc": wvc,
                **{n.replace("bt_", "emis_"): emis[i] for i, n in enumerate(THERMAL_NAMES)},
                "cloud": cloud.astype(np.uint8), "ancillary_missing": missing.astype(np.uint8)}
        write_scene(store, index, {k: data[k] for k in CUBE_VARIABLES}, product_checksum(path))
        return {"scene_id": prod.stem, "status": "ingested", "store": store, "index": index, "source": path,
                "seconds": round(time.perf_counter() - t0, 2), "covered_fraction": round(float(covered.mean()), 4),
                "cloud_fraction": round(float(cloud[covered].mean()), 4)}
    except (ValueError, OSError, KeyError) as exc:
        return {"scene_id": _stem(path), "status": "failed", "store": store, "index": index, "source": path,
                "reason": _one_line(exc)}


def _group(scans: list[dict[str, Any]], grids: dict[str, GridSpec]) -> dict[str, GridSpec]:
    """Assign each scan a grid name: an existing grid it overlaps, else a new grid (union of overlapping scenes)."""
    new: list[GridSpec] = []
    for s in scans:
        g = s["grid"]
        hit = next((n for n, eg in grids.items() if eg.intersects(g)), None)
        if hit is None:
            for i, ng in enumerate(new):
                if ng.intersects(g) and ng.offset_of(g) is not None:
                    new[i] = ng.union(g)
                    break
            else:
                new.append(g)
    for ng in new:  # unions can make new grids overlap: merge until stable
        grids.setdefault(ng.name, ng)
    for s in scans:
        s["grid_name"] = next(n for n, eg in grids.items() if eg.intersects(s["grid"]))
    return grids


def ingest(
    inputs: Sequence[str | os.PathLike[str]],
    cube: str | os.PathLike[str],
    *,
    era5: Sequence[str | os.PathLike[str]],
    ged: str | os.PathLike[str],
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Ingest VIMI L1 products into scene cubes under ``cube``; returns a summary.

    Parameters
    ----------
    inputs : sequence of path
        Product archives (``.tar``), extracted product folders, or folders holding them.
    cube : path
        Cube root folder (one store per grid inside).
    era5 : sequence of path
        ERA5 ``tcwv`` NetCDF (or GRIB) files covering the scenes' times and areas.
    ged : path
        Folder of ASTER GED AG100 tiles.
    client : distributed.Client, optional
        Runs scans and scenes as tasks; without one, in this process.
    progress : callable, optional
        ``progress(done, total)`` over scene tasks.

    Returns
    -------
    dict
        Counts of ingested, skipped and failed scenes, the stores, and the wall time.

    Raises
    ------
    IngestError
        If no product is found, an ERA5 file or the GED folder is missing or unreadable.
    StoreBusyError
        If another process is writing the cube (holds its write lock).
    """
    from sftl_dask.io.vimi import find_products

    t0 = time.perf_counter()
    root = Path(cube)
    era5_paths = [str(Path(p)) for p in era5]
    for p in era5_paths:
        if not Path(p).is_file():
            raise IngestError(f"{p}: ERA5 file not found")
    if not era5_paths:
        raise IngestError("no ERA5 file given (--era5)")
    if not Path(ged).is_dir():
        raise IngestError(f"{ged}: GED folder not found")
    era5_index = _era5_index(era5_paths, client)
    for p in inputs:
        if not Path(p).exists():
            raise IngestError(f"{p}: no such file or directory")
    products = [str(p) for p in find_products([Path(p) for p in inputs])]
    if not products:
        raise IngestError(f"no VIMI L1 products found in {', '.join(str(p) for p in inputs)}")

    with write_lock(root, "sftl ingest"):  # one writer per cube: a second run is refused, never interleaved
        # What is already in the cube.
        grids: dict[str, GridSpec] = {}
        done: dict[str, tuple[str, int]] = {}
        retry: dict[str, tuple[str, int]] = {}
        for name, store in cube_stores(root).items():
            grid, slots = read_slots(store)
            grids[name] = grid
            for s in slots:
                (done if s["ingest_ok"] else retry)[s["scene_id"]] = (str(store), s["index"])
        log: list[dict[str, Any]] = []
        todo = []
        for p in products:
            stem = _stem(p)
            if stem in done:
                log.append({"scene_id": stem, "status": "skipped", "reason": "already in the cube", "source": p})
            else:
                todo.append(p)

        scans = _map(_scan, [(p,) for p in todo], client)
        bad = [s for s in scans if not s["ok"]]
        log += [{"scene_id": s["scene_id"], "status": "failed", "reason": s["reason"], "source": s["path"]}
                for s in bad]
        scans = [s for s in scans if s["ok"]]
        seen: set[str] = set()
        unique = []
        for s in sorted(scans, key=lambda s: (s["time"], s["scene_id"])):
            if s["scene_id"] in seen:
                log.append({"scene_id": s["scene_id"], "status": "skipped", "reason": "duplicate product in the input",
                            "source": s["path"]})
                continue
            seen.add(s["scene_id"])
            unique.append(s)
        scans = unique
        grids = _group(scans, grids)

        # Slots: reuse a failed scene's slot, else append.
        root.mkdir(parents=True, exist_ok=True)
        by_store: dict[str, list[dict[str, Any]]] = {}
        for s in scans:
            if s["scene_id"] in retry:
                s["store"], s["index"] = retry[s["scene_id"]]
            else:
                s["store"] = str(root / f"{s['grid_name']}.zarr")
                by_store.setdefault(s["store"], []).append(s)
        for store, ss in by_store.items():
            name = Path(store).name[: -len(".zarr")]
            idx = append_slots(store, grids[name], [{"scene_id": s["scene_id"], "source": s["path"], "time": s["time"]}
                                                    for s in ss], _CUBE_ATTRS)
            for s, i in zip(ss, idx, strict=True):
                s["index"] = i

        # GED once per grid, then one task per scene.
        used = sorted({Path(s["store"]).name[: -len(".zarr")] for s in scans})
        ged_arrays = dict(zip(used, _map(_ged_for_grid, [(str(ged), grids[n]) for n in used], client, scatter_out=True),
                              strict=True))
        args = []
        for s in scans:
            gname = Path(s["store"]).name[: -len(".zarr")]
            era5_files = _era5_for(era5_index, grids[gname], s["time"])
            args.append((s["path"], s["store"], s["index"], grids[gname], era5_files,
                         ged_arrays[gname], s["cloud_percent"]))
        results = _map(_ingest_scene, args, client, progress=progress)
        log += results
        ok = [r for r in results if r["status"] == "ingested"]
        done_ids = {r["scene_id"] for r in ok}
        write_scene_stac(root, [s for s in scans if s["scene_id"] in done_ids])
        stamp = np.datetime64("now", "s")
        write_log(root, [{"logged_utc": str(stamp), **r} for r in log])
        return {
            "ingested": len(ok),
            "skipped": sum(r["status"] == "skipped" for r in log),
            "failed": [r for r in log if r["status"] == "failed"],
            "stores": sorted({str(p) for p in cube_stores(root).values()}),
            "seconds": round(time.perf_counter() - t0, 2),
        }


def _era5_extent(path: str) -> dict[str, Any]:
    """Area and time span of one ERA5 file, or the reason it cannot be read (worker task)."""
    from sftl_dask.io.era5 import open_era5_tcwv

    try:
        da = open_era5_tcwv([path])
    except (ValueError, OSError) as exc:
        return {"path": path, "error": _one_line(exc).split(": ", 1)[-1]}
    lat, lon, t = da["latitude"].values, da["longitude"].values, da["time"].values
    return {"path": path, "lat": (float(lat.min()), float(lat.max())), "lon": (float(lon.min()), float(lon.max())),
            "time": (t.min(), t.max())}


def _era5_index(paths: Sequence[str], client: Any = None) -> list[dict[str, Any]]:
    """Extent and time span of each ERA5 file (read in parallel on the client's workers).

    Raises
    ------
    IngestError
        If a file cannot be read as ERA5 ``tcwv``.
    """
    index = _map(_era5_extent, [(p,) for p in paths], client)
    for e in index:
        if "error" in e:
            raise IngestError(e["error"])
    return index


def _era5_for(index: list[dict[str, Any]], grid: GridSpec, when: np.datetime64) -> list[str]:
    """The ERA5 files whose area holds the grid and whose hours reach within 6 h of ``when``.

    When none does, the files whose area holds the grid are returned (else every file), so the reader
    reports precisely what is not covered (the time, or the area) rather than a grid mismatch between files.
    """
    from pyproj import Transformer

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
    for ext in (".tar", ".TAR"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _map(fn: Callable[..., Any], args: list[tuple[Any, ...]], client: Any, *,
         progress: Callable[[int, int], None] | None = None, scatter_out: bool = False) -> list[Any]:
    """``fn`` over argument tuples through the one task runner; ``scatter_out`` keeps results on the cluster."""
    from sftl_dask.cluster import run_tasks

    return run_tasks([(fn, a) for a in args], client, progress=progress, gather=not scatter_out)
