"""STAC catalogs of the scene cube and the LST cube: declared extensions, relative hrefs, CCW rings, valid Items.

The extension schemas (projection, raster, file, grid, eo, view, processing at the versions pystac
declares) are vendored under ``tests/data/stac_schemas`` so that validation needs no network.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
from helpers import synthetic_scene
from pyproj import Transformer
from pystac.extensions.datacube import DatacubeExtension
from pystac.extensions.xarray_assets import XarrayAssetsExtension

from sftl_dask.geo import GeoBox
from sftl_dask.io.cube import append_slots, write_scene
from sftl_dask.io.stac import (
    LST_COLLECTION,
    PROCESSING_SCHEMA_URI,
    SCENE_COLLECTION,
    write_lst_stac,
    write_scene_stac,
)
from sftl_dask.retrieve import retrieve

SCHEMAS = Path(__file__).parent / "data" / "stac_schemas"
GRID = GeoBox("EPSG:32650", (40.0, 0.0, 400_000.0, 0.0, -40.0, 4_500_000.0), 140, 150)
#: The store's name: a tile name, as ingest names stores (Items are named after it).
TILE = "50N_135_010"


def _extension_uris() -> dict[str, str]:
    """Field prefix -> the schema URI its extension class declares."""
    from pystac.extensions.eo import EOExtension
    from pystac.extensions.file import FileExtension
    from pystac.extensions.grid import GridExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension
    from pystac.extensions.view import ViewExtension

    return {"proj": ProjectionExtension.get_schema_uri(), "raster": RasterExtension.get_schema_uri(),
            "xarray": XarrayAssetsExtension.get_schema_uri(), "cube": DatacubeExtension.get_schema_uri(),
            "file": FileExtension.get_schema_uri(), "grid": GridExtension.get_schema_uri(),
            "eo": EOExtension.get_schema_uri(), "view": ViewExtension.get_schema_uri(),
            "processing": PROCESSING_SCHEMA_URI}


def _tar(path: Path, payload: bytes) -> str:
    """A small tar archive at ``path``; its sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("payload.bin")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _vimi_meta(grid: GeoBox) -> dict[str, float]:
    """Corner lon/lat of a grid as VIMI metadata names them (top-left, top-right, ... : a clockwise walk)."""
    left, bottom, right, top = grid.bounds
    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    meta: dict[str, float] = {"CloudPercent": 12.5, "SolarZenith": 30.0, "SolarAzimuth": 140.0,
                              "SatelliteZenith": 4.5, "OrbitID": 1234.0}
    for name, (x, y) in {"TopLeft": (left, top), "TopRight": (right, top), "BottomRight": (right, bottom),
                         "BottomLeft": (left, bottom)}.items():
        meta[f"{name}Longitude"], meta[f"{name}Latitude"] = to_ll.transform(x, y)
    return meta


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, retrieval_model) -> dict[str, Any]:
    """``world/``: two product archives, a scene cube root with its catalog, and the LST root with its catalog."""
    base = tmp_path_factory.mktemp("stac")
    world = base / "world"
    store = world / "cube" / f"{TILE}.zarr"
    scenes = []
    for i in range(2):
        tar = world / "archives" / f"GF5B_VIMI_SYN_{i:03d}.tar"
        sha = _tar(tar, bytes([i]) * 1000)
        scenes.append({"scene_id": tar.stem, "path": str(tar), "source": str(tar), "checksum": sha,
                       "time": np.datetime64("2022-05-01T03:30") + np.timedelta64(16 * i, "D"),
                       "store": str(store), "grid": GRID, "meta": _vimi_meta(GRID)})
    append_slots(store, GRID, scenes, chunk=(64, 64))
    for i, s in enumerate(scenes):
        write_scene(store, i, synthetic_scene(GRID.height, GRID.width, i), s["checksum"])
    scene_cat = write_scene_stac(world / "cube", scenes)
    retrieve(world / "cube", retrieval_model("rf"), world / "lst", threads=2, device="cpu")
    lst_cat = write_lst_stac(world / "lst")
    return {"base": base, "world": world, "scenes": scenes, "scene_cat": scene_cat, "lst_cat": lst_cat}


def _item_files(catalog: Path) -> list[Path]:
    return sorted(p for p in catalog.parent.rglob("*.json") if json.loads(p.read_text())["type"] == "Feature")


