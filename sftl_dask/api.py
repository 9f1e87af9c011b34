"""The LST time-series API: :func:`open_lst` and the ``ds.sftl`` accessor.

``import sftl_dask`` registers the accessor (as ``import rioxarray`` registers ``.rio``)::

    import sftl_dask
    ds = sftl_dask.open_lst("lst/")                  # lazy, Dask-backed, complete time steps by time
    good = ds.sftl.good()                            # produced, inside the pre-training range, not cloud-adjacent
    series = good.sftl.at(lon=115.79, lat=40.35)     # one pixel's series, a DataFrame
    table = good.sftl.at_sites(sites)                # every site's series, one tidy DataFrame
    table = sftl_dask.at_sites("lst/", sites)        # the same across every zone of a root, in one call
    monthly = good.sftl.composite("MS", how="median", min_count=2)   # lst, lst_uncertainty, n_obs
    anom = good.sftl.anomaly(good.sftl.climatology("month"))

Derived products (composites, climatologies, anomalies) are datasets of their own: CF attributes of their own
(no valid range or ancillary variables inherited from the cube), ``cell_methods`` saying how they were made,
``n_obs`` (not ``count``, which would shadow :meth:`xarray.Dataset.count`). The accessor's point and plot verbs
work on them; the masks need ``qc`` and refuse in one line naming what the dataset is.

Uncertainty of aggregates. The retrieval's per-pixel uncertainty has two parts
(:mod:`sftl_dask.models.error_model`): ``sigma_model`` (the network's error in the simulation's
conditions, different from one scene to the next: treated as random) and ``sigma_scene`` (what real
scenes add: ancillary-data and site errors with their bias: treated as systematic, fully correlated,
never divided by sqrt(n)). The LST store names the systematic part in its ``uncertainty_systematic_fraction``
attribute (the share ``s`` of ``lst_uncertainty**2`` the scene term holds, the same for every pixel with a
multiplicative scene term: ``sigma_sys**2 = s * sigma**2`` per value, the rest random), else in its
``uncertainty_systematic_k`` (one systematic part in K for every pixel, an older store or another form); where both
are absent, the whole uncertainty is taken as systematic (the conservative choice). "Systematic" here means fully
correlated over the period's time steps at a pixel: the scene term holds the region's bias, which persists from
scene to scene, and its scene-to-scene part is not divided by ``n`` either (an upper bound; docs/uncertainty.md).
An aggregate of ``n`` values then has (:func:`uncertainty_split`, :func:`composite_variance`)::

    sigma**2 = mean(sigma_sys**2) + f * mean(sigma_rand**2) / n

with ``f = 1`` for a mean, ``pi / 2`` for a median (the efficiency of the median of a normal sample), and no
division by ``n`` (``f = n``) for a minimum or maximum, which are single values. Pixels of a
spatial window (:meth:`SftlAccessor.at` with ``how="mean"``) share the scene's atmosphere: their
uncertainty is the mean of theirs, not reduced.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pyproj
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from sftl_dask import plotting
from sftl_dask.geo import pixel_index
from sftl_dask.io.export import to_cog, to_netcdf
from sftl_dask.io.insitu import read_sites
from sftl_dask.io.location import Location, exists
from sftl_dask.io.lst import LST_OK_VAR
from sftl_dask.io.stores import CubeRoot, mosaic, open_store
from sftl_dask.rechunk import timeseries_copy

__all__ = ["COMPOSITE_FACTOR", "GOOD_MASKS", "SftlAccessor", "SparseMaskWarning", "at_sites", "composite_attrs",
           "composite_variance", "locate", "nanmedian_first_axis", "open_lst", "systematic_fraction", "systematic_k",
           "uncertainty_split"]

#: Flags :meth:`SftlAccessor.good` masks: outside the model's pre-training range, or near a cloud.
GOOD_MASKS = (
    "wvc_outside_pretraining_range",
    "bt_outside_pretraining_range",
    "vza_outside_pretraining_range",
    "emissivity_outside_pretraining_range",
    "cloud_adjacent",
)
#: Variables an LST dataset must hold.
_REQUIRED = ("lst", "lst_uncertainty", "qc")
#: How a composite reduces, and the factor ``f`` of its random uncertainty (module docstring); public for the
#: composite stores' numpy-level tasks (:mod:`sftl_dask.composites`).
COMPOSITE_FACTOR = {"mean": 1.0, "median": math.pi / 2, "min": None, "max": None}
#: The CF cell method of each reduction (CF-1.11 appendix E: ``minimum``/``maximum``, not ``min``/``max``).
_CF_METHOD = {"mean": "mean", "median": "median", "min": "minimum", "max": "maximum"}
#: Composite periods by pandas frequency: (the period, its adjective, the strftime of a period's label).
_PERIODS = {"MS": ("month", "monthly", "%b %Y"), "QS-DEC": ("season", "seasonal", "%b %Y (3 months)"),
            "YS": ("year", "yearly", "%Y")}
_CLIM_BY = ("month", "dayofyear")
#: Variables a point series carries when the dataset has them, in this order (``lst`` first).
_POINT_VARS = ("lst", "lst_uncertainty", "qc", "n_obs", "lst_std")
#: A mask or good() that leaves less than this fraction of the produced pixels warns (:class:`SparseMaskWarning`).
SPARSE_FRACTION = 0.01
#: qc flags of pixels with no LST (not produced).
_NOT_PRODUCED = ("cloud", "not_covered", "missing_ancillary")
#: Attributes that tie a dataset to its store and to the masks applied to it.
_STORE_ATTR = "sftl_store"
_MASK_ATTR = "sftl_masked_flags"
_MAXUNC_ATTR = "sftl_max_uncertainty_k"


class SparseMaskWarning(UserWarning):
    """A mask (or :meth:`SftlAccessor.good`) left less than 1 % of the produced pixels."""


def _check_lst(ds: xr.Dataset, where: str) -> None:
    missing = [v for v in _REQUIRED if v not in ds.variables]
    if missing:
        raise ValueError(f"{where}: not an LST cube: variable {missing[0]!r} missing "
                         f"(it holds {', '.join(sorted(map(str, ds.data_vars))) or 'nothing'})")


def _what(ds: xr.Dataset) -> str:
    """What a dataset is, in words: the LST cube or a product derived from it (read from its attributes)."""
    a = ds.attrs
    if a.get("sftl_quantity") == "anomaly":
        return f"an LST anomaly (against a climatology by {a.get('sftl_climatology_by')})"
    if "sftl_composite_how" in a:
        freq = str(a.get("sftl_composite_freq"))
        return f"a {_PERIODS.get(freq, ('', f'{freq}'))[1]} {a['sftl_composite_how']} composite"
    if "sftl_climatology_by" in a:
        return f"a climatology by {a['sftl_climatology_by']}"
    return "an LST cube" if all(v in ds.variables for v in _REQUIRED) else "a dataset"


def _holds(ds: xr.Dataset) -> str:
    dims = ", ".join(map(str, ds["lst"].dims)) if "lst" in ds else ", ".join(map(str, ds.dims))
    return f"{', '.join(map(str, ds.data_vars)) or 'no variable'} over ({dims})"


def _need(ds: xr.Dataset, verb: str, names: Sequence[str], hint: str = "") -> None:
    """Refuse in one line, saying what the dataset is, when it lacks a variable ``verb`` needs."""
    missing = [v for v in names if v not in ds.variables]
    if missing:
        raise ValueError(f"ds.sftl.{verb}: {_what(ds)} ({_holds(ds)}) has no {missing[0]!r}{hint}")


def composite_attrs(freq: str, how: str) -> dict[str, dict[str, Any]]:
    """CF attributes of a composite's variables (``lst``, ``lst_uncertainty``, ``n_obs``): its own, none
    inherited from the cube (no valid range, no ancillary variables that are not there).

    The one source of them: :meth:`SftlAccessor.composite` and the composite stores
    (:func:`sftl_dask.composites.composite_variables`) both use it.

    Parameters
    ----------
    freq : str
        A pandas frequency (``"MS"``, ``"QS-DEC"``, ``"YS"`` are named month, season, year).
    how : {"median", "mean", "min", "max"}
        The reduction of each pixel's values in a period.

    Returns
    -------
    dict
        Variable name -> attributes.
    """
    period, adjective, _ = _PERIODS.get(freq, (f"period ({freq})", f"per-{freq}", ""))
    method = _CF_METHOD[how]
    return {
        "lst": {"units": "K", "standard_name": "surface_temperature", "units_metadata": "temperature: on_scale",
                "long_name": f"{adjective} {how} land surface temperature",
                "cell_methods": f"area: mean where land time: {method} (unmasked values of each {period})"},
        "lst_uncertainty": {"units": "K", "standard_name": "surface_temperature standard_error",
                            "units_metadata": "temperature: difference",
                            "long_name": f"standard uncertainty of the {adjective} {how} LST (1 sigma)",
                            "comment": "systematic part not reduced by sqrt(n); random part as the reduction allows"},
        "n_obs": {"units": "1", "long_name": f"number of LST values in the {period}",
                  "cell_methods": f"time: sum (unmasked values of each {period})"},
    }


def _attrs(da: xr.DataArray, attrs: Mapping[str, Any]) -> xr.DataArray:
    """``da`` with exactly ``attrs`` (xarray's arithmetic and reductions may keep the cube's)."""
    out = da.copy(deep=False)
    out.attrs = dict(attrs)
    return out


def _time_attrs(freq: str) -> dict[str, str]:
    period = _PERIODS.get(freq, (f"period ({freq})",))[0]
    return {"standard_name": "time", "long_name": f"start of the {period} (UTC)", "axis": "T"}


def _climatology_attrs(by: str) -> dict[str, dict[str, Any]]:
    """CF attributes of a climatology's variables (CF-1.11 section 7.4: ``within years ... over years``)."""
    each = "month" if by == "month" else "day of the year"
    pooled = f"(all values of each {each}, pooled over the years)"
    return {
        "lst": {"units": "K", "standard_name": "surface_temperature", "units_metadata": "temperature: on_scale",
                "long_name": f"mean land surface temperature of each {each} over the years",
                "cell_methods": f"time: mean within years time: mean over years {pooled}"},
        "lst_std": {"units": "K", "units_metadata": "temperature: difference",
                    "long_name": f"standard deviation of land surface temperature within each {each} over the years",
                    "cell_methods": f"time: standard_deviation within years time: standard_deviation over years "
                                    f"{pooled}"},
        "n_obs": {"units": "1", "long_name": f"number of LST values of each {each} over the years",
                  "cell_methods": f"time: sum within years time: sum over years {pooled}"},
        by: {"long_name": "month of the year" if by == "month" else "day of the year", "units": "1"},
    }


