"""Readers of in situ radiometer records and the site table, and in situ LST at an overpass.

**Station CSV** (as the HiWATER / Huailai networks distribute them): ``#`` header lines
``# <key>: <value>`` with the site metadata, then a CSV table::

    # id: HL01
    # lon: 115.788
    # lat: 40.3491
    # broadband_emissivity: 0.972
    # timezone: UTC+8 (Beijing time)
    TIMESTAMP,ULR_Cor,DLR_Cor,QC_flag,sensor_id
    2022-06-12 10:00:00,512.31,350.02,0,CNR4-1001

``TIMESTAMP`` is the logger's local time; the zone comes from the ``timezone`` header (``UTC+8``,
``UTC+08:00``, ``UTC-3`` or an IANA name such as ``Asia/Shanghai``), UTC+8 (Beijing) with a warning when
the header has none. ``ULR_Cor``/``DLR_Cor`` are the corrected upwelling/downwelling longwave (W m-2;
empty or ``NAN`` = gap), ``QC_flag`` 0 good, 1 suspect, 2 bad, ``sensor_id`` the radiometer (optional).

:func:`read_insitu_csv` validates and returns the metadata and a frame with UTC times; :func:`insitu_lst`
turns longwave into LST (``sftl_dask.physics.insitu.radiometer_lst``) and says for every row why it is not
usable, never dropping one; :func:`overpass_lst` averages the good rows around a satellite overpass.
Bad files raise ``ValueError`` whose message starts with the file and names the column and line(s).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from sftl_dask.physics.insitu import radiometer_lst
from sftl_dask.times import utc_instant

__all__ = ["REASONS", "insitu_lst", "overpass_lst", "read_insitu_csv", "read_sites"]

_REQUIRED_COLUMNS = ("TIMESTAMP", "ULR_Cor", "DLR_Cor", "QC_flag")
_FLOAT_META = ("lon", "lat", "elevation_m", "broadband_emissivity")
_DEFAULT_UTC_OFFSET_H = 8.0  # Beijing time, the loggers' clock in the Heihe and Huailai networks
_TZ_RE = re.compile(r"^\s*(?:UTC|GMT)\s*(?:([+-])\s*(\d{1,2})(?::?(\d{2}))?)?\b", re.IGNORECASE)
_QC_CODES = (0, 1, 2)
_QC_MISSING = -1
_SITE_COLUMNS = ("id", "region", "lon", "lat")
_BROADBAND_RANGE = (0.8, 1.0)  # what radiometer_lst accepts
_MAX_LINES_SHOWN = 5
_LONGWAVE_COLUMNS = ("ULR_Cor", "DLR_Cor")
#: Spellings of W m-2, compared lower-case without blanks.
_W_M2 = {"wm-2", "w/m2", "w/m^2", "wm^-2", "wm**-2", "w.m-2", "w·m-2", "w/m²", "wm⁻²"}
_COLUMN_DOC = re.compile(r"(\w+)\s*\(([^()]*)\)")

#: Row reasons written by :func:`insitu_lst`; only ``"ok"`` rows (and ``"suspect"`` on request) are averaged.
REASONS = ("ok", "suspect", "qc missing", "qc bad", "gap", "non-physical longwave")


def _lines(rows: NDArray[np.intp] | list[int], first_line: int) -> str:
    """Human file line numbers of table rows (``first_line`` is the line of row 0)."""
    nums = [int(r) + first_line for r in rows]
    shown = ", ".join(str(n) for n in nums[:_MAX_LINES_SHOWN])
    return f"line {shown}" if len(nums) == 1 else f"lines {shown}" + (
        f" ... ({len(nums)} rows)" if len(nums) > _MAX_LINES_SHOWN else "")


def _utc_offset(value: str, path: Path) -> tuple[float | None, str | None]:
    """(fixed offset in hours, None) or (None, IANA zone name) from a ``timezone`` header value."""
    m = _TZ_RE.match(value)
    if m:
        if m.group(1) is None:
            return 0.0, None
        hours = int(m.group(2)) + (int(m.group(3)) / 60.0 if m.group(3) else 0.0)
        if hours > 14:
            raise ValueError(f"{path}: timezone {value!r} is not a UTC offset between -14 and +14 h")
        return (hours if m.group(1) == "+" else -hours), None
    name = value.split()[0] if value.split() else ""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # unknown; malformed key; a folder or too long a name
        raise ValueError(f"{path}: timezone {value!r} is neither 'UTC+H' nor an IANA zone name") from None
    return None, name


def _split(path: Path) -> tuple[dict[str, str], str, int]:
    """Header ``key: value`` pairs, the table text and the file line number of the table's header row."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read in situ file ({exc})") from None
    lines = text.splitlines()
    header: dict[str, str] = {}
    i = 0
    while i < len(lines) and (lines[i].lstrip().startswith("#") or not lines[i].strip()):
        body = lines[i].lstrip().lstrip("#").strip()
        if ":" in body:
            key, value = body.split(":", 1)
            header[key.strip()] = value.strip()
        i += 1
    if i == len(lines):
        raise ValueError(f"{path}: no table after the '#' header lines")
    return header, "\n".join(lines[i:]) + "\n", i + 1


