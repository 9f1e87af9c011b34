"""Reader of ERA5 total column water vapour (``tcwv``) as delivered by the Copernicus CDS.

Three layouts are read, chosen by what the file is (its magic bytes), not by its name:

* **NetCDF4/HDF5, new CDS style** (from 2024): dims ``valid_time, latitude, longitude``, ``tcwv``
  float32, ``valid_time`` in seconds since 1970, scalar ``number`` and per-time ``expver``
  coordinates. Opened with h5netcdf (netCDF4 as a fallback).
* **NetCDF3, old CDS style** (``grib_to_netcdf``, before 2024): dims ``time, latitude, longitude``,
  ``tcwv`` int16 packed with ``scale_factor``/``add_offset`` and ``_FillValue``/``missing_value``,
  ``time`` in hours since 1900. Opened with scipy (netCDF4 as a fallback); xarray unpacks it. Old
  files that mix ERA5 and ERA5T carry an ``expver`` dimension: the first non-missing value along it
  is kept (final ERA5 before the preliminary ERA5T).
* **GRIB** (``.grib``/``.grb``/``.grib2`` or a ``GRIB`` magic): through ``cfgrib`` if it is installed;
  otherwise a ``ValueError`` names the file and the missing package.

Whatever the layout, :func:`open_era5_tcwv` returns one ``DataArray`` on dims ``(time, latitude,
longitude)``: time ``datetime64[ns]`` (UTC, sorted, duplicates dropped), latitude ascending,
longitude in -180..180 ascending, values in g cm-2 (the CDS's kg m-2 divided by 10; 1 kg m-2 of
water is 0.1 g cm-2). The array is lazy (Dask-backed): :func:`era5_wvc_on_grid` reads only the two
hours and the lat/lon window a scene needs.

Errors are ``ValueError`` whose message names the file(s) and what is wrong: an unreadable file, no
``tcwv`` variable, units other than kg m-2, unexpected dimensions, files on different grids, an
overpass time the files do not cover (or that falls in a gap between them), a grid outside their area.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from sftl_dask.geo import pixel_lonlat
from sftl_dask.times import utc_instant

__all__ = ["era5_wvc_on_grid", "open_era5_tcwv"]

_VARIABLE = "tcwv"
_KG_M2_TO_G_CM2 = 0.1  # 1 kg m-2 = 1000 g / 10^4 cm2
# Unit spellings of kg m-2 met in CDS NetCDF (cfgrib writes "kg m**-2"), compared without blanks.
_KG_M2 = {"kgm**-2", "kgm-2", "kgm^-2", "kg/m2", "kg/m**2", "kg/m^2", "kgm**(-2)"}
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_NETCDF3_MAGIC = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
_GRIB_SUFFIXES = {".grib", ".grb", ".grib1", ".grib2", ".grb2"}
_TIME_NAMES = ("valid_time", "time")
_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")
# ERA5 grids sit on multiples of 0.25 (or 0.1) deg: coordinates are rounded to 1e-4 deg so that the
# float32 coordinates of old files and the float64 ones of new files compare equal.
_COORD_DECIMALS = 4
# Default largest gap (h) between the two ERA5 fields bracketing an overpass; hourly files have 1 h.
_MAX_GAP_H = 6.0


# --------------------------------------------------------------------------------------------- opening
def _as_paths(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(paths, str | os.PathLike):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise ValueError("open_era5_tcwv: no ERA5 files given")
    return out


def _engines(path: Path) -> list[str]:
    """xarray engines to try for ``path``, from its magic bytes (``"cfgrib"`` for GRIB)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ERA5 file ({exc.strerror or exc})") from None
    if head.startswith(b"GRIB") or path.suffix.lower() in _GRIB_SUFFIXES:
        return ["cfgrib"]
    if head.startswith(_HDF5_MAGIC):
        return ["h5netcdf", "netcdf4"]
    if head.startswith(_NETCDF3_MAGIC):
        return ["scipy", "netcdf4"]
    return ["h5netcdf", "scipy", "netcdf4"]


