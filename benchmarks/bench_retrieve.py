"""Benchmark: `sftl retrieve` throughput, scaling, memory, cloud skipping, precision and uncertainty calibration.

Measures, in one run on the ``huailai_to_heihe`` pipeline's scene cube (2 tiles x 20 steps x 4 chunks of 512 x 512:
160 chunk tasks, 41.9 Mpx):

* (a) split-window retrieval against the I/O floor: the same chunk tasks (retrieval's own plan: the chunks
  holding data, the cloud halos) on the same cluster reading the same inputs (and cloud halo) and writing
  outputs of the same names, dtypes and chunks, with no compute; the floor times the tasks only.
  Target: retrieval / floor <= 1.5;
* (b) the DNN (the demo's artifact) on Dask, 2 workers x 1 thread, against the same retrieval in this
  process without Dask, the best of a pool of 2 threads over the chunks (torch 1 thread each) and one loop
  with 2 torch threads. Target: Dask >= 0.9 x the best in-process set-up; and >= 3.96 Mpx/s (a 100-line
  prototype's figure on this cube);
* (c) px/s per core of every model kind (DNN, TrF, CNN, LGBM, RF, split-window): compute only, one thread,
  on the same pre-read chunks; torch models also in bfloat16, with the LST difference each costs;
* (d) scaling: the DNN on 1 worker and on 2 (target >= 1.7x), and peak worker memory retrieving N and 4N
  time steps (target within +-20 %);
* (e) a half-cloudy scene against a clear one, DNN (target <= 0.6: masked pixels are skipped);
* (f) the uncertainty's calibration measured through the LST cube: held-out target-region matchups read from
  the retrieved cube (share of in situ residuals within +-1 sigma, goal 68 +- 5 %, and +-2 sigma, goal
  95 +- 3 %), for both directions, and against the testbed's true pixel LST;
* (h) the DNN's ``sftl retrieve`` against a bare baseline: per chunk, read the inputs, THE feature function, the
  same artifact's TorchScript forward in batches of 8,192, write ``lst`` alone (``dask.array.map_blocks`` +
  ``to_zarr``, same workers x 1 thread, the model loaded once per worker). Target: throughput >= 0.8 x the
  bare baseline's (``--bare-only`` runs this part alone);
* (g) with a CUDA GPU (``--gpu``): px/s per GPU and the share of time the GPU is busy.

TrF, CNN, RF and LGBM for (c) are the pipelines' architectures trained briefly on the simulation: their cost
per pixel does not depend on how well they are trained. Writes ``benchmarks/results/retrieve.json`` and
``retrieve.png``.

Usage: python -m benchmarks.bench_retrieve [--work DIR] [--workers 2] [--repeat 2] [--quick] [--gpu]
       python -m benchmarks.bench_retrieve --parts floor,cloud,scaling --cube CUBE --sw SW.json --model DNN
       (parts (a), (e) and (d)'s scaling alone, on a cube and models made elsewhere: nothing trained; into
       <work>/parts.json)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
FLOOR_TARGET = 1.5
DASK_TARGET = 0.9
PROTOTYPE_MPX_S = 3.96
SCALING_TARGET = 1.7
MEMORY_TOLERANCE = 0.20
CLOUD_TARGET = 0.6
#: DNN ``sftl retrieve`` throughput / the bare baseline's (same cube, artifact and workers): at least this.
BARE_TARGET = 0.8
KINDS = ("dnn", "trf", "cnn", "lgbm", "rf", "sw")


# --------------------------------------------------------------------------------------------- inputs
def _train(work: Path, config: str, log: str) -> Path:
    """``sftl train`` of a pipeline into ``work`` (reused when its artifact exists); returns the output folder."""
    import subprocess
    import sys

    out = work / Path(config).stem
    if (out / "model" / "card.json").exists():
        return out
    if (work / "huailai_to_heihe" / "work").is_dir() and not (out / "work").exists():
        shutil.copytree(work / "huailai_to_heihe" / "work", out / "work")  # same data: reuse it
        (out / "work" / "sw.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open(work / log, "w") as fh:
        subprocess.run([sys.executable, "-m", "sftl_dask.cli", "train", "--config", str(ROOT / config),
                        "--out", str(out), "--overwrite"], check=True, stdout=fh, stderr=subprocess.STDOUT)
    print(f"trained {config} in {time.perf_counter() - t0:.0f} s")
    return out


def _throughput_models(work: Path, sim: Path) -> dict[str, Path]:
    """TrF, CNN, RF, LGBM with the pipelines' architectures, trained briefly on 60k simulated rows."""
    from sftl_dask.features import feature_matrix
    from sftl_dask.models import build_model
    from sftl_dask.models.artifact import export_artifact
    from sftl_dask.models.trainer import fit_torch
    from sftl_dask.simulate import TRAINING_COLUMNS, read_simulation_columns

    card = json.loads((work / "huailai_to_heihe" / "model" / "card.json").read_text())
    out: dict[str, Path] = {}
    table = None
    params = {"rf": {"n_estimators": 100, "max_depth": 18}, "lgbm": {"n_estimators": 300}}
    for kind in ("trf", "cnn", "rf", "lgbm"):
        path = work / "models" / kind
        out[kind] = path
        if (path / "card.json").exists():
            continue
        if table is None:
            tab = read_simulation_columns(sim, TRAINING_COLUMNS)
            idx = np.random.default_rng(0).choice(len(tab["lst"]), 60_000, replace=False)
            x, y = feature_matrix({k: v[idx] for k, v in tab.items()}), tab["lst"][idx].astype(np.float32)
            table = (x, y)
        x, y = table
        t0 = time.perf_counter()
        if kind in ("rf", "lgbm"):
            model = build_model(kind, 12, **params[kind])
            model.fit(x, y)
        else:
            model = build_model(kind, 12, x.mean(axis=0), x.std(axis=0) + 1e-6, target_mean=float(y.mean()),
                                target_std=float(y.std()))
            fit_torch(model, x, y, epochs=1, batch_size=1024, lr=3e-3, seed=0)
        export_artifact(model, path, {"model": kind, "strategy": "none", "uncertainty": card["uncertainty"],
                                      "pretraining_range": card["pretraining_range"]})
        print(f"  throughput model {kind}: trained and exported in {time.perf_counter() - t0:.0f} s")
    return out


