"""Standard exports of the cubes: CF-1.11 NetCDF4 and Cloud-Optimized GeoTIFF.

Both work on the datasets ``xr.open_zarr(store)`` (or :func:`sftl_dask.open_lst`) gives for an LST
store or a scene-cube store, lazily: nothing is loaded before the write, which streams the Dask
chunks (NetCDF) or one time step (COG) to a hidden file beside the output, renamed into place only when
complete. An existing output is never replaced.

:func:`to_netcdf` writes what the IOOS ``compliance-checker`` (``--test=cf:1.11``) accepts without a
high-priority failure (``docs/exports.md`` has the scores):

* global ``Conventions = "CF-1.11"``, ``title``, ``institution``, ``source``, ``references`` and a
  ``history`` line appended for the export;
* ``x``/``y`` with ``projection_x_coordinate``/``projection_y_coordinate`` (m) and ``time`` with
  ``standard_name``/``axis``/CF units, none with a ``_FillValue``;
* ``spatial_ref``, the grid-mapping variable (``crs_wkt`` and the CF grid-mapping parameters), named
  in the ``grid_mapping`` of every raster variable;
* a variable's ``centre_wavelength_um`` (the scene cube's brightness temperatures and emissivities)
  becomes a scalar ``radiation_wavelength`` coordinate, as CF asks of a channel's quantity;
* per time step strings (``scene_id``, ``source``, ``checksum``) as NetCDF4 strings, the completion
  flags (``retrieve_ok``/``ingest_ok``, bool in the store) as int8 flags with ``flag_values``;
* numeric attributes that CF ties to the variable's type (``valid_min``, ``flag_masks``, ...) cast to it;
* raster variables deflated (zlib level 4, byte shuffle) in chunks of one time step and up to
  512 x 512 px.

:func:`to_cog` writes one time step of one or more variables of a single data type as a COG (GDAL's
COG driver: 512 px tiles, DEFLATE with a predictor, internal overviews, nodata set). For an LST
dataset the default bands are ``lst`` and ``lst_uncertainty`` (float32, nodata NaN, overviews by
averaging); ``qc`` (uint16 bit flags: no value can be averaged) goes to a file of its own with
``variables=("qc",)``, overviews by nearest neighbour and nodata the variable's ``_FillValue`` (an LST cube's
``qc``: 770, ``not_covered`` with uncertainty class 3, :data:`sftl_dask.io.lst.QC_FILL`), else 65535 (a value no flag
combination takes).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from numpy.typing import NDArray

from sftl_dask.staging import staged_file
from sftl_dask.version import __version__

__all__ = ["ExportError", "OutputExistsError", "to_cog", "to_netcdf"]

#: Chunk edge (px) of NetCDF variables and COG tiles.
EXPORT_CHUNK = 512
#: zlib level of NetCDF variables: level 4 is within a few percent of level 9's size at a third of its time.
_ZLIB_LEVEL = 4
#: Attributes CF requires to have the variable's data type (CF-1.11 sections 2.5.1 and 3.5).
_TYPED_ATTRS = ("valid_min", "valid_max", "valid_range", "actual_range", "flag_values", "flag_masks",
                "missing_value")
#: Band variables of an LST dataset's COG when none are named.
_COG_DEFAULT = ("lst", "lst_uncertainty")
_GLOBAL_DEFAULTS = {
    "title": "sftl-dask cube",
    "institution": "sftl-dask",
    "source": "GF5-02 VIMI thermal infrared imagery",
    "references": "Heidarian et al. 2025, Remote Sensing 17:3803 (SFTL); https://cfconventions.org",
}


class ExportError(ValueError):
    """Bad input to an export: a missing variable or time step, no CRS, mixed data types."""


class OutputExistsError(FileExistsError, ValueError):
    """The output path exists (exports never replace a file)."""


# ---------------------------------------------------------------------------------------------------- NetCDF
def to_netcdf(ds: xr.Dataset, path: str | os.PathLike[str]) -> Path:
    """Write an LST or scene-cube dataset as a CF-1.11 NetCDF4 file, streaming its Dask chunks.

    Parameters
    ----------
    ds : xarray.Dataset
        A cube with dims ``(time, y, x)`` (any subset of time steps and variables) and its CRS in
        ``spatial_ref`` (as ``xr.open_zarr`` of a cube store gives it). ``x``/``y`` in CRS units (m),
        ``time`` UTC.
    path : path
        The file to write; it must not exist.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputExistsError
        If ``path`` exists (a ``FileExistsError`` and a ``ValueError``).
    ExportError
        If ``ds`` has no ``x``/``y`` dimensions or no CRS.

    Notes
    -----
    Memory: one chunk per Dask thread (at most 1 x 512 x 512 px per variable); the raster variables are
    re-chunked to the file's chunks so each HDF5 chunk is written once.
    """
    path = Path(path)
    _refuse_existing(path)
    out = _cf_dataset(ds, history=f"sftl_dask.io.export.to_netcdf {path.name}")
    with staged_file(path) as tmp:
        out.to_netcdf(tmp, engine="h5netcdf", format="NETCDF4", encoding=_nc_encoding(out))
    return path


def _cf_dataset(ds: xr.Dataset, *, history: str) -> xr.Dataset:
    """A copy of ``ds`` laid out the CF-1.11 way, with empty encodings (see the module docstring)."""
    if "x" not in ds.dims or "y" not in ds.dims:
        raise ExportError(f"dataset has dims {tuple(ds.dims)}, not (time, y, x)")
    crs = ds.rio.crs
    if crs is None:
        raise ExportError("dataset has no CRS (no spatial_ref grid mapping): open the cube with xr.open_zarr")
    out = ds.copy()  # shallow: data shared, attrs and encodings are the copy's own
    for name in out.variables:
        out[name].encoding = {}
    out = _rechunk(out)
    gm = "spatial_ref"
    out = out.drop_vars([v for v in out.variables if v == gm or out[v].attrs.get("grid_mapping_name")])
    out = out.rio.write_crs(crs, grid_mapping_name=gm)
    out = out.rio.write_transform(ds.rio.transform())
    out = out.reset_coords(gm)  # a data variable named by grid_mapping, never listed as a coordinate

    geographic = bool(crs.is_geographic)
    for dim, axis in (("x", "X"), ("y", "Y")):
        out[dim].attrs = {
            **{k: v for k, v in out[dim].attrs.items() if k not in ("_FillValue", "missing_value")},
            "axis": axis,
            "standard_name": ("longitude" if dim == "x" else "latitude") if geographic
            else f"projection_{dim}_coordinate",
            "long_name": f"{dim} coordinate of projection" if not geographic else
            ("longitude" if dim == "x" else "latitude"),
            "units": ("degrees_east" if dim == "x" else "degrees_north") if geographic else "m",
        }
    if "time" in out.dims:
        # numpy times count no leap seconds: CF-1.11 section 4.4.3 "leap_seconds: none"
        out["time"].attrs = {"long_name": "time (UTC)", "units_metadata": "leap_seconds: none",
                             **out["time"].attrs, "standard_name": "time", "axis": "T"}

    wavelengths: dict[str, str] = {}  # raster variable -> scalar coordinate name
    for name in list(out.data_vars):
        var = out[name]
        if var.dtype == bool:  # NetCDF has no bool; CF flags instead
            out[name] = var.astype(np.int8)
            out[name].attrs = {**var.attrs, "flag_values": np.array([0, 1], dtype=np.int8),
                               "flag_meanings": "incomplete complete"}
            var = out[name]
        out[name].encoding.pop("grid_mapping", None)  # rioxarray's; written as the attribute below
        attrs = {k: v for k, v in var.attrs.items() if k not in ("coordinates", "grid_mapping", "_FillValue")}
        if "x" in var.dims and "y" in var.dims:
            attrs["grid_mapping"] = gm
            centre = attrs.pop("centre_wavelength_um", None)
            if centre is not None:
                coord = f"wavelength_{float(centre):05.2f}um".replace(".", "_")
                if coord not in out.coords:
                    out.coords[coord] = xr.Variable((), np.float32(centre), {
                        "standard_name": "radiation_wavelength", "long_name": "channel centre wavelength",
                        "units": "um"})
                wavelengths[name] = coord
        out[name].attrs = _typed_attrs(attrs, out[name].dtype)
    for name, coord in wavelengths.items():
        out[name].encoding["coordinates"] = coord
    for name in out.data_vars:
        if name not in wavelengths:
            out[name].encoding["coordinates"] = None  # no xarray-invented coordinates attribute

    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    attrs = {**_GLOBAL_DEFAULTS, **{k: v for k, v in ds.attrs.items() if v is not None}}
    attrs["Conventions"] = "CF-1.11"
    line = f"{now} {history} (sftl-dask {__version__})"
    attrs["history"] = f"{attrs['history']}\n{line}" if attrs.get("history") else line
    out.attrs = {k: _nc_attr(v) for k, v in attrs.items()}
    return out


def _typed_attrs(attrs: Mapping[str, Any], dtype: np.dtype[Any]) -> dict[str, Any]:
    """``attrs`` as NetCDF attributes, those CF ties to the variable's type cast to ``dtype``."""
    out = {}
    for k, v in attrs.items():
        if k in _TYPED_ATTRS and np.issubdtype(dtype, np.number):
            arr = np.asarray(v).astype(dtype)
            out[k] = arr if arr.ndim else arr[()]
        else:
            out[k] = _nc_attr(v)
    return out


