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
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
from dask import compute, delayed
from numpy.typing import NDArray

from sftl_dask.geo import store_geometry
from sftl_dask.io.lst import LST_OK_VAR, lst_stores
from sftl_dask.io.stac import LST_COLLECTION, item_id, scene_sources, write_cog_stac, write_lst_stac
from sftl_dask.io.stores import open_store
from sftl_dask.staging import staged_file
from sftl_dask.version import __version__

__all__ = ["COG_VARIABLES", "EXPORT_MANIFEST", "ExportError", "OutputExistsError", "export_cogs", "plan_export",
           "to_cog", "to_netcdf"]

#: Chunk edge (px) of NetCDF variables and COG tiles.
EXPORT_CHUNK = 512
#: zlib level of NetCDF variables: level 4 is within a few percent of level 9's size at a third of its time.
_ZLIB_LEVEL = 4
#: Attributes CF requires to have the variable's data type (CF-1.11 sections 2.5.1 and 3.5).
_TYPED_ATTRS = ("valid_min", "valid_max", "valid_range", "actual_range", "flag_values", "flag_masks",
                "missing_value")
#: The variables ``sftl export`` writes, one COG each per scene and tile.
COG_VARIABLES = ("lst", "lst_uncertainty", "qc")
#: The record of an export folder: the LST cube it came from and every COG written (incremental re-runs).
EXPORT_MANIFEST = "export.json"
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
    # per-time metadata (open_lst holds them as coordinates of time): variables of their own, as in the store
    out = out.reset_coords([c for c in out.coords if c not in out.dims and out[c].dims == ("time",)])
    out = _climatological_time(out)
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
        attrs = {k: v for k, v in var.attrs.items()  # _CRS: GDAL's Zarr CRS; NetCDF has the grid mapping
                 if k not in ("coordinates", "grid_mapping", "_FillValue", "_CRS")}
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


def _climatological_time(ds: xr.Dataset) -> xr.Dataset:
    """A climatology by ``month`` or ``dayofyear`` (``ds.sftl.climatology``) on a CF climatological time axis
    (CF-1.11 section 7.4): ``time`` in the first year it spans, ``climatology_bounds`` from that step's start in
    the first year to its end in the last; anything else as it is."""
    by = ds.attrs.get("sftl_climatology_by")
    if by not in ("month", "dayofyear") or by not in ds.dims or "time" in ds.dims:
        return ds
    first, last = pd.Timestamp(ds.attrs["sftl_climatology_first"]), pd.Timestamp(ds.attrs["sftl_climatology_last"])
    steps = [int(v) for v in ds[by].values]
    if by == "month":
        start = [pd.Timestamp(first.year, m, 1) for m in steps]
        end = [pd.Timestamp(last.year, m, 1) + pd.offsets.MonthBegin(1) for m in steps]
        mid = [s + (s + pd.offsets.MonthBegin(1) - s) / 2 for s in start]
    else:
        start = [pd.Timestamp(first.year, 1, 1) + pd.Timedelta(days=d - 1) for d in steps]
        end = [pd.Timestamp(last.year, 1, 1) + pd.Timedelta(days=d) for d in steps]
        mid = [s + pd.Timedelta(hours=12) for s in start]
    out = ds.rename({by: "time"}).assign_coords(time=("time", pd.DatetimeIndex(mid).values, {
        "standard_name": "time", "axis": "T", "climatology": "climatology_bounds",
        "long_name": f"{'month' if by == 'month' else 'day of the year'} of the climatology (UTC)"}))
    out[by] = ("time", np.asarray(steps, dtype=np.int16), ds[by].attrs)
    out["climatology_bounds"] = (("time", "nv"), np.stack([pd.DatetimeIndex(start).values,
                                                           pd.DatetimeIndex(end).values], axis=1))
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
        if name == "climatology_bounds":  # in the units of time (CF 7.4)
            e.update(_time_encoding(ds["time"]), _FillValue=None)
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


