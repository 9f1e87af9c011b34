"""One synthetic VIMI scene: the true surface and atmosphere, then the instrument.

The truth (LST, emissivity, NDVI, water vapour, clouds, view angle) goes through LOWTRAN7's
radiative transfer (a shipped table, :mod:`sftl_dask.testbed.lowtran_world`; the simulation table
uses the project's band model instead) to top-of-atmosphere radiance, then through an instrument
that is *not* the simulation's ideal sensor: per-channel calibration bias and slow
drift, NEdT noise, 12-bit DN quantisation with the nominal gains of the XML. The sizes
of these error sources are data in :data:`INSTRUMENT` with their sources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyproj import Transformer
from scipy.ndimage import binary_dilation

from sftl_dask.physics.atmosphere import AtmosphereProfile
from sftl_dask.physics.channels import THERMAL_NAMES, Channel, thermal_channels
from sftl_dask.physics.emissivity import aster_tir_channels, band_emissivity, default_library
from sftl_dask.physics.planck import BandPlanck, band_planck
from sftl_dask.physics.profiles import ProfileClimate, generate_profiles
from sftl_dask.physics.solar import earth_sun_distance_au, solar_position
from sftl_dask.testbed.lowtran_world import lowtran_world_table
from sftl_dask.testbed.world import LAND_COVERS, REGIONS, Landscape, RegionClimate, build_landscape, smooth_field

__all__ = ["HARD_CASES", "INSTRUMENT", "SceneSpec", "SceneTruth", "site_lst", "surface_reflectance",
           "synthesize_hard_case", "synthesize_scene"]

LAUNCH = np.datetime64("2021-09-07", "s")
SATELLITE_ALTITUDE_KM = 705.0
DN_MAX = 4095  # 12-bit

#: The instrument as the testbed builds it. Biases are brightness-temperature offsets at 300 K (K),
#: drifts in K per year since launch, gain errors as fractions of radiance (so the BT error grows
#: with scene temperature: ~0.7-1.3 K at 300 K). Their size follows the ~1 K changes that
#: cross-calibration of GF-5 thermal bands against MODIS introduced to both gains and offsets
#: (Ye et al. 2021, JAG); the split-window amplifies the 10.8-11.95 um difference of them.
INSTRUMENT: dict[str, Any] = {
    "bias_k": {"bt_08_20": 0.6, "bt_08_63": 0.4, "bt_10_80": -0.4, "bt_11_95": 0.3},
    "drift_k_per_year": {"bt_08_20": 0.15, "bt_08_63": 0.10, "bt_10_80": -0.10, "bt_11_95": 0.10},
    "gain_error": {"bt_08_20": 0.015, "bt_08_63": 0.010, "bt_10_80": -0.020, "bt_11_95": 0.010},
    "nedt_k": {c.name: c.nedt_k for c in thermal_channels()},
    "esun_w_m2_um": {"b1": 1970.0, "b2": 1843.0, "red": 1555.0, "nir": 1047.0, "b5": 227.0, "b6": 80.7},
    "tir_max_temperature_k": 380.0,
    "tir_offset": -0.1,
}

_MWIR = {"b7": (3.5, 3.9, 12.0), "b8": (4.85, 5.05, 5.0)}  # edges (um) and solar irradiance (W m-2 um-1)


@dataclass(frozen=True)
class SceneSpec:
    """What a scene is: its region, index, acquisition time and pointing."""

    region: str
    index: int
    time_utc: np.datetime64
    orbit: int
    product_id: int
    nadir_offset_km: float
    cloud_fraction: float
    seed: int


@dataclass(frozen=True, eq=False)
class SceneTruth:
    """A synthesized scene: truth, sensor BT and DN, and metadata."""

    spec: SceneSpec
    lst: NDArray[np.float32]
    emis: NDArray[np.float32]  # (9, H, W): VIMI 4 + ASTER 5
    ndvi: NDArray[np.float32]
    wvc: NDArray[np.float32]
    vza: NDArray[np.float32]
    cloud: NDArray[np.bool_]
    cloud_core: NDArray[np.bool_]
    cloud_cover: NDArray[np.float32]  # fraction of each pixel covered by cloud (0 clear, 1 core)
    bt_sensor: NDArray[np.float32]  # (4, H, W), measured BT before quantisation
    dn_b1_b6: NDArray[np.uint16]  # (6, 2H, 2W)
    dn_b7_b12: NDArray[np.uint16]  # (6, H, W)
    gains: tuple[float, ...]
    offsets: tuple[float, ...]
    solar_zenith: float
    solar_azimuth: float
    t_air_k: float
    wvc_scene: float
    site_truth: dict[str, float]


@lru_cache(maxsize=1)
def _mwir_planck() -> dict[str, BandPlanck]:
    return {k: BandPlanck(Channel.boxcar(k, k, 0.5 * (a + b), a, b)) for k, (a, b, _) in _MWIR.items()}


def tir_gains() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nominal gains/offsets of B9-B12 (radiance = gain * DN + offset, W m-2 sr-1 um-1)."""
    off = INSTRUMENT["tir_offset"]
    gains = tuple(float((bp.radiance(INSTRUMENT["tir_max_temperature_k"]) - off) / DN_MAX) for bp in band_planck())
    return gains, (off,) * 4


