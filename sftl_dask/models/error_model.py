"""Per-pixel LST uncertainty: a binned error model, fitted once at export and applied by lookup.

The model of the error (documented in ``docs/retrieval.md``)::

    sigma(pixel)**2 = sigma_model(bin)**2 + sigma_scene**2

- **bins** of the three things that drive a thermal LST retrieval's error: column water vapour
  ``wvc`` (g cm-2, the atmospheric correction), the mean split-window emissivity ``emis_mean``
  (emissivity and its error) and ``sec_vza`` (path length). Edges are interior: values beyond the
  outer edges fall into the outer bins.
- **sigma_model(bin)** (K): the RMS of the pre-trained model's residuals on held-out simulated
  profiles in that bin: how hard the inversion is for that atmosphere, surface and view angle under
  the radiative transfer, with the sensor's noise (NEdT) that the simulation carries. (The fine-tuned
  model departs from the simulation on purpose, towards the ground truth, so its residuals there
  are not its errors.) Bins with fewer than ``min_count`` rows take the RMS of their WVC slice, then
  the global RMS (recorded in ``filled``).
- **sigma_scene** (K): what real scenes add beyond the simulation, fitted on held-out in situ
  matchups of the fine-tuning region: ``mean(r**2) - mean(sigma_model**2)`` (clipped at zero), with
  ``r`` the exported model's LST minus in situ LST. The residuals' mean (a systematic error) is part of it and is
  not divided by sqrt(n). It holds the ancillary data's errors (ERA5 WVC, GED emissivity),
  calibration, and the radiometers' representativeness, which matchups cannot separate: ``lst_uncertainty``
  is the uncertainty to expect against a ground radiometer, conservative against the true pixel LST.

Pure numpy; the model is a JSON-able dict stored in the artifact's ``card.json`` (``uncertainty``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "DEFAULT_EDGES",
    "ERROR_MODEL_FORMAT",
    "UNCERTAINTY_CLASS_EDGES_K",
    "apply_error_model",
    "check_error_model",
    "coverage",
    "fit_error_model",
]

#: Format tag of an error model dict.
ERROR_MODEL_FORMAT = "sftl-dask-error-model/1"

#: Interior bin edges per feature. WVC in g cm-2; sec(VZA) edges at 7.5 and 22.5 deg separate the
#: simulation's 0/15/30 deg view angles.
DEFAULT_EDGES: dict[str, tuple[float, ...]] = {
    "wvc": (0.5, 1.0, 2.0, 3.0, 4.5),
    "emis_mean": (0.955, 0.97, 0.98),
    "sec_vza": (round(1.0 / math.cos(math.radians(7.5)), 6), round(1.0 / math.cos(math.radians(22.5)), 6)),
}

#: Upper edges of the uncertainty classes (K), as MODIS MOD11 QC: <= 1, <= 2, <= 3, > 3 K.
UNCERTAINTY_CLASS_EDGES_K: tuple[float, float, float] = (1.0, 2.0, 3.0)

_BIN_FEATURES = tuple(DEFAULT_EDGES)


def _bin_index(edges: Mapping[str, Any], features: Mapping[str, ArrayLike]) -> tuple[NDArray[np.intp], tuple[int, ...]]:
    sizes = tuple(len(edges[k]) + 1 for k in _BIN_FEATURES)
    flat: NDArray[np.intp] | None = None
    for k, n in zip(_BIN_FEATURES, sizes, strict=True):
        x = np.asarray(features[k])
        if n == 1:  # one bin: nothing to look up
            idx = np.zeros(x.shape, dtype=np.intp)
        else:  # edges in the features' dtype: searchsorted would otherwise copy them to float64
            idx = np.searchsorted(np.asarray(edges[k], dtype=x.dtype if x.dtype.kind == "f" else np.float64), x,
                                  side="right")
        flat = idx if flat is None else flat * n + idx
    assert flat is not None
    return flat, sizes


def fit_error_model(
    sim_features: Mapping[str, ArrayLike],
    sim_residual_k: ArrayLike,
    obs_features: Mapping[str, ArrayLike] | None = None,
    obs_residual_k: ArrayLike | None = None,
    *,
    edges: Mapping[str, tuple[float, ...]] | None = None,
    min_count: int = 30,
    obs_source: str = "",
) -> dict[str, Any]:
    """Fit the binned error model.

    Parameters
    ----------
    sim_features : mapping
        ``wvc`` (g cm-2), ``emis_mean`` (1) and ``sec_vza`` (1) of held-out simulated rows
        (the feature function's names).
    sim_residual_k : array_like
        The pre-trained model's LST minus the simulated LST on those rows (K).
    obs_features, obs_residual_k : optional
        The same for held-out in situ matchups (residual = the exported model's minus in situ LST, K). Without
        them ``sigma_scene_k`` is 0 and the model covers the simulation's error only.
    edges : mapping, optional
        Interior bin edges per feature (default :data:`DEFAULT_EDGES`).
    min_count : int
        Fewest rows for a bin's own RMS.
    obs_source : str
        Where the matchups came from, recorded in the model.

    Returns
    -------
    dict
        The JSON-able model (see the module docstring).

    Raises
    ------
    ValueError
        If residuals are not finite, lengths differ, or there are no simulated rows.
    """
    edges = {k: tuple(float(v) for v in (edges or DEFAULT_EDGES)[k]) for k in _BIN_FEATURES}
    r = np.asarray(sim_residual_k, dtype=np.float64).ravel()
    if r.size == 0 or not np.isfinite(r).all():
        raise ValueError("fit_error_model: simulated residuals must be finite and not empty")
    sigma, count, filled, sizes = _binned_sigma(edges, sim_features, r, min_count)
    floor = 1e-3  # K: a bin of a perfect fit still has a positive uncertainty
    model: dict[str, Any] = {
        "format": ERROR_MODEL_FORMAT,
        "method": "sigma^2 = sigma_model(wvc, emis_mean, sec_vza bin)^2 + sigma_scene^2",
        "bins": {k: list(v) for k, v in edges.items()},
        "sigma_model_k": np.maximum(sigma, floor).reshape(sizes).round(4).tolist(),
        "n_model": count.reshape(sizes).tolist(),
        "filled": filled.reshape(sizes).tolist(),
        "sigma_scene_k": 0.0,
        "n_scene": 0,
        "scene_source": "",
    }
    if obs_features is not None and obs_residual_k is not None:
        _add_scene_part(model, obs_features, obs_residual_k, obs_source)
    return model


def _binned_sigma(edges: Mapping[str, tuple[float, ...]], sim_features: Mapping[str, ArrayLike], r: NDArray[Any],
                  min_count: int) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.int64], tuple[int, ...]]:
    """Per bin: the RMS of the simulated residuals ``r`` (K), the row count and where the RMS came from (0 the
    bin's own rows, 1 its WVC slice, 2 all rows: bins with fewer than ``min_count`` rows); the bins' shape.

    Raises
    ------
    ValueError
        If there are not as many feature rows as residuals.
    """
    flat, sizes = _bin_index(edges, sim_features)
    if flat.shape != r.shape:
        raise ValueError(f"fit_error_model: {flat.size} feature rows for {r.size} residuals")
    n_cells = int(np.prod(sizes))
    count = np.bincount(flat, minlength=n_cells)
    sq = np.bincount(flat, weights=r**2, minlength=n_cells)
    sigma = np.full(n_cells, np.nan)
    own = count >= min_count
    sigma[own] = np.sqrt(sq[own] / count[own])
    filled = np.zeros(n_cells, dtype=np.int64)  # 0 own, 1 from the WVC slice, 2 global
    wvc_idx = np.arange(n_cells) // (sizes[1] * sizes[2])
    count_w = np.bincount(wvc_idx, weights=count, minlength=sizes[0])
    sq_w = np.bincount(wvc_idx, weights=sq, minlength=sizes[0])
    global_rms = float(np.sqrt(np.mean(r**2)))
    for c in np.flatnonzero(~own):
        w = wvc_idx[c]
        if count_w[w] >= min_count:
            sigma[c], filled[c] = math.sqrt(sq_w[w] / count_w[w]), 1
        else:
            sigma[c], filled[c] = global_rms, 2
    return sigma, count, filled, sizes


def _add_scene_part(model: dict[str, Any], obs_features: Mapping[str, ArrayLike], obs_residual_k: ArrayLike,
                    obs_source: str) -> None:
    """Set ``sigma_scene_k`` (K): what the matchup residuals hold beyond the binned simulated error (in place).

    Raises
    ------
    ValueError
        If a matchup residual is not finite.
    """
    ro = np.asarray(obs_residual_k, dtype=np.float64).ravel()
    if ro.size and not np.isfinite(ro).all():
        raise ValueError("fit_error_model: matchup residuals must be finite")
    if ro.size:
        sm = _sigma_model(model, obs_features)
        extra = float(np.mean(ro**2) - np.mean(sm.astype(np.float64) ** 2))
        model.update(sigma_scene_k=round(math.sqrt(max(extra, 0.0)), 4), n_scene=int(ro.size),
                     scene_source=obs_source, scene_bias_k=round(float(ro.mean()), 4))


def check_error_model(model: Any, where: str = "uncertainty") -> dict[str, Any]:
    """Validate an error model dict (as read from a card); returns it.

    Raises
    ------
    ValueError
        Naming ``where`` and the key that is missing, of the wrong shape, or not finite and positive.
    """
    if not isinstance(model, Mapping) or model.get("format") != ERROR_MODEL_FORMAT:
        raise ValueError(f"{where}: not an {ERROR_MODEL_FORMAT} error model")
    bins = model.get("bins")
    if not isinstance(bins, Mapping) or any(k not in bins for k in _BIN_FEATURES):
        raise ValueError(f"{where}: bins must give edges for {', '.join(_BIN_FEATURES)}")
    sizes = []
    for k in _BIN_FEATURES:
        e = np.asarray(bins[k], dtype=np.float64)
        if e.ndim != 1 or not np.isfinite(e).all() or np.any(np.diff(e) <= 0):
            raise ValueError(f"{where}: bins.{k} must be increasing finite edges")
        sizes.append(e.size + 1)
    try:
        sm = np.asarray(model["sigma_model_k"], dtype=np.float64)
        ss = float(model["sigma_scene_k"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: sigma_model_k / sigma_scene_k missing or not numbers ({exc})") from None
    if sm.shape != tuple(sizes):
        raise ValueError(f"{where}: sigma_model_k has shape {sm.shape}, bins make {tuple(sizes)}")
    if not (np.isfinite(sm).all() and (sm > 0).all() and math.isfinite(ss) and ss >= 0):
        raise ValueError(f"{where}: sigmas must be finite, sigma_model_k > 0 and sigma_scene_k >= 0")
    return dict(model)


def _sigma_model(model: Mapping[str, Any], features: Mapping[str, ArrayLike]) -> NDArray[np.float32]:
    flat, _ = _bin_index(model["bins"], features)
    return np.asarray(model["sigma_model_k"], dtype=np.float32).ravel()[flat]


def apply_error_model(model: Mapping[str, Any], features: Mapping[str, ArrayLike]) -> NDArray[np.float32]:
    """Per-pixel standard uncertainty of LST (K, float32) from the pixels' features.

    Parameters
    ----------
    model : mapping
        A fitted model (:func:`fit_error_model`; validate foreign ones with :func:`check_error_model`).
    features : mapping
        ``wvc`` (g cm-2), ``emis_mean`` (1), ``sec_vza`` (1) arrays of one shape.
    """
    table = np.sqrt(np.asarray(model["sigma_model_k"], dtype=np.float64) ** 2
                    + float(model["sigma_scene_k"]) ** 2).astype(np.float32).ravel()
    flat, _ = _bin_index(model["bins"], features)
    return table[flat]


def coverage(residual_k: ArrayLike, sigma_k: ArrayLike) -> dict[str, float]:
    """Calibration of an uncertainty: the share of residuals within +-1 and +-2 sigma.

    A calibrated Gaussian uncertainty gives 0.683 and 0.954.

    Returns
    -------
    dict
        ``n``, ``within_1sigma``, ``within_2sigma`` (fractions), ``rms_residual_k``, ``rms_sigma_k``.
    """
    r = np.abs(np.asarray(residual_k, dtype=np.float64).ravel())
    s = np.asarray(sigma_k, dtype=np.float64).ravel()
    ok = np.isfinite(r) & np.isfinite(s)
    r, s = r[ok], s[ok]
    if r.size == 0:
        return {"n": 0, "within_1sigma": float("nan"), "within_2sigma": float("nan"),
                "rms_residual_k": float("nan"), "rms_sigma_k": float("nan")}
    return {"n": int(r.size), "within_1sigma": float(np.mean(r <= s)), "within_2sigma": float(np.mean(r <= 2 * s)),
            "rms_residual_k": float(np.sqrt(np.mean(r**2))), "rms_sigma_k": float(np.sqrt(np.mean(s**2)))}
