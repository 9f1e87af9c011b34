"""The three SFTL stages for one configuration (``sftl train``), on prepared data.

1. **Pre-train** on the simulation table (held-out simulated profiles give the stage's RMSE,
   next to the split-window fitted on the same table).
2. **Strategic fine-tune** on the source region's matchups with one strategy (Full, Head,
   Gradual, Adapter, LoRA), split chronologically (or by site) so no test scene leaks in.
3. **Transfer** to the target region: zero-shot cross-site evaluation, and few-shot adaptation
   with k target samples for a learning curve in k.

The split-window and a model trained directly on the source matchups are evaluated on the same
rows. The stage-2 model is exported as the artifact (DESIGN.md, "Model artifact").

Training takes prepared data (:class:`PreparedData`, made by :func:`sftl_dask.pipelines.data.prepare_data`);
what differs between torch models and trees is a task's business (:mod:`sftl_dask.training.tasks`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np
import pandas as pd
import torch

from sftl_dask.features import FEATURES, compute_features, feature_matrix, input_range
from sftl_dask.metrics import metrics, random_systematic, wilson_interval
from sftl_dask.models.artifact import export_artifact
from sftl_dask.models.error_model import (
    CALIBRATION_METHODS,
    apply_error_model,
    calibrate_error_model,
    coverage,
    fit_error_model,
    fit_scene_term,
    reference_sigma,
)
from sftl_dask.models.fewshot import adapt_few_shot
from sftl_dask.physics.splitwindow import SplitWindowCoefficients, apply_split_window
from sftl_dask.staging import content_sha256, staged_file
from sftl_dask.training.config import DIRECTIONS, TrainConfig, load_config, model_features
from sftl_dask.training.direct import default_search, tune_direct
from sftl_dask.training.tasks import TrainingTask, predict, task_for

__all__ = ["CALIBRATION_PER_SCENE", "DIRECTIONS", "PreparedData", "TrainConfig", "calibration_split",
           "direct_baseline", "load_config", "metrics",
           "model_features", "pretrain", "run_stages"]

_ERROR_FEATURES = ("wvc", "emis_mean", "sec_vza")  # what the error model bins residuals by
#: The scene term's form (:data:`~sftl_dask.models.error_model.SCENE_FORMS`): ``c * sigma_model`` transferred best
#: at k = 0 on the demo's models (benchmarks/bench_scene_term.py, docs/uncertainty.md).
SCENE_FORM = "multiplicative"


class PreparedData(TypedDict):
    """What training takes (:func:`sftl_dask.pipelines.data.prepare_data` makes it)."""

    sim: Path  #: the simulation table (Parquet), read again by the workers in distributed pre-training
    sw: dict[str, Any]  #: the split-window coefficients fitted on it
    matchups: pd.DataFrame  #: the matchups (both regions; ``lst_pixel_truth`` where a truth is known)
    matchups_path: Path  #: their table
    testbed: Path | None  #: the testbed they came from, if any
    table: dict[str, np.ndarray]  #: the simulation's columns (inputs, ``lst`` in K, ``profile_id``)
    key: str  #: the cache key of all of them, for products made from them
    sim_inputs: NotRequired[dict[str, Any] | None]  #: the simulation's provenance (its metadata's ``inputs``)


def _sw_predict(sw: Mapping[str, Any], frame: Mapping[str, Any]) -> np.ndarray:
    """LST (K) of the split-window fitted on the simulation (``sw``: its coefficients) on ``frame``'s rows."""
    coeffs = SplitWindowCoefficients.from_dict(dict(sw))
    return apply_split_window(coeffs, np.asarray(frame["bt_10_80"]), np.asarray(frame["bt_11_95"]),
                              np.asarray(frame["emis_10_80"]), np.asarray(frame["emis_11_95"]),
                              np.asarray(frame["wvc"]), np.asarray(frame["vza"]))


