"""Benchmark: archive throughput where scenes straddle tiles, and the archive pipeline's steps against retrieval.

Measures, in one run:

* (a) real-sized scenes: the testbed at 1500 px (``sftl testbed --size 1500``, delivered products in sensor geometry)
  ingested onto the default 1024 px tiles (chunks of 512 px), then retrieved (split-window) twice over: with the
  chunk-coverage index (one task per (tile step, chunk) holding data) and without it (the same cube with the index
  removed, as stores written before it: every chunk of every tile step). Reports tasks, seconds, the outputs'
  equality (bit for bit), alternated ``--repeat`` times, best of each;
* (b) ``sftl archive`` (``pipelines/archive.yaml``'s testbed: 2 x ``--archive-scenes`` scenes of 640 px on 512 px
  tiles, half of them shifted across tile edges) run twice: first without the deliveries of the last month, then
  with them. From ``archive.json``: retrieve, validate and composites seconds of the first run (targets:
  composites <= 0.5 x retrieve, validation <= 0.5 x retrieve), and the second run's composites: computed months
  (target: only the new month's, one per tile it touches) against reused ones. Then the whole archive's retrieval,
  composites and validation again (the pipeline's own steps, as its default configuration runs them: no zone
  mosaics), alternated ``--repeat`` times on one cluster, best of each: the composites / retrieval and validation /
  retrieval ratios reported, the first run's beside them.

Writes ``benchmarks/results/archive.json`` and ``archive.png``.

Usage: python -m benchmarks.bench_archive [--work DIR] [--size 1500] [--scenes 2] [--archive-scenes 80]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
COMPOSITES_TARGET = 0.5
VALIDATE_TARGET = 0.5


# --------------------------------------------------------------------------------------------- (a)
def _sw_model(work: Path) -> Path:
    """Split-window coefficients fitted on a 120-profile simulation (made once in ``work``)."""
    from sftl_dask.cli import main

    sw = work / "sw.json"
    if not sw.exists():
        assert main(["simulate", "--profiles", "120", "--seed", "0", "--out", str(work / "sim.parquet"),
                     "--overwrite"]) == 0
        assert main(["fit-sw", "--sim", str(work / "sim.parquet"), "--out", str(sw)]) == 0
    return sw


def _real_size_cube(work: Path, size: int, scenes: int) -> Path:
    """The testbed at ``size`` px ingested onto 1024 px tiles (made once in ``work``)."""
    from sftl_dask.cli import main

    tb, cube = work / f"tb{size}", work / f"cube{size}"
    if not (tb / "sites.csv").exists():
        assert main(["testbed", "--out", str(tb), "--scenes", str(scenes), "--size", str(size), "--seed", "4",
                     "--overwrite"]) == 0
    if not cube.exists():
        assert main(["ingest", str(tb / "archives"), "--cube", str(cube), "--era5",
                     *sorted(str(p) for p in (tb / "era5").glob("*.nc")), "--ged", str(tb / "ged"),
                     "--dem", str(tb / "dem")]) == 0
    return cube


def _without_index(cube: Path, out: Path) -> Path:
    import zarr

    from sftl_dask.io.cube import COVERAGE_VAR
    from sftl_dask.io.stores import cube_stores

    if not out.exists():
        shutil.copytree(cube, out)
        for store in cube_stores(out).values():
            shutil.rmtree(Path(store) / COVERAGE_VAR)
            zarr.consolidate_metadata(str(store))
    return out


def _same_lst(a: Path, b: Path) -> bool:
    from sftl_dask.io.lst import LST_VARIABLES, lst_stores
    from sftl_dask.io.stores import open_store

    for name, store in lst_stores(a).items():
        x, y = open_store(store), open_store(lst_stores(b)[name])
        y = y.sel(time=x["time"])
        for v in LST_VARIABLES:
            if not np.array_equal(x[v].values, y[v].values, equal_nan=True):
                return False
    return True


def real_size(client: Any, work: Path, size: int, scenes: int, repeat: int) -> dict[str, Any]:
    """(a): retrieval of real-sized scenes with the index against without it."""
    from sftl_dask.io.cube import read_coverage, read_slots
    from sftl_dask.io.stores import cube_stores
    from sftl_dask.retrieve import retrieve

    model = _sw_model(work)
    cube = _real_size_cube(work, size, scenes)
    plain = _without_index(cube, work / f"cube{size}_noindex")
    steps = chunks = held = 0
    for store in cube_stores(cube).values():
        index = read_coverage(store)
        for s in read_slots(store)[1]:
            if index is not None and (index[s["index"]] > 0).any():
                steps += 1
                chunks += index[s["index"]].size
                held += int((index[s["index"]] > 0).sum())
    runs: dict[str, list[dict[str, Any]]] = {"index": [], "no_index": []}
    for _ in range(repeat):
        for label, src in (("index", cube), ("no_index", plain)):
            out = work / f"lst_{label}"
            shutil.rmtree(out, ignore_errors=True)
            s = retrieve(src, model, out, client=client)
            runs[label].append({"seconds": round(s["seconds"], 2), "tasks": s["chunks"], "retrieved": s["retrieved"]})
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    return {"size_px": size, "scenes": 2 * scenes, "tile_px": 1024, "chunk_px": 512, "tile_steps": steps,
            "chunks_of_tile_steps": chunks, "chunks_holding_data": held,
            "share_of_chunks_without_data": round(1 - held / chunks, 3) if chunks else None,
            "runs": runs, "index_s": best["index"]["seconds"], "no_index_s": best["no_index"]["seconds"],
            "tasks_index": best["index"]["tasks"], "tasks_no_index": best["no_index"]["tasks"],
            "ratio_index_to_no_index": round(best["index"]["seconds"] / best["no_index"]["seconds"], 3),
            "lst_equal": _same_lst(work / "lst_index", work / "lst_no_index")}


# --------------------------------------------------------------------------------------------- (b)
def _archive_config(work: Path, archives: Path, tb: Path) -> Path:
    """``pipelines/archive.yaml`` with its data section pointed at ``archives`` and the testbed's other inputs."""
    cfg = yaml.safe_load((ROOT / "pipelines" / "archive.yaml").read_text())
    cfg["data"] = {"archives": [str(archives)], "era5": str(tb / "era5" / "*.nc"), "ged": str(tb / "ged"),
                   "insitu": str(tb / "insitu"), "sites": str(tb / "sites.csv"), "dem": str(tb / "dem")}
    path = work / f"archive_{archives.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def archive(work: Path, scenes: int, workers: int, repeat: int) -> dict[str, Any]:
    """(b): ``sftl archive`` without the last month's deliveries, then with them."""
    from sftl_dask.cli import main
    from sftl_dask.io.vimi import VimiProduct

    tb = work / "archive_tb"
    if not (tb / "sites.csv").exists():  # the archive pipeline's own testbed, built by the CLI the config names
        t = yaml.safe_load((ROOT / "pipelines" / "archive.yaml").read_text())["data"]["testbed"]
        assert main(["testbed", "--out", str(tb), "--scenes", str(scenes), "--size", str(t["size"]),
                     "--seed", str(t["seed"]), "--shifted", str(t["shifted"]), "--max-shift", str(t["max_shift"]),
                     "--overwrite"]) == 0
    products = sorted(p for p in (tb / "archives").iterdir() if not p.name.startswith("."))
    months = {p: str(np.datetime64(VimiProduct(p).time, "M")) for p in products}
    last = max(months.values())
    first = work / "first_archives"
    shutil.rmtree(first, ignore_errors=True)
    first.mkdir()
    for p in products:
        if months[p] != last:
            (first / p.name).symlink_to(p)
    out = work / "archive_out"
    shutil.rmtree(out, ignore_errors=True)
    runs = []
    for label, src in (("without the last month", first), ("with it", tb / "archives")):
        t0 = time.perf_counter()
        rc = main(["archive", "--config", str(_archive_config(work, src, tb)), "--out", str(out),
                   "--workers", str(workers)])
        runs.append({"run": label, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1),
                     "archive": json.loads((out / "archive.json").read_text())})
    one, two = ({s["step"]: s for s in r["archive"]["steps"]} for r in runs)
    sec = {k: float(one[k]["seconds"]) for k in ("ingest", "retrieve", "validate", "composites")}
    timed = _alternated(out, work, workers, repeat)
    return {"scenes": 2 * scenes, "last_month": last, "new_deliveries": sum(m == last for m in months.values()),
            "first_run_s": sec, "runs": runs, "alternated": timed,
            "ratio_composites_to_retrieve": round(timed["composites_s"] / timed["retrieve_s"], 3),
            "ratio_composites_to_retrieve_first_run": round(sec["composites"] / sec["retrieve"], 3),
            "ratio_validate_to_retrieve": round(timed["validate_s"] / timed["retrieve_s"], 3),
            "ratio_validate_to_retrieve_first_run": round(sec["validate"] / sec["retrieve"], 3),
            "composites_target": COMPOSITES_TARGET, "validate_target": VALIDATE_TARGET,
            "second_run_composites": {k: two["composites"].get(k) for k in ("seconds", "months_computed",
                                                                               "months_reused", "tasks")}}