def _open_one(path: Path) -> xr.Dataset:
    """Open one file lazily (Dask chunks of the file's own layout) with the first engine that works."""
    engines = _engines(path)
    if engines == ["cfgrib"]:
        try:
            import cfgrib  # noqa: F401
        except ImportError:
            raise ValueError(f"{path}: GRIB file, but the optional package cfgrib is not installed "
                             "(pip install cfgrib, or download NetCDF from the CDS)") from None
    errors = []
    for engine in engines:
        try:
            return xr.open_dataset(path, engine=engine, chunks={}, decode_times=True, mask_and_scale=True)
        except Exception as exc:  # each backend raises its own types (OSError, TypeError, ValueError ...)
            errors.append(f"{engine}: {type(exc).__name__}: {exc}")
    raise ValueError(f"{path}: not a readable ERA5 NetCDF/GRIB file ({'; '.join(errors)})")


def _first_name(ds: xr.Dataset, names: Sequence[str], path: Path, what: str) -> str:
    for name in names:
        if name in ds.dims or name in ds.coords:
            return name
    raise ValueError(f"{path}: no {what} coordinate (looked for {', '.join(names)})")


def _normalise(ds: xr.Dataset, path: Path) -> xr.DataArray:
    """``tcwv`` of one file on ``(time, latitude, longitude)``, g cm-2, lat ascending, lon -180..180."""
    if _VARIABLE not in ds.data_vars:
        raise ValueError(f"{path}: no variable {_VARIABLE!r} (total column water vapour); "
                         f"variables: {sorted(map(str, ds.data_vars))}")
    da = ds[_VARIABLE]
    units = str(da.attrs.get("units", da.encoding.get("units", "")))
    if units.replace(" ", "").lower() not in _KG_M2:
        raise ValueError(f"{path}: {_VARIABLE} has units {units!r}; expected 'kg m**-2'")
    t_name = _first_name(ds, _TIME_NAMES, path, "time")
    lat_name = _first_name(ds, _LAT_NAMES, path, "latitude")
    lon_name = _first_name(ds, _LON_NAMES, path, "longitude")
    # cfgrib gives both "time" (analysis) and "valid_time": valid_time becomes the dimension, the other goes
    if t_name not in da.dims:
        t_dims = ds[t_name].dims
        if len(t_dims) == 0:  # a single field: time is a scalar coordinate
            da = da.expand_dims(t_name)
        elif len(t_dims) == 1 and t_dims[0] in da.dims:
            da = da.swap_dims({t_dims[0]: t_name})
        else:
            raise ValueError(f"{path}: time coordinate {t_name!r} has dims {t_dims}; expected one time axis")
    da = da.drop_vars([n for n in _TIME_NAMES if n != t_name and n in da.coords])
    da = da.rename({t_name: "time", lat_name: "latitude", lon_name: "longitude"})
    if "expver" in da.dims:  # old CDS files mixing ERA5 (0001) and ERA5T (0005): first non-missing wins
        parts = [da.isel(expver=i, drop=True) for i in range(da.sizes["expver"])]
        da = parts[0]
        for part in parts[1:]:
            da = da.combine_first(part)
    extra = [d for d in da.dims if d not in ("time", "latitude", "longitude")]
    for d in extra:
        if da.sizes[d] != 1:
            raise ValueError(f"{path}: {_VARIABLE} has an unexpected dimension {d!r} of size {da.sizes[d]} "
                             "(expected time, latitude, longitude; one ensemble member, one level)")
        da = da.isel({d: 0}, drop=True)
    keep = {"time", "latitude", "longitude"}
    da = da.drop_vars([c for c in da.coords if c not in keep])
    da = da.transpose("time", "latitude", "longitude")
    time = np.asarray(da["time"].values)
    if not np.issubdtype(time.dtype, np.datetime64):
        raise ValueError(f"{path}: time coordinate could not be decoded to dates (dtype {time.dtype})")
    lat = np.round(np.asarray(da["latitude"].values, dtype=np.float64), _COORD_DECIMALS)
    lon = np.round(np.asarray(da["longitude"].values, dtype=np.float64), _COORD_DECIMALS)
    if lon.size and lon.max() > 180.0:
        lon = (lon + 180.0) % 360.0 - 180.0
    da = da.assign_coords(time=time.astype("datetime64[ns]"), latitude=lat, longitude=lon)
    _, first = np.unique(lon, return_index=True)  # a 0..360 grid that repeats 0 as 360
    da = da.isel(longitude=np.sort(first)).sortby(["latitude", "longitude"])
    out = (da.astype(np.float32) * np.float32(_KG_M2_TO_G_CM2)).astype(np.float32)
    out.name = "wvc"
    return out


