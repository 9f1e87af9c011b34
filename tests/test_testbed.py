"""The testbed world: real formats that open as products do, and physical consistency with its truth."""

from __future__ import annotations

import glob
import json
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr

from sftl_dask.physics.channels import THERMAL_NAMES
from sftl_dask.physics.insitu import radiometer_lst
from sftl_dask.physics.planck import band_planck
from sftl_dask.testbed.build import _covered, _shifted, build_testbed, scene_schedule
from sftl_dask.testbed.scene import synthesize_scene
from sftl_dask.testbed.world import REGIONS, RegionClimate, build_landscape


@pytest.fixture(scope="module")
def tb(small_testbed: Path) -> Path:
    """The session's small testbed (2 scenes per region, 640 px, seed 3, map layout): these tests only read it, and
    building one more of the same size cost ~25 s of every run."""
    return small_testbed


def _xml(tar: Path) -> dict[str, str]:
    with tarfile.open(tar) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(".xml"))
        root = ET.fromstring(tf.extractfile(member).read())
    return {child.tag: (child.text or "") for child in root}


def test_layout_has_every_kind_of_file(tb):
    assert len(glob.glob(f"{tb}/archives/*.tar")) == 4
    assert glob.glob(f"{tb}/era5/*.nc") and glob.glob(f"{tb}/ged/AG100.v003.*.0001.h5")
    assert len(glob.glob(f"{tb}/insitu/*.csv")) == 18
    sites = pd.read_csv(tb / "sites.csv")
    assert sites["region"].value_counts().to_dict() == {"huailai": 15, "heihe": 3}
    assert (tb / "truth" / "heihe.zarr").exists() and json.loads((tb / "testbed.json").read_text())["seed"] == 3
    assert not list(tb.parent.glob(".*tmp*")), "temporary build folder left behind"


def test_archives_open_like_products_with_rasterio(tb):
    for tar in sorted(tb.glob("archives/*.tar")):
        names = tarfile.open(tar).getnames()
        assert sorted(n.rsplit("_", 2)[-2] + "_" + n.rsplit("_", 2)[-1] for n in names if n.endswith(".tif")) == [
            "B1_B6.tif", "B7_B12.tif"]
        tir = next(n for n in names if n.endswith("_B7_B12.tif"))
        vnir = next(n for n in names if n.endswith("_B1_B6.tif"))
        with rasterio.open(f"/vsitar/{tar}/{tir}") as a, rasterio.open(f"/vsitar/{tar}/{vnir}") as b:
            assert a.count == 6 and b.count == 6 and a.crs is not None and a.crs == b.crs
            assert a.res == (40.0, 40.0) and b.res == (20.0, 20.0) and b.width == 2 * a.width
            assert a.dtypes[0] == "uint16"


def test_bt_from_dn_and_xml_gains_equals_sensor_bt_within_quantisation(tb):
    tar = sorted(tb.glob("archives/*.tar"))[0]
    meta = _xml(tar)
    gains = [float(v) for v in meta["GAINS"].split(",")]
    offsets = [float(v) for v in meta["OFFSETS"].split(",")]
    tir = next(n for n in tarfile.open(tar).getnames() if n.endswith("_B7_B12.tif"))
    with rasterio.open(f"/vsitar/{tar}/{tir}") as src:
        dn = src.read()
    region = "heihe" if "E100" in tar.name else "huailai"
    truth = xr.open_zarr(tb / "truth" / f"{region}.zarr")
    t = np.datetime64(meta["CenterTime"].replace(" ", "T"))
    sel = truth.sel(time=t, method="nearest")
    assert abs(sel.time.values - t) < np.timedelta64(1, "s")
    for c, name in enumerate(THERMAL_NAMES):
        bp = band_planck()[c]
        rad = gains[8 + c] * dn[2 + c].astype(float) + offsets[8 + c]
        ok = (dn[2 + c] > 1) & (dn[2 + c] < 4095) & np.isfinite(sel[name].values)
        bt = bp.brightness_temperature(rad[ok])
        step_k = gains[8 + c] / bp.derivative(bt)  # one DN in K
        diff = np.abs(bt - sel[name].values[ok])
        assert np.all(diff <= 0.5 * step_k + 1e-3), (name, float(diff.max()), float(step_k.max()))


def test_insitu_lst_from_longwave_matches_pixel_truth_within_stated_errors(tb):
    truth = pd.read_csv(tb / "truth" / "site_overpass_truth.csv", parse_dates=["time_utc"])
    sites = pd.read_csv(tb / "sites.csv").set_index("id")
    diffs = []
    for _, row in truth.iterrows():
        df = pd.read_csv(tb / "insitu" / f"{row['site']}.csv", comment="#", parse_dates=["TIMESTAMP"])
        t_bj = row["time_utc"] + pd.Timedelta(hours=8)
        win = df[(df["TIMESTAMP"] - t_bj).abs() <= pd.Timedelta(minutes=10)]
        win = win[(win["QC_flag"] == 0) & win["ULR_Cor"].notna()]
        if win.empty:
            continue
        lst = radiometer_lst(win["ULR_Cor"], win["DLR_Cor"], sites.loc[row["site"], "broadband_emissivity"])
        diffs.append(float(np.mean(lst)) - row["lst_pixel_k"])
    diffs = np.asarray(diffs)
    assert len(diffs) >= 20
    # footprint representativeness (0.8-2.5 K random, <= 1.2 K site offset) + radiometer noise (~0.4 K)
    assert abs(diffs.mean()) < 1.5 and 0.5 < diffs.std() < 3.5


