"""docs/api.md's code blocks run as written (issue 24, finding 8), on a small LST root laid out as the testbed's:
two zones (``47N_138_014``, ``50N_134_009``) and ``tb/sites.csv`` with Daman (HH01) among its sites."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from helpers import lst_store_from_arrays, pixel_lonlat, synthetic_lst_cube

from sftl_dask.api import SparseMaskWarning
from sftl_dask.plotting import pyplot

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def testbed_like(tmp_path: Path) -> Path:
    lst = tmp_path / "lst"
    lst.mkdir()
    synthetic_lst_cube(lst / "47N_138_014.zarr", n_times=12, step_days=30)  # EPSG:32650: the tile names only
    far = (600_000.0, 4_700_000.0)
    times = np.datetime64("2021-01-07T03:10") + np.arange(6) * np.timedelta64(20, "D")
    field = 285.0 + np.arange(6)[:, None, None] + np.zeros((6, 12, 12))
    lst_store_from_arrays(lst / "50N_134_009.zarr", times, field, np.full(field.shape, 1.2),
                          np.zeros(field.shape, np.uint16), origin=far)
    rows = [("HH01", "Daman", "heihe", *pixel_lonlat(5, 6)), ("HH02", "Huazhaizi", "heihe", *pixel_lonlat(20, 9)),
            ("HH03", "Zhangye wetland", "heihe", *pixel_lonlat(33, 30)),
            ("HL01", "Huailai station", "huailai", *pixel_lonlat(3, 4, origin=far)),
            ("HL02", "Huailai maize east", "huailai", *pixel_lonlat(8, 7, origin=far))]
    (tmp_path / "tb").mkdir()
    pd.DataFrame(rows, columns=["id", "name", "region", "lon", "lat"]).to_csv(tmp_path / "tb" / "sites.csv",
                                                                              index=False)
    return tmp_path


def test_the_walkthrough_has_code_blocks_naming_the_testbeds_tiles() -> None:
    text = DOC.read_text()
    assert len(_blocks()) >= 6
    assert "47N_138_014" in text and "epsg32647_e603.52_n4320.48" not in text
    assert "311/311" in text and "310/310" not in text  # the LST step's score, as docs/exports.md gives it


def test_every_code_block_of_docs_api_runs_as_written(testbed_like: Path) -> None:
    matplotlib.use("Agg")
    here = os.getcwd()
    os.chdir(testbed_like)
    scope: dict[str, object] = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SparseMaskWarning)
            warnings.simplefilter("ignore", UserWarning)  # sites of the other zone, left out by at_sites
            for k, block in enumerate(_blocks()):
                exec(compile(block, f"docs/api.md block {k}", "exec"), scope)
    finally:
        os.chdir(here)
        pyplot().close("all")
    everyone = scope["everyone"]
    assert sorted(everyone["site"].unique()) == ["HH01", "HH02", "HH03", "HL01", "HL02"]
    assert everyone.groupby("site")["zone"].first().to_dict() == {"HH01": "47N", "HH02": "47N", "HH03": "47N",
                                                                   "HL01": "50N", "HL02": "50N"}
    assert [t.get_text() for t in scope["ax"].get_legend().get_texts()] == ["Daman"]
    for name in ("lst_step.nc", "lst_monthly.nc", "lst_clim.nc", "lst_anom.nc", "lst_step.tif", "qc_step.tif"):
        assert (testbed_like / name).stat().st_size > 1000, name
