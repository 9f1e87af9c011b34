"""Write a folder completely or not at all."""

from __future__ import annotations

import contextlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["staged_dir"]


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