def _check_units(header: dict[str, str], path: Path) -> None:
    """Refuse longwave columns that the ``# columns:`` header declares in units other than W m-2.

    The header describes each column as ``NAME (description, unit)``; a part of the description with a digit,
    ``/``, ``^`` or ``²`` in it is a unit. A column described without a unit is taken as W m-2 (the format's).
    """
    for name, text in _COLUMN_DOC.findall(header.get("columns", "")):
        if name not in _LONGWAVE_COLUMNS:
            continue
        units = [u.strip() for u in text.split(",") if re.search(r"[0-9/^²]", u)]
        if units and not any("".join(u.split()).lower() in _W_M2 for u in units):
            raise ValueError(f"{path}: column {name}: unknown units {units[0]!r} in the '# columns:' header "
                             "(longwave must be in W m-2)")


def _check_table(raw: pd.DataFrame, required: Any, path: Any, what: str) -> None:
    """Strip the column names in place; refuse missing columns or an empty table, naming the file."""
    raw.columns = [str(c).strip() for c in raw.columns]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (found {', '.join(raw.columns)})")
    if raw.empty:
        raise ValueError(f"{path}: {what} has no rows")


def _header_meta(header: dict[str, str], p: Path) -> tuple[dict[str, Any], float | None, str | None]:
    """The metadata of :func:`read_insitu_csv` from the header pairs, and the logger clock's zone.

    Returns ``(meta, offset_h, zone)``: ``meta`` with the numeric keys as floats (``lon``, ``lat`` deg,
    ``elevation_m`` m, ``broadband_emissivity``), ``path`` and ``utc_offset_h``; the fixed offset (h) or None;
    the IANA zone name or None. Raises ValueError for a non-numeric value or an unknown timezone; warns
    (UserWarning, attributed to the caller of :func:`read_insitu_csv`) if there is no ``timezone``.
    """
    meta: dict[str, Any] = dict(header)
    for key in _FLOAT_META:
        if key in meta:
            try:
                meta[key] = float(meta[key])
            except ValueError:
                raise ValueError(f"{p}: header {key!r} = {header[key]!r} is not a number") from None
    if "timezone" in header:
        offset_h, zone = _utc_offset(header["timezone"], p)
    else:
        # stacklevel 3: the warning names the line that called read_insitu_csv
        warnings.warn(f"{p}: no '# timezone:' header; TIMESTAMP taken as UTC+8 (Beijing time)", UserWarning,
                      stacklevel=3)
        offset_h, zone = _DEFAULT_UTC_OFFSET_H, None
    meta["path"] = str(p)
    meta["utc_offset_h"] = offset_h
    return meta, offset_h, zone


