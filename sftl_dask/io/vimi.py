"""Reader of GF5-02 VIMI Level-1 products: brightness temperature, NDVI and view zenith on the 40 m grid.

A product is a ``.tar.gz`` / ``.tgz`` / ``.tar`` (any case), or the folder it was extracted to, holding
``<stem>_B1_B6.tif(f)`` (B1-B6, DN, 20 m), ``<stem>_B7_B12.tif(f)`` (B7-B12, DN, 40 m) and
``<stem>.xml`` (calibration, angles, time), at its root or inside one top-level folder, names matched
case-insensitively; RPC sidecars ``<raster>.rpb`` / ``<raster>_rpc.txt`` are picked up when present.
The layout is data, not code: naming regex, member names, band -> file / band index, the XML fields
with their types, the time zone of the XML times and the calibration order all come from
``sftl_dask/data/vimi_l1.json`` (satpy's "instrument as data"), so a product variant is supported by
editing that table (``docs/products.md``).

Reading never extracts to disk. Before GDAL sees an archive, one pass with :mod:`tarfile` (through
:mod:`gzip` for ``.tar.gz``) reads the member headers and the small text members (XML, RPCs): members
whose path is absolute or contains ``..``, links and devices are refused, and so is a truncated or
corrupt archive (a member running past the end, bytes after the last header that are not an
end-of-archive block, or a gzip stream that ends early or fails its CRC). The pass is cached per
process, keyed by path, size and mtime. The GeoTIFF members are then read by GDAL as byte ranges:
``/vsisubfile/<offset>_<size>,<archive>`` for a tar (GDAL's own ``/vsitar/`` does not see PAX long
names, which Python's tarfile writes by default) and ``/vsisubfile/...,/vsigzip/<archive>`` for gzip,
with ``CPL_VSIL_GZIP_WRITE_PROPERTIES=NO`` so GDAL writes no ``.properties`` file beside the archive.

How to read gzip was measured (2 shared cores, GDAL 3.10, rasterio 1.4): 16 random 512 x 512 windows
of one band of a 1500 x 1500 px 6-band uint16 GeoTIFF member (uncompressed, striped; 27 MB, gzip
16 MB) cost 0.019 s through a tar and 0.29 s through gzip with one open handle (0.067 vs 0.49 s
reopening per window), and reading the whole member 0.28 vs 0.41 s; the inflate of the whole archive
in Python (the "one sequential pass into memory" option) 0.52 s. With DEFLATE-tiled members the gzip
layer adds little (0.15 vs 0.22 s for the 16 windows). On a full product (TIR 1500 x 1500, VNIR
3000 x 3000, uncompressed members, 135 MB tar / 85 MB gzip): validation pass 0.01 s (tar) vs 2.6 s
(gzip: the whole stream inflated once, which is what proves it complete), then four BT and NDVI in
512 x 512 Dask chunks 4.2 vs 4.9 s. Chosen: GDAL's ``/vsigzip/`` random access (it keeps snapshots of
the inflate state, so a seek re-inflates from the nearest snapshot, not from the start): the windowed
overhead is ~1.2x for a full chunked read, the reader stays lazy and picklable for distributed
workers, and no process holds a whole product (~135 MB) in memory as the sequential-pass option would.
For many small random windows of one ``.tar.gz``, read whole rows (or use ``chunks=None``).

Metadata as delivered (the GF5-01 VIMS field list: no CenterTime, ESUN, EarthSunDistance or
SatelliteAltitude): the scene time is CenterTime when present, else the midpoint of StartTime and
EndTime, in the layout's time zone (UTC by default); calibration from GAINS/OFFSETS of the XML, else a
user's table (``calibration=PATH``), else the packaged ``vimi_calibration.csv``; ESUN from the XML, else
computed from the band's response and the packaged ASTM E-490 spectrum; the Earth-Sun distance from the
XML, else from the date. Each source is an attribute of the opened Dataset. GeoTIFFs without CRS and
geotransform are in sensor geometry (``geometry = "sensor"``) and must carry RPCs (a sidecar member or
RPC tags); their pixels are read as they are, on the image grid (orthorectification is ingest's work).

The opened :class:`xarray.Dataset` is lazy: each variable is a small backend array that reads one
window of DN and calibrates it (as rioxarray's and xarray's own backends do), so the Dask graph is one
read-and-calibrate task per chunk and variable; the Planck table of a band is built once per process.

Variables (dims ``(y, x)``, float32, the B7_B12 file's 40 m grid):

* ``bt_08_20``, ``bt_08_63``, ``bt_10_80``, ``bt_11_95`` (K): radiance = gain * DN + offset (W m-2 sr-1
  um-1; see :attr:`VimiProduct.calibration`), then the band-effective inverse Planck of the physics core.
  NaN where DN is the nodata value or the radiance lies outside the Planck table (150-400 K).
* ``ndvi`` (1): top-of-atmosphere reflectance rho = pi L d^2 / (ESUN cos(theta_s)) of the red and NIR
  bands at 20 m, averaged over the 2 x 2 block of each 40 m pixel, then (nir - red) / (nir + red).
  NaN where any of the four 20 m pixels is nodata, or at night (cos(theta_s) <= 0).
* ``red`` (1): the red TOA reflectance of the same 2 x 2 mean; ``ndsi`` (1): (B2 - B5) / (B2 + B5) of the green
  (0.56 um) and SWIR (1.65 um) TOA reflectances, likewise (the cloud mask's brightness and snow tests).
* ``vza`` (degree): view zenith angle per pixel. In sensor geometry from the RPC line of sight of each pixel
  (:meth:`VimiProduct.rpc`, :func:`sftl_dask.io.ortho.sensor_vza`); for a map-projected product (no RPCs)
  from the XML's scene-centre angles on the north-up grid, see :func:`view_zenith` for the convention.

Every problem with a product raises :class:`VimiFormatError` (a ``ValueError``) with a one-line message
that starts with the product path.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import warnings
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np
import pandas as pd
import rasterio
import xarray as xr
from affine import Affine
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from xarray.backends import BackendArray, BackendEntrypoint
from xarray.core import indexing

from sftl_dask.io.ortho import sensor_vza
from sftl_dask.io.rpc import Rpc, RpcFormatError, from_rasterio, parse_rpb, parse_rpc_txt
from sftl_dask.physics.channels import Channel, reflective_bands, thermal_channels
from sftl_dask.physics.planck import BandPlanck, band_planck
from sftl_dask.physics.solar import band_solar_irradiance, earth_sun_distance_au

__all__ = [
    "VimiBackendEntrypoint",
    "VimiFormatError",
    "VimiProduct",
    "find_products",
    "open_vimi",
    "product_checksum",
    "view_zenith",
]

_DEFAULT_CHUNK = 512
_MAX_XML_BYTES = 16 * 2**20  # a metadata file larger than this is not a VIMI XML
_TAR_BLOCK = 512
_HASH_BLOCK = 2**20
_TEXT_SUFFIXES = (".xml", ".rpb", ".txt")  # members read whole during the archive scan (metadata, RPCs)
_RPC_TAGS = " (RPC tags)"  # how a raster whose RPCs are TIFF tags is named as its RPC member


class VimiFormatError(ValueError):
    """A VIMI L1 product that cannot be read as described by ``vimi_l1.json``.

    The message is one line and starts with the product path.
    """


# --------------------------------------------------------------------------------------------- the format table
@lru_cache(maxsize=1)
def _format() -> dict[str, Any]:
    """The VIMI L1 product description (``sftl_dask/data/vimi_l1.json``), loaded once."""
    return json.loads(resources.files("sftl_dask.data").joinpath("vimi_l1.json").read_text())


@lru_cache(maxsize=1)
def _stem_re() -> re.Pattern[str]:
    return re.compile(_format()["archive"]["stem_regex"])


def _band(name: str) -> dict[str, Any]:
    for b in _format()["bands"]:
        if b["name"] == name:
            return b
    raise KeyError(f"band {name!r} is not in vimi_l1.json")


def _thermal_bands() -> list[dict[str, Any]]:
    """Bands of kind ``thermal`` with an output ``variable`` (B9-B12 -> bt_*)."""
    return [b for b in _format()["bands"] if b.get("kind") == "thermal" and b.get("variable")]


def _ndvi_bands() -> tuple[dict[str, Any], dict[str, Any]]:
    """The red and NIR bands, named by the channel table (``vimi_channels.json``: red = B3, NIR = B4)."""
    refl = reflective_bands()
    return _band(refl["red"]["band"]), _band(refl["nir"]["band"])


@cache
def _planck(channel_name: str) -> BandPlanck:
    """The physics core's band Planck of one thermal channel; built once per process (per Dask worker)."""
    for ch, bp in zip(thermal_channels(), band_planck(), strict=True):
        if ch.name == channel_name:
            return bp
    raise KeyError(f"no thermal channel named {channel_name!r} in the physics core")


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split())


