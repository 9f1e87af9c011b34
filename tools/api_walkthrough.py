"""Run the walkthrough of docs/api.md on an LST root and write its figures to docs/img/.

Usage::

    python tools/api_walkthrough.py --lst LST_ROOT --sites SITES_CSV [--img docs/img] [--work DIR]

Runs the document's steps (the same calls as its code blocks) and prints the numbers it quotes, so the
document can be refreshed from a new run; tests/test_api_docs.py runs the code blocks themselves as written.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _timed(label: str, fn: Any) -> Any:
    t0 = time.perf_counter()
    out = fn()
    print(f"{label}: {time.perf_counter() - t0:.2f} s")
    return out


def _cf(path: Path) -> str:
    from compliance_checker.runner import CheckSuite, ComplianceChecker

    CheckSuite.load_all_available_checkers()
    report = path.with_suffix(".cf.json")
    ComplianceChecker.run_checker(str(path), ["cf:1.11"], 0, "normal", output_filename=str(report),
                                  output_format="json")
    r = json.loads(report.read_text())["cf:1.11"]
    fails = [x["name"] for lvl in ("high_priorities", "medium_priorities", "low_priorities") for x in r[lvl]
             if x["value"][0] < x["value"][1]]
    return f"{r['scored_points']}/{r['possible_points']}, failures: {fails or 'none'}"


def _save(ax: Any, path: Path) -> None:
    ax.figure.savefig(path, dpi=100, bbox_inches="tight")
    print(f"figure {path.name}: title {ax.get_title()!r}; x label {ax.get_xlabel()!r}")


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
    from sftl_dask.plotting import pyplot

    plt = pyplot()
    sites = pd.read_csv(a.sites)
    daman = sites.set_index("id").loc["HH01"]
    try:
        sftl_dask.open_lst(a.lst)
    except ValueError as exc:
        print(f"open_lst(root): {exc}")
    ds = _timed("open_lst by Daman's point", lambda: sftl_dask.open_lst(a.lst, grid=(daman.lon, daman.lat)))
    print(f"  {dict(ds.sizes)}; {str(ds['time'].values[0])[:10]} .. {str(ds['time'].values[-1])[:10]}; "
          f"{ds.rio.crs}; tile {Path(ds.attrs['sftl_store']).name}; chunks {dict(ds.chunks)['y'][:1]}")
    print("qc flags:", ", ".join(ds.sftl.flags))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        good = _timed("good()", lambda: ds.sftl.good())
        _timed("strict mask", lambda: ds.sftl.mask(["cloud_adjacent", "uncertainty_gt_3k"]))
    for w in caught:
        print(f"  warning: {w.message}")
    n_all = int(ds["lst"].notnull().sum().compute())
    n_good = int(good["lst"].notnull().sum().compute())
    print(f"produced pixels {n_all:,}; good {n_good:,} ({n_good / max(n_all, 1):.1%})")

    series = _timed("at Daman", lambda: good.sftl.at(lon=daman.lon, lat=daman.lat))
    print(f"  {int(series['lst'].notna().sum())} of {len(series)} steps valid")
    heihe = sites[sites.region == "heihe"]
    table = _timed("at_sites heihe 3x3 mean", lambda: good.sftl.at_sites(heihe, window=3, how="mean"))
    print(table.dropna(subset=["lst"]).head(6).to_string(index=False, float_format="{:.2f}".format))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        every = _timed("sftl_dask.at_sites(root, all sites, good=True)",
                       lambda: sftl_dask.at_sites(a.lst, sites, good=True))
    print(f"  {every['site'].nunique()} sites, zones {every.groupby('zone')['site'].nunique().to_dict()}, "
          f"{len(every)} rows")
    _save(good.sftl.plot_sites(heihe), a.img / "api_series.png")
    _save(ds.sftl.plot_map(), a.img / "api_map.png")
    _save(ds.sftl.plot_map(var="qc"), a.img / "api_qc.png")
    _composites_and_anomalies(ds, good, daman, a, plt)


def _composites_and_anomalies(ds: Any, good: Any, daman: Any, a: Any, plt: Any) -> None:
    monthly = _timed("monthly median composite", lambda: good.sftl.composite("MS", how="median").compute())
    n = monthly["n_obs"]
    print(f"  {monthly.sizes['time']} months; median n_obs {float(n.where(n > 0).median()):.0f}; median "
          f"uncertainty {float(monthly['lst_uncertainty'].median()):.2f} K; attrs {monthly['lst'].attrs}")
    _save(monthly.sftl.plot_map(), a.img / "api_monthly.png")
    clim = _timed("climatology", lambda: good.sftl.climatology("month").compute())
    anom = good.sftl.anomaly(clim)
    centre = anom["lst"].isel(x=ds.sizes["x"] // 2, y=ds.sizes["y"] // 2).compute()
    print(f"climatology months {list(clim['month'].values)}; anomaly rms at the centre "
          f"{float(np.sqrt(np.nanmean(centre.values ** 2))):.2f} K over {int(np.isfinite(centre.values).sum())} steps")
    _save(anom.sftl.plot_map(), a.img / "api_anomaly.png")
    _save(anom.sftl.plot_series(daman.lon, daman.lat, label=daman["name"]), a.img / "api_anomaly_series.png")
    plt.close("all")
    best = int(ds["lst"].notnull().sum(("y", "x")).argmax("time").values)
    for name, product in {"lst_step.nc": ds.isel(time=[best]), "lst_monthly.nc": monthly, "lst_clim.nc": clim,
                          "lst_anom.nc": anom.isel(time=[best])}.items():
        path = a.work / name
        path.unlink(missing_ok=True)
        _timed(f"to_netcdf {name}", lambda product=product, path=path: product.sftl.to_netcdf(path))
        print(f"  {path.stat().st_size / 1e6:.1f} MB; compliance-checker cf:1.11 {_cf(path)}")
    for name, kw in {"lst_step.tif": {}, "qc_step.tif": {"variables": ("qc",)}}.items():
        path = a.work / name
        path.unlink(missing_ok=True)
        ds.sftl.to_cog(path, time=best, **kw)
        print(f"to_cog {name}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
