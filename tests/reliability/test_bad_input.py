"""Bad input across the CLI verbs (issue 13): real damaged inputs through ``sftl_dask.cli.main`` in this process.

A refused input (exit 2) is one line on stderr, ``sftl <verb>: error: ...``, that names the file, key or value,
no traceback, and nothing written that looks complete. A bad *archive* among the archives of ``sftl ingest`` is
a per-scene failure: exit 1 (also when every archive fails), the scene named with its reason on stdout, and no
slot of the cube marked complete (``ingest_ok``) for it.

Everything is small: one 32 x 48 px VIMI archive written with the testbed's format writers, one ERA5 file and
one GED tile around it, a 12 x 12 px LST store with one site, a small DNN artifact. The verbs that always use a
cluster get ``--scheduler`` of one module-wide single-worker cluster (a real address, the real code path), so
no case pays a cluster start of its own.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import shutil
import socket
import tarfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import yaml
from affine import Affine
from helpers import VIMI_GAINS, VIMI_OFFSETS, put_pickle_in_program, vimi_meta

from sftl_dask.cli import main
from sftl_dask.io.cube import cube_stores, read_slots

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

H, W = 32, 48  # the archive's 40 m thermal grid
CRS = "EPSG:32650"
TRANSFORM = Affine(40.0, 0.0, 400_000.0, 0.0, -40.0, 4_470_000.0)  # centre 115.83 E, 40.37 N
GAINS = VIMI_GAINS
META: dict[str, Any] = vimi_meta(BottomRightLatitude=40.3, BottomLeftLatitude=40.3)
LST_TIMES = np.array(["2022-06-01T03:30", "2022-06-17T03:30"], dtype="datetime64[ns]")
SITE_PIXEL = (5, 5)
TRAIN_BASE: dict[str, Any] = {
    "name": "tiny", "direction": "SiHuHe", "seed": 0,
    "data": {"testbed": {"path": None}},  # the synthetic world, built under the work folder (named: never implied)
    "model": {"name": "dnn", "params": {"hidden": [8]}},
    "pretrain": {"epochs": 1, "batch_size": 1024, "lr": 0.003, "holdout_fraction": 0.2},
    "finetune": {"strategy": "full", "epochs": 1, "lr": 0.001, "split": "chronological", "test_fraction": 0.3},
    "transfer": {"k": [5], "repeats": 1},
}
GRID: dict[str, Any] = {"models": ["dnn"], "strategies": ["full"], "directions": ["SiHuHe"], "seeds": [0]}


# --------------------------------------------------------------------------------------------- checks
def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` in this process: exit code, stdout, stderr."""
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _assert_refused(rc: int, err: str, verb: str, *named: object) -> str:
    """Exit 2, stderr exactly one line ``sftl <verb>: error: ...`` naming each of ``named``, no traceback."""
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sftl {verb}: error: "), lines[0]
    for name in named:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def _assert_scene_failed(rc: int, out: str, err: str, cube: Path, scene: str, *reason: str) -> str:
    """Exit 1 (not 0, not 2), the scene named once on stdout with its reason, no traceback, no slot complete."""
    assert rc == 1, (rc, out, err)
    assert "Traceback" not in out + err, out + err
    assert "ingested 0 scene(s)" in out and "failed 1 " in out, out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith(f"failed: {scene}: ")]
    assert len(lines) == 1, out
    for words in reason:
        assert words in lines[0], (words, lines[0])
    for store in cube_stores(cube).values():
        _, slots = read_slots(store)
        assert not [s for s in slots if s["scene_id"] == scene and s["ingest_ok"]], slots
    return lines[0]