def test_heihe_is_drier_higher_and_lower_in_8_2_um_emissivity_than_huailai(tb):
    hh = xr.open_zarr(tb / "truth" / "heihe.zarr")
    hl = xr.open_zarr(tb / "truth" / "huailai.zarr")
    assert float(hh["wvc"].mean()) < float(hl["wvc"].mean())
    e_hh = hh["emis_08_20"].values[np.isfinite(hh["emis_08_20"].values)]
    e_hl = hl["emis_08_20"].values[np.isfinite(hl["emis_08_20"].values)]
    assert np.percentile(e_hh, 10) < np.percentile(e_hl, 10) - 0.01
    assert np.mean(e_hh < 0.955) > 0.1 and np.mean(e_hh < 0.955) > 5 * np.mean(e_hl < 0.955)
    lsc_hh = build_landscape(REGIONS["heihe"], 640, 5)
    lsc_hl = build_landscape(REGIONS["huailai"], 640, 5)
    assert lsc_hh.elevation_m.mean() > lsc_hl.elevation_m.mean() + 900


def test_heihe_water_vapour_distribution_is_drier_over_the_seasons():
    hh = RegionClimate.make(REGIONS["heihe"], 1)
    hl = RegionClimate.make(REGIONS["huailai"], 1)
    t = np.arange(np.datetime64("2022-01-01T04:00"), np.datetime64("2023-01-01T04:00"),
                  np.timedelta64(1, "D")).astype("datetime64[s]")
    assert np.median(hh.wvc(t)) < 0.7 * np.median(hl.wvc(t))
    assert np.percentile(hl.wvc(t), 90) > 2.5 and np.percentile(hh.wvc(t), 90) < 2.5


def test_era5_and_ged_open_as_cds_and_aster_files(tb):
    for f in sorted(tb.glob("era5/*.nc")):
        ds = xr.open_dataset(f)
        assert "tcwv" in ds and ("valid_time" in ds.dims or "time" in ds.dims)
        assert ds.latitude.values[0] > ds.latitude.values[-1]  # north to south, as CDS
        assert 0.5 < float(ds.tcwv.mean()) < 70  # kg m-2
    for f in sorted(tb.glob("ged/*.h5")):
        with h5py.File(f) as h:
            em = h["/Emissivity/Mean"]
            assert em.shape[0] == 5 and em.dtype == np.int16 and em.attrs["scale_factor"] == pytest.approx(0.001)
            vals = em[:, ::50, ::50] * 0.001
            assert 0.6 < vals.min() and vals.max() <= 1.0
            assert h["/Geolocation/Latitude"].shape == em.shape[1:]


def test_scene_synthesis_is_deterministic_from_seed():
    lsc = build_landscape(REGIONS["heihe"], 640, 9)
    clim = RegionClimate.make(REGIONS["heihe"], 9)
    spec = scene_schedule("heihe", 1, 9)[0]["spec"]
    a = synthesize_scene(spec, lsc, clim)
    b = synthesize_scene(spec, lsc, clim)
    assert np.array_equal(a.dn_b7_b12, b.dn_b7_b12) and np.array_equal(a.lst, b.lst)
    other = scene_schedule("heihe", 1, 10)[0]["spec"]
    assert other.time_utc != spec.time_utc or not np.array_equal(synthesize_scene(other, lsc, clim).lst, a.lst)


def test_schedule_is_daytime_after_launch_with_revisits_of_days_to_weeks():
    sched = scene_schedule("huailai", 25, 2)
    times = np.array([it["spec"].time_utc for it in sched])
    assert times.min() >= np.datetime64("2021-09-07") and times.max() < np.datetime64("2024-01-01")
    local_h = (times - times.astype("datetime64[D]")).astype(float) / 3600 + REGIONS["huailai"].utc_offset_h
    assert np.all((local_h > 10.4) & (local_h < 11.1))
    assert np.diff(times).astype("timedelta64[D]").astype(int).min() >= 4
    assert any(it["spec"].cloud_fraction == 0 for it in sched) and any(it["spec"].cloud_fraction > 0 for it in sched)


def test_partial_scene_shift_moves_data_and_marks_coverage():
    a = np.arange(20, dtype=float).reshape(4, 5)
    s = _shifted(a, (1, -2), np.nan)
    assert s[0, 2] == a[1, 0] and np.isnan(s[:, :2]).all() and np.isnan(s[-1]).all()
    cov = _covered((4, 5), (1, -2))
    assert cov.sum() == 3 * 3 and cov[1, 0] and not cov[0, 0]


def test_existing_output_refused_and_nothing_half_written(tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="already exists"):
        build_testbed(tmp_path / "w", scenes=1)
    with pytest.raises(ValueError, match="scenes"):
        build_testbed(tmp_path / "v", scenes=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_grid_too_small_for_sites_is_a_clear_error():
    with pytest.raises(ValueError, match=r"does not hold site .* use a larger --size"):
        build_landscape(REGIONS["heihe"], 300, 0)
