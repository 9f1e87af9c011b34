"""The main job end to end (``sftl demo``): a fast default run whose report is checked against the run's own
outputs, the slow full-size run, and the report's HTML page."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from test_training import BASE

from sftl_dask.api import open_lst
from sftl_dask.cli import main
from sftl_dask.cluster import get_client
from sftl_dask.io.stores import zone_of_store
from sftl_dask.pipelines.data import prepare_data
from sftl_dask.report import markdown_to_html
from sftl_dask.training.stages import DIRECTIONS, load_config, pretrain, run_stages

TINY = {
    "name": "tiny", "direction": "SiHuHe", "source_region": "huailai", "target_region": "heihe", "seed": 0,
    "data": {"testbed": {"path": None, "scenes": 4, "size": 640, "seed": 2, "layout": "map"},
             "simulation": {"path": None, "profiles": 60, "seed": 0}},
    "model": {"name": "dnn", "params": {"hidden": [32, 16]}},
    "pretrain": {"epochs": 3, "batch_size": 4096, "lr": 0.003, "holdout_fraction": 0.2},
    "finetune": {"strategy": "gradual", "params": {"epochs_per_group": 2}, "epochs": 6, "lr": 0.001,
                 "split": "chronological", "test_fraction": 0.3},
    "transfer": {"k": [5], "repeats": 2},
}


SECTIONS = ("## This run, per stage", "## The simulation table", "## Split-window baseline",
            "## Matchups (site x scene)", "## SFTL: DNN + gradual (SiHuHe)", "## SFTL: DNN + gradual (SiHeHu)",
            "## LST maps", "## Validation against the radiometers", "## Monthly composites")
STAGES = ("simulation, split-window, testbed, ingest, matchups", "SFTL training SiHuHe (huailai -> heihe)",
          "SFTL training SiHeHu (heihe -> huailai)", "retrieve (LST of each region by the model transferred to it)",
          "validate against the radiometers", "monthly composites")
SFTL_ROWS = (("1 pre-train, held-out simulated profiles: model", "stage1_pretrain", "model"),
             ("1 same rows: split-window", "stage1_pretrain", "split_window"),
             ("2 in-domain (source, held-out scenes): SFTL", "stage2_finetune", "model"),
             ("2 same rows: pre-trained only", "stage2_finetune", "pretrained_only"),
             ("2 same rows: split-window", "stage2_finetune", "split_window"),
             ("3 cross-site (target, zero-shot): SFTL", "stage3_transfer", "zero_shot"),
             ("3 same rows: pre-trained only", "stage3_transfer", "pretrained_only"),
             ("3 same rows: split-window", "stage3_transfer", "split_window"))


def _table(report: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after the line starting with ``heading`` (header row dropped)."""
    lines = report[report.index(heading):].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


@pytest.fixture(scope="module")
def fast_demo(tiny_training: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory,
              ) -> tuple[Path, str, dict[str, Any]]:
    """``sftl demo --workers 1`` of test_training's tiny configuration (``BASE``: a DNN of [32, 16], 3 pre-training
    epochs, gradual fine-tuning, k=5) on the session's tiny testbed and simulation (conftest.tiny_training: 4 scenes
    per region, 640 px; 60 profiles), read from their folders so that the demo builds neither. Every stage after
    them runs: ingest and matchups of that testbed, the three stages in both directions, retrieval of both
    regions, validation, composites, maps and the report. Its output folder, stdout and the fixture's results."""
    work = tiny_training[0] / "work"
    cfg = dict(BASE, name="fast", data={"testbed": {"path": str(work / "testbed"), "layout": "map"},
                                        "simulation": {"path": str(work / "sim.parquet")}})
    root = tmp_path_factory.mktemp("fast_demo")
    (root / "fast.yaml").write_text(yaml.safe_dump(cfg))
    out = root / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # a module's fixture: no capsys
        rc = main(["demo", "--config", str(root / "fast.yaml"), "--out", str(out), "--workers", "1"])
    assert rc == 0, printed.getvalue()
    return out, printed.getvalue(), tiny_training[1]


