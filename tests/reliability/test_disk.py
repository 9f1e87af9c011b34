"""A full disk and a read-only file system under real writes (issue 13): small tmpfs mounts, so root only.

Disk full mid-run: exit 1 with each unfinished time step named and the reason ("No space left on device"), no
traceback on the terminal, the time steps that were complete before untouched, nothing unfinished flagged
complete; after making room a re-run completes it, equal to an uninterrupted run. A read-only output is refused
at the edge: exit 2, one line naming the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import synthetic_cube

from sftl_dask.cli import main
from sftl_dask.io.stores import open_store

SFTL = str(Path(sys.executable).parent / "sftl")


@pytest.fixture()
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount small tmpfs file systems under ``tmp_path`` (unmounted after the test); skips where not root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI and the build machines run as root)")
    mounted: list[Path] = []

    def mount(name: str, size_kb: int, *, read_only: bool = False) -> Path:
        mnt = tmp_path / name
        mnt.mkdir()
        opts = f"size={size_kb}k" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _free_kb(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize // 1024


def _fill(mnt: Path, leave_kb: int) -> Path:
    """Fill the file system up to ``leave_kb`` free with one file; returns it (delete it to make room)."""
    filler = mnt / "filler.bin"
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, (_free_kb(mnt) - leave_kb) * 1024))
    return filler


def _retrieve(cube: Path, model: Path, out: Path, logs: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SFTL, "retrieve", "--cube", str(cube), "--model", str(model), "--out", str(out),
                           "--workers", "1", "--device", "cpu"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SFTL_LOG_DIR": str(logs)})


def test_disk_full_mid_retrieve_names_each_unfinished_step_keeps_earlier_ones_and_a_rerun_finishes(
        tmpfs: Callable[..., Path], tmp_path: Path, retrieval_model: Callable[..., Path]) -> None:
    from sftl_dask.io.cube import read_slots
    from sftl_dask.retrieve import retrieve

    cube = synthetic_cube(tmp_path / "cube.zarr", 4, 256, 256, seed=31, chunk=64)
    # any model: the split-window's workers never import torch (~5 s a run of the three here); the disk-full path
    # is the model's outputs' writes, the same for every model
    model = retrieval_model("sw")
    mnt = tmpfs("disk", 16_384)
    out = mnt / "lst.zarr"
    first = retrieve(cube, model, out, threads=2, device="cpu")  # in process: the `sftl` runs are the two below
    assert first["retrieved"] == 4 and not first["failed"]
    before = open_store(out).load()

    synthetic_cube(cube, 4, 256, 256, seed=31, chunk=64, first=4)  # four new scenes arrive
    ref = tmp_path / "ref.zarr"
    retrieve(cube, model, ref, threads=2, device="cpu")  # the uninterrupted run of all eight, on the runs' device
    filler = _fill(mnt, leave_kb=300)  # room for the new slots' metadata and a few chunks, not for 4 steps
    full = _retrieve(cube, model, out, tmp_path / "logs")
    assert full.returncode == 1, full.stdout + full.stderr
    assert "Traceback" not in full.stderr  # the workers' tracebacks went to the log file
    failed = [ln for ln in full.stdout.splitlines() if ln.startswith("  failed: ")]
    assert len(failed) == 4 and all("No space left on device" in ln for ln in failed)
    assert sorted(ln.split()[2].rstrip(":") for ln in failed) == [f"GF5B_VIMI_SYN_{i:03d}" for i in range(4, 8)]
    assert "worker logs (tracebacks of the failures): " + str(tmp_path / "logs") in full.stdout
    _, slots = read_slots(out, "retrieve_ok")
    assert [s["retrieve_ok"] for s in slots] == [True] * 4 + [False] * 4  # nothing unfinished looks complete
    after = open_store(out).isel(time=slice(0, 4)).load()
    for v in ("lst", "lst_uncertainty", "qc"):
        np.testing.assert_array_equal(after[v].values, before[v].values)  # the earlier steps are intact

    filler.unlink()
    again = _retrieve(cube, model, out, tmp_path / "logs")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "retrieved 4 time step(s), skipped 4 already done, failed 0" in again.stdout
    got, want = open_store(out), open_store(ref)
    assert list(got["scene_id"].values) == list(want["scene_id"].values)
    for v in ("lst", "lst_uncertainty", "qc", "retrieve_ok"):
        np.testing.assert_array_equal(got[v].values, want[v].values)


def test_an_output_on_a_read_only_file_system_is_refused_in_one_line(tmpfs: Callable[..., Path], tmp_path: Path,
                                                                    retrieval_model: Callable[..., Path]) -> None:
    cube = synthetic_cube(tmp_path / "cube.zarr", 1, 64, 64, seed=1, chunk=64)
    model = retrieval_model("dnn", seed=1)
    ro = tmpfs("ro", 1024, read_only=True)
    r = _retrieve(cube, model, ro / "lst.zarr", tmp_path / "logs")
    assert r.returncode == 2, r.stdout + r.stderr
    err = [ln for ln in r.stderr.splitlines() if not ln.startswith("retrieve:")]
    assert err == [f"sftl retrieve: error: {ro / '.lst.zarr.lock'}: Read-only file system"]
    assert not any(ro.iterdir())


def test_outputs_on_a_read_only_file_system_are_refused_before_a_cluster_starts(
        tmpfs: Callable[..., Path], tmp_path: Path, small_testbed: Path, retrieval_model: Callable[..., Path],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """ingest and retrieve refuse an output they could not lock before they start a cluster (on SLURM, before
    their jobs queue), not after: the lock's folder is checked with the inputs (``staging.check_unlocked``)."""
    import sftl_dask.cluster

    def no_cluster(*_: Any, **__: Any) -> Any:
        raise AssertionError("a cluster was started before the output was checked")

    monkeypatch.setattr(sftl_dask.cluster, "get_client", no_cluster)
    ro = tmpfs("ro", 1024, read_only=True)
    era5 = [str(p) for p in sorted((small_testbed / "era5").glob("*.nc"))]
    assert main(["ingest", str(small_testbed / "archives"), "--cube", str(ro / "cube"), "--era5", *era5,
                 "--ged", str(small_testbed / "ged")]) == 2
    cube = synthetic_cube(tmp_path / "cube.zarr", 1, 64, 64, seed=1, chunk=64)
    assert main(["retrieve", "--cube", str(cube), "--model", str(retrieval_model("dnn", seed=1)), "--out",
                 str(ro / "deeper" / "lst.zarr"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sftl ingest: error: {ro / '.cube.lock'}: Read-only file system",
                   f"sftl retrieve: error: {ro / 'deeper' / '.lst.zarr.lock'}: Read-only file system"]
    assert not any(ro.iterdir())


@pytest.mark.slow  # ~40 s: two ingests of the small testbed; its fast sibling below is in the default run
def test_disk_full_mid_ingest_names_each_failed_scene_keeps_earlier_ones_and_a_rerun_finishes(
        tmpfs: Callable[..., Path], small_testbed: Path, tmp_path: Path) -> None:
    from sftl_dask.ingest import ingest
    from sftl_dask.io.cube import read_slots

    tars = sorted((small_testbed / "archives").glob("*.tar"))
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    for t in tars[:1] + tars[2:3]:  # one scene per region first
        (first / t.name).symlink_to(t)
    for t in tars:
        (later / t.name).symlink_to(t)
    era5 = [str(p) for p in sorted((small_testbed / "era5").glob("*.nc"))]
    ref = tmp_path / "ref"
    ingest([later], ref, era5=era5, ged=small_testbed / "ged")  # the uninterrupted run

    mnt = tmpfs("disk", 262_144)
    cube = mnt / "cube"
    args = [SFTL, "ingest", "--cube", str(cube), "--era5", *era5, "--ged", str(small_testbed / "ged"),
            "--workers", "1"]
    r = subprocess.run([*args[:2], str(first), *args[2:]], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "SFTL_LOG_DIR": str(tmp_path / "logs")})
    assert r.returncode == 0, r.stdout + r.stderr
    before = {s.name: open_store(s).load() for s in sorted(cube.glob("*.zarr"))}
    filler = _fill(mnt, leave_kb=600)  # room for the new slots' metadata, not for two more scenes
    full = subprocess.run([*args[:2], str(later), *args[2:]], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SFTL_LOG_DIR": str(tmp_path / "logs")})
    assert full.returncode == 1, full.stdout + full.stderr
    assert "Traceback" not in full.stderr
    failed = [ln for ln in full.stdout.splitlines() if ln.startswith("  failed: ")]
    assert len(failed) == 2 and all("No space left on device" in ln for ln in failed), full.stdout
    for name, old in before.items():  # the scenes ingested before are intact
        now = open_store(cube / name)
        ok = [s["index"] for s in read_slots(cube / name)[1] if s["ingest_ok"]]
        assert ok == [0]
        for v in ("bt_10_80", "wvc", "emis_10_80", "cloud"):
            np.testing.assert_array_equal(now[v].isel(time=0).values, old[v].isel(time=0).values)
    filler.unlink()
    again = subprocess.run([*args[:2], str(later), *args[2:]], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "ingested 2 scene(s), skipped 2, failed 0" in again.stdout
    _assert_cube_equals(cube, ref, ("bt_10_80", "wvc", "emis_10_80", "cloud", "ingest_ok"))


def _assert_cube_equals(cube: Path, ref: Path, variables: Sequence[str]) -> None:
    """Every store of ``ref`` is in ``cube`` with the same scenes (by ``scene_id``) and ``variables``' values."""
    assert sorted(p.name for p in cube.glob("*.zarr")) == sorted(p.name for p in ref.glob("*.zarr"))
    for s in sorted(ref.glob("*.zarr")):
        a, b = open_store(cube / s.name), open_store(s)
        ia, ib = np.argsort(a["scene_id"].values), np.argsort(b["scene_id"].values)
        assert list(a["scene_id"].values[ia]) == list(b["scene_id"].values[ib])
        for v in variables:
            np.testing.assert_array_equal(a[v].values[ia], b[v].values[ib], err_msg=f"{s.name}: {v}")


#: The scene cube's variables written by a scene task (``source`` is left out: the runs read the same products
#: through other paths).
SCENE_VARS = ("bt_08_20", "bt_08_63", "bt_10_80", "bt_11_95", "vza", "ndvi", "wvc", "emis_08_20", "emis_08_63",
              "emis_10_80", "emis_11_95", "cloud", "ancillary_missing", "checksum", "ingest_ok", "time")


def test_disk_full_mid_ingest_fails_the_scenes_without_room_keeps_earlier_ones_and_a_rerun_finishes(
        tmpfs: Callable[..., Path], small_testbed: Path, small_cube: tuple[Path, dict[str, Any]], client: Any,
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast sibling of the test above: the session's small cube is the uninterrupted run, the first scenes are
    ingested in this process and the two runs under test are ``sftl ingest`` in this process too, on this module's
    cluster (warm workers)."""
    from sftl_dask.ingest import ingest
    from sftl_dask.io.cube import read_slots

    monkeypatch.setenv("SFTL_LOG_DIR", str(tmp_path / "logs"))
    tars = sorted((small_testbed / "archives").glob("*.tar"))
    era5 = [str(p) for p in sorted((small_testbed / "era5").glob("*.nc"))]
    cube = tmpfs("disk", 131_072) / "cube"
    first = ingest([tars[0], tars[2]], cube, era5=era5, ged=small_testbed / "ged", client=client)  # one per region
    assert first["ingested"] == 2 and not first["failed"]
    before = {s.name: open_store(s).load() for s in sorted(cube.glob("*.zarr"))}
    assert len(before) == 2
    args = ["ingest", str(small_testbed / "archives"), "--cube", str(cube), "--era5", *era5, "--ged",
            str(small_testbed / "ged"), "--scheduler", client.scheduler.address]
    filler = _fill(cube.parent, leave_kb=600)  # room for the new slots' metadata, not for two more scenes
    assert main(args) == 1
    full = capsys.readouterr()
    assert "Traceback" not in full.err
    failed = sorted(ln for ln in full.out.splitlines() if ln.startswith("  failed: "))
    assert [ln.split()[1].rstrip(":") for ln in failed] == sorted(t.name[:-4] for t in (tars[1], tars[3]))
    assert all("No space left on device" in ln for ln in failed), full.out
    for name, old in before.items():  # the scenes ingested before are intact, the new slots not marked complete
        assert [s["ingest_ok"] for s in read_slots(cube / name)[1]] == [True, False]
        now = open_store(cube / name).isel(time=0).load()
        for v in SCENE_VARS:
            np.testing.assert_array_equal(now[v].values, old[v].isel(time=0).values, err_msg=f"{name}: {v}")
    filler.unlink()
    assert main(args) == 0
    assert "ingested 2 scene(s), skipped 2, failed 0" in capsys.readouterr().out
    _assert_cube_equals(cube, small_cube[0], SCENE_VARS)
