"""Benchmark: one pixel's whole series from the time-series copy (`sftl rechunk`) vs from the scene-chunked LST store.

Measures, in one run, for LST stores of 10, 20, 40 and 80 time steps:

* the read of one pixel's series of ``lst``, ``lst_uncertainty`` and ``qc`` as a user does it, cold: a
  fresh ``xr.open_zarr`` each time, ``isel`` of the pixel, ``load`` (Dask's threaded scheduler), best of
  ``--repeat`` for each of ``--pixels`` random pixels, the median over the pixels; the same read with
  bare zarr (``zarr.open_group`` + ``[:, i, j]``) to separate the store's cost from xarray's and Dask's;
* from the scene-chunked store (the retrieval's layout: chunks ``(1, 512, 512)``, Blosc LZ4 + shuffle) and
  from its copies with tiles of 64 and 128 px (chunks ``(T, tile, tile)``, same codec);
* the chunks and stored bytes each read touches (counted from the chunk files of the pixel's chunks);
* the time ``sftl_dask.rechunk.rechunk`` takes to make each copy on a LocalCluster (``--workers`` x 1 thread).

Target (issue 10): the copy >= 20x faster at 40 steps, and the gap growing with the length.

The stores are written with the project's cube writer (``append_slots`` / ``write_block`` / ``mark_slot``,
the LST schema, the retrieval's chunks and codec): spatially smooth LST with noise, cloud blobs (NaN, QC
bits), uncertainty and view angle, so that the codec compresses as it does on retrieved LST. A store is a
512 x 512 px grid, one scene chunk: a point read decodes one full 512 x 512 chunk per step, as on any
larger grid. Writes ``benchmarks/results/timeseries.json`` and ``timeseries.png``.

Usage: python -m benchmarks.bench_timeseries [--work DIR] [--lengths 10 20 40 80] [--tiles 64 128]
       [--repeat 7] [--pixels 5] [--workers 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"
SIZE = 512
VARS = ("lst", "lst_uncertainty", "qc")
TARGET_RATIO = 20.0
TARGET_STEPS = 40


# --------------------------------------------------------------------------------------------- inputs
def make_lst_store(store: Path, steps: int, size: int = SIZE, seed: int = 0) -> Path:
    """An LST store of ``steps`` time steps on a ``size`` x ``size`` grid, written by the project's cube writer.

    Chunks and codec are the retrieval's (``CHUNK`` px, Blosc LZ4 + shuffle); every step is complete.
    """
    from sftl_dask.io.cube import CHUNK, GeoBox, append_slots, mark_slot, write_block
    from sftl_dask.io.lst import LST_OK_VAR, LST_VARIABLES, QC_FLAGS, UNCERTAINTY_CLASS_SHIFT

    if (store / ".zmetadata").exists():
        return store
    shutil.rmtree(store, ignore_errors=True)
    rng = np.random.default_rng(seed)
    grid = GeoBox("EPSG:32650", (40.0, 0.0, 400_000.0, 0.0, -40.0, 4_500_000.0), size, size)
    t0 = np.datetime64("2022-01-03T03:30")
    scenes = [{"scene_id": f"GF5B_VIMI_BENCH_{i:04d}", "source": "/cubes/bench.zarr",
               "time": t0 + np.timedelta64(4 * i, "D")} for i in range(steps)]
    attrs = {"title": "sftl-dask land surface temperature", "Conventions": "CF-1.11", "sftl_product": "lst",
             "model_sha256": "0" * 64, "history": "benchmark store"}
    slots = append_slots(store, grid, scenes, attrs, variables=LST_VARIABLES, ok_var=LST_OK_VAR,
                         chunk=(CHUNK, CHUNK))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = 295.0 + 6.0 * np.sin(yy / 37.0) * np.cos(xx / 53.0)
    for i, slot in enumerate(slots):
        lst = (base + 10.0 * np.sin(2 * np.pi * i / 91.0) + rng.normal(0.0, 0.4, base.shape)).astype(np.float32)
        unc = (1.2 + 0.3 * np.abs(np.cos(xx / 71.0)) + 0.05 * rng.random(base.shape)).astype(np.float32)
        cloud = np.zeros(base.shape, bool)
        for r, c in rng.integers(0, size - 24, (12, 2)):
            cloud[r:r + 24, c:c + 24] = True
        qc = np.full(base.shape, 1 << UNCERTAINTY_CLASS_SHIFT, np.uint16)
        qc[cloud] = QC_FLAGS["cloud"][0] | (3 << UNCERTAINTY_CLASS_SHIFT)
        lst[cloud] = np.nan
        unc[cloud] = np.nan
        vza = (2.0 + 10.0 * xx / size).astype(np.float32)
        for y0 in range(0, size, CHUNK):
            for x0 in range(0, size, CHUNK):
                w = (y0, min(y0 + CHUNK, size), x0, min(x0 + CHUNK, size))
                sl = np.s_[w[0]:w[1], w[2]:w[3]]
                write_block(store, slot, w, {"lst": lst[sl], "lst_uncertainty": unc[sl], "qc": qc[sl],
                                             "vza": vza[sl]})
    mark_slot(store, list(slots), LST_OK_VAR, checksum=[f"{i:064x}" for i in range(steps)])
    return store


# --------------------------------------------------------------------------------------------- reads
def read_xarray(store: Path, y: int, x: int) -> tuple[float, float]:
    """Seconds to open the store afresh (``xr.open_zarr``, Dask-backed) and then to load one pixel's series of
    :data:`VARS` (Dask's threaded scheduler)."""
    import xarray as xr

    t0 = time.perf_counter()
    ds = xr.open_zarr(store)
    t1 = time.perf_counter()
    ds[list(VARS)].isel(y=y, x=x).load()
    return t1 - t0, time.perf_counter() - t1


def read_zarr(store: Path, y: int, x: int) -> tuple[float, float]:
    """Seconds to open the store's arrays afresh (bare zarr) and then to read one pixel's series of :data:`VARS`."""
    import zarr

    t0 = time.perf_counter()
    g = zarr.open_group(str(store), mode="r")
    arrays = [g[v] for v in VARS]
    t1 = time.perf_counter()
    for a in arrays:
        a[:, y, x]
    return t1 - t0, time.perf_counter() - t1


def touched(store: Path, y: int, x: int) -> dict[str, int]:
    """Chunks and stored bytes a read of one pixel's series of :data:`VARS` touches (from the chunk files)."""
    chunks = n_bytes = 0
    for v in VARS:
        meta = json.loads((store / v / ".zarray").read_text())
        n_t, _, _ = meta["shape"]
        ct, cy, cx = meta["chunks"]
        sep = meta.get("dimension_separator", ".")
        for it in range(-(-n_t // ct)):
            f = store / v / sep.join(map(str, (it, y // cy, x // cx)))
            chunks += 1
            n_bytes += f.stat().st_size if f.exists() else 0
    return {"chunks": chunks, "stored_bytes": n_bytes}


def _measure(stores: dict[str, Path], pixels: list[tuple[int, int]], repeat: int) -> dict[str, dict[str, Any]]:
    """Cold reads of each pixel from each store, the stores interleaved (a background load hits all alike).

    Per store: the best of ``repeat`` for each pixel, the median over the pixels, of the open, the read and
    their sum (ms), with xarray and with bare zarr; and the chunks and stored bytes a read touches.
    """
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(repeat):
        for p, (y, x) in enumerate(pixels):
            for name, store in stores.items():
                for how, fn in (("xarray", read_xarray), ("zarr", read_zarr)):
                    o, r = fn(store, y, x)
                    for part, v in (("open", o), ("read", r), ("total", o + r)):
                        key = (name, f"{how}_{part}_ms", p)
                        best[key] = min(best.get(key, np.inf), v)
    out: dict[str, dict[str, Any]] = {}
    for name, store in stores.items():
        row: dict[str, Any] = {}
        for how in ("xarray", "zarr"):
            for part in ("open", "read", "total"):
                k = f"{how}_{part}_ms"
                row[k] = round(1e3 * statistics.median(best[(name, k, p)] for p in range(len(pixels))), 3)
        t = [touched(store, y, x) for y, x in pixels]
        row.update({"chunks": t[0]["chunks"], "stored_bytes": int(statistics.median(d["stored_bytes"] for d in t))})
        out[name] = row
    return out


# --------------------------------------------------------------------------------------------- run
def _warm() -> None:
    import zarr  # noqa: F401

    import sftl_dask.rechunk  # noqa: F401


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sftl-bench-timeseries"),
                    help="work folder: the stores are made once and reused")
    ap.add_argument("--lengths", type=int, nargs="+", default=[10, 20, 40, 80])
    ap.add_argument("--tiles", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--repeat", type=int, default=7, help="cold reads per pixel; the best counts")
    ap.add_argument("--pixels", type=int, default=5, help="random pixels; the median counts")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    from sftl_dask.cluster import get_client
    from sftl_dask.rechunk import TILE, rechunk

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    pixels = [(int(y), int(x)) for y, x in rng.integers(0, SIZE, (args.pixels, 2))]
    stores, copies, made = {}, {}, {}
    t0 = time.perf_counter()
    for n in args.lengths:
        stores[n] = make_lst_store(work / f"lst_{n}.zarr", n)
    print(f"LST stores of {args.lengths} steps ready in {time.perf_counter() - t0:.1f} s")
    with get_client(n_workers=args.workers) as client:
        client.run(_warm)  # imports in the workers, so that the first copy's time is the copy's
        for n in args.lengths:
            for tile in args.tiles:
                out = work / f"lst_{n}_ts{tile}.zarr"
                s = rechunk(stores[n], out, tile=tile, client=client, overwrite=True)
                copies[(n, tile)] = out
                made[(n, tile)] = s
                print(f"  rechunk {n} steps, tile {tile}: {s['seconds']:.2f} s, {s['bytes'] / 1e6:.0f} MB, "
                      f"{s['tasks']} tasks")
    rows = []
    for n in args.lengths:
        m = _measure({"scene": stores[n], **{str(t): copies[(n, t)] for t in args.tiles}}, pixels, args.repeat)
        scene = m["scene"]
        row: dict[str, Any] = {"steps": n, "scene_chunked": scene, "copies": {}}
        for tile in args.tiles:
            c, made_nt = m[str(tile)], made[(n, tile)]
            for k in ("xarray_read", "xarray_total", "zarr_read", "zarr_total"):
                c[f"ratio_{k}"] = round(scene[f"{k}_ms"] / c[f"{k}_ms"], 2)
            c.update({"gap_xarray_read_ms": round(scene["xarray_read_ms"] - c["xarray_read_ms"], 3),
                      "rechunk_s": round(made_nt["seconds"], 3),
                      "rechunk_mb_s": round(made_nt["bytes"] / 1e6 / made_nt["seconds"], 1),
                      "chunk_shape": made_nt["stores"][0]["chunks"]})
            row["copies"][str(tile)] = c
        rows.append(row)
        cells = [(t, row["copies"][str(t)]) for t in args.tiles]
        print(f"  {n:3d} steps: scene-chunked read {scene['xarray_read_ms']:8.2f} ms (+ open "
              f"{scene['xarray_open_ms']:.1f} ms; {scene['chunks']} chunks, {scene['stored_bytes'] / 1e6:.2f} MB); "
              + "; ".join(f"tile {t}: {c['xarray_read_ms']:.2f} ms = {c['ratio_xarray_read']:.1f}x" for t, c in cells))
    default = str(TILE) if str(TILE) in rows[0]["copies"] else str(args.tiles[0])
    ratios = [r["copies"][default]["ratio_xarray_read"] for r in rows]
    gaps = [r["copies"][default]["gap_xarray_read_ms"] for r in rows]
    at = next((r for r in rows if r["steps"] == TARGET_STEPS), None)
    res: dict[str, Any] = {
        "benchmark": "timeseries", "grid_px": SIZE, "variables": list(VARS), "pixels": pixels,
        "repeat": args.repeat, "workers": args.workers, "default_tile": int(default),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "node": platform.node(),
                    "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()]},
        "how": "cold reads: a fresh xr.open_zarr (Dask-backed; or zarr.open_group) before every read; the open and "
               "the read timed apart; best of the repeats per pixel, median over the pixels; the stores "
               "interleaved; scene-chunked store chunks (1, 512, 512), copies (T, tile, tile), Blosc LZ4 + "
               "shuffle both",
        "rows": rows,
        "target": {"ratio": TARGET_RATIO, "steps": TARGET_STEPS, "on": "ratio_xarray_read"},
        "targets_met": {
            "ratio_at_40_steps": at is not None and at["copies"][default]["ratio_xarray_read"] >= TARGET_RATIO,
            "ratio_at_40_steps_open_included": at is not None
            and at["copies"][default]["ratio_xarray_total"] >= TARGET_RATIO,
            "gap_grows_with_length": all(b > a for a, b in itertools.pairwise(gaps)),
            "ratio_grows_with_length": all(b >= a for a, b in itertools.pairwise(ratios)),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "timeseries.json").write_text(json.dumps(res, indent=1))
    _plot(res, RESULTS / "timeseries.png")
    _table(res)
    return res


def _table(r: dict[str, Any]) -> None:
    tiles = list(r["rows"][0]["copies"])
    print(f"\none pixel's series ({', '.join(r['variables'])}), cold, xarray + Dask; read ms after a fresh open "
          f"[open + read ms] (chunks, stored MB) speed-up of the read [of open + read]")
    for row in r["rows"]:
        s = row["scene_chunked"]
        line = (f"  {row['steps']:>3} steps  scene-chunked {s['xarray_read_ms']:8.2f} [{s['xarray_total_ms']:8.2f}] "
                f"({s['chunks']:3d}, {s['stored_bytes'] / 1e6:6.2f})")
        for t in tiles:
            c = row["copies"][t]
            line += (f"  | tile {t}: {c['xarray_read_ms']:6.2f} [{c['xarray_total_ms']:6.2f}] ({c['chunks']}, "
                     f"{c['stored_bytes'] / 1e6:4.2f}) {c['ratio_xarray_read']:5.1f}x "
                     f"[{c['ratio_xarray_total']:4.1f}x]")
        print(line)
    print(f"  targets: {r['targets_met']}")


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["steps"] for row in r["rows"]]
    tiles = list(r["rows"][0]["copies"])
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(steps, [row["scene_chunked"]["xarray_read_ms"] for row in r["rows"]], "o-", color="#999999",
               label="scene-chunked (1, 512, 512)")
    ax[0].plot(steps, [row["scene_chunked"]["xarray_open_ms"] for row in r["rows"]], ":", color="#999999",
               label="xr.open_zarr alone (either layout)")
    for i, t in enumerate(tiles):
        col = f"C{i}"
        ax[0].plot(steps, [row["copies"][t]["xarray_read_ms"] for row in r["rows"]], "o-", color=col,
                   label=f"copy (T, {t}, {t})")
        ax[1].plot(steps, [row["copies"][t]["ratio_xarray_read"] for row in r["rows"]], "o-", color=col,
                   label=f"tile {t}: read")
        ax[1].plot(steps, [row["copies"][t]["ratio_xarray_total"] for row in r["rows"]], "s--", color=col, alpha=0.5,
                   label=f"tile {t}: open + read")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("time steps")
    ax[0].set_ylabel("one pixel's series after a fresh open (ms)")
    ax[0].set_title("lst + lst_uncertainty + qc: isel + load (Dask)")
    ax[0].legend(fontsize=8)
    ax[1].axhline(r["target"]["ratio"], color="r", ls="--", lw=1, label=f"target {r['target']['ratio']:.0f}x")
    ax[1].axvline(r["target"]["steps"], color="r", ls=":", lw=1)
    ax[1].set_xlabel("time steps")
    ax[1].set_ylabel("speed-up of the time-series copy (x)")
    ax[1].set_title("scene-chunked / copy")
    ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
