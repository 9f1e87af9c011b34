"""Run the walkthrough of docs/api.md on an LST root and write its figures to docs/img/.

Usage::

    python tools/api_walkthrough.py --lst LST_ROOT --sites SITES_CSV [--img docs/img] [--work DIR]

Prints the numbers the walkthrough quotes (as Markdown), so the document can be refreshed from a new run.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lst", required=True, type=Path)
    p.add_argument("--sites", required=True, type=Path)
    p.add_argument("--img", default=Path("docs/img"), type=Path)
    p.add_argument("--work", default=Path("/tmp/sftl-api-walkthrough"), type=Path)
    a = p.parse_args()
    a.img.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)

    import sftl_dask
    from sftl_dask.io.insitu import read_sites
    from sftl_dask.io.lst import lst_stores
    from sftl_dask.plotting import pyplot

    plt = pyplot()
    sites = read_sites(a.sites)
    print(f"LST root {a.lst}: grids {', '.join(lst_stores(a.lst))}")
    site = sites.iloc[0]
    t0 = time.perf_counter()
    ds = sftl_dask.open_lst(a.lst, grid=(float(site["lon"]), float(site["lat"])))
    print(f"open_lst by the point of {site['id']}: {dict(ds.sizes)} in {time.perf_counter() - t0:.2f} s; "
          f"{str(ds['time'].values[0])[:10]} .. {str(ds['time'].values[-1])[:10]}; crs {ds.rio.crs}")
    print("qc flags:", ", ".join(ds.sftl.flags))
    good = ds.sftl.good()
    n_all = int(ds["lst"].notnull().sum().compute())
    n_good = int(good["lst"].notnull().sum().compute())
    print(f"produced pixels {n_all:,}; good {n_good:,} ({n_good / max(n_all, 1):.1%})")

    t0 = time.perf_counter()
    table = good.sftl.at_sites(sites[sites["region"] == site["region"]], window=3, how="mean")
    print(f"at_sites ({len(set(table['site']))} sites in this grid, 3x3 mean): {len(table)} rows in "
          f"{time.perf_counter() - t0:.2f} s")
    print(table.dropna(subset=["lst"]).head(6).to_string(index=False, float_format="{:.2f}".format))

    one = table[table["site"] == table.dropna(subset=["lst"])["site"].iloc[0]]
    sid = one["site"].iloc[0]
    s = sites.set_index("id").loc[sid]
    ax = good.sftl.plot_series(float(s["lon"]), float(s["lat"]), window=3, how="mean", label=f"{sid} (3x3 mean)")
    ax.figure.savefig(a.img / "api_series.png", dpi=110)
    plt.close(ax.figure)

    ax = ds.sftl.plot_map()
    ax.figure.savefig(a.img / "api_map.png", dpi=110)
    plt.close(ax.figure)

    t0 = time.perf_counter()
    monthly = good.sftl.composite("MS", how="median", min_count=1).compute()
    print(f"monthly median composite: {monthly.sizes['time']} months in {time.perf_counter() - t0:.1f} s; "
          f"median count {float(monthly['count'].where(monthly['count'] > 0).median()):.0f}; median uncertainty "
          f"{float(monthly['lst_uncertainty'].median()):.2f} K (single scenes: "
          f"{float(good['lst_uncertainty'].mean().compute()):.2f} K mean)")
    seasons = good.sftl.composite("QS-DEC", how="mean").compute()
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), constrained_layout=True)
    summer = [i for i, t in enumerate(pd.DatetimeIndex(seasons["time"].values)) if t.month in (12, 3, 6, 9)][:4]
    vmin, vmax = np.nanpercentile(seasons["lst"].values, [2, 98])
    for ax, i in zip(axes, summer, strict=False):
        img = ax.imshow(seasons["lst"].isel(time=i).values, vmin=vmin, vmax=vmax, cmap="inferno")
        ax.set_title(f"season from {str(seasons['time'].values[i])[:7]}")
        ax.set_axis_off()
    fig.colorbar(img, ax=axes, label="mean LST (K)", shrink=0.8)
    fig.savefig(a.img / "api_seasons.png", dpi=100)
    plt.close(fig)

    clim = good.sftl.climatology("month")
    anom = good.sftl.anomaly(clim)
    a_site = anom["lst"].sel(x=ds["x"][ds.sizes["x"] // 2], y=ds["y"][ds.sizes["y"] // 2]).compute()
    print(f"climatology: months {list(clim['month'].values)}; anomaly at the centre pixel, rms "
          f"{float(np.sqrt(np.nanmean(a_site.values ** 2))):.2f} K over {int(np.isfinite(a_site.values).sum())} steps")

    nc = a.work / "one_step.nc"
    nc.unlink(missing_ok=True)
    best = int(ds["lst"].notnull().sum(("y", "x")).argmax("time").values)
    ds.isel(time=[best]).sftl.to_netcdf(nc)
    cog = a.work / "one_step.tif"
    cog.unlink(missing_ok=True)
    ds.sftl.to_cog(cog, time=best)
    print(f"exports: {nc} ({nc.stat().st_size / 1e6:.1f} MB), {cog} ({cog.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
