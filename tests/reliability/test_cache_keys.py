"""The training's ``work/`` caches are keyed by what made them (issue 13, failure visibility).

Before: the simulation, split-window fit and matchups under ``work/`` were reused whenever they existed, after
the configuration changed too, and were written in place (an interrupted write was reused as if complete).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from sftl_dask.pipelines.data import prepare_data
from sftl_dask.training.stages import load_config


def _config(path: Path, testbed: Path, profiles: int) -> Path:
    path.write_text(f"""name: cache_test
direction: SiHuHe
source_region: huailai
target_region: heihe
seed: 0
data:
  testbed: {{path: {testbed}}}
  simulation: {{path: null, profiles: {profiles}, seed: 0}}
model: {{name: dnn}}
pretrain: {{epochs: 1}}
finetune: {{strategy: full, epochs: 1}}
transfer: {{k: [5], repeats: 1}}
""")
    return path


def _mtimes(work: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (work / "sim.parquet", work / "sw.json", work / "matchups.parquet")}


@pytest.fixture(scope="module")
def made(small_testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``work/`` as prepared once for configuration ``a`` (6 profiles); read only (``work`` copies it)."""
    root = tmp_path_factory.mktemp("cache_keys")
    prepare_data(load_config(_config(root / "a.yaml", small_testbed, 6)), root / "work")
    return root / "work"


@pytest.fixture
def work(made: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A test's own copy of ``made`` (modification times kept): the tests change the configuration and rewrite
    products, and each must start from configuration ``a``'s products whatever ran before it."""
    shutil.copytree(made, tmp_path / "work")
    return tmp_path, tmp_path / "work"


def test_a_rerun_with_the_same_configuration_reuses_every_product(work: tuple[Path, Path],
                                                                   small_testbed: Path) -> None:
    root, w = work
    before = _mtimes(w)
    data = prepare_data(load_config(_config(root / "a.yaml", small_testbed, 6)), w)
    assert _mtimes(w) == before
    assert len(data["table"]["lst"]) == len(pd.read_parquet(w / "sim.parquet", columns=["lst"]))


def test_a_changed_configuration_remakes_what_depends_on_it_and_only_that(work: tuple[Path, Path],
                                                                         small_testbed: Path) -> None:
    root, w = work
    rows6 = len(pd.read_parquet(w / "sim.parquet", columns=["lst"]))
    before = _mtimes(w)
    prepare_data(load_config(_config(root / "b.yaml", small_testbed, 9)), w)
    after = _mtimes(w)
    rows9 = len(pd.read_parquet(w / "sim.parquet", columns=["lst"]))
    assert rows9 == rows6 * 9 // 6  # the simulation follows the new profile count (it was reused before)
    assert after["sim.parquet"] != before["sim.parquet"]
    assert after["sw.json"] != before["sw.json"]  # fitted on the new simulation
    assert after["matchups.parquet"] == before["matchups.parquet"]  # the testbed did not change


def test_a_product_without_its_key_an_interrupted_write_is_made_again(work: tuple[Path, Path],
                                                                      small_testbed: Path) -> None:
    root, w = work
    prepare_data(load_config(_config(root / "b.yaml", small_testbed, 9)), w)
    (w / "sw.json").write_text('{"half": ')  # what an interrupted in-place write left
    (w / ".sw.json.key").unlink()
    before = _mtimes(w)
    data = prepare_data(load_config(_config(root / "b.yaml", small_testbed, 9)), w)
    assert (w / ".sw.json.key").is_file() and "half" not in (w / "sw.json").read_text()
    assert "pretraining_range" in data["sw"]  # a whole document again
    assert _mtimes(w)["sim.parquet"] == before["sim.parquet"]


def test_a_scene_that_fails_to_ingest_stops_the_matchups_instead_of_passing_for_a_complete_cube(
        small_testbed: Path, tmp_path: Path) -> None:
    tb = tmp_path / "tb"
    tb.mkdir()
    for entry in small_testbed.iterdir():
        if entry.name != "archives":
            (tb / entry.name).symlink_to(entry)
    (tb / "archives").mkdir()
    tars = sorted((small_testbed / "archives").glob("*.tar"))
    for tar in tars[1:]:
        (tb / "archives" / tar.name).symlink_to(tar)
    (tb / "archives" / tars[0].name).write_bytes(tars[0].read_bytes()[: tars[0].stat().st_size // 2])
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=rf"{tb / 'archives'}: 1 scene\(s\) did not ingest, e.g. "
                                         rf"{tars[0].stem}: VimiFormatError"):
        prepare_data(load_config(_config(tmp_path / "c.yaml", tb, 6)), work)
    assert not (work / "matchups.parquet").exists() and not (work / ".matchups.parquet.key").exists()
