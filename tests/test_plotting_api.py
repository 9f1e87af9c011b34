"""Every figure of the LST API says what it shows: titles, axis and colour-bar labels, legends (issue 24, finding 5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from helpers import synthetic_lst_cube
from pyproj import Transformer

import sftl_dask
from sftl_dask import plotting
from sftl_dask.io.lst import QC_FLAGS

CRS_WORDS = "EPSG:32650, WGS 84 / UTM zone 50N"


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> xr.Dataset:
    return sftl_dask.open_lst(synthetic_lst_cube(tmp_path_factory.mktemp("plots") / "l.zarr", n_times=30)).compute()


@pytest.fixture(autouse=True)
def _close() -> object:
    yield
    plotting.pyplot().close("all")


def _lonlat(row: int, col: int) -> tuple[float, float]:
    return Transformer.from_crs("EPSG:32650", "EPSG:4326", always_xy=True).transform(
        400_000 + 40 * (col + 0.5), 4_500_000 - 40 * (row + 0.5))


def _colorbar_label(ax) -> str:
    return ax.figure.axes[-1].get_ylabel()


def test_cube_map_is_titled_by_its_long_name_and_time_with_the_crs_on_the_axis(ds: xr.Dataset) -> None:
    ax = ds.sftl.plot_map(time=4)
    assert ax.get_title() == f"LST, {pd.Timestamp(ds['time'].values[4]).strftime('%Y-%m-%d %H:%M')} UTC"
    assert ax.get_xlabel() == f"easting (km) ({CRS_WORDS})" and ax.get_ylabel() == "northing (km)"
    assert _colorbar_label(ax) == "LST (K)" and ax.images[0].get_cmap().name == "inferno"


def test_composite_map_says_monthly_median_and_the_month(ds: xr.Dataset) -> None:
    monthly = ds.sftl.good(check=False).sftl.composite("MS", how="median")
    ax = monthly.sftl.plot_map(time=7)
    month = pd.Timestamp(monthly["time"].values[7]).strftime("%b %Y")
    assert ax.get_title() == f"monthly median LST, {month}" and month == "Aug 2021"
    assert _colorbar_label(ax) == "monthly median LST (K)"
    n = monthly.sftl.plot_map(time=7, var="n_obs")
    assert n.get_title() == "number of LST values in the month, Aug 2021" and _colorbar_label(n) == \
        "number of LST values in the month"


def test_anomaly_map_diverges_around_zero(ds: xr.Dataset) -> None:
    anom = ds.sftl.anomaly(ds.sftl.climatology("month"))
    ax = anom.sftl.plot_map(time=2)
    img = ax.images[0]
    assert img.get_cmap().name == "RdBu_r"
    lo, hi = img.get_clim()
    assert lo == -hi and hi > 0
    assert ax.get_title().startswith("LST anomaly (minus the mean of its month), 2021-02-")
    assert _colorbar_label(ax) == "LST anomaly (minus the mean of its month) (K)"


def test_qc_map_is_categorical_with_a_legend_of_the_classes(ds: xr.Dataset) -> None:
    ax = ds.sftl.plot_map(time=0, var="qc")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert [lab.rsplit(" (", 1)[0] for lab in labels] == list(plotting.QC_CLASS_NAMES)
    qc = ds["qc"].values[0].astype(np.int64)
    cloud = int(((qc & QC_FLAGS["cloud"][0]) > 0).sum())
    assert labels[4] == f"cloud ({cloud / qc.size:.0%})" and cloud == 36
    assert ax.get_legend().get_title().get_text() == "QC class"
    assert ax.get_title().startswith("LST quality control classes, 2021-01-05")
    assert len(ax.figure.axes) == 1  # no continuous colour bar


def test_series_legends_name_the_sites_and_anomaly_series_have_a_zero_line(ds: xr.Dataset) -> None:
    sites = pd.DataFrame({"id": ["HH01", "HH02"], "name": ["Daman", "Huazhaizi"],
                          "lon": [_lonlat(5, 6)[0], _lonlat(30, 20)[0]], "lat": [_lonlat(5, 6)[1], _lonlat(30, 20)[1]]})
    ax = ds.sftl.plot_sites(sites)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Daman (HH01)", "Huazhaizi (HH02)"]
    assert ax.get_ylabel() == "LST (K)" and ax.get_title() == "LST (±1σ)" and ax.get_xlabel() == "time (UTC)"
    anom = ds.sftl.anomaly(ds.sftl.climatology("month"))
    ax2 = anom.sftl.plot_series(*_lonlat(5, 6), label="Daman")
    zero = [ln for ln in ax2.get_lines() if list(ln.get_ydata()) == [0.0, 0.0]]
    assert len(zero) == 1 and ax2.get_ylabel() == "LST anomaly (K)"
    assert [t.get_text() for t in ax2.get_legend().get_texts()] == ["Daman"]


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the plotting functions save (they close them): what a reader of the PNG sees."""
    figure = plotting.pyplot().Figure
    orig, got = figure.savefig, []

    def keep(fig, path, **kw):
        got.append(fig)
        return orig(fig, path, **kw)

    monkeypatch.setattr(figure, "savefig", keep)
    return got


