"""Ancillary readers (ERA5, ASTER GED, in situ) read back what the testbed writers wrote from analytic fields."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pyproj import Transformer

from sftl_dask.io.era5 import era5_wvc_on_grid, open_era5_tcwv
from sftl_dask.io.ged import ged_on_grid, read_ged_tile, vimi_emissivity, write_aster_to_vimi_coefficients
from sftl_dask.io.insitu import insitu_lst, overpass_lst, read_insitu_csv, read_sites
from sftl_dask.physics.emissivity import aster_to_vimi, fit_aster_to_vimi
from sftl_dask.physics.insitu import upwelling_longwave
from sftl_dask.testbed.formats import (
    ged_tile_name,
    write_era5_tcwv,
    write_ged_tile,
    write_insitu_csv,
    write_sites_csv,
)

UTM50 = "EPSG:32650"
T0 = np.datetime64("2022-06-12T00:00", "ns")


def _utm_grid(lon0: float, lat0: float, nx: int, ny: int, step: float, crs: str = UTM50
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-D pixel-centre x (W,), y (H,) of a north-up grid centred on (lon0, lat0), and their lon/lat (H, W)."""
    fwd = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    xc, yc = fwd.transform(lon0, lat0)
    x = xc + (np.arange(nx) - (nx - 1) / 2) * step
    y = yc - (np.arange(ny) - (ny - 1) / 2) * step
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(*np.meshgrid(x, y))
    return x, y, lon, lat


# --------------------------------------------------------------------------------------------- ERA5
def _tcwv(t_h, lat, lon):
    """Analytic total column water vapour (kg m-2), linear in time (h), latitude and longitude (deg)."""
    return 20.0 + 2.0 * (lat - 40.0) - 1.5 * (lon - 116.0) + 0.3 * t_h


def _era5_grid(hours: int = 24, start=T0, lats=None, lons=None):
    times = start + np.arange(hours) * np.timedelta64(1, "h")
    lats = np.arange(42.0, 38.0 - 1e-9, -0.25) if lats is None else lats  # north -> south, as the CDS writes
    lons = np.arange(114.0, 118.0 + 1e-9, 0.25) if lons is None else lons
    t_h = (times - T0) / np.timedelta64(1, "h")
    field = _tcwv(t_h[:, None, None], lats[None, :, None], lons[None, None, :])
    return field, times, lats, lons


@pytest.fixture
def era5_files(tmp_path: Path) -> dict[str, Path]:
    field, times, lats, lons = _era5_grid()
    return {style: write_era5_tcwv(tmp_path / f"era5_{style}.nc", field, times, lats, lons, style=style)
            for style in ("new", "old")}


def test_era5_new_and_old_styles_give_the_same_field_within_packing(era5_files):
    new, old = open_era5_tcwv(era5_files["new"]), open_era5_tcwv(era5_files["old"])
    assert new.dims == old.dims == ("time", "latitude", "longitude")
    assert new.attrs["units"] == "g cm-2"
    assert np.all(np.diff(new.latitude.values) > 0) and np.all(np.diff(new.longitude.values) > 0)
    np.testing.assert_array_equal(new.time.values, old.time.values)
    assert new.time.dtype == np.dtype("datetime64[ns]")
    field, *_ = _era5_grid()
    packing = (field.max() - field.min()) / (2 * 32766) / 2 / 10  # half an int16 step, in g cm-2
    diff = np.abs(new.values.astype(np.float64) - old.values.astype(np.float64))
    assert diff.max() <= packing + 1e-6
    # and the values are the analytic field / 10, latitude flipped to ascending
    np.testing.assert_allclose(new.values, field[:, ::-1, :] / 10.0, atol=1e-5)


