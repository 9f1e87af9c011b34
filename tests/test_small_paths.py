"""Paths no other test reached: the solar position, the matchup reasons' precedence, the validation metrics
table, a tile store's zone, the testbed's ancillary generators, and ERA5 GRIB through cfgrib."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sftl_dask.io.era5 import open_era5_tcwv
from sftl_dask.io.stores import zone_of_store
from sftl_dask.matchups import matchup_reasons
from sftl_dask.physics.solar import solar_position
from sftl_dask.testbed.ancillary import ERROR_BUDGET, era5_fields, ged_arrays
from sftl_dask.testbed.world import REGIONS, RegionClimate, build_landscape
from sftl_dask.validate import METRIC_COLUMNS, metrics_table


# --------------------------------------------------------------------------------------------- physics.solar
def test_solar_position_at_an_equinox_noon_and_a_solstice_noon() -> None:
    """Independent values: at the March 2022 equinox (20 Mar 15:33 UTC) the declination is ~0, so at the
    equator the sun stands ~overhead at solar noon (12:07 UTC at 0 deg E: equation of time -7.5 min); at the June
    solstice the noon zenith at 40 N is 40 - 23.44 deg, the sun due south."""
    z, _ = solar_position(np.datetime64("2022-03-20T12:07"), 0.0, 0.0)
    assert float(z) < 0.7
    # Beijing (40.0 N, 116.4 E) on 21 June 2022: solar noon at 12:00 - 116.4/15 h + 1.6 min (equation of time)
    z, az = solar_position(np.datetime64("2022-06-21T04:16"), 40.0, 116.4)
    assert float(z) == pytest.approx(40.0 - 23.44, abs=0.3) and float(az) == pytest.approx(180.0, abs=2.0)
    z, az = solar_position(np.datetime64("2022-06-21T00:00"), 40.0, 116.4)  # 07:46 local: morning, sun in the east
    assert 40 < float(z) < 90 and 60 < float(az) < 100
    with pytest.raises(ValueError, match="lat_deg"):
        solar_position(np.datetime64("2022-06-21T04:16"), 95.0, 116.4)


# --------------------------------------------------------------------------------------------- matchups
def test_matchup_reasons_first_rule_wins_coverage_then_cloud_then_ancillary_then_in_situ() -> None:
    covered = [False, True, True, True, True, False]
    cloud = [True, True, False, False, False, False]
    ancillary = [False, False, False, True, True, True]
    insitu = ["ok", "ok", "ok", "ok", "radiometer gap", "ok"]
    assert matchup_reasons(covered, cloud, ancillary, insitu).tolist() == [
        "no coverage", "cloud", "ancillary missing", "ok", "radiometer gap", "no coverage"]
    assert insitu == ["ok", "ok", "ok", "ok", "radiometer gap", "ok"]  # its input is not altered


# --------------------------------------------------------------------------------------------- validate
def test_metrics_table_has_all_then_regions_then_sites_and_counts_only_usable_rows() -> None:
    m = pd.DataFrame({
        "site": ["A", "A", "B", "B", "C"], "region": ["r2", "r2", "r1", "r1", "r1"],
        "lst": [301.0, 299.0, 290.0, 292.0, 280.0], "lst_insitu": [300.0, 300.0, 290.0, 290.0, 300.0],
        "lst_uncertainty": [1.0, 1.0, 1.0, 1.0, 1.0], "reason": ["ok", "ok", "ok", "ok", "cloud"]})
    t = metrics_table(m)
    assert list(t.columns) == list(METRIC_COLUMNS)
    assert list(zip(t["level"], t["name"], t["region"], strict=True)) == [
        ("all", "all", ""), ("region", "r1", "r1"), ("region", "r2", "r2"),
        ("site", "B", "r1"), ("site", "C", "r1"), ("site", "A", "r2")]
    assert t["n"].tolist() == [4, 2, 2, 2, 0, 2]
    rows = t.set_index("name")
    assert rows.loc["all", "rmse_k"] == pytest.approx(np.sqrt((1 + 1 + 0 + 4) / 4))  # C's cloudy 20 K left out
    assert rows.loc["all", "bias_k"] == pytest.approx(0.5) and rows.loc["B", "bias_k"] == pytest.approx(1.0)
    assert rows.loc["A", "within_1sigma"] == pytest.approx(1.0) and rows.loc["B", "within_1sigma"] == pytest.approx(0.5)
    assert np.isnan(rows.loc["C", "rmse_k"])  # a site without usable matchups: n 0 and NaN figures


# --------------------------------------------------------------------------------------------- io.stores
@pytest.mark.parametrize(("name", "zone"), [("50N_0004_0012", "50N"), ("47N_0000_0001", "47N"), ("7S_0001_0002", "7S"),
                                            ("g", "g"), ("50N_mosaic", "50N_mosaic")])
def test_zone_of_store_is_the_zone_of_a_tile_name_and_the_name_otherwise(name: str, zone: str) -> None:
    assert zone_of_store(name) == zone


# --------------------------------------------------------------------------------------------- testbed.ancillary
def test_era5_fields_are_a_quarter_degree_grid_of_the_regions_water_vapour() -> None:
    clim = RegionClimate.make(REGIONS["heihe"], 1)
    times = np.arange(np.datetime64("2022-07-01T00:00"), np.datetime64("2022-07-03T00:00"),
                      np.timedelta64(1, "h")).astype("datetime64[s]")
    tcwv, lats, lons = era5_fields(clim, times, seed=4)
    assert tcwv.shape == (48, 9, 9) and tcwv.dtype == np.float32
    assert np.allclose(np.diff(lats), -0.25) and np.allclose(np.diff(lons), 0.25)  # north to south, west to east
    r = REGIONS["heihe"]
    assert lats[4] == np.round(r.centre_lat * 4) / 4 and lons[4] == np.round(r.centre_lon * 4) / 4
    # kg m-2 = 10 x g cm-2: around the climate's column, within the random error's spread (12 %, log-normal)
    ratio = tcwv[:, 4, 4] / (10.0 * clim.wvc(times) * (1.0 + r.era5_wvc_bias))
    assert np.exp(np.abs(np.log(ratio))).max() < np.exp(4 * ERROR_BUDGET["era5_random_fraction"])
    again, _, _ = era5_fields(clim, times, seed=4)
    np.testing.assert_array_equal(tcwv, again)  # seeded: the same files every build
    other, _, _ = era5_fields(clim, times, seed=5)
    assert not np.array_equal(tcwv, other)


def test_ged_arrays_are_deterministic_and_near_the_mean_state() -> None:
    lsc = build_landscape(REGIONS["huailai"], 640, 2)  # the smallest grid that holds the sites
    a, b = ged_arrays(lsc, 40, 115, seed=1, n=100), ged_arrays(lsc, 40, 115, seed=1, n=100)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["emis_mean"].shape == (5, 100, 100) and a["lat"].shape == a["lon"].shape == (100, 100)
    assert 0.8 < a["emis_mean"].min() and a["emis_mean"].max() <= 1.0  # ASTER bands 10-14, clipped at 1
    assert a["emis_mean"].mean() == pytest.approx(0.961, abs=0.005)  # measured: 0.9607
    # ASTER GED's stated uncertainty is in the file: 0.010-0.013 here
    assert 0.0099 < a["emis_sdev"].min() and a["emis_sdev"].max() < 0.0131
    # pixel centres of the 1 deg tile whose north-west corner is (41 N, 115 E)
    assert a["lat"][0, 0] == pytest.approx(40.995) and a["lon"][0, 0] == pytest.approx(115.005)
    assert set(np.unique(a["land_water"])) <= {1, 2}


# --------------------------------------------------------------------------------------------- io.era5: GRIB
def test_grib_era5_through_cfgrib_or_the_one_line_refusal_without_it(tmp_path: Path) -> None:
    """A GRIB file is recognised by its magic bytes. Reading one needs cfgrib and the ecCodes library, an optional
    extra not installed here (offline, no ecCodes binary): so the refusal is pinned, and with cfgrib present the
    test writes no GRIB to read (making one needs ecCodes' encoder) and is skipped."""
    if importlib.util.find_spec("cfgrib") is not None:
        pytest.skip("cfgrib is installed: the GRIB read needs a GRIB file, which this offline suite cannot make "
                    "without ecCodes' encoder")
    grib = tmp_path / "era5.grib"
    grib.write_bytes(b"GRIB" + bytes(200))
    with pytest.raises(ValueError, match=r"era5\.grib: GRIB file, but the optional package cfgrib is not installed"):
        open_era5_tcwv(grib)
