#!/usr/bin/env python3
"""Run sftl verbs on Dask workers that SLURM (or PBS) starts as batch jobs, through dask-jobqueue.

The scheduler runs inside this process (on the login node, or inside a small batch job of its own); the
workers are batch jobs that ``dask_jobqueue`` submits with ``sbatch`` (``qsub`` for PBS) and cancels at the
end. Each STEP is one ``sftl`` verb with its arguments, run as ``sftl VERB ... --scheduler ADDRESS`` in order;
the first step that fails ends the run with its exit code::

    python deploy/slurm/run_pipeline.py --jobs 4 \\
        "ingest /scratch/gf5/archives --cube /scratch/gf5/cube --era5 /scratch/era5/*.nc --ged /scratch/ged" \\
        "retrieve --cube /scratch/gf5/cube --model /scratch/models/dnn --out /scratch/gf5/lst"

Job sizes, partition, walltime and the workers' environment come from a Dask configuration file with a
``jobqueue`` section (default: ``jobqueue.yaml`` beside this script); ``--profile`` picks a section in it
(``slurm``, ``slurm-gpu``, ``pbs``). Every path in the steps must be one the compute nodes see, and this
Python environment must lie on a shared file system (the jobs start ``sys.executable``). Patterns with
``*``, ``?`` or ``[`` in a step are expanded here, as a shell would. With mutual TLS configured in the Dask
configuration (``distributed.comm.require-encryption``, ``deploy/tls/dask-tls.yaml``), the scheduler, the
workers and the sftl client all speak TLS.

Exit codes: 0 every step succeeded; a step's own non-zero code (1: some items failed, 2: bad input) when it
failed; 1 when the workers did not join in time or the cluster could not start; 2 for bad options here.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_CONFIG = HERE / "jobqueue.yaml"
#: Options that this script sets on every step itself.
RESERVED = ("--scheduler", "--workers")
PREFIX = "run_pipeline:"


class UsageError(Exception):
    """Bad options or configuration, found before any job is submitted (exit code 2)."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
        The parsed options.
    """
    p = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description="Start Dask workers as SLURM/PBS jobs (dask-jobqueue) and run sftl verbs through them.",
        epilog="Exit codes: 0 all steps done; a failed step's own code; 1 workers missing or cluster failed; "
               "2 bad options.")
    p.add_argument("steps", nargs="+", metavar="STEP",
                   help="one sftl verb with its arguments, quoted as one word (without --scheduler)")
    p.add_argument("--jobs", type=_positive_int, default=2, help="batch jobs to submit (default 2)")
    p.add_argument("--profile", default="slurm",
                   help="section of the jobqueue configuration: slurm, slurm-gpu, pbs (default slurm)")
    p.add_argument("--config", type=Path, default=None,
                   help=f"Dask configuration file with a 'jobqueue' section (default {DEFAULT_CONFIG.name} beside "
                        "this script; 'none': only Dask's own configuration files)")
    p.add_argument("--queue", default=None, help="partition / queue (overrides the profile)")
    p.add_argument("--account", default=None, help="account to charge (overrides the profile)")
    p.add_argument("--walltime", default=None, help="job time limit, e.g. 02:00:00 (overrides the profile)")
    p.add_argument("--cores", type=_positive_int, default=None, help="cores per job (overrides the profile)")
    p.add_argument("--memory", default=None, help="memory per job, e.g. 16GB (overrides the profile)")
    p.add_argument("--interface", default=None,
                   help="network interface of scheduler and workers, e.g. ib0 (overrides the profile)")
    p.add_argument("--log-directory", default=None, help="folder for the jobs' stdout/stderr")
    p.add_argument("--wait", type=float, default=3600.0,
                   help="seconds to wait for all workers to join; 0 = no limit (default 3600)")
    return p.parse_args(argv)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def load_config(path: Path | None, profile: str) -> None:
    """Merge a Dask configuration file into Dask's configuration and check that the profile is in it.

    Parameters
    ----------
    path : Path, optional
        YAML file; None means the default beside this script, ``Path("none")`` means no file.
    profile : str
        ``jobqueue`` section that must exist afterwards.

    Raises
    ------
    UsageError
        If the file cannot be read or parsed, or the profile is missing.
    """
    import dask
    import yaml

    if path is None:
        path = DEFAULT_CONFIG
    if str(path) != "none":
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict) or not isinstance(data.get("jobqueue"), dict):
            raise UsageError(f"{path}: no 'jobqueue' section")
        dask.config.update(dask.config.config, data, priority="new")
    section = dask.config.get(f"jobqueue.{profile}", None)
    if not isinstance(section, dict):
        known = ", ".join(sorted(dask.config.get("jobqueue", {}))) or "none"
        raise UsageError(f"{path}: no profile jobqueue.{profile} (profiles: {known})")


def expand_steps(steps: Sequence[str]) -> list[list[str]]:
    """Split each step like a shell would: quoting, then patterns expanded (kept as written if nothing matches).

    Parameters
    ----------
    steps : sequence of str
        One ``sftl`` verb with its arguments per item.

    Returns
    -------
    list of list of str
        The argument vectors, without ``sftl`` itself.

    Raises
    ------
    UsageError
        If a step is empty, unparsable, or carries an option this script sets itself.
    """
    out = []
    for i, step in enumerate(steps, start=1):
        try:
            words = shlex.split(step)
        except ValueError as exc:
            raise UsageError(f"step {i} ({step!r}): {exc}") from None
        if not words:
            raise UsageError(f"step {i} is empty")
        if words[0] == "sftl":
            words = words[1:]
        for w in words:
            if w.split("=", 1)[0] in RESERVED:
                raise UsageError(f"step {i} ({words[0]}): {w.split('=', 1)[0]} is set by run_pipeline.py itself")
        argv: list[str] = []
        for w in words:
            matches = sorted(glob.glob(w)) if glob.has_magic(w) else []
            argv.extend(matches or [w])
        out.append(argv)
    return out


def sftl_command() -> list[str]:
    """The ``sftl`` executable of this Python environment (else the one on PATH).

    Raises
    ------
    UsageError
        If there is none.
    """
    beside = Path(sys.executable).with_name("sftl")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("sftl")
    if found:
        return [found]
    raise UsageError(f"no 'sftl' command beside {sys.executable} or on PATH: pip install sftl-dask there")


def cluster_class(profile: str) -> Any:
    """``PBSCluster`` for profiles named ``pbs...``, else ``SLURMCluster``."""
    if profile.startswith("pbs"):
        from dask_jobqueue import PBSCluster

        return PBSCluster
    from dask_jobqueue import SLURMCluster

    return SLURMCluster


def cluster_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the jobqueue cluster: the profile, the overrides given, TLS from Dask's configuration.

    The dashboard (plain HTTP, no authentication) listens on loopback unless the profile's
    ``scheduler-options`` say otherwise; reach it with ``ssh -L``.
    """
    import dask

    kw: dict[str, Any] = {"config_name": args.profile}
    for name in ("queue", "account", "walltime", "cores", "memory", "interface", "log_directory"):
        value = getattr(args, name)
        if value is not None:
            kw[name] = value
    options = dict(dask.config.get(f"jobqueue.{args.profile}.scheduler-options", None) or {})
    options.setdefault("dashboard_address", "127.0.0.1:8787")
    kw["scheduler_options"] = options
    if dask.config.get("distributed.comm.require-encryption", False):
        from distributed.security import Security

        kw["security"] = Security()  # CA, certificates and keys from distributed.comm.tls.* (deploy/tls/)
        kw["protocol"] = "tls://"
    return kw


