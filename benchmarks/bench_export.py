"""Benchmark: ``sftl export`` of the testbed's LST cube to COGs against retrieving that cube.

Measures, in one run on one Dask cluster (2 workers x 1 thread by default), on the 40-scene testbed's scene cube
(``sftl testbed`` defaults: 20 scenes per region, 640 x 640 px) and a model artifact:

* retrieval of the whole cube (:func:`sftl_dask.retrieve.retrieve`) and the COG export of the LST it wrote
  (:func:`sftl_dask.io.export.export_cogs`: ``lst``, ``lst_uncertainty``, ``qc`` per scene and tile, one task
  per COG, STAC catalog included), alternated ``--repeat`` times; the medians count.
  Target: export / retrieve <= 1.5;
* an incremental re-run of the export (every COG kept) and the COGs' size on disk;
* ``rio cogeo validate`` of every COG written.

Inputs: ``--cube`` and ``--model`` (e.g. ``sftl testbed`` + ``sftl ingest`` + ``sftl train``), or else the
testbed, cube and DNN that ``benchmarks.bench_retrieve`` makes in its work folder (``sftl train`` of
``pipelines/huailai_to_heihe.yaml``, made here if missing). Writes ``benchmarks/results/export.json`` and
``export.png``.

Usage: python -m benchmarks.bench_export [--cube C] [--model M] [--work DIR] [--workers 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.5


def _inputs(args: argparse.Namespace) -> tuple[Path, Path]:
    """The scene cube and model: given, or bench_retrieve's (trained here when missing)."""
    if args.cube and args.model:
        return Path(args.cube), Path(args.model)
    train = Path("/tmp/sftl-bench-retrieve") / "huailai_to_heihe"
    if not (train / "model" / "card.json").is_file():
        train.parent.mkdir(parents=True, exist_ok=True)
        with open(train.parent / "train_huailai_to_heihe.log", "w") as fh:
            subprocess.run([sys.executable, "-m", "sftl_dask.cli", "train", "--config",
                            str(ROOT / "pipelines" / "huailai_to_heihe.yaml"), "--out", str(train), "--overwrite"],
                           check=True, stdout=fh, stderr=subprocess.STDOUT)
    return train / "work" / "cube", train / "model"


def _validate_cogs(folder: Path) -> tuple[int, list[str]]:
    from rio_cogeo.cogeo import cog_validate

    cogs = sorted(folder.rglob("*.tif"))
    bad = [p.name for p in cogs if not cog_validate(str(p))[0]]
    return len(cogs), bad


def _round(cube: Path, model: Path, work: Path, client: Any) -> dict[str, float]:
    """One retrieval of the whole cube and one export of its LST (fresh outputs), timed."""
    from sftl_dask.io.export import export_cogs
    from sftl_dask.retrieve import retrieve

    lst, cog = work / "lst", work / "cog"
    for p in (lst, cog):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    r = retrieve(cube, model, lst, client=client)
    t1 = time.perf_counter()
    e = export_cogs(lst, cog, client=client)
    t2 = time.perf_counter()
    if e["failed"]:
        raise RuntimeError(f"export failed: {e['failed'][:2]}")
    return {"retrieve_s": t1 - t0, "export_s": t2 - t1, "time_steps": float(r["retrieved"]),
            "pixels": float(r["pixels"]), "cogs": float(e["written"]), "items": float(e["items"])}


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    names = ["retrieve", "export (COG + STAC)", "export re-run"]
    vals = [res["retrieve_s"], res["export_s"], res["export_rerun_s"]]
    ax.barh(names, vals, color=["#4c72b0", "#dd8452", "#55a868"])
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.1f} s", va="center")
    ax.set_xlabel("wall time (s), median of repeats")
    ax.set_title(f"export / retrieve = {res['export_over_retrieve']:.2f} (target <= {TARGET})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cube", default=None, help="scene-cube root (default: bench_retrieve's testbed cube)")
    ap.add_argument("--model", default=None, help="model artifact or split-window JSON (default: its DNN)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sftl-bench-export"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3, help="alternated rounds; medians count")
    args = ap.parse_args(argv)
    from sftl_dask.cluster import get_client
    from sftl_dask.io.export import export_cogs

    cube, model = _inputs(args)
    args.work.mkdir(parents=True, exist_ok=True)
    rounds = []
    with get_client(n_workers=args.workers) as client:
        for r in range(args.repeat):
            rounds.append(_round(cube, model, args.work, client))
            print(f"  round {r + 1}: retrieve {rounds[-1]['retrieve_s']:.1f} s, export {rounds[-1]['export_s']:.1f} s "
                  f"({rounds[-1]['cogs']:.0f} COGs)", flush=True)
        t0 = time.perf_counter()
        again = export_cogs(args.work / "lst", args.work / "cog", client=client)
        rerun = time.perf_counter() - t0
    n_cogs, bad = _validate_cogs(args.work / "cog")
    size = sum(p.stat().st_size for p in (args.work / "cog").rglob("*.tif"))
    med = {k: statistics.median(r[k] for r in rounds) for k in ("retrieve_s", "export_s")}
    res = {"benchmark": "export", "cube": str(cube), "model": str(model), "workers": args.workers,
           "threads_per_worker": 1, "repeat": args.repeat, "rounds": rounds, **med,
           "export_over_retrieve": med["export_s"] / med["retrieve_s"], "target": TARGET,
           "export_rerun_s": rerun, "rerun_kept": again["kept"], "rerun_written": again["written"],
           "cogs": n_cogs, "cogs_invalid": bad, "cog_bytes": size, "time_steps": rounds[-1]["time_steps"],
           "items": rounds[-1]["items"], "pixels": rounds[-1]["pixels"],
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node(),
                       "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(res, indent=1, default=str))
    _plot(res, RESULTS / "export.png")
    print(f"export / retrieve = {res['export_over_retrieve']:.2f} (target <= {TARGET}); {n_cogs} COGs "
          f"({size / 1e6:.0f} MB), {len(bad)} invalid; re-run {rerun:.1f} s ({again['kept']} kept)")
    return res


if __name__ == "__main__":
    main()
