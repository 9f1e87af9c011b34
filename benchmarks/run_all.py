"""Run every benchmark in turn (``make bench``): quick sizes by default, ``--full`` for the long ones.

Quick runs write into ``benchmarks/results/quick/`` (so the committed figures of the full runs stay), full
runs into ``benchmarks/results/``. Every JSON gets the machine's description (``machine``: CPUs, load, Python,
torch, Dask, GPU) and each benchmark's wall time; the table of latest figures in ``benchmarks/README.md`` is
rewritten from the full runs' JSON (``--table`` alone rewrites it without running anything).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: name -> (quick arguments, full arguments); each module's ``main(argv)`` writes ``<RESULTS>/<name>.json/.png``.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "simulate": ([], []),
    "testbed": ([], []),
    "ingest": (["--scenes", "3", "--repeat", "1"], []),
    "retrieve": (["--quick", "--repeat", "1"], []),
    "timeseries": (["--lengths", "10", "40", "--tiles", "64", "--repeat", "3", "--pixels", "3"], []),
    "experiment": (["--skip-full", "--skip-scaling", "--ddp-epochs", "3"], []),
    "export": (["--repeat", "1"], []),
    "archive": (["--size", "1024", "--archive-scenes", "12", "--repeat", "1"], []),
}


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import dask
    import torch

    info: dict[str, Any] = {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "dask": dask.__version__, "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                            "measured_utc": time.strftime("%Y-%m-%d", time.gmtime())}
    return info


def run(names: list[str], *, full: bool, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the named benchmarks; returns name -> ``{"seconds", "ok", "error"}``."""
    out = RESULTS if full else RESULTS / "quick"
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, Any] = {}
    for name in names:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        mod.RESULTS = out  # where this run's JSON and PNG go
        args = BENCHMARKS[name][1 if full else 0]
        log(f"== {name} {' '.join(args)} -> {out}")
        t0 = time.perf_counter()
        try:
            mod.main(args)
            ok, error = True, ""
        except Exception as exc:  # one benchmark failing does not stop the others; it is reported below
            traceback.print_exc()
            ok, error = False, f"{type(exc).__name__}: {exc}"
        seconds = round(time.perf_counter() - t0, 1)
        path = out / f"{name}.json"
        if ok and path.is_file():
            res = json.loads(path.read_text())
            res["machine"] = {**(res.get("machine") if isinstance(res.get("machine"), dict) else {}), **machine()}
            res["benchmark_wall_s"] = seconds
            res["mode"] = "full" if full else "quick"
            path.write_text(json.dumps(res, indent=1, default=str))
        done[name] = {"seconds": seconds, "ok": ok, "error": error}
        log(f"   {name}: {'ok' if ok else 'FAILED ' + error} in {seconds:.0f} s")
    return done


#: The table's rows: benchmark, figure, path into its JSON, format, target (``"<= key"`` reads it from the JSON).
TABLE: list[tuple[str, str, tuple[Any, ...], str, str]] = [
    ("simulate", "simulation table wall time (s)", ("simulate_wall_s",), ".0f", "<= simulate_target_s"),
    ("testbed", "testbed wall time (s)", ("testbed_wall_s",), ".0f", "<= testbed_target_s"),
    ("ingest", "ingest / baseline decode", ("ratio_ingest_to_baseline",), ".2f", "<= ratio_target"),
    ("ingest_memory", "peak worker RSS change, 4N vs N archives (N = 40)", ("peak_rss_growth_4n_vs_n",), "+.3f",
     "within +-0.1"),
    ("ingest_memory", "scene task time change, 4N vs N archives (N = 40)", ("scene_task_change_4n_vs_n",), "+.3f",
     "within +-0.15"),
    ("retrieve", "DNN on Dask / best in-process", ("ratio_dask_to_in_process",), ".2f", ">= dask_target"),
    ("retrieve", "DNN cube Mpx/s", ("dnn_dask_mpx_s",), ".2f", ">= prototype_mpx_s"),
    ("retrieve", "split-window / I/O floor", ("ratio_split_window_to_floor",), ".2f", "<= floor_target"),
    ("retrieve", "DNN scaling, 1 -> 2 workers (median of alternated pairs)", ("scaling", "speedup_median_of_pairs"),
     ".2f", ">= 1.7"),
    ("retrieve", "half-cloudy / clear cube, DNN (median of alternated pairs)", ("cloud", "ratio_median_of_pairs"),
     ".2f", "<= 0.6"),
    ("timeseries", "point series, copy vs original at 40 steps",
     ("by_steps", 40, "copies", "64", "ratio_xarray_read"), ".1f", ">= 20"),
    ("experiment", "grid wall time (s)", ("full_grid", "wall_s"), ".0f", ""),
    ("export", "COG export / retrieval of the LST cube", ("export_over_retrieve",), ".2f", "<= target"),
    ("retrieve", "DNN retrieve / bare baseline, throughput", ("bare", "ratio_throughput_retrieve_to_bare"), ".2f",
     ">= 0.8"),
    ("archive", "composites / retrieval, 160-scene archive", ("archive", "ratio_composites_to_retrieve"), ".2f",
     "<= 0.5"),
    ("archive", "validation / retrieval, 160-scene archive", ("archive", "ratio_validate_to_retrieve"), ".2f",
     "<= 0.5"),
    ("archive", "tile months recomputed when one month arrives",
     ("archive", "second_run_composites", "months_computed"), "d", "its months only"),
    ("archive", "share of chunks without data, 1500 px scenes on 1024 px tiles",
     ("real_size", "share_of_chunks_without_data"), ".3f", ""),
]