def _all_items(w: dict[str, Any]) -> list[Path]:
    return _item_files(w["scene_cat"]) + _item_files(w["lst_cat"])


def test_one_item_per_scene_and_per_grid_and_time_step_under_a_catalog_and_collection(world):
    scene_cat = pystac.Catalog.from_file(str(world["scene_cat"]))
    lst_cat = pystac.Catalog.from_file(str(world["lst_cat"]))
    assert [c.id for c in scene_cat.get_children()] == [SCENE_COLLECTION]
    assert [c.id for c in lst_cat.get_children()] == [LST_COLLECTION]
    assert sorted(i.id for i in scene_cat.get_items(recursive=True)) == ["GF5B_VIMI_SYN_000", "GF5B_VIMI_SYN_001"]
    lst_ids = sorted(i.id for i in lst_cat.get_items(recursive=True))
    assert lst_ids == [f"GF5B_VIMI_SYN_000_{TILE}", f"GF5B_VIMI_SYN_001_{TILE}"]
    assert world["lst_cat"] == world["world"] / "lst" / "stac" / "catalog.json"


def test_every_prefixed_field_has_its_extension_declared_and_none_is_declared_unused(world):
    uris = _extension_uris()
    for path in _all_items(world):
        d = json.loads(path.read_text())
        used = {k.split(":")[0] for k in d["properties"] if ":" in k}
        for asset in d["assets"].values():
            used |= {k.split(":")[0] for k in asset if ":" in k}
        assert used <= set(uris), (path.name, used - set(uris))
        assert sorted(d["stac_extensions"]) == sorted(uris[p] for p in used), path.name
    scene = json.loads(_item_files(world["scene_cat"])[0].read_text())
    assert {"eo", "view", "proj", "raster", "file", "grid", "processing"} <= {
        k.split(":")[0] for k in [*scene["properties"], *scene["assets"]["archive"], *scene["assets"]["cube"]]
        if ":" in k}


def test_hrefs_are_relative_and_the_catalog_resolves_after_moving_its_folder(world, tmp_path):
    for path in [*world["scene_cat"].parent.rglob("*.json"), *world["lst_cat"].parent.rglob("*.json")]:
        d = json.loads(path.read_text())
        hrefs = [a["href"] for a in d.get("assets", {}).values()] + [link["href"] for link in d["links"]]
        for h in hrefs:
            assert not h.startswith(("/", "file:")) and "://" not in h, (path.name, h)
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(world["world"], moved)
    for cat_path in (moved / "cube" / "stac" / "catalog.json", moved / "lst" / "stac" / "catalog.json"):
        items = list(pystac.Catalog.from_file(str(cat_path)).get_items(recursive=True))
        assert len(items) == 2
        for item in items:
            for asset in item.assets.values():
                href = Path(asset.get_absolute_href())
                assert href.exists() and str(href).startswith(str(moved)), (item.id, href)
            for link in item.get_links("derived_from"):
                assert Path(link.get_absolute_href()).is_file()


def test_polygon_rings_are_counter_clockwise_and_inside_their_bbox(world):
    for path in _all_items(world):
        d = json.loads(path.read_text())
        ring = d["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]
        area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(ring))
        assert area2 > 0, path.name
        lon0, lat0, lon1, lat1 = d["bbox"]
        assert all(lon0 <= x <= lon1 and lat0 <= y <= lat1 for x, y in ring)
        assert 115.5 < lon0 < lon1 < 116.0 and 40.5 < lat0 < lat1 < 41.0  # UTM 50N (117 E), 400 km E, 4500 km N
    shapely = pytest.importorskip("shapely")
    from shapely.geometry import shape

    for path in _all_items(world):
        geom = shape(json.loads(path.read_text())["geometry"])
        assert geom.is_valid and geom.exterior.is_ccw
        assert shapely.geometry.polygon.orient(geom, 1.0).equals_exact(geom, 0.0)


