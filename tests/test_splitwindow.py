"""Split-window fit and application: recovery, window selection, blending, serialisation, NaN."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import numpy as np
import pytest

from sftl_dask.physics.splitwindow import (
    COEFFICIENT_NAMES,
    SplitWindowCoefficients,
    SplitWindowWindow,
    apply_split_window,
    design_matrix,
    fit_split_window,
    holdout_report,
)

TRUE = {"C": -2.5, "A1": 1.01, "A2": 0.15, "A3": -0.3, "B1": 4.5, "B2": 5.0, "B3": -12.0, "D": 0.05}


def _inputs(n: int, rng: np.random.Generator, wvc_max: float = 6.3, vza_max: float = 65.0) -> dict[str, np.ndarray]:
    """Random but plausible BT / emissivity / WVC / VZA rows (BT difference grows with WVC)."""
    wvc = rng.uniform(0.0, wvc_max, n)
    t11 = rng.uniform(250.0, 330.0, n)
    dt = rng.uniform(-0.5, 1.0, n) + 0.6 * wvc
    e = rng.uniform(0.93, 0.985, n)
    de = rng.uniform(-0.02, 0.02, n)
    return {
        "bt_08_63": t11 - rng.uniform(0.0, 4.0, n),
        "bt_10_80": t11,
        "bt_11_95": t11 - dt,
        "emis_08_63": e - 0.01,
        "emis_10_80": e + de / 2,
        "emis_11_95": e - de / 2,
        "wvc": wvc,
        "vza": rng.uniform(0.0, vza_max, n),
    }


def _formula(cols: dict[str, np.ndarray], coef: dict[str, float | np.ndarray], i: str = "bt_10_80",
             j: str = "bt_11_95") -> np.ndarray:
    """The split-window form written out term by term (independent of the module's code)."""
    ti, tj = cols[i], cols[j]
    ei, ej = cols["emis_" + i[3:]], cols["emis_" + j[3:]]
    e, de = (ei + ej) / 2, ei - ej
    a = coef["A1"] + coef["A2"] * (1 - e) / e + coef["A3"] * de / e**2
    b = coef["B1"] + coef["B2"] * (1 - e) / e + coef["B3"] * de / e**2
    return coef["C"] + a * (ti + tj) / 2 + b * (ti - tj) / 2 + coef["D"] * (ti - tj) ** 2


def _table(n: int = 40_000, seed: int = 1, noise_k: float = 0.0,
           coef: Callable[[np.ndarray], dict[str, np.ndarray | float]] | None = None, **kw: float
           ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols = _inputs(n, rng, **kw)
    cols["lst"] = _formula(cols, coef(cols["wvc"]) if coef else TRUE) + rng.normal(0.0, noise_k, n) * (noise_k > 0)
    return cols


def _smooth_truth(wvc: np.ndarray) -> dict[str, np.ndarray | float]:
    """Coefficients drifting smoothly with WVC, as real atmospheres make them."""
    return {**TRUE, "C": TRUE["C"] - 0.6 * wvc**2, "B1": TRUE["B1"] + 0.4 * wvc}


def _hand_coeffs(c_per_window: list[float], vza_bands=((0.0, 30.0), (30.0, 90.0)), band_offset: float = 0.0
                 ) -> SplitWindowCoefficients:
    """Hand-made coefficients: identity-like form, window k adds C = c_per_window[k] (+ offset per VZA band)."""
    wvc_windows = [(0.0, 2.5), (2.0, 3.5), (3.0, 4.5), (4.0, 5.5), (5.0, 6.5)][: len(c_per_window)]
    windows = []
    for b, (vlo, vhi) in enumerate(vza_bands):
        for (wlo, whi), c0 in zip(wvc_windows, c_per_window, strict=True):
            coef = dict.fromkeys(COEFFICIENT_NAMES, 0.0) | {"A1": 1.0, "C": c0 + b * band_offset}
            windows.append(SplitWindowWindow(wlo, whi, vlo, vhi, coef))
    return SplitWindowCoefficients("bt_10_80", "bt_11_95", tuple(windows))


def _apply_point(coeffs: SplitWindowCoefficients, wvc, vza=10.0, **kw) -> np.ndarray:
    return apply_split_window(coeffs, 300.0, 298.0, 0.97, 0.965, wvc, vza, **kw)


# -- design matrix and fit ---------------------------------------------------------------------


def test_design_matrix_columns_follow_the_formula():
    x = design_matrix([300.0], [298.0], [0.98], [0.96])
    e, de = 0.97, 0.02
    s, h = 299.0, 1.0
    expected = [1, s, s * (1 - e) / e, s * de / e**2, h, h * (1 - e) / e, h * de / e**2, 4.0]
    assert x.shape == (1, 8)
    assert np.allclose(x[0], expected, rtol=1e-14)
    assert design_matrix(np.full((3, 4), 300.0), 299.0, 0.97, 0.96).shape == (12, 8)


def test_fit_recovers_known_coefficients_exactly_without_noise():
    coeffs = fit_split_window(_table())
    assert len(coeffs.windows) == 15
    for w in coeffs.windows:
        assert w.fitted and w.rank == 8 and w.reason is None
        assert w.rmse_train_k < 1e-6 and w.rmse_holdout_k < 1e-6
        for k in COEFFICIENT_NAMES:
            assert w.coefficients[k] == pytest.approx(TRUE[k], rel=1e-7, abs=1e-7), k
    assert coeffs.overall["rmse_holdout_k"] < 1e-6
    assert coeffs.overall["n_holdout"] == 8000


def test_fit_with_noise_recovers_coefficients_approximately():
    noise = 0.3
    table = _table(n=150_000, noise_k=noise)
    coeffs = fit_split_window(table)
    clean = _formula(table, TRUE)
    est = apply_split_window(coeffs, table["bt_10_80"], table["bt_11_95"], table["emis_10_80"],
                             table["emis_11_95"], table["wvc"], table["vza"])
    # The fitted surface is much closer to the truth than the noise is to it.
    assert np.sqrt(np.mean((est - clean) ** 2)) < 0.05
    assert coeffs.overall["rmse_holdout_k"] == pytest.approx(noise, rel=0.05)
    assert abs(coeffs.overall["bias_holdout_k"]) < 0.02
    for w in coeffs.windows:
        assert w.rmse_holdout_k == pytest.approx(noise, rel=0.15)
        assert abs(w.coefficients["A1"] - TRUE["A1"]) < 0.01
        assert abs(w.coefficients["B1"] - TRUE["B1"]) < 0.5


def test_holdout_metrics_recorded_per_window_and_seeded():
    table = _table(n=20_000, noise_k=0.5)
    a = fit_split_window(table, seed=3)
    b = fit_split_window(table, seed=3)
    c = fit_split_window(table, seed=4)
    assert a.to_dict() == b.to_dict()
    assert [w.n_holdout for w in a.windows] != [w.n_holdout for w in c.windows]
    for w in a.windows:
        # rows in a window are split about 80/20 between training and held out
        assert 0.12 < w.n_holdout / (w.n_train + w.n_holdout) < 0.28
        assert w.rmse_holdout_k > 0.3 and w.bias_holdout_k is not None
    assert a.overall["n_holdout"] == 4000
    none = fit_split_window(table, holdout_fraction=0.0)
    assert all(w.n_holdout == 0 and w.rmse_holdout_k is None for w in none.windows)


def test_holdout_group_holds_out_whole_groups():
    table = _table(n=20_000)
    table["profile"] = np.repeat(np.arange(2_000), 10)
    coeffs = fit_split_window(table, holdout_group="profile", holdout_fraction=0.25)
    assert coeffs.overall["n_holdout"] == 500 * 10
    assert coeffs.holdout_group == "profile"


def test_lowest_window_starts_at_zero_and_highest_covers_the_data():
    table = _table(n=20_000, wvc_max=7.2, vza_max=70.0)
    coeffs = fit_split_window(table, wvc_windows=((0.5, 2.5), (2.0, 4.0), (3.5, 6.0)))
    wvc_bounds = sorted({(w.wvc_min, w.wvc_max) for w in coeffs.windows})
    vza_bounds = sorted({(w.vza_min, w.vza_max) for w in coeffs.windows})
    assert wvc_bounds[0][0] == 0.0
    assert wvc_bounds[-1][1] == pytest.approx(table["wvc"].max())
    assert vza_bounds[-1][1] == pytest.approx(table["vza"].max())
    assert sum(w.n_train + w.n_holdout for w in coeffs.windows if w.wvc_min == 3.5) == np.count_nonzero(
        table["wvc"] >= 3.5)


def test_sparse_window_is_recorded_empty_and_neighbours_take_over():
    table = _table(n=20_000, wvc_max=3.9)
    coeffs = fit_split_window(table)
    empty = [w for w in coeffs.windows if not w.fitted]
    assert {(w.wvc_min, w.wvc_max) for w in empty} == {(4.0, 5.5), (5.0, 6.5)}
    assert all("too few" in w.reason and w.coefficients is None for w in empty)
    # WVC far above the fitted windows uses the highest fitted one (3.0-4.5), exact here.
    cols = {k: np.array([v[0]]) for k, v in table.items()}
    est = apply_split_window(coeffs, cols["bt_10_80"], cols["bt_11_95"], cols["emis_10_80"], cols["emis_11_95"],
                             6.0, cols["vza"])
    assert est[0] == pytest.approx(_formula(cols, TRUE)[0], abs=1e-6)


def test_all_windows_too_small_does_not_crash_fit_but_apply_refuses():
    coeffs = fit_split_window(_table(n=40))
    assert not any(w.fitted for w in coeffs.windows)
    assert coeffs.overall["rmse_holdout_k"] is None
    with pytest.raises(ValueError, match="no fitted window"):
        _apply_point(coeffs, 1.0)


def test_configurable_channel_pair_uses_its_columns():
    table = _table(n=20_000)
    table["lst"] = _formula(table, TRUE, i="bt_08_63", j="bt_11_95")
    coeffs = fit_split_window(table, channel_i="bt_08_63", channel_j="bt_11_95")
    assert (coeffs.channel_i, coeffs.channel_j) == ("bt_08_63", "bt_11_95")
    assert all(w.rmse_train_k < 1e-6 for w in coeffs.windows)
    with pytest.raises(ValueError, match="emis_08_63"):
        apply_split_window(coeffs, 300.0, 298.0, 1.5, 0.97, 2.0, 10.0)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda t: t.pop("wvc"), "wvc"),
        (lambda t: t.pop("emis_11_95"), "emis_11_95"),
        (lambda t: t["bt_10_80"].__setitem__(5, np.nan), "bt_10_80"),
        (lambda t: t["vza"].__setitem__(0, 95.0), "vza"),
    ],
)
def test_fit_rejects_bad_table_naming_the_column(change, match):
    table = _table(n=500)
    change(table)
    with pytest.raises(ValueError, match=match):
        fit_split_window(table)