def worker_jobs(client: Any) -> dict[str, tuple[str, str]]:
    """Per worker address: the batch job id it runs in (``SLURM_JOB_ID`` / ``PBS_JOBID``) and its host."""

    def where() -> tuple[str, str]:
        return os.environ.get("SLURM_JOB_ID") or os.environ.get("PBS_JOBID") or "?", socket.gethostname()

    result: dict[str, tuple[str, str]] = client.run(where)
    return result


def _say(msg: str) -> None:
    print(f"{PREFIX} {msg}", file=sys.stderr, flush=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (scancel of this script's own job, walltime): unwind so that the worker jobs are cancelled."""
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Start the cluster, wait for its workers, run the steps, cancel the jobs.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit code (see the module docstring).
    """
    args = parse_args(argv)
    try:
        load_config(args.config, args.profile)
        steps = expand_steps(args.steps)
        sftl = sftl_command()
        cls = cluster_class(args.profile)
        kwargs = cluster_kwargs(args)
    except UsageError as exc:
        print(f"{PREFIX} {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)

    from distributed import Client

    started = time.monotonic()
    try:
        cluster = cls(**kwargs)
    except Exception as exc:  # a scheduler that cannot bind, a bad interface name, ...
        _say(f"the {cls.__name__} could not start: {type(exc).__name__}: {exc}")
        return 1
    try:
        with Client(cluster) as client:
            processes = int(getattr(cluster._dummy_job, "worker_processes", 1))  # Dask workers per job
            want = args.jobs * processes
            _say(f"scheduler {cluster.scheduler_address}, dashboard {cluster.dashboard_link}")
            cluster.scale(jobs=args.jobs)
            _say(f"submitting {args.jobs} {cls.__name__.removesuffix('Cluster')} job(s) for {want} worker(s) "
                 f"(profile {args.profile})")
            try:
                client.wait_for_workers(want, timeout=args.wait or None)
            except TimeoutError:
                have = len(client.nthreads())
                _say(f"only {have} of {want} workers joined within {args.wait:g} s (jobs still queued?); "
                     "nothing was run")
                return 1
            for addr, (job, host) in sorted(worker_jobs(client).items()):
                _say(f"worker {addr} in job {job} on {host}")
            _say(f"{want} worker(s) up after {time.monotonic() - started:.1f} s")
            for i, step in enumerate(steps, start=1):
                cmd = [*sftl, *step, "--scheduler", cluster.scheduler_address]
                _say(f"step {i}/{len(steps)}: {shlex.join(['sftl', *step])}")
                t0 = time.monotonic()
                rc = subprocess.run(cmd, check=False).returncode
                if rc != 0:
                    _say(f"step {i} (sftl {step[0]}) exited with {rc} after {time.monotonic() - t0:.1f} s; "
                         "later steps not run")
                    return rc
                _say(f"step {i} (sftl {step[0]}) done in {time.monotonic() - t0:.1f} s")
            return 0
    finally:
        cluster.close()  # cancels every job it submitted (scancel / qdel)
        _say(f"jobs cancelled, cluster closed after {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
