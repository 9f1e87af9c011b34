"""sftl train: the three stages end to end on a small testbed, the artifact, and config errors."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sftl_dask.training.stages import load_config, metrics

BASE = {
    "name": "tiny", "direction": "SiHuHe", "source_region": "huailai", "target_region": "heihe", "seed": 0,
    "model": {"name": "dnn", "params": {"hidden": [32, 16]}},
    "pretrain": {"epochs": 3, "batch_size": 4096, "lr": 0.003, "holdout_fraction": 0.2},
    "finetune": {"strategy": "gradual", "params": {"epochs_per_group": 2}, "epochs": 6, "lr": 0.001,
                 "split": "chronological", "test_fraction": 0.3},
    "transfer": {"k": [5], "repeats": 2},
    # one candidate per model keeps the tuned direct baseline cheap here (3 fits: 2 folds and the refit)
    "direct": {"folds": 2, "search": {"dnn": {"epochs": [30], "batch_size": [64]}, "lgbm": {"n_estimators": [50]}}},
}


@pytest.fixture(scope="module")
def trained(tiny_training: tuple[Path, dict]) -> tuple[Path, dict]:
    """``sftl train`` of ``BASE`` on a testbed of 4 scenes per region: the session's (conftest.tiny_training)."""
    return tiny_training


def test_three_stages_report_every_method_on_the_same_rows(trained):
    _, res = trained
    s1, s2, s3 = res["stage1_pretrain"], res["stage2_finetune"], res["stage3_transfer"]
    assert s1["model"]["n"] == s1["split_window"]["n"] > 0
    assert s2["model"]["n"] == s2["split_window"]["n"] == s2["pretrained_only"]["n"] > 0
    assert s3["zero_shot"]["n"] == s3["split_window"]["n"] == s3["direct_training"]["n"] > 0
    assert np.isfinite(s3["zero_shot"]["rmse_k"]) and s3["few_shot"][0]["k"] == 5
    assert s2["trainable_parameters"] > 0
    # the rows of the fixture's testbed and simulation (seeds 2 and 0), exactly
    assert (s1["n_train"], s1["model"]["n"], s2["n_train"], s2["n_test"], s3["zero_shot"]["n"]) == (26208, 6552, 14, 26,
                                                                                                   10)


def test_split_window_and_radiometer_figures_of_the_tiny_run_are_pinned(trained):
    """The split-window (a least-squares fit on the simulation) and the radiometers against the pixel truth involve
    no network and no thread-dependent sums: pinned to 5 mK at the fixture's seed 0 (the seed draws the hold-out
    rows: seed 1 gave the same stage-2 and stage-3 figures, seed 2 others). A change in the simulation, the
    matchup rules, the ingest, the cloud mask or the fit moves them by far more."""
    _, res = trained
    s1, s2, s3 = res["stage1_pretrain"], res["stage2_finetune"], res["stage3_transfer"]
    truth = s3["against_pixel_truth"]
    got = [s1["split_window"]["rmse_k"], s2["split_window"]["rmse_k"], s3["split_window"]["rmse_k"],
           truth["split_window"]["rmse_k"], truth["radiometer"]["rmse_k"]]
    assert got == pytest.approx([0.6044, 4.4591, 3.4600, 0.4464, 3.3577], abs=0.005)


def test_stage_rmses_of_the_tiny_run_are_pinned_and_fine_tuning_beats_pretrained_only(trained):
    """The tiny configuration pre-trains 3 epochs in batches of 4096 (21 steps): its network is far from trained
    (23 K on the simulation), which keeps the shared fixture cheap; its figures still pin the training path.

    Measured (seed 0, --workers 1): stage 1 22.97 K; stage 2 23.75 K (pre-trained only 24.04 K); zero-shot on the
    target 17.48 K (pre-trained only 17.85 K). A 20-epoch pre-training gave bit-identical figures on 1 and 2
    threads; seeds 1 and 2 moved these by up to 32 %; pinned within 10 % (room for other CPU kernels and torch
    builds, not for a changed seed, schedule, normalisation or split). Fine-tuning beat pre-trained-only both on
    the source's held-out rows and cross-site for seeds 0, 1 and 2 (by 0.25-0.37 K): asserted strictly.

    Not asserted, because it does not hold at this size: that SFTL beats the split-window (17.5 K against 3.5 K
    cross-site here); see test_stage_one_trained_longer_learns_the_physics_within_a_kelvin for a trained network.
    """
    _, res = trained
    s1, s2, s3 = res["stage1_pretrain"], res["stage2_finetune"], res["stage3_transfer"]
    assert s1["model"]["rmse_k"] == pytest.approx(22.97, rel=0.1)
    assert s2["model"]["rmse_k"] == pytest.approx(23.75, rel=0.1)
    assert s3["zero_shot"]["rmse_k"] == pytest.approx(17.48, rel=0.1)
    assert s2["model"]["rmse_k"] < s2["pretrained_only"]["rmse_k"] - 0.1  # on the source's held-out scenes
    assert s3["zero_shot"]["rmse_k"] < s3["pretrained_only"]["rmse_k"] - 0.1  # cross-site


