"""A machine-local cache of directories (base models, adapters) filled once, atomically.

Several worker processes on one machine share a cache: the first to need an entry fills it
under a file lock, into a temporary sibling that is renamed into place, so nobody ever sees
a half-written entry and a crash leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

COMPLETE_MARKER = ".complete"


def fill_once(cache_dir: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """``cache_dir/name``, made by ``fill(tmp_dir)`` the first time it is asked for."""
    dest = cache_dir / name
    if (dest / COMPLETE_MARKER).exists():
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / COMPLETE_MARKER).exists():
            return dest
        tmp = cache_dir / f".{name}.{uuid.uuid4().hex}.tmp"
        try:
            fill(tmp)
            (tmp / COMPLETE_MARKER).touch()
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest


def invalidate(cache_dir: Path, name: str) -> None:
    """Drop ``cache_dir/name`` (under the entry's lock) so the next ``fill_once`` refills it."""
    dest = cache_dir / name
    if not dest.exists():
        return
    with open(cache_dir / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists():
            # Renamed first: a process that already opened files keeps reading them.
            doomed = cache_dir / f".{name}.{uuid.uuid4().hex}.old"
            dest.rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
