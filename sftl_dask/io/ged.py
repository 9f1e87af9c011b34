"""Reader of ASTER GED v3 (AG100) tiles, their mosaic on a scene grid, and VIMI channel emissivity.

An AG100 tile is an HDF5 file covering 1 x 1 deg at 0.001 deg (about 100 m), usually 1000 x 1000
pixels, named ``AG100.v003.<lat>.<lon>.0001.h5`` after its north-west corner. Datasets used here:

=========================== ======= ======== =================================================
path                        stored  scale    meaning
=========================== ======= ======== =================================================
``/Emissivity/Mean``        int16   0.001    (5, N, N) ASTER bands 10-14 emissivity
``/NDVI/Mean``              int16   0.01     (N, N) mean NDVI (2000-2008 climatology)
``/Geolocation/Latitude``   float   --       (N, N) pixel-centre latitude (deg N)
``/Geolocation/Longitude``  float   --       (N, N) pixel-centre longitude (deg E)
``/Land Water Map/LWmap``   uint8   --       (N, N) land/water code
``/ASTER GDEM/ASTGDEM``     int16   1        (N, N) elevation (m), optional
=========================== ======= ======== =================================================

``scale_factor``, ``add_offset`` and ``_FillValue`` attributes are honoured where present (value =
stored * scale_factor + add_offset); without them the documented scales above and the fill -9999 are
used. Fill becomes NaN.

**Land/water convention.** Codes 0 (ocean / deep water) and 2 (inland water) are water, 1 is land;
:func:`ged_on_grid` turns this into its boolean ``water`` variable, which :func:`vimi_emissivity`
takes as its ``water`` mask (emissivity 0.99 there).

Tiles for a scene are chosen by the extent of their geolocation arrays, never by the file name, so a
renamed or mis-named tile still serves. Tiles must be regular latitude/longitude grids on one common
lattice (as AG100 tiles are); they are mosaicked on that lattice and sampled bilinearly at the scene's
pixel centres, seamlessly across tile edges.

ASTER bands 10-14 are converted to the four VIMI channels with the regression of
:func:`sftl_dask.physics.emissivity.fit_aster_to_vimi` (fitted on the embedded emissivity library
through the channels' SRFs), whose coefficients are stored as data in
``sftl_dask/data/aster_to_vimi.json`` (regenerate with :func:`write_aster_to_vimi_coefficients`),
then adjusted to the scene's vegetation cover with the Vegetation Cover Method.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from sftl_dask.geo import pixel_lonlat
from sftl_dask.physics.emissivity import aster_to_vimi, fit_aster_to_vimi, vegetation_cover_method
from sftl_dask.staging import staged_file

__all__ = [
    "GED_BANDS",
    "GedElevation",
    "ged_elevation",
    "ged_on_grid",
    "read_ged_tile",
    "vimi_emissivity",
    "write_aster_to_vimi_coefficients",
]

#: ASTER TIR bands held by ``/Emissivity/Mean``, in order.
GED_BANDS: tuple[str, ...] = ("b10", "b11", "b12", "b13", "b14")
_ASTER_CENTRES_UM = (8.28, 8.63, 9.08, 10.66, 11.29)  # FACTS.md, Emissivity

_FILL = -9999
_EMIS = "Emissivity/Mean"
_EMIS_SDEV = "Emissivity/SDev"
_NDVI = "NDVI/Mean"
_LAT = "Geolocation/Latitude"
_LON = "Geolocation/Longitude"
_LWMAP = "Land Water Map/LWmap"
_GDEM = "ASTER GDEM/ASTGDEM"
# Documented scales of AG100 v3, used when a dataset carries no scale_factor attribute.
_DEFAULT_SCALE = {_EMIS: 0.001, _EMIS_SDEV: 0.001, _NDVI: 0.01, _GDEM: 1.0}
_WATER_CODES = (0, 2)
_LW_MISSING = 255  # land_water code of pixels no tile covers
_TILE_SUFFIXES = (".h5", ".hdf5", ".he5")
_COEFF_FILE = "aster_to_vimi.json"
# Regularity tolerance of tile geolocation, in pixel steps.
_GRID_TOL = 1e-3
# Output rows sampled per block: bounds the temporaries of the bilinear gather to ~100 MB.
_BLOCK_POINTS = 1_000_000


# --------------------------------------------------------------------------------------------- one tile
def _attr(ds: h5py.Dataset, name: str) -> float | None:
    if name not in ds.attrs:
        return None
    value = np.asarray(ds.attrs[name]).ravel()
    return float(value[0]) if value.size else None


def _scaled(ds: h5py.Dataset, key: str, sel: tuple[Any, ...] = ()) -> NDArray[np.float32]:
    """Dataset ``key`` (optionally a slice ``sel``) as float32, scaled, fill -> NaN."""
    raw = ds[sel] if sel else ds[()]
    scale = _attr(ds, "scale_factor")
    offset = _attr(ds, "add_offset") or 0.0
    fill = _attr(ds, "_FillValue")
    if scale is None:
        scale = _DEFAULT_SCALE.get(key, 1.0) if np.issubdtype(raw.dtype, np.integer) else 1.0
    out = raw.astype(np.float32) * np.float32(scale) + np.float32(offset)
    if np.issubdtype(raw.dtype, np.integer):
        out[raw == (int(fill) if fill is not None else _FILL)] = np.nan
    elif fill is not None:
        out[raw == fill] = np.nan
    return out


def _geolocation(ds: h5py.Dataset, sel: tuple[Any, ...] = ()) -> NDArray[np.float64]:
    """Geolocation as float64 degrees (storage type may be float or scaled integer)."""
    raw = ds[sel] if sel else ds[()]
    return raw.astype(np.float64) * (_attr(ds, "scale_factor") or 1.0) + (_attr(ds, "add_offset") or 0.0)


def _dataset(h5: h5py.File, path: Path, key: str) -> h5py.Dataset:
    if key not in h5 or not isinstance(h5[key], h5py.Dataset):
        raise ValueError(f"{path}: not an ASTER GED tile, dataset /{key} is missing")
    return h5[key]


def _open_tile(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot open as an HDF5 ASTER GED tile ({exc})") from None


def read_ged_tile(path: str | os.PathLike[str], *, sdev: bool = False) -> dict[str, Any]:
    """Read one ASTER GED v3 (AG100) tile.

    Parameters
    ----------
    path : path
        The tile (HDF5).
    sdev : bool, optional
        Also read ``/Emissivity/SDev`` (as ``emissivity_sdev``).

    Returns
    -------
    dict
        ``emissivity`` (5, N, N) float32 (unitless, ASTER b10-b14, NaN at fill); ``ndvi`` (N, N)
        float32 (unitless); ``lat``, ``lon`` (N, N) float64 pixel centres (deg); ``land_water`` (N, N)
        uint8 code (0 and 2 water, 1 land); ``elevation_m`` (N, N) float32 (m, NaN where missing or
        absent from the file); ``bands`` (the band names); ``path``; with ``sdev``,
        ``emissivity_sdev`` (5, N, N) float32.

    Raises
    ------
    ValueError
        Naming the file: not HDF5, a required dataset missing, or shapes that disagree.
    """
    p = Path(path)
    with _open_tile(p) as h5:
        emis = _scaled(_dataset(h5, p, _EMIS), _EMIS)
        if emis.ndim != 3 or emis.shape[0] != 5:
            raise ValueError(f"{p}: /{_EMIS} must have shape (5, N, M), got {emis.shape}")
        shape = emis.shape[1:]
        out: dict[str, Any] = {
            "emissivity": emis,
            "ndvi": _scaled(_dataset(h5, p, _NDVI), _NDVI),
            "lat": _geolocation(_dataset(h5, p, _LAT)),
            "lon": _geolocation(_dataset(h5, p, _LON)),
            "land_water": _dataset(h5, p, _LWMAP)[()].astype(np.uint8),
            "elevation_m": _scaled(h5[_GDEM], _GDEM) if _GDEM in h5 else np.full(shape, np.nan, np.float32),
            "bands": GED_BANDS,
            "path": str(p),
        }
        if sdev:
            out["emissivity_sdev"] = _scaled(_dataset(h5, p, _EMIS_SDEV), _EMIS_SDEV)
    for key in ("ndvi", "lat", "lon", "land_water", "elevation_m"):
        if out[key].shape != shape:
            raise ValueError(f"{p}: {key} has shape {out[key].shape}, the emissivity {shape}")
    return out


# --------------------------------------------------------------------------------------------- tile index
def _geo_1d(h5: h5py.File, p: Path, key: str, axis: int) -> NDArray[np.float64]:
    """The varying 1-D coordinate of a geolocation array (rows of latitude, columns of longitude),
    checked to be constant along the other axis (a regular lat/lon grid)."""
    ds = _dataset(h5, p, key)
    if ds.ndim != 2 or min(ds.shape) < 2:
        raise ValueError(f"{p}: /{key} must be 2-D with at least 2 x 2 pixels, got shape {ds.shape}")
    n_other = ds.shape[1 - axis]
    first = _geolocation(ds, (slice(None), 0) if axis == 0 else (0, slice(None)))
    last = _geolocation(ds, (slice(None), n_other - 1) if axis == 0 else (n_other - 1, slice(None)))
    step = np.diff(first)
    if not np.all(np.isfinite(first)) or step.size == 0 or not (np.all(step > 0) or np.all(step < 0)):
        raise ValueError(f"{p}: /{key} is not strictly monotonic along its axis")
    d = float(np.median(np.abs(step)))
    if np.max(np.abs(np.abs(step) - d)) > _GRID_TOL * d or np.max(np.abs(last - first)) > _GRID_TOL * d:
        raise ValueError(f"{p}: /{key} is not a regular latitude/longitude grid; only regular tiles are read")
    return first


@lru_cache(maxsize=4096)
def _tile_axes(path: str, mtime_ns: int, size: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Pixel-centre latitude of each row and longitude of each column of a tile (cached per file version)."""
    p = Path(path)
    with _open_tile(p) as h5:
        lat = _geo_1d(h5, p, _LAT, axis=0)
        lon = _geo_1d(h5, p, _LON, axis=1)
        emis = _dataset(h5, p, _EMIS)
        if emis.shape != (5, lat.size, lon.size):
            raise ValueError(f"{p}: /{_EMIS} has shape {emis.shape}, the geolocation ({lat.size}, {lon.size})")
    return lat, lon


