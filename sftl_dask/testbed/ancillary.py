"""Ancillary data of the synthetic world as users have it: ERA5 water vapour, ASTER GED
emissivity tiles and radiometer records, each with realistic errors against the truth.

Error sizes (see docs/testbed.md):

* ERA5 ``tcwv``: a regional bias (Huailai +6%, Heihe -8%; ERA5 TCWV biases of this size
  against GNSS/radiosondes are reported over complex terrain), 12% random error correlated
  over ~6 h, and the 0.25 deg grid's smoothing of the terrain and of the 5-10 km water pattern.
* ASTER GED: the multi-year mean surface (mean NDVI, mean soil moisture), plus a -0.004
  bias and 0.008 random error per 100 m pixel (GED v3 accuracy ~1%, Hulley et al. 2015).
* Radiometers: upwelling longwave noise 2.5 W m^-2 and downwelling 4 W m^-2 (CNR1/CGR3 class
  instruments), the footprint's representativeness error against the 40 m pixel (a fixed
  site offset up to +-0.6..1.5 K and a random 1.5-3.2 K by cover, scaled by 0.6-1.6 with the
  surface's solar heating), the broadband emissivity
  in the file (the site's mean state) differing from the day's true one, gaps and
  flagged rows.
"""

from __future__ import annotations

import weakref

import numpy as np
from numpy.typing import NDArray
from pyproj import Transformer

from sftl_dask.physics.constants import STEFAN_BOLTZMANN
from sftl_dask.physics.emissivity import broadband_emissivity
from sftl_dask.testbed.scene import site_lst
from sftl_dask.testbed.world import LAND_COVERS, SITES, Landscape, RegionClimate, Site, ar1

__all__ = ["ERROR_BUDGET", "era5_fields", "ged_arrays", "insitu_series", "mean_state_emissivity"]

#: Sizes of the error sources of the ancillary data (documented in docs/testbed.md).
ERROR_BUDGET = {
    "era5_random_fraction": 0.12,
    "era5_correlation_h": 6.0,
    "ged_bias": -0.004,
    "ged_random": 0.008,
    "ged_arid_bias": -0.015,
    "ged_arid_random": 0.02,
    "radiometer_up_noise_w_m2": 2.5,
    "radiometer_down_noise_w_m2": 4.0,
    "gap_fraction": 0.015,
    "bad_fraction": 0.003,
    "suspect_fraction": 0.01,
}


def era5_fields(clim: RegionClimate, times: NDArray[np.datetime64], seed: int,
                half_width_deg: float = 1.0) -> tuple[NDArray, NDArray, NDArray]:
    """Hourly ERA5-like ``tcwv`` (kg m^-2) on a 0.25 deg grid around the region.

    Returns
    -------
    tcwv : numpy.ndarray
        (time, lat, lon) in kg m^-2.
    lats : numpy.ndarray
        Latitudes, north to south (deg).
    lons : numpy.ndarray
        Longitudes, west to east (deg east).
    """
    r = clim.region
    rng = np.random.default_rng([seed, 404, int(times[0].astype("datetime64[h]").astype(np.int64))])
    lat0 = np.round(r.centre_lat * 4) / 4
    lon0 = np.round(r.centre_lon * 4) / 4
    lats = np.arange(lat0 + half_width_deg, lat0 - half_width_deg - 1e-9, -0.25)
    lons = np.arange(lon0 - half_width_deg, lon0 + half_width_deg + 1e-9, 0.25)
    base = clim.wvc(times)  # g cm-2 at the base elevation
    glat, glon = np.meshgrid(lats, lons, indexing="ij")
    pattern = 1.0 + 0.05 * (glat - r.centre_lat) - 0.03 * (glon - r.centre_lon)
    n_t, n_cell = times.size, glat.size
    phi = np.exp(-1.0 / ERROR_BUDGET["era5_correlation_h"])
    noise = np.stack([ar1(rng, n_t, phi, ERROR_BUDGET["era5_random_fraction"]) for _ in range(n_cell)], axis=1)
    noise = noise.reshape(n_t, *glat.shape)
    tcwv = base[:, None, None] * pattern[None] * (1.0 + r.era5_wvc_bias) * np.exp(noise) * 10.0
    return tcwv.astype(np.float32), lats, lons