def _nc_attr(value: Any) -> Any:
    """A value NetCDF can hold as an attribute: bools as 0/1, mappings and ragged lists as JSON text."""
    if isinstance(value, bool | np.bool_):
        return np.int8(value)
    if isinstance(value, Mapping):
        return json.dumps(value, default=str)
    if isinstance(value, list | tuple):
        arr = np.asarray(value)
        return arr if arr.dtype.kind in "iufU" else json.dumps(list(value), default=str)
    return value


def _nc_encoding(ds: xr.Dataset) -> dict[Hashable, dict[str, Any]]:
    """Per-variable NetCDF encoding: deflated, chunked rasters; no _FillValue on coordinates or flags."""
    enc: dict[Hashable, dict[str, Any]] = {}
    for name, var in ds.variables.items():
        e: dict[str, Any] = {}
        if name in ds.coords or var.dtype.kind in "iub":
            e["_FillValue"] = None  # coordinates and flags: every value is valid
        elif var.dtype.kind == "f":
            e["_FillValue"] = var.dtype.type(np.nan)
        if name == "time":
            e.update(_time_encoding(var))
        if "x" in var.dims and "y" in var.dims and var.ndim >= 2:
            e.update(zlib=True, complevel=_ZLIB_LEVEL, shuffle=True,
                     chunksizes=tuple(min(EXPORT_CHUNK, n) if d in ("x", "y") else 1
                                      for d, n in zip(var.dims, var.shape, strict=True)))
        enc[name] = e
    return enc