def test_fit_rejects_windows_that_leave_gaps():
    with pytest.raises(ValueError, match="wvc_windows"):
        fit_split_window(_table(n=500), wvc_windows=((0.0, 2.0), (2.5, 7.0)))
    with pytest.raises(ValueError, match="vza_windows"):
        fit_split_window(_table(n=500), vza_windows=((0.0, 20.0), (25.0, 65.0)))


# -- application ---------------------------------------------------------------------------------


def test_pixel_uses_the_window_containing_its_wvc_and_blends_in_overlaps():
    coeffs = _hand_coeffs([0.0, 1.0, 2.0, 3.0, 4.0])
    base = 299.0  # A1 * (Ti + Tj)/2 with Ti, Tj = 300, 298
    wvc = np.array([0.0, 1.0, 2.0, 2.25, 2.4, 2.5, 2.75, 3.25, 4.75, 5.25, 6.0, 6.5, 12.0])
    expected = np.array([0.0, 0.0, 0.0, 0.5, 0.8, 1.0, 1.0, 1.5, 3.0, 3.5, 4.0, 4.0, 4.0])
    assert np.allclose(_apply_point(coeffs, wvc) - base, expected, atol=1e-9)


def test_pixel_uses_its_view_zenith_band():
    coeffs = _hand_coeffs([0.0, 1.0], band_offset=10.0)
    est = _apply_point(coeffs, 1.0, vza=np.array([0.0, 29.9, 30.0, 60.0, 89.0])) - 299.0
    assert np.allclose(est, [0.0, 0.0, 10.0, 10.0, 10.0], atol=1e-9)


