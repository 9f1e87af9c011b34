"""The fixed tile grid of scene cubes: no pixel lost, two runs equal one, tiles mosaicked, bad input refused.

Scenes of the session's small testbed (640 px) are ingested onto 256 px tiles, so every scene straddles tile
edges and corners (3-4 tiles along each axis).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sftl_dask.cli import main
from sftl_dask.geo import DEFAULT_TILE_PX, GeoBox, TileScheme, utm_epsg
from sftl_dask.ingest import IngestError, ingest
from sftl_dask.io.cube import read_slots
from sftl_dask.io.stores import cube_stores, cube_tiling, open_cube, open_store
from sftl_dask.physics.channels import THERMAL_NAMES

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

TILE = 256


def _era5(tb: Path) -> list[Path]:
    return sorted((tb / "era5").glob("*.nc"))


def _archives(tb: Path) -> list[Path]:
    return sorted((tb / "archives").glob("*.tar"))


def _product_bt(path: Path) -> xr.Dataset:
    ds = xr.open_dataset(path, engine="vimi")
    out = ds[list(THERMAL_NAMES)].load()
    ds.close()
    return out


@pytest.fixture(scope="module")
def tiled(small_testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tiles") / "cube"
    return root, ingest([small_testbed / "archives"], root, era5=_era5(small_testbed), ged=small_testbed / "ged",
                        tile_px=TILE)


# --------------------------------------------------------------------------------------------- the scheme
def test_tile_names_bounds_and_the_tiles_a_footprint_touches():
    s = TileScheme(1024)
    assert s.tile_m == 40_960.0
    g = s.tile(32650, 135, 10)
    assert g.bounds == (409_600.0, 10_000_000.0 - 136 * 40_960.0, 450_560.0, 10_000_000.0 - 135 * 40_960.0)
    assert s.name(32650, 135, 10) == "50N_135_010" and s.parse("50N_135_010") == (32650, 135, 10)
    assert s.name(32733, 2, 7) == "33S_002_007" and s.parse("33S_002_007") == (32733, 2, 7)
    # a 1500 px scene whose corner sits 100 px inside tile (135, 9): touches 2 x 2 ... 3 x 3 tiles
    scene = GeoBox("EPSG:32650", (40.0, 0.0, 409_600.0 - 100 * 40, 0.0, -40.0, g.bounds[3] + 100 * 40), 1500, 1500)
    assert sorted(s.tiles_for(scene)) == [f"50N_{r}_{c:03d}" for r in (134, 135, 136) for c in (9, 10, 11)]
    # exactly on the edges: no tile beyond
    assert list(s.tiles_for(g)) == ["50N_135_010"]
    assert s.tile_at(32650, 409_600.0, g.bounds[3] - 1.0) == "50N_135_010"
    assert TileScheme.from_attrs(json.dumps(s.to_attrs())) == s and DEFAULT_TILE_PX == 1024
    # a zone anchored at a scene's corner: its edges pass through it, other zones keep the global edges
    a = s.anchored(32650, 384_240.0, 4_480_000.0)
    assert a.offset(32650) == (384_240.0 % 40_960, (10_000_000 - 4_480_000.0) % 40_960) and a.offset(32647) == (0, 0)
    corner = a.tile(32650, *TileScheme.parse(a.tile_at(32650, 384_260.0, 4_479_980.0))[1:])
    assert corner.bounds[0] == 384_240.0 and corner.bounds[3] == 4_480_000.0
    assert TileScheme.from_attrs(a.to_attrs()) == a and a.has_zone(32650) and not a.has_zone(32647)


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:3857", "EPSG:32150"])
def test_a_crs_outside_the_scheme_is_refused_naming_it(crs):
    with pytest.raises(ValueError, match=crs.split(":")[1]):
        utm_epsg(crs)
    with pytest.raises(ValueError, match="not a tile name"):
        TileScheme.parse("epsg32650_e384.24_n4480.00")
    with pytest.raises(ValueError, match=">= 16"):
        TileScheme(8)


# --------------------------------------------------------------------------------------------- no pixel lost
def test_every_valid_pixel_of_every_scene_is_in_its_tiles_with_its_value(small_testbed, tiled):
    root, summary = tiled
    assert summary["ingested"] == 4 and summary["failed"] == [] and summary["tile_px"] == TILE
    stores = cube_stores(root)
    per_scene: dict[str, list[tuple[Path, int]]] = {}
    for store in stores.values():
        for s in read_slots(store)[1]:
            assert s["ingest_ok"]
            per_scene.setdefault(s["scene_id"], []).append((store, s["index"]))
    for path in _archives(small_testbed):
        bt = _product_bt(path)
        valid = np.isfinite(bt["bt_10_80"].values)
        slots = per_scene[path.stem]
        assert len(slots) >= 9, (path.stem, len(slots))  # 640 px on 256 px tiles: 3-4 tiles along each axis
        seen = np.zeros(valid.shape, dtype=np.int64)
        for store, index in slots:
            tile = open_store(store, decode_coords="all").isel(time=index)
            xs = np.searchsorted(bt["x"].values, tile["x"].values)
            ys = np.searchsorted(-bt["y"].values, -tile["y"].values)
            nx, ny = bt.sizes["x"], bt.sizes["y"]
            inx = (xs < nx) & np.isclose(bt["x"].values[np.minimum(xs, nx - 1)], tile["x"].values, rtol=0, atol=1.0)
            iny = (ys < ny) & np.isclose(bt["y"].values[np.minimum(ys, ny - 1)], tile["y"].values, rtol=0, atol=1.0)
            assert inx.any() and iny.any(), (path.stem, store.name)
            for name in THERMAL_NAMES:
                got = tile[name].values[np.ix_(iny, inx)]
                want = bt[name].values[np.ix_(ys[iny], xs[inx])].astype(np.float32)
                np.testing.assert_array_equal(got, want, err_msg=f"{path.stem} {store.name} {name}")
            outside = np.ones(tile["bt_10_80"].shape, dtype=bool)
            outside[np.ix_(iny, inx)] = False
            assert not np.isfinite(tile["bt_10_80"].values[outside]).any(), (path.stem, store.name)
            seen[np.ix_(ys[iny], xs[inx])] += np.isfinite(tile["bt_10_80"].values[np.ix_(iny, inx)])
        # every valid pixel exactly once: none lost, none twice
        assert int(seen[valid].min()) == 1 and int(seen.max()) == 1 and int(seen.sum()) == int(valid.sum())


def test_tiles_of_a_zone_open_as_one_mosaic_equal_to_its_tiles(tiled):
    root, _ = tiled
    stores = cube_stores(root)
    zones = sorted({n.split("_")[0] for n in stores})
    assert zones == ["47N", "50N"]
    with pytest.raises(ValueError, match="holds zones 47N, 50N"):
        open_cube(root)
    for zone in zones:
        mine = {n: s for n, s in stores.items() if n.startswith(zone)}
        mos = open_cube(root, zone=zone)
        assert json.loads(mos.attrs["sftl_tiles"]) == sorted(mine)
        assert mos.rio.crs.to_epsg() == int(("326" if zone.endswith("N") else "327") + zone[:-1])
        assert (np.diff(mos["time"].values) > np.timedelta64(0)).all()
        n_mosaic = int(np.isfinite(mos["bt_10_80"]).sum().compute())
        n_tiles = sum(int(np.isfinite(open_cube(s)["bt_10_80"]).sum().compute()) for s in mine.values())
        assert n_mosaic == n_tiles > 0
        name = next(iter(mine))
        tile = open_cube(root, grid=name)
        part = mos.sel(x=tile["x"], y=tile["y"], time=tile["time"])
        np.testing.assert_array_equal(part["bt_11_95"].values, tile["bt_11_95"].values)
        assert [str(v) for v in part["scene_id"].values] == [str(v) for v in tile["scene_id"].values]


# --------------------------------------------------------------------------------------------- incremental
def test_an_ingest_split_over_two_runs_by_year_equals_one_run(small_testbed, tiled, tmp_path):
    one, _ = tiled
    scenes = pd.read_csv(small_testbed / "truth" / "scenes.csv")
    years = pd.to_datetime(scenes["time_utc"]).dt.year
    first = [small_testbed / "archives" / f"{s}.tar" for s in scenes["scene_id"][years == years.min()]]
    assert 0 < len(first) < len(scenes)
    root = tmp_path / "cube"
    a = ingest(first, root, era5=_era5(small_testbed), ged=small_testbed / "ged", tile_px=TILE)
    b = ingest([small_testbed / "archives"], root, era5=_era5(small_testbed), ged=small_testbed / "ged")
    assert a["ingested"] == len(first) and b["ingested"] == len(scenes) - len(first)
    assert b["skipped"] == len(first) and b["tile_px"] == TILE  # the cube's own tile size was kept
    # the zones' tile edges were fixed by the first run's scenes, so the tiles may be cut elsewhere than in the
    # one-run cube; every scene's pixels are the same, value for value, at the same coordinates
    for zone in ("47N", "50N"):
        got, want = open_cube(root, zone=zone), open_cube(one, zone=zone)
        assert [str(v) for v in got["scene_id"].values] == [str(v) for v in want["scene_id"].values]
        xs, ys = np.intersect1d(got["x"], want["x"]), np.intersect1d(got["y"], want["y"])
        for var in ("bt_10_80", "wvc", "emis_11_95", "cloud", "ancillary_missing"):
            a, b = got[var].sel(x=xs, y=ys).values, want[var].sel(x=xs, y=ys).values
            np.testing.assert_array_equal(a, b, err_msg=f"{zone} {var}")
        for cube in (got, want):  # nothing lies outside the common rectangle
            n_all = int(np.isfinite(cube["bt_10_80"]).sum())
            assert n_all == int(np.isfinite(cube["bt_10_80"].sel(x=xs, y=ys)).sum()) > 0


# --------------------------------------------------------------------------------------------- bad input
def test_another_tile_size_on_an_existing_cube_is_refused_with_exit_2(small_testbed, tiled, tmp_path, capsys):
    root, _ = tiled
    copy = tmp_path / "cube"
    shutil.copytree(root, copy)
    before = sorted(p.name for p in copy.iterdir())
    rc = main(["ingest", str(small_testbed / "archives"), "--cube", str(copy), "--era5",
               *map(str, _era5(small_testbed)), "--ged", str(small_testbed / "ged"), "--tile-size", "1024",
               "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "256 px" in err[0] and "1024" in err[0] and str(copy) in err[0], err
    assert sorted(p.name for p in copy.iterdir()) == before
    assert cube_tiling(copy).tile_px == TILE and len(cube_tiling(copy).offsets) == 2  # both zones anchored


def test_a_cube_of_pre_tile_grids_is_refused_naming_the_store(small_testbed, tiled, tmp_path):
    import zarr

    root, _ = tiled
    copy = tmp_path / "cube"
    shutil.copytree(root, copy)
    store = next(iter(cube_stores(copy).values()))
    group = zarr.open_group(str(store), mode="r+")
    del group.attrs["sftl_tiling"]
    with pytest.raises(IngestError, match=store.name):
        ingest([small_testbed / "archives"], copy, era5=_era5(small_testbed), ged=small_testbed / "ged")


def test_a_product_outside_any_utm_zone_is_refused_before_anything_is_written(small_testbed, tmp_path, capsys):
    from affine import Affine

    from sftl_dask.io.vimi import VimiProduct
    from sftl_dask.testbed.formats import write_vimi_archive

    src = _archives(small_testbed)[0]
    prod = VimiProduct(src)
    meta = dict(prod.metadata)
    ds = prod.open(chunks=None)
    h, w = ds.sizes["y"], ds.sizes["x"]
    ds.close()
    rng = np.random.default_rng(0)
    tir = rng.integers(1500, 2500, (6, h, w)).astype(np.uint16)
    vnir = rng.integers(100, 900, (6, 2 * h, 2 * w)).astype(np.uint16)
    meta["ProductID"] = 9_990_001  # a distinct product: new id in its name and XML
    geo = write_vimi_archive(tmp_path / "in", src.stem[:-10] + f"{9_990_001:010d}", vnir, tir, crs="EPSG:4326",
                             transform=Affine(0.0004, 0, 115.7, 0, -0.0004, 40.5), meta=meta)
    shutil.copy(_archives(small_testbed)[1], tmp_path / "in")
    root = tmp_path / "cube"
    rc = main(["ingest", str(tmp_path / "in"), "--cube", str(root), "--era5", *map(str, _era5(small_testbed)),
               "--ged", str(small_testbed / "ged"), "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert geo.name in err[0] and "EPSG:4326" in err[0] and "UTM" in err[0], err
    assert not cube_stores(root)


# --------------------------------------------------------------------------------------------- no seams
def test_the_tile_size_changes_no_lst_value_or_qc_flag_at_tile_edges(small_testbed, tiled, tmp_path,
                                                                        retrieval_model, small_cube):
    """LST and QC of 256 px tiles equal those of 1024 px tiles on every pixel: the cloud-adjacency halo reads
    across tile edges (before, a cloud just across an edge left its neighbours unflagged: a seam)."""
    from sftl_dask.api import open_lst
    from sftl_dask.io.lst import QC_FLAGS
    from sftl_dask.retrieve import retrieve

    small, _ = tiled
    big = tmp_path / "cube1024"
    shutil.copytree(small_cube[0], big)  # the session's ingest onto 1024 px tiles; the LST is written beside it
    model = retrieval_model("sw")
    for cube in (small, big):
        s = retrieve(cube, model, cube.parent / f"{cube.name}_lst")
        assert s["failed"] == [] and s["retrieved"] > 0
    adjacent = QC_FLAGS["cloud_adjacent"][0]
    n_edge_flags = 0
    for zone in ("47N", "50N"):
        a = open_lst(small.parent / f"{small.name}_lst", zone=zone)
        b = open_lst(big.parent / f"{big.name}_lst", zone=zone)
        b = b.sel(x=a["x"], y=a["y"], time=a["time"])
        assert a.sizes["time"] == 2
        np.testing.assert_array_equal(a["lst"].values, b["lst"].values)
        qa, qb = a["qc"].values, b["qc"].values
        np.testing.assert_array_equal(qa, qb)
        # the comparison bites: cloud-adjacent pixels lie on 256 px tile edges (rows/cols 0-1, 254-255 of a tile)
        rows = (np.arange(a.sizes["y"]) % TILE)[None, :, None]
        cols = (np.arange(a.sizes["x"]) % TILE)[None, None, :]
        edge = np.isin(rows, (0, 1, TILE - 2, TILE - 1)) | np.isin(cols, (0, 1, TILE - 2, TILE - 1))
        n_edge_flags += int(((qa & adjacent) != 0)[np.broadcast_to(edge, qa.shape)].sum())
    assert n_edge_flags > 100, n_edge_flags
