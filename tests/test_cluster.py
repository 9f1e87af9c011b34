"""The embedded cluster: loopback only; its GPU layout with and without dask-cuda."""

from __future__ import annotations

import socket
import sys
import types

import pytest
from distributed import LocalCluster

from sftl_dask.cluster import get_client


def _bound_hosts(server: object) -> set[str]:
    return {s.getsockname()[0] for s in getattr(server, "_sockets", {}).values()}


def test_embedded_scheduler_and_dashboard_listen_on_loopback_only() -> None:
    with get_client(n_workers=1, memory_limit=None) as client:
        scheduler = client.cluster.scheduler
        assert scheduler.address.startswith("tcp://127.0.0.1:")
        hosts = _bound_hosts(scheduler.http_server)
        assert hosts == {"127.0.0.1"}, f"dashboard listens on {hosts}"
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        # not reachable through another interface of this machine
        port = next(iter(scheduler.http_server._sockets.values())).getsockname()[1]
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for ip in others:
            with socket.socket() as s:
                s.settimeout(1)
                assert s.connect_ex((ip, port)) != 0, f"dashboard reachable on {ip}:{port}"


def test_workers_started_the_way_a_user_gets_them_run_this_package() -> None:
    """The suite's clusters fork their workers from a preloaded server (tests/conftest.py); a user's start as fresh
    interpreters (``spawn``, distributed's default): that path imports and runs this package's code too."""
    import os

    import dask
    import numpy as np

    from sftl_dask.physics.planck import planck_radiance

    assert dask.config.get("distributed.worker.multiprocessing-method") == "forkserver"
    t = np.array([250.0, 300.0, 330.0])
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}), \
            get_client(n_workers=1, memory_limit=None) as client:
        (parent,) = client.run(os.getppid).values()
        radiance = client.submit(planck_radiance, 10.8, t).result()
    assert parent == os.getpid()  # started by this process's nanny itself, not by a fork server
    np.testing.assert_array_equal(radiance, planck_radiance(10.8, t))


def test_gpu_cluster_without_dask_cuda_is_the_usual_local_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """``get_client(gpu=True)`` where dask-cuda is not installed (here it is hidden, so the test is the same on a
    machine that has it): the usual worker processes, no GPU resource declared, and tasks run."""
    monkeypatch.setitem(sys.modules, "dask_cuda", None)  # `import dask_cuda` raises ImportError
    with get_client(n_workers=1, memory_limit=None, gpu=True) as client:
        assert type(client.cluster) is LocalCluster
        (info,) = client.scheduler_info()["workers"].values()
        assert not info.get("resources") and info["nthreads"] == 1
        assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=60) == 6


def test_gpu_cluster_with_dask_cuda_declares_one_single_threaded_gpu_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """With dask-cuda: its ``LocalCUDACluster``, one thread per worker, each declaring ``GPU=1`` (the resource that
    retrieval routes the Transformer and CNN by). A stand-in for the class records how it is called and starts one
    in-process worker with those options, so this runs on a machine without a GPU or dask-cuda."""
    seen: dict[str, object] = {}

    def cuda_cluster(**kwargs: object) -> LocalCluster:
        seen.update(kwargs)
        return LocalCluster(n_workers=1, processes=False, **kwargs)

    monkeypatch.setitem(sys.modules, "dask_cuda", types.SimpleNamespace(LocalCUDACluster=cuda_cluster))
    with get_client(memory_limit=None, gpu=True) as client:
        (info,) = client.scheduler_info()["workers"].values()
        assert info["resources"] == {"GPU": 1} and info["nthreads"] == 1
    assert seen["threads_per_worker"] == 1 and seen["resources"] == {"GPU": 1}
    assert str(seen["dashboard_address"]).startswith("127.0.0.1:")


