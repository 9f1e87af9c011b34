"""RPC00B rational polynomial camera models: read, write, evaluate, invert and fit.

A Level-1 product in sensor geometry carries its geolocation as RPCs (rational polynomial coefficients):
an ``.rpb`` sidecar (the DigitalGlobe/GDAL ``.RPB`` text form), an ``_rpc.txt`` sidecar (the Ikonos/GDAL
``LINE_OFF: ...`` key-value form) or RPC tags inside the TIFF, which rasterio reads as ``src.rpcs``
(a :class:`rasterio.rpc.RPC`). All three end in one immutable value, :class:`Rpc`.

The model (NITF STDI-0002 RPC00B; the same term order as GDAL's ``gdal_rpc.cpp``)::

    P = (lat - LAT_OFF) / LAT_SCALE     L = (lon - LONG_OFF) / LONG_SCALE     H = (h - HEIGHT_OFF) / HEIGHT_SCALE
    line   = LINE_NUM(P, L, H) / LINE_DEN(P, L, H) * LINE_SCALE + LINE_OFF
    sample = SAMP_NUM(P, L, H) / SAMP_DEN(P, L, H) * SAMP_SCALE + SAMP_OFF

with each polynomial a dot product of 20 coefficients with the cubic terms :data:`RPC00B_TERMS`. Longitude and
latitude are geodetic WGS 84 degrees, heights metres above the WGS 84 ellipsoid. Image coordinates follow
RPC00B: ``(line, sample) = (0, 0)`` is the **centre** of the first pixel (GDAL adds half a pixel when it turns
them into its corner-based pixel/line; see :func:`to_rasterio` and the GDAL cross-check in ``tests/test_rpc.py``).

This module is written for real products: it never imports the testbed.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import ArrayLike, NDArray
from pyproj import Transformer
from rasterio.errors import NotGeoreferencedWarning
from rasterio.rpc import RPC

__all__ = ["RIDGE_GRID", "RPC00B_TERMS", "Rpc", "RpcFit", "RpcFitError", "RpcFormatError", "fit_rpc", "format_rpb",
           "format_rpc_txt", "from_rasterio", "parse_rpb", "parse_rpc_txt", "read_rpc", "to_rasterio", "view_zenith",
           "write_rpb", "write_rpc_txt"]

#: The 20 cubic terms of an RPC00B polynomial, in order (L longitude, P latitude, H height, normalised).
RPC00B_TERMS: tuple[str, ...] = ("1", "L", "P", "H", "LP", "LH", "PH", "LL", "PP", "HH",
                                 "PLH", "LLL", "LPP", "LHH", "LLP", "PPP", "PHH", "LLH", "PPH", "HHH")

#: The scalar fields of an RPC, as (our attribute, ``_rpc.txt`` key, ``.rpb`` key, unit written in ``_rpc.txt``).
_SCALARS: tuple[tuple[str, str, str, str], ...] = (
    ("line_off", "LINE_OFF", "lineOffset", "pixels"),
    ("samp_off", "SAMP_OFF", "sampOffset", "pixels"),
    ("lat_off", "LAT_OFF", "latOffset", "degrees"),
    ("long_off", "LONG_OFF", "longOffset", "degrees"),
    ("height_off", "HEIGHT_OFF", "heightOffset", "meters"),
    ("line_scale", "LINE_SCALE", "lineScale", "pixels"),
    ("samp_scale", "SAMP_SCALE", "sampScale", "pixels"),
    ("lat_scale", "LAT_SCALE", "latScale", "degrees"),
    ("long_scale", "LONG_SCALE", "longScale", "degrees"),
    ("height_scale", "HEIGHT_SCALE", "heightScale", "meters"),
)
#: The four polynomials, as (our attribute, ``_rpc.txt`` key stem, ``.rpb`` key).
_POLYS: tuple[tuple[str, str, str], ...] = (
    ("line_num", "LINE_NUM_COEFF", "lineNumCoef"),
    ("line_den", "LINE_DEN_COEFF", "lineDenCoef"),
    ("samp_num", "SAMP_NUM_COEFF", "sampNumCoef"),
    ("samp_den", "SAMP_DEN_COEFF", "sampDenCoef"),
)
_OPTIONAL: tuple[tuple[str, str, str], ...] = (("err_bias", "ERR_BIAS", "errBias"), ("err_rand", "ERR_RAND", "errRand"))

#: Geodetic (lon, lat, h on WGS 84) <-> Earth-centred Earth-fixed metres.
_TO_ECEF = Transformer.from_crs("EPSG:4979", "EPSG:4978", always_xy=True)

FloatArray = NDArray[np.float64]


class RpcFormatError(ValueError):
    """An RPC text or tag set that is malformed or incomplete (the message names the source and the key)."""


@dataclass(frozen=True)
class Rpc:
    """An RPC00B model: offsets, scales and the four 20-term polynomials (see the module docstring).

    Offsets and scales are in pixels (line, sample), degrees (lat, long) and metres (height). ``err_bias`` and
    ``err_rand`` (metres, optional) are the product's stated RMS bias and random error per horizontal axis
    (a negative value, GDAL's "unknown" in TIFF tags, reads as None).
    """

    line_off: float
    samp_off: float
    lat_off: float
    long_off: float
    height_off: float
    line_scale: float
    samp_scale: float
    lat_scale: float
    long_scale: float
    height_scale: float
    line_num: tuple[float, ...]
    line_den: tuple[float, ...]
    samp_num: tuple[float, ...]
    samp_den: tuple[float, ...]
    err_bias: float | None = None
    err_rand: float | None = None

    def __post_init__(self) -> None:
        for name, *_ in _POLYS:
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 20:
                raise RpcFormatError(f"Rpc: {name} has {len(values)} coefficients, RPC00B needs 20")
            object.__setattr__(self, name, values)
        for name, *_ in _SCALARS:
            object.__setattr__(self, name, float(getattr(self, name)))
            if name.endswith("_scale") and not getattr(self, name):
                raise RpcFormatError(f"Rpc: {name} is 0 (a scale must be non-zero)")

    @cached_property
    def _coef(self) -> FloatArray:
        """The four polynomials as one (4, 20) array: line num, line den, sample num, sample den."""
        return np.array([getattr(self, n) for n, *_ in _POLYS], dtype=np.float64)

    def normalise(self, lon: ArrayLike, lat: ArrayLike, h: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
        """(L, P, H): longitude, latitude (deg) and height (m) normalised by the model's offsets and scales."""
        return ((np.asarray(lon, np.float64) - self.long_off) / self.long_scale,
                (np.asarray(lat, np.float64) - self.lat_off) / self.lat_scale,
                (np.asarray(h, np.float64) - self.height_off) / self.height_scale)

    def project(self, lon: ArrayLike, lat: ArrayLike, h: ArrayLike = 0.0) -> tuple[FloatArray, FloatArray]:
        """Forward model: ground (lon, lat in degrees, h in metres above WGS 84) -> image (line, sample) in pixels.

        Vectorised: the inputs broadcast against each other (worked in blocks of :data:`_BLOCK` points, so a
        whole scene costs no more memory than a block). Pixel centres are at integer (line, sample).
        """
        return _blockwise(self._project_flat, lon, lat, h)

    def localize(self, line: ArrayLike, sample: ArrayLike, h: ArrayLike = 0.0, *, tol_px: float = 1e-8,
                 max_iter: int = 30) -> tuple[FloatArray, FloatArray]:
        """Inverse model: image (line, sample) in pixels at height h (m) -> ground (lon, lat) in degrees.

        Newton iteration on the analytic Jacobian of :meth:`project`, started from the model's centre, until
        every point reproduces its (line, sample) to ``tol_px`` pixels (default 1e-8 px, far below the 1e-6 px
        this model promises). Vectorised like :meth:`project`. Points that do not converge in ``max_iter``
        steps (far outside the model's domain) come back as NaN.
        """
        return _blockwise(lambda *a: self._localize_flat(*a, tol_px=tol_px, max_iter=max_iter), line, sample, h)

    def _project_flat(self, lon: FloatArray, lat: FloatArray, h: FloatArray) -> tuple[FloatArray, FloatArray]:
        """:meth:`project` on 1-D arrays of one length."""
        poly = np.einsum("kt,tn->kn", self._coef, _terms(*self.normalise(lon, lat, h)))
        return (poly[0] / poly[1] * self.line_scale + self.line_off,
                poly[2] / poly[3] * self.samp_scale + self.samp_off)

    def _localize_flat(self, line: FloatArray, sample: FloatArray, h: FloatArray, *, tol_px: float,
                       max_iter: int) -> tuple[FloatArray, FloatArray]:
        """:meth:`localize` on 1-D arrays of one length."""
        lon_n, lat_n = np.zeros_like(line), np.zeros_like(line)
        h_n = (h - self.height_off) / self.height_scale
        done = np.zeros(line.shape, dtype=bool)
        for _ in range(max_iter):
            with np.errstate(all="ignore"):  # points outside the domain may diverge: they end as NaN
                (line_m, samp_m), jac = self._project_with_jacobian(lon_n, lat_n, h_n)
                d_line, d_samp = line - line_m, sample - samp_m
                done = np.isfinite(d_line) & (np.abs(d_line) < tol_px) & (np.abs(d_samp) < tol_px)
                if done.all():
                    break
                det = jac[0, 0] * jac[1, 1] - jac[0, 1] * jac[1, 0]
                lon_n = lon_n + np.where(done, 0.0, (jac[1, 1] * d_line - jac[0, 1] * d_samp) / det)
                lat_n = lat_n + np.where(done, 0.0, (jac[0, 0] * d_samp - jac[1, 0] * d_line) / det)
        return (np.where(done, lon_n * self.long_scale + self.long_off, np.nan),
                np.where(done, lat_n * self.lat_scale + self.lat_off, np.nan))

    def _project_with_jacobian(self, lon_n: FloatArray, lat_n: FloatArray,
                               h_n: FloatArray) -> tuple[tuple[FloatArray, FloatArray], FloatArray]:
        """(line, sample) and d(line, sample)/d(L, P) in pixels per normalised unit, shape (2, 2, ...)."""
        terms, d_lon, d_lat = _terms(lon_n, lat_n, h_n), *_term_derivatives(lon_n, lat_n, h_n)
        val = np.einsum("kt,t...->k...", self._coef, terms)
        dv_lon = np.einsum("kt,t...->k...", self._coef, d_lon)
        dv_lat = np.einsum("kt,t...->k...", self._coef, d_lat)
        out, jac = [], np.empty((2, 2, *lon_n.shape))
        for row, (num, den, scale, off) in enumerate(((0, 1, self.line_scale, self.line_off),
                                                      (2, 3, self.samp_scale, self.samp_off))):
            out.append(val[num] / val[den] * scale + off)
            for col, dv in enumerate((dv_lon, dv_lat)):
                jac[row, col] = (dv[num] * val[den] - val[num] * dv[den]) / val[den] ** 2 * scale
        return (out[0], out[1]), jac


#: Points per block in :meth:`Rpc.project` / :meth:`Rpc.localize`: the 20-term stacks stay in cache.
_BLOCK = 16_384


def _blockwise(func: Callable[[FloatArray, FloatArray, FloatArray], tuple[FloatArray, FloatArray]],
               a: ArrayLike, b: ArrayLike, c: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """``func`` over the broadcast, flattened inputs in blocks of :data:`_BLOCK`, reshaped back."""
    arrays = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (a, b, c)))
    shape = arrays[0].shape
    flat = [np.ascontiguousarray(v).ravel() for v in arrays]
    out = np.empty((2, flat[0].size))
    for start in range(0, flat[0].size, _BLOCK):
        part = slice(start, start + _BLOCK)
        out[0, part], out[1, part] = func(flat[0][part], flat[1][part], flat[2][part])
    return out[0].reshape(shape), out[1].reshape(shape)


