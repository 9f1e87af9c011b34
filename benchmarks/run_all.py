"""Run every benchmark in turn (``make bench``)."""

from __future__ import annotations

from benchmarks import bench_simulate


def main() -> None:
    bench_simulate.main([])


if __name__ == "__main__":
    main()
