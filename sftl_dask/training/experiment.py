"""The experiment grid as one distributed Dask job (``sftl experiment``).

Models x strategies x directions x seeds. Each (model, seed) is pre-trained once, as one task;
every (model, strategy, direction, seed) cell is a task that depends on its pre-training
future, fine-tunes and transfers. Results are gathered as they finish; a failed cell is
recorded with its error, never fatal. Outputs: ``results.parquet`` (one row per cell),
``summary.md`` (mean ± sd over seeds), and ``grid.png``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sftl_dask.training.stages import TrainConfig, load_config, prepare_data, pretrain, run_stages

__all__ = ["load_grid", "run_experiment"]

_TREES = ("rf", "lgbm")


def load_grid(path: str | os.PathLike[str]) -> tuple[TrainConfig, dict[str, list[Any]]]:
    """The base configuration and its ``grid`` section (models, strategies, directions, seeds).

    Raises
    ------
    ValueError
        Naming the file and key when the grid is missing or names an unknown model, strategy or direction.
    """
    import yaml

    cfg = load_config(path)
    raw = yaml.safe_load(Path(path).read_text()).get("grid")
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: no 'grid' section (models, strategies, directions, seeds)")
    grid = {k: list(raw.get(k) or []) for k in ("models", "strategies", "directions", "seeds")}
    for key, valid in (("models", ("dnn", "trf", "cnn", "rf", "lgbm")),
                       ("strategies", ("full", "head", "gradual", "adapter", "lora")),
                       ("directions", ("SiHuHe", "SiHeHu"))):
        bad = [v for v in grid[key] if str(v) not in valid]
        if not grid[key] or bad:
            raise ValueError(f"{path}: grid.{key} must list some of {', '.join(valid)} (got {grid[key]})")
    if not grid["seeds"] or not all(isinstance(s, int) for s in grid["seeds"]):
        raise ValueError(f"{path}: grid.seeds must be a non-empty list of integers")
    return cfg, grid


def _variant(cfg: TrainConfig, model: str, strategy: str | None, direction: str, seed: int,
             model_params: dict[str, Any]) -> TrainConfig:
    src, tgt = ("huailai", "heihe") if direction == "SiHuHe" else ("heihe", "huailai")
    ft = dict(cfg.finetune)
    if strategy is not None:
        ft["strategy"] = strategy
    return dataclasses.replace(cfg, name=f"{model}-{strategy or 'trees'}-{direction}-s{seed}", direction=direction,
                               source_region=src, target_region=tgt, seed=seed,
                               model={"name": model, "params": model_params}, finetune=ft)


def _pretrain_task(cfg: TrainConfig, data: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    return pretrain(cfg, data, threads=1, log=lambda *_: None)


def _cell_task(cfg: TrainConfig, data: dict[str, Any], pretrained: tuple[Any, dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        res = run_stages(cfg, data, None, threads=1, log=lambda *_: None, pretrained=pretrained)
    except Exception as exc:  # a failed cell is a row with its error, not the end of the grid
        return {"cell": cfg.name, "model": cfg.model["name"], "strategy": cfg.finetune.get("strategy"),
                "direction": cfg.direction, "seed": cfg.seed,
                "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    s1, s2, s3 = res["stage1_pretrain"], res["stage2_finetune"], res["stage3_transfer"]
    row = {"cell": cfg.name, "model": res["model"], "strategy": res["strategy"], "direction": res["direction"],
           "seed": cfg.seed, "trainable_parameters": s2["trainable_parameters"],
           "wall_s": round(time.perf_counter() - t0 + s1["seconds"], 1), "error": ""}
    for stage, m in (("sim", s1["model"]), ("in_domain", s2["model"]), ("cross_site", s3["zero_shot"]),
                     ("cross_site_sw", s3["split_window"]), ("cross_site_direct", s3["direct_training"])):
        for k in ("rmse_k", "bias_k", "mae_k", "r2", "n"):
            row[f"{stage}_{k}"] = m[k]
    for f in s3["few_shot"]:
        row[f"few_shot_k{f['k']}_rmse_k"] = f["rmse_k_mean"]
    return row


def run_experiment(config: str | os.PathLike[str], out: str | os.PathLike[str], *, client: Any,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Run the grid of ``config`` on ``client``; write results under ``out``; return the per-cell table.

    Raises
    ------
    ValueError
        On a bad configuration (see :func:`load_grid`).
    """
    from distributed import as_completed

    cfg, grid = load_grid(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, out / "work", client=client)
    shared = {k: data[k] for k in ("table", "matchups", "sw", "sim", "matchups_path")}
    data_f = client.scatter(shared, broadcast=True)
    params = dict(cfg.model.get("params") or {})
    pre: dict[tuple[str, int], Any] = {}
    cells = []
    for model in grid["models"]:
        mparams = params if model == cfg.model["name"] else dict(grid.get(f"params_{model}") or {})
        for seed in grid["seeds"]:
            base = _variant(cfg, model, None, grid["directions"][0], seed, mparams)
            pre[(model, seed)] = client.submit(_pretrain_task, base, data_f, pure=False)
            strategies = [None] if model in _TREES else grid["strategies"]
            for direction in grid["directions"]:
                for strategy in strategies:
                    v = _variant(cfg, model, strategy, direction, seed, mparams)
                    cells.append(client.submit(_cell_task, v, data_f, pre[(model, seed)], pure=False))
    rows = []
    for done, fut in enumerate(as_completed(cells), start=1):
        rows.append(fut.result())
        if progress:
            progress(done, len(cells))
    table = pd.DataFrame(rows).sort_values("cell").reset_index(drop=True)
    table.to_parquet(out / "results.parquet")
    _summary(table, out)
    return table


