"""THE cube writer: one Zarr store per region grid, scenes appended along ``time``.

It writes both cubes of DESIGN.md: the scene cube (variables :data:`CUBE_VARIABLES`, slots
completed by ``ingest_ok``) and the LST cube (:mod:`sftl_dask.io.lst`, slots completed by
``retrieve_ok``). Layout: dims ``(time, y, x)``, chunks ``(1, 512, 512)``, CRS and transform
written the rioxarray way (``spatial_ref``, named in every raster variable's ``coordinates`` so
that plain ``xr.open_zarr(store).rio.crs`` finds it), CF ``time`` (``standard_name``, ``axis``),
float32 variables compressed with Blosc LZ4 + byte shuffle (8x faster to write than Zarr's
default and smaller on this data, shared/reference/PERF.md). Per time step the store records
``scene_id``, ``source``, ``checksum``, its completion flag and, for scene cubes, the calibration source and
the DEM used (``PROVENANCE_VARS``).

Appending follows xarray's pattern: the driver resizes the store and writes metadata once
(``to_zarr(compute=False, append_dim="time")``); each worker then fills its own time slice
with a region write covering whole chunks; ``ingest_ok`` turns true only after a scene's
data is written, so a failed scene never looks complete, and its slot is reused by the next
run. A cube root folder holds one store per tile (``<root>/<tile>.zarr``), the ingest log
(``<root>/ingest_log.jsonl``) and STAC items (``<root>/stac/``); :mod:`sftl_dask.io.stores` reads roots
and their stores (:func:`~sftl_dask.io.stores.open_cube`, re-exported here). A store's geometry
(:class:`~sftl_dask.geo.GeoBox`) is written once, in ``sftl_grid`` (and, the rioxarray way, in
``spatial_ref``), and read back by :func:`sftl_dask.geo.store_geometry`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr
import zarr
from numcodecs import Blosc
from numpy.typing import NDArray
from pyproj import CRS

from sftl_dask.geo import GeoBox, geometry_attrs, store_geometry
from sftl_dask.io.location import append_text, filesystem, is_zarr_store, join, location, zarr_store
from sftl_dask.io.stores import COVERAGE_VAR, cube_stores, open_cube  # open_cube re-exported: the README names it
from sftl_dask.physics.channels import THERMAL_NAMES, channel_table

__all__ = [
    "CHUNK",
    "COVERAGE_DIMS",
    "COVERAGE_VAR",
    "CUBE_VARIABLES",
    "PROVENANCE_VARS",
    "VALID_PX_VAR",
    "CoverageError",
    "GeoBox",
    "append_slots",
    "check_coverage",
    "chunk_counts",
    "coverage_shape",
    "cube_stores",
    "mark_slot",
    "open_cube",
    "read_coverage",
    "read_slots",
    "rebuild_coverage",
    "write_block",
    "write_log",
    "write_scene",
]

_EMIS = tuple(n.replace("bt_", "emis_") for n in THERMAL_NAMES)
#: Nominal centre wavelength (um) of each thermal channel, by BT name (``vimi_channels.json``).
_CENTRE_UM = {c["name"]: float(c["centre_um"]) for c in channel_table()["thermal"]}
_BINARY = {"flag_values": np.array([0, 1], dtype=np.uint8)}

#: The cube's data variables: CF attributes (units first; standard names from the CF table where one
#: exists) and storage dtype. ``centre_wavelength_um`` names a channel's wavelength; a CF export makes
#: it the scalar ``radiation_wavelength`` coordinate CF asks of channel quantities.
CUBE_VARIABLES: dict[str, dict[str, Any]] = {
    **{n: {"units": "K", "standard_name": "toa_brightness_temperature", "units_metadata": "temperature: on_scale",
           "long_name": f"top-of-atmosphere brightness temperature {n[3:5]}.{n[6:]} um",
           "centre_wavelength_um": _CENTRE_UM[n], "dtype": "float32"}
       for n in THERMAL_NAMES},
    "vza": {"units": "degree", "standard_name": "sensor_zenith_angle", "long_name": "view zenith angle",
            "dtype": "float32"},
    "wvc": {"units": "g cm-2", "long_name": "total column water vapour (ERA5, interpolated)",
            "standard_name": "atmosphere_mass_content_of_water_vapor", "dtype": "float32"},
    **{n: {"units": "1", "standard_name": "surface_longwave_emissivity",
           "long_name": f"surface emissivity {n[5:7]}.{n[8:]} um (ASTER GED + VCM)",
           "centre_wavelength_um": _CENTRE_UM[n.replace("emis_", "bt_")], "dtype": "float32"} for n in _EMIS},
    "ndvi": {"units": "1", "standard_name": "normalized_difference_vegetation_index",
             "long_name": "NDVI from TOA reflectance", "dtype": "float32"},
    "cloud": {"units": "1", "standard_name": "cloud_binary_mask", "long_name": "cloud mask (1 = cloud or cloud edge)",
              **_BINARY, "flag_meanings": "clear cloud", "dtype": "uint8"},
    "ancillary_missing": {"long_name": "1 where GED or ERA5 did not cover the pixel", **_BINARY,
                          "flag_meanings": "ancillary_present ancillary_missing", "dtype": "uint8"},
}
_SLOT_VARS = {"scene_id": "<U96", "source": "<U512", "checksum": "<U64"}
#: Provenance per time step, written when a slot is created if the scenes carry it (ingest does): where the
#: calibration came from (``xml``, ``user:<path>``, ``table:<file>``) and the DEM used for the orthorectification
#: (its path, ``none (RPC height offset)``, or ``n/a (map-projected product)``). Stores written before these
#: existed keep their layout: new slots appended to them record no provenance there (the ingest log has it).
PROVENANCE_VARS = {"calibration_source": ("<U256", "source of the DN -> radiance gains and offsets"),
                   "dem": ("<U512", "DEM used to orthorectify the scene by its RPCs")}
#: Per time step, the valid pixels a scene wrote into the store, set when the slot completes (ingest's new stores;
#: -1 where not recorded). 0 marks a tile that only the footprint's no-data part touched: retrieval skips it.
VALID_PX_VAR = "valid_px"
# The chunk-coverage index (COVERAGE_VAR, defined in io.stores beside the opener that leaves it out): per time
# step and chunk of the raster variables, the pixels holding data there (a scene cube: finite bt_10_80; an LST
# cube: pixels observed, produced or not), written when the slot completes. -1 (its fill) where not recorded:
# such chunks are planned whole, as before. A chunk with 0 was never written and reads as its fill, which means
# "not covered" in every variable (NaN; qc: sftl_dask.io.lst.QC_FILL). Stores written before the index existed
# have none: every chunk of theirs is planned, as then (read correctly, not migrated).
#: Dimensions of :data:`COVERAGE_VAR`: time, chunk row, chunk column.
COVERAGE_DIMS = ("time", "chunk_row", "chunk_col")
#: Chunk edge (pixels) of new stores along y and x.
CHUNK = 512
#: CF time; numpy times count no leap seconds (CF-1.11 section 4.4.3).
_TIME_ATTRS = {"standard_name": "time", "axis": "T", "long_name": "scene centre time (UTC)",
               "units_metadata": "leap_seconds: none"}


def read_slots(store: str | os.PathLike[str], ok_var: str = "ingest_ok") -> tuple[GeoBox, list[dict[str, Any]]]:
    """The grid of a store and its time slots (index, scene_id, source, checksum, ``ok_var``, time, and
    ``calibration_source`` / ``dem`` where the store records them, :data:`PROVENANCE_VARS`)."""
    # numpy, no Dask graph for small arrays; unmasked: valid_px keeps its -1 (not recorded)
    ds = xr.open_zarr(zarr_store(store), consolidated=True, chunks=None, mask_and_scale=False,
                      drop_variables=[COVERAGE_VAR])
    grid, _ = store_geometry(ds.attrs)
    slots = [
        {"index": i, "scene_id": str(s), "source": str(src), "checksum": str(ck), ok_var: bool(ok),
         "time": t}
        for i, (s, src, ck, ok, t) in enumerate(zip(ds["scene_id"].values, ds["source"].values,
                                                      ds["checksum"].values, ds[ok_var].values,
                                                      ds["time"].values, strict=True))
    ]
    for name in PROVENANCE_VARS:
        if name in ds:
            for slot, value in zip(slots, ds[name].values, strict=True):
                slot[name] = str(value)
    if VALID_PX_VAR in ds:
        for slot, value in zip(slots, ds[VALID_PX_VAR].values, strict=True):
            slot[VALID_PX_VAR] = int(value)
    return grid, slots


def _template(grid: GeoBox, scenes: Sequence[Mapping[str, Any]], variables: Mapping[str, Mapping[str, Any]],
              ok_var: str, chunk: tuple[int, int], provenance: bool = False, coverage: bool = False
              ) -> xr.Dataset:
    """The never-computed dataset a store's slots are written from; ``chunk``: its Zarr chunk (rows, columns)."""
    n = len(scenes)
    shape = (n, grid.height, grid.width)
    chunks = (1, *chunk)
    data_vars: dict[str, Any] = {}
    for name, spec in variables.items():
        fill = spec.get("fill", np.nan if spec["dtype"] == "float32" else 0)
        attrs = {k: v for k, v in spec.items() if k not in ("dtype", "fill")}
        attrs["coordinates"] = "spatial_ref"  # so that plain xr.open_zarr makes it a coordinate: rio.crs works
        # one Dask chunk per variable, never computed (to_zarr(compute=False)): the Zarr chunks are in the
        # encoding; a chunk per Zarr chunk made the graph that is built and discarded cost ~0.1-0.3 s a store
        data_vars[name] = (("time", "y", "x"), da.full(shape, fill, dtype=spec["dtype"], chunks=shape), attrs)
    data_vars["scene_id"] = (("time",), np.array([s["scene_id"] for s in scenes], dtype=_SLOT_VARS["scene_id"]),
                             {"long_name": "product id of the scene"})
    data_vars["source"] = (("time",), np.array([s["source"] for s in scenes], dtype=_SLOT_VARS["source"]),
                           {"long_name": "path of the source (product, or scene-cube store)"})
    # written when the slot completes (mark_slot): nothing per slot at creation
    data_vars["checksum"] = (("time",), da.full((n,), "", dtype=_SLOT_VARS["checksum"], chunks=n),
                             {"long_name": "sha256 of the source product"})
    for name, (dtype, long_name) in PROVENANCE_VARS.items():
        if provenance:
            data_vars[name] = (("time",), np.array([s.get(name, "") for s in scenes], dtype=dtype),
                               {"long_name": long_name})
    if provenance:
        data_vars[VALID_PX_VAR] = (("time",), da.full((n,), -1, dtype=np.int64, chunks=n),
                                   {"long_name": "valid pixels the scene wrote in this store (-1: not recorded); "
                                                 "0: only the footprint's no-data part touched it"})
    if coverage:
        ncy, ncx = coverage_shape((grid.height, grid.width), chunks[1:])
        data_vars[COVERAGE_VAR] = (COVERAGE_DIMS, da.full((n, ncy, ncx), -1, dtype=np.int32, chunks=(n, ncy, ncx)),
                                   {"long_name": "pixels holding data per chunk of the raster variables (chunk-"
                                                 "coverage index; -1: not recorded, 0: chunk never written, reads as "
                                                 "fill)",
                                    "units": "1", "chunk_shape": [chunks[1], chunks[2]]})
    data_vars[ok_var] = (("time",), da.zeros((n,), dtype=bool, chunks=n),
                         {"long_name": f"1 once every chunk of the time step is written ({ok_var})"})
    times = np.array([np.datetime64(s["time"], "ns") for s in scenes], dtype="datetime64[ns]")
    ds = xr.Dataset(data_vars, coords={"time": times, "y": grid.y, "x": grid.x})
    ds["time"].attrs = dict(_TIME_ATTRS)
    ds["x"].attrs = {"units": "m", "standard_name": "projection_x_coordinate", "axis": "X"}
    ds["y"].attrs = {"units": "m", "standard_name": "projection_y_coordinate", "axis": "Y"}
    return ds


