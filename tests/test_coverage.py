"""The chunk-coverage index: retrieval, composites and copies plan only chunks holding data, and get the same bits.

The small testbed's 4 scenes of 640 px, ingested onto 1536 px tiles (3 x 3 chunks of 512 px), cover at most 2 x 2
chunks of a tile step: most (tile step, chunk) pairs hold no pixel of their scene.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from sftl_dask.cli import main
from sftl_dask.composites import COMPOSITE_OK_VAR, write_composites
from sftl_dask.ingest import ingest
from sftl_dask.io.cube import COVERAGE_VAR, read_coverage, read_slots, rebuild_coverage
from sftl_dask.io.lst import LST_OK_VAR, LST_VARIABLES, QC_FILL, lst_stores
from sftl_dask.io.stores import cube_stores, open_store
from sftl_dask.retrieve import RetrieveError, retrieve


def _data_chunks(cube: Path) -> tuple[int, int]:
    """(tile step, chunk) pairs holding a finite ``bt_10_80``, counted from the data; and all pairs of those steps."""
    held = total = 0
    for store in cube_stores(cube).values():
        _, slots = read_slots(store)
        bt = zarr.open_array(str(store), path="bt_10_80", mode="r")
        _, cy, cx = bt.chunks
        for s in slots:
            step = np.isfinite(bt[s["index"]])
            ny, nx = step.shape
            n = [bool(step[y:y + cy, x:x + cx].any()) for y in range(0, ny, cy) for x in range(0, nx, cx)]
            if any(n):  # a slot without data gets no LST step at all
                held += sum(n)
                total += len(n)
    return held, total


def _drop_index(root: Path) -> None:
    """Make a cube root look written before the index existed (no chunk_valid_px)."""
    for store in cube_stores(root).values():
        shutil.rmtree(Path(store) / COVERAGE_VAR)
        zarr.consolidate_metadata(str(store))


@pytest.fixture(scope="module")
def cube(small_testbed, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coverage") / "cube"
    ingest([small_testbed / "archives"], root, era5=sorted(str(p) for p in (small_testbed / "era5").glob("*.nc")),
           ged=small_testbed / "ged", tile_px=1536)
    return root


@pytest.fixture(scope="module")
def lst(cube, retrieval_model, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("coverage") / "lst"
    return out, retrieve(cube, retrieval_model("sw"), out)


def test_retrieval_tasks_equal_the_chunks_holding_data(cube, lst):
    held, total = _data_chunks(cube)
    summary = lst[1]
    assert summary["failed"] == [] and summary["retrieved"] > 0
    assert summary["chunks"] == held
    assert held < total  # the index bites: scenes straddle tiles on this cube
    # the LST stores' own index counts the observed pixels of each chunk written
    for store in lst_stores(lst[0]).values():
        index = read_coverage(store)
        assert index is not None and (index >= 0).all()
        qc = zarr.open_array(str(store), path="qc", mode="r")
        for t in range(index.shape[0]):
            step = qc[t]
            observed = (step & 2) == 0
            assert index[t].tolist() == [[int(observed[r:r + 512, c:c + 512].sum())
                                          for c in range(0, step.shape[1], 512)]
                                         for r in range(0, step.shape[0], 512)]
            assert 0 < (index[t] > 0).sum() < index[t].size


def test_lst_with_the_index_equals_lst_without_it_bit_for_bit(cube, lst, retrieval_model, tmp_path):
    old = tmp_path / "cube"
    shutil.copytree(cube, old)
    _drop_index(old)
    s = retrieve(old, retrieval_model("sw"), tmp_path / "lst")
    _, total = _data_chunks(cube)
    assert s["chunks"] == total and s["retrieved"] == lst[1]["retrieved"]
    skipped_px = 0
    for name, store in lst_stores(lst[0]).items():
        a, b = open_store(store), open_store(lst_stores(tmp_path / "lst")[name])
        assert a["qc"].dtype == np.uint16  # not CF-masked: the fill is a flag value
        b = b.sel(time=a["time"])
        for v in LST_VARIABLES:
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=f"{name} {v}")
        never = read_coverage(store) == 0  # chunks never written: they read as not covered
        for t, r, c in zip(*np.nonzero(never), strict=True):
            win = {"time": int(t), "y": slice(r * 512, (r + 1) * 512), "x": slice(c * 512, (c + 1) * 512)}
            assert (a["qc"][win].values == QC_FILL).all() and np.isnan(a["lst"][win].values).all()
            skipped_px += a["qc"][win].size
    assert skipped_px > 0


def test_an_lst_store_written_before_the_index_gets_every_chunk_when_appended(lst, cube, retrieval_model,
                                                                                tmp_path):
    out = tmp_path / "lst"
    shutil.copytree(lst[0], out)
    _drop_index(out)  # an LST store of an older version: qc without the fill, no index
    for store in lst_stores(out).values():
        zarr.open_array(str(store), path=LST_OK_VAR, mode="r+")[-1] = False  # its last step to do again
        zarr.consolidate_metadata(str(store))
    s = retrieve(cube, retrieval_model("sw"), out)
    assert s["retrieved"] == len(lst_stores(out)) and s["chunks"] == 9 * s["retrieved"]  # every chunk, as then


def test_an_index_that_disagrees_with_the_data_is_refused_naming_tile_and_step(cube, retrieval_model,
                                                                                tmp_path, capsys):
    edited = tmp_path / "cube"
    shutil.copytree(cube, edited)
    name, store = next(iter(cube_stores(edited).items()))
    index = zarr.open_array(str(store), path=COVERAGE_VAR, mode="r+")
    t, r, c = (int(v[0]) for v in np.nonzero(index[...] > 0))
    index[t, r, c] = 0  # edited by hand: a chunk holding data said to be empty
    zarr.consolidate_metadata(str(store))
    scene = read_slots(store)[1][t]["scene_id"]
    with pytest.raises(RetrieveError, match=rf"{name}.zarr: time step {t}: .*\({r}, {c}\).*{scene}"):
        retrieve(edited, retrieval_model("sw"), tmp_path / "lst")
    assert not (tmp_path / "lst").exists()
    assert main(["retrieve", "--cube", str(edited), "--model", str(retrieval_model("sw")),
                 "--out", str(tmp_path / "lst")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"time step {t}" in err[0]
    assert rebuild_coverage(store) == len(read_slots(store)[1])  # the repair: the index from the data
    assert int(index[t, r, c]) > 0
    assert retrieve(edited, retrieval_model("sw"), tmp_path / "lst")["failed"] == []


def _set_ok(root: Path, months: set[str], value: bool) -> None:
    for store in lst_stores(root).values():
        _, slots = read_slots(store, LST_OK_VAR)
        ok = zarr.open_array(str(store), path=LST_OK_VAR, mode="r+")
        for s in slots:
            if str(np.datetime64(s["time"], "M")) in months:
                ok[s["index"]] = value
        zarr.consolidate_metadata(str(store))


def test_composites_equal_the_accessor_and_a_new_month_recomputes_only_that_month(lst, tmp_path):
    full = tmp_path / "full"
    s = write_composites(lst[0], full)
    n_months = 0
    for name, store in lst_stores(lst[0]).items():
        ref = open_store(store)
        ref = ref.isel(time=np.flatnonzero(ref[LST_OK_VAR].values)).sortby("time")
        ref = ref.sftl.good().sftl.composite("MS", "median")
        got = open_store(full / f"{name}.zarr").sortby("time")
        assert got["time"].values.tolist() == ref["time"].values.tolist()
        np.testing.assert_array_equal(got["lst"].values, ref["lst"].values)
        np.testing.assert_array_equal(got["lst_uncertainty"].values, ref["lst_uncertainty"].values)
        np.testing.assert_array_equal(got["n_obs"].values, ref["n_obs"].values)
        assert got["lst"].attrs["cell_methods"] == ref["lst"].attrs["cell_methods"]  # one source: composite_attrs
        assert all(got[v].attrs[k] == a for v in ("lst", "lst_uncertainty", "n_obs") for k, a in ref[v].attrs.items())
        assert "valid_min" not in got["lst"].attrs and "ancillary_variables" not in got["lst"].attrs
        n_months += got.sizes["time"]
    assert s["computed"] == n_months and s["reused"] == 0
    assert s["tasks"] < 9 * n_months  # only chunks holding data

    # an archive that had not yet seen its last month; then that month arrives
    times = [np.datetime64(t, "M") for store in lst_stores(lst[0]).values()
             for t in open_store(store)["time"].values]
    last = {str(max(times))}
    inc = tmp_path / "lst"
    shutil.copytree(lst[0], inc)
    _set_ok(inc, last, False)
    before = write_composites(inc, tmp_path / "inc")
    _set_ok(inc, last, True)
    after = write_composites(inc, tmp_path / "inc")
    touched = sum(any(str(np.datetime64(t, "M")) in last for t in open_store(st)["time"].values)
                  for st in lst_stores(lst[0]).values())
    assert after["computed"] == touched and after["reused"] == before["computed"]
    assert write_composites(inc, tmp_path / "inc")["computed"] == 0
    for name in lst_stores(lst[0]):
        a = open_store(full / f"{name}.zarr").sortby("time")
        b = open_store(tmp_path / "inc" / f"{name}.zarr").sortby("time")
        assert bool(b[COMPOSITE_OK_VAR].all())
        for v in ("lst", "lst_uncertainty", "n_obs"):
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=f"{name} {v}")


def _site_in_a_chunk_sometimes_empty(lst_root: Path, tb: Path, out: Path) -> tuple[Path, Path]:
    """The testbed's sites and stations plus a site in a chunk that a step of its tile holds no data in."""
    import pandas as pd
    from pyproj import Transformer

    from sftl_dask.geo import store_geometry

    for store in lst_stores(lst_root).values():
        index = read_coverage(store)
        empty = (index == 0).any(axis=0)
        if empty.any():
            r, c = (int(v[0]) for v in np.nonzero(empty))
            grid, _ = store_geometry(dict(zarr.open_group(str(store), mode="r").attrs))
            x, y = grid.affine * (c * 512 + 256.5, r * 512 + 256.5)
            lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(x, y)
            break
    else:
        raise AssertionError("every chunk of the cube holds data at every step")
    sites = pd.read_csv(tb / "sites.csv")
    near = sites.iloc[0].copy()
    near["id"], near["name"], near["lon"], near["lat"] = "XX01", "chunk edge", lon, lat
    (out / "insitu").mkdir(parents=True)
    for f in (tb / "insitu").glob("*.csv"):
        shutil.copy(f, out / "insitu" / f.name)
    shutil.copy(tb / "insitu" / f"{sites.iloc[0]['id']}.csv", out / "insitu" / "XX01.csv")
    pd.concat([sites, near.to_frame().T]).to_csv(out / "sites.csv", index=False)
    return out / "insitu", out / "sites.csv"


