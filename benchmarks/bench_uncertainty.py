"""Benchmark: the calibration of the per-pixel uncertainty of a demo run against the testbed's truth (issue 21).

Reads a finished ``sftl demo --out DIR`` (its validation, LST cubes and the testbed's truth) and measures:

* per region (each retrieved by the model transferred to it): the share of ``|LST - true pixel LST|`` within
  +-z ``lst_uncertainty`` at the sites (z 0.25 .. 3, 1 and 2 sigma with Wilson intervals), and the same against
  the radiometers with the reference's error added (``sftl validate``'s figures);
* the monthly composites' uncertainty: the median composite of each pixel's good values in a month against the
  median of the true LST at the same overpasses, on a sample of pixels, with ``lst_uncertainty`` propagated as
  :mod:`sftl_dask.api` does (``sigma^2 = sys^2 + pi/2 mean(sigma^2 - sys^2) / n``, ``sys`` the store's
  ``uncertainty_systematic_k``) and as if every scene's error were independent (``pi/2 mean(sigma^2) / n``);
* the cost of the error model at retrieval: its lookup against the DNN's forward on the same pixels.

Writes ``benchmarks/results/uncertainty.json`` and the reliability diagram ``docs/img/uncertainty_reliability.png``.

Usage: python -m benchmarks.bench_uncertainty DEMO_OUT [--pixels 100000] [--png docs/img/uncertainty_reliability.png]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from sftl_dask import plotting
from sftl_dask.features import compute_features, feature_matrix
from sftl_dask.io.lst import QC_FLAGS
from sftl_dask.metrics import reliability, wilson_interval
from sftl_dask.models.artifact import load_artifact
from sftl_dask.models.error_model import apply_error_model

_RESULTS = Path(__file__).parent / "results" / "uncertainty.json"
_BAD = ("cloud", "not_covered", "missing_ancillary", "cloud_adjacent")


def _shares(err: np.ndarray, sigma: np.ndarray) -> dict[str, Any]:
    e, s = np.abs(err), sigma
    n, h1, h2 = int(e.size), int(np.sum(e <= s)), int(np.sum(e <= 2 * s))
    return {"n": n, "within_1sigma": h1 / n if n else None, "within_1sigma_ci": list(wilson_interval(h1, n)),
            "within_2sigma": h2 / n if n else None, "within_2sigma_ci": list(wilson_interval(h2, n))}


def site_truth(demo: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """Per region: the sites' LST against the true pixel LST (sigma_product) and against the radiometers (with the
    reference's error), and the reliability curves of both."""
    mu = pd.read_parquet(demo / "validation" / "matchups.parquet")
    mu = mu[mu["reason"] == "ok"]
    truth = pd.read_csv(demo / "work" / "testbed" / "truth" / "site_overpass_truth.csv")
    mu = mu.merge(truth[["scene_id", "site", "lst_pixel_k"]], on=["scene_id", "site"], how="inner")
    out, curves = {}, []
    for region, sub in mu.groupby("region"):
        e_truth = (sub["lst"] - sub["lst_pixel_k"]).to_numpy()
        e_ref = (sub["lst"] - sub["lst_insitu"]).to_numpy()
        sigma = sub["lst_uncertainty"].to_numpy()
        total = np.hypot(sigma, sub["sigma_reference"].to_numpy())
        out[region] = {"pixel_truth": _shares(e_truth, sigma), "radiometers_with_reference": _shares(e_ref, total),
                       "sigma_reference_rms_k": float(np.sqrt(np.mean(sub["sigma_reference"] ** 2))),
                       "rmse_truth_k": float(np.sqrt(np.mean(e_truth**2))), "model": str(sub["model"].iloc[0])}
        for label, e, s in ((f"{region}: vs pixel truth", e_truth, sigma),
                            (f"{region}: vs radiometers (+σ_ref)", e_ref, total)):
            c = reliability(e, s)
            curves.append(pd.DataFrame({"label": label, "nominal": c["nominal"], "observed": c["observed"],
                                        "low": c["low"], "high": c["high"], "n": c["n"]}))
    return out, pd.concat(curves, ignore_index=True)


def _store_for(demo: Path, truth: xr.Dataset) -> Path:
    for store in sorted((demo / "lst").glob("*.zarr")):
        ds = xr.open_zarr(store)
        if float(ds.x.min()) <= float(truth.x.min()) and float(ds.x.max()) >= float(truth.x.max()):
            return store
    raise FileNotFoundError(f"{demo / 'lst'}: no LST store holds the truth grid")


