"""The LST time-series API: :func:`open_lst` and the ``ds.sftl`` accessor.

``import sftl_dask`` registers the accessor (as ``import rioxarray`` registers ``.rio``)::

    import sftl_dask
    ds = sftl_dask.open_lst("lst/")                  # lazy, Dask-backed, complete time steps by time
    good = ds.sftl.good()                            # produced, inside the pre-training range, not cloud-adjacent
    series = good.sftl.at(lon=115.79, lat=40.35)     # one pixel's series, a DataFrame
    table = good.sftl.at_sites(sites)                # every site's series, one tidy DataFrame
    monthly = good.sftl.composite("MS", how="median", min_count=2)
    anom = good.sftl.anomaly(good.sftl.climatology("month"))

Uncertainty of aggregates. The retrieval's per-pixel uncertainty has two parts
(:mod:`sftl_dask.models.error_model`): ``sigma_model`` (the network's error in the simulation's
conditions, different from one scene to the next: treated as random) and ``sigma_scene`` (what real
scenes add: ancillary-data and site errors with their bias: treated as systematic, fully correlated,
never divided by sqrt(n)). The LST store names the systematic part in its ``uncertainty_systematic_k``
attribute; where it is absent, the whole uncertainty is taken as systematic (the conservative choice).
An aggregate of ``n`` values then has::

    sigma**2 = sigma_sys**2 + f * mean(sigma_rand**2) / n

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
import rioxarray  # noqa: F401  (registers .rio)
import xarray as xr

from sftl_dask import plotting
from sftl_dask.geo import pixel_index
from sftl_dask.io.export import to_cog, to_netcdf
from sftl_dask.io.insitu import read_sites
from sftl_dask.io.location import Location
from sftl_dask.io.lst import LST_OK_VAR
from sftl_dask.io.stores import CubeRoot, mosaic, open_store
from sftl_dask.rechunk import timeseries_copy

__all__ = ["SftlAccessor", "locate", "open_lst"]

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
#: How a composite reduces, and the factor ``f`` of its random uncertainty (module docstring).
_HOW = {"mean": 1.0, "median": math.pi / 2, "min": None, "max": None}
_CLIM_BY = ("month", "dayofyear")
#: Attributes that tie a dataset to its store and to the masks applied to it.
_STORE_ATTR = "sftl_store"
_MASK_ATTR = "sftl_masked_flags"
_MAXUNC_ATTR = "sftl_max_uncertainty_k"


def _check_lst(ds: xr.Dataset, where: str) -> None:
    missing = [v for v in _REQUIRED if v not in ds.variables]
    if missing:
        raise ValueError(f"{where}: not an LST cube: variable {missing[0]!r} missing "
                         f"(it holds {', '.join(sorted(map(str, ds.data_vars))) or 'nothing'})")


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

    Raises
    ------
    ValueError
        If the path holds no LST store, the tile or zone is unknown or no tile holds the point, several
        zones and none is named, or a store lacks ``lst``, ``lst_uncertainty`` or ``qc``.
    """
    root = CubeRoot.of(path, skip_copies=True)
    stores = root.stores()
    if not stores:
        raise ValueError(f"{root.path}: no LST store here (expected an LST store or a folder of them)")
    if grid is None:
        picked = root.zone(zone, ways="name one (zone=), a tile (grid=) or give a (lon, lat)")
        if len(picked) > 1:
            for st in picked.values():
                _check_lst(open_store(st), str(st))
            return mosaic(picked, ok_var=LST_OK_VAR, complete_only=complete_only)
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
    ds = _open_store(store)
    if complete_only:
        ok = ds[LST_OK_VAR].values if LST_OK_VAR in ds else np.ones(ds.sizes["time"], dtype=bool)
        ds = ds.isel(time=np.flatnonzero(ok)).sortby("time")
    ds.attrs[_STORE_ATTR] = str(store)
    return ds


