"""Build the testbed on Dask: scenes in parallel, then ancillary files; all-or-nothing.

The world is written to a temporary folder beside ``out`` and renamed into place only
when every file is complete, so a failed build never leaves a testbed that looks whole.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from affine import Affine
from numpy.typing import NDArray
from pyproj import Geod, Transformer

from sftl_dask.cluster import run_tasks
from sftl_dask.physics.channels import THERMAL_NAMES, reflective_bands
from sftl_dask.physics.solar import earth_sun_distance_au
from sftl_dask.staging import staged_dir
from sftl_dask.testbed.ancillary import ERROR_BUDGET, era5_fields, ged_arrays, insitu_series
from sftl_dask.testbed.delivery import (
    DEM_POSTING_ARCSEC,
    RPC_MAX_RESIDUAL_PX,
    SceneView,
    footprint,
    hot_targets,
    rpc_for_fine_grid,
    scene_view,
    sensor_ground,
    sensor_resample,
    terrain_height,
    write_copernicus_dem_tile,
)
from sftl_dask.testbed.formats import (
    vimi_product_name,
    write_era5_tcwv,
    write_ged_tile,
    write_insitu_csv,
    write_sites_csv,
    write_vimi_archive,
    write_vimi_delivery,
)
from sftl_dask.testbed.lowtran_world import lowtran_world_table
from sftl_dask.testbed.scene import (
    INSTRUMENT,
    LAUNCH,
    SATELLITE_ALTITUDE_KM,
    SceneSpec,
    SceneTruth,
    synthesize_hard_case,
    synthesize_scene,
)
from sftl_dask.testbed.world import (
    LAND_COVERS,
    REGIONS,
    SITES,
    Landscape,
    RegionClimate,
    build_landscape,
    sites_table,
)
from sftl_dask.version import __version__

__all__ = ["DEFAULT_LAYOUT", "DEFAULT_SCENES", "DEFAULT_SIZE", "LAYOUTS", "build_testbed", "delivered_view",
           "scene_schedule", "write_hard_case"]

#: Testbed layouts: ``delivered`` (the default: sensor geometry with RPCs in a ``.tar.gz``, a DEM, hot targets,
#: as the ground segment delivers; issue 28, item 5; docs/testbed.md) and ``map`` (north-up UTM GeoTIFFs in a
#: ``.tar``, the layout of our own making that came first; tests that need map-projected products use it).
LAYOUTS = ("delivered", "map")
#: The layout ``sftl testbed`` writes unless told otherwise.
DEFAULT_LAYOUT = "delivered"

#: Default scenes per region and grid size (pixels of 40 m): 640 px = 25.6 km holds all sites.
DEFAULT_SCENES = 20
DEFAULT_SIZE = 640
FIRST_DAY = np.datetime64("2021-09-15")
LAST_DAY = np.datetime64("2023-12-20")
_NOT_IN_SCENES_CSV = ("site_lst", "site_cloud", "targets", "gains", "offsets")
_TRUTH_VARS = ("lst", "cloud", "wvc", "vza", "ndvi", *THERMAL_NAMES,
               *(n.replace("bt_", "emis_") for n in THERMAL_NAMES))


def scene_schedule(region: str, n: int, seed: int, *, shifted: float = 0.15, max_shift: int = 160
                   ) -> list[dict[str, Any]]:
    """Dates, times and pointing of ``n`` scenes of ``region`` (revisit of days to weeks, ~10:30-11:00 local).

    A share ``shifted`` of the scenes only partly covers the region grid: their footprint is moved by 64 to
    ``max_shift`` px along each axis (either sign), so they reach past the grid and across tile edges.
    """
    r = REGIONS[region]
    ri = list(REGIONS).index(region)
    rng = np.random.default_rng([seed, 707, ri])
    days = np.arange(FIRST_DAY, LAST_DAY)
    chosen: list[np.datetime64] = []
    for d in rng.permutation(days):
        if all(abs(int((d - c).astype(np.int64))) >= 4 for c in chosen):
            chosen.append(d)
        if len(chosen) == n:
            break
    out = []
    for i, d in enumerate(sorted(chosen)):
        local_h = rng.uniform(*r.overpass_local_h)
        t = d.astype("datetime64[s]") + np.timedelta64(int((local_h - r.utc_offset_h) * 3600), "s")
        cloudy = rng.random() < r.cloud_probability
        shift = (0, 0)
        if rng.random() < shifted:  # a scene that only partly covers the region grid
            shift = tuple(int(v) for v in rng.choice([-1, 1], 2) * rng.integers(64, max_shift, 2))
        days_since = float((t - LAUNCH).astype(np.float64) / 86400)
        out.append({
            "spec": SceneSpec(region=region, index=i, time_utc=t, orbit=int(100 + days_since * 14.57),
                              product_id=ri * 1_000_000 + 1000 + i, nadir_offset_km=float(rng.uniform(-20, 20)),
                              cloud_fraction=float(rng.uniform(0.03, 0.45)) if cloudy else 0.0, seed=seed),
            "shift_px": shift,
        })
    return out


def _xml_meta(truth: Any, lsc: Landscape, shift: tuple[int, int]) -> dict[str, Any]:
    spec = truth.spec
    lon, lat = _corner_lonlat(lsc, shift)
    t = spec.time_utc
    # across-track distance (km, east +) from the nadir track of the archive's centre (between its middle
    # pixel centres), as the scene model places it
    x_centre_km = shift[1] * 0.04 + spec.nadir_offset_km
    fmt = "%Y-%m-%d %H:%M:%S.%f"

    def ts(x: np.datetime64) -> str:
        return pd.Timestamp(x).strftime(fmt)[:-3]

    esun = [INSTRUMENT["esun_w_m2_um"][k] for k in ("b1", "b2", "red", "nir", "b5", "b6")] + [0.0] * 6
    cw = [reflective_bands()[k]["centre_um"] for k in ("b1", "b2", "red", "nir", "b5", "b6", "b7", "b8")]
    return {
        "SatelliteID": "GF5B", "SensorID": "VIMI", "ProductLevel": "L1", "ProductID": spec.product_id,
        "OrbitID": spec.orbit, "ReceiveStation": "MYC",
        "StartTime": ts(t - np.timedelta64(4, "s")), "EndTime": ts(t + np.timedelta64(4, "s")), "CenterTime": ts(t),
        "SolarAzimuth": round(truth.solar_azimuth, 4), "SolarZenith": round(truth.solar_zenith, 4),
        # seen from a scene centre east of the nadir track, the satellite is to the west
        "SatelliteAzimuth": 278.5 if x_centre_km > 0 else 98.5,
        "SatelliteZenith": round(float(np.rad2deg(np.arctan(abs(x_centre_km) / SATELLITE_ALTITUDE_KM))), 6),
        "SatelliteAltitude": SATELLITE_ALTITUDE_KM,
        "CloudPercent": round(float(np.clip(100 * truth.cloud_core.mean() + np.random.default_rng(
            spec.product_id).normal(0, 3), 0, 100)), 1),
        "TopLeftLatitude": lat[0], "TopLeftLongitude": lon[0], "TopRightLatitude": lat[1],
        "TopRightLongitude": lon[1], "BottomRightLatitude": lat[2], "BottomRightLongitude": lon[2],
        "BottomLeftLatitude": lat[3], "BottomLeftLongitude": lon[3],
        "Bands": [f"B{i}" for i in range(1, 13)],
        "CentralWavelength": [*cw, 8.20, 8.63, 10.80, 11.95],
        "GAINS": [float(f"{g:.8g}") for g in truth.gains], "OFFSETS": [float(f"{o:.8g}") for o in truth.offsets],
        "ESUN": esun, "EarthSunDistance": round(float(earth_sun_distance_au(t)), 6),
        "RadianceUnit": "W m-2 sr-1 um-1", "DNBits": 12,
    }


def _corner_lonlat(lsc: Landscape, shift: tuple[int, int]) -> tuple[list[float], list[float]]:
    a, _, c, _, e, f = lsc.transform
    h, w = lsc.shape
    x0, y0 = c + shift[1] * a, f + shift[0] * e
    xs = [x0, x0 + w * a, x0 + w * a, x0]
    ys = [y0, y0, y0 + h * e, y0 + h * e]
    lon, lat = Transformer.from_crs(lsc.crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return [round(float(v), 6) for v in lon], [round(float(v), 6) for v in lat]


def _shifted(arr: np.ndarray, shift: tuple[int, int], fill: Any) -> np.ndarray:
    """The raster of a scene whose grid is the region grid moved by ``shift`` (rows, cols) pixels."""
    if shift == (0, 0):
        return arr
    dy, dx = shift
    out = np.full_like(arr, fill)
    h, w = arr.shape[-2:]
    src_y = slice(max(dy, 0), h + min(dy, 0))
    dst_y = slice(max(-dy, 0), h - max(dy, 0))
    src_x = slice(max(dx, 0), w + min(dx, 0))
    dst_x = slice(max(-dx, 0), w - max(dx, 0))
    out[..., dst_y, dst_x] = arr[..., src_y, src_x]
    return out


def _covered(shape: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """Mask of the region grid covered by a scene shifted by ``shift``."""
    m = np.ones(shape, dtype=bool)
    return ~_shifted(~m, (-shift[0], -shift[1]), True) if shift != (0, 0) else m


def _scene_task(item: dict[str, Any], lsc: Landscape, clim: RegionClimate, tmp: str, t_index: int,
                layout: str = "map") -> dict[str, Any]:
    """Synthesize one scene, write its archive and its truth slice; return a small record."""
    spec, shift = item["spec"], item["shift_px"]
    lon_c, lat_c = _scene_centre(item, lsc)
    stem = vimi_product_name(lon_c, lat_c, spec.time_utc, spec.orbit, spec.product_id)
    extra: dict[str, Any] = {}
    if layout == "delivered":
        truth, cov, extra = _deliver_scene(item, lsc, clim, stem, Path(tmp))
    else:
        truth = synthesize_scene(spec, lsc, clim)
        a, _, c, _, e, f = lsc.transform
        transform = Affine(a, 0.0, c + shift[1] * a, 0.0, e, f + shift[0] * e)
        dn_tir = _shifted(truth.dn_b7_b12, shift, 0)
        dn_vnir = _shifted(truth.dn_b1_b6, (2 * shift[0], 2 * shift[1]), 0)
        write_vimi_archive(Path(tmp) / "archives", stem, dn_vnir, dn_tir, crs=lsc.crs, transform=transform,
                           meta=_xml_meta(truth, lsc, shift))
        cov = _covered(lsc.shape, shift)
    # truth on the region grid (NaN where this scene does not look)
    data = {"lst": truth.lst, "cloud": truth.cloud_cover, "wvc": truth.wvc, "vza": truth.vza,
            "ndvi": truth.ndvi}
    for ci, name in enumerate(THERMAL_NAMES):
        data[name] = truth.bt_sensor[ci]
        data[name.replace("bt_", "emis_")] = truth.emis[ci]
    ds = xr.Dataset({k: (("time", "y", "x"), np.where(cov, v, np.nan)[None].astype(np.float32))
                     for k, v in data.items()})
    ds.to_zarr(Path(tmp) / "truth" / f"{spec.region}.zarr", region={"time": slice(t_index, t_index + 1),
                                                                     "y": slice(None), "x": slice(None)})
    covered_sites = {k: v for k, v in truth.site_truth.items() if cov[lsc.site_pixels[k]]}
    return {
        "region": spec.region, "index": spec.index, "scene_id": stem, "time_utc": str(spec.time_utc),
        "cloud_fraction": float(truth.cloud.mean()), "shift_px": list(shift), "wvc_scene": truth.wvc_scene,
        "t_air_k": truth.t_air_k, "solar_zenith": truth.solar_zenith,
        "site_lst": covered_sites,
        "site_cloud": {k: float(truth.cloud_cover[lsc.site_pixels[k]]) for k in covered_sites}, **extra,
    }


def _scene_centre(item: dict[str, Any], lsc: Landscape) -> tuple[float, float]:
    """(lon, lat) in degrees of a scheduled scene's centre: the mean of its footprint's corners."""
    lon_c, lat_c = np.mean(_corner_lonlat(lsc, item["shift_px"]), axis=1)
    return float(lon_c), float(lat_c)


def delivered_view(item: dict[str, Any], lsc: Landscape) -> SceneView:
    """The sensor window that delivers a scheduled scene (an item of :func:`scene_schedule`) in the delivered
    layout: the pushbroom whose nadir track passes the scene's ``nadir_offset_km`` plus its footprint shift from
    the scene centre, on the world's terrain (:func:`~sftl_dask.testbed.delivery.scene_view`)."""
    lon_c, lat_c = _scene_centre(item, lsc)
    h_c = float(terrain_height(lsc)(np.array([lon_c]), np.array([lat_c]))[0])
    return scene_view(lon_c, lat_c, h_c, item["shift_px"][1] * 0.04 + item["spec"].nadir_offset_km, *lsc.shape)