def test_the_fast_demo_writes_every_section_and_figure_of_the_report(fast_demo) -> None:
    out, stdout, _ = fast_demo
    report = (out / "report.md").read_text()
    assert f"report: {out / 'report.md'}" in stdout and "Dask dashboard: http://127.0.0.1:" in stdout
    headings = [ln for ln in report.splitlines() if ln.startswith("## ")]
    assert [next((s for s in SECTIONS if h.startswith(s)), h) for h in headings] == list(SECTIONS)  # once, in order
    pictures = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report)
    assert sorted(pictures) == sorted({
        "sim_coverage.png", "sw_fit.png", "sftl_SiHuHe.png", "sftl_SiHeHu.png", "maps/heihe_lst_map.png",
        "maps/huailai_lst_map.png", "validation/scatter.png", "validation/timeseries.png",
        "validation/reliability.png", "composites/heihe_47N_monthly.png", "composites/huailai_50N_monthly.png"})
    assert all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(pictures)
    assert (out / "SiHuHe" / "model" / "model.pt").is_file() and (out / "SiHeHu" / "model" / "model.pt").is_file()


def test_the_fast_demo_report_states_the_stages_matchups_and_training_figures_of_its_run(fast_demo) -> None:
    """The per-stage table lists every stage once with a total that is their sum; the matchup counts are those of
    the run's matchup table; each direction's table states its results.json, its cross-site row is recomputed from
    the run's cross-site predictions, and SiHuHe reproduces ``sftl train`` of the same configuration on the same
    data (conftest.tiny_training) within 0.01 K."""
    out, _, trained = fast_demo
    report = (out / "report.md").read_text()
    stages = _table(report, "## This run, per stage")
    assert [r[0] for r in stages] == [*STAGES, "total"]
    assert float(stages[-1][1]) == pytest.approx(sum(float(r[1]) for r in stages[:-1]), abs=0.051 * len(STAGES))
    assert [int(r[2]) for r in stages if r[0] in (STAGES[0], STAGES[3])] == [8, 8]  # scenes ingested, retrieved

    mu = pd.read_parquet(out / "work" / "matchups.parquet")
    counts = mu.groupby(["region", "reason"]).size().unstack(fill_value=0)
    assert {r[0]: [int(v) for v in r[1:]] for r in _table(report, "## Matchups")} == {
        str(reg): [int(v) for v in row] for reg, row in counts.iterrows()}
    assert {str(reg): int(row["ok"]) for reg, row in counts.iterrows()} == {"heihe": 10, "huailai": 40}

    for direction in ("SiHuHe", "SiHeHu"):
        res = json.loads((out / direction / "results.json").read_text())
        rows = {r[0]: r[1:] for r in _table(report, f"## SFTL: DNN + gradual ({direction})")}
        for label, stage, method in SFTL_ROWS:
            m = res[stage][method]
            assert rows[label] == [f"{m['rmse_k']:.2f}", f"{m['bias_k']:+.2f}", f"{m['r2']:.3f}", str(m["n"])], label
        pred = pd.read_parquet(out / direction / "cross_site_predictions.parquet")
        for label, column in ((SFTL_ROWS[5][0], "lst_sftl"), (SFTL_ROWS[7][0], "lst_split_window")):
            err = pred[column] - pred["lst_insitu"]
            assert float(rows[label][0]) == pytest.approx(np.sqrt(np.mean(err**2)), abs=0.005), label
            assert float(rows[label][1]) == pytest.approx(err.mean(), abs=0.005) and int(rows[label][3]) == len(pred)
    res = json.loads((out / "SiHuHe" / "results.json").read_text())
    for stage, method in (("stage1_pretrain", "model"), ("stage2_finetune", "model"), ("stage3_transfer", "zero_shot")):
        assert res[stage][method]["n"] == trained[stage][method]["n"]
        assert res[stage][method]["rmse_k"] == pytest.approx(trained[stage][method]["rmse_k"], abs=0.01), stage