def _time_encoding(var: xr.Variable) -> dict[str, Any]:
    """Whole seconds since 1970 where every time is on a second, else microseconds (int64)."""
    ns = np.asarray(var.values, dtype="datetime64[ns]").astype(np.int64)
    unit = "seconds" if not (ns % 1_000_000_000).any() else "microseconds"
    return {"units": f"{unit} since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian", "dtype": "int64"}


def _rechunk(ds: xr.Dataset) -> xr.Dataset:
    """Raster variables in Dask chunks equal to the file's chunks (one write per HDF5 chunk)."""
    chunks = {d: (1 if d not in ("x", "y") else min(EXPORT_CHUNK, ds.sizes[d])) for d in ds.dims}
    for name, var in ds.data_vars.items():
        if "x" in var.dims and "y" in var.dims and var.chunks is not None:
            ds[name] = var.chunk({d: chunks[d] for d in var.dims})
    return ds


# ---------------------------------------------------------------------------------------------------- COG
def to_cog(da_or_ds: xr.DataArray | xr.Dataset, path: str | os.PathLike[str], time: Any = None,
           overviews: bool = True, *, variables: Sequence[str] | None = None) -> Path:
    """Write one time step as a Cloud-Optimized GeoTIFF (one band per variable).

    Parameters
    ----------
    da_or_ds : xarray.DataArray or xarray.Dataset
        A raster ``(time, y, x)`` or ``(y, x)`` with its CRS (``spatial_ref``), or a cube dataset.
    path : path
        The ``.tif`` to write; it must not exist.
    time : int, str or datetime-like, optional
        The time step: an index (negative from the end), or a time label (``"2022-05-17T03:30"``, or a
        day ``"2022-05-17"`` when exactly one step falls on it). Needed when there are several.
    overviews : bool
        Internal overviews (halving until a tile holds the image): averages for float bands, nearest
        neighbour for integer ones (flags).
    variables : sequence of str, optional
        With a dataset: the band variables, all of one data type (default ``lst`` and
        ``lst_uncertainty``, those present).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    OutputExistsError
        If ``path`` exists.
    ExportError
        A variable not in the dataset, several data types, no CRS, a time step not in the data
        (the message names the value), or an integer band whose nodata value (65535 for uint16)
        occurs in the data.

    Notes
    -----
    Memory: the time step of every band, loaded whole (GDAL's COG driver writes from a complete image).
    """
    path = Path(path)
    _refuse_existing(path)
    layers, crs = _cog_layers(da_or_ds, variables)
    if len({a.dtype for a in layers}) > 1:
        raise ExportError("COG bands must share a data type; got "
                          + ", ".join(f"{a.name} {a.dtype}" for a in layers) + ": write them to separate files")
    when = None
    if "time" in layers[0].dims:
        i = _time_index(layers[0].indexes["time"], time)
        when = pd.Timestamp(layers[0]["time"].values[i])
        layers = [a.isel(time=i) for a in layers]
    elif time is not None:
        raise ExportError(f"time={time!r} given but the data have no time dimension")
    extra = [d for d in layers[0].dims if d not in ("y", "x")]
    if extra:
        raise ExportError(f"{layers[0].name}: dimensions {extra} besides (y, x); select one step of them")
    transform = layers[0].rio.transform()
    data = np.stack([np.asarray(a.transpose("y", "x").values) for a in layers])
    dtype = data.dtype
    nodata = _nodata(layers[0], data)
    band = xr.DataArray(data, dims=("band", "y", "x"),
                        coords={"band": np.arange(1, len(layers) + 1), "y": layers[0]["y"].values,
                                "x": layers[0]["x"].values},
                        attrs={"long_name": tuple(str(a.attrs.get("long_name", a.name)) for a in layers)})
    band = band.rio.write_crs(crs).rio.write_transform(transform).rio.write_nodata(nodata, encoded=False)
    tags = _cog_tags(da_or_ds, layers, when)
    resampling = "AVERAGE" if dtype.kind == "f" else "NEAREST"
    with staged_file(path) as tmp:
        band.rio.to_raster(tmp, driver="COG", tags=tags, BLOCKSIZE=EXPORT_CHUNK, COMPRESS="DEFLATE",
                           PREDICTOR="YES", OVERVIEWS="AUTO" if overviews else "NONE",
                           OVERVIEW_RESAMPLING=resampling, BIGTIFF="IF_SAFER")
    return path


