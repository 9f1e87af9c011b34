"""Object storage: the scene cube and the LST cube on an S3-API server, against the same run on local disk.

The server is moto's (``python -m moto.server``, its own process, so that it does not share this process's
GIL), started by the module on a free loopback port;
credentials and the endpoint reach our code only through the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``), as they would on a cluster.

What this proves: every S3 API call our code makes (list, head, get, put, delete through s3fs and zarr's
``FsspecStore``) is answered by a server that speaks the S3 REST protocol over HTTP, so the object layout
(``<root>/<tile>.zarr/...``, ``ingest_log.jsonl``, ``retrieve_log.jsonl``), the paths and URLs we build, the
credentials and endpoint taken from the environment (in this process and in spawned Dask worker processes), the
re-run skip, and the bad-input answers (endpoint unreachable, credentials refused, bucket missing) are right,
and that the LST read back from the object store equals the LST of the same run on local disk value for value.

What it does not prove: real latency and throughput (moto answers from memory on loopback; the figures
measured here say nothing about a remote bucket), eventual-consistency edge cases (moto, like AWS S3 since
2020, is strongly consistent; other S3-API stores may not be), multipart-upload limits (our objects are far
below the 5 MiB part size), IAM policies and bucket policies beyond "keys unknown to the server are refused",
AWS signature details beyond what moto checks, or other object stores (GCS, Azure) that fsspec would reach.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
import s3fs

from sftl_dask.api import open_lst
from sftl_dask.cli import main
from sftl_dask.cluster import get_client
from sftl_dask.ingest import ingest
from sftl_dask.io.cube import cube_stores, open_cube
from sftl_dask.retrieve import retrieve
from sftl_dask.validate import check_validation, validation_matchups

BUCKET = "sftl-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A moto S3 server on loopback with one bucket, and the environment pointing at it (module-wide).

    Its request log (one line per S3 request) is ``log``.
    """
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "requests.log"
    with log.open("w") as fh:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=fh, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):  # up in ~2 s
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, log.read_text()
            time.sleep(0.1)
    with pytest.MonkeyPatch.context() as mp:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "FSSPEC_S3_ENDPOINT_URL"):
            mp.delenv(var, raising=False)
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)
        fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True,
                               use_listings_cache=False)
        fs.mkdir(BUCKET)
        try:
            yield {"fs": fs, "endpoint": endpoint, "port": port, "log": log}
        finally:
            server.terminate()
            server.wait(timeout=30)


def _era5(tb: Path) -> list[str]:
    return sorted(str(p) for p in (tb / "era5").glob("*.nc"))


@pytest.fixture(scope="module")
def model(retrieval_model) -> Path:
    return retrieval_model("dnn")