def test_stage_one_trained_longer_learns_the_physics_within_a_kelvin(trained):
    """Stage 1 of ``BASE`` with 20 epochs in batches of 256 (2,060 steps) on the fixture's simulation (6.5 s on
    2 cores, up to 24 s on a busy machine: the one trained network of the default run). Measured:
    0.829 K for seed 0 (bit-identical on 1 and 2 threads), 0.572 and 0.515 K for seeds 1 and 2; the split-window
    on the same rows 0.604 K. Pinned below 1.2 K: seed 0 plus the seeds' spread."""
    from sftl_dask.pipelines.data import prepare_data
    from sftl_dask.training.stages import pretrain

    out, _ = trained
    cfg = load_config(out.parent / "tiny.yaml")
    cfg = dataclasses.replace(cfg, pretrain={**cfg.pretrain, "epochs": 20, "batch_size": 256})
    _, s1 = pretrain(cfg, prepare_data(cfg, out / "work"), threads=1, log=lambda *_: None)
    assert s1["model"]["n"] == 6552 and s1["model"]["rmse_k"] < 1.2, s1
    assert s1["model"]["rmse_k"] == pytest.approx(0.829, abs=0.05)  # seed 0


def test_artifact_is_torchscript_with_card_and_hashes_and_reproduces_predictions(trained):
    import torch

    from sftl_dask.features import FEATURES
    from sftl_dask.models.artifact import load_artifact

    out, _ = trained
    art = out / "model"
    card = json.loads((art / "card.json").read_text())
    assert [f["name"] if isinstance(f, dict) else f for f in card["features"]] == list(FEATURES)
    assert (art / "sha256").exists() and (art / "model.pt").exists()
    m = torch.jit.load(str(art / "model.pt"))
    x = torch.tensor([[300.0, 301.0, 303.0, 301.5, 1.5, 1.2, 1.8, 0.95, 0.94, 0.975, -0.005, 1.0]])
    y = m(x)
    assert 250.0 < float(y.detach().reshape(-1)[0]) < 350.0
    loaded = load_artifact(art)
    assert np.allclose(loaded.predict(x.numpy()), y.detach().numpy().reshape(-1), atol=1e-4)
    assert np.allclose(load_artifact(art, program="export").predict(x.numpy()), y.detach().numpy().reshape(-1),
                       atol=1e-4)


def test_artifact_carries_the_error_model_and_pretraining_range_and_stage3_its_calibration(trained):
    from sftl_dask.models.error_model import apply_error_model, check_error_model

    out, res = trained
    card = json.loads((out / "model" / "card.json").read_text())
    em = check_error_model(card["uncertainty"])
    assert em["n_scene"] == res["stage2_finetune"]["n_test"] and em["sigma_scene_k"] >= 0
    assert min(min(min(r) for r in p) for p in em["sigma_model_k"]) > 0
    rng = card["pretraining_range"]
    assert set(rng) == {"bt", "wvc", "vza", "emis"} and rng["vza"] == [0.0, 30.0] and 0.5 < rng["emis"][0] < 1
    cal = res["stage3_transfer"]["uncertainty_calibration"]["target_insitu"]
    assert cal["n"] == res["stage3_transfer"]["zero_shot"]["n"] and 0 <= cal["within_1sigma"] <= cal["within_2sigma"]
    sigma = apply_error_model(em, {"wvc": np.array([0.3]), "emis_mean": np.array([0.97]), "sec_vza": np.array([1.0])})
    assert sigma[0] >= em["sigma_scene_k"]


