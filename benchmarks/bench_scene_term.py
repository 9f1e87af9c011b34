"""Benchmark: which form of the scene term calibrates ``lst_uncertainty`` (issue 21), on a finished demo's models.

No training: the demo's two exported DNNs (``SiHuHe/model``, ``SiHeHu/model``; their cards' simulation term) and
its split-window (``work/sw.json``; its simulation term refitted on the simulation's held-out profiles) are applied
to the demo's matchups, with the testbed's true pixel LST at each. For each direction and form of the scene term
(``additive`` as the demo fits it today: within-scene spread then the moment; and :func:`fit_scene_term`'s
``additive``, ``multiplicative``, ``affine-wvc`` by grouped Gaussian maximum likelihood), fitted on the source
region's held-out matchups (the chronological split): coverage of the target's pixel-truth error at k = 0 (every
target matchup) and at k = 10 (``loo-split`` re-fit on 10 matchups of drawn scenes, scored on the other scenes,
pooled over 20 draws, as stage 3 does).

Usage: python -m benchmarks.bench_scene_term DEMO_OUT [--out benchmarks/results/scene_term.json] [--no-composites]
[--artifact SiHuHe=TRAIN_OUT/model]
"""

from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from sftl_dask.api import composite_variance, uncertainty_split
from sftl_dask.features import compute_features, feature_matrix
from sftl_dask.io.lst import QC_FLAGS
from sftl_dask.metrics import wilson_interval
from sftl_dask.models.artifact import load_artifact
from sftl_dask.models.error_model import (
    SCENE_FORMS,
    apply_error_model,
    calibrate_error_model,
    fit_error_model,
    fit_scene_term,
    reference_sigma,
    scene_split_reference,
    scene_term_part,
    sigma_model_part,
    systematic_share,
)
from sftl_dask.physics.splitwindow import SplitWindowCoefficients, apply_split_window
from sftl_dask.simulate import read_simulation_columns
from sftl_dask.training.stages import CALIBRATION_PER_SCENE, calibration_split

_NAMES = ("wvc", "emis_mean", "sec_vza")
_RESULTS = Path(__file__).parent / "results" / "scene_term.json"
_DIRECTIONS = (("SiHuHe", "huailai", "heihe"), ("SiHeHu", "heihe", "huailai"))


def _sw(sw: dict[str, Any], f: Any) -> np.ndarray:
    c = SplitWindowCoefficients.from_dict(sw)
    return apply_split_window(c, *(np.asarray(f[k]) for k in ("bt_10_80", "bt_11_95", "emis_10_80", "emis_11_95",
                                                              "wvc", "vza")))


def _matchups(demo: Path) -> pd.DataFrame:
    mu = pd.read_parquet(demo / "work" / "matchups.parquet")
    mu = mu[mu["reason"] == "ok"]
    truth = pd.read_csv(demo / "work" / "testbed" / "truth" / "site_overpass_truth.csv",
                        usecols=["scene_id", "site", "lst_pixel_k"]).drop_duplicates(["scene_id", "site"])
    return mu.merge(truth, on=["scene_id", "site"], how="inner").reset_index(drop=True)


def _sw_sim_model(demo: Path, sw: dict[str, Any], holdout: float = 0.1, seed: int = 0) -> dict[str, Any]:
    """The split-window's simulation term: its residuals on the simulation's held-out profiles, by bin."""
    cols = ["bt_10_80", "bt_11_95", "emis_08_20", "emis_08_63", "emis_10_80", "emis_11_95", "wvc", "vza", "lst",
            "profile_id"]
    t = read_simulation_columns(demo / "work" / "sim.parquet", cols)
    prof = np.unique(t["profile_id"])
    held = np.random.default_rng(seed).choice(prof, size=max(1, int(holdout * prof.size)), replace=False)
    rows = {k: v[np.isin(t["profile_id"], held)] for k, v in t.items()}
    return fit_error_model(compute_features(rows, names=_NAMES), _sw(sw, rows) - rows["lst"])