@pytest.mark.parametrize("style", ["new", "old"])
def test_era5_linear_field_reproduced_at_arbitrary_pixels_and_times(era5_files, style):
    da = open_era5_tcwv(era5_files[style])
    rng = np.random.default_rng(1)
    fwd = Transformer.from_crs("EPSG:4326", UTM50, always_xy=True)
    lon = rng.uniform(114.3, 117.7, (7, 9))
    lat = rng.uniform(38.3, 41.7, (7, 9))
    x, y = fwd.transform(lon, lat)
    for t in (T0 + np.timedelta64(3 * 3600 + 17 * 60 + 23, "s"), T0 + np.timedelta64(5, "h"),
              pd.Timestamp("2022-06-12 18:45:00+08:00")):  # tz-aware: 10:45 UTC
        t_h = (pd.Timestamp(t).tz_localize(None) if pd.Timestamp(t).tz is None else
               pd.Timestamp(t).tz_convert("UTC").tz_localize(None)) - pd.Timestamp(T0)
        expected = _tcwv(t_h / pd.Timedelta(hours=1), lat, lon) / 10.0
        out = era5_wvc_on_grid(da, t, x, y, UTM50)
        assert out.shape == (7, 9) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_era5_on_a_1d_projected_grid_gives_h_by_w(era5_files):
    da = open_era5_tcwv(era5_files["new"])
    x, y, lon, lat = _utm_grid(115.8, 40.3, nx=30, ny=20, step=400.0)
    out = era5_wvc_on_grid(da, T0 + np.timedelta64(150, "m"), x, y, UTM50)
    assert out.shape == (20, 30)
    np.testing.assert_allclose(out, _tcwv(2.5, lat, lon) / 10.0, atol=1e-4)


def test_era5_longitudes_0_to_360_are_converted_and_sorted(tmp_path):
    def field_fn(t_h, lat, lon):  # positive on the whole globe
        lon180 = (lon + 180.0) % 360.0 - 180.0
        return 30.0 + 0.05 * lon180 + 0.5 * (lat - 40.0) + 0.3 * t_h

    times = T0 + np.arange(6) * np.timedelta64(1, "h")
    lats, lons = np.arange(50.0, 30.0 - 1e-9, -1.0), np.arange(0.0, 360.0, 1.0)
    t_h = (times - T0) / np.timedelta64(1, "h")
    field = field_fn(t_h[:, None, None], lats[None, :, None], lons[None, None, :])
    path = write_era5_tcwv(tmp_path / "global.nc", field, times, lats, lons, style="new")
    da = open_era5_tcwv(path)
    lon_c = da.longitude.values
    assert lon_c[0] == -180.0 and lon_c[-1] == 179.0 and np.all(np.diff(lon_c) > 0)
    # a grid across Greenwich (nodes 359 and 0 become neighbours) and one in the western hemisphere
    gx, gy = np.linspace(-0.8, 0.7, 11), np.linspace(41.3, 40.1, 5)
    out = era5_wvc_on_grid(da, T0 + np.timedelta64(90, "m"), gx, gy, "EPSG:4326")
    glon, glat = np.meshgrid(gx, gy)
    np.testing.assert_allclose(out, field_fn(1.5, glat, glon) / 10.0, atol=1e-4)
    x, y, lon, lat = _utm_grid(-117.2, 36.0, nx=12, ny=10, step=2000.0, crs="EPSG:32611")
    out = era5_wvc_on_grid(da, T0 + np.timedelta64(4, "h"), x, y, "EPSG:32611")
    np.testing.assert_allclose(out, field_fn(4.0, lat, lon) / 10.0, atol=1e-4)


def test_era5_latitude_in_either_order_reads_the_same(tmp_path, era5_files):
    src = xr.open_dataset(era5_files["new"], engine="h5netcdf")
    flipped = src.sortby("latitude").load()  # south -> north, as some tools rewrite ERA5
    src.close()
    assert flipped.latitude.values[0] < flipped.latitude.values[-1]
    flipped.to_netcdf(tmp_path / "south_north.nc", engine="h5netcdf")
    a, b = open_era5_tcwv(era5_files["new"]), open_era5_tcwv(tmp_path / "south_north.nc")
    np.testing.assert_array_equal(a.latitude.values, b.latitude.values)
    np.testing.assert_array_equal(a.values, b.values)


