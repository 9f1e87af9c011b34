"""VIMI L1 deliveries as users have them: every packaging, the GF5-01 VIMS field set, sensor geometry, bad input.

Products are built here: the testbed's writer (read-only use) makes today's map-projected members, and this
module repacks them (``.tar.gz``, ``.tgz``, folders, one top-level folder, upper-case names, PAX headers) or
rewrites the XML to the delivered field list (no CenterTime, ESUN, EarthSunDistance, SatelliteAltitude).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import VIMI_GAINS, VIMI_OFFSETS, vimi_meta
from rasterio.errors import NotGeoreferencedWarning
from rasterio.rpc import RPC

from sftl_dask.io import vimi
from sftl_dask.io.rpc import format_rpb, format_rpc_txt, from_rasterio
from sftl_dask.io.vimi import VimiFormatError, VimiProduct, find_products, open_vimi, product_checksum
from sftl_dask.physics.channels import THERMAL_NAMES, reflective_bands
from sftl_dask.physics.planck import band_planck
from sftl_dask.physics.solar import earth_sun_distance_au
from sftl_dask.testbed.formats import vimi_product_name, write_vimi_archive

H, W = 24, 32
TRANSFORM = Affine(40.0, 0.0, 400_000.0, 0.0, -40.0, 4_470_000.0)
STEM = vimi_product_name(115.8, 40.3, "2022-06-12", 12345, 123456)
DELIVERED_FIELDS = ("ReceiveStationID", "ProduceTime", "ImageGSD", "CalibrationParam", "MapProjection", "ZoneNo")
NOT_DELIVERED = ("CenterTime", "ESUN", "EarthSunDistance", "SatelliteAltitude")


def _dn(bands: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    tir = rng.integers(800, 4000, (bands, H, W)).astype(np.uint16)
    vnir = rng.integers(200, 3000, (6, 2 * H, 2 * W)).astype(np.uint16)
    return tir, vnir


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Today's map-projected members (testbed writer), by their plain names."""
    tir, vnir = _dn()
    tar = write_vimi_archive(tmp_path_factory.mktemp("base"), STEM, vnir, tir, crs="EPSG:32650",
                             transform=TRANSFORM, meta=vimi_meta())
    with tarfile.open(tar) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def _delivered_xml(xml: bytes, *, drop: tuple[str, ...] = NOT_DELIVERED, **set_fields: str) -> bytes:
    """The XML with the fields of the GF5-01 VIMS list only (``drop`` removed), ``set_fields`` set or added."""
    text = xml.decode()
    for field in drop:
        text = re.sub(rf"\s*<{field}>[^<]*</{field}>", "", text)
    extra = {"ReceiveStationID": "MYC", "ProduceTime": "2022-06-12 09:30:00", "ImageGSD": "20,40",
             "CalibrationParam": "see GAINS/OFFSETS", "MapProjection": "UTM", "ZoneNo": "50", **set_fields}
    for field, value in extra.items():
        if f"<{field}>" in text:
            text = re.sub(rf"<{field}>[^<]*</{field}>", f"<{field}>{value}</{field}>", text)
        else:
            text = text.replace("</ProductMetaData>", f"  <{field}>{value}</{field}>\n</ProductMetaData>")
    return text.encode()


def _xml_of(m: dict[str, bytes]) -> bytes:
    return next(v for k, v in m.items() if k.endswith(".xml"))


def _pack(out: Path, m: dict[str, bytes], *, ext: str = ".tar", prefix: str = "", rename: Any = None,
          fmt: int = tarfile.USTAR_FORMAT) -> Path:
    """Write ``m`` as ``<out>/<STEM><ext>`` (an archive, or a folder for ext ""), members under ``prefix``."""
    out.mkdir(parents=True, exist_ok=True)
    names = {(rename(k) if rename else k): v for k, v in m.items()}
    if ext == "":
        root = out / STEM / prefix
        root.mkdir(parents=True, exist_ok=True)
        for k, v in names.items():
            (root / k).write_bytes(v)
        return out / STEM
    path = out / f"{STEM}{ext}"
    mode = "w:gz" if ext.lower() in (".tar.gz", ".tgz") else "w"
    with tarfile.open(path, mode, format=fmt) as tf:
        if prefix:
            d = tarfile.TarInfo(prefix.rstrip("/"))
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
        for k, v in names.items():
            info = tarfile.TarInfo(prefix + k)
            info.size = len(v)
            tf.addfile(info, io.BytesIO(v))
    return path


