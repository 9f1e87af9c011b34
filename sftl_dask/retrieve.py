"""Retrieval: scene cubes -> CF LST cubes, one Dask task per chunk.

The graph is explicit and small (one task per scene-cube chunk and time step, nothing else): a task
reads its chunk's inputs from the scene cube (and a 2-pixel halo of the cloud mask), runs
:func:`retrieve_block` and writes its chunk of the LST store with a region write aligned to the
chunks, then returns a few counts. The model travels as a :class:`~sftl_dask.models.retriever.ModelRef`
(path + sha256) and is loaded once per worker process. The driver only plans: which time steps are
new, the LST stores' metadata (written once, ``append_slots``), and, after the tasks, which time
steps are complete (``retrieve_ok``).

:func:`retrieve_block` is the whole per-pixel science, a pure function of numpy arrays: the pixels
that are cloudy, not covered or missing ancillary data never reach the model; the others go through
THE feature function and the model in micro-batches of cache size (8,192 pixels on CPU), drawn batch region
by batch region of a grid fixed to the image (the chunk grid), so that a chunked retrieval and a whole-array one
give the same bits.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.highlevelgraph import HighLevelGraph
from distributed import KilledWorker, futures_of, get_worker
from numpy.typing import NDArray

from sftl_dask.cluster import completed, in_worker
from sftl_dask.features import RANGE_GROUPS, REQUIRED_INPUTS, compute_features, inputs_for
from sftl_dask.geo import GeoBox, TileScheme, store_geometry
from sftl_dask.io.cube import (
    CHUNK,
    COVERAGE_VAR,
    VALID_PX_VAR,
    CoverageError,
    append_slots,
    check_coverage,
    coverage_shape,
    mark_slot,
    read_coverage,
    read_slots,
    write_block,
    write_log,
)
from sftl_dask.io.location import (
    Location,
    absolute,
    exists,
    is_empty_folder,
    is_file,
    is_url,
    is_zarr_store,
    location,
    remove,
    zarr_store,
)
from sftl_dask.io.lst import (
    CLOUD_ADJACENT_PX,
    LST_OK_VAR,
    LST_VARIABLES,
    QC_FLAGS,
    RANGE_BITS,
    UNCERTAINTY_CLASS_SHIFT,
)
from sftl_dask.io.stac import write_lst_stac
from sftl_dask.io.stores import CubeRoot
from sftl_dask.models.error_model import UNCERTAINTY_CLASS_EDGES_K, systematic_share
from sftl_dask.models.retriever import ModelRef, Retriever, cached_retriever, model_digest
from sftl_dask.staging import check_unlocked, write_lock
from sftl_dask.version import __version__

__all__ = ["DEVICE_CHOICES", "GPU_ROUTED", "RetrieveError", "check_retrieval", "retrieve", "retrieve_block"]

#: ``--device`` choices: ``auto`` runs on CUDA where the worker has a GPU, else on CPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Models sent only to GPU workers (``resources={"GPU": 1}``) when the cluster has some and the
#: device is ``auto`` or ``cuda``: the feature-token Transformer costs 25-40x the MLP per pixel on CPU and
#: the CNN ~9x (benchmarks/results/retrieve.json, shared/reference/PERF.md), so a CPU worker holding their
#: chunks would hold the run back. The MLP and the split-window go everywhere; trees have no GPU path.
GPU_ROUTED = ("trf", "cnn")

_UNIT_ALIASES = {"deg": {"deg", "degree", "degrees"}, "K": {"K", "kelvin"}, "g cm-2": {"g cm-2", "g cm^-2"},
                 "1": {"1", ""}}
_MASK_VARS = ("cloud", "ancillary_missing")


class RetrieveError(ValueError):
    """Bad input to a retrieval found before any work: a cube, model, output path or device that cannot be used."""


# ---------------------------------------------------------------------------------------------
# the per-pixel science of one block


def retrieve_block(
    inputs: Mapping[str, NDArray[Any]],
    retriever: Retriever,
    *,
    cloud: NDArray[Any],
    cloud_offset: tuple[int, int] = (0, 0),
    origin: tuple[int, int] = (0, 0),
    batch_region: tuple[int, int] = (CHUNK, CHUNK),
) -> dict[str, Any]:
    """LST, its uncertainty and QC flags of one block of one time step.

    Parameters
    ----------
    inputs : mapping
        ``(ny, nx)`` arrays of the scene cube: the inputs of ``retriever.features``
        (:func:`~sftl_dask.features.inputs_for`: BT in K, ``wvc`` g cm-2, emissivities), plus ``vza``
        (deg) and ``ancillary_missing`` (0/1).
    retriever : Retriever
        The model.
    cloud : numpy.ndarray
        The cloud mask (0/1) of the block with a halo of up to :data:`~sftl_dask.io.lst.CLOUD_ADJACENT_PX`
        pixels on each side (less at the grid's edge, where nothing lies beyond).
    cloud_offset : (int, int)
        Rows and columns of halo above and left of the block in ``cloud``.
    origin : (int, int)
        The block's first row and column in the grid.
    batch_region : (int, int)
        Rows and columns of the batch regions, fixed to the grid, that micro-batches are drawn from: the
        produced pixels of a region, in raster order, cut into batches of ``retriever.batch_size``. With
        regions equal to the chunks (the default), every micro-batch is full but the last of a chunk, and
        a chunked retrieval equals a whole-array one bit for bit.

    Returns
    -------
    dict
        ``lst`` and ``lst_uncertainty`` (float32 K, NaN where not produced), ``qc`` (uint16 bit flags,
        :data:`~sftl_dask.io.lst.QC_FLAGS`), ``vza`` (float32 deg) and ``counts`` (pixels, produced,
        cloud, not_covered, missing_ancillary).

    Raises
    ------
    ValueError
        If an input is missing or the arrays' shapes disagree.
    """
    need = inputs_for(retriever.features)
    missing = [k for k in (*need, "vza", "ancillary_missing") if k not in inputs]
    if missing:
        raise ValueError(f"retrieve_block: missing input(s) {', '.join(missing)}")
    vza = np.asarray(inputs["vza"], dtype=np.float32)
    shape = vza.shape
    oy, ox = cloud_offset
    if any(np.shape(inputs[k]) != shape for k in need) or cloud.shape[0] < oy + shape[0] or \
            cloud.shape[1] < ox + shape[1]:
        raise ValueError(f"retrieve_block: inputs and cloud mask of different shapes (block {shape})")
    observed, ancillary = _observed_and_ancillary(inputs, need)
    cloud = np.asarray(cloud) != 0
    cloudy = observed & cloud[oy:oy + shape[0], ox:ox + shape[1]]
    produce = observed & ancillary
    produce &= ~cloudy

    lst = np.full(shape, np.nan, dtype=np.float32)
    unc = np.full(shape, np.nan, dtype=np.float32)
    # uncertainty class, bits 8-9: 3 (> 3 K) until a pixel is produced
    qc = np.full(shape, 3 << UNCERTAINTY_CLASS_SHIFT, dtype=np.uint16)
    n_produced = np.count_nonzero(produce)
    if n_produced:
        _predict_batch_regions(inputs, need, produce, retriever, lst, unc, qc, origin, batch_region)

    not_covered = ~observed
    missing = np.logical_and(observed, ~ancillary, out=ancillary)  # ancillary is not needed any more
    counts = {"pixels": int(produce.size), "produced": n_produced, "cloud": np.count_nonzero(cloudy),
              "not_covered": np.count_nonzero(not_covered), "missing_ancillary": np.count_nonzero(missing)}
    flags = {"cloud": cloudy, "not_covered": not_covered, "missing_ancillary": missing}
    if n_produced and cloud.any():  # no cloud in the halo: no pixel lies near one
        adjacent = _dilate(cloud, CLOUD_ADJACENT_PX)[oy:oy + shape[0], ox:ox + shape[1]]
        flags["cloud_adjacent"] = np.logical_and(adjacent, produce, out=adjacent)
    _set_flags(qc, flags, counts)
    return {"lst": lst, "lst_uncertainty": unc, "qc": qc, "vza": vza, "counts": counts}


def _set_flags(qc: NDArray[np.uint16], flags: Mapping[str, NDArray[np.bool_]], counts: Mapping[str, int]) -> None:
    """Set each QC flag (:data:`QC_FLAGS` name) where its mask is true; ``counts`` (pixels, and per flag where
    known) spares the masks that are all false or all true their per-pixel pass."""
    for name, where in flags.items():
        n = counts.get(name, -1)
        if n == counts["pixels"]:
            qc |= np.uint16(QC_FLAGS[name][0])  # every pixel (a chunk the swath does not cover)
        elif n:
            np.bitwise_or(qc, np.uint16(QC_FLAGS[name][0]), out=qc, where=where)


def _observed_and_ancillary(inputs: Mapping[str, NDArray[Any]], need: Sequence[str]
                            ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Where the thermal observation is valid (BTs and view angle in range) and where the ancillary inputs are."""
    tmp: NDArray[np.bool_] | None = None

    def valid(name: str, into: NDArray[np.bool_] | None = None) -> NDArray[np.bool_]:
        """``into & (name in its valid range)``, in place (False for NaN)."""
        nonlocal tmp
        lo, hi, _ = REQUIRED_INPUTS[name]
        a = np.asarray(inputs[name])
        if into is None:
            return np.greater_equal(a, lo) & np.less_equal(a, hi)
        tmp = np.greater_equal(a, lo, out=tmp)
        into &= tmp
        into &= np.less_equal(a, hi, out=tmp)
        return into

    observed = valid("vza")
    for k in need:
        if k.startswith("bt_"):
            valid(k, observed)
    ancillary = np.asarray(inputs["ancillary_missing"]) == 0
    for k in need:
        if not k.startswith("bt_"):
            valid(k, ancillary)
    return observed, ancillary


def _predict_batch_regions(inputs: Mapping[str, NDArray[Any]], need: Sequence[str], produce: NDArray[np.bool_],
                           retriever: Retriever, lst: NDArray[np.float32], unc: NDArray[np.float32],
                           qc: NDArray[np.uint16], origin: tuple[int, int], batch_region: tuple[int, int]) -> None:
    """Run the model on the produced pixels, batch region by batch region of the grid, in cache-sized micro-batches.

    Pixels are gathered by flat index (``take``: 3-4x faster than boolean indexing here) and
    scattered back the same way; the uncertainty class and the range flags go into ``qc``.
    """
    ty, tx = batch_region
    ny, nx = produce.shape
    y0, x0 = origin
    flat_in = {k: np.ravel(inputs[k]) for k in (*need, "vza")}
    flat_lst, flat_unc, flat_qc = lst.reshape(-1), unc.reshape(-1), qc.reshape(-1)
    # the pre-training range, checked on the inputs the model uses (and the view angle)
    ranges = [(np.uint16(RANGE_BITS[g]), [k for k in RANGE_GROUPS[g] if k in flat_in], np.float32(lo), np.float32(hi))
              for g, (lo, hi) in retriever.training_range.items()]
    for gy in range(y0 - y0 % ty, y0 + ny, ty):
        r0, r1 = max(gy, y0) - y0, min(gy + ty, y0 + ny) - y0
        for gx in range(x0 - x0 % tx, x0 + nx, tx):
            c0, c1 = max(gx, x0) - x0, min(gx + tx, x0 + nx) - x0
            if c1 - c0 == nx:  # the region spans the block's rows: its flat indices are the block's, offset
                in_region = np.flatnonzero(produce[r0:r1])
                in_region += r0 * nx
            else:
                iy, ix = np.divmod(np.flatnonzero(produce[r0:r1, c0:c1]), c1 - c0)
                in_region = (iy + r0) * nx + (ix + c0)
            for b in range(0, in_region.size, retriever.batch_size):
                idx = in_region[b:b + retriever.batch_size]
                sub = {k: v.take(idx) for k, v in flat_in.items()}
                t, s = retriever.predict(compute_features(sub, names=retriever.features))
                flat_lst[idx] = t
                flat_unc[idx] = s
                flat_qc[idx] = _qc_bits(s, sub, ranges)


def _qc_bits(sigma: NDArray[np.float32], sub: Mapping[str, NDArray[Any]],
             ranges: Sequence[tuple[np.uint16, Sequence[str], np.float32, np.float32]]) -> NDArray[np.uint16]:
    """QC bits of produced pixels: the uncertainty class of ``sigma`` (K) and the pre-training range flags.

    The class is the number of :data:`UNCERTAINTY_CLASS_EDGES_K` below sigma (NaN: 3), as
    ``searchsorted(edges, sigma, side="left")``, counted with one comparison per edge; a range group whose inputs
    all lie inside (their extremes tell) costs no per-pixel work."""
    below = np.zeros(sigma.shape, dtype=np.uint8)
    for e in UNCERTAINTY_CLASS_EDGES_K:
        below += sigma <= np.float32(e)  # False for NaN
    bits = np.uint8(len(UNCERTAINTY_CLASS_EDGES_K)) - below
    bits = bits.astype(np.uint16)
    bits <<= UNCERTAINTY_CLASS_SHIFT
    for bit, names, lo, hi in ranges:
        inside = [k for k in names if sub[k].size and lo <= sub[k].min() and sub[k].max() <= hi]
        for k in names:
            if k not in inside:
                outside = sub[k] < lo
                outside |= sub[k] > hi
                np.bitwise_or(bits, bit, out=bits, where=outside)
    return bits


def _dilate(mask: NDArray[np.bool_], radius: int) -> NDArray[np.bool_]:
    """Square (Chebyshev) dilation by ``radius`` pixels; nothing lies beyond the array."""
    rows = mask.copy()
    for d in range(1, radius + 1):  # separable: the rows within radius, then the columns
        rows[d:] |= mask[:-d]
        rows[:-d] |= mask[d:]
    out = rows.copy()
    for d in range(1, radius + 1):
        out[:, d:] |= rows[:, :-d]
        out[:, :-d] |= rows[:, d:]
    return out


# ---------------------------------------------------------------------------------------------
# one task


@dataclass(frozen=True)
class _Job:
    """One task: a chunk window of one time step, from a scene-cube store to an LST store."""

    cube: str
    out: str
    t_cube: int
    t_out: int
    window: tuple[int, int, int, int]  # y0, y1, x0, x1
    grid_shape: tuple[int, int]
    inputs: tuple[str, ...]
    run: str  # the run's token: cached store handles never outlive a run (stores grow between runs)
    batch_region: tuple[int, int] = (CHUNK, CHUNK)  # micro-batches come from batch regions equal to the chunks
    #: neighbouring tiles holding the same scene, whose cloud mask the halo reads across the tile's edge:
    #: (store, time index, row and column of the neighbour's origin in this tile's pixels)
    halo: tuple[tuple[str, int, int, int], ...] = ()


@lru_cache(maxsize=256)
def _array(path: str, name: str, mode: str, run: str) -> Any:
    """An array of a store, opened once per process and run (opening reads its metadata: ~2 ms)."""
    return zarr.open_array(zarr_store(path), path=name, mode=mode)


def _pin_torch_threads() -> None:
    """Inside a Dask worker running a torch model: one torch thread per task slot, so the worker's tasks
    use its threads in all, never more (oversubscription costs 3x, shared/reference/PERF.md)."""
    if "torch" not in sys.modules or not in_worker():  # trees and the split-window never load torch; outside a
        return  # worker the caller decided
    import torch  # lazy: importing it takes ~4 s (measured) and tree or split-window runs never need it

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _local_device(device: str) -> str:
    if device != "auto":
        return device
    import torch  # lazy: importing it takes ~4 s (measured) and tree or split-window runs never need it

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run_job(ref: ModelRef, job: _Job) -> dict[str, Any]:
    """Read, retrieve and write one chunk (the task); returns its counts and timings."""
    tl = time.perf_counter()
    ref = replace(ref, device=_local_device(ref.device))
    retriever = cached_retriever(ref)  # once per process: the first task of a worker pays for it
    _pin_torch_threads()
    t0 = time.perf_counter()
    data, cloud, offset = _read_inputs(job)
    t1 = time.perf_counter()
    res = retrieve_block(data, retriever, cloud=cloud, cloud_offset=offset, origin=(job.window[0], job.window[2]),
                         batch_region=job.batch_region)
    t2 = time.perf_counter()
    _write_outputs(job, {k: res[k] for k in LST_VARIABLES})
    t3 = time.perf_counter()
    return {**res["counts"], "load_s": t0 - tl, "read_s": t1 - t0, "compute_s": t2 - t1, "write_s": t3 - t2,
            "device": ref.device, "worker": _worker_name()}


def _read_inputs(job: _Job) -> tuple[dict[str, NDArray[Any]], NDArray[Any], tuple[int, int]]:
    """A job's input chunks, and its cloud mask with a halo and the halo's offset, read concurrently (zarr's
    per-read overhead overlaps)."""
    y0, y1, x0, x1 = job.window
    ny, nx = job.grid_shape
    m = CLOUD_ADJACENT_PX
    ya, xa = max(0, y0 - m), max(0, x0 - m)
    halo = (job.t_cube, slice(ya, min(ny, y1 + m)), slice(xa, min(nx, x1 + m)))
    sel = {k: (job.t_cube, slice(y0, y1), slice(x0, x1)) for k in job.inputs} | {"cloud": halo}
    arrays = _io_pool().map(lambda k: _array(job.cube, k, "r", job.run)[sel[k]], sel)
    data = dict(zip(sel, arrays, strict=True))
    cloud = data.pop("cloud")
    if not job.halo:
        return data, cloud, (y0 - ya, x0 - xa)
    # at a tile's edge: the halo continues into the neighbouring tiles that hold the same scene
    full = np.zeros((y1 - y0 + 2 * m, x1 - x0 + 2 * m), dtype=cloud.dtype)
    full[ya - (y0 - m): ya - (y0 - m) + cloud.shape[0], xa - (x0 - m): xa - (x0 - m) + cloud.shape[1]] = cloud
    for store, t, oy, ox in job.halo:  # rows/cols of the halo in the neighbour's own pixels
        ra, rb = max(y0 - m - oy, 0), min(y1 + m - oy, ny)
        ca, cb = max(x0 - m - ox, 0), min(x1 + m - ox, nx)
        if ra < rb and ca < cb:
            part = _array(store, "cloud", "r", job.run)[t, ra:rb, ca:cb]
            full[ra + oy - (y0 - m): rb + oy - (y0 - m), ca + ox - (x0 - m): cb + ox - (x0 - m)] = part
    return data, full, (m, m)


def _write_outputs(job: _Job, data: Mapping[str, NDArray[Any]]) -> None:
    """Region writes of a job's output chunks, concurrently."""
    arrays = {k: _array(job.out, k, "r+", job.run) for k in data}
    list(_io_pool().map(lambda k: write_block(arrays, job.t_out, job.window, {k: data[k]}), data))


@lru_cache(maxsize=1)
def _io_pool() -> Any:
    return ThreadPoolExecutor(max_workers=16, thread_name_prefix="sftl-io")


def _worker_name() -> str:
    try:
        return str(get_worker().address)
    except ValueError:
        return "local"


# ---------------------------------------------------------------------------------------------
# planning


def _units_match(expected: str, got: Any) -> bool:
    return str(got) in _UNIT_ALIASES.get(expected, {expected})


def _check_cube(store: Location, need: Sequence[str]) -> tuple[GeoBox, list[dict[str, Any]], tuple[int, int],
                                                                NDArray[np.int32] | None, dict[str, tuple[str, str]]]:
    """The grid, complete slots holding data, chunking and chunk-coverage index of a scene-cube store, and its
    products (scene id -> product path and checksum, every complete slot: what the STAC items link to); refuses
    one the model cannot use.

    Each slot carries its row of the index (``coverage``: valid pixels per chunk; None in stores written before
    the index, whose chunks are then all retrieved)."""
    try:
        grid, slots = read_slots(store)
    except (KeyError, ValueError, OSError) as exc:
        raise RetrieveError(f"{store}: not a readable scene cube ({type(exc).__name__}: {exc})") from None
    group = zarr.open_group(zarr_store(store), mode="r")
    names = set(group.array_keys())
    for v in (*need, "vza", *_MASK_VARS):
        if v not in names:
            raise RetrieveError(f"{store}: has no variable {v!r}, which the model needs")
        unit = REQUIRED_INPUTS[v][2] if v in REQUIRED_INPUTS else None
        got = group[v].attrs.get("units")
        if unit is not None and not _units_match(unit, got):
            raise RetrieveError(f"{store}: {v} is in {got!r}, the model's features take {unit!r}")
    _, cy, cx = group["bt_10_80"].chunks if "bt_10_80" in names else group["vza"].chunks
    index = read_coverage(store)
    for s in slots:
        s["coverage"] = None if index is None or (index[s["index"]] < 0).any() else index[s["index"]]
    # a slot whose scene wrote no valid pixel here (only its footprint's no-data part touched the tile) has
    # nothing to retrieve: no LST time step for it (VALID_PX_VAR; -1 or absent in older stores: retrieved)
    products = {s["scene_id"]: (s["source"], s["checksum"]) for s in slots if s["ingest_ok"]}
    return grid, [s for s in slots if s["ingest_ok"] and s.get(VALID_PX_VAR, -1) != 0
                  and (s["coverage"] is None or s["coverage"].any())], (cy, cx), index, products


def _pairs(cube: Location, out: Location) -> list[tuple[Location, Location]]:
    """(scene-cube store, LST store) pairs: a store maps to ``out``, a root's stores to ``out/<name>``."""
    root = CubeRoot(cube)
    if not root.is_store and not root.stores():
        raise RetrieveError(f"{cube}: no scene cube here (neither a Zarr store nor a folder of them)")
    return root.pairs(out)


def _check_output(out: Location, source: Location, grid: GeoBox, ident: Mapping[str, str], overwrite: bool
                  ) -> str:
    """What to do with an existing output store: ``"new"``, ``"append"`` or ``"replace"``; refuse others."""
    if not exists(out):
        return "new"
    if not is_zarr_store(out):
        if is_empty_folder(out):
            return "new"
        raise RetrieveError(f"{out}: exists and is not an LST store; refusing to write there")
    attrs = dict(zarr.open_group(zarr_store(out), mode="r").attrs)
    if attrs.get("sftl_product") != "lst":
        raise RetrieveError(f"{out}: holds a Zarr store that is not an sftl LST cube; refusing to write there")
    if _grid_of(attrs) != grid or attrs.get("source_cube") != str(source):
        if overwrite:
            return "replace"
        raise RetrieveError(f"{out}: holds the LST of another cube ({attrs.get('source_cube')}); "
                            "pass --overwrite to replace it")
    for k, v in ident.items():
        if attrs.get(k) != v:
            if overwrite:
                return "replace"
            raise RetrieveError(f"{out}: holds LST made with another model ({k} {attrs.get(k)!r}, now {v!r}); "
                                "pass --overwrite to replace it")
    return "append"  # the same cube and model: only the time steps not yet done (with --overwrite too)


def _grid_of(attrs: Mapping[str, Any]) -> GeoBox | None:
    """The GeoBox an existing store records, or None when it records none (or an incomplete one)."""
    try:
        return store_geometry(attrs)[0]
    except ValueError:
        return None


def _cluster_devices(client: Any) -> dict[str, dict[str, Any]]:
    """Per worker: whether torch sees a CUDA GPU, and the worker's declared resources."""
    def probe() -> bool:
        try:
            import torch  # lazy: importing it takes ~4 s (measured) and tree or split-window runs never need it
        except ImportError:  # pragma: no cover - torch is a dependency
            return False
        return bool(torch.cuda.is_available())

    cuda = client.run(probe)
    try:
        info = client.scheduler_info(n_workers=-1)["workers"]  # all of them (the default lists five)
    except TypeError:  # distributed before 2025 lists every worker and takes no n_workers
        info = client.scheduler_info()["workers"]
    return {w: {"cuda": bool(cuda.get(w, False)), "resources": dict(info.get(w, {}).get("resources") or {})}
            for w in info}


def _route(device: str, kind: str, client: Any) -> tuple[str, dict[str, float] | None]:
    """The device the tasks ask for and the worker resources they need; refuse a device nobody has."""
    torch_model = kind in ("dnn", "trf", "cnn")
    if device == "cuda" and not torch_model:
        raise RetrieveError(f"--device cuda: {kind} models run on CPU only; use --device cpu or auto")
    if device == "cpu" or not torch_model:
        return "cpu", None
    if client is None:
        import torch  # lazy: importing it takes ~4 s (measured) and tree or split-window runs never need it

        if device == "cuda" and not torch.cuda.is_available():
            raise RetrieveError("--device cuda: this machine has no CUDA GPU that torch can use")
        return device, None
    workers = _cluster_devices(client)
    gpu_res = [w for w, i in workers.items() if i["resources"].get("GPU", 0) >= 1]
    cuda = [w for w, i in workers.items() if i["cuda"]]
    if device == "cuda":
        if not cuda:
            raise RetrieveError(f"--device cuda: no worker has a CUDA GPU ({len(workers)} worker(s) checked)")
        if gpu_res:
            return "cuda", {"GPU": 1}
        if len(cuda) < len(workers):
            raise RetrieveError(f"--device cuda: {len(workers) - len(cuda)} worker(s) have no GPU; start GPU workers "
                                "with --resources GPU=1 so that the model tasks go to them")
        return "cuda", None
    if kind in GPU_ROUTED and gpu_res and any(workers[w]["cuda"] for w in gpu_res):
        return "auto", {"GPU": 1}
    return "auto", None


# ---------------------------------------------------------------------------------------------
# the run


def retrieve(
    cube: str | os.PathLike[str],
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    client: Any = None,
    device: str = "auto",
    precision: str = "fp32",
    overwrite: bool = False,
    resources: Mapping[str, float] | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Retrieve LST cubes from scene cubes: one LST store per scene-cube store, new time steps only.

    Why this is long: only its signature and this text; its steps are :func:`_plan`, :func:`_chunk_jobs`,
    :func:`_store_jobs` (per store, in :func:`_execute`), :func:`_mark_store` and :func:`_record_run`.

    Parameters
    ----------
    cube : path
        A scene-cube store, or a cube root holding one store per tile (``sftl ingest --cube``).
    model : path
        A model artifact directory (``sftl train``) or split-window coefficients (``sftl fit-sw``).
    out : path
        The LST store (for a store) or root (for a cube root: ``out/<tile>.zarr`` per store).
    client : distributed.Client, optional
        Where the tasks run; without one they run in this process on ``threads`` threads.
    device : {"auto", "cpu", "cuda"}
        ``auto`` runs torch models on CUDA where the worker has a GPU, else CPU.
    precision : {"fp32", "bf16"}
        Arithmetic of torch models; ``bf16`` with a tree or split-window model is refused (RetrieveError).
    overwrite : bool
        Replace LST stores made from another cube or with another model (never anything else).
    resources : mapping, optional
        Worker resources the model tasks need (default: ``{"GPU": 1}`` for :data:`GPU_ROUTED` models
        when the device allows and the cluster declares GPUs, else none).
    threads : int, optional
        Without a client: tasks at once in this process (default: the CPUs available).
    progress : callable, optional
        ``progress(done, total)`` in tasks.
    command : str, optional
        The command line recorded in the stores' ``history``.

    Returns
    -------
    dict
        ``stores``, ``retrieved`` (time steps), ``skipped`` (already retrieved), ``failed`` (one entry
        per time step that did not complete: store, scene id, chunks and reason), ``chunks``,
        ``pixels``, ``produced``, ``seconds``, ``px_per_s`` and the summed task timings.

    Raises
    ------
    RetrieveError
        Before any output is touched: a cube without a variable the model needs or with other units,
        an output holding something else or another model's LST (without ``overwrite``), a device
        no worker has.
    ArtifactError
        A tampered or malformed model artifact.
    StoreBusyError
        If another process is writing ``out`` (holds its write lock).
    """
    t_start = time.perf_counter()
    if device not in DEVICE_CHOICES:
        raise RetrieveError(f"--device {device!r} unknown; choose from {', '.join(DEVICE_CHOICES)}")
    out = location(out)
    with write_lock(out, "sftl retrieve"):  # one writer per output: a second run is refused (object stores: none)
        retriever, plans, ident = _plan(cube, model, out, precision=precision, overwrite=overwrite)
        model = Path(model)
        info = retriever.describe()
        if info.get("uncertainty_calibration", "").startswith("uncalibrated"):  # an older card, or the split-window
            warnings.warn(f"{model}: lst_uncertainty is {info['uncertainty_calibration']}: not calibrated against "
                          "in situ LST (docs/uncertainty.md)", stacklevel=2)
        need = inputs_for(retriever.features)
        route_device, route_res = _route(device, info["model_kind"], client)
        if resources is not None:
            route_res = dict(resources) or None
        ref = ModelRef(str(model.resolve()), retriever.digest, route_device, precision)
        when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        history = f"{when} {command or 'sftl_dask.retrieve.retrieve'} (sftl-dask {__version__})"
        by_tile = {Path(p["cube"]).name.removesuffix(".zarr"): p for p in plans}
        inputs, run = (*need, "vza", "ancillary_missing"), uuid.uuid4().hex

        def prepare(plan: dict[str, Any]) -> list[_Job]:
            return _store_jobs(plan, by_tile, retriever, info, ident, history, inputs, run)

        with _Tasks(ref, client, route_res, threads) as tasks:
            done = _execute(plans, prepare, tasks, progress)
        summary = _summary(plans, done, time.perf_counter() - t_start, route_res, info)
        _record_run(out, plans, summary, retriever.digest, history, command)
        return summary


def _summary(plans: Sequence[Mapping[str, Any]], done: _Done, seconds: float,
             resources: Mapping[str, float] | None, model: Mapping[str, str]) -> dict[str, Any]:
    """What :func:`retrieve` returns: counts, timings (s) and the tasks' summed counts and timings."""
    counted = ("pixels", "produced", "cloud", "not_covered", "missing_ancillary", "load_s", "read_s", "compute_s",
               "write_s")
    results = done.results
    tot = {k: sum(r[k] for r in results) for k in counted}
    return {
        "stores": [str(p["out"]) for p in plans if p["todo"] or p["action"] != "new"], "retrieved": done.retrieved,
        "skipped": sum(p["skipped"] for p in plans),
        "failed": done.failed, "chunks": len(done.jobs), "seconds": seconds, "tasks_s": done.tasks_s,
        "px_per_s": tot["pixels"] / seconds if done.jobs else 0.0, **tot,
        "workers": sorted({r["worker"] for r in results}), "devices": sorted({r["device"] for r in results}),
        "resources": dict(resources or {}), "model": model,
    }


def _record_run(out: Location, plans: Sequence[Mapping[str, Any]], summary: dict[str, Any], model_sha256: str,
                history: str, command: str | None) -> None:
    """After a run: its line in a root's ``retrieve_log.jsonl``, and STAC items of what it retrieved.

    ``summary["stac"]`` is set to the STAC folder where items were written.
    """
    if summary["chunks"] and len(plans) and plans[0]["out"] != out:  # a root of LST stores: one log line per run
        write_log(out, [{"time": history.split(" ")[0], "command": command or "", "model_sha256": model_sha256,
                         **{k: summary[k] for k in ("retrieved", "skipped", "failed", "chunks", "pixels",
                                                    "produced", "seconds")}}], name="retrieve_log.jsonl")
    if summary["retrieved"] and not is_url(out):  # no STAC on object stores yet (write_scene_stac says why)
        # <out>/stac for a root; <name>_stac beside a single store; the scene cubes' products as read by _plan
        summary["stac"] = str(write_lst_stac(out, {str(p["cube"]): p["products"] for p in plans}))


def _chunk_jobs(plans: list[dict[str, Any]], retriever: Retriever, info: Mapping[str, str],
                ident: Mapping[str, str], history: str, inputs: tuple[str, ...], run: str
                ) -> tuple[list[_Job], list[tuple[int, int]]]:
    """Prepare every plan's LST store and list its jobs (:func:`_store_jobs`), all before any task runs (what
    ``benchmarks/bench_retrieve.py``'s I/O floor times the tasks of).

    Returns the jobs and, per job, its (plan, LST time slot).
    """
    by_tile = {Path(p["cube"]).name.removesuffix(".zarr"): p for p in plans}
    jobs: list[_Job] = []
    slot_of: list[tuple[int, int]] = []
    for i, plan in enumerate(plans):
        if plan["todo"]:
            some = _store_jobs(plan, by_tile, retriever, info, ident, history, inputs, run)
            jobs += some
            slot_of += [(i, job.t_out) for job in some]
    return jobs, slot_of


def _store_jobs(plan: dict[str, Any], by_tile: Mapping[str, Mapping[str, Any]], retriever: Retriever,
                info: Mapping[str, str], ident: Mapping[str, str], history: str, inputs: tuple[str, ...], run: str
                ) -> list[_Job]:
    """Prepare a plan's LST store (replace, append slots: its metadata, in one write) and list one job per chunk
    holding data and time step. Sets the plan's ``slots`` (LST time slot per step to do) and ``indexed``."""
    dst: Location = plan["out"]
    if plan["action"] == "replace":
        remove(dst)
        plan["action"] = "new"
    t_out = plan["slots"] = _lst_slots(dst, plan, retriever, info, ident, history)
    # an LST store with the index reads its chunks never written as not covered: only chunks holding data are
    # planned. One written before the index existed (qc without that fill) has every chunk written, as then.
    plan["indexed"] = COVERAGE_VAR in zarr.open_group(zarr_store(dst), mode="r")
    grid: GeoBox = plan["grid"]
    cy, cx = plan["chunks"]
    around = _neighbours(plan, by_tile)
    jobs = []
    for s, t in zip(plan["todo"], t_out, strict=True):
        cover = s["coverage"] if plan["indexed"] else None
        for y0 in range(0, grid.height, cy):
            for x0 in range(0, grid.width, cx):
                if cover is not None and not cover[y0 // cy, x0 // cx]:
                    continue  # the scene wrote nothing there: the chunk stays fill (not covered)
                window = (y0, min(y0 + cy, grid.height), x0, min(x0 + cx, grid.width))
                jobs.append(_Job(str(plan["cube"]), str(dst), int(s["index"]), int(t), window,
                                 (grid.height, grid.width), inputs, run, (cy, cx),
                                 _halo(window, grid, s["scene_id"], around)))
    return jobs


def _mark_store(i: int, plan: Mapping[str, Any], jobs: Sequence[_Job], slot_of: Sequence[tuple[int, int]],
                errors: Mapping[int, str], results: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Mark plan ``i``'s time steps all of whose chunks were written (one write per array of its store, after
    every task of the store has ended: data before the marker); its failed steps (with a reason) and the count
    done. ``errors`` and ``results`` may hold other stores' jobs too."""
    failed_chunks: dict[int, list[str]] = {}
    for j, err in errors.items():
        if slot_of[j][0] == i:
            failed_chunks.setdefault(slot_of[j][1], []).append(f"chunk {jobs[j].window}: {err}")
    failed, done_t, done_sum = [], [], []
    for s, t in zip(plan["todo"], plan["slots"], strict=True):
        problems = failed_chunks.get(t)
        if problems:
            failed.append({"store": str(plan["out"]), "scene_id": s["scene_id"],
                           "chunks_failed": len(problems), "reason": problems[0]})
        else:
            done_t.append(t)
            done_sum.append(s["checksum"])
    cover = None
    if done_t and plan["indexed"]:
        observed = _observed_per_chunk(i, plan, jobs, slot_of, results)
        cover = np.stack([observed[t] for t in done_t])
    mark_slot(plan["out"], done_t, LST_OK_VAR, checksum=done_sum, coverage=cover)
    return failed, len(done_t)


def _observed_per_chunk(i: int, plan: Mapping[str, Any], jobs: Sequence[_Job], slot_of: Sequence[tuple[int, int]],
                        results: Sequence[Mapping[str, Any]]) -> dict[int, NDArray[np.int32]]:
    """Plan ``i``'s LST store's chunk-coverage index of this run's steps, by LST slot: observed pixels (produced
    or not) per chunk, from its jobs' ``results`` (other stores' are left out)."""
    grid, (cy, cx) = plan["grid"], plan["chunks"]
    out = {t: np.zeros(coverage_shape((grid.height, grid.width), (cy, cx)), dtype=np.int32)
           for p, t in set(slot_of) if p == i}
    for r in results:
        j = r["job"]
        p, t = slot_of[j]
        if p == i:
            out[t][jobs[j].window[0] // cy, jobs[j].window[2] // cx] = r["pixels"] - r["not_covered"]
    return out


def _neighbours(plan: Mapping[str, Any], by_tile: Mapping[str, Mapping[str, Any]]
                ) -> dict[tuple[int, int], Mapping[str, Any]]:
    """The plans of the (up to 8) tiles around a plan's tile, by (row step, column step); none for a non-tile."""
    try:
        around = TileScheme.neighbours(Path(plan["cube"]).name.removesuffix(".zarr"))
    except ValueError:
        return {}
    return {step: by_tile[n] for step, n in around.items()
            if n in by_tile and by_tile[n]["grid"].width == plan["grid"].width}


def _halo(window: tuple[int, int, int, int], grid: GeoBox, scene_id: str,
          around: Mapping[tuple[int, int], Mapping[str, Any]]) -> tuple[tuple[str, int, int, int], ...]:
    """Where a chunk's cloud halo reaches into neighbouring tiles holding the same scene."""
    y0, y1, x0, x1 = window
    m = CLOUD_ADJACENT_PX
    out = []
    for (dr, dc), other in around.items():
        if (dr < 0 and y0 >= m) or (dr > 0 and y1 <= grid.height - m) or (dc < 0 and x0 >= m) \
                or (dc > 0 and x1 <= grid.width - m):
            continue  # the halo does not reach that side
        t = other["index_of"].get(scene_id)
        if t is not None:
            out.append((str(other["cube"]), int(t), dr * grid.height, dc * grid.width))
    return tuple(out)


def check_retrieval(cube: str | os.PathLike[str], model: str | os.PathLike[str], out: str | os.PathLike[str], *,
                    precision: str = "fp32", overwrite: bool = False) -> dict[str, Any]:
    """Check a retrieval's inputs without touching anything: what :func:`retrieve` checks before its work.

    Returns
    -------
    dict
        ``stores`` (LST stores), ``todo`` (time steps to retrieve) and ``skipped`` (already retrieved).

    Raises
    ------
    RetrieveError, ArtifactError
        As :func:`retrieve`.
    """
    check_unlocked(out)
    _, plans, _ = _plan(cube, model, out, precision=precision, overwrite=overwrite)
    return {"stores": [str(p["out"]) for p in plans if p["todo"] or p["action"] != "new"],
            "todo": sum(len(p["todo"]) for p in plans),
            "skipped": sum(p["skipped"] for p in plans)}


def _plan(cube: str | os.PathLike[str], model: str | os.PathLike[str], out: str | os.PathLike[str], *,
          precision: str, overwrite: bool) -> tuple[Retriever, list[dict[str, Any]], dict[str, str]]:
    """Verify the model, the cubes and the outputs; per store pair, what is to do. Writes nothing."""
    cube, out, model = location(cube), location(out), Path(model)
    if not exists(cube):
        raise RetrieveError(f"{cube}: no such scene cube")
    if is_file(out):
        raise RetrieveError(f"{out}: is a file, not an LST store or folder")
    # verified before any work, and loaded once per process: the CLI's check and then its run, or a session's
    # repeated runs, pay for it once (a torch.export program: ~0.3 s, and ~2.6 s of imports the first time)
    retriever = cached_retriever(ModelRef(str(model.resolve()), model_digest(model), "cpu", precision))
    kind = retriever.describe()["model_kind"]
    if precision != "fp32" and kind not in ("dnn", "trf", "cnn"):  # it would be ignored: say so instead
        raise RetrieveError(f"--precision {precision}: {kind} models have no reduced-precision path; "
                            "use --precision fp32")
    need = inputs_for(retriever.features)
    ident = {"model_sha256": retriever.digest, "model_precision": precision if kind in ("dnn", "trf", "cnn") else ""}
    plans = []
    for src, dst in _pairs(cube, out):
        grid, slots, chunks, index, products = _check_cube(src, need)
        action = _check_output(dst, absolute(src), grid, ident, overwrite)
        done: set[str] = set()
        if action == "append":
            _, lst_slots = read_slots(dst, LST_OK_VAR)
            done = {s["scene_id"] for s in lst_slots if s[LST_OK_VAR]}
        todo = sorted((s for s in slots if s["scene_id"] not in done), key=lambda s: s["time"])
        _check_index(src, index, todo)
        plans.append({"cube": src, "out": dst, "grid": grid, "chunks": chunks, "action": action, "todo": todo,
                      "skipped": len(slots) - len(todo), "index_of": {s["scene_id"]: s["index"] for s in slots},
                      "products": products})
    return retriever, plans, ident


def _check_index(store: Location, index: NDArray[np.int32] | None, todo: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a scene cube whose chunk-coverage index disagrees with its data at a step to retrieve: planning from
    it would skip data, or count chunks that are not there. Lists the chunk keys of ``bt_10_80``, reads no data."""
    steps = {int(s["index"]): s["scene_id"] for s in todo if s["coverage"] is not None}
    if index is None or not steps:
        return
    try:
        check_coverage(store, index, sorted(steps), "bt_10_80")
    except CoverageError as exc:
        raise RetrieveError(f"{exc} (scene {steps.get(exc.step, '?')})") from None


def _lst_slots(dst: Location, plan: Mapping[str, Any], retriever: Retriever, info: Mapping[str, str],
               ident: Mapping[str, str], history: str) -> list[int]:
    """Slots of the LST store for the plan's scenes: reuse unfinished ones, append the others."""
    todo = plan["todo"]
    scenes = [{"scene_id": s["scene_id"], "source": str(plan["cube"]), "time": s["time"]} for s in todo]
    if plan["action"] == "new":
        if isinstance(dst, Path) and dst.is_dir():  # an empty folder the user made for it
            dst.rmdir()
        share = systematic_share(getattr(retriever, "error_model", None) or {})
        attrs = {
            "title": "sftl-dask land surface temperature", "Conventions": "CF-1.11", "sftl_product": "lst",
            "summary": "Land surface temperature from GF5-02 VIMI thermal bands by a neural network pre-trained on "
                       "radiative-transfer simulations and fine-tuned on in situ LST (SFTL).",
            "references": "Heidarian et al. 2025, Remote Sensing 17:3803", "institution": "sftl-dask",
            "source": "GF5-02 VIMI L1 through the sftl-dask scene cube", "source_cube": str(absolute(plan["cube"])),
            **info, **ident, "pretraining_range": json.dumps(retriever.training_range),
            # the scene term's share of lst_uncertainty^2 where it is one number (multiplicative form): composites
            # keep share * sigma^2 whole (sftl_dask.api); absent otherwise (uncertainty_systematic_k as before)
            **({"uncertainty_systematic_fraction": share} if share is not None else {}),
            "qc_range_groups": " ".join(retriever.training_range), "cloud_adjacent_px": CLOUD_ADJACENT_PX,
            "date_created": history.split(" ")[0], "history": history, "software": history.split("(")[-1][:-1],
        }
        # lst_uncertainty names its calibration (source-fitted, target-calibrated, or uncalibrated: an older card)
        label = info.get("uncertainty_calibration", "")
        variables = {**LST_VARIABLES, "lst_uncertainty": {**LST_VARIABLES["lst_uncertainty"], "calibration": label,
                                                          "comment": "the product's error against the true pixel "
                                                                     "LST; a reference's own error is not in it"}}
        return append_slots(dst, plan["grid"], scenes, attrs, variables=variables, ok_var=LST_OK_VAR,
                            chunk=plan["chunks"])  # the scene cube's chunks: every task writes whole chunks
    _, slots = read_slots(dst, LST_OK_VAR)
    waiting = {s["scene_id"]: s["index"] for s in slots if not s[LST_OK_VAR]}
    reuse = [s for s in scenes if s["scene_id"] in waiting]
    fresh = [s for s in scenes if s["scene_id"] not in waiting]
    new_idx = iter(append_slots(dst, plan["grid"], fresh, variables=LST_VARIABLES, ok_var=LST_OK_VAR))
    group = zarr.open_group(zarr_store(dst), mode="r+")
    group.attrs["history"] = f"{group.attrs.get('history', '')}\n{history}".strip()
    zarr.consolidate_metadata(zarr_store(dst))
    return [waiting[s["scene_id"]] if s in reuse else next(new_idx) for s in scenes]


@dataclass
class _Done:
    """What a run's tasks did: the jobs, per job its (plan, LST slot), the results of those that succeeded (with
    ``job``, the job's index), the reason of each that failed, the failed time steps, the steps marked complete
    and the seconds from the first task submitted to the last one ended."""

    jobs: list[_Job]
    slot_of: list[tuple[int, int]]
    results: list[dict[str, Any]]
    errors: dict[int, str]
    failed: list[dict[str, Any]]
    retrieved: int
    tasks_s: float


class _Tasks:
    """Where the jobs run: a Dask client's cluster, or a pool of ``threads`` threads in this process (torch at one
    thread a task while it is open)."""

    def __init__(self, ref: ModelRef, client: Any, resources: Mapping[str, float] | None, threads: int | None
                 ) -> None:
        self.ref, self.client, self.resources, self.threads = ref, client, resources, threads
        self.index: dict[Any, int] = {}  # future (local) or its key (Dask) -> job index
        self.pool: ThreadPoolExecutor | None = None
        self._torch_before = 0

    def __enter__(self) -> _Tasks:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            import torch  # already imported by _start_pool

            self.pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(self._torch_before)

    def _start_pool(self) -> ThreadPoolExecutor:
        """The thread pool, at the first jobs (a run with nothing to do never imports torch)."""
        if self.pool is None:
            import torch  # lazy: importing it takes ~4 s (measured) and tree or split-window runs never need it

            n = self.threads or len(os.sched_getaffinity(0))
            self._torch_before = torch.get_num_threads()
            torch.set_num_threads(1 if n > 1 else self._torch_before)
            self.pool = ThreadPoolExecutor(n)
        return self.pool

    def submit(self, jobs: Sequence[_Job], first: int) -> list[Any]:
        """Start ``jobs`` (job indices from ``first``); their futures."""
        if self.client is None:
            pool = self._start_pool()
            futs = [pool.submit(_run_job, self.ref, job) for job in jobs]
            self.index.update({f: first + k for k, f in enumerate(futs)})
            return futs
        # resources given to persist apply to every task of the collection and survive graph optimisation,
        # which drops dask.annotate() annotations of fused layers (pinned by tests/test_retrieve.py)
        persisted = self.client.persist(_graph(self.ref, jobs), optimize_graph=False,
                                        resources=dict(self.resources) if self.resources else None)
        futs = futures_of(persisted)
        self.index.update({f.key: first + int(f.key[1]) for f in futs})
        return futs

    def job(self, fut: Any) -> int:
        return self.index[fut if self.client is None else fut.key]

    def finished(self, futures: Sequence[Any]) -> Iterator[Any]:
        """The futures as they end."""
        return as_completed(futures) if self.client is None else completed(futures, self.client)

    def failure(self, fut: Any) -> BaseException | None:
        if self.client is None:
            return fut.exception()
        return fut.exception() if fut.status == "error" else None

    def collect(self, futures: Sequence[Any], results: list[dict[str, Any]], errors: dict[int, str]) -> None:
        """The counts of finished tasks; on a cluster in one gather: one round trip per worker, not one per task
        (160 ``result()`` calls cost the driver 1.7 s of a 6.4 s split-window run, profiled). If a result is lost
        in between (its worker gone: the task reruns) and the rerun fails, each future is collected on its own."""
        values = None
        if self.client is not None and futures:
            try:
                values = self.client.gather(list(futures))
            except (OSError, ValueError, RuntimeError, MemoryError, KilledWorker):
                values = None
        if values is not None:
            for fut, res in zip(futures, values, strict=True):
                results.append({**(res[0] if isinstance(res, np.ndarray) else res), "job": self.job(fut)})
            return
        for fut in futures:
            _collect(self.failure(fut), fut, self.job(fut), results, errors)


def _execute(plans: list[dict[str, Any]], prepare: Callable[[dict[str, Any]], list[_Job]], tasks: _Tasks,
             progress: Callable[[int, int], None] | None) -> _Done:
    """Run the plans, pipelined by store: each store's metadata is written (``prepare``) and its tasks start at
    once, so the next store's metadata is written while they run; a store's steps are marked complete as soon as
    its last task ends, while the other stores' tasks run. Data before the marker, per store."""
    done = _Done([], [], [], {}, [], 0, 0.0)
    futures: list[Any] = []
    left: dict[int, int] = {}
    t0 = time.perf_counter()
    for i, plan in enumerate(plans):
        if not plan["todo"]:
            continue
        jobs = prepare(plan)
        if not done.jobs:
            t0 = time.perf_counter()
        futures += tasks.submit(jobs, len(done.jobs))
        done.jobs += jobs
        done.slot_of += [(i, job.t_out) for job in jobs]
        left[i] = len(jobs)
    ok: dict[int, list[Any]] = {i: [] for i in left}
    failed: dict[int, list[dict[str, Any]]] = {}
    for i in [i for i, n in left.items() if not n]:  # a store with nothing to run: its steps are complete
        failed[i], n_done = _mark_store(i, plans[i], done.jobs, done.slot_of, done.errors, done.results)
        done.retrieved += n_done
    for n, fut in enumerate(tasks.finished(futures), start=1):
        j = tasks.job(fut)
        i = done.slot_of[j][0]
        exc = tasks.failure(fut)
        if exc is not None:
            _collect(exc, fut, j, done.results, done.errors)
        else:
            ok[i].append(fut)
        left[i] -= 1
        if not left[i]:
            done.tasks_s = time.perf_counter() - t0
            tasks.collect(ok[i], done.results, done.errors)
            failed[i], n_done = _mark_store(i, plans[i], done.jobs, done.slot_of, done.errors, done.results)
            done.retrieved += n_done
        if progress:
            progress(n, len(done.jobs))
    done.failed = [f for i in sorted(failed) for f in failed[i]]
    return done


def _collect(exc: BaseException | None, fut: Any, j: int, results: list[dict[str, Any]],
             errors: dict[int, str]) -> None:
    if exc is None:
        res = fut.result()
        results.append({**(res[0] if isinstance(res, np.ndarray) else res), "job": j})
        return
    if isinstance(exc, OSError | ValueError | RuntimeError | MemoryError):  # I/O, data, torch (CUDA OOM) failures
        errors[j] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return
    raise exc  # a bug: keep its traceback


def _block(ref: ModelRef, job: _Job) -> NDArray[Any]:
    out = np.empty(1, dtype=object)
    out[0] = _run_job(ref, job)
    return out


def _graph(ref: ModelRef, jobs: Sequence[_Job]) -> Any:
    """The run as a Dask array of one task per chunk job (object blocks holding each job's counts)."""
    name = f"sftl-retrieve-{uuid.uuid4().hex}"
    dsk = {(name, j): (_block, ref, job) for j, job in enumerate(jobs)}
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks=((1,) * len(jobs),), dtype=object)
