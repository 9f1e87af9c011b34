"""Planck and channel behaviour: round trips, monotonicity, SRF weights, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from sftl_dask.physics.channels import THERMAL_NAMES, Channel, thermal_channels
from sftl_dask.physics.planck import band_planck, planck_radiance, planck_temperature


def test_four_thermal_channels_in_order_with_paper_centres():
    chans = thermal_channels()
    assert tuple(c.name for c in chans) == THERMAL_NAMES
    assert [c.centre_um for c in chans] == [8.20, 8.63, 10.80, 11.95]
    for c in chans:
        assert c.lower_um < c.centre_um < c.upper_um


def test_band_planck_round_trip_below_one_millikelvin_over_180_to_350_k():
    t = np.linspace(180.0, 350.0, 20_001)
    for bp in band_planck():
        back = bp.brightness_temperature(bp.radiance(t))
        assert np.max(np.abs(back - t)) < 1e-3


def test_band_radiance_equals_srf_weighted_spectral_integral():
    ch = thermal_channels()[2]
    wl = np.linspace(ch.lower_um - 0.05, ch.upper_um + 0.05, 4001)
    direct = ch.band_average(wl, planck_radiance(wl, 300.0))
    assert band_planck()[2].radiance(300.0) == pytest.approx(direct, rel=5e-5)
    # a blackbody at 300 K near 10.8 um emits about 9.5 W m-2 sr-1 um-1
    assert 9.0 < direct < 10.0


def test_monochromatic_planck_inverse_is_exact():
    wl = np.array([8.2, 10.8, 12.0])
    t = np.array([230.0, 300.0, 340.0])
    assert np.allclose(planck_temperature(wl, planck_radiance(wl, t)), t, atol=1e-9)


def test_band_planck_refuses_nan_and_out_of_range_with_variable_name():
    bp = band_planck()[0]
    with pytest.raises(ValueError, match="temperature_k"):
        bp.radiance(np.array([300.0, np.nan]))
    with pytest.raises(ValueError, match="outside the valid range"):
        bp.radiance(500.0)
    assert np.isnan(bp.radiance(np.array([300.0, np.nan]), allow_nan=True)[1])


def test_srf_weights_sum_to_one_and_vanish_outside_band():
    ch = thermal_channels()[0]
    wl = np.linspace(7.5, 9.0, 301)
    w = ch.weights(wl)
    assert w.sum() == pytest.approx(1.0)
    assert np.all(w[(wl < ch.lower_um - 0.01) | (wl > ch.upper_um + 0.01)] == 0)


def test_srf_weights_refuse_grid_not_covering_band():
    with pytest.raises(ValueError, match="does not cover"):
        thermal_channels()[3].weights(np.linspace(8, 11, 50))


def test_measured_srf_table_gives_response_weighted_centre():
    wl = np.linspace(10.0, 11.6, 161)
    rsp = np.exp(-0.5 * ((wl - 10.8) / 0.2) ** 2)
    ch = Channel.from_table("bt_10_80", "B11", wl, rsp)
    assert ch.centre_um == pytest.approx(10.8, abs=1e-3)
    with pytest.raises(ValueError, match="strictly increasing"):
        Channel.from_table("x", "B", wl[::-1], rsp)
