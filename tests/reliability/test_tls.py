"""TLS for a scheduler on a network (issue 13, security), with real processes on loopback.

``deploy/tls/make-certs.sh`` makes a private CA and the role certificates; a real ``dask scheduler`` and
``dask worker`` are started with them exactly as ``deploy/README.md`` says; ``sftl`` connects through
``deploy/tls/dask-tls.yaml`` (``DASK_CONFIG``), with nothing TLS-specific in ``sftl_dask``. Then: the TLS
path works end to end, a plain-TCP client, a client with a foreign CA's certificate and a client with no
certificate are refused, every listening socket is on loopback, and no key material is in the config file
or in any log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TLS_DIR = REPO / "deploy" / "tls"
MAKE_CERTS = TLS_DIR / "make-certs.sh"
TLS_YAML = TLS_DIR / "dask-tls.yaml"
DEPLOYED_DIR = "/etc/sftl/tls/"  # where dask-tls.yaml expects the mounted certificates
BIN = Path(sys.executable).parent  # the venv's bin: dask, sftl
ROLES = ("scheduler", "worker", "client")

pytestmark = pytest.mark.timeout(60)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None,
                                   reason="openssl is not on PATH: deploy/tls/make-certs.sh needs it")


# ---------------------------------------------------------------------------------------------
# helpers
def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any ``DASK_*`` variable (no stray scheduler or config), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env.update(extra)
    return env


def _tool(name: str) -> str:
    """Path of a console script of the venv running the tests (``dask``, ``sftl``)."""
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} is not installed next to {sys.executable} nor on PATH")
        return found
    return str(path)


def _make_certs(out: Path, *hosts: str) -> Path:
    """Run ``deploy/tls/make-certs.sh OUT HOST...``; return ``out``."""
    res = subprocess.run(["bash", str(MAKE_CERTS), str(out), *hosts], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"make-certs.sh failed:\n{res.stdout}\n{res.stderr}"
    return out


def _tls_config(certs: Path, dest: Path, *, ca: Path | None = None) -> Path:
    """``dask-tls.yaml`` with its ``/etc/sftl/tls/`` paths pointed at ``certs`` (the CA file at ``ca`` if given)."""
    text = TLS_YAML.read_text().replace(DEPLOYED_DIR, f"{certs}/")
    if ca is not None:
        text = text.replace(str(certs / "ca.pem"), str(ca))
    dest.write_text(text)
    return dest


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> ``{"a.b.c": leaf}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _tail(path: Path, n: int = 30) -> str:
    """The last ``n`` lines of a log file (for failure messages)."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else "(no log)"


def _wait_for(check: Callable[[], Any], what: str, procs: Mapping[str, tuple[subprocess.Popen[bytes], Path]],
              timeout: float = 20.0) -> Any:
    """Poll ``check()`` until it returns a truthy value; fail early, with the logs, if a process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}:\n{_tail(log)}")
        time.sleep(0.05)
    logs = "\n".join(f"--- {name}\n{_tail(log)}" for name, (_, log) in procs.items())
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process started by this module (its own session, so its group id is its pid): TERM, then KILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # ended on its own meanwhile
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):  # ended on its own meanwhile
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _run_py(code: str, *args: str, env: dict[str, str], cwd: Path,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args...`` with the venv's interpreter; ``timeout`` (s) bounds a hang, generous for a
    loaded 2-core machine (25 s, the old bound, was too short for a verb there)."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


# Dask's connect timeout for the refusal tests: long enough that a client retrying until it ran out would hang
# past those tests' subprocess timeouts, so a refusal that is not prompt fails them without a wall-clock threshold.
_LONG_CONNECT = {"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "600s"}

# A client through sftl's own get_client: prints what it connected with, or the refusal.
_CONNECT = """
import json, os, sys, time
from sftl_dask.cluster import get_client
t0 = time.monotonic()
try:
    with get_client(sys.argv[1]) as client:
        sec = client.security
        out = {"connected": True, "scheduler": client.scheduler.address, "require_encryption": sec.require_encryption,
               "ca_file": sec.tls_ca_file, "client_cert": sec.tls_client_cert,
               "worker_pid": client.submit(os.getpid, pure=False).result(timeout=15),
               "sum": client.submit(sum, [1, 2, 3], pure=False).result(timeout=15)}