def composites(demo: Path, region: str, n_pixels: int, seed: int = 0, bias_k: float = 0.0) -> dict[str, Any]:
    """The monthly median composite's uncertainty against the truth composite on ``n_pixels`` sampled pixels:
    propagated as the API does, as if scenes were independent, and with only a persistent bias ``bias_k`` (K)
    kept whole (``sigma^2 = b^2 + pi/2 mean(sigma^2 - b^2) / n``)."""
    truth = xr.open_zarr(demo / "work" / "testbed" / "truth" / f"{region}.zarr")
    lst = xr.open_zarr(_store_for(demo, truth)).sel(x=truth.x, y=truth.y, time=truth.time)
    rng = np.random.default_rng(seed)
    ny, nx = truth.sizes["y"], truth.sizes["x"]
    pick = rng.choice(ny * nx, size=min(n_pixels, ny * nx), replace=False)

    def take(da: xr.DataArray) -> np.ndarray:
        a = da.values.reshape(da.sizes["time"], -1)
        return a[:, pick]

    v, s, t = take(lst["lst"]), take(lst["lst_uncertainty"]), take(truth["lst"])
    qc = take(lst["qc"]).astype(np.int64)
    bad = np.bitwise_or.reduce([QC_FLAGS[f][0] for f in _BAD])
    good = np.isfinite(v) & np.isfinite(s) & ((qc & bad) == 0)
    sys_k = float(lst.attrs.get("uncertainty_systematic_k", 0.0))
    months = pd.DatetimeIndex(truth.time.values).to_period("M")
    rows = []
    for m in months.unique():
        idx = np.flatnonzero(months == m)
        g = good[idx]
        n = g.sum(axis=0)
        ok = n >= 2
        if not ok.any():
            continue
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # pixels without a good value in the month
            comp = np.nanmedian(np.where(g, v[idx], np.nan), axis=0)[ok]
            comp_truth = np.nanmedian(np.where(g, t[idx], np.nan), axis=0)[ok]
            s2 = np.nanmean(np.where(g, s[idx] ** 2, np.nan), axis=0)[ok]
        rows.append(pd.DataFrame({"month": str(m), "err": comp - comp_truth, "n": n[ok], "s2": s2}))
    df = pd.concat(rows, ignore_index=True)
    api = np.sqrt(sys_k**2 + (math.pi / 2) * np.maximum(df["s2"] - sys_k**2, 0.0) / df["n"])
    indep = np.sqrt((math.pi / 2) * df["s2"] / df["n"])
    persist = np.sqrt(bias_k**2 + (math.pi / 2) * np.maximum(df["s2"] - bias_k**2, 0.0) / df["n"])
    return {"region": region, "pixels": len(pick), "composites": len(df), "months": int(df["month"].nunique()),
            "systematic_k": sys_k, "rmse_k": float(np.sqrt(np.mean(df["err"] ** 2))),
            "api_formula": _shares(df["err"].to_numpy(), api.to_numpy()),
            "independent_scenes": _shares(df["err"].to_numpy(), indep.to_numpy()),
            "persistent_bias_only": _shares(df["err"].to_numpy(), persist.to_numpy()), "bias_k": bias_k,
            "rms_sigma_persistent_k": float(np.sqrt(np.mean(persist**2))),
            "rms_sigma_api_k": float(np.sqrt(np.mean(api**2))), "rms_sigma_independent_k":
                float(np.sqrt(np.mean(indep**2)))}


def _target_bias(demo: Path, direction: str) -> float:
    """The mean residual (K) of the direction's model against its target's radiometers (stage 3): the part of the
    error that persists from scene to scene."""
    uc = json.loads((demo / direction / "results.json").read_text())["stage3_transfer"]["uncertainty_calibration"]
    return abs(float((uc.get("random_systematic_insitu") or {}).get("bias_k") or 0.0))


def retrieval_cost(demo: Path, rows: int = 200_000) -> dict[str, float]:
    """Seconds per million pixels of the error model's lookup and of the DNN's forward (one thread)."""
    import torch

    torch.set_num_threads(1)
    art = load_artifact(demo / "SiHuHe" / "model")
    mu = pd.read_parquet(demo / "work" / "matchups.parquet")
    mu = mu[mu["reason"] == "ok"].sample(rows, replace=True, random_state=0).reset_index(drop=True)
    x = np.ascontiguousarray(feature_matrix(mu), dtype=np.float32)
    feats = {k: v.astype(np.float32) for k, v in compute_features(mu, names=("wvc", "emis_mean", "sec_vza")).items()}
    em = art.card["uncertainty"]
    t0 = time.perf_counter()
    art.predict(x)
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(5):
        apply_error_model(em, feats)
    t_sigma = (time.perf_counter() - t0) / 5
    return {"dnn_s_per_mpx": t_model / rows * 1e6, "error_model_s_per_mpx": t_sigma / rows * 1e6,
            "error_model_share_of_dnn": t_sigma / t_model}


def main(argv: list[str] | None = None) -> int:
    """Run the measurements on a demo folder; write the JSON and the reliability diagram."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path)
    ap.add_argument("--pixels", type=int, default=100_000)
    ap.add_argument("--png", type=Path, default=Path("docs/img/uncertainty_reliability.png"))
    ap.add_argument("--out", type=Path, default=_RESULTS)
    a = ap.parse_args(argv)
    sites, curves = site_truth(a.demo)
    res = {"demo": str(a.demo), "sites": sites,
           "stage3": {d: json.loads((a.demo / d / "results.json").read_text())["stage3_transfer"]
                      ["uncertainty_calibration"] for d in ("SiHuHe", "SiHeHu") if (a.demo / d).is_dir()},
           "composites": [composites(a.demo, r, a.pixels, bias_k=_target_bias(a.demo, d))
                          for r, d in (("heihe", "SiHuHe"), ("huailai", "SiHeHu"))],
           "retrieval_cost": retrieval_cost(a.demo)}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    a.png.parent.mkdir(parents=True, exist_ok=True)
    plotting.reliability_diagram(curves, a.png, title="lst_uncertainty of the demo: sites of each region")
    print(json.dumps({k: v for k, v in res.items() if k != "stage3"}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
