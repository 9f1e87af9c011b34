"""``sftl export``: COGs per scene, tile and variable, and STAC Items that odc-stac and stackstac load onto the
LST cube's own grid, value for value, over scenes that straddle tile edges; GDAL reads the Zarr's CRS.

The LST cube is a real retrieval (a small random forest) of a scene cube of four 64 px tiles (2 x 2) holding two
scenes, each written across the four tiles: the cheapest cube whose scenes cross tile edges.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from helpers import synthetic_scene
from test_stac import SCHEMAS

from sftl_dask.cli import main
from sftl_dask.geo import TileScheme
from sftl_dask.io.cube import append_slots, write_scene
from sftl_dask.io.export import COG_VARIABLES, EXPORT_MANIFEST, ExportError, export_cogs, plan_export
from sftl_dask.io.lst import QC_FILL
from sftl_dask.io.stac import COG_COLLECTION, LST_COLLECTION
from sftl_dask.retrieve import retrieve

EPSG = 32650
SCHEME = TileScheme(64, 40.0, ((EPSG, 0.0, 0.0),))
ROW, COL = SCHEME.tile_at(EPSG, 400_000.0, 4_500_000.0).split("_")[1:]
TILES = {SCHEME.name(EPSG, int(ROW) + dr, int(COL) + dc): (dr, dc) for dr in (0, 1) for dc in (0, 1)}
#: Each scene's footprint in the 128 x 128 px mosaic of the four tiles (rows, columns): the first across both tile
#: edges (4 tiles), the second across the row edge of the right-hand column (2 tiles).
FOOTPRINTS = [(slice(20, 110), slice(10, 120)), (slice(5, 90), slice(70, 128))]


@pytest.fixture(scope="module")
def lst(tmp_path_factory: pytest.TempPathFactory, retrieval_model) -> Path:
    """The LST root of a scene cube of 4 tiles and 2 scenes, each scene split over the 4 tiles."""
    base = tmp_path_factory.mktemp("clients")
    cube = base / "cube"
    for i, (rows, cols) in enumerate(FOOTPRINTS):
        full = synthetic_scene(rows.stop - rows.start, cols.stop - cols.start, i)
        scene = {"scene_id": f"GF5B_VIMI_SYN_{i:03d}", "source": f"/archive/syn_{i:03d}.tar",
                 "time": np.datetime64("2022-05-01T03:30") + np.timedelta64(16 * i, "D")}
        for tile, (dr, dc) in TILES.items():
            r0, c0 = dr * 64, dc * 64
            y0, y1 = max(rows.start, r0) - r0, min(rows.stop, r0 + 64) - r0
            x0, x1 = max(cols.start, c0) - c0, min(cols.stop, c0 + 64) - c0
            if y0 >= y1 or x0 >= x1:
                continue
            grid = SCHEME.tile(EPSG, *[int(v) for v in tile.split("_")[1:]])
            store = cube / f"{tile}.zarr"
            [slot] = append_slots(store, grid, [scene], chunk=(32, 32))
            part = {k: v[y0 + r0 - rows.start:y1 + r0 - rows.start, x0 + c0 - cols.start:x1 + c0 - cols.start]
                    for k, v in full.items()}
            write_scene(store, slot, part, f"{i:064x}", window=(y0, y1, x0, x1))
    retrieve(cube, retrieval_model("rf"), base / "lst", threads=2, device="cpu")
    return base / "lst"


@pytest.fixture(scope="module")
def exported(lst: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("cog") / "cogs"
    t0 = time.perf_counter()
    summary = export_cogs(lst, out)
    summary["wall_s"] = time.perf_counter() - t0
    catalog = pystac.Catalog.from_file(str(summary["stac"]))
    items = list(catalog.get_items(recursive=True))
    for item in items:
        item.make_asset_hrefs_absolute()
    return {"summary": summary, "items": items, "catalog": catalog, "out": out}


def _tile_of(item_id: str) -> str:
    return "_".join(item_id.split("_")[-3:])


def _cube(lst: Path, var: str = "lst") -> dict[str, xr.DataArray]:
    return {t: xr.open_zarr(lst / f"{t}.zarr")[var].load() for t in TILES if (lst / f"{t}.zarr").exists()}


def test_the_scenes_straddle_tile_edges_and_export_one_item_per_scene_and_tile(lst, exported):
    s = exported["summary"]
    stores = _cube(lst)
    steps = sum(int(xr.open_zarr(lst / f"{t}.zarr")["retrieve_ok"].sum()) for t in stores)
    assert len(stores) == 4 and steps == 6
    assert s["items"] == steps and s["written"] == 3 * steps and s["kept"] == 0 and not s["failed"]
    ids = sorted(i.id for i in exported["items"])
    assert ids[0] == f"GF5B_VIMI_SYN_000_{next(iter(TILES))}" and len(ids) == steps
    for item in exported["items"]:
        assert sorted(item.assets) == sorted([*COG_VARIABLES, "source"])
        scene = item.properties["sftl_scene_id"]
        assert item.assets["source"].href == f"/archive/syn_{scene[-3:]}.tar"  # the delivery the scene cube records
        assert item.get_single_link("via").get_absolute_href() == f"/archive/syn_{scene[-3:]}.tar"
        assert item.properties["proj:code"] == f"EPSG:{EPSG}" and item.properties["proj:shape"] == [64, 64]
        assert item.properties["title"] == f"LST of scene {item.properties['sftl_scene_id']} on tile " \
                                           f"{_tile_of(item.id)}"
        assert item.get_single_link("derived_from") is not None  # the LST Zarr Item of the same scene and tile


def test_odc_stac_load_gives_the_cube_values_on_the_cube_grid(lst, exported):
    odc_stac = pytest.importorskip("odc.stac")
    ds = odc_stac.load(exported["items"], bands=["lst", "lst_uncertainty", "qc"], crs=f"EPSG:{EPSG}",
                       resolution=40)
    assert ds.odc.geobox.crs.epsg == EPSG and ds.sizes["time"] == 2
    assert ds.sizes["y"] == 128 and ds.sizes["x"] == 128  # the four tiles, nothing resampled
    compared = 0
    for var in ("lst", "lst_uncertainty", "qc"):
        for tile, cube in _cube(lst, var).items():
            for t in cube["time"].values:
                got = ds[var].sel(time=t).sel(x=cube["x"], y=cube["y"])  # exact coordinates: same pixel grid
                want = cube.sel(time=t)
                if var == "qc":
                    mask = np.isfinite(_cube(lst)[tile].sel(time=t).values)
                    np.testing.assert_array_equal(got.values[mask], want.values[mask])
                else:
                    np.testing.assert_array_equal(got.values, want.values)  # NaN where the cube has none
                compared += int(np.isfinite(want.values).sum()) if var != "qc" else 0
    assert compared > 2 * 6 * 1000


def test_stackstac_stack_gives_the_cube_values_on_the_cube_grid(lst, exported):
    stackstac = pytest.importorskip("stackstac")
    # stackstac 0.5.1 reads the CRS from proj:epsg only, which projection v2 replaced by proj:code (and pystac 1.12+
    # migrates away on read): gjoseph92/stackstac#262. Without it stackstac falls back to the lon/lat bbox and an
    # off-grid 130 x 130 px array; with proj:epsg put back into the item dicts it uses proj:transform (docs/stac.md).
    items = [copy.deepcopy(item.to_dict()) for item in exported["items"]]  # to_dict shares the properties
    for d in items:
        d["properties"]["proj:epsg"] = int(d["properties"]["proj:code"].split(":")[1])
    stack = stackstac.stack(items, assets=["lst", "lst_uncertainty"], xy_coords="center")  # default: corners
    assert stack.sizes["y"] == 128 and stack.sizes["x"] == 128 and stack.rio.crs.to_epsg() == EPSG
    cube = _cube(lst)
    unc = _cube(lst, "lst_uncertainty")
    for i, item in enumerate(stack["id"].values):
        tile = _tile_of(str(item))
        t = stack["time"].values[i]
        got = stack.isel(time=i).sel(x=cube[tile]["x"], y=cube[tile]["y"]).compute()
        np.testing.assert_array_equal(got.sel(band="lst").values, cube[tile].sel(time=t).values)
        np.testing.assert_array_equal(got.sel(band="lst_uncertainty").values, unc[tile].sel(time=t).values)


def test_every_cog_validates_and_every_item_validates_against_the_schemas(exported):
    from rio_cogeo.cogeo import cog_validate
    from test_stac import _validator

    cogs = sorted(exported["out"].rglob("*.tif"))
    assert len(cogs) == 3 * len(exported["items"])
    for cog in cogs:
        valid, errors, _ = cog_validate(str(cog))
        assert valid and not errors, (cog.name, errors)
        with rasterio.open(cog) as src:
            assert src.crs.to_epsg() == EPSG and src.count == 1 and src.shape == (64, 64)
            assert src.nodata == QC_FILL if cog.stem.endswith("_qc") else np.isnan(src.nodata)
    validator = _validator()
    declared = {u for i in exported["items"] for u in i.stac_extensions}
    assert declared <= set(validator.schema_cache), declared - set(validator.schema_cache)
    exported["catalog"].validate(validator=validator)
    for item in exported["items"]:
        assert item.validate(validator=validator)
        for name in COG_VARIABLES:
            asset = item.assets[name]
            assert asset.media_type == pystac.MediaType.COG
            band = asset.extra_fields["raster:bands"][0]
            assert band["nodata"] == (QC_FILL if name == "qc" else "nan") and band["spatial_resolution"] == 40.0
            digest = asset.extra_fields["file:checksum"]
            assert digest == "1220" + hashlib.sha256(Path(asset.href).read_bytes()).hexdigest()
            assert asset.extra_fields["file:size"] == Path(asset.href).stat().st_size


def test_a_second_export_keeps_every_cog_and_one_time_adds_only_its_items(lst, exported, tmp_path):
    out = tmp_path / "again"
    first = export_cogs(lst, out, times=["2022-05-01"])
    assert first["written"] == 3 * 4 and first["items"] == 4
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.tif")}
    second = export_cogs(lst, out)
    assert second["written"] == 3 * 2 and second["kept"] == 3 * 4 and second["items"] == 6
    assert all(p.stat().st_mtime_ns == m for p, m in mtimes.items())
    tile = next(iter(TILES))
    assert export_cogs(lst, out, tiles=[tile])["written"] == 0


def test_gdal_opens_the_lst_zarr_with_crs_and_transform(lst):
    tile = next(iter(TILES))
    store = lst / f"{tile}.zarr"
    with rasterio.open(f'ZARR:"{store}":/lst:0') as src:
        assert src.crs.to_epsg() == EPSG
        grid = SCHEME.tile(EPSG, int(ROW), int(COL))
        assert tuple(src.transform)[:6] == grid.transform and src.shape == (64, 64)
    attrs = json.loads((store / "lst" / ".zattrs").read_text())
    assert attrs["_CRS"]["projjson"]["id"] == {"authority": "EPSG", "code": EPSG}
    assert attrs["_CRS"]["wkt"].startswith("PROJCRS[\"WGS 84 / UTM zone 50N\"")
    gdalinfo = shutil.which("gdalinfo")
    if gdalinfo is None:
        pytest.skip("no system gdalinfo (Debian: apt install gdal-bin) to check an older GDAL")
    info = subprocess.run([gdalinfo, "-json", f'ZARR:"{store}":/lst:0'], capture_output=True, text=True, check=True)
    doc = json.loads(info.stdout)
    assert doc["coordinateSystem"]["wkt"].startswith("PROJCRS[\"WGS 84 / UTM zone 50N\"")
    assert doc["geoTransform"] == [grid.transform[2], 40.0, 0.0, grid.transform[5], 0.0, -40.0]


# ---------------------------------------------------------------------------------------------------- bad input
def test_a_time_or_tile_the_cube_does_not_hold_is_refused_naming_it(lst, tmp_path):
    with pytest.raises(ExportError, match=r"--time: '2023-01-01' is no complete time step"):
        plan_export(lst, tmp_path / "x", times=["2023-01-01"])
    with pytest.raises(ExportError, match=r"--tiles: '50N_001_001' is not a tile of .* \(holds 50N_"):
        plan_export(lst, tmp_path / "x", tiles=["50N_001_001"])
    with pytest.raises(ExportError, match=r"--time: 'yesterday' is not a time"):
        plan_export(lst, tmp_path / "x", times=["yesterday"])
    assert not (tmp_path / "x").exists()


def test_cli_export_refuses_a_folder_of_another_cube_without_overwrite(lst, exported, tmp_path, capsys):
    other = tmp_path / "other_lst"
    shutil.copytree(lst, other)
    out = tmp_path / "cogs"
    shutil.copytree(exported["out"], out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert main(["export", "--lst", str(other), "--cog", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: holds COGs of another LST cube" in err[0] and "--overwrite" in err[0]
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert main(["export", "--lst", str(other), "--cog", str(out), "--overwrite", "--workers", "1"]) == 0
    assert json.loads((out / EXPORT_MANIFEST).read_text())["lst"] == str(other.resolve())
    assert main(["export", "--lst", str(other), "--cog", str(out), "--time", "2030-01-01"]) == 2
    assert "'2030-01-01' is no complete time step" in capsys.readouterr().err


def test_an_lst_store_with_an_older_catalog_gets_it_rewritten_and_said_so(lst, tmp_path):
    old = tmp_path / "lst"
    shutil.copytree(lst, old)
    collection = old / "stac" / LST_COLLECTION / "collection.json"
    doc = json.loads(collection.read_text())
    doc.pop("assets")
    collection.write_text(json.dumps(doc))
    summary = export_cogs(old, tmp_path / "cogs", tiles=[next(iter(TILES))], times=["2022-05-01"])
    assert summary["lst_stac_rewritten"] and json.loads(collection.read_text())["assets"]
    again = export_cogs(old, tmp_path / "cogs", tiles=[next(iter(TILES))], times=["2022-05-01"])
    assert not again["lst_stac_rewritten"] and again["kept"] == 3
    assert pystac.Catalog.from_file(str(again["stac"])).get_child(COG_COLLECTION) is not None
    assert SCHEMAS.is_dir()
