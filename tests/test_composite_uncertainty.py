"""The composites' propagation of ``lst_uncertainty`` with the store's systematic share (issue 21): the scene term's
share ``s`` of each value's ``sigma**2`` kept whole over a period, the rest divided by ``n``; older stores (one
``uncertainty_systematic_k``, or no split at all) give today's numbers bit for bit."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from helpers import synthetic_lst_cube

from sftl_dask.api import composite_variance, open_lst, systematic_fraction, uncertainty_split
from sftl_dask.composites import period_composite, write_composites
from sftl_dask.io.stores import open_store
from sftl_dask.models.error_model import (
    DEFAULT_EDGES,
    apply_error_model,
    fit_error_model,
    scene_term_part,
    sigma_model_part,
    systematic_share,
)

FRACTION = 0.8  # c = 2: c^2 / (1 + c^2)


def _with_fraction(store: Path, fraction: Any) -> Path:
    """The store with ``uncertainty_systematic_fraction`` (as the retriever writes it), metadata re-consolidated."""
    zarr.open_group(str(store), mode="r+").attrs["uncertainty_systematic_fraction"] = fraction
    zarr.consolidate_metadata(str(store))
    return store


def _today(lst: np.ndarray, unc: np.ndarray, sys_k: float | None, how: str) -> np.ndarray:
    """The composite sigma as the code computed it before the share (a verbatim copy of its numpy level)."""
    valid = ~np.isnan(lst)
    unc = np.where(valid, unc, np.nan)
    if sys_k is not None:
        rand2, sys2 = np.clip(unc ** 2 - sys_k ** 2, 0.0, None), sys_k ** 2
    else:
        rand2 = np.where(valid, np.zeros_like(unc), np.nan)
        sys2 = unc ** 2 - rand2
    count = valid.sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_rand2 = np.nanmean(rand2, axis=0)
        mean_sys2 = np.nanmean(sys2, axis=0) if isinstance(sys2, np.ndarray) else sys2
    n = np.where(count > 0, count, np.nan)
    factor = {"mean": 1.0, "median": math.pi / 2, "min": None, "max": None}[how]
    var = mean_sys2 + (mean_rand2 * factor / n if factor is not None else mean_rand2)
    return np.where(count >= 1, np.sqrt(var), np.nan).astype(np.float32)


def test_the_share_is_kept_whole_and_the_rest_divided_by_n_pinned_by_hand() -> None:
    # one pixel, three values of sigma 1, 2, 2 K (sum of squares 9); a fourth pixel without values
    lst = np.array([[290.0, 291.0], [292.0, np.nan], [293.0, np.nan]], np.float32)[:, None, :]
    unc = np.array([[1.0, 1.0], [2.0, 1.0], [2.0, 1.0]], np.float32)[:, None, :]
    qc = np.zeros(lst.shape, np.uint16)
    got = {how: period_composite(lst, unc, qc, good=(), how=how, sys_frac=FRACTION)["lst_uncertainty"][0]
           for how in ("mean", "median", "max")}
    sys2, rand2 = FRACTION * 9 / 3, (1 - FRACTION) * 9 / 3  # 2.4 whole; 0.6 over n = 3
    assert got["mean"][0] == pytest.approx(math.sqrt(sys2 + rand2 / 3), rel=1e-6)  # 1.6125 K
    assert got["median"][0] == pytest.approx(math.sqrt(sys2 + math.pi / 2 * rand2 / 3), rel=1e-6)
    assert got["max"][0] == pytest.approx(3.0 ** 0.5, rel=1e-6)  # a single value: nothing divided
    assert got["mean"][0] == pytest.approx(1.61245155, abs=1e-6)
    assert got["mean"][1] == pytest.approx(1.0, abs=1e-7)  # one value: its own sigma
    # the share takes precedence over the scalar part; 0 divides everything, 1 keeps everything
    both = period_composite(lst, unc, qc, good=(), how="mean", sys_k=1.0, sys_frac=FRACTION)["lst_uncertainty"]
    np.testing.assert_array_equal(both, period_composite(lst, unc, qc, good=(), how="mean",
                                                         sys_frac=FRACTION)["lst_uncertainty"])
    none = period_composite(lst, unc, qc, good=(), how="mean", sys_frac=0.0)["lst_uncertainty"][0, 0]
    whole = period_composite(lst, unc, qc, good=(), how="mean", sys_frac=1.0)["lst_uncertainty"][0, 0]
    assert none == pytest.approx(1.0, rel=1e-6) and whole == pytest.approx(math.sqrt(3.0), rel=1e-6)
    # the one rule, on its own
    r2, s2 = uncertainty_split(np.float32([2.0]), np.array([True]), 1.0, FRACTION)
    assert (float(r2[0]), float(s2[0])) == pytest.approx((0.8, 3.2), rel=1e-6)
    assert composite_variance(2.4, 0.6, 3.0, "mean") == pytest.approx(2.6)


def test_the_accessor_with_the_share_equals_the_hand_formula_and_the_numpy_level(tmp_path: Path) -> None:
    store = _with_fraction(synthetic_lst_cube(tmp_path / "l.zarr", n_times=8, height=16, width=16, step_days=4),
                           FRACTION)
    ds = open_lst(store)
    assert systematic_fraction(ds.attrs) == FRACTION
    comp = ds.sftl.composite("MS", how="median").compute()
    loaded = ds.load()
    month = loaded["time"].values.astype("datetime64[M]")
    for i, m in enumerate(np.unique(month)):
        sel = month == m
        lst, unc = loaded["lst"].values[sel], loaded["lst_uncertainty"].values[sel]
        u2 = np.where(np.isfinite(lst), unc.astype(np.float64) ** 2, np.nan)
        n = np.isfinite(lst).sum(0)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            want = np.sqrt(np.nanmean(FRACTION * u2, 0) + math.pi / 2 * np.nanmean((1 - FRACTION) * u2, 0) / n)
        got = comp["lst_uncertainty"].isel(time=i).values
        np.testing.assert_allclose(got, want, rtol=2e-6, equal_nan=True)
        # the numpy level (composite stores' tasks) on the month: equal bit for bit
        one = loaded.isel(time=np.flatnonzero(sel)).sftl.composite("MS", how="median")
        np.testing.assert_array_equal(period_composite(lst, unc, np.zeros(lst.shape, np.uint16), good=(),
                                                       sys_frac=FRACTION)["lst_uncertainty"],
                                      one["lst_uncertainty"].values[0])
    # pixel (0, 0): sigma 1.5 K, 7 values in January (sqrt(0.8 * 2.25 + pi / 2 * 0.2 * 2.25 / 7)) and 1 in February
    assert comp["n_obs"].values[:, 0, 0].tolist() == [7, 1]
    np.testing.assert_allclose(comp["lst_uncertainty"].values[:, 0, 0], [1.3787602, 1.5833062], rtol=1e-6)


@pytest.mark.parametrize("sys_k", [1.0, None])
@pytest.mark.parametrize("how", ["median", "mean", "max"])
def test_an_older_store_without_the_share_gives_todays_numbers_bit_for_bit(tmp_path: Path, sys_k: float | None,
                                                                            how: str) -> None:
    store = synthetic_lst_cube(tmp_path / "l.zarr", n_times=6, height=16, width=16, step_days=4, systematic_k=sys_k)
    ds = open_lst(store).load()
    assert systematic_fraction(ds.attrs) is None
    month = ds["time"].values.astype("datetime64[M]")
    first = ds.isel(time=np.flatnonzero(month == month[0]))
    lst, unc = first["lst"].values, first["lst_uncertainty"].values
    want = _today(lst, unc, sys_k, how)
    np.testing.assert_array_equal(first.sftl.composite("MS", how)["lst_uncertainty"].values[0], want)
    np.testing.assert_array_equal(period_composite(lst, unc, np.zeros(lst.shape, np.uint16), good=(), how=how,
                                                   sys_k=sys_k)["lst_uncertainty"], want)
    # a share the store cannot mean (outside [0, 1], not a number) is not one: today's numbers too
    assert systematic_fraction({"uncertainty_systematic_fraction": 1.5}) is None
    assert systematic_fraction({"uncertainty_systematic_fraction": "n/a"}) is None


def test_composite_stores_read_the_share_from_the_lst_store(tmp_path: Path) -> None:
    store = _with_fraction(synthetic_lst_cube(tmp_path / "l.zarr", n_times=8, height=16, width=16, step_days=4),
                           FRACTION)
    write_composites(store, tmp_path / "comp", how="median")
    got = open_store(tmp_path / "comp" / "l.zarr").sortby("time")
    ds = open_store(store).load()
    month = ds["time"].values.astype("datetime64[M]")
    ref = xr.concat([ds.isel(time=np.flatnonzero(month == m)).sftl.good(check=False).sftl.composite("MS", "median")
                     for m in np.unique(month)], "time")
    np.testing.assert_array_equal(got["lst_uncertainty"].values, ref["lst_uncertainty"].values)
    old = _with_fraction(synthetic_lst_cube(tmp_path / "o.zarr", n_times=8, height=16, width=16, step_days=4), None)
    write_composites(old, tmp_path / "comp_old", how="median")
    assert float(np.nanmax(open_store(tmp_path / "comp_old" / "o.zarr")["lst_uncertainty"].values
                           / got["lst_uncertainty"].values)) > 1.0  # 1 K kept whole of 1.5-2.5 K: not the share


def test_the_share_of_a_multiplicative_term_is_what_the_lookup_composes() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    f = {"wvc": rng.uniform(0, 6, n), "emis_mean": rng.uniform(0.94, 0.99, n),
         "sec_vza": 1 / np.cos(np.radians(rng.choice([0.0, 15.0, 30.0], n)))}
    resid = rng.normal(0, 0.3 + 0.15 * np.searchsorted(DEFAULT_EDGES["wvc"], f["wvc"]), n)
    base = fit_error_model(f, resid)
    assert systematic_share(base) is None  # no scene term of that form: the scalar stays
    assert systematic_share({**base, "scene_term": {"form": "additive", "a_k": 1.0}}) is None
    model = {**base, "scene_term": {"form": "multiplicative", "c": 2.0}}
    assert systematic_share(model) == FRACTION
    sigma2 = apply_error_model(model, f).astype(np.float64) ** 2
    np.testing.assert_allclose(FRACTION * sigma2, scene_term_part(model, f).astype(np.float64) ** 2, rtol=1e-6)
    np.testing.assert_allclose((1 - FRACTION) * sigma2, sigma_model_part(model, f).astype(np.float64) ** 2,
                               rtol=1e-6)