def _tiles_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"{folder}: ASTER GED folder does not exist or is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _TILE_SUFFIXES
                  and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------- mosaic + sampling
def _bilinear(mosaic: NDArray[np.float32], r: NDArray[np.float64], c: NDArray[np.float64]
              ) -> NDArray[np.float32]:
    """NaN-aware bilinear sample of ``mosaic`` (L, R, C) at fractional rows ``r`` and columns ``c`` (P,).

    Neighbours holding NaN are left out and the remaining weights renormalised, so a point next to a
    fill pixel or the edge of the covered area takes its valid neighbours; NaN if none is valid.
    """
    n_r, n_c = mosaic.shape[1:]
    r0 = np.clip(np.floor(r).astype(np.intp), 0, n_r - 2)
    c0 = np.clip(np.floor(c).astype(np.intp), 0, n_c - 2)
    wr = np.clip(r - r0, 0.0, 1.0).astype(np.float32)
    wc = np.clip(c - c0, 0.0, 1.0).astype(np.float32)
    total = np.zeros((mosaic.shape[0], r.size), dtype=np.float32)
    weight = np.zeros_like(total)
    for dr, dc, w in ((0, 0, (1 - wr) * (1 - wc)), (0, 1, (1 - wr) * wc), (1, 0, wr * (1 - wc)), (1, 1, wr * wc)):
        v = mosaic[:, r0 + dr, c0 + dc]
        ok = np.isfinite(v)
        total += np.where(ok, v, 0.0) * w
        weight += ok * w
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / weight
    out[weight <= 1e-6] = np.nan
    return out


