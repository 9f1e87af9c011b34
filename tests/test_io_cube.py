"""The cube writer: metadata once, region writes per slot, completion flags, grids."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from sftl_dask.geo import GeoBox
from sftl_dask.io.cube import CUBE_VARIABLES, append_slots, read_slots, write_scene
from sftl_dask.io.stores import cube_stores, open_cube

GRID = GeoBox("EPSG:32650", (40.0, 0.0, 400_000.0, 0.0, -40.0, 4_470_000.0), 600, 520)


def _scene(value: float) -> dict[str, np.ndarray]:
    out = {}
    for k, spec in CUBE_VARIABLES.items():
        out[k] = np.full((GRID.height, GRID.width), value if spec["dtype"] == "float32" else 1, dtype=spec["dtype"])
    return out


def _scenes(ids):
    return [{"scene_id": s, "source": f"/data/{s}.tar", "time": np.datetime64("2022-06-01T03:00") +
             np.timedelta64(i, "D")} for i, s in enumerate(ids)]


def test_slots_fill_by_region_writes_and_count_only_when_complete(tmp_path):
    store = tmp_path / f"{GRID.name}.zarr"
    assert append_slots(store, GRID, _scenes(["a", "b"])) == [0, 1]
    write_scene(store, 1, _scene(300.0), "c" * 64)
    grid, slots = read_slots(store)
    assert grid == GRID
    assert [s["ingest_ok"] for s in slots] == [False, True] and slots[1]["checksum"] == "c" * 64
    ds = xr.open_zarr(store)
    assert ds["bt_10_80"].chunks == ((1, 1), (512, 8), (512, 88))
    assert np.isnan(ds["bt_10_80"].isel(time=0)).all() and float(ds["bt_10_80"].isel(time=1).mean()) == 300.0
    complete = open_cube(tmp_path)
    assert complete.sizes["time"] == 1 and str(complete["scene_id"].values[0]) == "b"
    assert complete.rio.crs.to_epsg() == 32650


def test_append_extends_time_and_keeps_existing_data(tmp_path):
    store = tmp_path / "g.zarr"
    append_slots(store, GRID, _scenes(["a"]))
    write_scene(store, 0, _scene(290.0), "0" * 64)
    assert append_slots(store, GRID, _scenes(["x", "y"])) == [1, 2]
    write_scene(store, 2, _scene(310.0), "1" * 64)
    ds = xr.open_zarr(store)
    assert ds.sizes["time"] == 3 and list(ds["scene_id"].values) == ["a", "x", "y"]
    assert float(ds["bt_08_20"].isel(time=0).max()) == 290.0 and float(ds["bt_08_20"].isel(time=2).min()) == 310.0
    assert [s["ingest_ok"] for s in read_slots(store)[1]] == [True, False, True]


def test_cube_is_readable_by_plain_xarray_with_units_and_crs(tmp_path):
    store = tmp_path / "g.zarr"
    append_slots(store, GRID, _scenes(["a"]))
    ds = xr.open_zarr(store)
    assert ds["wvc"].attrs["units"] == "g cm-2" and ds["bt_11_95"].attrs["units"] == "K"
    assert "spatial_ref" in ds.coords or "spatial_ref" in ds
    assert ds["x"].values[0] == 400_020.0 and ds["y"].values[0] == 4_469_980.0
    assert cube_stores(tmp_path) == {"g": store}


def test_plain_open_zarr_finds_the_crs_and_cf_time_before_and_after_an_append(tmp_path):
    import rioxarray  # noqa: F401  (what a user without this package has: xarray + rioxarray)

    store = tmp_path / "g.zarr"
    append_slots(store, GRID, _scenes(["a"]))
    for n in (1, 2):
        ds = xr.open_zarr(store)  # no decode_coords="all": spatial_ref must come back as a coordinate
        assert "spatial_ref" in ds.coords and "spatial_ref" not in ds.data_vars
        assert ds.rio.crs is not None and ds.rio.crs.to_epsg() == 32650
        assert ds["bt_10_80"].rio.crs.to_epsg() == 32650
        assert ds["time"].attrs["standard_name"] == "time" and ds["time"].attrs["axis"] == "T"
        assert ds.sizes["time"] == n
        if n == 1:
            append_slots(store, GRID, _scenes(["a", "b"])[1:])


def test_wrong_grid_or_shape_refused_with_store_named(tmp_path):
    store = tmp_path / "g.zarr"
    append_slots(store, GRID, _scenes(["a"]))
    other = GeoBox("EPSG:32650", (40.0, 0.0, 0.0, 0.0, -40.0, 0.0), 10, 10)
    with pytest.raises(ValueError, match="holds grid"):
        append_slots(store, other, _scenes(["b"]))
    bad = _scene(1.0)
    bad["wvc"] = bad["wvc"][:10]
    with pytest.raises(ValueError, match="wvc has shape"):
        write_scene(store, 0, bad, "")
    del bad["wvc"]
    with pytest.raises(ValueError, match="lacks wvc"):
        write_scene(store, 0, bad, "")
    assert not read_slots(store)[1][0]["ingest_ok"]


def test_geobox_lattice_offsets():
    shifted = GeoBox(GRID.crs, (40.0, 0.0, 400_000.0 + 40 * 100, 0.0, -40.0, 4_470_000.0 + 40 * 64), 600, 520)
    assert GRID.offset_of(shifted) == (-64, 100)
    off_lattice = GeoBox(GRID.crs, (40.0, 0.0, 400_013.0, 0.0, -40.0, 4_470_000.0), 10, 10)
    assert GRID.offset_of(off_lattice) is None
    with pytest.raises(ValueError, match="north-up"):
        GeoBox("EPSG:4326", (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), 2, 2)
