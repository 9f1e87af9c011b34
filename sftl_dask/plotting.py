"""Every figure of the package, in one leaf module.

Each function takes data (arrays, DataFrames, xarray objects, already computed or lazily loaded) and a path
or an axes, draws, and saves; none reads a product or knows where the data came from. The callers decide what
to show: :mod:`sftl_dask.api` (the accessor's maps and series), :mod:`sftl_dask.validate` (scatter and time
series against the radiometers), :mod:`sftl_dask.pipelines.demo` (LST maps with their QC mask, monthly
composites) and :mod:`sftl_dask.report` (the simulation, the SFTL stages, the experiment grid).

This module imports nothing of the package but :mod:`sftl_dask.metrics` (a leaf, ``tools/house.py`` checks it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from sftl_dask.metrics import metrics, rmse

__all__ = ["MAX_PANELS", "QC_CLASS_NAMES", "composite_figure", "foundation_figures", "grid_figures",
           "learning_columns", "lst_map", "lst_qc_figure", "point_series", "pyplot", "qc_classes", "qc_map",
           "reliability_diagram", "sftl_figure", "validation_scatter", "validation_timeseries"]

#: Most time-series panels of :func:`validation_timeseries`: the sites with the most usable matchups.
MAX_PANELS = 24
_GAP = np.timedelta64(3, "h")  # the radiometer line breaks across gaps in its record longer than this
_MODEL_COLORS = {"dnn": "#3b75af", "trf": "#e1812c", "cnn": "#3a923a", "rf": "#c03d3e", "lgbm": "#9372b2"}
_STRATEGY_LINES: dict[str, Any] = {"full": "-", "head": "--", "gradual": "-.", "adapter": ":", "lora": (0, (5, 1))}
#: The QC classes of :func:`lst_qc_figure` (class index = position) and their colours.
QC_CLASS_NAMES = ("good", "cloud adjacent", "outside pre-training range", "missing ancillary", "cloud",
                  "not covered")
_QC_CLASS_COLORS = ("#3a923a", "#f2c14e", "#e1812c", "#8c564b", "#dddddd", "#ffffff")
#: The flags of each class of :data:`QC_CLASS_NAMES` after "good" (a later class wins).
_QC_CLASS_FLAGS = (("cloud_adjacent",), ("wvc_outside_pretraining_range", "bt_outside_pretraining_range",
                                         "vza_outside_pretraining_range", "emissivity_outside_pretraining_range"),
                   ("missing_ancillary",), ("cloud",), ("not_covered",))


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (figures are written to files).

    matplotlib is imported here, not at the top of the module: ``import matplotlib.pyplot`` costs about 1-3 s
    (measured with ``python -X importtime``: 3.3 s on a loaded 2-core machine), and ``import sftl_dask`` (every
    ``sftl`` verb, every Dask worker that unpickles a task) would pay it without drawing anything.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------
# maps and series of an LST cube (the ``.sftl`` accessor, the demo)


def _axes_labels(ax: Any, crs: str | None) -> None:
    """Easting and northing in km, with the CRS (its name says the UTM zone) on the axes."""
    where = f" ({crs})" if crs else ""
    ax.set_xlabel(f"easting (km){where}", fontsize=8)
    ax.set_ylabel("northing (km)")


def _var_label(da: xr.DataArray, var: str) -> str:
    """The colour bar's label: the long name (LST for land surface temperature) and its units."""
    name = str(da.attrs.get("long_name", var)).replace("land surface temperature", "LST")
    units = str(da.attrs.get("units", ""))
    return f"{name} ({units})" if units and units != "1" else name


