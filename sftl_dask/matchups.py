"""Matchups: in situ LST at the overpass joined to a cube's pixel at each site.

The matchup rules are written once here and serve both the training matchups
(:func:`build_matchups`, over the scene cube) and the validation of LST cubes
(:mod:`sftl_dask.validate`, over the LST cube):

- **where**: a site is matched to the pixel that contains it (:func:`site_pixels`), kept only at least
  :data:`CLOUD_NEIGHBOURHOOD_PX` pixels inside its grid, so that the neighbourhood is whole;
- **when**: the in situ LST of a station (:func:`station_lst`) is the mean of its good records within
  +-:data:`WINDOW_MIN` min of the overpass (:func:`insitu_at_overpasses`), refused below
  :data:`MIN_SAMPLES` records or above :data:`MAX_STD_K` of spread (the surface was changing);
- **usable**: the first rule that applies names the reason (:func:`matchup_reasons`): ``no coverage``,
  ``cloud`` (cloud at the pixel or within :data:`CLOUD_NEIGHBOURHOOD_PX` of it), ``ancillary missing``,
  else the in situ reason (``ok``, ``no data``, ``no valid data``, ``too few samples``, ``unstable``).

One table schema (:data:`MATCHUP_COLUMNS`) for every training source; every (site, scene) pair of a site
inside a cube's grid gets a row, and a row that cannot be used keeps its ``reason`` instead of being dropped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from sftl_dask.geo import TileScheme, pixel_index
from sftl_dask.io.insitu import insitu_lst, overpass_lst, read_insitu_csv, read_sites
from sftl_dask.io.stores import CubeRoot, mosaic, open_cube
from sftl_dask.physics.channels import THERMAL_NAMES

__all__ = [
    "CLOUD_NEIGHBOURHOOD_PX",
    "MATCHUP_COLUMNS",
    "MAX_STD_K",
    "MIN_SAMPLES",
    "WINDOW_MIN",
    "build_matchups",
    "insitu_at_overpasses",
    "matchup_reasons",
    "neighbourhood",
    "site_pixels",
    "station_lst",
    "validate_matchups",
]

#: Half-width of the in situ averaging window around an overpass (min).
WINDOW_MIN = 15.0
#: Fewest good in situ records in the window for a matchup.
MIN_SAMPLES = 2
#: Largest spread (K, standard deviation, ddof 1) of those records: above it the surface was changing
#: (a passing cloud shadow, wind) and the mean does not represent the overpass.
MAX_STD_K = 1.5
#: A matchup is cloudy when cloud lies at its pixel or within this many pixels of it (its 8 neighbours):
#: cloud edges and shadows bias the thermal pixel next to them.
CLOUD_NEIGHBOURHOOD_PX = 1

_EMIS = tuple(n.replace("bt_", "emis_") for n in THERMAL_NAMES)
_PIXEL_VARS = (*THERMAL_NAMES, "vza", "wvc", *_EMIS, "ndvi")

#: Columns and dtypes of a matchup table.
MATCHUP_COLUMNS: dict[str, str] = {
    "site": "string", "region": "string", "land_cover": "string", "scene_id": "string",
    "time_utc": "datetime64[ns]", "row": "int64", "col": "int64",
    **{v: "float64" for v in _PIXEL_VARS},
    "cloud": "int64", "ancillary_missing": "int64",
    "lst_insitu": "float64", "lst_insitu_std": "float64", "n_insitu": "int64", "reason": "string",
}
_FEATURE_INPUTS = (*THERMAL_NAMES, "vza", "wvc", *_EMIS)


# ---------------------------------------------------------------------------------------------
# the rules, shared by the training matchups and the validation of LST cubes


def site_pixels(sites: pd.DataFrame, crs: Any, x: ArrayLike, y: ArrayLike) -> pd.DataFrame:
    """The sites inside a grid, with the row and column of the pixel that holds each.

    Parameters
    ----------
    sites : pandas.DataFrame
        The site table (:func:`~sftl_dask.io.insitu.read_sites`: ``id``, ``lon`` deg E, ``lat`` deg N ...).
    crs : pyproj.CRS or str
        The grid's CRS.
    x, y : array_like
        Pixel-centre coordinates of the grid in CRS units (m), evenly spaced; ``y`` decreasing (north up).

    Returns
    -------
    pandas.DataFrame
        The rows of ``sites`` whose pixel lies at least :data:`CLOUD_NEIGHBOURHOOD_PX` pixels inside the
        grid (so that its neighbourhood is whole), in table order, with ``row`` and ``col`` (int) added.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    out = sites.copy()
    if len(out) == 0 or x.size < 2 or y.size < 2:
        return out.assign(row=np.zeros(len(out), np.int64), col=np.zeros(len(out), np.int64)).iloc[:0]
    out["row"], out["col"] = pixel_index(crs, x, y, out["lon"].to_numpy(), out["lat"].to_numpy())
    m = CLOUD_NEIGHBOURHOOD_PX
    inside = (out["row"] >= m) & (out["row"] < y.size - m) & (out["col"] >= m) & (out["col"] < x.size - m)
    return out[inside]


