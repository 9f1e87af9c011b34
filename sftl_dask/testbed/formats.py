"""Writers of the real file formats that the testbed produces.

Each writer takes arrays and metadata and writes one product the way users receive it:

* GF5-02 VIMI L1 archives (``.tar`` of two multi-band DN GeoTIFFs and an XML), laid out as
  described by ``sftl_dask/data/vimi_l1.json`` (the same description the readers use);
* ERA5 total column water vapour as the Copernicus CDS delivers it (new and old NetCDF styles);
* ASTER GED v3 (AG100) HDF5 tiles;
* station-style in situ radiometer CSV files and the site table;
* a small truth Zarr per region, for scoring only.

Nothing here knows the synthetic world: the writers are pure format code, so what they write
is what a reader of real products must handle. Every writer validates its arguments first
(``ValueError`` naming the argument), writes to a hidden temporary name beside the target and
renames it into place only when complete, so a failure never leaves a partial product behind.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import os
import re
import tarfile
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from affine import Affine
from numpy.typing import ArrayLike, NDArray
from rasterio.crs import CRS
from rasterio.errors import CRSError, NotGeoreferencedWarning

from sftl_dask.io.rpc import Rpc, format_rpb
from sftl_dask.staging import staged_file
from sftl_dask.times import utc_instant

__all__ = [
    "DELIVERED_XML_FIELDS",
    "SITE_COLUMNS",
    "ged_tile_name",
    "vimi_product_name",
    "write_era5_tcwv",
    "write_ged_tile",
    "write_insitu_csv",
    "write_sites_csv",
    "write_vimi_archive",
    "write_vimi_delivery",
]

#: The XML fields of a delivered product, in order: the GF5-01 VIMS metadata field list (FACTS.md, issue 28):
#: no CenterTime, ESUN, EarthSunDistance, SatelliteAltitude, RadianceUnit or DNBits.
DELIVERED_XML_FIELDS: tuple[str, ...] = (
    "SatelliteID", "ReceiveStationID", "SensorID", "ProduceTime", "ProductLevel", "ProductID", "OrbitID",
    "SolarAzimuth", "SolarZenith", "SatelliteAzimuth", "SatelliteZenith", "StartTime", "EndTime", "Bands",
    "CentralWavelength", "ImageGSD", "CloudPercent", "CalibrationParam", "GAINS", "OFFSETS", "MapProjection",
    "ZoneNo", "TopLeftLatitude", "TopLeftLongitude", "TopRightLatitude", "TopRightLongitude",
    "BottomRightLatitude", "BottomRightLongitude", "BottomLeftLatitude", "BottomLeftLongitude",
)

#: Columns of ``sites.csv``, in order.
SITE_COLUMNS: tuple[str, ...] = (
    "id", "name", "region", "lon", "lat", "elevation_m", "land_cover", "instrument", "broadband_emissivity",
)
_INSITU_SITE_KEYS: tuple[str, ...] = (*SITE_COLUMNS[:-1], "sensor_id", "broadband_emissivity")

_GED_FILL = -9999
_ERA5_FILL = -32767
_ASTER_BANDS = ("b10", "b11", "b12", "b13", "b14")
_ASTER_CENTRES_UM = (8.28, 8.63, 9.08, 10.66, 11.29)  # FACTS.md, Emissivity
_CDS_LONG_NAME = "Total column vertically-integrated water vapour"
_CDS_STANDARD_NAME = "lwe_thickness_of_atmosphere_mass_content_of_water_vapor"
_ECMWF = "European Centre for Medium-Range Weather Forecasts"


# --------------------------------------------------------------------------------------------- common helpers
@lru_cache(maxsize=1)
def _vimi_format() -> dict[str, Any]:
    """The VIMI L1 product description (``sftl_dask/data/vimi_l1.json``)."""
    return json.loads(resources.files("sftl_dask.data").joinpath("vimi_l1.json").read_text())


def _atomic(final: Path) -> contextlib.AbstractContextManager[Path]:
    """A hidden temporary path beside ``final`` that replaces it on success (the package's one atomic writer)."""
    return staged_file(final, replace=True)


def _array(value: ArrayLike, name: str, *, ndim: int, kind: str,
           shape: tuple[int | None, ...] | None = None) -> NDArray:
    """``value`` as an array with ``ndim`` dims, dtype kind in ``kind`` (numpy kind letters) and ``shape``."""
    arr = np.asarray(value)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.dtype.kind not in kind:
        raise ValueError(f"{name} has dtype {arr.dtype}; expected kind {kind!r} (numpy dtype kinds)")
    if shape is not None and any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True)):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    return arr