def _shares(hits: np.ndarray, n: int) -> dict[str, Any]:
    return {"n": n, "within_1sigma": hits[0] / n, "within_2sigma": hits[1] / n,
            "within_1sigma_ci": list(wilson_interval(int(hits[0]), n)),
            "within_2sigma_ci": list(wilson_interval(int(hits[1]), n))}


def _today(base: dict[str, Any], f: dict[str, np.ndarray], r: np.ndarray, scenes: np.ndarray,
           ref: np.ndarray) -> dict[str, Any]:
    """The source-fitted additive term as stages fits it: the within-scene spread, then the moment."""
    sm = sigma_model_part(base, f)
    sigma_ref, _ = scene_split_reference(r, sm, scenes, ref)
    ref2 = np.maximum(ref, sigma_ref) ** 2
    tau2 = float(np.mean(r**2) - np.mean(sm.astype(np.float64) ** 2) - np.mean(ref2))
    return {k: v for k, v in base.items() if k != "scene_term"} | {"sigma_scene_k": max(tau2, 0.0) ** 0.5}


def _coverage(em: dict[str, Any], f: dict[str, np.ndarray], tgt: pd.DataFrame, r: np.ndarray, e: np.ndarray,
              ref: np.ndarray, k: int, draws: int) -> dict[str, Any]:
    hits, n = np.zeros(2), 0
    for d in range(1 if k == 0 else draws):
        rng = np.random.default_rng([0, k, d, 21])
        cal, scored = calibration_split(tgt["scene_id"], k, rng.permutation(tgt["scene_id"].astype(str).unique()),
                                        rng=rng)
        if k == 0:
            model, scored = em, np.arange(len(tgt))
        else:
            model = calibrate_error_model(em, {a: v[cal] for a, v in f.items()}, r[cal], sigma_ref_k=ref[cal],
                                          scene_id=tgt["scene_id"].to_numpy()[cal])[0]
        sigma = apply_error_model(model, {a: v[scored] for a, v in f.items()}).astype(np.float64)
        hits += [np.sum(np.abs(e[scored]) <= sigma), np.sum(np.abs(e[scored]) <= 2 * sigma)]
        n += scored.size
    return _shares(hits, n)


def run(demo: Path, draws: int = 20, with_composites: bool = True,
        artifacts: dict[str, Path] | None = None) -> dict[str, Any]:
    """Coverage of the pixel truth by form, direction, retrieval and k (0, 10); ``artifacts`` replaces a direction's
    model (e.g. a tree trained on the demo's data: ``{"SiHuHe": Path(".../model")}``)."""
    mu = _matchups(demo)
    sw = json.loads((demo / "work" / "sw.json").read_text())
    f_all = {k: np.asarray(v) for k, v in compute_features(mu, names=_NAMES).items()}
    ref_all = reference_sigma(mu["lst_insitu_std"].to_numpy(float), mu["n_insitu"].to_numpy(float))
    x = np.ascontiguousarray(feature_matrix(mu), dtype=np.float32)
    sw_base = _sw_sim_model(demo, sw)
    out: dict[str, Any] = {}
    cards: dict[str, dict[str, Any]] = {}
    for direction, src_name, tgt_name in _DIRECTIONS:
        art = load_artifact((artifacts or {}).get(direction, demo / direction / "model"))
        src_all = mu[mu["region"] == src_name]
        times = np.sort(src_all["time_utc"].unique())
        held = (mu["region"] == src_name) & (mu["time_utc"] >= times[int(np.floor(0.7 * times.size))])
        is_tgt = (mu["region"] == tgt_name).to_numpy()
        for name, p, base in ((str(art.card["model"]), art.predict(x).astype(np.float64), art.card["uncertainty"]),
                              ("split-window", _sw(sw, mu), sw_base)):
            r = p - mu["lst_insitu"].to_numpy(float)
            e = p - mu["lst_pixel_k"].to_numpy(float)
            hs = held.to_numpy()
            fs = {a: v[hs] for a, v in f_all.items()}
            scenes = mu["scene_id"].to_numpy()[hs]
            models = {"today (additive, moment)": _today(base, fs, r[hs], scenes, ref_all[hs])}
            for form in SCENE_FORMS:
                models[form] = fit_scene_term({k: v for k, v in base.items() if k != "scene_term"}, fs, r[hs],
                                              scenes, sigma_ref_k=ref_all[hs], form=form)
            ft = {a: v[is_tgt] for a, v in f_all.items()}
            tgt = mu[is_tgt].reset_index(drop=True)
            if name != "split-window":
                cards[tgt_name] = {label: _card_model(models[label], tgt, ft, r[is_tgt], ref_all[is_tgt])
                                   for label in ("today (additive, moment)", "multiplicative")}
            for label, em in models.items():
                out[f"{direction} {name} {label}"] = {
                    "scene_term": em.get("scene_term"), "sigma_scene_k": em["sigma_scene_k"],
                    **{f"k{k}": _coverage(em, ft, tgt, r[is_tgt], e[is_tgt], ref_all[is_tgt], k, draws)
                       for k in (0, 10)}}
    if with_composites and not artifacts:  # the composites are of the demo's LST: its own models' cards only
        out["composites"] = [composites(demo, region, cards[region]) for region in ("heihe", "huailai")]
    return out