def _terms(lon_n: FloatArray, lat_n: FloatArray, h_n: FloatArray) -> FloatArray:
    """The 20 RPC00B terms (:data:`RPC00B_TERMS`), stacked on a new first axis."""
    L, P, H = lon_n, lat_n, h_n
    one = np.ones_like(L)
    return np.stack([one, L, P, H, L * P, L * H, P * H, L * L, P * P, H * H,
                     P * L * H, L ** 3, L * P * P, L * H * H, L * L * P, P ** 3, P * H * H, L * L * H, P * P * H,
                     H ** 3])


def _term_derivatives(lon_n: FloatArray, lat_n: FloatArray, h_n: FloatArray) -> tuple[FloatArray, FloatArray]:
    """d(terms)/dL and d(terms)/dP, each stacked like :func:`_terms`."""
    L, P, H = lon_n, lat_n, h_n
    zero, one = np.zeros_like(L), np.ones_like(L)
    d_lon = np.stack([zero, one, zero, zero, P, H, zero, 2 * L, zero, zero,
                      P * H, 3 * L * L, P * P, H * H, 2 * L * P, zero, zero, 2 * L * H, zero, zero])
    d_lat = np.stack([zero, zero, one, zero, L, zero, H, zero, 2 * P, zero,
                      L * H, zero, 2 * L * P, zero, L * L, 3 * P * P, H * H, zero, 2 * P * H, zero])
    return d_lon, d_lat


