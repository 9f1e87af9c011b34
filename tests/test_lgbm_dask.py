"""LGBM.fit_dask: lightgbm.dask on a simulation table read by the workers, against the in-memory fit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from helpers import simulation_xy, small_simulation

from sftl_dask.models.artifact import export_artifact, load_artifact
from sftl_dask.models.trees import LGBM, _early_stopping_iteration
from sftl_dask.simulate import SimulationConfig, write_simulation
from sftl_dask.training.distributed import read_simulation_on_workers


def _fit_dask(model: LGBM, sim: Path, client, **kw) -> dict:
    """The table read on the workers (training/), then boosted there (models/)."""
    return model.fit_dask(read_simulation_on_workers(sim, client=client, **kw), client=client)

N_PROFILES = 60
HELD = tuple(range(0, N_PROFILES, 5))  # every fifth profile is held out
PARAMS = {"n_estimators": 200, "seed": 0}


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """7,200 rows in 3 Parquet files (20 profiles each)."""
    return small_simulation(tmp_path_factory.mktemp("lgbm_dask") / "sim", N_PROFILES, seed=0)


@pytest.fixture(scope="module")
def table(sim) -> dict[str, np.ndarray]:
    x, y32, held = simulation_xy(sim, HELD)
    y = y32.astype(np.float64)
    return {"x": x, "y": y, "xtr": x[~held], "ytr": y[~held], "xte": x[held], "yte": y[held]}


@pytest.fixture(scope="module")
def fitted(sim, client) -> tuple[LGBM, dict]:
    model = LGBM(12, **PARAMS)
    hist = _fit_dask(model, sim, client, holdout_profiles=HELD)
    return model, hist


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def test_dask_training_is_as_accurate_as_in_memory_training_on_held_out_profiles(fitted, table):
    model, hist = fitted
    mem = LGBM(12, **PARAMS)
    mem_hist = mem.fit(table["xtr"], table["ytr"], val=(table["xte"], table["yte"]))
    assert hist["n_trees"] == 200
    assert hist["n_train"] == mem_hist["n_train"] == table["ytr"].size
    assert hist["n_val"] == table["yte"].size
    assert hist["val_rmse_k"] == pytest.approx(_rmse(model.predict(table["xte"]), table["yte"]), rel=1e-6)
    assert hist["train_rmse_k"] == pytest.approx(_rmse(model.predict(table["xtr"]), table["ytr"]), rel=1e-4)
    assert hist["val_rmse_k"] <= 1.3 * mem_hist["val_rmse_k"]
    assert hist["val_rmse_k"] < 0.1 * table["y"].std()
    assert hist["seconds"] > 0


def test_both_workers_hold_data_and_train_as_two_lightgbm_machines(fitted, client):
    model, hist = fitted
    workers = set(client.scheduler_info()["workers"])
    assert set(hist["rows_per_worker"]) == workers
    assert all(n > 0 for n in hist["rows_per_worker"].values())
    assert sum(hist["rows_per_worker"].values()) == hist["n_train"]
    assert hist["n_workers"] == 2 and hist["n_partitions"] == 3
    assert "[num_machines: 2]" in model.model_to_string()


def test_a_single_file_is_split_into_row_ranges_so_every_worker_trains(tmp_path, client):
    path = tmp_path / "one"
    write_simulation(path, SimulationConfig(n_profiles=6, n_spectra=5, seed=1))
    assert len(list(path.glob("part-*.parquet"))) == 1
    model = LGBM(12, n_estimators=5, min_child_samples=5)
    hist = _fit_dask(model, path, client)
    assert hist["n_partitions"] == 2 and hist["n_workers"] == 2 and hist["n_train"] == 6 * 5 * 3 * 2
    assert hist["val_rmse_k"] is None and hist["n_val"] == 0
    assert _fit_dask(model, path, client, partitions=5)["n_partitions"] == 5


def test_dask_model_fine_tunes_and_exports_like_an_in_memory_one(fitted, table, sim, tmp_path):
    import lightgbm as lgb

    base, _ = fitted
    model = LGBM(12, **PARAMS)
    model.booster = lgb.Booster(model_str=base.model_to_string())  # leave the shared fixture untouched
    x_ft, y_ft = table["xte"], table["yte"] + 2.0
    before = _rmse(model.predict(x_ft), y_ft)
    hist = model.finetune(x_ft, y_ft, n_more=20)
    assert hist["added_trees"] == 20 and model.n_trees == 220
    assert _rmse(model.predict(x_ft), y_ft) < before
    card = {"model": "lgbm", "strategy": "continued", "stages": ["pretrain: simulation (lightgbm.dask)"],
            "training_tables": {"simulation": {"path": str(sim), "sha256": hashlib.sha256(b"sim").hexdigest()}}}
    loaded = load_artifact(export_artifact(model, tmp_path / "art", card))
    assert loaded.model.current_iteration() == 220
    assert np.abs(loaded.predict(table["x"]) - model.predict(table["x"])).max() <= 1e-4
    assert loaded.card["export_check"]["max_abs_diff_k"] <= 1e-4


def test_early_stopping_cuts_where_lightgbm_would(table, sim, client):
    fast = {"n_estimators": 400, "learning_rate": 0.3, "seed": 0}
    full = LGBM(12, **fast)
    full.fit(table["xtr"], table["ytr"])
    stopped = LGBM(12, early_stopping_rounds=10, **fast)
    stopped.fit(table["xtr"], table["ytr"], val=(table["xte"], table["yte"]))
    assert stopped.n_trees < 400
    # the replay used after distributed training agrees with lightgbm's own callback
    assert _early_stopping_iteration(full.booster, table["xte"], table["yte"], 10) == stopped.n_trees
    model = LGBM(12, early_stopping_rounds=10, **fast)
    hist = _fit_dask(model, sim, client, holdout_profiles=HELD)
    assert hist["n_trees"] == model.n_trees < 400


def _copy_table(src: Path, dst: Path, change) -> Path:
    dst.mkdir()
    for f in sorted(src.glob("part-*.parquet")):
        pq.write_table(change(pq.read_table(f)), dst / f.name)
    return dst


def _drop_wvc(t):
    return t.drop_columns(["wvc"])


def _nan_bt(t):
    import pyarrow as pa

    bt = t.column("bt_10_80").to_numpy().copy()
    bt[3] = np.nan
    return t.set_column(t.schema.get_field_index("bt_10_80"), "bt_10_80", pa.array(bt))


def test_bad_tables_raise_value_errors_naming_path_and_column(sim, tmp_path, client):
    model = LGBM(12, n_estimators=5)
    with pytest.raises(ValueError, match=r"nowhere.*no such simulation table"):
        _fit_dask(model, tmp_path / "nowhere", client)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty.*no Parquet files"):
        _fit_dask(model, tmp_path / "empty", client)
    no_wvc = _copy_table(sim, tmp_path / "no_wvc", _drop_wvc)
    with pytest.raises(ValueError, match=r"no_wvc.*missing column\(s\) wvc"):
        _fit_dask(model, no_wvc, client)
    nan = _copy_table(sim, tmp_path / "nan", _nan_bt)
    with pytest.raises(ValueError, match=r"nan/part-\d+\.parquet.*bt_10_80.*non-finite"):
        _fit_dask(model, nan, client)
    with pytest.raises(ValueError, match=r"sim.*no training rows left after holding out 60 profile"):
        _fit_dask(model, sim, client, holdout_profiles=range(N_PROFILES))
    with pytest.raises(ValueError, match="partitions must be >= 1"):
        _fit_dask(model, sim, client, partitions=0)
    with pytest.raises(ValueError, match="all 12 features"):
        _fit_dask(LGBM(11), sim, client)


def test_a_client_without_workers_is_refused_naming_the_scheduler(sim):
    """The partitions are pinned to workers: with none (all lost, or not yet registered) the read is refused in
    words, not with ``min() arg is an empty sequence`` (seen under load before the embedded cluster waited for
    its workers to register)."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster, set_as_default=False) as empty:
        with pytest.raises(ValueError, match=rf"the Dask client \({cluster.scheduler_address}\) has no workers"):
            read_simulation_on_workers(sim, client=empty)

