"""THE feature function: one definition of the model inputs for tables and cubes alike.

Inputs are a mapping of named arrays (a pandas DataFrame, an xarray Dataset, a dict of
numpy or Dask blocks); the output is a dict of float32 arrays in :data:`FEATURES` order.
Physics only: no I/O, no Dask.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sftl_dask.physics.checks import check_range

__all__ = [
    "FEATURES",
    "FEATURE_INPUTS",
    "FEATURE_UNITS",
    "RANGE_GROUPS",
    "REQUIRED_INPUTS",
    "compute_features",
    "feature_matrix",
    "input_range",
    "inputs_for",
]

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


#: The inputs each feature is computed from.
FEATURE_INPUTS: dict[str, tuple[str, ...]] = {
    "bt_08_20": ("bt_08_20",),
    "bt_08_63": ("bt_08_63",),
    "bt_10_80": ("bt_10_80",),
    "bt_11_95": ("bt_11_95",),
    "dbt": ("bt_10_80", "bt_11_95"),
    "wvc": ("wvc",),
    "wvc_dbt": ("wvc", "bt_10_80", "bt_11_95"),
    "emis_08_20": ("emis_08_20",),
    "emis_08_63": ("emis_08_63",),
    "emis_mean": ("emis_10_80", "emis_11_95"),
    "emis_diff": ("emis_10_80", "emis_11_95"),
    "sec_vza": ("vza",),
}

#: Input groups whose range a training table spans (the "pre-training range" of a model).
RANGE_GROUPS: dict[str, tuple[str, ...]] = {
    "bt": ("bt_08_20", "bt_08_63", "bt_10_80", "bt_11_95"),
    "wvc": ("wvc",),
    "vza": ("vza",),
    "emis": ("emis_08_20", "emis_08_63", "emis_10_80", "emis_11_95"),
}


def inputs_for(names: Sequence[str]) -> tuple[str, ...]:
    """The input variables the features ``names`` need, in :data:`REQUIRED_INPUTS` order.

    Raises
    ------
    ValueError
        If a name is not one of :data:`FEATURES`.
    """
    unknown = [n for n in names if n not in FEATURE_INPUTS]
    if unknown:
        raise ValueError(f"features: unknown feature(s) {', '.join(unknown)}; choose from {', '.join(FEATURES)}")
    need = {i for n in names for i in FEATURE_INPUTS[n]}
    return tuple(k for k in REQUIRED_INPUTS if k in need)


def input_range(table: Mapping[str, Any]) -> dict[str, list[float]]:
    """``[min, max]`` of each :data:`RANGE_GROUPS` group over a training table (units of the inputs).

    A group takes the columns of it that the table has; a group with none is left out.
    """
    out = {}
    for group, names in RANGE_GROUPS.items():
        vals = [np.asarray(table[n], dtype=np.float64) for n in names if n in table]
        if vals:
            out[group] = [float(min(np.nanmin(v) for v in vals)), float(max(np.nanmax(v) for v in vals))]
    return out


def compute_features(inputs: Mapping[str, Any], *, allow_nan: bool = False,
                     names: Sequence[str] | None = None) -> dict[str, NDArray[np.float32]]:
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
    names : sequence of str, optional
        Compute only these features (default: all of :data:`FEATURES`); only their inputs
        (:func:`inputs_for`) are needed and checked.

    Returns
    -------
    dict of str to numpy.ndarray
        float32 arrays keyed by feature name, in :data:`FEATURES` order (or the order of ``names``).

    Raises
    ------
    ValueError
        If a name is unknown, or an input is missing, non-finite (unless ``allow_nan``) or out of
        its valid range.
    """
    names = FEATURES if names is None else tuple(names)
    need = inputs_for(names)
    missing = [k for k in need if k not in inputs]
    if missing:
        raise ValueError(f"features: missing input variable(s) {', '.join(missing)}")
    # Inputs keep their float dtype (no float64 copies): for float32 inputs the differences of channels
    # within a factor 2 of each other are exact (Sterbenz), and a float32 product or half-sum is the
    # float64 result correctly rounded, so the features equal those computed in float64 (pinned by
    # tests/test_features.py); the cosine is taken in float64.
    x = {
        k: check_range(k, np.asarray(inputs[k]), *REQUIRED_INPUTS[k][:2], unit=REQUIRED_INPUTS[k][2],
                       allow_nan=allow_nan, keep_float=True)
        for k in need
    }
    dbt = x["bt_10_80"] - x["bt_11_95"] if "bt_10_80" in x and "bt_11_95" in x else None
    derived = {
        "dbt": lambda: dbt,
        "wvc_dbt": lambda: x["wvc"] * dbt,
        "emis_mean": lambda: 0.5 * (x["emis_10_80"] + x["emis_11_95"]),
        "emis_diff": lambda: x["emis_10_80"] - x["emis_11_95"],
        "sec_vza": lambda: 1.0 / np.cos(np.deg2rad(x["vza"].astype(np.float64))),
    }
    return {k: np.asarray(derived[k]() if k in derived else x[k], dtype=np.float32) for k in names}


def feature_matrix(inputs: Mapping[str, Any], *, allow_nan: bool = False) -> NDArray[np.float32]:
    """Features stacked on a last axis: shape ``(..., len(FEATURES))`` float32."""
    f = compute_features(inputs, allow_nan=allow_nan)
    return np.stack([f[k] for k in FEATURES], axis=-1)