def test_tampered_artifact_is_refused(trained, tmp_path):
    import shutil

    from sftl_dask.models.artifact import ArtifactError, load_artifact

    out, _ = trained
    bad = tmp_path / "model"
    shutil.copytree(out / "model", bad)
    with (bad / "model.pt").open("ab") as fh:
        fh.write(b"x")
    with pytest.raises(ArtifactError, match=r"model\.pt"):
        load_artifact(bad)


@pytest.mark.parametrize(
    ("change", "match"),
    [({"model": {"name": "xgboost"}}, "model.name"), ({"finetune": {"strategy": "prune"}}, "finetune.strategy"),
     ({"direction": "SiXX"}, "direction"), ({"pretrain": {"epochs": -1, "lr": 0.1}}, "pretrain.epochs"),
     ({"pretrain": {"epochs": 2, "distributed": "yes"}}, "pretrain.distributed"),
     ({"pretrain": {"epochs": 2, "schedule": "warm"}}, "pretrain.schedule")],
)
def test_bad_config_names_the_key(tmp_path, change, match):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**BASE, **change}))
    with pytest.raises(ValueError, match=match):
        load_config(p)


def test_bad_config_through_cli_exits_2_with_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**BASE, "model": {"name": "xgboost"}}))
    r = subprocess.run([sys.executable, "-m", "sftl_dask.cli", "train", "--config", str(p), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "model").exists()


def test_metrics_are_the_usual_definitions():
    m = metrics(np.array([301.0, 299.0, 302.0]), np.array([300.0, 300.0, 300.0]))
    assert m["rmse_k"] == pytest.approx(np.sqrt(2.0)) and m["bias_k"] == pytest.approx(2 / 3)
    assert m["mae_k"] == pytest.approx(4 / 3) and m["n"] == 3


@pytest.mark.slow  # ~60 s; continued boosting itself: test_models.py::test_tree_finetune_adds_trees_...
def test_lgbm_runs_the_same_stages_with_continued_boosting(trained, tmp_path):
    from sftl_dask.cli import main
    from sftl_dask.models.artifact import load_artifact

    out, _ = trained
    cfg = dict(BASE, model={"name": "lgbm", "params": {"n_estimators": 40}}, finetune={"strategy": "full",
                                                                                     "n_more": 20},
               data={"testbed": {"path": str(out / "work" / "testbed")},
                     "simulation": {"path": str(out / "work" / "sim.parquet")}})
    (tmp_path / "lgbm.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "lgbm.yaml"), "--out", str(tmp_path / "o"), "--workers", "1"]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["strategy"] == "continued_boosting" and res["stage2_finetune"]["trainable_parameters"] > 20
    assert np.isfinite(res["stage3_transfer"]["zero_shot"]["rmse_k"])
    assert load_artifact(tmp_path / "o" / "model").card["model"] == "lgbm"


def test_experiment_grid_runs_as_one_dask_job_and_records_failures(trained, tmp_path):
    from sftl_dask.cluster import get_client
    from sftl_dask.pipelines.experiment import run_experiment

    out, _ = trained
    cfg = dict(BASE, data={"testbed": {"path": str(out / "work" / "testbed")},
                           "simulation": {"path": str(out / "work" / "sim.parquet")}},
               grid={"models": ["dnn", "lgbm"], "strategies": ["head"], "directions": ["SiHuHe", "SiHeHu"],
                     "seeds": [0], "params_lgbm": {"n_estimators": 30}})
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(cfg))
    with get_client(n_workers=2) as client:
        table = run_experiment(tmp_path / "grid.yaml", tmp_path / "exp", client=client, log=lambda *_: None)
    # dnn x 1 strategy x 2 directions + lgbm x 1 variant x 2 directions + the ablation: dnn again without wvc_dbt
    # (LoRA in a cell: test_a_cell_gives_the_same_figures_whatever_the_process_drew_before; tests/test_finetune.py)
    assert len(table) == 6 and set(table["direction"]) == {"SiHuHe", "SiHeHu"}
    assert (table["features"] == "-wvc_dbt").sum() == 2 and set(table[table["features"] != "all"]["model"]) == {"dnn"}
    ok = table[table["error"] == ""]
    assert len(ok) == 6, table["error"].tolist()
    assert (ok["trainable_parameters"] > 0).all()
    # one pre-training per (model, seed, features): cells of a pre-training share its simulated RMSE
    assert ok.groupby(["model", "features"])["sim_rmse_k"].nunique().max() == 1
    # ablated models really take one feature fewer (their sim RMSE is their own)
    dnn = ok[ok["model"] == "dnn"].groupby("features")["sim_rmse_k"].first()
    assert dnn["all"] != dnn["-wvc_dbt"]
    exp = tmp_path / "exp"
    summary = (exp / "summary.md").read_text()
    for section in ("## Targets", "## Results", "## Stage 1", "## Feature ablation", "## Recommendation"):
        assert section in summary, section
    for png in ("grid.png", "scatter.png", "fewshot.png"):
        assert (exp / png).stat().st_size > 5000, png
    pred = __import__("pandas").read_parquet(exp / "predictions.parquet")
    assert set(pred["cell"]) == set(ok["cell"])
    assert {"lst_insitu", "lst_sftl", "lst_split_window", "lst_direct", "lst_pixel_truth"} <= set(pred.columns)
    # the testbed knows the pixel truth: the radiometer floor is reported and is not zero
    assert (ok["truth_radiometer_rmse_k"] > 0.3).all() and "floor" in summary


@pytest.mark.parametrize(
    ("grid", "match"),
    [({"ablation": {"drop_features": ["wvc_x"], "models": ["dnn"]}}, r"grid\.ablation\.drop_features"),
     ({"ablation": {"drop_features": ["wvc_dbt"], "models": ["cnn"]}}, r"grid\.ablation\.models"),
     ({"pretrain_trf": {"epochs": 0}}, r"grid\.pretrain_trf\.epochs"),
     ({"params_dnn": [1, 2]}, r"grid\.params_dnn")],
)
def test_experiment_grid_bad_sections_name_the_key(tmp_path, grid, match):
    from sftl_dask.training.experiment import load_grid

    g = {"models": ["dnn"], "strategies": ["head"], "directions": ["SiHuHe"], "seeds": [0], **grid}
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(dict(BASE, grid=g)))
    with pytest.raises(ValueError, match=match):
        load_grid(tmp_path / "g.yaml")


