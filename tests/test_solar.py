"""Earth-Sun distance and band solar irradiance (ESUN) against independent values."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from sftl_dask.physics.channels import Channel
from sftl_dask.physics.solar import band_solar_irradiance, earth_sun_distance_au

AU_KM = 149_597_870.7  # IAU 2012 Resolution B2


@pytest.fixture(scope="module")
def e490() -> tuple[np.ndarray, np.ndarray]:
    """The packaged ASTM E-490 AM0 spectrum (um, W m-2 um-1)."""
    text = resources.files("sftl_dask.data").joinpath("solar_e490_00a.dat").read_text()
    data = np.loadtxt(text.splitlines(), skiprows=1)
    return data[:, 0], data[:, 1]


# --------------------------------------------------------------------------------------------- Earth-Sun distance
@pytest.mark.parametrize(("time", "km"), [
    # 2022 perihelion and aphelion (USNO / IMCCE tables: 147,105,052 km and 152,098,455 km). The distance is
    # stationary there, so the hour of the event does not matter. Spencer's series errs by 4.3e-4 AU there
    # (measured); the bound pins that, so a worse formula fails.
    ("2022-01-04T07:00", 147_105_052.0),
    ("2022-07-04T07:00", 152_098_455.0),
])
def test_earth_sun_distance_matches_the_2022_perihelion_and_aphelion(time, km):
    assert float(earth_sun_distance_au(np.datetime64(time))) == pytest.approx(km / AU_KM, abs=4.5e-4)


def test_earth_sun_distance_has_its_extremes_in_early_january_and_july():
    days = np.datetime64("2022-01-01T12:00") + np.arange(365) * np.timedelta64(1, "D")
    d = earth_sun_distance_au(days)
    assert d.shape == (365,) and d.dtype == np.float64
    assert 2 <= int(np.argmin(d)) <= 4 and 182 <= int(np.argmax(d)) <= 186  # 3-5 January, 2-6 July
    assert d.min() == pytest.approx(0.98329, abs=4.5e-4) and d.max() == pytest.approx(1.01671, abs=4.5e-4)  # Spencer
    # Kepler: the time mean of 1/r^2 over an orbit of semi-major axis 1 AU is 1/sqrt(1 - e^2) ~ 1.000139 (e = 0.0167)
    assert np.mean(1.0 / d**2) == pytest.approx(1.0 / np.sqrt(1 - 0.0167**2), abs=5e-5)


# --------------------------------------------------------------------------------------------- ESUN
def test_e490_integrates_to_the_solar_constant(e490):
    assert float(np.trapezoid(e490[1], e490[0])) == pytest.approx(1366.1, abs=0.5)


def test_esun_equals_an_independent_trapezoid_over_the_spectrum_samples(e490):
    wl, irr = e490
    for lo, hi in [(0.62, 0.68), (0.76, 0.86), (1.55, 1.75), (2.08, 2.35)]:
        c = Channel.boxcar("b", "B", (lo + hi) / 2, lo, hi)
        inside = (wl >= lo) & (wl <= hi)
        plain = np.trapezoid(irr[inside], wl[inside]) / (wl[inside][-1] - wl[inside][0])
        assert band_solar_irradiance(c.wavelength_um, c.response, wl, irr) == pytest.approx(plain, rel=3e-3)


def test_esun_of_a_triangle_response_on_a_linear_spectrum_is_exact():
    wl = np.linspace(0.4, 1.0, 601)
    irr = 1000.0 + 500.0 * wl  # linear: the SRF-weighted mean is E at the SRF's centroid
    srf_wl = np.array([0.6, 0.65, 0.7])
    got = band_solar_irradiance(srf_wl, np.array([0.0, 1.0, 0.0]), wl, irr)
    assert got == pytest.approx(1000.0 + 500.0 * 0.65, rel=1e-12)


# Landsat 7 ETM+ ESUN (Landsat 7 Science Data Users Handbook, Table 11.3 / Chander et al. 2009 "CHKUR" column
# differs by <2 %): bands 1-5, 7 with their nominal edges; our boxcars through E-490 must come within 3 %.
ETM_PLUS = [(0.450, 0.515, 1969.0), (0.525, 0.605, 1840.0), (0.630, 0.690, 1551.0), (0.775, 0.900, 1044.0),
            (1.550, 1.750, 225.7), (2.090, 2.350, 82.07)]


@pytest.mark.parametrize(("lo", "hi", "published"), ETM_PLUS)
def test_esun_of_boxcars_is_within_3_percent_of_published_landsat7_values(e490, lo, hi, published):
    c = Channel.boxcar("etm", "ETM", (lo + hi) / 2, lo, hi)
    assert band_solar_irradiance(c.wavelength_um, c.response, *e490) == pytest.approx(published, rel=0.03)


@pytest.mark.parametrize(("srf_wl", "srf", "match"), [
    ([0.6, 0.7], [0.0, 0.0], "zero everywhere"),
    ([0.7, 0.6], [1.0, 1.0], "strictly increasing"),
    ([0.6, 0.7], [1.0, -1.0], ">= 0"),
    ([0.6, 0.7, 0.8], [1.0, 1.0], "equal length"),
    ([5.0, 6.0], [1.0, 1.0], "does not cover"),
])
def test_esun_refuses_bad_responses(srf_wl, srf, match):
    wl = np.linspace(0.3, 2.5, 100)
    with pytest.raises(ValueError, match=match):
        band_solar_irradiance(srf_wl, srf, wl, np.ones_like(wl))