def test_era5_several_files_are_concatenated_in_time_and_deduplicated(tmp_path):
    f1, t1, lats, lons = _era5_grid(hours=24)
    f2, t2, _, _ = _era5_grid(hours=24, start=T0 + np.timedelta64(23, "h"))  # one hour overlaps
    p2 = write_era5_tcwv(tmp_path / "b.nc", f2, t2, lats, lons, style="new")
    p1 = write_era5_tcwv(tmp_path / "a.nc", f1, t1, lats, lons, style="old")
    da = open_era5_tcwv([p2, p1])
    assert da.sizes["time"] == 47
    assert np.all(np.diff(da.time.values) == np.timedelta64(1, "h"))
    x, y, lon, lat = _utm_grid(116.0, 40.0, 5, 4, 1000.0)
    out = era5_wvc_on_grid(da, T0 + np.timedelta64(23 * 60 + 30, "m"), x, y, UTM50)  # across the file seam
    np.testing.assert_allclose(out, _tcwv(23.5, lat, lon) / 10.0, atol=1e-4)


def test_era5_time_not_covered_raises_naming_the_file(era5_files, tmp_path):
    da = open_era5_tcwv(era5_files["new"])
    x, y, _, _ = _utm_grid(116.0, 40.0, 4, 4, 1000.0)
    for t in (T0 - np.timedelta64(1, "h"), T0 + np.timedelta64(24, "h")):
        with pytest.raises(ValueError, match=r"era5_new\.nc.*do not cover time"):
            era5_wvc_on_grid(da, t, x, y, UTM50)
    # a gap between two files is not interpolated over
    f2, t2, lats, lons = _era5_grid(hours=24, start=T0 + np.timedelta64(48, "h"))
    p2 = write_era5_tcwv(tmp_path / "later.nc", f2, t2, lats, lons)
    both = open_era5_tcwv([era5_files["new"], p2])
    with pytest.raises(ValueError, match=r"gap between 2022-06-12T23:00Z and 2022-06-14T00:00Z"):
        era5_wvc_on_grid(both, T0 + np.timedelta64(30, "h"), x, y, UTM50)


def test_era5_area_not_covered_raises_naming_the_file_and_bounds(era5_files):
    da = open_era5_tcwv(era5_files["old"])
    x, y, _, _ = _utm_grid(117.99, 40.0, 10, 10, 1000.0)  # reaches east of 118 E
    with pytest.raises(ValueError, match=r"era5_old\.nc do not cover the grid.*lon 114..118"):
        era5_wvc_on_grid(da, T0 + np.timedelta64(2, "h"), x, y, UTM50)


def test_era5_missing_variable_or_wrong_units_raise_naming_the_file(tmp_path, era5_files):
    src = xr.open_dataset(era5_files["new"], engine="h5netcdf").load()
    src.rename({"tcwv": "tcw"}).to_netcdf(tmp_path / "no_tcwv.nc", engine="h5netcdf")
    bad_units = src.copy()
    bad_units["tcwv"].attrs["units"] = "g cm-2"
    bad_units.to_netcdf(tmp_path / "units.nc", engine="h5netcdf")
    src.close()
    with pytest.raises(ValueError, match=r"no_tcwv\.nc: no variable 'tcwv'"):
        open_era5_tcwv(tmp_path / "no_tcwv.nc")
    with pytest.raises(ValueError, match=r"units\.nc: tcwv has units 'g cm-2'"):
        open_era5_tcwv(tmp_path / "units.nc")
    (tmp_path / "junk.nc").write_bytes(b"this is not netcdf")
    with pytest.raises(ValueError, match=r"junk\.nc: not a readable ERA5"):
        open_era5_tcwv(tmp_path / "junk.nc")


def test_era5_grib_without_cfgrib_names_the_file(tmp_path):
    try:
        import cfgrib  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("cfgrib is installed")
    path = tmp_path / "era5.grib"
    path.write_bytes(b"GRIB" + b"\0" * 100)
    with pytest.raises(ValueError, match=r"era5\.grib: GRIB file, but the optional package cfgrib"):
        open_era5_tcwv(path)


# --------------------------------------------------------------------------------------------- ASTER GED
N_GED = 200  # pixels per tile side (0.005 deg): the layout of AG100, smaller for speed


def _emis(k: int, lat, lon):
    """Analytic ASTER band-k emissivity, linear in latitude and longitude."""
    return 0.93 + 0.005 * k + 0.02 * (lat - 39.5) - 0.015 * (lon - 116.0)


def _ndvi(lat, lon):
    return 0.4 + 0.1 * (lat - 39.5) + 0.05 * (lon - 116.0)


