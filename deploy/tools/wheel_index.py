"""A PEP 503 "simple" package index of local wheels, served on loopback: torch's CPU wheel for image builds on
machines that reach no torch index (``--build-arg TORCH_INDEX=http://127.0.0.1:PORT/simple``).

Usage (from the repository root)::

    pip download --only-binary :all: -d /var/tmp/wheels "torch==2.13.0"   # the wheel and its dependencies
    python deploy/tools/wheel_index.py /var/tmp/wheels --port 8791          # serves until interrupted

The builder reaches it through ``podman build --network host``. Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import html
import http.server
import re
import sys
import tempfile
from pathlib import Path


def project_name(wheel: Path) -> str:
    """The normalised project name of a wheel file (PEP 503: lower case, runs of ``-_.`` as one ``-``).

    Parameters
    ----------
    wheel : Path
        A ``.whl`` file named as PEP 427 says (``name-version-...whl``).

    Returns
    -------
    str
        The name under which pip looks the project up (``/simple/<name>/``).
    """
    return re.sub(r"[-_.]+", "-", wheel.name.split("-", 1)[0]).lower()


def build_index(wheels: Path, root: Path) -> list[str]:
    """Write ``root/simple/<project>/index.html`` for every wheel in ``wheels``, each link with its sha256.

    Parameters
    ----------
    wheels : Path
        Folder of ``.whl`` files.
    root : Path
        Folder to serve; the wheels are linked (symbolic links) under ``root/files``.

    Returns
    -------
    list of str
        The projects indexed, sorted.

    Raises
    ------
    FileNotFoundError
        If ``wheels`` holds no wheel.
    """
    found = sorted(wheels.glob("*.whl"))
    if not found:
        raise FileNotFoundError(f"{wheels}: no .whl file to index")
    (root / "files").mkdir(parents=True, exist_ok=True)
    projects: dict[str, list[str]] = {}
    for whl in found:
        link = root / "files" / whl.name
        if not link.exists():
            link.symlink_to(whl.resolve())
        digest = hashlib.sha256(whl.read_bytes()).hexdigest()
        href = html.escape(f"../../files/{whl.name}#sha256={digest}")
        projects.setdefault(project_name(whl), []).append(f'<a href="{href}">{html.escape(whl.name)}</a><br>')
    for name, links in projects.items():
        page = root / "simple" / name / "index.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text("<!DOCTYPE html><html><body>\n" + "\n".join(links) + "\n</body></html>\n")
    top = [f'<a href="{n}/">{n}</a><br>' for n in sorted(projects)]
    (root / "simple" / "index.html").write_text("<!DOCTYPE html><html><body>\n" + "\n".join(top) + "\n</body></html>\n")
    return sorted(projects)


def serve(root: Path, port: int) -> None:
    """Serve ``root`` over HTTP on 127.0.0.1:``port`` until interrupted (port 0: a free one, printed)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as httpd:
        print(f"http://127.0.0.1:{httpd.server_address[1]}/simple", flush=True)
        httpd.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Index the wheels of a folder and serve them on loopback; exit code 2 when there is nothing to serve."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wheels", type=Path, help="folder of .whl files")
    p.add_argument("--port", type=int, default=8791, help="loopback port (0: any free one); default 8791")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wheel-index-") as tmp:
        try:
            build_index(args.wheels, Path(tmp))
        except FileNotFoundError as exc:
            print(f"wheel_index: error: {exc}", file=sys.stderr)
            return 2
        try:
            serve(Path(tmp), args.port)
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            print(f"wheel_index: error: port {args.port}: {exc.strerror}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