@pytest.mark.parametrize(
    ("change", "match"),
    [({"model": {"name": "dnn", "drop_features": ["nope"]}}, r"model\.drop_features"),
     ({"model": {"name": "dnn", "features": "wvc"}}, r"model\.features"),
     ({"transfer": {"k": [5], "strategy": "prune"}}, r"transfer\.strategy"),
     ({"transfer": {"k": [5], "epochs": 0}}, r"transfer\.epochs")],
)
def test_bad_feature_and_transfer_settings_name_the_key(tmp_path, change, match):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**BASE, **change}))
    with pytest.raises(ValueError, match=match):
        load_config(p)


@pytest.mark.slow  # ~40 s; the default run's experiment grid trains and scores the ablated DNN (its own sim RMSE)
def test_feature_ablation_trains_and_exports_without_the_feature(trained, tmp_path):
    from sftl_dask.features import FEATURES
    from sftl_dask.models.artifact import load_artifact
    from sftl_dask.pipelines.data import prepare_data
    from sftl_dask.training.stages import model_features, run_stages

    out, _ = trained
    cfg_d = dict(BASE, model={"name": "dnn", "params": {"hidden": [16]}, "drop_features": ["wvc_dbt"]},
                 data={"testbed": {"path": str(out / "work" / "testbed")},
                       "simulation": {"path": str(out / "work" / "sim.parquet")}},
                 transfer={"k": [5], "repeats": 1, "method": "head"})
    (tmp_path / "abl.yaml").write_text(yaml.safe_dump(cfg_d))
    cfg = load_config(tmp_path / "abl.yaml")
    assert model_features(cfg) == tuple(f for f in FEATURES if f != "wvc_dbt")
    data = prepare_data(cfg, out / "work")
    assert data["matchups"]["lst_pixel_truth"].notna().any()
    res = run_stages(cfg, data, tmp_path / "o", threads=1, log=lambda *_: None)
    art = load_artifact(tmp_path / "o" / "model")
    assert art.features == model_features(cfg) and art.n_features == len(FEATURES) - 1
    assert res["features"] == list(model_features(cfg))
    t = res["stage3_transfer"]["against_pixel_truth"]
    assert t["radiometer"]["n"] == t["zero_shot"]["n"] == res["stage3_transfer"]["zero_shot"]["n"]
    pred = res["cross_site_predictions"]
    assert len(pred) == t["zero_shot"]["n"]
    assert np.sqrt(np.mean((pred["lst_sftl"] - pred["lst_pixel_truth"]) ** 2)) == pytest.approx(
        t["zero_shot"]["rmse_k"], rel=1e-4)


