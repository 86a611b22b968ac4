"""Exclusive locks on files of the project home, so that two processes never interleave what must not be.

`catalog_lock` serialises the runs of one catalog (re-index, retrain, drift watch, the nightly chain);
`file_lock` guards a short critical section (creating the MLflow store, starting the home's server).
Both are fcntl advisory locks: the kernel releases them when the holding process ends, even by
SIGKILL, so a crashed run never leaves a stale lock behind. A catalog lock file holds the holder's
pid, start time and what it runs, only to name them in the error message.
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
_held: dict[Path, int] = {}  # catalog locks this process holds -> depth, so nightly's subflows re-enter


def lock_path(home_root: Path, catalog_name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", catalog_name) or "_"
    return Path(home_root) / "locks" / f"{safe}.lock"


def _holder(fd: int) -> str:
    """'reindex holds it (pid N, since T)' from the lock file, or 'unknown holder' while it is being written."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"{info.get('what', 'a run')} holds it (pid {info['pid']}, since {info['since']})"
    except (ValueError, KeyError):
        return "an unknown holder has it"


def try_lock(fd: int, shared: bool = False) -> bool:
    """Take the lock without waiting; False when another process holds it (in a conflicting mode)."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def open_lock_file(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def wait_for_lock(fd: int, wait_s: float, shared: bool = False) -> bool:
    """Take the lock, waiting up to wait_s seconds (polling: flock has no timeout); False when it stayed taken."""
    deadline = time.monotonic() + max(wait_s, 0.0)
    while not try_lock(fd, shared):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)  # another process holds it; bounded by the deadline
    return True


@contextmanager
def file_lock(path: Path, wait_s: float = 60.0, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on `path` for the block, waiting up to wait_s seconds for it."""
    fd = open_lock_file(Path(path))
    try:
        if not wait_for_lock(fd, wait_s):
            raise RqsidError(f"{what or path} stayed locked by another process for {wait_s:g} s; lock {path}")
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def catalog_lock(home_root: Path, catalog_name: str, wait_s: float = 0.0, what: str = "a run") -> Iterator[Path]:
    """Hold the catalog's run lock for the block; wait up to wait_s seconds for it, then raise RqsidError
    naming the holder. `what` (e.g. "reindex") names this holder in the error other processes get."""
    path = lock_path(home_root, catalog_name).resolve()
    if path in _held:
        _held[path] += 1
        try:
            yield path
        finally:
            _held[path] -= 1
        return
    fd = open_lock_file(path)
    try:
        if not wait_for_lock(fd, wait_s):
            waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
            raise RqsidError(f"catalog {catalog_name} is busy: {_holder(fd)}{waited}; lock {path}")
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": since, "what": what}).encode(), 0)
        _held[path] = 1
        try:
            yield path
        finally:
            del _held[path]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