def _write_tile(folder: Path, lat0: int, lon0: int, *, water_box=None, fill_box=None) -> Path:
    """An AG100 tile (north-west corner lat0, lon0) holding the analytic fields."""
    step = 1.0 / N_GED
    lat = lat0 - (np.arange(N_GED) + 0.5) * step
    lon = lon0 + (np.arange(N_GED) + 0.5) * step
    glat, glon = np.meshgrid(lat, lon, indexing="ij")
    emis = np.stack([_emis(k, glat, glon) for k in range(5)])
    lw = np.ones(glat.shape, dtype=np.uint8)
    if water_box is not None:
        lw[water_box] = 2
    if fill_box is not None:
        emis[(slice(None), *fill_box)] = np.nan
    return write_ged_tile(folder, lat0, lon0, emis, np.full_like(emis, 0.01), _ndvi(glat, glon),
                          np.full(glat.shape, 0.05), lw, glat, glon, 500.0 + 100.0 * (glat - 39.0))


def test_read_ged_tile_scales_and_fills(tmp_path):
    path = _write_tile(tmp_path, 40, 115, fill_box=(slice(0, 3), slice(0, 4)))
    assert path.name == ged_tile_name(40, 115)
    tile = read_ged_tile(path, sdev=True)
    assert tile["emissivity"].shape == (5, N_GED, N_GED) and tile["emissivity"].dtype == np.float32
    assert np.isnan(tile["emissivity"][:, :3, :4]).all()
    ok = np.isfinite(tile["emissivity"])
    expected = np.stack([_emis(k, tile["lat"], tile["lon"]) for k in range(5)])
    assert np.abs(tile["emissivity"][ok] - expected[ok]).max() <= 0.0005 + 1e-6
    np.testing.assert_allclose(tile["ndvi"], _ndvi(tile["lat"], tile["lon"]), atol=0.005 + 1e-6)
    np.testing.assert_allclose(tile["emissivity_sdev"], 0.01, atol=1e-6)
    assert tile["land_water"].dtype == np.uint8 and (tile["land_water"] == 1).all()
    assert tile["lat"].max() < 40 and tile["lon"].min() > 115


def test_ged_sampled_at_projected_pixel_centres_within_int16_precision(tmp_path):
    _write_tile(tmp_path, 40, 115)
    x, y, lon, lat = _utm_grid(115.5, 39.5, nx=60, ny=50, step=100.0)
    ds = ged_on_grid(tmp_path, x, y, UTM50)
    assert ds["emis_aster"].shape == (5, 50, 60)
    assert not ds["ged_missing"].values.any()
    for k in range(5):
        assert np.abs(ds["emis_aster"].values[k] - _emis(k, lat, lon)).max() <= 0.0015
    assert np.abs(ds["ndvi_ged"].values - _ndvi(lat, lon)).max() <= 0.015
    np.testing.assert_array_equal(ds["x"].values, x)
    assert ds.attrs["ged_tiles"] == [ged_tile_name(40, 115)]


def test_ged_adjacent_tiles_mosaic_seamlessly_and_are_found_by_geolocation(tmp_path):
    _write_tile(tmp_path, 40, 115)
    east = _write_tile(tmp_path, 40, 116)
    east.rename(tmp_path / "renamed_tile.h5")  # the name no longer says where it is
    x, y, lon, lat = _utm_grid(116.0, 39.6, nx=81, ny=21, step=50.0)  # straddles the tiles' edge at 116 E
    assert lon.min() < 116.0 < lon.max()
    ds = ged_on_grid(tmp_path, x, y, UTM50)
    assert not ds["ged_missing"].values.any()
    assert sorted(ds.attrs["ged_tiles"]) == sorted([ged_tile_name(40, 115), "renamed_tile.h5"])
    for k in range(5):
        err = np.abs(ds["emis_aster"].values[k] - _emis(k, lat, lon))
        assert err.max() <= 0.0015
    # no step at the seam: neighbouring pixels (50 m apart, < 1e-5 of gradient) differ by at most one int16 step
    steps = np.abs(np.diff(ds["emis_aster"].values[0], axis=1))
    assert steps.max() <= 0.001 + 1e-5


