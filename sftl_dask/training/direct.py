"""The direct-training baseline, tuned: a model trained on the source matchups only, its settings chosen by
cross-validation on those matchups (folds of whole scenes, so no overpass is on both sides).

A baseline trained with one fixed recipe is a strawman (measured: 14.5 +- 4.8 K for the TrF on SiHeHu,
far from the paper's > 4.17 K); each candidate of a small search space is scored by its mean fold RMSE
and the best is refitted on all the training rows. The space and every candidate's score are returned
with the choice, so the results say what the baseline was given.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["FIT_SETTINGS", "default_search", "tune_direct"]

#: Settings of :func:`sftl_dask.models.trainer.fit_torch` (the rest of a torch search space are model settings).
FIT_SETTINGS = ("lr", "batch_size", "epochs", "weight_decay")

# few hundred source rows: small batches give the networks the optimiser steps they need
_SEARCH: dict[str, dict[str, list[Any]]] = {
    "torch": {"lr": [1e-3, 3e-3], "batch_size": [32, 128], "epochs": [150]},
    "rf": {"n_estimators": [200], "max_depth": [8, None], "min_samples_leaf": [1, 5]},
    "lgbm": {"n_estimators": [200, 600], "learning_rate": [0.03], "num_leaves": [7, 31], "min_child_samples": [5]},
}


def default_search(model: str) -> dict[str, list[Any]]:
    """The default search space of a model name (setting -> candidate values)."""
    return {k: list(v) for k, v in _SEARCH.get(model, _SEARCH["torch"]).items()}


def _folds(groups: NDArray[Any], n_folds: int) -> list[NDArray[np.bool_]]:
    """Test masks of ``n_folds`` folds of whole groups (scenes), groups dealt in time order."""
    uniq = np.unique(groups)
    fold_of = {g: i % n_folds for i, g in enumerate(uniq)}
    f = np.array([fold_of[g] for g in groups])
    return [f == i for i in range(min(n_folds, uniq.size))]


def tune_direct(fit: Callable[[Mapping[str, Any], NDArray[np.float32], NDArray[np.float32]], Any],
                predict: Callable[[Any, NDArray[np.float32]], NDArray[np.float32]],
                x: NDArray[np.float32], y: NDArray[np.float32], groups: Sequence[Any] | NDArray[Any], *,
                search: Mapping[str, Sequence[Any]], n_folds: int = 3) -> tuple[Any, dict[str, Any]]:
    """Choose settings by grouped k-fold cross-validation and refit on all rows.

    Parameters
    ----------
    fit : callable
        ``fit(settings, x, y) -> model``: a fresh model trained with those settings.
    predict : callable
        ``predict(model, x) -> LST (K)``.
    x : numpy.ndarray of shape (n, n_features)
        Source training features.
    y : numpy.ndarray of shape (n,)
        Their in situ LST (K).
    groups : sequence of shape (n,)
        The scene (or time) of each row: a fold holds whole groups.
    search : mapping
        Setting -> candidate values; every combination is tried.
    n_folds : int
        Folds (fewer when there are fewer groups).

    Returns
    -------
    model
        Refitted on all rows with the chosen settings.
    info : dict
        ``search`` (the space), ``folds``, ``candidates`` (each ``settings`` with ``cv_rmse_k``, K),
        ``chosen`` (settings), ``cv_rmse_k`` (K, of the choice).

    Raises
    ------
    ValueError
        If there are fewer than 2 groups (no fold to hold out).
    """
    groups = np.asarray(groups)
    masks = _folds(groups, n_folds)
    if len(masks) < 2:
        raise ValueError(f"direct baseline: {np.unique(groups).size} scene(s) of source matchups; cross-validation "
                         "needs at least 2")
    keys = sorted(search)
    candidates = []
    for values in itertools.product(*(search[k] for k in keys)):
        settings = dict(zip(keys, values, strict=True))
        sq, n = 0.0, 0
        for test in masks:
            m = fit(settings, x[~test], y[~test])
            e = np.asarray(predict(m, x[test]), dtype=np.float64) - y[test]
            sq, n = sq + float(np.sum(e**2)), n + int(test.sum())
        candidates.append({"settings": settings, "cv_rmse_k": float(np.sqrt(sq / n))})
    best = min(candidates, key=lambda c: c["cv_rmse_k"])
    model = fit(best["settings"], x, y)
    return model, {"search": {k: list(search[k]) for k in keys}, "folds": len(masks), "candidates": candidates,
                   "chosen": dict(best["settings"]), "cv_rmse_k": best["cv_rmse_k"]}