def test_validation_reads_only_steps_with_data_and_finds_the_same_matchups(lst, small_testbed, tmp_path):
    import pandas as pd

    from sftl_dask.validate import validate

    insitu, sites = _site_in_a_chunk_sometimes_empty(lst[0], small_testbed, tmp_path / "in")
    old = tmp_path / "lst_old"
    shutil.copytree(lst[0], old)
    _drop_index(old)
    a = validate(lst[0], insitu, sites, tmp_path / "val")
    b = validate(old, insitu, sites, tmp_path / "val_old")
    ma = pd.read_parquet(tmp_path / "val" / "matchups.parquet").drop(columns="grid")
    mb = pd.read_parquet(tmp_path / "val_old" / "matchups.parquet").drop(columns="grid")
    pd.testing.assert_frame_equal(ma, mb)
    assert a["n_usable"] == b["n_usable"] > 0
    # the steps the index let validation skip reading: the new site's chunk held no data there
    assert ((ma["site"] == "XX01") & (ma["reason"] == "no coverage")).sum() > 0


def test_composite_stores_have_a_stac_collection_that_xpystac_opens_and_items_per_period(lst, tmp_path):
    import pystac
    import xarray as xr
    import xpystac  # noqa: F401  (registers xarray's "stac" engine)
    from test_stac import _validator, validate_offline

    from sftl_dask.io.stac import COMPOSITES_COLLECTION

    out = tmp_path / "comp"
    write_composites(lst[0], out)
    catalog = pystac.Catalog.from_file(str(out / "stac" / "catalog.json"))
    collection = catalog.get_child(COMPOSITES_COLLECTION)
    validator = _validator()
    catalog.validate(validator=validator)
    validate_offline(collection, validator)
    items = list(catalog.get_items(recursive=True))
    periods = {(name, str(p)) for name in lst_stores(lst[0])
               for p in open_store(out / f"{name}.zarr")["scene_id"].values}
    assert {(i.id.split("_", 1)[1], i.properties["sftl_period"]) for i in items} == periods
    for item in items:
        assert item.validate(validator=validator)
        start = np.datetime64(item.properties["start_datetime"].rstrip("Z"), "s")
        assert str(start)[:7] == item.properties["sftl_period"]
    for name, asset in collection.assets.items():
        asset.href = asset.get_absolute_href()
        opened = xr.open_dataset(asset, engine="stac")
        want = open_store(out / f"{name}.zarr")
        np.testing.assert_array_equal(opened["lst"].values, want["lst"].values)