# ---------------------------------------------------------------------------------------------------- sftl export
def plan_export(lst: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, times: Sequence[str] = (),
                tiles: Sequence[str] = (), overwrite: bool = False) -> dict[str, Any]:
    """Check an export of an LST cube to COGs and list its work; nothing is written.

    Parameters
    ----------
    lst : path
        An LST root (one store per tile) or store.
    out_dir : path
        The export folder (``sftl export --cog``): new, or one this LST cube was exported to before.
    times : sequence of str
        Time steps to export (a time ``2022-05-17T03:30`` or a day ``2022-05-17``); default all complete ones.
    tiles : sequence of str
        Tile names to export (``50N_134_009``); default all.
    overwrite : bool
        Replace an export folder written from another LST cube (or another model).

    Returns
    -------
    dict
        ``lst`` (resolved), ``out``, ``model`` (kind and sha256), ``steps`` (per scene and tile: store, index,
        time, scene id, checksum, source) and ``manifest`` (the folder's record, empty for a new one).

    Raises
    ------
    ExportError
        No LST store at ``lst``; a tile or time step it does not hold (the message names it and what it holds);
        ``out_dir`` a file, a folder that is not an export, or an export of another cube without ``overwrite``.
    """
    root, out = Path(lst).resolve(), Path(out_dir)
    stores = lst_stores(root)
    if not stores:
        raise ExportError(f"{lst}: no LST store here")
    unknown = [t for t in tiles if t not in stores]
    if unknown:
        raise ExportError(f"--tiles: {unknown[0]!r} is not a tile of {lst} (holds {', '.join(stores)})")
    steps, model, matched = [], {}, set()
    for tile in tiles or list(stores):
        ds = open_store(stores[tile], chunks=None)
        model = {"kind": str(ds.attrs.get("model_kind", "unknown")), "sha256": str(ds.attrs.get("model_sha256", ""))}
        index = pd.DatetimeIndex(ds["time"].values)
        ok = np.flatnonzero(np.asarray(ds[LST_OK_VAR].values, dtype=bool))
        wanted = set(ok) if not times else set()
        for t in times:
            hits = _times_matching(index, t)
            matched.update(t for i in hits if i in ok)
            wanted.update(i for i in hits if i in ok)
        steps += [{"tile": tile, "store": str(stores[tile]), "index": int(i), "time": index[i],
                   "scene_id": str(ds["scene_id"].values[i]), "checksum": str(ds["checksum"].values[i]),
                   "source": str(ds["source"].values[i]), "grid": store_geometry(ds.attrs)[0]} for i in sorted(wanted)]
        ds.close()
    missing = [t for t in times if t not in matched]
    if missing:
        raise ExportError(f"--time: {missing[0]!r} is no complete time step of {lst}"
                          + (f" on tiles {', '.join(tiles)}" if tiles else ""))
    manifest = _read_manifest(out, root, model, overwrite)
    return {"lst": root, "out": out, "model": model, "steps": steps, "manifest": manifest}


def _times_matching(index: pd.DatetimeIndex, time: str) -> list[int]:
    """Positions of the steps at a time (to the second) or on a day (``YYYY-MM-DD``)."""
    try:
        when = pd.Timestamp(time)
    except ValueError:
        raise ExportError(f"--time: {time!r} is not a time (2022-05-17T03:30) or a day (2022-05-17)") from None
    when = when.tz_convert(None) if when.tzinfo else when
    if len(time) <= 10:  # a day
        return [int(i) for i in np.flatnonzero(index.normalize() == when.normalize())]
    return [int(i) for i in np.flatnonzero(index.floor("s") == when.floor("s"))]


