"""The experiment grid as one distributed Dask job (``sftl experiment``).

Models x strategies x directions x seeds, plus the WVC×ΔBT ablation (the same cells retrained
without chosen features). Each (model, seed, feature set) is pre-trained once: LGBM with
``lightgbm.dask`` across the cluster's workers (on the driver, before the grid, since it needs every
worker at once), the others as one task each. Every (model, strategy, direction, seed, feature set)
cell is a task that depends on its pre-training future, fine-tunes and transfers. Results are
gathered as they finish; a failed cell is recorded with its error, never fatal.

Outputs under ``out``: ``results.parquet`` (one row per cell), ``predictions.parquet`` (every cell's
cross-site predictions), ``summary.md`` and figures (see :func:`sftl_dask.report.experiment_report`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from sftl_dask.features import FEATURES
from sftl_dask.models.trainer import SCHEDULES
from sftl_dask.training.stages import TrainConfig, load_config, prepare_data, pretrain, run_stages

__all__ = ["load_grid", "run_experiment"]

_TREES = ("rf", "lgbm")
_MODELS = ("dnn", "trf", "cnn", "rf", "lgbm")
_GRID_KEYS = ("models", "strategies", "directions", "seeds", "ablation", "lgbm_dask")


def load_grid(path: str | os.PathLike[str]) -> tuple[TrainConfig, dict[str, Any]]:
    """The base configuration and its ``grid`` section.

    ``grid`` keys: ``models``, ``strategies``, ``directions``, ``seeds`` (lists); ``params_<model>``
    (model parameters); ``pretrain_<model>`` (overrides of the ``pretrain`` section for that model);
    ``ablation`` (``{drop_features: [...], models: [...]}``: those models' cells again without the
    features; default drops ``wvc_dbt`` for the first torch model); ``lgbm_dask`` (pre-train LGBM with
    ``lightgbm.dask``, default true).

    Raises
    ------
    ValueError
        Naming the file and key when the grid is missing, is not a mapping, holds an unknown key or a
        value of the wrong type, or names an unknown model, strategy, direction or feature.
    """
    import yaml

    cfg = load_config(path)
    raw = yaml.safe_load(Path(path).read_text()).get("grid")
    if raw is None:
        raise ValueError(f"{path}: no 'grid' section (models, strategies, directions, seeds)")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: grid must be a mapping (models, strategies, directions, seeds), "
                         f"got {type(raw).__name__}")
    known = _GRID_KEYS + tuple(f"{prefix}_{m}" for prefix in ("params", "pretrain") for m in _MODELS)
    unknown = [str(k) for k in raw if k not in known]
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join('grid.' + k for k in unknown)}; grid takes "
                         f"{', '.join(_GRID_KEYS)}, params_<model>, pretrain_<model>")
    for key in ("models", "strategies", "directions", "seeds"):
        if not isinstance(raw.get(key) or [], list):
            raise ValueError(f"{path}: grid.{key} must be a list, got {raw[key]!r}")
    if not isinstance(raw.get("lgbm_dask", True), bool):
        raise ValueError(f"{path}: grid.lgbm_dask must be true or false, got {raw['lgbm_dask']!r}")
    grid: dict[str, Any] = {k: list(raw.get(k) or []) for k in ("models", "strategies", "directions", "seeds")}
    for key, valid in (("models", _MODELS),
                       ("strategies", ("full", "head", "gradual", "adapter", "lora")),
                       ("directions", ("SiHuHe", "SiHeHu"))):
        bad = [v for v in grid[key] if str(v) not in valid]
        if not grid[key] or bad:
            raise ValueError(f"{path}: grid.{key} must list some of {', '.join(valid)} (got {grid[key]})")
    if not grid["seeds"] or not all(isinstance(s, int) and not isinstance(s, bool) for s in grid["seeds"]):
        raise ValueError(f"{path}: grid.seeds must be a non-empty list of integers")
    for model in _MODELS:
        for prefix in ("params", "pretrain"):
            val = raw.get(f"{prefix}_{model}", {}) or {}
            if not isinstance(val, dict):
                raise ValueError(f"{path}: grid.{prefix}_{model} must be a mapping")
            grid[f"{prefix}_{model}"] = dict(val)
        for key in ("epochs", "lr", "batch_size"):
            v = grid[f"pretrain_{model}"].get(key)
            if v is not None and not (isinstance(v, int | float) and v > 0):
                raise ValueError(f"{path}: grid.pretrain_{model}.{key} must be a positive number")
        sched = grid[f"pretrain_{model}"].get("schedule")
        if sched is not None and sched not in SCHEDULES:
            raise ValueError(f"{path}: grid.pretrain_{model}.schedule must be one of {', '.join(SCHEDULES)}")
    torch_models = [m for m in grid["models"] if m not in _TREES]
    abl = raw.get("ablation", {"drop_features": ["wvc_dbt"], "models": torch_models[:1]})
    if abl in (None, False):
        abl = {"drop_features": [], "models": []}
    if not isinstance(abl, dict):
        raise ValueError(f"{path}: grid.ablation must be a mapping (drop_features, models) or false")
    drop, amodels = list(abl.get("drop_features") or []), list(abl.get("models") or [])
    if [f for f in drop if f not in FEATURES]:
        raise ValueError(f"{path}: grid.ablation.drop_features must name features from {', '.join(FEATURES)} "
                         f"(got {drop})")
    if [m for m in amodels if m not in grid["models"]]:
        raise ValueError(f"{path}: grid.ablation.models must be among grid.models (got {amodels})")
    grid["ablation"] = {"drop_features": drop, "models": amodels if drop else []}
    grid["lgbm_dask"] = bool(raw.get("lgbm_dask", True))
    return cfg, grid


def _variant(cfg: TrainConfig, grid: dict[str, Any], model: str, strategy: str | None, direction: str, seed: int,
             drop: tuple[str, ...] = ()) -> TrainConfig:
    src, tgt = ("huailai", "heihe") if direction == "SiHuHe" else ("heihe", "huailai")
    ft = dict(cfg.finetune)
    if strategy is not None and strategy != str(ft.get("strategy")).lower():
        # the base strategy's settings (e.g. Gradual's epochs_per_group) mean nothing to another strategy
        ft.update(strategy=strategy, params={})
    params = dict(cfg.model.get("params") or {}) if model == cfg.model["name"] else {}
    params.update(grid.get(f"params_{model}") or {})
    mdl: dict[str, Any] = {"name": model, "params": params}
    if cfg.model.get("features"):
        mdl["features"] = list(cfg.model["features"])
    if drop:
        mdl["drop_features"] = list(drop)
    v = dataclasses.replace(cfg, direction=direction, source_region=src, target_region=tgt, seed=seed, model=mdl,
                            pretrain={**cfg.pretrain, **(grid.get(f"pretrain_{model}") or {})}, finetune=ft)
    return dataclasses.replace(v, name=f"{model}-{strategy or 'trees'}-{direction}-s{seed}-{_features_label(v)}")


def _pretrain_task(cfg: TrainConfig, data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return pretrain(cfg, data, threads=1, log=lambda *_: None)


def _features_label(cfg: TrainConfig) -> str:
    drop = cfg.model.get("drop_features") or []
    return "all" if not drop else "-" + "-".join(drop)


def _cell_task(cfg: TrainConfig, data: dict[str, Any], pretrained: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    key = {"cell": cfg.name, "model": cfg.model["name"], "direction": cfg.direction, "seed": cfg.seed,
           "features": _features_label(cfg)}
    try:
        res = run_stages(cfg, data, None, threads=1, log=lambda *_: None, pretrained=pretrained)
    except Exception as exc:  # a failed cell is a row with its error and traceback, not the end of the grid
        import traceback

        msg = str(exc).splitlines()[0] if str(exc) else ""
        return {"row": {**key, "strategy": cfg.finetune.get("strategy"), "error": f"{type(exc).__name__}: {msg}",
                        "traceback": traceback.format_exc()}, "predictions": None}
    s1, s2, s3 = res["stage1_pretrain"], res["stage2_finetune"], res["stage3_transfer"]
    row = {**key, "strategy": res["strategy"], "trainable_parameters": s2["trainable_parameters"],
           "pretrain_s": s1["seconds"], "wall_s": round(time.perf_counter() - t0, 1), "error": ""}
    stages = [("sim", s1["model"]), ("sim_sw", s1["split_window"]), ("in_domain", s2["model"]),
              ("in_domain_sw", s2["split_window"]), ("cross_site", s3["zero_shot"]),
              ("cross_site_pretrained", s3["pretrained_only"]), ("cross_site_sw", s3["split_window"]),
              ("cross_site_direct", s3["direct_training"])]
    truth = s3.get("against_pixel_truth")
    if truth:
        stages += [("truth_cross_site", truth["zero_shot"]), ("truth_sw", truth["split_window"]),
                   ("truth_direct", truth["direct_training"]), ("truth_radiometer", truth["radiometer"])]
    for stage, m in stages:
        for k in ("rmse_k", "bias_k", "mae_k", "r2", "n"):
            row[f"{stage}_{k}"] = m[k]
    for f in s3["few_shot"]:
        row[f"few_shot_k{f['k']}_rmse_k"] = f["rmse_k_mean"]
    pred = res["cross_site_predictions"].assign(cell=cfg.name)
    return {"row": row, "predictions": pred}


def run_experiment(config: str | os.PathLike[str], out: str | os.PathLike[str], *, client: Any,
                   progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print
                   ) -> pd.DataFrame:
    """Run the grid of ``config`` on ``client``; write results under ``out``; return the per-cell table.

    Raises
    ------
    ValueError
        On a bad configuration (see :func:`load_grid`).
    """
    from distributed import as_completed

    from sftl_dask._staging import staged_file
    from sftl_dask.report import experiment_report

    t_start = time.perf_counter()
    cfg, grid = load_grid(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, out / "work", client=client)
    prep_s = time.perf_counter() - t_start
    shared = {k: data[k] for k in ("table", "matchups", "sw", "sim", "matchups_path", "testbed")}
    data_f = client.scatter(shared, broadcast=True)
    feature_sets: list[tuple[str, ...]] = [()]
    if grid["ablation"]["drop_features"]:
        feature_sets.append(tuple(grid["ablation"]["drop_features"]))
    plan = []  # (pretraining variant, its cells)
    for model in grid["models"]:
        for drop in feature_sets:
            if drop and model not in grid["ablation"]["models"]:
                continue
            for seed in grid["seeds"]:
                base = _variant(cfg, grid, model, None, grid["directions"][0], seed, drop)
                strategies = [None] if model in _TREES else grid["strategies"]
                cells = [_variant(cfg, grid, model, s, d, seed, drop) for d in grid["directions"] for s in strategies]
                plan.append((base, cells))
    pre: dict[str, Any] = {}
    # lightgbm.dask needs every worker at once: run those pre-trainings first, on the driver
    for base, _ in plan:
        if base.model["name"] == "lgbm" and grid["lgbm_dask"]:
            log(f"pre-training {base.name} with lightgbm.dask on {len(client.scheduler_info()['workers'])} workers")
            pre[base.name] = client.scatter(pretrain(base, data, client=client, log=lambda *_: None))
    for base, _ in plan:
        if base.name not in pre:
            pre[base.name] = client.submit(_pretrain_task, base, data_f, pure=False)
    futures = [client.submit(_cell_task, v, data_f, pre[base.name], pure=False) for base, cells in plan for v in cells]
    rows, preds = [], []
    for done, fut in enumerate(as_completed(futures), start=1):
        res = fut.result()
        rows.append(res["row"])
        if res["predictions"] is not None:
            preds.append(res["predictions"])
        if progress:
            progress(done, len(futures))
    table = pd.DataFrame(rows).sort_values("cell").reset_index(drop=True)
    predictions = pd.concat(preds, ignore_index=True) if preds else pd.DataFrame()
    for name, frame in (("predictions.parquet", predictions), ("results.parquet", table)):  # results last
        with staged_file(out / name, replace=True) as tmp:  # a killed run never leaves half a table
            frame.to_parquet(tmp)
    wall = time.perf_counter() - t_start
    experiment_report(table, predictions, out, wall_s=wall, prep_s=prep_s,
                      n_workers=len(client.scheduler_info()["workers"]))
    return table
