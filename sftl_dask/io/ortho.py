"""Orthorectification of sensor-geometry rasters by their RPCs and a DEM, straight onto a destination grid.

A VIMI L1 product in raw sensor geometry (``VimiProduct.geometry == "sensor"``) is calibrated on its own image
grid (DN -> radiance -> brightness temperature, TOA reflectance -> NDVI, the cloud mask: every per-pixel test
sees the pixels as the sensor saw them) and only then warped onto the tile grid by GDAL's RPC transformer
through rasterio (``rasterio.warp.reproject(..., rpcs=..., RPC_DEM=...)``): in memory, no intermediate file.

Resampling, per variable (:data:`RESAMPLING`):

* ``bt_*`` (K) and ``ndvi``, ``red``: **bilinear**. Continuous fields; bilinear neither overshoots at hot
  targets and cloud edges (cubic kernels ring by a few K there) nor shifts the peak by up to half a pixel
  (nearest). NaN (nodata) neighbours are left out of the weights by GDAL.
* ``cloud``: **nearest**. A category: a blend of 0 and 1 means nothing, and the cloud test ran in sensor
  geometry already.
* ``vza`` (deg): computed from the RPC line of sight (:func:`sftl_dask.io.rpc.view_zenith`) on a coarse grid
  of the image (every :data:`VZA_STEP_PX` lines and samples, the last line and sample included), bilinearly
  interpolated to every image pixel, then warped bilinearly with the BT. The interpolation error is largest
  at the kink of the angle at nadir and falls with the step squared: measured on the testbed (640 x 640 px,
  400 random pixels against :func:`~sftl_dask.io.rpc.view_zenith` itself) 0.0041-0.0087 deg at 32 px,
  0.0012-0.0022 at 16 px, 0.0003-0.0005 at 8 px (0.035 s per image), ``tests/test_ortho.py``. The result
  is, per output pixel, the angle of the line of sight of the image point that lands there; against the
  testbed's own sensor model it is within 0.003 deg.

The DEM (:class:`Dem`): ``--dem`` is a GeoTIFF/COG, a VRT, or a folder of such tiles (Copernicus GLO-30
``Copernicus_DSM_COG_10_N40_00_E115_00_DEM.tif`` for instance). A single file or VRT is handed to GDAL as it
is; for a folder the tiles that meet the footprint are mosaicked (``rasterio.merge``, bilinear is GDAL's own
``RPC_DEMINTERPOLATION``) into an in-memory GeoTIFF (``/vsimem/``) over the footprint plus a margin
(``osgeo`` and ``gdal.BuildVRT`` are not installed here). A DEM that does not cover a footprint is refused
(:class:`DemError`, the ingest fails that scene naming it; no fall-back: a silently flat terrain would move
pixels by ``h tan(vza)``, tens of metres in relief).

Without ``--dem`` the DEM is the GDEM layer that the ASTER GED tiles carry (:class:`GedDem`,
``/ASTER GDEM/ASTGDEM``, int16 m at 0.001 deg, about 100 m; :func:`sftl_dask.io.ged.ged_elevation`): read over the
footprint plus the same margin, fill and missing pixels given the nearest valid height, and handed to GDAL as an
in-memory float32 GeoTIFF (``/vsimem/``), interpolated bilinearly as ``RPC_DEM`` does. Recorded as
``ASTER GED GDEM (<ged folder>)``. Where the tiles hold no GDEM dataset (it is optional) or only fill over a
footprint, the warp uses one height, the RPC's ``HEIGHT_OFF`` (:data:`FLAT_DEM` is what is recorded); the ingest
warns about both, never silently.

Heights: RPC00B heights are above the WGS 84 ellipsoid. GDAL applies a vertical datum shift only when the
DEM declares a vertical CRS (``RPC_DEM_APPLY_VDATUM_SHIFT``, default on); Copernicus GLO-30 and ASTER GDEM
tiles carry EGM2008 / EGM96 heights without declaring them, and the GDEM GeoTIFF written here declares none
either, so no shift is applied (a geoid of -10 to -50 m in China moves a 5 deg off-nadir pixel by 1-4 m,
< 0.1 px at 40 m). The testbed's DEM and its GED tiles' GDEM hold ellipsoidal heights.

This module is written for real products: it never imports the testbed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.merge import merge
from rasterio.warp import reproject, transform_bounds
from scipy.interpolate import RegularGridInterpolator
from scipy.ndimage import distance_transform_edt

from sftl_dask.geo import GeoBox
from sftl_dask.io.ged import GedElevation, ged_elevation
from sftl_dask.io.rpc import Rpc, to_rasterio, view_zenith

__all__ = ["DEM_SUFFIXES", "FLAT_DEM", "RESAMPLING", "VZA_STEP_PX", "Dem", "DemError", "GedDem", "open_dem",
           "orthorectify", "sensor_vza"]

#: What is recorded as "the DEM used" when none is given: the warp used the RPC's height offset.
FLAT_DEM = "none (RPC height offset)"
#: File name endings (any case) of DEM tiles in a ``--dem`` folder.
DEM_SUFFIXES = (".tif", ".tiff", ".vrt")
#: Resampling per variable (module docstring says why); any other variable is bilinear.
RESAMPLING: dict[str, Resampling] = {"cloud": Resampling.nearest}
#: Step (image pixels) of the coarse grid on which the RPC view zenith is evaluated before interpolation.
VZA_STEP_PX = 8
_MARGIN_DEG = 0.02  # DEM mosaic margin around a footprint (~2 km): the RPC transformer looks just outside it


class DemError(ValueError):
    """A DEM that cannot be used: missing, unreadable, no tiles, mixed CRS, or not covering a footprint."""


@dataclass(frozen=True)
class Dem:
    """A DEM for the RPC transformer: one GeoTIFF/COG/VRT, or a folder of tiles.

    Attributes
    ----------
    path : str
        The file or folder as given (what the cube records as the DEM used).
    files : tuple of str
        The raster files (one for a file or VRT).
    bounds : tuple of tuple of float
        (west, south, east, north) of each file, degrees (WGS 84).
    """

    path: str
    files: tuple[str, ...]
    bounds: tuple[tuple[float, float, float, float], ...]

    def tiles_for(self, bounds: tuple[float, float, float, float]) -> list[str]:
        """The files meeting ``bounds`` (west, south, east, north; degrees)."""
        w, s, e, n = bounds
        return [f for f, (fw, fs, fe, fn) in zip(self.files, self.bounds, strict=True)
                if fw < e and fe > w and fs < n and fn > s]

    def covers(self, bounds: tuple[float, float, float, float]) -> bool:
        """Whether the files' union holds the whole box ``bounds`` (west, south, east, north; degrees).

        Checked on a 0.005 deg lattice of the box (edges included) against the files' rectangles.
        """
        w, s, e, n = bounds
        lon = np.linspace(w, e, max(2, int(np.ceil((e - w) / 0.005)) + 1))
        lat = np.linspace(s, n, max(2, int(np.ceil((n - s) / 0.005)) + 1))
        lo, la = np.meshgrid(lon, lat)
        held = np.zeros(lo.shape, bool)
        for fw, fs, fe, fn in self.bounds:
            held |= (lo >= fw) & (lo <= fe) & (la >= fs) & (la <= fn)
        return bool(held.all())

    @contextmanager
    def for_footprint(self, bounds: tuple[float, float, float, float], where: str = "") -> Iterator[str]:
        """A GDAL path of the DEM over ``bounds`` (degrees) plus a margin, valid inside the ``with``.

        A single file is yielded as it is; tiles are mosaicked into an in-memory GeoTIFF (``/vsimem/``).

        Raises
        ------
        DemError
            If the DEM does not cover ``bounds`` or a tile cannot be read (the message starts with ``where``).
        """
        label = f"{where}: " if where else ""
        if not self.covers(bounds):
            raise DemError(f"{label}DEM {self.path} does not cover the footprint lon {bounds[0]:.4f}..{bounds[2]:.4f}"
                           f" lat {bounds[1]:.4f}..{bounds[3]:.4f}")
        if len(self.files) == 1:
            yield self.files[0]
            return
        w, s, e, n = bounds
        box = (w - _MARGIN_DEG, s - _MARGIN_DEG, e + _MARGIN_DEG, n + _MARGIN_DEG)
        files = self.tiles_for(box)
        try:
            data, transform = merge(files, bounds=box, nodata=np.nan, dtype="float32")
            with rasterio.open(files[0]) as src:
                crs = src.crs
        except (RasterioError, OSError) as exc:
            raise DemError(f"{label}DEM {self.path}: cannot mosaic its tiles ({str(exc).splitlines()[0]})") from None
        profile = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2], "count": 1,
                   "dtype": "float32", "crs": crs, "transform": transform, "nodata": np.nan}
        with MemoryFile(filename=f"dem-{uuid.uuid4().hex}.tif") as mem:
            with mem.open(**profile) as dst:
                dst.write(data)
            yield mem.name


@dataclass(frozen=True)
class GedDem:
    """The default DEM: the GDEM layer (``/ASTER GDEM/ASTGDEM``, 100 m) of the ASTER GED tiles in ``folder``.

    Attributes
    ----------
    folder : str
        The GED folder (``--ged``).
    """

    folder: str

    @property
    def path(self) -> str:
        """What the cube records as the DEM used: ``ASTER GED GDEM (<folder>)``."""
        return f"ASTER GED GDEM ({self.folder})"

    def heights(self, bounds: tuple[float, float, float, float]) -> tuple[GedElevation | None, str]:
        """The GDEM over ``bounds`` (west, south, east, north; degrees) plus a margin, or why there is none.

        Returns
        -------
        tuple
            ``(elevation, "")``, or ``(None, reason)`` when no GED tile covers the box, a covering tile is
            unreadable, or the tiles hold no GDEM dataset or only fill over the box: the warp then takes the flat
            RPC height (:data:`FLAT_DEM`).
        """
        w, s, e, n = bounds
        try:
            g = ged_elevation(self.folder, (w - _MARGIN_DEG, s - _MARGIN_DEG, e + _MARGIN_DEG, n + _MARGIN_DEG))
        except ValueError as exc:
            return None, str(exc).splitlines()[0]
        if not np.isfinite(g.elevation_m).any():
            held = "no /ASTER GDEM/ASTGDEM dataset" if len(g.without_gdem) == len(g.tiles) else "only GDEM fill"
            return None, f"{self.folder}: ASTER GED tile(s) {', '.join(g.tiles)} hold {held} over the footprint"
        return g, ""

    @contextmanager
    def for_footprint(self, bounds: tuple[float, float, float, float], where: str = "") -> Iterator[str | None]:
        """A GDAL path of the GDEM over ``bounds`` (degrees) plus a margin, valid inside the ``with``; None (the
        flat RPC height) when :meth:`heights` finds none.

        The layer is written as an in-memory float32 GeoTIFF (``/vsimem/``, EPSG:4326, no vertical CRS: GDAL
        applies no datum shift); fill and missing pixels take the nearest valid GDEM height, so every point of
        the box has one. ``where`` is accepted for the interface of :meth:`Dem.for_footprint`.
        """
        g, _ = self.heights(bounds)
        if g is None:
            yield None
            return
        elev = g.elevation_m
        hole = ~np.isfinite(elev)
        if hole.any():
            idx = distance_transform_edt(hole, return_distances=False, return_indices=True)
            elev = elev[tuple(idx)]
        profile = {"driver": "GTiff", "height": elev.shape[0], "width": elev.shape[1], "count": 1,
                   "dtype": "float32", "crs": "EPSG:4326", "transform": rasterio.Affine(*g.transform)}
        with MemoryFile(filename=f"gdem-{uuid.uuid4().hex}.tif") as mem:
            with mem.open(**profile) as dst:
                dst.write(elev.astype(np.float32), 1)
            yield mem.name


def open_dem(path: str | os.PathLike[str]) -> Dem:
    """The DEM at ``path``: a GeoTIFF/COG or VRT file, or a folder of tiles (:data:`DEM_SUFFIXES`).

    Raises
    ------
    DemError
        If ``path`` does not exist, a folder holds no tile, a file cannot be read as a georeferenced raster, or
        the tiles do not share one CRS (one line naming the file).
    """
    p = Path(path)
    if not p.exists():
        raise DemError(f"{p}: DEM not found")
    files = sorted(str(f) for f in p.iterdir() if f.is_file() and f.name.lower().endswith(DEM_SUFFIXES)) \
        if p.is_dir() else [str(p)]
    if not files:
        raise DemError(f"{p}: no DEM tile ({', '.join(DEM_SUFFIXES)}) in the folder")
    bounds, crs_seen = [], set()
    for f in files:
        try:
            with rasterio.open(f) as src:
                if src.crs is None:
                    raise DemError(f"{f}: DEM tile has no CRS")
                crs_seen.add(src.crs.to_string())
                bounds.append(tuple(float(v) for v in transform_bounds(src.crs, "EPSG:4326", *src.bounds)))
        except (RasterioError, OSError) as exc:
            raise DemError(f"{f}: not a readable DEM raster ({str(exc).splitlines()[0]})") from None
    if len(crs_seen) > 1:
        raise DemError(f"{p}: DEM tiles in several CRS ({', '.join(sorted(crs_seen))}); give a VRT instead")
    return Dem(str(p), tuple(files), tuple(bounds))  # type: ignore[arg-type]


def sensor_vza(rpc: Rpc, height: int, width: int, step: int = VZA_STEP_PX) -> NDArray[np.float32]:
    """View zenith (degrees) of every pixel of a ``height`` x ``width`` image, from its RPC line of sight.

    :func:`sftl_dask.io.rpc.view_zenith` on the lines and samples ``0, step, 2 step, ..., n - 1``, bilinearly
    interpolated in between.
    """
    lines = np.unique(np.r_[np.arange(0, height, step), height - 1]).astype(np.float64)
    samples = np.unique(np.r_[np.arange(0, width, step), width - 1]).astype(np.float64)
    ll, ss = np.meshgrid(lines, samples, indexing="ij")
    coarse = view_zenith(rpc, ll, ss)
    interp = RegularGridInterpolator((lines, samples), coarse, method="linear")
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    return interp(np.stack([yy.ravel(), xx.ravel()], axis=-1)).reshape(height, width).astype(np.float32)


def orthorectify(bands: Mapping[str, NDArray], rpc: Rpc, grid: GeoBox, *, dem_path: str | None = None,
                 num_threads: int = 1) -> dict[str, NDArray[np.float32]]:
    """Warp sensor-geometry rasters straight onto ``grid`` by their RPCs (GDAL's RPC transformer).

    Parameters
    ----------
    bands : mapping of str to ndarray
        Rasters of one image (all ``(lines, samples)``, RPC00B pixel centres), NaN as nodata; resampled as
        :data:`RESAMPLING` says (bilinear unless listed).
    rpc : Rpc
        The image's RPC00B model.
    grid : GeoBox
        The destination grid (CRS, transform, shape).
    dem_path : str, optional
        A GDAL-readable DEM (``RPC_DEM``; heights in m above WGS 84); None: the flat height ``HEIGHT_OFF``.
    num_threads : int
        GDAL warper threads.

    Returns
    -------
    dict of str to ndarray
        float32 ``(grid.height, grid.width)`` per band, NaN where no image pixel lands.
    """
    options = {"RPC_DEM": dem_path} if dem_path else {"RPC_HEIGHT": float(rpc.height_off)}
    rpcs = to_rasterio(rpc)
    groups: dict[Resampling, list[str]] = {}
    for name in bands:
        groups.setdefault(RESAMPLING.get(name, Resampling.bilinear), []).append(name)
    out: dict[str, NDArray[np.float32]] = {}
    for method, names in groups.items():
        src = np.stack([np.asarray(bands[k], dtype=np.float32) for k in names])
        dst = np.full((len(names), grid.height, grid.width), np.nan, dtype=np.float32)
        reproject(src, dst, rpcs=rpcs, src_crs="EPSG:4326", src_nodata=np.nan, dst_transform=grid.affine,
                  dst_crs=grid.crs, dst_nodata=np.nan, resampling=method, num_threads=num_threads, tolerance=0.0,
                  **options)
        out.update(zip(names, dst, strict=True))
    return out
