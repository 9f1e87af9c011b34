"""The one feature function: same numbers on tables, numpy blocks and xarray chunks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from sftl_dask.features import FEATURES, REQUIRED_INPUTS, compute_features, feature_matrix


def _inputs(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "bt_08_20": rng.uniform(280, 300, n), "bt_08_63": rng.uniform(280, 300, n),
        "bt_10_80": np.full(n, 295.0), "bt_11_95": np.full(n, 293.0), "wvc": np.full(n, 2.0),
        "vza": np.full(n, 60.0), "emis_08_20": np.full(n, 0.95), "emis_08_63": np.full(n, 0.96),
        "emis_10_80": np.full(n, 0.97), "emis_11_95": np.full(n, 0.98),
    }


def test_engineered_features_have_their_definitions():
    f = compute_features(_inputs())
    assert list(f) == list(FEATURES)
    assert np.allclose(f["dbt"], 2.0)
    assert np.allclose(f["wvc_dbt"], 4.0)
    assert np.allclose(f["emis_mean"], 0.975)
    assert np.allclose(f["emis_diff"], -0.01)
    assert np.allclose(f["sec_vza"], 2.0)
    assert all(v.dtype == np.float32 for v in f.values())


def test_same_features_from_dataframe_numpy_and_xarray():
    raw = _inputs()
    a = feature_matrix(raw)
    b = feature_matrix(pd.DataFrame(raw))
    ds = xr.Dataset({k: (("y", "x"), v.reshape(1, -1)) for k, v in raw.items()})
    c = feature_matrix(ds)
    assert np.array_equal(a, b)
    assert np.array_equal(a, c.reshape(a.shape))
    assert c.shape == (1, 5, len(FEATURES))


def test_missing_input_named():
    raw = _inputs()
    del raw["wvc"]
    with pytest.raises(ValueError, match="missing input variable\\(s\\) wvc"):
        compute_features(raw)


def test_nan_refused_unless_masked_pixels_allowed():
    raw = _inputs()
    raw["bt_10_80"][2] = np.nan
    with pytest.raises(ValueError, match="bt_10_80"):
        compute_features(raw)
    f = compute_features(raw, allow_nan=True)
    assert np.isnan(f["dbt"][2]) and np.isfinite(f["dbt"][[0, 1, 3, 4]]).all()


@pytest.mark.parametrize("name", list(REQUIRED_INPUTS))
def test_out_of_range_input_named(name):
    raw = _inputs()
    raw[name] = raw[name] * 0 + 1e6
    with pytest.raises(ValueError, match=name):
        compute_features(raw)


def test_float32_inputs_give_the_features_of_the_same_values_in_float64():
    rng = np.random.default_rng(7)
    n = 200_000
    bt11 = rng.uniform(200.0, 340.0, n)
    inputs = {"bt_08_20": bt11 - rng.uniform(-3, 5, n), "bt_08_63": bt11 - rng.uniform(-3, 5, n),
              "bt_10_80": bt11 + rng.uniform(-1, 8, n), "bt_11_95": bt11, "wvc": rng.uniform(0, 8, n),
              "vza": rng.uniform(0, 60, n), "emis_08_20": rng.uniform(0.6, 1, n), "emis_08_63": rng.uniform(0.6, 1, n),
              "emis_10_80": rng.uniform(0.85, 1, n), "emis_11_95": rng.uniform(0.85, 1, n)}
    f32 = compute_features({k: v.astype(np.float32) for k, v in inputs.items()})
    f64 = compute_features({k: v.astype(np.float32).astype(np.float64) for k, v in inputs.items()})
    for k in FEATURES:
        np.testing.assert_array_equal(f32[k], f64[k], err_msg=k)