def neighbourhood(row: int, col: int) -> tuple[slice, slice]:
    """The (y, x) slices of the pixels within :data:`CLOUD_NEIGHBOURHOOD_PX` of a pixel (3 x 3)."""
    m = CLOUD_NEIGHBOURHOOD_PX
    return slice(row - m, row + m + 1), slice(col - m, col + m + 1)


def station_lst(insitu_dir: str | os.PathLike[str], site_id: str) -> pd.DataFrame:
    """Every record of a site's station file (``<insitu_dir>/<site_id>.csv``) as LST with its reason.

    Returns
    -------
    pandas.DataFrame
        :func:`~sftl_dask.io.insitu.insitu_lst` of the file: ``time_utc``, ``lst_k`` (K), ``reason`` ...

    Raises
    ------
    ValueError
        If the file is missing (naming it and the site) or does not read (:func:`read_insitu_csv`).
    """
    path = Path(insitu_dir) / f"{site_id}.csv"
    if not path.exists():
        raise ValueError(f"{path}: station file of site {site_id} not found")
    meta, frame = read_insitu_csv(path)
    return insitu_lst(frame, float(meta["broadband_emissivity"]))


def insitu_at_overpasses(frame: pd.DataFrame, times: Sequence[Any] | NDArray[Any], *,
                         window_min: float = WINDOW_MIN) -> pd.DataFrame:
    """In situ LST of a station at each overpass (:func:`~sftl_dask.io.insitu.overpass_lst` with the rules).

    Parameters
    ----------
    frame : pandas.DataFrame
        A station's records (:func:`station_lst`).
    times : sequence of datetime-like
        Overpass times (UTC).
    window_min : float
        Half-width of the averaging window (min).

    Returns
    -------
    pandas.DataFrame
        One row per time: ``lst_insitu`` (K, NaN unless usable), ``lst_insitu_std`` (K), ``n_insitu``
        (good records) and ``insitu_reason``.
    """
    # each overpass sees only the records of its window: cut them out by binary search (a station's years of
    # records are scanned once, not once per overpass); overpass_lst applies the rules to them
    when = pd.DatetimeIndex(pd.to_datetime(np.asarray(times)))
    if when.tz is not None:
        when = when.tz_convert("UTC").tz_localize(None)
    stamps = frame["time_utc"].to_numpy(dtype="datetime64[ns]")
    if stamps.size > 1 and (np.diff(stamps) < np.timedelta64(0, "ns")).any():
        frame = frame.iloc[np.argsort(stamps, kind="stable")]
        stamps = frame["time_utc"].to_numpy(dtype="datetime64[ns]")
    half = np.timedelta64(round(window_min * 60e9), "ns")
    t64 = when.to_numpy(dtype="datetime64[ns]")
    lo, hi = np.searchsorted(stamps, t64 - half, side="left"), np.searchsorted(stamps, t64 + half, side="right")
    res = [overpass_lst(frame.iloc[a:b], t, window_min=window_min, min_samples=MIN_SAMPLES, max_std_k=MAX_STD_K)
           for a, b, t in zip(lo, hi, times, strict=True)]
    return pd.DataFrame({
        "lst_insitu": np.array([float(r["lst_k"]) for r in res], dtype=np.float64),
        "lst_insitu_std": np.array([float(r.get("std_k", np.nan)) for r in res], dtype=np.float64),
        "n_insitu": np.array([int(r["n"]) for r in res], dtype=np.int64),
        "insitu_reason": np.array([str(r["reason"]) for r in res], dtype=object),
    })


