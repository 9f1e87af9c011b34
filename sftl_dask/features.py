"""THE feature function: one definition of the model inputs for tables and cubes alike.

Inputs are a mapping of named arrays (a pandas DataFrame, an xarray Dataset, a dict of
numpy or Dask blocks); the output is a dict of float32 arrays in :data:`FEATURES` order.
Physics only: no I/O, no Dask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sftl_dask.physics._validate import check_range

__all__ = ["FEATURES", "FEATURE_UNITS", "REQUIRED_INPUTS", "compute_features", "feature_matrix"]

#: Model features, in order.
FEATURES: tuple[str, ...] = (
    "bt_08_20",
    "bt_08_63",
    "bt_10_80",
    "bt_11_95",
    "dbt",
    "wvc",
    "wvc_dbt",
    "emis_08_20",
    "emis_08_63",
    "emis_mean",
    "emis_diff",
    "sec_vza",
)

#: Unit of each feature.
FEATURE_UNITS: dict[str, str] = {
    "bt_08_20": "K",
    "bt_08_63": "K",
    "bt_10_80": "K",
    "bt_11_95": "K",
    "dbt": "K (bt_10_80 - bt_11_95)",
    "wvc": "g cm-2",
    "wvc_dbt": "g cm-2 K (wvc x dbt)",
    "emis_08_20": "1",
    "emis_08_63": "1",
    "emis_mean": "1 ((emis_10_80 + emis_11_95) / 2)",
    "emis_diff": "1 (emis_10_80 - emis_11_95)",
    "sec_vza": "1 (1 / cos(vza))",
}

#: Input variables the features are computed from, with their valid ranges.
REQUIRED_INPUTS: dict[str, tuple[float, float, str]] = {
    "bt_08_20": (150.0, 400.0, "K"),
    "bt_08_63": (150.0, 400.0, "K"),
    "bt_10_80": (150.0, 400.0, "K"),
    "bt_11_95": (150.0, 400.0, "K"),
    "wvc": (0.0, 10.0, "g cm-2"),
    "vza": (0.0, 80.0, "deg"),
    "emis_08_20": (0.5, 1.0, "1"),
    "emis_08_63": (0.5, 1.0, "1"),
    "emis_10_80": (0.5, 1.0, "1"),
    "emis_11_95": (0.5, 1.0, "1"),
}


def compute_features(inputs: Mapping[str, Any], *, allow_nan: bool = False) -> dict[str, NDArray[np.float32]]:
    """Model features from brightness temperatures, WVC, emissivities and view angle.

    Parameters
    ----------
    inputs : mapping
        Arrays (any common shape) named as :data:`REQUIRED_INPUTS`: ``bt_08_20``, ``bt_08_63``,
        ``bt_10_80``, ``bt_11_95`` (K), ``wvc`` (g cm^-2), ``vza`` (deg), ``emis_08_20``,
        ``emis_08_63``, ``emis_10_80``, ``emis_11_95`` (unitless). Works on a pandas DataFrame, an
        xarray Dataset or a dict of numpy blocks.
    allow_nan : bool, optional
        Accept NaN (masked pixels); the features of those pixels are NaN.

    Returns
    -------
    dict of str to numpy.ndarray
        float32 arrays keyed by :data:`FEATURES`, in that order.

    Raises
    ------
    ValueError
        If an input is missing, non-finite (unless ``allow_nan``) or out of its valid range.
    """
    missing = [k for k in REQUIRED_INPUTS if k not in inputs]
    if missing:
        raise ValueError(f"features: missing input variable(s) {', '.join(missing)}")
    x = {
        k: check_range(k, np.asarray(inputs[k]), lo, hi, unit=unit, allow_nan=allow_nan)
        for k, (lo, hi, unit) in REQUIRED_INPUTS.items()
    }
    dbt = x["bt_10_80"] - x["bt_11_95"]
    out = {
        "bt_08_20": x["bt_08_20"],
        "bt_08_63": x["bt_08_63"],
        "bt_10_80": x["bt_10_80"],
        "bt_11_95": x["bt_11_95"],
        "dbt": dbt,
        "wvc": x["wvc"],
        "wvc_dbt": x["wvc"] * dbt,
        "emis_08_20": x["emis_08_20"],
        "emis_08_63": x["emis_08_63"],
        "emis_mean": 0.5 * (x["emis_10_80"] + x["emis_11_95"]),
        "emis_diff": x["emis_10_80"] - x["emis_11_95"],
        "sec_vza": 1.0 / np.cos(np.deg2rad(x["vza"])),
    }
    return {k: np.asarray(out[k], dtype=np.float32) for k in FEATURES}


def feature_matrix(inputs: Mapping[str, Any], *, allow_nan: bool = False) -> NDArray[np.float32]:
    """Features stacked on a last axis: shape ``(..., len(FEATURES))`` float32."""
    f = compute_features(inputs, allow_nan=allow_nan)
    return np.stack([f[k] for k in FEATURES], axis=-1)
