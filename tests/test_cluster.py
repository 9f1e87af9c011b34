"""The embedded cluster: loopback only."""

from __future__ import annotations

import socket

from sftl_dask.cluster import get_client


def _bound_hosts(server: object) -> set[str]:
    return {s.getsockname()[0] for s in getattr(server, "_sockets", {}).values()}


def test_embedded_scheduler_and_dashboard_listen_on_loopback_only() -> None:
    with get_client(n_workers=1, memory_limit=None) as client:
        scheduler = client.cluster.scheduler
        assert scheduler.address.startswith("tcp://127.0.0.1:")
        hosts = _bound_hosts(scheduler.http_server)
        assert hosts == {"127.0.0.1"}, f"dashboard listens on {hosts}"
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        # not reachable through another interface of this machine
        port = next(iter(scheduler.http_server._sockets.values())).getsockname()[1]
        others = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
        for ip in others:
            with socket.socket() as s:
                s.settimeout(1)
                assert s.connect_ex((ip, port)) != 0, f"dashboard reachable on {ip}:{port}"
