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
- **sigma_scene** (K): what real scenes add beyond the simulation (ancillary data: ERA5 WVC, GED emissivity;
  calibration; domain shift), fitted on held-out in situ matchups of the fine-tuning region:
  ``mean(r**2) - mean(sigma_model**2) - mean(sigma_ref**2)`` (clipped at zero), with ``r`` the exported model's LST
  minus in situ LST. The residuals' mean (a systematic error) is part of it and is not divided by sqrt(n).
- **sigma_ref** (K): the reference's own error (:func:`reference_sigma`: the radiometer's instrument and
  broadband-emissivity error, the in situ mean's sampling error, the 3 x 3 pixel spread around the site where
  known). It is taken OUT of the scene term and never enters ``lst_uncertainty``, which is the product's error
  against the true pixel LST; validation compares residuals with ``sqrt(sigma**2 + sigma_ref**2)``.

**Calibration** (``calibration`` in the model): ``k = 0`` keeps the source-fitted scene term
(``"source-fitted"``); with k target matchups, :func:`calibrate_error_model` re-fits the scene term for the target
by a one-parameter conformal-style fit checked by leave-one-scene-out. A model without ``calibration`` (an artifact
older than this) is labelled :data:`UNCALIBRATED_LABEL`.

Pure numpy; the model is a JSON-able dict stored in the artifact's ``card.json`` (``uncertainty``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_EDGES",
    "ERROR_MODEL_FORMAT",
    "MIN_CALIBRATION_K",
    "REFERENCE_EMISSIVITY_K",
    "REFERENCE_INSTRUMENT_K",
    "SCENE_FORMS",
    "SOURCE_FITTED",
    "UNCALIBRATED_LABEL",
    "UNCERTAINTY_CLASS_EDGES_K",
    "apply_error_model",
    "calibrate_error_model",
    "calibration_label",
    "check_error_model",
    "coverage",
    "fit_error_model",
    "fit_scene_term",
    "reference_sigma",
    "scene_split_reference",
    "scene_term_part",
    "sigma_model_part",
    "systematic_share",
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

#: A radiometer's instrument error on LST (K): CNR1/CGR3-class upwelling longwave noise ~2.5 W m-2 over
#: dL/dT = 4 eps sigma T^3 ~ 6 W m-2 K-1 at 300 K (0.4 K), with the downwelling term's share.
REFERENCE_INSTRUMENT_K = 0.45
#: The LST error from a site's stated broadband emissivity (K): +-0.01 of emissivity (the mean state against
#: the day's surface) moves LST by ~T/(4 eps) x 0.01 x (1 - L_down/L_up) ~ 0.5 K at 300 K.
REFERENCE_EMISSIVITY_K = 0.5
#: Fewest target matchups for a re-fit of the scene term (below: the source-fitted term stays).
MIN_CALIBRATION_K = 5
#: Re-fit methods of :func:`calibrate_error_model`.
CALIBRATION_METHODS = ("loo-split", "loo-conformal", "loo-moment")
#: Label of a scene term fitted on the source region only (k = 0).
SOURCE_FITTED = "source-fitted"
#: Label of an error model without a ``calibration`` record (artifacts older than the calibrated error model).
UNCALIBRATED_LABEL = "uncalibrated (source-fitted)"
_CONFORMAL_SHARE = 0.6827  # a Gaussian's share within +-1 sigma
#: Forms of a heteroscedastic scene term ``t(pixel)`` (K) of :func:`fit_scene_term`: ``additive`` ``a``;
#: ``multiplicative`` ``c * sigma_model``; ``affine-wvc`` ``a + b * wvc`` (the ERA5 WVC error, and the LST error it
#: makes, grow with WVC: a dry target gets a smaller term than a humid source).
SCENE_FORMS = ("additive", "multiplicative", "affine-wvc")