def _absent(out: Path) -> bool:
    """Nothing at ``out``, and no staged (hidden, half-written) copy of it beside it."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


# --------------------------------------------------------------------------------------------- VIMI products
def _dn() -> tuple[np.ndarray, np.ndarray]:
    """DN of B1-B6 (20 m) and B7-B12 (40 m): a smooth ~300 K scene, vegetated (NIR above red)."""
    from sftl_dask.physics.planck import band_planck

    yy, xx = np.mgrid[0:H, 0:W]
    tir = np.full((6, H, W), 1000, np.uint16)
    for c, bp in enumerate(band_planck()):
        t = 300.0 + 3.0 * np.sin(yy / 5.0) + 0.05 * xx - 0.8 * c
        tir[2 + c] = np.clip(np.rint((bp.radiance(t) - VIMI_OFFSETS[8 + c]) / GAINS[8 + c]), 1, 4095)
    rng = np.random.default_rng(0)
    vnir = rng.integers(800, 1200, (6, 2 * H, 2 * W)).astype(np.uint16)
    vnir[3] = rng.integers(2500, 3000, (2 * H, 2 * W))
    return vnir, tir


def _members(tar: Path) -> dict[str, bytes]:
    with tarfile.open(tar) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]


def _geotiff(data: np.ndarray, *, crs: str = CRS, transform: Affine = TRANSFORM, nodata: float | None = 0) -> bytes:
    """A GeoTIFF of ``data`` (bands, rows, cols) in memory, of ``data``'s dtype."""
    from rasterio.io import MemoryFile

    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                      dtype=data.dtype.name, crs=crs, transform=transform, nodata=nodata) as dst:
            dst.write(data)
        return bytes(mem.read())


Edit = bytes | Callable[[bytes], bytes]


def _product(out: Path, pid: int, *, date: str = "2022-06-12", meta: Mapping[str, Any] | None = None,
             replace: Mapping[str, Edit] | None = None, extra: list[tarfile.TarInfo] | None = None) -> Path:
    """A product ``<stem>.tar`` (product id ``pid``) written by the testbed's archive writer, then re-packed with
    members replaced (by name suffix: new bytes, or a function of the old ones) and extra members added."""
    from sftl_dask.testbed.formats import vimi_product_name, write_vimi_archive

    stem = vimi_product_name(115.8, 40.3, date, 12345, pid)
    vnir, tir = _dn()
    path = write_vimi_archive(out, stem, vnir, tir, crs=CRS, transform=TRANSFORM, meta={**META, **(meta or {})})
    if not replace and not extra:
        return path
    members = _members(path)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members.items():
            for suffix, new in (replace or {}).items():
                if name.endswith(suffix):
                    data = new(data) if callable(new) else new
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _xml_field(field: str, value: str | None) -> Callable[[bytes], bytes]:
    """An XML edit: ``<field>`` set to ``value``, or its element removed (``None``)."""
    def edit(xml: bytes) -> bytes:
        pattern = rf"<{field}>[^<]*</{field}>\s*"
        new = "" if value is None else f"<{field}>{value}</{field}>\n"
        text, n = re.subn(pattern, new, xml.decode())
        assert n == 1, field
        return text.encode()

    return edit


def _tir_with(dtype: str, values: Mapping[tuple[int, int, int], float]) -> bytes:
    """The B7_B12 GeoTIFF of :func:`_dn` stored as ``dtype``, with some pixels (band, row, col) set."""
    _, tir = _dn()
    data = tir.astype(dtype)
    for key, v in values.items():
        data[key] = v
    return _geotiff(data)


# --------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """The address of a one-worker local cluster, given to the verbs as ``--scheduler``."""
    from sftl_dask.cluster import get_client

    with get_client(n_workers=1) as client:
        yield client.scheduler.address


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A good product, ERA5 (2022-06-12, 38-42 N, 114-118 E) and a GED tile (40-41 N, 115-116 E) around it."""
    from sftl_dask.testbed.formats import write_era5_tcwv, write_ged_tile

    root = tmp_path_factory.mktemp("world")
    good = _product(root / "good", 1)
    times = np.datetime64("2022-06-12T00:00") + np.arange(24) * np.timedelta64(1, "h")
    lats, lons = np.arange(42.0, 37.99, -0.25), np.arange(114.0, 118.01, 0.25)
    era5 = write_era5_tcwv(root / "era5" / "era5_202206.nc", np.full((24, lats.size, lons.size), 20.0), times,
                           lats, lons)
    far = write_era5_tcwv(root / "era5_far" / "era5_far.nc", np.full((24, 9, 9), 20.0), times,
                          np.arange(24.0, 21.99, -0.25), np.arange(100.0, 102.01, 0.25))
    n = 100
    la = 41.0 - (np.arange(n) + 0.5) / n
    lo = 115.0 + (np.arange(n) + 0.5) / n
    glat, glon = np.meshgrid(la, lo, indexing="ij")
    ones = np.ones(glat.shape)
    for folder, emis_value in (("ged", 0.96), ("ged_fill", np.nan)):
        emis = np.full((5, n, n), emis_value)
        write_ged_tile(root / folder, 41, 115, emis, np.full_like(emis, 0.01), 0.5 * ones, 0.05 * ones,
                       np.ones(glat.shape, np.uint8), glat, glon, 500.0 * ones)
    return {"root": root, "good": good, "era5": era5, "era5_far": far, "ged": root / "ged",
            "ged_fill": root / "ged_fill"}


def _ingest(archive: Path, world: dict[str, Path], scheduler: str, capsys: pytest.CaptureFixture[str], tmp: Path,
            *, era5: Path | None = None, ged: Path | None = None) -> tuple[int, str, str, Path]:
    """``sftl ingest ARCHIVE --cube <tmp>/cube`` on the module's cluster: exit code, stdout, stderr, the cube."""
    cube = tmp / "cube"
    rc, out, err = _run(["ingest", archive, "--cube", cube, "--era5", era5 or world["era5"], "--ged",
                         ged or world["ged"], "--scheduler", scheduler], capsys)
    return rc, out, err, cube