def _check_lattice(p: Path, ref_tile: Path, axis: NDArray[np.float64], step: float, origin: float) -> None:
    """Refuse a tile whose pixel size or pixel-centre offset differs from the reference tile's."""
    s = abs(float(axis[1] - axis[0]))
    k = (float(axis[0]) - origin) / step
    if abs(s - step) > _GRID_TOL * step or abs(k - round(k)) > 0.01:
        raise ValueError(f"{p}: tile is not on the lattice of {ref_tile.name} (step {s:g} vs {step:g} deg, "
                         f"offset {k - round(k):+.3f} pixel); tiles of one resolution and alignment are needed")


def ged_on_grid(
    folder: str | os.PathLike[str],
    x: ArrayLike,
    y: ArrayLike,
    crs: Any,
) -> xr.Dataset:
    """Mosaic the ASTER GED tiles of ``folder`` that cover a projected grid and sample them at its pixels.

    Tiles are chosen by the extent of their geolocation arrays (cached per file version), read only
    over the window the grid needs, placed on their common lattice (0.001 deg for AG100) and sampled bilinearly
    (NaN-aware) at the pixel centres; land/water is taken from the nearest GED pixel.

    Parameters
    ----------
    folder : path
        Folder holding AG100 tiles (``*.h5``; names are not relied on). Files that are not readable GED
        tiles are skipped with a warning.
    x, y : array_like
        Pixel-centre coordinates in ``crs`` units: 1-D ``x`` (W,) and ``y`` (H,), or 2-D (H, W) each.
    crs : str, pyproj.CRS or rasterio CRS
        The grid's coordinate reference system.

    Returns
    -------
    xarray.Dataset
        On dims ``(band, y, x)`` (coordinates ``x``/``y`` when 1-D were given, ``band`` = b10..b14):
        ``emis_aster`` (band, y, x) float32 ASTER emissivity (unitless); ``ndvi_ged`` (y, x) float32
        GED NDVI climatology; ``elevation_m`` (y, x) float32 (m); ``land_water`` (y, x) uint8 (0/2
        water, 1 land, 255 no tile); ``water`` (y, x) bool (code 0 or 2); ``ged_missing`` (y, x) bool,
        True where no tile covers the pixel or the tile holds fill there (values NaN). Attributes
        ``ged_folder`` and ``ged_tiles`` (file names used).

    Raises
    ------
    ValueError
        If no tile covers any part of the grid, or the covering tiles hold only fill values over it (the
        message names the folder, the tiles and the grid's lon/lat bounds), or a covering tile is unreadable,
        not a regular lat/lon grid, or off the common lattice (the tile named); or ``x``/``y``/``crs`` are
        unusable.
    """
    root = Path(folder)
    lon, lat = pixel_lonlat(x, y, crs)
    bounds = f"lon {lon.min():.4f}..{lon.max():.4f}, lat {lat.min():.4f}..{lat.max():.4f}"
    used = _covering_tiles(root, lon, lat, bounds)
    window = _read_window(used, lon, lat)
    emis, ndvi, elev, lw, covered = _sample(window)
    missing = ~covered | ~np.isfinite(emis).all(axis=0)
    if missing.all():  # nothing to take an emissivity from: as bad as no tile at all
        if not covered.any():
            raise ValueError(f"{root}: no ASTER GED tile covers any part of the grid ({bounds})")
        raise ValueError(f"{root}: ASTER GED tile(s) {', '.join(window.names)} cover the grid ({bounds}) but hold "
                         "only fill values there (no emissivity for any pixel)")
    emis[:, missing] = np.nan
    ndvi[missing] = np.nan
    elev[~covered] = np.nan
    shape = lon.shape
    dims = ("y", "x")
    coords: dict[str, Any] = {"band": ("band", list(GED_BANDS), {"wavelength_um": list(_ASTER_CENTRES_UM)})}
    xa, ya = np.asarray(x), np.asarray(y)
    if xa.ndim == 1 and ya.ndim == 1:
        coords.update({"x": ("x", xa), "y": ("y", ya)})
    return xr.Dataset(
        {
            "emis_aster": (("band", *dims), emis.reshape(5, *shape),
                           {"units": "1", "long_name": "ASTER GED emissivity, bands 10-14"}),
            "ndvi_ged": (dims, ndvi.reshape(shape), {"units": "1", "long_name": "ASTER GED mean NDVI"}),
            "elevation_m": (dims, elev.reshape(shape), {"units": "m", "long_name": "ASTER GDEM elevation"}),
            "land_water": (dims, lw.reshape(shape),
                           {"units": "1", "long_name": "ASTER GED land/water code",
                            "flag_values": [0, 1, 2, _LW_MISSING],
                            "flag_meanings": "water land inland_water no_tile"}),
            "water": (dims, np.isin(lw, _WATER_CODES).reshape(shape),
                      {"long_name": "water according to the GED land/water map (code 0 or 2)"}),
            "ged_missing": (dims, missing.reshape(shape),
                            {"long_name": "no ASTER GED tile covers the pixel, or the tile holds fill"}),
        },
        coords=coords,
        attrs={"ged_folder": str(root), "ged_tiles": window.names},
    )