def test_experiment_grid_refuses_unknown_model_naming_the_key(tmp_path):
    from sftl_dask.training.experiment import load_grid

    (tmp_path / "g.yaml").write_text(yaml.safe_dump(dict(BASE, grid={"models": ["svm"], "strategies": ["head"],
                                                                      "directions": ["SiHuHe"], "seeds": [0]})))
    with pytest.raises(ValueError, match=r"grid\.models"):
        load_grid(tmp_path / "g.yaml")


def test_distributed_pretraining_through_the_stage_matches_single_process(trained, tmp_path):
    from sftl_dask.cluster import get_client
    from sftl_dask.pipelines.data import prepare_data
    from sftl_dask.training.stages import pretrain

    out, _ = trained
    base = dict(BASE, data={"testbed": {"path": str(out / "work" / "testbed")},
                            "simulation": {"path": str(out / "work" / "sim.parquet")}},
                pretrain={**BASE["pretrain"], "epochs": 6})
    (tmp_path / "single.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump({**base, "pretrain": {**base["pretrain"], "distributed": True}}))
    cfg1, cfg2 = load_config(tmp_path / "single.yaml"), load_config(tmp_path / "ddp.yaml")
    data = prepare_data(cfg1, out / "work")
    _, single = pretrain(cfg1, data, threads=1, log=lambda *_: None)
    with get_client(n_workers=2) as client:
        _, ddp = pretrain(cfg2, data, client=client, log=lambda *_: None)
    # same held-out rows, comparable accuracy
    assert ddp["model"]["n"] == single["model"]["n"] > 0
    assert ddp["model"]["rmse_k"] < 1.5 * single["model"]["rmse_k"]


@pytest.mark.slow  # ~65 s; DDP through the stage runs in the default suite (test_distributed_pretraining_...)
def test_train_cli_runs_stage_one_data_parallel_when_asked(trained, tmp_path):
    from sftl_dask.cli import main
    from sftl_dask.models.artifact import load_artifact

    out, _ = trained
    cfg = dict(BASE, pretrain={**BASE["pretrain"], "distributed": True},
               data={"testbed": {"path": str(out / "work" / "testbed")},
                     "simulation": {"path": str(out / "work" / "sim.parquet")}})
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "ddp.yaml"), "--out", str(tmp_path / "o"), "--workers", "2"]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert np.isfinite(res["stage1_pretrain"]["model"]["rmse_k"])
    assert load_artifact(tmp_path / "o" / "model").card["model"] == "dnn"


def test_a_cell_gives_the_same_figures_whatever_the_process_drew_before(trained):
    """Adapters, LoRA factors and the direct baseline were drawn from the process's global torch RNG: an
    experiment cell's figures depended on which cells ran before it on that worker (found by killing a worker
    mid-grid: the rerun cell's direct-training RMSE changed)."""
    import dataclasses

    import torch

    from sftl_dask.pipelines.data import prepare_data
    from sftl_dask.training.stages import pretrain, run_stages

    out, _ = trained
    cfg = load_config(out.parent / "tiny.yaml")
    cfg = dataclasses.replace(cfg, finetune=dict(cfg.finetune, strategy="lora", params={}))
    data = prepare_data(cfg, out / "work")  # the fixture's products, reused (same keys)
    pre = pretrain(cfg, data, log=lambda *_: None)
    torch.manual_seed(123)
    a = run_stages(cfg, data, None, pretrained=pre, log=lambda *_: None)
    torch.rand(12345)  # another cell ran here
    b = run_stages(cfg, data, None, pretrained=pre, log=lambda *_: None)
    for stage in ("stage2_finetune", "stage3_transfer"):
        for k, v in a[stage].items():
            if isinstance(v, dict) and "rmse_k" in v:
                assert b[stage][k]["rmse_k"] == v["rmse_k"], (stage, k)
    assert a["stage3_transfer"]["direct_training"]["rmse_k"] == b["stage3_transfer"]["direct_training"]["rmse_k"]