def _times(value: ArrayLike, name: str, n: int | None = None) -> NDArray[np.datetime64]:
    """1-D, strictly increasing ``datetime64[ns]`` (timezone-aware input is converted to naive UTC)."""
    try:
        idx = pd.DatetimeIndex(np.atleast_1d(np.asarray(value)) if not isinstance(value, pd.DatetimeIndex) else value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be datetimes: {exc}") from None
    if idx.tz is not None:
        idx = idx.tz_convert("UTC").tz_localize(None)
    t = idx.values.astype("datetime64[ns]")
    if t.ndim != 1 or (n is not None and t.size != n):
        raise ValueError(f"{name} must be 1-D of length {n}, got {t.shape}")
    if np.isnat(t).any():
        raise ValueError(f"{name} contains NaT")
    if t.size > 1 and not np.all(np.diff(t) > np.timedelta64(0, "ns")):
        raise ValueError(f"{name} must be strictly increasing")
    return t


def _datetime(value: Any, name: str) -> datetime:
    """One instant as a naive UTC :class:`datetime` (accepts datetime, date, numpy datetime64, str)."""
    return pd.Timestamp(utc_instant(value, name)).to_pydatetime(warn=False)


def _integer(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def _finite(value: Any, name: str, lo: float = -np.inf, hi: float = np.inf) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not np.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"{name} must be finite and in [{lo}, {hi}], got {value!r}")
    return v


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value or "\r" in value:
        raise ValueError(f"{name} must be a non-empty one-line string, got {value!r}")
    return value


def _fmt_float(v: float) -> str:
    """Shortest text that reads back as the same float (``repr``)."""
    return repr(float(v))


# --------------------------------------------------------------------------------------------- VIMI L1 archive
def vimi_product_name(lon: float, lat: float, date: date | datetime | np.datetime64 | str, orbit: int,
                      product_id: int) -> str:
    """The GF5-02 VIMI L1 product stem, e.g. ``GF5B_VIMI_E115.8_N40.3_20220612_012345_L10000123456``.

    Parameters
    ----------
    lon, lat : float
        Scene centre (deg E, deg N); written rounded to 0.1 deg with the hemisphere letter.
    date : date, datetime, numpy.datetime64 or str
        Acquisition date (UTC).
    orbit : int
        Orbit number, 0-999999 (6 digits).
    product_id : int
        Product id, 0-9999999999 (10 digits, after ``L1``).

    Returns
    -------
    str
        The stem, without extension; it matches ``archive.stem_regex`` of ``vimi_l1.json``.

    Raises
    ------
    ValueError
        If an argument is out of range or not of the right kind (the message names it).
    """
    lon_r = round(_finite(lon, "lon", -180.0, 180.0), 1)
    lat_r = round(_finite(lat, "lat", -90.0, 90.0), 1)
    day = _datetime(date, "date")
    orbit_i = _integer(orbit, "orbit", 0, 999_999)
    pid = _integer(product_id, "product_id", 0, 9_999_999_999)
    fmt = _vimi_format()["archive"]
    stem = fmt["stem_format"].format(
        ew="W" if lon_r < 0 else "E", abs_lon=abs(lon_r), ns="S" if lat_r < 0 else "N", abs_lat=abs(lat_r),
        date=day, orbit=orbit_i, product_id=pid,
    )
    assert re.match(fmt["stem_regex"], stem), stem  # the json's format and regex agree
    return stem


def _xml_text(field: Mapping[str, Any], value: Any, n_bands: int) -> str:
    """Validate one XML field value and render it as text."""
    name, kind = field["name"], field["type"]
    arg = f"meta[{name!r}]"
    lo, hi = field.get("valid_range", (-np.inf, np.inf))
    if kind == "str":
        return _text(value, arg)
    if kind == "int":
        return str(_integer(value, arg, int(max(lo, -(2**62))), int(min(hi, 2**62))))
    if kind == "float":
        return _fmt_float(_finite(value, arg, lo, hi))
    if kind == "time":
        dt = _datetime(value, arg)
        return f"{dt:%Y-%m-%d %H:%M:%S}.{dt.microsecond // 1000:03d}"
    if kind in ("float_list", "str_list"):
        items = value.split(",") if isinstance(value, str) else list(np.ravel(np.asarray(value, dtype=object)))
        if len(items) != n_bands:
            raise ValueError(f"{arg} must have {n_bands} values (one per band), got {len(items)}")
        if kind == "str_list":
            return ",".join(_text(str(v).strip(), arg) for v in items)
        return ",".join(_fmt_float(_finite(v, f"{arg}[{i}]", lo, hi)) for i, v in enumerate(items))
    raise AssertionError(f"unknown field type {kind!r} in vimi_l1.json")


def _xml_values(meta: Mapping[str, Any], stem: str) -> dict[str, str]:
    """The XML fields as text, in the order of ``vimi_l1.json``; defaults filled, everything validated."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"meta must be a mapping of XML field values, got {type(meta).__name__}")
    fmt = _vimi_format()
    fields = fmt["xml"]["fields"]
    known = {f["name"] for f in fields}
    unknown = sorted(set(meta) - known)
    if unknown:
        raise ValueError(f"meta has unknown XML field(s) {unknown}; known: {sorted(known)}")
    parts = re.match(fmt["archive"]["stem_regex"], stem)
    assert parts is not None
    from_stem = {"ProductID": int(parts["product_id"]), "OrbitID": int(parts["orbit"])}
    n_bands = len(fmt["bands"])
    out: dict[str, str] = {}
    for f in fields:
        name = f["name"]
        value = meta.get(name, from_stem.get(name, f.get("default")))
        if value is None:
            if f["required"]:
                raise ValueError(f"meta[{name!r}] is required")
            continue
        out[name] = _xml_text(f, value, n_bands)
    for name, v in from_stem.items():
        if int(out[name]) != v:
            raise ValueError(f"meta[{name!r}] = {out[name]} disagrees with the product name {stem!r} ({v})")
    if [b.strip() for b in out["Bands"].split(",")] != [b["name"] for b in fmt["bands"]]:
        raise ValueError(f"meta['Bands'] must list {[b['name'] for b in fmt['bands']]} in order")
    if any(float(g) <= 0 for g in out["GAINS"].split(",")):
        raise ValueError("meta['GAINS'] must all be > 0")
    start, centre, end = (pd.Timestamp(out[k]) for k in ("StartTime", "CenterTime", "EndTime"))
    if not start <= centre <= end:
        raise ValueError("meta['StartTime'] <= meta['CenterTime'] <= meta['EndTime'] does not hold")
    return out


def _write_xml(path: Path, values: Mapping[str, str]) -> None:
    root = ET.Element(_vimi_format()["xml"]["root"])
    for name, text in values.items():
        ET.SubElement(root, name).text = text
    ET.indent(root, space="  ")
    path.write_bytes(b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8",
                                                                             xml_declaration=False) + b"\n")


def _write_geotiff(path: Path, data: NDArray[np.uint16], crs: CRS | None, transform: Affine | None, nodata: int,
                   band_names: Sequence[str]) -> None:
    """A tiled, deflated uint16 GeoTIFF of DN with band descriptions. Map-projected with ``crs`` and ``transform``;
    with both None, in sensor geometry: no CRS and no geotransform (its RPCs are the ``.rpb`` beside it).

    Deflate level 1: 0.12 s against 1.1 s at the default level 6 for a 6 x 1280 x 1280 raster, 3 % larger (the
    testbed writes 80 of them; any level decodes the same)."""
    count, height, width = data.shape
    where = {} if crs is None else {"crs": crs, "transform": transform}
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": "uint16", **where,
        "nodata": nodata, "compress": "deflate", "zlevel": 1, "predictor": 2, "tiled": True,
        "blockxsize": 256, "blockysize": 256, "interleave": "band",
    }
    with warnings.catch_warnings():  # in sensor geometry, no geotransform is the point
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            for i, band in enumerate(band_names, start=1):
                dst.set_band_description(i, band)
            dst.update_tags(AREA_OR_POINT="Area")


def write_vimi_archive(
    out_dir: str | os.PathLike[str],
    stem: str,
    dn_b1_b6: NDArray[np.uint16],
    dn_b7_b12: NDArray[np.uint16],
    *,
    crs: str | CRS,
    transform: Affine,
    meta: Mapping[str, Any],
    nodata: int = 0,
) -> Path:
    """Write one GF5-02 VIMI L1 archive ``<out_dir>/<stem>.tar``.

    The tar (plain, uncompressed, ustar) holds, with plain relative names:

    * ``<stem>_B1_B6.tif``: bands B1-B6, DN (uint16), 20 m grid;
    * ``<stem>_B7_B12.tif``: bands B7-B12, DN (uint16), 40 m grid;
    * ``<stem>.xml``: root ``ProductMetaData``, one child element per field of ``vimi_l1.json``.

    GeoTIFFs are DEFLATE-compressed (horizontal predictor), tiled 256 x 256, band-interleaved,
    georeferenced, with ``nodata`` set and band descriptions ``B1`` ... ``B12``.

    Why this is long: the layout above and eight parameters with their units make this text long; the body
    is 26 lines, each member written by its own helper.

    Parameters
    ----------
    out_dir : path
        Folder to write into (created if missing).
    stem : str
        Product stem, as made by :func:`vimi_product_name`.
    dn_b1_b6 : numpy.ndarray of uint16, shape (6, 2H, 2W)
        DN of B1-B6 on the 20 m grid.
    dn_b7_b12 : numpy.ndarray of uint16, shape (6, H, W)
        DN of B7-B12 on the 40 m grid.
    crs : str or rasterio.crs.CRS
        Coordinate reference system of both grids, e.g. ``"EPSG:32650"``.
    transform : affine.Affine
        North-up affine transform of the 40 m grid (no rotation); the 20 m grid shares its origin
        with half the pixel size.
    meta : mapping
        XML field values keyed by the field names of ``vimi_l1.json`` (lists or comma-separated
        strings for per-band fields; times as datetime, numpy datetime64 or str, UTC). Fields with a
        ``default`` there may be left out; ``ProductID`` and ``OrbitID`` default to the stem's.
    nodata : int
        DN marking no data (default 0), written as the GeoTIFF nodata value.

    Returns
    -------
    pathlib.Path
        The archive path.

    Raises
    ------
    ValueError
        On a malformed stem, wrong array shape or dtype, DN above the ``DNBits`` range, an unusable
        CRS or transform, or a missing, unknown or out-of-range XML field (the message names it).
    """
    fmt = _vimi_format()
    if not isinstance(stem, str) or not re.match(fmt["archive"]["stem_regex"], stem):
        raise ValueError(f"stem {stem!r} does not match the product naming {fmt['archive']['stem_regex']}")
    vnir, tir = _vimi_dn(dn_b1_b6, dn_b7_b12)
    values = _xml_values(meta, stem)
    dn_max = 2 ** int(values["DNBits"]) - 1
    for name, arr in (("dn_b1_b6", vnir), ("dn_b7_b12", tir)):
        if int(arr.max()) > dn_max:
            raise ValueError(f"{name} holds DN {int(arr.max())} above {dn_max} (DNBits {values['DNBits']})")
    nodata = _integer(nodata, "nodata", 0, dn_max)
    crs_obj = _north_up_georeference(crs, transform)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{stem}.tar"
    members, bands = _vimi_members(fmt, stem)
    normalise = _tar_member_normaliser(int(pd.Timestamp(values["CenterTime"]).timestamp()))
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{stem}.") as work:
        w = Path(work)
        _write_geotiff(w / members["B1_B6"], vnir, crs_obj, transform @ Affine.scale(0.5), nodata, bands["B1_B6"])
        _write_geotiff(w / members["B7_B12"], tir, crs_obj, transform, nodata, bands["B7_B12"])
        _write_xml(w / members["metadata"], values)
        with _atomic(final) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for member in members.values():
                tar.add(w / member, arcname=member, recursive=False, filter=normalise)
    return final


def _delivered_xml_values(meta: Mapping[str, Any], stem: str) -> dict[str, str]:
    """The delivered XML fields (:data:`DELIVERED_XML_FIELDS`) as text, typed by ``vimi_l1.json``; validated."""
    fmt = _vimi_format()
    typed = {f["name"]: f for f in [*fmt["xml"]["fields"], *fmt["xml"]["delivered_fields"]]}
    unknown = sorted(set(meta) - set(DELIVERED_XML_FIELDS))
    if unknown:
        raise ValueError(f"meta has field(s) {unknown} that a delivered product does not carry")
    parts = re.match(fmt["archive"]["stem_regex"], stem)
    assert parts is not None
    from_stem = {"ProductID": int(parts["product_id"]), "OrbitID": int(parts["orbit"])}
    out: dict[str, str] = {}
    for name in DELIVERED_XML_FIELDS:
        f = typed[name]
        value = meta.get(name, from_stem.get(name, f.get("default")))
        if value is None:
            if f.get("required", False):
                raise ValueError(f"meta[{name!r}] is required")
            continue
        out[name] = _xml_text(f, value, len(fmt["bands"]))
    if pd.Timestamp(out["StartTime"]) > pd.Timestamp(out["EndTime"]):
        raise ValueError("meta['StartTime'] is after meta['EndTime']")
    if ("GAINS" in out) != ("OFFSETS" in out):
        raise ValueError("meta['GAINS'] and meta['OFFSETS'] go together (both or neither)")
    return out


def write_vimi_delivery(
    out_dir: str | os.PathLike[str],
    stem: str,
    dn_b1_b6: NDArray[np.uint16],
    dn_b7_b12: NDArray[np.uint16],
    *,
    rpc_b1_b6: Rpc,
    rpc_b7_b12: Rpc,
    meta: Mapping[str, Any],
    nodata: int = 0,
    dn_bits: int = 12,
) -> Path:
    """Write one GF5-02 VIMI L1 product as delivered: ``<out_dir>/<stem>.tar.gz`` in raw sensor geometry.

    The gzip-compressed tar (ustar, deterministic: fixed owner, mode, member and gzip times) holds
    ``<stem>_B1_B6.tiff`` (B1-B6, DN, 20 m), ``<stem>_B7_B12.tiff`` (B7-B12, DN, 40 m), both WITHOUT CRS or
    geotransform, the RPC00B sidecar of each as GDAL looks for it (``<raster stem>.rpb``) and ``<stem>.xml``
    with the delivered field set :data:`DELIVERED_XML_FIELDS` (no CenterTime, ESUN, EarthSunDistance).

    Parameters
    ----------
    out_dir : path
        Folder to write into (created if missing).
    stem : str
        Product stem (:func:`vimi_product_name`).
    dn_b1_b6, dn_b7_b12 : numpy.ndarray of uint16, shapes (6, 2H, 2W) and (6, H, W)
        DN on the image grids (line, sample) of the 20 m and 40 m detectors.
    rpc_b1_b6, rpc_b7_b12 : sftl_dask.io.rpc.Rpc
        RPC00B of each raster in its own pixel coordinates ((0, 0) = centre of the first pixel).
    meta : mapping
        XML field values by name (only names of :data:`DELIVERED_XML_FIELDS`; times UTC).
    nodata : int
        DN marking no data (default 0).
    dn_bits : int
        Bits of a DN (default 12): larger DN values are refused.

    Returns
    -------
    pathlib.Path
        The archive path.

    Raises
    ------
    ValueError
        On a malformed stem, wrong array shape or dtype, DN above the range, or a missing, unknown or
        out-of-range XML field (the message names it).
    """
    fmt = _vimi_format()
    if not isinstance(stem, str) or not re.match(fmt["archive"]["stem_regex"], stem):
        raise ValueError(f"stem {stem!r} does not match the product naming {fmt['archive']['stem_regex']}")
    vnir, tir = _vimi_dn(dn_b1_b6, dn_b7_b12)
    values = _delivered_xml_values(meta, stem)
    dn_max = 2 ** _integer(dn_bits, "dn_bits", 1, 16) - 1
    for name, arr in (("dn_b1_b6", vnir), ("dn_b7_b12", tir)):
        if int(arr.max()) > dn_max:
            raise ValueError(f"{name} holds DN {int(arr.max())} above {dn_max} ({dn_bits} bits)")
    nodata = _integer(nodata, "nodata", 0, dn_max)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"{stem}.tar.gz"
    names = {ft: fmt["file_types"][ft]["member"].format(stem=stem, ext=".tiff") for ft in ("B1_B6", "B7_B12")}
    bands = {ft: [b["name"] for b in fmt["bands"] if b["file_type"] == ft] for ft in ("B1_B6", "B7_B12")}
    mtime = int(pd.Timestamp(values["EndTime"]).timestamp())
    normalise = _tar_member_normaliser(mtime)
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{stem}.") as work:
        w = Path(work)
        members = []
        for ft, data, rpc in (("B1_B6", vnir, rpc_b1_b6), ("B7_B12", tir, rpc_b7_b12)):
            _write_geotiff(w / names[ft], data, None, None, nodata, bands[ft])
            rpb = Path(names[ft]).with_suffix(".rpb").name
            (w / rpb).write_text(format_rpb(rpc, band_id=f"VIMI_{ft}"), encoding="ascii")
            members += [names[ft], rpb]
        members.append(fmt["file_types"]["metadata"]["member"].format(stem=stem, ext=".xml"))
        _write_xml(w / members[-1], values)
        with _atomic(final) as tmp, open(tmp, "wb") as raw, \
                gzip.GzipFile(filename=f"{stem}.tar", mode="wb", fileobj=raw, mtime=mtime) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for member in members:
                tar.add(w / member, arcname=member, recursive=False, filter=normalise)
    return final


def _vimi_members(fmt: Mapping[str, Any], stem: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The archive's member names (``B1_B6``, ``B7_B12``, ``metadata``) and the band names of each GeoTIFF."""
    members = {
        "B1_B6": fmt["file_types"]["B1_B6"]["member"].format(stem=stem, ext=".tif"),
        "B7_B12": fmt["file_types"]["B7_B12"]["member"].format(stem=stem, ext=".tif"),
        "metadata": fmt["file_types"]["metadata"]["member"].format(stem=stem, ext=".xml"),
    }
    bands = {ft: [b["name"] for b in fmt["bands"] if b["file_type"] == ft] for ft in ("B1_B6", "B7_B12")}
    return members, bands


def _vimi_dn(dn_b1_b6: NDArray[np.uint16], dn_b7_b12: NDArray[np.uint16]) -> tuple[NDArray, NDArray]:
    """The two DN stacks, checked: 6 bands each, uint16, not empty, the 20 m grid twice the 40 m one."""
    tir = _array(dn_b7_b12, "dn_b7_b12", ndim=3, kind="u", shape=(6, None, None))
    height, width = tir.shape[1:]
    vnir = _array(dn_b1_b6, "dn_b1_b6", ndim=3, kind="u", shape=(6, 2 * height, 2 * width))
    for name, arr in (("dn_b1_b6", vnir), ("dn_b7_b12", tir)):
        if arr.dtype != np.uint16:
            raise ValueError(f"{name} must be uint16 DN, got {arr.dtype}")
        if arr.size == 0:
            raise ValueError(f"{name} is empty")
    return vnir, tir


def _north_up_georeference(crs: str | CRS, transform: Affine) -> CRS:
    """The CRS of ``crs``, with ``transform`` checked to be a north-up affine without rotation (``ValueError``)."""
    try:
        crs_obj = CRS.from_user_input(crs)
    except CRSError as exc:  # rasterio raises CRSError (not a ValueError) on unknown input
        raise ValueError(f"crs {crs!r} is not a usable CRS: {exc}") from None
    if not isinstance(transform, Affine):
        raise ValueError(f"transform must be an affine.Affine, got {type(transform).__name__}")
    if transform.b != 0 or transform.d != 0 or not transform.a > 0 or not transform.e < 0:
        raise ValueError(f"transform must be north-up without rotation (a > 0, e < 0, b = d = 0), got {transform!r}")
    return crs_obj


def _tar_member_normaliser(mtime: int) -> Callable[[tarfile.TarInfo], tarfile.TarInfo]:
    """A ``tarfile`` filter giving every member the same owner, mode and time (s): archives are deterministic."""
    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o644
        info.mtime = mtime
        return info

    return normalise


# --------------------------------------------------------------------------------------------- ERA5 (CDS NetCDF)
def _era5_grid(tcwv_kg_m2: ArrayLike, times: ArrayLike, lats: ArrayLike, lons: ArrayLike
               ) -> tuple[NDArray[np.float64], NDArray[np.datetime64], NDArray[np.float64], NDArray[np.float64]]:
    data = _array(tcwv_kg_m2, "tcwv_kg_m2", ndim=3, kind="fiu").astype(np.float64)
    nt, ny, nx = data.shape
    t = _times(times, "times", nt)
    lat = _array(lats, "lats", ndim=1, kind="fiu", shape=(ny,)).astype(np.float64)
    lon = _array(lons, "lons", ndim=1, kind="fiu", shape=(nx,)).astype(np.float64)
    if not np.all(np.isfinite(lat)) or np.abs(lat).max() > 90:
        raise ValueError("lats must be finite and within [-90, 90]")
    if not np.all(np.isfinite(lon)) or lon.min() < -180 or lon.max() > 360:
        raise ValueError("lons must be finite and within [-180, 360]")
    if nx > 1 and not np.all(np.diff(lon) > 0):
        raise ValueError("lons must be strictly increasing")
    if ny > 1:
        step = np.diff(lat)
        if np.all(step > 0):  # CDS writes north -> south: flip south -> north input with its data
            lat, data = lat[::-1], data[:, ::-1, :]
        elif not np.all(step < 0):
            raise ValueError("lats must be strictly monotonic")
    finite = data[np.isfinite(data)]
    if finite.size and finite.min() < 0:
        raise ValueError(f"tcwv_kg_m2 must be >= 0 kg m-2, got minimum {finite.min()}")
    return data, t, lat, lon


def _era5_new(data: NDArray, t: NDArray, lat: NDArray, lon: NDArray) -> tuple[xr.Dataset, dict[str, Any]]:
    seconds = ((t - np.datetime64("1970-01-01", "ns")) // np.timedelta64(1, "s")).astype(np.int64)
    ds = xr.Dataset(
        {"tcwv": (("valid_time", "latitude", "longitude"), data.astype(np.float32), {
            "GRIB_paramId": 137, "GRIB_dataType": "an", "GRIB_numberOfPoints": int(lat.size * lon.size),
            "GRIB_typeOfLevel": "surface", "GRIB_stepUnits": 1, "GRIB_stepType": "instant",
            "GRIB_gridType": "regular_ll", "GRIB_units": "kg m**-2", "GRIB_name": _CDS_LONG_NAME,
            "GRIB_shortName": "tcwv", "GRIB_cfVarName": "tcwv",
            "long_name": _CDS_LONG_NAME, "units": "kg m**-2", "standard_name": _CDS_STANDARD_NAME,
        })},
        coords={
            "number": ((), np.int64(0), {"long_name": "ensemble member numerical id", "units": "1",
                                         "standard_name": "realization"}),
            "valid_time": ("valid_time", seconds, {"long_name": "time", "standard_name": "time",
                                                   "units": "seconds since 1970-01-01",
                                                   "calendar": "proleptic_gregorian"}),
            "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude",
                                           "long_name": "latitude", "stored_direction": "decreasing"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude",
                                             "long_name": "longitude"}),
            "expver": ("valid_time", np.array(["0001"] * t.size, dtype=object),
                       {"long_name": "model experiment version"}),
        },
        attrs={"GRIB_centre": "ecmf", "GRIB_centreDescription": _ECMWF, "GRIB_subCentre": 0,
               "Conventions": "CF-1.7", "institution": _ECMWF,
               "history": "written by sftl_dask.testbed.formats in the layout of CDS NetCDF (2024 onwards)"},
    )
    encoding = {"tcwv": {"zlib": True, "complevel": 1, "_FillValue": np.float32(np.nan)},
                "latitude": {"_FillValue": None}, "longitude": {"_FillValue": None},
                "valid_time": {"_FillValue": None}}
    return ds, {"engine": "h5netcdf", "encoding": encoding}


