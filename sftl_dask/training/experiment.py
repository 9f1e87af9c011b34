"""The experiment grid as one distributed Dask job (``sftl experiment``).

Models x strategies x directions x seeds, plus the WVC×ΔBT ablation (the same cells retrained
without chosen features). Each (model, seed, feature set) is pre-trained once: LGBM with
``lightgbm.dask`` across the cluster's workers (on the driver, before the grid, since it needs every
worker at once), the others as one task each. Every (model, strategy, direction, seed, feature set)
cell is a task that depends on its pre-training future, fine-tunes and transfers. Results are
gathered as they finish; a cell that fails for an expected reason (:data:`CELL_FAILURES`: bad data or
settings, a numerical or memory failure) is recorded with its error, never fatal; a bug raises.

:func:`run_grid` runs on prepared data; :func:`sftl_dask.pipelines.experiment.run_experiment` (``sftl
experiment``) prepares it first.

Outputs under ``out``: ``results.parquet`` (one row per cell), ``predictions.parquet`` (every cell's
cross-site predictions), ``summary.md`` and figures (see :func:`sftl_dask.report.experiment_report`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from sftl_dask.cluster import broadcast, completed
from sftl_dask.models import MODELS, TREE_MODELS
from sftl_dask.report import experiment_report
from sftl_dask.staging import staged_file
from sftl_dask.training.config import DIRECTIONS, ConfigError, TrainConfig, load_pipeline
from sftl_dask.training.stages import direct_baseline, pretrain, run_stages

__all__ = ["CELL_FAILURES", "load_grid", "run_grid"]

#: What a cell (or a shared direct baseline) may fail with and be recorded, not raised: bad data or settings
#: (ValueError), torch's runtime and memory errors (RuntimeError, MemoryError: a too-large model, a NaN
#: loss), a numerical failure (ArithmeticError). Anything else is a bug: it raises, with its traceback.
CELL_FAILURES: tuple[type[BaseException], ...] = (ValueError, RuntimeError, MemoryError, ArithmeticError)


def load_grid(path: str | os.PathLike[str]) -> tuple[TrainConfig, dict[str, Any]]:
    """The base configuration and its ``grid`` section (:class:`~sftl_dask.training.config.GridSection`).

    ``grid`` keys: ``models``, ``strategies``, ``directions``, ``seeds`` (lists); ``params_<model>``
    (model parameters); ``pretrain_<model>`` (overrides of the ``pretrain`` section for that model, only
    the keys given); ``ablation`` (``{drop_features: [...], models: [...]}``: those models' cells again
    without the features; default drops ``wvc_dbt`` for the first torch model); ``lgbm_dask``.

    Raises
    ------
    ConfigError
        A ``ValueError`` naming the file and key when the grid is missing or holds an unknown key, a value
        of the wrong type, or an unknown model, strategy, direction or feature.
    """
    pipeline = load_pipeline(path)
    if pipeline.grid is None:
        raise ConfigError(f"{path}: grid: missing (models, strategies, directions, seeds)")
    g = pipeline.grid
    grid: dict[str, Any] = {"models": list(g.models), "strategies": list(g.strategies),
                            "directions": list(g.directions), "seeds": list(g.seeds),
                            "ablation": g.resolved_ablation(), "lgbm_dask": g.lgbm_dask}
    for model in MODELS:
        grid[f"params_{model}"] = dict(getattr(g, f"params_{model}"))
        grid[f"pretrain_{model}"] = getattr(g, f"pretrain_{model}").model_dump(exclude_none=True)
    return TrainConfig.from_pipeline(pipeline, str(path)), grid


def _variant(cfg: TrainConfig, grid: Mapping[str, Any], model: str, strategy: str | None, direction: str, seed: int,
             drop: tuple[str, ...] = ()) -> TrainConfig:
    src, tgt = DIRECTIONS[direction]
    ft = dict(cfg.finetune)
    if strategy is not None and strategy != ft["strategy"]:
        # the base strategy's settings (e.g. Gradual's epochs_per_group) mean nothing to another strategy
        ft.update(strategy=strategy, params={})
    params = dict(cfg.model["params"]) if model == cfg.model["name"] else {}
    params.update(grid[f"params_{model}"])
    mdl: dict[str, Any] = {"name": model, "params": params, "features": cfg.model["features"],
                           "drop_features": list(drop) or None}
    v = dataclasses.replace(cfg, direction=direction, source_region=src, target_region=tgt, seed=seed, model=mdl,
                            pretrain={**cfg.pretrain, **grid[f"pretrain_{model}"]}, finetune=ft)
    return dataclasses.replace(v, name=f"{model}-{strategy or 'trees'}-{direction}-s{seed}-{_features_label(v)}")


def _pretrain_task(cfg: TrainConfig, data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return pretrain(cfg, data, threads=1, log=lambda *_: None)


def _direct_task(cfg: TrainConfig, data: dict[str, Any]) -> tuple[Any, dict[str, Any]] | None:
    t0 = time.perf_counter()
    try:
        model, info = direct_baseline(cfg, data, threads=1)
    except CELL_FAILURES as exc:  # each cell then tunes its own baseline, and a cell that fails records why
        logging.getLogger(__name__).warning("shared direct baseline for %s failed, cells retry it: %s: %s",
                                            cfg.name, type(exc).__name__, exc)
        return None
    return model, {**info, "seconds": round(time.perf_counter() - t0, 1)}


def _features_label(cfg: TrainConfig) -> str:
    drop = cfg.model["drop_features"] or []
    return "all" if not drop else "-" + "-".join(drop)


def _cell_task(cfg: TrainConfig, data: dict[str, Any], pretrained: tuple[Any, dict[str, Any]],
               direct: tuple[Any, dict[str, Any]] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    key = {"cell": cfg.name, "model": cfg.model["name"], "direction": cfg.direction, "seed": cfg.seed,
           "features": _features_label(cfg)}
    try:
        res = run_stages(cfg, data, None, threads=1, log=lambda *_: None, pretrained=pretrained, direct=direct)
    except CELL_FAILURES as exc:  # a failed cell is a row with its error and traceback, not the end of the grid
        msg = str(exc).splitlines()[0] if str(exc) else ""
        return {"row": {**key, "strategy": cfg.finetune["strategy"], "error": f"{type(exc).__name__}: {msg}",
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
    # per draw, so that a few-shot recommendation can be chosen on some draws and scored on others
    for f in s3["few_shot"]:
        row[f"few_shot_k{f['k']}_rmse_k"] = f["rmse_k_mean"]
        row[f"few_shot_k{f['k']}_draws_rmse_k"] = json.dumps([d["rmse_k"] for d in f["draws"]])
        row[f"few_shot_k{f['k']}_zero_shot_rmse_k"] = f["zero_shot_rmse_k_mean"]
        row[f"few_shot_k{f['k']}_zero_shot_draws_rmse_k"] = json.dumps([d["zero_shot_rmse_k"] for d in f["draws"]])
    tuning = s3["direct_tuning"]
    row["direct_search"] = json.dumps(tuning["search"])
    row["direct_chosen"] = json.dumps(tuning["chosen"], default=str)
    row["direct_cv_rmse_k"] = tuning["cv_rmse_k"]
    pred = res["cross_site_predictions"].assign(cell=cfg.name)
    return {"row": row, "predictions": pred}


def run_grid(cfg: TrainConfig, grid: Mapping[str, Any], data: Mapping[str, Any], out: str | os.PathLike[str], *,
             client: Any, progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print,
             prep_s: float = 0.0) -> pd.DataFrame:
    """Run the grid (:func:`load_grid`) on prepared ``data`` on ``client``; write results under ``out``; return
    the per-cell table.

    ``data`` is :func:`sftl_dask.pipelines.data.prepare_data`'s; ``prep_s`` the seconds its preparation took
    (reported). Outputs: ``results.parquet``, ``predictions.parquet``, ``summary.md`` and figures.
    """
    t_start = time.perf_counter() - prep_s
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shared = {k: data[k] for k in ("table", "matchups", "sw", "sim", "matchups_path", "testbed")}
    data_f = broadcast(client, shared)  # keys of this run's own: never another run's data
    plan = _plan(cfg, grid)
    pre: dict[str, Any] = {}
    # lightgbm.dask needs every worker at once: run those pre-trainings first, on the driver
    for base, _ in plan:
        if base.model["name"] == "lgbm" and grid["lgbm_dask"]:
            log(f"pre-training {base.name} with lightgbm.dask on {len(client.scheduler_info()['workers'])} workers")
            pre[base.name] = client.scatter(pretrain(base, data, client=client, log=lambda *_: None), hash=False)
    for base, _ in plan:
        if base.name not in pre:
            pre[base.name] = client.submit(_pretrain_task, base, data_f, pure=False)
    # one tuned direct baseline per (model, direction, seed, features): it does not depend on the strategy
    direct: dict[str, Any] = {}
    for _, cells in plan:
        for v in cells:
            if _direct_key(v) not in direct:
                direct[_direct_key(v)] = client.submit(_direct_task, v, data_f, pure=False)
    futures = [client.submit(_cell_task, v, data_f, pre[base.name], direct[_direct_key(v)], pure=False)
               for base, cells in plan for v in cells]
    rows, preds = [], []
    for done, fut in enumerate(completed(futures, client), start=1):
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


def _plan(cfg: TrainConfig, grid: Mapping[str, Any]) -> list[tuple[TrainConfig, list[TrainConfig]]]:
    """Each pre-training variant (model, features, seed) with its cells (strategies x directions)."""
    feature_sets: list[tuple[str, ...]] = [()]
    if grid["ablation"]["drop_features"]:
        feature_sets.append(tuple(grid["ablation"]["drop_features"]))
    plan = []
    for model in grid["models"]:
        for drop in feature_sets:
            if drop and model not in grid["ablation"]["models"]:
                continue
            for seed in grid["seeds"]:
                base = _variant(cfg, grid, model, None, grid["directions"][0], seed, drop)
                strategies = [None] if model in TREE_MODELS else grid["strategies"]
                cells = [_variant(cfg, grid, model, s, d, seed, drop) for d in grid["directions"] for s in strategies]
                plan.append((base, cells))
    return plan


def _direct_key(v: TrainConfig) -> str:
    """The direct baseline a cell shares: one per (model, direction, seed, features)."""
    return f"{v.model['name']}-{v.direction}-s{v.seed}-{_features_label(v)}"