def mean_state_emissivity(lsc: Landscape) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The multi-year mean surface: (emissivity (9, H, W), NDVI (H, W)) at mean NDVI and soil moisture.

    Made once per landscape object (~0.1 s on 640 px; each site's file and each GED tile asks for it) and kept
    while the landscape lives. Read only.
    """
    if lsc not in _MEAN_STATE:
        days = np.arange(15, 365, 30).astype("timedelta64[D]") + np.datetime64("2022-01-01", "D")
        ndvi = np.mean([lsc.ndvi(d.astype("datetime64[s]")) for d in days], axis=0).astype(np.float32)
        _MEAN_STATE[lsc] = (lsc.emissivity(ndvi, moisture=0.2), ndvi)
    return _MEAN_STATE[lsc]


_MEAN_STATE: weakref.WeakKeyDictionary[Landscape, tuple[NDArray[np.float32], NDArray[np.float32]]] = \
    weakref.WeakKeyDictionary()


def ged_arrays(lsc: Landscape, lat0: int, lon0: int, seed: int, n: int = 1000) -> dict[str, NDArray]:
    """Contents of one AG100 tile (1 deg, ``n`` x ``n``) whose north-west corner is (``lat0`` + 1, ``lon0``).

    Pixels inside the region grid take the landscape's mean state (block-averaged to ~120 m) plus the
    GED error; outside, a background with the region's mean emissivity.
    """
    rng = np.random.default_rng([seed, 505, lat0 * 1000 + lon0])
    step = 1.0 / n
    lat = (lat0 + 1) - (np.arange(n) + 0.5) * step
    lon = lon0 + (np.arange(n) + 0.5) * step
    glat, glon = np.meshgrid(lat, lon, indexing="ij")
    emis, ndvi = mean_state_emissivity(lsc)
    aster = emis[4:9]
    h, w = lsc.shape
    # 3x3 block means (120 m) of the truth, then nearest sampling at the tile's pixel centres
    hb, wb = h // 3 * 3, w // 3 * 3
    blk = aster[:, :hb, :wb].reshape(5, hb // 3, 3, wb // 3, 3).mean(axis=(2, 4))
    ndvi_b = ndvi[:hb, :wb].reshape(hb // 3, 3, wb // 3, 3).mean(axis=(1, 3))
    water_b = (lsc.cover[:hb, :wb] == LAND_COVERS["water"].code).reshape(hb // 3, 3, wb // 3, 3).mean(axis=(1, 3))
    elev_b = lsc.elevation_m[:hb, :wb].reshape(hb // 3, 3, wb // 3, 3).mean(axis=(1, 3))
    tr = Transformer.from_crs("EPSG:4326", lsc.crs, always_xy=True)
    x, y = tr.transform(glon, glat)
    a, _, c, _, e, f = lsc.transform
    col = np.floor((x - c) / (3 * a)).astype(np.int64)
    row = np.floor((y - f) / (3 * e)).astype(np.int64)
    inside = (row >= 0) & (row < hb // 3) & (col >= 0) & (col < wb // 3)
    mean_bg = aster.reshape(5, -1).mean(axis=1)
    e_mean = np.empty((5, n, n), dtype=np.float64)
    e_mean[:] = mean_bg[:, None, None] + 0.01 * rng.standard_normal((5, n, n)) * 0.5
    r_in, c_in = row[inside], col[inside]
    e_mean[:, inside] = blk[:, r_in, c_in]
    # arid covers (desert steppe, bare soil): GED's TES retrieval is less certain there (low spectral
    # contrast, mixed gravel and shrubs): larger random error and a low bias
    arid_px = np.isin(lsc.cover, [LAND_COVERS["desert_steppe"].code, LAND_COVERS["bare_soil"].code])
    arid_b = arid_px[:hb, :wb].reshape(hb // 3, 3, wb // 3, 3).mean(axis=(1, 3)) > 0.5
    arid = np.zeros((n, n), dtype=bool)
    arid[inside] = arid_b[r_in, c_in]
    bias = np.where(arid, ERROR_BUDGET["ged_arid_bias"], ERROR_BUDGET["ged_bias"])
    sigma = np.where(arid, ERROR_BUDGET["ged_arid_random"], ERROR_BUDGET["ged_random"])
    e_mean += bias[None] + sigma[None] * rng.standard_normal(e_mean.shape)
    nd = np.full((n, n), float(ndvi.mean())) + 0.05 * rng.standard_normal((n, n))
    nd[inside] = ndvi_b[r_in, c_in] + 0.02 * rng.standard_normal(r_in.size)
    lw = np.ones((n, n), dtype=np.uint8)
    lw[inside] = np.where(water_b[r_in, c_in] > 0.5, 2, 1)
    elev = np.full((n, n), float(lsc.elevation_m.mean()), dtype=np.float64)
    elev[inside] = elev_b[r_in, c_in]
    return {
        "emis_mean": np.clip(e_mean, 0.6, 1.0),
        "emis_sdev": np.full((5, n, n), 0.01) + 0.003 * rng.random((5, n, n)),
        "ndvi_mean": np.clip(nd, -0.3, 1.0),
        "ndvi_sdev": np.full((n, n), 0.06),
        "land_water": lw,
        "lat": glat,
        "lon": glon,
        "elevation_m": elev,
    }


def site_broadband_emissivity(lsc: Landscape, site: Site) -> float:
    """The broadband emissivity (8-13.5 um, Cheng et al. 2013) of a site's mean state: what its file states."""
    emis, _ = mean_state_emissivity(lsc)
    r, c = lsc.site_pixels[site.id]
    return float(broadband_emissivity(emis[4:9, r, c]))


def insitu_series(lsc: Landscape, clim: RegionClimate, site: Site, seed: int) -> dict[str, NDArray]:
    """Ten-minute radiometer records of one site over 2021-2023 (UTC times).

    Returns
    -------
    dict
        ``time_utc``, ``lw_up`` and ``lw_down`` (W m^-2, NaN in gaps), ``flag`` (0 good, 1 suspect,
        2 bad), ``lst_footprint`` (K, the footprint truth) and ``lst_pixel`` (K, the 40 m pixel truth),
        ``broadband_emissivity`` (the stated, mean-state value).
    """
    rng = np.random.default_rng([seed, 606, SITES.index(site)])
    t = np.arange(np.datetime64("2021-01-01T00:00", "s"), np.datetime64("2024-01-01T00:00", "s"),
                  np.timedelta64(600, "s"))
    r, c = lsc.site_pixels[site.id]
    lst_px = site_lst(lsc, clim, r, c, t)
    lc = LAND_COVERS[site.land_cover]
    offset = rng.uniform(-lc.rep_bias_k, lc.rep_bias_k)
    t_air = clim.air_temperature(t, float(lsc.elevation_m[r, c]))
    # the footprint-vs-pixel mismatch grows with the surface's thermal contrast (sunlit vs shaded,
    # dry vs wet components), i.e. with how far solar heating lifts the LST above the air
    contrast = 0.6 + 0.4 * np.clip(lst_px - t_air, 0.0, 25.0) / 10.0
    # structural, slowly varying (3 h correlation): it survives a +-15 min stability check, as in reality
    sigma = lc.rep_sigma_k * clim.region.footprint_heterogeneity
    rep = offset + contrast * ar1(rng, t.size, np.exp(-1.0 / 18.0), sigma)
    lst_fp = lst_px + rep
    # true broadband emissivity of the footprint on each day (vegetation and soil moisture change it)
    days = np.unique(t.astype("datetime64[D]")).astype("datetime64[s]")
    moist = clim.day_value("moisture", days + np.timedelta64(6 * 3600, "s"))
    eb_day = broadband_emissivity(np.moveaxis(lsc.emissivity(lsc.ndvi_at(r, c, days), moist, (r, c))[4:9], 0, -1))
    eb_t = eb_day[np.searchsorted(days, t.astype("datetime64[D]").astype("datetime64[s]"))]
    wvc = clim.wvc(t) * np.exp((clim.region.base_elevation_m - float(lsc.elevation_m[r, c])) / 2200.0)
    e_hpa = wvc / 0.17  # precipitable water (cm) ~ 0.17 x vapour pressure (hPa), Reitan-type relation
    eps_a = np.clip(1.24 * (e_hpa / t_air) ** (1.0 / 7.0), 0.5, 1.0)  # Brutsaert 1975 clear sky
    lw_down = eps_a * STEFAN_BOLTZMANN * t_air**4
    lw_up = eb_t * STEFAN_BOLTZMANN * lst_fp**4 + (1.0 - eb_t) * lw_down
    lw_up = lw_up + ERROR_BUDGET["radiometer_up_noise_w_m2"] * rng.standard_normal(t.size)
    lw_down = lw_down + ERROR_BUDGET["radiometer_down_noise_w_m2"] * rng.standard_normal(t.size)
    flag = np.zeros(t.size, dtype=np.int8)
    sus = rng.random(t.size) < ERROR_BUDGET["suspect_fraction"]
    flag[sus] = 1
    lw_up[sus] += rng.normal(0, 8.0, sus.sum())
    bad = rng.random(t.size) < ERROR_BUDGET["bad_fraction"]
    flag[bad] = 2
    lw_up[bad] = rng.choice([-999.0, 0.0, 2000.0], bad.sum())
    gaps = np.zeros(t.size, dtype=bool)
    n_gap = int(ERROR_BUDGET["gap_fraction"] * t.size / 36)  # gaps of ~6 h on average
    for start in rng.integers(0, t.size, n_gap):
        gaps[start : start + int(rng.integers(1, 72))] = True
    if rng.random() < 0.5:  # one multi-day outage
        s0 = int(rng.integers(0, t.size - 2000))
        gaps[s0 : s0 + int(rng.integers(144, 1440))] = True
    lw_up[gaps] = np.nan
    lw_down[gaps] = np.nan
    return {
        "time_utc": t, "lw_up": lw_up, "lw_down": lw_down, "flag": flag, "lst_footprint": lst_fp,
        "lst_pixel": lst_px, "broadband_emissivity": site_broadband_emissivity(lsc, site), "gaps": gaps,
    }
