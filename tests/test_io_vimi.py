"""The VIMI L1 reader: exact calibration, agreement with the testbed truth, lazy layout, refusal of bad products."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from affine import Affine
from helpers import VIMI_ESUN, VIMI_GAINS, VIMI_OFFSETS, vimi_meta

from sftl_dask.io.vimi import (
    VimiBackendEntrypoint,
    VimiFormatError,
    VimiProduct,
    find_products,
    open_vimi,
    product_checksum,
    view_zenith,
)
from sftl_dask.physics.channels import THERMAL_NAMES
from sftl_dask.physics.planck import band_planck
from sftl_dask.testbed.formats import vimi_product_name, write_vimi_archive

H, W = 32, 48  # TIR grid of the small archives (40 m)
TRANSFORM = Affine(40.0, 0.0, 400_000.0, 0.0, -40.0, 4_470_000.0)
GAINS, OFFSETS, ESUN = VIMI_GAINS, VIMI_OFFSETS, VIMI_ESUN


def _meta(**over: Any) -> dict[str, Any]:
    return vimi_meta(**over)


def _dn(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tir = rng.integers(1, 4096, (6, H, W)).astype(np.uint16)
    tir[2:, 0, :5] = 0  # nodata
    tir[2:, 1, :3] = 1  # radiance below the Planck table (< 150 K)
    vnir = rng.integers(200, 3000, (6, 2 * H, 2 * W)).astype(np.uint16)
    vnir[2, 4, 6] = 0  # one nodata red pixel at 20 m -> NDVI NaN at (2, 3)
    return tir, vnir


def _write(out: Path, **meta_over: Any) -> Path:
    stem = vimi_product_name(115.8, 40.3, "2022-06-12", 12345, 123456)
    tir, vnir = _dn()
    return write_vimi_archive(out, stem, vnir, tir, crs="EPSG:32650", transform=TRANSFORM, meta=_meta(**meta_over))


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    return _write(tmp_path / "a")


def _members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def _retar(src: Path, out_dir: Path, *, drop: str | None = None, replace: dict[str, bytes] | None = None,
           extra: list[tarfile.TarInfo] | None = None) -> Path:
    """Copy of ``src`` (same name) in ``out_dir``: a member dropped or replaced, extra headers added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / src.name
    with tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in _members(src).items():
            if drop and name.endswith(drop):
                continue
            for suffix, new in (replace or {}).items():
                if name.endswith(suffix):
                    data = new
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return dst


def _xml_without(xml: bytes, field: str) -> bytes:
    lines = xml.decode().splitlines(keepends=True)
    return "".join(line for line in lines if f"<{field}>" not in line).encode()


def _assert_refused(path: Path, *words: str) -> None:
    with pytest.raises(VimiFormatError) as err:
        open_vimi(path).compute()
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


# --------------------------------------------------------------------------------------------- calibration
def test_bt_equals_band_planck_inverse_of_gain_dn_plus_offset_exactly(archive):
    ds = open_vimi(archive, chunks=16).compute()
    tir, _ = _dn()
    for c, name in enumerate(THERMAL_NAMES):
        bp = band_planck()[c]
        rad = GAINS[8 + c] * tir[2 + c].astype(np.float64) + OFFSETS[8 + c]
        valid = (tir[2 + c] != 0) & (rad >= bp.radiance_table[0]) & (rad <= bp.radiance_table[-1])
        want = np.full(rad.shape, np.nan, dtype=np.float32)
        want[valid] = bp.brightness_temperature(rad[valid]).astype(np.float32)
        got = ds[name].values
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
        assert np.isnan(got[0, :5]).all() and np.isnan(got[1, :3]).all()  # nodata, below the table


