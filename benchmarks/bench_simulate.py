"""Benchmark: `sftl simulate` at the default size end to end, and the split-window fit.

Measures, in one run on this machine:
* wall time of ``sftl simulate`` (default 946 profiles, embedded LocalCluster with ``--workers``),
  target <= 60 s on 2 cores;
* wall time of ``sftl fit-sw`` and the split-window RMSE on held-out simulated rows per
  WVC x view-angle window (expect < 1 K for WVC < 3 g cm^-2);
* wall time of ``sftl simulate`` from users' own inputs only, >= 10^6 rows (target <= 60 s on 2 cores): a
  TIGR-like CSV profile table of 946 profiles, 177 ECOSTRESS ``*.spectrum.txt`` files and a filled RT table
  (``sftl rt-template``, filled here with the band model's terms: the external RT run, not timed).

Writes ``benchmarks/results/simulate.json`` and ``simulate.png``.

Usage: python -m benchmarks.bench_simulate [--workers 2] [--keep DIR] [--user-spectra 177]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _sftl() -> str:
    exe = Path(sys.executable).with_name("sftl")
    return str(exe) if exe.exists() else "sftl"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", default=None, help="keep the table in this directory")
    ap.add_argument("--user-spectra", type=int, default=177, help="spectrum files of the users'-inputs run "
                    "(946 x 177 x 3 angles x 2 draws = 1,004,652 rows)")
    args = ap.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="sftl-bench-"))
    sim = work / "sim.parquet"
    if sim.exists():
        shutil.rmtree(sim)
    t0 = time.perf_counter()
    subprocess.run([_sftl(), "simulate", "--out", str(sim), "--workers", str(args.workers)], check=True)
    t_sim = time.perf_counter() - t0
    import pyarrow.dataset as ds

    rows = ds.dataset(sim, format="parquet").count_rows()
    t0 = time.perf_counter()
    subprocess.run([_sftl(), "fit-sw", "--sim", str(sim), "--out", str(work / "sw.json")], check=True,
                   stdout=subprocess.DEVNULL)
    t_sw = time.perf_counter() - t0
    sw = json.loads((work / "sw.json").read_text())
    windows = [
        {k: w.get(k) for k in ("wvc_min", "wvc_max", "vza_min", "vza_max", "n_holdout", "rmse_holdout_k",
                                "bias_holdout_k")}
        for w in sw["windows"]
    ]
    low = [w["rmse_holdout_k"] for w in windows if w["wvc_min"] < 3.0 and w["rmse_holdout_k"] is not None]
    result = {
        "benchmark": "simulate",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
        "workers": args.workers,
        "rows": rows,
        "simulate_wall_s": round(t_sim, 2),
        "simulate_target_s": 60,
        "simulate_rows_per_s": round(rows / t_sim),
        "fit_sw_wall_s": round(t_sw, 2),
        "sw_windows": windows,
        "sw_max_holdout_rmse_wvc_below_3_k": max(low) if low else None,
        "user_inputs": _user_inputs_run(work, args.workers, args.user_spectra),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "simulate.json").write_text(json.dumps(result, indent=1))
    _plot(result, RESULTS / "simulate.png")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "sw_windows"}, indent=1))
    return result


def _user_inputs(work: Path, n_spectra: int) -> list[str]:
    """Users' inputs in the real formats, and the ``sftl simulate`` options that take them.

    A TIGR-like CSV export of 946 profiles, ``n_spectra`` ECOSTRESS files (the embedded library's spectra as
    percentage reflectance, then again with their reflectance scaled), and the filled RT table of those profiles.
    """
    import numpy as np
    import pandas as pd

    from sftl_dask.io.rt_table import write_rt_template
    from sftl_dask.physics.emissivity import default_library
    from sftl_dask.physics.profiles import generate_profiles
    from sftl_dask.physics.rtm import ReducedBandModel

    profiles = generate_profiles(946, seed=7, climate={"name_prefix": "tigr"})
    levels = pd.concat([pd.DataFrame({"profile_id": p.name, "pressure_hpa": p.pressure_hpa,
                                      "temperature_k": p.temperature_k, "h2o_ppmv": p.h2o_ppmv, "o3_ppmv": p.o3_ppmv,
                                      "altitude_km": p.altitude_km}) for p in profiles])
    levels.to_csv(work / "tigr.csv", index=False, float_format="%.9g")
    spectra = work / "ecostress"
    spectra.mkdir(exist_ok=True)
    lib = default_library()
    kind = {"soil": "Soil", "sand": "Soil", "rock": "Rock", "vegetation": "Vegetation", "water": "Water",
            "snow_ice": "Snow", "man_made": "Manmade"}
    for k in range(n_spectra):
        s = lib[k % len(lib)]
        refl = np.clip(100.0 * (1.0 - s.emissivity) * (1.0 + 0.15 * (k // len(lib))), 0.0, 99.0)
        rows = "".join(f"{w:.4f}\t{r:.4f}\n" for w, r in zip(s.wavelength_um[::-1], refl[::-1], strict=True))
        (spectra / f"user.{k:04d}.spectrum.txt").write_text(
            f"Name: {s.name} {k}\nType: {kind[s.category]}\nClass: bench\nSample No.: {k}\n"
            "Measurement: Directional (10 Degree) Hemispherical Reflectance\nX Units: Wavelength (micrometers)\n"
            f"Y Units: Reflectance (percentage)\n\n{rows}")
    vza = (0.0, 15.0, 30.0)
    write_rt_template(work / "rt.csv", profiles, vza, overwrite=True)
    rt = pd.read_csv(work / "rt.csv", dtype={"profile": str})
    model = ReducedBandModel()
    terms = {p.name: model.terms(p, vza) for p in profiles}
    ia = rt["vza_deg"].map({v: i for i, v in enumerate(vza)}).to_numpy()
    ic = rt["channel"].map({c.name: i for i, c in enumerate(model.channels)}).to_numpy()
    keys = list(zip(rt["profile"], ia, ic, strict=True))
    rt["tau"] = [terms[p].transmittance[a, c] for p, a, c in keys]
    rt["lup_w_m2_sr_um"] = [terms[p].upwelling[a, c] for p, a, c in keys]
    rt["ldown_w_m2_sr_um"] = [terms[p].downwelling[c] for p, _, c in keys]
    rt.to_csv(work / "rt.csv", index=False, float_format="%.7g")
    return ["--profile-table", str(work / "tigr.csv"), "--spectra-dir", str(spectra), "--rt-table",
            str(work / "rt.csv")]


def _user_inputs_run(work: Path, workers: int, n_spectra: int) -> dict:
    """``sftl simulate`` from users' inputs only, timed end to end (the inputs are made first, not timed)."""
    import pyarrow.dataset as ds

    options = _user_inputs(work, n_spectra)
    sim = work / "sim_user.parquet"
    if sim.exists():
        shutil.rmtree(sim)
    t0 = time.perf_counter()
    subprocess.run([_sftl(), "simulate", "--out", str(sim), "--workers", str(workers), *options], check=True)
    wall = time.perf_counter() - t0
    rows = ds.dataset(sim, format="parquet").count_rows()
    return {"inputs": "CSV profile table (946 profiles), "
            f"{n_spectra} ECOSTRESS files, a filled RT table (band-model terms; external run not timed)",
            "rows": rows, "simulate_wall_s": round(wall, 2), "target_s": 60, "rows_per_s": round(rows / wall)}


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 3]})
    ax[0].bar(["simulate", "fit-sw"], [result["simulate_wall_s"], result["fit_sw_wall_s"]], color="#3b75af")
    ax[0].axhline(result["simulate_target_s"], color="r", ls="--", lw=1, label="target 60 s")
    ax[0].set_ylabel(f"wall time (s), {result['workers']} workers")
    ax[0].set_title(f"{result['rows']:,} rows")
    ax[0].legend()
    vzas = sorted({(w["vza_min"], w["vza_max"]) for w in result["sw_windows"]})
    wvcs = sorted({(w["wvc_min"], w["wvc_max"]) for w in result["sw_windows"]})
    width = 0.8 / max(len(vzas), 1)
    for j, v in enumerate(vzas):
        ys = [next((w["rmse_holdout_k"] or 0 for w in result["sw_windows"]
                    if (w["vza_min"], w["vza_max"]) == v and (w["wvc_min"], w["wvc_max"]) == c), 0) for c in wvcs]
        ax[1].bar([i + j * width for i in range(len(wvcs))], ys, width=width, label=f"VZA {v[0]:g}-{v[1]:g}°")
    ax[1].set_xticks([i + 0.4 - width / 2 for i in range(len(wvcs))], [f"{a:g}-{b:g}" for a, b in wvcs])
    ax[1].set_xlabel("WVC window (g cm$^{-2}$)")
    ax[1].set_ylabel("split-window RMSE, held out (K)")
    ax[1].axhline(1.0, color="k", ls=":", lw=0.8)
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
