"""Retrieval: scene cubes -> CF LST cubes, chunk by chunk on Dask, with QC, uncertainty and CRS."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import no_cluster, synthetic_cube

import sftl_dask.retrieve as retrieve_mod
from sftl_dask.features import inputs_for
from sftl_dask.io.lst import LST_VARIABLES, NOT_PRODUCED, QC_FLAGS, UNCERTAINTY_CLASS_SHIFT
from sftl_dask.io.stores import open_store
from sftl_dask.models.artifact import ArtifactError
from sftl_dask.models.retriever import load_count, open_retriever
from sftl_dask.retrieve import RetrieveError, check_retrieval, retrieve, retrieve_block

KINDS = ("dnn", "trf", "cnn", "rf", "lgbm", "sw")
CHUNK = 64


@pytest.fixture(scope="module")
def models(retrieval_model) -> dict[str, Path]:
    return {k: retrieval_model(k) for k in KINDS}


@pytest.fixture(scope="module")
def cube(tmp_path_factory) -> Path:
    """Two scenes of 150 x 140 px in chunks of 64: 3 x 3 chunks, edge chunks narrower; the second scene
    covers only columns 30 and beyond."""
    store = tmp_path_factory.mktemp("cube") / "g.zarr"
    synthetic_cube(store, 1, seed=0)
    synthetic_cube(store, 1, seed=0, first=1, covered_from=30)
    return store


def _whole(cube: Path, t: int, retriever) -> dict:
    """A time step retrieved as one array (the reference for the chunked run)."""
    g = zarr.open_group(str(cube), mode="r")
    need = (*inputs_for(retriever.features), "vza", "ancillary_missing")
    data = {k: g[k][t] for k in need}
    return retrieve_block(data, retriever, cloud=g["cloud"][t], batch_region=(CHUNK, CHUNK))


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_retrieval_equals_a_whole_array_retrieval_bit_for_bit(models, cube, tmp_path, kind):
    out = tmp_path / "lst.zarr"
    summary = retrieve(cube, models[kind], out, threads=2, device="cpu")
    assert summary["retrieved"] == 2 and summary["failed"] == [] and summary["chunks"] == 2 * 9
    retriever = open_retriever(models[kind])
    ds = open_store(out)
    for t in range(2):
        ref = _whole(cube, t, retriever)
        for k in LST_VARIABLES:
            np.testing.assert_array_equal(ds[k].isel(time=t).values, ref[k], err_msg=f"{kind} {k} t={t}")
    produced = (ds["qc"] & NOT_PRODUCED) == 0
    assert bool((np.isfinite(ds["lst"]) == produced).all())
    assert 0.4 < float(produced.mean()) < 0.95
    lst = ds["lst"].values[np.isfinite(ds["lst"].values)]
    assert 280 < np.median(lst) < 320, kind


def test_every_model_kind_matches_its_own_predictions_on_the_cube_pixels(models, cube, tmp_path):
    from sftl_dask.features import compute_features

    g = zarr.open_group(str(cube), mode="r")
    inputs = {k: g[k][0] for k in g.array_keys() if g[k].ndim == 3}
    for kind in KINDS:
        out = tmp_path / f"{kind}.zarr"
        retrieve(cube, models[kind], out, threads=1, device="cpu")
        ds = open_store(out)
        lst = ds["lst"].isel(time=0).values
        ok = np.isfinite(lst)
        retriever = open_retriever(models[kind])
        feats = compute_features({k: inputs[k][ok] for k in inputs_for(retriever.features)}, names=retriever.features)
        expected, sigma = retriever.predict(feats)
        np.testing.assert_allclose(lst[ok], expected, atol=2e-4, err_msg=kind)
        np.testing.assert_allclose(ds["lst_uncertainty"].isel(time=0).values[ok], sigma, rtol=1e-6)
        assert ds.attrs["model_kind"] == ("split-window" if kind == "sw" else kind)


def test_qc_bits_are_set_where_they_must_be_on_a_crafted_cube(models, tmp_path):
    store = synthetic_cube(tmp_path / "c.zarr", 1, 40, 50, seed=3, chunk=64, covered_from=5, cloud_fraction=0.0)
    g = zarr.open_group(str(store), mode="r+")
    cloud = np.zeros((40, 50), np.uint8)
    cloud[20:24, 20:24] = 1
    g["cloud"][0] = cloud
    wvc = g["wvc"][0]
    wvc[30, 30] = 7.5  # beyond the pre-training range (synthetic table: <= 5 g cm-2) but physical
    g["wvc"][0] = wvc
    emis = g["emis_11_95"][0]
    emis[31, 31] = 0.55  # physical, outside the range
    g["emis_11_95"][0] = emis
    bt = g["bt_10_80"][0]
    bt[10, 40] = 100.0  # not a brightness temperature: the observation is not valid
    g["bt_10_80"][0] = bt
    vza = g["vza"][0]
    vza[35, 45] = 45.0  # beyond 30 deg
    g["vza"][0] = vza
    out = tmp_path / "lst.zarr"
    retrieve(store, models["dnn"], out, threads=1, device="cpu")
    ds = open_store(out).isel(time=0)
    qc, lst, unc = ds["qc"].values, ds["lst"].values, ds["lst_uncertainty"].values

    def has(name):
        mask, value = QC_FLAGS[name]
        return (qc & mask) == value

    assert has("not_covered")[:, :5].all() and has("not_covered")[10, 40] and not has("not_covered")[10, 39]
    assert has("cloud")[20:24, 20:24].all() and has("cloud").sum() == 16
    assert has("missing_ancillary")[2:6, 8:12].all() and has("missing_ancillary").sum() == 16
    adjacent = has("cloud_adjacent")
    assert adjacent[18:26, 18:26].sum() == 64 - 16 and adjacent.sum() == 64 - 16  # a 2-pixel ring
    assert has("wvc_outside_pretraining_range")[30, 30] and has("wvc_outside_pretraining_range").sum() == 1
    assert has("emissivity_outside_pretraining_range")[31, 31]
    assert has("emissivity_outside_pretraining_range").sum() == 1
    assert has("vza_outside_pretraining_range")[35, 45] and has("vza_outside_pretraining_range").sum() == 1
    assert not has("bt_outside_pretraining_range").any()
    produced = (qc & NOT_PRODUCED) == 0
    assert (np.isfinite(lst) == produced).all() and (np.isfinite(unc) == produced).all()
    assert np.isfinite(lst[30, 30]) and np.isfinite(lst[20, 19])  # flagged pixels are still produced
    cls = (qc >> UNCERTAINTY_CLASS_SHIFT) & 3
    assert (cls[~produced] == 3).all()
    expected = np.searchsorted([1.0, 2.0, 3.0], unc[produced], side="left")
    np.testing.assert_array_equal(cls[produced], expected)
    assert ds["qc"].attrs["flag_meanings"].split() == list(QC_FLAGS)


def test_incremental_retrieval_computes_only_new_time_steps(models, tmp_path):
    store = synthetic_cube(tmp_path / "c.zarr", 2, 70, 70, seed=5)
    out = tmp_path / "lst.zarr"
    first = retrieve(store, models["dnn"], out, threads=2, device="cpu")
    assert (first["retrieved"], first["skipped"], first["chunks"]) == (2, 0, 8)
    before = {p: p.stat().st_mtime_ns for p in (out / "lst").glob("*.*.*")}
    again = retrieve(store, models["dnn"], out, threads=2, device="cpu")
    assert (again["retrieved"], again["skipped"], again["chunks"]) == (0, 2, 0)
    synthetic_cube(store, 1, 70, 70, seed=5, first=2)  # a new scene is ingested
    third = retrieve(store, models["dnn"], out, threads=2, device="cpu")
    assert (third["retrieved"], third["skipped"], third["chunks"]) == (1, 2, 4)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # earlier chunks untouched
    ds = open_store(out)
    assert ds.sizes["time"] == 3 and bool(ds["retrieve_ok"].all())
    assert list(ds["scene_id"].values) == [f"GF5B_VIMI_SYN_{i:03d}" for i in range(3)]
    assert ds.attrs["history"].count("\n") == 1  # the run that added a step is recorded; the no-op run is not
    np.testing.assert_array_equal(ds["lst"].isel(time=2).values, _whole(store, 2, open_retriever(models["dnn"]))["lst"])


def test_a_cube_root_gives_an_lst_root_with_one_store_per_grid_and_a_run_log(models, cube, tmp_path):
    root = tmp_path / "cube"
    shutil.copytree(cube, root / "g1.zarr")
    shutil.copytree(cube, root / "g2.zarr")
    out = tmp_path / "lst"
    summary = retrieve(root, models["sw"], out, threads=2, device="cpu", command="sftl retrieve test")
    assert summary["stores"] == [str(out / "g1.zarr"), str(out / "g2.zarr")] and summary["retrieved"] == 4
    assert open_store(out / "g2.zarr").attrs["source_cube"] == str((root / "g2.zarr").resolve())
    retrieve(root, models["sw"], out, threads=2, device="cpu")  # nothing to do: no log line
    log = [json.loads(line) for line in (out / "retrieve_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["retrieved"] == 4 and log[0]["command"] == "sftl retrieve test"
    assert log[0]["failed"] == [] and len(log[0]["model_sha256"]) == 64


def test_an_interrupted_time_step_is_not_complete_and_is_redone(models, tmp_path, monkeypatch):
    import sftl_dask.retrieve as r

    store = synthetic_cube(tmp_path / "c.zarr", 2, 70, 70, seed=6)
    out = tmp_path / "lst.zarr"
    real = r.write_block

    def failing(group, t, window, data):
        if t == 1 and window[:3:2] == (64, 64):
            raise OSError("No space left on device")
        real(group, t, window, data)

    monkeypatch.setattr(r, "write_block", failing)
    summary = retrieve(store, models["dnn"], out, threads=2, device="cpu")
    assert summary["retrieved"] == 1 and len(summary["failed"]) == 1
    f = summary["failed"][0]
    assert f["scene_id"] == "GF5B_VIMI_SYN_001" and f["chunks_failed"] == 1 and "No space left" in f["reason"]
    assert list(open_store(out)["retrieve_ok"].values) == [True, False]
    monkeypatch.setattr(r, "write_block", real)
    again = retrieve(store, models["dnn"], out, threads=2, device="cpu")
    assert (again["retrieved"], again["skipped"]) == (1, 1)
    ds = open_store(out)
    assert ds.sizes["time"] == 2 and bool(ds["retrieve_ok"].all())  # the slot was reused, not duplicated


def test_a_store_is_marked_once_its_own_chunks_are_written_while_the_next_stores_tasks_still_run(models, cube, tmp_path,
                                                                                             monkeypatch):
    """The run is pipelined by store (docs/retrieval.md, "The graph"): g1's steps are marked complete while g2's
    tasks are held back, and each store's marker comes after every one of its chunks (data before the marker)."""
    import threading

    import sftl_dask.retrieve as r

    root = tmp_path / "cube"
    shutil.copytree(cube, root / "g1.zarr")
    shutil.copytree(cube, root / "g2.zarr")
    real_write, real_mark = r.write_block, r.mark_slot
    g1_marked = threading.Event()
    written: dict[str, int] = {"g1.zarr": 0, "g2.zarr": 0}
    marks: list[tuple[str, dict[str, int], bool]] = []
    lock = threading.Lock()

    def write(arrays, t, window, data):
        store = Path(next(iter(arrays.values())).store.root).name
        held = store == "g2.zarr" and not g1_marked.wait(timeout=60)  # g2's chunks wait for g1's marker
        real_write(arrays, t, window, data)
        with lock:
            written[store] += 1
            written["held_too_long"] = written.get("held_too_long", 0) + held

    def mark(store, index, ok_var, **kw):
        with lock:
            marks.append((Path(store).name, dict(written), g1_marked.is_set()))
        real_mark(store, index, ok_var, **kw)
        if Path(store).name == "g1.zarr":
            g1_marked.set()

    monkeypatch.setattr(r, "write_block", write)
    monkeypatch.setattr(r, "mark_slot", mark)
    summary = retrieve(root, models["sw"], tmp_path / "lst", threads=2, device="cpu")
    n = summary["chunks"] // 2 * len(LST_VARIABLES)  # each store's chunks x its four variables
    assert summary["retrieved"] == 4 and summary["failed"] == []
    assert summary["chunks"] == 2 * 2 * 9  # 2 stores x 2 steps x 3 x 3 chunks
    assert [m[0] for m in marks] == ["g1.zarr", "g2.zarr"]
    assert marks[0][1]["g1.zarr"] == n and marks[0][1]["g2.zarr"] == 0  # g1 marked: all its chunks, none of g2's
    assert marks[1][1]["g2.zarr"] == n and written.get("held_too_long", 0) == 0
    assert bool(open_store(tmp_path / "lst" / "g2.zarr")["retrieve_ok"].all())