def _record_times(raw: pd.DataFrame, p: Path, first: int, offset_h: float | None, zone: str | None
                  ) -> tuple[pd.DatetimeIndex, pd.DatetimeIndex]:
    """The records' (logger clock, naive UTC) times (ns) from ``TIMESTAMP``; ``first`` is row 0's file line.

    Raises ValueError, naming the file and the lines, for unparseable or duplicate stamps, time going
    backwards, or local times ambiguous or nonexistent in ``zone``.
    """
    stamps = raw["TIMESTAMP"].str.strip()
    local = pd.to_datetime(stamps, format="ISO8601", errors="coerce")
    bad = np.flatnonzero(local.isna().to_numpy())
    if bad.size:
        raise ValueError(f"{p}: column TIMESTAMP: unparseable time stamp(s) at {_lines(bad, first)} "
                         f"(e.g. {stamps.iloc[bad[0]]!r}; expected 'YYYY-MM-DD HH:MM:SS')")
    local = pd.DatetimeIndex(local).as_unit("ns")
    dup = np.flatnonzero(local.duplicated(keep="first"))
    if dup.size:
        raise ValueError(f"{p}: column TIMESTAMP: duplicate time stamp(s) at {_lines(dup, first)} "
                         f"(e.g. {stamps.iloc[dup[0]]!r})")
    back = np.flatnonzero(np.diff(local.asi8) < 0)
    if back.size:
        raise ValueError(f"{p}: column TIMESTAMP: time goes backwards at {_lines(back + 1, first)} "
                         f"({stamps.iloc[back[0]]!r} then {stamps.iloc[back[0] + 1]!r})")
    if zone is None:
        utc = local - pd.Timedelta(hours=offset_h)
    else:
        aware = local.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
        bad = np.flatnonzero(aware.isna())
        if bad.size:
            raise ValueError(f"{p}: column TIMESTAMP: local time(s) ambiguous or nonexistent in {zone} "
                             f"at {_lines(bad, first)}")
        utc = aware.tz_convert("UTC").tz_localize(None)
    return local, utc


_NUMERIC = ("ULR_Cor", "DLR_Cor", "QC_flag")
_BLANKS = ["", "NAN", "NaN", "nan", "NA", "null"]


def _record_numbers(raw: pd.DataFrame, p: Path, first: int) -> dict[str, NDArray[np.float64]]:
    """``ULR_Cor``, ``DLR_Cor`` (W m-2) and ``QC_flag`` as float64, NaN where blank.

    ``raw`` holds them as parsed numbers already (the fast read) or as text, checked here value by value.

    Raises ValueError, naming the file, the column and the lines, for non-numeric values, QC codes other
    than 0/1/2, or infinite longwave.
    """
    numbers = {}
    for col in _NUMERIC:
        if raw[col].dtype.kind in "fiu":
            numbers[col] = raw[col].to_numpy(dtype=np.float64)
            continue
        text = raw[col].str.strip()
        blank = text.isin(_BLANKS)
        values = pd.to_numeric(text.mask(blank), errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() & ~blank.to_numpy())
        if bad.size:
            raise ValueError(f"{p}: column {col}: non-numeric value(s) at {_lines(bad, first)} "
                             f"(e.g. {text.iloc[bad[0]]!r})")
        numbers[col] = values.to_numpy(dtype=np.float64)
    qc = numbers["QC_flag"]
    bad = np.flatnonzero(np.isfinite(qc) & ~np.isin(qc, _QC_CODES))
    if bad.size:
        raise ValueError(f"{p}: column QC_flag: code(s) other than 0, 1, 2 at {_lines(bad, first)} "
                         f"(e.g. {raw['QC_flag'].iloc[bad[0]]!r})")
    for col in ("ULR_Cor", "DLR_Cor"):
        if np.isinf(numbers[col]).any():
            bad = np.flatnonzero(np.isinf(numbers[col]))
            raise ValueError(f"{p}: column {col}: infinite value(s) at {_lines(bad, first)}")
    return numbers


