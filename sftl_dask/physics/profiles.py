"""TIGR-like clear-sky atmospheric profiles, generated from the AFGL 1986 climatologies.

The simulation table needs a population of clear-sky columns like the TIGR
database (946 profiles, surface air temperature ~230-315 K, precipitable water
~0.1-6.5 g cm^-2). TIGR itself cannot be shipped, so :func:`generate_profiles`
builds a population with the same spread, deterministically from a seed:

* **Surface.** Elevation and surface air temperature are drawn uniformly in their
  ranges, rejecting hot highlands (``T_s + 5 K/km * z_s > 320 K``).
* **Troposphere.** An optional surface-based or low elevated inversion (more often,
  and stronger, the colder the surface: winter and night), then two lapse-rate
  segments of 4-9 K/km up to a tropopause whose height (7.5-18.5 km) and temperature
  follow the sea-level-equivalent temperature, as in the AFGL atmospheres
  (tropical: ~16.5 km, ~195 K; subarctic winter: ~8.5 km, ~215 K).
* **Middle atmosphere.** A blend of the AFGL tropical, mid-latitude and subarctic
  atmospheres, weighted by the sea-level-equivalent temperature, joined smoothly to
  the tropopause and perturbed by a few K.
* **Water vapour.** A relative-humidity profile ``RH(h) = s * (b + (1 - b) exp(-h / H)) * taper(h)``
  (surface RH ``s``, upper-tropospheric fraction ``b``, decay height ``H``, a taper to 0.3 at
  the tropopause), relative to ice below 273.16 K and to liquid water above, so no level is
  ever supersaturated; vapour pressure never exceeds that of a 303.15 K dewpoint either.
  The drawn surface RH spans 0.03-1 (median ~0.7). ``s`` is solved so that
  the column hits a precipitable water drawn within ``wvc_range`` *and* within what the
  temperature profile can hold: very cold columns are necessarily dry. Above the
  tropopause the AFGL stratospheric mixing ratio (~3-7 ppmv) is scaled by 0.7-1.3.
* **Ozone.** The blended AFGL ozone profile scaled by a log-normal factor (sigma 0.15).
* **Pressure.** Sea-level pressure ~1013 hPa (higher under cold air), reduced to the
  surface and integrated hydrostatically upward with the virtual temperature and
  gravity decreasing with altitude.

Levels follow the terrain near the ground and become fixed altitudes above 20 km:
45 levels from the surface to 100 km, 100-250 m apart in the boundary layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from sftl_dask.physics.atmosphere import (
    CO2_PPMV_DEFAULT,
    AtmosphereProfile,
    afgl,
    loglinear_layer_integral,
)
from sftl_dask.physics.checks import check_range
from sftl_dask.physics.constants import AVOGADRO, BOLTZMANN_K, GRAVITY, MOLAR_MASS_DRY_AIR, MOLAR_MASS_H2O
from sftl_dask.physics.rtm import EARTH_RADIUS_KM

__all__ = [
    "ProfileClimate",
    "generate_profiles",
    "hypsometric_altitude_km",
    "profile_summary",
    "saturation_vapour_pressure_hpa",
]

#: Specific gas constants (J kg^-1 K^-1) of dry air and water vapour, from R = N_A k.
_R_DRY = AVOGADRO * BOLTZMANN_K / (MOLAR_MASS_DRY_AIR * 1e-3)
_R_VAPOUR = AVOGADRO * BOLTZMANN_K / (MOLAR_MASS_H2O * 1e-3)
#: Ratio of the molar masses of water and dry air.
_EPSILON = MOLAR_MASS_H2O / MOLAR_MASS_DRY_AIR
#: Triple point of water (K): saturation is over ice below it, over liquid water above.
_T_TRIPLE_K = 273.16

#: Level heights above the surface (km) at sea level; 45 levels, finer in the boundary layer.
_REFERENCE_HEIGHTS_KM = np.array(
    [0.0, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0,
     6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 19.0, 20.0,
     22.0, 24.0, 26.0, 28.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0, 70.0, 80.0, 100.0]
)  # fmt: skip
#: Levels are terrain-following at the ground and blend into fixed altitudes at this height (km).
_HYBRID_TOP_KM = 20.0

#: AFGL atmospheres ordered by sea-level temperature: the climatology chain the blend walks along.
_CHAIN = ("subarctic_winter", "midlatitude_winter", "subarctic_summer", "midlatitude_summer", "tropical")

#: Tropopause against sea-level-equivalent temperature T0 (K): height (km) and temperature (K),
#: read off the AFGL 1986 atmospheres (subarctic winter ... tropical) and extended at both ends.
_TROPOPAUSE_T0_K = np.array([245.0, 257.0, 272.0, 288.0, 294.0, 300.0, 310.0])
_TROPOPAUSE_Z_KM = np.array([8.0, 8.5, 10.0, 11.5, 13.0, 16.0, 17.0])
_TROPOPAUSE_T_K = np.array([212.0, 215.0, 218.0, 216.0, 212.0, 196.0, 192.0])

#: Lapse-rate bounds (K/km) of the free troposphere.
_LAPSE_MIN, _LAPSE_MAX = 4.0, 9.0
#: Standard lapse rate (K/km) used to reduce temperatures to sea level.
_LAPSE_STANDARD = 6.5
#: Hot-highland limit: T_s + 5 K/km * z_s must not exceed 320 K (hottest 2-m air temperatures
#: reduced to sea level); dropped when the requested ranges leave too few draws.
_HOT_HIGHLAND_LAPSE, _HOT_HIGHLAND_T0_K = 5.0, 320.0
#: Highest dewpoint (K) anywhere in a column (observed maxima are ~303-308 K).
_DEWPOINT_MAX_K = 303.15
#: Range of the surface relative humidity solved for.
_RH_SURFACE_MIN, _RH_SURFACE_MAX = 0.03, 1.0
#: Exponent of the draw of the water column within its feasible range (<1 favours moister columns).
_WVC_DRAW_EXPONENT = 0.6
#: Ranges of the RH profile's upper-tropospheric fraction b and decay height H (km); with the taper
#: towards the tropopause they span the AFGL atmospheres' RH profiles (0.4-0.8 aloft, 0.1-0.3 at the top).
_RH_FLOOR = (0.3, 0.9)
_RH_DECAY_KM = (1.5, 6.0)


@dataclass(frozen=True)
class ProfileClimate:
    """The population asked of :func:`generate_profiles`, e.g. for one region.

    Parameters
    ----------
    t_surface_range : tuple of float
        Surface air temperature range (K), drawn uniformly; within [200, 325].
    wvc_range : tuple of float
        Precipitable water range (g cm^-2); within [0, 10]. Targets are drawn within it
        as far as the temperature profile allows: a column too cold to hold ``wvc_range[0]``
        even near saturation stays below it.
    elevation_range_km : tuple of float
        Surface elevation range (km above sea level), drawn uniformly; within [-0.4, 6].
    inversion_scale : float
        Multiplies the probability of a low temperature inversion (1: the TIGR-like mix of
        day and night, winter and summer; 0: none, e.g. daytime summer scenes); >= 0.
    co2_ppmv : float
        Uniformly mixed CO2 (ppmv) written into every profile (AFGL: 330; 2021-2023: ~415).
    name_prefix : str
        Profile names are ``f"{name_prefix}{i:06d}"``; give each region its own prefix
        so that profiles of two populations can share a table.

    Raises
    ------
    ValueError
        On reversed or out-of-range ranges, a negative ``inversion_scale`` or an empty prefix.

    Examples
    --------
    The irrigated oasis and desert of the middle Heihe in summer daytime:

    >>> heihe = ProfileClimate(t_surface_range=(280.0, 312.0), wvc_range=(0.3, 3.5),
    ...                        elevation_range_km=(1.4, 3.1), inversion_scale=0.3, name_prefix="heihe")
    """

    t_surface_range: tuple[float, float] = (230.0, 315.0)
    wvc_range: tuple[float, float] = (0.1, 6.5)
    elevation_range_km: tuple[float, float] = (0.0, 4.0)
    inversion_scale: float = 1.0
    co2_ppmv: float = CO2_PPMV_DEFAULT
    name_prefix: str = "gen"

    def __post_init__(self) -> None:
        limits = {"t_surface_range": (200.0, 325.0), "wvc_range": (0.0, 10.0), "elevation_range_km": (-0.4, 6.0)}
        for key, (lo, hi) in limits.items():
            rng = tuple(float(v) for v in getattr(self, key))
            if len(rng) != 2 or not all(np.isfinite(rng)) or rng[0] > rng[1] or rng[0] < lo or rng[1] > hi:
                raise ValueError(f"climate: {key}={getattr(self, key)!r} must be (low, high) with {lo:g} <= low <= "
                                 f"high <= {hi:g}")
            object.__setattr__(self, key, rng)
        if not (np.isfinite(self.inversion_scale) and self.inversion_scale >= 0):
            raise ValueError(f"climate: inversion_scale={self.inversion_scale!r} must be finite and >= 0")
        if not (0.0 < self.co2_ppmv < 5000.0):
            raise ValueError(f"climate: co2_ppmv={self.co2_ppmv!r} outside (0, 5000)")
        if not self.name_prefix:
            raise ValueError("climate: name_prefix must not be empty")


def saturation_vapour_pressure_hpa(
    t_k: ArrayLike, phase: Literal["liquid", "ice", "auto"] = "liquid"
) -> NDArray[np.float64]:
    """Saturation vapour pressure (hPa) of Murphy & Koop (2005).

    Murphy, D. M. & Koop, T. (2005), Review of the vapour pressures of ice and supercooled
    water for atmospheric applications, Q. J. R. Meteorol. Soc. 131, 1539-1565: eq. 7 (ice,
    valid above 110 K) and eq. 10 (liquid and supercooled water, valid 123-332 K).

    Parameters
    ----------
    t_k : array_like
        Temperature (K).
    phase : {"liquid", "ice", "auto"}
        Saturation over liquid water (the WMO convention for relative humidity), over ice,
        or over ice below the triple point (273.16 K) and liquid above: the lower of the
        two, i.e. the threshold of supersaturation in a cold atmosphere.

    Returns
    -------
    numpy.ndarray
        Saturation vapour pressure (hPa), same shape as ``t_k``.

    Raises
    ------
    ValueError
        On an unknown ``phase``, or temperatures non-finite or outside the validity range
        (liquid 123-332 K, ice 110-273.16 K, auto 110-332 K).
    """
    bounds = {"liquid": (123.0, 332.0), "ice": (110.0, _T_TRIPLE_K), "auto": (110.0, 332.0)}
    if phase not in bounds:
        raise ValueError(f"phase must be one of {', '.join(bounds)}, got {phase!r}")
    t = check_range("t_k", t_k, *bounds[phase], unit="K")
    log_t = np.log(t)
    ln_ice = 9.550426 - 5723.265 / t + 3.53068 * log_t - 0.00728332 * t
    ln_liq = (
        54.842763 - 6763.22 / t - 4.210 * log_t + 0.000367 * t
        + np.tanh(0.0415 * (t - 218.8)) * (53.878 - 1331.22 / t - 9.44523 * log_t + 0.014025 * t)
    )
    if phase == "ice":
        ln_pa = ln_ice
    elif phase == "liquid":
        ln_pa = ln_liq
    else:
        ln_pa = np.where(t < _T_TRIPLE_K, ln_ice, ln_liq)
    return np.exp(ln_pa) / 100.0


def hypsometric_altitude_km(
    pressure_hpa: ArrayLike,
    temperature_k: ArrayLike,
    h2o_ppmv: ArrayLike | None = None,
    surface_altitude_km: float = 0.0,
) -> NDArray[np.float64]:
    """Altitudes (km) of pressure levels by hydrostatic integration from the surface up.

    Layer thickness in geopotential height is ``R_d Tv / g0 ln(p1 / p2)`` with ``Tv`` the mean
    virtual temperature of the layer; geopotential is converted to geometric altitude for
    gravity falling off as ``1/r^2`` (Earth radius 6371.23 km).

    Parameters
    ----------
    pressure_hpa : array_like
        Level pressures (hPa), strictly decreasing from the surface up.
    temperature_k : array_like
        Level temperatures (K).
    h2o_ppmv : array_like, optional
        Water vapour volume mixing ratio (ppmv); dry air when omitted.
    surface_altitude_km : float
        Altitude of the first level (km above sea level).

    Returns
    -------
    numpy.ndarray
        Level altitudes (km), the first equal to ``surface_altitude_km``.

    Raises
    ------
    ValueError
        If the arrays differ in shape or are not 1-D, a value is non-finite or out of range,
        or pressure does not decrease strictly.
    """
    p = check_range("pressure_hpa", pressure_hpa, 1e-9, 1100.0, unit="hPa")
    t = check_range("temperature_k", temperature_k, 100.0, 1200.0, unit="K")
    x = np.zeros_like(p) if h2o_ppmv is None else check_range("h2o_ppmv", h2o_ppmv, 0.0, 1e5, unit="ppmv") * 1e-6
    if p.ndim != 1 or t.shape != p.shape or x.shape != p.shape:
        raise ValueError(f"pressure, temperature and h2o must be 1-D of one length, got {p.shape}, {t.shape}, "
                         f"{x.shape}")
    if np.any(np.diff(p) >= 0):
        raise ValueError("pressure_hpa must decrease strictly from the surface up")
    check_range("surface_altitude_km", surface_altitude_km, -0.5, 10.0, unit="km")
    tv = _virtual_temperature(t, x)
    dgeo_km = _R_DRY * 0.5 * (tv[:-1] + tv[1:]) / GRAVITY * np.log(p[:-1] / p[1:]) * 1e-3
    geo_km = _geopotential_km(float(surface_altitude_km)) + np.concatenate([[0.0], np.cumsum(dgeo_km)])
    return EARTH_RADIUS_KM * geo_km / (EARTH_RADIUS_KM - geo_km)


def generate_profiles(
    n: int = 946,
    seed: int = 0,
    *,
    wvc_range: tuple[float, float] = (0.1, 6.5),
    t_surface_range: tuple[float, float] = (230.0, 315.0),
    elevation_range_km: tuple[float, float] = (0.0, 4.0),
    climate: ProfileClimate | Mapping[str, Any] | None = None,
) -> list[AtmosphereProfile]:
    """A TIGR-like population of clear-sky profiles, deterministic from ``seed``.

    See the module docstring for how each profile is built. Every profile has 45 levels
    from its surface (at its elevation) to 100 km; none is supersaturated at any level.

    Parameters
    ----------
    n : int
        Number of profiles (default 946, the size of TIGR2000's clear-sky set), >= 1.
    seed : int
        Seed of the random generator: the same seed gives the same profiles.
    wvc_range : tuple of float
        Precipitable water range (g cm^-2) the columns are drawn in. Columns too cold to hold
        ``wvc_range[0]`` (below ~245 K) are moist (40-100% of their saturated column) yet
        drier than it; a column whose driest state (3% surface RH) exceeds ``wvc_range[1]``
        takes that driest state.
    t_surface_range : tuple of float
        Surface air temperature range (K), drawn uniformly.
    elevation_range_km : tuple of float
        Surface elevation range (km), drawn uniformly.
    climate : ProfileClimate or mapping, optional
        A regional population: a :class:`ProfileClimate`, or a mapping with its field names
        (``t_surface_range``, ``wvc_range``, ``elevation_range_km``, ``inversion_scale``,
        ``co2_ppmv``, ``name_prefix``). When given it replaces the three range arguments.

    Returns
    -------
    list of AtmosphereProfile
        Named ``gen000000``, ``gen000001``, ... (the prefix is ``climate.name_prefix``).

    Raises
    ------
    ValueError
        On ``n < 1``, invalid ranges or an unknown key in a ``climate`` mapping.

    Notes
    -----
    The population is a function of ``(n, seed, ranges)``: the first k profiles of a larger
    population are not the population of size k. 946 profiles take ~0.1 s (plus ~0.5 s once
    per process to load the AFGL tables).
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    clim = _resolve_climate(climate, wvc_range, t_surface_range, elevation_range_km)
    rng = np.random.default_rng(seed)
    cols = _generate_columns(int(n), clim, rng)
    return [
        AtmosphereProfile(
            altitude_km=cols["altitude_km"][i],
            pressure_hpa=cols["pressure_hpa"][i],
            temperature_k=cols["temperature_k"][i],
            h2o_ppmv=cols["h2o_ppmv"][i],
            o3_ppmv=cols["o3_ppmv"][i],
            co2_ppmv=clim.co2_ppmv,
            name=f"{clim.name_prefix}{i:06d}",
        )
        for i in range(n)
    ]


def profile_summary(profiles: Sequence[AtmosphereProfile]) -> pd.DataFrame:
    """One row per profile, for reports and tests.

    Parameters
    ----------
    profiles : sequence of AtmosphereProfile
        Any profiles (generated or read).

    Returns
    -------
    pandas.DataFrame
        Columns ``name``, ``surface_altitude_km`` (km), ``surface_pressure_hpa`` (hPa),
        ``surface_air_temperature_k`` (K), ``wvc_g_cm2`` (precipitable water, g cm^-2),
        ``n_levels``.
    """
    return pd.DataFrame(
        {
            "name": [p.name for p in profiles],
            "surface_altitude_km": [p.surface_altitude_km for p in profiles],
            "surface_pressure_hpa": [float(p.pressure_hpa[0]) for p in profiles],
            "surface_air_temperature_k": [p.surface_air_temperature_k for p in profiles],
            "wvc_g_cm2": [p.total_column_water() for p in profiles],
            "n_levels": [p.n_levels for p in profiles],
        }
    )


# ---------------------------------------------------------------------------------------------
# internals: everything is vectorised over profiles, arrays are (n_profiles, n_levels)


def _resolve_climate(
    climate: ProfileClimate | Mapping[str, Any] | None,
    wvc_range: tuple[float, float],
    t_surface_range: tuple[float, float],
    elevation_range_km: tuple[float, float],
) -> ProfileClimate:
    if climate is None:
        return ProfileClimate(t_surface_range=t_surface_range, wvc_range=wvc_range,
                              elevation_range_km=elevation_range_km)
    if isinstance(climate, ProfileClimate):
        return climate
    if isinstance(climate, Mapping):
        known = {f.name for f in fields(ProfileClimate)}
        unknown = sorted(set(climate) - known)
        if unknown:
            raise ValueError(f"climate: unknown key(s) {unknown}; expected some of {sorted(known)}")
        return ProfileClimate(**climate)
    raise ValueError(f"climate must be a ProfileClimate, a mapping or None, got {type(climate).__name__}")


def _geopotential_km(z_km: ArrayLike) -> NDArray[np.float64]:
    """Geopotential height (km) of geometric altitude ``z_km`` for gravity ~ 1/r^2."""
    z = np.asarray(z_km, dtype=np.float64)
    return EARTH_RADIUS_KM * z / (EARTH_RADIUS_KM + z)


def _virtual_temperature(t_k: NDArray[np.float64], x_h2o: NDArray[np.float64]) -> NDArray[np.float64]:
    """Virtual temperature (K) for water vapour mole fraction ``x_h2o``."""
    return t_k / (1.0 - x_h2o * (1.0 - _EPSILON))


def _level_altitudes_km(z_surface_km: NDArray[np.float64]) -> NDArray[np.float64]:
    """Hybrid levels: terrain-following at the ground, fixed altitudes from 20 km up."""
    h = _REFERENCE_HEIGHTS_KM[None, :]
    return h + z_surface_km[:, None] * np.clip(1.0 - h / _HYBRID_TOP_KM, 0.0, 1.0)


@lru_cache(maxsize=1)
def _chain_tables() -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64],
                             NDArray[np.float64]]:
    """AFGL chain as arrays: sea-level T (k,), altitude (L,), T, H2O, O3 (k, L)."""
    atm = [afgl(name) for name in _CHAIN]
    z = atm[0].altitude_km
    if any(not np.array_equal(a.altitude_km, z) for a in atm):
        raise ValueError("AFGL atmospheres do not share one altitude grid")
    return (
        np.array([a.temperature_k[0] for a in atm]),
        z,
        np.stack([a.temperature_k for a in atm]),
        np.stack([a.h2o_ppmv for a in atm]),
        np.stack([a.o3_ppmv for a in atm]),
    )


