"""Benchmark: `sftl ingest` throughput against a bare read-DN-write-Zarr floor, and worker memory as scenes grow x4.

Measures, in one run on one LocalCluster (``--workers``, 1 thread each, from ``sftl_dask.cluster.get_client``):

* (a) wall time of :func:`sftl_dask.ingest.ingest` of the N testbed archives into a fresh cube;
* (b) a bare baseline on the same archives and cluster, one task per scene: read the B7_B12 and B1_B6 DN
  GeoTIFFs through rioxarray (``/vsitar/``) and write them to Zarr with the cube's chunks (1, 512, 512) and
  codec (Blosc LZ4 + shuffle) -- the floor of I/O + compression. Target: ingest / baseline <= 3;
* (c) peak worker memory and wall time per scene while ingesting N and 4N archives (4N = the N archives plus
  3 distinct copies of each: new product id in the name, member names and XML), each into a fresh cube after
  a worker restart.
  Sampled as each worker's RSS (``client.run`` + psutil every 0.2 s, in a thread) and as distributed's
  ``MemorySampler`` (process memory summed over the cluster). Targets: peak(4N) within +-10 % of peak(N) (issue 20);
  ingest seconds per scene at 4N within +-15 % of N (the copies land on the same tiles: time axes grow 4x).

The ``delivered`` section (``--layout delivered``; issue 28): the testbed built with ``layout="delivered"``
(``.tar.gz`` products in sensor geometry with ``.rpb`` RPCs, DEM tiles in ``DIR/dem``), ingested with
``dem=DIR/dem``, against its floor: per scene, as one task on the same cluster, (1) the DN of both rasters read
through GDAL's ``/vsitar/`` of the ``.tar.gz``, (2) the DEM over the footprint and the RPC warp alone of those DN
arrays (every band of each raster by its own RPCs, bilinear, 1 GDAL thread as ingest) with
:func:`sftl_dask.io.ortho.orthorectify` onto each tile window ingest wrote the scene into, and (3) the Zarr
write of the warped bands with the cube's chunks and codec. Target: ingest / floor <= 2.5 (wall times, best of
``--repeat``). The warp's share is timed inside the tasks: the floor's, and ingest's own (``warp_seconds`` of its
log). The load average is recorded (the machine is shared).

Writes ``benchmarks/results/ingest.json`` and ``ingest.png``; ``--layout map`` or ``delivered`` rewrites its own
section and keeps the other's from the last run.

``--memory-only`` runs (c) alone (N = 2 x ``--scenes``) and writes ``results/bench_ingest_memory.json``, with the
driver's peak RSS beside the workers'.

Usage: python -m benchmarks.bench_ingest [--layout both|map|delivered] [--scenes 10] [--workers 2] [--repeat 2]
       [--testbed DIR] [--delivered-testbed DIR] [--keep DIR] [--memory-only]
"""

from __future__ import annotations

import argparse
import ctypes
import io
import json
import os
import platform
import re
import shutil
import tarfile
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sftl_dask.geo import DEFAULT_TILE_PX

RESULTS = Path(__file__).parent / "results"
CHUNKS = (1, 512, 512)
RATIO_TARGET = 3.0
DELIVERED_RATIO_TARGET = 2.5
MEMORY_TOLERANCE = 0.10
PER_SCENE_TOLERANCE = 0.15


# --------------------------------------------------------------------------------------------- inputs
def copy_product(src: Path, out_dir: Path, product_id: int) -> Path:
    """A distinct copy of a VIMI L1 archive: ``product_id`` in its name, its member names and its XML.

    Parameters
    ----------
    src : Path
        ``<stem>.tar`` whose stem ends with the 10-digit product id.
    out_dir : Path
        Folder of the copy (created if missing).
    product_id : int
        New product id (10 digits at most).

    Returns
    -------
    Path
        The new archive.
    """
    old = src.name[: -len(".tar")]
    new = old[:-10] + f"{product_id:010d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / f"{new}.tar"
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.USTAR_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read()
            if m.name.endswith(".xml"):
                data = re.sub(rb"<ProductID>\d+</ProductID>", f"<ProductID>{product_id}</ProductID>".encode(), data)
            info = tarfile.TarInfo(m.name.replace(old, new))
            info.size, info.mtime, info.mode = len(data), m.mtime, m.mode
            tout.addfile(info, io.BytesIO(data))
    return dst


def _inputs(work: Path, testbed: Path | None, scenes: int, client: Any) -> tuple[Path, list[Path], list[Path]]:
    """The testbed (built or reused), its N archives, and the 4N set (N archives + 3 copies of each)."""
    from sftl_dask.io.vimi import find_products

    if testbed is None or not (testbed / "archives").is_dir():
        from sftl_dask.testbed.build import build_testbed

        testbed = testbed or work / "testbed"
        t0 = time.perf_counter()
        build_testbed(testbed, scenes=scenes, size=640, seed=0, client=client, overwrite=True, layout="map")
        print(f"built testbed {testbed} ({scenes} scenes per region) in {time.perf_counter() - t0:.1f} s")
    archives = find_products([testbed / "archives"])
    copies = work / "copies"
    shutil.rmtree(copies, ignore_errors=True)
    extra = [copy_product(a, copies, 9_000_000_000 + k * 100_000 + i)
             for i, a in enumerate(archives) for k in range(1, 4)]
    return testbed, archives, [*archives, *extra]