def _assert_refused(path: Path, *words: str, **kw: Any) -> None:
    with pytest.raises(VimiFormatError) as err:
        open_vimi(path, **kw).compute()
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def _bt(tir: np.ndarray, gains: list[float], offsets: list[float]) -> dict[str, np.ndarray]:
    out = {}
    for c, name in enumerate(THERMAL_NAMES):
        rad = gains[8 + c] * tir[2 + c].astype(np.float64) + offsets[8 + c]
        out[name] = band_planck()[c].brightness_temperature(rad).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------- delivery forms
FORMS = {
    "tar": {"ext": ".tar"},
    "tar.gz": {"ext": ".tar.gz"},
    "tgz": {"ext": ".tgz"},
    "upper-case .TAR.GZ": {"ext": ".TAR.GZ"},
    "tar.gz, one top-level folder, PAX long names": {"ext": ".tar.gz", "prefix": f"{STEM}/", "fmt": tarfile.PAX_FORMAT},
    "tar, one top-level folder, GNU long names": {"ext": ".tar", "prefix": f"{STEM}/", "fmt": tarfile.GNU_FORMAT},
    "folder": {"ext": ""},
    "folder with one folder inside": {"ext": "", "prefix": "L1/"},
    "tar.gz, .tiff members": {"ext": ".tar.gz", "rename": lambda k: k.replace(".tif", ".tiff")},
    "tar.gz, upper-case .TIF and .XML": {"ext": ".tar.gz",
                                         "rename": lambda k: k.replace(".tif", ".TIF").replace(".xml", ".XML")},
    "folder, upper-case .TIFF": {"ext": "", "rename": lambda k: k.replace(".tif", ".TIFF")},
}


@pytest.mark.parametrize("form", list(FORMS))
def test_every_delivery_form_reads_the_same_values(members, tmp_path, form):
    ref = open_vimi(_pack(tmp_path / "ref", members)).compute()
    path = _pack(tmp_path / "f", members, **FORMS[form])
    assert find_products(tmp_path / "f") == [path]
    ds = open_vimi(path, chunks=(16, 16)).compute()
    for name in [*THERMAL_NAMES, "ndvi", "red", "vza"]:
        np.testing.assert_array_equal(ds[name].values, ref[name].values, err_msg=name)
    assert ds.attrs["delivery"] == {"": "folder", ".tar": "tar"}.get(FORMS[form]["ext"], "tar.gz")
    assert ds.attrs["geometry"] == "map" and ds.rio.crs.to_epsg() == 32650
    assert ds.attrs["scene_id"] == STEM and np.isfinite(ds["bt_10_80"].values).all()


