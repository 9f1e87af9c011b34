"""The calibrated uncertainty (issue 21): its parts, the target re-fit by leave-one-scene-out, the calibration
figures, and what retrieval writes (the reference's error never in ``lst_uncertainty``; older cards labelled)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sftl_dask.metrics import random_systematic, reliability, wilson_interval
from sftl_dask.models.error_model import (
    DEFAULT_EDGES,
    MIN_CALIBRATION_K,
    UNCALIBRATED_LABEL,
    apply_error_model,
    calibrate_error_model,
    calibration_label,
    check_error_model,
    fit_error_model,
    reference_sigma,
    scene_split_reference,
    sigma_model_part,
)
from sftl_dask.training.stages import calibration_split

SIGMA_REF_K = 2.0  # the synthetic radiometers' error (instrument, emissivity, footprint)
TAU_K = 1.2  # the synthetic product's scene-to-scene (systematic) error


def _features(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"wvc": rng.uniform(0.0, 6.0, n), "emis_mean": rng.uniform(0.94, 0.99, n),
            "sec_vza": 1.0 / np.cos(np.radians(rng.choice([0.0, 15.0, 30.0], n)))}


def _true_sigma_model(f: dict[str, np.ndarray]) -> np.ndarray:
    return 0.3 + 0.15 * np.searchsorted(DEFAULT_EDGES["wvc"], f["wvc"], side="right")


@pytest.fixture(scope="module")
def world() -> dict[str, object]:
    """A synthetic world of 200 scenes x 3 sites: the product errs by a scene-shared term (TAU_K) plus a per-pixel
    one (the binned sigma_model); each radiometer by SIGMA_REF_K on its own. The error model's simulation term is
    fitted on 100k simulated residuals; the source-fitted scene term on 150 source matchups."""
    rng = np.random.default_rng(21)
    sim_f = _features(100_000, rng)
    model = fit_error_model(sim_f, rng.standard_normal(100_000) * _true_sigma_model(sim_f))
    n_scenes, n_sites = 200, 3
    scene = np.repeat([f"S{i:03d}" for i in range(n_scenes)], n_sites)
    f = _features(scene.size, rng)
    e_product = np.repeat(rng.normal(0.0, TAU_K, n_scenes), n_sites) + rng.standard_normal(scene.size) \
        * _true_sigma_model(f)
    e_ref = rng.normal(0.0, SIGMA_REF_K, scene.size)
    return {"model": model, "scene": scene, "features": f, "e_product": e_product,
            "residual": e_product - e_ref, "floor": reference_sigma()}


def _pooled_coverage(world: dict, k: int, draws: int, method: str = "loo-split") -> tuple[float, float]:
    """Coverage of the product's error (against the truth) by sigma re-fitted on k matchups, on the other scenes,
    pooled over draws."""
    scene, f, r = world["scene"], world["features"], world["residual"]
    hits, n = np.zeros(2), 0
    for d in range(draws):
        rng = np.random.default_rng([5, d])
        cal, scored = calibration_split(scene, k, rng.permutation(np.unique(scene)), rng=rng)
        em, _ = calibrate_error_model(world["model"], {a: v[cal] for a, v in f.items()}, r[cal],
                                      sigma_ref_k=np.full(cal.size, world["floor"]), scene_id=scene[cal],
                                      method=method)
        sigma = apply_error_model(em, {a: v[scored] for a, v in f.items()})
        e = np.abs(world["e_product"][scored])
        hits += [np.sum(e <= sigma), np.sum(e <= 2 * sigma)]
        n += scored.size
    return hits[0] / n, hits[1] / n


def test_scene_split_separates_the_reference_error_from_the_product_scene_term(world):
    scene, r = world["scene"], world["residual"]
    sm = sigma_model_part(world["model"], world["features"])
    sigma_ref, dof = scene_split_reference(r, sm, scene, world["floor"])
    assert dof == 400 and sigma_ref == pytest.approx(SIGMA_REF_K, abs=0.1)
    em, msg = calibrate_error_model(world["model"], world["features"], r, sigma_ref_k=world["floor"], scene_id=scene)
    assert em["sigma_scene_k"] == pytest.approx(TAU_K, abs=0.15)
    assert em["calibration"]["sigma_ref_rms_k"] == pytest.approx(SIGMA_REF_K, abs=0.1)
    assert em["calibration"]["k"] == 600 and em["calibration"]["n_scenes"] == 200 and "loo-split" in msg
    assert calibration_label(em) == "target-calibrated (k=600, loo-split)"


def test_sigma_refitted_on_10_matchups_pins_its_coverage_of_the_truth_on_other_scenes(world):
    """Measured, pooled over 150 draws of k = 10 (5 scenes x 2): 61.6 % within 1 sigma, 86.0 % within 2 sigma.

    Below the issue's 68 +- 5 / 95 +- 3 %: where the radiometers' error (2 K) dominates the product's scene term
    (1.2 K), 10 matchups leave the re-fitted term noisy (the within-scene variance has 5 degrees of freedom), and
    an uncertainty that is right on average but noisy covers less (docs/uncertainty.md). With k = 600 the terms are
    recovered (the test above). The band here fails if the reference term is left in the scene term (the test
    below: ~85 %) or taken out twice (coverage falls)."""
    w1, w2 = _pooled_coverage(world, 10, 150)
    assert w1 == pytest.approx(0.616, abs=0.03) and w2 == pytest.approx(0.860, abs=0.03), (w1, w2)


def test_without_the_reference_term_the_sigma_over_covers(world):
    """The mutation the band above catches: the radiometers' error left in the scene term (the moment fit to the
    residuals against the radiometers, the reference only its instrument floor) covers ~85 % of the truth."""
    w1, _ = _pooled_coverage(world, 10, 40, method="loo-moment")
    assert w1 > 0.8


def test_loo_scores_each_scene_with_a_term_fitted_without_it():
    rng = np.random.default_rng(0)
    f = _features(5000, rng)
    model = fit_error_model(f, np.full(5000, 0.3))  # sigma_model 0.3 K everywhere
    scene = np.repeat(list("ABCDE"), 2)
    r = np.array([0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 2.0, -2.0])
    fk = {a: v[:10] for a, v in f.items()}
    em, _ = calibrate_error_model(model, fk, r, scene_id=scene, method="loo-moment")
    z = []
    for g in "ABCDE":  # by hand: the held-out scene's sigma from the other scenes only
        rest = r[scene != g]
        tau2 = max(np.mean(rest**2) - 0.09, 0.0)
        z += list(np.abs(r[scene == g]) / math.sqrt(0.09 + tau2))
    z = np.array(z)
    assert em["calibration"]["loo_within_1sigma"] == pytest.approx(np.mean(z <= 1)) == pytest.approx(0.8)
    assert em["calibration"]["loo_within_2sigma"] == pytest.approx(np.mean(z <= 2)) == pytest.approx(0.8)
    # scene E held out: fitted on A-D (tau^2 = 0.16) it lies at 2 / 0.5 = 4 sigma; in-sample it would not
    assert em["sigma_scene_k"] == pytest.approx(math.sqrt(np.mean(r**2) - 0.09), abs=1e-3)


def test_calibration_split_never_scores_a_calibration_scene():
    scene = np.repeat([f"S{i}" for i in range(8)], [3, 3, 1, 3, 3, 3, 2, 3])
    rng = np.random.default_rng(1)
    cal, scored = calibration_split(scene, 5, rng.permutation(np.unique(scene)), rng=rng)
    assert cal.size == 5 and not set(scene[cal]) & set(scene[scored])
    assert cal.size + scored.size + (np.isin(scene, scene[cal]).sum() - cal.size) == scene.size
    assert max(np.unique(scene[cal], return_counts=True)[1]) <= 2
    first, rest = calibration_split(scene, 4, np.unique(scene))
    assert first.tolist() == [0, 1, 3, 4] and rest.tolist() == list(range(6, 21))


def test_below_the_needed_k_nothing_is_refitted_and_one_line_says_so(world):
    f = {a: v[:3] for a, v in world["features"].items()}
    em, msg = calibrate_error_model(world["model"], f, world["residual"][:3])
    assert em["sigma_scene_k"] == world["model"]["sigma_scene_k"] and em["calibration"]["k"] == 0
    assert "\n" not in msg and f"fewer than the {MIN_CALIBRATION_K}" in msg and "source-fitted" in msg


def test_source_fit_takes_the_reference_error_out_of_the_scene_term():
    rng = np.random.default_rng(3)
    f = _features(50_000, rng)
    fo = _features(4000, rng)
    ro = rng.normal(0, 1.0, 4000) + rng.normal(0, 2.0, 4000)  # product 1 K (with 0.5 K simulated), reference 2 K
    em = fit_error_model(f, rng.normal(0, 0.5, 50_000), fo, ro, obs_sigma_ref_k=np.full(4000, 2.0))
    assert em["sigma_scene_k"] == pytest.approx(math.sqrt(1.0 - 0.25), abs=0.1) and em["sigma_ref_rms_k"] == 2.0
    assert calibration_label(em) == "source-fitted" and check_error_model(json.loads(json.dumps(em)))
    old = {k: v for k, v in em.items() if k != "calibration"}
    assert calibration_label(old) == UNCALIBRATED_LABEL
    with pytest.raises(ValueError, match="calibration must give k"):
        check_error_model(em | {"calibration": {"k": -1, "method": "loo-split"}}, "card.json: uncertainty")


def test_reference_sigma_adds_instrument_emissivity_sampling_and_spread():
    assert reference_sigma(1.0, 4, 0.3) == pytest.approx(math.sqrt(0.45**2 + 0.5**2 + 0.25 + 0.09))
    np.testing.assert_allclose(reference_sigma([np.nan, 0.0], [2, 1]), math.hypot(0.45, 0.5))


def test_wilson_interval_reliability_and_random_systematic_pin_their_figures():
    lo, hi = wilson_interval(68, 100)
    assert lo == pytest.approx(0.5833, abs=1e-4) and hi == pytest.approx(0.7633, abs=1e-4)
    assert wilson_interval(0, 0) != wilson_interval(0, 0)  # NaN
    rng = np.random.default_rng(4)
    c = reliability(rng.standard_normal(40_000), np.ones(40_000))
    assert c["z"][0] == 0.25 and c["z"][-1] == 3.0 and len(c["z"]) == 12
    np.testing.assert_allclose(c["observed"], c["nominal"], atol=0.01)
    assert all(lo <= o <= hi for lo, o, hi in zip(c["low"], c["observed"], c["high"], strict=True))
    g = np.repeat(np.arange(400), 5)
    parts = random_systematic(rng.normal(0, 1.5, 400)[g] + rng.normal(0, 1.0, 2000) + 0.5, g)
    assert parts["random_k"] == pytest.approx(1.0, abs=0.05) and parts["n_groups"] == 400
    assert parts["systematic_k"] == pytest.approx(math.hypot(1.5, 0.5), abs=0.12)


def _strip_calibration(src: Path, dst: Path) -> Path:
    """A copy of an artifact whose card is as before issue 21 (no calibration, parts or reference term)."""
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    for key in ("calibration", "parts", "sigma_ref_rms_k"):
        card["uncertainty"].pop(key, None)
    (dst / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [f"{hashlib.sha256((dst / n).read_bytes()).hexdigest()}  {n}\n"
             for n in sorted(p.name for p in dst.iterdir() if p.name != "sha256")]
    (dst / "sha256").write_text("".join(lines))
    return dst


def test_an_older_card_retrieves_labelled_uncalibrated_with_one_warning_and_sigma_without_the_reference(
        tmp_path, retrieval_model):
    from helpers import synthetic_cube

    from sftl_dask.features import compute_features
    from sftl_dask.retrieve import retrieve

    cube = synthetic_cube(tmp_path / "cube" / "g.zarr", 1, 96, 96, seed=2)
    old = _strip_calibration(retrieval_model("dnn"), tmp_path / "old_dnn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        retrieve(cube, old, tmp_path / "lst" / "g.zarr", threads=1, device="cpu")
    ours = [w for w in caught if "lst_uncertainty" in str(w.message)]
    assert len(ours) == 1 and UNCALIBRATED_LABEL in str(ours[0].message) and "\n" not in str(ours[0].message)
    lst = xr.open_zarr(tmp_path / "lst" / "g.zarr")
    assert lst.attrs["uncertainty_calibration"] == lst["lst_uncertainty"].attrs["calibration"] == UNCALIBRATED_LABEL
    # sigma is the card's error model on the pixels' features, nothing of a reference added
    src = xr.open_zarr(cube)
    feats = compute_features({v: src[v].values[0].ravel() for v in src.data_vars if src[v].dims == ("time", "y", "x")},
                             names=("wvc", "emis_mean", "sec_vza"))
    want = apply_error_model(json.loads((old / "card.json").read_text())["uncertainty"], feats).reshape(96, 96)
    got = lst["lst_uncertainty"].values[0]
    done = np.isfinite(got)
    assert done.sum() > 1000
    np.testing.assert_array_equal(got[done], want[done])
    fresh = tmp_path / "lst_new" / "g.zarr"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        retrieve(cube, retrieval_model("dnn"), fresh, threads=1, device="cpu")
    assert not [w for w in caught if "lst_uncertainty" in str(w.message)]
    assert xr.open_zarr(fresh)["lst_uncertainty"].attrs["calibration"] == "source-fitted"


def test_training_records_the_calibration_by_k_on_held_out_target_scenes(tiny_training):
    """The tiny SiHuHe training (conftest): its card re-fitted on k = 5 target matchups, and stage 3's coverage at
    k = 0 and 5 against the pixel truth and the radiometers (pinned: a broken split or re-fit moves them)."""
    out, res = tiny_training
    uc = res["stage3_transfer"]["uncertainty_calibration"]
    card = json.loads((out / "model" / "card.json").read_text())["uncertainty"]
    cal = card["calibration"]
    assert cal["k"] == 5 and cal["method"] == "loo-split" and cal == uc["calibration"]
    assert card["sigma_scene_k"] == uc["sigma_scene_k"] and "scene-grouped" in card["sigma_ref_method"]
    # the scene term scales with sigma_model (multiplicative), its parameter scaled by the k = 5 re-fit
    assert card["scene_term"]["form"] == "multiplicative" and cal["scene_scale"] >= 0
    curve = uc["by_k"]["model:loo-split"]
    assert [c["k"] for c in curve] == [0, 5] and [c["draws"] for c in curve] == [1, 2]
    from sftl_dask.models.retriever import open_retriever

    sw = open_retriever(out / "split_window.json")  # the split-window with its scene term from matchups
    assert sw.describe()["uncertainty_calibration"] == "target-calibrated (k=5, loo-split)"
    assert sw.error_model["calibration"]["scenes"] == cal["scenes"]
    k0, k5 = curve  # 10 scored rows at k = 0 (every target scene), 5 over the 2 draws at k = 5
    assert k0["pixel_truth"]["n"] == k0["insitu_with_reference"]["n"] == 10 and k5["pixel_truth"]["n"] == 5
    # the tiny run's source term (multiplicative, 23 K RMS on 4 poorly fitted scenes) over-covers at k = 0 (0.7
    # and 0.9 with the additive term); the re-fit on 5 matchups scales it to 0 (scene_scale)
    assert k0["pixel_truth"]["within_1sigma"] == pytest.approx(0.9, abs=0.1)
    assert k0["insitu_with_reference"]["within_1sigma"] == 1.0 and cal["scene_scale"] == 0.0
    assert k5["pixel_truth"]["within_1sigma"] == pytest.approx(0.8, abs=0.2)
    assert k0["pixel_truth"]["within_2sigma"] == k5["pixel_truth"]["within_2sigma"] == 1.0
    hits = round(10 * k0["pixel_truth"]["within_1sigma"])
    assert k0["pixel_truth"]["within_1sigma_ci"] == pytest.approx(list(wilson_interval(hits, 10)))


def _crafted_matchups() -> pd.DataFrame:
    # two scenes x two sites in region "n"; residuals chosen so that |r| <= sqrt(1 + ref^2) for three of four
    return pd.DataFrame({
        "site": ["A", "B", "A", "B"], "region": "n", "model": "dnn gradual", "scene_id": ["s1", "s1", "s2", "s2"],
        "reason": "ok", "lst": [301.2, 298.0, 300.5, 304.0], "lst_insitu": [300.0, 300.0, 300.0, 300.0],
        "lst_uncertainty": [1.0, 1.0, 2.5, 2.5], "lst_insitu_std": [0.4, 0.0, 0.4, 0.0], "n_insitu": [4, 3, 4, 3],
        "lst_spread_3x3": [0.3, np.nan, 0.3, np.nan], "sigma_reference": [0.8, 0.8, 0.8, 0.8]})


def test_validation_calibration_table_and_coverage_with_the_reference_pin_their_counts():
    from sftl_dask.validate import CALIBRATION_COLUMNS, calibration_table, metrics_table, site_reference_sigma

    mu = _crafted_matchups()
    ref = site_reference_sigma(mu)
    assert ref["A"] == pytest.approx(math.sqrt(0.45**2 + 0.5**2 + 0.16 / 4 + 0.09))
    assert ref["B"] == pytest.approx(math.hypot(0.45, 0.5))
    cal = calibration_table(mu)
    assert list(cal.columns) == list(CALIBRATION_COLUMNS)
    rel = cal[cal["kind"] == "reliability"]
    assert len(rel) == 12 and set(rel["model"]) == {"dnn gradual"} and (rel["n"] == 4).all()
    # |r| = 1.2, 2.0, 0.5, 4.0 against sqrt(sigma^2 + 0.64) = 1.28, 1.28, 2.62, 2.62: 2 of 4 within 1 sigma
    assert float(rel.loc[rel["z"] == 1.0, "observed"].iloc[0]) == pytest.approx(0.5)
    assert float(rel.loc[rel["z"] == 2.0, "observed"].iloc[0]) == pytest.approx(1.0)
    cls = cal[(cal["kind"] == "class") & (cal["z"] == 1.0)].set_index("group")
    assert cls.loc["<=1 K", "n"] == 2 and cls.loc["<=3 K", "n"] == 2 and cls.loc["<=3 K", "observed"] == 0.5
    row = metrics_table(mu.assign(residual_k=mu["lst"] - mu["lst_insitu"])).iloc[0]
    assert row["within_1sigma_with_ref"] == 0.5 and row["within_1sigma"] == 0.25
    lo, hi = wilson_interval(2, 4)
    assert row["within_1sigma_with_ref_low"] == pytest.approx(lo) and row["within_1sigma_with_ref_high"] == hi
    assert row["sigma_reference_k"] == pytest.approx(0.8)


def test_split_window_coefficients_carrying_an_error_model_use_it(retrieval_model, tmp_path):
    from sftl_dask.models.retriever import open_retriever

    doc = json.loads(Path(retrieval_model("sw")).read_text())
    bare = open_retriever(retrieval_model("sw"))
    assert bare.describe()["uncertainty_calibration"].startswith("uncalibrated")
    rng = np.random.default_rng(6)
    f = _features(5000, rng)
    em, _ = calibrate_error_model(fit_error_model(f, rng.normal(0, 0.8, 5000)), f, rng.normal(0, 2.0, 5000),
                                  scene_id=np.repeat(np.arange(1000), 5))
    (tmp_path / "sw.json").write_text(json.dumps({**doc, "uncertainty": em}))
    sw = open_retriever(tmp_path / "sw.json")
    assert sw.describe()["uncertainty_calibration"] == "target-calibrated (k=5000, loo-split)"
    assert sw.describe()["uncertainty_systematic_k"] == f"{em['sigma_scene_k']:.4f}"
    feats = {k: np.asarray(v, np.float32) for k, v in f.items()} | {
        n: np.full(5000, v, np.float32) for n, v in (("bt_10_80", 300.0), ("bt_11_95", 298.5), ("emis_diff", 0.005))}
    _, sigma = sw.predict(feats)
    np.testing.assert_array_equal(sigma, apply_error_model(em, feats))
    (tmp_path / "bad.json").write_text(json.dumps({**doc, "uncertainty": {"format": "x"}}))
    with pytest.raises(ValueError, match=r"bad\.json: uncertainty: not an sftl-dask-error-model/1"):
        open_retriever(tmp_path / "bad.json")


def _with_scene_term(src: Path, dst: Path, c: float) -> Path:
    """A copy of an artifact whose card carries a multiplicative scene term ``c * sigma_model`` (as training's)."""
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    card["uncertainty"]["scene_term"] = {"form": "multiplicative", "c": c, "sigma_ref_k": 1.0, "n": 20,
                                         "n_scenes": 4, "fit": "set by the test"}
    (dst / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [f"{hashlib.sha256((dst / n).read_bytes()).hexdigest()}  {n}\n"
             for n in sorted(p.name for p in dst.iterdir() if p.name != "sha256")]
    (dst / "sha256").write_text("".join(lines))
    return dst


def test_retrieval_writes_the_systematic_share_of_a_multiplicative_scene_term(tmp_path, retrieval_model):
    """The LST store says which share of ``lst_uncertainty**2`` is the scene term (c^2 / (1 + c^2)); a card without
    such a term writes no share (its ``uncertainty_systematic_k`` as before)."""
    from helpers import synthetic_cube

    from sftl_dask.api import systematic_fraction
    from sftl_dask.retrieve import retrieve

    cube = synthetic_cube(tmp_path / "cube" / "g.zarr", 1, 32, 32, seed=2)
    model = _with_scene_term(retrieval_model("dnn"), tmp_path / "mult_dnn", c=2.0)
    retrieve(cube, model, tmp_path / "lst" / "g.zarr", threads=1, device="cpu")
    lst = xr.open_zarr(tmp_path / "lst" / "g.zarr")
    assert lst.attrs["uncertainty_systematic_fraction"] == pytest.approx(0.8, abs=1e-12)
    assert systematic_fraction(lst.attrs) == pytest.approx(0.8, abs=1e-12)
    # a one-step composite: the share whole, the rest / 1 (a mean): sigma itself
    comp = lst.sftl.composite("MS", how="mean")
    np.testing.assert_allclose(comp["lst_uncertainty"].values[0], lst["lst_uncertainty"].values[0], rtol=1e-6)
    retrieve(cube, retrieval_model("dnn"), tmp_path / "lst_old" / "g.zarr", threads=1, device="cpu")
    old = xr.open_zarr(tmp_path / "lst_old" / "g.zarr")
    assert "uncertainty_systematic_fraction" not in old.attrs and "uncertainty_systematic_k" in old.attrs