#: Commands of the rows whose figures come from a part run alone.
COMMANDS = {"ingest_memory": "python -m benchmarks.bench_ingest --memory-only --scenes 20"}


def _measured_on(d: dict[str, Any]) -> str:
    """The machine a result was measured on (CPUs, GPU, the day where recorded), from its JSON's ``machine``."""
    m = d.get("machine")
    if not isinstance(m, dict) or "cpus" not in m:
        return "-"
    parts = [f"{m['cpus']} CPUs", m.get("gpu") or "no GPU"]
    if m.get("measured_utc"):
        parts.append(str(m["measured_utc"]))
    return ", ".join(parts)


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        elif isinstance(d, list) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return None
    return d


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: Path = RESULTS) -> str:
    """The Markdown table of the latest full-run figures, one row per headline number."""
    def load(name: str) -> dict[str, Any]:
        p = results / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else {}

    data = {n: load(n) for n in BENCHMARKS}
    data["ingest_memory"] = load("bench_ingest_memory")  # part (c) alone at the archive sizes (--memory-only)
    data["timeseries"]["by_steps"] = {r.get("steps"): r for r in (data["timeseries"].get("rows") or [])
                                      if isinstance(r, dict)}
    rows = []
    for bench, figure, path, spec, target in TABLE:
        d = data[bench]
        goal = f"{target[:3]}{d.get(target[3:], '-')}" if target[3:].isidentifier() else target  # a JSON key
        command = COMMANDS.get(bench, f"python -m benchmarks.bench_{bench}")
        rows.append((bench.split("_")[0], figure, _fmt(_get(d, *path), spec), goal, _measured_on(d), command))
    lines = ["| benchmark | figure | latest | target | measured on | command |", "|---|---|---|---|---|---|"]
    lines += [f"| {b} | {f} | {v} | {t} | {m} | `{c}` |" for b, f, v, t, m, c in rows]
    return "\n".join(lines) + "\n"


def write_readme(results: Path = RESULTS) -> Path:
    """Rewrite the table between the markers of ``benchmarks/README.md``."""
    path = HERE / "README.md"
    text = path.read_text()
    start, end = "<!-- table:start -->\n", "<!-- table:end -->"
    a, b = text.index(start) + len(start), text.index(end)
    path.write_text(text[:a] + table(results) + text[b:])
    return path


def main(argv: list[str] | None = None) -> int:
    """``make bench``: every benchmark at quick sizes (``--full``: the full ones); exit 1 if one failed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME",
                    help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    ap.add_argument("--full", action="store_true", help="full sizes, into benchmarks/results/ (hours on 2 cores)")
    ap.add_argument("--table", action="store_true", help="only rewrite benchmarks/README.md's table")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if args.table:
        print(f"wrote {write_readme()}")
        return 0
    done = run(args.names or list(BENCHMARKS), full=args.full)
    if args.full:
        write_readme()
    failed = {k: v for k, v in done.items() if not v["ok"]}
    print(f"{len(done) - len(failed)} of {len(done)} benchmarks ran"
          + ("".join(f"\n  failed: {k}: {v['error']}" for k, v in failed.items())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