def _read_table(table: str, p: Path) -> pd.DataFrame:
    """The record table: the numeric columns parsed by pandas' C parser (blanks NaN), the others as text; where a
    numeric column does not parse, everything as text, for :func:`_record_numbers` to name the bad lines.

    Parsing numbers in C rather than stripping and converting text costs a fraction of the time (the station reads
    were half of ``sftl validate``'s time on a 3-year archive of 10-minute records, measured).
    """
    try:
        try:
            return pd.read_csv(io.StringIO(table), dtype=defaultdict(lambda: str, dict.fromkeys(_NUMERIC, "float64")),
                               keep_default_na=False, na_values=dict.fromkeys(_NUMERIC, _BLANKS),
                               skipinitialspace=True)
        except ValueError:  # a non-numeric value: the careful path names it
            return pd.read_csv(io.StringIO(table), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{p}: malformed CSV table ({exc})") from None


def read_insitu_csv(path: str | os.PathLike[str]) -> tuple[dict[str, Any], pd.DataFrame]:
    """Read one station radiometer CSV.

    Parameters
    ----------
    path : path
        The station file.

    Returns
    -------
    meta : dict
        Every ``# key: value`` header pair (``id``, ``name``, ``region``, ``land_cover``,
        ``instrument``, ``sensor_id``, ``timezone`` ... as text; ``lon``, ``lat`` (deg),
        ``elevation_m`` (m), ``broadband_emissivity`` (unitless) as floats), plus ``path`` and
        ``utc_offset_h`` (the logger clock's offset, h; None for an IANA zone with daylight saving).
    frame : pandas.DataFrame
        One row per record, in file order: ``time_utc`` (datetime64[ns], naive UTC), ``time_local``
        (datetime64[ns], the logger's clock), ``lw_up_w_m2``, ``lw_down_w_m2`` (float64, W m-2, NaN =
        gap), ``qc`` (int8: 0 good, 1 suspect, 2 bad, -1 no flag), ``sensor_id`` (str; the header's when
        the column is absent). ``frame.attrs`` holds ``source`` (the path) and ``site_id``.

    Raises
    ------
    ValueError
        Naming the file: unreadable, a required column missing (named), an unparseable or duplicate
        timestamp, times not increasing, non-numeric longwave or QC values, QC codes other than 0/1/2
        (each naming the column and the file line(s)), an unknown timezone, a non-numeric header value, or
        longwave columns that the ``# columns:`` header declares in units other than W m-2.

    Warns
    -----
    UserWarning
        If the header has no ``timezone``: UTC+8 (Beijing time) is assumed.
    """
    p = Path(path)
    header, table, header_line = _split(p)
    meta, offset_h, zone = _header_meta(header, p)
    _check_units(header, p)
    raw = _read_table(table, p)
    _check_table(raw, _REQUIRED_COLUMNS, p, "the table")
    first = header_line + 1  # file line of row 0
    local, utc = _record_times(raw, p, first, offset_h, zone)
    numbers = _record_numbers(raw, p, first)
    qc = numbers["QC_flag"]
    if "sensor_id" in raw.columns:
        sensor = raw["sensor_id"].str.strip()
    else:
        sensor = pd.Series([str(meta.get("sensor_id", ""))] * len(raw))
    frame = pd.DataFrame({
        "time_utc": np.asarray(utc, dtype="datetime64[ns]"),
        "time_local": np.asarray(local, dtype="datetime64[ns]"),
        "lw_up_w_m2": numbers["ULR_Cor"],
        "lw_down_w_m2": numbers["DLR_Cor"],
        "qc": np.where(np.isfinite(qc), qc, _QC_MISSING).astype(np.int8),
        "sensor_id": sensor.to_numpy(dtype=object),
    })
    frame.attrs = {"source": str(p), "site_id": str(meta.get("id", p.stem))}
    return meta, frame


def insitu_lst(frame: pd.DataFrame, broadband_emissivity: float) -> pd.DataFrame:
    """Land surface temperature of every radiometer record, with the reason a record is not usable.

    ``Ts = [(L_up - (1 - eps_b) L_down) / (eps_b sigma)]^(1/4)`` (``radiometer_lst``). No row is dropped:
    rows flagged bad (qc 2), with a longwave gap, or with non-physical longwave (outside 50-1000 /
    0-700 W m-2, or a non-positive emitted flux) get NaN LST and their reason.

    Parameters
    ----------
    frame : pandas.DataFrame
        From :func:`read_insitu_csv` (needs ``lw_up_w_m2``, ``lw_down_w_m2``, ``qc``).
    broadband_emissivity : float
        Broadband (8-13.5 um) emissivity of the site (unitless, 0.8-1), e.g. ``meta["broadband_emissivity"]``.

    Returns
    -------
    pandas.DataFrame
        A copy with ``lst_k`` (float64, K) and ``reason`` (str) added; ``reason`` is one of
        :data:`REASONS`: ``"ok"``, ``"suspect"`` (qc 1, LST kept), ``"qc missing"`` (no flag, LST kept),
        ``"qc bad"``, ``"gap"``, ``"non-physical longwave"`` (these three with NaN LST).

    Raises
    ------
    ValueError
        If a needed column is missing or ``broadband_emissivity`` is not a number in [0.8, 1].
    """
    where = frame.attrs.get("source", "in situ frame")
    missing = [c for c in ("lw_up_w_m2", "lw_down_w_m2", "qc") if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)} (read it with read_insitu_csv)")
    try:
        eps = float(broadband_emissivity)
    except (TypeError, ValueError):
        raise ValueError(f"broadband_emissivity must be a number, got {broadband_emissivity!r}") from None
    if not _BROADBAND_RANGE[0] <= eps <= _BROADBAND_RANGE[1]:
        raise ValueError(f"broadband_emissivity must be in [{_BROADBAND_RANGE[0]}, {_BROADBAND_RANGE[1]}], "
                         f"got {broadband_emissivity!r}")
    up = frame["lw_up_w_m2"].to_numpy(dtype=np.float64)
    down = frame["lw_down_w_m2"].to_numpy(dtype=np.float64)
    qc = frame["qc"].to_numpy()
    lst = radiometer_lst(up, down, eps, allow_nan=True)
    # the first reason that applies wins, in this order
    reason = np.full(len(frame), "ok", dtype=object)
    reason[qc == 1] = "suspect"
    reason[qc == _QC_MISSING] = "qc missing"
    reason[~np.isfinite(lst)] = "non-physical longwave"
    reason[~(np.isfinite(up) & np.isfinite(down))] = "gap"
    reason[qc == 2] = "qc bad"
    lst = np.where(np.isin(reason, ("qc bad", "gap", "non-physical longwave")), np.nan, lst)
    out = frame.copy()
    out["lst_k"] = lst
    out["reason"] = reason
    return out