def _alternated(out: Path, work: Path, workers: int, repeat: int) -> dict[str, Any]:
    """The whole archive's retrieval, composites and validation (the archive's own steps, into fresh folders),
    alternated ``repeat`` times on one cluster: best of each, so that the ratios hold on a busy machine."""
    from sftl_dask.cluster import get_client
    from sftl_dask.pipelines.steps import composites_step, lst_key
    from sftl_dask.retrieve import retrieve
    from sftl_dask.validate import validate

    model = out / "work" / "split_window.json"
    tb = work / "archive_tb"
    runs: dict[str, list[float]] = {"retrieve": [], "composites": [], "validate": []}
    with get_client(n_workers=workers) as client:
        for _ in range(repeat):
            lst = work / "alt_lst"
            shutil.rmtree(lst, ignore_errors=True)
            t0 = time.perf_counter()
            retrieve(out / "cube", model, lst, client=client)
            runs["retrieve"].append(round(time.perf_counter() - t0, 2))
            comp = work / "alt_composites"
            shutil.rmtree(comp, ignore_errors=True)
            t0 = time.perf_counter()
            _, counts = composites_step(lst, comp, lst_key({"model": model}, lst), {}, client=client, mosaics=False)
            runs["composites"].append(round(time.perf_counter() - t0, 2))
            t0 = time.perf_counter()
            validate(lst, tb / "insitu", tb / "sites.csv", work / "alt_validation", client=client, overwrite=True)
            runs["validate"].append(round(time.perf_counter() - t0, 2))
    return {"runs_s": runs, "retrieve_s": min(runs["retrieve"]), "composites_s": min(runs["composites"]),
            "validate_s": min(runs["validate"]),
            "composites_tasks": counts["tasks"], "months": counts["months_computed"],
            "load_avg": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sftl-bench-archive"))
    ap.add_argument("--size", type=int, default=1500)
    ap.add_argument("--scenes", type=int, default=2, help="(a): scenes per region of the real-sized testbed")
    ap.add_argument("--archive-scenes", type=int, default=80, help="(b): scenes per region of the archive")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip", choices=("real-size", "archive", "archive-runs"), action="append", default=[],
                    help="archive-runs: keep the last result's two archive runs, re-time only the alternated "
                         "retrieval and composites of the archive already under --work")
    args = ap.parse_args(argv)
    from sftl_dask.cluster import get_client

    args.work.mkdir(parents=True, exist_ok=True)
    previous = json.loads((RESULTS / "archive.json").read_text()) if (RESULTS / "archive.json").exists() else {}
    result: dict[str, Any] = {"benchmark": "archive", "workers": args.workers,
                              "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    if "real-size" not in args.skip:
        with get_client(n_workers=args.workers) as client:
            result["real_size"] = real_size(client, args.work, args.size, args.scenes, args.repeat)
    elif "real_size" in previous:
        result["real_size"] = previous["real_size"]
    if "archive-runs" in args.skip and "archive" in previous:  # the archive under --work re-timed alone
        timed = _alternated(args.work / "archive_out", args.work, args.workers, args.repeat)
        result["archive"] = {**previous["archive"], "alternated": timed,
                             "ratio_composites_to_retrieve": round(timed["composites_s"] / timed["retrieve_s"], 3),
                             "ratio_validate_to_retrieve": round(timed["validate_s"] / timed["retrieve_s"], 3)}
        first = result["archive"]["first_run_s"]
        result["archive"]["ratio_validate_to_retrieve_first_run"] = round(first["validate"] / first["retrieve"], 3)
    elif "archive" not in args.skip:
        result["archive"] = archive(args.work, args.archive_scenes, args.workers, args.repeat)
    elif "archive" in previous:
        result["archive"] = previous["archive"]
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "archive.json").write_text(json.dumps(result, indent=1, default=str))
    _plot(result, RESULTS / "archive.png")
    print(json.dumps({k: v for k, v in result.items() if k != "archive"}, indent=1, default=str))
    return result


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if "real_size" in r:
        a = r["real_size"]
        axes[0].bar(["with index", "without"], [a["index_s"], a["no_index_s"]], color=["tab:green", "tab:grey"])
        axes[0].set_ylabel("retrieval (s)")
        axes[0].set_title(f"{a['size_px']} px scenes on 1024 px tiles: {a['tasks_index']} vs "
                          f"{a['tasks_no_index']} tasks", fontsize=9)
    if "archive" in r:
        s = r["archive"]["first_run_s"]
        axes[1].bar(list(s), list(s.values()), color="tab:blue")
        axes[1].axhline(s["retrieve"] * COMPOSITES_TARGET, color="k", ls="--", lw=1, label="0.5 x retrieve")
        axes[1].set_ylabel("seconds")
        axes[1].set_title(f"sftl archive, {r['archive']['scenes']} scenes: steps", fontsize=9)
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
