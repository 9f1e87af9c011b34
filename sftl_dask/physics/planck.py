"""Planck's law: spectral and band-effective radiance <-> brightness temperature.

This is the project's one Planck. Radiance is in W m^-2 sr^-1 um^-1, wavelength
in um, temperature in K. Band-effective radiance is the SRF-weighted mean of the
spectral radiance over a channel; its inverse uses a 0.01 K lookup table with
linear interpolation (error < 1 uK over 150-400 K).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sftl_dask.physics.channels import Channel, thermal_channels
from sftl_dask.physics.checks import check_range
from sftl_dask.physics.constants import C1_RADIANCE, C2_UM_K

__all__ = [
    "T_MAX_K",
    "T_MIN_K",
    "BandPlanck",
    "band_planck",
    "planck_radiance",
    "planck_temperature",
]

#: Temperature range (K) covered by band lookup tables.
T_MIN_K = 150.0
T_MAX_K = 400.0
_LUT_STEP_K = 0.01
_SPECTRAL_STEP_UM = 0.002


def planck_radiance(wavelength_um: ArrayLike, temperature_k: ArrayLike) -> NDArray[np.float64]:
    """Spectral blackbody radiance (W m^-2 sr^-1 um^-1).

    Parameters
    ----------
    wavelength_um : array_like
        Wavelength (um), > 0. Broadcasts against ``temperature_k``.
    temperature_k : array_like
        Temperature (K), > 0.

    Returns
    -------
    numpy.ndarray
        Radiance per unit wavelength.

    Raises
    ------
    ValueError
        On non-finite or non-positive input.
    """
    wl = check_range("wavelength_um", wavelength_um, 1e-3, 1e4, unit="um")
    t = check_range("temperature_k", temperature_k, 1.0, 1e4, unit="K")
    return C1_RADIANCE / (wl**5 * np.expm1(C2_UM_K / (wl * t)))


def planck_temperature(wavelength_um: ArrayLike, radiance: ArrayLike) -> NDArray[np.float64]:
    """Monochromatic brightness temperature (K) of a spectral radiance (W m^-2 sr^-1 um^-1)."""
    wl = check_range("wavelength_um", wavelength_um, 1e-3, 1e4, unit="um")
    rad = check_range("radiance", radiance, 1e-30, 1e12, unit="W m-2 sr-1 um-1")
    return C2_UM_K / (wl * np.log1p(C1_RADIANCE / (wl**5 * rad)))


@dataclass(frozen=True, eq=False)
class BandPlanck:
    """Band-effective Planck function of one channel, with an exact inverse.

    Parameters
    ----------
    channel : Channel
        The channel whose SRF weights the spectral radiance.

    Notes
    -----
    The table holds the SRF-integrated radiance every 0.01 K from 150 to 400 K;
    both directions interpolate it linearly, which is exact to < 1 uK because the
    band radiance is smooth and monotonic in temperature.
    """

    channel: Channel
    temperature_k: NDArray[np.float64] = field(init=False, repr=False)
    radiance_table: NDArray[np.float64] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ch = self.channel
        wl = np.arange(ch.lower_um, ch.upper_um + _SPECTRAL_STEP_UM / 2, _SPECTRAL_STEP_UM)
        wl = np.union1d(wl, ch.wavelength_um[(ch.wavelength_um >= ch.lower_um) & (ch.wavelength_um <= ch.upper_um)])
        w = ch.weights(wl)
        t = np.arange(T_MIN_K, T_MAX_K + _LUT_STEP_K / 2, _LUT_STEP_K)
        # Evaluate in slabs to bound memory (25k temperatures x ~500 wavelengths).
        lut = np.empty_like(t)
        for i in range(0, t.size, 2048):
            tt = t[i : i + 2048, None]
            lut[i : i + 2048] = (C1_RADIANCE / (wl**5 * np.expm1(C2_UM_K / (wl * tt)))) @ w
        object.__setattr__(self, "temperature_k", t)
        object.__setattr__(self, "radiance_table", lut)

    def radiance(self, temperature_k: ArrayLike, *, allow_nan: bool = False) -> NDArray[np.float64]:
        """Band radiance (W m^-2 sr^-1 um^-1) at ``temperature_k`` (K, 150-400).

        Raises
        ------
        ValueError
            If a temperature is non-finite (unless ``allow_nan``) or outside 150-400 K.
        """
        t = check_range(f"temperature_k ({self.channel.name})", temperature_k, T_MIN_K, T_MAX_K,
                        unit="K", allow_nan=allow_nan)
        return np.interp(t, self.temperature_k, self.radiance_table)

    def brightness_temperature(self, radiance: ArrayLike, *, allow_nan: bool = False) -> NDArray[np.float64]:
        """Band brightness temperature (K) of a band radiance (W m^-2 sr^-1 um^-1).

        Raises
        ------
        ValueError
            If a radiance is non-finite (unless ``allow_nan``) or outside the radiance of 150-400 K.
        """
        r = check_range(
            f"radiance ({self.channel.name})", radiance, float(self.radiance_table[0]),
            float(self.radiance_table[-1]), unit="W m-2 sr-1 um-1", allow_nan=allow_nan,
        )
        return np.interp(r, self.radiance_table, self.temperature_k)

    def derivative(self, temperature_k: ArrayLike) -> NDArray[np.float64]:
        """dL/dT of the band radiance (W m^-2 sr^-1 um^-1 K^-1) at ``temperature_k`` (K)."""
        t = check_range(f"temperature_k ({self.channel.name})", temperature_k, T_MIN_K, T_MAX_K, unit="K")
        grad = np.gradient(self.radiance_table, self.temperature_k)
        return np.interp(t, self.temperature_k, grad)


@lru_cache(maxsize=8)
def band_planck(channels: tuple[Channel, ...] | None = None) -> tuple[BandPlanck, ...]:
    """Band Planck functions of ``channels`` (default: the four VIMI TIR channels), cached."""
    return tuple(BandPlanck(c) for c in (channels or thermal_channels()))
