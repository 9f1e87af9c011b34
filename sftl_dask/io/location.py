"""Where stores live: a local path, or an fsspec URL (``s3://bucket/prefix``), behind one small layer.

Every option that names a Zarr store or a root of them (``sftl ingest --cube``, ``sftl retrieve --cube/--out``,
``sftl validate --lst``, :func:`~sftl_dask.io.stores.open_cube`, :func:`~sftl_dask.api.open_lst`) goes through
these functions, so a local path keeps its exact behaviour (a :class:`~pathlib.Path` in, the same calls out) and
a URL reaches the object store through fsspec.

**Credentials come from the environment only**, as s3fs and botocore read it: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` / ``~/.aws``, an instance role; the endpoint
of an S3-API server that is not AWS from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (or fsspec's
``FSSPEC_S3_ENDPOINT_URL``). No command-line option takes a secret. Dask workers read the same variables
from their own environment (they need them set as the ``sftl`` process has them).

The options given to fsspec are derived from those variables on each call (:func:`_options`), so a changed
environment (another endpoint, other keys) gets a new filesystem instead of fsspec's cached one.

**No rename, no append, no lock on an object store.** A single PUT is atomic (a reader sees the old object or
the new one), so small files (the ingest log, ``.zattrs``) are written whole: :func:`append_text` reads the log
and writes it back (one writer per cube root: the run's own ingest log, a few kB). Stores cannot be locked with
``flock``: see :func:`sftl_dask.staging.write_lock` for the single-writer rule that replaces it.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from pathlib import Path
from typing import Any

import fsspec
from zarr.storage import FsspecStore

from sftl_dask.staging import is_url

__all__ = ["Location", "ObjectStoreError", "absolute", "append_text", "child_stores", "exists", "filesystem",
           "is_empty_folder", "is_file", "is_url", "is_zarr_store", "join", "location", "makedirs", "name_of", "probe",
           "read_text", "remove", "zarr_store"]

#: One cube root, store or output: a local path, or an fsspec URL kept as text.
Location = Path | str


class ObjectStoreError(ConnectionError):
    """An object store that cannot be used: unreachable, credentials refused, or no such bucket (one line)."""


def location(path: str | os.PathLike[str]) -> Location:
    """``path`` as this layer keeps it: a URL as text without a trailing ``/``, anything else as a Path."""
    text = os.fspath(path)
    if is_url(text):
        return str(text).rstrip("/")
    return Path(str(text).removeprefix("file://"))


def join(base: str | os.PathLike[str], *parts: str) -> Location:
    """``base / part / ...``: a Path for a local base, a URL for a URL."""
    loc = location(base)
    if isinstance(loc, Path):
        return loc.joinpath(*parts)
    return "/".join([loc, *(p.strip("/") for p in parts)])


def name_of(path: str | os.PathLike[str]) -> str:
    """The last component of a path or URL (``<tile>.zarr``)."""
    loc = location(path)
    return loc.name if isinstance(loc, Path) else posixpath.basename(loc)


def _options(protocol: str) -> dict[str, Any]:
    """fsspec options from the environment (never from the command line); they key fsspec's instance cache."""
    if protocol not in ("s3", "s3a"):
        return {}
    opts: dict[str, Any] = {"use_listings_cache": False}  # other processes (workers) write: never a stale listing
    endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                or os.environ.get("FSSPEC_S3_ENDPOINT_URL"))
    if endpoint:
        opts["endpoint_url"] = endpoint
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        opts["key"], opts["secret"] = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            opts["token"] = os.environ["AWS_SESSION_TOKEN"]
    return opts


def _protocol(url: str) -> str:
    return url.split("://", 1)[0]


def filesystem(path: str | os.PathLike[str]) -> tuple[Any, str]:
    """The fsspec filesystem holding ``path`` and the path on it.

    Raises
    ------
    ObjectStoreError
        If the URL's scheme has no fsspec implementation installed (e.g. ``s3://`` without ``s3fs``).
    """
    loc = location(path)
    if isinstance(loc, Path):
        return fsspec.filesystem("file"), str(loc)
    protocol = _protocol(loc)
    try:
        fs = fsspec.filesystem(protocol, **_options(protocol))
    except (ImportError, ValueError) as exc:
        raise ObjectStoreError(f"{loc}: {protocol}:// URLs need an fsspec backend ({exc}); for S3 install "
                               "'sftl-dask[s3]'") from None
    return fs, fs._strip_protocol(loc)


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether a file, folder or prefix exists at ``path``."""
    loc = location(path)
    if isinstance(loc, Path):
        return loc.exists()
    fs, p = filesystem(loc)
    return bool(fs.exists(p))


def is_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a file (an object, on an object store)."""
    loc = location(path)
    if isinstance(loc, Path):
        return loc.is_file()
    fs, p = filesystem(loc)
    return bool(fs.isfile(p))


def is_zarr_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Zarr v2 group (it holds ``.zgroup``)."""
    return is_file(join(path, ".zgroup"))


def is_empty_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding nothing (an object-store prefix holding no object)."""
    loc = location(path)
    if isinstance(loc, Path):
        return loc.is_dir() and not any(loc.iterdir())
    fs, p = filesystem(loc)
    return not fs.exists(p) or not fs.ls(p, detail=False)