@pytest.fixture(scope="module")
def runs(s3: dict[str, Any], small_testbed: Path, small_cube: tuple[Path, dict[str, Any]], model: Path,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The same ingest + retrieve on local disk and on the object store, each timed (s). The local ingest is the
    session's (``small_cube``, the same call), so it is not timed."""
    local = tmp_path_factory.mktemp("os_local")
    out: dict[str, Any] = {}
    for where, cube, lst in (("local", small_cube[0], local / "lst"),
                             ("s3", f"s3://{BUCKET}/cube", f"s3://{BUCKET}/lst")):
        n0 = _requests(s3)
        t0 = time.perf_counter()
        ing = (small_cube[1] if where == "local" else
               ingest([small_testbed / "archives"], cube, era5=_era5(small_testbed), ged=small_testbed / "ged"))
        t1, n1 = time.perf_counter(), _requests(s3)
        ret = retrieve(cube, model, lst, threads=2, device="cpu")
        t2, n2 = time.perf_counter(), _requests(s3)
        out[where] = {"cube": cube, "lst": lst, "ingest": ing, "retrieve": ret, "ingest_s": t1 - t0,
                      "retrieve_s": t2 - t1, "ingest_requests": n1 - n0, "retrieve_requests": n2 - n1}
    # the bucket's ingest log as this run left it: a later test appends to the log in the bucket
    out["s3"]["ingest_log"] = s3["fs"].cat_file(f"{BUCKET}/cube/ingest_log.jsonl").decode().splitlines()
    loc, rem = out["local"], out["s3"]
    print(f"\ningest + retrieve of the small testbed: local (session's ingest) + {loc['retrieve_s']:.1f} s; "
          f"moto S3 {rem['ingest_s']:.1f} + {rem['retrieve_s']:.1f} s ({rem['ingest_requests']} + "
          f"{rem['retrieve_requests']} S3 requests)")
    return out


def _requests(s3: dict[str, Any]) -> int:
    """S3 requests the server has answered so far (its log's request lines)."""
    return sum(" HTTP/1.1" in line for line in s3["log"].read_text().splitlines())


# --------------------------------------------------------------------------------------------- round trip
def test_ingest_writes_the_cube_and_its_log_to_the_bucket(runs: dict[str, Any], s3: dict[str, Any]) -> None:
    fs, local, remote = s3["fs"], runs["local"], runs["s3"]
    assert remote["ingest"]["ingested"] == local["ingest"]["ingested"] == 4
    assert remote["ingest"]["failed"] == []
    names = sorted(cube_stores(remote["cube"]))
    assert names == sorted(cube_stores(local["cube"]))
    assert remote["ingest"]["stores"] == [f"s3://{BUCKET}/cube/{n}.zarr" for n in names]
    for n in names:
        assert fs.isfile(f"{BUCKET}/cube/{n}.zarr/.zmetadata")
    assert sorted(json.loads(r)["status"] for r in remote["ingest_log"]) == ["ingested"] * 4
    assert not fs.exists(f"{BUCKET}/.cube.lock")  # no lock object: the single-writer rule


def test_scene_cube_read_from_s3_equals_local(runs: dict[str, Any]) -> None:
    for zone in ("47N", "50N"):
        a, b = open_cube(runs["local"]["cube"], zone=zone), open_cube(runs["s3"]["cube"], zone=zone)
        assert a.sizes == b.sizes
        np.testing.assert_array_equal(a["scene_id"].values, b["scene_id"].values)
        np.testing.assert_array_equal(a["bt_10_80"].values, b["bt_10_80"].values)
        np.testing.assert_array_equal(a["cloud"].values, b["cloud"].values)
        assert b.rio.crs == a.rio.crs


def test_lst_opened_from_s3_equals_the_local_run(runs: dict[str, Any], s3: dict[str, Any]) -> None:
    local, remote = runs["local"], runs["s3"]
    assert remote["retrieve"]["retrieved"] == local["retrieve"]["retrieved"] > 0
    assert remote["retrieve"]["failed"] == []
    assert "stac" not in remote["retrieve"]  # no STAC catalog on object stores (docs/cluster.md)
    for zone in ("47N", "50N"):
        a, b = open_lst(local["lst"], zone=zone), open_lst(remote["lst"], zone=zone)
        assert a.sizes == b.sizes and b.sizes["time"] == 2
        for v in ("lst", "lst_uncertainty", "qc"):
            np.testing.assert_array_equal(a[v].values, b[v].values)
        assert np.isfinite(b["lst"].values).sum() > 10_000  # not two empty cubes compared
    store = next(iter(cube_stores(remote["lst"]).values()))
    attrs = json.loads(s3["fs"].cat_file(f"{str(store)[len('s3://'):]}/.zattrs"))
    assert attrs["source_cube"] == f"s3://{BUCKET}/cube/{Path(str(store)).name}"


def test_second_ingest_and_retrieve_on_s3_skip_everything(runs: dict[str, Any], small_testbed: Path, model: Path,
                                                          s3: dict[str, Any]) -> None:
    remote = runs["s3"]
    assert runs["local"]["retrieve_requests"] == 0  # the local run is local
    again = ingest([small_testbed / "archives"], remote["cube"], era5=_era5(small_testbed), ged=small_testbed / "ged")
    assert (again["ingested"], again["skipped"], again["failed"]) == (0, 4, [])
    log = s3["fs"].cat_file(f"{BUCKET}/cube/ingest_log.jsonl").decode().splitlines()
    first = remote["ingest_log"]
    assert log[:len(first)] == first  # the first run's lines kept
    assert [json.loads(r)["status"] for r in log[len(first):]] == ["skipped"] * 4
    redo = retrieve(remote["cube"], model, remote["lst"], threads=2, device="cpu")
    assert (redo["retrieved"], redo["skipped"]) == (0, remote["retrieve"]["retrieved"])


def test_cli_retrieve_and_validate_on_s3_in_worker_processes(runs: dict[str, Any], model: Path,
                                                             small_testbed: Path, tmp_path: Path,
                                                             s3: dict[str, Any]) -> None:
    """Spawned Dask workers reach the bucket with the credentials of their environment (one tile: 8 chunks).

    Spawned as a user's are: the suite's fork server (tests/conftest.py) was started before this module's fixture
    set the credentials, and its workers carry the server's environment, not the one they are started in. Both
    verbs run on one such cluster (``--scheduler``): a spawned worker costs ~5 s to start on 2 cores."""
    name, store = next((n, st) for n, st in cube_stores(runs["s3"]["cube"]).items() if n.startswith("50N"))
    lst = f"s3://{BUCKET}/lst_cli.zarr"
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}), get_client(n_workers=1) as c:
        on = ["--scheduler", c.scheduler.address]
        assert main(["retrieve", "--cube", str(store), "--model", str(model), "--out", lst, "--device", "cpu",
                     *on]) == 0
        tb = ["--insitu", str(small_testbed / "insitu"), "--sites", str(small_testbed / "sites.csv")]
        assert main(["validate", "--lst", runs["s3"]["lst"], *tb, "--out", str(tmp_path / "val"), *on]) == 0
    a, b = open_lst(runs["local"]["lst"], grid=name), open_lst(lst)
    assert b.sizes["time"] == a.sizes["time"] > 0
    np.testing.assert_array_equal(a["lst"].values, b["lst"].values)
    # the local run's matchups, what validate writes (its figures, ~4 s, left out)
    plan = check_validation(runs["local"]["lst"], small_testbed / "insitu", small_testbed / "sites.csv",
                            tmp_path / "val_local")
    validation_matchups(plan, small_testbed / "insitu")[0].to_parquet(tmp_path / "local.parquet", index=False)
    got, want = (pd.read_parquet(tmp_path / f) for f in ("val/matchups.parquet", "local.parquet"))
    assert (got["reason"] == "ok").sum() > 10
    pd.testing.assert_frame_equal(got, want)  # the same matchups, value for value