def _copy_cube(src_root: Path, dst_root: Path, *, steps: int | None = None, repeat: int = 1,
               clear: bool = False, half_cloud: bool = False) -> Path:
    """A scene cube made of another's first ``steps`` time steps (each ``repeat`` times).

    ``clear`` fills every missing value with its scene's median (full coverage, no cloud, no missing
    ancillary data); ``half_cloud`` then clouds the left half of each scene.
    """
    import xarray as xr

    from sftl_dask.io.cube import CUBE_VARIABLES, append_slots, cube_stores, read_slots, write_scene

    shutil.rmtree(dst_root, ignore_errors=True)
    for name, store in cube_stores(src_root).items():
        grid, slots = read_slots(store)
        slots = [s for s in slots if s["ingest_ok"]][:steps]
        ds = xr.open_zarr(store)
        scenes = [{**s, "scene_id": f"{s['scene_id']}_{k}"} for k in range(repeat) for s in slots]
        idx = append_slots(dst_root / f"{name}.zarr", grid, scenes)
        for i, s in zip(idx, scenes, strict=True):
            t = int(s["index"])
            data = {v: ds[v].isel(time=t).values for v in CUBE_VARIABLES}
            if clear:
                for v, spec in CUBE_VARIABLES.items():
                    if spec["dtype"] == "float32":
                        a = data[v]
                        a[~np.isfinite(a)] = np.nanmedian(a)
                data["cloud"][:] = 0
                data["ancillary_missing"][:] = 0
                if half_cloud:
                    data["cloud"][:, : grid.width // 2] = 1
            write_scene(dst_root / f"{name}.zarr", i, data, s["checksum"])
    return dst_root


# --------------------------------------------------------------------------------------------- measurements
def _jobs(cube: Path, model: Path, out: Path) -> list[Any]:
    """The chunk jobs a retrieval of ``cube`` plans, made by retrieval's own planning (the chunks the coverage
    index says hold data, the cloud halos across tile edges); an LST store is made for them."""
    from sftl_dask.features import inputs_for
    from sftl_dask.retrieve import _chunk_jobs, _plan

    shutil.rmtree(out, ignore_errors=True)
    retriever, plans, ident = _plan(cube, model, out, precision="fp32", overwrite=False)
    need = (*inputs_for(retriever.features), "vza", "ancillary_missing")
    jobs, _ = _chunk_jobs(plans, retriever, retriever.describe(), ident, "floor (bench_retrieve)", need, "floor")
    return jobs


def floor_task(job: Any) -> float:
    """The I/O of a retrieval task and nothing else: read its inputs and cloud halo, write its four outputs."""
    from sftl_dask.retrieve import _read_inputs, _write_outputs

    t0 = time.perf_counter()
    data, _cloud, _ = _read_inputs(job)
    qc = np.zeros(data["vza"].shape, np.uint16)
    _write_outputs(job, {"lst": data["bt_10_80"], "lst_uncertainty": data["wvc"], "qc": qc, "vza": data["vza"]})
    return time.perf_counter() - t0


def _floor(client: Any, cube: Path, model: Path, out: Path) -> dict[str, float]:
    jobs = _jobs(cube, model, out)
    t0 = time.perf_counter()
    client.gather(client.map(floor_task, jobs, pure=False))
    return {"wall_s": time.perf_counter() - t0, "chunks": len(jobs)}


@functools.lru_cache(maxsize=2)
def _bare_model(path: str) -> tuple[Any, tuple[str, ...]]:
    """The artifact's TorchScript module and its features, loaded once per worker process."""
    from sftl_dask.models.artifact import load_artifact

    loaded = load_artifact(path)
    return loaded.model, tuple(loaded.features)


def bare_block(*arrays: np.ndarray, names: tuple[str, ...], path: str) -> np.ndarray:
    """The bare pipeline's work on one chunk: THE feature function and the artifact's forward in batches of 8,192
    on the clear pixels whose inputs are finite (those a retrieval produces); ``lst`` alone (float32, NaN
    elsewhere)."""
    import torch

    from sftl_dask.features import compute_features

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    model, features = _bare_model(path)
    flat = {n: a.reshape(-1) for n, a in zip(names, arrays, strict=True)}
    ok = flat.pop("cloud") == 0  # the pixels a retrieval produces: clear, with finite inputs
    for v in flat.values():
        ok &= np.isfinite(v)
    idx = np.flatnonzero(ok)
    out = np.full(arrays[0].size, np.nan, dtype=np.float32)
    for b in range(0, idx.size, 8192):
        take = idx[b:b + 8192]
        f = compute_features({k: v.take(take) for k, v in flat.items()}, names=features)
        x = torch.from_numpy(np.ascontiguousarray(np.stack([f[k] for k in features], axis=1), dtype=np.float32))
        with torch.inference_mode():
            out[take] = model(x).numpy()
    return out.reshape(arrays[0].shape)


def _bare(client: Any, cube: Path, model: Path, out: Path) -> dict[str, Any]:
    """The bare baseline: per chunk and complete time step, read the model's inputs and the cloud mask, features,
    the forward on the clear pixels, write ``lst`` alone (``dask.array.map_blocks`` + ``to_zarr``) on the same
    workers; seconds and pixels."""
    import dask
    import dask.array as da

    from sftl_dask.features import inputs_for
    from sftl_dask.io.cube import cube_stores, read_slots
    from sftl_dask.models.artifact import load_artifact

    names = (*inputs_for(load_artifact(model).features), "cloud")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    writes, pixels = [], 0
    for name, store in cube_stores(cube).items():
        steps = [s["index"] for s in read_slots(store)[1] if s["ingest_ok"]]
        arrays = [da.from_zarr(str(store), component=n)[steps] for n in names]
        lst = da.map_blocks(bare_block, *arrays, names=names, path=str(model), dtype=np.float32)
        pixels += int(np.prod(lst.shape))
        writes.append(lst.to_zarr(str(out / f"{name}.zarr"), component="lst", compute=False, zarr_format=2))
    client.compute(dask.delayed(writes)).result()
    return {"seconds": time.perf_counter() - t0, "pixels": pixels}


def _retrieve(cube: Path, model: Path, out: Path, **kw: Any) -> dict[str, Any]:
    from sftl_dask.retrieve import retrieve

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = retrieve(cube, model, out, device="cpu", **kw)
    s["call_s"] = time.perf_counter() - t0  # the whole call: its "seconds" leave out the run log and STAC items
    if s["failed"]:
        raise RuntimeError(f"retrieval failed: {s['failed'][:2]}")
    return s


def _plain(value: Any) -> Any:
    """JSON for what the results hold besides plain Python: numpy scalars (counts from the cubes)."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda r: r["seconds"] if "seconds" in r else r["wall_s"])


def _per_core(models: dict[str, Path], cube: Path, n_chunks: int) -> list[dict[str, Any]]:
    """Compute-only px/s of each model on the same pre-read chunks, one thread; bf16 for torch models."""
    import torch

    from sftl_dask.features import inputs_for
    from sftl_dask.io.cube import cube_stores, read_slots
    from sftl_dask.models.retriever import open_retriever
    from sftl_dask.retrieve import _Job, _read_inputs, retrieve_block

    torch.set_num_threads(1)
    store = next(iter(cube_stores(cube).values()))
    grid, slots = read_slots(store)
    every = [*inputs_for(("bt_08_20", "bt_08_63", "bt_10_80", "bt_11_95", "wvc", "emis_08_20", "emis_08_63",
                          "emis_mean", "sec_vza")), "vza", "ancillary_missing"]
    chunks = []
    for s in [s for s in slots if s["ingest_ok"]][:n_chunks]:
        job = _Job(str(store), "", int(s["index"]), 0, (0, min(512, grid.height), 0, min(512, grid.width)),
                   (grid.height, grid.width), tuple(every), "per-core", (512, 512))
        chunks.append(_read_inputs(job)[:2])
    rows = []
    for kind, path in models.items():
        precisions = ("fp32", "bf16") if kind in ("dnn", "trf", "cnn") else ("fp32",)
        ref = None
        for precision in precisions:
            r = open_retriever(path, precision=precision)
            outs = [retrieve_block(d, r, cloud=c, cloud_offset=(0, 0)) for d, c in chunks[:1]]  # warm-up
            t0 = time.perf_counter()
            outs = [retrieve_block(d, r, cloud=c, cloud_offset=(0, 0)) for d, c in chunks]
            dt = time.perf_counter() - t0
            produced = sum(o["counts"]["produced"] for o in outs)
            pixels = sum(o["counts"]["pixels"] for o in outs)
            lst = np.concatenate([o["lst"].ravel() for o in outs])
            row = {"model": kind, "precision": precision, "produced_px_per_s": produced / dt,
                   "cube_px_per_s": pixels / dt, "seconds": dt, "produced": produced, "pixels": pixels}
            if ref is None:
                ref = lst
            else:
                d = (lst - ref)[np.isfinite(ref)]
                row.update(max_abs_diff_k=float(np.max(np.abs(d))), rms_diff_k=float(np.sqrt(np.mean(d**2))))
            rows.append(row)
            print(f"  per core: {kind:5s} {precision}: {produced / dt / 1e6:7.3f} Mpx/s produced "
                  f"({pixels / dt / 1e6:.3f} Mpx/s of cube)" + (f", |dLST| max {row['max_abs_diff_k']:.3f} K"
                                                               if "max_abs_diff_k" in row else ""))
    torch.set_num_threads(os.cpu_count() or 1)
    return rows


@functools.lru_cache(maxsize=2)
def _forward_model(model: str) -> Any:
    """The artifact's ``torch.export`` module, loaded once per process."""
    from sftl_dask.models.artifact import load_artifact

    return load_artifact(model, program="export").model


def _load_forward_model(model: str) -> None:
    _forward_model(model)


def _forward_loop(model: str, seconds: float) -> float:
    """Pixels per second of the bare DNN forward pass (one thread, batches of 8,192) for ``seconds``."""
    import torch

    torch.set_num_threads(1)
    net = _forward_model(model)
    x = torch.randn(8192, 12) * 3 + 290
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - t0 < seconds:
            net(x)
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def _ceiling(workers: int, model: Path) -> dict[str, float]:
    """This machine's own scaling of the compute: the bare DNN forward on one worker, then on all at once."""
    from sftl_dask.cluster import get_client

    with get_client(n_workers=workers) as client:
        client.run(_warm)
        client.run(_load_forward_model, str(model))  # loaded everywhere first: the timed loops then start together
        names = sorted(client.scheduler_info()["workers"])
        one = client.run(_forward_loop, str(model), 6.0, workers=names[:1])
        every = client.run(_forward_loop, str(model), 6.0)
    return {"one_worker_px_s": sum(one.values()), "all_workers_px_s": sum(every.values()),
            "speedup": sum(every.values()) / sum(one.values())}


def _memory(workers: int, cube: Path, model: Path, out: Path) -> dict[str, Any]:
    from benchmarks.bench_ingest import _rss, _rss_sampler
    from sftl_dask.cluster import get_client

    with get_client(n_workers=workers) as client:
        client.run(_warm)
        idle = max(client.run(_rss).values())
        with _rss_sampler(client) as samples:
            s = _retrieve(cube, model, out, client=client)
    peak = max(max(v.values()) for _, v in samples)
    return {"time_steps": s["retrieved"], "seconds": s["seconds"], "idle_rss_mb": round(idle / 2**20, 1),
            "peak_rss_mb": round(peak / 2**20, 1), "samples": len(samples),
            "trace": [(round(t, 2), round(max(v.values()) / 2**20, 1)) for t, v in samples]}


def _malloc_like_workers() -> None:
    """This process's glibc malloc set as the embedded cluster's workers are (``cluster._MALLOC_ENV``), so the
    in-process baselines and the Dask workers allocate alike."""
    import ctypes

    from sftl_dask.cluster import _MALLOC_ENV

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, int(_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]))  # M_MMAP_THRESHOLD
    libc.mallopt(-1, int(_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]))  # M_TRIM_THRESHOLD


