"""RPC00B models: text forms, rasterio/GDAL, forward and inverse, the fit, the per-pixel view zenith."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import RPCTransformer

from sftl_dask.io.rpc import (
    Rpc,
    RpcFitError,
    RpcFormatError,
    fit_rpc,
    format_rpb,
    format_rpc_txt,
    from_rasterio,
    parse_rpb,
    parse_rpc_txt,
    read_rpc,
    to_rasterio,
    view_zenith,
    write_rpb,
    write_rpc_txt,
)
from sftl_dask.testbed.sensor import PushbroomSensor, fit_sensor_rpc

# the rasters here are in sensor geometry: no geotransform, by design
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


@pytest.fixture(scope="module")
def rpc() -> Rpc:
    """A realistic RPC: fitted to the GF5-02 VIMI pushbroom over Heihe (60 km, 1500 x 1500 px, -0.5..6 km)."""
    return fit_sensor_rpc(PushbroomSensor(100.4, 38.9)).rpc


@pytest.fixture(scope="module")
def points(rpc: Rpc) -> tuple[np.ndarray, ...]:
    """200 random image points over the scene at 0-5 km, with their ground coordinates from the RPC."""
    rng = np.random.default_rng(28)
    line, sample, h = rng.uniform(0, 1499, 200), rng.uniform(0, 1499, 200), rng.uniform(0, 5000, 200)
    lon, lat = rpc.localize(line, sample, h)
    return lon, lat, h, line, sample


def _assert_same(seen: Rpc, rpc: Rpc, rel: float, label: str) -> None:
    """Every field of ``seen`` equal to ``rpc``'s within ``rel`` (None where ``rpc`` has None)."""
    for key, value in dataclasses.asdict(seen).items():
        expected = getattr(rpc, key)
        if expected is None:
            assert value is None, (label, key)
        else:
            assert value == pytest.approx(expected, rel=rel, abs=1e-300), (label, key)


def _tiff(path: Path, **profile: object) -> Path:
    """A 4 x 4 uint16 GeoTIFF without a CRS, as a sensor-geometry band."""
    with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint16", **profile) as dst:
        dst.write(np.arange(16, dtype=np.uint16).reshape(1, 4, 4))
    return path


# -- text forms ----------------------------------------------------------------------------------------------
def test_rpb_round_trip_is_lossless(rpc: Rpc) -> None:
    text = format_rpb(rpc)
    assert text.startswith('satId = "GF5B";') and "lineNumCoef = (" in text and text.endswith("END;\n")
    assert parse_rpb(text) == rpc


def test_rpc_txt_round_trip_is_lossless(rpc: Rpc) -> None:
    with_errors = dataclasses.replace(rpc, err_bias=1.5, err_rand=0.25)
    text = format_rpc_txt(with_errors)
    assert "LINE_OFF: +7.4950000000000000E+02 pixels" in text and "SAMP_DEN_COEFF_20: " in text
    assert len(text.splitlines()) == 2 + 10 + 80
    assert parse_rpc_txt(text) == with_errors


def test_rpb_parser_reads_the_digitalglobe_layout() -> None:
    coef = ",\n".join(f"\t\t\t{v:+.6E}" for v in [1.0] + [0.0] * 19)
    num = ",\n".join(f"\t\t\t{v:+.6E}" for v in [0.0, 1.0] + [0.0] * 18)
    text = ('satId = "QB02";\nbandId = "P";\nSpecId = "RPC00B";\nBEGIN_GROUP = IMAGE\n\terrBias = 1.0;\n'
            "\terrRand = 0.0;\n\tlineOffset = 3442;\n\tsampOffset = 3644;\n\tlatOffset = +39.6327;\n"
            "\tlongOffset = -104.9851;\n\theightOffset = +1630;\n\tlineScale = 3443;\n\tsampScale = 3645;\n"
            "\tlatScale = +0.0478;\n\tlongScale = +0.0609;\n\theightScale = +500;\n"
            f"\tlineNumCoef = (\n{num});\n\tlineDenCoef = (\n{coef});\n"
            f"\tsampNumCoef = (\n{num});\n\tsampDenCoef = (\n{coef});\nEND_GROUP = IMAGE\nEND;\n")
    model = parse_rpb(text, "QB02.RPB")
    assert (model.line_off, model.long_off, model.height_scale, model.err_bias) == (3442, -104.9851, 500, 1.0)
    line, sample = model.project(-104.9851 + 0.0609, 39.6327, 1630)  # L = 1 -> one scale from the offset
    assert (line, sample) == pytest.approx((3442 + 3443, 3644 + 3645), abs=1e-9)


