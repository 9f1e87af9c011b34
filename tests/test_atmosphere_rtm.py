"""Atmospheres and radiative transfer: water columns, LOWTRAN7 anchors and references, physics sanity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sftl_dask.physics.atmosphere import AFGL_NAMES, AtmosphereProfile, afgl
from sftl_dask.physics.planck import band_planck
from sftl_dask.physics.rtm import ReducedBandModel, TableBackend

# MODTRAN6 documentation, total precipitable water (g cm-2) - FACTS.md
MODTRAN_TPW = {
    "tropical": 4.115, "midlatitude_summer": 2.923, "midlatitude_winter": 0.852,
    "subarctic_summer": 2.081, "subarctic_winter": 0.416, "us_standard": 1.417,
}
# LOWTRAN7 nadir whole-atmosphere band transmittance - FACTS.md
LOWTRAN_NADIR_TAU = {
    "tropical": (0.337, 0.525, 0.565, 0.407),
    "midlatitude_summer": (0.443, 0.628, 0.703, 0.573),
    "midlatitude_winter": (0.690, 0.820, 0.917, 0.874),
    "subarctic_summer": (0.538, 0.710, 0.799, 0.701),
    "subarctic_winter": (0.766, 0.867, 0.952, 0.929),
    "us_standard": (0.613, 0.770, 0.872, 0.806),
}
REFERENCE = json.loads((Path(__file__).parent / "data" / "lowtran7_reference.json").read_text())


@pytest.fixture(scope="module")
def model() -> ReducedBandModel:
    return ReducedBandModel()


def _profile(case: dict) -> AtmosphereProfile:
    p = afgl(case["atmosphere"])
    return p.with_surface_at(case["surface_km"]) if case["surface_km"] > 0 else p


@pytest.mark.parametrize("name", AFGL_NAMES)
def test_total_column_water_of_afgl_within_one_percent_of_modtran(name):
    assert afgl(name).total_column_water() == pytest.approx(MODTRAN_TPW[name], rel=0.01)


@pytest.mark.parametrize("name", AFGL_NAMES)
def test_nadir_transmittance_reproduces_lowtran7_within_0_005(model, name):
    tau = model.terms(afgl(name), [0.0]).transmittance[0]
    assert np.max(np.abs(tau - np.array(LOWTRAN_NADIR_TAU[name]))) < 0.005


# The README's claim, exactly: band transmittance within 0.01; upwelling path radiance and hemispheric
# downwelling radiance within max(3%, 0.02 W m-2 sr-1 um-1), for all six atmospheres, four channels,
# view angles 0-65 deg and surfaces at 0-3 km. Cases off the calibration grid are held out.
TAU_LIMIT = 0.01
REL_LIMIT, ABS_LIMIT = 0.03, 0.02


def _model_values(model: ReducedBandModel, case: dict) -> np.ndarray:
    t = model.terms(_profile(case), [case["angle_deg"]])
    return {"transmittance": t.transmittance[0], "upwelling": t.upwelling[0],
            "downwelling_hemispheric": t.downwelling}[case["kind"]]


def _failures(model: ReducedBandModel, kind: str, held_out: bool) -> list[tuple]:
    bad = []
    cases = [c for c in REFERENCE["cases"] if c["kind"] == kind and c["held_out"] == held_out]
    assert cases, (kind, held_out)
    for case in cases:
        got, ref = _model_values(model, case), np.array(case["values"])
        limit = TAU_LIMIT if kind == "transmittance" else np.maximum(REL_LIMIT * ref, ABS_LIMIT)
        if np.any(np.abs(got - ref) > limit):
            bad.append((case["atmosphere"], case["surface_km"], case["angle_deg"], got.round(4), ref))
    return bad


def test_reference_covers_six_atmospheres_four_angles_three_surfaces_and_holds_some_out():
    keys = {(c["atmosphere"], c["surface_km"], c["angle_deg"]) for c in REFERENCE["cases"]}
    assert keys == {(a, h, v) for a in AFGL_NAMES for h in (0.0, 1.5, 3.0) for v in (0.0, 30.0, 50.0, 65.0)}
    held = {(c["surface_km"], c["angle_deg"]) for c in REFERENCE["cases"] if c["held_out"]}
    assert (0.0, 30.0) in held and (1.5, 0.0) in held and (3.0, 65.0) in held and (0.0, 0.0) not in held


@pytest.mark.parametrize("held_out", [False, True], ids=["calibration-grid", "held-out"])
def test_band_transmittance_matches_lowtran7_within_0_01(model, held_out):
    assert not _failures(model, "transmittance", held_out)


@pytest.mark.parametrize("held_out", [False, True], ids=["calibration-grid", "held-out"])
def test_upwelling_path_radiance_matches_lowtran7_within_3_percent_or_0_02(model, held_out):
    assert not _failures(model, "upwelling", held_out)


@pytest.mark.parametrize("held_out", [False, True], ids=["calibration-grid", "held-out"])
def test_hemispheric_downwelling_matches_lowtran7_within_3_percent_or_0_02(model, held_out):
    assert not _failures(model, "downwelling_hemispheric", held_out)


def test_cold_dry_window_channels_no_longer_over_absorb(model):
    """Subarctic winter, 10.8 and 11.95 um, nadir at sea level: the case the Roberts factor got 8.5% wrong."""
    case = next(c for c in REFERENCE["cases"] if c["kind"] == "upwelling" and c["atmosphere"] == "subarctic_winter"
                and c["surface_km"] == 0.0 and c["angle_deg"] == 0.0)
    rel = _model_values(model, case)[2:] / np.array(case["values"][2:]) - 1.0
    assert np.all(np.abs(rel) < 0.03), rel


def test_transmittance_falls_and_path_radiance_rises_with_view_angle(model):
    t = model.terms(afgl("midlatitude_summer"), [0.0, 20.0, 40.0, 60.0])
    assert np.all(np.diff(t.transmittance, axis=0) < 0)
    assert np.all(np.diff(t.upwelling, axis=0) > 0)


def test_higher_surface_sees_more_transparent_atmosphere(model):
    p = afgl("tropical")
    low = model.terms(p, [0.0]).transmittance[0]
    high = model.terms(p.with_surface_at(3.0), [0.0]).transmittance[0]
    assert np.all(high > low + 0.05)


def test_atmospheric_radiances_bounded_by_blackbody_at_warmest_layer(model):
    p = afgl("tropical")
    t = model.terms(p, [0.0])
    bmax = np.array([bp.radiance(p.temperature_k[0]) for bp in band_planck()])
    assert np.all(t.upwelling[0] > 0) and np.all(t.upwelling[0] < bmax * (1 - t.transmittance[0]) + 1e-6)
    assert np.all(t.downwelling > t.upwelling[0]) and np.all(t.downwelling < bmax)


def test_dry_atmosphere_is_almost_transparent_in_window(model):
    t = model.terms(afgl("subarctic_winter").scaled_water(0.0), [0.0]).transmittance[0]
    assert t[2] > 0.97


def test_profile_with_missing_level_refused_with_name():
    p = afgl("us_standard")
    bad = p.temperature_k.copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match="us_standard: temperature_k has 1 missing"):
        AtmosphereProfile(p.altitude_km, p.pressure_hpa, bad, p.h2o_ppmv, p.o3_ppmv, name="us_standard")


def test_rtm_refuses_out_of_range_angle(model):
    with pytest.raises(ValueError, match="vza_deg"):
        model.terms(afgl("tropical"), [85.0])


def test_table_backend_returns_external_terms_and_interpolates_in_sec_vza():
    rows = []
    for vza, tau in ((0.0, 0.8), (60.0, 0.6)):
        row = {"profile": "p1", "vza_deg": vza}
        for c in ("bt_08_20", "bt_08_63", "bt_10_80", "bt_11_95"):
            row |= {f"tau_{c}": tau, f"lup_{c}": 1.0 - tau, f"ldown_{c}": 2.0}
        rows.append(row)
    be = TableBackend(pd.DataFrame(rows), source="modtran.csv")
    p = afgl("tropical")
    p = AtmosphereProfile(p.altitude_km, p.pressure_hpa, p.temperature_k, p.h2o_ppmv, p.o3_ppmv, name="p1")
    t = be.terms(p, [0.0, 60.0, float(np.rad2deg(np.arccos(1 / 1.5)))])
    assert np.allclose(t.transmittance[:2, 0], [0.8, 0.6])
    assert t.transmittance[2, 0] == pytest.approx(0.7, abs=1e-3)  # sec = 1.5, halfway between 1 and 2
    with pytest.raises(ValueError, match=r"modtran\.csv: no rows for profile 'tropical'"):
        be.terms(afgl("tropical"), [0.0])
    with pytest.raises(ValueError, match=r"modtran\.csv: missing column"):
        TableBackend(pd.DataFrame(rows).drop(columns=["tau_bt_10_80"]), source="modtran.csv")