def open_lst(path: str | os.PathLike[str], grid: str | tuple[float, float] | None = None, *,
             complete_only: bool = True, zone: str | None = None) -> xr.Dataset:
    """Open an LST cube lazily: one store, one tile of an LST root, or a zone's tiles as one mosaic.

    Parameters
    ----------
    path : path or str
        An LST store (``<tile>.zarr``) or an LST root (a folder of them, as ``sftl retrieve`` writes
        for a scene-cube root); either may be an fsspec URL (``s3://bucket/lst``, credentials from the
        environment: :mod:`sftl_dask.io.location`).
    grid : str or (float, float), optional
        One tile of a root: its name, or a ``(lon, lat)`` point (deg E, deg N) the tile must hold (how a
        site finds its tile). Default: every tile of the root's zone, mosaicked
        (:func:`sftl_dask.io.stores.mosaic`).
    complete_only : bool
        Keep only time steps whose retrieval completed (``retrieve_ok``), sorted by time.
    zone : str, optional
        UTM zone (``50N``) whose tiles to mosaic when the root holds several zones.

    Returns
    -------
    xarray.Dataset
        Dask-backed ``lst`` (K), ``lst_uncertainty`` (K), ``qc`` (bit flags), ``vza`` (degree) over
        ``(time, y, x)``, with the CRS in ``spatial_ref`` (``ds.rio.crs``) and the ``.sftl`` accessor.
        The per-time metadata (``scene_id``, ``source``, ``checksum``, ``retrieve_ok``) are coordinates of
        ``time`` held in memory, so ``ds.chunks`` works and selections keep them.

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path``.
    ValueError
        If the path holds no LST store, the tile or zone is unknown or no tile holds the point, several
        zones and none is named (the message lists them and how to pick one), or a store lacks ``lst``,
        ``lst_uncertainty`` or ``qc``.
    """
    root = CubeRoot.of(path, skip_copies=True)
    if not exists(root.path):
        raise FileNotFoundError(f"{root.path}: no such file or folder (expected an LST store or a folder of them)")
    stores = root.stores()
    if not stores:
        raise ValueError(f"{root.path}: no LST store here (expected an LST store or a folder of them)")
    if grid is None:
        zones = root.zones()
        if zone is None and len(zones) > 1:
            held = "; ".join(f"{z}: {', '.join(t)}" for z, t in zones.items())
            raise ValueError(f"{root.path}: holds {len(zones)} zones ({held}); open one with "
                             f"open_lst(path, zone={next(iter(zones))!r}), a tile with grid=, or the tile of a point "
                             "with grid=(lon, lat); sftl_dask.at_sites(path, sites) reads sites in every zone")
        picked = root.zone(zone)
        if len(picked) > 1:
            for st in picked.values():
                _check_lst(open_store(st), str(st))
            return _time_coords(mosaic(picked, ok_var=LST_OK_VAR, complete_only=complete_only))
        store = next(iter(picked.values()))
    elif isinstance(grid, str):
        store = root.tile(grid)
    else:
        lon, lat = (float(v) for v in grid)
        hits = root.holding(lon, lat)
        if not hits:
            raise ValueError(f"{root.path}: the point lon={lon:g}, lat={lat:g} lies outside every tile "
                             f"({', '.join(stores)})")
        store = hits[0]
    ds = _time_coords(_open_store(store))
    if complete_only:
        ok = ds[LST_OK_VAR].values if LST_OK_VAR in ds.variables else np.ones(ds.sizes["time"], dtype=bool)
        ds = ds.isel(time=np.flatnonzero(ok)).sortby("time")
    ds.attrs[_STORE_ATTR] = str(store)
    return ds


def _open_store(store: Location) -> xr.Dataset:
    ds = open_store(store)
    _check_lst(ds, str(store))
    return ds


def _time_coords(ds: xr.Dataset) -> xr.Dataset:
    """The per-time variables (``scene_id``, ``source``, ``checksum``, ``retrieve_ok``) as in-memory coordinates
    of ``time``: they are chunked unlike the rasters (``ds.chunks`` would fail) and belong to each step."""
    names = [v for v in ds.data_vars if ds[v].dims == ("time",)]
    if not names:
        return ds
    loaded = dict(zip(names, dask.compute(*[ds[v].data for v in names]), strict=True))
    return ds.assign_coords({v: ("time", np.asarray(loaded[v]), ds[v].attrs) for v in names})