def _covering_tiles(root: Path, lon: NDArray[np.float64], lat: NDArray[np.float64], bounds: str
                    ) -> list[tuple[Path, NDArray[np.float64], NDArray[np.float64]]]:
    """The GED tiles of ``root`` whose extent reaches the points, with their lat and lon axes (deg).

    Raises
    ------
    ValueError
        If none does (naming the skipped unreadable files).
    """
    used: list[tuple[Path, NDArray[np.float64], NDArray[np.float64]]] = []
    skipped: list[str] = []
    for p in _tiles_in(root):
        st = p.stat()
        try:
            t_lat, t_lon = _tile_axes(str(p), st.st_mtime_ns, st.st_size)
        except ValueError as exc:  # another HDF5 file, a truncated download: say so, use the others
            warnings.warn(f"skipping {exc}", UserWarning, stacklevel=3)
            skipped.append(p.name)
            continue
        hr, hc = abs(t_lat[1] - t_lat[0]) / 2, abs(t_lon[1] - t_lon[0]) / 2
        if (t_lat.min() - hr <= lat.max() and t_lat.max() + hr >= lat.min()
                and t_lon.min() - hc <= lon.max() and t_lon.max() + hc >= lon.min()):
            used.append((p, t_lat, t_lon))
    if not used:
        extra = f"; skipped unreadable file(s): {', '.join(skipped)}" if skipped else ""
        raise ValueError(f"{root}: no ASTER GED tile covers any part of the grid ({bounds}){extra}")
    return used