def _number(text: str, source: str, key: str) -> float:
    """``text`` as a finite float, or :class:`RpcFormatError` naming ``source`` and ``key``."""
    try:
        value = float(text)
    except ValueError:
        raise RpcFormatError(f"{source}: {key} is not a number: {text.strip()[:40]!r}") from None
    if not math.isfinite(value):
        raise RpcFormatError(f"{source}: {key} is not finite: {text.strip()[:40]!r}")
    return value


def _build(values: dict[str, str], source: str, column: int,
           poly_values: Callable[[str, str], list[tuple[str, str]]]) -> Rpc:
    """An :class:`Rpc` from raw text values keyed as column ``column`` of :data:`_SCALARS` names them (1: the
    GDAL / ``_rpc.txt`` keys, 2: the ``.rpb`` keys); ``poly_values(txt_key, rpb_key)`` gives each polynomial's
    20 (key, text) pairs."""
    kwargs: dict[str, object] = {}
    for spec in _SCALARS:
        key = spec[column]
        if key not in values:
            raise RpcFormatError(f"{source}: missing key {key}")
        kwargs[spec[0]] = _number(values[key].split()[0] if values[key].split() else "", source, key)
        if spec[0].endswith("_scale") and kwargs[spec[0]] == 0:
            raise RpcFormatError(f"{source}: {key} is 0 (a scale must be non-zero)")
    for name, txt_key, rpb_key in _POLYS:
        kwargs[name] = tuple(_number(text, source, key) for key, text in poly_values(txt_key, rpb_key))
    for spec in _OPTIONAL:
        key = spec[column]
        if key in values and values[key].split():
            value = _number(values[key].split()[0], source, key)
            # GDAL writes -1 in a TIFF's RPC tag where the error is unknown
            kwargs[spec[0]] = value if value >= 0 else None
    return Rpc(**kwargs)  # type: ignore[arg-type]