def _warm() -> None:
    """Imports and torch initialisation in each worker, outside the measured runs: torch, the package, and
    torch.export's loader (which imports torch._dynamo: ~2.6 s here the first time a process loads a
    ``model.pt2``, a process's start-up like torch's own import; :func:`scaling` also reports runs without it)."""
    import torch.export.pt2_archive  # noqa: F401

    _warm_torch()


def _warm_torch() -> None:
    """What :func:`_warm` did before torch.export programs were the default: torch and the package only."""
    import torch

    import sftl_dask.retrieve  # noqa: F401

    torch.zeros(1)


def _calibration(train_out: Path, lst_root: Path) -> dict[str, Any]:
    """Held-out target-region matchups read back from the retrieved LST cube: residuals against sigma."""
    import pandas as pd
    import xarray as xr

    from sftl_dask.io.lst import lst_stores
    from sftl_dask.models.error_model import coverage

    results = json.loads((train_out / "results.json").read_text())
    card = json.loads((train_out / "model" / "card.json").read_text())
    mu = pd.read_parquet(train_out / "work" / "matchups.parquet")
    mu = mu[(mu["reason"] == "ok") & (mu["region"] == card["target_region"])]
    truth = train_out / "work" / "testbed" / "truth" / "site_overpass_truth.csv"
    if truth.exists():
        t = pd.read_csv(truth, usecols=["scene_id", "site", "lst_pixel_k"]).drop_duplicates(["scene_id", "site"])
        mu = mu.merge(t, on=["scene_id", "site"], how="left")
    rows = []
    for store in lst_stores(lst_root).values():
        ds = xr.open_zarr(store)
        index = {str(s): i for i, s in enumerate(ds["scene_id"].values)}
        here = mu[mu["scene_id"].isin(index)]
        for _, m in here.iterrows():
            t = index[m["scene_id"]]
            px = ds[["lst", "lst_uncertainty", "qc"]].isel(time=t, y=int(m["row"]), x=int(m["col"])).compute()
            rows.append({"lst": float(px["lst"]), "sigma": float(px["lst_uncertainty"]), "insitu": m["lst_insitu"],
                         "truth": m.get("lst_pixel_k", np.nan)})
    df = pd.DataFrame(rows).dropna(subset=["lst"])
    out = {"direction": card["direction"], "model": card["model"], "strategy": card["strategy"],
           "target": card["target_region"], "n_matchups": len(mu),
           "insitu": coverage(df["lst"] - df["insitu"], df["sigma"]),
           "stage3_insitu": results["stage3_transfer"]["uncertainty_calibration"]["target_insitu"],
           "sigma_scene_k": card["uncertainty"]["sigma_scene_k"]}
    if df["truth"].notna().all():
        out["pixel_truth"] = coverage(df["lst"] - df["truth"], df["sigma"])
    return out