def open_era5_tcwv(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> xr.DataArray:
    """Open ERA5 total column water vapour file(s) as one lazy field in g cm-2.

    Parameters
    ----------
    paths : path or sequence of paths
        CDS NetCDF files (new or old style) or GRIB files (needs ``cfgrib``), all on the same
        latitude/longitude grid; typically one per month. The layout is detected from each file's
        content.

    Returns
    -------
    xarray.DataArray
        ``wvc`` (g cm-2, float32, Dask-backed) on dims ``(time, latitude, longitude)``: time
        ``datetime64[ns]`` UTC, strictly increasing (files concatenated, a time present in several
        files taken from the first file given); latitude ascending (deg N); longitude ascending in
        -180..180 (deg E, converted from 0..360 when needed). ``attrs["source_files"]`` lists the files.

    Raises
    ------
    ValueError
        Naming the file: unreadable or not NetCDF/GRIB, GRIB without ``cfgrib`` installed, no ``tcwv``
        variable, units not kg m-2, an unexpected extra dimension, times that cannot be decoded, or
        files whose grids differ (both files named).
    """
    files = _as_paths(paths)
    fields = [_normalise(_open_one(p), p) for p in files]
    ref = fields[0]
    for p, f in zip(files[1:], fields[1:], strict=True):
        for c in ("latitude", "longitude"):
            if f.sizes[c] != ref.sizes[c] or not np.array_equal(f[c].values, ref[c].values):
                raise ValueError(f"{p}: {c} grid differs from that of {files[0]} "
                                 f"({f.sizes[c]} values {float(f[c].min())}..{float(f[c].max())} vs "
                                 f"{ref.sizes[c]} values {float(ref[c].min())}..{float(ref[c].max())}); "
                                 "ERA5 files must share one grid")
    da = fields[0] if len(fields) == 1 else xr.concat(fields, dim="time", join="override", coords="minimal",
                                                      compat="override")
    _, first = np.unique(da["time"].values, return_index=True)  # sorted unique times, first occurrence
    da = da.isel(time=first)
    da.name = "wvc"
    da.attrs = {
        "units": "g cm-2",
        "long_name": "total column water vapour (ERA5 tcwv / 10)",
        "standard_name": "atmosphere_mass_content_of_water_vapor",
        "source_files": [str(p) for p in files],
    }
    return da


# --------------------------------------------------------------------------------------------- sampling
def _time_bracket(da: xr.DataArray, times: NDArray[np.datetime64], t: np.datetime64, max_gap_h: float
                  ) -> tuple[list[int], float]:
    """The field's time steps around ``t`` (one when ``t`` is on a step) and the weight of the later one.

    Raises
    ------
    ValueError
        If ``t`` is outside the field's span or in a gap longer than ``max_gap_h`` (h).
    """
    if t < times[0] or t > times[-1]:
        raise ValueError(f"ERA5 files {_files(da)} do not cover time {_fmt_time(t)}: they span "
                         f"{_fmt_time(times[0])} .. {_fmt_time(times[-1])}")
    i_t = int(np.searchsorted(times, t, side="right") - 1)
    if times[i_t] == t:
        return [i_t], 0.0
    gap_h = (times[i_t + 1] - times[i_t]) / np.timedelta64(1, "h")
    if gap_h > max_gap_h:
        raise ValueError(f"ERA5 files {_files(da)} do not cover time {_fmt_time(t)}: it falls in a gap "
                         f"between {_fmt_time(times[i_t])} and {_fmt_time(times[i_t + 1])} "
                         f"({gap_h:g} h > max_gap_h = {max_gap_h:g} h)")
    return [i_t, i_t + 1], float((t - times[i_t]) / (times[i_t + 1] - times[i_t]))


def _files(da: xr.DataArray) -> str:
    files = da.attrs.get("source_files") or ["<in-memory ERA5 field>"]
    names = [Path(str(f)).name for f in files]
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])}, ... ({len(names)} files)"


def _fmt_time(t: np.datetime64) -> str:
    return str(np.datetime_as_string(t, unit="m")) + "Z"


def _axis_weights(coord: NDArray[np.float64], values: NDArray[np.float64]
                  ) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.float64]]:
    """Lower index, upper index and weight of the upper node for linear interpolation on ``coord``."""
    n = coord.size
    if n == 1:
        z = np.zeros(values.shape, dtype=np.intp)
        return z, z, np.zeros(values.shape)
    i0 = np.clip(np.searchsorted(coord, values, side="right") - 1, 0, n - 2)
    w = (values - coord[i0]) / (coord[i0 + 1] - coord[i0])
    return i0, i0 + 1, np.clip(w, 0.0, 1.0)


