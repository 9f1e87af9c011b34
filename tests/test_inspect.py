"""``sftl inspect``: one line (or one JSON object) per product, exit 2 naming the member or field of a bad one.

Products: the testbed's map-projected archives (``build_testbed``), small map products repacked as users have
them (``.tar.gz``, ``.tiff`` members, one top-level folder), and products in sensor geometry whose RPCs are fitted
to the testbed's pushbroom model (``.rpb``, ``_rpc.txt``, RPC tags). Footprints are checked against independent
computations: pyproj on the grid corners, and the rigorous sensor model's own localization of the image outline.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import vimi_meta
from pyproj import Transformer
from rasterio.errors import NotGeoreferencedWarning

from sftl_dask.cli import main
from sftl_dask.io.inspect import inspect_product, inspect_products, sensor_footprint
from sftl_dask.io.rpc import format_rpb, format_rpc_txt, to_rasterio
from sftl_dask.io.vimi import VimiFormatError
from sftl_dask.testbed.formats import vimi_product_name, write_vimi_archive
from sftl_dask.testbed.sensor import PushbroomSensor, fit_sensor_rpc

H, W = 96, 128  # thermal grid of the small products (40 m)
TRANSFORM = Affine(40.0, 0.0, 400_000.0, 0.0, -40.0, 4_470_000.0)
STEM = vimi_product_name(115.8, 40.3, "2022-06-12", 12345, 123456)
TILE_M = 1024 * 40.0


def _dn() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    return (rng.integers(800, 4000, (6, H, W)).astype(np.uint16),
            rng.integers(200, 3000, (6, 2 * H, 2 * W)).astype(np.uint16))


@pytest.fixture(scope="module")
def members(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A map-projected product's members (the testbed writer), by plain name."""
    tir, vnir = _dn()
    tar = write_vimi_archive(tmp_path_factory.mktemp("base"), STEM, vnir, tir, crs="EPSG:32650", transform=TRANSFORM,
                             meta=vimi_meta())
    with tarfile.open(tar) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}


def _pack(out: Path, m: dict[str, bytes], ext: str, prefix: str = "") -> Path:
    """``m`` as ``<out>/<STEM><ext>`` (a folder when ``ext`` is ""), members under ``prefix``."""
    out.mkdir(parents=True, exist_ok=True)
    if ext == "":
        root = out / STEM / prefix
        root.mkdir(parents=True)
        for k, v in m.items():
            (root / k).write_bytes(v)
        return out / STEM
    path = out / f"{STEM}{ext}"
    with tarfile.open(path, "w:gz" if ext == ".tar.gz" else "w", format=tarfile.PAX_FORMAT) as tf:
        for k, v in m.items():
            info = tarfile.TarInfo(prefix + k)
            info.size = len(v)
            tf.addfile(info, io.BytesIO(v))
    return path


def _xml(m: dict[str, bytes], drop: tuple[str, ...] = ("CenterTime",), **fields: str) -> dict[str, bytes]:
    """``m`` with its XML's ``drop`` fields removed and ``fields`` set."""
    key = next(k for k in m if k.endswith(".xml"))
    text = m[key].decode()
    for f in drop:
        text = re.sub(rf"\s*<{f}>[^<]*</{f}>", "", text)
    for f, v in fields.items():
        text = re.sub(rf"<{f}>[^<]*</{f}>", f"<{f}>{v}</{f}>", text)
    return {**m, key: text.encode()}


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["inspect", *args])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------------------------- the testbed
def _member_grid(archive: Path) -> tuple[int, Affine, int, int]:
    """EPSG, transform and size of an archive's B7_B12 GeoTIFF, read here with tarfile and rasterio alone."""
    with tarfile.open(archive) as tf:
        name = next(n for n in tf.getnames() if n.endswith("_B7_B12.tif"))
        data = tf.extractfile(name).read()
    with rasterio.io.MemoryFile(data) as mf, mf.open() as src:
        return src.crs.to_epsg(), src.transform, src.width, src.height


