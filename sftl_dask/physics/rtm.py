"""Clear-sky radiative transfer for the VIMI thermal channels.

A reduced line-by-layer model in the spirit of LOWTRAN7's band model, on a
5 cm^-1 grid from 775 to 1280 cm^-1 (7.8-12.9 um):

* **Absorbers.** Water-vapour lines, the water-vapour continuum, uniformly mixed gases
  (CO2, N2O, CH4, O2 as one species scaled by the CO2 mixing ratio), trace gases, and ozone.
* **Continuum.** Self- and foreign-broadened, proportional to the water amount times the
  water-vapour (self) or dry-air (foreign) density relative to 296 K, as in LOWTRAN7. The
  self continuum's strong negative temperature dependence is LOWTRAN7's: its coefficient is
  interpolated linearly in temperature between the 296 K and the 260 K values and held at those
  values outside 260-296 K. (The Roberts et al. 1976 factor ``exp[1800 (1/T - 1/296)]`` this
  model used before keeps growing below 260 K - by 30% more at 250 K - and made the cold, dry
  atmospheres, where nearly all water sits below 260 K, over-absorb at 10.8 and 11.95 um.)
* **Transmittance.** For each band-model species ``s`` the path transmittance is
  ``exp(-(k_s(nu) W_s)^a_s(nu))`` where ``W_s`` is the absorber amount along the path,
  scaled layer by layer by ``(p/p0)^n_s (T0/T)^m_s`` (the Pierluissi-Maragoudakis form
  used by LOWTRAN7, whose exponents differ from band region to band region: here they are
  given per spectral bin); the continuum is a plain exponential of its optical depth.
  Paths use spherical-shell geometry, so any view angle and surface elevation works.
* **Radiance.** Upwelling path radiance at the top of the atmosphere and downwelling
  radiance at the surface are sums of layer Planck emission times transmittance
  differences; the hemispheric downwelling radiance (irradiance / pi) is a
  Gauss-Legendre quadrature over the cosine of the zenith angle.

The spectral coefficients ``k_s``, ``a_s``, the scaling exponents and the continuum
coefficients are data (``sftl_dask/data/rtm_coefficients.json``), fitted to
species-by-species LOWTRAN7 transmittances of the six AFGL atmospheres at several
altitudes and angles by ``tools/calibrate_rtm.py``; the model itself is physics and
works for any profile. Users with a licensed code bring its output through
:class:`TableBackend` instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from sftl_dask.physics.atmosphere import CO2_PPMV_DEFAULT, AtmosphereProfile, loglinear_layer_integral
from sftl_dask.physics.channels import Channel, thermal_channels
from sftl_dask.physics.checks import check_range
from sftl_dask.physics.constants import (
    AVOGADRO,
    BOLTZMANN_K,
    LOSCHMIDT,
    MOLAR_MASS_H2O,
    P0_HPA,
    T0_K,
)
from sftl_dask.physics.planck import planck_radiance

__all__ = [
    "BAND_SPECIES",
    "AtmosphericTerms",
    "RTBackend",
    "ReducedBandModel",
    "TableBackend",
    "continuum_amounts",
    "layer_amounts",
]

#: Band-model absorbers, in the order of the coefficient file.
BAND_SPECIES: tuple[str, ...] = ("h2o", "mixed", "trace", "o3")
#: Earth radius (km) for spherical-shell path geometry.
EARTH_RADIUS_KM = 6371.23
#: Atmosphere above this altitude (km) is ignored: it holds < 0.01% of the absorbers in 8-13 um.
TOP_OF_MODEL_KM = 80.0
#: LOWTRAN7 tabulates the self continuum at 296 K and 260 K and interpolates linearly between them.
_SELF_CONTINUUM_T_K = (T0_K, 260.0)


@dataclass(frozen=True)
class AtmosphericTerms:
    """Channel-effective atmospheric terms of the thermal radiative transfer equation.

    ``L_sensor = tau * (eps * B(Ts) + (1 - eps) * L_down) + L_up`` per channel.

    Parameters
    ----------
    channels : tuple of str
        Channel names, the last axis of the arrays.
    vza_deg : numpy.ndarray
        View zenith angles at the surface (deg), shape (n_angles,).
    transmittance : numpy.ndarray
        Surface-to-sensor transmittance (unitless), shape (n_angles, n_channels).
    upwelling : numpy.ndarray
        Atmospheric path radiance at the sensor (W m^-2 sr^-1 um^-1), (n_angles, n_channels).
    downwelling : numpy.ndarray
        Hemispheric downwelling radiance at the surface, irradiance / pi
        (W m^-2 sr^-1 um^-1), shape (n_channels,).
    """

    channels: tuple[str, ...]
    vza_deg: NDArray[np.float64]
    transmittance: NDArray[np.float64]
    upwelling: NDArray[np.float64]
    downwelling: NDArray[np.float64]


@runtime_checkable
class RTBackend(Protocol):
    """Anything that gives channel-effective atmospheric terms for a profile and view angles."""

    def terms(self, profile: AtmosphereProfile, vza_deg: ArrayLike) -> AtmosphericTerms:
        """Atmospheric terms of ``profile`` at view zenith angles ``vza_deg`` (deg)."""
        ...


@dataclass(frozen=True, eq=False)
class _Coefficients:
    wavenumber_cm1: NDArray[np.float64]
    k: dict[str, NDArray[np.float64]]
    a: dict[str, NDArray[np.float64]]
    n: dict[str, NDArray[np.float64]]
    m: dict[str, NDArray[np.float64]]
    cont_self: NDArray[np.float64]
    cont_self_260: NDArray[np.float64]
    cont_foreign: NDArray[np.float64]
    meta: dict[str, object] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> _Coefficients:
        try:
            nu = np.asarray(d["wavenumber_cm1"], dtype=np.float64)
            sp = d["species"]
            return cls(
                wavenumber_cm1=nu,
                k={s: np.asarray(sp[s]["k"], dtype=np.float64) for s in BAND_SPECIES},
                a={s: np.asarray(sp[s]["a"], dtype=np.float64) for s in BAND_SPECIES},
                n={s: np.broadcast_to(np.asarray(sp[s]["n"], dtype=np.float64), nu.shape) for s in BAND_SPECIES},
                m={s: np.broadcast_to(np.asarray(sp[s]["m"], dtype=np.float64), nu.shape) for s in BAND_SPECIES},
                cont_self=np.asarray(d["continuum"]["self"], dtype=np.float64),
                cont_self_260=np.asarray(d["continuum"]["self_260"], dtype=np.float64),
                cont_foreign=np.asarray(d["continuum"]["foreign"], dtype=np.float64),
                meta=dict(d.get("meta", {})),
            )
        except KeyError as exc:
            raise ValueError(f"rtm coefficients: missing key {exc}") from None


@lru_cache(maxsize=1)
def _default_coefficients() -> _Coefficients:
    text = resources.files("sftl_dask.data").joinpath("rtm_coefficients.json").read_text()
    return _Coefficients.from_dict(json.loads(text))


@dataclass(frozen=True)
class LayerAmounts:
    """Vertical absorber amounts and mean state of each layer of a profile.

    Attributes
    ----------
    z_km : numpy.ndarray
        Level altitudes (km), (n_levels,).
    p_hpa, t_k : numpy.ndarray
        Absorber-weighted layer pressure (hPa) and temperature (K), (n_layers,).
    h2o : numpy.ndarray
        Water vapour (g cm^-2), (n_layers,).
    air : numpy.ndarray
        Air column (atm-cm, i.e. cm at STP), (n_layers,).
    o3 : numpy.ndarray
        Ozone (atm-cm), (n_layers,).
    e_hpa : numpy.ndarray
        Layer water vapour partial pressure (hPa), (n_layers,).
    co2_scale : float
        CO2 mixing ratio relative to the calibration's 330 ppmv.
    """

    z_km: NDArray[np.float64]
    p_hpa: NDArray[np.float64]
    t_k: NDArray[np.float64]
    h2o: NDArray[np.float64]
    air: NDArray[np.float64]
    o3: NDArray[np.float64]
    e_hpa: NDArray[np.float64]
    co2_scale: float


def layer_amounts(profile: AtmosphereProfile) -> LayerAmounts:
    """Integrate a profile into layers (log-linear densities between levels).

    Parameters
    ----------
    profile : AtmosphereProfile
        Levels from the surface up; levels above 80 km are dropped.

    Returns
    -------
    LayerAmounts
    """
    keep = profile.altitude_km <= TOP_OF_MODEL_KM + 1e-9
    z = profile.altitude_km[keep]
    p = profile.pressure_hpa[keep]
    t = profile.temperature_k[keep]
    n_air = p * 100.0 / (BOLTZMANN_K * t) * 1e-6  # molecules cm^-3
    vmr_w = profile.h2o_ppmv[keep] * 1e-6
    vmr_o = profile.o3_ppmv[keep] * 1e-6
    rho_w = n_air * vmr_w * MOLAR_MASS_H2O / AVOGADRO  # g cm^-3
    dz = np.diff(z) * 1e5  # cm
    air = loglinear_layer_integral(n_air[:-1], n_air[1:], dz) / LOSCHMIDT
    h2o = loglinear_layer_integral(rho_w[:-1], rho_w[1:], dz)
    o3 = loglinear_layer_integral((n_air * vmr_o)[:-1], (n_air * vmr_o)[1:], dz) / LOSCHMIDT
    # Layer mean pressure/temperature weighted by air mass (log-linear p, linear t).
    p_mean = loglinear_layer_integral(p[:-1], p[1:], dz) / dz
    t_mean = 0.5 * (t[:-1] + t[1:])
    e_mean = p_mean * np.maximum(h2o, 0) / np.maximum(air * LOSCHMIDT * MOLAR_MASS_H2O / AVOGADRO, 1e-30)
    return LayerAmounts(z, p_mean, t_mean, h2o, air, o3, e_mean, profile.co2_ppmv / CO2_PPMV_DEFAULT)


def continuum_amounts(la: LayerAmounts) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Water-vapour continuum amounts of each layer, the way LOWTRAN7 forms them.

    The self continuum scales with the water amount times the water-vapour density, the foreign
    continuum with the water amount times the dry-air density, both relative to 296 K at 1013.25 hPa.
    The self part is split between its 296 K and 260 K coefficients by the layer temperature
    (linear weight ``(296 - T) / 36``, clipped to [0, 1]).

    Parameters
    ----------
    la : LayerAmounts
        Layers of a profile.

    Returns
    -------
    tuple of numpy.ndarray
        ``(u_self_296, u_self_260, u_foreign)`` per layer (g cm^-2, density-scaled), each (n_layers,).
    """
    t_hi, t_lo = _SELF_CONTINUUM_T_K
    density = T0_K / la.t_k  # number density at fixed partial pressure, relative to 296 K
    u_self = la.h2o * (la.e_hpa / P0_HPA) * density
    w_260 = np.clip((t_hi - la.t_k) / (t_hi - t_lo), 0.0, 1.0)
    u_for = la.h2o * ((la.p_hpa - la.e_hpa) / P0_HPA) * density
    return u_self * (1.0 - w_260), u_self * w_260, u_for


