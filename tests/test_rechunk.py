"""The time-series layout: `sftl rechunk` copies an LST cube's completed time steps into time-contiguous chunks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from helpers import no_cluster, synthetic_cube

from sftl_dask.io.lst import LST_OK_VAR, LST_VARIABLES
from sftl_dask.io.stores import open_store
from sftl_dask.rechunk import RechunkError, StaleCopyWarning, check_rechunk, rechunk, timeseries_copy
from sftl_dask.retrieve import retrieve

STEPS = 3


@pytest.fixture(scope="module")
def model(retrieval_model) -> Path:
    return retrieval_model("rf")


@pytest.fixture(scope="module")
def source(tmp_path_factory, model) -> Path:
    """A real retrieval: an LST root holding ``g.zarr``, 3 scenes of 150 x 140 px in chunks of 64 (3 x 3 chunks,
    edge chunks narrower), the second covering only columns 30 and beyond."""
    root = tmp_path_factory.mktemp("src")
    cube = root / "cube"
    synthetic_cube(cube / "g.zarr", 1, seed=0)
    synthetic_cube(cube / "g.zarr", 1, seed=0, first=1, covered_from=30)
    synthetic_cube(cube / "g.zarr", 1, seed=0, first=2)
    retrieve(cube, model, root / "lst", threads=1, device="cpu")
    return root / "lst"


@pytest.fixture
def lst(source, tmp_path) -> Path:
    """A private copy of the LST root (tests change it), with the scene cube beside it."""
    shutil.copytree(source.parent / "cube", tmp_path / "cube")
    shutil.copytree(source, tmp_path / "lst")
    return tmp_path / "lst"


def _expected(store: Path) -> xr.Dataset:
    """The source's completed time steps in time order, as plain xarray reads them."""
    ds = open_store(store, decode_coords="all")
    return ds.isel(time=np.flatnonzero(ds[LST_OK_VAR].values)).sortby("time").load()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _assert_same(copy: Path, source: Path) -> None:
    got = open_store(copy, decode_coords="all").load()
    want = _expected(source)
    xr.testing.assert_identical(got.drop_attrs(deep=False), want.drop_attrs(deep=False))
    for name in (*LST_VARIABLES, "time", "scene_id", "checksum"):  # exactly, NaNs where NaNs
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)


# ---------------------------------------------------------------------------------------------


def test_copy_holds_every_variable_exactly_in_time_contiguous_chunks(lst):
    summary = rechunk(lst, tile=64)
    copy = lst.with_name("lst_ts") / "g.zarr"
    assert summary["out"] == str(lst.with_name("lst_ts")) and summary["conventional"]
    assert summary["steps"] == STEPS and summary["stages"] == 1 and summary["stores"][0]["chunks"] == [STEPS, 64, 64]
    _assert_same(copy, lst / "g.zarr")
    g = zarr.open_group(str(copy), mode="r")
    for name in LST_VARIABLES:
        assert g[name].chunks == (STEPS, 64, 64) and g[name].shape == (STEPS, 150, 140)
        assert g[name].compressors == zarr.open_group(str(lst / "g.zarr"), mode="r")[name].compressors
    for name in ("time", "scene_id", "source", "checksum", LST_OK_VAR):
        assert g[name].chunks == (STEPS,)
    assert open_store(copy)["lst"].chunks == ((STEPS,), (64, 64, 22), (64, 64, 12))
    assert _leftovers(lst.parent) == []