def parse_rpc_txt(text: str, source: str = "<rpc text>") -> Rpc:
    """Parse the Ikonos/GDAL ``_rpc.txt`` form (``LINE_OFF: +003442.00 pixels``, ``LINE_NUM_COEFF_1: ...``).

    Units after the value are ignored, keys are case-insensitive.

    Raises
    ------
    RpcFormatError
        A missing key, a polynomial without exactly 20 coefficients (``LINE_NUM_COEFF_1`` ... ``_20``), a value
        that is not a finite number, or a zero scale; the message names ``source`` and the key.
    """
    values: dict[str, str] = {}
    for raw in text.splitlines():
        key, sep, value = raw.partition(":")
        if sep and key.strip():
            values[key.strip().upper()] = value.strip()

    def poly(stem: str, rpb_key: str) -> list[tuple[str, str]]:
        found = {int(m.group(1)) for k in values if (m := re.fullmatch(rf"{stem}_(\d+)", k))}
        if found - set(range(1, 21)):
            raise RpcFormatError(f"{source}: {stem} has {max(found)} coefficients, RPC00B needs 20")
        for i in range(1, 21):
            if f"{stem}_{i}" not in values:
                raise RpcFormatError(f"{source}: missing key {stem}_{i} (RPC00B needs 20 coefficients)")
        return [(f"{stem}_{i}", values[f"{stem}_{i}"].split()[0] if values[f"{stem}_{i}"].split() else "")
                for i in range(1, 21)]

    return _build(values, source, 1, poly)


