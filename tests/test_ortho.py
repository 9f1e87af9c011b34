"""Orthorectification in ingest (issue 28, items 3 and 4): delivered sensor-geometry products warped onto the tile
grid by their RPCs and the DEM; geolocation of the hot targets, per-pixel view zenith against the testbed's sensor
model, provenance per time step, and bad input (RPCs, DEM)."""

from __future__ import annotations

import io
import json
import tarfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import xarray as xr
from helpers import hot_target_peak
from pyproj import Transformer

from sftl_dask.geo import GeoBox
from sftl_dask.ingest import IngestError, ingest
from sftl_dask.io.cube import read_slots
from sftl_dask.io.inspect import inspect_product, product_rpc, sensor_product_grid
from sftl_dask.io.ortho import FLAT_DEM, DemError, open_dem, orthorectify, sensor_vza
from sftl_dask.io.rpc import view_zenith
from sftl_dask.io.stores import cube_stores
from sftl_dask.io.vimi import VimiProduct
from sftl_dask.testbed.build import scene_schedule
from sftl_dask.testbed.delivery import SceneView, scene_view, terrain_height
from sftl_dask.testbed.world import REGIONS, build_landscape

SIZE, SEED, TILE = 640, 0, 256  # the session fixture delivered_testbed is built with SIZE and SEED


@pytest.fixture(scope="module")
def delivered(delivered_testbed: Path) -> Path:
    """The session's delivered testbed (tests/conftest.py: 1 scene per region, 640 px, seed 0)."""
    return delivered_testbed


def _ingest(tb: Path, cube: Path, **kw: Any) -> dict[str, Any]:
    return ingest([tb / "archives"], cube, era5=sorted((tb / "era5").glob("*.nc")), ged=tb / "ged", tile_px=TILE,
                  **kw)