def _ingest_fails(archive: Path, world: dict[str, Path], scheduler: str, capsys: pytest.CaptureFixture[str],
                  tmp: Path, *reason: str, era5: Path | None = None, ged: Path | None = None) -> str:
    """Ingest one archive: it must fail as a scene (see :func:`_assert_scene_failed`); returns its line."""
    rc, out, err, cube = _ingest(archive, world, scheduler, capsys, tmp, era5=era5, ged=ged)
    return _assert_scene_failed(rc, out, err, cube, archive.stem, *reason)


@pytest.fixture(scope="module")
def lst(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 12 x 12 px LST store of two complete time steps, one site at a pixel, its station file, the site table."""
    import pandas as pd
    from helpers import lst_store_from_arrays, pixel_lonlat, write_station_csv

    root = tmp_path_factory.mktemp("lst")
    shape = (LST_TIMES.size, 12, 12)
    store = lst_store_from_arrays(root / "lst" / "g.zarr", LST_TIMES, np.full(shape, 300.0), np.full(shape, 1.0),
                                  np.zeros(shape, np.uint16))
    lon, lat = pixel_lonlat(*SITE_PIXEL)
    write_station_csv(root / "insitu" / "A1.csv", "A1", lon, lat, [(str(t), 300.0, 0.0) for t in LST_TIMES])
    pd.DataFrame([{"id": "A1", "region": "north", "lon": lon, "lat": lat}]).to_csv(root / "sites.csv", index=False)
    return {"root": root, "lst": store.parent, "insitu": root / "insitu", "sites": root / "sites.csv"}


def _station(lst: dict[str, Path], tmp: Path, edit: Callable[[list[str]], list[str]]) -> Path:
    """A copy of the in situ folder whose station file's lines went through ``edit``."""
    folder = tmp / "insitu"
    shutil.copytree(lst["insitu"], folder)
    path = folder / "A1.csv"
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    return folder


def _validate(lst: dict[str, Path], insitu: Path, out: Path, scheduler: str,
              capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return _run(["validate", "--lst", lst["lst"], "--insitu", insitu, "--sites", lst["sites"], "--out", out,
                 "--scheduler", scheduler], capsys)


@pytest.fixture(scope="module")
def retrieval(tmp_path_factory: pytest.TempPathFactory, retrieval_model: Callable[..., Path]) -> dict[str, Path]:
    """A one-scene 40 x 40 px scene cube and a small DNN artifact (TorchScript and torch.export program)."""
    from helpers import synthetic_cube

    root = tmp_path_factory.mktemp("retrieval")
    return {"cube": synthetic_cube(root / "cube.zarr", 1, 40, 40), "dnn": retrieval_model("dnn")}


def _artifact_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rehash(art: Path) -> None:
    """Rewrite the artifact's ``sha256`` manifest so that every file in it passes its hash."""
    names = sorted(p.name for p in art.iterdir() if p.name != "sha256")
    (art / "sha256").write_text("".join(f"{hashlib.sha256((art / n).read_bytes()).hexdigest()}  {n}\n"
                                        for n in names))


def _retrieve(cube: Path, model: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return _run(["retrieve", "--cube", cube, "--model", model, "--out", out, "--device", "cpu"], capsys)


def _config(tmp: Path, doc: Mapping[str, Any] | str, name: str = "cfg.yaml") -> Path:
    """A pipeline YAML whose data paths point nowhere: should the config pass, no stage can run long."""
    path = tmp / name
    if not isinstance(doc, str):
        doc = yaml.safe_dump({"data": {"testbed": {"path": str(tmp / "no_testbed")},
                                       "simulation": {"path": str(tmp / "no_sim.parquet")}}, **doc})
    path.write_text(doc)
    return path


# --------------------------------------------------------------------------------------------- ingest: the archive
def test_the_good_product_ingests(world, scheduler, capsys, tmp_path):
    # the reference every damaged copy below departs from
    rc, out, err, cube = _ingest(world["good"], world, scheduler, capsys, tmp_path)
    assert rc == 0 and "ingested 1 scene(s), skipped 0, failed 0" in out, out + err
    (store,) = cube_stores(cube).values()
    assert [s["ingest_ok"] for s in read_slots(store)[1]] == [True]


def test_truncated_tar(world, scheduler, capsys, tmp_path):
    p = _product(tmp_path, 101)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _ingest_fails(p, world, scheduler, capsys, tmp_path, str(p), "tar archive", "unexpected end of data")


def test_corrupt_tar_header(world, scheduler, capsys, tmp_path):
    p = _product(tmp_path, 102)
    with tarfile.open(p) as tf:
        second = tf.getmembers()[1].offset
    data = bytearray(p.read_bytes())
    data[second : second + 100] = b"\xff" * 100
    p.write_bytes(bytes(data))
    _ingest_fails(p, world, scheduler, capsys, tmp_path, "corrupt tar archive")


@pytest.mark.parametrize(("member", "words"), [
    ("../escape_bad_input.txt", ("refused", "'..'", "../escape_bad_input.txt")),
    ("/tmp/sftl_bad_input_abs.txt", ("refused", "absolute", "/tmp/sftl_bad_input_abs.txt")),
])
def test_tar_member_escaping_the_archive(world, scheduler, capsys, tmp_path, member, words):
    info = tarfile.TarInfo(member)
    info.size = 3
    p = _product(tmp_path / "in", 103, extra=[info])
    _ingest_fails(p, world, scheduler, capsys, tmp_path, *words)
    assert not Path("/tmp/sftl_bad_input_abs.txt").exists() and not Path("escape_bad_input.txt").exists()
    assert not list(tmp_path.rglob("escape_bad_input.txt")) and not list(tmp_path.rglob("sftl_bad_input_abs.txt"))


def test_tar_member_symlink_pointing_outside(world, scheduler, capsys, tmp_path):
    info = tarfile.TarInfo("calibration.tif")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    p = _product(tmp_path, 104, extra=[info])
    _ingest_fails(p, world, scheduler, capsys, tmp_path, "refused", "calibration.tif",
                  "symbolic link", "/etc/passwd")


def test_truncated_geotiff_member(world, scheduler, capsys, tmp_path):
    p = _product(tmp_path, 105, replace={"_B7_B12.tif": lambda b: b[: len(b) // 3]})
    _ingest_fails(p, world, scheduler, capsys, tmp_path, f"{p.stem}_B7_B12.tif")


def test_geotiff_member_that_is_not_a_geotiff(world, scheduler, capsys, tmp_path):
    p = _product(tmp_path, 106, replace={"_B1_B6.tif": b"GIF89a not a tiff at all" * 40})
    _ingest_fails(p, world, scheduler, capsys, tmp_path, f"{p.stem}_B1_B6.tif", "GeoTIFF")


@pytest.mark.parametrize(("value", "words"), [
    (None, ("XML field GAINS is missing",)),
    ("0.05,0.05,0.04,0.03,0.01,0.004,0.002,0.001,high,0.0069,0.0061,0.0052", ("XML field GAINS", "cannot read")),
    ("0.05,0.05,0.04,0.03,0.01,0.004,0.002,0.001,nan,0.0069,0.0061,0.0052", ("XML field GAINS", "non-finite")),
    ("0.05,0.05,0.04,0.03,0.01,0.004,0.002,0.001,-0.0078,0.0069,0.0061,0.0052", ("XML field GAINS", "valid range")),
    ("0.05,0.05,0.04,0.03,0.01,0.004,0.002,0.001,0.0078,0.0,0.0061,0.0052", ("GAINS", "gain of B10 must be > 0")),
], ids=["missing", "non-numeric", "nan", "negative", "zero"])
def test_vimi_xml_with_bad_gains(world, scheduler, capsys, tmp_path, value, words):
    p = _product(tmp_path, 107, replace={".xml": _xml_field("GAINS", value)})
    _ingest_fails(p, world, scheduler, capsys, tmp_path, str(p), *words)


def test_vimi_xml_not_well_formed(world, scheduler, capsys, tmp_path):
    p = _product(tmp_path, 108, replace={".xml": lambda b: b[: len(b) // 2]})
    _ingest_fails(p, world, scheduler, capsys, tmp_path, "metadata XML is not well-formed")


def test_dn_stored_as_float_with_nan_and_inf(world, scheduler, capsys, tmp_path):
    tif = _tir_with("float32", {(4, 3, 3): np.nan, (5, 7, 7): np.inf})
    p = _product(tmp_path, 109, replace={"_B7_B12.tif": tif})
    _ingest_fails(p, world, scheduler, capsys, tmp_path, f"{p.stem}_B7_B12.tif holds float32",
                  "integer DN")


def test_negative_dn(world, scheduler, capsys, tmp_path):
    tif = _tir_with("int16", {(4, 3, 3): -7})
    p = _product(tmp_path, 110, replace={"_B7_B12.tif": tif})
    _ingest_fails(p, world, scheduler, capsys, tmp_path, f"{p.stem}_B7_B12.tif", "negative DN -7")


def test_band_files_with_different_crs(world, scheduler, capsys, tmp_path):
    vnir, _ = _dn()
    tif = _geotiff(vnir, crs="EPSG:32649", transform=TRANSFORM @ Affine.scale(0.5))
    p = _product(tmp_path, 111, replace={"_B1_B6.tif": tif})
    _ingest_fails(p, world, scheduler, capsys, tmp_path, f"{p.stem}_B1_B6.tif", "different CRS")


def test_band_files_with_different_shape(world, scheduler, capsys, tmp_path):
    vnir, _ = _dn()
    tif = _geotiff(np.ascontiguousarray(vnir[:, :-6, :]), transform=TRANSFORM @ Affine.scale(0.5))
    p = _product(tmp_path, 112, replace={"_B1_B6.tif": tif})
    _ingest_fails(p, world, scheduler, capsys, tmp_path,
                  f"{p.stem}_B1_B6.tif is {2 * H - 6} x {2 * W} px, expected {2 * H} x {2 * W}")


# --------------------------------------------------------------------------------------------- ingest: the ancillaries
def test_era5_not_covering_the_scene_time(world, scheduler, capsys, tmp_path):
    july = {"StartTime": "2022-07-20 03:00:00.000", "EndTime": "2022-07-20 03:00:08.000",
            "CenterTime": "2022-07-20 03:00:04.250"}
    p = _product(tmp_path, 113, date="2022-07-20", meta=july)
    _ingest_fails(p, world, scheduler, capsys, tmp_path, world["era5"].name,
                  "do not cover time 2022-07-20T03:00")


def test_era5_not_covering_the_scene_area(world, scheduler, capsys, tmp_path):
    p = _product(tmp_path, 114)
    _ingest_fails(p, world, scheduler, capsys, tmp_path, world["era5_far"].name, "do not cover the grid",
                  era5=world["era5_far"])


def test_ged_tiles_all_fill(world, scheduler, capsys, tmp_path):
    p = _product(tmp_path, 115)
    _ingest_fails(p, world, scheduler, capsys, tmp_path, "ASTER GED", str(world["ged_fill"]), "only fill values",
                  ged=world["ged_fill"])


def test_one_bad_archive_among_good_ones_fails_alone(world, scheduler, capsys, tmp_path):
    inbox = tmp_path / "inbox"
    good = _product(inbox, 116)
    bad = _product(inbox, 117, replace={".xml": _xml_field("GAINS", None)})
    rc, out, err = _run(["ingest", inbox, "--cube", tmp_path / "cube", "--era5", world["era5"], "--ged",
                         world["ged"], "--scheduler", scheduler], capsys)
    assert rc == 1 and "Traceback" not in out + err
    assert "ingested 1 scene(s), skipped 0, failed 1" in out and f"failed: {bad.stem}: " in out, out
    (store,) = cube_stores(tmp_path / "cube").values()
    assert {s["scene_id"]: s["ingest_ok"] for s in read_slots(store)[1]} == {good.stem: True}


# --------------------------------------------------------------------------------------------- ingest: its arguments
def test_ingest_era5_file_truncated(world, scheduler, capsys, tmp_path):
    era5 = tmp_path / "era5_cut.nc"
    era5.write_bytes(world["era5"].read_bytes()[:2000])
    rc, _, err, cube = _ingest(world["good"], world, scheduler, capsys, tmp_path, era5=era5)
    _assert_refused(rc, err, "ingest", era5)
    assert _absent(cube)


def test_ingest_era5_file_without_tcwv(world, scheduler, capsys, tmp_path):
    import xarray as xr

    era5 = tmp_path / "era5_t2m.nc"
    ds = xr.open_dataset(world["era5"]).load()
    ds.rename_vars({"tcwv": "t2m"}).to_netcdf(era5)
    rc, _, err, cube = _ingest(world["good"], world, scheduler, capsys, tmp_path, era5=era5)
    _assert_refused(rc, err, "ingest", era5, "'tcwv'")
    assert _absent(cube)


def test_ingest_ged_folder_that_is_a_file(world, scheduler, capsys, tmp_path):
    ged = tmp_path / "ged.h5"
    ged.write_bytes(b"\x89HDF")
    rc, _, err, cube = _ingest(world["good"], world, scheduler, capsys, tmp_path, ged=ged)
    _assert_refused(rc, err, "ingest", ged)
    assert _absent(cube)


def test_ingest_input_that_is_not_a_product(world, scheduler, capsys, tmp_path):
    other = tmp_path / "scene_2022.tar"
    shutil.copy(world["good"], other)
    rc, _, err, cube = _ingest(other, world, scheduler, capsys, tmp_path)
    _assert_refused(rc, err, "ingest", other, "not a VIMI L1 product")
    assert _absent(cube)


# --------------------------------------------------------------------------------------------- retrieve --model / --out
def test_retrieve_artifact_with_a_wrong_hash(retrieval, capsys, tmp_path):
    art = _artifact_copy(retrieval["dnn"], tmp_path / "art")
    data = bytearray((art / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (art / "model.pt").write_bytes(bytes(data))
    rc, _, err = _retrieve(retrieval["cube"], art, tmp_path / "lst.zarr", capsys)
    _assert_refused(rc, err, "retrieve", art / "model.pt", "sha256 mismatch")
    assert _absent(tmp_path / "lst.zarr")


def test_retrieve_artifact_with_a_missing_file(retrieval, capsys, tmp_path):
    art = _artifact_copy(retrieval["dnn"], tmp_path / "art")
    (art / "model.pt2").unlink()
    rc, _, err = _retrieve(retrieval["cube"], art, tmp_path / "lst.zarr", capsys)
    _assert_refused(rc, err, "retrieve", art / "model.pt2", "missing")
    assert _absent(tmp_path / "lst.zarr")


def test_retrieve_artifact_whose_program_holds_a_pickle(retrieval, capsys, tmp_path):
    art = _artifact_copy(retrieval["dnn"], tmp_path / "art")
    put_pickle_in_program(art)
    _rehash(art)  # the hashes pass: only the pickle check stands in the way
    rc, _, err = _retrieve(retrieval["cube"], art, tmp_path / "lst.zarr", capsys)
    _assert_refused(rc, err, "retrieve", art / "model.pt2", "pickled")
    assert _absent(tmp_path / "lst.zarr")


def test_retrieve_artifact_with_a_pickle_file_added(retrieval, capsys, tmp_path):
    art = _artifact_copy(retrieval["dnn"], tmp_path / "art")
    (art / "model.pkl").write_bytes(pickle.dumps({"weights": [1.0]}))
    _rehash(art)
    rc, _, err = _retrieve(retrieval["cube"], art, tmp_path / "lst.zarr", capsys)
    _assert_refused(rc, err, "retrieve", art / "sha256", "'model.pkl'")
    assert _absent(tmp_path / "lst.zarr")


def test_retrieve_split_window_json_truncated(retrieval, capsys, tmp_path):
    sw = tmp_path / "sw.json"
    sw.write_text('{"windows": [{"wvc_min": 0.0, ')
    rc, _, err = _retrieve(retrieval["cube"], sw, tmp_path / "lst.zarr", capsys)
    _assert_refused(rc, err, "retrieve", sw, "split-window")
    assert _absent(tmp_path / "lst.zarr")


def test_retrieve_output_path_that_is_a_file(retrieval, capsys, tmp_path):
    out = tmp_path / "lst.zarr"
    out.write_text("someone's notes")
    rc, _, err = _retrieve(retrieval["cube"], retrieval["dnn"], out, capsys)
    _assert_refused(rc, err, "retrieve", out, "is a file")
    assert out.read_text() == "someone's notes"


# ------------------------------------------------------------------------------------- validate: radiometer CSVs
def _replace_line(index: int, old: str, new: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        assert old in lines[index], lines[index]
        return [*lines[:index], lines[index].replace(old, new), *lines[index + 1:]]

    return edit


def test_validate_station_file_with_a_malformed_timestamp(lst, scheduler, capsys, tmp_path):
    insitu = _station(lst, tmp_path, _replace_line(8, "2022-06-01 03:", "2022-06-01T3h"))
    rc, _, err = _validate(lst, insitu, tmp_path / "val", scheduler, capsys)
    _assert_refused(rc, err, "validate", insitu / "A1.csv", "column TIMESTAMP", "line 9", "2022-06-01T3h")
    assert _absent(tmp_path / "val")


def test_validate_station_file_with_duplicated_rows(lst, scheduler, capsys, tmp_path):
    insitu = _station(lst, tmp_path, lambda lines: [*lines[:9], lines[8], *lines[9:]])
    rc, _, err = _validate(lst, insitu, tmp_path / "val", scheduler, capsys)
    _assert_refused(rc, err, "validate", insitu / "A1.csv", "duplicate time stamp", "line 10")
    assert _absent(tmp_path / "val")


def test_validate_station_file_with_unknown_units(lst, scheduler, capsys, tmp_path):
    def units(lines: list[str]) -> list[str]:
        return [*lines[:5], "# columns: TIMESTAMP (UTC), ULR_Cor (upwelling longwave, mW cm-2), "
                            "DLR_Cor (downwelling longwave, mW cm-2), QC_flag (0 good, 1 suspect, 2 bad)", *lines[5:]]

    insitu = _station(lst, tmp_path, units)
    rc, _, err = _validate(lst, insitu, tmp_path / "val", scheduler, capsys)
    _assert_refused(rc, err, "validate", insitu / "A1.csv", "ULR_Cor", "'mW cm-2'", "W m-2")
    assert _absent(tmp_path / "val")


def test_validate_station_file_with_non_numeric_longwave(lst, scheduler, capsys, tmp_path):
    def text(lines: list[str]) -> list[str]:
        fields = lines[10].split(",")
        return [*lines[:10], ",".join([fields[0], "n/a", *fields[2:]]), *lines[11:]]

    insitu = _station(lst, tmp_path, text)
    rc, _, err = _validate(lst, insitu, tmp_path / "val", scheduler, capsys)
    _assert_refused(rc, err, "validate", insitu / "A1.csv", "column ULR_Cor", "line 11", "'n/a'")
    assert _absent(tmp_path / "val")


def test_validate_site_table_with_duplicated_rows(lst, scheduler, capsys, tmp_path):
    sites = tmp_path / "sites.csv"
    lines = lst["sites"].read_text().splitlines()
    sites.write_text("\n".join([*lines, lines[1]]) + "\n")
    rc, _, err = _run(["validate", "--lst", lst["lst"], "--insitu", lst["insitu"], "--sites", sites, "--out",
                       tmp_path / "val", "--scheduler", scheduler], capsys)
    _assert_refused(rc, err, "validate", sites, "duplicate site id(s) A1")
    assert _absent(tmp_path / "val")


# ------------------------------------------------------------------------------------- train / experiment --config
def test_train_config_with_an_unknown_key(scheduler, capsys, tmp_path):
    cfg = _config(tmp_path, {**TRAIN_BASE, "pretrian": {"epochs": 3}})
    rc, _, err = _run(["train", "--config", cfg, "--out", tmp_path / "o", "--scheduler", scheduler], capsys)
    _assert_refused(rc, err, "train", cfg, "unknown key", "pretrian")
    assert _absent(tmp_path / "o")


def test_train_config_with_an_unknown_nested_key(scheduler, capsys, tmp_path):
    cfg = _config(tmp_path, {**TRAIN_BASE, "finetune": {**TRAIN_BASE["finetune"], "learning_rate": 0.1}})
    rc, _, err = _run(["train", "--config", cfg, "--out", tmp_path / "o", "--scheduler", scheduler], capsys)
    _assert_refused(rc, err, "train", cfg, "finetune.learning_rate")
    assert _absent(tmp_path / "o")


@pytest.mark.parametrize(("change", "key"), [
    ({"pretrain": 5}, "pretrain"),
    ({"seed": "zero"}, "seed"),
    ({"model": ["dnn"]}, "model"),
    ({"transfer": {"k": 5, "repeats": 1}}, "transfer.k"),
    ({"finetune": {**TRAIN_BASE["finetune"], "test_fraction": "30%"}}, "finetune.test_fraction"),
], ids=["section-not-a-mapping", "seed-not-an-integer", "model-a-list", "k-not-a-list", "fraction-a-string"])
def test_train_config_with_a_wrong_type(scheduler, capsys, tmp_path, change, key):
    cfg = _config(tmp_path, {**TRAIN_BASE, **change})
    rc, _, err = _run(["train", "--config", cfg, "--out", tmp_path / "o", "--scheduler", scheduler], capsys)
    _assert_refused(rc, err, "train", cfg, key)
    assert _absent(tmp_path / "o")


def test_train_config_that_is_not_yaml(scheduler, capsys, tmp_path):
    cfg = _config(tmp_path, "name: tiny\nmodel: {name: dnn\n  pretrain: [\n")
    rc, _, err = _run(["train", "--config", cfg, "--out", tmp_path / "o", "--scheduler", scheduler], capsys)
    _assert_refused(rc, err, "train", cfg, "not valid YAML")
    assert _absent(tmp_path / "o")


def test_train_output_path_that_is_a_file(scheduler, capsys, tmp_path):
    cfg = _config(tmp_path, TRAIN_BASE)
    out = tmp_path / "o"
    out.write_text("not a folder")
    rc, _, err = _run(["train", "--config", cfg, "--out", out, "--scheduler", scheduler], capsys)
    _assert_refused(rc, err, "train", f"{out}: exists and is not a folder")
    assert out.read_text() == "not a folder"


def test_experiment_config_with_an_unknown_grid_key(scheduler, capsys, tmp_path):
    cfg = _config(tmp_path, {**TRAIN_BASE, "grid": {**GRID, "seed": [0, 1]}})
    rc, _, err = _run(["experiment", "--config", cfg, "--out", tmp_path / "e", "--scheduler", scheduler], capsys)
    _assert_refused(rc, err, "experiment", cfg, "grid.seed")
    assert _absent(tmp_path / "e")


@pytest.mark.parametrize(("grid", "key"), [
    ({**GRID, "seeds": 3}, "grid.seeds"),
    ({**GRID, "models": "dnn"}, "grid.models"),
    ([{"models": ["dnn"]}], "grid"),
], ids=["seeds-a-number", "models-a-string", "grid-a-list"])
def test_experiment_config_with_a_wrong_type(scheduler, capsys, tmp_path, grid, key):
    cfg = _config(tmp_path, {**TRAIN_BASE, "grid": grid})
    rc, _, err = _run(["experiment", "--config", cfg, "--out", tmp_path / "e", "--scheduler", scheduler], capsys)
    _assert_refused(rc, err, "experiment", cfg, key)
    assert _absent(tmp_path / "e")


# --------------------------------------------------------------------------------------------- outputs, scheduler
def test_simulate_output_path_that_is_a_file(capsys, tmp_path):
    out = tmp_path / "sim.parquet"
    out.write_text("not a table")
    rc, _, err = _run(["simulate", "--out", out, "--profiles", "2"], capsys)
    _assert_refused(rc, err, "simulate", out)
    assert out.read_text() == "not a table"


def test_rechunk_output_path_that_is_a_file(lst, capsys, tmp_path):
    out = tmp_path / "ts.zarr"
    out.write_text("x")
    rc, _, err = _run(["rechunk", "--lst", lst["lst"] / "g.zarr", "--out", out], capsys)
    _assert_refused(rc, err, "rechunk", out)
    assert out.read_text() == "x"


def test_rechunk_max_mem_that_is_not_a_size(lst, capsys, tmp_path):
    rc, _, err = _run(["rechunk", "--lst", lst["lst"] / "g.zarr", "--out", tmp_path / "ts.zarr", "--max-mem",
                       "lots"], capsys)
    _assert_refused(rc, err, "rechunk", "'lots'")
    assert _absent(tmp_path / "ts.zarr")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# A hang bound, not a speed figure: Dask's connect timeout is raised to 10 min below, so a client that retried
# instead of probing once would run into this timeout (pytest-timeout fails the test) rather than pass slowly.
@pytest.mark.timeout(180)
def test_scheduler_address_that_does_not_answer_fails_fast(lst, capsys, tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    with dask.config.set({"distributed.comm.timeouts.connect": "600s"}):
        rc, _, err = _validate(lst, lst["insitu"], tmp_path / "val", address, capsys)
    line = _assert_refused(rc, err, "validate", address)
    assert line.endswith("Connection refused"), line  # the one-shot probe's refusal, not a connect timeout
    assert _absent(tmp_path / "val")