def _encoding(ds: xr.Dataset, variables: Mapping[str, Any], ok_var: str, chunks: tuple[int, int]
              ) -> dict[str, dict[str, Any]]:
    """A new store's encoding: codecs, fill values, and the Zarr chunks (the template has one Dask chunk each)."""
    comp = (Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE),)
    enc: dict[str, dict[str, Any]] = {k: {"compressors": comp, "chunks": (1, *chunks)} for k in variables}
    for k, spec in variables.items():
        if "fill" in spec:  # the Zarr fill value: what a chunk never written reads as
            enc[k]["_FillValue"] = spec["fill"]
    enc["time"] = {"units": "seconds since 1970-01-01T00:00:00", "calendar": "proleptic_gregorian",
                   "dtype": "int64"}
    for k in ("scene_id", "source", *(v for v in PROVENANCE_VARS if v in ds)):
        enc[k] = {"chunks": (max(1, ds.sizes["time"]),)}
    enc["checksum"] = {"chunks": (1,)}
    # "not recorded" (-1) must be the Zarr fill: the template's values are never written (compute=False)
    if COVERAGE_VAR in ds:
        enc[COVERAGE_VAR] = {"chunks": (1, *ds[COVERAGE_VAR].shape[1:]), "_FillValue": np.int32(-1)}
    if VALID_PX_VAR in ds:
        enc[VALID_PX_VAR] = {"_FillValue": np.int64(-1), "chunks": (1,)}
    enc[ok_var] = {"chunks": (1,)}
    return enc