def _card_model(em: dict[str, Any], tgt: pd.DataFrame, f: dict[str, np.ndarray], r: np.ndarray, ref: np.ndarray,
                k: int = 20) -> dict[str, Any]:
    """The error model a card carries: re-fitted (``loo-split``) on the target's first ``k`` matchups in time."""
    first = tgt.sort_values("time_utc", kind="stable")["scene_id"].astype(str).drop_duplicates().to_numpy()
    cal, _ = calibration_split(tgt["scene_id"], k, first, per_scene=CALIBRATION_PER_SCENE)
    return calibrate_error_model(em, {a: v[cal] for a, v in f.items()}, r[cal], sigma_ref_k=ref[cal],
                                 scene_id=tgt["scene_id"].to_numpy()[cal])[0]


_BAD = ("cloud", "not_covered", "missing_ancillary", "cloud_adjacent")


def composites(demo: Path, region: str, models: dict[str, dict[str, Any]], n_pixels: int = 100_000,
               seed: int = 0) -> dict[str, Any]:
    """Monthly median composites (pixels with >= 2 good values in a month) of the demo's LST against the truth
    composite; sigma recomputed per pixel from the scene cube's inputs with each error model, propagated four ways:
    the API's rule (:func:`sftl_dask.api.uncertainty_split`) for an LST store with only ``uncertainty_systematic_k``
    (= ``sigma_scene_k``, whole: ``api``) and with the retriever's ``uncertainty_systematic_fraction``
    (:func:`systematic_share`: a multiplicative term's ``c^2 / (1 + c^2)`` of each sigma^2 whole; ``api_share``,
    the same as ``api`` where the form has no constant share), the pixel's own scene term ``t`` whole (computed
    here from the term itself), every scene independent."""
    truth = xr.open_zarr(demo / "work" / "testbed" / "truth" / f"{region}.zarr")
    name = next(p.name for p in sorted((demo / "lst").glob("*.zarr"))
                if float(xr.open_zarr(p).x.min()) <= float(truth.x.min()) <= float(xr.open_zarr(p).x.max()))
    sel = {"x": truth.x, "y": truth.y, "time": truth.time}
    lst, cube = xr.open_zarr(demo / "lst" / name).sel(sel), xr.open_zarr(demo / "work" / "cube" / name).sel(sel)
    pick = np.random.default_rng(seed).choice(truth.sizes["y"] * truth.sizes["x"], size=n_pixels, replace=False)

    def take(da: xr.DataArray) -> np.ndarray:
        return da.values.reshape(da.sizes["time"], -1)[:, pick]

    v, t = take(lst["lst"]), take(truth["lst"])
    bad = np.bitwise_or.reduce([QC_FLAGS[f][0] for f in _BAD])
    good = np.isfinite(v) & ((take(lst["qc"]).astype(np.int64) & bad) == 0)
    # pixels without inputs (not covered) get harmless ones: they are not `good`
    fill = {"wvc": 1.0, "emis_10_80": 0.97, "emis_11_95": 0.97, "vza": 0.0}
    feats = compute_features({k: np.nan_to_num(take(cube[k]), nan=x) for k, x in fill.items()}, names=_NAMES)
    months = pd.DatetimeIndex(truth.time.values).to_period("M")
    out: dict[str, Any] = {"region": region, "pixels": n_pixels}
    for label, em in models.items():
        s2, t2 = (apply_error_model(em, feats).astype(np.float64) ** 2,
                  scene_term_part(em, feats).astype(np.float64) ** 2)
        rules = {"api": (float(em["sigma_scene_k"]), None), "api_share": (float(em["sigma_scene_k"]),
                                                                          systematic_share(em))}
        err, sig = [], {"api": [], "api_share": [], "pixel_term_whole": [], "independent": []}
        for m in months.unique():
            idx = np.flatnonzero(months == m)
            g = good[idx]
            n = g.sum(axis=0)
            ok = n >= 2
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # pixels without a good value in the month
                err.append((np.nanmedian(np.where(g, v[idx], np.nan), axis=0)
                            - np.nanmedian(np.where(g, t[idx], np.nan), axis=0))[ok])
                ms2 = np.nanmean(np.where(g, s2[idx], np.nan), axis=0)[ok]
                mt2 = np.nanmean(np.where(g, t2[idx], np.nan), axis=0)[ok]
                for key, (sys_k, frac) in rules.items():  # the package's rule, as the LST store would say
                    rand2, sys2 = uncertainty_split(np.where(g, np.sqrt(s2[idx]), np.nan), g, sys_k, frac)
                    mean_sys2 = np.nanmean(sys2, axis=0)[ok] if isinstance(sys2, np.ndarray) else sys2
                    var = composite_variance(mean_sys2, np.nanmean(rand2, axis=0)[ok], n[ok], "median")
                    sig[key].append(np.sqrt(var))
            sig["pixel_term_whole"].append(np.sqrt(mt2 + math.pi / 2 * (ms2 - mt2) / n[ok]))
            sig["independent"].append(np.sqrt(math.pi / 2 * ms2 / n[ok]))
        e = np.concatenate(err)
        out[label] = {"rmse_k": float(np.sqrt(np.mean(e**2))), "composites": int(e.size),
                      "systematic_share": systematic_share(em),
                      **{k: _shares(np.array([np.sum(np.abs(e) <= np.concatenate(s)),
                                              np.sum(np.abs(e) <= 2 * np.concatenate(s))]), int(e.size))
                         | {"rms_sigma_k": float(np.sqrt(np.mean(np.concatenate(s) ** 2)))} for k, s in sig.items()}}
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("demo", type=Path)
    ap.add_argument("--out", type=Path, default=_RESULTS)
    ap.add_argument("--no-composites", action="store_true", help="skip the monthly composites (reads the cubes)")
    ap.add_argument("--artifact", action="append", default=[], metavar="DIRECTION=PATH",
                    help="measure this artifact in that direction instead of the demo's (repeatable)")
    a = ap.parse_args(argv)
    res = run(a.demo, with_composites=not a.no_composites,
              artifacts=dict((d, Path(p)) for d, p in (v.split("=", 1) for v in a.artifact)))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    for c in res.get("composites", []):
        for label in ("today (additive, moment)", "multiplicative"):
            print(f"composites {c['region']:8s} {label:26s} rmse {c[label]['rmse_k']:.2f} K  " + "  ".join(
                f"{k} {c[label][k]['within_1sigma']:.1%}/{c[label][k]['within_2sigma']:.1%}"
                for k in ("api", "api_share", "pixel_term_whole", "independent")))
    for key, v in res.items():
        if key == "composites":
            continue
        print(f"{key:48s} k=0 {v['k0']['within_1sigma']:6.1%} {v['k0']['within_2sigma']:6.1%}   "
              f"k=10 {v['k10']['within_1sigma']:6.1%} {v['k10']['within_2sigma']:6.1%}  "
              f"{json.dumps(v['scene_term'] and {k: t for k, t in v['scene_term'].items() if k != 'fit'})}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