@dataclass(frozen=True)
class _GedWindow:
    """The GED layers over the window of the common lattice the points need, and the points on it.

    ``layers`` (7, R, C): 5 emissivities, NDVI, elevation (m); ``r``/``c``: fractional window row and column
    of every point; ``covered``: a tile holds the lattice pixel; ``names``: the tiles read.
    """

    layers: NDArray[np.float32]
    land_water: NDArray[np.uint8]
    covered: NDArray[np.bool_]
    r: NDArray[np.float64]
    c: NDArray[np.float64]
    names: list[str]


@dataclass(frozen=True)
class _Lattice:
    """A window of the tiles' common lattice: its first pixel centre (deg), steps (deg), and the window's first
    lattice row/column and size (rows go south, columns east)."""

    lat_ref: float
    lon_ref: float
    d_lat: float
    d_lon: float
    r0: int
    c0: int
    n_r: int
    n_c: int

    @classmethod
    def over(cls, used: list[tuple[Path, NDArray[np.float64], NDArray[np.float64]]], lon: NDArray[np.float64],
             lat: NDArray[np.float64]) -> _Lattice:
        """The window holding the points, on the lattice of the first tile (bilinear neighbours included)."""
        _, lat_axis, lon_axis = used[0]
        d_lat, d_lon = abs(float(lat_axis[1] - lat_axis[0])), abs(float(lon_axis[1] - lon_axis[0]))
        lat_ref, lon_ref = float(lat_axis.max()), float(lon_axis.min())
        r, c = (lat_ref - lat) / d_lat, (lon - lon_ref) / d_lon
        r0, c0 = int(np.floor(r.min())), int(np.floor(c.min()))
        return cls(lat_ref, lon_ref, d_lat, d_lon, r0, c0, int(np.floor(r.max())) + 2 - r0,
                   int(np.floor(c.max())) + 2 - c0)

    def placed(self, used: list[tuple[Path, NDArray[np.float64], NDArray[np.float64]]]
               ) -> Iterator[tuple[Path, tuple[slice, slice], tuple[NDArray[np.intp], NDArray[np.intp]]]]:
        """Per tile meeting the window: the tile, its slice to read, and where that slice goes in the window.

        Raises ValueError if a tile is off the common lattice.
        """
        for p, t_lat, t_lon in used:
            _check_lattice(p, used[0][0], t_lat, self.d_lat, self.lat_ref)
            _check_lattice(p, used[0][0], t_lon, self.d_lon, self.lon_ref)
            # lattice row/column of every tile row/column, whichever way the tile runs
            g_r = np.rint((self.lat_ref - t_lat) / self.d_lat).astype(np.intp) - self.r0
            g_c = np.rint((t_lon - self.lon_ref) / self.d_lon).astype(np.intp) - self.c0
            rows = np.flatnonzero((g_r >= 0) & (g_r < self.n_r))
            cols = np.flatnonzero((g_c >= 0) & (g_c < self.n_c))
            if rows.size == 0 or cols.size == 0:
                continue
            sel = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
            yield p, sel, np.ix_(g_r[sel[0]], g_c[sel[1]])


