"""GF5-02 VIMI channels described as data.

The channel table lives in ``sftl_dask/data/vimi_channels.json`` (band names,
centres, edges, NEdT, with sources). A :class:`Channel` holds a spectral response
function (SRF) sampled on a wavelength grid and knows how to average any spectrum
through it. Replace the default boxcar SRFs with measured ones through
:meth:`Channel.from_table`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "THERMAL_NAMES",
    "Channel",
    "channel_table",
    "reflective_bands",
    "thermal_channels",
]

#: Names of the four thermal channels in order (brightness temperature variables, K).
THERMAL_NAMES: tuple[str, ...] = ("bt_08_20", "bt_08_63", "bt_10_80", "bt_11_95")


@dataclass(frozen=True, eq=False)
class Channel:
    """One spectral channel with its response function.

    Parameters
    ----------
    name : str
        Variable name, e.g. ``"bt_10_80"``.
    band : str
        Instrument band id, e.g. ``"B11"``.
    centre_um : float
        Nominal centre wavelength (um).
    wavelength_um : numpy.ndarray
        Wavelengths (um, increasing) where the response is given.
    response : numpy.ndarray
        Relative spectral response (unitless, peak 1) at ``wavelength_um``.
    nedt_k : float
        Noise-equivalent temperature difference at 300 K (K).
    """

    name: str
    band: str
    centre_um: float
    wavelength_um: NDArray[np.float64] = field(repr=False)
    response: NDArray[np.float64] = field(repr=False)
    nedt_k: float = 0.0

    def __post_init__(self) -> None:
        wl = np.asarray(self.wavelength_um, dtype=np.float64)
        rsp = np.asarray(self.response, dtype=np.float64)
        if wl.ndim != 1 or wl.shape != rsp.shape or wl.size < 2:
            raise ValueError(f"channel {self.name}: wavelength and response must be 1-D of equal length >= 2")
        if np.any(np.diff(wl) <= 0):
            raise ValueError(f"channel {self.name}: wavelength_um must be strictly increasing")
        if not np.all(np.isfinite(rsp)) or rsp.min() < 0 or rsp.max() <= 0:
            raise ValueError(f"channel {self.name}: response must be finite, >= 0 and not all zero")
        object.__setattr__(self, "wavelength_um", wl)
        object.__setattr__(self, "response", rsp / rsp.max())

    @classmethod
    def boxcar(cls, name: str, band: str, centre_um: float, lower_um: float, upper_um: float,
               nedt_k: float = 0.0) -> Channel:
        """A boxcar response over ``[lower_um, upper_um]`` (um) with 1 nm shoulders."""
        eps = 1e-3
        wl = np.array([lower_um - eps, lower_um, upper_um, upper_um + eps])
        return cls(name, band, centre_um, wl, np.array([0.0, 1.0, 1.0, 0.0]), nedt_k)

    @classmethod
    def from_table(cls, name: str, band: str, wavelength_um: ArrayLike, response: ArrayLike,
                   nedt_k: float = 0.0) -> Channel:
        """A channel from a measured SRF table (wavelength in um, response unitless)."""
        wl = np.asarray(wavelength_um, dtype=np.float64)
        rsp = np.asarray(response, dtype=np.float64)
        centre = float(np.trapezoid(wl * rsp, wl) / np.trapezoid(rsp, wl))
        return cls(name, band, centre, wl, rsp, nedt_k)

    @property
    def lower_um(self) -> float:
        """Shortest wavelength with non-zero response (um)."""
        return float(self.wavelength_um[np.argmax(self.response > 0)])

    @property
    def upper_um(self) -> float:
        """Longest wavelength with non-zero response (um)."""
        return float(self.wavelength_um[len(self.response) - 1 - np.argmax(self.response[::-1] > 0)])

    def response_at(self, wavelength_um: ArrayLike) -> NDArray[np.float64]:
        """Relative response (unitless) interpolated at ``wavelength_um`` (um); 0 outside."""
        return np.interp(np.asarray(wavelength_um, dtype=np.float64), self.wavelength_um,
                         self.response, left=0.0, right=0.0)

    def weights(self, wavelength_um: ArrayLike) -> NDArray[np.float64]:
        """Normalised integration weights of this SRF on a wavelength grid.

        The weight of each grid point is its response times its trapezoid cell
        width in wavelength, so ``weights @ spectrum`` is the SRF-weighted mean of
        a spectrum sampled on that grid (in the spectrum's own unit).

        Parameters
        ----------
        wavelength_um : array_like
            1-D grid (um), increasing or decreasing.

        Returns
        -------
        numpy.ndarray
            Weights summing to 1, same shape as the grid.

        Raises
        ------
        ValueError
            If the grid does not cover the channel's response.
        """
        wl = np.asarray(wavelength_um, dtype=np.float64)
        if wl.ndim != 1 or wl.size < 2:
            raise ValueError(f"channel {self.name}: wavelength grid must be 1-D with >= 2 points")
        if min(wl[0], wl[-1]) > self.lower_um + 1e-9 or max(wl[0], wl[-1]) < self.upper_um - 1e-9:
            raise ValueError(
                f"channel {self.name}: grid [{wl.min():.3f}, {wl.max():.3f}] um does not cover "
                f"the response [{self.lower_um:.3f}, {self.upper_um:.3f}] um"
            )
        cell = np.abs(np.gradient(wl))
        w = self.response_at(wl) * cell
        total = w.sum()
        if total <= 0:
            raise ValueError(f"channel {self.name}: grid too coarse to sample the response")
        return w / total

    def band_average(self, wavelength_um: ArrayLike, values: ArrayLike) -> NDArray[np.float64]:
        """SRF-weighted mean of ``values`` over its last axis, sampled at ``wavelength_um`` (um)."""
        return np.asarray(values, dtype=np.float64) @ self.weights(wavelength_um)


@lru_cache(maxsize=1)
def channel_table() -> dict[str, Any]:
    """The raw channel table (parsed ``vimi_channels.json``), with its sources."""
    text = resources.files("sftl_dask.data").joinpath("vimi_channels.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def thermal_channels() -> tuple[Channel, ...]:
    """The four VIMI thermal channels (B9-B12) with their default boxcar SRFs."""
    return tuple(
        Channel.boxcar(c["name"], c["band"], c["centre_um"], c["lower_um"], c["upper_um"], c["nedt_k"])
        for c in channel_table()["thermal"]
    )


def reflective_bands() -> dict[str, dict[str, Any]]:
    """VIMI reflective bands B1-B8 keyed by name (``red`` and ``nir`` give NDVI)."""
    return {c["name"]: dict(c) for c in channel_table()["reflective"]}