# --------------------------------------------------------------------------------------------- the baseline
def baseline_scene(path: str, out_dir: str) -> float:
    """Read one archive's DN GeoTIFFs (B7_B12, B1_B6) via ``/vsitar/`` and write them to Zarr; seconds taken.

    The floor of ingest: no calibration, no ancillary data, same chunks (1, 512, 512) and codec
    (Blosc LZ4, byte shuffle, level 5) as the cube.
    """
    t0 = time.perf_counter()
    import rioxarray
    import xarray as xr
    from numcodecs import Blosc

    with tarfile.open(path) as tf:
        names = tf.getnames()
    data = {}
    for suffix, dims in (("_B7_B12.tif", ("band", "y", "x")), ("_B1_B6.tif", ("band", "y20", "x20"))):
        member = next(n for n in names if n.endswith(suffix))
        with rioxarray.open_rasterio(f"/vsitar/{Path(path).absolute()}/{member}", cache=False) as r:
            data[suffix[1:-4].lower()] = (dims, r.values)
    comp = (Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),)
    ds = xr.Dataset(data)
    enc = {k: {"chunks": CHUNKS, "compressors": comp} for k in ds.data_vars}
    ds.to_zarr(Path(out_dir) / f"{Path(path).stem}.zarr", mode="w", zarr_format=2, encoding=enc,
               consolidated=True)
    return time.perf_counter() - t0


def _run_baseline(client: Any, archives: list[Path], out: Path) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    futs = client.map(baseline_scene, [str(a) for a in archives], out_dir=str(out), pure=False)
    tasks = client.gather(futs)
    return {"wall_s": time.perf_counter() - t0, "task_mean_s": sum(tasks) / len(tasks)}


def _run_ingest(client: Any, archives: list[Path], cube: Path, testbed: Path) -> dict[str, Any]:
    from sftl_dask.ingest import ingest

    shutil.rmtree(cube, ignore_errors=True)
    t0 = time.perf_counter()
    summary = ingest(archives, cube, era5=sorted((testbed / "era5").glob("*.nc")), ged=testbed / "ged",
                     client=client)
    wall = time.perf_counter() - t0
    if summary["failed"] or summary["ingested"] != len(archives):
        raise RuntimeError(f"ingest did not take every archive: {summary['failed'][:3]}")
    log = [json.loads(line) for line in (cube / "ingest_log.jsonl").read_text().splitlines()]
    tasks = [r["seconds"] for r in log if r["status"] == "ingested"]
    return {"wall_s": wall, "ingested": summary["ingested"], "task_mean_s": sum(tasks) / len(tasks),
            "task_sum_s": sum(tasks)}


def _warm() -> None:
    """Import what both measured paths use, so neither pays the workers' first imports."""
    import numcodecs  # noqa: F401
    import rioxarray  # noqa: F401
    import zarr  # noqa: F401

    import sftl_dask.ingest
    import sftl_dask.io.era5
    import sftl_dask.io.ged
    import sftl_dask.io.vimi
    import sftl_dask.physics.cloud  # noqa: F401


# --------------------------------------------------------------------------------------------- memory
def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