def _read_window(used: list[tuple[Path, NDArray[np.float64], NDArray[np.float64]]], lon: NDArray[np.float64],
                 lat: NDArray[np.float64]) -> _GedWindow:
    """Read the covering tiles over the points' window, placed on their common lattice.

    The lattice's origin is the first tile's first pixel centre, rows going south, columns east.

    Raises
    ------
    ValueError
        If a tile is unreadable or off the common lattice.
    """
    lat_w = _Lattice.over(used, lon.ravel(), lat.ravel())
    n_r, n_c = lat_w.n_r, lat_w.n_c
    layers = np.full((7, n_r, n_c), np.nan, dtype=np.float32)  # 5 emissivities, NDVI, elevation
    land_water = np.full((n_r, n_c), _LW_MISSING, dtype=np.uint8)
    covered = np.zeros((n_r, n_c), dtype=bool)
    names = []
    for p, sel, dst in lat_w.placed(used):
        with _open_tile(p) as h5:
            emis = _scaled(_dataset(h5, p, _EMIS), _EMIS, (slice(None), *sel))
            ndvi = _scaled(_dataset(h5, p, _NDVI), _NDVI, sel)
            elev = _scaled(h5[_GDEM], _GDEM, sel) if _GDEM in h5 else np.full(ndvi.shape, np.nan, np.float32)
            lw = _dataset(h5, p, _LWMAP)[sel].astype(np.uint8)
        layers[(slice(None), *dst)] = np.concatenate([emis, ndvi[None], elev[None]])
        land_water[dst] = lw
        covered[dst] = True
        names.append(p.name)
    r = (lat_w.lat_ref - lat.ravel()) / lat_w.d_lat - lat_w.r0
    c = (lon.ravel() - lat_w.lon_ref) / lat_w.d_lon - lat_w.c0
    return _GedWindow(layers, land_water, covered, r, c, names)


def _sample(w: _GedWindow) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32],
                                    NDArray[np.uint8], NDArray[np.bool_]]:
    """Emissivities (5, P), NDVI, elevation (bilinear), land/water and coverage (nearest) at the points."""
    n = w.r.size
    n_r, n_c = w.covered.shape
    emis_out = np.empty((5, n), dtype=np.float32)
    ndvi_out = np.empty(n, dtype=np.float32)
    elev_out = np.empty(n, dtype=np.float32)
    lw_out = np.empty(n, dtype=np.uint8)
    cov_out = np.empty(n, dtype=bool)
    for start in range(0, n, _BLOCK_POINTS):
        blk = slice(start, start + _BLOCK_POINTS)
        rb, cb = w.r[blk], w.c[blk]
        vals = _bilinear(w.layers, rb, cb)
        emis_out[:, blk], ndvi_out[blk], elev_out[blk] = vals[:5], vals[5], vals[6]
        rn = np.clip(np.rint(rb).astype(np.intp), 0, n_r - 1)
        cn = np.clip(np.rint(cb).astype(np.intp), 0, n_c - 1)
        cov_out[blk] = w.covered[rn, cn]  # the nearest GED pixel belongs to a tile
        lw_out[blk] = np.where(cov_out[blk], w.land_water[rn, cn], _LW_MISSING)
    return emis_out, ndvi_out, elev_out, lw_out, cov_out


# --------------------------------------------------------------------------------------------- GDEM layer
@dataclass(frozen=True)
class GedElevation:
    """The ``/ASTER GDEM/ASTGDEM`` layer of GED tiles over a box, on the tiles' lattice (EPSG:4326).

    Attributes
    ----------
    elevation_m : ndarray
        (R, C) float32 heights (m; as stored: EGM96-orthometric on NASA's tiles), NaN where the tile holds fill,
        has no GDEM dataset, or no tile covers the lattice pixel.
    transform : tuple of float
        Affine ``(a, b, c, d, e, f)`` of the array's pixel corners in degrees (``c``, ``f``: west and north edges).
    tiles : tuple of str
        The tiles meeting the box (file names).
    without_gdem : tuple of str
        Those of them that hold no GDEM dataset (it is optional in AG100 files).
    """

    elevation_m: NDArray[np.float32]
    transform: tuple[float, float, float, float, float, float]
    tiles: tuple[str, ...]
    without_gdem: tuple[str, ...]