def append_slots(store: str | os.PathLike[str], grid: GeoBox, scenes: Sequence[Mapping[str, Any]],
                 attrs: Mapping[str, Any] | None = None, *,
                 variables: Mapping[str, Mapping[str, Any]] = CUBE_VARIABLES, ok_var: str = "ingest_ok",
                 chunk: tuple[int, int] | None = None) -> list[int]:
    """Create or extend a grid store with one empty time slot per scene; return their indices.

    Parameters
    ----------
    store : path
        The grid's Zarr store (created if missing).
    grid : GeoBox
        The store's grid (must equal the existing one).
    scenes : sequence of mapping
        Each with ``scene_id``, ``source`` and ``time`` (UTC datetime64); when the first carries
        ``calibration_source`` and ``dem`` (:data:`PROVENANCE_VARS`) they are recorded per slot, in a new store
        or one that already has them.
    attrs : mapping, optional
        Global attributes for a new store.
    variables : mapping
        The raster variables with their attributes and ``dtype`` (default: the scene cube's).
    ok_var : str
        Name of the per-slot completion flag.
    chunk : (int, int), optional
        Chunk rows and columns of a new store (default :data:`CHUNK` each; clipped to the grid).

    Raises
    ------
    ValueError
        If the store exists on another grid.
    """
    store = location(store)
    if not scenes:
        return []
    provenance = all(k in scenes[0] for k in PROVENANCE_VARS)
    coverage = True
    if is_zarr_store(store):  # an older store keeps its layout: no new per-slot variables, its own chunks
        group = zarr.open_group(zarr_store(store), mode="r")
        provenance = provenance and all(k in group for k in PROVENANCE_VARS)
        coverage = COVERAGE_VAR in group
        chunk = tuple(group[next(iter(variables))].chunks[1:])  # type: ignore[assignment]
    cy, cx = chunk or (CHUNK, CHUNK)
    zchunk = (min(cy, grid.height), min(cx, grid.width))  # a new store's chunks are clipped to its grid
    tmpl = _template(grid, scenes, variables, ok_var, zchunk, provenance, coverage)
    tmpl = tmpl.rio.write_crs(grid.crs)
    tmpl = tmpl.rio.write_transform(grid.affine)
    gdal_crs = {"wkt": CRS(grid.crs).to_wkt(), "projjson": CRS(grid.crs).to_json_dict()}  # GDAL's Zarr CRS: < 3.10
    for name in variables:
        tmpl[name].attrs.update(grid_mapping="spatial_ref", _CRS=gdal_crs)
    if not is_zarr_store(store):
        tmpl.attrs = {
            "title": "sftl-dask scene cube", "platform": "GF5-02", "instrument": "VIMI",
            "Conventions": "CF-1.11", **geometry_attrs(grid), **dict(attrs or {}),
        }
        tmpl.to_zarr(zarr_store(store), mode="w-", compute=False, consolidated=True, zarr_format=2,
                     encoding=_encoding(tmpl, variables, ok_var, zchunk))
        return list(range(len(scenes)))
    existing, slots = read_slots(store, ok_var)
    if existing != grid:
        raise ValueError(f"{store}: holds grid {existing.to_attrs()}, not {grid.to_attrs()}")
    start = len(slots)
    tmpl.attrs = dict(xr.open_zarr(zarr_store(store), consolidated=True).attrs)  # appending must not drop them
    tmpl.drop_vars(["spatial_ref", "x", "y"]).to_zarr(zarr_store(store), mode="a", append_dim="time", compute=False,
                                                      consolidated=True)
    return list(range(start, start + len(scenes)))