def test_ged_grid_half_outside_the_tiles_is_flagged_missing(tmp_path):
    _write_tile(tmp_path, 40, 115)
    x, y, lon, _ = _utm_grid(116.0, 39.6, nx=40, ny=10, step=100.0)
    ds = ged_on_grid(tmp_path, x, y, UTM50)
    missing = ds["ged_missing"].values
    clear = np.abs(lon - 116.0) > 1e-6
    np.testing.assert_array_equal(missing[clear], (lon > 116.0)[clear])
    assert missing.any() and (~missing).any()
    emis = ds["emis_aster"].values
    assert np.isnan(emis[:, missing]).all() and np.isfinite(emis[:, ~missing]).all()
    assert (ds["land_water"].values[missing] == 255).all()
    assert not ds["water"].values[missing].any()


def test_ged_no_tile_covering_the_grid_raises_naming_the_folder(tmp_path):
    _write_tile(tmp_path, 31, 100)
    x, y, _, _ = _utm_grid(115.5, 39.5, nx=5, ny=5, step=100.0)
    with pytest.raises(ValueError, match=rf"{tmp_path}: no ASTER GED tile covers.*lon 115\.4"):
        ged_on_grid(tmp_path, x, y, UTM50)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"{empty}: no ASTER GED tile"):
        ged_on_grid(empty, x, y, UTM50)
    (empty / "truncated.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 20)
    with pytest.warns(UserWarning, match=r"truncated\.h5"), \
            pytest.raises(ValueError, match=r"skipped unreadable file\(s\): truncated\.h5"):
        ged_on_grid(empty, x, y, UTM50)


def test_ged_unreadable_file_beside_the_tiles_is_skipped_with_a_warning(tmp_path):
    _write_tile(tmp_path, 40, 115)
    (tmp_path / "readme.h5").write_bytes(b"not hdf5")
    x, y, _, _ = _utm_grid(115.5, 39.5, nx=5, ny=5, step=100.0)
    with pytest.warns(UserWarning, match=r"readme\.h5"):
        ds = ged_on_grid(tmp_path, x, y, UTM50)
    assert not ds["ged_missing"].values.any()


def test_ged_fill_and_water_codes_reach_the_grid(tmp_path):
    # water in the tile's rows 90-110 / cols 90-110 (39.45-39.55 N, 115.45-115.55 E); fill in the NW corner
    _write_tile(tmp_path, 40, 115, water_box=(slice(90, 110), slice(90, 110)), fill_box=(slice(0, 40), slice(0, 40)))
    x, y, _, _ = _utm_grid(115.5, 39.5, nx=10, ny=10, step=200.0)
    ds = ged_on_grid(tmp_path, x, y, UTM50)
    assert ds["water"].values.all() and (ds["land_water"].values == 2).all()
    eps = vimi_emissivity(ds["emis_aster"].values, ds["ndvi_ged"].values, np.full((10, 10), 0.3),
                          water=ds["water"].values)
    assert eps.shape == (4, 10, 10)
    np.testing.assert_allclose(eps, 0.99, atol=1e-6)
    x, y, _, _ = _utm_grid(115.05, 39.95, nx=6, ny=6, step=200.0)  # inside the fill: no emissivity anywhere
    with pytest.raises(ValueError, match=rf"{tmp_path}: ASTER GED tile\(s\) AG100\.v003\.40\.115\.0001\.h5 cover "
                                         r"the grid .* only fill values"):
        ged_on_grid(tmp_path, x, y, UTM50)
    x, y, _, _ = _utm_grid(115.2, 39.8, nx=6, ny=6, step=200.0)  # half in the fill: flagged there
    missing = ged_on_grid(tmp_path, x, y, UTM50)["ged_missing"].values
    assert missing.any() and not missing.all()


def test_vimi_emissivity_vegetation_water_and_bare_ground():
    rng = np.random.default_rng(3)
    ged = rng.uniform(0.90, 0.97, (5, 4, 6))
    ged_ndvi = np.full((4, 6), 0.5)
    full = vimi_emissivity(ged, ged_ndvi, np.ones((4, 6)))
    assert full.shape == (4, 4, 6) and full.dtype == np.float32
    np.testing.assert_allclose(full, 0.985, atol=1e-6)

    water = np.zeros((4, 6), dtype=bool)
    water[1, 2] = True
    ged_nan = ged.copy()
    ged_nan[:, 1, 2] = np.nan  # water keeps 0.99 even where GED has fill
    eps = vimi_emissivity(ged_nan, ged_ndvi, np.full((4, 6), 0.6), water=water)
    np.testing.assert_allclose(eps[:, 1, 2], 0.99, atol=1e-6)
    assert np.isfinite(eps).all()

    bare = vimi_emissivity(ged, np.full((4, 6), 0.1), np.full((4, 6), 0.05))
    coeffs = json.loads(resources.files("sftl_dask.data").joinpath("aster_to_vimi.json").read_text())
    converted = np.moveaxis(aster_to_vimi(np.moveaxis(ged, 0, -1), coeffs), -1, 0)
    np.testing.assert_allclose(bare, converted, atol=1e-6)

    holes = ged.copy()
    holes[:, 0, 0] = np.nan
    out = vimi_emissivity(holes, ged_ndvi, np.full((4, 6), 0.3))
    assert np.isnan(out[:, 0, 0]).all() and np.isfinite(out[:, 1:, :]).all()


def test_packaged_aster_to_vimi_coefficients_match_a_fresh_fit(tmp_path):
    packaged = json.loads(resources.files("sftl_dask.data").joinpath("aster_to_vimi.json").read_text())
    fresh = fit_aster_to_vimi()
    assert list(packaged["channels"]) == list(fresh["channels"])
    for name, c in fresh["channels"].items():
        np.testing.assert_allclose(packaged["channels"][name]["coefficients"], c["coefficients"], atol=1e-12)
        assert packaged["channels"][name]["intercept"] == pytest.approx(c["intercept"], abs=1e-12)
    written = write_aster_to_vimi_coefficients(tmp_path / "c.json")
    assert json.loads(written.read_text())["channels"] == json.loads(json.dumps(fresh["channels"]))


# --------------------------------------------------------------------------------------------- in situ
SITE = {"id": "HL07", "name": "Huailai cropland", "region": "huailai", "lon": 115.788, "lat": 40.3491,
        "elevation_m": 480.0, "land_cover": "maize", "instrument": "CNR4", "sensor_id": "CNR4-1007",
        "broadband_emissivity": 0.972}


def _series(n: int = 36, lst=None):
    """Ten-minute Beijing-time stamps from 08:00 and noise-free longwave for a known LST."""
    beijing = np.datetime64("2022-06-12T08:00", "ns") + np.arange(n) * np.timedelta64(10, "m")
    lst_k = 295.0 + 0.05 * np.arange(n) if lst is None else lst
    down = 330.0 + 0.5 * np.arange(n)
    up = upwelling_longwave(lst_k, down, SITE["broadband_emissivity"])
    return beijing, lst_k, up, down


def _csv(tmp_path: Path, name: str = "HL07.csv", **kw) -> Path:
    beijing, _, up, down = _series()
    flags = kw.pop("flags", np.zeros(beijing.size, dtype=int))
    return write_insitu_csv(tmp_path / name, SITE, beijing, kw.pop("up", up), kw.pop("down", down), flags, **kw)


def test_insitu_csv_round_trip_and_timezone(tmp_path):
    beijing, _, up, down = _series()
    sensors = ["CNR4-1007"] * 20 + ["CNR4-2001"] * 16
    path = _csv(tmp_path, sensor_ids=sensors)
    meta, frame = read_insitu_csv(path)
    for key, value in SITE.items():
        assert meta[key] == value
    assert meta["utc_offset_h"] == 8.0
    assert list(frame.columns) == ["time_utc", "time_local", "lw_up_w_m2", "lw_down_w_m2", "qc", "sensor_id"]
    assert frame["time_utc"].dtype == np.dtype("datetime64[ns]")
    assert frame["time_utc"].iloc[0] == pd.Timestamp("2022-06-12 00:00:00")  # Beijing 08:00 = 00:00 UTC
    np.testing.assert_array_equal(frame["time_local"].to_numpy(), beijing)
    np.testing.assert_allclose(frame["lw_up_w_m2"], np.round(up, 2), atol=1e-9)
    np.testing.assert_allclose(frame["lw_down_w_m2"], np.round(down, 2), atol=1e-9)
    assert (frame["qc"] == 0).all() and list(frame["sensor_id"]) == sensors
    assert frame.attrs["site_id"] == "HL07"


def test_insitu_other_timezones_and_missing_timezone_warns(tmp_path):
    text = _csv(tmp_path).read_text()
    (tmp_path / "minus3.csv").write_text(text.replace("# timezone: UTC+8 (Beijing time)", "# timezone: UTC-03:00"))
    _, frame = read_insitu_csv(tmp_path / "minus3.csv")
    assert frame["time_utc"].iloc[0] == pd.Timestamp("2022-06-12 11:00:00")
    (tmp_path / "iana.csv").write_text(text.replace("UTC+8 (Beijing time)", "Asia/Shanghai"))
    _, frame = read_insitu_csv(tmp_path / "iana.csv")
    assert frame["time_utc"].iloc[0] == pd.Timestamp("2022-06-12 00:00:00")
    (tmp_path / "none.csv").write_text(text.replace("# timezone: UTC+8 (Beijing time)\n", ""))
    with pytest.warns(UserWarning, match=r"none\.csv.*UTC\+8"):
        _, frame = read_insitu_csv(tmp_path / "none.csv")
    assert frame["time_utc"].iloc[0] == pd.Timestamp("2022-06-12 00:00:00")


def test_insitu_lst_equals_the_generating_lst():
    beijing, lst_true, up, down = _series()
    frame = pd.DataFrame({"time_utc": beijing - np.timedelta64(8, "h"), "lw_up_w_m2": up, "lw_down_w_m2": down,
                          "qc": np.zeros(beijing.size, dtype=np.int8)})
    out = insitu_lst(frame, SITE["broadband_emissivity"])
    np.testing.assert_allclose(out["lst_k"], lst_true, atol=1e-6, rtol=0)
    assert (out["reason"] == "ok").all()


def test_insitu_lst_through_the_csv_within_its_rounding(tmp_path):
    _, lst_true, _, _ = _series()
    meta, frame = read_insitu_csv(_csv(tmp_path))
    out = insitu_lst(frame, meta["broadband_emissivity"])
    # 0.005 W m-2 of rounding in L_up and L_down is < 1e-3 K at ~300 K
    np.testing.assert_allclose(out["lst_k"], lst_true, atol=1e-3, rtol=0)


def test_insitu_bad_gap_and_nonphysical_rows_get_nan_and_a_reason(tmp_path):
    beijing, _, up, down = _series()
    flags = np.zeros(beijing.size, dtype=int)
    up, down = up.copy(), down.copy()
    flags[2], up[2] = 2, -999.0  # logger junk on a bad row
    flags[3] = 2
    up[5] = np.nan  # gap
    down[6] = np.nan
    up[8] = 20.0  # not flagged, but not a surface
    flags[10] = 1  # suspect keeps its LST
    meta, frame = read_insitu_csv(_csv(tmp_path, up=up, down=down, flags=flags))
    out = insitu_lst(frame, meta["broadband_emissivity"])
    assert len(out) == beijing.size  # nothing dropped
    reasons = out["reason"].to_numpy()
    assert list(reasons[[2, 3, 5, 6, 8, 10]]) == ["qc bad", "qc bad", "gap", "gap", "non-physical longwave",
                                                  "suspect"]
    assert np.isnan(out["lst_k"].to_numpy()[[2, 3, 5, 6, 8]]).all()
    assert np.isfinite(out["lst_k"].iloc[10])
    assert (reasons[[0, 1, 4, 7, 9, 11]] == "ok").all()
    with pytest.raises(ValueError, match="broadband_emissivity"):
        insitu_lst(frame, 1.2)


def test_overpass_lst_averages_good_rows_and_says_why_not(tmp_path):
    n = 36
    lst = np.full(n, 300.0)
    lst[12:15] = [299.0, 300.0, 301.0]  # 10:00-10:20 Beijing = 02:00-02:20 UTC
    lst[24:27] = [296.0, 300.0, 304.0]  # 12:00-12:20: a cloud shadow passing
    _, _, up, down = _series(n, lst)
    flags = np.zeros(n, dtype=int)
    flags[30:33] = 2  # 13:00-13:20 all bad
    meta, frame = read_insitu_csv(_csv(tmp_path, up=up, down=down, flags=flags))
    table = insitu_lst(frame, meta["broadband_emissivity"])

    res = overpass_lst(table, "2022-06-12T02:10")
    assert res["reason"] == "ok" and res["n"] == 3 and res["n_window"] == 3
    assert res["lst_k"] == pytest.approx(300.0, abs=1e-3) and res["std_k"] == pytest.approx(1.0, abs=1e-3)
    res = overpass_lst(table, pd.Timestamp("2022-06-12 10:10", tz="Asia/Shanghai"))  # tz-aware input
    assert res["reason"] == "ok" and res["lst_k"] == pytest.approx(300.0, abs=1e-3)
    assert overpass_lst(table, "2022-06-12T04:10")["reason"] == "unstable"
    assert np.isnan(overpass_lst(table, "2022-06-12T04:10")["lst_k"])
    assert overpass_lst(table, "2022-06-12T05:10")["reason"] == "no valid data"
    assert overpass_lst(table, "2022-06-13T05:10")["reason"] == "no data"
    res = overpass_lst(table, "2022-06-12T02:10", min_samples=4)
    assert res["reason"] == "too few samples" and np.isnan(res["lst_k"]) and res["n"] == 3
    res = overpass_lst(table, "2022-06-12T05:20", window_min=10.0)  # 13:10-13:30: one bad row left out
    assert res["reason"] == "too few samples" and res["n"] == 1 and res["n_window"] == 3
    with pytest.raises(ValueError, match="insitu_lst"):
        overpass_lst(frame, "2022-06-12T02:10")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda t: t.replace("TIMESTAMP,ULR_Cor,DLR_Cor", "TIMESTAMP,ULR_Cor,DLR"), r"missing column\(s\) DLR_Cor"),
    (lambda t: t.replace("2022-06-12 08:20:00", "2022-06-12 08:10:00"),
     r"column TIMESTAMP: duplicate time stamp\(s\) at line 17"),
    (lambda t: t.replace("2022-06-12 08:30:00", "2022-13-12 08:30"), r"column TIMESTAMP: unparseable .* line 18"),
    (lambda t: t.replace("2022-06-12 08:30:00", "2022-06-12 07:30:00"),
     r"column TIMESTAMP: time goes backwards at line 18"),
    (lambda t: t.replace("2022-06-12 08:40:00,", "2022-06-12 08:40:00,abc"), r"column ULR_Cor: non-numeric.* line 19"),
    (lambda t: t.replace(",0,CNR4-1007", ",7,CNR4-1007", 1), r"column QC_flag: code\(s\) other than"),
])
def test_insitu_bad_input_raises_naming_the_file(tmp_path, edit, message):
    text = _csv(tmp_path).read_text()
    bad = tmp_path / "bad_station.csv"
    bad.write_text(edit(text))
    with pytest.raises(ValueError, match=r"bad_station\.csv: " + message):
        read_insitu_csv(bad)