def test_composite_and_qc_figures_of_the_demo(ds: xr.Dataset, tmp_path: Path, saved: list) -> None:
    monthly = ds.sftl.good(check=False).sftl.composite("MS")
    plotting.composite_figure(monthly, 7, "Heihe", tmp_path / "c.png", crs=CRS_WORDS)
    step = ds.isel(time=3)
    plotting.lst_qc_figure(step, plotting.qc_classes(step["qc"].values, QC_FLAGS), "heihe", tmp_path / "q.png",
                           crs=CRS_WORDS)
    c, q = saved
    assert [a.get_title() for a in c.axes[:2]] == ["Heihe: monthly median LST, Aug 2021",
                                                   "number of LST values in the month, Aug 2021"]
    assert c.axes[0].get_xlabel() == f"easting (km) ({CRS_WORDS})"
    when = pd.Timestamp(ds["time"].values[3]).strftime("%Y-%m-%d %H:%M")
    assert [a.get_title() for a in q.axes[:2]] == [f"heihe: LST {when} UTC", f"heihe: QC classes {when} UTC"]
    assert [t.get_text().rsplit(" (", 1)[0] for t in q.axes[1].get_legend().get_texts()] == \
        list(plotting.QC_CLASS_NAMES)
    assert (tmp_path / "c.png").stat().st_size > 20_000 and (tmp_path / "q.png").stat().st_size > 20_000


def test_validation_time_series_titles_give_site_names(tmp_path: Path, saved: list) -> None:
    t = pd.date_range("2022-06-01T04:00", periods=4, freq="8D")
    matchups = pd.DataFrame({"site": ["HH01"] * 4, "reason": ["ok"] * 4, "time_utc": t, "lst": [300.0, 301, 302, 303],
                             "lst_uncertainty": [1.0] * 4, "lst_insitu": [300.5, 301.5, 301.0, 303.5]})
    table = pd.DataFrame({"level": ["site"], "name": ["HH01"], "region": ["heihe"], "n": [4], "rmse_k": [0.61],
                          "bias_k": [-0.25]})
    shown = plotting.validation_timeseries(matchups, {}, table, tmp_path / "ts.png", window_min=5,
                                           names={"HH01": "Daman"})
    assert shown == ["HH01"]
    assert saved[0].axes[0].get_title() == "Daman (HH01, heihe): n=4, RMSE 0.61 K, bias -0.25 K"
    assert [t.get_text() for t in saved[0].axes[0].get_legend().get_texts()] == ["in situ ±5 min", "retrieved ±1σ"]