except ConnectionError as exc:
    out = {"connected": False, "error": str(exc)}
out["seconds"] = time.monotonic() - t0
print(json.dumps(out))
"""


# ---------------------------------------------------------------------------------------------
# fixtures: certificates, the rewritten config, a TLS scheduler + worker
@dataclass
class TlsCluster:
    """A running ``dask scheduler`` + ``dask worker`` pair speaking mutual TLS on loopback."""

    address: str
    certs: Path
    config: Path
    workdir: Path
    scheduler: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    logs: dict[str, Path]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster's CA and role certificates, made by deploy/tls/make-certs.sh."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH: deploy/tls/make-certs.sh needs it")
    return _make_certs(tmp_path_factory.mktemp("tls") / "certs", "localhost")


@pytest.fixture(scope="module")
def rogue_certs(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Path:
    """A second, unrelated CA and its certificates: what an outsider can make."""
    return _make_certs(tmp_path_factory.mktemp("tls") / "rogue", "localhost")


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, certs: Path) -> Iterator[TlsCluster]:
    """Scheduler and worker as real processes, started as deploy/README.md says; both ended on teardown."""
    work = tmp_path_factory.mktemp("cluster")
    config = _tls_config(certs, work / "dask-tls.yaml")
    env = _clean_env()
    logs = {"scheduler": work / "scheduler.log", "worker": work / "worker.log"}
    tls_args = ["--tls-ca-file", str(certs / "ca.pem")]
    sched_file = work / "scheduler.json"
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        with logs["scheduler"].open("wb") as log:
            procs["scheduler"] = (subprocess.Popen(
                [_tool("dask"), "scheduler", "--protocol", "tls", "--host", "127.0.0.1", "--port", "0",
                 "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file),
                 *tls_args, "--tls-cert", str(certs / "scheduler.pem"), "--tls-key", str(certs / "scheduler.key")],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True), logs["scheduler"])

        def address() -> str | None:
            """The scheduler's address from its scheduler file, once that is complete."""
            try:
                return json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                return None  # not written yet, or half written

        addr: str = _wait_for(address, "the scheduler file", procs)
        assert addr.startswith("tls://127.0.0.1:"), addr
        with logs["worker"].open("wb") as log:
            procs["worker"] = (subprocess.Popen(
                [_tool("dask"), "worker", addr, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                 "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--local-directory", str(work / "worker"),
                 *tls_args, "--tls-cert", str(certs / "worker.pem"), "--tls-key", str(certs / "worker.key")],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True), logs["worker"])
        _wait_for(lambda: "Registered to:" in logs["worker"].read_text(errors="replace"), "the worker to register",
                  procs)
        yield TlsCluster(addr, certs, config, work, procs["scheduler"][0], procs["worker"][0], logs)
    finally:
        for proc, _ in reversed(list(procs.values())):
            _stop(proc)
        for name, (proc, _) in procs.items():
            assert proc.poll() is not None, f"{name} (pid {proc.pid}) still running after teardown"


# ---------------------------------------------------------------------------------------------
@needs_openssl
def test_make_certs_writes_owner_only_keys_and_certificates_of_one_ca(certs: Path) -> None:
    """Keys are mode 600 in a 700 folder; every role certificate verifies against the CA and names the hosts."""
    assert stat.S_IMODE(certs.stat().st_mode) == 0o700
    for role in ("ca", *ROLES):
        key = certs / f"{role}.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, f"{key}: mode {stat.S_IMODE(key.stat().st_mode):o}"
        assert "PRIVATE KEY" in key.read_text()
    for role in ROLES:
        pem = certs / f"{role}.pem"
        ok = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.pem"), str(pem)], capture_output=True,
                            text=True, timeout=10)
        assert ok.returncode == 0, ok.stderr
        text = subprocess.run(["openssl", "x509", "-in", str(pem), "-noout", "-text"], capture_output=True,
                              text=True, timeout=10, check=True).stdout
        assert all(s in text for s in ("DNS:localhost", "IP Address:127.0.0.1", "TLS Web Server Authentication",
                                       "TLS Web Client Authentication")), text


