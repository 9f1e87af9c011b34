"""sftl validate: LST cubes against radiometers with the training's matchup rules; metrics, calibration, plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import lst_store_from_arrays, pixel_lonlat, write_station_csv

from sftl_dask.io.lst import QC_FLAGS
from sftl_dask.validate import METRIC_COLUMNS, VALIDATION_COLUMNS, ValidateError, lst_metrics, validate

TIMES = np.array(["2022-06-01T03:30", "2022-06-17T03:30", "2022-07-03T03:30", "2022-07-19T03:30"],
                 dtype="datetime64[ns]")
# site -> (region, pixel, retrieved LST K, its sigma K, in situ LST K, in situ swing K) per time step
CASE = {
    "A1": ("north", (5, 5), [301.0, 302.0, 303.5, 304.0], [1.5, 1.5, 1.5, 1.5], [300.0, 300.0, 300.0, 300.0],
           [0, 0, 0, 0]),
    "A2": ("north", (5, 14), [299.0, 298.0, 297.0, 296.0], [0.5, 2.5, 0.5, 1.0], [300.0, 299.0, 296.0, 300.0],
           [2.5, 0, 0, 0]),  # t0: the radiometer swings +-2.5 K: unstable
    "B1": ("south", (14, 10), [310.0, 311.0, np.nan, 313.0], [1.0, 0.5, np.nan, 1.0], [309.5, 312.0, 310.0, 311.0],
           [0, 0, 0, 0]),  # t2: not covered
}
# the usable rows, by hand: A1 t1 has cloud next to its pixel, A2 t0 is unstable, B1 t2 not covered, t3 never
# completed (retrieve_ok false)
RESIDUALS = {"A1": [1.0, 3.5], "A2": [-1.0, 1.0], "B1": [0.5, -1.0]}
SIGMAS = {"A1": [1.5, 1.5], "A2": [2.5, 0.5], "B1": [1.0, 0.5]}
INSITU = {"A1": [300.0, 300.0], "A2": [299.0, 296.0], "B1": [309.5, 312.0]}


def _crafted(root: Path) -> dict[str, Path]:
    """A 20 x 20 px LST store in chunks of 8 with known values at three sites, their station files and site table."""
    shape = (TIMES.size, 20, 20)
    lst = np.full(shape, 300.0)
    unc = np.full(shape, 1.0)
    qc = np.zeros(shape, np.int64)
    for _, (r, c), values, sigma, *_ in CASE.values():
        lst[:, r, c], unc[:, r, c] = values, sigma
    qc[1, 4, 5] |= QC_FLAGS["cloud"][0]  # cloud next to A1 at t1 (the pixel itself is clear and produced)
    lst[1, 4, 5] = unc[1, 4, 5] = np.nan
    qc[1, 2:8, 2:8] |= np.where(qc[1, 2:8, 2:8] & 1, 0, QC_FLAGS["cloud_adjacent"][0])
    qc[2, 14, 10] |= QC_FLAGS["not_covered"][0]  # B1 outside the swath at t2
    qc[:, 12:, :] |= QC_FLAGS["wvc_outside_pretraining_range"][0]  # informative only: not a matchup rule
    store = lst_store_from_arrays(root / "lst" / "g.zarr", TIMES, lst, unc, qc,
                                  complete=np.array([True, True, True, False]))
    sites = []
    for site, (region, (r, c), _, _, insitu, swing) in CASE.items():
        lon, lat = pixel_lonlat(r, c)
        sites.append({"id": site, "region": region, "lon": lon, "lat": lat, "land_cover": "cropland"})
        write_station_csv(root / "insitu" / f"{site}.csv", site, lon, lat,
                          [(str(t), v, s) for t, v, s in zip(TIMES, insitu, swing, strict=True)])
    # a site on the grid's edge row (no whole neighbourhood) and one far away: neither is matched
    for site, (r, c) in {"E1": (0, 9), "F1": (-500, 9)}.items():
        lon, lat = pixel_lonlat(r, c)
        sites.append({"id": site, "region": "north", "lon": lon, "lat": lat, "land_cover": "grass"})
    pd.DataFrame(sites).to_csv(root / "sites.csv", index=False)
    return {"lst": store.parent, "store": store, "insitu": root / "insitu", "sites": root / "sites.csv"}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> dict[str, Path]:
    return _crafted(tmp_path_factory.mktemp("crafted"))


@pytest.fixture(scope="module")
def validated(crafted, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("val") / "out"
    summary = validate(crafted["lst"], crafted["insitu"], crafted["sites"], out)
    return out, summary


def _row(table: pd.DataFrame, level: str, name: str) -> pd.Series:
    return table[(table["level"] == level) & (table["name"] == name)].iloc[0]


def test_rmse_bias_on_a_crafted_cube_equal_the_hand_computed_figures(validated):
    out, summary = validated
    table = pd.read_parquet(out / "metrics.parquet")
    assert list(table.columns) == list(METRIC_COLUMNS)
    e = [1.0, 3.5, -1.0, 1.0, 0.5, -1.0]  # all usable residuals (K)
    a = _row(table, "all", "all")
    assert a["n"] == 6
    assert a["bias_k"] == pytest.approx(4.0 / 6.0, abs=1e-5)
    assert a["rmse_k"] == pytest.approx(np.sqrt(16.5 / 6.0), abs=1e-5)  # 1.6583 K
    assert a["mae_k"] == pytest.approx(8.0 / 6.0, abs=1e-5)
    assert a["ubrmse_k"] == pytest.approx(np.sqrt(16.5 / 6.0 - (4.0 / 6.0) ** 2), abs=1e-5)  # 1.5184 K
    assert a["ubrmse_k"] == pytest.approx(np.std(e), abs=1e-5)
    north, south = _row(table, "region", "north"), _row(table, "region", "south")
    assert north["n"] == 4 and north["bias_k"] == pytest.approx(1.125, abs=1e-5)
    assert north["rmse_k"] == pytest.approx(np.sqrt(15.25 / 4.0), abs=1e-5)  # 1.9526 K
    ins = np.array(INSITU["A1"] + INSITU["A2"])
    assert north["r2"] == pytest.approx(1.0 - 15.25 / np.sum((ins - ins.mean()) ** 2), abs=1e-5)  # -0.4186
    assert south["n"] == 2 and south["bias_k"] == pytest.approx(-0.25, abs=1e-5)
    assert south["rmse_k"] == pytest.approx(np.sqrt(0.625), abs=1e-5)
    for site, res in RESIDUALS.items():
        s = _row(table, "site", site)
        assert s["n"] == 2 and s["rmse_k"] == pytest.approx(np.sqrt(np.mean(np.square(res))), abs=1e-5), site
        assert s["bias_k"] == pytest.approx(np.mean(res), abs=1e-5), site
    assert summary["n_usable"] == 6 and summary["n_matchups"] == 9


def test_calibration_shares_count_residuals_within_one_and_two_sigma(validated):
    out, _ = validated
    table = pd.read_parquet(out / "metrics.parquet")
    a = _row(table, "all", "all")
    # |e| <= sigma: A1 1<=1.5 yes, 3.5<=1.5 no; A2 1<=2.5 yes, 1<=0.5 no; B1 0.5<=1 yes, 1<=0.5 no
    assert a["within_1sigma"] == pytest.approx(3 / 6)
    # |e| <= 2 sigma: only A1's 3.5 > 3
    assert a["within_2sigma"] == pytest.approx(5 / 6)
    sigmas = np.concatenate(list(SIGMAS.values()))
    assert a["rms_sigma_k"] == pytest.approx(np.sqrt(np.mean(sigmas**2)), abs=1e-5)
    assert _row(table, "region", "south")["within_1sigma"] == pytest.approx(0.5)
    assert _row(table, "site", "A2")["within_2sigma"] == pytest.approx(1.0)


def test_matchups_follow_the_training_rules_and_only_complete_time_steps(validated):
    out, _ = validated
    mu = pd.read_parquet(out / "matchups.parquet")
    assert list(mu.columns) == list(VALIDATION_COLUMNS)
    assert sorted(mu["site"].unique()) == ["A1", "A2", "B1"]  # the edge and far sites are not matched
    assert len(mu) == 9 and mu["time_utc"].max() == pd.Timestamp(TIMES[2])  # t3 never completed
    reason = {(r.site, r.time_utc): r.reason for r in mu.itertuples()}
    t = [pd.Timestamp(x) for x in TIMES]
    assert reason[("A1", t[1])] == "cloud"  # cloud at a neighbour: the training's 3 x 3 rule
    assert reason[("A2", t[0])] == "unstable"  # the radiometer's spread is above 1.5 K
    assert reason[("B1", t[2])] == "no coverage"
    assert (mu["reason"] == "ok").sum() == 6
    ok = mu[mu["reason"] == "ok"]
    np.testing.assert_allclose(ok["residual_k"], ok["lst"] - ok["lst_insitu"])
    assert ok[ok["site"] == "A1"]["cloud_adjacent"].tolist() == [False, False]
    assert mu.loc[(mu["site"] == "A1") & (mu["time_utc"] == t[1]), "cloud_adjacent"].item()
    np.testing.assert_allclose(ok.groupby("site")["lst_insitu"].apply(list).to_dict()["B1"], INSITU["B1"],
                               atol=1e-9)


def test_outputs_summary_and_plots_are_written(validated):
    out, summary = validated
    assert {p.name for p in out.iterdir()} == {"summary.md", "metrics.parquet", "matchups.parquet", "scatter.png",
                                               "timeseries.png", "calibration.parquet", "reliability.png"}
    text = (out / "summary.md").read_text()
    for section in ("## Overall", "## By region", "## By site", "## Uncertainty calibration"):
        assert section in text
    assert "| north | 4 | 1.953 | +1.125 |" in text and "| 6 |" in text
    assert "50.0%" in text and "83.3%" in text
    for png in ("scatter.png", "timeseries.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000, png
    assert {m["name"] for m in summary["metrics"]} == {"all", "north", "south"}
    assert not list(out.parent.glob(".out.tmp-*"))


def test_lst_metrics_unbiased_rmse_is_rmse_without_the_bias():
    m = lst_metrics([301.0, 299.0, 302.0], [300.0, 300.0, 300.0], [1.0, 1.0, 1.0])
    assert m["rmse_k"] == pytest.approx(np.sqrt(2.0)) and m["bias_k"] == pytest.approx(2 / 3)
    assert m["ubrmse_k"] == pytest.approx(np.sqrt(2.0 - 4 / 9))
    # residuals +1, -1, +2 with sigma 1: within +-1 sigma 2 of 3, within +-2 sigma all (bounds included)
    assert m["within_1sigma"] == pytest.approx(2 / 3) and m["within_2sigma"] == pytest.approx(1.0)
    empty = lst_metrics([], [], [])
    assert empty["n"] == 0 and np.isnan(empty["rmse_k"]) and np.isnan(empty["within_1sigma"])


def test_overwrite_replaces_an_existing_output_and_refuses_without_it(crafted, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(ValidateError, match="already exists"):
        validate(crafted["lst"], crafted["insitu"], crafted["sites"], out)
    assert (out / "old.txt").exists()
    validate(crafted["lst"], crafted["insitu"], crafted["sites"], out, overwrite=True)
    assert not (out / "old.txt").exists() and (out / "summary.md").exists()


def test_cli_validate_writes_the_outputs(crafted, tmp_path, capsys):
    from sftl_dask.cli import main

    out = tmp_path / "v"
    code = main(["validate", "--lst", str(crafted["store"]), "--insitu", str(crafted["insitu"]), "--sites",
                 str(crafted["sites"]), "--out", str(out), "--workers", "1"])
    assert code == 0
    assert "usable matchups" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) >= 2 and (out / "summary.md").stat().st_size > 0
    assert pd.read_parquet(out / "metrics.parquet")["n"].iloc[0] == 6


def _no_qc(crafted: dict[str, Path], tmp: Path) -> Path:
    import shutil

    import zarr

    store = tmp / "noqc" / "g.zarr"
    shutil.copytree(crafted["store"], store)
    group = zarr.open_group(str(store), mode="r+")
    del group["qc"]
    zarr.consolidate_metadata(str(store))
    return store.parent


def _bad(kind: str, crafted: dict[str, Path], tmp: Path) -> tuple[dict[str, Path], str]:
    """Arguments with one bad input, and what the error line must name."""
    args = {"lst": crafted["lst"], "insitu": crafted["insitu"], "sites": crafted["sites"], "out": tmp / "out"}
    if kind == "no LST store":
        (tmp / "empty").mkdir()
        args["lst"] = tmp / "empty"
        return args, f"{tmp / 'empty'}: no LST store here"
    if kind == "LST path missing":
        args["lst"] = tmp / "nowhere.zarr"
        return args, "nowhere.zarr: no such LST store"
    if kind == "store without qc":
        args["lst"] = _no_qc(crafted, tmp)
        return args, "has no variable 'qc'"
    if kind == "sites without lat":
        pd.read_csv(crafted["sites"]).drop(columns=["lat"]).to_csv(tmp / "s.csv", index=False)
        args["sites"] = tmp / "s.csv"
        return args, "s.csv: missing column(s) lat"
    if kind == "insitu missing":
        args["insitu"] = tmp / "nope"
        return args, "nope: no such in situ folder"
    if kind == "insitu empty":
        (tmp / "ins").mkdir()
        args["insitu"] = tmp / "ins"
        return args, "ins: in situ folder has no station files"
    if kind == "station file missing":
        import shutil

        shutil.copytree(crafted["insitu"], tmp / "ins2")
        (tmp / "ins2" / "B1.csv").unlink()
        args["insitu"] = tmp / "ins2"
        return args, "B1.csv: station file of site B1 not found"
    if kind == "corrupt store":
        bad = tmp / "broken" / "g.zarr"
        bad.mkdir(parents=True)
        (bad / ".zgroup").write_text("{ not json")
        args["lst"] = bad.parent
        return args, "g.zarr: not a readable LST store"
    if kind == "output exists":
        args["out"].mkdir()
        (args["out"] / "summary.md").write_text("earlier")
        return args, "out: already exists and is not empty"
    if kind == "output is a file":
        args["out"].write_text("x")
        return args, "out: exists and is not a folder"
    if kind == "output holds an input":
        args["out"] = crafted["lst"].parent
        return args, "holds the input"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no LST store", "LST path missing", "corrupt store", "store without qc",
                                  "sites without lat",
                                  "insitu missing", "insitu empty", "station file missing", "output exists",
                                  "output is a file", "output holds an input"])
def test_bad_input_exits_2_with_one_line_naming_it_and_writes_nothing(crafted, tmp_path, capsys, kind):
    from sftl_dask.cli import main

    args, named = _bad(kind, crafted, tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code = main(["validate", "--lst", str(args["lst"]), "--insitu", str(args["insitu"]), "--sites",
                 str(args["sites"]), "--out", str(args["out"])])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("sftl validate: error: ") and named in err[0], err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


# ---------------------------------------------------------------------------------------------
# the same model on the same rows gives the training's stage-3 figures


def test_validation_has_the_training_matchups_rows_and_their_scoring_on_a_small_cube(tmp_path, retrieval_model):
    """Fast: a scene cube with clouds, a partial swath and missing ancillary data; the training matchups scored as
    stage 3 scores them (the artifact on the matchup features, its error model for sigma) against validate on the
    LST that the same artifact retrieved."""
    import zarr
    from helpers import synthetic_cube

    from sftl_dask.features import compute_features, feature_matrix
    from sftl_dask.matchups import build_matchups
    from sftl_dask.models.artifact import load_artifact
    from sftl_dask.models.error_model import apply_error_model, coverage
    from sftl_dask.retrieve import retrieve
    from sftl_dask.training.stages import metrics

    cube = tmp_path / "cube" / "g.zarr"
    synthetic_cube(cube, 1, seed=0)
    synthetic_cube(cube, 1, seed=0, first=1, covered_from=30)  # columns < 30 outside the swath
    synthetic_cube(cube, 1, seed=4, first=2)
    g = zarr.open_group(str(cube), mode="r")
    cloud, times = g["cloud"][:], np.asarray(g["time"][:]).astype("datetime64[s]")
    surface = g["bt_11_95"][:] + 2.0 + 1.2 * g["wvc"][:]  # the synthetic scene's LST (K)
    # pixels: clear ones, one next to a cloud (not in it), one in a cloud, one missing ancillary, one out of swath
    near = np.argwhere((cloud[0, 1:-1, 1:-1] == 0) & (
        np.lib.stride_tricks.sliding_window_view(cloud[0], (3, 3)).max(axis=(2, 3)) == 1))[0] + 1
    inside = np.argwhere(cloud[0] == 1)[0]
    pixels = {"S01": (20, 40), "S02": (70, 70), "S03": (120, 100), "S04": (140, 130), "S05": (40, 110),
              "S06": (100, 50), "S07": (3, 9), "S08": (60, 10), "S09": tuple(near), "S10": tuple(inside)}
    rows = []
    for i, (site, (r, c)) in enumerate(pixels.items()):
        lon, lat = pixel_lonlat(int(r), int(c))
        rows.append({"id": site, "region": "target", "lon": lon, "lat": lat})
        truth = np.nan_to_num(surface[:, r, c], nan=300.0) + 0.4 * (i % 5) - 0.8  # radiometer offsets -0.8..0.8 K
        visits = [(str(t), float(v), 2.0 if (i, j) == (1, 2) else 0.0) for j, (t, v) in enumerate(zip(times, truth,
                                                                                                       strict=True))]
        write_station_csv(tmp_path / "insitu" / f"{site}.csv", site, lon, lat, visits)
    pd.DataFrame(rows).to_csv(tmp_path / "sites.csv", index=False)
    model = retrieval_model("dnn")

    # the training side: matchups on the scene cube, scored as stage 3 scores the target region
    mu = build_matchups(cube, tmp_path / "insitu", tmp_path / "sites.csv")
    tgt = mu[mu["reason"] == "ok"]
    p_sftl = load_artifact(model).predict(feature_matrix(tgt))
    y_tg = tgt["lst_insitu"].to_numpy(np.float32)
    sigma = apply_error_model(load_artifact(model).card["uncertainty"],
                              compute_features(tgt, names=("wvc", "emis_mean", "sec_vza")))
    train_fig, train_cal = metrics(p_sftl, y_tg), coverage(p_sftl - y_tg, sigma)

    # the validation side: the same artifact's LST cube
    retrieve(cube, model, tmp_path / "lst" / "g.zarr", threads=2, device="cpu")
    validate(tmp_path / "lst", tmp_path / "insitu", tmp_path / "sites.csv", tmp_path / "val")
    vmu = pd.read_parquet(tmp_path / "val" / "matchups.parquet")
    key = ["site", "time_utc"]
    both = mu[[*key, "reason"]].merge(vmu[[*key, "reason"]], on=key, suffixes=("_train", "_val"), validate="1:1")
    assert len(both) == len(mu) == len(vmu) == 30
    assert (both["reason_train"] == both["reason_val"]).all(), both[both["reason_train"] != both["reason_val"]]
    assert {"ok", "cloud", "no coverage", "ancillary missing", "unstable"} <= set(both["reason_train"])
    assert both.set_index("site").loc["S09", "reason_train"].iloc[0] == "cloud"  # the 3 x 3 rule
    m = _row(pd.read_parquet(tmp_path / "val" / "metrics.parquet"), "all", "all")
    assert int(m["n"]) == train_fig["n"] == len(tgt) >= 15
    for k in ("rmse_k", "bias_k", "mae_k"):
        assert abs(float(m[k]) - train_fig[k]) < 0.01, k
    assert float(m["within_1sigma"]) == pytest.approx(train_cal["within_1sigma"])
    assert float(m["within_2sigma"]) == pytest.approx(train_cal["within_2sigma"])


STAGE3 = {
    "name": "val", "direction": "SiHuHe", "source_region": "huailai", "target_region": "heihe", "seed": 0,
    "model": {"name": "dnn", "params": {"hidden": [32, 16]}},
    "pretrain": {"epochs": 2, "batch_size": 4096, "lr": 0.003, "holdout_fraction": 0.2},
    "finetune": {"strategy": "full", "epochs": 4, "lr": 0.001, "split": "chronological", "test_fraction": 0.3},
    "transfer": {"k": [], "repeats": 1},
    "data": {"testbed": {"path": None, "scenes": 4, "size": 640, "seed": 2, "layout": "map"},
             "simulation": {"path": None, "profiles": 40, "seed": 0}},
}


@pytest.fixture(scope="module")
def stage3(tmp_path_factory, tiny_training) -> tuple[dict, pd.DataFrame, Path]:
    """Train a small model (the three stages), retrieve the target region's cube with it, validate that.

    The testbed of ``STAGE3`` (4 scenes per region, 640 px, seed 2) is the session's tiny training's (read only)."""
    from sftl_dask.io.cube import cube_stores, open_cube
    from sftl_dask.io.insitu import read_sites
    from sftl_dask.matchups import site_pixels
    from sftl_dask.pipelines.data import prepare_data
    from sftl_dask.retrieve import retrieve
    from sftl_dask.training.stages import load_config, run_stages

    root = tmp_path_factory.mktemp("stage3")
    testbed = {"path": str(tiny_training[0] / "work" / "testbed")}
    (root / "cfg.yaml").write_text(yaml.safe_dump(dict(STAGE3, data={**STAGE3["data"], "testbed": testbed})))
    cfg = load_config(root / "cfg.yaml")
    data = prepare_data(cfg, root / "work")
    results = run_stages(cfg, data, root / "train", threads=1, log=lambda *_: None)
    tb = data["testbed"]
    sites = read_sites(tb / "sites.csv")
    target = sites[sites["region"] == cfg.target_region]
    stores = [s for s in cube_stores(root / "work" / "cube").values()
              if len(site_pixels(target, (ds := open_cube(s)).rio.crs, ds["x"].values, ds["y"].values))]
    assert len(stores) == 1
    retrieve(stores[0], root / "train" / "model", root / "lst" / stores[0].name, threads=2, device="cpu")
    validate(root / "lst", tb / "insitu", tb / "sites.csv", root / "val")
    return results, pd.read_parquet(root / "val" / "metrics.parquet"), root


@pytest.mark.slow
def test_validate_reproduces_the_training_stage3_figures_within_0_01_k(stage3):
    results, table, root = stage3
    s3 = results["stage3_transfer"]
    zero = s3["zero_shot"]
    cal = s3["uncertainty_calibration"]["target_insitu"]
    m = _row(table, "region", "heihe")
    figures = {k: (float(m[k]), float(zero[k])) for k in ("rmse_k", "bias_k", "mae_k")}
    (root / "stage3_vs_validate.json").write_text(json.dumps(
        {"n": [int(m["n"]), zero["n"]], **figures, "within_1sigma": [float(m["within_1sigma"]), cal["within_1sigma"]],
         "within_2sigma": [float(m["within_2sigma"]), cal["within_2sigma"]], "r2": [float(m["r2"]), zero["r2"]]}))
    assert int(m["n"]) == zero["n"] == cal["n"] >= 5  # the same rows
    for k, (got, want) in figures.items():
        assert abs(got - want) < 0.01, (k, got, want)
    assert abs(float(m["r2"]) - zero["r2"]) < 1e-3
    # the uncertainty is the artifact's error model on the same pixels: the same shares (a residual within
    # float32 rounding of a sigma boundary could flip one row)
    assert abs(float(m["within_1sigma"]) - cal["within_1sigma"]) <= 1.0 / zero["n"] + 1e-9
    assert abs(float(m["within_2sigma"]) - cal["within_2sigma"]) <= 1.0 / zero["n"] + 1e-9
    assert float(m["rms_sigma_k"]) == pytest.approx(cal["rms_sigma_k"], abs=0.01)


def test_pixel_series_equal_xarray_selections_per_pixel_on_several_tiles_steps_and_chunks(tmp_path):
    """The pixel tasks read each variable once per group of sites sharing a chunk, at the numpy level: every
    matchup's lst, lst_uncertainty (here CF-scaled), vza, qc and 3 x 3 spread equal, bit for bit, what the
    xarray selections per pixel (the way they were read before) give, on two tiles of 6 steps in chunks of 8 px
    with shuffled times, an incomplete step, NaNs, sites sharing chunks and neighbourhoods across chunk edges."""
    import zarr

    from sftl_dask.io.stores import open_store
    from sftl_dask.validate import check_validation, validation_matchups

    rng = np.random.default_rng(7)
    times = np.array(["2022-06-17T03:30", "2022-06-01T03:30", "2022-07-19T03:30", "2022-07-03T03:30",
                      "2022-08-04T03:30", "2022-05-16T03:30"], dtype="datetime64[ns]")  # not in time order
    origins = {"a": (400_000.0, 4_500_000.0), "b": (400_800.0, 4_499_200.0)}  # b: 20 px right of and below a
    pixels = {"a": {"P1": (3, 4), "P2": (5, 6), "P3": (7, 7), "P4": (12, 9)},  # P3 and P4: across chunk edges
              "b": {"Q1": (8, 15), "Q2": (10, 10), "Q3": (17, 2)}}
    sites = []
    for tile, origin in origins.items():
        shape = (times.size, 20, 20)
        lst = 290.0 + 20.0 * rng.random(shape)
        lst[rng.random(shape) < 0.15] = np.nan  # gaps: cloud, not covered
        unc = np.where(np.isnan(lst), np.nan, 0.5 + 2.0 * rng.random(shape))
        qc = rng.integers(0, 1 << 10, shape).astype(np.uint16)
        store = lst_store_from_arrays(tmp_path / "lst" / f"{tile}.zarr", times, lst, unc, qc, origin=origin,
                                      complete=np.array([True, True, True, False, True, True]))
        group = zarr.open_group(str(store), mode="r+")
        group["vza"][...] = (40.0 * rng.random(shape)).astype(np.float32)
        if tile == "b":  # a CF-scaled variable, as another writer might store it
            group["lst_uncertainty"].attrs.update({"scale_factor": 0.5, "add_offset": 0.25})
        zarr.consolidate_metadata(str(store))
        for site, (r, c) in pixels[tile].items():
            lon, lat = pixel_lonlat(r, c, origin)
            sites.append({"id": site, "region": tile, "lon": lon, "lat": lat})
            write_station_csv(tmp_path / "insitu" / f"{site}.csv", site, lon, lat,
                              [(str(t), 300.0, 0.0) for t in np.sort(times)])
    pd.DataFrame(sites).to_csv(tmp_path / "sites.csv", index=False)

    plan = check_validation(tmp_path / "lst", tmp_path / "insitu", tmp_path / "sites.csv", tmp_path / "val")
    table, _ = validation_matchups(plan, tmp_path / "insitu")
    assert len(table) == 7 * 5  # 7 sites x 5 complete steps
    for tile, site_pixels in pixels.items():
        ds = open_store(tmp_path / "lst" / f"{tile}.zarr", chunks=None)
        done = np.flatnonzero(ds["retrieve_ok"].values)
        order = done[np.argsort(ds["time"].values[done], kind="stable")]
        for site, (r, c) in site_pixels.items():
            rows = table[table["site"] == site]
            np.testing.assert_array_equal(rows["time_utc"].to_numpy(), ds["time"].values[order])
            px = ds.isel(time=order, y=r, x=c)
            for col, var in (("lst", "lst"), ("lst_uncertainty", "lst_uncertainty"), ("vza", "vza"), ("qc", "qc")):
                np.testing.assert_array_equal(rows[col].to_numpy(np.float64), px[var].values.astype(np.float64),
                                              err_msg=f"{site} {col}")
            window = ds["lst"].isel(time=order, y=slice(r - 1, r + 2), x=slice(c - 1, c + 2)).values
            window = window.reshape(order.size, 9).astype(np.float64)
            spread = np.array([np.nanstd(w, ddof=1) if np.isfinite(w).sum() >= 2 else np.nan for w in window])
            np.testing.assert_array_equal(rows["lst_spread_3x3"].to_numpy(), spread, err_msg=site)
        if tile == "b":  # the scaling applied (as xarray applies it: in float32)
            raw = zarr.open_group(str(tmp_path / "lst" / "b.zarr"), mode="r")["lst_uncertainty"][order, 10, 10]
            np.testing.assert_allclose(table[table["site"] == "Q2"]["lst_uncertainty"].to_numpy(),
                                       raw.astype(np.float64) * 0.5 + 0.25, rtol=1e-6)


def test_figures_drawn_on_a_cluster_equal_those_drawn_in_process_byte_for_byte(crafted, validated, client, tmp_path):
    """With a client the three figures are drawn at once on the workers and their PNG bytes written by the
    caller: every output file equals the in-process run's, byte for byte (summary.md aside: it says the seconds)."""
    out, _ = validated
    validate(crafted["lst"], crafted["insitu"], crafted["sites"], tmp_path / "val", client=client)
    for name in ("timeseries.png", "reliability.png", "scatter.png", "matchups.parquet", "metrics.parquet",
                 "calibration.parquet"):
        assert (tmp_path / "val" / name).read_bytes() == (out / name).read_bytes(), name
