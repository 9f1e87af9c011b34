"""The one atomic writer for single files (issue 13: nothing half-written that looks complete)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftl_dask._staging import staged_file


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
    import sftl_dask._staging as staging
    from sftl_dask.cli import _atomic_write_text

    used: list[Path] = []
    real = staging.staged_file

    def spy(out: Path, **kw: bool):  # type: ignore[no-untyped-def]
        used.append(out)
        return real(out, **kw)

    monkeypatch.setattr(staging, "staged_file", spy)
    _atomic_write_text(tmp_path / "sw.json", "{}")
    assert used == [tmp_path / "sw.json"] and (tmp_path / "sw.json").read_text() == "{}"