def write_scene(store: str | os.PathLike[str], index: int, data: Mapping[str, NDArray], checksum: str, *,
                window: tuple[int, int, int, int] | None = None, mark: bool = True) -> NDArray[np.int32]:
    """Fill time slot ``index`` of a grid store with one scene, then mark it complete.

    Parameters
    ----------
    store : path
        The grid store.
    index : int
        The slot from :func:`append_slots`.
    data : mapping
        Every :data:`CUBE_VARIABLES` name to an array of the grid's (height, width), or of the window's.
    checksum : str
        sha256 of the source product.
    window : (int, int, int, int), optional
        ``(y0, y1, x0, x1)``: the part of the slot the scene covers; the rest stays fill (NaN / 0) and
        its chunks are never written. Default: the whole grid.
    mark : bool
        Mark the slot complete after writing (a scene spread over several tiles marks its slots only
        once all are written), with its chunk-coverage index.

    Returns
    -------
    numpy.ndarray
        The slot's chunk-coverage index: finite ``bt_10_80`` pixels per chunk of the grid (int32).

    Raises
    ------
    ValueError
        If a variable is missing or of the wrong shape.
    """
    group = zarr.open_group(zarr_store(store), mode="r+")
    ny, nx = group["bt_10_80"].shape[1:]
    if not 0 <= index < group["bt_10_80"].shape[0]:
        raise ValueError(f"{store}: no time slot {index}")
    y0, y1, x0, x1 = window if window is not None else (0, ny, 0, nx)
    if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise ValueError(f"{store}: window {window} is outside the grid ({ny}, {nx})")
    shape = (y1 - y0, x1 - x0)
    missing = [k for k in CUBE_VARIABLES if k not in data]
    if missing:
        raise ValueError(f"{store}: scene data lacks {', '.join(missing)}")
    arrays = {}
    for k, spec in CUBE_VARIABLES.items():
        arr = np.asarray(data[k])
        if arr.shape != shape:
            raise ValueError(f"{store}: {k} has shape {arr.shape}, window is {shape}")
        arrays[k] = arr.astype(spec["dtype"])
    # The slot's chunks (time chunk 1) belong to this scene alone, so partial chunks at the window's
    # edges are safe to write. The slot counts as ingested only after all of them are.
    for k, arr in arrays.items():
        group[k][index, y0:y1, x0:x1] = arr
    coverage = chunk_counts(np.isfinite(arrays["bt_10_80"]), tuple(group["bt_10_80"].chunks[1:]),  # type: ignore[arg-type]
                            (y0, x0), (ny, nx))
    if mark:
        mark_slot(store, index, "ingest_ok", checksum=checksum, group=group, coverage=coverage)
    return coverage


