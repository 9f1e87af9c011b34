"""Fixtures shared by the test modules.

What is expensive to make (a testbed, a trained model) is made once per test run (session scope) and shared by
every module that needs the same thing. A shared product is read only: a test that writes into one copies it first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import pytest
import yaml
from distributed.utils import get_mp_context
from filelock import FileLock
from helpers import retrieval_artifact
from threadpoolctl import threadpool_limits

from sftl_dask.cluster import default_workers

# The clusters the tests start in their own processes fork their workers from one server that has imported
# distributed and the modules the tasks run once (FORKSERVER_PRELOAD: ~2-4 s a worker saved), instead of each
# starting a fresh interpreter (``spawn``, what a user gets): as distributed's own test suite does. Only in these
# processes: the `sftl` and `dask worker` processes the tests start spawn as a user's do (a fork server keeps the
# environment it started with, not the one its workers are started in). tests/test_cluster.py runs spawn in-process.
FORKSERVER_PRELOAD = ("distributed", "numpy", "pandas", "sftl_dask.retrieve", "sftl_dask.ingest", "sftl_dask.validate",
                      "sftl_dask.training.stages")
dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
get_mp_context().set_forkserver_preload(list(FORKSERVER_PRELOAD))  # after distributed's own (it sets it first)

# Each test process gets its share of the cores for torch's and BLAS's thread pools (one each for `make test`'s two
# processes on 2 cores), as the package's own Dask workers do (sftl_dask.cluster): pools larger than the cores
# spin and wait on each other. Measured on 2 cores, two processes each training the suite's small DNN three
# times: 4.4-5.2 s of CPU a process with 1 thread, 6.6-8.7 s with 2 (and slower). The processes the tests start
# inherit it through the environment.
XDIST_PROCESSES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
POOL_THREADS = max(1, default_workers() // XDIST_PROCESSES)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, str(POOL_THREADS))
threadpool_limits(POOL_THREADS)  # the pools already loaded (numpy's OpenBLAS)

# `make test` runs two pytest-xdist processes, each test file whole on one (--dist loadfile, --no-loadscope-reorder:
# without it xdist orders the files by their number of tests and this order is lost). The long files start first
# (measured on 2 cores): a long file scheduled last is the run's tail, with the other process idle. The first two
# build different session products at once (the tiny training; the delivered testbed), not one waiting on the
# other's lock. Files not named here follow in collection order.
LONG_FILES = ("test_training.py", "test_ortho.py", "test_demo.py", "test_object_store.py",
              "test_uncertainty_calibration.py", "test_faults.py", "test_disk.py", "test_slurm.py", "test_tiles.py",
              "test_retrieve.py", "test_archive.py", "test_coverage.py", "test_ingest.py", "test_api.py",
              "test_io_vimi.py", "test_testbed_delivered.py", "test_testbed.py", "test_inspect.py",
              "test_cache_keys.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the long files first (:data:`LONG_FILES`); a stable sort, so a file's tests keep their order and stay
    together (module fixtures are made once)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))


def shared_product(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Path:
    """A folder ``build(folder)`` fills, made once per test run: under pytest-xdist the processes share it (the
    first to take the file lock builds it, the others wait and read it), else in this process's temporary folder.

    Read only, as every shared product here. Returns the folder.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        out = tmp_path_factory.mktemp(name)
        build(out)
        return out
    out = tmp_path_factory.getbasetemp().parent / name  # the run's folder, above each process's own
    with FileLock(f"{out}.lock"):
        if not (out / ".complete").is_file():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            build(out)
            (out / ".complete").touch()
    return out


@pytest.fixture(scope="session", autouse=True)
def torch_threads() -> None:
    """torch's pool of :data:`POOL_THREADS` in the thread that runs the tests (its OpenMP setting is per thread,
    and an xdist process imports this file in another), where the collected modules imported torch."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(POOL_THREADS)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A local Dask cluster of two worker processes (one rank / LightGBM machine each), per test module."""
    from sftl_dask.cluster import get_client

    with get_client(n_workers=2) as c:
        yield c