def _summary(table: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = table[table["error"] == ""] if "error" in table else table
    lines = ["# Experiment grid", "", "Mean ± sd over seeds; RMSE in K. Testbed figures, not the paper's real data.",
             ""]
    failed = table[table.get("error", "") != ""] if "error" in table else table.iloc[:0]
    if not ok.empty:
        g = ok.groupby(["direction", "model", "strategy"])
        agg = g.agg(n=("seed", "size"), sim=("sim_rmse_k", "mean"), in_dom=("in_domain_rmse_k", "mean"),
                    in_dom_sd=("in_domain_rmse_k", "std"), cross=("cross_site_rmse_k", "mean"),
                    cross_sd=("cross_site_rmse_k", "std"), sw=("cross_site_sw_rmse_k", "mean"),
                    direct=("cross_site_direct_rmse_k", "mean"), params=("trainable_parameters", "mean"),
                    wall=("wall_s", "mean")).reset_index()
        lines += ["| direction | model | strategy | seeds | sim | in-domain | cross-site | split-window | direct |"
                  " trainable params | wall (s) |", "|---" * 11 + "|"]
        for _, r in agg.iterrows():
            lines.append(f"| {r['direction']} | {r['model']} | {r['strategy']} | {r['n']} | {r['sim']:.2f} | "
                         f"{r['in_dom']:.2f} ± {np.nan_to_num(r['in_dom_sd']):.2f} | {r['cross']:.2f} ± "
                         f"{np.nan_to_num(r['cross_sd']):.2f} | {r['sw']:.2f} | {r['direct']:.2f} | "
                         f"{r['params']:.0f} | {r['wall']:.0f} |")
        fig, axes = plt.subplots(1, agg["direction"].nunique(), figsize=(6 * agg["direction"].nunique(), 4),
                                 squeeze=False)
        for ax, (direction, sub) in zip(axes[0], agg.groupby("direction"), strict=True):
            labels = [f"{m}\n{s}" for m, s in zip(sub["model"], sub["strategy"], strict=True)]
            ax.bar(labels, sub["cross"], yerr=np.nan_to_num(sub["cross_sd"]), color="#3a923a", label="SFTL")
            ax.axhline(float(sub["sw"].mean()), color="#999999", ls="--", label="split-window")
            ax.set_ylabel("cross-site RMSE (K)")
            ax.set_title(direction)
            ax.tick_params(axis="x", labelsize=7)
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / "grid.png", dpi=110)
        plt.close(fig)
        lines += ["", "![grid](grid.png)"]
    if not failed.empty:
        lines += ["", "## Failed cells", ""] + [f"- {r['cell']}: {r['error']}" for _, r in failed.iterrows()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
