"""The testbed's writers produce the real formats: read back with rasterio, xarray, h5py and pandas."""

from __future__ import annotations

import json
import re
import tarfile
import xml.etree.ElementTree as ET
from importlib import resources

import h5py
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from affine import Affine

from sftl_dask.testbed import formats
from sftl_dask.testbed.formats import (
    ged_tile_name,
    vimi_product_name,
    write_era5_tcwv,
    write_ged_tile,
    write_insitu_csv,
    write_sites_csv,
    write_vimi_archive,
)

SPEC = json.loads(resources.files("sftl_dask.data").joinpath("vimi_l1.json").read_text())
STEM = "GF5B_VIMI_E115.8_N40.3_20220612_012345_L10000123456"
TRANSFORM = Affine(40.0, 0.0, 400_000.0, 0.0, -40.0, 4_470_000.0)
H, W = 5, 7


def _meta() -> dict:
    return {
        "ReceiveStation": "MYC",
        "StartTime": "2022-06-12 02:50:56.000", "EndTime": "2022-06-12 02:51:04.000",
        "CenterTime": np.datetime64("2022-06-12T02:51:00.123456"),
        "SolarAzimuth": 135.25, "SolarZenith": 25.5, "SatelliteAzimuth": 98.5, "SatelliteZenith": 3.25,
        "CloudPercent": 12.5,
        "TopLeftLatitude": 40.4, "TopLeftLongitude": 115.6, "TopRightLatitude": 40.4, "TopRightLongitude": 116.0,
        "BottomRightLatitude": 40.1, "BottomRightLongitude": 116.0, "BottomLeftLatitude": 40.1,
        "BottomLeftLongitude": 115.6,
        "GAINS": [0.123456789] * 6 + [0.001, 0.0005, 0.0042, 0.0043, 0.0044, 0.0045],
        "OFFSETS": [0.0] * 8 + [-0.1] * 4,
        "ESUN": [1970.0, 1843.0, 1555.0, 1047.0, 227.0, 80.7] + [0.0] * 6,
        "EarthSunDistance": 1.0156,
    }


def _dn(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vnir = rng.integers(0, 4096, (6, 2 * H, 2 * W)).astype(np.uint16)
    tir = rng.integers(0, 4096, (6, H, W)).astype(np.uint16)
    return vnir, tir


# --------------------------------------------------------------------------------------------- VIMI
def test_product_name_follows_the_json_pattern():
    stem = vimi_product_name(115.79, 40.349, np.datetime64("2022-06-12T02:51"), 12345, 123456)
    assert stem == STEM
    assert vimi_product_name(-37.04, -1.96, "2021-12-01", 7, 1) == "GF5B_VIMI_W37.0_S2.0_20211201_000007_L10000000001"
    assert re.match(SPEC["archive"]["stem_regex"], stem)
    assert SPEC["archive"]["example"] == STEM + ".tar"


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"lon": 200.0}, "lon"), ({"lat": -91.0}, "lat"), ({"orbit": 1_000_000}, "orbit"),
    ({"product_id": 1.5}, "product_id"), ({"date": "not a date"}, "date"),
])
def test_product_name_rejects_bad_arguments(kwargs, name):
    args = {"lon": 115.8, "lat": 40.3, "date": "2022-06-12", "orbit": 1, "product_id": 1, **kwargs}
    with pytest.raises(ValueError, match=name):
        vimi_product_name(**args)


def test_archive_holds_exactly_the_three_named_members(tmp_path):
    vnir, tir = _dn()
    path = write_vimi_archive(tmp_path, STEM, vnir, tir, crs="EPSG:32650", transform=TRANSFORM, meta=_meta())
    assert path == tmp_path / f"{STEM}.tar"
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert all(m.isfile() for m in tar.getmembers())
    assert sorted(names) == sorted([f"{STEM}_B1_B6.tif", f"{STEM}_B7_B12.tif", f"{STEM}.xml"])
    assert [p.name for p in tmp_path.iterdir()] == [f"{STEM}.tar"]  # no temporaries left


