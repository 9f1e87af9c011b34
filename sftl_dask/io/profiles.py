"""Reader of user atmospheric profile tables on pressure levels (CSV or NetCDF).

Radiosonde ascents, reanalysis columns or another group's profile database come as
tables of levels. :func:`read_profile_table` turns them into
:class:`~sftl_dask.physics.atmosphere.AtmosphereProfile` objects for the simulation.

**CSV** (``.csv``, ``.csv.gz``): long format, one row per level. Columns:

=======================  =========  =================================================
column                   unit       meaning
=======================  =========  =================================================
``profile_id``           text       required; rows of one profile share it
``pressure_hpa``         hPa        required; strictly monotonic within a profile
                                    (surface first or top first)
``temperature_k``        K          required
``h2o_ppmv``             ppmv       humidity, one of these three is required
``q_g_kg``               g/kg       (specific humidity; used if no ``h2o_ppmv``)
``rh_percent``           %          (relative humidity over liquid water, WMO
                                    convention; used if neither of the above)
``o3_ppmv``              ppmv       optional; default: AFGL mid-latitude summer ozone
                                    interpolated in log-pressure
``altitude_km``          km         optional; default: hydrostatic integration from
                                    the surface altitude
``surface_altitude_km``  km         optional, constant within a profile; default 0
``co2_ppmv``             ppmv       optional, constant within a profile; default 330
=======================  =========  =================================================

**NetCDF** (``.nc``, ``.nc4``, ``.cdf``, ``.netcdf``): variables of the same names on dims
``(profile, level)`` (either order). The vertical dim may instead be ``pressure`` (or
``plev``/``lev``) with a 1-D pressure coordinate of that name (units ``hPa``, ``mbar`` or
``Pa``) used when there is no ``pressure_hpa`` variable. Profile ids come from the
``profile`` coordinate or a ``profile_id`` variable, else they are the profile index.
``surface_altitude_km`` and ``co2_ppmv`` are variables on the profile dim.

Profiles are returned in file order, levels from the surface up. Missing values are not
filled: a gap is an error.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import NDArray

from sftl_dask.physics.atmosphere import CO2_PPMV_DEFAULT, AtmosphereProfile, afgl
from sftl_dask.physics.constants import MOLAR_MASS_DRY_AIR, MOLAR_MASS_H2O
from sftl_dask.physics.profiles import hypsometric_altitude_km, saturation_vapour_pressure_hpa

__all__ = ["read_profile_table"]

_REQUIRED = ("pressure_hpa", "temperature_k")
#: Humidity columns in order of preference.
_HUMIDITY = ("h2o_ppmv", "q_g_kg", "rh_percent")
_OPTIONAL_LEVEL = ("o3_ppmv", "altitude_km")
_PER_PROFILE = ("surface_altitude_km", "co2_ppmv")
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zip")
_NETCDF_SUFFIXES = (".nc", ".nc4", ".cdf", ".netcdf")
_VERTICAL_DIMS = ("level", "pressure", "plev", "lev")
_PRESSURE_TO_HPA = {"hpa": 1.0, "mbar": 1.0, "millibar": 1.0, "mb": 1.0, "pa": 0.01, "kpa": 10.0}
_EPSILON = MOLAR_MASS_H2O / MOLAR_MASS_DRY_AIR


def read_profile_table(path: str | PathLike[str]) -> list[AtmosphereProfile]:
    """Read atmospheric profiles on pressure levels from a CSV or NetCDF table.

    See the module docstring for the layout and column names.

    Parameters
    ----------
    path : str or path-like
        A ``.csv`` (long format) or ``.nc`` file.

    Returns
    -------
    list of AtmosphereProfile
        One per profile, in file order, named by ``profile_id``, levels from the surface up.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Message starting with ``path``, naming the profile id and column where they apply: an
        unknown extension, a missing column or variable, a missing or non-numeric value in a
        used column, a profile with fewer than 3 levels, pressure not strictly monotonic, a
        per-profile column varying within a profile, or values out of physical range.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(_CSV_SUFFIXES):
        reader = _read_csv
    elif name.endswith(_NETCDF_SUFFIXES):
        reader = _read_netcdf
    else:
        raise ValueError(
            f"{path}: unknown extension {''.join(path.suffixes) or '(none)'!r}; expected one of "
            f"{', '.join(_CSV_SUFFIXES + _NETCDF_SUFFIXES)}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    profiles = [_build_profile(path, pid, levels, scalars) for pid, levels, scalars in reader(path)]
    if not profiles:
        raise ValueError(f"{path}: no profiles in the file")
    return profiles


_RawProfile = tuple[str, dict[str, NDArray[np.float64]], dict[str, NDArray[np.float64]]]


def _humidity_column(path: Path, names: set[str] | list[str]) -> str:
    for col in _HUMIDITY:
        if col in names:
            return col
    raise ValueError(f"{path}: missing humidity column: need one of {', '.join(_HUMIDITY)}")


def _read_csv(path: Path) -> list[_RawProfile]:
    try:
        df = pd.read_csv(path, dtype={"profile_id": str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse as CSV: {exc}") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("profile_id", *_REQUIRED) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; have {list(df.columns)}")
    hum = _humidity_column(path, set(df.columns))
    level_cols = [*_REQUIRED, hum, *(c for c in _OPTIONAL_LEVEL if c in df.columns)]
    scalar_cols = [c for c in _PER_PROFILE if c in df.columns]
    if df["profile_id"].isna().any():
        rows = (np.flatnonzero(df["profile_id"].isna().to_numpy()) + 2)[:5].tolist()
        raise ValueError(f"{path}: column 'profile_id' is empty on line(s) {rows}")
    numeric = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in level_cols + scalar_cols}
    out: list[_RawProfile] = []
    for pid, idx in df.groupby("profile_id", sort=False).indices.items():
        levels = {c: numeric[c][idx] for c in level_cols}
        scalars = {c: numeric[c][idx] for c in scalar_cols}
        out.append((str(pid), levels, scalars))
    return out


def _read_netcdf(path: Path) -> list[_RawProfile]:
    try:
        with xr.open_dataset(path) as opened:
            ds = opened.load()
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot read as NetCDF: {exc}") from None
    vert = next((d for d in _VERTICAL_DIMS if d in ds.dims), None)
    if vert is None:
        raise ValueError(f"{path}: no vertical dimension: need one of {', '.join(_VERTICAL_DIMS)}; "
                         f"have {list(ds.dims)}")
    others = [d for d in ds.dims if d != vert]
    if "profile" in others:
        prof = "profile"
    elif len(others) == 1:
        prof = others[0]
    elif not others:
        prof = None
    else:
        raise ValueError(f"{path}: cannot tell the profile dimension among {others}; name it 'profile'")
    n_prof = 1 if prof is None else ds.sizes[prof]
    n_lev = ds.sizes[vert]

    def level_var(name: str) -> NDArray[np.float64]:
        da = ds[name]
        if set(da.dims) - {vert, prof} or vert not in da.dims:
            raise ValueError(f"{path}: variable {name!r} has dims {da.dims}; expected ({prof}, {vert})")
        if prof is not None and prof in da.dims:
            arr = da.transpose(prof, vert).to_numpy()
        else:
            arr = np.broadcast_to(da.to_numpy(), (n_prof, n_lev))
        try:
            return np.asarray(arr, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: variable {name!r} is not numeric") from None

    def profile_var(name: str) -> NDArray[np.float64]:
        da = ds[name]
        if da.ndim == 0:
            return np.full(n_prof, float(da))
        if prof is None or da.dims != (prof,):
            raise ValueError(f"{path}: variable {name!r} has dims {da.dims}; expected ({prof},)")
        return da.to_numpy().astype(np.float64)

    names = set(ds.variables)
    levels: dict[str, NDArray[np.float64]] = {}
    if "pressure_hpa" in names:
        levels["pressure_hpa"] = level_var("pressure_hpa")
    elif vert != "level" and vert in names:
        units = str(ds[vert].attrs.get("units", "hPa")).strip().lower()
        if units not in _PRESSURE_TO_HPA:
            raise ValueError(f"{path}: coordinate {vert!r} has units {units!r}; expected hPa, mbar or Pa")
        levels["pressure_hpa"] = level_var(vert) * _PRESSURE_TO_HPA[units]
    else:
        raise ValueError(f"{path}: missing variable 'pressure_hpa' (or a pressure coordinate)")
    if "temperature_k" not in names:
        raise ValueError(f"{path}: missing variable 'temperature_k'")
    levels["temperature_k"] = level_var("temperature_k")
    hum = _humidity_column(path, names)
    levels[hum] = level_var(hum)
    for c in _OPTIONAL_LEVEL:
        if c in names:
            levels[c] = level_var(c)
    scalars = {c: profile_var(c) for c in _PER_PROFILE if c in names}

    if prof is not None and prof in ds.coords and ds[prof].dims == (prof,):
        ids = [_as_text(v) for v in ds[prof].to_numpy()]
    elif prof is not None and "profile_id" in names and ds["profile_id"].dims == (prof,):
        ids = [_as_text(v) for v in ds["profile_id"].to_numpy()]
    else:
        ids = [str(i) for i in range(n_prof)]
    return [
        (ids[i], {c: v[i] for c, v in levels.items()}, {c: v[i : i + 1] for c, v in scalars.items()})
        for i in range(n_prof)
    ]


def _as_text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _build_profile(path: Path, pid: str, levels: dict[str, NDArray[np.float64]],
                   scalars: dict[str, NDArray[np.float64]]) -> AtmosphereProfile:
    """One profile from its raw columns, checked, converted and ordered surface-up."""
    where = f"{path}: profile {pid!r}"
    p = levels["pressure_hpa"]
    if p.size < 3:
        raise ValueError(f"{where}: column 'pressure_hpa' has {p.size} level(s); at least 3 are needed")
    for col, values in {**levels, **scalars}.items():
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f"{where}: column {col!r} has {int(bad.sum())} missing or non-numeric value(s) "
                             f"(level index {np.flatnonzero(bad)[:5].tolist()})")
    for col, values in scalars.items():
        if np.ptp(values) > 0:
            raise ValueError(f"{where}: column {col!r} must be constant within a profile, "
                             f"spans {values.min():g}-{values.max():g}")
    dp = np.diff(p)
    if np.all(dp > 0):  # top first: turn surface-up
        levels = {c: v[::-1] for c, v in levels.items()}
        p = levels["pressure_hpa"]
    elif not np.all(dp < 0):
        k = int(np.flatnonzero(dp >= 0 if dp[0] < 0 else dp <= 0)[0]) + 1
        raise ValueError(f"{where}: column 'pressure_hpa' is not strictly monotonic "
                         f"({p[k]:g} hPa after {p[k - 1]:g} hPa at level index {k})")
    t = levels["temperature_k"]
    try:
        h2o = _h2o_ppmv(levels, p, t)
        o3 = levels["o3_ppmv"] if "o3_ppmv" in levels else _default_ozone_ppmv(p)
        if "altitude_km" in levels:
            z = levels["altitude_km"]
        else:
            z_s = float(scalars["surface_altitude_km"][0]) if "surface_altitude_km" in scalars else 0.0
            z = hypsometric_altitude_km(p, t, h2o, surface_altitude_km=z_s)
        co2 = float(scalars["co2_ppmv"][0]) if "co2_ppmv" in scalars else CO2_PPMV_DEFAULT
        return AtmosphereProfile(altitude_km=z, pressure_hpa=p, temperature_k=t, h2o_ppmv=h2o, o3_ppmv=o3,
                                 co2_ppmv=co2, name=pid)
    except ValueError as exc:
        msg = str(exc)
        msg = msg[len(pid) + 2 :] if msg.startswith(f"{pid}: ") else msg
        raise ValueError(f"{where}: {msg}") from None


def _h2o_ppmv(levels: dict[str, NDArray[np.float64]], p: NDArray[np.float64],
              t: NDArray[np.float64]) -> NDArray[np.float64]:
    """Water vapour volume mixing ratio (ppmv) from whichever humidity column the table has."""
    if "h2o_ppmv" in levels:
        return levels["h2o_ppmv"]
    if "q_g_kg" in levels:
        q = levels["q_g_kg"] * 1e-3
        if np.any((q < 0) | (q >= 1)):
            raise ValueError(f"q_g_kg spans [{q.min() * 1e3:g}, {q.max() * 1e3:g}] g/kg, outside [0, 1000)")
        # specific humidity q = eps x / (1 - x (1 - eps)) for vapour mole fraction x
        return q / (_EPSILON + q * (1.0 - _EPSILON)) * 1e6
    rh = levels["rh_percent"]
    if np.any((rh < 0) | (rh > 110)):
        raise ValueError(f"rh_percent spans [{rh.min():g}, {rh.max():g}] %, outside [0, 110]")
    try:
        e_sat = saturation_vapour_pressure_hpa(t, phase="liquid")
    except ValueError as exc:
        raise ValueError(f"rh_percent needs temperature_k within the saturation formula's range: {exc}") from None
    return rh * 1e-2 * e_sat / p * 1e6


def _default_ozone_ppmv(p_hpa: NDArray[np.float64]) -> NDArray[np.float64]:
    """AFGL mid-latitude summer ozone (ppmv) interpolated linearly in log-pressure."""
    ref = afgl("midlatitude_summer")
    return np.interp(-np.log(p_hpa), -np.log(ref.pressure_hpa), ref.o3_ppmv)