def test_the_fast_demo_report_states_the_validation_and_composites_of_its_run(fast_demo) -> None:
    """The validation table is metrics.parquet, whose pooled and per-region rows are recomputed here from the
    validation's own matchups; each region's row reproduces the cross-site figures of the model transferred to it
    (the retrieval path gives the training's numbers); and the composites' per-pixel counts are the good LST
    values of the run's LST cubes."""
    out, _, _ = fast_demo
    report = (out / "report.md").read_text()
    metrics = pd.read_parquet(out / "validation" / "metrics.parquet")
    rows = {r[0]: r[1:] for r in _table(report, "## Validation against the radiometers")}
    assert list(rows) == list(metrics["name"])
    for _, m in metrics.iterrows():
        assert rows[m["name"]][:4] == [str(int(m["n"])), f"{m['rmse_k']:.2f}", f"{m['bias_k']:+.2f}",
                                       f"{m['ubrmse_k']:.2f}"], m["name"]
    vm = pd.read_parquet(out / "validation" / "matchups.parquet")
    vm = vm[vm["reason"] == "ok"]
    for name, sub in (("all", vm), *vm.groupby("region")):
        res = sub["lst"] - sub["lst_insitu"]
        assert int(rows[name][0]) == len(sub) and float(rows[name][1]) == pytest.approx(
            np.sqrt(np.mean(res**2)), abs=0.005) and float(rows[name][2]) == pytest.approx(res.mean(), abs=0.005)
    assert int(rows["all"][0]) == 50 and len(metrics) == 3 + vm["site"].nunique()
    for direction, region in (("SiHuHe", "heihe"), ("SiHeHu", "huailai")):
        zs = json.loads((out / direction / "results.json").read_text())["stage3_transfer"]["zero_shot"]
        assert int(rows[region][0]) == zs["n"] and float(rows[region][1]) == pytest.approx(zs["rmse_k"], abs=0.01)

    ncs = sorted((out / "composites").glob("*_monthly.nc"))
    assert [p.name for p in ncs] == ["47N_monthly.nc", "50N_monthly.nc"]
    for nc in ncs:
        zone = nc.name.split("_")[0]
        good = open_lst(out / "lst", zone=zone).sftl.good(check=False)["lst"].notnull().sum("time").compute()
        with xr.open_dataset(nc) as comp:
            n_obs = comp["n_obs"].sum("time").compute()
            assert int(n_obs.sum()) > 0 and (n_obs.values == good.sel(y=comp["y"], x=comp["x"]).values).all(), zone
    assert {zone_of_store(p.name[: -len(".zarr")]) for p in (out / "lst").glob("*.zarr")} == {"47N", "50N"}


def test_the_report_page_is_self_contained(tmp_path: Path) -> None:
    png = tmp_path / "fig.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    page = markdown_to_html("# Title\n\nSome `code` and **bold** < 3.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                            "- one\n- two\n\n![a figure](fig.png)\n", tmp_path, title="t")
    assert "<h1>Title</h1>" in page and "<code>code</code>" in page and "<strong>bold</strong> &lt; 3" in page
    assert "<th>a</th><th>b</th>" in page and "<td>1</td><td>2</td>" in page and "---" not in page
    assert "<li>one</li><li>two</li>" in page
    src = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert src is not None and base64.b64decode(src.group(1)) == png.read_bytes()
    assert "fig.png" not in page.replace('alt="a figure"', "")  # no link to a file beside it


