"""Write a folder or a file completely or not at all; one writer per store at a time; the product cache.

A product (a simulation table, a testbed, a training folder) is keyed by what made it (:func:`cache_key`) and
stamped only once complete (:func:`stamp`); :func:`reuse_or_remove` reuses a stamped product of the same key
and removes anything else standing at its path.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "StoreBusyError",
    "cache_key",
    "check_unlocked",
    "content_sha256",
    "file_identity",
    "lock_path",
    "reuse_or_remove",
    "staged_dir",
    "staged_file",
    "stamp",
    "write_lock",
]


class StoreBusyError(RuntimeError):
    """Another process is writing the store (it holds its write lock)."""


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``, ``gs://...``, ``memory://...``), not a local path.

    ``file://`` URLs count as local.
    """
    text = os.fspath(path)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``out``; on success it replaces ``out``, on error it is removed.

    Nothing that looks like a complete ``out`` exists until the block finished without an exception; an
    existing ``out`` is replaced as :func:`staged_file` replaces one.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _put(tmp, out)
    finally:
        _remove(tmp)


@contextlib.contextmanager
def staged_file(out: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``out``; on success it becomes ``out``, on error it is removed.

    The block writes a file (or a folder, e.g. a Zarr store) at the yielded path. Without ``replace``, ``out``
    is never replaced: it is created by a hard link (atomic, and refused by the file system if ``out``
    appeared meanwhile), or by a rename where the file system has no hard links. With ``replace``, a file is
    renamed onto ``out`` (atomic: a reader sees the old file or the new one, never part of one); an existing
    folder is first renamed aside, then removed once the new one is in place.

    Raises
    ------
    FileExistsError
        Without ``replace``, if ``out`` exists when the block has finished (the temporary file is removed).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "tmp")
    try:
        yield tmp
        if replace:
            _put(tmp, out)
            return
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise FileExistsError(f"{out}: already exists") from None
        except OSError:  # no hard links here (some network and FUSE file systems), or a folder
            if out.exists():
                raise FileExistsError(f"{out}: already exists") from None
            tmp.rename(out)
    finally:
        _remove(tmp)


def _sibling(out: Path, what: str) -> Path:
    return out.parent / f".{out.name}.{what}-{uuid.uuid4().hex[:8]}"


def _put(tmp: Path, out: Path) -> None:
    """Move a finished ``tmp`` onto ``out``: one rename, or, where a folder stands, rename it aside first."""
    if out.is_dir() and not out.is_symlink():
        old = _sibling(out, "old")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:  # the rename failed: put the old one back (never neither), then report it
            os.replace(old, out)
            raise
        _remove(old)
    else:
        os.replace(tmp, out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def lock_path(target: Path) -> Path:
    """The lock file of a store or folder: hidden, beside it (``.<name>.lock``), so it never enters the store."""
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def write_lock(target: str | os.PathLike[str], holder: str) -> Iterator[None]:
    """Hold the exclusive write lock of ``target`` (a store or a root of stores) for the block.

    An advisory ``flock`` on :func:`lock_path`: the operating system releases it when the process ends, however
    it ends (a killed run never leaves a stale lock). The file records who holds it, for the message of the
    next writer. ``flock`` works on local file systems and on NFSv4 (Linux maps it onto NFS byte-range locks);
    Lustre needs its ``flock`` mount option.

    An object-store URL (``s3://...``) has no lock: there is no ``flock``, and a lock object would outlive a
    killed run. There the rule is one writer per cube root or LST output at a time, as the operator's duty;
    what still holds is that no slot is marked complete before all its chunks are written (``ingest_ok``,
    ``retrieve_ok``), so a crashed run never leaves a half-written slot that looks complete. Two writers at
    once are NOT made safe: both would resize the same arrays and could lose or share slots.

    Parameters
    ----------
    target : path
        What is about to be written.
    holder : str
        Who writes, for the message another writer gets (e.g. ``"sftl ingest"``).

    Raises
    ------
    StoreBusyError
        At once, if another process holds the lock (the message names the store and the holder).
    """
    import fcntl

    if is_url(target):  # no flock on an object store: the single-writer rule (docs/cluster.md, "Object storage")
        yield
        return
    target = Path(target)
    lock = lock_path(target)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(target, lock) from None
        who = {"holder": holder, "pid": os.getpid(), "host": socket.gethostname(),
               "since": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(who).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def check_unlocked(target: str | os.PathLike[str]) -> None:
    """Refuse at once if another process holds the write lock of ``target``, or if its lock could not be made
    (a read-only file system, a folder without write permission); creates nothing.

    For checks before a cluster starts, so that such a run is refused in a second rather than after its workers
    started; the writer itself takes the lock with :func:`write_lock`.

    Raises
    ------
    StoreBusyError
        As :func:`write_lock`.
    OSError
        ``EROFS`` or ``EACCES`` (a :class:`PermissionError`), naming the lock file: what :func:`write_lock`
        would meet.
    """
    import fcntl

    if is_url(target):  # an object store has no lock to check (single-writer rule, see write_lock)
        return
    lock = lock_path(Path(target))
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:  # nobody has written here yet: could the lock be made?
        _check_creatable(lock)
        return
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(target, lock) from None
    finally:
        os.close(fd)


def _check_creatable(path: Path) -> None:
    """Raise the ``OSError`` that creating ``path`` (and its missing folders) would raise for a read-only file
    system or a folder without write permission; creates nothing."""
    import errno

    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return  # a file where a folder is needed: the writer's own error names it
    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def _busy(target: str | os.PathLike[str], lock: Path) -> StoreBusyError:
    return StoreBusyError(f"{target}: being written by {_holder(lock)}; run one writer at a time "
                          f"(the lock {lock.name} frees itself when that process ends)")


def _holder(lock: Path) -> str:
    """Who holds a lock, as its file says (it may be mid-write: then, just another process)."""
    try:
        who = json.loads(lock.read_text())
        return f"{who['holder']} (pid {who['pid']} on {who['host']}, since {who['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


# ------------------------------------------------------------------------------------------ product cache
def cache_key(what: Mapping[str, Any]) -> str:
    """The key of a cached product: sha256 of what made it (configuration, inputs' keys, package version)."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _key_file(path: Path) -> Path:
    return path.with_name(f".{path.name}.key")


def reuse_or_remove(path: Path, key: str) -> bool:
    """Whether ``path`` was made from ``key`` (its key file says so); if not, whatever stands there is removed.

    The key file is written only once the product is complete (:func:`stamp`), so a product an interrupted
    run left half-made, or one made by another configuration or version, is made again, never reused.

    Returns
    -------
    bool
        True: reuse ``path`` as it is. False: nothing stands at ``path`` any more (a file or folder there, and
        its key file, were deleted); make the product and :func:`stamp` it.
    """
    kf = _key_file(path)
    if path.exists() and kf.is_file() and kf.read_text().strip() == key:
        return True
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    kf.unlink(missing_ok=True)
    return False


def stamp(path: Path, key: str) -> None:
    """Record that ``path`` is complete and was made from ``key`` (atomically)."""
    with staged_file(_key_file(path), replace=True) as tmp:
        tmp.write_text(key + "\n")


def file_identity(path: Path) -> dict[str, Any]:
    """A user's input file as a cache input: its path, size (bytes) and modification time (ns); not read whole."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def content_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, or of a folder's files' bytes in sorted path order (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