def test_gdal_reads_our_sidecars_as_the_same_model(rpc: Rpc, tmp_path: Path) -> None:
    _tiff(tmp_path / "a.tiff")
    write_rpb(rpc, tmp_path / "a.RPB")
    _tiff(tmp_path / "b.tiff")
    write_rpc_txt(rpc, tmp_path / "b_rpc.txt")
    for name in ("a.tiff", "b.tiff"):
        with rasterio.open(tmp_path / name) as src:
            seen = from_rasterio(src.rpcs, name)
        _assert_same(seen, rpc, 1e-15, name)
    assert read_rpc(tmp_path / "a.RPB") == rpc and read_rpc(tmp_path / "b_rpc.txt") == rpc


def test_rasterio_round_trip_and_tiff_tags(rpc: Rpc, tmp_path: Path) -> None:
    assert from_rasterio(to_rasterio(rpc)) == rpc
    path = _tiff(tmp_path / "tags.tif", rpcs=to_rasterio(rpc))
    # GDAL writes RPC tags with 15 significant digits (%.15g), so tags are exact to 1e-14, not to the last bit
    _assert_same(read_rpc(path), rpc, 1e-14, "tags")


# -- malformed input -----------------------------------------------------------------------------------------
def _drop_line(text: str, start: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.strip().startswith(start))


RPB_CASES = {
    "missing key": (lambda t: _drop_line(t, "lineOffset"), "missing key lineOffset"),
    "missing list": (lambda t: t.replace("sampNumCoef", "sampNumCoefX"), "missing key sampNumCoef"),
    "wrong count": (lambda t: t.replace(");\n\tsampNumCoef", ",\n\t\t\t+1.0);\n\tsampNumCoef"),
                    "lineDenCoef has 21 coefficients"),
    "non-numeric": (lambda t: t.replace("latScale = +", "latScale = x"), "latScale is not a number"),
    "non-numeric coefficient": (lambda t: t.replace("sampDenCoef = (\n\t\t\t+", "sampDenCoef = (\n\t\t\tq"),
                                "sampDenCoef is not a number"),
    "zero scale": (lambda t: t.replace("heightScale = +3.25", "heightScale = +0.00"), "heightScale is 0"),
}


