"""The one atomic writer for single files (issue 13: nothing half-written that looks complete)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftl_dask.staging import staged_file


def test_replace_swaps_the_whole_file_in_and_a_failure_leaves_the_old_one(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    out.write_text("old")
    with pytest.raises(RuntimeError, match="killed mid-write"), staged_file(out, replace=True) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("killed mid-write")
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with staged_file(out, replace=True) as tmp:
        tmp.write_text("new")
        assert out.read_text() == "old"  # the old file stays whole until the new one is complete
    assert out.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_without_replace_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "lst.nc"
    out.write_text("someone else's")
    with pytest.raises(FileExistsError, match=r"lst\.nc: already exists"), staged_file(out) as tmp:
        tmp.write_text("mine")
    assert out.read_text() == "someone else's" and [p.name for p in tmp_path.iterdir()] == ["lst.nc"]


def test_cli_writes_its_json_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sftl_dask.staging as staging
    from sftl_dask.cli import _atomic_write_text

    used: list[Path] = []
    real = staging.staged_file

    def spy(out: Path, **kw: bool):  # type: ignore[no-untyped-def]
        used.append(out)
        return real(out, **kw)

    monkeypatch.setattr(staging, "staged_file", spy)
    _atomic_write_text(tmp_path / "sw.json", "{}")
    assert used == [tmp_path / "sw.json"] and (tmp_path / "sw.json").read_text() == "{}"


def test_the_package_has_one_atomic_writer() -> None:
    """Renames into place happen in ``sftl_dask/staging.py`` only (there were four writers: the CLI's, the
    artifact's, the testbed formats' and the GED coefficients')."""
    import re

    import sftl_dask

    root = Path(sftl_dask.__file__).parent
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\b(tmp|old|out|final|target)\.rename\(")
    hits = [f"{p.relative_to(root)}:{i}" for p in sorted(root.rglob("*.py")) if p.name != "staging.py"
            for i, line in enumerate(p.read_text().splitlines(), start=1) if pattern.search(line)]
    assert hits == []


def test_a_folder_is_replaced_whole_and_a_failed_replacement_keeps_the_old_one(tmp_path: Path) -> None:
    from sftl_dask.staging import staged_dir

    out = tmp_path / "artifact"
    with staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("new, half")
        raise RuntimeError("killed mid-write")
    assert (out / "a.txt").read_text() == "old"
    with staged_dir(out) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]  # no temporary or old folder left
