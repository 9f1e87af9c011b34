"""Embedded workers keep no per-run history that grows with the archive (issue 20: ingest memory flat)."""

from __future__ import annotations

import dask

from benchmarks.bench_ingest import smaps_breakdown, worker_memory_breakdown
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


_SMAPS = """\
5600aa000000-5600ab000000 rw-p 00000000 00:00 0                          [heap]
Rss:               12288 kB
7f0004000000-7f0006000000 rw-p 00000000 00:00 0
Rss:               20480 kB
7f0008001000-7f0009001000 rw-p 00000000 00:00 0
Rss:                1024 kB
7f000a123000-7f000b123000 rw-p 00000000 00:00 0
Rss:                5120 kB
7f000c000000-7f000c100000 r-xp 00002000 fe:00 123                        /usr/lib/libc.so.6
Rss:                2048 kB
"""


def test_smaps_breakdown_sorts_resident_memory_by_kind_of_mapping():
    # thread arenas start on a 64 MiB boundary (or one page past it); a 16 MiB mapping elsewhere is other_anon
    assert smaps_breakdown(_SMAPS) == {"heap": 12.0, "thread_arenas": 21.0, "other_anon": 5.0, "file": 2.0}


def test_worker_memory_breakdown_of_this_process_adds_up():
    b = worker_memory_breakdown()
    parts = b["heap"] + b["thread_arenas"] + b["other_anon"] + b["file"]
    assert abs(parts - b["rss"]) <= 0.05 * b["rss"] + 8  # smaps read a moment after RSS
    assert 0 < b["malloc_in_use"] and b["python_blocks"] > 10_000