# ------------------------------------------------------------------------------- a second client in the process
def test_runs_wait_on_the_client_they_were_given_while_another_is_the_default() -> None:
    """A user's own client is the default (``with Client(...)``) and a run is handed another: its futures are
    awaited on the given client's loop. ``distributed.as_completed`` alone takes the default client's loop; a
    future then waits on two loops, and a worker killed after a result was ready made a rerun fail with "asyncio
    Event ... bound to a different event loop" (tests/reliability/test_faults.py, seed 3 of ``make test-order``)."""
    import operator

    from distributed import Client, default_client

    from sftl_dask.cluster import completed, run_tasks

    with (LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0") as mine,
          Client(mine) as user,
          LocalCluster(n_workers=1, processes=False, threads_per_worker=1, dashboard_address=":0") as theirs):
        given = Client(theirs, set_as_default=False)
        try:
            assert default_client() is user and user.loop is not given.loop
            futs = [given.submit(operator.add, i, 1, pure=False) for i in range(5)]
            waiting = completed(futs, given)
            assert waiting.loop is given.loop  # type: ignore[attr-defined]
            assert sorted(f.result() for f in waiting) == [1, 2, 3, 4, 5]
            seen: list[tuple[int, int]] = []
            out = run_tasks([(operator.mul, (i, 3)) for i in range(4)], given,
                            progress=lambda d, n: seen.append((d, n)))
            assert out == [0, 3, 6, 9] and seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
            shared = list(range(4))  # broadcast once (a key of its own), used by every call
            out = run_tasks([(operator.getitem, (shared, i)) for i in range(4)], given, broadcast=(list,))
            assert out == [0, 1, 2, 3]
        finally:
            given.close()


def test_no_module_waits_on_futures_with_distributed_as_completed_directly() -> None:
    """Every wait on a batch of futures goes through :func:`sftl_dask.cluster.completed` (the test above)."""
    import ast
    from pathlib import Path

    import sftl_dask

    offenders = []
    for path in sorted(Path(sftl_dask.__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("distributed") and \
                    any(a.name == "as_completed" for a in node.names) and path.name != "cluster.py":
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_two_runs_on_one_scheduler_sharing_data_under_the_same_names_each_get_their_own() -> None:
    """``broadcast`` (what the experiment grid shares its tables with): each call's values under keys of their
    own, on every worker. ``client.scatter({"sim": ...})`` names the key ``sim``: a second run's scatter read the
    first run's table (pinned here as the reason)."""
    from distributed import Client

    from sftl_dask.cluster import broadcast

    with LocalCluster(n_workers=2, processes=False, threads_per_worker=1, dashboard_address=":0") as cluster:
        first, second = Client(cluster, set_as_default=False), Client(cluster, set_as_default=False)
        try:
            raw = [c.scatter({"sim": f"table of run {i}"}, broadcast=True) for i, c in enumerate((first, second))]
            assert [r["sim"].result() for r in raw] == ["table of run 0", "table of run 0"]  # the hazard
            got = [broadcast(c, {"sim": f"table of run {i}", "n": i}) for i, c in enumerate((first, second))]
            assert [g["sim"].result() for g in got] == ["table of run 0", "table of run 1"]
            assert [g["n"].result() for g in got] == [0, 1]
            assert len({g["sim"].key for g in got}) == 2
            assert all(len(ws) == 2 for ws in first.who_has([g["sim"] for g in got]).values())  # every worker
        finally:
            first.close()
            second.close()


def test_an_embedded_cluster_slow_to_close_ends_the_run_with_a_warning_not_an_error(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """distributed's close raises ``TimeoutError`` when a worker it has just SIGKILLed is not reaped before the
    grace deadline (a loaded machine): the run that used the cluster is complete and must not end in a traceback."""
    real_close = LocalCluster.close

    def slow_close(self: LocalCluster, *args: object, **kwargs: object) -> None:
        real_close(self, *args, **kwargs)  # the cluster does go away
        raise TimeoutError

    monkeypatch.setattr(LocalCluster, "close", slow_close)
    with caplog.at_level("WARNING", logger="sftl_dask.cluster"), get_client(n_workers=1, memory_limit=None) as c:
        assert c.submit(sum, [1, 2], pure=False).result() == 3
    assert [r.getMessage() for r in caplog.records if r.name == "sftl_dask.cluster"] == [
        "the embedded Dask cluster took too long to close: a worker was slow to exit and was killed"]