def _read_manifest(out: Path, lst: Path, model: Mapping[str, str], overwrite: bool) -> dict[str, Any]:
    """The export folder's record, checked against this LST cube (``{}`` for a new or replaced folder)."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return {}
    path = out / EXPORT_MANIFEST
    if not path.is_file():
        raise ExportError(f"{out}: exists and is not an sftl export folder (no {EXPORT_MANIFEST}): choose a new one")
    try:
        manifest = json.loads(path.read_text())
        same = manifest["lst"] == str(lst) and manifest["model"] == dict(model)
    except (ValueError, KeyError, TypeError):
        raise ExportError(f"{path}: unreadable export record; remove the folder or choose a new one") from None
    if same:
        return manifest
    if not overwrite:
        raise ExportError(f"{out}: holds COGs of another LST cube ({manifest['lst']}, model sha256 "
                          f"{str(manifest['model'].get('sha256'))[:12]}): pass --overwrite to replace them")
    return {"replace": True}


def export_cogs(lst: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, times: Sequence[str] = (),
                tiles: Sequence[str] = (), overwrite: bool = False, client: Any = None,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Export an LST cube as COGs, one per scene, tile and variable, with a STAC catalog that clients load.

    One Dask task per COG (:func:`to_cog` of ``lst``, ``lst_uncertainty``, ``qc``: overviews, nodata NaN or ``qc``'s
    fill, 770: not covered).
    Incremental: a COG already written from the same step (same scene, product checksum and model) is kept.
    ``<out>/<tile>/<scene id>_<tile>_<variable>.tif``, ``<out>/export.json`` (the record) and ``<out>/stac``
    (:func:`~sftl_dask.io.stac.write_cog_stac`). The LST cube's own catalog is rewritten first when it is
    missing or from an older sftl-dask (no tile-store assets): the summary says so.

    Parameters
    ----------
    lst, out_dir, times, tiles, overwrite
        As :func:`plan_export`.
    client : distributed.Client, optional
        Where the tasks run (default: Dask's threaded scheduler in this process).
    progress : callable, optional
        ``progress(done, total)`` over the COGs.

    Returns
    -------
    dict
        ``written``, ``kept`` (COGs), ``failed`` (path and reason each), ``items``, ``stac`` (catalog path),
        ``lst_stac_rewritten`` (bool), ``seconds``.

    Raises
    ------
    ExportError
        Bad input, as :func:`plan_export`.

    Notes
    -----
    Memory: per task one time step of one variable of one tile (4 MiB for a 1024 px float32 tile), twice.
    """
    start = _dt.datetime.now(_dt.UTC)
    plan = plan_export(lst, out_dir, times=times, tiles=tiles, overwrite=overwrite)
    out: Path = plan["out"]
    if plan["manifest"].get("replace"):
        _clear_export(out)
    known = plan["manifest"].get("cogs", {})
    jobs, kept = _cog_jobs(plan, known)
    failed, written = _run_cog_jobs(jobs, client, progress)
    record = {**known, **written}
    _write_manifest(out, plan, record)
    lst_cat, rewritten = _lst_catalog(plan["lst"])
    stac = write_cog_stac(out, _cog_item_specs(out, plan, record), lst_cat)
    return {"written": len(written), "kept": kept, "failed": failed, "items": len({v["item"] for v in record.values()}),
            "stac": stac, "lst_stac_rewritten": rewritten, "out": out,
            "seconds": (_dt.datetime.now(_dt.UTC) - start).total_seconds()}


def _cog_jobs(plan: Mapping[str, Any], known: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int]:
    """The COGs to write (relative path, store, index, variable, key), and how many are kept as they are."""
    jobs, kept = [], 0
    for st in plan["steps"]:
        ident = item_id(st["scene_id"], st["tile"])
        for var in COG_VARIABLES:
            rel = f"{st['tile']}/{ident}_{var}.tif"
            key = {"item": ident, "tile": st["tile"], "scene_id": st["scene_id"], "checksum": st["checksum"],
                   "time": st["time"].strftime("%Y-%m-%dT%H:%M:%SZ"), "variable": var}
            old = known.get(rel)
            if old and all(old.get(k) == v for k, v in key.items()) and (plan["out"] / rel).is_file():
                kept += 1
                continue
            jobs.append({"rel": rel, "path": str(plan["out"] / rel), "store": st["store"], "index": st["index"],
                         "variable": var, "key": key})
    return jobs, kept


def _write_one_cog(store: str, index: int, variable: str, path: str) -> dict[str, Any]:
    """One task: time step ``index`` of ``variable`` as a COG at ``path`` (replacing a stale one); its record."""
    target = Path(path)
    target.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    ds = open_store(store, chunks=None)  # no Dask inside a task: the slice is read directly
    to_cog(ds, target, time=index, variables=(variable,))
    attrs = ds[variable].attrs
    ds.close()
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    dtype = str(ds[variable].dtype)
    nodata = _nodata(ds[variable], np.zeros(0, dtype=ds[variable].dtype))  # what to_cog wrote
    return {"sha256": digest, "size": target.stat().st_size, "dtype": dtype,
            "nodata": None if dtype.startswith("float") else int(nodata),
            **{k: str(attrs[k]) for k in ("units", "long_name") if k in attrs}}


