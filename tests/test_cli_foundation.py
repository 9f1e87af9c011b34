"""The `sftl` command on the foundation verbs: outputs, progress, and bad input (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from sftl_dask.cli import main

SFTL = [sys.executable, "-m", "sftl_dask.cli"]


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(SFTL + args, capture_output=True, text=True, cwd=tmp_path, timeout=600)


@pytest.fixture(scope="module")
def small_sim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "t.parquet"
    assert main(["simulate", "--out", str(out), "--profiles", "40", "--spectra", "12", "--workers", "1"]) == 0
    return out


def test_simulate_writes_dataset_with_expected_rows(small_sim):
    assert ds.dataset(small_sim, format="parquet").count_rows() == 40 * 12 * 3 * 2
    assert not list(small_sim.parent.glob(".*tmp*")), "temporary directory left behind"


def test_fit_sw_prints_window_table_and_writes_json(small_sim, tmp_path, capsys):
    out = tmp_path / "sw.json"
    assert main(["fit-sw", "--sim", str(small_sim), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RMSE holdout K" in printed
    d = json.loads(out.read_text())
    assert d["windows"] and all("coefficients" in w for w in d["windows"])


def test_simulate_refuses_existing_output_with_one_line(small_sim, tmp_path):
    r = _run(["simulate", "--out", str(small_sim), "--profiles", "2"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "already exists" in r.stderr and str(small_sim) in r.stderr


def test_fit_sw_on_missing_file_exits_2_naming_it(tmp_path):
    r = _run(["fit-sw", "--sim", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "sw.json")], tmp_path)
    assert r.returncode == 2 and "nope.parquet" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "sw.json").exists()


def test_fit_sw_on_non_parquet_exits_2_naming_it(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    r = _run(["fit-sw", "--sim", str(bad), "--out", str(tmp_path / "sw.json")], tmp_path)
    assert r.returncode == 2 and "bad.parquet" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "sw.json").exists()


def test_fit_sw_on_table_without_columns_names_them(tmp_path):
    import pandas as pd

    p = tmp_path / "cols.parquet"
    pd.DataFrame({"lst": [300.0]}).to_parquet(p)
    r = _run(["fit-sw", "--sim", str(p), "--out", str(tmp_path / "sw.json")], tmp_path)
    assert r.returncode == 2 and "missing column(s) bt_10_80" in r.stderr


def test_bad_numeric_argument_exits_2(tmp_path):
    r = _run(["simulate", "--out", str(tmp_path / "x"), "--profiles", "0"], tmp_path)
    assert r.returncode == 2 and "must be >= 1" in r.stderr


def test_unreachable_scheduler_exits_2_naming_address(tmp_path):
    r = _run(["simulate", "--out", str(tmp_path / "x"), "--profiles", "2", "--scheduler", "tcp://127.0.0.1:1"],
             tmp_path)
    assert r.returncode == 2 and "127.0.0.1:1" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()


def test_report_writes_dasks_performance_report_of_the_run(tmp_path):
    from sftl_dask.cli import main

    page = tmp_path / "perf" / "simulate.html"
    assert main(["simulate", "--out", str(tmp_path / "sim.parquet"), "--profiles", "2", "--spectra", "2",
                 "--workers", "1", "--report", str(page)]) == 0
    html = page.read_text()
    assert "Dask Performance Report" in html and "Task Stream" in html and len(html) > 10_000