def parse_rpb(text: str, source: str = "<rpb text>") -> Rpc:
    """Parse the DigitalGlobe/GDAL ``.RPB`` form (``lineOffset = 3442;``, ``lineNumCoef = (c1, ..., c20);``).

    Keys are case-insensitive; the ``BEGIN_GROUP``/``END_GROUP`` framing, ``satId``, ``bandId`` and ``SpecId``
    are accepted and not required.

    Raises
    ------
    RpcFormatError
        A missing key, a coefficient list without exactly 20 values, a value that is not a finite number, or a
        zero scale; the message names ``source`` and the key.
    """
    values = {m.group(1).lower(): m.group(2).strip()
              for m in re.finditer(r"(\w+)[ \t]*=[ \t]*(\([^)]*\)|[^;\n]*)", text)}
    by_lower = {spec[2].lower(): spec[2] for spec in (*_SCALARS, *_OPTIONAL)}

    def poly(txt_key: str, rpb_key: str) -> list[tuple[str, str]]:
        raw = values.get(rpb_key.lower())
        if raw is None:
            raise RpcFormatError(f"{source}: missing key {rpb_key}")
        if not (raw.startswith("(") and raw.endswith(")")):
            raise RpcFormatError(f"{source}: {rpb_key} is not a parenthesised list of coefficients")
        items = [v.strip() for v in raw[1:-1].split(",")]
        if len(items) != 20:
            raise RpcFormatError(f"{source}: {rpb_key} has {len(items)} coefficients, RPC00B needs 20")
        return [(rpb_key, v) for v in items]

    named = {by_lower.get(k, k): v.strip('"') for k, v in values.items()}
    return _build(named, source, 2, poly)


def from_rasterio(rpcs: RPC | dict[str, str], source: str = "<RPC tags>") -> Rpc:
    """An :class:`Rpc` from rasterio's :class:`rasterio.rpc.RPC` (``src.rpcs``) or GDAL's RPC metadata dict.

    ``src.tags(ns="RPC")`` gives the dict form (``LINE_NUM_COEFF`` as 20 space-separated numbers): use it where
    tags may be incomplete, as ``src.rpcs`` raises a bare ``KeyError`` on a missing key and silently drops
    coefficients past the twentieth.

    Raises
    ------
    RpcFormatError
        As :func:`parse_rpc_txt`, naming ``source`` and the GDAL key.
    """
    if isinstance(rpcs, RPC):
        rpcs = rpcs.to_gdal()
    values = {str(k).upper(): str(v) for k, v in rpcs.items()}

    def poly(key: str, rpb_key: str) -> list[tuple[str, str]]:
        if key not in values:
            raise RpcFormatError(f"{source}: missing key {key}")
        items = values[key].split()
        if len(items) != 20:
            raise RpcFormatError(f"{source}: {key} has {len(items)} coefficients, RPC00B needs 20")
        return [(key, v) for v in items]

    return _build(values, source, 1, poly)


def to_rasterio(rpc: Rpc) -> RPC:
    """``rpc`` as rasterio's :class:`rasterio.rpc.RPC`, for ``reproject(..., rpcs=...)`` and ``RPCTransformer``.

    The values are copied unchanged: GDAL's RPC metadata uses the RPC00B convention (pixel centres at integer
    line/sample) and shifts by half a pixel itself.
    """
    return RPC(height_off=rpc.height_off, height_scale=rpc.height_scale, lat_off=rpc.lat_off,
               lat_scale=rpc.lat_scale, line_den_coeff=list(rpc.line_den), line_num_coeff=list(rpc.line_num),
               line_off=rpc.line_off, line_scale=rpc.line_scale, long_off=rpc.long_off, long_scale=rpc.long_scale,
               samp_den_coeff=list(rpc.samp_den), samp_num_coeff=list(rpc.samp_num), samp_off=rpc.samp_off,
               samp_scale=rpc.samp_scale, err_bias=rpc.err_bias, err_rand=rpc.err_rand)


def _fmt(value: float) -> str:
    """17 significant digits: text that reads back to the same float."""
    return f"{value:+.16E}"