def _gpu(models: dict[str, Path], cube: Path, work: Path) -> dict[str, Any]:
    """px/s per GPU and the GPU's busy share (torch profiler's CUDA time over wall time), fp32 and bf16."""
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "how": "on a machine with a CUDA GPU and a CUDA build of torch: "
                "python -m benchmarks.bench_retrieve --gpu --work <work dir>"}
    out: dict[str, Any] = {"available": True, "device": torch.cuda.get_device_name(0), "runs": []}
    for kind in ("dnn", "trf", "cnn"):
        for precision in ("fp32", "bf16"):
            from torch.profiler import ProfilerActivity, profile

            from sftl_dask.retrieve import retrieve

            shutil.rmtree(work / "gpu.zarr", ignore_errors=True)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                s = retrieve(cube, models[kind], work / "gpu.zarr", threads=1, device="cuda", precision=precision)
                torch.cuda.synchronize()
                wall = time.perf_counter() - t0
            busy = sum(e.device_time_total for e in prof.key_averages()) / 1e6
            out["runs"].append({"model": kind, "precision": precision, "px_per_s": s["pixels"] / wall,
                                "produced_px_per_s": s["produced"] / wall, "gpu_busy_share": busy / wall})
    return out


# --------------------------------------------------------------------------------------------- main
def bare_comparison(client: Any, cube: Path, model: Path, work: Path, repeat: int) -> dict[str, Any]:
    """(h): ``sftl retrieve`` of the DNN against the bare baseline, alternated on one cluster; best of each."""
    client.run(_warm)
    full, bare = [], []
    for _ in range(repeat):
        full.append(_retrieve(cube, model, work / "lst_full", client=client))
        bare.append(_bare(client, cube, model, work / "lst_bare"))
    f, b = _best(full), _best(bare)
    return {"cube": str(cube), "model": str(model), "retrieve_s": round(f["seconds"], 2),
            "bare_s": round(b["seconds"], 2), "pixels": b["pixels"], "tasks": f["chunks"],
            "ratio_throughput_retrieve_to_bare": round(b["seconds"] / f["seconds"], 3), "target": BARE_TARGET,
            "retrieve_runs_s": [round(r["seconds"], 2) for r in full],
            "bare_runs_s": [round(r["seconds"], 2) for r in bare],
            "task_time_split_s": {k: round(f[k], 2) for k in ("load_s", "read_s", "compute_s", "write_s")}}