# ---------------------------------------------------------------------------------------------
# training on a user's own data: a cube, station records and a site table (no testbed key)


def _user_data(out: Path) -> dict:
    w = out / "work"
    return {"cube": str(w / "cube"), "insitu": str(w / "testbed" / "insitu"), "sites": str(w / "testbed" / "sites.csv"),
            "simulation": {"path": str(w / "sim.parquet")}}


def test_train_from_a_cube_station_records_and_a_site_table_builds_no_testbed(trained, tmp_path):
    import pandas as pd

    from sftl_dask.cli import main
    from sftl_dask.models.artifact import load_artifact

    out, res_tb = trained
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(dict(BASE, data=_user_data(out))))
    assert main(["train", "--config", str(tmp_path / "user.yaml"), "--out", str(tmp_path / "o"), "--workers", "1"]) == 0
    assert (tmp_path / "o" / "model" / "model.pt").is_file() and not (tmp_path / "o" / "work" / "testbed").exists()
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    # the same matchups as the testbed's route: the same rows, the same stage-2 figures
    mine = pd.read_parquet(tmp_path / "o" / "work" / "matchups.parquet")
    theirs = pd.read_parquet(out / "work" / "matchups.parquet")
    assert len(mine) == len(theirs) and (mine["reason"] == "ok").sum() == (theirs["reason"] == "ok").sum()
    assert res["stage2_finetune"]["model"]["rmse_k"] == pytest.approx(res_tb["stage2_finetune"]["model"]["rmse_k"])
    # no truth was named: nothing is scored against the pixel truth
    assert "against_pixel_truth" not in res["stage3_transfer"]
    # the direct baseline says what it was given and what cross-validation chose
    tuning = res["stage3_transfer"]["direct_tuning"]
    assert tuning["search"] == {"batch_size": [64], "epochs": [30]} and tuning["folds"] == 2
    assert tuning["chosen"] == {"batch_size": 64, "epochs": 30} and tuning["cv_rmse_k"] > 0
    assert load_artifact(tmp_path / "o" / "model").card["training_tables"]["matchups"]["path"].endswith(
        "matchups.parquet")


def test_matchups_verb_writes_the_table_training_reads(trained, tmp_path):
    import pandas as pd

    from sftl_dask.cli import main
    from sftl_dask.pipelines.data import prepare_data
    from sftl_dask.training.stages import load_config

    out, _ = trained
    d = _user_data(out)
    m = tmp_path / "m.parquet"
    assert main(["matchups", "--cube", d["cube"], "--insitu", d["insitu"], "--sites", d["sites"], "--out", str(m),
                 "--workers", "1"]) == 0
    table = pd.read_parquet(m)
    assert len(table) == len(pd.read_parquet(out / "work" / "matchups.parquet"))
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(dict(BASE, data={"matchups": str(m),
                                                                      "simulation": d["simulation"]})))
    data = prepare_data(load_config(tmp_path / "m.yaml"), tmp_path / "work")
    assert data["matchups_path"] == m and data["testbed"] is None and len(data["matchups"]) == len(table)
    assert main(["matchups", "--cube", d["cube"], "--insitu", d["insitu"], "--sites", d["sites"], "--out", str(m)]) == 2