def lst_map(da: xr.DataArray, *, var: str, ax: Any = None, title: str | None = None, crs: str | None = None,
            anomaly: bool = False, **kwargs: Any) -> Any:
    """One step of a cube variable as a map in km of its projected ``x``/``y``, with a colour bar.

    Parameters
    ----------
    da : xarray.DataArray
        2-D (``y``, ``x``) with ``x``/``y`` coordinates (m) and, optionally, a scalar ``time``; ``long_name`` and
        ``units`` attributes in the colour bar's label.
    var : str
        Its name: the label where there is no ``long_name``, and the default colour map (``inferno`` for
        ``lst``, ``viridis`` otherwise).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new 6.5 x 5.5 in figure).
    title : str, optional
        Default: the long name and the time.
    crs : str, optional
        The CRS in words (``EPSG:32650, WGS 84 / UTM zone 50N``), on the x axis.
    anomaly : bool
        A difference from a reference: a diverging colour map (``RdBu_r``) centred on 0, symmetric limits.
    **kwargs
        Passed to ``imshow`` (``cmap``, ``vmin``, ...).

    Returns
    -------
    matplotlib.axes.Axes
    """
    x, y = da["x"].values, da["y"].values
    if ax is None:
        _, ax = pyplot().subplots(figsize=(6.5, 5.5), constrained_layout=True)
    extent = (x[0] / 1e3, x[-1] / 1e3, y[-1] / 1e3, y[0] / 1e3)
    values = np.asarray(da.values, dtype=np.float64)
    if anomaly:
        big = float(np.nanpercentile(np.abs(values), 98)) if np.isfinite(values).any() else 1.0
        kwargs.setdefault("vmin", -max(big, 1e-3))
        kwargs.setdefault("vmax", max(big, 1e-3))
    cmap = kwargs.pop("cmap", "RdBu_r" if anomaly else "inferno" if var == "lst" else "viridis")
    img = ax.imshow(values, extent=extent, origin="upper", cmap=cmap, **kwargs)
    ax.figure.colorbar(img, ax=ax, label=_var_label(da, var), shrink=0.85)
    if title is None:
        when = f", {np.datetime_as_string(da['time'].values, unit='m').replace('T', ' ')} UTC" \
            if "time" in da.coords and da["time"].ndim == 0 else ""
        title = f"{_var_label(da, var).split(' (')[0]}{when}"
    ax.set_title(title, fontsize=10)
    _axes_labels(ax, crs)
    return ax


def qc_classes(qc: np.ndarray, flags: Mapping[str, tuple[int, int]]) -> np.ndarray:
    """Per pixel, the index of its class in :data:`QC_CLASS_NAMES` (a later class wins: cloud over range).

    Parameters
    ----------
    qc : numpy.ndarray
        ``qc`` bit flags.
    flags : mapping of str to (int, int)
        Flag name -> (mask, value), as ``ds.sftl.flags`` gives them; a flag is set where ``qc & mask == value``.
    """
    qc = np.asarray(qc).astype(np.int64)
    classes = np.zeros(qc.shape, dtype=np.int8)
    for k, names in enumerate(_QC_CLASS_FLAGS, start=1):
        for name in names:
            if name in flags:
                mask, value = flags[name]
                classes[(qc & mask) == value] = k
    return classes


def qc_map(classes: np.ndarray, x: np.ndarray, y: np.ndarray, *, ax: Any = None, title: str = "QC classes",
           crs: str | None = None) -> Any:
    """A categorical map of QC classes (:func:`qc_classes`) with a legend naming each class and its pixel share.

    Parameters
    ----------
    classes : numpy.ndarray
        Per pixel, the index of its class in :data:`QC_CLASS_NAMES`.
    x, y : numpy.ndarray
        Pixel centres (m).
    ax, title, crs
        As in :func:`lst_map`.

    Returns
    -------
    matplotlib.axes.Axes
    """
    from matplotlib.colors import ListedColormap  # with pyplot: see pyplot()
    from matplotlib.patches import Patch

    if ax is None:
        _, ax = pyplot().subplots(figsize=(6.5, 5.5), constrained_layout=True)
    ax.imshow(classes, extent=(x[0] / 1e3, x[-1] / 1e3, y[-1] / 1e3, y[0] / 1e3),
              cmap=ListedColormap(list(_QC_CLASS_COLORS)), vmin=-0.5, vmax=len(QC_CLASS_NAMES) - 0.5,
              interpolation="nearest")
    share = np.bincount(np.asarray(classes).ravel().astype(np.int64), minlength=len(QC_CLASS_NAMES)) / classes.size
    handles = [Patch(facecolor=c, edgecolor="0.4", label=f"{n} ({p:.0%})")
               for n, c, p in zip(QC_CLASS_NAMES, _QC_CLASS_COLORS, share, strict=True)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, title="QC class",
              title_fontsize=8)
    ax.set_title(title, fontsize=10)
    _axes_labels(ax, crs)
    return ax