def test_the_testbeds_archives_one_line_each_with_pinned_footprints_and_tiles(small_testbed, capsys):
    rc, out, err = _run(capsys, str(small_testbed / "archives"))
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0] == ("GF5B_VIMI_E100.4_N38.9_20220317_002885_L10001001000  tar .tif  2022-03-17T03:49:12.000Z "
                        "(CenterTime)  map  calibration xml  lon 100.2324..100.5318 lat 38.7527..38.9868  zone 47N  "
                        "4 tiles of 1024 px: 47N_138_014 47N_138_015 47N_139_014 47N_139_015")
    assert lines[3].startswith("GF5B_VIMI_E115.8_N40.3_20220108_001893_L10000001001  tar .tif  "
                               "2022-01-08T03:01:13.000Z (CenterTime)")
    assert lines[3].endswith("lon 115.6346..115.9401 lat 40.2320..40.4658  zone 50N  4 tiles of 1024 px: "
                             "50N_134_009 50N_134_010 50N_135_009 50N_135_010")
    rc, out, _ = _run(capsys, str(small_testbed / "archives"), "--json")
    docs = json.loads(out)
    assert rc == 0 and [d["product"] for d in docs] == [line.split()[0] for line in lines]
    for d in docs:
        epsg, t, w, h = _member_grid(Path(d["path"]))
        # independent: pyproj on the four corners of the member's grid
        xs, ys = zip(*(t * (c, r) for c, r in ((0, 0), (w, 0), (w, h), (0, h))), strict=True)
        lon, lat = Transformer.from_crs(f"EPSG:{epsg}", "EPSG:4326", always_xy=True).transform(xs, ys)
        fp = d["footprint"]
        np.testing.assert_allclose([fp["west"], fp["south"], fp["east"], fp["north"]],
                                   [min(lon), min(lat), max(lon), max(lat)], atol=1e-4)
        # independent: the tile rows and columns the grid's edges fall in (rows southwards from 1e7 m)
        cols = range(int(t.c // TILE_M), int((t.c + w * t.a - 1e-6) // TILE_M) + 1)
        rows = range(int((1e7 - t.f) // TILE_M), int((1e7 - t.f - h * t.e - 1e-6) // TILE_M) + 1)
        assert d["tiles"] == [f"{epsg % 100}N_{r:03d}_{c:03d}" for r in rows for c in cols]
        assert (d["geometry"], d["rpc_member"], d["delivery"], d["member_ext"]) == ("map", "", "tar", ".tif")
        assert (d["epsg"], d["calibration_source"], d["time_source"]) == (epsg, "xml", "CenterTime")


# ------------------------------------------------------------------------------------------- map products as delivered
def test_a_tar_gz_with_tiff_members_in_a_folder_and_the_delivered_fields(members, tmp_path, capsys):
    m = {k.replace(".tif", ".tiff"): v for k, v in _xml(members, drop=("CenterTime", "ESUN")).items()}
    path = _pack(tmp_path / "g", m, ".tar.gz", prefix=f"{STEM}/")
    s = inspect_product(path)
    assert (s.delivery, s.member_ext, s.member_folder) == ("tar.gz", ".tiff", STEM)
    assert (s.time, s.time_source) == ("2022-06-12T03:00:04.000Z", "midpoint of StartTime/EndTime")
    assert (s.geometry, s.calibration_source, s.utm_zone, s.epsg) == ("map", "xml", "50N", 32650)
    lon, lat = Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True).transform(
        [400_000.0, 405_120.0, 405_120.0, 400_000.0], [4_470_000.0, 4_470_000.0, 4_466_160.0, 4_466_160.0])
    np.testing.assert_allclose(s.footprint, [min(lon), min(lat), max(lon), max(lat)], atol=1e-5)
    np.testing.assert_allclose(s.footprint, [115.8220, 40.3400, 115.8829, 40.3752], atol=1e-3)
    # rows: (1e7 - 4.47e6) / 40960 = 135.01 -> 135 (the grid's 3.84 km stay in it); cols 400 / 40.96 = 9.77 -> 9
    assert s.tiles == ("50N_135_009",)
    # 64 px = 2560 m: cols 400 / 2.56 = 156.25 .. 405.12 / 2.56 = 158.25, rows 5530 / 2.56 = 2160.2 .. 2161.7
    assert inspect_product(path, tile_px=64).tiles == tuple(f"50N_{r}_{c}" for r in (2160, 2161)
                                                            for c in (156, 157, 158))
    rc, out, err = _run(capsys, str(tmp_path / "g"))
    assert rc == 0 and err == "" and out == s.line() + "\n"
    assert f"tar.gz .tiff in {STEM}/" in out


def test_a_non_utm_map_product_is_refused_naming_the_member(tmp_path, capsys):
    tir, vnir = _dn()
    tar = write_vimi_archive(tmp_path / "ll", STEM, vnir, tir, crs="EPSG:4326",
                             transform=Affine(0.0004, 0, 115.8, 0, -0.0004, 40.4), meta=vimi_meta())
    rc, out, err = _run(capsys, str(tar))
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"sftl inspect: error: {tar}: member {STEM}_B7_B12.tif: CRS EPSG:4326 is not a WGS 84 UTM")


# --------------------------------------------------------------------------------------------- sensor geometry
@pytest.fixture(scope="module")
def sensor() -> dict[str, Any]:
    """The pushbroom of a small scene at 115.8 E 40.3 N, and RPCs fitted to it for the 40 m and 20 m rasters."""
    tir = PushbroomSensor(115.8, 40.3, lines=H, samples=W)
    vnir = PushbroomSensor(115.8, 40.3, lines=2 * H, samples=2 * W, gsd_m=20.0)
    return {"model": tir, "tir": fit_sensor_rpc(tir), "vnir": fit_sensor_rpc(vnir)}


def _geotiff(data: np.ndarray, rpcs: Any = None) -> bytes:
    """A GeoTIFF in sensor geometry: no CRS, no geotransform (RPC tags when ``rpcs`` is given)."""
    kw: dict[str, Any] = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
                          "dtype": "uint16", "nodata": 0}
    if rpcs is not None:
        kw["rpcs"] = rpcs
    with warnings.catch_warnings(), rasterio.io.MemoryFile() as mf:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with mf.open(**kw) as dst:
            dst.write(data)
        return bytes(mf.read())


def _sensor_members(members: dict[str, bytes], sensor: dict[str, Any], rpc: str) -> dict[str, bytes]:
    """The members in sensor geometry, RPCs as ``rpc``: ``rpb``, ``txt``, ``tags`` or ``none``."""
    tir, vnir = _dn()
    m = _xml(members)
    for ft, dn, fit in (("B7_B12", tir, sensor["tir"]), ("B1_B6", vnir, sensor["vnir"])):
        m[f"{STEM}_{ft}.tif"] = _geotiff(dn, to_rasterio(fit.rpc) if rpc == "tags" else None)
        if rpc == "rpb":
            m[f"{STEM}_{ft}.rpb"] = format_rpb(fit.rpc).encode()
        elif rpc == "txt":
            m[f"{STEM}_{ft}_rpc.txt"] = format_rpc_txt(fit.rpc).encode()
    return m


def _outline_truth(model: PushbroomSensor) -> tuple[np.ndarray, np.ndarray]:
    """The rigorous model's lon/lat of the image outline (outer pixel edges, corners and edge midpoints) at 0 m."""
    line = np.array([-0.5, -0.5, -0.5, H / 2, H - 0.5, H - 0.5, H - 0.5, H / 2])
    sample = np.array([-0.5, W / 2, W - 0.5, W - 0.5, W - 0.5, W / 2, -0.5, -0.5])
    return model.localize(line, sample, np.zeros_like(line))


@pytest.mark.parametrize(("rpc", "ext", "member"), [("rpb", ".tar.gz", f"{STEM}_B7_B12.rpb"),
                                                    ("txt", "", f"{STEM}_B7_B12_rpc.txt"),
                                                    ("tags", ".tar", f"{STEM}_B7_B12.tif (RPC tags)"),
                                                    ("tags", ".tar.gz", f"{STEM}_B7_B12.tif (RPC tags)")])
def test_sensor_geometry_footprint_from_the_rpcs_matches_the_sensor_model(members, sensor, tmp_path, capsys, rpc,
                                                                          ext, member):
    assert sensor["tir"].check_max_px < 0.05
    path = _pack(tmp_path / "s", _sensor_members(members, sensor, rpc), ext)
    s = inspect_product(path)
    assert (s.geometry, s.rpc_member, s.footprint_source) == ("sensor", member, "RPC image outline at h = 0 m")
    assert s.delivery == {"": "folder", ".tar": "tar", ".tar.gz": "tar.gz"}[ext]
    lon, lat = _outline_truth(sensor["model"])  # independent: the pushbroom model itself, not its RPCs
    np.testing.assert_allclose(s.footprint, [lon.min(), lat.min(), lon.max(), lat.max()], atol=2e-6)  # ~0.2 m
    np.testing.assert_allclose(s.footprint, [115.7654, 40.2777, 115.8346, 40.3222], atol=1e-3)
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True).transform(lon, lat)
    cols = range(int(x.min() // TILE_M), int(x.max() // TILE_M) + 1)
    rows = range(int((1e7 - y.max()) // TILE_M), int((1e7 - y.min()) // TILE_M) + 1)
    assert s.tiles == tuple(f"50N_{r:03d}_{c:03d}" for r in rows for c in cols) == ("50N_135_009",)
    assert (s.utm_zone, s.time_source, s.calibration_source) == ("50N", "midpoint of StartTime/EndTime", "xml")
    rc, out, err = _run(capsys, str(path), "--json")
    assert rc == 0 and err == ""
    (d,) = json.loads(out)
    assert d == s.to_dict() and d["footprint"]["west"] == pytest.approx(s.footprint[0])


def test_sensor_footprint_is_the_outline_localized_at_one_height(sensor):
    rpc = sensor["tir"].rpc
    (w0, _, e0, _), centre = sensor_footprint(rpc, H, W)
    (w1, _, e1, _), _ = sensor_footprint(rpc, H, W, h_m=2000.0)
    assert centre == pytest.approx((115.8, 40.3), abs=1e-3)
    # km (85.1 km per degree of lon at 40.3 N): the rotated 5.12 x 3.84 km image spans more than its width in
    # longitude and less than its diagonal (the track runs ~12 deg off north-south at 40 N)
    assert W * 0.04 < (e0 - w0) * 85.1 < np.hypot(W, H) * 0.04
    assert (w1, e1) != pytest.approx((w0, e0), abs=1e-9)  # off-nadir lines of sight move with height
    with pytest.raises(ValueError, match="do not localize"):
        sensor_footprint(rpc, 10**7, 10**7)


# --------------------------------------------------------------------------------------------- bad products -> exit 2
def _refused(capsys: pytest.CaptureFixture[str], path: Path, *words: str) -> str:
    rc, out, err = _run(capsys, str(path))
    assert rc == 2 and out == "" and err.count("\n") == 1, (rc, out, err)
    assert err.startswith(f"sftl inspect: error: {path}"), err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.mark.parametrize("cut", ["middle", "trailer"])
def test_a_truncated_gzip_exits_2_naming_the_product(members, tmp_path, capsys, cut):
    path = _pack(tmp_path / "g", members, ".tar.gz")
    data = path.read_bytes()
    bad = tmp_path / cut / path.name
    bad.parent.mkdir()
    bad.write_bytes(data[: {"middle": len(data) // 2, "trailer": len(data) - 4}[cut]])
    _refused(capsys, bad, "truncated or corrupt")


def test_sensor_geometry_without_rpcs_exits_2_naming_the_member(members, sensor, tmp_path, capsys):
    path = _pack(tmp_path / "n", _sensor_members(members, sensor, "none"), ".tar.gz")
    _refused(capsys, path, f"member {STEM}_B", "in sensor geometry) and has no RPCs")


def test_malformed_rpcs_exit_2_naming_the_member_and_key(members, sensor, tmp_path, capsys):
    m = _sensor_members(members, sensor, "rpb")
    m[f"{STEM}_B7_B12.rpb"] = re.sub(rb"\tlineScale = [^;]*;\n", b"", m[f"{STEM}_B7_B12.rpb"])
    path = _pack(tmp_path / "r", m, ".tar.gz")
    _refused(capsys, path, f"member {STEM}_B7_B12.rpb: malformed RPCs: missing key lineScale")
    folder = _pack(tmp_path / "f", {k.replace(".rpb", "_rpc.txt"): v for k, v in m.items()}, "")
    _refused(capsys, folder, f"member {STEM}_B7_B12_rpc.txt: malformed RPCs: missing key")


def test_starttime_after_endtime_exits_2_naming_the_fields(members, tmp_path, capsys):
    path = _pack(tmp_path / "t", _xml(members, StartTime="2022-06-12 03:00:09.000"), ".tar")
    _refused(capsys, path, "StartTime", "EndTime", "after")


def test_one_bad_product_among_good_ones_stops_the_listing(members, tmp_path, capsys):
    good = _pack(tmp_path / "d" / "a", members, ".tar")
    bad = _pack(tmp_path / "d" / "b", _xml(members, StartTime="2022-06-12 03:00:09.000"), ".tar.gz")
    assert good.exists()
    _refused(capsys, bad, "StartTime")
    rc, out, err = _run(capsys, str(tmp_path / "d"))
    assert rc == 2 and out == "" and err.startswith(f"sftl inspect: error: {bad}: ")
    with pytest.raises(VimiFormatError, match="StartTime"):
        inspect_products([good, bad])


def test_no_products_and_missing_paths_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc, out, err = _run(capsys, str(tmp_path / "empty"))
    assert (rc, out) == (2, "") and err == f"sftl inspect: error: {tmp_path / 'empty'}: no VIMI L1 products found\n"
    rc, _, err = _run(capsys, str(tmp_path / "nope"))
    assert rc == 2 and "no such file or folder" in err