def format_rpc_txt(rpc: Rpc) -> str:
    """``rpc`` in the ``_rpc.txt`` form GDAL writes (``GDALWriteRPCTXTFile``), lossless to the last bit."""
    lines = [f"{txt}: {_fmt(getattr(rpc, name))}" for name, txt, _ in _OPTIONAL if getattr(rpc, name) is not None]
    lines += [f"{txt}: {_fmt(getattr(rpc, name))} {unit}" for name, txt, _, unit in _SCALARS]
    for name, stem, _ in _POLYS:
        lines += [f"{stem}_{i}: {_fmt(v)}" for i, v in enumerate(getattr(rpc, name), start=1)]
    return "\n".join(lines) + "\n"


def format_rpb(rpc: Rpc, *, sat_id: str = "GF5B", band_id: str = "VIMI") -> str:
    """``rpc`` in the ``.RPB`` form GDAL reads as a sidecar (``GDALLoadRPBFile``), lossless to the last bit.

    ``sat_id`` and ``band_id`` fill the header's ``satId`` / ``bandId`` (informative only).
    """
    out = [f'satId = "{sat_id}";', f'bandId = "{band_id}";', 'SpecId = "RPC00B";', "BEGIN_GROUP = IMAGE"]
    out += [f"\t{rpb} = {_fmt(getattr(rpc, name))};" for name, _, rpb in _OPTIONAL if getattr(rpc, name) is not None]
    out += [f"\t{rpb} = {_fmt(getattr(rpc, name))};" for name, _, rpb, _ in _SCALARS]
    for name, _, rpb in _POLYS:
        body = ",\n".join(f"\t\t\t{_fmt(v)}" for v in getattr(rpc, name))
        out.append(f"\t{rpb} = (\n{body});")
    out += ["END_GROUP = IMAGE", "END;"]
    return "\n".join(out) + "\n"


def write_rpc_txt(rpc: Rpc, path: str | Path) -> Path:
    """Write ``rpc`` to ``path`` in the ``_rpc.txt`` form (:func:`format_rpc_txt`); returns the path."""
    path = Path(path)
    path.write_text(format_rpc_txt(rpc), encoding="ascii")
    return path


def write_rpb(rpc: Rpc, path: str | Path, **header: str) -> Path:
    """Write ``rpc`` to ``path`` in the ``.RPB`` form (:func:`format_rpb`, ``header`` its keywords)."""
    path = Path(path)
    path.write_text(format_rpb(rpc, **header), encoding="ascii")
    return path


def read_rpc(path: str | Path) -> Rpc:
    """The RPCs of a sidecar (``*.rpb``, ``*_rpc.txt``, any case) or of a raster's RPC tags (anything else).

    Raises
    ------
    RpcFormatError
        A malformed or incomplete RPC text or tag set, or a raster without RPC tags (naming the file).
    """
    name = Path(path).name.lower()
    if name.endswith(".rpb"):
        return parse_rpb(Path(path).read_text(encoding="ascii", errors="replace"), str(path))
    if name.endswith("_rpc.txt"):
        return parse_rpc_txt(Path(path).read_text(encoding="ascii", errors="replace"), str(path))
    with warnings.catch_warnings():  # a raster in sensor geometry has no geotransform: that is expected here
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            tags = src.tags(ns="RPC")
    if not tags:
        raise RpcFormatError(f"{path}: no RPC tags (and no .rpb or _rpc.txt sidecar GDAL recognises)")
    return from_rasterio(tags, str(path))


class RpcFitError(ValueError):
    """Control points that cannot determine an RPC00B model (too few, mismatched, or no height spread)."""


@dataclass(frozen=True)
class RpcFit:
    """A fitted :class:`Rpc` with its residuals in pixels (2-D: ``hypot(d_line, d_sample)``).

    ``check_rms_px`` / ``check_max_px`` are on the held-out check points (NaN when none were given);
    ``control_*`` on the control points; ``ridge`` is the Tikhonov parameter chosen.
    """

    rpc: Rpc
    check_rms_px: float
    check_max_px: float
    control_rms_px: float
    control_max_px: float
    ridge: float
    n_control: int
    n_check: int


#: Tikhonov parameters tried by :func:`fit_rpc` (normalised units; 0 = plain least squares).
RIDGE_GRID: tuple[float, ...] = (0.0, 1e-12, 1e-10, 1e-8, 1e-6, 1e-4)


