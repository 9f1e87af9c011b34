"""Container health of the compose stack and the Kubernetes pods, standard library only (a check costs ~50 ms).

    python /opt/sftl/healthcheck.py scheduler   # the scheduler serves: its HTTP /health says ok
    python /opt/sftl/healthcheck.py worker      # this container's worker joined the scheduler

The scheduler's HTTP address is ``$SFTL_SCHEDULER_HTTP`` (default ``http://127.0.0.1:8787`` for ``scheduler``,
``http://scheduler:8787`` for ``worker``). A worker has joined when one of the workers the scheduler lists
(``/json/identity.json``) has this container's address. Exit code 0 healthy, 1 not (one line on stdout says
why: Docker and podman keep it in the container's health log).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_HTTP = {"scheduler": "http://127.0.0.1:8787", "worker": "http://scheduler:8787"}


def own_hosts() -> set[str]:
    """The addresses this container answers on: its host name, and what that name resolves to."""
    name = socket.gethostname()
    hosts = {name}
    try:
        hosts |= {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        pass
    return hosts


def check(role: str, base: str, timeout_s: float = 3.0) -> str:
    """What is wrong, or "" when healthy.

    Parameters
    ----------
    role : {"scheduler", "worker"}
        Which container asks.
    base : str
        The scheduler's HTTP address (``http://host:port``).
    timeout_s : float
        Per-request timeout, seconds.
    """
    path = "/health" if role == "scheduler" else "/json/identity.json"
    try:
        with urllib.request.urlopen(base.rstrip("/") + path, timeout=timeout_s) as resp:
            body = resp.read().decode()
    except (OSError, urllib.error.URLError) as exc:
        return f"scheduler HTTP {base}{path}: {getattr(exc, 'reason', exc)}"
    if role == "scheduler":
        return "" if body.strip() == "ok" else f"scheduler /health says {body.strip()[:80]!r}"
    workers = json.loads(body).get("workers", {})
    mine = own_hosts()
    if any(urllib.parse.urlsplit(addr).hostname in mine for addr in workers):
        return ""
    return f"no worker of this container ({', '.join(sorted(mine))}) among the scheduler's {len(workers)}"


def main(argv: list[str]) -> int:
    """Exit code 0 healthy, 1 not, 2 for a wrong role."""
    if len(argv) != 1 or argv[0] not in DEFAULT_HTTP:
        print("usage: healthcheck.py scheduler|worker", file=sys.stderr)
        return 2
    role = argv[0]
    problem = check(role, os.environ.get("SFTL_SCHEDULER_HTTP", DEFAULT_HTTP[role]))
    print(problem or f"{role} healthy")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