# --------------------------------------------------------------------------------------------- bad input
def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _ingest_argv(tb: Path, cube: str) -> list[str]:
    return ["ingest", str(tb / "archives"), "--cube", cube, "--era5", *_era5(tb), "--ged", str(tb / "ged")]


def test_unreachable_endpoint_is_refused_in_one_line(s3: dict[str, Any], small_testbed: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", closed)
    err = _refused(capsys, _ingest_argv(small_testbed, f"s3://{BUCKET}/unreachable"))
    assert f"s3://{BUCKET}/unreachable: cannot use the object store at {closed}" in err


def test_missing_bucket_is_refused_and_not_created(s3: dict[str, Any], small_testbed: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, _ingest_argv(small_testbed, "s3://no-such-bucket/cube"))
    assert err == (f"sftl ingest: error: s3://no-such-bucket/cube: no such bucket 'no-such-bucket' at "
                   f"{s3['endpoint']}")
    assert not s3["fs"].exists("no-such-bucket")


def test_bad_credentials_are_refused_and_nothing_is_written(s3: dict[str, Any], small_testbed: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # moto checks signatures only once authentication is switched on; keys it never issued are then refused
    _moto_auth(s3["endpoint"], on=True)
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIANOTAKEYMOTOKNOWS")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        err = _refused(capsys, _ingest_argv(small_testbed, f"s3://{BUCKET}/badkeys"))
    finally:
        _moto_auth(s3["endpoint"], on=False)
    assert err.startswith(f"sftl ingest: error: s3://{BUCKET}/badkeys: access refused by {s3['endpoint']}")
    assert "AWS_ACCESS_KEY_ID" in err
    assert not s3["fs"].exists(f"{BUCKET}/badkeys")


def _moto_auth(endpoint: str, *, on: bool) -> None:
    """Switch moto's request authentication on (every request checked) or off (its default)."""
    body = b"0" if on else b"inf"  # requests served before checks start (moto's INITIAL_NO_AUTH_ACTION_COUNT)
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=body, method="POST",
                                                  headers={"Content-Type": "text/plain"}))


def test_url_on_an_option_without_object_store_support_is_refused(s3: dict[str, Any], runs: dict[str, Any],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused(capsys, ["rechunk", "--lst", runs["s3"]["lst"]])
    assert err == (f"sftl rechunk: error: {runs['s3']['lst']}: --lst of sftl rechunk takes a local or "
                   "shared-file-system path, not an object-store URL (docs/cluster.md, 'Object storage')")


# --------------------------------------------------------------------------------------------- the layer itself
def test_location_functions_give_the_same_answers_for_a_path_and_a_url(tmp_path: Path) -> None:
    """fsspec's in-memory filesystem stands in for a bucket: no server needed to pin the layer's contract."""
    from sftl_dask.io.location import (
        append_text,
        child_stores,
        exists,
        filesystem,
        is_zarr_store,
        join,
        name_of,
        read_text,
        remove,
    )

    answers = []
    for root in (tmp_path / "root", "memory://sftl-location-test/root/"):
        fs, p = filesystem(root)
        for store in ("b.zarr", "a.zarr", "not_a_store.zarr"):
            fs.makedirs(f"{p}/{store}", exist_ok=True)
            fs.pipe_file(f"{p}/{store}/{'.zgroup' if store != 'not_a_store.zarr' else '.zattrs'}", b"{}")
        append_text(join(root, "log.jsonl"), "one\n")
        append_text(join(root, "log.jsonl"), "two\n")
        stores = child_stores(root)
        answers.append((list(stores), [name_of(s) for s in stores.values()], read_text(join(root, "log.jsonl")),
                        is_zarr_store(stores["a"]), is_zarr_store(join(root, "not_a_store.zarr"))))
        remove(stores["a"])
        assert not exists(stores["a"]) and exists(stores["b"])
        assert child_stores(join(root, "nothing_here")) == {}
    assert answers[0] == answers[1] == (["a", "b"], ["a.zarr", "b.zarr"], "one\ntwo\n", True, False)
    assert isinstance(child_stores(tmp_path / "root")["b"], Path)  # local paths stay Paths
    assert child_stores("memory://sftl-location-test/root")["b"] == "memory://sftl-location-test/root/b.zarr"
