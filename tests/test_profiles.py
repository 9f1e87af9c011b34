"""Profile generator (TIGR-like population) and the reader of user profile tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sftl_dask.io.profiles import read_profile_table
from sftl_dask.physics.atmosphere import AFGL_NAMES, AtmosphereProfile, afgl
from sftl_dask.physics.profiles import (
    ProfileClimate,
    generate_profiles,
    hypsometric_altitude_km,
    profile_summary,
    saturation_vapour_pressure_hpa,
)


@pytest.fixture(scope="module")
def population() -> list[AtmosphereProfile]:
    return generate_profiles()


@pytest.fixture(scope="module")
def summary(population) -> pd.DataFrame:
    return profile_summary(population)


# --- saturation and hydrostatics ---------------------------------------------------------------


def test_saturation_vapour_pressure_matches_murphy_koop_reference_values():
    # triple point 611.657 Pa for both phases; IAPWS liquid at 300 K 3536.8 Pa; ice at 250 K 76.02 Pa
    assert saturation_vapour_pressure_hpa(273.16) == pytest.approx(6.11657, rel=1e-5)
    assert saturation_vapour_pressure_hpa(273.16, phase="ice") == pytest.approx(6.11657, rel=1e-5)
    assert saturation_vapour_pressure_hpa(300.0) == pytest.approx(35.368, rel=1e-3)
    assert saturation_vapour_pressure_hpa(250.0, phase="ice") == pytest.approx(0.7602, rel=1e-3)
    both = saturation_vapour_pressure_hpa([250.0, 290.0], phase="auto")
    assert both[0] == pytest.approx(0.7602, rel=1e-3)
    assert both[1] == pytest.approx(float(saturation_vapour_pressure_hpa(290.0)))


def test_saturation_vapour_pressure_rejects_bad_phase_and_temperature():
    with pytest.raises(ValueError, match="phase"):
        saturation_vapour_pressure_hpa(280.0, phase="steam")
    with pytest.raises(ValueError, match="t_k"):
        saturation_vapour_pressure_hpa(373.15)
    with pytest.raises(ValueError, match="t_k"):
        saturation_vapour_pressure_hpa([280.0, np.nan])


@pytest.mark.parametrize("name", AFGL_NAMES)
def test_hypsometric_altitudes_reproduce_afgl_within_20_m_at_5_km_100_m_at_30_km(name):
    a = afgl(name)
    z = hypsometric_altitude_km(a.pressure_hpa, a.temperature_k, a.h2o_ppmv)
    err = np.abs(z - a.altitude_km)
    assert np.max(err[a.altitude_km <= 5.0]) < 0.02
    assert np.max(err[a.altitude_km <= 30.0]) < 0.1


# --- generator: population -----------------------------------------------------------------------


def test_default_population_is_946_profiles_named_gen_with_at_most_50_levels(population):
    assert len(population) == 946
    assert [p.name for p in population[:3]] == ["gen000000", "gen000001", "gen000002"]
    assert population[123].name == "gen000123"
    assert len({p.name for p in population}) == 946
    assert all(p.n_levels <= 50 for p in population)
    assert all(p.altitude_km[-1] >= 70.0 for p in population)


def test_same_seed_gives_same_profiles_and_other_seeds_differ(population):
    again = generate_profiles(seed=0)
    for a, b in zip(population[:50], again[:50], strict=True):
        for key in ("altitude_km", "pressure_hpa", "temperature_k", "h2o_ppmv", "o3_ppmv"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    other = generate_profiles(seed=1)
    t0 = np.array([p.surface_air_temperature_k for p in population])
    t1 = np.array([p.surface_air_temperature_k for p in other])
    assert not np.allclose(t0, t1)
    w1 = profile_summary(other).wvc_g_cm2
    assert w1.max() > 5.5  # another seed spans as wide a range


def test_generated_wvc_spans_0_15_to_6_with_a_spread_distribution(summary):
    w = summary.wvc_g_cm2.to_numpy()
    assert w.min() <= 0.15 and w.max() >= 6.0
    assert w.max() <= 6.5 * 1.01  # within wvc_range
    # every part of the range is populated, not only the dry end that cold columns force
    for lo, hi, frac in ((0.0, 0.5, 0.2), (0.5, 1.0, 0.06), (1.0, 2.0, 0.08), (2.0, 3.0, 0.05),
                         (3.0, 4.5, 0.04), (4.5, 7.0, 0.02)):
        assert np.mean((w >= lo) & (w < hi)) >= frac, (lo, hi)


def test_surface_air_temperature_spans_232_to_313_roughly_uniformly(summary):
    t = summary.surface_air_temperature_k.to_numpy()
    assert t.min() <= 232.0 and t.max() >= 313.0
    assert t.min() >= 230.0 and t.max() <= 315.0
    counts, _ = np.histogram(t, bins=np.arange(230.0, 316.0, 10.0))
    assert counts.min() >= 0.5 * counts.mean()  # no hole; hottest bin thinned only by hot highlands


def test_elevations_span_0_to_4_km_and_surface_pressure_follows(summary):
    z = summary.surface_altitude_km.to_numpy()
    assert z.min() >= 0.0 and z.max() <= 4.0
    assert z.min() < 0.1 and z.max() > 3.9
    assert np.corrcoef(z, np.log(summary.surface_pressure_hpa))[0, 1] < -0.98
    assert summary.surface_pressure_hpa.between(580.0, 1050.0).all()


def test_no_generated_level_is_supersaturated(population):
    for p in population:
        e = p.h2o_ppmv * 1e-6 * p.pressure_hpa
        e_sat = saturation_vapour_pressure_hpa(p.temperature_k, phase="auto")  # over ice below 273.16 K
        assert np.all(e <= e_sat * (1.0 + 1e-9)), p.name


def test_mid_troposphere_temperature_decreases_with_lapse_rates_4_to_9_k_per_km(population):
    lapse_all = []
    for p in population:
        z, t = p.altitude_km, p.temperature_k
        mid = (z >= p.surface_altitude_km + 2.5) & (z <= 7.0)  # above any low inversion, below any tropopause
        if mid.sum() < 2:
            continue
        lapse = -np.diff(t[mid]) / np.diff(z[mid])
        assert np.all(lapse > 0), p.name
        lapse_all.append(lapse)
    lapse_all = np.concatenate(lapse_all)
    assert lapse_all.min() >= 4.0 - 1e-6 and lapse_all.max() <= 9.0 + 1e-6
    assert 5.0 < np.median(lapse_all) < 8.0


def test_low_inversions_are_frequent_in_cold_and_rare_in_warm_profiles(population, summary):
    def has_inversion(p: AtmosphereProfile) -> bool:
        low = p.altitude_km <= p.surface_altitude_km + 2.0
        return bool(np.any(np.diff(p.temperature_k[low]) > 0))

    inv = np.array([has_inversion(p) for p in population])
    t = summary.surface_air_temperature_k.to_numpy()
    cold, warm = inv[t < 255.0].mean(), inv[t > 295.0].mean()
    assert 0.4 < cold < 0.9
    assert warm < 0.3 and warm < cold


def test_tropopause_is_high_and_cold_over_warm_surfaces_low_over_cold(population, summary):
    z_min, t_min = [], []
    for p in population:
        trop = p.altitude_km <= 20.0
        k = int(np.argmin(p.temperature_k[trop]))
        z_min.append(p.altitude_km[trop][k])
        t_min.append(p.temperature_k[trop][k])
    z_min, t_min = np.array(z_min), np.array(t_min)
    t_s, z_s = summary.surface_air_temperature_k.to_numpy(), summary.surface_altitude_km.to_numpy()
    warm, cold = (t_s > 300.0) & (z_s < 1.0), t_s < 250.0
    assert np.median(z_min[warm]) > 14.0 and np.median(t_min[warm]) < 205.0
    assert np.median(z_min[cold]) < 11.0
    assert t_min.min() > 175.0


def test_cold_profiles_are_dry_and_warm_ones_can_be_wet(summary):
    t, w = summary.surface_air_temperature_k, summary.wvc_g_cm2
    assert (w[t < 250.0] < 1.0).all()
    assert (w[t < 240.0] < 0.2).all()
    assert w[t > 300.0].median() > 2.0


def test_ozone_follows_afgl_climatology(population):
    columns = np.array([np.max(p.o3_ppmv) for p in population])
    assert 4.0 < np.median(columns) < 12.0
    assert all(np.all(p.o3_ppmv < 20.0) for p in population)


# --- generator: climate option and arguments ---------------------------------------------------


def test_climate_sets_regional_ranges_prefix_and_co2():
    heihe = ProfileClimate(t_surface_range=(280.0, 310.0), wvc_range=(0.3, 3.0), elevation_range_km=(1.4, 3.1),
                           inversion_scale=0.2, co2_ppmv=415.0, name_prefix="heihe")
    profiles = generate_profiles(200, seed=3, climate=heihe)
    s = profile_summary(profiles)
    assert s.name.iloc[0] == "heihe000000"
    assert s.surface_altitude_km.between(1.4, 3.1).all()
    assert s.surface_air_temperature_k.between(280.0, 310.0).all()
    assert s.wvc_g_cm2.between(0.3 * 0.99, 3.0 * 1.01).all()
    assert all(p.co2_ppmv == 415.0 for p in profiles)
    as_dict = generate_profiles(200, seed=3, climate={"t_surface_range": (280.0, 310.0), "wvc_range": (0.3, 3.0),
                                                      "elevation_range_km": (1.4, 3.1), "inversion_scale": 0.2,
                                                      "co2_ppmv": 415.0, "name_prefix": "heihe"})
    np.testing.assert_array_equal(as_dict[7].temperature_k, profiles[7].temperature_k)


def test_range_arguments_narrow_the_population():
    s = profile_summary(generate_profiles(100, seed=5, t_surface_range=(285.0, 300.0), elevation_range_km=(0.0, 0.5),
                                          wvc_range=(1.0, 2.0)))
    assert s.surface_air_temperature_k.between(285.0, 300.0).all()
    assert s.surface_altitude_km.between(0.0, 0.5).all()
    assert s.wvc_g_cm2.between(0.99, 2.02).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must"),
        ({"t_surface_range": (300.0, 250.0)}, "t_surface_range"),
        ({"elevation_range_km": (0.0, 9.0)}, "elevation_range_km"),
        ({"wvc_range": (-1.0, 3.0)}, "wvc_range"),
        ({"climate": {"t_surface": (250.0, 260.0)}}, "unknown key"),
        ({"climate": {"inversion_scale": -1.0}}, "inversion_scale"),
    ],
)
def test_bad_generator_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_profiles(**kwargs)


def test_profile_summary_has_one_row_per_profile_with_units_in_names(population, summary):
    assert len(summary) == len(population)
    assert {"name", "surface_altitude_km", "surface_air_temperature_k", "wvc_g_cm2"} <= set(summary.columns)
    assert summary.wvc_g_cm2.iloc[5] == pytest.approx(population[5].total_column_water())


# --- reader ----------------------------------------------------------------------------------------


def _long_table(profiles: list[AtmosphereProfile], altitude: bool = True) -> pd.DataFrame:
    frames = []
    for p in profiles:
        cols = {
            "profile_id": p.name,
            "pressure_hpa": p.pressure_hpa,
            "temperature_k": p.temperature_k,
            "h2o_ppmv": p.h2o_ppmv,
            "o3_ppmv": p.o3_ppmv,
            "surface_altitude_km": p.surface_altitude_km,
            "co2_ppmv": p.co2_ppmv,
        }
        if altitude:
            cols["altitude_km"] = p.altitude_km
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def _assert_same(a: AtmosphereProfile, b: AtmosphereProfile, altitude_atol: float = 1e-9) -> None:
    assert a.name == b.name
    for key in ("pressure_hpa", "temperature_k", "h2o_ppmv", "o3_ppmv"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-9, err_msg=key)
    np.testing.assert_allclose(a.altitude_km, b.altitude_km, atol=altitude_atol, rtol=0)
    assert a.co2_ppmv == b.co2_ppmv


def test_csv_round_trip_of_generated_profiles(tmp_path, population):
    path = tmp_path / "profiles.csv"
    _long_table(population[:20]).to_csv(path, index=False, float_format="%.17g")
    back = read_profile_table(path)
    assert len(back) == 20
    for a, b in zip(population[:20], back, strict=True):
        _assert_same(a, b)


def test_csv_without_altitudes_recovers_generated_levels_hydrostatically(tmp_path, population):
    path = tmp_path / "no_alt.csv"
    _long_table(population[:20], altitude=False).to_csv(path, index=False, float_format="%.17g")
    for a, b in zip(population[:20], read_profile_table(path), strict=True):
        low = a.altitude_km <= 30.0  # the generator's hydrostatics agree with the reader's
        np.testing.assert_allclose(b.altitude_km[low], a.altitude_km[low], atol=0.02)
        assert b.total_column_water() == pytest.approx(a.total_column_water(), rel=0.01)


def test_netcdf_round_trip_profile_by_level(tmp_path, population):
    sub = population[:8]
    path = tmp_path / "profiles.nc"
    stack = {k: (("profile", "level"), np.stack([getattr(p, k) for p in sub]))
             for k in ("altitude_km", "pressure_hpa", "temperature_k", "h2o_ppmv", "o3_ppmv")}
    ds = xr.Dataset(stack, coords={"profile": [p.name for p in sub]})
    ds["co2_ppmv"] = ("profile", [p.co2_ppmv for p in sub])
    ds.to_netcdf(path)
    back = read_profile_table(path)
    for a, b in zip(sub, back, strict=True):
        _assert_same(a, b)


def test_netcdf_on_a_pressure_dimension_in_pa_with_specific_humidity(tmp_path):
    names = ["tropical", "subarctic_winter"]
    p_hpa = np.array([1000.0, 925.0, 850.0, 700.0, 500.0, 300.0, 200.0, 100.0, 50.0, 10.0])
    temps, q = [], []
    for n in names:
        a = afgl(n)
        lnp = -np.log(a.pressure_hpa)
        temps.append(np.interp(-np.log(p_hpa), lnp, a.temperature_k))
        x = np.interp(-np.log(p_hpa), lnp, a.h2o_ppmv) * 1e-6
        eps = 18.01528 / 28.9647
        q.append(1e3 * eps * x / (1.0 - x * (1.0 - eps)))
    ds = xr.Dataset(
        {"temperature_k": (("pressure", "profile"), np.array(temps).T),
         "q_g_kg": (("pressure", "profile"), np.array(q).T),
         "surface_altitude_km": ("profile", [0.1, 0.1])},
        coords={"pressure": ("pressure", p_hpa * 100.0, {"units": "Pa"}), "profile": names},
    )
    path = tmp_path / "plev.nc"
    ds.to_netcdf(path)
    back = read_profile_table(path)
    assert [p.name for p in back] == names
    for n, p in zip(names, back, strict=True):
        np.testing.assert_allclose(p.pressure_hpa, p_hpa)
        assert p.surface_altitude_km == pytest.approx(0.1)
        a = afgl(n)
        np.testing.assert_allclose(p.h2o_ppmv, np.interp(-np.log(p_hpa), -np.log(a.pressure_hpa), a.h2o_ppmv),
                                   rtol=1e-9)
    # no ozone given: AFGL mid-latitude summer ozone on those pressures
    mls = afgl("midlatitude_summer")
    np.testing.assert_allclose(back[0].o3_ppmv, np.interp(-np.log(p_hpa), -np.log(mls.pressure_hpa), mls.o3_ppmv))


@pytest.mark.parametrize("name", AFGL_NAMES)
@pytest.mark.parametrize("humidity", ["h2o_ppmv", "q_g_kg"])
def test_tpw_of_an_afgl_table_matches_afgl_within_2_percent(tmp_path, name, humidity):
    a = afgl(name)
    df = pd.DataFrame({"profile_id": name, "pressure_hpa": a.pressure_hpa, "temperature_k": a.temperature_k})
    if humidity == "h2o_ppmv":
        df["h2o_ppmv"] = a.h2o_ppmv
    else:
        x, eps = a.h2o_ppmv * 1e-6, 18.01528 / 28.9647
        df["q_g_kg"] = 1e3 * eps * x / (1.0 - x * (1.0 - eps))
    path = tmp_path / f"{name}.csv"
    df.iloc[::-1].to_csv(path, index=False)  # top first: the reader turns it surface-up
    (p,) = read_profile_table(path)
    assert p.pressure_hpa[0] == a.pressure_hpa[0]
    assert p.total_column_water() == pytest.approx(a.total_column_water(), rel=0.02)


def test_relative_humidity_column_is_over_liquid_water(tmp_path):
    df = pd.DataFrame({"profile_id": "rh", "pressure_hpa": [1000.0, 900.0, 800.0],
                       "temperature_k": [290.0, 283.0, 276.0], "rh_percent": [50.0, 50.0, 50.0]})
    path = tmp_path / "rh.csv"
    df.to_csv(path, index=False)
    (p,) = read_profile_table(path)
    e = p.h2o_ppmv * 1e-6 * p.pressure_hpa
    np.testing.assert_allclose(e, 0.5 * saturation_vapour_pressure_hpa(df.temperature_k.to_numpy()), rtol=1e-9)


def _good_rows() -> pd.DataFrame:
    return pd.DataFrame({
        "profile_id": ["a"] * 4 + ["b"] * 4,
        "pressure_hpa": [1000.0, 850.0, 500.0, 200.0] * 2,
        "temperature_k": [288.0, 280.0, 255.0, 218.0] * 2,
        "h2o_ppmv": [10000.0, 5000.0, 1000.0, 20.0] * 2,
    })


def _bad_csv(tmp_path: Path, case: str) -> Path:
    df = _good_rows()
    if case == "nan":
        df.loc[6, "temperature_k"] = np.nan
    elif case == "few_levels":
        df = df.drop(index=[5, 6])
    elif case == "missing_column":
        df = df.drop(columns="temperature_k")
    elif case == "missing_humidity":
        df = df.drop(columns="h2o_ppmv")
    elif case == "non_monotonic":
        df.loc[6, "pressure_hpa"] = 900.0
    elif case == "out_of_range":
        df.loc[5, "temperature_k"] = 50.0
    path = tmp_path / f"{case}.csv"
    df.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("nan", ["'b'", "temperature_k"]),
        ("few_levels", ["'b'", "pressure_hpa", "level"]),
        ("missing_column", ["temperature_k"]),
        ("missing_humidity", ["h2o_ppmv", "q_g_kg"]),
        ("non_monotonic", ["'b'", "pressure_hpa", "monotonic"]),
        ("out_of_range", ["'b'", "temperature_k"]),
    ],
)
def test_bad_csv_raises_value_error_naming_file_profile_and_column(tmp_path, case, needles):
    path = _bad_csv(tmp_path, case)
    with pytest.raises(ValueError) as info:
        read_profile_table(path)
    msg = str(info.value)
    assert msg.startswith(str(path))
    for needle in needles:
        assert needle in msg


def test_bad_netcdf_raises_value_error_naming_file_profile_and_variable(tmp_path):
    t = np.array([[288.0, 280.0, 255.0, 218.0], [288.0, np.nan, 255.0, 218.0]])
    ds = xr.Dataset({"pressure_hpa": (("profile", "level"), np.tile([1000.0, 850.0, 500.0, 200.0], (2, 1))),
                     "temperature_k": (("profile", "level"), t),
                     "h2o_ppmv": (("profile", "level"), np.tile([1e4, 5e3, 1e3, 20.0], (2, 1)))},
                    coords={"profile": ["p0", "p1"]})
    path = tmp_path / "bad.nc"
    ds.to_netcdf(path)
    with pytest.raises(ValueError, match="temperature_k") as info:
        read_profile_table(path)
    assert str(info.value).startswith(str(path)) and "'p1'" in str(info.value)
    ds.drop_vars("temperature_k").to_netcdf(tmp_path / "nocol.nc")
    with pytest.raises(ValueError, match="temperature_k") as info:
        read_profile_table(tmp_path / "nocol.nc")
    assert str(info.value).startswith(str(tmp_path / "nocol.nc"))


def test_unknown_extension_and_missing_file(tmp_path):
    path = tmp_path / "profiles.txt"
    _good_rows().to_csv(path, index=False)
    with pytest.raises(ValueError, match="unknown extension") as info:
        read_profile_table(path)
    assert str(info.value).startswith(str(path))
    with pytest.raises(FileNotFoundError):
        read_profile_table(tmp_path / "absent.csv")


def test_good_rows_read_as_two_profiles(tmp_path):
    path = tmp_path / "good.csv"
    _good_rows().to_csv(path, index=False)
    a, b = read_profile_table(path)
    assert (a.name, b.name) == ("a", "b")
    assert a.surface_altitude_km == 0.0 and a.altitude_km[-1] == pytest.approx(11.8, abs=0.4)
