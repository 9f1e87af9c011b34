"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A local Dask cluster of two worker processes (one rank / LightGBM machine each), per test module."""
    from sftl_dask.cluster import get_client

    with get_client(n_workers=2) as c:
        yield c