def _solve_ratio(terms: FloatArray, target: FloatArray, ridge: float, iterations: int) -> FloatArray:
    """Numerator (20) and denominator (20, constant 1) fitting ``target`` = num/den, normalised units.

    Linearised as ``num·t − target·(den[1:]·t[1:]) = target`` and re-weighted by 1/den of the previous
    iteration (Tao & Hu 2001, eq. 14–18), with Tikhonov term ``ridge·|x|²`` (their regularised solution).
    """
    design = np.concatenate([terms.T, -target[:, None] * terms[1:].T], axis=1)
    norm = np.sqrt(np.einsum("ij,ij->j", design, design))  # equilibrate the columns
    design = design / norm
    weight = np.ones_like(target)
    solution = np.zeros(design.shape[1])
    for _ in range(iterations):
        # normal equations by einsum, not BLAS: 39 unknowns, and threaded BLAS on a busy host costs 100x more
        weighted = design * (weight ** 2)[:, None]
        normal = np.einsum("ij,ik->jk", weighted, design) + ridge * np.eye(design.shape[1])
        new = np.linalg.solve(normal, np.einsum("ij,i->j", weighted, target)) / norm
        den = terms[0] + np.einsum("t,ti->i", new[20:], terms[1:])
        converged = np.max(np.abs(new - solution)) < 1e-14
        solution, weight = new, 1.0 / np.abs(den)
        if converged:
            break
    return np.concatenate([solution[:20], [1.0], solution[20:]])


def _residuals_px(rpc: Rpc, lon: FloatArray, lat: FloatArray, h: FloatArray, line: FloatArray,
                  sample: FloatArray) -> FloatArray:
    """2-D residual of ``rpc`` at the points, in pixels."""
    line_m, samp_m = rpc.project(lon, lat, h)
    return np.hypot(line_m - line, samp_m - sample)


def _rpc_from(span: dict[str, tuple[float, float]], line_coef: FloatArray, samp_coef: FloatArray) -> Rpc:
    """An :class:`Rpc` from (offset, scale) per coordinate and the fitted numerator/denominator pairs."""
    return Rpc(line_off=span["line"][0], samp_off=span["sample"][0], lat_off=span["lat"][0],
               long_off=span["lon"][0], height_off=span["h"][0], line_scale=span["line"][1],
               samp_scale=span["sample"][1], lat_scale=span["lat"][1], long_scale=span["lon"][1],
               height_scale=span["h"][1], line_num=tuple(line_coef[:20]), line_den=tuple(line_coef[20:]),
               samp_num=tuple(samp_coef[:20]), samp_den=tuple(samp_coef[20:]))


