"""The testbed's GF5-02 VIMI pushbroom model and the RPC00B fitted to it."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyproj import Geod

from sftl_dask.io.rpc import RpcFit, view_zenith
from sftl_dask.testbed.sensor import PushbroomSensor, fit_sensor_rpc

GEOD = Geod(ellps="WGS84")
HEIHE = (100.4, 38.9)
CENTRE = 749.5  # centre line and sample of the default 1500 x 1500 scene


@pytest.fixture(scope="module")
def sensor() -> PushbroomSensor:
    return PushbroomSensor(*HEIHE)


@pytest.fixture(scope="module")
def fit(sensor: PushbroomSensor) -> RpcFit:
    return fit_sensor_rpc(sensor)


def _distance_m(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    return float(GEOD.inv(float(a[0]), float(a[1]), float(b[0]), float(b[1]))[2])


def test_geometry_matches_the_orbit_and_the_pixel(sensor: PushbroomSensor) -> None:
    lon, lat = sensor.localize(CENTRE, CENTRE, 0.0)
    assert abs(lon - HEIHE[0]) < 1e-9 and abs(lat - HEIHE[1]) < 1e-9  # nadir of the centre line is the centre
    centre = sensor.localize(CENTRE, CENTRE, 0.0)
    assert _distance_m(centre, sensor.localize(CENTRE, CENTRE + 1, 0.0)) == pytest.approx(40.0, abs=0.01)
    assert _distance_m(centre, sensor.localize(CENTRE + 1, CENTRE, 0.0)) == pytest.approx(40.0, abs=0.01)
    swath = _distance_m(sensor.localize(CENTRE, 0, 0.0), sensor.localize(CENTRE, 1499, 0.0))
    assert swath == pytest.approx(59_966, abs=5)  # 1499 px × 40 m, curvature and look angle included
    assert sensor.line_period_s == pytest.approx(5.853e-3, abs=0.001e-3)
    # samples grow to the east and lines to the south on a descending pass: not mirrored
    assert sensor.localize(CENTRE, 1499, 0.0)[0] > HEIHE[0] and sensor.localize(1499, CENTRE, 0.0)[1] < HEIHE[1]


@pytest.mark.parametrize(("descending", "expected"), [(True, 193.52), (False, 346.48)])
def test_heading_follows_inclination_and_earth_rotation(descending: bool, expected: float) -> None:
    sensor = PushbroomSensor(*HEIHE, descending=descending)
    # spherical ground track: inertial azimuth asin(cos i / cos φ), then the Earth's rotation under it
    phi = math.atan((1 - 0.00669437999014) * math.tan(math.radians(HEIHE[1])))
    inc = math.radians(sensor.inclination_deg)
    azimuth = math.asin(math.cos(inc) / math.cos(phi))
    azimuth = math.pi - azimuth if descending else azimuth
    radius = 6_371_000.0
    speed = math.sqrt(3.986004418e14 / (radius + 705_000.0) ** 3) * radius
    east = speed * math.sin(azimuth) - 7.292115e-5 * radius * math.cos(phi)
    analytic = math.degrees(math.atan2(east, speed * math.cos(azimuth))) % 360
    assert sensor.heading_deg == pytest.approx(analytic, abs=0.01)
    assert sensor.heading_deg == pytest.approx(expected, abs=0.01)


def test_ground_to_image_inverts_image_to_ground(sensor: PushbroomSensor) -> None:
    rng = np.random.default_rng(5)
    line, sample, h = rng.uniform(0, 1499, 500), rng.uniform(0, 1499, 500), rng.uniform(0, 5000, 500)
    lon, lat = sensor.localize(line, sample, h)
    line_back, sample_back = sensor.project(lon, lat, h)
    assert np.abs(line_back - line).max() < 1e-7 and np.abs(sample_back - sample).max() < 1e-7
    # terrain displacement at the swath edge: 1 km of height moves the ground point by tan(VZA) km
    low, high = sensor.localize(CENTRE, 1499, 0.0), sensor.localize(CENTRE, 1499, 1000.0)
    vza = float(sensor.view_zenith(CENTRE, 1499, 0.0))
    assert _distance_m(low, high) == pytest.approx(math.tan(math.radians(vza)) * 1000, abs=0.05)


def test_fitted_rpc_reproduces_the_sensor(sensor: PushbroomSensor, fit: RpcFit) -> None:
    assert (fit.n_control, fit.n_check) == (21 * 21 * 7, 20 * 20 * 6)
    assert fit.check_rms_px <= 0.05 and fit.check_max_px <= 0.1  # the target: ≤ 0.05 px
    assert fit.check_rms_px < 1e-6 and fit.check_max_px < 5e-6  # measured: 2.8e-7 / 1.1e-6 px
    rng = np.random.default_rng(7)
    line, sample, h = rng.uniform(0, 1499, 2000), rng.uniform(0, 1499, 2000), rng.uniform(0, 5000, 2000)
    lon, lat = sensor.localize(line, sample, h)
    line_rpc, sample_rpc = fit.rpc.project(lon, lat, h)
    error = np.hypot(line_rpc - line, sample_rpc - sample)
    assert np.sqrt(np.mean(error ** 2)) < 1e-6 and error.max() < 5e-6


def test_rpc_view_zenith_matches_the_sensor(sensor: PushbroomSensor, fit: RpcFit) -> None:
    line, sample = np.meshgrid(np.linspace(0, 1499, 11), np.linspace(0, 1499, 61), indexing="ij")
    from_rpc = view_zenith(fit.rpc, line, sample)
    truth = sensor.view_zenith(line, sample, 0.0)
    assert np.abs(from_rpc - truth).max() < 0.05  # the brief's bound; measured 2.2e-4 deg
    assert np.abs(from_rpc - truth).max() < 1e-3
    assert truth.min() == pytest.approx(0.1876, abs=1e-3) and truth.max() == pytest.approx(2.754, abs=1e-3)


def test_fit_serves_other_scene_sizes_and_places() -> None:
    small = PushbroomSensor(115.788, 40.349, lines=400, samples=300, descending=False)
    fit = fit_sensor_rpc(small, steps=11, check_steps=10, layers=5)
    assert (fit.rpc.line_scale, fit.rpc.samp_scale) == (199.5, 149.5)
    assert fit.check_rms_px < 1e-6 and fit.check_max_px < 5e-6


def test_bad_sensor_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match=r"latitude 85\.0 is beyond the orbit.s reach"):
        PushbroomSensor(100.0, 85.0)
    with pytest.raises(ValueError, match="bad size 1x1500 px"):
        PushbroomSensor(100.0, 40.0, lines=1)


def test_line_of_sight_meets_the_terrain(sensor: PushbroomSensor) -> None:
    def hill(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """A 3 km Gaussian hill on a 1.5 km plain, 10 km wide, centred east of the scene centre."""
        return 1500.0 + 3000.0 * np.exp(-(((lon - 100.5) * 86.7) ** 2 + ((lat - 38.9) * 111.0) ** 2) / 2 / 5.0 ** 2)

    line, sample = np.meshgrid(np.linspace(0, 1499, 9), np.linspace(0, 1499, 9), indexing="ij")
    lon, lat, height = sensor.localize_on_terrain(line, sample, hill)
    assert np.abs(height - hill(lon, lat)).max() < 1e-3 and height.max() > 3000
    line_back, sample_back = sensor.project(lon, lat, height)
    assert np.abs(line_back - line).max() < 1e-4 and np.abs(sample_back - sample).max() < 1e-4
    # the hill leans away from nadir: east of the centre, the ground seen is displaced toward the sensor
    flat_lon, _ = sensor.localize(line, sample, 1500.0)
    assert (lon - flat_lon)[4, 6] < 0
    with pytest.raises(ValueError, match="no convergence"):
        sensor.localize_on_terrain(line, sample, lambda lo, la: 1e7 * (lo - 100.4), max_iter=5)
