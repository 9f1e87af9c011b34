"""`sftl archive`: ingest -> retrieve -> validate -> composites on an operator's inputs, resumable; bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sftl_dask.cli import main
from sftl_dask.pipelines.archive import ArchiveConfigError, load_archive_config, run_archive

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _config(tmp: Path, tb: Path, model_path: Path, **over: object) -> Path:
    cfg = {"name": "tiny", "data": {"archives": [str(tb / "archives")], "era5": str(tb / "era5" / "*.nc"),
                                    "ged": str(tb / "ged"), "insitu": str(tb / "insitu"),
                                    "sites": str(tb / "sites.csv")},
           "tiles": {"size": 512}, "model": {"path": str(model_path)}}
    cfg.update(over)
    path = tmp / "archive.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def model(retrieval_model) -> Path:
    return retrieval_model("sw")


def test_the_archive_pipeline_runs_then_resumes_with_nothing_to_do(small_testbed, model, tmp_path):
    from sftl_dask.cluster import get_client

    cfg = _config(tmp_path, small_testbed, model, composites={"mosaics": True})
    out = tmp_path / "out"
    with get_client(n_workers=2) as client:
        first = run_archive(cfg, out, client=client, log=lambda s: None)
        cfg = _config(tmp_path, small_testbed, model)  # no mosaics asked: those made from the same LST stay
        again = run_archive(cfg, out, client=client, log=lambda s: None)
    steps = {s["step"]: s for s in first["steps"]}
    assert first["failed"] == [] and [s["step"] for s in first["steps"]] == [
        "inputs", "model", "ingest", "retrieve", "validate", "composites"]
    assert steps["ingest"]["ingested"] == 4 and steps["ingest"]["tiles"] >= 8  # 512 px tiles: both grids straddle
    assert steps["retrieve"]["steps"] >= 8 and not steps["validate"]["reused"]
    re = {s["step"]: s for s in again["steps"]}
    assert re["ingest"]["ingested"] == 0 and re["ingest"]["skipped"] == 4
    assert re["retrieve"]["steps"] == 0 and re["validate"]["reused"] and re["composites"]["reused"]
    assert json.loads((out / "archive.json").read_text())["steps"] == json.loads(json.dumps(again["steps"]))
    assert steps["composites"]["months_computed"] >= 8 and re["composites"]["months_computed"] == 0
    assert sorted(p.name for p in (out / "composites").glob("*.nc")) == ["47N_monthly.nc", "50N_monthly.nc"]
    assert sorted(p.name for p in (out / "composites").glob("*.png")) == ["47N_monthly.png", "50N_monthly.png"]
    summary = (out / "validation" / "summary.md").read_text()
    assert "usable" in summary


@pytest.mark.parametrize(("edit", "key"), [
    ({"stepz": ["ingest"]}, "stepz"),
    ({"tiles": {"size": 8}}, "tiles.size"),
    ({"model": {"path": "/nonexistent/model"}}, "model.path"),
    ({"steps": ["ingest", "train"]}, "steps"),
    ({"composites": {"mosaics": "yes"}}, "composites.mosaics"),
    ({"composites": {"mosaic": True}}, "composites"),
])
def test_a_bad_archive_config_is_refused_with_one_line_naming_the_key(small_testbed, model, tmp_path, capsys,
                                                                       edit, key):
    cfg = _config(tmp_path, small_testbed, model, **edit)
    with pytest.raises(ArchiveConfigError, match=key.replace(".", r"\.")):
        load_archive_config(cfg)
    rc = main(["archive", "--config", str(cfg), "--out", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and key in err[0] and str(cfg) in err[0], err
    assert not (tmp_path / "out").exists()


def test_missing_inputs_and_a_mixed_data_section_are_refused(small_testbed, model, tmp_path):
    cfg = _config(tmp_path, small_testbed, model)
    doc = yaml.safe_load(cfg.read_text())
    del doc["data"]["ged"]
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(ArchiveConfigError, match=r"data\.ged: missing"):
        load_archive_config(cfg)
    doc["data"]["ged"] = str(small_testbed / "ged")
    doc["data"]["era5"] = str(tmp_path / "nothing_*.nc")
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(ArchiveConfigError, match=r"data\.era5: no file matches"):
        load_archive_config(cfg)
    doc["data"]["testbed"] = {"scenes": 2}
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(ArchiveConfigError, match=r"either data\.testbed or the input paths"):
        load_archive_config(cfg)


def test_an_archive_config_takes_a_dem_a_calibration_table_and_a_testbed_layout(small_testbed, model, tmp_path):
    (tmp_path / "dem").mkdir()
    (tmp_path / "cal.csv").write_text("satellite,sensor,year,band,gain,offset\n")
    cfg = load_archive_config(_config(tmp_path, small_testbed, model))
    assert "dem" not in cfg and "calibration" not in cfg
    doc = yaml.safe_load(_config(tmp_path, small_testbed, model).read_text())
    doc["data"] |= {"dem": "dem", "calibration": "cal.csv"}
    (tmp_path / "archive.yaml").write_text(yaml.safe_dump(doc))
    cfg = load_archive_config(tmp_path / "archive.yaml")
    assert cfg["dem"] == tmp_path / "dem" and cfg["calibration"] == tmp_path / "cal.csv"
    doc["data"]["dem"] = "no-such-dem"
    (tmp_path / "archive.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ArchiveConfigError, match=r"data\.dem: .*no-such-dem does not exist"):
        load_archive_config(tmp_path / "archive.yaml")
    bad_layout = {**doc, "data": {"testbed": {"scenes": 2, "layout": "sensor"}}}
    (tmp_path / "archive.yaml").write_text(yaml.safe_dump(bad_layout))
    with pytest.raises(ArchiveConfigError, match=r"data\.testbed\.layout: one of delivered, map is required"):
        load_archive_config(tmp_path / "archive.yaml")
    (tmp_path / "archive.yaml").write_text(yaml.safe_dump({**doc, "data": {"testbed": {"scenes": 2, "layout": "map"}}}))
    assert load_archive_config(tmp_path / "archive.yaml")["testbed"] == {"scenes": 2, "layout": "map"}


def test_the_shipped_archive_pipeline_is_a_valid_config_of_160_scenes_across_tile_edges():
    cfg = load_archive_config(Path(__file__).parents[1] / "pipelines" / "archive.yaml")
    tb = cfg["testbed"]
    assert 2 * tb["scenes"] >= 150 and tb["shifted"] >= 0.5 and tb["max_shift"] >= 256
    assert cfg["steps"] == ["ingest", "retrieve", "validate", "composites"] and cfg["tile_px"] == 512
    assert cfg["mosaics"] is False  # zone mosaics of all months only on request (composites: {mosaics: true})