def fit_rpc(lon: ArrayLike, lat: ArrayLike, h: ArrayLike, line: ArrayLike, sample: ArrayLike, *,
            check: tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike, ArrayLike] | None = None,
            ridge: float | None = None, iterations: int = 10) -> RpcFit:
    """Fit an RPC00B model to control points of a rigorous sensor model (the terrain-independent method).

    Follows Tao & Hu 2001 ("A comprehensive study of the rational function model for photogrammetric
    processing", PE&RS 67(12):1347–1357): control points on a 3-D grid (image grid × several height layers,
    made by the caller from its sensor model); coordinates normalised to [-1, 1] by offset = mid-range and
    scale = half-range; line and sample fitted separately, each as a linear least-squares problem in the
    numerator and the denominator with the denominator's constant term fixed to 1, iterated with weights
    1/denominator, and Tikhonov-regularised against the near-collinearity of the cubic terms.
    The Tikhonov parameter is ``ridge``, or, when None, the value of :data:`RIDGE_GRID` that best predicts a
    held-back fifth of the control points (the check points never take part in the choice).

    Parameters
    ----------
    lon, lat : array_like
        Geodetic WGS 84 degrees of the control points (any shape, flattened).
    h : array_like
        Height above the WGS 84 ellipsoid (m); needs at least two distinct values.
    line, sample : array_like
        Image coordinates (pixels, centres at integers) of the control points.
    check : tuple of array_like, optional
        ``(lon, lat, h, line, sample)`` of independent check points for the reported residuals.
    ridge : float, optional
        Fixed Tikhonov parameter (normalised units).
    iterations : int
        Most re-weighting iterations per coordinate.

    Returns
    -------
    RpcFit
        The model and its residuals in pixels.

    Raises
    ------
    RpcFitError
        Arrays of different sizes, fewer than 39 control points per coordinate, or no spread in a coordinate.
    """
    names = ("lon", "lat", "h", "line", "sample")
    try:
        pts = dict(zip(names, (a.ravel() for a in np.broadcast_arrays(
            *(np.asarray(v, np.float64) for v in (lon, lat, h, line, sample)))), strict=True))
    except ValueError:
        raise RpcFitError("fit_rpc: control arrays lon, lat, h, line, sample do not have one shape") from None
    if pts["lon"].size < 39 or not all(np.isfinite(v).all() for v in pts.values()):
        raise RpcFitError(f"fit_rpc: {pts['lon'].size} control points (need >= 39, all finite)")
    span = {}
    for name, values in pts.items():
        lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            raise RpcFitError(f"fit_rpc: control points have no spread in {name} (all {lo})")
        span[name] = ((hi + lo) / 2, (hi - lo) / 2)
    norm = {k: (v - span[k][0]) / span[k][1] for k, v in pts.items()}
    terms = _terms(norm["lon"], norm["lat"], norm["h"])
    if ridge is None:
        held = np.arange(terms.shape[1]) % 5 == 0
        scores = []
        for lam in RIDGE_GRID:
            coef = [_solve_ratio(terms[:, ~held], norm[k][~held], lam, iterations) for k in ("line", "sample")]
            trial = _rpc_from(span, *coef)
            scores.append(float(np.sqrt(np.mean(_residuals_px(trial, *(pts[k][held] for k in names)) ** 2))))
        ridge = RIDGE_GRID[int(np.nanargmin(scores))]
    rpc = _rpc_from(span, *(_solve_ratio(terms, norm[k], ridge, iterations) for k in ("line", "sample")))
    control = _residuals_px(rpc, *(pts[k] for k in names))
    if check is None:
        check_res = np.array([np.nan])
    else:
        check_res = _residuals_px(rpc, *(np.asarray(v, np.float64).ravel() for v in check))
    return RpcFit(rpc=rpc, check_rms_px=float(np.sqrt(np.mean(check_res ** 2))), check_max_px=float(check_res.max()),
                  control_rms_px=float(np.sqrt(np.mean(control ** 2))), control_max_px=float(control.max()),
                  ridge=float(ridge), n_control=int(control.size), n_check=0 if check is None else check_res.size)


def view_zenith(rpc: Rpc, line: ArrayLike, sample: ArrayLike,
                heights: tuple[float, float] | None = None) -> FloatArray:
    """Per-pixel view zenith angle (degrees) from the RPCs alone.

    The line of sight of image pixel (line, sample) is the straight line through its ground points at two
    heights (``heights``, metres; by default the ends of the model's height range, ``height_off ±
    height_scale``, where the RPC is valid). The angle is between that line (ECEF, WGS 84) and the ellipsoid
    normal at the lower point. Vectorised over broadcast ``line`` and ``sample``; NaN where the inverse fails.
    """
    if heights is None:
        heights = (rpc.height_off - rpc.height_scale, rpc.height_off + rpc.height_scale)
    h_lo, h_hi = heights
    lon0, lat0 = rpc.localize(line, sample, h_lo)
    lon1, lat1 = rpc.localize(line, sample, h_hi)
    p0 = np.stack(_TO_ECEF.transform(lon0, lat0, np.full_like(lon0, h_lo)))
    p1 = np.stack(_TO_ECEF.transform(lon1, lat1, np.full_like(lon1, h_hi)))
    sight = (p1 - p0) * np.sign(h_hi - h_lo)
    lon_r, lat_r = np.radians(lon0), np.radians(lat0)
    up = np.stack([np.cos(lat_r) * np.cos(lon_r), np.cos(lat_r) * np.sin(lon_r), np.sin(lat_r)])
    cos_vza = np.sum(sight * up, axis=0) / np.linalg.norm(sight, axis=0)
    return np.degrees(np.arccos(np.clip(cos_vza, -1.0, 1.0)))