def test_blending_is_continuous_across_window_edges_for_smooth_truth():
    coeffs = fit_split_window(_table(n=60_000, coef=_smooth_truth))
    wvc = np.arange(0.0, 7.0, 0.001)
    est = _apply_point(coeffs, wvc)
    assert np.max(np.abs(np.diff(est))) < 0.05
    # Without blending there would be a visible seam: neighbouring windows disagree at their edges.
    lower, upper = (w for w in coeffs.windows if w.vza_min == 0.0 and w.wvc_min in (0.0, 2.0))
    x = design_matrix(300.0, 298.0, 0.97, 0.965)[0]
    seam = x @ [lower.coefficients[k] - upper.coefficients[k] for k in COEFFICIENT_NAMES]
    assert abs(seam) > 0.1


def test_apply_keeps_shape_broadcasts_and_is_independent_of_block_size():
    table = _table(n=20_000, coef=_smooth_truth)
    coeffs = fit_split_window(table)
    cols = [table[k][:210].reshape(2, 15, 7) for k in ("bt_10_80", "bt_11_95", "emis_10_80", "emis_11_95", "wvc")]
    whole = apply_split_window(coeffs, *cols, 20.0)
    tiny = apply_split_window(coeffs, *cols, np.full((2, 15, 7), 20.0), block_size=3)
    assert whole.shape == (2, 15, 7) and whole.dtype == np.float64
    assert np.array_equal(whole, tiny)
    f32 = apply_split_window(coeffs, *(c.astype(np.float32) for c in cols), np.float32(20.0))
    assert f32.dtype == np.float32
    assert np.allclose(f32, whole, atol=1e-3)
    flat = apply_split_window(coeffs, *(c.ravel() for c in cols), 20.0)
    assert np.array_equal(flat.reshape(2, 15, 7), whole)