def _bare_only(args: argparse.Namespace) -> dict[str, Any]:
    from sftl_dask.cluster import get_client

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.cube is None or args.model is None:
        hu = _train(work, "pipelines/huailai_to_heihe.yaml", "train_huailai_to_heihe.log")
        cube, model = hu / "work" / "cube", hu / "model"
    else:
        cube, model = args.cube, args.model
    with get_client(n_workers=args.workers) as client:
        bare = bare_comparison(client, cube, model, work, args.repeat)
    path = RESULTS / "retrieve.json"
    res = json.loads(path.read_text()) if path.exists() else {"benchmark": "retrieve"}
    res["bare"] = bare
    res.setdefault("targets_met", {})["dnn_vs_bare"] = bare["ratio_throughput_retrieve_to_bare"] >= BARE_TARGET
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=_plain))
    print(json.dumps(bare, indent=1))
    return res


def floor_vs_split_window(client: Any, cube: Path, sw: Path, work: Path, repeat: int) -> dict[str, Any]:
    """(a): the split-window's ``sftl retrieve`` against the bare I/O floor (same tasks), alternated; best of each."""
    fl, sw_runs = [], []
    for _ in range(repeat):
        fl.append(_floor(client, cube, sw, work / "floor"))
        sw_runs.append(_retrieve(cube, sw, work / "lst_sw", client=client))
    f, s = _best(fl), _best(sw_runs)
    return {"floor_s": round(f["wall_s"], 2), "split_window_s": round(s["seconds"], 2), "chunks": s["chunks"],
            "ratio_split_window_to_floor": round(s["seconds"] / f["wall_s"], 3), "target": FLOOR_TARGET,
            "split_window_tasks_s": round(s["tasks_s"], 2),
            "ratio_tasks_to_floor": round(s["tasks_s"] / f["wall_s"], 3),
            "split_window_call_s": round(s["call_s"], 2),
            "ratio_call_to_floor": round(s["call_s"] / f["wall_s"], 3),
            "floor_runs_s": [round(r["wall_s"], 2) for r in fl],
            "split_window_runs_s": [round(r["seconds"], 2) for r in sw_runs],
            "split_window_call_runs_s": [round(r["call_s"], 2) for r in sw_runs],
            "task_time_split_s": {k: round(s[k], 2) for k in ("load_s", "read_s", "compute_s", "write_s")}}


def half_cloudy(client: Any, cube: Path, model: Path, work: Path, repeat: int) -> dict[str, Any]:
    """(e): the DNN on a half-cloudy copy of the cube's first 8 steps against a clear copy, alternated; best of each
    (and each pair's ratio, with their median)."""
    clear = _copy_cube(cube, work / "cube_clear", steps=8, clear=True)
    half = _copy_cube(cube, work / "cube_half", steps=8, clear=True, half_cloud=True)
    tc, th = [], []
    for _ in range(repeat):
        tc.append(_retrieve(clear, model, work / "lst_clear", client=client))
        th.append(_retrieve(half, model, work / "lst_half", client=client))
    c, h = _best(tc), _best(th)
    pairs = [b["seconds"] / a["seconds"] for a, b in zip(tc, th, strict=True)]
    return {"clear_s": round(c["seconds"], 2), "half_cloudy_s": round(h["seconds"], 2),
            "ratio": round(h["seconds"] / c["seconds"], 3), "target": CLOUD_TARGET,
            "ratio_per_pair": [round(v, 3) for v in pairs], "ratio_median_of_pairs": round(float(np.median(pairs)), 3),
            "clear_runs_s": [round(r["seconds"], 2) for r in tc], "half_runs_s": [round(r["seconds"], 2) for r in th],
            "clear_split_s": {k: round(c[k], 2) for k in ("read_s", "compute_s", "write_s")},
            "half_split_s": {k: round(h[k], 2) for k in ("read_s", "compute_s", "write_s")}}