def matchup_reasons(covered: ArrayLike, cloud_near: ArrayLike, ancillary_ok: ArrayLike,
                    insitu_reason: ArrayLike) -> NDArray[np.object_]:
    """Why each candidate matchup can or cannot be used; the first rule that applies wins.

    Parameters
    ----------
    covered : array_like of bool
        The scene observed the pixel.
    cloud_near : array_like of bool
        Cloud at the pixel or within :data:`CLOUD_NEIGHBOURHOOD_PX` of it (:func:`neighbourhood`).
    ancillary_ok : array_like of bool
        The pixel's water vapour and emissivities are present (and every model input finite).
    insitu_reason : array_like of str
        The in situ reason (:func:`insitu_at_overpasses`).

    Returns
    -------
    numpy.ndarray of str
        ``"no coverage"``, ``"cloud"``, ``"ancillary missing"``, else the in situ reason (``"ok"`` = usable).
    """
    reason = np.array(insitu_reason, dtype=object, copy=True)
    covered = np.asarray(covered, dtype=bool)
    reason[~np.asarray(ancillary_ok, dtype=bool)] = "ancillary missing"
    reason[np.asarray(cloud_near, dtype=bool)] = "cloud"
    reason[~covered] = "no coverage"
    return reason


# ---------------------------------------------------------------------------------------------
# the training matchups


def _with_neighbours(name: str, stores: Mapping[str, Path], own: Any) -> Any:
    """A tile with its (up to 8) neighbouring tiles as one mosaic, restricted to the tile's own time steps."""
    try:
        around = TileScheme.neighbours(name)
    except ValueError:  # a store that is not a tile
        return own
    near = {n: stores[n] for n in [name, *around.values()] if n in stores}
    if len(near) == 1:
        return own
    return mosaic(near, ok_var="ingest_ok").sel(time=own["time"].values)


def build_matchups(cube_root: str | os.PathLike[str], insitu_dir: str | os.PathLike[str],
                   sites_csv: str | os.PathLike[str], *, window_min: float = WINDOW_MIN) -> pd.DataFrame:
    """Build the matchup table of every site inside every grid of a cube.

    Parameters
    ----------
    cube_root : path
        Cube root (``sftl ingest --cube``) or one grid store.
    insitu_dir : path
        Folder of station CSVs named ``<site id>.csv``.
    sites_csv : path
        The site table.
    window_min : float
        Half-width of the in situ averaging window around the overpass (min).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`MATCHUP_COLUMNS`, one row per (site, scene), sorted by site and time.

    Raises
    ------
    ValueError
        If a site's station file is missing, or no site lies inside any grid.
    """
    root = Path(cube_root)
    stores = CubeRoot.of(root).stores()
    if not stores:
        raise ValueError(f"{root}: no scene cube here")
    sites = read_sites(sites_csv)
    rows: list[dict[str, Any]] = []
    for name, store in stores.items():
        own = open_cube(store)
        if own.sizes["time"] == 0:
            continue
        # the sites whose pixel lies in this tile, read from the mosaic of the tile and its neighbours (this
        # tile's scenes only), so that a site at a tile's edge keeps its pixel and its whole cloud neighbourhood
        r, c = pixel_index(own.rio.crs, own["x"].values, own["y"].values, sites["lon"].to_numpy(),
                           sites["lat"].to_numpy())
        here = (r >= 0) & (r < own.sizes["y"]) & (c >= 0) & (c < own.sizes["x"])
        m = CLOUD_NEIGHBOURHOOD_PX
        inner = here & (r >= m) & (r < own.sizes["y"] - m) & (c >= m) & (c < own.sizes["x"] - m)
        if inner.any():
            rows += _site_rows(own, sites[inner], insitu_dir, window_min)
        if (here & ~inner).any():  # within the cloud neighbourhood of the tile's edge
            rows += _site_rows(_with_neighbours(name, stores, own), sites[here & ~inner], insitu_dir, window_min)
    if not rows:
        raise ValueError(f"{root}: no site of {sites_csv} lies inside any grid")
    df = pd.DataFrame(rows).sort_values(["site", "time_utc"]).reset_index(drop=True)
    return validate_matchups(df, source=str(root))


