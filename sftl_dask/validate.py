"""Validation of LST cubes against in situ radiometers (``sftl validate``).

Matchups are made from the LST cube with the training's rules, the one implementation in
:mod:`sftl_dask.matchups`: the pixel that holds a site (:func:`~sftl_dask.matchups.site_pixels`),
the station's in situ LST averaged around the overpass with its stability rules
(:func:`~sftl_dask.matchups.insitu_at_overpasses`), and the reason a matchup cannot be used
(:func:`~sftl_dask.matchups.matchup_reasons`). The LST cube's ``qc`` flags carry what the scene cube
said: ``not_covered`` is "no coverage", ``cloud`` at the pixel or one of its 8 neighbours is "cloud",
``missing_ancillary`` is "ancillary missing". So the same model on the same scenes gives the same rows, and the
same figures, as the training's stage 3. Only time steps whose retrieval completed (``retrieve_ok``) count.

Metrics (:func:`lst_metrics`), per site, per region and overall, on the usable (``reason == "ok"``) matchups:
RMSE, bias (retrieved - in situ), MAE, R^2 (``1 - SSE/SST`` of the in situ values, as in training),
unbiased RMSE (the standard deviation of the errors, ``sqrt(RMSE^2 - bias^2)``) and n; the calibration of
``lst_uncertainty``: the share of ``|retrieved - in situ|`` within 1 and 2 sigma
(:func:`~sftl_dask.models.error_model.coverage`; 0.683 and 0.954 for a calibrated Gaussian uncertainty), and the
same against ``sqrt(sigma^2 + sigma_reference^2)``, the radiometer's own error added (:func:`site_reference_sigma`,
raised to the region's within-scene estimate), with Wilson intervals, per region, model and uncertainty class
(:func:`calibration_table`, a reliability diagram).

The work is a few explicit Dask tasks: one per station (its file read and matched to the overpasses) and one
per group of sites sharing a chunk (their pixel series read, only the chunks they need). :func:`validate`
writes ``summary.md``, ``metrics.parquet``, ``matchups.parquet``, ``scatter.png`` and ``timeseries.png`` into a
folder that appears only once complete.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import zarr
from numpy.typing import ArrayLike, NDArray

from sftl_dask import plotting
from sftl_dask.cluster import run_tasks
from sftl_dask.io.cube import read_coverage
from sftl_dask.io.insitu import read_sites
from sftl_dask.io.location import Location, exists, is_url, location, zarr_store
from sftl_dask.io.lst import LST_OK_VAR, QC_FILL, QC_FLAGS, lst_stores
from sftl_dask.io.stores import open_store
from sftl_dask.matchups import (
    CLOUD_NEIGHBOURHOOD_PX,
    MAX_STD_K,
    MIN_SAMPLES,
    WINDOW_MIN,
    insitu_at_overpasses,
    matchup_reasons,
    neighbourhood,
    site_pixels,
    station_lst,
)
from sftl_dask.metrics import metrics, reliability, wilson_interval
from sftl_dask.models.error_model import (
    UNCERTAINTY_CLASS_EDGES_K,
    coverage,
    reference_sigma,
    scene_split_reference,
)
from sftl_dask.staging import staged_dir

__all__ = ["CALIBRATION_COLUMNS", "METRIC_COLUMNS", "VALIDATION_COLUMNS", "ValidateError", "calibration_lines",
           "calibration_table",
           "check_validation", "lst_metrics", "metrics_table", "site_reference_sigma", "validate",
           "validation_matchups"]

#: Columns of ``matchups.parquet``: one row per (site, complete time step) of an LST store holding the site.
VALIDATION_COLUMNS = ("site", "region", "land_cover", "grid", "scene_id", "time_utc", "row", "col", "lst",
                      "lst_uncertainty", "qc", "vza", "cloud_adjacent", "lst_insitu", "lst_insitu_std", "n_insitu",
                      "residual_k", "reason", "model", "systematic_k", "lst_spread_3x3", "sigma_reference")
#: Columns of ``metrics.parquet``; ``level`` is ``all``, ``region`` or ``site``.
METRIC_COLUMNS = ("level", "name", "region", "n", "rmse_k", "bias_k", "mae_k", "r2", "ubrmse_k", "within_1sigma",
                  "within_2sigma", "rms_sigma_k", "sigma_reference_k", "within_1sigma_with_ref",
                  "within_1sigma_with_ref_low", "within_1sigma_with_ref_high", "within_2sigma_with_ref",
                  "within_2sigma_with_ref_low", "within_2sigma_with_ref_high")
#: Columns of ``calibration.parquet``: the reliability curve (``kind`` ``reliability``, per region and model, one
#: row per z) and the coverage per uncertainty class (``kind`` ``class``, z 1 and 2), against the radiometers with
#: their error added (``sqrt(lst_uncertainty^2 + sigma_reference^2)``).
CALIBRATION_COLUMNS = ("kind", "region", "model", "group", "z", "nominal", "observed", "low", "high", "n")
_NEEDED_VARS = {"lst": "the retrieved LST", "lst_uncertainty": "its standard uncertainty",
                "qc": "the QC bit flags"}
_NEEDED_FLAGS = ("cloud", "not_covered", "missing_ancillary")
_GAUSS_1, _GAUSS_2 = 0.683, 0.954
_LINE_POINTS = 20_000  # most radiometer records drawn per panel


class ValidateError(ValueError):
    """Bad input to a validation, found before any work: an LST path, store, site table, in situ folder or output."""


# ---------------------------------------------------------------------------------------------
# metrics


def lst_metrics(retrieved_k: ArrayLike, insitu_k: ArrayLike, sigma_k: ArrayLike | None = None) -> dict[str, float]:
    """Accuracy of retrieved LST against in situ LST, and the calibration of its uncertainty.

    Parameters
    ----------
    retrieved_k : array_like
        Retrieved LST (K).
    insitu_k : array_like
        In situ LST at the same pixels and times (K).
    sigma_k : array_like, optional
        Standard uncertainty of the retrieved LST (K, 1 sigma).

    Returns
    -------
    dict
        ``n``; ``rmse_k``, ``bias_k`` (mean of retrieved - in situ), ``mae_k`` (K); ``r2`` (``1 - SSE/SST``,
        SST about the in situ mean: the training's definition, :func:`sftl_dask.metrics.metrics`);
        ``ubrmse_k`` (K, ``sqrt(RMSE^2 - bias^2)``); and with ``sigma_k``, ``within_1sigma``,
        ``within_2sigma`` (fractions of the residuals) and ``rms_sigma_k`` (K). NaN where n is 0.

    Raises
    ------
    ValueError
        If the arrays' lengths differ.
    """
    pred = np.asarray(retrieved_k, dtype=np.float64).ravel()
    truth = np.asarray(insitu_k, dtype=np.float64).ravel()
    if pred.size != truth.size:
        raise ValueError(f"lst_metrics: {pred.size} retrieved values but {truth.size} in situ values")
    out: dict[str, float] = dict(metrics(pred, truth))
    err = pred - truth
    out["ubrmse_k"] = float(np.std(err)) if err.size else float("nan")  # = sqrt(RMSE^2 - bias^2), stably
    if sigma_k is not None:
        sigma = np.asarray(sigma_k, dtype=np.float64).ravel()
        if sigma.size != pred.size:
            raise ValueError(f"lst_metrics: {sigma.size} uncertainties for {pred.size} values")
        cal = coverage(err, sigma)
        out |= {"within_1sigma": cal["within_1sigma"], "within_2sigma": cal["within_2sigma"],
                "rms_sigma_k": cal["rms_sigma_k"]}
    return out


def _with_reference(sub: pd.DataFrame) -> dict[str, float]:
    """Coverage of ``|residual|`` within 1 and 2 ``sqrt(lst_uncertainty^2 + sigma_reference^2)`` with 95 % Wilson
    intervals, and the RMS reference error (K)."""
    keys = ("sigma_reference_k", "within_1sigma_with_ref", "within_1sigma_with_ref_low", "within_1sigma_with_ref_high",
            "within_2sigma_with_ref", "within_2sigma_with_ref_low", "within_2sigma_with_ref_high")
    if "sigma_reference" not in sub or not len(sub):
        return dict.fromkeys(keys, float("nan"))
    ref = sub["sigma_reference"].to_numpy(np.float64)
    tot = np.hypot(sub["lst_uncertainty"].to_numpy(np.float64), ref)
    e = np.abs(sub["lst"].to_numpy(np.float64) - sub["lst_insitu"].to_numpy(np.float64))
    n, h1, h2 = len(e), int(np.sum(e <= tot)), int(np.sum(e <= 2 * tot))
    return dict(zip(keys, (float(np.sqrt(np.mean(ref**2))), h1 / n, *wilson_interval(h1, n), h2 / n,
                           *wilson_interval(h2, n)), strict=True))


def site_reference_sigma(matchups: pd.DataFrame) -> pd.Series:
    """The reference's error per site (K): :func:`~sftl_dask.models.error_model.reference_sigma` with the site's
    mean squared 3 x 3 LST spread and in situ sampling error over its usable matchups (the instrument and
    emissivity terms as that function's defaults). Indexed by site; sites without usable matchups: the
    instrument and emissivity terms alone."""
    ok = matchups[matchups["reason"] == "ok"]
    samp = (ok["lst_insitu_std"].fillna(0.0) ** 2 / ok["n_insitu"].clip(lower=1)).groupby(ok["site"]).mean()
    spread = (ok["lst_spread_3x3"].fillna(0.0) ** 2).groupby(ok["site"]).mean()
    sites = pd.Index(matchups["site"].unique())
    samp, spread = samp.reindex(sites).fillna(0.0), spread.reindex(sites).fillna(0.0)
    return pd.Series(reference_sigma(np.sqrt(samp.to_numpy()), 1, np.sqrt(spread.to_numpy())), index=sites)


def _reference_per_row(table: pd.DataFrame) -> NDArray[np.float64]:
    """The reference's error of each matchup (K): its site's :func:`site_reference_sigma`, raised to its region's
    within-scene estimate (:func:`~sftl_dask.models.error_model.scene_split_reference`: the spread of the usable
    residuals within a scene less the product's random part, ``lst_uncertainty`` without the store's
    ``uncertainty_systematic_k``; all of it random where the store does not say)."""
    floor = table["site"].map(site_reference_sigma(table)).to_numpy(np.float64)
    out = floor.copy()
    ok = (table["reason"] == "ok").to_numpy()
    for region in table.loc[ok, "region"].unique():
        here = ok & (table["region"] == region).to_numpy()
        sub = table[here]
        sys2 = np.nan_to_num(sub["systematic_k"].to_numpy(np.float64)) ** 2
        rand = np.sqrt(np.maximum(sub["lst_uncertainty"].to_numpy(np.float64) ** 2 - sys2, 0.0))
        net, _ = scene_split_reference(sub["residual_k"], rand, sub["scene_id"], floor[here])
        in_region = (table["region"] == region).to_numpy()
        out[in_region] = np.maximum(floor[in_region], net)
    return out


def metrics_table(matchups: pd.DataFrame) -> pd.DataFrame:
    """:func:`lst_metrics` of the usable matchups overall, per region and per site.

    Parameters
    ----------
    matchups : pandas.DataFrame
        With ``site``, ``region``, ``lst``, ``lst_insitu``, ``lst_uncertainty`` (K) and ``reason``
        (:func:`validation_matchups`); only ``reason == "ok"`` rows count.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`METRIC_COLUMNS`: one ``all`` row, then regions, then sites (sorted); a site without
        usable matchups has n 0 and NaN figures.
    """
    ok = matchups[matchups["reason"] == "ok"]

    def row(level: str, name: str, region: str, sub: pd.DataFrame) -> dict[str, Any]:
        m = lst_metrics(sub["lst"], sub["lst_insitu"], sub["lst_uncertainty"])
        return {"level": level, "name": name, "region": region, **m, **_with_reference(sub)}

    rows = [row("all", "all", "", ok)]
    rows += [row("region", str(r), str(r), ok[ok["region"] == r]) for r in sorted(matchups["region"].unique())]
    sites = matchups.drop_duplicates("site").sort_values(["region", "site"])
    rows += [row("site", str(s), str(r), ok[ok["site"] == s]) for s, r in zip(sites["site"], sites["region"],
                                                                             strict=True)]
    table = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    return table.astype({"level": "string", "name": "string", "region": "string", "n": "int64"})


def _uncertainty_class(sigma_k: NDArray[np.float64]) -> NDArray[Any]:
    """MOD11-style class names of uncertainties (K): ``<=1 K``, ``<=2 K``, ``<=3 K``, ``>3 K``."""
    names = np.array([f"<={e:g} K" for e in UNCERTAINTY_CLASS_EDGES_K] + [f">{UNCERTAINTY_CLASS_EDGES_K[-1]:g} K"])
    return names[np.searchsorted(np.asarray(UNCERTAINTY_CLASS_EDGES_K), sigma_k, side="left")]


def calibration_table(matchups: pd.DataFrame) -> pd.DataFrame:
    """Calibration of ``lst_uncertainty`` against the radiometers, their error added: the reliability curve per
    region and model (:func:`~sftl_dask.metrics.reliability`, z 0.25 to 3) and the coverage at 1 and 2 sigma per
    uncertainty class (the ``qc`` classes: <= 1, 2, 3 K and above), each share with its 95 % Wilson interval.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CALIBRATION_COLUMNS`; ``group`` is ``all`` for a reliability curve and the class name for a
        class row; ``observed`` etc. NaN where ``n`` is 0.
    """
    ok = matchups[(matchups["reason"] == "ok")]
    ok = ok.assign(model=ok["model"].fillna("") if "model" in ok else "",
                   total=np.hypot(ok["lst_uncertainty"].astype(float), ok["sigma_reference"].astype(float)),
                   err=(ok["lst"] - ok["lst_insitu"]).astype(float))
    rows: list[dict[str, Any]] = []
    for (region, model), sub in ok.groupby(["region", "model"], sort=True):
        c = reliability(sub["err"], sub["total"])
        rows += [{"kind": "reliability", "region": region, "model": model, "group": "all", "z": z, "nominal": nom,
                  "observed": obs, "low": lo, "high": hi, "n": c["n"]}
                 for z, nom, obs, lo, hi in zip(c["z"], c["nominal"], c["observed"], c["low"], c["high"], strict=True)]
    cls = _uncertainty_class(ok["lst_uncertainty"].to_numpy(np.float64))
    for (region, name), sub in ok.assign(cls=cls).groupby(["region", "cls"], sort=True):
        c = reliability(sub["err"], sub["total"], z=(1.0, 2.0))
        rows += [{"kind": "class", "region": region, "model": ", ".join(sorted(set(sub["model"]))), "group": name,
                  "z": z, "nominal": nom, "observed": obs, "low": lo, "high": hi, "n": c["n"]}
                 for z, nom, obs, lo, hi in zip(c["z"], c["nominal"], c["observed"], c["low"], c["high"], strict=True)]
    table = pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))
    return table.astype({"kind": "string", "region": "string", "model": "string", "group": "string", "n": "int64"})


# ---------------------------------------------------------------------------------------------
# inputs


def _open_store(path: Location) -> Any:
    """An LST store lazily indexed, without Dask (the checks read only its small arrays: through Dask, the
    complete steps' ``retrieve_ok``, one chunk a step, cost a threaded compute each, 0.6 s for 5 stores)."""
    try:
        return open_store(path, chunks=None)
    except (OSError, KeyError, ValueError) as exc:  # zarr's errors are ValueErrors: the store does not open
        raise ValidateError(f"{path}: not a readable LST store ({type(exc).__name__}: {exc})") from None


def _qc_masks(path: Location, qc: Any) -> dict[str, int]:
    """Bit masks of the flags the rules need, from ``qc``'s CF ``flag_meanings``/``flag_masks`` where present."""
    meanings = str(qc.attrs.get("flag_meanings", "")).split()
    masks = np.atleast_1d(np.asarray(qc.attrs.get("flag_masks", []), dtype=np.int64))
    if not meanings:
        return {k: QC_FLAGS[k][0] for k in (*_NEEDED_FLAGS, "cloud_adjacent")}
    found = dict(zip(meanings, masks.tolist(), strict=False))
    missing = [k for k in _NEEDED_FLAGS if k not in found]
    if missing:
        raise ValidateError(f"{path}: qc flag_meanings lack {', '.join(missing)} (found {' '.join(meanings)})")
    return {k: int(found[k]) for k in _NEEDED_FLAGS} | {"cloud_adjacent": int(found.get("cloud_adjacent", 0))}


def check_validation(lst: str | os.PathLike[str], insitu_dir: str | os.PathLike[str],
                     sites_csv: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                     overwrite: bool = False) -> list[dict[str, Any]]:
    """Check every input and the output of a validation; writes nothing.

    Parameters
    ----------
    lst : path or str
        An LST store or an LST root (``<grid>.zarr`` stores, ``sftl retrieve --out``), or an fsspec URL of
        either (``s3://bucket/lst``; credentials from the environment).
    insitu_dir : path
        Folder of station files ``<site id>.csv`` (:func:`~sftl_dask.io.insitu.read_insitu_csv`).
    sites_csv : path
        The site table (``id``, ``region``, ``lon``, ``lat``, ...).
    out_dir : path
        The output folder.
    overwrite : bool
        Replace an existing, non-empty ``out_dir``.

    Returns
    -------
    list of dict
        Per LST store holding a site: ``grid`` (name), ``path``, ``sites`` (the site rows inside, with
        ``row``/``col``), ``masks`` (QC bit of each flag the rules need), ``model`` (what made the LST,
        from the store's attributes), ``systematic_k`` and ``steps`` (the complete time steps in time order, read
        while the store is open here, so the matchups do not open it again).

    Raises
    ------
    ValidateError
        One line naming the file or value: no LST store at ``lst``; a store that does not open, lacks
        ``lst``/``lst_uncertainty``/``qc`` (named) or a CRS, or whose ``qc`` lacks a needed flag; a site table
        that does not read or lacks columns; an in situ folder missing or without station files; no site
        inside any store, or a station file missing for one; an output that exists and is not empty
        (without ``overwrite``), is a file, or holds an input.
    """
    lst, insitu, sites_path, out = location(lst), Path(insitu_dir), Path(sites_csv), Path(out_dir)
    if not exists(lst):
        raise ValidateError(f"{lst}: no such LST store or folder")
    stores = lst_stores(lst)
    if not stores:
        raise ValidateError(f"{lst}: no LST store here (neither a Zarr store nor a folder of <grid>.zarr stores)")
    if not insitu.is_dir():
        raise ValidateError(f"{insitu}: no such in situ folder" if not insitu.exists() else
                            f"{insitu}: not a folder (give the folder of station files <site id>.csv)")
    if not any(insitu.glob("*.csv")):
        raise ValidateError(f"{insitu}: in situ folder has no station files (<site id>.csv)")
    try:
        sites = read_sites(sites_path)
    except ValueError as exc:
        raise ValidateError(str(exc)) from None
    _check_out(out, overwrite, inputs=(*(() if is_url(lst) else (Path(lst),)), insitu, sites_path))

    plan = []
    for name, path in stores.items():
        ds = _open_store(path)
        for var, what in _NEEDED_VARS.items():
            if var not in ds.data_vars:
                raise ValidateError(f"{path}: has no variable {var!r} ({what}); not an LST cube from sftl retrieve")
        if ds["lst"].dims != ("time", "y", "x"):
            raise ValidateError(f"{path}: lst has dims {ds['lst'].dims}, expected (time, y, x)")
        if ds.rio.crs is None:
            raise ValidateError(f"{path}: no CRS (spatial_ref / grid_mapping) to place the sites")
        masks = _qc_masks(path, ds["qc"])
        inside = site_pixels(sites, ds.rio.crs, ds["x"].values, ds["y"].values)
        if len(inside):
            model = " ".join(str(ds.attrs[k]) for k in ("model_kind", "model_strategy") if ds.attrs.get(k))
            if ds.attrs.get("model_sha256"):
                model += f" (sha256 {str(ds.attrs['model_sha256'])[:12]})"
            plan.append({"grid": name, "path": path, "sites": inside, "masks": masks, "model": model.strip(),
                         "systematic_k": _float_attr(ds.attrs.get("uncertainty_systematic_k")),
                         "steps": _complete_steps(ds)})
    if not plan:
        raise ValidateError(f"{sites_path}: no site lies inside any LST store of {lst} ({', '.join(stores)})")
    for site in sorted({str(s) for p in plan for s in p["sites"]["id"]}):
        if not (insitu / f"{site}.csv").is_file():
            raise ValidateError(f"{insitu / f'{site}.csv'}: station file of site {site} not found")
    return plan


def _complete_steps(ds: Any) -> dict[str, Any]:
    """An LST store's complete time steps (``retrieve_ok``; all where the store does not say) in time order:
    ``order`` (their indices), ``times``, ``scene_ids`` and the ``chunks`` of ``lst``."""
    ok = ds[LST_OK_VAR].values.astype(bool) if LST_OK_VAR in ds else np.ones(ds.sizes["time"], bool)
    idx = np.flatnonzero(ok)
    time = ds["time"].values
    order = idx[np.argsort(time[idx], kind="stable")]
    scene_ids = ds["scene_id"].values[order].astype(str) if "scene_id" in ds else np.full(order.size, "")
    return {"order": order, "times": time[order], "scene_ids": scene_ids, "chunks": ds["lst"].encoding.get("chunks")}


def _float_attr(v: Any) -> float:
    """An attribute as a float (K), NaN where absent or not a number."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _check_out(out: Path, overwrite: bool, inputs: Sequence[Path]) -> None:
    """Refuse an output that is a file, holds an input (``overwrite`` would delete it), or exists non-empty."""
    if out.exists() and not out.is_dir():
        raise ValidateError(f"{out}: exists and is not a folder")
    res = out.resolve()
    for p in inputs:
        q = p.resolve()
        if res == q or res in q.parents:
            raise ValidateError(f"{out}: holds the input {p}; choose another output folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValidateError(f"{out}: already exists and is not empty (pass --overwrite to replace it)")


# ---------------------------------------------------------------------------------------------
# matchups


def _station_task(insitu_dir: str, site: str, times: Sequence[Any], window_min: float
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One station (a task): its in situ LST at the overpasses, and its series for the plot.

    Returns the :func:`~sftl_dask.matchups.insitu_at_overpasses` table of ``times`` and the usable
    records' LST (``time_utc``, ``lst_k`` K; NaN where not usable) from a day before the first overpass to a
    day after the last, every k-th record, at most :data:`_LINE_POINTS` of them (< 0.5 MB; the file may be GB).
    """
    frame = station_lst(insitu_dir, site)
    overpasses = insitu_at_overpasses(frame, times, window_min=window_min)
    series = frame.iloc[:0]
    if len(times):
        day = np.timedelta64(1, "D")
        stamps = frame["time_utc"].to_numpy(dtype="datetime64[ns]")
        t = np.asarray(times, dtype="datetime64[ns]")
        series = frame[(stamps >= t.min() - day) & (stamps <= t.max() + day)]
    series = series.iloc[::max(1, -(-len(series) // _LINE_POINTS))]
    lst = np.where(series["reason"].to_numpy() == "ok", series["lst_k"].to_numpy(np.float64), np.nan)
    return overpasses, pd.DataFrame({"time_utc": series["time_utc"].to_numpy("datetime64[ns]"), "lst_k": lst})


def _read_pixels(path: str, order: NDArray[np.intp], pixels: Sequence[tuple[int, int]]
                 ) -> list[tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any] | None, NDArray[Any]]]:
    """The series of some pixels of an LST store (a task): ``lst``, ``lst_uncertainty`` (K) and ``vza`` (deg)
    at each pixel, ``qc`` over its neighbourhood and the 3 x 3 LST spread (K), at the time steps ``order``.

    The pixels share a chunk (:func:`validation_matchups` groups them so): each variable is read once, at the
    numpy level, over the one window that holds every pixel's neighbourhood (:func:`_read_window`), so a chunk
    of a time step is decoded once per variable, not once per pixel and variable. Values are those
    ``xarray.open_zarr`` gives (:func:`_decoded_window`); ``qc`` stays integer bit flags, as the project opens it.
    """
    group = zarr.open_group(zarr_store(path), mode="r")
    rows = np.array([r for r, _ in pixels], dtype=np.int64)
    cols = np.array([c for _, c in pixels], dtype=np.int64)
    m = CLOUD_NEIGHBOURHOOD_PX
    r0, c0 = int(rows.min()) - m, int(cols.min()) - m
    window = (np.asarray(order, dtype=np.intp), slice(r0, int(rows.max()) + m + 1), slice(c0, int(cols.max()) + m + 1))
    names = [v for v in ("lst", "lst_uncertainty", "vza") if v in group]
    data = {v: _decoded_window(path, group, v, window) for v in names}
    qc = _read_window(group["qc"], window)
    out = []
    for r, c in zip(rows - r0, cols - c0, strict=True):
        ys, xs = neighbourhood(int(r), int(c))
        lst_win = data["lst"][:, ys, xs].astype(np.float64)
        lst_win = lst_win.reshape(order.size, lst_win.shape[1] * lst_win.shape[2])  # no step: (0, 9)
        good = np.isfinite(lst_win).sum(axis=1) >= 2  # the representativeness term: the 3 x 3 pixels' spread
        spread = np.full(order.size, np.nan)
        spread[good] = np.nanstd(lst_win[good], axis=1, ddof=1)
        out.append((data["lst"][:, r, c], data["lst_uncertainty"][:, r, c], qc[:, ys, xs],
                    data["vza"][:, r, c] if "vza" in data else None, spread))
    return out


def _read_window(array: Any, window: tuple[NDArray[np.intp], slice, slice]) -> NDArray[Any]:
    """``array[steps, rows, cols]`` of a zarr array, its stored values (no step: an empty array, nothing read)."""
    steps, ys, xs = window
    if not steps.size:
        return np.empty((0, ys.stop - ys.start, xs.stop - xs.start), dtype=array.dtype)
    return np.asarray(array.get_orthogonal_selection(window))


def _decoded_window(path: str, group: Any, var: str, window: tuple[NDArray[np.intp], slice, slice]) -> NDArray[Any]:
    """``var[steps, rows, cols]`` of an LST store as ``xarray.open_zarr`` decodes it: the stored values where they
    are the decoded ones (floats with a NaN fill or none, no ``scale_factor``/``add_offset``: as the LST cube writes
    them); else, for a variable another writer CF-encoded, xarray's own decoding of the same window."""
    array = group[var]
    fill = array.attrs.get("_FillValue", array.fill_value)
    plain = (np.issubdtype(array.dtype, np.floating) and not {"scale_factor", "add_offset"} & set(array.attrs)
             and (fill is None or (isinstance(fill, float | np.floating) and bool(np.isnan(fill)))))
    if plain:
        return _read_window(array, window)
    steps, ys, xs = window
    return np.asarray(open_store(path, chunks=None)[var].isel(time=steps, y=ys, x=xs).values)


def _all_steps(pixel: tuple[Any, ...], held: NDArray[np.bool_]) -> tuple[Any, ...]:
    """A :func:`_read_pixels` series of the steps ``held`` marks, spread over all steps: the others read as a chunk
    never written does (not covered: NaN, ``qc`` :data:`~sftl_dask.io.lst.QC_FILL`)."""
    if held.all():
        return pixel
    lst, unc, qc_win, vza, spread = pixel

    def fill(a: Any, value: Any) -> Any:
        a = np.asarray(a)
        out = np.full((held.size, *a.shape[1:]), value, dtype=a.dtype)
        out[held] = a
        return out

    return (fill(lst, np.nan), fill(unc, np.nan), fill(qc_win, QC_FILL), None if vza is None else fill(vza, np.nan),
            fill(spread, np.nan))


def _site_rows(p: Mapping[str, Any], s: pd.Series, times: NDArray[Any], scene_ids: NDArray[Any],
               pixel: tuple[Any, ...], ins: pd.DataFrame) -> pd.DataFrame:
    """The matchup rows (:data:`VALIDATION_COLUMNS`, unsorted) of one site in one store.

    ``p`` is the store's plan, ``s`` the site's row of it, ``times`` and ``scene_ids`` the store's complete time
    steps, ``pixel`` the site's :func:`_read_pixels` series (``lst``, ``lst_uncertainty`` K, ``qc`` window,
    ``vza`` deg or None, the 3 x 3 LST spread K) and ``ins`` its station's overpass table at those times;
    ``sigma_reference`` is filled per site later (:func:`site_reference_sigma`).
    """
    lst, unc, qc_win, vza_px, spread = pixel
    masks = p["masks"]
    qc_win = np.asarray(qc_win, dtype=np.int64)
    qc_px = qc_win[:, CLOUD_NEIGHBOURHOOD_PX, CLOUD_NEIGHBOURHOOD_PX]  # the centre of its window
    reason = matchup_reasons(covered=(qc_px & masks["not_covered"]) == 0,
                             cloud_near=((qc_win & masks["cloud"]) != 0).any(axis=(1, 2)),
                             ancillary_ok=(qc_px & masks["missing_ancillary"]) == 0,
                             insitu_reason=ins["insitu_reason"].to_numpy())
    lst = np.asarray(lst, dtype=np.float64)
    unc = np.asarray(unc, dtype=np.float64)
    reason[(reason == "ok") & ~(np.isfinite(lst) & np.isfinite(unc))] = "not produced"
    return pd.DataFrame({
        "site": str(s["id"]), "region": str(s["region"]), "land_cover": str(s.get("land_cover", "")),
        "grid": p["grid"], "scene_id": scene_ids, "time_utc": times,
        "row": int(s["row"]), "col": int(s["col"]), "lst": lst, "lst_uncertainty": unc,
        "qc": qc_px, "vza": np.asarray(vza_px, np.float64) if vza_px is not None else np.nan,
        "cloud_adjacent": (qc_px & masks["cloud_adjacent"]) != 0,
        "lst_insitu": ins["lst_insitu"].to_numpy(), "lst_insitu_std": ins["lst_insitu_std"].to_numpy(),
        "n_insitu": ins["n_insitu"].to_numpy(), "residual_k": lst - ins["lst_insitu"].to_numpy(),
        "reason": reason.astype(str), "model": str(p.get("model", "")),
        "systematic_k": float(p.get("systematic_k", np.nan)),
        "lst_spread_3x3": np.asarray(spread, np.float64), "sigma_reference": np.nan,
    })


def validation_matchups(plan: Sequence[Mapping[str, Any]], insitu_dir: str | os.PathLike[str], *,
                        client: Any = None, progress: Callable[[int, int], None] | None = None,
                        window_min: float = WINDOW_MIN) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Matchups of every site with every complete time step of the LST stores that hold it.

    One task per station (read, matched to the overpasses) and one per group of sites sharing a chunk (their
    pixel series read, only the chunks they need), on the cluster or in this process.

    Parameters
    ----------
    plan : sequence of dict
        From :func:`check_validation`.
    insitu_dir : path
        Folder of station files.
    client : distributed.Client, optional
        Where the tasks run (default: in this process, one after another).
    progress : callable, optional
        ``progress(done, total)`` over the tasks.
    window_min : float
        Half-width of the in situ averaging window (min); the training's by default.

    Returns
    -------
    matchups : pandas.DataFrame
        Columns :data:`VALIDATION_COLUMNS`, sorted by site and time; ``residual_k`` is ``lst - lst_insitu``
        (K); ``reason`` as the training matchups' (:func:`~sftl_dask.matchups.matchup_reasons`), plus
        ``"not produced"`` where the rules allow a matchup but the store has no LST there.
    series : dict
        Per site, its radiometer's usable LST around the overpasses (``time_utc``, ``lst_k`` K) for the plot.

    Raises
    ------
    ValueError
        If a station file does not read (naming it and the line).
    """
    stores = []  # (store plan, complete time steps in time order, their times and scene ids)
    site_times: dict[str, list[Any]] = {}
    for p in plan:
        steps = p["steps"] if "steps" in p else _complete_steps(_open_store(p["path"]))  # opened by the check
        order, times = steps["order"], steps["times"]
        stores.append((p, order, times, steps["scene_ids"], steps["chunks"], read_coverage(p["path"])))
        for site in p["sites"]["id"].astype(str):
            site_times.setdefault(site, []).append(times)
    names = sorted(site_times)
    unique = {site: np.unique(np.concatenate(site_times[site])) for site in names}  # a site in several stores
    calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (_station_task, (str(insitu_dir), site, unique[site], window_min)) for site in names]
    groups = []  # sites of a store whose pixels share a chunk: one read task
    for i, (p, order, _, _, chunks, index) in enumerate(stores):
        sites = p["sites"]
        cy, cx = (chunks or (1, 1 << 30, 1 << 30))[1:]
        keys = list(zip(sites["row"] // cy, sites["col"] // cx, strict=True))
        for key in dict.fromkeys(keys):
            group = sites[[k == key for k in keys]]
            # only the steps whose chunk holds data (the chunk-coverage index): the others are not covered there
            held = np.ones(order.size, bool) if index is None else index[order, key[0], key[1]] != 0
            groups.append((i, group, held))
            pixels = [(int(r), int(c)) for r, c in zip(group["row"], group["col"], strict=True)]
            calls.append((_read_pixels, (str(p["path"]), order[held], pixels)))
    results = run_tasks(calls, client, progress=progress)
    stations = dict(zip(names, results[:len(names)], strict=True))

    rows: list[pd.DataFrame] = []
    for (i, sites, held), values in zip(groups, results[len(names):], strict=True):
        p, _, times, scene_ids, _, _ = stores[i]
        values = [_all_steps(v, held) for v in values]
        for (_, s), pixel in zip(sites.iterrows(), values, strict=True):
            site = str(s["id"])
            ins = stations[site][0].iloc[np.searchsorted(unique[site], times)]  # this store's overpasses
            rows.append(_site_rows(p, s, times, scene_ids, pixel, ins))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=list(VALIDATION_COLUMNS))
    table = table.sort_values(["site", "time_utc"], kind="stable").reset_index(drop=True)
    if len(table):
        table["sigma_reference"] = _reference_per_row(table)
    return table[list(VALIDATION_COLUMNS)], {site: res[1] for site, res in stations.items()}


# ---------------------------------------------------------------------------------------------
# the summary (its figures: sftl_dask.plotting)


def _fmt(v: Any, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def _metric_lines(rows: pd.DataFrame, first: str) -> list[str]:
    lines = [f"| {first} | n | RMSE (K) | bias (K) | MAE (K) | R² | ubRMSE (K) | within ±1σ | within ±2σ "
             "| rms σ (K) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for _, m in rows.iterrows():
        name = m["name"] if first != "site" else f"{m['name']} ({m['region']})"
        lines.append(f"| {name} | {m['n']} | {_fmt(m['rmse_k'], '.3f')} | {_fmt(m['bias_k'], '+.3f')} | "
                     f"{_fmt(m['mae_k'], '.3f')} | {_fmt(m['r2'], '.3f')} | {_fmt(m['ubrmse_k'], '.3f')} | "
                     f"{_fmt(m['within_1sigma'], '.1%')} | {_fmt(m['within_2sigma'], '.1%')} | "
                     f"{_fmt(m['rms_sigma_k'], '.2f')} |")
    return lines


def _calibration_note(m: Mapping[str, Any]) -> str:
    """The verdict on the calibration: against √(σ² + σ_reference²) where the reference's error is known."""
    with_ref = "within_1sigma_with_ref" in m and np.isfinite(m["within_1sigma_with_ref"])
    w1, w2 = (m["within_1sigma_with_ref"], m["within_2sigma_with_ref"]) if with_ref else \
        (m["within_1sigma"], m["within_2sigma"])
    if not (m["n"] and np.isfinite(w1)):
        return "No usable matchup: no calibration to report."
    what = "√(σ² + σ_reference²)" if with_ref else "σ"
    if w1 < _GAUSS_1 - 0.1 and w2 < _GAUSS_2 - 0.05:
        verdict = "the uncertainty is too small (the errors are larger than it says)"
    elif w1 > _GAUSS_1 + 0.1 and w2 > min(1.0, _GAUSS_2 + 0.02):
        verdict = "the uncertainty is conservative (larger than the errors)"
    else:
        verdict = "the uncertainty is about calibrated"
    return (f"Overall {w1:.1%} of |retrieved − in situ| lie within ±1 {what} and {w2:.1%} within ±2 {what} "
            f"(a calibrated Gaussian uncertainty: {_GAUSS_1:.1%} and {_GAUSS_2:.1%}; n = {m['n']}): {verdict}.")


def _ci(v: Any, lo: Any, hi: Any) -> str:
    return f"{_fmt(v, '.1%')} [{_fmt(lo, '.0%')}, {_fmt(hi, '.0%')}]"


def calibration_lines(table: pd.DataFrame, calibration: pd.DataFrame) -> list[str]:
    """The Markdown of the calibration against the radiometers (their error added): coverage at 1 and 2 sigma with
    95 % Wilson intervals overall and per region, and per uncertainty class (:func:`calibration_table`)."""
    lines = ["Residuals against the radiometers are compared with √(σ_product² + σ_reference²): σ_product is "
             "`lst_uncertainty` (the product's error against the true pixel LST), σ_reference the radiometer's own "
             "error per site (instrument, emissivity, in situ sampling, the 3 × 3 LST spread; docs/uncertainty.md). "
             "A calibrated Gaussian uncertainty: 68.3 % and 95.4 %; [95 % Wilson interval].", "",
             "| set | n | σ_reference (K) | within ±1σ | within ±2σ | within ±1σ (σ_product only) |",
             "|---|---:|---:|---:|---:|---:|"]
    for _, m in table[table["level"].isin(["all", "region"])].iterrows():
        one, two = (_ci(*(m[f"within_{z}sigma_with_ref{t}"] for t in ("", "_low", "_high"))) for z in (1, 2))
        lines.append(f"| {m['name']} | {m['n']} | {_fmt(m['sigma_reference_k'], '.2f')} | {one} | {two} | "
                     f"{_fmt(m['within_1sigma'], '.1%')} |")
    cls = calibration[calibration["kind"] == "class"]
    if len(cls):
        lines += ["", "By uncertainty class (`lst_uncertainty`, the `qc` classes):", "",
                  "| region | class | n | within ±1σ | within ±2σ |", "|---|---|---:|---:|---:|"]
        for (region, group), sub in cls.groupby(["region", "group"], sort=True):
            one, two = sub[sub["z"] == 1.0].iloc[0], sub[sub["z"] == 2.0].iloc[0]
            lines.append(f"| {region} | {group} | {int(one['n'])} | {_ci(one['observed'], one['low'], one['high'])} | "
                         f"{_ci(two['observed'], two['low'], two['high'])} |")
    return lines


def _summary(inputs: Mapping[str, Any], matchups: pd.DataFrame, table: pd.DataFrame, shown: Sequence[str],
             seconds: float, calibration: pd.DataFrame) -> str:
    reasons = matchups["reason"].value_counts()
    a = table[table["level"] == "all"].iloc[0]
    n_sites = table[(table["level"] == "site") & (table["n"] > 0)].shape[0]
    lines = [
        "# LST validation against in situ radiometers", "",
        f"- LST: `{inputs['lst']}` ({len(inputs['grids'])} store(s): {', '.join(inputs['grids'])}; "
        f"{inputs['time_steps']} complete time step(s)); model: {inputs['models'] or 'not recorded'}",
        f"- in situ: `{inputs['insitu']}`; sites: `{inputs['sites']}` ({inputs['n_sites_inside']} site(s) inside the "
        f"LST grids)",
        f"- matchups: {len(matchups)} (site, time step) pairs, **{int(a['n'])} usable** at {n_sites} site(s); "
        f"made in {seconds:.1f} s",
        f"- rules (the training matchups', one implementation): the pixel holding the site; cloud at it or its 8 "
        f"neighbours (QC `cloud`) → cloud; QC `not_covered` → no coverage; QC `missing_ancillary` → ancillary "
        f"missing; in situ LST = mean of the good radiometer records within ±{WINDOW_MIN:g} min of the overpass "
        f"(at least {inputs['min_samples']} records, spread ≤ {inputs['max_std_k']:g} K)",
        "- R² = 1 − SSE/SST about the in situ mean; ubRMSE = √(RMSE² − bias²); bias = retrieved − in situ",
        "", "| reason | matchups |", "|---|---:|",
        *[f"| {r} | {int(n)} |" for r, n in reasons.items()],
        "", "## Overall", "", *_metric_lines(table[table["level"] == "all"], "set"),
        "", "## By region", "", *_metric_lines(table[table["level"] == "region"], "region"),
        "", "## By site", "", *_metric_lines(table[table["level"] == "site"], "site"),
        "", "## Uncertainty calibration", "", _calibration_note(a), "", *calibration_lines(table, calibration),
        "", "![reliability diagram per region and model](reliability.png)",
        "", "## Figures", "",
        "![retrieved against in situ LST](scatter.png)", "",
        "![time series at the sites](timeseries.png)" + (
            f" (the {len(shown)} sites with the most usable matchups)" if n_sites > len(shown) else ""),
        "", "Tables: `metrics.parquet` (these figures), `matchups.parquet` (every pair with its reason), "
        "`calibration.parquet` (the reliability curves and the coverage per uncertainty class).", "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the run


#: The figures of a validation and the functions that draw them (each takes its output path last).
_FIGURES: dict[str, Callable[..., Any]] = {"timeseries.png": plotting.validation_timeseries,
                                           "reliability.png": plotting.reliability_diagram,
                                           "scatter.png": plotting.validation_scatter}


def _figure_task(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[bytes, Any]:
    """One figure of :data:`_FIGURES` drawn (a task): its PNG's bytes and what its function returned. The bytes
    come back to the caller, so a worker needs no access to the output folder."""
    buf = io.BytesIO()
    with plotting.pyplot().rc_context({"savefig.format": "png"}):  # a file-like target: the format said, not guessed
        made = _FIGURES[name](*args, buf, **kwargs)
    return buf.getvalue(), made


def _draw_figures(out: Path, matchups: pd.DataFrame, series: Mapping[str, pd.DataFrame], table: pd.DataFrame,
                  calibration: pd.DataFrame, names: Mapping[str, str], client: Any) -> list[str]:
    """``timeseries.png``, ``reliability.png`` and ``scatter.png`` into ``out``; returns the sites the time
    series shows. With a client the three are drawn at once, one task each (the time series, the longest at
    about 3 s, beside the two others), and their bytes written here; without, one after another in this process.
    """
    rel = calibration[calibration["kind"] == "reliability"]
    jobs = [("timeseries.png", (matchups, series, table), {"window_min": WINDOW_MIN, "names": names}),
            ("reliability.png", (rel.assign(label=rel["region"] + " " + rel["model"]),),
             {"title": "lst_uncertainty against radiometers (σ_reference added)"}),
            ("scatter.png", (matchups, table), {})]
    if client is None:
        made = {name: _FIGURES[name](*args, out / name, **kwargs) for name, args, kwargs in jobs}
        return made["timeseries.png"]
    drawn = run_tasks([(_figure_task, job) for job in jobs], client)
    for (name, _, _), (png, _) in zip(jobs, drawn, strict=True):
        (out / name).write_bytes(png)
    return drawn[0][1]




def validate(
    lst: str | os.PathLike[str],
    insitu_dir: str | os.PathLike[str],
    sites_csv: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    client: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Validate LST cubes against in situ radiometers: matchups, metrics, calibration, plots and a summary.

    Parameters
    ----------
    lst : path
        An LST store or root (``sftl retrieve --out``).
    insitu_dir : path
        Folder of station files ``<site id>.csv``.
    sites_csv : path
        The site table.
    out_dir : path
        Output folder: ``summary.md``, ``metrics.parquet``, ``matchups.parquet``, ``calibration.parquet``,
        ``scatter.png``, ``timeseries.png``, ``reliability.png``; it appears only once complete (written beside it,
        then renamed).
    overwrite : bool
        Replace an existing, non-empty ``out_dir``.
    client : distributed.Client, optional
        Where the station and pixel tasks run (default: in this process).
    progress : callable, optional
        ``progress(done, total)`` over the tasks.

    Returns
    -------
    dict
        ``out`` (path), ``files``, ``n_matchups``, ``n_usable``, ``metrics`` (the ``all`` and region rows of
        :func:`metrics_table` as dicts), ``seconds``.

    Raises
    ------
    ValidateError
        Bad input, before anything is written (:func:`check_validation`).
    ValueError
        A station file that does not read (naming it and the line); nothing is written.
    """
    t0 = time.perf_counter()
    plan = check_validation(lst, insitu_dir, sites_csv, out_dir, overwrite=overwrite)
    matchups, series = validation_matchups(plan, insitu_dir, client=client, progress=progress)
    table = metrics_table(matchups)
    calibration = calibration_table(matchups)
    seconds = time.perf_counter() - t0
    inputs = {"lst": str(lst), "insitu": str(insitu_dir), "sites": str(sites_csv),
              "grids": [p["grid"] for p in plan],
              "models": ", ".join(dict.fromkeys(p["model"] for p in plan if p["model"])),
              "n_sites_inside": len({s for p in plan for s in p["sites"]["id"]}),
              "time_steps": int(matchups.drop_duplicates(["grid", "time_utc"]).shape[0]),
              "min_samples": MIN_SAMPLES, "max_std_k": MAX_STD_K}
    out = Path(out_dir)
    files = ["summary.md", "metrics.parquet", "matchups.parquet", "calibration.parquet", "scatter.png",
             "timeseries.png", "reliability.png"]
    with staged_dir(out) as tmp:
        matchups.to_parquet(tmp / "matchups.parquet", index=False)
        table.to_parquet(tmp / "metrics.parquet", index=False)
        calibration.to_parquet(tmp / "calibration.parquet", index=False)
        site_rows = read_sites(sites_csv)
        names = dict(zip(site_rows["id"].astype(str), site_rows["name"].astype(str), strict=True)) \
            if "name" in site_rows.columns else {}
        shown = _draw_figures(tmp, matchups, series, table, calibration, names, client)
        (tmp / "summary.md").write_text(_summary(inputs, matchups, table, shown, seconds, calibration))
    head = table[table["level"] != "site"]
    return {"out": out, "files": [out / f for f in files], "n_matchups": len(matchups),
            "n_usable": int((matchups["reason"] == "ok").sum()),
            "metrics": [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                        for r in head.to_dict("records")],
            "seconds": round(time.perf_counter() - t0, 2)}