def era5_wvc_on_grid(
    da: xr.DataArray,
    time_utc: Any,
    x: ArrayLike,
    y: ArrayLike,
    crs: Any,
    *,
    max_gap_h: float = _MAX_GAP_H,
) -> NDArray[np.float32]:
    """ERA5 water vapour at an overpass time on the pixel centres of a projected grid.

    Linear in time between the two ERA5 fields that bracket ``time_utc`` (one field if the time is
    exactly on an hour), then bilinear in latitude/longitude at each pixel centre (pixel ``x``/``y``
    transformed to longitude/latitude with pyproj). A field linear in latitude, longitude and time is
    reproduced exactly. Only the two hours and the lat/lon window that the grid needs are read.

    Parameters
    ----------
    da : xarray.DataArray
        Output of :func:`open_era5_tcwv` (g cm-2 on ``time, latitude, longitude``, latitude and
        longitude ascending).
    time_utc : datetime-like
        Overpass time; naive values are UTC, tz-aware ones are converted.
    x, y : array_like
        Pixel-centre coordinates in ``crs`` units: 1-D ``x`` (W,) and ``y`` (H,), or 2-D (H, W) each.
    crs : str, pyproj.CRS or rasterio CRS
        The grid's coordinate reference system (e.g. ``"EPSG:32650"``).
    max_gap_h : float, optional
        Largest spacing (h) of the two bracketing fields; default 6. An overpass between two files
        that leave a longer gap is refused rather than interpolated over.

    Returns
    -------
    numpy.ndarray
        Water vapour column (g cm-2), float32, shape (H, W); NaN where ERA5 itself holds missing values.

    Raises
    ------
    ValueError
        Naming the ERA5 files: the time is before the first or after the last field, or falls in a gap
        longer than ``max_gap_h``; some pixel centre lies outside the files' latitude/longitude extent
        (the grid's and the files' bounds are given); ``x``/``y``/``crs`` are unusable.
    """
    t = utc_instant(time_utc, "time_utc")
    times = np.asarray(da["time"].values).astype("datetime64[ns]")
    lat_c = np.asarray(da["latitude"].values, dtype=np.float64)
    lon_c = np.asarray(da["longitude"].values, dtype=np.float64)
    if times.size == 0 or lat_c.size == 0 or lon_c.size == 0:
        raise ValueError(f"ERA5 files {_files(da)} hold an empty field")
    t_idx, w_t = _time_bracket(da, times, t, max_gap_h)
    lon, lat = pixel_lonlat(x, y, crs)
    tol = 1e-9
    if (lon.min() < lon_c[0] - tol or lon.max() > lon_c[-1] + tol
            or lat.min() < lat_c[0] - tol or lat.max() > lat_c[-1] + tol):
        raise ValueError(
            f"ERA5 files {_files(da)} do not cover the grid: it spans lon {lon.min():.4f}..{lon.max():.4f}, "
            f"lat {lat.min():.4f}..{lat.max():.4f}; the files cover lon {lon_c[0]:g}..{lon_c[-1]:g}, "
            f"lat {lat_c[0]:g}..{lat_c[-1]:g}")
    lat = np.clip(lat, lat_c[0], lat_c[-1])
    lon = np.clip(lon, lon_c[0], lon_c[-1])
    # read only the window of nodes the grid needs
    r_lo = max(int(np.searchsorted(lat_c, lat.min(), side="right")) - 1, 0)
    r_hi = min(int(np.searchsorted(lat_c, lat.max(), side="left")) + 1, lat_c.size)
    c_lo = max(int(np.searchsorted(lon_c, lon.min(), side="right")) - 1, 0)
    c_hi = min(int(np.searchsorted(lon_c, lon.max(), side="left")) + 1, lon_c.size)
    window = np.asarray(
        da.isel(time=t_idx, latitude=slice(r_lo, r_hi), longitude=slice(c_lo, c_hi)).values, dtype=np.float64)
    field = window[0] if len(t_idx) == 1 else (1.0 - w_t) * window[0] + w_t * window[1]
    r0, r1, wr = _axis_weights(lat_c[r_lo:r_hi], lat)
    c0, c1, wc = _axis_weights(lon_c[c_lo:c_hi], lon)
    out = ((1.0 - wr) * ((1.0 - wc) * field[r0, c0] + wc * field[r0, c1])
           + wr * ((1.0 - wc) * field[r1, c0] + wc * field[r1, c1]))
    return out.astype(np.float32)

