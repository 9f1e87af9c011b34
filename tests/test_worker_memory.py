"""Embedded workers keep no per-run history that grows with the archive (issue 20: ingest memory flat)."""

from __future__ import annotations

import dask

from sftl_dask.cluster import get_client


def _profiling(dask_worker) -> tuple[bool, int]:
    """Whether the worker samples task stacks, and how many cycles of samples it holds (client.run passes it)."""
    return bool(dask.config.get("distributed.worker.profile.enabled")), len(dask_worker.profile_history)


def test_embedded_workers_run_without_the_statistical_profiler_even_after_a_restart():
    with get_client(n_workers=1) as client:
        client.submit(sum, range(10**6)).result()
        assert list(client.run(_profiling).values()) == [(False, 0)]
        client.restart(timeout=60)
        assert list(client.run(_profiling).values()) == [(False, 0)]
