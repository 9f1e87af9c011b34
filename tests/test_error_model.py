"""The per-pixel error model: fitted per bin, a scene term from matchups, applied by lookup, calibrated."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sftl_dask.models.error_model import (
    DEFAULT_EDGES,
    apply_error_model,
    calibrate_error_model,
    check_error_model,
    coverage,
    fit_error_model,
    fit_scene_term,
)


def _features(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"wvc": rng.uniform(0.0, 6.0, n), "emis_mean": rng.uniform(0.94, 0.99, n),
            "sec_vza": 1.0 / np.cos(np.radians(rng.choice([0.0, 15.0, 30.0], n)))}


def _true_sigma(f: dict[str, np.ndarray]) -> np.ndarray:
    """0.3 K in dry air growing by 0.2 K per WVC bin, +0.2 K at 30 deg."""
    wbin = np.searchsorted(DEFAULT_EDGES["wvc"], f["wvc"], side="right")
    return 0.3 + 0.2 * wbin + 0.2 * (f["sec_vza"] > 1.1)


def test_fit_recovers_the_per_bin_sigma_and_the_scene_term():
    rng = np.random.default_rng(0)
    f = _features(200_000, 1)
    r = rng.standard_normal(200_000) * _true_sigma(f)
    fo = _features(4000, 2)
    ro = rng.standard_normal(4000) * np.hypot(_true_sigma(fo), 1.5) + 0.0
    model = fit_error_model(f, r, fo, ro, obs_source="test")
    test = _features(5000, 3)
    np.testing.assert_allclose(np.sqrt(apply_error_model(model, test) ** 2 - model["sigma_scene_k"] ** 2),
                               _true_sigma(test), rtol=0.05)
    assert model["sigma_scene_k"] == pytest.approx(1.5, abs=0.1) and model["n_scene"] == 4000
    assert model["scene_source"] == "test" and not np.asarray(model["filled"]).any()


def test_a_systematic_error_stays_in_the_scene_term():
    rng = np.random.default_rng(1)
    f = _features(50_000, 4)
    r = 0.5 * rng.standard_normal(50_000)
    fo = _features(2000, 5)
    ro = 2.0 + 0.5 * rng.standard_normal(2000)  # a 2 K bias in the real scenes
    model = fit_error_model(f, r, fo, ro)
    assert model["sigma_scene_k"] == pytest.approx(2.0, abs=0.1) and model["scene_bias_k"] == pytest.approx(2.0, 0.05)


def test_sparse_bins_take_their_wvc_slice_then_the_global_rms():
    f = {"wvc": np.r_[np.full(100, 0.2), np.full(3, 5.5)], "emis_mean": np.full(103, 0.96),
         "sec_vza": np.ones(103)}
    r = np.r_[np.full(100, 0.4), np.full(3, 3.0)]
    model = fit_error_model(f, r, min_count=30)
    filled = np.asarray(model["filled"])
    sigma = np.asarray(model["sigma_model_k"])
    assert filled[0, 1, 0] == 0 and sigma[0, 1, 0] == pytest.approx(0.4)  # emis 0.96: the second emissivity bin
    assert filled[0, 0, 1] == 1 and sigma[0, 0, 1] == pytest.approx(0.4)  # same WVC slice, other bins
    assert filled[5, 1, 0] == 2 and sigma[5, 1, 0] == pytest.approx(np.sqrt((100 * 0.16 + 3 * 9) / 103), rel=1e-3)
    assert model["sigma_scene_k"] == 0.0 and model["n_scene"] == 0


def test_coverage_of_a_calibrated_gaussian_is_68_and_95_percent():
    rng = np.random.default_rng(2)
    s = rng.uniform(0.5, 3.0, 100_000)
    c = coverage(s * rng.standard_normal(100_000), s)
    assert c["within_1sigma"] == pytest.approx(0.683, abs=0.01) and c["within_2sigma"] == pytest.approx(0.954, abs=0.01)
    assert coverage([np.nan], [1.0])["n"] == 0


def test_the_model_survives_json_and_float32_features_bin_as_float64_ones():
    rng = np.random.default_rng(3)
    f = _features(20_000, 6)
    model = json.loads(json.dumps(fit_error_model(f, rng.standard_normal(20_000) * _true_sigma(f))))
    check_error_model(model)
    f32 = {k: v.astype(np.float32) for k, v in f.items()}
    assert apply_error_model(model, f32).dtype == np.float32
    np.testing.assert_array_equal(apply_error_model(model, f32), apply_error_model(model, f))


@pytest.mark.parametrize(("edit", "match"), [
    (lambda m: m.pop("bins"), "bins must give edges"),
    (lambda m: m["bins"].update(wvc=[2.0, 1.0]), "bins.wvc must be increasing"),
    (lambda m: m.update(sigma_model_k=[[[1.0]]]), "sigma_model_k has shape"),
    (lambda m: m.update(sigma_scene_k=-1.0), "sigmas must be finite"),
    (lambda m: m.update(format="x"), "not an sftl-dask-error-model/1"),
])
def test_a_malformed_model_is_refused_naming_the_key(edit, match):
    f = _features(1000, 7)
    model = fit_error_model(f, np.ones(1000))
    edit(model)
    with pytest.raises(ValueError, match=match):
        check_error_model(model, "card.json: uncertainty")


def test_lookup_bins_as_searchsorted_right_with_values_on_edges_and_nan_in_the_last_bin():
    rng = np.random.default_rng(8)
    f = {k: v.astype(np.float32) for k, v in _features(5000, 9).items()}
    f["wvc"][:6] = np.asarray(DEFAULT_EDGES["wvc"] + (np.nan,), dtype=np.float32)
    model = fit_error_model(_features(20_000, 10), rng.standard_normal(20_000) * 0.5)
    sizes = [len(DEFAULT_EDGES[k]) + 1 for k in ("wvc", "emis_mean", "sec_vza")]
    idx = [np.searchsorted(np.asarray(DEFAULT_EDGES[k], np.float32), f[k], side="right")
           for k in ("wvc", "emis_mean", "sec_vza")]
    want = np.sqrt(np.asarray(model["sigma_model_k"]) ** 2 + model["sigma_scene_k"] ** 2).astype(np.float32)
    np.testing.assert_array_equal(apply_error_model(model, f), want[idx[0], idx[1], idx[2]])
    assert idx[0][:6].tolist() == [1, 2, 3, 4, 5, 5] and sizes == [6, 4, 3]


# --- a scene term that scales with the pixel's inputs (issue 21) -----------------------------------------------------

C_TRUE = 2.0  # the synthetic scene term: c * sigma_model, one draw per scene
REF_TRUE = 1.5  # the synthetic radiometers' error (K)


def _region(n_scenes: int, wvc_high: float, seed: int, model: dict) -> dict[str, np.ndarray]:
    """Scenes of 8 sites each: the product errs by one draw of C_TRUE * sigma_model per scene (at each pixel's own
    sigma_model) plus its own sigma_model; each radiometer by REF_TRUE. ``wvc_high`` sets the region's humidity."""
    rng = np.random.default_rng(seed)
    scene = np.repeat(np.arange(n_scenes), 8)
    f = {"wvc": rng.uniform(0.1, wvc_high, scene.size), "emis_mean": np.full(scene.size, 0.97),
         "sec_vza": np.ones(scene.size)}
    sm = apply_error_model(model, f).astype(np.float64)  # the simulation term alone (no scene term yet)
    e = C_TRUE * sm * rng.standard_normal(n_scenes)[scene] + sm * rng.standard_normal(scene.size)
    return {"f": f, "scene": scene, "e": e, "r": e - REF_TRUE * rng.standard_normal(scene.size)}