def _blend(weights: NDArray[np.float64], z_km: NDArray[np.float64], table: NDArray[np.float64],
           log: bool = False) -> NDArray[np.float64]:
    """Weighted blend of the chain's profiles ``table`` (k, L_afgl) at altitudes ``z_km`` (n, m)."""
    z_afgl = _chain_tables()[1]
    out = np.zeros(z_km.shape)
    for k in range(table.shape[0]):
        if log:
            v = np.exp(np.interp(z_km, z_afgl, np.log(np.maximum(table[k], 1e-12))))
        else:
            v = np.interp(z_km, z_afgl, table[k])
        out += weights[:, k : k + 1] * v
    return out


def _piecewise_linear(x: NDArray[np.float64], xp: NDArray[np.float64], fp: NDArray[np.float64]) -> NDArray[np.float64]:
    """Row-wise linear interpolation: ``x`` (n, m) through nodes ``xp``, ``fp`` (n, k), ``xp`` non-decreasing.

    Zero-width segments are skipped; beyond the last node the last segment is extended.
    """
    out = np.full(x.shape, np.nan)
    for k in range(xp.shape[1] - 1):
        x0, x1 = xp[:, k : k + 1], xp[:, k + 1 : k + 2]
        f0, f1 = fp[:, k : k + 1], fp[:, k + 1 : k + 2]
        width = x1 - x0
        slope = np.where(width > 0, (f1 - f0) / np.where(width > 0, width, 1.0), 0.0)
        last = k == xp.shape[1] - 2
        inside = (x >= x0) & ((x < x1) | last) & (width > 0)
        out = np.where(inside & np.isnan(out), f0 + slope * (x - x0), out)
    return out


