"""In situ LST from a broadband longwave radiometer (CNR1, CGR3 and the like).

The surface-leaving longwave flux measured by a downward-looking pyrgeometer is
the emitted part plus the reflected sky flux::

    L_up = eps_b * sigma * Ts**4 + (1 - eps_b) * L_down

so ``Ts = [(L_up - (1 - eps_b) * L_down) / (eps_b * sigma)] ** (1/4)``
(FACTS.md, "In situ LST"). Fluxes are in W m^-2, temperatures in K, the
broadband (8-13.5 um) emissivity ``eps_b`` is unitless.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from sftl_dask.physics.checks import check_range
from sftl_dask.physics.constants import STEFAN_BOLTZMANN

__all__ = ["radiometer_lst", "upwelling_longwave"]

#: Plausible ranges of the inputs; outside them a record is a sensor fault, not a surface.
_UPWELLING_RANGE_W_M2 = (50.0, 1000.0)
_DOWNWELLING_RANGE_W_M2 = (0.0, 700.0)
_BROADBAND_EMISSIVITY_RANGE = (0.8, 1.0)
_LST_RANGE_K = (150.0, 400.0)


def _checked(
    name: str, values: ArrayLike, bounds: tuple[float, float], unit: str, allow_nan: bool
) -> NDArray[np.float64]:
    """``values`` as float64; bad values raise naming ``name``, or become NaN when ``allow_nan``."""
    lower, upper = bounds
    if not allow_nan:
        return check_range(name, values, lower, upper, unit=unit)
    arr = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(arr) | (arr < lower) | (arr > upper)
    if bad.any():
        arr = np.where(bad, np.nan, arr)
    return arr


def radiometer_lst(
    upwelling_w_m2: ArrayLike,
    downwelling_w_m2: ArrayLike,
    broadband_emissivity: ArrayLike,
    *,
    allow_nan: bool = False,
) -> NDArray[np.float64]:
    """Surface temperature (K) from upwelling and downwelling longwave fluxes.

    Ts = [(L_up - (1 - eps_b) L_down) / (eps_b sigma)]^(1/4), with sigma the
    Stefan-Boltzmann constant (W m^-2 K^-4). Inputs broadcast against each other.

    Parameters
    ----------
    upwelling_w_m2 : array_like
        Upwelling longwave flux L_up (W m^-2), valid 50-1000.
    downwelling_w_m2 : array_like
        Downwelling (sky) longwave flux L_down (W m^-2), valid 0-700.
    broadband_emissivity : array_like
        Broadband surface emissivity eps_b (unitless), valid 0.8-1.0.
    allow_nan : bool, optional
        If true, NaN or out-of-range inputs and a non-positive emitted flux give
        NaN for that sample instead of raising (for gappy station records).

    Returns
    -------
    numpy.ndarray
        Land surface temperature (K), float64, broadcast shape of the inputs.

    Raises
    ------
    ValueError
        Unless ``allow_nan``: naming the variable when an input is non-finite or
        out of range, or naming ``upwelling_w_m2`` when the emitted flux
        ``L_up - (1 - eps_b) L_down`` is zero or negative.
    """
    up = _checked("upwelling_w_m2", upwelling_w_m2, _UPWELLING_RANGE_W_M2, "W m-2", allow_nan)
    down = _checked("downwelling_w_m2", downwelling_w_m2, _DOWNWELLING_RANGE_W_M2, "W m-2", allow_nan)
    emis = _checked("broadband_emissivity", broadband_emissivity, _BROADBAND_EMISSIVITY_RANGE, "", allow_nan)
    emitted = up - (1.0 - emis) * down
    with np.errstate(invalid="ignore"):
        non_positive = emitted <= 0.0
    if np.any(non_positive):
        if not allow_nan:
            raise ValueError(
                f"upwelling_w_m2: emitted flux upwelling_w_m2 - (1 - broadband_emissivity) * downwelling_w_m2 "
                f"is <= 0 W m-2 at {int(np.count_nonzero(non_positive))} sample(s)"
            )
        emitted = np.where(non_positive, np.nan, emitted)
    return np.sqrt(np.sqrt(emitted / (emis * STEFAN_BOLTZMANN)))


def upwelling_longwave(
    lst_k: ArrayLike,
    downwelling_w_m2: ArrayLike,
    broadband_emissivity: ArrayLike,
    *,
    allow_nan: bool = False,
) -> NDArray[np.float64]:
    """Upwelling longwave flux (W m^-2) seen by a radiometer over a surface at ``lst_k``.

    The forward model inverted by :func:`radiometer_lst`:
    L_up = eps_b sigma Ts^4 + (1 - eps_b) L_down. Inputs broadcast.

    Parameters
    ----------
    lst_k : array_like
        Surface temperature Ts (K), valid 150-400.
    downwelling_w_m2 : array_like
        Downwelling longwave flux L_down (W m^-2), valid 0-700.
    broadband_emissivity : array_like
        Broadband surface emissivity eps_b (unitless), valid 0.8-1.0.
    allow_nan : bool, optional
        If true, NaN or out-of-range inputs give NaN for that sample instead of raising.

    Returns
    -------
    numpy.ndarray
        Upwelling longwave flux (W m^-2), float64.

    Raises
    ------
    ValueError
        Naming the variable when an input is non-finite or out of range (unless ``allow_nan``).
    """
    t = _checked("lst_k", lst_k, _LST_RANGE_K, "K", allow_nan)
    down = _checked("downwelling_w_m2", downwelling_w_m2, _DOWNWELLING_RANGE_W_M2, "W m-2", allow_nan)
    emis = _checked("broadband_emissivity", broadband_emissivity, _BROADBAND_EMISSIVITY_RANGE, "", allow_nan)
    t2 = t * t
    return emis * STEFAN_BOLTZMANN * (t2 * t2) + (1.0 - emis) * down