@pytest.fixture(scope="module")
def worlds() -> dict[str, object]:
    f = _features(60_000, 7)
    model = fit_error_model(f, np.random.default_rng(8).standard_normal(60_000) * _true_sigma(f))
    return {"model": model, "humid": _region(300, 6.0, 9, model), "dry": _region(300, 1.0, 10, model)}


def _cov(model: dict, region: dict) -> tuple[float, float]:
    sigma = apply_error_model(model, region["f"])
    e = np.abs(region["e"])
    return float(np.mean(e <= sigma)), float(np.mean(e <= 2 * sigma))


def test_the_grouped_likelihood_recovers_the_scene_term_and_the_reference_error(worlds):
    src = worlds["humid"]
    em = fit_scene_term(worlds["model"], src["f"], src["r"], src["scene"], sigma_ref_k=0.5, form="multiplicative")
    assert em["scene_term"]["c"] == pytest.approx(C_TRUE, abs=0.2)
    assert em["scene_term"]["sigma_ref_k"] == pytest.approx(REF_TRUE, abs=0.08)  # measured 2.15, 1.555
    assert em["scene_term"]["n"] == 2400 and em["scene_term"]["n_scenes"] == 300
    assert check_error_model(json.loads(json.dumps(em)))["scene_term"]["form"] == "multiplicative"