@pytest.fixture(scope="session")
def small_testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A testbed of 2 scenes per region on 640 x 640 px (seed 3), map-projected products (``layout="map"``: the
    tests that use it pin figures of north-up products), built once per session (~1 min)."""
    from sftl_dask.testbed.build import build_testbed

    return shared_product(tmp_path_factory, "small_testbed",
                          lambda d: build_testbed(d / "world", scenes=2, size=640, seed=3, layout="map")) / "world"


@pytest.fixture(scope="session")
def small_cube(small_testbed: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The small testbed's 4 scenes ingested in process onto the default 1024 px tiles: the cube root and
    ingest's summary, made once per run (shared by the xdist processes). Read only: a test that writes into it (or
    beside it) copies it."""
    from sftl_dask.ingest import ingest

    def build(folder: Path) -> None:
        tb = small_testbed
        summary = ingest([tb / "archives"], folder / "cube", era5=sorted(str(p) for p in (tb / "era5").glob("*.nc")),
                         ged=tb / "ged")
        (folder / "summary.json").write_text(json.dumps(summary))

    folder = shared_product(tmp_path_factory, "small_cube", build)
    return folder / "cube", json.loads((folder / "summary.json").read_text())


@pytest.fixture(scope="session")
def retrieval_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``retrieval_model(kind, seed=0)``: the small artifact of :func:`helpers.retrieval_artifact` (dnn, trf, cnn,
    rf, lgbm, or split-window coefficients ``sw``), made once per session for each kind and seed.

    Read only: a test that alters an artifact copies it first. A DNN takes ~6 s to train and export on 2 cores,
    and a dozen modules retrieve with one: each is made once per run, shared by the xdist processes.
    """
    made: dict[tuple[str, int], Path] = {}

    def get(kind: str, seed: int = 0) -> Path:
        if (kind, seed) not in made:
            name = f"{kind}.json" if kind == "sw" else kind
            folder = shared_product(tmp_path_factory, f"retrieval_model_{kind}_seed{seed}",
                                    lambda d: retrieval_artifact(d / name, kind, seed))
            made[kind, seed] = folder / name
        return made[kind, seed]

    return get


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """``sftl train`` of test_training's tiny configuration (``BASE``: a DNN, gradual fine-tuning, SiHuHe) on a
    testbed of 4 scenes per region (640 px, seed 2) and a simulation of 60 profiles (seed 0): its output folder
    and its results, made once per session (~2 min on 2 cores).

    The output's ``work/testbed`` and ``work/sim.parquet`` serve every module that needs a testbed of 4 scenes
    per region or a simulation table for training; nothing writes into them. test_training's own tests add
    products to ``work/`` under their own cache keys (another configuration's matchups), as they did before.
    """
    # imported here: the training stack (torch) and test_training load only in runs that need them
    from test_training import BASE

    from sftl_dask.cli import main

    def train(root: Path) -> None:
        cfg = dict(BASE, data={"testbed": {"path": None, "scenes": 4, "size": 640, "seed": 2, "layout": "map"},
                               "simulation": {"path": None, "profiles": 60, "seed": 0}})
        (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
        assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(root / "out"), "--workers", "1"]) == 0

    root = shared_product(tmp_path_factory, "train", train)
    return root / "out", json.loads((root / "out" / "results.json").read_text())


@pytest.fixture(scope="session")
def delivered_testbed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A testbed of delivered products (1 scene per region, 640 px, seed 0, ``layout="delivered"``: .tar.gz in sensor
    geometry with .rpb, DEM tiles, hot targets), built once per run; read only (a test that alters it copies it)."""
    from sftl_dask.testbed.build import build_testbed

    return shared_product(tmp_path_factory, "delivered_testbed",
                          lambda d: build_testbed(d / "delivered", scenes=1, size=640, seed=0, layout="delivered")
                          ) / "delivered"