def at_sites(path: str | os.PathLike[str], sites: pd.DataFrame | str | os.PathLike[str], *, window: int = 1,
             how: str = "nearest", good: bool = False, max_uncertainty: float | None = None,
             complete_only: bool = True) -> pd.DataFrame:
    """Every site's series from an LST root, across all of its zones, in one tidy table.

    Each zone is opened as :func:`open_lst` does (its tiles mosaicked) and each site read from the first zone
    whose grid holds it (:meth:`SftlAccessor.at_sites`).

    Parameters
    ----------
    path : path or str
        An LST root (or one store).
    sites : pandas.DataFrame or path
        Columns ``id`` (or ``site``), ``lon`` (deg E), ``lat`` (deg N); or a ``sites.csv`` path.
    window, how
        As in :meth:`SftlAccessor.at`.
    good : bool
        Read :meth:`SftlAccessor.good` values (masked flags NaN), not every produced value.
    max_uncertainty : float, optional
        With ``good``: also drop values whose uncertainty exceeds this (K).
    complete_only : bool
        As in :func:`open_lst`.

    Returns
    -------
    pandas.DataFrame
        Columns ``time``, ``site``, ``zone``, ``lst``, ``lst_uncertainty``, ``qc``, ``n_valid``; sorted by site and
        time. Sites in no zone are left out with a warning (listed in ``attrs["outside"]``).

    Raises
    ------
    FileNotFoundError
        If nothing exists at ``path``.
    ValueError
        If no site lies in any zone, or as :func:`open_lst` and :meth:`SftlAccessor.at_sites`.
    """
    table = _site_table(sites)
    root = CubeRoot.of(path, skip_copies=True)
    if not exists(root.path):
        raise FileNotFoundError(f"{root.path}: no such file or folder (expected an LST root)")
    left, parts = table, []
    for zone in root.zones():
        ds = open_lst(path, zone=zone, complete_only=complete_only)
        if good:
            ds = ds.sftl.good(max_uncertainty=max_uncertainty, check=False)
        inside = np.array([_inside(ds, s.lon, s.lat, window // 2) for s in left.itertuples(index=False)], bool)
        if inside.any():
            part = ds.sftl.at_sites(left[inside], window=window, how=how)
            parts.append(part.assign(zone=zone))
            left = left[~inside]
    outside = [str(i) for i in left["id"]]
    if not parts:
        raise ValueError(f"{root.path}: no site ({', '.join(outside)}) lies inside a zone ({', '.join(root.zones())})")
    if outside:
        warnings.warn(f"sites in no zone of {root.path}, left out: {', '.join(outside)}", stacklevel=2)
    out = pd.concat(parts, ignore_index=True)
    out = out[["time", "site", "zone", *[c for c in out.columns if c not in ("time", "site", "zone")]]]
    out = out.sort_values(["site", "time"], kind="stable").reset_index(drop=True)
    out.attrs["outside"] = outside
    return out


def _inside(ds: xr.Dataset, lon: float, lat: float, margin: int) -> bool:
    try:
        locate(ds, [lon], [lat], margin=margin)
    except ValueError:
        return False
    return True


def locate(ds: xr.Dataset, lon: Sequence[float] | np.ndarray, lat: Sequence[float] | np.ndarray, *,
           margin: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel (row, column) of each point: the pixel whose area holds it.

    Parameters
    ----------
    ds : xarray.Dataset
        A cube with ``x``/``y`` pixel-centre coordinates (m) on a regular grid and a CRS (``ds.rio.crs``).
    lon, lat : array_like
        Points (deg E, deg N, WGS 84).
    margin : int
        Pixels each point must keep from the grid's edge (a window's half width).

    Returns
    -------
    rows, cols : numpy.ndarray
        int64 indices into ``y`` and ``x``.

    Raises
    ------
    ValueError
        Naming the first point that lies outside the grid (less ``margin``).
    """
    crs = ds.rio.crs
    if crs is None:
        raise ValueError("the dataset has no CRS (spatial_ref); open it with sftl_dask.open_lst")
    lon = np.atleast_1d(np.asarray(lon, dtype=np.float64))
    lat = np.atleast_1d(np.asarray(lat, dtype=np.float64))
    bad = ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90.0) & (np.abs(lon) <= 360.0))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        swapped = " (lon and lat swapped?)" if abs(lon[k]) <= 90.0 < abs(lat[k]) <= 180.0 else ""
        raise ValueError(f"the point lon={lon[k]:g}, lat={lat[k]:g} is not a longitude (deg E) and latitude "
                         f"(deg N, -90..90){swapped}")
    x, y = ds["x"].values, ds["y"].values
    with np.errstate(all="ignore"), warnings.catch_warnings():  # far points project to inf: the check below says so
        warnings.simplefilter("ignore", RuntimeWarning)
        rows, cols = pixel_index(crs, x, y, lon, lat)
    dx, dy = float(x[1] - x[0]), float(y[1] - y[0])  # dy < 0: north up
    inside = (rows >= margin) & (rows < y.size - margin) & (cols >= margin) & (cols < x.size - margin)
    if not inside.all():
        k = int(np.flatnonzero(~inside)[0])
        raise ValueError(f"the point lon={lon[k]:g}, lat={lat[k]:g} lies outside the grid "
                         f"(x {x[0] - dx / 2:.0f}..{x[-1] + dx / 2:.0f} m, "
                         f"y {y[-1] + dy / 2:.0f}..{y[0] - dy / 2:.0f} m"
                         f"{f', less a {margin} px margin' if margin else ''})")
    return rows, cols


def _flag_table(qc: xr.DataArray) -> dict[str, tuple[int, int]]:
    """Flag name -> (mask, value) from the ``qc`` variable's CF attributes."""
    names = str(qc.attrs.get("flag_meanings", "")).split()
    masks = np.atleast_1d(qc.attrs.get("flag_masks", []))
    values = np.atleast_1d(qc.attrs.get("flag_values", masks))
    if not names or len(names) != len(masks) or len(names) != len(values):
        raise ValueError("variable 'qc': flag_meanings / flag_masks / flag_values missing or of different lengths")
    return {n: (int(m), int(v)) for n, m, v in zip(names, masks, values, strict=True)}


def _flag_set(qc: Any, table: Mapping[str, tuple[int, int]], flags: Iterable[str]) -> Any:
    """True where any of the flags is set (numpy or xarray ``qc``)."""
    hit = None
    for f in flags:
        mask, value = table[f]
        one = (qc & mask) == value
        hit = one if hit is None else hit | one
    return hit


def _masked(lst: Any, unc: Any, qc: Any, table: Mapping[str, tuple[int, int]], flags: Sequence[str],
            max_unc: float | None) -> tuple[Any, Any]:
    """``lst`` and ``lst_uncertainty`` set to NaN where a flag is set or the uncertainty is too large."""
    drop = _flag_set(qc, table, flags) if flags else None
    if max_unc is not None:
        big = unc > max_unc
        drop = big if drop is None else drop | big
    if drop is None:
        return lst, unc
    if isinstance(lst, xr.DataArray):
        return lst.where(~drop), unc.where(~drop)
    return np.where(drop, np.nan, lst), np.where(drop, np.nan, unc)


@xr.register_dataset_accessor("sftl")
class SftlAccessor:
    """Time-series methods of an LST dataset (``ds.sftl``); see the module docstring."""

    def __init__(self, ds: xr.Dataset) -> None:
        self._ds = ds
        self._ts: tuple[Path, xr.Dataset] | None = None  # the time-series copy, opened once per dataset

    # ----------------------------------------------------------------------------------- masks
    @property
    def flags(self) -> dict[str, tuple[int, int]]:
        """The ``qc`` flags: name -> (mask, value); a flag is set where ``qc & mask == value``."""
        _need(self._ds, "flags", ("qc",), ": masks apply to the LST cube (ds.sftl.good().sftl.composite(...))")
        return _flag_table(self._ds["qc"])

    def mask(self, flags: Sequence[str] | str = (), *, max_uncertainty: float | None = None,
             check: bool = True) -> xr.Dataset:
        """Set ``lst`` and ``lst_uncertainty`` to NaN where any of the named ``qc`` flags is set.

        Parameters
        ----------
        flags : sequence of str
            Flag names of ``qc`` (``ds.sftl.flags``), e.g. ``["cloud_adjacent", "uncertainty_gt_3k"]``.
        max_uncertainty : float, optional
            Also mask pixels whose ``lst_uncertainty`` exceeds this (K).
        check : bool
            Count what the mask leaves (one pass over ``qc`` and ``lst_uncertainty``; on a large lazy cube,
            a read of both) and warn (:class:`SparseMaskWarning`, once, with the count of each flag) when it
            leaves less than 1 % of the produced pixels.

        Returns
        -------
        xarray.Dataset
            Lazy; ``qc`` unchanged. The masks are recorded in the attributes, so :meth:`at` reading a
            time-series copy applies them too.

        Raises
        ------
        ValueError
            Naming an unknown flag (and listing the known ones), or if the dataset has no ``qc`` (a
            composite, a climatology: the message says which).
        """
        flags = [flags] if isinstance(flags, str) else list(flags)
        _need(self._ds, "mask", ("qc", "lst", "lst_uncertainty"),
              ": masks apply to the LST cube (ds.sftl.good().sftl.composite(...))")
        table = self.flags
        unknown = [f for f in flags if f not in table]
        if unknown:
            raise ValueError(f"unknown qc flag {unknown[0]!r} (flags: {', '.join(table)})")
        if max_uncertainty is not None and not (max_uncertainty > 0):
            raise ValueError(f"max_uncertainty {max_uncertainty!r} must be a positive number of K")
        ds = self._ds
        lst, unc = _masked(ds["lst"], ds["lst_uncertainty"], ds["qc"], table, flags, max_uncertainty)
        out = ds.assign(lst=lst.assign_attrs(ds["lst"].attrs),
                        lst_uncertainty=unc.assign_attrs(ds["lst_uncertainty"].attrs))
        done = [f for f in str(ds.attrs.get(_MASK_ATTR, "")).split() if f]
        out.attrs[_MASK_ATTR] = " ".join(dict.fromkeys([*done, *flags]))
        if max_uncertainty is not None:
            prev = ds.attrs.get(_MAXUNC_ATTR)
            out.attrs[_MAXUNC_ATTR] = float(min(max_uncertainty, prev) if prev is not None else max_uncertainty)
        if check:
            _warn_if_sparse(ds, table, [*done, *flags], out.attrs.get(_MAXUNC_ATTR))
        return out

    def good(self, *, max_uncertainty: float | None = None, check: bool = True) -> xr.Dataset:
        """Only good-quality LST: produced, inside the model's pre-training range, not next to a cloud.

        It keeps values of any uncertainty: pass ``max_uncertainty`` to drop the uncertain ones (the warning of
        ``check`` says how many kept values have sigma > 3 K).

        Parameters
        ----------
        max_uncertainty : float, optional
            Also drop pixels whose uncertainty exceeds this (K).
        check : bool
            As in :meth:`mask`; also warns when most of the values kept have an uncertainty above 3 K.

        Returns
        -------
        xarray.Dataset
            :meth:`mask` with :data:`GOOD_MASKS` (those the cube's ``qc`` describes).
        """
        return self.mask([f for f in GOOD_MASKS if f in self.flags], max_uncertainty=max_uncertainty, check=check)

    # ----------------------------------------------------------------------------------- points
    def at(self, lon: float, lat: float, *, window: int = 1, how: str = "nearest") -> pd.DataFrame:
        """One point's time series (of the LST cube, a composite, a climatology or an anomaly).

        A pandas DataFrame, not a lazy xarray object: the values of a window are read and reduced at once
        (one read of the chunks that hold the point); ``.to_xarray()`` is one call away.

        Parameters
        ----------
        lon, lat : float
            The point (deg E, deg N).
        window : {1, 3, 5}
            Side of the square pixel window centred on the point's pixel.
        how : {"nearest", "mean"}
            ``nearest``: the valid pixel of the window nearest the centre (the centre pixel when valid);
            ``mean``: the mean of the window's valid pixels.

        Returns
        -------
        pandas.DataFrame
            Indexed by ``time`` (or the dataset's own leading dimension: ``month`` of a climatology):
            ``lst`` (K), then those of ``lst_uncertainty`` (K), ``qc`` (of the centre pixel for ``nearest``;
            OR of the window's produced pixels for ``mean``), ``n_obs``, ``lst_std`` the dataset holds, and
            ``n_valid`` (valid pixels of the window). Every step has a row; ``lst`` is NaN where none was valid.

        Raises
        ------
        ValueError
            If the point lies outside the grid, or ``window`` / ``how`` is not one of the choices.
        """
        if window in (1, 3, 5):
            locate(self._ds, [lon], [lat], margin=window // 2)  # a point outside: say where the grid is
        table = self.at_sites(pd.DataFrame({"id": ["point"], "lon": [lon], "lat": [lat]}), window=window, how=how)
        return table.drop(columns=["site"]).set_index(table.columns[0])

    def at_sites(self, sites: pd.DataFrame | str | os.PathLike[str], *, window: int = 1,
                 how: str = "nearest") -> pd.DataFrame:
        """Every site's time series in one tidy table, reading only the chunks that hold the sites.

        Parameters
        ----------
        sites : pandas.DataFrame or path
            Columns ``id`` (or ``site``), ``lon`` (deg E), ``lat`` (deg N); or a ``sites.csv`` path.
        window, how
            As in :meth:`at`.

        Returns
        -------
        pandas.DataFrame
            Columns ``time`` (or the leading dimension), ``site``, then the variables of :meth:`at`; one row
            per site and step. Sites outside the grid are left out with a warning (listed in
            ``attrs["outside"]``). For every site of every zone of a root in one call: :func:`at_sites`.

        Raises
        ------
        ValueError
            If no site lies in the grid, a column is missing, or ``window`` / ``how`` is not a choice.
        """
        if window not in (1, 3, 5):
            raise ValueError(f"window {window!r} must be 1, 3 or 5 (pixels)")
        if how not in ("nearest", "mean"):
            raise ValueError(f"how {how!r} must be 'nearest' or 'mean'")
        table = _site_table(sites)
        ds = self._ds
        _need(ds, "at_sites", ("lst",))
        dim = _step_dim(ds, "at_sites")
        half = window // 2
        keep, outside = [], []
        for i, s in enumerate(table.itertuples(index=False)):
            try:
                locate(ds, [s.lon], [s.lat], margin=half)
                keep.append(i)
            except ValueError:
                outside.append(str(s.id))
        if not keep:
            raise ValueError(f"no site ({', '.join(outside)}) lies inside the grid")
        if outside:
            warnings.warn(f"sites outside the grid, left out: {', '.join(outside)}", stacklevel=2)
        table = table.iloc[keep].reset_index(drop=True)
        rows, cols = locate(ds, table["lon"].to_numpy(), table["lat"].to_numpy(), margin=half)
        src, times = self._point_source(dim)
        names = [v for v in _POINT_VARS if v in ds.data_vars and ds[v].dims == ds["lst"].dims]
        blocks = _windows(src, names, ds["x"].values[cols], ds["y"].values[rows], half, times, dim)
        flags = _flag_table(ds["qc"]) if "qc" in blocks else {}
        masked = [f for f in str(ds.attrs.get(_MASK_ATTR, "")).split() if f]
        if "qc" in blocks and "lst_uncertainty" in blocks:
            blocks["lst"], blocks["lst_uncertainty"] = _masked(blocks["lst"], blocks["lst_uncertainty"], blocks["qc"],
                                                               flags, masked, ds.attrs.get(_MAXUNC_ATTR))
        n_valid = np.isfinite(blocks["lst"]).sum(axis=(2, 3))  # lst is (site, step, wy, wx)
        values = _reduce_windows(blocks, flags, half, how)
        n_site, n_time = n_valid.shape
        out = pd.DataFrame({dim: np.tile(times, n_site), "site": np.repeat(table["id"].astype(str).to_numpy(), n_time),
                            **{v: values[v].ravel().astype(np.float32 if values[v].dtype.kind == "f"
                                                           else values[v].dtype) for v in names},
                            "n_valid": n_valid.ravel().astype(np.int64)})
        out.attrs["outside"] = outside
        return out

    def _point_source(self, dim: str = "time") -> tuple[xr.Dataset, np.ndarray]:
        """Where point series are read: the store's up-to-date time-series copy if any, else the dataset."""
        ds = self._ds
        times = ds[dim].values
        store = ds.attrs.get(_STORE_ATTR)
        if store and dim == "time":
            copy = timeseries_copy(store)
            if copy is not None:
                if self._ts is None or self._ts[0] != copy:
                    self._ts = (copy, open_store(copy))
                ts = self._ts[1]
                if np.isin(times, ts["time"].values).all():
                    return ts, times
        return ds, times

    # ----------------------------------------------------------------------------------- time
    def composite(self, freq: str = "MS", how: str = "median", *, min_count: int = 1) -> xr.Dataset:
        """Temporal composites: one map per period.

        Parameters
        ----------
        freq : str
            A pandas frequency: ``"MS"`` (months), ``"QS-DEC"`` (seasons DJF, MAM, ...), ``"YS"``, ...
        how : {"median", "mean", "min", "max"}
            The reduction of each pixel's valid values in the period.
        min_count : int
            Fewest valid values a pixel needs in a period; fewer give NaN.

        Returns
        -------
        xarray.Dataset
            ``lst`` (K), ``lst_uncertainty`` (K, propagated as the module docstring says) and ``n_obs``
            (values per pixel and period) over ``(time, y, x)``, ``time`` the start of each period that holds at
            least one time step (periods without any are left out), CF attributes of their own
            (:func:`composite_attrs`). Lazy.

        Raises
        ------
        ValueError
            Naming an unknown frequency or reduction, or a ``min_count`` below 1.
        """
        if how not in COMPOSITE_FACTOR:
            raise ValueError(f"how {how!r} must be one of {', '.join(COMPOSITE_FACTOR)}")
        _check_freq(freq)
        if not (isinstance(min_count, int | np.integer) and min_count >= 1):
            raise ValueError(f"min_count {min_count!r} must be an integer >= 1")
        ds = self._ds
        lst = ds["lst"]
        valid = lst.notnull()
        unc = ds["lst_uncertainty"].where(valid)
        rand2, sys2 = uncertainty_split(unc, valid, systematic_k(ds.attrs), systematic_fraction(ds.attrs))
        by_period = _period_reducer(ds["time"].values, freq)
        count = by_period(valid, "sum")
        with warnings.catch_warnings():  # all-NaN pixels of a period are NaN, as they should be
            warnings.simplefilter("ignore", RuntimeWarning)
            value = by_period(lst, how)
        mean_rand2 = by_period(rand2, "mean")
        mean_sys2 = by_period(sys2, "mean") if isinstance(sys2, xr.DataArray) else sys2
        var = composite_variance(mean_sys2, mean_rand2, count.where(count > 0), how)
        enough = count >= min_count
        attrs = composite_attrs(freq, how)
        out = xr.Dataset({
            "lst": value.where(enough).astype(np.float32).pipe(_attrs, attrs["lst"]),
            "lst_uncertainty": np.sqrt(var).where(enough).astype(np.float32).pipe(_attrs, attrs["lst_uncertainty"]),
            "n_obs": count.astype(np.int16).pipe(_attrs, attrs["n_obs"]),
        }, attrs={k: v for k, v in ds.attrs.items() if k not in (_STORE_ATTR, "sftl_product")})
        out.attrs.update(sftl_composite_freq=freq, sftl_composite_how=how, sftl_composite_min_count=min_count)
        out["time"].attrs = _time_attrs(freq)
        if "spatial_ref" in ds.coords:
            out = out.assign_coords(spatial_ref=ds["spatial_ref"])
        # periods without a single time step (a month without an overpass) are left out, not all-NaN maps
        steps = xr.DataArray(np.ones(ds.sizes["time"], np.int32), coords={"time": ds["time"]}, dims="time")
        seen = steps.resample(time=freq).sum().values > 0
        return out.isel(time=np.flatnonzero(seen)) if not seen.all() else out

    def climatology(self, by: str = "month") -> xr.Dataset:
        """The mean LST of each month (or day of year) over all years, grouped with flox.

        Parameters
        ----------
        by : {"month", "dayofyear"}

        Returns
        -------
        xarray.Dataset
            ``lst`` (K, mean of valid values), ``lst_std`` (K) and ``n_obs`` over ``(<by>, y, x)``, CF attributes
            of a climatology (``time: mean within years time: mean over years``); the attributes
            ``sftl_climatology_first``/``_last`` give the years it spans (a NetCDF export makes ``<by>`` a CF
            climatological time axis with them).

        Raises
        ------
        ValueError
            Naming an unknown ``by``, or if the dataset has no ``lst`` over ``time``.
        """
        if by not in _CLIM_BY:
            raise ValueError(f"by {by!r} must be one of {', '.join(_CLIM_BY)}")
        _need(self._ds, "climatology", ("lst",))
        if "time" not in self._ds["lst"].dims:
            raise ValueError(f"ds.sftl.climatology: {_what(self._ds)} has no time dimension")
        lst = self._ds["lst"].reset_coords(drop=True)
        grouped = lst.groupby(f"time.{by}")
        attrs = _climatology_attrs(by)
        with warnings.catch_warnings():  # pixels never valid in a group are NaN, as they should be
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, std = grouped.mean(), grouped.std()
        out = xr.Dataset({
            "lst": mean.astype(np.float32).pipe(_attrs, attrs["lst"]),
            "lst_std": std.astype(np.float32).pipe(_attrs, attrs["lst_std"]),
            "n_obs": lst.notnull().groupby(f"time.{by}").sum().astype(np.int16).pipe(_attrs, attrs["n_obs"]),
        }, attrs={"sftl_climatology_by": by, "sftl_climatology_first": str(self._ds["time"].values.min())[:19],
                  "sftl_climatology_last": str(self._ds["time"].values.max())[:19],
                  **{k: v for k, v in self._ds.attrs.items()
                     if k in ("title", "institution", "source", "references", "history", "Conventions")}})
        out[by].attrs = attrs[by]
        if "spatial_ref" in self._ds.coords:
            out = out.assign_coords(spatial_ref=self._ds["spatial_ref"])
        return out

    def anomaly(self, clim: xr.Dataset) -> xr.Dataset:
        """LST minus its climatology (:meth:`climatology`), per time step.

        Returns
        -------
        xarray.Dataset
            ``lst``: the anomaly (K, ``surface_temperature_anomaly``, no valid range) over ``(time, y, x)``, with
            ``lst_uncertainty`` (K) and ``qc`` of the step and the cube's per-time coordinates (attribute
            ``sftl_quantity = "anomaly"``).

        Raises
        ------
        ValueError
            If ``clim`` is not a climatology of :meth:`climatology`, or the dataset has no ``lst`` over time.
        """
        by = clim.attrs.get("sftl_climatology_by") if isinstance(clim, xr.Dataset) else None
        if by not in _CLIM_BY or "lst" not in clim:
            raise ValueError("anomaly needs a climatology from ds.sftl.climatology() (attribute "
                             "'sftl_climatology_by' and variable 'lst')")
        ds = self._ds
        _need(ds, "anomaly", ("lst",))
        anom = ds["lst"].groupby(f"time.{by}") - clim["lst"].reset_coords(drop=True)
        anom = anom.drop_vars(by, errors="ignore")
        each = "month" if by == "month" else "day of the year"
        out = xr.Dataset({
            # named lst, as in the cube, so the accessor's points, maps and composites work on anomalies too
            "lst": anom.astype(np.float32).pipe(_attrs, {
                "units": "K", "standard_name": "surface_temperature_anomaly",
                "units_metadata": "temperature: difference",
                "long_name": f"land surface temperature anomaly (minus the mean of its {each})"}),
        }, attrs={**{k: v for k, v in ds.attrs.items() if k not in (_STORE_ATTR, "sftl_product")},
                  "sftl_climatology_by": by, "sftl_quantity": "anomaly"})
        if "lst_uncertainty" in ds:
            out["lst_uncertainty"] = ds["lst_uncertainty"].pipe(_attrs, {
                "units": "K", "standard_name": "surface_temperature_anomaly standard_error",
                "units_metadata": "temperature: difference",
                "long_name": "standard uncertainty of the step's LST (1 sigma; the climatology's not included)"})
        if "qc" in ds:
            out["qc"] = ds["qc"]
        if {"lst_uncertainty", "qc"} <= set(out.data_vars):
            out["lst"].attrs["ancillary_variables"] = "lst_uncertainty qc"
        return out

    # ----------------------------------------------------------------------------------- exports
    def to_netcdf(self, path: str | os.PathLike[str]) -> Path:
        """Write a CF-1.11 NetCDF4 file (:func:`sftl_dask.io.export.to_netcdf`)."""
        return to_netcdf(self._ds, path)

    def to_cog(self, path: str | os.PathLike[str], time: Any = None, *, overviews: bool = True,
               variables: Sequence[str] | None = None) -> Path:
        """Write one time step as a Cloud-Optimized GeoTIFF (:func:`sftl_dask.io.export.to_cog`): bands
        ``variables`` (default ``lst`` and ``lst_uncertainty``; ``("qc",)`` to a file of its own)."""
        return to_cog(self._ds, path, time=time, overviews=overviews, variables=variables)

    # ----------------------------------------------------------------------------------- plots
    def plot_map(self, time: Any = None, *, var: str = "lst", ax: Any = None, **kwargs: Any) -> Any:
        """A map of one step: of the cube, a composite, a climatology (``time`` then indexes or labels its
        month or day of year) or an anomaly (a diverging colour map centred on 0).

        Parameters
        ----------
        time : int or time label, optional
            The step: an index (as ``isel``), or a time label; default the step with the most valid pixels.
            A climatology's month by label: ``clim.sel(month=7).sftl.plot_map()``.
        var : str
            The variable; ``"qc"`` draws the QC classes with a legend.
        ax : matplotlib.axes.Axes, optional
            Where to draw.
        **kwargs
            Passed to ``imshow``.

        Returns
        -------
        matplotlib.axes.Axes
            Titled with the variable's long name and the step (``monthly median LST, Aug 2022``), the CRS on
            the x axis.

        Raises
        ------
        ValueError
            Naming an unknown variable (and listing the dataset's) or a step not in the dataset.
        """
        ds = self._ds
        if var not in ds.data_vars:
            raise ValueError(f"ds.sftl.plot_map: no variable {var!r} in {_what(ds)} "
                             f"(variables: {', '.join(map(str, ds.data_vars))})")
        da = ds[var]
        steps = [d for d in da.dims if d not in ("y", "x")]
        if len(steps) > 1:
            raise ValueError(f"ds.sftl.plot_map: {var} of {_what(ds)} is over {da.dims}; select all but one of "
                             f"{', '.join(map(str, steps))}")
        if steps:
            if time is None:
                time = int(ds["lst" if "lst" in ds else var].notnull().sum(("y", "x")).argmax(steps[0]).values)
            da = _pick_step(da, steps[0], time)
        scalar = [d for d in ("time", "month", "dayofyear") if d in da.coords and da[d].ndim == 0]
        label = _step_label(ds, da, scalar[0]) if scalar else ""
        crs = _crs_words(ds)
        if var == "qc":
            title = f"LST quality control classes{label}"
            return plotting.qc_map(plotting.qc_classes(da.values, self.flags), da["x"].values, da["y"].values,
                                   ax=ax, title=title, crs=crs)
        long_name = str(da.attrs.get("long_name", var)).replace("land surface temperature", "LST")
        return plotting.lst_map(da, var=var, ax=ax, title=f"{long_name}{label}", crs=crs,
                                anomaly=ds.attrs.get("sftl_quantity") == "anomaly" and var == "lst", **kwargs)

    def plot_series(self, lon: float, lat: float, *, window: int = 1, how: str = "nearest",
                    ax: Any = None, label: str | None = None) -> Any:
        """A point's series with +-1 sigma error bars (:meth:`at`); an anomaly's with its zero line.

        Parameters
        ----------
        lon, lat : float
            The point (deg E, deg N).
        window, how
            As in :meth:`at`.
        ax : matplotlib.axes.Axes, optional
            Where to draw.
        label : str, optional
            The legend's entry: the site's name (default: the coordinates).

        Returns
        -------
        matplotlib.axes.Axes
        """
        df = self.at(lon, lat, window=window, how=how).dropna(subset=["lst"])
        return self._series(df, label or f"{lon:.4f} E, {lat:.4f} N", ax)

    def plot_sites(self, sites: pd.DataFrame | str | os.PathLike[str], *, window: int = 1, how: str = "nearest",
                   ax: Any = None) -> Any:
        """Every site's series on one axes (:meth:`at_sites`), the legend naming each site (``name`` of the
        site table, else its ``id``).

        Returns
        -------
        matplotlib.axes.Axes
        """
        table = sites if isinstance(sites, pd.DataFrame) else read_sites(sites)
        key = "id" if "id" in table.columns else "site"
        names = dict(zip(table[key].astype(str), table["name"].astype(str) if "name" in table.columns
                         else table[key].astype(str), strict=True))
        series = self.at_sites(table, window=window, how=how).dropna(subset=["lst"])
        dim = series.columns[0]
        for site, one in series.groupby("site", sort=False):
            ax = self._series(one.set_index(dim), f"{names.get(str(site), site)} ({site})", ax)
        return ax

    def _series(self, df: pd.DataFrame, label: str, ax: Any) -> Any:
        anomaly = self._ds.attrs.get("sftl_quantity") == "anomaly"
        what = _what(self._ds)
        name = "LST anomaly" if anomaly else "LST" if what == "an LST cube" else \
            str(self._ds["lst"].attrs.get("long_name", "LST")).replace("land surface temperature", "LST")
        sigma = " (±1σ)" if "lst_uncertainty" in df else ""
        return plotting.point_series(df, label=label, ax=ax, ylabel=f"{name} (K)", title=f"{name}{sigma}",
                                     zero_line=anomaly)


def _crs_words(ds: xr.Dataset) -> str | None:
    """The dataset's CRS in words for an axis: ``EPSG:32650, WGS 84 / UTM zone 50N``."""
    crs = ds.rio.crs
    if crs is None:
        return None
    epsg = crs.to_epsg()
    name = pyproj.CRS.from_wkt(crs.to_wkt()).name
    return f"EPSG:{epsg}, {name}" if epsg else name


def _step_label(ds: xr.Dataset, da: xr.DataArray, dim: str) -> str:
    """The step of a map in words: ``, Aug 2022`` (a monthly composite), ``, 2022-08-14 03:50 UTC``, ``, July``."""
    value = da[dim].values
    if dim == "month":
        span = _years(ds)
        return f", {pd.Timestamp(2001, int(value), 1).strftime('%B')}{span}"
    if dim == "dayofyear":
        return f", day {int(value)} of the year{_years(ds)}"
    when = pd.Timestamp(value)
    freq = str(ds.attrs.get("sftl_composite_freq", ""))
    if "sftl_composite_how" in ds.attrs:
        return f", {when.strftime(_PERIODS[freq][2]) if freq in _PERIODS else when.strftime('%Y-%m-%d')}"
    return f", {when.strftime('%Y-%m-%d %H:%M')} UTC"


def _years(ds: xr.Dataset) -> str:
    first, last = ds.attrs.get("sftl_climatology_first"), ds.attrs.get("sftl_climatology_last")
    return f" ({str(first)[:4]}-{str(last)[:4]})" if first and last else ""


def _site_table(sites: pd.DataFrame | str | os.PathLike[str]) -> pd.DataFrame:
    if isinstance(sites, str | os.PathLike):
        sites = read_sites(sites)
    if not isinstance(sites, pd.DataFrame):
        raise ValueError(f"sites must be a DataFrame or a sites.csv path, not {type(sites).__name__}")
    if "id" not in sites.columns and "site" in sites.columns:
        sites = sites.rename(columns={"site": "id"})
    for col in ("id", "lon", "lat"):
        if col not in sites.columns:
            raise ValueError(f"the site table lacks column {col!r} (columns: {', '.join(map(str, sites.columns))})")
    return sites[["id", "lon", "lat"]].astype({"lon": np.float64, "lat": np.float64})


def _step_dim(ds: xr.Dataset, verb: str) -> str:
    """The dimension of ``lst`` besides ``y``/``x`` (``time``; ``month`` or ``dayofyear`` of a climatology)."""
    dims = [d for d in ds["lst"].dims if d not in ("y", "x")]
    if len(dims) != 1 or set(ds["lst"].dims) - {dims[0]} != {"y", "x"}:
        raise ValueError(f"ds.sftl.{verb}: {_what(ds)} with lst over {ds['lst'].dims}, not (time, y, x)")
    return str(dims[0])


def _windows(src: xr.Dataset, names: Sequence[str], xs: np.ndarray, ys: np.ndarray, half: int, times: np.ndarray,
             dim: str = "time") -> dict[str, np.ndarray]:
    """The (site, step, window, window) blocks of each variable ``names``, read in one compute."""
    ix = np.searchsorted(src["x"].values, xs)
    yv = src["y"].values  # decreasing
    iy = yv.size - 1 - np.searchsorted(yv[::-1], ys)
    if not (np.array_equal(src["x"].values[ix], xs) and np.array_equal(yv[iy], ys)):
        raise ValueError("the time-series copy is not on the cube's grid")
    tidx = pd.Index(src[dim].values).get_indexer(times)
    sub = src[list(names)].transpose(dim, "y", "x")
    parts = [sub.isel(y=slice(r - half, r + half + 1), x=slice(c - half, c + half + 1))
             for r, c in zip(iy, ix, strict=True)]
    if not (tidx == np.arange(src.sizes[dim])).all():
        parts = [p.isel({dim: tidx}) for p in parts]
    loaded = dask.compute(*[tuple(p[v].data for v in names) for p in parts])
    return {v: np.stack([a[k] for a in loaded]).astype(np.float64 if src[v].dtype.kind == "f" else src[v].dtype)
            for k, v in enumerate(names)}


def _reduce_windows(blocks: Mapping[str, np.ndarray], flags: Mapping[str, tuple[int, int]], half: int, how: str
                    ) -> dict[str, np.ndarray]:
    """One value per (site, step) from (site, step, window, window) blocks (:meth:`SftlAccessor.at`'s ``how``).

    ``blocks`` holds ``lst`` (K, NaN where masked) and the other variables (``lst_uncertainty`` K, ``qc`` bit flags,
    ...), ``flags`` the ``qc`` flag table and ``half`` the window's half-width (px). ``"mean"``: the mean of the valid
    pixels and the OR of the ``qc`` of the produced ones (the centre's where none is); ``"nearest"``: the valid
    pixel nearest the centre (ties: raster order), or the centre. Returns each variable, (site, step).
    """
    lst = blocks["lst"]
    valid = np.isfinite(lst)
    any_valid = valid.any(axis=(2, 3))
    out: dict[str, np.ndarray] = {}
    if how == "mean":
        for v, a in blocks.items():
            if v == "qc":
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[v] = np.nanmean(np.where(valid, a, np.nan), axis=(2, 3))
        if "qc" in blocks:
            qc = blocks["qc"]
            not_prod = _flag_set(qc, flags, [f for f in _NOT_PRODUCED if f in flags])
            prod = ~not_prod if not_prod is not None else np.ones(qc.shape, dtype=bool)
            v_qc = np.bitwise_or.reduce(np.where(prod, qc, 0), axis=(2, 3)).astype(qc.dtype)
            out["qc"] = np.where(prod.any(axis=(2, 3)), v_qc, qc[:, :, half, half])
        return out
    # the valid pixel nearest the centre: order the window by distance (ties: raster order)
    wy, wx = np.mgrid[-half:half + 1, -half:half + 1]
    order = np.argsort((wy ** 2 + wx ** 2).ravel(), kind="stable")
    flat_valid = valid.reshape(*valid.shape[:2], -1)[..., order]
    pick = order[np.where(flat_valid.any(-1), flat_valid.argmax(-1), 0)]
    for v, a in blocks.items():
        taken = np.take_along_axis(a.reshape(*a.shape[:2], -1), pick[..., None], -1)[..., 0]
        out[v] = np.where(any_valid, taken, a[:, :, half, half]) if v == "qc" else taken
    return out


def _warn_if_sparse(ds: xr.Dataset, table: Mapping[str, tuple[int, int]], flags: Sequence[str],
                    max_unc: float | None) -> None:
    """Warn once (:class:`SparseMaskWarning`) when the masks leave < 1 % of the produced pixels, with the count of
    each flag among them; and when most kept values have sigma > 3 K (``uncertainty_gt_3k``)."""
    qc, unc = ds["qc"], ds["lst_uncertainty"]
    not_prod = _flag_set(qc, table, [f for f in _NOT_PRODUCED if f in table])
    produced = ~not_prod if not_prod is not None else xr.ones_like(qc, dtype=bool)
    drop = _flag_set(qc, table, flags) if flags else xr.zeros_like(qc, dtype=bool)
    if max_unc is not None:
        drop = drop | (unc > max_unc)
    kept = produced & ~drop
    counts = {"produced": produced.sum(), "kept": kept.sum(),
              **{f: (produced & _flag_set(qc, table, [f])).sum() for f in flags}}
    if max_unc is not None:
        counts[f"sigma > {max_unc:g} K"] = (produced & (unc > max_unc)).sum()
    if "uncertainty_gt_3k" in table:
        counts["kept, sigma > 3 K"] = (kept & _flag_set(qc, table, ["uncertainty_gt_3k"])).sum()
    n = {k: int(v) for k, v in zip(counts, dask.compute(*[c.data for c in counts.values()]), strict=True)}
    if n["produced"] and n["kept"] < SPARSE_FRACTION * n["produced"]:
        per = ", ".join(f"{k} {v:,}" for k, v in n.items() if k not in ("produced", "kept", "kept, sigma > 3 K"))
        warnings.warn(f"the mask leaves {n['kept']:,} of {n['produced']:,} produced pixels "
                      f"({n['kept'] / n['produced']:.2%}); among the produced: {per}", SparseMaskWarning, stacklevel=3)
    elif n.get("kept, sigma > 3 K", 0) > 0.5 * n["kept"] and max_unc is None:
        big = n["kept, sigma > 3 K"]
        warnings.warn(f"{big:,} of the {n['kept']:,} values kept ({big / n['kept']:.0%}) have an uncertainty above "
                      "3 K; drop them with max_uncertainty=3.0", SparseMaskWarning, stacklevel=3)


def _period_reducer(times: np.ndarray, freq: str) -> Any:
    """``reduce(array, how)`` over the periods of ``freq``: resampled (flox) in general; when every time step falls
    in one period (a composite task's chunk of one month), a plain reduction over ``time`` labelled with the
    period's start, the same values without the grouping machinery (0.15 s of a 0.24 s task, measured)."""
    starts = pd.Series(np.ones(len(times)), index=pd.DatetimeIndex(times)).resample(freq).sum()
    starts = starts.index[starts.to_numpy() > 0]
    if len(starts) != 1:
        return lambda a, how: getattr(a.resample(time=freq), how)()  # flox when installed (a dependency)
    label = np.array([starts[0].to_datetime64()], dtype="datetime64[ns]")

    def reduce(a: xr.DataArray, how: str) -> xr.DataArray:
        if how == "median" and not isinstance(a.data, np.ndarray):
            return a.median("time").expand_dims(time=label)
        if how == "median":  # numpy's nanmedian warns once per all-NaN pixel (0.13 s of a 512 x 512 chunk)
            return a.isel(time=0, drop=True).copy(data=nanmedian_first_axis(a.transpose("time", ...).values)
                                                  ).expand_dims(time=label)
        return getattr(a, how)("time").expand_dims(time=label)

    return reduce


def nanmedian_first_axis(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=0)`` (NaN where a column holds no value), by one sort, without a warning per
    all-NaN column: the middle value, or the mean of the two middle values, of each column's valid values."""
    s = np.sort(a, axis=0)  # NaN last
    n = np.isfinite(s).sum(axis=0)
    lo = np.take_along_axis(s, np.maximum((n - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(s, np.maximum(n // 2, 0)[None], axis=0)[0]
    out = np.mean(np.stack([lo, hi]), axis=0, dtype=a.dtype) if np.issubdtype(a.dtype, np.floating) else lo
    return np.where(n > 0, out, np.nan).astype(a.dtype)


def _check_freq(freq: str) -> None:
    try:
        pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError):
        raise ValueError(f"freq {freq!r} is not a pandas frequency (e.g. 'MS', 'QS-DEC', 'YS')") from None


def systematic_k(attrs: Mapping[str, Any]) -> float | None:
    """The systematic part of an LST cube's uncertainty (K, its ``uncertainty_systematic_k`` attribute), or None
    where the cube does not split it (composites then treat all of it as systematic)."""
    v = attrs.get("uncertainty_systematic_k")
    try:
        return float(v) if v is not None and str(v) != "" else None
    except ValueError:
        return None


def systematic_fraction(attrs: Mapping[str, Any]) -> float | None:
    """The systematic share of an LST cube's ``lst_uncertainty**2`` (its ``uncertainty_systematic_fraction``
    attribute, in [0, 1]), or None where the cube does not give one (older stores; scene terms whose share varies by
    pixel): composites then use :func:`systematic_k`."""
    v = attrs.get("uncertainty_systematic_fraction")
    try:
        f = float(v) if v is not None and str(v) != "" else None
    except ValueError:
        return None
    return f if f is not None and 0.0 <= f <= 1.0 else None


def _zeros_where(valid: Any, like: Any) -> Any:
    """0 where ``valid``, NaN elsewhere, in ``like``'s dtype (an xarray object stays lazy)."""
    if isinstance(like, xr.DataArray):
        return xr.zeros_like(like).where(valid)
    return np.where(valid, np.zeros_like(like), np.nan)


def uncertainty_split(unc: Any, valid: Any, sys_k: float | None = None,
                      sys_frac: float | None = None) -> tuple[Any, Any]:
    """Each value's random and systematic variance (K^2) from its uncertainty: the one rule of the composites.

    Used by :meth:`SftlAccessor.composite` (xarray, lazy) and :func:`sftl_dask.composites.period_composite` (numpy),
    so both give the same values bit for bit.

    Parameters
    ----------
    unc : numpy.ndarray or xarray.DataArray
        ``lst_uncertainty`` (K), NaN where the value is not used.
    valid : numpy.ndarray or xarray.DataArray
        Where the LST value is used (bool, ``unc``'s shape).
    sys_k : float, optional
        The store's systematic part (K, :func:`systematic_k`).
    sys_frac : float, optional
        The store's systematic share of ``unc**2`` (:func:`systematic_fraction`); it takes precedence over
        ``sys_k``.

    Returns
    -------
    rand2, sys2
        ``(1 - sys_frac) * unc**2`` and ``sys_frac * unc**2`` with a share; ``max(unc**2 - sys_k**2, 0)`` and the
        scalar ``sys_k**2`` with a systematic part only; else 0 (NaN where not ``valid``) and ``unc**2``, all of
        it systematic.
    """
    if sys_frac is not None:
        unc2 = unc ** 2
        return unc2 * (1.0 - sys_frac), unc2 * sys_frac
    if sys_k is not None:
        return (unc ** 2 - sys_k ** 2).clip(min=0.0), sys_k ** 2
    rand2 = _zeros_where(valid, unc)
    return rand2, unc ** 2 - rand2  # all systematic when the split is unknown


def composite_variance(mean_sys2: Any, mean_rand2: Any, n: Any, how: str) -> Any:
    """The variance (K^2) of a reduction of ``n`` values: ``mean_sys2`` whole, ``mean_rand2`` times the reduction's
    :data:`COMPOSITE_FACTOR` over ``n`` (whole for a minimum or maximum, a single value).

    Parameters
    ----------
    mean_sys2, mean_rand2 : array_like, xarray.DataArray or float
        The mean systematic and random variance of the values (K^2).
    n : array_like or xarray.DataArray
        Values reduced (NaN where none).
    how : {"median", "mean", "min", "max"}
        The reduction.
    """
    factor = COMPOSITE_FACTOR[how]
    return mean_sys2 + (mean_rand2 * factor / n if factor is not None else mean_rand2)


def _pick_step(da: xr.DataArray, dim: str, step: Any) -> xr.DataArray:
    """One step of ``dim`` by index or label."""
    n = da.sizes[dim]
    if isinstance(step, int | np.integer):  # an index, as isel (a month by label: clim.sel(month=7))
        if not -n <= step < n:
            raise ValueError(f"{dim} index {step} outside 0..{n - 1}")
        return da.isel({dim: int(step)})
    try:
        label = np.datetime64(pd.Timestamp(step)) if dim == "time" else step
        return da.sel({dim: label})
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{dim} {step!r} is not a step of the dataset ({da[dim].values[0]} .. "
                         f"{da[dim].values[-1]})") from None