@pytest.mark.parametrize("case", sorted(RPB_CASES))
def test_malformed_rpb_names_the_file_and_key(rpc: Rpc, tmp_path: Path, case: str) -> None:
    edit, message = RPB_CASES[case]
    path = tmp_path / "GF5B_VIMI_B7_B12.rpb"
    path.write_text(edit(format_rpb(rpc)))
    with pytest.raises(RpcFormatError, match=message) as err:
        read_rpc(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


TXT_CASES = {
    "missing key": (lambda t: _drop_line(t, "LONG_SCALE"), "missing key LONG_SCALE"),
    "missing coefficient": (lambda t: _drop_line(t, "LINE_DEN_COEFF_7:"), "missing key LINE_DEN_COEFF_7"),
    "wrong count": (lambda t: t + "SAMP_NUM_COEFF_21: +1.0\n", "SAMP_NUM_COEFF has 21 coefficients"),
    "non-numeric": (lambda t: t.replace("HEIGHT_OFF: +", "HEIGHT_OFF: abc"), "HEIGHT_OFF is not a number"),
    "empty value": (lambda t: re.sub(r"LAT_OFF: .*", "LAT_OFF:", t), "LAT_OFF is not a number"),
    "not finite": (lambda t: t.replace("SAMP_NUM_COEFF_3: -", "SAMP_NUM_COEFF_3: nan #"),
                   "SAMP_NUM_COEFF_3 is not finite"),
}


@pytest.mark.parametrize("case", sorted(TXT_CASES))
def test_malformed_rpc_txt_names_the_file_and_key(rpc: Rpc, tmp_path: Path, case: str) -> None:
    edit, message = TXT_CASES[case]
    path = tmp_path / "GF5B_VIMI_B7_B12_RPC.TXT"
    text = edit(format_rpc_txt(rpc))
    assert text != format_rpc_txt(rpc)
    path.write_text(text)
    with pytest.raises(RpcFormatError, match=message) as err:
        read_rpc(path)
    assert str(err.value).startswith(f"{path}: ")


def test_incomplete_tags_and_a_raster_without_rpcs(rpc: Rpc, tmp_path: Path) -> None:
    tags = to_rasterio(rpc).to_gdal()
    with pytest.raises(RpcFormatError, match=r"scene\.tif: missing key LAT_OFF"):
        from_rasterio({k: v for k, v in tags.items() if k != "LAT_OFF"}, "scene.tif")
    with pytest.raises(RpcFormatError, match=r"scene\.tif: LINE_NUM_COEFF has 19 coefficients"):
        from_rasterio({**tags, "LINE_NUM_COEFF": " ".join(tags["LINE_NUM_COEFF"].split()[:19])}, "scene.tif")
    bare = _tiff(tmp_path / "bare.tif")
    with pytest.raises(RpcFormatError, match=re.escape(f"{bare}: no RPC tags")):
        read_rpc(bare)


# -- evaluation ----------------------------------------------------------------------------------------------
def test_forward_and_inverse_round_trip(rpc: Rpc, points: tuple[np.ndarray, ...]) -> None:
    lon, lat, h, line, sample = points
    line_back, sample_back = rpc.project(lon, lat, h)
    assert np.abs(line_back - line).max() < 1e-6 and np.abs(sample_back - sample).max() < 1e-6
    lon_back, lat_back = rpc.localize(line_back, sample_back, h)
    assert np.abs(lon_back - lon).max() < 1e-10 and np.abs(lat_back - lat).max() < 1e-10
    # a scene-sized grid runs in blocks and gives what each point gives alone
    grid_line, grid_sample = np.meshgrid(np.arange(0, 1500, 7.5), np.arange(0, 1500, 7.5), indexing="ij")
    grid_lon, grid_lat = rpc.localize(grid_line, grid_sample, 1000.0)
    assert grid_lon.shape == (200, 200) and np.isfinite(grid_lon).all()
    alone = rpc.localize(float(grid_line[150, 170]), float(grid_sample[150, 170]), 1000.0)
    assert (float(alone[0]), float(alone[1])) == (grid_lon[150, 170], grid_lat[150, 170])
    assert np.abs(rpc.project(grid_lon, grid_lat, 1000.0)[1] - grid_sample).max() < 1e-6
    far = rpc.localize(np.array([1e9]), np.array([0.0]), 0.0)
    assert np.isnan(far[0]).all() and np.isnan(far[1]).all()


def test_forward_agrees_with_gdal_rpc_transformer(rpc: Rpc, points: tuple[np.ndarray, ...]) -> None:
    lon, lat, h, line, sample = points
    # GDAL's inverse stops at 0.1 px by default (RPC_PIXEL_ERROR_THRESHOLD): ask for 1e-6 px, as ours does
    with RPCTransformer(to_rasterio(rpc), RPC_PIXEL_ERROR_THRESHOLD="1e-6") as gdal:
        rows, cols = gdal.rowcol(lon, lat, h, op=np.positive)
        # GDAL counts from the first pixel's corner, RPC00B from its centre: half a pixel apart
        assert np.abs(rows - 0.5 - line).max() < 1e-6 and np.abs(cols - 0.5 - sample).max() < 1e-6
        gdal_lon, gdal_lat = gdal.xy(line, sample, h, offset="center")
    # GDAL's own iterative inverse, checked in pixels through our forward model
    line_g, sample_g = rpc.project(np.asarray(gdal_lon), np.asarray(gdal_lat), h)
    assert np.hypot(line_g - line, sample_g - sample).max() < 1e-5


# -- fit -----------------------------------------------------------------------------------------------------
def test_fit_recovers_a_model_with_real_denominators(rpc: Rpc) -> None:
    den = np.array(rpc.line_den)
    den[1:4] = (0.02, -0.015, 0.01)  # a strongly rational model: the fit must find its denominator
    source = dataclasses.replace(rpc, line_den=tuple(den), samp_den=tuple(den))
    line, sample, h = np.meshgrid(np.linspace(0, 1499, 15), np.linspace(0, 1499, 15), np.linspace(0, 5000, 5))
    lon, lat = source.localize(line, sample, h)
    check_line, check_sample = np.meshgrid(np.linspace(50, 1450, 9), np.linspace(50, 1450, 9))
    check_h = np.full_like(check_line, 2500.0)
    check_lon, check_lat = source.localize(check_line, check_sample, check_h)
    fit = fit_rpc(lon, lat, h, line, sample, check=(check_lon, check_lat, check_h, check_line, check_sample))
    assert fit.n_control == 15 * 15 * 5 and fit.n_check == 81
    assert fit.check_rms_px < 1e-4 and fit.check_max_px < 1e-3 and fit.control_max_px < 1e-3


def test_fit_refuses_points_that_cannot_determine_a_model() -> None:
    lon, lat = np.meshgrid(np.linspace(100, 101, 10), np.linspace(38, 39, 10))
    with pytest.raises(RpcFitError, match="no spread in h"):
        fit_rpc(lon, lat, 0.0, lat * 100, lon * 100)
    with pytest.raises(RpcFitError, match="10 control points"):
        fit_rpc(lon[0], lat[0], np.arange(10.0), lat[0], lon[0])
    with pytest.raises(RpcFitError, match="do not have one shape"):
        fit_rpc(lon, lat, np.arange(7.0), lat, lon)


# -- view zenith ---------------------------------------------------------------------------------------------
def test_view_zenith_from_two_heights(rpc: Rpc) -> None:
    line, sample = np.meshgrid(np.linspace(0, 1499, 5), np.linspace(0, 1499, 31), indexing="ij")
    vza = view_zenith(rpc, line, sample)
    assert vza.shape == (5, 31)
    # nadir column: the geocentric pointing leans by geodetic − geocentric latitude (0.19 deg at 38.9 N)
    assert vza[:, 15] == pytest.approx(0.19, abs=0.01)
    # swath edges: 750 px × 40 m / 705 km off nadir, grown by Earth curvature: ~2.7 deg
    assert vza[:, [0, -1]].min() > 2.6 and vza.max() == pytest.approx(2.754, abs=0.005)
    assert view_zenith(rpc, line, sample, heights=(0.0, 10_000.0)) == pytest.approx(vza, abs=1e-3)


def test_model_built_in_code_checks_its_coefficients(rpc: Rpc) -> None:
    with pytest.raises(RpcFormatError, match="Rpc: samp_den has 19 coefficients"):
        dataclasses.replace(rpc, samp_den=rpc.samp_den[:19])
    with pytest.raises(RpcFormatError, match="Rpc: long_scale is 0"):
        dataclasses.replace(rpc, long_scale=0.0)
    assert "_coef" not in dataclasses.asdict(rpc) and hash(rpc) == hash(dataclasses.replace(rpc))