def test_geotiffs_read_back_through_vsitar(tmp_path):
    vnir, tir = _dn(1)
    vnir[:, 0, 0] = 0  # nodata DN
    path = write_vimi_archive(tmp_path, STEM, vnir, tir, crs="EPSG:32650", transform=TRANSFORM, meta=_meta())
    for member, dn, transform, first in ((f"{STEM}_B1_B6.tif", vnir, TRANSFORM @ Affine.scale(0.5), 1),
                                         (f"{STEM}_B7_B12.tif", tir, TRANSFORM, 7)):
        with rasterio.open(f"/vsitar/{path}/{member}") as src:
            assert src.count == 6
            assert src.dtypes == ("uint16",) * 6
            assert src.crs.to_epsg() == 32650
            assert src.transform == transform
            assert src.nodata == 0
            assert src.compression.name.lower() == "deflate"
            assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
            assert src.descriptions == tuple(f"B{i}" for i in range(first, first + 6))
            np.testing.assert_array_equal(src.read(), dn)
    # the 20 m grid covers exactly the 40 m grid
    assert (TRANSFORM @ Affine.scale(0.5)) @ (2 * W, 2 * H) == TRANSFORM @ (W, H)


def test_band_table_matches_the_files(tmp_path):
    bands = SPEC["bands"]
    assert [b["name"] for b in bands] == [f"B{i}" for i in range(1, 13)]
    assert [b["centre_um"] for b in bands if b["kind"] == "thermal"] == [8.20, 8.63, 10.80, 11.95]
    for ft in ("B1_B6", "B7_B12"):
        assert [b["band_index"] for b in bands if b["file_type"] == ft] == [1, 2, 3, 4, 5, 6]
    assert ".tiff" in SPEC["file_types"]["B7_B12"]["extensions"]


def test_xml_has_every_field_with_its_value(tmp_path):
    vnir, tir = _dn()
    meta = _meta()
    path = write_vimi_archive(tmp_path, STEM, vnir, tir, crs="EPSG:32650", transform=TRANSFORM, meta=meta)
    with tarfile.open(path) as tar:
        raw = tar.extractfile(f"{STEM}.xml").read()
    assert raw.startswith(b"<?xml")
    root = ET.fromstring(raw)
    assert root.tag == SPEC["xml"]["root"] == "ProductMetaData"
    fields = [f["name"] for f in SPEC["xml"]["fields"]]
    assert [child.tag for child in root] == fields  # all fields, in the json's order
    text = {child.tag: child.text for child in root}
    assert text["SatelliteID"] == "GF5B" and text["SensorID"] == "VIMI" and text["ProductLevel"] == "L1"
    assert int(text["ProductID"]) == 123456 and int(text["OrbitID"]) == 12345
    assert text["ReceiveStation"] == "MYC"
    assert text["CenterTime"] == "2022-06-12 02:51:00.123"  # milliseconds, UTC
    assert text["StartTime"] == "2022-06-12 02:50:56.000"
    for name in ("SolarAzimuth", "SolarZenith", "SatelliteAzimuth", "SatelliteZenith", "CloudPercent",
                 "TopLeftLatitude", "BottomLeftLongitude", "EarthSunDistance"):
        assert float(text[name]) == meta[name]
    assert float(text["SatelliteAltitude"]) == 705.0
    assert text["Bands"] == ",".join(f"B{i}" for i in range(1, 13))
    assert [float(v) for v in text["CentralWavelength"].split(",")] == [b["centre_um"] for b in SPEC["bands"]]
    for name in ("GAINS", "OFFSETS", "ESUN"):
        assert [float(v) for v in text[name].split(",")] == meta[name]  # exact round trip
    assert text["RadianceUnit"] == "W m-2 sr-1 um-1" and int(text["DNBits"]) == 12