def test_ndvi_is_from_2x2_mean_toa_reflectance_of_red_and_nir(archive):
    ds = open_vimi(archive).compute()
    _, vnir = _dn()
    k = np.pi * 1.015**2 / np.cos(np.deg2rad(30.0))
    red = (GAINS[2] * vnir[2].astype(float)) * k / ESUN[2]
    nir = (GAINS[3] * vnir[3].astype(float)) * k / ESUN[3]
    red[vnir[2] == 0] = np.nan
    red_40 = red.reshape(H, 2, W, 2).mean(axis=(1, 3))
    nir_40 = nir.reshape(H, 2, W, 2).mean(axis=(1, 3))
    want = ((nir_40 - red_40) / (nir_40 + red_40)).astype(np.float32)
    np.testing.assert_allclose(ds["ndvi"].values, want, rtol=1e-6, atol=1e-6)
    assert np.isnan(ds["ndvi"].values[2, 3]) and np.isfinite(ds["ndvi"].values).sum() == H * W - 1


@pytest.mark.parametrize(("azimuth", "sign"), [(278.5, 1.0), (98.5, -1.0), (-81.5, 1.0)])
def test_vza_follows_the_scene_centre_geometry_and_its_sign_convention(tmp_path, azimuth, sign):
    ds = open_vimi(_write(tmp_path, SatelliteAzimuth=azimuth, SatelliteZenith=0.5)).compute()
    x = TRANSFORM.c + 40.0 * (np.arange(W) + 0.5)
    d = sign * 705.0 * np.tan(np.deg2rad(0.5)) + (x - x.mean()) / 1000.0
    want = np.rad2deg(np.arctan(np.abs(d) / 705.0))
    np.testing.assert_allclose(ds["vza"].values, np.broadcast_to(want, (H, W)), atol=1e-5)
    # the view zenith at the scene centre is the XML's
    assert view_zenith(np.array([0.0]), 0.0, 0.5, azimuth, 705.0)[0] == pytest.approx(0.5, abs=1e-6)


# --------------------------------------------------------------------------------------------- layout
def test_dataset_layout_coordinates_crs_and_attributes(archive):
    ds = open_vimi(archive)
    assert set(ds.data_vars) == {*THERMAL_NAMES, "ndvi", "ndsi", "red", "vza"}
    for v in ds.data_vars.values():
        assert v.dims == ("y", "x") and v.dtype == np.float32 and "units" in v.attrs
    assert ds["bt_10_80"].attrs["units"] == "K" and ds["vza"].attrs["units"] == "degree"
    assert ds.rio.crs.to_epsg() == 32650 and ds.rio.transform() == TRANSFORM and "spatial_ref" in ds.coords
    np.testing.assert_allclose(ds.x.values, TRANSFORM.c + 40.0 * (np.arange(W) + 0.5))
    np.testing.assert_allclose(ds.y.values, TRANSFORM.f - 40.0 * (np.arange(H) + 0.5))
    assert ds["time"].dtype == np.dtype("datetime64[ns]") and ds["time"].ndim == 0
    assert ds["time"].values == np.datetime64("2022-06-12T03:00:04.250")
    a = ds.attrs
    assert a["scene_id"] == archive.name[:-4] and a["source"] == str(archive)
    assert a["time"] == "2022-06-12T03:00:04.250Z" and a["platform"] == "GF5-02" and a["instrument"] == "VIMI"
    assert (a["solar_zenith"], a["solar_azimuth"], a["cloud_percent"], a["satellite_zenith"]) == (30.0, 140.0,
                                                                                                 3.5, 1.2)


def test_metadata_is_typed(archive):
    meta = VimiProduct(archive).metadata
    assert meta["GAINS"] == GAINS and meta["OFFSETS"] == OFFSETS and len(meta["CentralWavelength"]) == 12
    assert meta["CenterTime"] == np.datetime64("2022-06-12T03:00:04.250") and meta["CenterTime"].dtype.str == "<M8[ms]"
    assert isinstance(meta["SolarZenith"], float) and meta["OrbitID"] == 12345 and meta["DNBits"] == 12
    assert meta["Bands"][8:] == ["B9", "B10", "B11", "B12"]


