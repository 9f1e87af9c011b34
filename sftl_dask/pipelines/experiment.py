"""``sftl experiment``: the data prepared once, then the experiment grid as one Dask job.

The grid itself (:func:`sftl_dask.training.experiment.run_grid`) takes prepared data; this pipeline prepares it
(:func:`sftl_dask.pipelines.data.prepare_data`, under ``out/work``) and hands it in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from sftl_dask.pipelines.data import prepare_data
from sftl_dask.training.experiment import load_grid, run_grid

__all__ = ["load_grid", "run_experiment"]  # load_grid: the verb checks its configuration before a cluster starts


def run_experiment(config: str | os.PathLike[str], out: str | os.PathLike[str], *, client: Any,
                   progress: Callable[[int, int], None] | None = None, log: Callable[[str], None] = print
                   ) -> pd.DataFrame:
    """Run the grid of ``config`` on ``client``; write results under ``out``; return the per-cell table.

    Outputs under ``out``: ``work/`` (the prepared data, reused by a re-run), ``results.parquet`` (one row
    per cell), ``predictions.parquet`` (every cell's cross-site predictions), ``summary.md`` and figures.

    Raises
    ------
    ValueError
        On a bad configuration (see :func:`~sftl_dask.training.experiment.load_grid`) or bad data (see
        :func:`~sftl_dask.pipelines.data.prepare_data`).
    """
    t_start = time.perf_counter()
    cfg, grid = load_grid(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, out / "work", client=client)
    return run_grid(cfg, grid, data, out, client=client, progress=progress, log=log,
                    prep_s=time.perf_counter() - t_start)
