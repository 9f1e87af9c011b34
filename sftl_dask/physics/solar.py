"""Solar geometry and irradiance: zenith and azimuth angles, Earth-Sun distance, band solar irradiance.

* Sun position: NOAA's general solar position formulae (Spencer 1971 series for the declination and
  the equation of time), accurate to ~0.1 deg, enough for overpass geometry and solar heating.
* Earth-Sun distance: Spencer's (1971) Fourier series for 1/d^2 on the same day angle, within
  4.3e-4 AU of the 2022 perihelion and aphelion (tests/test_solar.py). The Astronomical Almanac's
  low-precision formula (``R = 1.00014 - 0.01671 cos g - 0.00014 cos 2g``) is ten times closer
  (< 5e-5 AU); the testbed renders its reflectances with this function, so switching waits for the
  step of issue 28 that re-renders the testbed and re-measures its science figures.
* Band solar irradiance (ESUN): ``ESUN = integral(SRF E dlambda) / integral(SRF dlambda)`` of a
  top-of-atmosphere solar spectrum ``E`` (W m-2 um-1) through a spectral response ``SRF``. The spectrum
  is an argument: physics reads no files (the reader in ``sftl_dask.io.vimi`` loads the packaged
  ASTM E-490 spectrum).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sftl_dask.physics.checks import check_range

__all__ = ["band_solar_irradiance", "earth_sun_distance_au", "solar_position"]

def _day_angle(time_utc: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t = np.asarray(time_utc, dtype="datetime64[s]")
    year_start = t.astype("datetime64[Y]").astype("datetime64[s]")
    doy = (t - year_start).astype(np.float64) / 86400.0  # fractional day of year from 0
    hours = (t - t.astype("datetime64[D]").astype("datetime64[s]")).astype(np.float64) / 3600.0
    gamma = 2.0 * np.pi / 365.0 * (doy - 0.5)  # NOAA: 2 pi / 365 (day - 1 + (hour - 12) / 24)
    return gamma, hours


def earth_sun_distance_au(time_utc: ArrayLike) -> NDArray[np.float64]:
    """Earth-Sun distance (AU) at ``time_utc`` (numpy datetime64 or ISO text, UTC).

    Spencer's (1971) series for 1/d^2 (module docstring): within 4.3e-4 AU of the 2022 perihelion and
    aphelion distances (0.09 % in reflectance).

    Parameters
    ----------
    time_utc : array_like of datetime64
        Times in UTC.

    Returns
    -------
    numpy.ndarray of float64
        Distance (AU), the shape of ``time_utc``.
    """
    g, _ = _day_angle(time_utc)
    inv_sq = (1.000110 + 0.034221 * np.cos(g) + 0.001280 * np.sin(g) + 0.000719 * np.cos(2 * g)
              + 0.000077 * np.sin(2 * g))
    return 1.0 / np.sqrt(inv_sq)


def band_solar_irradiance(srf_wavelength_um: ArrayLike, srf_response: ArrayLike, spectrum_wavelength_um: ArrayLike,
                          spectrum_irradiance: ArrayLike) -> float:
    """Band-averaged top-of-atmosphere solar irradiance ESUN (W m-2 um-1) of one spectral response.

    ``ESUN = integral(SRF E dlambda) / integral(SRF dlambda)``, both integrals by the trapezoid rule on
    the union of the two wavelength grids inside the response's support, each curve interpolated
    linearly onto it (so a boxcar's edges and the spectrum's own samples are both honoured).

    Parameters
    ----------
    srf_wavelength_um, srf_response : array_like
        The spectral response: wavelengths (um, strictly increasing) and relative response (>= 0).
    spectrum_wavelength_um, spectrum_irradiance : array_like
        The solar spectrum at 1 AU: wavelengths (um, strictly increasing) and irradiance (W m-2 um-1).

    Returns
    -------
    float
        ESUN (W m-2 um-1), at 1 AU.

    Raises
    ------
    ValueError
        On grids that are not 1-D and strictly increasing, negative or non-finite values, a response
        that is zero everywhere, or a spectrum that does not cover the response's support.
    """
    swl, srf = _curve("srf", srf_wavelength_um, srf_response)
    ewl, irr = _curve("spectrum", spectrum_wavelength_um, spectrum_irradiance)
    nz = np.flatnonzero(srf > 0)
    if nz.size == 0:
        raise ValueError("srf_response is zero everywhere")
    lo, hi = swl[max(nz[0] - 1, 0)], swl[min(nz[-1] + 1, swl.size - 1)]
    if ewl[0] > lo or ewl[-1] < hi:
        raise ValueError(f"the solar spectrum [{ewl[0]:.4f}, {ewl[-1]:.4f}] um does not cover the response "
                         f"[{lo:.4f}, {hi:.4f}] um")
    grid = np.union1d(swl[(swl >= lo) & (swl <= hi)], ewl[(ewl >= lo) & (ewl <= hi)])
    r = np.interp(grid, swl, srf, left=0.0, right=0.0)
    return float(np.trapezoid(r * np.interp(grid, ewl, irr), grid) / np.trapezoid(r, grid))


def _curve(name: str, wavelength: ArrayLike, values: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    wl = np.asarray(wavelength, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if wl.ndim != 1 or wl.shape != v.shape or wl.size < 2:
        raise ValueError(f"{name}: wavelength and values must be 1-D of equal length >= 2, got {wl.shape}, {v.shape}")
    if not (np.all(np.isfinite(wl)) and np.all(np.isfinite(v))):
        raise ValueError(f"{name}: wavelength and values must be finite")
    if np.any(np.diff(wl) <= 0):
        raise ValueError(f"{name}: wavelength must be strictly increasing")
    if v.min() < 0:
        raise ValueError(f"{name}: values must be >= 0, got {v.min()}")
    return wl, v


def solar_position(time_utc: ArrayLike, lat_deg: ArrayLike, lon_deg: ArrayLike) -> tuple[NDArray, NDArray]:
    """Solar zenith and azimuth angles (deg) at a place and time.

    Parameters
    ----------
    time_utc : array_like of datetime64
        Times in UTC.
    lat_deg, lon_deg : array_like
        Latitude (deg north, -90..90) and longitude (deg east, -180..360); broadcast with time.

    Returns
    -------
    zenith_deg, azimuth_deg : numpy.ndarray
        Solar zenith (0 = overhead) and azimuth (clockwise from north), degrees.

    Raises
    ------
    ValueError
        On latitude or longitude out of range.
    """
    lat = np.deg2rad(check_range("lat_deg", lat_deg, -90.0, 90.0, unit="deg"))
    lon = check_range("lon_deg", lon_deg, -180.0, 360.0, unit="deg")
    g, hours = _day_angle(time_utc)
    eqtime = 229.18 * (0.000075 + 0.001868 * np.cos(g) - 0.032077 * np.sin(g) - 0.014615 * np.cos(2 * g)
                       - 0.040849 * np.sin(2 * g))  # minutes
    decl = (0.006918 - 0.399912 * np.cos(g) + 0.070257 * np.sin(g) - 0.006758 * np.cos(2 * g)
            + 0.000907 * np.sin(2 * g) - 0.002697 * np.cos(3 * g) + 0.00148 * np.sin(3 * g))
    true_solar_min = hours * 60.0 + eqtime + 4.0 * lon
    ha = np.deg2rad(true_solar_min / 4.0 - 180.0)
    cosz = np.sin(lat) * np.sin(decl) + np.cos(lat) * np.cos(decl) * np.cos(ha)
    zen = np.arccos(np.clip(cosz, -1.0, 1.0))
    sin_az = -np.sin(ha) * np.cos(decl) / np.maximum(np.sin(zen), 1e-9)
    cos_az = (np.sin(decl) - np.sin(lat) * np.cos(zen)) / np.maximum(np.cos(lat) * np.sin(zen), 1e-9)
    az = np.rad2deg(np.arctan2(sin_az, cos_az)) % 360.0
    return np.rad2deg(zen), az