def vnir_gains() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nominal gains/offsets of B1-B8: full scale = reflectance 1 at overhead sun (B1-B6), 400 K (B7-B8)."""
    g = [INSTRUMENT["esun_w_m2_um"][k] / np.pi / DN_MAX for k in ("b1", "b2", "red", "nir", "b5", "b6")]
    g += [float(_mwir_planck()[k].radiance(400.0)) * 1.2 / DN_MAX for k in ("b7", "b8")]
    return tuple(float(x) for x in g), (0.0,) * 8


def _heating(lsc: Landscape, rows: Any, fv: NDArray, cos_sza_lag: NDArray | float, cos_sza: NDArray | float,
             dryness: float | NDArray) -> NDArray:
    """LST minus air temperature (K): solar heating by cover, reduced by vegetation, minus clear-sky cooling."""
    heat = np.zeros(np.shape(fv), dtype=np.float64)
    codes = lsc.cover[rows]
    for lc in LAND_COVERS.values():
        m = codes == lc.code
        if np.any(m):
            heat[m] = lc.heating_k
    s = np.clip(np.asarray(cos_sza_lag) / 0.94, 0.0, 1.2) ** 1.3
    cool = 2.5 * np.clip(1.0 - 3.0 * np.asarray(cos_sza), 0.0, 1.0)
    return heat * lsc.heating_scale[rows] * dryness * (1.0 - 0.85 * fv) * s - cool


def site_lst(lsc: Landscape, clim: RegionClimate, row: int, col: int, time_utc: NDArray[np.datetime64]) -> NDArray:
    """True LST (K) of one pixel at many times: the continuous model the scenes sample at overpass."""
    t = np.asarray(time_utc, dtype="datetime64[s]")
    lon, lat = _pixel_lonlat(lsc, row, col)
    zen, _ = solar_position(t, lat, lon)
    zen_lag, _ = solar_position(t - np.timedelta64(3600, "s"), lat, lon)
    ndvi = lsc.ndvi_at(row, col, t)
    fv = lsc.vegetation_fraction(ndvi, np.full(ndvi.shape, lsc.cover[row, col]))
    t_air = clim.air_temperature(t, float(lsc.elevation_m[row, col]))
    heat = _heating(lsc, (np.full(t.shape, row), np.full(t.shape, col)), fv, np.cos(np.deg2rad(zen_lag)),
                    np.cos(np.deg2rad(zen)), clim.day_value("dryness", t))
    return t_air + heat + float(lsc.lst_texture[row, col])


def _pixel_lonlat(lsc: Landscape, row: int, col: int) -> tuple[float, float]:
    tr = Transformer.from_crs(lsc.crs, "EPSG:4326", always_xy=True)
    lon, lat = tr.transform(lsc.x[col], lsc.y[row])
    return float(lon), float(lat)


def _scene_profile(spec: SceneSpec, clim: RegionClimate, z_km: float) -> AtmosphereProfile:
    t = np.asarray([spec.time_utc], dtype="datetime64[s]")
    t_air = float(clim.air_temperature(t, z_km * 1000.0)[0])
    base = clim.region.base_elevation_m / 1000.0
    wvc = float(clim.wvc(t)[0]) * float(np.exp((base - z_km) / 2.2))  # water scale height ~2.2 km
    summer = clim.region.t_air_k[6] - 273.15
    climate = ProfileClimate(
        t_surface_range=(t_air - 0.3, t_air + 0.3), wvc_range=(wvc * 0.97, wvc * 1.03),
        elevation_range_km=(z_km, z_km + 1e-3), inversion_scale=0.2 if t_air > 273.15 + summer - 15 else 1.0,
        name_prefix=f"{spec.region}{spec.index:04d}_",
    )
    return generate_profiles(1, seed=spec.seed, climate=climate)[0]


def _trilinear(values: NDArray, axes: tuple[NDArray, ...], points: tuple[NDArray, ...]) -> NDArray:
    """Interpolate ``values`` (..., n0, n1, n2) on 3 regular axes at points (each (H, W))."""
    idx, frac = [], []
    for ax, p in zip(axes, points, strict=True):
        if ax.size == 1:
            idx.append(np.zeros(p.shape, dtype=np.intp))
            frac.append(np.zeros(p.shape))
            continue
        i = np.clip(np.searchsorted(ax, p) - 1, 0, ax.size - 2)
        idx.append(i)
        frac.append(np.clip((p - ax[i]) / (ax[i + 1] - ax[i]), 0.0, 1.0))
    out = 0.0
    for c in range(8):
        b = [(c >> k) & 1 for k in range(3)]
        w = 1.0
        ii = []
        for k in range(3):
            w = w * (frac[k] if b[k] else (1.0 - frac[k]))
            ii.append(np.minimum(idx[k] + b[k], max(axes[k].size - 1, 0)))
        out = out + values[..., ii[0], ii[1], ii[2]] * w
    return out


def synthesize_scene(spec: SceneSpec, lsc: Landscape, clim: RegionClimate, *,
                     lst_offset_k: NDArray | Callable[[NDArray[np.bool_]], NDArray] | None = None) -> SceneTruth:
    """Build the truth and the sensor data of one scene.

    The steps draw from one generator, seeded by the scene, in a fixed order (surface texture, cloud
    temperature, cloud pattern, thermal noise, reflective noise): the same seed writes the same scene.

    Parameters
    ----------
    spec : SceneSpec
        The scene's region, time, pointing, cloud fraction and seed.
    lsc : Landscape
        The region's static landscape.
    clim : RegionClimate
        The region's weather.
    lst_offset_k : numpy.ndarray or callable, optional
        (H, W) kelvin added to the LST after the surface is drawn (the delivered layout's hot targets), or a
        function of the scene's cloud mask (H, W bool, cloud core and ring) returning it, so that the targets can
        be put in clear sky. It draws nothing from the generator, so the rest of the scene is the same with or
        without it.

    Returns
    -------
    SceneTruth
    """
    rng = np.random.default_rng([spec.seed, 303, spec.index])
    w = lsc.shape[1]
    t = np.asarray(spec.time_utc, dtype="datetime64[s]")
    sza, saa, sza_lag = _sun(lsc, t)

    ndvi, emis, t_air, lst = _surface(lsc, clim, t, sza, sza_lag, rng)
    cloud_core, cloud, frac, t_cloud = _cloud_pattern(spec, lsc, t_air, rng)
    if lst_offset_k is not None:
        offset = lst_offset_k(cloud) if callable(lst_offset_k) else lst_offset_k
        lst = (lst + offset).astype(lst.dtype)
    # View geometry: the scene is a window of the 60 km swath, across-track = columns.
    x_km = (np.arange(w) - (w - 1) / 2) * 0.04 + spec.nadir_offset_km
    vza_row = np.rad2deg(np.arctan(np.abs(x_km) / SATELLITE_ALTITUDE_KM))
    vza = np.broadcast_to(vza_row[None, :], lsc.shape).astype(np.float32)
    prof, (tau_px, lup_px, ldn_px), wvc = _atmosphere(spec, lsc, clim, vza_row, vza)

    # Top-of-atmosphere radiance, clear and cloudy.
    planck = band_planck()
    l_toa = np.stack([
        tau_px[c] * (emis[c] * planck[c].radiance(lst) + (1 - emis[c]) * ldn_px[c]) + lup_px[c] for c in range(4)
    ])
    _mix_clouds(l_toa, frac, t_cloud, planck)
    bt_sensor, dn_tir, gains, offsets = _thermal_instrument(t, lsc, planck, l_toa, rng)
    dn_vnir, dn_mwir, vg, vo = _reflective_bands(t, lsc, ndvi, sza, frac, lst, t_cloud, rng)
    dn_b7_b12 = np.concatenate([dn_mwir, dn_tir]).astype(np.uint16)

    site_truth = {sid: float(lst[r, c]) for sid, (r, c) in lsc.site_pixels.items()}
    return SceneTruth(
        spec=spec, lst=lst, emis=emis, ndvi=ndvi, wvc=wvc, vza=vza, cloud=cloud, cloud_core=cloud_core,
        cloud_cover=np.asarray(frac, dtype=np.float32) * np.ones(lsc.shape, dtype=np.float32),
        bt_sensor=bt_sensor, dn_b1_b6=dn_vnir.astype(np.uint16), dn_b7_b12=dn_b7_b12,
        gains=tuple(vg[:8]) + gains, offsets=tuple(vo[:8]) + offsets, solar_zenith=sza, solar_azimuth=saa,
        t_air_k=float(np.mean(t_air)), wvc_scene=float(prof.total_column_water()), site_truth=site_truth,
    )


def _sun(lsc: Landscape, t: np.datetime64) -> tuple[float, float, float]:
    """Solar zenith and azimuth (deg) at the scene centre at ``t``, and the zenith an hour before."""
    h, w = lsc.shape
    lon_c, lat_c = _pixel_lonlat(lsc, h // 2, w // 2)
    sza, saa = solar_position(t, lat_c, lon_c)
    sza_lag, _ = solar_position(t - np.timedelta64(3600, "s"), lat_c, lon_c)
    return float(sza), float(saa), float(sza_lag)


def _surface(lsc: Landscape, clim: RegionClimate, t: np.datetime64, sza: float, sza_lag: float,
             rng: np.random.Generator) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """The surface state at ``t``: NDVI, band emissivities, air temperature (K) and LST (K, float32)."""
    h, w = lsc.shape
    ndvi = lsc.ndvi(t)
    fv = lsc.vegetation_fraction(ndvi)
    moisture = float(clim.day_value("moisture", t[None])[0])
    emis = lsc.emissivity(ndvi, moisture)
    t_air = clim.air_temperature(np.full(lsc.shape, t), lsc.elevation_m)
    dry = float(clim.day_value("dryness", t[None])[0])
    heat = _heating(lsc, np.s_[:, :], fv, np.cos(np.deg2rad(sza_lag)), np.cos(np.deg2rad(sza)), dry)
    # Scene-specific texture, held to zero at the sites so the site model is the pixel truth.
    tex = 0.7 * smooth_field(rng, lsc.shape, 3.0)
    rr, cc = np.mgrid[0:h, 0:w]
    for r0, c0 in lsc.site_pixels.values():
        tex *= 1.0 - np.exp(-((rr - r0) ** 2 + (cc - c0) ** 2) / (2 * 2.0**2))
    lst = (t_air + heat + lsc.lst_texture + tex).astype(np.float32)
    return ndvi, emis, t_air, lst


def _atmosphere(spec: SceneSpec, lsc: Landscape, clim: RegionClimate, vza_row: NDArray,
                vza: NDArray) -> tuple[AtmosphereProfile, tuple[NDArray, NDArray, NDArray], NDArray]:
    """The scene's profile, and per pixel its transmittance, upwelling and downwelling radiance and water column.

    One profile at the lowest surface gives the air temperature and water column at each elevation node; the
    terms come from LOWTRAN7 (the shipped table of library profiles), not from the band model that makes the
    simulation table, on a small (elevation, water, angle) grid.
    """
    z = lsc.elevation_m / 1000.0
    z_nodes = np.linspace(float(z.min()), float(z.max()) + 1e-3, 3)
    w_nodes = np.array([0.85, 1.0, 1.15])
    v_nodes = np.unique(np.round([float(vza_row.min()), float(np.median(vza_row)), float(vza_row.max())], 4))
    prof = _scene_profile(spec, clim, float(z_nodes[0]))
    world = lowtran_world_table()
    tau = np.zeros((4, 3, 3, v_nodes.size))
    lup = np.zeros_like(tau)
    ldn = np.zeros_like(tau)
    wcol = np.zeros((1, 3, 3, 1))
    for i, zz in enumerate(z_nodes):
        p_z = prof if i == 0 else prof.with_surface_at(float(zz))
        w_z = p_z.total_column_water() * w_nodes
        tau[:, i], lup[:, i], dn = world.terms(float(zz), p_z.surface_air_temperature_k, w_z, v_nodes)
        ldn[:, i] = dn[:, :, None]
        wcol[0, i, :, 0] = w_z
    pts = (z.astype(np.float64), lsc.water_scale.astype(np.float64), vza.astype(np.float64))
    axes = (z_nodes, w_nodes, v_nodes)
    tau_px, lup_px, ldn_px = (_trilinear(a, axes, pts) for a in (tau, lup, ldn))
    wvc = _trilinear(wcol, (z_nodes, w_nodes, np.zeros(1)), pts)[0].astype(np.float32)
    return prof, (tau_px, lup_px, ldn_px), wvc


def _cloud_pattern(spec: SceneSpec, lsc: Landscape, t_air: NDArray,
                   rng: np.random.Generator) -> tuple[NDArray, NDArray, NDArray, float]:
    """Clouds over ``spec.cloud_fraction`` of the scene: the cloud core, the cloud with its thin ring, the cloud
    fraction per pixel and the cloud top temperature (K). The radiance does not enter: the pattern is drawn
    before the surface's radiance is known (the hot targets avoid it), and :func:`_mix_clouds` mixes it in."""
    cloud_core = np.zeros(lsc.shape, dtype=bool)
    cloud = np.zeros(lsc.shape, dtype=bool)
    frac = np.zeros(lsc.shape)
    t_cloud = float(np.mean(t_air)) - rng.uniform(15.0, 40.0)
    if spec.cloud_fraction > 0:
        f = smooth_field(rng, lsc.shape, 12.0)
        cloud_core = f > np.quantile(f, 1.0 - spec.cloud_fraction)
        ring = binary_dilation(cloud_core, iterations=2) & ~cloud_core
        cloud = cloud_core | ring
        frac = np.where(cloud_core, 1.0, 0.0) + np.where(ring, rng.uniform(0.05, 0.4, lsc.shape), 0.0)
    return cloud_core, cloud, frac, t_cloud


def _mix_clouds(l_toa: NDArray, frac: NDArray, t_cloud: float, planck: Any) -> None:
    """Mix clouds of top temperature ``t_cloud`` (K) over fraction ``frac`` into ``l_toa`` (4, H, W), in place."""
    if np.any(frac > 0):
        for c in range(4):
            l_toa[c] = (1 - frac) * l_toa[c] + frac * planck[c].radiance(np.full(frac.shape, t_cloud))


def _thermal_instrument(t: np.datetime64, lsc: Landscape, planck: Any, l_toa: NDArray,
                        rng: np.random.Generator) -> tuple[NDArray, NDArray, tuple[float, ...], tuple[float, ...]]:
    """The instrument on the thermal bands: calibration bias + drift (as BT offsets at 300 K), NEdT noise, 12-bit
    DN. Returns the sensor's brightness temperatures (K), the DNs, and the bands' gains and offsets."""
    h, w = lsc.shape
    years = float((t - LAUNCH).astype(np.float64) / (365.25 * 86400))
    gains, offsets = tir_gains()
    dn_tir = np.zeros((4, h, w), dtype=np.uint16)
    bt_sensor = np.zeros((4, h, w), dtype=np.float32)
    for c, name in enumerate(THERMAL_NAMES):
        bp = planck[c]
        dldt = float(bp.derivative(300.0))
        bias = INSTRUMENT["bias_k"][name] + INSTRUMENT["drift_k_per_year"][name] * max(years, 0.0)
        noise = rng.standard_normal(lsc.shape) * INSTRUMENT["nedt_k"][name] * dldt
        l_meas = l_toa[c] * (1.0 + INSTRUMENT["gain_error"][name]) + bias * dldt + noise
        bt_sensor[c] = bp.brightness_temperature(np.clip(l_meas, bp.radiance_table[0], bp.radiance_table[-1]))
        dn_tir[c] = np.clip(np.rint((l_meas - offsets[c]) / gains[c]), 1, DN_MAX).astype(np.uint16)
    return bt_sensor, dn_tir, gains, offsets


def surface_reflectance(lsc: Landscape, ndvi: NDArray, red_soil: NDArray | None = None) -> NDArray:
    """Surface reflectance (6, H, W) in B1, B2, red, NIR, B5 (1.65 um), B6 (2.2 um) from cover and NDVI; the
    bare-soil red reflectance is each cover's ``red_soil`` unless ``red_soil`` (H, W) is given."""
    if red_soil is None:
        red_soil = np.zeros(lsc.shape)
        for lc in LAND_COVERS.values():
            red_soil[lsc.cover == lc.code] = lc.red_soil
    fv_lin = np.clip((ndvi - 0.1) / 0.8, 0, 1)
    red = fv_lin * 0.04 + (1 - fv_lin) * red_soil
    nir = red * (1 + ndvi) / np.maximum(1 - ndvi, 0.05)
    return np.stack([0.8 * red + 0.02, 0.9 * red + 0.03, red, nir, 0.5 * (red + nir) + 0.05,
                     0.4 * (red + nir) + 0.03])


def _reflective_bands(t: np.datetime64, lsc: Landscape, ndvi: NDArray, sza: float, frac: NDArray, lst: NDArray,
                      t_cloud: float, rng: np.random.Generator, *, refl_toa: NDArray | None = None
                      ) -> tuple[NDArray, NDArray, Any, Any]:
    """Reflective and mid-infrared bands (TOA, no atmosphere) from cover, NDVI and clouds: the six 20 m
    reflective DNs, the two mid-infrared DNs, and the VNIR gains and offsets. ``refl_toa`` (6, H, W), clouds
    included, replaces the reflectance of cover, NDVI and opaque clouds (the hard cases); ``frac`` still mixes
    the clouds into the mid-infrared bands."""
    vg, vo = vnir_gains()
    d_au = float(earth_sun_distance_au(t))
    mu_s = max(np.cos(np.deg2rad(sza)), 0.05)
    if refl_toa is None:
        refl = (1 - frac) * surface_reflectance(lsc, ndvi) + frac * 0.6
    else:
        refl = refl_toa
    esun = [INSTRUMENT["esun_w_m2_um"][k] for k in ("b1", "b2", "red", "nir", "b5", "b6")]
    dn_vnir40 = np.stack([np.clip(refl[k] * esun[k] * mu_s / (np.pi * d_au**2) / vg[k], 0, DN_MAX)
                          for k in range(6)])
    dn_vnir = np.repeat(np.repeat(dn_vnir40, 2, axis=1), 2, axis=2)
    dn_vnir = np.clip(np.rint(dn_vnir * (1 + 0.01 * rng.standard_normal(dn_vnir.shape))), 1, DN_MAX)
    mw = []
    for k, key in ((6, "b7"), (7, "b8")):
        bp = _mwir_planck()[key]
        sun = 0.15 * _MWIR[key][2] * mu_s / np.pi
        lt = 0.8 * (0.92 * bp.radiance(np.clip(lst, 200, 399)) + sun)
        lt = (1 - frac) * lt + frac * (bp.radiance(np.full(lsc.shape, t_cloud)) + 0.5 * sun)
        mw.append(np.clip(np.rint(lt / vg[k]), 1, DN_MAX))
    return dn_vnir, np.stack(mw), vg, vo



# --------------------------------------------------------------------------------------------- hard cases (opt-in)
#: The cloud mask's hard cases (:func:`synthesize_hard_case`): where, when and what. Each is an ordinary scene of
#: the region at its overpass hour (10:45 local solar time), with one thing changed on the radiative path.
#:
#: * ``bright_cold_desert``: a winter-morning Gobi (Heihe, January: air ~-6 C): 70 % desert steppe, 20 % bare
#:   soil, whose bare red reflectance is 0.31-0.37 (gravel and sand Gobi; the default testbed's 0.22-0.24 stays
#:   under the bright test's 0.25) and 12 % ordinary cold cloud.
#: * ``snow``: Huailai in January with snow on ~55 % of the ground (fine-grained snow, reflectance below) at
#:   ``min(T_air - 1 K, 272.9 K)`` with its library emissivity (``crtm_fresh_snow``), and 12 % ordinary cold cloud.
#: * ``warm_thin_cloud``: Huailai in July under a low semi-transparent water cloud over ~35 % of the scene, its
#:   top 3 K below the air temperature (~6 K below the sunlit surface); see :data:`THIN_CLOUD`.
HARD_CASES: dict[str, dict[str, Any]] = {
    "bright_cold_desert": {"region": "heihe", "day": "2022-01-12", "cloud_fraction": 0.12,
                           "cover_fractions": {"desert_steppe": 0.7, "bare_soil": 0.2, "cropland": 0.1}},
    "snow": {"region": "huailai", "day": "2022-01-20", "cloud_fraction": 0.12, "snow_fraction": 0.55},
    "warm_thin_cloud": {"region": "huailai", "day": "2022-07-20", "cloud_fraction": 0.30},
}

#: Fine-grained snow's reflectance in B1, B2, red, NIR, B5 (1.65 um), B6 (2.2 um): ~0.9 in the visible falling
#: to ~0.8 at 0.8 um and ~0.1 / ~0.05 at 1.65 / 2.2 um (ice absorbs), as in Warren (1982, Rev. Geophys. 20:67)
#: and Dozier (1989, Remote Sens. Environ. 28:9), the basis of the NDSI snow test (Hall et al. 2002).
SNOW_REFLECTANCE = (0.92, 0.90, 0.87, 0.78, 0.10, 0.05)

#: The warm thin cloud: visible optical depth ``tau`` (0.3-1 in its fringe, 1-4 inside), two-stream reflectance
#: ``(1 - g) tau / (2 + (1 - g) tau)`` with the droplets' asymmetry ``g`` = 0.85, less at 1.65 / 2.2 um where water
#: absorbs (``swir_factor``); thermal absorption optical depth ``abs_ratio * tau`` at 10.8 um, scaled per band by
#: ``beta`` (the ratio tau_abs(band) / tau_abs(10.8 um) of small water droplets: ~1.3 at 12 um, Parol et al.
#: 1991, J. Appl. Meteor. 30:973; smaller at 8-9 um where liquid water's absorption index is ~2x lower, Hale and
#: Querry 1973). Its band emissivity is ``1 - exp(-tau_abs / cos(vza))``.
THIN_CLOUD: dict[str, Any] = {"tau_core": (1.0, 4.0), "tau_fringe": (0.3, 1.0), "asymmetry": 0.85,
                              "swir_factor": (0.85, 0.7), "abs_ratio": 0.5, "beta": (0.75, 0.8, 1.0, 1.3),
                              "below_air_k": 3.0}


def _hard_case_world(case: str, size: int, seed: int) -> tuple[SceneSpec, Landscape, RegionClimate]:
    if case not in HARD_CASES:
        raise ValueError(f"hard case must be one of {sorted(HARD_CASES)}, got {case!r}")
    cfg = HARD_CASES[case]
    region = REGIONS[cfg["region"]]
    if "cover_fractions" in cfg:
        region = replace(region, cover_fractions=cfg["cover_fractions"])
    lsc = build_landscape(region, size, seed, sites=False)
    clim = RegionClimate.make(REGIONS[cfg["region"]], seed)
    local_h = 10.75 - region.utc_offset_h
    t = np.datetime64(cfg["day"], "s") + np.timedelta64(round(local_h * 3600), "s")
    spec = SceneSpec(region=region.name, index=900 + sorted(HARD_CASES).index(case), time_utc=t, orbit=9000,
                     product_id=9_000_000 + sorted(HARD_CASES).index(case), nadir_offset_km=0.0,
                     cloud_fraction=cfg["cloud_fraction"], seed=seed)
    return spec, lsc, clim


def _snow_cover(lsc: Landscape, seed: int, fraction: float, t_air: NDArray, state: dict[str, NDArray]) -> None:
    """Put snow on ``fraction`` of the ground, in place in ``state`` (``lst``, ``emis``, ``ndvi``, ``refl``)."""
    f = smooth_field(np.random.default_rng([seed, 404]), lsc.shape, 15.0)
    snow = f > np.quantile(f, 1.0 - fraction)
    lib = {sp.name: sp for sp in default_library()}["crtm_fresh_snow"]
    eps = np.concatenate([band_emissivity(lib)[0], band_emissivity(lib, aster_tir_channels())[0]])
    state["lst"] = np.where(snow, np.minimum(t_air - 1.0 + 0.3 * f, 272.9), state["lst"]).astype(np.float32)
    state["emis"] = np.where(snow[None], eps[:, None, None], state["emis"]).astype(np.float32)
    rho = np.asarray(SNOW_REFLECTANCE)[:, None, None]
    state["refl"] = np.where(snow[None], rho, state["refl"])
    ndvi_snow = (SNOW_REFLECTANCE[3] - SNOW_REFLECTANCE[2]) / (SNOW_REFLECTANCE[3] + SNOW_REFLECTANCE[2])
    state["ndvi"] = np.where(snow, ndvi_snow, state["ndvi"]).astype(np.float32)


def _thin_cloud(cloud_core: NDArray, cloud: NDArray, vza: NDArray, refl: NDArray, rng: np.random.Generator
                ) -> tuple[NDArray, NDArray, NDArray]:
    """The warm thin cloud over ``cloud`` (its ``cloud_core`` optically thicker): thermal band emissivities
    (4, H, W), TOA reflectance (6, H, W) over the surface's ``refl`` (adding method) and the visible optical depth."""
    field = 0.5 + 0.5 * np.tanh(smooth_field(rng, cloud.shape, 6.0))
    lo, hi = THIN_CLOUD["tau_core"]
    flo, fhi = THIN_CLOUD["tau_fringe"]
    tau = np.where(cloud_core, lo + (hi - lo) * field, np.where(cloud, flo + (fhi - flo) * field, 0.0))
    g = THIN_CLOUD["asymmetry"]
    r_vis = (1 - g) * tau / (2 + (1 - g) * tau)
    r_c = np.stack([r_vis] * 4 + [r_vis * k for k in THIN_CLOUD["swir_factor"]])
    refl_toa = r_c + (1 - r_c) ** 2 * refl / (1 - r_c * refl)
    mu = np.cos(np.deg2rad(vza))
    eps = np.stack([1 - np.exp(-THIN_CLOUD["abs_ratio"] * b * tau / mu) for b in THIN_CLOUD["beta"]])
    return eps, refl_toa, tau


def synthesize_hard_case(case: str, *, size: int = 160, seed: int = 0) -> tuple[SceneTruth, Landscape]:
    """One of the cloud mask's hard cases (:data:`HARD_CASES`), on the same radiative path as every scene:
    surface emissivity and reflectance, LOWTRAN7 terms to TOA radiance, clouds mixed in, then the instrument.

    Opt-in: nothing of :func:`synthesize_scene` or the default testbed changes. The truth's ``cloud`` is every
    pixel with cloud (the thin cloud's fringe included), ``cloud_cover`` its fraction (the thin cloud: its
    emissivity at 10.8 um).

    Parameters
    ----------
    case : str
        ``bright_cold_desert``, ``snow`` or ``warm_thin_cloud``.
    size : int
        Grid size (40 m pixels); no sites are placed, so any size from ~64 px works.
    seed : int
        Seed of the landscape, weather and scene.

    Returns
    -------
    (SceneTruth, Landscape)

    Raises
    ------
    ValueError
        On an unknown case.
    """
    spec, lsc, clim = _hard_case_world(case, size, seed)
    rng = np.random.default_rng([spec.seed, 303, spec.index])
    t = np.asarray(spec.time_utc, dtype="datetime64[s]")
    sza, saa, sza_lag = _sun(lsc, t)
    ndvi, emis, t_air, lst = _surface(lsc, clim, t, sza, sza_lag, rng)
    cloud_core, cloud, frac, t_cloud = _cloud_pattern(spec, lsc, t_air, rng)
    red_soil = None
    if case == "bright_cold_desert":
        bright = np.isin(lsc.cover, [LAND_COVERS[k].code for k in ("desert_steppe", "bare_soil")])
        red_soil = np.where(bright, 0.34 + 0.03 * np.tanh(smooth_field(rng, lsc.shape, 8.0)), 0.16)
    state = {"lst": lst, "emis": emis, "ndvi": ndvi, "refl": surface_reflectance(lsc, ndvi, red_soil)}
    if case == "snow":
        _snow_cover(lsc, spec.seed, HARD_CASES[case]["snow_fraction"], t_air, state)
    x_km = (np.arange(lsc.shape[1]) - (lsc.shape[1] - 1) / 2) * 0.04 + spec.nadir_offset_km
    vza_row = np.rad2deg(np.arctan(np.abs(x_km) / SATELLITE_ALTITUDE_KM))
    vza = np.broadcast_to(vza_row[None, :], lsc.shape).astype(np.float32)
    frac_tir = np.zeros((4, *lsc.shape))  # the thin cloud's band emissivities
    if case == "warm_thin_cloud":
        frac_tir, refl_toa, _ = _thin_cloud(cloud_core, cloud, vza, state["refl"], rng)
        t_cloud = float(np.mean(t_air)) - THIN_CLOUD["below_air_k"]
        frac = frac_tir[2]
    else:
        refl_toa = (1 - frac) * state["refl"] + frac * 0.6
    prof, (tau_px, lup_px, ldn_px), wvc = _atmosphere(spec, lsc, clim, vza_row, vza)
    planck = band_planck()
    lst, emis = state["lst"], state["emis"]
    l_surf = np.stack([emis[c] * planck[c].radiance(lst) + (1 - emis[c]) * ldn_px[c] for c in range(4)])
    if case == "warm_thin_cloud":  # a low layer under the whole atmosphere: it emits, and passes 1 - emissivity
        l_surf = (1 - frac_tir) * l_surf + frac_tir * np.stack([planck[c].radiance(np.full(lsc.shape, t_cloud))
                                                                for c in range(4)])
    l_toa = np.stack([tau_px[c] * l_surf[c] + lup_px[c] for c in range(4)])
    if case != "warm_thin_cloud":  # opaque clouds at their top, above the atmosphere's emission, as every scene
        _mix_clouds(l_toa, frac, t_cloud, planck)
    bt_sensor, dn_tir, gains, offsets = _thermal_instrument(t, lsc, planck, l_toa, rng)
    dn_vnir, dn_mwir, vg, vo = _reflective_bands(t, lsc, state["ndvi"], sza, frac, lst, t_cloud, rng,
                                                 refl_toa=refl_toa)
    truth = SceneTruth(
        spec=spec, lst=lst, emis=emis, ndvi=state["ndvi"], wvc=wvc, vza=vza, cloud=cloud, cloud_core=cloud_core,
        cloud_cover=(np.asarray(frac) * np.ones(lsc.shape)).astype(np.float32), bt_sensor=bt_sensor,
        dn_b1_b6=dn_vnir.astype(np.uint16), dn_b7_b12=np.concatenate([dn_mwir, dn_tir]).astype(np.uint16),
        gains=tuple(vg[:8]) + gains, offsets=tuple(vo[:8]) + offsets, solar_zenith=sza, solar_azimuth=saa,
        t_air_k=float(np.mean(t_air)), wvc_scene=float(prof.total_column_water()), site_truth={},
    )
    return truth, lsc


__all__ += ["tir_gains", "vnir_gains"]