def test_optional_xml_field_may_be_left_out(tmp_path):
    vnir, tir = _dn()
    meta = _meta()
    del meta["ReceiveStation"]
    path = write_vimi_archive(tmp_path, STEM, vnir, tir, crs="EPSG:32650", transform=TRANSFORM, meta=meta)
    with tarfile.open(path) as tar:
        root = ET.fromstring(tar.extractfile(f"{STEM}.xml").read())
    assert root.find("ReceiveStation") is None and root.find("CloudPercent") is not None


@pytest.mark.parametrize(("change", "name"), [
    ({"stem": "GF5B_VIMI_bad"}, "stem"),
    ({"dn_b7_b12": np.zeros((6, H, W), np.int16)}, "dn_b7_b12"),
    ({"dn_b7_b12": np.zeros((4, H, W), np.uint16)}, "dn_b7_b12"),
    ({"dn_b1_b6": np.zeros((6, H, W), np.uint16)}, "dn_b1_b6"),
    ({"dn_b7_b12": np.full((6, H, W), 5000, np.uint16)}, "dn_b7_b12"),
    ({"crs": "EPSG:999999"}, "crs"),
    ({"transform": (40.0, 0.0, 0.0, 0.0, -40.0, 0.0)}, "transform"),
    ({"transform": Affine(40.0, 0.0, 0.0, 0.0, 40.0, 0.0)}, "transform"),
    ({"meta": {**_meta(), "CloudPercent": 120.0}}, "CloudPercent"),
    ({"meta": {**_meta(), "GAINS": [0.1] * 11}}, "GAINS"),
    ({"meta": {**_meta(), "Gains": [0.1] * 12}}, "Gains"),
    ({"meta": {k: v for k, v in _meta().items() if k != "SolarZenith"}}, "SolarZenith"),
    ({"meta": {**_meta(), "OrbitID": 999}}, "OrbitID"),
    ({"meta": {**_meta(), "EndTime": "2022-06-12 02:50:00.000"}}, "EndTime"),
])
def test_archive_rejects_bad_arguments_and_writes_nothing(tmp_path, change, name):
    vnir, tir = _dn()
    args = {"stem": STEM, "dn_b1_b6": vnir, "dn_b7_b12": tir, "crs": "EPSG:32650", "transform": TRANSFORM,
            "meta": _meta(), **change}
    with pytest.raises(ValueError, match=name):
        write_vimi_archive(tmp_path, args.pop("stem"), args.pop("dn_b1_b6"), args.pop("dn_b7_b12"), **args)
    assert list(tmp_path.iterdir()) == []


def test_archive_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    vnir, tir = _dn()

    def broken_add(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "add", broken_add)
    with pytest.raises(OSError, match="disk full"):
        write_vimi_archive(tmp_path, STEM, vnir, tir, crs="EPSG:32650", transform=TRANSFORM, meta=_meta())
    assert list(tmp_path.iterdir()) == []


def test_archive_bytes_are_deterministic(tmp_path):
    vnir, tir = _dn()
    a = write_vimi_archive(tmp_path / "a", STEM, vnir, tir, crs="EPSG:32650", transform=TRANSFORM, meta=_meta())
    b = write_vimi_archive(tmp_path / "b", STEM, vnir, tir, crs="EPSG:32650", transform=TRANSFORM, meta=_meta())
    assert a.read_bytes() == b.read_bytes()


# --------------------------------------------------------------------------------------------- ERA5
def _era5_inputs():
    rng = np.random.default_rng(3)
    times = np.arange(np.datetime64("2021-07-01T00", "ns"), np.datetime64("2021-07-01T06", "ns"),
                      np.timedelta64(1, "h"))
    lats = np.array([40.0, 40.25, 40.5])  # south -> north on purpose: written north -> south
    lons = np.array([115.5, 115.75, 116.0, 116.25])
    tcwv = rng.uniform(5.0, 45.0, (times.size, lats.size, lons.size))
    tcwv[2, 1, 1] = np.nan
    return tcwv, times, lats, lons


