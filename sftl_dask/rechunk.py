"""The time-series layout: a time-contiguous copy of an LST cube, for point series.

An LST store is chunked by scene, ``(1, 512, 512)`` (one chunk per time step, as the retrieval writes
it): one pixel's series touches one chunk per time step. The copy holds the same variables, chunked
``(T, TILE, TILE)`` (every completed time step of a small spatial tile in one chunk): one pixel's series
is one chunk per variable. ``sftl rechunk --lst L --out L_ts`` makes it (:func:`rechunk`);
:func:`timeseries_copy` finds it for the API.

Where the copy lives (the convention :func:`timeseries_copy` looks for):

* an LST root ``L/`` (one ``<grid>.zarr`` per grid) is copied to the sibling root ``L_ts/``, one
  ``L_ts/<grid>.zarr`` per grid: itself an LST root that ``open_lst`` reads;
* a single LST store ``S.zarr`` is copied to the sibling store ``S_ts.zarr``.

The copy is the source's completed time steps (``retrieve_ok``) sorted by time, byte-for-byte the same
metadata (every variable's attributes, dtype, fill value and codec; the global attributes, ``history``
extended by one line; ``spatial_ref``, ``x``, ``y`` as they are, so plain ``xr.open_zarr(copy).rio.crs``
works), and in its global attributes ``sftl_layout = "time-series"``, ``sftl_source_store`` (the source
store), ``sftl_source_steps`` (the number of time steps copied) and ``sftl_source_digest`` (sha256 of the
copied steps' scene ids, checksums and times and the source's model): a copy is up to date only while
that digest equals the source's. A copy is written under a hidden temporary name and renamed into place
when complete.

How. The ``rechunker`` library (0.5.4, the latest release) cannot be used: it requires ``zarr<3`` (as a
dependency it makes ``pip install -e .`` downgrade zarr to 2.18.7, where the cube writer fails:
``open_group() got an unexpected keyword argument 'zarr_format'``), and beside zarr 3.1 it fails on our
stores (``AttributeError: module 'zarr.core' has no attribute 'Array'`` for a Dataset, ``... 'zarr' has no
attribute 'hierarchy'`` for a Group or Array; pangeo-data/rechunker#159, docs/timeseries.md). Its scheme
is simple for this layout, and is built here as explicit Dask tasks: the
spatial tiles of the copy nest in (or are made of whole) source chunks, so each task reads whole source
chunks of one spatial block over all time steps and writes whole target chunks, with no data exchange
between tasks. Where a block's series exceeds ``max_mem`` it goes in two stages through an intermediate
store (rechunker's scheme): time bands of the block to an intermediate array chunked
``(band, TILE, TILE)``, then each tile's bands to its target chunk. The intermediate lives beside the
output and is removed afterwards.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from dask.utils import parse_bytes

from sftl_dask.cluster import completed, run_tasks
from sftl_dask.io.cube import COVERAGE_VAR, read_coverage, read_slots
from sftl_dask.io.location import is_url
from sftl_dask.io.lst import LST_OK_VAR
from sftl_dask.io.stores import CubeRoot, is_timeseries_copy, timeseries_attrs, timeseries_marker
from sftl_dask.staging import staged_dir
from sftl_dask.version import __version__

__all__ = ["MAX_MEM", "TILE", "RechunkError", "StaleCopyWarning", "check_rechunk", "rechunk", "timeseries_copy"]

#: Spatial tile edge (px) of the copy's chunks ``(T, TILE, TILE)``: 16 KB per float32 time step. Measured
#: (benchmarks/results/timeseries.json): one pixel's series of lst, lst_uncertainty and qc, read with xarray
#: after a fresh open, takes 13 ms from tiles of 64 px and 19 ms from tiles of 128 px at 40 time steps
#: (bare zarr 4.9 and 7.8 ms), against 276 ms from the scene-chunked store: 21x against 14x, and at 80 steps
#: 42x against 28x (a 128 px chunk is 4x the bytes to decode, which grows with T). The price: 4x the chunk
#: files, a copy of 80 steps of a 512 x 512 grid in 2.9 s instead of 1.9 s.
TILE = 64
#: Default bound on the array data one task holds (bytes, or a string such as ``"256MB"``).
MAX_MEM = "256MB"

#: Suffix of a copy's default name.
_SUFFIX = "_ts"


class RechunkError(ValueError):
    """Bad input to a rechunk, found before any work: no LST store, an existing output, a bound too small."""


class _NothingDone(RechunkError):
    """An LST store without a completed time step."""


class StaleCopyWarning(UserWarning):
    """A time-series copy exists but no longer matches its source's completed time steps."""