def test_nan_raises_naming_the_variable_unless_allowed():
    coeffs = fit_split_window(_table(n=20_000))
    emis_j = np.array([0.96, np.nan, 0.97])
    with pytest.raises(ValueError, match="emis_11_95"):
        apply_split_window(coeffs, 300.0, 298.0, 0.97, emis_j, 2.0, 10.0)
    wvc = np.array([1.0, 2.0, np.nan, 3.0])
    with pytest.raises(ValueError, match="wvc"):
        apply_split_window(coeffs, 300.0, 298.0, 0.97, 0.965, wvc, 10.0)
    with pytest.raises(ValueError, match="bt_10_80"):
        apply_split_window(coeffs, 500.0, 298.0, 0.97, 0.965, 2.0, 10.0)

    out = apply_split_window(coeffs, 300.0, 298.0, 0.97, emis_j, 2.0, 10.0, allow_nan=True)
    assert np.isnan(out[1]) and np.isfinite(out[[0, 2]]).all()
    out = apply_split_window(coeffs, 300.0, 298.0, 0.97, 0.965, wvc, np.array([10.0, np.nan, 10.0, 10.0]),
                             allow_nan=True)
    assert np.isnan(out[1:3]).all() and np.isfinite(out[[0, 3]]).all()
    clean = apply_split_window(coeffs, 300.0, 298.0, 0.97, 0.965, np.array([1.0, 3.0]), 10.0)
    assert np.array_equal(out[[0, 3]], clean)