def test_era5_new_style_is_cds_like(tmp_path):
    tcwv, times, lats, lons = _era5_inputs()
    path = write_era5_tcwv(tmp_path / "new.nc", tcwv, times, lats, lons, style="new")
    assert path.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"  # NetCDF4 / HDF5
    with xr.open_dataset(path) as ds:
        assert ds["tcwv"].dims == ("valid_time", "latitude", "longitude")
        assert ds["tcwv"].dtype == np.float32
        assert ds["tcwv"].attrs["units"] == "kg m**-2"
        assert ds["tcwv"].attrs["long_name"] == "Total column vertically-integrated water vapour"
        assert ds["tcwv"].attrs["standard_name"] == "lwe_thickness_of_atmosphere_mass_content_of_water_vapor"
        assert ds.attrs["Conventions"] == "CF-1.7"
        assert ds.attrs["institution"] == "European Centre for Medium-Range Weather Forecasts"
        assert np.all(np.diff(ds.latitude.values) < 0)
        np.testing.assert_array_equal(ds.latitude.values, lats[::-1])
        np.testing.assert_array_equal(ds.longitude.values, lons)
        np.testing.assert_array_equal(ds.valid_time.values, times)
        np.testing.assert_allclose(ds["tcwv"].values, tcwv[:, ::-1, :], rtol=1e-6)  # float32 precision
        assert np.isnan(ds["tcwv"].values[2, 1, 1])


def test_era5_old_style_is_packed_int16(tmp_path):
    tcwv, times, lats, lons = _era5_inputs()
    path = write_era5_tcwv(tmp_path / "old.nc", tcwv, times, lats, lons + 180.0, style="old")
    assert path.read_bytes()[:4] == b"CDF\x02"  # NetCDF3 64-bit offset, as grib_to_netcdf wrote
    with xr.open_dataset(path, mask_and_scale=False, decode_times=False) as raw:
        var = raw["tcwv"]
        assert var.dims == ("time", "latitude", "longitude") and var.dtype == np.int16
        assert var.attrs["_FillValue"] == -32767 and var.attrs["missing_value"] == -32767
        scale = float(var.attrs["scale_factor"])
        assert raw["time"].attrs["units"] == "hours since 1900-01-01 00:00:00.0"
        assert raw["time"].attrs["calendar"] == "gregorian"
        hours = (np.datetime64("2021-07-01T00", "h") - np.datetime64("1900-01-01", "h")).astype(int)
        assert raw["time"].dtype == np.int32 and int(raw["time"][0]) == hours
        assert var.values[2, 1, 1] == -32767
        assert np.abs(var.values[var.values != -32767]).max() <= 32766
    with xr.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.time.values, times)
        np.testing.assert_array_equal(ds.latitude.values, lats[::-1])
        np.testing.assert_array_equal(ds.longitude.values, lons + 180.0)  # 0..360 kept as given
        got, want = ds["tcwv"].values, tcwv[:, ::-1, :]
        assert np.isnan(got[2, 1, 1])
        ok = np.isfinite(want)
        assert np.abs(got[ok] - want[ok]).max() <= scale / 2 + 1e-9


@pytest.mark.parametrize(("change", "name"), [
    ({"tcwv_kg_m2": np.zeros((6, 3))}, "tcwv_kg_m2"),
    ({"times": np.arange(5)}, "times"),
    ({"lats": np.array([40.0, 40.5, 40.25])}, "lats"),
    ({"lons": np.array([116.0, 115.5, 115.75, 116.25])}, "lons"),
    ({"tcwv_kg_m2": -np.ones((6, 3, 4))}, "tcwv_kg_m2"),
    ({"style": "grib"}, "style"),
])
def test_era5_rejects_bad_arguments(tmp_path, change, name):
    tcwv, times, lats, lons = _era5_inputs()
    args = {"tcwv_kg_m2": tcwv, "times": times, "lats": lats, "lons": lons, "style": "new", **change}
    with pytest.raises(ValueError, match=name):
        write_era5_tcwv(tmp_path / "x.nc", **args)
    assert list(tmp_path.iterdir()) == []


def test_era5_old_style_needs_whole_hours(tmp_path):
    tcwv, times, lats, lons = _era5_inputs()
    with pytest.raises(ValueError, match="times"):
        write_era5_tcwv(tmp_path / "x.nc", tcwv, times + np.timedelta64(30, "m"), lats, lons, style="old")


