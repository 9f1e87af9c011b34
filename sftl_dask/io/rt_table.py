"""Band-averaged radiative-transfer terms from an external code (MODTRAN, RTTOV, LOWTRAN): template and reader.

A group that runs its own radiative-transfer code brings its output to ``sftl simulate --rt-table`` as one CSV
table. :func:`write_rt_template` writes the rows to fill, with what the external run needs beside them;
:func:`read_rt_table` reads the filled table back, refusing missing rows and out-of-range values by name.

Files (for ``--out T.csv``)
---------------------------
``T.csv``, the rows to fill: one per profile x view angle x channel, in long format.

=====================  ===================  ==========================================================
column                 unit                 meaning
=====================  ===================  ==========================================================
``profile``            text                 the profile's name (``profile_id`` of its table, or the
                                            generator's ``gen000123``)
``vza_deg``            deg                  view zenith angle at the surface
``channel``            text                 ``bt_08_20``, ``bt_08_63``, ``bt_10_80``, ``bt_11_95``
``center_um``          um                   the channel's centre wavelength (for reading only)
``tau``                1                    surface-to-space transmittance along the view, in (0, 1]
``lup_w_m2_sr_um``     W m-2 sr-1 um-1      upwelling path (atmospheric) radiance at the sensor
``ldown_w_m2_sr_um``   W m-2 sr-1 um-1      hemispheric downwelling radiance at the surface
                                            (irradiance / pi); the same at every angle of a profile
=====================  ===================  ==========================================================

Each term is the channel's band average: the spectral term weighted by the spectral response (``T.srf.csv``,
linear between its nodes) times the wavelength step, divided by the sum of those weights
(:meth:`sftl_dask.physics.channels.Channel.weights`). The band model and the LOWTRAN7 recipe average that way.

``T.srf.csv``: ``channel``, ``wavelength_um``, ``response`` (the spectral response functions' nodes).

``T.profiles.csv``: every profile of the template as a profile table (the format of
:func:`sftl_dask.io.profiles.read_profile_table`: ``profile_id``, ``altitude_km``, ``pressure_hpa``,
``temperature_k``, ``h2o_ppmv``, ``o3_ppmv``, ``co2_ppmv``; levels from the surface up), so that the external
code runs the very atmospheres the simulation uses, generated ones included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from sftl_dask.physics.atmosphere import AtmosphereProfile
from sftl_dask.physics.channels import Channel, thermal_channels
from sftl_dask.physics.planck import planck_radiance
from sftl_dask.staging import staged_file

__all__ = ["RT_COLUMNS", "TEMPLATE_COLUMNS", "read_rt_table", "rt_template_paths", "write_rt_template"]

#: The columns a user fills, with their units.
RT_COLUMNS: dict[str, str] = {"tau": "1", "lup_w_m2_sr_um": "W m-2 sr-1 um-1", "ldown_w_m2_sr_um": "W m-2 sr-1 um-1"}
TEMPLATE_COLUMNS: tuple[str, ...] = ("profile", "vza_deg", "channel", "center_um", *RT_COLUMNS)
#: A band radiance above a black body at this temperature (K) cannot come from the atmosphere: refused.
MAX_RADIANCE_T_K = 350.0
#: Angles (deg) of the template and of the simulation match within this.
_ANGLE_TOL_DEG = 1e-6


def rt_template_paths(out: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """The three files of a template ``out`` (``T.csv``): the rows, ``T.srf.csv`` and ``T.profiles.csv``.

    Raises
    ------
    ValueError
        If ``out`` does not end in ``.csv``.
    """
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ValueError(f"{out}: the RT template is a CSV file; name it T.csv")
    stem = out.with_suffix("")
    return out, Path(f"{stem}.srf.csv"), Path(f"{stem}.profiles.csv")


def _profile_levels(profiles: Sequence[AtmosphereProfile]) -> pd.DataFrame:
    frames = [pd.DataFrame({"profile_id": p.name, "altitude_km": p.altitude_km, "pressure_hpa": p.pressure_hpa,
                            "temperature_k": p.temperature_k, "h2o_ppmv": p.h2o_ppmv, "o3_ppmv": p.o3_ppmv,
                            "co2_ppmv": p.co2_ppmv}) for p in profiles]
    return pd.concat(frames, ignore_index=True)


def write_rt_template(out: str | os.PathLike[str], profiles: Sequence[AtmosphereProfile],
                      vza_deg: Sequence[float], channels: Sequence[Channel] | None = None, *,
                      overwrite: bool = False) -> int:
    """Write the RT template ``out`` (``T.csv``) with ``T.srf.csv`` and ``T.profiles.csv`` beside it.

    Parameters
    ----------
    out : path
        The rows' file; must end in ``.csv``.
    profiles : sequence of AtmosphereProfile
        The simulation's profiles (unique names).
    vza_deg : sequence of float
        The simulation's view zenith angles (deg).
    channels : sequence of Channel, optional
        Default: the four VIMI TIR channels.
    overwrite : bool, optional
        Replace existing files.

    Returns
    -------
    int
        Rows to fill.

    Raises
    ------
    ValueError
        ``out`` not ending in ``.csv``, or duplicate profile names.
    FileExistsError
        If one of the three files exists and ``overwrite`` is false (nothing is written then).
    """
    paths = rt_template_paths(out)
    if not overwrite:
        for p in paths:
            if p.exists():
                raise FileExistsError(f"{p}: already exists (pass --overwrite to replace it)")
    names = [p.name for p in profiles]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"profiles: duplicate profile name(s) {', '.join(dup[:5])}")
    chans = tuple(channels or thermal_channels())
    grid = pd.MultiIndex.from_product([names, [float(v) for v in vza_deg], [c.name for c in chans]],
                                      names=["profile", "vza_deg", "channel"]).to_frame(index=False)
    grid["center_um"] = grid["channel"].map({c.name: round(0.5 * (c.lower_um + c.upper_um), 4) for c in chans})
    for col in RT_COLUMNS:
        grid[col] = np.nan
    srf = pd.concat([pd.DataFrame({"channel": c.name, "wavelength_um": c.wavelength_um, "response": c.response})
                     for c in chans], ignore_index=True)
    levels = _profile_levels(profiles)
    for path, frame in zip(paths, (grid, srf, levels), strict=True):
        with staged_file(path, replace=True) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.9g")
    return len(grid)


def _refuse_rows(path: Path, df: pd.DataFrame, bad: np.ndarray, what: str) -> None:
    """Raise naming the first row (file line, profile, angle, channel) where ``bad`` holds."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        r = df.iloc[i]
        raise ValueError(f"{path}: line {int(r['_line'])} (profile {r['profile']!r}, vza {r['vza_deg']:g} deg, channel "
                         f"{r['channel']}): {what} ({int(bad.sum())} row(s) like it)")


