"""In situ radiometer LST: hand-computed cases, forward/inverse round trip, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from sftl_dask.physics.constants import STEFAN_BOLTZMANN
from sftl_dask.physics.insitu import radiometer_lst, upwelling_longwave


def test_blackbody_needs_no_sky_correction():
    up = STEFAN_BOLTZMANN * 300.0**4  # ~459.3 W m-2
    for down in (0.0, 250.0, 700.0):
        assert float(radiometer_lst(up, down, 1.0)) == pytest.approx(300.0, abs=1e-9)


def test_grey_surface_hand_computed():
    # eps_b = 0.95, Ts = 290 K, L_down = 300 W m-2:
    # L_up = 0.95 * 5.670374419e-8 * 7.07281e9 + 0.05 * 300 = 381.00207 + 15
    up = 0.95 * 5.670374419e-8 * 290.0**4 + 0.05 * 300.0
    assert up == pytest.approx(396.00207, abs=1e-5)
    assert float(radiometer_lst(up, 300.0, 0.95)) == pytest.approx(290.0, abs=1e-9)
    # ignoring the reflected sky would read ~2.8 K too warm on this surface
    assert 2.7 < float(radiometer_lst(up, 0.0, 0.95)) - 290.0 < 2.9


def test_forward_inverse_round_trip_below_a_nanokelvin():
    rng = np.random.default_rng(0)
    lst = rng.uniform(230.0, 340.0, 10_000)
    down = rng.uniform(150.0, 450.0, 10_000)
    emis = rng.uniform(0.9, 1.0, 10_000)
    up = upwelling_longwave(lst, down, emis)
    assert np.max(np.abs(radiometer_lst(up, down, emis) - lst)) < 1e-9


def test_inputs_broadcast():
    lst = np.array([[280.0], [300.0]])
    up = upwelling_longwave(lst, np.array([200.0, 300.0, 400.0]), 0.97)
    assert up.shape == (2, 3)
    assert np.allclose(radiometer_lst(up, np.array([200.0, 300.0, 400.0]), 0.97), np.broadcast_to(lst, (2, 3)))


@pytest.mark.parametrize(
    ("up", "down", "emis", "name"),
    [
        (20.0, 300.0, 0.97, "upwelling_w_m2"),
        (1200.0, 300.0, 0.97, "upwelling_w_m2"),
        (np.nan, 300.0, 0.97, "upwelling_w_m2"),
        (400.0, -5.0, 0.97, "downwelling_w_m2"),
        (400.0, 800.0, 0.97, "downwelling_w_m2"),
        (400.0, 300.0, 0.7, "broadband_emissivity"),
        (400.0, 300.0, 1.01, "broadband_emissivity"),
        (400.0, 300.0, np.nan, "broadband_emissivity"),
        # emitted flux 50 - 0.2 * 700 < 0
        (50.0, 700.0, 0.8, "upwelling_w_m2"),
    ],
)
def test_bad_input_raises_naming_the_variable_or_gives_nan_when_allowed(up, down, emis, name):
    with pytest.raises(ValueError, match=name):
        radiometer_lst(up, down, emis)
    ups = np.array([up, 400.0])
    out = radiometer_lst(ups, np.array([down, 300.0]), np.array([emis, 0.97]), allow_nan=True)
    assert np.isnan(out[0])
    assert out[1] == pytest.approx(float(radiometer_lst(400.0, 300.0, 0.97)), abs=1e-12)


def test_forward_model_rejects_bad_temperature_naming_it():
    with pytest.raises(ValueError, match="lst_k"):
        upwelling_longwave(50.0, 300.0, 0.97)
    with pytest.raises(ValueError, match="broadband_emissivity"):
        upwelling_longwave(300.0, 300.0, 0.5)
    out = upwelling_longwave(np.array([np.nan, 300.0]), 300.0, 0.97, allow_nan=True)
    assert np.isnan(out[0]) and np.isfinite(out[1])