def test_crs_attributes_and_provenance_survive_for_plain_xarray_in_a_subprocess(lst):
    rechunk(lst)
    copy = lst.with_name("lst_ts") / "g.zarr"
    code = (
        "import json, sys, xarray as xr, rioxarray\n"
        f"ds = xr.open_zarr({str(copy)!r})\n"
        "print(json.dumps({'epsg': ds.rio.crs.to_epsg(), 'attrs': ds.attrs, 'sftl': 'sftl_dask' in sys.modules,\n"
        "  'var_attrs': {k: ds[k].attrs for k in ds.variables}, 'times': [str(t) for t in ds.time.values]}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=lst.parent,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    src = open_store(lst / "g.zarr", decode_coords=True, mask_and_scale=True)  # as plain xr.open_zarr decodes
    assert got["epsg"] == 32650 and not got["sftl"]
    for k, v in src.attrs.items():
        if k == "history":
            assert got["attrs"][k].startswith(v + "\n") and "sftl_dask.rechunk.rechunk" in got["attrs"][k]
        else:
            assert got["attrs"][k] == (v.tolist() if isinstance(v, np.ndarray) else v), k
    assert got["attrs"]["sftl_layout"] == "time-series"
    assert got["attrs"]["sftl_source_store"] == str((lst / "g.zarr").resolve())
    assert got["attrs"]["sftl_source_steps"] == STEPS
    for k in src.variables:
        want = {a: (v.tolist() if isinstance(v, np.ndarray) else v) for a, v in src[k].attrs.items()}
        assert got["var_attrs"][str(k)] == want, k
    assert got["var_attrs"]["time"]["standard_name"] == "time" and got["var_attrs"]["time"]["axis"] == "T"
    assert got["times"] == [str(t) for t in src.time.values]
    meta = lambda p: json.loads((p / "lst" / ".zarray").read_text())  # noqa: E731
    a, b = meta(copy), meta(lst / "g.zarr")
    assert {k: v for k, v in a.items() if k not in ("shape", "chunks")} == \
        {k: v for k, v in b.items() if k not in ("shape", "chunks")}


def test_completed_steps_only_in_time_order(lst):
    """A step that never completed is left out; steps appended out of time order come sorted."""
    store = lst / "g.zarr"
    g = zarr.open_group(str(store), mode="r+")
    t = g["time"][:]
    g["time"][:] = t[[2, 0, 1]]  # slot 0 is now the latest scene
    g[LST_OK_VAR][1] = False  # slot 1 (now the earliest) did not complete
    summary = rechunk(lst)
    assert summary["steps"] == 2
    copy = lst.with_name("lst_ts") / "g.zarr"
    _assert_same(copy, store)
    ds = open_store(copy)
    assert list(ds["scene_id"].values) == ["GF5B_VIMI_SYN_002", "GF5B_VIMI_SYN_000"]
    assert bool(ds[LST_OK_VAR].all()) and bool((ds["time"].diff("time") > np.timedelta64(0)).all())
    assert timeseries_copy(store) == copy


def test_a_grid_without_completed_steps_gets_no_copy_and_alone_is_refused(lst):
    shutil.copytree(lst / "g.zarr", lst / "h.zarr")
    zarr.open_group(str(lst / "h.zarr"), mode="r+")[LST_OK_VAR][:] = False  # an interrupted first retrieval
    summary = rechunk(lst)
    assert [Path(s["copy"]).name for s in summary["stores"]] == ["g.zarr"]
    assert sorted(p.name for p in lst.with_name("lst_ts").iterdir()) == ["g.zarr"]
    assert timeseries_copy(lst / "h.zarr") is None
    with pytest.raises(RechunkError, match=r"h.zarr: no completed time step \(retrieve_ok\) to copy"):
        rechunk(lst / "h.zarr")


def test_two_stages_through_an_intermediate_store_give_the_same_copy(lst):
    """A bound below one block's whole series: time bands go through an intermediate store, removed after."""
    plan = check_rechunk(lst, lst.parent / "two", tile=32, max_mem=40_000)
    assert plan["two_stage"] and plan["chunks"] == (STEPS, 32, 32)
    summary = rechunk(lst, lst.parent / "two", tile=32, max_mem=40_000)
    assert summary["stages"] == 2
    _assert_same(lst.parent / "two" / "g.zarr", lst / "g.zarr")
    assert zarr.open_array(str(lst.parent / "two" / "g.zarr" / "qc"), mode="r").chunks == (STEPS, 32, 32)
    assert _leftovers(lst.parent) == []


def test_a_store_is_copied_beside_itself_and_found_there(lst):
    store = lst / "g.zarr"
    assert timeseries_copy(store) is None
    single = lst.parent / "single.zarr"
    shutil.move(store, single)
    rechunk(single)
    assert (lst.parent / "single_ts.zarr" / ".zmetadata").is_file()
    assert timeseries_copy(single) == lst.parent / "single_ts.zarr"
    _assert_same(lst.parent / "single_ts.zarr", single)


def test_a_stale_copy_is_ignored_with_a_warning_once_the_source_gains_a_time_step(lst):
    from sftl_dask.io.cube import append_slots, mark_slot, read_slots

    store = lst / "g.zarr"
    rechunk(lst)
    copy = lst.with_name("lst_ts") / "g.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert timeseries_copy(store) == copy
        grid, _ = read_slots(store, LST_OK_VAR)  # a new slot, not yet complete: the copy still holds every step
        (slot,) = append_slots(store, grid, [{"scene_id": "GF5B_VIMI_SYN_009", "source": "/cubes/g.zarr",
                                              "time": np.datetime64("2022-09-01T03:30")}],
                               variables=LST_VARIABLES, ok_var=LST_OK_VAR)
        assert timeseries_copy(store) == copy
    zarr.open_group(str(store), mode="r+")["lst"][slot] = np.full((150, 140), 301.5, np.float32)
    mark_slot(store, slot, LST_OK_VAR, checksum="f" * 64)
    with pytest.warns(StaleCopyWarning, match="stale time-series copy"):
        assert timeseries_copy(store) is None
    with pytest.raises(RechunkError, match="already exists"):
        rechunk(lst)
    assert rechunk(lst, overwrite=True)["steps"] == STEPS + 1
    assert timeseries_copy(store) == copy
    _assert_same(copy, store)


def test_a_copy_made_from_another_model_is_stale(lst):
    store = lst / "g.zarr"
    rechunk(lst)
    g = zarr.open_group(str(store), mode="r+")
    g.attrs["model_sha256"] = "0" * 64  # the source was retrieved again with another model: same steps, new values
    zarr.consolidate_metadata(str(store))
    with pytest.warns(StaleCopyWarning):
        assert timeseries_copy(store) is None


def test_a_failed_copy_leaves_nothing_behind(lst, monkeypatch):
    import sftl_dask.rechunk as rk

    calls = {"n": 0}
    real = rk._copy_block

    def flaky(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(job)

    monkeypatch.setattr(rk, "_copy_block", flaky)
    with pytest.raises(OSError, match="disk full"):
        rechunk(lst, tile=32, max_mem=40_000)  # two stages: the intermediate store exists when it fails
    assert not lst.with_name("lst_ts").exists() and _leftovers(lst.parent) == []
    assert timeseries_copy(lst / "g.zarr") is None


def test_overwrite_replaces_a_copy_but_never_anything_else(lst):
    other = lst.parent / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(RechunkError, match="not a time-series copy; refusing"):
        rechunk(lst, other, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep"
    with pytest.raises(RechunkError, match="inside or around the LST source"):
        rechunk(lst, lst / "ts")
    rechunk(lst, lst.parent / "x")
    with pytest.raises(RechunkError, match="already a time-series copy"):
        rechunk(lst.parent / "x", lst.parent / "y")
    with pytest.raises(RechunkError, match="below one chunk of the copy"):
        rechunk(lst, lst.parent / "z", max_mem="1kB")


def test_cli_rechunk_runs_on_an_embedded_cluster(lst, capsys):
    from sftl_dask.cli import main

    out = lst.parent / "elsewhere_ts"
    assert main(["rechunk", "--lst", str(lst), "--out", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert f"copied {STEPS} time step(s) of 1 store(s)" in text and str(out) in text
    assert "open_lst will not find this copy" in text
    _assert_same(out / "g.zarr", lst / "g.zarr")
    assert "sftl rechunk --lst" in open_store(out / "g.zarr").attrs["history"]


def test_cli_rechunk_bad_input_exits_2_with_one_line(lst, tmp_path, capsys, monkeypatch):
    from sftl_dask.cli import main

    monkeypatch.setattr("sftl_dask.cluster.LocalCluster", no_cluster)  # refused before any cluster starts
    out = tmp_path / "taken"
    out.mkdir()
    (out / "f").write_text("x")
    cases = [
        (["--lst", str(lst), "--out", str(out)], f"{out}: already exists"),
        (["--lst", str(tmp_path / "nowhere")], "nowhere: no such LST store"),
        (["--lst", str(tmp_path / "cube")], "cube/g.zarr: not an sftl LST store"),
        (["--lst", str(out)], "taken: no LST store here"),
        (["--lst", str(lst), "--out", str(tmp_path / "o"), "--max-mem", "lots"], "max_mem 'lots' is not a size"),
    ]
    for args, msg in cases:
        assert main(["rechunk", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (args, err)
    assert not (tmp_path / "o").exists() and not lst.with_name("lst_ts").exists()
