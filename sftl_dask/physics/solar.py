"""Solar geometry: zenith and azimuth angles and Earth-Sun distance.

NOAA's general solar position formulae (Spencer 1971 series for the declination and the
equation of time), accurate to ~0.1 deg, enough for overpass geometry and solar heating.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sftl_dask.physics.checks import check_range

__all__ = ["earth_sun_distance_au", "solar_position"]


def _day_angle(time_utc: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t = np.asarray(time_utc, dtype="datetime64[s]")
    year_start = t.astype("datetime64[Y]").astype("datetime64[s]")
    doy = (t - year_start).astype(np.float64) / 86400.0  # fractional day of year from 0
    hours = (t - t.astype("datetime64[D]").astype("datetime64[s]")).astype(np.float64) / 3600.0
    gamma = 2.0 * np.pi / 365.0 * (doy - 0.5)  # NOAA: 2 pi / 365 (day - 1 + (hour - 12) / 24)
    return gamma, hours


def earth_sun_distance_au(time_utc: ArrayLike) -> NDArray[np.float64]:
    """Earth-Sun distance (AU) at ``time_utc`` (numpy datetime64, UTC)."""
    g, _ = _day_angle(time_utc)
    inv_sq = (1.000110 + 0.034221 * np.cos(g) + 0.001280 * np.sin(g) + 0.000719 * np.cos(2 * g)
              + 0.000077 * np.sin(2 * g))
    return 1.0 / np.sqrt(inv_sq)


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