# --------------------------------------------------------------------------------------------- product discovery
def _split_name(path: Path) -> tuple[str, str] | None:
    """(stem, extension) of an archive name, extensions matched case-insensitively; None if none matches."""
    lower = path.name.lower()
    for ext in sorted(_format()["archive"]["extensions"], key=len, reverse=True):
        if lower.endswith(ext.lower()):
            return path.name[: -len(ext)], path.name[-len(ext):]
    return None


def _is_gzip_name(path: Path) -> bool:
    return path.name.lower().endswith(tuple(e.lower() for e in _format()["archive"]["gzip_extensions"]))


def _product_stem(path: Path) -> str | None:
    """The product stem of ``path`` (an archive or a folder) if its name matches the naming regex, else None."""
    if path.is_dir():
        name: str | None = path.name
    else:
        split = _split_name(path)
        name = split[0] if split else None
    return name if name is not None and _stem_re().match(name) else None


def find_products(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into VIMI L1 products (archives and extracted product folders).

    A path that is itself a product is kept; any other folder is searched recursively for archives
    (``.tar.gz``, ``.tgz``, ``.tar``, any case) and folders whose names match the product naming of
    ``vimi_l1.json`` (product folders are not searched further; hidden or partial files such as
    ``.<stem>.tar.part`` never match).

    Parameters
    ----------
    paths : path or iterable of paths
        Product files, product folders, or folders holding products (at any depth).

    Returns
    -------
    list of pathlib.Path
        Distinct products, sorted by path.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    VimiFormatError
        If a path given explicitly is a file that is not a product (its name does not match).
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    found: set[Path] = set()
    for item in items:
        p = Path(item)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or folder")
        if _product_stem(p) is not None:
            found.add(p)
        elif p.is_dir():
            for root, dirs, files in os.walk(p):
                base = Path(root)
                for d in list(dirs):
                    if _stem_re().match(d):
                        found.add(base / d)
                        dirs.remove(d)
                for f in files:
                    if _product_stem(base / f) is not None:
                        found.add(base / f)
        else:
            raise VimiFormatError(f"{p}: not a VIMI L1 product (the name does not match "
                                  f"{_format()['archive']['stem_regex']} + {_format()['archive']['extensions']})")
    return sorted(found)


def product_checksum(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a product, streamed.

    For an archive (``.tar``, ``.tar.gz``, ``.tgz``) it is the hash of the file's bytes; for an
    extracted folder, the hash of its members' bytes concatenated in the fixed order of
    ``vimi_l1.json`` (B1_B6, B7_B12, metadata, then any RPC members). The two forms of the same
    product therefore have different checksums.

    Raises
    ------
    VimiFormatError
        If the product's name or members are not valid (see :class:`VimiProduct`).
    FileNotFoundError
        If ``path`` does not exist.
    """
    product = VimiProduct(path)
    h = hashlib.sha256()
    members = [*product.members.values(), *product.rpc_members.values()]
    files = [product.path] if product.is_archive else [product.path / m for m in members]
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(_HASH_BLOCK):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- archive validation
def _unsafe_member(info: tarfile.TarInfo) -> str | None:
    """Why a tar member is refused, or None if it is safe to read."""
    name = info.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or PurePosixPath(name).is_absolute():
        return "has an absolute path (escapes the archive)"
    if ".." in parts:
        return "has a '..' path component (escapes the archive)"
    if info.issym() or info.islnk():
        return f"is a {'symbolic' if info.issym() else 'hard'} link (to {info.linkname!r})"
    if info.ischr() or info.isblk() or info.isfifo():
        return "is a device or FIFO"
    if not (info.isfile() or info.isdir()):
        return f"has an unsupported member type {info.type!r}"
    return None


@dataclass(frozen=True)
class _ArchiveScan:
    """What one pass over an archive found: member headers, the bytes of its small text members, its size."""

    infos: tuple[tarfile.TarInfo, ...]
    small: Mapping[str, bytes]
    size: int  # bytes of the tar stream (decompressed for gzip)


def _small_text_member(info: tarfile.TarInfo) -> bool:
    return info.isfile() and info.size <= _MAX_XML_BYTES and info.name.lower().endswith(_TEXT_SUFFIXES)


def _walk_tar(fh: IO[bytes]) -> tuple[list[tarfile.TarInfo], dict[str, bytes], int]:
    """Headers and small text members of the tar stream ``fh`` in one forward pass; the end offset."""
    infos: list[tarfile.TarInfo] = []
    small: dict[str, bytes] = {}
    with tarfile.open(fileobj=fh, mode="r:") as tf:
        for info in tf:
            infos.append(info)
            if _small_text_member(info):
                member = tf.extractfile(info)
                small[info.name] = member.read() if member is not None else b""
        end = tf.offset  # where tarfile stopped: the end-of-archive block, or an unreadable header
    return infos, small, end


def _rest_is_zero(fh: IO[bytes], end: int) -> tuple[bool, int]:
    """Whether the stream holds only zero bytes from ``end`` to its end (read to the end); its length."""
    fh.seek(end)
    clean = True
    while block := fh.read(_HASH_BLOCK):
        clean = clean and not block.strip(b"\0")
    return clean, fh.tell()


@lru_cache(maxsize=32)
def _scan_archive(path: Path, gz: bool, where: str, stamp: tuple[int, int]) -> _ArchiveScan:
    """One pass over a tar or tar.gz: refuse unsafe members and truncated or corrupt archives.

    For gzip the whole stream is inflated once (its CRC and length are checked at the end); ``stamp``
    (size, mtime) keys the per-process cache, so a product opened again costs nothing.
    """
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as fh:
            try:
                infos, small, end = _walk_tar(fh)
            except tarfile.TarError as exc:
                raise VimiFormatError(f"{where}: not a readable tar archive ({_one_line(exc)})") from None
            clean, size = _rest_is_zero(fh, end)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        kind = "gzip stream" if gz else "tar archive"
        why = _one_line(exc) or type(exc).__name__
        raise VimiFormatError(f"{where}: truncated or corrupt {kind} ({why})") from None
    except OSError as exc:
        raise VimiFormatError(f"{where}: not a readable archive ({_one_line(exc)})") from None
    if not infos:
        raise VimiFormatError(f"{where}: the tar archive holds no members")
    for info in infos:
        why = _unsafe_member(info)
        if why:
            raise VimiFormatError(f"{where}: refused: member {info.name!r} {why}")
        if info.isfile() and info.offset_data + info.size > size:
            raise VimiFormatError(f"{where}: truncated tar archive: member {info.name!r} needs bytes up to "
                                  f"{info.offset_data + info.size}, the {'stream' if gz else 'file'} has {size}")
    # After the last member a tar holds only zero blocks; anything else is a header tarfile could not read
    # (it stops silently there), i.e. a corrupt archive whose later members would go missing.
    if not clean:
        raise VimiFormatError(f"{where}: corrupt tar archive: unreadable header or data after "
                              f"byte {end} (the archive's member list is incomplete)")
    return _ArchiveScan(tuple(infos), dict(small), size)


# --------------------------------------------------------------------------------------------- XML metadata
def _xml_value(field: Mapping[str, Any], text: str, n_bands: int, where: str, time_zone: str = "UTC") -> Any:
    """One XML field's text as a typed value (see ``xml.types`` of ``vimi_l1.json``); zone-less times are in
    ``time_zone`` and come back in UTC."""
    name, kind = field["name"], field["type"]
    sep = _format()["xml"].get("list_separator", ",")
    bad = f"{where}: XML field {name}"
    text = text.strip()
    try:
        if kind == "str":
            value: Any = text
        elif kind == "int":
            value = int(text)
        elif kind == "float":
            value = float(text)
        elif kind == "time":
            ts = pd.Timestamp(text)
            if ts is pd.NaT:
                raise ValueError("not a time")
            if ts.tz is None:
                ts = ts.tz_localize(time_zone)
            ts = ts.tz_convert("UTC").tz_localize(None)
            value = np.datetime64(ts.to_datetime64(), "ms")
        elif kind in ("float_list", "str_list"):
            items = [s.strip() for s in text.split(sep)] if text else []
            if len(items) != n_bands:
                raise VimiFormatError(f"{bad}: expected {n_bands} {sep!r}-separated values (one per band), "
                                      f"got {len(items)}")
            value = [float(s) for s in items] if kind == "float_list" else items
        else:
            raise VimiFormatError(f"{bad}: unknown field type {kind!r} in vimi_l1.json")
    except VimiFormatError:
        raise
    except (TypeError, ValueError) as exc:
        raise VimiFormatError(f"{bad}: cannot read {text[:40]!r} as {kind} ({_one_line(exc)})") from None
    if kind in ("float", "int", "float_list"):
        arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
        if not np.all(np.isfinite(arr)):
            raise VimiFormatError(f"{bad}: holds a non-finite number")
        if "valid_range" in field:
            lo, hi = field["valid_range"]
            if arr.min() < lo or arr.max() > hi:
                raise VimiFormatError(f"{bad}: value outside its valid range [{lo}, {hi}]")
    return value


def _parse_xml(data: bytes, where: str, time_zone: str = "UTC") -> dict[str, Any]:
    """Typed metadata from the XML bytes; fields looked up by name anywhere in the document."""
    if len(data) > _MAX_XML_BYTES:
        raise VimiFormatError(f"{where}: metadata XML is {len(data)} bytes, larger than any VIMI XML")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:  # no DTDs in product metadata: refuse entity expansion
        raise VimiFormatError(f"{where}: metadata XML declares a DTD or entities, refused")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise VimiFormatError(f"{where}: metadata XML is not well-formed ({_one_line(exc)})") from None
    fmt = _format()
    n_bands = len(fmt["bands"])
    out: dict[str, Any] = {}
    for field in [*fmt["xml"]["fields"], *fmt["xml"].get("delivered_fields", [])]:
        name = field["name"]
        node = root if root.tag == name else root.find(f".//{name}")
        if node is None or not (node.text or "").strip():
            if "default" in field:
                out[name] = list(field["default"]) if isinstance(field["default"], list) else field["default"]
            elif field.get("required", False):
                raise VimiFormatError(f"{where}: XML field {name} is missing")
            continue
        out[name] = _xml_value(field, node.text or "", n_bands, where, time_zone)
    start, centre, end = (out.get(k) for k in ("StartTime", "CenterTime", "EndTime"))
    if start is not None and end is not None and start > end:
        raise VimiFormatError(f"{where}: XML fields StartTime ({start}) is after EndTime ({end})")
    if start is not None and centre is not None and end is not None and not start <= centre <= end:
        raise VimiFormatError(f"{where}: XML fields StartTime <= CenterTime <= EndTime do not hold")
    return out


# --------------------------------------------------------------------------------------------- geometry
def view_zenith(x_m: NDArray[np.floating], x_centre_m: float, satellite_zenith_deg: float,
                satellite_azimuth_deg: float, altitude_km: float) -> NDArray[np.float32]:
    """View zenith angle (degree) of image columns from the scene-centre view geometry.

    Convention (the L1 XML's, as the testbed writes it): the scene centre lies at the signed
    across-track distance ``d_c`` (km, positive east) from the nadir track, ``d_c = +H tan(SatelliteZenith)``
    when ``SatelliteAzimuth`` (the direction from the scene to the satellite, clockwise from north,
    taken modulo 360) is in [180, 360) -- the satellite is west of the scene -- and ``-H tan(SatelliteZenith)``
    otherwise. A pixel at image x coordinate ``x`` (m, east positive) lies at ``d = d_c + (x - x_centre) / 1000``
    and is seen at ``vza = atan(|d| / H)``. This assumes a north-up projected grid whose columns run across
    track (near-polar orbit) and a flat Earth over the scene (error < 0.1 deg over a 60 km swath).

    Parameters
    ----------
    x_m : array
        Image x coordinates (m, east positive) of the pixel centres.
    x_centre_m : float
        x coordinate (m) of the scene centre, where ``satellite_zenith_deg`` is given.
    satellite_zenith_deg, satellite_azimuth_deg : float
        View zenith (0-90) and satellite azimuth (clockwise from north) at the scene centre (degree).
    altitude_km : float
        Satellite altitude H (km).

    Returns
    -------
    numpy.ndarray of float32
        View zenith angle (degree), same shape as ``x_m``.
    """
    h = float(altitude_km)
    d_c = h * np.tan(np.deg2rad(float(satellite_zenith_deg)))
    if not 180.0 <= float(satellite_azimuth_deg) % 360.0 < 360.0:
        d_c = -d_c
    d = d_c + (np.asarray(x_m, dtype=np.float64) - float(x_centre_m)) / 1000.0
    return np.rad2deg(np.arctan(np.abs(d) / h)).astype(np.float32)


# --------------------------------------------------------------------------------------------- lazy calibrated arrays
def _span(k: Any, n: int) -> tuple[int, int, Any]:
    """Bounding range [lo, hi) of one basic index on an axis of length n, and the index into that range."""
    if isinstance(k, int | np.integer):
        i = int(k) + (n if k < 0 else 0)
        return i, i + 1, 0
    start, stop, step = k.indices(n)
    r = range(start, stop, step)
    if len(r) == 0:
        return 0, 0, slice(0, 0)
    lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
    return lo, hi, slice(None) if step == 1 else np.asarray(r) - lo


def _apply_local(block: NDArray, ly: Any, lx: Any) -> NDArray:
    if not (isinstance(ly, slice) and ly == slice(None)):
        block = block[ly]
    if not (isinstance(lx, slice) and lx == slice(None)):
        block = block[..., lx]
    return block


def _read_dn(raster: xr.DataArray, band_pos: int, y0: int, y1: int, x0: int, x1: int, where: str = "") -> NDArray:
    """DN of one band over rows [y0, y1) and columns [x0, x1) (a window read through rioxarray).

    DN are unsigned counts: a signed GeoTIFF holding a negative value is refused (``where`` names the product
    and member in the message), never calibrated into a radiance below the Planck table and silently NaN.
    """
    if y1 <= y0 or x1 <= x0:
        return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0)), dtype=raster.dtype)
    dn = np.asarray(raster[band_pos, y0:y1, x0:x1].values)
    if dn.dtype.kind == "i" and int(dn.min()) < 0:
        row, col = np.unravel_index(int(np.argmin(dn)), dn.shape)
        raise VimiFormatError(f"{where or 'VIMI product'}: negative DN {int(dn.min())} in band {band_pos + 1} at "
                              f"row {y0 + int(row)}, column {x0 + int(col)} (DN are unsigned counts)")
    return dn


def _dn_to_bt(dn: NDArray, gain: float, offset: float, nodata: float | None, channel: str) -> NDArray[np.float32]:
    """Brightness temperature (K) of DN: radiance = gain * DN + offset, then the band's inverse Planck.

    NaN where DN == nodata or the radiance is outside the Planck table.
    """
    bp = _planck(channel)
    rad = gain * dn.astype(np.float64) + offset
    bad = (rad < bp.radiance_table[0]) | (rad > bp.radiance_table[-1])
    if nodata is not None:
        bad |= dn == nodata
    rad[bad] = np.nan
    return bp.brightness_temperature(rad, allow_nan=True).astype(np.float32)


def _ndvi_from_dn(red_dn: NDArray, nir_dn: NDArray, red_cal: tuple[float, float, float],
                  nir_cal: tuple[float, float, float], nodata: float | None, sun_factor: float,
                  factor: int, output: str = "ndvi") -> NDArray[np.float32]:
    """NDVI (or, with ``output="red"``, red reflectance) on the coarse grid from red/NIR DN on the fine
    grid (``factor`` x ``factor`` blocks).

    ``*_cal`` are (gain, offset, ESUN); ``sun_factor`` is pi d^2 / cos(theta_s) (NaN at night).
    """
    refl = []
    for dn, (gain, offset, esun) in ((red_dn, red_cal), (nir_dn, nir_cal)):
        rho = (gain * dn.astype(np.float64) + offset) * (sun_factor / esun)
        if nodata is not None:
            rho[(red_dn == nodata) | (nir_dn == nodata)] = np.nan
        h, w = rho.shape[0] // factor, rho.shape[1] // factor
        refl.append(rho[: h * factor, : w * factor].reshape(h, factor, w, factor).mean(axis=(1, 3)))
    red, nir = refl
    if output == "red":
        return red.astype(np.float32)
    total = nir + red
    with np.errstate(invalid="ignore", divide="ignore"):
        ndvi = np.where(total > 0, (nir - red) / total, np.nan)
    return ndvi.astype(np.float32)


class _CalibratedArray(BackendArray):
    """Base of the lazy per-variable arrays: basic indexing -> bounding window -> ``_compute``."""

    dtype = np.dtype(np.float32)

    def __init__(self, shape: tuple[int, int], token: tuple[Any, ...]) -> None:
        self.shape = shape
        self._token = token

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return (type(self).__name__, *self._token)

    def __getitem__(self, key: indexing.ExplicitIndexer) -> Any:
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.BASIC, self._raw)

    def _raw(self, key: tuple[Any, ...]) -> NDArray[np.float32]:
        (y0, y1, ly), (x0, x1, lx) = (_span(k, n) for k, n in zip(key, self.shape, strict=True))
        return _apply_local(self._compute(y0, y1, x0, x1), ly, lx)

    def _compute(self, y0: int, y1: int, x0: int, x1: int) -> NDArray[np.float32]:
        """The values of rows ``y0:y1`` and columns ``x0:x1``; every subclass defines it."""
        raise TypeError(f"{type(self).__name__} does not define _compute")


class _BtArray(_CalibratedArray):
    """Brightness temperature (K) of one thermal band, read and calibrated window by window."""

    def __init__(self, raster: xr.DataArray, band_pos: int, gain: float, offset: float, nodata: float | None,
                 channel: str, token: tuple[Any, ...], where: str = "") -> None:
        super().__init__((raster.sizes["y"], raster.sizes["x"]), (*token, band_pos, gain, offset, nodata, channel))
        self._raster, self._band_pos = raster, band_pos
        self._cal = (gain, offset, nodata, channel)
        self._where = where

    def _compute(self, y0: int, y1: int, x0: int, x1: int) -> NDArray[np.float32]:
        return _dn_to_bt(_read_dn(self._raster, self._band_pos, y0, y1, x0, x1, self._where), *self._cal)


class _NdviArray(_CalibratedArray):
    """NDVI on the coarse (TIR) grid from the red/NIR bands of the fine grid."""

    def __init__(self, raster: xr.DataArray, red_pos: int, nir_pos: int, red_cal: tuple[float, float, float],
                 nir_cal: tuple[float, float, float], nodata: float | None, sun_factor: float, factor: int,
                 shape: tuple[int, int], token: tuple[Any, ...], output: str = "ndvi",
                 shared: dict[str, Any] | None = None, where: str = "") -> None:
        super().__init__(shape, (*token, red_pos, nir_pos, red_cal, nir_cal, nodata, sun_factor, factor, output))
        self._raster, self._pos = raster, (red_pos, nir_pos)
        self._args = (red_cal, nir_cal, nodata, sun_factor, factor)
        self._output = output
        # NDVI and red reflectance read the same two bands: the last window's DN is shared between them
        self._shared = shared if shared is not None else {}
        self._where = where

    def _compute(self, y0: int, y1: int, x0: int, x1: int) -> NDArray[np.float32]:
        f = self._args[-1]
        key = (y0, y1, x0, x1)
        # The window and its DN are one value, read and replaced in one step each: under the threaded
        # scheduler another thread may replace it at any time, and a separate key and DN could then pair
        # one window's key with another's data (tests/test_io_vimi.py).
        last = self._shared.get("last")
        if last is not None and last[0] == key:
            red, nir = last[1]
        else:
            red, nir = (_read_dn(self._raster, p, y0 * f, y1 * f, x0 * f, x1 * f, self._where) for p in self._pos)
            self._shared["last"] = (key, (red, nir))
        return _ndvi_from_dn(red, nir, *self._args, output=self._output)


class _SensorVzaArray(_CalibratedArray):
    """View zenith (degrees) of every image pixel from the RPC line of sight (:func:`~sftl_dask.io.ortho.sensor_vza`),
    computed for the whole image at the first read and kept (``lines`` x ``samples`` float32)."""

    def __init__(self, rpc: Rpc, shape: tuple[int, int], token: tuple[Any, ...]) -> None:
        super().__init__(shape, (*token, "rpc-vza"))
        self._rpc = rpc
        self._full: NDArray[np.float32] | None = None

    def _compute(self, y0: int, y1: int, x0: int, x1: int) -> NDArray[np.float32]:
        if self._full is None:
            self._full = sensor_vza(self._rpc, *self.shape)
        return self._full[y0:y1, x0:x1]


class _RowArray(_CalibratedArray):
    """A (y, x) field constant along y (the view zenith of each column)."""

    def __init__(self, row: NDArray[np.float32], n_rows: int, token: tuple[Any, ...]) -> None:
        super().__init__((n_rows, row.size), (*token, hashlib.sha256(row.tobytes()).hexdigest()))
        self._row = row

    def _compute(self, y0: int, y1: int, x0: int, x1: int) -> NDArray[np.float32]:
        return np.repeat(self._row[None, x0:x1], max(y1 - y0, 0), axis=0)


# --------------------------------------------------------------------------------------------- calibration, ESUN
def _calibration_rows(text: str, where: str) -> list[dict[str, Any]]:
    """Rows of a calibration table (CSV, ``#`` comment lines; columns of ``calibration.table_columns``)."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    reader = csv.DictReader(lines)
    cols = _format()["calibration"]["table_columns"]
    lacking = [c for c in cols if c not in (reader.fieldnames or [])]
    if lacking:
        raise VimiFormatError(f"{where}: missing columns {lacking} (expected {cols})")
    rows = []
    for i, row in enumerate(reader, start=1):
        try:
            rec = {"satellite": _norm_id(row["satellite"]), "sensor": _norm_id(row["sensor"]),
                   "year": int(row["year"]), "band": row["band"].strip().upper(),
                   "gain": float(row["gain"]), "offset": float(row["offset"])}
        except (TypeError, ValueError) as exc:
            raise VimiFormatError(f"{where}: data row {i}: {_one_line(exc)}") from None
        if not (np.isfinite(rec["gain"]) and rec["gain"] > 0 and np.isfinite(rec["offset"])):
            raise VimiFormatError(f"{where}: data row {i}: gain must be > 0 and offset finite")
        rows.append(rec)
    return rows


def _packaged_table_text(name: str) -> str:
    """The text of the calibration table shipped in ``sftl_dask/data``."""
    return resources.files("sftl_dask.data").joinpath(name).read_text()


def _norm_id(text: str | None) -> str:
    """Satellite or sensor id compared without case, '-', '_' or spaces (GF5B = GF-5B = gf5b)."""
    return re.sub(r"[\s_\-]", "", (text or "").upper())


def _table_entry(rows: list[dict[str, Any]], satellite: str, sensor: str, year: int) -> dict[str, tuple[float, float]]:
    """Band -> (gain, offset) of the rows for one satellite, sensor and year (empty if none)."""
    sat, sen = _norm_id(satellite), _norm_id(sensor)
    return {r["band"]: (r["gain"], r["offset"]) for r in rows
            if r["satellite"] == sat and r["sensor"] == sen and r["year"] == year}


@lru_cache(maxsize=1)
def _solar_spectrum() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The packaged top-of-atmosphere solar spectrum: wavelength (um) and irradiance (W m-2 um-1) at 1 AU."""
    text = resources.files("sftl_dask.data").joinpath(_format()["solar"]["spectrum_file"]).read_text()
    data = np.loadtxt(io.StringIO(text), comments="#")
    return data[:, 0], data[:, 1]


@cache
def _computed_esun(band: str) -> float:
    """ESUN (W m-2 um-1) of a reflective band: its boxcar response (channel table edges) through the spectrum."""
    for ch in reflective_bands().values():
        if ch["band"] == band:
            c = Channel.boxcar(ch["name"], band, ch["centre_um"], ch["lower_um"], ch["upper_um"])
            return band_solar_irradiance(c.wavelength_um, c.response, *_solar_spectrum())
    raise KeyError(f"band {band} has no spectral response in vimi_channels.json")


# --------------------------------------------------------------------------------------------- the product
class VimiProduct:
    """One GF5-02 VIMI L1 product: a ``.tar.gz`` / ``.tgz`` / ``.tar`` or the folder it was extracted to.

    Construction checks the name and the members without reading a pixel: a plain tar's headers, or one
    sequential pass over a gzip stream (cached per process, see the module docstring).

    Parameters
    ----------
    path : path
        ``<stem>.tar.gz``, ``<stem>.tgz``, ``<stem>.tar`` (any case) or a folder ``<stem>/``; the members
        lie at the root or inside one top-level folder; ``stem`` must match the naming regex of
        ``vimi_l1.json``.
    calibration : path, optional
        A calibration table in the format of ``sftl_dask/data/vimi_calibration.csv``, used for a product
        whose XML has no GAINS/OFFSETS (before the packaged table).
    time_zone : str, optional
        Time zone of XML times written without one; default ``xml.time_zone`` of ``vimi_l1.json`` (UTC).

    Attributes
    ----------
    path : pathlib.Path
        The product path as given.
    stem : str
        The product name without extension (the scene id).
    is_archive : bool
        Whether the product is an archive (else an extracted folder).
    is_gzip : bool
        Whether the archive is gzip-compressed.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    VimiFormatError
        On a name that does not match, a corrupt or truncated tar or gzip stream, an unsafe member
        (absolute path, ``..``, link, device), or a missing or ambiguous member; the message starts with
        the path.
    """

    def __init__(self, path: str | os.PathLike[str], *, calibration: str | os.PathLike[str] | None = None,
                 time_zone: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no such file or folder")
        stem = _product_stem(self.path)
        if stem is None:
            arch = _format()["archive"]
            raise VimiFormatError(f"{self.path}: not a VIMI L1 product name (expected {arch['stem_regex']} "
                                  f"with extension {arch['extensions']}, or a folder of that name)")
        self.stem = stem
        self.is_archive = not self.path.is_dir()
        self.is_gzip = self.is_archive and _is_gzip_name(self.path)
        self._calibration_file = None if calibration is None else Path(calibration)
        self._time_zone = time_zone or _format()["xml"].get("time_zone", "UTC")
        self._scan: _ArchiveScan | None = None
        if self.is_archive:
            st = self.path.stat()
            self._scan = _scan_archive(self.path.absolute(), self.is_gzip, self._where, (st.st_size, st.st_mtime_ns))
        self._infos: dict[str, tarfile.TarInfo] = {}
        self._derived_time = False
        self._geometry: dict[str, str] = {}
        self._rpcs: dict[str, Rpc] = {}
        try:
            pd.Timestamp("2000-01-01").tz_localize(self._time_zone)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"time_zone {self._time_zone!r} is not a known time zone ({_one_line(exc)})") from None
        self._members, self._rpc = self._resolve_members()

    def __repr__(self) -> str:
        return f"VimiProduct({str(self.path)!r})"

    @property
    def _where(self) -> str:
        return str(self.path)

    def _listing(self) -> dict[str, str]:
        """Regular files of the product by relative path ('/'-separated): archive members or folder files.

        Only the root and one folder level are listed (an archive or folder with its members inside one
        top-level folder); links in a folder are listed and refused when used.
        """
        if self._scan is not None:
            out = {}
            for info in self._scan.infos:
                name = info.name.removeprefix("./")
                if info.isfile() and len(PurePosixPath(name).parts) <= 2:
                    out[name] = info.name
                    self._infos[info.name] = info
            return out
        out = {}
        for p in sorted(self.path.iterdir()):
            if p.is_dir() and not p.is_symlink():
                out.update({f"{p.name}/{q.name}": f"{p.name}/{q.name}" for q in sorted(p.iterdir()) if not q.is_dir()})
            else:
                out[p.name] = p.name
        return out

    def _find(self, listing: Mapping[str, str], names: list[str], what: str) -> str | None:
        """The one listed member whose base name is one of ``names`` (case-insensitive); None if none."""
        wanted = {n.lower() for n in names}
        hits = [m for rel, m in listing.items() if PurePosixPath(rel).name.lower() in wanted]
        if len(hits) > 1:
            raise VimiFormatError(f"{self._where}: ambiguous {what} members {sorted(hits)}")
        return hits[0] if hits else None

    def _resolve_members(self) -> tuple[dict[str, str], dict[str, str]]:
        listing = self._listing()
        out: dict[str, str] = {}
        rpc: dict[str, str] = {}
        for ftype, spec in _format()["file_types"].items():
            names = [spec["member"].format(stem=self.stem, ext=ext) for ext in spec["extensions"]]
            hit = self._find(listing, names, ftype)
            if hit is None:
                raise VimiFormatError(f"{self._where}: missing member {names[0]}"
                                      + (f" (or {', '.join(names[1:])}, any case)" if len(names) > 1 else ""))
            if self._scan is None:
                p = self.path / hit
                if p.is_symlink() or not p.is_file():
                    raise VimiFormatError(f"{self._where}: member {hit} is not a regular file (links are refused)")
            out[ftype] = hit
            base = PurePosixPath(hit).name.rsplit(".", 1)[0]
            rpc_names = [pattern.format(base=base) for pattern in spec.get("rpc_members", [])]
            rpc_hit = self._find(listing, rpc_names, f"{ftype} RPC") if rpc_names else None
            if rpc_hit is not None:
                rpc[ftype] = rpc_hit
        folders = {PurePosixPath(m).parent for m in [*out.values(), *rpc.values()]}
        if len(folders) > 1:
            raise VimiFormatError(f"{self._where}: members spread over folders {sorted(map(str, folders))}, "
                                  "expected all in one")
        return out, rpc

    @property
    def members(self) -> dict[str, str]:
        """Member names by file type (``B1_B6``, ``B7_B12``, ``metadata``): archive member names or relative
        file paths."""
        return dict(self._members)

    @property
    def rpc_members(self) -> dict[str, str]:
        """RPC sidecar members (``<raster>.rpb`` or ``<raster>_rpc.txt``) by raster file type; may be empty."""
        return dict(self._rpc)

    def rpc(self, raster: str | None = None) -> Rpc:
        """The RPC00B model of one raster of a sensor-geometry product, read once from its own members.

        A sidecar (``.rpb`` / ``_rpc.txt``) is parsed from the bytes the archive scan already holds (a folder's
        file is read once); RPC tags are read from the TIFF header. The result is kept per raster.

        Parameters
        ----------
        raster : str, optional
            File type of the raster (``B7_B12``, ``B1_B6``), or the raster's or RPC member's name; default the
            thermal raster.

        Returns
        -------
        Rpc

        Raises
        ------
        VimiFormatError
            If the raster has no RPCs (a map-projected product, or no sidecar and no tags) or they are
            malformed or unreadable; the message names the product and the member.
        """
        ftype = self._rpc_type(raster)
        if ftype not in self._rpcs:
            self._rpcs[ftype] = self._read_rpc(ftype)
        return self._rpcs[ftype]

    def _rpc_type(self, raster: str | None) -> str:
        """The file type ``raster`` names (a file type, a raster member or an RPC member, base names too)."""
        if raster is None:
            return _thermal_bands()[0]["file_type"]
        if raster in self._members:
            return raster
        name = raster.removesuffix(_RPC_TAGS)
        for ftype in self._raster_types():
            names = {self._members[ftype], self._rpc.get(ftype, "").removesuffix(_RPC_TAGS)}
            if name in names or name in {PurePosixPath(n).name for n in names if n}:
                return ftype
        raise VimiFormatError(f"{self._where}: {raster} is not a raster or RPC member of the product")

    def _read_rpc(self, ftype: str) -> Rpc:
        if ftype not in self._rpc and self.geometry == "sensor":
            self._raster(ftype).close()  # sets the RPC member (tags) or refuses a raster without RPCs
        if ftype not in self._rpc:
            raise VimiFormatError(f"{self._where}: member {self._members[ftype]} has no RPCs "
                                  "(a map-projected product, or no .rpb or _rpc.txt member)")
        member = self._rpc[ftype].removesuffix(_RPC_TAGS)
        label = f"{self._where}: member {member}"
        try:
            if self._rpc[ftype].endswith(_RPC_TAGS):
                if self.is_gzip:
                    os.environ.setdefault("CPL_VSIL_GZIP_WRITE_PROPERTIES", "NO")
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", NotGeoreferencedWarning)
                    with rasterio.open(self._gdal_path(ftype)) as src:
                        return from_rasterio(dict(src.tags(ns="RPC")), label)
            text = self._read_member(f"rpc:{ftype}").decode("ascii", errors="replace")
            parse = parse_rpb if member.lower().endswith(".rpb") else parse_rpc_txt
            return parse(text, label)
        except RpcFormatError as exc:
            raise VimiFormatError(f"{label}: malformed RPCs: {str(exc).removeprefix(label).lstrip(': ')}") from None
        except (OSError, RasterioError) as exc:
            raise VimiFormatError(f"{label}: cannot read its RPCs ({_one_line(exc)})") from None

    def _gdal_path(self, ftype: str) -> str:
        """GDAL's name of a raster member: a byte range of the archive (``/vsisubfile/``), never extracted.

        ``/vsisubfile/`` over the offsets ``tarfile`` found reads every tar dialect (GDAL's ``/vsitar/``
        misses PAX long names); ``/vsigzip/`` inflates a gzip stream on the fly.
        """
        if self._scan is None:
            return str((self.path / self._members[ftype]).absolute())
        info = self._infos[self._members[ftype]]
        inner = f"/vsigzip/{self.path.absolute()}" if self.is_gzip else str(self.path.absolute())
        return f"/vsisubfile/{info.offset_data}_{info.size},{inner}"

    def _read_member(self, ftype: str) -> bytes:
        name = self._members[ftype] if ftype in self._members else self._rpc[ftype.removeprefix("rpc:")]
        if self._scan is not None:
            if name not in self._scan.small:
                raise VimiFormatError(f"{self._where}: member {name} is {self._infos[name].size} bytes, too large")
            return self._scan.small[name]
        member = self.path / name
        if member.stat().st_size > _MAX_XML_BYTES:
            raise VimiFormatError(f"{self._where}: member {member.name} is too large for product metadata")
        return member.read_bytes()

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """The XML metadata with typed values, keyed by the field names of ``vimi_l1.json``.

        ``float`` fields are floats, ``int`` ints, ``time`` fields ``numpy.datetime64[ms]`` in UTC (times
        written without a zone are read in the layout's ``time_zone``), and per-band fields lists of 12
        floats or strings in band order. Absent optional fields are left out; absent fields with a default
        in the table take the default. ``CenterTime`` is the XML's when delivered, else derived as the
        midpoint of ``StartTime`` and ``EndTime`` (:attr:`time_source` says which).

        Raises
        ------
        VimiFormatError
            On malformed XML, a missing required field, a list of the wrong length, a value outside the
            field's valid range, StartTime after EndTime, or GAINS without OFFSETS (or the reverse); the
            message names the field.
        """
        meta = _parse_xml(self._read_member("metadata"), self._where, self._time_zone)
        bands = meta.get("Bands") or [b["name"] for b in _format()["bands"]]
        missing = [b["name"] for b in _format()["bands"] if b["name"] not in bands]
        if missing:
            raise VimiFormatError(f"{self._where}: XML field Bands does not list {missing}")
        for have, lack in (("GAINS", "OFFSETS"), ("OFFSETS", "GAINS")):
            if have in meta and lack not in meta:
                raise VimiFormatError(f"{self._where}: XML field {lack} is missing ({have} is given)")
        if "CenterTime" not in meta:
            start, end = meta["StartTime"], meta["EndTime"]
            meta["CenterTime"] = start + (end - start) // 2
            self._derived_time = True
        return meta

    @property
    def time(self) -> np.datetime64:
        """Scene time (``datetime64[ms]``, UTC): CenterTime, or the midpoint of StartTime and EndTime."""
        return self.metadata["CenterTime"]

    @property
    def time_source(self) -> str:
        """``"CenterTime"`` (delivered) or ``"midpoint of StartTime/EndTime"`` (derived)."""
        _ = self.metadata
        return "midpoint of StartTime/EndTime" if self._derived_time else "CenterTime"

    @cached_property
    def calibration(self) -> tuple[dict[str, tuple[float, float]], str]:
        """Per-band (gain, offset) of radiance = gain * DN + offset (W m-2 sr-1 um-1) and where they come from.

        The source is ``"xml"`` (GAINS/OFFSETS of the XML), ``"user:<path>"`` (the ``calibration`` table
        given to the reader) or ``"table:<file>"`` (the packaged ``vimi_calibration.csv``); a table entry is
        keyed by SatelliteID, SensorID and the year of the scene time.

        Raises
        ------
        VimiFormatError
            When the XML has no GAINS and no table holds an entry for the product's satellite, sensor
            and year (the message names the year), when an entry lacks a band the reader uses, and on a
            malformed table (the message names the table and row).
        """
        meta = self.metadata
        if "GAINS" in meta:
            return {b: (float(g), float(o)) for b, g, o in zip(meta["Bands"], meta["GAINS"], meta["OFFSETS"],
                                                                  strict=True)}, "xml"
        year = int(str(np.datetime64(self.time, "Y")))
        need = [b["name"] for b in (*_thermal_bands(), *_ndvi_bands())]
        tables: list[tuple[str, str, str]] = []
        if self._calibration_file is not None:
            try:
                text = self._calibration_file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise VimiFormatError(f"{self._where}: calibration table {self._calibration_file}: cannot be read "
                                      f"({_one_line(exc)})") from None
            tables.append((f"user:{self._calibration_file}", str(self._calibration_file), text))
        name = _format()["calibration"]["table"]
        tables.append((f"table:{name}", name, _packaged_table_text(name)))
        for source, label, text in tables:
            rows = _calibration_rows(text, f"{self._where}: calibration table {label}")
            entry = _table_entry(rows, str(meta.get("SatelliteID", "")), str(meta.get("SensorID", "")), year)
            if entry:
                lacking = [b for b in need if b not in entry]
                if lacking:
                    key = f"{meta.get('SatelliteID')} {meta.get('SensorID')} {year}"
                    raise VimiFormatError(f"{self._where}: calibration table {label}: the entry for {key} "
                                          f"lacks bands {lacking}")
                return entry, source
        raise VimiFormatError(f"{self._where}: XML field GAINS is missing and no calibration table "
                              f"({', '.join(t[1] for t in tables)}) has an entry for {meta.get('SatelliteID')} "
                              f"{meta.get('SensorID')} in {year}")

    def esun(self, band: str) -> tuple[float, str]:
        """Band solar irradiance ESUN (W m-2 um-1, at 1 AU) of a reflective band, and its source.

        ESUN of the XML when delivered (source ``"xml"``), else computed (source ``"computed"``) with
        :func:`sftl_dask.physics.solar.band_solar_irradiance` from the band's boxcar response (edges of
        ``vimi_channels.json``, unconfirmed) and the packaged ASTM E-490 spectrum.

        Raises
        ------
        VimiFormatError
            When the XML's ESUN of the band is not positive, or the band has no response in the channel
            table.
        """
        meta = self.metadata
        if "ESUN" in meta:
            value = float(meta["ESUN"][meta["Bands"].index(band)])
            if value <= 0:
                raise VimiFormatError(f"{self._where}: XML field ESUN: no solar irradiance for band {band}")
            return value, "xml"
        return _computed_esun(band), "computed"

    @property
    def earth_sun_distance(self) -> tuple[float, str]:
        """Earth-Sun distance (AU) and its source: the XML's ``EarthSunDistance``, or ``"computed"`` from
        :attr:`time` (:func:`sftl_dask.physics.solar.earth_sun_distance_au`)."""
        meta = self.metadata
        if "EarthSunDistance" in meta:
            return float(meta["EarthSunDistance"]), "xml"
        return float(earth_sun_distance_au(self.time)), "computed"

    # ------------------------------------------------------------------------------------------- rasters
    def _raster(self, ftype: str) -> xr.DataArray:
        """The DN GeoTIFF of one file type, opened lazily with rioxarray (no pixel read).

        A member with a CRS and a north-up geotransform is in map geometry; one with neither is in sensor
        geometry and must carry RPCs (a sidecar member, or RPC tags in the TIFF): :meth:`geometry` says
        which. Anything between (a CRS without a transform, or the reverse) is refused.
        """
        import rasterio
        import rasterio.errors
        import rioxarray

        member = self._members[ftype]
        if self.is_gzip:  # GDAL would write <archive>.properties beside the product: reading writes nothing
            os.environ.setdefault("CPL_VSIL_GZIP_WRITE_PROPERTIES", "NO")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                raster = rioxarray.open_rasterio(self._gdal_path(ftype), cache=False, parse_coordinates=True)
        except (rasterio.errors.RasterioError, OSError, ValueError) as exc:
            raise VimiFormatError(f"{self._where}: cannot read member {member} as GeoTIFF "
                                  f"({_one_line(exc)})") from None
        if isinstance(raster, list | xr.Dataset):
            raise VimiFormatError(f"{self._where}: member {member} holds subdatasets, expected one GeoTIFF")
        t = raster.rio.transform()
        if raster.rio.crs is None and t == Affine.identity():
            if ftype not in self._rpc:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                    with rasterio.open(self._gdal_path(ftype)) as src:
                        has_tags = src.rpcs is not None
                if not has_tags:
                    raise VimiFormatError(f"{self._where}: member {member} has no CRS or geotransform (in sensor "
                                          "geometry) and has no RPCs (no .rpb or _rpc.txt member, no RPC tags)")
                self._rpc[ftype] = f"{member}{_RPC_TAGS}"
            self._geometry[ftype] = "sensor"
        elif raster.rio.crs is None:
            raise VimiFormatError(f"{self._where}: member {member} has no CRS")
        else:
            self._geometry[ftype] = "map"
        if t.b != 0 or t.d != 0:
            raise VimiFormatError(f"{self._where}: member {member} has a rotated geotransform, not supported")
        n_spec = sum(1 for b in _format()["bands"] if b["file_type"] == ftype)
        if raster.sizes["band"] != n_spec:
            raise VimiFormatError(f"{self._where}: member {member} has {raster.sizes['band']} bands, an unknown "
                                  f"band count (vimi_l1.json lists {n_spec} for {ftype})")
        if raster.dtype.kind not in "ui":
            raise VimiFormatError(f"{self._where}: member {member} holds {raster.dtype}, expected integer DN")
        return raster

    @property
    def geometry(self) -> str:
        """``"map"`` (georeferenced GeoTIFFs) or ``"sensor"`` (raw sensor geometry with RPCs); reads the headers."""
        if not self._geometry:
            for ftype in self._raster_types():
                self._raster(ftype).close()
        kinds = set(self._geometry.values())
        if len(kinds) > 1:
            raise VimiFormatError(f"{self._where}: members mix map and sensor geometry ({self._geometry})")
        return kinds.pop()

    def _raster_types(self) -> list[str]:
        return [ft for ft in _format()["file_types"] if ft != "metadata"]

    def _check_grids(self, tir: xr.DataArray, vnir: xr.DataArray, tm: str, vm: str, factor: int) -> None:
        """The fine (red/NIR) grid is ``factor`` x the thermal grid: same size ratio, and in map geometry the
        same CRS and aligned transforms."""
        ny, nx = tir.sizes["y"], tir.sizes["x"]
        if vnir.rio.crs != tir.rio.crs:
            raise VimiFormatError(f"{self._where}: members {vm} and {tm} have different CRS")
        if (vnir.sizes["y"], vnir.sizes["x"]) != (factor * ny, factor * nx):
            raise VimiFormatError(f"{self._where}: member {vm} is {vnir.sizes['y']} x {vnir.sizes['x']} px, "
                                  f"expected {factor * ny} x {factor * nx} ({factor} x the {tm} grid)")
        if self.geometry == "sensor":
            return
        tt, vt = tir.rio.transform(), vnir.rio.transform()
        tol = 1e-6 * abs(tt.a)
        if (abs(vt.c - tt.c) > tol or abs(vt.f - tt.f) > tol or abs(vt.a * factor - tt.a) > tol
                or abs(vt.e * factor - tt.e) > tol):
            raise VimiFormatError(f"{self._where}: the grids of {vm} and {tm} are not aligned "
                                  f"({factor} x {factor} pixels of the first in each pixel of the second)")

    def _nodata(self, raster: xr.DataArray, ftype: str) -> float | None:
        nd = raster.rio.nodata
        if nd is None:
            nd = _format()["file_types"][ftype].get("nodata", _format()["calibration"].get("nodata_dn"))
        return None if nd is None else float(nd)

    def _calibration(self, band: str) -> tuple[float, float]:
        return self.calibration[0][band]

    def _ndsi_variable(self, vnir: xr.DataArray, vnir_type: str, sun_factor: float, factor: int,
                       shape: tuple[int, int], token: tuple[Any, ...]) -> xr.Variable:
        """NDSI (green - SWIR) / (green + SWIR) of the TOA reflectances of B2 (0.56 um) and B5 (1.65 um), on the
        coarse grid as NDVI (the cloud mask's snow test); the same arithmetic as NDVI with SWIR for red."""
        green_b, swir_b = (_band(reflective_bands()[k]["band"]) for k in ("b2", "b5"))
        cal = [(*self._calibration(b["name"]), self.esun(b["name"])[0]) for b in (swir_b, green_b)]
        arr = _NdviArray(vnir, swir_b["band_index"] - 1, green_b["band_index"] - 1, cal[0], cal[1],
                         self._nodata(vnir, vnir_type), sun_factor, factor, shape, token,
                         where=f"{self._where}: member {self._members[vnir_type]}")
        return xr.Variable(("y", "x"), indexing.LazilyIndexedArray(arr), {
            "units": "1", "long_name": "NDSI of top-of-atmosphere reflectance",
            "source_bands": f"{green_b['name']} (green), {swir_b['name']} (SWIR), "
                            f"{factor}x{factor} mean of reflectance",
        })

    def _lazy_dataset(self) -> xr.Dataset:
        """The Dataset with lazily indexed (not yet chunked) variables."""
        fmt = _format()
        meta = self.metadata
        thermal = _thermal_bands()
        red_b, nir_b = _ndvi_bands()
        tir_type = thermal[0]["file_type"]
        vnir_type = red_b["file_type"]
        if nir_b["file_type"] != vnir_type or any(b["file_type"] != tir_type for b in thermal):
            raise VimiFormatError(f"{self._where}: vimi_l1.json spreads the thermal or red/NIR bands over "
                                  "several files, which this reader does not support")
        tir = self._raster(tir_type)
        vnir = self._raster(vnir_type)
        ratio = fmt["file_types"][tir_type]["resolution_m"] / fmt["file_types"][vnir_type]["resolution_m"]
        factor = round(ratio)
        if factor < 1 or abs(ratio - factor) > 1e-9:
            raise VimiFormatError(f"{self._where}: vimi_l1.json resolutions give a non-integer ratio {ratio}")
        ny, nx = tir.sizes["y"], tir.sizes["x"]
        tm, vm = self._members[tir_type], self._members[vnir_type]
        self._check_grids(tir, vnir, tm, vm, factor)
        tt = tir.rio.transform()
        sensor = self.geometry == "sensor"

        stat = self.path.stat()
        token = (str(self.path.absolute()), stat.st_size, stat.st_mtime_ns)
        variables = self._bt_variables(tir, tir_type, thermal, tm, token)

        cal = [(*self._calibration(b["name"]), self.esun(b["name"])[0]) for b in (red_b, nir_b)]
        cos_sz = float(np.cos(np.deg2rad(meta["SolarZenith"])))
        d_au = self.earth_sun_distance[0]
        sun_factor = float(np.pi * d_au**2 / cos_sz) if cos_sz > 0 else float("nan")
        # made before NDVI and red, whose arrays share their DN reads (and are the last two made, as a test finds them)
        variables["ndsi"] = self._ndsi_variable(vnir, vnir_type, sun_factor, factor, (ny, nx), token)
        shared: dict[str, Any] = {}
        ndvi = _NdviArray(vnir, red_b["band_index"] - 1, nir_b["band_index"] - 1, cal[0], cal[1],
                          self._nodata(vnir, vnir_type), sun_factor, factor, (ny, nx), token, shared=shared,
                          where=f"{self._where}: member {vm}")
        variables["ndvi"] = xr.Variable(("y", "x"), indexing.LazilyIndexedArray(ndvi), {
            "units": "1", "long_name": "NDVI of top-of-atmosphere reflectance",
            "source_bands": f"{red_b['name']} (red), {nir_b['name']} (NIR), {factor}x{factor} mean of reflectance",
            "esun_w_m2_um": [cal[0][2], cal[1][2]], "earth_sun_distance_au": d_au,
        })
        red = _NdviArray(vnir, red_b["band_index"] - 1, nir_b["band_index"] - 1, cal[0], cal[1],
                         self._nodata(vnir, vnir_type), sun_factor, factor, (ny, nx), token, output="red",
                         shared=shared, where=f"{self._where}: member {vm}")
        variables["red"] = xr.Variable(("y", "x"), indexing.LazilyIndexedArray(red), {
            "units": "1", "long_name": f"top-of-atmosphere reflectance, band {red_b['name']} (red)",
        })

        x = tir["x"].to_numpy()
        variables["vza"] = self._vza(x, ny, sensor, token)
        ds = xr.Dataset(variables, coords={"y": tir["y"].to_numpy(), "x": x,
                                           "time": np.datetime64(self.time, "ns")}, attrs=self._attrs())
        ds["x"].attrs = dict(tir["x"].attrs)
        ds["y"].attrs = dict(tir["y"].attrs)
        ds["time"].attrs = {"long_name": "scene centre time (UTC)", "standard_name": "time"}
        if sensor:
            for axis in ("x", "y"):
                ds[axis].attrs = {"long_name": f"image {'column' if axis == 'x' else 'row'} (pixel centre)",
                                  "units": "pixel"}
        else:
            ds = ds.rio.write_crs(tir.rio.crs).rio.write_transform(tt)

        def _close() -> None:  # file handles reopen on demand, so closing never breaks a later read
            tir.close()
            vnir.close()

        ds.set_close(_close)
        return ds

    def _bt_variables(self, tir: xr.DataArray, tir_type: str, thermal: list[dict[str, Any]], tm: str,
                      token: tuple[Any, ...]) -> dict[str, xr.Variable]:
        """The lazily indexed brightness temperatures (K), one per thermal band of ``tir`` (member ``tm``).

        Raises VimiFormatError if a band's gain is not > 0.
        """
        meta = self.metadata
        variables: dict[str, xr.Variable] = {}
        tir_nodata = self._nodata(tir, tir_type)
        wavelengths = meta.get("CentralWavelength")
        for b in thermal:
            gain, offset = self._calibration(b["name"])
            if gain <= 0:
                raise VimiFormatError(f"{self._where}: XML field GAINS: gain of {b['name']} must be > 0")
            arr = _BtArray(tir, b["band_index"] - 1, gain, offset, tir_nodata, b["variable"], token,
                           where=f"{self._where}: member {tm}")
            centre = wavelengths[meta["Bands"].index(b["name"])] if wavelengths else b["centre_um"]
            variables[b["variable"]] = xr.Variable(("y", "x"), indexing.LazilyIndexedArray(arr), {
                "units": "K", "standard_name": "toa_brightness_temperature",
                "long_name": f"top-of-atmosphere brightness temperature, band {b['name']} ({centre:.2f} um)",
                "band": b["name"], "central_wavelength_um": float(centre),
                "calibration": f"radiance = {gain!r} * DN + {offset!r} (W m-2 sr-1 um-1), band Planck inverse",
            })
        return variables

    def _vza(self, x: NDArray[np.float64], ny: int, sensor: bool, token: tuple[Any, ...]) -> xr.Variable:
        """The view zenith variable (degrees).

        In sensor geometry, per pixel from the thermal raster's RPC line of sight (:class:`_SensorVzaArray`:
        :func:`sftl_dask.io.rpc.view_zenith` on a lattice every :data:`~sftl_dask.io.ortho.VZA_STEP_PX` pixels,
        bilinear in between). A map-projected product carries no RPCs: its angle follows from the scene-centre
        angles of the XML and a north-up grid (:func:`view_zenith`).
        """
        attrs = {"units": "degree", "standard_name": "sensor_zenith_angle", "long_name": "view zenith angle"}
        if sensor:
            arr: _CalibratedArray = _SensorVzaArray(self.rpc(), (ny, x.size), token)
            attrs["convention"] = ("angle between the RPC line of sight (the pixel localized at the ends of the "
                                   "model's height range) and the ellipsoid normal")
            return xr.Variable(("y", "x"), indexing.LazilyIndexedArray(arr), attrs)
        meta = self.metadata
        row = view_zenith(x, 0.5 * (float(x[0]) + float(x[-1])), meta["SatelliteZenith"],
                          meta["SatelliteAzimuth"], float(meta["SatelliteAltitude"]))
        attrs["convention"] = ("d = d_c + (x - x_centre)/1000 km, d_c = +/-H tan(SatelliteZenith) "
                               "(+ when SatelliteAzimuth in [180, 360): satellite west of the scene), "
                               "vza = atan(|d|/H)")
        return xr.Variable(("y", "x"), indexing.LazilyIndexedArray(_RowArray(row, ny, token)), attrs)

    def _attrs(self) -> dict[str, Any]:
        """The Dataset's attributes: identity, angles, and where time, calibration, ESUN and geometry come from."""
        fmt, meta = _format(), self.metadata
        red_b, nir_b = _ndvi_bands()
        esun_src = sorted({self.esun(b["name"])[1] for b in (red_b, nir_b)})
        return {
            "scene_id": self.stem,
            "source": str(self.path),
            "time": f"{np.datetime_as_string(self.time, unit='ms')}Z",
            "time_source": self.time_source,
            "platform": fmt.get("platform", "GF5-02"),
            "instrument": fmt.get("instrument", "VIMI"),
            "product_level": meta.get("ProductLevel", "L1"),
            "orbit": int(meta["OrbitID"]) if "OrbitID" in meta else -1,
            "solar_zenith": float(meta["SolarZenith"]),
            "solar_azimuth": float(meta["SolarAzimuth"]),
            "satellite_zenith": float(meta["SatelliteZenith"]),
            "satellite_azimuth": float(meta["SatelliteAzimuth"]),
            "satellite_altitude_km": float(meta["SatelliteAltitude"]),
            "cloud_percent": float(meta["CloudPercent"]),
            "calibration_source": self.calibration[1],
            "esun_source": ",".join(esun_src),
            "earth_sun_distance_source": self.earth_sun_distance[1],
            "delivery": "folder" if not self.is_archive else ("tar.gz" if self.is_gzip else "tar"),
            "geometry": self.geometry,
            "rpc_member": self._rpc.get(_thermal_bands()[0]["file_type"], ""),
        }

    def open(self, chunks: int | tuple[int, int] | Mapping[str, int] | None = _DEFAULT_CHUNK) -> xr.Dataset:
        """Open the product as a lazy Dataset on the 40 m thermal grid.

        Parameters
        ----------
        chunks : int, (rows, cols), mapping {"y": rows, "x": cols}, or None
            Dask chunk size (pixels of the 40 m grid); default 512 x 512. ``None`` returns lazily indexed
            (not Dask) variables that read only the window that is accessed. Each chunk reads its DN
            window (and the 2 x 2 larger red/NIR window for NDVI): memory per task ~ 20 bytes x chunk area.

        Returns
        -------
        xarray.Dataset
            ``bt_08_20``, ``bt_08_63``, ``bt_10_80``, ``bt_11_95`` (K), ``ndvi`` (1), ``vza`` (degree),
            dims ``(y, x)``, float32; coordinates ``x``, ``y`` (m, CRS units, pixel centres), scalar
            ``time`` (datetime64[ns], UTC) and ``spatial_ref`` (CRS and transform, rioxarray style);
            attributes ``scene_id``, ``source``, ``time`` (ISO 8601 UTC), ``platform``, ``instrument``,
            ``solar_zenith``, ``solar_azimuth``, ``satellite_zenith``, ``satellite_azimuth`` (degree),
            ``satellite_altitude_km``, ``cloud_percent``, ``orbit``, ``product_level``, and where things come
            from: ``time_source``, ``calibration_source`` (``xml``, ``user:<path>``, ``table:<file>``),
            ``esun_source`` and ``earth_sun_distance_source`` (``xml`` or ``computed``), ``delivery``
            (``tar``, ``tar.gz``, ``folder``), ``geometry`` (``map`` or ``sensor``) and ``rpc_member`` (the
            thermal raster's RPC member, ``""`` if none). In sensor geometry ``x``/``y`` are image columns and
            rows (pixel centres) and no CRS is written.

        Raises
        ------
        VimiFormatError
            On a GeoTIFF that cannot be opened, has no CRS (or, in sensor geometry, no RPCs), an unknown
            band count or grids that do not align, on bad metadata (see :attr:`metadata`) and on missing
            calibration (see :attr:`calibration`).
        """
        ds = self._lazy_dataset()
        if chunks is None:
            return ds
        if isinstance(chunks, Mapping):
            cy, cx = int(chunks.get("y", _DEFAULT_CHUNK)), int(chunks.get("x", _DEFAULT_CHUNK))
        elif isinstance(chunks, tuple | list):
            cy, cx = (int(c) for c in chunks)
        else:
            cy = cx = int(chunks)
        if cy < 1 or cx < 1:
            raise ValueError(f"chunks must be positive, got {chunks!r}")
        from dask.base import tokenize

        stat = self.path.stat()
        token = tokenize("vimi", str(self.path.absolute()), stat.st_size, stat.st_mtime_ns)
        return ds.chunk({"y": cy, "x": cx}, name_prefix="vimi-", token=token)


def open_vimi(path: str | os.PathLike[str],
              chunks: int | tuple[int, int] | Mapping[str, int] | None = _DEFAULT_CHUNK, *,
              calibration: str | os.PathLike[str] | None = None, time_zone: str | None = None) -> xr.Dataset:
    """Open a VIMI L1 product (``.tar.gz``, ``.tgz``, ``.tar`` or extracted folder) as a lazy Dataset.

    See :class:`VimiProduct` for ``calibration`` (a calibration table used when the XML has no GAINS) and
    ``time_zone`` (of zone-less XML times), and :meth:`VimiProduct.open` for ``chunks`` and the result.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    VimiFormatError
        On any problem with the product (the one-line message starts with the path).
    """
    return VimiProduct(path, calibration=calibration, time_zone=time_zone).open(chunks=chunks)


class VimiBackendEntrypoint(BackendEntrypoint):
    """xarray backend: ``xr.open_dataset(path, engine="vimi")`` opens a VIMI L1 product.

    Variables are lazily indexed (only accessed windows are read); pass ``chunks={}`` to get Dask arrays
    in the preferred 512 x 512 chunks, or ``chunks={"y": ..., "x": ...}``.
    """

    description = "GF5-02 VIMI Level-1 products (.tar or extracted folder): BT (K), NDVI, view zenith"
    url = "https://github.com/sftl-dask/sftl-dask"
    open_dataset_parameters = ("filename_or_obj", "drop_variables")

    def open_dataset(  # type: ignore[override]
        self,
        filename_or_obj: str | os.PathLike[Any] | Any,
        *,
        drop_variables: str | Iterable[str] | None = None,
    ) -> xr.Dataset:
        """Open ``filename_or_obj`` (a product path) as :meth:`VimiProduct.open` with ``chunks=None``."""
        if not isinstance(filename_or_obj, str | os.PathLike):
            raise VimiFormatError(f"{filename_or_obj!r}: the vimi engine opens product paths only")
        ds = VimiProduct(filename_or_obj).open(chunks=None)
        for name in ds.data_vars:
            ds[name].encoding["preferred_chunks"] = {"y": _DEFAULT_CHUNK, "x": _DEFAULT_CHUNK}
        if drop_variables is not None:
            drop = [drop_variables] if isinstance(drop_variables, str) else list(drop_variables)
            ds = ds.drop_vars(drop, errors="ignore")
        return ds

    def guess_can_open(self, filename_or_obj: str | os.PathLike[Any] | Any) -> bool:
        """True for paths whose name is a VIMI L1 product name (``<stem>.tar`` or a ``<stem>`` folder)."""
        if isinstance(filename_or_obj, io.IOBase) or not isinstance(filename_or_obj, str | os.PathLike):
            return False
        try:
            return _product_stem(Path(filename_or_obj)) is not None
        except (OSError, ValueError):
            return False