def test_items_carry_projection_checksum_and_lineage(world):
    by_id = {s["scene_id"]: s for s in world["scenes"]}
    for item in pystac.Catalog.from_file(str(world["scene_cat"])).get_items(recursive=True):
        s = by_id[item.id]
        assert item.properties["proj:code"] == "EPSG:32650" and item.properties["proj:shape"] == [150, 140]
        assert item.properties["eo:cloud_cover"] == 12.5 and item.properties["view:sun_elevation"] == 60.0
        assert item.properties["view:incidence_angle"] == 4.5 and item.properties["grid:code"] == f"SFTL-{TILE}"
        assert item.assets["archive"].extra_fields["file:checksum"] == "1220" + s["checksum"]
        assert item.assets["archive"].extra_fields["file:size"] == Path(s["path"]).stat().st_size
        names = [b["name"] for b in item.assets["cube"].extra_fields["raster:bands"]]
        assert names[:4] == ["bt_08_20", "bt_08_63", "bt_10_80", "bt_11_95"] and "cloud" in names
    for item in pystac.Catalog.from_file(str(world["lst_cat"])).get_items(recursive=True):
        s = by_id[item.properties["sftl_scene_id"]]
        assert item.properties["processing:level"] == "L2" and s["scene_id"] in item.properties["processing:lineage"]
        assert item.assets["source"].extra_fields["file:checksum"] == "1220" + s["checksum"]
        bands = item.assets["lst"].extra_fields["raster:bands"]
        assert [b["name"] for b in bands] == ["lst", "lst_uncertainty", "qc", "vza"]
        assert bands[0]["unit"] == "K" and bands[0]["nodata"] == "nan" and bands[2]["data_type"] == "uint16"
        derived = item.get_single_link("derived_from")
        assert derived is not None and Path(derived.get_absolute_href()).name == f"{s['scene_id']}.json"
        assert item.datetime == pystac.Item.from_file(derived.get_absolute_href()).datetime


def _validator() -> Any:
    """pystac's JSON-schema validator with the vendored extension schemas (no network)."""
    pytest.importorskip("jsonschema")
    from pystac.validation.stac_validator import JsonSchemaSTACValidator

    validator = JsonSchemaSTACValidator()
    for f in SCHEMAS.glob("*.json"):
        schema = json.loads(f.read_text())
        validator.schema_cache[schema["$id"].rstrip("#")] = schema
    return validator


def validate_offline(obj: Any, validator: Any) -> None:
    """pystac validation against the core schema and every vendored extension schema. The xarray-assets and
    datacube schemas are not vendored: a Collection's fields of theirs are pinned by
    test_each_tile_store_is_a_collection_asset_that_xpystac_opens."""
    d = obj.to_dict()
    d["stac_extensions"] = [u for u in d.get("stac_extensions", []) if u.rstrip("#") in validator.schema_cache]
    pystac.validation.validate_dict(d, validator=validator)


def test_catalogs_collections_and_items_validate_against_the_stac_and_extension_schemas(world):
    validator = _validator()
    declared = {u for p in _all_items(world) for u in json.loads(p.read_text())["stac_extensions"]}
    assert declared <= set(validator.schema_cache), declared - set(validator.schema_cache)
    for cat_path in (world["scene_cat"], world["lst_cat"]):
        catalog = pystac.Catalog.from_file(str(cat_path))
        catalog.validate(validator=validator)
        for child in catalog.get_children():
            validate_offline(child, validator)
        n = 0
        for item in catalog.get_items(recursive=True):
            assert item.validate(validator=validator), item.id
            n += 1
        assert n == 2