def _path_factor(z_km: NDArray[np.float64], zenith_deg: NDArray[np.float64]) -> NDArray[np.float64]:
    """Slant path length / vertical thickness of each layer for rays leaving the surface.

    Spherical shells without refraction, zenith angle measured at the lowest level.
    Returns shape (n_angles, n_layers).
    """
    r = EARTH_RADIUS_KM + z_km
    s2 = (r[0] * np.sin(np.deg2rad(zenith_deg)))[:, None] ** 2
    d = np.sqrt(np.maximum(r[None, 1:] ** 2 - s2, 0.0)) - np.sqrt(np.maximum(r[None, :-1] ** 2 - s2, 0.0))
    return d / np.diff(z_km)[None, :]


def _planck_nu_grid(wavelength_um: NDArray[np.float64], t_k: NDArray[np.float64]) -> NDArray[np.float64]:
    """Spectral Planck radiance (W m^-2 sr^-1 um^-1) for temperatures ``t_k`` (...,) on a grid (nb,)."""
    return planck_radiance(wavelength_um, np.asarray(t_k)[..., None])


class ReducedBandModel:
    """The project's own radiative transfer model (see module docstring).

    Parameters
    ----------
    channels : sequence of Channel, optional
        Channels to average into (default: the four VIMI TIR channels).
    n_quadrature : int, optional
        Gauss-Legendre nodes in cos(zenith) for the hemispheric downwelling radiance.
    """

    def __init__(self, channels: Sequence[Channel] | None = None, n_quadrature: int = 6) -> None:
        self.coefficients = _default_coefficients()
        self.channels = tuple(channels or thermal_channels())
        nu = self.coefficients.wavenumber_cm1
        self.wavenumber_cm1 = nu
        self.wavelength_um = 1e4 / nu
        self._weights = np.stack([c.weights(self.wavelength_um) for c in self.channels], axis=1)  # (nb, nc)
        self._pair_n: dict[str, NDArray[np.float64]] = {}
        self._pair_m: dict[str, NDArray[np.float64]] = {}
        self._pair_k: dict[str, NDArray[np.float64]] = {}
        for s in BAND_SPECIES:
            pairs, inv = np.unique(np.stack([self.coefficients.n[s], self.coefficients.m[s]], axis=1), axis=0,
                                   return_inverse=True)
            self._pair_n[s], self._pair_m[s] = pairs[:, 0], pairs[:, 1]
            # (n_pairs, nb): k of each bin in the row of its (n, m) pair, so amounts @ this = k * W per bin
            self._pair_k[s] = np.where(inv.ravel()[None, :] == np.arange(len(pairs))[:, None],
                                       self.coefficients.k[s][None, :], 0.0)
        x, w = np.polynomial.legendre.leggauss(n_quadrature)
        mu = 0.5 * (x + 1.0)
        self._mu = mu
        self._mu_weights = 0.5 * w * 2.0 * mu  # integral of 2 mu dmu over [0,1] of L(mu)

    # -- spectral core ---------------------------------------------------------------------------
    def _species_amounts(self, la: LayerAmounts) -> dict[str, NDArray[np.float64]]:
        """Per-layer vertical, pressure/temperature-scaled absorber amounts, (n_layers, n_exponent_pairs).

        One column per distinct ``(n, m)`` pair of the species; ``self._pair_k[s]`` maps columns to bins
        (a few pairs per species, so paths are summed a few times, not once per bin).
        """
        base = {"h2o": la.h2o, "mixed": la.air * la.co2_scale, "trace": la.air, "o3": la.o3}
        lp = np.log(la.p_hpa / P0_HPA)[:, None]
        lt = np.log(T0_K / la.t_k)[:, None]
        return {s: base[s][:, None] * np.exp(lp * self._pair_n[s][None, :] + lt * self._pair_m[s][None, :])
                for s in BAND_SPECIES}

    def _continuum_depth(self, la: LayerAmounts) -> NDArray[np.float64]:
        """Vertical continuum optical depth per layer and bin, (n_layers, nb)."""
        c = self.coefficients
        u_self, u_self_260, u_for = continuum_amounts(la)
        return (u_self[:, None] * c.cont_self[None, :] + u_self_260[:, None] * c.cont_self_260[None, :]
                + u_for[:, None] * c.cont_foreign[None, :])

    def _transmittance_cumulative(self, amounts: dict[str, NDArray[np.float64]], cont: NDArray[np.float64],
                                  factor: NDArray[np.float64], from_top: bool) -> NDArray[np.float64]:
        """Transmittance from the observer to every level, (n_angles, n_levels, nb).

        ``from_top``: the observer is above the atmosphere (upwelling); else at the surface.
        """
        c = self.coefficients
        n_ang, n_lay = factor.shape
        nb = self.wavenumber_cm1.size
        log_tau = np.zeros((n_ang, n_lay + 1, nb))

        def cum(x: NDArray[np.float64]) -> NDArray[np.float64]:
            # x: (n_ang, n_lay[, nb]) slant amounts per layer -> cumulative to each level
            if from_top:
                out = np.cumsum(x[:, ::-1], axis=1)[:, ::-1]
                return np.concatenate([out, np.zeros_like(out[:, :1])], axis=1)
            out = np.cumsum(x, axis=1)
            return np.concatenate([np.zeros_like(out[:, :1]), out], axis=1)

        for s in BAND_SPECIES:
            w = cum(amounts[s][None, :, :] * factor[..., None])  # (n_ang, n_lev, n_pairs)
            kw = w @ self._pair_k[s]  # k of each bin times the amount of its exponent pair
            log_tau -= np.power(kw, c.a[s][None, None, :])
        log_tau -= cum(cont[None, :, :] * factor[..., None])
        return np.exp(log_tau)

    def spectral(self, profile: AtmosphereProfile, vza_deg: ArrayLike) -> dict[str, NDArray[np.float64]]:
        """Spectral transmittance, upwelling and downwelling radiance on the model grid.

        Parameters
        ----------
        profile : AtmosphereProfile
            Clear-sky profile, lowest level = surface.
        vza_deg : array_like
            View zenith angles at the surface (deg, 0-80).

        Returns
        -------
        dict
            ``wavenumber_cm1`` (nb,), ``wavelength_um`` (nb,), ``transmittance`` (n_angles, nb),
            ``upwelling`` (n_angles, nb) and ``downwelling`` (nb,) hemispheric, and
            ``downwelling_at`` (n_angles, nb) directional radiance from the sky at those zenith
            angles; radiances in W m^-2 sr^-1 um^-1.

        Raises
        ------
        ValueError
            If an angle is outside 0-80 deg or non-finite.
        """
        vza = np.atleast_1d(check_range("vza_deg", vza_deg, 0.0, 80.0, unit="deg"))
        la = layer_amounts(profile)
        amounts = self._species_amounts(la)
        cont = self._continuum_depth(la)
        b_layer = _planck_nu_grid(self.wavelength_um, la.t_k)  # (n_lay, nb)

        f_view = _path_factor(la.z_km, vza)
        tau_top = self._transmittance_cumulative(amounts, cont, f_view, from_top=True)
        up = np.sum(b_layer[None] * (tau_top[:, 1:, :] - tau_top[:, :-1, :]), axis=1)
        trans = tau_top[:, 0, :]

        zen = np.concatenate([np.rad2deg(np.arccos(self._mu)), vza])
        f_sky = _path_factor(la.z_km, zen)
        tau_bot = self._transmittance_cumulative(amounts, cont, f_sky, from_top=False)
        down_dir = np.sum(b_layer[None] * (tau_bot[:, :-1, :] - tau_bot[:, 1:, :]), axis=1)
        nq = self._mu.size
        down_hemi = self._mu_weights @ down_dir[:nq]
        return {
            "wavenumber_cm1": self.wavenumber_cm1,
            "wavelength_um": self.wavelength_um,
            "transmittance": trans,
            "upwelling": up,
            "downwelling": down_hemi,
            "downwelling_at": down_dir[nq:],
        }

    def terms(self, profile: AtmosphereProfile, vza_deg: ArrayLike) -> AtmosphericTerms:
        """Channel-effective terms (SRF-weighted means of the spectral terms).

        Parameters
        ----------
        profile : AtmosphereProfile
            Clear-sky profile.
        vza_deg : array_like
            View zenith angles at the surface (deg, 0-80).

        Returns
        -------
        AtmosphericTerms
        """
        s = self.spectral(profile, vza_deg)
        w = self._weights
        return AtmosphericTerms(
            channels=tuple(c.name for c in self.channels),
            vza_deg=np.atleast_1d(np.asarray(vza_deg, dtype=np.float64)),
            transmittance=s["transmittance"] @ w,
            upwelling=s["upwelling"] @ w,
            downwelling=s["downwelling"] @ w,
        )