def write_block(store: str | os.PathLike[str] | Mapping[str, Any], index: int, window: tuple[int, int, int, int],
                data: Mapping[str, NDArray[Any]]) -> None:
    """Write one chunk-aligned window ``(y0, y1, x0, x1)`` of time slot ``index`` (region write).

    Every chunk the window touches is covered whole (or ends at the grid's edge), so concurrent
    writers of other windows never touch the same chunk.

    Parameters
    ----------
    store : path, zarr.Group or mapping of name to zarr.Array
        The grid store (open arrays are reused: opening one reads its metadata).
    data : mapping
        Variable name to a ``(y1 - y0, x1 - x0)`` array.

    Raises
    ------
    ValueError
        If the window is not aligned to the store's chunks or an array has the wrong shape.
    """
    group = store if isinstance(store, zarr.Group | Mapping) else zarr.open_group(zarr_store(store), mode="r+")
    y0, y1, x0, x1 = window
    for k, arr in data.items():
        z = group[k]
        _, cy, cx = z.chunks
        _, ny, nx = z.shape
        if y0 % cy or x0 % cx or (y1 % cy and y1 != ny) or (x1 % cx and x1 != nx):
            raise ValueError(f"{store}: window {window} of {k} is not aligned to its chunks ({cy}, {cx})")
        if arr.shape != (y1 - y0, x1 - x0):
            raise ValueError(f"{store}: {k} block has shape {arr.shape}, window is {(y1 - y0, x1 - x0)}")
        z[index, y0:y1, x0:x1] = arr