def test_read_sites_round_trip_and_validation(tmp_path):
    other = {**SITE, "id": "HL08", "lon": 115.8, "lat": 40.36}
    path = write_sites_csv(tmp_path / "sites.csv", [SITE, other])
    sites = read_sites(path)
    assert list(sites["id"]) == ["HL07", "HL08"]
    assert sites["lon"].dtype == np.float64 and sites["lat"].iloc[1] == 40.36
    assert sites["broadband_emissivity"].iloc[0] == pytest.approx(0.972)
    text = path.read_text()
    (tmp_path / "dup.csv").write_text(text.replace("HL08", "HL07"))
    with pytest.raises(ValueError, match=r"dup\.csv: column id: duplicate site id\(s\) HL07"):
        read_sites(tmp_path / "dup.csv")
    (tmp_path / "nolat.csv").write_text(text.replace(",lat,", ",latitude,"))
    with pytest.raises(ValueError, match=r"nolat\.csv: missing column\(s\) lat"):
        read_sites(tmp_path / "nolat.csv")
    (tmp_path / "badlon.csv").write_text(text.replace("115.8,", "east,"))
    with pytest.raises(ValueError, match=r"badlon\.csv: column lon: .* line 3"):
        read_sites(tmp_path / "badlon.csv")


def test_readers_do_not_import_the_testbed():
    import sftl_dask.io.era5 as era5
    import sftl_dask.io.ged as ged
    import sftl_dask.io.insitu as insitu

    for module in (era5, ged, insitu):
        assert not re.search(r"^\s*(from|import)\s+sftl_dask\.testbed", Path(module.__file__).read_text(), re.M)
