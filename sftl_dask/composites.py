"""Composites as incremental products: one Zarr store per LST tile, one time step per period (month by default).

A period's composite is computed once per (tile, period), on each chunk that holds data in that period (the LST
stores' chunk-coverage index, :data:`~sftl_dask.io.stores.COVERAGE_VAR`), with the reduction of the accessor
(:meth:`sftl_dask.api.SftlAccessor.composite` on the chunk's :meth:`~sftl_dask.api.SftlAccessor.good` values) done
at the numpy level (:func:`period_composite`, equal bit for bit). A task takes one chunk window of a tile and as
many of its consecutive periods as :data:`TASK_VALUES` allows: one read of their steps' ``lst``,
``lst_uncertainty`` and ``qc``, one reduction and one region write per period, no xarray object (a month of two
overpasses is not worth a task of its own). Each period records the key of what it was made from (``checksum``:
sha256 of its steps' scene ids and product checksums, the model and the reduction), so a re-run after new scenes
recomputes only the periods they touch, and a period whose steps did not change is left as it is. The stores follow
the LST cube's conventions (the one cube writer, :mod:`sftl_dask.io.cube`: CF time, ``spatial_ref``, per-step
``scene_id`` (the period, e.g. ``2022-08``), ``source`` (the LST store), ``checksum`` (the key) and
``composite_ok``), and carry their own chunk-coverage index. :func:`sftl_dask.open_lst` does not open them;
``xr.open_zarr`` (or :func:`~sftl_dask.io.stores.open_store`) does, and ``sftl_dask.io.export.to_cog`` exports a
period.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from numpy.typing import NDArray

from sftl_dask.api import (  # noqa: F401  (SftlAccessor registers ds.sftl)
    GOOD_MASKS,
    SftlAccessor,
    composite_attrs,
    composite_variance,
    nanmedian_first_axis,
    systematic_fraction,
    systematic_k,
    uncertainty_split,
)
from sftl_dask.cluster import run_tasks
from sftl_dask.geo import GeoBox
from sftl_dask.io.cube import append_slots, coverage_shape, mark_slot, read_coverage, read_slots, write_block
from sftl_dask.io.location import is_url, is_zarr_store, join, location, zarr_store
from sftl_dask.io.lst import LST_OK_VAR, lst_stores
from sftl_dask.io.stac import write_composites_stac

__all__ = ["COMPOSITE_OK_VAR", "COMPOSITE_PERIODS", "TASK_VALUES", "composite_variables", "period_composite",
           "write_composites"]

#: Completion flag of a composite store's periods.
COMPOSITE_OK_VAR = "composite_ok"
#: The periods a composite store can hold: pandas frequency -> (its name, the ``scene_id`` label format).
COMPOSITE_PERIODS = {"MS": ("month", "%Y-%m"), "QS-DEC": ("season", "%Y-%m (3 months)"), "YS": ("year", "%Y")}
_HOWS = ("median", "mean", "min", "max")


def composite_variables(freq: str, how: str) -> dict[str, dict[str, Any]]:
    """The variables of a composite store: CF attributes of their own (no valid range or ancillary variables
    inherited from the LST cube) and storage dtype.

    Parameters
    ----------
    freq : {"MS", "QS-DEC", "YS"}
        The period.
    how : {"median", "mean", "min", "max"}
        The reduction of each pixel's good values in a period.
    """
    if freq not in COMPOSITE_PERIODS:
        raise ValueError(f"freq {freq!r}: composite stores hold one of {', '.join(COMPOSITE_PERIODS)}")
    dtypes = {"lst": "float32", "lst_uncertainty": "float32", "n_obs": "int16"}
    # the accessor's attributes (one source: sftl_dask.api.composite_attrs), with the values a store holds
    return {v: {**a, "dtype": dtypes[v]} for v, a in composite_attrs(freq, how).items()}


#: Most (time step, pixel) values one task reads (3 variables, 10 bytes a value: ~84 MB): a chunk's periods are
#: batched into tasks up to this size, so a month of two overpasses is not a task of its own.
TASK_VALUES = 32 * 512 * 512


@dataclass(frozen=True)
class _Part:
    """One task: the composites of some periods on one chunk window of one tile."""

    lst: str
    out: str
    window: tuple[int, int, int, int]
    periods: tuple[tuple[int, tuple[int, ...]], ...]  # (time index in the composite store, its LST steps)
    how: str
    min_count: int
    good: tuple[tuple[int, int], ...]  # the (mask, value) of each qc flag that good() drops
    sys_k: float | None  # the LST's systematic uncertainty (K), None where it does not split it
    sys_frac: float | None  # the LST's systematic share of lst_uncertainty^2, None where it does not give one


def period_composite(lst: NDArray[np.float32], lst_uncertainty: NDArray[np.float32], qc: NDArray[np.integer],
                     *, good: Sequence[tuple[int, int]], how: str = "median", min_count: int = 1,
                     sys_k: float | None = None, sys_frac: float | None = None) -> dict[str, NDArray[Any]]:
    """The composite of one period from its steps' arrays: the accessor's arithmetic at the numpy level.

    The same operations, in the same dtypes, as ``ds.sftl.good().sftl.composite(freq, how)`` on one period
    (:meth:`sftl_dask.api.SftlAccessor.composite`), so the values are equal bit for bit (pinned by
    ``tests/test_coverage.py``), without an xarray object per task.

    Parameters
    ----------
    lst, lst_uncertainty : numpy.ndarray
        ``(time, y, x)`` LST and its uncertainty (K, float32) of the period's steps.
    qc : numpy.ndarray
        ``(time, y, x)`` QC bit flags.
    good : sequence of (int, int)
        ``(mask, value)`` of the flags that :meth:`~sftl_dask.api.SftlAccessor.good` drops.
    how : {"median", "mean", "min", "max"}
        The reduction.
    min_count : int
        Fewest good values a pixel needs; fewer give NaN.
    sys_k : float, optional
        The systematic part of the uncertainty (K); None (and no ``sys_frac``): all of it is systematic.
    sys_frac : float, optional
        The systematic share of ``lst_uncertainty**2`` (the store's ``uncertainty_systematic_fraction``); it takes
        precedence over ``sys_k`` (:func:`sftl_dask.api.uncertainty_split`).

    Returns
    -------
    dict
        ``lst``, ``lst_uncertainty`` (K, float32, ``(y, x)``) and ``n_obs`` (int16).
    """
    drop = None
    for mask, value in good:
        hit = (qc & mask) == value
        drop = hit if drop is None else drop | hit
    if drop is not None:
        lst, lst_uncertainty = np.where(drop, np.nan, lst), np.where(drop, np.nan, lst_uncertainty)
    valid = ~np.isnan(lst)
    unc = np.where(valid, lst_uncertainty, np.nan)
    rand2, sys2 = uncertainty_split(unc, valid, sys_k, sys_frac)
    count = valid.sum(axis=0)
    with warnings.catch_warnings():  # all-NaN pixels of a period are NaN, as they should be
        warnings.simplefilter("ignore", RuntimeWarning)
        value = nanmedian_first_axis(lst) if how == "median" else getattr(np, f"nan{how}")(lst, axis=0)
        mean_rand2 = np.nanmean(rand2, axis=0)
        mean_sys2 = np.nanmean(sys2, axis=0) if isinstance(sys2, np.ndarray) else sys2
    var = composite_variance(mean_sys2, mean_rand2, np.where(count > 0, count, np.nan), how)
    enough = count >= min_count
    return {"lst": np.where(enough, value, np.nan).astype(np.float32),
            "lst_uncertainty": np.where(enough, np.sqrt(var), np.nan).astype(np.float32),
            "n_obs": count.astype(np.int16)}


def _composite_part(part: _Part) -> list[dict[str, Any]]:
    """Compute and write one chunk of some periods (the task): one read of the periods' steps, one reduction and
    one region write per period; per period its good-value count (pixels x steps) and covered pixels."""
    y0, y1, x0, x1 = part.window
    steps = sorted({s for _, idx in part.periods for s in idx})
    at = {s: i for i, s in enumerate(steps)}
    src = zarr.open_group(zarr_store(part.lst), mode="r")
    sel = (steps, slice(y0, y1), slice(x0, x1))
    lst, unc, qc = (src[v].get_orthogonal_selection(sel) for v in ("lst", "lst_uncertainty", "qc"))
    dst = zarr.open_group(zarr_store(part.out), mode="r+")
    out = []
    for t_out, idx in part.periods:
        rows = [at[s] for s in idx]
        data = period_composite(lst[rows], unc[rows], qc[rows], good=part.good, how=part.how,
                                min_count=part.min_count, sys_k=part.sys_k, sys_frac=part.sys_frac)
        write_block(dst, t_out, part.window, data)
        out.append({"out": part.out, "window": part.window, "t_out": t_out, "n_obs": int(data["n_obs"].sum()),
                    "covered": int((data["n_obs"] > 0).sum())})
    return out


def _periods(slots: Sequence[Mapping[str, Any]], freq: str) -> dict[pd.Timestamp, list[Mapping[str, Any]]]:
    """The completed steps of an LST store by period start."""
    done = [s for s in slots if s[LST_OK_VAR]]
    if not done:
        return {}
    ser = pd.Series(range(len(done)), index=pd.DatetimeIndex([s["time"] for s in done]))
    out: dict[pd.Timestamp, list[Mapping[str, Any]]] = {}
    for start, grp in ser.resample(freq):
        if len(grp):
            out[pd.Timestamp(start)] = [done[i] for i in grp.to_numpy()]
    return out


def _key(steps: Sequence[Mapping[str, Any]], attrs: Mapping[str, Any], freq: str, how: str, min_count: int) -> str:
    """sha256 of what a period's composite is made from: its steps (scene id, checksum), the model, the reduction."""
    doc = {"steps": sorted([str(s["scene_id"]), str(s["checksum"])] for s in steps),
           "model": [str(attrs.get("model_sha256", "")), str(attrs.get("model_precision", ""))],
           "reduction": [freq, how, int(min_count)]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _plan_tile(lst: Any, out: Any, freq: str, how: str, min_count: int) -> dict[str, Any]:
    """What to do for one tile: its periods to (re)compute with their slots, and the tasks."""
    grid, slots = read_slots(lst, LST_OK_VAR)
    group = zarr.open_group(zarr_store(lst), mode="r")
    attrs = dict(group.attrs)
    chunk = tuple(group["lst"].chunks[1:])
    index = read_coverage(lst)
    periods = _periods(slots, freq)
    keys = {p: _key(steps, attrs, freq, how, min_count) for p, steps in periods.items()}
    have: dict[str, tuple[int, str, bool]] = {}
    old_index = None
    if is_zarr_store(out):
        _, oslots = read_slots(out, COMPOSITE_OK_VAR)
        have = {s["scene_id"]: (s["index"], s["checksum"], s[COMPOSITE_OK_VAR]) for s in oslots}
        old_index = read_coverage(out)
    label = COMPOSITE_PERIODS[freq][1]
    todo = [(p, periods[p], keys[p]) for p in sorted(periods)
            if not (p.strftime(label) in have and have[p.strftime(label)][1] == keys[p]
                    and have[p.strftime(label)][2])]
    # the flags good() drops, read by the accessor from qc's attributes (no store opened by xarray for them)
    table = xr.Dataset({"qc": xr.DataArray(np.uint16(0), attrs=dict(group["qc"].attrs))}).sftl.flags
    good = tuple(table[f] for f in GOOD_MASKS if f in table)
    return {"lst": lst, "out": out, "grid": grid, "chunk": chunk, "index": index, "attrs": attrs, "todo": todo,
            "have": have, "old_index": old_index, "label": label, "reused": len(periods) - len(todo), "good": good,
            "sys_k": systematic_k(attrs), "sys_frac": systematic_fraction(attrs)}


def _tile_parts(plan: dict[str, Any], freq: str, how: str, min_count: int) -> list[_Part]:
    """Create or extend the tile's composite store with the periods to do; one part per (period, data chunk)."""
    label = plan["label"]
    fresh = [(p, steps, key) for p, steps, key in plan["todo"] if p.strftime(label) not in plan["have"]]
    scenes = [{"scene_id": p.strftime(label), "source": str(plan["lst"]), "time": np.datetime64(p, "ns")}
              for p, _, _ in fresh]
    attrs = {k: v for k, v in plan["attrs"].items() if k not in ("title", "summary", "sftl_product", "history")}
    attrs.update({"title": f"sftl-dask {COMPOSITE_PERIODS[freq][0]}ly {how} LST composite",
                  "sftl_product": "lst_composite", "sftl_composite_freq": freq, "sftl_composite_how": how,
                  "sftl_composite_min_count": int(min_count), "source_lst": str(plan["lst"]),
                  "summary": "Composites of the good LST values (sftl_dask.api.SftlAccessor.good) of an sftl-dask "
                             "LST cube, one time step per period."})
    new_idx = iter(append_slots(plan["out"], plan["grid"], scenes, attrs, variables=composite_variables(freq, how),
                                ok_var=COMPOSITE_OK_VAR, chunk=plan["chunk"]))
    # a period's time is its start, not a scene's centre (the cube writer's long name); consolidated in _mark_done
    zarr.open_group(zarr_store(plan["out"]), mode="r+")["time"].attrs["long_name"] = \
        f"start of the {COMPOSITE_PERIODS[freq][0]} (UTC)"
    cy, cx = plan["chunk"]
    grid: GeoBox = plan["grid"]
    by_chunk: dict[tuple[int, int], list[tuple[int, tuple[int, ...]]]] = {}
    plan["slots"] = []
    for p, steps, _ in plan["todo"]:
        t_out = plan["have"][p.strftime(label)][0] if p.strftime(label) in plan["have"] else next(new_idx)
        plan["slots"].append(t_out)
        idx = tuple(int(s["index"]) for s in steps)
        rows = None if plan["index"] is None else plan["index"][list(idx)]
        held = np.ones(coverage_shape((grid.height, grid.width), (cy, cx)), dtype=bool) \
            if rows is None or (rows < 0).any() else rows.sum(axis=0) > 0
        if plan["old_index"] is not None and t_out < plan["old_index"].shape[0]:  # recomputed: clear old chunks
            held |= plan["old_index"][t_out] > 0
        for r, c in zip(*np.nonzero(held), strict=True):
            by_chunk.setdefault((int(r), int(c)), []).append((t_out, idx))
    parts: list[_Part] = []
    for (r, c), periods in sorted(by_chunk.items()):
        window = (r * cy, min((r + 1) * cy, grid.height), c * cx, min((c + 1) * cx, grid.width))
        budget = max(1, TASK_VALUES // ((window[1] - window[0]) * (window[3] - window[2])))
        batch: list[tuple[int, tuple[int, ...]]] = []
        for period in periods:  # consecutive periods, up to the budget of steps a task reads
            if batch and sum(len(i) for _, i in batch) + len(period[1]) > budget:
                parts.append(_Part(str(plan["lst"]), str(plan["out"]), window, tuple(batch), how, min_count,
                                   plan["good"], plan["sys_k"], plan["sys_frac"]))
                batch = []
            batch.append(period)
        parts.append(_Part(str(plan["lst"]), str(plan["out"]), window, tuple(batch), how, min_count, plan["good"],
                           plan["sys_k"], plan["sys_frac"]))
    return parts


def _prepare_tile(lst: Any, out: Any, freq: str, how: str, min_count: int) -> tuple[dict[str, Any], list[_Part]]:
    """Plan one tile and create or extend its composite store (a task): the plan and the tile's parts."""
    plan = _plan_tile(lst, out, freq, how, min_count)
    return plan, (_tile_parts(plan, freq, how, min_count) if plan["todo"] else [])


def write_composites(lst: str | os.PathLike[str], out: str | os.PathLike[str], *, freq: str = "MS",
                     how: str = "median", min_count: int = 1, client: Any = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Composites of an LST cube (a store or a root of tile stores) into ``out/<tile>.zarr``, incrementally.

    Parameters
    ----------
    lst : path
        An LST store or root (``sftl retrieve --out``).
    out : path
        The composites' root: one store per LST store, named as it.
    freq : {"MS", "QS-DEC", "YS"}
        The period: months, seasons (DJF, MAM, ...), years.
    how : {"median", "mean", "min", "max"}
        The reduction of each pixel's good values in a period.
    min_count : int
        Fewest good values a pixel needs in a period; fewer give NaN (``n_obs`` still counts them).
    client : distributed.Client, optional
        Where the tasks run (one per chunk holding data and batch of its periods, :data:`TASK_VALUES`); without
        one, in this process.
    progress : callable, optional
        ``progress(done, total)`` in tasks.

    Returns
    -------
    dict
        ``stores`` (composite stores), ``computed`` and ``reused`` (periods), ``tasks``, ``good_values``.

    Raises
    ------
    ValueError
        Naming an unknown period or reduction, a ``min_count`` below 1, or an ``lst`` with no LST store.
    """
    if freq not in COMPOSITE_PERIODS:
        raise ValueError(f"freq {freq!r}: composite stores hold one of {', '.join(COMPOSITE_PERIODS)}")
    if how not in _HOWS:
        raise ValueError(f"how {how!r} must be one of {', '.join(_HOWS)}")
    if not (isinstance(min_count, int | np.integer) and min_count >= 1):
        raise ValueError(f"min_count {min_count!r} must be an integer >= 1")
    stores = lst_stores(lst)
    if not stores:
        raise ValueError(f"{lst}: no LST store here (expected an LST store or a folder of them)")
    out = location(out)
    # planning a tile (its slot tables) and extending its store are tasks too: tiles in parallel, not in turn
    prepared = run_tasks([(_prepare_tile, (src, join(out, f"{name}.zarr"), freq, how, min_count))
                          for name, src in stores.items()], client)
    plans = [plan for plan, _ in prepared]
    parts = [p for _, tile_parts in prepared for p in tile_parts]
    results = [r for rs in run_tasks([(_composite_part, (p,)) for p in parts], client, progress=progress)
               for r in rs]
    _mark_done(plans, results)
    if not is_url(out) and any(p["todo"] for p in plans):  # no STAC on object stores yet (as the LST's)
        write_composites_stac(out, COMPOSITE_OK_VAR)
    return {"stores": [str(p["out"]) for p in plans if p["todo"] or p["have"]],
            "computed": sum(len(p["todo"]) for p in plans), "reused": sum(p["reused"] for p in plans),
            "tasks": len(parts), "good_values": sum(r["n_obs"] for r in results)}


def _mark_done(plans: Sequence[dict[str, Any]], results: Sequence[Mapping[str, Any]]) -> None:
    """Mark each computed period complete with its key and its chunk-coverage index (pixels with a good value)."""
    by_slot: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in results:
        by_slot.setdefault((r["out"], r["t_out"]), []).append(r)
    for plan in plans:
        if not plan["todo"]:
            continue
        cy, cx = plan["chunk"]
        grid: GeoBox = plan["grid"]
        shape = coverage_shape((grid.height, grid.width), (cy, cx))
        cover = np.zeros((len(plan["slots"]), *shape), dtype=np.int32)
        for i, t_out in enumerate(plan["slots"]):
            for r in by_slot.get((str(plan["out"]), t_out), []):
                cover[i, r["window"][0] // cy, r["window"][2] // cx] = r["covered"]
        # one write per array for all the tile's periods (a call per period was 20 ms each)
        mark_slot(plan["out"], plan["slots"], COMPOSITE_OK_VAR, checksum=[key for _, _, key in plan["todo"]],
                  coverage=cover)
        zarr.consolidate_metadata(zarr_store(plan["out"]))
