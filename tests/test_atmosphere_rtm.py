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
def test_nadir_transmittance_reproduces_lowtran7_within_0_03(model, name):
    tau = model.terms(afgl(name), [0.0]).transmittance[0]
    assert np.max(np.abs(tau - np.array(LOWTRAN_NADIR_TAU[name]))) < 0.03


def test_transmittance_off_nadir_and_at_altitude_matches_lowtran7(model):
    worst = 0.0
    for case in (c for c in REFERENCE["cases"] if c["kind"] == "transmittance"):
        tau = model.terms(_profile(case), [case["angle_deg"]]).transmittance[0]
        worst = max(worst, float(np.max(np.abs(tau - np.array(case["values"])))))
    assert worst < 0.03


def test_upwelling_path_radiance_matches_lowtran7(model):
    for case in (c for c in REFERENCE["cases"] if c["kind"] == "upwelling"):
        lup = model.terms(_profile(case), [case["angle_deg"]]).upwelling[0]
        ref = np.array(case["values"])
        assert np.all(np.abs(lup - ref) <= np.maximum(0.05 * ref, 0.03)), (case["atmosphere"], lup, ref)


def test_directional_downwelling_matches_lowtran7(model):
    for case in (c for c in REFERENCE["cases"] if c["kind"] == "downwelling_at"):
        ldn = model.spectral(_profile(case), [case["angle_deg"]])["downwelling_at"][0] @ model._weights
        ref = np.array(case["values"])
        assert np.all(np.abs(ldn - ref) <= np.maximum(0.15 * ref, 0.03)), (case["atmosphere"], ldn, ref)


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