def overpass_lst(
    frame: pd.DataFrame,
    time_utc: Any,
    *,
    window_min: float = 15.0,
    min_samples: int = 2,
    max_std_k: float = 1.5,
    use_suspect: bool = False,
) -> dict[str, Any]:
    """In situ LST at a satellite overpass: the mean of the good records within +-``window_min``.

    Parameters
    ----------
    frame : pandas.DataFrame
        Output of :func:`insitu_lst` (``time_utc``, ``lst_k``, ``reason``).
    time_utc : datetime-like
        Overpass time; naive values are UTC, tz-aware ones are converted.
    window_min : float, optional
        Half-width of the averaging window (min), 15 by default (inclusive at both ends).
    min_samples : int, optional
        Fewest good records for a result (2).
    max_std_k : float, optional
        Largest standard deviation (K, ddof 1) of the good records; above it the surface was changing
        (cloud shadow, wind) and no value is given (1.5 K).
    use_suspect : bool, optional
        Also average records flagged suspect (qc 1).

    Returns
    -------
    dict
        ``lst_k`` (K, NaN unless ``reason == "ok"``), ``n`` (good records), ``std_k`` (K, NaN below 2
        records), ``n_window`` (all records in the window) and ``reason``: ``"ok"``; ``"no data"`` (no
        record in the window); ``"no valid data"`` (records, none usable); ``"too few samples"``;
        ``"unstable"`` (std above ``max_std_k``).

    Raises
    ------
    ValueError
        If ``frame`` lacks ``time_utc``, ``lst_k`` or ``reason`` (run :func:`insitu_lst` first), or an
        argument is out of range.
    """
    where = frame.attrs.get("source", "in situ frame")
    missing = [c for c in ("time_utc", "lst_k", "reason") if c not in frame.columns]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(missing)} (run insitu_lst first)")
    if not window_min > 0:
        raise ValueError(f"window_min must be > 0 min, got {window_min!r}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int | np.integer) or min_samples < 1:
        raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
    if not max_std_k > 0:
        raise ValueError(f"max_std_k must be > 0 K, got {max_std_k!r}")
    t = utc_instant(time_utc, "time_utc")
    times = frame["time_utc"].to_numpy(dtype="datetime64[ns]")
    half = np.timedelta64(round(window_min * 60e9), "ns")
    in_window = np.abs(times - t) <= half
    good_reasons = ("ok", "suspect") if use_suspect else ("ok",)
    lst = frame["lst_k"].to_numpy(dtype=np.float64)
    good = in_window & np.isin(frame["reason"].to_numpy(dtype=object), good_reasons) & np.isfinite(lst)
    n_window, n = int(in_window.sum()), int(good.sum())
    values = lst[good]
    std = float(np.std(values, ddof=1)) if n >= 2 else float("nan")
    result: dict[str, Any] = {"lst_k": float("nan"), "n": n, "std_k": std, "n_window": n_window}
    if n_window == 0:
        result["reason"] = "no data"
    elif n == 0:
        result["reason"] = "no valid data"
    elif n < min_samples:
        result["reason"] = "too few samples"
    elif n >= 2 and std > max_std_k:
        result["reason"] = "unstable"
    else:
        result["reason"] = "ok"
        result["lst_k"] = float(values.mean())
    return result


def read_sites(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read the site table (``sites.csv``).

    Parameters
    ----------
    path : path
        CSV with at least the columns ``id``, ``region``, ``lon`` (deg E), ``lat`` (deg N); others
        (``name``, ``elevation_m``, ``land_cover``, ``instrument``, ``broadband_emissivity`` ...) are kept,
        numeric ones converted where they parse.

    Returns
    -------
    pandas.DataFrame
        One row per site in file order; ``id`` and ``region`` as str, ``lon``/``lat`` float64.

    Raises
    ------
    ValueError
        Naming the file: unreadable or empty, a required column missing, an empty id, duplicate ids
        (named), or lon/lat not numbers within [-180, 180] / [-90, 90] (line named).
    """
    p = Path(path)
    try:
        raw = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{p}: cannot read the site table ({exc})") from None
    _check_table(raw, _SITE_COLUMNS, p, "the site table")
    sites = raw.apply(lambda s: s.str.strip())
    empty = np.flatnonzero((sites["id"] == "").to_numpy())
    if empty.size:
        raise ValueError(f"{p}: column id: empty id at {_lines(empty, 2)}")
    dup = sites["id"][sites["id"].duplicated(keep=False)]
    if not dup.empty:
        raise ValueError(f"{p}: column id: duplicate site id(s) {', '.join(sorted(set(dup)))}")
    for col, limit in (("lon", 180.0), ("lat", 90.0)):
        values = pd.to_numeric(sites[col], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values) | (np.abs(values) > limit))
        if bad.size:
            raise ValueError(f"{p}: column {col}: not a number within [-{limit:g}, {limit:g}] at "
                             f"{_lines(bad, 2)} (e.g. {sites[col].iloc[bad[0]]!r})")
        sites[col] = values
    for col in sites.columns:
        if col in ("id", "region", "lon", "lat"):
            continue
        numeric = pd.to_numeric(sites[col], errors="coerce")
        if numeric.notna().all():
            sites[col] = numeric.astype(np.float64)
    sites.attrs = {"source": str(p)}
    return sites
