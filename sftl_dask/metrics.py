"""THE error metrics of retrieved LST against a reference (in situ or truth): one definition for training,
models and reports; and THE calibration figures of an uncertainty (reliability, coverage with its binomial
interval, random and systematic parts). numpy (and scipy's normal quantile)."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtri

__all__ = ["RELIABILITY_Z", "metrics", "random_systematic", "reliability", "rmse", "wilson_interval"]

#: Multiples of sigma at which a reliability diagram is drawn (0.25 to 3 by 0.25).
RELIABILITY_Z: tuple[float, ...] = tuple(0.25 * i for i in range(1, 13))


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


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927): ``(low, high)``, NaN when ``n`` is 0.

    Parameters
    ----------
    successes, n : int
        Successes out of ``n`` trials.
    confidence : float
        Two-sided confidence level (0.95 for 95 %).
    """
    if n <= 0:
        return float("nan"), float("nan")
    z = float(ndtri(0.5 + confidence / 2.0))  # the standard normal quantile
    p = successes / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def reliability(residual_k: ArrayLike, sigma_k: ArrayLike, z: ArrayLike = RELIABILITY_Z,
                confidence: float = 0.95) -> dict[str, list[float] | int]:
    """Reliability of an uncertainty: the observed share of ``|residual| <= z sigma`` against the nominal share.

    Parameters
    ----------
    residual_k, sigma_k : array_like
        Errors (K) and their stated standard uncertainties (K, 1 sigma); pairs with a NaN are left out.
    z : array_like
        Multiples of sigma (default :data:`RELIABILITY_Z`).
    confidence : float
        Level of the Wilson interval of each observed share.

    Returns
    -------
    dict
        ``n``; lists ``z``, ``nominal`` (``erf(z / sqrt 2)``, a Gaussian's share), ``observed``, ``low``, ``high``
        (the interval of the observed share). A calibrated uncertainty has ``observed`` within ``[low, high]`` of
        ``nominal``.
    """
    r = np.abs(np.asarray(residual_k, dtype=np.float64).ravel())
    s = np.asarray(sigma_k, dtype=np.float64).ravel()
    ok = np.isfinite(r) & np.isfinite(s)
    r, s = r[ok], s[ok]
    zs = [float(v) for v in np.atleast_1d(np.asarray(z, dtype=np.float64))]
    hits = [int(np.sum(r <= v * s)) for v in zs]
    ci = [wilson_interval(h, r.size, confidence) for h in hits]
    return {"n": int(r.size), "z": zs, "nominal": [math.erf(v / math.sqrt(2)) for v in zs],
            "observed": [h / r.size if r.size else float("nan") for h in hits],
            "low": [c[0] for c in ci], "high": [c[1] for c in ci]}


def random_systematic(residual_k: ArrayLike, group: ArrayLike) -> dict[str, float]:
    """Split errors into a part shared by a group (scene: systematic) and a part that varies inside it (random).

    One-way random-effects moment estimator (ANOVA): the within-group variance is the pooled variance about
    each group's mean; the between-group variance is the variance of the group means less what the within
    part puts into them (``s_w^2 / n_g`` on average), clipped at 0. The mean error (bias) counts as systematic.

    Parameters
    ----------
    residual_k : array_like
        Errors (K).
    group : array_like
        A group label per error (a scene id).

    Returns
    -------
    dict
        ``n``, ``n_groups``, ``random_k`` (within-group SD), ``systematic_k`` (``sqrt(between-group variance +
        bias^2)``), ``bias_k``; NaN figures with fewer than 2 groups or no group of 2.
    """
    r = np.asarray(residual_k, dtype=np.float64).ravel()
    g = np.asarray(group).ravel()
    ok = np.isfinite(r)
    r, g = r[ok], g[ok]
    _, idx = np.unique(g, return_inverse=True)
    n_g = np.bincount(idx)
    nan = {"n": int(r.size), "n_groups": int(n_g.size), "random_k": float("nan"), "systematic_k": float("nan"),
           "bias_k": float(r.mean()) if r.size else float("nan")}
    if n_g.size < 2 or r.size - n_g.size < 1:
        return nan
    means = np.bincount(idx, weights=r) / n_g
    within = float(np.sum((r - means[idx]) ** 2) / (r.size - n_g.size))
    between = max(float(np.var(means, ddof=1)) - within * float(np.mean(1.0 / n_g)), 0.0)
    bias = float(r.mean())
    return nan | {"random_k": math.sqrt(within), "systematic_k": math.sqrt(between + bias**2)}
