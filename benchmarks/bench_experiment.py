"""Benchmark: the learning engine — the full default grid, its scaling with workers, and stage-1 targets.

Measures, in one run on this machine:
* ``sftl experiment --config pipelines/experiment.yaml`` end to end on ``--workers`` (default 2):
  wall time (target <= 60 min on 2 cores), cells and failures, per-model pre-training time and
  held-out simulated RMSE (DNN <= 5 min; DNN and TrF <= 0.5 K and below the split-window), and
  the cross-site ratios best-SFTL / split-window per direction;
* scaling: a reduced grid (``benchmarks/grid_scaling.yaml``) on 1 and on 2 workers, on the same prepared
  data, and the speed-up;
* data-parallel pre-training (torch.distributed over Dask workers): the DNN on 1 and 2 workers.

Writes ``benchmarks/results/experiment.json`` and copies the grid's ``summary.md`` and figures to
``benchmarks/results/experiment/``.

Usage: python -m benchmarks.bench_experiment [--workers 2] [--work DIR] [--skip-full] [--skip-scaling]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def _sftl() -> str:
    exe = Path(sys.executable).with_name("sftl")
    return str(exe) if exe.exists() else "sftl"


def _grid(config: Path, out: Path, workers: int, work: Path) -> tuple[float, pd.DataFrame]:
    """Run ``sftl experiment`` with the data under ``work`` (made once, then reused); return (wall s, table)."""
    import yaml

    raw = yaml.safe_load(config.read_text())
    raw["data"] = {"testbed": {"path": str(work / "testbed")}, "simulation": {"path": str(work / "sim.parquet")}}
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / config.name
    cfg.write_text(yaml.safe_dump(raw))
    if (out / "work").exists():
        shutil.rmtree(out / "work")
    (out / "work").mkdir()
    for f in ("sw.json", "matchups.parquet"):
        if (work / f).exists():
            shutil.copy(work / f, out / "work" / f)
    t0 = time.perf_counter()
    subprocess.run([_sftl(), "experiment", "--config", str(cfg), "--out", str(out), "--workers", str(workers)],
                   check=True)
    return time.perf_counter() - t0, pd.read_parquet(out / "results.parquet")


def _prepare(work: Path, workers: int) -> float:
    """Simulation, testbed, ingest and matchups once (``sftl train``'s preparation), reused by every grid."""
    from sftl_dask.cluster import get_client
    from sftl_dask.pipelines.data import prepare_data
    from sftl_dask.training.stages import load_config

    t0 = time.perf_counter()
    cfg = load_config(ROOT / "pipelines" / "experiment.yaml")
    with get_client(n_workers=workers) as client:
        prepare_data(cfg, work, client=client)
    return time.perf_counter() - t0


def _ddp(work: Path, epochs: int) -> list[dict]:
    """DNN pre-training data-parallel on 1 and 2 workers (torch.distributed, gloo)."""
    import numpy as np

    from sftl_dask.cluster import get_client
    from sftl_dask.features import feature_matrix
    from sftl_dask.metrics import metrics
    from sftl_dask.models.trainer import predict_torch
    from sftl_dask.pipelines.data import read_simulation_table
    from sftl_dask.training.distributed import DistributedSettings, pretrain_distributed

    table = read_simulation_table(work / "sim.parquet")
    prof = np.unique(table["profile_id"])
    held = np.random.default_rng(0).choice(prof, size=int(0.1 * prof.size), replace=False)
    is_held = np.isin(table["profile_id"], held)
    x_te = feature_matrix({k: v[is_held] for k, v in table.items()})
    y_te = np.asarray(table["lst"][is_held])
    rows = []
    for n in (1, 2):
        with get_client(n_workers=n) as client:
            t0 = time.perf_counter()
            settings = DistributedSettings("dnn", model_params={"hidden": [128, 64, 32]}, epochs=epochs,
                                           batch_size=8192, lr=0.003, holdout_profiles=sorted(held.tolist()))
            model, hist = pretrain_distributed(settings, work / "sim.parquet", client=client)
            wall = time.perf_counter() - t0
        rows.append({"workers": n, "epochs": epochs, "wall_s": round(wall, 1),
                     "holdout_rmse_k": round(metrics(predict_torch(model, x_te), y_te)["rmse_k"], 3),
                     "backend": hist.get("backend")})
        print(f"DDP dnn on {n} worker(s): {wall:.0f} s, held-out {rows[-1]['holdout_rmse_k']} K", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--work", default=None, help="prepared data (reused when present)")
    ap.add_argument("--skip-full", action="store_true")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-ddp", action="store_true")
    ap.add_argument("--ddp-epochs", type=int, default=10)
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="sftl-bench-exp-"))
    prev = json.loads((RESULTS / "experiment.json").read_text()) if (RESULTS / "experiment.json").exists() else {}
    res: dict = {**prev, "benchmark": "experiment", "machine": platform.platform(), "cores": _cores(),
                 "workers": args.workers}
    res["prepare_s"] = round(_prepare(work, args.workers), 1)
    if not args.skip_full:
        out = work / "full"
        wall, table = _grid(ROOT / "pipelines" / "experiment.yaml", out, args.workers, work)
        ok = table[table["error"] == ""]
        full = ok[ok["features"] == "all"]
        pre = full.drop_duplicates(["model", "seed"]).groupby("model").agg(
            pretrain_s=("pretrain_s", "mean"), sim_rmse_k=("sim_rmse_k", "mean"),
            sim_sw_rmse_k=("sim_sw_rmse_k", "mean"))
        from sftl_dask.report import select_on_source, select_oracle

        best = {}
        for direction, sub in full.groupby("direction"):
            g = sub.groupby(["model", "strategy"])[["cross_site_rmse_k", "in_domain_rmse_k"]].mean().reset_index()
            sel, orc = select_on_source(g), select_oracle(g)  # chosen on source rows only / on the target
            sw = float(sub["cross_site_sw_rmse_k"].mean())
            per_model = sub.groupby("model")[["direct_cv_rmse_k", "cross_site_direct_rmse_k"]].mean()
            direct = float(per_model.loc[per_model["direct_cv_rmse_k"].idxmin(), "cross_site_direct_rmse_k"])
            best[direction] = {"config": f"{sel['model']}+{sel['strategy']}", "selected_on": "source held-out scenes",
                               "rmse_k": round(float(sel["cross_site_rmse_k"]), 3),
                               "ratio": round(float(sel["cross_site_rmse_k"]) / sw, 3),
                               "oracle_config": f"{orc['model']}+{orc['strategy']}",
                               "oracle_rmse_k": round(float(orc["cross_site_rmse_k"]), 3),
                               "oracle_ratio": round(float(orc["cross_site_rmse_k"]) / sw, 3),
                               "split_window_k": round(sw, 3), "tuned_direct_k": round(direct, 3)}
            if "truth_radiometer_rmse_k" in sub:
                best[direction]["radiometer_floor_k"] = round(float(sub["truth_radiometer_rmse_k"].mean()), 3)
        res["full_grid"] = {"config": "pipelines/experiment.yaml", "wall_s": round(wall, 1), "target_s": 3600,
                            "cells": len(table), "failed": int((table["error"] != "").sum()),
                            "pretrain": {m: {k: round(float(v), 3) for k, v in r.items()} for m, r in pre.iterrows()},
                            "cross_site_best": best}
        dest = RESULTS / "experiment"
        dest.mkdir(parents=True, exist_ok=True)
        for f in ("summary.md", "grid.png", "scatter.png", "fewshot.png", "results.parquet"):
            if (out / f).exists():
                shutil.copy(out / f, dest / f)
        print(f"full grid: {len(table)} cells in {wall / 60:.1f} min", flush=True)
    if not args.skip_scaling:
        walls = {}
        for n in (1, 2):
            walls[n], _ = _grid(Path(__file__).parent / "grid_scaling.yaml", work / f"scaling{n}", n, work)
            print(f"scaling grid on {n} worker(s): {walls[n]:.0f} s", flush=True)
        res["scaling"] = {"config": "benchmarks/grid_scaling.yaml", "wall_s_1_worker": round(walls[1], 1),
                          "wall_s_2_workers": round(walls[2], 1), "speedup": round(walls[1] / walls[2], 2)}
    if not args.skip_ddp:
        res["ddp_pretrain"] = _ddp(work, args.ddp_epochs)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "experiment.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return res


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
