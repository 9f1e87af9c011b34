"""Benchmark: the testbed at its default size, and how hard it is.

In one run: wall time of ``sftl testbed`` (target <= 120 s on 2 cores), then ``sftl ingest``,
the matchups, and the split-window (fitted on ``sftl simulate``) against the radiometers per
region: the figure the testbed is sized for (paper: 3.67 K Huailai, 4.22 K Heihe; accepted 3-5 K).
Also the error budget decomposed against the truth at the site pixels.

Writes ``benchmarks/results/testbed.json`` and ``testbed.png``.

Usage: python -m benchmarks.bench_testbed [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"


def _sftl(*args: str) -> float:
    exe = Path(sys.executable).with_name("sftl")
    t0 = time.perf_counter()
    subprocess.run([str(exe) if exe.exists() else "sftl", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _stats(e: np.ndarray) -> dict[str, float]:
    return {"n": int(e.size), "rmse_k": round(float(np.sqrt(np.mean(e**2))), 3),
            "bias_k": round(float(np.mean(e)), 3), "std_k": round(float(np.std(e)), 3)}


def main(argv: list[str] | None = None) -> dict:
    import xarray as xr
    from pyproj import Transformer

    from sftl_dask.matchups import build_matchups
    from sftl_dask.physics.splitwindow import SplitWindowCoefficients, apply_split_window

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--keep", default=None)
    ap.add_argument("--layout", choices=("delivered", "map"), default="delivered",
                    help="the testbed's layout (default: delivered, ingested with its DEM)")
    args = ap.parse_args(argv)
    work = Path(args.keep or tempfile.mkdtemp(prefix="sftl-bench-tb-"))
    tb, cube, sim = work / "tb", work / "cube", work / "sim.parquet"
    for p in (tb, cube, sim):
        shutil.rmtree(p, ignore_errors=True)
    w = ["--workers", str(args.workers)]
    t_tb = _sftl("testbed", "--out", str(tb), "--seed", str(args.seed), "--layout", args.layout, *w)
    dem = ["--dem", str(tb / "dem")] if (tb / "dem").is_dir() else []
    t_ing = _sftl("ingest", str(tb / "archives"), "--cube", str(cube), "--era5", *map(str, sorted(tb.glob("era5/*"))),
                  "--ged", str(tb / "ged"), *dem, *w)
    _sftl("simulate", "--out", str(sim), *w)
    _sftl("fit-sw", "--sim", str(sim), "--out", str(work / "sw.json"))
    t0 = time.perf_counter()
    m = build_matchups(cube, tb / "insitu", tb / "sites.csv")
    t_mu = time.perf_counter() - t0
    ok = m[m["reason"] == "ok"].copy()
    sw = SplitWindowCoefficients.from_dict(json.loads((work / "sw.json").read_text()))

    def sw_lst(frame: pd.DataFrame) -> np.ndarray:
        return apply_split_window(sw, frame["bt_10_80"].to_numpy(), frame["bt_11_95"].to_numpy(),
                                  frame["emis_10_80"].to_numpy(), frame["emis_11_95"].to_numpy(),
                                  frame["wvc"].to_numpy(), frame["vza"].to_numpy())

    ok["lst_sw"] = sw_lst(ok)
    # the truth at the site pixels, for the error decomposition
    sites = pd.read_csv(tb / "sites.csv").set_index("id")
    truth = {r: xr.open_zarr(tb / "truth" / f"{r}.zarr") for r in ok["region"].unique()}
    rows = []
    for _, r in ok.iterrows():
        t = truth[r["region"]]
        epsg = json.loads((tb / "testbed.json").read_text())["regions"][r["region"]]["epsg"]
        x, y = Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(
            sites.loc[r["site"], "lon"], sites.loc[r["site"], "lat"])
        p = t.sel(time=r["time_utc"], method="nearest").sel(x=x, y=y, method="nearest")
        rows.append({k: float(p[k].values) for k in ("lst", "bt_10_80", "bt_11_95", "emis_10_80", "emis_11_95",
                                                      "wvc", "vza")})
    tru = pd.DataFrame(rows, index=ok.index)
    lst_truth_inputs = sw_lst(tru)
    regions = {}
    for reg in sorted(ok["region"].unique()):
        s = (ok["region"] == reg).to_numpy()
        regions[reg] = {
            "split_window_vs_insitu": _stats(ok["lst_sw"].to_numpy()[s] - ok["lst_insitu"].to_numpy()[s]),
            "split_window_vs_pixel_truth": _stats(ok["lst_sw"].to_numpy()[s] - tru["lst"].to_numpy()[s]),
            "split_window_on_true_ancillary_vs_truth": _stats(lst_truth_inputs[s] - tru["lst"].to_numpy()[s]),
            "insitu_vs_pixel_truth": _stats(ok["lst_insitu"].to_numpy()[s] - tru["lst"].to_numpy()[s]),
        }
    result = {
        "benchmark": "testbed", "workers": args.workers, "seed": args.seed, "layout": args.layout,
        "testbed_wall_s": round(t_tb, 1), "testbed_target_s": 120, "ingest_wall_s": round(t_ing, 1),
        "matchups_wall_s": round(t_mu, 1), "archives": len([p for p in tb.glob("archives/*") if ".tar" in p.name]),
        "matchups": m.groupby(["region", "reason"]).size().rename("n").reset_index().to_dict("records"),
        "regions": regions, "paper_split_window_k": {"huailai": 3.67, "heihe": 4.22},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "testbed.json").write_text(json.dumps(result, indent=1, default=str))
    _plot(ok, tru, RESULTS / "testbed.png")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "matchups"}, indent=1))
    return result


def _plot(ok: pd.DataFrame, tru: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regs = sorted(ok["region"].unique())
    fig, ax = plt.subplots(1, len(regs), figsize=(5.2 * len(regs), 4.6))
    for a, reg in zip(np.atleast_1d(ax), regs, strict=True):
        s = ok["region"] == reg
        e = ok.loc[s, "lst_sw"] - ok.loc[s, "lst_insitu"]
        a.scatter(ok.loc[s, "lst_insitu"], ok.loc[s, "lst_sw"], s=10, alpha=0.6, label="split-window vs in situ")
        lim = [float(ok["lst_insitu"].min()) - 2, float(ok["lst_insitu"].max()) + 2]
        a.plot(lim, lim, "k--", lw=0.8)
        a.set_xlabel("in situ LST (K)")
        a.set_ylabel("split-window LST (K)")
        a.set_title(f"{reg}: RMSE {np.sqrt(np.mean(e**2)):.2f} K, bias {e.mean():+.2f} K, n={int(s.sum())}")
    fig.suptitle("testbed difficulty: split-window fitted on the simulation, applied to the archives")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
