"""A rigorous pushbroom sensor model of GF5-02 VIMI, and the RPC00B model fitted to it.

The testbed renders its scenes in sensor geometry with this model and delivers the RPCs fitted to it (as a real
ground segment does): :func:`fit_sensor_rpc` samples the model on a 3-D grid and calls
:func:`sftl_dask.io.rpc.fit_rpc`.

The model
---------
- Orbit: circular, ``altitude_m`` above the ellipsoid's geocentric radius at the scene centre, inclination
  ``inclination_deg`` (GF5-02: ~705 km, sun-synchronous; 98.2° is the inclination that makes 705 km
  sun-synchronous, as the GF-5 series flies), mean motion from Kepler's third law (GM of WGS 84). Earth
  rotation (WGS 84 ω) turns the inertial orbit into the Earth-fixed track, so the ground track's heading at the
  scene latitude follows from the inclination and the pass direction (``descending`` by default: unconfirmed
  for GF5-02, a parameter).
- Attitude: geocentric nadir pointing, yaw-steered to the Earth-fixed velocity (scan lines perpendicular to
  the ground track); line ``k`` is imaged at ``t = (k - (lines-1)/2) * line_period_s`` seconds from the scene
  centre, with the line period that advances one ground pixel per line at nadir.
- Detectors: one row across the track, look angle ``atan((sample - (samples-1)/2) * ifov)`` with
  ``ifov = gsd_m / altitude_m`` (40 m TIR pixels at nadir; ``samples = 1500`` spans the ~60 km swath,
  unconfirmed). Samples increase to the left of the flight direction, so the image is not mirrored.
- Ground: rays are intersected with the WGS 84 ellipsoid raised to the given geodetic height (exactly: a
  Newton step on the geodetic height of the ray point, pyproj for ECEF <-> geodetic).

Image coordinates follow RPC00B: ``(line, sample) = (0, 0)`` is the centre of the first pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pyproj import Transformer

from sftl_dask.io.rpc import RpcFit, fit_rpc

__all__ = ["VIMI_ALTITUDE_M", "VIMI_INCLINATION_DEG", "VIMI_TIR_GSD_M", "PushbroomSensor", "fit_sensor_rpc",
           "sensor_grid"]

#: GF5-02 orbit altitude (m), FACTS.md ("~705 km sun-synchronous").
VIMI_ALTITUDE_M = 705_000.0
#: Inclination (deg) of a 705 km sun-synchronous orbit (the GF-5 series'; not stated in FACTS.md).
VIMI_INCLINATION_DEG = 98.2
#: TIR ground sample distance at nadir (m), FACTS.md.
VIMI_TIR_GSD_M = 40.0
#: Swath (m), FACTS.md ("≈ 60 km (unconfirmed)"): 1500 TIR pixels.
VIMI_SWATH_M = 60_000.0

_A = 6378137.0  # WGS 84 semi-major axis (m)
_F = 1 / 298.257223563  # WGS 84 flattening
_B = _A * (1 - _F)
_E2 = _F * (2 - _F)
_GM = 3.986004418e14  # WGS 84 geocentric gravitational constant (m^3 s^-2)
_OMEGA_E = 7.292115e-5  # WGS 84 Earth rotation rate (rad s^-1)

_TO_ECEF = Transformer.from_crs("EPSG:4979", "EPSG:4978", always_xy=True)
_TO_GEODETIC = Transformer.from_crs("EPSG:4978", "EPSG:4979", always_xy=True)

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class PushbroomSensor:
    """GF5-02 VIMI TIR as a pushbroom over a scene centred at (``centre_lon``, ``centre_lat``) (degrees).

    ``lines`` × ``samples`` pixels of ``gsd_m`` metres at nadir; see the module docstring for the model.
    Construction raises ValueError for a latitude the orbit never reaches or a non-positive size.
    """

    centre_lon: float
    centre_lat: float
    lines: int = 1500
    samples: int = int(VIMI_SWATH_M / VIMI_TIR_GSD_M)
    gsd_m: float = VIMI_TIR_GSD_M
    altitude_m: float = VIMI_ALTITUDE_M
    inclination_deg: float = VIMI_INCLINATION_DEG
    descending: bool = True
    #: Seconds between lines (one nadir ground pixel of travel), derived.
    line_period_s: float = field(init=False)
    #: Instantaneous field of view (rad) of one detector, derived: gsd_m / altitude_m.
    ifov_rad: float = field(init=False)
    _orbit: tuple[float, float, float, float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.lines < 2 or self.samples < 2 or self.gsd_m <= 0 or self.altitude_m <= 0:
            raise ValueError(f"PushbroomSensor: bad size {self.lines}x{self.samples} px, gsd {self.gsd_m} m, "
                             f"altitude {self.altitude_m} m")
        lat_gc = math.atan((1 - _E2) * math.tan(math.radians(self.centre_lat)))
        sin_u = math.sin(lat_gc) / math.sin(math.radians(self.inclination_deg))
        if abs(sin_u) > 1:
            raise ValueError(f"PushbroomSensor: latitude {self.centre_lat} is beyond the orbit's reach "
                             f"(inclination {self.inclination_deg} deg)")
        u0 = math.pi - math.asin(sin_u) if self.descending else math.asin(sin_u)
        inc = math.radians(self.inclination_deg)
        # the geocentric radius of the ellipsoid at the centre: the satellite flies altitude_m above it
        r_surface = _A * _B / math.hypot(_B * math.cos(lat_gc), _A * math.sin(lat_gc))
        radius = r_surface + self.altitude_m
        mean_motion = math.sqrt(_GM / radius ** 3)
        node = math.radians(self.centre_lon) - math.atan2(math.sin(u0) * math.cos(inc), math.cos(u0))
        object.__setattr__(self, "_orbit", (radius, mean_motion, u0, node, inc))
        object.__setattr__(self, "line_period_s", 1.0)
        # one nadir ground pixel per line, at the Earth-fixed ground speed at the centre (Earth rotation included)
        dt = 1e-3
        span = self.state(np.array([(self.lines - 1) / 2 - dt / 2, (self.lines - 1) / 2 + dt / 2]))[0]
        ground_speed = float(np.linalg.norm(span[:, 1] - span[:, 0])) / dt * r_surface / radius
        object.__setattr__(self, "line_period_s", self.gsd_m / ground_speed)
        object.__setattr__(self, "ifov_rad", self.gsd_m / self.altitude_m)

    # -- orbit and attitude -------------------------------------------------------------------------------
    def state(self, line: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Satellite ECEF position (m, shape (3, ...)), nadir axis and left-of-track axis at image ``line``."""
        radius, n, u0, node, inc = self._orbit
        t = (np.asarray(line, np.float64) - (self.lines - 1) / 2) * self.line_period_s
        u, theta = u0 + n * t, _OMEGA_E * t
        cu, su, co, so, ci, si = np.cos(u), np.sin(u), math.cos(node), math.sin(node), math.cos(inc), math.sin(inc)
        pos_i = radius * np.stack([co * cu - so * su * ci, so * cu + co * su * ci, su * si])
        vel_i = radius * n * np.stack([-co * su - so * cu * ci, -so * su + co * cu * ci, cu * si])
        ct, st = np.cos(theta), np.sin(theta)
        pos = np.stack([ct * pos_i[0] + st * pos_i[1], -st * pos_i[0] + ct * pos_i[1], pos_i[2]])
        vel = np.stack([ct * vel_i[0] + st * vel_i[1] + _OMEGA_E * pos[1],
                        -st * vel_i[0] + ct * vel_i[1] - _OMEGA_E * pos[0], vel_i[2]])
        nadir = -pos / np.linalg.norm(pos, axis=0)
        cross = np.cross(nadir, vel, axis=0)
        cross /= np.linalg.norm(cross, axis=0)  # nadir × velocity: right of track
        along = np.cross(cross, nadir, axis=0)
        left = np.cross(along, nadir, axis=0)
        return pos, nadir, left

    @property
    def heading_deg(self) -> float:
        """Azimuth of the ground track at the scene centre (degrees clockwise from north, Earth-fixed)."""
        _, nadir, left = self.state((self.lines - 1) / 2)
        along = np.cross(nadir, left)
        lon, lat = math.radians(self.centre_lon), math.radians(self.centre_lat)
        east = np.array([-math.sin(lon), math.cos(lon), 0.0])
        north = np.array([-math.sin(lat) * math.cos(lon), -math.sin(lat) * math.sin(lon), math.cos(lat)])
        return math.degrees(math.atan2(float(along @ east), float(along @ north))) % 360.0

    # -- image -> ground ----------------------------------------------------------------------------------
    def localize(self, line: ArrayLike, sample: ArrayLike, h: ArrayLike = 0.0) -> tuple[FloatArray, FloatArray]:
        """Ground (lon, lat) in degrees of image (line, sample) at geodetic height ``h`` (m above WGS 84).

        Vectorised (inputs broadcast). Raises ValueError if a ray misses the raised ellipsoid.
        """
        line_a, samp_a, h_a = (np.asarray(a, np.float64) for a in np.broadcast_arrays(line, sample, h))
        pos, nadir, left = self.state(line_a)
        psi = np.arctan((samp_a - (self.samples - 1) / 2) * self.ifov_rad)
        ray = np.cos(psi) * nadir + np.sin(psi) * left
        # first guess: the ellipsoid with both axes raised by h, then Newton on the exact geodetic height
        ax, bx = (_A + h_a) ** 2, (_B + h_a) ** 2
        qa = (ray[0] ** 2 + ray[1] ** 2) / ax + ray[2] ** 2 / bx
        qb = 2 * ((pos[0] * ray[0] + pos[1] * ray[1]) / ax + pos[2] * ray[2] / bx)
        qc = (pos[0] ** 2 + pos[1] ** 2) / ax + pos[2] ** 2 / bx - 1
        disc = qb ** 2 - 4 * qa * qc
        if np.any(disc < 0):
            raise ValueError("PushbroomSensor.localize: a line of sight misses the Earth (look angle too large)")
        dist = (-qb - np.sqrt(disc)) / (2 * qa)
        for _ in range(3):
            point = pos + dist * ray
            lon, lat, height = _TO_GEODETIC.transform(point[0], point[1], point[2])
            lon_r, lat_r = np.radians(lon), np.radians(lat)
            up = np.stack([np.cos(lat_r) * np.cos(lon_r), np.cos(lat_r) * np.sin(lon_r), np.sin(lat_r)])
            dist = dist - (height - h_a) / np.sum(ray * up, axis=0)
        point = pos + dist * ray
        lon, lat, _ = _TO_GEODETIC.transform(point[0], point[1], point[2])
        return np.asarray(lon, np.float64), np.asarray(lat, np.float64)

    def localize_on_terrain(self, line: ArrayLike, sample: ArrayLike,
                            height_at: Callable[[FloatArray, FloatArray], FloatArray], *, tol_m: float = 1e-3,
                            max_iter: int = 20) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Where the line of sight of (line, sample) meets the terrain: (lon, lat) in degrees and height (m).

        ``height_at(lon, lat)`` gives the terrain height above WGS 84 (m), vectorised. Fixed-point iteration on
        the height, which contracts by tan(VZA) × terrain slope per step (< 0.05 × slope over VIMI's swath),
        until every height moves less than ``tol_m``. Raises ValueError if it has not converged in
        ``max_iter`` steps (a cliff steeper than the sight line).
        """
        line_a, samp_a = (np.asarray(a, np.float64).ravel() for a in np.broadcast_arrays(line, sample))
        shape = np.broadcast_shapes(np.shape(line), np.shape(sample))
        lon, lat, height = (np.zeros(line_a.size) for _ in range(3))
        # only the rays not yet converged go round again (most settle in 2-3 steps; a steep few take more)
        todo = np.arange(line_a.size)
        for _ in range(max_iter):
            lo, la = self.localize(line_a[todo], samp_a[todo], height[todo])
            new = np.asarray(height_at(lo, la), np.float64)
            done = np.abs(new - height[todo]) < tol_m
            lon[todo], lat[todo], height[todo] = lo, la, new
            todo = todo[~done]
            if todo.size == 0:
                return lon.reshape(shape), lat.reshape(shape), height.reshape(shape)
        raise ValueError(f"PushbroomSensor.localize_on_terrain: no convergence to {tol_m} m in {max_iter} steps")

    # -- ground -> image ----------------------------------------------------------------------------------
    def project(self, lon: ArrayLike, lat: ArrayLike, h: ArrayLike = 0.0) -> tuple[FloatArray, FloatArray]:
        """Image (line, sample) in pixels of ground (lon, lat in degrees, h in m above WGS 84).

        The line is the time at which the point lies in the scan plane (Newton on the along-track offset,
        converged to 1e-9 line); the sample follows from the look angle. Vectorised (inputs broadcast).
        """
        lon_a, lat_a, h_a = (np.asarray(a, np.float64) for a in np.broadcast_arrays(lon, lat, h))
        ground = np.stack(_TO_ECEF.transform(lon_a, lat_a, h_a))
        line = np.full(lon_a.shape, (self.lines - 1) / 2)
        for _ in range(20):
            offset, step = self._along_offset(ground, line), 1e-3
            slope = (self._along_offset(ground, line + step) - offset) / step
            delta = offset / slope
            line = line - delta
            if np.all(np.abs(delta) < 1e-9):
                break
        pos, nadir, left = self.state(line)
        sight = ground - pos
        psi = np.arctan2(np.sum(sight * left, axis=0), np.sum(sight * nadir, axis=0))
        return line, np.tan(psi) / self.ifov_rad + (self.samples - 1) / 2

    def _along_offset(self, ground: FloatArray, line: FloatArray) -> FloatArray:
        """Along-track distance (m) of ``ground`` (ECEF) from the scan plane of ``line``."""
        pos, nadir, left = self.state(line)
        return np.sum((ground - pos) * np.cross(nadir, left, axis=0), axis=0)

    def view_zenith(self, line: ArrayLike, sample: ArrayLike, h: ArrayLike = 0.0) -> FloatArray:
        """View zenith angle (degrees) at the ground point of (line, sample, h): satellite vs ellipsoid normal."""
        line_a, samp_a, h_a = (np.asarray(a, np.float64) for a in np.broadcast_arrays(line, sample, h))
        lon, lat = self.localize(line_a, samp_a, h_a)
        ground = np.stack(_TO_ECEF.transform(lon, lat, h_a))
        pos, _, _ = self.state(line_a)
        sight = pos - ground
        lon_r, lat_r = np.radians(lon), np.radians(lat)
        up = np.stack([np.cos(lat_r) * np.cos(lon_r), np.cos(lat_r) * np.sin(lon_r), np.sin(lat_r)])
        return np.degrees(np.arccos(np.sum(sight * up, axis=0) / np.linalg.norm(sight, axis=0)))


def sensor_grid(sensor: PushbroomSensor, *, steps: int, heights: ArrayLike,
                shift: float = 0.0) -> tuple[FloatArray, ...]:
    """(lon, lat, h, line, sample) of a 3-D grid: ``steps`` × ``steps`` image points at each height (m).

    ``shift`` (fraction of a grid step) moves the image grid off the control grid, for check points.
    """
    lines = np.clip((np.arange(steps) + shift) * (sensor.lines - 1) / (steps - 1), 0, sensor.lines - 1)
    samples = np.clip((np.arange(steps) + shift) * (sensor.samples - 1) / (steps - 1), 0, sensor.samples - 1)
    line, sample, h = np.meshgrid(lines, samples, np.asarray(heights, np.float64), indexing="ij")
    lon, lat = sensor.localize(line, sample, h)
    return lon.ravel(), lat.ravel(), h.ravel(), line.ravel(), sample.ravel()


def fit_sensor_rpc(sensor: PushbroomSensor, *, heights_m: tuple[float, float] = (-500.0, 6000.0),
                   layers: int = 7, steps: int = 21, check_steps: int = 20) -> RpcFit:
    """RPC00B fitted to ``sensor`` by the terrain-independent method (:func:`sftl_dask.io.rpc.fit_rpc`).

    Control points: ``steps`` × ``steps`` image points on ``layers`` heights evenly over ``heights_m`` (m).
    Check points: an image grid shifted by half a step, on the mid-heights between the layers.
    """
    heights = np.linspace(*heights_m, layers)
    control = sensor_grid(sensor, steps=steps, heights=heights)
    check = sensor_grid(sensor, steps=check_steps, heights=(heights[:-1] + heights[1:]) / 2, shift=0.5)
    return fit_rpc(*control, check=check)