# ---------------------------------------------------------------------------------------------
# finding a copy


def timeseries_copy(store: str | os.PathLike[str]) -> Path | None:
    """The up-to-date time-series copy of an LST store, if there is one.

    Looks at the conventional places (module docstring): ``<root>_ts/<grid>.zarr`` beside the store's
    root, then ``<name>_ts.zarr`` beside the store. A copy counts only when its recorded digest equals the
    digest of the source's completed time steps (and model): a copy made before the source gained or
    redid a time step is ignored, with a :class:`StaleCopyWarning`.

    Parameters
    ----------
    store : path
        An LST store (``<grid>.zarr``).

    Returns
    -------
    pathlib.Path or None
        The copy's store, or None (no copy, or a stale one, or the source is not a readable LST store, or
        an object-store URL: ``sftl rechunk`` writes to file systems only).
    """
    if is_url(store):
        return None
    store = Path(store)
    found = [(c, a) for c in _candidates(store) if (a := timeseries_attrs(c)) is not None]
    if not found:
        return None
    try:
        ident = _identity(store)
    except (OSError, KeyError, ValueError):
        return None
    for cand, attrs in found:
        if attrs.get("sftl_source_digest") == ident["digest"]:
            return cand
        warnings.warn(f"{cand}: stale time-series copy of {store} ({attrs.get('sftl_source_steps')} time steps "
                      f"copied, the source has {ident['steps']} complete or has changed); ignored, re-run "
                      "'sftl rechunk' to refresh it", StaleCopyWarning, stacklevel=2)
    return None


def _candidates(store: Path) -> list[Path]:
    """Conventional copy locations of a store: in the sibling ``_ts`` root, then the sibling ``_ts`` store."""
    root = store.parent
    return [root.with_name(root.name + _SUFFIX) / store.name,
            store.with_name(store.name.removesuffix(".zarr") + _SUFFIX + ".zarr")]


def _default_copy_path(lst: Path) -> Path:
    """Where ``sftl rechunk`` puts the copy of ``lst`` by default: ``<root>_ts`` or ``<name>_ts.zarr``."""
    if CubeRoot(lst).is_store:
        return lst.with_name(lst.name.removesuffix(".zarr") + _SUFFIX + ".zarr")
    return lst.with_name(lst.name + _SUFFIX)