def _deliver_scene(item: dict[str, Any], lsc: Landscape, clim: RegionClimate, stem: str,
                   tmp: Path) -> tuple[Any, NDArray[np.bool_], dict[str, Any]]:
    """The delivered layout of one scene (testbed/delivery.py): the map scene with hot targets, seen by the
    pushbroom over the terrain, RPCs fitted and checked, written as a ``.tar.gz``. Returns the truth, the
    region-grid footprint and the record's extra fields (targets, RPC fit residuals, gains)."""
    spec = item["spec"]
    lon_c, lat_c = _scene_centre(item, lsc)
    h_c = float(terrain_height(lsc)(np.array([lon_c]), np.array([lat_c]))[0])
    view = delivered_view(item, lsc)
    rows, cols = sensor_ground(view, lsc)
    cov = footprint(lsc.shape, rows, cols)
    # the targets' own generator: the scene's draws are the map layout's, so the same seed is the same world
    rng = np.random.default_rng([spec.seed, 909, list(REGIONS).index(spec.region), spec.index])
    centres: list[tuple[int, int]] = []

    def targets_in_clear_sky(cloud: NDArray[np.bool_]) -> NDArray[np.float32]:
        offset, found = hot_targets(lsc, cov, rng, cloud=cloud)
        centres.extend(found)
        return offset

    truth = synthesize_scene(spec, lsc, clim, lst_offset_k=targets_in_clear_sky)
    tir, vnir = sensor_resample(rows, cols, truth.dn_b7_b12, truth.dn_b1_b6)
    elev = lsc.elevation_m
    fit = view.fit_rpc((float(elev.min()) - 500.0, float(elev.max()) + 500.0))
    if not fit.check_max_px <= RPC_MAX_RESIDUAL_PX:
        raise RuntimeError(f"{stem}: RPC fit residual {fit.check_max_px:.4f} px exceeds {RPC_MAX_RESIDUAL_PX} px")
    write_vimi_delivery(tmp / "archives", stem, vnir, tir, rpc_b1_b6=rpc_for_fine_grid(fit.rpc),
                        rpc_b7_b12=fit.rpc, meta=_delivered_meta(truth, view, lsc, (lon_c, lat_c, h_c)))
    lon, lat = Transformer.from_crs(lsc.crs, "EPSG:4326", always_xy=True).transform(
        [lsc.x[c] for _, c in centres], [lsc.y[r] for r, _ in centres])
    targets = [{"scene_id": stem, "lon": round(float(lo), 7), "lat": round(float(la), 7),
                "height_m": round(float(elev[r, c]), 3), "cloud": round(float(truth.cloud_cover[r, c]), 3),
                "region": spec.region, "row": r, "col": c}
               for lo, la, (r, c) in zip(lon, lat, centres, strict=True)]
    return truth, cov, {"targets": targets, "rpc_check_rms_px": fit.check_rms_px,
                        "rpc_check_max_px": fit.check_max_px, "gains": list(truth.gains),
                        "offsets": list(truth.offsets)}