def _run_cog_jobs(jobs: Sequence[Mapping[str, Any]], client: Any, progress: Callable[[int, int], None] | None
                  ) -> tuple[list[dict[str, str]], dict[str, Any]]:
    """Run one task per COG; (failures, records of the COGs written by relative path)."""
    if not jobs:
        return [], {}
    args = [(j["store"], j["index"], j["variable"], j["path"]) for j in jobs]
    results: list[Any] = []
    if client is not None:
        from sftl_dask.cluster import completed

        futures = {client.submit(_write_one_cog, *a, pure=False): i for i, a in enumerate(args)}
        results = [None] * len(jobs)
        for n, fut in enumerate(completed(futures, client), start=1):
            results[futures[fut]] = fut.exception() or fut.result()
            if progress:
                progress(n, len(jobs))
    else:
        results = list(compute(*[delayed(_safe)(*a) for a in args], scheduler="threads"))
        if progress:
            progress(len(jobs), len(jobs))
    failed, written = [], {}
    for job, res in zip(jobs, results, strict=True):
        if isinstance(res, BaseException):
            failed.append({"path": job["path"], "reason": f"{type(res).__name__}: {res}"})
        else:
            written[job["rel"]] = {**job["key"], **res}
    return failed, written


def _safe(*args: Any) -> Any:
    """:func:`_write_one_cog`, returning its exception instead of raising it (one failure fails one COG)."""
    try:
        return _write_one_cog(*args)
    except (OSError, ValueError, RuntimeError) as exc:
        return exc


def _clear_export(out: Path) -> None:
    """Remove what an export wrote in ``out`` (its record, catalog and tile folders of COGs), nothing else."""
    manifest = json.loads((out / EXPORT_MANIFEST).read_text())
    for rel in manifest.get("cogs", {}):
        (out / rel).unlink(missing_ok=True)
    for folder in {out / Path(rel).parent for rel in manifest.get("cogs", {})}:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    shutil.rmtree(out / "stac", ignore_errors=True)
    (out / EXPORT_MANIFEST).unlink()


def _write_manifest(out: Path, plan: Mapping[str, Any], cogs: Mapping[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    doc = {"lst": str(plan["lst"]), "model": plan["model"], "software": f"sftl-dask {__version__}",
           "cogs": dict(sorted(cogs.items()))}
    with staged_file(out / EXPORT_MANIFEST, replace=True) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))


def _lst_catalog(lst: Path) -> tuple[Path, bool]:
    """The LST cube's ``catalog.json``; rewritten (True) when missing or from an older sftl-dask."""
    stac_dir = lst.parent / f"{lst.name.removesuffix('.zarr')}_stac" if lst.name.endswith(".zarr") else lst / "stac"
    collection = stac_dir / LST_COLLECTION / "collection.json"
    current = collection.is_file() and bool(json.loads(collection.read_text()).get("assets"))
    return (stac_dir / "catalog.json", False) if current else (write_lst_stac(lst), True)


def _cog_item_specs(out: Path, plan: Mapping[str, Any], cogs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per Item (scene and tile) what :func:`~sftl_dask.io.stac.write_cog_stac` needs, from the record."""
    steps = {item_id(s["scene_id"], s["tile"]): s for s in plan["steps"]}
    grids: dict[str, Any] = {}
    specs: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, tuple[str, str]]] = {}
    stores = lst_stores(plan["lst"])
    for rel, rec in cogs.items():
        ident, tile = rec["item"], rec["tile"]
        if tile not in grids:
            with open_store(stores[tile], chunks=None) as ds:
                grids[tile] = (store_geometry(ds.attrs)[0], {str(a): str(b) for a, b in
                               zip(ds["scene_id"].values, ds["source"].values, strict=True)})
        grid, source_of = grids[tile]
        source = source_of.get(rec["scene_id"], steps.get(ident, {}).get("source", ""))
        if source not in sources:
            sources[source] = scene_sources(source) if source else {}
        product, product_checksum = sources[source].get(rec["scene_id"], (None, rec["checksum"]))
        spec = specs.setdefault(ident, {"scene_id": rec["scene_id"], "tile": tile, "time": pd.Timestamp(rec["time"]),
                                        "grid": grid, "product": product, "product_checksum": product_checksum,
                                        "model": f"{plan['model']['kind']} model (artifact sha256 "
                                                 f"{plan['model']['sha256']})", "cogs": {}})
        spec["cogs"][rec["variable"]] = {**rec, "path": out / rel}
    for spec in specs.values():
        spec["cogs"] = {v: spec["cogs"][v] for v in COG_VARIABLES if v in spec["cogs"]}
    return list(specs.values())
