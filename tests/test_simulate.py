"""The simulation table: size, determinism, radiative consistency, metadata, Dask path, reading in parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from sftl_dask.features import REQUIRED_INPUTS, feature_matrix
from sftl_dask.physics.channels import THERMAL_NAMES
from sftl_dask.physics.planck import band_planck
from sftl_dask.physics.profiles import generate_profiles
from sftl_dask.simulate import (
    TRAINING_COLUMNS,
    SimulationConfig,
    plan_row_ranges,
    read_simulation_columns,
    read_simulation_metadata,
    read_training_rows,
    simulate_batch,
    simulation_parts,
    write_simulation,
)


@pytest.fixture(scope="module")
def batch() -> tuple[SimulationConfig, pd.DataFrame]:
    cfg = SimulationConfig(n_profiles=30, n_spectra=20, seed=3)
    profs = generate_profiles(30, seed=3)
    return cfg, simulate_batch(profs, list(range(30)), cfg)


def test_default_configuration_gives_at_least_the_papers_430596_samples():
    assert SimulationConfig().expected_rows() >= 430_596


def test_rows_are_profiles_x_spectra_x_angles_x_draws(batch):
    cfg, df = batch
    assert len(df) == 30 * 20 * 3 * 2 == cfg.expected_rows()
    assert df.groupby(["profile_id", "spectrum_id", "vza"]).size().eq(2).all()
    assert not df.isna().any().any()


def test_lst_offsets_follow_the_bottom_air_temperature(batch):
    cfg, df = batch
    off = df["lst"] - df["t_air"]
    cold = df["t_air"] < cfg.cold_below_k
    assert off[cold].between(*cfg.offset_cold_k).all()
    assert off[~cold].between(*cfg.offset_warm_k).all()


def test_brightness_temperatures_are_radiatively_consistent_within_sensor_noise(batch):
    _, df = batch
    resid = []
    for c, name in enumerate(THERMAL_NAMES):
        s = name[3:]
        bp = band_planck()[c]
        rad = df[f"tau_{s}"] * (df[f"emis_{s}"] * bp.radiance(df["lst"]) + (1 - df[f"emis_{s}"]) * df[f"ldown_{s}"])
        rad = rad + df[f"lup_{s}"]
        resid.append(df[name].to_numpy() - bp.brightness_temperature(rad.to_numpy()))
    resid = np.concatenate(resid)
    assert abs(resid.mean()) < 0.02
    assert resid.std() == pytest.approx(0.2, rel=0.1)  # NEdT 0.2 K


def test_split_window_difference_grows_with_water_vapour(batch):
    _, df = batch
    dbt = df["bt_10_80"] - df["bt_11_95"]
    assert np.corrcoef(df["wvc"], dbt)[0, 1] > 0.3


def test_batching_does_not_change_the_numbers():
    cfg = SimulationConfig(n_profiles=6, n_spectra=4, seed=1)
    profs = generate_profiles(6, seed=1)
    whole = simulate_batch(profs, list(range(6)), cfg)
    parts = pd.concat([simulate_batch(profs[:2], [0, 1], cfg), simulate_batch(profs[2:], [2, 3, 4, 5], cfg)],
                      ignore_index=True)
    pd.testing.assert_frame_equal(whole, parts)


def test_dataset_written_through_dask_equals_local_and_carries_config(tmp_path):
    from sftl_dask.cluster import get_client

    cfg = SimulationConfig(n_profiles=8, n_spectra=5, seed=2, batch_profiles=3)
    n_local = write_simulation(tmp_path / "local.parquet", cfg)
    with get_client(n_workers=1) as client:
        n_dask = write_simulation(tmp_path / "dask.parquet", cfg, client=client)
    a = ds.dataset(tmp_path / "local.parquet").to_table().to_pandas().sort_values(["profile_id", "spectrum_id",
                                                                                 "vza", "lst"])
    b = ds.dataset(tmp_path / "dask.parquet").to_table().to_pandas().sort_values(["profile_id", "spectrum_id",
                                                                                "vza", "lst"])
    assert n_local == n_dask == len(a) == 8 * 5 * 3 * 2
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    meta = read_simulation_metadata(tmp_path / "dask.parquet")
    assert meta["config"]["seed"] == 2 and meta["units"]["wvc"] == "g cm-2" and len(meta["spectra"]) == 5


def test_existing_output_is_not_overwritten_silently(tmp_path):
    (tmp_path / "t.parquet").mkdir()
    with pytest.raises(FileExistsError, match=r"t\.parquet"):
        write_simulation(tmp_path / "t.parquet", SimulationConfig(n_profiles=1, n_spectra=1))


def test_failed_batch_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import sftl_dask.simulate as sim

    def boom(*a, **k):
        raise ValueError("synthetic failure")

    monkeypatch.setattr(sim, "simulate_batch", boom)
    with pytest.raises(ValueError, match="synthetic failure"):
        sim.write_simulation(tmp_path / "t.parquet", SimulationConfig(n_profiles=2, n_spectra=1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_profiles": 0}, "n_profiles"), ({"vza_deg": (0.0, 80.0)}, "vza_deg"),
     ({"offset_warm_k": (5.0, -5.0)}, "offset_warm_k"), ({"nedt_k": (0.1,)}, "nedt_k")],
)
def test_bad_configuration_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimulationConfig(**kwargs)


def test_metadata_reader_refuses_foreign_parquet(tmp_path):
    pd.DataFrame({"a": [1]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="no sftl_dask simulation metadata"):
        read_simulation_metadata(tmp_path / "x.parquet")


def test_split_window_fitted_on_simulation_is_under_1_k_below_3_g_cm2_on_held_out_profiles():
    from sftl_dask.simulate import fit_split_window_on_simulation

    cfg = SimulationConfig(n_profiles=160, n_spectra=30, seed=4)
    df = simulate_batch(generate_profiles(160, seed=4), list(range(160)), cfg)
    coeffs = fit_split_window_on_simulation({c: df[c].to_numpy() for c in df.columns if c != "category"}, seed=0)
    low = [w for w in coeffs.to_dict()["windows"] if w["wvc_min"] < 3.0 and w.get("rmse_holdout_k") is not None
           and w.get("n_holdout", 0) >= 50]
    assert low and max(w["rmse_holdout_k"] for w in low) < 1.0


# --- reading the table in parts on workers: simulation_parts, plan_row_ranges, read_training_rows -----------
def _part(path: Path, n: int, *, first_profile: int = 0, row_group_size: int | None = None,
          drop: tuple[str, ...] = (), **values: np.ndarray) -> Path:
    """Write a Parquet part of ``n`` rows with valid training inputs, 5 rows per profile (``profile_id``)."""
    rng = np.random.default_rng([n, first_profile])
    cols: dict[str, np.ndarray] = {k: rng.uniform(lo + (hi - lo) / 4, hi - (hi - lo) / 4, n).astype(np.float32)
                                   for k, (lo, hi, _) in REQUIRED_INPUTS.items()}
    cols["lst"] = rng.uniform(280.0, 320.0, n).astype(np.float32)
    cols["profile_id"] = (first_profile + np.arange(n) // 5).astype(np.int32)
    cols.update(values)
    pq.write_table(pa.table({k: v for k, v in cols.items() if k not in drop}), path, row_group_size=row_group_size)
    return path


def _table(root: Path, rows: list[int], **kw) -> Path:
    root.mkdir()
    first = 0
    for i, n in enumerate(rows):
        _part(root / f"part-{i:05d}.parquet", n, first_profile=first, **kw)
        first += -(-n // 5)
    return root


def _covers_each_row_once(plan: list[list[tuple[str, int, int]]], rows: dict[str, int]) -> bool:
    seen = {f: np.zeros(n, dtype=int) for f, n in rows.items()}
    for ranges in plan:
        for f, a, b in ranges:
            seen[f][a:b] += 1
    return all((s == 1).all() for s in seen.values())


def test_simulation_parts_are_the_data_files_of_a_directory_or_one_file(tmp_path):
    root = _table(tmp_path / "sim", [10, 10])
    (root / "_common_metadata").write_bytes(b"")
    (root / ".part-00002.parquet").write_bytes(b"")
    assert [p.name for p in simulation_parts(root)] == ["part-00000.parquet", "part-00001.parquet"]
    assert simulation_parts(root / "part-00001.parquet") == [root / "part-00001.parquet"]


def test_plan_deals_whole_files_largest_first_onto_the_part_with_fewest_rows(tmp_path):
    root = _table(tmp_path / "sim", [100, 60, 50, 40])
    f = [str(root / f"part-{i:05d}.parquet") for i in range(4)]
    assert plan_row_ranges(root, 2) == [[(f[0], 0, 100), (f[3], 0, 40)], [(f[1], 0, 60), (f[2], 0, 50)]]
    assert plan_row_ranges(root, 4) == [[(f[0], 0, 100)], [(f[1], 0, 60)], [(f[2], 0, 50)], [(f[3], 0, 40)]]
    assert plan_row_ranges(root, 1) == [[(f[0], 0, 100), (f[1], 0, 60), (f[2], 0, 50), (f[3], 0, 40)]]


def test_plan_with_fewer_files_than_parts_cuts_equal_row_ranges_across_files(tmp_path):
    root = _table(tmp_path / "sim", [10, 5])
    f0, f1 = (str(root / f"part-0000{i}.parquet") for i in range(2))
    plan = plan_row_ranges(root, 4)
    assert plan == [[(f0, 0, 3)], [(f0, 3, 7)], [(f0, 7, 10), (f1, 0, 1)], [(f1, 1, 5)]]
    for n_parts in (3, 5, 7, 15):
        plan = plan_row_ranges(root, n_parts)
        sizes = [sum(b - a for _, a, b in ranges) for ranges in plan]
        assert len(plan) == n_parts and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
        assert _covers_each_row_once(plan, {f0: 10, f1: 5})


def test_plan_deals_row_groups_of_a_file_without_splitting_them(tmp_path):
    root = _table(tmp_path / "sim", [100], row_group_size=25)
    f = str(root / "part-00000.parquet")
    assert plan_row_ranges(root, 2) == [[(f, 0, 25), (f, 50, 75)], [(f, 25, 50), (f, 75, 100)]]
    assert plan_row_ranges(root, 1) == [[(f, 0, 100)]]  # touching ranges joined
    plan = plan_row_ranges(root, 3)  # 4 groups of 25 rows over 3 parts: whole groups, 50/25/25
    assert sorted(sum(b - a for _, a, b in r) for r in plan) == [25, 25, 50]


def test_plan_errors_name_the_path_or_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope: simulation table directory not found"):
        plan_row_ranges(tmp_path / "nope", 2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "_common_metadata").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty: no Parquet part files"):
        plan_row_ranges(tmp_path / "empty", 2)
    root = _table(tmp_path / "nolst", [10, 10])
    _part(root / "part-00001.parquet", 10, drop=("lst", "wvc"))
    with pytest.raises(ValueError, match=r"nolst/part-00001\.parquet: missing column\(s\) wvc, lst"):
        plan_row_ranges(root, 2)
    root = _table(tmp_path / "junk", [10])
    (root / "part-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"junk/part-00001\.parquet: not a readable Parquet file"):
        plan_row_ranges(root, 2)
    root = _table(tmp_path / "norows", [0])
    with pytest.raises(ValueError, match=r"norows: table has no rows"):
        plan_row_ranges(root, 1)
    root = _table(tmp_path / "small", [2, 1])
    with pytest.raises(ValueError, match=r"small: 3 row\(s\) cannot fill 4 parts"):
        plan_row_ranges(root, 4)
    with pytest.raises(ValueError, match=r"small: n_parts must be >= 1"):
        plan_row_ranges(root, 0)


def test_read_training_rows_equals_the_whole_table_read_and_split_in_memory(tmp_path):
    root = _table(tmp_path / "sim", [37, 23], row_group_size=10)
    whole = read_simulation_columns(root, TRAINING_COLUMNS)
    x_all, y_all = feature_matrix(whole), whole["lst"]
    held = np.isin(whole["profile_id"], [1, 4, 9])
    plan = plan_row_ranges(root, 5)  # 7 row groups (10, 10, 10, 7 | 10, 10, 3 rows) dealt to 5 parts
    pieces = [read_training_rows(ranges, [9, 4, 1, 4]) for ranges in plan]
    x, y, xh, yh = (np.concatenate([p[i] for p in pieces]) for i in range(4))
    offset = {str(root / "part-00000.parquet"): 0, str(root / "part-00001.parquet"): 37}
    rows = np.concatenate([offset[f] + np.arange(a, b) for ranges in plan for f, a, b in ranges])
    assert np.array_equal(np.sort(rows), np.arange(60))  # each row read once
    train, test = rows[~held[rows]], rows[held[rows]]
    np.testing.assert_array_equal(x, x_all[train])
    np.testing.assert_array_equal(y, y_all[train])
    np.testing.assert_array_equal(xh, x_all[test])
    np.testing.assert_array_equal(yh, y_all[test])
    assert x.dtype == y.dtype == xh.dtype == np.float32 and x.flags.c_contiguous and xh.flags.c_contiguous
    # rows inside a row group: only that group is read, then sliced
    f = str(root / "part-00000.parquet")
    x15, y15, _, _ = read_training_rows([(f, 15, 17)])
    np.testing.assert_array_equal(x15, x_all[15:17])
    np.testing.assert_array_equal(y15, y_all[15:17])
    assert read_training_rows([(f, 0, 5)], [0])[0].shape == (0, x_all.shape[1])  # all held out: no training rows


def test_read_training_rows_errors_name_the_file_and_column(tmp_path):
    root = _table(tmp_path / "sim", [10])
    f = str(root / "part-00000.parquet")
    lst = np.full(10, 300.0, dtype=np.float32)
    lst[3] = np.nan
    _part(root / "part-00001.parquet", 10, lst=lst)
    bt = np.full(10, 300.0, dtype=np.float32)
    bt[2] = 500.0
    _part(root / "part-00002.parquet", 10, bt_10_80=bt)
    _part(root / "part-00003.parquet", 10, drop=("profile_id",))
    with pytest.raises(ValueError, match=r"part-00001\.parquet: column lst has 1 non-finite value"):
        read_training_rows([(f, 0, 10), (str(root / "part-00001.parquet"), 0, 10)])
    with pytest.raises(ValueError, match=r"part-00002\.parquet: bt_10_80: values span .* outside the valid range"):
        read_training_rows([(str(root / "part-00002.parquet"), 0, 10)])
    with pytest.raises(ValueError, match=r"part-00003\.parquet: missing column\(s\) profile_id"):
        read_training_rows([(str(root / "part-00003.parquet"), 0, 10)])
    with pytest.raises(ValueError, match=r"part-00000\.parquet: rows 5-11 are not a non-empty range of its 10 rows"):
        read_training_rows([(f, 5, 11)])
    with pytest.raises(ValueError, match="no row ranges"):
        read_training_rows([])