def test_result_is_lazy_with_a_small_dask_graph(archive):
    ds = open_vimi(archive, chunks=(16, 24))
    assert all(isinstance(v.data, da.Array) for v in ds.data_vars.values())
    assert ds["bt_08_20"].chunks == ((16, 16), (24, 24))
    graph = dict(ds.__dask_graph__())
    n_chunks = 4
    assert len(graph) <= len(ds.data_vars) * (n_chunks + 1)  # one read+calibrate task per chunk, one array key
    # a second product opened in the same graph gets its own keys
    other = open_vimi(_write(archive.parent.parent / "b", SolarZenith=31.0), chunks=(16, 24))
    assert ds["bt_08_20"].data.name != other["bt_08_20"].data.name


@pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks")
def test_xarray_engine_opens_products_lazily(archive):
    ds = xr.open_dataset(archive, engine="vimi")
    ref = open_vimi(archive).compute()
    assert not isinstance(ds["bt_11_95"].data, da.Array)  # lazily indexed: a window read on access
    np.testing.assert_array_equal(ds["bt_11_95"][3:9, 5:40:3].values, ref["bt_11_95"][3:9, 5:40:3].values)
    np.testing.assert_array_equal(ds["ndvi"][7].values, ref["ndvi"][7].values)
    chunked = xr.open_dataset(archive, engine="vimi", chunks={})
    assert isinstance(chunked["ndvi"].data, da.Array)
    xr.testing.assert_identical(chunked.compute(), ref)
    small = xr.open_dataset(archive, engine="vimi", chunks={"y": 8, "x": 8}, drop_variables=["vza"])
    assert small["bt_08_20"].chunks[0] == (8, 8, 8, 8) and "vza" not in small
    be = VimiBackendEntrypoint()
    assert be.guess_can_open(str(archive)) and not be.guess_can_open("scene.tar")
    assert not be.guess_can_open(archive.with_suffix(".nc"))