def _delivered_meta(truth: Any, view: Any, lsc: Landscape, centre: tuple[float, float, float]) -> dict[str, Any]:
    """The delivered XML fields (the GF5-01 VIMS list): times of the first and last line around the overpass,
    angles at the scene centre from the sensor, corners of the image on the terrain."""
    spec, (lon_c, lat_c, h_c) = truth.spec, centre
    half = np.timedelta64(round((view.lines - 1) / 2 * view.sensor.line_period_s * 1000), "ms")
    line_c, samp_c = view.project(lon_c, lat_c, h_c)
    vza = float(view.sensor.view_zenith(float(line_c) + view.line0, float(samp_c) + view.sample0, h_c))
    nadir = view.localize(float(line_c), (view.sensor.samples - 1) / 2 - view.sample0)
    saz = float(Geod(ellps="WGS84").inv(lon_c, lat_c, float(nadir[0]), float(nadir[1]))[0]) % 360.0
    li = np.array([-0.5, -0.5, view.lines - 0.5, view.lines - 0.5])
    sa = np.array([-0.5, view.samples - 0.5, view.samples - 0.5, -0.5])
    lon, lat, _ = view.sensor.localize_on_terrain(li + view.line0, sa + view.sample0, terrain_height(lsc))
    corners = {}
    for k, name in enumerate(("TopLeft", "TopRight", "BottomRight", "BottomLeft")):
        corners[f"{name}Latitude"], corners[f"{name}Longitude"] = round(float(lat[k]), 6), round(float(lon[k]), 6)
    t = spec.time_utc.astype("datetime64[ms]")
    cw = [reflective_bands()[k]["centre_um"] for k in ("b1", "b2", "red", "nir", "b5", "b6", "b7", "b8")]
    return {
        "SatelliteID": "GF5B", "ReceiveStationID": "MYC", "SensorID": "VIMI",
        "ProduceTime": t + np.timedelta64(86400 * 1000, "ms"), "ProductLevel": "L1", "StartTime": t - half,
        "EndTime": t + half, "SolarAzimuth": round(truth.solar_azimuth, 4), "SolarZenith": round(truth.solar_zenith, 4),
        "SatelliteAzimuth": round(saz, 4), "SatelliteZenith": round(vza, 6),
        "CloudPercent": round(float(np.clip(100 * truth.cloud_core.mean() + np.random.default_rng(
            spec.product_id).normal(0, 3), 0, 100)), 1),
        "Bands": [f"B{i}" for i in range(1, 13)], "CentralWavelength": [*cw, 8.20, 8.63, 10.80, 11.95],
        "ImageGSD": "20,40", "CalibrationParam": "L = GAINS * DN + OFFSETS (W m-2 sr-1 um-1)",
        "GAINS": [float(f"{g:.8g}") for g in truth.gains], "OFFSETS": [float(f"{o:.8g}") for o in truth.offsets],
        "MapProjection": "none (sensor geometry, RPC)", "ZoneNo": str(lsc.region.epsg % 100), **corners,
    }