def _nodata(first: xr.DataArray, data: NDArray[Any]) -> float | int:
    """The COG's nodata value: NaN for floats, else the first band's ``_FillValue`` or its type's maximum.

    Raises
    ------
    ExportError
        If that maximum, taken as nodata, occurs in the data.
    """
    if data.dtype.kind == "f":
        return float("nan")
    fill = first.encoding.get("_FillValue", first.attrs.get("_FillValue"))
    nodata = int(fill) if fill is not None else int(np.iinfo(data.dtype).max)
    if fill is None and (data == nodata).any():
        raise ExportError(f"{first.name}: nodata value {nodata} occurs in the data")
    return nodata


def _cog_tags(source: xr.DataArray | xr.Dataset, layers: Sequence[xr.DataArray], when: pd.Timestamp | None
              ) -> dict[str, Any]:
    """GDAL metadata of a COG: per-band tags, the time step, and the dataset's identity (scene, model)."""
    tags: dict[str, Any] = {"band_tags": [_band_tags(a) for a in layers]}
    if when is not None:
        tags["time"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(source, xr.Dataset):
        for k in ("title", "platform", "instrument", "model_kind", "model_sha256"):
            if k in source.attrs:
                tags[k] = str(source.attrs[k])
        if when is not None and "scene_id" in source and source["scene_id"].dims == ("time",):
            tags["scene_id"] = str(source["scene_id"].sel(time=when.to_datetime64()).values)
    return tags


def _cog_layers(obj: xr.DataArray | xr.Dataset, variables: Sequence[str] | None
                ) -> tuple[list[xr.DataArray], Any]:
    """The band arrays (north-up) and their CRS."""
    if isinstance(obj, xr.Dataset):
        names = list(variables) if variables is not None else [v for v in _COG_DEFAULT if v in obj]
        if not names:
            raise ExportError(f"dataset has none of {', '.join(_COG_DEFAULT)}: name the variables")
        missing = [n for n in names if n not in obj.data_vars]
        if missing:
            raise ExportError(f"variable {missing[0]!r} not in the dataset (has {', '.join(map(str, obj.data_vars))})")
        crs = obj.rio.crs
        layers = [obj[n] for n in names]
    else:
        if variables is not None:
            raise ExportError("variables= applies to a dataset, not to a DataArray")
        crs = obj.rio.crs
        layers = [obj]
    if crs is None:
        raise ExportError(f"{layers[0].name}: no CRS (no spatial_ref grid mapping)")
    if "x" not in layers[0].dims or "y" not in layers[0].dims:
        raise ExportError(f"{layers[0].name}: dims {layers[0].dims} lack y and x")
    y = layers[0]["y"].values
    if y.size > 1 and y[0] < y[-1]:
        layers = [a.isel(y=slice(None, None, -1)) for a in layers]
    return layers, crs


def _time_index(index: pd.Index, time: Any) -> int:
    """Position of ``time`` (an index, a label or a day) in a time index.

    Raises
    ------
    ExportError
        Naming ``time`` when it is not there, out of range, or matches several steps.
    """
    n = len(index)
    if time is None:
        if n == 1:
            return 0
        raise ExportError(f"the data hold {n} time steps: pass time= (an index or a date)")
    if isinstance(time, int | np.integer) and not isinstance(time, bool):
        if not -n <= int(time) < n:
            raise ExportError(f"time index {time} out of range: {n} time steps")
        return int(time) % n
    span = f"{index[0]:%Y-%m-%dT%H:%M:%S} .. {index[-1]:%Y-%m-%dT%H:%M:%S}, {n} steps" if n else "no steps"
    try:
        loc = index.get_loc(time if isinstance(time, str) else pd.Timestamp(time))
    except (KeyError, ValueError, TypeError):
        raise ExportError(f"time {time!r} not in the data ({span})") from None
    hits = np.arange(n)[loc] if isinstance(loc, slice | np.ndarray) else np.array([loc])
    if hits.size != 1:
        raise ExportError(f"time {time!r} matches {hits.size} time steps ({span}): give the full time")
    return int(hits[0])


def _band_tags(a: xr.DataArray) -> dict[str, str]:
    keep = ("units", "standard_name", "long_name", "flag_masks", "flag_values", "flag_meanings")
    tags = {"name": str(a.name)}
    for k in keep:
        if k in a.attrs:
            v = a.attrs[k]
            tags[k] = " ".join(str(x) for x in np.ravel(v)) if isinstance(v, np.ndarray | list) else str(v)
    return tags


def _refuse_existing(path: Path) -> None:
    if path.exists() or path.is_symlink():
        raise OutputExistsError(f"{path}: already exists; exports never replace a file")