@contextmanager
def _rss_sampler(client: Any, interval: float = 0.2, driver: list[int] | None = None
                 ) -> Iterator[list[tuple[float, dict[str, int]]]]:
    """Sample every worker's RSS every ``interval`` s in a thread; yields the growing list of (t, {worker: bytes}).

    ``driver``, if given, receives this process's RSS (bytes) at each sample.
    """
    samples: list[tuple[float, dict[str, int]]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def loop() -> None:
        while not stop.is_set():
            try:
                samples.append((time.perf_counter() - t0, client.run(_rss)))
                if driver is not None:
                    driver.append(_rss())
            except Exception:  # a worker restarting or the client closing: skip this sample
                pass
            stop.wait(interval)

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    try:
        yield samples
    finally:
        stop.set()
        th.join()


#: Alignment (bytes) of glibc's per-thread malloc heaps on 64-bit Linux (``HEAP_MAX_SIZE``): how they are told apart.
_ARENA_ALIGN = 64 << 20


def _mallinfo2_type() -> type:
    """glibc's ``struct mallinfo2`` (malloc.h), every field in bytes or counts.

    Made where it is used: a ctypes class defined in ``__main__`` (``python -m``) cannot be pickled to the workers
    by ``client.run`` (``cannot pickle '_ctypes.CField'``).
    """

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

    return MallInfo2


def smaps_breakdown(smaps: str) -> dict[str, float]:
    """Resident memory (MB) of a process by kind of mapping, from the text of ``/proc/<pid>/smaps``.

    ``heap``: the main malloc heap (``[heap]``); ``thread_arenas``: anonymous mappings starting on a 64 MiB
    boundary (glibc's per-thread malloc heaps); ``other_anon``: every other anonymous mapping (blocks glibc maps on
    their own, Python's object arenas, thread stacks); ``file``: mapped files (libraries, mapped data).
    """
    out = dict.fromkeys(("heap", "thread_arenas", "other_anon", "file"), 0.0)
    kind = "other_anon"
    for line in smaps.splitlines():
        parts = line.split()
        if len(parts) >= 5 and "-" in parts[0] and ":" in parts[3]:
            start = int(parts[0].split("-")[0], 16)
            name = parts[5] if len(parts) > 5 else ""
            kind = ("heap" if name == "[heap]" else "file" if name.startswith("/") else
                    "thread_arenas" if not name and start % _ARENA_ALIGN in (0, 4096) else "other_anon")
        elif parts and parts[0] == "Rss:":
            out[kind] += int(parts[1]) / 1024
    return {k: round(v, 1) for k, v in out.items()}


def worker_memory_breakdown() -> dict[str, float]:
    """Where this process's resident memory is (MB), after glibc's ``malloc_trim``: what a run leaves behind.

    ``rss_before_trim`` / ``rss``, glibc's bytes in use (``malloc_in_use``, every arena, :func:`_mallinfo2_type`), the
    mappings by kind (:func:`smaps_breakdown`) and Python's allocated blocks (``python_blocks``, a count).
    """
    import sys

    rss0 = _rss()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _mallinfo2_type()
    libc.malloc_trim(0)
    smaps = Path("/proc/self/smaps").read_text()
    return {"rss_before_trim": round(rss0 / 2**20, 1), "rss": round(_rss() / 2**20, 1),
            "malloc_in_use": round(libc.mallinfo2().uordblks / 2**20, 1), **smaps_breakdown(smaps),
            "python_blocks": sys.getallocatedblocks()}


def _memory_run(client: Any, label: str, archives: list[Path], cube: Path, testbed: Path) -> dict[str, Any]:
    from distributed.diagnostics import MemorySampler

    client.restart(timeout=600)
    idle = max(client.run(_rss).values())
    ms = MemorySampler()
    driver: list[int] = []
    with _rss_sampler(client, driver=driver) as samples, ms.sample(label, client=client, measure="process",
                                                                      interval=0.2):
        res = _run_ingest(client, archives, cube, testbed)
    left = client.run(worker_memory_breakdown)  # what the run left resident in each worker (issue 20's evidence)
    per_worker_peak = {w: max(s[1].get(w, 0) for s in samples) for w in samples[0][1]}
    cluster = ms.to_pandas()[label]
    return {
        "n_archives": len(archives), "wall_s": round(res["wall_s"], 2), "samples": len(samples),
        "scene_task_mean_s": round(res["task_mean_s"], 3),
        "idle_rss_mb": round(idle / 2**20, 1),
        "peak_rss_mb": round(max(per_worker_peak.values()) / 2**20, 1),
        "peak_rss_mb_per_worker": {w: round(v / 2**20, 1) for w, v in per_worker_peak.items()},
        "cluster_process_peak_mb": round(float(cluster.max()) / 2**20, 1),
        "driver_peak_rss_mb": round(max(driver, default=0) / 2**20, 1),
        "after_run_mb_per_worker": left,
        "trace": [(round(t, 2), round(max(v.values()) / 2**20, 1)) for t, v in samples],
    }


# --------------------------------------------------------------------------------------------- delivered layout
def floor_delivered_scene(path: str, members: dict[str, str], windows: list[tuple[Any, ...]],
                          bounds: tuple[float, float, float, float], dem: Any, out_dir: str) -> dict[str, float]:
    """The floor of ingesting one delivered product (sensor geometry, ``.tar.gz``), timed by step (seconds).

    * ``read_s``: the DN of both rasters (``B7_B12`` 40 m, ``B1_B6`` 20 m, all bands) through GDAL's
      ``/vsitar/`` of the ``.tar.gz``; GDAL reads each raster's ``.rpb`` sidecar as it opens it;
    * ``dem_s``: the DEM over the footprint (:meth:`~sftl_dask.io.ortho.Dem.for_footprint`, as ingest);
    * ``warp_s``: :func:`~sftl_dask.io.ortho.orthorectify` of each raster's DN bands (float32, bilinear) by its
      own RPCs onto each tile window at 40 m (the windows ingest wrote), 1 GDAL thread as ingest;
    * ``write_s``: the warped bands to Zarr, one store per tile window, chunks (1, 512, 512), Blosc LZ4 + shuffle.
    """
    import numpy as np
    import rasterio
    import xarray as xr
    from numcodecs import Blosc
    from rasterio.errors import NotGeoreferencedWarning

    from sftl_dask.geo import GeoBox
    from sftl_dask.io.ortho import orthorectify
    from sftl_dask.io.rpc import from_rasterio

    t0 = time.perf_counter()
    dn, rpcs = {}, {}
    with rasterio.Env(CPL_VSIL_GZIP_WRITE_PROPERTIES="NO"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for ftype, member in members.items():
            with rasterio.open(f"/vsitar/{Path(path).absolute()}/{member}") as src:
                dn[ftype], rpcs[ftype] = src.read(), from_rasterio(src.rpcs, member)
    t1 = time.perf_counter()
    warped: list[dict[str, np.ndarray]] = []
    t_warp = dict.fromkeys(dn, 0.0)
    with dem.for_footprint(bounds, path) as dem_path:
        t2 = time.perf_counter()
        for crs, affine, width, height in windows:
            grid = GeoBox(crs, affine, width, height)
            out: dict[str, np.ndarray] = {}
            for ftype, arr in dn.items():
                tw = time.perf_counter()
                bands = {f"{ftype}_{i + 1}": arr[i].astype(np.float32) for i in range(arr.shape[0])}
                out.update(orthorectify(bands, rpcs[ftype], grid, dem_path=dem_path))
                t_warp[ftype] += time.perf_counter() - tw
            warped.append(out)
    t3 = time.perf_counter()
    comp = (Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),)
    for k, out in enumerate(warped):
        ds = xr.Dataset({name: (("time", "y", "x"), v[None]) for name, v in out.items()})
        enc = {name: {"chunks": CHUNKS, "compressors": comp} for name in ds.data_vars}
        ds.to_zarr(Path(out_dir) / f"{Path(path).name}.{k}.zarr", mode="w", zarr_format=2, encoding=enc,
                   consolidated=True)
    t4 = time.perf_counter()
    return {"seconds": t4 - t0, "read_s": t1 - t0, "dem_s": t2 - t1, "warp_s": sum(t_warp.values()),
            **{f"warp_{ftype}_s": v for ftype, v in t_warp.items()}, "write_s": t4 - t3, "windows": len(windows)}


def _scene_windows(cube: Path, archives: list[Path]) -> dict[str, list[tuple[Any, ...]]]:
    """Per archive, the tile windows ingest wrote it into: (crs, affine 6-tuple, width, height) of each.

    The windows are the overlaps of the cube's tile grids (where the scene holds a slot) with the scene's grid by
    the rule ingest places it (:func:`~sftl_dask.io.inspect.sensor_product_grid` of the thermal raster's RPCs).
    """
    from sftl_dask.io.cube import read_slots
    from sftl_dask.io.inspect import sensor_product_grid
    from sftl_dask.io.stores import cube_stores
    from sftl_dask.io.vimi import VimiProduct

    tiles: dict[str, list[Any]] = {}
    for store in cube_stores(cube).values():
        grid, slots = read_slots(store)
        for s in slots:
            tiles.setdefault(s["scene_id"], []).append(grid)
    out = {}
    for a in archives:
        prod = VimiProduct(a)
        with prod.open(chunks=None) as ds:
            shape = (ds.sizes["y"], ds.sizes["x"])
        sgrid, _ = sensor_product_grid(prod.rpc(), *shape)
        wins = []
        for tile in tiles[prod.stem]:
            hit = tile.overlap(sgrid)
            if hit is not None:
                w = tile.window(hit[0])
                wins.append((w.crs, tuple(w.affine)[:6], w.width, w.height))
        out[str(a)] = wins
    return out


def _floor_inputs(archives: list[Path]) -> dict[str, dict[str, Any]]:
    """Per archive: its raster members and footprint (lon/lat bounds), read before the timed runs."""
    from sftl_dask.io.inspect import sensor_product_grid
    from sftl_dask.io.vimi import VimiProduct

    out = {}
    for a in archives:
        prod = VimiProduct(a)
        with prod.open(chunks=None) as ds:
            shape = (ds.sizes["y"], ds.sizes["x"])
        _, bounds = sensor_product_grid(prod.rpc(), *shape)
        out[str(a)] = {"members": {ft: m for ft, m in prod.members.items() if ft != "metadata"}, "bounds": bounds}
    return out


def _run_floor_delivered(client: Any, archives: list[Path], inputs: dict[str, dict[str, Any]],
                         windows: dict[str, list[tuple[Any, ...]]], dem: Any, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    futs = [client.submit(floor_delivered_scene, str(a), inputs[str(a)]["members"], windows[str(a)],
                          inputs[str(a)]["bounds"], dem, str(out), pure=False) for a in archives]
    tasks = client.gather(futs)
    res: dict[str, Any] = {"wall_s": time.perf_counter() - t0}
    for key in tasks[0]:
        if key.endswith("s") and key != "windows":
            res[f"task_{key}"] = sum(t[key] for t in tasks)
    res["windows"] = sum(t["windows"] for t in tasks)
    return res


def _run_ingest_delivered(client: Any, archives: list[Path], cube: Path, testbed: Path) -> dict[str, Any]:
    from sftl_dask.ingest import ingest

    shutil.rmtree(cube, ignore_errors=True)
    t0 = time.perf_counter()
    summary = ingest(archives, cube, era5=sorted((testbed / "era5").glob("*.nc")), ged=testbed / "ged",
                     dem=testbed / "dem", client=client)
    wall = time.perf_counter() - t0
    if summary["failed"] or summary["ingested"] != len(archives):
        raise RuntimeError(f"ingest did not take every archive: {summary['failed'][:3]}")
    log = [json.loads(line) for line in (cube / "ingest_log.jsonl").read_text().splitlines()]
    done = [r for r in log if r["status"] == "ingested"]
    return {"wall_s": wall, "task_seconds": sum(r["seconds"] for r in done),
            "task_warp_s": sum(r["warp_seconds"] for r in done)}


def run_delivered(client: Any, work: Path, testbed: Path | None, scenes: int, repeat: int,
                  workers: int) -> dict[str, Any]:
    """The ``delivered`` section: ingest of delivered products (with the DEM) against its floor (module docstring)."""
    from sftl_dask.io.ortho import open_dem
    from sftl_dask.io.vimi import find_products

    if testbed is None or not (testbed / "dem").is_dir():
        from sftl_dask.testbed.build import build_testbed

        testbed = testbed or work / "testbed_delivered"
        t0 = time.perf_counter()
        build_testbed(testbed, scenes=scenes, size=640, seed=0, client=client, overwrite=True, layout="delivered")
        print(f"built delivered testbed {testbed} ({scenes} scenes per region) in {time.perf_counter() - t0:.1f} s")
    archives = find_products([testbed / "archives"])
    mb = sum(a.stat().st_size for a in archives) / 2**20
    print(f"delivered: {len(archives)} archives ({mb:.0f} MB), {workers} workers x 1 thread")
    dem = open_dem(testbed / "dem")
    inputs = _floor_inputs(archives)
    client.restart(timeout=600)
    client.run(_warm)
    runs: dict[str, list[dict[str, Any]]] = {"floor": [], "ingest": []}
    windows: dict[str, list[tuple[Any, ...]]] = {}
    for r in range(repeat):
        runs["ingest"].append(_run_ingest_delivered(client, archives, work / "cube_delivered", testbed))
        windows = windows or _scene_windows(work / "cube_delivered", archives)
        runs["floor"].append(_run_floor_delivered(client, archives, inputs, windows, dem, work / "floor"))
        print(f"  repeat {r + 1}: floor {runs['floor'][-1]['wall_s']:.2f} s, "
              f"ingest {runs['ingest'][-1]['wall_s']:.2f} s")
    best_f = min(runs["floor"], key=lambda x: x["wall_s"])
    best_i = min(runs["ingest"], key=lambda x: x["wall_s"])
    ratio = best_i["wall_s"] / best_f["wall_s"]
    return {
        "n_archives": len(archives), "archives_mb": round(mb, 1), "regions": 2,
        "archive_px": "640 x 640 (40 m) + 1280 x 1280 (20 m), sensor geometry, .tar.gz with .rpb", "dem": "DIR/dem",
        "tile_windows": best_f["windows"],
        "floor_s": [round(x["wall_s"], 2) for x in runs["floor"]],
        "ingest_s": [round(x["wall_s"], 2) for x in runs["ingest"]],
        "floor_best_s": round(best_f["wall_s"], 2), "ingest_best_s": round(best_i["wall_s"], 2),
        "ratio_ingest_to_floor": round(ratio, 2), "ratio_target": DELIVERED_RATIO_TARGET,
        "ratio_ok": ratio <= DELIVERED_RATIO_TARGET,
        # task seconds summed over scenes (best wall-time repeat of each)
        "floor_task_s": {k.removeprefix("task_"): round(v, 2) for k, v in best_f.items() if k.startswith("task_")},
        "ingest_task_s": round(best_i["task_seconds"], 2), "ingest_task_warp_s": round(best_i["task_warp_s"], 2),
        "warp_share_of_floor": round(best_f["task_warp_s"] / best_f["task_seconds"], 3),
        "warp_share_of_ingest_tasks": round(best_i["task_warp_s"] / best_i["task_seconds"], 3),
        "warp_share_of_ingest_wall": round(best_i["task_warp_s"] / workers / best_i["wall_s"], 3),
        "ingest_outside_scene_tasks_s": round(best_i["wall_s"] - best_i["task_seconds"] / workers, 2),
    }


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and writes) the result.

    ``--layout map`` (the map-projected testbed) and ``--layout delivered`` (the delivered one) each rewrite their
    own part of ``ingest.json`` and keep the other's from the last run; ``both`` (default) runs both.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=10, help="scenes per region, N = 2 x scenes archives")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2, help="timing repeats of (a) and (b); the best counts")
    ap.add_argument("--testbed", type=Path, default=None, help="reuse (or build into) this map-layout testbed")
    ap.add_argument("--delivered-testbed", type=Path, default=None,
                    help="reuse (or build into) this delivered-layout testbed")
    ap.add_argument("--layout", choices=("map", "delivered", "both"), default="both")
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folder (cubes, copies) here")
    ap.add_argument("--memory-only", action="store_true",
                    help="only (c), the N and 4N memory runs (map layout); writes results/bench_ingest_memory.json")
    args = ap.parse_args(argv)
    from sftl_dask.cluster import get_client

    if args.memory_only:
        return _memory_only(args)

    previous = json.loads((RESULTS / "ingest.json").read_text()) if (RESULTS / "ingest.json").exists() else {}
    work = args.keep or Path(tempfile.mkdtemp(prefix="sftl-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    try:
        with get_client(n_workers=args.workers) as client:
            result = _map_case(client, work, args) if args.layout != "delivered" else \
                {k: v for k, v in previous.items() if k != "delivered"}
            if args.layout != "map":
                result["delivered"] = run_delivered(client, work, args.delivered_testbed, args.scenes, args.repeat,
                                                    args.workers)
                result["delivered"]["load_avg_1_5_15_at_start"] = [round(x, 2) for x in load]
                result["delivered"]["load_avg_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
            elif "delivered" in previous:
                result["delivered"] = previous["delivered"]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=1))
    _plot(result, RESULTS / "ingest.png")
    _table(result)
    return result


def _memory_only(args: argparse.Namespace) -> dict[str, Any]:
    """(c) alone: peak worker and driver RSS and scene task time at N and 4N archives, their changes (issue 20).

    Writes ``benchmarks/results/bench_ingest_memory.json``; ``ingest.json`` (the full run's) is left as it is.
    """
    from sftl_dask.cluster import get_client

    work = args.keep or Path(tempfile.mkdtemp(prefix="sftl-bench-ingest-mem-"))
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    try:
        with get_client(n_workers=args.workers) as client:
            testbed, archives, archives4 = _inputs(work, args.testbed, args.scenes, client)
            mem_n = _memory_run(client, "N", archives, work / "cube_n", testbed)
            mem_4n = _memory_run(client, "4N", archives4, work / "cube_4n", testbed)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    growth = mem_4n["peak_rss_mb"] / mem_n["peak_rss_mb"] - 1
    task_change = mem_4n["scene_task_mean_s"] / mem_n["scene_task_mean_s"] - 1
    result = {
        "benchmark": "ingest memory (c)", "workers": args.workers, "threads_per_worker": 1,
        "machine": {"cpus": os.cpu_count(), "measured_utc": time.strftime("%Y-%m-%d", time.gmtime()),
                    "python": platform.python_version(), "node": platform.node()},
        "load_avg_1_5_15_at_start": [round(x, 2) for x in load],
        "load_avg_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()],
        "peak_rss_growth_4n_vs_n": round(growth, 3), "memory_tolerance": MEMORY_TOLERANCE,
        "memory_ok": abs(growth) <= MEMORY_TOLERANCE,
        "scene_task_change_4n_vs_n": round(task_change, 3), "per_scene_tolerance": PER_SCENE_TOLERANCE,
        "scene_task_ok": abs(task_change) <= PER_SCENE_TOLERANCE,
        "memory_n": mem_n, "memory_4n": mem_4n,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_ingest_memory.json").write_text(json.dumps(result, indent=1))
    for m in (mem_n, mem_4n):
        print(f"{m['n_archives']:4d} archives: peak worker RSS {m['peak_rss_mb']:.0f} MB "
              f"(idle {m['idle_rss_mb']:.0f}), "
              f"driver {m['driver_peak_rss_mb']:.0f} MB, scene task {m['scene_task_mean_s']:.3f} s, "
              f"wall {m['wall_s']:.1f} s")
    print(f"peak growth 4N vs N {100 * growth:+.1f} % (target +-{100 * MEMORY_TOLERANCE:.0f} %), scene task "
          f"{100 * task_change:+.1f} % (target +-{100 * PER_SCENE_TOLERANCE:.0f} %)")
    return result


def _map_case(client: Any, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The map-layout case: (a), (b) and (c) of the module docstring."""
    testbed, archives, archives4 = _inputs(work, args.testbed, args.scenes, client)
    mb = sum(a.stat().st_size for a in archives) / 2**20
    print(f"{len(archives)} archives ({mb:.0f} MB), {len(archives4)} for the x4 memory run, "
          f"{args.workers} workers x 1 thread")
    client.restart(timeout=600)
    client.run(_warm)
    runs: dict[str, list[dict[str, float]]] = {"baseline": [], "ingest": []}
    for r in range(args.repeat):
        runs["baseline"].append(_run_baseline(client, archives, work / "baseline"))
        runs["ingest"].append(_run_ingest(client, archives, work / "cube", testbed))
        print(f"  repeat {r + 1}: baseline {runs['baseline'][-1]['wall_s']:.2f} s, "
              f"ingest {runs['ingest'][-1]['wall_s']:.2f} s")
    mem_n = _memory_run(client, "N", archives, work / "cube_n", testbed)
    mem_4n = _memory_run(client, "4N", archives4, work / "cube_4n", testbed)
    best_b = min(runs["baseline"], key=lambda x: x["wall_s"])
    best_i = min(runs["ingest"], key=lambda x: x["wall_s"])
    ratio = best_i["wall_s"] / best_b["wall_s"]
    growth = mem_4n["peak_rss_mb"] / mem_n["peak_rss_mb"] - 1
    per_n, per_4n = mem_n["wall_s"] / mem_n["n_archives"], mem_4n["wall_s"] / mem_4n["n_archives"]
    task_change = mem_4n["scene_task_mean_s"] / mem_n["scene_task_mean_s"] - 1
    result = {
        "benchmark": "ingest",
        "machine": {"cpus": os.cpu_count(), "measured_utc": time.strftime("%Y-%m-%d", time.gmtime()),
                    "python": platform.python_version(), "node": platform.node()},
        "workers": args.workers, "threads_per_worker": 1,
        "scenes_per_region": args.scenes, "n_archives": len(archives), "archives_mb": round(mb, 1),
        "archive_px": "640 x 640 (40 m) + 1280 x 1280 (20 m)",
        "baseline_s": [round(x["wall_s"], 2) for x in runs["baseline"]],
        "ingest_s": [round(x["wall_s"], 2) for x in runs["ingest"]],
        "baseline_best_s": round(best_b["wall_s"], 2), "ingest_best_s": round(best_i["wall_s"], 2),
        "ingest_per_scene_s": round(best_i["wall_s"] / len(archives), 3),
        # where the time goes: mean task time per scene, and ingest wall time not covered by scene tasks
        # (driver: ERA5 index, scan pass, slot allocation, GED per grid, STAC; plus scheduling)
        "baseline_task_mean_s": round(best_b["task_mean_s"], 3),
        "ingest_task_mean_s": round(best_i["task_mean_s"], 3),
        "ingest_outside_scene_tasks_s": round(best_i["wall_s"] - best_i["task_sum_s"] / args.workers, 2),
        "ratio_ingest_to_baseline": round(ratio, 2), "ratio_target": RATIO_TARGET,
        "ratio_ok": ratio <= RATIO_TARGET,
        "memory_n": mem_n, "memory_4n": mem_4n,
        "peak_rss_growth_4n_vs_n": round(growth, 3), "memory_tolerance": MEMORY_TOLERANCE,
        "memory_ok": abs(growth) <= MEMORY_TOLERANCE,
        # per-scene ingest time as the archive grows 4x onto the same tiles (each into a fresh cube)
        "per_scene_s_n": round(per_n, 3), "per_scene_s_4n": round(per_4n, 3),
        "per_scene_change_4n_vs_n": round(per_4n / per_n - 1, 3), "per_scene_tolerance": PER_SCENE_TOLERANCE,
        "per_scene_ok": abs(per_4n / per_n - 1) <= PER_SCENE_TOLERANCE,
        # the scene task alone (decode + write into its tiles), without the run's fixed costs that 4N amortises
        "scene_task_change_4n_vs_n": round(task_change, 3),
        "scene_task_ok": abs(task_change) <= PER_SCENE_TOLERANCE,
        "tile_px": DEFAULT_TILE_PX,
    }
    return result


def _table(r: dict[str, Any]) -> None:
    n, n4 = r["memory_n"], r["memory_4n"]
    rows = [
        ("baseline: read DN + write Zarr", f"{r['baseline_best_s']:.2f} s", f"{r['n_archives']} archives"),
        ("ingest", f"{r['ingest_best_s']:.2f} s", f"{r['ingest_per_scene_s']:.3f} s/scene"),
        ("mean scene task: ingest / baseline", f"{r['ingest_task_mean_s'] / r['baseline_task_mean_s']:.2f}",
         f"{r['ingest_task_mean_s']:.3f} s / {r['baseline_task_mean_s']:.3f} s"),
        ("ingest wall outside scene tasks", f"{r['ingest_outside_scene_tasks_s']:.2f} s",
         "ERA5 index, scans, slots, GED per grid, STAC, scheduling"),
        ("ratio ingest / baseline", f"{r['ratio_ingest_to_baseline']:.2f}",
         f"target <= {r['ratio_target']:g}: {'met' if r['ratio_ok'] else 'MISSED'}"),
        (f"peak worker RSS, N = {n['n_archives']}", f"{n['peak_rss_mb']:.0f} MB",
         f"idle {n['idle_rss_mb']:.0f} MB, cluster {n['cluster_process_peak_mb']:.0f} MB, {n['wall_s']:.1f} s"),
        (f"peak worker RSS, 4N = {n4['n_archives']}", f"{n4['peak_rss_mb']:.0f} MB",
         f"idle {n4['idle_rss_mb']:.0f} MB, cluster {n4['cluster_process_peak_mb']:.0f} MB, {n4['wall_s']:.1f} s"),
        ("peak growth 4N vs N", f"{100 * r['peak_rss_growth_4n_vs_n']:+.1f} %",
         f"target +-{100 * r['memory_tolerance']:.0f} %: {'met' if r['memory_ok'] else 'MISSED'}"),
        ("ingest time per scene, N -> 4N", f"{100 * r['per_scene_change_4n_vs_n']:+.1f} %",
         f"{r['per_scene_s_n']:.3f} -> {r['per_scene_s_4n']:.3f} s; target +-{100 * r['per_scene_tolerance']:.0f} %: "
         f"{'met' if r['per_scene_ok'] else 'MISSED'}"),
        ("scene task time, N -> 4N", f"{100 * r['scene_task_change_4n_vs_n']:+.1f} %",
         f"{r['memory_n']['scene_task_mean_s']:.3f} -> {r['memory_4n']['scene_task_mean_s']:.3f} s; target "
         f"+-{100 * r['per_scene_tolerance']:.0f} %: {'met' if r['scene_task_ok'] else 'MISSED'}"),
    ]
    rows += _delivered_rows(r["delivered"]) if "delivered" in r else []
    w0 = max(len(a) for a, _, _ in rows)
    print(f"\ningest benchmark, {r['workers']} workers x 1 thread, {r['machine']['cpus']} CPUs")
    for a, b, c in rows:
        print(f"  {a:<{w0}}  {b:>10}  {c}")


def _delivered_rows(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    f = d["floor_task_s"]
    return [
        ("delivered: floor (DN, RPC warp, Zarr)", f"{d['floor_best_s']:.2f} s",
         f"{d['n_archives']} .tar.gz; tasks: read {f['read_s']:.2f}, DEM {f['dem_s']:.2f}, warp {f['warp_s']:.2f} "
         f"(B7_B12 {f['warp_B7_B12_s']:.2f}, B1_B6 {f['warp_B1_B6_s']:.2f}), write {f['write_s']:.2f} s"),
        ("delivered: ingest (--dem)", f"{d['ingest_best_s']:.2f} s",
         f"tasks {d['ingest_task_s']:.2f} s, of which RPC warp {d['ingest_task_warp_s']:.2f} s"),
        ("delivered: ratio ingest / floor", f"{d['ratio_ingest_to_floor']:.2f}",
         f"target <= {d['ratio_target']:g}: {'met' if d['ratio_ok'] else 'MISSED'}"),
        ("delivered: warp share", f"{100 * d['warp_share_of_floor']:.0f} %",
         f"of the floor's task time; {100 * d['warp_share_of_ingest_tasks']:.0f} % of ingest's task time, "
         f"{100 * d['warp_share_of_ingest_wall']:.0f} % of its wall time"),
    ]


def _plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8), gridspec_kw={"width_ratios": [1, 2, 1.2]})
    ax[0].bar(["baseline\n(read DN, write Zarr)", "ingest"], [r["baseline_best_s"], r["ingest_best_s"]],
              color=["#999999", "#3b75af"])
    ax[0].axhline(RATIO_TARGET * r["baseline_best_s"], color="r", ls="--", lw=1, label=f"{RATIO_TARGET:g}x baseline")
    ax[0].set_ylabel(f"wall time (s), {r['n_archives']} archives")
    ax[0].set_title(f"map layout: ratio {r['ratio_ingest_to_baseline']:.2f}")
    ax[0].legend(fontsize=8)
    for key, color in (("memory_n", "#3b75af"), ("memory_4n", "#d9730d")):
        m = r[key]
        t = [p[0] for p in m["trace"]]
        ax[1].plot(t, [p[1] for p in m["trace"]], color=color, label=f"{m['n_archives']} archives")
    peak = r["memory_n"]["peak_rss_mb"]
    ax[1].axhspan(peak * (1 - MEMORY_TOLERANCE), peak * (1 + MEMORY_TOLERANCE), color="#3b75af", alpha=0.1,
                  label=f"peak(N) +-{MEMORY_TOLERANCE:.0%}")
    ax[1].set_xlabel("time since start of ingest (s)")
    ax[1].set_ylabel("max worker RSS (MB)")
    ax[1].set_title(f"map layout: peak growth x4 scenes: {100 * r['peak_rss_growth_4n_vs_n']:+.1f} %")
    ax[1].legend(fontsize=8)
    if "delivered" in r:
        _plot_delivered(ax[2], r["delivered"], r["workers"])
    else:
        ax[2].set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_delivered(ax: Any, d: dict[str, Any], workers: int) -> None:
    """Floor and ingest wall time of the delivered layout, each bar split by its tasks' shares of time."""
    f = d["floor_task_s"]
    parts = {"floor": [("read DN", f["read_s"]), ("DEM", f["dem_s"]), ("RPC warp", f["warp_s"]),
                       ("write Zarr", f["write_s"])],
             "ingest": [("RPC warp", d["ingest_task_warp_s"]),
                        ("rest of scene tasks", d["ingest_task_s"] - d["ingest_task_warp_s"])]}
    colors = {"read DN": "#999999", "DEM": "#bbbbbb", "RPC warp": "#d9730d", "write Zarr": "#666666",
              "rest of scene tasks": "#3b75af"}
    walls = {"floor": d["floor_best_s"], "ingest": d["ingest_best_s"]}
    seen = set()
    for x, (name, items) in enumerate(parts.items()):
        total = sum(v for _, v in items)
        bottom = 0.0
        for label, v in items:
            h = walls[name] * v / total
            ax.bar(x, h, bottom=bottom, color=colors[label], label=None if label in seen else label)
            seen.add(label)
            bottom += h
    ax.set_xticks([0, 1], ["floor\n(DN, RPC warp, Zarr)", "ingest\n(--dem)"])
    ax.axhline(d["ratio_target"] * d["floor_best_s"], color="r", ls="--", lw=1,
               label=f"{d['ratio_target']:g}x floor")
    ax.set_ylabel(f"wall time (s), {d['n_archives']} archives, {workers} workers")
    ax.set_title(f"delivered layout: ratio {d['ratio_ingest_to_floor']:.2f}")
    ax.legend(fontsize=7)


if __name__ == "__main__":
    main()
