"""Matchups: in situ LST at the overpass joined to the cube's pixel at each site.

One table schema (:data:`MATCHUP_COLUMNS`) for every source; every (site, scene) pair of a
site inside a cube's grid gets a row, and a row that cannot be used keeps a ``reason``
instead of being dropped: ``ok``, ``cloud`` (cloud at the pixel or its 8 neighbours),
``no coverage`` (the scene does not see the site), ``ancillary missing``, or the in situ
reason (``no data``, ``too few samples``, ``unstable`` ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sftl_dask.physics.channels import THERMAL_NAMES

__all__ = ["MATCHUP_COLUMNS", "build_matchups", "validate_matchups"]

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


def build_matchups(cube_root: str | os.PathLike[str], insitu_dir: str | os.PathLike[str],
                   sites_csv: str | os.PathLike[str], *, window_min: float = 15.0) -> pd.DataFrame:
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
    from pyproj import Transformer

    from sftl_dask.io.cube import cube_stores, open_cube
    from sftl_dask.io.insitu import insitu_lst, overpass_lst, read_insitu_csv, read_sites

    root = Path(cube_root)
    stores = [root] if (root / ".zgroup").exists() else list(cube_stores(root).values())
    if not stores:
        raise ValueError(f"{root}: no scene cube here")
    sites = read_sites(sites_csv)
    rows: list[dict[str, Any]] = []
    for store in stores:
        ds = open_cube(store)
        if ds.sizes["time"] == 0:
            continue
        tr = Transformer.from_crs("EPSG:4326", ds.rio.crs, always_xy=True)
        x, y = ds["x"].values, ds["y"].values
        dx, dy = abs(x[1] - x[0]), abs(y[1] - y[0])
        for _, site in sites.iterrows():
            sx, sy = tr.transform(float(site["lon"]), float(site["lat"]))
            col = int(np.floor((sx - (x[0] - dx / 2)) / dx))
            row = int(np.floor(((y[0] + dy / 2) - sy) / dy))
            if not (1 <= row < y.size - 1 and 1 <= col < x.size - 1):
                continue
            path = Path(insitu_dir) / f"{site['id']}.csv"
            if not path.exists():
                raise ValueError(f"{path}: station file of site {site['id']} not found")
            meta, frame = read_insitu_csv(path)
            frame = insitu_lst(frame, float(meta["broadband_emissivity"]))
            pix = ds[list(_PIXEL_VARS)].isel(y=row, x=col).compute()
            cloud9 = ds["cloud"].isel(y=slice(row - 1, row + 2), x=slice(col - 1, col + 2)).max(("y", "x")).values
            anc = ds["ancillary_missing"].isel(y=row, x=col).values
            for t in range(ds.sizes["time"]):
                when = ds["time"].values[t]
                ov = overpass_lst(frame, when, window_min=window_min)
                rec = {
                    "site": site["id"], "region": site["region"], "land_cover": site.get("land_cover", ""),
                    "scene_id": str(ds["scene_id"].values[t]), "time_utc": when, "row": row, "col": col,
                    **{v: float(pix[v].values[t]) for v in _PIXEL_VARS},
                    "cloud": int(cloud9[t]), "ancillary_missing": int(anc[t]),
                    "lst_insitu": float(ov["lst_k"]), "lst_insitu_std": float(ov.get("std_k", np.nan)),
                    "n_insitu": int(ov["n"]),
                }
                if not np.isfinite(rec["bt_10_80"]):
                    rec["reason"] = "no coverage"
                elif rec["cloud"]:
                    rec["reason"] = "cloud"
                elif rec["ancillary_missing"] or not all(np.isfinite(rec[k]) for k in _FEATURE_INPUTS):
                    rec["reason"] = "ancillary missing"
                else:
                    rec["reason"] = str(ov["reason"])
                rows.append(rec)
    if not rows:
        raise ValueError(f"{root}: no site of {sites_csv} lies inside any grid")
    df = pd.DataFrame(rows).sort_values(["site", "time_utc"]).reset_index(drop=True)
    return validate_matchups(df, source=str(root))


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