def _era5_old(data: NDArray, t: NDArray, lat: NDArray, lon: NDArray) -> tuple[xr.Dataset, dict[str, Any]]:
    delta = t - np.datetime64("1900-01-01", "ns")
    if np.any(delta % np.timedelta64(1, "h")):
        raise ValueError("times must fall on whole hours for style='old' (hours since 1900-01-01)")
    hours = (delta // np.timedelta64(1, "h")).astype(np.int32)
    finite = data[np.isfinite(data)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    # grib_to_netcdf packing: the range spread over the int16 codes except the fill value
    scale = (vmax - vmin) / (2 * 32766) if vmax > vmin else 1.0
    offset = (vmax + vmin) / 2
    ds = xr.Dataset(
        {"tcwv": (("time", "latitude", "longitude"), data,
                  {"units": "kg m**-2", "long_name": "Total column water vapour",
                   "standard_name": _CDS_STANDARD_NAME})},
        coords={
            "longitude": ("longitude", lon.astype(np.float32), {"units": "degrees_east", "long_name": "longitude"}),
            "latitude": ("latitude", lat.astype(np.float32), {"units": "degrees_north", "long_name": "latitude"}),
            "time": ("time", hours, {"units": "hours since 1900-01-01 00:00:00.0", "long_name": "time",
                                     "calendar": "gregorian"}),
        },
        attrs={"Conventions": "CF-1.6",
               "history": "written by sftl_dask.testbed.formats in the layout of grib_to_netcdf (CDS before 2024)"},
    )
    encoding = {"tcwv": {"dtype": "int16", "scale_factor": scale, "add_offset": offset,
                         "_FillValue": np.int16(_ERA5_FILL), "missing_value": np.int16(_ERA5_FILL)},
                "latitude": {"_FillValue": None}, "longitude": {"_FillValue": None}, "time": {"_FillValue": None}}
    return ds, {"engine": "scipy", "format": "NETCDF3_64BIT", "encoding": encoding}


def write_era5_tcwv(
    path: str | os.PathLike[str],
    tcwv_kg_m2: ArrayLike,
    times: ArrayLike,
    lats: ArrayLike,
    lons: ArrayLike,
    *,
    style: Literal["new", "old"] = "new",
) -> Path:
    """Write ERA5 total column water vapour as the Copernicus CDS delivers it in NetCDF.

    ``style="new"`` (CDS from 2024): NetCDF4/HDF5 (h5netcdf), dims ``valid_time, latitude, longitude``,
    ``tcwv`` float32 (zlib, NaN fill) with the CDS/cfgrib attributes, ``valid_time`` int64 seconds since
    1970-01-01 (proleptic_gregorian), scalar ``number`` and per-time ``expver`` coordinates, global
    ``Conventions = "CF-1.7"``, ``institution`` ECMWF.

    ``style="old"`` (grib_to_netcdf, CDS before 2024): NetCDF3 64-bit offset, dims ``time, latitude,
    longitude``, ``tcwv`` int16 packed with ``scale_factor``/``add_offset`` over the data range,
    ``_FillValue = missing_value = -32767``, ``time`` int32 "hours since 1900-01-01 00:00:00.0"
    (gregorian), float32 coordinates, ``Conventions = "CF-1.6"``. Packing error <= scale_factor / 2.

    Parameters
    ----------
    path : path
        Output file (parent folders are created).
    tcwv_kg_m2 : array, shape (time, lat, lon)
        Total column water vapour (kg m-2, >= 0; NaN for missing).
    times : array of datetime64
        Valid times (UTC, naive or tz-aware), strictly increasing; whole hours for ``style="old"``.
    lats : array, shape (lat,)
        Latitudes (deg N), strictly monotonic; written north -> south (flipped with the data if needed).
    lons : array, shape (lon,)
        Longitudes (deg E), strictly increasing, written as given (0..360 or -180..180).
    style : {"new", "old"}
        Which CDS layout to write.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        On a wrong shape, dtype, order or range of an argument, or an unknown ``style``.
    """
    if style not in ("new", "old"):
        raise ValueError(f"style must be 'new' or 'old', got {style!r}")
    data, t, lat, lon = _era5_grid(tcwv_kg_m2, times, lats, lons)
    ds, kwargs = (_era5_new if style == "new" else _era5_old)(data, t, lat, lon)
    final = Path(path)
    with _atomic(final) as tmp:
        ds.to_netcdf(tmp, **kwargs)
    return final


# --------------------------------------------------------------------------------------------- ASTER GED v3
def ged_tile_name(lat0: int, lon0: int) -> str:
    """ASTER GED v3 tile file name for the 1 x 1 deg tile whose north-west corner is ``(lat0, lon0)``.

    The sign is followed by the zero-padded absolute value (2 digits of latitude, 3 of longitude):
    ``ged_tile_name(40, 115) == "AG100.v003.40.115.0001.h5"``, ``ged_tile_name(-1, -37) ==
    "AG100.v003.-01.-037.0001.h5"``. The tile covers latitudes ``lat0 - 1 .. lat0`` and longitudes
    ``lon0 .. lon0 + 1`` (the convention of public GED tile finders: tile latitude = floor(lat) + 1).

    Raises
    ------
    ValueError
        If ``lat0`` is not an integer in [-89, 90] or ``lon0`` not an integer in [-180, 179].
    """
    la = _integer(lat0, "lat0", -89, 90)
    lo = _integer(lon0, "lon0", -180, 179)
    return f"AG100.v003.{'-' if la < 0 else ''}{abs(la):02d}.{'-' if lo < 0 else ''}{abs(lo):03d}.0001.h5"


def _scaled_int16(values: NDArray, scale: float, name: str) -> NDArray[np.int16]:
    """round(values / scale) as int16, NaN -> -9999."""
    v = values.astype(np.float64)
    finite = np.isfinite(v)
    q = np.round(v[finite] / scale)
    if q.size and (q.min() < -32767 or q.max() > 32767 or np.any(q == _GED_FILL)):
        raise ValueError(f"{name} has values outside what int16 with scale {scale} can hold "
                         f"(range {v[finite].min()} .. {v[finite].max()})")
    out = np.full(v.shape, _GED_FILL, dtype=np.int16)
    out[finite] = q.astype(np.int16)
    return out


def write_ged_tile(
    path_dir: str | os.PathLike[str],
    lat0: int,
    lon0: int,
    emis_mean: ArrayLike,
    emis_sdev: ArrayLike,
    ndvi_mean: ArrayLike,
    ndvi_sdev: ArrayLike,
    land_water: ArrayLike,
    lat: ArrayLike,
    lon: ArrayLike,
    elevation_m: ArrayLike,
) -> Path:
    """Write one ASTER GED v3 (AG100) tile ``<path_dir>/AG100.v003.<lat0>.<lon0>.0001.h5``.

    The tile is named by its north-west corner (see :func:`ged_tile_name`); readers should rely on the
    geolocation arrays, not on the name. Datasets (gzip level 4, shuffle):

    ========================= ======= ============ ====================================================
    path                      dtype   scale        content
    ========================= ======= ============ ====================================================
    ``/Emissivity/Mean``      int16   0.001        (5, N, N) ASTER b10-b14 emissivity, fill -9999
    ``/Emissivity/SDev``      int16   0.001        (5, N, N) its standard deviation, fill -9999
    ``/NDVI/Mean``            int16   0.01         (N, N) NDVI, fill -9999
    ``/NDVI/SDev``            int16   0.01         (N, N) fill -9999
    ``/Geolocation/Latitude`` float64 --           (N, N) pixel-centre latitude (deg N)
    ``/Geolocation/Longitude`` float64 --          (N, N) pixel-centre longitude (deg E)
    ``/Land Water Map/LWmap`` uint8   --           (N, N) land/water code as given
    ``/ASTER GDEM/ASTGDEM``   int16   1            (N, N) elevation (m), fill -9999
    ========================= ======= ============ ====================================================

    Scaled datasets carry ``scale_factor``, ``add_offset`` (0), ``_FillValue``, ``units`` and
    ``long_name`` attributes: value = stored * scale_factor + add_offset. Geolocation is float64 here for
    simplicity (the distributed product's storage type may differ; readers should cast to float).

    Parameters
    ----------
    path_dir : path
        Folder to write into (created if missing).
    lat0, lon0 : int
        North-west corner of the tile (deg).
    emis_mean, emis_sdev : array, shape (5, N, N)
        Emissivity of ASTER bands 10-14 and its standard deviation (unitless; NaN = missing).
    ndvi_mean, ndvi_sdev : array, shape (N, N)
        NDVI and its standard deviation (unitless; NaN = missing).
    land_water : integer array, shape (N, N)
        Land/water code, 0-255 (stored unchanged; the caller documents its convention).
    lat, lon : array, shape (N, N)
        Pixel-centre latitude and longitude (deg), finite and inside the tile.
    elevation_m : array, shape (N, N)
        Elevation (m), rounded to whole metres; NaN = missing.

    Returns
    -------
    pathlib.Path
        The tile path.

    Raises
    ------
    ValueError
        On a wrong shape or dtype, values that int16 cannot hold after scaling, geolocation outside the
        tile, or ``land_water`` outside 0-255 (the message names the argument).
    """
    name = ged_tile_name(lat0, lon0)
    lat_a = _array(lat, "lat", ndim=2, kind="f")
    n_y, n_x = lat_a.shape
    lon_a = _array(lon, "lon", ndim=2, kind="f", shape=(n_y, n_x))
    em = _array(emis_mean, "emis_mean", ndim=3, kind="fiu", shape=(5, n_y, n_x))
    es = _array(emis_sdev, "emis_sdev", ndim=3, kind="fiu", shape=(5, n_y, n_x))
    nm = _array(ndvi_mean, "ndvi_mean", ndim=2, kind="fiu", shape=(n_y, n_x))
    ns = _array(ndvi_sdev, "ndvi_sdev", ndim=2, kind="fiu", shape=(n_y, n_x))
    lw = _array(land_water, "land_water", ndim=2, kind="iub", shape=(n_y, n_x))
    el = _array(elevation_m, "elevation_m", ndim=2, kind="fiu", shape=(n_y, n_x))
    _check_ged_extent(lat_a, lon_a, lw, lat0, lon0)
    stored = _ged_scaled(em, es, nm, ns, el)
    final = Path(path_dir) / name
    _write_ged_h5(final, stored, lat_a, lon_a, lw)
    return final


def _check_ged_extent(lat_a: NDArray, lon_a: NDArray, lw: NDArray, lat0: int, lon0: int) -> None:
    """Refuse geolocation (deg) outside the tile named by its NW corner, or land/water codes outside 0-255."""
    tol = 1e-9
    if not np.all(np.isfinite(lat_a)) or lat_a.min() < lat0 - 1 - tol or lat_a.max() > lat0 + tol:
        raise ValueError(f"lat must be finite and within the tile [{lat0 - 1}, {lat0}] (named by its NW corner)")
    if not np.all(np.isfinite(lon_a)) or lon_a.min() < lon0 - tol or lon_a.max() > lon0 + 1 + tol:
        raise ValueError(f"lon must be finite and within the tile [{lon0}, {lon0 + 1}] (named by its NW corner)")
    if lw.size and (lw.min() < 0 or lw.max() > 255):
        raise ValueError("land_water must hold codes 0-255")


def _ged_scaled(em: NDArray, es: NDArray, nm: NDArray, ns: NDArray,
                el: NDArray) -> dict[tuple[str, str], tuple[NDArray, float, str, str]]:
    """The tile's scaled int16 datasets: (group, name) -> (data, scale, units, long name)."""
    return {
        ("Emissivity", "Mean"): (_scaled_int16(em, 0.001, "emis_mean"), 0.001, "1",
                                 "mean emissivity, ASTER bands 10-14"),
        ("Emissivity", "SDev"): (_scaled_int16(es, 0.001, "emis_sdev"), 0.001, "1",
                                 "standard deviation of emissivity, ASTER bands 10-14"),
        ("NDVI", "Mean"): (_scaled_int16(nm, 0.01, "ndvi_mean"), 0.01, "1", "mean NDVI"),
        ("NDVI", "SDev"): (_scaled_int16(ns, 0.01, "ndvi_sdev"), 0.01, "1", "standard deviation of NDVI"),
        ("ASTER GDEM", "ASTGDEM"): (_scaled_int16(el, 1.0, "elevation_m"), 1.0, "m", "ASTER GDEM elevation"),
    }


def _write_ged_h5(final: Path, stored: Mapping[tuple[str, str], tuple[NDArray, float, str, str]],
                  lat_a: NDArray, lon_a: NDArray, lw: NDArray) -> None:
    """Write a GED tile's HDF5 file atomically: the scaled datasets ``stored`` ((group, name) -> (int16 data,
    scale, units, long name)), the geolocation (deg) and the land/water map."""
    comp = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    with _atomic(final) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs["history"] = "written by sftl_dask.testbed.formats in the layout of ASTER GED v3 (AG100)"
        for (group, ds_name), (data, scale, units, long_name) in stored.items():
            ds = h5.require_group(group).create_dataset(ds_name, data=data, fillvalue=_GED_FILL, **comp)
            ds.attrs.update({"scale_factor": np.float64(scale), "add_offset": np.float64(0.0),
                             "_FillValue": np.int16(_GED_FILL), "units": units, "long_name": long_name,
                             "Description": long_name})
        h5["Emissivity/Mean"].attrs["band_names"] = ",".join(_ASTER_BANDS)
        h5["Emissivity/Mean"].attrs["wavelength_um"] = np.array(_ASTER_CENTRES_UM)
        geo = h5.require_group("Geolocation")
        for ds_name, data, units in (("Latitude", lat_a, "degrees_north"), ("Longitude", lon_a, "degrees_east")):
            ds = geo.create_dataset(ds_name, data=data.astype(np.float64), **comp)
            ds.attrs.update({"units": units, "long_name": f"pixel-centre {ds_name.lower()}"})
        ds = h5.require_group("Land Water Map").create_dataset("LWmap", data=lw.astype(np.uint8), **comp)
        ds.attrs.update({"units": "1", "long_name": "land water map"})


# --------------------------------------------------------------------------------------------- in situ
def _site_value(site: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in site:
        raise ValueError(f"{where}[{key!r}] is required")
    value = site[key]
    if key in ("lon",):
        return _finite(value, f"{where}[{key!r}]", -180.0, 180.0)
    if key in ("lat",):
        return _finite(value, f"{where}[{key!r}]", -90.0, 90.0)
    if key == "elevation_m":
        return _finite(value, f"{where}[{key!r}]", -500.0, 9000.0)
    if key == "broadband_emissivity":
        return _finite(value, f"{where}[{key!r}]", 0.5, 1.0)
    return _text(value, f"{where}[{key!r}]")


def _insitu_radiation(lw_up_w_m2: ArrayLike, lw_down_w_m2: ArrayLike, flags: ArrayLike,
                      n: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray]:
    """The ``n`` rows of upwelling and downwelling longwave (W m-2) and their flags, checked (``ValueError``)."""
    up = _array(lw_up_w_m2, "lw_up_w_m2", ndim=1, kind="fiu", shape=(n,)).astype(np.float64)
    down = _array(lw_down_w_m2, "lw_down_w_m2", ndim=1, kind="fiu", shape=(n,)).astype(np.float64)
    qc = _array(flags, "flags", ndim=1, kind="iu", shape=(n,))
    if not np.isin(qc, (0, 1, 2)).all():
        raise ValueError("flags must be 0 (good), 1 (suspect) or 2 (bad)")
    for name, arr in (("lw_up_w_m2", up), ("lw_down_w_m2", down)):
        # rows flagged bad may hold what loggers write there (-999, 0, spikes); others must be physical
        if np.isinf(arr).any() or np.any((arr < 0) & (qc != 2)):
            raise ValueError(f"{name} must be finite and >= 0 W m-2, or NaN (gap); negative only on rows flagged 2")
    return up, down, qc


def write_insitu_csv(
    path: str | os.PathLike[str],
    site: Mapping[str, Any],
    times_beijing: ArrayLike,
    lw_up_w_m2: ArrayLike,
    lw_down_w_m2: ArrayLike,
    flags: ArrayLike,
    *,
    sensor_ids: Sequence[str] | None = None,
) -> Path:
    """Write one station-style radiometer CSV.

    Layout: ``#`` header lines ``# <key>: <value>`` with the site metadata (id, name, region, lon, lat,
    elevation_m, land_cover, instrument, sensor_id, broadband_emissivity), ``# timezone: UTC+8 (Beijing
    time)`` and a column legend; then a CSV table with columns

    * ``TIMESTAMP``: "YYYY-MM-DD HH:MM:SS", Beijing time (UTC+8), the logger's time stamp;
    * ``ULR_Cor``, ``DLR_Cor``: upwelling / downwelling longwave (W m-2, 2 decimals; empty = gap);
    * ``QC_flag``: 0 good, 1 suspect, 2 bad;
    * ``sensor_id``: the radiometer's id (``site['sensor_id']`` unless ``sensor_ids`` is given per row).

    Read it back with ``pandas.read_csv(path, comment="#")``.

    Parameters
    ----------
    path : path
        Output file (parent folders are created).
    site : mapping
        Site metadata with at least the keys above (extra keys are ignored);
        ``broadband_emissivity`` in [0.5, 1].
    times_beijing : array of datetime64
        Time stamps (Beijing time, naive), strictly increasing, whole seconds (10-min steps usually).
    lw_up_w_m2, lw_down_w_m2 : array
        Longwave radiation (W m-2), NaN for gaps (written as empty cells). Values must be >= 0 except on
        rows flagged 2 (bad), which may hold logger junk such as -999; infinities are refused.
    flags : integer array
        Quality flags 0, 1 or 2.
    sensor_ids : sequence of str, optional
        Per-row sensor ids (e.g. after an instrument swap).

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        On a missing or invalid site field, mismatched lengths, non-increasing times, negative radiation
        on a row not flagged bad, or flags outside {0, 1, 2} (the message names the argument).
    """
    header = {k: _site_value(site, k, "site") for k in _INSITU_SITE_KEYS}
    t = _times(times_beijing, "times_beijing")
    n = t.size
    up, down, qc = _insitu_radiation(lw_up_w_m2, lw_down_w_m2, flags, n)
    if np.any(t != t.astype("datetime64[s]")):
        raise ValueError("times_beijing must be whole seconds")
    if sensor_ids is None:
        ids = [header["sensor_id"]] * n
    else:
        ids = [_text(s, f"sensor_ids[{i}]") for i, s in enumerate(sensor_ids)]
        if len(ids) != n:
            raise ValueError(f"sensor_ids must have {n} entries, got {len(ids)}")
    lines = [f"# {k}: {_fmt_float(v) if isinstance(v, float) else v}" for k, v in header.items()]
    lines += [
        "# timezone: UTC+8 (Beijing time)",
        "# columns: TIMESTAMP (Beijing time), ULR_Cor (upwelling longwave, W m-2), "
        "DLR_Cor (downwelling longwave, W m-2), QC_flag (0 good, 1 suspect, 2 bad), sensor_id",
        "# missing values: empty cells",
    ]
    final = Path(path)
    with _atomic(final) as tmp, open(tmp, "w", newline="") as fh:
        fh.write("\n".join(lines) + "\n")
        _write_insitu_table(fh, t, up, down, qc, ids)
    return final


def _write_insitu_table(fh: Any, t: NDArray[np.datetime64], up: NDArray[np.float64], down: NDArray[np.float64],
                        qc: NDArray, ids: list[str]) -> None:
    """The radiometer table, header row first, with 2 decimals and gaps as empty cells.

    Formatted column by column and written by the csv module (which pandas' to_csv uses, so it quotes alike):
    the bytes of ``to_csv(float_format="%.2f", na_rep="")``, whose formatting value by value took 0.6 s of a
    3-year file (157,680 rows; 0.2 s now), 11 of the 26 s a small testbed took to build.
    """
    stamps = np.datetime_as_string(t.astype("datetime64[s]"), unit="s")
    rows = zip([d.replace("T", " ") for d in stamps.tolist()], _fixed2(up), _fixed2(down),
               map(str, qc.astype(np.int64).tolist()), ids, strict=True)
    out = csv.writer(fh, lineterminator="\n")
    out.writerow(("TIMESTAMP", "ULR_Cor", "DLR_Cor", "QC_flag", "sensor_id"))
    if any(c in i for i in set(ids) for c in ',"'):
        out.writerows(rows)  # ids the csv module quotes
    else:  # nothing to quote: the same bytes, joined (0.03 s against writerows' 0.1 s a file)
        fh.write("".join(f"{line}\n" for line in map(",".join, rows)))


def _fixed2(values: NDArray[np.float64]) -> list[str]:
    """Each value with 2 decimals (``"%.2f"``), NaN as an empty cell."""
    return ["" if v != v else f"{v:.2f}" for v in values.tolist()]


def write_sites_csv(path: str | os.PathLike[str], sites: Sequence[Mapping[str, Any]]) -> Path:
    """Write the site table ``sites.csv`` with the columns of :data:`SITE_COLUMNS`.

    Parameters
    ----------
    path : path
        Output file (parent folders are created).
    sites : sequence of mappings
        One mapping per site with at least the keys of :data:`SITE_COLUMNS` (lon deg E, lat deg N,
        elevation_m m, broadband_emissivity unitless); extra keys are ignored. Ids must be unique.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If ``sites`` is empty, a field is missing or invalid (named as ``sites[i]['key']``), or ids repeat.
    """
    if isinstance(sites, Mapping | str) or len(sites) == 0:
        raise ValueError("sites must be a non-empty sequence of site mappings")
    rows = [{k: _site_value(s, k, f"sites[{i}]") for k in SITE_COLUMNS} for i, s in enumerate(sites)]
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"sites have repeated ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    final = Path(path)
    with _atomic(final) as tmp:
        pd.DataFrame(rows, columns=list(SITE_COLUMNS)).to_csv(tmp, index=False, lineterminator="\n")
    return final