def _split(frame: pd.DataFrame, how: str, test_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chronological (last scenes held out) or site-held-out split; no scene or site is on both sides."""
    if how == "site":
        sites = np.array(sorted(frame["site"].unique()))
        rng = np.random.default_rng(seed)
        n_test = max(1, round(test_fraction * sites.size))
        test_sites = set(rng.choice(sites, size=n_test, replace=False))
        is_test = frame["site"].isin(test_sites)
    else:
        times = np.sort(frame["time_utc"].unique())
        cut = times[int(np.floor((1.0 - test_fraction) * times.size))]
        is_test = frame["time_utc"] >= cut
    return frame[~is_test], frame[is_test]


def _features(cfg: TrainConfig, frame: Mapping[str, Any]) -> np.ndarray:
    """The model's feature columns of ``frame`` (raw units, float32)."""
    names = model_features(cfg)
    x = feature_matrix(frame)
    return x if names == FEATURES else np.ascontiguousarray(x[:, [FEATURES.index(f) for f in names]])


def _sim_holdout(cfg: TrainConfig, table: Mapping[str, np.ndarray]) -> tuple[set[int], np.ndarray]:
    """The held-out simulated profiles (whole profiles, drawn with the configuration's seed) and their rows."""
    rng = np.random.default_rng(cfg.seed)
    prof = np.unique(table["profile_id"])
    held = set(rng.choice(prof, size=max(1, int(cfg.pretrain["holdout_fraction"] * prof.size)),
                          replace=False).tolist())
    return held, np.isin(table["profile_id"], list(held))


def _reference_sigma(frame: pd.DataFrame) -> np.ndarray:
    """The radiometers' error at each matchup (K, :func:`~sftl_dask.models.error_model.reference_sigma`):
    instrument, emissivity and the in situ mean's sampling error (no LST image yet: no 3 x 3 spread)."""
    return reference_sigma(frame["lst_insitu_std"].to_numpy(np.float64), frame["n_insitu"].to_numpy(np.float64))


def _error_model(cfg: TrainConfig, table: Mapping[str, np.ndarray], pretrained: Any, tuned: Any, test: pd.DataFrame,
                 x_test: np.ndarray, y_test: np.ndarray, sw: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-pixel error models (:mod:`sftl_dask.models.error_model`) of the exported model and of the
    split-window, both source-fitted (k = 0).

    Simulated part: the pre-trained model's (the split-window's) residuals on the held-out simulated profiles, by
    bin (how hard the inversion is for that atmosphere, surface and angle; the fine-tuned model departs from
    the simulation on purpose, so its residuals there are not errors). Scene part: the fine-tuned model's (the
    split-window's) residuals on the source region's held-out matchups (never used to fine-tune), less the
    radiometers' own error (:func:`_reference_sigma`).
    """
    names = _ERROR_FEATURES
    _, is_held = _sim_holdout(cfg, table)
    held_rows = {k: v[is_held] for k, v in table.items()}
    lst_sim = np.asarray(held_rows["lst"], dtype=np.float64)
    f_sim, f_obs, ref = compute_features(held_rows, names=names), compute_features(test, names=names), \
        _reference_sigma(test)
    source = f"{cfg.source_region} held-out matchups ({cfg.finetune['split']} split)"
    scenes = test["scene_id"].to_numpy()
    out = []
    for r_sim, r_obs in ((predict(pretrained, _features(cfg, held_rows)) - lst_sim, predict(tuned, x_test) - y_test),
                         (_sw_predict(sw, held_rows) - lst_sim, _sw_predict(sw, test) - y_test)):
        # the scene term scales with the simulation term (SCENE_FORM), fitted with the radiometers' error by Gaussian
        # maximum likelihood over matchups grouped by scene (the within-scene spread decides the radiometers' part;
        # their instruments' the floor): it transfers to a target through the target's own inputs
        em = fit_scene_term(fit_error_model(f_sim, r_sim), f_obs, r_obs, scenes, sigma_ref_k=ref, form=SCENE_FORM,
                            source=source)
        out.append(em | {"sigma_ref_method": "scene-grouped maximum likelihood (within-scene spread less "
                                             "sigma_model; floor: instrument, emissivity, in situ sampling)"})
    return out[0], out[1]


def _regions(cfg: TrainConfig, data: Mapping[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The source region's fine-tuning and held-out rows, and the target region's rows (usable matchups)."""
    mu = data["matchups"]
    ok = mu[mu["reason"] == "ok"]
    src = ok[ok["region"] == cfg.source_region]
    tgt = ok[ok["region"] == cfg.target_region]
    if len(src) < 10 or len(tgt) < 5:
        raise ValueError(f"{data['matchups_path']}: too few usable matchups (source {cfg.source_region} "
                         f"{len(src)}, target {cfg.target_region} {len(tgt)}; need 10 and 5)")
    train, test = _split(src, cfg.finetune["split"], cfg.finetune["test_fraction"], cfg.seed)
    return train, test, tgt


@dataclass(frozen=True)
class _Rows:
    """The matchups of one run, as frames and as model features (float32) with in situ LST (K)."""

    train: pd.DataFrame  # the source region's fine-tuning rows
    test: pd.DataFrame  # the source region's held-out rows
    target: pd.DataFrame  # the target region's rows
    x_ft: np.ndarray
    y_ft: np.ndarray
    x_in: np.ndarray
    y_in: np.ndarray
    x_tg: np.ndarray
    y_tg: np.ndarray

    @classmethod
    def of(cls, cfg: TrainConfig, data: Mapping[str, Any]) -> _Rows:
        """Split the matchups (:func:`_regions`) and take the configuration's features."""
        train, test, tgt = _regions(cfg, data)
        xy = [(_features(cfg, f), f["lst_insitu"].to_numpy(np.float32)) for f in (train, test, tgt)]
        return cls(train, test, tgt, *xy[0], *xy[1], *xy[2])

    def pixel_truth(self) -> np.ndarray | None:
        """The target rows' true pixel LST (K) where a truth is named for every row (the testbed's), else None."""
        t = self.target
        if "lst_pixel_truth" in t and t["lst_pixel_truth"].notna().all():
            return t["lst_pixel_truth"].to_numpy(np.float64)
        return None


def pretrain(cfg: TrainConfig, data: Mapping[str, Any], *, threads: int | None = None, log: Any = print,
             client: Any = None) -> tuple[Any, dict[str, Any]]:
    """Stage 1: the model pre-trained on the simulation, and its held-out metrics next to the split-window's.

    With a Dask ``client``, LGBM trains with ``lightgbm.dask`` across the workers (the table is read on
    the workers), and torch models with ``pretrain.distributed: true`` train data-parallel with
    ``torch.distributed`` (:func:`sftl_dask.training.distributed.pretrain_distributed`). Held-out
    profiles are the same either way.
    """
    torch.manual_seed(cfg.seed)
    if threads:
        torch.set_num_threads(threads)
    task = task_for(cfg, threads)
    table = data["table"]
    y_sim = np.asarray(table["lst"], dtype=np.float32)
    held, is_held = _sim_holdout(cfg, table)
    held_rows = {k: v[is_held] for k, v in table.items()}
    xte, yte = _features(cfg, held_rows), y_sim[is_held]
    n_train = int((~is_held).sum())
    on_cluster = task.distributes(client)
    if on_cluster and model_features(cfg) != FEATURES:
        raise ValueError(f"{cfg.source}: distributed pre-training takes all features; drop pretrain.distributed "
                         "for a feature ablation")
    t0 = time.perf_counter()
    log(f"stage 1: pre-training {task.name} on {n_train:,} simulated samples")
    if on_cluster:
        model = task.fit_on_cluster(data["sim"], sorted(held), client, xte, yte)
    else:
        train_rows = {k: v[~is_held] for k, v in table.items()}
        xtr, ytr = _features(cfg, train_rows), y_sim[~is_held]
        model = task.configure_model(xtr, ytr)
        task.fit(model, xtr, ytr, (xte, yte))
    stage1 = {"model": metrics(predict(model, xte), yte),
              "split_window": metrics(_sw_predict(data["sw"], held_rows), yte),
              "seconds": round(time.perf_counter() - t0, 1), "n_train": n_train}
    log(f"  held-out simulation RMSE {stage1['model']['rmse_k']:.3f} K (split-window "
        f"{stage1['split_window']['rmse_k']:.3f} K)")
    return model, stage1


def direct_baseline(cfg: TrainConfig, data: Mapping[str, Any], *, threads: int | None = None
                    ) -> tuple[Any, dict[str, Any]]:
    """The direct-training baseline: the configuration's model trained on the source fine-tuning rows only,
    its settings tuned by cross-validation over whole scenes (:func:`~sftl_dask.training.direct.tune_direct`;
    search space ``direct.search.<model>``, else :func:`~sftl_dask.training.direct.default_search`).

    Returns the refitted model and the tuning record (``search``, ``candidates``, ``chosen``, ``cv_rmse_k``).
    """
    task = task_for(cfg, threads)
    train, _, _ = _regions(cfg, data)
    x, y = _features(cfg, train), train["lst_insitu"].to_numpy(np.float32)
    search = cfg.direct["search"].get(task.name) or default_search(task.name)
    return tune_direct(task.fit_direct, predict, x, y, train["scene_id"].to_numpy(), search=search,
                       n_folds=cfg.direct["folds"])


def _few_shot(cfg: TrainConfig, tuned: Any, x_tg: np.ndarray, y_tg: np.ndarray, p_zero: np.ndarray
              ) -> list[dict[str, Any]]:
    """Few-shot adaptation (:func:`~sftl_dask.models.fewshot.adapt_few_shot`) on k target samples per draw,
    scored on the other target rows next to the zero-shot model on the same rows."""
    out = []
    for k in cfg.transfer["k"]:
        if k >= len(y_tg) - 3:  # too few rows left to score on
            continue
        draws: list[dict[str, Any]] = []
        for r in range(cfg.transfer["repeats"]):
            idx = np.random.default_rng([cfg.seed, k, r]).permutation(len(y_tg))
            few, rest = idx[:k], idx[k:]
            adapted, info = adapt_few_shot(tuned, predict, x_tg[few], y_tg[few], method=cfg.transfer["method"])
            draws.append({"rmse_k": metrics(predict(adapted, x_tg[rest]), y_tg[rest])["rmse_k"],
                          "zero_shot_rmse_k": metrics(p_zero[rest], y_tg[rest])["rmse_k"],
                          "update": info["update"], "penalty": info["penalty"]})
        runs = [d["rmse_k"] for d in draws]
        out.append({"k": k, "rmse_k_mean": float(np.mean(runs)), "rmse_k_sd": float(np.std(runs)),
                    "zero_shot_rmse_k_mean": float(np.mean([d["zero_shot_rmse_k"] for d in draws])),
                    "repeats": len(runs), "method": cfg.transfer["method"], "draws": draws})
    return out


def run_stages(cfg: TrainConfig, data: Mapping[str, Any], out: Path | None, *, threads: int | None = None,
               log: Any = print, pretrained: tuple[Any, dict[str, Any]] | None = None,
               direct: tuple[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Run the three stages and the baselines; export the stage-2 artifact to ``out/model`` unless ``out`` is None.

    The steps, in order: split the source region's matchups (fine-tuning rows, held-out rows) and take the
    target region's; stage 1 (``pretrained``, else :func:`pretrain`); stage 2 (the task's fine-tuning on the
    fine-tuning rows, scored on the held-out rows); the tuned direct baseline (:func:`direct_baseline`, unless
    ``direct`` gives it); stage 3 (zero-shot on the target, and few-shot); the error model and its calibration
    on the target; the artifact, and ``out/split_window.json`` (the split-window's coefficients with their
    calibrated error model). ``pretrained`` and ``direct`` let one pre-training or baseline serve many
    strategies (the experiment grid).
    """
    t_start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    rows = _Rows.of(cfg, data)
    model, stage1 = pretrained if pretrained is not None else pretrain(cfg, data, threads=threads, log=log)
    # new weights below (adapters, LoRA factors, the direct baseline) come from this seed, not from whatever the
    # process drew before: a cell gives the same figures on any worker, first or after others, or rerun
    torch.manual_seed(cfg.seed)
    task = task_for(cfg, threads)
    tuned, stage2 = _finetune_stage(cfg, task, model, rows, data["sw"], log)
    direct = direct if direct is not None else _timed_direct_baseline(cfg, data, threads, log)
    log(f"  chosen {direct[1]['chosen']} (cross-validated RMSE {direct[1]['cv_rmse_k']:.2f} K)")
    stage3, p = _transfer_stage(cfg, model, tuned, direct, rows, data["sw"], log)
    source_fitted, sw_model = _error_model(cfg, data["table"], model, tuned, rows.test, rows.x_in, rows.y_in,
                                           data["sw"])
    error_model = _card_calibration(cfg, source_fitted, rows, p["sftl"], log)
    sw_error_model = _card_calibration(cfg, sw_model, rows, p["sw"], log)
    stage3["uncertainty_calibration"] = _calibration(cfg, error_model, rows, p["sftl"], log)
    stage3["uncertainty_calibration"]["by_k"] = {
        f"{name}:{m}": _calibration_curve(cfg, em, rows, p[key], m) for name, em, key in
        (("model", source_fitted, "sftl"), ("split_window", sw_model, "sw")) for m in CALIBRATION_METHODS}
    stage3["uncertainty_calibration"]["split_window_sigma_scene_k"] = sw_model["sigma_scene_k"]
    results = {"config": cfg.name, "direction": cfg.direction, "model": task.name, "strategy": task.strategy_name,
               "features": list(model_features(cfg)),
               "stage1_pretrain": stage1, "stage2_finetune": stage2, "stage3_transfer": stage3,
               "cross_site_predictions": _predictions(rows, p),
               "seconds": round(time.perf_counter() - t_start, 1)}
    if out is not None:
        export_artifact(task.export_model(tuned), out / "model", _card(cfg, task, data, results, error_model))
        # the split-window's coefficients with their error model (a scene term from matchups): `sftl retrieve`
        # takes the file as it takes `sftl fit-sw`'s
        with staged_file(out / "split_window.json", replace=True) as tmp:
            tmp.write_text(json.dumps({**data["sw"], "uncertainty": sw_error_model}, indent=1))
    return results


def _finetune_stage(cfg: TrainConfig, task: TrainingTask, model: Any, rows: _Rows, sw: Mapping[str, Any],
                    log: Any) -> tuple[Any, dict[str, Any]]:
    """Stage 2: the fine-tuned model and its in-domain metrics next to the pre-trained model's and the
    split-window's on the source region's held-out rows."""
    t0 = time.perf_counter()
    log(f"stage 2: fine-tuning on {len(rows.y_ft)} {cfg.source_region} matchups with {task.strategy_name}")
    tuned = task.finetune(model, rows.x_ft, rows.y_ft)
    stage2 = {"model": metrics(predict(tuned, rows.x_in), rows.y_in),
              "pretrained_only": metrics(predict(model, rows.x_in), rows.y_in),
              "split_window": metrics(_sw_predict(sw, rows.test), rows.y_in),
              "n_train": len(rows.y_ft), "n_test": len(rows.y_in),
              "trainable_parameters": task.trainable_parameters(tuned),
              "seconds": round(time.perf_counter() - t0, 1)}
    log(f"  in-domain RMSE {stage2['model']['rmse_k']:.2f} K (pre-trained only "
        f"{stage2['pretrained_only']['rmse_k']:.2f}, split-window {stage2['split_window']['rmse_k']:.2f})")
    return tuned, stage2


def _timed_direct_baseline(cfg: TrainConfig, data: Mapping[str, Any], threads: int | None,
                           log: Any) -> tuple[Any, dict[str, Any]]:
    """:func:`direct_baseline`, its record with the ``seconds`` it took."""
    t0 = time.perf_counter()
    log(f"direct baseline: {cfg.model['name']} on the {cfg.source_region} matchups only, settings by "
        "cross-validation")
    direct = direct_baseline(cfg, data, threads=threads)
    direct[1]["seconds"] = round(time.perf_counter() - t0, 1)
    return direct


def _transfer_stage(cfg: TrainConfig, model: Any, tuned: Any, direct: tuple[Any, dict[str, Any]], rows: _Rows,
                    sw: Mapping[str, Any], log: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Stage 3 on the target region: every method's metrics (against the pixel truth too, where one is named)
    and few-shot adaptation; returns them and each method's target predictions (K): ``sftl``, ``sw``,
    ``direct``."""
    direct_model, direct_info = direct
    log(f"stage 3: transfer to {cfg.target_region} ({len(rows.y_tg)} matchups)")
    # each method's target predictions once: scored against the radiometers, the pixel truth, and written out
    p = {"sftl": predict(tuned, rows.x_tg), "sw": _sw_predict(sw, rows.target),
         "direct": predict(direct_model, rows.x_tg)}
    y_tg = rows.y_tg
    stage3: dict[str, Any] = {
        "zero_shot": metrics(p["sftl"], y_tg),
        "pretrained_only": metrics(predict(model, rows.x_tg), y_tg),
        "split_window": metrics(p["sw"], y_tg),
        "direct_training": metrics(p["direct"], y_tg),
        "direct_tuning": direct_info,
        "few_shot": _few_shot(cfg, tuned, rows.x_tg, y_tg, p["sftl"]),
    }
    truth = rows.pixel_truth()
    if truth is not None:
        # a named truth (the testbed's): the same retrievals scored against the true pixel LST, and the
        # radiometers' own error
        stage3["against_pixel_truth"] = {
            "zero_shot": metrics(p["sftl"], truth),
            "split_window": metrics(p["sw"], truth),
            "direct_training": metrics(p["direct"], truth),
            "radiometer": metrics(y_tg, truth),
        }
    log(f"  cross-site RMSE {stage3['zero_shot']['rmse_k']:.2f} K (split-window "
        f"{stage3['split_window']['rmse_k']:.2f}, tuned direct training {stage3['direct_training']['rmse_k']:.2f})")
    for f in stage3["few_shot"]:
        log(f"  few-shot k={f['k']}: {f['rmse_k_mean']:.2f} K over {f['repeats']} draws (zero-shot on the same rows "
            f"{f['zero_shot_rmse_k_mean']:.2f} K)")
    return stage3, p


def _calibration(cfg: TrainConfig, error_model: Mapping[str, Any], rows: _Rows, p_sftl: np.ndarray,
                 log: Any) -> dict[str, Any]:
    """The per-pixel uncertainty the LST cube will carry, and its calibration on the target region."""
    sigma_tg = apply_error_model(error_model, compute_features(rows.target, names=_ERROR_FEATURES))
    calibration = {"target_insitu": coverage(p_sftl - rows.y_tg, sigma_tg),
                   "sigma_scene_k": error_model["sigma_scene_k"], "n_scene": error_model["n_scene"],
                   "calibration": error_model.get("calibration"),
                   "random_systematic_insitu": _json_safe(random_systematic(p_sftl - rows.y_tg,
                                                                            rows.target["scene_id"]))}
    truth = rows.pixel_truth()
    if truth is not None:
        calibration["target_pixel_truth"] = coverage(p_sftl - truth, sigma_tg)
        calibration["random_systematic_pixel_truth"] = _json_safe(random_systematic(p_sftl - truth,
                                                                                     rows.target["scene_id"]))
    c = calibration["target_insitu"]
    log(f"  uncertainty on {cfg.target_region}: {c['within_1sigma']:.0%} of in situ residuals within 1 sigma, "
        f"{c['within_2sigma']:.0%} within 2 sigma (rms sigma {c['rms_sigma_k']:.2f} K)")
    return calibration


#: Most calibration matchups taken from one target scene: two give the within-scene spread (the radiometers'
#: error) and leave the rest of k to other scenes (the scene-to-scene part).
CALIBRATION_PER_SCENE = 2


def calibration_split(scene_id: Any, k: int, order: Any, per_scene: int = CALIBRATION_PER_SCENE,
                      rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Which target matchups calibrate the uncertainty and which score it.

    Scenes are taken in ``order``, at most ``per_scene`` matchups from each (its first rows, or drawn with ``rng``),
    until k are
    taken; every row of a scene that gave none is scored. A scored scene never gives a calibration matchup, and a
    calibration scene is never scored.

    Parameters
    ----------
    scene_id : array_like
        The scene of each target matchup.
    k : int
        Calibration matchups wanted (fewer when the scenes run out).
    order : array_like
        Scene ids in the order they are taken (a permutation, or the scenes in time order).
    per_scene : int
        Most matchups from one scene.
    rng : numpy.random.Generator, optional
        Draws the rows taken from a scene (default: its first rows).

    Returns
    -------
    calibration, scored : numpy.ndarray
        Row positions (int).
    """
    scenes = np.asarray(scene_id).astype(str)
    cal: list[int] = []
    used: list[str] = []
    for sc in np.asarray(order).astype(str):
        if len(cal) >= k:
            break
        rows = np.flatnonzero(scenes == sc)
        rows = (rng.permutation(rows) if rng is not None else rows)[:min(per_scene, k - len(cal))]
        cal += rows.tolist()
        used.append(sc)
    return np.asarray(cal, dtype=np.intp), np.flatnonzero(~np.isin(scenes, used))


def _card_calibration(cfg: TrainConfig, source_fitted: dict[str, Any], rows: _Rows, p_model: np.ndarray,
                      log: Any) -> dict[str, Any]:
    """The error model the artifact carries: the scene term re-fitted on the target's first k matchups in time
    (k the largest few-shot ``transfer.k``; :func:`calibration_split`), or the source-fitted one when ``transfer.k``
    is empty or k is below what a re-fit needs (said in one line)."""
    k = max(cfg.transfer["k"], default=0)
    if k == 0:
        return source_fitted
    tgt = rows.target
    first = tgt.sort_values("time_utc", kind="stable")["scene_id"].astype(str).drop_duplicates().to_numpy()
    cal, _ = calibration_split(tgt["scene_id"], k, first)
    feats = {n: v[cal] for n, v in compute_features(tgt, names=_ERROR_FEATURES).items()}
    model, message = calibrate_error_model(source_fitted, feats, p_model[cal] - rows.y_tg[cal],
                                           sigma_ref_k=_reference_sigma(tgt.iloc[cal]),
                                           scene_id=tgt["scene_id"].to_numpy()[cal])
    log(f"  {message}")
    return model


def _json_safe(figures: Mapping[str, Any]) -> dict[str, Any]:
    """Figures with NaN as None: the card and results.json are strict JSON."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in figures.items()}


def _shares(hits1: int, hits2: int, n: int) -> dict[str, Any]:
    """Coverage at 1 and 2 sigma with their 95 % Wilson intervals."""
    return {"n": n, "within_1sigma": hits1 / n if n else None, "within_2sigma": hits2 / n if n else None,
            "within_1sigma_ci": list(wilson_interval(hits1, n)) if n else None,
            "within_2sigma_ci": list(wilson_interval(hits2, n)) if n else None}


def _calibration_curve(cfg: TrainConfig, source_fitted: Mapping[str, Any], rows: _Rows, p: np.ndarray,
                       method: str = "loo-split") -> list[dict[str, Any]]:
    """Coverage of a model's uncertainty on held-out target scenes at k = 0 (source-fitted, every target scene
    scored) and at each few-shot k (re-fitted on k matchups of drawn scenes, scored on the other scenes; pooled
    over ``transfer.repeats`` draws): against the radiometers with their error added, and against the pixel truth
    where one is named. Intervals: Wilson, 95 %, on the pooled count."""
    tgt, truth = rows.target, rows.pixel_truth()
    feats = compute_features(tgt, names=_ERROR_FEATURES)
    resid, ref = p - rows.y_tg, _reference_sigma(tgt)
    out = []
    for k in [0, *cfg.transfer["k"]]:
        counts = np.zeros(6, dtype=np.int64)  # radiometer 1/2 sigma, truth 1/2 sigma, n radiometer, n truth
        draws = 1 if k == 0 else cfg.transfer["repeats"]
        for r in range(draws):
            rng = np.random.default_rng([cfg.seed, k, r, 21])
            cal, scored = calibration_split(tgt["scene_id"], k, rng.permutation(tgt["scene_id"].astype(str).unique()),
                                            rng=rng)
            em = source_fitted if k == 0 else calibrate_error_model(
                source_fitted, {n: v[cal] for n, v in feats.items()}, resid[cal], sigma_ref_k=ref[cal],
                scene_id=tgt["scene_id"].to_numpy()[cal], method=method)[0]
            if scored.size == 0:
                continue
            sigma = apply_error_model(em, {n: v[scored] for n, v in feats.items()}).astype(np.float64)
            # the radiometers' error: the model's estimate of the network's (scene-split), at least the instruments'
            net = (em.get("calibration") or {}).get("sigma_ref_rms_k") or em.get("sigma_ref_rms_k", 0.0)
            tot = np.hypot(sigma, np.maximum(ref[scored], net))
            counts[[0, 1, 4]] += [np.sum(np.abs(resid[scored]) <= tot), np.sum(np.abs(resid[scored]) <= 2 * tot),
                                  scored.size]
            if truth is not None:
                e = np.abs(p[scored] - truth[scored])
                counts[[2, 3, 5]] += [np.sum(e <= sigma), np.sum(e <= 2 * sigma), scored.size]
        c = [int(v) for v in counts]
        out.append({"k": k, "method": method if k else "source-fitted", "draws": draws,
                    "insitu_with_reference": _shares(c[0], c[1], c[4]),
                    "pixel_truth": _shares(c[2], c[3], c[5]) if truth is not None else None})
    return out


def _predictions(rows: _Rows, p: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The cross-site predictions, one row per target matchup (K)."""
    tgt = rows.target
    return pd.DataFrame({
        "site": tgt["site"].to_numpy(), "time_utc": tgt["time_utc"].to_numpy(), "lst_insitu": rows.y_tg,
        "lst_sftl": p["sftl"], "lst_split_window": p["sw"].astype(np.float32), "lst_direct": p["direct"],
        "wvc": tgt["wvc"].to_numpy(np.float32),
        "lst_pixel_truth": tgt["lst_pixel_truth"].to_numpy(np.float32) if "lst_pixel_truth" in tgt
        else np.full(len(tgt), np.nan, np.float32)})


def _card(cfg: TrainConfig, task: TrainingTask, data: Mapping[str, Any], results: Mapping[str, Any],
          error_model: Mapping[str, Any]) -> dict[str, Any]:
    """The model card of the exported artifact (DESIGN.md, "Model artifact")."""
    stage1, stage2, stage3 = results["stage1_pretrain"], results["stage2_finetune"], results["stage3_transfer"]
    strat_name = task.strategy_name
    return {
        "name": f"{cfg.name}-{task.name}-{strat_name}",
        "model": task.name, "strategy": strat_name, "direction": cfg.direction, "features": list(model_features(cfg)),
        "source_region": cfg.source_region, "target_region": cfg.target_region,
        "stages": ["pretrain: simulation", f"finetune: {cfg.source_region} matchups ({strat_name})"],
        "training_tables": {"simulation": {"path": str(data["sim"]), "sha256": content_sha256(Path(data["sim"]))},
                            "matchups": {"path": str(data["matchups_path"]),
                                         "sha256": content_sha256(Path(data["matchups_path"]))}},
        "simulation_inputs": data.get("sim_inputs"),
        "metrics": {"stage1_holdout_sim": stage1["model"], "stage2_in_domain": stage2["model"],
                    "stage3_cross_site": stage3["zero_shot"],
                    "uncertainty_calibration": stage3["uncertainty_calibration"]},
        "config": cfg.source,
        "uncertainty": error_model,
        "pretraining_range": input_range(data["table"]),
    }
