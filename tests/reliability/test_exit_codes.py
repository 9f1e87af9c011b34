"""Exit codes: bad input is one line and exit 2; a bug keeps its traceback (issue 13, failure visibility)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sftl_dask.simulate as simulate
from sftl_dask.cli import _is_input_error, main


def _bug_inside_numpy(*args: object, **kwargs: object) -> None:
    np.zeros(-1)  # numpy refuses the value: ValueError "negative dimensions are not allowed"


def test_a_valueerror_from_a_library_bug_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(simulate, "read_simulation_columns", lambda *a, **k: {})
    monkeypatch.setattr(simulate, "fit_split_window_on_simulation", _bug_inside_numpy)
    with pytest.raises(ValueError, match="negative dimensions"):
        main(["fit-sw", "--sim", str(tmp_path / "sim.parquet"), "--out", str(tmp_path / "sw.json")])
    assert not (tmp_path / "sw.json").exists()


def test_a_refused_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["fit-sw", "--sim", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "sw.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "missing.parquet" in err[0] and "Traceback" not in err[0]


def test_debug_shows_the_traceback_of_a_refused_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["fit-sw", "--sim", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "sw.json"), "--debug"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith(
        "sftl fit-sw: error:")


def test_input_errors_are_told_from_bugs_by_where_they_are_raised(tmp_path: Path) -> None:
    from sftl_dask.io.insitu import read_sites

    bad = tmp_path / "sites.csv"
    bad.write_text("id,region,lon\nA,x,1\n")
    with pytest.raises(ValueError) as refused:
        read_sites(bad)  # a `raise ValueError(...)` in the package naming the file: input
    assert _is_input_error(refused.value)
    with pytest.raises(ValueError) as bug:
        np.asarray(["x"], dtype=float)  # raised inside numpy: not an input check
    assert not _is_input_error(bug.value)
    from sftl_dask.retrieve import RetrieveError

    assert _is_input_error(RetrieveError("x"))  # the package's own error classes, wherever raised


def test_ingest_with_failed_scenes_exits_1_naming_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import sftl_dask.ingest as ingest

    failed = [{"scene_id": "GF5B_A", "reason": "ERA5 files do not cover time 2022-06-12T03:00"},
              {"scene_id": "GF5B_B", "reason": "truncated tar: member B10.tif ends early"}]
    monkeypatch.setattr(ingest, "check_ingest", lambda *a, **k: {"products": 2, "tile_px": 1024})
    monkeypatch.setattr(ingest, "ingest", lambda *a, **k: {"ingested": 0, "skipped": 0, "failed": failed,
                                                           "seconds": 0.1, "stores": []})
    rc = main(["ingest", str(tmp_path), "--cube", str(tmp_path / "c.zarr"), "--era5", "e.nc", "--ged", str(tmp_path),
               "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "failed: GF5B_A: ERA5 files do not cover" in out and "failed: GF5B_B: truncated tar" in out


def test_experiment_with_failed_cells_exits_1_naming_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import pandas as pd

    import sftl_dask.pipelines.experiment as experiment

    table = pd.DataFrame({"model": ["dnn", "trf"], "strategy": ["full", "lora"], "direction": ["SiHuHe"] * 2,
                          "seed": [0, 1], "error": ["", "RuntimeError: out of memory\n  at ..."]})
    monkeypatch.setattr(experiment, "load_grid", lambda path: {})
    monkeypatch.setattr(experiment, "run_experiment", lambda *a, **k: table)
    rc = main(["experiment", "--config", "x.yaml", "--out", str(tmp_path / "e"), "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 1 and "2 runs (1 failed)" in out and "failed: trf lora SiHuHe 1: RuntimeError: out of memory" in out