def test_a_multiplicative_term_fitted_on_a_humid_source_covers_a_dry_target_at_k0(worlds):
    """Measured: the multiplicative term fitted on the humid region covers the dry region's truth 68.1 % / 95.6 %;
    the additive term (one constant: 1.91 K, right for the humid region, 67.3 % there) covers 95.3 % / 100 % of the
    dry one: the mutation this catches (the issue's k = 0 failure)."""
    src, dry = worlds["humid"], worlds["dry"]
    mult = fit_scene_term(worlds["model"], src["f"], src["r"], src["scene"], sigma_ref_k=0.5, form="multiplicative")
    add = fit_scene_term(worlds["model"], src["f"], src["r"], src["scene"], sigma_ref_k=0.5, form="additive")
    w1, w2 = _cov(mult, dry)
    assert w1 == pytest.approx(0.681, abs=0.03) and w2 == pytest.approx(0.956, abs=0.02), (w1, w2)
    a1, a2 = _cov(add, dry)
    assert a1 == pytest.approx(0.953, abs=0.02) and a2 > 0.99, (a1, a2)


def test_the_k_refit_scales_the_source_term_and_keeps_its_shape(worlds):
    """A term fitted 3x too large on the source is scaled back by the target's matchups (loo-split); the
    scaled parameters and the scale are recorded."""
    dry = worlds["dry"]
    em = fit_scene_term(worlds["model"], dry["f"], dry["r"], dry["scene"], sigma_ref_k=0.5, form="affine-wvc")
    big = em | {"scene_term": {**em["scene_term"], "a_k": em["scene_term"]["a_k"] * 3,
                               "b_k_per_g_cm2": em["scene_term"]["b_k_per_g_cm2"] * 3}}
    cal, msg = calibrate_error_model(big, dry["f"], dry["r"], sigma_ref_k=0.5, scene_id=dry["scene"])
    assert cal["calibration"]["scene_scale"] == pytest.approx(1 / 3, abs=0.06) and "(x0.3" in msg
    ratio = cal["scene_term"]["b_k_per_g_cm2"] / big["scene_term"]["b_k_per_g_cm2"]
    assert ratio == pytest.approx(cal["calibration"]["scene_scale"], abs=1e-3)
    assert cal["calibration"]["loo_within_1sigma"] == pytest.approx(0.686, abs=0.03)  # vs radiometers, + sigma_ref


def test_a_model_without_a_scene_term_applies_as_before():
    """Older cards: ``sigma_scene_k`` alone, added in quadrature, the same float32 values as before the forms."""
    f = _features(20_000, 4)
    model = fit_error_model(f, np.random.default_rng(5).standard_normal(20_000) * _true_sigma(f)) | {
        "sigma_scene_k": 1.3}
    got = apply_error_model(model, f)
    sm = apply_error_model(model | {"sigma_scene_k": 0.0}, f)
    np.testing.assert_allclose(got, np.sqrt(sm.astype(np.float64) ** 2 + 1.3**2), rtol=1e-6)
    assert "scene_term" not in model


@pytest.mark.parametrize("term, match", [({"form": "quadratic", "a_k": 1.0}, "scene_term"),
                                         ({"form": "affine-wvc", "a_k": 1.0}, "scene_term"),
                                         ({"form": "multiplicative", "c": -1.0}, "scene_term")])
def test_a_malformed_scene_term_is_refused(term, match):
    f = _features(2000, 6)
    model = fit_error_model(f, np.ones(2000)) | {"scene_term": term}
    with pytest.raises(ValueError, match=match):
        check_error_model(model)