def scaling(cube: Path, model: Path, work: Path, workers: int, repeat: int) -> dict[str, Any]:
    """(d): the DNN on 1 worker and on ``workers``, each run on a fresh cluster, alternated; best of each (and each
    alternated pair's ratio, with their median).

    The workers are warmed (:func:`_warm`: imports, torch.export's loader included) before each measured run, as
    the other parts are; one run each with only torch imported (:func:`_warm_torch`) is reported beside, so the
    one-off import each worker's first task then pays (in every run, whatever the number of workers) is seen.
    """
    one, many = [], []
    for _ in range(repeat):  # alternated: the VM's speed drifts by +-20 % within minutes
        one.append(_fresh_cluster_run(1, cube, model, work / "lst_1w"))
        many.append(_fresh_cluster_run(workers, cube, model, work / "lst_nw"))
    cold_one = _fresh_cluster_run(1, cube, model, work / "lst_1w", warm=_warm_torch)
    cold_many = _fresh_cluster_run(workers, cube, model, work / "lst_nw", warm=_warm_torch)
    ceiling = _ceiling(workers, model)
    t1, tn = min(r["seconds"] for r in one), min(r["seconds"] for r in many)
    pairs = [a["seconds"] / b["seconds"] for a, b in zip(one, many, strict=True)]
    return {"one_worker_s": round(t1, 2), f"{workers}_workers_s": round(tn, 2), "speedup": round(t1 / tn, 3),
            "target": SCALING_TARGET, "speedup_per_pair": [round(v, 3) for v in pairs],
            "speedup_median_of_pairs": round(float(np.median(pairs)), 3),
            "one_worker_runs_s": [round(r["seconds"], 2) for r in one],
            f"{workers}_workers_runs_s": [round(r["seconds"], 2) for r in many],
            "first_task_load_s": {"one_worker": round(min(r["load_s"] for r in one), 2),
                                  f"{workers}_workers": round(min(r["load_s"] for r in many), 2)},
            "without_export_loader_warmed": {
                "one_worker_s": round(cold_one["seconds"], 2), f"{workers}_workers_s": round(cold_many["seconds"], 2),
                "speedup": round(cold_one["seconds"] / cold_many["seconds"], 3),
                "first_task_load_s": {"one_worker": round(cold_one["load_s"], 2),
                                      f"{workers}_workers": round(cold_many["load_s"], 2)}},
            "machine_ceiling_bare_dnn_forward": {k: round(v, 3) for k, v in ceiling.items()}}