def point_series(df: pd.DataFrame, *, label: str, ax: Any = None, ylabel: str = "LST (K)",
                 title: str = "LST series (±1σ)", zero_line: bool = False) -> Any:
    """A point's LST series with +-1 sigma error bars.

    Parameters
    ----------
    df : pandas.DataFrame
        Indexed by time (UTC), with ``lst`` and, optionally, ``lst_uncertainty`` (K).
    label : str
        The legend's entry (the site's name).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new 8 x 3.5 in figure).
    ylabel, title : str
        The y axis' label and the title.
    zero_line : bool
        Draw y = 0 (an anomaly's reference).

    Returns
    -------
    matplotlib.axes.Axes
    """
    if ax is None:
        _, ax = pyplot().subplots(figsize=(8, 3.5), constrained_layout=True)
    yerr = df["lst_uncertainty"] if "lst_uncertainty" in df else None
    ax.errorbar(df.index, df["lst"], yerr=yerr, fmt="o", ms=3, capsize=2, label=label)
    if zero_line:
        ax.axhline(0.0, color="k", lw=0.8, zorder=0)
    ax.set(xlabel="time (UTC)" if isinstance(df.index, pd.DatetimeIndex) else str(df.index.name), ylabel=ylabel,
           title=title)
    ax.legend(loc="best", fontsize=8)
    return ax


def composite_figure(composite: xr.Dataset, step: int, title: str, path: Path, *, crs: str | None = None) -> None:
    """A composite's LST beside its number of good values per pixel (``n_obs``), as a PNG.

    Parameters
    ----------
    composite : xarray.Dataset
        A composite store or ``ds.sftl.composite(...)``: ``lst`` (K) and ``n_obs`` over ``time``, ``y``, ``x``,
        their ``long_name`` in the panels' titles.
    step : int
        The time index drawn.
    title : str
        The region's name, first words of the LST panel's title.
    path : pathlib.Path
        The PNG written.
    crs : str, optional
        The CRS in words, on the x axes.
    """
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    month = pd.Timestamp(composite["time"].values[step]).strftime("%b %Y")
    lst = composite["lst"].isel(time=step)
    lst_map(lst, var="lst", ax=ax[0], crs=crs,
            title=f"{title}: {_var_label(lst, 'lst').split(' (')[0]}, {month}")
    n = composite["n_obs"].isel(time=step)
    lst_map(n, var="n_obs", ax=ax[1], cmap="Blues", crs=crs, title=f"{_var_label(n, 'n_obs')}, {month}")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def lst_qc_figure(step: xr.Dataset, classes: np.ndarray, region: str, path: Path, *, crs: str | None = None
                  ) -> None:
    """One time step's LST map beside its QC mask, as a PNG.

    Parameters
    ----------
    step : xarray.Dataset
        One time step of an LST cube (``lst`` K, ``x``/``y`` m, scalar ``time``), loaded.
    classes : numpy.ndarray
        Per pixel, the index of its QC class in :data:`QC_CLASS_NAMES` (same shape as ``lst``).
    region : str
        First word of the LST panel's title.
    path : pathlib.Path
        The PNG written.
    crs : str, optional
        The CRS in words, on the x axes.
    """
    plt = pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(13, 4.8), constrained_layout=True)
    when = np.datetime_as_string(step["time"].values, unit="m").replace("T", " ")
    lst_map(step["lst"], var="lst", ax=ax[0], crs=crs, title=f"{region}: LST {when} UTC")
    qc_map(classes, step["x"].values, step["y"].values, ax=ax[1], crs=crs, title=f"{region}: QC classes {when} UTC")
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# validation against the radiometers