@needs_openssl
def test_sftl_get_client_speaks_tls_from_the_dask_config_alone(tls_cluster: TlsCluster) -> None:
    """get_client("tls://...") with only DASK_CONFIG=dask-tls.yaml: mutual TLS, a task runs on the TLS worker."""
    res = _run_py(_CONNECT, tls_cluster.address, env=_clean_env(DASK_CONFIG=str(tls_cluster.config)),
                  cwd=tls_cluster.workdir)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["connected"], out
    assert out["scheduler"] == tls_cluster.address and out["require_encryption"] is True
    assert out["ca_file"] == str(tls_cluster.certs / "ca.pem")
    assert out["client_cert"] == str(tls_cluster.certs / "client.pem")
    assert out["worker_pid"] == tls_cluster.worker.pid and out["sum"] == 6


@needs_openssl
def test_a_real_sftl_verb_runs_on_the_tls_cluster(tls_cluster: TlsCluster) -> None:
    """``sftl simulate --scheduler tls://...`` with DASK_CONFIG: the verb's tasks run on the TLS worker."""
    out = tls_cluster.workdir / "sim.parquet"
    res = subprocess.run([_tool("sftl"), "simulate", "--out", str(out), "--profiles", "2", "--spectra", "2",
                          "--scheduler", tls_cluster.address], capture_output=True, text=True, timeout=300,
                         env=_clean_env(DASK_CONFIG=str(tls_cluster.config)), cwd=tls_cluster.workdir)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"wrote \d+ rows to", res.stdout), res.stdout
    assert out.is_dir()
    (tls_cluster.workdir / "sftl-simulate.log").write_text(res.stdout + res.stderr)  # for the no-secrets check
    assert "Receive client connection" in tls_cluster.logs["scheduler"].read_text()


@needs_openssl
def test_a_plain_tcp_client_is_refused(tls_cluster: TlsCluster) -> None:
    """The TLS port does not talk to a plain-TCP client: get_client raises ConnectionError, quickly."""
    port = tls_cluster.address.rsplit(":", 1)[1]
    # a hang bound, not a speed figure: with Dask's connect timeout raised to 10 min, a client that kept retrying
    # instead of refusing would run past the 120 s subprocess timeout
    res = _run_py(_CONNECT, f"tcp://127.0.0.1:{port}", env=_clean_env(**_LONG_CONNECT), cwd=tls_cluster.workdir,
                  timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert not out["connected"] and f"tcp://127.0.0.1:{port}" in out["error"], out
    assert tls_cluster.scheduler.poll() is None  # refused by a live scheduler, not a dead one
    _wait_for(lambda: "TLS handshake failed" in tls_cluster.logs["scheduler"].read_text(),
              "the scheduler to log the refused handshake", {}, timeout=5)


@needs_openssl
def test_a_certificate_from_another_ca_is_refused_both_ways(tls_cluster: TlsCluster, rogue_certs: Path) -> None:
    """A client certificate not signed by the cluster's CA is refused by the scheduler (even when the client
    trusts the right CA), and a client that trusts another CA refuses the scheduler (no man in the middle)."""
    cases = {
        "scheduler refuses": _tls_config(rogue_certs, tls_cluster.workdir / "rogue-client.yaml",
                                         ca=tls_cluster.certs / "ca.pem"),
        "client refuses": _tls_config(rogue_certs, tls_cluster.workdir / "rogue-ca.yaml"),
    }
    before = tls_cluster.logs["scheduler"].read_text().count("certificate verify failed")
    for case, config in cases.items():
        res = _run_py(_CONNECT, tls_cluster.address, env=_clean_env(DASK_CONFIG=str(config), **_LONG_CONNECT),
                      cwd=tls_cluster.workdir, timeout=120)  # a hang bound (see test_a_plain_tcp_client_is_refused)
        assert res.returncode == 0, f"{case}: {res.stderr}"
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert not out["connected"] and tls_cluster.address in out["error"], f"{case}: {out}"
    assert tls_cluster.scheduler.poll() is None
    # the scheduler itself rejected the foreign client certificate
    _wait_for(lambda: tls_cluster.logs["scheduler"].read_text().count("certificate verify failed") > before,
              "the scheduler to log the foreign certificate", {}, timeout=5)


@needs_openssl
def test_a_tls_client_without_a_certificate_is_refused(tls_cluster: TlsCluster) -> None:
    """Mutual TLS: a client that trusts the CA but shows no certificate of its own gets no Dask connection."""
    host, port = tls_cluster.address.removeprefix("tls://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(tls_cluster.certs / "ca.pem"))
    ctx.check_hostname = False
    refused = False
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw) as tls:  # TLS 1.3: the server's verdict on our (absent) certificate comes next
                tls.sendall(b"\x00" * 8)
                refused = tls.recv(1) == b""
        except (ssl.SSLError, ConnectionError):
            refused = True
        except TimeoutError:  # the scheduler kept the connection open: it would talk to us
            refused = False
    assert refused, "the scheduler accepted a TLS connection without a client certificate"
    assert tls_cluster.scheduler.poll() is None


@needs_openssl
def test_scheduler_and_worker_listen_on_loopback_only(tls_cluster: TlsCluster) -> None:
    """Every listening socket of both processes is on 127.0.0.1, the plain-HTTP one (health, metrics, info
    pages: served even with --no-dashboard) included, when --dashboard-address is given as the README says."""
    import psutil

    for name, proc in (("scheduler", tls_cluster.scheduler), ("worker", tls_cluster.worker)):
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN]
        assert len(listening) >= 2, f"{name}: expected the comm and the HTTP listeners, got {listening}"
        assert {a.ip for a in listening} == {"127.0.0.1"}, f"{name} listens on {listening}"


