"""The LST time-series API: open_lst and the ``.sftl`` accessor on a small LST cube with known values."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import synthetic_lst_cube
from pyproj import Transformer

import sftl_dask
from sftl_dask.api import GOOD_MASKS, locate, open_lst
from sftl_dask.io.lst import QC_FLAGS
from sftl_dask.io.stores import open_store

CRS = "EPSG:32650"


@pytest.fixture(scope="module")
def lst_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lst") / "lst"
    root.mkdir()
    synthetic_lst_cube(root / "g1.zarr", n_times=48, incomplete_last=True)  # 2021-01-05 .. 2023-01-..
    return root


@pytest.fixture(scope="module")
def ds(lst_root: Path) -> xr.Dataset:
    return open_lst(lst_root / "g1.zarr")


@pytest.fixture(scope="module")
def loaded(ds: xr.Dataset) -> xr.Dataset:
    """The same cube in memory: what the lazy results are compared with."""
    return ds.compute()


def _lonlat(x: float, y: float) -> tuple[float, float]:
    return Transformer.from_crs(CRS, "EPSG:4326", always_xy=True).transform(x, y)


def test_open_lst_lazy_complete_sorted_with_crs(lst_root: Path, ds: xr.Dataset) -> None:
    raw = open_store(lst_root / "g1.zarr")
    assert raw.sizes["time"] == 48 and ds.sizes["time"] == 47  # the unfinished step is left out
    assert ds["lst"].chunks is not None and ds["lst"].data.chunksize == (1, 16, 16)
    assert bool((np.diff(ds["time"].values) > np.timedelta64(0)).all())
    assert ds.rio.crs.to_epsg() == 32650
    assert hasattr(ds, "sftl") and sftl_dask.open_lst is open_lst
    # a root with one grid opens without naming it; by name and by a point inside it too
    assert open_lst(lst_root).sizes == ds.sizes
    assert open_lst(lst_root, grid="g1").sizes == ds.sizes
    lon, lat = _lonlat(400_000 + 100.0, 4_500_000 - 100.0)
    assert open_lst(lst_root, grid=(lon, lat)).sizes == ds.sizes


def test_open_lst_bad_input(lst_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: no LST store")):
        open_lst(tmp_path)
    with pytest.raises(ValueError, match="no tile 'nope'"):
        open_lst(lst_root, grid="nope")
    with pytest.raises(ValueError, match="outside every tile"):
        open_lst(lst_root, grid=(10.0, 10.0))
    two = tmp_path / "two"
    shutil.copytree(lst_root, two)
    shutil.copytree(two / "g1.zarr", two / "g2.zarr")
    with pytest.raises(ValueError, match=re.escape("holds 2 zones (g1: g1; g2: g2); open one with open_lst(path, "
                                                   "zone='g1')")):
        open_lst(two)
    # an LST store without qc
    import zarr

    shutil.rmtree(two / "g2.zarr" / "qc")
    zarr.consolidate_metadata(str(two / "g2.zarr"))
    with pytest.raises(ValueError, match="variable 'qc' missing"):
        open_lst(two, grid="g2")


def test_mask_and_good(ds: xr.Dataset, loaded: xr.Dataset) -> None:
    qc = loaded["qc"].values
    lst = loaded["lst"].values
    adj = (qc & QC_FLAGS["cloud_adjacent"][0]) > 0
    m = ds.sftl.mask(["cloud_adjacent"]).compute()
    got = m["lst"].values
    assert np.isnan(got[adj]).all()
    np.testing.assert_array_equal(got[~adj], lst[~adj])
    assert int(adj.sum()) > 0 and m.attrs["sftl_masked_flags"] == "cloud_adjacent"
    good = loaded.sftl.good()  # in memory: the same code as on the lazy cube above
    bad = np.zeros_like(adj)
    for f in GOOD_MASKS:
        bad |= (qc & QC_FLAGS[f][0]) > 0
    assert np.isnan(good["lst"].values[bad]).all()
    np.testing.assert_array_equal(good["lst"].values[~bad], lst[~bad])
    np.testing.assert_array_equal(good["qc"].values, qc)  # qc itself untouched
    # an uncertainty threshold; the uncertainty class flags by name
    small = loaded.sftl.mask(max_uncertainty=2.0)["lst_uncertainty"].values
    assert np.nanmax(small) <= 2.0 and np.isfinite(small).sum() < np.isfinite(loaded["lst_uncertainty"].values).sum()
    cls = loaded.sftl.mask("uncertainty_gt_3k")["lst"].values  # the class of every cloud pixel: already NaN
    assert np.isnan(cls).sum() == np.isnan(lst).sum()
    with pytest.raises(ValueError, match="unknown qc flag 'cloudy'"):
        ds.sftl.mask(["cloudy"])


def test_at_equals_the_pixel(ds: xr.Dataset, loaded: xr.Dataset) -> None:
    r, c = 21, 13
    x, y = float(ds["x"][c]), float(ds["y"][r])
    lon, lat = _lonlat(x + 7.0, y - 9.0)  # inside the pixel, off its centre
    rows, cols = locate(ds, [lon], [lat])
    assert (int(rows[0]), int(cols[0])) == (r, c)
    ts = ds.sftl.at(lon=lon, lat=lat)
    assert list(ts.columns) == ["lst", "lst_uncertainty", "qc", "n_valid"]
    assert len(ts) == ds.sizes["time"] and (ts.index.values == ds["time"].values).all()
    np.testing.assert_array_equal(ts["lst"].to_numpy(), loaded["lst"].values[:, r, c])
    np.testing.assert_array_equal(ts["qc"].to_numpy(), loaded["qc"].values[:, r, c])
    np.testing.assert_array_equal(ts["n_valid"].to_numpy(), np.isfinite(loaded["lst"].values[:, r, c]).astype(int))
    # a 3 x 3 mean: numpy by hand; uncertainty = mean of the valid pixels' (correlated within a scene)
    m = ds.sftl.at(lon=lon, lat=lat, window=3, how="mean")
    block = loaded["lst"].values[:, r - 1:r + 2, c - 1:c + 2].astype(np.float64)
    ublock = loaded["lst_uncertainty"].values[:, r - 1:r + 2, c - 1:c + 2].astype(np.float64)
    with np.errstate(all="ignore"), _quiet():
        want = np.nanmean(block, axis=(1, 2))
        uwant = np.nanmean(ublock, axis=(1, 2))
    np.testing.assert_allclose(m["lst"].to_numpy(), want, rtol=0, atol=1e-4)
    np.testing.assert_allclose(m["lst_uncertainty"].to_numpy(), uwant, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(m["n_valid"].to_numpy(), np.isfinite(block).sum((1, 2)))
    # nearest with a window: the centre where valid, else the valid pixel nearest it
    n = ds.sftl.at(lon=lon, lat=lat, window=3, how="nearest")
    centre = loaded["lst"].values[:, r, c]
    ok = np.isfinite(centre)
    np.testing.assert_array_equal(n["lst"].to_numpy()[ok], centre[ok])
    cloudy_centre = ~ok & np.isfinite(block).any((1, 2))
    for t in np.flatnonzero(cloudy_centre):
        cross = block[t][[0, 1, 1, 2], [1, 0, 2, 1]]
        assert n["lst"].iloc[t] in set(cross[np.isfinite(cross)]) or not np.isfinite(cross).any()
    with pytest.raises(ValueError, match="lies outside the grid"):
        ds.sftl.at(lon=100.0, lat=10.0)
    with pytest.raises(ValueError, match="window 4"):
        ds.sftl.at(lon=lon, lat=lat, window=4)


def test_at_sites_reads_only_the_sites_chunks(lst_root: Path) -> None:
    """18 sites over 4 of the 9 chunks of each step: only those chunks are read."""
    from zarr.storage import LocalStore, WrapperStore

    class Counting(WrapperStore):
        keys: ClassVar[list[str]] = []

        async def get(self, key, prototype, byte_range=None):  # type: ignore[no-untyped-def]
            Counting.keys.append(key)
            return await super().get(key, prototype, byte_range)

    store = Counting(LocalStore(str(lst_root / "g1.zarr"), read_only=True))
    ds = xr.open_zarr(store, consolidated=True, decode_coords="all", zarr_format=2)
    ds = ds.isel(time=np.flatnonzero(ds["retrieve_ok"].values))
    ref = open_lst(lst_root / "g1.zarr")
    chunk_rc = [(2, 2), (2, 20), (20, 2), (33, 33)]  # one site group per chunk (16 px chunks)
    rows, cols, ids = [], [], []
    for k in range(18):
        r, c = chunk_rc[k % 4]
        r, c = r + (k // 4) % 3, c + (k // 4) // 3
        rows.append(r)
        cols.append(c)
        ids.append(f"S{k:02d}")
    lonlat = [_lonlat(float(ref["x"][c]), float(ref["y"][r])) for r, c in zip(rows, cols, strict=True)]
    sites = pd.DataFrame({"id": ids, "lon": [p[0] for p in lonlat], "lat": [p[1] for p in lonlat]})
    Counting.keys.clear()
    table = ds.sftl.at_sites(sites)
    chunk_keys = [k for k in Counting.keys if re.fullmatch(r"(lst|lst_uncertainty|qc)/\d+\.\d+\.\d+", k)]
    want = {f"{v}/{t}.{r // 16}.{c // 16}" for v in ("lst", "lst_uncertainty", "qc")
            for t in np.flatnonzero(open_store(lst_root / "g1.zarr")["retrieve_ok"].values)
            for r, c in zip(rows, cols, strict=True)}
    assert set(chunk_keys) == want
    assert len(chunk_keys) == len(want) == 3 * 47 * 4  # each chunk read once, 4 of 9 per step
    assert list(table.columns) == ["time", "site", "lst", "lst_uncertainty", "qc", "n_valid"]
    assert len(table) == 18 * 47
    for k in (0, 7, 17):
        one = table[table["site"] == ids[k]]
        np.testing.assert_array_equal(one["lst"].to_numpy(), ref["lst"].values[:, rows[k], cols[k]])
    # a site outside the grid is left out with a warning
    far = pd.concat([sites.iloc[:2], pd.DataFrame({"id": ["FAR"], "lon": [100.0], "lat": [10.0]})])
    with pytest.warns(UserWarning, match="left out: FAR"):
        t2 = ref.sftl.at_sites(far)
    assert sorted(set(t2["site"])) == ["S00", "S01"] and t2.attrs["outside"] == ["FAR"]
    with pytest.raises(ValueError, match="lacks column 'lat'"):
        ref.sftl.at_sites(sites.drop(columns="lat"))


def test_composite_equals_numpy_by_hand(ds: xr.Dataset, loaded: xr.Dataset) -> None:
    comp = ds.sftl.composite("MS", how="median").compute()
    months = pd.DatetimeIndex(ds["time"].values).to_period("M")
    periods = pd.PeriodIndex(sorted(set(months)), freq="M")  # months without an overpass are left out
    assert comp.sizes["time"] == len(periods)
    np.testing.assert_array_equal(comp["time"].values, periods.to_timestamp().values)
    lst = loaded["lst"].values.astype(np.float64)
    unc = loaded["lst_uncertainty"].values.astype(np.float64)
    sys_k = 1.0
    for i, p in enumerate(periods):
        sel = months == p
        got = comp.isel(time=i)
        if not sel.any():
            assert int(got["n_obs"].max()) == 0 and bool(np.isnan(got["lst"]).all())
            continue
        with np.errstate(all="ignore"), _quiet():
            want = np.nanmedian(lst[sel], axis=0)
        np.testing.assert_allclose(got["lst"].values, want, rtol=0, atol=1e-4)
        n = np.isfinite(lst[sel]).sum(0)
        np.testing.assert_array_equal(got["n_obs"].values, n)
        with np.errstate(all="ignore"), _quiet():
            rand2 = np.nanmean(np.clip(unc[sel] ** 2 - sys_k ** 2, 0, None), axis=0)
            want_u = np.sqrt(sys_k ** 2 + (math.pi / 2) * rand2 / n)
        np.testing.assert_allclose(got["lst_uncertainty"].values, want_u, rtol=1e-5, equal_nan=True)
    # the systematic part is never divided by sqrt(n): a long composite keeps >= 1 K
    year = loaded.sftl.composite("YS", how="mean")  # in memory from here: the same code
    assert float(year["lst_uncertainty"].min()) >= sys_k - 1e-6
    assert int(year["n_obs"].max()) >= 20
    # min_count: pixels with fewer values are NaN
    strict = loaded.sftl.composite("MS", how="mean", min_count=2)
    c = strict["n_obs"].values
    assert np.isnan(strict["lst"].values[c < 2]).all() and np.isfinite(strict["lst"].values[c >= 2]).all()
    mx = loaded.sftl.composite("QS-DEC", how="max")
    q = pd.DatetimeIndex(mx["time"].values)
    assert set(q.month) <= {12, 3, 6, 9}
    with pytest.raises(ValueError, match="freq 'monthly' is not a pandas frequency"):
        ds.sftl.composite("monthly")
    with pytest.raises(ValueError, match="how 'mode'"):
        ds.sftl.composite("MS", how="mode")


def test_composite_without_the_split_is_all_systematic(tmp_path: Path) -> None:
    ds = open_lst(synthetic_lst_cube(tmp_path / "l.zarr", n_times=6, step_days=3, systematic_k=None))
    comp = ds.sftl.composite("MS", how="mean")
    unc = ds["lst_uncertainty"].values.astype(np.float64)
    months = pd.DatetimeIndex(ds["time"].values).month
    sel = months == months[0]
    with np.errstate(all="ignore"), _quiet():
        want = np.sqrt(np.nanmean(unc[sel] ** 2, axis=0))
    np.testing.assert_allclose(comp["lst_uncertainty"].isel(time=0).values, want, rtol=1e-5, equal_nan=True)


def test_climatology_and_anomaly(ds: xr.Dataset, loaded: xr.Dataset) -> None:
    clim = ds.sftl.climatology("month").compute()
    assert clim.sizes["month"] == 12
    lst = loaded["lst"].values.astype(np.float64)
    months = pd.DatetimeIndex(ds["time"].values).month
    with np.errstate(all="ignore"), _quiet():
        np.testing.assert_allclose(clim["lst"].sel(month=7).values, np.nanmean(lst[months == 7], axis=0), atol=1e-4)
    anom = ds.sftl.anomaly(clim)
    a = anom["lst"].compute()
    assert anom.attrs["sftl_quantity"] == "anomaly" and "qc" in anom
    assert a.dims == ("time", "y", "x")
    # over the climatology's own period, each month's anomalies average to zero
    per_month = a.groupby("time.month").mean().values
    assert np.nanmax(np.abs(per_month)) < 1e-4
    with pytest.raises(ValueError, match="by 'week'"):
        ds.sftl.climatology("week")
    with pytest.raises(ValueError, match="needs a climatology"):
        ds.sftl.anomaly(ds)


def test_plots(ds: xr.Dataset, tmp_path: Path) -> None:
    ax = ds.sftl.plot_map()
    ax.figure.savefig(tmp_path / "map.png")
    assert ax.get_title().startswith("LST, 20") and ax.get_title().endswith(" UTC") and len(ax.images) == 1
    r, c = 21, 13
    lon, lat = _lonlat(float(ds["x"][c]), float(ds["y"][r]))
    ax2 = ds.sftl.plot_series(lon, lat)
    ax2.figure.savefig(tmp_path / "series.png")
    assert (tmp_path / "map.png").stat().st_size > 10_000 and (tmp_path / "series.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="time '1999-01-01' is not a step of the dataset"):
        ds.sftl.plot_map(time="1999-01-01")


class _quiet:
    def __enter__(self) -> None:
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._cm.__exit__(*exc)


def test_at_reads_the_time_series_copy_when_it_is_up_to_date(tmp_path: Path) -> None:
    from sftl_dask.rechunk import rechunk

    root = tmp_path / "lst"
    root.mkdir()
    synthetic_lst_cube(root / "g1.zarr", n_times=8)
    direct = open_lst(root)
    r, c = 9, 30
    lon, lat = _lonlat(float(direct["x"][c]), float(direct["y"][r]))
    want = direct.sftl.at(lon=lon, lat=lat, window=3, how="mean")
    rechunk(root)  # -> lst_ts/g1.zarr, where open_lst's accessor looks for it
    assert open_lst(root).sizes == direct.sizes  # the copy is not a grid of the root
    ds = open_lst(root)
    src, _ = ds.sftl._point_source()
    assert src["lst"].chunks == ((8,), (40,), (36,)) or src["lst"].data.chunksize[0] == 8
    pd.testing.assert_frame_equal(ds.sftl.at(lon=lon, lat=lat, window=3, how="mean"), want)
    good = ds.sftl.good()  # masks recorded in the attributes are applied to what the copy gives
    pd.testing.assert_frame_equal(good.sftl.at(lon=lon, lat=lat),
                                  open_lst(root).sftl.good().pipe(lambda d: _no_copy(d)).sftl.at(lon=lon, lat=lat))


def _no_copy(ds: xr.Dataset) -> xr.Dataset:
    return ds.assign_attrs(sftl_store="")  # read from the dataset itself


def test_composite_leaves_out_periods_without_a_time_step(tmp_path: Path) -> None:
    ds = open_lst(synthetic_lst_cube(tmp_path / "l.zarr", n_times=5, step_days=45))  # Jan, Feb, Apr, May, Jul
    comp = ds.sftl.composite("MS", how="median").compute()
    assert [str(t)[:7] for t in comp["time"].values] == ["2021-01", "2021-02", "2021-04", "2021-05", "2021-07"]
    assert int(comp["n_obs"].sum()) == int(ds["lst"].notnull().sum())


# ------------------------------------------------------------------------------------------------ issue 24
def test_composite_is_a_product_of_its_own_with_n_obs_not_count(ds: xr.Dataset) -> None:
    """Finding 1: no inherited valid range or ancillary variables; ``n_obs`` does not shadow Dataset.count."""
    monthly = ds.sftl.good(check=False).sftl.composite("MS", how="median")
    assert "count" not in monthly.data_vars and isinstance(monthly.n_obs, xr.DataArray)
    assert callable(monthly.count)  # xarray's method again
    lst = monthly["lst"].attrs
    assert lst == {"units": "K", "standard_name": "surface_temperature", "units_metadata": "temperature: on_scale",
                   "long_name": "monthly median land surface temperature",
                   "cell_methods": "area: mean where land time: median (unmasked values of each month)"}
    assert monthly["n_obs"].attrs == {"units": "1", "long_name": "number of LST values in the month",
                                      "cell_methods": "time: sum (unmasked values of each month)"}
    assert "valid_min" not in monthly["lst_uncertainty"].attrs
    assert monthly["time"].attrs["long_name"] == "start of the month (UTC)"
    mx = ds.sftl.composite("QS-DEC", how="max")
    assert mx["lst"].attrs["cell_methods"].startswith("area: mean where land time: maximum ")
    assert mx["lst"].attrs["long_name"] == "seasonal max land surface temperature"
    clim = ds.sftl.climatology("month")
    assert set(clim.data_vars) == {"lst", "lst_std", "n_obs"} and "valid_max" not in clim["lst"].attrs
    assert clim["lst"].attrs["cell_methods"].startswith("time: mean within years time: mean over years")


def test_anomaly_has_no_valid_range_and_a_difference_unit(ds: xr.Dataset) -> None:
    """Finding 2."""
    anom = ds.sftl.anomaly(ds.sftl.climatology("month"))
    a = anom["lst"].attrs
    assert "valid_min" not in a and "valid_max" not in a
    assert a["standard_name"] == "surface_temperature_anomaly" and a["units_metadata"] == "temperature: difference"
    assert a["ancillary_variables"] == "lst_uncertainty qc"
    assert list(anom["scene_id"].values) == list(ds["scene_id"].values)  # the steps keep their ids


def test_point_and_plot_verbs_work_on_composites_and_climatologies(ds: xr.Dataset, loaded: xr.Dataset) -> None:
    """Finding 3: at() on a composite, plot_map on a climatology; masks refuse in one line saying what it is."""
    r, c = 21, 13
    lon, lat = _lonlat(float(ds["x"][c]), float(ds["y"][r]))
    monthly = ds.sftl.composite("MS", how="median")
    ts = monthly.sftl.at(lon=lon, lat=lat)
    assert list(ts.columns) == ["lst", "lst_uncertainty", "n_obs", "n_valid"] and ts.index.name == "time"
    np.testing.assert_allclose(ts["lst"].to_numpy(), monthly["lst"].values[:, r, c], rtol=0, atol=0)
    np.testing.assert_array_equal(ts["n_obs"].to_numpy(), monthly["n_obs"].values[:, r, c])
    clim = ds.sftl.climatology("month")
    per_month = clim.sftl.at(lon=lon, lat=lat)
    assert per_month.index.name == "month" and list(per_month.index) == list(range(1, 13))
    np.testing.assert_allclose(per_month["lst"].to_numpy(), clim["lst"].values[:, r, c].astype(np.float32))
    ax = clim.sftl.plot_map(time=0)
    assert ax.get_title() == "mean LST of each month over the years, January (2021-2023)"
    ax2 = clim.sel(month=7).sftl.plot_map()
    assert ax2.get_title().endswith(", July (2021-2023)")
    with pytest.raises(ValueError, match=re.escape("ds.sftl.mask: a monthly median composite (lst, lst_uncertainty, "
                                                   "n_obs over (time, y, x)) has no 'qc'")):
        monthly.sftl.mask(["cloud"])
    with pytest.raises(ValueError, match=re.escape("ds.sftl.flags: a climatology by month")):
        clim.sftl.good()


def test_per_time_metadata_are_coordinates_so_chunks_work(ds: xr.Dataset, lst_root: Path) -> None:
    """Finding 4: ``ds.chunks`` raised 'inconsistent chunks along dimension time'."""
    raw = open_store(lst_root / "g1.zarr")
    with pytest.raises(ValueError, match="inconsistent chunks"):
        raw.chunks  # noqa: B018  (the store as plain xarray opens it: what open_lst used to give)
    assert dict(ds.chunks)["time"] == (1,) * 47
    assert {"scene_id", "source", "checksum", "retrieve_ok"} <= set(ds.coords)
    one = ds.isel(time=5)
    assert str(one["scene_id"].values) == "GF5B_VIMI_LST_005" and bool(one["retrieve_ok"])
    assert ds.sel(time=ds["time"][:3])["checksum"].values.tolist() == [f"{i:064x}" for i in range(3)]


def _two_zone_root(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """A root of two zones on different places (g1 from the synthetic cube, g2 from crafted arrays) and 3 sites:
    two in g1, one in g2, one in none."""
    from helpers import lst_store_from_arrays, pixel_lonlat

    root = tmp_path / "two"
    root.mkdir()
    synthetic_lst_cube(root / "g1.zarr", n_times=6)
    times = np.datetime64("2021-01-05T03:30") + np.arange(4) * np.timedelta64(16, "D")
    lst = 280.0 + np.arange(4)[:, None, None] + np.zeros((4, 10, 12))
    lst_store_from_arrays(root / "g2.zarr", times, lst, np.full(lst.shape, 1.5), np.zeros(lst.shape, np.uint16),
                          origin=(600_000.0, 4_700_000.0))
    g2 = pixel_lonlat(4, 5, origin=(600_000.0, 4_700_000.0))
    a, b = _lonlat(400_000 + 40 * 3.5, 4_500_000 - 40 * 2.5), _lonlat(400_000 + 40 * 20.5, 4_500_000 - 40 * 30.5)
    sites = pd.DataFrame({"id": ["A", "B", "C", "FAR"], "name": ["Alpha", "Beta", "Gamma", "Far away"],
                          "lon": [a[0], b[0], g2[0], 10.0], "lat": [a[1], b[1], g2[1], 10.0]})
    return root, sites


def test_at_sites_on_a_root_reads_every_zone_in_one_call(tmp_path: Path) -> None:
    """Finding 6: one table for all sites of all zones; open_lst(root) says which zones and how to pick."""
    root, sites = _two_zone_root(tmp_path)
    with pytest.raises(ValueError, match=re.escape("holds 2 zones (g1: g1; g2: g2); open one with "
                                                   "open_lst(path, zone='g1')")):
        open_lst(root)
    with pytest.warns(UserWarning, match="left out: FAR"):
        table = sftl_dask.at_sites(root, sites)
    assert list(table.columns) == ["time", "site", "zone", "lst", "lst_uncertainty", "qc", "n_valid"]
    assert table.groupby("site")["zone"].first().to_dict() == {"A": "g1", "B": "g1", "C": "g2"}
    assert (table["site"] == "C").sum() == 4 and (table["site"] == "A").sum() == 6
    np.testing.assert_array_equal(table.loc[table["site"] == "C", "lst"].to_numpy(), [280.0, 281.0, 282.0, 283.0])
    g1 = open_lst(root, zone="g1")
    np.testing.assert_array_equal(table.loc[table["site"] == "B", "lst"].to_numpy(), g1["lst"].values[:, 30, 20])
    assert table.attrs["outside"] == ["FAR"]


def test_masks_that_leave_under_one_percent_warn_with_counts_per_flag(tmp_path: Path, ds: xr.Dataset) -> None:
    """Finding 7: every produced pixel has sigma > 3 K; the strict mask leaves 0 % and says so, good() says how
    many of the values it keeps have sigma > 3 K; the ordinary cube's good() is silent."""
    import warnings

    from helpers import lst_store_from_arrays

    from sftl_dask.api import SparseMaskWarning

    shape = (3, 8, 8)
    qc = np.full(shape, 3 << 8, np.uint16)  # uncertainty class 3
    qc[:, 0, :] |= 1  # a cloud row: not produced
    lst = np.where(qc & 1, np.nan, 290.0)
    times = np.datetime64("2022-08-01T03:30") + np.arange(3) * np.timedelta64(5, "D")
    cube = open_lst(lst_store_from_arrays(tmp_path / "s.zarr", times, lst, np.where(qc & 1, np.nan, 3.6), qc))
    with pytest.warns(SparseMaskWarning, match=re.escape("the mask leaves 0 of 168 produced pixels (0.00%); among "
                                                         "the produced: cloud_adjacent 0, uncertainty_gt_3k 168, "
                                                         "sigma > 3 K 168")):
        cube.sftl.mask(["cloud_adjacent", "uncertainty_gt_3k"], max_uncertainty=3.0)
    with pytest.warns(SparseMaskWarning, match=re.escape("168 of the 168 values kept (100%) have an uncertainty "
                                                         "above 3 K; drop them with max_uncertainty=3.0")):
        cube.sftl.good()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SparseMaskWarning)
        ds.sftl.good()  # 2.5 K at most: nothing to say
        cube.sftl.good(check=False)


def test_errors_are_those_xarray_users_expect(ds: xr.Dataset, tmp_path: Path) -> None:
    """Finding 8: FileNotFoundError for a missing path; swapped lon/lat: one clean error, no numpy warning."""
    import warnings

    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'nope'}: no such file or folder")):
        open_lst(tmp_path / "nope")
    lon, lat = _lonlat(400_500.0, 4_499_500.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=re.escape(f"lat={lon:g} is not a longitude (deg E) and latitude "
                                                       "(deg N, -90..90) (lon and lat swapped?)")):
            ds.sftl.at(lon=lat, lat=lon)
    with pytest.raises(ValueError, match="no variable 'lst_k' in an LST cube"):
        ds.sftl.plot_map(var="lst_k")
    out = ds.sftl.to_cog(tmp_path / "qc.tif", time=0, variables=("qc",))  # exports.md's variables=
    import rasterio

    with rasterio.open(out) as f:
        assert f.count == 1 and f.dtypes[0] == "uint16"
        np.testing.assert_array_equal(f.read(1), ds["qc"].values[0])