def test_reading_a_tar_gz_extracts_nothing_and_writes_nothing_beside_it(members, tmp_path):
    path = _pack(tmp_path / "g", members, ext=".tar.gz")
    before = sorted(p.name for p in path.parent.iterdir())
    ds = open_vimi(path, chunks=8)
    ds.compute()
    ds.close()
    assert sorted(p.name for p in path.parent.iterdir()) == before == [path.name]  # no .properties, no members
    assert VimiProduct(path).is_gzip and product_checksum(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def _gz_cut(path: Path, out: Path, keep: int) -> Path:
    out.mkdir()
    bad = out / path.name
    bad.write_bytes(path.read_bytes()[:keep])
    return bad


@pytest.mark.parametrize("cut", ["header", "middle", "last_kib", "trailer"])
def test_truncated_gzip_is_refused_naming_the_product(members, tmp_path, cut):
    path = _pack(tmp_path / "g", members, ext=".tar.gz")
    size = path.stat().st_size
    keep = {"header": 20, "middle": size // 2, "last_kib": size - 1024, "trailer": size - 4}[cut]
    _assert_refused(_gz_cut(path, tmp_path / cut, keep), "truncated or corrupt")


def test_corrupt_gzip_stream_is_refused(members, tmp_path):
    path = _pack(tmp_path / "g", members, ext=".tar.gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # damaged deflate data: invalid code or CRC mismatch
    bad = tmp_path / "c" / path.name
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    _assert_refused(bad, "corrupt")
    junk = tmp_path / "j" / path.name
    junk.parent.mkdir()
    junk.write_bytes(b"not gzip at all" * 50)
    _assert_refused(junk, "gzip")


def test_members_spread_over_two_folders_are_refused(members, tmp_path):
    m = {(f"a/{k}" if k.endswith(".xml") else f"b/{k}"): v for k, v in members.items()}
    path = tmp_path / "s" / f"{STEM}.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tf:
        for k, v in m.items():
            info = tarfile.TarInfo(k)
            info.size = len(v)
            tf.addfile(info, io.BytesIO(v))
    _assert_refused(path, "spread over folders")


# --------------------------------------------------------------------------------------------- metadata as delivered
def test_delivered_field_set_gives_midpoint_time_computed_esun_and_distance(members, tmp_path):
    m = dict(members)
    key = next(k for k in m if k.endswith(".xml"))
    m[key] = _delivered_xml(m[key], EndTime="2022-06-12 03:00:08.500")
    path = _pack(tmp_path / "d", m, ext=".tar.gz")
    prod = VimiProduct(path)
    assert prod.time == np.datetime64("2022-06-12T03:00:04.250") and prod.time_source.startswith("midpoint")
    assert not {"ESUN", "EarthSunDistance"} & set(prod.metadata) and prod.metadata["ZoneNo"] == "50"
    assert prod.metadata["ProduceTime"] == np.datetime64("2022-06-12T09:30:00")
    ds = open_vimi(path).compute()
    a = ds.attrs
    assert (a["time"], a["time_source"]) == ("2022-06-12T03:00:04.250Z", "midpoint of StartTime/EndTime")
    assert (a["calibration_source"], a["esun_source"], a["earth_sun_distance_source"]) == ("xml", "computed",
                                                                                          "computed")
    assert a["satellite_altitude_km"] == 705.0  # the layout's default, not delivered
    # NDVI from ESUN by trapezoids of the packaged E-490 spectrum through the B3/B4 boxcars (computed here
    # independently) and the Earth-Sun distance of the date
    spec = np.loadtxt(Path(vimi.__file__).parent.parent / "data" / "solar_e490_00a.dat", skiprows=1)
    esun = []
    for k in ("red", "nir"):
        lo, hi = reflective_bands()[k]["lower_um"], reflective_bands()[k]["upper_um"]
        inside = (spec[:, 0] >= lo) & (spec[:, 0] <= hi)
        esun.append(np.trapezoid(spec[inside, 1], spec[inside, 0]) / (spec[inside, 0][-1] - spec[inside, 0][0]))
    got = ds["ndvi"].attrs["esun_w_m2_um"]
    np.testing.assert_allclose(got, esun, rtol=3e-3)  # boxcar edges fall between 1 nm samples
    assert got == pytest.approx([1590.1, 1107.3], abs=0.1)
    d = float(earth_sun_distance_au(np.datetime64("2022-06-12T03:00:04.250")))
    assert ds["ndvi"].attrs["earth_sun_distance_au"] == pytest.approx(d, abs=1e-12)
    assert d == pytest.approx(1.01586, abs=1e-5)  # mid-June, 3 weeks before aphelion (Spencer 1971)
    _, vnir = _dn()
    k = np.pi * d**2 / np.cos(np.deg2rad(30.0))
    red = (VIMI_GAINS[2] * vnir[2]) * k / got[0]
    nir = (VIMI_GAINS[3] * vnir[3]) * k / got[1]
    red40, nir40 = (x.reshape(H, 2, W, 2).mean(axis=(1, 3)) for x in (red, nir))
    np.testing.assert_allclose(ds["ndvi"].values, (nir40 - red40) / (nir40 + red40), rtol=1e-5, atol=1e-6)


def test_xml_times_take_the_layout_time_zone_when_overridden(members, tmp_path):
    m = dict(members)
    key = next(k for k in m if k.endswith(".xml"))
    m[key] = _delivered_xml(m[key])
    path = _pack(tmp_path / "z", m)
    utc = VimiProduct(path).time
    beijing = VimiProduct(path, time_zone="Asia/Shanghai").time
    assert utc - beijing == np.timedelta64(8 * 3600 * 1000, "ms")
    assert open_vimi(path, time_zone="Asia/Shanghai").attrs["time"] == "2022-06-11T19:00:04.000Z"
    with pytest.raises(ValueError, match="Mars/Olympus"):
        VimiProduct(path, time_zone="Mars/Olympus")


def test_centertime_is_still_accepted_when_delivered(members, tmp_path):
    prod = VimiProduct(_pack(tmp_path / "c", members))
    assert prod.time == np.datetime64("2022-06-12T03:00:04.250") and prod.time_source == "CenterTime"
    ds = open_vimi(prod.path)
    assert (ds.attrs["esun_source"], ds.attrs["earth_sun_distance_source"]) == ("xml", "xml")


def test_starttime_after_endtime_is_refused_naming_both_fields(members, tmp_path):
    m = dict(members)
    key = next(k for k in m if k.endswith(".xml"))
    m[key] = _delivered_xml(m[key], StartTime="2022-06-12 03:00:09.000")
    _assert_refused(_pack(tmp_path / "t", m), "StartTime", "EndTime", "after")


def _no_gains(members: dict[str, bytes]) -> dict[str, bytes]:
    m = dict(members)
    key = next(k for k in m if k.endswith(".xml"))
    m[key] = _delivered_xml(m[key], drop=(*NOT_DELIVERED, "GAINS", "OFFSETS"))
    return m


def _table(path: Path, year: int, bands: list[str], satellite: str = "GF-5B", scale: float = 1.0) -> Path:
    rows = ["# a user's calibration table", "satellite,sensor,year,band,gain,offset,source"]
    for b in bands:
        i = int(b[1:]) - 1
        rows.append(f"{satellite},VIMI,{year},{b},{VIMI_GAINS[i] * scale!r},{VIMI_OFFSETS[i]!r},assumed: test")
    path.write_text("\n".join(rows) + "\n")
    return path


ALL_BANDS = [f"B{i}" for i in range(1, 13)]


def test_no_gains_and_no_table_entry_is_refused_naming_the_year(members, tmp_path):
    path = _pack(tmp_path / "n", _no_gains(members))
    _assert_refused(path, "GAINS", "2022", "vimi_calibration.csv")
    user = _table(tmp_path / "cal.csv", 2021, ALL_BANDS)
    _assert_refused(path, "2022", str(user), calibration=user)


def test_calibration_from_a_users_table_is_used_and_recorded(members, tmp_path):
    path = _pack(tmp_path / "u", _no_gains(members), ext=".tgz")
    user = _table(tmp_path / "cal.csv", 2022, ALL_BANDS, scale=1.01)
    ds = open_vimi(path, calibration=user).compute()
    assert ds.attrs["calibration_source"] == f"user:{user}"
    tir, _ = _dn()
    want = _bt(tir, [g * 1.01 for g in VIMI_GAINS], VIMI_OFFSETS)
    for name in THERMAL_NAMES:
        np.testing.assert_array_equal(ds[name].values, want[name])


def test_calibration_from_the_packaged_table_is_recorded(members, tmp_path, monkeypatch):
    table = _table(tmp_path / "pkg.csv", 2022, ALL_BANDS, satellite="GF5B")
    monkeypatch.setattr(vimi, "_packaged_table_text", lambda name: table.read_text())
    ds = open_vimi(_pack(tmp_path / "p", _no_gains(members))).compute()
    assert ds.attrs["calibration_source"] == "table:vimi_calibration.csv"
    want = _bt(_dn()[0], VIMI_GAINS, VIMI_OFFSETS)
    np.testing.assert_array_equal(ds["bt_11_95"].values, want["bt_11_95"])


def test_table_entry_lacking_a_band_or_malformed_is_refused(members, tmp_path):
    path = _pack(tmp_path / "b", _no_gains(members))
    partial = _table(tmp_path / "partial.csv", 2022, ["B3", "B4", "B9", "B10", "B11"])
    _assert_refused(path, "lacks bands", "B12", calibration=partial)
    bad = tmp_path / "bad.csv"
    bad.write_text("satellite,sensor,year,band,gain,offset,source\nGF5B,VIMI,2022,B9,-0.5,0,x\n")
    _assert_refused(path, str(bad), "row 1", "gain", calibration=bad)
    cols = tmp_path / "cols.csv"
    cols.write_text("satellite,year,band,gain\n")
    _assert_refused(path, "missing columns", calibration=cols)


# --------------------------------------------------------------------------------------------- rasters
def _geotiff(data: np.ndarray, *, crs: str | None = "EPSG:32650", transform: Affine | None = TRANSFORM,
             rpcs: RPC | None = None) -> bytes:
    mem = io.BytesIO()
    kw: dict[str, Any] = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
                          "dtype": "uint16", "nodata": 0}
    if crs is not None:
        kw.update(crs=crs, transform=transform)
    if rpcs is not None:
        kw["rpcs"] = rpcs
    with warnings.catch_warnings(), rasterio.io.MemoryFile() as mf:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # sensor geometry: no transform by design
        with mf.open(**kw) as dst:
            dst.write(data)
        mem.write(mf.read())
    return mem.getvalue()


def test_an_unknown_band_count_is_refused_naming_the_member_and_count(members, tmp_path):
    tir5, _ = _dn(bands=5)
    m = dict(members)
    m[f"{STEM}_B7_B12.tif"] = _geotiff(tir5)
    _assert_refused(_pack(tmp_path / "c", m, ext=".tar.gz"), f"{STEM}_B7_B12.tif", "5 bands", "unknown band count")


_RPC = RPC(height_off=1000.0, height_scale=500.0, lat_off=40.3, lat_scale=0.1, line_den_coeff=[1.0] + [0.0] * 19,
           line_num_coeff=[0.0, 0.0, -1.0] + [0.0] * 17, line_off=H / 2, line_scale=H / 2, long_off=115.8,
           long_scale=0.1, samp_den_coeff=[1.0] + [0.0] * 19, samp_num_coeff=[0.0, 1.0] + [0.0] * 18,
           samp_off=W / 2, samp_scale=W / 2)


def _sensor(members: dict[str, bytes], *, rpc: str) -> dict[str, bytes]:
    """The members in sensor geometry (no CRS, no geotransform) with RPCs as ``rpc``: rpb, txt, tags, none, or
    ``bad-rpb`` (an ``.rpb`` lacking most keys)."""
    tir, vnir = _dn()
    m = dict(members)
    tags = _RPC if rpc == "tags" else None
    m[f"{STEM}_B7_B12.tif"] = _geotiff(tir, crs=None, rpcs=tags)
    m[f"{STEM}_B1_B6.tif"] = _geotiff(vnir, crs=None, rpcs=tags)
    for ft in ("B1_B6", "B7_B12"):
        if rpc == "rpb":
            m[f"{STEM}_{ft}.rpb"] = format_rpb(from_rasterio(_RPC)).encode()
        elif rpc == "txt":
            m[f"{STEM}_{ft}_rpc.txt"] = format_rpc_txt(from_rasterio(_RPC)).encode()
        elif rpc == "bad-rpb":
            m[f"{STEM}_{ft}.rpb"] = b"satId = \"GF5B\";\nBEGIN_GROUP = IMAGE\n\tlineOffset = 12;\nEND_GROUP = IMAGE\n"
    return m


@pytest.mark.parametrize(("rpc", "member"), [("rpb", f"{STEM}_B7_B12.rpb"), ("txt", f"{STEM}_B7_B12_rpc.txt"),
                                             ("tags", f"{STEM}_B7_B12.tif (RPC tags)")])
def test_sensor_geometry_with_rpcs_is_recognised(members, tmp_path, rpc, member):
    path = _pack(tmp_path / "s", _sensor(members, rpc=rpc), ext=".tar.gz", prefix=f"{STEM}/")
    ds = open_vimi(path).compute()
    assert ds.attrs["geometry"] == "sensor" and ds.rio.crs is None
    assert ds.attrs["rpc_member"] == f"{STEM}/{member}"
    assert ds["x"].attrs["units"] == "pixel" and ds.sizes == {"y": H, "x": W}
    want = _bt(_dn()[0], VIMI_GAINS, VIMI_OFFSETS)
    np.testing.assert_array_equal(ds["bt_08_63"].values, want["bt_08_63"])
    assert np.isfinite(ds["ndvi"].values).all() and np.isfinite(ds["vza"].values).all()
    if rpc != "tags":
        assert sorted(VimiProduct(path).rpc_members) == ["B1_B6", "B7_B12"]


def test_sensor_geometry_without_rpcs_is_refused(members, tmp_path):
    path = _pack(tmp_path / "n", _sensor(members, rpc="none"), ext=".tar.gz")
    _assert_refused(path, f"{STEM}_B", "in sensor geometry) and has no RPCs")


def test_sensor_geometry_with_malformed_rpcs_is_refused(members, tmp_path):
    """Opening reads the thermal raster's RPCs (its view zenith comes from them): one line naming the member."""
    path = _pack(tmp_path / "m", _sensor(members, rpc="bad-rpb"), ext=".tar.gz")
    _assert_refused(path, f"member {STEM}_B7_B12.rpb: malformed RPCs: missing key")


def test_gzip_members_are_read_from_one_pass_cached_per_process(members, tmp_path, monkeypatch):
    path = _pack(tmp_path / "c", members, ext=".tar.gz")
    opened = []
    real = gzip.open
    monkeypatch.setattr(vimi.gzip, "open", lambda *a, **k: opened.append(a) or real(*a, **k))
    VimiProduct(path)
    VimiProduct(path).metadata  # noqa: B018
    assert len(opened) == 1