@pytest.fixture(scope="module")
def cube_dem(delivered: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cube = tmp_path_factory.mktemp("cube") / "dem"
    summary = _ingest(delivered, cube, dem=delivered / "dem")
    assert summary["ingested"] == 2 and not summary["failed"]
    return cube


@pytest.fixture(scope="module")
def cube_flat(delivered: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    cube = tmp_path_factory.mktemp("cube") / "flat"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = _ingest(delivered, cube)
    assert summary["ingested"] == 2 and not summary["failed"]
    return cube, [str(w.message) for w in caught if "--dem" in str(w.message)]


def _tiles(cube: Path) -> list[tuple[GeoBox, list[dict[str, Any]], Path]]:
    out = []
    for store in cube_stores(cube).values():
        grid, slots = read_slots(store)
        out.append((grid, slots, Path(str(store))))
    return out


def _target_errors(tb: Path, cube: Path) -> list[float]:
    """Distance (40 m px) between each hot target's BT peak in the cube and its lon/lat on the tile grid."""
    targets = pd.read_csv(tb / "truth" / "targets.csv")
    errors = []
    tiles = _tiles(cube)
    for _, t in targets[targets["cloud"] == 0].iterrows():
        for grid, slots, store in tiles:
            x, y = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True).transform(t.lon, t.lat)
            col, row = (x - grid.affine.c) / grid.affine.a - 0.5, (y - grid.affine.f) / grid.affine.e - 0.5
            if not (4 <= row < grid.height - 4 and 4 <= col < grid.width - 4):
                continue
            idx = next(s["index"] for s in slots if s["scene_id"] == t.scene_id)
            with xr.open_zarr(store, consolidated=True) as ds:
                bt = ds["bt_10_80"].isel(time=idx).values
            pr, pc = hot_target_peak(bt, row, col)
            errors.append(float(np.hypot(pr - row, pc - col)))
    return errors


def test_geolocation_with_dem(delivered: Path, cube_dem: Path) -> None:
    errors = _target_errors(delivered, cube_dem)
    assert len(errors) == 6
    rms, worst = float(np.sqrt(np.mean(np.square(errors)))), max(errors)
    # measured (seed 0, 640 px): RMS 0.09 px, max 0.16 px; issue 28's target: RMS <= 0.3 px, max <= 1 px
    assert rms <= 0.3 and worst <= 1.0, errors
    assert worst <= 0.25, errors


def test_geolocation_without_dem(delivered: Path, cube_flat: tuple[Path, list[str]]) -> None:
    cube, warned = cube_flat
    errors = _target_errors(delivered, cube)
    assert len(errors) == 6
    # measured (seed 0): RMS 0.10 px, max 0.15 px: the targets lie within ~600 m of the RPC height offset and
    # within 5 deg of nadir, so the flat height moves them < 0.1 px here (h tan(vza) / 40 m); relief does not
    assert float(np.sqrt(np.mean(np.square(errors)))) <= 0.3, errors
    assert len(warned) == 2 and all("no DEM given" in w for w in warned)


def _views(tb: Path) -> dict[str, SceneView]:
    """The testbed's own sensor model of each scene, rebuilt as ``build_testbed`` places it (public pieces)."""
    views = {}
    for region in REGIONS:
        lsc = build_landscape(REGIONS[region], SIZE, SEED)
        item = scene_schedule(region, 1, SEED)[0]
        spec, shift = item["spec"], item["shift_px"]
        a, _, c, _, e, f = lsc.transform
        h, w = lsc.shape
        x0, y0 = c + shift[1] * a, f + shift[0] * e
        lon, lat = Transformer.from_crs(lsc.crs, "EPSG:4326", always_xy=True).transform(
            [x0, x0 + w * a, x0 + w * a, x0], [y0, y0, y0 + h * e, y0 + h * e])
        lon_c, lat_c = float(np.mean(np.round(lon, 6))), float(np.mean(np.round(lat, 6)))
        h_c = float(terrain_height(lsc)(np.array([lon_c]), np.array([lat_c]))[0])
        views[region] = scene_view(lon_c, lat_c, h_c, shift[1] * 0.04 + spec.nadir_offset_km, *lsc.shape)
    targets = pd.read_csv(tb / "truth" / "targets.csv")
    out = {}
    for stem, group in targets.groupby("scene_id"):
        view = views[group["region"].iloc[0]]
        rpc = product_rpc(VimiProduct(tb / "archives" / f"{stem}.tar.gz"), f"{stem}_B7_B12.rpb")
        line, sample = view.project(group["lon"].to_numpy(), group["lat"].to_numpy(), group["height_m"].to_numpy())
        rl, rs = rpc.project(group["lon"].to_numpy(), group["lat"].to_numpy(), group["height_m"].to_numpy())
        assert np.hypot(line - rl, sample - rs).max() < 0.05  # the rebuilt model is the delivered one
        out[str(stem)] = view
    return out


def _dem_height(tb: Path, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    h = np.full(lon.shape, np.nan)
    for tile in (tb / "dem").iterdir():
        with rasterio.open(tile) as src:
            b = src.bounds
            inside = (lon > b.left) & (lon < b.right) & (lat > b.bottom) & (lat < b.top)
            if inside.any():
                h[inside] = [v[0] for v in src.sample(zip(lon[inside], lat[inside], strict=True))]
    return h


def test_vza_against_the_sensor_model(delivered: Path, cube_dem: Path) -> None:
    views = _views(delivered)
    diffs = []
    for grid, slots, store in _tiles(cube_dem):
        with xr.open_zarr(store, consolidated=True) as ds:
            for s in slots:
                vza = ds["vza"].isel(time=s["index"]).values[::16, ::16]
                rows, cols = np.nonzero(np.isfinite(vza))
                if not rows.size:
                    continue
                x, y = grid.x[::16][cols], grid.y[::16][rows]
                lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
                h = _dem_height(delivered, np.asarray(lon), np.asarray(lat))
                view = views[s["scene_id"]]
                line, sample = view.project(lon, lat, h)
                truth = view.sensor.view_zenith(line + view.line0, sample + view.sample0, h)
                diffs.append(np.abs(vza[rows, cols] - truth))
    d = np.concatenate(diffs)
    assert d.size > 1000
    # measured (seed 0): max 0.0026 deg (warp near the image edges, the LOS through two heights vs the ground
    # point's own angle); the brief's limit is 0.05 deg
    assert float(d.max()) <= 0.05, float(d.max())


def test_vza_interpolation(delivered: Path) -> None:
    path = delivered / "archives" / next(p.name for p in (delivered / "archives").iterdir())
    prod = VimiProduct(path)
    rpc = product_rpc(prod, inspect_product(path).rpc_member)
    coarse = sensor_vza(rpc, SIZE, SIZE)
    rng = np.random.default_rng(1)
    line, sample = rng.integers(0, SIZE, 400), rng.integers(0, SIZE, 400)
    full = view_zenith(rpc, line.astype(float), sample.astype(float))
    # measured (seed 0): 0.0003 / 0.0005 deg for the two scenes at the default 8 px step
    assert float(np.abs(coarse[line, sample] - full).max()) < 1e-3


def test_provenance_recorded(delivered: Path, cube_dem: Path, cube_flat: tuple[Path, list[str]]) -> None:
    for cube, dem in ((cube_dem, str(delivered / "dem")), (cube_flat[0], FLAT_DEM)):
        slots = [s for _, ss, _ in _tiles(cube) for s in ss]
        assert len(slots) >= 2
        assert {s["calibration_source"] for s in slots} == {"xml"}
        assert {s["dem"] for s in slots} == {dem}
        log = [json.loads(line) for line in (cube / "ingest_log.jsonl").read_text().splitlines()]
        assert all(0 < r["warp_seconds"] < r["seconds"] for r in log)


def test_warp_matches_inspect_grid(delivered: Path) -> None:
    """The scene's grid is the one ``sftl inspect`` reports (one rule), and the warp fills it where the image is."""
    path = sorted((delivered / "archives").iterdir())[0]
    summary = inspect_product(path, tile_px=TILE)
    prod = VimiProduct(path)
    rpc = product_rpc(prod, summary.rpc_member)
    grid, bounds = sensor_product_grid(rpc, SIZE, SIZE)
    assert bounds == pytest.approx(summary.footprint)
    ones = orthorectify({"bt_10_80": np.ones((SIZE, SIZE), np.float32), "cloud": np.zeros((SIZE, SIZE))}, rpc, grid)
    filled = np.isfinite(ones["bt_10_80"])
    # a 640 x 640 px image rotated by the track's heading fills 68-72 % of its bounding box
    assert 0.6 < filled.mean() < 0.8
    assert np.nanmax(np.abs(ones["bt_10_80"] - 1)) < 1e-6 and set(np.unique(ones["cloud"][filled])) == {0.0}


def _rewrite(src: Path, dst_dir: Path, edit: Any) -> Path:
    """A copy of a delivered .tar.gz with its members passed through ``edit(name, bytes) -> bytes | None``."""
    dst = dst_dir / src.name
    dst_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dst, "w:gz") as tout:
        for info in tin:
            data = tin.extractfile(info).read()  # type: ignore[union-attr]
            new = edit(info.name, data)
            if new is not None:
                info.size = len(new)
                tout.addfile(info, io.BytesIO(new))
    return dst


@pytest.mark.parametrize("case", ["malformed", "missing"])
def test_bad_rpcs(delivered: Path, tmp_path: Path, case: str) -> None:
    src = sorted((delivered / "archives").iterdir())[0]
    stem = src.name.removesuffix(".tar.gz")

    def edit(name: str, data: bytes) -> bytes | None:
        if not name.endswith(".rpb"):
            return data
        return data.replace(b"lineScale", b"lineScael") if case == "malformed" else None

    bad = _rewrite(src, tmp_path / "in", edit)
    summary = ingest([bad], tmp_path / "cube", era5=sorted((delivered / "era5").glob("*.nc")),
                     ged=delivered / "ged", dem=delivered / "dem", tile_px=TILE)
    assert summary["ingested"] == 0 and len(summary["failed"]) == 1
    reason = summary["failed"][0]["reason"]
    assert "\n" not in reason and str(bad) in reason and f"member {stem}_B" in reason and "RPC" in reason, reason
    assert not cube_stores(tmp_path / "cube")  # nothing half-written: no store, no slot


def test_dem_not_covering(delivered: Path, tmp_path: Path) -> None:
    dem = tmp_path / "dem"
    dem.mkdir()
    only = "Copernicus_DSM_COG_10_N38_00_E100_00_DEM.tif"  # most of Heihe's footprint (to 39.01 N), none of Huailai's
    (dem / only).write_bytes((delivered / "dem" / only).read_bytes())
    summary = _ingest(delivered, tmp_path / "cube", dem=dem)
    assert summary["ingested"] == 0 and len(summary["failed"]) == 2
    for f in summary["failed"]:
        assert f"DEM {dem} does not cover the footprint" in f["reason"] and f["scene_id"] in f["reason"]
    assert not cube_stores(tmp_path / "cube")


def test_bad_dem_and_calibration_args(delivered: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IngestError, match="no DEM tile"):
        _ingest(delivered, tmp_path / "c1", dem=empty)
    with pytest.raises(IngestError, match="DEM not found"):
        _ingest(delivered, tmp_path / "c2", dem=tmp_path / "nope")
    with pytest.raises(IngestError, match="calibration table not found"):
        _ingest(delivered, tmp_path / "c3", calibration=tmp_path / "nope.csv")
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(DemError, match=r"junk\.tif: not a readable DEM raster"):
        open_dem(junk)


def test_user_calibration_recorded(delivered: Path, tmp_path: Path) -> None:
    """``--calibration`` reaches the reader; with GAINS/OFFSETS in the XML the XML wins, and that is recorded."""
    table = delivered / "calibration" / "GF5B_VIMI_calibration.csv"

    def edit(name: str, data: bytes) -> bytes:
        if not name.endswith(".xml"):
            return data
        text = data.decode()
        for field in ("GAINS", "OFFSETS"):
            start, end = text.index(f"<{field}>"), text.index(f"</{field}>") + len(field) + 3
            text = text[:start] + text[end:]
        return text.encode()

    src = sorted((delivered / "archives").iterdir())[0]
    bare = _rewrite(src, tmp_path / "in", edit)
    summary = ingest([bare], tmp_path / "cube", era5=sorted((delivered / "era5").glob("*.nc")),
                     ged=delivered / "ged", dem=delivered / "dem", tile_px=TILE, calibration=table)
    assert summary["ingested"] == 1, summary["failed"]
    sources = {s["calibration_source"] for _, ss, _ in _tiles(tmp_path / "cube") for s in ss}
    assert sources == {f"user:{table}"}