def _parts(args: argparse.Namespace) -> dict[str, Any]:
    """Only the parts named by ``--parts`` (``floor``: (a), ``cloud``: (e), ``scaling``: (d)'s scaling), on a given
    cube and models; the result goes to ``<work>/parts.json`` (benchmarks/results is left to full runs)."""
    from sftl_dask.cluster import get_client

    parts = set(args.parts.split(","))
    if not parts <= {"floor", "cloud", "scaling"} or args.cube is None or ("floor" in parts and args.sw is None) \
            or (parts & {"cloud", "scaling"} and args.model is None):
        raise SystemExit("--parts takes floor,cloud,scaling, with --cube, --sw (floor) and --model (cloud, scaling)")
    args.work.mkdir(parents=True, exist_ok=True)
    _malloc_like_workers()
    res: dict[str, Any] = {"load_before": os.getloadavg(), "workers": args.workers}
    if parts & {"floor", "cloud"}:
        with get_client(n_workers=args.workers) as client:
            client.run(_warm)
            if "floor" in parts:
                res["floor"] = floor_vs_split_window(client, args.cube, args.sw, args.work, args.repeat)
            if "cloud" in parts:
                res["cloud"] = half_cloudy(client, args.cube, args.model, args.work, args.repeat)
    if "scaling" in parts:
        res["scaling"] = scaling(args.cube, args.model, args.work, args.workers, args.repeat)
    res["load_after"] = os.getloadavg()
    (args.work / "parts.json").write_text(json.dumps(res, indent=1, default=_plain))
    print(json.dumps(res, indent=1, default=_plain))
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sftl-bench-retrieve"),
                    help="work folder: trained models and cubes are made once and reused")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="timing repeats; the best counts")
    ap.add_argument("--quick", action="store_true", help="one direction's calibration, fewer chunks per core")
    ap.add_argument("--gpu", action="store_true", help="also measure on the CUDA GPU")
    ap.add_argument("--bare-only", action="store_true", help="only the DNN against the bare baseline (h), into "
                    "retrieve.json's 'bare' (the rest kept from the last run)")
    ap.add_argument("--cube", type=Path, default=None, help="with --bare-only: this scene cube (default: the "
                    "trained pipeline's)")
    ap.add_argument("--model", type=Path, default=None, help="with --bare-only or --parts cloud: this DNN artifact")
    ap.add_argument("--parts", default=None, help="only these parts, comma-separated: floor (a: split-window "
                    "against the I/O floor), cloud (e: half-cloudy against clear), scaling (d: 1 against 2 "
                    "workers), on --cube with --sw / --model; "
                    "into <work>/parts.json")
    ap.add_argument("--sw", type=Path, default=None, help="with --parts floor: split-window coefficients (JSON)")
    args = ap.parse_args(argv)
    from sftl_dask.cluster import get_client

    if args.bare_only:
        return _bare_only(args)
    if args.parts:
        return _parts(args)

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    _malloc_like_workers()
    hu = _train(work, "pipelines/huailai_to_heihe.yaml", "train_huailai_to_heihe.log")
    he = None if args.quick else _train(work, "pipelines/heihe_to_huailai.yaml", "train_heihe_to_huailai.log")
    cube = hu / "work" / "cube"
    models = {"dnn": hu / "model", **_throughput_models(work, hu / "work" / "sim.parquet"),
              "sw": hu / "work" / "sw.json"}
    print(f"cube {cube}; models {', '.join(models)}")

    res: dict[str, Any] = {"benchmark": "retrieve", "workers": args.workers, "threads_per_worker": 1,
                           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "node": platform.node(),
                                       "measured_utc": time.strftime("%Y-%m-%d", time.gmtime())}}
    with get_client(n_workers=args.workers) as client:
        client.run(_warm)
        sw, fl, dk = [], [], []
        for r in range(args.repeat):
            fl.append(_floor(client, cube, models["sw"], work / "floor"))
            sw.append(_retrieve(cube, models["sw"], work / "lst_sw", client=client))
            dk.append(_retrieve(cube, models["dnn"], work / "lst_dnn", client=client))
            print(f"  repeat {r + 1}: floor {fl[-1]['wall_s']:.2f} s, split-window {sw[-1]['seconds']:.2f} s, "
                  f"DNN on Dask {dk[-1]['seconds']:.2f} s")
        res["bare"] = bare_comparison(client, cube, models["dnn"], work, args.repeat)
    _warm()
    pool = [_retrieve(cube, models["dnn"], work / "lst_pool", threads=2) for _ in range(args.repeat)]
    loop = [_retrieve(cube, models["dnn"], work / "lst_loop", threads=1) for _ in range(args.repeat)]
    f, s, d, p, lp = _best(fl), _best(sw), _best(dk), _best(pool), _best(loop)
    in_process = min(p["seconds"], lp["seconds"])
    pixels = d["pixels"]
    res.update({
        "cube_pixels": pixels, "chunks": d["chunks"],
        "floor_s": round(f["wall_s"], 2), "split_window_s": round(s["seconds"], 2),
        "ratio_split_window_to_floor": round(s["seconds"] / f["wall_s"], 3), "floor_target": FLOOR_TARGET,
        "dnn_dask_s": round(d["seconds"], 2), "dnn_pool_s": round(p["seconds"], 2),
        "dnn_loop_s": round(lp["seconds"], 2),
        "dnn_dask_mpx_s": round(pixels / d["seconds"] / 1e6, 3),
        "dnn_in_process_best_mpx_s": round(pixels / in_process / 1e6, 3),
        "ratio_dask_to_in_process": round(in_process / d["seconds"], 3), "dask_target": DASK_TARGET,
        "prototype_mpx_s": PROTOTYPE_MPX_S,
        "dnn_task_time_split_s": {k: round(d[k], 2) for k in ("load_s", "read_s", "compute_s", "write_s")},
    })
    print(f"  in process: pool of 2 {p['seconds']:.2f} s, loop with 2 torch threads {lp['seconds']:.2f} s")

    res["per_core"] = _per_core(models, cube, 2 if args.quick else 4)

    sc = res["scaling"] = scaling(cube, models["dnn"], work, args.workers, args.repeat)
    print(f"  scaling: {sc['one_worker_s']:.1f} s on 1 worker, {sc[f'{args.workers}_workers_s']:.1f} s on "
          f"{args.workers}: {sc['speedup']:.2f}x (the bare DNN forward scales "
          f"{sc['machine_ceiling_bare_dnn_forward']['speedup']:.2f}x on this machine)")
    small = _copy_cube(cube, work / "cube_n", steps=5)
    mem_n = _memory(args.workers, small, models["dnn"], work / "lst_n")
    mem_4n = _memory(args.workers, cube, models["dnn"], work / "lst_4n")
    growth = mem_4n["peak_rss_mb"] / mem_n["peak_rss_mb"] - 1
    res["memory"] = {"n": mem_n, "4n": mem_4n, "peak_growth": round(growth, 3), "tolerance": MEMORY_TOLERANCE}

    with get_client(n_workers=args.workers) as client:
        client.run(_warm)
        res["cloud"] = half_cloudy(client, cube, models["dnn"], work, args.repeat)

    res["calibration"] = [_calibration(hu, work / "lst_dnn")]
    if he is not None:
        _retrieve(he / "work" / "cube", he / "model", work / "lst_he", threads=2)
        res["calibration"].append(_calibration(he, work / "lst_he"))
    res["gpu"] = _gpu(models, cube, work) if args.gpu else {"available": False, "how": (
        "on a machine with a CUDA GPU: python -m benchmarks.bench_retrieve --gpu --work <work dir>")}
    res["targets_met"] = {
        "split_window_vs_floor": res["ratio_split_window_to_floor"] <= FLOOR_TARGET,
        "dnn_vs_bare": res["bare"]["ratio_throughput_retrieve_to_bare"] >= BARE_TARGET,
        "dask_vs_in_process": res["ratio_dask_to_in_process"] >= DASK_TARGET,
        "dask_vs_prototype": res["dnn_dask_mpx_s"] >= PROTOTYPE_MPX_S,
        # the median of alternated pairs: best against best compares the VM's fastest moments of each side
        "scaling": res["scaling"]["speedup_median_of_pairs"] >= SCALING_TARGET,
        "memory": abs(growth) <= MEMORY_TOLERANCE,
        "half_cloudy": res["cloud"]["ratio_median_of_pairs"] <= CLOUD_TARGET,
        "calibration_1sigma": [abs(c["insitu"]["within_1sigma"] - 0.683) <= 0.05 for c in res["calibration"]],
        "calibration_2sigma": [abs(c["insitu"]["within_2sigma"] - 0.954) <= 0.03 for c in res["calibration"]],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieve.json").write_text(json.dumps(res, indent=1, default=_plain))
    _plot(res, RESULTS / "retrieve.png")
    _table(res)
    return res


def _fresh_cluster_run(workers: int, cube: Path, model: Path, out: Path, warm: Any = _warm) -> dict[str, float]:
    """One retrieval on a cluster of its own (no memory sampling), its workers warmed by ``warm``: its seconds and
    the summed first-task model load (s)."""
    from sftl_dask.cluster import get_client

    with get_client(n_workers=workers) as client:
        client.run(warm)
        s = _retrieve(cube, model, out, client=client)
    return {"seconds": s["seconds"], "load_s": s["load_s"]}


def _table(r: dict[str, Any]) -> None:
    ok = r["targets_met"]
    rows = [
        ("split-window / I/O floor", f"{r['ratio_split_window_to_floor']:.2f}",
         f"{r['split_window_s']:.1f} s / {r['floor_s']:.1f} s; target <= {FLOOR_TARGET}: "
         f"{'met' if ok['split_window_vs_floor'] else 'MISSED'}"),
        ("DNN Dask / best in-process", f"{r['ratio_dask_to_in_process']:.2f}",
         f"{r['dnn_dask_s']:.1f} s vs pool {r['dnn_pool_s']:.1f} s, loop {r['dnn_loop_s']:.1f} s; target >= "
         f"{DASK_TARGET}: {'met' if ok['dask_vs_in_process'] else 'MISSED'}"),
        ("DNN on Dask", f"{r['dnn_dask_mpx_s']:.2f} Mpx/s",
         f"prototype {PROTOTYPE_MPX_S} Mpx/s: {'met' if ok['dask_vs_prototype'] else 'MISSED'}"),
        ("scaling 1 -> 2 workers", f"{r['scaling']['speedup_median_of_pairs']:.2f}x",
         f"target >= {SCALING_TARGET}: {'met' if ok['scaling'] else 'MISSED'}; the bare DNN forward scales "
         f"{r['scaling']['machine_ceiling_bare_dnn_forward']['speedup']:.2f}x here"),
        ("peak worker RSS, N -> 4N steps", f"{100 * r['memory']['peak_growth']:+.1f} %",
         f"{r['memory']['n']['peak_rss_mb']:.0f} -> {r['memory']['4n']['peak_rss_mb']:.0f} MB; target +-20 %: "
         f"{'met' if ok['memory'] else 'MISSED'}"),
        ("half-cloudy / clear", f"{r['cloud']['ratio_median_of_pairs']:.2f}",
         f"target <= {CLOUD_TARGET}: {'met' if ok['half_cloudy'] else 'MISSED'}"),
    ]
    for c in r["calibration"]:
        i = c["insitu"]
        rows.append((f"uncertainty {c['direction']} ({c['target']}, n={i['n']})",
                     f"{100 * i['within_1sigma']:.0f} / {100 * i['within_2sigma']:.0f} %",
                     "within 1 / 2 sigma; goals 68 +- 5 / 95 +- 3 %" +
                     (f"; vs pixel truth {100 * c['pixel_truth']['within_1sigma']:.0f} / "
                      f"{100 * c['pixel_truth']['within_2sigma']:.0f} %" if "pixel_truth" in c else "")))
    w0 = max(len(a) for a, _, _ in rows)
    print(f"\nretrieve benchmark, {r['workers']} workers x 1 thread, {r['machine']['cpus']} CPUs, "
          f"{r['cube_pixels'] / 1e6:.1f} Mpx")
    for a, b, c in rows:
        print(f"  {a:<{w0}}  {b:>13}  {c}")
    print("  per core (compute only, produced px/s):")
    for p in r["per_core"]:
        extra = (f", |dLST| max {p['max_abs_diff_k']:.3f} K, rms {p['rms_diff_k']:.3f} K"
                 if "max_abs_diff_k" in p else "")
        print(f"    {p['model']:5s} {p['precision']}  {p['produced_px_per_s'] / 1e6:8.3f} Mpx/s{extra}")
    if not r["gpu"]["available"]:
        print(f"  GPU: none here; {r['gpu']['how']}")


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(17, 4))
    ax[0].bar(["I/O floor", "split-window"], [r["floor_s"], r["split_window_s"]], color=["#999999", "#3b75af"])
    ax[0].axhline(FLOOR_TARGET * r["floor_s"], color="r", ls="--", lw=1, label=f"{FLOOR_TARGET}x floor")
    ax[0].set_ylabel(f"wall time (s), {r['cube_pixels'] / 1e6:.1f} Mpx")
    ax[0].set_title(f"split-window / floor {r['ratio_split_window_to_floor']:.2f}")
    ax[0].legend(fontsize=8)
    labels = ["Dask 2x1", "pool of 2", "loop, 2 torch\nthreads"]
    vals = [r["cube_pixels"] / r[k] / 1e6 for k in ("dnn_dask_s", "dnn_pool_s", "dnn_loop_s")]
    ax[1].bar(labels, vals, color=["#3b75af", "#999999", "#999999"])
    ax[1].axhline(PROTOTYPE_MPX_S, color="r", ls="--", lw=1, label="prototype 3.96 Mpx/s")
    ax[1].set_ylabel("DNN retrieval (Mpx/s of cube)")
    ax[1].set_title(f"Dask / in-process {r['ratio_dask_to_in_process']:.2f}")
    ax[1].legend(fontsize=8)
    pc = r["per_core"]
    names = [f"{p['model']}\n{p['precision']}" for p in pc]
    ax[2].bar(names, [p["produced_px_per_s"] / 1e6 for p in pc],
              color=["#d9730d" if p["precision"] == "bf16" else "#3b75af" for p in pc])
    ax[2].set_yscale("log")
    ax[2].set_ylabel("Mpx/s per core (produced pixels)")
    ax[2].set_title("compute per core")
    ax[2].tick_params(axis="x", labelsize=7)
    cal = r["calibration"]
    x = np.arange(len(cal))
    ax[3].bar(x - 0.2, [100 * c["insitu"]["within_1sigma"] for c in cal], 0.4, label="within 1 sigma")
    ax[3].bar(x + 0.2, [100 * c["insitu"]["within_2sigma"] for c in cal], 0.4, label="within 2 sigma")
    ax[3].axhspan(63.3, 73.3, color="#3b75af", alpha=0.15)
    ax[3].axhspan(92.4, 98.4, color="#d9730d", alpha=0.15)
    ax[3].set_xticks(x, [f"{c['direction']}\n({c['target']})" for c in cal])
    ax[3].set_ylabel("% of in situ residuals")
    ax[3].set_title("uncertainty calibration (goal bands)")
    ax[3].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