# -- serialisation and report ---------------------------------------------------------------------


def test_to_dict_from_dict_round_trips_through_json():
    table = _table(n=20_000, wvc_max=4.2, noise_k=0.2)
    coeffs = fit_split_window(table)
    d = json.loads(json.dumps(coeffs.to_dict(), allow_nan=False))
    assert d["schema_version"] == 1 and d["channel_i"] == "bt_10_80"
    back = SplitWindowCoefficients.from_dict(d)
    assert back == coeffs
    assert back.to_dict() == coeffs.to_dict()
    args = [table[k] for k in ("bt_10_80", "bt_11_95", "emis_10_80", "emis_11_95", "wvc", "vza")]
    assert np.array_equal(apply_split_window(back, *args), apply_split_window(coeffs, *args))


@pytest.mark.parametrize(
    ("path", "key"),
    [((), "channel_j"), ((), "windows"), ((), "schema_version"), (("windows", 2), "vza_max"),
     (("windows", 0, "coefficients"), "B2")],
)
def test_from_dict_names_the_missing_key(path, key):
    d = _hand_coeffs([0.0, 1.0]).to_dict()
    node = d
    for p in path:
        node = node[p]
    del node[key]
    with pytest.raises(ValueError, match=key):
        SplitWindowCoefficients.from_dict(d)


def test_from_dict_rejects_unknown_schema_version_and_form():
    d = _hand_coeffs([0.0]).to_dict()
    with pytest.raises(ValueError, match="schema_version"):
        SplitWindowCoefficients.from_dict(d | {"schema_version": 99})
    with pytest.raises(ValueError, match="form"):
        SplitWindowCoefficients.from_dict(d | {"form": "mono_window"})


def test_holdout_report_has_one_row_per_window():
    coeffs = fit_split_window(_table(n=20_000, wvc_max=3.9, noise_k=0.3))
    rows = holdout_report(coeffs)
    assert len(rows) == len(coeffs.windows)
    for row, w in zip(rows, coeffs.windows, strict=True):
        assert (row["wvc_min"], row["vza_max"], row["n_train"]) == (w.wvc_min, w.vza_max, w.n_train)
        assert row["rmse_holdout_k"] == w.rmse_holdout_k
        assert ("too few" in row["note"]) == (not w.fitted)


def _blend_reference(coeffs: SplitWindowCoefficients, cols: dict[str, np.ndarray]) -> np.ndarray:
    """The documented rule, pixel by pixel in float64: the pixel's VZA band (the edge band beyond), the fitted WVC
    window holding its WVC, and in an overlap the two windows' coefficients blended by the position in it."""
    bands: dict[tuple[float, float], list[SplitWindowWindow]] = {}
    for w in coeffs.windows:
        bands.setdefault((w.vza_min, w.vza_max), []).append(w)
    keys = sorted(bands)
    band = np.minimum(np.searchsorted([hi for _, hi in keys[:-1]], cols["vza"], side="right"), len(keys) - 1)
    out = np.full(cols["wvc"].size, np.nan)
    for b, key in enumerate(keys):
        at = band == b
        wvc = cols["wvc"][at]
        ws = sorted(bands[key], key=lambda w: w.wvc_min)
        coef = {k: np.full(wvc.size, ws[0].coefficients[k]) for k in COEFFICIENT_NAMES}
        for lower, upper in itertools.pairwise(ws):
            t = np.clip((wvc - upper.wvc_min) / (lower.wvc_max - upper.wvc_min), 0.0, 1.0)
            past = wvc >= upper.wvc_min
            for k in COEFFICIENT_NAMES:
                coef[k] = np.where(past, (1 - t) * lower.coefficients[k] + t * upper.coefficients[k], coef[k])
        out[at] = _formula({k: v[at] for k, v in cols.items()}, coef)
    return out