def _bin_index(edges: Mapping[str, Any], features: Mapping[str, ArrayLike]) -> tuple[NDArray[np.intp], tuple[int, ...]]:
    sizes = tuple(len(edges[k]) + 1 for k in _BIN_FEATURES)
    flat: NDArray[np.intp] | None = None
    for k, n in zip(_BIN_FEATURES, sizes, strict=True):
        x = np.asarray(features[k])
        # the bin is the number of edges <= x (searchsorted side="right"; NaN in the last bin), counted as
        # n - 1 - #(x < edge) with one comparison per edge in uint8: 4x faster than searchsorted over the few edges
        # (edges in the features' dtype: no float64 copy of float32 features)
        e = np.asarray(edges[k], dtype=x.dtype if x.dtype.kind == "f" else np.float64)
        below = np.zeros(x.shape, dtype=np.uint8)
        for v in e:
            below += x < v
        idx = (n - 1) - below.astype(np.intp)
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
    obs_sigma_ref_k: ArrayLike | None = None,
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
    obs_sigma_ref_k : array_like, optional
        The reference's error at each matchup (K, :func:`reference_sigma`), taken out of the scene term
        (default 0: the scene term then holds the radiometers' error too).

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
        "sigma_ref_rms_k": 0.0,
        "parts": {"sigma_model_k": "binned RMS of the pre-trained model on held-out simulated profiles",
                  "sigma_scene_k": "matchup residuals beyond sigma_model and sigma_ref (ancillary data, "
                                   "calibration, domain shift); systematic",
                  "sigma_ref": "the reference's error (reference_sigma): kept out of lst_uncertainty"},
        "calibration": {"k": 0, "method": SOURCE_FITTED, "label": SOURCE_FITTED},
    }
    if obs_features is not None and obs_residual_k is not None:
        _add_scene_part(model, obs_features, obs_residual_k, obs_source, obs_sigma_ref_k)
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
                    obs_source: str, obs_sigma_ref_k: ArrayLike | None) -> None:
    """Set ``sigma_scene_k`` (K): what the matchup residuals hold beyond the binned simulated error and the
    reference's error (in place).

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
        ref = _ref_array(obs_sigma_ref_k, ro.size)
        extra = float(np.mean(ro**2) - np.mean(sm.astype(np.float64) ** 2) - np.mean(ref**2))
        model.update(sigma_scene_k=round(math.sqrt(max(extra, 0.0)), 4), n_scene=int(ro.size),
                     scene_source=obs_source, scene_bias_k=round(float(ro.mean()), 4),
                     sigma_ref_rms_k=round(float(np.sqrt(np.mean(ref**2))), 4))


def _scene_nll(x: NDArray[np.float64], form: str, sm2: NDArray[np.float64], wvc: NDArray[np.float64],
               floor2: NDArray[np.float64], r: NDArray[np.float64], idx: NDArray[np.intp]) -> float:
    """Negative Gaussian log-likelihood of residuals ``r`` grouped by scene (``idx``): within a scene
    ``r = t * u + e`` with ``u ~ N(0, 1)`` shared by the scene (the systematic term, ``t`` per row from the form's
    parameters ``x[1:]``) and ``e ~ N(0, sigma_model**2 + max(floor, rho)**2)`` per row (``rho = softplus(x[0])``,
    the reference's error). The scene's covariance is ``diag(d) + t t^T``: Sherman-Morrison, per scene by bincount."""
    p = np.logaddexp(0.0, x)  # softplus: every parameter >= 0
    d = sm2 + np.maximum(floor2, p[0] ** 2)
    t = _form_scale(form, p[1:], np.sqrt(sm2), wvc)
    a = 1.0 + np.bincount(idx, weights=t * t / d)
    b = np.bincount(idx, weights=t * r / d)
    return 0.5 * float(np.sum(np.log(d) + r * r / d) + np.sum(np.log(a) - b * b / a))


def _form_scale(form: str, p: ArrayLike, sm: NDArray[Any], wvc: NDArray[Any]) -> NDArray[Any]:
    """The scene term ``t`` (K) per row of a form with parameters ``p`` (``a``; ``c``; ``a, b``)."""
    p = np.asarray(p, dtype=np.float64)
    if form == "multiplicative":
        return (p[0] * sm).astype(sm.dtype)
    if form == "affine-wvc":
        return (p[0] + p[1] * wvc).astype(wvc.dtype)
    return np.full(sm.shape, p[0], dtype=sm.dtype)


_FORM_PARAMS = {"additive": ("a_k",), "multiplicative": ("c",), "affine-wvc": ("a_k", "b_k_per_g_cm2")}


def fit_scene_term(model: Mapping[str, Any], features: Mapping[str, ArrayLike], residual_k: ArrayLike,
                   scene_id: ArrayLike, *, sigma_ref_k: ArrayLike | None = None, form: str = "affine-wvc",
                   source: str = "") -> dict[str, Any]:
    """Fit a scene term that scales with the pixel's inputs, by Gaussian maximum likelihood on matchups grouped by
    scene.

    Each scene's residuals share one draw of the scene term ``t(pixel)`` (K; :data:`SCENE_FORMS`: ``a``,
    ``c * sigma_model`` or ``a + b * wvc``) and each matchup adds its own ``sigma_model`` and the reference's error
    ``max(sigma_ref_k, rho)`` (``rho``, the network's, fitted too: the within-scene spread decides it). Fitted on the
    source region, the term transfers to a target without matchups through the target's own inputs.

    Parameters
    ----------
    model : mapping
        A fitted error model (its simulation term stays).
    features : mapping
        ``wvc`` (g cm-2), ``emis_mean``, ``sec_vza`` of the matchups.
    residual_k : array_like
        Retrieved minus in situ LST (K).
    scene_id : array_like
        The scene of each matchup.
    sigma_ref_k : array_like, optional
        The reference's error per matchup (K, :func:`reference_sigma`): the floor of ``rho`` (default 0).
    form : {"additive", "multiplicative", "affine-wvc"}
        The term's form.
    source : str
        Where the matchups came from, recorded.

    Returns
    -------
    dict
        A copy with ``scene_term`` (``form``, its parameters, ``sigma_ref_k``, ``n``, ``n_scenes``, ``fit``),
        ``sigma_scene_k`` (the term's RMS over the matchups, K), ``n_scene``, ``scene_source``, ``scene_bias_k``,
        ``sigma_ref_rms_k``.

    Raises
    ------
    ValueError
        If ``form`` is unknown, residuals are not finite, or there are fewer than 2 matchups.
    """
    if form not in SCENE_FORMS:
        raise ValueError(f"scene term form {form!r} unknown; choose from {', '.join(SCENE_FORMS)}")
    r = np.asarray(residual_k, dtype=np.float64).ravel()
    if r.size < 2 or not np.isfinite(r).all():
        raise ValueError(f"fit_scene_term: need 2 or more finite residuals, got {r.size}")
    sm2 = _sigma_model(model, features).astype(np.float64) ** 2
    wvc = np.asarray(features["wvc"], dtype=np.float64).ravel()
    floor2 = _ref_array(sigma_ref_k, r.size) ** 2
    _, idx = np.unique(np.asarray(scene_id).ravel().astype(str), return_inverse=True)
    args = (form, sm2, wvc, floor2, r, idx)
    n_par = 1 + len(_FORM_PARAMS[form])
    best = min((optimize.minimize(_scene_nll, np.full(n_par, x0), args=args, method="Nelder-Mead",
                                  options={"xatol": 1e-5, "fatol": 1e-7, "maxiter": 4000})
                for x0 in (-1.0, 0.5, 2.0)), key=lambda res: res.fun)
    p = np.logaddexp(0.0, best.x)
    t = _form_scale(form, p[1:], np.sqrt(sm2), wvc)
    ref = np.sqrt(np.maximum(floor2, p[0] ** 2))
    term = {"form": form, **{k: round(float(v), 4) for k, v in zip(_FORM_PARAMS[form], p[1:], strict=True)},
            "sigma_ref_k": round(float(p[0]), 4), "n": int(r.size), "n_scenes": int(idx.max() + 1),
            "fit": "Gaussian maximum likelihood, matchups grouped by scene (one scene draw of the term shared)"}
    out = dict(model)
    out.update(scene_term=term, sigma_scene_k=round(float(np.sqrt(np.mean(t**2))), 4), n_scene=int(r.size),
               scene_source=source, scene_bias_k=round(float(r.mean()), 4),
               sigma_ref_rms_k=round(float(np.sqrt(np.mean(ref**2))), 4),
               method=f"sigma^2 = sigma_model(wvc, emis_mean, sec_vza bin)^2 + t^2, t {form} "
                      f"({', '.join(_FORM_PARAMS[form])})")
    return out


def scene_term_part(model: Mapping[str, Any], features: Mapping[str, ArrayLike]) -> NDArray[np.float32]:
    """The scene term ``t`` (K, float32) of each pixel: the model's ``scene_term`` form where it has one, else its
    one ``sigma_scene_k`` (an additive term: older models)."""
    term = model.get("scene_term")
    wvc = np.asarray(features["wvc"], dtype=np.float32)
    if not isinstance(term, Mapping):
        return np.full(wvc.shape, float(model["sigma_scene_k"]), dtype=np.float32)
    p = [float(term[k]) for k in _FORM_PARAMS[term["form"]]]
    return _form_scale(term["form"], p, _sigma_model(model, features), wvc)


def systematic_share(model: Mapping[str, Any]) -> float | None:
    """The share of ``lst_uncertainty**2`` that the scene term holds, where it is the same for every pixel.

    :func:`apply_error_model` composes ``sigma**2 = sigma_model**2 + t**2`` with nothing else (no floor); for the
    ``multiplicative`` form ``t = c * sigma_model``, so ``t**2 / sigma**2 = c**2 / (1 + c**2)`` for every pixel
    (``c`` as the card holds it, re-fitted by :func:`calibrate_error_model` where calibrated). The other forms
    (``additive``, ``affine-wvc``, and an older model's one ``sigma_scene_k``) give a share that varies with the
    pixel: None (an additive term's systematic part is the constant ``sigma_scene_k`` instead).

    Parameters
    ----------
    model : mapping
        An error model (a card's ``uncertainty``).

    Returns
    -------
    float or None
        ``c**2 / (1 + c**2)`` (dimensionless, in [0, 1)) for a multiplicative scene term, else None.
    """
    term = model.get("scene_term")
    if not isinstance(term, Mapping) or term.get("form") != "multiplicative":
        return None
    c2 = float(term["c"]) ** 2
    return c2 / (1.0 + c2)


def _ref_array(sigma_ref_k: ArrayLike | None, n: int) -> NDArray[np.float64]:
    """The reference's error per matchup (K) as ``n`` finite values >= 0 (0 where not given).

    Raises
    ------
    ValueError
        If it is not of length 1 or ``n``, or not finite and >= 0.
    """
    if sigma_ref_k is None:
        return np.zeros(n)
    ref = np.broadcast_to(np.asarray(sigma_ref_k, dtype=np.float64).ravel(), (n,)) if np.size(sigma_ref_k) in (1, n) \
        else None
    if ref is None or not (np.isfinite(ref).all() and (ref >= 0).all()):
        raise ValueError(f"sigma_ref_k: need {n} finite values >= 0 (K), got {np.size(sigma_ref_k)}")
    return np.array(ref)


def reference_sigma(insitu_std_k: ArrayLike | None = None, n_insitu: ArrayLike | None = None,
                    spread_3x3_k: ArrayLike | None = None, *, instrument_k: float = REFERENCE_INSTRUMENT_K,
                    emissivity_k: float = REFERENCE_EMISSIVITY_K) -> NDArray[np.float64]:
    """The reference's (a radiometer's) standard error of in situ LST against the true pixel LST (K), per matchup.

    ``sqrt(instrument_k**2 + emissivity_k**2 + insitu_std_k**2 / n_insitu + spread_3x3_k**2)``: the instrument, the
    stated broadband emissivity, the sampling error of the in situ mean over the overpass window (the records'
    standard deviation over sqrt(n); 0 where not known) and the footprint's representativeness, estimated by the
    standard deviation of the 3 x 3 pixels around the site (the pixel-scale heterogeneity a small footprint
    samples; 0 where not known, as in training, where no LST image exists yet).

    Parameters
    ----------
    insitu_std_k, n_insitu : array_like, optional
        The spread (K) and number of the radiometer records averaged for each matchup.
    spread_3x3_k : array_like, optional
        Standard deviation (K) of the retrieved LST over the 3 x 3 pixels around the site.
    instrument_k, emissivity_k : float
        The instrument's and the emissivity's error (K).

    Returns
    -------
    numpy.ndarray
        float64, the arrays' broadcast shape (0-d when none is given). NaN inputs count as 0.
    """
    var = np.asarray(instrument_k**2 + emissivity_k**2, dtype=np.float64)
    if insitu_std_k is not None:
        std = np.nan_to_num(np.asarray(insitu_std_k, dtype=np.float64))
        n = np.maximum(np.nan_to_num(np.asarray(n_insitu if n_insitu is not None else 1, dtype=np.float64),
                                     nan=1.0), 1.0)
        var = var + std**2 / n
    if spread_3x3_k is not None:
        var = var + np.nan_to_num(np.asarray(spread_3x3_k, dtype=np.float64)) ** 2
    return np.sqrt(var)


def scene_split_reference(residual_k: ArrayLike, sigma_random_k: ArrayLike, scene_id: ArrayLike,
                          floor_k: ArrayLike = 0.0) -> tuple[float, int]:
    """The reference's error (K) from matchups grouped by scene: the within-scene spread of the residuals less the
    product's random (per-pixel) part.

    Matchups of one scene share the product's systematic error (calibration, the ERA5 field, the model's shift),
    while each site's radiometer errs on its own (instrument, emissivity, footprint representativeness). So the
    pooled within-scene variance of ``r = retrieved - in situ`` is ``sigma_random**2 + sigma_ref**2``, and
    ``sigma_ref**2 = within - mean(sigma_random**2)``, not below ``floor_k**2`` (the instrument terms of
    :func:`reference_sigma`). This catches the footprint's representativeness, which the 3 x 3 pixel spread does
    not see; it assumes the radiometers' errors are independent between sites and of the product's.

    Parameters
    ----------
    residual_k : array_like
        Retrieved minus reference LST (K).
    sigma_random_k : array_like
        The product's random part at each (K): the simulation term ``sigma_model``.
    scene_id : array_like
        The scene of each matchup.
    floor_k : array_like
        The smallest reference error (K, per matchup or one value; its RMS is the floor).

    Returns
    -------
    sigma_ref_k : float
        The network's reference error (K).
    dof : int
        Degrees of freedom of the within-scene variance (matchups less scenes, over scenes with 2 or more); 0 means
        no scene had two matchups and ``sigma_ref_k`` is the floor.
    """
    r = np.asarray(residual_k, dtype=np.float64).ravel()
    sm2 = np.broadcast_to(np.asarray(sigma_random_k, dtype=np.float64).ravel() ** 2, r.shape)
    floor2 = float(np.mean(np.broadcast_to(np.asarray(floor_k, dtype=np.float64).ravel() ** 2, r.shape))) \
        if r.size else 0.0
    _, idx = np.unique(np.asarray(scene_id).ravel().astype(str), return_inverse=True)
    n_g = np.bincount(idx, minlength=idx.max() + 1 if idx.size else 0)
    multi = n_g[idx] >= 2
    dof = int(multi.sum() - np.count_nonzero(n_g >= 2))
    if dof <= 0:
        return math.sqrt(floor2), 0
    means = np.bincount(idx, weights=r) / np.maximum(n_g, 1)
    within = float(np.sum((r[multi] - means[idx[multi]]) ** 2) / dof)
    return math.sqrt(max(within - float(np.mean(sm2[multi])), floor2)), dof


def sigma_model_part(model: Mapping[str, Any], features: Mapping[str, ArrayLike]) -> NDArray[np.float32]:
    """The simulation term ``sigma_model`` (K, float32) of each pixel: the binned part alone, without the scene term."""
    return _sigma_model(model, features)


def calibration_label(model: Mapping[str, Any]) -> str:
    """What a product's ``lst_uncertainty`` says of its calibration: :data:`UNCALIBRATED_LABEL` for an error model
    without a ``calibration`` record, ``"source-fitted"`` for k = 0, else ``"target-calibrated (k=K, METHOD)"``."""
    cal = model.get("calibration")
    if not isinstance(cal, Mapping) or "k" not in cal or "method" not in cal:
        return UNCALIBRATED_LABEL
    return str(cal.get("label") or (SOURCE_FITTED if not cal["k"] else f"target-calibrated (k={cal['k']}, "
                                                                       f"{cal['method']})"))


def _fit_terms(r: NDArray[np.float64], sm2: NDArray[np.float64], ref2: NDArray[np.float64], scenes: NDArray[Any],
               method: str, t02: NDArray[np.float64] | None = None) -> tuple[float, NDArray[np.float64]]:
    """The scale ``s^2`` of the scene term's variance ``s^2 t0^2`` (``t0`` the source-fitted term per matchup, K; 1
    for an additive term, when ``s^2`` is ``tau^2`` in K^2) and the reference's variance per matchup (K^2).

    ``loo-conformal``: ``s^2`` at the 68.27 % quantile of ``q / t0^2``, the excess
    ``q = r^2 - sigma_model^2 - sigma_ref^2`` in units of the term (that share of the matchups within +-1 sigma);
    ``loo-moment``: ``mean(q) / mean(t0^2)``; ``loo-split``: the reference's variance first re-estimated from the
    within-scene spread (:func:`scene_split_reference`, the given one its floor), then the moment (two parameters).
    """
    t02 = np.ones_like(r) if t02 is None else np.maximum(t02, 1e-12)
    if method == "loo-split":
        ref, _ = scene_split_reference(r, np.sqrt(sm2), scenes, np.sqrt(ref2))
        ref2 = np.maximum(ref2, ref**2)
    q = r**2 - sm2 - ref2
    s2 = float(np.quantile(q / t02, _CONFORMAL_SHARE)) if method == "loo-conformal" \
        else float(np.mean(q) / np.mean(t02))
    return max(s2, 0.0), ref2


def _rescaled(model: Mapping[str, Any], scale: float) -> dict[str, Any]:
    """The model with its scene term multiplied by ``scale``: each parameter of a ``scene_term`` (a term that
    scales with the inputs keeps its shape), else the one ``sigma_scene_k``."""
    out = dict(model)
    term = model.get("scene_term")
    if isinstance(term, Mapping):
        out["scene_term"] = {**term, **{k: round(float(term[k]) * scale, 4) for k in _FORM_PARAMS[term["form"]]}}
    return out


def _loo_z(r: NDArray[np.float64], sm2: NDArray[np.float64], ref2: NDArray[np.float64], t02: NDArray[np.float64],
           groups: NDArray[Any], method: str) -> NDArray[np.float64]:
    """Leave-one-scene-out: each matchup's ``|r| / sigma`` with the terms fitted on the other scenes (NaN with one
    scene)."""
    names, idx = np.unique(groups, return_inverse=True)
    z = np.full(r.size, np.nan)
    for g in range(names.size) if names.size > 1 else ():
        held = idx == g
        s2, ref2_fit = _fit_terms(r[~held], sm2[~held], ref2[~held], groups[~held], method, t02[~held])
        ref_held = max(float(np.mean(ref2_fit)), 0.0) if method == "loo-split" else ref2[held]
        z[held] = np.abs(r[held]) / np.sqrt(sm2[held] + s2 * t02[held] + np.maximum(ref2[held], ref_held))
    return z


def calibrate_error_model(model: Mapping[str, Any], features: Mapping[str, ArrayLike], residual_k: ArrayLike, *,
                          sigma_ref_k: ArrayLike | None = None, scene_id: ArrayLike | None = None,
                          method: str = "loo-split", min_k: int = MIN_CALIBRATION_K) -> tuple[dict[str, Any], str]:
    """Re-fit the scene term for a target region from k of its matchups (the few-shot samples).

    The target's scene term ``tau``: each matchup's excess ``q = r**2 - sigma_model**2 - sigma_ref**2`` is where it
    sits at exactly 1 sigma. ``loo-split`` (the default, two parameters) first re-estimates the reference's error
    from the matchups' within-scene spread (:func:`scene_split_reference`, the given ``sigma_ref_k`` its floor), then
    takes ``tau**2`` as the mean excess; ``loo-conformal`` (one parameter) takes ``tau**2`` at the 68.27 % quantile
    of ``q`` (so that share of the matchups lies within +-1 sigma of the product plus reference error),
    ``loo-moment`` their mean (the Gaussian maximum-likelihood value for one common term). The fit is checked by
    leave-one-scene-out (each scene's matchups scored with ``tau`` fitted on the other scenes; rows when no scene ids
    are given): ``loo_within_1sigma`` / ``loo_within_2sigma`` in the record.

    Parameters
    ----------
    model : mapping
        A fitted error model (its simulation term stays).
    features : mapping
        ``wvc``, ``emis_mean``, ``sec_vza`` of the k matchups.
    residual_k : array_like
        The retrieval minus the reference LST at those matchups (K).
    sigma_ref_k : array_like, optional
        The reference's error at each (K, :func:`reference_sigma`; default 0).
    scene_id : array_like, optional
        The scene of each matchup (for the leave-one-scene-out check and the record).
    method : {"loo-split", "loo-conformal", "loo-moment"}
        The re-fit.
    min_k : int
        Fewest matchups for a re-fit.

    Returns
    -------
    model : dict
        A copy with ``sigma_scene_k`` re-fitted and ``calibration`` = ``k``, ``method``, ``label``,
        ``sigma_scene_source_k``, ``n_scenes``, ``sigma_ref_rms_k`` (K, the reference's error the fit used),
        ``scenes``, ``loo_within_1sigma``, ``loo_within_2sigma`` (None with one scene); the input unchanged (a copy)
        when k < ``min_k``.
    message : str
        One line saying what was done (or why not).

    Raises
    ------
    ValueError
        If ``method`` is unknown, or residuals are not finite.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r} unknown; choose from {', '.join(CALIBRATION_METHODS)}")
    r = np.asarray(residual_k, dtype=np.float64).ravel()
    if not np.isfinite(r).all():
        raise ValueError("calibrate_error_model: residuals must be finite")
    out = dict(model)
    source = float(model["sigma_scene_k"])
    if r.size < min_k:
        return out, (f"calibration: {r.size} target matchup(s), fewer than the {min_k} a re-fit needs: the "
                     f"{calibration_label(model)} scene term ({source:.2f} K) stays")
    sm2 = sigma_model_part(model, features).astype(np.float64) ** 2
    ref2 = _ref_array(sigma_ref_k, r.size) ** 2
    # the source's term at each matchup: the re-fit scales it (an additive term: t0 = 1, the scale is tau in K)
    hetero = isinstance(model.get("scene_term"), Mapping)
    t02 = scene_term_part(model, features).astype(np.float64) ** 2 if hetero else np.ones(r.size)
    groups = np.asarray(scene_id).ravel().astype(str) if scene_id is not None else np.arange(r.size).astype(str)
    names = np.unique(groups)
    z = _loo_z(r, sm2, ref2, t02, groups, method)
    s2, ref2_fit = _fit_terms(r, sm2, ref2, groups, method, t02)
    scale = math.sqrt(s2)
    out = _rescaled(model, scale) if hetero else out
    tau = float(np.sqrt(np.mean(s2 * t02))) if hetero else scale
    cal = {"k": int(r.size), "method": method, "label": f"target-calibrated (k={r.size}, {method})",
           "sigma_scene_source_k": source, "n_scenes": int(names.size),
           "sigma_ref_rms_k": round(float(np.sqrt(np.mean(ref2_fit))), 4),
           "scenes": [str(n) for n in names] if scene_id is not None else [],
           "loo_within_1sigma": float(np.mean(z <= 1)) if names.size > 1 else None,  # None: JSON has no NaN
           "loo_within_2sigma": float(np.mean(z <= 2)) if names.size > 1 else None}
    if hetero:
        cal["scene_scale"] = round(scale, 4)  # the source-fitted term's parameters times this
    out.update(sigma_scene_k=round(tau, 4), calibration=cal)
    return out, (f"calibration: scene term re-fitted on {r.size} target matchups of {names.size} scene(s) by "
                 f"{method}: {source:.2f} -> {tau:.2f} K" + (f" (x{scale:.2f})" if hetero else ""))


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
    term = model.get("scene_term")
    if term is not None and not (isinstance(term, Mapping) and term.get("form") in SCENE_FORMS
                                 and all(_finite_nonneg(term.get(k)) for k in _FORM_PARAMS[term["form"]])):
        raise ValueError(f"{where}: scene_term must give form (one of {', '.join(SCENE_FORMS)}) and its parameters "
                         "as finite numbers >= 0")
    cal = model.get("calibration")
    if cal is not None and not (isinstance(cal, Mapping) and isinstance(cal.get("k"), int) and cal["k"] >= 0
                                and cal.get("method") in (SOURCE_FITTED, *CALIBRATION_METHODS)):
        raise ValueError(f"{where}: calibration must give k (an integer >= 0) and method (one of {SOURCE_FITTED}, "
                         f"{', '.join(CALIBRATION_METHODS)})")
    return dict(model)


def _finite_nonneg(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


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
    sm = np.asarray(model["sigma_model_k"], dtype=np.float64).ravel()
    term = model.get("scene_term")
    flat, _ = _bin_index(model["bins"], features)
    if isinstance(term, Mapping) and term["form"] == "affine-wvc":
        # the term varies within a bin: the binned sigma_model^2 plus (a + b wvc)^2, elementwise in float32
        t = float(term["a_k"]) + float(term["b_k_per_g_cm2"]) * np.asarray(features["wvc"], dtype=np.float32)
        return np.sqrt(sm.astype(np.float32)[flat] ** 2 + t * t).astype(np.float32, copy=False)
    # a term constant per bin (additive, or c * sigma_model): one table lookup
    t_bin = float(term["c"]) * sm if isinstance(term, Mapping) and term["form"] == "multiplicative" \
        else float(term["a_k"]) if isinstance(term, Mapping) else float(model["sigma_scene_k"])
    return np.sqrt(sm**2 + np.asarray(t_bin) ** 2).astype(np.float32)[flat]


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
