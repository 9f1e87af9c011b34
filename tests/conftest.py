"""Fixtures shared by the test modules.

What is expensive to make (a testbed, a trained model) is made once per test run (session scope) and shared by
every module that needs the same thing. A shared product is read only: a test that writes into one copies it first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import retrieval_artifact


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


@pytest.fixture(scope="session")
def retrieval_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``retrieval_model(kind, seed=0)``: the small artifact of :func:`helpers.retrieval_artifact` (dnn, trf, cnn,
    rf, lgbm, or split-window coefficients ``sw``), made once per session for each kind and seed.

    Read only: a test that alters an artifact copies it first. A DNN takes ~6 s to train and export on 2 cores,
    and a dozen modules retrieve with one.
    """
    root = tmp_path_factory.mktemp("retrieval_models")
    made: dict[tuple[str, int], Path] = {}

    def get(kind: str, seed: int = 0) -> Path:
        if (kind, seed) not in made:
            folder = root / f"{kind}_seed{seed}"
            folder.mkdir()
            made[kind, seed] = retrieval_artifact(folder / (f"{kind}.json" if kind == "sw" else kind), kind, seed)
        return made[kind, seed]

    return get
