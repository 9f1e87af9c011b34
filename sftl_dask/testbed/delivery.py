"""The delivered layout of the testbed: each scene in raw sensor geometry with RPCs, a DEM, hot targets.

``build_testbed(..., layout="delivered")`` renders each scene on its map grid exactly as the map layout does
(same generator draws: the same seed means the same world), then delivers it the way the ground segment does
(issue 28, item 5; FACTS.md "GF5-02 VIMI"):

1. **Sensor geometry.** A :class:`~sftl_dask.testbed.sensor.PushbroomSensor` whose nadir track passes the
   scene's across-track offset away from the scene centre (the orbit's heading, the swath's view angles); the
   image is a window of its detectors (integer line/sample offsets), as many lines and samples as the map scene
   has rows and columns. For every (line, sample) of the 40 m image its ground point on the world's terrain
   (:meth:`~PushbroomSensor.localize_on_terrain`), and the map scene's DN resampled there.
2. **RPCs** fitted to that window of the sensor (RPC00B, terrain-independent, ``fit_rpc``) over the scene's
   terrain heights +-500 m; a fit worse than :data:`RPC_MAX_RESIDUAL_PX` on the check points is refused.
3. **A DEM** of the world's terrain as Copernicus GLO-30 DSM tiles (:func:`write_copernicus_dem_tile`).
4. **Hot targets**: :data:`TARGETS_PER_SCENE` tents of +15 K peak surface temperature, 3 x 3 map pixels, at
   known lon/lat away from the sites and the scene's edges (only in this layout).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from pyproj import Geod, Transformer
from scipy.ndimage import binary_dilation, map_coordinates, maximum_filter, minimum_filter, uniform_filter

from sftl_dask.io.rpc import Rpc, RpcFit, fit_rpc
from sftl_dask.testbed.sensor import PushbroomSensor
from sftl_dask.testbed.world import LAND_COVERS, Landscape

__all__ = [
    "DEM_POSTING_ARCSEC",
    "RPC_MAX_RESIDUAL_PX",
    "TARGETS_PER_SCENE",
    "TARGET_PEAK_K",
    "SceneView",
    "copernicus_dem_name",
    "footprint",
    "hot_targets",
    "lst_pattern",
    "rpc_for_fine_grid",
    "scene_view",
    "sensor_ground",
    "sensor_resample",
    "terrain_height",
    "write_copernicus_dem_tile",
]

#: Largest RPC fit residual (px, check points) the testbed delivers (issue 28: <= 0.05 px).
RPC_MAX_RESIDUAL_PX = 0.05
#: Hot targets per scene, and their peak (K above the surface temperature).
TARGETS_PER_SCENE = 3
TARGET_PEAK_K = 15.0
#: Posting of the delivered DEM tiles (arcsec): GLO-30's own 1 arcsec (``_COG_10_`` in the name).
DEM_POSTING_ARCSEC = 1.0
_GEOD = Geod(ellps="WGS84")


@dataclass(frozen=True)
class SceneView:
    """A delivered image: ``lines`` x ``samples`` detectors of ``sensor`` from (``line0``, ``sample0``).

    Image (line, sample) = sensor (line + ``line0``, sample + ``sample0``); (0, 0) is the centre of the first
    pixel (RPC00B).
    """

    sensor: PushbroomSensor
    line0: int
    sample0: int
    lines: int
    samples: int

    def localize(self, line: Any, sample: Any, h: Any = 0.0) -> tuple[NDArray, NDArray]:
        """Ground (lon, lat) in degrees of image (line, sample) at height ``h`` (m above WGS 84)."""
        return self.sensor.localize(np.asarray(line, float) + self.line0, np.asarray(sample, float) + self.sample0,
                                    h)

    def project(self, lon: Any, lat: Any, h: Any = 0.0) -> tuple[NDArray, NDArray]:
        """Image (line, sample) of ground (lon, lat in degrees, h in m)."""
        line, sample = self.sensor.project(lon, lat, h)
        return line - self.line0, sample - self.sample0

    def fit_rpc(self, heights_m: tuple[float, float], *, layers: int = 7, steps: int = 21) -> RpcFit:
        """RPC00B of the image, fitted on ``steps`` x ``steps`` x ``layers`` control points over ``heights_m``
        (m) and checked on the image grid shifted by half a step at the mid-layer heights."""
        heights = np.linspace(*heights_m, layers)

        def grid(n: int, hs: NDArray, shift: float) -> tuple[NDArray, ...]:
            li = np.clip((np.arange(n) + shift) * (self.lines - 1) / (n - 1), 0, self.lines - 1)
            sa = np.clip((np.arange(n) + shift) * (self.samples - 1) / (n - 1), 0, self.samples - 1)
            line, sample, h = np.meshgrid(li, sa, hs, indexing="ij")
            lon, lat = self.localize(line, sample, h)
            return lon.ravel(), lat.ravel(), h.ravel(), line.ravel(), sample.ravel()

        return fit_rpc(*grid(steps, heights, 0.0), check=grid(steps - 1, (heights[:-1] + heights[1:]) / 2, 0.5))


def scene_view(lon_c: float, lat_c: float, h_c: float, across_km: float, lines: int, samples: int) -> SceneView:
    """The delivered image of a scene centred at (``lon_c``, ``lat_c``, ``h_c`` m), ``across_km`` to the left
    of the nadir track (the map layout's across-track offset, east of the track for a descending pass).

    The sensor is the GF5-02 VIMI pushbroom (descending, 1500 detectors across the swath) whose nadir track
    passes ``across_km`` from the centre, at right angles to the track's heading there.
    """
    heading = PushbroomSensor(lon_c, lat_c).heading_deg
    # samples increase to the left of the flight direction: the nadir point lies to the right of the centre
    lon_n, lat_n, _ = _GEOD.fwd(lon_c, lat_c, heading + 90.0, across_km * 1000.0)
    sensor = PushbroomSensor(float(lon_n), float(lat_n), lines=lines)
    line_c, samp_c = sensor.project(lon_c, lat_c, h_c)
    return SceneView(sensor, round(float(line_c) - (lines - 1) / 2),
                     round(float(samp_c) - (samples - 1) / 2), lines, samples)


def terrain_height(lsc: Landscape) -> Any:
    """``height(lon, lat)`` (m above WGS 84) of the world's terrain: bilinear on the region grid, edge values
    beyond it (the testbed's heights are ellipsoidal: its geoid is the ellipsoid)."""
    to_map = Transformer.from_crs("EPSG:4326", lsc.crs, always_xy=True)
    a, _, c, _, e, f = lsc.transform
    elev = np.asarray(lsc.elevation_m, np.float64)

    def height(lon: NDArray, lat: NDArray) -> NDArray:
        x, y = to_map.transform(lon, lat)
        rows, cols = (np.asarray(y) - f) / e - 0.5, (np.asarray(x) - c) / a - 0.5
        return map_coordinates(elev, [rows.ravel(), cols.ravel()], order=1, mode="nearest").reshape(rows.shape)

    return height


def _map_pixels(lsc: Landscape, lon: NDArray, lat: NDArray) -> tuple[NDArray, NDArray]:
    """Fractional (row, col) on the region grid (centre of the first pixel = 0) of (lon, lat)."""
    x, y = Transformer.from_crs("EPSG:4326", lsc.crs, always_xy=True).transform(lon, lat)
    a, _, c, _, e, f = lsc.transform
    return (np.asarray(y) - f) / e - 0.5, (np.asarray(x) - c) / a - 0.5


def _bilinear_dn(dn: NDArray, rows: NDArray, cols: NDArray, nodata: int) -> NDArray[np.uint16]:
    """Bilinear DN of each band of ``dn`` (bands, H, W) at (rows, cols), rounded; ``nodata`` outside the grid."""
    h, w = dn.shape[-2:]
    inside = (rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)
    out = np.full((dn.shape[0], *rows.shape), nodata, np.uint16)
    for b in range(dn.shape[0]):
        v = map_coordinates(dn[b].astype(np.float64), [rows[inside], cols[inside]], order=1, mode="nearest")
        out[b][inside] = np.rint(v).astype(np.uint16)
    return out


def sensor_ground(view: SceneView, lsc: Landscape) -> tuple[NDArray, NDArray]:
    """Fractional region-grid (row, col) of the terrain point that each 40 m image pixel sees.

    Every pixel's line of sight is intersected with the world's terrain exactly
    (:meth:`~PushbroomSensor.localize_on_terrain`), on the image grid plus a ring one pixel wide around it
    (shape (lines + 2, samples + 2); image pixel (i, j) is element (i + 1, j + 1)).
    """
    li, sa = np.meshgrid(np.arange(-1, view.lines + 1, dtype=float), np.arange(-1, view.samples + 1, dtype=float),
                         indexing="ij")
    lon, lat, _ = view.sensor.localize_on_terrain(li + view.line0, sa + view.sample0, terrain_height(lsc))
    return _map_pixels(lsc, lon, lat)


def sensor_resample(rows: NDArray, cols: NDArray, dn_tir: NDArray, dn_vnir: NDArray, nodata: int = 0
                    ) -> tuple[NDArray[np.uint16], NDArray[np.uint16]]:
    """The map scene's DN (region grid: ``dn_tir`` 40 m, ``dn_vnir`` 20 m) at the image's ground points.

    ``rows``/``cols`` come from :func:`sensor_ground`. The 20 m detectors' ground points are interpolated
    bilinearly in image space between the 40 m ones (their error is tan(VZA) x the terrain's departure from a
    plane within 40 m: centimetres). DN is resampled bilinearly: DN is linear in radiance, so bilinear weights
    average radiance as a wider detector footprint would; nearest would move features by up to half a pixel
    and spoil the geolocation truth, and cubic overshoots at cloud edges (DN outside the 12-bit range).
    Ground points off the region grid get ``nodata``. Returns the TIR (6, L, S) and VNIR (6, 2L, 2S) DN.
    """
    tir = _bilinear_dn(dn_tir, rows[1:-1, 1:-1], cols[1:-1, 1:-1], nodata)
    lines, samples = rows.shape[0] - 2, rows.shape[1] - 2
    # 20 m pixel k is centred at 40 m coordinate k / 2 - 0.25; +1 for the ring
    fl2, fs2 = np.meshgrid(np.arange(2 * lines) / 2 + 0.75, np.arange(2 * samples) / 2 + 0.75, indexing="ij")
    r20 = map_coordinates(rows, [fl2.ravel(), fs2.ravel()], order=1).reshape(fl2.shape)
    c20 = map_coordinates(cols, [fl2.ravel(), fs2.ravel()], order=1).reshape(fl2.shape)
    return tir, _bilinear_dn(dn_vnir, 2 * r20 + 0.5, 2 * c20 + 0.5, nodata)


def footprint(shape: tuple[int, int], rows: NDArray, cols: NDArray) -> NDArray[np.bool_]:
    """Region-grid pixels inside the image footprint (the quadrilateral of the image's corner ground points;
    ``rows``/``cols`` from :func:`sensor_ground`)."""
    return _seen(shape, rows, cols)


def _seen(shape: tuple[int, int], rows: NDArray, cols: NDArray) -> NDArray[np.bool_]:
    """Region-grid pixels inside the image footprint (the quadrilateral of the image's corner ground points)."""
    quad = [(rows[1, 1], cols[1, 1]), (rows[1, -2], cols[1, -2]), (rows[-2, -2], cols[-2, -2]),
            (rows[-2, 1], cols[-2, 1])]
    rr, cc = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    sides = []
    for (r0, c0), (r1, c1) in zip(quad, quad[1:] + quad[:1], strict=True):
        sides.append((c1 - c0) * (rr - r0) - (r1 - r0) * (cc - c0))
    return np.all(np.stack(sides) >= 0, axis=0) | np.all(np.stack(sides) <= 0, axis=0)


def rpc_for_fine_grid(rpc: Rpc) -> Rpc:
    """The RPCs of the 20 m raster from those of the 40 m one: 20 m coordinate = 2 x 40 m coordinate + 0.5."""
    return replace(rpc, line_off=2 * rpc.line_off + 0.5, samp_off=2 * rpc.samp_off + 0.5,
                   line_scale=2 * rpc.line_scale, samp_scale=2 * rpc.samp_scale)


def hot_targets(lsc: Landscape, seen: NDArray[np.bool_], rng: np.random.Generator, *, n: int = TARGETS_PER_SCENE,
                margin_px: int = 24, site_clearance_px: int = 25, cloud: NDArray[np.bool_] | None = None
                ) -> tuple[NDArray[np.float32], list[tuple[int, int]]]:
    """``n`` hot targets on the region grid: the LST offset map (K) and the (row, col) of each centre.

    A target is a tent of :data:`TARGET_PEAK_K` at its centre pixel falling to half on the edge pixels and a
    quarter on the corners (3 x 3 px): bilinear resampling reproduces a tent with knots on pixel centres
    exactly, so its peak stays where the target is. Centres lie ``margin_px`` inside the footprint ``seen``,
    ``site_clearance_px`` from every site and from each other, on one land cover over 9 x 9 px, with no
    ``cloud`` (core or ring) within 6 px, and where the background is flatter than the median candidate's: the
    9 x 9 px standard deviation of the landscape's static LST pattern (:func:`lst_pattern`) at most its median
    over the candidates. Real geolocation checks pick such points (clear, uniform surroundings): on the
    default testbed a background gradient of 0.6 K/px moved a Gaussian peak fit by 1.4-1.9 px, clouds by 4-5 px.
    Fewer than ``n`` targets where fewer candidates qualify (none in an overcast scene).
    """
    h, w = lsc.shape
    inner = seen.copy()
    for axis in (0, 1):
        for step in (-margin_px, margin_px):
            inner &= np.roll(seen, step, axis=axis)
    inner[:margin_px] = inner[-margin_px:] = False
    inner[:, :margin_px] = inner[:, -margin_px:] = False
    # on one land cover over 9 x 9 px, as real geolocation targets sit on uniform fields: a cover edge
    # beside a target would bias any peak estimate
    inner &= maximum_filter(lsc.cover, size=9) == minimum_filter(lsc.cover, size=9)
    if cloud is not None:
        inner &= ~binary_dilation(cloud, iterations=6)
    pattern = lst_pattern(lsc)
    mean = uniform_filter(pattern, 9)
    spread = np.sqrt(np.maximum(uniform_filter(pattern * pattern, 9) - mean * mean, 0.0))
    if inner.any():
        inner &= spread <= np.median(spread[inner])
    avoid = list(lsc.site_pixels.values())
    centres: list[tuple[int, int]] = []
    candidates = np.argwhere(inner)
    for k in rng.permutation(len(candidates)):
        r, c = (int(v) for v in candidates[k])
        if all(math.hypot(r - r0, c - c0) >= site_clearance_px for r0, c0 in avoid + centres):
            centres.append((r, c))
        if len(centres) == n:
            break
    offset = np.zeros((h, w), np.float32)
    tent = TARGET_PEAK_K * np.outer([0.5, 1.0, 0.5], [0.5, 1.0, 0.5])
    for r, c in centres:
        offset[r - 1:r + 2, c - 1:c + 2] += tent.astype(np.float32)
    return offset, centres


def lst_pattern(lsc: Landscape) -> NDArray[np.float64]:
    """The landscape's static LST pattern (K, up to a constant): the lapse with height (-6.5 K/km), each cover's
    solar heating times the heating texture, and the LST texture (testbed/scene.py draws LST from these plus
    the day's weather and a scene texture)."""
    heating = np.zeros(lsc.shape)
    for lc in LAND_COVERS.values():
        heating[lsc.cover == lc.code] = lc.heating_k
    return (-6.5e-3 * lsc.elevation_m + heating * lsc.heating_scale + lsc.lst_texture).astype(np.float64)


def copernicus_dem_name(lat0: int, lon0: int) -> str:
    """Copernicus DEM GLO-30 COG tile name of the 1 x 1 degree cell whose south-west corner is (lat0, lon0)."""
    return (f"Copernicus_DSM_COG_10_{'N' if lat0 >= 0 else 'S'}{abs(lat0):02d}_00_"
            f"{'E' if lon0 >= 0 else 'W'}{abs(lon0):03d}_00_DEM.tif")


def write_copernicus_dem_tile(folder: Path, lsc: Landscape, lat0: int, lon0: int, *, margin_deg: float = 0.1) -> Path:
    """Write the world's terrain over the cell (lat0, lon0) as a Copernicus GLO-30 DSM tile (COG, float32 m).

    Layout as the Copernicus DEM product handbook gives it: 1 x 1 degree, 3600 rows at 1 arcsec, 3600 columns
    below 50 deg latitude, EPSG:4326, pixel centres on the whole arcseconds from the tile's north-west corner
    (``AREA_OR_POINT=Point``). Heights are the world's (bilinear on its 40 m grid) within ``margin_deg`` of the
    region grid's bounds, and the nearest of those beyond (the world has no terrain there). Real GLO-30 heights
    are orthometric (EGM2008); the testbed's geoid is the ellipsoid, so here both agree.
    """
    if abs(lat0) >= 50:
        raise ValueError(f"lat0 = {lat0}: only tiles below 50 deg latitude (3600 columns) are written")
    n = round(3600 / DEM_POSTING_ARCSEC)
    step = 1.0 / n
    lon, lat = lsc.lonlat()
    r0 = max(0, math.floor((lat0 + 1 - (lat.max() + margin_deg)) / step))
    r1 = min(n, math.ceil((lat0 + 1 - (lat.min() - margin_deg)) / step) + 1)
    c0 = max(0, math.floor((lon.min() - margin_deg - lon0) / step))
    c1 = min(n, math.ceil((lon.max() + margin_deg - lon0) / step) + 1)
    if r0 >= r1 or c0 >= c1:
        raise ValueError(f"tile N{lat0} E{lon0} does not meet region {lsc.region.name}")
    gl, gr = np.meshgrid(lon0 + np.arange(c0, c1) * step, lat0 + 1 - np.arange(r0, r1) * step)
    block = terrain_height(lsc)(gl, gr).astype(np.float32)
    dem = np.pad(block, ((r0, n - r1), (c0, n - c1)), mode="edge")
    path = Path(folder) / copernicus_dem_name(lat0, lon0)
    transform = Affine(step, 0.0, lon0 - step / 2, 0.0, -step, lat0 + 1 + step / 2)
    with rasterio.open(path, "w", driver="COG", width=n, height=n, count=1, dtype="float32", crs="EPSG:4326",
                       transform=transform, compress="DEFLATE", predictor=3, blocksize=1024,
                       overviews="NONE") as dst:
        dst.write(dem, 1)
        dst.update_tags(AREA_OR_POINT="Point", VERTICAL_DATUM="WGS 84 ellipsoid (testbed)")
        dst.set_band_description(1, "height (m)")
    return path