def test_the_shipped_dask_config_holds_paths_only_and_dask_reads_them() -> None:
    """dask-tls.yaml: TLS required, every value a path under /etc/sftl/tls (no PEM, no password), and
    distributed's ``Security()`` built from it carries exactly those paths (the key names are Dask's)."""
    import dask
    from distributed import Security

    text = TLS_YAML.read_text()
    assert "BEGIN" not in text and "PRIVATE KEY" not in text
    leaves = _flatten(yaml.safe_load(text))
    assert leaves["distributed.comm.require-encryption"] is True
    assert leaves["distributed.comm.default-scheme"] == "tls"
    paths = {k: v for k, v in leaves.items() if k.startswith("distributed.comm.tls.") and k.endswith(("file", "cert",
                                                                                                       "key"))}
    assert set(paths) == {"distributed.comm.tls.ca-file"} | {f"distributed.comm.tls.{r}.{f}" for r in ROLES
                                                              for f in ("cert", "key")}
    for key, value in leaves.items():
        assert not re.search(r"pass|secret|token|password", key, re.I), f"{key} looks like a secret"
        if isinstance(value, str) and key not in ("distributed.comm.default-scheme",):
            assert value.startswith(DEPLOYED_DIR) and value.endswith((".pem", ".key")), f"{key}: {value!r}"
    with dask.config.set(leaves):
        sec = Security()
    assert sec.require_encryption is True and sec.tls_ca_file == f"{DEPLOYED_DIR}ca.pem"
    for role in ROLES:
        assert sec.get_tls_config_for_role(role)["cert"] == f"{DEPLOYED_DIR}{role}.pem"
        assert sec.get_tls_config_for_role(role)["key"] == f"{DEPLOYED_DIR}{role}.key"
    assert "BEGIN" not in repr(sec)


@needs_openssl
def test_no_key_material_in_any_log(tls_cluster: TlsCluster) -> None:
    """Scheduler, worker and sftl logs name the files at most, never the PEM text of a key or certificate."""
    bodies = set()
    for f in tls_cluster.certs.glob("*.key"):
        bodies.update(line for line in f.read_text().splitlines() if line and not line.startswith("-----"))
    for log in [*tls_cluster.logs.values(), *tls_cluster.workdir.glob("sftl-*.log")]:
        text = log.read_text(errors="replace")
        assert "BEGIN" not in text and "PRIVATE KEY" not in text, log
        assert not any(b in text for b in bodies), f"{log} holds a line of a private key"