def _draw_surface(n: int, clim: ProfileClimate, rng: np.random.Generator) -> tuple[NDArray, NDArray]:
    """Surface air temperature (K) and elevation (km), uniform, hot highlands rejected."""
    m = 4 * n + 64
    t = rng.uniform(*clim.t_surface_range, size=m)
    z = rng.uniform(*clim.elevation_range_km, size=m)
    ok = t + _HOT_HIGHLAND_LAPSE * np.maximum(z, 0.0) <= _HOT_HIGHLAND_T0_K
    # valid draws first, in draw order; if the ranges leave too few, the limit is dropped for the rest
    pick = np.argsort(~ok, kind="stable")[:n]
    pick.sort()
    return t[pick], z[pick]


def _column_water(e_hpa: NDArray[np.float64], t_k: NDArray[np.float64], dz_cm: NDArray[np.float64]) -> NDArray:
    """Precipitable water (g cm^-2) of vapour pressures ``e_hpa`` (n, L), as AtmosphereProfile integrates it."""
    rho = e_hpa * 100.0 / (_R_VAPOUR * t_k) * 1e-3  # g cm^-3
    return loglinear_layer_integral(rho[:, :-1], rho[:, 1:], dz_cm).sum(axis=1)


def _hydrostatic_pressure_hpa(z_km: NDArray[np.float64], tv_k: NDArray[np.float64],
                              p_surface_hpa: NDArray[np.float64]) -> NDArray[np.float64]:
    """Level pressures (hPa) by integrating the hydrostatic equation up from the surface.

    Virtual temperature is taken linear in geopotential height within each layer.
    """
    geo_m = _geopotential_km(z_km) * 1e3
    dgeo = np.diff(geo_m, axis=1)
    t0, t1 = tv_k[:, :-1], tv_k[:, 1:]
    dt = t1 - t0
    small = np.abs(dt) < 1e-6
    inv_t_mean = np.where(small, 2.0 / (t0 + t1), np.log(t1 / t0) / np.where(small, 1.0, dt))
    dlnp = -GRAVITY / _R_DRY * dgeo * inv_t_mean
    lnp = np.log(p_surface_hpa)[:, None] + np.concatenate([np.zeros((z_km.shape[0], 1)), np.cumsum(dlnp, axis=1)],
                                                          axis=1)
    return np.exp(lnp)