def mark_slot(store: str | os.PathLike[str], index: int | Sequence[int], ok_var: str, *,
              checksum: str | Sequence[str] | None = None, group: Any = None, valid_px: int | None = None,
              coverage: NDArray[Any] | int | None = None) -> None:
    """Mark time slot(s) ``index`` complete (``ok_var`` true), recording their ``checksum`` if given, the
    scene's valid pixels in the store (``valid_px``) where the store has :data:`VALID_PX_VAR`, and the slots'
    chunk-coverage index (``coverage``: ``(n_chunk_rows, n_chunk_cols)`` pixel counts for one slot, one such
    array per slot, or 0 for no data anywhere) where the store has :data:`COVERAGE_VAR`.

    Call it only after every chunk of the slot is written: a slot is complete only when flagged. Several
    slots are marked in one write per array.
    """
    group = group if group is not None else zarr.open_group(zarr_store(store), mode="r+")
    if not isinstance(index, int | np.integer):
        index = np.asarray(index, dtype=np.int64)
        if not index.size:
            return
    if checksum is not None:
        group["checksum"][index] = checksum
    if valid_px is not None and VALID_PX_VAR in group:
        group[VALID_PX_VAR][index] = valid_px
    if coverage is not None and COVERAGE_VAR in group:
        group[COVERAGE_VAR][index] = coverage
    group[ok_var][index] = True


def write_log(root: str | os.PathLike[str], records: Iterable[Mapping[str, Any]], name: str = "ingest_log.jsonl"
              ) -> None:
    """Append records (one JSON line each) to ``<root>/<name>`` (ingest's log by default).

    On an object store the log is read and written back whole (:func:`~sftl_dask.io.location.append_text`).
    """
    append_text(join(root, name), "".join(json.dumps(dict(r), default=str) + "\n" for r in records))


class CoverageError(ValueError):
    """A store whose chunk-coverage index disagrees with its data (edited by hand, or half-migrated).

    ``store`` and ``step`` (the time index) name where; the message says which chunks.
    """

    def __init__(self, message: str, store: str = "", step: int = -1) -> None:
        super().__init__(message)
        self.store, self.step = store, step


