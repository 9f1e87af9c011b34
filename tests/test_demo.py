"""The main job end to end (``sftl demo``) on a tiny configuration, and the report's HTML page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

from sftl_dask.report import markdown_to_html

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
