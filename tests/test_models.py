"""Models: DNN, TrF, CNN script and learn a synthetic LST relation; trainer; RF and LGBM with their fine-tuning."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from helpers import synthetic_lst

from sftl_dask.features import FEATURES
from sftl_dask.models import MODELS, build_model
from sftl_dask.models.torch_models import Normalize
from sftl_dask.models.trainer import fit_torch, lr_factor, predict_torch
from sftl_dask.models.trees import LGBM, RF, ForestPredictor

TORCH = ("dnn", "trf", "cnn")


def _synthetic(n: int, seed: int = 0, bias_k: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The shared synthetic LST (tests/helpers.py) with 0.1 K of measurement noise."""
    x, y = synthetic_lst(n, seed=seed, bias_k=bias_k)
    return x, (y + np.random.default_rng([seed, 1]).normal(0.0, 0.1, n)).astype(np.float32)


def _model(name: str, x: np.ndarray, y: np.ndarray, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(name, x.shape[1], x.mean(axis=0), x.std(axis=0), target_mean=float(y.mean()),
                       target_std=float(y.std()), **kw)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def _script(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(model)


def test_registry_names_and_unknown_model_lists_valid_names():
    assert MODELS == ("dnn", "trf", "cnn", "rf", "lgbm")
    with pytest.raises(ValueError, match="dnn, trf, cnn, rf, lgbm"):
        build_model("resnet", 12, None, None)
    assert type(build_model("DNN", 12, None, None)).__name__ == "DNN"


@pytest.mark.parametrize("name", TORCH)
def test_torch_model_scripts_and_matches_eager(name):
    x, y = _synthetic(300)
    m = _model(name, x, y).eval()
    scripted = _script(m)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        assert torch.allclose(m(xt), scripted(xt), atol=1e-4, rtol=0)
    assert m(xt).shape == (300,)


# The fit loop is the same for every architecture: the DNN pins it in the default run; the transformer and the
# CNN (~95 s together on 2 cores) learn under -m slow. Their scripting, layer groups and export run by default.
@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n == "dnn" else pytest.mark.slow) for n in TORCH])
def test_torch_model_learns_synthetic_lst(name):
    x, y = _synthetic(3000, seed=1)
    xv, yv = _synthetic(600, seed=2)
    m = _model(name, x, y)
    before = _rmse(predict_torch(m, xv), yv)
    hist = fit_torch(m, x, y, epochs=12, batch_size=128, lr=3e-3, val=(xv, yv), seed=0)
    after = _rmse(predict_torch(m, xv), yv)
    assert after < 0.15 * float(yv.std()) < before
    assert hist["best_val_rmse_k"] == pytest.approx(after, abs=1e-3)


@pytest.mark.parametrize("name", TORCH)
def test_layer_groups_are_disjoint_cover_all_parameters_and_end_with_head(name):
    m = _model(name, *_synthetic(50))
    groups = m.layer_groups()
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    assert groups[-1] is m.head
    assert len(groups) >= 3


def test_normalisation_is_inside_the_model_and_validated():
    x, y = _synthetic(200)
    m = _model("dnn", x, y)
    assert torch.allclose(m.norm.x_mean, torch.from_numpy(x.mean(axis=0)))
    assert {"norm.x_mean", "norm.x_std", "norm.y_mean", "norm.y_std"} <= set(m.state_dict())
    z = m.norm(torch.from_numpy(x))
    assert torch.allclose(z.mean(0), torch.zeros(12), atol=1e-3)
    with pytest.raises(ValueError, match="> 0"):
        Normalize(12, np.zeros(12), np.zeros(12))
    with pytest.raises(ValueError, match="12 values"):
        Normalize(12, np.zeros(11), np.ones(11))


def test_predict_torch_batches_and_keeps_leading_shape():
    x, y = _synthetic(1000)
    m = _model("dnn", x, y)
    a = predict_torch(m, x, batch_size=8192)
    b = predict_torch(m, x, batch_size=7)
    assert a.dtype == np.float32 and a.shape == (1000,)
    assert np.allclose(a, b, atol=1e-4)
    grid = predict_torch(m, x.reshape(10, 100, 12))
    assert grid.shape == (10, 100) and np.allclose(grid.reshape(-1), a, atol=1e-4)


def test_fit_torch_is_deterministic_for_a_seed():
    x, y = _synthetic(500)
    runs = []
    for _ in range(2):
        m = _model("dnn", x, y, seed=3, dropout=0.1)
        h = fit_torch(m, x, y, epochs=3, batch_size=64, lr=1e-3, seed=7)
        runs.append((h["train_rmse_k"], predict_torch(m, x)))
    assert runs[0][0] == runs[1][0]
    assert np.array_equal(runs[0][1], runs[1][1])


def test_fit_torch_restores_best_state_on_early_stopping():
    x, y = _synthetic(800, seed=4)
    xv, yv = _synthetic(200, seed=5)
    m = _model("dnn", x, y)
    hist = fit_torch(m, x, y, epochs=40, batch_size=64, lr=3e-2, val=(xv, yv), seed=0, patience=3,
                     schedule="constant")
    vals = hist["val_rmse_k"]
    assert hist["best_epoch"] == int(np.argmin(vals))
    assert _rmse(predict_torch(m, xv), yv) == pytest.approx(min(vals), abs=1e-3)
    if hist["stopped_early"]:
        assert len(vals) == hist["best_epoch"] + 4


