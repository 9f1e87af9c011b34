"""The one place that decides the Dask client.

Order: an address given by the caller (``--scheduler``), else the environment variable
``DASK_SCHEDULER_ADDRESS``, else an embedded ``LocalCluster`` of ``n_workers`` single-threaded
worker processes. Workers get torch/BLAS threads pinned to their thread count, and
Dask's ``MALLOC_TRIM_THRESHOLD_`` is removed from their environment (it costs 2.5x on
torch inference with glibc malloc; see shared/reference/PERF.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import dask
from distributed import Client, LocalCluster, WorkerPlugin, as_completed

__all__ = ["broadcast", "completed", "default_workers", "get_client", "in_worker"]

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: glibc malloc in the workers: blocks up to 64 MB come from the heap and up to 256 MB of free heap is kept,
#: so the per-batch arrays of numpy and torch (0.1-8 MB) are reused instead of freshly mapped and
#: page-faulted on every batch (measured: DNN retrieval 0.53 -> 0.76 Mpx/s per core; docs/retrieval.md).
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
#: Dask configuration of embedded workers (the nanny hands it to each worker process). Distributed's statistical
#: profiler samples every task's stack 100 times a second and keeps an hour of it: a worker's memory grew with
#: the run's length (tracemalloc: +34 MB of its profile trees after 24 more scenes of ingest, the largest
#: growth there), and the sampling costs CPU. Off while an embedded cluster lives; the dashboard's profile page
#: is then empty.
_WORKER_CONFIG = {"distributed.worker.profile.enabled": False}
#: How long an embedded cluster's workers may take to register (s): generous, for a loaded machine.
_WORKERS_TIMEOUT_S = 120.0


def in_worker() -> bool:
    """Whether this runs as a task of a Dask worker (not in the caller's own threads)."""
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def default_workers() -> int:
    """Default number of embedded workers: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def get_client(
    address: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | float | None = "auto",
    gpu: bool = False,
    worker_log: str | os.PathLike[str] | None = None,
    worker_log_stderr: bool = True,
) -> Iterator[Client]:
    """Yield a connected Dask client; an embedded cluster is closed on exit.

    Parameters
    ----------
    address : str, optional
        Scheduler address (``tcp://host:8786``). Default: ``DASK_SCHEDULER_ADDRESS``, else embedded.
    n_workers : int, optional
        Workers of the embedded cluster (default: CPUs available).
    threads_per_worker : int, optional
        Threads per embedded worker; torch and BLAS threads are pinned to it.
    memory_limit : str or float, optional
        Per-worker memory limit of the embedded cluster. Its dashboard is served on a free port
        (``client.dashboard_link``).
    gpu : bool
        Embedded cluster on a machine with CUDA GPUs: with dask-cuda installed (``pip install
        'sftl-dask[gpu]'``), a ``LocalCUDACluster`` of one single-threaded worker per GPU, each declaring
        the resource ``GPU=1``; without it, the usual cluster, whose workers share GPU 0.
    worker_log : path, optional
        Embedded cluster: its workers' log records (task failures with their tracebacks, restarts) are
        appended to this file (created on the first record).
    worker_log_stderr : bool
        Embedded cluster with ``worker_log``: also print them on the terminal, as Dask does by default.

    Raises
    ------
    ValueError
        If ``n_workers`` or ``threads_per_worker`` is not positive.
    ConnectionError
        If a given scheduler cannot be reached (message names the address).
    """
    address = address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    if address:
        client = _connect(address)
        try:
            yield client
        finally:
            client.close()
        return
    n = n_workers or default_workers()
    if n < 1 or threads_per_worker < 1:
        raise ValueError(f"workers must be >= 1 (got n_workers={n}, threads_per_worker={threads_per_worker})")
    # for the cluster's whole life: a nanny's configuration shares this process's nested settings, and a
    # restarted worker (client.restart) reads them again
    with dask.config.set(_WORKER_CONFIG):
        with _worker_environment(threads_per_worker):
            cluster = _embedded_cluster(n, threads_per_worker, memory_limit, gpu)
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
            client = Client(cluster)
        try:
            # every worker registered before work is planned on them (pinned partitions, one rank each): under
            # load the client's first view of the cluster has been seen without them (an empty worker list)
            client.wait_for_workers(len(cluster.worker_spec), timeout=_WORKERS_TIMEOUT_S)
            if worker_log is not None:
                client.register_plugin(_WorkerLogFile(str(worker_log), worker_log_stderr))
            yield client
        finally:
            client.close()
            _close_embedded(cluster)
            os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)


def _close_embedded(cluster: Any) -> None:
    """Close an embedded cluster; a worker slow to exit is not an error of the run that used it.

    A nanny gives its worker a grace time, then SIGKILLs it and waits for it only until the grace time's deadline,
    which on a loaded machine has already passed: ``close`` raises ``TimeoutError`` though the process was killed
    (seen at the end of a module's cluster under load 10). The run's results are complete by then; say it once.
    """
    try:
        cluster.close()
    except TimeoutError:
        logging.getLogger(__name__).warning("the embedded Dask cluster took too long to close: a worker was slow to "
                                            "exit and was killed")


def _connect(address: str) -> Client:
    """A client of the scheduler at ``address``, which is probed first.

    Raises
    ------
    ConnectionError
        If the scheduler cannot be reached, or speaks TLS with no TLS settings configured.
    """
    _probe(address)
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"cannot reach Dask scheduler {address}: {exc}") from None
    except TypeError as exc:  # distributed: "TLS expects a `ssl_context` argument of type ssl.SSLContext"
        if not address.startswith("tls://"):
            raise
        raise ConnectionError(f"Dask scheduler {address} speaks TLS but no TLS settings are configured: point "
                              "DASK_CONFIG at a file like deploy/tls/dask-tls.yaml (CA, certificate, key)"
                              ) from exc
    try:
        _check_versions(client, address)
    except ConnectionError:
        client.close()
        raise
    return client


def _check_versions(client: Client, address: str) -> None:
    """Dask's version check (``Client.get_versions``) with sftl-dask added: workers that run another sftl-dask
    than this client are refused, since they would run other code on the tasks this client sends.

    Raises
    ------
    ConnectionError
        One line naming the workers' and this client's sftl-dask versions (a stale worker image, typically).
    """
    versions = client.get_versions(packages=["sftl-dask"])
    ours = versions["client"]["packages"].get("sftl-dask")
    theirs = {w: (info or {}).get("packages", {}).get("sftl-dask") for w, info in versions["workers"].items()}
    stale = sorted({str(v) for v in theirs.values() if v != ours})
    if stale:
        n = sum(v != ours for v in theirs.values())
        raise ConnectionError(f"Dask scheduler {address}: {n} of its {len(theirs)} worker(s) run sftl-dask "
                              f"{', '.join(stale)}, this client {ours} (Dask's version check): start every "
                              "container from one image build")


def _worker_environment(threads_per_worker: int) -> Any:
    """The Dask configuration under which embedded workers start: torch/BLAS threads pinned to
    ``threads_per_worker``, glibc malloc tuned (:data:`_MALLOC_ENV`); a context manager."""
    env = {v: str(threads_per_worker) for v in _THREAD_VARS}
    # Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in workers and leaves it in os.environ.
    pre_spawn = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    pre_spawn.pop("MALLOC_TRIM_THRESHOLD_", None)
    pre_spawn.update(_MALLOC_ENV)
    return dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn, "distributed.nanny.environ": env})


def _embedded_cluster(n: int, threads_per_worker: int, memory_limit: str | float | None, gpu: bool) -> Any:
    """A local cluster of ``n`` worker processes, or with ``gpu`` and dask-cuda one per GPU."""
    cuda_cluster = _cuda_cluster_class() if gpu else None
    if cuda_cluster is not None:  # one worker per GPU, one thread each (dask-cuda's layout)
        return cuda_cluster(threads_per_worker=1, memory_limit=memory_limit, dashboard_address="127.0.0.1:0",
                            resources={"GPU": 1})
    return LocalCluster(
        n_workers=n,
        threads_per_worker=threads_per_worker,
        processes=True,
        memory_limit=memory_limit,
        host="127.0.0.1",  # scheduler and dashboard on loopback only: nothing on the network reaches them
        dashboard_address="127.0.0.1:0",  # a free port: never collides with another cluster on 8787
    )


def _probe(address: str, timeout_s: float = 3.0) -> None:
    """Fail at once when nothing listens at a ``tcp://`` or ``tls://`` scheduler address (Dask's own connect
    retries for its whole timeout); other schemes are left to Dask."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls") or parts.hostname is None:
        return
    try:
        port = parts.port or 8786
    except ValueError:
        raise ConnectionError(f"cannot reach Dask scheduler {address}: not a host:port address") from None
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConnectionError(f"cannot reach Dask scheduler {address}: {exc.strerror or exc}") from None


class _WorkerLogFile(WorkerPlugin):
    """Worker plugin: the worker's log records go to a file (and, if asked, still to the terminal).

    Task failures are reported by the caller with their reasons; the workers' own records of them (a
    traceback each) then belong in the run's log file, not on the operator's terminal.
    """

    name = "sftl-worker-log"

    def __init__(self, path: str, keep_stderr: bool) -> None:
        self.path, self.keep_stderr = path, keep_stderr

    def setup(self, worker: Any) -> None:
        handler = logging.FileHandler(self.path, delay=True)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {worker.name} %(name)s %(levelname)s %(message)s"))
        for logger in [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]:
            streams = [h for h in logger.handlers if type(h) is logging.StreamHandler
                       and h.stream in (sys.stderr, sys.__stderr__)]
            if not streams:
                continue
            if not self.keep_stderr:
                for h in streams:
                    logger.removeHandler(h)
            logger.addHandler(handler)


def _cuda_cluster_class() -> Any:
    """dask-cuda's ``LocalCUDACluster`` where it is installed (the optional ``gpu`` extra), else None (imported
    here because it is optional)."""
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        return None
    return LocalCUDACluster


def completed(futures: Iterable[Any], client: Client) -> Iterator[Any]:
    """Yield ``futures`` (of ``client``) as they finish.

    ``distributed.as_completed`` waits on the event loop of the process's *default* client, which is not
    ``client`` when the caller has one of their own (a notebook's ``with Client(...)``, a test's second client of
    the same scheduler). A future then waits on two loops, and when a killed worker takes a finished result
    with it the rerun fails with "asyncio.Event ... is bound to a different event loop". Here it waits on
    ``client``'s loop only.
    """
    return iter(as_completed(futures, loop=client.loop))


def broadcast(client: Client, values: Mapping[str, Any]) -> dict[str, Any]:
    """Send each of ``values`` to every worker once; the futures, by the same names.

    Each value gets a key of its own (a fresh one per call). ``client.scatter`` of a dict uses the dict's names as
    the Dask keys: a second run on the same scheduler (another user's, a notebook's, a rerun while the first
    run's keys are being released) that scatters other data under the same names gets the *first* run's data, or
    loses it when the first run's client goes (measured: two clients scattering ``{"sim": ...}`` both read the
    first's value; a grid failed with "already forgotten" after a worker kill).
    """
    futures = client.scatter(list(values.values()), broadcast=True, hash=False)
    return dict(zip(values, futures, strict=True))


def run_tasks(
    calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]],
    client: Client | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    broadcast: tuple[type, ...] = (),
    gather: bool = True,
) -> list[Any]:
    """Run ``fn(*args)`` for each call: in this process without a client, else one Dask task each.

    Parameters
    ----------
    calls : sequence of (callable, tuple)
        The calls, in order.
    client : distributed.Client, optional
        Where to run them.
    progress : callable, optional
        ``progress(done, total)`` after each call completes.
    broadcast : tuple of type
        Arguments of these types are large and shared: each distinct object is sent to every worker once
        (``scatter(broadcast=True)``) instead of once per task.
    gather : bool
        With a client, return results (True) or the futures, leaving results on the cluster (False).

    Returns
    -------
    list
        Results (or futures) in the order of ``calls``.
    """
    if client is None:
        out = []
        for i, (fn, args) in enumerate(calls, start=1):
            out.append(fn(*args))
            if progress:
                progress(i, len(calls))
        return out
    shared: dict[int, Any] = {}
    for _, args in calls:
        for a in args:
            if broadcast and isinstance(a, broadcast) and id(a) not in shared:
                shared[id(a)] = client.scatter([a], broadcast=True, hash=False)[0]  # a key of its own
    futs = [client.submit(fn, *[shared.get(id(a), a) for a in args], pure=False) for fn, args in calls]
    if not gather:
        return futs
    pos = {f.key: i for i, f in enumerate(futs)}
    res: list[Any] = [None] * len(futs)
    for done, fut in enumerate(completed(futs, client), start=1):
        res[pos[fut.key]] = fut.result()
        if progress:
            progress(done, len(futs))
    return res
