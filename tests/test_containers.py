"""The images built and the compose stack run, with real containers (podman, rootful), offline from any registry.

One pass, in the order an operator goes (docs/cluster.md holds the same recipe and its measured times):

1. a base image from Debian's packages (``deploy/tools/make-base-image.sh``, reused when it exists) and torch's
   CPU wheel served on loopback (``deploy/tools/wheel_index.py``);
2. ``Dockerfile.cpu`` built from them, timed; its size, its layers, ``sftl --version`` as uid 10001;
3. ``deploy/compose.yaml`` up: a scheduler and two CPU workers, healthy (``healthcheck.py``); ``sftl ingest`` then
   ``sftl retrieve`` on a small testbed as the ``sftl`` service, through ``--scheduler``; the outputs on the
   shared volume equal, bit for bit, a local run (same image, embedded cluster, same paths);
4. bad input: a scheduler address nothing answers, a worker image of another sftl-dask, a read-only volume,
   each one line and exit code 2;
5. teardown: no container, volume, network or image of the test is left.

Measured figures are printed (``pytest -s``) and written to ``$SFTL_CONTAINER_FIGURES`` when set.
Needs root, podman (with runc), podman-compose, and debootstrap unless the base image exists: skipped otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CONF = DEPLOY / "podman" / "containers.conf"
BASE = os.environ.get("SFTL_BASE_IMAGE", "localhost/sftl-base:bookworm")
IMAGE = "localhost/sftl-dask:cpu-test"
STALE = "localhost/sftl-dask:stale-test"
PROJECT = "sftltest"
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"]
FIGURES: dict[str, Any] = {}


def _skip_reason() -> str | None:
    if shutil.which("podman") is None:
        return "podman is missing (Debian: apt-get install podman buildah runc debootstrap; docs/cluster.md)"
    if os.geteuid() != 0:
        return "needs root: the stack was built and run with rootful podman"
    if _compose_exe() is None:
        return "podman-compose is missing (pip install podman-compose, or set PODMAN_COMPOSE)"
    if shutil.which("runc") is None:
        return "runc is missing (apt-get install runc)"
    return None


def _compose_exe() -> str | None:
    return os.environ.get("PODMAN_COMPOSE") or shutil.which("podman-compose") or next(
        (str(p) for p in [Path("/opt/sftl-podman-compose/bin/podman-compose")] if p.exists()), None)


pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600),
              pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "CONTAINERS_CONF": str(CONF), "SFTL_IMAGE": IMAGE, **extra}
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    return env


def _run(argv: list[str], *, check: bool = True, timeout: float = 900, **extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env(**extra), cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _podman(*args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    return _run(["podman", *args], check=check, timeout=timeout)


def _compose(*args: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    return _run([str(_compose_exe()), "-p", PROJECT, "-f", str(DEPLOY / "compose.yaml"), *args], check=check, **extra)


def _names(kind: str) -> set[str]:
    """Names of podman's containers / volumes / networks / images (``repo:tag``) now."""
    fmt = {"container": ["ps", "-a", "--format", "{{.Names}}"], "volume": ["volume", "ls", "--format", "{{.Name}}"],
           "network": ["network", "ls", "--format", "{{.Name}}"],
           "image": ["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]}[kind]
    return set(_podman(*fmt).stdout.split("\n")) - {""}


@pytest.fixture(scope="module")
def before() -> dict[str, set[str]]:
    return {kind: _names(kind) for kind in ("container", "volume", "network", "image")}


# ================================================================================================ image
@pytest.fixture(scope="module")
def torch_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """torch's CPU wheel (the Makefile's pin) and its dependencies, served by wheel_index.py on loopback."""
    spec = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert spec is not None
    wheels = tmp_path_factory.mktemp("torch-wheels")
    _run([sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "-d", str(wheels), spec.group(1)])
    server = subprocess.Popen([sys.executable, str(DEPLOY / "tools" / "wheel_index.py"), str(wheels), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert server.stdout is not None
    url = server.stdout.readline().strip()
    try:
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def image(before: dict[str, set[str]], torch_index: str) -> Iterator[str]:
    """The CPU image built from the local base and the loopback torch index, without cache; removed after."""
    made_base = not _podman("image", "exists", BASE, check=False).returncode == 0
    if made_base:
        if shutil.which("debootstrap") is None:
            pytest.skip(f"no base image {BASE} and no debootstrap to make one (apt-get install debootstrap)")
        t0 = time.perf_counter()
        _run(["sh", str(DEPLOY / "tools" / "make-base-image.sh"), BASE], timeout=1200)
        FIGURES["base_image_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    _podman("build", "--no-cache", "--runtime", "runc", "--network", "host", *ULIMITS, "--ignorefile",
            str(DEPLOY / "docker" / "Dockerfile.cpu.dockerignore"), "-f", str(DEPLOY / "docker" / "Dockerfile.cpu"),
            "--build-arg", f"BASE_IMAGE={BASE}", "--build-arg", f"TORCH_INDEX={torch_index}", "-t", IMAGE, ".",
            timeout=1800)
    FIGURES["build_s"] = round(time.perf_counter() - t0, 1)
    try:
        yield IMAGE
    finally:
        _podman("rmi", "-f", IMAGE, check=False)
        _remove_build_leftovers(before["image"])
        if made_base:
            _podman("rmi", "-f", BASE, check=False)


def _remove_build_leftovers(images_before: set[str]) -> None:
    """The untagged images of this test's build (its `build` stage), by id: nothing of anyone else's."""
    ids_before = {line.split()[-1] for line in images_before}
    for line in _names("image") - images_before:
        if line.startswith("<none>:<none> ") and line.split()[-1] not in ids_before:
            _podman("rmi", "-f", line.split()[-1], check=False)


def test_image_is_built_offline_small_and_runs_as_uid_10001(image: str) -> None:
    size = int(_podman("image", "inspect", image, "--format", "{{.Size}}").stdout)
    FIGURES["image_bytes"] = size
    layers = _podman("history", "--format", "{{.Size}}\t{{.CreatedBy}}", image).stdout.splitlines()
    FIGURES["layers"] = [re.sub(r"\s+", " ", line)[:100] for line in layers if not line.startswith("0 B")]
    assert size <= 1.6e9, FIGURES["layers"]
    out = _podman("run", "--rm", image, "sh", "-c", "id -u; sftl --version").stdout.split()
    assert out == ["10001", "sftl-dask", "0.1.0"], out
    listing = _podman("run", "--rm", image, "sh", "-c",
                      "ls /opt/venv/bin/pip /opt/venv/lib/python3.11/site-packages/pandas/tests "
                      "/opt/venv/lib/python3.11/site-packages/torch/include 2>&1; ls /var/lib/apt/lists | wc -l",
                      check=False).stdout
    assert listing.count("No such file or directory") == 3 and listing.split()[-1] == "0", listing


@pytest.mark.skipif(os.environ.get("SFTL_TEST_GPU_IMAGE") != "1",
                    reason="the GPU image downloads ~3.5 GB of CUDA wheels from PyPI: set SFTL_TEST_GPU_IMAGE=1")
def test_gpu_image_builds_and_runs_sftl_without_cuda(image: str) -> None:
    gpu = "localhost/sftl-dask:gpu-test"
    t0 = time.perf_counter()
    try:
        _podman("build", "--runtime", "runc", "--network", "host", *ULIMITS, "--ignorefile",
                str(DEPLOY / "docker" / "Dockerfile.gpu.dockerignore"), "-f", str(DEPLOY / "docker" / "Dockerfile.gpu"),
                "--build-arg", f"BASE_IMAGE={BASE}", "-t", gpu, ".", timeout=2400)
        FIGURES["gpu_build_s"] = round(time.perf_counter() - t0, 1)
        FIGURES["gpu_image_bytes"] = int(_podman("image", "inspect", gpu, "--format", "{{.Size}}").stdout)
        out = _podman("run", "--rm", gpu, "sh", "-c", "id -u; sftl --version; python -c 'import torch, dask_cuda; "
                      "print(torch.version.cuda, torch.cuda.is_available())'").stdout.split()
        assert out == ["10001", "sftl-dask", "0.1.0", "13.0", "False"], out
    finally:
        _podman("rmi", "-f", gpu, check=False)


# ================================================================================================ the stack
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small delivered testbed (2 scenes, 2 tiles) and a DNN artifact, made on the host."""
    from helpers import retrieval_artifact

    root = tmp_path_factory.mktemp("stack-data")
    _run([sys.executable, "-m", "sftl_dask.cli", "testbed", "--out", str(root / "tb"), "--scenes", "1", "--size",
          "640", "--workers", "2"], timeout=900, PYTHONPATH=str(ROOT))
    retrieval_artifact(root / "model", "dnn")
    return root


def _fill_volume(volume: str, data: Path) -> None:
    """The testbed and model copied into a named volume, owned by the containers' user."""
    _podman("volume", "create", volume)
    _podman("run", "--rm", "--user", "0", "--network", "none", "-v", f"{volume}:/data", "-v", f"{data}:/in:ro", IMAGE,
            "sh", "-c", "cp -r /in/tb /in/model /data/ && chown -R 10001:10001 /data")


def _wait_healthy(containers: list[str], timeout_s: float = 120) -> None:
    """Run each container's healthcheck until all pass (podman without systemd runs them only when asked)."""
    deadline = time.monotonic() + timeout_s
    while True:
        failing = [c for c in containers if _podman("healthcheck", "run", c, check=False).returncode != 0]
        if not failing:
            return
        assert time.monotonic() < deadline, f"not healthy after {timeout_s} s: {failing}"
        time.sleep(0.5)


INGEST = ("sftl ingest /data/tb/archives --cube /data/cube --era5 /data/tb/era5/*.nc --ged /data/tb/ged "
          "--dem /data/tb/dem")
RETRIEVE = "sftl retrieve --cube /data/cube --model /data/model --out /data/lst"
SCHEDULER = "--scheduler tcp://scheduler:8786"


def _job(script: str, check: bool = True, **extra: str) -> subprocess.CompletedProcess:
    """A verb as the compose file's one-shot `sftl` service (its dependencies already up)."""
    return _compose("--profile", "job", "run", "--rm", "--no-deps", "-T", "sftl", "sh", "-c", script, check=check,
                    **extra)


@pytest.fixture(scope="module")
def stack(image: str, data: Path) -> Iterator[str]:
    """compose up (a scheduler, two CPU workers), then ingest and retrieve through it; torn down after."""
    volume = f"{PROJECT}_sftl-data"
    _fill_volume(volume, data)
    try:
        t0 = time.perf_counter()
        _compose("up", "-d")
        _wait_healthy([f"{PROJECT}_scheduler_1", f"{PROJECT}_cpu-worker_1", f"{PROJECT}_cpu-worker_2"])
        FIGURES["up_to_healthy_s"] = round(time.perf_counter() - t0, 1)
        FIGURES["ingest_stdout"] = [line for line in _job(f"{INGEST} {SCHEDULER}").stdout.splitlines()
                                    if line.startswith(("ingested", "  cube:"))]
        FIGURES["up_to_ingested_s"] = round(time.perf_counter() - t0, 1)
        FIGURES["retrieve_stdout"] = _job(f"{RETRIEVE} {SCHEDULER}").stdout.strip().splitlines()[-3:]
        FIGURES["up_to_first_lst_s"] = round(time.perf_counter() - t0, 1)
        yield volume
    finally:
        _compose("down", "-v", check=False)
        _podman("volume", "rm", "-f", volume, check=False)


def _volume_path(volume: str) -> Path:
    return Path(_podman("volume", "inspect", volume, "--format", "{{.Mountpoint}}").stdout.strip())


def _arrays(store: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every array of a Zarr store (path -> array) and the store's attributes."""
    import zarr

    out: dict[str, Any] = {}

    def walk(group: Any, prefix: str) -> None:
        for name, arr in group.arrays():
            out[prefix + name] = arr
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    group = zarr.open_group(str(store), mode="r")
    walk(group, "")
    return out, dict(group.attrs)


def _differences(a: Path, b: Path) -> list[str]:
    """What differs between two cube or LST roots: store names, array bytes (NaNs bitwise), dtypes, array
    attributes, store attributes other than the run's own provenance (`history`, `date_created`)."""
    names = sorted(p.name for p in a.glob("*.zarr"))
    if names != sorted(p.name for p in b.glob("*.zarr")) or not names:
        return [f"stores {names} vs {sorted(p.name for p in b.glob('*.zarr'))}"]
    diffs = []
    for name in names:
        (xa, xattrs), (ya, yattrs) = _arrays(a / name), _arrays(b / name)
        diffs += [f"{name}: arrays {sorted(xa)} vs {sorted(ya)}"] if sorted(xa) != sorted(ya) else []
        for key in sorted(set(xa) & set(ya)):
            x, y = np.asarray(xa[key][...]), np.asarray(ya[key][...])
            if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                diffs.append(f"{name}/{key}: values")
            if dict(xa[key].attrs) != dict(ya[key].attrs):
                diffs.append(f"{name}/{key}: attributes")
        diffs += [f"{name}: attribute {k}" for k in sorted((set(xattrs) | set(yattrs)) - {"history", "date_created"})
                  if xattrs.get(k) != yattrs.get(k)]
    return diffs


def test_compose_ingest_retrieve_equals_a_local_run_bit_for_bit(stack: str, data: Path) -> None:
    assert FIGURES["up_to_first_lst_s"] <= 120, FIGURES
    assert FIGURES["ingest_stdout"][0].startswith("ingested 2 scene(s), skipped 0, failed 0"), FIGURES
    assert len(FIGURES["ingest_stdout"]) == 3, FIGURES  # two tile stores
    assert any(line.startswith("retrieved 2 time step(s)") and "failed 0" in line
               for line in FIGURES["retrieve_stdout"]), FIGURES
    local = f"{PROJECT}-local"
    _fill_volume(local, data)
    try:
        t0 = time.perf_counter()  # the same verbs, same paths, in one container: an embedded cluster, no network
        _podman("run", "--rm", "--network", "none", "-v", f"{local}:/data", IMAGE, "sh", "-c",
                f"{INGEST} --workers 2 && {RETRIEVE} --workers 2")
        FIGURES["local_run_s"] = round(time.perf_counter() - t0, 1)
        shared, ref = _volume_path(stack), _volume_path(local)
        for what in ("cube", "lst"):
            assert _differences(shared / what, ref / what) == [], what
            FIGURES[f"{what}_arrays_equal"] = sum(len(_arrays(s)[0]) for s in (shared / what).glob("*.zarr"))
    finally:
        _podman("volume", "rm", "-f", local, check=False)


# ================================================================================================ bad input
def _refusal(proc: subprocess.CompletedProcess) -> str:
    """The one line `sftl` wrote (podman-compose adds its own WARNING lines): exit code 2, no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("sftl ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _stale_worker(tmp_path: Path) -> str:
    """A worker container from an image that says sftl-dask 0.0.9 (what Dask's version check reads), joined."""
    containerfile = tmp_path / "Containerfile"
    metadata = "/opt/venv/lib/python3.11/site-packages/sftl_dask-*.dist-info/METADATA"
    containerfile.write_text(f"FROM {IMAGE}\nUSER 0\nRUN sed -i 's/^Version: .*/Version: 0.0.9/' {metadata}\n"
                             "USER 10001:10001\n")
    _podman("build", "--runtime", "runc", *ULIMITS, "-f", str(containerfile), "-t", STALE, str(tmp_path))
    name = f"{PROJECT}_stale-worker"
    _podman("run", "-d", "--name", name, "--network", f"{PROJECT}_default", STALE, "dask", "worker",
            "tcp://scheduler:8786", "--nthreads", "1", "--interface", "eth0", "--dashboard-address", "127.0.0.1:0")
    deadline = time.monotonic() + 120
    while _podman("exec", name, "python", "/opt/sftl/healthcheck.py", "worker", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the stale worker never joined"
        time.sleep(0.5)
    return name


def test_bad_input_is_one_line_and_exit_2(stack: str, tmp_path: Path) -> None:
    cube_ingest = INGEST.replace("--cube /data/cube", "--cube /data/cube-bad")
    line = _refusal(_job(f"{cube_ingest} --scheduler tcp://scheduler:8799", check=False))
    assert line == "sftl ingest: error: cannot reach Dask scheduler tcp://scheduler:8799: Connection refused"

    stale = _stale_worker(tmp_path)
    try:
        line = _refusal(_job(f"{cube_ingest} {SCHEDULER}", check=False))
    finally:
        _podman("rm", "-f", stale, check=False)
        _podman("rmi", "-f", STALE, check=False)
    assert line == ("sftl ingest: error: Dask scheduler tcp://scheduler:8786: 1 of its 3 worker(s) run sftl-dask "
                    "0.0.9, this client 0.1.0 (Dask's version check): start every container from one image build")

    _compose("up", "-d", SFTL_DATA_MODE="ro")  # the stack again, its volume read-only
    _wait_healthy([f"{PROJECT}_cpu-worker_1", f"{PROJECT}_cpu-worker_2"])
    line = _refusal(_job(f"{cube_ingest} {SCHEDULER}", check=False, SFTL_DATA_MODE="ro"))
    assert line == "sftl ingest: error: /data/.cube-bad.lock: Read-only file system"
    assert not (_volume_path(stack) / "cube-bad").exists()


# ================================================================================================ teardown
def test_teardown_leaves_no_container_volume_network_or_image(before: dict[str, set[str]], stack: str,
                                                             image: str) -> None:
    t0 = time.perf_counter()
    _compose("down", "-v")
    _podman("volume", "rm", "-f", stack, check=False)  # created before `up`, outside the compose project
    _podman("rmi", "-f", image)
    _remove_build_leftovers(before["image"])
    FIGURES["teardown_s"] = round(time.perf_counter() - t0, 1)
    after = {kind: _names(kind) for kind in ("container", "volume", "network", "image")}
    left = {kind: sorted(after[kind] - before[kind]) for kind in after}
    if FIGURES.get("base_image_s") is not None:  # the base this test made goes too, in the fixture's finalizer
        left["image"] = [i for i in left["image"] if not i.startswith(BASE + " ")]
    FIGURES["left_behind"] = left
    print(json.dumps(FIGURES, indent=1))
    if os.environ.get("SFTL_CONTAINER_FIGURES"):
        Path(os.environ["SFTL_CONTAINER_FIGURES"]).write_text(json.dumps(FIGURES, indent=1) + "\n")
    assert left == {"container": [], "volume": [], "network": [], "image": []}
