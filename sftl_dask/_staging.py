"""Write a folder or a file completely or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["staged_dir", "staged_file"]


@contextlib.contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``out``; on success it replaces ``out``, on error it is removed.

    Nothing that looks like a complete ``out`` exists until the block finished without an exception.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_file(out: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``out``; on success it becomes ``out``, on error it is removed.

    The block writes the file at the yielded path. Without ``replace``, ``out`` is never replaced: it is created
    by a hard link (atomic, and refused by the file system if ``out`` appeared meanwhile), or by a rename where
    the file system has no hard links. With ``replace``, the file is renamed onto ``out`` (atomic: a reader sees
    the old file or the new one, never part of one).

    Raises
    ------
    FileExistsError
        Without ``replace``, if ``out`` exists when the block has finished (the temporary file is removed).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if replace:
            os.replace(tmp, out)
            return
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise FileExistsError(f"{out}: already exists") from None
        except OSError:  # no hard links here (some network and FUSE file systems)
            if out.exists():
                raise FileExistsError(f"{out}: already exists") from None
            tmp.rename(out)
    finally:
        tmp.unlink(missing_ok=True)
