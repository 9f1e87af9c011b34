"""deploy/slurm/ for real: a one-node SLURM cluster on this machine, dask-jobqueue worker jobs, sftl verbs.

The module fixture starts munged, slurmctld and slurmd (Debian's ``munge`` and ``slurm-wlm``) as root with
a minimal configuration in a private folder: their own ports, munge socket and key, state and spool folders,
``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none`` (no cgroup plugin at all, so nothing needs
a delegated cgroup tree, which containers and sandboxes lack; no cgroup.conf is read), no accounting
database (completed jobs go to a ``jobcomp/filetxt`` log instead). Nothing under /etc is touched; every SLURM
command gets ``SLURM_CONF``. Skips where the binaries are absent or the tests do not run as root.
``make test`` installs the packages first when ``SFTL_INSTALL_SLURM=1`` (``.ci/run`` sets it) and it runs as
root (``deploy/slurm/install-packages.sh``).

The test runs ``deploy/slurm/run_pipeline.py`` with ``deploy/slurm/jobqueue.yaml`` (cores, memory and queue
lowered for this machine): two worker jobs through ``sbatch``, then ``sftl ingest`` of the session's small
testbed and ``sftl retrieve`` with a small DNN artifact through that scheduler.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RUN_PIPELINE = ROOT / "deploy" / "slurm" / "run_pipeline.py"
JOBQUEUE_YAML = ROOT / "deploy" / "slurm" / "jobqueue.yaml"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
PARTITION = "debug"


@dataclass
class OneNodeSlurm:
    """A running one-node SLURM cluster: its configuration, node, environment and daemons."""

    conf: Path
    folder: Path
    node: str
    env: dict[str, str]
    jobcomp: Path
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def run(self, *cmd: str) -> str:
        """A SLURM client command against this cluster; its stdout."""
        return subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True, timeout=30).stdout

    def logs(self) -> str:
        """The daemons' log tails, for failure messages."""
        parts = []
        for name in ("munged.out", "slurmctld.log", "slurmd.log"):
            path = self.folder / name
            text = path.read_text(errors="replace") if path.exists() else "(none)"
            parts.append(f"--- {name}\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    return 4096  # pragma: no cover - Linux always has it


def _slurm_conf(folder: Path, node: str, munge_socket: Path) -> str:
    cpus = max(2, os.cpu_count() or 1)  # two 1-core worker jobs side by side; config_overrides trusts this
    mem = max(4096, int(_mem_total_mb() * 0.8))
    return f"""\
ClusterName=sftltest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MailProg=/bin/true
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/jobcomp.txt
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """End a daemon this module started, by its own pid."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _job_processes(conf: Path) -> list[int]:
    """Pids of processes that SLURM jobs of this cluster started: their environment names its SLURM_CONF."""
    marker = f"SLURM_CONF={conf}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in env:
            pids.append(int(entry.name))
    return pids


def _wait_until(check: Callable[[], object], timeout: float, step: float = 0.5) -> bool:
    """Poll ``check`` until it returns something true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return False


@pytest.fixture(scope="module")
def slurm() -> Iterator[OneNodeSlurm]:
    """munged + slurmctld + slurmd on this host, in a private folder; all stopped and removed afterwards."""
    missing = [b for b in BINARIES if shutil.which(b, path=SBIN_PATH) is None]
    if missing:
        pytest.skip(f"SLURM/munge not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM cluster runs its daemons as root; these tests do not run as root")

    # Not pytest's tmp_path: munged wants every folder above its socket world-searchable, pytest's is 0700.
    folder = Path(tempfile.mkdtemp(prefix="sftl-slurm-"))
    folder.chmod(0o755)
    key_dir, run_dir = folder / "munge-key", folder / "munge-run"
    key_dir.mkdir(mode=0o700)
    run_dir.mkdir(mode=0o755)
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    key = key_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    munge_socket = run_dir / "munge.socket"
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, node, munge_socket))
    daemon_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    daemon_env["PATH"] = SBIN_PATH
    cluster = OneNodeSlurm(conf=conf, folder=folder, node=node, jobcomp=folder / "jobcomp.txt",
                           env={**daemon_env, "SLURM_CONF": str(conf)})

    def start(name: str, *cmd: str) -> None:
        with open(folder / f"{name}.out", "wb") as out:  # the daemon keeps its own copy of the descriptor
            cluster.daemons[name] = subprocess.Popen(cmd, env=daemon_env, stdout=out, stderr=subprocess.STDOUT,
                                                     stdin=subprocess.DEVNULL, cwd=folder)

    try:
        start("munged", "munged", "-F", f"--socket={munge_socket}", f"--key-file={key}",
              f"--pid-file={run_dir / 'munged.pid'}", f"--seed-file={key_dir / 'munged.seed'}",
              f"--log-file={folder / 'munged.log'}")
        if not _wait_until(munge_socket.exists, 15):
            pytest.fail(f"munged did not create its socket\n{cluster.logs()}")
        start("slurmctld", "slurmctld", "-D", "-c", "-f", str(conf))
        start("slurmd", "slurmd", "-D", "-f", str(conf), "-N", node)

        def idle() -> bool:
            try:
                return cluster.run("sinfo", "-h", "-n", node, "-o", "%T").strip() == "idle"
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                return False

        if not _wait_until(idle, 60, 1.0):
            pytest.fail(f"the SLURM node never became idle\n{cluster.logs()}")
        yield cluster
    finally:
        if "slurmctld" in cluster.daemons and cluster.daemons["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", f"--partition={PARTITION}"], env=cluster.env, check=False,
                           capture_output=True, timeout=30)
            _wait_until(lambda: not cluster.run("squeue", "-h").strip(), 30)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in cluster.daemons:
                _stop(cluster.daemons[name])
        for pid in _job_processes(conf):  # a job process that outlived its job: ours, ended by its pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(folder, ignore_errors=True)


def _jobqueue_config(path: Path, logs: Path) -> Path:
    """deploy/slurm/jobqueue.yaml with this machine's sizes: 1 core, 2 GB, 15 min, partition `debug`."""
    cfg = yaml.safe_load(JOBQUEUE_YAML.read_text())
    cfg["jobqueue"]["slurm"].update({"cores": 1, "memory": "2GB", "walltime": "00:15:00", "queue": PARTITION,
                                     "log-directory": str(logs)})
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_one_node_slurm_runs_a_batch_job(slurm: OneNodeSlurm, tmp_path: Path) -> None:
    out = tmp_path / "job.out"
    submitted = slurm.run("sbatch", "--parsable", "-o", str(out), "--wrap", "echo job=$SLURM_JOB_ID node=$(hostname)")
    job = submitted.strip().split(";")[0]
    assert _wait_until(lambda: out.exists() and "job=" in out.read_text(), 30), slurm.logs()
    assert out.read_text().split() == [f"job={job}", f"node={socket.gethostname()}"]


def test_jobqueue_workers_are_slurm_jobs_and_run_ingest_then_retrieve(
        slurm: OneNodeSlurm, small_testbed: Path, tmp_path: Path, retrieval_model: Callable[..., Path]) -> None:
    import xarray as xr

    from sftl_dask.io.cube import cube_stores

    tb = small_testbed
    model = retrieval_model("dnn")
    logs = tmp_path / "logs"
    cfg = _jobqueue_config(tmp_path / "jobqueue.yaml", logs)
    cube, lst = tmp_path / "cube", tmp_path / "lst"
    cmd = [sys.executable, str(RUN_PIPELINE), "--config", str(cfg), "--jobs", "2", "--interface", "lo",
           "--wait", "120",
           f"ingest {tb / 'archives'} --cube {cube} --era5 {tb / 'era5'}/*.nc --ged {tb / 'ged'}",
           f"retrieve --cube {cube} --model {model} --out {lst} --device cpu"]
    seen: dict[str, tuple[str, str, str]] = {}  # job id -> (name, state, node) as squeue showed it
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=slurm.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path)
    try:
        while proc.poll() is None and time.monotonic() - t0 < 600:
            for line in slurm.run("squeue", "-h", "-o", "%i|%j|%T|%N").splitlines():
                job, name, state, node = line.split("|")
                if state == "RUNNING" or job not in seen:
                    seen[job] = (name, state, node)
            time.sleep(0.5)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - t0
    assert proc.returncode == 0, output[-4000:] + "\n" + slurm.logs()

    # every worker ran inside a SLURM batch job, one job each, and squeue showed those jobs running
    workers = re.findall(r"run_pipeline: worker (\S+) in job (\d+) on (\S+)", output)
    assert len(workers) == 2, output[-3000:]
    jobs = {job for _, job, _ in workers}
    assert len(jobs) == 2 and {host for *_, host in workers} == {socket.gethostname()}
    for job in jobs:
        assert seen.get(job) == ("sftl-worker", "RUNNING", slurm.node), (job, seen)
        assert (logs / f"sftl-worker-{job}.err").exists()
    def completed() -> str:
        return slurm.jobcomp.read_text() if slurm.jobcomp.exists() else ""

    def both_recorded() -> bool:  # the job completion log: ended (cancelled by cluster.close) on this node
        return all(re.search(rf"JobId={job} .*Name=sftl-worker .*NodeList={slurm.node}", completed()) for job in jobs)

    assert _wait_until(both_recorded, 30), completed()[-2000:]
    assert "step 1 (sftl ingest) done" in output and "step 2 (sftl retrieve) done" in output

    # what the verbs wrote through those workers
    stores = cube_stores(cube)
    assert len(stores) == 2  # one store per region grid
    assert sum(xr.open_zarr(s).sizes["time"] for s in stores.values()) == 4
    lst_stores = cube_stores(lst)
    assert sorted(lst_stores) == sorted(stores)
    for store in lst_stores.values():
        ds = xr.open_zarr(store)
        assert ds["lst"].attrs["standard_name"] == "surface_temperature" and ds.sizes["time"] == 2
        assert float(ds["lst"].notnull().mean()) > 0.2

    # the jobs are gone, and so is every process they started
    assert _wait_until(lambda: not slurm.run("squeue", "-h").strip(), 30), slurm.run("squeue")
    assert _wait_until(lambda: not _job_processes(slurm.conf), 30), _job_processes(slurm.conf)
    print(f"run_pipeline.py wall time {wall:.1f} s; squeue showed {sorted(seen.items())}")


def test_a_failing_step_ends_the_run_with_its_exit_code_and_cancels_the_jobs(slurm: OneNodeSlurm,
                                                                             tmp_path: Path) -> None:
    cfg = _jobqueue_config(tmp_path / "jobqueue.yaml", tmp_path / "logs")
    missing = tmp_path / "no-such-cube"
    res = subprocess.run(
        [sys.executable, str(RUN_PIPELINE), "--config", str(cfg), "--jobs", "1", "--interface", "lo", "--wait", "120",
         f"retrieve --cube {missing} --model {tmp_path / 'm'} --out {tmp_path / 'lst'}",
         f"rechunk --lst {tmp_path / 'lst'}"],
        env=slurm.env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr  # sftl's code for bad input, passed through
    assert str(missing) in res.stderr
    assert "step 1 (sftl retrieve) exited with 2" in res.stderr and "step 2/2" not in res.stderr
    assert re.search(r"run_pipeline: worker \S+ in job \d+ on ", res.stderr)
    assert _wait_until(lambda: not slurm.run("squeue", "-h").strip(), 30), slurm.run("squeue")
