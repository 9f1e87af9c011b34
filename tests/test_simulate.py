"""The simulation table: size, determinism, radiative consistency, metadata, Dask path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from sftl_dask.physics.channels import THERMAL_NAMES
from sftl_dask.physics.planck import band_planck
from sftl_dask.physics.profiles import generate_profiles
from sftl_dask.simulate import SimulationConfig, read_simulation_metadata, simulate_batch, write_simulation


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