@pytest.mark.slow  # ~4 min on 2 quiet cores: the demo's data ~170 s, its training ~50 s
def test_the_source_selected_sftl_beats_the_split_window_cross_site_in_both_directions(tmp_path: Path) -> None:
    """The demo's training at the demo's size (``pipelines/demo.yaml``: 20 scenes per region, 946 profiles, 60
    pre-training epochs; few-shot left out, it does not enter the claim), run as
    :func:`sftl_dask.pipelines.demo.run_demo` runs it: one pre-training, then fine-tuning on each direction's source
    and zero-shot transfer to its target. The paper's claim: SFTL, with the configuration selected on the source
    (the demo's DNN + gradual), has a lower cross-site RMSE against the target's radiometers than the split-window on
    the same rows, in both directions.

    Measured (seed 0; the ``sftl demo`` of the shared checks, pipelines/demo.yaml as it stands, and these calls on
    that run's cube gave the same figures to 1 mK; seed 1 not measured): cross-site RMSE
    against the radiometers, SFTL against split-window on the same rows, SiHuHe 2.805 K against 3.022 K (n 43),
    SiHeHu 2.978 K against 4.132 K (n 227); pre-trained only 3.69 and 4.57 K. It does not hold at smaller sizes:
    with test_training's tiny testbed (4 scenes per region) and a trained network (20 epochs in batches of 256,
    [128, 64, 32], stage 1 0.49 K), SiHuHe 3.74 K against 3.46 K (n 10) and SiHeHu 5.17 K against 3.81 K (n 40);
    with 10 scenes per region (seed 11), SiHuHe 3.19 K against 2.79 K (n 24) while SiHeHu 2.40 K against 3.47 K
    (n 105). SiHuHe, with the fewer target matchups, is the direction that decides; its margin here is 0.22 K, so
    the claim is asserted as the strict inequality, with the row counts and each RMSE pinned within 20 %.
    """
    demo = yaml.safe_load((Path(__file__).parents[1] / "pipelines" / "demo.yaml").read_text())
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump({**demo, "transfer": {"k": []}}))
    cfg = load_config(tmp_path / "cfg.yaml")
    with get_client(n_workers=2) as client:  # the testbed and its ingest, as the demo makes them
        data = prepare_data(cfg, tmp_path / "work", client=client)
    pre = pretrain(cfg, data, log=lambda *_: None)
    got = {}
    for d, (src, tgt) in DIRECTIONS.items():
        cfg_d = dataclasses.replace(cfg, direction=d, source_region=src, target_region=tgt)
        s3 = run_stages(cfg_d, data, None, pretrained=pre, log=lambda *_: None)["stage3_transfer"]
        got[d] = (s3["zero_shot"]["rmse_k"], s3["split_window"]["rmse_k"], s3["zero_shot"]["n"])
    for d, (sftl, sw, _) in got.items():
        assert sftl < sw, (d, got)
    measured = {"SiHuHe": (2.805, 3.022, 43), "SiHeHu": (2.978, 4.132, 227)}
    for d, (sftl, sw, n) in measured.items():
        assert got[d][2] == n and got[d][:2] == pytest.approx((sftl, sw), rel=0.2), (d, got)


@pytest.mark.slow  # ~80 s on 2 cores
def test_the_demo_runs_end_to_end_and_a_rerun_skips_what_is_done(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "demo"
    sftl = str(Path(sys.executable).parent / "sftl")
    first = subprocess.run([sftl, "demo", "--config", str(cfg), "--out", str(out), "--workers", "2"],
                           capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"report: {out / 'report.md'}" in first.stdout and "Dask dashboard: http://127.0.0.1:" in first.stdout
    report = (out / "report.md").read_text()
    pictures = sorted(set(re.findall(r"\(([^)]+\.png)\)", report)))
    assert len(pictures) >= 9 and all((out / p).is_file() for p in pictures)
    for section in ("## This run, per stage", "## LST maps", "## Validation against the radiometers",
                    "## Monthly composites", "## SFTL: DNN + gradual (SiHuHe)", "## SFTL: DNN + gradual (SiHeHu)"):
        assert section in report, section
    assert {"maps/heihe_lst_map.png", "maps/huailai_lst_map.png", "validation/scatter.png",
            "validation/timeseries.png"} <= set(pictures)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(re.findall(r"!\[", report))
    assert len(list((out / "composites").glob("*_monthly.nc"))) == 2
    assert (out / "SiHuHe" / "model" / "model.pt").is_file() and (out / "SiHeHu" / "model" / "model.pt").is_file()

    again = subprocess.run([sftl, "demo", "--config", str(cfg), "--out", str(out), "--workers", "2"],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    for stage in ("SFTL training SiHuHe", "SFTL training SiHeHu", "retrieve", "validate", "monthly composites"):
        line = next(ln for ln in again.stdout.splitlines() if ln.strip().startswith(stage))
        assert ": reused in" in line, line