def _check_values(path: Path, df: pd.DataFrame, chans: Sequence[Channel]) -> None:
    for col in RT_COLUMNS:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        _refuse_rows(path, df, ~np.isfinite(v), f"{col} is empty or not a number (was the template filled?)")
        df[col] = v
    tau = df["tau"].to_numpy()
    bad_tau = (tau <= 0) | (tau > 1)
    if bad_tau.any():
        _refuse_rows(path, df, bad_tau, f"tau = {tau[bad_tau][0]:g} outside (0, 1]")
    b_max = df["channel"].map({c.name: float(planck_radiance(np.array([0.5 * (c.lower_um + c.upper_um)]),
                                                             MAX_RADIANCE_T_K)[0]) for c in chans}).to_numpy()
    for col in ("lup_w_m2_sr_um", "ldown_w_m2_sr_um"):
        v = df[col].to_numpy()
        bad = (v < 0) | (v > b_max)
        if bad.any():
            _refuse_rows(path, df, bad, f"{col} = {v[bad][0]:g} outside [0, B({MAX_RADIANCE_T_K:g} K) = "
                         f"{b_max[bad][0]:.3g}] W m-2 sr-1 um-1")


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"profile": str, "channel": str}, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse as CSV: {str(exc).splitlines()[0]}") from None
    df.columns = [str(c).strip() for c in df.columns]
    df["_line"] = np.arange(len(df)) + 2  # the file's line of each row (header on line 1)
    missing = [c for c in ("profile", "vza_deg", "channel", *RT_COLUMNS) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (see 'sftl rt-template')")
    if df.empty:
        raise ValueError(f"{path}: no rows")
    return df


def _check_keys(path: Path, df: pd.DataFrame, chans: Sequence[Channel]) -> None:
    names = {c.name for c in chans}
    vza = pd.to_numeric(df["vza_deg"], errors="coerce").to_numpy(np.float64)
    df["vza_deg"] = vza
    _refuse_rows(path, df, ~((vza >= 0) & (vza < 90)), "vza_deg is not an angle in [0, 90) deg")
    _refuse_rows(path, df, ~df["channel"].isin(names).to_numpy(),
                 f"unknown channel; expected one of {', '.join(sorted(names))}")
    _refuse_rows(path, df, df["profile"].isna().to_numpy(), "profile is empty")
    _refuse_rows(path, df, df.duplicated(["profile", "vza_deg", "channel"], keep="first").to_numpy(),
                 "duplicate row (this profile, angle and channel appear earlier)")


def read_rt_table(path: str | os.PathLike[str], profiles: Sequence[str], vza_deg: Sequence[float],
                  channels: Sequence[Channel] | None = None) -> pd.DataFrame:
    """Read a filled RT table (the template's format) as :class:`~sftl_dask.physics.rtm.TableBackend` takes it.

    Parameters
    ----------
    path : path
        The filled ``T.csv``.
    profiles : sequence of str
        Names of the simulation's profiles: each must have every angle and channel. Rows of other
        profiles are ignored.
    vza_deg : sequence of float
        The simulation's view zenith angles (deg).
    channels : sequence of Channel, optional
        Default: the four VIMI TIR channels.

    Returns
    -------
    pandas.DataFrame
        One row per (profile, vza_deg) of ``profiles`` x ``vza_deg``, columns ``profile``, ``vza_deg``,
        ``tau_<ch>``, ``lup_<ch>``, ``ldown_<ch>`` (``ldown``: the mean over the profile's angles).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        One line starting with ``path``: not CSV, a missing column, an unknown channel, a duplicate row, an
        empty or non-numeric value, tau outside (0, 1], a radiance negative or above a 350 K black body
        (these name the file line, profile, angle and channel), a profile of the simulation with no rows, or
        one without an angle or channel (naming the profile and angle).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    chans = tuple(channels or thermal_channels())
    df = _read_csv(path)
    _check_keys(path, df, chans)
    wanted = set(profiles)
    df = df[df["profile"].isin(wanted)].reset_index(drop=True)
    have = set(df["profile"])
    missing = [p for p in profiles if p not in have]
    if missing:
        raise ValueError(f"{path}: no rows for profile {missing[0]!r} ({len(missing)} of the simulation's "
                         f"{len(wanted)} profiles missing)")
    _check_values(path, df, chans)
    return _wide(path, df, profiles, [float(v) for v in vza_deg], chans)


def _wide(path: Path, df: pd.DataFrame, profiles: Sequence[str], vza: Sequence[float],
          chans: Sequence[Channel]) -> pd.DataFrame:
    """The long rows as one row per (profile, angle), checking every angle and channel is there (vectorised)."""
    names = [c.name for c in chans]
    ang = np.asarray(vza, dtype=np.float64)
    near = np.abs(df["vza_deg"].to_numpy()[:, None] - ang[None, :]) <= _ANGLE_TOL_DEG
    df = df.assign(angle=np.where(near.any(axis=1), near.argmax(axis=1), -1))
    ldown = df.pivot_table(index="profile", columns="channel", values="ldown_w_m2_sr_um", aggfunc="mean")
    at = df[df["angle"] >= 0].pivot_table(index=["profile", "angle"], columns="channel",
                                          values=["tau", "lup_w_m2_sr_um"], aggfunc="first")
    full = pd.MultiIndex.from_product([list(profiles), range(ang.size)], names=["profile", "angle"])
    at = at.reindex(index=full, columns=pd.MultiIndex.from_product([["tau", "lup_w_m2_sr_um"], names]))
    ldown = ldown.reindex(index=list(profiles), columns=names)
    if ldown.isna().to_numpy().any():
        i, j = np.argwhere(ldown.isna().to_numpy())[0]
        raise ValueError(f"{path}: profile {profiles[i]!r} has no rows for channel {names[j]}")
    gaps = at.isna().to_numpy()
    if gaps.any():
        k, j = np.argwhere(gaps)[0]
        name, a = full[k]
        have = sorted(set(df.loc[df["profile"] == name, "vza_deg"]))
        if not np.any(np.abs(np.asarray(have) - ang[a]) <= _ANGLE_TOL_DEG):
            raise ValueError(f"{path}: profile {name!r} has no rows at vza {ang[a]:g} deg (has "
                             f"{', '.join(f'{v:g}' for v in have)} deg)")
        raise ValueError(f"{path}: profile {name!r} at vza {ang[a]:g} deg has no row for channel "
                         f"{names[j % len(names)]}")
    out = pd.DataFrame({"profile": full.get_level_values(0), "vza_deg": ang[full.get_level_values(1)]})
    for c in names:
        out[f"tau_{c}"] = at[("tau", c)].to_numpy()
        out[f"lup_{c}"] = at[("lup_w_m2_sr_um", c)].to_numpy()
        out[f"ldown_{c}"] = np.repeat(ldown[c].to_numpy(), ang.size)
    return out