def test_extracted_folder_reads_like_the_tar_and_products_are_found(archive, tmp_path):
    folder = tmp_path / "extracted" / archive.name[:-4]
    folder.mkdir(parents=True)
    for name, data in _members(archive).items():
        (folder / name).write_bytes(data)
    xr.testing.assert_identical(open_vimi(folder).compute().drop_attrs(), open_vimi(archive).compute().drop_attrs())
    assert VimiProduct(folder).members == VimiProduct(archive).members
    (tmp_path / "extracted" / "notes.txt").write_text("x")
    (tmp_path / "extracted" / ".partial.tar").write_bytes(b"")
    found = find_products([tmp_path])
    assert found == sorted([archive, folder])
    assert find_products(archive) == [archive]
    with pytest.raises(FileNotFoundError):
        find_products(tmp_path / "nope")
    c_tar, c_dir = product_checksum(archive), product_checksum(folder)
    assert len(c_tar) == 64 and c_tar != c_dir and c_tar == product_checksum(archive)
    import hashlib
    assert c_tar == hashlib.sha256(archive.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- bad products
def _cut_points(tar: Path) -> dict[str, int]:
    with tarfile.open(tar) as tf:
        m = tf.getmembers()
    return {
        "inside the first header": 100,
        "inside the first member": m[0].offset_data + m[0].size // 2,
        "inside the second header": m[1].offset + 10,
        "one byte short of the last member": m[-1].offset_data + m[-1].size - 1,
    }


@pytest.mark.parametrize("where", ["inside the first header", "inside the first member", "inside the second header",
                                   "one byte short of the last member"])
def test_truncated_tar_is_refused(archive, tmp_path, where):
    data = archive.read_bytes()
    bad = tmp_path / "t" / archive.name
    bad.parent.mkdir()
    bad.write_bytes(data[: _cut_points(archive)[where]])
    _assert_refused(bad)


def test_tar_cut_only_in_its_end_of_archive_padding_still_reads(archive, tmp_path):
    with tarfile.open(archive) as tf:
        last = tf.getmembers()[-1]
    cut = tmp_path / "p" / archive.name
    cut.parent.mkdir()
    end = last.offset_data + -(-last.size // 512) * 512  # every member whole, with its block padding
    cut.write_bytes(archive.read_bytes()[:end])
    xr.testing.assert_identical(open_vimi(cut).compute().drop_attrs(), open_vimi(archive).compute().drop_attrs())


def test_corrupt_tar_is_refused(archive, tmp_path):
    junk = tmp_path / "j" / archive.name
    junk.parent.mkdir()
    junk.write_bytes(b"this is not a tar archive" * 100)
    _assert_refused(junk, "tar")
    # a damaged header after the first member: tarfile stops silently there, the reader must not
    with tarfile.open(archive) as tf:
        second = tf.getmembers()[1].offset
    data = bytearray(archive.read_bytes())
    data[second : second + 100] = b"\xff" * 100
    broken = tmp_path / "h" / archive.name
    broken.parent.mkdir()
    broken.write_bytes(bytes(data))
    _assert_refused(broken, "corrupt")


@pytest.mark.parametrize(("name", "word"), [("../escape.txt", "'..'"), ("/tmp/abs_escape.txt", "absolute"),
                                            ("sub/../../x.txt", "'..'")])
def test_member_paths_escaping_the_archive_are_refused(archive, tmp_path, name, word):
    info = tarfile.TarInfo(name)
    info.size = 1
    bad = _retar(archive, tmp_path / "e", extra=[info])
    assert name in tarfile.open(bad).getnames()
    _assert_refused(bad, word, name)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/abs_escape.txt").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE])
def test_link_and_device_members_are_refused(archive, tmp_path, kind):
    info = tarfile.TarInfo("innocent.tif")
    info.type = kind
    info.linkname = "/etc/passwd" if kind != tarfile.CHRTYPE else ""
    _assert_refused(_retar(archive, tmp_path / "l", extra=[info]), "innocent.tif")


def test_missing_band_file_is_named(archive, tmp_path):
    bad = _retar(archive, tmp_path / "m", drop="_B7_B12.tif")
    _assert_refused(bad, "missing member", f"{archive.name[:-4]}_B7_B12.tif")


def test_geotiff_without_crs_is_refused(archive, tmp_path):
    tir, _ = _dn()
    tif = tmp_path / "nocrs.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=W, height=H, count=6, dtype="uint16",
                       transform=TRANSFORM, nodata=0) as dst:
        dst.write(tir)
    bad = _retar(archive, tmp_path / "c", replace={"_B7_B12.tif": tif.read_bytes()})
    _assert_refused(bad, "_B7_B12.tif", "no CRS")


def test_xml_without_gains_or_with_gains_of_wrong_length_is_refused(archive, tmp_path):
    xml = next(v for k, v in _members(archive).items() if k.endswith(".xml"))
    _assert_refused(_retar(archive, tmp_path / "g", replace={".xml": _xml_without(xml, "GAINS")}), "GAINS")
    text = xml.decode()
    start = text.index("<GAINS>") + len("<GAINS>")
    short = text[:start] + text[start:].split(",", 1)[1]  # drop the first of the 12 gains
    bad = _retar(archive, tmp_path / "g11", replace={".xml": short.encode()})
    _assert_refused(bad, "GAINS", "11")
    no_offsets = VimiProduct(_retar(archive, tmp_path / "o", replace={".xml": _xml_without(xml, "OFFSETS")}))
    with pytest.raises(VimiFormatError, match="XML field OFFSETS is missing"):
        _ = no_offsets.metadata


def test_a_name_that_is_not_a_product_is_refused(archive, tmp_path):
    other = tmp_path / "scene_2022.tar"
    other.write_bytes(archive.read_bytes())
    _assert_refused(other, "not a VIMI L1 product")
    with pytest.raises(VimiFormatError, match=r"scene_2022\.tar"):
        find_products([other])
    with pytest.raises(FileNotFoundError):
        open_vimi(tmp_path / archive.name.replace("E115", "E116"))


# --------------------------------------------------------------------------------------------- against the testbed
@pytest.fixture(scope="module")
def testbed(small_testbed: Path) -> Path:
    """The session's small testbed (2 scenes per region, shared with the ingest tests): read only here."""
    return small_testbed


def _truth(testbed: Path, ds: xr.Dataset) -> xr.Dataset:
    scenes = pd.read_csv(testbed / "truth" / "scenes.csv").set_index("scene_id")
    region = scenes.loc[ds.attrs["scene_id"], "region"]
    truth = xr.open_zarr(testbed / "truth" / f"{region}.zarr").sel(time=ds["time"].values, method="nearest")
    assert abs(truth["time"].values - ds["time"].values) < np.timedelta64(1, "s")
    return truth.load()


def test_testbed_scenes_match_their_truth(testbed):
    products = find_products(testbed / "archives")
    assert len(products) == 4
    for path in products:
        ds = open_vimi(path).compute()
        truth = _truth(testbed, ds)
        clear = (truth["cloud"].values == 0) & np.isfinite(truth["lst"].values)
        assert clear.mean() > 0.4
        meta = VimiProduct(path).metadata
        dn = xr.open_dataset(path, engine="vimi")  # shares grid
        assert dn.rio.transform() == ds.rio.transform()
        for c, name in enumerate(THERMAL_NAMES):
            bp = band_planck()[c]
            gain = meta["GAINS"][8 + c]
            bt = ds[name].values.astype(np.float64)
            # exclude DN clipped to 4095 by the instrument (DN 1 is below the Planck table: NaN)
            bt_max = float(bp.brightness_temperature(gain * 4095 + meta["OFFSETS"][8 + c]))
            ok = clear & np.isfinite(bt) & (bt < bt_max - 1e-3)
            assert ok.mean() > 0.4
            half_step = 0.5 * gain / bp.derivative(bt[ok])
            diff = np.abs(bt[ok] - truth[name].values[ok])
            assert np.all(diff <= 1.01 * half_step + 1e-4), (name, float(diff.max()), float(half_step.max()))
        nd = np.abs(ds["ndvi"].values - truth["ndvi"].values)[clear]
        assert np.nanmax(nd) < 0.02, float(np.nanmax(nd))
        vza = np.abs(ds["vza"].values - truth["vza"].values)[np.isfinite(truth["vza"].values)]
        assert vza.max() < 0.01, float(vza.max())


def test_parallel_window_reads_equal_a_serial_read(archive, monkeypatch):
    """NDVI and red share their DN reads; read from many threads at once, no window may get another's data.

    Each thread reads NDVI then red of its own windows, as two chunks of one window do under the threaded
    scheduler. The DN cache's lookups are slowed down (a thread switch between looking and taking, which
    real runs hit now and then) so that a check-then-read race shows up in every run."""
    from concurrent.futures import ThreadPoolExecutor

    from sftl_dask.io import vimi

    class SlowDict(dict):
        def get(self, *a):  # type: ignore[no-untyped-def, override]
            value = super().get(*a)
            time.sleep(0.001)
            return value

    made: list[vimi._NdviArray] = []
    init = vimi._NdviArray.__init__

    def patched(self, *a, **kw):  # type: ignore[no-untyped-def]
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(vimi._NdviArray, "__init__", patched)
    serial = open_vimi(archive).compute()
    ndvi, red = made[-2:]
    slow = SlowDict()
    ndvi._shared = red._shared = slow
    windows = [(y, y + 4, x, x + 6) for y in range(0, H, 4) for x in range(0, W, 6)]

    def read(w: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        return ndvi._compute(*w), red._compute(*w)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(read, windows))
    for (y0, y1, x0, x1), (nd, rd) in zip(windows, got, strict=True):
        np.testing.assert_array_equal(nd, serial["ndvi"].values[y0:y1, x0:x1])
        np.testing.assert_array_equal(rd, serial["red"].values[y0:y1, x0:x1])