def _completed(store: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The completed time steps of an LST store, sorted by time, and its global attributes."""
    _, slots = read_slots(store, LST_OK_VAR)
    attrs = json.loads((store / ".zattrs").read_text())
    done = sorted((s for s in slots if s[LST_OK_VAR]), key=lambda s: (s["time"], s["index"]))
    return done, attrs


def _digest(steps: Sequence[Mapping[str, Any]], attrs: Mapping[str, Any]) -> str:
    """sha256 of the steps' scene ids, checksums and times, and of the model that made them."""
    doc = {"steps": [[s["scene_id"], s["checksum"], str(np.datetime64(s["time"], "ns"))] for s in steps],
           "model": [str(attrs.get("model_sha256", "")), str(attrs.get("model_precision", ""))]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _identity(store: Path) -> dict[str, Any]:
    steps, attrs = _completed(store)
    return {"steps": len(steps), "digest": _digest(steps, attrs)}


# ---------------------------------------------------------------------------------------------
# planning


@dataclass(frozen=True)
class _Copy:
    """One task: time steps ``steps`` of window ``(y0, y1, x0, x1)`` of array ``src`` to ``dst[t0:t1]``."""

    src: str
    dst: str
    steps: tuple[int, ...]
    t0: int
    window: tuple[int, int, int, int]


def _tile_edge(chunk: int, tile: int, size: int) -> tuple[int, int]:
    """The copy's tile edge and the task block edge along one axis (px).

    The tile divides the source chunk (the largest divisor <= ``tile``) or is made of whole source chunks,
    so a block of ``max(chunk, tile)`` px holds whole chunks of both stores.
    """
    if chunk >= size:  # one source chunk along this axis: any tile nests in it
        t = min(tile, size)
        return t, size
    if chunk >= tile:
        t = next(d for d in range(tile, 0, -1) if chunk % d == 0)
        return t, chunk
    t = (tile // chunk) * chunk
    return t, t


def _parse_mem(max_mem: int | str) -> int:
    try:
        n = int(parse_bytes(max_mem))
    except (ValueError, TypeError):
        raise RechunkError(f"max_mem {max_mem!r} is not a size (e.g. 256MB)") from None
    if n < 1:
        raise RechunkError(f"max_mem {max_mem!r} must be positive")
    return n


def _pairs(lst: Path, out: Path) -> list[tuple[Path, Path]]:
    """(LST store, copy store) pairs: a store maps to ``out``, a root's stores to ``out/<name>``."""
    if not lst.exists():
        raise RechunkError(f"{lst}: no such LST store or folder")
    root = CubeRoot(lst, skip_copies=True)  # leaves time-series copies out
    if not root.stores():
        if timeseries_attrs(lst) is not None or (lst.is_dir() and any(timeseries_attrs(p) for p in lst.glob("*.zarr"))):
            raise RechunkError(f"{lst}: is already a time-series copy; rechunk its source LST store")
        raise RechunkError(f"{lst}: no LST store here (neither a Zarr store nor a folder of them)")
    return root.pairs(out)


def _check_out(out: Path, lst: Path, overwrite: bool) -> None:
    """Refuse an output inside the source, an existing one (without ``overwrite``), or one that is not a copy."""
    lr, orr = lst.resolve(), out.resolve()
    if orr == lr or lr in orr.parents or orr in lr.parents:
        raise RechunkError(f"{out}: the copy cannot be {'the' if orr == lr else 'inside or around the'} LST "
                           f"source {lst}")
    if not out.exists():
        return
    if out.is_file():
        raise RechunkError(f"{out}: is a file; refusing to write a copy there")
    if out.is_dir() and not any(out.iterdir()):  # an empty folder made for it
        return
    is_copy = timeseries_attrs(out) is not None
    is_root = not is_copy and out.is_dir() and all(
        timeseries_attrs(p) is not None for p in out.iterdir() if not p.name.startswith("."))
    if not overwrite:
        what = "a time-series copy" if is_copy or is_root else "not a time-series copy"
        raise RechunkError(f"{out}: already exists ({what}); pass --overwrite to replace it")
    if not (is_copy or is_root):
        raise RechunkError(f"{out}: exists and is not a time-series copy; refusing to replace it")


def _array_meta(store: Path) -> dict[str, dict[str, Any]]:
    """Each array's Zarr v2 metadata (``.zarray``) and attributes (``.zattrs``) in a store."""
    out = {}
    for p in sorted(store.iterdir()):
        if (p / ".zarray").is_file():
            out[p.name] = {"zarray": json.loads((p / ".zarray").read_text()),
                           "zattrs": json.loads((p / ".zattrs").read_text()) if (p / ".zattrs").is_file() else {}}
    return out


def _plan_store(src: Path, dst: Path, tile: int, mem: int) -> dict[str, Any]:
    """What copying one store means: its steps, arrays, blocks and whether an intermediate store is needed."""
    if (src / "zarr.json").exists() or not (src / ".zgroup").exists():
        raise RechunkError(f"{src}: not a Zarr v2 store (the LST cube's format)")
    attrs = json.loads((src / ".zattrs").read_text()) if (src / ".zattrs").is_file() else {}
    if is_timeseries_copy(attrs):
        raise RechunkError(f"{src}: is already a time-series copy")
    if attrs.get("sftl_product") != "lst":
        raise RechunkError(f"{src}: not an sftl LST store (sftl_product is {attrs.get('sftl_product')!r})")
    meta = _array_meta(src)
    if LST_OK_VAR not in meta:
        raise RechunkError(f"{src}: has no {LST_OK_VAR!r}, so its completed time steps are unknown")
    try:
        steps, attrs = _completed(src)
    except (KeyError, ValueError) as exc:
        raise RechunkError(f"{src}: not a readable LST store ({type(exc).__name__}: {exc})") from None
    if not steps:
        raise _NothingDone(f"{src}: no completed time step ({LST_OK_VAR}) to copy")
    n_t = len(steps)
    index = read_coverage(src) if meta.pop(COVERAGE_VAR, None) is not None else None  # planning data: not copied
    cubes, series, other = [], [], []
    for name, m in meta.items():
        dims = m["zattrs"].get("_ARRAY_DIMENSIONS", [])
        if dims == ["time", "y", "x"]:
            cubes.append(name)
        elif dims == ["time"]:
            series.append(name)
        elif "time" in dims:
            raise RechunkError(f"{src}: array {name!r} has dims {dims}; only (time, y, x) and (time,) are copied")
        else:
            other.append(name)
    if not cubes:
        raise RechunkError(f"{src}: no (time, y, x) variable to copy")
    _, ny, nx = meta[cubes[0]]["zarray"]["shape"]
    _, cy, cx = meta[cubes[0]]["zarray"]["chunks"]
    if any(meta[c]["zarray"]["chunks"][1:] != [cy, cx] for c in cubes):
        raise RechunkError(f"{src}: its (time, y, x) variables are chunked differently")
    (ty, by), (tx, bx) = _tile_edge(cy, tile, ny), _tile_edge(cx, tile, nx)
    itemsize = {c: np.dtype(meta[c]["zarray"]["dtype"]).itemsize for c in cubes}
    widest = max(itemsize.values())
    if n_t * ty * tx * widest > mem:
        raise RechunkError(f"max_mem {mem:,} B is below one chunk of the copy ({n_t} steps x {ty} x {tx} px x "
                           f"{widest} B = {n_t * ty * tx * widest:,} B); raise it or use a smaller tile")
    band = {c: mem // (by * bx * itemsize[c]) for c in cubes}
    if min(band.values()) < 1:
        raise RechunkError(f"max_mem {mem:,} B is below one source block ({by} x {bx} px x {widest} B)")
    return {"src": src, "dst": dst, "steps": steps, "attrs": attrs, "meta": meta, "cubes": cubes,
            "series": series, "other": other, "shape": (n_t, ny, nx), "tile": (ty, tx), "block": (by, bx),
            "band": {c: min(band[c], n_t) for c in cubes}, "digest": _digest(steps, attrs),
            "data_blocks": _data_blocks(index, steps, (cy, cx), (by, bx))}


def _data_blocks(index: np.ndarray | None, steps: Sequence[Mapping[str, Any]], chunk: tuple[int, int],
                 block: tuple[int, int]) -> set[tuple[int, int]] | None:
    """Origins (row, column; px) of the copy's task blocks where some completed step holds data, from the store's
    chunk-coverage index; None (every block) for a store without one or with a step it did not record.

    A block left out is never written in the copy and reads as its fill (not covered), as in the source.
    """
    if index is None:
        return None
    rows = index[[int(s["index"]) for s in steps]]
    if (rows < 0).any():
        return None
    held = rows.sum(axis=0) > 0
    (cy, cx), (by, bx) = chunk, block
    return {(r * cy // by * by, c * cx // bx * bx) for r, c in zip(*np.nonzero(held), strict=True)}


def check_rechunk(lst: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *, tile: int = TILE,
                  max_mem: int | str = MAX_MEM, overwrite: bool = False) -> dict[str, Any]:
    """Check a rechunk's inputs without writing anything: what :func:`rechunk` checks before its work.

    Returns
    -------
    dict
        ``out`` (the copy's path), ``stores`` (source -> copy), ``steps`` (time steps to copy), ``chunks``
        (the copy's chunk shape of the first store) and ``two_stage`` (whether an intermediate store is used).

    Raises
    ------
    RechunkError
        As :func:`rechunk`.
    """
    out_p, plans = _plan(lst, out, tile=tile, max_mem=max_mem, overwrite=overwrite)
    return {"out": str(out_p), "stores": {str(p["src"]): str(p["dst"]) for p in plans},
            "steps": sum(p["shape"][0] for p in plans), "chunks": (plans[0]["shape"][0], *plans[0]["tile"]),
            "two_stage": any(b < p["shape"][0] for p in plans for b in p["band"].values())}


def _plan(lst: str | os.PathLike[str], out: str | os.PathLike[str] | None, *, tile: int, max_mem: int | str,
          overwrite: bool) -> tuple[Path, list[dict[str, Any]]]:
    if not isinstance(tile, int | np.integer) or tile < 1:
        raise RechunkError(f"tile {tile!r} must be a positive number of pixels")
    lst_p = Path(lst)
    out_p = Path(out) if out is not None else _default_copy_path(lst_p)
    mem = _parse_mem(max_mem)
    pairs = _pairs(lst_p, out_p)
    _check_out(out_p, lst_p, overwrite)
    plans, empty = [], []
    for src, dst in pairs:
        try:
            plans.append(_plan_store(src, dst, int(tile), mem))
        except _NothingDone as exc:  # a grid of a root that has no completed step yet gets no copy
            empty.append(str(exc))
    if not plans:
        raise RechunkError(empty[0])
    return out_p, plans


# ---------------------------------------------------------------------------------------------
# the copy


def _copy_block(job: _Copy) -> int:
    """Read ``job.steps`` of a window of ``job.src`` and write them at ``job.t0`` of ``job.dst`` (a task).

    Returns the bytes copied (uncompressed).
    """
    src = zarr.open_array(job.src, mode="r")
    dst = zarr.open_array(job.dst, mode="r+")
    y0, y1, x0, x1 = job.window
    steps = np.asarray(job.steps, dtype=np.int64)
    if steps.size and np.array_equal(steps, np.arange(steps[0], steps[0] + steps.size)):
        data = src[int(steps[0]):int(steps[0]) + steps.size, y0:y1, x0:x1]
    else:  # completed steps with gaps, or out of time order: orthogonal selection reads only those chunks
        data = src.oindex[steps, y0:y1, x0:x1]
    dst[job.t0:job.t0 + steps.size, y0:y1, x0:x1] = data
    return int(data.nbytes)


def _write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=4, sort_keys=False, allow_nan=True))


def _layout_store(plan: Mapping[str, Any], dst: Path, history: str) -> None:
    """Write the copy's metadata (the source's, re-chunked), its per-time and coordinate arrays."""
    src: Path = plan["src"]
    n_t, _, _ = plan["shape"]
    ty, tx = plan["tile"]
    order = np.array([s["index"] for s in plan["steps"]], dtype=np.int64)
    dst.mkdir(parents=True, exist_ok=True)
    _write_json(dst / ".zgroup", json.loads((src / ".zgroup").read_text()))
    attrs = dict(plan["attrs"])
    attrs["history"] = f"{attrs.get('history', '')}\n{history}".strip()
    attrs.update(timeseries_marker(str(src.resolve()), n_t, plan["digest"]))
    _write_json(dst / ".zattrs", attrs)
    for name, m in plan["meta"].items():
        if name in plan["other"]:  # x, y, spatial_ref: as they are
            shutil.copytree(src / name, dst / name)
            continue
        zarray = dict(m["zarray"])
        if name in plan["cubes"]:
            zarray["shape"], zarray["chunks"] = [n_t, *zarray["shape"][1:]], [n_t, ty, tx]
        else:
            zarray["shape"], zarray["chunks"] = [n_t], [n_t]
        _write_json(dst / name / ".zarray", zarray)
        _write_json(dst / name / ".zattrs", m["zattrs"])
        if name in plan["series"]:  # time, scene_id, source, checksum, retrieve_ok: the completed steps in order
            values = zarr.open_array(str(src / name), mode="r")[:][order]
            zarr.open_array(str(dst / name), mode="r+")[:] = values


def _jobs(plan: Mapping[str, Any], dst: Path, scratch: Path | None) -> tuple[list[_Copy], list[_Copy]]:
    """The tasks of one store: stage 1 (source -> copy, or -> intermediate by time band) and stage 2."""
    src: Path = plan["src"]
    n_t, ny, nx = plan["shape"]
    ty, tx = plan["tile"]
    by, bx = plan["block"]
    order = tuple(int(s["index"]) for s in plan["steps"])
    first: list[_Copy] = []
    second: list[_Copy] = []
    keep = plan["data_blocks"]

    def blocks(ey: int, ex: int) -> list[tuple[int, int]]:
        """Block origins with edges (ey, ex) that hold data (all of them without an index)."""
        return [(y0, x0) for y0 in range(0, ny, ey) for x0 in range(0, nx, ex)
                if keep is None or (y0 // by * by, x0 // bx * bx) in keep]

    for name in plan["cubes"]:
        band = plan["band"][name]
        target = str(dst / name)
        if band >= n_t:  # a block's whole series fits in max_mem: straight to the copy
            for y0, x0 in blocks(by, bx):
                first.append(_Copy(str(src / name), target, order, 0, (y0, min(y0 + by, ny), x0, min(x0 + bx, nx))))
            continue
        assert scratch is not None
        m = plan["meta"][name]["zarray"]
        inter = scratch / dst.name / name
        src_arr = zarr.open_array(str(src / name), mode="r")
        zarr.create_array(str(inter), shape=(n_t, ny, nx), chunks=(band, ty, tx), dtype=np.dtype(m["dtype"]),
                          fill_value=src_arr.fill_value, compressors=src_arr.compressors, zarr_format=2)
        for t0 in range(0, n_t, band):
            for y0, x0 in blocks(by, bx):
                first.append(_Copy(str(src / name), str(inter), order[t0:t0 + band], t0,
                                   (y0, min(y0 + by, ny), x0, min(x0 + bx, nx))))
        for y0, x0 in blocks(ty, tx):
            second.append(_Copy(str(inter), target, tuple(range(n_t)), 0, (y0, min(y0 + ty, ny), x0, min(x0 + tx, nx))))
    return first, second


@dataclass
class _Scratch:
    """A folder beside the output for the intermediate store, made only when needed, always removed."""

    out: Path
    path: Path | None = None

    def get(self) -> Path:
        if self.path is None:
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.scratch-", dir=self.out.parent))
        return self.path

    def remove(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)


def rechunk(
    lst: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    tile: int = TILE,
    max_mem: int | str = MAX_MEM,
    client: Any = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Make the time-series copy of an LST store or root: completed time steps, chunks ``(T, tile, tile)``.

    Parameters
    ----------
    lst : path
        An LST store, or an LST root (one ``<grid>.zarr`` per grid, as ``sftl retrieve`` writes).
    out : path, optional
        The copy: a store for a store, a root for a root. Default: the conventional sibling
        (``<root>_ts`` or ``<name>_ts.zarr``), where :func:`timeseries_copy` finds it.
    tile : int
        Spatial tile edge (px) of the copy's chunks; adjusted to divide, or be a multiple of, the
        source's chunk edge.
    max_mem : int or str
        Largest array a task holds (bytes, or ``"256MB"``): one block's whole series when it fits (one
        stage), else time bands through an intermediate store beside ``out`` (two stages). Workers need
        about twice this per thread (the array plus codec buffers).
    client : distributed.Client, optional
        Where the tasks run (one per block and variable); without one, in this process.
    overwrite : bool
        Replace an existing time-series copy (never anything else).
    progress : callable, optional
        ``progress(done, total)`` in tasks.
    command : str, optional
        The command line recorded in the copy's ``history``.

    Returns
    -------
    dict
        ``out``, ``stores`` (one entry per store: ``source``, ``copy``, ``steps``, ``chunks``), ``steps``,
        ``tasks``, ``stages`` (1 or 2), ``bytes`` (uncompressed, copied) and ``seconds``.

    Raises
    ------
    RechunkError
        Before anything is written: no LST store at ``lst``, no completed time step in any store, not
        Zarr v2, or already a copy; ``out`` inside the source, existing (without ``overwrite``) or not a
        copy; a ``max_mem`` below one chunk of the copy.
    """
    t_start = time.perf_counter()
    out_p, plans = _plan(lst, out, tile=tile, max_mem=max_mem, overwrite=overwrite)
    when = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = f"{when} {command or 'sftl_dask.rechunk.rechunk'} (sftl-dask {__version__})"
    single = CubeRoot.of(lst).is_store
    scratch = _Scratch(out_p)
    try:
        with staged_dir(out_p) as tmp:
            n_bytes, n_tasks, stages = _copy(plans, tmp, single, history, scratch, client, progress)
    finally:
        scratch.remove()
    stores = [{"source": str(p["src"]), "copy": str(p["dst"]), "steps": p["shape"][0],
               "chunks": [p["shape"][0], *p["tile"]]} for p in plans]
    return {"out": str(out_p), "stores": stores, "steps": sum(s["steps"] for s in stores), "tasks": n_tasks,
            "stages": stages, "bytes": n_bytes, "seconds": time.perf_counter() - t_start,
            "conventional": all(_is_conventional(p["src"], p["dst"]) for p in plans)}


def _copy(plans: list[dict[str, Any]], tmp: Path, single: bool, history: str, scratch: _Scratch, client: Any,
          progress: Callable[[int, int], None] | None) -> tuple[int, int, int]:
    """Write every planned copy under the staging folder ``tmp``; (bytes copied, tasks, stages).

    The jobs of :func:`_jobs` run in two stages: the first, then (where a store's time band is shorter than its
    steps, through the scratch store) the second.
    """
    first: list[_Copy] = []
    second: list[_Copy] = []
    for plan in plans:
        dst = tmp if single else tmp / plan["dst"].name
        _layout_store(plan, dst, history)
        need_scratch = any(b < plan["shape"][0] for b in plan["band"].values())
        a, b = _jobs(plan, dst, scratch.get() if need_scratch else None)
        first += a
        second += b
    total = len(first) + len(second)
    n_bytes = 0
    for i, jobs in enumerate((first, second)):
        offset = len(first) if i else 0

        def step(done: int, _: int, offset: int = offset) -> None:
            if progress:
                progress(offset + done, total)

        n_bytes += _run(jobs, client, step)
    for plan in plans:
        _consolidate(tmp if single else tmp / plan["dst"].name)
    return n_bytes, total, 2 if second else 1


def _is_conventional(src: Path, dst: Path) -> bool:
    """Whether :func:`timeseries_copy` looks for the copy of ``src`` at ``dst``."""
    return dst.resolve() in [c.resolve() for c in _candidates(src)]


def _run(jobs: Sequence[_Copy], client: Any, progress: Callable[[int, int], None]) -> int:
    """Run copy tasks (in this process without a client); returns the bytes copied.

    On a cluster every task is waited for before the first error is raised: none may still be writing
    into the staging folder when it is removed.
    """
    calls = [(_copy_block, (j,)) for j in jobs]
    if not calls:
        return 0
    if client is None:
        return int(sum(run_tasks(calls, None, progress=progress)))
    futs = run_tasks(calls, client, gather=False)
    n_bytes, error = 0, None
    try:
        for done, fut in enumerate(completed(futs, client), start=1):
            if fut.status == "error":
                error = error or fut.exception()
            else:
                n_bytes += int(fut.result())
            progress(done, len(futs))
    finally:
        client.cancel(futs)  # a no-op once all are done; on an interrupt, nothing more starts
    if error is not None:
        raise error
    return n_bytes


def _consolidate(store: Path) -> None:
    zarr.consolidate_metadata(str(store))