def _create_truth_store(path: Path, lsc: Landscape, times: list[np.datetime64]) -> None:
    h, w = lsc.shape
    coords = {"time": np.array(times, dtype="datetime64[ns]"), "y": lsc.y, "x": lsc.x}
    ds = xr.Dataset(
        {k: (("time", "y", "x"), da.full((len(times), h, w), np.nan, dtype=np.float32, chunks=(1, h, w)))
         for k in _TRUTH_VARS},
        coords=coords,
    )
    ds["lst"].attrs = {"units": "K", "standard_name": "surface_temperature", "long_name": "true LST"}
    ds["cloud"].attrs = {"units": "1", "long_name": "cloud cover fraction of the pixel (1 = opaque core)"}
    ds["wvc"].attrs = {"units": "g cm-2", "long_name": "true total column water vapour"}
    ds = ds.rio.write_crs(lsc.crs)
    ds.attrs = {"title": f"sftl-dask testbed truth, region {lsc.region.name}", "note": "for scoring only",
                "bt_note": "bt_* are the sensor's brightness temperatures before DN quantisation (K)"}
    ds.to_zarr(path, compute=False, mode="w", consolidated=True, zarr_format=2)


def _insitu_task(site_index: int, lsc: Landscape, clim: RegionClimate, tmp: str, seed: int) -> dict[str, Any]:
    site = SITES[site_index]
    s = insitu_series(lsc, clim, site, seed)
    meta = {**site.__dict__, "sensor_id": f"{site.instrument}-{1000 + site_index}",
            "broadband_emissivity": round(s["broadband_emissivity"], 4)}
    beijing = s["time_utc"] + np.timedelta64(8 * 3600, "s")
    write_insitu_csv(Path(tmp) / "insitu" / f"{site.id}.csv", meta, beijing, s["lw_up"], s["lw_down"], s["flag"])
    return {"site": site.id, "broadband_emissivity": meta["broadband_emissivity"],
            "valid_fraction": float(np.mean(np.isfinite(s["lw_up"]) & (s["flag"] == 0)))}


