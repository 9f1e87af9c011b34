"""Honest selection, the tuned direct baseline and few-shot adaptation, without training a pipeline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sftl_dask.models.fewshot import adapt_few_shot, ridge_loo
from sftl_dask.report import experiment_report, select_on_source, select_oracle
from sftl_dask.training.direct import tune_direct


def _agg(cross: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"model": ["dnn", "trf", "cnn"], "strategy": ["head", "full", "lora"],
                         "in_domain_rmse_k": [1.0, 1.5, 2.0], "cross_site_rmse_k": cross})


def test_sftl_is_chosen_on_source_rows_only_whatever_the_target_says():
    for cross in ([3.0, 2.0, 1.0], [1.0, 2.0, 3.0], [9.0, 0.1, 0.2]):
        assert select_on_source(_agg(cross))["model"] == "dnn"  # lowest source held-out RMSE, target ignored
    assert select_oracle(_agg([3.0, 2.0, 1.0]))["model"] == "cnn"


def _cell(direction: str, model: str, strategy: str, seed: int, in_domain: float, cross: float,
          draws: list[float], zero: list[float]) -> dict:
    row = {"cell": f"{model}-{strategy}-{direction}-s{seed}", "model": model, "strategy": strategy,
           "direction": direction, "seed": seed, "features": "all", "error": "", "trainable_parameters": 10,
           "wall_s": 1.0, "pretrain_s": 1.0, "direct_search": json.dumps({"lr": [0.001, 0.003]}),
           "direct_chosen": json.dumps({"lr": 0.003}), "direct_cv_rmse_k": 3.0 if model == "dnn" else 2.0,
           "few_shot_k5_rmse_k": float(np.mean(draws)), "few_shot_k5_draws_rmse_k": json.dumps(draws),
           "few_shot_k5_zero_shot_rmse_k": float(np.mean(zero)), "few_shot_k5_zero_shot_draws_rmse_k": json.dumps(zero)}
    for stage, v in (("sim", 0.4), ("sim_sw", 0.8), ("in_domain", in_domain), ("in_domain_sw", 3.0),
                     ("cross_site", cross), ("cross_site_pretrained", 4.0), ("cross_site_sw", 4.0),
                     ("cross_site_direct", 5.0 if model == "dnn" else 6.0)):
        row.update({f"{stage}_rmse_k": v, f"{stage}_bias_k": 0.0, f"{stage}_mae_k": v, f"{stage}_r2": 0.9,
                    f"{stage}_n": 50})
    return row


def test_summary_shows_source_selected_beside_the_oracle_and_few_shot_is_scored_on_other_draws(tmp_path):
    rows = []
    for d in ("SiHuHe", "SiHeHu"):
        for s in (0, 1):
            # dnn: best on the source held-out scenes, worse on the target; trf: the oracle
            rows.append(_cell(d, "dnn", "head", s, 1.0, 3.0, [2.0, 3.6, 2.0, 3.6], [3.0] * 4))
            rows.append(_cell(d, "trf", "full", s, 2.0, 2.0, [3.5, 2.5, 3.5, 2.5], [2.9] * 4))
    experiment_report(pd.DataFrame(rows), pd.DataFrame(), tmp_path)
    text = (tmp_path / "summary.md").read_text()
    target = next(line for line in text.splitlines() if line.startswith("| SiHuHe | dnn + head"))
    # source-selected dnn (3.00 K, ratio 0.75) beside the oracle trf (2.00 K); direct chosen by its CV RMSE: trf
    assert "| dnn + head | 3.00 ± 0.00 | 0.75 | trf + full | 2.00 ± 0.00 | 0.50 |" in target
    assert "| trf | 6.00 | yes |" in target
    # k=5: chosen on the even draws (dnn adapted: 2.0 K), scored on the odd ones (3.6 K -> 0.90); oracle: trf adapted
    k5 = next(line for line in text.splitlines() if line.startswith("| 5 |"))
    assert k5.startswith("| 5 | dnn + head (even draws) | 0.90 ± 0.00 | trf + full | 0.62 ± 0.00 |"), k5
    assert "| SiHuHe | dnn | 3.00 → 2.80 | yes |" in text and "| SiHuHe | trf | 2.90 → 3.00 | **no** |" in text


def test_ridge_leave_one_out_is_the_refit_without_each_sample():
    rng = np.random.default_rng(0)
    z, r = rng.normal(size=(7, 4)), rng.normal(size=7)
    _, loo_resid = ridge_loo(z, r, 0.5)
    loo = float(np.mean(loo_resid**2))
    errs = []
    for i in range(7):
        keep = np.arange(7) != i
        d, _ = ridge_loo(z[keep], r[keep], 0.5)
        errs.append(r[i] - z[i] @ d)
    assert loo == pytest.approx(float(np.mean(np.square(errs))), rel=1e-10)


def _dnn():
    import torch

    from sftl_dask.models import build_model

    torch.manual_seed(0)
    return build_model("dnn", 3, np.zeros(3), np.ones(3), target_mean=300.0, target_std=10.0, hidden=[8])


def _pred(model, x):
    from sftl_dask.models.trainer import predict_torch

    return predict_torch(model, x)


def test_few_shot_corrects_an_offset_of_the_target_region_and_leaves_the_weights_otherwise():
    m = _dnn()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3)).astype(np.float32)
    new, info = adapt_few_shot(m, _pred, x, _pred(m, x) + 2.0)
    # the least penalised bias (0.3 x 1): each left-out sample gets 2 x 4 / 4.3 K, the update 2 x 5 / 5.3 K
    assert info["update"] == "bias" and info["penalty"] == 0.3 and info["loo_rmse_k_none"] == pytest.approx(2.0, 1e-5)
    assert info["loo_rmse_k"] == pytest.approx(2.0 - 8.0 / 4.3, rel=1e-4)
    x_new = rng.normal(size=(50, 3)).astype(np.float32)
    assert np.mean(_pred(new, x_new) - _pred(m, x_new)) == pytest.approx(10.0 / 5.3, abs=1e-3)
    first = [p for n, p in m.named_parameters() if not n.startswith("head")]
    assert all(np.array_equal(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(first, [p for n, p in new.named_parameters() if not n.startswith("head")], strict=True))


def test_few_shot_on_noise_does_not_hurt_in_expectation():
    m = _dnn()
    rng = np.random.default_rng(2)
    few, zero = [], []
    for _ in range(40):
        x = rng.normal(size=(25, 3)).astype(np.float32)
        y = _pred(m, x) + rng.normal(0.0, 1.0, 25)  # nothing to learn: the model is already right on average
        new, _ = adapt_few_shot(m, _pred, x[:5], y[:5])
        few.append(np.sqrt(np.mean((_pred(new, x[5:]) - y[5:]) ** 2)))
        zero.append(np.sqrt(np.mean((_pred(m, x[5:]) - y[5:]) ** 2)))
    assert np.mean(few) <= np.mean(zero) * 1.02


def test_direct_tuning_chooses_by_cross_validation_over_whole_scenes():
    x = np.zeros((12, 1), np.float32)
    y = np.full(12, 5.0, np.float32)
    scenes = np.repeat(["a", "b", "c", "d"], 3)
    seen = []

    def fit(settings, xf, yf):
        seen.append(len(yf))
        return settings["c"]

    model, info = tune_direct(fit, lambda c, xx: np.full(len(xx), c, np.float32), x, y, scenes,
                              search={"c": [4.0, 5.0, 7.0]}, n_folds=3)
    assert model == 5.0 and info["chosen"] == {"c": 5.0} and info["cv_rmse_k"] == 0.0
    assert [c["cv_rmse_k"] for c in info["candidates"]] == [1.0, 0.0, 2.0]
    assert info["search"] == {"c": [4.0, 5.0, 7.0]} and info["folds"] == 3
    assert seen[:3] == [6, 9, 9] and seen[-1] == 12  # folds hold whole scenes (a, d | b | c); the refit takes all