@pytest.mark.parametrize(
    ("change", "match"),
    [({"finetune": {**BASE["finetune"], "strategy_typo": "gradual"}}, r"finetune\.strategy_typo: unknown key"),
     ({"pretrain": {**BASE["pretrain"], "epochs": "3"}}, r"pretrain\.epochs: .*integer"),
     ({"transfer": {"k": [5, 0]}}, r"transfer\.k\[1\]"),
     ({"data": {"cube": "c.zarr", "insitu": "i"}}, r"data\.sites missing"),
     ({"data": {"matchups": "m.parquet", "testbed": {}}}, r"exactly one data source"),
     ({"data": {"simulation": {"path": "s"}}}, r"exactly one data source: .*\(got none\)"),
     ({"dataa": {}}, r"dataa: unknown key")],
)
def test_config_errors_name_the_key_path_and_the_file(tmp_path, change, match):
    from sftl_dask.training.config import ConfigError

    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**BASE, "data": {"matchups": "m.parquet"}, **change}))
    with pytest.raises(ConfigError, match=match) as err:
        load_config(p)
    assert str(err.value).startswith(str(p)) and "\n" not in str(err.value)


def test_unknown_key_through_the_cli_exits_2_naming_it(tmp_path, capsys):
    from sftl_dask.cli import main

    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump({**BASE, "data": {"matchups": "m.parquet"},
                                 "finetune": {**BASE["finetune"], "strategy_typo": "gradual"}}))
    assert main(["train", "--config", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finetune.strategy_typo" in err[0] and "bad.yaml" in err[0]


def _bad_data(tmp_path: Path, out: Path, what: str) -> dict:
    import pandas as pd

    d = _user_data(out)
    if what == "missing cube":
        d["cube"] = str(tmp_path / "nope.zarr")
    elif what == "sites without the stations":
        sites = pd.read_csv(d["sites"])
        sites[sites["id"] != sites["id"].iloc[0]].to_csv(tmp_path / "sites.csv", index=False)
        d["sites"] = str(tmp_path / "sites.csv")
    elif what == "matchups missing columns":
        pd.read_parquet(out / "work" / "matchups.parquet").drop(columns=["wvc"]).to_parquet(tmp_path / "m.parquet")
        d = {"matchups": str(tmp_path / "m.parquet"), "simulation": d["simulation"]}
    elif what == "matchups without the target region":
        m = pd.read_parquet(out / "work" / "matchups.parquet")
        m[m["region"] != "heihe"].to_parquet(tmp_path / "m.parquet")
        d = {"matchups": str(tmp_path / "m.parquet"), "simulation": d["simulation"]}
    return d


@pytest.mark.parametrize(
    ("what", "match"),
    [("missing cube", r"data\.cube: .*nope\.zarr does not exist"),
     ("sites without the stations", r"sites\.csv: the site table lacks site\(s\) \w+ of the station records"),
     ("matchups missing columns", r"m\.parquet: missing column\(s\) wvc"),
     ("matchups without the target region", r"m\.parquet: no matchup of the target region heihe")],
)
def test_bad_user_data_exits_2_with_one_line_naming_the_key_or_file_before_any_work(trained, tmp_path, capsys,
                                                                                    what, match):
    import re

    from sftl_dask.cli import main

    out, _ = trained
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(dict(BASE, data=_bad_data(tmp_path, out, what))))
    assert main(["train", "--config", str(p), "--out", str(tmp_path / "o"), "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(match, err[0]), err
    assert not (tmp_path / "o" / "work" / "sw.json").exists()  # refused before the split-window fit


def test_the_pipeline_schema_in_docs_is_the_one_the_code_checks(tmp_path):
    from sftl_dask.training.config import write_schema

    here = json.loads((Path(__file__).parents[1] / "docs" / "pipeline.schema.json").read_text())
    assert here == json.loads(write_schema(tmp_path / "s.json").read_text())
    assert here["additionalProperties"] is False and {"data", "model", "finetune"} <= set(here["required"])


def test_the_registry_names_every_strategy_class_once():
    from sftl_dask.models import STRATEGY_NAMES
    from sftl_dask.models.finetune import STRATEGIES

    assert tuple(STRATEGIES) == STRATEGY_NAMES


def test_matchups_verb_refuses_a_missing_cube_with_one_line(tmp_path, capsys):
    from sftl_dask.cli import main

    rc = main(["matchups", "--cube", str(tmp_path / "nope.zarr"), "--insitu", str(tmp_path), "--sites",
               str(tmp_path / "s.csv"), "--out", str(tmp_path / "m.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "nope.zarr" in err[0] and "--cube" in err[0]
    assert not (tmp_path / "m.parquet").exists()