def _site_rows(ds: Any, sites: pd.DataFrame, insitu_dir: str | os.PathLike[str], window_min: float
               ) -> list[dict[str, Any]]:
    """Matchup rows of the sites inside a cube dataset (one per site and time step)."""
    rows: list[dict[str, Any]] = []
    times = ds["time"].values
    for _, site in site_pixels(sites, ds.rio.crs, ds["x"].values, ds["y"].values).iterrows():
        row, col = int(site["row"]), int(site["col"])
        ins = insitu_at_overpasses(station_lst(insitu_dir, str(site["id"])), times, window_min=window_min)
        pix = ds[list(_PIXEL_VARS)].isel(y=row, x=col).compute()
        ys, xs = neighbourhood(row, col)
        cloud9 = ds["cloud"].isel(y=ys, x=xs).max(("y", "x")).values
        anc = ds["ancillary_missing"].isel(y=row, x=col).values
        values = {v: pix[v].values.astype(np.float64) for v in _PIXEL_VARS}
        inputs_ok = np.logical_and.reduce([np.isfinite(values[k]) for k in _FEATURE_INPUTS])
        reasons = matchup_reasons(np.isfinite(values["bt_10_80"]), cloud9 != 0, (anc == 0) & inputs_ok,
                                  ins["insitu_reason"])
        for t in range(times.size):
            rows.append({
                "site": site["id"], "region": site["region"], "land_cover": site.get("land_cover", ""),
                "scene_id": str(ds["scene_id"].values[t]), "time_utc": times[t], "row": row, "col": col,
                **{v: float(values[v][t]) for v in _PIXEL_VARS},
                "cloud": int(cloud9[t]), "ancillary_missing": int(anc[t]),
                "lst_insitu": float(ins["lst_insitu"].iat[t]),
                "lst_insitu_std": float(ins["lst_insitu_std"].iat[t]),
                "n_insitu": int(ins["n_insitu"].iat[t]), "reason": str(reasons[t]),
            })
    return rows


def validate_matchups(df: pd.DataFrame, *, source: str = "matchups", known_sites: Mapping[str, Any] | None = None
                      ) -> pd.DataFrame:
    """Check a matchup table against the schema; return it with canonical dtypes.

    Raises
    ------
    ValueError
        Naming ``source`` and the problem: missing columns, duplicate (site, time) rows, unknown sites,
        unknown reasons, or NaN in a usable (``reason == "ok"``) row.
    """
    missing = [c for c in MATCHUP_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}")
    out = df[list(MATCHUP_COLUMNS)].copy()
    try:
        for c, dt in MATCHUP_COLUMNS.items():
            out[c] = pd.to_datetime(out[c]) if dt.startswith("datetime") else out[c].astype(dt)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: column {c} cannot be read as {dt} ({exc})") from None
    dup = out.duplicated(["site", "time_utc"], keep=False)
    if dup.any():
        first = out[dup].iloc[0]
        raise ValueError(f"{source}: {int(dup.sum())} duplicate (site, time) rows, e.g. {first['site']} at "
                         f"{first['time_utc']}")
    if known_sites is not None:
        unknown = sorted(set(out["site"]) - set(known_sites))
        if unknown:
            raise ValueError(f"{source}: unknown site(s) {', '.join(unknown)}")
    ok = out["reason"] == "ok"
    need = [*_FEATURE_INPUTS, "lst_insitu"]
    bad = ok & out[need].isna().any(axis=1)
    if bad.any():
        cols = [c for c in need if out.loc[bad, c].isna().any()]
        raise ValueError(f"{source}: {int(bad.sum())} usable row(s) with NaN in {', '.join(cols)}")
    return out
