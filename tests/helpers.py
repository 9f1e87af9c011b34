"""Shared test data for the model tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np


def synthetic_lst(n: int, seed: int = 0, bias_k: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Feature matrix in FEATURES order with realistic ranges, and a split-window-like LST (K)."""
    rng = np.random.default_rng(seed)
    bt_11 = rng.uniform(270.0, 320.0, n)
    wvc = rng.uniform(0.2, 5.0, n)
    dbt = 0.3 + 0.5 * wvc + rng.normal(0.0, 0.4, n)
    bt_10 = bt_11 + dbt
    emis_mean, emis_diff = rng.uniform(0.94, 0.99, n), rng.uniform(-0.02, 0.02, n)
    x = np.column_stack([
        bt_10 - 2.0, bt_10 - 1.0, bt_10, bt_11, dbt, wvc, wvc * dbt, rng.uniform(0.85, 0.97, n),
        rng.uniform(0.86, 0.98, n), emis_mean, emis_diff, 1.0 / np.cos(rng.uniform(0, 1, n)),
    ]).astype(np.float32)
    lst = bt_10 + 1.6 * dbt + 0.25 * wvc * dbt + 45.0 * (1.0 - emis_mean) - 60.0 * emis_diff + bias_k
    return x, lst.astype(np.float32)


def small_simulation(path: Path, n_profiles: int, seed: int) -> Path:
    """Write a simulation table at ``path``: 20 spectra x 3 angles x 2 draws a profile, a part file per 20 profiles."""
    from sftl_dask.simulate import SimulationConfig, write_simulation

    write_simulation(path, SimulationConfig(n_profiles=n_profiles, n_spectra=20, batch_profiles=20, seed=seed))
    return path


def simulation_xy(path: Path, held_profiles: Iterable[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole table read in this process: features, LST (K, float32) and the mask of held-out profiles' rows."""
    from sftl_dask.features import feature_matrix
    from sftl_dask.simulate import TRAINING_COLUMNS, read_simulation_columns

    tab = read_simulation_columns(path, TRAINING_COLUMNS)
    return feature_matrix(tab), tab["lst"].astype(np.float32), np.isin(tab["profile_id"], list(held_profiles))