def _generate_columns(n: int, clim: ProfileClimate, rng: np.random.Generator) -> dict[str, NDArray[np.float64]]:
    """All level arrays (n, L) of a population. Every random draw happens for every profile, in a fixed order.

    Why this is long: one function on purpose; its ~20 draws interleave with the physics that consumes them (inversion,
    tropopause, blend, pressure, water vapour), and that order fixes every simulation table of a seed; split into
    steps, each would pass on most of the intermediates and hide the order.
    """
    t_s, z_s = _draw_surface(n, clim, rng)

    # --- low inversion: more frequent and stronger over cold surfaces (winter, night)
    cold = np.clip((275.0 - t_s) / 35.0, 0.0, 1.0)
    p_inv = np.clip((0.15 + 0.6 * cold) * clim.inversion_scale, 0.0, 1.0)
    has_inv = rng.random(n) < p_inv
    surface_based = rng.random(n) < 0.65
    h_base = np.where(has_inv & ~surface_based, rng.uniform(0.1, 0.8, n), 0.0)
    depth = np.where(has_inv, rng.uniform(0.15, 1.2, n), 0.0)
    strength = np.where(has_inv, rng.uniform(1.0, 4.0, n) + rng.uniform(0.0, 10.0, n) * cold, 0.0)
    lapse_mixed = rng.uniform(_LAPSE_MIN, _LAPSE_MAX, n)  # below an elevated inversion
    t_base = t_s - lapse_mixed * h_base
    h_top = h_base + depth
    t_top = t_base + strength

    # --- tropopause from the free-troposphere temperature reduced to sea level
    t0 = t_top + _LAPSE_STANDARD * (z_s + h_top)
    z_tp = np.interp(t0, _TROPOPAUSE_T0_K, _TROPOPAUSE_Z_KM) + rng.normal(0.0, 0.8, n)
    z_tp = np.clip(z_tp, np.maximum(7.5, z_s + h_top + 4.0), 18.5)
    t_tp_wanted = np.interp(t0, _TROPOPAUSE_T0_K, _TROPOPAUSE_T_K) + rng.normal(0.0, 4.0, n)
    depth_ft = z_tp - (z_s + h_top)
    lapse = np.clip((t_top - t_tp_wanted) / depth_ft, _LAPSE_MIN, _LAPSE_MAX)
    tilt = rng.uniform(-1.2, 1.2, n)  # lower vs upper troposphere lapse-rate contrast
    frac = 0.4
    lapse_low = np.clip(lapse + tilt, _LAPSE_MIN, _LAPSE_MAX)
    lapse_up = np.clip(lapse - tilt * frac / (1.0 - frac), _LAPSE_MIN, _LAPSE_MAX)
    h_mid = h_top + frac * depth_ft
    t_mid = t_top - lapse_low * frac * depth_ft
    h_tp = h_top + depth_ft
    t_tp = t_mid - lapse_up * (1.0 - frac) * depth_ft

    # --- middle atmosphere: AFGL blend weighted by sea-level-equivalent temperature, joined to the tropopause
    t_sl_chain, _, t_tab, h2o_tab, o3_tab = _chain_tables()
    t0_blend = t0 + rng.normal(0.0, 4.0, n)
    weights = np.stack([np.interp(t0_blend, t_sl_chain, np.eye(len(_CHAIN))[k]) for k in range(len(_CHAIN))], axis=1)
    z_join = np.maximum(z_tp + 5.0, 25.0)
    t_blend_join = _blend(weights, z_join[:, None], t_tab)[:, 0]
    t_join = np.maximum(t_blend_join + rng.normal(0.0, 3.0, n), t_tp + 2.0)

    z = _level_altitudes_km(z_s)
    h = z - z_s[:, None]
    nodes_h = np.stack([np.zeros(n), h_base, h_top, h_mid, h_tp, z_join - z_s], axis=1)
    nodes_t = np.stack([t_s, t_base, t_top, t_mid, t_tp, t_join], axis=1)
    t_blend = _blend(weights, z, t_tab)
    above = z >= z_join[:, None]
    t_k = np.where(
        above,
        t_blend + (t_join - t_blend_join)[:, None] * np.exp(-(z - z_join[:, None]) / 15.0),
        _piecewise_linear(np.minimum(h, (z_join - z_s)[:, None]), nodes_h, nodes_t),
    )

    # --- first-pass (dry) pressure, enough for the stratospheric vapour pressure
    p_sl = np.clip(1013.25 + 0.3 * np.clip(270.0 - t0, 0.0, 40.0) + rng.normal(0.0, 6.0, n), 980.0, 1045.0)
    t_mean_below = t_s + 0.5 * _LAPSE_STANDARD * z_s  # fictitious column below the surface, standard reduction
    p_s = p_sl * np.exp(-GRAVITY * _geopotential_km(z_s) * 1e3 / (_R_DRY * t_mean_below))
    p_s = np.minimum(p_s, 1090.0)  # cold air below sea level: stay inside AtmosphereProfile's 1100 hPa
    p_dry = _hydrostatic_pressure_hpa(z, t_k, p_s)

    # --- water vapour
    e_sat = saturation_vapour_pressure_hpa(t_k, phase="auto")
    e_cap = np.minimum(e_sat, float(saturation_vapour_pressure_hpa(_DEWPOINT_MAX_K)))
    troposphere = z <= z_tp[:, None]
    rh_floor = rng.uniform(_RH_FLOOR[0], _RH_FLOOR[1], n)[:, None]
    rh_decay_km = rng.uniform(_RH_DECAY_KM[0], _RH_DECAY_KM[1], n)[:, None]
    # RH falls off towards the tropopause (AFGL: ~0.1-0.3 of its surface value there)
    taper = 1.0 - 0.7 * np.clip(h / h_tp[:, None], 0.0, 1.0) ** 2
    shape = np.where(troposphere, (rh_floor + (1.0 - rh_floor) * np.exp(-h / rh_decay_km)) * taper, 0.0)
    strat_scale = rng.uniform(0.7, 1.3, n)[:, None]
    x_strat = strat_scale * _blend(weights, np.maximum(z, 25.0), h2o_tab, log=True) * 1e-6
    e_strat = np.where(troposphere, 0.0, np.minimum(x_strat * p_dry, 0.999 * e_sat))
    dz_cm = np.diff(z, axis=1) * 1e5

    def vapour(s: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.where(troposphere, np.minimum(s[:, None] * shape * e_sat, e_cap), e_strat)

    w_dry = _column_water(vapour(np.full(n, _RH_SURFACE_MIN)), t_k, dz_cm)
    w_wet = _column_water(vapour(np.full(n, _RH_SURFACE_MAX)), t_k, dz_cm)
    wvc_lo, wvc_hi = clim.wvc_range
    lo = np.maximum(w_dry, wvc_lo)
    hi = np.minimum(w_wet, wvc_hi)
    r = rng.random(n) ** _WVC_DRAW_EXPONENT
    r_cold = rng.uniform(0.4, 1.0, n)
    target = np.where(
        w_wet < wvc_lo,
        np.maximum(w_dry, r_cold * w_wet),  # too cold to hold wvc_lo: moist but dry
        np.where(w_dry > wvc_hi, w_dry, lo + (hi - lo) * r),
    )
    s_lo, s_hi = np.full(n, _RH_SURFACE_MIN), np.full(n, _RH_SURFACE_MAX)
    for _ in range(40):  # bisection: the column grows monotonically with surface RH
        s_mid = 0.5 * (s_lo + s_hi)
        wet = _column_water(vapour(s_mid), t_k, dz_cm) > target
        s_hi = np.where(wet, s_mid, s_hi)
        s_lo = np.where(wet, s_lo, s_mid)
    e = vapour(0.5 * (s_lo + s_hi))

    # --- final pressure with the virtual temperature; mixing ratios from vapour pressure
    p = _hydrostatic_pressure_hpa(z, _virtual_temperature(t_k, e / p_dry), p_s)
    h2o_ppmv = np.minimum(e / p, 0.999 * e_sat / p) * 1e6
    o3_ppmv = _blend(weights, z, o3_tab, log=True) * rng.lognormal(0.0, 0.15, n)[:, None]
    return {"altitude_km": z, "pressure_hpa": p, "temperature_k": t_k, "h2o_ppmv": h2o_ppmv, "o3_ppmv": o3_ppmv}