def _era5_task(region: str, month: str, clim: RegionClimate, tmp: str, seed: int) -> str:
    start = np.datetime64(month, "M").astype("datetime64[s]")
    end = (np.datetime64(month, "M") + 1).astype("datetime64[s]")
    times = np.arange(start, end, np.timedelta64(3600, "s"))
    tcwv, lats, lons = era5_fields(clim, times, seed)
    style = "old" if month < "2022-01" else "new"
    path = Path(tmp) / "era5" / f"era5_tcwv_{region}_{month.replace('-', '')}.nc"
    write_era5_tcwv(path, tcwv, times.astype("datetime64[ns]"), lats, lons, style=style)
    return path.name


def _ged_task(region: str, lat0: int, lon0: int, lsc: Landscape, tmp: str, seed: int) -> str:
    g = ged_arrays(lsc, lat0, lon0, seed)
    return write_ged_tile(Path(tmp) / "ged", lat0 + 1, lon0, g["emis_mean"], g["emis_sdev"], g["ndvi_mean"],
                          g["ndvi_sdev"], g["land_water"], g["lat"], g["lon"], g["elevation_m"]).name


def build_testbed(
    out: str | os.PathLike[str],
    *,
    scenes: int = DEFAULT_SCENES,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    shifted: float = 0.15,
    max_shift: int = 160,
    layout: str = DEFAULT_LAYOUT,
) -> dict[str, Any]:
    """Write the testbed world under ``out``.

    Why this is long: the numpydoc of its eleven parameters is half of it; the body is the staged build's steps
    in order (folders, worlds, schedules, truth stores, tasks, tables, summary), each a call.

    Parameters
    ----------
    out : path
        Folder to create: ``archives/``, ``era5/``, ``ged/``, ``insitu/``, ``truth/``, ``sites.csv``,
        ``scenes.csv`` and ``testbed.json``.
    scenes : int
        Scenes per region.
    size : int
        Region grid size in 40 m pixels (>= 640 holds every site).
    seed : int
        Seed of the whole world.
    client : distributed.Client, optional
        Runs scenes, sites and ancillary files as tasks; without one, in this process.
    progress : callable, optional
        ``progress(done, total)`` over tasks.
    overwrite : bool
        Replace an existing ``out``.
    shifted : float
        Share of scenes whose footprint is moved off the region grid (0-1; default 0.15).
    max_shift : int
        Largest move (px) of such a footprint along each axis (64 < ``max_shift`` < ``size``; default 160).
    layout : {"delivered", "map"}
        ``delivered`` (default): the products as the ground segment delivers them (sensor geometry, ``.rpb``
        RPCs, ``.tar.gz``, the GF5-01 VIMS XML fields), plus ``dem/`` (Copernicus GLO-30 tiles),
        ``calibration/`` (the reader's table) and ``truth/targets.csv`` (hot targets, in this layout only).
        ``map``: north-up UTM GeoTIFFs in a ``.tar``; docs/testbed.md.

    Returns
    -------
    dict
        The summary written to ``testbed.json``.

    Raises
    ------
    FileExistsError
        If ``out`` exists (and is not empty) and ``overwrite`` is false.
    ValueError
        On a bad ``scenes`` / ``size``.
    """
    out = Path(out)
    _check_layout(scenes, size, shifted, max_shift)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty (use overwrite)")
    with staged_dir(out) as tmp:
        for sub in ("archives", "era5", "ged", "insitu", "truth") + (("dem", "calibration")
                                                                      if layout == "delivered" else ()):
            (tmp / sub).mkdir(parents=True)
        worlds: dict[str, tuple[Landscape, RegionClimate]] = {}
        for name, region in REGIONS.items():
            worlds[name] = (build_landscape(region, size, seed), RegionClimate.make(region, seed))
        schedules = {name: scene_schedule(name, scenes, seed, shifted=shifted, max_shift=max_shift)
                     for name in REGIONS}
        for name, sched in schedules.items():
            _create_truth_store(tmp / "truth" / f"{name}.zarr", worlds[name][0],
                                [it["spec"].time_utc for it in sched])
        jobs = _jobs(worlds, schedules, tmp, seed, layout)
        results = _run(jobs, client, progress)
        scene_rows = [r for r, (_, _, kind) in zip(results, jobs, strict=True) if kind == "scene"]
        site_rows = [r for r, (_, _, kind) in zip(results, jobs, strict=True) if kind == "site"]
        table = _write_tables(tmp, scene_rows, site_rows)
        delivered = _write_delivered_tables(tmp, scene_rows, results, jobs) if layout == "delivered" else None
        summary = _summary(worlds, table, seed=seed, size=size, scenes=scenes, n_archives=len(scene_rows),
                           shifted=shifted, max_shift=max_shift, layout=layout)
        if delivered is not None:
            summary["delivered"] = delivered
        (tmp / "testbed.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


def write_hard_case(case: str, out: str | os.PathLike[str], *, size: int = 160, seed: int = 0,
                    ancillary: bool = False) -> tuple[Path, SceneTruth]:
    """Write one of the cloud mask's hard cases (:data:`sftl_dask.testbed.scene.HARD_CASES`) as a VIMI L1
    product of the ``map`` layout (north-up UTM GeoTIFFs in a ``.tar``, the XML of the default testbed's
    products), for a reader to open as it opens any product. Opt-in: :func:`build_testbed` never writes them.
    With ``ancillary``, also what ingest needs beside it: ``out/era5/`` (the scene's month) and ``out/ged/``.

    Parameters
    ----------
    case : str
        ``bright_cold_desert``, ``snow`` or ``warm_thin_cloud``.
    out : path
        Folder to write the archive into (created if missing).
    size : int
        Grid size (40 m pixels).
    seed : int
        Seed of the scene.
    ancillary : bool
        Also write the ERA5 and ASTER GED files of the scene (as :func:`build_testbed` does for its regions).

    Returns
    -------
    (pathlib.Path, SceneTruth)
        The archive (``out/<stem>.tar``) and the scene's truth (``cloud``, ``cloud_cover``, ``lst``, ...).

    Raises
    ------
    ValueError
        On an unknown case.
    """
    truth, lsc = synthesize_hard_case(case, size=size, seed=seed)
    lon_c, lat_c = _scene_centre({"shift_px": (0, 0)}, lsc)
    stem = vimi_product_name(lon_c, lat_c, truth.spec.time_utc, truth.spec.orbit, truth.spec.product_id)
    path = write_vimi_archive(Path(out), stem, truth.dn_b1_b6, truth.dn_b7_b12, crs=lsc.crs,
                              transform=Affine(*lsc.transform), meta=_xml_meta(truth, lsc, (0, 0)))
    if ancillary:
        for sub in ("era5", "ged"):
            (Path(out) / sub).mkdir(parents=True, exist_ok=True)
        clim = RegionClimate.make(REGIONS[truth.spec.region], seed)
        _era5_task(truth.spec.region, str(truth.spec.time_utc.astype("datetime64[M]")), clim, str(out), seed)
        for lat0, lon0 in _cells(lsc, 0.01):
            _ged_task(truth.spec.region, lat0, lon0, lsc, str(out), seed)
    return path, truth


def _summary(worlds: dict[str, tuple[Landscape, RegionClimate]], table: pd.DataFrame, *, seed: int, size: int,
             scenes: int, n_archives: int, shifted: float, max_shift: int, layout: str) -> dict[str, Any]:
    """The content of ``testbed.json``: the settings (grid px, pixel m, shifts px, delivery layout), each
    region's grid, the land covers, instrument, ancillary error budget and radiative transfer, and the site
    table ``table``."""
    return {
        "sftl_dask_version": __version__, "seed": seed, "size_px": size, "pixel_m": 40.0,
        "scenes_per_region": scenes, "n_archives": n_archives,
        "shifted": {"share": shifted, "max_px": max_shift},
        "regions": {n: {"epsg": r.epsg, "transform": list(worlds[n][0].transform),
                        "cover_fractions": r.cover_fractions} for n, r in REGIONS.items()},
        "land_covers": {k: asdict(v) for k, v in LAND_COVERS.items()},
        "instrument": INSTRUMENT, "ancillary_errors": ERROR_BUDGET,
        "rt": {"world": lowtran_world_table().description,
               "simulation": "the project's band model (sftl_dask.physics.rtm.ReducedBandModel)"},
        "sites": table.to_dict("records"), "layout": layout,
    }


def _check_layout(scenes: int, size: int, shifted: float, max_shift: int) -> None:
    """Refuse a bad number of scenes, grid size (px), shifted share or largest shift (px): ``ValueError``."""
    if scenes < 1:
        raise ValueError(f"scenes must be >= 1, got {scenes}")
    if size < 64:
        raise ValueError(f"size must be >= 64 px, got {size}")
    if not 0 <= shifted <= 1:
        raise ValueError(f"shifted must be a share between 0 and 1, got {shifted}")
    if not 64 < max_shift < size:
        raise ValueError(f"max_shift must lie between 64 and the grid size ({size} px), got {max_shift}")


def _jobs(worlds: dict[str, tuple[Landscape, RegionClimate]], schedules: dict[str, list[dict[str, Any]]],
          tmp: Path, seed: int, layout: str = "map") -> list[tuple[Callable[..., Any], tuple[Any, ...], str]]:
    """The testbed's tasks, in order: (function, arguments, kind) for each scene, site, ERA5 month and GED tile
    (and, in the delivered layout, DEM tile)."""
    jobs: list[tuple[Callable[..., Any], tuple[Any, ...], str]] = []
    for name, sched in schedules.items():
        lsc, clim = worlds[name]
        for i, item in enumerate(sched):
            jobs.append((_scene_task, (item, lsc, clim, str(tmp), i, layout), "scene"))
    for si, site in enumerate(SITES):
        lsc, clim = worlds[site.region]
        jobs.append((_insitu_task, (si, lsc, clim, str(tmp), seed), "site"))
    for name, sched in schedules.items():
        lsc, clim = worlds[name]
        months = sorted({str(it["spec"].time_utc.astype("datetime64[M]")) for it in sched})
        for m in months:
            jobs.append((_era5_task, (name, m, clim, str(tmp), seed), "era5"))
        # delivered footprints are the sensor's (rotated by the heading, shifted): they reach past the region
        # grid, into cells the grid does not touch, and ingest needs GED (and the DEM) wherever they go
        cells = _cells(lsc, 0.1 if layout == "delivered" else 0.0)
        jobs += [(_ged_task, (name, lat0, lon0, lsc, str(tmp), seed), "ged") for lat0, lon0 in cells]
        if layout == "delivered":
            jobs += [(_dem_task, (lat0, lon0, lsc, str(tmp)), "dem") for lat0, lon0 in cells]
    return jobs


def _cells(lsc: Landscape, margin_deg: float) -> list[tuple[int, int]]:
    """The 1 x 1 degree cells (south-west corner lat, lon) within ``margin_deg`` of the region grid (0.1 deg:
    every delivered footprint, shifted by at most the grid size, lies inside)."""
    lon, lat = lsc.lonlat()
    return [(la, lo) for la in range(math.floor(lat.min() - margin_deg), math.floor(lat.max() + margin_deg) + 1)
            for lo in range(math.floor(lon.min() - margin_deg), math.floor(lon.max() + margin_deg) + 1)]


def _dem_task(lat0: int, lon0: int, lsc: Landscape, tmp: str) -> str:
    return write_copernicus_dem_tile(Path(tmp) / "dem", lsc, lat0, lon0).name


def _write_delivered_tables(tmp: Path, scene_rows: list[dict[str, Any]], results: list[Any],
                            jobs: list[tuple[Callable[..., Any], tuple[Any, ...], str]]) -> dict[str, Any]:
    """``truth/targets.csv``, ``calibration/GF5B_VIMI_calibration.csv`` (the reader's table format, one row per
    year and band, from the products' own GAINS/OFFSETS) and the delivered layout's summary."""
    targets = pd.DataFrame([t for r in scene_rows for t in r["targets"]],
                           columns=["scene_id", "lon", "lat", "height_m", "cloud", "region", "row", "col"])
    targets.to_csv(tmp / "truth" / "targets.csv", index=False)
    cal: dict[tuple[int, str], tuple[float, float]] = {}
    for r in scene_rows:
        for k, (g, o) in enumerate(zip(r["gains"], r["offsets"], strict=True)):
            key = (int(r["time_utc"][:4]), f"B{k + 1}")
            if cal.setdefault(key, (g, o)) != (g, o):
                raise RuntimeError(f"scene {r['scene_id']}: {key[1]} gains differ within {key[0]}")
    lines = ["# GF5-02 VIMI calibration of the sftl-dask testbed (radiance W m-2 sr-1 um-1 = gain * DN + offset),",
             "# in the format of sftl_dask/data/vimi_calibration.csv: for a delivered variant without GAINS/OFFSETS",
             "satellite,sensor,year,band,gain,offset,source"]
    lines += [f"GF5B,VIMI,{y},{b},{g!r},{o!r},testbed nominal calibration" for (y, b), (g, o) in sorted(
        cal.items(), key=lambda kv: (kv[0][0], int(kv[0][1][1:])))]
    (tmp / "calibration" / "GF5B_VIMI_calibration.csv").write_text("\n".join(lines) + "\n")
    dem = sorted(r for r, (_, _, kind) in zip(results, jobs, strict=True) if kind == "dem")
    return {"archive": ".tar.gz, sensor geometry, .rpb per raster", "dem_tiles": dem,
            "dem_posting_arcsec": DEM_POSTING_ARCSEC, "n_targets": len(targets),
            "rpc_check_max_px": max(r["rpc_check_max_px"] for r in scene_rows),
            "rpc_check_rms_px": max(r["rpc_check_rms_px"] for r in scene_rows),
            "rpc_limit_px": RPC_MAX_RESIDUAL_PX}


def _write_tables(tmp: Path, scene_rows: list[dict[str, Any]], site_rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Write ``sites.csv`` (with each site's stated broadband emissivity), ``truth/scenes.csv`` and
    ``truth/site_overpass_truth.csv``; returns the site table."""
    table = sites_table()
    eb = {r["site"]: r["broadband_emissivity"] for r in site_rows}
    table["broadband_emissivity"] = table["id"].map(eb)
    write_sites_csv(tmp / "sites.csv", table.to_dict("records"))
    flat = [{k: v for k, v in r.items() if k not in _NOT_IN_SCENES_CSV} for r in scene_rows]
    pd.DataFrame(flat).to_csv(tmp / "truth" / "scenes.csv", index=False)
    site_truth = [{"scene_id": r["scene_id"], "region": r["region"], "time_utc": r["time_utc"], "site": s,
                   "lst_pixel_k": v, "cloud": r["site_cloud"][s]}
                  for r in scene_rows for s, v in r["site_lst"].items()]
    pd.DataFrame(site_truth).to_csv(tmp / "truth" / "site_overpass_truth.csv", index=False)
    return table


def _run(jobs: list[tuple[Callable[..., Any], tuple[Any, ...], str]], client: Any,
         progress: Callable[[int, int], None] | None) -> list[Any]:
    """Run jobs through the one task runner; landscapes and climates go to each worker once."""
    return run_tasks([(fn, args) for fn, args, _ in jobs], client, progress=progress,
                     broadcast=(Landscape, RegionClimate))