def test_fit_torch_sets_threads_only_for_the_call_and_reports_progress():
    x, y = _synthetic(200)
    m = _model("dnn", x, y)
    before = torch.get_num_threads()
    seen = []
    fit_torch(m, x, y, epochs=2, batch_size=64, lr=1e-3, threads=1,
              progress=lambda log: seen.append((log["epoch"], torch.get_num_threads())))
    assert seen == [(0, 1), (1, 1)]
    assert torch.get_num_threads() == before


# 300 rows in batches of 64: 5 optimiser steps an epoch, 10 in all; the history records the lr after each epoch
# (after steps 5 and 10), written out here from the schedules' definitions (docstring of lr_factor)
@pytest.mark.parametrize(("schedule", "factors"), [
    ("cosine", [0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)), 0.01]),  # 1 -> 0.01 over the 10 steps
    ("onecycle", [1e-3 + 0.999 * 0.5 * (1 + math.cos(math.pi * 2 / 7)), 1e-3]),  # warm-up 3 steps, then decay
    ("constant", [1.0, 1.0]),
])
def test_fit_torch_schedules_give_the_learning_rate_of_each_epoch_value_by_value(schedule, factors):
    x, y = _synthetic(300)
    hist = fit_torch(_model("dnn", x, y), x, y, epochs=2, batch_size=64, lr=1e-3, schedule=schedule)
    assert hist["lr"] == pytest.approx([1e-3 * f for f in factors], rel=1e-9)


def test_lr_factor_step_by_step():
    cos, one = lr_factor("cosine", 10), lr_factor("onecycle", 10)
    assert [cos(s) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.505, 0.01, 0.01], rel=1e-12)
    # one-cycle: 0.04 -> 1 linearly over int(0.3 * 10) = 3 steps, then a cosine from 1 to 0.001
    assert [one(s) for s in (0, 1, 2, 3)] == pytest.approx([0.04, 0.36, 0.68, 1.0], rel=1e-12)
    assert [one(s) for s in (10, 11)] == pytest.approx([1e-3, 1e-3], rel=1e-12)
    assert lr_factor("onecycle", 2)(0) == pytest.approx(0.04) and lr_factor("onecycle", 2)(1) == pytest.approx(1.0)
    assert lr_factor("constant", 10)(7) == 1.0


def test_fit_torch_rejects_bad_input():
    x, y = _synthetic(100)
    m = _model("dnn", x, y)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit_torch(m, bad, y, epochs=1)
    with pytest.raises(ValueError, match="shape"):
        fit_torch(m, x[:, :11], y, epochs=1)
    with pytest.raises(ValueError, match="rows"):
        fit_torch(m, x, y[:50], epochs=1)
    with pytest.raises(ValueError, match="schedule"):
        fit_torch(m, x, y, epochs=1, schedule="step")


@pytest.mark.parametrize("cls", [RF, LGBM])
def test_tree_finetune_adds_trees_and_improves_on_finetune_data(cls):
    x, y = _synthetic(2000, seed=6)
    x_ft, y_ft = _synthetic(300, seed=7, bias_k=3.0)  # another region: a 3 K offset
    kw = {"n_estimators": 60} if cls is RF else {"n_estimators": 150, "min_child_samples": 10}
    model = cls(12, seed=0, **kw)
    hist = model.fit(x, y)
    assert hist["n_trees"] == 60 if cls is RF else hist["n_trees"] == 150
    assert hist["train_rmse_k"] < 0.3 * float(y.std())
    n0 = model.n_trees
    before = _rmse(model.predict(x_ft), y_ft)
    ft = model.finetune(x_ft, y_ft, n_more=100)
    assert model.n_trees == n0 + 100 == ft["n_trees"]
    assert ft["added_trees"] == 100
    assert _rmse(model.predict(x_ft), y_ft) < 0.7 * before


def test_tree_finetune_needs_a_fitted_model():
    x, y = _synthetic(50)
    with pytest.raises(ValueError, match="fit"):
        RF(12).finetune(x, y)
    with pytest.raises(ValueError, match="fit"):
        LGBM(12).finetune(x, y)


def test_rf_json_predictor_equals_sklearn():
    x, y = _synthetic(1500, seed=8)
    rf = RF(12, n_estimators=25, seed=1)
    rf.fit(x, y)
    rf.finetune(*_synthetic(200, seed=9, bias_k=2.0), n_more=5)
    forest = ForestPredictor(rf.to_json_dict())
    xq, _ = _synthetic(3000, seed=10)
    sk = rf.estimator.predict(xq)
    ours = forest.predict(xq)
    assert forest.n_trees == 30
    assert np.array_equal(ours, sk.astype(np.float32))
    assert forest.predict(xq.reshape(30, 100, 12)).shape == (30, 100)


def test_models_take_the_feature_matrix_width():
    x, y = _synthetic(20)
    assert x.shape[1] == len(FEATURES)
    with pytest.raises(ValueError, match="shape"):
        RF(12).fit(x[:, :5], y)