def test_era5_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    tcwv, times, lats, lons = _era5_inputs()
    real = xr.Dataset.to_netcdf

    def half_written(self, path, **kwargs):
        real(self, path, **kwargs)
        raise OSError("interrupted")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", half_written)
    with pytest.raises(OSError, match="interrupted"):
        write_era5_tcwv(tmp_path / "x.nc", tcwv, times, lats, lons)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- GED
def _ged_inputs(n: int = 4):
    rng = np.random.default_rng(5)
    centres = (np.arange(n) + 0.5) / n
    lon, lat = np.meshgrid(115.0 + centres, 41.0 - centres)
    emis = rng.uniform(0.70, 0.99, (5, n, n))
    emis[0, 0, 0] = np.nan
    return {
        "emis_mean": emis, "emis_sdev": rng.uniform(0.0, 0.03, (5, n, n)),
        "ndvi_mean": rng.uniform(-0.2, 0.9, (n, n)), "ndvi_sdev": rng.uniform(0.0, 0.2, (n, n)),
        "land_water": rng.integers(0, 2, (n, n)), "lat": lat, "lon": lon,
        "elevation_m": rng.uniform(400.0, 600.0, (n, n)),
    }


def test_ged_tile_name_uses_the_north_west_corner_and_signed_padding():
    assert ged_tile_name(40, 115) == "AG100.v003.40.115.0001.h5"
    assert ged_tile_name(-1, -37) == "AG100.v003.-01.-037.0001.h5"
    assert ged_tile_name(39, 5) == "AG100.v003.39.005.0001.h5"


def test_ged_tile_reads_back_with_h5py(tmp_path):
    g = _ged_inputs()
    g["ndvi_mean"][1, 2] = np.nan
    path = write_ged_tile(tmp_path, 41, 115, **g)
    assert path.name == "AG100.v003.41.115.0001.h5"
    with h5py.File(path, "r") as h5:
        for p in ("Emissivity/Mean", "Emissivity/SDev", "NDVI/Mean", "NDVI/SDev", "Geolocation/Latitude",
                  "Geolocation/Longitude", "Land Water Map/LWmap", "ASTER GDEM/ASTGDEM"):
            assert p in h5, p
        em = h5["Emissivity/Mean"]
        assert em.dtype == np.int16 and em.shape == (5, 4, 4) and em.compression == "gzip"
        assert em.attrs["scale_factor"] == 0.001 and em.attrs["_FillValue"] == -9999
        assert {"add_offset", "units", "long_name"} <= set(em.attrs)
        stored = em[()]
        assert stored[0, 0, 0] == -9999
        got = stored * em.attrs["scale_factor"] + em.attrs["add_offset"]
        ok = np.isfinite(g["emis_mean"])
        assert np.abs(got[ok] - g["emis_mean"][ok]).max() <= 0.0005 + 1e-12
        sd = h5["Emissivity/SDev"][()] * 0.001
        assert np.abs(sd - g["emis_sdev"]).max() <= 0.0005 + 1e-12
        nd = h5["NDVI/Mean"]
        assert nd.dtype == np.int16 and nd.attrs["scale_factor"] == 0.01 and nd[1, 2] == -9999
        ok = np.isfinite(g["ndvi_mean"])
        assert np.abs(nd[()][ok] * 0.01 - g["ndvi_mean"][ok]).max() <= 0.005 + 1e-12
        assert np.abs(h5["NDVI/SDev"][()] * 0.01 - g["ndvi_sdev"]).max() <= 0.005 + 1e-12
        np.testing.assert_array_equal(h5["Geolocation/Latitude"][()], g["lat"])
        np.testing.assert_array_equal(h5["Geolocation/Longitude"][()], g["lon"])
        assert h5["Land Water Map/LWmap"].dtype == np.uint8
        np.testing.assert_array_equal(h5["Land Water Map/LWmap"][()], g["land_water"])
        dem = h5["ASTER GDEM/ASTGDEM"]
        assert dem.dtype == np.int16 and np.abs(dem[()] - g["elevation_m"]).max() <= 0.5


