"""Exports of the cubes: CF-1.11 NetCDF4 (IOOS compliance-checker) and Cloud-Optimized GeoTIFF (rio-cogeo)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import xarray as xr
from helpers import synthetic_cube

from sftl_dask.io.export import ExportError, OutputExistsError, to_cog, to_netcdf
from sftl_dask.io.lst import LST_VARIABLES, QC_FILL
from sftl_dask.io.stores import open_store
from sftl_dask.retrieve import retrieve

#: The bar of issue 10: compliance-checker cf:1.11 score (percent) and no high-priority failure.
MIN_CF_SCORE = 98.0


@pytest.fixture(scope="module")
def cubes(tmp_path_factory: pytest.TempPathFactory, retrieval_model) -> dict[str, Path]:
    """A scene cube of two 150 x 140 px scenes (chunks of 64; the second covers columns 30 on) and its LST."""
    root = tmp_path_factory.mktemp("export")
    scene = synthetic_cube(root / "scene.zarr", 1, seed=0)
    synthetic_cube(scene, 1, seed=0, first=1, covered_from=30)
    lst = root / "lst.zarr"
    retrieve(scene, retrieval_model("rf"), lst, threads=2, device="cpu")
    return {"scene": scene, "lst": lst}


@pytest.fixture(scope="module")
def lst_nc(cubes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_netcdf(open_store(cubes["lst"]), tmp_path_factory.mktemp("nc") / "lst.nc")


@pytest.fixture(scope="module")
def scene_nc(cubes: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return to_netcdf(open_store(cubes["scene"]), tmp_path_factory.mktemp("nc") / "scene.nc")


def cf_check(path: Path, tmp_dir: Path) -> dict:
    """compliance-checker ``--test=cf:1.11`` on ``path``: its JSON report of the CF check."""
    pytest.importorskip("compliance_checker")
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = tmp_dir / f"{path.stem}_cf.json"
    ComplianceChecker.run_checker(str(path), ["cf:1.11"], 0, "normal", output_filename=str(report),
                                  output_format="json")
    return json.loads(report.read_text())["cf:1.11"]


def _assert_cf_bar(report: dict, name: str) -> None:
    score = 100.0 * report["scored_points"] / report["possible_points"]
    high = [f"{r['name']}: {'; '.join(r['msgs'])}" for r in report["high_priorities"] if r["value"][0] < r["value"][1]]
    assert report["high_count"] == 0 and not high, f"{name}: high-priority CF failures: {high}"
    assert score >= MIN_CF_SCORE, (f"{name}: CF score {report['scored_points']}/{report['possible_points']} "
                                   f"= {score:.1f}%: {_failures(report)}")


def _failures(report: dict) -> list[str]:
    return [f"{r['name']}: {'; '.join(r['msgs'])}" for level in ("medium_priorities", "low_priorities")
            for r in report[level] if r["value"][0] < r["value"][1]]


# ---------------------------------------------------------------------------------------------------- NetCDF
def test_lst_netcdf_reopened_by_plain_xarray_equals_the_cube_values_times_and_crs(cubes, lst_nc):
    import rioxarray  # noqa: F401

    cube = open_store(cubes["lst"], decode_coords="all")
    got = xr.open_dataset(lst_nc, decode_coords="all")
    for k in LST_VARIABLES:
        np.testing.assert_array_equal(got[k].values, cube[k].values, err_msg=k)
        assert got[k].dtype == cube[k].dtype, k
    assert got["qc"].dtype == np.uint16
    np.testing.assert_array_equal(got["time"].values, cube["time"].values)
    np.testing.assert_array_equal(got["x"].values, cube["x"].values)
    np.testing.assert_array_equal(got["y"].values, cube["y"].values)
    assert list(got["scene_id"].values) == list(cube["scene_id"].values)
    assert list(got["checksum"].values) == list(cube["checksum"].values)
    assert got["retrieve_ok"].values.tolist() == [1, 1]
    assert got.rio.crs == cube.rio.crs and got.rio.transform() == cube.rio.transform()
    np.testing.assert_array_equal(got["qc"].attrs["flag_masks"], LST_VARIABLES["qc"]["flag_masks"])


def test_lst_netcdf_has_cf_coordinates_grid_mapping_history_and_deflated_chunks(lst_nc):
    with h5py.File(lst_nc, "r") as f:
        assert f.attrs["Conventions"] in (b"CF-1.11", "CF-1.11")
        assert "sftl_dask.io.export.to_netcdf" in str(f.attrs["history"]).splitlines()[-1]
        assert "sftl_dask.retrieve.retrieve" in str(f.attrs["history"])  # the retrieval's line is kept
        for c in ("x", "y", "time"):
            assert "_FillValue" not in f[c].attrs, c
        assert f["time"].attrs["axis"] in (b"T", "T")
        assert f["x"].attrs["standard_name"] in (b"projection_x_coordinate", "projection_x_coordinate")
        assert "crs_wkt" in f["spatial_ref"].attrs
        for k in LST_VARIABLES:
            assert f[k].attrs["grid_mapping"] in (b"spatial_ref", "spatial_ref"), k
            assert f[k].compression == "gzip" and f[k].compression_opts == 4, k
            assert f[k].chunks == (1, 150, 140), k
        assert f["qc"].attrs["flag_masks"].dtype == np.uint16
        assert f["lst"].attrs["valid_min"].dtype == np.float32


def test_lst_netcdf_passes_compliance_checker_cf_1_11(lst_nc, tmp_path):
    _assert_cf_bar(cf_check(lst_nc, tmp_path), "LST cube")


def test_scene_cube_netcdf_passes_compliance_checker_cf_1_11_with_channel_wavelengths(scene_nc, cubes, tmp_path):
    _assert_cf_bar(cf_check(scene_nc, tmp_path), "scene cube")
    got = xr.open_dataset(scene_nc)
    assert got["bt_10_80"].attrs["standard_name"] == "toa_brightness_temperature"
    assert float(got["bt_10_80"]["wavelength_10_80um"]) == pytest.approx(10.8)
    assert float(got["emis_08_63"]["wavelength_08_63um"]) == pytest.approx(8.63)
    assert got["cloud"].dtype == np.uint8 and got["ingest_ok"].dtype == np.int8
    np.testing.assert_array_equal(got["bt_11_95"].values, open_store(cubes["scene"])["bt_11_95"].values)


def test_netcdf_refuses_an_existing_path_naming_it_and_leaves_it_untouched(cubes, tmp_path):
    out = tmp_path / "exists.nc"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        to_netcdf(open_store(cubes["lst"]), out)
    with pytest.raises(ValueError, match=re.escape(str(out))):  # the API's bad-input type too
        to_netcdf(open_store(cubes["lst"]), out)
    assert out.read_bytes() == b"keep" and sorted(p.name for p in tmp_path.iterdir()) == ["exists.nc"]


def test_netcdf_of_a_dataset_without_crs_is_refused_and_writes_nothing(cubes, tmp_path):
    ds = open_store(cubes["lst"]).drop_vars("spatial_ref")
    for v in ds.data_vars:
        ds[v].attrs.pop("grid_mapping", None)
    with pytest.raises(ExportError, match="no CRS"):
        to_netcdf(ds, tmp_path / "x.nc")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------- COG
def _validate_cog(path: Path) -> tuple[bool, list[str], list[str]]:
    pytest.importorskip("rio_cogeo")
    from rio_cogeo.cogeo import cog_validate

    return cog_validate(str(path), quiet=True)


def test_cog_validates_and_its_bands_equal_the_cubes_time_step(cubes, tmp_path):
    cube = open_store(cubes["lst"])
    for t, label in ((1, 1), (1, str(cube["time"].values[1])[:19]), (0, str(cube["time"].values[0])[:10])):
        out = to_cog(cube, tmp_path / f"lst_{t}_{len(str(label))}.tif", time=label)
        valid, errors, _ = _validate_cog(out)
        assert valid and not errors, errors
        with rasterio.open(out) as src:
            assert src.count == 2 and src.dtypes == ("float32", "float32") and np.isnan(src.nodata)
            assert src.crs.to_epsg() == 32650 and src.transform == cube.rio.transform()
            assert src.block_shapes[0] == (512, 512) or src.block_shapes[0][0] >= src.height
            assert src.profile["compress"].lower() == "deflate"
            assert src.descriptions == ("land surface temperature", "standard uncertainty of lst (1 sigma)")
            np.testing.assert_array_equal(src.read(1), cube["lst"].isel(time=t).values)
            np.testing.assert_array_equal(src.read(2), cube["lst_uncertainty"].isel(time=t).values)


def test_cog_of_qc_is_its_own_uint16_file_equal_to_the_flags(cubes, tmp_path):
    cube = open_store(cubes["lst"])
    out = to_cog(cube, tmp_path / "qc.tif", time=0, variables=("qc",))
    assert _validate_cog(out)[0]
    with rasterio.open(out) as src:
        # nodata: qc's fill, the flags of a pixel no observation covers (what a chunk never written reads as)
        assert src.dtypes == ("uint16",) and src.nodata == QC_FILL
        np.testing.assert_array_equal(src.read(1), cube["qc"].isel(time=0).values)
    with pytest.raises(ExportError, match="data type"):
        to_cog(cube, tmp_path / "mixed.tif", time=0, variables=("lst", "qc"))


def test_cog_of_a_large_tile_has_internal_overviews_unless_disabled(tmp_path):
    import rioxarray  # noqa: F401

    rng = np.random.default_rng(1)
    ny, nx = 1100, 1300
    da = xr.DataArray(rng.normal(300.0, 5.0, (1, ny, nx)).astype(np.float32), dims=("time", "y", "x"),
                      coords={"time": [np.datetime64("2022-05-01T03:30", "ns")],
                              "y": 4_500_000.0 - 20.0 - 40.0 * np.arange(ny), "x": 400_020.0 + 40.0 * np.arange(nx)},
                      name="lst", attrs={"long_name": "land surface temperature", "units": "K"})
    da = da.rio.write_crs("EPSG:32650")
    with_ov = to_cog(da, tmp_path / "ov.tif")
    without = to_cog(da, tmp_path / "no_ov.tif", overviews=False)
    assert _validate_cog(with_ov) == (True, [], [])
    assert _validate_cog(without)[0]
    with rasterio.open(with_ov) as a, rasterio.open(without) as b:
        assert a.overviews(1) == [2, 4] and b.overviews(1) == []
        np.testing.assert_array_equal(a.read(1), da.values[0])


@pytest.mark.parametrize("time", ["2030-01-01", 7, -3, "not a date"])
def test_cog_of_a_time_step_not_in_the_cube_raises_naming_it(cubes, tmp_path, time):
    with pytest.raises(ExportError, match=re.escape(str(time))):
        to_cog(open_store(cubes["lst"]), tmp_path / "x.tif", time=time)
    assert not list(tmp_path.iterdir())


def test_cog_needs_a_time_when_there_are_several_and_refuses_an_existing_path(cubes, tmp_path):
    cube = open_store(cubes["lst"])
    with pytest.raises(ExportError, match="2 time steps"):
        to_cog(cube, tmp_path / "x.tif")
    out = tmp_path / "taken.tif"
    out.write_bytes(b"")
    with pytest.raises(OutputExistsError, match=re.escape(str(out))):
        to_cog(cube, out, time=0)


def test_gdals_zarr_crs_attribute_stays_in_the_zarr_and_out_of_the_netcdf(cubes, lst_nc):
    assert "_CRS" in xr.open_zarr(cubes["lst"])["lst"].attrs  # GDAL < 3.10 reads the CRS of a Zarr from it
    with h5py.File(lst_nc) as f:
        assert "_CRS" not in f["lst"].attrs and f["lst"].attrs["grid_mapping"] in (b"spatial_ref", "spatial_ref")


# ------------------------------------------------------------------------------------------------ issue 24
@pytest.fixture(scope="module")
def derived_nc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[xr.Dataset, Path]]:
    """Each derived product of a small LST cube (and one of its steps), exported with ``ds.sftl.to_netcdf``."""
    from helpers import synthetic_lst_cube

    import sftl_dask

    root = tmp_path_factory.mktemp("derived")
    ds = sftl_dask.open_lst(synthetic_lst_cube(root / "l.zarr", n_times=30))
    good = ds.sftl.good()
    clim = good.sftl.climatology("month")
    products = {"LST time step": ds.isel(time=[3]), "monthly median composite": good.sftl.composite("MS"),
                "seasonal max composite": good.sftl.composite("QS-DEC", how="max"), "climatology": clim,
                "anomaly": good.sftl.anomaly(clim).isel(time=[0, 1])}
    out = {}
    for name, product in products.items():
        product = product.compute()
        out[name] = (product, product.sftl.to_netcdf(root / f"{name.replace(' ', '_')}.nc"))
    return out


@pytest.mark.parametrize("name", ["LST time step", "monthly median composite", "seasonal max composite",
                                  "climatology", "anomaly"])
def test_derived_products_pass_compliance_checker_without_any_failure(derived_nc, name, tmp_path):
    """Issue 24's target: cf:1.11 with no failure at all (high, medium or low) on every exported product."""
    report = cf_check(derived_nc[name][1], tmp_path)
    assert report["high_count"] == 0 and _failures(report) == [], _failures(report)
    assert report["scored_points"] == report["possible_points"]


