"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A local Dask cluster of two worker processes (one rank / LightGBM machine each), per test module."""
    from sftl_dask.cluster import get_client

    with get_client(n_workers=2) as c:
        yield c


@pytest.fixture(scope="session")
def small_testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A testbed of 2 scenes per region on 640 x 640 px (seed 3), built once per session (~1 min)."""
    from sftl_dask.testbed.build import build_testbed

    out = tmp_path_factory.mktemp("small_testbed") / "world"
    build_testbed(out, scenes=2, size=640, seed=3)
    return out