@pytest.mark.parametrize(("change", "name"), [
    ({"emis_mean": np.zeros((4, 4, 4))}, "emis_mean"),
    ({"ndvi_sdev": np.zeros((3, 4))}, "ndvi_sdev"),
    ({"land_water": np.zeros((4, 4))}, "land_water"),
    ({"land_water": np.full((4, 4), 300)}, "land_water"),
    ({"ndvi_mean": np.full((4, 4), 400.0)}, "ndvi_mean"),
    ({"lat": np.full((4, 4), 45.0)}, "lat"),
    ({"lon0": 200}, "lon0"),
])
def test_ged_rejects_bad_arguments(tmp_path, change, name):
    args = {"lat0": 41, "lon0": 115, **_ged_inputs(), **change}
    with pytest.raises(ValueError, match=name):
        write_ged_tile(tmp_path, **args)
    assert list(tmp_path.iterdir()) == []


def test_ged_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    real = h5py.Group.create_dataset
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("interrupted")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="interrupted"):
        write_ged_tile(tmp_path, 41, 115, **_ged_inputs())
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------- in situ
SITE = {"id": "HL01", "name": "Huailai station", "region": "huailai", "lon": 115.788, "lat": 40.3491,
        "elevation_m": 480.0, "land_cover": "cropland", "instrument": "CNR1", "sensor_id": "CNR1-1000",
        "broadband_emissivity": 0.9745, "extra": "ignored"}


def _insitu_inputs(n: int = 12):
    rng = np.random.default_rng(7)
    t = np.datetime64("2022-06-12T10:00", "ns") + np.arange(n) * np.timedelta64(10, "m")
    up = rng.uniform(380.0, 520.0, n)
    down = rng.uniform(250.0, 400.0, n)
    up[3] = np.nan
    down[5] = np.nan
    up[9] = -999.0  # logger junk on a row flagged bad is written as it is
    flags = np.zeros(n, dtype=np.int64)
    flags[[3, 5, 9]] = 2
    flags[7] = 1
    return t, up, down, flags


def test_insitu_csv_round_trips_with_pandas(tmp_path):
    t, up, down, flags = _insitu_inputs()
    path = write_insitu_csv(tmp_path / "HL01.csv", SITE, t, up, down, flags)
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert "# broadband_emissivity: 0.9745" in header
    assert "# timezone: UTC+8 (Beijing time)" in header
    assert "# id: HL01" in header and "# sensor_id: CNR1-1000" in header and "# lon: 115.788" in header
    df = pd.read_csv(path, comment="#")
    assert list(df.columns) == ["TIMESTAMP", "ULR_Cor", "DLR_Cor", "QC_flag", "sensor_id"]
    assert df["TIMESTAMP"].iloc[0] == "2022-06-12 10:00:00"
    np.testing.assert_array_equal(pd.to_datetime(df["TIMESTAMP"]).values, t)
    for col, want in (("ULR_Cor", up), ("DLR_Cor", down)):
        got = df[col].to_numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = np.isfinite(want)
        assert np.abs(got[ok] - want[ok]).max() <= 0.005 + 1e-9
    np.testing.assert_array_equal(df["QC_flag"].to_numpy(), flags)
    assert df["ULR_Cor"].iloc[9] == -999.0
    assert set(df["sensor_id"]) == {"CNR1-1000"}
    # gaps are empty cells, not "nan"
    assert "nan" not in path.read_text().lower().replace("# ", "")