@pytest.mark.parametrize("name", ["LST time step", "monthly median composite", "seasonal max composite",
                                  "climatology", "anomaly"])
def test_netcdf4_with_default_masking_reads_what_xarray_holds(derived_nc, name):
    """Issue 24 findings 1-2: an inherited valid range (150..400 K on an anomaly) masked every value."""
    netCDF4 = pytest.importorskip("netCDF4")
    product, path = derived_nc[name]
    with netCDF4.Dataset(path) as f:  # default: set_auto_mask(True), valid_min/valid_max/_FillValue applied
        for var in ("lst", "lst_uncertainty", "n_obs", "lst_std"):
            if var not in product:
                continue
            got = np.ma.filled(f[var][:].astype(np.float64), np.nan)
            want = product[var].values.astype(np.float64)
            np.testing.assert_array_equal(got, want, err_msg=f"{name}: {var}")
            assert np.isfinite(want).sum() > 0
        if "qc" in product:
            np.testing.assert_array_equal(np.ma.getdata(f["qc"][:]), product["qc"].values)


def test_climatology_export_is_a_cf_climatological_time_axis(derived_nc):
    product, path = derived_nc["climatology"]
    got = xr.open_dataset(path)
    assert got["time"].attrs["climatology"] == "climatology_bounds"
    np.testing.assert_array_equal(got["month"].values, product["month"].values)
    bounds = got["climatology_bounds"].values
    assert str(bounds[0, 0])[:10] == "2021-01-01" and str(bounds[0, 1])[:10] == "2022-02-01"  # Jan 2021 .. Jan 2022
    np.testing.assert_array_equal(got["lst"].values, product["lst"].values)