def test_model_is_loaded_once_per_worker(models, cube, tmp_path, client):
    from sftl_dask.models.retriever import model_digest

    digest = model_digest(models["dnn"])
    summary = retrieve(cube, models["dnn"], tmp_path / "lst.zarr", client=client, device="cpu")
    assert summary["chunks"] == 18 and summary["failed"] == []
    loads = client.run(load_count, digest)
    ran_on = set(summary["workers"])
    assert {w: n for w, n in loads.items() if w in ran_on} == dict.fromkeys(ran_on, 1)
    assert len(ran_on) == 2  # both workers took chunks
    retrieve(cube, models["dnn"], tmp_path / "lst2.zarr", client=client, device="cpu")
    assert set(client.run(load_count, digest).values()) <= {0, 1}  # a second run reuses the loaded model


def test_lst_cube_opens_with_plain_xarray_without_this_package_and_keeps_its_crs(models, cube, tmp_path):
    out = tmp_path / "lst.zarr"
    retrieve(cube, models["dnn"], out, threads=2, device="cpu")
    code = """
import json, sys
import xarray as xr, rioxarray  # noqa: F401
ds = xr.open_zarr(sys.argv[1])
assert "sftl_dask" not in sys.modules
lst = ds["lst"]
print(json.dumps({"crs": ds.rio.crs.to_epsg(), "lst_crs": lst.rio.crs.to_epsg(), "lst": dict(lst.attrs),
                  "unc": dict(ds["lst_uncertainty"].attrs), "time": dict(ds["time"].attrs),
                  "qc": {k: str(v) for k, v in ds["qc"].attrs.items()}, "global": dict(ds.attrs),
                  "coords": sorted(ds.coords), "dtype": str(ds["qc"].dtype),
                  "raw": str(xr.open_zarr(sys.argv[1], mask_and_scale=False)["qc"].dtype),
                  "masked": int(ds["qc"].isnull().sum()),
                  "not_covered": int((xr.open_zarr(sys.argv[1], mask_and_scale=False)["qc"] == 770).sum())},
                 default=str))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["crs"] == 32650 and got["lst_crs"] == 32650 and "spatial_ref" in got["coords"]
    assert got["lst"]["standard_name"] == "surface_temperature" and got["lst"]["units"] == "K"
    assert got["lst"]["ancillary_variables"] == "lst_uncertainty qc" and got["lst"]["grid_mapping"] == "spatial_ref"
    assert got["unc"]["standard_name"] == "surface_temperature standard_error" and got["unc"]["units"] == "K"
    assert got["time"]["standard_name"] == "time" and got["time"]["axis"] == "T"
    assert got["qc"]["flag_meanings"].split()[0] == "cloud"
    # qc's fill is the flag value of a pixel no observation covers (770: not_covered, class 3): CF decoding masks
    # exactly those pixels (a float with NaN); undecoded, the flags are the stored uint16
    assert got["dtype"] == "float32" and got["raw"] == "uint16" and got["masked"] == got["not_covered"] > 0
    g = got["global"]
    assert g["Conventions"] == "CF-1.11" and g["platform"] == "GF5-02" and g["instrument"] == "VIMI"
    assert len(g["model_sha256"]) == 64 and g["model_kind"] == "dnn" and g["model_strategy"] == "full"
    assert g["source_cube"] == str(cube.resolve()) and "sftl_dask.retrieve" in g["history"]
    assert g["software"].startswith("sftl-dask ")


# ---------------------------------------------------------------------------------------------
# bad input: refused before any work, nothing written


def _refused(match: str, *args, **kw) -> None:
    with pytest.raises((RetrieveError, ArtifactError, FileNotFoundError), match=match):
        retrieve(*args, threads=1, device="cpu", **kw)


def test_a_cube_without_a_variable_the_model_needs_is_refused(models, tmp_path):
    store = synthetic_cube(tmp_path / "c.zarr", 1, 40, 40)
    shutil.rmtree(store / "emis_08_20")
    zarr.consolidate_metadata(str(store))
    _refused(r"c\.zarr: has no variable 'emis_08_20'", store, models["dnn"], tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
    # the split-window does not need that emissivity: it retrieves
    assert retrieve(store, models["sw"], tmp_path / "sw.zarr", threads=1, device="cpu")["retrieved"] == 1


def test_a_cube_whose_units_do_not_match_the_features_is_refused(models, tmp_path):
    store = synthetic_cube(tmp_path / "c.zarr", 1, 40, 40)
    g = zarr.open_group(str(store), mode="r+")
    g["wvc"].attrs["units"] = "kg m-2"
    zarr.consolidate_metadata(str(store))
    _refused(r"wvc is in 'kg m-2', the model's features take 'g cm-2'", store, models["dnn"], tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


def test_a_tampered_artifact_is_refused_before_any_output(models, cube, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(models["dnn"], art)
    data = bytearray((art / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (art / "model.pt").write_bytes(bytes(data))
    _refused(r"model\.pt: sha256 mismatch", cube, art, tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


def test_an_artifact_without_an_error_model_is_refused(cube, tmp_path):
    from helpers import synthetic_lst

    from sftl_dask.models import build_model
    from sftl_dask.models.artifact import export_artifact

    x, y = synthetic_lst(500)
    m = build_model("lgbm", 12, n_estimators=5)
    m.fit(x, y)
    art = export_artifact(m, tmp_path / "plain", {"model": "lgbm"})
    _refused(r"card\.json: has no per-pixel error model", cube, art, tmp_path / "o.zarr")


def test_an_output_holding_something_else_or_another_models_lst_is_refused(models, cube, tmp_path):
    other = tmp_path / "cube_copy.zarr"
    shutil.copytree(cube, other)  # a scene cube as the output: never overwritten, even with --overwrite
    for ow in (False, True):
        _refused(r"cube_copy\.zarr: holds a Zarr store that is not an sftl LST cube", cube, models["dnn"], other,
                 overwrite=ow)
    afile = tmp_path / "f.zarr"
    afile.write_text("x")
    _refused(r"f\.zarr: is a file", cube, models["dnn"], afile)
    out = tmp_path / "lst.zarr"
    retrieve(cube, models["dnn"], out, threads=1, device="cpu")
    stamp = (out / "lst" / "0.0.0").stat().st_mtime_ns
    _refused(r"holds LST made with another model \(model_sha256", cube, models["lgbm"], out)
    assert (out / "lst" / "0.0.0").stat().st_mtime_ns == stamp
    summary = retrieve(cube, models["lgbm"], out, threads=1, device="cpu", overwrite=True)
    assert summary["retrieved"] == 2 and open_store(out).attrs["model_kind"] == "lgbm"


def test_device_cuda_without_a_gpu_is_refused(models, cube, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, wherever this runs
    with pytest.raises(RetrieveError, match="--device cuda: this machine has no CUDA GPU"):
        retrieve(cube, models["dnn"], tmp_path / "o.zarr", device="cuda")
    with pytest.raises(RetrieveError, match="--device cuda: rf models run on CPU only"):
        retrieve(cube, models["rf"], tmp_path / "o.zarr", device="cuda")
    assert not (tmp_path / "o.zarr").exists()


def test_check_retrieval_counts_the_work_without_writing(models, cube, tmp_path):
    assert check_retrieval(cube, models["dnn"], tmp_path / "o.zarr") == {
        "stores": [str(tmp_path / "o.zarr")], "todo": 2, "skipped": 0}
    assert not (tmp_path / "o.zarr").exists()


def test_cli_retrieve_bad_input_exits_2_with_one_line(models, cube, tmp_path, capsys, monkeypatch):
    from sftl_dask.cli import main

    monkeypatch.setattr("sftl_dask.cluster.LocalCluster", no_cluster)  # refused before any cluster starts

    art = tmp_path / "art"
    shutil.copytree(models["dnn"], art)
    (art / "card.json").write_text((art / "card.json").read_text().replace('"dnn"', '"DNN"', 1))
    rc = main(["retrieve", "--cube", str(cube), "--model", str(art), "--out", str(tmp_path / "o.zarr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "card.json: sha256 mismatch" in err[0]
    assert not (tmp_path / "o.zarr").exists()
    rc = main(["retrieve", "--cube", str(tmp_path / "nowhere.zarr"), "--model", str(art), "--out", str(tmp_path)])
    assert rc == 2 and "nowhere.zarr: no such scene cube" in capsys.readouterr().err


def test_cli_retrieve_runs_on_an_embedded_cluster_and_reruns_add_nothing(models, cube, tmp_path, capsys, client):
    from sftl_dask.cli import main

    out = tmp_path / "lst.zarr"
    args = ["retrieve", "--cube", str(cube), "--model", str(models["sw"]), "--out", str(out)]
    assert main([*args, "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "retrieved 2 time step(s), skipped 0 already done, failed 0" in text and str(out) in text
    assert main([*args, "--scheduler", client.scheduler.address]) == 0
    assert "retrieved 0 time step(s), skipped 2" in capsys.readouterr().out
    assert "sftl retrieve --cube" in open_store(out).attrs["history"]


# ---------------------------------------------------------------------------------------------
# GPU routing and parity


def test_model_tasks_go_only_to_workers_with_the_gpu_resource(models, cube, tmp_path):
    """A cluster of two workers, one declaring GPU=1: with that resource every model task runs there (the
    resources are given to persist, so graph optimisation cannot drop them as it drops dask.annotate's)."""
    from distributed import Client, Scheduler, SpecCluster, Worker

    from sftl_dask.retrieve import _cluster_devices

    workers = {"gpu-worker": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
               "cpu-worker": {"cls": Worker, "options": {"nthreads": 1}}}
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": None}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        names = {w: i["name"] for w, i in client.scheduler_info()["workers"].items()}
        summary = retrieve(cube, models["dnn"], tmp_path / "lst.zarr", client=client, device="cpu",
                           resources={"GPU": 1})
        assert summary["chunks"] == 18 and {names[w] for w in summary["workers"]} == {"gpu-worker"}
        spread = retrieve(cube, models["dnn"], tmp_path / "lst2.zarr", client=client, device="cpu")
        assert {names[w] for w in spread["workers"]} == {"gpu-worker", "cpu-worker"}  # without: everywhere
        # the probe the routing decides on (its decisions: test_route_... below, on faked devices): the declared
        # resources as given, and CUDA as torch sees it in the worker processes, whatever this machine has
        found = {names[w]: i for w, i in _cluster_devices(client).items()}
        cuda = __import__("torch").cuda.is_available()
        assert found == {"gpu-worker": {"cuda": cuda, "resources": {"GPU": 1}},
                         "cpu-worker": {"cuda": cuda, "resources": {}}}


def _workers(*spec: tuple[bool, bool]) -> dict[str, dict]:
    """Faked ``_cluster_devices``: per worker (has CUDA, declares GPU=1)."""
    return {f"tcp://w{i}": {"cuda": c, "resources": {"GPU": 1} if g else {}} for i, (c, g) in enumerate(spec)}


NO_GPU, GPU_DECLARED, GPU_UNDECLARED, DECLARED_NO_CUDA = (False, False), (True, True), (True, False), (False, True)


@pytest.mark.parametrize(("device", "kind", "workers", "expected"), [
    ("cpu", "trf", [GPU_DECLARED], ("cpu", None)),  # --device cpu: CPU whatever the cluster has
    ("auto", "rf", [GPU_DECLARED], ("cpu", None)),  # trees and the split-window have no GPU path
    ("auto", "sw", [GPU_DECLARED], ("cpu", None)),
    ("auto", "trf", [GPU_DECLARED, NO_GPU], ("auto", {"GPU": 1})),  # GPU_ROUTED: only to the GPU workers
    ("auto", "cnn", [GPU_DECLARED, NO_GPU], ("auto", {"GPU": 1})),
    ("auto", "dnn", [GPU_DECLARED, NO_GPU], ("auto", None)),  # the MLP goes everywhere
    ("auto", "trf", [DECLARED_NO_CUDA, NO_GPU], ("auto", None)),  # a declared GPU torch cannot use: not routed
    ("auto", "trf", [GPU_UNDECLARED, NO_GPU], ("auto", None)),  # CUDA without the resource: nothing to route by
    ("auto", "trf", [NO_GPU, NO_GPU], ("auto", None)),
    ("cuda", "dnn", [GPU_DECLARED, NO_GPU], ("cuda", {"GPU": 1})),  # cuda: to the declared GPU workers
    ("cuda", "dnn", [GPU_UNDECLARED, GPU_UNDECLARED], ("cuda", None)),  # every worker has one
])
def test_route_sends_each_model_kind_where_the_faked_cluster_has_the_device(monkeypatch, device, kind, workers,
                                                                              expected):
    """Every branch of the routing on a faked cluster: the same decisions on a CPU or a GPU machine."""
    monkeypatch.setattr("sftl_dask.retrieve._cluster_devices", lambda client: _workers(*workers))
    assert retrieve_mod._route(device, kind, object()) == expected


@pytest.mark.parametrize(("kind", "workers", "match"), [
    ("rf", [GPU_DECLARED], "--device cuda: rf models run on CPU only"),
    ("dnn", [NO_GPU, DECLARED_NO_CUDA], r"--device cuda: no worker has a CUDA GPU \(2 worker\(s\) checked\)"),
    ("dnn", [GPU_UNDECLARED, NO_GPU], r"--device cuda: 1 worker\(s\) have no GPU; start GPU workers with --resources"),
])
def test_route_refuses_cuda_where_the_faked_cluster_cannot_give_it(monkeypatch, kind, workers, match):
    monkeypatch.setattr("sftl_dask.retrieve._cluster_devices", lambda client: _workers(*workers))
    with pytest.raises(RetrieveError, match=match):
        retrieve_mod._route("cuda", kind, object())


@pytest.mark.parametrize(("device", "has_cuda", "expected"), [
    ("auto", False, ("auto", None)), ("auto", True, ("auto", None)), ("cuda", True, ("cuda", None))])
def test_route_without_a_client_follows_this_process_cuda(monkeypatch, device, has_cuda, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    assert retrieve_mod._route(device, "dnn", None) == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert retrieve_mod._local_device("auto") == "cpu" and retrieve_mod._local_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert retrieve_mod._local_device("auto") == "cuda"  # what a task on a worker with a GPU runs on


def test_bf16_on_cpu_autocast_stays_within_a_kelvin_of_fp32_and_sets_the_same_qc(models, cube, tmp_path):
    """``--precision bf16`` runs here as on a GPU (CPU autocast). Measured on this cube with the session DNN:
    RMS 0.59 K, max 1.18 K from fp32 (bf16 keeps 8 mantissa bits); bounds about 1.7x and 2x that, and a floor
    that fails if autocast silently did nothing."""
    fp32 = retrieve(cube, models["dnn"], tmp_path / "fp32.zarr", threads=1, device="cpu")
    bf16 = retrieve(cube, models["dnn"], tmp_path / "bf16.zarr", threads=1, device="cpu", precision="bf16")
    assert fp32["retrieved"] == bf16["retrieved"] == 2 and bf16["devices"] == ["cpu"]
    a, b = open_store(tmp_path / "fp32.zarr"), open_store(tmp_path / "bf16.zarr")
    assert (a.attrs["model_precision"], b.attrs["model_precision"]) == ("fp32", "bf16")
    d = b["lst"].values - a["lst"].values
    np.testing.assert_array_equal(np.isfinite(a["lst"].values), np.isfinite(b["lst"].values))
    rms, worst = float(np.sqrt(np.nanmean(d ** 2))), float(np.nanmax(np.abs(d)))
    assert 0.05 < rms < 1.0 and worst < 2.5, (rms, worst)
    np.testing.assert_array_equal(a["qc"].values, b["qc"].values)


@pytest.mark.parametrize(("kind", "name"), [("sw", "split-window"), ("rf", "rf")])
def test_bf16_with_a_model_that_has_no_bf16_path_is_refused_in_one_line(models, cube, tmp_path, capsys, kind, name):
    from sftl_dask.cli import main

    with pytest.raises(RetrieveError, match=f"--precision bf16: {name} models have no reduced-precision path"):
        retrieve(cube, models[kind], tmp_path / "o.zarr", threads=1, precision="bf16")
    rc = main(["retrieve", "--cube", str(cube), "--model", str(models[kind]), "--out", str(tmp_path / "o.zarr"),
               "--precision", "bf16"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--precision bf16" in err[0] and "Traceback" not in err[0], err
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA GPU on this machine: the CPU/GPU "
                    "parity of retrieval runs where one is lent (benchmarks/bench_retrieve.py --gpu)")
@pytest.mark.parametrize("kind", ["dnn", "trf", "cnn"])
def test_cpu_and_gpu_retrievals_agree_within_a_millikelvin(models, cube, tmp_path, kind):
    cpu = retrieve(cube, models[kind], tmp_path / "cpu.zarr", threads=1, device="cpu")
    gpu = retrieve(cube, models[kind], tmp_path / "gpu.zarr", threads=1, device="cuda")
    assert cpu["devices"] == ["cpu"] and gpu["devices"] == ["cuda"]
    a, b = open_store(tmp_path / "cpu.zarr"), open_store(tmp_path / "gpu.zarr")
    assert float(np.nanmax(np.abs(a["lst"].values - b["lst"].values))) <= 1e-3
    np.testing.assert_array_equal(a["qc"].values, b["qc"].values)


def test_overwrite_replaces_only_another_models_lst_and_appends_to_the_same_models(tmp_path, retrieval_model):
    from sftl_dask.retrieve import retrieve

    store = synthetic_cube(tmp_path / "c.zarr", 2, 40, 40, seed=9)
    dnn = retrieval_model("dnn", seed=1)
    other = retrieval_model("dnn", seed=2)
    out = tmp_path / "lst.zarr"
    assert retrieve(store, dnn, out, threads=1)["retrieved"] == 2
    again = retrieve(store, dnn, out, threads=1, overwrite=True)  # same model: nothing to redo
    assert again["retrieved"] == 0 and again["skipped"] == 2
    replaced = retrieve(store, other, out, threads=1, overwrite=True)  # another model: replaced whole
    assert replaced["retrieved"] == 2 and replaced["skipped"] == 0

    assert open_store(out).sizes["time"] == 2


class _SigmaRetriever:
    """A model whose LST is bt_10_80 and whose uncertainty is a given sequence (K), pixel by pixel in batch order."""

    features = ("bt_10_80",)
    digest = "0" * 64
    batch_size = 7  # several batches per block
    def __init__(self, sigma: np.ndarray) -> None:
        self.sigma, self.done = sigma.astype(np.float32), 0
        self.training_range = {"bt": (250.0, 330.0)}

    def predict(self, features):
        t = features["bt_10_80"]
        s = self.sigma[self.done:self.done + t.size]
        self.done += t.size
        return t.astype(np.float32), s

    def describe(self):
        return {}


def _block_inputs(ny: int, nx: int, bt: float = 300.0) -> dict[str, np.ndarray]:
    return {"bt_10_80": np.full((ny, nx), bt, np.float32), "vza": np.full((ny, nx), 10.0, np.float32),
            "ancillary_missing": np.zeros((ny, nx), np.uint8)}


def test_block_uncertainty_class_at_the_edges_range_flags_and_chunks_without_cloud_or_observation():
    edges = [0.5, 1.0, np.nextafter(np.float32(1.0), np.float32(2.0)), 2.0, 2.5, 3.0, 3.5, np.nan, 0.0, 1e6]
    sigma = np.array(edges * 3, dtype=np.float32)  # 30 pixels in raster order
    inputs = _block_inputs(5, 6)
    inputs["bt_10_80"][4, 5] = 340.0  # valid (150-400 K), outside the pre-training range
    res = retrieve_block(inputs, _SigmaRetriever(sigma), cloud=np.zeros((5, 6), np.uint8))
    qc = res["qc"].ravel()
    cls = (qc >> UNCERTAINTY_CLASS_SHIFT) & 3
    np.testing.assert_array_equal(cls, [0, 0, 1, 1, 2, 2, 3, 3, 0, 3] * 3)  # <= 1 K: 0, ... > 3 K or NaN: 3
    bt_flag, bt_value = QC_FLAGS["bt_outside_pretraining_range"]
    assert np.flatnonzero((qc & bt_flag) == bt_value).tolist() == [29]
    assert not (qc & QC_FLAGS["cloud_adjacent"][0]).any()  # no cloud anywhere near: no pixel flagged
    assert res["counts"] == {"pixels": 30, "produced": 30, "cloud": 0, "not_covered": 0, "missing_ancillary": 0}
    # nothing observed (outside the swath): every pixel not covered, uncertainty class 3, nothing produced
    empty = _block_inputs(5, 6, bt=np.nan)
    cloud = np.zeros((9, 10), np.uint8)
    cloud[0, 0] = 1  # a cloud in the halo only
    res = retrieve_block(empty, _SigmaRetriever(sigma), cloud=cloud, cloud_offset=(2, 2))
    assert (res["qc"] == 770).all() and np.isnan(res["lst"]).all() and np.isnan(res["lst_uncertainty"]).all()
    assert res["counts"] == {"pixels": 30, "produced": 0, "cloud": 0, "not_covered": 30, "missing_ancillary": 0}
    # a cloud in the halo flags the produced pixels within 2 px of it, across the block's edge
    res = retrieve_block(_block_inputs(5, 6), _SigmaRetriever(np.ones(30)), cloud=cloud, cloud_offset=(2, 2))
    adjacent = (res["qc"] & QC_FLAGS["cloud_adjacent"][0]) != 0
    assert np.argwhere(adjacent).tolist() == [[0, 0]]
