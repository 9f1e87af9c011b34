"""The band model against the LOWTRAN7 reference cases: the README's accuracy table (developer tool).

Reads ``tests/data/lowtran7_reference.json`` (written by ``tools/lowtran_reference.py``; this
tool itself needs no LOWTRAN), runs :class:`sftl_dask.physics.rtm.ReducedBandModel` on every
case and prints, per atmosphere and channel, the worst transmittance difference and the worst
upwelling / hemispheric downwelling radiance error, both relative and absolute, with the share of
the README's limits used (tau 0.01; radiance max(3%, 0.02 W m^-2 sr^-1 um^-1)); calibration and
held-out cases are reported apart. ``--markdown`` prints the table for the README.

Usage: python tools/rtm_accuracy.py [--reference PATH] [--markdown]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sftl_dask.physics.atmosphere import AFGL_NAMES, afgl
from sftl_dask.physics.rtm import ReducedBandModel

TAU_LIMIT = 0.01
REL_LIMIT, ABS_LIMIT = 0.03, 0.02
CHANNELS = ("B9 8.20", "B10 8.63", "B11 10.80", "B12 11.95")


def model_values(model: ReducedBandModel, case: dict) -> np.ndarray:
    """The band model's values for one reference case (same kind, units and channel order)."""
    p = afgl(case["atmosphere"])
    p = p.with_surface_at(case["surface_km"]) if case["surface_km"] > 0 else p
    t = model.terms(p, [case["angle_deg"]])
    return {"transmittance": t.transmittance[0], "upwelling": t.upwelling[0],
            "downwelling_hemispheric": t.downwelling}[case["kind"]]


def errors(reference: dict, model: ReducedBandModel | None = None) -> list[dict]:
    """One row per (case, channel): model, reference, error and the share of the limit used."""
    model = model or ReducedBandModel()
    rows = []
    for case in reference["cases"]:
        got = model_values(model, case)
        for c, (g, r) in enumerate(zip(got, case["values"], strict=True)):
            d = float(g - r)
            limit = TAU_LIMIT if case["kind"] == "transmittance" else max(REL_LIMIT * abs(r), ABS_LIMIT)
            rows.append({**{k: case[k] for k in ("kind", "atmosphere", "surface_km", "angle_deg")},
                         "held_out": bool(case.get("held_out", False)), "channel": c, "model": float(g),
                         "reference": float(r), "error": d, "relative": d / r if r else 0.0,
                         "used": abs(d) / limit})
    return rows


def _worst(rows: list[dict], kind: str) -> dict:
    sel = [r for r in rows if r["kind"] == kind]
    return max(sel, key=lambda r: r["used"]) if sel else {}


def table(rows: list[dict]) -> str:
    """Markdown: per atmosphere x channel, worst |dtau|, worst L-up and L-down error (% / absolute)."""
    out = ["| atmosphere | channel | worst abs. dtau | worst L-up error (% / W m-2 sr-1 um-1) "
           "| worst L-down error (% / W m-2 sr-1 um-1) |", "|---|---|---|---|---|"]
    for atm in AFGL_NAMES:
        for c, ch in enumerate(CHANNELS):
            sel = [r for r in rows if r["atmosphere"] == atm and r["channel"] == c]
            t, u, d = (_worst(sel, k) for k in ("transmittance", "upwelling", "downwelling_hemispheric"))
            out.append(f"| {atm.replace('_', ' ')} | {ch} | {abs(t['error']):.4f} | "
                       f"{100 * u['relative']:+.1f} / {u['error']:+.3f} | {100 * d['relative']:+.1f} / "
                       f"{d['error']:+.3f} |")
    return "\n".join(out)


def summary(rows: list[dict]) -> str:
    """Worst case of each kind, for calibration-grid and held-out cases apart."""
    lines = []
    for held in (False, True):
        for kind in ("transmittance", "upwelling", "downwelling_hemispheric"):
            w = _worst([r for r in rows if r["held_out"] == held], kind)
            if w:
                lines.append(f"{'held-out' if held else 'calibration'} {kind:24s} worst {w['error']:+.4f} "
                             f"({100 * w['relative']:+.1f}%) = {w['used']:.2f} of the limit: {w['atmosphere']} "
                             f"{CHANNELS[w['channel']]} {w['surface_km']:g} km {w['angle_deg']:g} deg")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default=str(Path(__file__).parents[1] / "tests" / "data"
                                               / "lowtran7_reference.json"))
    ap.add_argument("--markdown", action="store_true", help="print the README's per-channel table")
    args = ap.parse_args()
    rows = errors(json.loads(Path(args.reference).read_text()))
    print(summary(rows))
    if args.markdown:
        print()
        print(table(rows))


if __name__ == "__main__":
    main()