def ged_elevation(folder: str | os.PathLike[str], bounds: tuple[float, float, float, float]) -> GedElevation:
    """The GDEM layer of the ASTER GED tiles of ``folder`` over a lon/lat box, as a georeferenced array.

    Only ``/ASTER GDEM/ASTGDEM`` is read, over the lattice window holding ``bounds`` (plus one pixel, so a
    bilinear sample anywhere in the box has its four neighbours); tiles are chosen by their geolocation, as in
    :func:`ged_on_grid`.

    Parameters
    ----------
    folder : path
        Folder holding AG100 tiles.
    bounds : tuple of float
        (west, south, east, north), degrees.

    Returns
    -------
    GedElevation
        Heights (m, NaN at fill or where no tile / no GDEM), their transform and the tiles used.

    Raises
    ------
    ValueError
        If no tile covers any part of the box (naming the folder and the box), or a covering tile is unreadable or
        off the common lattice (naming the tile).
    """
    root = Path(folder)
    w, s, e, n = bounds
    lon, lat = np.array([w, e, w, e], np.float64), np.array([s, s, n, n], np.float64)
    used = _covering_tiles(root, lon, lat, f"lon {w:.4f}..{e:.4f}, lat {s:.4f}..{n:.4f}")
    lattice = _Lattice.over(used, lon, lat)
    elev = np.full((lattice.n_r, lattice.n_c), np.nan, dtype=np.float32)
    names, without = [], []
    for p, sel, dst in lattice.placed(used):
        names.append(p.name)
        with _open_tile(p) as h5:
            if _GDEM not in h5:
                without.append(p.name)
                continue
            elev[dst] = _scaled(h5[_GDEM], _GDEM, sel)
    transform = (lattice.d_lon, 0.0, lattice.lon_ref + (lattice.c0 - 0.5) * lattice.d_lon,
                 0.0, -lattice.d_lat, lattice.lat_ref - (lattice.r0 - 0.5) * lattice.d_lat)
    return GedElevation(elev, transform, tuple(names), tuple(without))


# --------------------------------------------------------------------------------------------- VIMI emissivity
def write_aster_to_vimi_coefficients(path: str | os.PathLike[str] | None = None) -> Path:
    """Fit the ASTER -> VIMI emissivity regression on the embedded library and write it as JSON.

    Parameters
    ----------
    path : path, optional
        Output file; default the packaged ``sftl_dask/data/aster_to_vimi.json`` (rerun after the
        emissivity library or the channel SRFs change).

    Returns
    -------
    pathlib.Path
        The file written: the output of :func:`~sftl_dask.physics.emissivity.fit_aster_to_vimi`
        (``inputs``, ``channels`` with ``intercept``, ``coefficients``, ``rmse``, ``max_abs_error``,
        ``n_spectra``, ``method``) plus ``generated_by``.
    """
    target = Path(path) if path is not None else Path(str(resources.files("sftl_dask.data").joinpath(_COEFF_FILE)))
    coeffs = dict(fit_aster_to_vimi())
    coeffs["generated_by"] = "sftl_dask.io.ged.write_aster_to_vimi_coefficients()"
    with staged_file(target, replace=True) as tmp:
        tmp.write_text(json.dumps(coeffs, indent=2) + "\n", encoding="utf-8")
    _default_coefficients.cache_clear()
    return target


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return np.broadcast_shapes(shape, target) == target
    except ValueError:
        return False


@lru_cache(maxsize=1)
def _default_coefficients() -> dict[str, Any]:
    """The packaged coefficients; fitted on the fly (once) if the file is absent."""
    res = resources.files("sftl_dask.data").joinpath(_COEFF_FILE)
    if res.is_file():
        return json.loads(res.read_text(encoding="utf-8"))
    return fit_aster_to_vimi()