def child_stores(root: str | os.PathLike[str]) -> dict[str, Location]:
    """The Zarr stores ``<root>/<name>.zarr`` directly under ``root``, by name (sorted); empty if none."""
    loc = location(root)
    if isinstance(loc, Path):
        if not loc.is_dir():
            return {}
        return {p.name[: -len(".zarr")]: p for p in sorted(loc.glob("*.zarr")) if (p / ".zgroup").exists()}
    fs, p = filesystem(loc)
    try:
        names = sorted(posixpath.basename(c.rstrip("/")) for c in fs.ls(p, detail=False))
    except FileNotFoundError:
        return {}
    stores = {}
    for n in names:
        if n.endswith(".zarr") and fs.isfile(f"{p}/{n}/.zgroup"):
            stores[n[: -len(".zarr")]] = join(loc, n)
    return stores


def read_text(path: str | os.PathLike[str]) -> str:
    """The text of a file.

    Raises
    ------
    FileNotFoundError
        If there is none.
    """
    loc = location(path)
    if isinstance(loc, Path):
        return loc.read_text()
    fs, p = filesystem(loc)
    return bytes(fs.cat_file(p)).decode()


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Add ``text`` at the end of a file, creating it.

    Locally an append; on an object store (no append) the file is read and written back whole in one PUT, so
    a reader never sees half of it. Meant for small logs of one writer (the cube's single-writer rule).
    """
    loc = location(path)
    if isinstance(loc, Path):
        loc.parent.mkdir(parents=True, exist_ok=True)
        with loc.open("a") as fh:
            fh.write(text)
        return
    fs, p = filesystem(loc)
    try:
        old = bytes(fs.cat_file(p))
    except FileNotFoundError:
        old = b""
    fs.pipe_file(p, old + text.encode())


def makedirs(path: str | os.PathLike[str]) -> None:
    """Create a local folder (and its parents); nothing on an object store (prefixes need no creating)."""
    loc = location(path)
    if isinstance(loc, Path):
        loc.mkdir(parents=True, exist_ok=True)


def remove(path: str | os.PathLike[str]) -> None:
    """Delete a file, folder or prefix (a whole store) and everything under it."""
    loc = location(path)
    if isinstance(loc, Path):
        if loc.is_dir() and not loc.is_symlink():
            shutil.rmtree(loc)
        else:
            loc.unlink(missing_ok=True)
        return
    fs, p = filesystem(loc)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def absolute(path: str | os.PathLike[str]) -> Location:
    """An absolute local path (symlinks resolved), or the URL itself."""
    loc = location(path)
    return loc.resolve() if isinstance(loc, Path) else loc


def zarr_store(path: str | os.PathLike[str], *, read_only: bool = False) -> Any:
    """What to give zarr or xarray for ``path``: the path as text, or a ``zarr.storage.FsspecStore`` of a URL.

    The store is made with the environment's options (:func:`_options`), never with credentials passed in.
    """
    loc = location(path)
    if isinstance(loc, Path):
        return str(loc)
    return FsspecStore.from_url(loc, storage_options=_options(_protocol(loc)), read_only=read_only)


def probe(url: str, *, timeout_s: float = 5.0) -> None:
    """Fail at once, with one line, when an object-store URL cannot be used; reads only, writes nothing.

    Lists the URL's prefix once with short timeouts and no retries (the normal client retries for minutes).
    A prefix that does not exist yet is fine (an output); its bucket must exist. Local paths are not probed.

    Raises
    ------
    ObjectStoreError
        Naming the URL (and the endpoint) and what is wrong: unreachable endpoint, credentials missing or
        refused, no such bucket, or no fsspec backend for the scheme.
    """
    if not is_url(url):
        return
    loc = str(location(url))
    protocol = _protocol(loc)
    opts = _options(protocol)
    endpoint = opts.get("endpoint_url") or "the default endpoint"
    if protocol in ("s3", "s3a"):
        opts |= {"skip_instance_cache": True,
                 "config_kwargs": {"connect_timeout": timeout_s, "read_timeout": timeout_s,
                                   "retries": {"max_attempts": 1}}}
    try:
        fs = fsspec.filesystem(protocol, **opts)
    except (ImportError, ValueError) as exc:
        raise ObjectStoreError(f"{loc}: {protocol}:// URLs need an fsspec backend ({exc}); for S3 install "
                               "'sftl-dask[s3]'") from None
    if hasattr(fs, "retries"):
        fs.retries = 1  # s3fs retries "retryable" errors 5 times with back-off on top of botocore's
    path = fs._strip_protocol(loc)
    bucket = path.split("/", 1)[0]
    try:
        fs.ls(path, detail=False) if fs.exists(path) else fs.ls(bucket, detail=False)
    except FileNotFoundError:
        raise ObjectStoreError(f"{loc}: no such bucket {bucket!r} at {endpoint}") from None
    except PermissionError as exc:
        raise ObjectStoreError(f"{loc}: access refused by {endpoint} ({_reason(exc)}); check the credentials in "
                               "the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from None
    except _store_errors() as exc:  # connection, endpoint and credential errors of the backend
        if type(exc).__name__ == "NoCredentialsError":
            raise ObjectStoreError(f"{loc}: no credentials for {endpoint} in the environment (set "
                                   "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
        raise ObjectStoreError(f"{loc}: cannot use the object store at {endpoint}: {_reason(exc)}") from None


def _store_errors() -> tuple[type[BaseException], ...]:
    """The errors an object store's client raises for an unusable endpoint or credentials: OSError (aiohttp's
    connection errors are OSErrors too), botocore's own and aiohttp's client errors where installed. Anything
    else (a bug) keeps its traceback."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:
        pass
    try:
        from aiohttp import ClientError as HttpError

        errors.append(HttpError)
    except ImportError:
        pass
    return tuple(errors)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