class TableBackend:
    """Atmospheric terms read from a table precomputed by an external model.

    For users with MODTRAN, RTTOV or LOWTRAN: run it for each profile and view angle,
    band-average through the channel SRFs, and give the terms as a table with columns
    ``profile`` (matching ``AtmosphereProfile.name``), ``vza_deg`` and, for each channel
    ``<ch>``: ``tau_<ch>`` (unitless), ``lup_<ch>`` and ``ldown_<ch>``
    (W m^-2 sr^-1 um^-1; ``ldown`` is hemispheric irradiance / pi). Angles between the
    tabulated ones are interpolated linearly in sec(vza).

    Parameters
    ----------
    table : pandas.DataFrame
        The terms, one row per (profile, vza_deg).
    channels : sequence of str, optional
        Channel names (default: the four VIMI TIR channel names).
    source : str, optional
        Where the table came from (a file name), used in error messages.

    Raises
    ------
    ValueError
        If a column is missing or a value is non-finite or out of range.
    """

    def __init__(self, table: pd.DataFrame, channels: Sequence[str] | None = None, source: str = "table") -> None:
        self.channels = tuple(channels or (c.name for c in thermal_channels()))
        self.source = source
        need = ["profile", "vza_deg"] + [f"{k}_{c}" for c in self.channels for k in ("tau", "lup", "ldown")]
        missing = [c for c in need if c not in table.columns]
        if missing:
            raise ValueError(f"{source}: missing column(s) {', '.join(missing)}")
        for col in need[1:]:
            v = table[col].to_numpy(dtype=float)
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{source}: column {col} has non-finite values")
            if col.startswith("tau_") and (v.min() < 0 or v.max() > 1):
                raise ValueError(f"{source}: column {col} outside [0, 1]")
            if col.startswith("l") and v.min() < 0:
                raise ValueError(f"{source}: column {col} has negative radiance")
        ordered = table.sort_values(["profile", "vza_deg"], kind="stable")
        self._groups = {str(k): g for k, g in ordered.groupby("profile", sort=False)}

    def terms(self, profile: AtmosphereProfile, vza_deg: ArrayLike) -> AtmosphericTerms:
        """Terms of ``profile`` (looked up by name) at ``vza_deg`` (deg).

        Raises
        ------
        ValueError
            If the profile is not in the table or an angle is outside the tabulated range.
        """
        g = self._groups.get(profile.name)
        if g is None:
            raise ValueError(f"{self.source}: no rows for profile {profile.name!r}")
        vza = np.atleast_1d(np.asarray(vza_deg, dtype=np.float64))
        tab = g["vza_deg"].to_numpy(float)
        if vza.min() < tab.min() - 1e-9 or vza.max() > tab.max() + 1e-9:
            raise ValueError(
                f"{self.source}: profile {profile.name!r} tabulated for vza {tab.min()}-{tab.max()} deg, "
                f"asked for {vza.min()}-{vza.max()} deg"
            )
        sec_t = 1.0 / np.cos(np.deg2rad(tab))
        sec_q = 1.0 / np.cos(np.deg2rad(vza))

        def col(prefix: str) -> NDArray[np.float64]:
            return np.stack([np.interp(sec_q, sec_t, g[f"{prefix}_{c}"].to_numpy(float)) for c in self.channels],
                            axis=1)

        ldown = np.array([g[f"ldown_{c}"].to_numpy(float).mean() for c in self.channels])
        return AtmosphericTerms(self.channels, vza, col("tau"), col("lup"), ldown)