def validation_scatter(matchups: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    """Retrieved against in situ LST, +-1 sigma error bars, the 1:1 line, each region's figures in the legend.

    Parameters
    ----------
    matchups : pandas.DataFrame
        The validation's matchups (``reason``, ``region``, ``lst``, ``lst_uncertainty``, ``lst_insitu``,
        ``lst_insitu_std``; K).
    table : pandas.DataFrame
        Their metrics per ``level`` (``all``, ``region``, ``site``): ``name``, ``n``, ``rmse_k``, ``bias_k``,
        ``ubrmse_k`` (K), ``r2``, ``within_1sigma``.
    path : pathlib.Path
        The PNG written.
    """
    plt = pyplot()
    ok = matchups[matchups["reason"] == "ok"]
    fig, ax = plt.subplots(figsize=(6.4, 6.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    regions = table[table["level"] == "region"]
    for i, (_, m) in enumerate(regions.iterrows()):
        sub = ok[ok["region"] == m["name"]]
        if sub.empty:
            continue
        ax.errorbar(sub["lst_insitu"], sub["lst"], yerr=sub["lst_uncertainty"], xerr=sub["lst_insitu_std"],
                    fmt="o", ms=3.5, lw=0.6, capsize=0, alpha=0.8, color=colors[i % len(colors)],
                    label=f"{m['name']}: n={m['n']}, RMSE {m['rmse_k']:.2f} K, bias {m['bias_k']:+.2f} K, "
                          f"R² {m['r2']:.2f}, ±1σ {m['within_1sigma']:.0%}")
    if ok.empty:
        ax.text(0.5, 0.5, "no usable matchups", ha="center", va="center", transform=ax.transAxes)
    else:
        both = np.concatenate([ok["lst_insitu"].to_numpy(), ok["lst"].to_numpy()])
        lo, hi = float(np.nanmin(both)) - 3.0, float(np.nanmax(both)) + 3.0
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="1:1")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        a = table[table["level"] == "all"].iloc[0]
        ax.set_title(f"all: n={a['n']}, RMSE {a['rmse_k']:.2f} K, bias {a['bias_k']:+.2f} K, "
                     f"ubRMSE {a['ubrmse_k']:.2f} K", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    ax.set_aspect("equal")
    ax.set_xlabel("in situ LST (K)")
    ax.set_ylabel("retrieved LST (K), bars ±1σ")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def validation_timeseries(matchups: pd.DataFrame, series: Mapping[str, pd.DataFrame], table: pd.DataFrame,
                          path: Path, *, window_min: float, max_panels: int = MAX_PANELS,
                          names: Mapping[str, str] | None = None) -> list[str]:
    """One panel per site: the radiometer's LST as a line, the retrieved LST at the usable matchups with +-1
    sigma bars and the in situ LST there.

    Parameters
    ----------
    matchups : pandas.DataFrame
        The validation's matchups (``site``, ``reason``, ``time_utc``, ``lst``, ``lst_uncertainty``,
        ``lst_insitu``; K).
    series : mapping of str to pandas.DataFrame
        Per site, its radiometer's record (``time_utc``, ``lst_k`` K).
    table : pandas.DataFrame
        The metrics per ``level``; the ``site`` rows give each panel's title.
    path : pathlib.Path
        The PNG written.
    window_min : float
        The in situ averaging half-window (min), in the legend.
    max_panels : int, optional
        Most panels: the sites with the most usable matchups.
    names : mapping of str to str, optional
        Site id -> site name (``sites.csv``'s ``name``), first in each panel's title.

    Returns
    -------
    list of str
        The sites shown, sorted.
    """
    import matplotlib.dates as mdates  # with pyplot: see pyplot()

    plt = pyplot()
    ok = matchups[matchups["reason"] == "ok"]
    sites = table[(table["level"] == "site") & (table["n"] > 0)].sort_values(["n", "name"], ascending=[False, True])
    shown = sorted(sites["name"].astype(str).head(max_panels))
    ncol = min(3, max(1, len(shown)))
    nrow = max(1, -(-len(shown) // ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.0 * ncol, 2.6 * nrow), squeeze=False)
    for ax in axes.ravel()[len(shown):]:
        ax.set_visible(False)
    if not shown:
        axes[0, 0].set_visible(True)
        axes[0, 0].text(0.5, 0.5, "no usable matchups", ha="center", va="center", transform=axes[0, 0].transAxes)
    for ax, site in zip(axes.ravel(), shown, strict=False):
        rows = matchups[matchups["site"] == site]
        pts = ok[ok["site"] == site]
        t0, t1 = rows["time_utc"].min() - pd.Timedelta(days=1), rows["time_utc"].max() + pd.Timedelta(days=1)
        st = series.get(site)
        if st is not None:
            st = st[(st["time_utc"] >= t0) & (st["time_utc"] <= t1)]
            when = st["time_utc"].to_numpy("datetime64[ns]")
            good = st["lst_k"].to_numpy(np.float64)
            gap = np.flatnonzero(np.diff(when) > _GAP) + 1  # no line across a gap in the record
            ax.plot(np.insert(when, gap, when[gap - 1] + _GAP // 2), np.insert(good, gap, np.nan), "-", lw=0.5,
                    color="0.65", label="radiometer", rasterized=True, zorder=1)
        ax.errorbar(pts["time_utc"], pts["lst"], yerr=pts["lst_uncertainty"], fmt="o", ms=3.5, lw=0.8, capsize=2,
                    color="C3", label="retrieved ±1σ")
        ax.plot(pts["time_utc"], pts["lst_insitu"], "k+", ms=6, label=f"in situ ±{window_min:g} min")
        m = table[(table["level"] == "site") & (table["name"] == site)].iloc[0]
        name = (names or {}).get(site)
        who = f"{name} ({site}, {m['region']})" if name and name != site else f"{site} ({m['region']})"
        ax.set_title(f"{who}: n={m['n']}, RMSE {m['rmse_k']:.2f} K, bias {m['bias_k']:+.2f} K", fontsize=8)
        ax.set_ylabel("LST (K)", fontsize=8)
        locator = mdates.AutoDateLocator(maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(labelsize=7)
    if shown:
        axes.ravel()[0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return shown


# ---------------------------------------------------------------------------------------------
# the simulation and one SFTL run (the demo's report)


def foundation_figures(sample: Mapping[str, np.ndarray], lst_sw: np.ndarray, n_rows: int, out: Path) -> None:
    """``sim_coverage.png`` (the simulation table's WVC, LST - air temperature and emissivity classes) and
    ``sw_fit.png`` (split-window LST against the simulated LST, and its RMSE per WVC bin) in ``out``.

    Parameters
    ----------
    sample : mapping of str to numpy.ndarray
        Rows of the simulation table: ``lst``, ``t_air`` (K), ``wvc`` (g cm-2), ``category``.
    lst_sw : numpy.ndarray
        The split-window LST of those rows (K).
    n_rows : int
        Rows of the whole table, in the title.
    out : pathlib.Path
        The folder written to.
    """
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].hist(sample["wvc"], bins=50, color="#3b75af")
    ax[0].set_xlabel("WVC (g cm$^{-2}$)")
    ax[0].set_ylabel("samples")
    ax[1].hist(sample["lst"] - sample["t_air"], bins=50, color="#e1812c")
    ax[1].set_xlabel("LST − bottom air temperature (K)")
    cats, counts = np.unique(sample["category"].astype(str), return_counts=True)
    ax[2].barh(cats, counts, color="#3a923a")
    ax[2].set_xlabel("samples")
    ax[2].set_title("emissivity classes")
    fig.suptitle(f"simulation table: {n_rows:,} rows")
    fig.tight_layout()
    fig.savefig(out / "sim_coverage.png", dpi=110)
    plt.close(fig)

    lst = sample["lst"]
    fit = metrics(lst_sw, lst)
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    ax[0].scatter(lst, lst_sw, s=1, alpha=0.2, color="#3b75af")
    lim = [float(np.min(lst)), float(np.max(lst))]
    ax[0].plot(lim, lim, "k--", lw=0.8)
    ax[0].set_xlabel("simulated LST (K)")
    ax[0].set_ylabel("split-window LST (K)")
    ax[0].set_title(f"RMSE {fit['rmse_k']:.2f} K, bias {fit['bias_k']:+.2f} K")
    edges = np.arange(0.0, 7.01, 0.5)
    which = np.digitize(sample["wvc"], edges) - 1
    per_bin = [rmse(lst_sw[which == i], lst[which == i]) for i in range(len(edges) - 1)]  # NaN where empty
    ax[1].bar(edges[:-1] + 0.25, per_bin, width=0.45, color="#e1812c")
    ax[1].axhline(1.0, color="k", ls=":", lw=0.8)
    ax[1].set_xlabel("WVC (g cm$^{-2}$)")
    ax[1].set_ylabel("split-window RMSE (K)")
    fig.tight_layout()
    fig.savefig(out / "sw_fit.png", dpi=110)
    plt.close(fig)


def sftl_figure(transfer: Mapping[str, Any], direction: str, predictions: pd.DataFrame | None, path: Path) -> None:
    """One direction's transfer: RMSE of the methods, few-shot RMSE against k, and the target's scatter.

    Parameters
    ----------
    transfer : mapping
        Stage 3 of a run's results: ``split_window``, ``direct_training``, ``pretrained_only``, ``zero_shot``
        (each with ``rmse_k``, K) and ``few_shot`` (``k``, ``rmse_k_mean``, ``rmse_k_sd``).
    direction : str
        In the first panel's title.
    predictions : pandas.DataFrame, optional
        The cross-site predictions (``lst_insitu``, ``lst_split_window``, ``lst_sftl``; K); no scatter without.
    path : pathlib.Path
        The PNG written.
    """
    plt = pyplot()
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.8))
    names = ["split-window", "direct", "pre-trained", "SFTL"]
    vals = [transfer["split_window"]["rmse_k"], transfer["direct_training"]["rmse_k"],
            transfer["pretrained_only"]["rmse_k"], transfer["zero_shot"]["rmse_k"]]
    ax[0].bar(names, vals, color=["#999999", "#e1812c", "#3b75af", "#3a923a"])
    ax[0].set_ylabel("cross-site RMSE (K)")
    ax[0].set_title(f"transfer to the target region ({direction})")
    if transfer["few_shot"]:
        ks = [0] + [f["k"] for f in transfer["few_shot"]]
        ys = [transfer["zero_shot"]["rmse_k"]] + [f["rmse_k_mean"] for f in transfer["few_shot"]]
        es = [0.0] + [f["rmse_k_sd"] for f in transfer["few_shot"]]
        ax[1].errorbar(ks, ys, yerr=es, marker="o")
        ax[1].axhline(transfer["split_window"]["rmse_k"], color="#999999", ls="--", label="split-window")
        ax[1].set_xlabel("target samples k")
        ax[1].set_ylabel("RMSE (K)")
        ax[1].legend()
    if predictions is not None:
        p = predictions
        lo, hi = float(p["lst_insitu"].min()) - 3, float(p["lst_insitu"].max()) + 3
        ax[2].scatter(p["lst_insitu"], p["lst_split_window"], s=9, c="#999999", label="split-window")
        ax[2].scatter(p["lst_insitu"], p["lst_sftl"], s=9, c="#3a923a", label="SFTL")
        ax[2].plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax[2].set_xlim(lo, hi)
        ax[2].set_ylim(lo, hi)
        ax[2].set_xlabel("in situ LST (K)")
        ax[2].set_ylabel("retrieved LST (K)")
        ax[2].set_title("target region, zero-shot")
        ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# the experiment grid


def learning_columns(ok: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, column) of target sample sizes: zero-shot, then each few-shot k of the grid's table."""
    ks = sorted({int(c.split("_k")[1].split("_")[0]) for c in ok.columns if c.startswith("few_shot_k")})
    return [("0 (zero-shot)", "cross_site_rmse_k"), *[(str(k), f"few_shot_k{k}_rmse_k") for k in ks]]


def grid_figures(agg: pd.DataFrame, ok: pd.DataFrame, predictions: pd.DataFrame, out: Path) -> None:
    """The experiment grid's ``grid.png``, ``scatter.png`` and ``fewshot.png`` in ``out``.

    Parameters
    ----------
    agg : pandas.DataFrame
        Per (direction, model, strategy): means over seeds and their ``_sd`` (K).
    ok : pandas.DataFrame
        The succeeded cells, one row each.
    predictions : pandas.DataFrame
        Cross-site predictions of every cell (``cell``, ``lst_insitu``, ``lst_split_window``, ``lst_direct``,
        ``lst_sftl``; K); may be empty.
    out : pathlib.Path
        The folder written to.
    """
    dirs = sorted(agg["direction"].unique())
    _grid_bars(agg, dirs, out / "grid.png")
    _grid_scatter(agg, ok, predictions, dirs, out / "scatter.png")
    _fewshot_curves(ok, dirs, out / "fewshot.png")


def _grid_bars(agg: pd.DataFrame, dirs: list[str], path: Path) -> None:
    """Zero-shot cross-site RMSE of every model + strategy, per direction, against the split-window."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(dirs), figsize=(max(6.0, 0.45 * len(agg) / len(dirs) + 2) * len(dirs), 4.2),
                             squeeze=False)
    for ax, direction in zip(axes[0], dirs, strict=True):
        sub = agg[agg["direction"] == direction].sort_values(["model", "strategy"])
        short = {"continued_boosting": "boost", "added_trees": "+trees"}
        labels = [f"{m}\n{short.get(s, s)}" for m, s in zip(sub["model"], sub["strategy"], strict=True)]
        ax.bar(labels, sub["cross_site_rmse_k"], yerr=np.nan_to_num(sub["cross_site_rmse_k_sd"]),
               color=[_MODEL_COLORS.get(m, "#777777") for m in sub["model"]])
        sw = float(sub["cross_site_sw_rmse_k"].mean())
        ax.axhline(sw, color="#555555", ls="--", label="split-window")
        ax.set_ylim(0, 1.12 * max(sw, float((sub["cross_site_rmse_k"] + sub["cross_site_rmse_k_sd"].fillna(0)).max())))
        if "truth_radiometer_rmse_k" in sub and sub["truth_radiometer_rmse_k"].notna().any():
            ax.axhline(float(sub["truth_radiometer_rmse_k"].mean()), color="#aa3333", ls=":",
                       label="radiometer vs pixel (floor)")
        ax.set_ylabel("zero-shot cross-site RMSE (K)")
        ax.set_title(direction)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grid_scatter(agg: pd.DataFrame, ok: pd.DataFrame, predictions: pd.DataFrame, dirs: list[str],
                  path: Path) -> None:
    """Per direction, the target matchups of the best cell (one seed): split-window, direct and SFTL."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(dirs), figsize=(5.2 * len(dirs), 4.8), squeeze=False)
    for ax, direction in zip(axes[0], dirs, strict=True):
        sub = agg[agg["direction"] == direction]
        best = sub.loc[sub["cross_site_rmse_k"].idxmin()]
        cells = ok[(ok["direction"] == direction) & (ok["model"] == best["model"])
                   & (ok["strategy"] == best["strategy"])]["cell"]
        p = predictions[predictions["cell"].isin(cells)] if "cell" in predictions else predictions.iloc[:0]
        if p.empty:
            continue
        p = p[p["cell"] == p["cell"].iloc[0]]  # one seed: the rows are the same target matchups
        lo, hi = float(p["lst_insitu"].min()) - 3, float(p["lst_insitu"].max()) + 3
        for col, c, lab in (("lst_split_window", "#999999", "split-window"), ("lst_direct", "#e1812c", "direct"),
                            ("lst_sftl", "#3a923a", f"SFTL {best['model']}+{best['strategy']}")):
            has = p[col].notna() & p["lst_insitu"].notna()  # the figures of the rows it predicted
            m = metrics(p.loc[has, col], p.loc[has, "lst_insitu"])
            ax.scatter(p["lst_insitu"], p[col], s=10, c=c, alpha=0.8,
                       label=f"{lab}: RMSE {m['rmse_k']:.2f}, bias {m['bias_k']:+.2f}")
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("in situ LST (K)")
        ax.set_ylabel("retrieved LST (K)")
        ax.set_title(f"{direction}: target region, zero-shot (n={len(p)})")
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fewshot_curves(ok: pd.DataFrame, dirs: list[str], path: Path) -> None:
    """Per direction, RMSE against the number of target samples k of every model + strategy."""
    plt = pyplot()
    cols = learning_columns(ok)
    ks = [0] + [int(lab) for lab, _ in cols[1:]]
    fig, axes = plt.subplots(1, len(dirs), figsize=(5.5 * len(dirs), 4), squeeze=False)
    for ax, direction in zip(axes[0], dirs, strict=True):
        sub = ok[ok["direction"] == direction]
        for (model, strategy), g in sub.groupby(["model", "strategy"]):
            ys = [g[c].mean() for _, c in cols]
            ax.plot(ks, ys, marker="o", lw=1, color=_MODEL_COLORS.get(str(model), "#777777"),
                    ls=_STRATEGY_LINES.get(str(strategy), "-"), label=f"{model}+{strategy}")
        ax.axhline(float(sub["cross_site_sw_rmse_k"].mean()), color="#555555", ls="--", lw=2, label="split-window")
        ax.set_xlabel("target samples k")
        ax.set_ylabel("RMSE on the other target rows (K)")
        ax.set_title(direction)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=6)
    fig.tight_layout(rect=(0, 0, 0.85, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability_diagram(curves: pd.DataFrame, path: Path, *, title: str = "Reliability of the LST uncertainty"
                        ) -> None:
    """Observed share of errors within +-z sigma against the nominal (Gaussian) share, one line per curve, with
    its 95 % interval; the diagonal is a calibrated uncertainty (above it: conservative, below: too small).

    Parameters
    ----------
    curves : pandas.DataFrame
        One row per (curve, z): ``label`` (the legend's name), ``nominal``, ``observed``, ``low``, ``high``
        (fractions) and ``n``.
    path : pathlib.Path
        The PNG written.
    title : str
        The axes' title.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.4))
    ax.plot([0, 1], [0, 1], color="0.4", lw=0.8, ls="--", label="calibrated")
    for label, sub in curves.groupby("label", sort=False):
        sub = sub.sort_values("nominal")
        line = ax.plot(sub["nominal"], sub["observed"], marker="o", ms=3, lw=1.2,
                       label=f"{label} (n={int(sub['n'].iloc[0])})")[0]
        ax.fill_between(sub["nominal"], sub["low"], sub["high"], color=line.get_color(), alpha=0.15, lw=0)
    for share in (0.683, 0.954):  # the 1 and 2 sigma shares
        ax.axvline(share, color="0.8", lw=0.6, zorder=0)
    if curves.empty:
        ax.text(0.5, 0.5, "no usable matchups", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="nominal share within ±zσ (Gaussian), z = 0.25 … 3",
           ylabel="observed share within ±zσ", title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