@pytest.mark.parametrize(("how", "systematic_k", "min_count"), [
    ("median", 1.0, 1), ("median", None, 2), ("mean", None, 1), ("max", 1.0, 2),
])
def test_numpy_level_composite_tasks_equal_the_accessor_bit_for_bit_in_batches(tmp_path, monkeypatch, how,
                                                                               systematic_k, min_count):
    import xarray as xr
    from helpers import synthetic_lst_cube

    import sftl_dask.composites as composites

    store = synthetic_lst_cube(tmp_path / "syn.zarr", n_times=14, height=48, width=32, chunk=16, step_days=4,
                               systematic_k=systematic_k)
    months = 2  # 2021-01 (7 steps) and 2021-02 (7 steps), on 3 x 2 chunks
    monkeypatch.setattr(composites, "TASK_VALUES", 8 * 16 * 16)  # a chunk's 14 steps: one task per month
    s = write_composites(store, tmp_path / "comp", how=how, min_count=min_count)
    assert s["computed"] == months and s["tasks"] == 6 * months
    monkeypatch.setattr(composites, "TASK_VALUES", 14 * 16 * 16)  # both months in one task per chunk
    assert write_composites(store, tmp_path / "one", how=how, min_count=min_count)["tasks"] == 6
    # the accessor on each month's steps in memory, as a task computes it (lazily, or over several months, the
    # accessor's mean sums its float32 values in another order: the last bit may differ)
    ds = open_store(store).load()
    month = ds["time"].values.astype("datetime64[M]")
    ref = xr.concat([ds.isel(time=np.flatnonzero(month == m)).sftl.good(check=False)
                     .sftl.composite("MS", how, min_count=min_count) for m in np.unique(month)], "time")
    for out in ("comp", "one"):
        got = open_store(tmp_path / out / "syn.zarr").sortby("time")
        assert got["time"].values.tolist() == ref["time"].values.tolist()
        for v in ("lst", "lst_uncertainty", "n_obs"):
            assert got[v].dtype == ref[v].dtype
            np.testing.assert_array_equal(got[v].values, ref[v].values, err_msg=f"{out} {v}")
    n_obs = ref["n_obs"].values  # clouds and flags dropped some values: pixels of 1 to 7 good values
    assert int(n_obs.min()) < 7 and int(n_obs.max()) == 7


def test_zone_mosaics_are_made_on_request_and_removed_when_stale_without(lst, tmp_path):
    from sftl_dask.pipelines.steps import composites_step

    out = tmp_path / "comp"
    reused, counts = composites_step(lst[0], out, "key-1", {}, mosaics=True)
    zones = sorted(p.name for p in out.glob("*_monthly.nc"))
    assert not reused and counts["months_reused"] == 0 and zones
    assert len(list(out.glob("*_monthly.png"))) == len(zones)
    assert composites_step(lst[0], out, "key-1", {}, mosaics=False) == (True, {**counts, "months_computed": 0,
                                                                             "months_reused": counts["months_computed"],
                                                                             "tasks": 0})
    assert sorted(p.name for p in out.glob("*_monthly.nc")) == zones  # made from this LST: kept
    reused, again = composites_step(lst[0], out, "key-2", {}, mosaics=False)  # the LST changed: stale, removed
    assert reused and again["months_computed"] == 0
    assert not list(out.glob("*_monthly.nc")) and not list(out.glob("*_monthly.png"))
