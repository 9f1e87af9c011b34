"""Data-parallel pre-training across Dask workers: gradients averaged, learning, sharding, input errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import simulation_xy, small_simulation

from sftl_dask.features import REQUIRED_INPUTS
from sftl_dask.simulate import SimulationConfig, plan_row_ranges, write_simulation
from sftl_dask.training.distributed import DistributedSettings, _devices, _shard_labels, pretrain_distributed

N_PROFILES = 80
HELD = list(range(0, N_PROFILES, 5))  # 16 held-out profiles, spread over every part file
PARAMS: dict[str, Any] = {"hidden": [64, 64]}
FIT: dict[str, Any] = {"epochs": 15, "batch_size": 1024, "lr": 3e-3}


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """4 part files of 20 profiles (9600 rows)."""
    return small_simulation(tmp_path_factory.mktemp("dist") / "sim.parquet", N_PROFILES, seed=1)


@pytest.fixture(scope="module")
def data(sim) -> dict[str, np.ndarray]:
    x, y, held = simulation_xy(sim, HELD)
    return {"x": x, "y": y, "held": held}


def _rmse(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    from sftl_dask.models.trainer import predict_torch

    return float(np.sqrt(np.mean((predict_torch(model, x).astype(np.float64) - y) ** 2)))


def test_two_ranks_average_gradients_and_learn_as_well_as_one_process(sim, data, client):
    import torch

    from sftl_dask.models import build_model
    from sftl_dask.models.trainer import fit_torch

    logs: list[dict] = []
    model, hist = pretrain_distributed(DistributedSettings("dnn", model_params=PARAMS, holdout_profiles=HELD,
                                                           timeout_s=60, **FIT), sim, client=client,
                                       progress=logs.append)
    x, y, held = data["x"], data["y"], data["held"]
    # every rank ends with bit-identical parameters although the shards differ: gradients were averaged
    assert hist["world_size"] == 2 and hist["backend"] == "gloo"
    assert len(hist["param_checksums"]) == 2 and len(set(hist["param_checksums"])) == 1
    # the data were split, not copied; normalisation is global over the training rows
    assert hist["rows_per_rank"] == [3840, 3840] and hist["n_train"] == int((~held).sum())
    assert hist["n_val"] == int(held.sum())
    x64, y64 = x[~held].astype(np.float64), y[~held].astype(np.float64)
    assert float(model.norm.y_mean) == pytest.approx(y64.mean(), rel=1e-6)
    assert float(model.norm.y_std) == pytest.approx(y64.std(), rel=1e-5)
    np.testing.assert_allclose(model.norm.x_mean.numpy(), x64.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(model.norm.x_std.numpy(), x64.std(axis=0) + 1e-6, rtol=1e-5)
    # the returned model is the best epoch's, and its validation RMSE is the all-reduced one
    rmse = _rmse(model, x[held], y[held])
    assert rmse == pytest.approx(hist["best_val_rmse_k"], rel=1e-4)
    assert hist["val_rmse_k"][hist["best_epoch"]] == hist["best_val_rmse_k"]
    assert [e["epoch"] for e in logs] == hist["epoch"]
    # it learns: well below the spread of LST, and as well as the single-process loop on the same data
    torch.manual_seed(0)
    ref = build_model("dnn", x.shape[1], x[~held].mean(0), x[~held].std(0) + 1e-6,
                      target_mean=float(y[~held].mean()), target_std=float(y[~held].std()), **PARAMS)
    ref_hist = fit_torch(ref, x[~held], y[~held], val=(x[held], y[held]), seed=0, threads=1, **FIT)
    assert rmse < 0.1 * float(y.std())
    assert rmse < 1.5 * ref_hist["best_val_rmse_k"]


def test_world_size_one(sim, data, client):
    model, hist = pretrain_distributed(DistributedSettings("dnn", model_params=PARAMS, holdout_profiles=HELD,
                                                           n_workers=1, epochs=3, batch_size=1024, lr=3e-3,
                                                           timeout_s=60), sim, client=client)
    assert hist["world_size"] == 1 and len(hist["param_checksums"]) == 1 and hist["rows_per_rank"] == [7680]
    x, y, held = data["x"], data["y"], data["held"]
    assert _rmse(model, x[held], y[held]) < float(y.std())


def test_cnn_with_a_structurally_unused_parameter_trains(sim, client):
    # CNN's empty CLS token gets no gradient: DDP would wait for it forever; it stays as initialised
    model, hist = pretrain_distributed(DistributedSettings("cnn", model_params={"channels": 8, "n_blocks": 1},
                                                           epochs=1, batch_size=2048, holdout_profiles=HELD,
                                                           timeout_s=60), sim, client=client)
    assert len(set(hist["param_checksums"])) == 1 and np.isfinite(hist["best_val_rmse_k"])
    assert model.stem.cls.numel() == 0


def test_fewer_part_files_than_workers_shards_by_rows(tmp_path, client):
    path = tmp_path / "one.parquet"
    write_simulation(path, SimulationConfig(n_profiles=10, n_spectra=10, batch_profiles=10, seed=2))  # 1 file
    part = str(path / "part-00000.parquet")
    plan = plan_row_ranges(path, 2)
    assert plan == [[(part, 0, 300)], [(part, 300, 600)]]
    assert _shard_labels(str(path), plan)[1] == f"{path} (rank 1: part-00000.parquet rows 300-600)"
    _, hist = pretrain_distributed(DistributedSettings("dnn", model_params={"hidden": [16]}, epochs=2,
                                                       batch_size=128, holdout_profiles=[9], timeout_s=60),
                                   path, client=client)
    assert hist["rows_per_rank"] == [300, 240] and len(set(hist["param_checksums"])) == 1
    assert hist["steps_per_epoch"] == 4  # the smaller shard's: every rank takes the same steps


def test_plan_balances_part_files_by_rows(sim):
    plan = plan_row_ranges(sim, 3)
    files = [[Path(f).name for f, _, _ in ranges] for ranges in plan]
    assert files == [["part-00000.parquet", "part-00003.parquet"], ["part-00001.parquet"], ["part-00002.parquet"]]
    assert all((start, stop) == (0, 2400) for ranges in plan for _, start, stop in ranges)  # whole files
    assert _shard_labels(str(sim), plan)[1] == f"{sim} (rank 1: part-00001.parquet)"


def _gpu(host: str, n: int, gpu0: str | None) -> dict[str, Any]:
    return {"host": host, "pid": 1, "n_gpu": n, "gpu0": gpu0}


@pytest.mark.parametrize(
    ("infos", "backend", "expected"),
    [([_gpu("a", 0, None)] * 2, "auto", ("gloo", [None, None])),
     ([_gpu("a", 1, "u0")] * 2, "auto", ("gloo", [None, None])),  # two ranks cannot share one GPU under NCCL
     ([_gpu("a", 2, "u0")] * 2, "auto", ("nccl", [0, 1])),  # every worker sees both GPUs
     ([_gpu("a", 2, "u0"), _gpu("a", 2, "u1")], "auto", ("nccl", [0, 0])),  # one GPU each (CUDA_VISIBLE_DEVICES)
     ([_gpu("a", 1, "u0"), _gpu("b", 1, "u0")], "auto", ("nccl", [0, 0])),  # one GPU per host
     ([_gpu("a", 2, "u0")] * 2, "gloo", ("gloo", [None, None]))],
)
def test_backend_choice_gives_each_nccl_rank_a_gpu_of_its_own(infos, backend, expected):
    assert _devices(infos, backend) == expected


def test_nccl_without_a_gpu_per_rank_is_refused():
    with pytest.raises(ValueError, match="one GPU per rank"):
        _devices([_gpu("a", 1, "u0")] * 2, "nccl")


class _NoWorkers:
    def scheduler_info(self, **_: Any) -> dict:
        return {"workers": {}}


def _table_without_lst(path: Path) -> Path:
    path.mkdir()
    cols = {k: pa.array(np.full(4, 300.0 if k.startswith("bt") else 0.9, dtype=np.float32)) for k in REQUIRED_INPUTS}
    table = pa.table({**cols, "profile_id": pa.array(np.arange(4, dtype=np.int32))})
    pq.write_table(table, path / "part-00000.parquet")
    return path


@pytest.mark.parametrize(
    ("case", "match"),
    [("missing_dir", r"nope\.parquet: simulation table directory not found"),
     ("no_parts", r"empty: no Parquet part files"),
     ("no_lst", r"part-00000\.parquet: missing column\(s\) lst"),
     ("all_held", r"sim\.parquet \(rank \d: part-0000\d\.parquet, part-0000\d\.parquet\): empty shard"),
     ("too_many", r"n_workers=3 but the cluster has 2 worker"),
     ("no_workers", r"no workers"),
     ("tree_model", r"'lgbm' is not a torch model")],
)
def test_bad_inputs_name_the_path_or_column(sim, client, tmp_path, case, match):
    kw: dict[str, Any] = {"epochs": 1, "timeout_s": 30}
    run = client
    path: Path = sim
    name = "dnn"
    if case == "missing_dir":
        path = tmp_path / "nope.parquet"
    elif case == "no_parts":
        path = tmp_path / "empty"
        path.mkdir()
        (path / "_common_metadata").write_bytes(b"")
    elif case == "no_lst":
        path = _table_without_lst(tmp_path / "nolst")
    elif case == "all_held":
        kw["holdout_profiles"] = range(N_PROFILES)
    elif case == "too_many":
        kw["n_workers"] = 3
    elif case == "no_workers":
        run = _NoWorkers()
    else:
        name = "lgbm"
    with pytest.raises(ValueError, match=match):
        pretrain_distributed(DistributedSettings(name, **kw), path, client=run)