def _open_store(store: Location) -> xr.Dataset:
    ds = open_store(store)
    _check_lst(ds, str(store))
    return ds


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
    x, y = ds["x"].values, ds["y"].values
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
        _check_lst(self._ds, "dataset")
        return _flag_table(self._ds["qc"])

    def mask(self, flags: Sequence[str] | str = (), *, max_uncertainty: float | None = None) -> xr.Dataset:
        """Set ``lst`` and ``lst_uncertainty`` to NaN where any of the named ``qc`` flags is set.

        Parameters
        ----------
        flags : sequence of str
            Flag names of ``qc`` (``ds.sftl.flags``), e.g. ``["cloud_adjacent", "uncertainty_gt_3k"]``.
        max_uncertainty : float, optional
            Also mask pixels whose ``lst_uncertainty`` exceeds this (K).

        Returns
        -------
        xarray.Dataset
            Lazy; ``qc`` unchanged. The masks are recorded in the attributes, so :meth:`at` reading a
            time-series copy applies them too.

        Raises
        ------
        ValueError
            Naming an unknown flag.
        """
        flags = [flags] if isinstance(flags, str) else list(flags)
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
        return out

    def good(self, *, max_uncertainty: float | None = None) -> xr.Dataset:
        """Only good-quality LST: produced, inside the model's pre-training range, not next to a cloud.

        Parameters
        ----------
        max_uncertainty : float, optional
            Also drop pixels whose uncertainty exceeds this (K).

        Returns
        -------
        xarray.Dataset
            :meth:`mask` with :data:`GOOD_MASKS` (those the cube's ``qc`` describes).
        """
        return self.mask([f for f in GOOD_MASKS if f in self.flags], max_uncertainty=max_uncertainty)

    # ----------------------------------------------------------------------------------- points
    def at(self, lon: float, lat: float, *, window: int = 1, how: str = "nearest") -> pd.DataFrame:
        """One point's time series.

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
            Indexed by ``time``: ``lst`` (K), ``lst_uncertainty`` (K), ``qc`` (of the centre pixel for
            ``nearest``; OR of the window's produced pixels for ``mean``) and ``n_valid`` (valid pixels of
            the window). Every time step has a row; ``lst`` is NaN where none was valid.

        Raises
        ------
        ValueError
            If the point lies outside the grid, or ``window`` / ``how`` is not one of the choices.
        """
        if window in (1, 3, 5):
            locate(self._ds, [lon], [lat], margin=window // 2)  # a point outside: say where the grid is
        table = self.at_sites(pd.DataFrame({"id": ["point"], "lon": [lon], "lat": [lat]}), window=window, how=how)
        return table.drop(columns=["site"]).set_index("time")

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
            Columns ``time``, ``site``, ``lst``, ``lst_uncertainty``, ``qc``, ``n_valid``; one row per
            site and time step. Sites outside the grid are left out with a warning (listed in
            ``attrs["outside"]``).

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
        _check_lst(ds, "dataset")
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
        src, times = self._point_source()
        lst, unc, qc = _windows(src, ds["x"].values[cols], ds["y"].values[rows], half, times)
        flags = _flag_table(ds["qc"])
        masked = [f for f in str(ds.attrs.get(_MASK_ATTR, "")).split() if f]
        lst, unc = _masked(lst, unc, qc, flags, masked, ds.attrs.get(_MAXUNC_ATTR))
        n_valid = np.isfinite(lst).sum(axis=(2, 3))  # lst is (site, time, wy, wx)
        v_lst, v_unc, v_qc = _reduce_windows(lst, unc, qc, flags, half, how)
        n_site, n_time = n_valid.shape
        out = pd.DataFrame({
            "time": np.tile(times, n_site),
            "site": np.repeat(table["id"].astype(str).to_numpy(), n_time),
            "lst": v_lst.ravel().astype(np.float32),
            "lst_uncertainty": v_unc.ravel().astype(np.float32),
            "qc": v_qc.ravel(),
            "n_valid": n_valid.ravel().astype(np.int64),
        })
        out.attrs["outside"] = outside
        return out

    def _point_source(self) -> tuple[xr.Dataset, np.ndarray]:
        """Where point series are read: the store's up-to-date time-series copy if any, else the dataset."""
        ds = self._ds
        times = ds["time"].values
        store = ds.attrs.get(_STORE_ATTR)
        if store:
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
            ``lst`` (K), ``lst_uncertainty`` (K, propagated as the module docstring says) and ``count``
            over ``(time, y, x)``, ``time`` the start of each period that holds at least one time step
            (periods without any are left out). Lazy.

        Raises
        ------
        ValueError
            Naming an unknown frequency or reduction, or a ``min_count`` below 1.
        """
        if how not in _HOW:
            raise ValueError(f"how {how!r} must be one of {', '.join(_HOW)}")
        _check_freq(freq)
        if not (isinstance(min_count, int | np.integer) and min_count >= 1):
            raise ValueError(f"min_count {min_count!r} must be an integer >= 1")
        ds = self._ds
        lst = ds["lst"]
        valid = lst.notnull()
        unc = ds["lst_uncertainty"].where(valid)
        sys_k = _systematic(ds)
        rand2 = (unc ** 2 - sys_k ** 2).clip(min=0.0) if sys_k is not None else xr.zeros_like(unc).where(valid)
        sys2 = (unc ** 2 - rand2) if sys_k is None else sys_k ** 2  # all systematic when the split is unknown
        count = valid.resample(time=freq).sum()
        with warnings.catch_warnings():  # all-NaN pixels of a period are NaN, as they should be
            warnings.simplefilter("ignore", RuntimeWarning)
            value = getattr(lst.resample(time=freq), how)()  # flox when installed (a dependency)
        mean_rand2 = rand2.resample(time=freq).mean()
        mean_sys2 = sys2.resample(time=freq).mean() if isinstance(sys2, xr.DataArray) else sys2
        n = count.where(count > 0)
        factor = _HOW[how]
        var = mean_sys2 + (mean_rand2 * factor / n if factor is not None else mean_rand2)
        enough = count >= min_count
        period = {"MS": "month", "QS-DEC": "season", "YS": "year"}.get(freq, f"period {freq}")
        out = xr.Dataset({
            "lst": value.where(enough).astype(np.float32).assign_attrs(
                {**ds["lst"].attrs, "cell_methods": f"time: {how} within {period}s (valid values only)"}),
            "lst_uncertainty": np.sqrt(var).where(enough).astype(np.float32).assign_attrs(
                {**ds["lst_uncertainty"].attrs, "long_name": f"standard uncertainty of the {how} composite",
                 "comment": "systematic part not reduced by sqrt(n); random part as the reduction allows"}),
            "count": count.astype(np.int16).assign_attrs(
                {"long_name": f"number of valid LST values in the {period}", "units": "1"}),
        }, attrs={k: v for k, v in ds.attrs.items() if k != _STORE_ATTR})
        out.attrs.update(sftl_composite_freq=freq, sftl_composite_how=how, sftl_composite_min_count=min_count)
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
            ``lst`` (K, mean of valid values), ``lst_std`` (K) and ``count`` over ``(<by>, y, x)``.
        """
        if by not in _CLIM_BY:
            raise ValueError(f"by {by!r} must be one of {', '.join(_CLIM_BY)}")
        lst = self._ds["lst"]
        grouped = lst.groupby(f"time.{by}")
        out = xr.Dataset({
            "lst": grouped.mean().astype(np.float32).assign_attrs(
                {**lst.attrs, "cell_methods": f"time: mean within {by}s over years (valid values only)"}),
            "lst_std": grouped.std().astype(np.float32).assign_attrs(
                {"units": "K", "long_name": "standard deviation of lst within the group"}),
            "count": lst.notnull().groupby(f"time.{by}").sum().astype(np.int16).assign_attrs(
                {"units": "1", "long_name": "number of valid LST values"}),
        }, attrs={"sftl_climatology_by": by})
        if "spatial_ref" in self._ds.coords:
            out = out.assign_coords(spatial_ref=self._ds["spatial_ref"])
        return out

    def anomaly(self, clim: xr.Dataset) -> xr.Dataset:
        """LST minus its climatology (:meth:`climatology`), per time step.

        Returns
        -------
        xarray.Dataset
            ``lst``: the anomaly (K) over ``(time, y, x)``, with ``lst_uncertainty`` (K) and ``qc`` of the
            step (attribute ``sftl_quantity = "anomaly"``).
        """
        by = clim.attrs.get("sftl_climatology_by") if isinstance(clim, xr.Dataset) else None
        if by not in _CLIM_BY or "lst" not in clim:
            raise ValueError("anomaly needs a climatology from ds.sftl.climatology() (attribute "
                             "'sftl_climatology_by' and variable 'lst')")
        ds = self._ds
        anom = ds["lst"].groupby(f"time.{by}") - clim["lst"]
        anom = anom.drop_vars(by, errors="ignore")
        out = xr.Dataset({
            # named lst, as in the cube, so the accessor's points, maps and composites work on anomalies too
            "lst": anom.astype(np.float32).assign_attrs(
                {"units": "K", "long_name": f"LST anomaly: lst minus its {by} climatology"}),
            "lst_uncertainty": ds["lst_uncertainty"],
        }, attrs={"sftl_climatology_by": by, "sftl_quantity": "anomaly"})
        if "qc" in ds:
            out["qc"] = ds["qc"]
        return out

    # ----------------------------------------------------------------------------------- exports
    def to_netcdf(self, path: str | os.PathLike[str]) -> Path:
        """Write a CF-1.11 NetCDF4 file (:func:`sftl_dask.io.export.to_netcdf`)."""
        return to_netcdf(self._ds, path)

    def to_cog(self, path: str | os.PathLike[str], time: Any = None, *, overviews: bool = True) -> Path:
        """Write one time step as a Cloud-Optimized GeoTIFF (:func:`sftl_dask.io.export.to_cog`)."""
        return to_cog(self._ds, path, time=time, overviews=overviews)

    # ----------------------------------------------------------------------------------- plots
    def plot_map(self, time: Any = None, *, var: str = "lst", ax: Any = None, **kwargs: Any) -> Any:
        """A map of one time step (index or label; default the step with the most valid pixels).

        Returns
        -------
        matplotlib.axes.Axes
        """
        ds = self._ds
        if var not in ds:
            raise ValueError(f"no variable {var!r} (variables: {', '.join(map(str, ds.data_vars))})")
        da = ds[var]
        if "time" in da.dims:
            if time is None:
                time = int(da.notnull().sum(("y", "x")).argmax("time").values)
            da = _pick_time(da, time)
        return plotting.lst_map(da, var=var, ax=ax, **kwargs)

    def plot_series(self, lon: float, lat: float, *, window: int = 1, how: str = "nearest",
                    ax: Any = None, label: str | None = None) -> Any:
        """A point's series with +-1 sigma error bars (:meth:`at`).

        Returns
        -------
        matplotlib.axes.Axes
        """
        df = self.at(lon, lat, window=window, how=how).dropna(subset=["lst"])
        return plotting.point_series(df, label=label or f"{lon:.4f} E, {lat:.4f} N", ax=ax)


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


def _windows(src: xr.Dataset, xs: np.ndarray, ys: np.ndarray, half: int, times: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (site, time, window, window) blocks of lst, lst_uncertainty and qc, read in one compute."""
    ix = np.searchsorted(src["x"].values, xs)
    yv = src["y"].values  # decreasing
    iy = yv.size - 1 - np.searchsorted(yv[::-1], ys)
    if not (np.array_equal(src["x"].values[ix], xs) and np.array_equal(yv[iy], ys)):
        raise ValueError("the time-series copy is not on the cube's grid")
    tidx = pd.Index(src["time"].values).get_indexer(times)
    sub = src[["lst", "lst_uncertainty", "qc"]]
    parts = [sub.isel(y=slice(r - half, r + half + 1), x=slice(c - half, c + half + 1))
             for r, c in zip(iy, ix, strict=True)]
    if not (tidx == np.arange(src.sizes["time"])).all():
        parts = [p.isel(time=tidx) for p in parts]
    loaded = dask.compute(*[(p["lst"].data, p["lst_uncertainty"].data, p["qc"].data) for p in parts])
    lst = np.stack([a[0] for a in loaded]).astype(np.float64)
    unc = np.stack([a[1] for a in loaded]).astype(np.float64)
    qc = np.stack([a[2] for a in loaded])
    return lst, unc, qc


def _reduce_windows(lst: np.ndarray, unc: np.ndarray, qc: np.ndarray, flags: Mapping[str, tuple[int, int]],
                    half: int, how: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One value per (site, time) from (site, time, window, window) blocks (:meth:`SftlAccessor.at`'s ``how``).

    ``lst`` and ``unc`` (K, NaN where masked) and ``qc`` are the blocks, ``flags`` the ``qc`` flag table and
    ``half`` the window's half-width (px). ``"mean"``: the mean of the valid pixels and the OR of the ``qc`` of
    the produced ones (the centre's where none is); ``"nearest"``: the valid pixel nearest the centre (ties:
    raster order), or the centre. Returns ``lst``, ``lst_uncertainty`` (K) and ``qc``, each (site, time).
    """
    valid = np.isfinite(lst)
    if how == "mean":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            v_lst = np.nanmean(lst, axis=(2, 3))
            v_unc = np.nanmean(np.where(valid, unc, np.nan), axis=(2, 3))
        not_prod = _flag_set(qc, flags, [f for f in ("cloud", "not_covered", "missing_ancillary") if f in flags])
        prod = ~not_prod if not_prod is not None else np.ones(qc.shape, dtype=bool)
        v_qc = np.bitwise_or.reduce(np.where(prod, qc, 0), axis=(2, 3)).astype(qc.dtype)
        centre_qc = qc[:, :, half, half]
        v_qc = np.where(prod.any(axis=(2, 3)), v_qc, centre_qc)
    else:
        # the valid pixel nearest the centre: order the window by distance (ties: raster order)
        wy, wx = np.mgrid[-half:half + 1, -half:half + 1]
        order = np.argsort((wy ** 2 + wx ** 2).ravel(), kind="stable")
        flat_valid = valid.reshape(*valid.shape[:2], -1)[..., order]
        first = np.where(flat_valid.any(-1), flat_valid.argmax(-1), 0)
        pick = order[first]
        take = lambda a: np.take_along_axis(a.reshape(*a.shape[:2], -1), pick[..., None], -1)[..., 0]  # noqa: E731
        v_lst, v_unc = take(lst), take(unc)
        v_qc = np.where(valid.any(axis=(2, 3)), take(qc), qc[:, :, half, half])
    return v_lst, v_unc, v_qc


def _check_freq(freq: str) -> None:
    try:
        pd.tseries.frequencies.to_offset(freq)
    except (ValueError, TypeError):
        raise ValueError(f"freq {freq!r} is not a pandas frequency (e.g. 'MS', 'QS-DEC', 'YS')") from None


def _systematic(ds: xr.Dataset) -> float | None:
    v = ds.attrs.get("uncertainty_systematic_k")
    try:
        return float(v) if v is not None and str(v) != "" else None
    except ValueError:
        return None


def _pick_time(da: xr.DataArray, time: Any) -> xr.DataArray:
    if isinstance(time, int | np.integer):
        if not -da.sizes["time"] <= time < da.sizes["time"]:
            raise ValueError(f"time index {time} outside 0..{da.sizes['time'] - 1}")
        return da.isel(time=int(time))
    try:
        return da.sel(time=np.datetime64(pd.Timestamp(time)))
    except (KeyError, ValueError):
        raise ValueError(f"time {time!r} is not a time step of the cube") from None