def test_block_kernel_equals_the_documented_blend_on_random_float32_pixels_across_windows_bands_and_overlaps():
    # Coefficients that differ per window and band, so a wrong window or weight shows by kelvins.
    coeffs = fit_split_window(_table(n=12_000, coef=_smooth_truth, vza_max=65.0))
    rng = np.random.default_rng(7)
    cases = {
        "everywhere": _inputs(3_000, rng, wvc_max=7.0, vza_max=70.0),
        "one window, one band": {**_inputs(3_000, rng), "wvc": rng.uniform(0.5, 1.9, 3_000),
                                 "vza": rng.uniform(0.0, 14.0, 3_000)},
        "one overlap": {**_inputs(3_000, rng), "wvc": rng.uniform(2.05, 2.45, 3_000), "vza": np.full(3_000, 20.0)},
        "windows and overlaps": {**_inputs(3_000, rng), "wvc": np.sort(rng.uniform(1.5, 4.2, 3_000)),
                                 "vza": np.full(3_000, 40.0)},
    }
    for name, cols in cases.items():
        f32 = {k: v.astype(np.float32) for k, v in cols.items()}
        args = [f32[k] for k in ("bt_10_80", "bt_11_95", "emis_10_80", "emis_11_95", "wvc", "vza")]
        ref = _blend_reference(coeffs, {k: v.astype(np.float64) for k, v in f32.items()})
        alone = apply_split_window(coeffs, *(a[:400] for a in args), block_size=1)  # each pixel a block of its own
        for block in (5, 700, 65536):  # blocks inside one window, spanning windows, and the whole array
            got = apply_split_window(coeffs, *args, block_size=block)
            assert got.dtype == np.float32
            assert np.max(np.abs(got - ref)) < 1e-4, (name, block)  # float32 rounding of ~300 K is 3e-5 K
            # a pixel's value does not depend on which pixels share its block
            assert np.array_equal(got[:400], alone), (name, block)
    # the cases did reach every path: blocks in one window, blocks across windows, blocks across bands
    assert len({tuple(np.unique(np.searchsorted([15.0, 35.0], c["vza"], side="right"))) for c in cases.values()}) >= 3


def test_nan_pixels_in_a_block_of_one_window_come_back_nan_and_the_others_unchanged():
    coeffs = _hand_coeffs([0.0, 1.0])
    rng = np.random.default_rng(3)
    cols = {**_inputs(500, rng), "wvc": rng.uniform(0.2, 1.8, 500), "vza": np.full(500, 10.0)}
    args = [cols[k].copy() for k in ("bt_10_80", "bt_11_95", "emis_10_80", "emis_11_95", "wvc", "vza")]
    clean = apply_split_window(coeffs, *args)
    args[2][[5, 77]] = np.nan
    args[4][300] = np.nan
    got = apply_split_window(coeffs, *args, allow_nan=True)
    assert np.flatnonzero(np.isnan(got)).tolist() == [5, 77, 300]
    keep = ~np.isnan(got)
    assert np.array_equal(got[keep], clean[keep])
    with pytest.raises(ValueError, match="wvc: 1 non-finite"):
        apply_split_window(coeffs, *args[:2], cols["emis_10_80"], *args[3:])
    args[4][300] = 16.0
    with pytest.raises(ValueError, match=r"wvc: values span \[.*16\] g cm-2, outside the valid range"):
        apply_split_window(coeffs, *args, allow_nan=True)
