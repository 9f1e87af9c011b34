"""THE error metrics of retrieved LST against a reference (in situ or truth): one definition for training,
models and reports. numpy only."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["metrics", "rmse"]


def rmse(pred: ArrayLike, truth: ArrayLike) -> float:
    """Root-mean-square error (K) of ``pred`` against ``truth`` (NaN when empty)."""
    return metrics(pred, truth)["rmse_k"]


def metrics(pred: ArrayLike, truth: ArrayLike) -> dict[str, float]:
    """RMSE, bias (pred - truth), MAE (K), R^2 and n of predictions against the truth.

    Parameters
    ----------
    pred, truth : array_like of the same shape
        LST (K).

    Returns
    -------
    dict
        ``n`` (int), ``rmse_k``, ``bias_k``, ``mae_k`` (K) and ``r2`` (NaN when ``truth`` is constant); NaN
        figures when empty.
    """
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(truth, dtype=np.float64).reshape(-1)
    e = p - t
    n = int(e.size)
    if n == 0:
        return {"n": 0, "rmse_k": float("nan"), "bias_k": float("nan"), "mae_k": float("nan"), "r2": float("nan")}
    ss = float(np.sum((t - t.mean()) ** 2))
    return {"n": n, "rmse_k": float(np.sqrt(np.mean(e**2))), "bias_k": float(e.mean()),
            "mae_k": float(np.mean(np.abs(e))), "r2": float(1.0 - np.sum(e**2) / ss) if ss > 0 else float("nan")}