def coverage_shape(grid_shape: Sequence[int], chunk: Sequence[int]) -> tuple[int, int]:
    """Chunk rows and columns of a grid of ``grid_shape`` (rows, columns) in chunks of ``chunk`` pixels: the last
    two dims of the chunk-coverage index."""
    return -(-int(grid_shape[0]) // int(chunk[0])), -(-int(grid_shape[1]) // int(chunk[1]))


def chunk_counts(mask: NDArray[np.bool_], chunk: tuple[int, int], origin: tuple[int, int] = (0, 0),
                 grid_shape: tuple[int, int] | None = None) -> NDArray[np.int32]:
    """Pixels set in ``mask`` per chunk of a grid: the chunk-coverage index of one time step (or of its part).

    Parameters
    ----------
    mask : numpy.ndarray
        ``(ny, nx)`` boolean array placed at ``origin`` (row, column) of the grid.
    chunk : (int, int)
        Chunk rows and columns of the grid (pixels).
    origin : (int, int)
        Row and column of ``mask[0, 0]`` in the grid.
    grid_shape : (int, int), optional
        The grid's (rows, columns); default: the mask's extent from the grid's origin.

    Returns
    -------
    numpy.ndarray
        ``(ceil(rows / chunk rows), ceil(columns / chunk columns))`` int32 counts.
    """
    cy, cx = chunk
    y0, x0 = origin
    ny, nx = grid_shape or (y0 + mask.shape[0], x0 + mask.shape[1])
    ncy, ncx = coverage_shape((ny, nx), chunk)
    full = np.zeros((ncy * cy, ncx * cx), dtype=bool)
    full[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
    return full.reshape(ncy, cy, ncx, cx).sum(axis=(1, 3), dtype=np.int64).astype(np.int32)


def read_coverage(store: str | os.PathLike[str]) -> NDArray[np.int32] | None:
    """A store's chunk-coverage index, ``(time, chunk rows, chunk columns)`` (-1: not recorded), or None for a
    store written before it existed (:data:`COVERAGE_VAR`)."""
    group = zarr.open_group(zarr_store(store), mode="r")
    if COVERAGE_VAR not in group:
        return None
    return np.asarray(group[COVERAGE_VAR][...], dtype=np.int32)


def check_coverage(store: str | os.PathLike[str], index: NDArray[np.int32], steps: Sequence[int], var: str
                   ) -> None:
    """Check a store's chunk-coverage index against the chunks of ``var`` the store holds, for time ``steps``.

    A chunk the index counts as holding data must be there, and a chunk it counts as empty must not (the
    writers never store a chunk that is all fill). Reads only the listing of ``var``'s chunk keys, no data.

    Raises
    ------
    CoverageError
        Naming the store, the first time step that disagrees and its chunks.
    """
    fs, root = filesystem(join(store, var))
    written: set[tuple[int, ...]] = set()
    for key in fs.ls(root, detail=False):
        parts = str(key).rsplit("/", 1)[-1].split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            written.add(tuple(int(p) for p in parts))
    for t in steps:
        recorded = index[t]
        if (recorded < 0).any():
            continue  # not recorded: planned whole, nothing to check
        held = {(r, c) for (tt, r, c) in written if tt == t}
        said = {(int(r), int(c)) for r, c in zip(*np.nonzero(recorded > 0), strict=True)}
        if held != said:
            extra, lost = sorted(held - said), sorted(said - held)
            raise CoverageError(
                f"{store}: time step {t}: the chunk-coverage index ({COVERAGE_VAR}) disagrees with the data of "
                f"{var}" + (f"; chunks (row, col) {extra[:4]} hold data the index says is empty" if extra else "")
                + (f"; chunks {lost[:4]} the index counts were never written" if lost else "")
                + "; re-ingest the scene (or rebuild the index: sftl_dask.io.cube.rebuild_coverage)",
                str(store), int(t))


def rebuild_coverage(store: str | os.PathLike[str]) -> int:
    """Recompute a store's chunk-coverage index from its data, for every completed time step; returns them.

    A scene cube counts the finite ``bt_10_80`` pixels of each chunk, an LST cube the observed ones (``qc``
    without ``not_covered``). Reads every chunk: the repair for a store whose index :func:`check_coverage`
    refused, not a step of a normal run.

    Raises
    ------
    CoverageError
        If the store has no index to rebuild (written before it existed).
    """
    group = zarr.open_group(zarr_store(store), mode="r+")
    if COVERAGE_VAR not in group:
        raise CoverageError(f"{store}: has no chunk-coverage index ({COVERAGE_VAR}) to rebuild")
    lst = "retrieve_ok" in group
    arr = group["qc" if lst else "bt_10_80"]
    ok = np.asarray(group["retrieve_ok" if lst else "ingest_ok"][...], dtype=bool)
    chunk = tuple(arr.chunks[1:])
    for t in np.flatnonzero(ok):
        step = arr[int(t)]
        have = (step & 2) == 0 if lst else np.isfinite(step)  # qc bit 1: not_covered (sftl_dask.io.lst.QC_FLAGS)
        group[COVERAGE_VAR][int(t)] = chunk_counts(have, chunk)  # type: ignore[arg-type]
    zarr.consolidate_metadata(zarr_store(store))
    return int(ok.sum())
