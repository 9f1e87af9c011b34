"""Benchmarks: each writes JSON and a PNG to benchmarks/results/."""