def test_a_later_ingest_adds_items_and_upgrades_an_older_writers_item(world, tmp_path):
    root = tmp_path / "cube"
    shutil.copytree(world["world"] / "cube", root)
    # an Item as the writer before this one made it: clockwise ring, undeclared eo/view, sftl: fields, absolute href
    old = pystac.Item.from_file(str(next((root / "stac").rglob("GF5B_VIMI_SYN_000.json"))))
    d = old.to_dict()
    d["geometry"]["coordinates"][0] = d["geometry"]["coordinates"][0][::-1]
    d["stac_extensions"] = []
    d["properties"] = {k: v for k, v in d["properties"].items() if not k.startswith(("proj:", "grid:", "processing:"))}
    d["properties"]["sftl:grid"] = GRID.name
    d["assets"] = {"cube": {"href": str(root / f"{TILE}.zarr"), "roles": ["data"]}}
    d["links"] = []
    shutil.rmtree(root / "stac")
    catalog = pystac.Catalog(id="sftl-scene-cube", description="old")
    catalog.add_item(pystac.Item.from_dict(d))
    catalog.normalize_hrefs(str(root / "stac"))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)

    scene = dict(world["scenes"][1], store=str(root / f"{TILE}.zarr"))
    write_scene_stac(root, [scene])
    write_scene_stac(root, [scene])  # the same scene again: replaced, not duplicated
    items = {i.id: i for i in pystac.Catalog.from_file(str(root / "stac" / "catalog.json")).get_items(recursive=True)}
    assert sorted(items) == ["GF5B_VIMI_SYN_000", "GF5B_VIMI_SYN_001"]
    upgraded = items["GF5B_VIMI_SYN_000"]
    ring = upgraded.geometry["coordinates"][0]
    assert sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairwise(ring)) > 0
    assert not any(k.startswith("sftl:") for k in upgraded.properties)
    uris = _extension_uris()
    assert {uris["eo"], uris["view"]} <= set(upgraded.stac_extensions)
    raw = json.loads(Path(upgraded.get_self_href()).read_text())
    assert raw["assets"]["cube"]["href"] == f"../../../{TILE}.zarr"
    assert Path(upgraded.assets["cube"].get_absolute_href()) == (root / f"{TILE}.zarr").resolve()
    assert write_scene_stac(root, []) is None


def test_write_lst_stac_of_a_folder_without_lst_stores_raises_naming_it(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "nothing"))):
        write_lst_stac(tmp_path / "nothing")


def test_write_lst_stac_of_a_single_store_writes_a_catalog_beside_it(world, tmp_path):
    store = tmp_path / "one.zarr"
    shutil.copytree(next((world["world"] / "lst").glob("*.zarr")), store)
    cat = write_lst_stac(store)
    assert cat == tmp_path / "one_stac" / "catalog.json"
    items = list(pystac.Catalog.from_file(str(cat)).get_items(recursive=True))
    assert len(items) == 2 and all(Path(i.assets["lst"].get_absolute_href()) == store.resolve() for i in items)


def test_each_tile_store_is_a_collection_asset_that_xpystac_opens(world):
    import xarray as xr
    import xpystac  # noqa: F401  (registers xarray's "stac" engine)

    for cat_path, collection_id, names in ((world["lst_cat"], LST_COLLECTION, ["lst", "lst_uncertainty", "qc", "vza"]),
                                           (world["scene_cat"], SCENE_COLLECTION, None)):
        collection = pystac.Catalog.from_file(str(cat_path)).get_child(collection_id)
        uris = _extension_uris()
        assert {uris["xarray"], uris["cube"], uris["proj"], uris["raster"]} <= set(collection.stac_extensions)
        assert sorted(collection.assets) == [TILE]
        asset = collection.assets[TILE]
        assert asset.media_type == "application/vnd+zarr" and asset.roles == ["data"] and TILE in asset.title
        assert asset.extra_fields["xarray:open_kwargs"] == {"engine": "zarr", "consolidated": True, "chunks": {}}
        dims = asset.extra_fields["cube:dimensions"]
        left, bottom, right, top = GRID.bounds
        assert dims["x"] == {"type": "spatial", "axis": "x", "extent": [left, right], "step": 40.0,
                             "reference_system": 32650}
        assert dims["y"]["extent"] == [bottom, top] and dims["y"]["step"] == -40.0
        assert dims["time"] == {"type": "temporal", "extent": ["2022-05-01T03:30:00Z", "2022-05-17T03:30:00Z"]}
        variables = asset.extra_fields["cube:variables"]
        assert names is None or list(variables) == names
        assert all(v["dimensions"] == ["time", "y", "x"] and v["type"] == "data" for v in variables.values())
        assert [b["name"] for b in asset.extra_fields["raster:bands"]] == list(variables)
        assert asset.extra_fields["proj:code"] == "EPSG:32650"
        asset.href = asset.get_absolute_href()  # written relative to the collection's file, as pystac reads it
        opened = xr.open_dataset(asset, engine="stac")
        direct = xr.open_zarr(asset.get_absolute_href())
        first = next(iter(variables))
        assert opened.rio.crs == direct.rio.crs and opened.sizes == direct.sizes
        np.testing.assert_array_equal(opened[first].values, direct[first].values)
        assert int(np.isfinite(opened[first].values).sum()) > 0