@pytest.mark.parametrize(("change", "name"), [
    ({"site": {k: v for k, v in SITE.items() if k != "broadband_emissivity"}}, "broadband_emissivity"),
    ({"site": {**SITE, "lat": 95.0}}, "lat"),
    ({"flags": np.full(12, 3)}, "flags"),
    ({"flags": np.zeros(12)}, "flags"),
    ({"lw_up_w_m2": np.zeros(11)}, "lw_up_w_m2"),
    ({"lw_down_w_m2": -np.ones(12)}, "lw_down_w_m2"),
    ({"lw_up_w_m2": np.full(12, np.inf)}, "lw_up_w_m2"),
    ({"times_beijing": np.zeros(12, dtype="datetime64[ns]")}, "times_beijing"),
])
def test_insitu_rejects_bad_arguments(tmp_path, change, name):
    t, up, down, flags = _insitu_inputs()
    args = {"site": SITE, "times_beijing": t, "lw_up_w_m2": up, "lw_down_w_m2": down, "flags": flags, **change}
    with pytest.raises(ValueError, match=name):
        write_insitu_csv(tmp_path / "x.csv", **args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("quoted", [True, False])
def test_insitu_table_is_byte_for_byte_what_pandas_to_csv_writes(tmp_path, quoted):
    """The table is formatted column by column (speed); the bytes are those of pandas' to_csv with 2 decimals:
    rounding at the half, -0.00, gaps, logger junk, large values, and sensor ids the csv module must quote."""
    t, up, down, flags = _insitu_inputs()
    up[[0, 1, 2, 4]] = [0.005, 0.015, 1234567.125, -0.0]
    down[[0, 1]] = [2.675, 1e-9]
    ids = ["CNR1-1000", 'CNR1,"A"' if quoted else "CNR1-A", "'quoted'", "x", *["CNR4-7"] * 8]
    path = write_insitu_csv(tmp_path / "HL01.csv", SITE, t, up, down, flags, sensor_ids=ids)
    want = pd.DataFrame({"TIMESTAMP": pd.DatetimeIndex(t).strftime("%Y-%m-%d %H:%M:%S"), "ULR_Cor": up,
                         "DLR_Cor": down, "QC_flag": flags, "sensor_id": ids}
                        ).to_csv(index=False, float_format="%.2f", na_rep="", lineterminator="\n")
    text = path.read_text()
    assert text[text.index("TIMESTAMP,"):] == want
    assert ('"CNR1,""A"""' in want) == quoted and ",-0.00," in want and ",0.01," in want  # the cases are there
    none = write_insitu_csv(tmp_path / "HL02.csv", SITE, t[:0], up[:0], down[:0], flags[:0], sensor_ids=[])
    assert none.read_text().endswith("\nTIMESTAMP,ULR_Cor,DLR_Cor,QC_flag,sensor_id\n")  # no rows: the header


def test_insitu_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    t, up, down, flags = _insitu_inputs()

    class Broken:
        def __init__(self, *args, **kwargs):
            pass

        def writerow(self, row):
            pass

        def writerows(self, rows):
            raise OSError("interrupted")

    monkeypatch.setattr(formats.csv, "writer", Broken)
    with pytest.raises(OSError, match="interrupted"):  # an id to quote: the rows go through the csv writer
        write_insitu_csv(tmp_path / "x.csv", SITE, t, up, down, flags, sensor_ids=["a,b"] * len(t))
    assert list(tmp_path.iterdir()) == []


def test_sites_csv_has_the_columns(tmp_path):
    other = {**SITE, "id": "HH01", "name": "Daman", "region": "heihe", "broadband_emissivity": 0.968}
    path = write_sites_csv(tmp_path / "sites.csv", [SITE, other])
    df = pd.read_csv(path)
    assert list(df.columns) == list(formats.SITE_COLUMNS)
    assert list(df["id"]) == ["HL01", "HH01"]
    assert df.loc[0, "lon"] == 115.788 and df.loc[1, "broadband_emissivity"] == 0.968
    with pytest.raises(ValueError, match=r"sites\[1\]\['instrument'\]"):
        write_sites_csv(tmp_path / "bad.csv", [SITE, {k: v for k, v in other.items() if k != "instrument"}])
    with pytest.raises(ValueError, match="repeated"):
        write_sites_csv(tmp_path / "bad.csv", [SITE, SITE])
    assert not (tmp_path / "bad.csv").exists()
