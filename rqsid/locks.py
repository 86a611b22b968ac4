"""An exclusive run lock per catalog, so two re-indexes of one catalog never interleave their publishes.

The lock is an fcntl advisory lock on `<home>/locks/<catalog>.lock`: the kernel releases it when the
holding process ends, even by SIGKILL, so a crashed run never leaves a stale lock behind. The file
holds the holder's pid and start time only to name them in the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from rqsid import RqsidError

POLL_S = 0.1
_held: dict[Path, int] = {}  # locks this process holds -> depth, so nightly's re-index subflow re-enters


def lock_path(home_root: Path, catalog_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", catalog_name) or "_"
    return Path(home_root) / "locks" / f"{safe}.lock"


def _holder(fd: int) -> str:
    """'pid N, since T' from the lock file, or 'unknown holder' while it is being written."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']}, since {info['since']}"
    except (ValueError, KeyError):
        return "unknown holder"


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def catalog_lock(home_root: Path, catalog_name: str, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold the catalog's run lock for the block; wait up to wait_s seconds for it, then raise RqsidError."""
    path = lock_path(home_root, catalog_name).resolve()
    if path in _held:
        _held[path] += 1
        try:
            yield path
        finally:
            _held[path] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + max(wait_s, 0.0)
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
                raise RqsidError(f"another re-index of catalog {catalog_name} is running ({_holder(fd)}){waited}; "
                                 f"lock {path}")
            time.sleep(POLL_S)  # polling a lock held by another process; bounded by the deadline
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": since}).encode(), 0)
        _held[path] = 1
        try:
            yield path
        finally:
            del _held[path]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