def ged_vimi_channels(ged_emis: ArrayLike, *, coeffs: Mapping[str, Any] | None = None) -> NDArray[np.float64]:
    """ASTER GED band emissivities converted to the four VIMI channels (the static part of
    :func:`vimi_emissivity`: compute it once per grid and pass it back as ``ged_emis`` with
    ``converted=True``).

    Parameters
    ----------
    ged_emis : array_like, shape (5, ...)
        ASTER GED emissivity, bands 10-14 first (unitless); values outside [0, 1] count as missing.
    coeffs : mapping, optional
        ASTER -> VIMI regression; default the packaged ``aster_to_vimi.json``.

    Returns
    -------
    numpy.ndarray, shape (4, ...)
        Emissivity of ``emis_08_20`` ... ``emis_11_95`` (unitless), NaN where missing.

    Raises
    ------
    ValueError
        If ``ged_emis`` does not have 5 bands first.
    """
    e = np.asarray(ged_emis, dtype=np.float64)
    if e.ndim == 0 or e.shape[0] != 5:
        raise ValueError(f"ged_emis must have the 5 ASTER bands first, got shape {e.shape}")
    with np.errstate(invalid="ignore"):
        e = np.where((e < 0.0) | (e > 1.0), np.nan, e)
    table = _default_coefficients() if coeffs is None else coeffs
    return np.moveaxis(aster_to_vimi(np.moveaxis(e, 0, -1), table, allow_nan=True), -1, 0)


def vimi_emissivity(
    ged_emis: ArrayLike,
    ged_ndvi: ArrayLike,
    scene_ndvi: ArrayLike,
    *,
    coeffs: Mapping[str, Any] | None = None,
    water: ArrayLike | None = None,
    converted: bool = False,
) -> NDArray[np.float32]:
    """Emissivity of the four VIMI TIR channels from ASTER GED and the scene's NDVI.

    ASTER b10-b14 -> VIMI channels by the library regression (``coeffs``), then the Vegetation Cover
    Method (:func:`~sftl_dask.physics.emissivity.vegetation_cover_method`): full vegetation 0.985,
    water 0.99, bare ground keeps the converted GED value. NaN-safe: a NaN input (fill, no tile, cloud)
    gives NaN for that pixel, except that water pixels are always 0.99.

    Parameters
    ----------
    ged_emis : array_like, shape (5, ...)
        ASTER GED emissivity, bands 10-14 first (unitless); values outside [0, 1] count as missing.
    ged_ndvi : array_like, shape (...)
        GED NDVI climatology (unitless).
    scene_ndvi : array_like, shape (...)
        The scene's NDVI (unitless); finite values are clipped to [-1, 1].
    coeffs : mapping, optional
        ASTER -> VIMI regression (output of ``fit_aster_to_vimi``); default the packaged
        ``aster_to_vimi.json``.
    water : array_like of bool, shape (...), optional
        Water mask, e.g. ``ged_on_grid(...)["water"]`` (GED land/water code 0 or 2).
    converted : bool, optional
        ``ged_emis`` already holds the 4 VIMI channels from :func:`ged_vimi_channels` (shape (4, ...)).

    Returns
    -------
    numpy.ndarray
        Emissivity (unitless), float32, shape (4, ...) in the channel order of ``coeffs``
        (``emis_08_20``, ``emis_08_63``, ``emis_10_80``, ``emis_11_95``).

    Raises
    ------
    ValueError
        If ``ged_emis`` does not have 5 bands first, shapes do not broadcast, or ``coeffs`` is malformed.
    """
    if converted:
        channels = np.moveaxis(np.asarray(ged_emis, dtype=np.float64), 0, -1)
        if channels.shape[-1] != 4:
            raise ValueError(f"converted ged_emis must have the 4 VIMI channels first, got {np.shape(ged_emis)}")
    else:
        channels = np.moveaxis(ged_vimi_channels(ged_emis, coeffs=coeffs), 0, -1)  # (..., 4)
    e = np.asarray(ged_emis)
    nd_ged = np.clip(np.asarray(ged_ndvi, dtype=np.float64), -1.0, 1.0)
    nd = np.clip(np.asarray(scene_ndvi, dtype=np.float64), -1.0, 1.0)
    mask = None if water is None else np.asarray(water, dtype=bool)
    pixels = e.shape[1:]
    for name, arr in (("ged_ndvi", nd_ged), ("scene_ndvi", nd), ("water", mask)):
        if arr is not None and not _broadcasts_to(arr.shape, pixels):
            raise ValueError(f"{name} has shape {arr.shape}; it must broadcast to the pixels of ged_emis {pixels}")
    nd_ged = np.broadcast_to(nd_ged, pixels)  # pixel dims fixed so that the channel axis is recognised
    eps = vegetation_cover_method(channels, nd_ged, nd, water=mask, allow_nan=True)
    return np.moveaxis(eps, -1, 0).astype(np.float32)
