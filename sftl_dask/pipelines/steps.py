"""The cached steps the pipelines share (``demo``, ``archive``): validation and monthly composites of an LST root.

Both are keyed by the LST they read (:func:`lst_key`: each model's digest, each store's complete time steps and the
package version). Unchanged, a product is reused; changed, it is made again whole, and only stamped complete once
it is (:func:`sftl_dask.training.stages.stamp`), so an interrupted run never leaves a product that looks complete.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sftl_dask import plotting
from sftl_dask.composites import COMPOSITE_OK_VAR, write_composites
from sftl_dask.io.cube import read_slots
from sftl_dask.io.stores import cube_stores, mosaic, zone_of_store
from sftl_dask.models.retriever import model_digest
from sftl_dask.staging import cache_key, reuse_or_remove, staged_file, stamp
from sftl_dask.validate import validate
from sftl_dask.version import __version__

__all__ = ["composites_step", "lst_key", "lst_steps", "validate_step", "write_monthly_composites"]


def lst_steps(lst_root: Path) -> dict[str, int]:
    """Complete time steps per LST store of ``lst_root`` (none where the root does not exist yet)."""
    if not lst_root.exists():
        return {}
    return {name: sum(s["retrieve_ok"] for s in read_slots(store, "retrieve_ok")[1])
            for name, store in cube_stores(lst_root).items()}


def lst_key(models: Mapping[str, Path], lst_root: Path) -> str:
    """The cache key of a product read from ``lst_root``: what made its LST and how much of it there is.

    Parameters
    ----------
    models : mapping of str to path
        The models that made the LST, by a name (a direction, ``model``): an artifact or a split-window JSON,
        pinned by :func:`sftl_dask.models.retriever.model_digest`.
    lst_root : path
        The LST root: each store's complete time steps enter the key (:func:`lst_steps`).
    """
    return cache_key({"models": {name: model_digest(path) for name, path in models.items()},
                      "steps": lst_steps(lst_root), "version": __version__})


def validate_step(lst_root: Path, insitu: Path, sites: Path, out: Path, key: str, *, client: Any,
                  progress: Callable[[int, int], None] | None = None) -> bool:
    """Validate ``lst_root`` against the radiometers into ``out``, unless made from ``key`` already.

    Returns
    -------
    bool
        Whether the validation was reused.
    """
    if reuse_or_remove(out, key):
        return True
    validate(lst_root, insitu, sites, out, client=client, overwrite=True, progress=progress)
    stamp(out, key)
    return False


def composites_step(lst_root: Path, out: Path, key: str, regions: Mapping[str, str], *, client: Any = None,
                    progress: Callable[[int, int], None] | None = None, mosaics: bool = True
                    ) -> tuple[bool, dict[str, int]]:
    """The monthly composites of ``lst_root`` into ``out``: incremental Zarr stores per tile
    (:func:`sftl_dask.composites.write_composites`: only the months whose LST changed are computed), then, with
    ``mosaics``, per zone a CF NetCDF mosaic and a figure of the best-covered month (:func:`write_monthly_composites`),
    made again when a month changed. ``key`` is the LST's (:func:`lst_key`): it stamps each zone's NetCDF.

    A zone mosaic holds every month, so remaking it costs the whole archive's months whenever one changes (10.7 s
    of every such run of the 160-scene archive, as much as computing all its months' stores): the archive
    pipeline makes them only on request. Without ``mosaics``, a zone mosaic made from another key is removed with
    its figure (never left stale).

    Returns
    -------
    reused : bool
        Whether everything was reused (no month computed, every zone's NetCDF asked for made from ``key`` already).
    counts : dict
        ``months_computed`` and ``months_reused`` (tile months), and the ``tasks`` run (one per chunk with data and
        run of months, :data:`sftl_dask.composites.TASK_VALUES`).
    """
    summary = write_composites(lst_root, out, client=client, progress=progress)
    counts = {"months_computed": int(summary["computed"]), "months_reused": int(summary["reused"]),
              "tasks": int(summary["tasks"])}
    zones = sorted({zone_of_store(n) for n in cube_stores(out)})
    files = [out / f"{zone}_monthly.nc" for zone in zones]
    if not mosaics:
        for zone, f in zip(zones, files, strict=True):
            if not reuse_or_remove(f, key):
                for fig in out.glob(f"*{zone}_monthly.png"):
                    fig.unlink()
        return not summary["computed"], counts
    if not summary["computed"] and all([reuse_or_remove(f, key) for f in files]):
        return True, counts
    write_monthly_composites(out, out, regions)
    for f in files:
        stamp(f, key)
    return False, counts


def _crop_to_data(ds: Any) -> Any:
    """The rectangle of a mosaic where any time step has an LST value (tiles reach far past a scene's edge:
    the rest would only be reduced to NaN)."""
    seen = ds["lst"].notnull().any("time").compute().values
    if not seen.any():
        return ds
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    out = ds.isel(y=slice(rows[0], rows[-1] + 1), x=slice(cols[0], cols[-1] + 1))
    return out.rio.write_transform(out.rio.transform(recalc=True))  # the mosaic's transform was of the whole


def write_monthly_composites(composites: Path, out: Path, regions: Mapping[str, str]) -> None:
    """Each zone's monthly composite stores (:func:`sftl_dask.composites.write_composites`) as one mosaic: a CF
    NetCDF file and a figure of the best-covered month. ``regions`` maps a zone (``50N``) to its region's name."""
    stores = cube_stores(composites)
    for zone in sorted({zone_of_store(n) for n in stores}):
        name = regions.get(zone, zone)
        mc = _crop_to_data(mosaic({n: s for n, s in stores.items() if zone_of_store(n) == zone},
                                  ok_var=COMPOSITE_OK_VAR)).load()
        with staged_file(out / f"{zone}_monthly.nc", replace=True) as tmp:
            mc.sftl.to_netcdf(tmp)
        best = int(mc["n_obs"].sum(("y", "x")).argmax("time").values)
        plotting.composite_figure(mc, best, name,
                                  out / (f"{name}_{zone}_monthly.png" if name != zone else f"{zone}_monthly.png"))
